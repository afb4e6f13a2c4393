//! The inode tree, built from the manifest and never changed: a reload
//! builds the next one, which keeps the inode numbers of what stayed the
//! same ([`carry`]). Two layouts: `models` (one directory per model, directories made from file
//! paths, and files) and `hf` (a Hugging Face hub cache: per repo `refs/main`,
//! `snapshots/<revision>/<path>` as relative symlinks into `blobs/<sha256>`).

mod carry;

pub use carry::{Changes, OutOfInodes};

use std::borrow::Cow;
use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use crate::manifest::{Manifest, Model};
use crate::source::Location;

/// How the tree shows the manifest's models.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// `MOUNTPOINT/<model id>/<file path>`.
    #[default]
    Models,
    /// `MOUNTPOINT/models--<org>--<name>/...`, as `huggingface_hub` writes its cache.
    Hf,
}

pub const ROOT: u64 = 1;

/// What an inode is, borrowed from the tree.
#[derive(Clone, Copy)]
pub enum Kind<'t> {
    Dir(Dir<'t>),
    File {
        model: usize,
        file: usize,
    },
    /// A symbolic link to this (relative) target.
    Symlink(&'t str),
    /// A small file whose content the tree holds (`refs/main`).
    Text(&'t [u8]),
}

#[derive(Clone, Copy)]
pub struct Node<'t> {
    pub parent: u64,
    pub kind: Kind<'t>,
}

/// A directory's entries, sorted by name so that `readdir` offsets are
/// stable and a lookup is a binary search.
#[derive(Clone, Copy)]
pub struct Dir<'t> {
    names: &'t str,
    entries: &'t [Entry],
}

impl<'t> Dir<'t> {
    pub fn get(&self, name: &str) -> Option<u64> {
        self.entries
            .binary_search_by(|e| e.name(self.names).cmp(name))
            .ok()
            .map(|i| self.entries[i].ino as u64)
    }

    /// The entries from the `n`th on.
    pub fn iter_from(self, n: usize) -> impl Iterator<Item = (&'t str, u64)> + 't {
        let names = self.names;
        let rest = self.entries.get(n..).unwrap_or_default();
        rest.iter().map(move |e| (e.name(names), e.ino as u64))
    }
}

/// The tree, built from the manifest and never changed, kept compact: a
/// catalog has hundreds of thousands of files. Names live end to end in
/// one string; each directory's entries are a run of one array.
pub struct Tree {
    /// Node `i` is inode `i + 1` in a mount's first tree; in one a reload
    /// made, inode `inos[i]`.
    nodes: Vec<Stored>,
    entries: Vec<Entry>,
    /// Every name, symlink target and text.
    names: String,
    /// Empty in a mount's first tree.
    inos: Vec<u32>,
    /// `(inode, node)`, sorted, when `inos` is not empty.
    by_ino: Vec<(u32, u32)>,
}

struct Stored {
    parent: u32,
    kind: StoredKind,
}

enum StoredKind {
    Dir(Span),
    File { model: u32, file: u32 },
    Symlink(Span),
    Text(Span),
}

/// `from..to` of [`Tree::entries`] or [`Tree::names`].
#[derive(Clone, Copy, Default)]
struct Span {
    from: u32,
    to: u32,
}

impl Span {
    fn of(&self) -> std::ops::Range<usize> {
        self.from as usize..self.to as usize
    }
}

#[derive(Clone, Copy, Default)]
struct Entry {
    name: Span,
    ino: u32,
}

impl Entry {
    fn name<'t>(&self, names: &'t str) -> &'t str {
        &names[self.name.of()]
    }
}

impl Tree {
    pub fn build(manifest: &Manifest, layout: Layout) -> Tree {
        match layout {
            Layout::Hf => {
                let mut b = Builder::new();
                b.add_hf_repos(manifest);
                b.freeze()
            }
            Layout::Models => Tree::of_models(manifest),
        }
    }

