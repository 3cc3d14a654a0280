//! Objects in, FEC-encoded blocks out: read → hash → age-encrypt each segment → FEC, then the
//! signed and encrypted manifest block, for every pass. Small files and directories are
//! gathered into packs: one object whose manifest block carries their content inline (one
//! X25519, one signature and one FEC block for hundreds of small files).
//!
//! ```text
//!             jobs, round robin            results, same order
//!  reader ──▶ worker 0 (age, SHA-256, FEC) ──┐
//!  (read,  ──▶ worker 1                    ──┼──▶ collector ──▶ send loop
//!   SHA)   ──▶ ...                         ──┘    (manifest: sign, age, FEC)
//! ```
//!
//! The reader reads each object in segments and hashes the plaintext (a sequential hash);
//! the expensive, independent part of each segment (encryption, the ciphertext hash, FEC) runs
//! on a small pool of workers. Jobs go to the workers round robin and the collector takes the
//! results round robin too, so blocks leave in the order they were read without a reorder
//! buffer. Every channel holds one item, so memory stays a few segments deep whatever the file
//! size. Each segment is an independent age file (a lost segment costs only itself).
//!
//! Because age is randomised and a block's FEC code is fixed by its first pass, later passes
//! must resend the *same* ciphertext: pass 0 spools every block's ciphertext, later passes
//! re-read it (nothing is spooled for one pass).

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use sluice_common::envelope;
use sluice_common::keys::SigningKey;
use sluice_common::sequence::Sequence;
use sluice_common::service::Stage;
use sluice_protocol::fec::ReedSolomon;
use sluice_protocol::manifest::{
    Approval, Entry, EntryKind, Manifest, SegmentInfo, MANIFEST_VERSION, MAX_ENTRIES,
};
use sluice_protocol::tx::{BlockPlan, OutgoingBlock};
use sluice_protocol::wire::{BlockKey, BlockKind, ObjectId, SessionId};

use crate::objects::{Source, SourceObject};

/// Most encryption workers, whatever the core count: beyond this the single send loop and
/// the reader's plaintext hash are the limit.
const MAX_WORKERS: usize = 4;

/// What the encoder tells the send loop.
#[derive(Debug)]
pub enum Produced {
    /// A block's symbols for `pass`; `plain_bytes` of file content it carries (0 for
    /// manifests).
    Block {
        block: OutgoingBlock,
        plain_bytes: u64,
        pass: u16,
    },
    /// Every block of an object went to the send loop in pass 0.
    ObjectQueued {
        object: ObjectId,
        /// Its entries: one, or a pack's.
        entries: Vec<QueuedEntry>,
        segments: usize,
    },
    /// A member of a pack could not be read; the rest of the pack goes on.
    EntryFailed { path: String, reason: String },
    /// An object could not be read or encoded; none of its later blocks will come.
    ObjectFailed {
        object: ObjectId,
        path: String,
        reason: String,
    },
    /// A pass finished queueing.
    PassQueued(u16),
    /// Not from the encoder: a daemon's mark after an item's objects. The send loop reports
    /// it as [`Passed`] once every object it received before the mark has left on the link
    /// (all passes) or failed.
    Barrier(u64),
    /// Not from the encoder: a daemon's entry left out (a symlink) or refused (a name the
    /// receiver would refuse), for the send loop to report like the one-shot's.
    NotSent(crate::objects::Skipped),
}

/// A [`Produced::Barrier`] the send loop got past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passed {
    pub token: u64,
    /// Objects or pack entries that failed between the previous barrier and this one.
    pub failed: u64,
}

/// One file or directory of a queued object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEntry {
    pub path: String,
    pub size: u64,
    /// The content's SHA-256; `None` for a directory.
    pub sha256: Option<[u8; 32]>,
}

/// Fixed settings of one run's encoder.
pub struct EncodeConfig {
    pub session: SessionId,
    pub symbol_size: u16,
    pub segment_size: u32,
    /// Files smaller than this (and directories) go into packs of at most `segment_size`
    /// content bytes; 0 sends every entry as its own object.
    pub pack_under: u64,
    pub repair_permille: u32,
    pub passes: u16,
    pub recipients: Vec<age::x25519::Recipient>,
    pub signer: SigningKey,
    /// Where pass 0 keeps ciphertext for later passes (required when `passes > 1`).
    pub spool: Option<PathBuf>,
    /// Encryption workers; 0 picks one per core (at most [`MAX_WORKERS`]).
    pub workers: usize,
    /// Id of the first object (a daemon numbers each item's objects after the last one's:
    /// ids stay unique within the session).
    pub first_object: u64,
    /// The export approval every manifest carries, if one was checked before sending.
    pub approval: Option<Approval>,
    /// The daemon's watchdog stage: each open and read of a file is a step (waits for the
    /// send loop are not: they last as long as the link takes).
    pub watched: Option<Stage>,
}

