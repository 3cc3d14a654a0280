//! Signed models, verified offline: the OpenSSF model-signing format (v1.0, what the
//! `model-signing` package writes). A model directory is signed as a whole — every file's
//! SHA-256 in one in-toto statement — in a Sigstore bundle whose DSSE envelope carries the
//! signature; this checks the "key" method (ECDSA P-256 or P-384 public keys, PEM).
//!
//! ```text
//!  bundle (JSON) ─ dsseEnvelope ─ payloadType "application/vnd.in-toto+json"
//!                               ─ payload: base64 of the statement
//!                               ─ signatures[]: base64 DER ECDSA over
//!                                 PAE = "DSSEv1 <len type> <type> <len payload> <payload>"
//!  statement ─ subject[0].digest.sha256 = SHA-256 of the resources' digests, in order
//!            ─ predicate.serialization: method "files", hash_type "sha256", ignore_paths
//!            ─ predicate.resources[]: {name, algorithm "sha256", digest}
//! ```
//!
//! [`verify`] checks the bundle and says who signed (which trusted key); [`check_files`]
//! then holds the model's files to the statement: exactly its files, each with its digest —
//! one missing, extra or changed refuses the whole model. The signature file itself and the
//! statement's `ignore_paths` are left out, as the reference tool does.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Largest bundle read (real ones are a few KiB, plus 100 bytes per file).
pub const MAX_BUNDLE: usize = 16 << 20;
/// How [`check_files`] begins the error for a signed file that is not there.
pub const MISSING: &str = "model file missing since signing";
/// The statement's predicate type this checks.
const PREDICATE_V1: &str = "https://model_signing/signature/v1.0";
const IN_TOTO: &str = "application/vnd.in-toto+json";

/// A public key models may be signed with, and the name it is known by (for the audit log).
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub name: String,
    key: Key,
}

#[derive(Debug, Clone)]
enum Key {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

impl TrustedKey {
    /// A PEM public key (`-----BEGIN PUBLIC KEY-----`, P-256 or P-384), named `name`.
    pub fn from_pem(name: &str, pem: &str) -> Result<TrustedKey, String> {
        use p256::pkcs8::DecodePublicKey;
        let key = if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            Key::P256(k)
        } else if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            Key::P384(k)
        } else {
            return Err(format!(
                "{name}: not a PEM public key of curve P-256 or P-384"
            ));
        };
        Ok(TrustedKey {
            name: name.to_string(),
            key,
        })
    }

    /// Whether `sig` (DER) is this key's ECDSA signature of `message` (the curve's hash).
    fn verifies(&self, message: &[u8], sig: &[u8]) -> bool {
        use p256::ecdsa::signature::Verifier;
        match &self.key {
            Key::P256(k) => p256::ecdsa::DerSignature::from_bytes(sig)
                .is_ok_and(|s| k.verify(message, &s).is_ok()),
            Key::P384(k) => p384::ecdsa::DerSignature::from_bytes(sig)
                .is_ok_and(|s| k.verify(message, &s).is_ok()),
        }
    }
}

/// What a verified bundle says: who signed, and the files with their digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The trusted key's name.
    pub signer: String,
    /// The model's name (the statement's subject: the reference tool writes the directory's
    /// name).
    pub name: String,
    /// Every signed file, by its path in the model directory.
    pub files: BTreeMap<String, [u8; 32]>,
    /// Paths the signer left out (a directory leaves out what is below it).
    pub ignore_paths: Vec<String>,
}

