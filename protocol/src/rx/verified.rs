//! Frames verified apart from the assembler: the per-byte work of the receive path (length,
//! magic, version, CRC-32C, link MAC, header decoding and validation) done where the frames
//! arrive, so that several links or flows can each check their own frames in parallel and hand
//! one [`Assembler`](super::Assembler) only what passed.
//!
//! ```text
//!   flow 1: bytes ─▶ VerifiedFrames::verify ─┐  (batches, moved between threads)
//!   flow 2: bytes ─▶ VerifiedFrames::verify ─┼─▶ Assembler::handle_verified ─▶ events
//!   flow n: bytes ─▶ VerifiedFrames::verify ─┘
//! ```
//!
//! A batch holds only frames that [`wire::parse_frame`] accepted: [`VerifiedFrames::verify`] is
//! the only way in, so the assembler can take a batch without checking anything again. What
//! verification refused is counted in the batch with the same [`DropReason`]s that
//! [`Assembler::handle_frame`](super::Assembler::handle_frame) would have counted, and the
//! assembler adds those counts to its own: the drops and statistics are the same whichever
//! way the frames came in. A batch never grows beyond the bounds it was made with; a valid
//! frame that finds it full is counted as a [`DropReason::Capacity`] drop.

use alloc::vec::Vec;

use crate::counters::{DropCounters, DropReason};
use crate::fec::MAX_SYMBOL_SIZE;
use crate::wire::{self, Header, LinkKey};

/// One verified frame: its header and where its payload ends in the batch's payload bytes.
#[derive(Clone, Copy, Debug)]
struct Entry {
    header: Header,
    end: usize,
}

/// A batch of verified frames (decoded header and payload of each), and the drops found while
/// verifying. See the module docs.
#[derive(Debug, Clone)]
pub struct VerifiedFrames {
    entries: Vec<Entry>,
    payloads: Vec<u8>,
    drops: DropCounters,
    max_frames: usize,
    max_payload_bytes: usize,
}

impl VerifiedFrames {
    /// An empty batch of at most `max_frames` frames and `max_payload_bytes` bytes of payload;
    /// both are allocated now, once, and reused after [`clear`](Self::clear).
    pub fn new(max_frames: usize, max_payload_bytes: usize) -> Self {
        VerifiedFrames {
            entries: Vec::with_capacity(max_frames),
            payloads: Vec::with_capacity(max_payload_bytes),
            drops: DropCounters::default(),
            max_frames,
            max_payload_bytes,
        }
    }

    /// Checks one frame as delivered by the link (everything [`wire::parse_frame`] checks) and
    /// keeps its header and payload if it passes; otherwise counts why not. A valid frame that
    /// no longer fits is counted as [`DropReason::Capacity`].
    pub fn verify(&mut self, bytes: &[u8], key: &LinkKey) -> Result<(), DropReason> {
        let result = match wire::parse_frame(bytes, key) {
            Ok(frame) => self.push(frame.header, frame.payload),
            Err(error) => Err(error.into()),
        };
        if let Err(reason) = result {
            self.drops.record(reason);
        }
        result
    }

    fn push(&mut self, header: Header, payload: &[u8]) -> Result<(), DropReason> {
        let end = self.payloads.len() + payload.len();
        if self.entries.len() >= self.max_frames || end > self.max_payload_bytes {
            return Err(DropReason::Capacity);
        }
        self.payloads.extend_from_slice(payload);
        self.entries.push(Entry { header, end });
        Ok(())
    }

    /// Counts a drop that happened before verification (e.g. serial deframing), so it reaches
    /// the assembler's counters with the batch.
    pub fn record_drop(&mut self, reason: DropReason) {
        self.drops.record(reason);
    }

