//! Single flight: one fetch per chunk however many tasks want it. A task
//! that finds a chunk in flight waits for that fetch's outcome; the task
//! that leads it holds a [`Lead`], which a ranged request covering many
//! chunks resolves one chunk at a time, as each verifies. A lead dropped
//! unresolved (a cancelled readahead, a claim another process holds) sends
//! its waiters back to fetch the chunk themselves.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{OnceCell, watch};

use super::{ChunkKey, FetchError};

type Outcome = Option<Result<(), FetchError>>;

/// Chunk fetches under way in this process.
#[derive(Default)]
pub(super) struct ChunkFlights {
    map: Mutex<HashMap<ChunkKey, (u64, watch::Receiver<Outcome>)>>,
    next_id: AtomicU64,
}

/// The right and duty to fetch one chunk for every task that wants it.
pub(super) struct Lead<'f> {
    flights: &'f ChunkFlights,
    key: ChunkKey,
    id: u64,
    tx: watch::Sender<Outcome>,
}

/// What a scan found of one chunk.
pub(super) enum Seen {
    /// Verified already, or nothing left to do.
    Present,
    /// Another task fetches it: wait with [`wait`].
    InFlight(watch::Receiver<Outcome>),
    /// Nobody does.
    Free,
}

/// What a scan does next.
#[derive(PartialEq)]
pub(super) enum Next {
    /// Lead this (free) chunk, and go on.
    Lead,
    /// Go on.
    Skip,
    /// Look at no more chunks.
    Stop,
}

impl ChunkFlights {
    /// Looks at `chunks` in order under one lock, so that no other task can
    /// start or end a flight between the look at a chunk and the decision,
    /// and returns the leads taken. `present` says, under the lock, whether
    /// a chunk needs no fetch (a finished flight's bit is set before it
    /// leaves the map, so a caller sees one or the other).
    pub(super) fn scan<'f>(
        &'f self,
        blob: crate::cache::BlobKey,
        chunks: impl IntoIterator<Item = u64>,
        present: impl Fn(u64) -> bool,
        mut each: impl FnMut(u64, Seen) -> Next,
    ) -> Vec<Lead<'f>> {
        let mut leads = Vec::new();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for c in chunks {
            let key = (blob, c);
            let seen = if present(c) {
                Seen::Present
            } else if let Some((_, rx)) = map.get(&key) {
                Seen::InFlight(rx.clone())
            } else {
                Seen::Free
            };
            let free = matches!(seen, Seen::Free);
            match each(c, seen) {
                Next::Lead if free => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let (tx, rx) = watch::channel(None);
                    map.insert(key, (id, rx));
                    leads.push(Lead {
                        flights: self,
                        key,
                        id,
                        tx,
                    });
                }
                Next::Stop => break,
                Next::Lead | Next::Skip => {}
            }
        }
        leads
    }
}

impl Lead<'_> {
    pub(super) fn chunk(&self) -> u64 {
        self.key.1
    }

    /// The outcome, as a waiter would see it: for the leader itself.
    pub(super) fn outcome(&self) -> watch::Receiver<Outcome> {
        self.tx.subscribe()
    }

    /// Hands every waiter the outcome. For success, the chunk's bit must be
    /// set first.
    pub(super) fn resolve(self, outcome: Result<(), FetchError>) {
        self.tx.send_replace(Some(outcome));
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let mut map = self.flights.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            map.remove(&self.key);
        }
    }
}

/// The outcome of a flight another task leads; `None` if it gave the chunk
/// up unresolved, and the caller should look again.
pub(super) async fn wait(mut rx: watch::Receiver<Outcome>) -> Outcome {
    rx.wait_for(Option::is_some).await.ok()?.clone()
}

/// Fetches of one thing at a time that every asker shares whole (a file
/// without chunk hashes; a chunk fetched into memory).
pub(super) type Flights<T> =
    Mutex<HashMap<ChunkKey, std::sync::Arc<OnceCell<Result<T, FetchError>>>>>;

/// Joins the fetch of `key` under way in `flights`, or starts it with
/// `fetch`; `already` says, under the map's lock, that there is nothing to
/// do (a finished fetch leaves its result visible before it leaves the map,
/// so a caller sees one or the other). Every joiner gets the leader's result.
pub(super) async fn join_flight<T: Clone, F>(
    flights: &Flights<T>,
    key: ChunkKey,
    already: impl FnOnce() -> Option<T>,
    fetch: impl FnOnce() -> F,
) -> Result<T, FetchError>
where
    F: Future<Output = Result<T, FetchError>>,
{
    let flight = {
        let mut map = flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(done) = already() {
            return Ok(done);
        }
        std::sync::Arc::clone(map.entry(key).or_default())
    };
    let result = flight.get_or_init(fetch).await.clone();
    let mut map = flights.lock().unwrap_or_else(|p| p.into_inner());
    if map
        .get(&key)
        .is_some_and(|f| std::sync::Arc::ptr_eq(f, &flight))
    {
        map.remove(&key);
    }
    result
}
