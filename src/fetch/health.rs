//! What each source (origin) has shown: whether it keeps failing or went
//! silent, and how fast it delivers. New requests go to the healthy, fast
//! ones first; a source that keeps failing, stalls or falls far behind is
//! tried last for a while (a negative cache with a TTL that doubles while it
//! stays bad), so readers stop paying its timeouts. It is still the last
//! resort, and when its time is up one request (a probe) tries it again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::source::Location;

/// Failed fetches in a row (each after its retries) before a source is demoted.
const FAILURES_TO_DEMOTE: u32 = 3;
/// How long a source that stalled is tried last at first; each demotion in
/// a row doubles it, up to [`DEMOTION`].
const FIRST_DEMOTION: Duration = Duration::from_secs(4);
/// The longest a demoted source stays at the back: one that recovers is
/// used again within this.
pub const DEMOTION: Duration = Duration::from_secs(30);
/// How long the probe of a source whose demotion ran out has to show it
/// delivers before another request tries it.
const PROBE: Duration = Duration::from_secs(10);
/// A source this many times slower than the fastest is slow: it is asked
/// after the others, and a request of it running this far behind them moves
/// to another source.
pub const SLOW_FACTOR: f64 = 8.0;
/// Weight of the newest request in an origin's rate.
const RATE_WEIGHT: f64 = 0.3;

#[derive(Default)]
struct Record {
    failures_in_a_row: u32,
    /// Demotions since the source last delivered: each doubles the next.
    demotions_in_a_row: u32,
    demoted_until: Option<Instant>,
    /// When it was last demoted: a request that began before does not
    /// forgive it by succeeding.
    demoted_at: Option<Instant>,
    /// While one request probes the source after its demotion ran out.
    probing_until: Option<Instant>,
    /// Bytes per second of one request, a moving average, and when it last
    /// changed.
    rate: Option<f64>,
    rated_at: Option<Instant>,
}

impl Record {
    /// The rate, unless it is too old to rank the source by: one ranked
    /// slow is seldom asked, so its rate would never be measured again.
    fn fresh_rate(&self, now: Instant) -> Option<f64> {
        self.rate.filter(|_| {
            self.rated_at
                .is_some_and(|at| now.saturating_duration_since(at) < DEMOTION)
        })
    }

    /// Tried last: demoted, or being probed by another request.
    fn demoted(&self, now: Instant) -> bool {
        [self.demoted_until, self.probing_until]
            .iter()
            .any(|until| until.is_some_and(|until| now < until))
    }
}

#[derive(Default)]
pub struct SourceHealth {
    records: Mutex<HashMap<String, Record>>,
}

/// What made a source be tried last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Demotion {
    /// Its fetches failed, each after its retries.
    Failing,
    /// A request went silent.
    Stalled,
    /// A request ran far behind what the others deliver.
    Slow,
}

impl Demotion {
    pub fn as_str(self) -> &'static str {
        match self {
            Demotion::Failing => "failing",
            Demotion::Stalled => "stalled",
            Demotion::Slow => "slow",
        }
    }
}

impl SourceHealth {
    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `locations` in the order to try them at `now`: healthy sources in
    /// manifest order, except that a source [`SLOW_FACTOR`] times slower than
    /// the fastest goes after the others; then demoted ones. A demoted
    /// source whose time is up comes back in its place for this one caller
    /// (the probe); the others see it demoted until the probe ends.
    pub fn order<'a>(&self, locations: &'a [Location], now: Instant) -> Vec<&'a Location> {
        let mut records = self.records();
        let fastest = locations
            .iter()
            .filter_map(|l| {
                records
                    .get(&l.origin())
                    .filter(|r| !r.demoted(now))?
                    .fresh_rate(now)
            })
            .fold(0.0, f64::max);
        let rank = |records: &mut HashMap<String, Record>, l: &Location| {
            let Some(r) = records.get_mut(&l.origin()) else {
                return 0;
            };
            if r.demoted(now) {
                return 2;
            }
            if r.demoted_until.take().is_some() {
                // The probe: the others keep away until it has shown, and
                // its rate is measured afresh.
                r.probing_until = Some(now + PROBE);
                r.rate = None;
            }
            u8::from(
                r.fresh_rate(now)
                    .is_some_and(|rate| rate * SLOW_FACTOR < fastest),
            )
        };
        let mut ranked: Vec<(u8, &Location)> = locations
            .iter()
            .map(|l| (rank(&mut records, l), l))
            .collect();
        // Stable: the manifest's order breaks ties.
        ranked.sort_by_key(|&(rank, _)| rank);
        ranked.into_iter().map(|(_, l)| l).collect()
    }

    /// A fetch from `origin` failed after its retries. Says whether that
    /// demoted it.
    pub fn failed(&self, origin: &str, now: Instant) -> bool {
        let mut records = self.records();
        let r = records.entry(origin.to_owned()).or_default();
        r.failures_in_a_row += 1;
        r.failures_in_a_row >= FAILURES_TO_DEMOTE && demote(origin, r, Demotion::Failing, now)
    }

    /// A request of `origin` went silent or fell far behind: it is tried
    /// last from now on, for a while. Says whether that demoted it (it was
    /// not already).
    pub fn fell_behind(&self, origin: &str, why: Demotion, now: Instant) -> bool {
        let mut records = self.records();
        demote(
            origin,
            records.entry(origin.to_owned()).or_default(),
            why,
            now,
        )
    }

    /// A request of `origin` brought `bytes` in `elapsed`; returns the
    /// origin's rate if that changed it.
    pub fn delivered(&self, origin: &str, bytes: u64, elapsed: Duration) -> Option<f64> {
        // Too little to tell a rate from a round trip; and nothing at all
        // is a failure (a stall, a refusal), which demotions deal with.
        if bytes == 0 || (bytes < (1 << 20) && elapsed < Duration::from_millis(500)) {
            return None;
        }
        let rate = bytes as f64 / elapsed.as_secs_f64().max(1e-3);
        let mut records = self.records();
        let r = records.entry(origin.to_owned()).or_default();
        let rate = r.rate.map_or(rate, |old| old + RATE_WEIGHT * (rate - old));
        (r.rate, r.rated_at) = (Some(rate), Some(Instant::now()));
        Some(rate)
    }

    /// A fetch from `origin` that began at `began` succeeded: its failures
    /// and demotions are forgiven, unless it began before the last
    /// demotion (one of many requests already under way then).
    pub fn succeeded(&self, origin: &str, began: Instant) {
        let mut records = self.records();
        if let Some(r) = records.get_mut(origin)
            && r.demoted_at.is_none_or(|at| began >= at)
        {
            *r = Record {
                rate: r.rate,
                rated_at: r.rated_at,
                ..Record::default()
            };
        }
    }

    /// The rate of one request of `origin`, if known.
    pub fn rate(&self, origin: &str) -> Option<f64> {
        self.records().get(origin)?.rate
    }

    /// How long `origin` stays demoted, if it is.
    pub fn demoted_for(&self, origin: &str, now: Instant) -> Option<Duration> {
        let records = self.records();
        let until = records.get(origin)?.demoted_until?;
        until.checked_duration_since(now).filter(|d| !d.is_zero())
    }
}

