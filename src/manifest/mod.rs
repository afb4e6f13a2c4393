//! The manifest: which models exist, their files (size, sha256, chunk hashes)
//! and where to fetch them. Parsed from TOML with spans so that every error
//! names the file, line, column and field.

mod build;
mod raw;

use std::fmt;
use std::path::{Path, PathBuf};

pub use build::{BuildError, BuildOptions, build_entry};

use crate::hash::Digest;
use crate::source::Location;

/// Used when a file gives no `chunk_size`: big enough that per-request
/// overhead vanishes, small enough that a random 4 KiB read stays cheap.
pub const DEFAULT_CHUNK_SIZE: u64 = 8 << 20;
pub const MIN_CHUNK_SIZE: u64 = 64 << 10;
pub const MAX_CHUNK_SIZE: u64 = 64 << 20;

#[derive(Debug)]
pub struct Manifest {
    pub path: PathBuf,
    pub models: Vec<Model>,
}

#[derive(Debug)]
pub struct Model {
    pub id: String,
    pub description: Option<String>,
    pub pinned: bool,
    pub files: Vec<FileEntry>,
}

#[derive(Debug)]
pub struct FileEntry {
    /// Relative, '/'-separated, validated.
    pub path: String,
    pub size: u64,
    pub sha256: Digest,
    pub chunk_size: u64,
    /// Per-chunk hashes; `None` means the file is verified only whole.
    pub chunks: Option<Vec<Digest>>,
    /// The file's own URLs first, then the model's bases joined with `path`.
    pub locations: Vec<Location>,
}

impl FileEntry {
    pub fn chunk_count(&self) -> u64 {
        self.size.div_ceil(self.chunk_size)
    }
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|e| ManifestError {
            file: path.to_owned(),
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(path, &text)
    }

    /// Validates `text`; `path` is used in errors only.
    pub fn parse(path: &Path, text: &str) -> Result<Manifest, ManifestError> {
        raw::parse(text)
            .map(|models| Manifest {
                path: path.to_owned(),
                models,
            })
            .map_err(|e| e.locate(path, text))
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
