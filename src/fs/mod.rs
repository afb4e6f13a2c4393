//! The filesystem core: answers lookups, attributes, directory listings and
//! reads in its own types, with no knowledge of the FUSE wire protocol (that is
//! [`fuse`]). Metadata comes from the manifest alone, so listing and `stat`
//! never touch the network; reads are served from verified chunks, fetching
//! the missing ones first.

pub mod fuse;
mod generation;
mod io_modes;
mod signed;
mod streams;
mod tree;

pub use streams::StreamConfig;
pub use tree::{Changes, Layout, OutOfInodes};

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::debug;

use crate::cache::{Blob, Cache, Presence};
use crate::fetch::readahead::Readahead;
use crate::fetch::{FetchError, Fetcher, Target, Urgency};
use crate::hash::Digest;
use crate::manifest::weights::LARGE_FILE;
use crate::manifest::{Manifest, Model};
use crate::signature::{Signatures, Unavailable, Verdict};
use generation::{Catalog, Generation};
pub use generation::{Next as NextCatalog, give_back_freed_memory};
use streams::{STREAM_AFTER, Streams};
use tree::{Kind, ROOT};

pub const XATTR_SHA256: &str = "user.modelfs.sha256";
pub const XATTR_CACHED: &str = "user.modelfs.cached";
/// The orchestrator's component of a file (`vae`, `text_encoder`, ...).
pub const XATTR_COMPONENT: &str = "user.modelfs.component";
/// On the root: the catalog served and the process serving it, as JSON
/// (`/healthz`'s `catalog`): how `modelfs reload` finds the mount's
/// process and sees its reload end.
pub const XATTR_CATALOG: &str = "user.modelfs.catalog";
/// On files: their model's signature standing (`unsigned`, `verified by
/// KEY`, `refused: WHY`, or not checked yet).
pub const XATTR_SIGNATURE: &str = "user.modelfs.signature";

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("read-only file system")]
    ReadOnly,
    #[error("stale file handle")]
    BadHandle,
    #[error("no such attribute")]
    NoAttr,
    #[error("not a symbolic link")]
    NotSymlink,
    #[error("the bytes asked for are not verified")]
    NotVerified,
    /// Its model's signature does not vouch for it.
    #[error("refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("cache: {0}")]
    Cache(#[from] io::Error),
}

impl FsError {
    /// The one place errors become errnos; a new variant must be given one.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::ReadOnly => libc::EROFS,
            FsError::BadHandle => libc::EBADF,
            FsError::NoAttr => libc::ENODATA,
            FsError::NotSymlink => libc::EINVAL,
            FsError::NotVerified | FsError::Unavailable(_) => libc::EIO,
            // The same for every open until the manifest or the bundle
            // changes: loaders say "permission denied", not an I/O error
            // that looks like a failing disk worth retrying.
            FsError::Refused(_) => libc::EACCES,
            FsError::Fetch(FetchError::Local { source, .. }) => local_errno(source),
            FsError::Fetch(FetchError::CacheFull { .. }) => libc::ENOSPC,
            FsError::Fetch(
                FetchError::AllSourcesFailed { .. } | FetchError::Inconsistent { .. },
            ) => libc::EIO,
            FsError::Cache(e) => local_errno(e),
        }
    }
}

/// A full cache (disk or quota) is worth telling the reader about; anything
/// else local is EIO.
fn local_errno(e: &io::Error) -> i32 {
    match e.kind() {
        io::ErrorKind::StorageFull => libc::ENOSPC,
        _ => libc::EIO,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    File,
    Symlink,
}

/// What `stat` shows. `cached` is the number of verified bytes in the cache.
#[derive(Clone, Copy, Debug)]
pub struct Attr {
    pub ino: u64,
    pub kind: NodeKind,
    pub size: u64,
    pub cached: u64,
    /// `cached` may grow without any file of the cache appearing or going
    /// (a partial file's chunks verify in place).
    pub changing: bool,
}

pub struct DirEntry<'t> {
    pub ino: u64,
    pub kind: NodeKind,
    pub name: &'t str,
}

