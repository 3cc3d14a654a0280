//! The protocol-break firmware running in QEMU between the two ends: garbage injected on the
//! low side never reaches the high side, valid frames all do (in order), and a directory tree
//! crosses sluice-send → emulated MCU → sluice-recv intact. Ignored by a plain `cargo test`
//! (they need QEMU, socat and the `thumbv7m-none-eabi` target); `./test.sh` runs them, building
//! the board image with `firmware/build-board.sh` first, and they fail if anything is missing.
//!
//! ```text
//!   sluice-send ─pty─ socat ─tcp─▶ UART0 [relay firmware] UART1 ─tcp─ socat ─pty─ sluice-recv
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use sluice_protocol::fec::Geometry;
use sluice_protocol::framing::{encode_frame, encoded_len, CobsAccumulator, Feed};
use sluice_protocol::wire::{
    write_frame, BlockKey, BlockKind, Header, LinkKey, ObjectId, SessionId, SymbolHeader,
};
use sluice_tests::binaries::{self, Proc};
use sluice_tests::harness::{assert_exit, Setup};
use sluice_tests::qemu::{self, QemuRelay};
use sluice_tests::tree::{self, Check, TreeSpec};

fn frame(key: &LinkKey, n: u32) -> Vec<u8> {
    let header = Header::Symbol(SymbolHeader {
        block: BlockKey {
            session: SessionId(11),
            object: ObjectId(u64::from(n / 4)),
            kind: BlockKind::Data,
            index: n % 4,
        },
        geometry: Geometry::new(256 * 3, 256, 2).unwrap(),
        symbol: (n % 5) as u16,
        segment_size: sluice_protocol::wire::MIN_SEGMENT_SIZE,
    });
    let payload: Vec<u8> = (0..256u32).map(|i| (i ^ n) as u8).collect();
    let mut out = vec![0u8; 1024];
    let len = write_frame(&header, &payload, key, &mut out).unwrap();
    out.truncate(len);
    out
}

fn cobs(frame: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; encoded_len(frame.len())];
    let n = encode_frame(frame, &mut out).unwrap();
    out.truncate(n);
    out
}

#[test]
#[ignore = "needs qemu-system-arm and the thumbv7m-none-eabi target (./test.sh runs it)"]
fn garbage_never_crosses_and_valid_frames_all_do() {
    qemu::require();
    let relay = QemuRelay::start();
    let mut low = QemuRelay::connect(relay.low);
    let mut high = QemuRelay::connect(relay.high);
    high.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let key = LinkKey::new(&[9; 32]);
    let mut input = Vec::new();
    let mut expected = Vec::new();
    for n in 0..60u32 {
        let f = frame(&key, n);
        match n % 4 {
            0 => {
                // Garbage with a recognisable marker, then a delimiter.
                input.extend_from_slice(b"GARBAGE-FROM-THE-LOW-SIDE");
                input.push(0);
            }
            1 => {
                let mut damaged = f.clone();
                damaged[30] ^= 0x04;
                input.extend(cobs(&damaged));
            }
            _ => {}
        }
        input.extend(cobs(&f));
        expected.push(f);
    }
    low.write_all(&input).unwrap();

    let mut out = Vec::new();
    let mut frames = Vec::new();
    let mut acc = CobsAccumulator::<{ encoded_len(9216) }>::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 4096];
    while frames.len() < expected.len() && Instant::now() < deadline {
        let n = match high.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => continue,
        };
        out.extend_from_slice(&buf[..n]);
        let mut rest = &buf[..n];
        loop {
            match acc.feed(rest) {
                Feed::Consumed => break,
                Feed::Frame { frame, rest: r } => {
                    frames.push(frame.to_vec());
                    rest = r;
                }
                Feed::Dropped { error, .. } => {
                    panic!("the relay emitted a broken frame: {error:?}")
                }
            }
        }
    }
    assert_eq!(
        frames.len(),
        expected.len(),
        "frames out of the emulated relay"
    );
    assert_eq!(frames, expected);
    assert!(
        !out.windows(7).any(|w| w == b"GARBAGE"),
        "garbage crossed the protocol break"
    );
}

#[test]
#[ignore = "needs qemu-system-arm, socat and the thumbv7m-none-eabi target (./test.sh runs it)"]
fn a_tree_crosses_through_the_emulated_relay() {
    qemu::require();
    sluice_tests::require::tool("socat", "socat");
    let s = Setup::new();
    let root = s.src.join("through-mcu");
    tree::make_tree(
        &root,
        TreeSpec {
            big_bytes: 96 << 10,
            segment_edges: false,
            small_scale: 1,
            seed: 5,
        },
    )
    .unwrap();
    let relay = QemuRelay::start();
    let (low_tty, high_tty) = (s.tmp.path().join("mcu-low"), s.tmp.path().join("mcu-high"));
    let _low_bridge = QemuRelay::bridge(relay.low, &low_tty);
    let _high_bridge = QemuRelay::bridge(relay.high, &high_tty);
    let baud = 921_600;

    let mut cmd = binaries::receiver_cmd(
        &format!("serial://{}?baud={baud}", high_tty.display()),
        &s.keys,
        &s.out,
        &s.state,
    );
    cmd.args(["--exit-after-idle", "5", "--log-format", "json"]);
    let mut recv = Proc::spawn("sluice-recv", cmd);
    binaries::wait_open(&mut recv, &high_tty, Duration::from_secs(20));

    let mut cmd = binaries::sender_cmd(
        &format!("serial://{}?baud={baud}", low_tty.display()),
        &s.keys,
    );
    cmd.args(["--log-format", "json", "--repair", "25%"])
        .arg(&root);
    let sent = Proc::spawn("sluice-send", cmd).finish(Duration::from_secs(240));
    assert_exit(&sent, 0, "sluice-send");
    let got = recv.finish(Duration::from_secs(60));
    assert_exit(&got, 0, "sluice-recv");
    tree::compare(&root, &s.out.join("through-mcu"), Check::ALL)
        .unwrap_or_else(|d| panic!("trees differ:\n{d}\nreceiver log:\n{}", got.log));
}
