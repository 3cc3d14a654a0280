//! The shipped systemd units (`sluice-recv.service`, `sluice-send-watch.service`):
//! `systemd-analyze verify` accepts each (pointed at the built binary), its hardening rates
//! ≤ 2.0 ("OK") in `systemd-analyze security`, and the example configuration each names holds
//! only options its daemon knows.

// Test helpers panic on failure by design, like the tests that call them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sluice_tests::binaries::{self, Proc};
use sluice_tests::require;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The unit `name` with its `ExecStart` binary (`/usr/bin/<binary>`) pointed at `built`, in
/// a temp dir.
fn unit_for_test(dir: &Path, name: &str, binary: &str, built: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("packaging/systemd").join(name)).unwrap();
    let shipped = format!("ExecStart=/usr/bin/{binary} ");
    assert!(text.contains(&shipped), "{text}");
    let path = dir.join(name);
    std::fs::write(
        &path,
        text.replace(&shipped, &format!("ExecStart={} ", built.display())),
    )
    .unwrap();
    path
}

/// `systemd-analyze verify` accepts the unit and `security` rates it ≤ 2.0.
fn verifies_and_rates_ok(name: &str, binary: &str, built: &Path) {
    require::tool("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_test(dir.path(), name, binary, built);
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify {name}: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split_once(&format!("Overall exposure level for {name}: ")))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(score <= 2.0, "{name}: exposure {score} > 2.0:\n{text}");
}

#[test]
#[ignore = "needs systemd-analyze (./test.sh installs it and runs this)"]
fn the_receiver_unit_verifies_and_rates_ok() {
    verifies_and_rates_ok(
        "sluice-recv.service",
        "sluice-recv",
        &binaries::binaries().recv,
    );
}

#[test]
#[ignore = "needs systemd-analyze (./test.sh installs it and runs this)"]
fn the_watch_unit_verifies_and_rates_ok() {
    verifies_and_rates_ok(
        "sluice-send-watch.service",
        "sluice-send",
        &binaries::binaries().send,
    );
}

/// The example configuration for `args` runs up to the first key file it needs (not on this
/// machine), after every option name and value was accepted.
fn names_only_known_options(binary: &Path, args: &[&str], config: &str) {
    let mut cmd = Command::new(binary);
    cmd.args(args)
        .arg("--config")
        .arg(repo().join("packaging/config").join(config));
    let got = Proc::spawn(config, cmd).finish(Duration::from_secs(20));
    assert_eq!(got.code(), 2, "{}", got.log);
    assert!(
        got.log.contains("/etc/sluice/") && !got.log.contains("unknown"),
        "{}",
        got.log
    );
}

#[test]
fn the_example_configurations_name_only_known_options() {
    let built = binaries::binaries();
    names_only_known_options(&built.recv, &[], "recv.toml");
    names_only_known_options(&built.send, &["watch"], "send-watch.toml");
}
