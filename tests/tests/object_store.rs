//! `sluice-recv --out s3://BUCKET/PREFIX` against a real S3 server (Garage on 127.0.0.1, see
//! `sluice_tests::garage`): a tree arrives with every object's bytes and SHA-256 metadata
//! right, a listing taken all along never shows a partial object, and a wrong key, a missing
//! bucket or an unreachable endpoint stop the receiver at start with one clear line (exit 2).
//! The store's failures: a receiver killed in the middle of a multipart upload leaves no
//! object and, once restarted, no unfinished upload and the whole object; a store down in the
//! middle of a run holds files back until it returns; a receiver stopped while it is down keeps
//! them for its next start.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_tests::binaries::{self, free_udp_port, Proc};
use sluice_tests::garage::Garage;
use sluice_tests::harness::{assert_exit, Setup};
use sluice_tests::tree::{self, TreeSpec};

/// A receiver delivering to `out` (an `s3://` URL) with `garage`'s key in the environment,
/// exiting after 5 s without frames.
fn receiver(s: &Setup, garage: &Garage, out: &str, port: u16, fix: impl Fn(&mut Command)) -> Proc {
    daemon(s, garage, out, port, |cmd| {
        cmd.args(["--exit-after-idle", "5"]);
        fix(cmd);
    })
}

/// A receiver delivering to `out` until it is stopped.
fn daemon(s: &Setup, garage: &Garage, out: &str, port: u16, fix: impl Fn(&mut Command)) -> Proc {
    let link = format!("udp://127.0.0.1:{port}");
    let mut cmd = binaries::receiver_cmd(&link, &s.keys, Path::new(out), &s.state);
    garage.env(&mut cmd);
    cmd.args(["--log-format", "json"]);
    fix(&mut cmd);
    Proc::spawn("sluice-recv", cmd)
}

/// Sends SIGTERM to `proc` (a daemon stopping as systemd stops it).
fn terminate(proc: &Proc) {
    let status = Command::new("kill")
        .args(["-TERM", &proc.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Polls `what` every 100 ms until it holds, failing with `log()` after `timeout`.
fn wait_for(
    what: &str,
    timeout: Duration,
    log: impl Fn() -> String,
    mut done: impl FnMut() -> bool,
) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < timeout,
            "{what}: not after {timeout:?}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `len` bytes that do not compress, from `seed`.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha2::Digest::finalize(sha2::Digest::chain_update(
        sha2::Sha256::default(),
        bytes,
    )))
}

