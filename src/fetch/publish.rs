//! Publishing a file every chunk of which is verified: its whole-file check
//! (sha256) and the rename to its complete name. The check hashes the whole
//! file again, as much CPU as the fetch's own hashing, so it waits until no
//! request is under way in this process: on 2 cores it would otherwise slow
//! the very load it follows (a model's later shards stream in while its
//! first ones would be checked). Readers lose nothing by the wait: a file
//! whose chunks are all verified is already served from them, by passthrough.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tracing::warn;

use super::{Fetcher, Target};
use crate::cache::Blob;

/// The longest a check waits for quiet: a mount that never stops fetching
/// still publishes its files.
const MOST_DEFERRED: Duration = Duration::from_secs(60);

/// Requests under way, and a wake-up when there are none.
#[derive(Default)]
pub(super) struct Quiet {
    busy: AtomicUsize,
    idle: Notify,
}

/// One request under way, until dropped.
pub(super) struct Busy(Arc<Quiet>);

impl Quiet {
    pub(super) fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(self))
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

    /// Once every chunk is verified: checks the whole file against its
    /// sha256 and publishes it as complete, once no request is under way
    /// (or after [`MOST_DEFERRED`]), off the path of any reader. At most one
    /// runs at a time per blob.
    pub(super) fn finish_in_background(&self, target: &Target, blob: &Arc<Blob>) {
        let (target, blob, quiet) = (target.clone(), Arc::clone(blob), Arc::clone(&self.quiet));
        tokio::spawn(async move {
            let _ = tokio::time::timeout(MOST_DEFERRED, quiet.until_idle()).await;
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
