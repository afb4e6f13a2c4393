//! One file's content in the cache, complete or being filled.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use super::Presence;
use super::chunk_map::ChunkMap;
use crate::hash::Digest;
use crate::manifest::FileEntry;

pub struct Blob {
    pub digest: Digest,
    pub size: u64,
    pub chunk_size: u64,
    complete_path: PathBuf,
    partial_path: PathBuf,
    map_path: PathBuf,
    /// The data file: the partial file while filling (same inode after the
    /// rename to complete), or nothing yet for a whole-file download.
    data: RwLock<Option<File>>,
    /// Verified chunks; only for files with chunk hashes.
    map: Option<ChunkMap>,
    complete: AtomicBool,
    /// Serializes the final whole-file check: two last chunks may land at once.
    finishing: Mutex<()>,
}

impl Blob {
    pub(super) fn open(
        entry: &FileEntry,
        complete_path: PathBuf,
        partial_path: PathBuf,
        map_path: PathBuf,
    ) -> io::Result<Blob> {
        let mut blob = Blob {
            digest: entry.sha256,
            size: entry.size,
            chunk_size: entry.chunk_size,
            complete_path,
            partial_path,
            map_path,
            data: RwLock::new(None),
            map: None,
            complete: AtomicBool::new(false),
            finishing: Mutex::new(()),
        };
        match File::open(&blob.complete_path) {
            Ok(f) if f.metadata()?.len() == entry.size => {
                *blob.data.get_mut().unwrap() = Some(f);
                blob.complete = AtomicBool::new(true);
                return Ok(blob);
            }
            Ok(_) => {
                tracing::warn!(path = %blob.complete_path.display(), "cached file has the wrong size; discarding it");
                fs::remove_file(&blob.complete_path)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if entry.size == 0 {
            // Nothing to fetch: the empty file is complete by definition.
            fs::write(&blob.complete_path, b"")?;
            *blob.data.get_mut().unwrap() = Some(File::open(&blob.complete_path)?);
            blob.complete = AtomicBool::new(true);
            return Ok(blob);
        }
        if entry.chunks.is_some() {
            let (file, fresh) = match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&blob.partial_path)
            {
                Ok(f) => (f, true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => (
                    OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&blob.partial_path)?,
                    false,
                ),
                Err(e) => return Err(e),
            };
            if file.metadata()?.len() != entry.size {
                file.set_len(entry.size)?;
            }
            // A new partial file holds no data, whatever an old map says.
            blob.map = Some(ChunkMap::open(
                &blob.map_path,
                entry.size,
                entry.chunk_size,
                fresh,
            )?);
            *blob.data.get_mut().unwrap() = Some(file);
        }
        Ok(blob)
    }

    pub fn is_complete(&self) -> bool {
        self.complete.load(Ordering::Acquire)
    }

    pub fn chunk_count(&self) -> u64 {
        self.size.div_ceil(self.chunk_size)
    }

    /// Whether chunk `index` is verified and may be served.
    pub fn has_chunk(&self, index: u64) -> bool {
        self.is_complete() || self.map.as_ref().is_some_and(|m| m.is_set(index))
    }

    pub fn presence(&self) -> Presence {
        if self.is_complete() {
            return Presence::Complete;
        }
        let Some(map) = &self.map else {
            return Presence::Absent;
        };
        let bytes: u64 = (0..self.chunk_count())
            .filter(|&c| map.is_set(c))
            .map(|c| super::chunk_len(self.size, self.chunk_size, c))
            .sum();
        if bytes == 0 {
            Presence::Absent
        } else {
            Presence::Partial { bytes }
        }
    }

    /// A handle on the complete file, for the kernel to read directly.
    pub fn complete_file(&self) -> Option<File> {
        if !self.is_complete() {
            return None;
        }
        let data = self.data.read().unwrap_or_else(|p| p.into_inner());
        data.as_ref()?.try_clone().ok()
    }

    /// Reads verified bytes; the caller has checked that the chunks are present.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let data = self.data.read().unwrap_or_else(|p| p.into_inner());
        let file = data
            .as_ref()
            .ok_or_else(|| io::Error::other("no cached data"))?;
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

    /// Writes unverified bytes into the partial file; they are not served
    /// until [`Blob::mark_verified`] sets their chunk's bit.
    pub fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let guard = self.data.read().unwrap_or_else(|p| p.into_inner());
        let file = guard
            .as_ref()
            .ok_or_else(|| io::Error::other("blob has no partial file"))?;
        file.write_all_at(data, offset)
    }

    /// Records chunk `index` as verified. Its data is made durable first, so
    /// that after a power loss a set bit never points at missing bytes.
    /// Blocking: call from a blocking thread.
    pub fn mark_verified(&self, index: u64) -> io::Result<()> {
        let Some(map) = &self.map else { return Ok(()) };
        {
            let data = self.data.read().unwrap_or_else(|p| p.into_inner());
            data.as_ref().map(File::sync_data).transpose()?;
        }
        map.set(index);
        Ok(())
    }

    pub fn all_chunks_verified(&self) -> bool {
        self.map.as_ref().is_some_and(ChunkMap::all_set)
    }

    /// Once every chunk is verified: checks the whole file against its
    /// sha256 and moves it to its complete name. Blocking.
    pub fn finish_chunked(&self) -> io::Result<Result<(), Digest>> {
        let _one = self.finishing.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_complete() {
            return Ok(Ok(()));
        }
        let file = {
            let data = self.data.read().unwrap_or_else(|p| p.into_inner());
            data.as_ref()
                .ok_or_else(|| io::Error::other("no partial file"))?
                .try_clone()?
        };
        let actual = Digest::of_reader(io::BufReader::with_capacity(1 << 20, &file))?;
        if actual != self.digest {
            return Ok(Err(actual));
        }
        self.publish(&self.partial_path)?;
        let _ = fs::remove_file(&self.map_path);
        self.complete.store(true, Ordering::Release);
        Ok(Ok(()))
    }

    /// Adopts a verified whole-file download at `path`. Blocking.
    pub fn finish_whole(&self, path: &std::path::Path) -> io::Result<()> {
        self.publish(path)?;
        let file = File::open(&self.complete_path)?;
        *self.data.write().unwrap_or_else(|p| p.into_inner()) = Some(file);
        self.complete.store(true, Ordering::Release);
        Ok(())
    }

    /// Renames verified data to its complete name, durably.
    fn publish(&self, from: &std::path::Path) -> io::Result<()> {
        File::open(from)?.sync_all()?;
        fs::rename(from, &self.complete_path)?;
        if let Some(dir) = self.complete_path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}
