//! A model's chunk list, `modelfs-chunks.json` beside its files: the chunk
//! hashes of each file, written by `manifest build --chunk-list` for a
//! publisher to sign with the model. A signature over whole files covers
//! this file like any other, and so binds the chunk hashes it lists: a
//! model signed with `model_signing sign` is then read lazily.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hash::Digest;

/// Its name in the model's directory.
pub const CHUNK_LIST: &str = "modelfs-chunks.json";
const FORMAT: &str = "modelfs-chunks/1";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkList {
    format: String,
    /// By path; files of one chunk are left out (their sha256 is its hash).
    pub files: BTreeMap<String, Chunked>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunked {
    pub size: u64,
    pub sha256: String,
    pub chunk_size: u64,
    pub chunks: Vec<String>,
}

impl ChunkList {
    /// The list of `files`: (path, size, sha256, chunk size, chunk hashes).
    pub fn of<'a>(
        files: impl IntoIterator<Item = (&'a str, u64, Digest, u64, &'a [Digest])>,
    ) -> ChunkList {
        let files = files
            .into_iter()
            .filter(|(_, _, _, _, chunks)| chunks.len() > 1)
            .map(|(path, size, sha256, chunk_size, chunks)| {
                let chunks = chunks.iter().map(Digest::to_hex).collect();
                let sha256 = sha256.to_hex();
                (
                    path.to_owned(),
                    Chunked {
                        size,
                        sha256,
                        chunk_size,
                        chunks,
                    },
                )
            })
            .collect();
        ChunkList {
            format: FORMAT.into(),
            files,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain data serializes") + "\n"
    }

    pub fn parse(json: &[u8]) -> Result<ChunkList, String> {
        let list: ChunkList = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        if list.format != FORMAT {
            return Err(format!("its format is not {FORMAT:?}"));
        }
        Ok(list)
    }
}

impl Chunked {
    /// The chunk size and hashes, if they describe a file of `size` bytes
    /// and this sha256 in chunks modelfs takes.
    pub fn chunking(&self, size: u64, sha256: Digest) -> Result<(u64, Box<[Digest]>), String> {
        super::check_chunk_size(self.chunk_size)?;
        if self.size != size || Digest::from_hex(&self.sha256)? != sha256 {
            return Err("its entry is for another file (size or sha256)".into());
        }
        if self.chunks.len() as u64 != size.div_ceil(self.chunk_size) {
            return Err(format!(
                "{} chunk hashes for {size} bytes",
                self.chunks.len()
            ));
        }
        let hashes = self
            .chunks
            .iter()
            .map(|h| Digest::from_hex(h))
            .collect::<Result<_, _>>()?;
        Ok((self.chunk_size, hashes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_reads_back_what_it_was_made_of() {
        let chunks = [Digest::of(b"a"), Digest::of(b"b")];
        let whole = Digest::of(b"ab");
        let list = ChunkList::of([
            ("w.bin", 2, whole, 65536 / 65536, &chunks[..]),
            ("c", 1, whole, 65536, &chunks[..1]),
        ]);
        assert_eq!(list.files.len(), 1, "one-chunk files are left out");
        let back = ChunkList::parse(list.to_json().as_bytes()).unwrap();
        let entry = &back.files["w.bin"];
        assert!(
            entry
                .chunking(2, whole)
                .unwrap_err()
                .contains("power of two")
        );
        let list = ChunkList::of([("w.bin", 70000, whole, 65536, &chunks[..])]);
        let entry = &list.files["w.bin"];
        assert_eq!(entry.chunking(70000, whole).unwrap().1.as_ref(), &chunks);
        assert!(entry.chunking(70001, whole).is_err());
        assert!(entry.chunking(70000, chunks[0]).is_err());
        assert!(
            ChunkList::parse(br#"{"format": "x", "files": {}}"#)
                .unwrap_err()
                .contains("format")
        );
    }
}
