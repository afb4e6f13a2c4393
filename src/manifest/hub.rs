//! `modelfs manifest build --hf org/name[@revision]`: a model entry from the
//! Hugging Face hub's API (`$HF_ENDPOINT`, `$HF_TOKEN`); and `manifest
//! expand`: the files an orchestrator model's `allow_patterns` match added. Large files are in
//! LFS, whose sha256 the API gives; the small ones (configs, tokenizers) are
//! fetched and hashed, with chunk hashes since their bytes are at hand. The
//! entry names the repo and the exact revision, so `--layout hf` shows it as
//! the hub does.

use std::collections::HashSet;

use super::build::{BuildError, BuildOptions, entry_head, quoted, write_file};
use super::{Manifest, Model};
use crate::hash::Digest;
use crate::source::{HubFile, Location, Sink, Sources, StreamError};

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
    let mut out = entry_head(
        &opts,
        &[("repo", quoted(repo)), ("revision", quoted(&info.sha))],
    );
    for file in &info.siblings {
        let (size, sha, chunks) = hub_file(sources, repo, &info.sha, file, chunk_size).await?;
        let chunked = chunks.as_deref().map(|c| (chunk_size, c));
        write_file(&mut out, &file.rfilename, size, &sha, chunked);
    }
    Ok(out)
}

