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
//!
//! With `--policy`, a verified file goes to the inspectors (`gate::Inspectors`, threads of
//! their own) instead of being placed at once; the publisher goes on with other jobs, and
//! places the file when its verdict comes back (its freshness checked again then).
//!
//! With `[signing]` in the policy, a file that passed the gate may have to wait for its
//! model's signature instead (`models` decides, `held` keeps it): its object is done, and the
//! file is placed or refused later, when the signature and every signed file are in, or
//! when it has waited too long (checked at start and at each job).

use std::collections::HashMap;
use std::sync::Arc;

use sluice_common::approval;
use sluice_common::budget::Demand;
use sluice_common::keys::KeyId;
use sluice_inspect::model_trust::ModelTrust;
use sluice_inspect::signing;
use sluice_protocol::manifest::{Entry, EntryKind, Manifest};

use crate::context::{self, Context};
use crate::counters::Counters;
use crate::delivery::{Committed, EntryOutcome, Input, PublishJob, Released, Reply};
use crate::export_budget::{types_by_content, ExportBudget};
use crate::failure::Failure;
use crate::gate::{self, Inspected, Inspection, Inspectors};
use crate::held::{self, HeldMeta};
use crate::models::{Arrival, ModelHold, Verdict, MAX_MODEL_FILES};
use crate::object::ObjectKey;
use crate::publish::{self, Content, Signed, StagedFile};
use crate::records::Finished;
use crate::sink::{Placed, Sink};

/// Content files hashed ahead of their manifest at once.
const MAX_EARLY_HASHING: usize = 8;
/// Signatures kept as checked at once (each holds its model's list of files).
const MAX_VERIFIED: usize = 64;
/// Published objects whose directories are fsynced together at most (when no job is
/// waiting, they are committed at once).
const MAX_UNCOMMITTED: usize = 64;

/// An object with files at the inspectors: what is known of it so far.
struct Inspecting {
    /// A segmented file (one entry, failed as an object) rather than a pack.
    single: bool,
    finished: Finished,
    bytes: u64,
    entries: Vec<EntryOutcome>,
    /// Files whose verdict has not come back.
    left: usize,
}

/// What the publisher does next.
enum Next {
    Job(PublishJob),
    Verdict(Inspected),
    /// Nothing waiting: commit.
    Idle,
    /// The delivery core closed the jobs.
    JobsOver,
    /// The inspection threads are gone.
    InspectorsGone,
}

/// A verdict, or the inspection threads gone.
fn verdict<E>(received: Result<Inspected, E>) -> Next {
    received.map_or(Next::InspectorsGone, Next::Verdict)
}

/// A job, or the jobs over.
fn job<E>(received: Result<PublishJob, E>) -> Next {
    received.map_or(Next::JobsOver, Next::Job)
}

/// Whether an approval rule names types: without one, no file is read to tell its type.
fn typed_rules(ctx: &Context) -> bool {
    ctx.approval
        .as_ref()
        .is_some_and(|policy| policy.has_type_rules())
}

/// What the staged file of `e` is by content (read through its directory: staged files are
/// open for writing only). Unreadable, it is not placed: a type it hides could need approvers.
fn types_of(ctx: &Context, staged: &StagedFile, e: &Entry) -> Result<Vec<&'static str>, Failure> {
    (staged.dir(ctx).open_file(staged.name()))
        .and_then(|file| types_by_content(&file))
        .map_err(|err| Failure::Io(format!("cannot read {} to tell its type: {err}", e.path)))
}

/// A staged file, if the approval that came with it covers what it is by content: a file of a
/// type an approval rule names needs that rule's quorum whatever it is called. Checked before
/// the gate, so a file short of it is never quarantined (where `sluice-recv release` could
/// let it out); such a file is discarded.
fn type_approved(
    ctx: &Context,
    staged: StagedFile,
    e: &Entry,
    signed: &Signed,
) -> Result<StagedFile, Failure> {
    if signed.content.is_empty() {
        return Ok(staged);
    }
    let checked = types_of(ctx, &staged, e).and_then(|types| {
        (signed.content.check(&e.path, &types))
            .map_err(|short| Failure::NotApproved(short.to_string()))
    });
    match checked {
        Ok(()) => Ok(staged),
        Err(failure) => {
            staged.discard(ctx);
            Err(failure)
        }
    }
}

