//! Sender throughput, in two parts:
//!
//! 1. the encode pipeline alone (read, SHA-256, age, FEC) into a channel that is drained and
//!    dropped, for 1, 2 and "one per core" workers;
//! 2. the real `sluice-send` binary sending the same file unpaced (`--rate 0`) to a UDP socket
//!    this benchmark binds on 127.0.0.1, counting what arrives.
//!
//! `cargo bench -p sluice-sender --bench pipeline` (environment: `SLUICE_BENCH_MIB`, default
//! 256; `SLUICE_BENCH_MTU`, default 1500). CPU seconds come from `/proc/<pid>/stat` (Linux).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_common::keys;
use sluice_protocol::wire::{self, SessionId};
use sluice_sender::encode::{self, EncodeConfig, Produced};
use sluice_sender::objects;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User + system CPU seconds of a process so far (clock ticks are 1/100 s on Linux).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn write_file(path: &Path, mib: u64) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&chunk).unwrap();
    }
    file.flush().unwrap();
}

fn encode_only(dir: &Path, file: &Path, bytes: u64, symbol_size: u16, workers: usize) {
    let config = EncodeConfig {
        session: SessionId(1),
        symbol_size,
        segment_size: 1 << 20,
        pack_under: 0,
        repair_permille: 100,
        passes: 1,
        recipients: keys::load_recipients(&dir.join(keys::RECEIVER_PUB)).unwrap(),
        signer: keys::SigningKey::load(&dir.join(keys::SENDER_KEY)).unwrap(),
        spool: None,
        workers,
        first_object: 0,
        approval: None,
        watched: None,
    };
    let (objects, _) = objects::enumerate(&[file.to_path_buf()], None);
    let (tx, rx) = flume::bounded(4);
    let cpu_before = cpu_seconds("self").unwrap_or(0.0);
    let start = Instant::now();
    let mut sequence = sluice_common::sequence::Sequence::open(dir, config.signer.id());
    let encoder = std::thread::spawn(move || encode::run(&config, &objects, &mut sequence, tx));
    let mut symbols = 0usize;
    while let Ok(item) = rx.recv() {
        if let Produced::Block { block, .. } = item {
            symbols += block.len();
        }
    }
    encoder.join().unwrap().unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds("self").unwrap_or(0.0) - cpu_before;
    let label = if workers == 0 {
        "auto".to_string()
    } else {
        workers.to_string()
    };
    println!(
        "encode only, {label:>4} worker(s): {:7.1} MB/s, {symbols} symbols, {:.2} CPU s/GB",
        bytes as f64 / 1e6 / elapsed,
        cpu / (bytes as f64 / 1e9)
    );
}

fn full_send(dir: &Path, file: &Path, bytes: u64, mtu: u64) {
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(2000)))
        .unwrap();
    let port = sink.local_addr().unwrap().port();
    let counter = std::thread::spawn(move || {
        let (mut frames, mut frame_bytes) = (0u64, 0u64);
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = sink.recv(&mut buf) {
            frames += 1;
            frame_bytes += n as u64;
        }
        (frames, frame_bytes)
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice-send"))
        .arg("--link")
        .arg(format!("udp://127.0.0.1:{port}?mtu={mtu}"))
        .arg("--recipient")
        .arg(dir.join(keys::RECEIVER_PUB))
        .arg("--sign-key")
        .arg(dir.join(keys::SENDER_KEY))
        .arg("--link-key")
        .arg(dir.join(keys::LINK_KEY))
        .args(["--rate", "0", "--log-format", "json", "-q"])
        .arg(file)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let stderr = child.stderr.take().unwrap();
    let lines = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    // The sender idles for its trailing heartbeats, so the last sample holds its whole CPU.
    let mut cpu = 0.0;
    while child.try_wait().unwrap().is_none() {
        cpu = cpu_seconds(&pid).unwrap_or(cpu);
        std::thread::sleep(Duration::from_millis(20));
    }
    let lines = lines.join().unwrap();
    let (frames, frame_bytes) = counter.join().unwrap();
    let summary = lines
        .iter()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v.get("summary").cloned())
        .unwrap_or_else(|| panic!("no summary from sluice-send: {lines:?}"));
    let elapsed = summary["elapsed_s"].as_f64().unwrap();
    let sent = summary["frames_sent"].as_u64().unwrap();
    println!(
        "sluice-send --rate 0, MTU {mtu}: {:.1} MB/s of file data, {:.0} frames/s, \
         {:.1} MB/s of frames; {sent} frames sent, {frames} ({frame_bytes} bytes) reached the \
         sink; {:.2} CPU s/GB",
        summary["goodput_mb_s"].as_f64().unwrap(),
        sent as f64 / elapsed,
        summary["frame_bytes"].as_f64().unwrap() / 1e6 / elapsed,
        cpu / (bytes as f64 / 1e9)
    );
}

fn main() {
    // `cargo test --benches` runs benchmarks with `--bench` absent: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let mib = env_number("SLUICE_BENCH_MIB", if quick { 8 } else { 256 });
    let mtu = env_number("SLUICE_BENCH_MTU", 1500);
    let dir = tempfile::tempdir().unwrap();
    keys::generate_receiver_keys(dir.path()).unwrap();
    keys::generate_sender_keys(dir.path()).unwrap();
    let file = dir.path().join("bench.bin");
    write_file(&file, mib);
    let bytes = mib << 20;
    let symbol_size = wire::max_symbol_size(mtu as usize - 28);
    println!("{mib} MiB file, symbol size {symbol_size}, 1 MiB segments, 10% repair");
    for workers in [1, 2, 0] {
        encode_only(dir.path(), &file, bytes, symbol_size, workers);
    }
    full_send(dir.path(), &file, bytes, mtu);
}
