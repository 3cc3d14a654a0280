//! `sluice-inspect FILE|DIR...`: what the gate decides of each file, which formats it checked
//! it as and what each found (pickle imports, tensors and dtypes, GGUF chat templates, ONNX
//! operator domains), so a reviewer on the low side sees what the receiver will decide; the
//! receiver keeps the same report beside a quarantined file (`NAME.report.json`). With
//! `--model-key PEM` or `--model-ca PEM`, a directory argument is also a signed model: its
//! `model.sig` (OpenSSF model signing) must verify with one of the keys, or carry a
//! certificate issued under one of the CAs, and list exactly its files.
//! Exit 0 when everything is admitted, 1 when something is refused, 2 on a usage error.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use sha2::{Digest, Sha256};
use sluice_inspect::policy::Policy;
use sluice_inspect::report::Report;
use sluice_inspect::signing::{self, TrustedKey};
use sluice_sender::inspect_cli::Args;

fn main() -> ExitCode {
    let args = Args::parse();
    let policy = match &args.policy {
        Some(path) => Policy::load(path),
        None => Policy::parse("quarantine = \"quarantine\"\n"),
    };
    let policy = match policy {
        Ok(p) => p,
        Err(e) => {
            eprintln!("sluice-inspect: {e}");
            return ExitCode::from(2);
        }
    };
    let mut keys = Vec::new();
    type Parse = fn(&str, &str) -> Result<TrustedKey, String>;
    let trust = (args.model_keys.iter())
        .map(|p| (p, "--model-key", TrustedKey::from_pem as Parse))
        .chain(
            (args.model_cas.iter()).map(|p| (p, "--model-ca", TrustedKey::from_ca_pem as Parse)),
        );
    for (path, flag, parse) in trust {
        let key = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|pem| parse(&path.display().to_string(), &pem));
        match key {
            Ok(key) => keys.push(key),
            Err(e) => {
                eprintln!("sluice-inspect: {flag} {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    let mut refused = false;
    for root in &args.paths {
        if !keys.is_empty() && root.is_dir() {
            let verdict = signature(root, &keys);
            refused |= verdict.is_err();
            print_signature(root, &verdict, args.json);
        }
        let mut files = Vec::new();
        if let Err(e) = walk(root, root, &mut files) {
            eprintln!("sluice-inspect: {}: {e}", root.display());
            return ExitCode::from(2);
        }
        for (path, name) in files {
            let report = report(&policy, &path, &name);
            refused |= !report.admitted();
            print(&report, args.json);
        }
    }
    ExitCode::from(u8::from(refused))
}

/// The files under `path` (itself if a file), each with its name relative to `root`'s parent
/// for a file argument, or to `root` for a directory.
fn walk(root: &Path, path: &Path, files: &mut Vec<(PathBuf, String)>) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            walk(root, &entry.path(), files)?;
        }
    } else {
        let name = if path == root {
            path.file_name().map(|n| n.to_string_lossy().into_owned())
        } else {
            path.strip_prefix(root)
                .ok()
                .map(|p| p.to_string_lossy().into_owned())
        };
        files.push((path.to_path_buf(), name.unwrap_or_default()));
    }
    Ok(())
}

/// Whether the model directory `dir` is signed by one of `keys`: its `model.sig` verified
/// and holding exactly its files (`signed by KEY`), or why not.
fn signature(dir: &Path, keys: &[TrustedKey]) -> Result<String, String> {
    let mut bundle = Vec::new();
    open_regular(&dir.join("model.sig"))
        .map_err(|_| "model signature missing".to_string())?
        .0
        .take(signing::MAX_BUNDLE as u64 + 1)
        .read_to_end(&mut bundle)
        .map_err(|e| format!("model.sig: {e}"))?;
    let signed = signing::verify(&bundle, keys)?;
    let mut files = Vec::new();
    walk(dir, dir, &mut files).map_err(|e| e.to_string())?;
    let mut present = std::collections::BTreeMap::new();
    for (path, name) in files {
        let (mut file, _) = open_regular(&path).map_err(|e| format!("{name}: {e}"))?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher).map_err(|e| format!("{name}: {e}"))?;
        present.insert(name, hasher.finalize().into());
    }
    signing::check_files(&signed, &present, "model.sig")?;
    Ok(signed.signer)
}

fn print_signature(dir: &Path, verdict: &Result<String, String>, json: bool) {
    match (verdict, json) {
        (Ok(signer), true) => println!(
            "{}",
            serde_json::json!({"path": dir.to_string_lossy(), "verdict": "admitted", "signer": signer})
        ),
        (Err(reason), true) => println!(
            "{}",
            serde_json::json!({"path": dir.to_string_lossy(), "verdict": "refused", "reason": reason})
        ),
        (Ok(signer), false) => println!("{}: model signed by {signer}", dir.display()),
        (Err(reason), false) => println!("{}: refused: {reason}", dir.display()),
    }
}

/// `path` opened for reading if it is a regular file: never through a symlink, never waiting
/// on a FIFO, and judged by `fstat` on the very fd read (a file swapped after the listing is
/// seen as what it is).
fn open_regular(path: &Path) -> Result<(File, std::fs::Metadata), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    Ok((file, meta))
}

/// The gate's report on the file at `path`, named `name` (as the receiver names it).
fn report(policy: &Policy, path: &Path, name: &str) -> Report {
    match open_regular(path) {
        Ok((mut file, meta)) => {
            let mut report = policy.report(&mut file, name, meta.len());
            report.path = path.to_string_lossy().into_owned();
            report
        }
        Err(reason) => Report {
            path: path.to_string_lossy().into_owned(),
            size: 0,
            verdict: "refused",
            reason: Some(reason),
            formats: Vec::new(),
            findings: Vec::new(),
            findings_dropped: 0,
        },
    }
}

fn print(report: &Report, json: bool) {
    if json {
        match serde_json::to_string(report) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("sluice-inspect: {}: {e}", report.path),
        }
    } else {
        println!("{}", report.text());
    }
}
