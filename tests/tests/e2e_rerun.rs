//! Re-runs and replays with the real binaries: a sender killed mid-transfer and run again, and
//! the recorded frames of an earlier transfer replayed at the receiver during a new one.
//!
//! ```text
//!   sluice-send ──▶ Recorder (keeps every datagram, forwards it) ──▶ sluice-recv
//!   replay thread ─────────── the recorded datagrams again ────────▶ sluice-recv
//! ```

// Test helpers panic on failure by design, like the tests that call them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_tests::binaries::free_udp_port;
use sluice_tests::harness::{assert_exit, Setup, Summary};
use sluice_tests::tree::{self, Check, TreeSpec};

const SEND_TIMEOUT: Duration = Duration::from_secs(180);
const RECV_TIMEOUT: Duration = Duration::from_secs(60);

/// A UDP forwarder on loopback that keeps a copy of every datagram it passes on.
struct Recorder {
    addr: SocketAddr,
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    fn start(to: SocketAddr) -> Recorder {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let frames = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (kept, stopped) = (frames.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    let _ = socket.send_to(&buf[..n], to);
                    kept.lock().unwrap().push(buf[..n].to_vec());
                }
            }
        });
        Recorder {
            addr,
            frames,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops forwarding; returns what passed through.
    fn finish(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.frames.lock().unwrap())
    }
}

/// Inode and mtime of every file under `root`, by relative path.
fn identities(root: &Path) -> std::collections::BTreeMap<PathBuf, (u64, i64)> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let meta = e.metadata().unwrap();
            (
                e.path().strip_prefix(root).unwrap().to_path_buf(),
                (meta.ino(), meta.mtime()),
            )
        })
        .collect()
}

fn tree_at(s: &Setup, name: &str, big: u64, seed: u64) -> PathBuf {
    let root = s.src.join(name);
    tree::make_tree(
        &root,
        TreeSpec {
            big_bytes: big,
            segment_edges: false,
            small_scale: 1,
            seed,
        },
    )
    .unwrap();
    root
}

/// Transfer A is recorded and delivered. During transfer B (a new sender run, other files)
/// all of A's frames are replayed at the receiver: B arrives intact, A's files are recognised
/// as delivered and not written again, and nothing else appears in `--out`.
#[test]
fn frames_of_an_earlier_transfer_replayed_during_a_new_one() {
    let s = Setup::new();
    let a = tree_at(&s, "a", 1 << 20, 11);
    let b = tree_at(&s, "b", 1 << 20, 12);
    let port = free_udp_port();
    let receiver: SocketAddr = ([127, 0, 0, 1], port).into();

    let mut recv = s.receiver(port, 3, &[]);
    let recorder = Recorder::start(receiver);
    let sent = s.send(recorder.addr, &["--rate", "10MB"], &[&a], SEND_TIMEOUT);
    assert_exit(&sent, 0, "sluice-send (a)");
    let got = recv.finish(RECV_TIMEOUT);
    assert_exit(&got, 0, "sluice-recv (a)");
    let recorded = recorder.finish();
    assert!(recorded.len() > 100, "{} frames recorded", recorded.len());
    tree::compare(&a, &s.out.join("a"), Check::ALL).unwrap();
    let a_before = identities(&s.out.join("a"));

    let mut recv = s.receiver(port, 3, &[]);
    let replay = std::thread::spawn(move || {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        for frame in &recorded {
            socket.send_to(frame, receiver).unwrap();
            std::thread::sleep(Duration::from_micros(200));
        }
        recorded.len()
    });
    let sent = s.send(receiver, &["--rate", "10MB"], &[&b], SEND_TIMEOUT);
    assert_exit(&sent, 0, "sluice-send (b)");
    let replayed = replay.join().unwrap();
    let got = recv.finish(RECV_TIMEOUT);
    assert_exit(&got, 0, "sluice-recv (b, with a replayed)");
    tree::compare(&b, &s.out.join("b"), Check::ALL)
        .unwrap_or_else(|d| panic!("b differs:\n{d}\n{}", got.log));
    assert_eq!(
        identities(&s.out.join("a")),
        a_before,
        "a replay rewrote a's files"
    );
    let mut top: Vec<String> = std::fs::read_dir(&s.out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".sluice"))
        .collect();
    top.sort();
    assert_eq!(top, ["a", "b"]);
    let summary = Summary::find(&got.log, "objects_already_delivered").expect("a summary");
    assert!(
        summary.get("objects_already_delivered") > 0,
        "{replayed} frames replayed, none recognised as delivered:\n{}",
        got.log
    );
    assert_eq!(summary.get("objects_failed"), 0, "{}", got.log);
}

/// A sender SIGKILLed mid-transfer leaves only complete, correct files in `--out`; running it
/// again (a new session) delivers everything.
#[test]
fn a_killed_sender_run_again_completes_the_transfer() {
    let s = Setup::new();
    let root = tree_at(&s, "data", 8 << 20, 13);
    let port = free_udp_port();
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut recv = s.receiver(port, 4, &[]);
    let mut sender = s.spawn_sender(&s.keys, to, &["--rate", "4MB"], &[&root]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while tree::count_files(&s.out) < 2 {
        assert!(
            Instant::now() < deadline,
            "nothing arrived:\n{}",
            recv.log()
        );
        assert!(
            sender.running(),
            "sender finished before the kill:\n{}",
            sender.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    sender.kill();
    assert!(
        !s.out.join("data/big.bin").exists(),
        "the transfer was complete before the kill"
    );
    tree::published_files_are_intact(&s.src, &s.out).unwrap();

    let sent = s.send(to, &["--rate", "20MB"], &[&root], SEND_TIMEOUT);
    assert_exit(&sent, 0, "sluice-send, run again");
    let got = recv.finish(RECV_TIMEOUT);
    tree::compare(&root, &s.out.join("data"), Check::ALL)
        .unwrap_or_else(|d| panic!("trees differ:\n{d}\nreceiver log:\n{}", got.log));
    // The killed run's unfinished objects are reported incomplete (their content came again
    // under the new session); nothing else failed.
    let summary = Summary::find(&got.log, "objects_failed").expect("a summary");
    if summary.get("objects_failed") > 0 {
        assert_exit(&got, 3, "sluice-recv");
        for line in got.log.lines().filter(|l| l.contains("object failed")) {
            assert!(
                line.contains("incomplete") || line.contains("manifest never arrived"),
                "unexpected failure: {line}"
            );
        }
    } else {
        assert_exit(&got, 0, "sluice-recv");
    }
}
