//! A [`Source`] for unit tests of the fetch logic: objects held in memory,
//! faults scripted per location, every request logged, and a latency that
//! tokio's paused clock skips, so retries and backoff cost no real time.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;

use super::{Location, Sink, Source, SourceError, StreamError};

/// What one request does wrong.
#[derive(Clone, Debug)]
pub enum Fault {
    /// HTTP 503: transient, retried on the same source.
    Unavailable,
    /// HTTP 404: the next source at once.
    NotFound,
    /// Sends this many bytes of the range, then the body ends short.
    CutAfter(u64),
    /// Sends the whole range with one byte flipped.
    Corrupt,
    /// Answers a range that starts before `offset` after `pause`, then
    /// sends it; other ranges at once.
    SlowBefore { offset: u64, pause: Duration },
}

#[derive(Default)]
pub struct Scripted {
    objects: HashMap<String, Vec<u8>>,
    /// Faults for the next requests to a location, in order.
    queued: Mutex<HashMap<String, VecDeque<Fault>>>,
    /// A fault for every request to a location once its queue is empty.
    always: HashMap<String, Fault>,
    latency: Duration,
    log: Mutex<Vec<(String, Range<u64>)>>,
}

impl Scripted {
    /// Serves `data` at each of `locations`.
    pub fn new(locations: &[&Location], data: &[u8]) -> Scripted {
        Scripted {
            objects: locations
                .iter()
                .map(|l| (l.to_string(), data.to_vec()))
                .collect(),
            latency: Duration::from_millis(50),
            ..Scripted::default()
        }
    }

    pub fn queue(self, location: &Location, faults: &[Fault]) -> Self {
        self.queued
            .lock()
            .unwrap()
            .entry(location.to_string())
            .or_default()
            .extend(faults.iter().cloned());
        self
    }

    pub fn always(mut self, location: &Location, fault: Fault) -> Self {
        self.always.insert(location.to_string(), fault);
        self
    }

    /// The ranges asked of `location`, in order.
    pub fn requests(&self, location: &Location) -> Vec<Range<u64>> {
        let name = location.to_string();
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|(l, _)| *l == name)
            .map(|(_, r)| r.clone())
            .collect()
    }

    async fn serve(
        &self,
        location: &Location,
        range: Range<u64>,
        sink: &mut (dyn Sink + Send),
    ) -> Result<(), StreamError> {
        let name = location.to_string();
        self.log.lock().unwrap().push((name.clone(), range.clone()));
        tokio::time::sleep(self.latency).await;
        let fault = {
            let mut queued = self.queued.lock().unwrap();
            let next = queued.get_mut(&name).and_then(VecDeque::pop_front);
            next.or_else(|| self.always.get(&name).cloned())
        };
        let Some(object) = self.objects.get(&name) else {
            return Err(SourceError::NotFound("no such object".into()).into());
        };
        let mut body = object[range.start as usize..range.end as usize].to_vec();
        let send = match fault {
            Some(Fault::Unavailable) => {
                return Err(SourceError::Status {
                    reply: "HTTP 503".into(),
                    retry_after: None,
                }
                .into());
            }
            Some(Fault::NotFound) => return Err(SourceError::NotFound("HTTP 404".into()).into()),
            Some(Fault::CutAfter(n)) => n.min(body.len() as u64) as usize,
            Some(Fault::SlowBefore { offset, pause }) => {
                if range.start < offset {
                    tokio::time::sleep(pause).await;
                }
                body.len()
            }
            Some(Fault::Corrupt) => {
                body[0] ^= 0xff;
                body.len()
            }
            None => body.len(),
        };
        // In pieces, as a network delivers them.
        for piece in body[..send].chunks(16 << 10) {
            sink.write(piece).map_err(StreamError::Sink)?;
        }
        if send < body.len() {
            return Err(SourceError::ShortBody {
                got: send as u64,
                want: body.len() as u64,
            }
            .into());
        }
        Ok(())
    }
}

impl Source for Scripted {
    fn fetch<'a>(
        &'a self,
        location: &'a Location,
        range: Range<u64>,
        sink: &'a mut (dyn Sink + Send),
    ) -> BoxFuture<'a, Result<(), StreamError>> {
        Box::pin(self.serve(location, range, sink))
    }
}
