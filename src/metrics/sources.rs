//! Figures of each source (origin): its last error, the rate of one request,
//! the requests that fell behind and moved on (hedges), and its demotions.
//! For `/metrics`, `/healthz` and the mount's record that `status` reads.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{SourceLabel, unix_now};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhyLabel {
    source: String,
    why: &'static str,
}

/// What `/healthz` and `status` show of one source.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SourceState {
    /// The last error, and when (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
    /// Bytes per second of one request, a moving average.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_bytes_per_second: Option<u64>,
    /// Requests of it that fell behind and moved on.
    pub hedges: u64,
    pub demotions: u64,
    /// Tried last until then (Unix seconds), and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub demoted_until: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub demoted_for: Option<&'static str>,
}

#[derive(Default)]
pub(super) struct SourceFigures {
    hedges: Family<WhyLabel, Counter>,
    demotions: Family<WhyLabel, Counter>,
    rate: Family<SourceLabel, Gauge<f64, AtomicU64>>,
    states: Mutex<BTreeMap<String, SourceState>>,
}

impl SourceFigures {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "modelfs_source_hedges",
            "Requests that fell behind (why: stalled, slow) and moved to the next source, \
             or (reconnect) to a fresh connection to their only one",
            self.hedges.clone(),
        );
        registry.register(
            "modelfs_source_demotions",
            "Times a source was put last for a while (why: failing, stalled, slow)",
            self.demotions.clone(),
        );
        registry.register(
            "modelfs_source_rate_bytes_per_second",
            "Bytes per second of one request of each source, a moving average",
            self.rate.clone(),
        );
    }

    fn state(&self, source: &str, update: impl FnOnce(&mut SourceState)) {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        update(states.entry(source.to_owned()).or_default());
    }

    pub fn failed(&self, source: &str, error: &str) {
        self.state(source, |s| {
            s.error = Some(error.to_owned());
            s.at = Some(unix_now());
        });
    }

    pub fn hedged(&self, source: &str, why: &'static str) {
        let label = WhyLabel {
            source: source.to_owned(),
            why,
        };
        self.hedges.get_or_create(&label).inc();
        self.state(source, |s| s.hedges += 1);
    }

    pub fn demoted(&self, source: &str, why: &'static str, span: Duration) {
        let label = WhyLabel {
            source: source.to_owned(),
            why,
        };
        self.demotions.get_or_create(&label).inc();
        self.state(source, |s| {
            s.demotions += 1;
            s.demoted_until = Some(unix_now() + span.as_secs());
            s.demoted_for = Some(why);
        });
    }

    pub fn rate(&self, source: &str, bytes_per_second: f64) {
        let label = SourceLabel {
            source: source.to_owned(),
        };
        self.rate.get_or_create(&label).set(bytes_per_second);
        self.state(source, |s| {
            s.rate_bytes_per_second = Some(bytes_per_second as u64);
        });
    }

    /// Each source's state, demotions that ran out left out.
    pub fn states(&self) -> BTreeMap<String, SourceState> {
        let now = unix_now();
        let mut states = self
            .states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for s in states.values_mut() {
            if s.demoted_until.is_some_and(|until| until <= now) {
                (s.demoted_until, s.demoted_for) = (None, None);
            }
        }
        states
    }
}
