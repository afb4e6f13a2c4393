//! Getting verified bytes into the cache: one fetch per chunk however many
//! readers want it (single flight), ranged requests resumed where they broke,
//! retries with backoff, failover across a file's sources, and verification
//! before anything is marked present.

mod attempt;
mod flight;
mod health;
mod pace;
mod publish;
pub mod readahead;
mod retry;
mod stream;
#[cfg(test)]
mod tests;
mod uncached;
mod whole;
mod writer;

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::join_all;
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, info_span, warn};

pub use publish::Busy;
pub use retry::RetryPolicy;
pub use stream::{Streamed, Tally};

use crate::cache::chunk_map::PROGRESS_UNIT;
use crate::cache::{Blob, BlobKey, Cache, ChunkClaim};
use crate::fileio::blocking;
use crate::hash::Digest;
use crate::manifest::{FileEntry, Manifest, Model};
use crate::metrics::Metrics;
use crate::source::{Location, Source};
use flight::{ChunkFlights, Flights, Lead, Next, Seen, join_flight};
use writer::{ChunkDone, RangeWriter, Stop};

/// Range requests in flight at once per process, for each [`Urgency`];
/// more only queue at the server and spread the same bandwidth thinner.
pub const MAX_CONCURRENT_REQUESTS: usize = 16;

/// The most one ranged request asks for: enough to keep a fast link busy
/// between requests, while a readahead window still spreads over several
/// requests in parallel (one connection may be capped, a mirror's say).
pub const MAX_REQUEST_BYTES: u64 = 8 << 20;

/// Memory for chunks served uncached while the cache is full: a few chunks
/// of each of several readers (8 MiB chunks: 8 of them).
const RECENT_UNCACHED_BYTES: usize = 64 << 20;

/// Key of the single in-flight fetch of a whole file without chunk hashes.
const WHOLE: u64 = u64::MAX;

/// How soon bytes are wanted: each kind has its own request slots, so a
/// reader waiting on a chunk never queues behind readahead or a prefetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Urgency {
    /// A reader is waiting.
    Demand,
    /// Readahead, prefetch, and a model's small files fetched ahead.
    Background,
}

/// One file of one model of a manifest.
#[derive(Clone)]
pub struct Target {
    /// Its model alone, not the manifest: a file open for days must not
    /// keep every catalog a reload replaced meanwhile.
    model: Arc<Model>,
    file: usize,
}

impl Target {
    pub fn new(model: Arc<Model>, file: usize) -> Self {
        Target { model, file }
    }

    /// File `file` of model `model` of `manifest`.
    pub fn of(manifest: &Manifest, model: usize, file: usize) -> Self {
        Target::new(Arc::clone(&manifest.models[model]), file)
    }