    /// One directory per model (ids are unique), each made on its own and
    /// appended: the root's entries, a catalog's hundred thousand, never
    /// go through a map, and the arrays are sized once.
    fn of_models(manifest: &Manifest) -> Tree {
        let models = &manifest.models;
        let files = || models.iter().flat_map(|m| &m.files);
        // At most: a nested directory is one of a path's slashes.
        let dirs: usize = files().map(|f| f.path.matches('/').count()).sum();
        let count = models.len() + files().count() + dirs;
        // At most: a nested directory's name is part of a path.
        let bytes = models.iter().map(|m| m.id.len()).sum::<usize>()
            + files().map(|f| f.path.len()).sum::<usize>();
        let mut tree = Tree::with_capacity(1 + count, count, bytes);
        tree.nodes.push(Stored {
            parent: ROOT as u32,
            kind: StoredKind::Dir(Span {
                from: 0,
                to: models.len() as u32,
            }),
        });
        // The root's run comes first; each entry is set once its directory is made.
        tree.entries.resize_with(models.len(), Entry::default);
        for (m, model) in models.iter().enumerate() {
            let mut b = Builder::new();
            for (f, file) in model.files.iter().enumerate() {
                let (parent, name, _) = b.file_parent(ROOT, &file.path);
                b.add(parent, name.into(), Building::File { model: m, file: f });
            }
            let ino = tree.append(b, ROOT);
            tree.entries[m] = Entry {
                name: tree.text(&model.id),
                ino,
            };
        }
        let Tree { entries, names, .. } = &mut tree;
        entries[..models.len()].sort_unstable_by(|a, b| a.name(names).cmp(b.name(names)));
        tree
    }

    fn with_capacity(nodes: usize, entries: usize, bytes: usize) -> Tree {
        Tree {
            nodes: Vec::with_capacity(nodes),
            entries: Vec::with_capacity(entries),
            names: String::with_capacity(bytes),
            inos: Vec::new(),
            by_ino: Vec::new(),
        }
    }

    /// Adds the tree `b` made, its root under `parent`; returns its root's inode.
    fn append(&mut self, b: Builder, parent: u64) -> u32 {
        // `b`'s inode i is this tree's i + offset.
        let offset = self.nodes.len() as u64;
        for (i, (local_parent, kind)) in b.nodes.into_iter().enumerate() {
            let kind = match kind {
                Building::Dir(children) => {
                    let from = self.entries.len() as u32;
                    for (name, ino) in children {
                        let name = self.text(&name);
                        let ino = (ino + offset) as u32;
                        self.entries.push(Entry { name, ino });
                    }
                    StoredKind::Dir(Span {
                        from,
                        to: self.entries.len() as u32,
                    })
                }
                Building::File { model, file } => StoredKind::File {
                    model: model as u32,
                    file: file as u32,
                },
                Building::Symlink(target) => StoredKind::Symlink(self.text(&target)),
                Building::Text(text) => StoredKind::Text(self.text(&text)),
            };
            let parent = if i == 0 {
                parent
            } else {
                local_parent + offset
            };
            self.nodes.push(Stored {
                parent: parent as u32,
                kind,
            });
        }
        (offset + 1) as u32
    }

    fn text(&mut self, s: &str) -> Span {
        let from = self.names.len() as u32;
        self.names.push_str(s);
        Span {
            from,
            to: self.names.len() as u32,
        }
    }

    /// The node that is inode `ino`.
    fn position(&self, ino: u64) -> Option<usize> {
        if self.inos.is_empty() {
            return Some(ino.checked_sub(1)? as usize);
        }
        let ino = u32::try_from(ino).ok()?;
        let at = self.by_ino.binary_search_by_key(&ino, |&(i, _)| i).ok()?;
        Some(self.by_ino[at].1 as usize)
    }

    /// The inode node `position` is.
    fn ino(&self, position: usize) -> u64 {
        self.inos
            .get(position)
            .map_or(position as u64 + 1, |&ino| ino as u64)
    }