impl std::fmt::Debug for EncodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodeConfig")
            .field("session", &self.session)
            .field("symbol_size", &self.symbol_size)
            .field("segment_size", &self.segment_size)
            .field("passes", &self.passes)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl EncodeConfig {
    fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(MAX_WORKERS),
            n => n,
        }
    }

    /// Repair for a block of `len` bytes: the protocol's rule ([`BlockPlan::for_block`]).
    fn plan(&self, kind: BlockKind, len: usize) -> BlockPlan {
        BlockPlan::for_block(
            kind,
            len,
            self.symbol_size,
            self.repair_permille,
            self.passes,
        )
    }

    fn block_key(&self, object: ObjectId, kind: BlockKind, index: u32) -> BlockKey {
        BlockKey {
            session: self.session,
            object,
            kind,
            index,
        }
    }

    /// Where pass 0 keeps a block's ciphertext; `None` with one pass.
    fn spool_path(&self, key: BlockKey) -> Option<PathBuf> {
        if self.passes <= 1 {
            return None;
        }
        let dir = self.spool.as_ref()?;
        let tag = match key.kind {
            BlockKind::Manifest => "m",
            BlockKind::Data => "d",
        };
        Some(dir.join(format!("{}-{tag}{}", key.object.0, key.index)))
    }

    /// FEC-encodes `data` for `pass`.
    fn fec(
        &self,
        codec: &mut ReedSolomon,
        key: BlockKey,
        data: Vec<u8>,
        pass: u16,
    ) -> Result<OutgoingBlock, EncodeError> {
        // The wire carries the segment size on data blocks so a receiver can place a segment
        // before the manifest arrives.
        let segment_size = match key.kind {
            BlockKind::Data => self.segment_size,
            BlockKind::Manifest => 0,
        };
        let plan = self.plan(key.kind, data.len());
        OutgoingBlock::encode_pass_owned(
            key,
            segment_size,
            data,
            self.symbol_size,
            plan,
            pass,
            codec,
        )
        .map_err(|e| EncodeError::Fec(format!("{key:?}: {e:?}")))
    }

    /// Keeps a block's ciphertext for later passes (no-op with one pass).
    fn spool(&self, key: BlockKey, data: &[u8]) -> Result<(), EncodeError> {
        if self.passes <= 1 {
            return Ok(());
        }
        let path = self.spool_path(key).ok_or(EncodeError::NoSpool)?;
        std::fs::write(&path, data).map_err(|source| EncodeError::Spool { path, source })
    }
}

/// Why encoding stopped early.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("the send loop stopped")]
    Closed,
    #[error("spool {path}: {source}")]
    Spool { path: PathBuf, source: io::Error },
    #[error("more than one pass needs a spool directory")]
    NoSpool,
    #[error("FEC encoding failed for {0}")]
    Fec(String),
    #[error("an encoder thread panicked")]
    Panicked,
    #[error("manifest sequence: {0}")]
    Sequence(io::Error),
    #[error("cannot start an encoder thread: {0}")]
    Thread(io::Error),
}

/// What an object was, for its manifest; filled in by the reader as it reads.
#[derive(Debug)]
struct ObjectEnd {
    object: ObjectId,
    entry: Entry,
}

/// A pack the reader filled: its entries in content order, and their content.
#[derive(Debug)]
struct PackEnd {
    object: ObjectId,
    entries: Vec<Entry>,
    inline: Vec<u8>,
}

/// How the reader sends what it was given: each large file on its own, small files and
/// directories in packs (a pack of one is an object whose content is inline).
#[derive(Debug)]
enum Planned<'a> {
    Single(&'a SourceObject),
    Pack(Vec<&'a SourceObject>),
}

/// Groups consecutive small entries (files under `pack_under` bytes, directories) into packs
/// of at most `pack_limit` content bytes and [`MAX_ENTRIES`] entries, keeping the order.
fn plan(objects: &[SourceObject], pack_under: u64, pack_limit: u64) -> Vec<Planned<'_>> {
    let mut planned = Vec::new();
    let mut pack: Vec<&SourceObject> = Vec::new();
    let mut bytes = 0;
    for object in objects {
        let small = match object.source {
            Source::Directory => pack_under > 0,
            Source::File(_) | Source::Object(_) | Source::Held(_) => {
                object.size.is_some_and(|size| size < pack_under)
            }
            Source::Stdin => false,
        };
        if !small {
            if !pack.is_empty() {
                planned.push(Planned::Pack(std::mem::take(&mut pack)));
            }
            planned.push(Planned::Single(object));
            continue;
        }
        let size = object.size.unwrap_or(0);
        if !pack.is_empty() && (bytes + size > pack_limit || pack.len() >= MAX_ENTRIES) {
            planned.push(Planned::Pack(std::mem::take(&mut pack)));
        }
        if pack.is_empty() {
            bytes = 0;
        }
        pack.push(object);
        bytes += size;
    }
    if !pack.is_empty() {
        planned.push(Planned::Pack(pack));
    }
    planned
}

/// An entry for `object` with what was read of it.
fn entry_of(object: &SourceObject, size: u64, sha256: [u8; 32]) -> Entry {
    Entry {
        path: object.path.clone(),
        kind: object.kind(),
        size,
        mode: object.mode,
        mtime_secs: object.mtime_secs,
        mtime_nanos: object.mtime_nanos,
        sha256,
    }
}

/// Work for one worker, in reader order.
#[derive(Debug)]
enum Job {
    /// Pass 0 of a data segment: encrypt, hash, spool, FEC.
    Segment { key: BlockKey, plaintext: Vec<u8> },
    /// A later pass of a spooled block: FEC only.
    Resend {
        key: BlockKey,
        data: Vec<u8>,
        pass: u16,
        plain_bytes: u64,
    },
    /// Passed through untouched, so the collector sees it in order.
    Mark(Mark),
}

