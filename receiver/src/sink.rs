//! The sink thread: the one place that decides an object's fate. It checks stored segments
//! against the signed manifest, publishes complete objects (one at a time, see
//! the `publish` module), records deliveries, and logs exactly one line per object:
//! delivered, already delivered, or failed with its reason.
//!
//! Messages are small (the decoders write the data themselves), so a long publish only delays
//! bookkeeping, never the link.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, TryRecvError};
use sluice_protocol::manifest::{EntryKind, Manifest};
use sluice_protocol::wire::BlockKey;

use crate::decode::SinkMsg;
use crate::objects::{Failure, Status};
use crate::publish::{self, DirCache, Staged};
use crate::shared::{Counters, Shared};
use crate::state::ObjectKey;

/// Failures kept in full for the report (all are counted and logged).
const MAX_REPORTED_FAILURES: usize = 1000;
/// Objects staged ahead of their manifest at once (each holds a file and a write buffer).
const MAX_EARLY_STAGING: usize = 8;
/// Published objects whose directories are fsynced together at most (when no message is
/// waiting, they are committed at once): one directory fsync serves many small files.
const MAX_UNCOMMITTED: usize = 64;

/// A published object waiting for its directory's fsync.
#[derive(Debug)]
struct Uncommitted {
    obj: ObjectKey,
    manifest: Arc<Manifest>,
    started: Instant,
    bytes: u64,
}

/// One failed object as the report lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedObject {
    /// Session and object (`session/object`).
    pub object: String,
    /// Its path, if the manifest was read.
    pub path: Option<String>,
    /// Why (the documented phrase).
    pub reason: String,
}

/// What the sink hands back when the pipeline ends.
#[derive(Debug, Default)]
pub(crate) struct SinkReport {
    pub failures: Vec<FailedObject>,
    pub last_delivery: Option<Instant>,
}

pub(crate) struct Sink {
    shared: Arc<Shared>,
    dirs: DirCache,
    report: SinkReport,
    /// Objects whose stored segments are being decrypted ahead of the manifest.
    staging: HashMap<ObjectKey, Staged>,
    /// Decryption buffer, reused for every segment.
    buf: Vec<u8>,
    /// Published objects not yet recorded done, and the directories to fsync first.
    uncommitted: Vec<Uncommitted>,
    dirty_dirs: BTreeSet<PathBuf>,
    /// Object paths published since the last commit: their ancestors' mtimes are applied
    /// again (once per directory) before the commit.
    touched: BTreeSet<String>,
}

/// Starts the sink thread; it runs until every sender of `rx` is gone.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    rx: Receiver<SinkMsg>,
) -> std::io::Result<std::thread::JoinHandle<SinkReport>> {
    std::thread::Builder::new()
        .name("sink".into())
        .spawn(move || {
            crate::shared::lower_priority(crate::decode::WORKER_NICE);
            let mut sink = Sink {
                shared,
                dirs: DirCache::new(),
                report: SinkReport::default(),
                staging: HashMap::new(),
                buf: vec![0; publish::IO_BUFFER],
                uncommitted: Vec::new(),
                dirty_dirs: BTreeSet::new(),
                touched: BTreeSet::new(),
            };
            sink.publish_complete();
            loop {
                let msg = if sink.uncommitted.is_empty() {
                    match rx.recv() {
                        Ok(msg) => msg,
                        Err(_) => break,
                    }
                } else {
                    match rx.try_recv() {
                        Ok(msg) => msg,
                        Err(TryRecvError::Empty) => {
                            sink.commit();
                            continue;
                        }
                        Err(TryRecvError::Disconnected) => break,
                    }
                };
                sink.handle(msg);
            }
            sink.finish()
        })
}

impl Sink {
    fn handle(&mut self, msg: SinkMsg) {
        match msg {
            SinkMsg::Stored { key, sha256, len } => self.on_stored(key, &sha256, len),
            SinkMsg::Manifest {
                key,
                manifest,
                envelope,
                already_delivered,
            } => self.on_manifest(key, manifest, &envelope, already_delivered),
            SinkMsg::Failed { obj, failure } => self.fail(obj, failure),
            SinkMsg::Ignored => {}
        }
    }

    /// Publishes objects whose every block is stored (left complete by an earlier run, which
    /// may have been stopped between the rename and recording the object done).
    fn publish_complete(&mut self) {
        let complete = self.shared.index().complete();
        for obj in complete {
            let manifest = self
                .shared
                .index()
                .get(&obj)
                .and_then(|e| e.manifest.clone());
            match manifest {
                Some(m) if publish::already_delivered(&self.shared, &m) => {
                    self.finish_delivered(obj, &m)
                }
                Some(_) => self.publish(obj),
                None => {}
            }
        }
        self.commit();
    }

