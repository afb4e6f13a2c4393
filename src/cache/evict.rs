//! Keeping the cache to its size: an optional quota (`--max-cache-size`) and,
//! always, a floor of free space on its file system. Room is made by evicting
//! whole files of the least recently used models that no process has open and
//! nobody pinned.
//!
//! - In use: every process holding a blob open holds a shared `flock` on its
//!   data file; eviction takes it exclusively without waiting, under the
//!   `blobs/ab/` directory lock, so a file being read or fetched anywhere is
//!   never evicted and no process opens a file while it goes.
//! - Last used: the data file's atime, set when a process opens or lets go of
//!   it, so it persists across restarts. A model was used when its most
//!   recently used file was; a file shared by models goes with the most recent.
//! - Pinned: models marked `pinned` in the manifest, and `CACHE/pins/<id>`
//!   (the digests of a model's files, written by `modelfs pin`).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::Cache;
use crate::hash::Digest;
use crate::manifest::{Manifest, Model};
use crate::units::format_size;

/// The free-space floor: like mountpoint-s3, leave 5% of the file system.
pub const MIN_FREE_PERCENT: u64 = 5;

/// How long a measured usage is the base of estimates before the cache is
/// walked again (estimates err on the high side; this only bounds drift).
const RECALIBRATE_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// The cache walked (bytes), and the shared count of bytes ever reserved
/// at that moment: the cache's usage now is at most `walked` plus what was
/// reserved since, by any process (evictions only make it less).
#[derive(Clone, Copy, Debug)]
pub(super) struct Calibration {
    walked: u64,
    reserved: u64,
    at: Instant,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Quota {
    /// Bytes the cache may take on disk; `None` for no quota (the free-space
    /// floor still holds).
    pub max_bytes: Option<u64>,
}

/// Which models a process knows (from its manifest), to group files and
/// to honour `pinned = true`; a mount's reload replaces it.
/// The manifest itself, shared: a catalog's copy would cost as much again.
#[derive(Default)]
pub struct Catalog {
    manifest: std::sync::Mutex<Option<Arc<Manifest>>>,
}

impl Catalog {
    pub fn new(manifest: Arc<Manifest>) -> Catalog {
        Catalog {
            manifest: std::sync::Mutex::new(Some(manifest)),
        }
    }

    fn manifest(&self) -> Option<Arc<Manifest>> {
        self.manifest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// One stored file, as eviction sees it.
#[derive(Clone, Debug)]
pub struct Stored {
    pub digest: Digest,
    /// On disk: data (what a sparse partial file holds) and chunk map.
    pub bytes: u64,
    pub last_used: SystemTime,
    /// Models known to have this file.
    pub models: Vec<String>,
    pub pinned: bool,
    pub in_use: bool,
}

/// What eviction would free, and what it must leave.
#[derive(Debug, Default)]
pub struct Plan {
    /// Least recently used first.
    pub evict: Vec<Stored>,
    /// Bytes still missing after evicting all of `evict` (0 if it suffices).
    pub short: u64,
    pub in_use: (usize, u64),
    pub pinned: (usize, u64),
}

impl Cache {
    pub fn with_quota(mut self, quota: Quota) -> Self {
        self.quota = quota;
        self
    }

    pub fn with_catalog(mut self, catalog: Catalog) -> Self {
        self.catalog = catalog;
        self
    }

    /// The models eviction groups files by from now on (a mount reloaded
    /// its manifest).
    pub fn set_catalog(&self, manifest: Arc<Manifest>) {
        *self
            .catalog
            .manifest
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(manifest);
    }

    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Makes room for `len` more bytes, evicting if needed, then runs
    /// `allocate` (which should allocate them on disk). Reservations are
    /// serialized across processes by an `flock` on `CACHE/quota.lock`, which
    /// also holds the count of bytes ever reserved, so each process's
    /// estimate includes every other's chunks in flight. Returns the number
    /// of files evicted. When nothing more can go, a `StorageFull` error that
    /// says what holds the space.
    pub fn reserve(&self, len: u64, allocate: impl FnOnce() -> io::Result<()>) -> io::Result<u64> {
        // The process lock first: threads sharing the lock file's descriptor
        // would all hold its flock at once.
        let mut calibration = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        let lock = self.quota_lock()?;
        let reserved = lock.reserved()?;
        let estimate = match *calibration {
            Some(c) if c.at.elapsed() < RECALIBRATE_AFTER => {
                c.walked + reserved.saturating_sub(c.reserved)
            }
            _ => self.calibrate(&mut calibration, reserved)?,
        };
        let mut evicted = 0;
        // What the cache may hold at most, by the figure the decision rests on.
        let mut bound = estimate;
        if self.shortfall(estimate, len)? > 0 {
            bound = self.calibrate(&mut calibration, reserved)?;
            let short = self.shortfall(bound, len)?;
            if short > 0 {
                let plan = self.plan(short)?;
                for victim in &plan.evict {
                    if self.evict(victim)? {
                        evicted += 1;
                    }
                }
                bound = self.calibrate(&mut calibration, reserved)?;
                let short = self.shortfall(bound, len)?;
                if short > 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::StorageFull,
                        format!(
                            "cache full: {} more needed and nothing else can be evicted \
                             ({} on disk; in use: {} files, {}; pinned: {} files, {})",
                            format_size(short),
                            format_size(bound),
                            plan.in_use.0,
                            format_size(plan.in_use.1),
                            plan.pinned.0,
                            format_size(plan.pinned.1),
                        ),
                    ));
                }
            }
        }
        allocate()?;
        lock.set_reserved(reserved + len)?;
        // Every reservation, with the most the cache can hold once it is
        // made: what tests (and an operator) check the quota against.
        tracing::debug!(
            bytes = len,
            usage_bound = bound + len,
            quota = self.quota.max_bytes,
            "reserved room in the cache"
        );
        Ok(evicted)
    }

