//! The publisher thread: the file-system side of finishing objects, one job at a time in the
//! order the delivery core sent them. It owns the I/O resources of finishing — staging files,
//! the cache of delivered directories, the batch of publications waiting for their directory
//! fsync — and decides nothing about objects: it does what it is told and replies.
//!
//! ```text
//!  delivery ──PublishJob──▶ publisher ──Reply──▶ delivery
//!   StoreManifest   keep the verified envelope for a later run
//!   StageAhead      decrypt stored segments into the staging file early (when the decoders
//!                   have time to spare), so a large file has only its tail left at the end
//!   Publish         decrypt the rest, verify, rename into --out (see `publish`)
//!   Discard/Finish  drop staging and stored blocks; record an object done
//!  when no job waits (or 64 are pending): fsync the directories published into, record the
//!  deliveries and done markers in one records transaction, reply Committed — one
//!  directory fsync and one records fsync serve many small files
//! ```

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use sluice_common::beneath::Dir;
use sluice_protocol::manifest::Manifest;

use crate::context::{self, Context};
use crate::delivery::{Input, PublishJob, Reply};
use crate::failure::Failure;
use crate::publish::{self, DirCache, Staged};
use crate::records::Finished;
use crate::state::ObjectKey;

/// Objects staged ahead of their manifest at once (each holds a file and a write buffer).
const MAX_EARLY_STAGING: usize = 8;
/// Published objects whose directories are fsynced together at most (when no job is
/// waiting, they are committed at once).
const MAX_UNCOMMITTED: usize = 64;

struct Publisher {
    ctx: Arc<Context>,
    replies: flume::Sender<Input>,
    dirs: DirCache,
    /// Objects whose stored segments are being decrypted ahead of the manifest.
    staging: HashMap<ObjectKey, Staged>,
    /// Decryption buffer, reused for every segment.
    buf: Vec<u8>,
    /// Published objects not yet recorded, and the directories to fsync first (by device
    /// and inode, so each is synced once).
    uncommitted: Vec<(ObjectKey, u64, Finished)>,
    dirty_dirs: HashMap<(u64, u64), Dir>,
    /// Sequences published in the batch not yet committed, by (signer, path): a second
    /// manifest for the same path in one batch is checked against these too.
    pending_sequences: HashMap<(u64, String), u64>,
    /// Object paths published since the last commit: their ancestors' mtimes are applied
    /// again (once per directory) before the commit.
    touched: BTreeSet<String>,
}

/// Starts the publisher; it runs until `jobs` closes, then commits what is left.
pub(crate) fn spawn(
    ctx: Arc<Context>,
    jobs: flume::Receiver<PublishJob>,
    replies: flume::Sender<Input>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("publish".into())
        .spawn(move || {
            context::lower_priority(context::WORKER_NICE);
            let mut publisher = Publisher {
                ctx,
                replies,
                dirs: DirCache::new(),
                staging: HashMap::new(),
                buf: vec![0; publish::IO_BUFFER],
                uncommitted: Vec::new(),
                dirty_dirs: HashMap::new(),
                pending_sequences: HashMap::new(),
                touched: BTreeSet::new(),
            };
            publisher.run(&jobs);
        })
}

