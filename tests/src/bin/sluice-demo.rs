//! One-machine demo: a ~300 MB dataset crosses a lossy one-way UDP link and is verified.
//!
//! ```text
//!   tmp/src/dataset ─▶ sluice-send ─▶ relay (seeded, drops ~2%) ─▶ sluice-recv ─▶ tmp/out/dataset
//! ```
//!
//! `cargo run --release --bin sluice-demo -- [--size 300MB] [--loss 2] [--seed 1] [--keep]`
//!
//! Generates keys and a seeded dataset (nested directories, one file of at least 100 MB, written
//! streaming) in a temp dir, runs the real daemons through the fault relay, then compares every
//! file's SHA-256 and prints a summary. Exits 1 if any file differs or is missing.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use sluice_tests::binaries::{self, Proc};
use sluice_tests::harness::Summary;
use sluice_tests::relay::{FaultCounts, Faults, Relay};
use sluice_tests::tree;

/// Send a generated dataset over a lossy loopback link and verify it arrived intact.
#[derive(Debug, Parser)]
#[command(name = "sluice-demo")]
struct Args {
    /// Total dataset size, with a unit (KB, MB, GB; KiB, MiB, GiB).
    #[arg(long, default_value = "300MB", value_parser = sluice_tests::parse_size)]
    size: u64,
    /// Percentage of datagrams the relay drops (seeded, independent).
    #[arg(long, default_value_t = 2.0)]
    loss: f64,
    /// Seed for the dataset and the relay.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Sender rate, passed to `sluice-send --rate`.
    #[arg(long, default_value = "100MB")]
    rate: String,
    /// Repair overhead, passed to `sluice-send --repair`.
    #[arg(long, default_value = "10%")]
    repair: String,
    /// Keep the temp dir (keys, dataset, output, logs) and print where it is.
    #[arg(long)]
    keep: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sluice-demo: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Writes the dataset: one big file (40% of the size: 120 MB at the default size) and the
/// rest spread over nested directories in files of varied sizes.
fn generate(root: &Path, size: u64, seed: u64) -> Result<usize> {
    let big = size * 2 / 5;
    std::fs::create_dir_all(root.join("video"))?;
    tree::write_random_file(&root.join("video/capture-0001.raw"), big, seed)?;
    let mut left = size.saturating_sub(big);
    let mut files = 1;
    let sizes = [
        17_000_000u64,
        3_000_000,
        250_000,
        9_000_000,
        1,
        0,
        4_096,
        600_000,
    ];
    let dirs = [
        "logs/2026/11",
        "logs/2026/12",
        "docs/specs",
        "images/raw ü",
        "images/thumbs",
    ];
    let mut i = 0usize;
    while left > 0 {
        let len = sizes[i % sizes.len()].min(left);
        let dir = root.join(dirs[i % dirs.len()]);
        std::fs::create_dir_all(&dir)?;
        tree::write_random_file(
            &dir.join(format!("part-{i:04}.dat")),
            len,
            seed + 1 + i as u64,
        )?;
        left -= len;
        files += 1;
        i += 1;
    }
    std::fs::create_dir_all(root.join("empty"))?;
    Ok(files)
}

fn run(args: &Args) -> Result<bool> {
    let tmp = tempfile::Builder::new().prefix("sluice-demo-").tempdir()?;
    let dir = tmp.path().to_path_buf();
    println!("sluice-demo: working in {}", dir.display());

    let keys = binaries::keygen(&dir.join("keys"));
    let (src, out, state) = (dir.join("src"), dir.join("out"), dir.join("state"));
    // The receiver creates its state directory private (it refuses one others can reach).
    for d in [&src, &out] {
        std::fs::create_dir_all(d)?;
    }
    let dataset = src.join("dataset");
    let t = Instant::now();
    let files = generate(&dataset, args.size, args.seed).context("generating the dataset")?;
    let payload = tree::total_bytes(&dataset);
    println!(
        "generated {files} files, {:.1} MB in {:.1} s (seed {})",
        payload as f64 / 1e6,
        t.elapsed().as_secs_f64(),
        args.seed
    );

    let port = binaries::free_udp_port();
    let mut recv_cmd =
        binaries::receiver_cmd(&format!("udp://127.0.0.1:{port}"), &keys, &out, &state);
    recv_cmd.args(["--exit-after-idle", "5", "--log-format", "json"]);
    let mut recv = Proc::spawn("sluice-recv", recv_cmd);
    binaries::wait_bound(
        &mut recv,
        ([127, 0, 0, 1], port).into(),
        Duration::from_secs(20),
    );
    let relay = Relay::start(
        ([127, 0, 0, 1], port).into(),
        Faults {
            seed: args.seed,
            loss: args.loss / 100.0,
            max_lifetime: Duration::from_secs(3600),
            ..Faults::default()
        },
    )?;
    println!(
        "sending over udp://{} -> relay (drops {}%) -> udp://127.0.0.1:{port}",
        relay.addr(),
        args.loss
    );

    let (sent_ok, send_elapsed, send_log) = send(args, &keys, relay.addr(), &dataset, &relay)?;
    let got = recv.finish(Duration::from_secs(600));
    let counts = relay.stop();
    if !sent_ok {
        eprintln!("{send_log}");
        bail!("sluice-send failed");
    }
    std::fs::write(dir.join("receiver.log"), &got.log)?;

    let (identical, total, diffs) = verify(&dataset, &out.join("dataset"))?;
    report(args, payload, send_elapsed, &counts, &got.log, got.code());
    println!("verified: {identical}/{total} files identical");
    for d in diffs.iter().take(20) {
        println!("  {d}");
    }
    if args.keep {
        println!("kept {}", tmp.keep().display());
    }
    Ok(identical == total && diffs.is_empty())
}

/// Runs the sender: on a terminal its progress bars show; otherwise a line per second.
fn send(
    args: &Args,
    keys: &binaries::Keys,
    to: SocketAddr,
    dataset: &Path,
    relay: &Relay,
) -> Result<(bool, Duration, String)> {
    let mut cmd = binaries::sender_cmd(&format!("udp://{to}"), keys);
    cmd.args(["--rate", &args.rate, "--repair", &args.repair])
        .arg(dataset);
    let start = Instant::now();
    if std::io::stderr().is_terminal() {
        let status = cmd.stdin(Stdio::null()).status()?;
        return Ok((status.success(), start.elapsed(), String::new()));
    }
    let mut proc = Proc::spawn("sluice-send", cmd);
    let mut last = Instant::now();
    while proc.running() {
        std::thread::sleep(Duration::from_millis(50));
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            let c = relay.counts();
            println!(
                "  {:>5.1} s  frames {:>8}  dropped {:>6}",
                start.elapsed().as_secs_f64(),
                c.received,
                c.dropped()
            );
        }
    }
    let f = proc.finish(Duration::from_secs(1));
    Ok((f.status.success(), f.elapsed, f.log))
}

