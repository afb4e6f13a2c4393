//! File I/O shared by the cache and the sources: positional reads that fill
//! their buffer, and blocking work moved off the async workers.

use std::fs::File;
use std::io;
use std::path::Path;

/// Appends up to `len` bytes of `file` at `offset` to `out`, read straight
/// into its spare capacity; returns how many (fewer once the file ends).
/// Reads serve every byte of a cold file, which is CPU-bound on two
/// cores: zeroing a buffer only to overwrite it was 5% of that CPU.
/// Every positional read here goes through it.
pub fn append_at(file: &File, out: &mut Vec<u8>, len: usize, offset: u64) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    out.reserve(len);
    let mut done = 0;
    while done < len {
        let at = libc::off_t::try_from(offset + done as u64)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let spare = &mut out.spare_capacity_mut()[..len - done];
        // SAFETY: pread writes at most `spare.len()` bytes into `spare`,
        // memory `out` owns and nothing else refers to.
        let n =
            unsafe { libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), at) };
        match n {
            0 => break,
            1.. => {
                // SAFETY: pread initialized the `n` bytes after the vector's
                // length, within its capacity.
                unsafe { out.set_len(out.len() + n as usize) };
                done += n as usize;
            }
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(done)
}

/// Runs blocking file work on tokio's blocking pool; a panic in it becomes an error.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// `statvfs(2)` of the file system holding `path`. On a FUSE mount it always
/// reaches the server, so it also tells a live mount from a dead one.
pub fn statvfs(path: &std::path::Path) -> io::Result<libc::statvfs> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a valid C string and a buffer of the right type.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs filled it when it returned 0.
    Ok(unsafe { st.assume_init() })
}

/// When process `pid` started, in clock ticks since boot (`/proc/PID/stat`,
/// field 22): with the pid, it names one process whatever reused the pid
/// since, in any PID namespace of this kernel.
pub fn process_started(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Writes `bytes` to `path` whole and durably: a new file beside it,
/// synced, renamed over the old; its directory made if need be.
pub fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().expect("a file lives in a directory");
    crate::cache::files::ensure_dir(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let written = (|| {
        let mut file = File::create(&tmp)?;
        io::Write::write_all(&mut file, bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_process_is_known_by_its_start() {
        let me = process_started(std::process::id()).unwrap();
        assert_eq!(process_started(std::process::id()), Some(me));
        assert!(process_started(1).is_some_and(|init| init <= me));
    }

    #[test]
    fn append_at_adds_what_is_there_after_what_was_kept() {
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        file.write_all(&data).unwrap();
        let mut out = b"kept".to_vec();
        assert_eq!(append_at(&file, &mut out, 3000, 1234).unwrap(), 3000);
        assert_eq!(&out[..4], b"kept");
        assert_eq!(&out[4..], &data[1234..4234]);
        // The file ends first: only what it has.
        assert_eq!(append_at(&file, &mut out, 500, 9800).unwrap(), 200);
        assert_eq!(&out[3004..], &data[9800..]);
        assert_eq!(append_at(&file, &mut out, 10, 20_000).unwrap(), 0);
        assert_eq!(out.len(), 3204);
    }
}