impl Signed {
    /// Whether the signer left `path` out (`ignore_paths`: a directory leaves out what is
    /// below it). Such a file is neither required nor vouched for.
    pub fn ignores(&self, path: &str) -> bool {
        self.ignore_paths.iter().any(|p| {
            let p = p.trim_end_matches('/');
            path == p
                || path
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    media_type: String,
    dsse_envelope: Envelope,
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
    predicate: Predicate,
}

#[derive(Deserialize)]
struct Subject {
    #[serde(default)]
    name: String,
    digest: BTreeMap<String, String>,
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
}

#[derive(Deserialize)]
struct Resource {
    name: String,
    algorithm: String,
    digest: String,
}

/// DSSE's pre-authentication encoding of a payload.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

fn digest_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Checks a bundle's signature against `keys` and reads its statement. Errors are the
/// refusal's text: `model signed by an untrusted key`, `model signature unreadable: …`.
pub fn verify(bundle: &[u8], keys: &[TrustedKey]) -> Result<Signed, String> {
    let unreadable = |why: &str| format!("model signature unreadable: {why}");
    if bundle.len() > MAX_BUNDLE {
        return Err(unreadable("larger than 16 MiB"));
    }
    let bundle: Bundle =
        serde_json::from_slice(bundle).map_err(|e| unreadable(&format!("not a bundle ({e})")))?;
    if !bundle
        .media_type
        .starts_with("application/vnd.dev.sigstore.bundle")
    {
        return Err(unreadable("not a Sigstore bundle"));
    }
    let envelope = bundle.dsse_envelope;
    if envelope.payload_type != IN_TOTO {
        return Err(unreadable("the payload is not an in-toto statement"));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = b64
        .decode(&envelope.payload)
        .map_err(|_| unreadable("the payload is not base64"))?;
    let message = pae(&envelope.payload_type, &payload);
    let signer = envelope
        .signatures
        .iter()
        .filter_map(|s| b64.decode(&s.sig).ok())
        .find_map(|sig| keys.iter().find(|k| k.verifies(&message, &sig)))
        .ok_or_else(|| "model signed by an untrusted key".to_string())?;
    // Only what the signature covers is read from here on.
    let statement: Statement = serde_json::from_slice(&payload)
        .map_err(|e| unreadable(&format!("not a statement ({e})")))?;
    if statement.kind != "https://in-toto.io/Statement/v1"
        || statement.predicate_type != PREDICATE_V1
    {
        return Err(unreadable("not a model-signing v1.0 statement"));
    }
    let serialization = &statement.predicate.serialization;
    if serialization.method != "files" || serialization.hash_type != "sha256" {
        return Err(unreadable(&format!(
            "serialization {} with {} (files with sha256 are read)",
            serialization.method, serialization.hash_type
        )));
    }
    let mut files = BTreeMap::new();
    let mut all = Sha256::new();
    for r in &statement.predicate.resources {
        let digest = digest_hex(&r.digest)
            .filter(|_| r.algorithm == "sha256")
            .ok_or_else(|| unreadable(&format!("the digest of {}", r.name)))?;
        sluice_common::paths::validate_object_path(&r.name)
            .map_err(|e| unreadable(&format!("the file name {:?} ({e})", r.name)))?;
        if files.insert(r.name.clone(), digest).is_some() {
            return Err(unreadable(&format!("{} listed twice", r.name)));
        }
        all.update(digest);
    }
    let subject = statement
        .subject
        .first()
        .and_then(|s| s.digest.get("sha256"))
        .and_then(|d| digest_hex(d));
    if subject != Some(all.finalize().into()) {
        return Err(unreadable("the subject digest is not the files' digests"));
    }
    Ok(Signed {
        signer: signer.name.clone(),
        name: statement
            .subject
            .first()
            .map(|s| s.name.clone())
            .unwrap_or_default(),
        files,
        ignore_paths: serialization.ignore_paths.clone(),
    })
}

/// A bundle signing the model directory whose files are `files` (path → SHA-256), named
/// `model_name`, with the P-256 private key `pem` (PKCS#8), as `model-signing sign key`
/// writes it (verifiable by `model_signing verify key`). `ignore_paths` are recorded as
/// left out.
pub fn sign(
    files: &BTreeMap<String, [u8; 32]>,
    model_name: &str,
    pem: &str,
    ignore_paths: &[String],
) -> Result<Vec<u8>, String> {
    use p256::ecdsa::signature::Signer;
    use p256::pkcs8::{DecodePrivateKey, EncodePublicKey};
    let key = p256::ecdsa::SigningKey::from_pkcs8_pem(pem)
        .map_err(|_| "not a PEM (PKCS#8) private key of curve P-256".to_string())?;
    let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut all = Sha256::new();
    let mut resources = Vec::new();
    for (name, digest) in files {
        all.update(digest);
        resources
            .push(serde_json::json!({"digest": hex(digest), "algorithm": "sha256", "name": name}));
    }
    let statement = serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": model_name, "digest": {"sha256": hex(&all.finalize())}}],
        "predicateType": PREDICATE_V1,
        "predicate": {
            "serialization": {"hash_type": "sha256", "allow_symlinks": false,
                "ignore_paths": ignore_paths, "method": "files"},
            "resources": resources,
        },
    });
    let payload = serde_json::to_vec(&statement).map_err(|e| e.to_string())?;
    let sig: p256::ecdsa::DerSignature = key.sign(&pae(IN_TOTO, &payload));
    // The hint model-signing checks: SHA-256 of the public key's PEM text.
    let public = key
        .verifying_key()
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .map_err(|e| e.to_string())?;
    let b64 = base64::engine::general_purpose::STANDARD;
    serde_json::to_vec(&serde_json::json!({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": hex(&Sha256::digest(public.as_bytes()))},
            "tlogEntries": []},
        "dsseEnvelope": {"payload": b64.encode(&payload), "payloadType": IN_TOTO,
            "signatures": [{"sig": b64.encode(sig.as_bytes()), "keyid": ""}]},
    }))
    .map_err(|e| e.to_string())
}

/// Holds a model directory's files (`present`: path in the directory → SHA-256) to what was
/// signed. The signature file (`bundle_name`) and the ignored paths are left out. Errors:
/// `model file changed since signing: x`, `model file missing since signing: x`, `model file
/// not signed: x`.
pub fn check_files(
    signed: &Signed,
    present: &BTreeMap<String, [u8; 32]>,
    bundle_name: &str,
) -> Result<(), String> {
    let ignored = |path: &str| path == bundle_name || signed.ignores(path);
    for (path, digest) in present {
        if ignored(path) {
            continue;
        }
        match signed.files.get(path) {
            Some(d) if d == digest => {}
            Some(_) => return Err(format!("model file changed since signing: {path}")),
            None => return Err(format!("model file not signed: {path}")),
        }
    }
    if let Some(path) = signed.files.keys().find(|p| !present.contains_key(*p)) {
        return Err(format!("{MISSING}: {path}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::EncodePublicKey;

    fn key(seed: u8) -> (p256::ecdsa::SigningKey, TrustedKey) {
        let signing = p256::ecdsa::SigningKey::from_bytes(&[seed; 32].into()).unwrap();
        let pem = signing
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        let trusted = TrustedKey::from_pem(&format!("key{seed}"), &pem).unwrap();
        (signing, trusted)
    }

    fn bundle(signing: &p256::ecdsa::SigningKey, files: &[(&str, &[u8])]) -> Vec<u8> {
        use p256::pkcs8::EncodePrivateKey;
        let pem = signing.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap();
        sign(&present(files), "model", &pem, &[".git".to_string()]).unwrap()
    }

    fn present(files: &[(&str, &[u8])]) -> BTreeMap<String, [u8; 32]> {
        files
            .iter()
            .map(|(n, d)| (n.to_string(), Sha256::digest(d).into()))
            .collect()
    }

    #[test]
    fn a_model_signed_by_a_trusted_key_passes_only_as_signed() {
        let (signing, trusted) = key(7);
        let (_, other) = key(9);
        let files: &[(&str, &[u8])] = &[("config.json", b"{}"), ("w.safetensors", b"weights")];
        let b = bundle(&signing, files);
        let signed = verify(&b, &[other.clone(), trusted.clone()]).unwrap();
        assert_eq!(signed.signer, "key7");
        let mut with_sig = present(files);
        with_sig.insert("model.sig".into(), [0; 32]);
        with_sig.insert(".git/HEAD".into(), [1; 32]);
        assert_eq!(check_files(&signed, &with_sig, "model.sig"), Ok(()));
        assert_eq!(
            verify(&b, &[other]).unwrap_err(),
            "model signed by an untrusted key"
        );
        let changed = present(&[("config.json", b"{}"), ("w.safetensors", b"other")]);
        assert_eq!(
            check_files(&signed, &changed, "model.sig").unwrap_err(),
            "model file changed since signing: w.safetensors"
        );
        let extra = present(&[
            ("config.json", b"{}"),
            ("w.safetensors", b"weights"),
            ("x.py", b""),
        ]);
        assert_eq!(
            check_files(&signed, &extra, "model.sig").unwrap_err(),
            "model file not signed: x.py"
        );
        let missing = present(&[("config.json", b"{}")]);
        assert_eq!(
            check_files(&signed, &missing, "model.sig").unwrap_err(),
            "model file missing since signing: w.safetensors"
        );
        // A statement altered after signing is not the signed one.
        let mut tampered = b.clone();
        let at = tampered.windows(7).position(|w| w == b"payload").unwrap() + 12;
        tampered[at] ^= 1;
        assert!(verify(&tampered, &[trusted]).is_err());
        assert!(verify(b"{}", &[])
            .unwrap_err()
            .starts_with("model signature unreadable"));
    }
}
