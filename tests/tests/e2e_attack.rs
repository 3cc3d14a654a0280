//! The receiver under attack and abuse, with the real daemons:
//!
//! - injection: while a real transfer runs, a second process floods the receiver's UDP port
//!   with random bytes, frames with a valid CRC but no link key, and — as an attacker holding
//!   the link key but not the signing key — authenticated symbols of blocks that never
//!   complete. The real transfer still completes, every kind is counted, the never-completing
//!   blocks are evicted on their timeout, and peak RSS stays under a bound;
//! - crashes: the receiver is SIGKILLed at seeded random moments 20 times while a multi-pass
//!   sender runs; after every kill `--out` holds only complete, verified files, and after the
//!   last restart everything arrives.
//!
//! The crash loop is slow (about a minute): a plain `cargo test` lists it as ignored and
//! `./test.sh` runs it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_protocol::fec::Geometry;
use sluice_protocol::wire::{
    crc32c, write_frame, BlockKey, BlockKind, Header, LinkKey, ObjectId, SessionId, SymbolHeader,
};
use sluice_tests::binaries::free_udp_port;
use sluice_tests::harness::{assert_exit, Setup, Summary};
use sluice_tests::tree::{self, Check, TreeSpec};

fn dataset(s: &Setup, big: u64, seed: u64) -> PathBuf {
    let root = s.src.join("data");
    tree::make_tree(
        &root,
        TreeSpec {
            big_bytes: big,
            segment_edges: false,
            small_scale: 2,
            seed,
        },
    )
    .unwrap();
    root
}

/// Peak resident memory of a process so far (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Sends three kinds of hostile traffic to `to` until `stop`; returns datagrams sent.
fn inject(to: SocketAddr, link_secret: [u8; 32], stop: Arc<AtomicBool>) -> u64 {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0x1a77ac);
    let key = LinkKey::new(&link_secret);
    let wrong = LinkKey::new(&[0xee; 32]);
    let mut sent = 0u64;
    let mut frame = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        // 1. Random bytes.
        let mut junk = vec![0u8; rng.gen_range(1..1500)];
        rng.fill_bytes(&mut junk);
        // 2. A well-formed frame with a valid CRC, authenticated with the wrong key.
        // 3. Authenticated symbols of big blocks of objects that never complete (an attacker
        //    with the link key but not the signing key).
        let block = |object: u64, kind| BlockKey {
            session: SessionId(0xbad),
            object: ObjectId(object),
            kind,
            index: 0,
        };
        let geometry = Geometry::new(1408 * 700, 1408, 70).unwrap();
        let forged = Header::Symbol(SymbolHeader {
            block: block(rng.gen_range(0..1000), BlockKind::Data),
            geometry,
            symbol: rng.gen_range(0..700),
            segment_size: 1 << 20,
        });
        let payload = vec![0x66u8; 1408];
        let n_wrong = write_frame(&forged, &payload, &wrong, &mut frame).unwrap();
        assert_eq!(
            crc32c(&frame[..n_wrong - 4]).to_le_bytes(),
            frame[n_wrong - 4..n_wrong]
        );
        let _ = socket.send_to(&junk, to);
        let _ = socket.send_to(&frame[..n_wrong], to);
        let stale = Header::Symbol(SymbolHeader {
            block: block(rng.gen_range(0..1000), BlockKind::Manifest),
            geometry,
            symbol: rng.gen_range(0..700),
            segment_size: 0,
        });
        let n = write_frame(&stale, &payload, &key, &mut frame).unwrap();
        let _ = socket.send_to(&frame[..n], to);
        sent += 3;
        // Enough to matter without starving the real transfer of the two cores.
        if sent % 300 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    sent
}

