//! `[signing]` in `policy.toml`: which files make a directory a model, which keys may sign
//! which models, and how long a model's files wait for their signature at the receiver.
//!
//! ```toml
//! [signing]
//! models = "require"              # require | verify | off (the default)
//! model_files = ["*.safetensors", "*.gguf"]   # what makes a directory a model (defaults below)
//! model_dirs = ["models/*"]       # directories that are models whatever they hold
//! signature = "model.sig"         # the bundle's name in the model directory
//! wait = "24h"                    # how long files wait for their model's signature
//! max_held = "64GiB"              # bytes of files waiting at once
//! keys = [
//!   "/etc/sluice/model-signers/ml-team.pem",               # any model
//!   { file = "/etc/sluice/model-signers/vendor.pem", paths = ["vendor/**"] },
//! ]
//! certificates = [                # CAs whose code-signing certificates sign models
//!   { file = "/etc/sluice/model-signers/org-ca.pem", paths = ["models/**"] },
//! ]
//! ```
//!
//! A key's (or CA's) `paths` match the model directory's relative path; one without them
//! signs any model. Relative files are read from the policy file's directory.
//!
//! A directory is a model when it is named by `model_dirs`, or when a file of a
//! `model_files` kind (or a signature) arrives in it. The first holds from a model's first
//! file whatever order files arrive in; the second cannot know of a model before one of
//! those files, so a file sent alone into a new directory ahead of them is delivered as an
//! ordinary file (a signature that names it then holds it to its digest).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::rules::Rules;
use crate::signing::{self, Signed, TrustedKey};

/// What makes a directory a model by default: a file of one of these kinds in it.
pub const DEFAULT_MODEL_FILES: &[&str] = &[
    "*.safetensors",
    "*.gguf",
    "*.onnx",
    "*.pt",
    "*.pth",
    "*.bin",
    "*.ckpt",
    "*.keras",
    "*.h5",
    "*.pkl",
    "*.joblib",
    "*.npz",
    "*.tflite",
    "*.msgpack",
];

/// How long files wait for their model's signature by default.
const DEFAULT_WAIT: Duration = Duration::from_secs(24 * 3600);
/// Bytes of files waiting for a signature at once, by default.
const DEFAULT_MAX_HELD: u64 = 64 << 30;

