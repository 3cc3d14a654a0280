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
use sluice_common::beneath::Dir;
use sluice_inspect::signing;

/// The signature's name in the model directory.
pub const SIGNATURE: &str = "model.sig";
/// What the reference tool leaves out by default.
const IGNORED: &[&str] = &[".git", ".github", ".gitattributes", ".gitignore"];

/// Signs the directory `dir` with the private key in `key_pem` (and its certificate chain,
/// `chain_pem`, for the certificate method); the number of files signed.
pub fn sign_directory(dir: &Path, key_pem: &str, chain_pem: Option<&str>) -> Result<usize, String> {
    // Files are listed by path, then opened from the directory's fd one component at a time,
    // never through a symlink another user swapped in (`beneath`).
    let root = Dir::open(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
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
        // The old signature, whatever it is, is replaced (never read, never followed).
        if kind.is_dir() || relative == SIGNATURE {
            continue;
        }
        if !kind.is_file() {
            return Err(format!(
                "{}: a symlink or special file (a signed model holds regular files)",
                entry.path().display()
            ));
        }
        let digest = digest(&root, &relative)?;
        files.insert(relative, digest);
    }
    let model_name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("model")
        .to_string();
    let ignore: Vec<String> = IGNORED.iter().map(|s| (*s).to_string()).collect();
    let mut bundle = signing::sign(&files, &model_name, key_pem, &ignore)?;
    if let Some(chain) = chain_pem {
        bundle = signing::with_certificates(&bundle, key_pem, chain)
            .map_err(|e| format!("--sign-model-cert: {e}"))?;
    }
    // Written beside (a new file: never through a name another user planted), then renamed
    // over: a reader sees the old signature or the new one.
    let shown = |e: std::io::Error| format!("{}: {e}", dir.join(SIGNATURE).display());
    let _ = root.remove_file(TEMPORARY);
    let mut file = root.create_file(TEMPORARY, 0o644).map_err(shown)?;
    std::io::Write::write_all(&mut file, &bundle).map_err(shown)?;
    file.sync_all().map_err(shown)?;
    root.rename(TEMPORARY, &root, SIGNATURE).map_err(shown)?;
    Ok(files.len())
}

/// Where the signature is written before it is renamed into place.
const TEMPORARY: &str = ".model.sig.sluice-tmp";

fn is_ignored(name: Option<&str>) -> bool {
    name.is_some_and(|n| IGNORED.contains(&n) || n == TEMPORARY)
}

/// The SHA-256 of the regular file at `relative` below `root`.
fn digest(root: &Dir, relative: &str) -> Result<[u8; 32], String> {
    let shown = |e: std::io::Error| format!("{relative}: {e}");
    let components: Vec<&str> = relative.split('/').collect();
    let (name, parents) = components
        .split_last()
        .ok_or_else(|| "an empty name".to_string())?;
    let parent = if parents.is_empty() {
        root.try_clone().map_err(shown)?
    } else {
        root.walk(parents, None, Path::new(relative))
            .map_err(|e| format!("{relative}: {e}"))?
            .0
    };
    let (mut file, _) = parent.open_regular(name).map_err(shown)?;
    let path = Path::new(relative);
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
        assert_eq!(sign_directory(&model, &pem, None).unwrap(), 2);
        let public = key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let trusted = signing::TrustedKey::from_pem("ops", &public).unwrap();
        let bundle = std::fs::read(model.join(SIGNATURE)).unwrap();
        let signed = signing::verify(&bundle, &[trusted]).unwrap();
        let present = |m: &Path| {
            let mut p = BTreeMap::new();
            let root = Dir::open(m).unwrap();
            for name in ["config.json", "sub/w.safetensors", ".git/HEAD", SIGNATURE] {
                p.insert(name.to_string(), digest(&root, name).unwrap());
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
        assert_eq!(sign_directory(&model, &pem, None).unwrap(), 2);
        std::os::unix::fs::symlink("/etc/passwd", model.join("link")).unwrap();
        assert!(sign_directory(&model, &pem, None)
            .unwrap_err()
            .contains("a symlink or special file"));
        assert!(sign_directory(&model, "not a key", None).is_err());
    }

    /// Another user who can write the model directory plants symlinks where the signature
    /// is written: the files they point at are never written.
    #[test]
    fn symlinks_planted_where_the_signature_goes_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m");
        std::fs::create_dir(&model).unwrap();
        std::fs::write(model.join("w.bin"), b"w").unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, model.join(TEMPORARY)).unwrap();
        std::os::unix::fs::symlink(&victim, model.join(SIGNATURE)).unwrap();
        let key = p256::ecdsa::SigningKey::from_bytes(&[4u8; 32].into()).unwrap();
        let pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        assert_eq!(sign_directory(&model, &pem, None).unwrap(), 1);
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let sig = std::fs::symlink_metadata(model.join(SIGNATURE)).unwrap();
        assert!(
            sig.is_file(),
            "model.sig is the new file, not the planted link"
        );
    }
}
