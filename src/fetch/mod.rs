//! Getting verified bytes into the cache: one fetch per chunk however many
//! readers want it (single flight), ranged requests resumed where they broke,
//! retries with backoff, failover across a file's sources, and verification
//! before anything is marked present.

mod health;
pub mod readahead;
mod retry;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use futures::future::join_all;
use sha2::{Digest as _, Sha256};
use tokio::sync::{OnceCell, Semaphore};
use tracing::{Instrument, debug, info_span, warn};

pub use retry::RetryPolicy;

use crate::cache::{Blob, BlobKey, Cache};
use crate::fileio::blocking;
use crate::hash::Digest;
use crate::manifest::{FileEntry, Manifest};
use crate::metrics::Metrics;
use crate::source::{Location, Sink, Source, SourceError, StreamError};

/// Range requests in flight at once per process; more only queue at the
/// server and spread the same bandwidth thinner.
pub const MAX_CONCURRENT_REQUESTS: usize = 16;

/// Memory for chunks served uncached while the cache is full: a few chunks
/// of each of several readers (8 MiB chunks: 8 of them).
const RECENT_UNCACHED_BYTES: usize = 64 << 20;

/// Key of the single in-flight fetch of a whole file without chunk hashes.
const WHOLE: u64 = u64::MAX;

/// One file of one model of a manifest.
#[derive(Clone)]
pub struct Target {
    manifest: Arc<Manifest>,
    model: usize,
    file: usize,
}

impl Target {
    pub fn new(manifest: Arc<Manifest>, model: usize, file: usize) -> Self {
        Target {
            manifest,
            model,
            file,
        }
    }

    pub fn model_id(&self) -> &str {
        &self.manifest.models[self.model].id
    }

    pub fn entry(&self) -> &FileEntry {
        &self.manifest.models[self.model].files[self.file]
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.model_id(), self.entry().path)
    }
}

/// Why bytes could not be had. Cheap to clone: every waiter on a shared
/// fetch gets the leader's error.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{target}: {}: {}", if *absent { "absent at every source" } else { "every source failed" }, format_attempts(attempts))]
    AllSourcesFailed {
        target: String,
        attempts: Arc<Vec<(String, String)>>,
        /// Every source said it has no such object (404 and the like).
        absent: bool,
    },
    #[error(
        "{target}: every chunk matches its hash but the whole file hashes to {actual}: the manifest is inconsistent"
    )]
    Inconsistent { target: String, actual: Digest },
    /// The cache has no room for the chunk and nothing more can be
    /// evicted: the reader may still be served, uncached.
    #[error("{target}: {source}")]
    CacheFull {
        target: String,
        source: Arc<io::Error>,
    },
    #[error("{target}: cache: {source}")]
    Local {
        target: String,
        source: Arc<io::Error>,
    },
}

impl FetchError {
    /// Whether every source said the file does not exist.
    pub fn is_absent(&self) -> bool {
        matches!(self, FetchError::AllSourcesFailed { absent: true, .. })
    }
}

fn format_attempts(attempts: &[(String, String)]) -> String {
    attempts
        .iter()
        .map(|(loc, err)| format!("{loc}: {err}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One chunk of one blob (or [`WHOLE`]).
type ChunkKey = (BlobKey, u64);

/// Fetches under way, by blob and chunk: whoever asks for one joins it.
type Flights<T> = Mutex<HashMap<ChunkKey, Arc<OnceCell<Result<T, FetchError>>>>>;

pub struct Fetcher {
    sources: Box<dyn Source>,
    retry: RetryPolicy,
    requests: Semaphore,
    inflight: Flights<()>,
    /// Chunks being fetched into memory because the cache is full.
    uncached: Flights<Arc<[u8]>>,
    /// The latest of those, most recent last: the kernel reads a chunk in
    /// several requests, and each must not fetch it again.
    recent_uncached: Mutex<VecDeque<(ChunkKey, Arc<[u8]>)>>,
    /// Whether this process said yet that the cache is full.
    told_full: AtomicBool,
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    health: health::SourceHealth,
}

/// Where one attempt's bytes go: hashed as they arrive and written at their
/// offset, so a broken stream resumes where it stopped.
struct RangeWriter<'a> {
    out: &'a dyn WriteAt,
    range: Range<u64>,
    pos: u64,
    hasher: Option<Sha256>,
}

trait WriteAt: Sync {
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
}

impl WriteAt for Blob {
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        Blob::write_at(self, data, offset)
    }
}

/// A chunk's bytes held in memory; `start` is the chunk's offset in the file.
struct Memory {
    start: u64,
    bytes: Mutex<Vec<u8>>,
}

impl WriteAt for Memory {
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        let at = (offset - self.start) as usize;
        bytes
            .get_mut(at..at + data.len())
            .ok_or_else(|| io::Error::other("bytes past the chunk"))?
            .copy_from_slice(data);
        Ok(())
    }
}

