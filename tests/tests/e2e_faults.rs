//! End to end through the seeded fault relay: what FEC repairs, what it cannot (reported,
//! never published corrupt), what later passes and receiver restarts recover, and what the
//! receiver refuses (wrong keys, forged frames, tampered segments).
//!
//! ```text
//!   sluice-send ──▶ Relay (loss, bursts, flips, truncation, dups, reorder, tamper) ──▶ sluice-recv
//! ```

// Test helpers panic on failure by design, like the tests that call them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_tests::binaries::{free_udp_port, Finished, Keys, Proc};
use sluice_tests::harness::{assert_exit, assert_logged, Setup, Summary};
use sluice_tests::relay::{BurstLoss, FaultCounts, Faults, Relay, Tamper};
use sluice_tests::tree::{self, Check, TreeSpec};

const SEND_TIMEOUT: Duration = Duration::from_secs(180);
const RECV_TIMEOUT: Duration = Duration::from_secs(60);
/// Small transfers whose frame counts are compared exactly go slowly enough that no socket
/// buffer overflows on a busy 2-core machine (only the relay may lose frames).
const SLOW: &[&str] = &["--rate", "5MB"];
/// One object per file (small files would share a pack): for faults aimed at one object.
const SLOW_UNPACKED: &[&str] = &["--rate", "5MB", "--pack-under", "0"];

fn dataset(s: &Setup, big: u64, seed: u64) -> PathBuf {
    let root = s.src.join("data");
    tree::make_tree(
        &root,
        TreeSpec {
            big_bytes: big,
            segment_edges: false,
            small_scale: 4,
            seed,
        },
    )
    .unwrap();
    root
}

/// Receiver on a fresh port behind a relay; returns both and the sender's destination.
fn relayed(s: &Setup, keys: &Keys, faults: Faults, extra: &[&str]) -> (Proc, Relay, SocketAddr) {
    let port = free_udp_port();
    let recv = s.receiver_with(keys, port, 4, extra);
    let relay = Relay::start(([127, 0, 0, 1], port).into(), faults).unwrap();
    let to = relay.addr();
    (recv, relay, to)
}

/// One relayed transfer: receiver, relay, sender; returns (sender, receiver, relay counts).
fn transfer(
    s: &Setup,
    faults: Faults,
    send_extra: &[&str],
    paths: &[&Path],
) -> (Finished, Finished, FaultCounts) {
    let (mut recv, relay, to) = relayed(s, &s.keys, faults, &[]);
    let sent = s.send(to, send_extra, paths, SEND_TIMEOUT);
    let got = recv.finish(RECV_TIMEOUT);
    (sent, got, relay.stop())
}

/// Frames the receiver dropped as line damage, by DropReason name.
fn line_damage(summary: &Summary) -> u64 {
    [
        "bad_crc",
        "too_short",
        "bad_magic",
        "bad_version",
        "bad_header",
        "bad_length",
    ]
    .iter()
    .map(|k| summary.get(k))
    .sum()
}

fn summary(log: &str) -> Summary {
    Summary::find(log, "bad_crc")
        .unwrap_or_else(|| panic!("no JSON summary with drop counters in:\n{log}"))
}

/// (a) Damage within the repair budget: everything arrives intact.
#[test]
fn losses_within_the_repair_budget_are_repaired() {
    let s = Setup::new();
    let root = dataset(&s, 6 << 20, 1);
    let faults = Faults {
        seed: 0xA,
        loss: 0.02,
        burst: Some(BurstLoss {
            p_good_to_bad: 0.002,
            p_bad_to_good: 0.5,
            loss_in_bad: 1.0,
        }),
        bit_flip: 0.005,
        max_bit_flips: 3,
        truncate: 0.002,
        duplicate: 0.01,
        reorder: 0.02,
        reorder_depth: 16,
        ..Faults::default()
    };
    let (sent, got, counts) =
        transfer(&s, faults, &["--repair", "10%", "--rate", "20MB"], &[&root]);
    assert_exit(&sent, 0, "sluice-send");
    assert_exit(&got, 0, "sluice-recv");
    tree::compare(&root, &s.out.join("data"), Check::ALL)
        .unwrap_or_else(|d| panic!("trees differ:\n{d}\nreceiver log:\n{}", got.log));

    // Every fault really happened, and the receiver saw the damage the relay did.
    assert!(counts.dropped() > 50 && counts.bit_flipped > 5 && counts.truncated > 0);
    assert!(
        counts.duplicated > 10 && counts.reordered > 10,
        "{counts:?}"
    );
    let sum = summary(&got.log);
    let damage = line_damage(&sum);
    assert!(
        damage <= counts.damaged_out && damage * 10 >= counts.damaged_out * 9,
        "receiver dropped {damage} damaged frames, relay damaged {}",
        counts.damaged_out
    );
    assert!(
        sum.get("duplicate") + sum.get("block_done") > 0,
        "duplicates unseen: {:?}",
        sum.0
    );
    assert_eq!(sum.get("bad_mac"), 0);
}

