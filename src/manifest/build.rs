//! `modelfs manifest build`: hash a directory of model files into a manifest
//! entry, whole-file and per-chunk hashes computed in parallel.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::BUILD_CHUNK_SIZE;
use super::chunk_list::{CHUNK_LIST, ChunkList};
use crate::hash::Digest;
use crate::source::Location;

pub struct BuildOptions {
    pub id: String,
    pub sources: Vec<String>,
    pub chunk_size: Option<u64>,
    pub description: Option<String>,
}

impl BuildOptions {
    /// Checks the options as the manifest will: the chunk size to use, or
    /// what is wrong with them.
    pub(super) fn check(&self) -> Result<u64, BuildError> {
        let chunk_size = self.chunk_size.unwrap_or(BUILD_CHUNK_SIZE);
        super::check_chunk_size(chunk_size)
            .map_err(|e| BuildError::Invalid(format!("--chunk-size: {e}")))?;
        super::raw::check_id(&self.id).map_err(|e| BuildError::Invalid(format!("--id: {e}")))?;
        for s in &self.sources {
            Location::parse(s).map_err(|e| BuildError::Invalid(format!("--source: {e}")))?;
        }
        Ok(chunk_size)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Invalid(String),
    /// A source could not say or give what the entry needs.
    #[error("{0}")]
    Fetch(String),
    #[error("{}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_owned(),
        source,
    }
}

struct Found {
    rel: String,
    abs: PathBuf,
    size: u64,
}

/// Returns the TOML text of one `[[model]]` entry for the files under `dir`.
pub fn build_entry(dir: &Path, opts: &BuildOptions) -> Result<String, BuildError> {
    build(dir, opts, false)
}

/// As [`build_entry`], for a publisher about to sign the model: also writes
/// `dir/modelfs-chunks.json` (see [`super::chunk_list`]), which a signature
/// of the directory then covers, and names the bundle `model.sig` the
/// signer is to write beside it.
pub fn build_signable_entry(dir: &Path, opts: &BuildOptions) -> Result<String, BuildError> {
    build(dir, opts, true)
}

fn build(dir: &Path, opts: &BuildOptions, chunk_list: bool) -> Result<String, BuildError> {
    let chunk_size = opts.check()?;
    if chunk_list && opts.sources.is_empty() {
        return Err(BuildError::Invalid(
            "--chunk-list needs --source: the bundle and the chunk list are fetched from the sources".into(),
        ));
    }
    let mut files = Vec::new();
    walk(dir, "", &mut files)?;
    // The chunk list is the model's, not one of its files (it is fetched
    // from the sources when a signature signs it).
    files.retain(|f| f.rel != CHUNK_LIST);
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    if files.is_empty() {
        return Err(BuildError::Invalid(format!(
            "{}: no files to describe",
            dir.display()
        )));
    }
    // A signature bundle beside the files is the model's, not one of them;
    // it is fetched from the sources, so named only when there are some.
    let bundle = files
        .iter()
        .position(|f| !f.rel.contains('/') && is_bundle(&f.abs));
    let mut keys = Vec::new();
    if chunk_list {
        // The bundle to come; one there already is from before this list.
        if let Some(i) = bundle {
            files.remove(i);
        }
        keys.push(("signature", quoted("model.sig")));
    } else if let Some(i) = bundle.filter(|_| !opts.sources.is_empty()) {
        keys.push(("signature", quoted(&files.remove(i).rel)));
    }
    let digests = hash_all(&files, chunk_size)?;
    if chunk_list {
        let list = ChunkList::of(files.iter().zip(&digests).map(|(f, (whole, chunks))| {
            (
                f.rel.as_str(),
                f.size,
                *whole,
                chunk_size,
                chunks.as_slice(),
            )
        }));
        let path = dir.join(CHUNK_LIST);
        crate::fileio::write_durably(&path, list.to_json().as_bytes()).map_err(io_err(&path))?;
    }

    let mut out = entry_head(opts, &keys);
    for (file, (whole, chunks)) in files.iter().zip(digests) {
        write_file(
            &mut out,
            &file.rel,
            file.size,
            &whole,
            Some((chunk_size, &chunks)),
        );
    }
    Ok(out)
}

