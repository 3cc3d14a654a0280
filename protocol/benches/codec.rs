//! Erasure-codec comparison that chose Sluice's FEC: `reed-solomon-simd` (through our
//! [`ReedSolomon`]) against RaptorQ (`raptorq` 2.0) on a 1 MiB block with 10 % repair.
//!
//! For each symbol size (1408 bytes for a 1500-byte MTU, 8896 for a 9000-byte MTU) it measures
//! encoding all repair symbols, encoding the larger repair reserve of a block planned for two
//! passes (`RepairPlan`: the price of fresh repair symbols on a later pass), decoding with 10 %
//! of the source symbols lost (exactly `k` symbols left, the least either code may need), and
//! decoding with nothing lost. Throughput is in bytes of block data. Results and the decision:
//! `protocol/BENCHMARKS.md`.

// Test and bench code may unwrap: a panic here is a failed run, not a crash on link input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use rand::{seq::index::sample, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use raptorq::{
    EncodingPacket, ObjectTransmissionInformation, PayloadId, SourceBlockDecoder,
    SourceBlockEncoder,
};
use sluice_protocol::fec::{ErasureCodec, Geometry, ReedSolomon, RepairPlan};

/// One block of data as the sender hands it to the codec.
const BLOCK_LEN: u32 = 1 << 20;
/// Repair symbols per thousand source symbols.
const REPAIR_PERMILLE: u32 = 100;
/// Symbol sizes for a 1500- and a 9000-byte MTU.
const SYMBOL_SIZES: [u16; 2] = [1408, 8896];

/// A block, its repair symbols, and which symbols survive a 10 % source loss.
struct Case {
    geometry: Geometry,
    padded: Vec<u8>,
    repair: Vec<u8>,
    /// Ids received after the loss: `k` of them.
    received: Vec<u16>,
}

impl Case {
    fn new(symbol_size: u16) -> Self {
        let k = BLOCK_LEN.div_ceil(u32::from(symbol_size)) as u16;
        let plan = RepairPlan::new(k, REPAIR_PERMILLE, 1);
        let r = plan.reserved_repair();
        let geometry = Geometry::new(BLOCK_LEN, symbol_size, r).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(u64::from(symbol_size));
        let mut padded = vec![0u8; geometry.padded_len() as usize];
        rng.fill_bytes(&mut padded[..BLOCK_LEN as usize]);
        let mut repair = vec![0u8; usize::from(r) * usize::from(symbol_size)];
        ReedSolomon::new()
            .encode(&geometry, &padded, 0..r, &mut repair)
            .unwrap();
        // Lose 10 % of the sources (rounded up, = r), keep every repair symbol.
        let lost = usize::from(k).div_ceil(10);
        assert_eq!(lost, usize::from(r), "exactly k symbols must survive");
        let gone: Vec<usize> = sample(&mut rng, usize::from(k), lost).into_vec();
        let received = (0..k)
            .filter(|id| !gone.contains(&usize::from(*id)))
            .chain(k..k + r)
            .collect();
        Case {
            geometry,
            padded,
            repair,
            received,
        }
    }

    fn k(&self) -> u16 {
        self.geometry.source_symbols
    }

    fn size(&self) -> usize {
        usize::from(self.geometry.symbol_size)
    }

    fn symbol(&self, id: u16) -> &[u8] {
        let size = self.size();
        if id < self.k() {
            &self.padded[usize::from(id) * size..][..size]
        } else {
            &self.repair[usize::from(id - self.k()) * size..][..size]
        }
    }

    /// RaptorQ parameters for the same block: one source block, no sub-blocks.
    fn raptorq_config(&self) -> ObjectTransmissionInformation {
        ObjectTransmissionInformation::new(
            self.geometry.padded_len(),
            self.geometry.symbol_size,
            1,
            1,
            8,
        )
    }

    /// The received set as RaptorQ packets: the same source ids, and RaptorQ's own repair
    /// symbols in place of ours (same count).
    fn raptorq_packets(&self, encoder: &SourceBlockEncoder) -> Vec<EncodingPacket> {
        let r = u32::from(self.geometry.repair_symbols);
        let mut packets: Vec<EncodingPacket> = self
            .received
            .iter()
            .filter(|id| **id < self.k())
            .map(|&id| {
                EncodingPacket::new(PayloadId::new(0, u32::from(id)), self.symbol(id).to_vec())
            })
            .collect();
        packets.extend(encoder.repair_packets(0, r));
        packets
    }

    fn source_packets(&self) -> Vec<EncodingPacket> {
        (0..self.k())
            .map(|id| {
                EncodingPacket::new(PayloadId::new(0, u32::from(id)), self.symbol(id).to_vec())
            })
            .collect()
    }
}

fn decode_rs(codec: &mut ReedSolomon, case: &Case, ids: &[u16], out: &mut [u8]) {
    let mut symbols = ids.iter().map(|&id| (id, case.symbol(id)));
    codec.decode(&case.geometry, &mut symbols, out).unwrap();
}

