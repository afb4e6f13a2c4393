//! Asking sources for a range: the first source of the order that delivers
//! it, each retried as the policy says, every request watched (`pace`) so
//! that one that stalls or trickles moves to the next source from where it
//! got to, and what each source showed (failures, stalls, rates) kept for
//! the order of the requests that follow (`health`).

use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

use super::health::{Demotion, SLOW_FACTOR};
use super::pace::{self, Behind, Counted, Pace, UNKNOWN_SOURCE_FLOOR};
use super::writer::{RangeWriter, Stop};
use super::{Ended, FetchError, Fetcher, Target, local};
use crate::hash::Digest;
use crate::source::{Location, SourceError, StreamError};

/// A failed attempt at one source, or a local failure that no source can fix.
pub(super) enum AttemptError {
    Source(SourceError),
    Mismatch {
        actual: Digest,
    },
    /// The request fell behind while another source was left to ask.
    Behind(Behind),
    Local(io::Error),
    Cancelled,
}

/// See [`Fetcher::fetch_range`]: at least this much progress per attempt
/// keeps a run going, and bounds its attempts by its length.
const PROGRESS_RESETS_RETRIES: u64 = 256 << 10;

impl Fetcher {
    /// Fetches what `writer` still lacks from the first source of `order`
    /// that delivers it, retrying each as the policy says: the one loop
    /// behind runs of chunks, parts of whole files, and uncached chunks.
    pub(super) async fn fetch_from_sources(
        &self,
        target: &Target,
        order: &[&Location],
        writer: &mut RangeWriter<'_>,
    ) -> Result<Ended, FetchError> {
        let mut attempts = Vec::new();
        let mut absent = true;
        // Sources left for falling behind: asked again, alone (patiently),
        // if every other one fails.
        let mut behind = Vec::new();
        let mut next = 0;
        loop {
            let (location, others) = if next < order.len() {
                next += 1;
                (order[next - 1], &order[next..])
            } else if !behind.is_empty() {
                (behind.remove(0), &[][..])
            } else {
                break;
            };
            let began = std::time::Instant::now();
            match self.fetch_range(location, others, writer).await {
                Ok(()) => {
                    self.health.succeeded(&location.origin(), began);
                    return Ok(Ended::Done);
                }
                Err(AttemptError::Cancelled) => return Ok(Ended::Cancelled),
                Err(AttemptError::Local(e)) => return Err(local(target, e)),
                Err(e) => {
                    let why = describe(&e);
                    self.source_failed(location, &e, &why, !others.is_empty());
                    absent &= matches!(e, AttemptError::Source(SourceError::NotFound(_)));
                    if matches!(e, AttemptError::Behind(_)) {
                        behind.push(location);
                    }
                    warn!(model = target.model_id(), file = %target.entry().path, range = ?writer.pos..writer.range.end, source = %location, error = %why, "source failed; trying the next");
                    attempts.push((location.to_string(), why));
                    // The next source starts the chunk afresh.
                    writer.restart_chunk();
                }
            }
        }
        Err(FetchError::AllSourcesFailed {
            target: target.to_string(),
            attempts: Arc::new(attempts),
            absent,
        })
    }

    /// Counts a failed attempt at `location`, and the move to the next
    /// source when there is one. A request that fell behind demotes its
    /// source at once (one only slower than the floor while the next one's
    /// rate was unknown too: if that one is no faster, its requests are not
    /// watched for slowness while this one is back, and the probe measures
    /// this one afresh).
    fn source_failed(&self, location: &Location, e: &AttemptError, why: &str, more: bool) {
        let (origin, now) = (location.origin(), std::time::Instant::now());
        let demoted = match e {
            AttemptError::Behind(Behind::Stalled(_)) => {
                self.metrics.hedged(&origin, Demotion::Stalled.as_str());
                Some(Demotion::Stalled).filter(|&why| self.health.fell_behind(&origin, why, now))
            }
            AttemptError::Behind(Behind::Slow(_)) => {
                self.metrics.hedged(&origin, Demotion::Slow.as_str());
                Some(Demotion::Slow).filter(|&why| self.health.fell_behind(&origin, why, now))
            }
            _ => Some(Demotion::Failing).filter(|_| self.health.failed(&origin, now)),
        };
        if let Some(why) = demoted {
            let until = self.health.demoted_for(&origin, now).unwrap_or_default();
            self.metrics.demoted(&origin, why.as_str(), until);
        }
        self.metrics.source_failed(&origin, why);
        if more {
            self.metrics.failed_over();
        }
    }

    /// How far behind a request of `location` may fall: with `others` left
    /// to ask, the stall limit, and a rate far below the fastest of them (or
    /// a floor while their rates are unknown); with none, only a stall,
    /// after `silence`.
    fn pace(&self, others: &[&Location], silence: Duration) -> Pace {
        let now = std::time::Instant::now();
        let usable: Vec<String> = others
            .iter()
            .map(|l| l.origin())
            .filter(|o| self.health.demoted_for(o, now).is_none())
            .collect();
        let rates: Vec<Option<f64>> = usable.iter().map(|o| self.health.rate(o)).collect();
        let min_rate = if rates.iter().any(Option::is_none) {
            Some(UNKNOWN_SOURCE_FLOOR)
        } else {
            let fastest = rates.iter().flatten().fold(0.0, |a: f64, &b| a.max(b));
            Some(fastest / SLOW_FACTOR).filter(|_| fastest > 0.0)
        };
        Pace { silence, min_rate }
    }