/// Demotes `r` (of `origin`) unless it is already; says whether it did.
fn demote(origin: &str, r: &mut Record, why: Demotion, now: Instant) -> bool {
    if r.demoted_until.is_some_and(|until| now < until) {
        return false;
    }
    r.probing_until = None;
    let shift = r.demotions_in_a_row.min(8);
    let span = FIRST_DEMOTION.saturating_mul(1 << shift).min(DEMOTION);
    r.demotions_in_a_row += 1;
    r.demoted_until = Some(now + span);
    r.demoted_at = Some(now);
    tracing::warn!(
        source = origin,
        why = why.as_str(),
        for_secs = span.as_secs(),
        "source {}; trying it last for a while",
        why.as_str()
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two() -> (Location, Location) {
        let a = Location::parse("http://a:1/m").unwrap();
        let b = Location::parse("http://b:1/m").unwrap();
        (a, b)
    }

    #[test]
    fn a_failing_source_goes_to_the_back_until_the_ttl_passes() {
        let (a, b) = two();
        let both = [a.clone(), b.clone()];
        let health = SourceHealth::default();
        let t0 = Instant::now();
        for _ in 0..FAILURES_TO_DEMOTE - 1 {
            assert!(!health.failed("http://a:1", t0));
        }
        assert_eq!(health.order(&both, t0), [&a, &b], "not yet demoted");
        assert!(health.failed("http://a:1", t0));
        assert_eq!(
            health.order(&both, t0),
            [&b, &a],
            "demoted, still a last resort"
        );
        assert_eq!(
            health.order(&both, t0 + FIRST_DEMOTION),
            [&a, &b],
            "back in place after the TTL, for one probe"
        );
        assert_eq!(
            health.order(&both, t0 + FIRST_DEMOTION),
            [&b, &a],
            "the others wait for the probe"
        );
        // Under way before the demotion: not a sign it recovered.
        health.succeeded("http://a:1", t0 - Duration::from_millis(1));
        assert_eq!(health.order(&both, t0 + FIRST_DEMOTION), [&b, &a]);
        health.succeeded("http://a:1", t0 + FIRST_DEMOTION);
        assert_eq!(
            health.order(&both, t0 + FIRST_DEMOTION),
            [&a, &b],
            "a success forgives"
        );
    }

    #[test]
    fn a_source_that_keeps_stalling_stays_back_longer_up_to_the_cap() {
        let (a, b) = two();
        let both = [a.clone(), b.clone()];
        let health = SourceHealth::default();
        let mut now = Instant::now();
        let mut spans = Vec::new();
        for _ in 0..8 {
            assert!(health.fell_behind("http://a:1", Demotion::Stalled, now));
            assert!(
                !health.fell_behind("http://a:1", Demotion::Stalled, now),
                "demoted once however many requests stalled"
            );
            let span = health.demoted_for("http://a:1", now).unwrap();
            spans.push(span.as_secs());
            assert_eq!(health.order(&both, now + span / 2), [&b, &a]);
            now += span;
            assert_eq!(health.order(&both, now), [&a, &b], "the probe");
        }
        assert_eq!(spans, [4, 8, 16, 30, 30, 30, 30, 30]);
        // Recovered: the probe delivers, and the source is first again.
        health.succeeded("http://a:1", now);
        assert_eq!(health.order(&both, now), [&a, &b]);
        assert_eq!(health.order(&both, now), [&a, &b]);
    }

    #[test]
    fn a_much_slower_source_goes_after_the_others() {
        let (a, b) = two();
        let both = [a.clone(), b.clone()];
        let health = SourceHealth::default();
        let now = Instant::now();
        health.delivered("http://a:1", 32 << 10, Duration::from_secs(1));
        assert_eq!(health.order(&both, now), [&a, &b], "b's rate is unknown");
        health.delivered("http://b:1", 8 << 20, Duration::from_millis(100));
        assert_eq!(health.order(&both, now), [&b, &a]);
        // Within the factor, the manifest's order holds.
        health.delivered("http://a:1", 80 << 20, Duration::from_secs(1));
        health.delivered("http://a:1", 80 << 20, Duration::from_secs(1));
        assert!(health.rate("http://a:1").unwrap() * SLOW_FACTOR > 80e6);
        assert_eq!(health.order(&both, now), [&a, &b]);
    }
}
