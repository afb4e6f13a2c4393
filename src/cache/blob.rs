//! One file's content in the cache, complete or being filled.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::Presence;
use super::chunk_map::ChunkMap;
use crate::hash::Digest;
use crate::manifest::FileEntry;

/// What [`Blob::verify`] found.
#[derive(Debug, Default)]
pub struct Verified {
    /// Bytes re-hashed (whole chunks).
    pub bytes: u64,
    /// Chunks whose data did not match; their bits are cleared.
    pub bad_chunks: u64,
    /// A complete file that did not match; it is removed.
    pub bad_file: bool,
}

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
    /// Chunks known verified: counted at open and as this process sets
    /// bits, so checking for completion after each chunk costs nothing
    /// until the count says every chunk is in.
    verified: AtomicU64,
}

impl Blob {
    pub(super) fn open(
        entry: &FileEntry,
        complete_path: PathBuf,
        partial_path: PathBuf,
        map_path: PathBuf,
        tmp_path: PathBuf,
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
            verified: AtomicU64::new(0),
        };
        match File::open(&blob.complete_path) {
            Ok(f) if f.metadata()?.len() == entry.size => {
                *blob.data.get_mut().unwrap() = Some(in_use(f)?);
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
            *blob.data.get_mut().unwrap() = Some(in_use(File::open(&blob.complete_path)?)?);
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
            let map = ChunkMap::open(
                &blob.map_path,
                &tmp_path,
                entry.size,
                entry.chunk_size,
                fresh,
            )?;
            // Shared while we may set bits; the last writer out marks it clean.
            map.file().lock_shared()?;
            let boot = boot_id();
            if map.dirty_since().is_some_and(|b| b != boot) {
                let (kept, dropped) = reverify(&map, &file, entry)?;
                tracing::warn!(file = %entry.path, kept, dropped, "re-verified chunks cached before an unclean shutdown");
            }
            map.mark_dirty(boot)?;
            blob.verified = AtomicU64::new(map.count());
            blob.map = Some(map);
            *blob.data.get_mut().unwrap() = Some(in_use(file)?);
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
        self.data_file()
    }

    /// Reads verified bytes; the caller has checked that the chunks are present.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let data = self.data.read().unwrap_or_else(|p| p.into_inner());
        let file = data
            .as_ref()
            .ok_or_else(|| io::Error::other("no cached data"))?;
        crate::fileio::read_full_at(file, buf, offset)
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

    /// Allocates disk blocks for a range of the partial file before it is
    /// fetched, so that the space is counted (by every process, through the
    /// file system) from the moment it is reserved. A file system without
    /// `fallocate` just fills the blocks as they are written.
    pub fn allocate(&self, range: std::ops::Range<u64>) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let guard = self.data.read().unwrap_or_else(|p| p.into_inner());
        let Some(file) = guard.as_ref() else {
            return Ok(());
        };
        let (offset, len) = (
            range.start as libc::off_t,
            (range.end - range.start) as libc::off_t,
        );
        // SAFETY: a valid descriptor; mode 0 allocates within the file's size.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, len) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) => Ok(()),
            _ => Err(e),
        }
    }

    /// Records chunk `index` as verified, once its bytes are written. The
    /// map is dirty while open, so a power loss before the data reaches the
    /// disk makes the next open re-verify instead of trusting the bit.
    pub fn mark_verified(&self, index: u64) {
        if let Some(map) = &self.map
            && map.set(index)
        {
            self.verified.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Waits until no other process fetches chunk `index`, then claims it
    /// for this one until the claim drops. Blocking.
    pub fn claim_chunk(self: Arc<Self>, index: u64) -> io::Result<ChunkClaim> {
        if let Some(map) = &self.map {
            map.claim(index)?;
        }
        Ok(ChunkClaim { blob: self, index })
    }

    /// Takes in the bits other processes set; after waiting on a claim.
    pub fn recount_verified(&self) {
        if let Some(map) = &self.map {
            self.verified.fetch_max(map.count(), Ordering::AcqRel);
        }
    }

    pub fn all_chunks_verified(&self) -> bool {
        // The count misses bits other processes set; a later open rescans.
        self.verified.load(Ordering::Acquire) >= self.chunk_count()
            && self.map.as_ref().is_some_and(ChunkMap::all_set)
    }

    /// Re-hashes what is cached: a complete file whole (removed if it does
    /// not match), a partial one chunk by chunk (bad chunks dropped).
    /// Blocking.
    pub fn verify(&self, entry: &FileEntry) -> io::Result<Verified> {
        if let Some(file) = self.complete_file() {
            let good = Digest::of_file(&file)? == self.digest;
            if !good {
                let _others_wait = self.lock_dir()?;
                fs::remove_file(&self.complete_path)?;
            }
            return Ok(Verified {
                bytes: self.size,
                bad_chunks: 0,
                bad_file: !good,
            });
        }
        let (Some(map), Some(file)) = (&self.map, self.data_file()) else {
            return Ok(Verified::default());
        };
        let (kept, dropped) = reverify(map, &file, entry)?;
        self.verified.fetch_sub(dropped, Ordering::AcqRel);
        Ok(Verified {
            bytes: (kept + dropped) * self.chunk_size,
            bad_chunks: dropped,
            bad_file: false,
        })
    }

    fn data_file(&self) -> Option<File> {
        let data = self.data.read().unwrap_or_else(|p| p.into_inner());
        data.as_ref()?.try_clone().ok()
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
        let actual = Digest::of_file(&file)?;
        if actual != self.digest {
            return Ok(Err(actual));
        }
        self.publish(&self.partial_path, Some(&self.map_path))?;
        self.complete.store(true, Ordering::Release);
        Ok(Ok(()))
    }

    /// Adopts a verified whole-file download at `path`. Blocking.
    pub fn finish_whole(&self, path: &std::path::Path) -> io::Result<()> {
        self.publish(path, None)?;
        let file = in_use(File::open(&self.complete_path)?)?;
        *self.data.write().unwrap_or_else(|p| p.into_inner()) = Some(file);
        self.complete.store(true, Ordering::Release);
        Ok(())
    }

    fn lock_dir(&self) -> io::Result<File> {
        super::lock_dir(
            self.complete_path
                .parent()
                .expect("blob paths have a parent"),
        )
    }

    /// Renames verified data to its complete name, durably, and drops its
    /// chunk map. Another process may have published the same partial file
    /// first: then there is nothing left to do.
    fn publish(&self, from: &std::path::Path, map: Option<&std::path::Path>) -> io::Result<()> {
        // Synced before the lock: it may take seconds, and others wait on the lock.
        match File::open(from) {
            Ok(f) => f.sync_all()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let _others_wait = self.lock_dir()?;
        if !from.exists() && self.complete_path.exists() {
            return Ok(());
        }
        fs::rename(from, &self.complete_path)?;
        if let Some(map) = map {
            let _ = fs::remove_file(map);
        }
        if let Some(dir) = self.complete_path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// Marks a data file as used by this process for as long as it stays open:
/// a shared `flock` that eviction respects, and the atime it orders by.
fn in_use(file: File) -> io::Result<File> {
    file.lock_shared()?;
    touch(&file);
    Ok(file)
}

/// Records a use in the atime, which outlives the process. Best effort: a
/// read-only cache still serves.
fn touch(file: &File) {
    let now = fs::FileTimes::new().set_accessed(std::time::SystemTime::now());
    if let Err(e) = file.set_times(now) {
        tracing::debug!(error = %e, "cannot record the access time");
    }
}

/// One process's claim on one chunk: others wait for it to drop before
/// they look at the chunk's bit, so a chunk is fetched once.
pub struct ChunkClaim {
    blob: Arc<Blob>,
    index: u64,
}

impl Drop for ChunkClaim {
    fn drop(&mut self) {
        if let Some(map) = &self.blob.map
            && let Err(e) = map.release(self.index)
        {
            tracing::warn!(chunk = self.index, error = %e, "cannot release a chunk claim");
        }
    }
}

/// When this process lets go of a file, the time is recorded for eviction.
/// When the last user of a partial file lets go, its data is made durable
/// and then its map marked clean. The sync may take seconds, so inside a
/// runtime it runs on the blocking pool, never on the FUSE thread or an
/// async worker.
impl Drop for Blob {
    fn drop(&mut self) {
        let data = self.data.get_mut().map_or(None, Option::take);
        if let Some(file) = &data {
            touch(file);
        }
        let Some(map) = self.map.take() else { return };
        let complete = self.is_complete();
        let path = self.partial_path.clone();
        let work = move || {
            if let Err(e) = sync_and_mark_clean(&map, data.as_ref(), complete) {
                tracing::warn!(path = %path.display(), error = %e, "cannot sync cached data; after a power loss it will be re-verified");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(work)),
            Err(_) => work(),
        }
    }
}

fn sync_and_mark_clean(map: &ChunkMap, data: Option<&File>, complete: bool) -> io::Result<()> {
    if !complete {
        data.map(File::sync_data).transpose()?;
    }
    map.file().unlock()?;
    // Exclusive only if no other process still writes: then no bit is newer than its data.
    if !complete && map.file().try_lock().is_ok() {
        map.mark_clean()?;
        map.file().unlock()?;
    }
    Ok(())
}

/// This boot of the machine: a different one means a dirty map may have
/// lost data to a power failure. Zero when unknown (then maps are trusted,
/// as after a process crash).
fn boot_id() -> [u8; 16] {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let mut id = [0u8; 16];
    let hex: String = text.trim().chars().filter(|c| *c != '-').collect();
    let _ = hex::decode_to_slice(hex, &mut id);
    id
}

/// Re-hashes every chunk the map claims, and clears the bits whose data
/// does not match: (kept, dropped). Blocking.
fn reverify(map: &ChunkMap, file: &File, entry: &FileEntry) -> io::Result<(u64, u64)> {
    let Some(hashes) = &entry.chunks else {
        return Ok((0, 0));
    };
    let (mut kept, mut dropped) = (0, 0);
    let mut buf = vec![0u8; entry.chunk_size as usize];
    for (index, expected) in hashes.iter().enumerate() {
        let index = index as u64;
        if !map.is_set(index) {
            continue;
        }
        let len = super::chunk_len(entry.size, entry.chunk_size, index) as usize;
        let ok = file
            .read_exact_at(&mut buf[..len], index * entry.chunk_size)
            .is_ok()
            && Digest::of(&buf[..len]) == *expected;
        if ok {
            kept += 1;
        } else {
            map.clear(index);
            dropped += 1;
        }
    }
    Ok((kept, dropped))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Cache;
    use crate::manifest::Manifest;

    /// A one-file manifest for `data` in 64 KiB chunks.
    fn entry_for(data: &[u8]) -> Manifest {
        let chunks: Vec<String> = data
            .chunks(65536)
            .map(|c| format!("\"{}\"", Digest::of(c)))
            .collect();
        let text = format!(
            "version = 1\n[[model]]\nid = \"m\"\nsources = [\"file:///nowhere\"]\n[[model.file]]\n\
             path = \"f\"\nsize = {}\nsha256 = \"{}\"\nchunk_size = 65536\nchunks = [{}]\n",
            data.len(),
            Digest::of(data),
            chunks.join(", ")
        );
        Manifest::parse("t.toml".as_ref(), &text).unwrap()
    }

    #[test]
    fn after_a_power_loss_only_chunks_whose_data_survived_are_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let data: Vec<u8> = (0..4 * 65536u32).map(|i| (i * 7 % 251) as u8).collect();
        let manifest = entry_for(&data);
        let entry = &manifest.models[0].files[0];
        {
            let blob = cache.open_blob(entry).unwrap();
            for c in 0..3u64 {
                let at = (c * 65536) as usize;
                blob.write_at(&data[at..at + 65536], c * 65536).unwrap();
                blob.mark_verified(c);
            }
            // Chunk 3's bit claims data that never reached the disk.
            blob.mark_verified(3);
            // As if the machine lost power: the map stays dirty, from another boot.
            blob.map.as_ref().unwrap().mark_dirty([9; 16]).unwrap();
            std::mem::forget(blob);
        }
        let cache = Cache::open(dir.path()).unwrap();
        let blob = cache.open_blob(entry).unwrap();
        assert!((0..3).all(|c| blob.has_chunk(c)), "intact chunks are kept");
        assert!(!blob.has_chunk(3), "a chunk whose data was lost is dropped");
    }

    #[test]
    fn the_last_close_marks_the_map_clean() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let data = vec![5u8; 3 * 65536];
        let manifest = entry_for(&data);
        let entry = &manifest.models[0].files[0];
        let blob = cache.open_blob(entry).unwrap();
        blob.write_at(&data[..65536], 0).unwrap();
        blob.mark_verified(0);
        assert!(blob.map.as_ref().unwrap().dirty_since().is_some());
        drop(blob);
        let map_path = cache.with_suffix(&entry.sha256, ".map");
        let map =
            ChunkMap::open(&map_path, &dir.path().join("tmp"), entry.size, 65536, false).unwrap();
        assert_eq!(map.dirty_since(), None);
        assert!(map.is_set(0));
    }

    #[test]
    fn other_processes_see_verified_chunks_while_the_map_is_dirty() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![5u8; 3 * 65536];
        let manifest = entry_for(&data);
        let entry = &manifest.models[0].files[0];
        let cache = Cache::open(dir.path()).unwrap();
        let blob = cache.open_blob(entry).unwrap();
        blob.write_at(&data[..65536], 0).unwrap();
        blob.mark_verified(0);
        // A second Cache has no open blobs: it reads the map file, as `status` does.
        let other = Cache::open(dir.path()).unwrap();
        assert_eq!(
            other.presence(entry).unwrap(),
            crate::cache::Presence::Partial { bytes: 65536 }
        );
    }
}
