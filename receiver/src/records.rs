//! What the receiver delivered, kept durably in one transactional file (`records.redb` in the
//! state directory, written through `redb`, each commit fsynced).
//!
//! ```text
//!   latest     path                 → the last delivery at that path (signer, sequence,
//!                                     kind, SHA-256, size, mode, mtime, inode, device)
//!   sequences  (signer key, path)   → the highest manifest sequence delivered: never pruned,
//!                                     so a replay of anything older is refused as stale
//!   done       (session, object)    → when the object was finished (delivered, or found
//!                                     already delivered); lets late blocks of a finished
//!                                     object be released cheaply; pruned after 14 days
//!   made       path                 → a directory this receiver was about to create, recorded
//!                                     durably before the `mkdir`: after a crash before the
//!                                     delivery's commit, the directory is still known as ours
//!                                     (its object's mode and mtime apply; a directory someone
//!                                     else made keeps its own)
//!   uploads    upload ID            → the key of a multipart upload begun in an object store
//!                                     (`--out s3://…`) and not yet completed or aborted:
//!                                     recorded durably before its first part, so one a crash
//!                                     cut short is aborted at the next start, not left behind
//!   exported   (minute, budget)     → bytes and files delivered that count against an export
//!                                     budget of `approvals.toml` (`""`: all exports), committed
//!                                     with the deliveries; minutes older than a day pruned
//! ```
//!
//! "Already delivered" is decided from these records alone — a record for the path with the
//! same SHA-256, and the file there still the one recorded (inode, size, mtime) — never by
//! hashing a file the link names.

use std::fs::File;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use sluice_common::budget::{self, Spent, Usage};

use crate::object::ObjectKey;

const LATEST: TableDefinition<&str, &[u8]> = TableDefinition::new("latest");
const SEQUENCES: TableDefinition<(u64, &str), u64> = TableDefinition::new("sequences");
const DONE: TableDefinition<(u64, u64), u64> = TableDefinition::new("done");
const MADE: TableDefinition<&str, ()> = TableDefinition::new("made");
const UPLOADS: TableDefinition<&str, &str> = TableDefinition::new("uploads");
const EXPORTED: TableDefinition<(u64, &str), (u64, u64)> = TableDefinition::new("exported");

/// Done markers older than this are pruned at start: sessions are random per sender start,
/// and the sequence records keep replays out after that.
pub const DONE_RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);

/// Why the records could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("delivery records: {0}")]
pub struct RecordsError(String);

fn err(e: impl std::fmt::Display) -> RecordsError {
    RecordsError(e.to_string())
}

/// What was delivered at a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Key id of the manifest's signer.
    pub signer: u64,
    /// The manifest's sequence.
    pub sequence: u64,
    /// A directory (not a file).
    pub directory: bool,
    /// Plaintext SHA-256 (zero for a directory).
    pub sha256: [u8; 32],
    /// Plaintext bytes.
    pub size: u64,
    /// Permission bits applied.
    pub mode: u32,
    /// Modification time applied.
    pub mtime_secs: i64,
    /// Modification time applied, nanoseconds.
    pub mtime_nanos: u32,
    /// Inode and device of what was published (a replaced file has others).
    pub inode: u64,
    pub device: u64,
}

/// One finished object to record in a commit.
#[derive(Debug, Clone)]
pub struct Finished {
    pub obj: ObjectKey,
    /// What was written, by path: the object itself, and directories created on its way
    /// (so they count as this receiver's when their own object arrives).
    pub deliveries: Vec<(String, Delivery)>,
}

/// The records file.
pub struct Records {
    db: redb::Database,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records").finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Records {
    /// Opens (or initialises) the records in `file` and prunes old done markers.
    pub fn open(file: File) -> Result<Records, RecordsError> {
        let db = redb::Database::builder()
            .set_cache_size(4 << 20)
            .create_with_backend(redb::backends::FileBackend::new(file).map_err(err)?)
            .map_err(err)?;
        let records = Records { db };
        // Create the tables, so readers never meet a missing one.
        let txn = records.db.begin_write().map_err(err)?;
        {
            txn.open_table(LATEST).map_err(err)?;
            txn.open_table(SEQUENCES).map_err(err)?;
            txn.open_table(MADE).map_err(err)?;
            txn.open_table(UPLOADS).map_err(err)?;
            let mut exported = txn.open_table(EXPORTED).map_err(err)?;
            let oldest = budget::minute_now().saturating_sub(budget::WINDOW_MINUTES);
            exported
                .extract_if(|(minute, _), _| minute < oldest)
                .map_err(err)?
                .for_each(drop);
            let mut done = txn.open_table(DONE).map_err(err)?;
            let cutoff = now_secs().saturating_sub(DONE_RETENTION.as_secs());
            let pruned = done.extract_if(|_, at| at < cutoff).map_err(err)?.count();
            if pruned > 0 {
                tracing::info!(pruned, "pruned done markers of old sessions");
            }
        }
        txn.commit().map_err(err)?;
        Ok(records)
    }

