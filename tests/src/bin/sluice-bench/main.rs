//! End-to-end benchmark of the real daemons on one machine: goodput, CPU per GB, peak RSS,
//! wire efficiency and FEC use, per case, as a table and as one JSON line per run.
//!
//! ```text
//! cargo run --release --bin sluice-bench -- [--case NAME]... [--runs 3] [--size 1GiB]
//! ```
//!
//! Cases: `udp-1500`, `udp-9000` (no loss, sender unpaced), `udp-1500-loss1`, `udp-1500-loss5`
//! (through the seeded relay, repair 10%), `small-files` (10 000 × 4 KiB), `serial-115200`,
//! `serial-921600`, `serial-3000000` (pty pair via socat, sender paced to the baud) and
//! `memory-4g` (a 4 GiB file; peak RSS is the figure that matters), and `qemu-relay` (frames
//! per second through the emulated firmware protocol break). Without `--case` the
//! UDP, small-file and serial cases run; `memory-4g` only when asked for.
//!
//! `s3-1g` sends a 1 GiB file as `udp-1500` does (at `--rate`, repair 0 %) twice a run: into a
//! directory, then with the receiver's `--out s3://BUCKET/PREFIX` into a real Garage on
//! 127.0.0.1 (`s3.rs`; fails naming the install command when `garage` is absent), and prints
//! each pair's goodput and the S3 / dir ratio. The S3 time runs to the object being listed
//! whole: it includes the upload, which starts once the file is verified. Only when asked for
//! (it needs Garage and doubles a 1 GiB case).
//!
//! `compare-1500` and `compare-9000` run Sluice (at `--rate`, repair 5 %) and the peer, lidi
//! (`lidi.rs`; skipped with a message when `SLUICE_BENCH_LIDI` is not set), on the same 1 GiB
//! file, alternating, and print each pair's goodput ratio. `--scaling` runs `udp-1500` at
//! `--rate` with 1 and 2 worker threads and prints the scaling table (`scaling.rs`).
//! `--floors` prints what each unavoidable stage (hashing, age, framing, the page cache) costs
//! on this machine on one thread, without the daemons (`floors.rs`). `--find-rate` searches the
//! highest sender `--rate` this machine's receiver takes without losing a file and prints the
//! rate to give the sender (`rate.rs`).
//!
//! How each figure is taken:
//! - goodput: file bytes / (last object delivered − sender start), from the receiver's
//!   JSON log timestamps; every delivered file is then checked against its source SHA-256.
//!   `s3-1g`'s S3 half ends instead when a `LIST` of the bucket first shows the object whole;
//!   it is then read back as a stream and checked against the source's SHA-256 and its
//!   `sluice-sha256` metadata.
//! - CPU s/GB and peak RSS: sampled from `/proc/<pid>/{stat,status}` every 20 ms while each
//!   daemon runs (utime+stime; VmHWM), so the last sample is within 20 ms of exit.
//! - wire efficiency: file bytes / link bytes the sender reports (frames plus IP/UDP or COBS
//!   overhead); frames per file byte from the same summary.
//! - FEC blocks: blocks the receiver decoded with repair symbols.
//! - stages: CPU s/GB by thread name (`usage.rs`).

mod floors;
mod lidi;
mod rate;
mod s3;
mod scaling;
mod usage;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use sluice_tests::binaries::{self, Keys, Proc};
use sluice_tests::garage::Garage;
use sluice_tests::relay::{Faults, Relay};
use sluice_tests::tree;

