//! A persistent bitmap of verified chunks, one bit per chunk, shared through
//! `mmap` so every process using the cache sees a bit the moment it is set.
//!
//! File format (little-endian, version 3): `b"MFSCMAP\x03"`, `chunk_size: u64`,
//! `size: u64`, `chunk_list: [u8; 32]` (the digest of the chunk hashes that
//! verified the bits), `dev: u64`, `ino: u64` (the partial file the bits
//! describe), `boot_id: [u8; 16]`, `dirty: u64`, `failed_whole: [u8; 32]`
//! (what the whole file hashed to when it failed its sha256; zeros if it
//! never did), 32 reserved bytes, then two bitmaps of `ceil(chunks / 8)`
//! bytes each, chunk `i` at bit `i % 8` of byte `i / 8`: the verified chunks,
//! and the suspect ones; then, 8-aligned, a `u16` per chunk: how many 4 KiB
//! units of a chunk not yet verified are written from its start (its
//! *progress*), so a fetch stopped by a crash resumes inside the chunk.
//!
//! The first 72 bytes are the map's [`Identity`]: a map is only ever used for
//! the very partial file and chunk hashes it was made for, so neither another
//! manifest's chunking of the same content nor a partial file replaced behind
//! its back can make a bit vouch for bytes it never saw.
//!
//! A bit is set once its chunk's bytes were verified and written. They are in
//! the page cache then, which survives any process crash; only a power loss
//! could lose them. So a writer marks the map `dirty` with the current boot id
//! (durably) before it sets bits, and the map is marked clean only after the
//! data was synced. A dirty map from another boot may hold bits newer than its
//! data: its verified bits all become suspect, and each suspect chunk is
//! re-hashed the first time it is needed (see [`super::Blob`]).
//!
//! Progress is only a hint: the bytes it covers are re-hashed before the
//! fetch resumes after them, and the chunk is verified whole before its bit
//! is set, so progress that ran ahead of its data (a power loss) costs a
//! refetch, never a wrong byte.
//!
//! The map file also carries the claims of fetchers: an OFD write lock on
//! byte `CLAIMS_AT + i` while some process fetches chunk `i`. The kernel
//! drops it when the holder's file closes, so a killed process leaves no
//! stale claim behind.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU64, Ordering};

use memmap2::MmapRaw;

use super::files;
use crate::hash::Digest;

const MAGIC: [u8; 8] = *b"MFSCMAP\x03";
const HEADER_LEN: usize = 128;
/// Bytes of the header that identify what the map describes.
const IDENTITY_LEN: usize = 72;
const BOOT_ID_AT: usize = 72;
const DIRTY_AT: usize = 88;
const FAILED_WHOLE_AT: usize = 96;
/// The two bitmaps after the header: verified chunks, then suspect ones.
const VERIFIED: u64 = 0;
const SUSPECT: u64 = 1;

fn bitmap_len(chunks: u64) -> u64 {
    chunks.div_ceil(8)
}

/// The unit progress is recorded in: a 64 MiB chunk is 16,384 of them.
pub const PROGRESS_UNIT: u64 = 4096;

/// Where the progress counters start: after the bitmaps, 8-aligned.
fn progress_at(chunks: u64) -> u64 {
    (HEADER_LEN as u64 + 2 * bitmap_len(chunks)).next_multiple_of(8)
}

/// Where claim locks start: far past the bitmap of any file, so they never
/// meet a lock on the map's content.
const CLAIMS_AT: u64 = 1 << 40;

/// What a map describes: a file's chunking, the chunk hashes its bits were
/// verified against, and the partial file that holds the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub size: u64,
    pub chunk_size: u64,
    pub chunk_list: Digest,
    pub dev: u64,
    pub ino: u64,
}

impl Identity {
    /// The identity of a map for the partial file `data`.
    pub fn of(data: &std::fs::Metadata, size: u64, chunk_size: u64, chunk_list: Digest) -> Self {
        Identity {
            size,
            chunk_size,
            chunk_list,
            dev: data.dev(),
            ino: data.ino(),
        }
    }

