//! The catalog a mount serves, one generation at a time: a manifest and the
//! tree made from it. A reload builds the next generation beside the one
//! in use and swaps it in whole, so that every request sees one catalog or
//! the next, never a mix, and none waits while the next is built.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use super::tree::{Changes, Kind, Layout, OutOfInodes, Tree};
use crate::hash::Digest;
use crate::manifest::Manifest;

pub struct Generation {
    pub manifest: Arc<Manifest>,
    pub tree: Tree,
    /// Every file inode by the first 8 bytes of its sha256, sorted: which
    /// inodes show a blob that changed in the cache.
    by_digest: Vec<(u64, u64)>,
    /// Models whose small files were fetched ahead (see
    /// [`super::ModelFs::open`]), by index in `manifest`.
    small_files_started: Mutex<HashSet<usize>>,
}

fn digest_key(digest: &Digest) -> u64 {
    u64::from_be_bytes(digest.0[..8].try_into().expect("8 bytes"))
}

impl Generation {
    fn new(manifest: Arc<Manifest>, tree: Tree) -> Generation {
        let mut by_digest: Vec<_> = tree
            .files()
            .map(|(ino, m, f)| (digest_key(&manifest.models[m].files[f].sha256), ino))
            .collect();
        by_digest.sort_unstable();
        Generation {
            manifest,
            tree,
            by_digest,
            small_files_started: Mutex::default(),
        }
    }

    /// The inodes that show the blob `digest` (one per model that has the
    /// file, in the models layout).
    pub fn inodes_of(&self, digest: &Digest) -> impl Iterator<Item = u64> + '_ {
        let (digest, key) = (*digest, digest_key(digest));
        let from = self.by_digest.partition_point(|&(k, _)| k < key);
        self.by_digest[from..]
            .iter()
            .take_while(move |&&(k, _)| k == key)
            .map(|&(_, ino)| ino)
            .filter(move |&ino| {
                matches!(self.tree.get(ino).map(|n| n.kind),
                    Some(Kind::File { model, file }) if self.manifest.models[model].files[file].sha256 == digest)
            })
    }

    /// Every file inode the manifest gives.
    pub fn file_inodes(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_digest.iter().map(|&(_, ino)| ino)
    }

    /// True the first time it is asked for `model`.
    pub fn first_open(&self, model: usize) -> bool {
        self.small_files_started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(model)
    }
}

/// How long a reload waits for the requests under way with the generation
/// it replaced to end.
const OLD_REQUESTS_END: Duration = Duration::from_secs(1);

/// The generation in use, and the making of the next.
pub struct Catalog {
    now: RwLock<Arc<Generation>>,
    layout: Layout,
    /// The next inode number to give; held while a reload runs.
    next_ino: Mutex<u64>,
}

impl Catalog {
    pub fn new(manifest: Arc<Manifest>, layout: Layout) -> Catalog {
        let tree = Tree::build(&manifest, layout);
        let next_ino = tree.max_ino() + 1;
        Catalog {
            now: RwLock::new(Arc::new(Generation::new(manifest, tree))),
            layout,
            next_ino: Mutex::new(next_ino),
        }
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The generation in use. A request holds it to the end, whatever a
    /// reload swaps in meanwhile.
    pub fn now(&self) -> Arc<Generation> {
        Arc::clone(&self.now.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Builds the generation of `manifest` beside the one in use, numbered
    /// after it; [`Catalog::swap`] puts it in use. Reloads run one at a
    /// time: the next is prepared and swapped under one lock.
    pub fn prepare(&self, manifest: Arc<Manifest>) -> Result<Next<'_>, OutOfInodes> {
        let next_ino = self.next_ino.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.now();
        let mut tree = Tree::build(&manifest, self.layout);
        let mut next = *next_ino;
        let changes = tree.carry(&manifest, &old.tree, &old.manifest, &mut next)?;
        Ok(Next {
            generation: Arc::new(Generation::new(manifest, tree)),
            changes,
            next_ino: (next_ino, next),
        })
    }

    /// Puts `next` in use; says what changed. Requests under way go on
    /// with the generation before, which is freed once they end.
    pub fn swap(&self, next: Next<'_>) -> Changes {
        let Next {
            generation,
            changes,
            next_ino: (mut next_ino, next),
        } = next;
        let replaced = std::mem::replace(
            &mut *self.now.write().unwrap_or_else(|p| p.into_inner()),
            generation,
        );
        *next_ino = next;
        // Freed here, not by whichever request ends last, so that the caller
        // can give the memory back: requests hold a generation for
        // microseconds; one that takes longer frees it itself.
        let deadline = Instant::now() + OLD_REQUESTS_END;
        while Arc::strong_count(&replaced) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(replaced);
        changes
    }
}

/// Gives back to the system what building or replacing a catalog left
/// free: glibc keeps freed memory for reuse, and for a catalog it is tens
/// of MB the mount would hold for its whole life.
pub fn give_back_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only reads and releases the allocator's free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A generation built to replace the one in use.
pub struct Next<'a> {
    generation: Arc<Generation>,
    changes: Changes,
    /// Held from the build to the swap, and the number to go on from.
    next_ino: (MutexGuard<'a, u64>, u64),
}

impl Next<'_> {
    pub fn manifest(&self) -> &Arc<Manifest> {
        &self.generation.manifest
    }
}
