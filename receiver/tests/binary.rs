//! The `sluice-recv` binary: usage errors, keygen, exit statuses, the documented log phrases,
//! the JSON and human summaries, SIGTERM, and a SIGKILL mid-transfer followed by a restart
//! that completes the object.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::Digest as _;
use sluice_protocol::wire::BlockKind;
use support::{all, bytes, generate_keys, send, Item, Producer, Rig};

const BIN: &str = env!("CARGO_BIN_EXE_sluice-recv");
const WAIT: Duration = Duration::from_secs(60);

/// A running `sluice-recv` whose stderr is collected; killed on drop.
struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    addr: SocketAddr,
}

impl Daemon {
    fn start(rig: &Rig, port: u16, extra: &[&str]) -> Daemon {
        let mut child = Command::new(BIN)
            .arg("--link")
            .arg(format!("udp://127.0.0.1:{port}"))
            .arg("--identity")
            .arg(&rig.keys.receiver_key)
            .arg("--trust")
            .arg(&rig.keys.sender_pub)
            .arg("--link-key")
            .arg(&rig.keys.link_key)
            .arg("--out")
            .arg(&rig.out)
            .args(extra)
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
                let line = line.unwrap_or_default();
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let daemon = Daemon {
            child,
            log,
            reader: Some(reader),
            addr: ([127, 0, 0, 1], port).into(),
        };
        daemon.wait_for("receiving");
        daemon
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn wait_for(&self, phrase: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.log().contains(phrase) {
            assert!(
                Instant::now() < deadline,
                "no {phrase:?} in:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the exit; returns its status code and the whole log.
    fn wait(mut self) -> (i32, String) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "still running:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        (status.code().unwrap_or(-1), self.log())
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The JSON summary line of a `--log-format json` log.
fn json_summary(log: &str) -> serde_json::Value {
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v.get("summary").is_some())
        .unwrap_or_else(|| panic!("no JSON summary in:\n{log}"))["summary"]
        .clone()
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn usage_errors_are_one_line_naming_the_option_with_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "link = \"udp://127.0.0.1:9\"\nexit-after-idle = \"soon\"\n",
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let common = [
        "--link",
        "udp://127.0.0.1:1",
        "--identity",
        "r.key",
        "--trust",
        "s.pub",
        "--link-key",
        "l.key",
        "--out",
        "o",
    ];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            [&common[..], &["--max-memory", "lots"]].concat(),
            "--max-memory \"lots\": expected",
        ),
        (
            [&common[..], &["--exit-after-idle", "-1"]].concat(),
            "--exit-after-idle",
        ),
        (
            [&common[..], &["--log-format", "xml"]].concat(),
            "--log-format",
        ),
        (vec!["--identity", "r.key"], "--link is required"),
        (vec!["--link", "tcp://x:1"], "udp://HOST:PORT"),
        ([&common[..], &["--frobnicate"]].concat(), "--frobnicate"),
        // A typo gets clap's suggestion, on the one line.
        (
            [&common[..], &["--max-memroy", "1GiB"]].concat(),
            "did you mean '--max-memory'?",
        ),
        (
            vec![
                "--config",
                cfg,
                "--identity",
                "k",
                "--trust",
                "t",
                "--link-key",
                "l",
                "--out",
                "o",
            ],
            "--exit-after-idle \"soon\" (in ",
        ),
    ];
    for (args, needle) in cases {
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    // Unusable key files are configuration errors too.
    let out = run(&common);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--identity"));
}

#[test]
fn keygen_writes_an_age_identity_and_its_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("k");
    let out = run(&["keygen", keys.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recipient = String::from_utf8(out.stdout).unwrap();
    assert!(recipient.starts_with("age1"), "{recipient}");
    let public = std::fs::read_to_string(keys.join("receiver.pub")).unwrap();
    assert_eq!(public.trim(), recipient.trim());
    let identities = sluice_common::keys::load_identities(&keys.join("receiver.key")).unwrap();
    assert_eq!(identities[0].to_public().to_string(), recipient.trim());
    // A second keygen never overwrites a key.
    let again = run(&["keygen", keys.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
}

/// SIGKILL after two of three segments were stored; the restarted daemon completes the
/// object from the next pass and reports it in its JSON summary.
#[test]
fn a_killed_receiver_completes_the_object_after_a_restart() {
    let rig = Rig::new();
    let producer = Producer::new(&rig.keys, 0xB1);
    let item = Item::file("resume.bin", bytes(150_000, 21), 0o640, (1_650_000_000, 9));
    let encoded = [producer.encode(0, &item)];
    let port = free_port();

    let first = Daemon::start(
        &rig,
        port,
        &["--log-format", "json", "--exit-after-idle", "60"],
    );
    let pass0 = producer.frames(&encoded, 0, |s| match s.block.kind {
        BlockKind::Manifest => false,
        BlockKind::Data => s.block.index < 2 || s.symbol < 5,
    });
    send(first.addr, &pass0);
    let objects = rig.out.join(".sluice-state/objects");
    let deadline = Instant::now() + WAIT;
    let stored = || {
        // Two 56-byte records in the object's segment log: segments 0 and 1 are stored.
        std::fs::read_dir(&objects).into_iter().flatten().any(|d| {
            let log = d.unwrap().path().join("segments");
            std::fs::metadata(log).is_ok_and(|m| m.len() >= 2 * 56)
        })
    };
    while !stored() {
        assert!(
            Instant::now() < deadline,
            "nothing stored:\n{}",
            first.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.signal("KILL");
    let (code, _) = first.wait();
    assert_eq!(code, -1, "killed by a signal");
    assert!(!rig.out.join("resume.bin").exists());

    let second = Daemon::start(
        &rig,
        port,
        &["--log-format", "json", "--exit-after-idle", "1.5"],
    );
    send(second.addr, &producer.frames(&encoded, 1, all));
    let (code, log) = second.wait();
    assert_eq!(code, 0, "{log}");
    assert_eq!(
        std::fs::read(rig.out.join("resume.bin")).unwrap(),
        item.content
    );
    assert!(log.contains("delivered resume.bin"), "{log}");
    let summary = json_summary(&log);
    assert_eq!(summary["objects_delivered"], 1, "{summary}");
    assert_eq!(summary["objects_failed"], 0, "{summary}");
    // Segments 0 and 1 came from the state directory, not from the link.
    assert_eq!(summary["blocks_decoded"], 2, "{summary}");
    assert!(
        summary["dropped"]["block_done"].as_u64().unwrap() > 0,
        "{summary}"
    );
    assert_eq!(summary["dropped"]["bad_mac"], 0, "{summary}");
}

#[test]
fn sigterm_shuts_down_cleanly_with_a_human_summary() {
    let rig = Rig::new();
    let producer = Producer::new(&rig.keys, 0xB2);
    let encoded = [producer.encode(0, &Item::file("f.txt", bytes(4000, 22), 0o644, (7, 0)))];
    let daemon = Daemon::start(&rig, free_port(), &[]);
    send(daemon.addr, &producer.frames(&encoded, 0, all));
    daemon.wait_for("delivered f.txt");
    daemon.signal("TERM");
    let (code, log) = daemon.wait();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("sluice-recv summary"), "{log}");
    assert!(
        log.contains("1 delivered, 0 already delivered, 0 failed"),
        "{log}"
    );
}

#[test]
fn failures_are_logged_with_their_phrase_and_exit_status_3() {
    let rig = Rig::new();
    let producer = Producer::new(&rig.keys, 0xB3);
    let mut encoded = producer.encode(0, &Item::file("t.bin", bytes(150_000, 23), 0o644, (1, 0)));
    encoded.blocks[1].1[100] ^= 0x80;
    let gap = producer.encode(1, &Item::file("gap.bin", bytes(70_000, 24), 0o644, (1, 0)));
    let daemon = Daemon::start(&rig, free_port(), &["--exit-after-idle", "1"]);
    let frames = producer.frames(&[encoded, gap], 0, |s| {
        !(s.block.object.0 == 1 && s.block.kind == BlockKind::Data && s.block.index == 0)
    });
    send(daemon.addr, &frames);
    let (code, log) = daemon.wait();
    assert_eq!(code, 3, "{log}");
    assert!(
        log.contains("object failed: segment 1 does not decrypt"),
        "{log}"
    );
    assert!(
        log.contains("object failed: incomplete: 1 of 2 segments missing"),
        "{log}"
    );
    assert!(log.contains("2 failed"), "{log}");
    assert_eq!(
        std::fs::read_dir(&rig.out)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() != ".sluice-state")
            .count(),
        0
    );
}

#[test]
fn frames_failing_the_link_mac_are_warned_about_and_counted() {
    let rig = Rig::new();
    let other = generate_keys(&rig.tmp.path().join("other"));
    let mut producer = Producer::new(&rig.keys, 0xB4);
    producer.link_key = sluice_common::keys::load_link_key(&other.link_key).unwrap();
    let encoded = [producer.encode(0, &Item::file("x", bytes(20_000, 25), 0o644, (1, 0)))];
    let frames = producer.frames(&encoded, 0, all);
    let daemon = Daemon::start(
        &rig,
        free_port(),
        &["--log-format", "json", "--exit-after-idle", "1"],
    );
    send(daemon.addr, &frames);
    let (code, log) = daemon.wait();
    assert_eq!(code, 4, "no valid frame arrived: {log}");
    // Warned about as they come (at most every 10 s) and once more at exit: the counts of
    // all warnings add up to every frame.
    let warned: u64 = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["message"].as_str().map(str::to_string))
        .filter_map(|m| {
            let count = m.strip_suffix(" frames failed link authentication (wrong --link-key?)")?;
            count.parse::<u64>().ok()
        })
        .sum();
    assert_eq!(warned, frames.len() as u64, "{log}");
    let summary = json_summary(&log);
    assert_eq!(
        summary["dropped"]["bad_mac"],
        frames.len() as u64,
        "{summary}"
    );
    assert_eq!(summary["frames_valid"], 0, "{summary}");
    assert!(!Path::new(&rig.out).join("x").exists());
}

/// A shell script run in a private mount namespace (`unshare -m`), its output collected.
struct Namespaced {
    child: Child,
    lines: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Namespaced {
    /// Fails the test, saying why, when this machine cannot mount a tmpfs on `dir` (not root).
    fn require(dir: &Path) {
        let probe = Command::new("unshare")
            .args(["-m", "sh", "-c"])
            .arg(format!("mount -t tmpfs -o size=1m tmpfs {}", dir.display()))
            .output();
        assert!(
            probe.as_ref().is_ok_and(|o| o.status.success()),
            "this test needs root to mount a tmpfs in a private mount namespace: {probe:?}"
        );
    }

    fn spawn(script: &str) -> Namespaced {
        let mut child = Command::new("unshare")
            .args(["-m", "sh", "-c", script])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(String::new()));
        let readers = [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ]
        .into_iter()
        .map(|stream| {
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let mut all = sink.lock().unwrap();
                    all.push_str(&line.unwrap_or_default());
                    all.push('\n');
                }
            })
        })
        .collect();
        Namespaced {
            child,
            lines,
            readers,
        }
    }

    /// Waits until the output has `phrase` `times` times.
    fn wait_for(&self, phrase: &str, times: usize) {
        let deadline = Instant::now() + WAIT;
        while self.lines.lock().unwrap().matches(phrase).count() < times {
            assert!(
                Instant::now() < deadline,
                "no {phrase:?} in:\n{}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the script; returns its output, having checked it exited 0.
    fn finish(mut self) -> String {
        let status = self.child.wait().unwrap();
        for reader in self.readers {
            reader.join().unwrap();
        }
        let log = self.lines.lock().unwrap().clone();
        assert!(status.success(), "{log}");
        log
    }
}

/// The receiver command line for a namespaced script.
fn receiver_line(rig: &Rig, port: u16, idle_secs: u32) -> String {
    format!(
        "'{bin}' --link udp://127.0.0.1:{port} --identity '{id}' --trust '{trust}' \
           --link-key '{link}' --out '{out}' --exit-after-idle {idle_secs}",
        bin = BIN,
        id = rig.keys.receiver_key.display(),
        trust = rig.keys.sender_pub.display(),
        link = rig.keys.link_key.display(),
        out = rig.out.display(),
    )
}

/// Lines of `find` output between `EXIT=` and `OBJECTS=`.
fn listing(log: &str) -> Vec<&str> {
    log.lines()
        .skip_while(|l| !l.starts_with("EXIT="))
        .skip(1)
        .take_while(|l| !l.starts_with("OBJECTS="))
        .collect()
}

/// Prints `--out` (state directory left out) and the state's object count.
const LIST_OUT: &str =
    "find . -path ./.sluice-state -prune -o -print | sort; echo OBJECTS=$(ls .sluice-state/objects | wc -l)";

/// `--out` (with the default state directory in it) on a 1 MiB tmpfs in a private mount
/// namespace: a file that fits is delivered, one that does not fails with the OS's reason,
/// the receiver keeps running and exits 3, and nothing partial is left in `--out`. Needs root
/// (`unshare -m`, `mount -t tmpfs`): ignored by a plain `cargo test`, run by `./test.sh`.
#[test]
#[ignore = "needs root: mounts a tmpfs in a private mount namespace (./test.sh runs it)"]
fn a_full_disk_fails_the_object_cleanly() {
    let rig = Rig::new();
    std::fs::create_dir_all(&rig.out).unwrap();
    Namespaced::require(&rig.out);
    let port = free_port();
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs '{out}' && {recv}; echo EXIT=$?; cd '{out}' && {LIST_OUT}",
        out = rig.out.display(),
        recv = receiver_line(&rig, port, 1),
    );
    let run = Namespaced::spawn(&script);
    run.wait_for("receiving", 1);
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let producer = Producer::new(&rig.keys, 0xB5);
    let small = producer.encode(0, &Item::file("small.txt", bytes(2000, 26), 0o644, (1, 0)));
    send(to, &producer.frames(&[small], 0, all));
    run.wait_for("delivered small.txt", 1);
    let big = producer.encode(1, &Item::file("big.bin", bytes(3 << 20, 27), 0o644, (1, 0)));
    send(to, &producer.frames(&[big], 0, all));
    let log = run.finish();
    assert!(log.contains("EXIT=3"), "{log}");
    assert!(log.contains("No space left on device"), "{log}");
    assert!(log.contains("object failed: "), "{log}");
    assert_eq!(listing(&log), [".", "./small.txt"], "{log}");
    assert!(
        log.contains("1 delivered, 0 already delivered, 1 failed"),
        "{log}"
    );
    // The failed object's blocks were dropped to give the space back.
    assert!(log.contains("OBJECTS=0"), "{log}");
}

/// The same tmpfs, mostly taken by a file that is not the receiver's: an object fails for want
/// of space, the file is removed, and the object sent again (a new sender run) is delivered
/// intact by the same receiver; nothing partial in `--out` at any time. Needs root, as above.
#[test]
#[ignore = "needs root: mounts a tmpfs in a private mount namespace (./test.sh runs it)"]
fn delivery_resumes_once_disk_space_is_freed() {
    let rig = Rig::new();
    std::fs::create_dir_all(&rig.out).unwrap();
    Namespaced::require(&rig.out);
    let port = free_port();
    // The flag lives outside the tmpfs, where the test can create it.
    let flag = rig.out.with_extension("space-freed");
    let script = format!(
        "mount -t tmpfs -o size=8m tmpfs '{out}' && \
         head -c 7300000 /dev/zero > '{out}/filler' && \
         {{ {recv} & }} && \
         i=0; while [ ! -e '{flag}' ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; rm '{out}/filler'; echo FREED; \
         wait $!; echo EXIT=$?; cd '{out}' && {LIST_OUT}; sha256sum data.bin",
        out = rig.out.display(),
        flag = flag.display(),
        recv = receiver_line(&rig, port, 3),
    );
    let run = Namespaced::spawn(&script);
    run.wait_for("receiving", 1);
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let content = bytes(3 << 19, 28);
    let item = Item::file("data.bin", content.clone(), 0o644, (1, 0));
    let first = Producer::new(&rig.keys, 0xC1);
    send(to, &first.frames(&[first.encode(0, &item)], 0, all));
    run.wait_for("No space left on device", 1);
    run.wait_for("object failed: ", 1);
    std::fs::write(&flag, b"").unwrap();
    run.wait_for("FREED", 1);
    let again = Producer::new(&rig.keys, 0xC2);
    send(to, &again.frames(&[again.encode(0, &item)], 0, all));
    run.wait_for("delivered data.bin", 1);
    let log = run.finish();
    assert!(
        log.contains("EXIT=3"),
        "one object failed on the way: {log}"
    );
    assert_eq!(listing(&log), [".", "./data.bin"], "{log}");
    let digest: String = sha2::Sha256::digest(&content)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(log.contains(&format!("{digest}  data.bin")), "{log}");
    assert!(
        log.contains("1 delivered, 0 already delivered, 1 failed"),
        "{log}"
    );
    assert!(log.contains("OBJECTS=0"), "{log}");
}
