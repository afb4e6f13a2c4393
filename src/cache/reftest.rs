//! Property test: one file's cache state, driven by random operations of
//! several manifest entries and processes, against a reference model.
//!
//! The file has three entries with one sha256: 64 KiB chunks, 128 KiB
//! chunks, and 64 KiB chunks whose list lies about one chunk (a source that
//! agrees with the lie makes that chunk verify for that entry alone, until
//! the whole-file check fails). Two [`Cache`]s on one directory stand for
//! two processes. The operations are those of the fetcher and of `modelfs
//! verify`: open and drop blobs; fetch a chunk (write the bytes that verify,
//! then mark it); fail a fetch (write other bytes, mark nothing); damage a
//! chunk behind the cache's back, then re-verify; finish a file whose chunks
//! all verified; restart every process.
//!
//! After every operation it checks that:
//! - each open blob reports present exactly the chunks the model says, and
//!   reads back the bytes that verify against its entry's chunk hashes (the
//!   file's bytes once complete): never a failed fetch's bytes, a hole, or
//!   what another chunking or chunk list verified;
//! - [`Cache::presence`] in each process and [`Cache::verified_bits`] agree
//!   with the model;
//! - the complete file, when there is one, holds the file's bytes.
//!
//! The model keeps, for every data file (inode) the cache made: the chunks
//! its map marks, whether its whole-file check failed, and what each 64 KiB
//! piece holds; which inode each name (a partial file per
//! layout, the complete file) names; and for every blob its process, entry,
//! inode and whether it is complete. Damage done behind the cache's back
//! ("rot") is beyond its control until a verify sees it: the model knows
//! which bytes are rotten, and excuses rotten bytes still served (or still
//! in the complete file) only where the verify that ran could not drop them
//! (see [`World::rot`]).

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, LazyLock};

use proptest::prelude::*;
use tempfile::TempDir;

use super::{Blob, Cache, Presence, chunk_len};
use crate::hash::Digest;
use crate::manifest::{FileEntry, Manifest};

/// The smallest chunk size: the model tracks bytes in pieces this long.
const PIECE: u64 = 64 << 10;
/// 5 chunks of 64 KiB or 3 of 128 KiB, the last one short either way.
const SIZE: u64 = 4 * PIECE + 1000;
const PIECES: usize = SIZE.div_ceil(PIECE) as usize;
/// The chunk size of each entry.
const CHUNK_SIZES: [u64; 3] = [PIECE, 2 * PIECE, PIECE];
/// The entry that lies, and the chunk (also a piece) it lies about.
const LIAR: usize = 2;
const LIE: u64 = 2;
const PROCESSES: usize = 2;

struct Fixture {
    data: Vec<u8>,
    /// What the liar says chunk `LIE` holds.
    alt: Vec<u8>,
    manifest: Manifest,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    // Never zero, so that a hole never passes for data.
    let data: Vec<u8> = (0..SIZE)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 | 1)
        .collect();
    let alt: Vec<u8> = data[piece_range(LIE as usize)]
        .iter()
        .map(|b| b ^ 0xA5)
        .collect();
    let mut text = String::from("version = 1\n");
    for (e, &chunk_size) in CHUNK_SIZES.iter().enumerate() {
        let hashes: Vec<String> = (0..chunk_count(e))
            .map(|c| {
                let bytes = if e == LIAR && c == LIE {
                    &alt[..]
                } else {
                    &data[chunk_range(e, c)]
                };
                format!("\"{}\"", Digest::of(bytes))
            })
            .collect();
        text += &format!(
            "[[model]]\nid = \"m{e}\"\nsources = [\"file:///nowhere\"]\n[[model.file]]\n\
             path = \"f\"\nsize = {SIZE}\nsha256 = \"{}\"\nchunk_size = {chunk_size}\n\
             chunks = [{}]\n",
            Digest::of(&data),
            hashes.join(", ")
        );
    }
    let manifest = Manifest::parse("reftest.toml".as_ref(), &text).unwrap();
    Fixture {
        data,
        alt,
        manifest,
    }
});

