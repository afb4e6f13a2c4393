//! Files without chunk hashes: fetched whole in parallel ranges into a
//! private temporary file (or memory, when the cache is full), verified
//! against their sha256, and only then published and served.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use futures::future::join_all;
use tracing::{Instrument as _, info_span, warn};

use super::flight::join_flight;
use super::writer::{Memory, RangeWriter, TempFile, WholeOut, WriteAt};
use super::{FetchError, Fetcher, RECENT_UNCACHED_BYTES, Target, Urgency, WHOLE, local};
use crate::cache::Blob;
use crate::fileio::blocking;
use crate::source::Location;

impl Fetcher {
    /// Fetches a file without chunk hashes into a private temporary file in
    /// parallel ranges, verifies it whole, then publishes it. A mismatch is
    /// retried with the next source first.
    pub(super) async fn fetch_whole(
        &self,
        target: &Target,
        blob: &Arc<Blob>,
        urgency: Urgency,
    ) -> Result<(), FetchError> {
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
            .whole_rounds(target, blob, urgency, || {
                temp().map_err(|e| local(target, e))
            })
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
                .whole_rounds(target, blob, Urgency::Demand, || {
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
        urgency: Urgency,
        make: impl Fn() -> Result<O, FetchError>,
    ) -> Result<O, FetchError> {
        let entry = target.entry();
        let locations = target.locations();
        let mut attempts = Vec::new();
        let first_order = self.health.order(&locations, std::time::Instant::now());
        for round in 0..locations.len() {
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
                    urgency,
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
        urgency: Urgency,
    ) -> Result<(), FetchError> {
        let _slot = self.request_slot(urgency).await;
        let mut writer = RangeWriter::unchecked(out, range);
        self.fetch_from_sources(target, order, &mut writer)
            .await
            .map(drop)
    }
}
