//! The Model Orchestrator's `models.toml`, read as it is: `schema_version =
//! 1`, a table per model under `[models."<id>"]` with descriptive keys, its
//! files as `[[models."<id>".files]]` and its sources as
//! `[models."<id>".sources] priority = [...]`. It is turned into the native
//! raw model, so every check and every located error is the native one's.
//!
//! `local://REL` sources name a directory under a local root (the
//! orchestrator's `$MODELS_ROOT`): they become `file://ROOT/REL`; without a
//! root they are skipped when fetching (one warning here says so), and the
//! manifest stays valid.

use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use toml::Spanned;

use super::raw::{HashAt, RawFile, RawModel, Unlocated, err};

const KNOWN_SCHEMA: i64 = 1;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOrchestrator {
    schema_version: Spanned<i64>,
    #[serde(default)]
    models: Ordered<Spanned<OrchModel>>,
}

/// A model as the orchestrator describes it. The descriptive keys mean
/// nothing to modelfs; they are kept to be shown.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrchModel {
    description: Option<String>,
    version: Option<toml::Value>,
    variants: Option<toml::Value>,
    default_variant: Option<toml::Value>,
    resolution_caps: Option<toml::Value>,
    optional_components: Option<toml::Value>,
    required_components: Option<toml::Value>,
    lora_required: Option<toml::Value>,
    allow_patterns: Option<toml::Value>,
    defaults: Option<toml::Value>,
    vram_estimation: Option<toml::Value>,
    #[serde(default)]
    files: Vec<OrchFile>,
    sources: Option<OrchSources>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrchFile {
    path: Spanned<String>,
    size: Spanned<u64>,
    sha256: Spanned<String>,
    component: Option<String>,
    #[serde(default)]
    optional: bool,
    /// Not the orchestrator's: `modelfs manifest chunk` adds these.
    chunk_size: Option<Spanned<u64>>,
    chunks: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrchSources {
    #[serde(default)]
    priority: Vec<Spanned<String>>,
    /// Which files of a source the orchestrator downloads (the files list
    /// says that here): shown, like the model's own.
    allow_patterns: Option<toml::Value>,
}

/// What an orchestrator model adds to the native one.
pub(super) struct Extra {
    /// Descriptive keys and their values, in a fixed order.
    pub details: Vec<(String, toml::Value)>,
    /// Per file, in order: its component, and whether it is optional.
    pub files: Vec<(Option<String>, bool)>,
}

/// Whether `text` is in the orchestrator's format (it has `schema_version`).
pub(super) fn detect(text: &str) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        schema_version: Option<toml::Value>,
    }
    let probe = |text| {
        toml::from_str::<Probe>(text)
            .ok()
            .map(|p| p.schema_version.is_some())
    };
    // Top-level keys come before the first table header, so only that part
    // is parsed: a catalog's whole text would be a second copy in memory.
    // If the cut falls inside a multi-line value, the whole text decides.
    let header = text
        .lines()
        .find(|l| l.trim_start().starts_with('['))
        .map_or(text.len(), |l| l.as_ptr() as usize - text.as_ptr() as usize);
    probe(&text[..header]).unwrap_or_else(|| probe(text).unwrap_or(false))
}

/// Parses the orchestrator's format into native raw models (validated by the
/// caller) and what they add. `local_root` resolves `local://` sources.
pub(super) fn parse(
    text: &str,
    local_root: Option<&Path>,
) -> Result<Vec<(RawModel, Extra)>, Unlocated> {
    let raw: RawOrchestrator = toml::from_str(text).map_err(Unlocated::from_toml)?;
    if *raw.schema_version.get_ref() != KNOWN_SCHEMA {
        return err(
            raw.schema_version.span(),
            "schema_version".into(),
            format!(
                "unsupported schema_version {}; this modelfs reads {KNOWN_SCHEMA}",
                raw.schema_version.get_ref()
            ),
        );
    }
    let mut unrooted = false;
    let models = raw
        .models
        .0
        .into_iter()
        .map(|(id, model)| {
            let span = model.span();
            let mut m = model.into_inner();
            let (priority, source_patterns) = m
                .sources
                .take()
                .map_or((Vec::new(), None), |s| (s.priority, s.allow_patterns));
            if m.allow_patterns.is_none() {
                m.allow_patterns = source_patterns;
            }
            let mut sources = Vec::new();
            for s in priority {
                let span = s.span();
                match (s.get_ref().strip_prefix("local://"), local_root) {
                    (Some(rel), Some(root)) => {
                        let url = format!("file://{}", root.join(rel.trim_matches('/')).display());
                        sources.push(Spanned::new(span, url));
                    }
                    (Some(_), None) => {
                        unrooted = true;
                        sources.push(s);
                    }
                    (None, _) => sources.push(s),
                }
            }
            let details = details(&m);
            let extra = Extra {
                details,
                files: m
                    .files
                    .iter()
                    .map(|f| (f.component.clone(), f.optional))
                    .collect(),
            };
            let native = RawModel {
                id: Spanned::new(span, id),
                description: m.description,
                pinned: false,
                stream: true,
                repo: None,
                revision: None,
                sources,
                signature: None,
                file: m
                    .files
                    .into_iter()
                    .map(|f| RawFile {
                        path: f.path,
                        size: f.size,
                        sha256: f.sha256,
                        chunk_size: f.chunk_size,
                        chunks: f.chunks,
                        sources: Vec::new(),
                    })
                    .collect(),
            };
            (native, extra)
        })
        .collect();
    if unrooted {
        tracing::warn!(
            "local:// sources are skipped: give their root with --local-root (or $MODELFS_LOCAL_ROOT, or $MODELS_ROOT)"
        );
    }
    Ok(models)
}

