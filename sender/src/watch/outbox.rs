//! The outbox: which top-level entries are items, what state each is in on disk (its
//! fingerprint), and when one is settled enough to send.
//!
//! Writers either rename a finished item into the outbox (ready at once) or write it in place
//! (ready once its fingerprint has not changed for `--settle`). Names starting with `.` or
//! ending in `.partial` are never items: that is where writers put work in progress, and
//! where the daemon keeps `.sent/`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sluice_common::beneath::Dir;

use crate::objects::{self, Skipped, Source, SourceObject};

/// Whether a top-level name is never an item.
pub fn ignored(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".partial")
}

/// What an item looks like on disk: every entry's name, kind, size, mtime and inode. Equal
/// fingerprints mean nothing visible changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(pub String);

/// An item as seen by one look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Look {
    pub fingerprint: Fingerprint,
    /// Bytes of file content.
    pub bytes: u64,
}

/// An item listed: the objects it would be sent as (each file pinned to the inode seen) and
/// what in it would not be sent.
#[derive(Debug, Clone)]
pub struct Listing {
    pub objects: Vec<SourceObject>,
    pub skipped: Vec<Skipped>,
}

impl Listing {
    /// Lists the entry `name` of the outbox, never following a link (see [`objects`]).
    pub fn of(outbox: &Arc<Dir>, name: &str, shown: &Path) -> Listing {
        let (objects, skipped) = objects::enumerate_entry(outbox, name, &shown.join(name));
        Listing { objects, skipped }
    }

    /// Its fingerprint and size.
    pub fn look(&self) -> Look {
        let mut hash = Sha256::new();
        let mut bytes = 0u64;
        for object in &self.objects {
            hash.update(object.path.as_bytes());
            hash.update([0]);
            let identity = match &object.source {
                Source::File(file) => {
                    bytes += object.size.unwrap_or(0);
                    hash.update([2]);
                    file.identity()
                }
                _ => {
                    hash.update([1]);
                    (0, 0)
                }
            };
            for n in [
                object.size.unwrap_or(0),
                identity.0,
                identity.1,
                object.mode.into(),
            ] {
                hash.update(n.to_le_bytes());
            }
            hash.update(object.mtime_secs.to_le_bytes());
            hash.update(object.mtime_nanos.to_le_bytes());
        }
        for skipped in &self.skipped {
            hash.update([3]);
            hash.update(skipped.path.as_os_str().as_encoded_bytes());
            hash.update([0]);
        }
        Look {
            fingerprint: Fingerprint(hex::encode(&hash.finalize()[..16])),
            bytes,
        }
    }
}

/// The names of the candidate items in the outbox (not ignored; not UTF-8 ones, which the
/// receiver would refuse, are reported in `strange`).
pub fn scan(outbox: &Dir) -> io::Result<(Vec<String>, Vec<OsString>)> {
    let (mut names, strange) = outbox.list()?;
    names.retain(|name| !ignored(name));
    Ok((names, strange))
}

/// Which entry a top-level name is: device, inode and last status change (a rename or write
/// changes it, and a new file under a reused inode number has another).
pub type Identity = (u64, u64, i64, u32);

/// The identity of what `fstatat` saw.
pub fn identity(entry: &sluice_common::beneath::Entry) -> Identity {
    (
        entry.device,
        entry.inode,
        entry.ctime_secs,
        entry.ctime_nanos,
    )
}

/// One item waiting to settle.
#[derive(Debug, Clone)]
struct Waiting {
    look: Option<Look>,
    /// When its fingerprint was last seen to change (or it appeared).
    stable_since: Instant,
    /// Renamed into the outbox: ready without waiting.
    /// Renamed into the outbox as this entry: ready once looked at, while it is still the one.
    renamed: Option<Identity>,
    /// Order of first sight: items go out in arrival order.
    arrival: u64,
}