/// Every file under `root`, by its path relative to `root`'s parent (as the sender names it).
fn files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let base = root.parent().unwrap();
    walkdir::WalkDir::new(root)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e
                .path()
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (rel, std::fs::read(e.path()).unwrap())
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
#[ignore = "needs Garage, a test S3 server (./test.sh installs it and runs this)"]
fn a_tree_arrives_in_the_store_whole_with_its_sha256_and_never_partly() {
    let garage = Garage::start("sluice-in");
    let s = Setup::new();
    let root = s.src.join("dataset");
    tree::make_tree(
        &root,
        TreeSpec {
            // Above the sink's part size: a multipart upload.
            big_bytes: 40 << 20,
            segment_edges: true,
            small_scale: 1,
            seed: 26,
        },
    )
    .unwrap();
    let expected = files(&root);
    // A state directory the receiver makes itself, private.
    std::fs::remove_dir(&s.state).unwrap();
    let port = free_udp_port();
    let mut recv = receiver(&s, &garage, "s3://sluice-in/landing/", port, |_| {});
    binaries::wait_bound(
        &mut recv,
        ([127, 0, 0, 1], port).into(),
        Duration::from_secs(30),
    );

    // A consumer listing the bucket all along: every object it sees is whole.
    let sizes: BTreeMap<String, u64> = expected
        .iter()
        .map(|(path, bytes)| (format!("landing/{path}"), bytes.len() as u64))
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (done, sizes) = (done.clone(), sizes.clone());
        let lister = garage.bucket();
        std::thread::spawn(move || {
            let mut looks = 0u32;
            let mut partial = Vec::new();
            while !done.load(Ordering::Relaxed) {
                for (key, size) in lister.sizes("landing") {
                    if sizes.get(&key) != Some(&size) {
                        partial.push((key, size));
                    }
                }
                looks += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (looks, partial)
        })
    };
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let sent = s.send(to, &["--rate", "20MB"], &[&root], Duration::from_secs(120));
    assert_exit(&sent, 0, "sluice-send");
    let got = recv.finish(Duration::from_secs(120));
    done.store(true, Ordering::Relaxed);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&s.state).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o700, "{}", got.log);
    let (looks, partial) = watcher.join().unwrap();
    assert_exit(&got, 0, "sluice-recv");
    assert!(looks > 10, "the listing ran {looks} times");
    assert!(
        partial.is_empty(),
        "listed before they were whole: {partial:?}"
    );

    let stored = garage.objects("landing");
    assert_eq!(
        stored.keys().cloned().collect::<Vec<_>>(),
        sizes.keys().cloned().collect::<Vec<_>>(),
        "{}",
        got.log
    );
    for (path, bytes) in &expected {
        let object = &stored[&format!("landing/{path}")];
        assert!(object.bytes == *bytes, "{path}: other bytes");
        let sha: [u8; 32] =
            sha2::Digest::finalize(sha2::Digest::chain_update(sha2::Sha256::default(), bytes))
                .into();
        assert_eq!(
            object.metadata.get("sluice-sha256"),
            Some(&hex(&sha)),
            "{path}: {:?}",
            object.metadata
        );
        assert!(object.metadata.contains_key("sluice-signer"), "{path}");
    }
    // Delivered once, by the records: the same tree again is already there.
    let mut recv = receiver(&s, &garage, "s3://sluice-in/landing", port, |_| {});
    binaries::wait_bound(&mut recv, to, Duration::from_secs(30));
    let again = s.send(to, &["--rate", "20MB"], &[&root], Duration::from_secs(120));
    assert_exit(&again, 0, "sluice-send");
    let got = recv.finish(Duration::from_secs(120));
    assert_exit(&got, 0, "sluice-recv");
    assert!(got.log.contains("already delivered"), "{}", got.log);
    assert!(
        !got.log.contains("\"delivered dataset/big.bin\""),
        "{}",
        got.log
    );
}

#[test]
#[ignore = "needs Garage, a test S3 server (./test.sh installs it and runs this)"]
fn a_wrong_key_a_missing_bucket_or_no_endpoint_stops_the_receiver_at_start() {
    let garage = Garage::start("sluice-in");
    let s = Setup::new();
    let port = free_udp_port();
    let start = |out: &str, fix: &dyn Fn(&mut Command)| {
        receiver(&s, &garage, out, port, fix).finish(Duration::from_secs(60))
    };
    let wrong = start("s3://sluice-in/x", &|cmd| {
        cmd.env("AWS_SECRET_ACCESS_KEY", "0".repeat(64));
    });
    assert_exit(&wrong, 2, "sluice-recv");
    assert!(
        wrong
            .log
            .contains(&format!("access denied for key {}", garage.key_id)),
        "{}",
        wrong.log
    );
    let missing = start("s3://no-such-bucket/x", &|_| {});
    assert_exit(&missing, 2, "sluice-recv");
    assert!(
        missing.log.contains("bucket no-such-bucket not found"),
        "{}",
        missing.log
    );
    let closed = binaries::free_udp_port();
    let nowhere = start("s3://sluice-in/x", &|cmd| {
        cmd.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{closed}"));
    });
    assert_exit(&nowhere, 2, "sluice-recv");
    assert!(
        nowhere.log.contains("endpoint unreachable"),
        "{}",
        nowhere.log
    );
    // None of them opened the link or wrote its secret.
    for got in [&wrong, &missing, &nowhere] {
        assert!(!got.log.contains(&garage.secret), "{}", got.log);
        assert!(!got.log.contains("\"receiving\""), "{}", got.log);
    }
}

