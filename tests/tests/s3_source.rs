//! `sluice-send s3://BUCKET/PREFIX` against a real S3 server (Garage on 127.0.0.1, see
//! `sluice_tests::garage`): a prefix arrives as a tree named as `cp -r` would name it, an
//! object overwritten while it is being sent is refused and never delivered as a mix, hostile
//! keys are named and skipped with nothing landing outside `--out`, an approval of objects
//! sends them as checked and refuses one changed since, and a wrong key stops the sender at
//! start before any frame.
//! Objects are put with curl's own SigV4 (`--aws-sigv4`), the one client here that writes
//! keys as given (`..`, control characters, a trailing `/`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sluice_tests::binaries::{self, binaries, free_udp_port, Proc};
use sluice_tests::garage::Garage;
use sluice_tests::harness::{assert_exit, Setup};
use sluice_tests::require;

const BUCKET: &str = "sluice-src";

/// PUTs `bytes` at `key` (given URL-encoded, sent as is: `..` and a trailing `/` included),
/// signed by curl's own SigV4, so keys no client library would write can be made.
fn put(garage: &Garage, key: &str, bytes: &[u8]) {
    require::tool("curl", "curl");
    let file = garage.dir.path().join("upload");
    std::fs::write(&file, bytes).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--path-as-is", "-X", "PUT"])
        .args(["--aws-sigv4", &format!("aws:amz:{}:s3", garage.region)])
        .args(["--user", &format!("{}:{}", garage.key_id, garage.secret)])
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("{}/{}/{key}", garage.endpoint, garage.bucket))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "PUT {key}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deterministic bytes that differ by `seed`.
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// A sender of `paths` to `to` with the store's variables set.
fn sender(s: &Setup, garage: &Garage, to: SocketAddr, extra: &[&str], paths: &[&str]) -> Proc {
    let mut cmd = binaries::sender_cmd(&format!("udp://{to}"), &s.keys);
    garage.env(&mut cmd);
    cmd.args(["--log-format", "json"]).args(extra).args(paths);
    Proc::spawn("sluice-send", cmd)
}