/// Items not yet taken, and when each is ready (sans I/O: looks and times are given).
#[derive(Debug)]
pub struct Settling {
    settle: Duration,
    items: BTreeMap<String, Waiting>,
    arrivals: u64,
}

impl Settling {
    pub fn new(settle: Duration) -> Self {
        Settling {
            settle,
            items: BTreeMap::new(),
            arrivals: 0,
        }
    }

    fn entry(&mut self, name: &str, now: Instant) -> &mut Waiting {
        let arrivals = &mut self.arrivals;
        self.items.entry(name.to_string()).or_insert_with(|| {
            *arrivals += 1;
            Waiting {
                look: None,
                stable_since: now,
                renamed: None,
                arrival: *arrivals,
            }
        })
    }

    /// A look at `name`, the entry `identity`: a changed fingerprint starts its settle time
    /// again; a renamed item written to afterwards, or no longer the entry that was renamed in
    /// (another writer's file made under that name since), must settle like any other.
    pub fn observe(&mut self, name: &str, look: Look, identity: Identity, now: Instant) {
        let item = self.entry(name, now);
        if item.renamed.is_some_and(|renamed| renamed != identity) {
            item.renamed = None;
        }
        if item.look.as_ref() != Some(&look) {
            if item.look.is_some() {
                item.renamed = None;
            }
            item.look = Some(look);
            item.stable_since = now;
        }
    }

    /// `name` was renamed into the outbox as the entry `identity`: complete, ready once looked
    /// at (as long as it is still that entry).
    pub fn renamed_in(&mut self, name: &str, identity: Identity, now: Instant) {
        let item = self.entry(name, now);
        item.renamed = Some(identity);
        item.look = None;
    }

    /// Forgets items not in `present` (gone from the outbox).
    pub fn keep_only(&mut self, present: &std::collections::BTreeSet<String>) {
        self.items.retain(|name, _| present.contains(name));
    }

    /// Forgets `name` (taken for sending, or gone).
    pub fn forget(&mut self, name: &str) {
        self.items.remove(name);
    }

    /// The next ready item (oldest arrival first) and its look.
    pub fn next_ready(&self, now: Instant) -> Option<(String, Look)> {
        self.items
            .iter()
            .filter_map(|(name, w)| {
                let look = w.look.as_ref()?;
                let ready =
                    w.renamed.is_some() || now.duration_since(w.stable_since) >= self.settle;
                ready.then_some((w.arrival, name, look))
            })
            .min_by_key(|(arrival, _, _)| *arrival)
            .map(|(_, name, look)| (name.clone(), look.clone()))
    }

    /// When the next item still settling at `now` would settle, if nothing changes (items
    /// already ready wait for the encoder, not for a time).
    pub fn next_settle(&self, now: Instant) -> Option<Instant> {
        self.items
            .values()
            .filter(|w| w.renamed.is_none())
            .map(|w| w.stable_since + self.settle)
            .filter(|at| *at > now)
            .min()
    }

    /// Items and bytes waiting.
    pub fn totals(&self) -> (u64, u64) {
        let bytes = self
            .items
            .values()
            .filter_map(|w| w.look.as_ref())
            .map(|l| l.bytes)
            .sum();
        (self.items.len() as u64, bytes)
    }

