//! Loss sweep of the protocol core, without sockets: the real transmit scheduler, FEC codec and
//! receive assembler, with the seeded fault model of [`crate::relay`] in between.
//!
//! ```text
//!   OutgoingBlock::encode_pass ─▶ Scheduler ─▶ FaultModel (loss, bursts, flips…) ─▶ Assembler ─▶ decode
//! ```
//!
//! For every block it records what happened (decoded intact, reported failed, or decoded to
//! wrong bytes — which must never happen) and what the code's arithmetic predicts: a
//! Reed–Solomon block of `k` source symbols decodes if and only if `k` distinct symbols of it
//! arrive undamaged. The sweep therefore checks the implementation against the theoretical
//! limit block by block, not just on average.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_protocol::fec::ReedSolomon;
use sluice_protocol::rx::{Assembler, Event, RxConfig};
use sluice_protocol::time::Instant;
use sluice_protocol::tx::{BlockPlan, OutgoingBlock, Scheduler, Transmit, TxConfig};
use sluice_protocol::wire::{
    self, BlockKey, BlockKind, Header, LinkKey, ObjectId, SessionId, MAX_FRAME_LEN,
};

use crate::relay::{FaultModel, Faults};

/// One point of the sweep.
#[derive(Clone, Debug)]
pub struct Point {
    /// What the link does to frames.
    pub faults: Faults,
    /// Repair symbols per thousand source symbols, per pass.
    pub repair_permille: u32,
    /// Passes over every block.
    pub passes: u16,
    /// Blocks sent.
    pub blocks: usize,
    /// Source symbols per block.
    pub k: u16,
    /// Bytes per symbol.
    pub symbol_size: u16,
    /// Blocks whose symbols the scheduler interleaves.
    pub interleave: usize,
}

/// What happened to the blocks of one point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Blocks sent.
    pub blocks: usize,
    /// Decoded and equal to what was sent.
    pub intact: usize,
    /// Reported failed (stalled with fewer than k symbols).
    pub failed: usize,
    /// Decoded to bytes that differ from what was sent: must always be 0.
    pub corrupt: usize,
    /// Neither decoded nor reported: must always be 0 (a silent stall).
    pub unaccounted: usize,
    /// Blocks that arrived with at least k distinct undamaged symbols (the code's limit says
    /// exactly these decode).
    pub predicted_decodable: usize,
    /// Blocks whose fate differs from the prediction: must always be 0.
    pub mispredicted: usize,
    /// Symbol frames sent.
    pub frames_sent: u64,
    /// Frames the fault model dropped.
    pub frames_lost: u64,
}

impl Outcome {
    /// Fraction of symbol frames lost on the way.
    pub fn loss(&self) -> f64 {
        self.frames_lost as f64 / self.frames_sent.max(1) as f64
    }
}

/// Probability that a block of `n` symbols with `r` to spare fails under independent loss `p`:
/// P(more than r of n lost).
pub fn block_failure_probability(n: u32, r: u32, p: f64) -> f64 {
    // Sum of the binomial terms for 0..=r lost, in log space to stay finite for large n.
    let ln_choose = |n: u32, k: u32| -> f64 {
        (1..=k)
            .map(|i| ((n - k + i) as f64).ln() - (i as f64).ln())
            .sum()
    };
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let ok: f64 = (0..=r.min(n))
        .map(|lost| {
            (ln_choose(n, lost) + lost as f64 * p.ln() + (n - lost) as f64 * (1.0 - p).ln()).exp()
        })
        .sum();
    (1.0 - ok).clamp(0.0, 1.0)
}

