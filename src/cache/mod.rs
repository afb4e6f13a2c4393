//! The cache directory: verified file contents, stored once per sha256, and
//! what is known about files still being filled. Layout (version 2):
//!
//! ```text
//! CACHE/VERSION                 "2": the layout version
//! CACHE/blobs/ab/<sha256>       a complete file, verified whole; immutable
//! CACHE/blobs/ab/<sha256>.<layout>.partial  a sparse file being filled chunk by chunk
//! CACHE/blobs/ab/<sha256>.<layout>.map      which chunks of that .partial are verified
//! CACHE/tmp/<sha256>.<pid>.<n>  whole-file downloads (files without chunk
//!                               hashes), partial files and maps being made
//! CACHE/models/<id>/<path>      for complete models: relative symlinks to blobs
//! CACHE/pins/<id>               digests of a pinned model's files
//! ```
//!
//! `<layout>` names the chunking that verifies a partial file (see
//! [`BlobKey`]): two manifests that chunk one file differently fill two
//! partial files, never one with the other's chunk numbers. Complete files
//! are shared whatever the chunking. Version 1 had one partial file per
//! sha256; opening such a cache drops its partial files (complete ones stay).

mod blob;
pub mod chunk_map;
mod evict;
pub mod files;
#[cfg(test)]
mod reftest;
pub mod watch;

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use sha2::{Digest as _, Sha256};

pub use blob::{Blob, ChunkClaim};
pub use evict::{Catalog, MIN_FREE_PERCENT, Plan, Quota, Stored};

use crate::hash::Digest;
use crate::manifest::{FileEntry, Model};

pub const LAYOUT_VERSION: &str = "2";
/// Layouts this version opens, upgrading them to [`LAYOUT_VERSION`].
const UPGRADES_FROM: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache directory {}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "cache directory {} has layout version {found:?}; this modelfs uses {LAYOUT_VERSION:?}",
        path.display()
    )]
    Version { path: PathBuf, found: String },
}

/// How much of a file the cache holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    Absent,
    /// A partial file exists, with `bytes` verified so far (maybe none):
    /// what it holds may grow at any moment.
    Partial {
        bytes: u64,
    },
    Complete,
    /// A complete file of the wrong size: it cannot be right, and the next
    /// open discards it. (`modelfs verify` finds subtler damage.)
    Corrupt,
}

impl Presence {
    pub fn bytes(self, size: u64) -> u64 {
        match self {
            Presence::Absent | Presence::Corrupt => 0,
            Presence::Partial { bytes } => bytes,
            Presence::Complete => size,
        }
    }
}

/// Which cached state serves a manifest entry: its content, and the layout
/// that verifies it chunk by chunk (size, chunk size and chunk hashes; for a
/// file verified only whole, its size). Entries agree on a key exactly when
/// a chunk verified for one is verified for the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlobKey {
    pub digest: Digest,
    pub layout: Digest,
}

impl BlobKey {
    pub fn of(entry: &FileEntry) -> BlobKey {
        let mut h = Sha256::new();
        h.update(entry.size.to_le_bytes());
        if let Some(chunks) = entry.chunk_hashes() {
            h.update(entry.chunk_size.to_le_bytes());
            chunks.for_each(|c| h.update(c.0));
        }
        BlobKey {
            digest: entry.sha256,
            layout: Digest(h.finalize().into()),
        }
    }

    /// The layout's short name in file names: 64 bits tell layouts of one
    /// file apart; the map header holds the whole digest.
    pub fn tag(&self) -> String {
        self.layout.to_hex()[..16].to_owned()
    }
}

pub struct Cache {
    root: PathBuf,
    /// Open blobs, so that manifest entries with one key share chunk state
    /// and fetches.
    open: Mutex<HashMap<BlobKey, Weak<Blob>>>,
    quota: Quota,
    catalog: Catalog,
    /// The last walk of the cache, the base of usage estimates.
    usage: Mutex<Option<evict::Calibration>>,
    /// `CACHE/quota.lock`, opened at the first reservation.
    quota_lock: std::sync::OnceLock<fs::File>,
}