/// Where one round of a whole-file download goes.
trait WholeOut: WriteAt + Send + 'static {
    /// The sha256 of what was written. Blocking.
    fn digest(&self) -> io::Result<Digest>;
    /// Gives up a round whose bytes are not the file's.
    fn discard(self);
}

/// A private file in the cache's `tmp/`, published once verified.
struct TempFile {
    file: File,
    path: std::path::PathBuf,
}

impl WriteAt for TempFile {
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }
}

impl WholeOut for TempFile {
    /// Hashed through the descriptor written, never reopened by name.
    fn digest(&self) -> io::Result<Digest> {
        Digest::of_file(&self.file)
    }

    fn discard(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl WholeOut for Memory {
    fn digest(&self) -> io::Result<Digest> {
        Ok(Digest::of(
            &self.bytes.lock().unwrap_or_else(|p| p.into_inner()),
        ))
    }

    fn discard(self) {}
}

impl WriteAt for File {
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_at(data, offset)
    }
}

impl Sink for RangeWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_at(data, self.pos)?;
        if let Some(h) = &mut self.hasher {
            h.update(data);
        }
        self.pos += data.len() as u64;
        Ok(())
    }
}

impl RangeWriter<'_> {
    fn restart(&mut self) {
        self.pos = self.range.start;
        if self.hasher.is_some() {
            self.hasher = Some(Sha256::new());
        }
    }
}

/// A failed attempt at one source, or a local failure that no source can fix.
enum AttemptError {
    Source(SourceError),
    Mismatch { actual: Digest },
    Local(io::Error),
}