/// One `open` of a file.
pub struct OpenFile {
    /// The inode opened, which a reload may have removed since.
    ino: u64,
    target: Target,
    blob: Arc<Blob>,
    readahead: Mutex<Readahead>,
    /// Set to stop the readahead started for this open: the reader sought
    /// away from it (then a new flag takes its place) or closed the file.
    stop_readahead: Mutex<Arc<AtomicBool>>,
    /// Whether a read of this open asked for its model's stream yet.
    asked_stream: AtomicBool,
}

impl OpenFile {
    pub fn blob(&self) -> &Arc<Blob> {
        &self.blob
    }
}

/// The answer to a read: bytes now, or a fetch to run off the request loop.
pub enum ReadNow {
    Data(Vec<u8>),
    Fetch(Arc<OpenFile>),
}

pub struct ModelFs {
    catalog: Catalog,
    cache: Arc<Cache>,
    fetcher: Arc<Fetcher>,
    runtime: tokio::runtime::Handle,
    handles: Mutex<HashMap<u64, Arc<OpenFile>>>,
    /// Open texts (see [`ModelFs::open_text`]), by handle.
    texts: Mutex<HashMap<u64, Arc<[u8]>>>,
    streams: Arc<Streams>,
    next_fh: AtomicU64,
    /// With `--trusted-key`: the models' signatures, checked at first open.
    signatures: Option<Signatures>,
}

/// How many requests a readahead window is split into, at most.
const READAHEAD_REQUESTS: u64 = 8;

impl ModelFs {
    pub fn new(
        manifest: Arc<Manifest>,
        cache: Arc<Cache>,
        fetcher: Arc<Fetcher>,
        runtime: tokio::runtime::Handle,
        layout: Layout,
        stream: StreamConfig,
    ) -> Self {
        let streams = Arc::new(Streams::new(
            stream,
            Arc::clone(&cache),
            Arc::clone(&fetcher),
            runtime.clone(),
        ));
        ModelFs {
            catalog: Catalog::new(manifest, layout),
            streams,
            cache,
            fetcher,
            runtime,
            handles: Mutex::new(HashMap::new()),
            texts: Mutex::default(),
            next_fh: AtomicU64::new(1),
            signatures: None,
        }
    }