impl Cache {
    /// Opens (creating if needed) the cache at `root`, which must be a
    /// directory only its owner can change.
    pub fn open(root: &Path) -> Result<Cache, CacheError> {
        let at = |path: &Path| {
            let path = path.to_owned();
            move |source| CacheError::Io { path, source }
        };
        // 0755 whatever the umask: a group-writable root (umask 002) is refused below.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(root)
            .map_err(at(root))?;
        let root = fs::canonicalize(root).map_err(at(root))?;
        files::check_dir(&root).map_err(at(&root))?;
        for sub in ["blobs", "tmp"] {
            files::ensure_dir(&root.join(sub)).map_err(at(&root.join(sub)))?;
        }
        let cache = Cache {
            root,
            open: Mutex::new(HashMap::new()),
            quota: Quota::default(),
            catalog: Catalog::default(),
            usage: Mutex::new(None),
            quota_lock: std::sync::OnceLock::new(),
        };
        cache.check_version().map_err(|e| match e {
            VersionError::Io(e) => at(&cache.root)(e),
            VersionError::Other(found) => CacheError::Version {
                path: cache.root.clone(),
                found,
            },
        })?;
        Ok(cache)
    }

    /// Reads `VERSION`, writing it for a new cache and upgrading an older
    /// layout, with other processes kept out meanwhile.
    fn check_version(&self) -> Result<(), VersionError> {
        let _others_wait = lock_dir(&self.root)?;
        let path = self.root.join("VERSION");
        let found = match files::read(&path) {
            Ok(text) => String::from_utf8_lossy(&text).trim().to_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e.into()),
        };
        match found.as_str() {
            LAYOUT_VERSION => return Ok(()),
            UPGRADES_FROM => self.drop_v1_partials()?,
            "" => {}
            _ => return Err(VersionError::Other(found)),
        }
        let (mut file, tmp) = self.temp_file(&Digest([0; 32]))?;
        file.write_all(format!("{LAYOUT_VERSION}\n").as_bytes())?;
        file.sync_all()?;
        fs::rename(tmp, path)?;
        Ok(())
    }

    /// Layout 1 kept `<sha256>.partial` and `.map` per content, whatever the
    /// chunking; their bits cannot be trusted under layout 2's rules.
    fn drop_v1_partials(&self) -> io::Result<()> {
        for dir in fs::read_dir(self.root.join("blobs"))? {
            let dir = dir?.path();
            if !fs::symlink_metadata(&dir)?.is_dir() {
                continue;
            }
            files::check_dir(&dir)?;
            for file in fs::read_dir(&dir)? {
                let path = file?.path();
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                let parts: Vec<&str> = name.split('.').collect();
                if let [_, "partial" | "map"] = parts[..] {
                    files::remove(&path)?;
                }
            }
        }
        tracing::info!(cache = %self.root.display(), "upgraded the cache layout from 1 to {LAYOUT_VERSION}; partly fetched files start over");
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_base(&self, digest: &Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.root.join("blobs").join(&hex[..2]).join(hex)
    }

    pub fn complete_path(&self, digest: &Digest) -> PathBuf {
        self.blob_base(digest)
    }

    /// `blobs/ab/<sha256>.<layout>.<suffix>`: state of one layout.
    fn state_path(&self, key: &BlobKey, suffix: &str) -> PathBuf {
        let mut p = self.blob_base(&key.digest).into_os_string();
        p.push(format!(".{}.{suffix}", key.tag()));
        p.into()
    }

    /// Makes something new under a fresh name in `tmp/`: names are tried
    /// until `make` finds one free, so a name planted there is skipped,
    /// never reused.
    fn fresh_temp<T>(
        &self,
        digest: &Digest,
        make: impl Fn(&Path) -> io::Result<T>,
    ) -> io::Result<(T, PathBuf)> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let mut last = None;
        for _ in 0..64 {
            let path = self.root.join("tmp").join(format!(
                "{digest}.{}.{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            match make(&path) {
                Ok(made) => return Ok((made, path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("tried at least once"))
    }

    /// A new private file in `tmp/` (a whole-file download, a partial file
    /// or chunk map being made), and its path.
    pub fn temp_file(&self, digest: &Digest) -> io::Result<(fs::File, PathBuf)> {
        self.fresh_temp(digest, files::create_new)
    }

    /// What the cache holds of `entry`, read without changing anything.
    pub fn presence(&self, entry: &FileEntry) -> io::Result<Presence> {
        if let Some(blob) = self.already_open(&BlobKey::of(entry)) {
            return Ok(blob.presence());
        }
        if let Ok(meta) = fs::symlink_metadata(self.complete_path(&entry.sha256)) {
            return Ok(if meta.is_file() && meta.len() == entry.size {
                Presence::Complete
            } else {
                Presence::Corrupt
            });
        }
        let Some(bits) = self.verified_bits(entry)? else {
            return Ok(Presence::Absent);
        };
        let bytes = bits
            .iter()
            .enumerate()
            .filter(|(_, set)| **set)
            .map(|(c, _)| chunk_len(entry.size, entry.chunk_size, c as u64))
            .sum();
        Ok(Presence::Partial { bytes })
    }

    /// Which chunks of `entry`'s partial file are verified, as its chunk map
    /// on disk says; `None` when there is no partial state for its layout.
    pub fn verified_bits(&self, entry: &FileEntry) -> io::Result<Option<Vec<bool>>> {
        match self.map_of(entry) {
            Some((path, id)) => chunk_map::read_bits(&path, &id),
            None => Ok(None),
        }
    }

    /// How many bytes of each chunk not yet verified a fetch has written
    /// (what one interrupted now resumes after), as the map records it.
    pub fn chunk_progress(&self, entry: &FileEntry) -> io::Result<Option<Vec<u64>>> {
        match self.map_of(entry) {
            Some((path, id)) => chunk_map::read_progress(&path, &id),
            None => Ok(None),
        }
    }

    /// Where `entry`'s chunk map is, and what it must describe: `None` for
    /// a file without chunk hashes, or with no partial file.
    fn map_of(&self, entry: &FileEntry) -> Option<(PathBuf, chunk_map::Identity)> {
        if !entry.is_chunked() {
            return None;
        }
        let key = BlobKey::of(entry);
        let data = fs::symlink_metadata(self.state_path(&key, "partial"))
            .ok()
            .filter(fs::Metadata::is_file)?;
        let id = chunk_map::Identity::of(&data, entry.size, entry.chunk_size, key.layout);
        Some((self.state_path(&key, "map"), id))
    }

    /// Opens the blob for `entry`, shared with every other open entry of the
    /// same key; creates its partial file and chunk map when needed.
    /// Blocking: it may wait for other processes opening the same content,
    /// but holds no lock that `presence` or other opens need meanwhile.
    pub fn open_blob(&self, entry: &FileEntry) -> io::Result<Arc<Blob>> {
        let key = BlobKey::of(entry);
        if let Some(blob) = self.already_open(&key) {
            return Ok(blob);
        }
        let complete = self.complete_path(&entry.sha256);
        let dir = complete
            .parent()
            .expect("blob paths have a parent")
            .to_owned();
        let paths = || blob::Paths {
            complete: complete.clone(),
            partial: self.state_path(&key, "partial"),
            map: self.state_path(&key, "map"),
        };
        let blob = match Blob::open_complete(entry, key, paths())? {
            Some(blob) => blob,
            None => {
                files::ensure_dir(&dir)?;
                let _other_processes_wait = lock_dir(&dir)?;
                Blob::open(entry, key, paths(), || self.temp_file(&entry.sha256))?
            }
        };
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        // Another thread may have opened it meanwhile: all share the first.
        if let Some(first) = open.get(&key).and_then(Weak::upgrade) {
            return Ok(first);
        }
        let blob = Arc::new(blob);
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(key, Arc::downgrade(&blob));
        Ok(blob)
    }

    fn already_open(&self, key: &BlobKey) -> Option<Arc<Blob>> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(key).and_then(Weak::upgrade)
    }

    /// Writes `CACHE/models/<id>/` for a complete model: `files` (all of
    /// its files, or all but optional ones that exist nowhere) as relative
    /// symlinks into `blobs/`, usable without FUSE and valid wherever the
    /// cache directory is mounted. Replaces an older tree.
    pub fn link_model(&self, model: &Model, files: &[&FileEntry]) -> io::Result<PathBuf> {
        let models = self.root.join("models");
        let dest = models.join(&model.id);
        // Built in tmp/ so that a crash's half tree is swept like any download.
        let first = files.first().map_or(Digest([0; 32]), |f| f.sha256);
        let ((), tmp) = self.fresh_temp(&first, |p| fs::create_dir(p))?;
        for file in files {
            let link = tmp.join(&*file.path);
            fs::create_dir_all(link.parent().expect("a file path has a parent"))?;
            // From models/<id>/<dirs...>/ back up to CACHE.
            let depth = 2 + file.path.matches('/').count();
            let hex = file.sha256.to_hex();
            let target = format!("{}blobs/{}/{hex}", "../".repeat(depth), &hex[..2]);
            std::os::unix::fs::symlink(target, &link)?;
        }
        files::ensure_dir(&models)?;
        // Whatever has the name goes (a symlink itself, not what it names).
        files::remove(&dest)?;
        match fs::rename(&tmp, &dest) {
            // Another process linked the same model meanwhile: same tree.
            Err(e) if fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) => {
                tracing::debug!(error = %e, "model tree made by another process");
                files::remove(&tmp)?;
            }
            other => other?,
        }
        Ok(dest)
    }

    /// Removes `CACHE/models/<id>/`, if there is one.
    pub fn unlink_model(&self, id: &str) -> io::Result<()> {
        files::remove(&self.root.join("models").join(id))
    }

    /// Bytes the cache takes on disk: stored files (partial files count what
    /// they hold) and downloads in progress.
    pub fn disk_usage(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            use std::os::unix::fs::MetadataExt;
            let Ok(entries) = fs::read_dir(dir) else {
                return 0;
            };
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.blocks() * 512,
                    Err(_) => 0,
                })
                .sum()
        }
        walk(&self.root.join("blobs")) + walk(&self.root.join("tmp"))
    }

    /// Removes temporary files (downloads, maps being made) left by
    /// processes that no longer run. A download in progress holds an
    /// `flock` on its file, which no dead process can; anything else in
    /// `tmp/` lives for moments, so what its maker's pid does not vouch for
    /// (the pid is gone, or may have been reused) goes after a grace period.
    pub fn sweep_temp(&self) -> io::Result<usize> {
        const GRACE: std::time::Duration = std::time::Duration::from_secs(60);
        let mut removed = 0;
        for entry in fs::read_dir(self.root.join("tmp"))? {
            let path = entry?.path();
            let pid = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.split('.').nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            let old = fs::symlink_metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > GRACE));
            let orphan = !pid.is_some_and(process_alive) || old;
            if orphan && !files::is_locked(&path)? {
                removed += usize::from(files::remove(&path).is_ok());
            }
        }
        Ok(removed)
    }
}

