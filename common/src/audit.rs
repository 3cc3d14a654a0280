//! The tamper-evident audit log: one JSON record per line, each carrying its sequence number
//! and the SHA-256 of the previous record's line, so editing, deleting, inserting or
//! reordering any record breaks the chain at that point.
//!
//! ```text
//!   {"seq":1,"time":"…","prev":"000…0","event":"start","…":…}
//!   {"seq":2,"time":"…","prev":"<sha256 of line 1>","event":"delivered","path":"…",…}
//! ```
//!
//! Records go to a writer thread that appends whatever is waiting and then fsyncs once (a
//! group commit), so a burst of small files costs one fsync per burst, not per file. The chain
//! head (last sequence number and line hash) is kept in `<log>.head`, written after each
//! commit: a log moved away (rotated) is continued by the next file, whose first record points
//! at the old file's last. A truncated tail cannot be seen from the file alone; it is caught by
//! checking the file against heads recorded elsewhere (`verify` with `heads`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Records waiting for the writer at most: beyond, `record` waits (a slow disk slows the
/// daemon rather than growing its memory or dropping a record).
const QUEUE: usize = 8192;

/// The `prev` of the first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Where a chain stands: the last record's sequence number and line hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

impl Head {
    /// The line hash as bytes (what crosses the link in an `AuditHead` frame).
    pub fn hash_bytes(&self) -> Option<[u8; 32]> {
        hex::decode(&self.hash).ok()?.try_into().ok()
    }

    fn genesis() -> Head {
        Head {
            seq: 0,
            hash: GENESIS.to_string(),
        }
    }
}

fn line_hash(line: &str) -> String {
    hex::encode(Sha256::digest(line.as_bytes()))
}

/// One event to record: its name and its fields (no file contents, no secrets).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: &'static str,
    pub fields: Map<String, Value>,
}

impl Event {
    pub fn new(name: &'static str) -> Event {
        Event {
            name,
            fields: Map::new(),
        }
    }

    /// Adds a field (not one of the record's own: `seq`, `time`, `prev`, `event`).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Event {
        debug_assert!(
            !["seq", "time", "prev", "event"].contains(&key),
            "audit field {key:?} would be dropped: the record has its own"
        );
        self.fields.insert(key.to_string(), value.into());
        self
    }
}

/// The record line for `event` after `head` (keys in serde_json's sorted order; the event's
/// fields never override `seq`, `time`, `prev` or `event`).
fn record_line(head: &Head, at: SystemTime, event: &Event) -> Result<String, serde_json::Error> {
    let mut record = Map::new();
    record.insert("seq".into(), Value::from(head.seq + 1));
    record.insert(
        "time".into(),
        Value::from(humantime::format_rfc3339_micros(at).to_string()),
    );
    record.insert("prev".into(), Value::from(head.hash.clone()));
    record.insert("event".into(), Value::from(event.name));
    for (key, value) in &event.fields {
        if !record.contains_key(key) {
            record.insert(key.clone(), value.clone());
        }
    }
    serde_json::to_string(&Value::Object(record))
}

/// Appends records to the log file from a writer thread; dropping it writes what is left.
#[derive(Debug)]
pub struct AuditLog {
    tx: Option<flume::Sender<(SystemTime, Event)>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// The head of what is written and fsynced.
    durable: Arc<Mutex<Head>>,
    /// Records handed to the writer, and records it has finished with (written and fsynced,
    /// or failed): equal when nothing is waiting.
    submitted: AtomicU64,
    settled: Arc<AtomicU64>,
}

fn head_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".head");
    PathBuf::from(name)
}

/// The head at the end of `log` (reading its last line), else the one in `<log>.head` (the
/// log was rotated away), else the start of a new chain.
fn current_head(log: &Path) -> io::Result<Head> {
    if let Ok(file) = File::open(log) {
        let mut last = None;
        for line in io::BufReader::new(file).lines() {
            let line = line?;
            if !line.trim().is_empty() {
                last = Some(line);
            }
        }
        if let Some(line) = last {
            let seq = serde_json::from_str::<Value>(&line)
                .ok()
                .and_then(|v| v.get("seq")?.as_u64())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: the last record is not an audit record; run sluice-audit verify",
                            log.display()
                        ),
                    )
                })?;
            return Ok(Head {
                seq,
                hash: line_hash(&line),
            });
        }
    }
    match std::fs::read_to_string(head_path(log)) {
        Ok(text) => {
            let (seq, hash) = text.trim().split_once(' ').ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "malformed audit head file")
            })?;
            Ok(Head {
                seq: seq.parse().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "malformed audit head file")
                })?,
                hash: hash.to_string(),
            })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Head::genesis()),
        Err(e) => Err(e),
    }
}

