//! Where a ranged request's bytes go: written at their offset as they
//! arrive, so a broken stream resumes where it stopped, and, for files with
//! chunk hashes, hashed chunk by chunk, each chunk verified the moment its
//! last byte is in. One request may span many chunks; each is handed on
//! (marked verified, its waiters woken) without waiting for the rest.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};

use crate::cache::Blob;
use crate::hash::Digest;
use crate::source::Sink;

pub(super) trait WriteAt: Sync {
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
}

impl WriteAt for Blob {
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        Blob::write_at(self, data, offset)
    }
}

impl WriteAt for File {
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_at(data, offset)
    }
}

/// A chunk's (or a small file's) bytes held in memory; `start` is their
/// offset in the file.
pub(super) struct Memory {
    pub start: u64,
    pub bytes: Mutex<Vec<u8>>,
}

impl WriteAt for Memory {
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        let at = (offset - self.start) as usize;
        bytes
            .get_mut(at..at + data.len())
            .ok_or_else(|| io::Error::other("bytes past the chunk"))?
            .copy_from_slice(data);
        Ok(())
    }
}

/// Where one round of a whole-file download goes.
pub(super) trait WholeOut: WriteAt + Send + 'static {
    /// The sha256 of what was written. Blocking.
    fn digest(&self) -> io::Result<Digest>;
    /// Gives up a round whose bytes are not the file's.
    fn discard(self);
}

/// A private file in the cache's `tmp/`, published once verified.
pub(super) struct TempFile {
    pub file: File,
    pub path: std::path::PathBuf,
}

impl WriteAt for TempFile {
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }
}

impl WholeOut for TempFile {
    /// Hashed through the descriptor written, never reopened by name.
    fn digest(&self) -> io::Result<Digest> {
        Digest::of_file(&self.file)
    }

    fn discard(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl WholeOut for Memory {
    fn digest(&self) -> io::Result<Digest> {
        Ok(Digest::of(
            &self.bytes.lock().unwrap_or_else(|p| p.into_inner()),
        ))
    }

    fn discard(self) {}
}

/// What happens as chunks of a request are written and verified.
pub(super) trait ChunkDone: Send {
    /// `bytes` of chunk `chunk` are written from its start (unverified).
    fn written(&mut self, chunk: u64, bytes: u64);
    /// Chunk `chunk` is written and matches its hash. An error stops the
    /// request (the reader went away, say).
    fn verified(&mut self, chunk: u64) -> Result<(), Stop>;
}

/// Chunks verified into memory need no bookkeeping.
pub(super) struct NoBookkeeping;

impl ChunkDone for NoBookkeeping {
    fn written(&mut self, _: u64, _: u64) {}
    fn verified(&mut self, _: u64) -> Result<(), Stop> {
        Ok(())
    }
}

/// Why a writer refused bytes, other than a local I/O error.
#[derive(Debug)]
pub(super) enum Stop {
    /// A chunk's bytes did not match its hash: the source's fault.
    Mismatch {
        actual: Digest,
        /// The chunk's start came from disk, written before a crash: the
        /// fault may be there rather than at the source.
        resumed: bool,
    },
    /// Nobody wants the rest any more.
    Cancelled,
}

/// Per-chunk verification of the bytes as they stream.
struct Check<'a> {
    blob: &'a Blob,
    /// The chunk being written, and its hash so far from its start.
    chunk: u64,
    hasher: Sha256,
    /// Whether the chunk's hash began with bytes read back from disk.
    resumed: bool,
    done: &'a mut (dyn ChunkDone + 'a),
}

pub(super) struct RangeWriter<'a> {
    out: &'a dyn WriteAt,
    pub range: Range<u64>,
    pub pos: u64,
    /// Bytes taken from sources, for the metrics.
    pub received: u64,
    /// `None` for a part of a file verified only whole.
    check: Option<Check<'a>>,
    /// Whether a chunk verified since [`RangeWriter::take_verified`] last asked.
    verified: bool,
    stop: Option<Stop>,
}

