//! How often and how patiently one source is retried before failing over.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts per source and range, the first included.
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Silence (before the first byte too) after which a request is left
    /// for another source, or alone for a fresh connection.
    pub stall: Duration,
    /// The sources' own limit on silence: a source alone gets up to this.
    pub read_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            stall: Duration::from_secs(2),
            read_timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The pause before retry number `retry` (1-based): exponential with
    /// full jitter, or what the server asked for, within `max_delay`.
    pub fn delay(&self, retry: u32, asked: Option<Duration>) -> Duration {
        if let Some(asked) = asked {
            return asked.min(self.max_delay);
        }
        let ceiling = self
            .base_delay
            .saturating_mul(1 << retry.min(16))
            .min(self.max_delay);
        // RandomState is seeded per instance: jitter without a RNG dependency.
        let r = RandomState::new().hash_one(retry);
        ceiling
            .mul_f64((r % 1000) as f64 / 1000.0)
            .max(self.base_delay / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_bounded_and_honour_retry_after() {
        let p = RetryPolicy::default();
        for retry in 1..40 {
            let d = p.delay(retry, None);
            assert!(d >= p.base_delay / 2 && d <= p.max_delay, "{d:?}");
        }
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(p.delay(1, Some(Duration::from_secs(600))), p.max_delay);
    }
}
