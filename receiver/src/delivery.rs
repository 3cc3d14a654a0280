//! The object table, and every decision about an object: the one owner of "what happened to
//! object X". Sans-IO, in the style of the protocol crate: events come in through `handle_*`
//! (from the link task and from the workers' replies), and what must be done comes out of
//! [`Delivery::poll_action`] — jobs for the decoders and the publisher, commands for the link
//! task, outcomes to emit, notices to log. It never touches a file, a socket or a clock (time
//! is passed in), so its rules are tested directly.
//!
//! ```text
//!  link task ──LinkEvent──┐                        ┌──▶ Action::Link     (mark done, restore)
//!                          ├─▶ Delivery::handle_* ─┼──▶ Action::Decode   (decoder pool)
//!  workers ─────Reply─────┘   (object table,       ├──▶ Action::Publish  (publisher thread)
//!                              census)             ├──▶ Action::Emit     (outcome subscribers)
//!                                                  └──▶ Action::Notice   (log lines)
//! ```
//!
//! Lifecycle of an object: *open* while its blocks are collected (data blocks decrypted into
//! the object's content file by the decoders, the manifest opened and verified), *publishing*
//! once the manifest and every segment it lists are stored (at once for a pack: its content
//! comes in the manifest), then *done* (delivered, or already delivered) or *failed*. Done and
//! failed objects stay in the table for the run, so their late blocks are released at once;
//! delivered ones leave it once committed (their done marker answers then). A pack's entries
//! each get their own outcome.
//!
//! Disk (`--max-state`): an open object is charged its [`Footprint`] — what `du` will count —
//! for each write before the write is handed out, and the oldest open objects are evicted
//! beyond the limit. An evicted (or refused) object's bytes count until a decoder reports
//! them removed; while they would put the state over the limit, new data blocks wait here
//! (their permits hold the link task back) and stalled symbols are not saved.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_common::envelope::Opened;
use sluice_common::keys::KeyId;
use sluice_protocol::manifest::{self, Manifest};
use sluice_protocol::rx::{Census, Missing, PartialBlock, ReadyBlock};
use sluice_protocol::wire::{AuditHead, BlockKey, BlockKind, Heartbeat, RelayStatus};
use tokio::sync::OwnedSemaphorePermit;

use crate::counters::DeliveryStats;
use crate::failure::Failure;
use crate::footprint::{Disk, Footprint};
use crate::heads::SenderHeads;
use crate::object::ObjectKey;
use crate::outcome::Outcome;
use crate::segment::StoredSegment;

/// Bytes of memory a job holds, released when the job is dropped (see the link task).
pub(crate) type Permit = OwnedSemaphorePermit;

/// Sender runs whose heartbeat frame counts are kept (heartbeats are authenticated; this
/// bounds a misbehaving key holder).
const MAX_SESSIONS_TRACKED: usize = 1024;
/// Ids checked against the state directory when looking for objects lost whole.
pub(crate) const MISSING_CHECKS: usize = 10_000;

/// Everything the delivery core hears, on one channel: link events and worker replies.
#[derive(Debug)]
pub(crate) enum Input {
    Link(LinkEvent),
    Reply(Reply),
}

/// What the link task reports.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// The first symbol of a block not held arrived.
    BlockStarted(BlockKey),
    /// A block has `k` symbols; the permit covers its bytes until it is decoded.
    BlockReady(ReadyBlock, Permit),
    /// A block was given up with fewer than `k` symbols (`running`: while the link was up,
    /// rather than at the end of the run); with a permit if there was room to keep them.
    BlockStalled {
        partial: PartialBlock,
        permit: Option<Permit>,
        running: bool,
    },
    Heartbeat(Heartbeat),
    RelayStatus(RelayStatus),
    AuditHead(AuditHead),
    LinkUp,
    /// No valid frame for this long.
    LinkDown(Duration),
    /// The link task ended: nothing more will come from it.
    Closed,
}

/// What the workers report, one reply per job that asks for one.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A block was FEC-decoded (or failed to be) and handled.
    Block {
        key: BlockKey,
        /// Whether decoding needed repair symbols; `None` if it failed.
        recovered: Option<bool>,
        result: BlockResult,
    },
    /// The symbols of a stalled block were kept in the state directory, or could not be.
    PartialSaved { key: BlockKey, saved: bool },
    /// Saved symbols were read back (or were unusable).
    PartialLoaded(BlockKey, Option<PartialBlock>),
    /// What an object kept in the state directory is gone.
    Removed(ObjectKey),
    /// The manifest envelope was stored for a later run (or could not be).
    ManifestStored(ObjectKey, Result<(), Failure>),
    /// Published objects whose directories are now durable.
    Committed(Vec<Committed>),
    /// A publish found the object's content already in place.
    AlreadyThere(ObjectKey),
    /// An object already delivered is recorded done and its blocks are gone.
    Finished(ObjectKey),
    /// A publish failed.
    PublishFailed(ObjectKey, Failure),
    /// Files that waited for their model's signature, placed or refused (their objects were
    /// done when they began to wait).
    Released(Vec<Released>),
}

/// A file that waited for its model's signature (`models`), now placed or refused.
#[derive(Debug)]
pub(crate) struct Released {
    /// The object that brought it.
    pub obj: ObjectKey,
    pub entry: manifest::Entry,
    /// The key that signed its manifest, and the approvers counted for it.
    pub signer: KeyId,
    pub approvers: Vec<KeyId>,
    /// Placed, signed by the model key named; or why it was refused.
    pub result: Result<String, Failure>,
    /// The model's signature (its release delivers the model whole).
    pub is_signature: bool,
}

/// A published object: what became of each of its entries, and the bytes written.
#[derive(Debug)]
pub(crate) struct Committed {
    pub obj: ObjectKey,
    pub bytes: u64,
    pub entries: Vec<EntryOutcome>,
}

/// What became of one entry (by its index in the manifest) of a published object.
#[derive(Debug)]
pub(crate) enum EntryOutcome {
    Delivered(usize),
    /// Its content already sat at its path: not written again.
    AlreadyThere(usize),
    /// Waiting in the state directory for its model's signature (`models`).
    Held(usize),
    Failed(usize, Failure),
}

/// What became of a decoded block.
#[derive(Debug)]
pub(crate) enum BlockResult {
    /// A data block decrypted into the object's content file.
    Stored(StoredSegment),
    /// A manifest decrypted and verified; `existing` says a single file's content already
    /// sits at its path (a pack's entries are looked at when it is published).
    Manifest { opened: Box<Opened>, existing: bool },
    /// The block could not be used.
    Failed(Failure),
    /// A manifest that decrypted and verified, refused by this receiver's rules (approval,
    /// path): the object fails, its outcomes naming the paths it carried.
    Refused {
        failure: Failure,
        paths: Vec<String>,
    },
}

/// A job for the decoder pool.
#[derive(Debug)]
pub(crate) enum DecodeJob {
    /// Decode and store (data) or open and verify (manifest); remove saved symbols after.
    Decode {
        block: ReadyBlock,
        permit: Permit,
        drop_partial: bool,
    },
    /// Keep a stalled block's symbols for a later pass or run.
    SavePartial {
        partial: PartialBlock,
        permit: Permit,
    },
    /// Read back saved symbols.
    LoadPartial(BlockKey),
    /// Remove what the state directory holds for an object that failed or was evicted (its
    /// directory and content file), so its space counts until it is free again.
    Remove(ObjectKey),
}

/// A job for the publisher thread (one thread: its jobs run in order).
#[derive(Debug)]
pub(crate) enum PublishJob {
    /// Keep the verified manifest envelope for a later run.
    StoreManifest { obj: ObjectKey, envelope: Vec<u8> },
    /// Hash the content file's first `upto` bytes (stored segments with no gap) ahead of
    /// time, if the decoders have time to spare, so publishing only has the tail left.
    HashAhead { obj: ObjectKey, upto: u64 },
    /// Publish a complete object signed by `signer` (its content in the content file, or
    /// `inline` for a pack); with `check_existing`, first see whether it is already there.
    Publish {
        obj: ObjectKey,
        manifest: Arc<Manifest>,
        signer: u64,
        check_existing: bool,
        inline: Vec<u8>,
    },
    /// Drop what is kept for an object: its staging file, and its stored blocks unless a
    /// later run may still use them.
    Discard { obj: ObjectKey, remove_state: bool },
    /// Record an object found already delivered as done, and drop what is kept for it.
    Finish(ObjectKey),
}

/// What the link task is told.
#[derive(Debug)]
pub(crate) enum LinkCommand {
    /// The block is stored, delivered or not wanted: release it.
    MarkDone(BlockKey),
    /// Symbols saved earlier for a block assembling again.
    Restore(PartialBlock),
}

/// Something worth a log line that is not an object's outcome.
#[derive(Debug)]
pub(crate) enum Notice {
    LinkUp,
    LinkDown {
        after: Duration,
        /// Objects lost whole, when their count changed since the last report.
        missing: Option<Missing>,
    },
    BlockStalled {
        key: BlockKey,
        held: usize,
        needed: u16,
    },
    Heartbeat(Heartbeat),
    RelayStatus(RelayStatus),
    /// A sender's audit-log head not recorded before (for the audit log).
    SenderAuditHead(AuditHead),
}

