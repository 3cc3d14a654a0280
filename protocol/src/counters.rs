//! Why frames and symbols are dropped, and the counters that record it.
//!
//! Every drop anywhere in the receive path has exactly one reason here, so an operator can tell
//! line noise (CRC) from an attacker without the key (MAC) from a receiver that is out of room
//! (capacity).

use crate::framing::FramingError;
use crate::wire::ParseError;

/// One reason a frame, or a symbol inside a valid frame, was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Serial deframing: COBS did not decode.
    Cobs,
    /// Serial deframing: frame longer than the accumulator.
    Oversize,
    /// Shorter than the smallest frame.
    TooShort,
    /// Longer than the largest frame.
    TooLong,
    /// Wrong magic bytes.
    BadMagic,
    /// Unsupported wire version.
    BadVersion,
    /// CRC-32C mismatch: corrupted on the line.
    BadCrc,
    /// Link MAC mismatch: not from a holder of the link key.
    BadMac,
    /// Header does not decode.
    BadHeader,
    /// Payload length differs from the header's.
    BadLength,
    /// Header breaks a geometry limit.
    BadGeometry,
    /// Symbol's geometry differs from the one its block started with.
    GeometryMismatch,
    /// Symbol already held for its block.
    Duplicate,
    /// Symbol for a block that is already decoded or delivered.
    BlockDone,
    /// No room for a new block within the configured memory bound.
    Capacity,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 15] = [
        DropReason::Cobs,
        DropReason::Oversize,
        DropReason::TooShort,
        DropReason::TooLong,
        DropReason::BadMagic,
        DropReason::BadVersion,
        DropReason::BadCrc,
        DropReason::BadMac,
        DropReason::BadHeader,
        DropReason::BadLength,
        DropReason::BadGeometry,
        DropReason::GeometryMismatch,
        DropReason::Duplicate,
        DropReason::BlockDone,
        DropReason::Capacity,
    ];

    /// Stable snake_case name, for logs and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Cobs => "cobs",
            DropReason::Oversize => "oversize",
            DropReason::TooShort => "too_short",
            DropReason::TooLong => "too_long",
            DropReason::BadMagic => "bad_magic",
            DropReason::BadVersion => "bad_version",
            DropReason::BadCrc => "bad_crc",
            DropReason::BadMac => "bad_mac",
            DropReason::BadHeader => "bad_header",
            DropReason::BadLength => "bad_length",
            DropReason::BadGeometry => "bad_geometry",
            DropReason::GeometryMismatch => "geometry_mismatch",
            DropReason::Duplicate => "duplicate",
            DropReason::BlockDone => "block_done",
            DropReason::Capacity => "capacity",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl From<ParseError> for DropReason {
    fn from(error: ParseError) -> Self {
        match error {
            ParseError::TooShort => DropReason::TooShort,
            ParseError::TooLong => DropReason::TooLong,
            ParseError::BadMagic => DropReason::BadMagic,
            ParseError::BadVersion => DropReason::BadVersion,
            ParseError::BadCrc => DropReason::BadCrc,
            ParseError::BadMac => DropReason::BadMac,
            ParseError::BadHeader => DropReason::BadHeader,
            ParseError::BadLength => DropReason::BadLength,
            ParseError::BadGeometry(_) => DropReason::BadGeometry,
        }
    }
}

impl From<FramingError> for DropReason {
    fn from(error: FramingError) -> Self {
        match error {
            FramingError::Cobs => DropReason::Cobs,
            FramingError::Oversize => DropReason::Oversize,
        }
    }
}

/// Drop counts by reason, plus frames accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounters {
    counts: [u64; DropReason::ALL.len()],
}

impl DropCounters {
    /// Counts one drop.
    pub fn record(&mut self, reason: DropReason) {
        let slot = &mut self.counts[reason.index()];
        *slot = slot.saturating_add(1);
    }

    /// Counts `n` drops at once (e.g. when copying counters between threads).
    pub fn add(&mut self, reason: DropReason, n: u64) {
        let slot = &mut self.counts[reason.index()];
        *slot = slot.saturating_add(n);
    }

    /// Drops counted for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts[reason.index()]
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, b| a.saturating_add(*b))
    }

    /// `(reason, count)` for every reason with a non-zero count.
    pub fn nonzero(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.get(*r)))
            .filter(|(_, n)| *n > 0)
    }

    /// Adds another set of counters into this one.
    pub fn merge(&mut self, other: &DropCounters) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_indices_follow_all() {
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
            for other in &DropReason::ALL[i + 1..] {
                assert_ne!(reason.name(), other.name());
            }
        }
    }

    #[test]
    fn record_counts_per_reason() {
        let mut c = DropCounters::default();
        c.record(DropReason::BadMac);
        c.record(DropReason::BadMac);
        c.record(DropReason::BadCrc);
        assert_eq!(c.get(DropReason::BadMac), 2);
        assert_eq!(c.get(DropReason::BadCrc), 1);
        assert_eq!(c.total(), 3);
        assert_eq!(c.nonzero().count(), 2);
    }
}