fn decode_raptorq(case: &Case, packets: Vec<EncodingPacket>) -> Vec<u8> {
    let config = case.raptorq_config();
    let mut decoder = SourceBlockDecoder::new(0, &config, case.geometry.padded_len());
    decoder
        .decode(packets)
        .expect("raptorq decodes from these k symbols")
}

fn encode(c: &mut Criterion, cases: &[Case]) {
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Bytes(u64::from(BLOCK_LEN)));
    for case in cases {
        let size = case.geometry.symbol_size;
        let r = case.geometry.repair_symbols;
        let mut codec = ReedSolomon::new();
        let mut out = vec![0u8; case.repair.len()];
        group.bench_function(BenchmarkId::new("reed-solomon-simd", size), |b| {
            b.iter(|| {
                codec
                    .encode(&case.geometry, black_box(&case.padded), 0..r, &mut out)
                    .unwrap();
            })
        });
        assert_eq!(out, case.repair);
        let config = case.raptorq_config();
        group.bench_function(BenchmarkId::new("raptorq", size), |b| {
            b.iter(|| {
                let encoder = SourceBlockEncoder::new(0, &config, black_box(&case.padded));
                encoder.repair_packets(0, u32::from(r))
            })
        });
    }
    group.finish();
}

/// The cost of the reserved-repair design: a block planned for two passes reserves
/// `R = r + (k + r)` repair symbols, and the sender encodes all of them once.
fn encode_two_pass_reserve(c: &mut Criterion, cases: &[Case]) {
    let mut group = c.benchmark_group("encode_two_pass_reserve");
    group.throughput(Throughput::Bytes(u64::from(BLOCK_LEN)));
    for case in cases {
        let size = case.geometry.symbol_size;
        let plan = RepairPlan::new(case.k(), REPAIR_PERMILLE, 2);
        let r = plan.reserved_repair();
        let geometry = Geometry::new(BLOCK_LEN, size, r).unwrap();
        let mut codec = ReedSolomon::new();
        let mut out = vec![0u8; usize::from(r) * usize::from(size)];
        group.bench_function(BenchmarkId::new("reed-solomon-simd", size), |b| {
            b.iter(|| {
                codec
                    .encode(&geometry, black_box(&case.padded), 0..r, &mut out)
                    .unwrap();
            })
        });
        let config = case.raptorq_config();
        group.bench_function(BenchmarkId::new("raptorq", size), |b| {
            b.iter(|| {
                let encoder = SourceBlockEncoder::new(0, &config, black_box(&case.padded));
                encoder.repair_packets(0, u32::from(r))
            })
        });
    }
    group.finish();
}

fn decode_lossy(c: &mut Criterion, cases: &[Case]) {
    let mut group = c.benchmark_group("decode_10pct_loss");
    group.throughput(Throughput::Bytes(u64::from(BLOCK_LEN)));
    for case in cases {
        let size = case.geometry.symbol_size;
        let mut codec = ReedSolomon::new();
        let mut out = vec![0u8; case.padded.len()];
        group.bench_function(BenchmarkId::new("reed-solomon-simd", size), |b| {
            b.iter(|| decode_rs(&mut codec, case, black_box(&case.received), &mut out))
        });
        assert!(out == case.padded, "reed-solomon-simd decoded wrong bytes");
        let encoder = SourceBlockEncoder::new(0, &case.raptorq_config(), &case.padded);
        let packets = case.raptorq_packets(&encoder);
        assert!(decode_raptorq(case, packets.clone()) == case.padded);
        group.bench_function(BenchmarkId::new("raptorq", size), |b| {
            // Cloning the owned packets RaptorQ consumes is setup, not decoding.
            b.iter_batched(
                || packets.clone(),
                |p| decode_raptorq(case, p),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn decode_lossless(c: &mut Criterion, cases: &[Case]) {
    let mut group = c.benchmark_group("decode_no_loss");
    group.throughput(Throughput::Bytes(u64::from(BLOCK_LEN)));
    for case in cases {
        let size = case.geometry.symbol_size;
        let sources: Vec<u16> = (0..case.k()).collect();
        let mut codec = ReedSolomon::new();
        let mut out = vec![0u8; case.padded.len()];
        group.bench_function(BenchmarkId::new("reed-solomon-simd", size), |b| {
            b.iter(|| decode_rs(&mut codec, case, black_box(&sources), &mut out))
        });
        assert!(out == case.padded, "reed-solomon-simd decoded wrong bytes");
        let packets = case.source_packets();
        group.bench_function(BenchmarkId::new("raptorq", size), |b| {
            b.iter_batched(
                || packets.clone(),
                |p| decode_raptorq(case, p),
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn codecs(c: &mut Criterion) {
    let cases: Vec<Case> = SYMBOL_SIZES.into_iter().map(Case::new).collect();
    encode(c, &cases);
    encode_two_pass_reserve(c, &cases);
    decode_lossy(c, &cases);
    decode_lossless(c, &cases);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = codecs
}
criterion_main!(benches);
