//! What happens to the cache's blobs, whoever does it: this process, another
//! mount, a `prefetch`, an eviction. inotify on `blobs/` and its
//! subdirectories reports a blob's files appearing, being renamed and going
//! away, so a mount can tell the kernel which files' `st_blocks` changed
//! instead of having it ask again every second.
//!
//! Chunks verified in place (bits set in a mapped chunk map) make no event:
//! a partial file's size on disk is left to a short attribute lifetime.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::hash::Digest;

/// What changed since the last [`Watcher::wait`].
#[derive(Debug, PartialEq, Eq)]
pub enum Changed {
    /// Blobs, by content, whose files appeared, moved or went.
    Blobs(Vec<Digest>),
    /// Events were lost (the kernel's queue overflowed): anything may have.
    Anything,
}

pub struct Watcher {
    fd: OwnedFd,
    blobs: PathBuf,
    /// The watch on `blobs/` itself, which reports new subdirectories.
    top: i32,
}

const DIR_EVENTS: u32 = libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_ONLYDIR;
const BLOB_EVENTS: u32 =
    libc::IN_CREATE | libc::IN_MOVED_TO | libc::IN_MOVED_FROM | libc::IN_DELETE | libc::IN_ONLYDIR;

impl Watcher {
    /// Watches `cache_root/blobs` and every subdirectory it has now or gets.
    pub fn new(cache_root: &Path) -> io::Result<Watcher> {
        // SAFETY: no pointers; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let blobs = cache_root.join("blobs");
        let mut watcher = Watcher {
            top: add_watch(&fd, &blobs, DIR_EVENTS)?,
            fd,
            blobs,
        };
        watcher.watch_all()?;
        Ok(watcher)
    }

    /// Watches every subdirectory of `blobs/` (again: a second watch of a
    /// directory is the first one).
    fn watch_all(&mut self) -> io::Result<()> {
        for dir in fs::read_dir(&self.blobs)? {
            self.watch_dir(&dir?.file_name())?;
        }
        Ok(())
    }

    /// Blocks until something changes.
    pub fn wait(&mut self) -> io::Result<Changed> {
        // inotify_event needs 4-byte alignment.
        let mut buf = vec![0u32; 16 << 10];
        let n = loop {
            // SAFETY: `buf` is valid for writes of its length in bytes.
            let n =
                unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len() * 4) };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        // SAFETY: the first `n` bytes were written by the kernel.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
        let mut changed = HashSet::new();
        let mut at = 0;
        let header = std::mem::size_of::<libc::inotify_event>();
        while at + header <= n {
            // SAFETY: the kernel writes whole events, each aligned to 4 bytes.
            let event = unsafe { &*bytes.as_ptr().add(at).cast::<libc::inotify_event>() };
            let name = &bytes[at + header..at + header + event.len as usize];
            let name = OsStr::from_bytes(name.split(|&b| b == 0).next().unwrap_or_default());
            at += header + event.len as usize;
            if event.mask & libc::IN_Q_OVERFLOW != 0 {
                // Lost events may have been of a new blobs/ab/.
                self.watch_all()?;
                return Ok(Changed::Anything);
            }
            if event.wd == self.top {
                if event.mask & libc::IN_ISDIR != 0 {
                    // A new blobs/ab/: watched now, and what it already holds counts as new.
                    self.watch_dir(name)?;
                    let held = fs::read_dir(self.blobs.join(name)).into_iter().flatten();
                    changed.extend(held.flatten().filter_map(|e| digest_of(&e.file_name())));
                }
            } else {
                changed.extend(digest_of(name));
            }
        }
        Ok(Changed::Blobs(changed.into_iter().collect()))
    }

    fn watch_dir(&mut self, name: &OsStr) -> io::Result<()> {
        match add_watch(&self.fd, &self.blobs.join(name), BLOB_EVENTS) {
            // Not a directory, or gone already: nothing to watch.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ENOENT)) => Ok(()),
            other => other.map(drop),
        }
    }
}

fn add_watch(fd: &OwnedFd, dir: &Path, mask: u32) -> io::Result<i32> {
    let path = CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: `path` is a valid C string for the duration of the call.
    let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
    if wd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(wd)
}

/// The blob a file in `blobs/ab/` belongs to: its name starts with the
/// digest's 64 hex digits (`<sha256>`, `<sha256>.<layout>.partial`, ...).
fn digest_of(name: &OsStr) -> Option<Digest> {
    let hex = name.as_bytes().get(..64)?;
    Digest::from_hex(std::str::from_utf8(hex).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Digests reported until `want` is among them.
    fn until(watcher: &mut Watcher, want: Digest) -> HashSet<Digest> {
        let mut seen = HashSet::new();
        while !seen.contains(&want) {
            match watcher.wait().unwrap() {
                Changed::Blobs(d) => seen.extend(d),
                Changed::Anything => panic!("no overflow here"),
            }
        }
        seen
    }

    #[test]
    fn reports_the_blobs_whose_files_come_and_go() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs");
        fs::create_dir_all(blobs.join("ab")).unwrap();
        let mut watcher = Watcher::new(dir.path()).unwrap();
        let (a, c) = (Digest([0xab; 32]), Digest([0xcd; 32]));
        let partial = blobs
            .join("ab")
            .join(format!("{}.0123.partial", a.to_hex()));
        let complete = blobs.join("ab").join(a.to_hex());
        fs::write(&partial, b"x").unwrap();
        assert_eq!(until(&mut watcher, a), HashSet::from([a]));
        fs::rename(&partial, &complete).unwrap();
        assert_eq!(until(&mut watcher, a), HashSet::from([a]));
        // A subdirectory made after the watch began is watched too, and
        // what it holds by then counts.
        fs::create_dir(blobs.join("cd")).unwrap();
        fs::write(blobs.join("cd").join(c.to_hex()), b"y").unwrap();
        until(&mut watcher, c);
        fs::remove_file(blobs.join("cd").join(c.to_hex())).unwrap();
        until(&mut watcher, c);
        // Names that are no blob's are ignored.
        fs::write(blobs.join("ab").join("stray"), b"z").unwrap();
        fs::remove_file(&complete).unwrap();
        let seen = until(&mut watcher, a);
        assert!(seen.iter().all(|d| [a, c].contains(d)), "{seen:?}");
    }
}
