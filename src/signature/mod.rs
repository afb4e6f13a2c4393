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

use std::collections::HashMap;

use sha2::Digest as _;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

pub use bundle::is_bundle;
pub use keys::{KeyError, TrustedKey};

use crate::hash::Digest;
use crate::manifest::chunk_list::{CHUNK_LIST, ChunkList};
use crate::manifest::{MIN_CHUNK_SIZE, Model};
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
        /// Per file: whether the signature signs its whole sha256 (by
        /// which the cache knows a complete file).
        sha256_signed: Box<[bool]>,
        /// Per file: whether its complete cached file matched its signed
        /// shards, once checked (see [`Verdict::check_complete`]); opens
        /// of one file wait for one check.
        complete_checked: Box<[Mutex<Option<bool>>]>,
    },
    /// Not served; why, naming the file when one is to blame.
    Refused(String),
}

impl Verdict {
    /// The model to serve in place of `model` (the manifest's), or why
    /// none of it is served.
    pub fn serves<'a>(&'a self, model: &'a Arc<Model>) -> Result<&'a Arc<Model>, &'a str> {
        match self {
            Verdict::Unsigned => Ok(model),
            Verdict::Verified { model, .. } => Ok(model),
            Verdict::Refused(why) => Err(why),
        }
    }

    /// Whether file `file` is one the signer left out: never served.
    pub fn leaves_out(&self, file: usize) -> bool {
        matches!(self, Verdict::Verified { unsigned, .. } if unsigned[file])
    }

    /// For file `file` of the model served, bound to signed shards, whose
    /// cached file is `complete`: whether that file's chunks are the signed
    /// ones (`Err` says why not, and is logged the first time). A complete
    /// file is known only by its sha256, which a shard signature does not
    /// sign: it is checked once per verdict, before it is served.
    pub fn check_complete(
        &self,
        file: usize,
        complete: &std::fs::File,
    ) -> io::Result<Result<(), String>> {
        let Verdict::Verified {
            model,
            complete_checked,
            ..
        } = self
        else {
            return Ok(Ok(()));
        };
        // A complete file was checked whole against its sha256.
        if self.signs_sha256(file) {
            return Ok(Ok(()));
        }
        let entry = &model.files[file];
        let mut checked = complete_checked[file]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let known = *checked;
        let matched = match known {
            Some(matched) => matched,
            None => {
                let chunk = |i| match entry.chunk_hash(i) {
                    Some(h) => {
                        crate::cache::chunk_hashes_to(complete, entry.size, entry.chunk_size, i, h)
                    }
                    None => Ok(false),
                };
                let mut all = true;
                for i in 0..entry.chunk_count() {
                    if !chunk(i)? {
                        all = false;
                        break;
                    }
                }
                *checked.insert(all)
            }
        };
        drop(checked);
        if matched {
            return Ok(Ok(()));
        }
        let why = format!(
            "{}/{}: the cached file with its sha256 is not the signed one",
            model.id, entry.path
        );
        if known.is_none() {
            warn!("signature refused: {why}");
        }
        Ok(Err(why))
    }

    /// Whether the signature vouches for file `file`'s whole sha256 (an
    /// unsigned model's manifest does, for what it is worth).
    pub fn signs_sha256(&self, file: usize) -> bool {
        match self {
            Verdict::Verified { sha256_signed, .. } => sha256_signed[file],
            _ => true,
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
    /// Per model id: the version of the model checked (the one served,
    /// and what its verdict depends on), and its verdict once known.
    models: Mutex<HashMap<String, Checked>>,
    /// Checks at once: a bundle may be large (a shard statement of a big
    /// model), and each check holds it and its decoded payload.
    checks: tokio::sync::Semaphore,
}

struct Checked {
    /// Which `Arc` it was last asked for: a quick match for the next ask.
    model: Weak<Model>,
    judged: Digest,
    pending: Pending,
}

impl Signatures {
    pub fn new(trust: Trust, sources: Sources, cache_dir: &Path, metrics: Arc<Metrics>) -> Self {
        Signatures {
            trust,
            sources,
            dir: cache_dir.join(DIR),
            metrics,
            models: Mutex::default(),
            checks: tokio::sync::Semaphore::new(2),
        }
    }

    /// The verdict on `model` if it is known, without waiting.
    pub fn known(&self, model: &Arc<Model>) -> Option<Arc<Verdict>> {
        self.pending(model).get().cloned()
    }

    /// What is known of `model` now, without checking it.
    pub fn standing(&self, model: &Arc<Model>) -> String {
        if model.signature.is_none() && !self.trust.require {
            return "unsigned".into();
        }
        self.known(model)
            .map_or_else(|| "not checked yet".into(), |verdict| verdict.describe())
    }

    fn pending(&self, model: &Arc<Model>) -> Pending {
        let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        // The `Weak` keeps the allocation: an address seen is never another model's.
        if let Some(c) = models.get(&model.id)
            && std::ptr::eq(c.model.as_ptr(), Arc::as_ptr(model))
        {
            return Arc::clone(&c.pending);
        }
        // Another `Arc` (a reload re-parses models): the same verdict if the
        // model is the same, else its new version is checked anew.
        let judged = judged_digest(model);
        let slot = models.entry(model.id.clone()).or_insert_with(|| Checked {
            model: Weak::new(),
            judged,
            pending: Pending::default(),
        });
        if slot.judged != judged {
            slot.judged = judged;
            slot.pending = Pending::default();
        }
        slot.model = Arc::downgrade(model);
        Arc::clone(&slot.pending)
    }

    /// The verdict on `model`: checked once (concurrent opens share the
    /// check), then remembered.
    pub async fn verdict(&self, model: &Arc<Model>) -> Result<Arc<Verdict>, Unavailable> {
        let pending = self.pending(model);
        pending
            .get_or_try_init(|| async {
                let verdict = self.check(model).await?;
                // `status` and `ls` show a model that names no bundle as unsigned.
                if model.signature.is_some() {
                    self.record(model, &verdict);
                }
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
        let _turn = self.checks.acquire().await.expect("never closed");
        let kept = self.kept_path(model, "sig");
        // The kept copy may be of a release the manifest moved on from:
        // judged quietly, and only a verdict it vouches for is said.
        if let Ok(bundle) = std::fs::read(&kept)
            && let verdict @ Verdict::Verified { .. } = self.judge(model, &bundle).await
        {
            self.say(model, &verdict);
            return Ok(verdict);
        }
        let bundle = self
            .fetch(model, model.signature_locations(), MAX_BUNDLE, None)
            .await
            .inspect_err(|_| self.metrics.signature_checked("unavailable"))?;
        let verdict = self.judge(model, &bundle).await;
        self.say(model, &verdict);
        if matches!(verdict, Verdict::Verified { .. }) {
            self.keep(model, &kept, &bundle);
        }
        Ok(verdict)
    }

    /// Checks `bundle` against the trusted keys and `model`; waits only to
    /// fetch the chunk list the bundle signs, if it signs one.
    async fn judge(&self, model: &Model, bundle: &[u8]) -> Verdict {
        let (signed, key) = match bundle::verify(bundle, &self.trust.keys) {
            Ok(verified) => verified,
            Err(e) => return Verdict::Refused(e.to_string()),
        };
        let list = match signed.chunk_list() {
            None => None,
            Some(digest) => match self.chunk_list(model, digest).await {
                Ok(Ok(list)) => Some(list),
                Ok(Err(why)) => return Verdict::Refused(format!("the signed {CHUNK_LIST}: {why}")),
                // The files are signed whole too: verified whole, they are
                // as bound, only not lazy.
                Err(e) => {
                    warn!(model = %model.id, "the signed {CHUNK_LIST} cannot be had, so its files are verified whole: {}", e.why);
                    None
                }
            },
        };
        match bind::bind(model, &signed, list.as_ref()) {
            Ok(bound) => Verdict::Verified {
                key: key.to_string(),
                model: Arc::new(bound.model),
                complete_checked: bound.unsigned.iter().map(|_| Mutex::default()).collect(),
                unsigned: bound.unsigned,
                sha256_signed: bound.sha256_signed,
            },
            Err(m) => Verdict::Refused(format!("{}: {}", m.file, m.why)),
        }
    }

    /// The chunk list the bundle signs as `digest`: the kept copy, else
    /// the first source's whose bytes are the signed ones.
    async fn chunk_list(
        &self,
        model: &Model,
        digest: Digest,
    ) -> Result<Result<ChunkList, String>, Unavailable> {
        let kept = self.kept_path(model, "chunks.json");
        let bytes = match std::fs::read(&kept) {
            Ok(bytes) if Digest::of(&bytes) == digest => bytes,
            _ => {
                let at = model.sources.iter().map(|b| b.join(CHUNK_LIST)).collect();
                // What a list of the model's files can take, at the smallest chunks.
                let chunks: u64 = model
                    .files
                    .iter()
                    .map(|f| f.size.div_ceil(MIN_CHUNK_SIZE))
                    .sum();
                let files = model.files.len() as u64;
                let limit =
                    usize::try_from(chunks * 100 + files * 1024 + 4096).unwrap_or(usize::MAX);
                let bytes = self
                    .fetch(model, at, limit.min(MAX_BUNDLE), Some(digest))
                    .await?;
                self.keep(model, &kept, &bytes);
                bytes
            }
        };
        Ok(ChunkList::parse(&bytes))
    }

    /// The document at the first of `locations` that has it (with the
    /// digest `signed`, if given: a source with other bytes is passed over).
    async fn fetch(
        &self,
        model: &Model,
        locations: Vec<crate::source::Location>,
        limit: usize,
        signed: Option<Digest>,
    ) -> Result<Vec<u8>, Unavailable> {
        let mut failures = Vec::new();
        for location in locations {
            match self.sources.document(&location, limit, None).await {
                Ok(doc) => {
                    let body = doc.body.unwrap_or_default();
                    if signed.is_none_or(|d| Digest::of(&body) == d) {
                        return Ok(body);
                    }
                    failures.push(format!("{}: not the signed bytes", location.origin()));
                }
                Err(e) => failures.push(format!("{}: {e}", location.origin())),
            }
        }
        if failures.is_empty() {
            failures.push("the model has no sources to fetch it from".into());
        }
        Err(Unavailable {
            model: model.id.clone(),
            why: failures.join("; "),
        })
    }

    /// Keeps what verified in the cache, so that the model opens offline.
    fn keep(&self, model: &Model, path: &Path, bytes: &[u8]) {
        if let Err(e) = crate::fileio::write_durably(path, bytes) {
            warn!(model = %model.id, error = %e, "cannot keep a copy of what the signature covers: the next mount fetches it again");
        }
    }

    /// Logs and counts a verdict reached.
    fn say(&self, model: &Model, verdict: &Verdict) {
        match verdict {
            Verdict::Verified { key, .. } => {
                self.metrics.signature_checked("verified");
                info!(model = %model.id, key, "signature verified");
            }
            Verdict::Refused(why) => {
                self.metrics.signature_checked("refused");
                warn!(model = %model.id, "signature refused: {why}");
            }
            Verdict::Unsigned => {}
        }
    }

    fn kept_path(&self, model: &Model, suffix: &str) -> PathBuf {
        kept(&self.dir, &model.id, suffix)
    }

    /// Writes the verdict where `status` and `ls` look.
    fn record(&self, model: &Model, verdict: &Verdict) {
        let record = Record {
            model: model.id.clone(),
            files: judged_digest(model).to_hex(),
            verdict: verdict.describe(),
            at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let path = self.kept_path(model, "json");
        let json = serde_json::to_vec(&record).expect("plain data serializes");
        if let Err(e) = crate::fileio::write_durably(&path, &json) {
            warn!(model = %model.id, error = %e, "cannot record the signature's verdict for `status`");
        }
    }
}

/// What `status` and `ls` read: the last verdict on a model, and which
/// files it was given for.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub model: String,
    /// [`judged_digest`] of the model judged.
    pub files: String,
    pub verdict: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

/// The verdict last recorded in `cache_dir` for `model` as the manifest
/// gives it now, if any.
pub fn recorded(cache_dir: &Path, model: &Model) -> Option<Record> {
    let path = kept(&cache_dir.join(DIR), &model.id, "json");
    let record: Record = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    (record.files == judged_digest(model).to_hex()).then_some(record)
}

/// A model's standing as a listing shows it, with no network.
pub fn standing(cache_dir: Option<&Path>, model: &Model) -> String {
    if model.signature.is_none() {
        return "unsigned".into();
    }
    cache_dir
        .and_then(|dir| recorded(dir, model))
        .map_or_else(|| "signed, not checked yet".into(), |record| record.verdict)
}

/// What a verdict on `model` depends on: the bundle it names and each
/// file's path, size, sha256 and chunking.
fn judged_digest(model: &Model) -> Digest {
    let mut h = sha2::Sha256::new();
    h.update(model.signature.as_deref().unwrap_or("").as_bytes());
    for f in &model.files {
        h.update([0]);
        h.update(f.path.as_bytes());
        h.update(f.size.to_le_bytes());
        h.update(f.sha256.0);
        h.update(f.chunk_size.to_le_bytes());
        f.chunk_hashes()
            .into_iter()
            .flatten()
            .for_each(|c| h.update(c.0));
    }
    Digest(h.finalize().into())
}

/// Where what is kept of model `id` lives in `dir`: named by a digest of
/// the id, the layout the README documents.
fn kept(dir: &Path, id: &str, suffix: &str) -> PathBuf {
    dir.join(format!(
        "{}.{suffix}",
        &Digest::of(id.as_bytes()).to_hex()[..32]
    ))
}
