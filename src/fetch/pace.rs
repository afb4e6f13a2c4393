//! Watching one request as its body streams in: one that goes silent (before
//! its first byte too) or delivers far slower than another source would is
//! left for another source, from where it got to, long before a read
//! timeout would end it. A mirror that stalls or trickles then costs a few
//! seconds of one request, not minutes of every one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::source::Sink;

/// A request that has brought less than this per second by the time its
/// silence limit has passed is slow while another source's rate is still
/// unknown: it is worth asking that one (a trickle at 32 KiB/s is, a link
/// shared by many requests at a few MiB/s each is not).
pub(super) const UNKNOWN_SOURCE_FLOOR: f64 = (1 << 20) as f64;

/// How far behind a request may fall before it is left.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pace {
    /// The longest the request may bring nothing, its first byte included.
    pub silence: Duration,
    /// Bytes per second the request must have kept up, from the end of
    /// its first `silence` on; none when there is no other source to ask.
    pub min_rate: Option<f64>,
}

/// How a request fell behind.
#[derive(Clone, Copy, Debug)]
pub(super) enum Behind {
    /// It brought nothing for this long.
    Stalled(Duration),
    /// It brought bytes at this rate, too slow.
    Slow(f64),
}

impl std::fmt::Display for Behind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Behind::Stalled(d) => write!(f, "no data for {d:.1?}"),
            Behind::Slow(rate) => write!(f, "only {:.0} KiB/s", rate / 1024.0),
        }
    }
}

/// A sink that counts what passes into it, for [`watch`] to see.
pub(super) struct Counted<'a> {
    pub inner: &'a mut (dyn Sink + Send),
    pub bytes: &'a AtomicU64,
}

impl Sink for Counted<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.inner.write(data)?;
        self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

/// Returns once the request whose bytes `bytes` counts falls behind `pace`;
/// never if it keeps up (the caller races it against the request).
pub(super) async fn watch(pace: Pace, bytes: &AtomicU64) -> Behind {
    let (started, base) = (Instant::now(), bytes.load(Ordering::Relaxed));
    let (mut seen, mut last_news) = (0, started);
    let tick = (pace.silence / 8).clamp(Duration::from_millis(10), Duration::from_millis(250));
    loop {
        tokio::time::sleep(tick).await;
        let now = Instant::now();
        let got = bytes.load(Ordering::Relaxed) - base;
        if got != seen {
            (seen, last_news) = (got, now);
        }
        let quiet = now - last_news;
        if quiet >= pace.silence {
            return Behind::Stalled(quiet);
        }
        let elapsed = now - started;
        let rate = got as f64 / elapsed.as_secs_f64();
        // One going quiet is left to the stall verdict: it says more.
        if let Some(min) = pace.min_rate
            && elapsed >= pace.silence
            && rate < min
            && quiet < pace.silence / 2
        {
            return Behind::Slow(rate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn silence_and_slowness_are_seen_within_a_tick_and_steady_bytes_are_not() {
        let bytes = AtomicU64::new(0);
        let pace = Pace {
            silence: Duration::from_secs(2),
            min_rate: Some(1e6),
        };
        let started = Instant::now();
        let Behind::Stalled(quiet) = watch(pace, &bytes).await else {
            panic!("a silent request stalls");
        };
        assert!(quiet >= pace.silence);
        assert!(started.elapsed() <= pace.silence + Duration::from_millis(250));

        // 2 MB/s, steadily: never behind, for as long as it lasts.
        let feed = async {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                bytes.fetch_add(200_000, Ordering::Relaxed);
            }
        };
        let steady = tokio::select! {
            _ = feed => None,
            behind = watch(pace, &bytes) => Some(behind),
        };
        assert!(steady.is_none(), "{steady:?}");

        // 100 kB/s: slow once the first 2 s are over.
        let trickle = async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                bytes.fetch_add(10_000, Ordering::Relaxed);
            }
        };
        let started = Instant::now();
        let behind = tokio::select! {
            _ = trickle => unreachable!(),
            behind = watch(pace, &bytes) => behind,
        };
        assert!(matches!(behind, Behind::Slow(r) if r < 1e6), "{behind:?}");
        assert!(started.elapsed() < Duration::from_millis(2500));
    }
}
