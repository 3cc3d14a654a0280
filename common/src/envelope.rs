//! What makes bytes fit to cross the link, and how the receiver opens them again: age
//! encryption of segments to the receivers' keys, and the manifest envelope, signed with the
//! sender's minisign key and then encrypted.
//!
//! ```text
//!  data block     = age( segment plaintext )
//!  manifest block = age( postcard(SignedManifest { manifest: postcard(Manifest), signature }) )
//! ```
//!
//! The sender, the receiver and the tests' frame producer all seal and open through here, so
//! there is one definition of the envelope.

use std::io::{BufRead, Read, Write};

use sluice_protocol::manifest::{
    Manifest, ManifestError, SignedManifest, MAX_ENCODED_LEN, MAX_SIGNATURE_LEN,
};

use crate::keys::{KeyError, KeyId, SignatureError, SigningKey, TrustedKeys};

/// Why something could not be sealed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// age refused to encrypt (no recipient, or an I/O error into memory).
    #[error("age: {0}")]
    Encrypt(String),
    /// The manifest breaks a limit.
    #[error("manifest: {0:?}")]
    Manifest(ManifestError),
    /// The signing key failed.
    #[error("signing: {0}")]
    Sign(#[from] KeyError),
}

/// Why a manifest envelope was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// No identity opens it (age's reason).
    #[error("{0}")]
    Undecryptable(String),
    /// The envelope or the manifest inside does not decode, or breaks a limit.
    #[error("{0}")]
    Malformed(String),
    /// Signed by a key not trusted.
    #[error("signed by untrusted key {0}")]
    Untrusted(KeyId),
    /// The signature is malformed or does not verify.
    #[error("{0}")]
    BadSignature(SignatureError),
}

/// A verified manifest, the envelope it came in (kept to resume after a restart) and its signer.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The manifest.
    pub manifest: Manifest,
    /// The decrypted `SignedManifest` bytes.
    pub envelope: Vec<u8>,
    /// The trusted key that signed it.
    pub signer: KeyId,
}

/// An age file of `plaintext` for every recipient.
pub fn encrypt(
    plaintext: &[u8],
    recipients: &[age::x25519::Recipient],
) -> Result<Vec<u8>, SealError> {
    let fail = |e: &dyn std::fmt::Display| SealError::Encrypt(e.to_string());
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| fail(&e))?;
    // age adds a header (~200 bytes per recipient) and 16 bytes per 64 KiB chunk.
    let mut ciphertext =
        Vec::with_capacity(plaintext.len() + plaintext.len() / 4096 + 256 * recipients.len() + 256);
    let mut writer = encryptor
        .wrap_output(&mut ciphertext)
        .map_err(|e| fail(&e))?;
    writer.write_all(plaintext).map_err(|e| fail(&e))?;
    writer.finish().map_err(|e| fail(&e))?;
    Ok(ciphertext)
}

/// A reader of the plaintext of the age file `ciphertext`, for the first identity that opens
/// it. Reading fails on any byte that does not authenticate; nothing after the age file's
/// last chunk is read.
pub fn decrypt<'a, R: BufRead + 'a>(
    ciphertext: R,
    identities: &[age::x25519::Identity],
) -> Result<impl Read + 'a, age::DecryptError> {
    let decryptor = age::Decryptor::new_buffered(ciphertext)?;
    decryptor.decrypt(identities.iter().map(|i| i as &dyn age::Identity))
}

/// Signs `manifest` with `signer` and encrypts the envelope to `recipients`.
pub fn seal_manifest(
    manifest: &Manifest,
    signer: &SigningKey,
    recipients: &[age::x25519::Recipient],
) -> Result<Vec<u8>, SealError> {
    let manifest = manifest.to_bytes().map_err(SealError::Manifest)?;
    let signature = signer.sign(&manifest)?.into_bytes();
    let envelope = SignedManifest {
        manifest,
        signature,
    }
    .to_bytes()
    .map_err(SealError::Manifest)?;
    encrypt(&envelope, recipients)
}

