//! A verified statement against the manifest's model: every file the tree
//! shows must be signed with the sha256 the manifest gives, and is then
//! verified only in pieces the signature covers.

use super::bundle::{Method, Piece, Signed};
use crate::hash::Digest;
use crate::manifest::chunk_list::{CHUNK_LIST, ChunkList};
use crate::manifest::{FileEntry, Model, check_chunk_size};

/// The model as its signature vouches for it.
#[derive(Debug)]
pub struct Bound {
    /// Each file verified whole against its signed sha256, or chunk by
    /// chunk against its signed shards; never by the manifest's own chunk
    /// hashes, which nobody signed.
    pub model: Model,
    /// Per file: whether the signer left it out (`ignore_paths`). Such a
    /// file is never served, but does not condemn the model.
    pub unsigned: Box<[bool]>,
    /// Per file: whether its whole sha256 is signed (not so for a file
    /// signed in several shards).
    pub sha256_signed: Box<[bool]>,
}

/// Where the manifest and the signature part.
#[derive(Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub file: String,
    pub why: String,
}

/// `list`: the chunk list the signature signs, if it signs one.
pub fn bind(model: &Model, signed: &Signed, list: Option<&ChunkList>) -> Result<Bound, Mismatch> {
    let mut bound = model.clone();
    let mut unsigned = vec![false; model.files.len()];
    let mut sha256_signed = vec![false; model.files.len()];
    for (j, file) in model.files.iter().enumerate() {
        let mismatch = |why: String| Mismatch {
            file: file.path.to_string(),
            why,
        };
        let pieces = signed.files.get(&*file.path).map_or(&[][..], Vec::as_slice);
        if pieces.is_empty() {
            // Shards record nothing of an empty file, so nothing vouches for one.
            let empty_in_shards = file.size == 0 && signed.method != Method::Files;
            if empty_in_shards || ignored(&file.path, &signed.ignore_paths) {
                unsigned[j] = true;
                continue;
            }
            return Err(mismatch("not in the signature".into()));
        }
        sha256_signed[j] = signed.method == Method::Files || pieces.len() == 1;
        bound.files[j] = match signed.method {
            Method::Files => {
                let listed = list.and_then(|l| l.files.get(&*file.path));
                listed_or_whole(file, pieces[0].2, listed).map_err(mismatch)?
            }
            Method::Shards(size) => shards(file, size, pieces).map_err(mismatch)?,
        };
    }
    Ok(Bound {
        model: bound,
        unsigned: unsigned.into(),
        sha256_signed: sha256_signed.into(),
    })
}

/// A file signed whole, in chunks if the signed chunk list lists it.
fn listed_or_whole(
    file: &FileEntry,
    signed: Digest,
    listed: Option<&crate::manifest::chunk_list::Chunked>,
) -> Result<FileEntry, String> {
    match listed {
        None => whole(file, signed),
        Some(listed) => {
            same_sha256(file, signed)?;
            listed
                .chunking(file.size, signed)
                .map(|chunking| file.verified_by(Some(chunking)))
                .map_err(|why| format!("in the signed {CHUNK_LIST}: {why}"))
        }
    }
}

/// A file signed whole: served once all of it verified, unless it is one
/// chunk, checked against that very sha256.
fn whole(file: &FileEntry, signed: Digest) -> Result<FileEntry, String> {
    same_sha256(file, signed)?;
    Ok(if file.is_one_chunk() {
        file.clone()
    } else {
        file.verified_by(None)
    })
}

fn same_sha256(file: &FileEntry, signed: Digest) -> Result<(), String> {
    if signed != file.sha256 {
        return Err(format!(
            "the manifest says sha256 {}, the signature {}",
            file.sha256, signed
        ));
    }
    Ok(())
}

fn shards(file: &FileEntry, size: u64, pieces: &[Piece]) -> Result<FileEntry, String> {
    let tiled = pieces.len() as u64 == file.size.div_ceil(size)
        && pieces
            .iter()
            .zip(0..)
            .all(|(&(start, end, _), i)| start == i * size && end == file.size.min((i + 1) * size));
    if !tiled {
        let signed = pieces.last().map_or(0, |p| p.1);
        return Err(format!(
            "its signed shards cover {signed} bytes in {} pieces, the manifest says {} bytes",
            pieces.len(),
            file.size
        ));
    }
    match pieces {
        [(_, _, digest)] => whole(file, *digest),
        _ => {
            check_chunk_size(size).map_err(|why| {
                format!("signed in shards of {why}, which modelfs cannot check as chunks: sign with shard_size = 1 MiB, or whole files")
            })?;
            let signed: Box<[Digest]> = pieces.iter().map(|p| p.2).collect();
            if file.chunk_size == size
                && let Some(hashes) = file.chunk_hashes()
                && let Some(k) = hashes.zip(&signed).position(|(a, b)| a != *b)
            {
                return Err(format!(
                    "chunk {k}: the manifest's hash is not the signed one"
                ));
            }
            Ok(file.verified_by(Some((size, signed))))
        }
    }
}