/// Events of the reader the collector must see in order with the blocks.
#[derive(Debug)]
enum Mark {
    /// Every segment of an object was read: the collector builds its manifest.
    ObjectEnd(ObjectEnd),
    /// A pack was read: the collector builds its manifest with the content inline.
    PackEnd(PackEnd),
    /// A member of a pack could not be read (the pack goes on without it).
    EntryFailed { path: String, reason: String },
    /// An object could not be read; it is dropped from later passes.
    ObjectFailed {
        object: ObjectId,
        path: String,
        reason: String,
    },
    /// Every block of a pass was handed out.
    PassEnd(u16),
}

/// A worker's result, in job order.
#[derive(Debug)]
enum Done {
    Segment {
        block: OutgoingBlock,
        info: SegmentInfo,
        /// The plaintext buffer, handed back to the reader for the next segment.
        plaintext: Vec<u8>,
    },
    /// Encryption failed: the object fails, the run goes on.
    SegmentFailed {
        object: ObjectId,
        reason: String,
    },
    Block {
        block: OutgoingBlock,
        plain_bytes: u64,
        pass: u16,
    },
    Mark(Mark),
}

/// Blocks of one object that later passes resend, in send order.
#[derive(Debug, Clone)]
struct Sent {
    object: ObjectId,
    /// Plaintext bytes, to count each resent segment's share of the file.
    size: u64,
    /// Content bytes its manifest block carries (a pack's).
    inline: u64,
    blocks: Vec<(BlockKind, u32)>,
}

/// Encodes every pass of `objects` into `out`, numbering the manifests from `sequence` and
/// the objects from `config.first_object` on (a pack is one object for several entries).
pub fn run(
    config: &EncodeConfig,
    objects: &[SourceObject],
    sequence: &mut Sequence,
    out: flume::Sender<Produced>,
) -> Result<(), EncodeError> {
    run_numbered(config, objects, sequence, out).1
}

/// [`run`], also saying how many object ids `n` it gave out: `first_object` and the `n - 1`
/// after it, every one of which may have had a frame on the link. A daemon numbers its next
/// item's objects from there, so the ids of a session stay dense: the receiver takes each id
/// below what the heartbeats announce that it never heard of for an object lost whole
/// (SPEC.md, Heartbeat), and an id skipped would be reported so though no such object existed.
pub fn run_numbered(
    config: &EncodeConfig,
    objects: &[SourceObject],
    sequence: &mut Sequence,
    out: flume::Sender<Produced>,
) -> (u64, Result<(), EncodeError>) {
    let mut ids = 0u64;
    let result = encode_numbered(config, objects, sequence, out, &mut ids);
    (ids, result)
}

fn encode_numbered(
    config: &EncodeConfig,
    objects: &[SourceObject],
    sequence: &mut Sequence,
    out: flume::Sender<Produced>,
    ids: &mut u64,
) -> Result<(), EncodeError> {
    let workers = config.worker_count().max(1);
    std::thread::scope(|scope| {
        let mut job_txs = Vec::with_capacity(workers);
        let mut done_rxs = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for i in 0..workers {
            let (job_tx, job_rx) = flume::bounded::<Job>(1);
            let (done_tx, done_rx) = flume::bounded::<Done>(1);
            let handle = std::thread::Builder::new()
                .name(format!("sluice-enc-{i}"))
                .spawn_scoped(scope, move || worker(config, job_rx, done_tx))
                .map_err(EncodeError::Thread)?;
            job_txs.push(job_tx);
            done_rxs.push(done_rx);
            handles.push(handle);
        }
        // Plaintext buffers come back from the collector for reuse (bounded by what is in
        // flight: the channel only ever holds buffers that existed already).
        let (pool_tx, pool_rx) = flume::unbounded::<Vec<u8>>();
        let (sent_tx, sent_rx) = flume::unbounded::<Vec<Sent>>();
        let collector = std::thread::Builder::new()
            .name("sluice-collect".into())
            .spawn_scoped(scope, move || {
                let mut collector = Collector {
                    config,
                    sequence,
                    codec: ReedSolomon::new(),
                    out,
                    pool: pool_tx,
                    sent_tx,
                    sent: Vec::new(),
                    current: Vec::new(),
                    failed: None,
                };
                collector.run(done_rxs)
            })
            .map_err(EncodeError::Thread)?;

        let mut reader = Reader {
            config,
            jobs: job_txs,
            next: 0,
            pool: pool_rx,
            ids: 0,
        };
        let read = reader.run(objects, sent_rx);
        *ids = reader.ids;
        // Dropping the job senders lets the workers finish and the collector drain.
        drop(reader);
        let mut result = read;
        let joined = handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(EncodeError::Panicked)))
            .chain(std::iter::once(
                collector.join().unwrap_or(Err(EncodeError::Panicked)),
            ));
        for outcome in joined {
            result = prefer_cause(result, outcome);
        }
        result
    })
}

/// Of two outcomes, the more telling error: `Closed` only says some other stage stopped.
fn prefer_cause(a: Result<(), EncodeError>, b: Result<(), EncodeError>) -> Result<(), EncodeError> {
    match (a, b) {
        (Ok(()), other) | (other, Ok(())) => other,
        (Err(EncodeError::Closed), Err(e)) => Err(e),
        (Err(e), Err(_)) => Err(e),
    }
}

