//! `sluice-send watch`, the outbox daemon, with the real binaries over loopback UDP: items
//! dropped into the outbox arrive intact and are moved to `.sent/`; work in progress is left
//! alone; an item written slowly in place waits for `--settle`; a `kill -9` and restart sends
//! again only what was not finished; `/metrics` shows the outbox.

// Test helpers panic on failure by design, like the tests that call them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_tests::binaries::{self, free_udp_port, Proc};
use sluice_tests::harness::{assert_exit, Setup};
use sluice_tests::scrape::{free_tcp_addr, scrape, value};
use sluice_tests::tree::{self, Check};

/// A watch daemon on `outbox` sending to 127.0.0.1:`port`.
fn watch(s: &Setup, outbox: &Path, port: u16, extra: &[&str]) -> Proc {
    let mut cmd = binaries::watch_cmd(&format!("udp://127.0.0.1:{port}"), &s.keys);
    cmd.arg("--outbox")
        .arg(outbox)
        .arg("--state")
        .arg(s.tmp.path().join("send-state"))
        .args(["--log-format", "json"])
        .args(extra);
    Proc::spawn("sluice-send watch", cmd)
}

fn outbox(s: &Setup) -> PathBuf {
    let dir = s.tmp.path().join("outbox");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `len` random bytes at `staging/name`, then renames it into `outbox`; returns their
/// SHA-256.
fn drop_file(outbox: &Path, name: &str, len: u64, seed: u64) -> [u8; 32] {
    let staging = outbox.parent().unwrap().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    let sum = tree::write_random_file(&staging.join(name), len, seed).unwrap();
    std::fs::rename(staging.join(name), outbox.join(name)).unwrap();
    sum
}

fn wait_until(what: &str, procs: &mut [&mut Proc], timeout: Duration, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        for p in procs.iter_mut() {
            assert!(p.running(), "{what}: a daemon stopped:\n{}", p.log());
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}; logs:\n{}",
            procs
                .iter()
                .map(|p| p.log())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Names in `dir` (none if it is missing), sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Sent items by their original name (the part after `<time>-`).
fn sent_items(outbox: &Path) -> Vec<String> {
    let mut items: Vec<String> = names(&outbox.join(".sent"))
        .into_iter()
        .map(|n| n.get(21..).unwrap_or_default().to_string())
        .collect();
    items.sort();
    items
}

/// Lines of the receiver's JSON log whose message is `<verb> <path>`.
fn count_lines(log: &str, verb: &str, path: &str) -> usize {
    let wanted = format!("{verb} {path}");
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"].as_str() == Some(wanted.as_str()))
        .count()
}

fn sigterm(proc: &Proc) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &proc.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn items_dropped_into_the_outbox_arrive_intact_and_work_in_progress_is_left_alone() {
    let s = Setup::new();
    let outbox = outbox(&s);
    let port = free_udp_port();
    let mut recv = s.receiver(port, 5, &[]);
    let metrics = free_tcp_addr();
    let mut daemon = watch(
        &s,
        &outbox,
        port,
        &["--rate", "20MB", "--metrics", &metrics.to_string()],
    );
    wait_until(
        "metrics served",
        &mut [&mut daemon],
        Duration::from_secs(20),
        || scrape(metrics).is_some(),
    );

    // A file and a tree renamed in; work in progress under both conventions.
    let file_sum = drop_file(&outbox, "weights.bin", 3 << 20, 1);
    std::fs::write(outbox.join("upload.partial"), b"half").unwrap();
    std::fs::write(outbox.join(".hidden"), b"not mine").unwrap();
    let tree_src = s.tmp.path().join("dataset");
    tree::make_tree(
        &tree_src,
        tree::TreeSpec {
            small_scale: 1,
            big_bytes: 0,
            segment_edges: false,
            seed: 7,
        },
    )
    .unwrap();
    std::fs::rename(&tree_src, outbox.join("dataset")).unwrap();

    wait_until(
        "both items sent",
        &mut [&mut daemon, &mut recv],
        Duration::from_secs(60),
        || sent_items(&outbox) == ["dataset", "weights.bin"],
    );
    let sent_tree = names(&outbox.join(".sent"))
        .into_iter()
        .find(|n| n.ends_with("-dataset"))
        .map(|n| outbox.join(".sent").join(n))
        .unwrap();
    wait_until(
        "both items delivered",
        &mut [&mut daemon, &mut recv],
        Duration::from_secs(30),
        || {
            s.out.join("weights.bin").exists()
                && tree::compare(&sent_tree, &s.out.join("dataset"), Check::CONTENT).is_ok()
        },
    );
    assert_eq!(
        tree::sha256_file(&s.out.join("weights.bin")).unwrap(),
        file_sum
    );
    tree::compare(&sent_tree, &s.out.join("dataset"), Check::ALL).unwrap();
    // Work in progress stays where it is and never crosses.
    assert_eq!(names(&outbox), [".hidden", ".sent", "upload.partial"]);
    assert!(!s.out.join("upload.partial").exists() && !s.out.join(".hidden").exists());
    let page = scrape(metrics).unwrap();
    assert_eq!(value(&page, "sluice_outbox_items"), Some(0.0), "{page}");
    assert!(
        value(&page, "sluice_objects_total{outcome=\"sent\"}").unwrap_or(0.0) >= 2.0,
        "{page}"
    );

    // Idle now: heartbeats keep the link up for a receiver that would stop after 5 s
    // without frames.
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        recv.running(),
        "the receiver saw no heartbeats:\n{}",
        recv.log()
    );

    sigterm(&daemon);
    let stopped = daemon.finish(Duration::from_secs(20));
    assert_eq!(stopped.code(), 0, "{}", stopped.log);
    let got = recv.finish(Duration::from_secs(30));
    assert_eq!(count_lines(&got.log, "delivered", "weights.bin"), 1);
    // Every object the daemon announced arrived: none reported lost whole, nothing failed.
    assert!(!got.log.contains("lost whole"), "{}", got.log);
    assert_exit(&got, 0, "sluice-recv");
    // The daemon's last records ("stop" included) are covered by a head the receiver holds.
    let verified = std::process::Command::new(&binaries::binaries().audit)
        .arg("verify")
        .arg(s.tmp.path().join("send-state/audit.log"))
        .arg("--against")
        .arg(s.state.join("audit.log"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verified.stdout).into_owned()
        + &String::from_utf8_lossy(&verified.stderr);
    assert!(verified.status.success(), "{said}");
    assert!(said.contains("anchored: every record"), "{said}");
}

#[test]
fn an_item_written_slowly_in_place_waits_until_it_settles() {
    let s = Setup::new();
    let outbox = outbox(&s);
    let port = free_udp_port();
    let mut recv = s.receiver(port, 5, &[]);
    let mut daemon = watch(&s, &outbox, port, &["--settle", "2s"]);
    // Give the daemon time to start watching.
    std::thread::sleep(Duration::from_millis(500));

    // 12 chunks, one every 300 ms: it keeps changing for 3.3 s, longer than --settle.
    let path = outbox.join("slow.log");
    let mut file = std::fs::File::create(&path).unwrap();
    let mut written = Vec::new();
    for i in 0..12u8 {
        let chunk = vec![i; 10_000];
        file.write_all(&chunk).unwrap();
        file.flush().unwrap();
        written.extend_from_slice(&chunk);
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !s.out.join("slow.log").exists() && sent_items(&outbox).is_empty(),
            "sent after chunk {i}, before it settled:\n{}",
            daemon.log()
        );
    }
    drop(file);
    wait_until(
        "the settled item delivered",
        &mut [&mut daemon, &mut recv],
        Duration::from_secs(30),
        || s.out.join("slow.log").exists(),
    );
    assert_eq!(std::fs::read(s.out.join("slow.log")).unwrap(), written);
    assert_eq!(sent_items(&outbox), ["slow.log"]);
    sigterm(&daemon);
    daemon.finish(Duration::from_secs(20));
    let got = recv.finish(Duration::from_secs(30));
    assert_eq!(
        count_lines(&got.log, "delivered", "slow.log"),
        1,
        "{}",
        got.log
    );
}

#[test]
fn a_killed_daemon_sends_again_only_what_it_had_not_finished() {
    let s = Setup::new();
    let outbox = outbox(&s);
    let port = free_udp_port();
    let mut recv = s.receiver(port, 5, &[]);
    // 4 items of 3 MB at 4 MB/s: about 0.8 s each.
    let names_sent: Vec<String> = (0..4).map(|i| format!("item-{i}.bin")).collect();
    let mut sums = Vec::new();
    for (i, name) in names_sent.iter().enumerate() {
        drop_file(&outbox, name, 3_000_000, 100 + i as u64);
        sums.push(tree::sha256_file(&outbox.join(name)).unwrap());
    }
    let mut first = watch(&s, &outbox, port, &["--rate", "4MB"]);
    wait_until(
        "one item finished",
        &mut [&mut first, &mut recv],
        Duration::from_secs(60),
        || !sent_items(&outbox).is_empty(),
    );
    first.kill();
    let finished_before = sent_items(&outbox);
    assert!(
        finished_before.len() < names_sent.len(),
        "everything was sent before the kill"
    );

    let mut second = watch(&s, &outbox, port, &["--rate", "4MB"]);
    wait_until(
        "every item sent",
        &mut [&mut second, &mut recv],
        Duration::from_secs(60),
        || sent_items(&outbox) == names_sent,
    );
    wait_until(
        "every item delivered",
        &mut [&mut second, &mut recv],
        Duration::from_secs(30),
        || names_sent.iter().all(|n| s.out.join(n).exists()),
    );
    sigterm(&second);
    let second = second.finish(Duration::from_secs(20));
    // The next item had been started when the first finished: the kill cut it off.
    assert!(
        second
            .log
            .contains("interrupted by a restart; sending it again"),
        "{}",
        second.log
    );
    let got = recv.finish(Duration::from_secs(30));
    for (name, sum) in names_sent.iter().zip(&sums) {
        assert_eq!(
            &tree::sha256_file(&s.out.join(name)).unwrap(),
            sum,
            "{name}"
        );
        // Nothing lost: each item in .sent, unchanged.
        let sent = names(&outbox.join(".sent"))
            .into_iter()
            .find(|n| n.ends_with(name.as_str()))
            .unwrap();
        assert_eq!(
            &tree::sha256_file(&outbox.join(".sent").join(sent)).unwrap(),
            sum
        );
    }
    for name in &finished_before {
        assert_eq!(
            count_lines(&got.log, "delivered", name),
            1,
            "{name} delivered again:\n{}",
            got.log
        );
        assert_eq!(
            count_lines(&got.log, "already delivered", name),
            0,
            "{name} finished before the kill was sent again:\n{}",
            got.log
        );
    }
}

/// Findings 1 and 2 of the second red-team round: a writer in the outbox (a local user in its
/// group) renamed a decoy in and swapped it, back and forth, with a symlink to the daemon's
/// own signing key (`renameat2(RENAME_EXCHANGE)`): the daemon checked the type by path, then
/// opened by name, and the key was published on the high side (2 of 6 runs of 30 items). A
/// FIFO swapped in the same way hung the daemon for good. Now every file is opened once, from
/// the outbox's fd, without following or blocking, and read only if it is the regular file
/// that was listed. Here an unprivileged writer races 200 items; no byte of the key crosses,
/// every delivered file is its decoy, and the daemon keeps sending and stops on SIGTERM.
#[test]
#[ignore = "needs root, setpriv and python3: races the daemon as an unprivileged writer (./test.sh runs it)"]
fn an_outbox_writer_swapping_in_symlinks_and_fifos_never_ships_a_secret_nor_hangs_the_daemon() {
    use std::os::unix::fs::{chown, PermissionsExt};
    sluice_tests::require::root("the writer runs as the unprivileged user nobody");
    sluice_tests::require::tool("setpriv", "util-linux");
    sluice_tests::require::tool("/usr/bin/python3", "python3");
    const ITEMS: u32 = 200;
    let s = Setup::new();
    let mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    mode(s.tmp.path(), 0o755);
    // The daemon's outbox, writable by its group (here nobody's); without the sticky bit the
    // package sets, so the writer may also rename what is not its own.
    let outbox = outbox(&s);
    chown(&outbox, None, Some(65534)).unwrap();
    mode(&outbox, 0o2770);
    let stage = s.tmp.path().join("stage");
    std::fs::create_dir(&stage).unwrap();
    chown(&stage, Some(65534), Some(65534)).unwrap();
    let secret = std::fs::read(&s.keys.sender_key).unwrap();
    let racer = s.tmp.path().join("racer.py");
    std::fs::write(
        &racer,
        r#"import ctypes, os, random, sys, time
libc = ctypes.CDLL(None, use_errno=True)
def exchange(a, b):
    if libc.renameat2(-100, a.encode(), -100, b.encode(), 2) != 0:
        raise OSError(ctypes.get_errno(), 'renameat2')
outbox, stage, secret, items = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
random.seed(1)
swaps = 0
for i in range(items):
    name = 'item%03d' % i
    decoy, link, fifo = (os.path.join(stage, name + x) for x in ('', '.link', '.fifo'))
    with open(decoy, 'wb') as f:
        f.write(b'decoy %d\n' % i * 100)
    os.symlink(secret, link)
    os.mkfifo(fifo)
    item = os.path.join(outbox, name)
    os.rename(decoy, item)
    end = time.time() + 0.05
    while time.time() < end:
        other = link if swaps % 2 == 0 else fifo
        try:
            exchange(item, other)
            time.sleep(random.random() / 1000)
            exchange(item, other)
            time.sleep(random.random() / 1000)
            swaps += 1
        except OSError:
            pass
    # Some items are left as the symlink or the FIFO (unless already sent and moved away).
    try:
        if i % 3 == 1:
            exchange(item, link)
        elif i % 3 == 2:
            exchange(item, fifo)
    except OSError:
        pass
print('swaps', swaps)
"#,
    )
    .unwrap();
    let port = free_udp_port();
    let mut recv = s.receiver(port, 10, &[]);
    let mut daemon = watch(&s, &outbox, port, &["--rate", "50MB"]);
    let started = Instant::now();
    while !daemon.log().contains("watching") {
        assert!(daemon.running(), "{}", daemon.log());
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut race = sluice_tests::require::python_as_nobody(&racer);
    race.arg(&outbox)
        .arg(&stage)
        .arg(&s.keys.sender_key)
        .arg(ITEMS.to_string());
    let raced = Proc::spawn("racer", race).finish(Duration::from_secs(120));
    assert_eq!(raced.code(), 0, "{}", raced.log);
    let swaps = sluice_tests::require::reported(&raced.log, "swaps");
    assert!(
        swaps > u64::from(ITEMS),
        "the race did not run: {}",
        raced.log
    );

    // Still working: a plain item dropped after the race arrives.
    let sum = drop_file(&outbox, "after-the-race.bin", 1 << 20, 9);
    wait_until(
        "the item after the race delivered",
        &mut [&mut daemon, &mut recv],
        Duration::from_secs(60),
        || tree::sha256_file(&s.out.join("after-the-race.bin")).ok() == Some(sum),
    );
    sigterm(&daemon);
    let stopped = daemon.finish(Duration::from_secs(20));
    assert_eq!(
        stopped.code(),
        0,
        "a SIGTERM did not stop it:\n{}",
        stopped.log
    );
    let got = recv.finish(Duration::from_secs(30));

    // Nothing but decoys crossed.
    let mut delivered = 0;
    for name in names(&s.out) {
        let content = std::fs::read(s.out.join(&name)).unwrap();
        assert_ne!(content, secret, "{name}: the signing key crossed the diode");
        if let Some(i) = name
            .strip_prefix("item")
            .and_then(|n| n.parse::<u32>().ok())
        {
            assert_eq!(
                content,
                format!("decoy {i}\n").repeat(100).into_bytes(),
                "{name}"
            );
            delivered += 1;
        }
    }
    assert!(
        !got.log
            .contains(&String::from_utf8_lossy(&secret).trim().to_string()),
        "the key's text is in the receiver's log"
    );
    // The race was met: the daemon refused files swapped under it, or listed them as what
    // they were at that moment (a symlink or FIFO is never an item).
    let met = [
        "is a symlink",
        "not a regular file",
        "replaced by another file",
        "not a file or directory",
    ];
    let refusals = stopped
        .log
        .lines()
        .filter(|l| met.iter().any(|m| l.contains(m)))
        .count();
    assert!(refusals > 0, "{}", stopped.log);
    assert!(delivered > 0, "no decoy arrived:\n{}", got.log);
    eprintln!("{swaps} swaps, {delivered} decoys delivered, {refusals} refusals logged");
}

/// Finding 3 of the second red-team round: a writer planted `OUTBOX/.sent` as a symlink to
/// another directory, and the daemon moved sent items into it (and pruned files there). Now
/// the daemon refuses to start on it, naming it, and leaves the directory it points at alone.
#[test]
fn a_sent_directory_planted_as_a_symlink_stops_the_daemon_at_start() {
    let s = Setup::new();
    let outbox = outbox(&s);
    let elsewhere = s.tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("precious"), b"keep me").unwrap();
    std::os::unix::fs::symlink(&elsewhere, outbox.join(".sent")).unwrap();
    drop_file(&outbox, "item.bin", 1000, 3);
    let port = free_udp_port();
    let stopped = watch(&s, &outbox, port, &["--keep-sent", "1s"]).finish(Duration::from_secs(20));
    assert_eq!(stopped.code(), 1, "{}", stopped.log);
    assert!(
        stopped.log.contains(".sent") && stopped.log.contains("is a symlink"),
        "{}",
        stopped.log
    );
    assert_eq!(names(&elsewhere), ["precious"]);
    assert_eq!(names(&outbox), [".sent", "item.bin"]);
}

#[test]
fn a_missing_or_wrong_outbox_is_a_configuration_error_exit_2() {
    let s = Setup::new();
    let missing = s.tmp.path().join("no-such-outbox");
    let port = free_udp_port();
    let stopped = watch(&s, &missing, port, &[]).finish(Duration::from_secs(20));
    assert_eq!(stopped.code(), 2, "{}", stopped.log);
    assert!(
        stopped.log.contains("--outbox") && stopped.log.contains("does not exist"),
        "{}",
        stopped.log
    );
    let file = s.tmp.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let stopped = watch(&s, &file, port, &[]).finish(Duration::from_secs(20));
    assert_eq!(stopped.code(), 2, "{}", stopped.log);
    assert!(
        stopped.log.contains("is not a directory"),
        "{}",
        stopped.log
    );
    // Whoever can write the outbox would have their files signed as models: refused.
    let outbox = s.tmp.path().join("outbox-sign");
    std::fs::create_dir(&outbox).unwrap();
    let stopped =
        watch(&s, &outbox, port, &["--sign-model", "k.pem"]).finish(Duration::from_secs(20));
    assert_eq!(stopped.code(), 2, "{}", stopped.log);
    assert!(
        stopped.log.contains("watch does not sign models"),
        "{}",
        stopped.log
    );
}

/// The red team's variant of finding 3: a writer made `OUTBOX/.sent` (a plain directory,
/// mode 0777) before the daemon's first start, and the daemon moved sent items into it, where
/// the writer took them back to be sent again under a name of theirs. A `.sent` the daemon's
/// user does not own is now refused at start.
#[test]
#[ignore = "needs root: the planted .sent belongs to another user (./test.sh runs it)"]
fn a_sent_directory_another_user_made_stops_the_daemon_at_start() {
    use std::os::unix::fs::{chown, PermissionsExt};
    sluice_tests::require::root("the planted .sent belongs to nobody");
    let s = Setup::new();
    let outbox = outbox(&s);
    std::fs::create_dir(outbox.join(".sent")).unwrap();
    std::fs::set_permissions(outbox.join(".sent"), std::fs::Permissions::from_mode(0o777)).unwrap();
    chown(outbox.join(".sent"), Some(65534), Some(65534)).unwrap();
    drop_file(&outbox, "item.bin", 1000, 4);
    let port = free_udp_port();
    let stopped = watch(&s, &outbox, port, &[]).finish(Duration::from_secs(20));
    assert_eq!(stopped.code(), 1, "{}", stopped.log);
    assert!(
        stopped.log.contains("is owned by uid 65534"),
        "{}",
        stopped.log
    );
    assert_eq!(names(&outbox.join(".sent")), Vec::<String>::new());
    assert_eq!(names(&outbox), [".sent", "item.bin"]);
}

/// Long enough for two heartbeats of an idle daemon (one a second).
const HEARTBEATS: Duration = Duration::from_millis(2500);

/// Issue 31, item 2: a directory item was delivered whole, yet the receiver reported three
/// objects "lost whole", counted them failed and exited 3. The daemon numbered each item's
/// objects after the last item's entries, but small files travel in packs (one object for
/// several entries): the ids between were announced by the heartbeats and never sent. Here a
/// directory of three small files (one pack) is sent, a fourth file is added while it is on
/// the link, and the item is sent again: every file arrives, nothing is lost whole, the
/// receiver exits 0.
#[test]
fn a_directory_item_sent_again_after_it_changed_leaves_no_object_lost_whole() {
    let s = Setup::new();
    let outbox = outbox(&s);
    let port = free_udp_port();
    let mut recv = s.receiver(port, 5, &[]);
    // 3 × 40 kB in one pack at 60 kB/s: on the link for about two seconds.
    let mut daemon = watch(&s, &outbox, port, &["--rate", "60kB", "--settle", "1s"]);
    let started = Instant::now();
    while !daemon.log().contains("watching") {
        assert!(daemon.running(), "{}", daemon.log());
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let staging = s.tmp.path().join("staging");
    let batch = staging.join("batch");
    std::fs::create_dir_all(&batch).unwrap();
    let mut sums = Vec::new();
    for (i, name) in ["one.bin", "two.bin", "three.bin"].iter().enumerate() {
        let sum = tree::write_random_file(&batch.join(name), 40_000, 10 + i as u64).unwrap();
        sums.push((name.to_string(), sum));
    }
    std::fs::rename(&batch, outbox.join("batch")).unwrap();
    let started = Instant::now();
    while !daemon.log().contains("sending item") {
        assert!(daemon.running() && recv.running(), "{}", daemon.log());
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let fourth = tree::write_random_file(&outbox.join("batch/four.bin"), 40_000, 13).unwrap();
    sums.push(("four.bin".to_string(), fourth));
    wait_until(
        "every file delivered",
        &mut [&mut daemon, &mut recv],
        Duration::from_secs(60),
        || {
            sent_items(&outbox) == ["batch"]
                && sums.iter().all(|(name, sum)| {
                    tree::sha256_file(&s.out.join("batch").join(name)).ok() == Some(*sum)
                })
        },
    );
    // Heartbeats announce what went out (a daemon stopping sends none at the end).
    std::thread::sleep(HEARTBEATS);
    sigterm(&daemon);
    let stopped = daemon.finish(Duration::from_secs(20));
    assert_eq!(stopped.code(), 0, "{}", stopped.log);
    // The fourth file came while the first sending was on the link: the item went twice.
    assert!(
        stopped.log.contains("changed while it was being sent"),
        "{}",
        stopped.log
    );
    let got = recv.finish(Duration::from_secs(30));
    assert!(!got.log.contains("lost whole"), "{}", got.log);
    assert_eq!(count_lines(&got.log, "delivered", "batch/four.bin"), 1);
    let summary = sluice_tests::harness::Summary::find(&got.log, "objects_lost_whole")
        .expect("a JSON summary");
    assert_eq!(summary.get("objects_lost_whole"), 0, "{}", got.log);
    assert_eq!(summary.get("objects_failed"), 0, "{}", got.log);
    assert_eq!(got.code(), 0, "{}", got.log);
}

/// What "lost whole" is for still holds for the daemon: of three items sent one after the
/// other (a packed directory, a small file, another file), every frame of the second is lost
/// on the link. The receiver names that one object, and only it, lost whole and exits 3;
/// its ids being dense, the object lost is the daemon's second (id 1), not an id between.
#[test]
fn an_item_whose_frames_are_all_lost_is_reported_lost_whole_and_alone() {
    use sluice_tests::relay::{Faults, Relay};
    let s = Setup::new();
    let outbox = outbox(&s);
    let port = free_udp_port();
    let mut recv = s.receiver(port, 5, &[]);
    let relay = Relay::start(
        ([127, 0, 0, 1], port).into(),
        Faults {
            lose_objects: vec![1],
            ..Faults::default()
        },
    )
    .unwrap();
    let mut daemon = watch(&s, &outbox, relay.addr().port(), &["--rate", "5MB"]);
    let staging = s.tmp.path().join("staging");
    let batch = staging.join("batch");
    std::fs::create_dir_all(&batch).unwrap();
    for i in 0..3u64 {
        tree::write_random_file(&batch.join(format!("{i}.bin")), 2_000, 20 + i).unwrap();
    }
    std::fs::rename(&batch, outbox.join("batch")).unwrap();
    let mut expected = vec!["batch".to_string()];
    for (name, seed) in [("lost.bin", 30), ("after.bin", 31)] {
        wait_until(
            "the item before sent",
            &mut [&mut daemon, &mut recv],
            Duration::from_secs(30),
            || sent_items(&outbox) == expected,
        );
        drop_file(&outbox, name, 5_000, seed);
        expected.push(name.to_string());
        expected.sort();
    }
    wait_until(
        "the last item delivered",
        &mut [&mut daemon, &mut recv],
        Duration::from_secs(30),
        || s.out.join("after.bin").exists() && s.out.join("batch/2.bin").exists(),
    );
    // Heartbeats announce what went out (a daemon stopping sends none at the end).
    std::thread::sleep(HEARTBEATS);
    sigterm(&daemon);
    let stopped = daemon.finish(Duration::from_secs(20));
    assert_eq!(stopped.code(), 0, "{}", stopped.log);
    let got = recv.finish(Duration::from_secs(30));
    let counts = relay.stop();
    assert!(counts.dropped_object > 0, "{counts:?}");
    assert!(!s.out.join("lost.bin").exists());
    let summary = sluice_tests::harness::Summary::find(&got.log, "objects_lost_whole")
        .expect("a JSON summary");
    assert_eq!(summary.get("objects_lost_whole"), 1, "{}", got.log);
    assert_eq!(summary.get("objects_failed"), 1, "{}", got.log);
    let lost: Vec<&str> = got
        .log
        .lines()
        .filter(|l| l.contains("object failed: lost whole"))
        .collect();
    assert_eq!(lost.len(), 1, "{}", got.log);
    assert!(lost[0].contains("/1\""), "{}", got.log);
    assert_eq!(got.code(), 3, "{}", got.log);
}

/// The JSON log lines of `log` whose message starts with `start`, for item `item`.
fn item_lines(log: &str, item: &str, start: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["item"].as_str() == Some(item)
                && v["message"].as_str().is_some_and(|m| m.starts_with(start))
        })
        .collect()
}

/// Waits until `ok` holds for the daemon's log (or 60 s), both daemons running.
fn wait_for_log(what: &str, daemon: &mut Proc, other: &mut Proc, ok: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = daemon.log();
        if ok(&log) {
            return;
        }
        assert!(
            daemon.running() && other.running(),
            "{what}:\n{log}\n---\n{}",
            other.log()
        );
        assert!(Instant::now() < deadline, "{what}: not within 60 s:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What `OUTBOX/.refused` holds for `item`: the reason written beside it (none if not there).
fn refused_reason(outbox: &Path, item: &str) -> Option<String> {
    let dir = outbox.join(".refused");
    names(&dir)
        .into_iter()
        .find(|n| n.ends_with(&format!("-{item}.reason")))
        .map(|n| std::fs::read_to_string(dir.join(n)).unwrap())
}

/// A request item, made in `dir/staging/ITEM` as README says: the files under the names the
/// request gives them (below `report/`), the request, and a signature by each of `signers`
/// (key files `dir/NAME.key`).
fn request_item(dir: &Path, item: &str, files: &[(&str, &[u8])], signers: &[&str]) -> PathBuf {
    use sluice_tests::minisign::sign;
    let staged = dir.join("staging").join(item);
    for (name, bytes) in files {
        let path = staged.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let made = std::process::Command::new(&binaries::binaries().approve)
        .current_dir(&staged)
        .args([
            "request",
            "report",
            "--purpose",
            item,
            "--out",
            "request.toml",
        ])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    for signer in signers {
        sign(
            dir,
            &format!("{signer}.key"),
            staged.join("request.toml").to_str().unwrap(),
            staged
                .join(format!("request.toml.{signer}.minisig"))
                .to_str()
                .unwrap(),
        );
    }
    staged
}

/// Issue 29, part 3, budgets, in the daemon: the weights rule allows 1 MiB a day and the
/// pickles rule none. A first 800 KiB weights request ships; a second one waits in the outbox
/// (`waiting for export budget`, the phrase naming the rule, looked at again as the day rolls
/// on), not refused; a request holding a pickle is refused for good (it can never fit).
/// `/metrics` shows what is spent; the receiver, with the same budgets, gets the first only.
#[test]
#[ignore = "needs minisign (./test.sh installs it and runs this)"]
fn a_request_over_the_export_budget_waits_and_a_forbidden_kind_is_refused() {
    sluice_tests::require::tool("minisign", "minisign");
    let s = Setup::new();
    let dir = s.tmp.path();
    sluice_tests::minisign::keypair(dir, "alice");
    let policy = "threshold = 1\napprovers = [\"alice.pub\"]\n\
                  [[rule]]\nname = \"weights\"\npaths = [\"*.bin\"]\nthreshold = 1\n\
                  approvers = [\"alice.pub\"]\nbytes_per_day = \"1 MiB\"\n\
                  [[rule]]\nname = \"pickles\"\npaths = [\"*.pt\"]\nthreshold = 1\n\
                  approvers = [\"alice.pub\"]\nfiles_per_day = 0\n";
    let approvals = dir.join("approvals.toml");
    std::fs::write(&approvals, policy).unwrap();
    let weights = |mark: &str| {
        let mut bytes = vec![7u8; 800 << 10];
        bytes[..mark.len()].copy_from_slice(mark.as_bytes());
        bytes
    };
    let (first, second) = (weights("WEIGHTS-FIRST"), weights("WEIGHTS-SECOND"));
    request_item(dir, "w1", &[("report/w1.bin", &first)], &["alice"]);
    request_item(dir, "w2", &[("report/w2.bin", &second)], &["alice"]);
    request_item(
        dir,
        "pt",
        &[("report/m.pt", b"PICKLE-FORBIDDEN")],
        &["alice"],
    );

    let outbox = outbox(&s);
    let port = free_udp_port();
    let mut recv = s.receiver(
        port,
        30,
        &["--approval-policy", approvals.to_str().unwrap()],
    );
    let metrics = free_tcp_addr();
    let mut daemon = watch(
        &s,
        &outbox,
        port,
        &[
            "--rate",
            "20MB",
            "--approval-policy",
            approvals.to_str().unwrap(),
            "--metrics",
            &metrics.to_string(),
        ],
    );
    std::fs::rename(dir.join("staging/w1"), outbox.join("w1")).unwrap();
    wait_until(
        "w1 delivered",
        &mut [&mut daemon, &mut recv],
        Duration::from_secs(60),
        || sent_items(&outbox) == ["w1"] && s.out.join("report/w1.bin").exists(),
    );
    for item in ["w2", "pt"] {
        std::fs::rename(dir.join("staging").join(item), outbox.join(item)).unwrap();
    }
    wait_for_log("w2 waits, pt refused", &mut daemon, &mut recv, |log| {
        !item_lines(log, "w2", "waiting for export budget").is_empty()
            && refused_reason(&outbox, "pt").is_some()
    });
    let waiting = item_lines(&daemon.log(), "w2", "waiting for export budget");
    assert!(
        waiting[0]["message"].as_str().unwrap().contains(
            "export budget exceeded: rule \"weights\" 0.8 of 1 MiB today; this export adds \
             800.0 KiB"
        ),
        "{waiting:?}"
    );
    let reason = refused_reason(&outbox, "pt").unwrap();
    assert!(
        reason.contains("export budget exceeded: rule \"pickles\" 0 of 0 files today")
            && reason.contains("forbids"),
        "{reason}"
    );
    let page = scrape(metrics).unwrap();
    assert_eq!(
        value(&page, "sluice_export_budget_used_bytes{budget=\"weights\"}"),
        Some(f64::from(800u32 << 10)),
        "{page}"
    );
    assert_eq!(
        value(
            &page,
            "sluice_export_budget_limit_bytes{budget=\"weights\"}"
        ),
        Some(f64::from(1u32 << 20)),
        "{page}"
    );
    assert_eq!(
        value(&page, "sluice_outbox_pending_approval"),
        Some(1.0),
        "{page}"
    );
    // Still waiting a rescan later, in the outbox.
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        names(&outbox).contains(&"w2".to_string()),
        "{:?}",
        names(&outbox)
    );
    sigterm(&daemon);
    let stopped = daemon.finish(Duration::from_secs(20));
    assert_eq!(stopped.code(), 0, "{}", stopped.log);
    let got = recv.finish(Duration::from_secs(60));
    assert_exit(&got, 0, "sluice-recv");
    assert_eq!(std::fs::read(s.out.join("report/w1.bin")).unwrap(), first);
    for leaked in ["WEIGHTS-SECOND", "PICKLE-FORBIDDEN"] {
        assert!(
            tree::find_bytes(&s.out, leaked.as_bytes()).is_empty()
                && tree::find_bytes(&s.state, leaked.as_bytes()).is_empty(),
            "{leaked} crossed"
        );
    }
}

/// Issue 29, part 1: the daemon ships approved exports. Each item is a request directory
/// (`request.toml`, its `*.minisig`, the files under the names it gives): with one of the two
/// approvals the policy needs it waits in the outbox (log, `/metrics`, nothing on the link),
/// and it ships — its files only, not the request — when the second `.minisig` is dropped in;
/// the receiver checks the approval again from its own policy. The attacks of a writer of the
/// outbox: a file added to an approved request, a file changed after approval, a directory
/// the request never named and a plain file are each moved to `OUTBOX/.refused` with their
/// reason; a request signed by a key the policy does not hold (and one approver) waits, the
/// untrusted key named; none of their bytes crosses.
#[test]
#[ignore = "needs minisign (./test.sh installs it and runs this)"]
fn an_export_request_waits_for_its_quorum_in_the_outbox_and_only_approved_files_ship() {
    use sluice_tests::minisign::{key_id, keypair, sign};
    sluice_tests::require::tool("minisign", "minisign");
    let s = Setup::new();
    let dir = s.tmp.path();
    for name in ["alice", "bob", "carol", "mallory"] {
        keypair(dir, name);
    }
    let policy = "threshold = 2\napprovers = [\"alice.pub\", \"bob.pub\", \"carol.pub\"]\n";
    std::fs::write(dir.join("approvals.toml"), policy).unwrap();
    std::fs::write(dir.join("recv-approvals.toml"), policy).unwrap();
    let approvals = dir.join("approvals.toml");

    let make_item = |item: &str, files: &[(&str, &[u8])], signers: &[&str]| {
        request_item(dir, item, files, signers)
    };
    let approved: &[(&str, &[u8])] = &[
        ("report/eval.json", b"{\"accuracy\": 0.91}"),
        ("report/summary.txt", b"all good"),
    ];
    make_item("q3", approved, &["alice"]);
    // Approved by two, then a file added, or one changed, after the signatures.
    let added = make_item("added", approved, &["alice", "bob"]);
    std::fs::write(added.join("report/weights.bin"), b"WEIGHTS-ADDED").unwrap();
    let changed = make_item("changed", approved, &["alice", "bob"]);
    std::fs::write(changed.join("report/summary.txt"), b"WEIGHTS-CHANGED").unwrap();
    // A directory the request never named carries a name (data) of its own.
    let dirs = make_item("dirs", approved, &["alice", "bob"]);
    std::fs::create_dir(dirs.join("report/WEIGHTS-IN-A-NAME")).unwrap();
    // Signed twice, by a key the policy does not hold and by one approver.
    make_item(
        "forged",
        &[("report/model.bin", b"WEIGHTS-FORGED")],
        &["mallory", "alice"],
    );
    std::fs::write(dir.join("staging/plain.txt"), b"WEIGHTS-PLAIN").unwrap();

    let outbox = outbox(&s);
    let port = free_udp_port();
    let recv_policy = dir.join("recv-approvals.toml");
    let mut recv = s.receiver(
        port,
        30,
        &["--approval-policy", recv_policy.to_str().unwrap()],
    );
    let metrics = free_tcp_addr();
    let mut daemon = watch(
        &s,
        &outbox,
        port,
        &[
            "--rate",
            "10MB",
            "--approval-policy",
            approvals.to_str().unwrap(),
            "--metrics",
            &metrics.to_string(),
        ],
    );
    for item in ["q3", "added", "changed", "dirs", "forged", "plain.txt"] {
        std::fs::rename(dir.join("staging").join(item), outbox.join(item)).unwrap();
    }
    wait_for_log(
        "q3 pending, the others refused",
        &mut daemon,
        &mut recv,
        |log| {
            !item_lines(log, "q3", "waiting for approval").is_empty()
                && !item_lines(log, "forged", "waiting for approval").is_empty()
                && ["added", "changed", "dirs", "plain.txt"]
                    .iter()
                    .all(|i| refused_reason(&outbox, i).is_some())
        },
    );
    let waiting = item_lines(&daemon.log(), "q3", "waiting for approval");
    assert!(
        waiting[0]["message"]
            .as_str()
            .unwrap()
            .contains("not approved: 1 of 2 approvals"),
        "{waiting:?}"
    );
    let forged = item_lines(&daemon.log(), "forged", "waiting for approval");
    let forged = forged[0]["message"].as_str().unwrap();
    assert!(
        forged.contains("1 of 2 approvals")
            && forged.contains(&format!("untrusted key {}", key_id(dir, "mallory"))),
        "{forged}"
    );
    for (item, reason) in [
        ("added", "not in the approved request: report/weights.bin"),
        ("changed", "changed since approval: report/summary.txt"),
        (
            "dirs",
            "not in the approved request: report/WEIGHTS-IN-A-NAME",
        ),
        ("plain.txt", "not a request"),
    ] {
        let said = refused_reason(&outbox, item).unwrap();
        assert!(said.contains(reason), "{item}: {said}");
        assert!(
            !item_lines(&daemon.log(), item, "refused").is_empty(),
            "{item}:\n{}",
            daemon.log()
        );
    }
    let page = scrape(metrics).unwrap();
    assert_eq!(
        value(&page, "sluice_outbox_pending_approval"),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        value(&page, "sluice_outbox_refused_total"),
        Some(4.0),
        "{page}"
    );
    // What an operator sees: `sluice-send status`, beside the running daemon.
    let status = |extra: &[&str]| {
        let out = std::process::Command::new(&binaries::binaries().send)
            .arg("status")
            .arg("--state")
            .arg(s.tmp.path().join("send-state"))
            .arg("--outbox")
            .arg(&outbox)
            .arg("--approval-policy")
            .arg(&approvals)
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let json: serde_json::Value = serde_json::from_str(&status(&["--json"])).unwrap();
    let item = |name: &str| {
        json["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["item"] == name)
            .unwrap_or_else(|| panic!("{name} not in {json}"))
            .clone()
    };
    assert_eq!(item("q3")["state"], "pending", "{json}");
    let detail = item("q3")["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("1 of 2 approvals")
            && detail.contains(&format!("signed: alice ({})", key_id(dir, "alice")))
            && detail.contains("still to sign: 1 more of"),
        "{detail}"
    );
    assert_eq!(item("forged")["state"], "pending", "{json}");
    let refused: Vec<(String, String)> = json["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(refused.len(), 4, "{json}");
    assert!(
        refused
            .iter()
            .any(|(n, r)| n.ends_with("-added") && r.contains("report/weights.bin")),
        "{json}"
    );
    let text = status(&[]);
    assert!(
        text.contains("waiting for approval: 2") && text.contains("refused: 4"),
        "{text}"
    );
    // Still waiting a rescan later; nothing of any item crossed.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(names(&outbox), [".refused", ".sent", "forged", "q3"]);
    assert!(names(&s.out).is_empty(), "{:?}", names(&s.out));

    // Bob approves: his signature is dropped into the item, and it ships.
    sign(
        dir,
        "bob.key",
        outbox.join("q3/request.toml").to_str().unwrap(),
        dir.join("bob.minisig").to_str().unwrap(),
    );
    std::fs::rename(
        dir.join("bob.minisig"),
        outbox.join("q3/request.toml.bob.minisig"),
    )
    .unwrap();
    wait_until(
        "q3 delivered",
        &mut [&mut daemon, &mut recv],
        Duration::from_secs(60),
        || {
            sent_items(&outbox) == ["q3"]
                && approved.iter().all(|(name, bytes)| {
                    std::fs::read(s.out.join(name)).ok().as_deref() == Some(*bytes)
                })
        },
    );
    // The files only, under the request's names: not the request, not the signatures.
    assert_eq!(names(&s.out), ["report"]);
    assert_eq!(names(&s.out.join("report")), ["eval.json", "summary.txt"]);
    let page = scrape(metrics).unwrap();
    assert_eq!(
        value(&page, "sluice_outbox_pending_approval"),
        Some(1.0),
        "{page}"
    );
    std::thread::sleep(HEARTBEATS);
    sigterm(&daemon);
    let stopped = daemon.finish(Duration::from_secs(20));
    assert_eq!(stopped.code(), 0, "{}", stopped.log);
    // Issue 31, item 4: the daemon says what it did when it stops.
    assert!(
        stopped
            .log
            .contains("watch stopped: 1 item(s) sent (3 object(s)")
            && stopped
                .log
                .contains("4 item(s) refused; 1 request(s) waiting for approval"),
        "{}",
        stopped.log
    );
    let got = recv.finish(Duration::from_secs(60));
    assert_exit(&got, 0, "sluice-recv");
    for leaked in [
        "WEIGHTS-ADDED",
        "WEIGHTS-CHANGED",
        "WEIGHTS-FORGED",
        "WEIGHTS-PLAIN",
    ] {
        assert!(
            tree::find_bytes(&s.out, leaked.as_bytes()).is_empty()
                && tree::find_bytes(&s.state, leaked.as_bytes()).is_empty(),
            "{leaked} crossed"
        );
    }
    // The receiver checked the approval itself: its audit log names both approvers.
    let mut approvers = vec![key_id(dir, "alice"), key_id(dir, "bob")];
    approvers.sort();
    let audit = std::fs::read_to_string(s.state.join("audit.log")).unwrap();
    let delivered: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["event"] == "delivered" && r["path"] == "report/eval.json")
        .collect();
    assert_eq!(delivered.len(), 1, "{audit}");
    let mut ids: Vec<String> = delivered[0]["approvers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, approvers);
    // The daemon's own audit log: the pending requests, the four refusals, the approval.
    let send_audit = std::fs::read_to_string(s.tmp.path().join("send-state/audit.log")).unwrap();
    let events = |event: &str| {
        send_audit
            .lines()
            .filter(|l| l.contains(&format!("\"event\":\"{event}\"")))
            .count()
    };
    assert_eq!(events("refused"), 4, "{send_audit}");
    assert!(events("pending") >= 2, "{send_audit}");
    assert_eq!(events("approval_checked"), 1, "{send_audit}");
}

/// `sluice-send watch --policy`: an item holding a file the receiver's content policy would
/// refuse (a pickle that runs a shell command, a denied name) is moved to `OUTBOX/.refused`
/// with the reason, nothing of it sent; a clean item beside it ships.
#[test]
fn an_outbox_item_the_content_policy_refuses_is_moved_aside_whole_and_never_sent() {
    let s = Setup::new();
    let dir = s.tmp.path();
    let policy = dir.join("policy.toml");
    // The receiver's policy, copied to the low side (its quarantine is the receiver's).
    std::fs::write(
        &policy,
        format!(
            "quarantine = {:?}\ndeny = [\"*.exe\"]\n[models]\npickle = \"scan\"\n",
            dir.join("quarantine").display().to_string()
        ),
    )
    .unwrap();
    let staging = dir.join("staging");
    std::fs::create_dir_all(staging.join("checkpoint")).unwrap();
    // Protocol 0: GLOBAL posix.system, called with "id".
    std::fs::write(
        staging.join("checkpoint/model.pkl"),
        b"cposix\nsystem\n(S'id'\ntR.",
    )
    .unwrap();
    std::fs::write(staging.join("checkpoint/notes.txt"), b"EVIL-NOTES").unwrap();
    std::fs::write(staging.join("tool.exe"), b"MZ\x90\x00EVIL-TOOL").unwrap();
    std::fs::write(staging.join("clean.txt"), b"fine to send").unwrap();
    let outbox = outbox(&s);
    let port = free_udp_port();
    let mut recv = s.receiver(port, 30, &[]);
    let mut daemon = watch(
        &s,
        &outbox,
        port,
        &["--rate", "10MB", "--policy", policy.to_str().unwrap()],
    );
    for item in ["checkpoint", "tool.exe", "clean.txt"] {
        std::fs::rename(staging.join(item), outbox.join(item)).unwrap();
    }
    wait_until(
        "clean.txt delivered, the others refused",
        &mut [&mut daemon, &mut recv],
        Duration::from_secs(60),
        || {
            s.out.join("clean.txt").exists()
                && refused_reason(&outbox, "checkpoint").is_some()
                && refused_reason(&outbox, "tool.exe").is_some()
        },
    );
    let reason = refused_reason(&outbox, "checkpoint").unwrap();
    assert!(
        reason.contains("checkpoint/model.pkl") && reason.contains("posix.system"),
        "{reason}"
    );
    assert!(
        refused_reason(&outbox, "tool.exe")
            .unwrap()
            .contains("tool.exe"),
        "{:?}",
        refused_reason(&outbox, "tool.exe")
    );
    std::thread::sleep(HEARTBEATS);
    sigterm(&daemon);
    let stopped = daemon.finish(Duration::from_secs(20));
    assert_eq!(stopped.code(), 0, "{}", stopped.log);
    let got = recv.finish(Duration::from_secs(60));
    assert_exit(&got, 0, "sluice-recv");
    assert_eq!(names(&s.out), ["clean.txt"]);
    for leaked in ["EVIL-NOTES", "EVIL-TOOL", "posix"] {
        assert!(
            tree::find_bytes(&s.state, leaked.as_bytes()).is_empty(),
            "{leaked} crossed"
        );
    }
}
