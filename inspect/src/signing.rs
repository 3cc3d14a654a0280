//! Signed models, verified offline: the OpenSSF model-signing format (v1.0, what the
//! `model-signing` package writes). A model directory is signed as a whole — every file's
//! SHA-256 in one in-toto statement — in a Sigstore bundle whose DSSE envelope carries the
//! signature; this checks the "key" method (ECDSA P-256 or P-384 public keys, PEM) and the
//! "certificate" method (the bundle carries the signing certificate and its chain, which must
//! lead to a trusted CA; see [`TrustedKey::from_ca_pem`]).
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

/// Most certificates a bundle's chain is read with (leaf and intermediates).
const MAX_CHAIN: usize = 8;
/// Largest certificate read (DER); real ones are 0.5–2 KiB.
const MAX_CERTIFICATE: usize = 64 << 10;
/// Most signatures a bundle may carry (the reference tool writes and reads one).
const MAX_SIGNATURES: usize = 4;
/// id-kp-codeSigning (1.3.6.1.5.5.7.3.3), DER contents.
const CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];

/// What models may be signed with — a public key, or a CA whose certificates' keys sign —
/// and the name it is known by (for the audit log).
#[derive(Debug, Clone)]
pub struct TrustedKey {
    pub name: String,
    key: Key,
}

#[derive(Debug, Clone)]
enum Key {
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    /// Every certificate of a CA file, each a trust anchor (as the reference tool puts each
    /// one in its store).
    Ca(Vec<rustls_pki_types::TrustAnchor<'static>>),
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

    /// A CA file (PEM, one or more certificates: a root and perhaps intermediates, each
    /// trusted), named `name`: a model signed with a certificate that chains to one of them
    /// is signed by that certificate's subject.
    pub fn from_ca_pem(name: &str, pem: &str) -> Result<TrustedKey, String> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::CertificateDer;
        let mut anchors = Vec::new();
        for (i, cert) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
            use x509_cert::der::Decode;
            let which = |why: String| format!("{name}: certificate {}: {why}", i + 1);
            let cert = cert.map_err(|e| which(e.to_string()))?;
            let parsed =
                x509_cert::Certificate::from_der(&cert).map_err(|e| which(e.to_string()))?;
            let is_ca = parsed
                .tbs_certificate
                .get::<x509_cert::ext::pkix::BasicConstraints>()
                .is_ok_and(|c| c.is_some_and(|(_, c)| c.ca));
            if !is_ca {
                return Err(which(
                    "not a CA certificate (basic constraints without cA)".into(),
                ));
            }
            let anchor =
                webpki::anchor_from_trusted_cert(&cert).map_err(|e| which(error_name(&e)))?;
            anchors.push(anchor.to_owned());
        }
        if anchors.is_empty() {
            return Err(format!("{name}: no PEM certificate in it"));
        }
        Ok(TrustedKey {
            name: name.to_string(),
            key: Key::Ca(anchors),
        })
    }

    /// Whether `sig` (DER) is this key's ECDSA signature of `message` (the curve's hash).
    /// A CA verifies nothing by itself: see [`certified_key`].
    fn verifies(&self, message: &[u8], sig: &[u8]) -> bool {
        use p256::ecdsa::signature::Verifier;
        match &self.key {
            Key::P256(k) => p256::ecdsa::DerSignature::from_bytes(sig)
                .is_ok_and(|s| k.verify(message, &s).is_ok()),
            Key::P384(k) => p384::ecdsa::DerSignature::from_bytes(sig)
                .is_ok_and(|s| k.verify(message, &s).is_ok()),
            Key::Ca(_) => false,
        }
    }
}

