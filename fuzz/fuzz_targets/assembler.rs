//! Receive assembler fed arbitrary frame sequences.
//!
//! Invariants checked after every step:
//! - buffered bytes and blocks held never exceed the configured bounds;
//! - a frame that is not authenticated (wrong key, corrupted bytes) produces no event and
//!   changes no state;
//! - a ready block decodes to exactly `block_len` bytes or reports an error, never panics.
#![no_main]

use arbitrary::Arbitrary;
use core::time::Duration;
use libfuzzer_sys::fuzz_target;
use sluice_protocol::fec::{Geometry, ReedSolomon};
use sluice_protocol::rx::{Assembler, Event, RxConfig};
use sluice_protocol::time::Instant;
use sluice_protocol::wire::{
    write_frame, BlockKey, BlockKind, Header, Heartbeat, LinkKey, ObjectId, SessionId,
    SymbolHeader, MAX_FRAME_LEN, MIN_SEGMENT_SIZE,
};

const SECRET: [u8; 32] = [0x5a; 32];

#[derive(Arbitrary, Debug)]
enum Step {
    /// An authenticated symbol frame.
    Symbol {
        session: u8,
        object: u8,
        manifest: bool,
        index: u8,
        k: u8,
        repair: u8,
        size_units: u8,
        tail: u8,
        symbol: u16,
        fill: u8,
    },
    /// An authenticated heartbeat.
    Heartbeat { seq: u8 },
    /// Raw bytes, never authenticated.
    Raw(Vec<u8>),
    /// A valid frame under another key.
    Forged { index: u8 },
    /// Time passes.
    Advance { millis: u16 },
}

fn symbol_frame(
    key: &LinkKey,
    block: BlockKey,
    geometry: Geometry,
    symbol: u16,
    fill: u8,
) -> Option<Vec<u8>> {
    // Varies with `fill`, so symbols of one block can disagree (`geometry_mismatch`).
    let segment_size = match block.kind {
        BlockKind::Data => MIN_SEGMENT_SIZE << (fill % 3),
        BlockKind::Manifest => 0,
    };
    let header = Header::Symbol(SymbolHeader {
        block,
        geometry,
        symbol,
        segment_size,
    });
    let payload = vec![fill; usize::from(geometry.symbol_size)];
    let mut buf = vec![0u8; MAX_FRAME_LEN];
    let n = write_frame(&header, &payload, key, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

fuzz_target!(|steps: Vec<Step>| {
    let config = RxConfig {
        max_blocks: 8,
        max_buffered_bytes: 256 * 1024,
        block_timeout: Duration::from_millis(500),
        link_timeout: Duration::from_millis(300),
        remembered_done: 16,
        source_grace: Duration::from_millis(5),
    };
    let key = LinkKey::new(&SECRET);
    let wrong = LinkKey::new(&[0xa5; 32]);
    let mut rx = Assembler::new(config, key.clone());
    let mut codec = ReedSolomon::default();
    let mut now = Instant::ZERO;
    for step in steps {
        let frame = match step {
            Step::Symbol {
                session,
                object,
                manifest,
                index,
                k,
                repair,
                size_units,
                tail,
                symbol,
                fill,
            } => {
                let size = 64 * u16::from(size_units % 8 + 1);
                let k = u32::from(k % 32) + 1;
                let block_len = (k - 1) * u32::from(size) + u32::from(tail) % u32::from(size) + 1;
                let Ok(geometry) = Geometry::new(block_len, size, u16::from(repair % 16)) else {
                    continue;
                };
                let block = BlockKey {
                    session: SessionId(u64::from(session % 3)),
                    object: ObjectId(u64::from(object % 4)),
                    kind: if manifest {
                        BlockKind::Manifest
                    } else {
                        BlockKind::Data
                    },
                    index: if manifest { 0 } else { u32::from(index % 4) },
                };
                let id = symbol % geometry.total_symbols().max(1) as u16;
                symbol_frame(&key, block, geometry, id, fill)
            }
            Step::Heartbeat { seq } => {
                let header = Header::Heartbeat(Heartbeat {
                    session: SessionId(1),
                    seq: u64::from(seq),
                    frames_sent: 0,
                    rate: 0,
                    objects: 0,
                });
                let mut buf = vec![0u8; 128];
                write_frame(&header, &[], &key, &mut buf).ok().map(|n| {
                    buf.truncate(n);
                    buf
                })
            }
            Step::Raw(bytes) => {
                let before = (rx.buffered_bytes(), rx.blocks_held(), rx.stats());
                rx.handle_frame(now, &bytes);
                if rx.stats().frames_ok == before.2.frames_ok {
                    // Not authenticated: nothing may change.
                    assert_eq!((rx.buffered_bytes(), rx.blocks_held(), rx.stats()), before);
                    assert!(
                        rx.poll_event().is_none(),
                        "unauthenticated bytes produced an event"
                    );
                }
                None
            }
            Step::Forged { index } => {
                let geometry = Geometry::new(64, 64, 1).ok();
                let block = BlockKey {
                    session: SessionId(1),
                    object: ObjectId(0),
                    kind: BlockKind::Data,
                    index: u32::from(index),
                };
                if let Some(f) = geometry.and_then(|g| symbol_frame(&wrong, block, g, 0, 1)) {
                    let before = (rx.buffered_bytes(), rx.blocks_held(), rx.stats());
                    rx.handle_frame(now, &f);
                    assert_eq!((rx.buffered_bytes(), rx.blocks_held(), rx.stats()), before);
                    assert!(rx.poll_event().is_none(), "forged frame produced an event");
                }
                None
            }
            Step::Advance { millis } => {
                now = now + Duration::from_millis(u64::from(millis));
                rx.handle_timeout(now);
                None
            }
        };
        if let Some(frame) = frame {
            rx.handle_frame(now, &frame);
        }
        assert!(rx.buffered_bytes() <= config.max_buffered_bytes);
        assert!(rx.blocks_held() <= config.max_blocks);
        while let Some(event) = rx.poll_event() {
            if let Event::BlockReady(block) = event {
                if let Some(ready) = rx.take_ready(&block) {
                    if let Ok(data) = ready.decode(&mut codec) {
                        assert_eq!(data.len(), ready.geometry.block_len as usize);
                    }
                }
            }
        }
    }
});