/// (b) Loss far beyond the repair budget: failures reported, nothing corrupt published.
#[test]
fn losses_beyond_the_budget_fail_cleanly() {
    let s = Setup::new();
    let root = dataset(&s, 3 << 20, 2);
    let faults = Faults {
        seed: 0xB,
        loss: 0.4,
        ..Faults::default()
    };
    let (sent, got, counts) = transfer(&s, faults, &["--repair", "10%"], &[&root]);
    assert_exit(&sent, 0, "sluice-send");
    assert_exit(&got, 3, "sluice-recv");
    assert!(
        counts.dropped_random * 10 > counts.received * 3,
        "{counts:?}"
    );
    assert!(
        got.log.contains("incomplete:") || got.log.contains("manifest never arrived"),
        "no failure reason in:\n{}",
        got.log
    );
    assert!(
        !s.out.join("data/big.bin").exists(),
        "big.bin cannot have survived 40% loss"
    );
    // Files land under out/data, like the source under src/data.
    tree::published_files_are_intact(&s.src, &s.out)
        .unwrap_or_else(|e| panic!("corrupt output:\n{e}\nreceiver log:\n{}", got.log));
    assert!(tree::count_files(&s.out) < tree::count_files(&root));
}

/// (c) The same loss: one pass fails, two passes (fresh repair symbols) complete.
#[test]
fn a_second_pass_completes_what_one_pass_cannot() {
    let faults = || Faults {
        seed: 0xC,
        loss: 0.22,
        ..Faults::default()
    };
    let s1 = Setup::new();
    let root1 = dataset(&s1, 2 << 20, 3);
    let (sent, got, _) = transfer(
        &s1,
        faults(),
        &["--repair", "10%", "--passes", "1", "--rate", "10MB"],
        &[&root1],
    );
    assert_exit(&sent, 0, "sluice-send --passes 1");
    assert_exit(&got, 3, "sluice-recv after one lossy pass");
    tree::published_files_are_intact(&s1.src, &s1.out).unwrap();

    let s2 = Setup::new();
    let root2 = dataset(&s2, 2 << 20, 3);
    let (sent, got, counts) = transfer(
        &s2,
        faults(),
        &["--repair", "10%", "--passes", "2", "--rate", "10MB"],
        &[&root2],
    );
    assert_exit(&sent, 0, "sluice-send --passes 2");
    assert_exit(&got, 0, "sluice-recv after two lossy passes");
    assert!(
        counts.dropped_random * 100 > counts.received * 18,
        "{counts:?}"
    );
    tree::compare(&root2, &s2.out.join("data"), Check::ALL)
        .unwrap_or_else(|d| panic!("trees differ:\n{d}\nreceiver log:\n{}", got.log));
    assert!(summary(&got.log).get("blocks_recovered") > 0 || got.log.contains("recovered"));
}

/// An object of which not one frame arrives (every frame of a small file in one burst) is
/// still reported: the sender's heartbeats say how many objects went out, and the receiver
/// names the id it never heard of, exits 3, and delivers the others.
#[test]
fn an_object_lost_whole_is_reported() {
    let s = Setup::new();
    let files = small_files(&s);
    let faults = Faults {
        lose_objects: vec![1],
        ..Faults::default()
    };
    let (sent, got, counts) = transfer(&s, faults, SLOW_UNPACKED, &refs(&files));
    assert_exit(&sent, 0, "sluice-send");
    assert_exit(&got, 3, "sluice-recv");
    assert!(counts.dropped_object > 0, "{counts:?}");
    assert_logged(&got.log, "object failed: lost whole");
    let summary = Summary::find(&got.log, "objects_failed").expect("a JSON summary");
    assert_eq!(summary.get("objects_failed"), 1, "{}", got.log);
    assert_eq!(summary.get("objects_lost_whole"), 1, "{}", got.log);
    assert_eq!(summary.get("objects_delivered"), 2, "{}", got.log);
    assert!(!s.out.join("two notes.txt").exists());
    for f in [&files[0], &files[2]] {
        let name = f.file_name().unwrap();
        assert_eq!(
            std::fs::read(s.out.join(name)).unwrap(),
            std::fs::read(f).unwrap()
        );
    }
}