/// What the driver must do next.
#[derive(Debug)]
pub(crate) enum Action {
    Link(LinkCommand),
    Decode(DecodeJob),
    Publish(PublishJob),
    Emit(Outcome),
    Notice(Notice),
}

/// Where an object stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Collecting blocks.
    Open,
    /// Handed to the publisher; waiting for its commit.
    Publishing,
    /// Delivered or already delivered in this run.
    Done,
    /// Refused or failed for good in this run; `kept`: its stored blocks stay for a later run.
    Failed { kept: bool },
}

/// One object the run has heard of.
#[derive(Debug)]
struct Entry {
    status: Status,
    /// When a block of it first arrived in this run (`None`: only known from the state dir).
    first_seen: Option<Instant>,
    manifest: Option<Arc<Manifest>>,
    /// The key id that signed the manifest.
    signer: u64,
    /// What it holds in the state directory, as `du` counts it.
    footprint: Footprint,
    /// When it entered the table, in arrival order (for evicting the oldest).
    order: u64,
    /// Segments in the content file.
    segments: BTreeMap<u32, StoredSegment>,
    /// Data blocks handed to a decoder and not answered yet (never decoded twice at once: a
    /// segment's bytes must not change under the hash).
    decoding: BTreeSet<u32>,
    /// Blocks whose partial symbols are saved in the state dir.
    partials: BTreeSet<(BlockKind, u32)>,
    /// The segment size the first data block of this run carried (all must agree, and agree
    /// with the manifest's).
    segment_size: Option<u32>,
}

impl Entry {
    fn new(first_seen: Option<Instant>) -> Self {
        Entry {
            status: Status::Open,
            first_seen,
            manifest: None,
            signer: 0,
            footprint: Footprint::default(),
            order: 0,
            segments: BTreeMap::new(),
            decoding: BTreeSet::new(),
            partials: BTreeSet::new(),
            segment_size: None,
        }
    }

    /// Whether the block is stored or being decoded (its later symbols are not needed).
    fn holds(&self, key: BlockKey) -> bool {
        match key.kind {
            BlockKind::Data => {
                self.segments.contains_key(&key.index) || self.decoding.contains(&key.index)
            }
            BlockKind::Manifest => self.manifest.is_some(),
        }
    }

    /// Checks a data block's segment size against the manifest's, or the first block's.
    fn check_segment_size(&mut self, index: u32, size: u32) -> Result<(), Failure> {
        let expected = match &self.manifest {
            Some(m) => m.segment_size,
            None => *self.segment_size.get_or_insert(size),
        };
        if size == expected {
            Ok(())
        } else {
            Err(Failure::SegmentSize {
                index,
                expected,
                got: size,
            })
        }
    }

    /// Segments the manifest lists that are not stored: `(missing, total)`.
    fn missing(&self) -> Option<(usize, usize)> {
        let manifest = self.manifest.as_ref()?;
        let total = manifest.segments.len();
        let held = self
            .segments
            .keys()
            .filter(|i| (**i as usize) < total)
            .count();
        Some((total - held, total))
    }

    fn is_complete(&self) -> bool {
        self.missing().is_some_and(|(missing, _)| missing == 0)
    }

    /// Plaintext bytes of the stored segments `0..n` with no gap.
    fn contiguous_bytes(&self) -> u64 {
        let mut bytes = 0;
        for (n, (index, segment)) in self.segments.iter().enumerate() {
            if *index as usize != n {
                break;
            }
            bytes += u64::from(segment.plain_len);
        }
        bytes
    }

    /// The paths of its entries, once the manifest is known.
    fn paths(&self) -> Vec<String> {
        self.manifest
            .iter()
            .flat_map(|m| m.entries.iter().map(|e| e.path.clone()))
            .collect()
    }
}

/// What an earlier run left for one object, verified again at start.
#[derive(Debug)]
pub(crate) struct Resumed {
    pub obj: ObjectKey,
    /// The manifest and its signer's key id.
    pub manifest: Option<(Manifest, u64)>,
    pub segments: Vec<StoredSegment>,
    pub partials: BTreeSet<(BlockKind, u32)>,
    /// What it holds in the state directory, as measured at start.
    pub footprint: Footprint,
}

/// What the state directory may hold: objects in progress, and their bytes on disk (each
/// object's [`Footprint`] on a file system allocating `disk` blocks). Beyond either, the
/// oldest incomplete objects are evicted (reported failed, their blocks removed). And what
/// may wait in memory for the publisher: packs' contents and manifests to store (beyond it,
/// new blocks wait — a publisher held up by an object store that is down never makes the
/// receiver's memory grow).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_objects: usize,
    pub max_state_bytes: u64,
    pub disk: Disk,
    pub max_queued_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_objects: usize::MAX,
            max_state_bytes: u64::MAX,
            disk: Disk::default(),
            max_queued_bytes: u64::MAX,
        }
    }
}

/// A block waiting for room (on disk for a data block, in the publisher's queue for any), with
/// the memory it holds.
#[derive(Debug)]
struct HeldBlock {
    block: ReadyBlock,
    permit: Permit,
    drop_partial: bool,
}

/// Finished objects remembered for the run (so their late blocks are released at once);
/// beyond this the oldest are forgotten, and a late block of theirs is looked up again.
const MAX_FINISHED_REMEMBERED: usize = 1 << 16;

/// The object table and its rules. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Delivery {
    objects: HashMap<ObjectKey, Entry>,
    limits: Limits,
    /// Open objects by arrival order: the front is evicted first.
    open_order: BTreeMap<u64, ObjectKey>,
    next_order: u64,
    /// Failed and done objects still in the table, oldest first.
    finished_order: VecDeque<ObjectKey>,
    /// Bytes the open objects hold in the state directory, as `du` counts them, writes
    /// handed to the decoders included.
    state_bytes: u64,
    /// Failed and evicted objects whose files are still being removed, and their bytes.
    removing: HashMap<ObjectKey, u64>,
    removing_bytes: u64,
    /// Complete objects handed to the publisher and not yet answered for, and their bytes:
    /// still in the state directory (a store that is down can keep them there for hours).
    publishing: HashMap<ObjectKey, u64>,
    publishing_bytes: u64,
    /// Bytes handed to the publisher in its jobs (a pack's contents, a manifest to store) and
    /// not yet answered for, by object: memory, bounded by `max_queued_bytes`.
    queued: HashMap<ObjectKey, u64>,
    queued_bytes: u64,
    /// Data blocks waiting to be decoded until removals make room (see [`Self::over`]).
    held: VecDeque<HeldBlock>,
    census: Census,
    actions: VecDeque<Action>,
    /// Jobs sent that will reply, not yet answered.
    awaiting: usize,
    link_closed: bool,
    /// Objects lost whole at the last link-down report (reported again only on change).
    missing_reported: u64,
    /// Senders' audit-log heads recorded so far.
    heads: SenderHeads,
    stats: DeliveryStats,
}

impl Delivery {
    /// A table holding what earlier runs left; objects among them that are complete are
    /// published (or recognised as already there) first.
    pub fn resume(leftovers: Vec<Resumed>, limits: Limits) -> Self {
        let mut delivery = Delivery {
            limits,
            ..Delivery::default()
        };
        let mut complete = Vec::new();
        for left in leftovers {
            let mut entry = Entry::new(None);
            if let Some((manifest, signer)) = left.manifest {
                entry.manifest = Some(Arc::new(manifest));
                entry.signer = signer;
            }
            entry.segment_size = left.segments.first().map(|s| s.segment_size);
            entry.segments = left.segments.into_iter().map(|s| (s.index, s)).collect();
            entry.partials = left.partials;
            entry.footprint = left.footprint;
            if entry.is_complete() {
                complete.push(left.obj);
            }
            delivery.insert(left.obj, entry);
        }
        complete.sort_unstable();
        for obj in complete {
            // An earlier run may have stopped between the rename and recording the object
            // done: the publisher checks for the content first.
            delivery.publish(obj, true, Vec::new());
        }
        delivery.enforce_limits();
        delivery
    }

    /// Enters a new object; an open one counts against the limits.
    fn insert(&mut self, obj: ObjectKey, mut entry: Entry) {
        entry.order = self.next_order;
        self.next_order += 1;
        if entry.status == Status::Open {
            self.open_order.insert(entry.order, obj);
            self.state_bytes = self.state_bytes.saturating_add(entry.footprint.charged());
        } else {
            self.remember_finished(obj);
        }
        self.objects.insert(obj, entry);
    }

    /// An object leaves the open set (publishing, done or failed): it no longer counts
    /// against the limits (its stored bytes go with it, unless `keeps_bytes`).
    fn close(&mut self, obj: ObjectKey, status: Status) {
        let Some(entry) = self.objects.get_mut(&obj) else {
            return;
        };
        if entry.status == Status::Open {
            self.open_order.remove(&entry.order);
            self.state_bytes = self.state_bytes.saturating_sub(entry.footprint.charged());
        }
        entry.status = status;
        if matches!(status, Status::Done | Status::Failed { .. }) {
            self.remember_finished(obj);
        }
    }

    fn remember_finished(&mut self, obj: ObjectKey) {
        self.finished_order.push_back(obj);
        while self.finished_order.len() > MAX_FINISHED_REMEMBERED {
            if let Some(old) = self.finished_order.pop_front() {
                if self
                    .objects
                    .get(&old)
                    .is_some_and(|e| matches!(e.status, Status::Done | Status::Failed { .. }))
                {
                    self.objects.remove(&old);
                }
            }
        }
    }