/// The size and sha256 of `file` of `repo` at commit `sha`: an LFS file's
/// from the API, a small file's by fetching and hashing it (then with its
/// chunk hashes, since its bytes are at hand).
async fn hub_file(
    sources: &Sources,
    repo: &str,
    sha: &str,
    file: &HubFile,
    chunk_size: u64,
) -> Result<(u64, Digest, Option<Vec<Digest>>), BuildError> {
    let path = &file.rfilename;
    if let Some(lfs) = &file.lfs {
        let digest = Digest::from_hex(&lfs.sha256)
            .map_err(|e| BuildError::Fetch(format!("{repo}: {path}: LFS sha256: {e}")))?;
        return Ok((lfs.size, digest, None));
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
        revision: sha.to_owned(),
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
    let chunks = bytes
        .0
        .chunks(chunk_size as usize)
        .map(Digest::of)
        .collect();
    Ok((size, Digest::of(&bytes.0), Some(chunks)))
}

/// `text`, a manifest's, with a `[[models."<id>".files]]` table added for
/// each file of the hub repo of a model with `allow_patterns` that a
/// pattern matches and the model does not list (sizes and sha256 from the
/// API for LFS files, so none is downloaded). The repo and revision are the
/// model's first `hf://` source's. Says how many files each model gained.
pub async fn expand(
    sources: &Sources,
    manifest: &Manifest,
    text: &str,
) -> Result<(String, Vec<(String, usize)>), BuildError> {
    let mut out = text.to_owned();
    let mut added = Vec::new();
    for model in &manifest.models {
        let Some(patterns) = allow_patterns(model) else {
            continue;
        };
        let hub = model.sources.iter().find_map(|l| match l {
            Location::Hf {
                repo,
                revision,
                path,
            } => Some((repo, revision, path)),
            _ => None,
        });
        let Some((repo, revision, folder)) = hub else {
            continue;
        };
        // The model's files are paths under the source's folder, if it names one.
        let prefix = match folder.trim_matches('/') {
            "" => String::new(),
            folder => format!("{folder}/"),
        };
        let at_hub = |e| BuildError::Fetch(format!("{}: {repo}@{revision}: {e}", model.id));
        let info = sources.hub_repo(repo, revision).await.map_err(at_hub)?;
        let listed: HashSet<&str> = model.files.iter().map(|f| &*f.path).collect();
        let mut count = 0;
        for file in &info.siblings {
            let Some(path) = file.rfilename.strip_prefix(&prefix) else {
                continue;
            };
            if listed.contains(path) || !patterns.iter().any(|p| fnmatch(p, path)) {
                continue;
            }
            let (size, sha, _) = hub_file(sources, repo, &info.sha, file, u64::MAX).await?;
            out += &format!(
                "\n[[models.{}.files]]\npath = {}\nsize = {size}\nsha256 = \"{}\"\n",
                quoted(&model.id),
                quoted(path),
                sha.to_hex()
            );
            count += 1;
        }
        added.push((model.id.clone(), count));
    }
    Ok((out, added))
}

/// A model's `allow_patterns` (the orchestrator's key), if it has any.
fn allow_patterns(model: &Model) -> Option<Vec<String>> {
    let (_, value) = model.details.iter().find(|(k, _)| k == "allow_patterns")?;
    // One pattern, or a list, as the hub's client takes them.
    let list = match value {
        toml::Value::String(one) => vec![one.as_str()],
        other => other
            .as_array()?
            .iter()
            .filter_map(|p| p.as_str())
            .collect(),
    };
    let patterns: Vec<String> = list
        .into_iter()
        // As the hub's client reads them: a directory means all under it.
        .map(|p| match p.ends_with('/') {
            true => format!("{p}*"),
            false => p.to_owned(),
        })
        .collect();
    (!patterns.is_empty()).then_some(patterns)
}

/// Whether `name` matches `pattern` as Python's `fnmatch` (which the hub's
/// client uses) says: `*` any run of characters, `/` included; `?` one;
/// `[abc]`, `[a-z]` and `[!abc]` one of a set, or not.
fn fnmatch(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Where to resume after the last `*`: its position, and the name's.
    let (mut pi, mut ni, mut star) = (0, 0, None);
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
                continue;
            }
            Some('?') => {
                (pi, ni) = (pi + 1, ni + 1);
                continue;
            }
            Some('[') => {
                if let Some((matched, next)) = class(&p[pi..], n[ni]) {
                    if matched {
                        (pi, ni) = (pi + next, ni + 1);
                        continue;
                    }
                } else if n[ni] == '[' {
                    (pi, ni) = (pi + 1, ni + 1);
                    continue;
                }
            }
            Some(&c) if c == n[ni] => {
                (pi, ni) = (pi + 1, ni + 1);
                continue;
            }
            _ => {}
        }
        match star {
            Some((sp, sn)) => {
                (pi, ni) = (sp + 1, sn + 1);
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Whether `c` is in the set `[...]` at the start of `p`, and the set's
/// length; `None` if the `[` opens no set (it is then a plain character).
fn class(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negated = matches!(p.get(i), Some('!'));
    if negated {
        i += 1;
    }
    let start = i;
    let mut matched = false;
    // A `]` first in the set is one of its characters.
    while i < p.len() && (p[i] != ']' || i == start) {
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&e| e != ']') {
            matched |= p[i] <= c && c <= p[i + 2];
            i += 3;
        } else {
            matched |= p[i] == c;
            i += 1;
        }
    }
    (i < p.len()).then_some((matched != negated, i + 1))
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

#[cfg(test)]
mod tests {
    use super::fnmatch;

    #[test]
    fn patterns_match_as_the_hubs_client_matches_them() {
        assert!(fnmatch("*.safetensors", "model.safetensors"));
        assert!(
            fnmatch("*.safetensors", "text_encoder/model.safetensors"),
            "* crosses /"
        );
        assert!(!fnmatch("*.safetensors", "model.safetensors.index.json"));
        assert!(fnmatch("*.json", "model.safetensors.index.json"));
        assert!(fnmatch("vae/*", "vae/config.json"));
        assert!(!fnmatch("vae/*", "unet/config.json"));
        assert!(fnmatch(
            "model-0000?-of-00002.bin",
            "model-00001-of-00002.bin"
        ));
        assert!(fnmatch("[mt]odel.pth", "todel.pth") && !fnmatch("[!mt]odel.pth", "model.pth"));
        assert!(
            fnmatch("shard-[0-9].bin", "shard-7.bin") && !fnmatch("shard-[0-9].bin", "shard-a.bin")
        );
        assert!(fnmatch("*", "") && !fnmatch("?", ""));
        assert!(fnmatch("a[b", "a[b"), "an unclosed [ is itself");
        assert!(fnmatch("**/*.pth", "x/y/z.pth") && !fnmatch("**/*.pth", "z.pth"));
    }
}
