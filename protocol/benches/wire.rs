//! Micro-benchmarks of the per-frame hot path: writing and fully parsing a symbol frame (1408-
//! and 8896-byte symbols), the two checks inside it (POLYVAL-AES link MAC, CRC-32C) on their own,
//! and COBS framing of a 1024-byte frame for serial links. Throughput is in frame bytes.
//! Results: `protocol/BENCHMARKS.md`.

// Bench code may unwrap: a panic here is a failed run, not a crash on link input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_protocol::fec::Geometry;
use sluice_protocol::framing::{encode_frame, encoded_len, CobsAccumulator, Feed};
use sluice_protocol::wire::{
    crc32c, parse_frame, write_frame, BlockKey, BlockKind, Header, LinkKey, ObjectId, SessionId,
    SymbolHeader, CRC_LEN, MAX_FRAME_LEN, TRAILER_LEN,
};

const SYMBOL_SIZES: [u16; 2] = [1408, 8896];
/// Frame length for the serial-link framing benchmarks.
const SERIAL_FRAME_LEN: usize = 1024;

/// A typical symbol header: a 1 MiB data block with 10 % repair, a mid-block symbol id.
fn symbol_header(symbol_size: u16) -> Header {
    let geometry = Geometry::new(1 << 20, symbol_size, 75).unwrap();
    Header::Symbol(SymbolHeader {
        block: BlockKey {
            session: SessionId(0x5eed_0f5e_5510_4e11),
            object: ObjectId(12_345),
            kind: BlockKind::Data,
            index: 678,
        },
        geometry,
        symbol: geometry.source_symbols / 2,
        segment_size: 1 << 20,
    })
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut bytes);
    bytes
}

fn frames(c: &mut Criterion) {
    let key = LinkKey::new(&[7u8; 32]);
    let mut group = c.benchmark_group("frame");
    for size in SYMBOL_SIZES {
        let header = symbol_header(size);
        let payload = random_bytes(usize::from(size), u64::from(size));
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        let len = write_frame(&header, &payload, &key, &mut buf).unwrap();
        let frame = buf[..len].to_vec();
        assert_eq!(parse_frame(&frame, &key).unwrap().payload, &payload[..]);
        group.throughput(Throughput::Bytes(len as u64));

        group.bench_function(BenchmarkId::new("write_frame", size), |b| {
            b.iter(|| write_frame(black_box(&header), black_box(&payload), &key, &mut buf))
        });
        group.bench_function(BenchmarkId::new("parse_frame", size), |b| {
            b.iter(|| parse_frame(black_box(&frame), &key).map(|f| f.payload.len()))
        });
        let authenticated = &frame[..len - TRAILER_LEN];
        group.bench_function(BenchmarkId::new("link_mac_tag", size), |b| {
            b.iter(|| key.tag(black_box(authenticated)))
        });
        let checksummed = &frame[..len - CRC_LEN];
        group.bench_function(BenchmarkId::new("crc32c", size), |b| {
            b.iter(|| crc32c(black_box(checksummed)))
        });
    }
    group.finish();
}

fn serial_framing(c: &mut Criterion) {
    let frame = random_bytes(SERIAL_FRAME_LEN, 1);
    let mut line = vec![0u8; encoded_len(SERIAL_FRAME_LEN)];
    let line_len = encode_frame(&frame, &mut line).unwrap();
    line.truncate(line_len);
    // Sized like a serial receiver's: room for the largest frame.
    let mut acc: Box<CobsAccumulator<{ encoded_len(MAX_FRAME_LEN) }>> =
        Box::new(CobsAccumulator::new());
    match acc.feed(&line) {
        Feed::Frame { frame: got, rest } => assert!(got == &frame[..] && rest.is_empty()),
        other => panic!("round trip failed: {other:?}"),
    }

    let mut group = c.benchmark_group("cobs");
    group.throughput(Throughput::Bytes(SERIAL_FRAME_LEN as u64));
    let mut out = vec![0u8; encoded_len(SERIAL_FRAME_LEN)];
    group.bench_function(BenchmarkId::new("encode_frame", SERIAL_FRAME_LEN), |b| {
        b.iter(|| encode_frame(black_box(&frame), &mut out))
    });
    group.bench_function(
        BenchmarkId::new("accumulator_feed", SERIAL_FRAME_LEN),
        |b| {
            b.iter(|| match acc.feed(black_box(&line)) {
                Feed::Frame { frame, .. } => frame.len(),
                _ => 0,
            })
        },
    );
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = frames, serial_framing
}
criterion_main!(benches);