    /// Charges an open object with what a write added to its footprint on disk, then keeps
    /// the state within its limits.
    fn charge(&mut self, obj: ObjectKey, write: impl FnOnce(&mut Footprint, Disk) -> u64) {
        let disk = self.limits.disk;
        if let Some(entry) = self
            .objects
            .get_mut(&obj)
            .filter(|e| e.status == Status::Open)
        {
            let added = write(&mut entry.footprint, disk);
            self.state_bytes = self.state_bytes.saturating_add(added);
        }
        self.enforce_limits();
    }

    /// Evicts the oldest open objects while there are too many, or they hold too much.
    fn enforce_limits(&mut self) {
        loop {
            let reason = if self.open_order.len() > self.limits.max_objects {
                format!(
                    "more than {} objects in flight (--max-objects)",
                    self.limits.max_objects
                )
            } else if self.state_bytes > self.limits.max_state_bytes {
                format!(
                    "the state directory would hold more than {} (--max-state)",
                    sluice_common::units::Bytes(self.limits.max_state_bytes)
                )
            } else {
                return;
            };
            let Some((_, oldest)) = self.open_order.pop_first() else {
                return;
            };
            // `fail` closes it: its order entry is gone already, its bytes go now.
            self.fail(oldest, Failure::Evicted(reason));
        }
    }

    /// The next thing to do, if any.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Counts so far.
    pub fn stats(&self) -> &DeliveryStats {
        &self.stats
    }

    /// Whether the link has closed and every job has answered: the run is over.
    pub fn is_finished(&self) -> bool {
        self.link_closed && self.awaiting == 0 && self.actions.is_empty() && self.held.is_empty()
    }

    fn push(&mut self, action: Action) {
        match &action {
            Action::Decode(_)
            | Action::Publish(
                PublishJob::Publish { .. }
                | PublishJob::StoreManifest { .. }
                | PublishJob::Finish(_),
            ) => {
                self.awaiting += 1;
            }
            _ => {}
        }
        self.actions.push_back(action);
    }

    fn answered(&mut self, jobs: usize) {
        self.awaiting = self.awaiting.saturating_sub(jobs);
    }

    fn is_open(&self, obj: &ObjectKey) -> bool {
        self.objects
            .get(obj)
            .is_some_and(|e| e.status == Status::Open)
    }

    // ----- events from the link task -----

    /// Handles one event of the link task. `delivered_before` says whether an earlier run (or
    /// pass) delivered an object this run has not seen yet; `known` whether the receiver has an
    /// object at all (delivered, or partly stored), for the lost-whole report.
    pub fn handle_link(
        &mut self,
        event: LinkEvent,
        now: Instant,
        delivered_before: impl Fn(ObjectKey) -> bool,
        known: impl Fn(ObjectKey) -> bool,
    ) {
        match event {
            LinkEvent::BlockStarted(key) => self.on_block_started(key, now, delivered_before),
            LinkEvent::BlockReady(block, permit) => self.on_block_ready(block, permit),
            LinkEvent::BlockStalled {
                partial,
                permit,
                running,
            } => self.on_block_stalled(partial, permit, running),
            LinkEvent::Heartbeat(beat) => self.on_heartbeat(beat),
            LinkEvent::RelayStatus(status) => {
                self.push(Action::Notice(Notice::RelayStatus(status)))
            }
            LinkEvent::AuditHead(head) => {
                if self.heads.observe(head, now) {
                    self.push(Action::Notice(Notice::SenderAuditHead(head)));
                }
            }
            LinkEvent::LinkUp => self.push(Action::Notice(Notice::LinkUp)),
            LinkEvent::LinkDown(after) => {
                let missing = self
                    .census
                    .missing(|s, o| known(ObjectKey::new(s, o)), MISSING_CHECKS);
                let changed = missing.count != self.missing_reported && missing.count > 0;
                self.missing_reported = missing.count;
                let missing = changed.then_some(missing);
                self.push(Action::Notice(Notice::LinkDown { after, missing }));
            }
            LinkEvent::Closed => self.link_closed = true,
        }
    }

    fn on_block_started(
        &mut self,
        key: BlockKey,
        now: Instant,
        delivered_before: impl Fn(ObjectKey) -> bool,
    ) {
        let obj = ObjectKey::of(&key);
        self.census.seen(key.session, key.object);
        let Some(entry) = self.objects.get_mut(&obj) else {
            let mut entry = Entry::new(Some(now));
            if delivered_before(obj) {
                // Remembered for the run, so its other blocks need no lookup.
                entry.status = Status::Done;
                self.insert(obj, entry);
                self.push(Action::Link(LinkCommand::MarkDone(key)));
                self.stats.objects_already_delivered += 1;
                self.push(Action::Emit(Outcome::AlreadyDelivered {
                    obj,
                    manifest: None,
                }));
            } else {
                self.insert(obj, entry);
                self.enforce_limits();
            }
            return;
        };
        entry.first_seen.get_or_insert(now);
        if entry.status != Status::Open || entry.holds(key) {
            self.push(Action::Link(LinkCommand::MarkDone(key)));
        } else if entry.partials.contains(&(key.kind, key.index)) {
            self.push(Action::Decode(DecodeJob::LoadPartial(key)));
        }
    }

    fn on_block_ready(&mut self, block: ReadyBlock, permit: Permit) {
        let obj = ObjectKey::of(&block.key);
        let Some(entry) = self
            .objects
            .get_mut(&obj)
            .filter(|e| e.status == Status::Open)
        else {
            return;
        };
        // The link task may finish a block before the `MarkDone` for it arrives (a burst of
        // a later pass); a block already stored is not decoded again.
        if entry.holds(block.key) {
            return;
        }
        if block.key.kind == BlockKind::Data {
            if let Err(failure) = entry.check_segment_size(block.key.index, block.segment_size) {
                return self.fail(obj, failure);
            }
        }
        let drop_partial = entry.partials.contains(&(block.key.kind, block.key.index));
        if block.key.kind == BlockKind::Data {
            entry.decoding.insert(block.key.index);
        }
        let held = HeldBlock {
            block,
            permit,
            drop_partial,
        };
        if self.must_wait(&held) {
            // Evicted objects, or complete ones not yet placed, are still on disk, or the
            // publisher's queue is full: this block waits (its permit holds back the link task
            // meanwhile).
            self.held.push_back(held);
        } else {
            self.dispatch_data(held);
        }
    }

    /// Charges a data block's write before it happens (its plaintext is at most the smaller
    /// of its segment size and its ciphertext), then hands it to a decoder, unless making
    /// room for it evicted its own object.
    fn dispatch_data(&mut self, held: HeldBlock) {
        let HeldBlock {
            block,
            permit,
            drop_partial,
        } = held;
        if block.key.kind == BlockKind::Manifest {
            // Decoded in memory; storing it is charged when it is verified.
            return self.push(Action::Decode(DecodeJob::Decode {
                block,
                permit,
                drop_partial,
            }));
        }
        let obj = ObjectKey::of(&block.key);
        let offset = u64::from(block.key.index) * u64::from(block.segment_size);
        let len = u64::from(block.segment_size.min(block.geometry.block_len));
        self.charge(obj, |footprint, disk| footprint.segment(disk, offset, len));
        if self.is_open(&obj) {
            self.push(Action::Decode(DecodeJob::Decode {
                block,
                permit,
                drop_partial,
            }));
        }
    }

    /// Whether the state directory holds more than `--max-state` counting evicted objects
    /// not yet removed and complete objects not yet placed: new writes wait until they are
    /// gone (open objects are evicted only for what open objects hold).
    fn over(&self) -> bool {
        let leaving = self.removing_bytes.saturating_add(self.publishing_bytes);
        leaving > 0 && self.state_bytes.saturating_add(leaving) > self.limits.max_state_bytes
    }

    /// Whether the publisher's queue holds more than `max_queued_bytes`: new blocks wait until
    /// it is answered (a manifest block may open a pack of 8 MiB).
    fn queue_over(&self) -> bool {
        self.queued_bytes > self.limits.max_queued_bytes
    }

    /// Whether `held` must wait for room: a manifest for the publisher's queue, a data block
    /// also for the disk.
    fn must_wait(&self, held: &HeldBlock) -> bool {
        match held.block.key.kind {
            BlockKind::Manifest => self.queue_over(),
            BlockKind::Data => self.queue_over() || self.over(),
        }
    }

    /// Hands held blocks to the decoders while there is room, in arrival order.
    fn release_held(&mut self) {
        while let Some(front) = self.held.front() {
            if self.must_wait(front) {
                return;
            }
            let Some(held) = self.held.pop_front() else {
                return;
            };
            if self.is_open(&ObjectKey::of(&held.block.key)) {
                self.dispatch_data(held);
            }
        }
    }

    /// Counts `bytes` of `obj`'s in a publisher job until the job is answered.
    fn queue(&mut self, obj: ObjectKey, bytes: u64) {
        *self.queued.entry(obj).or_default() += bytes;
        self.queued_bytes = self.queued_bytes.saturating_add(bytes);
    }

    /// The publisher answered `obj`'s jobs: their bytes are no longer queued.
    fn dequeue(&mut self, obj: ObjectKey) {
        if let Some(bytes) = self.queued.remove(&obj) {
            self.queued_bytes = self.queued_bytes.saturating_sub(bytes);
            self.release_held();
        }
    }

