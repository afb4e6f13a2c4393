//! `modelfs gc`, `pin` and `unpin`: what stays in the cache, and what goes.

use clap::Args;

use super::{CacheArg, ManifestArg, QuotaArg, init_logging, model_index, open_cache};
use crate::units::format_size;

#[derive(Args)]
pub struct GcArgs {
    /// Show what would be evicted; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// One JSON object per file evicted (or kept), then one for the cache.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    quota: QuotaArg,
    #[command(flatten)]
    manifest: ManifestArg,
    #[command(flatten)]
    cache: CacheArg,
}

pub fn gc(args: GcArgs) -> anyhow::Result<i32> {
    init_logging("warn");
    let manifest = std::sync::Arc::new(args.manifest.load()?);
    let cache = open_cache(&args.cache, &args.quota, &manifest)?;
    let before = cache.disk_usage();
    let plan = cache.plan(cache.excess()?)?;
    let verb = if args.dry_run {
        "would evict"
    } else {
        "evicted"
    };
    let mut freed = 0;
    for victim in &plan.evict {
        let gone = args.dry_run || cache.evict(victim)?;
        if gone {
            freed += victim.bytes;
        }
        if args.json {
            let line = serde_json::json!({"sha256": victim.digest.to_hex(), "bytes": victim.bytes,
                                          "models": victim.models, "evicted": gone && !args.dry_run});
            println!("{line}");
        } else if !gone {
            println!("kept {}: opened meanwhile", victim.digest);
        } else {
            let what = if victim.models.is_empty() {
                "no model of this manifest".to_owned()
            } else {
                victim.models.join(", ")
            };
            println!(
                "{verb} {} ({}): {what}",
                &victim.digest.to_hex()[..16],
                format_size(victim.bytes)
            );
        }
    }
    if args.json {
        let line = serde_json::json!({"cache_dir": cache.root(), "bytes_before": before,
                                      "freed_bytes": freed, "dry_run": args.dry_run,
                                      "quota_bytes": cache.quota().max_bytes,
                                      "still_over_bytes": plan.short});
        println!("{line}");
        return Ok(if plan.short > 0 && !args.dry_run {
            1
        } else {
            0
        });
    }
    let quota = cache.quota().max_bytes.map_or("no quota".to_owned(), |q| {
        format!("quota {}", format_size(q))
    });
    println!(
        "cache {}: {} on disk, {} {}, {quota}",
        cache.root().display(),
        format_size(before),
        if args.dry_run { "would free" } else { "freed" },
        format_size(freed)
    );
    if plan.short > 0 {
        eprintln!(
            "modelfs: gc: {} still over, held by files in use ({}, {}) and pinned ({}, {})",
            format_size(plan.short),
            plan.in_use.0,
            format_size(plan.in_use.1),
            plan.pinned.0,
            format_size(plan.pinned.1)
        );
        return Ok(if args.dry_run { 0 } else { 1 });
    }
    Ok(0)
}

#[derive(Args)]
pub struct PinArgs {
    /// The model's id.
    model: String,
    #[command(flatten)]
    manifest: ManifestArg,
    #[command(flatten)]
    cache: CacheArg,
}

/// `pin` (true) or `unpin` (false).
pub fn pin(args: PinArgs, pin: bool) -> anyhow::Result<i32> {
    init_logging("warn");
    let manifest = std::sync::Arc::new(args.manifest.load()?);
    let model = &manifest.models[model_index(&manifest, &args.model)?];
    let cache = open_cache(&args.cache, &QuotaArg::none(), &manifest)?;
    if pin {
        cache.pin(model)?;
        println!("pinned {}", model.id);
    } else if cache.unpin(&model.id)? {
        println!("unpinned {}", model.id);
    } else {
        println!("{} was not pinned in this cache", model.id);
    }
    if !pin && model.pinned {
        println!("{} stays pinned: the manifest says pinned = true", model.id);
    }
    Ok(0)
}
