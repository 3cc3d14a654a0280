//! Golden byte vectors: the frames of SPEC.md section 12, byte for byte.
//!
//! Each vector is built from the fields SPEC.md lists, compared with the hex printed there, and
//! parsed back. A change that alters any of these bytes is a wire-format change and needs a
//! version bump (SPEC.md section 11).

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_protocol::fec::Geometry;
use sluice_protocol::wire::{
    parse_frame, write_frame, AuditHead, BlockKey, BlockKind, Header, Heartbeat, LinkKey, ObjectId,
    RelayStatus, SessionId, SymbolHeader,
};

const SPEC: &str = include_str!("../SPEC.md");
const SESSION: SessionId = SessionId(0x0123_4567_89ab_cdef);

fn key() -> LinkKey {
    LinkKey::new(&core::array::from_fn(|i| i as u8))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn data_block() -> BlockKey {
    BlockKey {
        session: SESSION,
        object: ObjectId(5),
        kind: BlockKind::Data,
        index: 2,
    }
}

/// The five vectors: (name, header, payload, expected hex). The hex was computed from the
/// fields by an independent Python implementation (`protocol/tools/golden-vectors.py`:
/// hand-written varints, RFC 8452 POLYVAL, `cryptography`'s AES-256, bitwise CRC-32C), not
/// by this crate.
fn vectors() -> Vec<(&'static str, Header, Vec<u8>, &'static str)> {
    vec![
        (
            "symbol, data block",
            Header::Symbol(SymbolHeader {
                block: data_block(),
                geometry: Geometry::new(100, 64, 1).unwrap(),
                symbol: 1,
                segment_size: 1 << 20,
            }),
            (0..64u8).collect(),
            "534c0300ef9bafcdf8acd191010500020201406401808040000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f382f8155ffde647353cabaff7c819a821b75f165",
        ),
        (
            "symbol, manifest block",
            Header::Symbol(SymbolHeader {
                block: BlockKey {
                    kind: BlockKind::Manifest,
                    index: 0,
                    ..data_block()
                },
                geometry: Geometry::new(64, 64, 2).unwrap(),
                symbol: 2,
                segment_size: 0,
            }),
            vec![0xa5; 64],
            "534c0300ef9bafcdf8acd19101050100010240400200a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5fab3949684e71929ff67b5c7bbc8514a45b19846",
        ),
        (
            "heartbeat",
            Header::Heartbeat(Heartbeat {
                session: SESSION,
                seq: 300,
                frames_sent: 1_000_000,
                rate: 100_000_000,
                objects: 42,
            }),
            vec![],
            "534c0301ef9bafcdf8acd19101ac02c0843d80c2d72f2a7dda92b55f6e84704e0d31fd2423a896388e747f",
        ),
        (
            "relay status",
            Header::RelayStatus(RelayStatus {
                seq: 7,
                forwarded: 1000,
                forwarded_bytes: 1_234_567,
                dropped_framing: 1,
                dropped_invalid: 2,
                dropped_mac: 3,
                dropped_rate: 4,
            }),
            vec![],
            "534c030207e80787ad4b010203042598d94040a9d158c227b1a017a74abe0bb3c934",
        ),
        (
            "audit head",
            Header::AuditHead(AuditHead {
                session: SESSION,
                seq: 1234,
                hash: core::array::from_fn(|i| 0xa0 + i as u8),
            }),
            vec![],
            "534c0303ef9bafcdf8acd19101d209a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf4ac7aada593dd754908e728bc599c62429fdd3d5",
        ),
    ]
}

#[test]
fn code_produces_the_spec_bytes() {
    for (name, header, payload, expected) in vectors() {
        let mut buf = [0u8; 512];
        let n = write_frame(&header, &payload, &key(), &mut buf).unwrap();
        assert_eq!(hex(&buf[..n]), expected, "{name}");
    }
}

#[test]
fn spec_prints_every_vector() {
    for (name, _, _, expected) in vectors() {
        assert!(SPEC.contains(expected), "SPEC.md lacks the {name} vector");
    }
}

#[test]
fn vectors_parse_back_to_their_fields() {
    for (name, header, payload, expected) in vectors() {
        let bytes: Vec<u8> = (0..expected.len() / 2)
            .map(|i| u8::from_str_radix(&expected[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let frame = parse_frame(&bytes, &key()).unwrap();
        assert_eq!(frame.header, header, "{name}");
        assert_eq!(frame.payload, &payload[..], "{name}");
    }
}
