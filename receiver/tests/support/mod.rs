//! The receiver's own test rig: an in-process receiver on loopback, fed by the shared frame
//! producer (`sluice_tests::producer`), which builds what a real sender never would.

#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_common::link::LinkSpec;
use sluice_receiver::{Options, Receiver, Report};
pub use sluice_tests::producer::{all, bytes, generate_keys, send, Item, Keys, Producer};

/// Temp dirs and keys for one receiver.
pub struct Rig {
    pub tmp: tempfile::TempDir,
    pub keys: Keys,
    pub out: PathBuf,
    /// `None`: the default `<out>/.sluice-state`.
    pub state: Option<PathBuf>,
}

impl Rig {
    pub fn new() -> Rig {
        let tmp = tempfile::Builder::new()
            .prefix("sluice-recv-test-")
            .tempdir()
            .unwrap();
        let keys = generate_keys(&tmp.path().join("keys"));
        let out = tmp.path().join("out");
        Rig {
            tmp,
            keys,
            out,
            state: None,
        }
    }

    /// Options for an in-process receiver on an ephemeral loopback port.
    pub fn options(&self, idle: Duration) -> Options {
        let link: LinkSpec = "udp://127.0.0.1:0".parse().unwrap();
        let mut options = Options::new(
            link,
            self.keys.receiver_key.clone(),
            vec![self.keys.sender_pub.clone()],
            self.keys.link_key.clone(),
            self.out.clone(),
        );
        options.state = self.state.clone();
        options.exit_after_idle = Some(idle);
        options
    }

    /// Starts an in-process receiver; returns its address and the running task.
    pub async fn start(&self, options: Options) -> Running {
        let receiver = Receiver::bind(options).await.unwrap();
        let addr = receiver.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(receiver.run(async move {
            let _ = stopped.await;
        }));
        Running {
            addr,
            task,
            stop: Some(stop),
        }
    }

    /// Entries under `--out` (relative paths), the state directory left out.
    pub fn published(&self) -> Vec<String> {
        let mut found = Vec::new();
        walk(&self.out, &self.out, &mut found);
        found.sort();
        found
    }
}

fn walk(root: &Path, dir: &Path, found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .to_string();
        if rel == ".sluice-state" {
            continue;
        }
        found.push(rel);
        if path.is_dir() && !path.is_symlink() {
            walk(root, &path, found);
        }
    }
}

/// A receiver running in this process.
pub struct Running {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<Result<Report, sluice_receiver::Error>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Running {
    /// Sends `frames` from a blocking thread (the receiver keeps the runtime).
    pub async fn send(&self, frames: Vec<Vec<u8>>) {
        let to = self.addr;
        tokio::task::spawn_blocking(move || send(to, &frames))
            .await
            .unwrap();
    }

    /// Waits for the receiver to stop by itself (`--exit-after-idle`).
    pub async fn finish(mut self) -> Report {
        // Dropping the stop handle would shut the receiver down: keep it until the end.
        let _keep = self.stop.take();
        self.task.await.unwrap().unwrap()
    }

    /// Asks the receiver to shut down (as SIGTERM would) and waits for its report.
    pub async fn shutdown(mut self) -> Report {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap().unwrap()
    }
}

/// The reasons of every failure in a report.
pub fn reasons(report: &Report) -> Vec<String> {
    report.failures.iter().map(|f| f.reason.clone()).collect()
}
