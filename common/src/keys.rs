//! Key files: the receiver's age identity, the sender's minisign signing pair and the shared
//! link key. Formats are the ones operators already use, so `age -d -i receiver.key` and
//! `minisign -V -p sender.pub` work on the same files.
//!
//! Secret files are written 0600 and refused when group or others can read or write them
//! (as ssh does): a gateway box's keys leaking to another local account defeats the diode.

use std::fmt;
use std::io::{Cursor, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use age::secrecy::ExposeSecret;
use sluice_protocol::wire::LinkKey;

/// File names `keygen` writes.
pub const RECEIVER_KEY: &str = "receiver.key";
pub const RECEIVER_PUB: &str = "receiver.pub";
pub const SENDER_KEY: &str = "sender.key";
pub const SENDER_PUB: &str = "sender.pub";
pub const LINK_KEY: &str = "link.key";

/// Trusted comment carried in every manifest signature.
const TRUSTED_COMMENT: &str = "sluice manifest";

/// A key file that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not {expected}")]
    Format {
        path: PathBuf,
        expected: &'static str,
    },
    #[error(
        "{path}: secret key file is accessible by group or others (mode {mode:o}); \
         refusing to use it, run `chmod 600 {path}`"
    )]
    LoosePermissions { path: PathBuf, mode: u32 },
    #[error("{path} already exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error("{path} is a directory, not a key file")]
    Directory { path: PathBuf },
    #[error(
        "{path} is a public key; this option takes a secret key file (sender.key, receiver.key)"
    )]
    PublicGiven { path: PathBuf },
    #[error(
        "{path} is a secret key (an age identity, AGE-SECRET-KEY-1…): --recipient takes the \
         receiver's public receiver.pub; keep this file on the receiving box only"
    )]
    SecretGiven { path: PathBuf },
    #[error("key generation failed: {0}")]
    Generate(String),
}

/// A minisign key id, shown as the minisign crate writes it in a public key's comment: 16 hex
/// digits (stock minisign's comments drop leading zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub u64);