impl<'a> RangeWriter<'a> {
    /// Bytes `range` into `out`, unchecked (checked whole later).
    pub fn unchecked(out: &'a dyn WriteAt, range: Range<u64>) -> Self {
        RangeWriter {
            out,
            pos: range.start,
            range,
            received: 0,
            check: None,
            verified: false,
            stop: None,
        }
    }

    /// Bytes `range` (whole chunks of `blob`) into `out`, each chunk
    /// verified against its hash and reported to `done`.
    pub fn chunks(
        out: &'a dyn WriteAt,
        blob: &'a Blob,
        range: Range<u64>,
        done: &'a mut (dyn ChunkDone + 'a),
    ) -> Self {
        let chunk = range.start / blob.chunk_size;
        RangeWriter {
            check: Some(Check {
                blob,
                chunk,
                hasher: Sha256::new(),
                resumed: false,
                done,
            }),
            ..RangeWriter::unchecked(out, range)
        }
    }

    /// Continues after `prefix`, the first bytes of the first chunk as they
    /// are on disk: `hasher` has hashed them.
    pub fn resume(&mut self, prefix: u64, hasher: Sha256) {
        if let Some(check) = &mut self.check {
            check.hasher = hasher;
            check.resumed = true;
            self.pos = self.range.start + prefix;
        }
    }

    /// Starts the chunk being written over, dropping what it has so far:
    /// after a mismatch, an over-long body, or when another source takes over
    /// (bytes of two sources never make one chunk whose fault is unclear).
    pub fn restart_chunk(&mut self) {
        match &mut self.check {
            // Past the run's last chunk (a long body after it), nothing restarts.
            Some(check) if check.chunk * check.blob.chunk_size < self.range.end => {
                self.pos = check.chunk * check.blob.chunk_size;
                check.hasher = Sha256::new();
                check.resumed = false;
                // What was recorded of it is no longer on disk as recorded.
                check.done.written(check.chunk, 0);
            }
            Some(_) => {}
            None => self.pos = self.range.start,
        }
    }

    /// Whether each chunk is verified as it completes.
    pub fn is_checked(&self) -> bool {
        self.check.is_some()
    }

    /// Why the last write was refused, if not for a local error.
    pub fn take_stop(&mut self) -> Option<Stop> {
        self.stop.take()
    }

    /// Whether any chunk verified since the last call.
    pub fn take_verified(&mut self) -> bool {
        std::mem::take(&mut self.verified)
    }

    pub fn is_done(&self) -> bool {
        self.pos == self.range.end
    }

    fn refuse(&mut self, stop: Stop) -> io::Error {
        let e = io::Error::other(format!("{stop:?}"));
        self.stop = Some(stop);
        e
    }
}

impl Sink for RangeWriter<'_> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        self.received += data.len() as u64;
        let Some(check) = &mut self.check else {
            self.out.write_at(data, self.pos)?;
            self.pos += data.len() as u64;
            return Ok(());
        };
        while !data.is_empty() {
            let blob = check.blob;
            let start = check.chunk * blob.chunk_size;
            let end = (start + blob.chunk_size).min(blob.size);
            let n = data.len().min((end - self.pos) as usize);
            self.out.write_at(&data[..n], self.pos)?;
            check.hasher.update(&data[..n]);
            self.pos += n as u64;
            data = &data[n..];
            if self.pos < end {
                check.done.written(check.chunk, self.pos - start);
                continue;
            }
            let actual = Digest(std::mem::take(&mut check.hasher).finalize().into());
            if Some(actual) != blob.chunk_hash(check.chunk) {
                let resumed = check.resumed;
                return Err(self.refuse(Stop::Mismatch { actual, resumed }));
            }
            let chunk = check.chunk;
            check.chunk += 1;
            check.resumed = false;
            self.verified = true;
            if let Err(stop) = check.done.verified(chunk) {
                return Err(self.refuse(stop));
            }
        }
        Ok(())
    }
}
