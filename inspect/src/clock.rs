//! The time one file's inspection may take (the policy's `inspect_timeout`).
//!
//! Inspection runs where the receiver publishes, so one slow file holds back the files behind
//! it. Bounds on sizes, members and expansion keep honest work proportional to the file; the
//! clock is the backstop for whatever work a hostile file still finds: a deadline checked by
//! every read of the file and of its archive members ([`Timed`]), at each member and at each
//! entry of an archive's directory. Once it has passed, every later read fails too, so the
//! inspectors unwind at once, and the file's refusal is [`Refusal::TooSlow`], naming the
//! file or member that was being read — whatever error an inspector made of its failed read.

use std::cell::RefCell;
use std::io::{self, Read, Seek, SeekFrom};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::refusal::Refusal;

/// The default `inspect_timeout`, as the external scanner's. The densest pickle opcodes scan
/// at about 300 MiB/s on a 2-core machine (README, "What the gate costs"), so 120 s covers
/// some 35 GiB of them; a real checkpoint's pickle is mostly payload, skipped at memory
/// speed, and its stored tensors are read only at their ends.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// One file's deadline, shared by the readers of the file and its members.
#[derive(Debug, Clone)]
pub struct Clock {
    /// `None` if the limit is too far away to be reached.
    deadline: Option<Instant>,
    limit: Duration,
    /// Where the deadline was first met, once it was.
    expired_at: Rc<RefCell<Option<String>>>,
}

impl Clock {
    /// A deadline `limit` from now.
    pub fn new(limit: Duration) -> Clock {
        Clock {
            deadline: Instant::now().checked_add(limit),
            limit,
            expired_at: Rc::default(),
        }
    }

    /// Refuses once the deadline has passed; `shown` is what was being inspected.
    pub fn check(&self, shown: &str) -> Result<(), Refusal> {
        if let Some(at) = self.expired_at.borrow().as_deref() {
            return Err(self.refusal(at));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            *self.expired_at.borrow_mut() = Some(shown.to_string());
            return Err(self.refusal(shown));
        }
        Ok(())
    }

    /// The refusal, if the deadline was met (by [`Clock::check`] or a [`Timed`] read).
    pub fn expired(&self) -> Option<Refusal> {
        self.expired_at
            .borrow()
            .as_deref()
            .map(|at| self.refusal(at))
    }

    fn refusal(&self, at: &str) -> Refusal {
        Refusal::TooSlow {
            limit: self.limit,
            at: at.to_string(),
        }
    }
}

/// A reader whose every read first checks the clock (a failed check is an I/O error of kind
/// `TimedOut`; the clock remembers it).
#[derive(Debug)]
pub struct Timed<R> {
    inner: R,
    clock: Clock,
    shown: String,
}

impl<R> Timed<R> {
    /// `inner`, read on `clock`'s time; `shown` names it in the refusal.
    pub fn new(inner: R, clock: Clock, shown: &str) -> Self {
        Timed {
            inner,
            clock,
            shown: shown.to_string(),
        }
    }
}

impl<R: Read> Read for Timed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.clock
            .check(&self.shown)
            .map_err(|e| io::Error::new(io::ErrorKind::TimedOut, e.to_string()))?;
        self.inner.read(buf)
    }
}

impl<R: Seek> Seek for Timed<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fail_once_the_deadline_has_passed_and_the_first_place_is_kept() {
        let clock = Clock::new(Duration::from_millis(20));
        let mut r = Timed::new(&[1u8; 64][..], clock.clone(), "a.zip!m");
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).unwrap(), 8);
        assert!(clock.expired().is_none());
        std::thread::sleep(Duration::from_millis(30));
        let err = r.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // Later checks name where the time ran out, not where they are.
        assert_eq!(
            clock.check("a.zip").unwrap_err().to_string(),
            "inspection took longer than 0.02 s (in a.zip!m)"
        );
        assert_eq!(
            clock.expired().unwrap().to_string(),
            "inspection took longer than 0.02 s (in a.zip!m)"
        );
        let long = Clock::new(Duration::from_secs(120));
        assert!(long.check("x").is_ok());
        assert_eq!(
            long.refusal("x").to_string(),
            "inspection took longer than 120 s (in x)"
        );
        // A limit too far away never expires (and does not overflow).
        assert!(Clock::new(Duration::MAX).check("x").is_ok());
    }
}