    pub fn model_id(&self) -> &str {
        &self.model.id
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Index of the file in its model.
    pub fn file_index(&self) -> usize {
        self.file
    }

    pub fn entry(&self) -> &FileEntry {
        &self.model.files[self.file]
    }

    /// Where the file is fetched from, in order.
    pub fn locations(&self) -> Vec<Location> {
        self.model.locations(self.entry())
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

pub struct Fetcher {
    sources: Box<dyn Source>,
    retry: RetryPolicy,
    demand: Semaphore,
    background: Semaphore,
    chunks: ChunkFlights,
    /// Whole-file downloads under way.
    whole: Flights<()>,
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
    quiet: Arc<publish::Quiet>,
}

/// How a request over many sources ended, when it did not fail.
#[derive(PartialEq)]
enum Ended {
    Done,
    /// The run's reader went away; what verified so far stays.
    Cancelled,
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
            demand: Semaphore::new(MAX_CONCURRENT_REQUESTS),
            background: Semaphore::new(MAX_CONCURRENT_REQUESTS),
            chunks: ChunkFlights::default(),
            whole: Mutex::default(),
            uncached: Mutex::default(),
            recent_uncached: Mutex::default(),
            told_full: AtomicBool::new(false),
            cache,
            metrics,
            health: health::SourceHealth::default(),
            quiet: Arc::default(),
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

    /// One of the [`MAX_CONCURRENT_REQUESTS`] slots of `urgency`, held
    /// from before a run of chunks is claimed until it is verified or given
    /// up: retries and failover included, so a run once started is not
    /// overtaken.
    async fn request_slot(&self, urgency: Urgency) -> tokio::sync::SemaphorePermit<'_> {
        match urgency {
            Urgency::Demand => &self.demand,
            Urgency::Background => &self.background,
        }
        .acquire()
        .await
        .expect("the semaphore is never closed")
    }

    /// Makes chunk `index` of `blob` verified and present, for a reader.
    #[cfg(test)]
    pub async fn ensure_chunk(
        &self,
        target: &Target,
        blob: &Arc<Blob>,
        index: u64,
    ) -> Result<(), FetchError> {
        let mut results = self
            .ensure_chunks(target, blob, index..index + 1, Urgency::Demand)
            .await;
        results.pop().expect("one chunk, one result")
    }

    /// Makes the chunks `chunks` of `blob` verified and present: joins the
    /// fetches under way, and fetches the rest in runs of consecutive
    /// chunks, one ranged request each. One result per chunk, in order.
    pub async fn ensure_chunks(
        &self,
        target: &Target,
        blob: &Arc<Blob>,
        chunks: Range<u64>,
        urgency: Urgency,
    ) -> Vec<Result<(), FetchError>> {
        let mut results: Vec<Option<Result<(), FetchError>>> =
            vec![None; (chunks.end - chunks.start) as usize];
        // Each round settles every chunk but those whose leader gave them
        // up unresolved (a cancelled readahead; another process's claim on
        // a chunk past the first of a run); those are looked at again, and
        // then led by this task. Every run this task leads waits for the
        // claim on its first chunk, so a round settles at least one chunk
        // unless another task's cancelled readahead gave them all up.
        let mut idle_rounds = 0;
        while idle_rounds < MAX_IDLE_ROUNDS {
            let pending: Vec<u64> = chunks
                .clone()
                .filter(|c| results[(c - chunks.start) as usize].is_none())
                .collect();
            if pending.is_empty() {
                break;
            }
            let mut waits = Vec::new();
            let leads = self.chunks.scan(
                blob.key,
                pending,
                |c| blob.has_chunk(c),
                |c, seen| match seen {
                    Seen::Present => {
                        results[(c - chunks.start) as usize] = Some(Ok(()));
                        Next::Skip
                    }
                    Seen::InFlight(rx) => {
                        waits.push((c, rx));
                        Next::Skip
                    }
                    Seen::Free => Next::Lead,
                },
            );
            waits.extend(leads.iter().map(|l| (l.chunk(), l.outcome())));
            let runs = group_runs(blob, leads).into_iter().map(|run| async move {
                let _slot = self.request_slot(urgency).await;
                // Its outcome reaches this task through the leads.
                let _ = self.fetch_run(target, blob, run, true, None).await;
            });
            let outcomes = async {
                join_all(
                    waits
                        .into_iter()
                        .map(|(c, rx)| async move { (c, flight::wait(rx).await) }),
                )
                .await
            };
            let (_, outcomes) = futures::join!(join_all(runs), outcomes);
            let before = results.iter().filter(|r| r.is_some()).count();
            for (c, outcome) in outcomes {
                results[(c - chunks.start) as usize] = outcome;
            }
            let settled = results.iter().filter(|r| r.is_some()).count() > before;
            idle_rounds = if settled { 0 } else { idle_rounds + 1 };
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(local(
                        target,
                        io::Error::other("the chunk's fetch was given up too many times"),
                    ))
                })
            })
            .collect()
    }

    /// Makes a file without chunk hashes complete: fetched whole, verified.
    pub async fn ensure_whole(
        &self,
        target: &Target,
        blob: &Arc<Blob>,
        urgency: Urgency,
    ) -> Result<(), FetchError> {
        join_flight(
            &self.whole,
            (blob.key, WHOLE),
            || blob.is_complete().then_some(()),
            || {
                self.fetch_whole(target, blob, urgency)
                    .instrument(info_span!("fetch_whole", file = %target))
            },
        )
        .await
    }

    /// Fetches what is missing of `chunks` in the background (readahead,
    /// prefetch): chunks present or in flight are skipped, the rest fetched
    /// in runs, one request slot held throughout. Stops early once `cancel`
    /// is set (the reader it was for went away).
    pub async fn fill(
        &self,
        target: &Target,
        blob: &Arc<Blob>,
        chunks: Range<u64>,
        cancel: Option<&AtomicBool>,
    ) -> Result<(), FetchError> {
        let _slot = self.request_slot(Urgency::Background).await;
        let mut from = chunks.start;
        while from < chunks.end && !cancel.is_some_and(|c| c.load(Ordering::Acquire)) {
            let mut taken = 0;
            let run = self.chunks.scan(
                blob.key,
                from..chunks.end,
                |c| blob.has_chunk(c),
                |c, seen| match seen {
                    Seen::Free if taken == 0 || joins_run(blob, taken, c) => {
                        taken += 1;
                        Next::Lead
                    }
                    _ if taken == 0 => Next::Skip,
                    _ => Next::Stop,
                },
            );
            let Some(last) = run.last() else { break };
            from = last.chunk() + 1;
            if self.fetch_run(target, blob, run, false, cancel).await? == Ended::Cancelled {
                break;
            }
        }
        Ok(())
    }

    /// Fetches a run of consecutive chunks this task leads with one ranged
    /// request (retried, resumed, failed over as one), handing each chunk
    /// on as it verifies. Every lead is resolved, or dropped unresolved for
    /// its waiters to try again (a claim another process holds, a cancel).
    /// The caller holds a request slot.
    async fn fetch_run(
        &self,
        target: &Target,
        blob: &Arc<Blob>,
        run: Vec<Lead<'_>>,
        wait_first: bool,
        cancel: Option<&AtomicBool>,
    ) -> Result<Ended, FetchError> {
        let first = run.first().map_or(0, Lead::chunk);
        let span = info_span!("fetch_run", file = %target, first, chunks = run.len());
        let started = std::time::Instant::now();
        let busy = self.quiet.busy();
        let result = async {
            let mut state = RunState {
                blob,
                leads: VecDeque::from(run),
                claims: VecDeque::new(),
                cancel,
            };
            let result = match self.prepare_run(target, &mut state, wait_first).await {
                Ok(Some(range)) => self.stream_run(target, &mut state, range).await,
                Ok(None) => Ok(Ended::Done),
                Err(e) => Err(e),
            };
            if let Err(e) = &result {
                state
                    .leads
                    .drain(..)
                    .for_each(|l| l.resolve(Err(e.clone())));
            }
            result
        }
        .instrument(span)
        .await;
        self.metrics.fetch_took(started.elapsed());
        drop(busy);
        if blob.all_chunks_verified() {
            self.finish_in_background(target, blob);
        }
        result
    }

    /// Claims the run's chunks from other processes and settles those that
    /// need no fetch after all; returns the byte range left to fetch, with
    /// its cache space reserved.
    async fn prepare_run(
        &self,
        target: &Target,
        state: &mut RunState<'_, '_>,
        wait_first: bool,
    ) -> Result<Option<Range<u64>>, FetchError> {
        let blob = state.blob;
        if let Some(actual) = blob.failed_whole() {
            return Err(FetchError::Inconsistent {
                target: target.to_string(),
                actual,
            });
        }
        // With `wait_first`, the run waits for another process's fetch of
        // its first chunk; past that (and for readahead, from the start) a
        // chunk another process holds ends the run: its waiters look again.
        for (i, lead) in state.leads.iter().enumerate() {
            let c = lead.chunk();
            let claim = if i == 0 && wait_first {
                let b = Arc::clone(blob);
                Some(blocking(move || b.claim_chunk(c)).await)
            } else {
                blob.try_claim_chunk(c).transpose()
            };
            match claim {
                Some(claim) => state.claims.push_back(claim.map_err(|e| local(target, e))?),
                None => break,
            }
        }
        state.leads.truncate(state.claims.len());
        // Done meanwhile by another process, or verified before a power
        // loss and intact: no fetch. At the front only; a chunk present
        // further on ends the run before it, and a suspect one is fetched
        // again with the rest.
        while let Some(c) = state.leads.front().map(Lead::chunk) {
            let done = blob.has_chunk(c) || {
                blob.is_suspect(c) && {
                    let b = Arc::clone(blob);
                    blocking(move || b.confirm_suspect(c))
                        .await
                        .map_err(|e| local(target, e))?
                }
            };
            if !done {
                break;
            }
            debug!(file = %target, chunk = c, "verified by another process, or before an unclean shutdown");
            state.settle_front();
            self.finish_if_verified(target, blob);
        }
        if let Some(cut) = state.leads.iter().position(|l| blob.has_chunk(l.chunk())) {
            state.leads.truncate(cut);
            state.claims.truncate(cut);
        }
        let (Some(first), Some(last)) = (state.leads.front(), state.leads.back()) else {
            return Ok(None);
        };
        let cs = blob.chunk_size;
        let range = first.chunk() * cs..((last.chunk() + 1) * cs).min(blob.size);
        let (for_run, r) = (Arc::clone(blob), range.clone());
        self.make_room(target, range.end - range.start, move || for_run.allocate(r))
            .await?;
        Ok(Some(range))
    }

    /// Streams `range` (the run's chunks) from the sources, resuming the
    /// first chunk after what an earlier, interrupted fetch wrote of it.
    async fn stream_run(
        &self,
        target: &Target,
        state: &mut RunState<'_, '_>,
        range: Range<u64>,
    ) -> Result<Ended, FetchError> {
        let blob = state.blob;
        let first = range.start / blob.chunk_size;
        // Never the whole chunk: its last byte completes (and verifies) it.
        let len = crate::cache::chunk_len(blob.size, blob.chunk_size, first);
        let prefix = blob.progress(first).min(len - 1) / PROGRESS_UNIT * PROGRESS_UNIT;
        let resumed = if prefix > 0 {
            let b = Arc::clone(blob);
            blocking(move || {
                let mut hasher = Sha256::new();
                b.hash_prefix(first, prefix, &mut hasher)?;
                Ok(hasher)
            })
            .await
            .inspect_err(|e| debug!(file = %target, chunk = first, error = %e, "cannot read back a chunk's start; fetching it whole"))
            .ok()
        } else {
            None
        };
        let locations = target.locations();
        let order = self.health.order(&locations, std::time::Instant::now());
        let mut writer = RangeWriter::chunks(blob.as_ref(), blob, range, state);
        if let Some(hasher) = resumed {
            debug!(file = %target, chunk = first, bytes = prefix, "resuming inside the chunk");
            writer.resume(prefix, hasher);
        }
        self.fetch_from_sources(target, &order, &mut writer).await
    }
}

