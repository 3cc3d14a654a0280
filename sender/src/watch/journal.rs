//! The watch daemon's journal (`outbox.journal` in `--state`): what became of each item,
//! durable across `kill -9`.
//!
//! ```text
//!   {"item":"report.pdf","fingerprint":"…","state":"sending"}   before its first frame
//!   {"item":"report.pdf","fingerprint":"…","state":"sent"}      every pass left the link
//!   {"item":"report.pdf","fingerprint":"…","state":"done"}      moved to --sent or deleted
//!   {"item":"bad","fingerprint":"…","state":"failed"}           not sent; retried once changed
//!   {"item":"q3","fingerprint":"…","state":"pending"}           a request short of approvals
//! ```
//!
//! One JSON line per change, appended and fsynced before the daemon acts on it. At restart an
//! item last `sending` is sent again (it may have been cut off); one last `sent` is only moved
//! away (never sent twice); `failed` waits for its fingerprint to change. A torn last line (a
//! kill mid-write) is ignored: the change it began was not acted on. The file is rewritten
//! (temporary file, fsync, rename) at start and whenever it has grown long.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::outbox::Fingerprint;

const FILE: &str = "outbox.journal";
/// Lines after which the journal is rewritten with only what is still open.
const COMPACT_AFTER: usize = 4096;

/// Where an item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Sending,
    Sent,
    Failed,
    /// An export request not (yet) approved: looked at again once it changes.
    Pending,
    Done,
}

#[derive(Debug, Serialize, Deserialize)]
struct Line {
    item: String,
    fingerprint: String,
    state: State,
}

/// What the journal says about an open item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub fingerprint: Fingerprint,
    pub state: State,
}

/// The open items of the journal in `dir`, oldest first, read without taking its lock (for
/// `sluice-send status`, beside a running daemon: a line being written is torn, and ignored).
pub fn read_open(dir: &Path) -> io::Result<Vec<(String, Record)>> {
    let mut replayed = Replayed::default();
    for line in read_lines(&mut File::open(dir.join(FILE))?)? {
        replayed.apply(line);
    }
    Ok(replayed.items())
}

/// The journal's whole lines, split on bytes: a line torn mid-character (a kill while an item
/// named in UTF-8 was written) is skipped like any other torn line, never an error.
fn read_lines(file: &mut File) -> io::Result<Vec<Line>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice::<Line>(line).ok())
        .collect())
}

/// The journal, locked for as long as it lives.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    file: File,
    lines: usize,
    open: Replayed,
}

/// Items not `done`, in the order they were first journaled.
#[derive(Debug, Default)]
struct Replayed {
    open: BTreeMap<String, (u64, Record)>,
    order: u64,
}

impl Replayed {
    fn apply(&mut self, line: Line) {
        if line.state == State::Done {
            self.open.remove(&line.item);
            return;
        }
        let record = Record {
            fingerprint: Fingerprint(line.fingerprint),
            state: line.state,
        };
        match self.open.get_mut(&line.item) {
            Some((_, open)) => *open = record,
            None => {
                self.order += 1;
                self.open.insert(line.item, (self.order, record));
            }
        }
    }

