//! `file:///dir`: local or network file systems, read in pieces off the async
//! workers so a slow NFS server cannot stall them.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::{Sink, SourceError, StreamError};

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
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                SourceError::NotFound(404)
            } else {
                SourceError::Io(e)
            }
        })?;
    let file = Arc::new(file);
    let mut offset = range.start;
    while offset < range.end {
        let len = PIECE.min(range.end - offset) as usize;
        let f = Arc::clone(&file);
        let piece = blocking(move || {
            let mut buf = vec![0u8; len];
            let n = read_full_at(&f, &mut buf, offset)?;
            buf.truncate(n);
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

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}
