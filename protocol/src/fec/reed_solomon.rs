//! The production [`ErasureCodec`]: Reed–Solomon over GF(2^16) from the `reed-solomon-simd`
//! crate (Leopard-style O(n log n) encoding, SIMD on x86 and ARM, MDS).
//!
//! `protocol/BENCHMARKS.md` records why this codec was chosen over RaptorQ.
//!
//! The code of a block is fixed by its geometry: the crate is always built with
//! `original_count = k` and `recovery_count = R` (the repair symbols reserved for the block over
//! all passes), because its recovery shards depend on both. Repair symbol id `k + i` is the
//! crate's recovery shard `i`, so every pass of a block draws from one code and the receiver can
//! merge symbols of all passes.

use alloc::vec::Vec;
use core::ops::Range;

use reed_solomon_simd::{Error, ReedSolomonDecoder, ReedSolomonEncoder};

use super::{CodecError, ErasureCodec, Geometry};

/// Reed–Solomon erasure codec; keeps the crate's encoder and decoder work space between blocks.
#[derive(Default)]
pub struct ReedSolomon {
    encoder: Option<ReedSolomonEncoder>,
    decoder: Option<ReedSolomonDecoder>,
    /// One bit per symbol id of the block being decoded: which ids were already taken.
    seen: Vec<u64>,
}

impl core::fmt::Debug for ReedSolomon {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ReedSolomon")
            .field("encoder", &self.encoder.is_some())
            .field("decoder", &self.decoder.is_some())
            .finish_non_exhaustive()
    }
}

/// `k`, `R` and the symbol size of a geometry that passed validation.
#[derive(Clone, Copy)]
struct Shape {
    k: usize,
    r: usize,
    size: usize,
}

impl Shape {
    fn of(geometry: &Geometry) -> Result<Self, CodecError> {
        geometry.validate().map_err(|_| CodecError::Unsupported)?;
        Ok(Shape {
            k: usize::from(geometry.source_symbols),
            r: usize::from(geometry.repair_symbols),
            size: usize::from(geometry.symbol_size),
        })
    }

    fn padded(&self) -> usize {
        self.k * self.size
    }
}

impl ReedSolomon {
    /// A codec with no work space yet; the first block allocates it.
    pub fn new() -> Self {
        Self::default()
    }

    /// The encoder, reset for `shape` (allocating only if the old work space is too small).
    fn encoder(&mut self, shape: Shape) -> Result<&mut ReedSolomonEncoder, CodecError> {
        let encoder = match self.encoder.take() {
            Some(mut encoder) => {
                encoder
                    .reset(shape.k, shape.r, shape.size)
                    .map_err(codec_error)?;
                encoder
            }
            None => ReedSolomonEncoder::new(shape.k, shape.r, shape.size).map_err(codec_error)?,
        };
        Ok(self.encoder.insert(encoder))
    }

    /// The decoder, reset for `shape`: any shards of an earlier, failed call are forgotten.
    fn decoder(&mut self, shape: Shape) -> Result<&mut ReedSolomonDecoder, CodecError> {
        let decoder = match self.decoder.take() {
            Some(mut decoder) => {
                decoder
                    .reset(shape.k, shape.r, shape.size)
                    .map_err(codec_error)?;
                decoder
            }
            None => ReedSolomonDecoder::new(shape.k, shape.r, shape.size).map_err(codec_error)?,
        };
        Ok(self.decoder.insert(decoder))
    }

    /// Marks `id` as taken; false if it already was (a duplicate to skip).
    fn first_sight(&mut self, id: usize) -> bool {
        let (word, bit) = (id / 64, 1u64 << (id % 64));
        match self.seen.get_mut(word) {
            Some(slot) if *slot & bit == 0 => {
                *slot |= bit;
                true
            }
            _ => false,
        }
    }

    /// Feeds the source symbols already placed in `out` to the decoder, decodes, and writes
    /// the restored source symbols into the gaps of `out`.
    fn restore(&mut self, shape: Shape, out: &mut [u8]) -> Result<(), CodecError> {
        let seen = &self.seen;
        // Only reached after a repair symbol was added, which creates the decoder.
        let decoder = self.decoder.as_mut().ok_or(CodecError::Unsupported)?;
        for (index, symbol) in out.chunks_exact(shape.size).enumerate() {
            let held = seen
                .get(index / 64)
                .is_some_and(|word| word & (1u64 << (index % 64)) != 0);
            if held {
                decoder
                    .add_original_shard(index, symbol)
                    .map_err(codec_error)?;
            }
        }
        let result = decoder.decode().map_err(codec_error)?;
        for (index, symbol) in result.restored_original_iter() {
            let slot = out
                .get_mut(index * shape.size..(index + 1) * shape.size)
                .ok_or(CodecError::BufferLength)?;
            slot.copy_from_slice(symbol);
        }
        Ok(())
    }
}