    /// Walks the cache; `reserved` is the shared count now.
    fn calibrate(&self, calibration: &mut Option<Calibration>, reserved: u64) -> io::Result<u64> {
        let walked = self.disk_usage();
        *calibration = Some(Calibration {
            walked,
            reserved,
            at: Instant::now(),
        });
        Ok(walked)
    }

    fn quota_lock(&self) -> io::Result<QuotaLock<'_>> {
        let file = match self.quota_lock.get() {
            Some(f) => f,
            None => {
                let f = super::files::open_or_create(&self.root.join("quota.lock"))?;
                self.quota_lock.get_or_init(|| f)
            }
        };
        file.lock()?;
        Ok(QuotaLock(file))
    }

    /// Bytes over the quota or under the free-space floor if `len` more
    /// were added to a cache of `bytes`.
    fn shortfall(&self, bytes: u64, len: u64) -> io::Result<u64> {
        let over_quota = self
            .quota
            .max_bytes
            .map_or(0, |max| (bytes + len).saturating_sub(max));
        let fs = fs_space(&self.root)?;
        let floor = fs.total / 100 * MIN_FREE_PERCENT;
        let under_floor = (floor + len).saturating_sub(fs.avail);
        Ok(over_quota.max(under_floor))
    }

    /// Bytes to free so the cache fits its quota and floor now.
    pub fn excess(&self) -> io::Result<u64> {
        self.shortfall(self.disk_usage(), 0)
    }

    /// Every stored file, with what eviction needs to know of it.
    pub fn stored(&self) -> io::Result<Vec<Stored>> {
        let pinned = self.pinned_digests()?;
        let mut by_digest: HashMap<Digest, Stored> = HashMap::new();
        for dir in read_dir_or_empty(&self.root.join("blobs"))? {
            for file in read_dir_or_empty(&dir)? {
                let name = file.file_name().unwrap_or_default().to_string_lossy();
                let Some(digest) = name
                    .split('.')
                    .next()
                    .and_then(|h| Digest::from_hex(h).ok())
                else {
                    continue;
                };
                let Ok(meta) = fs::symlink_metadata(&file) else {
                    continue;
                };
                let stored = by_digest.entry(digest).or_insert_with(|| Stored {
                    digest,
                    bytes: 0,
                    last_used: SystemTime::UNIX_EPOCH,
                    models: Vec::new(),
                    pinned: pinned.contains(&digest),
                    in_use: false,
                });
                stored.bytes += std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
                if !name.ends_with(".map") {
                    stored.last_used = stored.last_used.max(meta.accessed()?);
                    stored.in_use |= super::files::is_locked(&file)?;
                }
            }
        }
        let manifest = self.catalog.manifest();
        for model in manifest.iter().flat_map(|m| &m.models) {
            for f in &model.files {
                if let Some(s) = by_digest.get_mut(&f.sha256) {
                    s.models.push(model.id.clone());
                }
            }
        }
        Ok(by_digest.into_values().collect())
    }

    /// What to evict to free `need` bytes: least recently used models first.
    pub fn plan(&self, need: u64) -> io::Result<Plan> {
        let stored = self.stored()?;
        // A model was used when its most recently used file was.
        let mut model_used: HashMap<&str, SystemTime> = HashMap::new();
        for s in &stored {
            for m in &s.models {
                let t = model_used.entry(m).or_insert(s.last_used);
                *t = (*t).max(s.last_used);
            }
        }
        let recency = |s: &Stored| {
            s.models
                .iter()
                .map(|m| model_used[m.as_str()])
                .max()
                .unwrap_or(s.last_used)
        };
        let mut plan = Plan::default();
        let mut candidates = Vec::new();
        for s in &stored {
            if s.pinned {
                plan.pinned.0 += 1;
                plan.pinned.1 += s.bytes;
            } else if s.in_use {
                plan.in_use.0 += 1;
                plan.in_use.1 += s.bytes;
            } else {
                candidates.push((recency(s), s));
            }
        }
        candidates.sort_by_key(|(t, s)| (*t, s.digest.0));
        let mut freed = 0;
        for (_, s) in candidates {
            if freed >= need {
                break;
            }
            freed += s.bytes;
            plan.evict.push(s.clone());
        }
        plan.short = need.saturating_sub(freed);
        Ok(plan)
    }

    /// Removes a stored file unless a process has started using it since
    /// it was planned; true if it went. Model trees that linked to it go too.
    pub fn evict(&self, victim: &Stored) -> io::Result<bool> {
        let complete = self.complete_path(&victim.digest);
        let dir = complete.parent().expect("blob paths have a parent");
        super::files::check_dir(dir)?;
        {
            let _others_wait = super::lock_dir(dir)?;
            // The complete file and the partial state of every layout.
            let hex = victim.digest.to_hex();
            let mut paths = Vec::new();
            for path in read_dir_or_empty(dir)? {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                if name == hex.as_str() || name.starts_with(&format!("{hex}.")) {
                    paths.push(path);
                }
            }
            // Held exclusively until they are gone: a process that opened
            // one without the directory lock (a complete file) either got
            // its shared lock first, and the file stays, or finds it gone.
            let mut held = Vec::new();
            for path in paths
                .iter()
                .filter(|p| !p.to_string_lossy().ends_with(".map"))
            {
                match super::files::open_ro(path).map(|f| (f.try_lock(), f)) {
                    Ok((Ok(()), file)) => held.push(file),
                    Ok((Err(fs::TryLockError::WouldBlock), _)) => return Ok(false),
                    Ok((Err(fs::TryLockError::Error(e)), _)) => return Err(e),
                    // Gone already, or a planted symlink: nothing holds it.
                    Err(_) => {}
                }
            }
            // Maps first: a map must never outlive its partial file, whose
            // inode number a new file could get.
            paths.sort_by_key(|p| !p.to_string_lossy().ends_with(".map"));
            for path in &paths {
                super::files::remove(path)?;
            }
            drop(held);
        }
        tracing::info!(
            digest = %victim.digest,
            bytes = victim.bytes,
            models = ?victim.models,
            "evicted from the cache"
        );
        self.prune_model_trees()?;
        Ok(true)
    }

    /// Removes `CACHE/models/<id>/` trees with a link to a file no longer stored.
    fn prune_model_trees(&self) -> io::Result<()> {
        fn dangling(dir: &Path) -> io::Result<bool> {
            for entry in read_dir_or_empty(dir)? {
                let meta = fs::symlink_metadata(&entry)?;
                if meta.is_dir() {
                    if dangling(&entry)? {
                        return Ok(true);
                    }
                } else if meta.is_symlink() && !entry.exists() {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        for tree in read_dir_or_empty(&self.root.join("models"))? {
            if dangling(&tree)? {
                fs::remove_dir_all(&tree)?;
            }
        }
        Ok(())
    }

    fn pins_dir(&self) -> PathBuf {
        self.root.join("pins")
    }

    /// Keeps `model`'s files from eviction, whatever manifest a process uses.
    pub fn pin(&self, model: &Model) -> io::Result<()> {
        super::files::ensure_dir(&self.pins_dir())?;
        let body: String = model
            .files
            .iter()
            .map(|f| format!("{}\n", f.sha256))
            .collect();
        let path = self.pins_dir().join(&model.id);
        let (mut file, tmp) = self.temp_file(&Digest([0; 32]))?;
        std::io::Write::write_all(&mut file, body.as_bytes())?;
        fs::rename(tmp, path)
    }

    /// False if the model was not pinned here.
    pub fn unpin(&self, id: &str) -> io::Result<bool> {
        match fs::remove_file(self.pins_dir().join(id)) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub fn is_pinned(&self, model: &Model) -> bool {
        model.pinned || self.pins_dir().join(&model.id).exists()
    }

    fn pinned_digests(&self) -> io::Result<HashSet<Digest>> {
        let manifest = self.catalog.manifest();
        let mut pinned: HashSet<Digest> = manifest
            .iter()
            .flat_map(|m| &m.models)
            .filter(|m| m.pinned)
            .flat_map(|m| m.files.iter().map(|f| f.sha256))
            .collect();
        for pin in read_dir_or_empty(&self.pins_dir())? {
            let text = String::from_utf8_lossy(&super::files::read(&pin)?).into_owned();
            pinned.extend(text.lines().filter_map(|l| Digest::from_hex(l.trim()).ok()));
        }
        Ok(pinned)
    }
}

/// `CACHE/quota.lock`, held (`flock`) until dropped. Its content: the bytes
/// ever reserved in this cache, a little-endian u64 (wrapping is centuries off).
struct QuotaLock<'a>(&'a File);

impl QuotaLock<'_> {
    fn reserved(&self) -> io::Result<u64> {
        let mut bytes = Vec::with_capacity(8);
        crate::fileio::append_at(self.0, &mut bytes, 8, 0)?;
        // A new (empty) file counts 0.
        Ok(bytes.try_into().map_or(0, u64::from_le_bytes))
    }

    fn set_reserved(&self, reserved: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self.0, &reserved.to_le_bytes(), 0)
    }
}

