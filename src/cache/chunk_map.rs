//! A persistent bitmap of verified chunks, one bit per chunk, shared through
//! `mmap` so every process using the cache sees a bit the moment it is set.
//!
//! File format (little-endian): `b"MFSCMAP\x01"`, `chunk_size: u64`,
//! `size: u64`, 8 reserved bytes, then `ceil(chunks / 8)` bitmap bytes,
//! chunk `i` at bit `i % 8` of byte `i / 8`. A bit is set only after its
//! chunk's bytes were verified and written (see [`super::Blob::mark_verified`]).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};

use memmap2::MmapMut;

const MAGIC: [u8; 8] = *b"MFSCMAP\x01";
const HEADER_LEN: usize = 32;

pub struct ChunkMap {
    mmap: MmapMut,
    chunks: u64,
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
    /// is new. Creation goes through a temporary file and an atomic rename, so
    /// no process ever maps a half-written header.
    pub fn open(path: &Path, size: u64, chunk_size: u64, fresh: bool) -> io::Result<ChunkMap> {
        let want_len = file_len(size, chunk_size);
        if !fresh && let Ok(file) = OpenOptions::new().read(true).write(true).open(path) {
            if file.metadata()?.len() == want_len {
                // SAFETY: see below.
                let mmap = unsafe { MmapMut::map_mut(&file)? };
                if mmap[..HEADER_LEN] == header(size, chunk_size) {
                    return Ok(ChunkMap {
                        mmap,
                        chunks: size.div_ceil(chunk_size),
                    });
                }
            }
            tracing::warn!(path = %path.display(), "chunk map does not match this file; starting it afresh");
        }
        let tmp = path.with_extension(format!("map.tmp{}", std::process::id()));
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&header(size, chunk_size))?;
            f.set_len(want_len)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        // SAFETY: the mapping is only accessed through atomics (bits) or
        // read-only (header), so concurrent writers in other processes cannot
        // produce torn values; the file's length is fixed once created.
        let mmap = unsafe { MmapMut::map_mut(&file)? };
        Ok(ChunkMap {
            mmap,
            chunks: size.div_ceil(chunk_size),
        })
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

    pub fn set(&self, chunk: u64) {
        self.byte(chunk)
            .fetch_or(1 << (chunk % 8), Ordering::Release);
    }

    pub fn count(&self) -> u64 {
        (0..self.chunks).filter(|&c| self.is_set(c)).count() as u64
    }

    pub fn all_set(&self) -> bool {
        (0..self.chunks).all(|c| self.is_set(c))
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
        || bytes[..HEADER_LEN] != header(size, chunk_size)
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
            let map = ChunkMap::open(&path, size, 65536, false).unwrap();
            assert_eq!(map.count(), 0);
            map.set(0);
            map.set(10);
            assert!(map.is_set(10) && !map.is_set(9));
        }
        let map = ChunkMap::open(&path, size, 65536, false).unwrap();
        assert_eq!(map.count(), 2);
        let bits = read_bits(&path, size, 65536).unwrap().unwrap();
        assert_eq!(bits.iter().filter(|b| **b).count(), 2);
        (0..11).for_each(|c| map.set(c));
        assert!(map.all_set());

        // Another chunk size, or data known to be new, starts from nothing.
        assert_eq!(
            ChunkMap::open(&path, size, 131072, false).unwrap().count(),
            0
        );
        assert_eq!(read_bits(&path, size, 65536).unwrap(), None);
        let again = ChunkMap::open(&path, size, 131072, false).unwrap();
        again.set(1);
        assert_eq!(
            ChunkMap::open(&path, size, 131072, true).unwrap().count(),
            0
        );
    }
}