/// What became of a file that passed the gate.
enum Placing {
    Placed(Placed),
    /// Waiting for its model's signature.
    Held,
}

/// `[signing]`, if the policy has it (and it is not off).
fn model_trust(ctx: &Context) -> Option<&ModelTrust> {
    ctx.gate.as_ref().and_then(|gate| gate.policy.model_trust())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `name` in directory `dir` (`""`: the top).
fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

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
    /// Where verified entries go.
    sink: Box<dyn Sink>,
    /// Content files being hashed ahead of the manifest.
    hashing: HashMap<ObjectKey, Content>,
    /// Read buffer, reused for every hash.
    buf: Vec<u8>,
    /// Published objects not yet recorded (the sink makes them durable first).
    uncommitted: Vec<Uncommitted>,
    /// Sequences published in the batch not yet committed, by (signer, path): a second
    /// manifest for the same path in one batch is checked against these too.
    pending_sequences: HashMap<(u64, String), u64>,
    /// The gate's threads, with `--policy`.
    inspectors: Option<Inspectors>,
    /// Objects with files at the inspectors.
    inspecting: HashMap<ObjectKey, Inspecting>,
    /// Files waiting for their model's signature (`[signing]`), and the next id for one.
    models: ModelHold,
    next_held: u64,
    /// Held files placed or refused since the last commit: their outcomes, their records,
    /// and the ids to forget once those are durable.
    released: Vec<Released>,
    released_finished: Vec<Finished>,
    forget: Vec<u64>,
    /// Signatures held, as checked (by held id).
    verified: HashMap<u64, Arc<Result<signing::Signed, String>>>,
    /// The export budgets of `--approval-policy`, if it sets any.
    budget: Option<ExportBudget>,
}

/// Starts the publisher; it runs until `jobs` closes, then commits what is left.
pub(crate) fn spawn(
    ctx: Arc<Context>,
    counters: Arc<Counters>,
    sink: Box<dyn Sink>,
    jobs: flume::Receiver<PublishJob>,
    replies: flume::Sender<Input>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("publish".into())
        .spawn(move || {
            context::lower_priority(context::WORKER_NICE);
            let inspectors = match Inspectors::spawn(&ctx) {
                Ok(inspectors) => inspectors,
                Err(e) => {
                    // Without them no file could pass the gate: fail every publication.
                    tracing::error!("cannot start the inspection threads: {e}");
                    None
                }
            };
            let budget = ExportBudget::open(ctx.approval.as_ref(), ctx.state.records(), counters);
            let mut publisher = Publisher {
                ctx,
                replies,
                sink,
                hashing: HashMap::new(),
                buf: vec![0; publish::IO_BUFFER],
                uncommitted: Vec::new(),
                pending_sequences: HashMap::new(),
                inspectors,
                inspecting: HashMap::new(),
                models: ModelHold::default(),
                next_held: 0,
                released: Vec::new(),
                released_finished: Vec::new(),
                forget: Vec::new(),
                verified: HashMap::new(),
                budget,
            };
            publisher.run(&jobs);
        })
}

impl Inspecting {
    fn new(obj: ObjectKey, single: bool, entries: Vec<EntryOutcome>, left: usize) -> Self {
        Inspecting {
            single,
            finished: Finished {
                obj,
                deliveries: Vec::new(),
            },
            bytes: 0,
            entries,
            left,
        }
    }

    /// The object, every verdict in, for the commit (its entries in manifest order).
    fn into_uncommitted(mut self, obj: ObjectKey) -> Uncommitted {
        self.entries.sort_by_key(|o| match o {
            EntryOutcome::Delivered(i)
            | EntryOutcome::AlreadyThere(i)
            | EntryOutcome::Held(i)
            | EntryOutcome::Failed(i, _) => *i,
        });
        Uncommitted {
            obj,
            bytes: self.bytes,
            finished: self.finished,
            entries: self.entries,
        }
    }
}

