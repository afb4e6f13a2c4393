//! The manifest: which models exist, their files (size, sha256, chunk hashes)
//! and where to fetch them. Parsed from TOML with spans so that every error
//! names the file, line, column and field.

mod build;
pub mod chunk_list;
mod hub;
mod orchestrator;
mod raw;
pub mod weights;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use build::{BuildError, BuildOptions, build_entry, build_signable_entry};
pub use hub::{build_hub_entry, expand};

use crate::hash::Digest;
use crate::source::Location;

/// Used when a file gives no `chunk_size` (and so, for a file without chunk
/// hashes, the size of the parts it is fetched in).
pub const DEFAULT_CHUNK_SIZE: u64 = 8 << 20;
/// What `manifest build` chunks files in: the unit of verification, so what
/// a random read waits for (1 MiB: 20 ms at 50 MiB/s). Requests span many
/// chunks when a reader reads on, so a small chunk costs no throughput; a
/// 100 GiB file has 102,400 hashes, which load in well under a second.
pub const BUILD_CHUNK_SIZE: u64 = 1 << 20;
pub const MIN_CHUNK_SIZE: u64 = 64 << 10;
pub const MAX_CHUNK_SIZE: u64 = 64 << 20;

#[derive(Debug)]
pub struct Manifest {
    pub path: PathBuf,
    /// Each shared: a file open holds its model, not the whole catalog,
    /// which a reload may replace while the file stays open for days; and
    /// a reload shares the models whose text did not change.
    pub models: Vec<Arc<Model>>,
    /// The digest of each model's part of the text, when it was parsed in
    /// parts (a large native manifest): what a reload compares.
    parts: Vec<raw::PartDigest>,
}

#[derive(Clone, Debug)]
pub struct Model {
    pub id: String,
    pub description: Option<String>,
    pub pinned: bool,
    /// Whether a loader's first weight read streams the model's other
    /// weights (`stream = false` in the manifest: never).
    pub stream: bool,
    /// The Hugging Face repo (`org/name`) and revision (40 hex, lowercase)
    /// `--layout hf` shows the model as, when the manifest says.
    pub repo: Option<String>,
    pub revision: Option<String>,
    /// Descriptive keys of the orchestrator's format (`variants`, ...) and
    /// their values; empty for native manifests.
    pub details: Vec<(String, toml::Value)>,
    /// Base URLs: a file is also fetched from `<base>/<path>`, after its
    /// own sources (see [`Model::locations`]).
    pub sources: Box<[Location]>,
    /// The publisher's signature bundle (OpenSSF Model Signing): a URL, or
    /// a path under each of `sources`; see [`Model::signature_locations`].
    pub signature: Option<Box<str>>,
    pub files: Vec<FileEntry>,
}

impl Model {
    /// Where `file` (one of this model's) is fetched from, in order: its
    /// own URLs, then the model's bases joined with its path. Made when
    /// asked rather than kept: a catalog has hundreds of thousands of files.
    pub fn locations(&self, file: &FileEntry) -> Vec<Location> {
        let bases = self.sources.iter().map(|b| b.join(&file.path));
        file.sources.iter().cloned().chain(bases).collect()
    }

