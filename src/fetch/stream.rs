//! Streaming: the files a loader will read, fetched whole as one pipeline of
//! ranged requests in the order it reads them, behind every reader's own
//! requests. A mount streams a model once a loader starts reading its
//! weights (`fs::streams`); `prefetch` fetches whole models the same way.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::StreamExt as _;

use super::{
    FetchError, Fetcher, MAX_CONCURRENT_REQUESTS, Target, Urgency, local, missing_of, run_chunks,
};
use crate::cache::Blob;
use crate::fileio::blocking;

/// Requests a stream keeps in flight: every background request slot, so a
/// stream alone fills the link. Readers' requests have slots of their own,
/// and readahead queues for the same slots as the stream, in turn.
const STREAM_DEPTH: usize = MAX_CONCURRENT_REQUESTS;

/// One file of a stream, its blob held open: a file some process holds is
/// never evicted, so nothing a stream brought in for a loader goes before
/// the stream ends.
pub struct Streamed {
    pub target: Target,
    pub blob: Arc<Blob>,
}

/// The verified bytes of a stream's files as last reported: each report
/// is what verified since, whoever verified it (the stream, a reader, another
/// process), so the figures add up to what the files hold.
pub struct Tally {
    seen: Vec<AtomicU64>,
}

impl Tally {
    /// Starts from what `files` hold now, which is not reported.
    pub fn new(files: &[Streamed]) -> Self {
        let held = |f: &Streamed| AtomicU64::new(f.blob.presence().bytes(f.blob.size));
        Tally {
            seen: files.iter().map(held).collect(),
        }
    }

    /// Bytes the files held at the start.
    pub fn started_with(&self) -> u64 {
        self.seen.iter().map(|s| s.load(Ordering::Relaxed)).sum()
    }

    /// Tells `progress` what file `i` verified since it was last looked at.
    fn update(&self, i: usize, blob: &Blob, progress: &(dyn Fn(u64) + Sync)) {
        let now = blob.presence().bytes(blob.size);
        let before = self.seen[i].fetch_max(now, Ordering::AcqRel);
        if now > before {
            progress(now - before);
        }
    }
}

/// One request's worth of a stream: chunks of a file, or a file verified
/// only whole.
type Part = (usize, Option<Range<u64>>);

