//! The cache directory: verified file contents, stored once per sha256, and
//! what is known about files still being filled. Layout (version 1):
//!
//! ```text
//! CACHE/VERSION                 "1": the layout version
//! CACHE/blobs/ab/<sha256>       a complete file, verified whole; immutable
//! CACHE/blobs/ab/<sha256>.partial  a sparse file being filled chunk by chunk
//! CACHE/blobs/ab/<sha256>.map   which chunks of the .partial are verified
//! CACHE/tmp/<sha256>.<pid>.<n>  whole-file downloads (files without chunk
//!                               hashes) and chunk maps being made
//! CACHE/models/<id>/<path>      for complete models: relative symlinks to blobs
//! CACHE/pins/<id>               digests of a pinned model's files
//! ```

mod blob;
pub mod chunk_map;
mod evict;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

pub use blob::Blob;
pub use evict::{Catalog, MIN_FREE_PERCENT, Plan, Quota, Stored};

use crate::hash::Digest;
use crate::manifest::{FileEntry, Model};

pub const LAYOUT_VERSION: &str = "1";

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

pub struct Cache {
    root: PathBuf,
    /// Open blobs by content, so that two manifest entries with one sha256
    /// share chunk state and fetches.
    open: Mutex<HashMap<Digest, Weak<Blob>>>,
    quota: Quota,
    catalog: Catalog,
    /// The last walk of the cache, the base of usage estimates.
    usage: Mutex<Option<evict::Calibration>>,
    /// `CACHE/quota.lock`, opened at the first reservation.
    quota_lock: std::sync::OnceLock<fs::File>,
}

