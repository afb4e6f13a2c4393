//! A manifest named by URL (`-m https://…`, `-m s3://bucket/key`): fetched
//! when a command may use the network, and its last good copy kept in the
//! cache dir, so that a mount restarted with no network still mounts from
//! it, and `ls` and `status` read it without touching the network.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};
use tracing::warn;

use crate::manifest::Manifest;
use crate::source::{Location, Sources, Timeouts};

/// A manifest as a command read it.
pub(super) struct Loaded {
    pub manifest: Manifest,
    /// Why a kept copy stands in for the manifest at its URL, if it does.
    pub stale: Option<String>,
    /// The ETag of the manifest at its URL, if it was fetched and had one.
    pub etag: Option<String>,
    /// The SHA-256 of the text fetched from its URL.
    pub text: Option<[u8; 32]>,
}

impl Loaded {
    pub fn fresh(manifest: Manifest) -> Loaded {
        Loaded {
            manifest,
            stale: None,
            etag: None,
            text: None,
        }
    }
}

/// The largest manifest read: a catalog of 100,000 models is about 60 MB.
const MANIFEST_MAX: usize = 1 << 30;

/// The location `name` names, if it is a URL rather than a file.
pub(super) fn location(name: &Path) -> Option<Location> {
    let text = name.to_str()?;
    ["http://", "https://", "s3://"]
        .iter()
        .any(|scheme| text.starts_with(scheme))
        .then(|| Location::parse(text).ok())
        .flatten()
}

/// Where the last good copy of the manifest at `url` is kept.
pub(super) fn kept_path(cache_root: &Path, url: &str) -> PathBuf {
    let digest = Sha256::digest(url.as_bytes());
    let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    cache_root.join("manifests").join(format!("{name}.toml"))
}

/// The manifest at `url`: with `timeouts`, fetched (and kept in
/// `cache_root`), the kept copy standing in when the fetch or the new text
/// fails (then with why); without, the kept copy if there is one, else
/// fetched.
pub(super) fn load(
    url: &str,
    location: &Location,
    cache_root: Option<&Path>,
    timeouts: Option<Timeouts>,
    local_root: Option<&Path>,
) -> anyhow::Result<Loaded> {
    let kept = cache_root.map(|root| kept_path(root, url));
    // A kept copy that does not validate (damaged) is as good as none.
    let kept_copy = || -> Option<Manifest> {
        let kept = kept.as_ref().filter(|k| k.exists())?;
        Manifest::load(kept, local_root)
            .inspect_err(|e| warn!(kept = %kept.display(), error = %e, "the kept copy of the manifest is damaged"))
            .ok()
    };
    if timeouts.is_none()
        && let Some(manifest) = kept_copy()
    {
        return Ok(Loaded::fresh(manifest));
    }
    let fetched =
        fetch(url, location, timeouts.unwrap_or_else(default_timeouts)).and_then(|(text, etag)| {
            let manifest = Manifest::parse_with(url.as_ref(), &text, local_root)?;
            Ok((manifest, text, etag))
        });
    match fetched {
        Ok((manifest, text, etag)) => {
            if let Some(kept) = &kept {
                keep_or_warn(url, kept, &text);
            }
            Ok(Loaded {
                manifest,
                stale: None,
                etag,
                text: Some(Sha256::digest(text.as_bytes()).into()),
            })
        }
        Err(e) => match kept_copy() {
            Some(manifest) => {
                let why = format!("{e:#}");
                warn!(manifest = url, error = %why, kept = %kept.as_ref().expect("a copy").display(), "cannot use the manifest at its URL: using the copy kept from the last time");
                Ok(Loaded {
                    stale: Some(why),
                    ..Loaded::fresh(manifest)
                })
            }
            None => Err(e),
        },
    }
}

/// Keeps `text` as the last good copy of the manifest at `url`.
pub(super) fn keep_or_warn(url: &str, kept: &Path, text: &str) {
    if let Err(e) = crate::fileio::write_durably(kept, text.as_bytes()) {
        warn!(manifest = url, error = %e, "cannot keep a copy of the manifest; a restart will need the network");
    }
}

pub(super) fn default_timeouts() -> Timeouts {
    Timeouts {
        connect: std::time::Duration::from_secs(10),
        read: std::time::Duration::from_secs(30),
        request: std::time::Duration::from_secs(60),
    }
}

/// The text at `url`, and its ETag.
fn fetch(
    url: &str,
    location: &Location,
    timeouts: Timeouts,
) -> anyhow::Result<(String, Option<String>)> {
    let sources = Sources::new(timeouts)?;
    let fetched = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(fetch_unless(&sources, url, location, None))?;
    Ok(fetched.expect("an unconditional request has a body"))
}

/// The text at `url` and its ETag, unless it still has the ETag `unless`
/// (then None: nothing but headers came).
pub(super) async fn fetch_unless(
    sources: &Sources,
    url: &str,
    location: &Location,
    unless: Option<&str>,
) -> anyhow::Result<Option<(String, Option<String>)>> {
    let document = sources
        .document(location, MANIFEST_MAX, unless)
        .await
        .with_context(|| format!("cannot fetch the manifest {url}"))?;
    let Some(bytes) = document.body else {
        return Ok(None);
    };
    let text = String::from_utf8(bytes)
        .with_context(|| format!("the manifest {url} is not UTF-8 text"))?;
    Ok(Some((text, document.etag)))
}
