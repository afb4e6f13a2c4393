//! How each open of an inode is served. The kernel keeps one I/O mode per
//! inode: while any open of it is served by modelfs (cached mode), it fails
//! a passthrough open with EIO, and the reverse; and all passthrough opens
//! of an inode must share one backing file. So a new open follows the opens
//! the inode already has, and only an inode nobody has open may change mode
//! (a file that completed while open stays served by modelfs until every
//! open of it is closed).

use std::collections::HashMap;
use std::sync::Arc;

/// How one open is served: by modelfs, or by the kernel from `B` (a
/// registered backing file).
pub enum Mode<B> {
    Cached,
    Passthrough(Arc<B>),
}

struct Inode<B> {
    cached: usize,
    passthrough: usize,
    /// Shared by the inode's passthrough opens; dropped with the last.
    backing: Option<Arc<B>>,
}

impl<B> Default for Inode<B> {
    fn default() -> Self {
        Inode {
            cached: 0,
            passthrough: 0,
            backing: None,
        }
    }
}

pub struct IoModes<B> {
    inodes: HashMap<u64, Inode<B>>,
    /// Open file handle → its inode, and whether it is passthrough.
    handles: HashMap<u64, (u64, bool)>,
}

impl<B> Default for IoModes<B> {
    fn default() -> Self {
        IoModes {
            inodes: HashMap::new(),
            handles: HashMap::new(),
        }
    }
}

impl<B> IoModes<B> {
    /// Decides how open `fh` of inode `ino` is served, and records it.
    /// `backing` registers the file for passthrough (`None` if it is not
    /// servable yet or passthrough is unavailable); it is only
    /// called when the inode has no open at all.
    pub fn open(&mut self, ino: u64, fh: u64, backing: impl FnOnce() -> Option<B>) -> Mode<B> {
        let inode = self.inodes.entry(ino).or_default();
        let mode = if inode.cached > 0 {
            Mode::Cached
        } else if let Some(b) = &inode.backing {
            Mode::Passthrough(Arc::clone(b))
        } else {
            backing().map_or(Mode::Cached, |b| Mode::Passthrough(Arc::new(b)))
        };
        let passthrough = match &mode {
            Mode::Cached => {
                inode.cached += 1;
                false
            }
            Mode::Passthrough(b) => {
                inode.passthrough += 1;
                inode.backing = Some(Arc::clone(b));
                true
            }
        };
        self.handles.insert(fh, (ino, passthrough));
        mode
    }

    /// Ends open `fh` (the inode's backing goes with its last passthrough
    /// open); returns its inode if it was the inode's last open and served
    /// by modelfs (the kernel may hold pages of it).
    pub fn release(&mut self, fh: u64) -> Option<u64> {
        let (ino, passthrough) = self.handles.remove(&fh)?;
        let inode = self.inodes.get_mut(&ino)?;
        if passthrough {
            inode.passthrough -= 1;
            if inode.passthrough == 0 {
                inode.backing = None;
            }
        } else {
            inode.cached -= 1;
        }
        if inode.cached == 0 && inode.passthrough == 0 {
            self.inodes.remove(&ino);
            return (!passthrough).then_some(ino);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_passthrough(mode: &Mode<u32>) -> Option<u32> {
        match mode {
            Mode::Cached => None,
            Mode::Passthrough(b) => Some(**b),
        }
    }

    #[test]
    fn a_new_open_follows_the_opens_the_inode_has() {
        let mut modes = IoModes::<u32>::default();
        // Open while partial: cached. The file completes; opens go on cached.
        assert!(is_passthrough(&modes.open(1, 10, || None)).is_none());
        assert!(
            is_passthrough(&modes.open(1, 11, || panic!("not asked while open cached"))).is_none()
        );
        // Another inode is independent.
        assert_eq!(is_passthrough(&modes.open(2, 20, || Some(7))), Some(7));
        modes.release(10);
        modes.release(11);
        // Nobody has inode 1 open: now passthrough, and later opens share its backing.
        assert_eq!(is_passthrough(&modes.open(1, 12, || Some(5))), Some(5));
        let Mode::Passthrough(shared) = modes.open(1, 13, || panic!("reuses the backing")) else {
            panic!("passthrough");
        };
        modes.release(12);
        assert_eq!(Arc::strong_count(&shared), 2, "held while an open uses it");
        modes.release(13);
        assert_eq!(Arc::strong_count(&shared), 1, "dropped with the last open");
        // Unknown handles are ignored.
        modes.release(99);
    }
}
