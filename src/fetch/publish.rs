//! Publishing a file every chunk of which is verified: its whole-file check
//! (sha256) and the rename to its complete name. The check hashes the whole
//! file again, as much CPU as the fetch's own hashing, so it waits until no
//! request is under way in this process and no loader is loading: on 2
//! cores it would otherwise slow the very load it follows (a model's later
//! shards stream in while its first ones would be checked, and the loader
//! still turns the last ones into tensors after the last byte came;
//! measured: a third of the mount's CPU during a load). Readers lose nothing
//! by the wait: a file whose chunks are all verified is already served from
//! them, by passthrough.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tracing::warn;

use super::{Fetcher, Target};
use crate::cache::Blob;

/// The longest a check waits for quiet: a mount that never stops fetching
/// still publishes its files.
const MOST_DEFERRED: Duration = Duration::from_secs(60);

/// How long quiet must last: a loader closes one shard and opens the next
/// at once, and a check started in between would run beside its load.
const QUIET_FOR: Duration = Duration::from_secs(1);

/// Requests and loads under way, and a wake-up when there are none.
pub(super) struct Quiet {
    busy: AtomicUsize,
    /// How many ever began: quiet lasted if this did not move.
    began: AtomicU64,
    idle: Notify,
    /// Set when the mount ends: deferred checks run at once.
    ending: watch::Sender<bool>,
    /// Checks waiting or running.
    deferred: watch::Sender<usize>,
}

impl Default for Quiet {
    fn default() -> Self {
        Quiet {
            busy: AtomicUsize::new(0),
            began: AtomicU64::new(0),
            idle: Notify::new(),
            ending: watch::Sender::new(false),
            deferred: watch::Sender::new(0),
        }
    }
}

/// One request or load under way, until dropped.
pub struct Busy(Arc<Quiet>);

impl Quiet {
    pub(super) fn busy(self: &Arc<Self>) -> Busy {
        self.began.fetch_add(1, Ordering::AcqRel);
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(self))
    }

    /// Returns once nothing was under way for [`QUIET_FOR`], after
    /// [`MOST_DEFERRED`], or once the mount ends.
    async fn until_check(&self) {
        let mut ending = self.ending.subscribe();
        tokio::select! {
            _ = tokio::time::timeout(MOST_DEFERRED, self.until_quiet()) => {}
            _ = ending.wait_for(|&ending| ending) => {}
        }
    }

    async fn until_quiet(&self) {
        loop {
            self.until_idle().await;
            let began = self.began.load(Ordering::Acquire);
            tokio::time::sleep(QUIET_FOR).await;
            if self.busy.load(Ordering::Acquire) == 0 && self.began.load(Ordering::Acquire) == began
            {
                return;
            }
        }
    }

    async fn until_idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.busy.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// One deferred check, counted until dropped.
struct Deferred(Arc<Quiet>);

impl Drop for Deferred {
    fn drop(&mut self) {
        self.0.deferred.send_modify(|n| *n -= 1);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Fetcher {
    /// Publishes a partial file whose chunks are all verified, counting the
    /// bits other processes set: when processes share the work, the one that
    /// sets the last bit may not know the others did theirs. Costs a scan of
    /// the map.
    pub fn finish_if_verified(&self, target: &Target, blob: &Arc<Blob>) {
        if blob.is_complete() {
            return;
        }
        blob.recount_verified();
        if blob.all_chunks_verified() {
            self.finish_in_background(target, blob);
        }
    }

    /// Holds off whole-file checks while the returned guard lives: a loader
    /// reading a model's weights.
    pub fn reading(&self) -> Busy {
        self.quiet.busy()
    }

    /// Runs the deferred whole-file checks now and waits for them, for at
    /// most `within`: a mount that ends leaves no verified file partial. A
    /// check left undone runs at the file's next open. Says how many were.
    pub async fn finish_deferred(&self, within: Duration) -> usize {
        self.quiet.ending.send_replace(true);
        let mut deferred = self.quiet.deferred.subscribe();
        let _ = tokio::time::timeout(within, deferred.wait_for(|&n| n == 0)).await;
        *deferred.borrow()
    }

    /// Once every chunk is verified: checks the whole file against its
    /// sha256 and publishes it as complete, once no request or load was
    /// under way for [`QUIET_FOR`] (or after [`MOST_DEFERRED`], or at the
    /// mount's end), off the path of any reader. At most one runs at a time
    /// per blob.
    pub(super) fn finish_in_background(&self, target: &Target, blob: &Arc<Blob>) {
        let (target, blob, quiet) = (target.clone(), Arc::clone(blob), Arc::clone(&self.quiet));
        quiet.deferred.send_modify(|n| *n += 1);
        // Made before the task: dropped with it even if it never runs.
        let done = Deferred(Arc::clone(&quiet));
        tokio::spawn(async move {
            let _done = done;
            quiet.until_check().await;
            let finished = tokio::task::spawn_blocking(move || {
                let result = blob.finish_chunked();
                (target, blob, result)
            });
            let Ok((target, blob, result)) = finished.await else {
                return;
            };
            match result {
                Ok(Ok(())) => {}
                Ok(Err(actual)) => warn!(
                    model = target.model_id(),
                    file = %target.entry().path,
                    expected = %blob.digest,
                    %actual,
                    "every chunk matches its hash but the whole file does not: the manifest is inconsistent"
                ),
                Err(e) => warn!(
                    model = target.model_id(),
                    file = %target.entry().path,
                    error = %e,
                    "cannot complete the cached file"
                ),
            }
        });
    }
}
