//! How the cache touches its directory. modelfs often runs as root, and a
//! cache dir may be shared, so nothing in it is trusted to be what its name
//! says: files are opened without following symlinks, new files are created
//! exclusively, and the directories that paths go through must be real
//! directories that only their owner can change.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// A cache file that is not what it must be: a symlink, a hard link, a
/// directory where a file belongs, a directory others may write to.
pub fn refused(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "refusing {} in the cache: {why}; modelfs never follows links in its cache \
             nor uses what others can change (remove it, or use another --cache-dir)",
            path.display()
        ),
    )
}

/// Names the path in errors from opening it; a symlink gets a clear refusal.
fn opened(path: &Path, result: io::Result<File>) -> io::Result<File> {
    result.map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => refused(path, "it is a symbolic link"),
        _ => e,
    })
}

fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true).custom_flags(libc::O_NOFOLLOW);
    o
}

/// Opens an existing file for reading, never through a symlink.
pub fn open_ro(path: &Path) -> io::Result<File> {
    opened(path, options().open(path))
}

/// Opens an existing file for reading and writing, never through a symlink.
pub fn open_rw(path: &Path) -> io::Result<File> {
    opened(path, options().write(true).open(path))
}

/// Creates a new file; fails if anything, a symlink included, has the name.
pub fn create_new(path: &Path) -> io::Result<File> {
    opened(
        path,
        options()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(path),
    )
}

/// Opens or creates a file for reading and writing, never through a symlink.
pub fn open_or_create(path: &Path) -> io::Result<File> {
    opened(
        path,
        options()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path),
    )
}

pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    open_ro(path)?.read_to_end(&mut out)?;
    Ok(out)
}

/// `file`, opened from `path`, must be a regular file.
pub fn check_regular(path: &Path, file: &File) -> io::Result<fs::Metadata> {
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(refused(path, "it is not a regular file"));
    }
    Ok(meta)
}

/// A file modelfs writes to must also have no other name: a hard link
/// planted in the cache would have it write to the file the link names.
pub fn check_writable(path: &Path, file: &File) -> io::Result<fs::Metadata> {
    let meta = check_regular(path, file)?;
    if meta.nlink() > 1 {
        return Err(refused(path, "it has other hard links"));
    }
    Ok(meta)
}

/// Makes sure `dir` is a directory that only its owner (this user, or
/// root) can change, creating it (and missing parents) if needed.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    match DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            DirBuilder::new().mode(0o755).recursive(true).create(dir)?
        }
        Err(e) => return Err(e),
    }
    check_dir(dir)
}

/// `dir` must be a real directory (not a symlink), owned by this user or
/// root, and not writable by group or others.
pub fn check_dir(dir: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    if meta.is_symlink() {
        return Err(refused(dir, "it is a symbolic link"));
    }
    if !meta.is_dir() {
        return Err(refused(dir, "it is not a directory"));
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && meta.uid() != 0 {
        return Err(refused(
            dir,
            &format!("it belongs to user {}, not to this one", meta.uid()),
        ));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(refused(
            dir,
            &format!(
                "other users may write to it (mode {:o}; `chmod go-w` it if it is yours)",
                meta.permissions().mode() & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Whether some process holds an `flock` on the file at `path`: a blob in
/// use, a download in progress, a live mount's record. The lock goes with
/// its holder, so unlike a pid it cannot outlive it or be reused. Nothing
/// holds a symlink planted in the cache.
pub fn is_locked(path: &Path) -> io::Result<bool> {
    let file = match open_ro(path) {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
            ) =>
        {
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    match file.try_lock() {
        Ok(()) => Ok(false),
        Err(fs::TryLockError::WouldBlock) => Ok(true),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Removes `path` if it is there: a file or symlink itself, a directory with
/// its contents, never what a symlink points to.
pub fn remove(path: &Path) -> io::Result<()> {
    let gone = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match gone {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_hard_links_and_shared_dirs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, b"precious").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        for e in [
            open_rw(&link).unwrap_err(),
            open_ro(&link).unwrap_err(),
            open_or_create(&link).unwrap_err(),
        ] {
            assert!(e.to_string().contains("symbolic link"), "{e}");
        }
        // A new file's name must be free: a symlink there is not followed.
        assert_eq!(
            create_new(&link).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        let hard = dir.path().join("hard");
        fs::hard_link(&outside, &hard).unwrap();
        let f = open_rw(&hard).unwrap();
        assert!(check_writable(&hard, &f).is_err());
        assert!(check_regular(&hard, &f).is_ok());

        let sub = dir.path().join("a/b");
        ensure_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(ensure_dir(&sub).unwrap_err().to_string().contains("chmod"));
        let dlink = dir.path().join("dlink");
        std::os::unix::fs::symlink(dir.path().join("a"), &dlink).unwrap();
        assert!(check_dir(&dlink).is_err());
        remove(&dlink).unwrap();
        assert!(sub.exists(), "removing a symlink leaves its target");
        assert_eq!(fs::read(&outside).unwrap(), b"precious");
    }
}
