//! Which sources are failing: a source whose fetches keep failing is tried
//! last for a while (a negative cache with a TTL), so readers stop paying its
//! retries and timeouts; it is still the last resort, and after the TTL it is
//! tried in its place again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::source::Location;

/// Failed fetches in a row (each after its retries) before a source is demoted.
const FAILURES_TO_DEMOTE: u32 = 3;
/// How long a demoted source stays at the back.
pub const DEMOTION: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Record {
    failures_in_a_row: u32,
    demoted_until: Option<Instant>,
}

#[derive(Default)]
pub struct SourceHealth {
    records: Mutex<HashMap<String, Record>>,
}

impl SourceHealth {
    /// `locations` in the order to try them at `now`: healthy sources in
    /// manifest order, then demoted ones.
    pub fn order<'a>(&self, locations: &'a [Location], now: Instant) -> Vec<&'a Location> {
        let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let demoted = |l: &Location| {
            records
                .get(&l.origin())
                .and_then(|r| r.demoted_until)
                .is_some_and(|until| now < until)
        };
        let (mut healthy, back): (Vec<_>, Vec<_>) = locations.iter().partition(|l| !demoted(l));
        healthy.extend(back);
        healthy
    }

    pub fn failed(&self, origin: &str, now: Instant) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let r = records.entry(origin.to_owned()).or_default();
        r.failures_in_a_row += 1;
        if r.failures_in_a_row >= FAILURES_TO_DEMOTE {
            if r.demoted_until.is_none_or(|until| now >= until) {
                tracing::warn!(
                    source = origin,
                    for_secs = DEMOTION.as_secs(),
                    "source keeps failing; trying it last for a while"
                );
            }
            r.demoted_until = Some(now + DEMOTION);
        }
    }

    pub fn succeeded(&self, origin: &str) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.remove(origin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_source_goes_to_the_back_until_the_ttl_passes() {
        let a = Location::parse("http://a:1/m").unwrap();
        let b = Location::parse("http://b:1/m").unwrap();
        let both = [a.clone(), b.clone()];
        let health = SourceHealth::default();
        let t0 = Instant::now();
        for _ in 0..FAILURES_TO_DEMOTE - 1 {
            health.failed("http://a:1", t0);
        }
        assert_eq!(health.order(&both, t0), [&a, &b], "not yet demoted");
        health.failed("http://a:1", t0);
        assert_eq!(
            health.order(&both, t0),
            [&b, &a],
            "demoted, still a last resort"
        );
        assert_eq!(
            health.order(&both, t0 + DEMOTION),
            [&a, &b],
            "back in place after the TTL"
        );
        // One more failure after the TTL demotes it again at once.
        health.failed("http://a:1", t0 + DEMOTION);
        assert_eq!(health.order(&both, t0 + DEMOTION), [&b, &a]);
        health.succeeded("http://a:1");
        assert_eq!(
            health.order(&both, t0 + DEMOTION),
            [&a, &b],
            "a success forgives"
        );
    }
}
