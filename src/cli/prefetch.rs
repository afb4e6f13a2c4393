//! `modelfs prefetch`: whole models into the cache now, in parallel, with a
//! progress bar per model; then each model's ready path.

use std::io::Write as _;
use std::sync::Arc;

use clap::Args;
use futures::future::join_all;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::{
    CacheArg, ManifestArg, QuotaArg, SignatureArgs, SourceArgs, init_logging, model_indices,
    open_cache,
};
use crate::cache::Cache;
use crate::fetch::{Fetcher, Target};
use crate::manifest::Model;
use crate::signature::Signatures;

#[derive(Args)]
pub struct PrefetchArgs {
    /// Model ids to fetch (or --all).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    models: Vec<String>,
    /// Fetch every model of the manifest.
    #[arg(long)]
    all: bool,
    /// One JSON object per model: {"model", "ok", "path" or "error", "skipped"}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    manifest: ManifestArg,
    #[command(flatten)]
    cache: CacheArg,
    #[command(flatten)]
    quota: QuotaArg,
    #[command(flatten)]
    sources: SourceArgs,
    #[command(flatten)]
    signatures: SignatureArgs,
}

pub fn prefetch(args: PrefetchArgs) -> anyhow::Result<i32> {
    init_logging("warn");
    let manifest = Arc::new(
        args.manifest
            .load_in(args.cache.resolve().ok().as_deref(), Some(&args.sources))?
            .manifest,
    );
    // Without --all, clap requires at least one id.
    let models = model_indices(&manifest, &args.models)?;
    let cache = open_cache(&args.cache, &args.quota, &manifest)?;
    let (fetcher, runtime) = args.sources.fetcher(&cache)?;
    let signatures = super::signatures(
        args.signatures.trust()?,
        args.sources.timeouts(),
        &cache,
        Arc::clone(fetcher.metrics()),
    )?;
    let bars = MultiProgress::new();
    let results = runtime.block_on(join_all(models.iter().map(|&m| {
        prefetch_model(
            &fetcher,
            &cache,
            signatures.as_ref(),
            &manifest.models[m],
            &bars,
        )
    })));
    let mut failed = 0;
    // A closed stdout is an error here, not a panic: this command keeps
    // SIGPIPE ignored (see `Command::may_fetch`).
    let mut out = std::io::stdout().lock();
    for (&m, result) in models.iter().zip(results) {
        let id = &manifest.models[m].id;
        match result {
            Ok((path, skipped)) if args.json => {
                let line = serde_json::json!({"model": id, "ok": true, "path": path,
                                              "skipped": skipped});
                writeln!(out, "{line}")?;
            }
            Ok((path, _)) => writeln!(out, "{}", path.display())?,
            Err(e) => {
                failed += 1;
                if args.json {
                    let line = serde_json::json!({"model": id, "ok": false,
                                                  "error": format!("{e:#}")});
                    writeln!(out, "{line}")?;
                } else {
                    eprintln!("modelfs: prefetch {id}: {e:#}");
                }
            }
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

/// Every file of one model, complete and verified (as its signature
/// vouches for it, with trusted keys), then its link tree: its path, and
/// the files skipped (optional ones absent at every source, unsigned ones).
async fn prefetch_model(
    fetcher: &Fetcher,
    cache: &Cache,
    signatures: Option<&Signatures>,
    spec: &Arc<Model>,
    bars: &MultiProgress,
) -> anyhow::Result<(std::path::PathBuf, Vec<String>)> {
    let verdict = match signatures {
        Some(s) => Some(s.verdict(spec).await?),
        None => None,
    };
    let spec = match &verdict {
        Some(v) => match v.serves(spec) {
            Ok(served) => served,
            // A tree linked by an earlier prefetch must not outlive the refusal.
            Err(why) => {
                cache.unlink_model(&spec.id)?;
                anyhow::bail!("signature refused: {why}");
            }
        },
        None => spec,
    };
    let is_unsigned = |f: usize| verdict.as_ref().is_some_and(|v| v.leaves_out(f));
    let total: u64 = spec.files.iter().map(|f| f.size).sum();
    let bar = bars.add(ProgressBar::new(total));
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:20!} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(spec.id.clone());
    // One stream for the whole model, in the manifest's order.
    let targets: Vec<Target> = (0..spec.files.len())
        .filter(|&f| !is_unsigned(f))
        .map(|f| Target::new(Arc::clone(spec), f))
        .collect();
    let results = fetcher.fetch_files(&targets, &|n| bar.inc(n)).await;
    bar.finish();
    let (mut present, mut skipped) = (Vec::new(), Vec::new());
    for f in (0..spec.files.len()).filter(|&f| is_unsigned(f)) {
        let path = &spec.files[f].path;
        eprintln!(
            "modelfs: prefetch {}: {path} is left out of its signature; skipped",
            spec.id
        );
        skipped.push(path.to_string());
    }
    for (target, result) in targets.iter().zip(results) {
        let file = target.entry();
        match result {
            Ok(blob) => {
                if let Some(v) = &verdict {
                    let complete = blob
                        .complete_file()
                        .ok_or_else(|| anyhow::anyhow!("{target}: not complete after its fetch"))?;
                    if let Err(why) = v.check_complete(target.file_index(), &complete)? {
                        cache.unlink_model(&spec.id)?;
                        anyhow::bail!("signature refused: {why}");
                    }
                }
                present.push(file)
            }
            // A model is whole without its optional files.
            Err(e) if file.optional && e.is_absent() => {
                eprintln!(
                    "modelfs: prefetch {}: optional file {} is absent at every source; skipped",
                    spec.id, file.path
                );
                skipped.push(file.path.to_string());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok((cache.link_model(spec, &present)?, skipped))
}
