//! The sender's freshness numbers: one sequence per signing key that only grows, across
//! restarts, for the manifests' `sequence` field (protocol/SPEC.md §8).
//!
//! Each number is `max(clock in µs, last issued + 1)`. The highest number that may have been
//! issued is kept in `<dir>/sequence-<KEYID>` (flock'ed while in use): a reserve of
//! [`RESERVE`] numbers is written and fsynced before any of them is used, so a crash or a
//! clock set back never makes the sender reuse a number, and the file is written once per
//! million manifests. Without a writable directory the clock alone is used (with a warning).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::keys::KeyId;

/// Numbers reserved per write of the sequence file.
pub const RESERVE: u64 = 1 << 20;

/// A source of freshness numbers for one signing key.
#[derive(Debug)]
pub struct Sequence {
    /// The locked sequence file, if there is one.
    file: Option<File>,
    next: u64,
    /// Numbers up to here are covered by what the file says (with no file: unlimited).
    reserved_to: u64,
}

fn clock_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Sequence {
    /// The sequence of `key`, kept in `dir`; falls back to the clock alone (warning once) if
    /// the file cannot be opened and locked.
    pub fn open(dir: &Path, key: KeyId) -> Sequence {
        match Self::open_file(dir, key) {
            Ok(sequence) => sequence,
            Err(e) => {
                tracing::warn!(
                    dir = %dir.display(),
                    "cannot keep the manifest sequence durably ({e}); using the clock alone, so \
                     a clock set back could make a receiver refuse new versions as stale"
                );
                Sequence {
                    file: None,
                    next: clock_micros(),
                    reserved_to: u64::MAX,
                }
            }
        }
    }

    fn open_file(dir: &Path, key: KeyId) -> io::Result<Sequence> {
        std::fs::create_dir_all(dir)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(format!("sequence-{key}")))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error()))?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let last = match text.trim() {
            "" => 0,
            n => n.parse::<u64>().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("sequence file holds {n:?}"),
                )
            })?,
        };
        let mut sequence = Sequence {
            file: Some(file),
            next: clock_micros().max(last.saturating_add(1)),
            reserved_to: 0,
        };
        sequence.reserve()?;
        Ok(sequence)
    }

    /// Writes (and syncs) a new reserve starting at `next`.
    fn reserve(&mut self) -> io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let to = self.next.saturating_add(RESERVE - 1);
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{to}")?;
        file.sync_all()?;
        self.reserved_to = to;
        Ok(())
    }

    /// The next number: above every number issued before for this key.
    pub fn take(&mut self) -> io::Result<u64> {
        let number = self.next.max(clock_micros());
        if number > self.reserved_to {
            self.next = number;
            self.reserve()?;
        }
        self.next = number.saturating_add(1);
        Ok(number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_grow_across_restarts_even_with_the_clock_behind() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyId(0xabc);
        let mut seq = Sequence::open(dir.path(), key);
        let a = seq.take().unwrap();
        let b = seq.take().unwrap();
        assert!(b > a);
        drop(seq);
        // A restart continues past the whole reserve of the last run.
        let file = dir.path().join(format!("sequence-{key}"));
        let reserved: u64 = std::fs::read_to_string(&file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(reserved >= b);
        let mut again = Sequence::open(dir.path(), key);
        assert!(again.take().unwrap() > reserved);
        drop(again);
        // A reserve far ahead of the clock (a clock set back) is still respected.
        std::fs::write(&file, format!("{}\n", u64::MAX / 2)).unwrap();
        let mut ahead = Sequence::open(dir.path(), key);
        assert!(ahead.take().unwrap() > u64::MAX / 2);
    }

    #[test]
    fn another_key_has_its_own_sequence_and_a_bad_dir_falls_back_to_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Sequence::open(dir.path(), KeyId(1));
        let mut b = Sequence::open(dir.path(), KeyId(2));
        assert!(a.take().unwrap() > 0 && b.take().unwrap() > 0);
        let blocked = dir.path().join("file");
        std::fs::write(&blocked, b"not a dir").unwrap();
        let mut clock = Sequence::open(&blocked, KeyId(3));
        let x = clock.take().unwrap();
        assert!(clock.take().unwrap() > x);
    }
}