/// Worker loop: jobs in, results out, in the same order.
fn worker(
    config: &EncodeConfig,
    jobs: flume::Receiver<Job>,
    done: flume::Sender<Done>,
) -> Result<(), EncodeError> {
    let mut codec = ReedSolomon::new();
    for job in jobs.iter() {
        let result = match job {
            Job::Segment { key, plaintext } => {
                match envelope::encrypt(&plaintext, &config.recipients) {
                    Ok(ciphertext) => {
                        config.spool(key, &ciphertext)?;
                        // The segment is bound to the signed manifest by its age header's MAC
                        // (SPEC.md section 8): no second hash over the ciphertext.
                        let header_mac = envelope::header_mac(&ciphertext).ok_or_else(|| {
                            EncodeError::Fec(format!("{key:?}: age wrote no header MAC"))
                        })?;
                        let info = SegmentInfo {
                            ciphertext_len: u32::try_from(ciphertext.len()).map_err(|_| {
                                EncodeError::Fec(format!("{key:?}: segment too large"))
                            })?,
                            header_mac,
                        };
                        let block = config.fec(&mut codec, key, ciphertext, 0)?;
                        Done::Segment {
                            block,
                            info,
                            plaintext,
                        }
                    }
                    Err(e) => Done::SegmentFailed {
                        object: key.object,
                        reason: e.to_string(),
                    },
                }
            }
            Job::Resend {
                key,
                data,
                pass,
                plain_bytes,
            } => Done::Block {
                block: config.fec(&mut codec, key, data, pass)?,
                plain_bytes,
                pass,
            },
            Job::Mark(mark) => Done::Mark(mark),
        };
        done.send(result).map_err(|_| EncodeError::Closed)?;
    }
    Ok(())
}

/// Reads objects and hands out jobs round robin.
struct Reader<'a> {
    config: &'a EncodeConfig,
    jobs: Vec<flume::Sender<Job>>,
    /// Worker that gets the next job.
    next: usize,
    pool: flume::Receiver<Vec<u8>>,
    /// Object ids given out so far (from `first_object`): one per object begun, a pack's
    /// entries sharing one.
    ids: u64,
}

impl Reader<'_> {
    fn submit(&mut self, job: Job) -> Result<(), EncodeError> {
        let worker = self.next;
        self.next = (self.next + 1) % self.jobs.len();
        self.jobs[worker].send(job).map_err(|_| EncodeError::Closed)
    }

    fn run(
        &mut self,
        objects: &[SourceObject],
        sent_rx: flume::Receiver<Vec<Sent>>,
    ) -> Result<(), EncodeError> {
        let limit = u64::from(self.config.segment_size);
        for (i, planned) in plan(objects, self.config.pack_under, limit)
            .into_iter()
            .enumerate()
        {
            let id = ObjectId(self.config.first_object + i as u64);
            // Given out before anything of it is submitted: a frame of it may go out even if
            // this run stops later with an error.
            self.ids = i as u64 + 1;
            match planned {
                Planned::Single(object) => self.first_pass(id, object)?,
                Planned::Pack(members) => self.pack(id, &members)?,
            }
        }
        self.submit(Job::Mark(Mark::PassEnd(0)))?;
        if self.config.passes <= 1 {
            return Ok(());
        }
        // Which objects made it through pass 0 is known once the collector has seen them all.
        let sent = sent_rx.recv().map_err(|_| EncodeError::Closed)?;
        for pass in 1..self.config.passes {
            for object in &sent {
                self.later_pass(pass, object)?;
            }
            self.submit(Job::Mark(Mark::PassEnd(pass)))?;
        }
        Ok(())
    }

    /// A plaintext buffer of the segment size, reused when one came back.
    fn buffer(&self) -> Vec<u8> {
        let size = self.config.segment_size as usize;
        match self.pool.try_recv() {
            Ok(mut buf) => {
                buf.resize(size, 0);
                buf
            }
            Err(_) => vec![0u8; size],
        }
    }

    /// Pass 0 of one object: its segments, then the mark that makes its manifest.
    fn first_pass(&mut self, id: ObjectId, object: &SourceObject) -> Result<(), EncodeError> {
        // A file is read up to the size it had when opened, and one byte more to see whether
        // it grew: a writer appending without end cannot hold the encoder.
        let mut opened_size = None;
        let step = self.config.watched.as_ref().map(Stage::step);
        let mut reader: Option<Box<dyn Read>> = match &object.source {
            Source::Stdin => Some(Box::new(io::stdin().lock())),
            source => match source.open() {
                None => None,
                Some(Ok((opened, size))) => {
                    opened_size = Some(size);
                    Some(Box::new(opened.take(size.saturating_add(1))))
                }
                Some(Err(e)) => {
                    let shown = source.shown();
                    return self.fail(id, object, format!("cannot open {shown}: {e}"));
                }
            },
        };
        drop(step);
        let segment_size = self.config.segment_size as usize;
        let mut plain_hash = Sha256::new();
        let mut size = 0u64;
        let mut index = 0u32;
        if let Some(reader) = reader.as_mut() {
            loop {
                let mut buf = self.buffer();
                let step = self.config.watched.as_ref().map(Stage::step);
                let read = read_full(reader, &mut buf);
                drop(step);
                let n = match read {
                    Ok(n) => n,
                    Err(e) => {
                        return self.fail(id, object, format!("read error after {size} bytes: {e}"))
                    }
                };
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                plain_hash.update(&buf);
                size += n as u64;
                let key = self.config.block_key(id, BlockKind::Data, index);
                self.submit(Job::Segment {
                    key,
                    plaintext: buf,
                })?;
                index = match index.checked_add(1) {
                    Some(i) => i,
                    None => return self.fail(id, object, "too many segments".into()),
                };
                if n < segment_size {
                    break;
                }
            }
        }
        if let Some(opened) = opened_size.filter(|opened| size > *opened) {
            return self.fail(id, object, grew(opened));
        }
        let sha256 = match object.kind() {
            EntryKind::File => plain_hash.finalize().into(),
            EntryKind::Directory => [0; 32],
        };
        self.submit(Job::Mark(Mark::ObjectEnd(ObjectEnd {
            object: id,
            entry: entry_of(object, size, sha256),
        })))
    }

    /// A pack: its members read whole into one buffer, each hashed once.
    fn pack(&mut self, id: ObjectId, members: &[&SourceObject]) -> Result<(), EncodeError> {
        let mut entries = Vec::with_capacity(members.len());
        let mut inline = Vec::new();
        for member in members {
            let start = inline.len();
            let step = self.config.watched.as_ref().map(Stage::step);
            let read = match &member.source {
                Source::Directory => Ok(()),
                source @ (Source::File(_) | Source::Object(_) | Source::Held(_)) => {
                    read_member(source, member.size.unwrap_or(0), &mut inline)
                }
                Source::Stdin => Err("standard input is never packed".to_string()),
            };
            drop(step);
            match read {
                Ok(()) => {
                    let content = &inline[start..];
                    let sha256 = match member.kind() {
                        EntryKind::File => Sha256::digest(content).into(),
                        EntryKind::Directory => [0; 32],
                    };
                    entries.push(entry_of(member, content.len() as u64, sha256));
                }
                Err(reason) => {
                    inline.truncate(start);
                    self.submit(Job::Mark(Mark::EntryFailed {
                        path: member.path.clone(),
                        reason,
                    }))?;
                }
            }
        }
        if entries.is_empty() {
            return Ok(());
        }
        self.submit(Job::Mark(Mark::PackEnd(PackEnd {
            object: id,
            entries,
            inline,
        })))
    }

    fn fail(
        &mut self,
        object: ObjectId,
        source: &SourceObject,
        reason: String,
    ) -> Result<(), EncodeError> {
        self.submit(Job::Mark(Mark::ObjectFailed {
            object,
            path: source.path.clone(),
            reason,
        }))
    }

    fn later_pass(&mut self, pass: u16, sent: &Sent) -> Result<(), EncodeError> {
        for (kind, index) in &sent.blocks {
            let key = self.config.block_key(sent.object, *kind, *index);
            let path = self.config.spool_path(key).ok_or(EncodeError::NoSpool)?;
            let data = std::fs::read(&path).map_err(|source| EncodeError::Spool {
                path: path.clone(),
                source,
            })?;
            // Progress counts file bytes, not ciphertext: every segment but the last is full.
            let plain_bytes = match kind {
                BlockKind::Manifest => sent.inline,
                BlockKind::Data => {
                    let segment = u64::from(self.config.segment_size);
                    sent.size
                        .saturating_sub(u64::from(*index) * segment)
                        .min(segment)
                }
            };
            self.submit(Job::Resend {
                key,
                data,
                pass,
                plain_bytes,
            })?;
        }
        Ok(())
    }
}