impl KeyId {
    /// The id of a minisign key (or of the key that made a signature) from its key number.
    pub fn from_keynum(keynum: &[u8]) -> Self {
        let mut bytes = [0u8; 8];
        for (dst, src) in bytes.iter_mut().zip(keynum) {
            *dst = *src;
        }
        KeyId(u64::from_le_bytes(bytes))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn format_err(path: &Path, expected: &'static str) -> KeyError {
    KeyError::Format {
        path: path.to_path_buf(),
        expected,
    }
}

/// Writes a new file; secret files get mode 0600. Never overwrites.
fn write_new(path: &Path, contents: &str, secret: bool) -> Result<(), KeyError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                KeyError::Io {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    file.write_all(contents.as_bytes()).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// Reads a secret key file after checking nobody but the owner can touch it.
fn read_secret(path: &Path) -> Result<String, KeyError> {
    // What the file is comes first: a public key or a directory given by mistake is named as
    // such, not met with advice to chmod it.
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    if meta.is_dir() {
        return Err(KeyError::Directory {
            path: path.to_path_buf(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    if looks_public(&text) {
        return Err(KeyError::PublicGiven {
            path: path.to_path_buf(),
        });
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::LoosePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(text)
}

/// A minisign public key file, or age recipients: never a secret.
fn looks_public(text: &str) -> bool {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    lines
        .first()
        .is_some_and(|l| l.starts_with("untrusted comment: minisign public key"))
        || (!lines.is_empty() && lines.iter().all(|l| l.starts_with("age1")))
}

/// Reads a public key file (anyone may read it).
pub fn read_public(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

fn ensure_dir(dir: &Path) -> Result<(), KeyError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))
}

// ----- receiver: age X25519 -----

/// Creates `DIR/receiver.key` (an age identity, as `age-keygen` writes it) and
/// `DIR/receiver.pub` (its `age1…` recipient). Returns the recipient.
pub fn generate_receiver_keys(dir: &Path) -> Result<String, KeyError> {
    ensure_dir(dir)?;
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let secret = identity.to_string();
    let key_file = format!(
        "# created by sluice-recv keygen\n# public key: {recipient}\n{}\n",
        secret.expose_secret()
    );
    write_new(&dir.join(RECEIVER_KEY), &key_file, true)?;
    write_new(&dir.join(RECEIVER_PUB), &format!("{recipient}\n"), false)?;
    Ok(recipient)
}

/// Loads every age identity in an identity file (comment lines ignored).
pub fn load_identities(path: &Path) -> Result<Vec<age::x25519::Identity>, KeyError> {
    let text = read_secret(path)?;
    let identities: Vec<_> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(age::x25519::Identity::from_str)
        .collect::<Result<_, _>>()
        .map_err(|_| format_err(path, "an age identity file (AGE-SECRET-KEY-1… lines)"))?;
    if identities.is_empty() {
        return Err(format_err(
            path,
            "an age identity file (AGE-SECRET-KEY-1… lines)",
        ));
    }
    Ok(identities)
}

/// Loads every `age1…` recipient in a file (comment lines ignored).
pub fn load_recipients(path: &Path) -> Result<Vec<age::x25519::Recipient>, KeyError> {
    if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err(KeyError::Directory {
            path: path.to_path_buf(),
        });
    }
    let text = read_public(path)?;
    if text.contains("AGE-SECRET-KEY-") {
        return Err(KeyError::SecretGiven {
            path: path.to_path_buf(),
        });
    }
    let recipients: Vec<_> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(age::x25519::Recipient::from_str)
        .collect::<Result<_, _>>()
        .map_err(|_| format_err(path, "an age recipient file (age1… lines)"))?;
    if recipients.is_empty() {
        return Err(format_err(path, "an age recipient file (age1… lines)"));
    }
    Ok(recipients)
}

// ----- sender: minisign ed25519 -----

/// Creates `DIR/sender.key` + `DIR/sender.pub` (a minisign key pair without a password, as
/// `minisign -G -W` writes it) and `DIR/link.key`. Returns the signing key's id.
pub fn generate_sender_keys(dir: &Path) -> Result<KeyId, KeyError> {
    ensure_dir(dir)?;
    for name in [SENDER_KEY, SENDER_PUB, LINK_KEY] {
        let path = dir.join(name);
        if path.exists() {
            return Err(KeyError::Exists { path });
        }
    }
    let pair = minisign::KeyPair::generate_unencrypted_keypair()
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    let id = KeyId::from_keynum(pair.pk.keynum());
    let sk_box = pair
        .sk
        .to_box(Some(&format!("sluice sender secret key {id}")))
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    let pk_box = pair
        .pk
        .to_box()
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    write_new(&dir.join(SENDER_KEY), &sk_box.to_string(), true)?;
    write_new(&dir.join(SENDER_PUB), &pk_box.to_string(), false)?;
    generate_link_key(&dir.join(LINK_KEY))?;
    Ok(id)
}

/// The sender's manifest signing key.
pub struct SigningKey {
    secret: minisign::SecretKey,
    id: KeyId,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("id", &self.id).finish()
    }
}

impl SigningKey {
    /// Loads a minisign secret key without a password.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = read_secret(path)?;
        let expected =
            "a minisign secret key without a password (sluice-send keygen, minisign -G -W)";
        let secret = unencrypted_secret_key(&text).ok_or_else(|| format_err(path, expected))?;
        let id = KeyId::from_keynum(secret.keynum());
        Ok(SigningKey { secret, id })
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Signs `data`; returns the `.minisig` text that `minisign -V` accepts.
    pub fn sign(&self, data: &[u8]) -> Result<String, KeyError> {
        minisign::sign(
            None,
            &self.secret,
            Cursor::new(data),
            Some(TRUSTED_COMMENT),
            None,
        )
        .map(|sig| sig.into_string())
        .map_err(|e| KeyError::Generate(e.to_string()))
    }
}

/// The minisign secret key in `text` if it has no password. minisign's own `-W` keys carry
/// an all-zero checksum (the `minisign` crate calls them corrupted), so the key is checked
/// the way that matters instead: a probe signature verifies under its public half.
pub fn unencrypted_secret_key(text: &str) -> Option<minisign::SecretKey> {
    use base64::Engine;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(line)
        .ok()?;
    // Bytes 2..4: the KDF algorithm, zero for a key without a password.
    if bytes.get(2..4)? != [0, 0] {
        return None;
    }
    let secret = minisign::SecretKey::from_bytes(&bytes).ok()?;
    let public = minisign::PublicKey::from_secret_key(&secret).ok()?;
    let probe = minisign::sign(None, &secret, Cursor::new(b"probe"), None, None).ok()?;
    minisign::verify(&public, &probe, Cursor::new(b"probe"), true, false, false).ok()?;
    Some(secret)
}

/// Why a signature is not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignatureError {
    #[error("signature is not in minisign format")]
    Malformed,
    #[error("signed by untrusted key {0}")]
    Untrusted(KeyId),
    #[error("signature by key {0} does not match the data")]
    Invalid(KeyId),
}

/// The minisign public keys whose signatures the receiver accepts.
#[derive(Default)]
pub struct TrustedKeys {
    keys: Vec<(KeyId, minisign::PublicKey)>,
}

impl fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(id, _)| id))
            .finish()
    }
}