impl Publisher {
    fn run(&mut self, jobs: &flume::Receiver<PublishJob>) {
        self.sink.start(&self.ctx);
        if let Some(quarantine) = self.ctx.gate.as_ref().and_then(|gate| gate.store()) {
            quarantine.abort_unfinished(self.ctx.state.records());
        }
        self.resume_held();
        let mut jobs_open = true;
        while let Some(next) = self.next(jobs, &mut jobs_open) {
            match next {
                Next::Job(job) => self.handle(job),
                Next::Verdict(inspected) => self.inspected(inspected),
                Next::Idle => self.commit(),
                Next::JobsOver => {}
                Next::InspectorsGone => self.inspectors_gone(),
            }
        }
        self.commit();
        self.hashing.clear();
        self.inspectors.take();
        self.sink.finish(&self.ctx);
    }

    /// The next job or verdict: without waiting while something is left to commit (then
    /// `Idle`); `None` once the jobs are over and no verdict is awaited.
    fn next(&self, jobs: &flume::Receiver<PublishJob>, jobs_open: &mut bool) -> Option<Next> {
        let verdicts = self
            .inspectors
            .as_ref()
            .filter(|_| !self.inspecting.is_empty())
            .map(|inspectors| &inspectors.done);
        let unspent = self.budget.as_ref().is_some_and(ExportBudget::has_unspent);
        if !self.uncommitted.is_empty() || !self.released.is_empty() || unspent {
            if *jobs_open {
                match jobs.try_recv() {
                    Ok(job) => return Some(Next::Job(job)),
                    Err(flume::TryRecvError::Disconnected) => *jobs_open = false,
                    Err(flume::TryRecvError::Empty) => {}
                }
            }
            return match verdicts.map(flume::Receiver::try_recv) {
                Some(Err(flume::TryRecvError::Empty)) | None => Some(Next::Idle),
                Some(v) => Some(verdict(v)),
            };
        }
        let next = match (*jobs_open, verdicts) {
            (true, Some(verdicts)) => flume::Selector::new()
                .recv(jobs, job)
                .recv(verdicts, verdict)
                .wait(),
            (true, None) => job(jobs.recv()),
            (false, Some(verdicts)) => verdict(verdicts.recv()),
            (false, None) => return None,
        };
        if matches!(next, Next::JobsOver) {
            *jobs_open = false;
        }
        Some(next)
    }

    /// The inspection threads are gone (a panic): the objects they held fail, and later
    /// files are inspected on this thread.
    fn inspectors_gone(&mut self) {
        tracing::error!("the inspection threads stopped; inspecting on the publisher's thread");
        self.inspectors = None;
        for (obj, _) in std::mem::take(&mut self.inspecting) {
            let failure = Failure::Io("its inspection thread stopped".into());
            self.reply(Reply::PublishFailed(obj, failure));
        }
    }

    fn reply(&self, reply: Reply) {
        // The delivery core outlives every job it sent; a closed channel means it is gone.
        let _ = self.replies.send(Input::Reply(reply));
    }

