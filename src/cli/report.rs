//! `modelfs ls` and `modelfs status`: read the manifest and the cache's state,
//! never the network, never changing anything.

use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde_json::json;

use crate::cache::{Cache, Presence, files};
use crate::manifest::{Manifest, Model};
use crate::units::format_size;

/// Presence of every file of a model; a cache that does not exist holds nothing.
fn model_presence(cache: Option<&Cache>, model: &Model) -> Vec<Presence> {
    model
        .files
        .iter()
        .map(|f| {
            cache
                .and_then(|c| c.presence(f).ok())
                .unwrap_or(Presence::Absent)
        })
        .collect()
}

fn model_state(model: &Model, presence: &[Presence]) -> (&'static str, u64, u64) {
    let size: u64 = model.files.iter().map(|f| f.size).sum();
    let cached: u64 = model
        .files
        .iter()
        .zip(presence)
        .map(|(f, p)| p.bytes(f.size))
        .sum();
    let state = if presence.contains(&Presence::Corrupt) {
        "corrupt"
    } else if presence.iter().all(|p| *p == Presence::Complete) {
        "complete"
    } else if cached == 0 {
        "absent"
    } else {
        "partial"
    };
    (state, size, cached)
}

/// Opens the cache only if it exists: status and ls must not create it.
fn existing_cache(root: &Path) -> anyhow::Result<Option<Cache>> {
    if !root.join("VERSION").exists() {
        return Ok(None);
    }
    Ok(Some(
        Cache::open(root).with_context(|| format!("cache {}", root.display()))?,
    ))
}

fn pinned(cache: Option<&Cache>, model: &Model) -> bool {
    cache.map_or(model.pinned, |c| c.is_pinned(model))
}

/// One file as `ls --json` and `status --json` show it.
fn file_json(f: &crate::manifest::FileEntry, p: Presence) -> serde_json::Value {
    json!({"path": f.path, "size": f.size, "cached_bytes": p.bytes(f.size),
           "sha256": f.sha256.to_hex(), "verified": verification(f),
           "component": f.component, "optional": f.optional})
}

/// A value as TOML writes it inline (`["fp16", "bf16"]`, `{ fps = 24 }`).
fn inline(v: &toml::Value) -> String {
    match v {
        toml::Value::Table(t) => {
            let pairs: Vec<String> = t
                .iter()
                .map(|(k, v)| format!("{k} = {}", inline(v)))
                .collect();
            format!("{{ {} }}", pairs.join(", "))
        }
        other => other.to_string(),
    }
}

/// How a file's bytes are verified: chunk by chunk (reads are lazy), or
/// only whole (a read waits for the whole file).
fn verification(f: &crate::manifest::FileEntry) -> &'static str {
    if f.is_chunked() { "chunks" } else { "whole" }
}

/// Rounded down, so that only a complete model shows 100%.
fn percent(cached: u64, size: u64) -> String {
    if size == 0 || cached >= size {
        return "100%".into();
    }
    format!("{}%", (cached as u128 * 100 / size as u128) as u64)
}