#[test]
#[ignore = "needs Garage, a test S3 server (./test.sh installs it and runs this)"]
fn a_receiver_killed_mid_upload_leaves_nothing_behind_and_finishes_at_restart() {
    let garage = Garage::start("sluice-in");
    let s = Setup::new();
    // 20 parts: an upload long enough to be caught in the middle.
    let content = noise(320 << 20, 7);
    // A name object_store would encode again if the key were built rather than parsed.
    let file = s.src.join("weights [1]~.bin");
    std::fs::write(&file, &content).unwrap();
    let port = free_udp_port();
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut recv = daemon(&s, &garage, "s3://sluice-in/landing", port, |_| {});
    binaries::wait_bound(&mut recv, to, Duration::from_secs(30));
    let sent = s.send(to, &["--rate", "200MB"], &[&file], Duration::from_secs(120));
    assert_exit(&sent, 0, "sluice-send");
    wait_for(
        "a multipart upload under way",
        Duration::from_secs(120),
        || recv.log(),
        || garage.unfinished_multipart_uploads() > 0,
    );
    recv.kill();
    assert!(
        garage.sizes("landing").is_empty(),
        "a killed upload is listed: {:?}",
        garage.sizes("landing")
    );
    assert!(garage.unfinished_multipart_uploads() > 0);

    // The next start aborts what the kill left and uploads the object, complete in the state
    // directory, again.
    let again = receiver(&s, &garage, "s3://sluice-in/landing", port, |_| {})
        .finish(Duration::from_secs(180));
    assert_exit(&again, 0, "sluice-recv");
    assert!(
        again.log.contains("aborted an unfinished multipart upload"),
        "{}",
        again.log
    );
    assert_eq!(garage.unfinished_multipart_uploads(), 0, "{}", again.log);
    let stored = garage.objects("landing");
    let object = &stored["landing/weights [1]~.bin"];
    assert!(object.bytes == content, "other bytes");
    assert_eq!(
        object.metadata.get("sluice-sha256"),
        Some(&sha256_hex(&content))
    );
}

#[test]
#[ignore = "needs Garage, a test S3 server (./test.sh installs it and runs this)"]
fn a_store_down_in_the_middle_of_a_run_holds_files_back_until_it_returns() {
    let mut garage = Garage::start("sluice-in");
    let s = Setup::new();
    let root = s.src.join("dataset");
    tree::make_tree(
        &root,
        TreeSpec {
            big_bytes: 40 << 20,
            segment_edges: true,
            small_scale: 1,
            seed: 261,
        },
    )
    .unwrap();
    let expected = files(&root);
    let port = free_udp_port();
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let metrics = sluice_tests::scrape::free_tcp_addr();
    let mut recv = daemon(&s, &garage, "s3://sluice-in/landing", port, |cmd| {
        cmd.args(["--metrics", &metrics.to_string()]);
    });
    binaries::wait_bound(&mut recv, to, Duration::from_secs(30));
    garage.stop();
    // The whole tree crosses the link while the store is down: nothing is lost.
    let sent = s.send(to, &["--rate", "40MB"], &[&root], Duration::from_secs(120));
    assert_exit(&sent, 0, "sluice-send");
    wait_for(
        "the receiver saying the store is unavailable",
        Duration::from_secs(90),
        || recv.log(),
        || recv.log().contains("the object store is unavailable"),
    );
    let page = sluice_tests::scrape::scrape(metrics).unwrap();
    let value = |series: &str| sluice_tests::scrape::value(&page, series);
    assert_eq!(value("sluice_store_up"), Some(0.0), "{page}");
    assert!(
        value("sluice_publishing_objects").unwrap_or(0.0) >= 1.0,
        "{page}"
    );
    assert!(
        value("sluice_store_retries_total").unwrap_or(0.0) >= 1.0,
        "{page}"
    );

    garage.restart();
    let sizes: BTreeMap<String, u64> = expected
        .iter()
        .map(|(path, bytes)| (format!("landing/{path}"), bytes.len() as u64))
        .collect();
    wait_for(
        "every file in the store",
        Duration::from_secs(240),
        || recv.log(),
        || garage.sizes("landing") == sizes,
    );
    let page = sluice_tests::scrape::scrape(metrics).unwrap();
    assert_eq!(
        sluice_tests::scrape::value(&page, "sluice_store_up"),
        Some(1.0),
        "{page}"
    );
    terminate(&recv);
    let got = recv.finish(Duration::from_secs(60));
    assert_exit(&got, 0, "sluice-recv");
    assert!(
        got.log.contains("the object store answers again"),
        "{}",
        got.log
    );
    let stored = garage.objects("landing");
    for (path, bytes) in &expected {
        let object = &stored[&format!("landing/{path}")];
        assert!(object.bytes == *bytes, "{path}: other bytes");
        assert_eq!(
            object.metadata.get("sluice-sha256"),
            Some(&sha256_hex(bytes))
        );
    }
    assert_eq!(garage.unfinished_multipart_uploads(), 0);
}

