//! A mount's model streams. A loader reading on through a weight file streams
//! the weights it will read next (`manifest::weights` says which files,
//! `fetch::stream` how), so that a cold load takes the time its bytes take
//! to arrive rather than that plus the load. A stream ends when nothing is
//! left to fetch, when the cache is full, or when every file of the model
//! has been closed for a while.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{Instrument as _, debug, info, info_span, warn};

use crate::cache::Cache;
use crate::fetch::{Busy, FetchError, Fetcher, Streamed, Tally, Target};
use crate::fileio::blocking;
use crate::manifest::weights::{self, LARGE_FILE};
use crate::metrics::StreamEnd;

/// A reader that has read this many bytes of a weight file in a row starts
/// the model's stream: a loader soon does, while a tool that reads only
/// headers (safetensors metadata, a GGUF vocabulary) or a random reader
/// does not.
pub const STREAM_AFTER: u64 = 4 << 20;

/// The longest whole-file checks wait for one load: a 2 GiB model loads in
/// about 4 s on 2 cores; a reader that keeps its files open (a server) is
/// not loading all that time, and the checks of a longer load run beside
/// it, on one core.
const LOADING_AT_MOST: Duration = Duration::from_secs(10);

/// When a mount streams.
#[derive(Clone, Copy, Debug)]
pub struct StreamConfig {
    pub enabled: bool,
    /// How long every file of a model must stay closed before its stream
    /// stops: a loader closes one shard before it opens the next.
    pub grace: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            enabled: true,
            grace: Duration::from_secs(5),
        }
    }
}

pub struct Streams {
    config: StreamConfig,
    cache: Arc<Cache>,
    fetcher: Arc<Fetcher>,
    runtime: tokio::runtime::Handle,
    /// Models with a file open, a stream running or a load under way, by
    /// id: opens of one model may come from catalogs a reload replaced.
    models: Mutex<HashMap<String, ModelState>>,
    /// Numbers for loads and for closes of every file of a model.
    loads: AtomicU64,
}

#[derive(Default)]
struct ModelState {
    opens: usize,
    /// The number of the latest time every file of the model was closed: a
    /// timer started at one close stops the stream only if no open came
    /// since.
    closes: u64,
    /// Set to stop the stream, while one runs.
    stop: Option<Arc<AtomicBool>>,
    /// Held from a loader's first run of weight reads until every file of
    /// the model has been closed for the grace period, or for
    /// [`LOADING_AT_MOST`]: whole-file checks wait for the load to end.
    /// Numbered, so that a timer ends only the load it was started for.
    loading: Option<(u64, Busy)>,
}

impl ModelState {
    /// Nothing left to keep: no open, no stream, no load.
    fn is_idle(&self) -> bool {
        self.opens == 0 && self.stop.is_none() && self.loading.is_none()
    }
}

impl Streams {
    pub fn new(
        config: StreamConfig,
        cache: Arc<Cache>,
        fetcher: Arc<Fetcher>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Streams {
            config,
            cache,
            fetcher,
            runtime,
            models: Mutex::default(),
            loads: AtomicU64::new(0),
        }
    }

    fn models(&self) -> std::sync::MutexGuard<'_, HashMap<String, ModelState>> {
        self.models.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes `model`'s state under the lock, if it has one, and forgets
    /// the state once nothing is left in it.
    fn change<R>(&self, model: &str, change: impl FnOnce(&mut ModelState) -> R) -> Option<R> {
        let mut models = self.models();
        let state = models.get_mut(model)?;
        let changed = change(state);
        if state.is_idle() {
            models.remove(model);
        }
        Some(changed)
    }

    pub fn opened(&self, file: &Target) {
        let mut models = self.models();
        match models.get_mut(file.model_id()) {
            Some(state) => state.opens += 1,
            None => {
                let state = ModelState {
                    opens: 1,
                    ..ModelState::default()
                };
                models.insert(file.model_id().to_owned(), state);
            }
        }
    }

    /// One open of `file` ended; the last of its model's starts the grace
    /// period after which the model's stream stops and its load is over.
    pub fn closed(self: &Arc<Self>, file: &Target) {
        let model = file.model_id().to_owned();
        let last = self.change(&model, |state| {
            state.opens = state.opens.saturating_sub(1);
            // Nothing to stop or end: forgotten at once, no timer.
            (state.opens == 0 && !state.is_idle()).then(|| {
                // Numbered across the map's entries: a timer of an entry
                // removed since must not match its successor's.
                state.closes = self.loads.fetch_add(1, Ordering::Relaxed);
                state.closes
            })
        });
        let Some(Some(closes)) = last else { return };
        let this = Arc::clone(self);
        self.runtime.spawn(async move {
            tokio::time::sleep(this.config.grace).await;
            this.change(&model, |state| {
                if state.opens > 0 || state.closes != closes {
                    return;
                }
                debug!(
                    model,
                    "every file of the model is closed: its load is over, its stream stops"
                );
                state.loading = None;
                if let Some(stop) = &state.stop {
                    stop.store(true, Ordering::Release);
                }
            });
        });
    }