    fn on_block_stalled(&mut self, partial: PartialBlock, permit: Option<Permit>, running: bool) {
        if !self.is_open(&ObjectKey::of(&partial.key)) {
            return;
        }
        if running {
            self.stats.blocks_stalled += 1;
            self.push(Action::Notice(Notice::BlockStalled {
                key: partial.key,
                held: partial.ids.len(),
                needed: partial.geometry.source_symbols,
            }));
        }
        // Symbols are only an optimisation for a later pass: without room (in memory, or on
        // disk) they are dropped.
        let Some(permit) = permit.filter(|_| !self.over()) else {
            return;
        };
        let obj = ObjectKey::of(&partial.key);
        let len = crate::state::partial_len(&partial);
        self.charge(obj, |footprint, disk| footprint.file(disk, len));
        if self.is_open(&obj) {
            self.push(Action::Decode(DecodeJob::SavePartial { partial, permit }));
        }
    }

    fn on_heartbeat(&mut self, beat: Heartbeat) {
        self.census.announced(beat.session, beat.objects);
        let tracked = &mut self.stats.sender_frames;
        if tracked.len() < MAX_SESSIONS_TRACKED || tracked.contains_key(&beat.session.0) {
            let sent = tracked.entry(beat.session.0).or_insert(0);
            *sent = (*sent).max(beat.frames_sent);
        }
        self.push(Action::Notice(Notice::Heartbeat(beat)));
    }

    // ----- replies from the workers -----

    /// Handles one worker reply.
    pub fn handle_reply(&mut self, reply: Reply, now: Instant) {
        match reply {
            Reply::Block {
                key,
                recovered,
                result,
            } => {
                self.answered(1);
                if let Some(recovered) = recovered {
                    self.stats.blocks_decoded += 1;
                    self.stats.blocks_recovered += u64::from(recovered);
                }
                if key.kind == BlockKind::Data {
                    if let Some(entry) = self.objects.get_mut(&ObjectKey::of(&key)) {
                        entry.decoding.remove(&key.index);
                    }
                }
                match result {
                    BlockResult::Stored(segment) => self.on_stored(key, segment),
                    BlockResult::Manifest { opened, existing } => {
                        self.on_manifest(key, *opened, existing)
                    }
                    BlockResult::Failed(failure) => self.fail(ObjectKey::of(&key), failure),
                    BlockResult::Refused { failure, paths } => {
                        self.fail_naming(ObjectKey::of(&key), failure, paths)
                    }
                }
            }
            Reply::PartialSaved { key, saved } => {
                self.answered(1);
                self.on_partial_saved(key, saved);
            }
            Reply::Removed(obj) => {
                self.answered(1);
                if let Some(bytes) = self.removing.remove(&obj) {
                    self.removing_bytes = self.removing_bytes.saturating_sub(bytes);
                }
                self.release_held();
            }
            Reply::PartialLoaded(key, partial) => {
                self.answered(1);
                match partial {
                    Some(partial) if self.is_open(&ObjectKey::of(&key)) => {
                        self.push(Action::Link(LinkCommand::Restore(partial)));
                    }
                    _ => {}
                }
            }
            Reply::ManifestStored(obj, result) => {
                self.answered(1);
                let publishing = self
                    .objects
                    .get(&obj)
                    .is_some_and(|e| e.status == Status::Publishing);
                if !publishing {
                    self.dequeue(obj);
                }
                match result {
                    // Being published: the manifest mattered only if it is stopped.
                    Err(failure) if publishing => {
                        tracing::warn!(object = %obj, "{failure}");
                    }
                    Err(failure) => self.fail(obj, failure),
                    Ok(()) => {}
                }
            }
            Reply::Committed(published) => {
                self.answered(published.len());
                for committed in published {
                    self.publish_answered(committed.obj);
                    self.on_committed(committed, now);
                }
            }
            Reply::AlreadyThere(obj) => {
                self.answered(1);
                self.publish_answered(obj);
                self.finish_already_delivered(obj);
            }
            Reply::Finished(obj) => {
                self.answered(1);
                // From now on its done marker answers for it.
                self.objects.remove(&obj);
            }
            Reply::PublishFailed(obj, failure) => {
                self.answered(1);
                self.publish_answered(obj);
                self.fail(obj, failure);
            }
            Reply::Released(released) => {
                for file in released {
                    self.on_released(file, now);
                }
            }
        }
    }

    /// A held file placed or refused: counted as its object's outcome would have been.
    fn on_released(&mut self, file: Released, now: Instant) {
        let Released {
            obj,
            entry,
            signer,
            approvers,
            result,
            is_signature,
        } = file;
        let outcome = match result {
            Ok(model_signer) => {
                if is_signature {
                    *self
                        .stats
                        .models_delivered
                        .entry(model_signer.clone())
                        .or_default() += 1;
                }
                self.stats.objects_delivered += 1;
                self.stats.bytes_delivered += entry.size;
                self.stats.last_delivery = Some(now);
                Outcome::Released {
                    obj,
                    entry,
                    signer,
                    approvers,
                    model_signer,
                }
            }
            Err(failure) => {
                self.stats.objects_failed += 1;
                Outcome::Failed {
                    obj,
                    path: Some(entry.path),
                    failure,
                }
            }
        };
        self.push(Action::Emit(outcome));
    }

    /// The publisher answered for `obj`: its bytes no longer wait in the state directory
    /// (placed, or removed with it), and blocks held for room may go on.
    fn publish_answered(&mut self, obj: ObjectKey) {
        self.dequeue(obj);
        if let Some(bytes) = self.publishing.remove(&obj) {
            self.publishing_bytes = self.publishing_bytes.saturating_sub(bytes);
            self.stats.objects_publishing = self.publishing.len() as u64;
            self.stats.bytes_publishing = self.publishing_bytes;
            self.release_held();
        }
    }

    /// Blocks of an object that is no longer open reached the state directory after it was
    /// finished: remove them again (unless the object's blocks are kept for a later run).
    fn clean_stray(&mut self, obj: ObjectKey) {
        let keep = matches!(
            self.objects.get(&obj).map(|e| e.status),
            Some(Status::Failed { kept: true } | Status::Open)
        );
        if !keep {
            self.push(Action::Publish(PublishJob::Discard {
                obj,
                remove_state: true,
            }));
        }
    }

    fn on_partial_saved(&mut self, key: BlockKey, saved: bool) {
        let obj = ObjectKey::of(&key);
        if !saved {
            return;
        }
        match self.objects.get_mut(&obj) {
            Some(entry) if entry.status == Status::Open => {
                entry.partials.insert((key.kind, key.index));
                self.stats.partials_saved += 1;
            }
            _ => self.clean_stray(obj),
        }
    }

    fn on_stored(&mut self, key: BlockKey, segment: StoredSegment) {
        let obj = ObjectKey::of(&key);
        let Some(entry) = self
            .objects
            .get_mut(&obj)
            .filter(|e| e.status == Status::Open)
        else {
            return self.clean_stray(obj);
        };
        entry.segments.insert(key.index, segment);
        entry.partials.remove(&(BlockKind::Data, key.index));
        let verdict = match &entry.manifest {
            None => Ok(false),
            Some(m) => check_segment(m, &segment).map(|()| entry.is_complete()),
        };
        // Its write was charged when it was handed to the decoder.
        match verdict {
            Ok(true) => self.publish(obj, false, Vec::new()),
            Ok(false) => self.hash_ahead(obj),
            Err(failure) => self.fail(obj, failure),
        }
    }

    /// Lets the publisher hash the stored content ahead of the manifest (which comes last).
    fn hash_ahead(&mut self, obj: ObjectKey) {
        let Some(entry) = self.objects.get(&obj) else {
            return;
        };
        let upto = entry.contiguous_bytes();
        if upto > 0 {
            self.push(Action::Publish(PublishJob::HashAhead { obj, upto }));
        }
    }

    fn on_manifest(&mut self, key: BlockKey, opened: Opened, existing: bool) {
        let obj = ObjectKey::of(&key);
        if !self.is_open(&obj) {
            return;
        }
        let Some(entry) = self.objects.get_mut(&obj) else {
            return;
        };
        entry.partials.remove(&(BlockKind::Manifest, 0));
        entry.signer = opened.signer.0;
        let manifest = Arc::new(opened.manifest);
        entry.manifest = Some(manifest.clone());
        if existing {
            return self.finish_already_delivered(obj);
        }
        if manifest.is_inline() {
            // A pack (or a directory, or an empty file): everything came with the manifest.
            let stray = entry.segments.keys().next().copied();
            return match stray {
                Some(index) => self.fail(obj, Failure::SegmentUnexpected(index)),
                None => self.publish(obj, false, opened.inline),
            };
        }
        let size_differs = entry
            .segment_size
            .filter(|s| *s != manifest.segment_size)
            .map(|got| Failure::SegmentSize {
                index: entry.segments.keys().next().copied().unwrap_or(0),
                expected: manifest.segment_size,
                got,
            });
        let checked = match size_differs {
            Some(failure) => Err(failure),
            None => entry
                .segments
                .values()
                .try_for_each(|segment| check_segment(&manifest, segment)),
        };
        match checked.map(|()| entry.is_complete()) {
            Ok(true) => {
                // Kept all the same: a publish that waits (an object store down) and is
                // stopped leaves the object for the next start, which needs its manifest.
                self.push(Action::Publish(PublishJob::StoreManifest {
                    obj,
                    envelope: opened.envelope,
                }));
                self.publish(obj, false, Vec::new());
            }
            Ok(false) => {
                let bytes = opened.envelope.len() as u64;
                self.queue(obj, bytes);
                self.push(Action::Publish(PublishJob::StoreManifest {
                    obj,
                    envelope: opened.envelope,
                }));
                self.hash_ahead(obj);
                self.charge(obj, |footprint, disk| footprint.file(disk, bytes));
            }
            Err(failure) => self.fail(obj, failure),
        }
    }

