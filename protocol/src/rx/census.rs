//! Which objects each sender run announced, and which of them showed up at all.
//!
//! A block the receiver has heard of is reported when it stalls; an object of which no frame
//! arrived (a small file whose few frames fell into one loss burst) would otherwise vanish
//! without a word. Senders send objects in id order and their heartbeats say how many have
//! had a symbol on the link ([`Heartbeat::objects`](crate::wire::Heartbeat)), so every id
//! below that with no block seen here was lost whole — or could not be read by the sender,
//! which reports it on its side.
//!
//! Pure bookkeeping with bounded memory: at most [`MAX_SESSIONS`] sender runs, each with at
//! most [`MAX_RUNS`] separate runs of seen ids (objects arrive in order, so an honest transfer
//! keeps a handful; a session fragmented beyond that stops being judged).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::wire::{ObjectId, SessionId};

/// Sender runs tracked (heartbeats are authenticated; this bounds a misbehaving key holder).
pub const MAX_SESSIONS: usize = 1024;
/// Separate runs of seen ids kept per session before it stops being tracked.
pub const MAX_RUNS: usize = 65_536;

/// Disjoint, non-adjacent half-open ranges of ids, by start.
#[derive(Debug, Default)]
struct RangeSet {
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    fn contains(&self, id: u64) -> bool {
        self.ranges
            .range(..=id)
            .next_back()
            .is_some_and(|(_, end)| id < *end)
    }

    /// Adds `id` (not yet contained), merging with neighbours.
    fn insert(&mut self, id: u64) {
        let end = id.saturating_add(1);
        let left = self
            .ranges
            .range(..id)
            .next_back()
            .filter(|(_, e)| **e == id)
            .map(|(s, _)| *s);
        let right_end = self.ranges.remove(&end);
        let new_end = right_end.unwrap_or(end);
        match left {
            Some(start) => {
                self.ranges.insert(start, new_end);
            }
            None => {
                self.ranges.insert(id, new_end);
            }
        }
    }

    fn len(&self) -> usize {
        self.ranges.len()
    }

    /// The ranges of `0..limit` not in the set.
    fn gaps(&self, limit: u64) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut at = 0;
        for (&start, &end) in &self.ranges {
            if start >= limit {
                break;
            }
            if start > at {
                gaps.push((at, start));
            }
            at = end;
        }
        if at < limit {
            gaps.push((at, limit));
        }
        gaps
    }
}

#[derive(Debug, Default)]
struct Session {
    /// Highest `objects` any heartbeat of this run carried.
    announced: u64,
    /// Ids of which at least one block arrived.
    seen: RangeSet,
    /// Too fragmented to track: no longer reported on.
    untracked: bool,
}

/// Objects announced by senders against objects seen.
#[derive(Debug, Default)]
pub struct Census {
    sessions: BTreeMap<SessionId, Session>,
}

/// Objects announced but never seen.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Missing {
    /// How many.
    pub count: u64,
    /// The first of them, by session and id (at most the limit asked for, and 20).
    pub first: Vec<(SessionId, ObjectId)>,
}

impl Census {
    fn session(&mut self, session: SessionId) -> Option<&mut Session> {
        if self.sessions.len() >= MAX_SESSIONS && !self.sessions.contains_key(&session) {
            return None;
        }
        Some(self.sessions.entry(session).or_default())
    }

    /// A heartbeat said `objects` ids of `session` have had a symbol on the link.
    pub fn announced(&mut self, session: SessionId, objects: u64) {
        if let Some(s) = self.session(session) {
            s.announced = s.announced.max(objects);
        }
    }

    /// A block of `object` arrived.
    pub fn seen(&mut self, session: SessionId, object: ObjectId) {
        let Some(s) = self.session(session) else {
            return;
        };
        if s.untracked || s.seen.contains(object.0) {
            return;
        }
        s.seen.insert(object.0);
        if s.seen.len() > MAX_RUNS {
            s.untracked = true;
            s.seen = RangeSet::default();
        }
    }

    /// Announced objects never seen, leaving out those `known` says the receiver has
    /// (delivered, or partly stored by an earlier run). `known` is asked about at most
    /// `check_limit` ids; ids past that count as missing.
    pub fn missing(
        &self,
        mut known: impl FnMut(SessionId, ObjectId) -> bool,
        check_limit: usize,
    ) -> Missing {
        let mut missing = Missing::default();
        let mut checked = 0usize;
        for (&session, s) in &self.sessions {
            if s.untracked || s.announced == 0 {
                continue;
            }
            for (start, end) in s.seen.gaps(s.announced) {
                for id in start..end {
                    if checked >= check_limit {
                        // Count the rest of this gap unchecked.
                        missing.count += end - id;
                        break;
                    }
                    checked += 1;
                    if !known(session, ObjectId(id)) {
                        missing.count += 1;
                        if missing.first.len() < check_limit.min(20) {
                            missing.first.push((session, ObjectId(id)));
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

    fn seen(c: &mut Census, session: u64, id: u64) {
        c.seen(SessionId(session), ObjectId(id));
    }

    fn key(session: u64, id: u64) -> (SessionId, ObjectId) {
        (SessionId(session), ObjectId(id))
    }

    #[test]
    fn announced_ids_never_seen_are_missing_unless_known() {
        let mut c = Census::default();
        for id in [0, 1, 2, 4, 7] {
            seen(&mut c, 1, id);
        }
        c.announced(SessionId(1), 6);
        // A later, lower heartbeat (reordered) does not shrink the announcement.
        c.announced(SessionId(1), 3);
        // Session 2 announced nothing yet: nothing can be called missing there.
        seen(&mut c, 2, 5);
        let m = c.missing(|_, _| false, 100);
        assert_eq!(m.count, 2);
        assert_eq!(m.first, [key(1, 3), key(1, 5)]);
        let m = c.missing(|s, o| (s, o) == key(1, 5), 100);
        assert_eq!(m.first, [key(1, 3)]);
        seen(&mut c, 1, 3);
        seen(&mut c, 1, 5);
        assert_eq!(c.missing(|_, _| false, 100), Missing::default());
    }

    #[test]
    fn a_huge_announcement_is_counted_without_checking_every_id() {
        let mut c = Census::default();
        seen(&mut c, 9, 0);
        c.announced(SessionId(9), 1 << 40);
        let m = c.missing(|_, _| false, 10);
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
            seen(&mut c, 0, id);
        }
        c.announced(SessionId(0), 1 << 20);
        let m = c.missing(|_, _| false, usize::MAX);
        // Sessions 1.. announced one object each and sent none of it.
        assert_eq!(m.count, MAX_SESSIONS as u64 - 1);
    }

    #[test]
    fn ranges_merge_in_any_insertion_order() {
        let mut set = RangeSet::default();
        for id in [5, 3, 4, 10, 0, 1, 2, 9] {
            set.insert(id);
        }
        assert_eq!(set.len(), 2);
        assert!((0..=5).all(|i| set.contains(i)) && set.contains(9) && set.contains(10));
        assert!(!set.contains(6) && !set.contains(11));
        assert_eq!(set.gaps(12), [(6, 9), (11, 12)]);
    }
}
