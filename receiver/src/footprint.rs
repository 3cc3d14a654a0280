//! What an incomplete object holds on disk, as `du` counts it — the figure `--max-state`
//! bounds. Pure arithmetic over lengths (no file is looked at): the delivery core asks an
//! object's [`Footprint`] how much each write will add before it hands the write out, and
//! evicts on that figure.
//!
//! ```text
//!  objects/<name>/       a directory: one block, and its name in objects/
//!      segments          56 bytes per record, appended: whole blocks
//!      manifest          the envelope: whole blocks
//!      partial-<i>       saved symbols: whole blocks, each time they are saved
//!  staging/<name>        the content file: every block a segment's plaintext touches (a
//!                        sparse file holds no others), and its name in staging/
//! ```
//!
//! Every file counts in whole blocks of the file system's allocation unit ([`Disk`], taken
//! from `statvfs` of the state directory at start), every name [`NAME_BYTES`] of its
//! directory's blocks. Where a file system stores less (small files inline, compression) the
//! figure is above `du`'s; it is never below it for what the receiver writes, except for
//! what is not charged to any one object: the `objects/` and `staging/` directories
//! themselves, which keep their largest size (README states that slack), and the extent
//! blocks of a content file written in more than four pieces (ext4: one 4 KiB block per
//! ~340 pieces of at least 64 KiB each, under 0.02%).

use crate::segment::RECORD_LEN;

/// What one name costs in its directory's blocks: an ext4 entry of an object's name (up to
/// 37 bytes) takes up to 48 bytes, and a hashed directory's blocks are only half full after
/// they split.
pub const NAME_BYTES: u64 = 96;

/// The allocation unit of the file system holding the state directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disk {
    block: u64,
}

impl Disk {
    /// Taken when the file system does not say (the common one).
    pub const DEFAULT_BLOCK: u64 = 4096;

    /// A file system allocating `block` bytes at a time (`statvfs`'s `f_frsize`); 0 (not
    /// known) is the default, and the figure is kept between 512 bytes and 1 MiB.
    pub fn new(block: u64) -> Self {
        let block = if block == 0 {
            Self::DEFAULT_BLOCK
        } else {
            block.clamp(512, 1 << 20)
        };
        Disk { block }
    }

    /// Bytes per block.
    pub fn block(&self) -> u64 {
        self.block
    }

    /// What a file of `len` bytes takes: whole blocks.
    pub fn file(&self, len: u64) -> u64 {
        len.div_ceil(self.block).saturating_mul(self.block)
    }

    /// The blocks `len` bytes written at `offset` of a file touch.
    pub fn span(&self, offset: u64, len: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        let first = offset / self.block;
        let end = offset.saturating_add(len).div_ceil(self.block);
        (end - first).saturating_mul(self.block)
    }
}

impl Default for Disk {
    fn default() -> Self {
        Disk::new(Self::DEFAULT_BLOCK)
    }
}

/// One incomplete object's disk footprint so far. Each write returns what it added; the
/// total is [`charged`](Self::charged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Footprint {
    charged: u64,
    /// Its directory under `objects/` exists (charged).
    dir: bool,
    /// Its content file under `staging/` exists (charged).
    content: bool,
    /// Bytes in its `segments` log.
    log: u64,
}

impl Footprint {
    /// What an earlier run left, as measured at start: `du` bytes of its directory, its files
    /// and its content file, and the `names` they take; `log` bytes of segment records, and
    /// whether there is a content file.
    pub fn measured(du: u64, names: u64, log: u64, content: bool) -> Self {
        Footprint {
            charged: du.saturating_add(names.saturating_mul(NAME_BYTES)),
            dir: true,
            content,
            log,
        }
    }

    /// Bytes charged so far.
    pub fn charged(&self) -> u64 {
        self.charged
    }

    /// A segment of `len` plaintext bytes written at `offset` of the content file, and its
    /// record appended to the log.
    pub fn segment(&mut self, disk: Disk, offset: u64, len: u64) -> u64 {
        let mut added = self.dir(disk) + disk.span(offset, len);
        if !self.content {
            self.content = true;
            added += NAME_BYTES;
        }
        if self.log == 0 {
            added += NAME_BYTES;
        }
        let log = self.log.saturating_add(RECORD_LEN as u64);
        added += disk.file(log) - disk.file(self.log);
        self.log = log;
        self.charge(added)
    }

    /// A file of `len` bytes written whole in the object's directory (the manifest, saved
    /// symbols). Saved again, it is charged again: the figure may run above `du` until the
    /// object leaves, never below.
    pub fn file(&mut self, disk: Disk, len: u64) -> u64 {
        let added = self.dir(disk) + NAME_BYTES + disk.file(len);
        self.charge(added)
    }

    /// The object's directory, the first time: a block, and its name in `objects/`.
    fn dir(&mut self, disk: Disk) -> u64 {
        if self.dir {
            0
        } else {
            self.dir = true;
            disk.block() + NAME_BYTES
        }
    }

    fn charge(&mut self, added: u64) -> u64 {
        self.charged = self.charged.saturating_add(added);
        added
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_count_in_whole_blocks_and_writes_in_the_blocks_they_touch() {
        let disk = Disk::new(4096);
        assert_eq!(
            (disk.file(0), disk.file(1), disk.file(4096)),
            (0, 4096, 4096)
        );
        assert_eq!(disk.file(4097), 8192);
        assert_eq!(disk.span(0, 0), 0);
        assert_eq!(disk.span(0, 1), 4096);
        // Straddling a block boundary touches both blocks.
        assert_eq!(disk.span(4095, 2), 8192);
        assert_eq!(disk.span(65536, 65536), 65536);
        // What the file system does not say is the common block; nonsense is clamped.
        assert_eq!(Disk::new(0).block(), 4096);
        assert_eq!(Disk::new(1).block(), 512);
        assert_eq!(Disk::new(1 << 40).block(), 1 << 20);
    }

    #[test]
    fn a_tiny_object_costs_its_directory_its_files_and_their_names() {
        let disk = Disk::new(4096);
        let mut f = Footprint::default();
        // One byte of plaintext: the directory and its name, the content file's block and
        // name, the log's block and name.
        let first = f.segment(disk, 0, 1);
        assert_eq!(first, 3 * 4096 + 3 * NAME_BYTES);
        // A second segment: its content block; its record fits in the log's block.
        assert_eq!(f.segment(disk, 65536, 1), 4096);
        // The 74th record needs the log's second block.
        let mut records = 2;
        let mut grown = 0;
        while records < 74 {
            grown += f.segment(disk, 0, 0);
            records += 1;
        }
        assert_eq!(
            grown, 4096,
            "73 records fit in 4096 bytes, the 74th does not"
        );
        // The manifest: a block and a name; the directory is not charged twice.
        assert_eq!(f.file(disk, 300), 4096 + NAME_BYTES);
        assert_eq!(f.charged(), first + 4096 + 4096 + 4096 + NAME_BYTES);
    }

    #[test]
    fn what_an_earlier_run_left_is_charged_as_measured_and_grows_from_there() {
        let disk = Disk::new(4096);
        // Measured: 12 KiB in three names; 56 bytes of records and a content file.
        let mut f = Footprint::measured(12288, 3, 56, true);
        assert_eq!(f.charged(), 12288 + 3 * NAME_BYTES);
        // Its directory, content file and log exist: only the new block is added.
        assert_eq!(f.segment(disk, 65536, 100), 4096);
    }
}
