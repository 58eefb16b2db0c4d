//! Image signatures in cosign's key-based format, read from the registry
//! and checked against the operator's public key before an image runs.
//!
//! A signature of the manifest `sha256:<hex>` lives in the same repository
//! under the tag `sha256-<hex>.sig`: an OCI manifest whose layers are
//! simple-signing payloads (`application/vnd.dev.cosign.simplesigning.v1+json`),
//! each with its ECDSA P-256 signature (ASN.1 DER over the payload's SHA-256,
//! base64) in the annotation `dev.cosignproject.cosign/signature`. The
//! payload names the digest it signs:
//!
//! ```json
//! {"critical":{"identity":{"docker-reference":"localhost:5000/selfup"},
//!   "image":{"docker-manifest-digest":"sha256:..."},
//!   "type":"cosign container image signature"},"optional":null}
//! ```
//!
//! `cosign sign --key` writes this, and `registry/sign.sh` writes it with
//! openssl and curl. An image passes when one layer's signature verifies
//! with the key and its payload names exactly the digest about to run. The
//! payload blob is checked against its digest before it is read; every
//! document is bounded like the rest of the registry client's.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{DerSignature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use reqwest::Url;
use sha2::{Digest, Sha256};

use super::credentials::RegistryAuth;
use super::{Registry, RegistryError, Session};

/// The layer media type of a simple-signing payload.
pub const PAYLOAD_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the payload's signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The `critical.type` of a container image signature.
const PAYLOAD_KIND: &str = "cosign container image signature";
/// What a signature manifest may be.
const SIGNATURE_MANIFEST_TYPES: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
/// At most this many bytes in one payload (cosign's are a few hundred).
const MAX_PAYLOAD_BYTES: usize = 64 << 10;
/// At most this many signatures looked at for one image.
const MAX_SIGNATURES: usize = 16;

/// Why an image does not pass.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "the public key {path} cannot be read ({reason}): mount the key build.sh generated, or set verify = \"off\""
    )]
    KeyUnreadable { path: String, reason: String },
    #[error("{path} is not an ECDSA P-256 public key in PEM (PUBLIC KEY): {reason}")]
    KeyInvalid { path: String, reason: String },
    #[error(
        "the image {digest} is not signed (no {tag} in its repository): selfup runs only images signed with the operator's key"
    )]
    Unsigned { digest: String, tag: String },
    #[error("no signature of the image {digest} verifies with the key {key}: {reasons}")]
    NotVerified {
        digest: String,
        key: String,
        reasons: String,
    },
    #[error("the image's registry digest is unknown, so its signature cannot be checked: {0}")]
    NoDigest(String),
    #[error("the signature of {digest} could not be read: {source}")]
    Registry {
        digest: String,
        #[source]
        source: RegistryError,
    },
}

/// The operator's public key, and where it came from (for messages).
#[derive(Clone)]
pub struct TrustedKey {
    key: VerifyingKey,
    source: String,
}

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedKey").field("source", &self.source).finish()
    }
}

/// One signature found for an image: the payload and its base64 signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub payload: Vec<u8>,
    pub signature: String,
}

impl TrustedKey {
    /// A PEM `PUBLIC KEY` (what `openssl ec -pubout` and `cosign
    /// generate-key-pair` write); `source` names it in messages.
    pub fn from_pem(pem: &str, source: &str) -> Result<TrustedKey, SignatureError> {
        let key = VerifyingKey::from_public_key_pem(pem.trim()).map_err(|e| SignatureError::KeyInvalid {
            path: source.into(),
            reason: e.to_string(),
        })?;
        Ok(TrustedKey {
            key,
            source: source.into(),
        })
    }