    /// Oldest first.
    fn items(&self) -> Vec<(String, Record)> {
        let mut items: Vec<_> = self
            .open
            .iter()
            .map(|(name, (order, record))| (*order, name.clone(), record.clone()))
            .collect();
        items.sort_by_key(|(order, _, _)| *order);
        items
            .into_iter()
            .map(|(_, name, record)| (name, record))
            .collect()
    }
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

impl Journal {
    /// Opens (creating) the journal in `dir`, reads it, and rewrites it compactly.
    pub fn open(dir: &Path) -> io::Result<Journal> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| {
                io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "{} is in use by another sluice-send watch ({})",
                        path.display(),
                        errno(e)
                    ),
                )
            },
        )?;
        let mut file = file;
        let lines = read_lines(&mut file)?;
        let mut journal = Journal {
            dir: dir.to_path_buf(),
            file,
            lines: 0,
            open: Replayed::default(),
        };
        journal.replay(lines);
        journal.compact()?;
        Ok(journal)
    }

    /// A torn or foreign line was skipped: what it began was never acted on.
    fn replay(&mut self, lines: Vec<Line>) {
        for line in lines {
            self.open.apply(line);
        }
    }

    /// Open items, oldest first.
    pub fn open_items(&self) -> Vec<(String, Record)> {
        self.open.items()
    }

    /// How many open items are in `state`.
    pub fn count(&self, state: State) -> u64 {
        self.open
            .open
            .values()
            .filter(|(_, r)| r.state == state)
            .count() as u64
    }

    /// What the journal says about `item`.
    pub fn get(&self, item: &str) -> Option<&Record> {
        self.open.open.get(item).map(|(_, record)| record)
    }

    /// Records durably that `item` (as `fingerprint`) is now in `state`.
    pub fn record(
        &mut self,
        item: &str,
        fingerprint: &Fingerprint,
        state: State,
    ) -> io::Result<()> {
        let line = Line {
            item: item.to_string(),
            fingerprint: fingerprint.0.clone(),
            state,
        };
        let mut text = serde_json::to_string(&line).map_err(io::Error::other)?;
        text.push('\n');
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data()?;
        self.lines += 1;
        self.open.apply(line);
        if self.lines > COMPACT_AFTER {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the journal with only the open items.
    fn compact(&mut self) -> io::Result<()> {
        let path = self.dir.join(FILE);
        let temporary = self.dir.join(format!("{FILE}.new"));
        match std::fs::remove_file(&temporary) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut out = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        // Locked before it replaces the old one, so no second daemon slips in between.
        rustix::fs::flock(&out, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(errno)?;
        let items = self.open_items();
        for (item, record) in &items {
            let line = Line {
                item: item.clone(),
                fingerprint: record.fingerprint.0.clone(),
                state: record.state,
            };
            let text = serde_json::to_string(&line).map_err(io::Error::other)?;
            writeln!(out, "{text}")?;
        }
        out.sync_all()?;
        std::fs::rename(&temporary, &path)?;
        File::open(&self.dir)?.sync_all()?;
        self.file = out;
        self.lines = items.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(text: &str) -> Fingerprint {
        Fingerprint(text.into())
    }

    #[test]
    fn states_survive_a_reopen_and_a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut journal = Journal::open(dir.path()).unwrap();
            journal.record("a", &fp("1"), State::Sending).unwrap();
            journal.record("b", &fp("2"), State::Sending).unwrap();
            journal.record("a", &fp("1"), State::Sent).unwrap();
            journal.record("c", &fp("3"), State::Sending).unwrap();
            journal.record("c", &fp("3"), State::Sent).unwrap();
            journal.record("c", &fp("3"), State::Done).unwrap();
            journal.record("d", &fp("4"), State::Failed).unwrap();
            assert!(
                Journal::open(dir.path()).is_err(),
                "a second daemon on the same journal"
            );
        }
        // A kill in the middle of a line.
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .unwrap();
        file.write_all(br#"{"item":"b","fingerprint":"2","sta"#)
            .unwrap();
        // And one cut in the middle of a character of a writer's UTF-8 name.
        file.write_all(b"\n{\"item\":\"r\xc3").unwrap();
        drop(file);
        let beside = read_open(dir.path()).unwrap();
        assert_eq!(beside.len(), 3, "{beside:?}");

        let journal = Journal::open(dir.path()).unwrap();
        let open = journal.open_items();
        let names: Vec<&str> = open.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", "d"]);
        assert_eq!(journal.get("a").unwrap().state, State::Sent);
        assert_eq!(journal.get("b").unwrap().state, State::Sending);
        assert_eq!(journal.get("d").unwrap().fingerprint, fp("4"));
        assert!(journal.get("c").is_none());
        // Rewritten compactly: one line per open item.
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
    }
}