impl Drop for QuotaLock<'_> {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

struct FsSpace {
    /// Available to unprivileged users.
    avail: u64,
    total: u64,
}

fn fs_space(path: &Path) -> io::Result<FsSpace> {
    let st = crate::fileio::statvfs(path)?;
    Ok(FsSpace {
        avail: st.f_bavail * st.f_frsize,
        total: st.f_blocks * st.f_frsize,
    })
}

fn read_dir_or_empty(dir: &Path) -> io::Result<Vec<PathBuf>> {
    match fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.map(|e| e.path())).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A catalog of `(id, files, pinned)`.
    fn catalog(models: &[(&str, &[Digest], bool)]) -> Catalog {
        let mut text = String::from("version = 1\n");
        for (id, files, pinned) in models {
            text += &format!(
                "[[model]]\nid = \"{id}\"\npinned = {pinned}\nsources = [\"file:///x\"]\n"
            );
            for (i, d) in files.iter().enumerate() {
                text += &format!("[[model.file]]\npath = \"f{i}\"\nsize = 1\nsha256 = \"{d}\"\n");
            }
        }
        Catalog::new(Arc::new(Manifest::parse("t.toml".as_ref(), &text).unwrap()))
    }

    /// A complete blob of 4 KiB last used `age` seconds ago.
    fn stored_blob(cache: &Cache, seed: u8, age: u64) -> (Digest, File) {
        let digest = Digest([seed; 32]);
        let path = cache.complete_path(&digest);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, [seed; 4096]).unwrap();
        let file = File::open(&path).unwrap();
        let at = SystemTime::now() - std::time::Duration::from_secs(age);
        file.set_times(fs::FileTimes::new().set_accessed(at))
            .unwrap();
        (digest, file)
    }

    #[test]
    fn plans_least_recent_models_first_and_skips_pinned_and_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let (orphan, _) = stored_blob(&cache, 1, 500);
        let (old_only, _) = stored_blob(&cache, 2, 400);
        let (shared, _) = stored_blob(&cache, 3, 300);
        let (new_only, _) = stored_blob(&cache, 4, 100);
        let (pinned, _) = stored_blob(&cache, 5, 900);
        let (open, held) = stored_blob(&cache, 6, 900);
        held.lock_shared().unwrap();
        let cache = cache.with_catalog(catalog(&[
            ("old", &[old_only, shared], false),
            ("new", &[shared, new_only], false),
            ("p", &[pinned], true),
        ]));

        let all = cache.plan(u64::MAX).unwrap();
        let order: Vec<_> = all.evict.iter().map(|s| s.digest).collect();
        // "old" was last used with `shared` (300 s ago), but `shared` goes with "new" (100 s).
        assert_eq!(order[..2], [orphan, old_only]);
        assert_eq!(order.len(), 4);
        assert!(order[2..].contains(&shared) && order[2..].contains(&new_only));
        assert_eq!((all.pinned.0, all.in_use.0), (1, 1));
        assert!(all.short > 0, "pinned and open files cannot be freed");
        assert!(!order.contains(&pinned) && !order.contains(&open));

        let some = cache.plan(4097).unwrap();
        assert_eq!(some.evict.len(), 2, "just enough, oldest first");
        assert_eq!(some.short, 0);

        assert!(
            !cache
                .evict(
                    &cache
                        .stored()
                        .unwrap()
                        .into_iter()
                        .find(|s| s.digest == open)
                        .unwrap()
                )
                .unwrap(),
            "a file opened since the plan stays"
        );
        assert!(cache.evict(&some.evict[0]).unwrap());
        assert!(!cache.complete_path(&orphan).exists());
    }
}
