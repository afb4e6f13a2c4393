//! A mount follows its manifest: it reloads it on SIGHUP (which `modelfs
//! reload` sends), when the file changes (an edit in place or a rename,
//! seen by polling its metadata), and, for one named by URL, every
//! `--manifest-refresh` seconds with a conditional request. A manifest that
//! cannot be had or used changes nothing: the catalog from before stays,
//! and the log, `/healthz` and `modelfs reload` say why.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fuser::Notifier;
use sha2::{Digest as _, Sha256};
use tracing::{debug, info, warn};

use super::{SourceArgs, remote};
use crate::fs::ModelFs;
use crate::fs::fuse::forget_changes;
use crate::manifest::Manifest;
use crate::metrics::Metrics;
use crate::source::{Location, Sources};

/// How often a manifest file's metadata is looked at. A change is acted on
/// once the file has stayed the same for one more look, so that a file
/// being written is not read half-way.
pub const FILE_POLL: Duration = Duration::from_millis(500);

/// What the catalog in use was read from, and what was last looked at.
#[derive(Default)]
pub struct Seen {
    /// The manifest file's metadata when a reload last looked (or the
    /// mount started): the watch acts when it changes.
    pub looked: Option<Stamp>,
    /// The manifest file's metadata when the text served was read: the
    /// same again is the same text.
    pub served: Option<Stamp>,
    /// The ETag of the text served, from its URL.
    pub etag: Option<String>,
    /// The SHA-256 of the text served, if known: the same text again
    /// changes nothing.
    pub text: Option<[u8; 32]>,
}

/// What tells a changed file from the same one: another file renamed over
/// it, or its size or times changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp([i64; 7]);

impl Stamp {
    pub fn of(path: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(Stamp([
            m.dev() as i64,
            m.ino() as i64,
            m.size() as i64,
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        ]))
    }
}

pub struct Follower {
    /// The manifest's path or URL, as given.
    name: PathBuf,
    /// For a manifest named by URL: where, and the clients that fetch it
    /// (made only then).
    url: Option<(Location, Sources)>,
    local_root: Option<PathBuf>,
    /// Where the last good copy of a manifest named by URL is kept.
    kept: Option<PathBuf>,
    core: Arc<ModelFs>,
    notifier: Notifier,
    metrics: Arc<Metrics>,
    /// Held while a reload runs: one at a time.
    seen: tokio::sync::Mutex<Seen>,
}

/// Why a reload runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// SIGHUP, or `modelfs reload`: the manifest is read again whatever its
    /// metadata or ETag say.
    Asked,
    /// The file's metadata or the URL's ETag changed.
    Changed,
}

/// The catalog a reload left.
enum Outcome {
    Unchanged,
    Loaded {
        models: usize,
        entries_changed: usize,
        times: Times,
    },
}

/// How long each step of a reload took. Only the swap is one requests
/// could notice: the pointer swapped, the kernel told, the catalog before
/// freed and its memory given back.
struct Times {
    parse: Duration,
    build: Duration,
    swap: Duration,
}

