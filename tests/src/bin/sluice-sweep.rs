//! Prints the protocol loss sweep of RELIABILITY.md: random loss 0–30% and Gilbert–Elliott
//! bursts of 10–200 frames, at 5/10/25% repair, one and two passes, through the real
//! scheduler, Reed–Solomon codec and assembler (no sockets; `sluice_tests::sweep`).
//!
//! `cargo run --release --bin sluice-sweep -- [--blocks 64] [--k 745] [--seed 1]`

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
}

fn main() {
    let args = Args::parse();
    println!("| loss model | repair | passes | frames lost | blocks | intact | failed | corrupt | silent | k arrived = decoded | binomial failure rate |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    let mut seed = args.seed;
    let mut models: Vec<(String, f64, Option<BurstLoss>)> =
        [0.0, 0.01, 0.02, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3]
            .into_iter()
            .map(|p| (format!("random {:.0}%", p * 100.0), p, None))
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