/// Decrypts a manifest block and verifies what it holds.
pub fn open_manifest(
    ciphertext: &[u8],
    identities: &[age::x25519::Identity],
    trusted: &TrustedKeys,
) -> Result<Opened, OpenError> {
    let undecryptable = |e: &dyn std::fmt::Display| OpenError::Undecryptable(e.to_string());
    let reader = decrypt(ciphertext, identities).map_err(|e| undecryptable(&e))?;
    // Bounded: a signed envelope is never longer than this.
    let limit = (MAX_ENCODED_LEN + MAX_SIGNATURE_LEN + 64) as u64;
    let mut envelope = Vec::new();
    reader
        .take(limit)
        .read_to_end(&mut envelope)
        .map_err(|e| undecryptable(&e))?;
    let (manifest, signer) = verify_envelope(&envelope, trusted)?;
    Ok(Opened {
        manifest,
        envelope,
        signer,
    })
}

/// Checks a decrypted envelope: a signature by a trusted key over a well-formed manifest.
pub fn verify_envelope(
    envelope: &[u8],
    trusted: &TrustedKeys,
) -> Result<(Manifest, KeyId), OpenError> {
    let signed =
        SignedManifest::from_bytes(envelope).map_err(|e| OpenError::Malformed(format!("{e:?}")))?;
    let signer = trusted
        .verify(&signed.manifest, &signed.signature)
        .map_err(|e| match e {
            SignatureError::Untrusted(id) => OpenError::Untrusted(id),
            other => OpenError::BadSignature(other),
        })?;
    let manifest = Manifest::from_bytes(&signed.manifest)
        .map_err(|e| OpenError::Malformed(format!("{e:?}")))?;
    Ok((manifest, signer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;
    use sluice_protocol::manifest::{EntryKind, MANIFEST_VERSION};
    use sluice_protocol::wire::{ObjectId, SessionId};

    fn manifest() -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            session: SessionId(1),
            object: ObjectId(2),
            sequence: 1,
            path: "a/b".into(),
            kind: EntryKind::File,
            size: 0,
            mode: 0o644,
            mtime_secs: 0,
            mtime_nanos: 0,
            segment_size: 0,
            sha256: [0; 32],
            segments: Vec::new(),
        }
    }

    #[test]
    fn sealed_manifests_open_only_for_the_right_keys() {
        let dir = tempfile::tempdir().unwrap();
        keys::generate_receiver_keys(dir.path()).unwrap();
        keys::generate_sender_keys(dir.path()).unwrap();
        let recipients = keys::load_recipients(&dir.path().join(keys::RECEIVER_PUB)).unwrap();
        let identities = keys::load_identities(&dir.path().join(keys::RECEIVER_KEY)).unwrap();
        let signer = SigningKey::load(&dir.path().join(keys::SENDER_KEY)).unwrap();
        let trusted = TrustedKeys::load(&[dir.path().join(keys::SENDER_PUB)]).unwrap();

        let sealed = seal_manifest(&manifest(), &signer, &recipients).unwrap();
        let opened = open_manifest(&sealed, &identities, &trusted).unwrap();
        assert_eq!(opened.manifest, manifest());
        assert_eq!(opened.signer, signer.id());
        assert_eq!(
            verify_envelope(&opened.envelope, &trusted).unwrap().0,
            manifest()
        );

        let other = tempfile::tempdir().unwrap();
        keys::generate_receiver_keys(other.path()).unwrap();
        keys::generate_sender_keys(other.path()).unwrap();
        let stranger = keys::load_identities(&other.path().join(keys::RECEIVER_KEY)).unwrap();
        assert!(matches!(
            open_manifest(&sealed, &stranger, &trusted),
            Err(OpenError::Undecryptable(_))
        ));
        let untrusted = TrustedKeys::load(&[other.path().join(keys::SENDER_PUB)]).unwrap();
        assert!(matches!(
            open_manifest(&sealed, &identities, &untrusted),
            Err(OpenError::Untrusted(_))
        ));

        let mut segment = Vec::new();
        decrypt(&encrypt(b"segment", &recipients).unwrap()[..], &identities)
            .unwrap()
            .read_to_end(&mut segment)
            .unwrap();
        assert_eq!(segment, b"segment");
    }
}
