//! The scaling table: goodput, CPU per side and the cost of every stage (threads by name),
//! measured at MTU 1500 and 9000 with 1, 2 and 4 flows; then a model of bigger gateways built
//! from those per-stage costs.
//!
//! The model: a side with C cores runs C workers and C flows. The workers' stages
//! (`sluice-enc`, `decode`) and the per-flow stages (`udp-tx`: the sender's system calls,
//! `link-flow`: the receiver's socket reads and frame checks) spread over the cores; every
//! other stage is one thread and caps goodput at 1 / its cost whatever C is. So goodput with C
//! cores is the smaller of C / (the side's total cost) and the slowest one-thread stage's cap;
//! the cores a side needs for a goodput G are G × its total cost, if no one-thread stage costs
//! more than 1 / G.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::Run;

/// Stages that spread over cores: the workers, and one thread per flow.
const SPREAD: [&str; 4] = ["sluice-enc", "decode", "udp-tx", "link-flow"];
/// Goodputs the model is asked for, in GB/s: 9 Gb/s (the aim on 10 GbE) and 22.5 Gb/s (the
/// same share of 25 GbE).
const TARGETS: [(&str, f64); 2] = [("9 Gb/s (10 GbE)", 1.125), ("22.5 Gb/s (25 GbE)", 2.8125)];

/// One measured configuration: the case, its flows and the median run.
pub(crate) struct Row {
    pub(crate) case: &'static str,
    pub(crate) flows: usize,
    pub(crate) run: Run,
}

/// Per-stage CPU s/GB of one side, split into what spreads over cores and the one-thread
/// stages (dearest first).
fn split(stages: &BTreeMap<String, f64>) -> (f64, Vec<(&str, f64)>) {
    let spread = stages
        .iter()
        .filter(|(s, _)| SPREAD.contains(&s.as_str()))
        .map(|(_, c)| c)
        .sum();
    let mut serial: Vec<(&str, f64)> = stages
        .iter()
        .filter(|(s, c)| !SPREAD.contains(&s.as_str()) && **c > 0.0)
        .map(|(s, c)| (s.as_str(), *c))
        .collect();
    serial.sort_by(|a, b| b.1.total_cmp(&a.1));
    (spread, serial)
}

/// GB/s one side sustains on `cores` cores, and what limits it.
fn model(stages: &BTreeMap<String, f64>, cores: f64) -> (f64, String) {
    let total: f64 = stages.values().sum();
    let (_, serial) = split(stages);
    let mut best = (f64::INFINITY, String::from("-"));
    if total > 0.0 {
        best = (
            cores / total,
            format!("all cores busy ({total:.2} s/GB over {cores})"),
        );
    }
    for (stage, cost) in serial {
        if 1.0 / cost < best.0 {
            best = (1.0 / cost, format!("{stage} ({cost:.2} s/GB, one thread)"));
        }
    }
    best
}

/// What a side needs for `goodput` GB/s: cores, or the one-thread stages that cannot keep up.
fn needs(stages: &BTreeMap<String, f64>, goodput: f64) -> String {
    let total: f64 = stages.values().sum();
    let (_, serial) = split(stages);
    let over: Vec<String> = serial
        .iter()
        .filter(|(_, c)| c * goodput > 1.0)
        .map(|(s, c)| format!("{s} needs {:.2} cores", c * goodput))
        .collect();
    if over.is_empty() {
        format!("{:.1} cores", total * goodput)
    } else {
        format!(
            "{:.1} cores if it spread; one-thread stages too slow: {}",
            total * goodput,
            over.join(", ")
        )
    }
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

/// Prints the measured rows and the model built from the MTU 9000 row with the most flows.
pub(crate) fn print(rows: &[Row], pinned: bool) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Measured ({}):\n",
        if pinned {
            "sender on CPU 0, receiver on CPU 1"
        } else {
            "both daemons on the same two cores"
        }
    );
    let _ = writeln!(
        out,
        "| case | flows | goodput MB/s | intact | send CPU s/GB | recv CPU s/GB | send RSS / recv RSS MiB | send stages (CPU s/GB) | recv stages (CPU s/GB) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---|---:|---:|---|---|---|");
    for Row {
        case,
        flows,
        run: r,
    } in rows
    {
        let _ = writeln!(
            out,
            "| {case} | {flows} | {:.1} | {} | {:.2} | {:.2} | {:.1} / {:.1} | {} | {} |",
            r.goodput_mb_s,
            if r.intact { "yes" } else { "NO" },
            r.send_cpu_s_per_gb,
            r.recv_cpu_s_per_gb,
            r.send_peak_rss_mib,
            r.recv_peak_rss_mib,
            stages_text(&r.send_stages),
            stages_text(&r.recv_stages),
        );
    }
    let basis = rows
        .iter()
        .filter(|r| r.case == "udp-9000")
        .max_by_key(|r| r.flows)
        .or_else(|| rows.iter().max_by_key(|r| r.flows));
    let Some(basis) = basis else {
        return;
    };
    let (send, recv) = (&basis.run.send_stages, &basis.run.recv_stages);
    let _ = writeln!(
        out,
        "\nModelled from the stage costs of {} with {} flows (workers and flows spread over C cores, every other stage one thread):\n",
        basis.case, basis.flows
    );
    let _ = writeln!(
        out,
        "| cores a side | send GB/s (limit) | recv GB/s (limit) | gateway goodput Gb/s |"
    );
    let _ = writeln!(out, "|---:|---|---|---:|");
    for cores in [2.0, 4.0, 8.0, 16.0] {
        let (s, s_limit) = model(send, cores);
        let (r, r_limit) = model(recv, cores);
        let _ = writeln!(
            out,
            "| {cores} | {s:.2} ({s_limit}) | {r:.2} ({r_limit}) | {:.1} |",
            8.0 * s.min(r)
        );
    }
    for (name, goodput) in TARGETS {
        let _ = writeln!(
            out,
            "\nFor {name} of goodput: sender {}; receiver {}.",
            needs(send, goodput),
            needs(recv, goodput)
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
    fn all_cores_or_the_slowest_single_thread_limit() {
        let s = stages(&[("decode", 3.0), ("link-flow", 1.0), ("sluice-recv", 0.5)]);
        // 2 cores: 4.5 s/GB over 2 = 0.44 GB/s, below the link task's 2 GB/s.
        let (rate, limit) = model(&s, 2.0);
        assert!((rate - 2.0 / 4.5).abs() < 1e-9, "{rate}");
        assert!(limit.starts_with("all cores"), "{limit}");
        // 16 cores: 3.6 GB/s if all spread, but the link task's thread stops at 2 GB/s.
        let (rate, limit) = model(&s, 16.0);
        assert!((rate - 2.0).abs() < 1e-9, "{rate}");
        assert!(limit.starts_with("sluice-recv"), "{limit}");
    }

    #[test]
    fn a_target_names_the_one_thread_stages_that_cannot_keep_up() {
        let s = stages(&[("decode", 3.0), ("publish", 0.5), ("sluice-recv", 0.25)]);
        assert_eq!(needs(&s, 1.0), "3.8 cores");
        let slow = needs(&s, 2.5);
        assert!(slow.contains("publish needs 1.25 cores"), "{slow}");
        assert!(!slow.contains("sluice-recv"), "{slow}");
    }
}
