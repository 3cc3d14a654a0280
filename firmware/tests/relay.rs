//! The relay core on the host: valid frames in any chunking, mixed with garbage, damage and
//! truncation, come out exactly once each and in order; nothing else ever comes out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use sluice_firmware::relay::{buffer_for, Relay, RelayConfig};
use sluice_protocol::fec::Geometry;
use sluice_protocol::framing::{encode_frame, encoded_len, CobsAccumulator, Feed};
use sluice_protocol::time::Instant;
use sluice_protocol::wire::{
    parse_frame, write_frame, BlockKey, BlockKind, Header, Heartbeat, LinkKey, ObjectId, SessionId,
    SymbolHeader,
};

const N: usize = buffer_for(2048);

fn key() -> LinkKey {
    LinkKey::new(&[0x42; 32])
}

/// A valid symbol frame with a payload derived from `seed`.
fn symbol_frame(key: &LinkKey, seed: u8, symbol_size: u16) -> Vec<u8> {
    let header = Header::Symbol(SymbolHeader {
        block: BlockKey {
            session: SessionId(7),
            object: ObjectId(u64::from(seed)),
            kind: BlockKind::Data,
            index: 1,
        },
        geometry: Geometry::new(u32::from(symbol_size) * 4, symbol_size, 2).unwrap(),
        symbol: u16::from(seed % 6),
        segment_size: sluice_protocol::wire::MIN_SEGMENT_SIZE,
    });
    let payload: Vec<u8> = (0..symbol_size).map(|i| (i as u8) ^ seed).collect();
    let mut out = vec![0u8; 4096];
    let n = write_frame(&header, &payload, key, &mut out).unwrap();
    out.truncate(n);
    out
}

fn line(frame: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; encoded_len(frame.len())];
    let n = encode_frame(frame, &mut out).unwrap();
    out.truncate(n);
    out
}

/// Runs `input` through a relay in the given chunk sizes; returns the frames it emitted.
fn relay_frames(relay: &mut Relay<N>, input: &[u8], chunks: &[usize]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = input;
    let mut i = 0;
    while !rest.is_empty() {
        let n = chunks
            .get(i % chunks.len().max(1))
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        i += 1;
        relay.feed(Instant::ZERO, &rest[..n], &mut |b| out.extend_from_slice(b));
        rest = &rest[n..];
    }
    deframe(&out)
}

fn deframe(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut acc = CobsAccumulator::<{ buffer_for(9216) }>::new();
    let mut frames = Vec::new();
    let mut rest = bytes;
    loop {
        match acc.feed(rest) {
            Feed::Consumed => break,
            Feed::Frame { frame, rest: r } => {
                frames.push(frame.to_vec());
                rest = r;
            }
            Feed::Dropped { error, .. } => panic!("relay emitted a broken frame: {error:?}"),
        }
    }
    frames
}

#[test]
fn valid_frames_pass_and_garbage_is_counted() {
    let key = key();
    let a = symbol_frame(&key, 1, 256);
    let b = symbol_frame(&key, 2, 512);
    let mut corrupt = symbol_frame(&key, 3, 256);
    corrupt[40] ^= 0x10;
    let mut input = b"\x00noise without delimiter".to_vec();
    input.push(0);
    input.extend(line(&a));
    input.extend(line(&corrupt));
    input.extend([0x05, 0x01, 0x00]); // broken COBS
    input.extend(line(&b));
    let mut relay = Relay::<N>::new(RelayConfig::default(), Some(key.clone()), Instant::ZERO);
    let out = relay_frames(&mut relay, &input, &[7, 300, 1]);
    assert_eq!(out, vec![a, b]);
    let c = relay.counters();
    assert_eq!(c.forwarded, 2);
    assert_eq!(c.dropped_invalid, 1, "the CRC-damaged frame: {c:?}");
    assert_eq!(c.dropped_framing, 2, "the noise and the broken COBS: {c:?}");
}

#[test]
fn only_a_provisioned_relay_can_catch_a_forged_mac() {
    let wrong = LinkKey::new(&[1; 32]);
    let forged = symbol_frame(&wrong, 9, 256);
    let input = line(&forged);
    let mut open = Relay::<N>::new(RelayConfig::default(), None, Instant::ZERO);
    assert_eq!(relay_frames(&mut open, &input, &[64]).len(), 1);
    let mut keyed = Relay::<N>::new(RelayConfig::default(), Some(key()), Instant::ZERO);
    assert!(relay_frames(&mut keyed, &input, &[64]).is_empty());
    assert_eq!(keyed.counters().dropped_mac, 1);
}