    /// The highest inode number in the tree.
    pub fn max_ino(&self) -> u64 {
        self.inos
            .iter()
            .max()
            .map_or(self.nodes.len() as u64, |&ino| ino as u64)
    }

    pub fn get(&self, ino: u64) -> Option<Node<'_>> {
        let stored = self.nodes.get(self.position(ino)?)?;
        let kind = match &stored.kind {
            StoredKind::Dir(span) => Kind::Dir(Dir {
                names: &self.names,
                entries: &self.entries[span.of()],
            }),
            &StoredKind::File { model, file } => Kind::File {
                model: model as usize,
                file: file as usize,
            },
            StoredKind::Symlink(span) => Kind::Symlink(&self.names[span.of()]),
            StoredKind::Text(span) => Kind::Text(self.names[span.of()].as_bytes()),
        };
        Some(Node {
            parent: stored.parent as u64,
            kind,
        })
    }

    /// Every file the manifest gives: its inode, model and file index.
    pub fn files(&self) -> impl Iterator<Item = (u64, usize, usize)> + '_ {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(at, node)| match node.kind {
                StoredKind::File { model, file } => {
                    Some((self.ino(at), model as usize, file as usize))
                }
                _ => None,
            })
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }
}

/// The tree while it is made: directories as maps, names borrowed from
/// the manifest where they can be (a catalog's are hundreds of thousands).
struct Builder<'m> {
    /// `nodes[ino - 1]`: parent and kind.
    nodes: Vec<(u64, Building<'m>)>,
}

enum Building<'m> {
    Dir(BTreeMap<Cow<'m, str>, u64>),
    File { model: usize, file: usize },
    Symlink(String),
    Text(String),
}

impl<'m> Builder<'m> {
    fn new() -> Self {
        Builder {
            nodes: vec![(ROOT, Building::Dir(BTreeMap::new()))],
        }
    }

    /// The hub cache's layout: for each model, `models--<org>--<name>/` with
    /// `refs/main` (the revision), `blobs/<sha256>` (the files, once per
    /// content) and `snapshots/<revision>/<path>` (relative symlinks to the
    /// blobs, as `huggingface_hub` makes them). Models of one repo share its
    /// directory; the first one's revision is `main`.
    fn add_hf_repos(&mut self, manifest: &'m Manifest) {
        for (m, model) in manifest.models.iter().enumerate() {
            let repo = hf_repo(model);
            let revision = model
                .revision
                .clone()
                .unwrap_or_else(|| derived_revision(model));
            let repo_dir =
                self.child_dir(ROOT, format!("models--{}", repo.replace('/', "--")).into());
            let refs = self.child_dir(repo_dir, "refs".into());
            if !self.has_child(refs, "main") {
                self.add(refs, "main".into(), Building::Text(revision.clone()));
            }
            let blobs = self.child_dir(repo_dir, "blobs".into());
            let snapshots = self.child_dir(repo_dir, "snapshots".into());
            let snapshot = self.child_dir(snapshots, revision.into());
            for (f, file) in model.files.iter().enumerate() {
                let hex = file.sha256.to_hex();
                let (parent, name, depth) = self.file_parent(snapshot, &file.path);
                // From snapshots/<revision>/<dirs>/ back up to the repo directory.
                let target = format!("{}blobs/{hex}", "../".repeat(2 + depth));
                self.add(parent, name.into(), Building::Symlink(target));
                if !self.has_child(blobs, &hex) {
                    self.add(blobs, hex.into(), Building::File { model: m, file: f });
                }
            }
        }
    }

