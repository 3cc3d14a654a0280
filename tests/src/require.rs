//! What a test needs from the machine beyond cargo: a system tool, root, a firmware image.
//!
//! A test that needs any of these is marked `#[ignore = "needs …"]`, so a plain `cargo test`
//! reports it as *ignored*, never as passed. `./test.sh` installs the tools and runs with
//! `--include-ignored`; a test that then still lacks what it needs **fails** here, naming the
//! package to install. There is no third way: no test returns early and counts as passed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Fails the test unless `command` is on `PATH`; `package` is the Debian package providing it.
pub fn tool(command: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {command}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "this test needs `{command}`: apt-get install {package} (./test.sh installs it)"
    );
}

/// Fails the test unless it runs as root; `why` says what root is for.
pub fn root(why: &str) {
    assert!(is_root(), "this test needs root: {why}");
}

/// Whether the process runs as (effective) root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

/// The firmware board image, built by `firmware/build-board.sh` on first use in this process
/// (cargo makes that a no-op when it is up to date, so a test never runs a stale image).
/// Fails the test if the build fails, naming the script.
pub fn board_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware/build-board.sh");
        let out = Command::new(&script)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "firmware/build-board.sh failed (it needs `rustup target add thumbv7m-none-eabi`):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let image = crate::qemu::board_image();
        assert!(
            image.exists(),
            "firmware/build-board.sh left no image at {}",
            image.display()
        );
        image
    })
}

/// A Python script run by the system interpreter as the unprivileged user `nobody` (uid and
/// gid 65534, no other groups): the local attacker of the race tests. The caller adds the
/// script's arguments; the test needs root, `setpriv` and `/usr/bin/python3`.
pub fn python_as_nobody(script: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "/usr/bin/python3",
    ])
    .arg(script);
    cmd
}

/// The number a racer script printed after `word` (`swaps 1234`), 0 if none.
pub fn reported(log: &str, word: &str) -> u64 {
    log.split_whitespace()
        .skip_while(|w| *w != word)
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