#[test]
fn frames_over_the_size_ceiling_are_dropped() {
    let key = key();
    let big = symbol_frame(&key, 4, 1024);
    let config = RelayConfig {
        max_frame_len: 512,
        ..RelayConfig::default()
    };
    let mut relay = Relay::<N>::new(config, Some(key), Instant::ZERO);
    assert!(relay_frames(&mut relay, &line(&big), &[4096]).is_empty());
    assert_eq!(relay.counters().dropped_invalid, 1);
}

#[test]
fn the_rate_ceiling_holds_and_refills() {
    let key = key();
    let frame = line(&symbol_frame(&key, 5, 64));
    let config = RelayConfig {
        max_frames_per_sec: 10,
        burst_frames: 2,
        ..RelayConfig::default()
    };
    let mut relay = Relay::<N>::new(config, Some(key), Instant::ZERO);
    let mut out = 0;
    for _ in 0..5 {
        relay.feed(Instant::ZERO, &frame, &mut |_| out += 1);
    }
    assert_eq!(
        (relay.counters().forwarded, relay.counters().dropped_rate),
        (2, 3)
    );
    // 100 ms later one more token is there (10 frames per second).
    relay.feed(Instant::from_micros(100_000), &frame, &mut |_| out += 1);
    relay.feed(Instant::from_micros(100_000), &frame, &mut |_| out += 1);
    assert_eq!(
        (relay.counters().forwarded, relay.counters().dropped_rate),
        (3, 4)
    );
}

#[test]
fn status_frames_carry_the_counters() {
    let key = key();
    let mut relay = Relay::<N>::new(RelayConfig::default(), Some(key.clone()), Instant::ZERO);
    relay.feed(
        Instant::ZERO,
        &line(&symbol_frame(&key, 6, 64)),
        &mut |_| {},
    );
    relay.feed(Instant::ZERO, b"junk\x00", &mut |_| {});
    let mut out = Vec::new();
    relay.poll_status(Instant::ZERO, &mut |b| out.extend_from_slice(b));
    relay.poll_status(Instant::from_micros(10), &mut |b| out.extend_from_slice(b));
    let frames = deframe(&out);
    assert_eq!(frames.len(), 1, "one status per interval");
    let parsed = parse_frame(&frames[0], &key).unwrap();
    let Header::RelayStatus(status) = parsed.header else {
        panic!("not a status frame: {:?}", parsed.header);
    };
    assert_eq!(
        (status.seq, status.forwarded, status.dropped_framing),
        (0, 1, 1)
    );
    // Without the key no status goes out: the receiver would drop it as unauthenticated.
    let mut open = Relay::<N>::new(RelayConfig::default(), None, Instant::ZERO);
    open.poll_status(Instant::ZERO, &mut |_| panic!("unprovisioned status frame"));
}

#[test]
fn heartbeats_pass_unchanged() {
    let key = key();
    let header = Header::Heartbeat(Heartbeat {
        session: SessionId(3),
        seq: 9,
        frames_sent: 100,
        rate: 0,
        objects: 0,
    });
    let mut frame = vec![0u8; 128];
    let n = write_frame(&header, &[], &key, &mut frame).unwrap();
    frame.truncate(n);
    let mut relay = Relay::<N>::new(RelayConfig::default(), Some(key), Instant::ZERO);
    assert_eq!(relay_frames(&mut relay, &line(&frame), &[3]), vec![frame]);
}

proptest! {
    /// Valid frames mixed with garbage, damaged and truncated frames, fed in arbitrary chunks:
    /// the output is exactly the valid frames, in order.
    #[test]
    fn output_is_exactly_the_valid_input_frames(
        items in prop::collection::vec((0u8..5, any::<u8>(), prop::collection::vec(any::<u8>(), 0..40)), 1..24),
        chunks in prop::collection::vec(1usize..700, 1..8),
    ) {
        let key = key();
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for (what, seed, noise) in &items {
            let frame = symbol_frame(&key, *seed, 64 * (1 + u16::from(*seed % 4)));
            match what {
                0 | 1 => {
                    input.extend(line(&frame));
                    expected.push(frame);
                }
                2 => {
                    // Garbage, then a delimiter so the next frame starts clean.
                    input.extend(noise.iter().map(|b| b | 1));
                    input.push(0);
                }
                3 => {
                    let mut damaged = frame.clone();
                    let at = usize::from(*seed) % damaged.len();
                    damaged[at] ^= 0x01;
                    input.extend(line(&damaged));
                }
                _ => {
                    let mut cut = line(&frame);
                    cut.truncate(cut.len() / 2);
                    input.extend(cut);
                    input.push(0);
                }
            }
        }
        let mut relay = Relay::<N>::new(RelayConfig::default(), Some(key), Instant::ZERO);
        let out = relay_frames(&mut relay, &input, &chunks);
        prop_assert_eq!(out, expected);
    }
}
