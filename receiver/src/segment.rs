//! One segment of an object as the state directory keeps it: decrypted into the object's
//! content file, and described by a fixed-size record appended to the object's `segments` log
//! (the layout is in `state`). The record's size is also what `footprint` charges per segment.

const RECORD_MAGIC: [u8; 4] = *b"SLSR";
/// Bytes of one record in an object's `segments` log.
pub(crate) const RECORD_LEN: usize = 56;

/// A segment decrypted into its object's content file: where, how long, and what binds it
/// to the signed manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredSegment {
    /// Segment number: its plaintext starts at `index × segment_size`.
    pub index: u32,
    /// The segment size its data block carried.
    pub segment_size: u32,
    /// Plaintext bytes.
    pub plain_len: u32,
    /// Length of the age file it was decrypted from.
    pub ciphertext_len: u32,
    /// That age file's header MAC.
    pub header_mac: [u8; 32],
}

impl StoredSegment {
    /// Where its plaintext starts in the content file.
    pub fn offset(&self) -> u64 {
        u64::from(self.index) * u64::from(self.segment_size)
    }

    /// Its record in the object's `segments` log.
    pub(crate) fn to_record(self) -> [u8; RECORD_LEN] {
        let mut record = [0u8; RECORD_LEN];
        record[..4].copy_from_slice(&RECORD_MAGIC);
        record[4..8].copy_from_slice(&self.index.to_le_bytes());
        record[8..12].copy_from_slice(&self.segment_size.to_le_bytes());
        record[12..16].copy_from_slice(&self.plain_len.to_le_bytes());
        record[16..20].copy_from_slice(&self.ciphertext_len.to_le_bytes());
        record[20..52].copy_from_slice(&self.header_mac);
        let crc = sluice_protocol::wire::crc32c(&record[..52]);
        record[52..].copy_from_slice(&crc.to_le_bytes());
        record
    }

    /// The segment a record names, if the record is whole and undamaged.
    pub(crate) fn from_record(record: &[u8]) -> Option<Self> {
        let record: &[u8; RECORD_LEN] = record.try_into().ok()?;
        let u32_at = |at: usize| {
            let mut bytes = [0u8; 4];
            bytes.copy_from_slice(&record[at..at + 4]);
            u32::from_le_bytes(bytes)
        };
        if record[..4] != RECORD_MAGIC || sluice_protocol::wire::crc32c(&record[..52]) != u32_at(52)
        {
            return None;
        }
        let mut header_mac = [0u8; 32];
        header_mac.copy_from_slice(&record[20..52]);
        let segment = StoredSegment {
            index: u32_at(4),
            segment_size: u32_at(8),
            plain_len: u32_at(12),
            ciphertext_len: u32_at(16),
            header_mac,
        };
        (segment.plain_len <= segment.segment_size).then_some(segment)
    }
}

/// A segment of 16 bytes for tests: `plain_len` of them used, its header MAC from `index`.
#[cfg(test)]
pub(crate) fn sample(index: u32, plain_len: u32) -> StoredSegment {
    StoredSegment {
        index,
        segment_size: 16,
        plain_len,
        ciphertext_len: 300,
        header_mac: [index as u8; 32],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(index: u32, plain_len: u32) -> StoredSegment {
        sample(index, plain_len)
    }

    #[test]
    fn records_refuse_damage() {
        let record = segment(3, 9).to_record();
        assert_eq!(StoredSegment::from_record(&record), Some(segment(3, 9)));
        let mut flipped = record;
        flipped[30] ^= 1;
        assert_eq!(StoredSegment::from_record(&flipped), None);
        assert_eq!(StoredSegment::from_record(&record[..55]), None);
        // A plaintext longer than its segment size is not a record this receiver writes.
        assert_eq!(
            StoredSegment::from_record(&segment(3, 17).to_record()),
            None
        );
    }
}
