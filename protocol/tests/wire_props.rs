//! Property tests of the wire format and serial framing.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use sluice_protocol::fec::Geometry;
use sluice_protocol::framing::{encode_frame, encoded_len, CobsAccumulator, Feed};
use sluice_protocol::wire::{
    parse_frame, write_frame, BlockKey, BlockKind, Header, Heartbeat, LinkKey, ObjectId, SessionId,
    SymbolHeader, MAX_BLOCK_INDEX, MAX_FRAME_LEN, MAX_OBJECT_ID, MAX_SEGMENT_SIZE,
    MIN_SEGMENT_SIZE,
};

fn key() -> LinkKey {
    LinkKey::new(&[0x33; 32])
}

prop_compose! {
    fn symbol_header()(
        session in any::<u64>(),
        object in 0..=MAX_OBJECT_ID,
        manifest in any::<bool>(),
        index in 0..=MAX_BLOCK_INDEX,
        units in 1u16..=139,
        k in 1u32..=64,
        tail in 0u32..8896,
        repair in 0u16..=64,
        symbol_seed in any::<u32>(),
        segment_seed in any::<u32>(),
    ) -> Header {
        let size = units * 64;
        let block_len = (k - 1) * u32::from(size) + tail % u32::from(size) + 1;
        let geometry = Geometry::new(block_len, size, repair).unwrap();
        let symbol = (symbol_seed % geometry.total_symbols()) as u16;
        Header::Symbol(SymbolHeader {
            block: BlockKey {
                session: SessionId(session),
                object: ObjectId(object),
                kind: if manifest { BlockKind::Manifest } else { BlockKind::Data },
                index: if manifest { 0 } else { index },
            },
            geometry,
            symbol,
            segment_size: if manifest {
                0
            } else {
                MIN_SEGMENT_SIZE + segment_seed % (MAX_SEGMENT_SIZE - MIN_SEGMENT_SIZE + 1)
            },
        })
    }
}

fn header() -> impl Strategy<Value = Header> {
    prop_oneof![
        symbol_header(),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(s, q, f, r, o)| {
                Header::Heartbeat(Heartbeat {
                    session: SessionId(s),
                    seq: q,
                    frames_sent: f,
                    rate: r,
                    objects: o,
                })
            }),
    ]
}

fn encode(header: &Header, fill: u8) -> Vec<u8> {
    let payload = vec![fill; header.payload_len()];
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let n = write_frame(header, &payload, &key(), &mut buf).unwrap();
    buf.truncate(n);
    buf
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn write_then_parse_round_trips(header in header(), fill in any::<u8>()) {
        let bytes = encode(&header, fill);
        let frame = parse_frame(&bytes, &key()).unwrap();
        prop_assert_eq!(frame.header, header);
        prop_assert!(frame.payload.iter().all(|b| *b == fill));
        prop_assert_eq!(frame.payload.len(), header.payload_len());
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        // Random bytes essentially never authenticate; what matters is no panic.
        let _ = parse_frame(&bytes, &key());
    }

    #[test]
    fn any_single_bit_flip_is_detected(header in header(), bit in any::<usize>()) {
        let mut bytes = encode(&header, 0x5a);
        let bit = bit % (bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(parse_frame(&bytes, &key()).is_err());
    }

    #[test]
    fn cobs_round_trips_under_any_chunking(
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..600), 1..8),
        chunk in 1usize..700,
    ) {
        let mut line = Vec::new();
        for f in &frames {
            let mut buf = vec![0u8; encoded_len(f.len())];
            let n = encode_frame(f, &mut buf).unwrap();
            line.extend_from_slice(&buf[..n]);
        }
        let mut acc = CobsAccumulator::<1024>::new();
        let mut out = Vec::new();
        for piece in line.chunks(chunk) {
            let mut input = piece;
            loop {
                match acc.feed(input) {
                    Feed::Consumed => break,
                    Feed::Frame { frame, rest } => { out.push(frame.to_vec()); input = rest; }
                    Feed::Dropped { rest, .. } => input = rest,
                }
                prop_assert!(acc.pending() <= 1024);
            }
        }
        prop_assert_eq!(out, frames);
    }

    #[test]
    fn garbage_between_frames_never_yields_an_unsent_valid_frame(
        headers in proptest::collection::vec(header(), 1..6),
        garbage in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 6),
        chunk in 1usize..512,
    ) {
        let sent: Vec<Vec<u8>> = headers.iter().map(|h| encode(h, 7)).collect();
        let mut line = Vec::new();
        for (f, g) in sent.iter().zip(&garbage) {
            line.extend_from_slice(g);
            let mut buf = vec![0u8; encoded_len(f.len())];
            let n = encode_frame(f, &mut buf).unwrap();
            line.extend_from_slice(&buf[..n]);
        }
        let mut acc = CobsAccumulator::<{ MAX_FRAME_LEN + 64 }>::new();
        let mut valid = Vec::new();
        for piece in line.chunks(chunk) {
            let mut input = piece;
            loop {
                match acc.feed(input) {
                    Feed::Consumed => break,
                    Feed::Frame { frame, rest } => {
                        if parse_frame(frame, &key()).is_ok() {
                            valid.push(frame.to_vec());
                        }
                        input = rest;
                    }
                    Feed::Dropped { rest, .. } => input = rest,
                }
            }
        }
        for v in &valid {
            prop_assert!(sent.contains(v), "a valid frame came out that was never sent");
        }
        // Each sent frame comes out at most once.
        prop_assert!(valid.len() <= sent.len());
    }
}