/// (d) A receiver SIGKILLed mid-transfer and restarted on the same --out/--state completes
/// everything from the second pass, and does not write twice what it had delivered.
#[test]
fn a_killed_receiver_resumes_on_the_next_pass() {
    let s = Setup::new();
    let root = dataset(&s, 12 << 20, 4);
    let port = free_udp_port();
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut first = s.receiver(port, 30, &[]);
    // ~13 MiB per pass at 5 MB/s: a bit under 3 s per pass.
    let mut sender = s.spawn_sender(
        &s.keys,
        to,
        &["--rate", "5MB", "--passes", "2", "--repair", "10%"],
        &[&root],
    );
    // Kill once something has been published or stored, well before pass 1 ends.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tree::count_files(&s.out) < 3 && tree::count_files(&s.state) < 3 {
        assert!(
            Instant::now() < deadline,
            "nothing arrived:\n{}",
            first.log()
        );
        assert!(
            sender.running(),
            "sender finished before the kill:\n{}",
            sender.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    first.kill();
    let published_before = tree::count_files(&s.out);
    let inodes_before = inodes(&s.out);
    assert!(
        !s.out.join("data/big.bin").exists(),
        "the transfer was already complete at the kill"
    );
    tree::published_files_are_intact(&s.src, &s.out).unwrap();

    let mut second = s.receiver(port, 4, &[]);
    assert_exit(&sender.finish(SEND_TIMEOUT), 0, "sluice-send");
    let got = second.finish(RECV_TIMEOUT);
    assert_exit(&got, 0, "restarted sluice-recv");
    tree::compare(&root, &s.out.join("data"), Check::ALL)
        .unwrap_or_else(|d| panic!("trees differ:\n{d}\nreceiver log:\n{}", got.log));
    // What was published before the kill is still the same file: not written twice.
    let inodes_after = inodes(&s.out);
    for (path, inode) in &inodes_before {
        assert_eq!(inodes_after.get(path), Some(inode), "{path} was rewritten");
    }
    assert_eq!(inodes_before.len(), published_before);
}

/// Inode of every file under `root`, by relative path.
fn inodes(root: &Path) -> std::collections::BTreeMap<String, u64> {
    use std::os::unix::fs::MetadataExt;
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (rel, e.metadata().unwrap().ino())
        })
        .collect()
}

/// A small set of non-empty files given as file arguments: every object has data segments
/// and a manifest, so "nothing lands" means an empty --out.
fn small_files(s: &Setup) -> Vec<PathBuf> {
    let files = [
        ("one.bin", 200_000),
        ("two notes.txt", 3_000),
        ("three.dat", 70_000),
    ];
    files
        .iter()
        .enumerate()
        .map(|(i, (name, len))| {
            let p = s.src.join(name);
            tree::write_random_file(&p, *len, 100 + i as u64).unwrap();
            p
        })
        .collect()
}

fn refs(paths: &[PathBuf]) -> Vec<&Path> {
    paths.iter().map(PathBuf::as_path).collect()
}

fn assert_out_empty(s: &Setup, log: &str) {
    let left: Vec<_> = walkdir::WalkDir::new(&s.out)
        .min_depth(1)
        .into_iter()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    assert!(
        left.is_empty(),
        "--out is not empty: {left:?}\nreceiver log:\n{log}"
    );
}

/// (e1) Manifests encrypted to another receiver: refused, nothing lands.
#[test]
fn wrong_identity_is_refused() {
    let s = Setup::new();
    let files = small_files(&s);
    let other = s.other_keys("other");
    let keys = Keys {
        receiver_key: other.receiver_key.clone(),
        ..s.keys.clone()
    };
    let (mut recv, _relay, to) = relayed(&s, &keys, Faults::default(), &[]);
    assert_exit(
        &s.send(to, SLOW, &refs(&files), SEND_TIMEOUT),
        0,
        "sluice-send",
    );
    let got = recv.finish(RECV_TIMEOUT);
    assert_exit(&got, 3, "sluice-recv");
    assert_logged(&got.log, "cannot decrypt manifest with --identity");
    assert_out_empty(&s, &got.log);
}

/// (e2) Manifests signed by a key the receiver does not trust: refused, nothing lands.
#[test]
fn untrusted_sender_key_is_refused() {
    let s = Setup::new();
    let files = small_files(&s);
    let other = s.other_keys("other");
    let keys = Keys {
        sender_pub: other.sender_pub.clone(),
        ..s.keys.clone()
    };
    let (mut recv, _relay, to) = relayed(&s, &keys, Faults::default(), &[]);
    assert_exit(
        &s.send(to, SLOW, &refs(&files), SEND_TIMEOUT),
        0,
        "sluice-send",
    );
    let got = recv.finish(RECV_TIMEOUT);
    assert_exit(&got, 3, "sluice-recv");
    assert_logged(&got.log, "manifest signed by untrusted key");
    assert_out_empty(&s, &got.log);
}