#[test]
fn injected_traffic_is_dropped_and_bounded_while_a_real_transfer_completes() {
    let s = Setup::new();
    let root = dataset(&s, 4 << 20, 21);
    let port = free_udp_port();
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut recv = s.receiver(port, 4, &["--max-memory", "32MiB"]);
    let stop = Arc::new(AtomicBool::new(false));
    let injector = {
        let (stop, secret) = (stop.clone(), s.keys.link_secret());
        std::thread::spawn(move || inject(to, secret, stop))
    };
    std::thread::sleep(Duration::from_millis(300));
    let sent = s.send(
        to,
        &["--rate", "10MB", "--passes", "2"],
        &[&root],
        Duration::from_secs(120),
    );
    // Keep injecting a little after the sender, then watch the receiver's memory until it exits.
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let injected = injector.join().unwrap();
    let mut peak = 0;
    while recv.running() {
        peak = peak.max(peak_rss_kib(recv.id()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    }
    let got = recv.finish(Duration::from_secs(5));
    assert_exit(&sent, 0, "sluice-send");
    tree::compare(&root, &s.out.join("data"), Check::ALL)
        .unwrap_or_else(|d| panic!("trees differ:\n{d}\nreceiver log:\n{}", got.log));

    let summary = Summary::find(&got.log, "bad_mac").expect("a JSON summary");
    assert!(injected > 1000, "only {injected} datagrams injected");
    assert!(summary.get("bad_mac") > 100, "{}", summary.0);
    assert!(
        summary.get("bad_magic") + summary.get("too_short") + summary.get("bad_crc") > 100,
        "{}",
        summary.0
    );
    // The forged-but-authenticated blocks never complete: given up on their timeout (stalled
    // while running or at exit), or refused once the memory bound is reached.
    assert!(
        summary.get("blocks_stalled") + summary.get("partials_saved") + summary.get("capacity") > 0,
        "{}",
        summary.0
    );
    // 32 MiB of assembly plus as much again for decoder jobs, plus the program itself.
    assert!(peak > 0 && peak < 160 * 1024, "peak RSS {peak} KiB");
    eprintln!(
        "injection: {injected} datagrams, receiver peak RSS {} MiB; dropped bad_mac {} \
         bad_magic {} too_short {} bad_crc {} capacity {}; blocks stalled {}, partials saved {}",
        peak / 1024,
        summary.get("bad_mac"),
        summary.get("bad_magic"),
        summary.get("too_short"),
        summary.get("bad_crc"),
        summary.get("capacity"),
        summary.get("blocks_stalled"),
        summary.get("partials_saved"),
    );
}

/// Files in `out` are all complete copies of their sources, and no temporary file is there.
fn assert_out_clean(src: &Path, out: &Path, context: &str) {
    tree::published_files_are_intact(src, out)
        .unwrap_or_else(|e| panic!("{context}: corrupt or foreign files in --out:\n{e}"));
}

#[test]
#[ignore = "slow (about a minute): ./test.sh runs it"]
fn a_receiver_killed_twenty_times_publishes_only_complete_files_then_everything() {
    let s = Setup::new();
    let root = dataset(&s, 8 << 20, 22);
    let port = free_udp_port();
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    // ~10 MB per pass at 10 MB/s: 40 passes keep the data coming through all the kills.
    let mut sender = s.spawn_sender(
        &s.keys,
        to,
        &["--rate", "10MB", "--passes", "40", "--repair", "10%"],
        &[&root],
    );
    let mut rng = ChaCha8Rng::seed_from_u64(0xc4a5);
    for kill in 0..20 {
        let mut recv = s.receiver(port, 30, &[]);
        let lifetime = Duration::from_millis(rng.gen_range(200..1500));
        let started = Instant::now();
        while started.elapsed() < lifetime {
            assert!(
                recv.running(),
                "receiver {kill} exited early:\n{}",
                recv.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        recv.kill();
        assert_out_clean(&s.src, &s.out, &format!("after kill {kill}"));
        assert!(sender.running(), "the sender finished before kill {kill}");
    }
    // The last receiver stays up: the remaining passes complete everything.
    let mut last = s.receiver(port, 4, &[]);
    assert_exit(&sender.finish(Duration::from_secs(300)), 0, "sluice-send");
    let got = last.finish(Duration::from_secs(60));
    assert_exit(&got, 0, "the receiver after 20 kills");
    tree::compare(&root, &s.out.join("data"), Check::ALL)
        .unwrap_or_else(|d| panic!("trees differ:\n{d}\nreceiver log:\n{}", got.log));
}
