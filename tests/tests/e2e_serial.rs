//! End to end over a serial line: two pseudo-terminals joined by socat stand in for a
//! one-way UART. The tree is small (serial is slow) and the sender must pace itself to
//! baud/10 bytes per second: the run cannot be faster than the payload at that rate.
//!
//! ```text
//!   sluice-send ─▶ tmp/tty-send ═ socat (pty,raw,echo=0 ⇄ pty,raw,echo=0) ═ tmp/tty-recv ─▶ sluice-recv
//! ```

// Test helpers panic on failure by design, like the tests that call them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_tests::binaries::{self, wait_open, Proc};
use sluice_tests::harness::{assert_exit, Setup};
use sluice_tests::tree::{self, Check, TreeSpec};

const BAUD: u64 = 230_400;

/// socat joining two raw ptys, linked at `a` and `b`.
fn pty_pair(a: &Path, b: &Path) -> Proc {
    sluice_tests::require::tool("socat", "socat");
    let mut cmd = Command::new("socat");
    cmd.arg(format!("pty,raw,echo=0,link={}", a.display()))
        .arg(format!("pty,raw,echo=0,link={}", b.display()));
    let mut socat = Proc::spawn("socat", cmd);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(a.exists() && b.exists()) {
        assert!(socat.running(), "socat exited:\n{}", socat.log());
        assert!(
            Instant::now() < deadline,
            "socat made no ptys:\n{}",
            socat.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    socat
}

fn serial_link(path: &Path) -> String {
    format!("serial://{}?baud={BAUD}", path.display())
}

#[test]
#[ignore = "needs socat (./test.sh installs it and runs this)"]
fn tree_arrives_identical_over_a_paced_serial_line() {
    let s = Setup::new();
    let (tty_send, tty_recv) = (s.tmp.path().join("tty-send"), s.tmp.path().join("tty-recv"));
    let _socat = pty_pair(&tty_send, &tty_recv);
    let root = s.src.join("serial-set");
    tree::make_tree(
        &root,
        TreeSpec {
            big_bytes: 0,
            segment_edges: false,
            small_scale: 1,
            seed: 7,
        },
    )
    .unwrap();
    let payload = tree::total_bytes(&root);
    assert!((100_000..400_000).contains(&payload), "{payload} bytes");

    let mut cmd = binaries::receiver_cmd(&serial_link(&tty_recv), &s.keys, &s.out, &s.state);
    cmd.args(["--exit-after-idle", "4", "--log-format", "json"]);
    let mut recv = Proc::spawn("sluice-recv", cmd);
    wait_open(&mut recv, &tty_recv, Duration::from_secs(20));

    let mut cmd = binaries::sender_cmd(&serial_link(&tty_send), &s.keys);
    cmd.args(["--log-format", "json"]).arg(&root);
    let sent = Proc::spawn("sluice-send", cmd).finish(Duration::from_secs(60));
    assert_exit(&sent, 0, "sluice-send");
    let got = recv.finish(Duration::from_secs(30));
    assert_exit(&got, 0, "sluice-recv");
    tree::compare(&root, &s.out.join("serial-set"), Check::ALL)
        .unwrap_or_else(|d| panic!("trees differ:\n{d}\nreceiver log:\n{}", got.log));

    // Pacing: the payload alone needs payload / (baud / 10) seconds on the line; a sender
    // that ignores the baud rate finishes a pty transfer of this size in well under that.
    let floor = Duration::from_secs_f64(payload as f64 / (BAUD as f64 / 10.0));
    assert!(
        sent.elapsed >= floor,
        "sender took {:?} for {payload} bytes, the line needs at least {floor:?}",
        sent.elapsed
    );
    assert!(
        sent.elapsed < Duration::from_secs(30),
        "took {:?}",
        sent.elapsed
    );
}

/// Finding 9 of the red team: closing the pty (a USB-UART unplugged) made the receiver exit
/// with status 1. Now it logs the loss, reopens the device once it is back, and a transfer
/// after that arrives.
#[test]
#[ignore = "needs socat (./test.sh installs it and runs this)"]
fn the_receiver_reopens_a_serial_line_that_went_away() {
    let s = Setup::new();
    let (tty_send, tty_recv) = (s.tmp.path().join("tty-send"), s.tmp.path().join("tty-recv"));
    let mut socat = pty_pair(&tty_send, &tty_recv);
    let root = s.src.join("after-replug");
    tree::make_tree(
        &root,
        TreeSpec {
            big_bytes: 0,
            segment_edges: false,
            small_scale: 1,
            seed: 9,
        },
    )
    .unwrap();
    let mut cmd = binaries::receiver_cmd(&serial_link(&tty_recv), &s.keys, &s.out, &s.state);
    cmd.args(["--exit-after-idle", "8", "--log-format", "json"]);
    let mut recv = Proc::spawn("sluice-recv", cmd);
    wait_open(&mut recv, &tty_recv, Duration::from_secs(20));

    // Unplug: the pty pair goes away, and stays away for a while.
    socat.kill();
    std::thread::sleep(Duration::from_secs(2));
    assert!(recv.running(), "the receiver exited:\n{}", recv.log());
    // Plug back in (the same device names), then send.
    let _socat = pty_pair(&tty_send, &tty_recv);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !recv.log().contains("serial link reopened") {
        assert!(Instant::now() < deadline, "never reopened:\n{}", recv.log());
        assert!(recv.running(), "the receiver exited:\n{}", recv.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut cmd = binaries::sender_cmd(&serial_link(&tty_send), &s.keys);
    cmd.args(["--log-format", "json"]).arg(&root);
    let sent = Proc::spawn("sluice-send", cmd).finish(Duration::from_secs(60));
    assert_exit(&sent, 0, "sluice-send");
    let got = recv.finish(Duration::from_secs(40));
    assert_exit(&got, 0, "sluice-recv");
    assert!(got.log.contains("serial link lost"), "{}", got.log);
    tree::compare(&root, &s.out.join("after-replug"), Check::ALL)
        .unwrap_or_else(|d| panic!("trees differ:\n{d}\nreceiver log:\n{}", got.log));
}
