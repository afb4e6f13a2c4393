//! TOML → validated model list. Deserialization keeps spans; validation turns
//! them into [`ManifestError`]s with line, column and field.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::{DEFAULT_CHUNK_SIZE, FileEntry, ManifestError, Model};
use crate::hash::Digest;
use crate::source::Location;

const KNOWN_VERSION: i64 = 1;
const MAX_ID_LEN: usize = 128;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    version: Spanned<i64>,
    #[serde(default)]
    model: Vec<RawModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModel {
    pub id: Spanned<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub pinned: bool,
    /// `false`: the model is never streamed (see `fetch::stream`).
    #[serde(default = "yes")]
    pub stream: bool,
    /// The Hugging Face repo (`org/name`) `--layout hf` shows the model as.
    pub repo: Option<Spanned<String>>,
    /// Its revision there: 40 hex digits.
    pub revision: Option<Spanned<String>>,
    #[serde(default)]
    pub sources: Vec<Spanned<String>>,
    /// The publisher's signature bundle: a path under the sources, or a URL.
    pub signature: Option<Spanned<String>>,
    #[serde(default)]
    pub file: Vec<RawFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    pub path: Spanned<String>,
    pub size: Spanned<u64>,
    pub sha256: Spanned<String>,
    pub chunk_size: Option<Spanned<u64>>,
    pub chunks: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub sources: Vec<Spanned<String>>,
}

fn yes() -> bool {
    true
}

/// An error with a byte span but no line yet.
pub(super) struct Unlocated {
    span: Option<Range<usize>>,
    /// Empty: work the field out from the text at the span.
    field: String,
    message: String,
}

impl Unlocated {
    pub(super) fn from_toml(e: toml::de::Error) -> Self {
        Unlocated {
            span: e.span(),
            field: String::new(),
            message: e.message().trim().to_owned(),
        }
    }
}

pub(super) fn err<T>(
    span: Range<usize>,
    field: String,
    message: impl Into<String>,
) -> Result<T, Unlocated> {
    Err(Unlocated {
        span: Some(span),
        field,
        message: message.into(),
    })
}

/// Where a file's `sha256` value is in the text, and its `chunk_size` if it has one.
pub(super) type HashAt = (Range<usize>, Option<u64>);

/// Where each file's `sha256` value is, and its `chunk_size` if it has one, per model.
pub(super) fn sha256_spans(text: &str) -> Result<Vec<Vec<HashAt>>, Unlocated> {
    let raw: RawManifest = toml::from_str(text).map_err(Unlocated::from_toml)?;
    Ok(raw
        .model
        .iter()
        .map(|m| {
            m.file
                .iter()
                .map(|f| (f.sha256.span(), f.chunk_size.as_ref().map(|c| *c.get_ref())))
                .collect()
        })
        .collect())
}

/// The models of `text`, and the digest of each one's part of it when the
/// text was parsed in parts (see [`parse_in_parts`]); a part whose digest
/// `before` knows is not parsed again: its model is shared.
pub(super) fn parse(
    text: &str,
    before: &Parts,
) -> Result<(Vec<Arc<Model>>, Vec<PartDigest>), Unlocated> {
    if text.len() >= IN_PARTS_FROM
        && let Some(parsed) = parse_in_parts(text, before)
    {
        return Ok(parsed);
    }
    let raw: RawManifest = toml::from_str(text).map_err(Unlocated::from_toml)?;
    check_version(&raw.version)?;
    let mut ids = HashSet::new();
    let mut sizes = Sizes::default();
    raw.model
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let field = format!("model[{i}]");
            if !ids.insert(m.id.get_ref().clone()) {
                return err(
                    m.id.span(),
                    format!("{field}.id"),
                    format!("duplicate model id {:?}", m.id.get_ref()),
                );
            }
            // Reported after what is wrong within the model.
            let sized = sizes.check(&m, At::model(&field, "file"));
            let model = check_model(m, &field)?;
            sized.map(|()| Arc::new(model))
        })
        .collect::<Result<_, _>>()
        .map(|models| (models, Vec::new()))
}

/// The size each sha256 was given in a manifest: one with two sizes cannot
/// be right (one of them is a placeholder, or a copy-paste slip).
#[derive(Default)]
pub(super) struct Sizes(HashMap<Digest, u64>);

