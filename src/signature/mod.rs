//! Publisher signatures (OpenSSF Model Signing): a model may name the bundle
//! its publisher signed it with; with `--trusted-key`, no byte of it is
//! served unless that bundle verifies against a trusted key and signs every
//! file with the sha256 the manifest gives.
//!
//! Checked lazily, at a model's first open (a listing stays offline), once
//! per version of the model, and remembered: the verdict is kept for the
//! process, and written to `CACHE/signatures/` for `status` and `ls`.
//! A bundle that verified is kept there too, so a cached model opens with
//! no network.
//!
//! What is bound: [`bind`] gives the model as its signature vouches for it,
//! each file verified whole against its signed sha256 (the `files`
//! serialization, the one `model_signing sign` makes: nothing of a file is
//! served before all of it verified) or chunk by chunk against signed shards
//! (`shards` serialization with a chunk size as shard size: lazy, as an
//! unsigned model).

mod bind;
mod bundle;
mod keys;

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

pub use bundle::BundleError;
pub use keys::{KeyError, TrustedKey};

use crate::hash::Digest;
use crate::manifest::{FileEntry, Model};
use crate::metrics::Metrics;
use crate::source::Sources;

/// Where verdicts and bundles are kept, under the cache dir.
pub const DIR: &str = "signatures";
/// Larger than any bundle: a shard statement of a 1 TB model in 1 MiB shards.
const MAX_BUNDLE: usize = 256 << 20;

/// What the user trusts.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    pub keys: Vec<TrustedKey>,
    /// Refuse models that name no bundle.
    pub require: bool,
}

impl Trust {
    /// Whether signatures are checked at all.
    pub fn is_active(&self) -> bool {
        !self.keys.is_empty() || self.require
    }
}

/// A model's standing.
#[derive(Debug)]
pub enum Verdict {
    /// It names no bundle and none is required.
    Unsigned,
    /// Its bundle verified: the model as the signature vouches for it.
    Verified {
        key: String,
        model: Arc<Model>,
        unsigned: Box<[bool]>,
        /// Files signed in shards whose complete cached file was checked
        /// against them (see [`Signatures::check_complete`]).
        complete_checked: Mutex<HashSet<usize>>,
    },
    /// Not served; why, naming the file when one is to blame.
    Refused(String),
}

impl Verdict {
    /// The model to serve in place of `model` (the manifest's) and which
    /// of its files are unsigned, or why none of it is served.
    pub fn serves<'a>(
        &'a self,
        model: &'a Arc<Model>,
    ) -> Result<(&'a Arc<Model>, &'a [bool]), &'a str> {
        match self {
            Verdict::Unsigned => Ok((model, &[])),
            Verdict::Verified {
                model, unsigned, ..
            } => Ok((model, unsigned)),
            Verdict::Refused(why) => Err(why),
        }
    }

    /// What `status`, `ls` and the xattr show.
    pub fn describe(&self) -> String {
        match self {
            Verdict::Unsigned => "unsigned".into(),
            Verdict::Verified { key, .. } => format!("verified by {key}"),
            Verdict::Refused(why) => format!("refused: {why}"),
        }
    }
}

/// The bundle could not be had: not a verdict, tried again at the next open.
#[derive(Debug, thiserror::Error)]
#[error("{model}: signature bundle: {why}")]
pub struct Unavailable {
    pub model: String,
    pub why: String,
}

type Pending = Arc<tokio::sync::OnceCell<Arc<Verdict>>>;

pub struct Signatures {
    trust: Trust,
    sources: Sources,
    dir: PathBuf,
    metrics: Arc<Metrics>,
    /// Per model id: the version of the model checked, and its verdict once known.
    models: Mutex<HashMap<String, (Weak<Model>, Pending)>>,
}