/// Removes the rotated audit logs beside `log` (`<name>.<suffix>` regular files, as logrotate
/// or an operator names them; never the log itself or its `.head`) last written more than
/// `keep` before `now`. Returns the names removed, for the log to record.
pub fn prune_rotated(log: &Path, keep: Duration, now: SystemTime) -> io::Result<Vec<String>> {
    let Some(name) = log.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}.");
    let head = format!("{name}.head");
    let dir = match log.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(file) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !file.starts_with(&prefix) || file == head {
            continue;
        }
        // lstat: a symlink is never followed, nor removed.
        let meta = entry.metadata()?;
        let old = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > keep);
        if meta.is_file() && old {
            std::fs::remove_file(entry.path())?;
            removed.push(file);
        }
    }
    removed.sort();
    Ok(removed)
}

impl AuditLog {
    /// Opens the log at `path` as [`open`](Self::open) does, first removing the rotated logs
    /// beside it older than `retention` (if given); what it removed is its first record.
    pub fn open_with_retention(path: &Path, retention: Option<Duration>) -> io::Result<AuditLog> {
        let removed = match retention {
            Some(keep) => prune_rotated(path, keep, SystemTime::now())?,
            None => Vec::new(),
        };
        let log = AuditLog::open(path)?;
        if !removed.is_empty() {
            log.record(Event::new("audit_pruned").with("files", removed));
        }
        Ok(log)
    }

    /// Opens (creating, mode 0600) the log at `path`, continuing its chain.
    pub fn open(path: &Path) -> io::Result<AuditLog> {
        let head = current_head(path)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        let (tx, rx) = flume::bounded::<(SystemTime, Event)>(QUEUE);
        let head_file = head_path(path);
        let shown = path.display().to_string();
        let durable = Arc::new(Mutex::new(head.clone()));
        let settled = Arc::new(AtomicU64::new(0));
        let shared = (durable.clone(), settled.clone());
        let writer = std::thread::Builder::new()
            .name("sluice-audit".into())
            .spawn(move || write_loop(file, head, &head_file, &rx, &shown, &shared))?;
        Ok(AuditLog {
            tx: Some(tx),
            writer: Some(writer),
            durable,
            submitted: AtomicU64::new(0),
            settled,
        })
    }