/// Compares every source file's SHA-256 with its copy: (identical, total, differences).
fn verify(expected: &Path, actual: &Path) -> Result<(usize, usize, Vec<String>)> {
    let want = tree::snapshot(expected)?;
    let got = if actual.exists() {
        tree::snapshot(actual)?
    } else {
        Default::default()
    };
    let mut identical = 0;
    let mut total = 0;
    let mut diffs = Vec::new();
    for (path, w) in &want {
        let is_file = matches!(w.kind, tree::Kind::File { .. });
        total += usize::from(is_file);
        match got.get(path) {
            Some(g) if g.kind == w.kind => identical += usize::from(is_file),
            Some(_) => diffs.push(format!("differs: {path}")),
            None => diffs.push(format!("missing: {path}")),
        }
    }
    diffs.extend(
        got.keys()
            .filter(|p| !want.contains_key(*p))
            .map(|p| format!("unexpected: {p}")),
    );
    Ok((identical, total, diffs))
}

fn report(args: &Args, payload: u64, elapsed: Duration, c: &FaultCounts, log: &str, code: i32) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!("---- summary ----");
    println!(
        "payload:        {:.1} MB in {:.2} s -> goodput {:.1} MB/s (sender wall time, --rate {})",
        payload as f64 / 1e6,
        secs,
        payload as f64 / 1e6 / secs,
        args.rate
    );
    println!(
        "loss injected:  {} of {} datagrams dropped ({:.2}%, seed {})",
        c.dropped(),
        c.received,
        100.0 * c.dropped() as f64 / (c.received.max(1)) as f64,
        args.seed
    );
    match Summary::find(log, "bad_crc") {
        Some(s) => {
            let recovered = s.get("blocks_recovered");
            println!("FEC recoveries: {recovered} blocks decoded with repair symbols");
            println!(
                "receiver:       {} objects delivered, {} failed, exit {code}",
                s.get("objects_delivered") + s.get("objects_already_delivered"),
                s.get("objects_failed")
            );
        }
        None => println!("receiver:       exit {code} (no JSON summary found)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dataset_has_the_requested_size_and_a_big_file() {
        let tmp = tempfile::tempdir().unwrap();
        let files = generate(tmp.path(), 40_000_000, 3).unwrap();
        assert_eq!(tree::total_bytes(tmp.path()), 40_000_000);
        assert_eq!(tree::count_files(tmp.path()), files);
        let big = std::fs::metadata(tmp.path().join("video/capture-0001.raw")).unwrap();
        assert_eq!(big.len(), 16_000_000);
    }
}