/// What the receiver asks of models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Signatures are not looked at: a `model.sig` is an ordinary file.
    #[default]
    Off,
    /// A model that comes with a signature is held to it; one without is delivered unsigned.
    Verify,
    /// Every model needs a valid signature by a trusted key before any of its files is
    /// delivered.
    Require,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum KeyEntry {
    File(String),
    Scoped {
        file: String,
        #[serde(default)]
        paths: Vec<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SigningFile {
    #[serde(default)]
    models: Mode,
    model_files: Option<Vec<String>>,
    #[serde(default)]
    model_dirs: Vec<String>,
    signature: Option<String>,
    wait: Option<String>,
    max_held: Option<String>,
    #[serde(default)]
    keys: Vec<KeyEntry>,
    #[serde(default)]
    certificates: Vec<KeyEntry>,
}

/// A trusted key or CA and the models it may sign (`None`: any).
#[derive(Debug)]
struct ScopedKey {
    key: TrustedKey,
    paths: Option<Rules>,
}

impl ScopedKey {
    /// A `keys` or `certificates` entry (`what`), its PEM file read relative to `base` with
    /// `parse`.
    fn load(
        entry: KeyEntry,
        base: &Path,
        what: &str,
        parse: fn(&str, &str) -> Result<TrustedKey, String>,
    ) -> Result<ScopedKey, String> {
        let (name, paths) = match entry {
            KeyEntry::File(name) => (name, Vec::new()),
            KeyEntry::Scoped { file, paths } => (file, paths),
        };
        let path = base.join(&name);
        let pem = std::fs::read_to_string(&path)
            .map_err(|e| format!("[signing] {what} {}: {e}", path.display()))?;
        let key = parse(&name, &pem).map_err(|e| format!("[signing] {e}"))?;
        let paths = (!paths.is_empty())
            .then(|| Rules::new(&paths, &format!("[signing] {what} paths")))
            .transpose()?;
        Ok(ScopedKey { key, paths })
    }
}

/// `[signing]`, loaded: the keys and CAs read and checked.
#[derive(Debug)]
pub struct ModelTrust {
    pub mode: Mode,
    model_files: Rules,
    model_dirs: Option<Rules>,
    /// The signature bundle's name in a model directory.
    pub signature: String,
    /// How long files wait for their model's signature before they are refused.
    pub wait: Duration,
    /// Bytes of files waiting at once; a file that would pass it is refused.
    pub max_held: u64,
    keys: Vec<ScopedKey>,
}

impl ModelTrust {
    /// Checks `[signing]`; key files are read relative to `base` (the policy's directory).
    pub(crate) fn load(file: SigningFile, base: &Path) -> Result<ModelTrust, String> {
        let patterns = file.model_files.unwrap_or_else(|| {
            DEFAULT_MODEL_FILES
                .iter()
                .map(ToString::to_string)
                .collect()
        });
        let model_files = Rules::new(&patterns, "[signing] model_files")?;
        let model_dirs = (!file.model_dirs.is_empty())
            .then(|| Rules::new(&file.model_dirs, "[signing] model_dirs"))
            .transpose()?;
        let signature = file.signature.unwrap_or_else(|| "model.sig".to_string());
        if signature.is_empty() || signature.contains('/') || signature.starts_with('.') {
            return Err(format!(
                "[signing] signature {signature:?}: expected a plain file name"
            ));
        }
        let wait = match file.wait {
            None => DEFAULT_WAIT,
            Some(t) => humantime::parse_duration(&t)
                .map_err(|_| format!("[signing] wait {t:?}: expected a duration, e.g. 24h"))?,
        };
        let max_held = match file.max_held {
            None => DEFAULT_MAX_HELD,
            Some(s) => sluice_common::units::parse_bytes(&s)
                .map_err(|_| format!("[signing] max_held {s:?}: expected a size, e.g. 64GiB"))?,
        };
        let keys =
            file.keys
                .into_iter()
                .map(|entry| ScopedKey::load(entry, base, "key", TrustedKey::from_pem))
                .chain(file.certificates.into_iter().map(|entry| {
                    ScopedKey::load(entry, base, "certificate", TrustedKey::from_ca_pem)
                }))
                .collect::<Result<Vec<_>, _>>()?;
        if file.models != Mode::Off && keys.is_empty() {
            return Err(
                "[signing] models = \"require\" or \"verify\" needs keys or certificates"
                    .to_string(),
            );
        }
        Ok(ModelTrust {
            mode: file.models,
            model_files,
            model_dirs,
            signature,
            wait,
            max_held,
            keys,
        })
    }

    /// Whether `path` is a model's file (its kind makes its directory a model).
    pub fn is_model_file(&self, path: &str) -> bool {
        self.model_files.first_match(path).is_some()
    }

    /// Whether `path` lies in a directory `model_dirs` names.
    pub fn in_model_dir(&self, path: &str) -> bool {
        let Some(dirs) = &self.model_dirs else {
            return false;
        };
        let mut dir = path;
        while let Some((parent, _)) = dir.rsplit_once('/') {
            if dirs.first_match(parent).is_some() {
                return true;
            }
            dir = parent;
        }
        false
    }

    /// The model directory `path` is the signature of (`""` for the top), if it is one.
    pub fn signature_of<'p>(&self, path: &'p str) -> Option<&'p str> {
        match path.rsplit_once('/') {
            Some((dir, name)) if name == self.signature => Some(dir),
            None if path == self.signature => Some(""),
            _ => None,
        }
    }

    /// Verifies the signature of the model at `dir` with the keys and CAs that may sign it, and that
    /// it names that directory (the reference tool signs a model under its directory's name):
    /// a model's signature cannot be replayed for another directory. Errors are the refusal's
    /// text (`model signed by an untrusted key`, …).
    pub fn verify(&self, dir: &str, bundle: &[u8]) -> Result<Signed, String> {
        let keys: Vec<TrustedKey> = self
            .keys
            .iter()
            .filter(|k| {
                k.paths
                    .as_ref()
                    .is_none_or(|p| p.first_match(dir).is_some())
            })
            .map(|k| k.key.clone())
            .collect();
        let signed = signing::verify(bundle, &keys)?;
        let name = dir.rsplit('/').next().unwrap_or(dir);
        if signed.name != name {
            return Err(format!(
                "model signature names model {:?}, not its directory {name:?}",
                signed.name
            ));
        }
        Ok(signed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    use sha2::{Digest, Sha256};
    use std::collections::BTreeMap;

    fn trust(toml_text: &str, dir: &Path) -> Result<ModelTrust, String> {
        #[derive(Deserialize)]
        struct Wrap {
            signing: SigningFile,
        }
        let w: Wrap = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        ModelTrust::load(w.signing, dir)
    }

    #[test]
    fn keys_sign_only_the_models_their_paths_name() {
        let dir = tempfile::tempdir().unwrap();
        let key = p256::ecdsa::SigningKey::from_bytes(&[5u8; 32].into()).unwrap();
        let public = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        std::fs::write(dir.path().join("vendor.pem"), public).unwrap();
        let t = trust(
            "[signing]\nmodels = \"require\"\n\
             keys = [{ file = \"vendor.pem\", paths = [\"vendor/**\"] }]\n",
            dir.path(),
        )
        .unwrap();
        let files: BTreeMap<String, [u8; 32]> =
            [("w.gguf".to_string(), Sha256::digest(b"w").into())].into();
        let private = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        let bundle = signing::sign(&files, "m", &private, &[]).unwrap();
        assert_eq!(t.verify("vendor/m", &bundle).unwrap().signer, "vendor.pem");
        assert_eq!(
            t.verify("internal/m", &bundle).unwrap_err(),
            "model signed by an untrusted key"
        );
        // Replayed for another directory.
        assert_eq!(
            t.verify("vendor/other", &bundle).unwrap_err(),
            "model signature names model \"m\", not its directory \"other\""
        );
        assert!(t.is_model_file("a/b/w.gguf") && !t.is_model_file("a/config.json"));
        assert_eq!(t.signature_of("a/b/model.sig"), Some("a/b"));
        assert_eq!(t.signature_of("model.sig"), Some(""));
        assert_eq!(t.signature_of("a/model.sig.txt"), None);
        assert!(!t.in_model_dir("models/llama/config.json"));
        let t = trust(
            "[signing]\nmodels = \"require\"\nmodel_dirs = [\"models/*\"]\n\
             keys = [\"vendor.pem\"]\n",
            dir.path(),
        )
        .unwrap();
        assert!(t.in_model_dir("models/llama/config.json"));
        assert!(t.in_model_dir("models/llama/tokenizer/vocab.txt"));
        assert!(!t.in_model_dir("models/README") && !t.in_model_dir("data/models/x"));
    }

    #[test]
    fn bad_settings_are_refused_with_the_setting_named() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "[signing]\nmodels = \"require\"\n",
                "needs keys or certificates",
            ),
            (
                "[signing]\ncertificates = [\"gone.pem\"]\n",
                "certificate /",
            ),
            ("[signing]\nmodels = \"maybe\"\n", "models"),
            ("[signing]\nkeys = [\"missing.pem\"]\n", "missing.pem"),
            ("[signing]\nsignature = \"../x\"\n", "plain file name"),
            ("[signing]\nwait = \"soon\"\n", "wait"),
        ];
        for (text, phrase) in cases {
            let e = trust(text, dir.path()).unwrap_err();
            assert!(e.contains(phrase), "{text}: {e}");
        }
        std::fs::write(dir.path().join("junk.pem"), "not a key").unwrap();
        let e = trust("[signing]\ncertificates = [\"junk.pem\"]\n", dir.path()).unwrap_err();
        assert!(e.contains("junk.pem: no PEM certificate"), "{e}");
        let e = trust("[signing]\nkeys = [\"junk.pem\"]\n", dir.path()).unwrap_err();
        assert!(e.contains("not a PEM public key"), "{e}");
    }
}
