//! Forward error correction: block geometry, the repair plan for repeated passes, and the
//! erasure codec behind a small trait.
//!
//! A block is `block_len` bytes cut into `k` source symbols of `symbol_size` bytes (the last
//! one zero-padded). The sender reserves `R` repair symbols for the block; any `k` distinct
//! symbols of the `k + R` rebuild it (the code is MDS). Symbol ids `0..k` are source symbols,
//! `k..k+R` repair symbols.
//!
//! ```text
//!  ids:  0 ........ k-1 | k ...... k+r-1 | k+r ....... k+r+(k+r)-1 | ...
//!        source          pass 1 repair     pass 2: k+r fresh repair    pass 3 ...
//! ```
//!
//! Pass 1 sends the sources and `r` repair symbols; each later pass sends `k + r` repair
//! symbols never sent before, so a later pass alone can rebuild the block and merges with
//! whatever an earlier pass left behind. See [`RepairPlan`].

use core::ops::Range;

use serde::{Deserialize, Serialize};

#[cfg(feature = "alloc")]
mod reed_solomon;
#[cfg(feature = "alloc")]
pub use reed_solomon::ReedSolomon;

/// Most source symbols in one block.
pub const MAX_SOURCE_SYMBOLS: u16 = 32768;
/// Most repair symbols reserved for one block.
pub const MAX_REPAIR_SYMBOLS: u16 = 32768;
/// Symbol sizes are multiples of this (SIMD-friendly for the codec).
pub const SYMBOL_ALIGN: u16 = 64;
/// Largest symbol: fits a 9000-byte MTU datagram with the frame overhead.
pub const MAX_SYMBOL_SIZE: u16 = 8896;
/// Largest padded block (`k * symbol_size`) a receiver must be ready to buffer.
pub const MAX_BLOCK_BYTES: u32 = 16 * 1024 * 1024;
/// `R` may always reach this many repair symbols, even for a block of fewer source symbols.
pub const MIN_REPAIR_CAP: u16 = 64;

/// How one block was encoded; carried in every symbol frame of the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Geometry {
    /// `k`: source symbols in the block.
    pub source_symbols: u16,
    /// `R`: repair symbols reserved for the block over all passes.
    pub repair_symbols: u16,
    /// Bytes per symbol: a multiple of [`SYMBOL_ALIGN`], at most [`MAX_SYMBOL_SIZE`].
    pub symbol_size: u16,
    /// Bytes of block data; the last source symbol is zero-padded past it.
    pub block_len: u32,
}

/// A geometry or symbol id outside the limits of SPEC.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GeometryError {
    /// `k` is 0 or above [`MAX_SOURCE_SYMBOLS`].
    SourceSymbols,
    /// `R` is above `max(k, MIN_REPAIR_CAP)` (or [`MAX_REPAIR_SYMBOLS`]).
    RepairSymbols,
    /// Symbol size is 0, unaligned or above [`MAX_SYMBOL_SIZE`].
    SymbolSize,
    /// `block_len` does not need exactly `k` symbols.
    BlockLen,
    /// `k * symbol_size` exceeds [`MAX_BLOCK_BYTES`].
    BlockTooLarge,
    /// Symbol id is not below `k + R`.
    SymbolOutOfRange,
    /// A manifest block has an index other than 0.
    ManifestIndex,
    /// Object id above `wire::MAX_OBJECT_ID` or block index above `wire::MAX_BLOCK_INDEX`.
    IdOutOfRange,
    /// A data block's segment size outside `wire::MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE`, or a
    /// manifest block's other than 0.
    SegmentSize,
}

impl Geometry {
    /// The geometry for `block_len` bytes in symbols of `symbol_size`, with `repair_symbols`
    /// reserved.
    pub fn new(
        block_len: u32,
        symbol_size: u16,
        repair_symbols: u16,
    ) -> Result<Self, GeometryError> {
        if symbol_size == 0 {
            return Err(GeometryError::SymbolSize);
        }
        let k = block_len.div_ceil(u32::from(symbol_size));
        let source_symbols = u16::try_from(k).map_err(|_| GeometryError::SourceSymbols)?;
        let geometry = Geometry {
            source_symbols,
            repair_symbols,
            symbol_size,
            block_len,
        };
        geometry.validate()?;
        Ok(geometry)
    }

    /// Checks every limit; a geometry that passes can be used to size buffers safely.
    pub fn validate(&self) -> Result<(), GeometryError> {
        let k = self.source_symbols;
        if k == 0 || k > MAX_SOURCE_SYMBOLS {
            return Err(GeometryError::SourceSymbols);
        }
        if self.repair_symbols > Self::repair_cap(k) {
            return Err(GeometryError::RepairSymbols);
        }
        let size = self.symbol_size;
        if size == 0 || size % SYMBOL_ALIGN != 0 || size > MAX_SYMBOL_SIZE {
            return Err(GeometryError::SymbolSize);
        }
        if self.padded_len() > u64::from(MAX_BLOCK_BYTES) {
            return Err(GeometryError::BlockTooLarge);
        }
        let needed = self.block_len.div_ceil(u32::from(size));
        if self.block_len == 0 || needed != u32::from(k) {
            return Err(GeometryError::BlockLen);
        }
        Ok(())
    }

    /// Most repair symbols a block of `k` source symbols may reserve: `max(k, 64)`. The
    /// decoder's work space grows with `k + R`; bounding `R` by `k` bounds it by a small
    /// multiple of the block itself (see [`decode_work_bytes`](Self::decode_work_bytes)), so
    /// one authenticated frame cannot make a receiver allocate hundreds of megabytes.
    pub fn repair_cap(source_symbols: u16) -> u16 {
        source_symbols.clamp(MIN_REPAIR_CAP, MAX_REPAIR_SYMBOLS)
    }

