//! `--metrics`: the real daemons serve their counters at `GET /metrics`, and what they serve
//! is what their JSON summaries report — through the seeded relay, with damaged frames the
//! receiver must count and drop.

// Test helpers panic on failure by design, like the tests that call them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sluice_tests::binaries::{free_udp_port, Proc};
use sluice_tests::harness::{assert_exit, Setup, Summary};
use sluice_tests::relay::{Faults, Relay};
use sluice_tests::scrape::{free_tcp_addr, scrape, value};
use sluice_tests::tree::{self, Check, TreeSpec};

fn scrape_until(addr: SocketAddr, proc: &mut Proc, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(page) = scrape(addr) {
            if ok(&page) {
                return page;
            }
        }
        assert!(
            Instant::now() < deadline && proc.running(),
            "no /metrics page as expected; last:\n{:?}\nlog:\n{}",
            scrape(addr),
            proc.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_match_the_summaries_through_a_damaging_relay() {
    let s = Setup::new();
    let root = s.src.join("data");
    tree::make_tree(
        &root,
        TreeSpec {
            big_bytes: 2 << 20,
            segment_edges: false,
            small_scale: 2,
            seed: 7,
        },
    )
    .unwrap();
    let (recv_metrics, send_metrics) = (free_tcp_addr(), free_tcp_addr());
    let port = free_udp_port();
    let mut recv = s.receiver(port, 6, &["--metrics", &recv_metrics.to_string()]);
    let faults = Faults {
        seed: 0x3e7,
        loss: 0.01,
        bit_flip: 0.01,
        max_bit_flips: 2,
        ..Faults::default()
    };
    let relay = Relay::start(([127, 0, 0, 1], port).into(), faults).unwrap();
    let mut send = s.spawn_sender(
        &s.keys,
        relay.addr(),
        &[
            "--rate",
            "4MB",
            "--repair",
            "15%",
            "--metrics",
            &send_metrics.to_string(),
        ],
        &[&root],
    );
    // The sender serves while it sends: its frame counter moves between two scrapes.
    let first = scrape_until(send_metrics, &mut send, |p| {
        value(p, "sluice_frames_total").is_some_and(|n| n > 0.0)
    });
    let later = scrape_until(send_metrics, &mut send, |p| {
        value(p, "sluice_frames_total") > value(&first, "sluice_frames_total")
    });
    let sent = send.finish(Duration::from_secs(120));
    assert_exit(&sent, 0, "sluice-send");
    let send_summary = Summary::find(&sent.log, "frame_bytes").expect("sender summary");
    assert_eq!(
        value(&later, "sluice_bytes_total{kind=\"file\"}"),
        Some(send_summary.get("bytes") as f64),
        "queued file bytes: {later}"
    );

    // Once the sender is done, the receiver's counters stand still until it exits idle.
    std::thread::sleep(Duration::from_millis(500));
    let page = scrape(recv_metrics).expect("the receiver serves /metrics until it exits");
    let got = recv.finish(Duration::from_secs(60));
    let counts = relay.stop();
    assert_exit(&got, 0, "sluice-recv");
    tree::compare(&root, &s.out.join("data"), Check::ALL)
        .unwrap_or_else(|d| panic!("trees differ:\n{d}\nreceiver log:\n{}", got.log));
    let summary = Summary::find(&got.log, "bad_crc").expect("receiver summary");
    for (series, key) in [
        (
            "sluice_objects_total{outcome=\"delivered\"}",
            "objects_delivered",
        ),
        ("sluice_objects_total{outcome=\"failed\"}", "objects_failed"),
        (
            "sluice_objects_total{outcome=\"lost_whole\"}",
            "objects_lost_whole",
        ),
        ("sluice_bytes_total{kind=\"file\"}", "bytes_delivered"),
        (
            "sluice_frames_total{result=\"received\"}",
            "frames_received",
        ),
        ("sluice_frames_total{result=\"valid\"}", "frames_valid"),
        ("sluice_frames_dropped_total{reason=\"bad_crc\"}", "bad_crc"),
        ("sluice_fec_recovered_blocks_total", "blocks_recovered"),
    ] {
        assert_eq!(
            value(&page, series),
            Some(summary.get(key) as f64),
            "{series} vs summary {key}\n{page}"
        );
    }
    // The relay's damage is what the receiver counted, and files were really delivered.
    assert!(
        counts.bit_flipped > 0 && summary.get("bad_crc") > 0,
        "{counts:?}"
    );
    assert!(summary.get("objects_delivered") > 0);
    assert_eq!(value(&page, "sluice_link_up"), Some(1.0), "{page}");
    assert!(value(&page, "sluice_seconds_since_last_frame").is_some_and(|s| s < 6.0));
}

#[test]
fn a_busy_metrics_port_is_a_start_up_error() {
    let s = Setup::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let link = format!("udp://127.0.0.1:{}", free_udp_port());
    let mut cmd = sluice_tests::binaries::receiver_cmd(&link, &s.keys, &s.out, &s.state);
    cmd.args(["--metrics", &addr]);
    let got = Proc::spawn("sluice-recv", cmd).finish(Duration::from_secs(20));
    assert_exit(&got, 1, "sluice-recv");
    assert!(
        got.log
            .contains(&format!("cannot listen on --metrics {addr}")),
        "{}",
        got.log
    );
}

/// Issue 31, item 7: a receiver killed with `kill -9` while a scraper's connection was open
/// restarts at once on the same metrics port (the port is left in TIME_WAIT, which the
/// listener's SO_REUSEADDR allows).
#[test]
fn a_receiver_killed_while_scraped_restarts_at_once_on_the_same_metrics_port() {
    let s = Setup::new();
    let addr = free_tcp_addr();
    let link = format!("udp://127.0.0.1:{}", free_udp_port());
    let start = || {
        let mut cmd = sluice_tests::binaries::receiver_cmd(&link, &s.keys, &s.out, &s.state);
        cmd.args(["--metrics", &addr.to_string()]);
        Proc::spawn("sluice-recv", cmd)
    };
    let mut first = start();
    scrape_until(addr, &mut first, |page| page.contains("sluice_frames"));
    // A scraper mid-request when the daemon dies.
    let open = std::net::TcpStream::connect(addr).unwrap();
    first.kill();
    drop(open);
    let mut second = start();
    let page = scrape_until(addr, &mut second, |page| page.contains("sluice_frames"));
    assert!(page.contains("sluice_frames"), "{page}");
    assert!(second.running(), "{}", second.log());
}