/// What a `reed-solomon-simd` error means for our caller.
fn codec_error(error: Error) -> CodecError {
    match error {
        Error::NotEnoughShards { .. } => CodecError::NotEnoughSymbols,
        Error::DifferentShardSize { .. } | Error::InvalidShardSize { .. } => {
            CodecError::BufferLength
        }
        Error::UnsupportedShardCount { .. } => CodecError::Unsupported,
        // Ruled out before the crate is called: ids are range-checked and deduplicated, and
        // the encoder always gets exactly `k` shards. Reported rather than trusted.
        Error::DuplicateOriginalShardIndex { .. }
        | Error::DuplicateRecoveryShardIndex { .. }
        | Error::InvalidOriginalShardIndex { .. }
        | Error::InvalidRecoveryShardIndex { .. }
        | Error::TooFewOriginalShards { .. }
        | Error::TooManyOriginalShards { .. } => CodecError::Unsupported,
    }
}

impl ErasureCodec for ReedSolomon {
    /// Errors: [`CodecError::Unsupported`] for an invalid geometry or a `repair` range reaching
    /// past `R`; [`CodecError::BufferLength`] when `source` or `out` has the wrong length.
    fn encode(
        &mut self,
        geometry: &Geometry,
        source: &[u8],
        repair: Range<u16>,
        out: &mut [u8],
    ) -> Result<(), CodecError> {
        let shape = Shape::of(geometry)?;
        let wanted = usize::from(repair.start)..usize::from(repair.end);
        if wanted.start > wanted.end || wanted.end > shape.r {
            return Err(CodecError::Unsupported);
        }
        if source.len() != shape.padded() || out.len() != wanted.len() * shape.size {
            return Err(CodecError::BufferLength);
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let encoder = self.encoder(shape)?;
        for symbol in source.chunks_exact(shape.size) {
            encoder.add_original_shard(symbol).map_err(codec_error)?;
        }
        // The crate computes all R recovery shards; the fixed code needs them all anyway.
        let result = encoder.encode().map_err(codec_error)?;
        for (index, slot) in wanted.zip(out.chunks_exact_mut(shape.size)) {
            let symbol = result.recovery(index).ok_or(CodecError::Unsupported)?;
            slot.copy_from_slice(symbol);
        }
        Ok(())
    }

    /// Duplicate ids (after the first) and ids not below `k + R` are skipped. Errors:
    /// [`CodecError::Unsupported`] for an invalid geometry, [`CodecError::BufferLength`] when
    /// `out` or a symbol has the wrong length, [`CodecError::NotEnoughSymbols`] when fewer than
    /// `k` distinct ids remain. `out` holds garbage after an error.
    fn decode(
        &mut self,
        geometry: &Geometry,
        symbols: &mut dyn Iterator<Item = (u16, &[u8])>,
        out: &mut [u8],
    ) -> Result<(), CodecError> {
        let shape = Shape::of(geometry)?;
        if out.len() != shape.padded() {
            return Err(CodecError::BufferLength);
        }
        self.seen.clear();
        self.seen.resize((shape.k + shape.r).div_ceil(64), 0);
        let (mut sources, mut repairs) = (0usize, 0usize);
        for (id, data) in symbols {
            let id = usize::from(id);
            if data.len() != shape.size {
                return Err(CodecError::BufferLength);
            }
            if id >= shape.k + shape.r || !self.first_sight(id) {
                continue;
            }
            if id < shape.k {
                out[id * shape.size..(id + 1) * shape.size].copy_from_slice(data);
                sources += 1;
            } else {
                // The decoder is reset on the first repair symbol only, so a block whose
                // sources all arrived never touches the crate.
                let decoder = if repairs == 0 {
                    self.decoder(shape)?
                } else {
                    self.decoder.as_mut().ok_or(CodecError::Unsupported)?
                };
                decoder
                    .add_recovery_shard(id - shape.k, data)
                    .map_err(codec_error)?;
                repairs += 1;
            }
        }
        if sources == shape.k {
            return Ok(());
        }
        if sources + repairs < shape.k {
            return Err(CodecError::NotEnoughSymbols);
        }
        self.restore(shape, out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap: a panic is a failed test.
mod tests {
    use super::*;

    /// A block of `k` symbols of 64 bytes with `r` repair symbols reserved, and its bytes.
    fn block(k: u16, r: u16) -> (Geometry, Vec<u8>) {
        let geometry = Geometry::new(u32::from(k) * 64, 64, r).unwrap();
        let data = (0..usize::from(k) * 64)
            .map(|i| (i * 31 + i / 64) as u8)
            .collect();
        (geometry, data)
    }

    fn repair(codec: &mut ReedSolomon, geometry: &Geometry, data: &[u8]) -> Vec<u8> {
        let r = geometry.repair_symbols;
        let mut out = alloc::vec![0u8; usize::from(r) * 64];
        codec.encode(geometry, data, 0..r, &mut out).unwrap();
        out
    }

    fn decode_ids(
        codec: &mut ReedSolomon,
        geometry: &Geometry,
        data: &[u8],
        repair: &[u8],
        ids: &[u16],
    ) -> Result<Vec<u8>, CodecError> {
        let k = geometry.source_symbols;
        let mut symbols = ids.iter().map(|&id| {
            let bytes = if id < k {
                &data[usize::from(id) * 64..][..64]
            } else {
                &repair[usize::from(id - k) * 64..][..64]
            };
            (id, bytes)
        });
        let mut out = alloc::vec![0u8; data.len()];
        codec.decode(geometry, &mut symbols, &mut out)?;
        Ok(out)
    }

    #[test]
    fn recovers_from_repair_only() {
        let (geometry, data) = block(4, 4);
        let mut codec = ReedSolomon::new();
        let repair = repair(&mut codec, &geometry, &data);
        let out = decode_ids(&mut codec, &geometry, &data, &repair, &[7, 4, 6, 5]).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn recovers_mixed_and_reuses_scratch_across_geometries() {
        let mut codec = ReedSolomon::new();
        for (k, r) in [(10, 3), (3, 10), (10, 3), (1, 1)] {
            let (geometry, data) = block(k, r);
            let repair = repair(&mut codec, &geometry, &data);
            // Lose the first min(k, r) sources, use as many repair symbols.
            let lost = k.min(r);
            let ids: Vec<u16> = (lost..k).chain(k..k + lost).collect();
            let out = decode_ids(&mut codec, &geometry, &data, &repair, &ids).unwrap();
            assert_eq!(out, data, "k={k} r={r}");
        }
    }

    #[test]
    fn encode_range_is_a_slice_of_all_repair() {
        let (geometry, data) = block(5, 6);
        let mut codec = ReedSolomon::new();
        let all = repair(&mut codec, &geometry, &data);
        let mut part = alloc::vec![0u8; 2 * 64];
        codec.encode(&geometry, &data, 3..5, &mut part).unwrap();
        assert_eq!(part, all[3 * 64..5 * 64]);
        assert!(all.iter().any(|b| *b != 0));
    }

    #[test]
    fn encode_rejects_bad_buffers_and_ranges() {
        let (geometry, data) = block(4, 2);
        let mut codec = ReedSolomon::new();
        let mut out = alloc::vec![0u8; 2 * 64];
        assert_eq!(
            codec.encode(&geometry, &data[1..], 0..2, &mut out),
            Err(CodecError::BufferLength)
        );
        assert_eq!(
            codec.encode(&geometry, &data, 0..1, &mut out),
            Err(CodecError::BufferLength)
        );
        assert_eq!(
            codec.encode(&geometry, &data, 1..3, &mut out),
            Err(CodecError::Unsupported)
        );
        #[allow(clippy::reversed_empty_ranges)]
        let backwards = 2..1;
        assert_eq!(
            codec.encode(&geometry, &data, backwards, &mut out),
            Err(CodecError::Unsupported)
        );
        assert_eq!(codec.encode(&geometry, &data, 1..1, &mut []), Ok(()));
    }

    #[test]
    fn rejects_invalid_geometry() {
        let (mut geometry, data) = block(4, 2);
        geometry.symbol_size = 65;
        let mut codec = ReedSolomon::new();
        let mut out = alloc::vec![0u8; 2 * 65];
        assert_eq!(
            codec.encode(&geometry, &data, 0..2, &mut out),
            Err(CodecError::Unsupported)
        );
        let mut none = core::iter::empty();
        assert_eq!(
            codec.decode(&geometry, &mut none, &mut out),
            Err(CodecError::Unsupported)
        );
    }

    #[test]
    fn decode_rejects_wrong_lengths() {
        let (geometry, data) = block(3, 1);
        let mut codec = ReedSolomon::new();
        let mut short = alloc::vec![0u8; data.len() - 1];
        let mut symbols = core::iter::once((0u16, &data[..64]));
        assert_eq!(
            codec.decode(&geometry, &mut symbols, &mut short),
            Err(CodecError::BufferLength)
        );
        let mut out = alloc::vec![0u8; data.len()];
        let mut symbols = core::iter::once((0u16, &data[..63]));
        assert_eq!(
            codec.decode(&geometry, &mut symbols, &mut out),
            Err(CodecError::BufferLength)
        );
    }

    #[test]
    fn duplicates_and_out_of_range_ids_do_not_count() {
        let (geometry, data) = block(4, 2);
        let mut codec = ReedSolomon::new();
        let repair = repair(&mut codec, &geometry, &data);
        // Three distinct ids plus duplicates of a source and a repair symbol: not enough.
        let result = decode_ids(&mut codec, &geometry, &data, &repair, &[0, 0, 4, 4, 1]);
        assert_eq!(result, Err(CodecError::NotEnoughSymbols));
        // Out-of-range ids are skipped, not indexed.
        let k = 4usize;
        let mut symbols = [(6u16, &data[..64]), (u16::MAX, &data[..64])]
            .into_iter()
            .chain((1..4).map(|id| (id, &data[id as usize * 64..][..64])));
        let mut out = alloc::vec![0u8; k * 64];
        assert_eq!(
            codec.decode(&geometry, &mut symbols, &mut out),
            Err(CodecError::NotEnoughSymbols)
        );
        // A duplicate carrying different bytes does not replace the first copy.
        let mut symbols = [(0u16, &data[..64]), (0u16, &data[64..128])]
            .into_iter()
            .chain((1..4).map(|id| (id, &data[id as usize * 64..][..64])));
        codec.decode(&geometry, &mut symbols, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn all_sources_present_needs_no_repair() {
        let (geometry, data) = block(5, 0);
        let mut codec = ReedSolomon::new();
        let out = decode_ids(&mut codec, &geometry, &data, &[], &[4, 2, 0, 1, 3]).unwrap();
        assert_eq!(out, data);
        assert!(
            codec.decoder.is_none(),
            "fast path must not build a decoder"
        );
    }

    #[test]
    fn no_repair_reserved_and_a_source_missing() {
        let (geometry, data) = block(5, 0);
        let mut codec = ReedSolomon::new();
        let result = decode_ids(&mut codec, &geometry, &data, &[], &[0, 1, 2, 3]);
        assert_eq!(result, Err(CodecError::NotEnoughSymbols));
        let mut out = alloc::vec![0u8; 0];
        assert_eq!(codec.encode(&geometry, &data, 0..0, &mut out), Ok(()));
    }

    #[test]
    fn failed_decode_leaves_no_state_behind() {
        let (geometry, data) = block(4, 4);
        let mut codec = ReedSolomon::new();
        let repair = repair(&mut codec, &geometry, &data);
        let few = decode_ids(&mut codec, &geometry, &data, &repair, &[4, 5, 0]);
        assert_eq!(few, Err(CodecError::NotEnoughSymbols));
        let out = decode_ids(&mut codec, &geometry, &data, &repair, &[6, 7, 2, 3]).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn maps_crate_errors() {
        assert_eq!(
            codec_error(Error::NotEnoughShards {
                original_count: 2,
                original_received_count: 0,
                recovery_received_count: 1,
            }),
            CodecError::NotEnoughSymbols
        );
        assert_eq!(
            codec_error(Error::DifferentShardSize {
                shard_bytes: 64,
                got: 2
            }),
            CodecError::BufferLength
        );
        assert_eq!(
            codec_error(Error::DuplicateOriginalShardIndex { index: 0 }),
            CodecError::Unsupported
        );
    }
}
