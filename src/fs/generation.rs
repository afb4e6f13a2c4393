//! The catalog a mount serves, one generation at a time: a manifest and the
//! tree made from it. A reload builds the next generation beside the one
//! in use and swaps it in whole, so that every request sees one catalog or
//! the next, never a mix, and none waits while the next is built.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};

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

    /// The generation in use. A request holds it to the end, whatever a
    /// reload swaps in meanwhile.
    pub fn now(&self) -> Arc<Generation> {
        Arc::clone(&self.now.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Builds the generation of `manifest` and puts it in use; says what
    /// changed. Reloads run one at a time; requests go on meanwhile with
    /// the generation before, which is freed once the last one ends.
    pub fn replace(&self, manifest: Arc<Manifest>) -> Result<Changes, OutOfInodes> {
        let mut next_ino = self.next_ino.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.now();
        let mut tree = Tree::build(&manifest, self.layout);
        let mut next = *next_ino;
        let changes = tree.carry(&manifest, &old.tree, &old.manifest, &mut next)?;
        let new = Arc::new(Generation::new(manifest, tree));
        *self.now.write().unwrap_or_else(|p| p.into_inner()) = new;
        *next_ino = next;
        Ok(changes)
    }
}