    /// Whether the next frame might not fit: the caller should hand the batch on first.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.max_frames
            || self.payloads.len() + usize::from(MAX_SYMBOL_SIZE) > self.max_payload_bytes
    }

    /// Verified frames held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no frame is held (drops may still be counted).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of payload held.
    pub fn payload_bytes(&self) -> usize {
        self.payloads.len()
    }

    /// Drops counted while verifying (and recorded with [`record_drop`](Self::record_drop)).
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Empties the batch for reuse, keeping its buffers.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.payloads.clear();
        self.drops = DropCounters::default();
    }

    /// The verified frames in the order they were verified: header and payload of each.
    pub fn frames(&self) -> impl Iterator<Item = (&Header, &[u8])> + '_ {
        let mut start = 0;
        self.entries.iter().map(move |entry| {
            let payload = self.payloads.get(start..entry.end).unwrap_or(&[]);
            start = entry.end;
            (&entry.header, payload)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fec::Geometry;
    use crate::rx::{Assembler, RxConfig};
    use crate::time::Instant;
    use crate::wire::{BlockKey, BlockKind, Heartbeat, ObjectId, SessionId, SymbolHeader};
    use core::time::Duration;
    use proptest::prelude::*;

    const SECRET: [u8; 32] = [3; 32];

    fn symbol_frame(key: &LinkKey, block: u8, id: u16, fill: u8) -> Vec<u8> {
        let geometry = Geometry::new(640, 64, 4).unwrap();
        let header = Header::Symbol(SymbolHeader {
            block: BlockKey {
                session: SessionId(9),
                object: ObjectId(u64::from(block / 4)),
                kind: BlockKind::Data,
                index: u32::from(block % 4),
            },
            geometry,
            symbol: id % 14,
            segment_size: wire::MIN_SEGMENT_SIZE,
        });
        let mut buf = alloc::vec![0u8; 256];
        let n = wire::write_frame(&header, &[fill; 64], key, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    fn heartbeat(key: &LinkKey, seq: u64) -> Vec<u8> {
        let header = Header::Heartbeat(Heartbeat {
            session: SessionId(9),
            seq,
            frames_sent: seq,
            rate: 0,
            objects: 1,
        });
        let mut buf = alloc::vec![0u8; 128];
        let n = wire::write_frame(&header, &[], key, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    /// What one step of the input is.
    #[derive(Debug, Clone)]
    enum Input {
        Symbol {
            block: u8,
            id: u16,
            fill: u8,
        },
        Heartbeat(u64),
        /// A valid frame with one bit flipped (the CRC fixed again when `fix_crc`).
        Flipped {
            block: u8,
            bit: usize,
            fix_crc: bool,
        },
        /// A valid frame under another key.
        Forged {
            block: u8,
        },
        Raw(Vec<u8>),
        /// A deframing drop before verification.
        Deframing,
        /// The batch so far goes to the assembler, time passes.
        Flush {
            millis: u16,
        },
    }

    fn input() -> impl Strategy<Value = Input> {
        prop_oneof![
            4 => (0u8..6, any::<u16>(), any::<u8>())
                .prop_map(|(block, id, fill)| Input::Symbol { block, id, fill }),
            1 => (0u64..4).prop_map(Input::Heartbeat),
            2 => (0u8..6, any::<usize>(), any::<bool>())
                .prop_map(|(block, bit, fix_crc)| Input::Flipped { block, bit, fix_crc }),
            1 => (0u8..6).prop_map(|block| Input::Forged { block }),
            1 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(Input::Raw),
            1 => Just(Input::Deframing),
            1 => (0u16..400).prop_map(|millis| Input::Flush { millis }),
        ]
    }

    fn bytes_of(input: &Input, key: &LinkKey, wrong: &LinkKey) -> Option<Vec<u8>> {
        Some(match input {
            Input::Symbol { block, id, fill } => symbol_frame(key, *block, *id, *fill),
            Input::Heartbeat(seq) => heartbeat(key, *seq),
            Input::Flipped {
                block,
                bit,
                fix_crc,
            } => {
                let mut f = symbol_frame(key, *block, 1, 1);
                let bit = bit % ((f.len() - wire::CRC_LEN) * 8);
                f[bit / 8] ^= 1 << (bit % 8);
                if *fix_crc {
                    let crc_start = f.len() - wire::CRC_LEN;
                    let crc = wire::crc32c(&f[..crc_start]);
                    f[crc_start..].copy_from_slice(&crc.to_le_bytes());
                }
                f
            }
            Input::Forged { block } => symbol_frame(wrong, *block, 2, 2),
            Input::Raw(bytes) => bytes.clone(),
            Input::Deframing | Input::Flush { .. } => return None,
        })
    }

    fn config() -> RxConfig {
        RxConfig {
            max_blocks: 4,
            max_buffered_bytes: 4096,
            block_timeout: Duration::from_millis(500),
            link_timeout: Duration::from_millis(300),
            remembered_done: 8,
            source_grace: Duration::ZERO,
        }
    }

    fn events(a: &mut Assembler) -> Vec<alloc::string::String> {
        core::iter::from_fn(|| a.poll_event())
            .map(|e| alloc::format!("{e:?}"))
            .collect()
    }

    proptest! {
        /// Verifying into batches (of any size, split anywhere) then assembling gives the same
        /// drops, statistics, events and held state as `handle_frame` frame by frame.
        #[test]
        fn batches_assemble_exactly_as_frames_do(
            inputs in proptest::collection::vec(input(), 0..120),
            max_frames in 1usize..8,
        ) {
            let key = LinkKey::new(&SECRET);
            let wrong = LinkKey::new(&[4; 32]);
            let mut direct = Assembler::new(config(), key.clone());
            let mut batched = Assembler::new(config(), key.clone());
            let mut batch = VerifiedFrames::new(max_frames, usize::from(MAX_SYMBOL_SIZE) * 8);
            let mut now = Instant::ZERO;
            let mut seen = (Vec::new(), Vec::new());
            for input in &inputs {
                if let Some(bytes) = bytes_of(input, &key, &wrong) {
                    direct.handle_frame(now, &bytes);
                    // Handed on before it could overflow, as a driver does.
                    if batch.is_full() {
                        batched.handle_verified(now, &batch);
                        batch.clear();
                    }
                    let verified = batch.verify(&bytes, &key).is_ok();
                    prop_assert_eq!(verified, wire::parse_frame(&bytes, &key).is_ok());
                }
                match input {
                    Input::Deframing => {
                        direct.record_drop(DropReason::Cobs);
                        batch.record_drop(DropReason::Cobs);
                    }
                    Input::Flush { millis } => {
                        batched.handle_verified(now, &batch);
                        batch.clear();
                        now = now + Duration::from_millis(u64::from(*millis));
                        direct.handle_timeout(now);
                        batched.handle_timeout(now);
                    }
                    _ => {}
                }
                seen.0.extend(events(&mut direct));
                seen.1.extend(events(&mut batched));
            }
            batched.handle_verified(now, &batch);
            seen.0.extend(events(&mut direct));
            seen.1.extend(events(&mut batched));
            prop_assert_eq!(direct.drops(), batched.drops());
            prop_assert_eq!(direct.stats(), batched.stats());
            prop_assert_eq!(
                (direct.blocks_held(), direct.buffered_bytes()),
                (batched.blocks_held(), batched.buffered_bytes())
            );
            prop_assert_eq!(seen.0, seen.1);
        }

        /// Whatever the bytes, a frame enters a batch exactly when `parse_frame` accepts it, and
        /// a refused one is counted with `parse_frame`'s reason.
        #[test]
        fn only_what_parse_frame_accepts_is_verified(
            bytes in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let key = LinkKey::new(&SECRET);
            let mut batch = VerifiedFrames::new(4, 1024);
            let result = batch.verify(&bytes, &key);
            match wire::parse_frame(&bytes, &key) {
                Ok(_) => prop_assert_eq!((result, batch.len()), (Ok(()), 1)),
                Err(error) => {
                    prop_assert_eq!(result, Err(DropReason::from(error)));
                    prop_assert_eq!((batch.len(), batch.drops().total()), (0, 1));
                }
            }
        }
    }

    #[test]
    fn forged_and_corrupt_frames_never_become_verified() {
        let key = LinkKey::new(&SECRET);
        let wrong = LinkKey::new(&[4; 32]);
        let mut batch = VerifiedFrames::new(64, 1 << 16);
        assert_eq!(
            batch.verify(&symbol_frame(&wrong, 0, 0, 1), &key),
            Err(DropReason::BadMac)
        );
        let valid = symbol_frame(&key, 0, 0, 1);
        // Every single-bit change of a valid frame is refused, with or without a fixed CRC.
        for bit in 0..(valid.len() - wire::CRC_LEN) * 8 {
            for fix_crc in [false, true] {
                let Some(f) = bytes_of(
                    &Input::Flipped {
                        block: 0,
                        bit,
                        fix_crc,
                    },
                    &key,
                    &wrong,
                ) else {
                    continue;
                };
                assert!(batch.verify(&f, &key).is_err(), "bit {bit}, crc {fix_crc}");
            }
        }
        assert!(batch.is_empty());
        let flips = (valid.len() - wire::CRC_LEN) as u64 * 8 * 2;
        assert_eq!(batch.drops().total(), 1 + flips);
        // With the CRC fixed again, a change after the prefix is the MAC's to catch.
        let after_prefix = (valid.len() - wire::CRC_LEN - wire::PREFIX_LEN) as u64 * 8;
        assert_eq!(batch.drops().get(DropReason::BadMac), 1 + after_prefix);
        assert!(batch.drops().get(DropReason::BadCrc) > 0);
        // And the assembler that takes the batch holds nothing, says nothing, counts it all.
        let mut a = Assembler::new(RxConfig::default(), key.clone());
        a.handle_verified(Instant::ZERO, &batch);
        assert_eq!((a.blocks_held(), a.stats().frames_ok), (0, 0));
        assert!(a.poll_event().is_none());
        assert_eq!(a.drops(), batch.drops());
    }

    #[test]
    fn a_full_batch_counts_capacity_and_clear_reuses_it() {
        let key = LinkKey::new(&SECRET);
        let mut batch = VerifiedFrames::new(2, 1 << 16);
        assert!(!batch.is_full());
        assert_eq!(batch.verify(&symbol_frame(&key, 0, 0, 1), &key), Ok(()));
        assert_eq!(batch.verify(&heartbeat(&key, 0), &key), Ok(()));
        assert!(batch.is_full());
        assert_eq!(
            batch.verify(&symbol_frame(&key, 0, 1, 1), &key),
            Err(DropReason::Capacity)
        );
        assert_eq!((batch.len(), batch.payload_bytes()), (2, 64));
        let frames: Vec<(Header, Vec<u8>)> =
            batch.frames().map(|(h, p)| (*h, p.to_vec())).collect();
        assert_eq!(frames[0].1, [1u8; 64]);
        assert!(matches!(frames[1], (Header::Heartbeat(_), ref p) if p.is_empty()));
        batch.clear();
        assert!(batch.is_empty() && batch.drops().total() == 0 && !batch.is_full());
        // Bytes bound too: room for one 64-byte payload only.
        let mut small = VerifiedFrames::new(8, 100);
        assert_eq!(small.verify(&symbol_frame(&key, 0, 0, 1), &key), Ok(()));
        assert_eq!(
            small.verify(&symbol_frame(&key, 0, 1, 1), &key),
            Err(DropReason::Capacity)
        );
    }
}
