//! Which objects each sender run announced, and which of them showed up at all.
//!
//! A block the receiver has heard of is reported when it stalls; an object of which no frame
//! arrived (a small file whose few frames fell into one loss burst) would otherwise vanish
//! without a word. Senders send objects in id order and their heartbeats say how many have
//! had a symbol on the link (`Heartbeat::objects`), so every id below that with no block seen
//! here was lost whole — or could not be read by the sender, which reports it on its side.

use std::collections::HashMap;
use std::ops::Range;

use rangemap::RangeSet;
use sluice_protocol::wire::{ObjectId, SessionId};

use crate::state::ObjectKey;

/// Sender runs tracked (heartbeats are authenticated; this bounds a misbehaving key holder).
const MAX_SESSIONS: usize = 1024;
/// Separate runs of seen ids kept per session before it stops being tracked: objects arrive
/// in order, so an honest transfer keeps a handful of runs.
const MAX_RUNS: usize = 65_536;

#[derive(Debug, Default)]
struct Session {
    /// Highest `objects` any heartbeat of this run carried.
    announced: u64,
    /// Ids of which at least one block arrived.
    seen: RangeSet<u64>,
    /// Separate runs in `seen`.
    runs: usize,
    /// Too fragmented to track: no longer reported on.
    untracked: bool,
}

/// Objects announced by senders against objects seen.
#[derive(Debug, Default)]
pub(crate) struct Census {
    sessions: HashMap<u64, Session>,
}

/// Objects announced but never seen.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Missing {
    /// How many.
    pub count: u64,
    /// The first of them, by session and id (at most the limit asked for).
    pub first: Vec<ObjectKey>,
}

impl Census {
    fn session(&mut self, session: SessionId) -> Option<&mut Session> {
        if self.sessions.len() >= MAX_SESSIONS && !self.sessions.contains_key(&session.0) {
            return None;
        }
        Some(self.sessions.entry(session.0).or_default())
    }

    /// A heartbeat said `objects` ids of `session` have had a symbol on the link.
    pub fn announced(&mut self, session: SessionId, objects: u64) {
        if let Some(s) = self.session(session) {
            s.announced = s.announced.max(objects);
        }
    }

    /// A block of `object` arrived.
    pub fn seen(&mut self, object: ObjectKey) {
        if let Some(s) = self.session(object.session) {
            let id = object.object.0;
            if s.untracked || s.seen.contains(&id) {
                return;
            }
            let joins_left = id > 0 && s.seen.contains(&(id - 1));
            let joins_right = s.seen.contains(&id.saturating_add(1));
            match (joins_left, joins_right) {
                (false, false) => s.runs += 1,
                (true, true) => s.runs = s.runs.saturating_sub(1),
                _ => {}
            }
            s.seen.insert(id..id.saturating_add(1));
            if s.runs > MAX_RUNS {
                s.untracked = true;
                s.seen = RangeSet::new();
            }
        }
    }

    /// Announced objects never seen, leaving out those `known` says the receiver has
    /// (delivered or partly stored by an earlier run). `known` is asked about at most
    /// `check_limit` ids; ids past that count as missing.
    pub fn missing(&self, known: impl Fn(ObjectKey) -> bool, check_limit: usize) -> Missing {
        let mut missing = Missing::default();
        let mut checked = 0usize;
        let mut sessions: Vec<_> = self.sessions.iter().collect();
        sessions.sort_by_key(|(id, _)| **id);
        for (&session, s) in sessions {
            if s.untracked || s.announced == 0 {
                continue;
            }
            let gaps: Vec<Range<u64>> = s.seen.gaps(&(0..s.announced)).collect();
            for gap in gaps {
                for id in gap.clone() {
                    if checked >= check_limit {
                        // Count the rest of this gap unchecked.
                        missing.count += gap.end - id;
                        break;
                    }
                    checked += 1;
                    let key = ObjectKey {
                        session: SessionId(session),
                        object: ObjectId(id),
                    };
                    if !known(key) {
                        missing.count += 1;
                        if missing.first.len() < check_limit.min(20) {
                            missing.first.push(key);
                        }
                    }
                }
            }
        }
        missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(session: u64, object: u64) -> ObjectKey {
        ObjectKey {
            session: SessionId(session),
            object: ObjectId(object),
        }
    }

    #[test]
    fn announced_ids_never_seen_are_missing_unless_known() {
        let mut c = Census::default();
        for id in [0, 1, 2, 4, 7] {
            c.seen(key(1, id));
        }
        c.announced(SessionId(1), 6);
        // A later, lower heartbeat (reordered) does not shrink the announcement.
        c.announced(SessionId(1), 3);
        // Session 2 announced nothing yet: nothing can be called missing there.
        c.seen(key(2, 5));
        let m = c.missing(|_| false, 100);
        assert_eq!(m.count, 2);
        assert_eq!(m.first, [key(1, 3), key(1, 5)]);
        let m = c.missing(|k| k == key(1, 5), 100);
        assert_eq!(m.first, [key(1, 3)]);
        c.seen(key(1, 3));
        c.seen(key(1, 5));
        assert_eq!(c.missing(|_| false, 100), Missing::default());
    }

    #[test]
    fn a_huge_announcement_is_counted_without_checking_every_id() {
        let mut c = Census::default();
        c.seen(key(9, 0));
        c.announced(SessionId(9), 1 << 40);
        let m = c.missing(|_| false, 10);
        assert_eq!(m.count, (1 << 40) - 1);
        assert_eq!(m.first.len(), 10);
    }

    #[test]
    fn sessions_and_fragmentation_are_bounded() {
        let mut c = Census::default();
        for s in 0..(MAX_SESSIONS as u64 + 10) {
            c.announced(SessionId(s), 1);
        }
        assert_eq!(c.sessions.len(), MAX_SESSIONS);
        // Every other id of one session: too many runs, so the session stops being judged.
        for id in (0..(2 * MAX_RUNS as u64 + 4)).step_by(2) {
            c.seen(key(0, id));
        }
        c.announced(SessionId(0), 1 << 20);
        let m = c.missing(|_| false, usize::MAX);
        // Sessions 1.. announced one object each and sent none of it.
        assert_eq!(m.count, MAX_SESSIONS as u64 - 1);
    }
}