pub fn ls(
    manifest: &Manifest,
    cache_root: &Path,
    model: Option<&str>,
    as_json: bool,
) -> anyhow::Result<()> {
    let cache = existing_cache(cache_root)?;
    let mut out = buffered_stdout();
    match model {
        None if as_json => {
            for m in &manifest.models {
                let (_, size, cached) = model_state(m, &model_presence(cache.as_ref(), m));
                let line = json!({"id": m.id, "files": m.files.len(), "size": size,
                                  "cached_bytes": cached, "pinned": pinned(cache.as_ref(), m),
                                  "signature": signature(cache.as_ref(), m)});
                writeln!(out, "{line}")?;
            }
        }
        Some(id) if as_json => {
            let m = &manifest.models[super::model_index(manifest, id)?];
            for (f, p) in m.files.iter().zip(model_presence(cache.as_ref(), m)) {
                writeln!(out, "{}", file_json(f, p))?;
            }
        }
        None => {
            writeln!(
                out,
                "{:<40} {:>6} {:>11} {:>7}  {:<6}  SIGNATURE",
                "MODEL", "FILES", "SIZE", "CACHED", "PINNED"
            )?;
            for m in &manifest.models {
                let (_, size, cached) = model_state(m, &model_presence(cache.as_ref(), m));
                writeln!(
                    out,
                    "{:<40} {:>6} {:>11} {:>7}  {:<6}  {}",
                    m.id,
                    m.files.len(),
                    format_size(size),
                    percent(cached, size),
                    if pinned(cache.as_ref(), m) {
                        "yes"
                    } else {
                        "no"
                    },
                    signature(cache.as_ref(), m)
                )?;
            }
        }
        Some(id) => {
            let m = &manifest.models[super::model_index(manifest, id)?];
            for (key, value) in &m.details {
                writeln!(out, "{key}: {}", inline(value))?;
            }
            if !m.details.is_empty() {
                writeln!(out)?;
            }
            // VERIFIED: per chunk (lazy reads), or whole (a read waits for the file).
            writeln!(
                out,
                "{:<50} {:>11} {:>7}  {:<8}  {:<22}  SHA256",
                "FILE", "SIZE", "CACHED", "VERIFIED", "COMPONENT"
            )?;
            for (f, p) in m.files.iter().zip(model_presence(cache.as_ref(), m)) {
                let component = match (&f.component, f.optional) {
                    (Some(c), true) => format!("{c} (optional)"),
                    (Some(c), false) => c.to_string(),
                    (None, true) => "(optional)".into(),
                    (None, false) => "-".into(),
                };
                writeln!(
                    out,
                    "{:<50} {:>11} {:>7}  {:<8}  {:<22}  {}",
                    f.path,
                    format_size(f.size),
                    percent(p.bytes(f.size), f.size),
                    verification(f),
                    component,
                    &f.sha256.to_hex()[..16]
                )?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

pub fn status(manifest: &Manifest, cache_root: &Path, as_json: bool) -> anyhow::Result<()> {
    let cache = existing_cache(cache_root)?;
    let cache = cache.as_ref();
    let cache_bytes = cache.map_or(0, Cache::disk_usage);
    let mounts = cache.map(|c| live_mounts(c.root())).unwrap_or_default();
    let quota = mounts_quota(&mounts);
    if as_json {
        // Fields in serde_json's key order, so the document reads as ever.
        #[derive(serde::Serialize)]
        struct Doc<'a> {
            cache_bytes: u64,
            cache_dir: &'a Path,
            models: ModelsJson<'a>,
            mounts: &'a [serde_json::Value],
            quota_bytes: Option<u64>,
        }
        let doc = Doc {
            cache_bytes,
            cache_dir: cache_root,
            models: ModelsJson { manifest, cache },
            mounts: &mounts,
            quota_bytes: quota,
        };
        let mut out = buffered_stdout();
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
        out.flush()?;
        return Ok(());
    }
    let mut out = buffered_stdout();
    writeln!(
        out,
        "cache {}: {} on disk, {}",
        cache_root.display(),
        format_size(cache_bytes),
        quota.map_or("no quota".to_owned(), |q| format!(
            "quota {} (of the mounts)",
            format_size(q)
        ))
    )?;
    // A line a model as it is looked at: a catalog of 100,000 models is
    // never held as a document (that took 2 s and 516 MB).
    for m in &manifest.models {
        let s = Summary::of(cache, m, &model_presence(cache, m));
        writeln!(
            out,
            "  {:<40} {:<9} {} of {} ({}), {} of {} files complete{}{}",
            m.id,
            s.state,
            format_size(s.cached),
            format_size(s.size),
            percent(s.cached, s.size),
            s.complete,
            m.files.len(),
            if s.pinned { ", pinned" } else { "" },
            match &m.signature {
                Some(_) => format!(", signature {}", s.signature),
                None => String::new(),
            },
        )?;
    }
    if mounts.is_empty() {
        writeln!(out, "no mounts use this cache")?;
    }
    for mount in &mounts {
        writeln!(
            out,
            "mounted at {} (pid {})",
            mount["mountpoint"].as_str().unwrap_or("?"),
            mount["pid"]
        )?;
        if mount["catalog"].is_object() {
            writeln!(out, "  {}", describe_catalog(&mount["catalog"]))?;
        }
        for (model, stream) in mount["streams"].as_object().into_iter().flatten() {
            writeln!(out, "  {}", describe_stream(model, stream))?;
        }
        for (origin, source) in mount["sources"].as_object().into_iter().flatten() {
            writeln!(out, "  {}", describe_source(origin, source))?;
        }
    }
    out.flush()?;
    Ok(())
}

/// One line for a model stream of a mount's record: how far it got, how
/// fast, and how it ended.
fn describe_stream(model: &str, stream: &serde_json::Value) -> String {
    let bytes = |key: &str| format_size(stream[key].as_u64().unwrap_or(0));
    let state = stream["state"].as_str().unwrap_or("?");
    format!(
        "stream of {model}: {state}, {} fetched, {} left of {}, {}/s over {} s",
        bytes("bytes"),
        bytes("remaining_bytes"),
        bytes("total_bytes"),
        format_size(stream["rate_bytes_per_second"].as_f64().unwrap_or(0.0) as u64),
        stream["seconds"].as_f64().unwrap_or(0.0),
    )
}

/// One line for the catalog a mount serves: which generation, of how many
/// models, and why the manifest's text now is not it, if it is not.
fn describe_catalog(catalog: &serde_json::Value) -> String {
    let number = |key: &str| catalog[key].as_u64().unwrap_or(0);
    let mut line = format!(
        "catalog: generation {}, {} models, {} reloads",
        number("generation"),
        number("models"),
        number("reloads")
    );
    if let Some(error) = catalog["error"].as_str() {
        line += &format!("; not served: {error}");
    }
    line
}

/// One line for a source of a mount's record: its rate, the requests that
/// left it, and whether it is tried last, and why.
fn describe_source(origin: &str, source: &serde_json::Value) -> String {
    let mut line = format!("source {origin}:");
    if let Some(rate) = source["rate_bytes_per_second"].as_u64() {
        line += &format!(" {}/s a request,", format_size(rate));
    }
    line += &format!(
        " {} requests moved on, demoted {} times",
        source["hedges"].as_u64().unwrap_or(0),
        source["demotions"].as_u64().unwrap_or(0)
    );
    if let Some(why) = source["demoted_for"].as_str() {
        line += &format!(", tried last ({why})");
    }
    if let Some(error) = source["error"].as_str() {
        line += &format!("; last error: {error}");
    }
    line
}

/// Standard output in large writes: a catalog lists 100,000 lines.
fn buffered_stdout() -> std::io::BufWriter<std::io::StdoutLock<'static>> {
    std::io::BufWriter::with_capacity(64 << 10, std::io::stdout().lock())
}

/// The models of `status --json`, each made as it is written: the whole
/// document of 100,000 models took 1 GB.
struct ModelsJson<'a> {
    manifest: &'a Manifest,
    cache: Option<&'a Cache>,
}

impl serde::Serialize for ModelsJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.manifest.models.iter().map(|m| {
            let presence = model_presence(self.cache, m);
            let s = Summary::of(self.cache, m, &presence);
            let files: Vec<_> = m
                .files
                .iter()
                .zip(&presence)
                .map(|(f, p)| file_json(f, *p))
                .collect();
            let details: serde_json::Map<_, _> = m
                .details
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect();
            json!({"id": m.id, "state": s.state, "size": s.size, "cached_bytes": s.cached,
                   "needed_bytes": s.size - s.cached,
                   "files_complete": s.complete, "pinned": s.pinned, "signature": s.signature,
                   "details": details, "files": files})
        }))
    }
}