    /// The head of the records written and fsynced so far (what the sender announces across
    /// the link: the receiver records only heads that are on disk here).
    pub fn durable_head(&self) -> Head {
        self.durable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Records `event` now (written and fsynced by the writer thread shortly; waits while
    /// [`QUEUE`] records are already waiting).
    pub fn record(&self, event: Event) {
        if let Some(tx) = &self.tx {
            if tx.send((SystemTime::now(), event)).is_ok() {
                self.submitted.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Whether every record given so far is written and fsynced (or failed, and logged):
    /// [`durable_head`](Self::durable_head) then covers them all.
    pub fn settled(&self) -> bool {
        self.settled.load(Ordering::SeqCst) >= self.submitted.load(Ordering::SeqCst)
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// Appends what is waiting, fsyncs once, records the head; until every sender is gone.
fn write_loop(
    mut file: File,
    mut head: Head,
    head_file: &Path,
    rx: &flume::Receiver<(SystemTime, Event)>,
    shown: &str,
    (durable, settled): &(Arc<Mutex<Head>>, Arc<AtomicU64>),
) {
    while let Ok(first) = rx.recv() {
        let mut batch = String::new();
        let mut count = 0;
        for (at, event) in std::iter::once(first).chain(rx.try_iter()) {
            count += 1;
            match record_line(&head, at, &event) {
                Ok(line) => {
                    head = Head {
                        seq: head.seq + 1,
                        hash: line_hash(&line),
                    };
                    batch.push_str(&line);
                    batch.push('\n');
                }
                Err(e) => tracing::error!(log = shown, "cannot encode an audit record: {e}"),
            }
        }
        let written = file
            .write_all(batch.as_bytes())
            .and_then(|()| file.sync_data())
            .and_then(|()| write_head(head_file, &head));
        match written {
            Ok(()) => {
                *durable
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = head.clone();
            }
            Err(e) => tracing::error!(log = shown, "cannot write the audit log: {e}"),
        }
        settled.fetch_add(count, Ordering::SeqCst);
    }
}

fn write_head(path: &Path, head: &Head) -> io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = PathBuf::from(temporary);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    writeln!(file, "{} {}", head.seq, head.hash)?;
    file.sync_data()?;
    std::fs::rename(&temporary, path)
}

/// A digest of a daemon's effective configuration (every option, as resolved), for its
/// `start` record: two runs with the same digest ran with the same settings.
pub fn digest_of(options: &impl std::fmt::Debug) -> String {
    hex::encode(Sha256::digest(format!("{options:?}").as_bytes()))
}

/// The sender heads a receiver recorded (`sender_audit_head` records of its audit log,
/// `receiver_log`), split into those of the sessions a sender's log (`sender_log`) started
/// (its `start` records) and the sessions it does not mention (another sender's, or a run
/// that was removed from the sender's log together with its start record).
pub fn heads_recorded_for(
    receiver_log: &str,
    sender_log: &str,
) -> (Vec<Head>, BTreeMap<String, Vec<Head>>) {
    let records = |text: &'_ str| {
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect::<Vec<_>>()
    };
    let field = |r: &Value, k: &str| r.get(k).and_then(Value::as_str).map(str::to_owned);
    let sessions: BTreeSet<String> = records(sender_log)
        .iter()
        .filter(|r| r.get("event").and_then(Value::as_str) == Some("start"))
        .filter_map(|r| field(r, "session"))
        .collect();
    let mut heads = Vec::new();
    let mut unknown: BTreeMap<String, Vec<Head>> = BTreeMap::new();
    for r in records(receiver_log) {
        if r.get("event").and_then(Value::as_str) != Some("sender_audit_head") {
            continue;
        }
        let (Some(session), Some(seq), Some(hash)) = (
            field(&r, "session"),
            r.get("head_seq").and_then(Value::as_u64),
            field(&r, "head_hash"),
        ) else {
            continue;
        };
        if sessions.contains(&session) {
            heads.push(Head { seq, hash });
        } else {
            unknown.entry(session).or_default().push(Head { seq, hash });
        }
    }
    (heads, unknown)
}

/// Of `heads`, those the log `text` does not hold (by seq and line hash), leaving out heads
/// before its first record (in rotated files not given, or pruned).
pub fn not_in_log<'a>(text: &str, heads: &'a [Head]) -> Vec<&'a Head> {
    let mut held = std::collections::HashMap::new();
    let mut first = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let seq = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|r| r.get("seq").and_then(Value::as_u64));
        if let Some(seq) = seq {
            first.get_or_insert(seq);
            held.insert(seq, line_hash(line));
        }
    }
    let first = first.unwrap_or(0);
    heads
        .iter()
        .filter(|h| h.seq >= first && held.get(&h.seq) != Some(&h.hash))
        .collect()
}

/// Why a log does not verify: the first bad record, by line number (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    #[error("line {line}: not an audit record")]
    NotARecord { line: usize },
    #[error(
        "line {line} (seq {seq}): expected seq {expected} (a record was deleted, inserted or moved)"
    )]
    Sequence {
        line: usize,
        seq: u64,
        expected: u64,
    },
    #[error(
        "line {line} (seq {seq}): the previous record does not hash to what this one holds \
         (the previous record was edited, or one was inserted or deleted)"
    )]
    Chain { line: usize, seq: u64 },
    #[error(
        "head seq {seq} recorded elsewhere is not in this log (truncated, or rewritten from there)"
    )]
    MissingHead { seq: u64 },
}

