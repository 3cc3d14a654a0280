//! Issue 25, finding 6 (attacker B, a low side holding `link.key` and `sender.key`):
//! `--max-state` counted payload, not disk. Objects of one byte that never finish (their data
//! block arrives, their manifest never does) each take a directory, a content file and a
//! record file in whole blocks, so `--max-state 64MiB` let the state directory reach 128 MiB
//! as `du` counts it. Now each object is charged its footprint on disk before it is written,
//! new writes wait while evicted objects are removed, and `du` of the state directory stays
//! within `--max-state` plus the slack README states, during the flood and after it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_protocol::wire::BlockKind;
use support::{bytes, generate_keys, send, Item, Producer};

const BIN: &str = env!("CARGO_BIN_EXE_sluice-recv");
const MIB: u64 = 1 << 20;

/// What `du` counts under `path`: the allocated blocks of every entry, directories included
/// (`st_blocks` is in 512-byte units whatever the file system's block size).
fn du(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0; // removed while we looked
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            total += du(&entry.path());
        }
    }
    total
}

/// The JSON summary line of a `--log-format json` log.
fn summary(log: &str) -> serde_json::Value {
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.get("summary").is_some())
        .unwrap_or_else(|| panic!("no JSON summary in:\n{log}"))["summary"]
        .clone()
}

#[test]
fn never_finished_objects_keep_the_state_directory_within_max_state_as_du_counts_it() {
    // Objects of one byte whose manifest never comes: 12 000 of them hold 12 000 bytes of
    // payload, and (at 4 KiB blocks) about 146 MiB on disk. The default --max-objects
    // (10 000) kept 118 MiB of them before, with the smallest --max-state.
    const OBJECTS: u64 = 12_000;
    const MAX_STATE: u64 = 64 * MIB;
    // README, `--max-state`: beyond it, the objects/ and staging/ directories themselves
    // (192 bytes per --max-objects, default 10 000), and the receiver's own files.
    const SLACK: u64 = 192 * 10_000;
    const OWN_FILES: [&str; 4] = ["VERSION", "lock", "tmp", "records.redb"];

    let tmp = tempfile::Builder::new()
        .prefix("sluice-state-bound-")
        .tempdir()
        .unwrap();
    let keys = generate_keys(&tmp.path().join("keys"));
    let (out, state) = (tmp.path().join("out"), tmp.path().join("state"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&state)
        .unwrap();
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(BIN)
        .arg("--link")
        .arg(format!("udp://127.0.0.1:{port}"))
        .arg("--identity")
        .arg(&keys.receiver_key)
        .arg("--trust")
        .arg(&keys.sender_pub)
        .arg("--link-key")
        .arg(&keys.link_key)
        .arg("--out")
        .arg(&out)
        .arg("--state")
        .arg(&state)
        // The audit log grows with every outcome, evictions included: kept elsewhere here
        // (README: it is not part of the bound).
        .arg("--audit-log")
        .arg(tmp.path().join("audit.log"))
        .args(["--max-state", &format!("{}", MAX_STATE)])
        .args(["--exit-after-idle", "3", "--log-format", "json"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let mut log = sink.lock().unwrap();
            log.push_str(&line.unwrap_or_default());
            log.push('\n');
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log.lock().unwrap().contains("receiving") {
        let exited = child.try_wait().unwrap().is_some();
        assert!(
            Instant::now() < deadline && !exited,
            "not receiving:\n{}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The state directory, sampled while the flood runs.
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (running, state) = (running.clone(), state.clone());
        std::thread::spawn(move || {
            let mut peak = 0;
            while running.load(Ordering::Relaxed) {
                peak = peak.max(du(&state));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    };

    let producer = Producer::new(&keys, 0x25_06);
    for first in (0..OBJECTS).step_by(500) {
        let encoded: Vec<_> = (first..first + 500)
            .map(|i| {
                let item = Item::file(&format!("never/{i}"), bytes(1, i), 0o644, (1, 0));
                producer.encode(i, &item)
            })
            .collect();
        // Every symbol of each data block, none of any manifest: stored, never finished.
        let frames = producer.frames(&encoded, 0, |h| h.block.kind == BlockKind::Data);
        send(([127, 0, 0, 1], port).into(), &frames);
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running:\n{}", log.lock().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    running.store(false, Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
    let after = du(&state);
    let own: u64 = OWN_FILES.iter().map(|f| du(&state.join(f))).sum();
    let kept = std::fs::read_dir(state.join("objects")).unwrap().count() as u64;
    let parts: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .map(|e| {
            let dir = std::fs::symlink_metadata(e.path()).unwrap().blocks() * 512;
            let name = e.file_name().to_string_lossy().into_owned();
            format!("{name} {} (itself {dir})", du(&e.path()))
        })
        .collect();
    eprintln!(
        "state directory: {after} bytes after the run ({kept} objects kept: {}), peak {peak} \
         bytes sampled during it; --max-state {MAX_STATE}",
        parts.join(", ")
    );
    // Objects failed (evicted, or unfinished at the end): status 3.
    assert_eq!(status.code(), Some(3), "{log}");
    let summary = summary(&log);
    assert!(
        summary["blocks_decoded"].as_u64().unwrap() >= OBJECTS * 9 / 10,
        "most objects stored something: {summary}"
    );
    assert!(
        log.contains("(--max-state)"),
        "evictions were made for the state bound"
    );
    assert!(
        after - own <= MAX_STATE + SLACK,
        "du of the state directory {after} (the receiver's own files {own}) > {MAX_STATE} + \
         {SLACK}"
    );
    // While the flood ran, too (evicted objects count until they are removed).
    assert!(
        peak.saturating_sub(own) <= MAX_STATE + SLACK,
        "du of the state directory peaked at {peak} (own files {own})"
    );
    // Nothing was delivered: the receiver's own files are what any state directory holds.
    assert!(
        own <= MIB,
        "VERSION, lock, tmp/ and records.redb take {own} bytes"
    );
    // The bound is met by keeping what fits, not by keeping nothing: each object takes three
    // blocks and three names of at most 96 bytes.
    let block = std::fs::metadata(&state).unwrap().blksize();
    assert!(
        kept >= MAX_STATE / (3 * block + 3 * 96) * 9 / 10,
        "{kept} objects kept"
    );
}