impl Sizes {
    /// Records the files of `m`, found `at` the given place; the first whose
    /// sha256 came before with another size is an error.
    pub(super) fn check(&mut self, m: &RawModel, at: At) -> Result<(), Unlocated> {
        for (j, f) in m.file.iter().enumerate() {
            // A malformed digest is reported where the file is validated.
            let Ok(digest) = Digest::from_hex(f.sha256.get_ref()) else {
                continue;
            };
            let size = *f.size.get_ref();
            let before = *self.0.entry(digest).or_insert(size);
            if before != size {
                return err(
                    f.sha256.span(),
                    at.file(j).field("sha256"),
                    format!(
                        "this sha256 was given before with size = {before}, here {size}: one of them is wrong"
                    ),
                );
            }
        }
        Ok(())
    }
}

/// Whether no sha256 of `models` is given two sizes (what [`Sizes`]
/// checks, without spans): sorted references rather than a map, as a
/// catalog has 300,000 files (the map cost 36 MB more at its peak).
fn sizes_agree(models: &[Arc<Model>]) -> bool {
    let mut files: Vec<(&Digest, u64)> = models
        .iter()
        .flat_map(|m| &m.files)
        .map(|f| (&f.sha256, f.size))
        .collect();
    files.sort_unstable();
    files
        .windows(2)
        .all(|w| w[0].0 != w[1].0 || w[0].1 == w[1].1)
}

/// What identifies one model's part of a manifest's text: its SHA-256,
/// cut short.
pub type PartDigest = [u8; 16];

/// The models of a manifest parsed before, by the digest of their part.
pub type Parts = HashMap<PartDigest, Arc<Model>>;

fn digest_of(part: &str) -> PartDigest {
    Digest::of(part.as_bytes()).0[..16]
        .try_into()
        .expect("16 of 32 bytes")
}

/// Manifests this long are parsed in parts (see [`parse_in_parts`]).
const IN_PARTS_FROM: usize = 1 << 20;

/// What comes before the first `[[model]]` header. A `model` key there
/// would clash with the tables after it: the whole text is then parsed,
/// to say so.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHead {
    version: Spanned<i64>,
    model: Option<serde::de::IgnoredAny>,
}

/// The models of one part of a manifest cut at its `[[model]]` headers.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModels {
    model: Vec<RawModel>,
}

