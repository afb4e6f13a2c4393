//! One file's content in the cache, complete or being filled.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use super::chunk_map::{ChunkMap, Identity};
use super::{BlobKey, Presence, files};
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

/// Where a blob's files live.
pub(super) struct Paths {
    pub complete: PathBuf,
    pub partial: PathBuf,
    pub map: PathBuf,
}

pub struct Blob {
    pub digest: Digest,
    pub key: BlobKey,
    pub size: u64,
    pub chunk_size: u64,
    /// What each chunk must hash to; `None` for a file verified only whole.
    chunks: Option<Box<[Digest]>>,
    paths: Paths,
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
    fn new(entry: &FileEntry, key: BlobKey, paths: Paths) -> Blob {
        Blob {
            digest: entry.sha256,
            key,
            size: entry.size,
            chunk_size: entry.chunk_size,
            chunks: entry.chunk_hashes().map(Iterator::collect),
            paths,
            data: RwLock::new(None),
            map: None,
            complete: AtomicBool::new(false),
            finishing: Mutex::new(()),
            verified: AtomicU64::new(0),
        }
    }

    /// Opens `entry`'s complete file if the cache has it, taking no lock: a
    /// complete file never changes, and eviction never removes one that a
    /// process has marked in use. `None` if there is none (or it went
    /// meanwhile); then [`Blob::open`] is the way.
    pub(super) fn open_complete(
        entry: &FileEntry,
        key: BlobKey,
        paths: Paths,
    ) -> io::Result<Option<Blob>> {
        let file = match files::open_ro(&paths.complete) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if files::check_regular(&paths.complete, &file)?.len() != entry.size {
            return Ok(None);
        }
        let file = in_use(file)?;
        // Evicted between the open and the lock: then it is not ours to use.
        if !same_file(&paths.complete, &file)? {
            return Ok(None);
        }
        let blob = Blob::new(entry, key, paths);
        *blob.data.write().unwrap_or_else(|p| p.into_inner()) = Some(file);
        blob.complete.store(true, Ordering::Release);
        Ok(Some(blob))
    }

