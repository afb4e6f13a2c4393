//! Which of a model's files a loader reads along with the one it is reading,
//! and in which order: what a model stream fetches ahead (`fetch::stream`).
//!
//! A repository often holds one model several times over (`.safetensors`
//! beside `pytorch_model.bin`, `consolidated.safetensors` beside the shards,
//! one `.gguf` per quantization), and a loader reads one of them. So the
//! set is the file's own *family*, in the format (extension) being read:
//! - the shards an index JSON beside it names (`*.safetensors.index.json`'s
//!   `weight_map`), if one names it;
//! - else its siblings `NAME-0000k-of-0000n.EXT` of the same `NAME` and `n`;
//! - else the file alone;
//!
//! and then, in other directories (a diffusers pipeline's components), each
//! directory's one unambiguous set of that format: the shards its index
//! names, else its shard siblings, else its only large file of the format.
//! Loaders read shards in sorted name order, which is path order.

use std::collections::BTreeMap;

use super::Model;

/// Files larger than this are weights; smaller ones (configs, tokenizers,
/// index JSON) are fetched at a model's first open instead.
pub const LARGE_FILE: u64 = 1 << 20;

/// The files of `model` a loader reading file `reading` will read, that
/// file first, then the rest of its family after it, then the part of the
/// family before it, then the other directories' sets, in path order.
/// `index` gives what an index JSON (by file index) names, as paths
/// relative to the model, when its bytes are at hand (see [`index_shards`]).
pub fn stream_order(
    model: &Model,
    reading: usize,
    index: impl Fn(usize) -> Option<Vec<String>>,
) -> Vec<usize> {
    let files = &model.files;
    let Some(ext) = extension(&files[reading].path) else {
        return vec![reading];
    };
    let index_suffix = format!(".{ext}.index.json");
    // Per directory: the large files of the format, and what its index names.
    let mut dirs: BTreeMap<&str, Dir> = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        let (dir, name) = split(&f.path);
        if name.ends_with(&index_suffix) {
            if let Some(shards) = index(i) {
                dirs.entry(dir)
                    .or_default()
                    .indexed
                    .get_or_insert_default()
                    .extend(shards);
            }
        } else if f.size > LARGE_FILE && extension(&f.path) == Some(ext) {
            dirs.entry(dir).or_default().large.push(i);
        }
    }
    let family = |dir: &Dir, member: Option<usize>| -> Vec<usize> {
        let path = |i: usize| &*files[i].path;
        if let Some(named) = &dir.indexed {
            if member.is_none_or(|m| named.iter().any(|n| n == path(m))) {
                return dir
                    .large
                    .iter()
                    .copied()
                    .filter(|&i| named.iter().any(|n| n == path(i)))
                    .collect();
            }
            return member.into_iter().collect();
        }
        let of = |i: usize| shard_of(split(path(i)).1);
        match member {
            Some(m) => match of(m) {
                Some(key) => dir
                    .large
                    .iter()
                    .copied()
                    .filter(|&i| of(i) == Some(key))
                    .collect(),
                None => vec![m],
            },
            None => {
                let keys: Vec<_> = dir.large.iter().map(|&i| of(i)).collect();
                match (keys.first(), dir.large.len()) {
                    (_, 1) => dir.large.clone(),
                    (Some(Some(key)), _) if keys.iter().all(|k| k.as_ref() == Some(key)) => {
                        dir.large.clone()
                    }
                    _ => Vec::new(),
                }
            }
        }
    };
    let home = split(&files[reading].path).0;
    let own = dirs
        .get(home)
        .map_or_else(|| vec![reading], |d| family(d, Some(reading)));
    let at = own.iter().position(|&i| i == reading).unwrap_or(0);
    let mut order: Vec<usize> = own[at..].iter().chain(&own[..at]).copied().collect();
    if !order.contains(&reading) {
        order.insert(0, reading);
    }
    for (_, dir) in dirs.iter().filter(|(d, _)| **d != home) {
        order.extend(family(dir, None));
    }
    order
}

#[derive(Default)]
struct Dir {
    /// Large files of the format, in path order.
    large: Vec<usize>,
    /// Paths an index JSON of the format in this directory names.
    indexed: Option<Vec<String>>,
}

/// The shard paths (relative to the model) an index JSON at `index_path`
/// names in its `weight_map`, each once; `None` if it is not such a file.
pub fn index_shards(index_path: &str, json: &[u8]) -> Option<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let index: Index = serde_json::from_slice(json).ok()?;
    let dir = split(index_path).0;
    let mut shards: Vec<String> = index
        .weight_map
        .into_values()
        .filter(|s| !s.contains('/') && !s.is_empty())
        .map(|s| {
            if dir.is_empty() {
                s
            } else {
                format!("{dir}/{s}")
            }
        })
        .collect();
    shards.sort_unstable();
    shards.dedup();
    Some(shards)
}

/// `(directory, file name)`; the directory is empty at the model's root.
fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

