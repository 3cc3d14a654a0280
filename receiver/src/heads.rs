//! Which senders' audit-log heads go into the receiver's audit log: each new head of a
//! session, at most [`HEADS_PER_WINDOW`] per [`HEADS_WINDOW`]. Senders repeat their head after
//! every heartbeat; without the limit a key holder could fill the audit log at link rate.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sluice_protocol::wire::{AuditHead, SessionId};

/// New heads recorded per window, all sessions together (an honest sender's head changes at
/// most once per heartbeat interval, one second by default).
pub(crate) const HEADS_PER_WINDOW: u32 = 50;
pub(crate) const HEADS_WINDOW: Duration = Duration::from_secs(10);
/// Sessions whose last head is remembered.
const MAX_SESSIONS: usize = 1024;

/// The last head recorded per session, and the window's budget.
#[derive(Debug, Default)]
pub(crate) struct SenderHeads {
    last: HashMap<SessionId, (u64, [u8; 32])>,
    window_start: Option<Instant>,
    in_window: u32,
    /// New heads not recorded because the window's budget was spent.
    pub dropped: u64,
}

impl SenderHeads {
    /// Whether `head` is to be recorded now: new for its session, and within the budget.
    pub fn observe(&mut self, head: AuditHead, now: Instant) -> bool {
        let value = (head.seq, head.hash);
        if self.last.get(&head.session) == Some(&value) {
            return false;
        }
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < HEADS_WINDOW => {}
            _ => {
                self.window_start = Some(now);
                self.in_window = 0;
            }
        }
        if self.in_window >= HEADS_PER_WINDOW {
            self.dropped += 1;
            return false;
        }
        self.in_window += 1;
        if self.last.len() < MAX_SESSIONS || self.last.contains_key(&head.session) {
            self.last.insert(head.session, value);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(session: u64, seq: u64) -> AuditHead {
        AuditHead {
            session: SessionId(session),
            seq,
            hash: [seq as u8; 32],
        }
    }

    #[test]
    fn each_new_head_once_and_a_flood_within_the_budget() {
        let mut heads = SenderHeads::default();
        let t = Instant::now();
        assert!(heads.observe(head(1, 5), t));
        assert!(
            !heads.observe(head(1, 5), t),
            "repeated after each heartbeat"
        );
        assert!(heads.observe(head(1, 6), t));
        assert!(heads.observe(head(2, 6), t), "another sender");
        // A key holder inventing sessions: the window's budget, then nothing until it rolls.
        let recorded = (100..1000)
            .filter(|s| heads.observe(head(*s, 1), t))
            .count();
        assert_eq!(recorded as u32, HEADS_PER_WINDOW - 3);
        assert_eq!(heads.dropped, 900 - u64::from(HEADS_PER_WINDOW - 3));
        assert!(heads.observe(head(1, 7), t + HEADS_WINDOW));
    }
}
