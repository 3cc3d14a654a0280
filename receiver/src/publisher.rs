//! The publisher thread: the file-system side of finishing objects, one job at a time in the
//! order the delivery core sent them. It owns the I/O resources of finishing — content files
//! being hashed, the cache of delivered directories, the batch of publications waiting for
//! their directory fsync — and decides nothing about objects: it does what it is told and
//! replies.
//!
//! ```text
//!  delivery ──PublishJob──▶ publisher ──Reply──▶ delivery
//!   StoreManifest   keep the verified envelope for a later run
//!   HashAhead       hash the stored prefix of a content file early (when the decoders have
//!                   time to spare), so a large file has only its tail left at the end
//!   Publish         a segmented file: finish the hash, verify, rename into --out; a pack:
//!                   stage every file, one syncfs, rename each into --out (see `publish`)
//!   Discard/Finish  drop the content file and stored records; record an object done
//!  when no job waits (or 64 objects are pending): fsync the directories published into,
//!  record the deliveries and done markers in one records transaction, reply Committed — one
//!  directory fsync and one records fsync serve many small files
//! ```

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use sluice_common::beneath::Dir;
use sluice_protocol::manifest::{EntryKind, Manifest};

use crate::context::{self, Context};
use crate::delivery::{Committed, EntryOutcome, Input, PublishJob, Reply};
use crate::failure::Failure;
use crate::gate;
use crate::publish::{self, Content, DirCache, Published, Signed, StagedFile};
use crate::records::Finished;
use crate::state::ObjectKey;

/// Content files hashed ahead of their manifest at once.
const MAX_EARLY_HASHING: usize = 8;
/// Published objects whose directories are fsynced together at most (when no job is
/// waiting, they are committed at once).
const MAX_UNCOMMITTED: usize = 64;

/// A published object waiting for its commit.
struct Uncommitted {
    obj: ObjectKey,
    bytes: u64,
    finished: Finished,
    entries: Vec<EntryOutcome>,
}

