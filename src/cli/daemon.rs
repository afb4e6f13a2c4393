//! `--daemon`: fork before any thread exists, let the parent wait until the
//! child says the mount is ready (or why it failed), then return.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The child's end of the readiness pipe.
pub struct Ready(File);

impl Ready {
    pub fn ok(mut self) {
        let _ = self.0.write_all(&[0]);
    }

    pub fn fail(mut self, message: &str) {
        let _ = self.0.write_all(message.as_bytes());
    }
}

/// Forks. In the parent this never returns: it exits 0 once the child is
/// ready, or 1 with the child's error. In the child it returns the pipe to
/// report readiness on, with stdio moved to `log` (appended).
///
/// Must be called while the process has a single thread.
pub fn daemonize(log: &Path) -> io::Result<Ready> {
    // Never through a symlink: the default log lives in the cache dir.
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(log)?;
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned here alone.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the caller guarantees a single-threaded process.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            drop(read_end);
            // SAFETY: plain syscalls on fds we own; setsid detaches from the terminal.
            unsafe {
                libc::setsid();
                let null = File::open("/dev/null")?;
                libc::dup2(null.as_raw_fd(), 0);
                libc::dup2(log.as_raw_fd(), 1);
                libc::dup2(log.as_raw_fd(), 2);
            }
            Ok(Ready(File::from(write_end)))
        }
        child => {
            drop(write_end);
            let mut answer = Vec::new();
            let _ = File::from(read_end).read_to_end(&mut answer);
            match answer.first() {
                Some(0) => std::process::exit(0),
                Some(_) => eprintln!("modelfs: {}", String::from_utf8_lossy(&answer)),
                None => eprintln!(
                    "modelfs: the mount process ({child}) exited before the mount was ready"
                ),
            }
            std::process::exit(1)
        }
    }
}