    /// What was delivered against the export budgets in the last day.
    pub fn export_usage(&self) -> Result<Usage, RecordsError> {
        let txn = self.db.begin_read().map_err(err)?;
        let exported = txn.open_table(EXPORTED).map_err(err)?;
        let mut usage = Usage::default();
        for row in exported.iter().map_err(err)? {
            let (key, value) = row.map_err(err)?;
            let (minute, budget) = key.value();
            let (bytes, files) = value.value();
            usage.add_spent(&Spent {
                minute,
                budget: budget.to_string(),
                bytes,
                files,
                export: None,
            });
        }
        usage.prune(budget::minute_now());
        Ok(usage)
    }

    /// Whether `obj` was finished by this or an earlier run.
    pub fn is_done(&self, obj: ObjectKey) -> Result<bool, RecordsError> {
        let txn = self.db.begin_read().map_err(err)?;
        let done = txn.open_table(DONE).map_err(err)?;
        Ok(done
            .get((obj.session.0, obj.object.0))
            .map_err(err)?
            .is_some())
    }

    /// The last delivery at `path`.
    pub fn latest(&self, path: &str) -> Result<Option<Delivery>, RecordsError> {
        let txn = self.db.begin_read().map_err(err)?;
        let latest = txn.open_table(LATEST).map_err(err)?;
        let Some(bytes) = latest.get(path).map_err(err)? else {
            return Ok(None);
        };
        postcard::from_bytes(bytes.value()).map(Some).map_err(err)
    }

    /// The files (not directories) last delivered at paths starting with `prefix`, in path
    /// order, at most `limit` of them.
    pub fn latest_under(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Delivery)>, RecordsError> {
        let txn = self.db.begin_read().map_err(err)?;
        let latest = txn.open_table(LATEST).map_err(err)?;
        let mut found = Vec::new();
        for row in latest.range(prefix..).map_err(err)? {
            let (path, bytes) = row.map_err(err)?;
            let path = path.value();
            if !path.starts_with(prefix) || found.len() >= limit {
                break;
            }
            let delivery: Delivery = postcard::from_bytes(bytes.value()).map_err(err)?;
            if !delivery.directory {
                found.push((path.to_string(), delivery));
            }
        }
        Ok(found)
    }

    /// The highest sequence `signer` delivered at `path`.
    pub fn sequence(&self, signer: u64, path: &str) -> Result<Option<u64>, RecordsError> {
        let txn = self.db.begin_read().map_err(err)?;
        let sequences = txn.open_table(SEQUENCES).map_err(err)?;
        Ok(sequences
            .get((signer, path))
            .map_err(err)?
            .map(|v| v.value()))
    }