/// Whether `path` is one of `ignore`, or under one, as `model_signing`
/// decides it.
fn ignored(path: &str, ignore: &[String]) -> bool {
    ignore.iter().any(|p| {
        let p = p.trim_start_matches("./").trim_end_matches('/');
        path == p
            || path
                .strip_prefix(p)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::manifest::Manifest;

    fn model(chunked: bool) -> Model {
        let dir = std::path::Path::new("tests/fixtures/signed/model");
        let entry = crate::manifest::build_entry(
            dir,
            &crate::manifest::BuildOptions {
                id: "signed".into(),
                sources: vec!["file:///models/signed".into()],
                chunk_size: chunked.then_some(65536),
                description: None,
            },
        )
        .unwrap();
        let manifest = Manifest::load_text(&format!("version = 1\n{entry}"), None).unwrap();
        Model::clone(&manifest.models[0])
    }

    fn signed(method: Method, files: &[(&str, &[Piece])]) -> Signed {
        Signed {
            method,
            ignore_paths: vec![".git".into(), "docs/".into()],
            files: files
                .iter()
                .map(|(p, v)| (p.to_string(), v.to_vec()))
                .collect::<HashMap<_, _>>(),
        }
    }

    #[test]
    fn files_signed_whole_are_verified_whole() {
        let m = model(true);
        let [config, weights] = [&m.files[0], &m.files[1]];
        let s = signed(
            Method::Files,
            &[
                ("config.json", &[(0, u64::MAX, config.sha256)]),
                ("w.bin", &[(0, u64::MAX, weights.sha256)]),
            ],
        );
        let bound = bind(&m, &s, None).unwrap();
        assert!(
            bound.model.files[0].is_chunked(),
            "one chunk: its hash is the signed sha256"
        );
        assert!(
            !bound.model.files[1].is_chunked(),
            "three chunks nobody signed"
        );
        assert_eq!(*bound.unsigned, [false, false]);

        let wrong = signed(
            Method::Files,
            &[
                ("config.json", &[(0, u64::MAX, weights.sha256)]),
                ("w.bin", &[(0, u64::MAX, weights.sha256)]),
            ],
        );
        let err = bind(&m, &wrong, None).unwrap_err();
        assert_eq!(err.file, "config.json");
        assert!(err.why.contains("the manifest says sha256"), "{}", err.why);

        let missing = signed(
            Method::Files,
            &[("w.bin", &[(0, u64::MAX, weights.sha256)])],
        );
        assert_eq!(
            bind(&m, &missing, None).unwrap_err().why,
            "not in the signature"
        );
    }

    #[test]
    fn a_signed_chunk_list_binds_the_chunks_of_files_signed_whole() {
        let m = model(true);
        let w = &m.files[1];
        let chunks: Vec<Digest> = w.chunk_hashes().unwrap().collect();
        let s = signed(
            Method::Files,
            &[
                ("config.json", &[(0, u64::MAX, m.files[0].sha256)]),
                ("w.bin", &[(0, u64::MAX, w.sha256)]),
            ],
        );
        let list = ChunkList::of([("w.bin", w.size, w.sha256, 65536, &chunks[..])]);
        let bound = bind(&m, &s, Some(&list)).unwrap();
        let listed: Vec<Digest> = bound.model.files[1].chunk_hashes().unwrap().collect();
        assert_eq!(listed, chunks);

        let other = ChunkList::of([("w.bin", w.size, m.files[0].sha256, 65536, &chunks[..])]);
        let err = bind(&m, &s, Some(&other)).unwrap_err();
        assert!(
            err.why.contains("in the signed modelfs-chunks.json"),
            "{}",
            err.why
        );
    }

    #[test]
    fn shards_of_a_chunk_size_bind_the_chunks() {
        let m = model(true);
        let w = &m.files[1];
        let chunks: Vec<Digest> = w.chunk_hashes().unwrap().collect();
        let pieces = [
            (0, 65536, chunks[0]),
            (65536, 131072, chunks[1]),
            (131072, 150000, chunks[2]),
        ];
        let config = (0, m.files[0].size, m.files[0].sha256);
        let s = signed(
            Method::Shards(65536),
            &[("config.json", &[config]), ("w.bin", &pieces)],
        );
        let bound = bind(&m, &s, None).unwrap();
        assert_eq!(
            bound.model.files[1]
                .chunk_hashes()
                .unwrap()
                .collect::<Vec<_>>(),
            chunks
        );

        let mut forged = pieces;
        forged[1].2 = chunks[0];
        let s = signed(
            Method::Shards(65536),
            &[("config.json", &[config]), ("w.bin", &forged)],
        );
        assert!(bind(&m, &s, None).unwrap_err().why.starts_with("chunk 1"));

        let short = signed(
            Method::Shards(65536),
            &[("config.json", &[config]), ("w.bin", &pieces[..2])],
        );
        assert!(
            bind(&m, &short, None)
                .unwrap_err()
                .why
                .contains("cover 131072 bytes")
        );
    }

    #[test]
    fn ignored_paths_are_unsigned_not_refused() {
        assert!(ignored(".git/config", &[".git".into()]));
        assert!(ignored("docs/a.md", &["docs/".into()]));
        assert!(!ignored(".github", &[".git".into()]));
        let m = model(false);
        let s = signed(
            Method::Files,
            &[("w.bin", &[(0, u64::MAX, m.files[1].sha256)])],
        );
        let mut ignoring = s;
        ignoring.ignore_paths.push("config.json".into());
        assert_eq!(*bind(&m, &ignoring, None).unwrap().unsigned, [true, false]);
    }
}