    /// Marks `model` as loading, unless it is already, until every file of
    /// it has been closed for the grace period or for [`LOADING_AT_MOST`].
    fn loading(self: &Arc<Self>, model: &str) {
        let load = {
            let mut models = self.models();
            let Some(state) = models
                .get_mut(model)
                .filter(|s| s.opens > 0 && s.loading.is_none())
            else {
                return;
            };
            let load = self.loads.fetch_add(1, Ordering::Relaxed);
            state.loading = Some((load, self.fetcher.reading()));
            load
        };
        let (this, model) = (Arc::clone(self), model.to_owned());
        self.runtime.spawn(async move {
            tokio::time::sleep(LOADING_AT_MOST).await;
            this.change(&model, |state| {
                if state.loading.as_ref().is_some_and(|(l, _)| *l == load) {
                    state.loading = None;
                }
            });
        });
    }

    /// A loader read [`STREAM_AFTER`] bytes of `reading` in a row: streams
    /// what it will read next, unless a stream of its model runs already.
    pub fn start(self: &Arc<Self>, reading: &Target) {
        let model = reading.model_id();
        self.loading(model);
        let spec = reading.model();
        if !self.config.enabled || !spec.stream {
            return;
        }
        let stop = {
            let mut models = self.models();
            let Some(state) = models
                .get_mut(model)
                .filter(|s| s.opens > 0 && s.stop.is_none())
            else {
                return;
            };
            Arc::clone(state.stop.insert(Arc::default()))
        };
        let (this, reading) = (Arc::clone(self), reading.clone());
        let span = info_span!("stream", model = spec.id);
        self.runtime
            .spawn(async move { this.run(reading, stop).await }.instrument(span));
    }

    async fn run(&self, reading: Target, stop: Arc<AtomicBool>) {
        let id = reading.model_id();
        let files = {
            let (reading, cache) = (reading.clone(), Arc::clone(&self.cache));
            blocking(move || Ok(files_to_stream(&reading, &cache)))
                .await
                .unwrap_or_default()
        };
        if files.is_empty() {
            self.stream_ended(id);
            return;
        }
        let metrics = self.fetcher.metrics();
        let total = files.iter().map(|f| f.blob.size).sum();
        let tally = Tally::new(&files);
        let present = tally.started_with();
        let progress = metrics.stream_started(id, total, present);
        info!(
            files = files.len(),
            bytes = total - present,
            "streaming the weights a loader reads"
        );
        let results = self
            .fetcher
            .stream(&files, &stop, &tally, &|n| progress.add(n))
            .await;
        let how = match results.iter().find_map(|r| r.as_ref().err()) {
            Some(FetchError::CacheFull { .. }) => StreamEnd::CacheFull,
            Some(e) => {
                warn!(error = %e, "a streamed file failed; its readers will try again");
                StreamEnd::Failed
            }
            None if stop.load(Ordering::Acquire) => StreamEnd::Closed,
            None => StreamEnd::Done,
        };
        metrics.stream_ended(&progress, how);
        info!(
            end = how.as_str(),
            bytes = progress.fetched(),
            seconds = progress.seconds(),
            rate_mib_s = progress.rate() / f64::from(1 << 20),
            "stream ended"
        );
        self.stream_ended(id);
    }

    fn stream_ended(&self, model: &str) {
        self.change(model, |state| state.stop = None);
    }
}

/// The files to stream for a loader reading `reading`, their blobs opened
/// (and so held: none is evicted while the stream runs). Not that file: the
/// reader's readahead fetches it as it moves on. Streamed as well, it took
/// the link from the next files, which then were not complete when the
/// loader opened them; a file complete at its open is read by passthrough,
/// at local speed (a cold 2 GiB load in 4 shards: 4.0-4.2 s with it,
/// 2.8-3.4 s without, cat of the shards 2.6 and 2.2-2.4 s). Blocking.
fn files_to_stream(reading: &Target, cache: &Cache) -> Vec<Streamed> {
    let (spec, reading) = (reading.model(), reading.file_index());
    // An index JSON is read if it is cached (its model's small files are
    // fetched at the first open, before a loader reads a weight).
    let index = |i: usize| {
        let entry = &spec.files[i];
        if entry.size > LARGE_FILE {
            return None;
        }
        let mut file = cache.open_blob(entry).ok()?.complete_file()?;
        let mut json = Vec::new();
        file.read_to_end(&mut json).ok()?;
        weights::index_shards(&entry.path, &json)
    };
    weights::stream_order(spec, reading, index)
        .into_iter()
        .filter(|&file| file != reading)
        .filter_map(|file| {
            let target = Target::new(Arc::clone(spec), file);
            match cache.open_blob(target.entry()) {
                Ok(blob) => Some(Streamed { target, blob }),
                Err(e) => {
                    debug!(file = %target, error = %e, "not streamed: cannot open it in the cache");
                    None
                }
            }
        })
        .collect()
}
