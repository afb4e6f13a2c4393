//! The FUSE adapter: each kernel request is a tracing span, one call into
//! [`ModelFs`], then a reply or an errno. Reads that miss the cache are
//! answered from a task on the runtime, so the request loop never waits on
//! the network.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, Notifier, OpenAccMode, OpenFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, WriteFlags,
};
use tracing::{Instrument, debug, debug_span, info, warn};

use super::io_modes::{IoModes, Mode};
use super::{Attr, Changes, FsError, ModelFs, NodeKind, ReadNow};
use crate::cache::watch::{Changed, Watcher};

/// A tree never changes, so the kernel may keep names and attributes a long
/// time and answer `ls -lR` itself. What a reload changes is pushed to it
/// ([`forget_changes`]), as is `st_blocks`, which moves as the cache
/// fills: a blob's files appearing or going ([`watch_cache`]).
const TTL: Duration = Duration::from_secs(24 * 3600);
/// A partial file's chunks verify in place, with no event to push: its
/// `st_blocks` is asked for again after this.
const CHANGING_TTL: Duration = Duration::from_secs(1);

const BLOCK_SIZE: u32 = 4096;
/// The `st_blksize` of files: stdio, Python's `open` and coreutils size
/// their buffers by it, so that small reads of a partial file (direct I/O,
/// a round trip each) arrive as one FUSE request's worth (1 MiB, 256 pages).
const IO_SIZE: u32 = 1 << 20;

pub struct FuseAdapter {
    core: Arc<ModelFs>,
    runtime: tokio::runtime::Handle,
    passthrough: bool,
    /// Partial files are opened with `FOPEN_DIRECT_IO` (see [`FuseAdapter::open`]).
    direct_partial: bool,
    /// How each open is served, per inode (see [`IoModes`]).
    modes: Arc<Mutex<IoModes<BackingId>>>,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
    /// Set once the session exists (see [`FuseAdapter::notifier_slot`]).
    notifier: Arc<OnceLock<Notifier>>,
    /// Whether changes to the cache are being pushed ([`watch_cache`]);
    /// without that, files' attributes live only [`CHANGING_TTL`].
    watching: Arc<AtomicBool>,
    /// The kernel opens directories itself when `opendir` is ENOSYS
    /// (`FUSE_NO_OPENDIR_SUPPORT`, Linux 5.1+); older ones fail the open.
    no_opendir: bool,
}

impl FuseAdapter {
    pub fn new(core: Arc<ModelFs>, runtime: tokio::runtime::Handle, mtime: SystemTime) -> Self {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        FuseAdapter {
            core,
            runtime,
            passthrough: false,
            direct_partial: false,
            modes: Arc::default(),
            uid,
            gid,
            mtime,
            notifier: Arc::default(),
            watching: Arc::default(),
            no_opendir: false,
        }
    }

    /// Where [`watch_cache`] says whether it is pushing changes.
    pub fn watching_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.watching)
    }

    fn attr_ttl(&self, a: &Attr) -> &'static Duration {
        let unwatched = a.kind == NodeKind::File && !self.watching.load(Ordering::Acquire);
        if a.changing || unwatched {
            &CHANGING_TTL
        } else {
            &TTL
        }
    }

    /// Where the mount puts the session's notifier, which exists only once
    /// the adapter is handed to the session.
    pub fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        Arc::clone(&self.notifier)
    }

    fn attr(&self, a: &Attr) -> FileAttr {
        let (kind, perm, nlink) = match a.kind {
            NodeKind::Dir => (FileType::Directory, 0o555, 2),
            NodeKind::File => (FileType::RegularFile, 0o444, 1),
            NodeKind::Symlink => (FileType::Symlink, 0o777, 1),
        };
        FileAttr {
            ino: INodeNo(a.ino),
            size: a.size,
            // `du` shows what is local.
            blocks: a.cached.div_ceil(512),
            atime: self.mtime,
            mtime: self.mtime,
            ctime: self.mtime,
            crtime: self.mtime,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: IO_SIZE,
            flags: 0,
        }
    }
}