/// Rounds in a row that settle nothing before [`Fetcher::ensure_chunks`]
/// gives up on chunks whose leaders keep dropping them.
const MAX_IDLE_ROUNDS: usize = 16;

/// The chunks of `chunks` that are still not verified.
fn missing_of(blob: &Blob, chunks: impl IntoIterator<Item = u64>) -> Vec<u64> {
    chunks.into_iter().filter(|&c| !blob.has_chunk(c)).collect()
}

/// Chunks one request asks for at most.
fn run_chunks(blob: &Blob) -> u64 {
    (MAX_REQUEST_BYTES / blob.chunk_size).max(1)
}

/// Whether `chunk` may follow a run of `len` chunks in its request: at most
/// [`run_chunks`] to a request, and a chunk that an interrupted fetch left
/// partly written starts a run of its own, to resume inside it.
fn joins_run(blob: &Blob, len: u64, chunk: u64) -> bool {
    len < run_chunks(blob) && blob.progress(chunk) == 0
}

/// Splits leads (in chunk order) into runs of consecutive chunks, one
/// request each (see [`joins_run`]).
fn group_runs<'f>(blob: &Blob, leads: Vec<Lead<'f>>) -> Vec<Vec<Lead<'f>>> {
    let mut runs: Vec<Vec<Lead<'f>>> = Vec::new();
    for lead in leads {
        let c = lead.chunk();
        match runs.last_mut() {
            Some(run)
                if run.last().is_some_and(|l| l.chunk() + 1 == c)
                    && joins_run(blob, run.len() as u64, c) =>
            {
                run.push(lead)
            }
            _ => runs.push(vec![lead]),
        }
    }
    runs
}