#[test]
#[ignore = "needs Garage, a test S3 server (./test.sh installs it and runs this)"]
fn a_receiver_stopped_while_the_store_is_down_uploads_at_its_next_start() {
    let mut garage = Garage::start("sluice-in");
    let s = Setup::new();
    let content = noise(24 << 20, 9);
    let file = s.src.join("eval.bin");
    std::fs::write(&file, &content).unwrap();
    let port = free_udp_port();
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut recv = daemon(&s, &garage, "s3://sluice-in/landing", port, |_| {});
    binaries::wait_bound(&mut recv, to, Duration::from_secs(30));
    garage.stop();
    let sent = s.send(to, &["--rate", "40MB"], &[&file], Duration::from_secs(120));
    assert_exit(&sent, 0, "sluice-send");
    wait_for(
        "the receiver saying the store is unavailable",
        Duration::from_secs(90),
        || recv.log(),
        || recv.log().contains("the object store is unavailable"),
    );
    terminate(&recv);
    let stopped = recv.finish(Duration::from_secs(60));
    // Stopped as systemd stops it (exit 0), saying what it keeps.
    assert_exit(&stopped, 0, "sluice-recv");
    assert!(
        stopped
            .log
            .contains("kept in the state directory for the next start"),
        "{}",
        stopped.log
    );

    garage.restart();
    let next = receiver(&s, &garage, "s3://sluice-in/landing", port, |_| {})
        .finish(Duration::from_secs(120));
    assert_exit(&next, 0, "sluice-recv");
    let stored = garage.objects("landing");
    assert!(stored["landing/eval.bin"].bytes == content, "{}", next.log);
    assert_eq!(garage.unfinished_multipart_uploads(), 0);
}

