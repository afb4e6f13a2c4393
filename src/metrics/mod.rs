//! Counters shared by every layer, exported in Prometheus text format, and
//! the last error of each source for `/healthz`. Metric names live here only.

pub mod http;
mod sources;
mod streams;

pub use sources::SourceState;
pub use streams::{StreamEnd, StreamProgress};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

// Counters get `_total` appended by the encoder.
const FETCH_BYTES: &str = "modelfs_fetch_bytes";
const CACHE_HIT_BYTES: &str = "modelfs_cache_hit_bytes";
const CACHE_MISS_BYTES: &str = "modelfs_cache_miss_bytes";
const CHUNK_VERIFY_FAILURES: &str = "modelfs_chunk_verify_failures";
const SOURCE_FAILOVERS: &str = "modelfs_source_failovers";
const EVICTIONS: &str = "modelfs_evictions";
const CACHE_BYTES: &str = "modelfs_cache_bytes";
const FETCH_DURATION: &str = "modelfs_fetch_duration_seconds";
const FUSE_OPS: &str = "modelfs_fuse_ops";
const OPENS: &str = "modelfs_opens";
const UNCACHED_BYTES: &str = "modelfs_uncached_bytes";
const CATALOG_RELOADS: &str = "modelfs_catalog_reloads";
const SIGNATURE_CHECKS: &str = "modelfs_signature_checks";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// The last failure seen from one source.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SourceError {
    pub error: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

pub struct Metrics {
    registry: Registry,
    fetch_bytes: Family<SourceLabel, Counter>,
    cache_hit_bytes: Counter,
    cache_miss_bytes: Counter,
    verify_failures: Counter,
    failovers: Counter,
    evictions: Counter,
    cache_bytes: Gauge,
    fetch_duration: Histogram,
    fuse_ops: Family<OpLabel, Counter>,
    opens: Family<ModeLabel, Counter>,
    uncached_bytes: Counter,
    streams: streams::StreamFigures,
    sources: sources::SourceFigures,
    catalog: std::sync::Mutex<Option<Catalog>>,
    catalog_reloads: Family<ResultLabel, Counter>,
    signature_checks: Family<ResultLabel, Counter>,
}

