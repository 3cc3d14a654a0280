//! One test per validation rule of SPEC.md section 4, each isolating its rule: the frames
//! carry a correct CRC and MAC unless the CRC or MAC is what the test breaks.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_protocol::fec::{Geometry, GeometryError};
use sluice_protocol::wire::{
    crc32c, parse_frame, parse_frame_unauthenticated, write_frame, BlockKey, BlockKind, Header,
    Heartbeat, LinkKey, ObjectId, ParseError, SessionId, SymbolHeader, MAGIC, MAX_FRAME_LEN,
    MAX_OBJECT_ID, MAX_SEGMENT_SIZE, MIN_FRAME_LEN, MIN_SEGMENT_SIZE, VERSION,
};

fn key() -> LinkKey {
    LinkKey::new(&[0x11; 32])
}

/// Frame around raw header bytes, with a correct MAC and CRC.
fn frame_from_raw(header: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut f = [&MAGIC[..], &[VERSION]].concat();
    f.extend_from_slice(header);
    f.extend_from_slice(payload);
    let tag = key().tag(&f);
    f.extend_from_slice(&tag);
    let crc = crc32c(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

/// Frame around a header value that may break the limits (serialised without validation).
fn frame_from_header(header: &Header, payload_len: usize) -> Vec<u8> {
    let raw = postcard::to_allocvec(header).unwrap();
    frame_from_raw(&raw, &vec![0x42; payload_len])
}

fn symbol(geometry: Geometry, symbol: u16) -> Header {
    Header::Symbol(SymbolHeader {
        block: BlockKey {
            session: SessionId(1),
            object: ObjectId(2),
            kind: BlockKind::Data,
            index: 3,
        },
        geometry,
        symbol,
        segment_size: MIN_SEGMENT_SIZE,
    })
}

fn valid_geometry() -> Geometry {
    Geometry::new(200, 64, 4).unwrap()
}

fn valid_frame() -> Vec<u8> {
    frame_from_header(&symbol(valid_geometry(), 0), 64)
}

fn geometry_error(geometry: Geometry, symbol_id: u16) -> ParseError {
    let payload = usize::from(geometry.symbol_size);
    parse_frame(
        &frame_from_header(&symbol(geometry, symbol_id), payload),
        &key(),
    )
    .unwrap_err()
}

/// Recomputes MAC and CRC after a test edited the body.
fn reseal(frame: &mut [u8]) {
    let n = frame.len();
    let tag = key().tag(&frame[..n - 20]);
    frame[n - 20..n - 4].copy_from_slice(&tag);
    let crc = crc32c(&frame[..n - 4]);
    frame[n - 4..].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn the_helper_builds_valid_frames() {
    // Guards every test below: they fail for their own reason, not a broken helper.
    assert!(parse_frame(&valid_frame(), &key()).is_ok());
}

#[test]
fn too_short() {
    let f = valid_frame();
    assert_eq!(
        parse_frame(&f[..MIN_FRAME_LEN - 1], &key()),
        Err(ParseError::TooShort)
    );
    assert_eq!(parse_frame(&[], &key()), Err(ParseError::TooShort));
}

#[test]
fn too_long() {
    let mut f = valid_frame();
    f.resize(MAX_FRAME_LEN + 1, 0);
    assert_eq!(parse_frame(&f, &key()), Err(ParseError::TooLong));
}

#[test]
fn bad_magic() {
    let mut f = valid_frame();
    f[1] = b'X';
    reseal(&mut f);
    assert_eq!(parse_frame(&f, &key()), Err(ParseError::BadMagic));
}

#[test]
fn bad_version() {
    // The previous version (v1) and the next one are both refused.
    for version in [VERSION - 1, VERSION + 1] {
        let mut f = valid_frame();
        f[2] = version;
        reseal(&mut f);
        assert_eq!(parse_frame(&f, &key()), Err(ParseError::BadVersion));
    }
}

#[test]
fn bad_crc_in_trailer_and_in_body() {
    let mut f = valid_frame();
    let last = f.len() - 1;
    f[last] ^= 0x01;
    assert_eq!(parse_frame(&f, &key()), Err(ParseError::BadCrc));
    let mut f = valid_frame();
    f[10] ^= 0x80;
    assert_eq!(parse_frame(&f, &key()), Err(ParseError::BadCrc));
    assert_eq!(parse_frame_unauthenticated(&f), Err(ParseError::BadCrc));
}

#[test]
fn bad_mac_wrong_key() {
    assert_eq!(
        parse_frame(&valid_frame(), &LinkKey::new(&[0x12; 32])),
        Err(ParseError::BadMac)
    );
}

#[test]
fn bad_mac_tampered_payload_with_valid_crc() {
    let mut f = valid_frame();
    let n = f.len();
    f[n - 30] ^= 0x01; // a payload byte
    let crc = crc32c(&f[..n - 4]);
    f[n - 4..].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(parse_frame(&f, &key()), Err(ParseError::BadMac));
    // A relay without the key cannot tell: that is why the receiver checks the MAC itself.
    assert!(parse_frame_unauthenticated(&f).is_ok());
}

#[test]
fn bad_header_unknown_kind() {
    let f = frame_from_raw(&[3, 0, 0, 0], &[]);
    assert_eq!(parse_frame(&f, &key()), Err(ParseError::BadHeader));
}

#[test]
fn bad_header_truncated_varint() {
    // Heartbeat whose session varint never ends before the trailer.
    let f = frame_from_raw(&[1, 0xff, 0xff, 0xff], &[]);
    assert_eq!(parse_frame(&f, &key()), Err(ParseError::BadHeader));
}

#[test]
fn bad_header_over_long_varint() {
    // A heartbeat whose seq 5 is written as the two-byte varint 0x85 0x00: postcard decodes it,
    // but a frame has exactly one byte form, so it is refused.
    let hb = Header::Heartbeat(Heartbeat {
        session: SessionId(1),
        seq: 5,
        frames_sent: 0,
        rate: 0,
        objects: 0,
    });
    let canonical = postcard::to_allocvec(&hb).unwrap();
    assert_eq!(canonical, [1, 1, 5, 0, 0, 0]);
    assert!(parse_frame(&frame_from_raw(&canonical, &[]), &key()).is_ok());
    let f = frame_from_raw(&[1, 1, 0x85, 0x00, 0, 0, 0], &[]);
    assert_eq!(parse_frame(&f, &key()), Err(ParseError::BadHeader));
}

#[test]
fn bad_length_short_and_long_payload() {
    let header = symbol(valid_geometry(), 0);
    for len in [63, 65] {
        let f = frame_from_header(&header, len);
        assert_eq!(
            parse_frame(&f, &key()),
            Err(ParseError::BadLength),
            "payload {len}"
        );
    }
    let beat = Header::Heartbeat(Heartbeat {
        session: SessionId(1),
        seq: 0,
        frames_sent: 0,
        rate: 0,
        objects: 0,
    });
    assert_eq!(
        parse_frame(&frame_from_header(&beat, 1), &key()),
        Err(ParseError::BadLength)
    );
}

#[test]
fn geometry_no_source_symbols() {
    let g = Geometry {
        source_symbols: 0,
        ..valid_geometry()
    };
    assert_eq!(
        geometry_error(g, 0),
        ParseError::BadGeometry(GeometryError::SourceSymbols)
    );
}

#[test]
fn geometry_too_many_source_symbols() {
    let g = Geometry {
        source_symbols: 32769,
        repair_symbols: 0,
        symbol_size: 64,
        block_len: 32769 * 64,
    };
    assert_eq!(
        geometry_error(g, 0),
        ParseError::BadGeometry(GeometryError::SourceSymbols)
    );
}

#[test]
fn geometry_too_many_repair_symbols() {
    let g = Geometry {
        repair_symbols: 32769,
        ..valid_geometry()
    };
    assert_eq!(
        geometry_error(g, 0),
        ParseError::BadGeometry(GeometryError::RepairSymbols)
    );
}

#[test]
fn geometry_more_repair_than_max_of_k_and_64() {
    // One source symbol with 32768 repair symbols would make the decoder allocate
    // next_pow2(32768 + 1) × 8896 bytes ≈ 583 MB: refused (the repair-bomb bound).
    let bomb = Geometry {
        source_symbols: 1,
        repair_symbols: 32768,
        symbol_size: 8896,
        block_len: 64,
    };
    assert_eq!(
        geometry_error(bomb, 0),
        ParseError::BadGeometry(GeometryError::RepairSymbols)
    );
    let at_cap = Geometry {
        repair_symbols: Geometry::repair_cap(bomb.source_symbols),
        ..bomb
    };
    assert_eq!(at_cap.repair_symbols, 64);
    assert!(at_cap.validate().is_ok());
    assert!(at_cap.decode_work_bytes() <= 128 * 8896);
}

#[test]
fn geometry_symbol_size_zero_unaligned_or_too_big() {
    for size in [0u16, 100, 8960] {
        let g = Geometry {
            symbol_size: size,
            ..valid_geometry()
        };
        assert_eq!(
            geometry_error(g, 0),
            ParseError::BadGeometry(GeometryError::SymbolSize),
            "size {size}"
        );
    }
}

#[test]
fn geometry_block_len_inconsistent_with_k() {
    for len in [0u32, 128, 257] {
        let g = Geometry {
            block_len: len,
            ..valid_geometry()
        };
        assert_eq!(
            geometry_error(g, 0),
            ParseError::BadGeometry(GeometryError::BlockLen),
            "block_len {len}"
        );
    }
}

#[test]
fn geometry_block_too_large() {
    let g = Geometry {
        source_symbols: 2048,
        repair_symbols: 0,
        symbol_size: 8896,
        block_len: 2048 * 8896,
    };
    assert_eq!(
        geometry_error(g, 0),
        ParseError::BadGeometry(GeometryError::BlockTooLarge)
    );
}

#[test]
fn geometry_symbol_id_out_of_range() {
    let g = valid_geometry(); // k = 4, R = 4
    assert!(parse_frame(&frame_from_header(&symbol(g, 7), 64), &key()).is_ok());
    assert_eq!(
        geometry_error(g, 8),
        ParseError::BadGeometry(GeometryError::SymbolOutOfRange)
    );
}

#[test]
fn geometry_manifest_index_not_zero() {
    let mut header = symbol(valid_geometry(), 0);
    if let Header::Symbol(s) = &mut header {
        s.block.kind = BlockKind::Manifest;
    }
    assert_eq!(
        parse_frame(&frame_from_header(&header, 64), &key()),
        Err(ParseError::BadGeometry(GeometryError::ManifestIndex))
    );
}

#[test]
fn geometry_segment_size_out_of_range_or_on_a_manifest() {
    for (kind, size) in [
        (BlockKind::Data, 0),
        (BlockKind::Data, MIN_SEGMENT_SIZE - 1),
        (BlockKind::Data, MAX_SEGMENT_SIZE + 1),
        (BlockKind::Manifest, MIN_SEGMENT_SIZE),
    ] {
        let mut header = symbol(valid_geometry(), 0);
        if let Header::Symbol(s) = &mut header {
            s.block.kind = kind;
            s.block.index = 0;
            s.segment_size = size;
        }
        assert_eq!(
            parse_frame(&frame_from_header(&header, 64), &key()),
            Err(ParseError::BadGeometry(GeometryError::SegmentSize)),
            "{kind:?} {size}"
        );
    }
}

#[test]
fn object_id_out_of_range() {
    let mut header = symbol(valid_geometry(), 0);
    if let Header::Symbol(s) = &mut header {
        s.block.object = ObjectId(MAX_OBJECT_ID + 1);
    }
    assert_eq!(
        parse_frame(&frame_from_header(&header, 64), &key()),
        Err(ParseError::BadGeometry(GeometryError::IdOutOfRange))
    );
}

#[test]
fn encoder_refuses_what_the_parser_would_drop() {
    let g = Geometry {
        symbol_size: 100,
        ..valid_geometry()
    };
    let mut buf = [0u8; 512];
    assert!(write_frame(&symbol(g, 0), &[0; 100], &key(), &mut buf).is_err());
    assert!(write_frame(&symbol(valid_geometry(), 0), &[0; 63], &key(), &mut buf).is_err());
    assert!(write_frame(
        &symbol(valid_geometry(), 0),
        &[0; 64],
        &key(),
        &mut buf[..50]
    )
    .is_err());
}