impl Publisher {
    fn run(&mut self, jobs: &flume::Receiver<PublishJob>) {
        loop {
            let job = if self.uncommitted.is_empty() {
                match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                }
            } else {
                match jobs.try_recv() {
                    Ok(job) => job,
                    Err(flume::TryRecvError::Empty) => {
                        self.commit();
                        continue;
                    }
                    Err(flume::TryRecvError::Disconnected) => break,
                }
            };
            self.handle(job);
        }
        self.commit();
        for (_, staged) in std::mem::take(&mut self.staging) {
            staged.discard(&self.ctx);
        }
        publish::reapply_all(&self.ctx, &mut self.dirs);
    }

    fn reply(&self, reply: Reply) {
        // The delivery core outlives every job it sent; a closed channel means it is gone.
        let _ = self.replies.send(Input::Reply(reply));
    }

    fn handle(&mut self, job: PublishJob) {
        match job {
            PublishJob::StoreManifest { obj, envelope } => {
                let result = self.ctx.state.store_manifest(obj, &envelope).map_err(|e| {
                    Failure::Io(format!(
                        "cannot store the manifest in {}: {e}",
                        self.ctx.state.path().display()
                    ))
                });
                self.reply(Reply::ManifestStored(obj, result));
            }
            PublishJob::StageAhead {
                obj,
                upto,
                manifest,
            } => self.stage_ahead(obj, upto, manifest.as_deref()),
            PublishJob::Publish {
                obj,
                manifest,
                signer,
                check_existing,
            } => self.publish(obj, &manifest, signer, check_existing),
            PublishJob::Discard { obj, remove_state } => {
                self.discard_staging(obj);
                if remove_state {
                    self.remove_state(obj);
                }
            }
            PublishJob::Finish(obj) => {
                self.discard_staging(obj);
                let done = [Finished {
                    obj,
                    deliveries: Vec::new(),
                }];
                if let Err(e) = self.ctx.state.records().commit(&done) {
                    tracing::warn!(object = %obj, "cannot record the object as done: {e}");
                }
                self.remove_state(obj);
                self.reply(Reply::Finished(obj));
            }
        }
    }

    fn discard_staging(&mut self, obj: ObjectKey) {
        if let Some(staged) = self.staging.remove(&obj) {
            staged.discard(&self.ctx);
        }
    }

    fn remove_state(&self, obj: ObjectKey) {
        if let Err(e) = self.ctx.state.remove_object(obj) {
            tracing::warn!(object = %obj, "cannot clean up the state directory: {e}");
        }
    }

    /// Decrypts stored segments `next..upto` of `obj` into its staging file. A failure only
    /// drops the head start: publishing redoes the work and reports what goes wrong.
    fn stage_ahead(&mut self, obj: ObjectKey, upto: u32, manifest: Option<&Manifest>) {
        while self.ctx.decoders_idle() {
            let next = self.staging.get(&obj).map_or(0, Staged::next);
            if next >= upto {
                return;
            }
            let (expected, limit) = match manifest {
                None => (None, None),
                Some(m) => match m.segments.get(next as usize) {
                    Some(info) => (
                        Some((u64::from(info.ciphertext_len), info.ciphertext_sha256)),
                        Some(m.size),
                    ),
                    None => return,
                },
            };
            if !self.staging.contains_key(&obj) {
                if self.staging.len() >= MAX_EARLY_STAGING {
                    return;
                }
                match Staged::create(&self.ctx, obj) {
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
            if let Err(failure) = staged.append(&self.ctx, obj, expected, limit, &mut self.buf) {
                tracing::debug!(object = %obj, "early staging stopped: {failure}");
                self.discard_staging(obj);
                return;
            }
        }
    }

    fn publish(&mut self, obj: ObjectKey, manifest: &Manifest, signer: u64, check_existing: bool) {
        let staged = self.staging.remove(&obj);
        let discard = |staged: Option<Staged>, ctx: &Context| {
            if let Some(staged) = staged {
                staged.discard(ctx);
            }
        };
        if check_existing && publish::already_delivered(&self.ctx, manifest) {
            discard(staged, &self.ctx);
            return self.reply(Reply::AlreadyThere(obj));
        }
        // The authoritative freshness check: records, and this batch not yet committed.
        let pending = self
            .pending_sequences
            .get(&(signer, manifest.path.clone()))
            .is_some_and(|seq| manifest.sequence < *seq);
        let fresh = match publish::check_fresh(&self.ctx, manifest, signer) {
            Ok(()) if pending => Err(Failure::Stale),
            other => other,
        };
        if let Err(failure) = fresh {
            discard(staged, &self.ctx);
            return self.reply(Reply::PublishFailed(obj, failure));
        }
        tracing::debug!(
            object = %obj,
            staged_ahead = staged.as_ref().map_or(0, Staged::next),
            segments = manifest.segments.len(),
            "publishing"
        );
        let published = publish::publish(
            &self.ctx,
            obj,
            manifest,
            signer,
            &mut self.dirs,
            staged,
            &mut self.buf,
        );
        match published {
            Ok(published) => {
                if let Ok(entry) = published.dir.stat_self() {
                    self.dirty_dirs
                        .entry((entry.device, entry.inode))
                        .or_insert(published.dir);
                }
                self.touched.insert(manifest.path.clone());
                let key = (signer, manifest.path.clone());
                let highest = self.pending_sequences.entry(key).or_insert(0);
                *highest = (*highest).max(manifest.sequence);
                let mut deliveries = published.created_dirs;
                deliveries.push((manifest.path.clone(), published.delivery));
                let finished = Finished { obj, deliveries };
                self.uncommitted.push((obj, published.bytes, finished));
                if self.uncommitted.len() >= MAX_UNCOMMITTED {
                    self.commit();
                }
            }
            Err(failure) => self.reply(Reply::PublishFailed(obj, failure)),
        }
    }

    /// Fsyncs the directories published into, then records the deliveries and done markers
    /// in one durable transaction, and tells the delivery core: a file counts as delivered
    /// only once its directory entry and its record are durable.
    fn commit(&mut self) {
        if self.uncommitted.is_empty() {
            return;
        }
        publish::reapply_ancestors(&self.ctx, std::mem::take(&mut self.touched), &mut self.dirs);
        for (_, dir) in std::mem::take(&mut self.dirty_dirs) {
            if let Err(e) = dir.sync() {
                tracing::warn!("cannot fsync a published-into directory: {e}");
            }
        }
        let batch = std::mem::take(&mut self.uncommitted);
        self.pending_sequences.clear();
        let finished: Vec<Finished> = batch.iter().map(|(_, _, f)| f.clone()).collect();
        if let Err(e) = self.ctx.state.records().commit(&finished) {
            // The files are in place and durable; only the records are missing, so a replay
            // of them could be delivered again. Say so loudly.
            tracing::error!("cannot record {} deliveries: {e}", finished.len());
        }
        let mut done = Vec::with_capacity(batch.len());
        for (obj, bytes, _) in batch {
            self.discard_staging(obj);
            self.remove_state(obj);
            done.push((obj, bytes));
        }
        self.reply(Reply::Committed(done));
    }
}