impl Cache {
    /// Opens (creating if needed) the cache at `root`.
    pub fn open(root: &Path) -> Result<Cache, CacheError> {
        let at = |path: &Path| {
            let path = path.to_owned();
            move |source| CacheError::Io { path, source }
        };
        for sub in ["blobs", "tmp"] {
            fs::create_dir_all(root.join(sub)).map_err(at(&root.join(sub)))?;
        }
        let version_file = root.join("VERSION");
        match fs::read_to_string(&version_file) {
            Ok(found) if found.trim() == LAYOUT_VERSION => {}
            Ok(found) => {
                return Err(CacheError::Version {
                    path: root.to_owned(),
                    found: found.trim().to_owned(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::write(&version_file, format!("{LAYOUT_VERSION}\n"))
                    .map_err(at(&version_file))?
            }
            Err(e) => return Err(at(&version_file)(e)),
        }
        let root = fs::canonicalize(root).map_err(at(root))?;
        Ok(Cache {
            root,
            open: Mutex::new(HashMap::new()),
            quota: Quota::default(),
            catalog: Catalog::default(),
            usage: Mutex::new(None),
            quota_lock: std::sync::OnceLock::new(),
        })
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

    fn with_suffix(&self, digest: &Digest, suffix: &str) -> PathBuf {
        let mut p = self.blob_base(digest).into_os_string();
        p.push(suffix);
        p.into()
    }

    /// A fresh private path for a whole-file download.
    pub fn temp_path(&self, digest: &Digest) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        self.root.join("tmp").join(format!(
            "{digest}.{}.{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// What the cache holds of `entry`, read without changing anything.
    pub fn presence(&self, entry: &FileEntry) -> io::Result<Presence> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(blob) = open.get(&entry.sha256).and_then(Weak::upgrade) {
            return Ok(blob.presence());
        }
        drop(open);
        if let Ok(meta) = fs::metadata(self.complete_path(&entry.sha256)) {
            return Ok(if meta.len() == entry.size {
                Presence::Complete
            } else {
                Presence::Corrupt
            });
        }
        if entry.chunks.is_none() {
            return Ok(Presence::Absent);
        }
        let map = self.with_suffix(&entry.sha256, ".map");
        let Some(bits) = chunk_map::read_bits(&map, entry.size, entry.chunk_size)? else {
            return Ok(Presence::Absent);
        };
        let bytes = bits
            .iter()
            .enumerate()
            .filter(|(_, set)| **set)
            .map(|(c, _)| chunk_len(entry.size, entry.chunk_size, c as u64))
            .sum();
        Ok(if bytes == 0 {
            Presence::Absent
        } else {
            Presence::Partial { bytes }
        })
    }

    /// Opens the blob for `entry`, shared with every other open entry of the
    /// same content; creates its partial file and chunk map when needed.
    pub fn open_blob(&self, entry: &FileEntry) -> io::Result<Arc<Blob>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(blob) = open.get(&entry.sha256).and_then(Weak::upgrade) {
            return Ok(blob);
        }
        let dir = self.blob_base(&entry.sha256);
        let dir = dir.parent().expect("blob paths have a parent");
        fs::create_dir_all(dir)?;
        let _other_processes_wait = lock_dir(dir)?;
        let blob = Arc::new(Blob::open(
            entry,
            self.complete_path(&entry.sha256),
            self.with_suffix(&entry.sha256, ".partial"),
            self.with_suffix(&entry.sha256, ".map"),
            self.temp_path(&entry.sha256),
        )?);
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(entry.sha256, Arc::downgrade(&blob));
        Ok(blob)
    }

    /// Writes `CACHE/models/<id>/` for a complete model: its files as
    /// relative symlinks into `blobs/`, usable without FUSE and valid
    /// wherever the cache directory is mounted. Replaces an older tree.
    pub fn link_model(&self, model: &Model) -> io::Result<PathBuf> {
        let models = self.root.join("models");
        let dest = models.join(&model.id);
        // Built in tmp/ so that a crash's half tree is swept like any download.
        let tmp = self.temp_path(&model.files.first().map_or(Digest([0; 32]), |f| f.sha256));
        for file in &model.files {
            let link = tmp.join(&file.path);
            fs::create_dir_all(link.parent().expect("a file path has a parent"))?;
            // From models/<id>/<dirs...>/ back up to CACHE.
            let depth = 2 + file.path.matches('/').count();
            let hex = file.sha256.to_hex();
            let target = format!("{}blobs/{}/{hex}", "../".repeat(depth), &hex[..2]);
            std::os::unix::fs::symlink(target, &link)?;
        }
        fs::create_dir_all(&models)?;
        if dest.exists() {
            fs::remove_dir_all(&dest)?;
        }
        match fs::rename(&tmp, &dest) {
            // Another process linked the same model meanwhile: same tree.
            Err(e) if dest.is_dir() => {
                tracing::debug!(error = %e, "model tree made by another process");
                fs::remove_dir_all(&tmp)?;
            }
            other => other?,
        }
        Ok(dest)
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
    /// processes that no longer run.
    pub fn sweep_temp(&self) -> io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(self.root.join("tmp"))? {
            let entry = entry?;
            let name = entry.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.split('.').nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if pid.is_some_and(|p| !process_alive(p)) {
                let path = entry.path();
                let gone = if path.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                removed += usize::from(gone.is_ok());
            }
        }
        Ok(removed)
    }
}

/// Opening, publishing and (later) removing a blob happen under an exclusive
/// lock on its `blobs/ab/` directory, so no process ever finds a blob half
/// made (a partial file without its map) or half gone. Held while the
/// returned file is open.
fn lock_dir(dir: &Path) -> io::Result<fs::File> {
    let file = fs::File::open(dir)?;
    file.lock()?;
    Ok(file)
}

/// Length of chunk `index` of a file: `chunk_size`, except maybe the last.
pub fn chunk_len(size: u64, chunk_size: u64, index: u64) -> u64 {
    chunk_size.min(size - index * chunk_size)
}

pub fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence and permission.
    unsafe { libc::kill(pid, 0) == 0 || *libc::__errno_location() == libc::EPERM }
}