    fn on_stored(&mut self, key: BlockKey, sha256: &[u8; 32], len: u64) {
        let obj = ObjectKey::of(&key);
        let verdict = {
            let index = self.shared.index();
            let Some(entry) = index.get(&obj).filter(|e| e.status == Status::Open) else {
                return;
            };
            match &entry.manifest {
                None => Ok(false),
                Some(m) => check_segment(m, key.index, sha256, len).map(|()| entry.is_complete()),
            }
        };
        match verdict {
            Ok(true) => self.publish(obj),
            Ok(false) => self.stage_ahead(obj),
            Err(failure) => self.fail(obj, failure),
        }
    }

    /// Decrypts the stored segments of `obj` that follow what is staged, in order, before
    /// the object is complete. A failure here only drops the head start: publishing redoes
    /// the work and reports what goes wrong.
    fn stage_ahead(&mut self, obj: ObjectKey) {
        loop {
            if !self.shared.decoders_idle() {
                return;
            }
            let next = self.staging.get(&obj).map_or(0, Staged::next);
            let expected = {
                let index = self.shared.index();
                let Some(entry) = index.get(&obj).filter(|e| e.status == Status::Open) else {
                    return;
                };
                let Some(sha) = entry.segments.get(&next) else {
                    return;
                };
                match &entry.manifest {
                    None => (None, None),
                    Some(m) if m.kind == EntryKind::Directory => return,
                    Some(m) => match m.segments.get(next as usize) {
                        Some(info) if info.ciphertext_sha256 == *sha => (
                            Some((u64::from(info.ciphertext_len), info.ciphertext_sha256)),
                            Some(m.size),
                        ),
                        _ => return,
                    },
                }
            };
            if !self.staging.contains_key(&obj) {
                if self.staging.len() >= MAX_EARLY_STAGING {
                    return;
                }
                match Staged::create(&self.shared, obj) {
                    Ok(staged) => self.staging.insert(obj, staged),
                    Err(failure) => {
                        tracing::debug!(object = %obj, "cannot stage early: {failure}");
                        return;
                    }
                };
            }
            let Some(staged) = self.staging.get_mut(&obj) else {
                return;
            };
            let (sha, limit) = expected;
            if let Err(failure) = staged.append(&self.shared, obj, sha, limit, &mut self.buf) {
                tracing::debug!(object = %obj, "early staging stopped: {failure}");
                self.discard_staging(obj);
                return;
            }
        }
    }

    fn discard_staging(&mut self, obj: ObjectKey) {
        if let Some(staged) = self.staging.remove(&obj) {
            staged.discard();
        }
    }

    fn on_manifest(
        &mut self,
        key: BlockKey,
        manifest: Manifest,
        envelope: &[u8],
        already_delivered: bool,
    ) {
        let obj = ObjectKey::of(&key);
        if !self.shared.index().is_open(&obj) {
            return;
        }
        if already_delivered {
            self.finish_delivered(obj, &manifest);
            return;
        }
        let verdict = {
            let mut index = self.shared.index();
            let Some(entry) = index.get_mut(&obj) else {
                return;
            };
            let checked = entry.segments.iter().try_for_each(|(i, sha)| {
                let info = manifest.segments.get(*i as usize);
                match info {
                    Some(info) if info.ciphertext_sha256 == *sha => Ok(()),
                    Some(_) => Err(Failure::SegmentMismatch(*i)),
                    None => Err(Failure::SegmentUnexpected(*i)),
                }
            });
            entry.manifest = Some(Arc::new(manifest));
            checked.map(|()| entry.is_complete())
        };
        match verdict {
            Ok(true) => self.publish(obj),
            Ok(false) => match self.shared.state.store_manifest(obj, envelope) {
                Ok(()) => self.stage_ahead(obj),
                Err(e) => {
                    let failure = Failure::Io(format!(
                        "cannot store the manifest in {}: {e}",
                        self.shared.state.root().display()
                    ));
                    self.fail(obj, failure);
                }
            },
            Err(failure) => self.fail(obj, failure),
        }
    }

    fn publish(&mut self, obj: ObjectKey) {
        let (manifest, first_seen) = {
            let index = self.shared.index();
            let Some(entry) = index.get(&obj) else {
                return;
            };
            let Some(manifest) = entry.manifest.clone() else {
                return;
            };
            (manifest, entry.first_seen)
        };
        let started = first_seen.unwrap_or_else(Instant::now);
        let staged = self.staging.remove(&obj);
        tracing::debug!(
            object = %obj,
            staged_ahead = staged.as_ref().map_or(0, Staged::next),
            segments = manifest.segments.len(),
            "publishing"
        );
        match publish::publish(
            &self.shared,
            obj,
            &manifest,
            &mut self.dirs,
            staged,
            &mut self.buf,
        ) {
            Ok(published) => {
                if let Some(entry) = self.shared.index().get_mut(&obj) {
                    entry.status = Status::Done;
                }
                self.dirty_dirs.insert(published.dir);
                self.touched.insert(manifest.path.clone());
                self.uncommitted.push(Uncommitted {
                    obj,
                    manifest,
                    started,
                    bytes: published.bytes,
                });
                if self.uncommitted.len() >= MAX_UNCOMMITTED {
                    self.commit();
                }
            }
            Err(failure) => self.fail(obj, failure),
        }
    }