fn extension(path: &str) -> Option<&str> {
    split(path)
        .1
        .rsplit_once('.')
        .map(|(_, ext)| ext)
        .filter(|e| !e.is_empty())
}

/// `NAME-00001-of-00004.EXT` → `(NAME, "00004", EXT)`: what shards of one
/// set share.
fn shard_of(name: &str) -> Option<(&str, &str, &str)> {
    let (stem, ext) = name.rsplit_once('.')?;
    let (head, total) = stem.rsplit_once("-of-")?;
    let (prefix, number) = head.rsplit_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(number) && digits(total)).then_some((prefix, total, ext))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    /// A model of `(path, size)` files.
    fn model(files: &[(&str, u64)]) -> std::sync::Arc<Model> {
        let mut text =
            String::from("version = 1\n[[model]]\nid = \"m\"\nsources = [\"file:///srv\"]\n");
        for (path, size) in files {
            text.push_str(&format!(
                "[[model.file]]\npath = \"{path}\"\nsize = {size}\nsha256 = \"{}\"\n",
                crate::hash::Digest::of(path.as_bytes())
            ));
        }
        Manifest::parse("m.toml".as_ref(), &text)
            .unwrap()
            .models
            .remove(0)
    }

    fn paths(m: &Model, order: &[usize]) -> Vec<String> {
        order.iter().map(|&i| m.files[i].path.to_string()).collect()
    }

    const BIG: u64 = 10 << 20;

    #[test]
    fn an_index_names_the_family_and_its_order() {
        let m = model(&[
            ("config.json", 100),
            ("consolidated.safetensors", BIG),
            ("model-00001-of-00003.safetensors", BIG),
            ("model-00002-of-00003.safetensors", BIG),
            ("model-00003-of-00003.safetensors", BIG),
            ("model.safetensors.index.json", 1000),
            ("pytorch_model.bin", BIG),
        ]);
        let json =
            br#"{"metadata": {}, "weight_map": {"lm_head": "model-00003-of-00003.safetensors",
            "a": "model-00001-of-00003.safetensors", "b": "model-00002-of-00003.safetensors"}}"#;
        let index = |i: usize| index_shards(&m.files[i].path, json);
        assert_eq!(
            paths(&m, &stream_order(&m, 3, index)),
            [
                "model-00002-of-00003.safetensors",
                "model-00003-of-00003.safetensors",
                "model-00001-of-00003.safetensors"
            ],
            "from the file read on, then the ones before; neither the consolidated file nor the .bin"
        );
        assert_eq!(
            paths(&m, &stream_order(&m, 1, index)),
            ["consolidated.safetensors"],
            "a file the index does not name is an alternative, streamed alone"
        );
        assert_eq!(
            paths(&m, &stream_order(&m, 6, index)),
            ["pytorch_model.bin"]
        );
    }

    #[test]
    fn without_an_index_shard_names_make_the_family() {
        let m = model(&[
            ("q4-00001-of-00002.gguf", BIG),
            ("q4-00002-of-00002.gguf", BIG),
            ("q8.gguf", BIG),
            ("q8-extra.gguf", BIG),
        ]);
        let none = |_| None;
        assert_eq!(
            paths(&m, &stream_order(&m, 0, none)),
            ["q4-00001-of-00002.gguf", "q4-00002-of-00002.gguf"]
        );
        assert_eq!(
            paths(&m, &stream_order(&m, 2, none)),
            ["q8.gguf"],
            "one quantization of several"
        );
    }

    #[test]
    fn a_pipeline_streams_each_components_one_set() {
        let m = model(&[
            ("text_encoder/model.safetensors", BIG),
            ("unet/diffusion_pytorch_model.fp16.safetensors", BIG),
            ("unet/diffusion_pytorch_model.safetensors", BIG),
            ("vae/diffusion_pytorch_model.safetensors", BIG),
            ("vae/config.json", 10),
            ("text_encoder_2/model-00001-of-00002.safetensors", BIG),
            ("text_encoder_2/model-00002-of-00002.safetensors", BIG),
            ("small/tiny.safetensors", 10),
        ]);
        assert_eq!(
            paths(&m, &stream_order(&m, 3, |_| None)),
            [
                "vae/diffusion_pytorch_model.safetensors",
                "text_encoder/model.safetensors",
                "text_encoder_2/model-00001-of-00002.safetensors",
                "text_encoder_2/model-00002-of-00002.safetensors",
            ],
            "unet has two variants: neither is guessed"
        );
    }

    #[test]
    fn odd_names_stream_alone() {
        let m = model(&[("weights", BIG), ("other", BIG), ("x-1-of-.bin", BIG)]);
        assert_eq!(stream_order(&m, 0, |_| None), [0]);
        assert_eq!(stream_order(&m, 2, |_| None), [2]);
        assert_eq!(
            index_shards("a/m.safetensors.index.json", b"not json"),
            None
        );
        assert_eq!(
            index_shards(
                "a/i.json",
                br#"{"weight_map": {"x": "s1", "y": "../s2", "z": "s1"}}"#
            ),
            Some(vec!["a/s1".to_string()])
        );
    }
}
