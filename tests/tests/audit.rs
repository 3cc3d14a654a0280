//! The audit logs the real daemons write: every delivered file is a record with its path and
//! SHA-256 on the receiver, every queued and sent one on the sender; `sluice-audit verify`
//! accepts them as written and names the first bad record after each kind of tampering
//! (edit, deletion, reordering; a truncated tail against a head kept elsewhere).

// Test helpers panic on failure by design, like the tests that call them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use sluice_tests::binaries::{binaries, free_udp_port};
use sluice_tests::harness::{assert_exit, Setup};
use sluice_tests::tree;

fn audit(args: &[&str], file: &Path) -> Output {
    Command::new(&binaries().audit)
        .args(args)
        .arg(file)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    sluice_tests::harness::output_text(o)
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn events<'a>(records: &'a [Value], event: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["event"] == event).collect()
}

#[test]
fn both_daemons_keep_a_verifiable_audit_log_and_tampering_is_named() {
    let s = Setup::new();
    let root = s.src.join("data");
    std::fs::create_dir_all(&root).unwrap();
    for i in 0..3u64 {
        tree::write_random_file(&root.join(format!("f{i}.bin")), 50_000 + i, i).unwrap();
    }
    let port = free_udp_port();
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut recv = s.receiver(port, 3, &[]);
    let sent = s.send(to, &["--rate", "10MB"], &[&root], Duration::from_secs(60));
    assert_exit(&sent, 0, "sluice-send");
    assert_exit(&recv.finish(Duration::from_secs(60)), 0, "sluice-recv");

    let recv_log = s.state.join("audit.log");
    let send_log = s.keys.sender_key.parent().unwrap().join("audit.log");
    for log in [&recv_log, &send_log] {
        let ok = audit(&["verify"], log);
        assert!(ok.status.success(), "{}: {}", log.display(), text(&ok));
        assert!(text(&ok).starts_with("intact: head seq "), "{}", text(&ok));
    }
    let received = records(&recv_log);
    assert_eq!(received.first().unwrap()["event"], "start");
    for start in [&received[0], &records(&send_log)[0]] {
        assert_eq!(
            start["config_sha256"].as_str().map(str::len),
            Some(64),
            "{start}"
        );
    }
    assert_eq!(received.last().unwrap()["event"], "stop");
    let delivered = events(&received, "delivered");
    let sent_records = records(&send_log);
    for i in 0..3u64 {
        let path = format!("data/f{i}.bin");
        let sha = hex_of(&tree::sha256_file(&root.join(format!("f{i}.bin"))).unwrap());
        assert!(
            delivered
                .iter()
                .any(|r| r["path"] == path && r["sha256"] == sha),
            "no delivered record for {path}: {received:?}"
        );
        for event in ["queued", "sent"] {
            assert!(
                events(&sent_records, event)
                    .iter()
                    .any(|r| r["path"] == path),
                "no {event} record for {path}"
            );
        }
    }
    let shown = audit(&["show", "--path", "data/f1.bin"], &recv_log);
    assert!(text(&shown).contains("delivered") && !text(&shown).contains("f2.bin"));

    // Tampering, each on a copy of the receiver's log.
    let original = std::fs::read_to_string(&recv_log).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    let copy = s.tmp.path().join("tampered.log");
    let check = |content: String, phrase: &str| {
        std::fs::write(&copy, content).unwrap();
        let out = audit(&["verify"], &copy);
        assert_eq!(out.status.code(), Some(1), "{phrase}: {}", text(&out));
        assert!(text(&out).contains(phrase), "{phrase}: {}", text(&out));
    };
    let join = |lines: &[&str]| lines.join("\n") + "\n";
    check(
        original.replacen("data/f1.bin", "data/fX.bin", 1),
        "the previous record does not hash",
    );
    let mut deleted = lines.clone();
    deleted.remove(1);
    check(join(&deleted), "expected seq 2");
    let mut reordered = lines.clone();
    reordered.swap(1, 2);
    check(join(&reordered), "expected seq 2");
    // A truncated tail verifies alone; a head kept elsewhere catches it.
    let heads = s.tmp.path().join("heads");
    std::fs::copy(s.state.join("audit.log.head"), &heads).unwrap();
    std::fs::write(&copy, join(&lines[..lines.len() - 1])).unwrap();
    assert!(audit(&["verify"], &copy).status.success());
    let out = Command::new(&binaries().audit)
        .args(["verify", "--heads"])
        .arg(&heads)
        .arg(&copy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("is not in this log"), "{}", text(&out));
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The receiver records the heads the sender's heartbeats carry: a sender log cut short, or
/// rewritten with a consistent new chain (which `verify` alone accepts), no longer holds them.
#[test]
fn a_sender_log_cut_short_or_rewritten_is_caught_against_the_receivers_log() {
    use sha2::{Digest, Sha256};
    let s = Setup::new();
    let root = s.src.join("export");
    std::fs::create_dir_all(&root).unwrap();
    for i in 0..3u64 {
        tree::write_random_file(&root.join(format!("r{i}.bin")), 1_000_000, i).unwrap();
    }
    let port = free_udp_port();
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut recv = s.receiver(port, 3, &[]);
    // About three seconds on the link: several heartbeats, each followed by the audit head.
    let sent = s.send(to, &["--rate", "1MB"], &[&root], Duration::from_secs(60));
    assert_exit(&sent, 0, "sluice-send");
    assert_exit(&recv.finish(Duration::from_secs(60)), 0, "sluice-recv");

    let recv_log = s.state.join("audit.log");
    let send_log = s.keys.sender_key.parent().unwrap().join("audit.log");
    let session = events(&records(&send_log), "start")[0]["session"].clone();
    let received = records(&recv_log);
    let heads: Vec<u64> = events(&received, "sender_audit_head")
        .iter()
        .filter(|r| r["session"] == session)
        .map(|r| r["head_seq"].as_u64().unwrap())
        .collect();
    assert!(!heads.is_empty(), "no sender head recorded: {received:?}");
    let against = |log: &Path| {
        Command::new(&binaries().audit)
            .arg("verify")
            .arg(log)
            .arg("--against")
            .arg(&recv_log)
            .output()
            .unwrap()
    };
    let ok = against(&send_log);
    assert!(
        ok.status.success(),
        "{}\nsender log:\n{}\nreceiver heads: {:?}",
        text(&ok),
        std::fs::read_to_string(&send_log).unwrap(),
        events(&received, "sender_audit_head")
    );
    assert!(
        text(&ok).contains("heads recorded by the receiver"),
        "{}",
        text(&ok)
    );

    let original = std::fs::read_to_string(&send_log).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    let newest = *heads.iter().max().unwrap();
    // The tail is anchored: the run's last record ("stop") is the newest head the receiver
    // holds, so no record can be cut from the end without a trace.
    let last: Value = serde_json::from_str(lines[lines.len() - 1]).unwrap();
    assert_eq!(last["event"], "stop");
    assert_eq!(last["seq"].as_u64(), Some(newest), "{original}");
    assert!(
        text(&ok).contains("anchored: every record"),
        "{}",
        text(&ok)
    );
    // A record after the newest head (a run cut off before it sent its head, or a record
    // added since) is named as not anchored.
    let mut extended = original.clone();
    let mut extra: Value = serde_json::from_str(lines[lines.len() - 1]).unwrap();
    extra["seq"] = Value::from(newest + 1);
    extra["prev"] = Value::from(hex_of(&Sha256::digest(lines[lines.len() - 1].as_bytes())));
    extended.push_str(&serde_json::to_string(&extra).unwrap());
    extended.push('\n');
    let copy = s.tmp.path().join("extended.log");
    std::fs::write(&copy, &extended).unwrap();
    assert!(audit(&["verify"], &copy).status.success(), "a valid chain");
    let out = against(&copy);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "not anchored: the last 1 record(s) (seq {}",
            newest + 1
        )),
        "{}",
        text(&out)
    );

    let copy = s.tmp.path().join("rewritten.log");
    // Cut short before the newest head the receiver saw: alone it verifies, not against it.
    let cut: Vec<&str> = lines[..(newest - 1) as usize].to_vec();
    std::fs::write(&copy, cut.join("\n") + "\n").unwrap();
    assert!(audit(&["verify"], &copy).status.success());
    let out = against(&copy);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("is not in this log"), "{}", text(&out));

    // Rewritten: the first record naming a file renamed (one the receiver's heads cover) and
    // every later `prev` recomputed.
    let target = records(&send_log)
        .iter()
        .find(|r| r["path"].is_string())
        .map(|r| r["seq"].as_u64().unwrap())
        .unwrap();
    assert!(
        target <= newest,
        "record {target} after every head ({newest})"
    );
    let mut prev = audit_genesis(lines[0]);
    let mut rewritten = String::new();
    for line in &lines {
        let mut record: Value = serde_json::from_str(line).unwrap();
        if record["seq"] == target {
            record["path"] = Value::from("export/innocent.txt");
        }
        record["prev"] = Value::from(prev.clone());
        let line = serde_json::to_string(&record).unwrap();
        prev = hex_of(&Sha256::digest(line.as_bytes()));
        rewritten.push_str(&line);
        rewritten.push('\n');
    }
    std::fs::write(&copy, &rewritten).unwrap();
    assert!(
        audit(&["verify"], &copy).status.success(),
        "a consistent new chain"
    );
    let out = against(&copy);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("is not in this log"), "{}", text(&out));

    // Issue 31, item 3: a whole later run removed (its `start` with it: the chain of what is
    // left is intact, and every head of the first run is in it) is still caught; with
    // `--other-senders` its heads are taken as another sender's.
    let mut recv = s.receiver(port, 3, &[]);
    let sent = s.send(
        to,
        &["--rate", "1MB", "--progress-every", "1s"],
        &[&root],
        Duration::from_secs(60),
    );
    assert_exit(&sent, 0, "sluice-send");
    assert_exit(&recv.finish(Duration::from_secs(60)), 0, "sluice-recv");
    assert!(against(&send_log).status.success(), "both runs, whole");
    // Issue 31, item 4: stderr is not a terminal here, so progress comes as log lines, in
    // the units of --rate.
    assert!(
        sent.log.contains("progress: ") && sent.log.contains(" of 3.00 MB ("),
        "{}",
        sent.log
    );
    std::fs::write(&copy, &original).unwrap();
    let out = against(&copy);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(
            "runs missing: the receiver recorded heads of 1 run(s) this log does not hold"
        ),
        "{}",
        text(&out)
    );
    let out = Command::new(&binaries().audit)
        .arg("verify")
        .arg(&copy)
        .arg("--against")
        .arg(&recv_log)
        .arg("--other-senders")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("note: the receiver also recorded"),
        "{}",
        text(&out)
    );
}

/// The `prev` of a log's first record (the head a rotated-away file left, or the genesis).
fn audit_genesis(first_line: &str) -> String {
    let record: Value = serde_json::from_str(first_line).unwrap();
    record["prev"].as_str().unwrap().to_string()
}
