//! The inode tree, built once from the manifest and never changed: the root,
//! one directory per model, directories made from file paths, and files.

use std::collections::BTreeMap;

use crate::manifest::Manifest;

pub const ROOT: u64 = 1;

pub enum Kind {
    /// Children by name, sorted so that `readdir` offsets are stable.
    Dir(BTreeMap<String, u64>),
    File {
        model: usize,
        file: usize,
    },
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
    pub fn build(manifest: &Manifest) -> Tree {
        let mut tree = Tree {
            nodes: vec![Node {
                parent: ROOT,
                kind: Kind::Dir(BTreeMap::new()),
            }],
        };
        for (m, model) in manifest.models.iter().enumerate() {
            let model_dir = tree.child_dir(ROOT, &model.id);
            for (f, file) in model.files.iter().enumerate() {
                let (dirs, name) = match file.path.rsplit_once('/') {
                    Some((dirs, name)) => (Some(dirs), name),
                    None => (None, file.path.as_str()),
                };
                let parent = dirs
                    .into_iter()
                    .flat_map(|d| d.split('/'))
                    .fold(model_dir, |dir, part| tree.child_dir(dir, part));
                tree.add(parent, name, Kind::File { model: m, file: f });
            }
        }
        tree
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

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(ino.checked_sub(1)? as usize)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }
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
        let tree = Tree::build(&manifest);
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
}
