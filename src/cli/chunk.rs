//! `modelfs manifest chunk`: adds chunk hashes to the files of a manifest
//! that has none (the orchestrator's never do), so that reads become lazy.
//! Each file is fetched once, verified whole and stored in the cache, then
//! its chunks are hashed from there: the first mount afterwards is warm.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;

use super::{
    CacheArg, ManifestArg, QuotaArg, SourceArgs, init_logging, model_indices, open_cache,
    parse_size,
};
use crate::cache::chunk_len;
use crate::fetch::Target;
use crate::hash::Digest;
use crate::manifest::check_chunk_size;

#[derive(Args)]
pub struct ChunkArgs {
    /// Models whose files to chunk [default: every model].
    models: Vec<String>,
    /// Chunk size: a power of two from 64K to 64M [default: the file's own
    /// chunk_size, else 8M].
    #[arg(long, value_parser = parse_size)]
    chunk_size: Option<u64>,
    #[command(flatten)]
    manifest: ManifestArg,
    #[command(flatten)]
    cache: CacheArg,
    #[command(flatten)]
    quota: QuotaArg,
    #[command(flatten)]
    sources: SourceArgs,
}

pub fn chunk(args: ChunkArgs) -> anyhow::Result<i32> {
    init_logging("warn");
    if let Some(chunk_size) = args.chunk_size {
        check_chunk_size(chunk_size)
            .map_err(|e| super::UsageError(format!("--chunk-size: {e}")))?;
    }
    let path = args.manifest.path()?;
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let manifest = Arc::new(args.manifest.load()?);
    let mut models = model_indices(&manifest, &args.models)?;
    models.sort_unstable();
    models.dedup();
    let cache = open_cache(&args.cache, &args.quota, &manifest)?;
    let (fetcher, runtime) = args.sources.fetcher(&cache)?;
    let mut added = Vec::new();
    for m in models {
        for (f, entry) in manifest.models[m].files.iter().enumerate() {
            if entry.is_chunked() {
                continue;
            }
            let target = Target::of(&manifest, m, f);
            let blob = runtime.block_on(fetcher.fetch_file(&target, &|_| {}))?;
            let file = blob
                .complete_file()
                .with_context(|| format!("{target}: not complete after its fetch"))?;
            // The file's own chunk_size when it has one (the default otherwise).
            let chunk_size = args.chunk_size.unwrap_or(entry.chunk_size);
            let hashes = chunk_digests(&file, entry.size, chunk_size)
                .with_context(|| format!("{target}: cannot hash the cached file"))?;
            eprintln!("modelfs: {target}: {} chunks", hashes.len());
            added.push((m, f, chunk_size, hashes));
        }
    }
    print!("{}", manifest.add_chunk_hashes(&text, &added)?);
    Ok(0)
}

/// The sha256 of each chunk of a verified file. Blocking.
fn chunk_digests(file: &File, size: u64, chunk_size: u64) -> io::Result<Vec<Digest>> {
    let mut buf = vec![0u8; chunk_size.min(size) as usize];
    (0..size.div_ceil(chunk_size))
        .map(|c| {
            let len = chunk_len(size, chunk_size, c) as usize;
            file.read_exact_at(&mut buf[..len], c * chunk_size)?;
            Ok(Digest::of(&buf[..len]))
        })
        .collect()
}