impl Fetcher {
    /// Fetches every chunk of `files` not yet verified, in the order given,
    /// as one pipeline: up to [`STREAM_DEPTH`] requests in flight, each a
    /// run of up to [`super::MAX_REQUEST_BYTES`], the next begun as one
    /// ends, across file boundaries. Chunks present or in flight (a reader's)
    /// are skipped. Stops at the next chunk boundary once `stop` is set.
    /// When the cache is full it starts no more requests (those under way
    /// have their room) and the result says so: a stream neither evicts what
    /// it holds nor fetches into memory. `progress` hears of chunks as they
    /// verify, counted from `tally` (made of the same `files`). One result per file: `Ok` once nothing of it is left to
    /// this stream (a chunk another task was fetching may still be in flight).
    pub async fn stream(
        &self,
        files: &[Streamed],
        stop: &AtomicBool,
        tally: &Tally,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Vec<Result<(), FetchError>> {
        let parts: Vec<Part> = files
            .iter()
            .enumerate()
            .filter(|(_, f)| !f.blob.is_complete())
            .flat_map(|(i, f)| {
                let (blob, count) = (&f.blob, f.blob.chunk_count());
                let step = run_chunks(blob);
                let runs: Vec<Part> = if f.target.entry().is_chunked() {
                    (0..count)
                        .step_by(step as usize)
                        .map(|s| s..(s + step).min(count))
                        .filter(|run| run.clone().any(|c| !blob.has_chunk(c)))
                        .map(|run| (i, Some(run)))
                        .collect()
                } else {
                    vec![(i, None)]
                };
                runs
            })
            .collect();
        let failed: Vec<AtomicBool> = files.iter().map(|_| AtomicBool::new(false)).collect();
        let (failed, full) = (&failed, &AtomicBool::new(false));
        let mut results: Vec<Result<(), FetchError>> = files.iter().map(|_| Ok(())).collect();
        let mut pipeline = futures::stream::iter(parts)
            .map(|(i, run)| async move {
                let f = &files[i];
                let skip = [stop, full, &failed[i]];
                if skip.iter().any(|flag| flag.load(Ordering::Acquire)) {
                    return (i, Ok(()));
                }
                let result = match run {
                    Some(run) => self.fill(&f.target, &f.blob, run, Some(stop)).await,
                    None => {
                        self.ensure_whole(&f.target, &f.blob, Urgency::Background)
                            .await
                    }
                };
                tally.update(i, &f.blob, progress);
                match &result {
                    Err(FetchError::CacheFull { .. }) => full.store(true, Ordering::Release),
                    Err(_) => failed[i].store(true, Ordering::Release),
                    Ok(()) => {}
                }
                (i, result)
            })
            .buffer_unordered(STREAM_DEPTH);
        while let Some((i, result)) = pipeline.next().await {
            if let (Err(e), Ok(())) = (result, &results[i]) {
                results[i] = Err(e);
            }
        }
        // Chunks other tasks were fetching when the stream came to them.
        if !stop.load(Ordering::Acquire) && !full.load(Ordering::Acquire) {
            for (f, result) in files.iter().zip(&mut results) {
                if result.is_ok() {
                    *result = self.settle(&f.target, &f.blob).await;
                }
            }
        }
        // Counted last: readers may have verified chunks the stream skipped.
        files
            .iter()
            .enumerate()
            .for_each(|(i, f)| tally.update(i, &f.blob, progress));
        results
    }

    /// Makes every file of `targets` complete and verified, streamed in the
    /// order given, then checked whole and published; `progress` first gets
    /// the bytes already cached, then what verifies. One result per file.
    pub async fn fetch_files(
        &self,
        targets: &[Target],
        progress: &(dyn Fn(u64) + Sync),
    ) -> Vec<Result<Arc<Blob>, FetchError>> {
        // `None` for a file opened, and so streamed.
        let mut results = Vec::with_capacity(targets.len());
        let mut files = Vec::with_capacity(targets.len());
        for target in targets {
            let (cache, t) = (Arc::clone(&self.cache), target.clone());
            match blocking(move || cache.open_blob(t.entry())).await {
                Ok(blob) => {
                    let target = target.clone();
                    files.push(Streamed { target, blob });
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(local(target, e)))),
            }
        }
        let tally = Tally::new(&files);
        progress(tally.started_with());
        let stop = AtomicBool::new(false);
        let streamed = self.stream(&files, &stop, &tally, progress).await;
        let mut streamed = files.iter().enumerate().zip(streamed);
        for slot in results.iter_mut().filter(|r| r.is_none()) {
            let ((i, f), result) = streamed.next().expect("one result a file streamed");
            let result = match result {
                Ok(()) => self.complete(&f.target, &f.blob).await,
                Err(e) => Err(e),
            };
            tally.update(i, &f.blob, progress);
            *slot = Some(result.map(|()| {
                f.blob.mark_used();
                Arc::clone(&f.blob)
            }));
        }
        results
            .into_iter()
            .map(|r| r.expect("every file has its result"))
            .collect()
    }

    /// Opens `target`'s blob and makes it complete, as [`Fetcher::fetch_files`].
    pub async fn fetch_file(
        &self,
        target: &Target,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Arc<Blob>, FetchError> {
        let mut results = self
            .fetch_files(std::slice::from_ref(target), progress)
            .await;
        results.pop().expect("one file, one result")
    }

    /// After a stream: [`Fetcher::settle`] again (the stream stops early when
    /// the cache is full: this says why), then the whole-file check and
    /// publication.
    /// The chunks of `blob` other tasks or processes were fetching, waited
    /// for, and fetched here if they gave up, as a reader would (a background
    /// slot would keep readers of those chunks waiting behind other
    /// background work).
    async fn settle(&self, target: &Target, blob: &Arc<Blob>) -> Result<(), FetchError> {
        if !target.entry().is_chunked() || blob.is_complete() {
            return Ok(());
        }
        let left = missing_of(blob, 0..blob.chunk_count());
        if let (Some(&first), Some(&last)) = (left.first(), left.last()) {
            for r in self
                .ensure_chunks(target, blob, first..last + 1, Urgency::Demand)
                .await
            {
                r?;
            }
        }
        Ok(())
    }

    async fn complete(&self, target: &Target, blob: &Arc<Blob>) -> Result<(), FetchError> {
        if blob.is_complete() {
            return Ok(());
        }
        if !target.entry().is_chunked() {
            // The stream stopped before it (the cache is full): say why.
            return self.ensure_whole(target, blob, Urgency::Background).await;
        }
        self.settle(target, blob).await?;
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
