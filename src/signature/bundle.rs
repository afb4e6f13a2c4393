//! A Sigstore bundle as `model_signing` writes it: a DSSE envelope whose
//! payload is an in-toto statement listing each file (or shard of a file)
//! of the model with its SHA-256. Checked against trusted keys, offline.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::keys::TrustedKey;
use crate::hash::Digest;

/// What every Sigstore bundle's `mediaType` starts with (then a version).
const MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle";
const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
const PREDICATE_TYPE: &str = "https://model_signing/signature/v1.0";
/// What `model_signing` 0.2 wrote, before the format settled.
const PREDICATE_TYPE_0_2: &str = "https://model_signing/Digests/v0.1";

/// Why a bundle does not vouch for anything.
#[derive(Clone, Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a model_signing bundle: {0}")]
    Malformed(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("not signed by a trusted key: {0}")]
    Untrusted(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    media_type: String,
    #[serde(default)]
    verification_material: Material,
    dsse_envelope: Option<Envelope>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Material {
    public_key: Option<KeyHint>,
    /// Only whether they are there: not a byte of them is kept.
    certificate: Option<IgnoredAny>,
    x509_certificate_chain: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct KeyHint {
    #[serde(default)]
    hint: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload: String,
    payload_type: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Deserialize)]
struct EnvelopeSignature {
    sig: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Statement {
    #[serde(rename = "_type")]
    kind: String,
    subject: Vec<Subject>,
    predicate_type: String,
    predicate: Option<Predicate>,
}

#[derive(Deserialize)]
struct Subject {
    digest: HashMap<String, String>,
}

#[derive(Deserialize)]
struct Predicate {
    serialization: Serialization,
    resources: Vec<Resource>,
}

#[derive(Deserialize)]
struct Serialization {
    method: String,
    hash_type: String,
    #[serde(default)]
    ignore_paths: Vec<String>,
    /// A float in what `model_signing` writes (`65536.0`).
    shard_size: Option<f64>,
}

#[derive(Deserialize)]
struct Resource {
    name: String,
    digest: String,
}

/// How the signer cut the model into signed pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// One digest per file.
    Files,
    /// One digest per `shard_size` bytes of each file (the last shorter).
    Shards(u64),
}

/// A signed piece of a file: `start..end` (`0..u64::MAX` for the whole
/// file) and its SHA-256.
pub type Piece = (u64, u64, Digest);

/// What a verified bundle says: which bytes the publisher signed.
#[derive(Debug)]
pub struct Signed {
    pub method: Method,
    /// Paths the signer left out on purpose (`.git`, ...): a file at or
    /// under one is unsigned, and not a sign of tampering.
    pub ignore_paths: Vec<String>,
    /// Per file path: its pieces, `(start, end, digest)`, in order.
    pub files: HashMap<String, Vec<Piece>>,
}

impl Signed {
    /// The signed digest of the model's chunk list, if the bundle signs
    /// one as a file (see [`crate::manifest::chunk_list`]).
    pub fn chunk_list(&self) -> Option<Digest> {
        match (
            self.method,
            self.files
                .get(crate::manifest::chunk_list::CHUNK_LIST)?
                .as_slice(),
        ) {
            (Method::Files, [(_, _, digest)]) => Some(*digest),
            _ => None,
        }
    }
}

/// Whether `json` is a Sigstore bundle, by its media type alone (no check).
pub fn is_bundle(json: &[u8]) -> bool {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Head {
        media_type: String,
    }
    serde_json::from_slice::<Head>(json).is_ok_and(|h| h.media_type.starts_with(MEDIA_TYPE))
}

/// Checks `bundle` against `keys` and returns what it signs and which key
/// signed it. Nothing in the payload is trusted before the signature is.
pub fn verify<'k>(
    bundle: &[u8],
    keys: &'k [TrustedKey],
) -> Result<(Signed, &'k TrustedKey), BundleError> {
    let malformed = |why: String| BundleError::Malformed(why);
    let bundle: Bundle = serde_json::from_slice(bundle).map_err(|e| malformed(e.to_string()))?;
    if !bundle.media_type.starts_with(MEDIA_TYPE) {
        return Err(malformed(format!(
            "media type {}",
            quoted(&bundle.media_type)
        )));
    }
    let material = &bundle.verification_material;
    if material.certificate.is_some() || material.x509_certificate_chain.is_some() {
        return Err(BundleError::Unsupported(
            "signed with a certificate (Sigstore keyless or `sign certificate`): checking one needs a \
             certificate authority and a transparency log, which modelfs does not check; \
             have the model signed with a key (`model_signing sign key`) and pass --trusted-key"
                .into(),
        ));
    }
    let envelope = bundle
        .dsse_envelope
        .ok_or_else(|| malformed("no DSSE envelope".into()))?;
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(malformed(format!(
            "payload type {}",
            quoted(&envelope.payload_type)
        )));
    }
    let payload = STANDARD
        .decode(&envelope.payload)
        .map_err(|e| malformed(format!("payload: {e}")))?;
    let [signature] = &envelope.signatures[..] else {
        return Err(malformed(format!(
            "{} signatures, not one",
            envelope.signatures.len()
        )));
    };
    let signature = STANDARD
        .decode(&signature.sig)
        .map_err(|e| malformed(format!("signature: {e}")))?;
    let prefix = pae_prefix(&envelope.payload_type, payload.len());
    let message: [&[u8]; 2] = [&prefix, &payload];
    let Some(key) = keys.iter().find(|k| k.verifies(&message, &signature)) else {
        let hint = material.public_key.as_ref().map_or("", |k| k.hint.as_str());
        let hint = match hint.get(..12) {
            _ if hint.is_empty() => "(none)".to_owned(),
            Some(short) => quoted(short),
            None => quoted(hint),
        };
        let trusted: Vec<String> = keys
            .iter()
            .map(|k| format!("{k} ({})", &k.hint[..12]))
            .collect();
        return Err(BundleError::Untrusted(format!(
            "the bundle names key {hint}, trusted: {}",
            trusted.join(", ")
        )));
    };
    statement(&payload).map(|signed| (signed, key))
}

