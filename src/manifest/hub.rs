//! `modelfs manifest build --hf org/name[@revision]`: a model entry from the
//! Hugging Face hub's API (`$HF_ENDPOINT`, `$HF_TOKEN`). Large files are in
//! LFS, whose sha256 the API gives; the small ones (configs, tokenizers) are
//! fetched and hashed, with chunk hashes since their bytes are at hand. The
//! entry names the repo and the exact revision, so `--layout hf` shows it as
//! the hub does.

use super::build::{BuildError, BuildOptions, entry_head, write_file};
use crate::hash::Digest;
use crate::source::{Location, Sink, Sources, StreamError};

/// The entry for `spec` (`org/name[@revision]`, revision `main` by default);
/// `opts.id` empty means the repo's name, `opts.sources` empty the hub.
pub async fn build_hub_entry(
    sources: &Sources,
    spec: &str,
    mut opts: BuildOptions,
) -> Result<String, BuildError> {
    let (repo, revision) = spec.split_once('@').unwrap_or((spec, "main"));
    let Some((_, name)) = repo.split_once('/') else {
        return Err(BuildError::Invalid(format!(
            "--hf {spec:?}: expected org/name[@revision]"
        )));
    };
    if opts.id.is_empty() {
        opts.id = name.to_owned();
    }
    // Before asking the hub: bad options fail at once, and offline.
    let chunk_size = opts.check()?;
    let at_hub = |e| BuildError::Fetch(format!("{repo}@{revision}: {e}"));
    let info = sources.hub_repo(repo, revision).await.map_err(at_hub)?;
    if opts.sources.is_empty() {
        opts.sources = vec![format!("hf://{repo}@{}", info.sha)];
    }
    let quoted = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let mut out = entry_head(
        &opts,
        &[("repo", quoted(repo)), ("revision", quoted(&info.sha))],
    );
    for file in &info.siblings {
        let path = &file.rfilename;
        if let Some(lfs) = &file.lfs {
            let sha = Digest::from_hex(&lfs.sha256)
                .map_err(|e| BuildError::Fetch(format!("{repo}: {path}: LFS sha256: {e}")))?;
            write_file(&mut out, path, lfs.size, &sha, None);
            continue;
        }
        let size = file
            .size
            .ok_or_else(|| BuildError::Fetch(format!("{repo}: {path}: the hub gave no size")))?;
        // Files outside LFS are small; a larger claim is not to be believed.
        if size > SMALL_FILE_MAX {
            return Err(BuildError::Fetch(format!(
                "{repo}: {path}: {size} bytes but not in LFS: the hub's answer is not believable"
            )));
        }
        let location = Location::Hf {
            repo: repo.to_owned(),
            revision: info.sha.clone(),
            path: path.clone(),
        };
        let mut bytes = Bytes(Vec::with_capacity(size as usize));
        if size > 0 {
            sources
                .fetch_range(&location, 0..size, &mut bytes)
                .await
                .map_err(|e| {
                    let why = match e {
                        StreamError::Source(e) => e.to_string(),
                        StreamError::Sink(e) => e.to_string(),
                    };
                    BuildError::Fetch(format!("{location}: {why}"))
                })?;
        }
        let chunks: Vec<Digest> = bytes
            .0
            .chunks(chunk_size as usize)
            .map(Digest::of)
            .collect();
        write_file(
            &mut out,
            path,
            size,
            &Digest::of(&bytes.0),
            Some((chunk_size, &chunks)),
        );
    }
    Ok(out)
}

/// The most a file outside LFS may be (the hub keeps larger ones in LFS).
const SMALL_FILE_MAX: u64 = 64 << 20;

/// A small file's bytes, gathered whole.
struct Bytes(Vec<u8>);

impl Sink for Bytes {
    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }
}
