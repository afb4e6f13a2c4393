//! `file:///dir`: local or network file systems, read in pieces off the async
//! workers so a slow NFS server cannot stall them.

use std::fs::File;
use std::io::{self, Read as _};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use super::{Sink, SourceError, StreamError};
use crate::fileio::{append_at, blocking};

/// Large enough to amortize a blocking-pool hop, small enough to bound memory.
const PIECE: u64 = 1 << 20;

pub(super) async fn fetch(
    path: &Path,
    range: Range<u64>,
    sink: &mut (dyn Sink + Send),
) -> Result<(), StreamError> {
    let path_owned = path.to_owned();
    let file = blocking(move || File::open(&path_owned))
        .await
        .map_err(opening)?;
    let file = Arc::new(file);
    let mut offset = range.start;
    while offset < range.end {
        let len = PIECE.min(range.end - offset) as usize;
        let f = Arc::clone(&file);
        let piece = blocking(move || {
            let mut buf = Vec::new();
            append_at(&f, &mut buf, len, offset)?;
            Ok(buf)
        })
        .await
        .map_err(SourceError::Io)?;
        if piece.is_empty() {
            return Err(SourceError::ShortBody {
                got: offset - range.start,
                want: range.end - range.start,
            }
            .into());
        }
        sink.write(&piece).map_err(StreamError::Sink)?;
        offset += piece.len() as u64;
    }
    Ok(())
}

/// The whole file at `path`, if it has at most `limit` bytes.
pub(super) async fn read_whole(path: &Path, limit: usize) -> Result<super::Document, SourceError> {
    let path = path.to_owned();
    let body = blocking(move || {
        let mut body = Vec::new();
        io::Read::take(File::open(&path)?, limit as u64 + 1).read_to_end(&mut body)?;
        Ok(body)
    })
    .await
    .map_err(opening)?;
    if body.len() > limit {
        return Err(SourceError::LongBody { want: limit as u64 });
    }
    Ok(super::Document {
        body: Some(body),
        etag: None,
    })
}

/// A file that is not there is absent at this source, not a fault of it.
fn opening(e: io::Error) -> SourceError {
    match e.kind() {
        io::ErrorKind::NotFound => SourceError::NotFound("no such file".into()),
        _ => SourceError::Io(e),
    }
}