#[derive(Debug, Parser)]
#[command(
    name = "sluice-bench",
    about = "End-to-end benchmark of sluice-send and sluice-recv"
)]
struct Args {
    /// Cases to run (repeatable); default: every case but memory-4g, compare-* and s3-1g.
    #[arg(long = "case")]
    cases: Vec<String>,
    /// Runs per case; the table shows the median.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// File size for the UDP cases.
    #[arg(long, default_value = "1GiB")]
    size: String,
    /// Print only the JSON lines.
    #[arg(long)]
    json: bool,
    /// Sender `--rate` for the UDP cases (default 0: unpaced, as far as the sender can go).
    #[arg(long, default_value = "0")]
    rate: String,
    /// `--workers` for both daemons (default: theirs).
    #[arg(long)]
    workers: Option<usize>,
    /// UDP flows (consecutive ports, `udp://127.0.0.1:P-Q` at both ends) for the UDP cases
    /// without loss.
    #[arg(long, default_value_t = 1)]
    flows: usize,
    /// Pin the sender to CPU 0 and the receiver to CPU 1 (`taskset`): one core a side.
    #[arg(long)]
    pin_sides: bool,
    /// Print the scaling table instead (MTU 1500 and 9000 with 1, 2 and 4 flows).
    #[arg(long)]
    scaling: bool,
    /// Print what each unavoidable stage costs on this machine instead (one thread, `--size`
    /// bytes, no daemons): the floor under the CPU figures.
    #[arg(long)]
    floors: bool,
    /// Find the highest sender --rate this machine's receiver takes without losing a file
    /// (one `--size` file per step, default repair) and print the rate to give the sender.
    #[arg(long)]
    find_rate: bool,
}

impl Args {
    fn tuning(&self) -> Tuning {
        Tuning {
            workers: self.workers,
            flows: self.flows.max(1),
            pin_sides: self.pin_sides,
        }
    }
}

/// How a run sets up the daemons beyond its case.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// `--workers` for both daemons (default: theirs).
    workers: Option<usize>,
    /// UDP flows: consecutive ports at both ends (UDP cases without loss).
    flows: usize,
    /// Sender on CPU 0, receiver on CPU 1.
    pin_sides: bool,
}

