//! Reads when the cache is full: verified chunks (and small files verified
//! only whole) fetched into memory and served from there, never stored.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tracing::{Instrument as _, info_span, warn};

use super::flight::join_flight;
use super::writer::{Memory, NoBookkeeping, RangeWriter};
use super::{ChunkKey, FetchError, Fetcher, RECENT_UNCACHED_BYTES, Target, Urgency};
use crate::cache::Blob;

impl Fetcher {
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
            let _slot = self.request_slot(Urgency::Demand).await;
            let start = index * blob.chunk_size;
            let range = start..(start + blob.chunk_size).min(blob.size);
            let memory = Memory {
                start,
                bytes: Mutex::new(vec![0; (range.end - start) as usize]),
            };
            let locations = target.locations();
            let order = self.health.order(&locations, std::time::Instant::now());
            let mut none = NoBookkeeping;
            let mut writer = RangeWriter::chunks(&memory, blob, range, &mut none);
            self.fetch_from_sources(target, &order, &mut writer).await?;
            drop(writer);
            Ok(self.keep_uncached(key, memory))
        };
        join_flight(&self.uncached, key, || self.recent_uncached(&key), fetch)
            .instrument(info_span!("fetch_uncached", file = %target, chunk = index))
            .await
    }

    /// Counts verified bytes fetched into memory and keeps them for the next
    /// requests; called before the fetch's flight ends, so that no reader
    /// finds neither.
    pub(super) fn keep_uncached(&self, key: ChunkKey, memory: Memory) -> Arc<[u8]> {
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
    pub(super) fn recent_uncached(&self, key: &ChunkKey) -> Option<Arc<[u8]>> {
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
}