/// The key of the signing certificate `chain[0]` (the rest: intermediates) if the chain
/// leads to `ca`, named `SUBJECT (CA file)`, and the subject; or why not, naming the subject. As the reference
/// tool checks it — the chain valid at the certificate's start (a bundle carries no trusted
/// time) — and stricter: every certificate of the chain that lists extended key usages must
/// list code signing, the signing certificate must list it, and its key usages, if listed,
/// must allow digital signatures (the CA's TLS, VPN or mail certificates sign no model).
/// Checked once per CA, whatever the number of signatures.
fn certified_key(
    ca: &TrustedKey,
    chain: &[rustls_pki_types::CertificateDer<'_>],
) -> Result<(TrustedKey, String), String> {
    use x509_cert::der::{Decode, Encode};
    use x509_cert::ext::pkix::{ExtendedKeyUsage, KeyUsage};
    let Key::Ca(anchors) = &ca.key else {
        return Err("not a CA".into());
    };
    let (leaf_der, intermediates) = chain.split_first().ok_or("no certificate")?;
    let leaf = x509_cert::Certificate::from_der(leaf_der)
        .map_err(|e| format!("the signing certificate is unreadable ({e})"))?;
    let tbs = &leaf.tbs_certificate;
    let subject = shown(&tbs.subject.to_string());
    let start = tbs.validity.not_before.to_unix_duration();
    let ee = webpki::EndEntityCert::try_from(leaf_der)
        .map_err(|e| format!("{subject}: unreadable ({})", error_name(&e)))?;
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        anchors,
        intermediates,
        rustls_pki_types::UnixTime::since_unix_epoch(start),
        // On every certificate of the chain that lists them (a CA usually does not).
        webpki::KeyUsage::required_if_present(CODE_SIGNING),
        None,
        None,
    )
    .map_err(|e| match e {
        webpki::Error::RequiredEkuNotFoundContext(_) => {
            format!("{subject}: not a certificate for code signing (its extended key usages)")
        }
        e => format!(
            "{subject}: no valid chain to {} ({})",
            ca.name,
            error_name(&e)
        ),
    })?;
    // The signing certificate itself must list code signing.
    let code_signing = tbs.get::<ExtendedKeyUsage>().is_ok_and(|eku| {
        eku.is_some_and(|(_, eku)| eku.0.iter().any(|oid| oid.as_bytes() == CODE_SIGNING))
    });
    if !code_signing {
        return Err(format!(
            "{subject}: not a certificate for code signing (its extended key usages)"
        ));
    }
    match tbs.get::<KeyUsage>() {
        Ok(None) => {}
        Ok(Some((_, usage))) if usage.digital_signature() => {}
        _ => return Err(format!("{subject}: not a certificate for signing")),
    }
    let spki = tbs
        .subject_public_key_info
        .to_der()
        .map_err(|e| format!("{subject}: {e}"))?;
    let key = {
        use p256::pkcs8::DecodePublicKey;
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(&spki) {
            Key::P256(k)
        } else if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_der(&spki) {
            Key::P384(k)
        } else {
            return Err(format!("{subject}: not a P-256 or P-384 key"));
        }
    };
    let key = TrustedKey {
        name: format!("{subject} ({})", ca.name),
        key,
    };
    Ok((key, subject))
}

/// A certificate's subject as messages show it: escaped, at most 256 bytes (the subject is
/// chosen by whoever made the certificate, trusted or not).
fn shown(subject: &str) -> String {
    crate::report::clip(subject, 256)
}

/// A webpki error's name, without the context it carries (parts of the certificate).
fn error_name(e: &webpki::Error) -> String {
    let text = format!("{e:?}");
    let name = text.split(['(', '{', ' ']).next().unwrap_or_default();
    name.chars().take(64).collect()
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
    #[serde(default)]
    verification_material: Material,
    dsse_envelope: Envelope,
}

/// The certificates a bundle carries (the certificate method): a chain (what the reference
/// tool writes) or a lone certificate.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Material {
    x509_certificate_chain: Option<CertificateChain>,
    certificate: Option<RawCertificate>,
}