/// Tells the kernel, as it happens, which files' `st_blocks` changed: a
/// blob's files appearing (a fetch began, a file completed) or going (an
/// eviction), by this process or any other sharing the cache. A thread of
/// its own, blocked on inotify; it ends with the mount.
pub fn watch_cache(
    core: Arc<ModelFs>,
    notifier: Notifier,
    cache_root: &Path,
    watching: Arc<AtomicBool>,
) -> io::Result<()> {
    let mut watcher = Watcher::new(cache_root)?;
    watching.store(true, Ordering::Release);
    let watch = {
        let watching = Arc::clone(&watching);
        move || {
            push_changes(&mut watcher, &core, &notifier);
            // Attributes go back to short lives once nothing pushes.
            watching.store(false, Ordering::Release);
        }
    };
    let spawned = std::thread::Builder::new()
        .name("modelfs-watch".into())
        .spawn(watch);
    if spawned.is_err() {
        watching.store(false, Ordering::Release);
    }
    spawned.map(drop)
}

/// Until the watch fails or the mount is gone.
fn push_changes(watcher: &mut Watcher, core: &ModelFs, notifier: &Notifier) {
    loop {
        let inodes: Vec<u64> = match watcher.wait() {
            Ok(Changed::Blobs(digests)) => digests.iter().flat_map(|d| core.inodes_of(d)).collect(),
            Ok(Changed::Anything) => core.file_inodes(),
            Err(e) => {
                warn!(error = %e, "cannot watch the cache any longer: `du` may lag a second");
                return;
            }
        };
        for ino in inodes {
            // Offset -1: attributes only. Pages stay: bytes never change.
            match notifier.inval_inode(INodeNo(ino), -1, 0) {
                // ENOENT: an inode the kernel does not hold; nothing to drop.
                Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                    debug!(ino, error = %e, "cannot push new attributes; unmounted?");
                    return;
                }
                _ => {}
            }
        }
    }
}

/// Tells the kernel what a reload changed: each name added, removed or
/// now naming another inode leaves its dentry cache (a name absent before
/// was remembered absent for a day), and each directory with such a name
/// its kept listing. Never from a FUSE request: a notification waits for
/// the directory's lock, which the request may hold.
pub fn forget_changes(notifier: &Notifier, changes: &Changes) {
    let mut failed = None;
    let mut note = |told: io::Result<()>| match told {
        // ENOENT: the kernel holds nothing of it; nothing to forget.
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
            failed.get_or_insert(e);
        }
        _ => {}
    };
    for (dir, name) in &changes.entries {
        note(notifier.inval_entry(INodeNo(*dir), OsStr::new(name)));
    }
    // Listings are dropped without the directory's lock: one read from the
    // catalog before and answered just after would be kept. Once more,
    // after any such answer.
    for pass in 0..2 {
        if pass > 0 && !changes.dirs.is_empty() {
            std::thread::sleep(LISTINGS_AGAIN_AFTER);
        }
        for &dir in &changes.dirs {
            note(notifier.inval_inode(INodeNo(dir), 0, 0));
        }
    }
    if let Some(e) = failed {
        warn!(error = %e, "cannot tell the kernel all a reload changed; it may show some of the old catalog for a while");
    }
}

/// Longer than a listing's reply takes to go out once it is made.
const LISTINGS_AGAIN_AFTER: Duration = Duration::from_millis(20);