    /// Serves each model only as its signature vouches for it.
    pub fn with_signatures(mut self, signatures: Option<Signatures>) -> Self {
        self.signatures = signatures;
        self
    }

    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        self.fetcher.metrics()
    }

    /// The manifest served now.
    pub fn manifest(&self) -> Arc<Manifest> {
        Arc::clone(&self.catalog.now().manifest)
    }

    /// Builds the catalog of `manifest` beside the one served; nothing
    /// changes until [`ModelFs::swap`].
    pub fn prepare(&self, manifest: Arc<Manifest>) -> Result<NextCatalog<'_>, OutOfInodes> {
        self.catalog.prepare(manifest)
    }

    /// Serves `next` from now on: one catalog swapped for the next, in
    /// whole. Files open keep reading what they opened; see [`Changes`]
    /// for what the kernel must forget.
    pub fn swap(&self, next: NextCatalog<'_>) -> Changes {
        self.cache.set_catalog(Arc::clone(next.manifest()));
        self.catalog.swap(next)
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        self.attr_in(&self.catalog.now(), ino)
    }

    fn attr_in(&self, g: &Generation, ino: u64) -> Result<Attr, FsError> {
        let Some(node) = g.tree.get(ino) else {
            return self.open_attr(ino);
        };
        let fixed = |kind, size, cached| Attr {
            ino,
            kind,
            size,
            cached,
            changing: false,
        };
        Ok(match node.kind {
            Kind::Dir(_) => fixed(NodeKind::Dir, 0, 0),
            Kind::Symlink(target) => fixed(NodeKind::Symlink, target.len() as u64, 0),
            Kind::Text(text) => fixed(NodeKind::File, text.len() as u64, text.len() as u64),
            Kind::File { model, file } => {
                let entry = &g.manifest.models[model].files[file];
                self.file_attr(ino, entry)
            }
        })
    }

    fn file_attr(&self, ino: u64, entry: &crate::manifest::FileEntry) -> Attr {
        // An unreadable map only makes `du` show less; never fail a stat on it.
        let presence = self.cache.presence(entry).unwrap_or(Presence::Absent);
        Attr {
            ino,
            kind: NodeKind::File,
            size: entry.size,
            cached: presence.bytes(entry.size),
            changing: matches!(presence, Presence::Partial { .. }),
        }
    }

    /// The attributes of a file a reload removed or replaced while it was
    /// open: `fstat` of the open file goes on working.
    fn open_attr(&self, ino: u64) -> Result<Attr, FsError> {
        let handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        let h = handles.values().find(|h| h.ino == ino);
        let h = h.map(Arc::clone).ok_or(FsError::NotFound)?;
        drop(handles);
        Ok(self.file_attr(ino, h.target.entry()))
    }

    /// The inodes that show the blob `digest`.
    pub fn inodes_of(&self, digest: &Digest) -> Vec<u64> {
        self.catalog.now().inodes_of(digest).collect()
    }

    /// Every file inode the manifest gives.
    pub fn file_inodes(&self) -> Vec<u64> {
        self.catalog.now().file_inodes().collect()
    }

    pub fn lookup(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        let g = self.catalog.now();
        let node = g.tree.get(parent).ok_or(FsError::NotFound)?;
        let Kind::Dir(children) = node.kind else {
            return Err(FsError::NotDir);
        };
        let ino = children.get(name).ok_or(FsError::NotFound)?;
        self.attr_in(&g, ino)
    }

    /// Hands `add` the entries of directory `ino` from position `offset`
    /// on (`.` and `..` first), with their attributes if `plus`, each with
    /// the offset of the one after it, until it says the reply is full.
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
        plus: bool,
        mut add: impl FnMut(DirEntry<'_>, Option<Attr>, u64) -> bool,
    ) -> Result<(), FsError> {
        let g = self.catalog.now();
        let node = g.tree.get(ino).ok_or(FsError::NotFound)?;
        let Kind::Dir(children) = node.kind else {
            return Err(FsError::NotDir);
        };
        let dots = [(ino, "."), (node.parent, "..")]
            .into_iter()
            .skip(offset as usize)
            .map(|(ino, name)| DirEntry {
                ino,
                kind: NodeKind::Dir,
                name,
            });
        let from = offset.saturating_sub(2) as usize;
        let entries = children.iter_from(from).map(|(name, child)| DirEntry {
            ino: child,
            kind: match g.tree.get(child).map(|n| n.kind) {
                Some(Kind::Dir(_)) => NodeKind::Dir,
                Some(Kind::Symlink(_)) => NodeKind::Symlink,
                _ => NodeKind::File,
            },
            name,
        });
        for (e, next) in dots.chain(entries).zip(offset + 1..) {
            let attr = plus.then(|| self.attr_in(&g, e.ino)).transpose()?;
            if add(e, attr, next) {
                break;
            }
        }
        Ok(())
    }

    /// Where a symlink points.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        match self
            .catalog
            .now()
            .tree
            .get(ino)
            .ok_or(FsError::NotFound)?
            .kind
        {
            Kind::Symlink(target) => Ok(target.as_bytes().to_vec()),
            _ => Err(FsError::NotSymlink),
        }
    }

    /// Opens a file the tree holds itself (`refs/main`), if `ino` is one:
    /// its handle keeps the text, which a reload may change.
    pub fn open_text(&self, ino: u64) -> Option<u64> {
        let g = self.catalog.now();
        let Kind::Text(text) = g.tree.get(ino)?.kind else {
            return None;
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let mut texts = self.texts.lock().unwrap_or_else(|p| p.into_inner());
        texts.insert(fh, text.into());
        Some(fh)
    }

    /// The bytes of text open as `fh`, if it is one.
    pub fn read_text(&self, fh: u64, offset: u64, len: u32) -> Option<Vec<u8>> {
        let texts = self.texts.lock().unwrap_or_else(|p| p.into_inner());
        let text = texts.get(&fh)?;
        let start = (offset as usize).min(text.len());
        let end = start.saturating_add(len as usize).min(text.len());
        Some(text[start..end].to_vec())
    }

    pub fn open(&self, ino: u64, write: bool) -> Result<(u64, Arc<OpenFile>), FsError> {
        let g = self.catalog.now();
        let node = g.tree.get(ino).ok_or(FsError::NotFound)?;
        let Kind::File { model, file } = node.kind else {
            return Err(FsError::IsDir);
        };
        if write {
            return Err(FsError::ReadOnly);
        }
        let (target, verdict) = self.signed_file(&g, model, file)?;
        let blob = self.cache.open_blob(target.entry())?;
        if let (Some(verdict), Some(complete)) = (&verdict, blob.complete_file()) {
            verdict
                .check_complete(target.file_index(), &complete)?
                .map_err(FsError::Refused)?;
        }
        // A previous run may have verified every chunk but stopped before the final check.
        self.finish_if_verified(&target, &blob);
        let handle = Arc::new(OpenFile {
            ino,
            readahead: Mutex::new(Readahead::new(blob.chunk_size)),
            stop_readahead: Mutex::default(),
            asked_stream: AtomicBool::new(false),
            target,
            blob,
        });
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::clone(&handle));
        self.streams.opened(&handle.target);
        if g.first_open(model) {
            self.fetch_small_files(handle.target.model(), verdict.as_deref());
        }
        Ok((fh, handle))
    }

    /// At a model's first open, its small files (configs, tokenizers, index
    /// JSON) are fetched in parallel, in the background: a loader opens
    /// dozens of them one after another, and each would otherwise cost a
    /// round trip. A reader's own reads go first; its next opens find
    /// them cached, or in flight.
    /// Not the files a signature left out: they are never served.
    fn fetch_small_files(&self, model: &Arc<Model>, verdict: Option<&Verdict>) {
        let files = &model.files;
        let left_out = |f| verdict.is_some_and(|v| v.leaves_out(f));
        let small = |&f: &usize| files[f].size <= LARGE_FILE && !left_out(f);
        for file in (0..files.len()).filter(small) {
            let fetcher = Arc::clone(&self.fetcher);
            let target = Target::new(Arc::clone(model), file);
            self.runtime.spawn(async move {
                if let Err(e) = fetcher.fetch_file(&target, &|_| {}).await {
                    debug!(file = %target, error = %e, "a small file was not fetched ahead; a read of it will try");
                }
            });
        }
    }

    /// Ends open `fh`; true if its file may now be read by passthrough
    /// (complete, or every chunk verified).
    pub fn release(&self, fh: u64) -> bool {
        let handle = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
        let Some(h) = handle else {
            // A text's, if anything.
            let mut texts = self.texts.lock().unwrap_or_else(|p| p.into_inner());
            texts.remove(&fh);
            return false;
        };
        let servable = h.blob.is_servable();
        h.blob.mark_used();
        h.stop_readahead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .store(true, Ordering::Release);
        self.finish_if_verified(&h.target, &h.blob);
        self.streams.closed(&h.target);
        // Dropping the last handle on a partial file syncs it: let that
        // happen on the runtime's blocking pool, not on the caller's thread.
        let _runtime = self.runtime.enter();
        drop(h);
        servable
    }

    fn finish_if_verified(&self, target: &Target, blob: &Arc<Blob>) {
        let _runtime = self.runtime.enter();
        self.fetcher.finish_if_verified(target, blob);
    }

    fn handle(&self, fh: u64) -> Result<Arc<OpenFile>, FsError> {
        let handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        handles.get(&fh).cloned().ok_or(FsError::BadHandle)
    }

    /// Serves a read from verified chunks if they are all present, or says
    /// which fetch to run. Starts readahead either way.
    pub fn read_now(&self, fh: u64, offset: u64, len: u32) -> Result<ReadNow, FsError> {
        let h = self.handle(fh)?;
        let size = h.blob.size;
        let end = offset.saturating_add(len as u64).min(size);
        if offset >= end {
            return Ok(ReadNow::Data(Vec::new()));
        }
        let sequential = self.start_readahead(&h, offset, end - offset);
        if sequential >= STREAM_AFTER
            && h.blob.size > LARGE_FILE
            && !h.asked_stream.load(Ordering::Relaxed)
            && !h.asked_stream.swap(true, Ordering::Relaxed)
        {
            self.streams.start(&h.target);
        }
        let cs = h.blob.chunk_size;
        if (offset / cs..=(end - 1) / cs).all(|c| h.blob.has_chunk(c)) {
            self.fetcher.metrics().cache_hit(end - offset);
            return Ok(ReadNow::Data(read_blob(&h.blob, offset, end)?));
        }
        Ok(ReadNow::Fetch(h))
    }

    /// Fetches whatever the read needs, then serves it. Runs on the runtime.
    pub async fn read_fetch(
        &self,
        h: &OpenFile,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, FsError> {
        let read = self.fetch_and_read(h, offset, len).await;
        if let Err(FsError::Fetch(e)) = &read
            && e.is_absent()
            && h.target.entry().optional
        {
            tracing::warn!(file = %h.target, "an optional file is absent at every source: the model does without it");
        }
        read
    }

    async fn fetch_and_read(
        &self,
        h: &OpenFile,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, FsError> {
        let blob = &h.blob;
        let end = offset.saturating_add(len as u64).min(blob.size);
        if !h.target.entry().is_chunked() {
            let bytes = match self
                .fetcher
                .ensure_whole(&h.target, blob, Urgency::Demand)
                .await
            {
                Ok(()) => read_blob(blob, offset, end)?,
                Err(full @ FetchError::CacheFull { .. }) => {
                    self.fetcher.tell_cache_full(&full);
                    let bytes = self
                        .fetcher
                        .fetch_whole_uncached(&h.target, blob, full)
                        .await?;
                    bytes[offset as usize..end as usize].to_vec()
                }
                Err(e) => return Err(e.into()),
            };
            // Counted once the bytes are had, as for chunks below.
            self.fetcher.metrics().cache_miss(end - offset);
            return Ok(bytes);
        }
        let cs = blob.chunk_size;
        let chunks = offset / cs..(end - 1) / cs + 1;
        let fetched = self
            .fetcher
            .ensure_chunks(&h.target, blob, chunks.clone(), Urgency::Demand)
            .await;
        // Chunks the cache has no room for are served from memory instead.
        let mut uncached = HashMap::new();
        for (c, fetched) in chunks.zip(fetched) {
            match fetched {
                Ok(()) => {}
                Err(full @ FetchError::CacheFull { .. }) => {
                    self.fetcher.tell_cache_full(&full);
                    let bytes = self.fetcher.fetch_uncached(&h.target, blob, c).await?;
                    uncached.insert(c, bytes);
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.fetcher.metrics().cache_miss(end - offset);
        assemble(blob, offset, end, &uncached)
    }

    /// Records a read for the open's readahead, fetches ahead of it if the
    /// file is partial, and says how many bytes the reader has read
    /// sequentially (a file verified only whole is fetched at the first
    /// read: every read of it counts as sequential).
    fn start_readahead(&self, h: &Arc<OpenFile>, offset: u64, len: u64) -> u64 {
        if !h.target.entry().is_chunked() {
            return offset + len;
        }
        let (ahead, sequential) = {
            let mut readahead = h.readahead.lock().unwrap_or_else(|p| p.into_inner());
            let ahead = readahead.on_read(offset, len, h.blob.size);
            (ahead, readahead.sequential_bytes())
        };
        if h.blob.is_complete() {
            return sequential;
        }
        let stop = {
            let mut stop = h.stop_readahead.lock().unwrap_or_else(|p| p.into_inner());
            if ahead.cancel {
                stop.store(true, Ordering::Release);
                *stop = Arc::default();
            }
            Arc::clone(&stop)
        };
        if ahead.fetch.is_empty() {
            return sequential;
        }
        let cs = h.blob.chunk_size;
        let chunks = ahead.fetch.start / cs..(ahead.fetch.end - 1) / cs + 1;
        // One task per request, each waiting for a request slot and planned
        // only once it has one, so a reader's own reads meanwhile lead the
        // chunks they need. A window goes out in about 8 requests: in
        // parallel, since one connection may be capped (a mirror's rate
        // limit), and each a few MiB, up to 8 MiB once the window is wide.
        let step = (chunks.end - chunks.start)
            .div_ceil(READAHEAD_REQUESTS)
            .clamp(1, (crate::fetch::MAX_REQUEST_BYTES / cs).max(1));
        for start in chunks.clone().step_by(step as usize) {
            let part = start..(start + step).min(chunks.end);
            let (fetcher, h, stop) = (Arc::clone(&self.fetcher), Arc::clone(h), Arc::clone(&stop));
            self.runtime.spawn(async move {
                if let Err(e) = fetcher.fill(&h.target, &h.blob, part, Some(&stop)).await {
                    debug!(error = %e, "readahead failed; a read will retry");
                }
            });
        }
        sequential
    }

    pub fn getxattr(&self, ino: u64, name: &str) -> Result<Vec<u8>, FsError> {
        if ino == ROOT && name == XATTR_CATALOG {
            let catalog = self.metrics().catalog().ok_or(FsError::NoAttr)?;
            return Ok(serde_json::to_vec(&catalog).expect("plain data serializes"));
        }
        let g = self.catalog.now();
        let node = g.tree.get(ino).ok_or(FsError::NotFound)?;
        let Kind::File { model, file } = node.kind else {
            return Err(FsError::NoAttr);
        };
        let entry = &g.manifest.models[model].files[file];
        match name {
            XATTR_SHA256 => Ok(entry.sha256.to_hex().into_bytes()),
            XATTR_CACHED => Ok(self.file_attr(ino, entry).cached.to_string().into_bytes()),
            XATTR_SIGNATURE => Ok(self
                .signature_standing(&g.manifest.models[model])
                .into_bytes()),
            XATTR_COMPONENT => entry
                .component
                .as_ref()
                .map(|c| c.as_bytes().to_vec())
                .ok_or(FsError::NoAttr),
            _ => Err(FsError::NoAttr),
        }
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let g = self.catalog.now();
        let node = g.tree.get(ino).ok_or(FsError::NotFound)?;
        Ok(match node.kind {
            Kind::File { model, file } => {
                let mut names = format!("{XATTR_SHA256}\0{XATTR_CACHED}\0{XATTR_SIGNATURE}\0");
                if g.manifest.models[model].files[file].component.is_some() {
                    names.push_str(XATTR_COMPONENT);
                    names.push('\0');
                }
                names.into_bytes()
            }
            Kind::Dir(_) if ino == ROOT => format!("{XATTR_CATALOG}\0").into_bytes(),
            Kind::Dir(_) | Kind::Symlink(_) | Kind::Text(_) => Vec::new(),
        })
    }

    /// Total bytes and files the tree shows, and its inodes.
    pub fn totals(&self) -> (u64, u64, u64) {
        let g = self.catalog.now();
        let files = g.manifest.models.iter().flat_map(|m| &m.files);
        let (bytes, n) = files.fold((0, 0), |(bytes, n), f| (bytes + f.size, n + 1));
        (bytes, n, g.tree.len() as u64)
    }

    pub fn root(&self) -> u64 {
        ROOT
    }
}

/// The bytes `offset..end` from verified chunks in the cache and, for those
/// it had no room for, from `uncached` (verified chunks in memory); never
/// from a chunk that is neither.
fn assemble(
    blob: &Blob,
    offset: u64,
    end: u64,
    uncached: &HashMap<u64, Arc<[u8]>>,
) -> Result<Vec<u8>, FsError> {
    let cs = blob.chunk_size;
    let mut out = Vec::with_capacity((end - offset) as usize);
    for c in offset / cs..=(end - 1) / cs {
        let (from, to) = (offset.max(c * cs), end.min((c + 1) * cs));
        if let Some(chunk) = uncached.get(&c) {
            out.extend_from_slice(&chunk[(from - c * cs) as usize..(to - c * cs) as usize]);
        } else if blob.has_chunk(c) {
            blob.read_into(&mut out, from, to)?;
        } else {
            return Err(FsError::NotVerified);
        }
    }
    Ok(out)
}

fn read_blob(blob: &Blob, offset: u64, end: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    blob.read_into(&mut buf, offset, end)?;
    Ok(buf)
}