/// Text the bundle wrote, for a message: quoted (escaping what would hide
/// or reorder what a terminal shows) and cut to 64 characters.
fn quoted(text: &str) -> String {
    let cut: String = text.chars().take(64).collect();
    if cut.len() < text.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// DSSE's pre-authentication encoding, what is actually signed, is this
/// followed by the payload.
fn pae_prefix(payload_type: &str, payload_len: usize) -> Vec<u8> {
    format!(
        "DSSEv1 {} {payload_type} {payload_len} ",
        payload_type.len()
    )
    .into_bytes()
}

fn statement(payload: &[u8]) -> Result<Signed, BundleError> {
    let malformed = |why: String| BundleError::Malformed(format!("statement: {why}"));
    let statement: Statement =
        serde_json::from_slice(payload).map_err(|e| malformed(e.to_string()))?;
    if statement.kind != STATEMENT_TYPE {
        return Err(malformed(format!("type {}", quoted(&statement.kind))));
    }
    if statement.predicate_type == PREDICATE_TYPE_0_2 {
        return Err(BundleError::Unsupported(
            "made by model_signing 0.2, whose statement lists no serialization: re-sign with model_signing 1.x".into(),
        ));
    }
    if statement.predicate_type != PREDICATE_TYPE {
        return Err(malformed(format!(
            "predicate type {}",
            quoted(&statement.predicate_type)
        )));
    }
    let predicate = statement
        .predicate
        .ok_or_else(|| malformed("no predicate".into()))?;
    let s = &predicate.serialization;
    if s.hash_type != "sha256" {
        return Err(BundleError::Unsupported(format!(
            "hashed with {}: modelfs checks sha256 (sign with the default hash)",
            quoted(&s.hash_type)
        )));
    }
    let method = match (s.method.as_str(), s.shard_size) {
        ("files", _) => Method::Files,
        ("shards", Some(size)) if size >= 1.0 && size.fract() == 0.0 => Method::Shards(size as u64),
        (method, _) => {
            return Err(BundleError::Unsupported(format!(
                "serialization {}",
                quoted(method)
            )));
        }
    };
    // The subject's digest covers the resource list: a statement whose two
    // halves disagree was not made by model_signing.
    let mut all = Vec::with_capacity(predicate.resources.len() * 32);
    let mut files: HashMap<String, Vec<Piece>> = HashMap::new();
    for r in &predicate.resources {
        let digest = Digest::from_hex(&r.digest)
            .map_err(|e| malformed(format!("{}: {e}", quoted(&r.name))))?;
        all.extend_from_slice(&digest.0);
        let (path, range) = match method {
            Method::Files => (r.name.as_str(), None),
            Method::Shards(_) => {
                let mut parts = r.name.rsplitn(3, ':');
                let (end, start, path) = (parts.next(), parts.next(), parts.next());
                let range = start
                    .zip(end)
                    .and_then(|(s, e)| Some((s.parse().ok()?, e.parse().ok()?)));
                match (path, range) {
                    (Some(path), Some(range)) => (path, Some(range)),
                    _ => return Err(malformed(format!("shard name {}", quoted(&r.name)))),
                }
            }
        };
        let (start, end) = range.unwrap_or((0, u64::MAX));
        files
            .entry(path.to_owned())
            .or_default()
            .push((start, end, digest));
    }
    let [subject] = &statement.subject[..] else {
        return Err(malformed(format!(
            "{} subjects, not one",
            statement.subject.len()
        )));
    };
    if subject.digest.get("sha256").map(String::as_str) != Some(&Digest::of(&all).to_hex()) {
        return Err(malformed(
            "the subject's digest does not cover the resources".into(),
        ));
    }
    for pieces in files.values_mut() {
        pieces.sort_unstable_by_key(|p| p.0);
    }
    Ok(Signed {
        method,
        ignore_paths: s.ignore_paths.clone(),
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::super::keys::tests::FIXTURE_KEY;
    use super::*;

    fn key() -> Vec<TrustedKey> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pub.pem");
        std::fs::write(&path, FIXTURE_KEY).unwrap();
        vec![TrustedKey::load(&path).unwrap()]
    }

    const FILES: &str = include_str!("../../tests/fixtures/signed/model.sig");
    const SHARDS: &str = include_str!("../../tests/fixtures/signed/shards.sig");

    #[test]
    fn a_bundle_made_by_model_signing_verifies() {
        let (signed, _) = verify(FILES.as_bytes(), &key()).unwrap();
        assert_eq!(signed.method, Method::Files);
        assert_eq!(signed.files["w.bin"].len(), 1);
        assert!(signed.ignore_paths.iter().any(|p| p == ".git"));
        let (signed, _) = verify(SHARDS.as_bytes(), &key()).unwrap();
        assert_eq!(signed.method, Method::Shards(65536));
        let ends: Vec<u64> = signed.files["w.bin"].iter().map(|p| p.1).collect();
        assert_eq!(ends, [65536, 131072, 150000]);
    }

    #[test]
    fn an_edited_payload_or_another_key_is_refused() {
        let mut bundle: serde_json::Value = serde_json::from_str(FILES).unwrap();
        let payload = STANDARD
            .decode(bundle["dsseEnvelope"]["payload"].as_str().unwrap())
            .unwrap();
        let text = String::from_utf8(payload).unwrap();
        let edited = text.replacen("\"digest\": \"e", "\"digest\": \"f", 1);
        assert_ne!(edited, text);
        bundle["dsseEnvelope"]["payload"] = STANDARD.encode(edited).into();
        let err = verify(bundle.to_string().as_bytes(), &key()).unwrap_err();
        assert!(matches!(err, BundleError::Untrusted(_)), "{err}");

        let other = p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap();
        let pem = p256::pkcs8::EncodePublicKey::to_public_key_pem(
            other.verifying_key(),
            p256::pkcs8::LineEnding::LF,
        )
        .unwrap();
        let stranger = vec![TrustedKey::from_pem(&pem).unwrap()];
        let err = verify(FILES.as_bytes(), &stranger).unwrap_err();
        assert!(
            err.to_string().contains("not signed by a trusted key"),
            "{err}"
        );
    }

    #[test]
    fn certificate_bundles_are_refused_plainly() {
        let mut bundle: serde_json::Value = serde_json::from_str(FILES).unwrap();
        bundle["verificationMaterial"]["certificate"] = serde_json::json!({"rawBytes": "AA=="});
        let err = verify(bundle.to_string().as_bytes(), &key()).unwrap_err();
        assert!(err.to_string().contains("--trusted-key"), "{err}");
    }
}