    fn handle(&mut self, job: PublishJob) {
        self.expire_held();
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
                let content = (self.ctx.approval.as_ref())
                    .map(|policy| policy.content_quorums(manifest.approval.as_ref()))
                    .unwrap_or_default();
                let signed = Signed {
                    signer,
                    sequence: manifest.sequence,
                    approvers: self.approvers(&manifest),
                    content: Arc::new(content),
                };
                if manifest.is_inline() {
                    self.publish_inline(obj, &manifest, &signed, &inline);
                } else {
                    self.publish_segmented(obj, &manifest, &signed, check_existing);
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

    /// The approvers the receiver counts for `manifest` under `--approval-policy` (the delivery
    /// core let it through only if they make a quorum); none without one.
    fn approvers(&self, manifest: &Manifest) -> Arc<[KeyId]> {
        match (&self.ctx.approval, &manifest.approval) {
            (Some(policy), Some(carried)) => approval::approvers_of(policy, carried).into(),
            _ => Arc::new([]),
        }
    }

    /// The authoritative freshness check of an entry: the records, and this batch not yet
    /// committed.
    fn check_fresh(&self, path: &str, signed: &Signed) -> Result<(), Failure> {
        let pending = self
            .pending_sequences
            .get(&(signed.signer, path.to_string()))
            .is_some_and(|seq| signed.sequence < *seq);
        match publish::check_fresh(&self.ctx, path, signed) {
            Ok(()) if pending => Err(Failure::Stale),
            other => other,
        }
    }

    /// Notes a placed entry for the commit: its records, its sequence.
    fn published(
        &mut self,
        path: &str,
        signed: &Signed,
        placed: Placed,
        finished: &mut Finished,
    ) -> u64 {
        let highest = self
            .pending_sequences
            .entry((signed.signer, path.to_string()))
            .or_insert(0);
        *highest = (*highest).max(signed.sequence);
        finished.deliveries.extend(placed.created_dirs);
        finished
            .deliveries
            .push((path.to_string(), placed.delivery));
        placed.bytes
    }

    fn publish_segmented(
        &mut self,
        obj: ObjectKey,
        manifest: &Manifest,
        signed: &Signed,
        check_existing: bool,
    ) {
        let content = self.hashing.remove(&obj);
        let Some(e) = manifest.entries.first() else {
            return self.reply(Reply::PublishFailed(obj, Failure::ContentMismatch));
        };
        if check_existing && self.sink.already_there(&self.ctx, e) {
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
        let staged = self
            .sink
            .precheck(&self.ctx, e)
            .and_then(|()| match content {
                Some(content) => Ok(content),
                None => Content::open(&self.ctx, obj),
            })
            .and_then(|content| content.finish(&self.ctx, e, &mut self.buf))
            .and_then(|staged| type_approved(&self.ctx, staged, e, signed));
        let staged = match (staged, &self.inspectors) {
            (Ok(staged), Some(inspectors)) => {
                let inspection = Inspection {
                    obj,
                    index: 0,
                    entry: e.clone(),
                    signed: signed.clone(),
                    staged,
                };
                match inspectors.submit(inspection, &self.ctx) {
                    Ok(()) => {
                        self.inspecting
                            .insert(obj, Inspecting::new(obj, true, Vec::new(), 1));
                        return;
                    }
                    Err(failure) => Err(failure),
                }
            }
            (staged, _) => staged,
        };
        // Without the inspection threads, the gate (if any) runs here.
        let staged = staged
            .and_then(|staged| gate::pass(&self.ctx, e, staged))
            .and_then(|staged| self.place(obj, staged, e, signed));
        let mut finished = Finished {
            obj,
            deliveries: Vec::new(),
        };
        match staged {
            Ok(Placing::Placed(published)) => {
                let bytes = self.published(&e.path, signed, published, &mut finished);
                self.queue(Uncommitted {
                    obj,
                    bytes,
                    finished,
                    entries: vec![EntryOutcome::Delivered(0)],
                });
            }
            Ok(Placing::Held) => self.queue(Uncommitted {
                obj,
                bytes: 0,
                finished,
                entries: vec![EntryOutcome::Held(0)],
            }),
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
        signed: &Signed,
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
        // A model's file anywhere in the pack makes its directory a model before any of the
        // pack's files is placed, whatever order they come back from the gate in.
        if let Some(trust) = model_trust(&self.ctx) {
            for e in &manifest.entries {
                self.models.announce(trust, &e.path);
            }
        }
        for (i, e) in manifest.entries.iter().enumerate() {
            let len = usize::try_from(e.size).unwrap_or(usize::MAX);
            let content = inline
                .get(offset..offset.saturating_add(len))
                .unwrap_or(&[]);
            offset = offset.saturating_add(len);
            if e.kind == EntryKind::File && self.sink.already_there(&self.ctx, e) {
                outcomes.push(EntryOutcome::AlreadyThere(i));
                continue;
            }
            let result = self
                .check_fresh(&e.path, signed)
                .and_then(|()| match e.kind {
                    EntryKind::Directory => {
                        // A directory by a signature's name would pass for one delivered.
                        let trust = model_trust(&self.ctx);
                        if trust.is_some_and(|t| t.signature_of(&e.path).is_some()) {
                            return Err(Failure::PathRefused {
                                path: e.path.clone(),
                                error: "a directory named as a model signature".into(),
                            });
                        }
                        self.sink.place_dir(&self.ctx, e, signed).map(Some)
                    }
                    EntryKind::File => {
                        self.sink.precheck(&self.ctx, e)?;
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
        let mut left = 0;
        for (i, file) in staged {
            let Some(e) = manifest.entries.get(i) else {
                continue;
            };
            let file = match type_approved(&self.ctx, file, e, signed) {
                Ok(file) => file,
                Err(failure) => {
                    outcomes.push(EntryOutcome::Failed(i, failure));
                    continue;
                }
            };
            let placed = match &self.inspectors {
                Some(inspectors) => {
                    let inspection = Inspection {
                        obj,
                        index: i,
                        entry: e.clone(),
                        signed: signed.clone(),
                        staged: file,
                    };
                    match inspectors.submit(inspection, &self.ctx) {
                        Ok(()) => {
                            left += 1;
                            continue;
                        }
                        Err(failure) => Err(failure),
                    }
                }
                None => {
                    gate::pass(&self.ctx, e, file).and_then(|file| self.place(obj, file, e, signed))
                }
            };
            match placed {
                Ok(Placing::Placed(published)) => {
                    bytes += self.published(&e.path, signed, published, &mut finished);
                    outcomes.push(EntryOutcome::Delivered(i));
                }
                Ok(Placing::Held) => outcomes.push(EntryOutcome::Held(i)),
                Err(failure) => outcomes.push(EntryOutcome::Failed(i, failure)),
            }
        }
        let mut inspecting = Inspecting::new(obj, false, outcomes, left);
        inspecting.finished = finished;
        inspecting.bytes = bytes;
        if left == 0 {
            self.queue(inspecting.into_uncommitted(obj));
        } else {
            self.inspecting.insert(obj, inspecting);
        }
    }

    /// A verdict of the inspectors: the file placed (if it is still the freshest for its
    /// path) or failed; its object goes to the commit once every verdict on it is in.
    fn inspected(&mut self, inspected: Inspected) {
        let Inspected {
            obj,
            index,
            entry,
            signed,
            verdict,
        } = inspected;
        // Something newer for the path may have been placed while this file was inspected.
        let placed = verdict.and_then(|staged| match self.check_fresh(&entry.path, &signed) {
            Ok(()) => self.place(obj, staged, &entry, &signed),
            Err(failure) => {
                staged.discard(&self.ctx);
                Err(failure)
            }
        });
        let Some(mut inspecting) = self.inspecting.remove(&obj) else {
            return;
        };
        match placed {
            Ok(Placing::Placed(published)) => {
                inspecting.bytes +=
                    self.published(&entry.path, &signed, published, &mut inspecting.finished);
                inspecting.entries.push(EntryOutcome::Delivered(index));
            }
            Ok(Placing::Held) => inspecting.entries.push(EntryOutcome::Held(index)),
            // A segmented file fails as an object, as it would have without the gate's
            // threads.
            Err(failure) if inspecting.single => {
                return self.reply(Reply::PublishFailed(obj, failure));
            }
            Err(failure) => inspecting
                .entries
                .push(EntryOutcome::Failed(index, failure)),
        }
        inspecting.left = inspecting.left.saturating_sub(1);
        if inspecting.left == 0 {
            self.queue(inspecting.into_uncommitted(obj));
        } else {
            self.inspecting.insert(obj, inspecting);
        }
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
        let spent = self
            .budget
            .as_mut()
            .map(ExportBudget::take_unspent)
            .unwrap_or_default();
        if self.uncommitted.is_empty() && self.released.is_empty() && spent.is_empty() {
            return;
        }
        self.sink.commit(&self.ctx);
        let batch = std::mem::take(&mut self.uncommitted);
        self.pending_sequences.clear();
        let mut finished: Vec<Finished> = batch.iter().map(|u| u.finished.clone()).collect();
        finished.append(&mut self.released_finished);
        if let Err(e) = self.ctx.state.records().commit_spent(&finished, &spent) {
            // The files are in place and durable; only the records are missing, so a replay
            // of them could be delivered again. Say so loudly.
            tracing::error!("cannot record {} deliveries: {e}", finished.len());
        }
        for id in self.forget.drain(..) {
            held::forget(&self.ctx, id);
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
        if !done.is_empty() {
            self.reply(Reply::Committed(done));
        }
        // After the objects that brought them: a file's "held" comes before its release.
        let released = std::mem::take(&mut self.released);
        if !released.is_empty() {
            self.reply(Reply::Released(released));
        }
    }
}

/// Signed models: files that wait for their model's signature, and what becomes of them.
impl Publisher {
    /// Places a file that passed the gate, unless its model's signature must come first
    /// (`[signing]`): then it waits in the state directory, and its model is looked at again.
    fn place(
        &mut self,
        obj: ObjectKey,
        staged: StagedFile,
        e: &Entry,
        signed: &Signed,
    ) -> Result<Placing, Failure> {
        let ctx = self.ctx.clone();
        // What it is by content, where a budget may name its type.
        let types = if self.budget.is_some() && typed_rules(&ctx) {
            match types_of(&ctx, &staged, e) {
                Ok(types) => types,
                Err(failure) => {
                    staged.discard(&ctx);
                    return Err(failure);
                }
            }
        } else {
            Vec::new()
        };
        let Some(trust) = model_trust(&ctx) else {
            return self.place_within_budget(&ctx, staged, e, signed, &types);
        };
        let signed_before = |dir: &str| signature_delivered(&ctx, trust, dir);
        match self.models.arrive(trust, &e.path, e.size, signed_before) {
            Arrival::Place => self.place_within_budget(&ctx, staged, e, signed, &types),
            Arrival::Refuse(reason) => Err(gate::refuse(&ctx, e, staged, reason)),
            Arrival::Hold => {
                match self.models.held_at(&e.path) {
                    // The same file again (another pass): it already waits.
                    Some((_, sha)) if sha == e.sha256 => {
                        staged.discard(&ctx);
                        return Ok(Placing::Held);
                    }
                    Some((old, _)) => {
                        let why = "replaced by another version while waiting for its model's \
                                   signature";
                        self.refuse_held(trust, vec![(old, why.to_string())]);
                    }
                    None => {}
                }
                // Charged when released (checked again then): a file waiting costs nothing.
                if let Err(failure) = self.check_budget(e, &types) {
                    staged.discard(&ctx);
                    return Err(failure);
                }
                let id = self.next_held;
                let Some(next) = id.checked_add(1) else {
                    let why = "files cannot wait for their model's signature this run (the \
                               held files could not be read at start)";
                    return Err(gate::refuse(&ctx, e, staged, why.to_string()));
                };
                self.next_held = next;
                let meta = HeldMeta {
                    session: obj.session.0,
                    object: obj.object.0,
                    entry: e.clone(),
                    signer: signed.signer,
                    sequence: signed.sequence,
                    approvers: signed.approvers.iter().map(|k| k.0).collect(),
                    since: now_secs(),
                };
                held::hold(&ctx, staged, id, &meta).map_err(|err| {
                    Failure::Io(format!(
                        "cannot keep {} for its model's signature: {err}",
                        e.path
                    ))
                })?;
                self.models.insert(trust, id, meta.held());
                let model = trust
                    .signature_of(&e.path)
                    .or_else(|| self.models.model_of(&e.path))
                    .map(str::to_string);
                if let Some(dir) = model {
                    self.settle(trust, &dir);
                }
                Ok(Placing::Held)
            }
        }
    }

    /// Whether the file `e` fits the export budgets: what it would take from them.
    fn check_budget(&self, e: &Entry, types: &[&str]) -> Result<Demand, Failure> {
        match &self.budget {
            Some(budget) => budget.check(e, types),
            None => Ok(Demand::default()),
        }
    }

    /// Places a file if it fits the export budgets, and charges it once placed (a file the
    /// sink fails to place costs nothing).
    fn place_within_budget(
        &mut self,
        ctx: &Context,
        staged: StagedFile,
        e: &Entry,
        signed: &Signed,
        types: &[&str],
    ) -> Result<Placing, Failure> {
        let demand = match self.check_budget(e, types) {
            Ok(demand) => demand,
            Err(failure) => {
                staged.discard(ctx);
                return Err(failure);
            }
        };
        let placed = self.sink.place(ctx, staged, e, signed)?;
        if let Some(budget) = self.budget.as_mut() {
            budget.charge(demand);
        }
        Ok(Placing::Placed(placed))
    }

    /// What the model at `dir` (its signature held) comes to now. A signature is read and
    /// checked once, not again at each of its files.
    fn evaluate(&mut self, trust: &ModelTrust, dir: &str) -> Verdict {
        let ctx = self.ctx.clone();
        let cache = &mut self.verified;
        let verify = |id: u64| {
            if let Some(known) = cache.get(&id) {
                return known.as_ref().clone();
            }
            let result = held::read(&ctx, id, signing::MAX_BUNDLE)
                .map_err(|e| format!("model signature unreadable: {e}"))
                .and_then(|bundle| trust.verify(dir, &bundle));
            if cache.len() >= MAX_VERIFIED {
                // Any one: it is read and checked again if its model is looked at again.
                let evicted = cache.keys().next().copied();
                evicted.map(|k| cache.remove(&k));
            }
            cache.insert(id, Arc::new(result.clone()));
            result
        };
        let delivered = || {
            let prefix = format!("{dir}/");
            let before = ctx
                .state
                .records()
                .latest_under(&prefix, MAX_MODEL_FILES + 1)
                .map_err(|e| format!("cannot read the records: {e}"))?;
            if before.len() > MAX_MODEL_FILES {
                return Err(format!(
                    "more than {MAX_MODEL_FILES} files delivered under the model's directory"
                ));
            }
            Ok(before.into_iter().map(|(p, d)| (p, d.sha256)).collect())
        };
        self.models.evaluate(trust, dir, verify, delivered)
    }

    /// Releases or refuses the model at `dir` if its signature and files allow.
    fn settle(&mut self, trust: &ModelTrust, dir: &str) {
        match self.evaluate(trust, dir) {
            Verdict::Wait(_) => {}
            Verdict::Release {
                ids,
                signer,
                unsigned,
            } => {
                self.refuse_held(trust, unsigned);
                self.release(trust, dir, ids, &signer);
            }
            Verdict::Refuse { ids, reason } => {
                self.models.refuse_model(dir, &reason);
                let refused = ids.into_iter().map(|id| (id, reason.clone())).collect();
                self.refuse_held(trust, refused);
            }
        }
    }

    /// Places the held files of a model signed by `model_signer`, in order (the signature
    /// last). If one cannot be placed the rest are refused, so a signature never goes out
    /// without its files; if the object store is down, the rest wait for the next start.
    fn release(&mut self, trust: &ModelTrust, dir: &str, ids: Vec<u64>, model_signer: &str) {
        let ctx = self.ctx.clone();
        let mut ids = ids.into_iter();
        while let Some(id) = ids.next() {
            let (staged, meta) = match held::take(&ctx, id) {
                Ok(taken) => taken,
                Err(err) => {
                    // Kept as it is: the next start tries again.
                    tracing::error!("cannot read held file {id}: {err}");
                    return;
                }
            };
            let signed = meta.signed();
            let e = &meta.entry;
            let checked = self
                .check_fresh(&e.path, &signed)
                .and_then(|()| match typed_rules(&ctx) {
                    true => types_of(&ctx, &staged, e),
                    false => Ok(Vec::new()),
                })
                .and_then(|types| self.check_budget(e, &types));
            let placed = match checked {
                Ok(demand) => self.sink.place(&ctx, staged, e, &signed).inspect(|_| {
                    if let Some(budget) = self.budget.as_mut() {
                        budget.charge(demand);
                    }
                }),
                Err(failure) => Err(gate::refuse(&ctx, e, staged, failure.to_string())),
            };
            let failure = match placed {
                Ok(placed) => {
                    let mut finished = Finished {
                        obj: meta.obj(),
                        deliveries: Vec::new(),
                    };
                    self.published(&e.path, &signed, placed, &mut finished);
                    self.released_finished.push(finished);
                    self.forget_held(trust, id);
                    self.released
                        .push(released(trust, &meta, Ok(model_signer.to_string())));
                    continue;
                }
                Err(failure) => failure,
            };
            if matches!(failure, Failure::StoreUnavailable(_)) {
                // The file is still in held/: it and the rest go out when the store is back.
                tracing::warn!("model {dir} waits for the object store: {failure}");
                return;
            }
            self.forget_held(trust, id);
            let reason = format!(
                "model incomplete: {} could not be placed ({failure})",
                e.path
            );
            self.released.push(released(trust, &meta, Err(failure)));
            let rest = ids.map(|id| (id, reason.clone())).collect();
            self.refuse_held(trust, rest);
            return;
        }
    }

    /// Refuses held files into the quarantine, each for its reason.
    fn refuse_held(&mut self, trust: &ModelTrust, files: Vec<(u64, String)>) {
        let ctx = self.ctx.clone();
        for (id, reason) in files {
            let (staged, meta) = match held::take(&ctx, id) {
                Ok(taken) => taken,
                Err(err) => {
                    tracing::error!("cannot read held file {id}: {err}");
                    continue;
                }
            };
            let failure = gate::refuse(&ctx, &meta.entry, staged, reason);
            self.forget_held(trust, id);
            self.released.push(released(trust, &meta, Err(failure)));
        }
    }

    /// Drops held file `id` from the hold; its metadata goes at the next commit.
    fn forget_held(&mut self, trust: &ModelTrust, id: u64) {
        self.models.remove(trust, id);
        self.verified.remove(&id);
        self.forget.push(id);
    }

    /// The files an earlier run left waiting: models complete by now go out, those whose wait
    /// is over are refused.
    fn resume_held(&mut self) {
        let ctx = self.ctx.clone();
        self.next_held = match held::next_id(&ctx) {
            Ok(id) => id,
            Err(e) => {
                // Holding would risk an id in use: hold nothing this run.
                tracing::error!("cannot read the held files: {e}");
                u64::MAX
            }
        };
        let Some(trust) = model_trust(&ctx) else {
            if self.next_held > 0 {
                tracing::warn!(
                    "files wait for their model's signature in {}/staging/held but [signing] \
                     is off in the policy: they stay there until it is on again",
                    ctx.state.path().display()
                );
            }
            return;
        };
        match held::scan(&ctx) {
            Ok(found) => {
                if !found.is_empty() {
                    tracing::info!(
                        files = found.len(),
                        "files waiting for their model's signature since an earlier run"
                    );
                }
                let found = found.iter().map(|(id, m)| (*id, m.held()));
                self.models = ModelHold::resume(trust, found);
            }
            Err(e) => tracing::error!("cannot read the held files: {e}"),
        }
        for dir in self.models.signature_dirs() {
            self.settle(trust, &dir);
        }
        self.expire_held();
    }

    /// Refuses the files that waited longer than `[signing] wait` (a model complete by then
    /// goes out instead).
    fn expire_held(&mut self) {
        let ctx = self.ctx.clone();
        let Some(trust) = model_trust(&ctx) else {
            return;
        };
        let now = now_secs();
        let due = self
            .models
            .oldest()
            .is_some_and(|since| since.saturating_add(trust.wait.as_secs()) <= now);
        if !due {
            return;
        }
        for (model, ids) in self.models.expired(trust, now) {
            let reason = match model {
                None => "model signature missing".to_string(),
                Some(dir) => match self.evaluate(trust, &dir) {
                    Verdict::Wait(why) => format!("model incomplete when its wait ended: {why}"),
                    Verdict::Refuse { reason, .. } => reason,
                    Verdict::Release { .. } => {
                        self.settle(trust, &dir);
                        continue;
                    }
                },
            };
            let refused = ids.into_iter().map(|id| (id, reason.clone())).collect();
            self.refuse_held(trust, refused);
        }
    }
}

/// Whether a model's signature was delivered at `dir` before (a file, not a directory of
/// that name).
fn signature_delivered(ctx: &Context, trust: &ModelTrust, dir: &str) -> bool {
    ctx.state
        .records()
        .latest(&join(dir, &trust.signature))
        .is_ok_and(|d| d.is_some_and(|d| !d.directory))
}

/// The outcome of a held file placed (signed by the model key named) or refused.
fn released(trust: &ModelTrust, meta: &HeldMeta, result: Result<String, Failure>) -> Released {
    Released {
        obj: meta.obj(),
        is_signature: trust.signature_of(&meta.entry.path).is_some(),
        entry: meta.entry.clone(),
        signer: KeyId(meta.signer),
        approvers: meta.approvers.iter().map(|k| KeyId(*k)).collect(),
        result,
    }
}
