//! Receiver goodput on loopback, without a sender competing for the CPU: the frames of one
//! file are generated up front (age, FEC, frames, as the test producer makes them), then
//! replayed over UDP at a fixed pace to an in-process receiver, which publishes the file.
//!
//! ```text
//! cargo bench -p sluice-receiver --bench goodput -- [MiB=256] [MB/s=250] [mtu=1500] [max-memory MiB=32]
//! ```
//!
//! Prints the replay rate reached, the receiver's goodput (first frame to delivery), frames
//! lost, and whether the file arrived intact. Speed figures live here, never in tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use support::{all, bytes, Item, Producer, Rig};

fn arg(i: usize, default: f64) -> f64 {
    std::env::args()
        .filter(|a| !a.starts_with('-'))
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// Replays `frames` to `to` at `rate` bytes per second (frame bytes plus 28 of IP/UDP).
fn replay(to: std::net::SocketAddr, frames: &[Vec<u8>], rate: f64) -> f64 {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let start = Instant::now();
    let mut sent = 0f64;
    for chunk in frames.chunks(32) {
        for frame in chunk {
            socket.send_to(frame, to).unwrap();
            sent += (frame.len() + 28) as f64;
        }
        let due = Duration::from_secs_f64(sent / rate);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    sent / start.elapsed().as_secs_f64()
}

fn main() {
    let mib = arg(1, 256.0) as usize;
    let rate = arg(2, 250.0) * 1e6;
    let mtu = arg(3, 1500.0) as usize;
    let max_memory = arg(4, 32.0) as u64;
    let rig = Rig::new();
    let mut producer = Producer::new(&rig.keys, 0xBE);
    producer.symbol_size = sluice_protocol::wire::max_symbol_size(mtu - 28);
    producer.segment_size = 1 << 20;
    producer.passes = 1;
    let content = bytes(mib << 20, 1);
    let t = Instant::now();
    let encoded = [producer.encode(0, &Item::file("big.bin", content.clone(), 0o644, (1, 0)))];
    let frames = producer.frames(&encoded, 0, all);
    eprintln!(
        "generated {} frames for {mib} MiB in {:.1} s",
        frames.len(),
        t.elapsed().as_secs_f64()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = runtime.block_on(async {
        let mut options = rig.options(Duration::from_secs(2));
        options.shared.link = format!("udp://127.0.0.1:0?mtu={mtu}").parse().unwrap();
        options.max_memory = max_memory << 20;
        let running = rig.start(options).await;
        let to = running.addr;
        let replayed = tokio::task::spawn_blocking(move || replay(to, &frames, rate));
        let achieved = replayed.await.unwrap();
        (achieved, running.finish().await)
    });
    let (achieved, report) = report;
    let intact = std::fs::read(rig.out.join("big.bin")).is_ok_and(|got| got == content);
    println!(
        "{mib} MiB at mtu {mtu}, max-memory {max_memory} MiB: replayed at {:.0} MB/s; receiver goodput {:.1} MB/s; \
         frames {} received ({} valid), drops {:?}; blocks recovered {}; intact: {intact}",
        achieved / 1e6,
        report.goodput_mb_s(),
        report.frames_received,
        report.frames_valid,
        report.drops.nonzero().collect::<Vec<_>>(),
        report.blocks_recovered,
    );
}
