//! The red team's findings against the real daemons, one test each (THREAT-MODEL.md names
//! them). Attacker A holds no key; B holds `link.key` and `sender.key` (a compromised low
//! side); C is a local unprivileged user on the receiver's box. Each test failed on the
//! release the findings were made against and passes now.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use sluice_protocol::fec::Geometry;
use sluice_protocol::wire::{BlockKey, BlockKind, Header, LinkKey, ObjectId, SessionId, SymbolHeader};
use sluice_tests::binaries::free_udp_port;
use sluice_tests::forge;
use sluice_tests::harness::{Setup, Summary};

/// Waits for a receiver started with `--exit-after-idle`, sampling its peak RSS; returns
/// (peak KiB, its output).
fn watch(recv: &mut sluice_tests::binaries::Proc, timeout: Duration) -> (u64, String) {
    let mut peak = 0;
    let deadline = std::time::Instant::now() + timeout;
    while recv.running() && std::time::Instant::now() < deadline {
        peak = peak.max(recv.peak_rss_kib().unwrap_or(0));
        std::thread::sleep(Duration::from_millis(10));
    }
    let done = recv.finish(Duration::from_secs(5));
    (peak, done.log)
}

/// Finding 2 (B): one authenticated frame declaring 1 source symbol and 32 768 repair
/// symbols of 8 896 bytes made the decoder allocate ≈ 571 MiB (kept per decoder thread,
/// charged to nothing). Such a geometry is now refused before any state exists, and decoder
/// work space is bounded by the block and charged to the memory budget.
#[test]
fn a_reed_solomon_geometry_bomb_is_refused_and_memory_stays_bounded() {
    let s = Setup::new();
    let port = free_udp_port();
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut recv = s.receiver(port, 2, &["--max-memory", "32MiB"]);
    let key = LinkKey::new(&s.keys.link_secret());
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let bomb = Geometry {
        source_symbols: 1,
        repair_symbols: 32768,
        symbol_size: 8896,
        block_len: 64,
    };
    for index in 0..6 {
        let header = Header::Symbol(SymbolHeader {
            block: BlockKey {
                session: SessionId(0xb0b),
                object: ObjectId(index),
                kind: BlockKind::Data,
                index: 0,
            },
            geometry: bomb,
            // A repair symbol: with k = 1 it makes the block "ready" and forces a decode.
            symbol: 1,
        });
        let frame = forge::frame(&header, &vec![0x5a; 8896], &key);
        socket.send_to(&frame, to).unwrap();
    }
    let (peak, log) = watch(&mut recv, Duration::from_secs(30));
    let summary = Summary::find(&log, "bad_geometry").expect("a JSON summary");
    assert_eq!(summary.get("bad_geometry"), 6, "{log}");
    assert_eq!(summary.get("blocks_decoded"), 0, "{log}");
    assert!(peak > 0 && peak < 96 * 1024, "peak RSS {peak} KiB\n{log}");
}
