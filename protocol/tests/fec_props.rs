//! Property tests of the FEC layer: the Reed–Solomon codec is bit-exact whenever `k` distinct
//! symbols survive and refuses (never returns wrong data) when fewer do, and the two-pass
//! [`RepairPlan`] sends only fresh symbols on its second pass while the repair cap allows,
//! and they merge with the first.

// Test and bench code may unwrap: a panic here is a failed run, not a crash on link input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_protocol::fec::{
    CodecError, ErasureCodec, Geometry, ReedSolomon, RepairPlan, SYMBOL_ALIGN,
};

/// A block's geometry, its padded source bytes and all `R` repair symbols.
struct Block {
    geometry: Geometry,
    padded: Vec<u8>,
    repair: Vec<u8>,
}

impl Block {
    /// Random data of `k` symbols (`size_units * 64` bytes each, the last one partly padding)
    /// with `r` repair symbols encoded by `codec`.
    fn new(codec: &mut ReedSolomon, k: u16, r: u16, size_units: u16, seed: u64) -> Self {
        let size = size_units * SYMBOL_ALIGN;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let full = u32::from(k) * u32::from(size);
        let block_len = rng.gen_range(full - u32::from(size) + 1..=full);
        let geometry = Geometry::new(block_len, size, r).unwrap();
        let mut padded = vec![0u8; full as usize];
        rng.fill(&mut padded[..block_len as usize]);
        let mut repair = vec![0u8; usize::from(r) * usize::from(size)];
        codec.encode(&geometry, &padded, 0..r, &mut repair).unwrap();
        Block {
            geometry,
            padded,
            repair,
        }
    }

    fn symbol(&self, id: u16) -> &[u8] {
        let size = usize::from(self.geometry.symbol_size);
        let k = self.geometry.source_symbols;
        if id < k {
            &self.padded[usize::from(id) * size..][..size]
        } else {
            &self.repair[usize::from(id - k) * size..][..size]
        }
    }

    /// Decodes from the symbols `ids`, in that order.
    fn decode(&self, codec: &mut ReedSolomon, ids: &[u16]) -> Result<Vec<u8>, CodecError> {
        let mut out = vec![0xA5u8; self.padded.len()];
        let mut symbols = ids.iter().map(|&id| (id, self.symbol(id)));
        codec.decode(&self.geometry, &mut symbols, &mut out)?;
        Ok(out)
    }

    /// What a decode from `ids` must give: the block when they hold `k` distinct ids.
    fn check(&self, codec: &mut ReedSolomon, ids: &[u16]) -> Result<(), TestCaseError> {
        let mut distinct = ids.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let result = self.decode(codec, ids);
        if distinct.len() >= usize::from(self.geometry.source_symbols) {
            let out = result.map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            prop_assert!(out == self.padded, "decoded bytes differ");
        } else {
            prop_assert_eq!(result, Err(CodecError::NotEnoughSymbols));
        }
        Ok(())
    }
}

/// `k`, `R`, symbol size in units of 64 bytes, and a data seed.
fn shape() -> impl Strategy<Value = (u16, u16, u16, u64)> {
    (1u16..=96, 0u16..=48, 1u16..=8, any::<u64>())
}

/// A shape plus one keep/lose flag per symbol id and a shuffle seed.
fn lossy_block() -> impl Strategy<Value = ((u16, u16, u16, u64), Vec<bool>, u64)> {
    shape().prop_flat_map(|shape| {
        let total = usize::from(shape.0) + usize::from(shape.1);
        // Loss rates from none to nearly all, so both outcomes are exercised.
        let keep = (0.05f64..=1.0)
            .prop_flat_map(move |p| proptest::collection::vec(proptest::bool::weighted(p), total));
        (Just(shape), keep, any::<u64>())
    })
}

/// Shuffles `ids` so symbols arrive in a random order, as they do off a real link.
fn shuffled(mut ids: Vec<u16>, seed: u64) -> Vec<u16> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.gen_range(0..=i));
    }
    ids
}

fn kept(ids: impl Iterator<Item = u16>, keep: &[bool]) -> Vec<u16> {
    ids.zip(keep)
        .filter(|(_, k)| **k)
        .map(|(id, _)| id)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn decode_is_exact_or_refuses(((k, r, units, seed), keep, order) in lossy_block()) {
        let mut codec = ReedSolomon::new();
        let block = Block::new(&mut codec, k, r, units, seed);
        let ids = shuffled(kept(0..k + r, &keep), order);
        block.check(&mut codec, &ids)?;
    }

    #[test]
    fn one_codec_serves_many_blocks(blocks in proptest::collection::vec(lossy_block(), 1..4)) {
        // Scratch carried over from a different geometry (or a failed decode) must not leak.
        let mut codec = ReedSolomon::new();
        for ((k, r, units, seed), keep, order) in blocks {
            let block = Block::new(&mut codec, k, r, units, seed);
            let ids = shuffled(kept(0..k + r, &keep), order);
            block.check(&mut codec, &ids)?;
        }
    }

    #[test]
    fn second_pass_is_fresh_and_merges(
        (k, _, units, seed) in shape(),
        permille in 0u32..=500,
        (keep1, keep2) in (
            proptest::collection::vec(proptest::bool::weighted(0.6), 160),
            proptest::collection::vec(proptest::bool::weighted(0.6), 160),
        ),
        order in any::<u64>(),
    ) {
        let plan = RepairPlan::new(k, permille, 2);
        let pass1: Vec<u16> = plan.symbols(0).collect();
        let pass2: Vec<u16> = plan.symbols(1).collect();
        let r = plan.repair_per_pass();
        let reserved = plan.reserved_repair();
        prop_assert_eq!(pass1.len(), usize::from(k + r));
        prop_assert_eq!(pass2.len(), usize::from(k + r));
        prop_assert!(pass2.iter().all(|id| *id < k + reserved));
        // Fresh symbols only, as long as the repair cap leaves room for them; once it binds,
        // pass 2 repeats only as many pass-1 ids as the ring of k + R ids forces.
        let fresh_room = u32::from(Geometry::repair_cap(k)) >= u32::from(k) + 2 * u32::from(r);
        let repeated = pass2.iter().filter(|id| pass1.contains(id)).count();
        if fresh_room {
            prop_assert!(pass2.iter().all(|id| *id >= k), "pass 2 sends repair ids only");
            prop_assert_eq!(repeated, 0, "pass 2 repeats a pass 1 id");
        } else {
            let forced = 2 * usize::from(k + r) - usize::from(k + reserved).min(2 * usize::from(k + r));
            prop_assert_eq!(repeated, forced);
        }
        let mut distinct = pass2.clone();
        distinct.sort_unstable();
        distinct.dedup();
        prop_assert_eq!(distinct.len(), pass2.len(), "pass 2 repeats itself");

        let mut codec = ReedSolomon::new();
        let block = Block::new(&mut codec, k, reserved, units, seed);
        let mut ids = kept(pass1.iter().copied(), &keep1);
        ids.extend(kept(pass2.iter().copied(), &keep2));
        block.check(&mut codec, &shuffled(ids, order))?;
        // Pass 2 alone, complete, always rebuilds the block.
        block.check(&mut codec, &pass2)?;
        prop_assert!(block.decode(&mut codec, &pass2).is_ok());
    }
}