/// Takes worker results in job order, builds manifests, and feeds the send loop.
struct Collector<'a> {
    config: &'a EncodeConfig,
    /// Freshness numbers, one per manifest.
    sequence: &'a mut Sequence,
    codec: ReedSolomon,
    out: flume::Sender<Produced>,
    pool: flume::Sender<Vec<u8>>,
    sent_tx: flume::Sender<Vec<Sent>>,
    /// Objects fully queued in pass 0.
    sent: Vec<Sent>,
    /// Segments of the object being collected.
    current: Vec<SegmentInfo>,
    /// The object being collected failed, and why (its remaining segments are dropped).
    failed: Option<(ObjectId, String)>,
}

impl Collector<'_> {
    fn emit(&self, produced: Produced) -> Result<(), EncodeError> {
        self.out.send(produced).map_err(|_| EncodeError::Closed)
    }

    fn run(&mut self, results: Vec<flume::Receiver<Done>>) -> Result<(), EncodeError> {
        // Round robin, as the reader handed the jobs out; a worker that hung up ends the run
        // (its error, if any, comes from joining it).
        'outer: loop {
            for rx in &results {
                match rx.recv() {
                    Ok(done) => self.handle(done)?,
                    Err(_) => break 'outer,
                }
            }
        }
        Ok(())
    }

    fn handle(&mut self, done: Done) -> Result<(), EncodeError> {
        match done {
            Done::Segment {
                block,
                info,
                plaintext,
            } => {
                let plain_bytes = plaintext.len() as u64;
                // The reader may have finished; then nobody needs the buffer back.
                let _ = self.pool.send(plaintext);
                if self.failed_object() == Some(block.key().object) {
                    return Ok(());
                }
                self.current.push(info);
                self.emit(Produced::Block {
                    block,
                    plain_bytes,
                    pass: 0,
                })
            }
            Done::SegmentFailed { object, reason } => {
                // Reported with the object's path when its end mark arrives.
                if self.failed_object() != Some(object) {
                    self.failed = Some((object, reason));
                }
                Ok(())
            }
            Done::Block {
                block,
                plain_bytes,
                pass,
            } => self.emit(Produced::Block {
                block,
                plain_bytes,
                pass,
            }),
            Done::Mark(Mark::ObjectEnd(end)) => {
                let segments = std::mem::take(&mut self.current);
                match self.failed.take() {
                    Some((object, reason)) if object == end.object => {
                        self.emit(Produced::ObjectFailed {
                            object,
                            path: end.entry.path,
                            reason,
                        })
                    }
                    _ => self.manifest(end.object, vec![end.entry], segments, &[]),
                }
            }
            Done::Mark(Mark::PackEnd(pack)) => {
                self.manifest(pack.object, pack.entries, Vec::new(), &pack.inline)
            }
            Done::Mark(Mark::EntryFailed { path, reason }) => {
                self.emit(Produced::EntryFailed { path, reason })
            }
            Done::Mark(Mark::ObjectFailed {
                object,
                path,
                reason,
            }) => {
                self.current.clear();
                // An earlier encryption failure of the same object is the first cause.
                let reason = match self.failed.take() {
                    Some((failed, first)) if failed == object => first,
                    _ => reason,
                };
                self.emit(Produced::ObjectFailed {
                    object,
                    path,
                    reason,
                })
            }
            Done::Mark(Mark::PassEnd(pass)) => {
                if pass == 0 {
                    // The reader waits for this only when there are later passes.
                    let _ = self.sent_tx.send(std::mem::take(&mut self.sent));
                }
                self.emit(Produced::PassQueued(pass))
            }
        }
    }

    fn failed_object(&self) -> Option<ObjectId> {
        self.failed.as_ref().map(|(object, _)| *object)
    }

    /// Signs, encrypts and queues an object's manifest, after its segments (or with its
    /// content inline, for a pack).
    fn manifest(
        &mut self,
        object: ObjectId,
        entries: Vec<Entry>,
        segments: Vec<SegmentInfo>,
        inline: &[u8],
    ) -> Result<(), EncodeError> {
        let segment_count = segments.len();
        let size: u64 = entries.iter().map(|e| e.size).sum();
        let queued: Vec<QueuedEntry> = entries
            .iter()
            .map(|e| QueuedEntry {
                path: e.path.clone(),
                size: e.size,
                sha256: (e.kind == EntryKind::File).then_some(e.sha256),
            })
            .collect();
        let failed = |reason: String| Produced::ObjectFailed {
            object,
            path: queued
                .iter()
                .map(|q| q.path.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            reason,
        };
        let sequence = self.sequence.take().map_err(EncodeError::Sequence)?;
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            session: self.config.session,
            object,
            sequence,
            entries,
            // Inline content (a pack, a directory, an empty file) has no segments.
            segment_size: if segments.is_empty() {
                0
            } else {
                self.config.segment_size
            },
            segments,
            approval: self.config.approval.clone(),
        };
        let sealed = envelope::seal_manifest(
            &manifest,
            inline,
            &self.config.signer,
            &self.config.recipients,
        );
        let ciphertext = match sealed {
            Ok(c) => c,
            Err(e) => return self.emit(failed(e.to_string())),
        };
        let key = self.config.block_key(object, BlockKind::Manifest, 0);
        self.config.spool(key, &ciphertext)?;
        let block = self.config.fec(&mut self.codec, key, ciphertext, 0)?;
        self.emit(Produced::Block {
            block,
            // A pack's content travels in its manifest block.
            plain_bytes: inline.len() as u64,
            pass: 0,
        })?;
        if self.config.passes > 1 {
            let blocks = (0..segment_count as u32)
                .map(|i| (BlockKind::Data, i))
                .chain(std::iter::once((BlockKind::Manifest, 0)))
                .collect();
            self.sent.push(Sent {
                object,
                size,
                inline: inline.len() as u64,
                blocks,
            });
        }
        self.emit(Produced::ObjectQueued {
            object,
            entries: queued,
            segments: segment_count,
        })
    }
}