    /// Fsyncs the directories published into, then records and logs those objects delivered.
    fn commit(&mut self) {
        publish::reapply_ancestors(
            &self.shared,
            std::mem::take(&mut self.touched),
            &mut self.dirs,
        );
        for dir in std::mem::take(&mut self.dirty_dirs) {
            if let Err(e) = publish::fsync_dir(&dir) {
                tracing::warn!(dir = %dir.display(), "cannot fsync a published-into directory: {e}");
            }
        }
        for done in std::mem::take(&mut self.uncommitted) {
            let m = &done.manifest;
            Counters::add(&self.shared.counters.objects_delivered, 1);
            Counters::add(&self.shared.counters.bytes_delivered, done.bytes);
            self.report.last_delivery = Some(Instant::now());
            tracing::info!(
                object = %done.obj,
                path = %m.path,
                kind = ?m.kind,
                sha256 = %hex::encode(m.sha256),
                size = m.size,
                duration_ms = done.started.elapsed().as_millis() as u64,
                "delivered {}",
                m.path
            );
            self.forget(done.obj);
        }
    }

    /// The content is already in `--out`: record the object as done without writing.
    fn finish_delivered(&mut self, obj: ObjectKey, manifest: &Manifest) {
        Counters::add(&self.shared.counters.objects_already, 1);
        tracing::info!(
            object = %obj,
            path = %manifest.path,
            sha256 = %hex::encode(manifest.sha256),
            size = manifest.size,
            "already delivered {}",
            manifest.path
        );
        self.forget(obj);
    }

    /// Marks a finished object done and drops what was kept for it.
    fn forget(&mut self, obj: ObjectKey) {
        self.discard_staging(obj);
        if let Err(e) = self.shared.state.mark_done(obj) {
            tracing::warn!(object = %obj, "cannot record the object as done: {e}");
        }
        if let Err(e) = self.shared.state.remove_object(obj) {
            tracing::warn!(object = %obj, "cannot clean up the state directory: {e}");
        }
        self.shared.index().remove(&obj);
    }

    /// Reports an object failed (once), and drops its blocks unless a later run may use them.
    fn fail(&mut self, obj: ObjectKey, failure: Failure) {
        self.discard_staging(obj);
        let path = {
            let mut index = self.shared.index();
            let Some(entry) = index.get_mut(&obj) else {
                return;
            };
            if entry.status != Status::Open {
                return;
            }
            entry.status = Status::Failed;
            let path = entry.manifest.as_ref().map(|m| m.path.clone());
            entry.manifest = None;
            entry.segments.clear();
            entry.partials.clear();
            path
        };
        if !failure.keeps_state() {
            if let Err(e) = self.shared.state.remove_object(obj) {
                tracing::warn!(object = %obj, "cannot clean up the state directory: {e}");
            }
        }
        self.record_failure(obj, path, &failure);
    }

    fn record_failure(&mut self, obj: ObjectKey, path: Option<String>, failure: &Failure) {
        Counters::add(&self.shared.counters.objects_failed, 1);
        match &path {
            Some(p) => tracing::warn!(object = %obj, path = %p, "object failed: {failure}"),
            None => tracing::warn!(object = %obj, "object failed: {failure}"),
        }
        if self.report.failures.len() < MAX_REPORTED_FAILURES {
            self.report.failures.push(FailedObject {
                object: obj.to_string(),
                path,
                reason: failure.to_string(),
            });
        }
    }

    /// End of the run: directory mtimes once more, and every object seen but not finished is
    /// reported failed (its blocks stay in the state directory for a later run).
    fn finish(mut self) -> SinkReport {
        self.commit();
        for (_, staged) in self.staging.drain() {
            staged.discard();
        }
        publish::reapply_all(&self.shared, &mut self.dirs);
        let unfinished: Vec<(ObjectKey, Option<String>, Failure)> = {
            let index = self.shared.index();
            let mut list: Vec<_> = index
                .incomplete()
                .map(|(obj, entry)| {
                    let failure = match entry.missing() {
                        Some((missing, total)) => Failure::Incomplete { missing, total },
                        None => Failure::NoManifest,
                    };
                    (
                        *obj,
                        entry.manifest.as_ref().map(|m| m.path.clone()),
                        failure,
                    )
                })
                .collect();
            list.sort_by_key(|(obj, _, _)| *obj);
            list
        };
        for (obj, path, failure) in unfinished {
            self.record_failure(obj, path, &failure);
        }
        self.report
    }
}

/// Checks a stored segment against the manifest entry for it.
fn check_segment(m: &Manifest, index: u32, sha256: &[u8; 32], len: u64) -> Result<(), Failure> {
    match m.segments.get(index as usize) {
        None => Err(Failure::SegmentUnexpected(index)),
        Some(info) if u64::from(info.ciphertext_len) != len => {
            Err(Failure::SegmentUnexpected(index))
        }
        Some(info) if info.ciphertext_sha256 != *sha256 => Err(Failure::SegmentMismatch(index)),
        Some(_) => Ok(()),
    }
}
