//! The publishers' public keys a user trusts (`--trusted-key FILE`): ECDSA
//! on P-256 or P-384, PEM, as `model_signing sign key` pairs them.

use std::fmt;
use std::path::{Path, PathBuf};

use p256::pkcs8::{DecodePublicKey as _, EncodePublicKey as _, LineEnding};

use crate::hash::Digest;

#[derive(Debug, thiserror::Error)]
#[error("--trusted-key {}: {why}", path.display())]
pub struct KeyError {
    pub path: PathBuf,
    pub why: String,
}

#[derive(Clone)]
enum Curve {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

/// One trusted key.
#[derive(Clone)]
pub struct TrustedKey {
    /// The file it was read from, as given: how the user knows it.
    pub path: PathBuf,
    /// What `model_signing` puts in a bundle to say which key signed it:
    /// the SHA-256 of the key's PEM.
    pub hint: String,
    curve: Curve,
}

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TrustedKey({}, {})",
            self.path.display(),
            &self.hint[..12]
        )
    }
}

impl TrustedKey {
    pub fn load(path: &Path) -> Result<TrustedKey, KeyError> {
        let error = |why: String| KeyError {
            path: path.to_owned(),
            why,
        };
        let pem = std::fs::read_to_string(path).map_err(|e| error(format!("cannot read: {e}")))?;
        Self::from_pem(&pem)
            .map(|mut key| {
                key.path = path.to_owned();
                key
            })
            .map_err(error)
    }

    pub(super) fn from_pem(pem: &str) -> Result<TrustedKey, String> {
        if pem.contains("PRIVATE KEY-----") {
            return Err("a private key: give the public key the signer was paired with (`openssl ec -in key.pem -pubout`)".into());
        }
        let (curve, canonical) = if let Ok(key) =
            p256::ecdsa::VerifyingKey::from_public_key_pem(pem)
        {
            (Curve::P256(key), key.to_public_key_pem(LineEnding::LF))
        } else if let Ok(key) = p384::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            (Curve::P384(key), key.to_public_key_pem(LineEnding::LF))
        } else {
            return Err(
                "not a PEM public key of ECDSA P-256 or P-384 (P-521 and other kinds are not supported)"
                    .into(),
            );
        };
        let canonical = canonical.map_err(|e| format!("cannot encode the key: {e}"))?;
        Ok(TrustedKey {
            path: PathBuf::new(),
            hint: Digest::of(canonical.as_bytes()).to_hex(),
            curve,
        })
    }

    /// Whether `signature` (ASN.1 DER, as DSSE carries it) signs the
    /// message made of `parts` with this key, hashed as `model_signing`
    /// does for the curve; the parts are hashed in place, not joined.
    pub fn verifies(&self, parts: &[&[u8]], signature: &[u8]) -> bool {
        use p256::ecdsa::signature::MultipartVerifier as _;
        match &self.curve {
            Curve::P256(key) => p256::ecdsa::Signature::from_der(signature)
                .is_ok_and(|sig| key.multipart_verify(parts, &sig).is_ok()),
            Curve::P384(key) => p384::ecdsa::Signature::from_der(signature)
                .is_ok_and(|sig| key.multipart_verify(parts, &sig).is_ok()),
        }
    }
}

impl fmt::Display for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The public key of `tests/fixtures/signed/`, made by openssl.
    pub const FIXTURE_KEY: &str = include_str!("../../tests/fixtures/signed/pub.pem");

    #[test]
    fn the_hint_is_what_model_signing_writes() {
        let key = TrustedKey::from_pem(FIXTURE_KEY).unwrap();
        let bundle = include_str!("../../tests/fixtures/signed/model.sig");
        assert!(bundle.contains(&key.hint), "hint {}", key.hint);
    }

    #[test]
    fn private_and_foreign_keys_are_refused_plainly() {
        let private = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQ\n-----END EC PRIVATE KEY-----\n";
        assert!(
            TrustedKey::from_pem(private)
                .unwrap_err()
                .contains("private key")
        );
        assert!(
            TrustedKey::from_pem("hello")
                .unwrap_err()
                .contains("P-256 or P-384")
        );
    }
}
