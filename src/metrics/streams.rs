//! Figures of model streams (`fetch::stream`): per model, the bytes a stream
//! verified, its rate, what is left and whether it runs; and how streams
//! ended. For `/metrics`, `/healthz` and the mount's record that `status`
//! reads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndLabel {
    end: &'static str,
}

/// How a stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// Nothing of its files was left to fetch.
    Done,
    /// Every file of the model was closed for a while.
    Closed,
    /// The cache had no room for more.
    CacheFull,
    /// A file could not be fetched (its readers get the error).
    Failed,
}

impl StreamEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamEnd::Done => "done",
            StreamEnd::Closed => "closed",
            StreamEnd::CacheFull => "cache_full",
            StreamEnd::Failed => "failed",
        }
    }
}

/// One stream of one model, as it goes.
pub struct StreamProgress {
    /// Bytes of its files in all, and of them verified when it started.
    pub total: u64,
    pub present: u64,
    fetched: AtomicU64,
    started: Instant,
    ended: Mutex<Option<(Instant, StreamEnd)>>,
    counter: Counter,
}

impl StreamProgress {
    /// Chunks of `bytes` verified, by the stream or a reader of its files.
    pub fn add(&self, bytes: u64) {
        self.fetched.fetch_add(bytes, Ordering::Relaxed);
        self.counter.inc_by(bytes);
    }

    pub fn end(&self, how: StreamEnd) {
        *self.ended.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), how));
    }

    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// How it ended; `None` while it runs.
    pub fn ended(&self) -> Option<StreamEnd> {
        self.ended_at().map(|(_, how)| how)
    }

    fn ended_at(&self) -> Option<(Instant, StreamEnd)> {
        *self.ended.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn seconds(&self) -> f64 {
        let until = self.ended_at().map_or_else(Instant::now, |(at, _)| at);
        until.duration_since(self.started).as_secs_f64()
    }

    /// Bytes a second over its life so far.
    pub fn rate(&self) -> f64 {
        let secs = self.seconds();
        if secs > 0.0 {
            self.fetched() as f64 / secs
        } else {
            0.0
        }
    }

    /// Bytes of its files not verified yet.
    pub fn remaining(&self) -> u64 {
        self.total.saturating_sub(self.present + self.fetched())
    }

    /// The JSON `/healthz` and the mount record show.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "bytes": self.fetched(),
            "total_bytes": self.total,
            "cached_at_start": self.present,
            "remaining_bytes": self.remaining(),
            "rate_bytes_per_second": self.rate().round(),
            "seconds": (self.seconds() * 10.0).round() / 10.0,
            "state": self.ended().map_or("streaming", StreamEnd::as_str),
        })
    }
}

/// Every model's latest stream, and the series they feed.
#[derive(Default)]
pub(super) struct StreamFigures {
    latest: Mutex<BTreeMap<String, Arc<StreamProgress>>>,
    bytes: Family<ModelLabel, Counter>,
    remaining: Family<ModelLabel, Gauge>,
    rate: Family<ModelLabel, Gauge>,
    active: Family<ModelLabel, Gauge>,
    ended: Family<EndLabel, Counter>,
}

impl StreamFigures {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "modelfs_stream_bytes",
            "Bytes of a model's weights verified while a stream of it ran",
            self.bytes.clone(),
        );
        registry.register(
            "modelfs_stream_remaining_bytes",
            "Bytes of a model's streamed files not verified yet (latest stream)",
            self.remaining.clone(),
        );
        registry.register(
            "modelfs_stream_rate_bytes_per_second",
            "Bytes a second a model's latest stream verified",
            self.rate.clone(),
        );
        registry.register(
            "modelfs_stream_active",
            "1 while a model streams",
            self.active.clone(),
        );
        registry.register(
            "modelfs_streams_ended",
            "Streams ended, by how: done, closed (every file closed), cache_full, failed",
            self.ended.clone(),
        );
    }

    pub(super) fn started(&self, model: &str, total: u64, present: u64) -> Arc<StreamProgress> {
        let label = ModelLabel {
            model: model.to_owned(),
        };
        let progress = Arc::new(StreamProgress {
            total,
            present,
            fetched: AtomicU64::new(0),
            started: Instant::now(),
            ended: Mutex::new(None),
            counter: self.bytes.get_or_create(&label).clone(),
        });
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(model.to_owned(), Arc::clone(&progress));
        progress
    }

    pub(super) fn ended(&self, how: StreamEnd) {
        self.ended
            .get_or_create(&EndLabel { end: how.as_str() })
            .inc();
    }

    /// Sets the gauges from the streams as they are now.
    pub(super) fn refresh(&self) {
        for (model, p) in self.latest().iter() {
            let label = ModelLabel {
                model: model.clone(),
            };
            let gauge = |g: &Family<ModelLabel, Gauge>, v: u64| {
                g.get_or_create(&label)
                    .set(v.try_into().unwrap_or(i64::MAX));
            };
            gauge(&self.remaining, p.remaining());
            gauge(&self.rate, p.rate() as u64);
            gauge(&self.active, u64::from(p.ended().is_none()));
        }
    }

    pub(super) fn latest(&self) -> BTreeMap<String, Arc<StreamProgress>> {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