impl Signatures {
    pub fn new(trust: Trust, sources: Sources, cache_dir: &Path, metrics: Arc<Metrics>) -> Self {
        Signatures {
            trust,
            sources,
            dir: cache_dir.join(DIR),
            metrics,
            models: Mutex::default(),
        }
    }

    /// The verdict on `model` if it is known, without waiting.
    pub fn known(&self, model: &Arc<Model>) -> Option<Arc<Verdict>> {
        self.pending(model).get().cloned()
    }

    /// What is known of `model` now, without checking it.
    pub fn standing(&self, model: &Arc<Model>) -> String {
        match self.known(model) {
            Some(verdict) => verdict.describe(),
            None if model.signature.is_none() && !self.trust.require => "unsigned".into(),
            None => "not checked yet".into(),
        }
    }

    fn pending(&self, model: &Arc<Model>) -> Pending {
        let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        let slot = models
            .entry(model.id.clone())
            .or_insert_with(|| (Weak::new(), Pending::default()));
        // A reload that changed the model: its new version is checked anew.
        if !std::ptr::eq(slot.0.as_ptr(), Arc::as_ptr(model)) {
            *slot = (Arc::downgrade(model), Pending::default());
        }
        Arc::clone(&slot.1)
    }

    /// The verdict on `model`: checked once (concurrent opens share the
    /// check), then remembered.
    pub async fn verdict(&self, model: &Arc<Model>) -> Result<Arc<Verdict>, Unavailable> {
        let pending = self.pending(model);
        pending
            .get_or_try_init(|| async {
                let verdict = self.check(model).await?;
                self.record(model, &verdict);
                Ok(Arc::new(verdict))
            })
            .await
            .cloned()
    }

    async fn check(&self, model: &Arc<Model>) -> Result<Verdict, Unavailable> {
        if model.signature.is_none() {
            return Ok(if self.trust.require {
                Verdict::Refused("it names no signature bundle, and --require-signatures".into())
            } else {
                Verdict::Unsigned
            });
        }
        let kept = self.kept_path(model);
        if let Ok(bundle) = std::fs::read(&kept)
            && let verdict @ Verdict::Verified { .. } = self.judge(model, &bundle)
        {
            return Ok(verdict);
        }
        let bundle = match self.fetch(model).await {
            Ok(bundle) => bundle,
            Err(e) => {
                self.metrics.signature_checked("unavailable");
                return Err(e);
            }
        };
        let verdict = self.judge(model, &bundle);
        if matches!(verdict, Verdict::Verified { .. })
            && let Err(e) = crate::fileio::write_durably(&kept, &bundle)
        {
            warn!(model = %model.id, error = %e, "cannot keep the signature bundle: the next mount fetches it again");
        }
        Ok(verdict)
    }

    /// The bundle, from the first of the model's sources that has it.
    async fn fetch(&self, model: &Model) -> Result<Vec<u8>, Unavailable> {
        let mut failures = Vec::new();
        for location in model.signature_locations() {
            match self.sources.document(&location, MAX_BUNDLE, None).await {
                Ok(doc) => return Ok(doc.body.unwrap_or_default()),
                Err(e) => failures.push(format!("{}: {e}", location.origin())),
            }
        }
        Err(Unavailable {
            model: model.id.clone(),
            why: failures.join("; "),
        })
    }

    /// Checks `bundle` against the trusted keys and `model`; says why once.
    fn judge(&self, model: &Model, bundle: &[u8]) -> Verdict {
        let verdict = match bundle::verify(bundle, &self.trust.keys) {
            Err(e) => Verdict::Refused(e.to_string()),
            Ok((signed, key)) => match bind::bind(model, &signed) {
                Ok(bound) => Verdict::Verified {
                    key: key.to_string(),
                    model: Arc::new(bound.model),
                    unsigned: bound.unsigned,
                    complete_checked: Mutex::default(),
                },
                Err(m) => Verdict::Refused(format!("{}: {}", m.file, m.why)),
            },
        };
        match &verdict {
            Verdict::Verified { key, .. } => {
                self.metrics.signature_checked("verified");
                info!(model = %model.id, key, "signature verified");
            }
            Verdict::Refused(why) => {
                self.metrics.signature_checked("refused");
                warn!(model = %model.id, "not served: its signature does not vouch for it: {why}");
            }
            Verdict::Unsigned => {}
        }
        verdict
    }