impl TrustedKeys {
    /// Loads minisign public key files; each may hold several keys (one base64 line each,
    /// `untrusted comment:` and `#` lines ignored).
    pub fn load(paths: &[PathBuf]) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        for path in paths {
            let text = read_public(path)?;
            let found = parse_public_keys(&text)
                .ok_or_else(|| format_err(path, "a minisign public key file"))?;
            keys.extend(found);
        }
        Ok(TrustedKeys { keys })
    }

    /// Keys given directly (each key once: a key listed twice is one key).
    pub fn from_keys(keys: impl IntoIterator<Item = minisign::PublicKey>) -> Self {
        let mut unique: Vec<(KeyId, minisign::PublicKey)> = Vec::new();
        for key in keys {
            if !unique.iter().any(|(_, k)| k.to_base64() == key.to_base64()) {
                unique.push((KeyId::from_keynum(key.keynum()), key));
            }
        }
        TrustedKeys { keys: unique }
    }

    /// The keys.
    pub fn keys(&self) -> impl Iterator<Item = &minisign::PublicKey> + '_ {
        self.keys.iter().map(|(_, key)| key)
    }

    pub fn ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.iter().map(|(id, _)| *id)
    }

    /// Checks a `.minisig` text over `data`; returns the signer's key id.
    pub fn verify(&self, data: &[u8], signature: &[u8]) -> Result<KeyId, SignatureError> {
        let text = std::str::from_utf8(signature).map_err(|_| SignatureError::Malformed)?;
        let sig =
            minisign::SignatureBox::from_string(text).map_err(|_| SignatureError::Malformed)?;
        let id = KeyId::from_keynum(sig.keynum());
        let (_, key) = self
            .keys
            .iter()
            .find(|(known, _)| *known == id)
            .ok_or(SignatureError::Untrusted(id))?;
        minisign::verify(key, &sig, Cursor::new(data), true, false, false)
            .map(|()| id)
            .map_err(|_| SignatureError::Invalid(id))
    }
}

/// The keys in the text of a minisign public key file (one base64 line each; `untrusted
/// comment:` and `#` lines ignored); `None` if a line is not a key or there is none.
pub fn parse_public_keys(text: &str) -> Option<Vec<(KeyId, minisign::PublicKey)>> {
    let mut keys = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with("untrusted comment:") {
            continue;
        }
        let key = minisign::PublicKey::from_base64(line).ok()?;
        keys.push((KeyId::from_keynum(key.keynum()), key));
    }
    (!keys.is_empty()).then_some(keys)
}

// ----- link key -----

/// Writes a fresh random 32-byte link key as 64 hex digits.
pub fn generate_link_key(path: &Path) -> Result<(), KeyError> {
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).map_err(|e| KeyError::Generate(e.to_string()))?;
    write_new(path, &format!("{}\n", hex::encode(secret)), true)
}