    /// The directory a file at `path` goes in under `root` (made as needed),
    /// its name, and how many directories deep it is.
    fn file_parent(&mut self, root: u64, path: &'m str) -> (u64, &'m str, usize) {
        let (dirs, name) = match path.rsplit_once('/') {
            Some((dirs, name)) => (Some(dirs), name),
            None => (None, path),
        };
        let parts: Vec<&str> = dirs.into_iter().flat_map(|d| d.split('/')).collect();
        let parent = parts
            .iter()
            .fold(root, |dir, part| self.child_dir(dir, (*part).into()));
        (parent, name, parts.len())
    }

    fn children(&self, dir: u64) -> Option<&BTreeMap<Cow<'m, str>, u64>> {
        match &self.nodes[(dir - 1) as usize].1 {
            Building::Dir(children) => Some(children),
            _ => None,
        }
    }

    fn has_child(&self, dir: u64, name: &str) -> bool {
        self.children(dir).is_some_and(|c| c.contains_key(name))
    }

    fn add(&mut self, parent: u64, name: Cow<'m, str>, kind: Building<'m>) -> u64 {
        let ino = self.nodes.len() as u64 + 1;
        self.nodes.push((parent, kind));
        if let Building::Dir(children) = &mut self.nodes[(parent - 1) as usize].1 {
            children.insert(name, ino);
        }
        ino
    }

    /// The directory `name` under `parent`, created if missing. The manifest
    /// was validated, so no name is both a file and a directory.
    fn child_dir(&mut self, parent: u64, name: Cow<'m, str>) -> u64 {
        if let Some(&ino) = self.children(parent).and_then(|c| c.get(&*name)) {
            return ino;
        }
        self.add(parent, name, Building::Dir(BTreeMap::new()))
    }

    fn freeze(self) -> Tree {
        // Sized first: a catalog's arrays are tens of MB, and growing them
        // leaves holes in the heap that stay in the mount's RSS.
        let (mut entries, mut bytes) = (0, 0);
        for (_, kind) in &self.nodes {
            match kind {
                Building::Dir(children) => {
                    entries += children.len();
                    bytes += children.keys().map(|n| n.len()).sum::<usize>();
                }
                Building::Symlink(s) | Building::Text(s) => bytes += s.len(),
                Building::File { .. } => {}
            }
        }
        let mut tree = Tree::with_capacity(self.nodes.len(), entries, bytes);
        tree.append(self, ROOT);
        tree
    }
}

/// The files shown as one blob with file `file` of model `model` in the
/// hub layout: every file of the models of its repo with its sha256.
pub fn hf_sharers(manifest: &Manifest, model: usize, file: usize) -> Vec<(usize, usize)> {
    let repo = hf_repo(&manifest.models[model]);
    let sha256 = manifest.models[model].files[file].sha256;
    let mut sharers = Vec::new();
    for (m, other) in manifest.models.iter().enumerate() {
        if hf_repo(other) == repo {
            let same = other
                .files
                .iter()
                .enumerate()
                .filter(|(_, f)| f.sha256 == sha256);
            sharers.extend(same.map(|(f, _)| (m, f)));
        }
    }
    sharers
}

/// The repo a model is shown as: its `repo` key, else its first `hf://`
/// source's, else `modelfs/<id>`.
pub fn hf_repo(model: &Model) -> String {
    model.repo.clone().unwrap_or_else(|| {
        model
            .files
            .iter()
            .flat_map(|f| &f.sources)
            .chain(&model.sources)
            .find_map(|l| match l {
                Location::Hf { repo, .. } => Some(repo.clone()),
                _ => None,
            })
            .unwrap_or_else(|| format!("modelfs/{}", model.id))
    })
}

