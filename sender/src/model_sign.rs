//! `--sign-model KEY.pem`: each directory sent is signed as a model before it is listed —
//! every regular file's SHA-256 in an OpenSSF model-signing bundle, written as
//! `DIR/model.sig`, which then travels with the directory. The format is the reference
//! tool's (`model_signing verify key DIR --signature DIR/model.sig --public_key KEY.pub`
//! accepts it), and the receiver's gate and `sluice-inspect --model-key` check it.
//!
//! As the reference tool does: the signature file itself and `.git`, `.github`,
//! `.gitattributes`, `.gitignore` are left out; a symlink or special file refuses the
//! directory (the tool's default, `allow_symlinks = false`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};
use sluice_inspect::signing;

/// The signature's name in the model directory.
pub const SIGNATURE: &str = "model.sig";
/// What the reference tool leaves out by default.
const IGNORED: &[&str] = &[".git", ".github", ".gitattributes", ".gitignore"];

/// Signs the directory `dir` with the private key in `key_pem`; the number of files signed.
pub fn sign_directory(dir: &Path, key_pem: &str) -> Result<usize, String> {
    let mut files = BTreeMap::new();
    let walker = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() != 1 || !is_ignored(e.file_name().to_str()));
    for entry in walker {
        let entry = entry.map_err(|e| e.to_string())?;
        let relative = entry
            .path()
            .strip_prefix(dir)
            .map_err(|e| e.to_string())?
            .to_str()
            .ok_or_else(|| format!("{}: a name that is not UTF-8", entry.path().display()))?
            .to_string();
        let kind = entry.file_type();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(format!(
                "{}: a symlink or special file (a signed model holds regular files)",
                entry.path().display()
            ));
        }
        if relative == SIGNATURE {
            continue;
        }
        files.insert(relative, digest(entry.path())?);
    }
    let model_name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("model")
        .to_string();
    let ignore: Vec<String> = IGNORED.iter().map(|s| (*s).to_string()).collect();
    let bundle = signing::sign(&files, &model_name, key_pem, &ignore)?;
    // Written beside, then renamed over: a reader sees the old signature or the new one.
    let temporary = dir.join(".model.sig.sluice-tmp");
    std::fs::write(&temporary, &bundle).map_err(|e| format!("{}: {e}", temporary.display()))?;
    std::fs::rename(&temporary, dir.join(SIGNATURE))
        .map_err(|e| format!("{}: {e}", dir.join(SIGNATURE).display()))?;
    Ok(files.len())
}

fn is_ignored(name: Option<&str>) -> bool {
    name.is_some_and(|n| IGNORED.contains(&n) || n == ".model.sig.sluice-tmp")
}

fn digest(path: &Path) -> Result<[u8; 32], String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

    #[test]
    fn a_directory_signed_here_verifies_with_its_public_key_and_only_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("tiny");
        std::fs::create_dir_all(model.join("sub")).unwrap();
        std::fs::create_dir_all(model.join(".git")).unwrap();
        std::fs::write(model.join("config.json"), "{}").unwrap();
        std::fs::write(model.join("sub/w.safetensors"), b"weights").unwrap();
        std::fs::write(model.join(".git/HEAD"), "ref").unwrap();
        let key = p256::ecdsa::SigningKey::from_bytes(&[3u8; 32].into()).unwrap();
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        assert_eq!(sign_directory(&model, &pem).unwrap(), 2);
        let public = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let trusted = signing::TrustedKey::from_pem("ops", &public).unwrap();
        let bundle = std::fs::read(model.join(SIGNATURE)).unwrap();
        let signed = signing::verify(&bundle, &[trusted]).unwrap();
        let present = |m: &Path| {
            let mut p = BTreeMap::new();
            for name in ["config.json", "sub/w.safetensors", ".git/HEAD", SIGNATURE] {
                p.insert(name.to_string(), digest(&m.join(name)).unwrap());
            }
            p
        };
        assert_eq!(
            signing::check_files(&signed, &present(&model), SIGNATURE),
            Ok(())
        );
        std::fs::write(model.join("config.json"), "{\"x\": 1}").unwrap();
        assert_eq!(
            signing::check_files(&signed, &present(&model), SIGNATURE).unwrap_err(),
            "model file changed since signing: config.json"
        );
        // Signing again covers the change; a symlink refuses the directory.
        assert_eq!(sign_directory(&model, &pem).unwrap(), 2);
        std::os::unix::fs::symlink("/etc/passwd", model.join("link")).unwrap();
        assert!(sign_directory(&model, &pem)
            .unwrap_err()
            .contains("a symlink or special file"));
        assert!(sign_directory(&model, "not a key").is_err());
    }
}
