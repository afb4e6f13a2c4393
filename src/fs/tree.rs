//! The inode tree, built once from the manifest and never changed. Two
//! layouts: `models` (one directory per model, directories made from file
//! paths, and files) and `hf` (a Hugging Face hub cache: per repo `refs/main`,
//! `snapshots/<revision>/<path>` as relative symlinks into `blobs/<sha256>`).

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

pub enum Kind {
    /// Children by name, sorted so that `readdir` offsets are stable.
    Dir(BTreeMap<String, u64>),
    File {
        model: usize,
        file: usize,
    },
    /// A symbolic link to this (relative) target.
    Symlink(String),
    /// A small file whose content the tree holds (`refs/main`).
    Text(Vec<u8>),
}

pub struct Node {
    pub parent: u64,
    pub kind: Kind,
}

pub struct Tree {
    /// `nodes[ino - 1]`.
    nodes: Vec<Node>,
}

impl Tree {
    pub fn build(manifest: &Manifest, layout: Layout) -> Tree {
        let mut tree = Tree {
            nodes: vec![Node {
                parent: ROOT,
                kind: Kind::Dir(BTreeMap::new()),
            }],
        };
        if layout == Layout::Hf {
            tree.add_hf_repos(manifest);
            return tree;
        }
        for (m, model) in manifest.models.iter().enumerate() {
            let model_dir = tree.child_dir(ROOT, &model.id);
            for (f, file) in model.files.iter().enumerate() {
                let (parent, name, _) = tree.file_parent(model_dir, &file.path);
                tree.add(parent, name, Kind::File { model: m, file: f });
            }
        }
        tree
    }

    /// The hub cache's layout: for each model, `models--<org>--<name>/` with
    /// `refs/main` (the revision), `blobs/<sha256>` (the files, once per
    /// content) and `snapshots/<revision>/<path>` (relative symlinks to the
    /// blobs, as `huggingface_hub` makes them). Models of one repo share its
    /// directory; the first one's revision is `main`.
    fn add_hf_repos(&mut self, manifest: &Manifest) {
        for (m, model) in manifest.models.iter().enumerate() {
            let repo = hf_repo(model);
            let revision = model
                .revision
                .clone()
                .unwrap_or_else(|| derived_revision(model));
            let repo_dir = self.child_dir(ROOT, &format!("models--{}", repo.replace('/', "--")));
            let refs = self.child_dir(repo_dir, "refs");
            if !self.has_child(refs, "main") {
                self.add(refs, "main", Kind::Text(revision.clone().into_bytes()));
            }
            let blobs = self.child_dir(repo_dir, "blobs");
            let snapshots = self.child_dir(repo_dir, "snapshots");
            let snapshot = self.child_dir(snapshots, &revision);
            for (f, file) in model.files.iter().enumerate() {
                let hex = file.sha256.to_hex();
                if !self.has_child(blobs, &hex) {
                    self.add(blobs, &hex, Kind::File { model: m, file: f });
                }
                let (parent, name, depth) = self.file_parent(snapshot, &file.path);
                // From snapshots/<revision>/<dirs>/ back up to the repo directory.
                let target = format!("{}blobs/{hex}", "../".repeat(2 + depth));
                self.add(parent, name, Kind::Symlink(target));
            }
        }
    }

    /// The directory a file at `path` goes in under `root` (made as needed),
    /// its name, and how many directories deep it is.
    fn file_parent<'p>(&mut self, root: u64, path: &'p str) -> (u64, &'p str, usize) {
        let (dirs, name) = match path.rsplit_once('/') {
            Some((dirs, name)) => (Some(dirs), name),
            None => (None, path),
        };
        let parts: Vec<&str> = dirs.into_iter().flat_map(|d| d.split('/')).collect();
        let parent = parts
            .iter()
            .fold(root, |dir, part| self.child_dir(dir, part));
        (parent, name, parts.len())
    }

    fn has_child(&self, dir: u64, name: &str) -> bool {
        matches!(self.get(dir).map(|n| &n.kind), Some(Kind::Dir(c)) if c.contains_key(name))
    }

    fn add(&mut self, parent: u64, name: &str, kind: Kind) -> u64 {
        let ino = self.nodes.len() as u64 + 1;
        self.nodes.push(Node { parent, kind });
        if let Kind::Dir(children) = &mut self.nodes[(parent - 1) as usize].kind {
            children.insert(name.to_owned(), ino);
        }
        ino
    }

    /// The directory `name` under `parent`, created if missing. The manifest
    /// was validated, so no name is both a file and a directory.
    fn child_dir(&mut self, parent: u64, name: &str) -> u64 {
        if let Some(Kind::Dir(children)) = self.get(parent).map(|n| &n.kind)
            && let Some(&ino) = children.get(name)
        {
            return ino;
        }
        self.add(parent, name, Kind::Dir(BTreeMap::new()))
    }

    /// Every file the manifest gives: its inode, model and file index.
    pub fn files(&self) -> impl Iterator<Item = (u64, usize, usize)> + '_ {
        (1..)
            .zip(&self.nodes)
            .filter_map(|(ino, node)| match node.kind {
                Kind::File { model, file } => Some((ino, model, file)),
                _ => None,
            })
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(ino.checked_sub(1)? as usize)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }
}

/// The repo a model is shown as: its `repo` key, else its first `hf://`
/// source's, else `modelfs/<id>`.
pub fn hf_repo(model: &Model) -> String {
    model.repo.clone().unwrap_or_else(|| {
        model
            .files
            .iter()
            .flat_map(|f| &f.locations)
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
        let Kind::Dir(root) = &tree.get(ROOT).unwrap().kind else {
            panic!()
        };
        let model = root["m@1"];
        let Kind::Dir(m) = &tree.get(model).unwrap().kind else {
            panic!()
        };
        let Kind::Dir(a) = &tree.get(m["a"]).unwrap().kind else {
            panic!()
        };
        assert_eq!(a.keys().collect::<Vec<_>>(), ["b", "d.bin"]);
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
        let dir = |ino: u64| match &tree.get(ino).unwrap().kind {
            Kind::Dir(c) => c.clone(),
            _ => panic!("not a directory"),
        };
        let root = dir(ROOT);
        assert_eq!(
            root.keys().collect::<Vec<_>>(),
            ["models--org--name", "models--other--repo"],
            "repo from the key, else from the hf:// source"
        );
        let repo = dir(root["models--org--name"]);
        let refs = dir(repo["refs"]);
        assert!(
            matches!(&tree.get(refs["main"]).unwrap().kind, Kind::Text(t) if *t == "ab".repeat(20).into_bytes())
        );
        let snapshot = dir(dir(repo["snapshots"])[&"ab".repeat(20)]);
        let sub = dir(snapshot["sub"]);
        assert!(matches!(&tree.get(sub["w.bin"]).unwrap().kind,
            Kind::Symlink(t) if *t == format!("../../../blobs/{}", sha('b'))));
        assert!(matches!(&tree.get(snapshot["config.json"]).unwrap().kind,
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
