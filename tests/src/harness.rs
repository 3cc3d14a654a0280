//! One end-to-end transfer's scaffolding: a temp dir with keys, a source tree, `--out` and
//! `--state`, plus helpers to start a receiver, run a sender and read their summaries.
//!
//! ```text
//!   tmp/keys/{recv,send}/...   keygen output
//!   tmp/src/...                what gets sent
//!   tmp/out/                   receiver --out (must end up equal to src, or hold nothing bad)
//!   tmp/state/                 receiver --state (outside --out, so trees compare cleanly)
//! ```

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::binaries::{self, Finished, Keys, Proc};

/// A temp dir laid out for one transfer; removed on drop unless `SLUICE_TEST_KEEP` is set.
#[derive(Debug)]
pub struct Setup {
    /// The temp dir (kept alive for the test's duration).
    pub tmp: tempfile::TempDir,
    /// Keys from both keygens.
    pub keys: Keys,
    /// Source root.
    pub src: PathBuf,
    /// Receiver `--out`.
    pub out: PathBuf,
    /// Receiver `--state`.
    pub state: PathBuf,
}

impl Setup {
    /// Fresh dirs and keys.
    pub fn new() -> Setup {
        let tmp = tempfile::Builder::new()
            .prefix("sluice-e2e-")
            .tempdir()
            .expect("temp dir");
        let keys = binaries::keygen(&tmp.path().join("keys"));
        let (src, out, state) = (
            tmp.path().join("src"),
            tmp.path().join("out"),
            tmp.path().join("state"),
        );
        for d in [&src, &out] {
            std::fs::create_dir_all(d).expect("creating dirs");
        }
        // The receiver refuses a state directory others could reach.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&state)
            .expect("creating the state dir");
        Setup {
            tmp,
            keys,
            src,
            out,
            state,
        }
    }

    /// Another key set in this temp dir (for wrong-key tests).
    pub fn other_keys(&self, name: &str) -> Keys {
        binaries::keygen(&self.tmp.path().join(name))
    }

    /// Starts a UDP receiver on 127.0.0.1:`port` that exits after `idle_secs` without frames;
    /// returns once its socket is bound.
    pub fn receiver(&self, port: u16, idle_secs: u32, extra: &[&str]) -> Proc {
        self.receiver_with(&self.keys, port, idle_secs, extra)
    }

    /// Like [`receiver`](Self::receiver) with other keys.
    pub fn receiver_with(&self, keys: &Keys, port: u16, idle_secs: u32, extra: &[&str]) -> Proc {
        let link = format!("udp://127.0.0.1:{port}");
        let mut cmd = binaries::receiver_cmd(&link, keys, &self.out, &self.state);
        cmd.arg("--exit-after-idle")
            .arg(idle_secs.to_string())
            .args(["--log-format", "json"])
            .args(extra);
        let mut proc = Proc::spawn("sluice-recv", cmd);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        binaries::wait_bound(&mut proc, addr, Duration::from_secs(20));
        proc
    }

    /// Runs a UDP sender to `to` with `extra` options and `paths`, waiting up to `timeout`.
    pub fn send(
        &self,
        to: SocketAddr,
        extra: &[&str],
        paths: &[&Path],
        timeout: Duration,
    ) -> Finished {
        self.send_with(&self.keys, to, extra, paths, timeout)
    }

    /// Like [`send`](Self::send) with other keys.
    pub fn send_with(
        &self,
        keys: &Keys,
        to: SocketAddr,
        extra: &[&str],
        paths: &[&Path],
        timeout: Duration,
    ) -> Finished {
        let mut proc = self.spawn_sender(keys, to, extra, paths);
        proc.finish(timeout)
    }

    /// Starts a UDP sender without waiting for it.
    pub fn spawn_sender(
        &self,
        keys: &Keys,
        to: SocketAddr,
        extra: &[&str],
        paths: &[&Path],
    ) -> Proc {
        let link = format!("udp://{to}");
        let mut cmd = binaries::sender_cmd(&link, keys);
        cmd.args(["--log-format", "json"]).args(extra).args(paths);
        Proc::spawn("sluice-send", cmd)
    }
}

impl Default for Setup {
    fn default() -> Self {
        Setup::new()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if std::env::var_os("SLUICE_TEST_KEEP").is_some() {
            eprintln!("keeping {}", self.tmp.path().display());
            let _ = std::mem::replace(
                &mut self.tmp,
                tempfile::tempdir().expect("placeholder temp dir"),
            )
            .keep();
        }
    }
}

/// Receiver counters read from its JSON summary line, by [`DropReason`] name and summary key.
///
/// [`DropReason`]: sluice_protocol::counters::DropReason
#[derive(Debug)]
pub struct Summary(pub serde_json::Value);

impl Summary {
    /// The summary line of `log` (the last JSON line naming `key`), if any.
    pub fn find(log: &str, key: &str) -> Option<Summary> {
        binaries::json_summary(log, key).map(Summary)
    }

    /// A counter anywhere in the summary; 0 when absent (counters are omitted when zero by
    /// some serialisers).
    pub fn get(&self, key: &str) -> u64 {
        binaries::find_u64(&self.0, key).unwrap_or(0)
    }
}

/// Panics with `log` unless it contains `phrase`.
pub fn assert_logged(log: &str, phrase: &str) {
    assert!(
        log.contains(phrase),
        "expected {phrase:?} in the log:\n{log}"
    );
}

/// Panics with the finished process's log unless it exited with `code`.
pub fn assert_exit(f: &Finished, code: i32, who: &str) {
    assert_eq!(f.code(), code, "{who} exited {}; log:\n{}", f.status, f.log);
}

/// What a finished command wrote, standard output then standard error, for messages.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