/// Now, in Unix seconds.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The catalog a mount serves, for `/healthz` and `modelfs reload`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Catalog {
    /// 1 for the catalog the mount started with.
    pub generation: u64,
    /// Unix seconds.
    pub loaded_at: u64,
    /// The manifest's path or URL.
    pub source: String,
    pub models: usize,
    /// Reloads tried (a signal, `modelfs reload`, a change seen), whatever
    /// came of them.
    pub reloads: u64,
    /// Reloads asked for and not yet done: `modelfs reload` waits for none.
    pub reloads_pending: u64,
    /// The mount's process, and when it started (see
    /// [`crate::fileio::process_started`]): whom `modelfs reload` signals.
    pub pid: u32,
    pub started: Option<u64>,
    /// Why the manifest at `source` is not what is served (the catalog
    /// from before is: the last reload failed, or a kept copy stood in at
    /// start), if it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let fetch_bytes = Family::<SourceLabel, Counter>::default();
        let (cache_hit_bytes, cache_miss_bytes) = (Counter::default(), Counter::default());
        let (verify_failures, failovers) = (Counter::default(), Counter::default());
        let evictions = Counter::<u64>::default();
        let cache_bytes = Gauge::default();
        // 1 ms .. ~65 s: a chunk from a local disk up to a slow mirror with retries.
        let fetch_duration = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        let fuse_ops = Family::<OpLabel, Counter>::default();
        let opens = Family::<ModeLabel, Counter>::default();
        let uncached_bytes = Counter::default();
        let catalog_reloads = Family::<ResultLabel, Counter>::default();
        let signature_checks = Family::<ResultLabel, Counter>::default();
        registry.register(
            SIGNATURE_CHECKS,
            "Checks of models' signature bundles, by result: verified, refused (the model is not \
             served), unavailable (the bundle could not be fetched; tried again at the next open)",
            signature_checks.clone(),
        );
        registry.register(
            CATALOG_RELOADS,
            "Reloads of the manifest, by result: loaded (a new catalog is served), unchanged, \
             failed (the catalog from before stays)",
            catalog_reloads.clone(),
        );
        registry.register(
            FETCH_BYTES,
            "Bytes received from each source",
            fetch_bytes.clone(),
        );
        registry.register(
            CACHE_HIT_BYTES,
            "Bytes read that were already cached",
            cache_hit_bytes.clone(),
        );
        registry.register(
            CACHE_MISS_BYTES,
            "Bytes read that had to be fetched first",
            cache_miss_bytes.clone(),
        );
        registry.register(
            CHUNK_VERIFY_FAILURES,
            "Chunks or files whose hash did not match",
            verify_failures.clone(),
        );
        registry.register(
            SOURCE_FAILOVERS,
            "Times a fetch moved on to the next source",
            failovers.clone(),
        );
        registry.register(EVICTIONS, "Files evicted from the cache", evictions.clone());
        registry.register(
            CACHE_BYTES,
            "Bytes the cache holds on disk",
            cache_bytes.clone(),
        );
        registry.register(
            FETCH_DURATION,
            "Time to fetch and verify one chunk",
            fetch_duration.clone(),
        );
        registry.register(FUSE_OPS, "FUSE requests by operation", fuse_ops.clone());
        registry.register(
            OPENS,
            "Files opened, by how their reads are served: passthrough (by the kernel from \
             the cache file), complete (by modelfs from the cache file), partial (fetched \
             as needed)",
            opens.clone(),
        );
        registry.register(
            UNCACHED_BYTES,
            "Bytes of chunks fetched, verified and served from memory because the cache had no room",
            uncached_bytes.clone(),
        );
        let streams = streams::StreamFigures::default();
        streams.register(&mut registry);
        let sources = sources::SourceFigures::default();
        sources.register(&mut registry);
        Metrics {
            registry,
            fetch_bytes,
            cache_hit_bytes,
            cache_miss_bytes,
            verify_failures,
            failovers,
            evictions,
            cache_bytes,
            fetch_duration,
            fuse_ops,
            opens,
            uncached_bytes,
            streams,
            sources,
            catalog: std::sync::Mutex::new(None),
            catalog_reloads,
            signature_checks,
        }
    }

    pub fn signature_checked(&self, result: &'static str) {
        self.signature_checks
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// `source` is a label safe to export: an origin, never a full URL.
    pub fn fetched(&self, source: &str, bytes: u64) {
        let label = SourceLabel {
            source: source.to_owned(),
        };
        self.fetch_bytes.get_or_create(&label).inc_by(bytes);
    }

    /// `mode`: "passthrough", "complete" or "partial".
    pub fn opened(&self, mode: &'static str) {
        self.opens.get_or_create(&ModeLabel { mode }).inc();
    }

    pub fn served_uncached(&self, bytes: u64) {
        self.uncached_bytes.inc_by(bytes);
    }

    pub fn cache_hit(&self, bytes: u64) {
        self.cache_hit_bytes.inc_by(bytes);
    }

    pub fn cache_miss(&self, bytes: u64) {
        self.cache_miss_bytes.inc_by(bytes);
    }

    pub fn verify_failed(&self) {
        self.verify_failures.inc();
    }

    pub fn failed_over(&self) {
        self.failovers.inc();
    }

    pub fn evicted(&self, files: u64) {
        self.evictions.inc_by(files);
    }

    pub fn fetch_took(&self, elapsed: Duration) {
        self.fetch_duration.observe(elapsed.as_secs_f64());
    }

    pub fn fuse_op(&self, op: &'static str) {
        self.fuse_ops.get_or_create(&OpLabel { op }).inc();
    }

    pub fn source_failed(&self, source: &str, error: &str) {
        self.sources.failed(source, error);
    }

    /// A request of `source` fell behind (`why`) and moved on.
    pub fn hedged(&self, source: &str, why: &'static str) {
        self.sources.hedged(source, why);
    }

    /// `source` is tried last for `span`, for `why`.
    pub fn demoted(&self, source: &str, why: &'static str, span: Duration) {
        self.sources.demoted(source, why, span);
    }

    pub fn source_rate(&self, source: &str, bytes_per_second: f64) {
        self.sources.rate(source, bytes_per_second);
    }

    /// A catalog of `models` read from `source` is served from now on, at
    /// start or by a reload; `error` says why it is a kept copy rather
    /// than what `source` holds now, if it is.
    pub fn catalog_loaded(&self, source: &str, models: usize, error: Option<String>) {
        let mut catalog = self.catalog.lock().unwrap_or_else(|p| p.into_inner());
        let (generation, reloads, reloads_pending, started) = match &*catalog {
            Some(c) => {
                self.counted_reload("loaded");
                (
                    c.generation + 1,
                    c.reloads + 1,
                    c.reloads_pending.saturating_sub(1),
                    c.started,
                )
            }
            None => (1, 0, 0, None),
        };
        let pid = std::process::id();
        *catalog = Some(Catalog {
            generation,
            loaded_at: unix_now(),
            source: source.to_owned(),
            models,
            reloads,
            reloads_pending,
            pid,
            started: started.or_else(|| crate::fileio::process_started(pid)),
            error,
        });
    }

    /// A reload was asked for; it counts as pending until it is done
    /// (`catalog_loaded` or `catalog_kept`).
    pub fn catalog_reload_asked(&self) {
        let mut catalog = self.catalog.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = &mut *catalog {
            c.reloads_pending += 1;
        }
    }

    /// A reload left the catalog as it was: the manifest was unchanged
    /// (`error` None), or it could not be had or used.
    pub fn catalog_kept(&self, error: Option<String>) {
        let mut catalog = self.catalog.lock().unwrap_or_else(|p| p.into_inner());
        self.counted_reload(if error.is_some() {
            "failed"
        } else {
            "unchanged"
        });
        if let Some(c) = &mut *catalog {
            c.reloads += 1;
            c.error = error;
            c.reloads_pending = c.reloads_pending.saturating_sub(1);
        }
    }

    fn counted_reload(&self, result: &'static str) {
        self.catalog_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    pub fn catalog(&self) -> Option<Catalog> {
        self.catalog
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Each source's last error, rate, hedges and demotion, as `/healthz`
    /// and the mount's record show them.
    pub fn sources(&self) -> BTreeMap<String, SourceState> {
        self.sources.states()
    }

    /// A stream of `model` starts over files of `total` bytes, `present`
    /// of them verified already.
    pub fn stream_started(&self, model: &str, total: u64, present: u64) -> Arc<StreamProgress> {
        self.streams.started(model, total, present)
    }

    pub fn stream_ended(&self, progress: &StreamProgress, how: StreamEnd) {
        progress.end(how);
        self.streams.ended(how);
    }

    /// Each model's latest stream, by model id, as `/healthz` and the mount's
    /// record show it.
    pub fn streams_json(&self) -> serde_json::Value {
        let latest = self.streams.latest();
        let each = latest.iter().map(|(model, p)| (model.clone(), p.to_json()));
        serde_json::Value::Object(each.collect())
    }

    /// The text exposition, with `cache_bytes` as measured now.
    pub fn encode(&self, cache_bytes: u64) -> String {
        self.cache_bytes
            .set(cache_bytes.try_into().unwrap_or(i64::MAX));
        self.streams.refresh();
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_the_contract_series() {
        let m = Metrics::new();
        m.fetched("http://127.0.0.1:8080", 4096);
        m.fuse_op("read");
        m.fetch_took(Duration::from_millis(5));
        let text = m.encode(123);
        for series in [
            "modelfs_fetch_bytes_total{source=\"http://127.0.0.1:8080\"} 4096",
            "modelfs_cache_hit_bytes_total 0",
            "modelfs_cache_miss_bytes_total 0",
            "modelfs_chunk_verify_failures_total 0",
            "modelfs_source_failovers_total 0",
            "modelfs_evictions_total 0",
            "modelfs_cache_bytes 123",
            "modelfs_fetch_duration_seconds_count 1",
            "modelfs_fuse_ops_total{op=\"read\"} 1",
        ] {
            assert!(text.contains(series), "missing {series} in\n{text}");
        }
    }
}
