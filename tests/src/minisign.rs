//! Approvers' keys and signatures made with Debian's stock `minisign`, as approvers who never
//! installed Sluice make them (the approval tests need the tool: `require::tool`).

use std::path::Path;
use std::process::Command;

fn run(dir: &Path, args: &[&str]) {
    crate::require::tool("minisign", "minisign");
    let out = Command::new("minisign")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("minisign: {e}"));
    assert!(
        out.status.success(),
        "minisign {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A key pair without a password: `dir/NAME.pub` and `dir/NAME.key`.
pub fn keypair(dir: &Path, name: &str) {
    let (public, secret) = (format!("{name}.pub"), format!("{name}.key"));
    run(dir, &["-G", "-W", "-p", &public, "-s", &secret]);
}

/// Signs `dir/request` with `dir/key` into `dir/sig`.
pub fn sign(dir: &Path, key: &str, request: &str, sig: &str) {
    run(dir, &["-S", "-s", key, "-m", request, "-x", sig]);
}

/// The base64 key line of `dir/NAME.pub`.
pub fn key_line(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join(format!("{name}.pub")))
        .unwrap_or_else(|e| panic!("{name}.pub: {e}"));
    text.lines().nth(1).unwrap_or_default().to_string()
}

/// The key ID of `dir/NAME.pub` as Sluice prints it (16 upper-case hex digits).
pub fn key_id(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join(format!("{name}.pub")))
        .unwrap_or_else(|e| panic!("{name}.pub: {e}"));
    let id = text
        .lines()
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_default();
    let id = u64::from_str_radix(id, 16).unwrap_or_else(|e| panic!("{e}: {text}"));
    format!("{id:016X}")
}