    /// Opens what the cache holds of `entry`; `temp` makes a new private file
    /// in the cache's `tmp/`. Runs under the `blobs/ab/` lock.
    pub(super) fn open(
        entry: &FileEntry,
        key: BlobKey,
        paths: Paths,
        temp: impl Fn() -> io::Result<(File, PathBuf)>,
    ) -> io::Result<Blob> {
        let mut blob = Blob::new(entry, key, paths);
        let complete = &blob.paths.complete;
        match files::open_ro(complete) {
            Ok(f) if files::check_regular(complete, &f)?.len() == entry.size => {
                *blob.data.get_mut().unwrap() = Some(in_use(f)?);
                blob.complete = AtomicBool::new(true);
                return Ok(blob);
            }
            // Named by a sha256 whose size this entry disagrees with: one of
            // them is wrong, and this one will never verify. The file stays
            // for whoever it is right for (verify and eviction deal with it).
            Ok(_) => {
                tracing::warn!(path = %complete.display(), size = entry.size, "the cached file with this sha256 has another size than the manifest says");
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if entry.size == 0 {
            // Nothing to fetch (the manifest checked that the digest is the
            // empty file's): complete by definition.
            let (file, tmp) = temp()?;
            blob.publish(&tmp, &file, None)?;
            *blob.data.get_mut().unwrap() = Some(in_use(file)?);
            blob.complete = AtomicBool::new(true);
            return Ok(blob);
        }
        if entry.is_chunked() {
            let (file, map) = blob.open_partial(temp)?;
            // Shared while we may set bits; the last writer out marks it clean.
            map.file().lock_shared()?;
            let boot = boot_id();
            if map.dirty_since().is_some_and(|b| b != boot) {
                let suspect = map.suspect_all()?;
                tracing::warn!(file = %entry.path, suspect, "chunks cached before an unclean shutdown will be re-verified as they are needed");
            }
            map.mark_dirty(boot)?;
            blob.verified = AtomicU64::new(map.count());
            blob.map = Some(map);
            *blob.data.get_mut().unwrap() = Some(in_use(file)?);
        }
        Ok(blob)
    }

    /// The partial file and its map, if they are there and the map was made
    /// for this very file and layout; otherwise a new empty pair. A pair is
    /// only ever replaced whole, never resized or re-mapped in place, so a
    /// process still using the old pair keeps a consistent one.
    fn open_partial(
        &self,
        temp: impl Fn() -> io::Result<(File, PathBuf)>,
    ) -> io::Result<(File, ChunkMap)> {
        let identity =
            |meta: &fs::Metadata| Identity::of(meta, self.size, self.chunk_size, self.key.layout);
        match files::open_rw(&self.paths.partial) {
            Ok(file) => {
                let meta = files::check_writable(&self.paths.partial, &file)?;
                if meta.len() == self.size {
                    let id = identity(&meta);
                    if let Some(map) = ChunkMap::open(&self.paths.map, &id)? {
                        return Ok((file, map));
                    }
                    let (tmp, tmp_path) = temp()?;
                    if let Some(map) = ChunkMap::upgrade_v2(&self.paths.map, (tmp, &tmp_path), &id)?
                    {
                        tracing::info!(path = %self.paths.map.display(), "upgraded a chunk map from version 2");
                        return Ok((file, map));
                    }
                    files::remove(&tmp_path)?;
                }
                tracing::warn!(path = %self.paths.partial.display(), "partly fetched file does not match its chunk map; starting it afresh");
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let (file, tmp) = temp()?;
        file.set_len(self.size)?;
        let id = identity(&file.metadata()?);
        let map_tmp = temp()?;
        // The old map goes before the new data takes the name: a map whose
        // partial file is gone must not meet a new file that got its inode
        // number. A crash between the renames leaves a partial file without
        // a map, and the next open starts afresh.
        files::remove(&self.paths.map)?;
        fs::rename(&tmp, &self.paths.partial)?;
        let map = ChunkMap::create(&self.paths.map, (map_tmp.0, &map_tmp.1), &id)?;
        Ok((file, map))
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
        Presence::Partial { bytes }
    }

    /// A handle on the complete file, for the kernel to read directly.
    pub fn complete_file(&self) -> Option<File> {
        if !self.is_complete() {
            return None;
        }
        self.data_file()
    }

    /// A handle the kernel may read directly: the complete file, or the
    /// partial one once every chunk of it is verified (the whole-file check
    /// may still be under way; it publishes this very inode). Its bytes are
    /// the ones modelfs would serve itself.
    pub fn servable_file(&self) -> Option<File> {
        self.is_servable().then(|| self.data_file())?
    }

    /// Whether [`Blob::servable_file`] has a file to give.
    pub fn is_servable(&self) -> bool {
        self.is_complete() || self.all_chunks_verified()
    }

    /// Appends the verified bytes `offset..end` to `out`; the caller has
    /// checked that their chunks are present.
    pub fn read_into(&self, out: &mut Vec<u8>, offset: u64, end: u64) -> io::Result<()> {
        let data = self.data.read().unwrap_or_else(|p| p.into_inner());
        let file = data
            .as_ref()
            .ok_or_else(|| io::Error::other("no cached data"))?;
        let len = (end - offset) as usize;
        if crate::fileio::append_at(file, out, len, offset)? != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "cached file is shorter than its size",
            ));
        }
        Ok(())
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
        if let Some(map) = &self.map {
            if map.set(index) {
                self.verified.fetch_add(1, Ordering::AcqRel);
            }
            // Fetched again after a power loss: no longer in doubt.
            map.clear_suspect(index);
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

    /// Claims chunk `index` unless another process is fetching it (`None`
    /// then). Never waits.
    pub fn try_claim_chunk(self: &Arc<Self>, index: u64) -> io::Result<Option<ChunkClaim>> {
        if let Some(map) = &self.map
            && !map.try_claim(index)?
        {
            return Ok(None);
        }
        Ok(Some(ChunkClaim {
            blob: Arc::clone(self),
            index,
        }))
    }

    /// Bytes of unverified chunk `index` already written from its start, as
    /// recorded by the fetch that wrote them (perhaps in a process since
    /// killed): a fetch re-hashes them and asks the source for the rest.
    pub fn progress(&self, index: u64) -> u64 {
        let len = super::chunk_len(self.size, self.chunk_size, index);
        self.map.as_ref().map_or(0, |m| m.progress(index).min(len))
    }

    /// Records how far chunk `index` is written; call with the chunk claimed.
    pub fn record_progress(&self, index: u64, bytes: u64) {
        if let Some(map) = &self.map {
            map.set_progress(index, bytes);
        }
    }

    /// Hashes the first `len` bytes of chunk `index` as they are on disk,
    /// into `hasher`: the prefix a resumed fetch continues after. Blocking.
    pub fn hash_prefix(&self, index: u64, len: u64, hasher: &mut sha2::Sha256) -> io::Result<()> {
        use sha2::Digest as _;
        let file = self
            .data_file()
            .ok_or_else(|| io::Error::other("no partial file"))?;
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, index * self.chunk_size)?;
        hasher.update(&buf);
        Ok(())
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
    pub fn verify(&self) -> io::Result<Verified> {
        if let Some(file) = self.complete_file() {
            let good = Digest::of_file(&file)? == self.digest;
            if !good {
                let _others_wait = self.lock_dir()?;
                if same_file(&self.paths.complete, &file)? {
                    fs::remove_file(&self.paths.complete)?;
                }
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
        let (kept, dropped) = reverify(map, &file, self)?;
        self.verified.store(map.count(), Ordering::Release);
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

    /// Records a use now, for eviction's least-recently-used order: at the
    /// end of each use (a reader's close, a prefetch), not when the blob is
    /// dropped, which background work (the whole-file check) may delay.
    pub fn mark_used(&self) {
        let data = self.data.read().unwrap_or_else(|p| p.into_inner());
        if let Some(file) = data.as_ref() {
            touch(file);
        }
    }

    /// Whether chunk `index` was verified before a power loss and awaits
    /// [`Blob::confirm_suspect`] before it is served.
    pub fn is_suspect(&self, index: u64) -> bool {
        self.map.as_ref().is_some_and(|m| m.is_suspect(index))
    }

    /// Re-hashes a suspect chunk's bytes on disk: true (and verified again)
    /// if they survived, false (and to be fetched) if not. Call with the
    /// chunk claimed. Blocking.
    pub fn confirm_suspect(&self, index: u64) -> io::Result<bool> {
        let (Some(map), Some(file)) = (&self.map, self.data_file()) else {
            return Ok(false);
        };
        if !map.is_suspect(index) {
            return Ok(map.is_set(index));
        }
        let good = chunk_matches(&file, self, index)?;
        if good {
            self.mark_verified(index);
        }
        map.clear_suspect(index);
        Ok(good)
    }

    /// What chunk `index` must hash to; `None` for a file verified whole.
    pub fn chunk_hash(&self, index: u64) -> Option<Digest> {
        self.chunks.as_ref().map(|c| c[index as usize])
    }

    /// What the whole file hashed to when its chunks all verified but it did
    /// not: the manifest contradicts itself, remembered across opens so
    /// the file is neither served nor fetched and hashed again.
    pub fn failed_whole(&self) -> Option<Digest> {
        self.map.as_ref().and_then(ChunkMap::failed_whole)
    }

    /// Once every chunk is verified: checks the whole file against its
    /// sha256 and moves it to its complete name. A mismatch drops every
    /// chunk and is remembered (see [`Blob::failed_whole`]). Blocking.
    pub fn finish_chunked(&self) -> io::Result<Result<(), Digest>> {
        let _one = self.finishing.lock().unwrap_or_else(|p| p.into_inner());
        if self.is_complete() {
            return Ok(Ok(()));
        }
        // Failed once (another finish queued meanwhile): not hashed again.
        if let Some(actual) = self.failed_whole() {
            return Ok(Err(actual));
        }
        let file = self
            .data_file()
            .ok_or_else(|| io::Error::other("no partial file"))?;
        let actual = Digest::of_file(&file)?;
        if actual != self.digest {
            if let Some(map) = &self.map {
                map.set_failed_whole(actual)?;
                self.verified.store(0, Ordering::Release);
            }
            return Ok(Err(actual));
        }
        self.publish(&self.paths.partial, &file, Some(&self.paths.map))?;
        self.complete.store(true, Ordering::Release);
        Ok(Ok(()))
    }

    /// Adopts a verified whole-file download: `file`, written at `path` in
    /// `tmp/`. Blocking.
    pub fn finish_whole(&self, path: &Path, file: File) -> io::Result<()> {
        self.publish(path, &file, None)?;
        *self.data.write().unwrap_or_else(|p| p.into_inner()) = Some(in_use(file)?);
        self.complete.store(true, Ordering::Release);
        Ok(())
    }

    fn lock_dir(&self) -> io::Result<File> {
        super::lock_dir(
            self.paths
                .complete
                .parent()
                .expect("blob paths have a parent"),
        )
    }

    /// Renames verified data (`file`, at `from`) to its complete name,
    /// durably, and drops its chunk map. Only if `from` still names `file`:
    /// another process may have published or replaced it meanwhile, and
    /// then this one serves from its own descriptor and publishes nothing.
    fn publish(&self, from: &Path, file: &File, map: Option<&Path>) -> io::Result<()> {
        // Synced before the lock: it may take seconds, and others wait on the lock.
        file.sync_all()?;
        let _others_wait = self.lock_dir()?;
        if !same_file(from, file)? {
            tracing::debug!(path = %from.display(), "published or replaced by another process");
            return Ok(());
        }
        fs::rename(from, &self.paths.complete)?;
        if let Some(map) = map {
            files::remove(map)?;
        }
        if let Some(dir) = self.paths.complete.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// Whether `path` names the file open as `file` (and is no symlink).
fn same_file(path: &Path, file: &File) -> io::Result<bool> {
    let open = file.metadata()?;
    Ok(match fs::symlink_metadata(path) {
        Ok(m) => m.is_file() && m.dev() == open.dev() && m.ino() == open.ino(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    })
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

/// When the last user of a partial file lets go, its data is made durable
/// and then its map marked clean. The sync may take seconds, so inside a
/// runtime it runs on the blocking pool, never on the FUSE thread or an
/// async worker.
impl Drop for Blob {
    fn drop(&mut self) {
        let data = self.data.get_mut().map_or(None, Option::take);
        let Some(map) = self.map.take() else { return };
        let complete = self.is_complete();
        let path = self.paths.partial.clone();
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

/// Whether chunk `index`'s bytes in `file` match their hash. Blocking.
fn chunk_matches(file: &File, blob: &Blob, index: u64) -> io::Result<bool> {
    let Some(expected) = blob.chunk_hash(index) else {
        return Ok(false);
    };
    // A chunk that cannot be read whole (a short file) is not verified.
    Ok(super::chunk_hashes_to(file, blob.size, blob.chunk_size, index, expected).unwrap_or(false))
}

/// Re-hashes every chunk the map holds verified or suspect: good ones are
/// verified, bad ones dropped: (kept, dropped). Blocking.
fn reverify(map: &ChunkMap, file: &File, blob: &Blob) -> io::Result<(u64, u64)> {
    let (mut kept, mut dropped) = (0, 0);
    for index in 0..blob.chunk_count() {
        if !map.is_set(index) && !map.is_suspect(index) {
            continue;
        }
        // Claimed, as a fetcher claims it: no one rewrites it while it is hashed.
        map.claim(index)?;
        let matches = chunk_matches(file, blob, index);
        map.release(index)?;
        if matches? {
            map.set(index);
            kept += 1;
        } else {
            map.clear(index);
            dropped += 1;
        }
        map.clear_suspect(index);
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
        // Nothing is trusted at open, and nothing is hashed there either.
        assert!((0..4).all(|c| !blob.has_chunk(c) && blob.is_suspect(c)));
        // Another process sees the same: the suspicion is in the map.
        let other = Cache::open(dir.path()).unwrap();
        assert_eq!(
            other.presence(entry).unwrap(),
            crate::cache::Presence::Partial { bytes: 0 }
        );
        // On first use, each chunk is re-hashed.
        assert!(
            (0..3).all(|c| blob.confirm_suspect(c).unwrap()),
            "intact chunks are kept"
        );
        assert!(
            !blob.confirm_suspect(3).unwrap(),
            "a chunk whose data was lost is dropped"
        );
        assert!((0..3).all(|c| blob.has_chunk(c)) && !blob.has_chunk(3));
        assert!((0..4).all(|c| !blob.is_suspect(c)));
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
        let key = BlobKey::of(entry);
        let data = fs::metadata(cache.state_path(&key, "partial")).unwrap();
        let id = Identity::of(&data, entry.size, 65536, key.layout);
        let map = ChunkMap::open(&cache.state_path(&key, "map"), &id)
            .unwrap()
            .unwrap();
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
