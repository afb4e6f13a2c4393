//! Inode numbers across a reload. The kernel knows inodes by number: one
//! that stays the same (same path, same content) keeps its number, so its
//! cached attributes, pages and open files go on as before; one that is new
//! or whose content changed gets a number never given before in this mount,
//! so a file open under the old number keeps reading the old bytes while
//! new opens get the new. What changed is listed for the kernel to forget.

use super::{Entry, ROOT, StoredKind, Tree};
use crate::manifest::Manifest;

/// What a reload changed, for the kernel to forget.
#[derive(Debug, Default)]
pub struct Changes {
    /// `(directory, name)` of each entry added, removed, or now naming
    /// another inode.
    pub entries: Vec<(u64, String)>,
    /// The directories those are in, once each.
    pub dirs: Vec<u64>,
}

/// A mount gives inode numbers out once each; after four billion it must
/// be remounted.
#[derive(Debug, thiserror::Error)]
#[error("this mount has given out every inode number it can: remount it to reload")]
pub struct OutOfInodes;

/// One node of each tree, with each tree's manifest.
struct Pair<'a> {
    new: (&'a Tree, &'a Manifest),
    old: (&'a Tree, &'a Manifest),
}

impl Pair<'_> {
    /// Whether node `new` shows what node `old` showed: a directory at the
    /// same path (its entries are compared on their own), a file with the
    /// same size, sha256 and chunking of a model naming the same signature,
    /// the same symlink or text.
    fn same(&self, new: usize, old: usize) -> bool {
        let ((tree, manifest), (old_tree, old_manifest)) = (self.new, self.old);
        match (&tree.nodes[new].kind, &old_tree.nodes[old].kind) {
            (StoredKind::Dir(_), StoredKind::Dir(_)) => true,
            (
                &StoredKind::File { model, file },
                &StoredKind::File {
                    model: old_model,
                    file: old_file,
                },
            ) => {
                let (ma, mb) = (
                    &manifest.models[model as usize],
                    &old_manifest.models[old_model as usize],
                );
                // Pages the kernel keeps of the file were verified as it
                // was: not for a file checked another way, or signed anew.
                ma.files[file as usize].same_as(&mb.files[old_file as usize])
                    && ma.signature == mb.signature
            }
            (StoredKind::Symlink(a), StoredKind::Symlink(b))
            | (StoredKind::Text(a), StoredKind::Text(b)) => {
                tree.names[a.of()] == old_tree.names[b.of()]
            }
            _ => false,
        }
    }
}

impl Tree {
    /// Numbers this tree (just built from `manifest`) after `old`, the tree
    /// of `old_manifest` the mount served until now: what is the same keeps
    /// its inode, the rest get new ones from `next` on. Says what changed.
    pub fn carry(
        &mut self,
        manifest: &Manifest,
        old: &Tree,
        old_manifest: &Manifest,
        next: &mut u64,
    ) -> Result<Changes, OutOfInodes> {
        if *next + self.nodes.len() as u64 > u32::MAX as u64 {
            return Err(OutOfInodes);
        }
        // Node i of this tree is still inode i + 1 while this runs.
        let mut inos = vec![0u32; self.nodes.len()];
        inos[0] = ROOT as u32;
        let mut fresh = || {
            let ino = *next as u32;
            *next += 1;
            ino
        };
        let pair = Pair {
            new: (self, manifest),
            old: (old, old_manifest),
        };
        let mut changes = Changes::default();
        // Directories to number the entries of, with the old tree's
        // directory at the same path if it was one.
        let mut dirs = vec![(0, Some(0))];
        while let Some((dir, old_dir)) = dirs.pop() {
            let entries = self.entries_of(dir);
            let Some(old_dir) = old_dir else {
                for e in entries {
                    let child = e.ino as usize - 1;
                    inos[child] = fresh();
                    if matches!(self.nodes[child].kind, StoredKind::Dir(_)) {
                        dirs.push((child, None));
                    }
                }
                continue;
            };
            let parent = inos[dir] as u64;
            let old_entries = old.entries_of(old_dir);
            let (mut i, mut j) = (0, 0);
            while i < entries.len() || j < old_entries.len() {
                let name = entries.get(i).map(|e| e.name(&self.names));
                let old_name = old_entries.get(j).map(|e| e.name(&old.names));
                let order = match (name, old_name) {
                    (Some(a), Some(b)) => a.cmp(b),
                    (Some(_), None) => std::cmp::Ordering::Less,
                    _ => std::cmp::Ordering::Greater,
                };
                if order == std::cmp::Ordering::Greater {
                    // Gone.
                    changes.entries.push((parent, old_name.unwrap().to_owned()));
                    j += 1;
                    continue;
                }
                let child = entries[i].ino as usize - 1;
                let was = (order == std::cmp::Ordering::Equal)
                    .then(|| {
                        let old_ino = old_entries[j].ino as u64;
                        j += 1;
                        old.position(old_ino).map(|at| (old_ino, at))
                    })
                    .flatten()
                    .filter(|&(_, at)| pair.same(child, at));
                match was {
                    Some((old_ino, at)) => {
                        inos[child] = old_ino as u32;
                        if matches!(self.nodes[child].kind, StoredKind::Dir(_)) {
                            dirs.push((child, Some(at)));
                        }
                    }
                    None => {
                        inos[child] = fresh();
                        changes.entries.push((parent, name.unwrap().to_owned()));
                        if matches!(self.nodes[child].kind, StoredKind::Dir(_)) {
                            dirs.push((child, None));
                        }
                    }
                }
                i += 1;
            }
        }
        for e in &mut self.entries {
            e.ino = inos[e.ino as usize - 1];
        }
        for node in &mut self.nodes {
            node.parent = inos[node.parent as usize - 1];
        }
        let mut by_ino: Vec<(u32, u32)> = (0..).zip(&inos).map(|(at, &ino)| (ino, at)).collect();
        by_ino.sort_unstable();
        (self.inos, self.by_ino) = (inos, by_ino);
        changes.dirs = changes.entries.iter().map(|&(dir, _)| dir).collect();
        changes.dirs.sort_unstable();
        changes.dirs.dedup();
        Ok(changes)
    }

