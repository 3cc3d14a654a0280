//! The protocol core under a sweep of random and burst loss (no sockets; see
//! `sluice_tests::sweep`): no block is ever decoded wrong or left unreported, every block
//! decodes exactly when k of its symbols arrived, observed failure rates follow the binomial
//! limit of the repair ratio, and a second pass recovers what one pass could not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_tests::relay::{BurstLoss, Faults};
use sluice_tests::sweep::{block_failure_probability, run, Outcome, Point};

fn point(seed: u64, loss: f64, burst: Option<BurstLoss>, repair: u32, passes: u16) -> Point {
    Point {
        faults: Faults {
            seed,
            loss,
            burst,
            ..Faults::default()
        },
        repair_permille: repair,
        passes,
        blocks: 48,
        k: 64,
        symbol_size: 256,
        interleave: 8,
    }
}

fn assert_sound(label: &str, o: &Outcome) {
    assert_eq!(o.corrupt, 0, "{label}: corrupt blocks {o:?}");
    assert_eq!(o.unaccounted, 0, "{label}: silent stalls {o:?}");
    assert_eq!(
        o.mispredicted, 0,
        "{label}: decoded ≠ k symbols arrived {o:?}"
    );
    assert_eq!(o.intact + o.failed, o.blocks, "{label}: {o:?}");
    assert_eq!(o.intact, o.predicted_decodable, "{label}: {o:?}");
}

#[test]
fn random_loss_follows_the_binomial_limit() {
    let k = 64u32;
    for repair in [50u32, 100, 250] {
        let r = (k * repair).div_ceil(1000);
        for (i, loss) in [0.0, 0.01, 0.03, 0.05, 0.08, 0.1, 0.15, 0.2, 0.3]
            .into_iter()
            .enumerate()
        {
            let label = format!("repair {repair}‰ loss {loss}");
            let o = run(&point(100 + i as u64, loss, None, repair, 1));
            assert_sound(&label, &o);
            if loss == 0.0 {
                assert_eq!(o.intact, o.blocks, "{label}");
            }
            // Observed failures against the binomial expectation: within 4 standard deviations
            // (plus a small absolute margin for the tiny-probability tail).
            let p = block_failure_probability(k + r, r, loss);
            let n = o.blocks as f64;
            let sd = (n * p * (1.0 - p)).sqrt();
            let failed = o.failed as f64;
            assert!(
                (failed - n * p).abs() <= 4.0 * sd + 2.0,
                "{label}: {failed} failed, expected {:.1} ± {:.1}",
                n * p,
                sd
            );
        }
    }
}

#[test]
fn bursts_are_spread_by_interleaving_and_never_corrupt() {
    for (i, mean_run) in [10.0f64, 50.0, 200.0].into_iter().enumerate() {
        // Bursts that lose everything while they last, 5% of frames overall.
        let burst = BurstLoss {
            p_good_to_bad: 0.05 / 0.95 / mean_run,
            p_bad_to_good: 1.0 / mean_run,
            loss_in_bad: 1.0,
        };
        let o = run(&point(200 + i as u64, 0.0, Some(burst), 250, 1));
        assert_sound(&format!("bursts of {mean_run}"), &o);
        assert!(o.frames_lost > 0, "no burst happened: {o:?}");
    }
    // A 10-frame burst among 8 interleaved blocks costs each block about 2 symbols: 25% repair
    // (16 symbols) absorbs every such burst at 5% mean loss.
    let short = BurstLoss {
        p_good_to_bad: 0.05 / 0.95 / 10.0,
        p_bad_to_good: 0.1,
        loss_in_bad: 1.0,
    };
    let o = run(&point(300, 0.0, Some(short), 250, 1));
    assert_eq!(o.intact, o.blocks, "{o:?}");
}

#[test]
fn a_second_pass_recovers_what_one_could_not() {
    let one = run(&point(400, 0.15, None, 100, 1));
    let two = run(&point(400, 0.15, None, 100, 2));
    assert_sound("one pass", &one);
    assert_sound("two passes", &two);
    assert!(
        one.failed > one.blocks / 2,
        "15% loss should beat 10% repair: {one:?}"
    );
    assert_eq!(two.intact, two.blocks, "{two:?}");
}

#[test]
fn damaged_duplicated_and_reordered_frames_never_corrupt() {
    let faults = Faults {
        seed: 500,
        loss: 0.02,
        bit_flip: 0.02,
        max_bit_flips: 3,
        truncate: 0.01,
        duplicate: 0.05,
        reorder: 0.05,
        reorder_depth: 20,
        ..Faults::default()
    };
    let o = run(&Point {
        faults,
        ..point(0, 0.0, None, 100, 1)
    });
    assert_sound("line damage", &o);
    assert!(o.intact >= o.blocks * 9 / 10, "{o:?}");
}