impl Fixture {
    fn entry(&self, e: usize) -> &FileEntry {
        &self.manifest.models[e].files[0]
    }

    /// The bytes of chunk `c` that verify against entry `e`'s hash.
    fn verifying(&self, e: usize, c: u64) -> &[u8] {
        if e == LIAR && c == LIE {
            &self.alt
        } else {
            &self.data[chunk_range(e, c)]
        }
    }
}

fn chunk_count(e: usize) -> u64 {
    SIZE.div_ceil(CHUNK_SIZES[e])
}

fn chunk_range(e: usize, c: u64) -> Range<usize> {
    let start = c * CHUNK_SIZES[e];
    start as usize..(start + chunk_len(SIZE, CHUNK_SIZES[e], c)) as usize
}

fn piece_range(p: usize) -> Range<usize> {
    p * PIECE as usize..SIZE.min((p as u64 + 1) * PIECE) as usize
}

/// The pieces chunk `c` of entry `e` covers.
fn pieces(e: usize, c: u64) -> Range<usize> {
    let bytes = chunk_range(e, c);
    bytes.start / PIECE as usize..bytes.end.div_ceil(PIECE as usize)
}

/// What a 64 KiB piece of a data file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Piece {
    /// Never written: zeros.
    Hole,
    /// The file's bytes.
    Data,
    /// The liar's bytes for chunk `LIE`.
    Alt,
    /// A failed fetch's bytes.
    Garbage,
    /// Damaged behind the cache's back.
    Rot,
}

/// What piece `p` must hold to verify against entry `e`'s chunk hashes.
fn verifying_piece(e: usize, p: usize) -> Piece {
    if e == LIAR && p == LIE as usize {
        Piece::Alt
    } else {
        Piece::Data
    }
}

/// A data file: partial, or complete once published (same inode).
struct Inode {
    pieces: [Piece; PIECES],
    bits: Vec<bool>,
    failed_whole: bool,
}

#[derive(Clone, Copy, Debug)]
struct ModelBlob {
    process: usize,
    entry: usize,
    inode: usize,
    complete: bool,
}

#[derive(Default)]
struct Model {
    inodes: Vec<Inode>,
    /// The inode each entry's partial file (with its map) names.
    partial: [Option<usize>; 3],
    /// The inode the complete file names.
    complete: Option<usize>,
    blobs: Vec<ModelBlob>,
}

/// What happens to the cache. `blob` picks a kept handle (modulo their
/// number; nothing happens when none is kept), `chunk` one of its chunks.
#[derive(Clone, Debug)]
#[rustfmt::skip]
enum Op {
    /// A process opens an entry's blob and keeps it.
    Open { process: usize, entry: usize },
    Drop { blob: usize },
    /// A fetch from a source that agrees with the blob's entry.
    Fetch { blob: usize, chunk: u64 },
    /// A fetch whose bytes did not verify: written, never marked.
    FailedFetch { blob: usize, chunk: u64, mask: u8 },
    /// Damage behind the cache's back, then a verify of the blob.
    Rot { blob: usize, chunk: u64 },
    /// The whole-file check and publication, once every chunk verified.
    Finish { blob: usize },
    /// Every missing chunk, then finish, as `modelfs prefetch`.
    Prefetch { blob: usize },
    /// Every process exits (blobs and caches dropped) and starts again.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let (blob, chunk) = (0..8usize, 0..5u64);
    prop_oneof![
        4 => (0..PROCESSES, 0..3usize).prop_map(|(process, entry)| Op::Open { process, entry }),
        2 => blob.clone().prop_map(|blob| Op::Drop { blob }),
        3 => (blob.clone(), chunk.clone()).prop_map(|(blob, chunk)| Op::Fetch { blob, chunk }),
        2 => (blob.clone(), chunk.clone(), 1..=255u8)
            .prop_map(|(blob, chunk, mask)| Op::FailedFetch { blob, chunk, mask }),
        2 => (blob.clone(), chunk).prop_map(|(blob, chunk)| Op::Rot { blob, chunk }),
        1 => blob.clone().prop_map(|blob| Op::Finish { blob }),
        2 => blob.prop_map(|blob| Op::Prefetch { blob }),
        1 => Just(Op::Restart),
    ]
}