    /// Records durably that this receiver is about to create the directory `path`.
    pub fn making_dir(&self, path: &str) -> Result<(), RecordsError> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(MADE)
            .map_err(err)?
            .insert(path, ())
            .map_err(err)?;
        txn.commit().map_err(err)
    }

    /// Whether this receiver created (or was about to create) the directory `path`.
    pub fn made_dir(&self, path: &str) -> Result<bool, RecordsError> {
        let txn = self.db.begin_read().map_err(err)?;
        let made = txn.open_table(MADE).map_err(err)?;
        Ok(made.get(path).map_err(err)?.is_some())
    }

    /// Records durably that the multipart upload `id` of `key` has begun.
    pub fn upload_begun(&self, id: &str, key: &str) -> Result<(), RecordsError> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(UPLOADS)
            .map_err(err)?
            .insert(id, key)
            .map_err(err)?;
        txn.commit().map_err(err)
    }

    /// The multipart upload `id` was completed or aborted.
    pub fn upload_ended(&self, id: &str) -> Result<(), RecordsError> {
        let txn = self.db.begin_write().map_err(err)?;
        txn.open_table(UPLOADS)
            .map_err(err)?
            .remove(id)
            .map_err(err)?;
        txn.commit().map_err(err)
    }

    /// Multipart uploads begun and not ended: (upload ID, key).
    pub fn uploads(&self) -> Result<Vec<(String, String)>, RecordsError> {
        let txn = self.db.begin_read().map_err(err)?;
        let uploads = txn.open_table(UPLOADS).map_err(err)?;
        uploads
            .iter()
            .map_err(err)?
            .map(|row| {
                row.map(|(id, key)| (id.value().to_string(), key.value().to_string()))
                    .map_err(err)
            })
            .collect()
    }

    /// Records finished objects in one durable transaction (the group commit).
    pub fn commit(&self, finished: &[Finished]) -> Result<(), RecordsError> {
        self.commit_spent(finished, &[])
    }

    /// [`Records::commit`], and what the deliveries took from the export budgets, in the
    /// same transaction.
    pub fn commit_spent(&self, finished: &[Finished], spent: &[Spent]) -> Result<(), RecordsError> {
        let txn = self.db.begin_write().map_err(err)?;
        {
            let mut exported = txn.open_table(EXPORTED).map_err(err)?;
            if !spent.is_empty() {
                // Keyed by minute first: the minutes out of the window lead the table.
                let oldest = budget::minute_now().saturating_sub(budget::WINDOW_MINUTES);
                exported
                    .retain_in(..(oldest, ""), |_, _| false)
                    .map_err(err)?;
            }
            for s in spent {
                let key = (s.minute, s.budget.as_str());
                let (bytes, files) = exported
                    .get(key)
                    .map_err(err)?
                    .map_or((0, 0), |v| v.value());
                let sum = (bytes.saturating_add(s.bytes), files.saturating_add(s.files));
                exported.insert(key, sum).map_err(err)?;
            }
        }
        {
            let mut done = txn.open_table(DONE).map_err(err)?;
            let mut latest = txn.open_table(LATEST).map_err(err)?;
            let mut sequences = txn.open_table(SEQUENCES).map_err(err)?;
            let now = now_secs();
            for f in finished {
                done.insert((f.obj.session.0, f.obj.object.0), now)
                    .map_err(err)?;
                for (path, delivery) in &f.deliveries {
                    let bytes = postcard::to_allocvec(delivery).map_err(err)?;
                    latest
                        .insert(path.as_str(), bytes.as_slice())
                        .map_err(err)?;
                    let key = (delivery.signer, path.as_str());
                    let highest = sequences
                        .get(key)
                        .map_err(err)?
                        .map_or(delivery.sequence, |v| v.value().max(delivery.sequence));
                    sequences.insert(key, highest).map_err(err)?;
                }
            }
        }
        txn.commit().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::wire::{ObjectId, SessionId};

    fn delivery(sequence: u64) -> Delivery {
        Delivery {
            signer: 7,
            sequence,
            directory: false,
            sha256: [1; 32],
            size: 3,
            mode: 0o644,
            mtime_secs: 1,
            mtime_nanos: 2,
            inode: 3,
            device: 4,
        }
    }

    #[test]
    fn deliveries_sequences_and_done_markers_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.redb");
        let open = || {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .unwrap();
            Records::open(file).unwrap()
        };
        let obj = ObjectKey::new(SessionId(1), ObjectId(2));
        let records = open();
        assert!(!records.is_done(obj).unwrap());
        records
            .commit(&[Finished {
                obj,
                deliveries: vec![("a/b".into(), delivery(50))],
            }])
            .unwrap();
        records.making_dir("a").unwrap();
        // An older sequence recorded later does not lower the highest one.
        records
            .commit(&[Finished {
                obj: ObjectKey::new(SessionId(1), ObjectId(3)),
                deliveries: vec![("a/b".into(), delivery(40))],
            }])
            .unwrap();
        drop(records);
        let records = open();
        assert!(records.is_done(obj).unwrap());
        assert_eq!(records.latest("a/b").unwrap(), Some(delivery(40)));
        assert_eq!(records.sequence(7, "a/b").unwrap(), Some(50));
        assert_eq!(records.sequence(8, "a/b").unwrap(), None);
        assert_eq!(records.latest("other").unwrap(), None);
        assert!(records.made_dir("a").unwrap());
        assert!(!records.made_dir("a/b").unwrap());

        // Multipart uploads begun and not ended are still listed after a reopen.
        records.upload_begun("id-1", "in/big.bin").unwrap();
        records.upload_begun("id-2", "in/other.bin").unwrap();
        records.upload_ended("id-1").unwrap();
        drop(records);
        let records = open();
        assert_eq!(
            records.uploads().unwrap(),
            vec![("id-2".to_string(), "in/other.bin".to_string())]
        );
    }
}