/// Loads the shared link key (64 hex digits).
pub fn load_link_key(path: &Path) -> Result<LinkKey, KeyError> {
    let text = read_secret(path)?;
    let mut secret = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut secret)
        .map_err(|_| format_err(path, "a link key (64 hex digits, from sluice-send keygen)"))?;
    Ok(LinkKey::new(&secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_keys_round_trip_through_age() {
        let dir = tempfile::tempdir().unwrap();
        let recipient = generate_receiver_keys(dir.path()).unwrap();
        let recipients = load_recipients(&dir.path().join(RECEIVER_PUB)).unwrap();
        assert_eq!(recipients[0].to_string(), recipient);
        let identities = load_identities(&dir.path().join(RECEIVER_KEY)).unwrap();
        assert_eq!(identities[0].to_public().to_string(), recipient);
        let mode = std::fs::metadata(dir.path().join(RECEIVER_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            generate_receiver_keys(dir.path()),
            Err(KeyError::Exists { .. })
        ));
    }

    /// Issue 31, item 5: a key file given to the wrong option is named for what it is — a
    /// public key or a directory as a secret key (not "run chmod 600"), a secret key as a
    /// recipient (called a secret) — before any mode check.
    #[test]
    fn a_key_given_to_the_wrong_option_is_named_for_what_it_is() {
        let dir = tempfile::tempdir().unwrap();
        generate_sender_keys(&dir.path().join("s")).unwrap();
        generate_receiver_keys(&dir.path().join("r")).unwrap();
        let public = dir.path().join("s").join(SENDER_PUB);
        // Public key files are world-readable: still not told to chmod them.
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SigningKey::load(&public).unwrap_err().to_string();
        assert!(
            err.contains("is a public key") && !err.contains("chmod"),
            "{err}"
        );
        let err = SigningKey::load(&dir.path().join("s"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is a directory"), "{err}");
        let err = match load_identities(&dir.path().join("r").join(RECEIVER_PUB)) {
            Ok(_) => panic!("a public key loaded as an identity"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("is a public key"), "{err}");
        let err = load_recipients(&dir.path().join("r").join(RECEIVER_KEY))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is a secret key") && err.contains("receiver.pub"),
            "{err}"
        );
        // The real thing, with loose permissions, is still refused for them.
        let secret = dir.path().join("s").join(SENDER_KEY);
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            SigningKey::load(&secret),
            Err(KeyError::LoosePermissions { .. })
        ));
    }

    #[test]
    fn signatures_verify_only_with_trusted_keys() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let id_a = generate_sender_keys(a.path()).unwrap();
        let id_b = generate_sender_keys(b.path()).unwrap();
        let signer = SigningKey::load(&a.path().join(SENDER_KEY)).unwrap();
        assert_eq!(signer.id(), id_a);
        let sig = signer.sign(b"manifest bytes").unwrap();

        let trust_a = TrustedKeys::load(&[a.path().join(SENDER_PUB)]).unwrap();
        assert_eq!(trust_a.verify(b"manifest bytes", sig.as_bytes()), Ok(id_a));
        assert_eq!(
            trust_a.verify(b"manifest bytez", sig.as_bytes()),
            Err(SignatureError::Invalid(id_a))
        );
        let trust_b = TrustedKeys::load(&[b.path().join(SENDER_PUB)]).unwrap();
        assert_eq!(trust_b.ids().collect::<Vec<_>>(), vec![id_b]);
        assert_eq!(
            trust_b.verify(b"manifest bytes", sig.as_bytes()),
            Err(SignatureError::Untrusted(id_a))
        );
        assert_eq!(
            trust_a.verify(b"manifest bytes", b"garbage"),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn link_key_loads_and_loose_permissions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        generate_sender_keys(dir.path()).unwrap();
        let path = dir.path().join(LINK_KEY);
        let key = load_link_key(&path).unwrap();
        let again = load_link_key(&path).unwrap();
        assert_eq!(key.tag(b"x"), again.tag(b"x"));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_link_key(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");

        let truncated = dir.path().join("short.key");
        write_new(&truncated, "abcd\n", true).unwrap();
        let err = load_link_key(&truncated).unwrap_err();
        assert!(err.to_string().contains("64 hex digits"), "{err}");
    }
}