struct Publisher {
    ctx: Arc<Context>,
    replies: flume::Sender<Input>,
    dirs: DirCache,
    /// Content files being hashed ahead of the manifest.
    hashing: HashMap<ObjectKey, Content>,
    /// Read buffer, reused for every hash.
    buf: Vec<u8>,
    /// Published objects not yet recorded, and the directories to fsync first (by device
    /// and inode, so each is synced once).
    uncommitted: Vec<Uncommitted>,
    dirty_dirs: HashMap<(u64, u64), Dir>,
    /// Sequences published in the batch not yet committed, by (signer, path): a second
    /// manifest for the same path in one batch is checked against these too.
    pending_sequences: HashMap<(u64, String), u64>,
    /// Entry paths published since the last commit: their ancestors' mtimes are applied
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
                hashing: HashMap::new(),
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
        self.hashing.clear();
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
            PublishJob::HashAhead { obj, upto } => self.hash_ahead(obj, upto),
            PublishJob::Publish {
                obj,
                manifest,
                signer,
                check_existing,
                inline,
            } => {
                let signed = Signed {
                    signer,
                    sequence: manifest.sequence,
                };
                if manifest.is_inline() {
                    self.publish_inline(obj, &manifest, signed, &inline);
                } else {
                    self.publish_segmented(obj, &manifest, signed, check_existing);
                }
            }
            PublishJob::Discard { obj, remove_state } => {
                self.hashing.remove(&obj);
                if remove_state {
                    self.remove_state(obj);
                }
            }
            PublishJob::Finish(obj) => {
                self.hashing.remove(&obj);
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

    fn remove_state(&self, obj: ObjectKey) {
        if let Err(e) = self.ctx.state.remove_object(obj) {
            tracing::warn!(object = %obj, "cannot clean up the state directory: {e}");
        }
    }

    /// Hashes `obj`'s content file on to `upto` while the decoders have time to spare. A
    /// failure only drops the head start: publishing hashes again and reports what is wrong.
    fn hash_ahead(&mut self, obj: ObjectKey, upto: u64) {
        if !self.hashing.contains_key(&obj) {
            if self.hashing.len() >= MAX_EARLY_HASHING {
                return;
            }
            match Content::open(&self.ctx, obj) {
                Ok(content) => self.hashing.insert(obj, content),
                Err(failure) => {
                    tracing::debug!(object = %obj, "cannot hash early: {failure}");
                    return;
                }
            };
        }
        while self.ctx.decoders_idle() {
            let Some(content) = self.hashing.get_mut(&obj) else {
                return;
            };
            if content.hashed() >= upto {
                return;
            }
            let step = upto.min(content.hashed() + publish::HASH_STEP);
            if let Err(failure) = content.hash_upto(step, &mut self.buf) {
                tracing::debug!(object = %obj, "early hashing stopped: {failure}");
                self.hashing.remove(&obj);
                return;
            }
        }
    }

    /// The authoritative freshness check of an entry: the records, and this batch not yet
    /// committed.
    fn check_fresh(&self, path: &str, signed: Signed) -> Result<(), Failure> {
        let pending = self
            .pending_sequences
            .get(&(signed.signer, path.to_string()))
            .is_some_and(|seq| signed.sequence < *seq);
        match publish::check_fresh(&self.ctx, path, signed) {
            Ok(()) if pending => Err(Failure::Stale),
            other => other,
        }
    }

    /// Notes a published entry for the commit: its parent to fsync, its path to re-apply
    /// ancestors' metadata, its sequence.
    fn published(
        &mut self,
        path: &str,
        signed: Signed,
        published: Published,
        finished: &mut Finished,
    ) -> u64 {
        if let Ok(entry) = published.dir.stat_self() {
            self.dirty_dirs
                .entry((entry.device, entry.inode))
                .or_insert(published.dir);
        }
        self.touched.insert(path.to_string());
        let highest = self
            .pending_sequences
            .entry((signed.signer, path.to_string()))
            .or_insert(0);
        *highest = (*highest).max(signed.sequence);
        finished.deliveries.extend(published.created_dirs);
        finished
            .deliveries
            .push((path.to_string(), published.delivery));
        published.bytes
    }

    fn publish_segmented(
        &mut self,
        obj: ObjectKey,
        manifest: &Manifest,
        signed: Signed,
        check_existing: bool,
    ) {
        let content = self.hashing.remove(&obj);
        let Some(e) = manifest.entries.first() else {
            return self.reply(Reply::PublishFailed(obj, Failure::ContentMismatch));
        };
        if check_existing && publish::already_delivered(&self.ctx, e) {
            return self.reply(Reply::AlreadyThere(obj));
        }
        if let Err(failure) = self.check_fresh(&e.path, signed) {
            return self.reply(Reply::PublishFailed(obj, failure));
        }
        tracing::debug!(
            object = %obj,
            hashed_ahead = content.as_ref().map_or(0, Content::hashed),
            size = e.size,
            "publishing"
        );
        let staged = publish::precheck(&self.ctx, e)
            .and_then(|()| match content {
                Some(content) => Ok(content),
                None => Content::open(&self.ctx, obj),
            })
            .and_then(|content| content.finish(&self.ctx, e, &mut self.buf))
            .and_then(|staged| gate::pass(&self.ctx, e, staged))
            .and_then(|staged| publish::place(&self.ctx, staged, e, signed, &mut self.dirs));
        match staged {
            Ok(published) => {
                let mut finished = Finished {
                    obj,
                    deliveries: Vec::new(),
                };
                let bytes = self.published(&e.path, signed, published, &mut finished);
                self.queue(Uncommitted {
                    obj,
                    bytes,
                    finished,
                    entries: vec![EntryOutcome::Delivered(0)],
                });
            }
            Err(failure) => self.reply(Reply::PublishFailed(obj, failure)),
        }
    }

    /// Publishes a pack (or a directory, or an empty file): every entry on its own — one
    /// refused or stale entry does not hold back the others. Files are staged first, made
    /// durable by one `syncfs`, then placed.
    fn publish_inline(
        &mut self,
        obj: ObjectKey,
        manifest: &Manifest,
        signed: Signed,
        inline: &[u8],
    ) {
        let mut outcomes = Vec::with_capacity(manifest.entries.len());
        let mut finished = Finished {
            obj,
            deliveries: Vec::new(),
        };
        let mut bytes = 0;
        let mut staged: Vec<(usize, StagedFile)> = Vec::new();
        let mut offset = 0usize;
        for (i, e) in manifest.entries.iter().enumerate() {
            let len = usize::try_from(e.size).unwrap_or(usize::MAX);
            let content = inline
                .get(offset..offset.saturating_add(len))
                .unwrap_or(&[]);
            offset = offset.saturating_add(len);
            if e.kind == EntryKind::File && publish::already_delivered(&self.ctx, e) {
                outcomes.push(EntryOutcome::AlreadyThere(i));
                continue;
            }
            let result = self
                .check_fresh(&e.path, signed)
                .and_then(|()| match e.kind {
                    EntryKind::Directory => {
                        publish::publish_dir(&self.ctx, e, signed, &mut self.dirs).map(Some)
                    }
                    EntryKind::File => {
                        publish::precheck(&self.ctx, e)?;
                        let file = publish::stage_inline(&self.ctx, e, content)?;
                        staged.push((i, file));
                        Ok(None)
                    }
                });
            match result {
                Ok(Some(published)) => {
                    bytes += self.published(&e.path, signed, published, &mut finished);
                    outcomes.push(EntryOutcome::Delivered(i));
                }
                Ok(None) => {}
                Err(failure) => outcomes.push(EntryOutcome::Failed(i, failure)),
            }
        }
        if !staged.is_empty() {
            if let Err(err) = self.ctx.state.staging().sync_file_system() {
                let failure = Failure::Io(format!("cannot sync the staged files: {err}"));
                for (i, file) in staged.drain(..) {
                    file.discard(&self.ctx);
                    outcomes.push(EntryOutcome::Failed(i, failure.clone()));
                }
            }
        }
        for (i, file) in staged {
            let Some(e) = manifest.entries.get(i) else {
                continue;
            };
            let placed = gate::pass(&self.ctx, e, file)
                .and_then(|file| publish::place(&self.ctx, file, e, signed, &mut self.dirs));
            match placed {
                Ok(published) => {
                    bytes += self.published(&e.path, signed, published, &mut finished);
                    outcomes.push(EntryOutcome::Delivered(i));
                }
                Err(failure) => outcomes.push(EntryOutcome::Failed(i, failure)),
            }
        }
        outcomes.sort_by_key(|o| match o {
            EntryOutcome::Delivered(i)
            | EntryOutcome::AlreadyThere(i)
            | EntryOutcome::Failed(i, _) => *i,
        });
        self.queue(Uncommitted {
            obj,
            bytes,
            finished,
            entries: outcomes,
        });
    }

    fn queue(&mut self, published: Uncommitted) {
        self.uncommitted.push(published);
        if self.uncommitted.len() >= MAX_UNCOMMITTED {
            self.commit();
        }
    }

    /// Fsyncs the directories published into, then records the deliveries and done markers
    /// in one durable transaction, and tells the delivery core: an entry counts as delivered
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
        let finished: Vec<Finished> = batch.iter().map(|u| u.finished.clone()).collect();
        if let Err(e) = self.ctx.state.records().commit(&finished) {
            // The files are in place and durable; only the records are missing, so a replay
            // of them could be delivered again. Say so loudly.
            tracing::error!("cannot record {} deliveries: {e}", finished.len());
        }
        let mut done = Vec::with_capacity(batch.len());
        for published in batch {
            self.hashing.remove(&published.obj);
            self.remove_state(published.obj);
            done.push(Committed {
                obj: published.obj,
                bytes: published.bytes,
                entries: published.entries,
            });
        }
        self.reply(Reply::Committed(done));
    }
}
