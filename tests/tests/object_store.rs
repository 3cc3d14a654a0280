//! `sluice-recv --out s3://BUCKET/PREFIX` against a real S3 server (Garage on 127.0.0.1, see
//! `sluice_tests::garage`): a tree arrives with every object's bytes and SHA-256 metadata
//! right, a listing taken all along never shows a partial object, and a wrong key, a missing
//! bucket or an unreachable endpoint stop the receiver at start with one clear line (exit 2).

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

/// A receiver delivering to `out` (an `s3://` URL) with `garage`'s key in the environment.
fn receiver(s: &Setup, garage: &Garage, out: &str, port: u16, fix: impl Fn(&mut Command)) -> Proc {
    let link = format!("udp://127.0.0.1:{port}");
    let mut cmd = binaries::receiver_cmd(&link, &s.keys, Path::new(out), &s.state);
    garage.env(&mut cmd);
    cmd.args(["--exit-after-idle", "5", "--log-format", "json"]);
    fix(&mut cmd);
    Proc::spawn("sluice-recv", cmd)
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