    fn header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(&MAGIC);
        h[8..16].copy_from_slice(&self.chunk_size.to_le_bytes());
        h[16..24].copy_from_slice(&self.size.to_le_bytes());
        h[24..56].copy_from_slice(&self.chunk_list.0);
        h[56..64].copy_from_slice(&self.dev.to_le_bytes());
        h[64..72].copy_from_slice(&self.ino.to_le_bytes());
        h
    }

    fn chunks(&self) -> u64 {
        self.size.div_ceil(self.chunk_size)
    }

    fn file_len(&self) -> u64 {
        progress_at(self.chunks()) + 2 * self.chunks()
    }
}

pub struct ChunkMap {
    mmap: MmapRaw,
    chunks: u64,
    /// Held for its advisory lock: shared while this process may set bits.
    file: File,
}

impl ChunkMap {
    /// Opens the map at `path` if it is there and describes `id`; `None`
    /// when it is missing or describes something else. Never follows a
    /// symlink.
    pub fn open(path: &Path, id: &Identity) -> io::Result<Option<ChunkMap>> {
        let file = match files::open_rw(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if !meta.is_file() || meta.len() != id.file_len() {
            return Ok(None);
        }
        let map = Self::map(file, id)?;
        // SAFETY: the header is inside the mapping (its length was checked)
        // and only read here; other processes never write its identity.
        let found = unsafe { std::slice::from_raw_parts(map.mmap.as_ptr(), IDENTITY_LEN) };
        Ok((found == &id.header()[..IDENTITY_LEN]).then_some(map))
    }

    /// Makes an empty map for `id` at `path`: written whole into `tmp` (a new
    /// file of this process's, on the same file system), synced, then renamed
    /// into place, so no process ever maps a half-written header. The bitmap
    /// is written, not left sparse: setting a bit never needs a new block.
    pub fn create(path: &Path, tmp: (File, &Path), id: &Identity) -> io::Result<ChunkMap> {
        let (mut file, tmp_path) = tmp;
        file.write_all(&id.header())?;
        file.write_all(&vec![0u8; (id.file_len() - HEADER_LEN as u64) as usize])?;
        file.sync_all()?;
        std::fs::rename(tmp_path, path)?;
        Self::map(file, id)
    }

    /// A map of version 2 (the same, without progress counters) for `id`,
    /// rewritten as this version through `tmp` and renamed over it, so the
    /// chunks an older modelfs verified are kept. `None` if `path` holds
    /// no such map.
    pub fn upgrade_v2(
        path: &Path,
        tmp: (File, &Path),
        id: &Identity,
    ) -> io::Result<Option<ChunkMap>> {
        let old = match files::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let header = id.header();
        let bitmaps = 2 * bitmap_len(id.chunks()) as usize;
        if old.len() != HEADER_LEN + bitmaps
            || old[..8] != *b"MFSCMAP\x02"
            || old[8..IDENTITY_LEN] != header[8..IDENTITY_LEN]
        {
            return Ok(None);
        }
        let mut new = Vec::with_capacity(id.file_len() as usize);
        new.extend_from_slice(&header[..IDENTITY_LEN]);
        // Boot id, dirty flag, failed whole-file check and the bitmaps as they were.
        new.extend_from_slice(&old[IDENTITY_LEN..]);
        new.resize(id.file_len() as usize, 0);
        let (mut file, tmp_path) = tmp;
        file.write_all(&new)?;
        file.sync_all()?;
        std::fs::rename(tmp_path, path)?;
        Self::map(file, id).map(Some)
    }

    fn map(file: File, id: &Identity) -> io::Result<ChunkMap> {
        Ok(ChunkMap {
            mmap: MmapRaw::map_raw(&file)?,
            chunks: id.chunks(),
            file,
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    fn word(&self, at: usize) -> &AtomicU64 {
        debug_assert!(at.is_multiple_of(8) && at + 8 <= HEADER_LEN);
        // SAFETY: `at` is an 8-aligned offset inside the header of a
        // page-aligned shared mapping that lives as long as `self`; every
        // process touches these words only through atomics.
        unsafe { AtomicU64::from_ptr(self.mmap.as_mut_ptr().add(at).cast::<u64>()) }
    }

    fn load_bytes<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        for (i, part) in out.chunks_mut(8).enumerate() {
            part.copy_from_slice(&self.word(at + 8 * i).load(Ordering::Acquire).to_le_bytes());
        }
        out
    }

    fn store_bytes(&self, at: usize, bytes: &[u8]) {
        for (i, part) in bytes.chunks(8).enumerate() {
            let word = u64::from_le_bytes(part.try_into().expect("8 bytes"));
            self.word(at + 8 * i).store(word, Ordering::Release);
        }
    }

    /// Whether the map may hold bits newer than its data, and from which boot.
    pub fn dirty_since(&self) -> Option<[u8; 16]> {
        (self.word(DIRTY_AT).load(Ordering::Acquire) != 0).then(|| self.load_bytes(BOOT_ID_AT))
    }

    /// Records, durably, that bits may now be set before their data is synced.
    pub fn mark_dirty(&self, boot_id: [u8; 16]) -> io::Result<()> {
        self.store_bytes(BOOT_ID_AT, &boot_id);
        self.word(DIRTY_AT).store(1, Ordering::Release);
        self.mmap.flush_range(0, HEADER_LEN)
    }

    /// Records that every set bit's data is durable. Call after syncing it.
    pub fn mark_clean(&self) -> io::Result<()> {
        self.word(DIRTY_AT).store(0, Ordering::Release);
        self.mmap.flush()
    }

    /// What the whole file hashed to when every chunk verified but the
    /// whole did not: the manifest contradicts itself, and no refetch helps.
    pub fn failed_whole(&self) -> Option<Digest> {
        let d = Digest(self.load_bytes(FAILED_WHOLE_AT));
        (d.0 != [0; 32]).then_some(d)
    }

    /// Remembers a failed whole-file check and drops every bit, durably.
    pub fn set_failed_whole(&self, actual: Digest) -> io::Result<()> {
        self.store_bytes(FAILED_WHOLE_AT, &actual.0);
        (0..self.chunks).for_each(|c| self.clear(c));
        self.mmap.flush()
    }

    /// The byte holding chunk `chunk`'s bit in bitmap `which` (0: verified,
    /// 1: suspect).
    fn byte(&self, which: u64, chunk: u64) -> &AtomicU8 {
        assert!(chunk < self.chunks, "chunk {chunk} out of {}", self.chunks);
        let at = HEADER_LEN as u64 + which * bitmap_len(self.chunks) + chunk / 8;
        // SAFETY: in bounds (chunk asserted above, `which` is 0 or 1; the
        // map's length was checked at open or written at creation), AtomicU8
        // has the alignment of u8, the mapping lives as long as `self`, and
        // every process writes the bitmaps only through atomics.
        unsafe { AtomicU8::from_ptr(self.mmap.as_mut_ptr().add(at as usize)) }
    }

    pub fn is_set(&self, chunk: u64) -> bool {
        self.byte(VERIFIED, chunk).load(Ordering::Acquire) & (1 << (chunk % 8)) != 0
    }

    /// Sets the bit; true if it was clear before.
    pub fn set(&self, chunk: u64) -> bool {
        let bit = 1 << (chunk % 8);
        self.byte(VERIFIED, chunk).fetch_or(bit, Ordering::Release) & bit == 0
    }

    pub fn clear(&self, chunk: u64) {
        self.byte(VERIFIED, chunk)
            .fetch_and(!(1 << (chunk % 8)), Ordering::Release);
    }

    pub fn count(&self) -> u64 {
        (0..self.chunks).filter(|&c| self.is_set(c)).count() as u64
    }

    pub fn all_set(&self) -> bool {
        (0..self.chunks).all(|c| self.is_set(c))
    }

    fn progress_word(&self, chunk: u64) -> &AtomicU16 {
        assert!(chunk < self.chunks, "chunk {chunk} out of {}", self.chunks);
        let at = progress_at(self.chunks) + 2 * chunk;
        // SAFETY: in bounds (chunk asserted above; the map's length was
        // checked at open or written at creation), 2-aligned (progress_at is
        // 8-aligned in a page-aligned mapping), the mapping lives as long as
        // `self`, and every process touches the counters only through atomics.
        unsafe { AtomicU16::from_ptr(self.mmap.as_mut_ptr().add(at as usize).cast::<u16>()) }
    }

    /// Bytes of chunk `chunk` written from its start, unverified, as far as
    /// a fetch recorded them (a multiple of [`PROGRESS_UNIT`]).
    pub fn progress(&self, chunk: u64) -> u64 {
        u64::from(self.progress_word(chunk).load(Ordering::Acquire)) * PROGRESS_UNIT
    }

    /// Records that `bytes` of chunk `chunk` are written from its start
    /// (rounded down to whole units). Only the chunk's claimant calls it.
    pub fn set_progress(&self, chunk: u64, bytes: u64) {
        let units = u16::try_from(bytes / PROGRESS_UNIT).unwrap_or(u16::MAX);
        self.progress_word(chunk).store(units, Ordering::Release);
    }

    /// Whether chunk `chunk` was verified before a power loss that may have
    /// lost its data: it must be re-hashed before it is trusted again.
    pub fn is_suspect(&self, chunk: u64) -> bool {
        self.byte(SUSPECT, chunk).load(Ordering::Acquire) & (1 << (chunk % 8)) != 0
    }

    pub fn clear_suspect(&self, chunk: u64) {
        self.byte(SUSPECT, chunk)
            .fetch_and(!(1 << (chunk % 8)), Ordering::Release);
    }

    /// After a power loss: every verified bit becomes suspect, durably, so
    /// that no process trusts it until its chunk was re-hashed (on first
    /// use, not all at once). Returns how many became suspect.
    pub fn suspect_all(&self) -> io::Result<u64> {
        let moved = self.count();
        for chunk in (0..self.chunks).step_by(8) {
            let bits = self.byte(VERIFIED, chunk).swap(0, Ordering::AcqRel);
            self.byte(SUSPECT, chunk).fetch_or(bits, Ordering::Release);
        }
        self.mmap.flush()?;
        Ok(moved)
    }

    /// Waits until no other process fetches chunk `chunk`, then claims it
    /// until [`ChunkMap::release`]. Blocking. Claims are per open map file:
    /// within a process, single flight keeps two tasks off one chunk.
    pub fn claim(&self, chunk: u64) -> io::Result<()> {
        self.claim_lock(chunk, libc::F_WRLCK, libc::F_OFD_SETLKW)
            .map(drop)
    }

    pub fn release(&self, chunk: u64) -> io::Result<()> {
        self.claim_lock(chunk, libc::F_UNLCK, libc::F_OFD_SETLK)
            .map(drop)
    }

    /// Claims `chunk` unless another process holds it: false then.
    pub fn try_claim(&self, chunk: u64) -> io::Result<bool> {
        self.claim_lock(chunk, libc::F_WRLCK, libc::F_OFD_SETLK)
    }

    /// One `fcntl` on the claim byte of `chunk`; false if another holds it.
    fn claim_lock(&self, chunk: u64, kind: i32, cmd: i32) -> io::Result<bool> {
        use std::os::fd::AsRawFd;
        assert!(chunk < self.chunks, "chunk {chunk} out of {}", self.chunks);
        // SAFETY: a zeroed flock is valid; l_pid must be 0 for OFD locks.
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = kind as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        lock.l_start = (CLAIMS_AT + chunk) as libc::off_t;
        lock.l_len = 1;
        loop {
            // SAFETY: a valid fd and a pointer to a live, initialized flock.
            if unsafe { libc::fcntl(self.file.as_raw_fd(), cmd, &mut lock) } == 0 {
                return Ok(true);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN | libc::EACCES) => return Ok(false),
                _ => return Err(e),
            }
        }
    }
}

/// Which chunks a map file records, read without mapping or changing it;
/// `None` when there is no map, or it describes something other than `id`.
pub fn read_bits(path: &Path, id: &Identity) -> io::Result<Option<Vec<bool>>> {
    Ok(read_map(path, id)?.map(|bytes| {
        let bits = &bytes[HEADER_LEN..];
        (0..id.chunks())
            .map(|c| bits[(c / 8) as usize] & (1 << (c % 8)) != 0)
            .collect()
    }))
}

/// The progress a map file records per chunk, in bytes, read as
/// [`read_bits`] reads the bits.
pub fn read_progress(path: &Path, id: &Identity) -> io::Result<Option<Vec<u64>>> {
    Ok(read_map(path, id)?.map(|bytes| {
        let at = progress_at(id.chunks()) as usize;
        bytes[at..]
            .chunks_exact(2)
            .map(|u| u64::from(u16::from_le_bytes([u[0], u[1]])) * PROGRESS_UNIT)
            .collect()
    }))
}

fn read_map(path: &Path, id: &Identity) -> io::Result<Option<Vec<u8>>> {
    let bytes = match files::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let matches =
        bytes.len() as u64 == id.file_len() && bytes[..IDENTITY_LEN] == id.header()[..IDENTITY_LEN];
    Ok(matches.then_some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(size: u64, chunk_size: u64, list: u8, ino: u64) -> Identity {
        Identity {
            size,
            chunk_size,
            chunk_list: Digest([list; 32]),
            dev: 1,
            ino,
        }
    }

    /// The map at `path` for `id`, made empty when it is not there.
    fn open(dir: &Path, id: &Identity) -> ChunkMap {
        let path = dir.join("x.map");
        if let Some(map) = ChunkMap::open(&path, id).unwrap() {
            return map;
        }
        let tmp = dir.join(format!("tmp.{}", rand_suffix()));
        let file = files::create_new(&tmp).unwrap();
        ChunkMap::create(&path, (file, &tmp), id).unwrap()
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::AtomicU64;
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    #[test]
    fn bits_persist_and_a_map_serves_only_what_it_was_made_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.map");
        let size = 10 * 65536 + 1; // 11 chunks: the last byte is partly used
        let mine = id(size, 65536, 1, 7);
        {
            let map = open(dir.path(), &mine);
            assert_eq!(map.count(), 0);
            map.set(0);
            map.set(10);
            assert!(map.is_set(10) && !map.is_set(9));
        }
        let map = open(dir.path(), &mine);
        assert_eq!(map.count(), 2);
        let bits = read_bits(&path, &mine).unwrap().unwrap();
        assert_eq!(bits.iter().filter(|b| **b).count(), 2);
        assert!(!map.set(0), "chunk 0 was already set");
        assert!(map.set(1), "chunk 1 was not");
        (2..11).for_each(|c| {
            map.set(c);
        });
        assert!(map.all_set());
        map.clear(4);
        assert_eq!(map.count(), 10);

        // Another chunking, other chunk hashes, another partial file: not this map.
        for other in [
            id(size, 131072, 1, 7),
            id(size, 65536, 2, 7),
            id(size, 65536, 1, 8),
            id(size + 1, 65536, 1, 7),
        ] {
            assert!(
                ChunkMap::open(&path, &other).unwrap().is_none(),
                "{other:?}"
            );
            assert_eq!(read_bits(&path, &other).unwrap(), None);
        }
    }

    #[test]
    fn a_version_2_map_is_upgraded_with_its_bits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.map");
        let mine = id(20 * 65536, 65536, 1, 7);
        let mut v2 = mine.header()[..HEADER_LEN].to_vec();
        v2[..8].copy_from_slice(b"MFSCMAP\x02");
        // 20 chunks: two bitmaps of 3 bytes; verified 0 and 2, suspect 8.
        v2.extend_from_slice(&[0b101, 0, 0, 0, 0b1, 0]);
        std::fs::write(&path, &v2).unwrap();
        assert!(
            ChunkMap::open(&path, &mine).unwrap().is_none(),
            "not as it is"
        );
        let tmp = dir.path().join("tmp.1");
        let file = files::create_new(&tmp).unwrap();
        let other = id(20 * 65536, 65536, 2, 7);
        let file2 = files::create_new(&dir.path().join("tmp.2")).unwrap();
        assert!(
            ChunkMap::upgrade_v2(&path, (file2, &dir.path().join("tmp.2")), &other)
                .unwrap()
                .is_none(),
            "another layout's map is not upgraded"
        );
        let map = ChunkMap::upgrade_v2(&path, (file, &tmp), &mine)
            .unwrap()
            .unwrap();
        assert_eq!(map.count(), 2);
        assert!(map.is_set(0) && map.is_set(2) && map.is_suspect(8));
        assert_eq!(map.progress(19), 0);
        drop(map);
        assert!(ChunkMap::open(&path, &mine).unwrap().is_some());
    }

    #[test]
    fn the_bitmap_is_allocated_so_setting_a_bit_needs_no_new_block() {
        let dir = tempfile::tempdir().unwrap();
        let map = open(dir.path(), &id(1 << 40, 65536, 1, 7));
        let meta = map.file().metadata().unwrap();
        assert!(meta.blocks() * 512 >= meta.len(), "{meta:?}");
    }

    #[test]
    fn a_claim_excludes_other_openers_of_the_map_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let mine = id(1 << 20, 65536, 1, 7);
        // Two opens are two open file descriptions: they contend like two processes.
        let a = open(dir.path(), &mine);
        let b = open(dir.path(), &mine);
        a.claim(3).unwrap();
        assert!(!b.try_claim(3).unwrap(), "chunk 3 is a's");
        assert!(b.try_claim(4).unwrap(), "other chunks are free");
        a.release(3).unwrap();
        assert!(b.try_claim(3).unwrap());
        drop(b);
        // Closing the file drops its claims, as a killed process's are.
        assert!(a.try_claim(4).unwrap());
    }

    #[test]
    fn progress_persists_per_chunk_in_whole_units() {
        let dir = tempfile::tempdir().unwrap();
        // 9 chunks: the bitmaps end off an 8-byte boundary.
        let mine = id(9 << 26, 1 << 26, 1, 7);
        let map = open(dir.path(), &mine);
        assert_eq!(map.progress(8), 0);
        map.set_progress(8, (1 << 26) - 1);
        map.set_progress(0, 3 * PROGRESS_UNIT + 5);
        drop(map);
        let read = read_progress(&dir.path().join("x.map"), &mine)
            .unwrap()
            .unwrap();
        assert_eq!((read.len(), read[0], read[1]), (9, 3 * PROGRESS_UNIT, 0));
        let map = open(dir.path(), &mine);
        assert_eq!(map.progress(0), 3 * PROGRESS_UNIT);
        assert_eq!(map.progress(8), (1 << 26) - PROGRESS_UNIT);
        assert!((1..8).all(|c| map.progress(c) == 0 && !map.is_set(c)));
    }

    #[test]
    fn dirty_flag_boot_id_and_a_failed_whole_check_persist() {
        let dir = tempfile::tempdir().unwrap();
        let mine = id(1 << 20, 65536, 1, 7);
        let map = open(dir.path(), &mine);
        assert_eq!(map.dirty_since(), None);
        map.mark_dirty([7; 16]).unwrap();
        map.set(3);
        drop(map);
        let map = open(dir.path(), &mine);
        assert_eq!(map.dirty_since(), Some([7; 16]));
        assert!(map.is_set(3));
        map.mark_clean().unwrap();
        assert_eq!(map.dirty_since(), None);

        assert_eq!(map.failed_whole(), None);
        map.set_failed_whole(Digest([9; 32])).unwrap();
        drop(map);
        let map = open(dir.path(), &mine);
        assert_eq!(map.failed_whole(), Some(Digest([9; 32])));
        assert_eq!(map.count(), 0, "no bit outlives a failed whole-file check");
    }
}
