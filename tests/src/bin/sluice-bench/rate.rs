//! `--find-rate`: the highest `--rate` this machine's receiver takes without losing a file,
//! and the rate to give the sender. A one-way link has no back channel: the sender cannot
//! learn that the receiver falls behind, so the operator paces it below what the receiver
//! sustains, measured once per box.
//!
//! Each step sends `--size` (one file, MTU 1500, the sender's default repair of 10 %) at a
//! rate through the real daemons and counts the step good when the file arrives intact in
//! one pass. The rate doubles from 50 MB/s until a step fails, then is bisected down to a
//! step of 10 %; the advice is 80 % of the highest good rate, leaving room for a busy box.

use anyhow::Result;

use crate::{json_line, run_case, Case, Tuning};

/// Where the search starts.
const START: f64 = 50e6;
/// The highest rate tried.
const CEILING: f64 = 4e9;
/// The advice: this share of the highest rate that delivered.
const MARGIN: f64 = 0.8;

/// One step: `rate` (link bytes per second) on `case`; whether the file arrived intact.
fn step(case: &Case, rate: f64, seed: u64, tuning: Tuning) -> Result<bool> {
    let mut case = case.clone();
    let rate = format!("{}", rate.round() as u64);
    case.sender_args = vec!["--rate".into(), rate.clone()];
    let run = run_case(&case, seed, tuning)?;
    println!("{}", json_line(&case, seed as usize, &run));
    eprintln!(
        "  --rate {:>6.0} MB/s: {} ({:.1} MB/s goodput)",
        rate.parse::<f64>().unwrap_or(0.0) / 1e6,
        if run.intact { "delivered" } else { "LOST" },
        run.goodput_mb_s
    );
    Ok(run.intact)
}

/// Searches the highest good rate on `case` and prints it with the advice.
pub fn find(case: &Case, tuning: Tuning) -> Result<()> {
    let mut seed = 0;
    let mut next_seed = || {
        seed += 1;
        seed
    };
    let (mut good, mut bad) = (0.0, CEILING);
    let mut rate = START;
    while rate < CEILING {
        if step(case, rate, next_seed(), tuning)? {
            good = rate;
            rate *= 2.0;
        } else {
            bad = rate;
            break;
        }
    }
    while good > 0.0 && bad / good > 1.1 {
        let mid = (good * bad).sqrt();
        if step(case, mid, next_seed(), tuning)? {
            good = mid;
        } else {
            bad = mid;
        }
    }
    if good == 0.0 {
        println!(
            "no rate from {:.0} MB/s up delivered: look at the receiver's log (is it overrun at \
             any rate? raise net.core.rmem_max)",
            START / 1e6
        );
        return Ok(());
    }
    let advice = good * MARGIN;
    println!(
        "highest rate delivered in one pass: {:.0} MB/s (the next step up, {:.0} MB/s, lost it)",
        good / 1e6,
        bad / 1e6
    );
    println!(
        "give the sender --rate {:.0}MB on this machine ({:.0} % of it)",
        (advice / 1e6).floor(),
        MARGIN * 100.0
    );
    Ok(())
}