    /// The entries of the directory at `position` (empty for others).
    fn entries_of(&self, position: usize) -> &[Entry] {
        match &self.nodes[position].kind {
            StoredKind::Dir(span) => &self.entries[span.of()],
            _ => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Kind, Layout};
    use super::*;

    fn manifest(files: &[(&str, &str, char)]) -> Manifest {
        let mut text = String::from("version = 1\n");
        let mut model = "";
        for &(id, path, content) in files {
            if id != model {
                text += &format!("[[model]]\nid = \"{id}\"\nsources = [\"file:///srv\"]\n");
                model = id;
            }
            let sha = content.to_string().repeat(64);
            text += &format!("[[model.file]]\npath = \"{path}\"\nsize = 1\nsha256 = \"{sha}\"\n");
        }
        Manifest::parse("t.toml".as_ref(), &text).unwrap()
    }

    /// Inode of `path` (slash-separated from the root) in `tree`.
    fn ino(tree: &Tree, path: &str) -> Option<u64> {
        path.split('/')
            .try_fold(ROOT, |dir, name| match tree.get(dir)?.kind {
                Kind::Dir(d) => d.get(name),
                _ => None,
            })
    }

    fn reload(old: &Tree, was: &Manifest, now: &Manifest, next: &mut u64) -> (Tree, Changes) {
        let mut tree = Tree::build(now, Layout::Models);
        let changes = tree.carry(now, old, was, next).unwrap();
        (tree, changes)
    }

    #[test]
    fn what_stayed_keeps_its_inode_and_the_rest_get_new_ones() {
        let was = manifest(&[
            ("a@1", "w.bin", 'a'),
            ("a@1", "sub/x.bin", 'b'),
            ("b@1", "w.bin", 'c'),
            ("c@1", "w.bin", 'd'),
        ]);
        let old = Tree::build(&was, Layout::Models);
        let mut next = old.max_ino() + 1;
        let first_new = next;
        // b@1's file changed, c@1 went, d@1 came; a@1 is as it was.
        let now = manifest(&[
            ("a@1", "w.bin", 'a'),
            ("a@1", "sub/x.bin", 'b'),
            ("b@1", "w.bin", 'e'),
            ("d@1", "w.bin", 'd'),
        ]);
        let (tree, changes) = reload(&old, &was, &now, &mut next);
        for path in ["a@1", "a@1/w.bin", "a@1/sub", "a@1/sub/x.bin", "b@1"] {
            assert_eq!(ino(&tree, path), ino(&old, path), "{path}");
        }
        for path in ["b@1/w.bin", "d@1", "d@1/w.bin"] {
            assert!(ino(&tree, path).unwrap() >= first_new, "{path}");
        }
        assert_eq!(ino(&tree, "c@1"), None);
        assert_eq!(next, first_new + 3);
        let b = ino(&old, "b@1").unwrap();
        let mut entries = changes.entries.clone();
        entries.sort();
        assert_eq!(
            entries,
            [
                (ROOT, "c@1".to_owned()),
                (ROOT, "d@1".to_owned()),
                (b, "w.bin".to_owned())
            ]
        );
        assert_eq!(changes.dirs, [ROOT, b]);
        // Parents follow the numbers; every inode is found again.
        let x = ino(&tree, "a@1/sub/x.bin").unwrap();
        assert_eq!(tree.get(x).unwrap().parent, ino(&tree, "a@1/sub").unwrap());
        let d = ino(&tree, "d@1/w.bin").unwrap();
        assert_eq!(tree.get(d).unwrap().parent, ino(&tree, "d@1").unwrap());
        assert_eq!(tree.files().count(), 4);
        assert!(tree.files().all(|(ino, _, _)| tree.get(ino).is_some()));

        // Reloaded again, from the renumbered tree: nothing changes.
        let (again, changes) = reload(&tree, &now, &now, &mut next);
        assert!(changes.entries.is_empty());
        for path in ["a@1/sub/x.bin", "b@1/w.bin", "d@1/w.bin"] {
            assert_eq!(ino(&again, path), ino(&tree, path), "{path}");
        }
        assert_eq!(next, first_new + 3, "no number given");
    }

    #[test]
    fn a_file_that_became_a_directory_is_new_with_everything_under_it() {
        let was = manifest(&[("a@1", "x", 'a')]);
        let old = Tree::build(&was, Layout::Models);
        let mut next = old.max_ino() + 1;
        let now = manifest(&[("a@1", "x/y.bin", 'a')]);
        let (tree, changes) = reload(&old, &was, &now, &mut next);
        assert_ne!(ino(&tree, "a@1/x"), ino(&old, "a@1/x"));
        assert!(ino(&tree, "a@1/x/y.bin").unwrap() > old.max_ino());
        assert_eq!(
            changes.entries,
            [(ino(&old, "a@1").unwrap(), "x".to_owned())]
        );
    }

    #[test]
    fn a_mount_out_of_inode_numbers_says_so() {
        let was = manifest(&[("a@1", "x", 'a')]);
        let old = Tree::build(&was, Layout::Models);
        let mut tree = Tree::build(&was, Layout::Models);
        let mut next = u32::MAX as u64 - 1;
        assert!(tree.carry(&was, &old, &was, &mut next).is_err());
    }
}