/// Checks a log's chain from its first record (which may continue an earlier file: its `prev`
/// is then taken as given), and that every head in `heads` is in it. Returns the last head.
pub fn verify(text: &str, heads: &[Head]) -> Result<Head, Broken> {
    let mut previous: Option<Head> = None;
    let mut seen = std::collections::HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let record: Value =
            serde_json::from_str(line).map_err(|_| Broken::NotARecord { line: number })?;
        let seq = record
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or(Broken::NotARecord { line: number })?;
        let prev = record
            .get("prev")
            .and_then(Value::as_str)
            .ok_or(Broken::NotARecord { line: number })?;
        if let Some(before) = &previous {
            if seq != before.seq + 1 {
                return Err(Broken::Sequence {
                    line: number,
                    seq,
                    expected: before.seq + 1,
                });
            }
            if prev != before.hash {
                return Err(Broken::Chain { line: number, seq });
            }
        }
        let head = Head {
            seq,
            hash: line_hash(line),
        };
        seen.insert(seq, head.hash.clone());
        previous = Some(head);
    }
    for head in heads {
        if seen.get(&head.seq) != Some(&head.hash) {
            return Err(Broken::MissingHead { seq: head.seq });
        }
    }
    Ok(previous.unwrap_or_else(Head::genesis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_of_rotated_records_are_not_asked_for_but_later_ones_must_be_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        write_log(&path, 6);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let head = |i: usize| Head {
            seq: i as u64 + 1,
            hash: line_hash(lines[i]),
        };
        // The first two records rotated away: what is left starts at seq 3.
        let kept = lines[2..].join("\n");
        let heads = [head(0), head(3), head(5)];
        assert!(not_in_log(&kept, &heads).is_empty());
        // The last two cut off: the head of seq 6 is missing.
        let cut = lines[2..4].join("\n");
        assert_eq!(not_in_log(&cut, &heads), [&heads[2]]);
        // A head with another hash at a seq the log holds: rewritten.
        let forged = [Head {
            seq: 4,
            hash: "00".repeat(32),
        }];
        assert_eq!(not_in_log(&kept, &forged).len(), 1);
    }

    fn write_log(path: &Path, count: usize) {
        let log = AuditLog::open(path).unwrap();
        for i in 0..count {
            log.record(
                Event::new("delivered")
                    .with("path", format!("data/f{i}"))
                    .with("size", i as u64),
            );
        }
    }

    #[test]
    fn a_log_verifies_and_continues_its_chain_across_restarts_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        write_log(&path, 3);
        write_log(&path, 2);
        let text = std::fs::read_to_string(&path).unwrap();
        let head = verify(&text, &[]).unwrap();
        assert_eq!(head.seq, 5);
        assert!(text.lines().next().unwrap().contains(GENESIS));

        // Rotated away: the next file continues from the old one's last record.
        let old = dir.path().join("audit.log.1");
        std::fs::rename(&path, &old).unwrap();
        write_log(&path, 1);
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(new.contains("\"seq\":6"), "{new}");
        assert!(new.contains(&head.hash), "{new}");
        let both = std::fs::read_to_string(&old).unwrap() + &new;
        assert_eq!(verify(&both, &[head]).unwrap().seq, 6);
    }

    #[test]
    fn every_kind_of_tampering_names_the_first_bad_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        write_log(&path, 5);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let head = verify(&text, &[]).unwrap();
        let join = |lines: &[&str]| lines.join("\n") + "\n";

        let edited = text.replacen("data/f1", "data/fX", 1);
        assert_eq!(verify(&edited, &[]), Err(Broken::Chain { line: 3, seq: 3 }));
        let deleted = join(&[lines[0], lines[1], lines[3], lines[4]]);
        assert_eq!(
            verify(&deleted, &[]),
            Err(Broken::Sequence {
                line: 3,
                seq: 4,
                expected: 3
            })
        );
        let reordered = join(&[lines[0], lines[2], lines[1], lines[3], lines[4]]);
        assert!(matches!(
            verify(&reordered, &[]),
            Err(Broken::Sequence { line: 2, .. })
        ));
        // A forged record with the right seq and prev still breaks the next link.
        let forged = lines[2].replacen("data/f2", "data/evil", 1);
        let inserted = join(&[lines[0], lines[1], &forged, lines[3], lines[4]]);
        assert_eq!(
            verify(&inserted, &[]),
            Err(Broken::Chain { line: 4, seq: 4 })
        );
        assert_eq!(
            verify("{not json\n", &[]),
            Err(Broken::NotARecord { line: 1 })
        );
        // A truncated tail is only seen against a head recorded elsewhere.
        let truncated = join(&lines[..3]);
        assert!(verify(&truncated, &[]).is_ok());
        assert_eq!(
            verify(&truncated, &[head]),
            Err(Broken::MissingHead { seq: 5 })
        );
    }

    #[test]
    fn rotated_logs_older_than_the_retention_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        write_log(&log, 2);
        for name in ["audit.log.1", "audit.log.2.gz", "other.log.1"] {
            std::fs::write(dir.path().join(name), b"old").unwrap();
        }
        std::os::unix::fs::symlink(&log, dir.path().join("audit.log.link")).unwrap();
        let day = Duration::from_secs(86_400);
        let now = SystemTime::now();
        assert!(
            prune_rotated(&log, day, now).unwrap().is_empty(),
            "all fresh"
        );
        let removed = prune_rotated(&log, day, now + 2 * day).unwrap();
        assert_eq!(removed, ["audit.log.1", "audit.log.2.gz"]);
        for kept in [
            "audit.log",
            "audit.log.head",
            "other.log.1",
            "audit.log.link",
        ] {
            assert!(
                dir.path().join(kept).symlink_metadata().is_ok(),
                "{kept} removed"
            );
        }
    }
}
