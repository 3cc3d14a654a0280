//! What makes bytes fit to cross the link, and how the receiver opens them again: age
//! encryption of segments to the receivers' keys, and the manifest envelope, signed with the
//! sender's minisign key and then encrypted.
//!
//! ```text
//!  data block     = age( segment plaintext )
//!  manifest block = age( postcard(SignedManifest { manifest: postcard(Manifest), signature,
//!                                                  inline: a pack's content }) )
//! ```
//!
//! The sender, the receiver and the tests' frame producer all seal and open through here, so
//! there is one definition of the envelope.

use std::io::{BufRead, Read, Write};

use sluice_protocol::manifest::{Manifest, ManifestError, SignedManifest, MAX_ENVELOPE_LEN};

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
    /// The decrypted `SignedManifest` bytes; empty when the content is inline (the object is
    /// complete with its manifest, so nothing is kept for a later run).
    pub envelope: Vec<u8>,
    /// The trusted key that signed it.
    pub signer: KeyId,
    /// The content of an inline manifest (a pack), `manifest.content_len()` bytes; empty
    /// otherwise. Not yet checked against the entries' SHA-256 (the receiver hashes it as it
    /// writes it out).
    pub inline: Vec<u8>,
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
    // age adds a header (~200 bytes per recipient) and 16 bytes per 64 KiB chunk; the sender
    // pads the last symbol in this buffer (`OutgoingBlock::encode_pass_owned`), so room for
    // one symbol more saves a reallocation that would double the buffer.
    let room = plaintext.len() / 4096 + 256 * recipients.len() + 256;
    let mut ciphertext = Vec::with_capacity(
        plaintext.len() + room + usize::from(sluice_protocol::fec::MAX_SYMBOL_SIZE),
    );
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

/// The MAC of an age file's header: the 32 bytes encoded after `---` (age v1 format). The
/// signed manifest binds each segment by it (SPEC.md section 8). `None` if `age_file` does not
/// start with a well-formed age v1 header.
pub fn header_mac(age_file: &[u8]) -> Option<[u8; 32]> {
    use base64::Engine;
    const VERSION_LINE: &[u8] = b"age-encryption.org/v1\n";
    const MAC_LINE: &[u8] = b"\n--- ";
    // 32 bytes in unpadded base64.
    const MAC_B64_LEN: usize = 43;
    if !age_file.starts_with(VERSION_LINE) {
        return None;
    }
    // Stanza lines start with "-> " or are base64 bodies: the first "\n--- " is the MAC line.
    // age headers are short; a header past 64 KiB is not one this sender made.
    let head = &age_file[..age_file.len().min(64 << 10)];
    let at = head.windows(MAC_LINE.len()).position(|w| w == MAC_LINE)? + MAC_LINE.len();
    let encoded = head.get(at..at + MAC_B64_LEN)?;
    if head.get(at + MAC_B64_LEN) != Some(&b'\n') {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(encoded)
        .ok()?;
    decoded.try_into().ok()
}

/// Signs `manifest` with `signer` and encrypts the envelope, with a pack's `inline` content,
/// to `recipients`.
pub fn seal_manifest(
    manifest: &Manifest,
    inline: &[u8],
    signer: &SigningKey,
    recipients: &[age::x25519::Recipient],
) -> Result<Vec<u8>, SealError> {
    let manifest = manifest.to_bytes().map_err(SealError::Manifest)?;
    let signature = signer.sign(&manifest)?.into_bytes();
    let envelope = SignedManifest {
        manifest,
        signature,
        inline: inline.to_vec(),
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
    let limit = MAX_ENVELOPE_LEN as u64 + 1;
    let mut envelope = Vec::new();
    reader
        .take(limit)
        .read_to_end(&mut envelope)
        .map_err(|e| undecryptable(&e))?;
    let (manifest, signer, inline) = verify_envelope(&envelope, trusted)?;
    if manifest.is_inline() {
        envelope = Vec::new();
    }
    Ok(Opened {
        manifest,
        envelope,
        signer,
        inline,
    })
}

/// Checks a decrypted envelope: a signature by a trusted key over a well-formed manifest,
/// and inline content exactly as long as the manifest's entries when it is inline (none
/// otherwise). Returns the manifest, its signer and the inline content.
pub fn verify_envelope(
    envelope: &[u8],
    trusted: &TrustedKeys,
) -> Result<(Manifest, KeyId, Vec<u8>), OpenError> {
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
    let expected = if manifest.is_inline() {
        manifest.content_len()
    } else {
        0
    };
    if signed.inline.len() as u64 != expected {
        return Err(OpenError::Malformed(format!(
            "{} bytes of inline content, the manifest lists {expected}",
            signed.inline.len()
        )));
    }
    Ok((manifest, signer, signed.inline))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;
    use sluice_protocol::manifest::{Entry, EntryKind, MANIFEST_VERSION};
    use sluice_protocol::wire::{ObjectId, SessionId};

    fn manifest() -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            session: SessionId(1),
            object: ObjectId(2),
            sequence: 1,
            entries: vec![Entry {
                path: "a/b".into(),
                kind: EntryKind::File,
                size: 3,
                mode: 0o644,
                mtime_secs: 0,
                mtime_nanos: 0,
                sha256: [0; 32],
            }],
            segment_size: 0,
            segments: Vec::new(),
            approval: None,
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

        let sealed = seal_manifest(&manifest(), b"abc", &signer, &recipients).unwrap();
        let opened = open_manifest(&sealed, &identities, &trusted).unwrap();
        assert_eq!(opened.manifest, manifest());
        assert_eq!(opened.signer, signer.id());
        assert_eq!(opened.inline, b"abc");
        // Inline content of another length than the entries: refused.
        let short = seal_manifest(&manifest(), b"ab", &signer, &recipients).unwrap();
        assert!(matches!(
            open_manifest(&short, &identities, &trusted),
            Err(OpenError::Malformed(_))
        ));

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

    #[test]
    fn the_header_mac_is_the_one_age_wrote() {
        // An age file made by the stock `age` tool's format: header, "--- " MAC line, payload.
        let dir = tempfile::tempdir().unwrap();
        keys::generate_receiver_keys(dir.path()).unwrap();
        let recipients = keys::load_recipients(&dir.path().join(keys::RECEIVER_PUB)).unwrap();
        let file = encrypt(b"segment", &recipients).unwrap();
        let text = String::from_utf8_lossy(&file);
        let line = text.lines().find(|l| l.starts_with("--- ")).unwrap();
        let mac = header_mac(&file).unwrap();
        use base64::Engine;
        assert_eq!(
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(mac),
            line[4..]
        );
        // Two encryptions of the same plaintext: fresh file keys, different MACs.
        assert_ne!(
            header_mac(&encrypt(b"segment", &recipients).unwrap()),
            Some(mac)
        );
        assert_eq!(header_mac(b"not an age file"), None);
        let cut = &file[..text.find("--- ").unwrap() + 20];
        assert_eq!(header_mac(cut), None);
    }
}