    /// Fetches what `writer` lacks from one source, retrying transient
    /// faults with backoff and resuming after the bytes already received.
    /// A request that verified a chunk, or brought [`PROGRESS_RESETS_RETRIES`]
    /// bytes, before it failed starts the count of attempts afresh: a
    /// source that keeps delivering over a bad connection is not failing.
    /// A request that falls behind ends the attempt when `others` are left
    /// to ask; with none, a fresh connection takes over from where it got
    /// to, and one that brought nothing doubles the silence allowed next,
    /// up to the read timeout (a slow first byte is not a stall).
    async fn fetch_range(
        &self,
        location: &Location,
        others: &[&Location],
        writer: &mut RangeWriter<'_>,
    ) -> Result<(), AttemptError> {
        let (mut retry, mut silence) = (0, self.retry.stall.min(self.retry.read_timeout));
        loop {
            let (before, from) = (writer.received, writer.pos);
            // Alone, once the silence allowed is the read timeout, that is the limit.
            let watched = !others.is_empty() || silence < self.retry.read_timeout;
            let pace = self.pace(others, silence);
            let (result, elapsed) = self.paced_fetch(location, writer, pace, watched).await;
            let (got, origin) = (writer.received - before, location.origin());
            self.metrics.fetched(&origin, got);
            if let Some(rate) = self.health.delivered(&origin, got, elapsed) {
                self.metrics.source_rate(&origin, rate);
            }
            let error = match result {
                Ok(Ok(())) => return Ok(()),
                // Every byte came; only the response's end was late.
                Err(_) if writer.is_done() && writer.is_checked() => return Ok(()),
                Err(behind) if !others.is_empty() => return Err(AttemptError::Behind(behind)),
                Err(behind) => {
                    debug!(source = %location, %behind, resume_at = writer.pos, "no other source: a fresh connection takes over");
                    self.metrics.hedged(&origin, "reconnect");
                    if writer.pos.saturating_sub(from) < PROGRESS_RESETS_RETRIES {
                        silence = (silence * 2).min(self.retry.read_timeout);
                    }
                    continue;
                }
                Ok(Err(StreamError::Sink(e))) => match writer.take_stop() {
                    Some(Stop::Cancelled) => return Err(AttemptError::Cancelled),
                    Some(Stop::Mismatch { resumed: true, .. }) => {
                        // The start came from disk, written before a crash
                        // (and maybe lost to a power failure): not the
                        // source's fault. The chunk is fetched whole.
                        debug!(source = %location, "a resumed chunk did not verify; fetching it whole");
                        writer.restart_chunk();
                        continue;
                    }
                    Some(Stop::Mismatch { actual, .. }) => {
                        self.metrics.verify_failed();
                        return Err(AttemptError::Mismatch { actual });
                    }
                    None => return Err(AttemptError::Local(e)),
                },
                Ok(Err(StreamError::Source(e))) => e,
            };
            // Every byte arrived and then the connection failed (a timeout
            // waiting for its end, say; or more bytes than asked, which the
            // writer refused): nothing is left to ask for, and an empty
            // range cannot be asked for. Chunks verified each as they came;
            // a part of a whole file is trusted only without a long body.
            if writer.is_done()
                && (writer.is_checked() || !matches!(error, SourceError::LongBody { .. }))
            {
                debug!(source = %location, %error, "failed after the last byte; keeping the bytes");
                return Ok(());
            }
            // Progress is what was kept: an over-long body is thrown away below.
            let kept = writer.pos.saturating_sub(from);
            let long = matches!(error, SourceError::LongBody { .. });
            if writer.take_verified() || (kept >= PROGRESS_RESETS_RETRIES && !long) {
                retry = 0;
            }
            retry += 1;
            if !error.is_transient() || retry >= self.retry.attempts {
                return Err(AttemptError::Source(error));
            }
            // An over-long body put wrong bytes where right ones may follow: start over.
            if long {
                writer.restart_chunk();
            }
            let delay = self.retry.delay(retry, error.retry_after());
            debug!(source = %location, %error, ?delay, resume_at = writer.pos, "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// One request of `location` for what `writer` lacks, watched at `pace`
    /// if `watched`; with how long it took.
    async fn paced_fetch(
        &self,
        location: &Location,
        writer: &mut RangeWriter<'_>,
        pace: Pace,
        watched: bool,
    ) -> (Result<Result<(), StreamError>, Behind>, Duration) {
        let (started, bytes) = (Instant::now(), AtomicU64::new(0));
        let range = writer.pos..writer.range.end;
        let mut sink = Counted {
            inner: writer,
            bytes: &bytes,
        };
        let fetch = self.sources.fetch(location, range, &mut sink);
        let result = if watched {
            tokio::select! {
                biased;
                result = fetch => Ok(result),
                behind = pace::watch(pace, &bytes) => Err(behind),
            }
        } else {
            Ok(fetch.await)
        };
        (result, started.elapsed())
    }
}

fn describe(e: &AttemptError) -> String {
    match e {
        AttemptError::Source(e) => e.to_string(),
        AttemptError::Mismatch { actual } => format!("chunk hash mismatch (got {actual})"),
        AttemptError::Behind(behind) => format!("fell behind ({behind})"),
        AttemptError::Local(e) => e.to_string(),
        AttemptError::Cancelled => "cancelled".into(),
    }
}