impl Follower {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: PathBuf,
        local_root: Option<PathBuf>,
        kept_in: Option<&Path>,
        sources: &SourceArgs,
        core: Arc<ModelFs>,
        notifier: Notifier,
        metrics: Arc<Metrics>,
        seen: Seen,
    ) -> anyhow::Result<Follower> {
        let url = remote::location(&name)
            .map(|location| Ok::<_, anyhow::Error>((location, sources.build()?)))
            .transpose()?;
        let kept = url
            .as_ref()
            .zip(kept_in)
            .map(|(_, root)| remote::kept_path(root, &name.to_string_lossy()));
        Ok(Follower {
            name,
            url,
            local_root,
            kept,
            core,
            notifier,
            metrics,
            seen: tokio::sync::Mutex::new(seen),
        })
    }

    pub fn is_remote(&self) -> bool {
        self.url.is_some()
    }

    /// Counts a reload as pending, to be run by [`Follower::reload`]: at
    /// once when it is asked for, so that `modelfs reload` waits for it.
    pub fn asked(&self) {
        self.metrics.catalog_reload_asked();
    }

    /// Reads the manifest again and serves it if it changed; waits for any
    /// reload already running first. [`Follower::asked`] came first.
    pub async fn reload(&self, why: Why) {
        let mut seen = self.seen.lock().await;
        let source = self.name.to_string_lossy();
        match self.try_reload(&mut seen, why).await {
            Ok(Outcome::Unchanged) => {
                debug!(manifest = %source, "the manifest is unchanged");
                self.metrics.catalog_kept(None);
            }
            Ok(Outcome::Loaded {
                models,
                entries_changed,
                times,
            }) => {
                self.metrics.catalog_loaded(&source, models, None);
                let generation = self.metrics.catalog().map_or(0, |c| c.generation);
                info!(
                    manifest = %source,
                    generation,
                    models,
                    entries_changed,
                    parse_ms = times.parse.as_millis() as u64,
                    build_ms = times.build.as_millis() as u64,
                    swap_ms = times.swap.as_secs_f64() * 1e3,
                    "reloaded the manifest"
                );
            }
            Err(e) => {
                let error = format!("{e:#}");
                warn!(manifest = %source, error, "the manifest cannot be used; the catalog from before stays");
                self.metrics.catalog_kept(Some(error));
            }
        }
    }

    async fn try_reload(&self, seen: &mut Seen, why: Why) -> anyhow::Result<Outcome> {
        // What the text read now was read from: set as served once it is.
        let (mut stamp, mut etag) = (None, None);
        let text = match &self.url {
            None => {
                // Looked at before it is read: a change after this is seen
                // by the next look.
                stamp = Stamp::of(&self.name);
                seen.looked = stamp.clone();
                if stamp.is_some() && stamp == seen.served {
                    return Ok(Outcome::Unchanged);
                }
                let name = self.name.clone();
                let read = tokio::task::spawn_blocking(move || std::fs::read_to_string(&name));
                read.await?
                    .with_context(|| format!("cannot read {}", self.name.display()))?
            }
            Some((location, sources)) => {
                let url = self.name.to_string_lossy();
                let unless = seen.etag.as_deref().filter(|_| why == Why::Changed);
                match remote::fetch_unless(sources, &url, location, unless).await? {
                    None => {
                        debug!(manifest = %url, "not modified since it was fetched");
                        return Ok(Outcome::Unchanged);
                    }
                    Some((text, fetched_etag)) => {
                        etag = fetched_etag;
                        text
                    }
                }
            }
        };
        let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        if seen.text == Some(digest) {
            (seen.served, seen.etag) = (stamp, etag);
            return Ok(Outcome::Unchanged);
        }
        // Parsing a catalog and building its tree take a core for a second
        // or two: off the async workers, which serve reads meanwhile.
        let (name, root) = (self.name.clone(), self.local_root.clone());
        let (core, notifier) = (Arc::clone(&self.core), self.notifier.clone());
        let (kept, url) = (self.kept.clone(), self.name.to_string_lossy().into_owned());
        let (done, outcome) = tokio::sync::oneshot::channel();
        let build = move || -> anyhow::Result<Outcome> {
            let began = Instant::now();
            let before = core.manifest();
            let manifest = Manifest::parse_after(&name, &text, root.as_deref(), Some(&before))?;
            drop(before);
            let models = manifest.models.len();
            let parsed = Instant::now();
            let next = core.prepare(Arc::new(manifest))?;
            let built = Instant::now();
            let changes = core.swap(next);
            forget_changes(&notifier, &changes);
            crate::fs::give_back_freed_memory();
            let swapped = Instant::now();
            if let Some(kept) = &kept {
                remote::keep_or_warn(&url, kept, &text);
            }
            Ok(Outcome::Loaded {
                models,
                entries_changed: changes.entries.len(),
                times: Times {
                    parse: parsed - began,
                    build: built - parsed,
                    swap: swapped - built,
                },
            })
        };
        // A thread of its own, at the lowest priority (the threads that
        // parse for it inherit it): a reload is background work.
        std::thread::Builder::new()
            .name("modelfs-reload".into())
            .spawn(move || {
                // SAFETY: setpriority changes only this thread's nice value.
                if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } != 0 {
                    debug!(error = %std::io::Error::last_os_error(), "the reload runs at normal priority");
                }
                let _ = done.send(build());
            })
            .context("cannot start a thread to reload")?;
        let outcome = outcome.await.context("the reload's thread ended early")??;
        // Only now: a text that failed is not "the same" at the next look.
        (seen.served, seen.etag, seen.text) = (stamp, etag, Some(digest));
        Ok(outcome)
    }

    /// Reloads when the manifest file changes, until the runtime ends.
    pub async fn watch_file(self: Arc<Self>) {
        let mut tick = tokio::time::interval(FILE_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut changed_to = None;
        loop {
            tick.tick().await;
            let name = self.name.clone();
            let now = tokio::task::spawn_blocking(move || Stamp::of(&name))
                .await
                .ok()
                .flatten();
            // A file gone (being replaced, say) is waited for.
            if now.is_none() || now == self.seen.lock().await.looked {
                changed_to = None;
            } else if now == changed_to {
                // Changed, and settled since the last look.
                self.asked();
                self.reload(Why::Changed).await;
                changed_to = None;
            } else {
                changed_to = now;
            }
        }
    }

    /// Asks the manifest's URL whether it changed, every `every`, until the
    /// runtime ends.
    pub async fn poll_url(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.asked();
            self.reload(Why::Changed).await;
        }
    }
}
