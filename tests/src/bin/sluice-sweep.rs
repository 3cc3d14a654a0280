//! Prints the protocol loss sweep of RELIABILITY.md: random loss 0–30% and Gilbert–Elliott
//! bursts of 10–200 frames, at 5/10/25% repair, one and two passes, through the real
//! scheduler, Reed–Solomon codec and assembler (no sockets; `sluice_tests::sweep`).
//!
//! `cargo run --release --bin sluice-sweep -- [--blocks 64] [--k 745] [--seed 1]`
//!
//! With `--e2e` it sweeps the real daemons instead: a small tree through the seeded relay at
//! random loss 0–20% and the same bursts, 10% and 25% repair, one and two passes, and counts files delivered
//! intact, files reported failed and files published corrupt (which must stay 0).

use clap::Parser;
use sluice_tests::relay::{BurstLoss, Faults};
use sluice_tests::sweep::{block_failure_probability, run, Point};

#[derive(Debug, Parser)]
#[command(name = "sluice-sweep")]
struct Args {
    /// Blocks per point.
    #[arg(long, default_value_t = 64)]
    blocks: usize,
    /// Source symbols per block (745 × 1408 B is a 1 MiB segment at MTU 1500).
    #[arg(long, default_value_t = 745)]
    k: u16,
    /// Symbol size in bytes.
    #[arg(long, default_value_t = 1408)]
    symbol_size: u16,
    /// Base seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Sweep the real daemons through the relay instead of the protocol core.
    #[arg(long)]
    e2e: bool,
}

/// Loss models of a sweep: each random loss rate, then Gilbert–Elliott bursts of 10, 50 and
/// 200 frames losing 5% of frames on average. (name, random loss, bursts)
fn loss_models(random: &[f64]) -> Vec<(String, f64, Option<BurstLoss>)> {
    let mut models: Vec<_> = random
        .iter()
        .map(|&p| (format!("random {:.0}%", p * 100.0), p, None))
        .collect();
    for run_len in [10.0, 50.0, 200.0] {
        models.push((
            format!("bursts of {run_len:.0}, 5% mean"),
            0.0,
            Some(BurstLoss {
                p_good_to_bad: 0.05 / 0.95 / run_len,
                p_bad_to_good: 1.0 / run_len,
                loss_in_bad: 1.0,
            }),
        ));
    }
    models
}

fn e2e_sweep(seed: u64) -> std::io::Result<()> {
    use sluice_tests::binaries::free_udp_port;
    use sluice_tests::harness::{Setup, Summary};
    use sluice_tests::relay::Relay;
    use sluice_tests::tree::{self, TreeSpec};
    use std::time::Duration;

    println!("| loss model | repair | passes | frames lost | files | intact | reported failed | corrupt | receiver exit |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut seed = seed;
    for (name, loss, burst) in loss_models(&[0.0, 0.02, 0.05, 0.08, 0.12, 0.2]) {
        for repair in ["10%", "25%"] {
            for passes in ["1", "2"] {
                seed += 1;
                let s = Setup::new();
                let root = s.src.join("data");
                tree::make_tree(
                    &root,
                    TreeSpec {
                        big_bytes: 2 << 20,
                        segment_edges: false,
                        small_scale: 1,
                        seed,
                    },
                )?;
                let files = tree::count_files(&root);
                let port = free_udp_port();
                let mut recv = s.receiver(port, 3, &[]);
                let relay = Relay::start(
                    ([127, 0, 0, 1], port).into(),
                    Faults {
                        seed,
                        loss,
                        burst,
                        ..Faults::default()
                    },
                )?;
                let sent = s.send(
                    relay.addr(),
                    &["--rate", "20MB", "--repair", repair, "--passes", passes],
                    &[&root],
                    Duration::from_secs(300),
                );
                let got = recv.finish(Duration::from_secs(120));
                let counts = relay.stop();
                let summary = Summary::find(&got.log, "objects_failed");
                let failed = summary.as_ref().map_or(0, |s| s.get("objects_failed"));
                let (intact, corrupt) = match tree::published_files_are_intact(&s.src, &s.out) {
                    Ok(n) => (n, 0),
                    Err(e) => (0, e.lines().count()),
                };
                println!(
                    "| {name} | {repair} | {passes} | {:.2}% | {files} | {intact} | {failed} | {corrupt} | {} |",
                    100.0 * counts.dropped() as f64 / counts.received.max(1) as f64,
                    got.code(),
                );
                if sent.code() != 0 {
                    return Err(std::io::Error::other(format!(
                        "sluice-send failed:\n{}",
                        sent.log
                    )));
                }
            }
        }
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    if args.e2e {
        if let Err(e) = e2e_sweep(args.seed) {
            eprintln!("sluice-sweep: {e}");
            std::process::exit(1);
        }
        return;
    }
    println!("| loss model | repair | passes | frames lost | blocks | intact | failed | corrupt | silent | k arrived = decoded | binomial failure rate |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    let mut seed = args.seed;
    let models = loss_models(&[0.0, 0.01, 0.02, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3]);
    for (name, loss, burst) in &models {
        for repair in [50u32, 100, 250] {
            for passes in [1u16, 2] {
                seed += 1;
                let o = run(&Point {
                    faults: Faults {
                        seed,
                        loss: *loss,
                        burst: *burst,
                        ..Faults::default()
                    },
                    repair_permille: repair,
                    passes,
                    blocks: args.blocks,
                    k: args.k,
                    symbol_size: args.symbol_size,
                    interleave: 8,
                });
                let k = u32::from(args.k);
                let r = (k * repair).div_ceil(1000);
                let theory = if burst.is_none() && passes == 1 {
                    format!("{:.3}", block_failure_probability(k + r, r, *loss))
                } else {
                    "–".to_string()
                };
                println!(
                    "| {name} | {}% | {passes} | {:.2}% | {} | {} | {} | {} | {} | {} | {theory} |",
                    repair / 10,
                    o.loss() * 100.0,
                    o.blocks,
                    o.intact,
                    o.failed,
                    o.corrupt,
                    o.unaccounted,
                    if o.mispredicted == 0 { "yes" } else { "NO" },
                );
            }
        }
    }
}