/// A revision for a model that names none: 40 hex digits that change
/// exactly when its id or files (paths and contents) do.
fn derived_revision(model: &Model) -> String {
    let mut h = Sha256::new();
    h.update(b"modelfs revision\0");
    h.update(model.id.as_bytes());
    for f in &model.files {
        h.update(b"\0");
        h.update(f.path.as_bytes());
        h.update(f.sha256.0);
    }
    hex::encode(h.finalize())[..40].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tree: &Tree, ino: u64) -> BTreeMap<String, u64> {
        match tree.get(ino).unwrap().kind {
            Kind::Dir(d) => d.iter_from(0).map(|(n, i)| (n.to_owned(), i)).collect(),
            _ => panic!("not a directory"),
        }
    }

    #[test]
    fn builds_directories_from_paths() {
        let sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let text = format!(
            r#"version = 1
[[model]]
id = "m@1"
sources = ["file:///srv"]
[[model.file]]
path = "a/b/c.bin"
size = 0
sha256 = "{sha}"
[[model.file]]
path = "a/d.bin"
size = 0
sha256 = "{sha}"
"#
        );
        let manifest = Manifest::parse("t.toml".as_ref(), &text).unwrap();
        let tree = Tree::build(&manifest, Layout::Models);
        // root, m@1, a, b, c.bin, d.bin
        assert_eq!(tree.len(), 6);
        let root = dir(&tree, ROOT);
        let model = root["m@1"];
        let m = dir(&tree, model);
        let a = dir(&tree, m["a"]);
        assert_eq!(a.keys().collect::<Vec<_>>(), ["b", "d.bin"]);
        let Some(Node {
            kind: Kind::Dir(listed),
            ..
        }) = tree.get(m["a"])
        else {
            panic!("a directory")
        };
        assert_eq!(listed.get("d.bin"), Some(a["d.bin"]));
        assert_eq!(listed.get("c.bin"), None);
        assert_eq!(tree.get(a["d.bin"]).unwrap().parent, m["a"]);
        assert!(matches!(
            tree.get(a["d.bin"]).unwrap().kind,
            Kind::File { model: 0, file: 1 }
        ));
    }

    #[test]
    fn the_hf_layout_is_a_hub_cache() {
        let sha = |c: char| c.to_string().repeat(64);
        let text = format!(
            r#"version = 1
[[model]]
id = "a@1"
repo = "org/name"
revision = "{rev}"
sources = ["file:///srv"]
[[model.file]]
path = "config.json"
size = 0
sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
[[model.file]]
path = "sub/w.bin"
size = 1
sha256 = "{b}"
[[model]]
id = "b@1"
sources = ["hf://other/repo"]
[[model.file]]
path = "x.bin"
size = 1
sha256 = "{b}"
"#,
            rev = "ab".repeat(20),
            b = sha('b'),
        );
        let manifest = Manifest::parse("t.toml".as_ref(), &text).unwrap();
        let tree = Tree::build(&manifest, Layout::Hf);
        let dir = |ino: u64| dir(&tree, ino);
        let root = dir(ROOT);
        assert_eq!(
            root.keys().collect::<Vec<_>>(),
            ["models--org--name", "models--other--repo"],
            "repo from the key, else from the hf:// source"
        );
        let repo = dir(root["models--org--name"]);
        let refs = dir(repo["refs"]);
        assert!(
            matches!(tree.get(refs["main"]).unwrap().kind, Kind::Text(t) if *t == *"ab".repeat(20).as_bytes())
        );
        let snapshot = dir(dir(repo["snapshots"])[&"ab".repeat(20)]);
        let sub = dir(snapshot["sub"]);
        assert!(matches!(tree.get(sub["w.bin"]).unwrap().kind,
            Kind::Symlink(t) if *t == format!("../../../blobs/{}", sha('b'))));
        assert!(matches!(tree.get(snapshot["config.json"]).unwrap().kind,
            Kind::Symlink(t) if t.starts_with("../../blobs/e3b0")));
        assert_eq!(dir(repo["blobs"]).len(), 2);
        // A model with no revision gets a stable derived one.
        let other = dir(root["models--other--repo"]);
        let revs = dir(other["snapshots"]);
        let rev = revs.keys().next().unwrap();
        assert_eq!(rev.len(), 40);
        assert_eq!(Tree::build(&manifest, Layout::Hf).len(), tree.len());
    }
}