/// Where each file's `sha256` value is, and its `chunk_size` if it has one,
/// per model, in the order written.
pub(super) fn sha256_spans(text: &str) -> Result<Vec<Vec<HashAt>>, Unlocated> {
    let raw: RawOrchestrator = toml::from_str(text).map_err(Unlocated::from_toml)?;
    Ok(raw
        .models
        .0
        .iter()
        .map(|(_, m)| {
            m.get_ref()
                .files
                .iter()
                .map(|f| (f.sha256.span(), f.chunk_size.as_ref().map(|c| *c.get_ref())))
                .collect()
        })
        .collect())
}

/// The descriptive keys that are set, in the order the orchestrator writes them.
fn details(m: &OrchModel) -> Vec<(String, toml::Value)> {
    [
        ("version", &m.version),
        ("variants", &m.variants),
        ("default_variant", &m.default_variant),
        ("resolution_caps", &m.resolution_caps),
        ("required_components", &m.required_components),
        ("optional_components", &m.optional_components),
        ("lora_required", &m.lora_required),
        ("allow_patterns", &m.allow_patterns),
        ("defaults", &m.defaults),
        ("vram_estimation", &m.vram_estimation),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_owned(), v.clone()?)))
    .collect()
}

/// A TOML table's entries in the order they were written.
struct Ordered<T>(Vec<(String, T)>);

impl<T> Default for Ordered<T> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Entries<T> {
            type Value = Ordered<T>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table of models")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Ordered(entries))
            }
        }
        d.deserialize_map(Entries(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::manifest::Manifest;
    use crate::source::Location;

    /// The sha256 of "hello\n": any non-empty file's will do.
    const SHA: &str = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";

    fn text(extra: &str) -> String {
        format!(
            "schema_version = 1\n\
             [models.\"b@1\"]\ndescription = \"B\"\nvariants = [\"fp16\"]\n{extra}\n\
             [models.\"b@1\".defaults]\nfps = 24\n\
             [[models.\"b@1\".files]]\npath = \"vae.pth\"\nsize = 1\nsha256 = \"{SHA}\"\n\
             component = \"vae\"\noptional = true\n\
             [models.\"b@1\".sources]\npriority = [\"local://wan/b@1\", \"s3://bkt/wan/b@1\"]\n\
             allow_patterns = [\"*.pth\"]\n\
             [models.\"a@1\"]\n[[models.\"a@1\".files]]\npath = \"x\"\nsize = 1\nsha256 = \"{SHA}\"\n\
             [models.\"a@1\".sources]\npriority = [\"hf://Org/Repo\"]\n"
        )
    }

    #[test]
    fn models_keep_their_order_details_components_and_sources() {
        let m = Manifest::load_text(&text(""), Some(Path::new("/srv/models"))).unwrap();
        let ids: Vec<_> = m.models.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["b@1", "a@1"], "as written, not sorted");
        let b = &m.models[0];
        assert_eq!(b.description.as_deref(), Some("B"));
        let detail = |key: &str| {
            let (_, v) = b.details.iter().find(|(k, _)| k == key).unwrap();
            v.to_string().replace(char::is_whitespace, "")
        };
        assert_eq!(detail("variants"), "[\"fp16\"]");
        assert_eq!(detail("defaults"), "{fps=24}");
        assert_eq!(detail("allow_patterns"), "[\"*.pth\"]");
        let f = &b.files[0];
        assert_eq!((f.component.as_deref(), f.optional), (Some("vae"), true));
        assert!(!f.is_chunked(), "verified whole");
        let locations = b.locations(f);
        assert_eq!(
            locations[0],
            Location::File("/srv/models/wan/b@1/vae.pth".into())
        );
        assert_eq!(locations[1].to_string(), "s3://bkt/wan/b@1/vae.pth");
        // Without a root, local:// stays, to be skipped when fetching.
        let m = Manifest::load_text(&text(""), None).unwrap();
        assert_eq!(
            m.models[0].locations(&m.models[0].files[0])[0].to_string(),
            "local://wan/b@1/vae.pth"
        );
    }

    #[test]
    fn errors_name_the_line_and_the_model() {
        let e = Manifest::load_text(&text("colour = \"red\""), None).unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        assert!(e.message.contains("unknown field `colour`"), "{e}");
        let bad = text("").replacen(
            "size = 1\nsha256 = \"5891",
            "size = 1\nsha256 = \"zz\"\n#",
            1,
        );
        let e = Manifest::load_text(&bad, None).unwrap_err();
        assert_eq!(e.field, "models.\"b@1\".files[0].sha256", "{e}");
        assert_eq!(e.line, 11, "{e}");
    }

    #[test]
    fn chunk_hashes_are_added_after_sha256_and_an_existing_chunk_size_is_kept() {
        let text = text("").replacen(
            "component = \"vae\"\n",
            "component = \"vae\"\nchunk_size = 65536\n",
            1,
        );
        let m = Manifest::load_text(&text, None).unwrap();
        let hashes = vec![crate::hash::Digest([3; 32])];
        let out = m
            .add_chunk_hashes(
                &text,
                &[
                    (0, 0, 65536, hashes.clone()),
                    (1, 0, 1 << 23, hashes.clone()),
                ],
            )
            .unwrap();
        assert_eq!(
            out.matches("chunk_size = 65536").count(),
            1,
            "not written twice:\n{out}"
        );
        assert_eq!(out.matches("chunk_size = 8388608").count(), 1, "{out}");
        let again = Manifest::load_text(&out, None).unwrap();
        assert!(again.models.iter().all(|m| m.files[0].is_chunked()));
        // Another chunk size than the file's own is refused, not written.
        assert!(
            m.add_chunk_hashes(&text, &[(0, 0, 131072, hashes)])
                .is_err()
        );
    }
}
