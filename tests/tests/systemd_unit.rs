//! The shipped systemd unit: `systemd-analyze verify` accepts it (pointed at the built
//! binary), its hardening rates ≤ 2.0 ("OK") in `systemd-analyze security`, and the example
//! configuration it names holds only options the receiver knows.

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

/// The unit with its `ExecStart` pointed at the binary this test run built, in a temp dir.
fn unit_for_test(dir: &Path) -> PathBuf {
    let text =
        std::fs::read_to_string(repo().join("packaging/systemd/sluice-recv.service")).unwrap();
    let recv = binaries::binaries().recv.display().to_string();
    assert!(text.contains("ExecStart=/usr/bin/sluice-recv "), "{text}");
    let path = dir.join("sluice-recv.service");
    std::fs::write(
        &path,
        text.replace(
            "ExecStart=/usr/bin/sluice-recv ",
            &format!("ExecStart={recv} "),
        ),
    )
    .unwrap();
    path
}

#[test]
#[ignore = "needs systemd-analyze (./test.sh installs it and runs this)"]
fn the_receiver_unit_verifies_and_rates_ok() {
    require::tool("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_for_test(dir.path());
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
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
        .find_map(|l| l.split_once("Overall exposure level for sluice-recv.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");
}

#[test]
fn the_example_configuration_names_only_known_options() {
    let mut cmd = Command::new(&binaries::binaries().recv);
    cmd.arg("--config")
        .arg(repo().join("packaging/config/recv.toml"));
    let got = Proc::spawn("sluice-recv", cmd).finish(Duration::from_secs(20));
    // Its keys are not on this machine: the run stops at the first file it needs, after every
    // option name and value was accepted.
    assert_eq!(got.code(), 2, "{}", got.log);
    assert!(
        got.log.contains("/etc/sluice/") && !got.log.contains("unknown"),
        "{}",
        got.log
    );
}
