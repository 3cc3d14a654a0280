//! Several links used as one, with the real binaries on 127.0.0.1: frames striped over two
//! links (each through a relay of its own) complete a transfer when one link dies mid-way and
//! the receiver says `link 2 down` (junk sent to the dead link's port does not keep it up); a port range is several flows; and a receiver overrun by a
//! sender pacing far above what it takes says so (`link overrun`, `/metrics`), and the same
//! file sent again at a sane rate arrives.
//!
//! ```text
//!   sluice-send ──link 1──▶ Relay ──▶ :P1 ┐
//!               ──link 2──▶ Relay ──▶ :P2 ┴▶ sluice-recv --link udp://:P1 --link udp://:P2
//! ```

// Test helpers panic on failure by design, like the tests that call them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use sluice_tests::binaries::{self, free_udp_port};
use sluice_tests::harness::{assert_exit, Setup};
use sluice_tests::relay::{Faults, Relay};
use sluice_tests::scrape::{self, free_tcp_addr};
use sluice_tests::tree::write_random_file;

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn udp(addr: SocketAddr) -> String {
    format!("udp://{addr}")
}

#[test]
fn a_transfer_over_two_links_completes_when_one_dies_midway() {
    let s = Setup::new();
    let file = s.src.join("weights.bin");
    let sha = write_random_file(&file, 16 << 20, 27).unwrap();
    let (p1, p2) = (free_udp_port(), free_udp_port());
    let second = format!("udp://127.0.0.1:{p2}");
    let mut recv = s.receiver(p1, 6, &["--link", &second]);
    let r1 = Relay::start(([127, 0, 0, 1], p1).into(), Faults::default()).unwrap();
    let r2 = Relay::start(([127, 0, 0, 1], p2).into(), Faults::default()).unwrap();
    // Two passes of 100 % repair: with half the frames gone after the first second, the first
    // pass brings about every block's source count, the second half as much again.
    let mut sender = s.spawn_sender(
        &s.keys,
        r1.addr(),
        &[
            "--link",
            &udp(r2.addr()),
            "--rate",
            "6MB",
            "--repair",
            "100%",
            "--passes",
            "2",
        ],
        &[&file],
    );
    std::thread::sleep(Duration::from_millis(1200));
    let cut = r2.stop();
    assert!(cut.received > 100, "link 2 carried frames before it died");
    // Someone on the dead fibre's network keeps sending junk to its port: only frames that
    // pass every check show a link alive, so it is still reported down.
    let junk_until = std::time::Instant::now() + Duration::from_secs(8);
    let junk = std::thread::spawn(move || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        while std::time::Instant::now() < junk_until {
            let _ = socket.send_to(&[0x53; 600], ("127.0.0.1", p2));
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let sent = sender.finish(Duration::from_secs(120));
    assert_exit(&sent, 0, "sluice-send");
    let got = recv.finish(Duration::from_secs(60));
    assert_exit(&got, 0, "sluice-recv");
    let arrived = std::fs::read(s.out.join("weights.bin")).unwrap();
    let arrived_sha: [u8; 32] = sha2::Digest::finalize(sha2::Digest::chain_update(
        sha2::Sha256::default(),
        &arrived,
    ))
    .into();
    assert_eq!(arrived_sha, sha);
    junk.join().unwrap();
    assert!(got.log.contains("link 2 down"), "{}", got.log);
    let carried = r1.stop();
    assert!(
        carried.received > cut.received,
        "link 1 went on: {carried:?} vs {cut:?}"
    );
}

#[test]
fn a_port_range_is_several_flows_each_counted() {
    let s = Setup::new();
    let file = s.src.join("data.bin");
    let sha = write_random_file(&file, 6 << 20, 28).unwrap();
    let first = binaries::free_udp_ports(4).unwrap();
    let range = format!("udp://127.0.0.1:{first}-{}", first + 3);
    let metrics = free_tcp_addr();
    let mut cmd = binaries::receiver_cmd(&range, &s.keys, &s.out, &s.state);
    cmd.args(["--exit-after-idle", "4", "--log-format", "json"])
        .args(["--metrics", &metrics.to_string()]);
    let mut recv = sluice_tests::binaries::Proc::spawn("sluice-recv", cmd);
    binaries::wait_bound(
        &mut recv,
        ([127, 0, 0, 1], first + 3).into(),
        Duration::from_secs(20),
    );
    let mut send = binaries::sender_cmd(&range, &s.keys);
    send.args(["--rate", "20MB", "--log-format", "json"])
        .arg(&file);
    let sent =
        sluice_tests::binaries::Proc::spawn("sluice-send", send).finish(Duration::from_secs(60));
    assert_exit(&sent, 0, "sluice-send");
    // Each flow brought its share, in /metrics while the receiver runs.
    let mut shares = Vec::new();
    for _ in 0..30 {
        let page = scrape::scrape(metrics).unwrap_or_default();
        shares = (1..=4)
            .map(|i| {
                scrape::value(
                    &page,
                    &format!("sluice_link_datagrams_total{{link=\"{i}\"}}"),
                )
            })
            .collect();
        if shares.iter().all(|v| v.is_some_and(|n| n > 0.0)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let got = recv.finish(Duration::from_secs(60));
    assert_exit(&got, 0, "sluice-recv");
    assert!(
        shares.iter().all(|v| v.is_some_and(|n| n > 100.0)),
        "{shares:?}"
    );
    let arrived = std::fs::read(s.out.join("data.bin")).unwrap();
    let arrived_sha: [u8; 32] = sha2::Digest::finalize(sha2::Digest::chain_update(
        sha2::Sha256::default(),
        &arrived,
    ))
    .into();
    assert_eq!(arrived_sha, sha);
}

#[test]
fn an_overrun_receiver_says_so_and_a_sane_rate_then_delivers() {
    let s = Setup::new();
    let file = s.src.join("big.bin");
    write_random_file(&file, 48 << 20, 29).unwrap();
    let port = free_udp_port();
    let metrics = free_tcp_addr();
    let mut recv = s.receiver(port, 8, &["--metrics", &metrics.to_string()]);
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    // The receiver stopped while 48 MiB go out unpaced: its socket buffer overflows.
    signal(recv.id(), "-STOP");
    let flood = s.send(to, &["--rate", "0"], &[&file], Duration::from_secs(120));
    signal(recv.id(), "-CONT");
    assert_exit(&flood, 0, "sluice-send");
    let mut dropped = None;
    for _ in 0..50 {
        let page = scrape::scrape(metrics).unwrap_or_default();
        dropped = scrape::value(&page, "sluice_link_kernel_drops_total").filter(|n| *n > 0.0);
        if dropped.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        dropped.is_some(),
        "no kernel drops in /metrics:\n{}",
        recv.log()
    );
    // The same file at a rate this box takes: the receiver merges it with what it kept.
    let again = s.send(to, &["--rate", "10MB"], &[&file], Duration::from_secs(120));
    assert_exit(&again, 0, "sluice-send");
    // (The flooded run's object stays incomplete: the receiver may exit 3 for it.)
    let got = recv.finish(Duration::from_secs(60));
    assert!(got.log.contains("link overrun:"), "{}", got.log);
    assert!(got.log.contains("dropped by the kernel"), "{}", got.log);
    assert_eq!(
        std::fs::read(s.out.join("big.bin")).unwrap(),
        std::fs::read(&file).unwrap()
    );
}
