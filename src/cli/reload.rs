//! `modelfs reload MOUNTPOINT`: has a mount read its manifest again, and
//! says what came of it. The mount's root names the process serving it
//! (the `user.modelfs.catalog` attribute); that process gets SIGHUP, and
//! the command waits until no reload of it is pending.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::UsageError;
use crate::fileio::process_started;
use crate::fs::XATTR_CATALOG;
use crate::metrics::Catalog;

/// Returns the exit code: 1 if the manifest could not be used.
pub fn reload(mountpoint: &Path, timeout: Duration) -> anyhow::Result<i32> {
    let abs = super::mount::ours(mountpoint)?;
    let before = catalog_of(&abs)?;
    // The pid is the one the mount's own PID namespace gave; here it may
    // be another process's, or none.
    if before.started.is_none() || process_started(before.pid) != before.started {
        return Err(UsageError(format!(
            "the process serving {} (pid {} where it runs) is not visible from here, as in \
             another PID namespace: send SIGHUP to it where it runs",
            abs.display(),
            before.pid
        ))
        .into());
    }
    // SAFETY: kill has no memory effects; the pid was checked just above.
    if unsafe { libc::kill(before.pid as libc::pid_t, libc::SIGHUP) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot signal the mount's process (pid {})", before.pid));
    }
    // Ours is done once the reloads pending before it, and it, are: the
    // mount counts each as pending the moment it is asked for.
    let ours = before.reloads + before.reloads_pending + 1;
    let deadline = Instant::now() + timeout;
    let after = loop {
        let now = catalog_of(&abs)?;
        if now.reloads >= ours && now.reloads_pending == 0 {
            break now;
        }
        if Instant::now() > deadline {
            bail!(
                "{} has not finished reloading after {}s; its log says why (see --timeout)",
                abs.display(),
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let models = format!("{} models from {}", after.models, after.source);
    if let Some(error) = &after.error {
        eprintln!("error: {error}");
        eprintln!(
            "{} still serves generation {}: {models}",
            abs.display(),
            after.generation
        );
        return Ok(1);
    }
    match after.generation == before.generation {
        true => println!("unchanged: generation {}, {models}", after.generation),
        false => println!("reloaded: generation {}, {models}", after.generation),
    }
    Ok(0)
}

/// The catalog a mount at `mountpoint` serves, from its root's attribute.
fn catalog_of(mountpoint: &Path) -> anyhow::Result<Catalog> {
    let value = getxattr(mountpoint, XATTR_CATALOG)
        .with_context(|| format!("cannot ask {} for its catalog", mountpoint.display()))?
        .with_context(|| {
            format!(
                "{} does not say which catalog it serves: a modelfs from before `reload` existed?",
                mountpoint.display()
            )
        })?;
    serde_json::from_slice(&value).context("the mount's catalog attribute is not what it should be")
}

/// The extended attribute `name` of `path`, if it has it.
fn getxattr(path: &Path, name: &str) -> std::io::Result<Option<Vec<u8>>> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let name = std::ffi::CString::new(name)?;
    // The value may grow between asking its size and reading it: a few tries.
    for _ in 0..4 {
        // SAFETY: valid C strings; a null buffer of size 0 asks for the size.
        let size = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENODATA) => Ok(None),
                _ => Err(e),
            };
        }
        let mut value = vec![0u8; size as usize + 256];
        // SAFETY: the buffer holds `value.len()` bytes.
        let got = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if got >= 0 {
            value.truncate(got as usize);
            return Ok(Some(value));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
    Err(std::io::Error::other("the attribute keeps growing"))
}