    /// The key in the file at `path`.
    pub fn load(path: &Path) -> Result<TrustedKey, SignatureError> {
        let pem = std::fs::read_to_string(path).map_err(|e| SignatureError::KeyUnreadable {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        TrustedKey::from_pem(&pem, &path.display().to_string())
    }

    /// Passes when one of `signatures` verifies with this key and its
    /// payload names exactly `digest`; otherwise says why each failed.
    pub fn check(&self, digest: &str, signatures: &[Signed]) -> Result<(), SignatureError> {
        if signatures.is_empty() {
            return Err(SignatureError::Unsigned {
                digest: digest.into(),
                tag: signature_tag(digest).unwrap_or_default(),
            });
        }
        let mut reasons = Vec::new();
        for signed in signatures {
            match self.check_one(digest, signed) {
                Ok(()) => return Ok(()),
                Err(reason) => reasons.push(reason),
            }
        }
        Err(SignatureError::NotVerified {
            digest: digest.into(),
            key: self.source.clone(),
            reasons: reasons.join("; "),
        })
    }

    fn check_one(&self, digest: &str, signed: &Signed) -> Result<(), String> {
        let der = base64::engine::general_purpose::STANDARD
            .decode(signed.signature.trim())
            .map_err(|e| format!("the signature is not base64 ({e})"))?;
        let signature = DerSignature::try_from(der.as_slice()).map_err(|_| "the signature is not ASN.1 DER ECDSA")?;
        self.key
            .verify(&signed.payload, &signature)
            .map_err(|_| "a signature by another key, or over another payload".to_string())?;
        // Only a payload the key signed is read.
        let payload: serde_json::Value =
            serde_json::from_slice(&signed.payload).map_err(|e| format!("the signed payload is not JSON ({e})"))?;
        let critical = &payload["critical"];
        if critical["type"].as_str() != Some(PAYLOAD_KIND) {
            return Err(format!(
                "the signed payload is of type {}, not a container image signature",
                critical["type"]
            ));
        }
        match critical["image"]["docker-manifest-digest"].as_str() {
            Some(signed_digest) if signed_digest == digest => Ok(()),
            Some(other) => Err(format!("the signature is for {other}, not {digest}")),
            None => Err("the signed payload names no image digest".into()),
        }
    }
}

/// Where the signatures of `digest` (`sha256:<hex>`) are tagged.
pub fn signature_tag(digest: &str) -> Option<String> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| format!("sha256-{hex}.sig"))
}

/// How images are checked before they run: from the settings `verify` and
/// `verify_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Only images signed with the key at this path run.
    Signed(PathBuf),
    /// Any image runs.
    Off,
}

impl Registry {
    /// The signatures of `digest` in `repository`, in cosign's layout; none
    /// if it has no signature tag. Each payload is checked against its
    /// layer's digest.
    pub async fn signatures(
        &self,
        registry: &str,
        repository: &str,
        digest: &str,
        auth: Option<&RegistryAuth>,
    ) -> Result<Vec<Signed>, SignatureError> {
        let wrap = |source| SignatureError::Registry {
            digest: digest.into(),
            source,
        };
        let tag =
            signature_tag(digest).ok_or_else(|| SignatureError::NoDigest(format!("{digest} is no sha256 digest")))?;
        let mut session = Session::new(self, registry, repository, auth).map_err(wrap)?;
        let url = session
            .url(&format!("/v2/{}/manifests/{tag}", session.repository))
            .map_err(wrap)?;
        let Some((_, manifest)) = session
            .document(&url, Some(SIGNATURE_MANIFEST_TYPES))
            .await
            .map_err(wrap)?
        else {
            return Ok(Vec::new());
        };
        let manifest: serde_json::Value = serde_json::from_slice(&manifest)
            .map_err(|e| wrap(session.untrusted(format!("the signature manifest is not JSON: {e}"))))?;
        let mut found = Vec::new();
        for layer in manifest["layers"].as_array().into_iter().flatten().take(MAX_SIGNATURES) {
            if layer["mediaType"].as_str() != Some(PAYLOAD_TYPE) {
                continue;
            }
            let (Some(blob), Some(signature)) = (
                layer["digest"].as_str(),
                layer["annotations"][SIGNATURE_ANNOTATION].as_str(),
            ) else {
                continue;
            };
            let url = blob_url(&session, blob).map_err(wrap)?;
            let payload = session.payload(&url, blob).await.map_err(wrap)?;
            found.push(Signed {
                payload,
                signature: signature.to_string(),
            });
        }
        Ok(found)
    }
}

fn blob_url(session: &Session<'_>, blob: &str) -> Result<Url, RegistryError> {
    if signature_tag(blob).is_none() {
        return Err(session.untrusted(format!("a signature layer names the digest {blob:?}")));
    }
    session.url(&format!("/v2/{}/blobs/{blob}", session.repository))
}