    /// Whether `name` is waiting.
    pub fn contains(&self, name: &str) -> bool {
        self.items.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: Identity = (1, 2, 3, 4);

    fn look(fp: &str) -> Look {
        Look {
            fingerprint: Fingerprint(fp.into()),
            bytes: 10,
        }
    }

    #[test]
    fn items_settle_in_arrival_order_and_a_change_restarts_the_wait() {
        let t0 = Instant::now();
        let s = Duration::from_secs(2);
        let mut settling = Settling::new(s);
        settling.observe("b", look("1"), ID, t0);
        settling.observe("a", look("1"), ID, t0 + Duration::from_millis(10));
        assert_eq!(settling.next_ready(t0 + Duration::from_secs(1)), None);
        assert_eq!(settling.next_settle(t0), Some(t0 + s));
        // Once settled, an item waiting for the encoder sets no wake-up time.
        assert_eq!(
            settling.next_settle(t0 + s + Duration::from_millis(20)),
            None
        );
        // "b" keeps being written: "a" settles first although "b" arrived first.
        settling.observe("b", look("2"), ID, t0 + Duration::from_secs(1));
        let ready = settling.next_ready(t0 + Duration::from_millis(2010));
        assert_eq!(ready.map(|r| r.0).as_deref(), Some("a"));
        settling.forget("a");
        assert_eq!(settling.next_ready(t0 + Duration::from_millis(2500)), None);
        let ready = settling.next_ready(t0 + Duration::from_secs(3));
        assert_eq!(ready, Some(("b".to_string(), look("2"))));
        assert_eq!(settling.totals(), (1, 10));
    }

    #[test]
    fn a_renamed_item_is_ready_once_looked_at_unless_written_to_afterwards() {
        let t0 = Instant::now();
        let mut settling = Settling::new(Duration::from_secs(2));
        settling.observe("slow", look("1"), ID, t0);
        settling.renamed_in("moved", ID, t0);
        assert_eq!(settling.next_ready(t0), None, "not looked at yet");
        settling.observe("moved", look("1"), ID, t0);
        assert_eq!(
            settling.next_ready(t0).map(|r| r.0).as_deref(),
            Some("moved")
        );
        settling.observe("moved", look("2"), ID, t0 + Duration::from_millis(5));
        assert_eq!(settling.next_ready(t0 + Duration::from_millis(5)), None);
        // The red team's race: a name renamed in, then removed, and another writer's file
        // made under it (same look as far as the fingerprint goes, another entry): it settles.
        settling.renamed_in("report.csv", ID, t0);
        settling.observe("report.csv", look("9"), (1, 2, 3, 5), t0);
        assert_eq!(
            settling.next_ready(t0).map(|r| r.0).as_deref(),
            None,
            "another entry than the one renamed in"
        );
        let gone = std::collections::BTreeSet::from(["moved".to_string()]);
        settling.keep_only(&gone);
        assert!(!settling.contains("slow"));
    }

    #[test]
    fn work_in_progress_names_are_not_items_and_looks_see_changes() {
        for name in [".hidden", ".sent", "x.partial"] {
            assert!(ignored(name), "{name}");
        }
        assert!(!ignored("report.pdf"));
        let dir = tempfile::tempdir().unwrap();
        let item = dir.path().join("tree");
        std::fs::create_dir_all(item.join("sub")).unwrap();
        std::fs::write(item.join("sub/f"), b"abc").unwrap();
        let outbox = Arc::new(Dir::open(dir.path()).unwrap());
        let look_at = |name: &str| Listing::of(&outbox, name, dir.path()).look();
        let first = look_at("tree");
        assert_eq!(first.bytes, 3);
        assert_eq!(look_at("tree"), first);
        std::fs::write(item.join("sub/f"), b"abcd").unwrap();
        assert_ne!(look_at("tree"), first);
        // A file swapped for another of the same size and times is another inode.
        let again = look_at("tree");
        std::fs::write(dir.path().join("other"), b"abcd").unwrap();
        let times = std::fs::metadata(item.join("sub/f"))
            .unwrap()
            .modified()
            .unwrap();
        std::fs::File::options()
            .write(true)
            .open(dir.path().join("other"))
            .unwrap()
            .set_modified(times)
            .unwrap();
        std::fs::rename(dir.path().join("other"), item.join("sub/f")).unwrap();
        assert_ne!(look_at("tree"), again);
        std::fs::write(dir.path().join("x.partial"), b"").unwrap();
        let (names, _) = scan(&outbox).unwrap();
        assert_eq!(names, ["tree"]);
    }
}
