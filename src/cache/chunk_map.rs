//! A persistent bitmap of verified chunks, one bit per chunk, shared through
//! `mmap` so every process using the cache sees a bit the moment it is set.
//!
//! File format (little-endian): `b"MFSCMAP\x01"`, `chunk_size: u64`,
//! `size: u64`, `boot_id: [u8; 16]`, `dirty: u64`, 16 reserved bytes, then
//! `ceil(chunks / 8)` bitmap bytes, chunk `i` at bit `i % 8` of byte `i / 8`.
//!
//! A bit is set once its chunk's bytes were verified and written. They are in
//! the page cache then, which survives any process crash; only a power loss
//! could lose them. So a writer marks the map `dirty` with the current boot id
//! (durably) before it sets bits, and the map is marked clean only after the
//! data was synced. A dirty map from another boot may hold bits newer than its
//! data: those chunks are re-verified before they are trusted (see
//! [`super::Blob`]).
//!
//! The map file also carries the claims of fetchers: an OFD write lock on
//! byte `CLAIMS_AT + i` while some process fetches chunk `i`. The kernel
//! drops it when the holder's file closes, so a killed process leaves no
//! stale claim behind.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use memmap2::MmapMut;

const MAGIC: [u8; 8] = *b"MFSCMAP\x01";
const HEADER_LEN: usize = 64;
/// Bytes of the header that identify the file it describes.
const IDENTITY_LEN: usize = 24;
const BOOT_ID_AT: usize = 24;
const DIRTY_AT: usize = 40;
/// Where claim locks start: far past the bitmap of any file, so they never
/// meet a lock on the map's content.
const CLAIMS_AT: u64 = 1 << 40;

pub struct ChunkMap {
    mmap: MmapMut,
    chunks: u64,
    /// Held for its advisory lock: shared while this process may set bits.
    file: File,
}

fn header(size: u64, chunk_size: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..16].copy_from_slice(&chunk_size.to_le_bytes());
    h[16..24].copy_from_slice(&size.to_le_bytes());
    h
}

fn file_len(size: u64, chunk_size: u64) -> u64 {
    HEADER_LEN as u64 + size.div_ceil(chunk_size).div_ceil(8)
}