/// The cache under test and the model, side by side.
struct World {
    fx: &'static Fixture,
    dir: TempDir,
    caches: Vec<Cache>,
    /// Blob handles kept, each with the index of its model blob.
    kept: Vec<(Arc<Blob>, usize)>,
    model: Model,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let caches = (0..PROCESSES)
            .map(|_| Cache::open(dir.path()).unwrap())
            .collect();
        World {
            fx: &FIXTURE,
            dir,
            caches,
            kept: Vec::new(),
            model: Model::default(),
        }
    }

    fn apply(&mut self, op: &Op) {
        let (blob, chunk) = match *op {
            Op::Open { process, entry } => return self.open(process, entry),
            Op::Restart => return self.restart(),
            Op::Drop { blob } | Op::Finish { blob } | Op::Prefetch { blob } => (blob, 0),
            Op::Fetch { blob, chunk }
            | Op::FailedFetch { blob, chunk, .. }
            | Op::Rot { blob, chunk } => (blob, chunk),
        };
        if self.kept.is_empty() {
            return;
        }
        let k = blob % self.kept.len();
        let entry = self.model.blobs[self.kept[k].1].entry;
        let chunk = chunk % chunk_count(entry);
        match *op {
            Op::Drop { .. } => drop(self.kept.remove(k)),
            Op::Fetch { .. } => self.fetch(k, chunk, None),
            Op::FailedFetch { mask, .. } => self.fetch(k, chunk, Some(mask)),
            Op::Rot { .. } => self.rot(k, chunk),
            Op::Finish { .. } => self.finish(k),
            Op::Prefetch { .. } => {
                (0..chunk_count(entry)).for_each(|c| self.fetch(k, c, None));
                self.finish(k);
            }
            Op::Open { .. } | Op::Restart => unreachable!(),
        }
    }

    /// The model blob `process` has open for `entry`, if any.
    fn alive(&self, process: usize, entry: usize) -> Option<usize> {
        self.kept.iter().map(|&(_, id)| id).find(|&id| {
            let b = self.model.blobs[id];
            (b.process, b.entry) == (process, entry)
        })
    }

    fn has_chunk(&self, id: usize, c: u64) -> bool {
        let b = self.model.blobs[id];
        b.complete || self.model.inodes[b.inode].bits[c as usize]
    }

    fn open(&mut self, process: usize, entry: usize) {
        let blob = self.caches[process]
            .open_blob(self.fx.entry(entry))
            .unwrap();
        let id = match self.alive(process, entry) {
            Some(id) => {
                let (first, _) = self.kept.iter().find(|(_, i)| *i == id).unwrap();
                assert!(
                    Arc::ptr_eq(first, &blob),
                    "one blob per layout in a process"
                );
                id
            }
            None => {
                let m = &mut self.model;
                let (inode, complete) = match (m.complete, m.partial[entry]) {
                    (Some(f), _) => (f, true),
                    (None, Some(f)) => (f, false),
                    (None, None) => {
                        m.inodes.push(Inode {
                            pieces: [Piece::Hole; PIECES],
                            bits: vec![false; chunk_count(entry) as usize],
                            failed_whole: false,
                        });
                        m.partial[entry] = Some(m.inodes.len() - 1);
                        (m.inodes.len() - 1, false)
                    }
                };
                m.blobs.push(ModelBlob {
                    process,
                    entry,
                    inode,
                    complete,
                });
                m.blobs.len() - 1
            }
        };
        self.kept.push((blob, id));
    }

    fn restart(&mut self) {
        self.kept.clear();
        self.caches.clear();
        self.caches = (0..PROCESSES)
            .map(|_| Cache::open(self.dir.path()).unwrap())
            .collect();
    }

    /// Fetches chunk `c` the way the fetcher does, from a source that agrees
    /// with the blob's entry (`mask` None) or one whose bytes fail to verify.
    /// Only chunks not yet verified are written: the fetcher checks under a
    /// claim, so no fetch of a layout writes over a verified chunk of it.
    fn fetch(&mut self, k: usize, c: u64, mask: Option<u8>) {
        let (blob, id) = (Arc::clone(&self.kept[k].0), self.kept[k].1);
        let b = self.model.blobs[id];
        if self.has_chunk(id, c) {
            return;
        }
        let failed = self.model.inodes[b.inode].failed_whole;
        assert_eq!(blob.failed_whole().is_some(), failed, "{b:?} failed_whole");
        if failed {
            return;
        }
        let _claim = Arc::clone(&blob).claim_chunk(c).unwrap();
        assert!(!blob.has_chunk(c), "{b:?} chunk {c} under claim");
        let want = self.fx.verifying(b.entry, c);
        let bytes: Vec<u8> = match mask {
            None => want.to_vec(),
            Some(mask) => want.iter().map(|x| x ^ mask).collect(),
        };
        blob.write_at(&bytes, c * CHUNK_SIZES[b.entry]).unwrap();
        let inode = &mut self.model.inodes[b.inode];
        // A chunk found rotten stays rotten whatever a failed fetch puts
        // there: a process still filling a file another one published writes
        // into the complete file, but only where verify found it damaged.
        let rotten = pieces(b.entry, c).any(|p| inode.pieces[p] == Piece::Rot);
        for p in pieces(b.entry, c) {
            inode.pieces[p] = match mask {
                None => verifying_piece(b.entry, p),
                Some(_) if rotten => Piece::Rot,
                Some(_) => Piece::Garbage,
            };
        }
        if mask.is_none() {
            blob.mark_verified(c);
            inode.bits[c as usize] = true;
        }
    }

    /// Damages one byte of chunk `c` of the blob's data behind the cache's
    /// back, then re-verifies that blob. A partial file's bad chunks are
    /// dropped from its map, which every process with the file open shares.
    /// A bad complete file is removed; blobs that already hold it (in any
    /// process, this one included) keep serving it, which the model excuses,
    /// as it does a blob still filling a file another process published: its
    /// verify sees its map, not the complete file. A complete file no longer
    /// named cannot be reached: nothing happens then.
    fn rot(&mut self, k: usize, c: u64) {
        let (blob, id) = (Arc::clone(&self.kept[k].0), self.kept[k].1);
        let b = self.model.blobs[id];
        let at = c * CHUNK_SIZES[b.entry];
        if b.complete {
            if self.model.complete != Some(b.inode) {
                return;
            }
            let path = self.caches[0].complete_path(&self.fx.entry(0).sha256);
            let file = OpenOptions::new().write(true).open(path).unwrap();
            file.write_all_at(&[!self.fx.data[at as usize]], at)
                .unwrap();
        } else {
            let good = self.fx.verifying(b.entry, c)[0];
            blob.write_at(&[!good], at).unwrap();
        }
        let inode = &mut self.model.inodes[b.inode];
        inode.pieces[(at / PIECE) as usize] = Piece::Rot;
        let found = blob.verify().unwrap();
        if b.complete {
            assert!(found.bad_file && found.bad_chunks == 0, "{b:?} {found:?}");
            self.model.complete = None;
            return;
        }
        let mut dropped = 0;
        for c in 0..chunk_count(b.entry) {
            let bad = pieces(b.entry, c).any(|p| inode.pieces[p] != verifying_piece(b.entry, p));
            if inode.bits[c as usize] && bad {
                inode.bits[c as usize] = false;
                dropped += 1;
            }
        }
        assert!(
            !found.bad_file && found.bad_chunks == dropped,
            "{b:?} {found:?}"
        );
    }

    /// Once every chunk is verified, the whole-file check and publication.
    fn finish(&mut self, k: usize) {
        let (blob, id) = (Arc::clone(&self.kept[k].0), self.kept[k].1);
        let b = self.model.blobs[id];
        if b.complete {
            return;
        }
        blob.recount_verified();
        let inode = &mut self.model.inodes[b.inode];
        let all = inode.bits.iter().all(|&bit| bit);
        assert_eq!(blob.all_chunks_verified(), all, "{b:?} all verified");
        if !all {
            return;
        }
        let result = blob.finish_chunked().unwrap();
        if inode.pieces.iter().all(|&p| p == Piece::Data) {
            assert!(result.is_ok(), "{b:?} {result:?}");
            // Published only if its partial name still names it (another
            // process may have published it already); complete either way.
            if self.model.partial[b.entry] == Some(b.inode) {
                self.model.partial[b.entry] = None;
                self.model.complete = Some(b.inode);
            }
            self.model.blobs[id].complete = true;
        } else {
            assert!(result.is_err(), "{b:?} {result:?}");
            inode.failed_whole = true;
            inode.bits.fill(false);
        }
    }

    fn check(&self) {
        let mut seen = HashSet::new();
        for (blob, id) in &self.kept {
            if !seen.insert(*id) {
                continue;
            }
            let b = self.model.blobs[*id];
            assert_eq!(blob.is_complete(), b.complete, "{b:?} complete");
            for c in 0..chunk_count(b.entry) {
                let has = self.has_chunk(*id, c);
                assert_eq!(blob.has_chunk(c), has, "{b:?} has chunk {c}");
                if !has {
                    continue;
                }
                let want = if b.complete {
                    &self.fx.data[chunk_range(b.entry, c)]
                } else {
                    self.fx.verifying(b.entry, c)
                };
                let mut got = Vec::new();
                let at = c * CHUNK_SIZES[b.entry];
                blob.read_into(&mut got, at, at + want.len() as u64)
                    .unwrap();
                let inode = &self.model.inodes[b.inode];
                let rotten = pieces(b.entry, c).any(|p| inode.pieces[p] == Piece::Rot);
                assert!(
                    (got == want) != rotten,
                    "{b:?} serves chunk {c}, rotten: {rotten}"
                );
            }
        }
        for e in 0..CHUNK_SIZES.len() {
            let entry = self.fx.entry(e);
            for (p, cache) in self.caches.iter().enumerate() {
                let want = self.presence(p, e);
                assert_eq!(
                    cache.presence(entry).unwrap(),
                    want,
                    "entry {e} in process {p}"
                );
            }
            let bits = self.model.partial[e].map(|f| self.model.inodes[f].bits.clone());
            assert_eq!(
                self.caches[0].verified_bits(entry).unwrap(),
                bits,
                "map of {e}"
            );
        }
        let path = self.caches[0].complete_path(&self.fx.entry(0).sha256);
        let Some(f) = self.model.complete else {
            assert!(std::fs::symlink_metadata(&path).is_err(), "a complete file");
            return;
        };
        let got = std::fs::read(&path).unwrap();
        for (p, piece) in self.model.inodes[f].pieces.iter().enumerate() {
            let right = got[piece_range(p)] == self.fx.data[piece_range(p)];
            match piece {
                Piece::Data => assert!(right, "complete file, piece {p}"),
                Piece::Rot => assert!(!right, "model: piece {p} rotten"),
                other => panic!("model: complete file holds {other:?} at piece {p}"),
            }
        }
    }

    /// What `Cache::presence` must say of `entry` in `process`.
    fn presence(&self, process: usize, entry: usize) -> Presence {
        let m = &self.model;
        let bits = match self.alive(process, entry) {
            Some(id) if m.blobs[id].complete => return Presence::Complete,
            Some(id) => &m.inodes[m.blobs[id].inode].bits,
            None if m.complete.is_some() => return Presence::Complete,
            None => match m.partial[entry] {
                Some(f) => &m.inodes[f].bits,
                None => return Presence::Absent,
            },
        };
        let bytes = (0..chunk_count(entry))
            .filter(|&c| bits[c as usize])
            .map(|c| chunk_len(SIZE, CHUNK_SIZES[entry], c))
            .sum();
        Presence::Partial { bytes }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        // No regression files in the source tree: a failure prints its case.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn chunk_state_matches_the_model(ops in prop::collection::vec(op(), 1..=40)) {
        let mut world = World::new();
        for op in &ops {
            world.apply(op);
            world.check();
        }
    }
}