#[derive(Debug, Clone)]
struct Case {
    name: &'static str,
    link: LinkKind,
    loss: f64,
    files: Files,
    sender_args: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
enum LinkKind {
    Udp { mtu: u32 },
    Serial { baud: u32 },
}

#[derive(Debug, Clone, Copy)]
enum Files {
    One(u64),
    Many { count: usize, size: u64 },
}

#[derive(Debug, Clone, Default)]
struct Run {
    file_bytes: u64,
    files: usize,
    seconds: f64,
    goodput_mb_s: f64,
    files_per_s: f64,
    send_cpu_s_per_gb: f64,
    recv_cpu_s_per_gb: f64,
    send_peak_rss_mib: f64,
    recv_peak_rss_mib: f64,
    /// CPU s/GB of the object store's server over the transfer (0 for a directory).
    store_cpu_s_per_gb: f64,
    link_bytes: u64,
    frames: u64,
    /// File bytes per link byte, IP/UDP headers (or serial COBS framing) included.
    wire_efficiency: f64,
    /// File bytes per byte of Sluice frames (UDP payload; serial: before COBS).
    frame_efficiency: f64,
    fec_blocks: u64,
    intact: bool,
    /// CPU s/GB by stage (thread name).
    send_stages: BTreeMap<String, f64>,
    recv_stages: BTreeMap<String, f64>,
}

fn cases(size: u64) -> Vec<Case> {
    let udp = |name, mtu, loss| Case {
        name,
        link: LinkKind::Udp { mtu },
        loss,
        files: Files::One(size),
        sender_args: vec!["--rate".into(), "0".into(), "--repair".into(), "10%".into()],
    };
    let serial = |name, baud: u32| Case {
        name,
        link: LinkKind::Serial { baud },
        loss: 0.0,
        // About 20 s of line time at baud/10 bytes per second.
        files: Files::One(u64::from(baud) * 2),
        sender_args: vec!["--repair".into(), "0%".into()],
    };
    vec![
        Case {
            sender_args: vec!["--rate".into(), "0".into(), "--repair".into(), "0%".into()],
            ..udp("udp-1500", 1500, 0.0)
        },
        Case {
            sender_args: vec!["--rate".into(), "0".into(), "--repair".into(), "0%".into()],
            ..udp("udp-9000", 9000, 0.0)
        },
        udp("udp-1500-loss1", 1500, 0.01),
        udp("udp-1500-loss5", 1500, 0.05),
        Case {
            files: Files::Many {
                count: 10_000,
                size: 4096,
            },
            sender_args: vec!["--rate".into(), "0".into()],
            ..udp("small-files", 1500, 0.0)
        },
        serial("serial-115200", 115_200),
        serial("serial-921600", 921_600),
        serial("serial-3000000", 3_000_000),
        Case {
            sender_args: vec!["--rate".into(), "0".into(), "--repair".into(), "5%".into()],
            ..udp("compare-1500", 1500, 0.0)
        },
        Case {
            sender_args: vec!["--rate".into(), "0".into(), "--repair".into(), "5%".into()],
            ..udp("compare-9000", 9000, 0.0)
        },
        Case {
            files: Files::One(4 << 30),
            ..udp("memory-4g", 1500, 0.0)
        },
        Case {
            files: Files::One(1 << 30),
            sender_args: vec!["--rate".into(), "0".into(), "--repair".into(), "0%".into()],
            ..udp("s3-1g", 1500, 0.0)
        },
    ]
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let size = sluice_tests::parse_size(&args.size).map_err(anyhow::Error::msg)?;
    let mut all = cases(size);
    for case in &mut all {
        if let LinkKind::Udp { .. } = case.link {
            if let Some(i) = case.sender_args.iter().position(|a| a == "--rate") {
                case.sender_args[i + 1] = args.rate.clone();
            }
        }
    }
    if args.scaling {
        return scaling_table(args, &all);
    }
    if args.floors {
        return floors::print(size);
    }
    if args.find_rate {
        let case = all
            .iter()
            .find(|c| c.name == "udp-1500")
            .context("no udp-1500 case")?;
        return rate::find(case, args.tuning());
    }
    let selected: Vec<Case> = if args.cases.is_empty() {
        all.into_iter()
            .filter(|c| !matches!(c.name, "memory-4g" | "s3-1g") && !c.name.starts_with("compare"))
            .collect()
    } else {
        let mut chosen = Vec::new();
        for name in args.cases.iter().filter(|c| *c != "qemu-relay") {
            let case = all
                .iter()
                .find(|c| c.name == name)
                .with_context(|| format!("unknown case {name:?}"))?;
            chosen.push(case.clone());
        }
        chosen
    };
    if args.cases.iter().any(|c| c == "qemu-relay") {
        qemu_relay_rate(args.runs.max(1))?;
        if args.cases.len() == 1 {
            return Ok(());
        }
    }
    let selected: Vec<Case> = selected
        .into_iter()
        .filter(|c| c.name != "qemu-relay")
        .collect();
    let mut table = Vec::new();
    for case in &selected {
        if case.name.starts_with("compare") {
            compare(case, args)?;
            continue;
        }
        if case.name == "s3-1g" {
            s3::run_pairs(case, args)?;
            continue;
        }
        let mut runs = Vec::new();
        for i in 0..args.runs.max(1) {
            let r = run_case(case, i as u64 + 1, args.tuning())
                .with_context(|| format!("case {} run {}", case.name, i + 1))?;
            println!("{}", json_line(case, i + 1, &r));
            runs.push(r);
        }
        table.push((case.name, median(&runs)));
    }
    if !args.json && !table.is_empty() {
        print_table(&table);
    }
    Ok(())
}

/// Sluice and lidi on the same file, alternating run by run.
fn compare(case: &Case, args: &Args) -> Result<()> {
    let Some(lidi) = lidi::Lidi::from_env()? else {
        println!(
            "{}: skipped, no peer to compare with: build lidi from its source \
             (github.com/ANSSI-FR/lidi) outside this repository and set {}=<its target/release>",
            case.name,
            lidi::ENV
        );
        return Ok(());
    };
    let LinkKind::Udp { mtu } = case.link else {
        bail!("{}: the comparison runs over UDP", case.name);
    };
    // Both sides get the socket buffers lidi's documentation asks for.
    let _buffers = lidi::DeepBuffers::raise();
    let mut pairs = Vec::new();
    for i in 0..args.runs.max(1) {
        let seed = i as u64 + 1;
        let ours = run_case(case, seed, args.tuning())
            .with_context(|| format!("case {} run {}", case.name, i + 1))?;
        println!("{}", json_line(case, i + 1, &ours));
        let tmp = tempfile::Builder::new()
            .prefix("sluice-bench-lidi-")
            .tempdir()?;
        let (file, _, _) = make_files(case, tmp.path(), seed)?;
        let peer = lidi.run(&file, mtu, 5, &tmp.path().join("out.bin"))?;
        println!(
            "{}",
            serde_json::json!({
                "case": case.name, "run": i + 1, "peer": "lidi",
                "goodput_mb_s": peer.goodput_mb_s, "seconds": peer.seconds,
                "send_cpu_s_per_gb": peer.send_cpu_s_per_gb,
                "recv_cpu_s_per_gb": peer.recv_cpu_s_per_gb,
                "send_peak_rss_mib": peer.send_peak_rss_mib,
                "recv_peak_rss_mib": peer.recv_peak_rss_mib,
                "intact": peer.intact,
            })
        );
        pairs.push((ours, peer));
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| {} pair | Sluice MB/s | lidi MB/s | ratio | Sluice send / recv CPU s/GB | lidi send / recv CPU s/GB | Sluice RSS MiB | lidi RSS MiB | intact |",
        case.name
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for (i, (ours, peer)) in pairs.iter().enumerate() {
        // A pair counts only when the peer delivered its file intact; a Sluice failure
        // counts as a ratio of 0.
        let ratio = if !peer.intact {
            "–".to_string()
        } else {
            let r = if ours.intact {
                ours.goodput_mb_s / peer.goodput_mb_s.max(1e-9)
            } else {
                0.0
            };
            ratios.push(r);
            format!("{r:.2}")
        };
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} | {ratio} | {:.2} / {:.2} | {:.2} / {:.2} | {:.0} / {:.0} | {:.0} / {:.0} | {} / {} |",
            i + 1,
            ours.goodput_mb_s,
            peer.goodput_mb_s,
            ours.send_cpu_s_per_gb,
            ours.recv_cpu_s_per_gb,
            peer.send_cpu_s_per_gb,
            peer.recv_cpu_s_per_gb,
            ours.send_peak_rss_mib,
            ours.recv_peak_rss_mib,
            peer.send_peak_rss_mib,
            peer.recv_peak_rss_mib,
            if ours.intact { "yes" } else { "NO" },
            if peer.intact { "yes" } else { "NO" },
        );
    }
    ratios.sort_by(f64::total_cmp);
    let median = match ratios.len() {
        0 => "– (no pair where the peer's file arrived intact)".to_string(),
        n if n % 2 == 1 => format!("{:.2}", ratios[n / 2]),
        n => format!("{:.2}", (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0),
    };
    let _ = writeln!(
        out,
        "
median goodput ratio Sluice / lidi over {} pairs: {median} (Sluice at --rate {}, repair 5 %, encrypted and authenticated; lidi unpaced, repair 5 %, batch {}, 2 threads a side, neither)",
        ratios.len(),
        args.rate,
        lidi::BATCH
    );
    if !args.json {
        println!(
            "
{out}"
        );
    }
    Ok(())
}

/// `--scaling`: udp-1500 and udp-9000 at `--rate` with 1, 2 and 4 flows (and `--workers`,
/// `--pin-sides` as given).
fn scaling_table(args: &Args, all: &[Case]) -> Result<()> {
    let mut rows = Vec::new();
    for name in ["udp-1500", "udp-9000"] {
        let mut case = all
            .iter()
            .find(|c| c.name == name)
            .with_context(|| format!("no {name} case"))?
            .clone();
        if args.rate != "0" {
            case.sender_args = vec!["--rate".into(), args.rate.clone()];
        }
        for flows in [1, 2, 4] {
            let tuning = Tuning {
                flows,
                ..args.tuning()
            };
            let mut runs = Vec::new();
            for i in 0..args.runs.max(1) {
                let r = run_case(&case, i as u64 + 1, tuning)
                    .with_context(|| format!("scaling, {name}, {flows} flows, run {}", i + 1))?;
                println!("{}", json_line(&case, i + 1, &r));
                runs.push(r);
            }
            rows.push(scaling::Row {
                case: name,
                flows,
                run: median(&runs),
            });
        }
    }
    scaling::print(&rows, args.pin_sides);
    Ok(())
}

/// Frames per second the emulated protocol break forwards: 500 frames of 1024 bytes (a
/// serial link's default frame) pushed into UART0 as fast as QEMU takes them, timed until the
/// last one leaves UART1.
fn qemu_relay_rate(runs: usize) -> Result<()> {
    use sluice_protocol::fec::Geometry;
    use sluice_protocol::framing::{encode_frame, encoded_len};
    use sluice_protocol::wire::{
        max_symbol_size, write_frame, BlockKey, BlockKind, Header, LinkKey, ObjectId, SessionId,
        SymbolHeader,
    };
    use sluice_tests::qemu::QemuRelay;
    use std::io::{Read, Write};

    if let Some(why) = sluice_tests::qemu::missing() {
        bail!("qemu-relay: {why}");
    }
    let key = LinkKey::new(&[3; 32]);
    let symbol = max_symbol_size(1024);
    let count = 500u32;
    let mut input = Vec::new();
    let mut frame_len = 0;
    for n in 0..count {
        let header = Header::Symbol(SymbolHeader {
            block: BlockKey {
                session: SessionId(1),
                object: ObjectId(0),
                kind: BlockKind::Data,
                index: n / 1000,
            },
            geometry: Geometry::new(u32::from(symbol) * 1000, symbol, 100)
                .map_err(|e| anyhow::anyhow!("{e:?}"))?,
            symbol: (n % 1000) as u16,
            segment_size: 1 << 20,
        });
        let mut frame = vec![0u8; 2048];
        let payload = vec![0x5a; usize::from(symbol)];
        let len = write_frame(&header, &payload, &key, &mut frame)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        frame_len = len;
        let mut line = vec![0u8; encoded_len(len)];
        let n = encode_frame(&frame[..len], &mut line).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        input.extend_from_slice(&line[..n]);
    }
    for run in 1..=runs {
        let relay = QemuRelay::start();
        let mut low = QemuRelay::connect(relay.low);
        let mut high = QemuRelay::connect(relay.high);
        let expected = input.len();
        let writer_input = input.clone();
        let started = Instant::now();
        let writer = std::thread::spawn(move || low.write_all(&writer_input));
        let mut got = 0usize;
        let mut buf = vec![0u8; 65536];
        high.set_read_timeout(Some(Duration::from_secs(30)))?;
        while got < expected {
            let n = high.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let secs = started.elapsed().as_secs_f64();
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
        println!(
            "{}",
            serde_json::json!({
                "case": "qemu-relay", "run": run, "frames": count, "frame_bytes": frame_len,
                "bytes_out": got, "seconds": secs, "frames_per_s": f64::from(count) / secs,
                "line_mbit_s": got as f64 * 8.0 / secs / 1e6,
            })
        );
    }
    Ok(())
}

fn median(runs: &[Run]) -> Run {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| a.goodput_mb_s.total_cmp(&b.goodput_mb_s));
    let mut m = sorted[sorted.len() / 2].clone();
    // Memory and correctness: report the worst run, not the median.
    m.send_peak_rss_mib = runs.iter().map(|r| r.send_peak_rss_mib).fold(0.0, f64::max);
    m.recv_peak_rss_mib = runs.iter().map(|r| r.recv_peak_rss_mib).fold(0.0, f64::max);
    m.intact = runs.iter().all(|r| r.intact);
    m
}

fn json_line(case: &Case, run: usize, r: &Run) -> String {
    json_value(case, run, r).to_string()
}

fn json_value(case: &Case, run: usize, r: &Run) -> serde_json::Value {
    serde_json::json!({
        "case": case.name,
        "run": run,
        "file_bytes": r.file_bytes,
        "files": r.files,
        "seconds": r.seconds,
        "goodput_mb_s": r.goodput_mb_s,
        "files_per_s": r.files_per_s,
        "send_cpu_s_per_gb": r.send_cpu_s_per_gb,
        "recv_cpu_s_per_gb": r.recv_cpu_s_per_gb,
        "send_peak_rss_mib": r.send_peak_rss_mib,
        "recv_peak_rss_mib": r.recv_peak_rss_mib,
        "store_cpu_s_per_gb": r.store_cpu_s_per_gb,
        "link_bytes": r.link_bytes,
        "frames": r.frames,
        "frames_per_file_byte": r.frames as f64 / r.file_bytes.max(1) as f64,
        "wire_efficiency": r.wire_efficiency,
        "frame_efficiency": r.frame_efficiency,
        "fec_blocks": r.fec_blocks,
        "intact": r.intact,
        "send_stages": r.send_stages,
        "recv_stages": r.recv_stages,
    })
}

fn print_table(rows: &[(&str, Run)]) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| case | goodput MB/s | files/s | send CPU s/GB | recv CPU s/GB | send RSS MiB | recv RSS MiB | wire eff. | frame eff. | FEC blocks | intact |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for (name, r) in rows {
        let _ = writeln!(
            out,
            "| {name} | {:.1} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {:.3} | {:.3} | {} | {} |",
            r.goodput_mb_s,
            r.files_per_s,
            r.send_cpu_s_per_gb,
            r.recv_cpu_s_per_gb,
            r.send_peak_rss_mib,
            r.recv_peak_rss_mib,
            r.wire_efficiency,
            r.frame_efficiency,
            r.fec_blocks,
            if r.intact { "yes" } else { "NO" }
        );
    }
    println!("\n(median of runs by goodput; RSS is the worst run)\n{out}");
}