impl Fetcher {
    pub fn new(
        cache: Arc<Cache>,
        sources: impl Source + 'static,
        retry: RetryPolicy,
        metrics: Arc<Metrics>,
    ) -> Self {
        Fetcher {
            sources: Box::new(sources),
            retry,
            requests: Semaphore::new(MAX_CONCURRENT_REQUESTS),
            inflight: Mutex::default(),
            uncached: Mutex::default(),
            recent_uncached: Mutex::default(),
            told_full: AtomicBool::new(false),
            cache,
            metrics,
            health: health::SourceHealth::default(),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Evicts what the quota and free-space floor need before `len` bytes
    /// are written, then `allocate`s them; a full cache is a local error
    /// (ENOSPC), not a source's.
    async fn make_room(
        &self,
        target: &Target,
        len: u64,
        allocate: impl FnOnce() -> io::Result<()> + Send + 'static,
    ) -> Result<(), FetchError> {
        let cache = Arc::clone(&self.cache);
        match blocking(move || cache.reserve(len, allocate)).await {
            Ok(evicted) => {
                self.metrics.evicted(evicted);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::StorageFull => {
                debug!(file = %target, error = %e, "no room in the cache");
                Err(FetchError::CacheFull {
                    target: target.to_string(),
                    source: Arc::new(e),
                })
            }
            Err(e) => {
                warn!(model = target.model_id(), file = %target.entry().path, error = %e, "cannot make room in the cache");
                Err(local(target, e))
            }
        }
    }

    /// One of the [`MAX_CONCURRENT_REQUESTS`] slots, held from before a
    /// chunk is claimed until it is verified or given up: retries and
    /// failover included, so a chunk once started is not overtaken.
    async fn request_slot(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.requests
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }

    /// Counts a failed attempt at `location`, and the move to the next
    /// source when there is one.
    fn source_failed(&self, location: &Location, why: &str, more: bool) {
        self.health
            .failed(&location.origin(), std::time::Instant::now());
        self.metrics.source_failed(&location.origin(), why);
        if more {
            self.metrics.failed_over();
        }
    }

    /// Makes chunk `index` of `blob` verified and present, fetching it unless
    /// it already is or another task is already fetching it.
    pub async fn ensure_chunk(
        &self,
        target: &Target,
        blob: &Arc<Blob>,
        index: u64,
    ) -> Result<(), FetchError> {
        self.single_flight(blob, index, || {
            async move {
                let started = std::time::Instant::now();
                let result = self.fetch_chunk(target, blob, index).await;
                self.metrics.fetch_took(started.elapsed());
                result
            }
            .instrument(info_span!("fetch_chunk", file = %target, chunk = index))
        })
        .await
    }

    /// Makes a file without chunk hashes complete: fetched whole, verified.
    pub async fn ensure_whole(&self, target: &Target, blob: &Arc<Blob>) -> Result<(), FetchError> {
        self.single_flight(blob, WHOLE, || {
            self.fetch_whole(target, blob)
                .instrument(info_span!("fetch_whole", file = %target))
        })
        .await
    }

    async fn single_flight<F>(
        &self,
        blob: &Arc<Blob>,
        index: u64,
        fetch: impl FnOnce() -> F,
    ) -> Result<(), FetchError>
    where
        F: Future<Output = Result<(), FetchError>>,
    {
        let present = || {
            let done = if index == WHOLE {
                blob.is_complete()
            } else {
                blob.has_chunk(index)
            };
            done.then_some(())
        };
        join_flight(&self.inflight, (blob.key, index), present, fetch).await
    }

    async fn fetch_chunk(
        &self,
        target: &Target,
        blob: &Arc<Blob>,
        index: u64,
    ) -> Result<(), FetchError> {
        let entry = target.entry();
        // The blob's chunking, which its key says is the entry's.
        let start = index * blob.chunk_size;
        let range = start..(start + blob.chunk_size).min(blob.size);
        let expected = blob.chunk_hash(index);
        if let Some(actual) = blob.failed_whole() {
            return Err(FetchError::Inconsistent {
                target: target.to_string(),
                actual,
            });
        }
        // The request slot first: a task queued behind this process's other
        // fetches neither holds a claim others wait on nor reserves quota
        // for bytes it is not fetching yet.
        let _slot = self.request_slot().await;
        // Held until the bit is set: another process that wants this chunk
        // waits here, then finds it present.
        let _claim = {
            let blob = Arc::clone(blob);
            blocking(move || blob.claim_chunk(index))
                .await
                .map_err(|e| local(target, e))?
        };
        if blob.has_chunk(index) {
            debug!(file = %target, chunk = index, "fetched by another process");
            finish_if_verified(target, blob);
            return Ok(());
        }
        if blob.is_suspect(index) {
            let b = Arc::clone(blob);
            if blocking(move || b.confirm_suspect(index))
                .await
                .map_err(|e| local(target, e))?
            {
                debug!(file = %target, chunk = index, "re-verified a chunk cached before an unclean shutdown");
                finish_if_verified(target, blob);
                return Ok(());
            }
        }
        let (for_chunk, chunk) = (Arc::clone(blob), range.clone());
        self.make_room(target, range.end - range.start, move || {
            for_chunk.allocate(chunk)
        })
        .await?;
        let order = self
            .health
            .order(&entry.locations, std::time::Instant::now());
        self.fetch_from_sources(target, &order, blob.as_ref(), range, expected)
            .await?;
        blob.mark_verified(index);
        if blob.all_chunks_verified() {
            finish_in_background(target, blob);
        }
        Ok(())
    }

    /// A chunk the cache has no room for: fetched into memory, verified,
    /// and handed to the reader, never marked present. Readers of one chunk
    /// at the same moment share one fetch.
    pub async fn fetch_uncached(
        &self,
        target: &Target,
        blob: &Arc<Blob>,
        index: u64,
    ) -> Result<Arc<[u8]>, FetchError> {
        let key = (blob.key, index);
        let fetch = || async {
            let _slot = self.request_slot().await;
            let start = index * blob.chunk_size;
            let range = start..(start + blob.chunk_size).min(blob.size);
            let memory = Memory {
                start,
                bytes: Mutex::new(vec![0; (range.end - start) as usize]),
            };
            let order = self
                .health
                .order(&target.entry().locations, std::time::Instant::now());
            self.fetch_from_sources(target, &order, &memory, range, blob.chunk_hash(index))
                .await?;
            Ok(self.keep_uncached(key, memory))
        };
        join_flight(&self.uncached, key, || self.recent_uncached(&key), fetch)
            .instrument(info_span!("fetch_uncached", file = %target, chunk = index))
            .await
    }

    /// Counts verified bytes fetched into memory and keeps them for the next
    /// requests; called before the fetch's flight ends, so that no reader
    /// finds neither.
    fn keep_uncached(&self, key: ChunkKey, memory: Memory) -> Arc<[u8]> {
        let bytes: Arc<[u8]> =
            Arc::from(memory.bytes.into_inner().unwrap_or_else(|p| p.into_inner()));
        self.metrics.served_uncached(bytes.len() as u64);
        let mut recent = self
            .recent_uncached
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        recent.push_back((key, Arc::clone(&bytes)));
        while recent.iter().map(|(_, b)| b.len()).sum::<usize>() > RECENT_UNCACHED_BYTES {
            recent.pop_front();
        }
        bytes
    }

    /// A chunk fetched uncached lately, made the most recent.
    fn recent_uncached(&self, key: &ChunkKey) -> Option<Arc<[u8]>> {
        let mut recent = self
            .recent_uncached
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let at = recent.iter().position(|(k, _)| k == key)?;
        let hit = recent.remove(at)?;
        let bytes = Arc::clone(&hit.1);
        recent.push_back(hit);
        Some(bytes)
    }

    /// Says once per process that the cache is full, and why; readers are
    /// then served uncached.
    pub fn tell_cache_full(&self, why: &FetchError) {
        if !self.told_full.swap(true, Ordering::AcqRel) {
            warn!(error = %why, "the cache is full: reads are served from verified chunks fetched into memory, uncached, until room is made (said once)");
        }
    }

    /// Fetches `range` into `out` from the first source of `order` that
    /// delivers it (verified against `expected` when there is a hash),
    /// retrying each as the policy says: the one loop behind chunks, parts
    /// of whole files, and uncached chunks.
    async fn fetch_from_sources(
        &self,
        target: &Target,
        order: &[&Location],
        out: &dyn WriteAt,
        range: Range<u64>,
        expected: Option<Digest>,
    ) -> Result<(), FetchError> {
        let mut attempts = Vec::new();
        let mut absent = true;
        for (i, location) in order.iter().enumerate() {
            let mut writer = RangeWriter {
                out,
                range: range.clone(),
                pos: range.start,
                hasher: expected.map(|_| Sha256::new()),
            };
            match self.fetch_range(location, &mut writer, expected).await {
                Ok(()) => {
                    self.health.succeeded(&location.origin());
                    return Ok(());
                }
                Err(AttemptError::Local(e)) => return Err(local(target, e)),
                Err(e) => {
                    let why = describe(&e);
                    self.source_failed(location, &why, i + 1 < order.len());
                    absent &= matches!(e, AttemptError::Source(SourceError::NotFound(_)));
                    warn!(model = target.model_id(), file = %target.entry().path, ?range, source = %location, error = %why, "source failed; trying the next");
                    attempts.push((location.to_string(), why));
                }
            }
        }
        Err(FetchError::AllSourcesFailed {
            target: target.to_string(),
            attempts: Arc::new(attempts),
            absent,
        })
    }

    /// Fetches a file without chunk hashes into a private temporary file in
    /// parallel ranges, verifies it whole, then publishes it. A mismatch is
    /// retried with the next source first.
    async fn fetch_whole(&self, target: &Target, blob: &Arc<Blob>) -> Result<(), FetchError> {
        let entry = target.entry();
        self.make_room(target, entry.size, || Ok(())).await?;
        let temp = || {
            // Locked while this process fills it: no sweep takes it for a dead one's.
            let (file, path) = self.cache.temp_file(&blob.digest)?;
            file.lock_shared()?;
            file.set_len(entry.size)?;
            Ok(TempFile { file, path })
        };
        let done = self
            .whole_rounds(target, blob, || temp().map_err(|e| local(target, e)))
            .await?;
        let b = Arc::clone(blob);
        blocking(move || {
            let TempFile { file, path } = done;
            b.finish_whole(&path, file)
        })
        .await
        .map_err(|e| local(target, e))
    }

    /// A file verified only whole that the cache has no room for (`full`
    /// says why): fetched and verified in memory if it fits in the memory
    /// kept for uncached reads, else `full` stands.
    pub async fn fetch_whole_uncached(
        &self,
        target: &Target,
        blob: &Arc<Blob>,
        full: FetchError,
    ) -> Result<Arc<[u8]>, FetchError> {
        if blob.size > RECENT_UNCACHED_BYTES as u64 {
            return Err(full);
        }
        let key = (blob.key, WHOLE);
        let fetch = || async {
            let memory = self
                .whole_rounds(target, blob, || {
                    Ok(Memory {
                        start: 0,
                        bytes: Mutex::new(vec![0; blob.size as usize]),
                    })
                })
                .await?;
            Ok(self.keep_uncached(key, memory))
        };
        join_flight(&self.uncached, key, || self.recent_uncached(&key), fetch)
            .instrument(info_span!("fetch_whole_uncached", file = %target))
            .await
    }

    /// Downloads a file without chunk hashes into what `make` makes, in
    /// parallel parts, and verifies it whole; a mismatch is fetched again
    /// with the next source first, once per source.
    async fn whole_rounds<O: WholeOut>(
        &self,
        target: &Target,
        blob: &Blob,
        make: impl Fn() -> Result<O, FetchError>,
    ) -> Result<O, FetchError> {
        let entry = target.entry();
        let mut attempts = Vec::new();
        let first_order = self
            .health
            .order(&entry.locations, std::time::Instant::now());
        for round in 0..entry.locations.len() {
            let out = make()?;
            // Each round starts from the next source of one order: were the
            // order taken again, a source demoted meanwhile would rotate back
            // to the front, and another never be first.
            let mut order = first_order.clone();
            order.rotate_left(round);
            let parts = (0..entry.chunk_count()).map(|c| {
                let start = c * entry.chunk_size;
                self.fetch_part(
                    target,
                    &out,
                    &order,
                    start..(start + entry.chunk_size).min(entry.size),
                )
            });
            if let Some(e) = join_all(parts).await.into_iter().find_map(Result::err) {
                out.discard();
                return Err(e);
            }
            let (actual, out) = blocking(move || Ok((out.digest()?, out)))
                .await
                .map_err(|e| local(target, e))?;
            if actual == blob.digest {
                return Ok(out);
            }
            out.discard();
            self.metrics.verify_failed();
            warn!(model = target.model_id(), file = %entry.path, first_source = %order[0], %actual, "whole file does not match its sha256; fetching again");
            attempts.push((
                order[0].to_string(),
                format!("whole file hash mismatch (got {actual})"),
            ));
        }
        Err(FetchError::AllSourcesFailed {
            target: target.to_string(),
            attempts: Arc::new(attempts),
            absent: false,
        })
    }

    async fn fetch_part(
        &self,
        target: &Target,
        out: &dyn WriteAt,
        order: &[&Location],
        range: Range<u64>,
    ) -> Result<(), FetchError> {
        let _slot = self.request_slot().await;
        self.fetch_from_sources(target, order, out, range, None)
            .await
    }

    /// Fetches `writer.range` from one source, retrying transient faults with
    /// backoff and resuming after the bytes already received; then checks the
    /// bytes against `expected`.
    async fn fetch_range(
        &self,
        location: &Location,
        writer: &mut RangeWriter<'_>,
        expected: Option<Digest>,
    ) -> Result<(), AttemptError> {
        let mut retry = 0;
        loop {
            let before = writer.pos;
            let result = self
                .sources
                .fetch(location, writer.pos..writer.range.end, writer)
                .await;
            self.metrics
                .fetched(&location.origin(), writer.pos - before);
            let error = match result {
                Ok(()) => break,
                Err(StreamError::Sink(e)) => return Err(AttemptError::Local(e)),
                Err(StreamError::Source(e)) => e,
            };
            // Every byte arrived and then the connection failed (a timeout
            // waiting for its end, say): nothing is left to ask for, and an
            // empty range cannot be asked for. The hash below decides.
            if writer.pos == writer.range.end && !matches!(error, SourceError::LongBody { .. }) {
                debug!(source = %location, %error, "failed after the last byte; keeping the bytes");
                break;
            }
            retry += 1;
            if !error.is_transient() || retry >= self.retry.attempts {
                return Err(AttemptError::Source(error));
            }
            // An over-long body put wrong bytes where right ones may follow: start over.
            if matches!(error, SourceError::LongBody { .. }) {
                writer.restart();
            }
            let delay = self.retry.delay(retry, error.retry_after());
            debug!(source = %location, %error, ?delay, resume_at = writer.pos, "retrying");
            tokio::time::sleep(delay).await;
        }
        match (expected, writer.hasher.take()) {
            (Some(expected), Some(hasher)) => {
                let actual = Digest(hasher.finalize().into());
                if actual != expected {
                    self.metrics.verify_failed();
                    return Err(AttemptError::Mismatch { actual });
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl Fetcher {
    /// Opens `target`'s blob (off the async workers: it may wait on other
    /// processes) and makes it complete as [`Fetcher::prefetch_file`] does;
    /// `progress` first gets the bytes already cached.
    pub async fn fetch_file(
        &self,
        target: &Target,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Arc<Blob>, FetchError> {
        let (cache, t) = (Arc::clone(&self.cache), target.clone());
        let blob = blocking(move || cache.open_blob(t.entry()))
            .await
            .map_err(|e| local(target, e))?;
        progress(blob.presence().bytes(blob.size));
        self.prefetch_file(target, &blob, progress).await?;
        Ok(blob)
    }

    /// Makes one file complete: fetches every chunk not yet verified (as
    /// many at once as requests allowed), then checks the whole file and
    /// publishes it. `progress` gets the byte count of each chunk fetched
    /// or found fetched by another process.
    pub async fn prefetch_file(
        &self,
        target: &Target,
        blob: &Arc<Blob>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(), FetchError> {
        if blob.is_complete() {
            return Ok(());
        }
        let entry = target.entry();
        if entry.chunks.is_none() {
            self.ensure_whole(target, blob).await?;
            progress(entry.size);
            return Ok(());
        }
        let missing = (0..blob.chunk_count()).filter(|&c| !blob.has_chunk(c));
        let mut fetches = futures::stream::iter(missing)
            .map(|c| async move {
                self.ensure_chunk(target, blob, c).await?;
                progress(crate::cache::chunk_len(blob.size, blob.chunk_size, c));
                Ok::<_, FetchError>(())
            })
            .buffer_unordered(MAX_CONCURRENT_REQUESTS);
        while let Some(done) = fetches.next().await {
            done?;
        }
        blob.recount_verified();
        let finished = {
            let blob = Arc::clone(blob);
            blocking(move || blob.finish_chunked()).await
        };
        match finished.map_err(|e| local(target, e))? {
            Ok(()) => Ok(()),
            Err(actual) => Err(FetchError::Inconsistent {
                target: target.to_string(),
                actual,
            }),
        }
    }
}

/// Joins the fetch of `key` under way in `flights`, or starts it with
/// `fetch`; `already` says, under the map's lock, that there is nothing to
/// do (a finished fetch leaves its result visible before it leaves the map,
/// so a caller sees one or the other). Every joiner gets the leader's result.
async fn join_flight<T: Clone, F>(
    flights: &Flights<T>,
    key: ChunkKey,
    already: impl FnOnce() -> Option<T>,
    fetch: impl FnOnce() -> F,
) -> Result<T, FetchError>
where
    F: Future<Output = Result<T, FetchError>>,
{
    let flight = {
        let mut map = flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(done) = already() {
            return Ok(done);
        }
        Arc::clone(map.entry(key).or_default())
    };
    let result = flight.get_or_init(fetch).await.clone();
    let mut map = flights.lock().unwrap_or_else(|p| p.into_inner());
    if map.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
        map.remove(&key);
    }
    result
}

/// Publishes a partial file whose chunks are all verified, counting the bits
/// other processes set: when processes share the work, the one that sets the
/// last bit may not know the others did theirs. Costs a scan of the map.
pub fn finish_if_verified(target: &Target, blob: &Arc<Blob>) {
    if blob.is_complete() {
        return;
    }
    blob.recount_verified();
    if blob.all_chunks_verified() {
        finish_in_background(target, blob);
    }
}

/// Once every chunk is verified: checks the whole file against its sha256
/// and publishes it as complete, off the path of any reader (the chunks are
/// already servable). At most one runs at a time per blob.
pub fn finish_in_background(target: &Target, blob: &Arc<Blob>) {
    let (target, blob) = (target.clone(), Arc::clone(blob));
    tokio::task::spawn_blocking(move || match blob.finish_chunked() {
        Ok(Ok(())) => {}
        Ok(Err(actual)) => warn!(
            model = target.model_id(),
            file = %target.entry().path,
            expected = %blob.digest,
            %actual,
            "every chunk matches its hash but the whole file does not: the manifest is inconsistent"
        ),
        Err(e) => warn!(
            model = target.model_id(),
            file = %target.entry().path,
            error = %e,
            "cannot complete the cached file"
        ),
    });
}

fn describe(e: &AttemptError) -> String {
    match e {
        AttemptError::Source(e) => e.to_string(),
        AttemptError::Mismatch { actual } => format!("chunk hash mismatch (got {actual})"),
        AttemptError::Local(e) => e.to_string(),
    }
}

fn local(target: &Target, e: io::Error) -> FetchError {
    FetchError::Local {
        target: target.to_string(),
        source: Arc::new(e),
    }
}
