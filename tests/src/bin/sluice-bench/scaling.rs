//! The scaling table: goodput and CPU per side measured with 1 and 2 worker threads, the cost
//! of every stage (threads by name), and a model of 8 workers and of a 10 GbE gateway built
//! from those per-stage costs.
//!
//! The model: the workers' stages (`sluice-enc`, `decode`) split their cost over N cores;
//! every other stage is one thread, so it caps goodput at 1 / its cost whatever N is. Goodput
//! with N workers is the smallest of those caps (and of the link); the cores a side needs at a
//! goodput G is G × its total cost per GB.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::Run;

/// Threads that do the parallel work, by daemon.
const PARALLEL: [&str; 2] = ["sluice-enc", "decode"];
/// 10 GbE line rate in GB/s.
const TEN_GBE: f64 = 1.25;

/// Per-stage CPU s/GB of one side, split into the workers' stage and the rest.
fn split(stages: &BTreeMap<String, f64>) -> (f64, Vec<(&str, f64)>) {
    let parallel = stages
        .iter()
        .filter(|(s, _)| PARALLEL.contains(&s.as_str()))
        .map(|(_, c)| c)
        .sum();
    let mut serial: Vec<(&str, f64)> = stages
        .iter()
        .filter(|(s, c)| !PARALLEL.contains(&s.as_str()) && **c > 0.0)
        .map(|(s, c)| (s.as_str(), *c))
        .collect();
    serial.sort_by(|a, b| b.1.total_cmp(&a.1));
    (parallel, serial)
}

/// GB/s one side can sustain with `workers` workers, and the stage that limits it.
fn model(stages: &BTreeMap<String, f64>, workers: f64) -> (f64, String) {
    let (parallel, serial) = split(stages);
    let mut best = (f64::INFINITY, String::from("-"));
    if parallel > 0.0 {
        best = (
            workers / parallel,
            format!("workers ({parallel:.2} s/GB over {workers})"),
        );
    }
    for (stage, cost) in serial {
        if 1.0 / cost < best.0 {
            best = (1.0 / cost, format!("{stage} ({cost:.2} s/GB, one thread)"));
        }
    }
    best
}

fn stages_text(stages: &BTreeMap<String, f64>) -> String {
    let mut parts: Vec<(&String, &f64)> = stages.iter().filter(|(_, c)| **c >= 0.005).collect();
    parts.sort_by(|a, b| b.1.total_cmp(a.1));
    parts
        .iter()
        .map(|(s, c)| format!("{s} {c:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints the measured rows (workers, median run) and the model.
pub fn print(rows: &[(usize, Run)]) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| workers | goodput MB/s | send CPU s/GB | recv CPU s/GB | send stages (CPU s/GB) | recv stages (CPU s/GB) |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---|---|");
    for (workers, r) in rows {
        let _ = writeln!(
            out,
            "| {workers} (measured) | {:.1} | {:.2} | {:.2} | {} | {} |",
            r.goodput_mb_s,
            r.send_cpu_s_per_gb,
            r.recv_cpu_s_per_gb,
            stages_text(&r.send_stages),
            stages_text(&r.recv_stages),
        );
    }
    let Some((measured_with, basis)) = rows.iter().max_by_key(|(w, _)| *w) else {
        return;
    };
    let _ = writeln!(
        out,
        "\nModelled from the stage costs measured with {measured_with} workers (the workers' stage split over N cores, every other stage one thread):\n"
    );
    let _ = writeln!(
        out,
        "| workers | send GB/s (limit) | recv GB/s (limit) | gateway goodput GB/s |"
    );
    let _ = writeln!(out, "|---:|---|---|---:|");
    for workers in [1.0, 2.0, 8.0] {
        let (send, send_limit) = model(&basis.send_stages, workers);
        let (recv, recv_limit) = model(&basis.recv_stages, workers);
        let _ = writeln!(
            out,
            "| {workers} | {send:.2} ({send_limit}) | {recv:.2} ({recv_limit}) | {:.2} |",
            send.min(recv)
        );
    }
    for (side, stages) in [
        ("sender", &basis.send_stages),
        ("receiver", &basis.recv_stages),
    ] {
        let total: f64 = stages.values().sum();
        let (_, serial) = split(stages);
        let over: Vec<String> = serial
            .iter()
            .filter(|(_, c)| c * TEN_GBE > 1.0)
            .map(|(s, c)| format!("{s} needs {:.2} cores", c * TEN_GBE))
            .collect();
        let _ = writeln!(
            out,
            "\n{side}: {total:.2} CPU s/GB, so {:.1} cores at 10 GbE line rate ({TEN_GBE} GB/s){}",
            total * TEN_GBE,
            if over.is_empty() {
                String::from(" — no single-threaded stage exceeds one core there.")
            } else {
                format!(
                    " if every stage could spread; single-threaded stages over one core: {}.",
                    over.join(", ")
                )
            }
        );
    }
    println!("\n{out}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(s, c)| (s.to_string(), *c)).collect()
    }

    #[test]
    fn the_slowest_single_thread_or_the_workers_limit() {
        let s = stages(&[("decode", 4.0), ("sluice-recv", 1.0), ("publish", 0.5)]);
        // 2 workers: 4 s/GB over 2 = 0.5 GB/s, below the link task's 1 GB/s.
        let (rate, limit) = model(&s, 2.0);
        assert!((rate - 0.5).abs() < 1e-9, "{rate}");
        assert!(limit.starts_with("workers"));
        // 8 workers: the link task's thread limits at 1 GB/s.
        let (rate, limit) = model(&s, 8.0);
        assert!((rate - 1.0).abs() < 1e-9, "{rate}");
        assert!(limit.starts_with("sluice-recv"), "{limit}");
    }
}
