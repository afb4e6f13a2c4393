//! `modelfs verify`: re-hash what the cache holds, drop what is bad.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;

use super::{
    CacheArg, ManifestArg, QuotaArg, SignatureArgs, init_logging, model_indices, open_cache,
};
use crate::signature::Verdict;
use crate::units::format_size;

#[derive(Args)]
pub struct VerifyArgs {
    /// Model ids to check [default: every model of the manifest].
    models: Vec<String>,
    /// One JSON object per model: {"model", "ok", "checked_bytes", "problems"}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    manifest: ManifestArg,
    #[command(flatten)]
    cache: CacheArg,
    /// With --trusted-key, each signed model's bundle is checked too (the
    /// copy kept in the cache, else fetched from the model's sources), and
    /// a refused one is a problem.
    #[command(flatten)]
    signatures: SignatureArgs,
}

/// Exit code 1 if anything was bad (and has been dropped).
pub fn verify(args: VerifyArgs) -> anyhow::Result<i32> {
    init_logging("warn");
    let manifest = std::sync::Arc::new(args.manifest.load()?);
    let models = model_indices(&manifest, &args.models)?;
    let cache: Arc<_> = open_cache(&args.cache, &QuotaArg::none(), &manifest)?;
    let signatures = super::signatures(
        args.signatures.trust()?,
        super::remote::default_timeouts(),
        &cache,
        Arc::new(crate::metrics::Metrics::new()),
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut bad_models = 0;
    for m in models {
        let model = &manifest.models[m];
        let (mut checked, mut problems) = (0, Vec::new());
        if let Some(s) = &signatures {
            match runtime.block_on(s.verdict(model)).as_deref() {
                Err(unavailable) => problems.push(unavailable.to_string()),
                Ok(Verdict::Refused(why)) => problems.push(format!("signature refused: {why}")),
                Ok(verdict @ Verdict::Verified { model: bound, .. }) => {
                    problems.extend(signed_complete_files(&cache, verdict, bound)?);
                }
                Ok(Verdict::Unsigned) => {}
            }
        }
        for entry in &model.files {
            if cache.presence(entry)?.bytes(entry.size) == 0 {
                continue;
            }
            let blob = cache.open_blob(entry)?;
            let found = blob
                .verify()
                .with_context(|| format!("{}/{}", model.id, entry.path))?;
            checked += found.bytes.min(entry.size);
            if found.bad_file {
                problems.push(format!(
                    "{}: does not match its sha256, removed",
                    entry.path
                ));
            }
            if found.bad_chunks > 0 {
                problems.push(format!(
                    "{}: {} chunks did not match their hashes, dropped",
                    entry.path, found.bad_chunks
                ));
            }
        }
        if !problems.is_empty() {
            bad_models += 1;
        }
        if args.json {
            let line = serde_json::json!({"model": model.id, "ok": problems.is_empty(),
                                          "checked_bytes": checked, "problems": problems});
            println!("{line}");
        } else if problems.is_empty() {
            println!("{}: ok, {} checked", model.id, format_size(checked));
        } else {
            println!("{}: BAD: {}", model.id, problems.join("; "));
        }
    }
    Ok(if bad_models == 0 { 0 } else { 1 })
}

/// The complete files of a model bound to signed shards that are not the
/// signed bytes (see [`Verdict::check_complete`]).
fn signed_complete_files(
    cache: &crate::cache::Cache,
    verdict: &Verdict,
    bound: &crate::manifest::Model,
) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    for (j, entry) in bound.files.iter().enumerate() {
        if cache.presence(entry)? != crate::cache::Presence::Complete {
            continue;
        }
        let Some(complete) = cache.open_blob(entry)?.complete_file() else {
            continue;
        };
        if let Err(why) = verdict.check_complete(j, &complete)? {
            problems.push(why);
        }
    }
    Ok(problems)
}