#[derive(Deserialize)]
struct CertificateChain {
    certificates: Vec<RawCertificate>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCertificate {
    raw_bytes: String,
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
    let material = bundle.verification_material;
    let raw: Vec<RawCertificate> = match (material.x509_certificate_chain, material.certificate) {
        (Some(chain), _) => chain.certificates,
        (None, Some(leaf)) => vec![leaf],
        (None, None) => Vec::new(),
    };
    if raw.len() > MAX_CHAIN {
        return Err(unreadable(&format!("more than {MAX_CHAIN} certificates")));
    }
    if envelope.signatures.len() > MAX_SIGNATURES {
        return Err(unreadable(&format!(
            "more than {MAX_SIGNATURES} signatures"
        )));
    }
    let mut chain = Vec::with_capacity(raw.len());
    for c in &raw {
        let der = b64
            .decode(&c.raw_bytes)
            .map_err(|_| unreadable("a certificate is not base64"))?;
        if der.len() > MAX_CERTIFICATE {
            return Err(unreadable("a certificate larger than 64 KiB"));
        }
        chain.push(rustls_pki_types::CertificateDer::from(der));
    }
    let signatures: Vec<Vec<u8>> = envelope
        .signatures
        .iter()
        .filter_map(|s| b64.decode(&s.sig).ok())
        .collect();
    let signer = if chain.is_empty() {
        signatures
            .iter()
            .find_map(|sig| keys.iter().find(|k| k.verifies(&message, sig)))
            .map(|k| k.name.clone())
            .ok_or_else(|| "model signed by an untrusted key".to_string())?
    } else {
        let cas: Vec<&TrustedKey> = keys
            .iter()
            .filter(|k| matches!(k.key, Key::Ca(_)))
            .collect();
        // Why the last CA refused, for the refusal.
        let mut why = if cas.is_empty() {
            "no CA is trusted for this model"
        } else {
            "no signature"
        }
        .to_string();
        let mut found = None;
        for ca in &cas {
            match certified_key(ca, &chain) {
                Ok((leaf, _)) if signatures.iter().any(|sig| leaf.verifies(&message, sig)) => {
                    found = Some(leaf.name);
                    break;
                }
                Ok((_, subject)) => why = format!("{subject}: the signature is not its key's"),
                Err(e) => why = e,
            }
        }
        found.ok_or_else(|| format!("model signed by an untrusted certificate: {why}"))?
    };
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
        signer,
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

/// A bundle [`sign`] wrote with the private key `key_pem`, made a certificate-method bundle:
/// it carries `chain_pem` — the key's certificate, then its intermediates — as
/// `model-signing sign certificate` writes it (verifiable by `model_signing verify
/// certificate` and by a receiver trusting the root in `[signing] certificates`). The
/// signature is unchanged: it covers the statement only.
pub fn with_certificates(bundle: &[u8], key_pem: &str, chain_pem: &str) -> Result<Vec<u8>, String> {
    use p256::pkcs8::{DecodePrivateKey, DecodePublicKey};
    use rustls_pki_types::pem::PemObject;
    use x509_cert::der::{Decode, Encode};
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates ({e})"))?;
    let leaf = chain.first().ok_or("no PEM certificate in it")?;
    if chain.len() > MAX_CHAIN {
        return Err(format!("more than {MAX_CHAIN} certificates"));
    }
    let spki = x509_cert::Certificate::from_der(leaf)
        .and_then(|c| c.tbs_certificate.subject_public_key_info.to_der())
        .map_err(|e| format!("the first certificate is unreadable ({e})"))?;
    let key = p256::ecdsa::SigningKey::from_pkcs8_pem(key_pem)
        .map_err(|_| "not a PEM (PKCS#8) private key of curve P-256".to_string())?;
    if p256::ecdsa::VerifyingKey::from_public_key_der(&spki).ok() != Some(*key.verifying_key()) {
        return Err("the first certificate is not the signing key's".into());
    }
    with_chain(bundle, &chain)
}

/// `bundle` carrying `chain` as its verification material, as the reference tool writes it.
fn with_chain(
    bundle: &[u8],
    chain: &[rustls_pki_types::CertificateDer<'_>],
) -> Result<Vec<u8>, String> {
    let mut json: serde_json::Value =
        serde_json::from_slice(bundle).map_err(|e| format!("not a bundle ({e})"))?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let certificates: Vec<_> = chain
        .iter()
        .map(|c| serde_json::json!({ "rawBytes": b64.encode(c.as_ref()) }))
        .collect();
    json["verificationMaterial"] = serde_json::json!({
        "x509CertificateChain": { "certificates": certificates }, "tlogEntries": [] });
    serde_json::to_vec(&json).map_err(|e| e.to_string())
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

    /// A CA (self-signed, or issued by `by`) and its PEM; CAs may sign certificates only.
    fn ca(
        name: &str,
        by: Option<&rcgen::CertifiedIssuer<'static, rcgen::KeyPair>>,
    ) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let key = rcgen::KeyPair::generate().unwrap();
        match by {
            None => rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
            Some(issuer) => rcgen::CertifiedIssuer::signed_by(params, key, issuer).unwrap(),
        }
    }

    /// A signing certificate named `name` with these usages, issued by `issuer`, and its key.
    fn leaf(
        name: &str,
        issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
        usages: Vec<rcgen::KeyUsagePurpose>,
        extended: Vec<rcgen::ExtendedKeyUsagePurpose>,
    ) -> (rcgen::Certificate, rcgen::KeyPair) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.key_usages = usages;
        params.extended_key_usages = extended;
        let key = rcgen::KeyPair::generate().unwrap();
        (params.signed_by(&key, issuer).unwrap(), key)
    }

    /// A bundle of `files` signed with `key`, carrying `chain` as the reference tool's
    /// certificate method writes it (the chain's first certificate need not be `key`'s).
    fn certificate_bundle(
        key: &rcgen::KeyPair,
        chain: &[&rustls_pki_types::CertificateDer<'_>],
        files: &[(&str, &[u8])],
    ) -> Vec<u8> {
        let signed = sign(&present(files), "model", &key.serialize_pem(), &[]).unwrap();
        let chain: Vec<_> = chain.iter().map(|c| (*c).clone()).collect();
        with_chain(&signed, &chain).unwrap()
    }

    #[test]
    fn a_certificate_signs_a_model_only_if_it_chains_to_a_trusted_ca_and_may_sign() {
        use rcgen::{ExtendedKeyUsagePurpose as Eku, KeyUsagePurpose as Ku};
        let root = ca("Example Root", None);
        let intermediate = ca("Example Models CA", Some(&root));
        let other_root = ca("Other Root", None);
        let trusted = TrustedKey::from_ca_pem("root.pem", &root.pem()).unwrap();
        let only = std::slice::from_ref(&trusted);
        let other = TrustedKey::from_ca_pem("other.pem", &other_root.pem()).unwrap();
        let files: &[(&str, &[u8])] = &[("w.safetensors", b"weights")];
        let code_signing = |name: &str| {
            leaf(
                name,
                &intermediate,
                vec![Ku::DigitalSignature],
                vec![Eku::CodeSigning],
            )
        };
        let (cert, cert_key) = code_signing("ml-team");
        let good = certificate_bundle(&cert_key, &[cert.der(), intermediate.der()], files);
        let signed = verify(&good, &[other.clone(), trusted.clone()]).unwrap();
        assert_eq!(signed.signer, "CN=ml-team (root.pem)");
        assert_eq!(check_files(&signed, &present(files), "model.sig"), Ok(()));
        // What `with_certificates` writes is the same, and refuses a certificate of another
        // key.
        let by_key = sign(&present(files), "model", &cert_key.serialize_pem(), &[]).unwrap();
        let chain_pem = cert.pem() + &intermediate.pem();
        let made = with_certificates(&by_key, &cert_key.serialize_pem(), &chain_pem).unwrap();
        assert_eq!(verify(&made, only), Ok(signed.clone()));
        let stranger_pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
        assert_eq!(
            with_certificates(&by_key, &stranger_pem, &chain_pem).unwrap_err(),
            "the first certificate is not the signing key's"
        );

        let refused = |bundle: &[u8], trust: &[TrustedKey]| verify(bundle, trust).unwrap_err();
        let untrusted = "model signed by an untrusted certificate: ";
        let e = refused(&good, std::slice::from_ref(&other));
        assert_eq!(
            e,
            format!("{untrusted}CN=ml-team: no valid chain to other.pem (UnknownIssuer)")
        );
        // A trusted CA's certificate does not stand in for a key, nor a key for a CA.
        let (_, plain) = key(7);
        assert_eq!(
            refused(&good, std::slice::from_ref(&plain)),
            format!("{untrusted}no CA is trusted for this model")
        );
        // The intermediate left out of the chain: no path to the root.
        let e = refused(&certificate_bundle(&cert_key, &[cert.der()], files), only);
        assert_eq!(
            e,
            format!("{untrusted}CN=ml-team: no valid chain to root.pem (UnknownIssuer)")
        );
        // Signed with another key than the certificate's.
        let stranger = rcgen::KeyPair::generate().unwrap();
        let e = refused(
            &certificate_bundle(&stranger, &[cert.der(), intermediate.der()], files),
            only,
        );
        assert_eq!(
            e,
            format!("{untrusted}CN=ml-team: the signature is not its key's")
        );
        // The CA's other certificates: a TLS server's, one with no extended key usage (a
        // device or VPN certificate), one for encryption only.
        let usages = [
            ("gw", vec![Ku::DigitalSignature], vec![Eku::ServerAuth]),
            ("device", vec![Ku::DigitalSignature], vec![]),
            ("enc", vec![Ku::KeyEncipherment], vec![Eku::CodeSigning]),
        ];
        for (name, ku, eku) in usages {
            let (c, k) = leaf(name, &intermediate, ku, eku);
            let e = refused(
                &certificate_bundle(&k, &[c.der(), intermediate.der()], files),
                only,
            );
            let why = if name == "enc" {
                "not a certificate for signing"
            } else {
                "not a certificate for code signing (its extended key usages)"
            };
            assert_eq!(e, format!("{untrusted}CN={name}: {why}"));
        }
        // A code-signing certificate without key usages passes, as in the reference tool;
        // and one issued by the root itself, carried as the bundle's lone `certificate`.
        let (code, code_key) = leaf("builder", &intermediate, vec![], vec![Eku::CodeSigning]);
        let b = certificate_bundle(&code_key, &[code.der(), intermediate.der()], files);
        assert_eq!(verify(&b, only).unwrap().signer, "CN=builder (root.pem)");
        let (direct, direct_key) = leaf(
            "direct",
            &root,
            vec![Ku::DigitalSignature],
            vec![Eku::CodeSigning],
        );
        let mut lone: serde_json::Value =
            serde_json::from_slice(&certificate_bundle(&direct_key, &[direct.der()], files))
                .unwrap();
        let raw = lone["verificationMaterial"]["x509CertificateChain"]["certificates"][0].clone();
        lone["verificationMaterial"] = serde_json::json!({ "certificate": raw });
        let lone = serde_json::to_vec(&lone).unwrap();
        assert_eq!(verify(&lone, only).unwrap().signer, "CN=direct (root.pem)");
        // A signing certificate cannot issue another one.
        let (fake, fake_key) = {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "fake");
            params.key_usages = vec![Ku::DigitalSignature];
            params.extended_key_usages = vec![Eku::CodeSigning];
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name
                .push(rcgen::DnType::CommonName, "ml-team");
            let issuer = rcgen::Issuer::new(p, cert_key);
            let fake_key = rcgen::KeyPair::generate().unwrap();
            (params.signed_by(&fake_key, &issuer).unwrap(), fake_key)
        };
        let e = refused(
            &certificate_bundle(
                &fake_key,
                &[fake.der(), cert.der(), intermediate.der()],
                files,
            ),
            only,
        );
        assert_eq!(
            e,
            format!("{untrusted}CN=fake: no valid chain to root.pem (EndEntityUsedAsCa)")
        );
        // Validity is checked when the certificate began, as the reference tool does (a
        // bundle carries no trusted time): a certificate since expired still verifies; one
        // issued by an intermediate already expired then does not.
        let dated = |name: &str, from: i32, to: i32, is_ca: bool| {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = rcgen::date_time_ymd(to, 1, 1);
            if is_ca {
                params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
                params.key_usages = vec![Ku::KeyCertSign];
            } else {
                params.key_usages = vec![Ku::DigitalSignature];
                params.extended_key_usages = vec![Eku::CodeSigning];
            }
            params
        };
        let old_key = rcgen::KeyPair::generate().unwrap();
        let old = dated("2019-release", 2019, 2020, false)
            .signed_by(&old_key, &intermediate)
            .unwrap();
        let b = certificate_bundle(&old_key, &[old.der(), intermediate.der()], files);
        assert_eq!(
            verify(&b, only).unwrap().signer,
            "CN=2019-release (root.pem)"
        );
        let lapsed = rcgen::CertifiedIssuer::signed_by(
            dated("Lapsed CA", 2010, 2012, true),
            rcgen::KeyPair::generate().unwrap(),
            &root,
        )
        .unwrap();
        let late_key = rcgen::KeyPair::generate().unwrap();
        let late = dated("late", 2019, 2030, false)
            .signed_by(&late_key, &lapsed)
            .unwrap();
        let e = refused(
            &certificate_bundle(&late_key, &[late.der(), lapsed.der()], files),
            only,
        );
        assert_eq!(
            e,
            format!("{untrusted}CN=late: no valid chain to root.pem (CertExpired)")
        );
        // A CA file holds CAs only, and a file without a certificate is refused.
        assert!(TrustedKey::from_ca_pem("leaf.pem", &cert.pem())
            .unwrap_err()
            .contains("leaf.pem: certificate 1: not a CA certificate"));
        assert!(TrustedKey::from_ca_pem("x.pem", "junk")
            .unwrap_err()
            .contains("no PEM certificate"));
    }

    #[test]
    fn bundles_are_bounded_before_any_certificate_or_signature_is_checked() {
        use rcgen::{ExtendedKeyUsagePurpose as Eku, KeyUsagePurpose as Ku};
        let root = ca("Example Root", None);
        let trusted = TrustedKey::from_ca_pem("root.pem", &root.pem()).unwrap();
        let only = std::slice::from_ref(&trusted);
        let files: &[(&str, &[u8])] = &[("w.safetensors", b"weights")];
        let (cert, key) = leaf(
            "ml-team",
            &root,
            vec![Ku::DigitalSignature],
            vec![Eku::CodeSigning],
        );
        let good = certificate_bundle(&key, &[cert.der()], files);
        let unreadable = |why: &str| format!("model signature unreadable: {why}");
        // A chain too long.
        let long: Vec<_> = std::iter::repeat_n(cert.der(), 9).collect();
        assert_eq!(
            verify(&certificate_bundle(&key, &long, files), only).unwrap_err(),
            unreadable("more than 8 certificates")
        );
        // Signatures by the thousand (each would be tried).
        let mut many: serde_json::Value = serde_json::from_slice(&good).unwrap();
        let one = many["dsseEnvelope"]["signatures"][0].clone();
        many["dsseEnvelope"]["signatures"] = serde_json::Value::Array(vec![one; 5]);
        assert_eq!(
            verify(&serde_json::to_vec(&many).unwrap(), only).unwrap_err(),
            unreadable("more than 4 signatures")
        );
        // A certificate over 64 KiB, and a subject chosen to flood the refusal: it is shown
        // escaped and cut at 256 bytes.
        let named = |cn: String| {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            params.key_usages = vec![Ku::DigitalSignature];
            params.extended_key_usages = vec![Eku::CodeSigning];
            let key = rcgen::KeyPair::generate().unwrap();
            let stranger = ca("Stranger CA", None);
            (params.signed_by(&key, &stranger).unwrap(), key)
        };
        let (huge, huge_key) = named("x".repeat(70_000));
        assert_eq!(
            verify(&certificate_bundle(&huge_key, &[huge.der()], files), only).unwrap_err(),
            unreadable("a certificate larger than 64 KiB")
        );
        let (loud, loud_key) = named("\u{202e}line\n".repeat(4000));
        let e = verify(&certificate_bundle(&loud_key, &[loud.der()], files), only).unwrap_err();
        assert!(
            e.len() < 512 && e.contains('…') && !e.contains('\n') && !e.contains('\u{202e}'),
            "{e}"
        );
    }
}