/// The chunks of one run being fetched, front first, with their claims:
/// each verified chunk is marked, its claim let go and its waiters woken
/// before the next one streams in.
struct RunState<'a, 'f> {
    blob: &'a Arc<Blob>,
    leads: VecDeque<Lead<'f>>,
    claims: VecDeque<ChunkClaim>,
    cancel: Option<&'a AtomicBool>,
}

impl RunState<'_, '_> {
    /// The front chunk is verified: wake its waiters, let go of its claim.
    fn settle_front(&mut self) {
        self.claims.pop_front();
        if let Some(lead) = self.leads.pop_front() {
            lead.resolve(Ok(()));
        }
    }
}

impl ChunkDone for RunState<'_, '_> {
    fn written(&mut self, chunk: u64, bytes: u64) {
        self.blob.record_progress(chunk, bytes);
    }

    fn verified(&mut self, chunk: u64) -> Result<(), Stop> {
        debug_assert_eq!(self.leads.front().map(Lead::chunk), Some(chunk));
        self.blob.mark_verified(chunk);
        self.blob.record_progress(chunk, 0);
        self.settle_front();
        match self.cancel {
            Some(c) if c.load(Ordering::Acquire) && !self.leads.is_empty() => Err(Stop::Cancelled),
            _ => Ok(()),
        }
    }
}

fn local(target: &Target, e: io::Error) -> FetchError {
    FetchError::Local {
        target: target.to_string(),
        source: Arc::new(e),
    }
}