    /// Where the signature bundle is fetched from, in order; empty if the
    /// model names none.
    pub fn signature_locations(&self) -> Vec<Location> {
        match self.signature.as_deref() {
            None => Vec::new(),
            Some(url) if url.contains("://") => Location::parse(url).into_iter().collect(),
            Some(path) => self.sources.iter().map(|b| b.join(path)).collect(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct FileEntry {
    /// Relative, '/'-separated, validated.
    pub path: Box<str>,
    pub size: u64,
    pub sha256: Digest,
    pub chunk_size: u64,
    /// Per-chunk hashes; `None` means the file is verified only whole.
    /// Empty for a file of one chunk whose hash is its `sha256`: most of a
    /// catalog's files, which would otherwise hold each hash twice. Read
    /// through [`FileEntry::chunk_hash`] and [`FileEntry::chunk_hashes`].
    chunks: Option<Box<[Digest]>>,
    /// The file's own URLs, tried before the model's bases.
    pub sources: Box<[Location]>,
    /// The orchestrator's `component` (`vae`, `text_encoder`, ...).
    pub component: Option<Box<str>>,
    /// The orchestrator's `optional = true`: a model is usable without it.
    pub optional: bool,
}

/// A chunk size modelfs takes: a power of two from 64 KiB to 64 MiB.
pub fn check_chunk_size(size: u64) -> Result<(), String> {
    if size.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&size) {
        Ok(())
    } else {
        Err(format!(
            "{size} is not a power of two from 65536 (64 KiB) to 67108864 (64 MiB)"
        ))
    }
}

impl FileEntry {
    pub fn chunk_count(&self) -> u64 {
        self.size.div_ceil(self.chunk_size)
    }

    /// Whether the file has chunk hashes, and so is read chunk by chunk.
    pub fn is_chunked(&self) -> bool {
        self.chunks.is_some()
    }

    /// What chunk `index` must hash to; `None` for a file verified whole.
    pub fn chunk_hash(&self, index: u64) -> Option<Digest> {
        match self.chunks.as_deref()? {
            [] => (index == 0).then_some(self.sha256),
            hashes => hashes.get(index as usize).copied(),
        }
    }

    /// Every chunk hash in order; `None` for a file verified whole.
    pub fn chunk_hashes(&self) -> Option<impl Iterator<Item = Digest> + '_> {
        self.chunks.as_ref()?;
        Some((0..self.chunk_count()).filter_map(|i| self.chunk_hash(i)))
    }

    /// Whether the file is verified against its sha256 alone, however it
    /// is described: a file of one chunk, whose hash is its sha256.
    pub fn is_one_chunk(&self) -> bool {
        self.chunk_count() <= 1 && self.chunk_hash(0).is_none_or(|h| h == self.sha256)
    }

    /// Whether `other` is the same bytes verified the same way (a kernel
    /// may keep serving pages of one for the other).
    pub fn same_as(&self, other: &FileEntry) -> bool {
        let whole = |f: &FileEntry| !f.is_chunked();
        self.sha256 == other.sha256
            && self.size == other.size
            && (self.is_one_chunk() && other.is_one_chunk()
                || whole(self) && whole(other)
                || self.chunk_size == other.chunk_size && self.chunks == other.chunks)
    }

    /// This file verified another way: whole (`None`), or in chunks of
    /// `chunk_size` with these hashes (a signature's, say).
    pub fn verified_by(&self, chunking: Option<(u64, Box<[Digest]>)>) -> FileEntry {
        let mut file = self.clone();
        file.chunks = chunking.map(|(size, hashes)| {
            file.chunk_size = size;
            match *hashes {
                [one] if one == file.sha256 => Box::default(),
                _ => hashes,
            }
        });
        file
    }
}

impl Manifest {
    /// Reads and validates a manifest file, native or the orchestrator's
    /// (detected by its keys); `local_root` resolves the latter's `local://`
    /// sources.
    pub fn load(path: &Path, local_root: Option<&Path>) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
            file: path.to_owned(),
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse_with(path, &text, local_root)
    }

    /// Validates `text`; `path` is used in errors only.
    pub fn parse(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
        Self::parse_with(path, text, None)
    }

    #[cfg(test)]
    pub(crate) fn load_text(
        text: &str,
        local_root: Option<&Path>,
    ) -> Result<Manifest, ManifestError> {
        Self::parse_with("models.toml".as_ref(), text, local_root)
    }

    /// Validates `text` (`path` names it in errors), resolving the
    /// orchestrator's `local://` sources under `local_root`.
    pub fn parse_with(
        path: &Path,
        text: &str,
        local_root: Option<&Path>,
    ) -> Result<Manifest, ManifestError> {
        Self::parse_after(path, text, local_root, None)
    }

    /// As [`Manifest::parse_with`], sharing with `before` (the manifest
    /// this one replaces) the models whose text is the same.
    pub fn parse_after(
        path: &Path,
        text: &str,
        local_root: Option<&Path>,
        before: Option<&Manifest>,
    ) -> Result<Manifest, ManifestError> {
        let models = if orchestrator::detect(text) {
            orchestrator::parse(text, local_root).and_then(|models| {
                let mut sizes = raw::Sizes::default();
                models
                    .into_iter()
                    .map(|(raw, extra)| {
                        let field = format!("models.{:?}", raw.id.get_ref());
                        let at = raw::At::model(&field, "files");
                        // Reported after what is wrong within the model.
                        let sized = sizes.check(&raw, at);
                        let mut model = raw::validate_model(raw, at)?;
                        sized?;
                        model.details = extra.details;
                        for (file, (component, optional)) in model.files.iter_mut().zip(extra.files)
                        {
                            file.component = component.map(String::into_boxed_str);
                            file.optional = optional;
                        }
                        Ok(Arc::new(model))
                    })
                    .collect::<Result<_, _>>()
                    .map(|models| (models, Vec::new()))
            })
        } else {
            let before: raw::Parts = before
                .map(|b| {
                    b.parts
                        .iter()
                        .copied()
                        .zip(b.models.iter().cloned())
                        .collect()
                })
                .unwrap_or_default();
            raw::parse(text, &before)
        };
        models
            .map(|(models, parts)| Manifest {
                path: path.to_owned(),
                models,
                parts,
            })
            .map_err(|e| e.locate(path, text))
    }

    /// `text` (this manifest's, either format) with chunk hashes added to
    /// the files in `added` (model index, file index, chunk size, hashes),
    /// each right after its `sha256` line; all else, comments included, is
    /// kept as it was.
    pub fn add_chunk_hashes(
        &self,
        text: &str,
        added: &[(usize, usize, u64, Vec<Digest>)],
    ) -> Result<String, ManifestError> {
        let spans = if orchestrator::detect(text) {
            orchestrator::sha256_spans(text)
        } else {
            raw::sha256_spans(text)
        }
        .map_err(|e| e.locate(&self.path, text))?;
        let mut inserts: Vec<(usize, String)> = Vec::new();
        for (model, file, chunk_size, hashes) in added {
            let Some((span, explicit)) = spans.get(*model).and_then(|m| m.get(*file)) else {
                return Err(self.whole_file_error(format!(
                    "the manifest changed while it was being chunked (model {model}, file {file})"
                )));
            };
            let line_end = text[span.end..]
                .find('\n')
                .map_or(text.len(), |i| span.end + i);
            let list: String = hashes.iter().map(|h| format!("  \"{h}\",\n")).collect();
            // A chunk_size the file already has is kept, and must be the one used.
            let size_line = match explicit {
                None => format!("\nchunk_size = {chunk_size}"),
                Some(given) if given == chunk_size => String::new(),
                Some(given) => {
                    return Err(self.whole_file_error(format!(
                        "model {model}, file {file} has chunk_size = {given}, not {chunk_size}"
                    )));
                }
            };
            inserts.push((line_end, format!("{size_line}\nchunks = [\n{list}]")));
        }
        // From the end, so earlier offsets stay valid.
        inserts.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
        let mut out = text.to_owned();
        for (at, keys) in inserts {
            out.insert_str(at, &keys);
        }
        Ok(out)
    }

    fn whole_file_error(&self, message: String) -> ManifestError {
        ManifestError {
            file: self.path.clone(),
            line: 0,
            column: 0,
            field: String::new(),
            message,
        }
    }

    pub fn model_index(&self, id: &str) -> Option<usize> {
        self.models.iter().position(|m| m.id == id)
    }
}

/// A manifest problem, located in the source text. Shown as
/// `FILE:LINE:COLUMN: FIELD: MESSAGE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    pub file: PathBuf,
    /// 1-based; 0 when the error is about the whole file.
    pub line: usize,
    pub column: usize,
    /// Dotted path such as `model[0].file[2].sha256`; empty if unknown.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}