/// Appends the content of the pack member `source` (a file or a stored object) to `inline`:
/// at most the `planned` bytes it had when listed (a file that grew since is refused: its end
/// would not fit the pack).
fn read_member(source: &Source, planned: u64, inline: &mut Vec<u8>) -> Result<(), String> {
    let (opened, _) = source
        .open()
        .unwrap_or_else(|| Err(io::Error::other("has no content")))
        .map_err(|e| format!("cannot open {}: {e}", source.shown()))?;
    let start = inline.len();
    opened
        .take(planned + 1)
        .read_to_end(inline)
        .map_err(|e| format!("read error: {e}"))?;
    if (inline.len() - start) as u64 > planned {
        return Err(grew(planned));
    }
    Ok(())
}

/// Why a file that grew while it was read is not sent.
fn grew(size: u64) -> String {
    format!("grew while being sent (it had {size} bytes); send it again")
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// A spool directory: the one given, or a temporary one removed when dropped.
#[derive(Debug)]
pub enum Spool {
    Given(PathBuf),
    Temporary(tempfile::TempDir),
}

impl Spool {
    pub fn create(given: Option<&Path>) -> io::Result<Spool> {
        match given {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                Ok(Spool::Given(dir.to_path_buf()))
            }
            None => Ok(Spool::Temporary(
                tempfile::Builder::new().prefix("sluice-spool-").tempdir()?,
            )),
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Spool::Given(p) => p,
            Spool::Temporary(t) => t.path(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::FileRef;
    use crate::objects::Source;

    const SEGMENT: usize = sluice_protocol::wire::MIN_SEGMENT_SIZE as usize;

    /// A condensed trace of what the encoder produced, comparable across worker counts.
    #[derive(Debug, PartialEq, Eq)]
    enum Event {
        /// Key and plaintext bytes (symbol counts vary: age adds random-length grease).
        Block(BlockKey, u64),
        Queued(String, u64, Option<[u8; 32]>, usize),
        Failed(String),
        Pass(u16),
    }

    fn file(dir: &Path, name: &str, len: usize, seed: u8) -> SourceObject {
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect();
        let path = dir.join(name);
        std::fs::write(&path, &data).unwrap();
        SourceObject {
            path: name.into(),
            source: Source::File(FileRef::find(&path).unwrap()),
            size: Some(len as u64),
            mode: 0o644,
            mtime_secs: 0,
            mtime_nanos: 0,
        }
    }

    /// The queued entries: path, size and data segments.
    fn queued(events: &[Event]) -> Vec<(&str, u64, usize)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Queued(path, size, _, segments) => Some((path.as_str(), *size, *segments)),
                _ => None,
            })
            .collect()
    }

    fn trace(dir: &Path, objects: &[SourceObject], workers: usize, passes: u16) -> Vec<Event> {
        trace_packing(dir, objects, workers, passes, 0)
    }

    fn trace_packing(
        dir: &Path,
        objects: &[SourceObject],
        workers: usize,
        passes: u16,
        pack_under: u64,
    ) -> Vec<Event> {
        trace_numbered(dir, objects, workers, passes, pack_under, 0).0
    }

    /// The trace of a run numbering its objects from `first_object`, and the ids it gave out.
    fn trace_numbered(
        dir: &Path,
        objects: &[SourceObject],
        workers: usize,
        passes: u16,
        pack_under: u64,
        first_object: u64,
    ) -> (Vec<Event>, u64) {
        let spool = dir.join(format!("spool-{workers}-{pack_under}-{first_object}"));
        std::fs::create_dir_all(&spool).unwrap();
        let config = EncodeConfig {
            session: SessionId(7),
            symbol_size: 256,
            segment_size: SEGMENT as u32,
            pack_under,
            repair_permille: 100,
            passes,
            recipients: sluice_common::keys::load_recipients(
                &dir.join(sluice_common::keys::RECEIVER_PUB),
            )
            .unwrap(),
            signer: SigningKey::load(&dir.join(sluice_common::keys::SENDER_KEY)).unwrap(),
            spool: Some(spool),
            workers,
            first_object,
            approval: None,
            watched: None,
        };
        let mut sequence = Sequence::open(dir, config.signer.id());
        let (tx, rx) = flume::bounded(2);
        let objects = objects.to_vec();
        let encoder =
            std::thread::spawn(move || run_numbered(&config, &objects, &mut sequence, tx));
        let mut events = Vec::new();
        while let Ok(produced) = rx.recv() {
            match produced {
                Produced::Block {
                    block, plain_bytes, ..
                } => events.push(Event::Block(block.key(), plain_bytes)),
                Produced::ObjectQueued {
                    entries, segments, ..
                } => events.extend(
                    entries
                        .into_iter()
                        .map(|e| Event::Queued(e.path, e.size, e.sha256, segments)),
                ),
                Produced::ObjectFailed { path, .. } | Produced::EntryFailed { path, .. } => {
                    events.push(Event::Failed(path))
                }
                Produced::PassQueued(pass) => events.push(Event::Pass(pass)),
                Produced::Barrier(_) | Produced::NotSent(_) => unreachable!("not from the encoder"),
            }
        }
        let (ids, result) = encoder.join().unwrap();
        result.unwrap();
        (events, ids)
    }

    /// The object ids of the blocks traced, each once, in order.
    fn object_ids(events: &[Event]) -> Vec<u64> {
        let mut ids: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                Event::Block(key, _) => Some(key.object.0),
                _ => None,
            })
            .collect();
        ids.dedup();
        ids
    }

    #[test]
    fn any_worker_count_produces_blocks_in_read_order() {
        let dir = tempfile::tempdir().unwrap();
        sluice_common::keys::generate_receiver_keys(dir.path()).unwrap();
        sluice_common::keys::generate_sender_keys(dir.path()).unwrap();
        let objects = vec![
            file(dir.path(), "a", SEGMENT * 5 + 17, 1),
            SourceObject {
                path: "gone".into(),
                // Listed, then removed before it is read.
                source: Source::File({
                    let gone = dir.path().join("gone");
                    std::fs::write(&gone, b"x").unwrap();
                    let file = FileRef::find(&gone).unwrap();
                    std::fs::remove_file(&gone).unwrap();
                    file
                }),
                size: Some(1),
                mode: 0o644,
                mtime_secs: 0,
                mtime_nanos: 0,
            },
            file(dir.path(), "empty", 0, 2),
            file(dir.path(), "b", SEGMENT * 3, 3),
        ];
        let one = trace(dir.path(), &objects, 1, 2);
        let four = trace(dir.path(), &objects, 4, 2);
        assert_eq!(one, four);

        // Pass 0: a's six segments in order, then its manifest; the missing file fails; the
        // empty file is a manifest alone; b's three segments; then pass 1 resends a and b.
        let keys: Vec<(u64, BlockKind, u32)> = four
            .iter()
            .filter_map(|e| match e {
                Event::Block(key, _) => Some((key.object.0, key.kind, key.index)),
                _ => None,
            })
            .collect();
        let mut expected: Vec<(u64, BlockKind, u32)> = Vec::new();
        let a: Vec<_> = (0..6)
            .map(|i| (0, BlockKind::Data, i))
            .chain([(0, BlockKind::Manifest, 0)])
            .collect();
        let b: Vec<_> = (0..3)
            .map(|i| (3, BlockKind::Data, i))
            .chain([(3, BlockKind::Manifest, 0)])
            .collect();
        expected.extend(&a);
        expected.push((2, BlockKind::Manifest, 0));
        expected.extend(&b);
        expected.extend(&a);
        expected.push((2, BlockKind::Manifest, 0));
        expected.extend(&b);
        assert_eq!(keys, expected);
        assert!(four.contains(&Event::Failed("gone".into())));
        let queued = queued(&four);
        assert_eq!(
            queued,
            [
                ("a", (SEGMENT * 5 + 17) as u64, 6),
                ("empty", 0, 0),
                ("b", (SEGMENT * 3) as u64, 3)
            ]
        );
        let plain: u64 = four
            .iter()
            .map(|e| match e {
                Event::Block(_, n) => *n,
                _ => 0,
            })
            .sum();
        assert_eq!(plain, 2 * (SEGMENT * 8 + 17) as u64);
        assert_eq!(
            four.iter()
                .filter(|e| matches!(e, Event::Pass(_)))
                .collect::<Vec<_>>(),
            [&Event::Pass(0), &Event::Pass(1)]
        );
    }

    #[test]
    fn small_files_and_directories_travel_in_packs() {
        let dir = tempfile::tempdir().unwrap();
        sluice_common::keys::generate_receiver_keys(dir.path()).unwrap();
        sluice_common::keys::generate_sender_keys(dir.path()).unwrap();
        let directory = SourceObject {
            path: "d".into(),
            source: Source::Directory,
            size: None,
            mode: 0o755,
            mtime_secs: 0,
            mtime_nanos: 0,
        };
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let mut grew = file(dir.path(), "d/grew", 10, 9);
        grew.size = Some(4);
        let objects = vec![
            directory,
            file(dir.path(), "d/a", 10, 1),
            grew,
            file(dir.path(), "d/empty", 0, 2),
            file(dir.path(), "big", SEGMENT * 2, 3),
            file(dir.path(), "e", 100, 4),
            file(dir.path(), "f", SEGMENT / 2, 5),
        ];
        // Files under 1 KiB are packed; a pack holds at most one segment's worth.
        let events = trace_packing(dir.path(), &objects, 2, 1, 1024);
        let keys: Vec<(u64, BlockKind, u32)> = events
            .iter()
            .filter_map(|e| match e {
                Event::Block(key, _) => Some((key.object.0, key.kind, key.index)),
                _ => None,
            })
            .collect();
        assert_eq!(
            keys,
            [
                (0, BlockKind::Manifest, 0),
                (1, BlockKind::Data, 0),
                (1, BlockKind::Data, 1),
                (1, BlockKind::Manifest, 0),
                (2, BlockKind::Manifest, 0),
                (3, BlockKind::Data, 0),
                (3, BlockKind::Manifest, 0),
            ]
        );
        // The pack's manifest block counts its content (10 bytes of d/a).
        assert!(events.contains(&Event::Block(
            BlockKey {
                session: SessionId(7),
                object: ObjectId(0),
                kind: BlockKind::Manifest,
                index: 0
            },
            10
        )));
        let queued = queued(&events);
        assert_eq!(
            queued,
            [
                ("d", 0, 0),
                ("d/a", 10, 0),
                ("d/empty", 0, 0),
                ("big", (SEGMENT * 2) as u64, 2),
                ("e", 100, 0),
                ("f", (SEGMENT / 2) as u64, 1),
            ]
        );
        // A member that grew since it was listed fails alone.
        assert!(events.contains(&Event::Failed("d/grew".into())));
    }

    /// Issue 31: the daemon numbered each item's objects after the previous item's entries, but
    /// a pack is one object for several, so ids were skipped, announced by the heartbeats and
    /// reported lost whole by the receiver. A run says how many ids it gave out; items numbered
    /// on from there leave no gap.
    #[test]
    fn runs_numbered_one_after_another_leave_no_gap_between_their_ids() {
        let dir = tempfile::tempdir().unwrap();
        sluice_common::keys::generate_receiver_keys(dir.path()).unwrap();
        sluice_common::keys::generate_sender_keys(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let directory = SourceObject {
            path: "d".into(),
            source: Source::Directory,
            size: None,
            mode: 0o755,
            mtime_secs: 0,
            mtime_nanos: 0,
        };
        // A directory of three small files: four entries, one pack.
        let first: Vec<SourceObject> = std::iter::once(directory.clone())
            .chain((0..3u8).map(|i| file(dir.path(), &format!("d/{i}"), 100, i)))
            .collect();
        let (events, ids) = trace_numbered(dir.path(), &first, 1, 1, 1024, 0);
        assert_eq!(ids, 1);
        assert_eq!(object_ids(&events), [0]);
        // Sent again with a fourth file, then a big file and a pack: numbered on from 1.
        let second: Vec<SourceObject> = first
            .iter()
            .cloned()
            .chain([
                file(dir.path(), "d/3", 100, 3),
                file(dir.path(), "big", SEGMENT * 2, 4),
                file(dir.path(), "e", 10, 5),
            ])
            .collect();
        let (events, more) = trace_numbered(dir.path(), &second, 2, 1, 1024, ids);
        assert_eq!(more, 3);
        assert_eq!(object_ids(&events), [1, 2, 3]);
        // Nothing to send: no id given out.
        assert_eq!(trace_numbered(dir.path(), &[], 1, 1, 1024, 4).1, 0);
    }
}