/// A large manifest, cut at its top-level `[[model]]` header lines and
/// the parts parsed and checked in parallel: the TOML parser holds one
/// model's document at a time rather than all of them (a 75 MB catalog
/// peaked at 1.5 GB whole). `None` if anything is wrong with any part;
/// the whole text is then parsed as one, so that the error it reports
/// names the place as ever. A `[[model]]` line inside a multi-line string
/// cuts that string open, which fails its part and so falls back too.
/// A reload parses only the parts that changed: the rest are the models
/// parsed before, shared (a 100,000-model catalog with one model added:
/// its digests in a tenth of the time, and no second copy in memory).
fn parse_in_parts(text: &str, before: &Parts) -> Option<(Vec<Arc<Model>>, Vec<PartDigest>)> {
    let starts = model_headers(text);
    let (&first, _) = starts.split_first()?;
    let head: RawHead = toml::from_str(&text[..first]).ok()?;
    if check_version(&head.version).is_err() || head.model.is_some() {
        return None;
    }
    let parts: Vec<&str> = starts
        .iter()
        .zip(starts.iter().skip(1).chain([&text.len()]))
        .map(|(&a, &b)| &text[a..b])
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = parts.len().div_ceil(threads);
    type Group = Vec<(Arc<Model>, PartDigest)>;
    let groups: Vec<Option<Group>> = std::thread::scope(|scope| {
        let workers: Vec<_> = parts
            .chunks(per_thread)
            .map(|group| {
                scope.spawn(move || {
                    let mut models = Vec::with_capacity(group.len());
                    for part in group {
                        let digest = digest_of(part);
                        if let Some(model) = before.get(&digest) {
                            models.push((Arc::clone(model), digest));
                            continue;
                        }
                        let raw: RawModels = toml::from_str(part).ok()?;
                        // One header, one model: a part holds exactly one.
                        let [m] = <[RawModel; 1]>::try_from(raw.model).ok()?;
                        // The field is only named in errors, which this path never reports.
                        models.push((Arc::new(check_model(m, "model").ok()?), digest));
                    }
                    Some(models)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().ok().flatten())
            .collect()
    });
    let groups = groups.into_iter().collect::<Option<Vec<_>>>()?;
    let count = groups.iter().map(Vec::len).sum();
    let (mut models, mut digests) = (Vec::with_capacity(count), Vec::with_capacity(count));
    for (model, digest) in groups.into_iter().flatten() {
        models.push(model);
        digests.push(digest);
    }
    let mut ids = HashSet::new();
    // Anything wrong is located by the whole parse.
    (models.iter().all(|m| ids.insert(m.id.as_str())) && sizes_agree(&models))
        .then_some((models, digests))
}

/// Where each line that is exactly a `[[model]]` header (spaces aside) starts.
fn model_headers(text: &str) -> Vec<usize> {
    text.match_indices("[[model]]")
        .filter_map(|(at, m)| {
            let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
            let alone = text[line_start..at].trim().is_empty()
                && text[at + m.len()..line_end].trim().is_empty();
            alone.then_some(line_start)
        })
        .collect()
}

fn check_version(version: &Spanned<i64>) -> Result<(), Unlocated> {
    if *version.get_ref() == KNOWN_VERSION {
        return Ok(());
    }
    err(
        version.span(),
        "version".into(),
        format!(
            "unsupported manifest version {}; this modelfs reads version {KNOWN_VERSION}",
            version.get_ref()
        ),
    )
}

/// Where a model, or one of its files, is in the manifest. The field an
/// error names is spelled out only for the error: a catalog has 300,000
/// files, each checked for a handful of them.
#[derive(Clone, Copy)]
pub(super) struct At<'a> {
    /// The model: `model[3]`, or `models."name"` in the orchestrator's format.
    model: &'a str,
    /// What its list of files is called: `file` or `files`.
    files: &'a str,
    file: Option<usize>,
}

impl<'a> At<'a> {
    pub(super) fn model(model: &'a str, files: &'a str) -> Self {
        At {
            model,
            files,
            file: None,
        }
    }

    fn file(self, j: usize) -> Self {
        At {
            file: Some(j),
            ..self
        }
    }

    /// The name of `leaf` here, such as `model[3].file[0].sha256`.
    fn field(self, leaf: impl std::fmt::Display) -> String {
        match self.file {
            None => format!("{}.{leaf}", self.model),
            Some(j) => format!("{}.{}[{j}].{leaf}", self.model, self.files),
        }
    }
}

/// Checks one model of a native manifest; `field` names it in errors.
fn check_model(m: RawModel, field: &str) -> Result<Model, Unlocated> {
    let at = At::model(field, "file");
    // local:// is the orchestrator's; here a file:// URL says the same.
    let files = m
        .file
        .iter()
        .enumerate()
        .map(|(j, f)| (at.file(j), &f.sources));
    for (at, list) in std::iter::once((at, &m.sources)).chain(files) {
        if let Some(s) = list.iter().find(|s| s.get_ref().starts_with("local://")) {
            return err(
                s.span(),
                at.field("sources"),
                "local:// belongs to the orchestrator's models.toml; use file:///abs/dir",
            );
        }
    }
    validate_model(m, at)
}

/// Checks one model, found `at` the given place.
pub(super) fn validate_model(m: RawModel, at: At) -> Result<Model, Unlocated> {
    let id = m.id.get_ref();
    if let Err(why) = check_id(id) {
        return err(m.id.span(), at.field("id"), why);
    }
    let bases = parse_locations(&m.sources, at)?;

    let mut paths: HashMap<&str, usize> = HashMap::with_capacity(m.file.len());
    let mut dirs: HashSet<&str> = HashSet::new();
    for (j, f) in m.file.iter().enumerate() {
        let path = f.path.get_ref().as_str();
        if let Err(why) = check_path(path) {
            return err(f.path.span(), at.file(j).field("path"), why);
        }
        if paths.insert(path, j).is_some() {
            return err(
                f.path.span(),
                at.file(j).field("path"),
                format!("duplicate path {path:?}"),
            );
        }
        dirs.extend(path.match_indices('/').map(|(i, _)| &path[..i]));
    }
    // A path that is also another path's directory cannot be both in one tree.
    for f in &m.file {
        let path = f.path.get_ref().as_str();
        if dirs.contains(path) {
            return err(
                f.path.span(),
                at.file(paths[path]).field("path"),
                format!("{path:?} is a file but also a directory of another file"),
            );
        }
    }

    let files = m
        .file
        .into_iter()
        .enumerate()
        .map(|(j, f)| validate_file(f, at.file(j), &bases))
        .collect::<Result<_, _>>()?;
    if let Some(repo) = &m.repo
        && let Err(why) = check_repo(repo.get_ref())
    {
        return err(repo.span(), at.field("repo"), why);
    }
    if let Some(rev) = &m.revision
        && !(rev.get_ref().len() == 40 && rev.get_ref().bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return err(
            rev.span(),
            at.field("revision"),
            "a revision is 40 hex digits (a git commit)",
        );
    }
    let signature = m
        .signature
        .map(|s| {
            check_signature(s.get_ref(), &bases)
                .or_else(|why| err(s.span(), at.field("signature"), why))
        })
        .transpose()?;
    Ok(Model {
        id: id.clone(),
        description: m.description,
        pinned: m.pinned,
        stream: m.stream,
        repo: m.repo.map(Spanned::into_inner),
        revision: m.revision.map(|r| r.into_inner().to_ascii_lowercase()),
        details: Vec::new(),
        sources: bases,
        signature,
        files,
    })
}

/// A signature bundle is a URL, or a path fetched from the model's sources.
fn check_signature(text: &str, bases: &[Location]) -> Result<Box<str>, String> {
    if text.contains("://") {
        Location::parse(text)?;
    } else {
        check_path(text)?;
        if bases.is_empty() {
            return Err(format!(
                "{text:?} is fetched from the model's `sources`, and it has none: add them, or give the bundle's URL"
            ));
        }
    }
    Ok(text.into())
}

fn validate_file(f: RawFile, at: At, bases: &[Location]) -> Result<FileEntry, Unlocated> {
    let path_span = f.path.span();
    let path = f.path.into_inner();
    let size = *f.size.get_ref();
    let sha256 = Digest::from_hex(f.sha256.get_ref())
        .or_else(|why| err(f.sha256.span(), at.field("sha256"), why))?;
    if size == 0 && sha256 != Digest::of(b"") {
        return err(
            f.sha256.span(),
            at.field("sha256"),
            format!(
                "the file is empty (size = 0), so it must be {}",
                Digest::of(b"")
            ),
        );
    }
    // Placeholders: no file of these bytes can be served.
    if size > 0 && sha256 == Digest::of(b"") {
        return err(
            f.sha256.span(),
            at.field("sha256"),
            format!(
                "the empty file's sha256, but size = {size}: a placeholder? Give the file's own \
                 (sha256sum, or modelfs manifest build)"
            ),
        );
    }
    if sha256 == Digest([0; 32]) {
        return err(
            f.sha256.span(),
            at.field("sha256"),
            "all zeros: a placeholder, not a file's sha256 (sha256sum, or modelfs manifest build)",
        );
    }
    let chunk_size = match &f.chunk_size {
        None => DEFAULT_CHUNK_SIZE,
        Some(cs) => {
            let v = *cs.get_ref();
            if let Err(why) = super::check_chunk_size(v) {
                return err(cs.span(), at.field("chunk_size"), why);
            }
            v
        }
    };
    let chunks = match f.chunks {
        None => None,
        Some(list) => {
            let expected = size.div_ceil(chunk_size);
            if list.get_ref().len() as u64 != expected {
                return err(
                    list.span(),
                    at.field("chunks"),
                    format!(
                        "{} chunk hashes, but a {size}-byte file in {chunk_size}-byte chunks has {expected}",
                        list.get_ref().len()
                    ),
                );
            }
            let digests = list
                .into_inner()
                .into_iter()
                .enumerate()
                .map(|(k, h)| {
                    Digest::from_hex(h.get_ref())
                        .or_else(|why| err(h.span(), at.field(format_args!("chunks[{k}]")), why))
                })
                .collect::<Result<Box<[_]>, _>>()?;
            // One chunk that is the whole file: its hash is the sha256.
            Some(match *digests {
                [only] if only == sha256 => Box::default(),
                _ => digests,
            })
        }
    };
    let sources = parse_locations(&f.sources, at)?;
    if sources.is_empty() && bases.is_empty() {
        return err(
            path_span,
            at.field("sources"),
            "no sources: give the model or this file a `sources` list",
        );
    }
    Ok(FileEntry {
        path: path.into(),
        size,
        sha256,
        chunk_size,
        chunks,
        sources,
        component: None,
        optional: false,
    })
}

/// The `sources` list of the model or file `at`.
fn parse_locations(list: &[Spanned<String>], at: At) -> Result<Box<[Location]>, Unlocated> {
    list.iter()
        .enumerate()
        .map(|(k, s)| {
            Location::parse(s.get_ref())
                .or_else(|why| err(s.span(), at.field(format_args!("sources[{k}]")), why))
        })
        .collect()
}

/// `org/name`, as the hub names repos.
fn check_repo(repo: &str) -> Result<(), String> {
    let parts: Vec<&str> = repo.split('/').collect();
    let ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    if parts.len() != 2 || !parts.iter().all(|p| ok(p)) {
        return Err(format!(
            "{repo:?} is not a repo: expected org/name ([A-Za-z0-9._-])"
        ));
    }
    Ok(())
}

pub(super) fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!("id must be 1 to {MAX_ID_LEN} characters"));
    }
    if id == "." || id == ".." {
        return Err(format!("{id:?} is not a usable directory name"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "._@+-".contains(*c)))
    {
        return Err(format!(
            "{c:?} is not allowed in a model id (use A-Z a-z 0-9 . _ @ + -)"
        ));
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), String> {
    if path.starts_with('/') {
        return Err("path must be relative".into());
    }
    // Names reach terminals (`ls`, logs): no character may hide or reorder
    // what they show.
    if let Some(c) = path.chars().find(|&c| c.is_control() || is_bidi_control(c)) {
        return Err(format!(
            "path contains the control character U+{:04X}",
            c as u32
        ));
    }
    for part in path.split('/') {
        match part {
            "" => return Err(format!("empty part in path {path:?}")),
            "." | ".." => return Err(format!("{part:?} is not allowed in a path")),
            p if p.len() > 255 => return Err(format!("path part longer than 255 bytes: {p:?}")),
            _ => {}
        }
    }
    Ok(())
}

/// Unicode's explicit bidirectional formatting characters, which can make a
/// name display as another (the "Trojan Source" trick).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

impl Unlocated {
    pub(super) fn locate(self, file: &Path, text: &str) -> ManifestError {
        let (line, column, field) = match &self.span {
            Some(span) => {
                let (line, column) = line_col(text, span.start);
                let field = if self.field.is_empty() {
                    field_at(text, span, &self.message)
                } else {
                    self.field
                };
                (line, column, field)
            }
            None => (0, 0, self.field),
        };
        ManifestError {
            file: file.to_owned(),
            line,
            column,
            field,
            message: self.message,
        }
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Names the field a parser error points at: the table it is in (counting
/// `[[model]]` and `[[model.file]]` headers) and the key on its line.
fn field_at(text: &str, span: &Range<usize>, message: &str) -> String {
    let before = &text[..span.start.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_text = text[line_start..].lines().next().unwrap_or("");
    // The error's own line counts: a missing field points at its table header.
    let upto = &text[..line_start + line_text.len()];
    let (mut model, mut file) = (None::<usize>, None::<usize>);
    for line in upto.lines() {
        match line.trim() {
            "[[model]]" => {
                model = Some(model.map_or(0, |m| m + 1));
                file = None;
            }
            "[[model.file]]" => file = Some(file.map_or(0, |f| f + 1)),
            _ => {}
        }
    }
    let mut table = String::new();
    // toml gives the root table an empty span at 0 (or the whole document).
    let whole_document = span.start == 0 && (span.is_empty() || span.end >= text.trim_end().len());
    if let Some(m) = model.filter(|_| !whole_document) {
        table = format!("model[{m}]");
        if let Some(f) = file {
            table.push_str(&format!(".file[{f}]"));
        }
    }
    let key = backticked(message, "missing field")
        .or_else(|| backticked(message, "unknown field"))
        .or_else(|| {
            let (k, _) = line_text.split_once('=')?;
            let k = k.trim().trim_matches('"');
            (!k.is_empty() && !k.starts_with('[')).then(|| k.to_owned())
        });
    match (table.is_empty(), key) {
        (true, Some(k)) => k,
        (false, Some(k)) => format!("{table}.{k}"),
        (_, None) => table,
    }
}

/// The first `quoted` name after `prefix` in a serde message.
fn backticked(message: &str, prefix: &str) -> Option<String> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    let start = rest.find('`')? + 1;
    let end = start + rest[start..].find('`')?;
    Some(rest[start..end].to_owned())
}

#[cfg(test)]
mod tests;