fn make_files(case: &Case, src: &Path, seed: u64) -> Result<(PathBuf, u64, usize)> {
    match case.files {
        Files::One(len) => {
            let path = src.join("payload.bin");
            tree::write_random_file(&path, len, seed)?;
            Ok((path, len, 1))
        }
        Files::Many { count, size } => {
            let dir = src.join("shards");
            for i in 0..count {
                let sub = dir.join(format!("{:02}", i % 100));
                std::fs::create_dir_all(&sub)?;
                tree::write_random_file(
                    &sub.join(format!("shard-{i:05}.bin")),
                    size,
                    seed + i as u64,
                )?;
            }
            Ok((dir, size * count as u64, count))
        }
    }
}

/// Where the receiver delivers.
enum Out<'g> {
    /// `--out DIR`, a directory in the run's temp dir.
    Dir,
    /// `--out s3://BUCKET/PREFIX` on this node.
    S3(&'g Garage),
}

fn run_case(case: &Case, seed: u64, tuning: Tuning) -> Result<Run> {
    run_case_into(case, seed, tuning, &Out::Dir)
}

/// `cmd` run under `taskset -c cpus`.
fn pinned(cmd: &Command, cpus: &str) -> Command {
    let mut wrapped = Command::new("taskset");
    wrapped
        .arg("-c")
        .arg(cpus)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

fn run_case_into(case: &Case, seed: u64, tuning: Tuning, to: &Out) -> Result<Run> {
    let workers = tuning.workers;
    let tmp = tempfile::Builder::new().prefix("sluice-bench-").tempdir()?;
    let keys: Keys = binaries::keygen(&tmp.path().join("keys"));
    let (src, state) = (tmp.path().join("src"), tmp.path().join("state"));
    let out = match to {
        Out::Dir => tmp.path().join("out"),
        Out::S3(_) => PathBuf::from(format!("s3://{}/{}", s3::BUCKET, s3::PREFIX)),
    };
    // The receiver creates its state directory private (it refuses one others can reach),
    // except with an object store: then it makes a missing one with the umask's mode and
    // refuses that, so it is made here.
    std::fs::create_dir_all(&src)?;
    match to {
        Out::Dir => std::fs::create_dir_all(&out)?,
        Out::S3(_) => std::fs::DirBuilder::new().mode(0o700).create(&state)?,
    }
    let (path, file_bytes, files) = make_files(case, &src, seed)?;

    let (recv_link, send_link, _pty, relay) = match case.link {
        LinkKind::Udp { mtu } if tuning.flows > 1 && case.loss == 0.0 => {
            let first = binaries::free_udp_ports(tuning.flows)?;
            let last = first + (tuning.flows - 1) as u16;
            let link = format!("udp://127.0.0.1:{first}-{last}?mtu={mtu}");
            (link.clone(), Some(link), None, None)
        }
        LinkKind::Udp { mtu } => {
            let port = binaries::free_udp_port();
            let recv_link = format!("udp://127.0.0.1:{port}?mtu={mtu}");
            if case.loss > 0.0 {
                // The relay starts after the receiver is bound (below); its address is fixed then.
                (recv_link, None, None, Some((port, mtu)))
            } else {
                (recv_link.clone(), Some(recv_link), None, None)
            }
        }
        LinkKind::Serial { baud } => {
            let (a, b) = (tmp.path().join("tty-send"), tmp.path().join("tty-recv"));
            let pty = Proc::spawn("socat", {
                let mut c = Command::new("socat");
                c.arg(format!("pty,raw,echo=0,link={}", a.display()))
                    .arg(format!("pty,raw,echo=0,link={}", b.display()));
                c
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            while !(a.exists() && b.exists()) {
                if Instant::now() > deadline {
                    bail!("socat did not create the pty pair (is socat installed?)");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (
                format!("serial://{}?baud={baud}", b.display()),
                Some(format!("serial://{}?baud={baud}", a.display())),
                Some(pty),
                None,
            )
        }
    };

    let mut recv_cmd = binaries::receiver_cmd(&recv_link, &keys, &out, &state);
    recv_cmd.args(["--exit-after-idle", "3", "--log-format", "json"]);
    if let Out::S3(node) = to {
        node.env(&mut recv_cmd);
    }
    if let Some(n) = workers {
        recv_cmd.args(["--workers", &n.to_string()]);
    }
    if tuning.pin_sides {
        recv_cmd = pinned(&recv_cmd, "1");
    }
    let mut recv = Proc::spawn("sluice-recv", recv_cmd);
    if let LinkKind::Udp { .. } = case.link {
        // The last port of a range: bound once every flow is.
        let port = recv_link
            .rsplit_once(':')
            .and_then(|(_, p)| p.split('?').next())
            .and_then(|p| p.rsplit('-').next())
            .and_then(|p| p.parse::<u16>().ok())
            .context("receiver port")?;
        binaries::wait_bound(
            &mut recv,
            ([127, 0, 0, 1], port).into(),
            Duration::from_secs(20),
        );
    } else {
        std::thread::sleep(Duration::from_millis(500));
    }
    let relay = match relay {
        Some((port, _)) => Some(Relay::start(
            ([127, 0, 0, 1], port).into(),
            Faults {
                seed,
                loss: case.loss,
                max_lifetime: Duration::from_secs(3600),
                ..Faults::default()
            },
        )?),
        None => None,
    };
    let send_link = match (&relay, send_link, case.link) {
        (Some(r), _, LinkKind::Udp { mtu }) => format!("udp://{}?mtu={mtu}", r.addr()),
        (_, Some(link), _) => link,
        _ => bail!("no sender link"),
    };

    let mut send_cmd = binaries::sender_cmd(&send_link, &keys);
    send_cmd
        .args(["--log-format", "json"])
        .args(&case.sender_args)
        .arg(&path);
    if let Some(n) = workers {
        send_cmd.args(["--workers", &n.to_string()]);
    }
    if tuning.pin_sides {
        send_cmd = pinned(&send_cmd, "0");
    }
    // Listing from before the sender starts, so the object is seen as soon as it is whole.
    let lister = match to {
        Out::S3(node) => {
            let Files::One(size) = case.files else {
                bail!("{}: the S3 sink is measured with one file", case.name);
            };
            Some(s3::Lister::start(node, s3::key_of(&path)?, size)?)
        }
        Out::Dir => None,
    };
    // The store runs on the same cores: what it spends is part of what the sink costs.
    let store_ticks = || match to {
        Out::S3(node) => usage::sample(node.server_pid()).map_or(0, |u| u.cpu_ticks),
        Out::Dir => 0,
    };
    let store_ticks_before = store_ticks();
    let started = SystemTime::now();
    let mut send = Proc::spawn("sluice-send", send_cmd);
    let usage = usage::watch(&mut [&mut send, &mut recv], None, Duration::from_secs(3600))?;
    let sent = send.finish(Duration::from_secs(1));
    let got = recv.finish(Duration::from_secs(1));
    let store_ticks = store_ticks().saturating_sub(store_ticks_before);
    let listed = lister.map(s3::Lister::listed).transpose()?;
    if let Some(r) = relay {
        r.stop();
    }
    if sent.code() != 0 {
        bail!("sluice-send exited {}:\n{}", sent.code(), tail(&sent.log));
    }

    // Nothing delivered (e.g. an unpaced sender overran the receiver): reported as a run with
    // no goodput and `intact: false`, not as an error, so the table shows it.
    let done = match listed {
        Some(listed) => listed,
        None => last_delivery_time(&got.log),
    };
    let seconds = done
        .map(|t| t.duration_since(started).unwrap_or_default().as_secs_f64())
        .unwrap_or(f64::INFINITY)
        .max(1e-6);
    let delivered = match to {
        Out::Dir => tree::published_files_are_intact(&src, &out),
        Out::S3(node) => s3_intact(node, &path, file_bytes),
    };
    let intact = match delivered {
        Ok(n) => {
            if n != files {
                eprintln!("{}: {n} of {files} files published intact", case.name);
            }
            n == files
        }
        Err(e) => {
            eprintln!("{e}");
            false
        }
    };
    if !intact {
        // Say why, so a failed run can be told apart from a slow one.
        let failures: Vec<&str> = got
            .log
            .lines()
            .filter(|l| l.contains("object failed") || l.contains("\"summary\""))
            .take(6)
            .collect();
        eprintln!(
            "{}: not every file arrived (receiver exit {}, {} log bytes):\n{}\n{}",
            case.name,
            got.code(),
            got.log.len(),
            failures.join("\n"),
            tail(&got.log)
        );
    }
    let gb = file_bytes as f64 / 1e9;
    let ticks = usage::clock_ticks_per_second();
    let send_summary = binaries::json_summary(&sent.log, "frames_sent");
    let recv_summary = binaries::json_summary(&got.log, "blocks_recovered");
    let get = |v: &Option<serde_json::Value>, key: &str| {
        v.as_ref()
            .and_then(|v| binaries::find_u64(v, key))
            .unwrap_or(0)
    };
    let link_bytes = get(&send_summary, "link_bytes");
    Ok(Run {
        file_bytes,
        files,
        seconds,
        goodput_mb_s: file_bytes as f64 / 1e6 / seconds,
        files_per_s: files as f64 / seconds,
        send_cpu_s_per_gb: usage[0].cpu_ticks as f64 / ticks / gb,
        recv_cpu_s_per_gb: usage[1].cpu_ticks as f64 / ticks / gb,
        send_peak_rss_mib: usage[0].peak_rss_kib as f64 / 1024.0,
        recv_peak_rss_mib: usage[1].peak_rss_kib as f64 / 1024.0,
        store_cpu_s_per_gb: store_ticks as f64 / ticks / gb,
        link_bytes,
        frames: get(&send_summary, "frames_sent"),
        wire_efficiency: file_bytes as f64 / link_bytes.max(1) as f64,
        frame_efficiency: file_bytes as f64 / get(&send_summary, "frame_bytes").max(1) as f64,
        fec_blocks: get(&recv_summary, "blocks_recovered"),
        intact,
        send_stages: usage::stages_per_gb(&usage[0], file_bytes),
        recv_stages: usage::stages_per_gb(&usage[1], file_bytes),
    })
}

/// [`tree::published_files_are_intact`] for the one file sent into the bucket: 1 if it is
/// there whole with the source's SHA-256.
fn s3_intact(node: &Garage, file: &Path, size: u64) -> Result<usize, String> {
    let sha256 = tree::sha256_file(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let key = s3::key_of(file).map_err(|e| e.to_string())?;
    let store = s3::Store::new(node).map_err(|e| e.to_string())?;
    store.check(&key, size, &sha256).map(|()| 1)
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Time of the last "delivered" log line (tracing JSON `timestamp`, RFC 3339 UTC).
fn last_delivery_time(log: &str) -> Option<SystemTime> {
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .find(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .is_some_and(|m| m.contains("delivered") && !m.contains("already"))
        })
        .and_then(|v| v.get("timestamp")?.as_str().and_then(parse_rfc3339))
}

/// Parses `2026-11-23T03:40:12.123456Z` (UTC, as tracing-subscriber writes it).
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (h, min, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let nanos: u32 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + min * 60 + s;
    Some(UNIX_EPOCH + Duration::new(u64::try_from(secs).ok()?, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_timestamps_parse() {
        let t = parse_rfc3339("2026-11-23T03:40:12.500000Z").unwrap();
        let secs = t.duration_since(UNIX_EPOCH).unwrap();
        // date -u -d 2026-11-23T03:40:12Z +%s
        assert_eq!(secs.as_secs(), 1_795_405_212);
        assert_eq!(secs.subsec_millis(), 500);
        assert!(parse_rfc3339("yesterday").is_none());
    }
}