impl Session<'_> {
    /// A payload blob, at most [`MAX_PAYLOAD_BYTES`], whose SHA-256 must be `digest`.
    async fn payload(&mut self, url: &Url, digest: &str) -> Result<Vec<u8>, RegistryError> {
        let mut response = self.send(reqwest::Method::GET, url, None).await?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(self.refusal(url, &response));
        }
        let body = self
            .bounded_body(&mut response, MAX_PAYLOAD_BYTES, "a signature payload")
            .await?;
        let actual = format!("sha256:{:x}", Sha256::digest(&body));
        if actual != digest {
            return Err(self.untrusted(format!("the payload blob {digest} has the digest {actual}")));
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made here with openssl 3 (`openssl ecparam -name prime256v1 -genkey
    // -noout`, `openssl ec -pubout`, `openssl dgst -sha256 -sign`): a key,
    // a payload for DIGEST, and two signatures of it (ECDSA is randomized).
    const PUBLIC: &str = include_str!("testdata/cosign.pub");
    const OTHER: &str = include_str!("testdata/other.pub");
    const PAYLOAD: &[u8] = include_bytes!("testdata/payload.json");
    const SIGNATURES: &str = include_str!("testdata/payload.sigs");
    const DIGEST: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    fn signed(signature: &str) -> Signed {
        Signed {
            payload: PAYLOAD.to_vec(),
            signature: signature.into(),
        }
    }

    fn key() -> TrustedKey {
        TrustedKey::from_pem(PUBLIC, "cosign.pub").unwrap()
    }

    #[test]
    fn every_signature_openssl_made_verifies_for_its_digest() {
        let sigs: Vec<&str> = SIGNATURES.lines().collect();
        assert!(sigs.len() >= 2);
        for sig in sigs {
            key().check(DIGEST, &[signed(sig)]).unwrap();
        }
    }

    #[test]
    fn another_digest_another_key_or_a_changed_payload_is_refused() {
        let sig = SIGNATURES.lines().next().unwrap();
        let other_digest = "sha256:fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9";
        let e = key().check(other_digest, &[signed(sig)]).unwrap_err().to_string();
        assert!(
            e.contains(&format!("the signature is for {DIGEST}, not {other_digest}")),
            "{e}"
        );

        let other = TrustedKey::from_pem(OTHER, "other.pub").unwrap();
        let e = other.check(DIGEST, &[signed(sig)]).unwrap_err().to_string();
        assert!(
            e.contains("another key, or over another payload") && e.contains("other.pub"),
            "{e}"
        );

        let mut changed = signed(sig);
        changed.payload = String::from_utf8(PAYLOAD.to_vec())
            .unwrap()
            .replace("localhost:5000/selfup", "localhost:5000/selfuq")
            .into_bytes();
        let e = key().check(DIGEST, &[changed]).unwrap_err().to_string();
        assert!(e.contains("another key, or over another payload"), "{e}");
    }

    #[test]
    fn one_good_signature_among_bad_ones_passes_and_none_is_unsigned() {
        let good = SIGNATURES.lines().next().unwrap();
        key()
            .check(DIGEST, &[signed("not base64!"), signed("AAAA"), signed(good)])
            .unwrap();
        let e = key()
            .check(DIGEST, &[signed("not base64!"), signed("AAAA")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not base64") && e.contains("not ASN.1 DER"), "{e}");
        let e = key().check(DIGEST, &[]).unwrap_err().to_string();
        assert!(
            e.contains("is not signed") && e.contains(&format!("sha256-{}.sig", &DIGEST[7..])),
            "{e}"
        );
    }

    #[test]
    fn a_key_that_is_no_p256_public_key_is_refused_with_its_path() {
        for pem in [
            "",
            "hello",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        ] {
            let e = TrustedKey::from_pem(pem, "/etc/selfup/cosign.pub")
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("/etc/selfup/cosign.pub is not an ECDSA P-256 public key"),
                "{e}"
            );
        }
        let e = TrustedKey::load(Path::new("/nonexistent/cosign.pub"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot be read") && e.contains("verify = \"off\""), "{e}");
    }

    #[test]
    fn the_signature_tag_is_the_digest_with_a_dash_and_sig() {
        assert_eq!(
            signature_tag(DIGEST).unwrap(),
            format!("sha256-{}.sig", &DIGEST["sha256:".len()..])
        );
        for bad in [
            "",
            "sha256:",
            "sha512:2c26",
            "sha256:../../x",
            &format!("sha256:{}", "g".repeat(64)),
        ] {
            assert_eq!(signature_tag(bad), None, "{bad}");
        }
    }
}