/// (e3) A receiver holding another link key authenticates none of the frames.
#[test]
fn wrong_link_key_is_refused() {
    let s = Setup::new();
    let files = small_files(&s);
    let other = s.other_keys("other");
    let keys = Keys {
        link_key: other.link_key.clone(),
        ..s.keys.clone()
    };
    let (mut recv, relay, to) = relayed(&s, &keys, Faults::default(), &[]);
    assert_exit(
        &s.send(to, SLOW, &refs(&files), SEND_TIMEOUT),
        0,
        "sluice-send",
    );
    let got = recv.finish(RECV_TIMEOUT);
    let counts = relay.stop();
    assert_logged(&got.log, "failed link authentication (wrong --link-key?)");
    assert_eq!(
        summary(&got.log).get("bad_mac"),
        counts.forwarded,
        "every frame fails the MAC"
    );
    assert_out_empty(&s, &got.log);
}

/// (e4) Frames altered in flight with a recomputed CRC pass the line check and fail the MAC.
#[test]
fn tampered_frames_with_valid_crc_fail_authentication() {
    let s = Setup::new();
    let files = small_files(&s);
    let faults = Faults {
        seed: 0xE4,
        tamper: Some(Tamper::RecomputeCrc { probability: 1.0 }),
        ..Faults::default()
    };
    let (mut recv, relay, to) = relayed(&s, &s.keys, faults, &[]);
    assert_exit(
        &s.send(to, SLOW, &refs(&files), SEND_TIMEOUT),
        0,
        "sluice-send",
    );
    let got = recv.finish(RECV_TIMEOUT);
    let counts = relay.stop();
    assert_logged(&got.log, "failed link authentication (wrong --link-key?)");
    let sum = summary(&got.log);
    assert_eq!(sum.get("bad_mac"), counts.tampered);
    assert_eq!(sum.get("bad_crc"), 0, "the CRC was recomputed");
    assert_out_empty(&s, &got.log);
}

/// (e4') The same forgery on a few frames: dropped by the MAC, repaired by FEC.
#[test]
fn a_few_forged_frames_are_dropped_and_repaired() {
    let s = Setup::new();
    let files = small_files(&s);
    let faults = Faults {
        seed: 0xE5,
        tamper: Some(Tamper::RecomputeCrc { probability: 0.03 }),
        ..Faults::default()
    };
    let (sent, got, counts) = transfer(
        &s,
        faults,
        &["--repair", "15%", "--rate", "5MB"],
        &refs(&files),
    );
    assert_exit(&sent, 0, "sluice-send");
    assert_exit(&got, 0, "sluice-recv");
    assert!(counts.tampered > 0);
    assert_eq!(summary(&got.log).get("bad_mac"), counts.tampered);
    assert_eq!(tree::compare(&s.src, &s.out, Check::ALL), Ok(3));
}

/// (e5) A forger holding the link key alters segment data: age's authentication (and the
/// signed manifest's binding) catch it and nothing lands.
#[test]
fn tampered_segments_are_refused() {
    let s = Setup::new();
    let files = small_files(&s);
    let faults = Faults {
        seed: 0xE6,
        tamper: Some(Tamper::RecomputeMac {
            probability: 1.0,
            link_key: s.keys.link_secret(),
        }),
        ..Faults::default()
    };
    let (sent, got, counts) = transfer(&s, faults, SLOW_UNPACKED, &refs(&files));
    assert_exit(&sent, 0, "sluice-send");
    assert_exit(&got, 3, "sluice-recv");
    assert!(counts.tampered > 100, "{counts:?}");
    assert!(
        regex_like_segment_refused(&got.log),
        "no \"segment N does not decrypt\" in:\n{}",
        got.log
    );
    assert_eq!(
        summary(&got.log).get("bad_mac"),
        0,
        "forged frames carry a valid MAC"
    );
    assert_out_empty(&s, &got.log);
}

/// Whether the log has "segment <digits> does not decrypt" (or "does not match the signed
/// manifest").
fn regex_like_segment_refused(log: &str) -> bool {
    log.match_indices("segment ").any(|(i, _)| {
        let rest = &log[i + "segment ".len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0
            && (rest[digits..].starts_with(" does not decrypt")
                || rest[digits..].starts_with(" does not match the signed manifest"))
    })
}