#[test]
#[ignore = "needs Garage, a test S3 server (./test.sh installs it and runs this)"]
fn a_refused_file_goes_to_a_quarantine_in_the_store_never_to_the_delivered_prefix() {
    let garage = Garage::start("sluice-in");
    let s = Setup::new();
    let root = s.src.join("models");
    std::fs::create_dir_all(&root).unwrap();
    // A pickle that would run `os.system("id")` when loaded, and a harmless file beside it.
    let evil = b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00id\x85R.".to_vec();
    std::fs::write(root.join("evil.pkl"), &evil).unwrap();
    std::fs::write(root.join("notes.txt"), b"fine\n").unwrap();
    let policy = s.tmp.path().join("policy.toml");
    std::fs::write(&policy, "quarantine = \"s3://sluice-in/quarantine\"\n").unwrap();
    let port = free_udp_port();
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut recv = receiver(&s, &garage, "s3://sluice-in/landing", port, |cmd| {
        cmd.arg("--policy").arg(&policy);
    });
    binaries::wait_bound(&mut recv, to, Duration::from_secs(30));
    let sent = s.send(to, &["--rate", "20MB"], &[&root], Duration::from_secs(60));
    assert_exit(&sent, 0, "sluice-send");
    let got = recv.finish(Duration::from_secs(60));
    assert_exit(&got, 3, "sluice-recv");
    assert!(
        got.log
            .contains("quarantined: s3://sluice-in/quarantine/models/evil.pkl"),
        "{}",
        got.log
    );
    assert_eq!(
        garage.sizes("landing").into_keys().collect::<Vec<_>>(),
        ["landing/models/notes.txt"]
    );
    let quarantined = garage.objects("quarantine");
    let object = &quarantined["quarantine/models/evil.pkl"];
    assert!(object.bytes == evil);
    assert!(
        object
            .metadata
            .get("sluice-refused")
            .is_some_and(|r| r.contains("posix.system")),
        "{:?}",
        object.metadata
    );
    let reason = String::from_utf8_lossy(&quarantined["quarantine/models/evil.pkl.reason"].bytes)
        .into_owned();
    assert!(reason.contains("pickle imports posix.system"), "{reason}");
    assert!(reason.contains(&sha256_hex(&evil)), "{reason}");
    let report: serde_json::Value =
        serde_json::from_slice(&quarantined["quarantine/models/evil.pkl.report.json"].bytes)
            .unwrap();
    assert_eq!(report["verdict"], "refused");
    assert!(report["reason"].as_str().unwrap().contains("posix.system"));

    // A quarantine inside the delivered prefix is refused at start.
    std::fs::write(&policy, "quarantine = \"s3://sluice-in/landing/q\"\n").unwrap();
    let nested = receiver(&s, &garage, "s3://sluice-in/landing", port, |cmd| {
        cmd.arg("--policy").arg(&policy);
    })
    .finish(Duration::from_secs(60));
    assert_exit(&nested, 2, "sluice-recv");
    assert!(
        nested.log.contains("must not contain each other"),
        "{}",
        nested.log
    );
}

#[test]
#[ignore = "needs Garage and minisign (./test.sh installs them and runs this)"]
fn an_approved_export_lands_in_the_store_naming_its_approvers() {
    use sluice_tests::minisign;
    let garage = Garage::start("sluice-out");
    let s = Setup::new();
    let dir = s.tmp.path();
    for name in ["alice", "bob"] {
        minisign::keypair(dir, name);
    }
    let report = s.src.join("report");
    std::fs::create_dir_all(&report).unwrap();
    std::fs::write(report.join("eval.json"), b"{\"accuracy\": 0.91}").unwrap();
    let policy = dir.join("approvals.toml");
    std::fs::write(
        &policy,
        "threshold = 2\napprovers = [\"alice.pub\", \"bob.pub\"]\n",
    )
    .unwrap();
    let made = Command::new(&binaries::binaries().approve)
        .current_dir(dir)
        .arg("request")
        .arg(&report)
        .args(["--purpose", "eval", "--out", "req.toml"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    for name in ["alice", "bob"] {
        let sig = format!("req.toml.{name}.minisig");
        minisign::sign(dir, &format!("{name}.key"), "req.toml", &sig);
    }
    let port = free_udp_port();
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut recv = receiver(&s, &garage, "s3://sluice-out/exports", port, |cmd| {
        cmd.arg("--approval-policy").arg(&policy);
    });
    binaries::wait_bound(&mut recv, to, Duration::from_secs(30));
    let (request, policy_arg) = (dir.join("req.toml"), policy.to_str().unwrap());
    let sent = s.send(
        to,
        &[
            "--approval",
            request.to_str().unwrap(),
            "--approval-policy",
            policy_arg,
            "--rate",
            "10MB",
        ],
        &[&report],
        Duration::from_secs(60),
    );
    assert_exit(&sent, 0, "sluice-send");
    let got = recv.finish(Duration::from_secs(60));
    assert_exit(&got, 0, "sluice-recv");
    let stored = garage.objects("exports");
    let object = &stored["exports/report/eval.json"];
    assert_eq!(object.bytes, b"{\"accuracy\": 0.91}");
    let mut named: Vec<String> = object
        .metadata
        .get("sluice-approvers")
        .unwrap_or_else(|| panic!("{:?}", object.metadata))
        .split(',')
        .map(str::to_string)
        .collect();
    named.sort();
    let mut approvers = vec![minisign::key_id(dir, "alice"), minisign::key_id(dir, "bob")];
    approvers.sort();
    assert_eq!(named, approvers);
}