/// Every file under `root`, by its path relative to `root`.
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e.path().strip_prefix(root).unwrap();
            (
                rel.to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn text(o: &Output) -> String {
    sluice_tests::harness::output_text(o)
}

#[test]
#[ignore = "needs Garage, a test S3 server (./test.sh installs it and runs this)"]
fn a_prefix_arrives_as_a_tree_and_a_key_as_one_file() {
    let garage = Garage::start(BUCKET);
    let s = Setup::new();
    let mut expected = BTreeMap::new();
    for (key, len, seed) in [
        ("runs/eval7/report.pdf", 3_000, 1),
        ("runs/eval7/metrics/a.json", 40, 2),
        ("runs/eval7/metrics/deep/er/b.csv", 300_000, 3),
        // Sorts before `metrics/` in a listing ('.' < '/'), after it in a walk.
        ("runs/eval7/metrics.txt", 10, 4),
        ("runs/eval7/empty", 0, 5),
        // Above the sender's range size and the receiver's part size.
        ("runs/eval7/weights.bin", (20 << 20) + 12_345, 6),
    ] {
        let content = bytes(len, seed);
        put(&garage, key, &content);
        let rel = key.strip_prefix("runs/").unwrap();
        expected.insert(rel.to_string(), content);
    }
    // Beside the prefix, not under it: never sent.
    put(&garage, "runs/eval7x/other", b"not this");
    put(&garage, "runs/eval8/report.pdf", b"nor this");
    let single = bytes(1_000, 7);
    put(&garage, "runs/eval8/summary.txt", &single);
    expected.insert("summary.txt".into(), single);

    let port = free_udp_port();
    let mut recv = s.receiver(port, 5, &[]);
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let sent = sender(
        &s,
        &garage,
        to,
        &["--rate", "50MB"],
        &[
            &format!("s3://{BUCKET}/runs/eval7"),
            &format!("s3://{BUCKET}/runs/eval8/summary.txt"),
        ],
    )
    .finish(Duration::from_secs(120));
    assert_exit(&sent, 0, "sluice-send");
    let got = recv.finish(Duration::from_secs(120));
    assert_exit(&got, 0, "sluice-recv");
    let arrived = files(&s.out);
    assert_eq!(
        arrived.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{}",
        sent.log
    );
    for (path, content) in &expected {
        assert!(arrived[path] == *content, "{path}: other bytes");
    }
    // Directories implied by the keys arrive as directories, before their contents.
    assert!(s.out.join("eval7/metrics/deep/er").is_dir());
    let order: Vec<usize> = ["\"eval7\"", "\"eval7/metrics\"", "\"eval7/metrics/a.json\""]
        .iter()
        .map(|p| {
            sent.log
                .find(p)
                .unwrap_or_else(|| panic!("{p}: {}", sent.log))
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{}", sent.log);
}

#[test]
#[ignore = "needs Garage, a test S3 server (./test.sh installs it and runs this)"]
fn an_object_overwritten_while_it_is_sent_is_refused_never_mixed() {
    let garage = Garage::start(BUCKET);
    let s = Setup::new();
    let len = 48 << 20;
    put(&garage, "x/big/huge.bin", &bytes(len, 1));
    put(&garage, "x/big/small.txt", b"small and whole");
    let port = free_udp_port();
    let mut recv = s.receiver(port, 5, &[]);
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    // 48 MiB at 4 MB/s: about 12 s on the link, read a few ranges ahead of it.
    let mut send = sender(
        &s,
        &garage,
        to,
        &["--rate", "4MB"],
        &[&format!("s3://{BUCKET}/x/big")],
    );
    let started = Instant::now();
    while !send.log().contains("\"sending\"") {
        assert!(
            send.running() && started.elapsed() < Duration::from_secs(60),
            "{}",
            send.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Listed and its first range read; the rest is read as the link takes it.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(send.running(), "{}", send.log());
    put(&garage, "x/big/huge.bin", &bytes(len, 2));
    let sent = send.finish(Duration::from_secs(120));
    let got = recv.finish(Duration::from_secs(120));
    assert_exit(&sent, 1, "sluice-send");
    assert!(
        sent.log
            .contains("changed in the store since it was listed"),
        "{}",
        sent.log
    );
    // Its data blocks came, its manifest never: nothing of it is delivered.
    assert_exit(&got, 3, "sluice-recv");
    assert!(got.log.contains("manifest never arrived"), "{}", got.log);
    let arrived = files(&s.out);
    assert_eq!(
        arrived.keys().collect::<Vec<_>>(),
        ["big/small.txt"],
        "{}",
        got.log
    );
    assert!(!s.out.join("big/huge.bin").exists());
}

#[test]
#[ignore = "needs Garage, a test S3 server (./test.sh installs it and runs this)"]
fn hostile_keys_are_named_and_skipped_and_nothing_lands_outside_out() {
    let garage = Garage::start(BUCKET);
    let s = Setup::new();
    put(&garage, "h/ok.txt", b"fine");
    put(&garage, "h/sub/also.txt", b"fine too");
    put(&garage, "h/a/../../etc/x", b"escape");
    put(&garage, "h/../../../escape", b"escape");
    put(&garage, "h/bad%01name", b"control");
    put(&garage, "h/marker/", b"");
    put(&garage, "h/sub//double", b"empty part");
    let port = free_udp_port();
    let mut recv = s.receiver(port, 5, &[]);
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let sent = sender(&s, &garage, to, &[], &[&format!("s3://{BUCKET}/h")])
        .finish(Duration::from_secs(120));
    let got = recv.finish(Duration::from_secs(120));
    // As local entries the receiver would refuse: named, the rest sent, exit 1.
    assert_exit(&sent, 1, "sluice-send");
    assert_exit(&got, 0, "sluice-recv");
    for named in [
        "h/a/../../etc/x",
        "bad\\\\u{0001}name",
        "h/marker/",
        "directory marker",
        "h/sub//double",
    ] {
        assert!(sent.log.contains(named), "{named} not named:\n{}", sent.log);
    }
    assert!(
        !sent.log.contains("bad\u{1}name"),
        "raw control character logged"
    );
    let arrived = files(&s.out);
    assert_eq!(
        arrived.keys().collect::<Vec<_>>(),
        ["h/ok.txt", "h/sub/also.txt"],
        "{}",
        sent.log
    );
    assert!(!s.out.join("h/marker").exists());
    for outside in ["etc", "escape", "h/etc"] {
        assert!(!s.tmp.path().join(outside).exists(), "{outside}");
        assert!(!s.out.join(outside).exists(), "{outside}");
    }
}

#[test]
#[ignore = "needs Garage, a test S3 server (./test.sh installs it and runs this)"]
fn an_object_changed_after_approval_is_refused() {
    let garage = Garage::start(BUCKET);
    let s = Setup::new();
    put(&garage, "exports/q3/eval.json", b"{\"accuracy\": 0.91}");
    put(&garage, "exports/q3/data/summary.txt", b"all good");
    let dir = s.tmp.path();
    let approver = dir.join("approver");
    let made = Command::new(&binaries().send)
        .arg("keygen")
        .arg(&approver)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    std::fs::write(
        dir.join("approvals.toml"),
        "threshold = 1\napprovers = [\"approver/sender.pub\"]\n",
    )
    .unwrap();
    let url = format!("s3://{BUCKET}/exports/q3");
    let approve = |args: &[&str]| {
        let mut cmd = Command::new(&binaries().approve);
        garage.env(&mut cmd);
        cmd.current_dir(dir).args(args).output().unwrap()
    };
    let made = approve(&["request", &url, "--purpose", "q3", "--out", "req.toml"]);
    assert!(made.status.success(), "{}", text(&made));
    let request = std::fs::read_to_string(dir.join("req.toml")).unwrap();
    assert!(
        request.contains("q3/eval.json") && request.contains("q3/data/summary.txt"),
        "{request}"
    );
    let signed = approve(&["sign", "req.toml", "--key", "approver/sender.key"]);
    assert!(signed.status.success(), "{}", text(&signed));
    let checked = approve(&["check", "req.toml", "--policy", "approvals.toml", &url]);
    assert!(checked.status.success(), "{}", text(&checked));
    let approval = [
        "--approval",
        "req.toml",
        "--approval-policy",
        "approvals.toml",
    ];

    // Unchanged: the objects listed once, hashed and checked, then sent as listed.
    let port = free_udp_port();
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let sink = UdpSocket::bind(to).unwrap();
    sink.set_nonblocking(true).unwrap();
    let mut cmd = binaries::sender_cmd(&format!("udp://{to}"), &s.keys);
    garage.env(&mut cmd);
    let approved = cmd
        .current_dir(dir)
        .args(approval)
        .arg(&url)
        .output()
        .unwrap();
    assert_eq!(approved.status.code(), Some(0), "{}", text(&approved));
    assert!(
        text(&approved).contains("export approved"),
        "{}",
        text(&approved)
    );
    let mut buf = [0u8; 2048];
    assert!(sink.recv(&mut buf).is_ok(), "no frame left");
    drop(sink);

    // Same size, other bytes, after approval.
    put(&garage, "exports/q3/data/summary.txt", b"all bad!");
    let port = free_udp_port();
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let sink = UdpSocket::bind(to).unwrap();
    sink.set_nonblocking(true).unwrap();
    let mut cmd = binaries::sender_cmd(&format!("udp://{to}"), &s.keys);
    garage.env(&mut cmd);
    let refused = cmd
        .current_dir(dir)
        .args(approval)
        .arg(&url)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("changed since approval: q3/data/summary.txt"),
        "{}",
        text(&refused)
    );
    assert!(sink.recv(&mut buf).is_err(), "a frame left unapproved");
}

#[test]
#[ignore = "needs Garage, a test S3 server (./test.sh installs it and runs this)"]
fn a_wrong_secret_stops_the_sender_at_start_before_any_frame() {
    let garage = Garage::start(BUCKET);
    let s = Setup::new();
    put(&garage, "w/file.txt", b"x");
    let port = free_udp_port();
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let sink = UdpSocket::bind(to).unwrap();
    sink.set_nonblocking(true).unwrap();
    let mut cmd = binaries::sender_cmd(&format!("udp://{to}"), &s.keys);
    garage.env(&mut cmd);
    cmd.env("AWS_SECRET_ACCESS_KEY", "0".repeat(64));
    cmd.arg(format!("s3://{BUCKET}/w"));
    let wrong = cmd.output().unwrap();
    assert_eq!(wrong.status.code(), Some(2), "{}", text(&wrong));
    let log = text(&wrong);
    assert!(
        log.contains(&format!("access denied for key {}", garage.key_id)),
        "{log}"
    );
    assert_eq!(log.trim().lines().count(), 1, "one line: {log}");
    assert!(!log.contains(&garage.secret), "{log}");
    let mut buf = [0u8; 2048];
    assert!(sink.recv(&mut buf).is_err(), "a frame left");

    let mut cmd = binaries::sender_cmd(&format!("udp://{to}"), &s.keys);
    garage.env(&mut cmd);
    let missing = cmd.arg("s3://no-such-bucket/w").output().unwrap();
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
    assert!(
        text(&missing).contains("bucket no-such-bucket not found"),
        "{}",
        text(&missing)
    );
    // The outbox daemon does not take a bucket.
    let mut cmd = binaries::watch_cmd(&format!("udp://{to}"), &s.keys);
    let watch = cmd
        .args(["--outbox", "s3://b/x", "--state"])
        .arg(&s.state)
        .output()
        .unwrap();
    assert_eq!(watch.status.code(), Some(2), "{}", text(&watch));
    assert!(text(&watch).contains("one-shot"), "{}", text(&watch));
}