    fn publish(&mut self, obj: ObjectKey, check_existing: bool, inline: Vec<u8>) {
        let Some(entry) = self.objects.get_mut(&obj) else {
            return;
        };
        let Some(manifest) = entry.manifest.clone() else {
            return;
        };
        let signer = entry.signer;
        let charged = (entry.status == Status::Open).then(|| entry.footprint.charged());
        self.queue(obj, inline.len() as u64);
        self.close(obj, Status::Publishing);
        if let Some(bytes) = charged {
            self.publishing.insert(obj, bytes);
            self.publishing_bytes = self.publishing_bytes.saturating_add(bytes);
            self.stats.objects_publishing = self.publishing.len() as u64;
            self.stats.bytes_publishing = self.publishing_bytes;
        }
        self.push(Action::Publish(PublishJob::Publish {
            obj,
            manifest,
            signer,
            check_existing,
            inline,
        }));
    }

    fn on_committed(&mut self, committed: Committed, now: Instant) {
        let Committed {
            obj,
            bytes,
            entries,
        } = committed;
        // Published objects leave the table: their done marker answers for them from now on.
        let Some(entry) = self.objects.remove(&obj) else {
            return;
        };
        let entry_signer = entry.signer;
        let Some(manifest) = entry.manifest else {
            return;
        };
        self.stats.bytes_delivered += bytes;
        let duration = entry
            .first_seen
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        for outcome in entries {
            let outcome = match outcome {
                EntryOutcome::Delivered(entry) => {
                    self.stats.objects_delivered += 1;
                    self.stats.last_delivery = Some(now);
                    Outcome::Delivered {
                        obj,
                        manifest: manifest.clone(),
                        entry,
                        signer: KeyId(entry_signer),
                        duration,
                    }
                }
                EntryOutcome::AlreadyThere(entry) => {
                    self.stats.objects_already_delivered += 1;
                    Outcome::AlreadyDelivered {
                        obj,
                        manifest: Some((manifest.clone(), entry)),
                    }
                }
                EntryOutcome::Held(entry) => {
                    self.stats.files_held += 1;
                    Outcome::Held {
                        obj,
                        path: manifest
                            .entries
                            .get(entry)
                            .map(|e| e.path.clone())
                            .unwrap_or_default(),
                    }
                }
                EntryOutcome::Failed(entry, failure) => {
                    self.stats.objects_failed += 1;
                    Outcome::Failed {
                        obj,
                        path: manifest.entries.get(entry).map(|e| e.path.clone()),
                        failure,
                    }
                }
            };
            self.push(Action::Emit(outcome));
        }
    }

    /// The content is already in `--out`: the object is done without writing. It stays in
    /// the table (its blocks released at once) until its done marker is written.
    fn finish_already_delivered(&mut self, obj: ObjectKey) {
        self.close(obj, Status::Done);
        let Some(entry) = self.objects.get_mut(&obj) else {
            return;
        };
        let manifest = entry.manifest.take();
        entry.segments.clear();
        entry.partials.clear();
        self.stats.objects_already_delivered += 1;
        self.push(Action::Publish(PublishJob::Finish(obj)));
        self.push(Action::Emit(Outcome::AlreadyDelivered {
            obj,
            manifest: manifest.map(|m| (m, 0)),
        }));
    }

    /// Reports an object failed (once), and drops its blocks unless a later run may use them.
    fn fail(&mut self, obj: ObjectKey, failure: Failure) {
        self.fail_naming(obj, failure, Vec::new());
    }

    /// [`Delivery::fail`], naming `refused_paths` (a verified manifest's, refused) when the
    /// object has no manifest of its own yet.
    fn fail_naming(&mut self, obj: ObjectKey, failure: Failure, refused_paths: Vec<String>) {
        let Some(entry) = self.objects.get_mut(&obj) else {
            return;
        };
        if !matches!(entry.status, Status::Open | Status::Publishing) {
            return;
        }
        let kept = failure.keeps_state();
        let mut paths = entry.paths();
        if paths.is_empty() {
            paths = refused_paths;
        }
        let charged = (entry.status == Status::Open).then(|| entry.footprint.charged());
        self.close(obj, Status::Failed { kept });
        if let Some(bytes) = charged.filter(|b| *b > 0 && !kept) {
            // Its bytes count until the decoders (no slower than they write) have removed
            // them; the publisher removes them again after any job of its own for the object.
            *self.removing.entry(obj).or_default() += bytes;
            self.removing_bytes = self.removing_bytes.saturating_add(bytes);
            self.push(Action::Decode(DecodeJob::Remove(obj)));
        }
        let Some(entry) = self.objects.get_mut(&obj) else {
            return;
        };
        entry.manifest = None;
        entry.segments.clear();
        entry.partials.clear();
        self.push(Action::Publish(PublishJob::Discard {
            obj,
            remove_state: !kept,
        }));
        // One outcome per entry the object was known to carry (one, unknown, if none).
        let paths: Vec<Option<String>> = if paths.is_empty() {
            vec![None]
        } else {
            paths.into_iter().map(Some).collect()
        };
        for path in paths {
            self.stats.objects_failed += 1;
            self.push(Action::Emit(Outcome::Failed {
                obj,
                path,
                failure: failure.clone(),
            }));
        }
    }

    // ----- the end of the run -----

    /// Once [`is_finished`](Self::is_finished): every object seen in this run but not finished
    /// is reported failed (its blocks stay for a later run), and every object a sender
    /// announced of which nothing arrived, lost whole.
    pub fn finish(&mut self, known: impl Fn(ObjectKey) -> bool) {
        let mut unfinished: Vec<(ObjectKey, Failure)> = self
            .objects
            .iter()
            .filter(|(_, e)| e.status == Status::Open && e.first_seen.is_some())
            .map(|(obj, e)| {
                let failure = match e.missing() {
                    Some((missing, total)) => Failure::Incomplete { missing, total },
                    None => Failure::NoManifest,
                };
                (*obj, failure)
            })
            .collect();
        unfinished.sort_by_key(|(obj, _)| *obj);
        for (obj, failure) in unfinished {
            self.fail(obj, failure);
        }
        let lost = self
            .census
            .missing(|s, o| known(ObjectKey::new(s, o)), MISSING_CHECKS);
        if lost.count > 0 {
            self.stats.objects_failed += lost.count;
            self.stats.objects_lost_whole += lost.count;
            let first = lost
                .first
                .iter()
                .map(|(s, o)| ObjectKey::new(*s, *o))
                .collect();
            self.push(Action::Emit(Outcome::LostWhole {
                first,
                count: lost.count,
            }));
        }
    }
}