/// Opens a servable file (complete, or every chunk verified) as a kernel
/// passthrough: reads then bypass us.
fn try_passthrough(fh: u64, file: &std::fs::File, reply: &ReplyOpen) -> Option<BackingId> {
    match reply.open_backing(file) {
        Ok(id) => Some(id),
        Err(e) => {
            debug!(fh, error = %e, "passthrough unavailable; serving reads ourselves");
            None
        }
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

fn name_str(name: &OsStr) -> Result<&str, FsError> {
    // Every name in the tree is UTF-8 (the manifest is TOML): others cannot exist.
    name.to_str().ok_or(FsError::NotFound)
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        self.passthrough = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        self.no_opendir = config
            .capabilities()
            .contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        // Listings with attributes, and symlink targets kept (`--layout hf`).
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_CACHE_SYMLINKS,
        ] {
            if let Err(e) = config.add_capabilities(flag) {
                debug!(?e, "the kernel lacks a capability");
            }
        }
        // Without it the kernel refuses a shared mmap of a direct-I/O file
        // (ENODEV), and loaders map their files.
        self.direct_partial = config
            .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_ok();
        info!(
            passthrough = self.passthrough,
            direct_partial = self.direct_partial,
            "mounted"
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.core.metrics().fuse_op("lookup");
        let _span = debug_span!("lookup", parent = parent.0, ?name).entered();
        match name_str(name).and_then(|n| self.core.lookup(parent.0, n)) {
            Ok(a) => reply.entry_with_ttls(self.attr_ttl(&a), &TTL, &self.attr(&a), Generation(0)),
            // A name absent now stays absent until a reload, which says
            // otherwise: inode 0 makes the kernel remember that (loaders
            // probe for many optional files).
            Err(FsError::NotFound) => {
                let absent = Attr {
                    ino: 0,
                    kind: NodeKind::File,
                    size: 0,
                    cached: 0,
                    changing: false,
                };
                reply.entry_with_ttls(&TTL, &TTL, &self.attr(&absent), Generation(0));
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.core.metrics().fuse_op("getattr");
        let _span = debug_span!("getattr", ino = ino.0).entered();
        match self.core.getattr(ino.0) {
            Ok(a) => reply.attr(self.attr_ttl(&a), &self.attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.core.metrics().fuse_op("readdir");
        let _span = debug_span!("readdir", ino = ino.0, offset).entered();
        let listed = self.core.readdir(ino.0, offset, false, |e, _, next| {
            let kind = match e.kind {
                NodeKind::Dir => FileType::Directory,
                NodeKind::File => FileType::RegularFile,
                NodeKind::Symlink => FileType::Symlink,
            };
            reply.add(INodeNo(e.ino), next, kind, e.name)
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// Names with their attributes, so that `ls -l` needs no lookup of
    /// each entry.
    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.core.metrics().fuse_op("readdirplus");
        let _span = debug_span!("readdirplus", ino = ino.0, offset).entered();
        let listed = self.core.readdir(ino.0, offset, true, |e, a, next| {
            let a = a.expect("attributes asked for");
            let (ino, attr) = (INodeNo(e.ino), self.attr(&a));
            reply.add(ino, next, e.name, self.attr_ttl(&a), &attr, Generation(0))
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// No opens of directories at all: after this ENOSYS the kernel opens
    /// them itself, keeping the listings it read (`FOPEN_CACHE_DIR`, as
    /// only a reload changes them, and says so), so a listing read once costs
    /// no round trip again, not even an open. Older kernels get the flags.
    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.no_opendir {
            return reply.error(Errno::ENOSYS);
        }
        reply.opened(
            FileHandle(0),
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.core.metrics().fuse_op("readlink");
        let _span = debug_span!("readlink", ino = ino.0).entered();
        match self.core.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// Opening may wait: on another process's lock of the blob directory,
    /// on creating a chunk map, on re-verifying after an unclean shutdown.
    /// So it runs on the blocking pool, and `ls` or reads of cached files
    /// never queue behind it.
    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.core.metrics().fuse_op("open");
        let span = debug_span!("open", ino = ino.0);
        let write = flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        // A file the tree holds itself (refs/main): no cache to open.
        if !write && let Some(fh) = self.core.open_text(ino.0) {
            reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
            return;
        }
        let (core, modes) = (Arc::clone(&self.core), Arc::clone(&self.modes));
        let (passthrough, direct_partial) = (self.passthrough, self.direct_partial);
        self.runtime.spawn_blocking(move || {
            let _span = span.entered();
            match core.open(ino.0, write) {
                Ok((fh, handle)) => {
                    let mut modes = modes.lock().unwrap_or_else(|p| p.into_inner());
                    // Decided and answered under the lock, so that two opens
                    // of one inode cannot pick different modes.
                    let mode = modes.open(ino.0, fh, || {
                        let file = handle.blob().servable_file().filter(|_| passthrough)?;
                        try_passthrough(fh, &file, &reply)
                    });
                    match mode {
                        Mode::Passthrough(id) => {
                            // No FOPEN_KEEP_CACHE here: the kernel fails a passthrough
                            // open that also asks for it (EIO, measured on 6.18).
                            reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
                            core.metrics().opened("passthrough");
                        }
                        Mode::Cached if handle.blob().is_complete() => {
                            core.metrics().opened("complete");
                            // Verified content never changes: the kernel may keep its pages.
                            reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
                        }
                        Mode::Cached => {
                            core.metrics().opened("partial");
                            // Reads of a partial file go straight into the reader's
                            // buffer: one copy less than through the kernel's pages
                            // (a cold 1 MiB-block read is about a fifth faster), the
                            // bytes are not held twice in memory beside the cache
                            // file's, and no pages are left for the kernel to drop
                            // before the file's next open, passthrough (60 ms a GiB,
                            // inside that open). Maps still go through pages, which
                            // other opens must not drop: the bytes never change.
                            let flags = if direct_partial {
                                FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_KEEP_CACHE
                            } else {
                                FopenFlags::FOPEN_KEEP_CACHE
                            };
                            reply.opened(FileHandle(fh), flags);
                        }
                    }
                }
                // A refusal was said once, when its model's signature was judged.
                Err(e @ FsError::Refused(_)) => {
                    debug!(error = %e, "open refused");
                    reply.error(errno(&e));
                }
                Err(e) => {
                    warn!(error = %e, "open failed");
                    reply.error(errno(&e));
                }
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.core.metrics().fuse_op("read");
        let span = debug_span!("read", ino = ino.0, fh = fh.0, offset, size);
        let now = span.in_scope(|| self.core.read_now(fh.0, offset, size));
        match now {
            Ok(ReadNow::Data(data)) => reply.data(&data),
            Ok(ReadNow::Fetch(handle)) => {
                let core = Arc::clone(&self.core);
                self.runtime.spawn(
                    async move {
                        match core.read_fetch(&handle, offset, size).await {
                            Ok(data) => reply.data(&data),
                            Err(e) => {
                                warn!(error = %e, "read failed");
                                reply.error(errno(&e));
                            }
                        }
                    }
                    .instrument(span),
                );
            }
            // Not a file's handle: a text's (refs/main), looked for only
            // then, off the path of every other read.
            Err(FsError::BadHandle) if let Some(text) = self.core.read_text(fh.0, offset, size) => {
                reply.data(&text)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.core.metrics().fuse_op("release");
        let _span = debug_span!("release", fh = fh.0).entered();
        let last_cached = self
            .modes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release(fh.0);
        let servable = self.core.release(fh.0);
        reply.ok();
        // Its next open will be passthrough, and the kernel must drop the
        // pages it keeps of the inode first (about 60 ms a GiB): drop them
        // now, in the background, rather than in that open (and not keep
        // the bytes twice in memory meanwhile).
        if let (Some(ino), true, true, Some(notifier)) =
            (last_cached, servable, self.passthrough, self.notifier.get())
        {
            let notifier = notifier.clone();
            self.runtime.spawn_blocking(move || {
                if let Err(e) = notifier.inval_inode(INodeNo(ino), 0, 0) {
                    debug!(ino, error = %e, "cannot drop the kernel's pages of a file");
                }
            });
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.core.metrics().fuse_op("statfs");
        let (bytes, files, inodes) = self.core.totals();
        let blocks = bytes.div_ceil(BLOCK_SIZE as u64);
        reply.statfs(blocks, 0, 0, files + inodes, 0, BLOCK_SIZE, 255, BLOCK_SIZE);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.core.metrics().fuse_op("getxattr");
        let _span = debug_span!("getxattr", ino = ino.0, ?name).entered();
        // Only `user.` names exist here. The others (`ls -l` asks for
        // `security.selinux` of every entry) are not supported, which `ls`
        // and others remember for the whole file system and stop asking.
        if !name.as_encoded_bytes().starts_with(b"user.") {
            return reply.error(Errno::from_i32(libc::EOPNOTSUPP));
        }
        match name_str(name).and_then(|n| self.core.getxattr(ino.0, n)) {
            Ok(value) => reply_xattr(reply, &value, size),
            Err(FsError::NotFound) => reply.error(Errno::ENODATA),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.core.metrics().fuse_op("listxattr");
        let _span = debug_span!("listxattr", ino = ino.0).entered();
        match self.core.listxattr(ino.0) {
            Ok(names) => reply_xattr(reply, &names, size),
            Err(e) => reply.error(errno(&e)),
        }
    }

    // Everything that would change the tree: the tree is read-only.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }
}

/// The xattr protocol: size 0 asks for the length; too small a buffer is ERANGE.
fn reply_xattr(reply: ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if (size as usize) < value.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}