    /// Bytes of work space the Reed–Solomon decoder needs for this block when a repair symbol
    /// is used: `reed-solomon-simd` works on `next_pow2(next_pow2(a) + b)` shards for
    /// `(a, b) = (R, k)` or `(k, R)`, whichever engine it picks; this is the larger. At most
    /// 4 × [`MAX_BLOCK_BYTES`] for a valid geometry.
    pub fn decode_work_bytes(&self) -> u64 {
        let (k, r) = (
            u64::from(self.source_symbols),
            u64::from(self.repair_symbols.max(1)),
        );
        let shards = (r.next_power_of_two() + k)
            .next_power_of_two()
            .max((k.next_power_of_two() + r).next_power_of_two());
        shards * u64::from(self.symbol_size)
    }

    /// `k + R`: the number of distinct symbol ids.
    pub fn total_symbols(&self) -> u32 {
        u32::from(self.source_symbols) + u32::from(self.repair_symbols)
    }

    /// `k * symbol_size`: the bytes of all source symbols, padding included.
    pub fn padded_len(&self) -> u64 {
        u64::from(self.source_symbols) * u64::from(self.symbol_size)
    }

    /// Whether `symbol` is a source symbol.
    pub fn is_source(&self, symbol: u16) -> bool {
        symbol < self.source_symbols
    }
}

/// Which symbols each pass sends, for a block of `k` source symbols.
///
/// Pass 0 sends the `k` source symbols and `r` repair symbols. Later passes walk on through
/// the ring of all `k + R` symbol ids, `k + r` at a time, so each sends the symbols sent least
/// recently: fresh repair symbols while the reserved ones last, then the oldest again. `R` is
/// what the passes would use, capped by [`Geometry::repair_cap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepairPlan {
    source: u16,
    repair_per_pass: u16,
    reserved: u16,
}

impl RepairPlan {
    /// Plans `passes` passes (at least 1) with `repair_permille` repair symbols per thousand
    /// source symbols per pass (rounded up, so any non-zero ratio gives at least one).
    pub fn new(source: u16, repair_permille: u32, passes: u16) -> Self {
        let source = source.clamp(1, MAX_SOURCE_SYMBOLS);
        let cap = u64::from(Geometry::repair_cap(source));
        let r = (u64::from(source) * u64::from(repair_permille))
            .div_ceil(1000)
            .min(cap);
        let later = u64::from(passes.max(1) - 1) * (u64::from(source) + r);
        let reserved = (r + later).min(cap);
        RepairPlan {
            source,
            // Both fit in u16: capped by repair_cap above.
            repair_per_pass: r as u16,
            reserved: reserved as u16,
        }
    }

    /// `R`: repair symbols to reserve in the block's geometry.
    pub fn reserved_repair(&self) -> u16 {
        self.reserved
    }

    /// Repair symbols pass 1 adds to the sources.
    pub fn repair_per_pass(&self) -> u16 {
        self.repair_per_pass
    }

    /// Symbol ids pass `pass` (0-based) sends, in send order.
    pub fn symbols(&self, pass: u16) -> PassSymbols {
        let k = u32::from(self.source);
        let r = u32::from(self.repair_per_pass);
        let ring = k + u32::from(self.reserved);
        // Without repair there is nothing fresh to send after pass 0.
        let count = match pass {
            0 => k + r,
            _ if self.reserved == 0 => 0,
            _ => (k + r).min(ring),
        };
        let start = (u64::from(pass) * u64::from(k + r) % u64::from(ring)) as u32;
        PassSymbols {
            ring,
            start,
            next: 0,
            end: count,
        }
    }
}

/// Iterator over the symbol ids of one pass (see [`RepairPlan::symbols`]).
#[derive(Clone, Debug)]
pub struct PassSymbols {
    /// `k + R`.
    ring: u32,
    /// Where on the ring this pass starts.
    start: u32,
    next: u32,
    end: u32,
}

impl Iterator for PassSymbols {
    type Item = u16;

    fn next(&mut self) -> Option<u16> {
        if self.next >= self.end {
            return None;
        }
        let id = (self.start + self.next) % self.ring.max(1);
        self.next += 1;
        u16::try_from(id).ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.end - self.next) as usize;
        (left, Some(left))
    }
}

/// Why the codec could not encode or decode a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// Fewer than `k` distinct, in-range symbols were supplied.
    NotEnoughSymbols,
    /// A buffer's length does not match the geometry.
    BufferLength,
    /// The geometry is outside what the codec supports.
    Unsupported,
}

/// An MDS erasure code: any `k` distinct symbols of a block rebuild its `k` source symbols.
///
/// Implementations keep scratch space between calls, so one codec value serves many blocks.
pub trait ErasureCodec {
    /// Computes repair symbols with repair indices `repair` (ids `k + i`) of the block whose
    /// padded source bytes are `source` (`k * symbol_size` bytes). `out` receives them back to
    /// back (`repair.len() * symbol_size` bytes).
    fn encode(
        &mut self,
        geometry: &Geometry,
        source: &[u8],
        repair: Range<u16>,
        out: &mut [u8],
    ) -> Result<(), CodecError>;

    /// Rebuilds the padded source bytes (`k * symbol_size`) into `out` from `symbols`, pairs of
    /// symbol id and symbol bytes. Ids must be distinct; at least `k` are needed.
    fn decode(
        &mut self,
        geometry: &Geometry,
        symbols: &mut dyn Iterator<Item = (u16, &[u8])>,
        out: &mut [u8],
    ) -> Result<(), CodecError>;
}