/// One model's state in the cache, as `status` reports it.
struct Summary {
    state: &'static str,
    size: u64,
    cached: u64,
    /// Files complete in the cache.
    complete: usize,
    pinned: bool,
    /// See [`signature`].
    signature: String,
}

impl Summary {
    fn of(cache: Option<&Cache>, m: &Model, presence: &[Presence]) -> Self {
        let (state, size, cached) = model_state(m, presence);
        Summary {
            state,
            size,
            cached,
            complete: presence
                .iter()
                .filter(|p| **p == Presence::Complete)
                .count(),
            pinned: pinned(cache, m),
            signature: signature(cache, m),
        }
    }
}

/// A model's signature standing, as the last check recorded it in the cache.
fn signature(cache: Option<&Cache>, m: &Model) -> String {
    crate::signature::standing(cache.map(Cache::root), m)
}

/// The quota a cache keeps to: the smallest of its live mounts'.
pub(super) fn mounts_quota(mounts: &[serde_json::Value]) -> Option<u64> {
    mounts
        .iter()
        .filter_map(|m| m["max_cache_size"].as_u64())
        .min()
}

/// The records of mounts of the cache at `root` that are live: their
/// process holds the record's lock.
pub(super) fn live_mounts(root: &Path) -> Vec<serde_json::Value> {
    let Ok(entries) = std::fs::read_dir(root.join("mounts")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| files::is_locked(&e.path()).unwrap_or(false))
        .filter_map(|e| serde_json::from_slice(&files::read(&e.path()).ok()?).ok())
        .collect()
}