/// Checks a stored segment against the signed manifest: listed, placed with the manifest's
/// segment size, as long as its place says, and decrypted from the age file the manifest
/// binds (same header MAC and length).
fn check_segment(m: &Manifest, segment: &StoredSegment) -> Result<(), Failure> {
    let index = segment.index;
    let (Some(info), Some(plain_len)) = (
        m.segments.get(index as usize),
        m.segment_plain_len(index as usize),
    ) else {
        return Err(Failure::SegmentUnexpected(index));
    };
    if segment.segment_size != m.segment_size {
        return Err(Failure::SegmentSize {
            index,
            expected: m.segment_size,
            got: segment.segment_size,
        });
    }
    if info.header_mac != segment.header_mac {
        return Err(Failure::SegmentMismatch(index));
    }
    if u64::from(segment.plain_len) != plain_len || info.ciphertext_len != segment.ciphertext_len {
        return Err(Failure::SegmentUnexpected(index));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::footprint::NAME_BYTES;
    use sluice_common::keys::KeyId;
    use sluice_protocol::fec::ReedSolomon;
    use sluice_protocol::manifest::{Entry, EntryKind, SegmentInfo, MANIFEST_VERSION};
    use sluice_protocol::rx::{Assembler, Event, RxConfig};
    use sluice_protocol::tx::{BlockPlan, OutgoingBlock, Scheduler, Transmit, TxConfig};
    use sluice_protocol::wire::{LinkKey, ObjectId, SessionId};
    use tokio::sync::Semaphore;

    const SEGMENT: u32 = sluice_protocol::wire::MIN_SEGMENT_SIZE;
    const OBJ: ObjectKey = ObjectKey {
        session: SessionId(5),
        object: ObjectId(1),
    };

    fn key(kind: BlockKind, index: u32) -> BlockKey {
        BlockKey {
            session: OBJ.session,
            object: OBJ.object,
            kind,
            index,
        }
    }

    /// A ready block of `kind`/`index` (built the way the link task gets one).
    fn ready(kind: BlockKind, index: u32) -> (ReadyBlock, Permit) {
        ready_with_segment(kind, index, SEGMENT)
    }

    fn ready_with_segment(kind: BlockKind, index: u32, segment: u32) -> (ReadyBlock, Permit) {
        ready_in(OBJ.object.0, kind, index, segment)
    }

    /// A ready block of object `object` of the test session.
    fn ready_in(object: u64, kind: BlockKind, index: u32, segment: u32) -> (ReadyBlock, Permit) {
        let link = LinkKey::new(&[1; 32]);
        let plan = BlockPlan::for_block(kind, 100, 64, 0, 1);
        let segment_size = match kind {
            BlockKind::Data => segment,
            BlockKind::Manifest => 0,
        };
        let block_key = BlockKey {
            object: ObjectId(object),
            ..key(kind, index)
        };
        let block = OutgoingBlock::encode_pass(
            block_key,
            segment_size,
            &[7; 100],
            64,
            plan,
            0,
            &mut ReedSolomon::new(),
        )
        .unwrap();
        let mut sched = Scheduler::new(
            TxConfig::default(),
            OBJ.session,
            link.clone(),
            Default::default(),
        );
        let mut asm = Assembler::new(RxConfig::default(), link);
        sched.push_block(block).unwrap();
        let mut buf = vec![0; 2048];
        while !sched.is_drained() {
            if let Transmit::Frame(n) = sched.poll_transmit(Default::default(), &mut buf).unwrap() {
                asm.handle_frame(Default::default(), &buf[..n]);
            }
        }
        while let Some(event) = asm.poll_event() {
            if let Event::BlockReady(k) = event {
                let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
                return (asm.take_ready(&k).unwrap(), permit);
            }
        }
        panic!("block never ready");
    }

    fn entry(path: &str, kind: EntryKind, size: u64) -> Entry {
        Entry {
            path: path.into(),
            kind,
            size,
            mode: 0o644,
            mtime_secs: 0,
            mtime_nanos: 0,
            sha256: [0; 32],
        }
    }

    /// A file in full segments whose age files have the header MACs `macs`.
    fn manifest(macs: &[[u8; 32]]) -> Opened {
        let size = u64::from(SEGMENT) * macs.len() as u64;
        Opened {
            manifest: Manifest {
                version: MANIFEST_VERSION,
                session: OBJ.session,
                object: OBJ.object,
                sequence: 1,
                entries: vec![entry("dir/file", EntryKind::File, size)],
                segment_size: SEGMENT,
                segments: macs
                    .iter()
                    .map(|mac| SegmentInfo {
                        ciphertext_len: 100,
                        header_mac: *mac,
                    })
                    .collect(),
                approval: None,
            },
            envelope: b"envelope".to_vec(),
            signer: KeyId(1),
            inline: Vec::new(),
        }
    }

    /// A full segment, decrypted from an age file whose header MAC is `mac`.
    fn segment(index: u32, mac: [u8; 32]) -> StoredSegment {
        StoredSegment {
            index,
            segment_size: SEGMENT,
            plain_len: SEGMENT,
            ciphertext_len: 100,
            header_mac: mac,
        }
    }

    fn stored(d: &mut Delivery, index: u32, mac: [u8; 32]) {
        let reply = Reply::Block {
            key: key(BlockKind::Data, index),
            recovered: Some(false),
            result: BlockResult::Stored(segment(index, mac)),
        };
        d.handle_reply(reply, Instant::now());
    }

    fn committed(obj: ObjectKey, bytes: u64, entries: Vec<EntryOutcome>) -> Reply {
        Reply::Committed(vec![Committed {
            obj,
            bytes,
            entries,
        }])
    }

    fn opened(d: &mut Delivery, opened: Opened) {
        let reply = Reply::Block {
            key: key(BlockKind::Manifest, 0),
            recovered: Some(true),
            result: BlockResult::Manifest {
                opened: Box::new(opened),
                existing: false,
            },
        };
        d.handle_reply(reply, Instant::now());
    }

    fn link(d: &mut Delivery, event: LinkEvent, delivered_before: bool) {
        d.handle_link(event, Instant::now(), |_| delivered_before, |_| false);
    }

    /// Every action, described in a word, in order.
    fn actions(d: &mut Delivery) -> Vec<String> {
        std::iter::from_fn(|| d.poll_action())
            .map(|a| match a {
                Action::Link(LinkCommand::MarkDone(k)) => {
                    format!("mark-done {:?}{}", k.kind, k.index)
                }
                Action::Link(LinkCommand::Restore(p)) => format!("restore {}", p.key.index),
                Action::Decode(DecodeJob::Decode { block, .. }) => {
                    format!("decode {}", block.key.index)
                }
                Action::Decode(DecodeJob::SavePartial { .. }) => "save-partial".into(),
                Action::Decode(DecodeJob::LoadPartial(k)) => format!("load-partial {}", k.index),
                Action::Decode(DecodeJob::Remove(obj)) => format!("remove {}", obj.object.0),
                Action::Publish(PublishJob::StoreManifest { .. }) => "store-manifest".into(),
                Action::Publish(PublishJob::HashAhead { upto, .. }) => {
                    format!("hash-ahead {upto}")
                }
                Action::Publish(PublishJob::Publish {
                    check_existing,
                    inline,
                    ..
                }) => {
                    format!("publish {check_existing} {}", inline.len())
                }
                Action::Publish(PublishJob::Discard { remove_state, .. }) => {
                    format!("discard {remove_state}")
                }
                Action::Publish(PublishJob::Finish(_)) => "finish".into(),
                Action::Emit(Outcome::Delivered { entry, .. }) => format!("delivered {entry}"),
                Action::Emit(Outcome::AlreadyDelivered { manifest, .. }) => {
                    format!("already-delivered {}", manifest.is_some())
                }
                Action::Emit(Outcome::Failed { failure, .. }) => format!("failed: {failure}"),
                Action::Emit(Outcome::LostWhole { count, .. }) => format!("lost-whole {count}"),
                Action::Emit(Outcome::Held { path, .. }) => format!("held {path}"),
                Action::Emit(Outcome::Released { entry, .. }) => format!("released {}", entry.path),
                Action::Notice(n) => format!("notice {n:?}").chars().take(20).collect(),
            })
            .collect()
    }

    #[test]
    fn a_manifest_that_completes_its_object_is_kept_before_the_publish() {
        // A publish that waits for an object store and is stopped leaves the object for the
        // next start: without its manifest kept, that start could not publish it.
        let mut d = Delivery::default();
        link(
            &mut d,
            LinkEvent::BlockStarted(key(BlockKind::Data, 0)),
            false,
        );
        let (block, permit) = ready(BlockKind::Data, 0);
        link(&mut d, LinkEvent::BlockReady(block, permit), false);
        stored(&mut d, 0, [1; 32]);
        let _ = actions(&mut d);
        opened(&mut d, manifest(&[[1; 32]]));
        assert_eq!(actions(&mut d), ["store-manifest", "publish false 0"]);
        // Its failure, the publish under way, does not fail the object.
        d.handle_reply(
            Reply::ManifestStored(OBJ, Err(Failure::Io("disk full".into()))),
            Instant::now(),
        );
        assert_eq!(d.stats().objects_failed, 0);
        d.handle_reply(
            committed(OBJ, 20, vec![EntryOutcome::Delivered(0)]),
            Instant::now(),
        );
        assert_eq!(actions(&mut d), ["delivered 0"]);
    }

    #[test]
    fn an_object_is_published_once_its_manifest_and_segments_are_stored() {
        let mut d = Delivery::default();
        link(
            &mut d,
            LinkEvent::BlockStarted(key(BlockKind::Data, 0)),
            false,
        );
        assert!(actions(&mut d).is_empty(), "a new object is assembled");
        let (block, permit) = ready(BlockKind::Data, 0);
        link(&mut d, LinkEvent::BlockReady(block, permit), false);
        assert_eq!(actions(&mut d), ["decode 0"]);
        stored(&mut d, 0, [1; 32]);
        assert_eq!(actions(&mut d), ["hash-ahead 65536"]);
        opened(&mut d, manifest(&[[1; 32], [2; 32]]));
        assert_eq!(actions(&mut d), ["store-manifest", "hash-ahead 65536"]);
        d.handle_reply(Reply::ManifestStored(OBJ, Ok(())), Instant::now());
        stored(&mut d, 1, [2; 32]);
        assert_eq!(actions(&mut d), ["publish false 0"]);
        // Blocks of an object being published are not needed any more.
        link(
            &mut d,
            LinkEvent::BlockStarted(key(BlockKind::Data, 1)),
            false,
        );
        assert_eq!(actions(&mut d), ["mark-done Data1"]);
        d.handle_reply(
            committed(OBJ, 20, vec![EntryOutcome::Delivered(0)]),
            Instant::now(),
        );
        assert_eq!(actions(&mut d), ["delivered 0"]);
        let stats = d.stats();
        assert_eq!((stats.objects_delivered, stats.bytes_delivered), (1, 20));
        assert_eq!((stats.blocks_decoded, stats.blocks_recovered), (3, 1));
        // A later pass: its done marker answers, once.
        link(
            &mut d,
            LinkEvent::BlockStarted(key(BlockKind::Data, 0)),
            true,
        );
        assert_eq!(
            actions(&mut d),
            ["mark-done Data0", "already-delivered false"]
        );
        link(
            &mut d,
            LinkEvent::BlockStarted(key(BlockKind::Data, 1)),
            true,
        );
        assert_eq!(actions(&mut d), ["mark-done Data1"]);
        link(&mut d, LinkEvent::Closed, false);
        assert!(d.is_finished());
    }

    /// The first symbol of a block arrives, then the block is ready with `segment` as its
    /// wire segment size.
    fn arrives(d: &mut Delivery, index: u32, segment: u32) {
        link(
            d,
            LinkEvent::BlockStarted(key(BlockKind::Data, index)),
            false,
        );
        let (block, permit) = ready_with_segment(BlockKind::Data, index, segment);
        link(d, LinkEvent::BlockReady(block, permit), false);
    }

    #[test]
    fn a_block_that_is_already_stored_is_not_decoded_again() {
        let mut d = Delivery::default();
        arrives(&mut d, 0, SEGMENT);
        stored(&mut d, 0, [1; 32]);
        let _ = actions(&mut d);
        // Ready again before the link task took the `MarkDone` (a burst of a later pass).
        let (block, permit) = ready(BlockKind::Data, 0);
        link(&mut d, LinkEvent::BlockReady(block, permit), false);
        assert_eq!(actions(&mut d), Vec::<String>::new());
    }

    #[test]
    fn blocks_whose_segment_size_disagrees_fail_the_object() {
        // Two data blocks that disagree: the second fails the object.
        let mut d = Delivery::default();
        arrives(&mut d, 0, SEGMENT);
        arrives(&mut d, 1, SEGMENT * 2);
        let got = actions(&mut d);
        assert_eq!(
            got[1..],
            [
                "remove 1",
                "discard true",
                "failed: segment 1 carries segment size 131072, the object has 65536"
            ],
            "{got:?}"
        );
        // A block stored before the manifest, whose manifest states another size.
        let mut d = Delivery::default();
        arrives(&mut d, 0, SEGMENT * 2);
        stored(&mut d, 0, [1; 32]);
        let _ = actions(&mut d);
        opened(&mut d, manifest(&[[1; 32]]));
        assert_eq!(
            actions(&mut d),
            [
                "remove 1",
                "discard true",
                "failed: segment 0 carries segment size 131072, the object has 65536"
            ]
        );
    }

    #[test]
    fn a_segment_that_is_not_the_signed_one_fails_the_object_and_its_strays_are_removed() {
        let mut d = Delivery::default();
        link(
            &mut d,
            LinkEvent::BlockStarted(key(BlockKind::Data, 0)),
            false,
        );
        stored(&mut d, 0, [9; 32]);
        assert_eq!(actions(&mut d), ["hash-ahead 65536"]);
        opened(&mut d, manifest(&[[1; 32]]));
        assert_eq!(
            actions(&mut d),
            [
                "discard true",
                "failed: segment 0 does not match the signed manifest"
            ]
        );
        assert_eq!(d.stats().objects_failed, 1);
        // A block decoded meanwhile lands in the state directory: it is removed again, and the
        // object is not reported twice.
        stored(&mut d, 1, [2; 32]);
        assert_eq!(actions(&mut d), ["discard true"]);
        link(
            &mut d,
            LinkEvent::BlockStarted(key(BlockKind::Data, 2)),
            false,
        );
        assert_eq!(actions(&mut d), ["mark-done Data2"]);
        assert_eq!(d.stats().objects_failed, 1);
    }

    #[test]
    fn the_end_of_a_run_reports_unfinished_and_lost_whole_objects_keeping_their_blocks() {
        let mut d = Delivery::default();
        link(
            &mut d,
            LinkEvent::BlockStarted(key(BlockKind::Data, 0)),
            false,
        );
        stored(&mut d, 0, [1; 32]);
        opened(&mut d, manifest(&[[1; 32], [2; 32], [3; 32]]));
        // Objects 0..4 announced; object 1 seen; 0, 2 and 3 never.
        let beat = Heartbeat {
            session: OBJ.session,
            seq: 0,
            frames_sent: 10,
            rate: 0,
            objects: 4,
        };
        link(&mut d, LinkEvent::Heartbeat(beat), false);
        d.handle_reply(Reply::ManifestStored(OBJ, Ok(())), Instant::now());
        link(&mut d, LinkEvent::Closed, false);
        actions(&mut d);
        assert!(d.is_finished());
        d.finish(|obj| obj.object == ObjectId(3));
        assert_eq!(
            actions(&mut d),
            [
                "discard false",
                "failed: incomplete: 2 of 3 segments missing",
                "lost-whole 2"
            ]
        );
        assert_eq!(d.stats().objects_failed, 3);
        assert_eq!(d.stats().sender_frames.get(&OBJ.session.0), Some(&10));
    }

    #[test]
    fn saved_symbols_are_restored_when_their_block_starts_again_and_only_if_wanted() {
        let mut d = Delivery::resume(
            vec![Resumed {
                obj: OBJ,
                manifest: None,
                segments: vec![segment(0, [1; 32])],
                partials: [(BlockKind::Data, 1)].into_iter().collect(),
                footprint: Footprint::measured(12288, 4, 56, true),
            }],
            Limits::default(),
        );
        assert!(actions(&mut d).is_empty());
        link(
            &mut d,
            LinkEvent::BlockStarted(key(BlockKind::Data, 0)),
            false,
        );
        assert_eq!(actions(&mut d), ["mark-done Data0"], "already stored");
        link(
            &mut d,
            LinkEvent::BlockStarted(key(BlockKind::Data, 1)),
            false,
        );
        assert_eq!(actions(&mut d), ["load-partial 1"]);
        let (block, _) = ready(BlockKind::Data, 1);
        let partial = PartialBlock {
            key: block.key,
            geometry: block.geometry,
            segment_size: block.segment_size,
            ids: vec![],
            symbols: vec![],
        };
        d.handle_reply(
            Reply::PartialLoaded(key(BlockKind::Data, 1), Some(partial)),
            Instant::now(),
        );
        assert_eq!(actions(&mut d), ["restore 1"]);
        // A block saved while the link was up is counted and its symbols kept; a stalled block
        // of an object that is finished is not.
        let (block, _) = ready(BlockKind::Data, 2);
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let partial = PartialBlock {
            key: block.key,
            geometry: block.geometry,
            segment_size: block.segment_size,
            ids: vec![0],
            symbols: vec![0; 64],
        };
        link(
            &mut d,
            LinkEvent::BlockStalled {
                partial,
                permit: Some(permit),
                running: true,
            },
            false,
        );
        let got = actions(&mut d);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], "save-partial");
        assert_eq!(d.stats().blocks_stalled, 1);
    }

    fn start(d: &mut Delivery, object: u64) {
        let key = BlockKey {
            object: ObjectId(object),
            ..key(BlockKind::Data, 0)
        };
        link(d, LinkEvent::BlockStarted(key), false);
    }

    /// Block `index` (100 bytes of ciphertext) of object `object` is ready to be decoded.
    fn ready_data(d: &mut Delivery, object: u64, index: u32) {
        let (block, permit) = ready_in(object, BlockKind::Data, index, SEGMENT);
        link(d, LinkEvent::BlockReady(block, permit), false);
    }

    /// Every action, in a word, the decoders answering each `Remove` as they meet it.
    fn settle(d: &mut Delivery) -> Vec<String> {
        let mut all = Vec::new();
        loop {
            let got = actions(d);
            if got.is_empty() {
                return all;
            }
            for removed in got.iter().filter_map(|a| a.strip_prefix("remove ")) {
                let obj = ObjectKey {
                    object: ObjectId(removed.parse().unwrap()),
                    ..OBJ
                };
                d.handle_reply(Reply::Removed(obj), Instant::now());
            }
            all.extend(got);
        }
    }

    #[test]
    fn the_oldest_incomplete_objects_are_evicted_beyond_the_state_limits() {
        let mut d = Delivery::resume(
            Vec::new(),
            Limits {
                max_objects: 2,
                max_state_bytes: 20_000,
                disk: Disk::new(4096),
                ..Limits::default()
            },
        );
        start(&mut d, 1);
        start(&mut d, 2);
        assert!(actions(&mut d).is_empty());
        // A third object in flight: the oldest goes; nothing of it is on disk.
        start(&mut d, 3);
        assert_eq!(
            actions(&mut d),
            [
                "discard true",
                "failed: evicted: more than 2 objects in flight (--max-objects)"
            ]
        );
        // A data block is charged before it is decoded: its object's directory, a block of
        // content, a block of records and three names, 12 576 bytes.
        let tiny = 3 * 4096 + 3 * NAME_BYTES;
        ready_data(&mut d, 2, 0);
        assert_eq!(actions(&mut d), ["decode 0"]);
        assert_eq!(d.state_bytes, tiny);
        // Two are over 20 000: object 2 goes, and counts until the decoders removed it.
        ready_data(&mut d, 3, 0);
        let got = actions(&mut d);
        assert_eq!(got[..2], ["remove 2", "discard true"], "{got:?}");
        assert!(got[2].starts_with("failed: evicted: the state directory would hold"));
        assert_eq!(got[3..], ["decode 0"]);
        assert_eq!((d.state_bytes, d.removing_bytes), (tiny, tiny));
        // Meanwhile a new write waits (holding its memory), and stalled symbols are dropped.
        ready_data(&mut d, 3, 1);
        let (block, _) = ready_in(3, BlockKind::Data, 2, SEGMENT);
        let partial = PartialBlock {
            key: block.key,
            geometry: block.geometry,
            segment_size: block.segment_size,
            ids: vec![0],
            symbols: vec![0; 64],
        };
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        link(
            &mut d,
            LinkEvent::BlockStalled {
                partial,
                permit: Some(permit),
                running: false,
            },
            false,
        );
        assert!(actions(&mut d).is_empty());
        link(&mut d, LinkEvent::Closed, false);
        assert!(!d.is_finished(), "a block is waiting");
        // Object 2 is gone: the block goes, its content block charged (its record still fits
        // the log's block).
        d.handle_reply(
            Reply::Removed(ObjectKey::new(OBJ.session, ObjectId(2))),
            Instant::now(),
        );
        assert_eq!(actions(&mut d), ["decode 1"]);
        assert_eq!((d.state_bytes, d.removing_bytes), (tiny + 4096, 0));
        assert_eq!(d.stats().objects_failed, 2);
    }

    #[test]
    fn a_complete_object_not_yet_placed_counts_and_holds_back_new_writes() {
        let mut d = Delivery::resume(
            Vec::new(),
            Limits {
                max_objects: 100,
                max_state_bytes: 1 << 30,
                disk: Disk::new(4096),
                ..Limits::default()
            },
        );
        arrives(&mut d, 0, SEGMENT);
        stored(&mut d, 0, [1; 32]);
        opened(&mut d, manifest(&[[1; 32], [2; 32]]));
        d.handle_reply(Reply::ManifestStored(OBJ, Ok(())), Instant::now());
        arrives(&mut d, 1, SEGMENT);
        stored(&mut d, 1, [2; 32]);
        let got = actions(&mut d);
        assert_eq!(got.last().map(String::as_str), Some("publish false 0"));
        // Handed to the publisher (a store that is down may keep it for hours): no longer an
        // open object, but its bytes are still in the state directory.
        let waiting = d.publishing_bytes;
        assert!(waiting > 0);
        assert_eq!(d.state_bytes, 0);
        assert_eq!(
            (d.stats().objects_publishing, d.stats().bytes_publishing),
            (1, waiting)
        );
        // With them, a new object's first block passes the bound: the next one waits.
        d.limits.max_state_bytes = waiting + 4096;
        start(&mut d, 2);
        ready_data(&mut d, 2, 0);
        assert_eq!(actions(&mut d), ["decode 0"]);
        ready_data(&mut d, 2, 1);
        assert!(actions(&mut d).is_empty());
        // Placed at last: the block goes on.
        d.handle_reply(
            committed(OBJ, 20, vec![EntryOutcome::Delivered(0)]),
            Instant::now(),
        );
        assert_eq!(actions(&mut d), ["decode 1", "delivered 0"]);
        assert_eq!((d.publishing_bytes, d.stats().objects_publishing), (0, 0));
    }

    /// A pack of `bytes` bytes (everything in its manifest) for object `object`.
    fn pack_opened(d: &mut Delivery, object: u64, bytes: u64) {
        let key = BlockKey {
            object: ObjectId(object),
            ..key(BlockKind::Manifest, 0)
        };
        let opened = Opened {
            manifest: Manifest {
                version: MANIFEST_VERSION,
                session: OBJ.session,
                object: ObjectId(object),
                sequence: 1,
                entries: vec![entry("f", EntryKind::File, bytes)],
                segment_size: 0,
                segments: Vec::new(),
                approval: None,
            },
            envelope: b"envelope".to_vec(),
            signer: KeyId(1),
            inline: vec![0; bytes as usize],
        };
        let reply = Reply::Block {
            key,
            recovered: Some(false),
            result: BlockResult::Manifest {
                opened: Box::new(opened),
                existing: false,
            },
        };
        d.handle_reply(reply, Instant::now());
    }

    /// The manifest block of object `object` arrives, whole.
    fn manifest_arrives(d: &mut Delivery, object: u64) {
        let key = BlockKey {
            object: ObjectId(object),
            ..key(BlockKind::Manifest, 0)
        };
        link(d, LinkEvent::BlockStarted(key), false);
        let (block, permit) = ready_in(object, BlockKind::Manifest, 0, SEGMENT);
        link(d, LinkEvent::BlockReady(block, permit), false);
    }

    #[test]
    fn packs_waiting_for_the_publisher_hold_back_new_blocks_beyond_the_memory_bound() {
        let mut d = Delivery::resume(
            Vec::new(),
            Limits {
                max_queued_bytes: 1000,
                ..Limits::default()
            },
        );
        manifest_arrives(&mut d, 1);
        assert_eq!(actions(&mut d), ["decode 0"]);
        pack_opened(&mut d, 1, 600);
        assert_eq!(actions(&mut d), ["publish false 600"]);
        manifest_arrives(&mut d, 2);
        assert_eq!(actions(&mut d), ["decode 0"]);
        pack_opened(&mut d, 2, 600);
        assert_eq!(actions(&mut d), ["publish false 600"]);
        // 1 200 bytes of packs wait for a publisher held up (by a store that is down): the
        // next manifest waits too, holding its memory.
        manifest_arrives(&mut d, 3);
        assert!(actions(&mut d).is_empty());
        assert_eq!(d.queued_bytes, 1200);
        // The first pack is placed: the queue is within its bound again.
        let first = ObjectKey::new(OBJ.session, ObjectId(1));
        d.handle_reply(
            committed(first, 600, vec![EntryOutcome::Delivered(0)]),
            Instant::now(),
        );
        assert_eq!(actions(&mut d), ["decode 0", "delivered 0"]);
        assert_eq!(d.queued_bytes, 600);
    }

    #[test]
    fn many_tiny_objects_are_charged_their_footprint_on_disk_not_their_payload() {
        // 1000 objects of one segment each, never finished: 100 KB of ciphertext, but each
        // takes a directory, a content file and a records file in whole 4 KiB blocks, and
        // three names (12 576 bytes). In 1 MiB, 83 of them fit.
        let tiny = 3 * 4096 + 3 * NAME_BYTES;
        assert_eq!(tiny, 12_576);
        let limit = 1 << 20;
        let mut d = Delivery::resume(
            Vec::new(),
            Limits {
                max_objects: 10_000,
                max_state_bytes: limit,
                disk: Disk::new(4096),
                ..Limits::default()
            },
        );
        let mut got = Vec::new();
        for object in 0..1000 {
            start(&mut d, object);
            ready_data(&mut d, object, 0);
            got.extend(settle(&mut d));
        }
        let decoded = got.iter().filter(|a| *a == "decode 0").count();
        let evicted = got
            .iter()
            .filter(|a| a.starts_with("failed: evicted") && a.ends_with("(--max-state)"))
            .count();
        assert_eq!((decoded, evicted), (1000, 917), "{:?}", &got[..4]);
        assert_eq!(d.open_order.len(), 83);
        assert_eq!((d.state_bytes, d.removing_bytes), (83 * tiny, 0));
        assert!(d.state_bytes <= limit);
        // The newest stay.
        let oldest = d.open_order.values().next().map(|o| o.object);
        assert_eq!(oldest, Some(ObjectId(917)));

        // Decoders that have not removed anything yet: after the first eviction every write
        // waits, so the disk never holds more than the limit.
        let mut d = Delivery::resume(
            Vec::new(),
            Limits {
                max_objects: 10_000,
                max_state_bytes: limit,
                disk: Disk::new(4096),
                ..Limits::default()
            },
        );
        for object in 0..100 {
            start(&mut d, object);
            ready_data(&mut d, object, 0);
        }
        let got = actions(&mut d);
        assert_eq!(got.iter().filter(|a| *a == "decode 0").count(), 84);
        assert_eq!(got.iter().filter(|a| a.starts_with("remove")).count(), 1);
        assert!(d.state_bytes + d.removing_bytes <= limit + tiny);
        assert_eq!(d.held.len(), 16);

        // On a file system of 64 KiB blocks the same objects take 3 × 64 KiB each: 5 fit.
        let mut d = Delivery::resume(
            Vec::new(),
            Limits {
                max_objects: 10_000,
                max_state_bytes: limit,
                disk: Disk::new(64 << 10),
                ..Limits::default()
            },
        );
        for object in 0..100 {
            start(&mut d, object);
            ready_data(&mut d, object, 0);
            settle(&mut d);
        }
        assert_eq!(d.open_order.len(), 5);
        assert_eq!(d.state_bytes, 5 * (3 * (64 << 10) + 3 * NAME_BYTES));
    }

    #[test]
    fn what_an_earlier_run_left_counts_as_measured() {
        // Three objects left: 40 KiB measured each, 120 KiB with a limit of 100 KiB: the
        // oldest is evicted at start, before any frame, and removed.
        let left = |object: u64| Resumed {
            obj: ObjectKey {
                object: ObjectId(object),
                ..OBJ
            },
            manifest: None,
            segments: Vec::new(),
            partials: BTreeSet::new(),
            footprint: Footprint::measured(40 << 10, 0, 0, false),
        };
        let mut d = Delivery::resume(
            vec![left(1), left(2), left(3)],
            Limits {
                max_state_bytes: 100 << 10,
                ..Limits::default()
            },
        );
        let got = actions(&mut d);
        assert_eq!(got[..2], ["remove 1", "discard true"], "{got:?}");
        assert!(got[2].contains("(--max-state)"), "{got:?}");
        assert_eq!((d.state_bytes, d.removing_bytes), (80 << 10, 40 << 10));
    }
}