/// Whether `path` is a Sigstore bundle (`model_signing`'s `model.sig`).
fn is_bundle(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "sig")
        && std::fs::read(path).is_ok_and(|json| crate::signature::is_bundle(&json))
}

/// A TOML string.
pub(super) fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// `[[model]]` with its id, description, `keys` (already TOML values) and sources.
pub(super) fn entry_head(opts: &BuildOptions, keys: &[(&str, String)]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "[[model]]\nid = {}", quoted(&opts.id));
    if let Some(d) = &opts.description {
        let _ = writeln!(out, "description = {}", quoted(d));
    }
    for (key, value) in keys {
        let _ = writeln!(out, "{key} = {value}");
    }
    let sources: Vec<String> = opts.sources.iter().map(|s| quoted(s)).collect();
    let _ = writeln!(out, "sources = [{}]", sources.join(", "));
    out
}

/// One `[[model.file]]`, with its chunk size and hashes when there are some.
pub(super) fn write_file(
    out: &mut String,
    path: &str,
    size: u64,
    sha256: &Digest,
    chunks: Option<(u64, &[Digest])>,
) {
    let _ = writeln!(
        out,
        "\n[[model.file]]\npath = {}\nsize = {size}\nsha256 = \"{sha256}\"",
        quoted(path)
    );
    if let Some((chunk_size, hashes)) = chunks {
        let _ = writeln!(out, "chunk_size = {chunk_size}\nchunks = [");
        for c in hashes {
            let _ = writeln!(out, "  \"{c}\",");
        }
        out.push_str("]\n");
    }
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<Found>) -> Result<(), BuildError> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let abs = entry.path();
        let name = entry.file_name().into_string().map_err(|n| {
            BuildError::Invalid(format!("{}: file name {n:?} is not UTF-8", dir.display()))
        })?;
        let rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        // Follows symlinks: a model directory is often a tree of links into a store.
        let meta = std::fs::metadata(&abs).map_err(io_err(&abs))?;
        if meta.is_dir() {
            walk(&abs, &rel, out)?;
        } else if meta.is_file() {
            out.push(Found {
                rel,
                abs,
                size: meta.len(),
            });
        }
    }
    Ok(())
}

/// One unit of hashing work: a whole file, or one chunk of it.
struct Job {
    file: usize,
    chunk: Option<u64>,
}

type FileDigests = (Digest, Vec<Digest>);

/// Hashes every file whole and in chunks on all cores. The whole-file hashes
/// are the long sequential jobs, so they start first, largest first.
fn hash_all(files: &[Found], chunk_size: u64) -> Result<Vec<FileDigests>, BuildError> {
    let mut jobs: Vec<Job> = (0..files.len())
        .map(|file| Job { file, chunk: None })
        .collect();
    jobs.sort_by_key(|j| std::cmp::Reverse(files[j.file].size));
    for (file, f) in files.iter().enumerate() {
        jobs.extend((0..f.size.div_ceil(chunk_size)).map(|c| Job {
            file,
            chunk: Some(c),
        }));
    }
    let results: Vec<OnceLock<Result<Digest, BuildError>>> =
        jobs.iter().map(|_| OnceLock::new()).collect();
    let next = AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    let f = &files[job.file];
                    let (offset, len) = match job.chunk {
                        None => (0, f.size),
                        Some(c) => (c * chunk_size, chunk_size.min(f.size - c * chunk_size)),
                    };
                    let _ = results[i].set(hash_range(&f.abs, offset, len).map_err(io_err(&f.abs)));
                }
            });
        }
    });
    let mut out: Vec<FileDigests> = files
        .iter()
        .map(|_| (Digest([0; 32]), Vec::new()))
        .collect();
    for (job, result) in jobs.iter().zip(results) {
        let digest = result.into_inner().expect("every job ran")?;
        match job.chunk {
            None => out[job.file].0 = digest,
            Some(_) => out[job.file].1.push(digest),
        }
    }
    Ok(out)
}

fn hash_range(path: &Path, offset: u64, len: u64) -> io::Result<Digest> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut limited = file.take(len);
    let digest = Digest::of_reader(&mut limited)?;
    if limited.limit() != 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "file shrank while being hashed",
        ));
    }
    Ok(digest)
}