    fn kept_path(&self, model: &Model) -> PathBuf {
        self.dir.join(format!("{}.sig", file_stem(&model.id)))
    }

    /// Writes the verdict where `status` and `ls` look.
    fn record(&self, model: &Model, verdict: &Verdict) {
        let record = Record {
            model: model.id.clone(),
            files: files_digest(model).to_hex(),
            verdict: verdict.describe(),
            at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let path = self.dir.join(format!("{}.json", file_stem(&model.id)));
        let json = serde_json::to_vec(&record).expect("plain data serializes");
        if let Err(e) = crate::fileio::write_durably(&path, &json) {
            warn!(model = %model.id, error = %e, "cannot record the signature's verdict for `status`");
        }
    }

    /// For a file bound to signed shards whose cached file is complete:
    /// whether that file's chunks are the signed ones. A complete file is
    /// known only by its sha256, which a shard signature does not sign, so
    /// it is checked once per process before it is served.
    pub fn check_complete(
        verdict: &Verdict,
        file: usize,
        entry: &FileEntry,
        complete: &std::fs::File,
    ) -> io::Result<bool> {
        let Verdict::Verified {
            complete_checked, ..
        } = verdict
        else {
            return Ok(true);
        };
        if entry.chunk_count() <= 1 || !entry.is_chunked() {
            return Ok(true);
        }
        let checked = || complete_checked.lock().unwrap_or_else(|p| p.into_inner());
        if checked().contains(&file) {
            return Ok(true);
        }
        let mut buf = Vec::new();
        for i in 0..entry.chunk_count() {
            let start = i * entry.chunk_size;
            let len = entry.chunk_size.min(entry.size - start) as usize;
            buf.clear();
            crate::fileio::append_at(complete, &mut buf, len, start)?;
            if Some(Digest::of(&buf)) != entry.chunk_hash(i) {
                return Ok(false);
            }
        }
        checked().insert(file);
        Ok(true)
    }
}

/// What `status` and `ls` read: the last verdict on a model, and which
/// files it was given for.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub model: String,
    /// [`files_digest`] of the model judged.
    pub files: String,
    pub verdict: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

/// The verdict last recorded in `cache_dir` for `model` as the manifest
/// gives it now, if any.
pub fn recorded(cache_dir: &Path, model: &Model) -> Option<Record> {
    let path = cache_dir
        .join(DIR)
        .join(format!("{}.json", file_stem(&model.id)));
    let record: Record = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    (record.files == files_digest(model).to_hex()).then_some(record)
}

/// A model's standing as a listing shows it, with no network.
pub fn standing(cache_dir: Option<&Path>, model: &Model) -> String {
    match (
        &model.signature,
        cache_dir.and_then(|dir| recorded(dir, model)),
    ) {
        (None, _) => "unsigned".into(),
        (Some(_), Some(record)) => record.verdict,
        (Some(_), None) => "signed, not checked yet".into(),
    }
}

/// Model ids may hold any character; file names get a digest of them.
fn file_stem(id: &str) -> String {
    Digest::of(id.as_bytes()).to_hex()[..32].to_owned()
}

/// What a verdict is about: the files' paths and digests, and the bundle named.
fn files_digest(model: &Model) -> Digest {
    let mut text = format!("{}\n", model.signature.as_deref().unwrap_or(""));
    for f in &model.files {
        text.push_str(&format!("{} {} {}\n", f.path, f.size, f.sha256));
    }
    Digest::of(text.as_bytes())
}