/// Runs one point; deterministic for a given `point.faults.seed`.
pub fn run(point: &Point) -> Outcome {
    let secret = [0x5a; 32];
    let key = LinkKey::new(&secret);
    let session = SessionId(0x5eed);
    let mut now = Instant::from_micros(1_000_000);
    let mut codec = ReedSolomon::new();
    let mut rng = ChaCha8Rng::seed_from_u64(point.faults.seed ^ 0xb10c);
    let block_len = usize::from(point.k) * usize::from(point.symbol_size) - 17;
    let data: Vec<Vec<u8>> = (0..point.blocks)
        .map(|_| {
            let mut d = vec![0u8; block_len];
            rng.fill_bytes(&mut d);
            d
        })
        .collect();
    let keys: Vec<BlockKey> = (0..point.blocks)
        .map(|i| BlockKey {
            session,
            object: ObjectId(i as u64 / 4),
            kind: BlockKind::Data,
            index: (i % 4) as u32,
        })
        .collect();
    let plan = BlockPlan {
        repair_permille: point.repair_permille,
        passes: point.passes,
    };

    let mut sched = Scheduler::new(
        TxConfig {
            interleave: point.interleave,
            heartbeat_interval: Duration::from_secs(3600),
            ..TxConfig::default()
        },
        session,
        key.clone(),
        now,
    );
    let mut asm = Assembler::new(
        RxConfig {
            max_blocks: point.blocks + 8,
            max_buffered_bytes: 1 << 30,
            ..RxConfig::default()
        },
        key.clone(),
    );
    let mut model = FaultModel::new(point.faults.clone());
    let mut outcome = Outcome {
        blocks: point.blocks,
        ..Outcome::default()
    };
    // Distinct undamaged symbol ids that reached the receiver, per block.
    let mut arrived: BTreeMap<BlockKey, BTreeSet<u16>> = BTreeMap::new();
    let mut decided: BTreeMap<BlockKey, bool> = BTreeMap::new();
    let mut frame = vec![0u8; MAX_FRAME_LEN];

    let mut deliver = |bytes: &[u8], asm: &mut Assembler, now: Instant| {
        if let Ok(f) = wire::parse_frame(bytes, &key) {
            if let Header::Symbol(s) = f.header {
                arrived.entry(s.block).or_default().insert(s.symbol);
            }
        }
        asm.handle_frame(now, bytes);
    };

    for pass in 0..point.passes {
        let mut next = 0;
        loop {
            while next < point.blocks && sched.has_room() {
                let block = OutgoingBlock::encode_pass(
                    keys[next],
                    wire::MIN_SEGMENT_SIZE,
                    &data[next],
                    point.symbol_size,
                    plan,
                    pass,
                    &mut codec,
                )
                .expect("valid block");
                sched.push_block(block).expect("room was checked");
                next += 1;
            }
            match sched.poll_transmit(now, &mut frame).expect("frame fits") {
                Transmit::Frame(n) => {
                    let bytes = frame[..n].to_vec();
                    if matches!(
                        wire::parse_frame(&bytes, &key).map(|f| f.header),
                        Ok(Header::Symbol(_))
                    ) {
                        outcome.frames_sent += 1;
                    }
                    model.process(bytes, &mut |b| deliver(b, &mut asm, now));
                }
                Transmit::WaitUntil(_) if next >= point.blocks && sched.is_drained() => break,
                Transmit::WaitUntil(at) => now = at,
            }
            drain_events(
                &mut asm,
                &mut codec,
                &keys,
                &data,
                &mut decided,
                &mut outcome,
            );
            now = now + Duration::from_micros(10);
        }
        model.flush(&mut |b| deliver(b, &mut asm, now));
        drain_events(
            &mut asm,
            &mut codec,
            &keys,
            &data,
            &mut decided,
            &mut outcome,
        );
    }
    // Long after the last symbol: every block still open must be reported.
    now = now + Duration::from_secs(3600);
    asm.handle_timeout(now);
    drain_events(
        &mut asm,
        &mut codec,
        &keys,
        &data,
        &mut decided,
        &mut outcome,
    );

    let counts = model.counts();
    outcome.frames_lost = counts.dropped();
    for k in &keys {
        let decodable = arrived
            .get(k)
            .is_some_and(|ids| ids.len() >= usize::from(point.k));
        outcome.predicted_decodable += usize::from(decodable);
        match decided.get(k) {
            None => outcome.unaccounted += 1,
            Some(&ok) if ok != decodable => outcome.mispredicted += 1,
            Some(_) => {}
        }
    }
    outcome
}

fn drain_events(
    asm: &mut Assembler,
    codec: &mut ReedSolomon,
    keys: &[BlockKey],
    data: &[Vec<u8>],
    decided: &mut BTreeMap<BlockKey, bool>,
    outcome: &mut Outcome,
) {
    while let Some(event) = asm.poll_event() {
        match event {
            Event::BlockReady(key) => {
                let Some(ready) = asm.take_ready(&key) else {
                    continue;
                };
                let index = keys
                    .iter()
                    .position(|k| *k == key)
                    .expect("a block we sent");
                match ready.decode(codec) {
                    Ok(bytes) if bytes == data[index] => outcome.intact += 1,
                    _ => outcome.corrupt += 1,
                }
                decided.insert(key, true);
            }
            Event::BlockStalled(partial) => {
                // A block decided once stays decided: a stall can never undo a decode.
                let first = !decided.contains_key(&partial.key);
                decided.entry(partial.key).or_insert(false);
                outcome.failed += usize::from(first);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_probability_matches_hand_values() {
        // n=2, r=0: fails unless both arrive: 1 - 0.9^2.
        assert!((block_failure_probability(2, 0, 0.1) - 0.19).abs() < 1e-12);
        // n=3, r=1: fails if 2 or 3 lost: 3·0.01·0.9 + 0.001.
        assert!((block_failure_probability(3, 1, 0.1) - 0.028).abs() < 1e-12);
        assert_eq!(block_failure_probability(100, 10, 0.0), 0.0);
    }
}