impl ChunkMap {
    /// Opens the map at `path`, or creates an empty one when it is missing,
    /// was written for another chunking, or `fresh` says the data it describes
    /// is new. Creation goes through the temporary file `tmp` (on the same
    /// file system; where a crash's leftovers get swept) and an atomic
    /// rename, so no process ever maps a half-written header.
    pub fn open(
        path: &Path,
        tmp: &Path,
        size: u64,
        chunk_size: u64,
        fresh: bool,
    ) -> io::Result<ChunkMap> {
        let want_len = file_len(size, chunk_size);
        if !fresh && let Ok(file) = OpenOptions::new().read(true).write(true).open(path) {
            if file.metadata()?.len() == want_len {
                // SAFETY: see below.
                let mmap = unsafe { MmapMut::map_mut(&file)? };
                if mmap[..IDENTITY_LEN] == header(size, chunk_size)[..IDENTITY_LEN] {
                    return Ok(ChunkMap {
                        mmap,
                        chunks: size.div_ceil(chunk_size),
                        file,
                    });
                }
            }
            tracing::warn!(path = %path.display(), "chunk map does not match this file; starting it afresh");
        }
        {
            let mut f = File::create(tmp)?;
            f.write_all(&header(size, chunk_size))?;
            f.set_len(want_len)?;
            f.sync_all()?;
        }
        std::fs::rename(tmp, path)?;
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        // SAFETY: the mapping is only accessed through atomics (bits) or
        // read-only (header), so concurrent writers in other processes cannot
        // produce torn values; the file's length is fixed once created.
        let mmap = unsafe { MmapMut::map_mut(&file)? };
        Ok(ChunkMap {
            mmap,
            chunks: size.div_ceil(chunk_size),
            file,
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    fn word(&self, at: usize) -> &AtomicU64 {
        // SAFETY: `at` is an 8-aligned offset inside the header of a
        // page-aligned mapping that lives as long as `self`.
        unsafe { AtomicU64::from_ptr(self.mmap.as_ptr().wrapping_add(at).cast::<u64>().cast_mut()) }
    }

    /// Whether the map may hold bits newer than its data, and from which boot.
    pub fn dirty_since(&self) -> Option<[u8; 16]> {
        if self.word(DIRTY_AT).load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.word(BOOT_ID_AT).load(Ordering::Acquire).to_le_bytes());
        id[8..].copy_from_slice(
            &self
                .word(BOOT_ID_AT + 8)
                .load(Ordering::Acquire)
                .to_le_bytes(),
        );
        Some(id)
    }

    /// Records, durably, that bits may now be set before their data is synced.
    pub fn mark_dirty(&self, boot_id: [u8; 16]) -> io::Result<()> {
        let half = |i: usize| u64::from_le_bytes(boot_id[i..i + 8].try_into().expect("8 bytes"));
        self.word(BOOT_ID_AT).store(half(0), Ordering::Release);
        self.word(BOOT_ID_AT + 8).store(half(8), Ordering::Release);
        self.word(DIRTY_AT).store(1, Ordering::Release);
        self.mmap.flush_range(0, HEADER_LEN)
    }

    /// Records that every set bit's data is durable. Call after syncing it.
    pub fn mark_clean(&self) -> io::Result<()> {
        self.word(DIRTY_AT).store(0, Ordering::Release);
        self.mmap.flush()
    }

    fn byte(&self, chunk: u64) -> &AtomicU8 {
        assert!(chunk < self.chunks, "chunk {chunk} out of {}", self.chunks);
        let ptr = self
            .mmap
            .as_ptr()
            .wrapping_add(HEADER_LEN + (chunk / 8) as usize);
        // SAFETY: in bounds (asserted above, the map length was checked at open),
        // AtomicU8 has the alignment of u8, and the mapping lives as long as `self`.
        unsafe { AtomicU8::from_ptr(ptr.cast_mut()) }
    }

    pub fn is_set(&self, chunk: u64) -> bool {
        self.byte(chunk).load(Ordering::Acquire) & (1 << (chunk % 8)) != 0
    }

    /// Sets the bit; true if it was clear before.
    pub fn set(&self, chunk: u64) -> bool {
        let bit = 1 << (chunk % 8);
        self.byte(chunk).fetch_or(bit, Ordering::Release) & bit == 0
    }

    pub fn clear(&self, chunk: u64) {
        self.byte(chunk)
            .fetch_and(!(1 << (chunk % 8)), Ordering::Release);
    }

    pub fn count(&self) -> u64 {
        (0..self.chunks).filter(|&c| self.is_set(c)).count() as u64
    }

    pub fn all_set(&self) -> bool {
        (0..self.chunks).all(|c| self.is_set(c))
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

    #[cfg(test)]
    fn try_claim(&self, chunk: u64) -> io::Result<bool> {
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
/// `None` when there is no map, or it belongs to another chunking.
pub fn read_bits(path: &Path, size: u64, chunk_size: u64) -> io::Result<Option<Vec<bool>>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if bytes.len() as u64 != file_len(size, chunk_size)
        || bytes[..IDENTITY_LEN] != header(size, chunk_size)[..IDENTITY_LEN]
    {
        return Ok(None);
    }
    let bits = &bytes[HEADER_LEN..];
    Ok(Some(
        (0..size.div_ceil(chunk_size))
            .map(|c| bits[(c / 8) as usize] & (1 << (c % 8)) != 0)
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_persist_and_mismatched_maps_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.map");
        let size = 10 * 65536 + 1; // 11 chunks: the last byte is partly used
        {
            let map = ChunkMap::open(&path, &dir.path().join("tmp"), size, 65536, false).unwrap();
            assert_eq!(map.count(), 0);
            map.set(0);
            map.set(10);
            assert!(map.is_set(10) && !map.is_set(9));
        }
        let map = ChunkMap::open(&path, &dir.path().join("tmp"), size, 65536, false).unwrap();
        assert_eq!(map.count(), 2);
        let bits = read_bits(&path, size, 65536).unwrap().unwrap();
        assert_eq!(bits.iter().filter(|b| **b).count(), 2);
        assert!(!map.set(0), "chunk 0 was already set");
        assert!(map.set(1), "chunk 1 was not");
        (2..11).for_each(|c| {
            map.set(c);
        });
        assert!(map.all_set());

        // Another chunk size, or data known to be new, starts from nothing.
        assert_eq!(
            ChunkMap::open(&path, &dir.path().join("tmp"), size, 131072, false)
                .unwrap()
                .count(),
            0
        );
        assert_eq!(read_bits(&path, size, 65536).unwrap(), None);
        let again = ChunkMap::open(&path, &dir.path().join("tmp"), size, 131072, false).unwrap();
        again.set(1);
        again.set(2);
        again.clear(1);
        assert_eq!(again.count(), 1);
        assert_eq!(
            ChunkMap::open(&path, &dir.path().join("tmp"), size, 131072, true)
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn a_claim_excludes_other_openers_of_the_map_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.map");
        // Two opens are two open file descriptions: they contend like two processes.
        let a = ChunkMap::open(&path, &dir.path().join("tmp"), 1 << 20, 65536, false).unwrap();
        let b = ChunkMap::open(&path, &dir.path().join("tmp"), 1 << 20, 65536, false).unwrap();
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
    fn dirty_flag_and_boot_id_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.map");
        let map = ChunkMap::open(&path, &dir.path().join("tmp"), 1 << 20, 65536, false).unwrap();
        assert_eq!(map.dirty_since(), None);
        map.mark_dirty([7; 16]).unwrap();
        map.set(3);
        drop(map);
        let map = ChunkMap::open(&path, &dir.path().join("tmp"), 1 << 20, 65536, false).unwrap();
        assert_eq!(map.dirty_since(), Some([7; 16]));
        assert!(map.is_set(3));
        map.mark_clean().unwrap();
        assert_eq!(map.dirty_since(), None);
    }
}