enum VersionError {
    Io(io::Error),
    /// A layout this version does not know.
    Other(String),
}

impl From<io::Error> for VersionError {
    fn from(e: io::Error) -> Self {
        VersionError::Io(e)
    }
}

/// Opening, publishing and (later) removing a blob happen under an exclusive
/// lock on its `blobs/ab/` directory, so no process ever finds a blob half
/// made (a partial file without its map) or half gone. Held while the
/// returned file is open.
fn lock_dir(dir: &Path) -> io::Result<fs::File> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY)
        .open(dir)?;
    file.lock()?;
    Ok(file)
}

/// Length of chunk `index` of a file: `chunk_size`, except maybe the last.
pub fn chunk_len(size: u64, chunk_size: u64, index: u64) -> u64 {
    chunk_size.min(size - index * chunk_size)
}

/// Whether chunk `index` of `file` (`size` bytes in chunks of
/// `chunk_size`) hashes to `expected`; an error if it cannot be read whole.
pub fn chunk_hashes_to(
    file: &fs::File,
    size: u64,
    chunk_size: u64,
    index: u64,
    expected: Digest,
) -> io::Result<bool> {
    use std::os::unix::fs::FileExt as _;
    let mut buf = vec![0u8; chunk_len(size, chunk_size, index) as usize];
    file.read_exact_at(&mut buf, index * chunk_size)?;
    Ok(Digest::of(&buf) == expected)
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}
