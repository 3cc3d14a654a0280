//! The paced send loop: blocks from the encoder into the scheduler, frames out on the link at
//! the scheduler's pace, heartbeats while idle, and a short tail of heartbeats at the end so the
//! receiver sees the sender finish rather than vanish. It is also the one place where the
//! sender's outcomes are emitted: it alone sees both what the encoder made of an object and
//! when its last frame left.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use sluice_common::link::FrameTx;
use sluice_common::outcome::Outcomes;
use sluice_protocol::tx::{OutgoingBlock, Scheduler, Transmit, TxConfig};
use sluice_protocol::wire::{BlockKey, BlockKind, LinkKey, ObjectId, SessionId};

use crate::counters::Counters;
use crate::encode::{Passed, Produced};
use crate::outcome::Outcome;
use crate::progress::{Progress, Show};

/// Copies of the audit-log head sent at the end of a run, and the time between them.
const ANCHOR_REPEATS: usize = 3;
const ANCHOR_GAP: Duration = Duration::from_millis(20);

/// Send-loop settings.
#[derive(Debug)]
pub(crate) struct Settings {
    /// Link bytes per second (0: unpaced).
    pub rate: u64,
    /// Largest frame plus the link's per-frame overhead.
    pub wire_frame: u64,
    /// Bytes the link adds per frame.
    pub frame_overhead: u32,
    pub interleave: usize,
    pub session: SessionId,
    pub link_key: LinkKey,
    pub passes: u16,
    pub heartbeat_interval: Duration,
    /// Heartbeats keep going this long after the last symbol.
    pub linger: Duration,
    /// Show progress over this many plaintext bytes, and how.
    pub progress_total: u64,
    pub progress: Show,
    /// A progress line this often (with [`Show::Lines`]).
    pub progress_every: Duration,
    /// The audit log whose durable head follows each heartbeat across the link.
    pub audit: Option<std::sync::Arc<sluice_common::audit::AuditLog>>,
}

/// An object whose blocks are still going out, until every pass has left.
#[derive(Debug, Default)]
struct InFlight {
    /// Blocks pushed to the scheduler and not yet sent.
    pending: usize,
    /// The manifest block of the last pass (the object's last block) was pushed.
    last_pushed: bool,
    /// Paths and sizes of its entries, once the encoder said it queued the object.
    queued: Option<Vec<(String, u64)>>,
}

/// A barrier waiting for the objects received before it.
#[derive(Debug)]
struct Barrier {
    token: u64,
    waiting: HashSet<ObjectId>,
    failed: u64,
}

/// The loop's state.
pub(crate) struct SendLoop {
    settings: Settings,
    scheduler: Scheduler,
    outcomes: Outcomes<Outcome>,
    counters: std::sync::Arc<Counters>,
    in_flight: HashMap<ObjectId, InFlight>,
    /// Barriers not yet passed, oldest first.
    barriers: VecDeque<Barrier>,
    /// Failures since the last barrier.
    failed_since_barrier: u64,
    /// Where passed barriers are reported.
    passed: Option<flume::Sender<Passed>>,
    progress: Progress,
    /// Plaintext bytes of each block pushed and not yet sent (one per pass), for progress.
    unsent_plain: HashMap<BlockKey, Vec<u64>>,
    start: Instant,
}

impl SendLoop {
    pub fn new(
        settings: Settings,
        outcomes: Outcomes<Outcome>,
        counters: std::sync::Arc<Counters>,
    ) -> Self {
        let start = Instant::now();
        // The timer wakes us about once a millisecond: the bucket must hold a couple of
        // milliseconds of line rate or sleeping would cap the rate below --rate.
        let burst = (2 * settings.wire_frame).max(settings.rate / 500);
        let config = TxConfig {
            rate: settings.rate,
            burst,
            frame_overhead: settings.frame_overhead,
            interleave: settings.interleave,
            heartbeat_interval: settings.heartbeat_interval,
        };
        let scheduler = Scheduler::new(
            config,
            settings.session,
            settings.link_key.clone(),
            sluice_common::instant_since(start),
        );
        let progress = Progress::new(
            settings.progress,
            settings.progress_total,
            settings.progress_every,
        );
        SendLoop {
            settings,
            scheduler,
            outcomes,
            counters,
            in_flight: HashMap::new(),
            barriers: VecDeque::new(),
            failed_since_barrier: 0,
            passed: None,
            progress,
            unsent_plain: HashMap::new(),
            start,
        }
    }

    /// Hands the audit log's durable head to the scheduler (it goes out after the next
    /// heartbeat).
    fn announce_audit_head(&mut self) {
        let Some(audit) = &self.settings.audit else {
            return;
        };
        let head = audit.durable_head();
        // Seq 0 is the empty chain: nothing to vouch for yet.
        if let Some(hash) = head.hash_bytes().filter(|_| head.seq > 0) {
            self.scheduler.set_audit_head(head.seq, hash);
        }
    }

    /// Anchors the audit log's last records: once every record given so far is on disk (or
    /// `SETTLE` has passed), sends its head at once, [`ANCHOR_REPEATS`] times a few
    /// milliseconds apart (a lost frame costs one copy). Called at the end of a run and when a
    /// daemon stops, after its last record: heartbeats carry the head during a run, but the
    /// records written after the last heartbeat would otherwise never cross, and could be cut
    /// from the low side's log without trace.
    pub async fn anchor_audit_log(&mut self, link: &mut dyn FrameTx) -> std::io::Result<()> {
        const SETTLE: Duration = Duration::from_secs(5);
        let Some(audit) = self.settings.audit.clone() else {
            return Ok(());
        };
        let waited = std::time::Instant::now();
        while !audit.settled() && waited.elapsed() < SETTLE {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let head = audit.durable_head();
        let Some(hash) = head.hash_bytes().filter(|_| head.seq > 0) else {
            return Ok(());
        };
        for _ in 0..ANCHOR_REPEATS {
            let now = sluice_common::instant_since(self.start);
            self.scheduler.send_audit_head_now(now, head.seq, hash);
            let before = self.scheduler.stats().audit_heads;
            // Out once the head frame is (behind its heartbeat).
            while self.scheduler.stats().audit_heads == before {
                let now = sluice_common::instant_since(self.start);
                match self
                    .scheduler
                    .poll_transmit(now, link.frame_buf())
                    .map_err(|e| std::io::Error::other(format!("frame encoding: {e:?}")))?
                {
                    Transmit::Frame(len) => {
                        link.commit(len).await?;
                        self.take_sent();
                    }
                    Transmit::WaitUntil(at) => {
                        let micros = at.as_micros().saturating_sub(now.as_micros());
                        tokio::time::sleep(Duration::from_micros(micros)).await;
                    }
                }
            }
            link.flush().await?;
            tokio::time::sleep(ANCHOR_GAP).await;
        }
        tracing::debug!(seq = head.seq, "audit-log head sent after the last record");
        Ok(())
    }

    /// Reports passed [`Produced::Barrier`]s to `passed`.
    pub fn report_barriers(&mut self, passed: flume::Sender<Passed>) {
        self.passed = Some(passed);
    }

    /// The one place outcomes leave the sender.
    pub fn emit(&mut self, outcome: Outcome) {
        self.outcomes.emit(outcome);
    }

    /// Runs until the encoder is done, every frame is out and the linger time has passed;
    /// returns the time until the last symbol.
    pub async fn run(
        &mut self,
        link: &mut dyn FrameTx,
        blocks: flume::Receiver<Produced>,
    ) -> std::io::Result<Duration> {
        let tokio_start = tokio::time::Instant::from_std(self.start);
        let mut pending: Option<OutgoingBlock> = None;
        let mut encoder_done = false;
        let mut finish_at: Option<sluice_protocol::time::Instant> = None;
        let mut drained_after: Option<Duration> = None;
        loop {
            // Feed the scheduler as far as it has room.
            loop {
                if let Some(block) = pending.take() {
                    if let Err(block) = self.scheduler.push_block(block) {
                        pending = Some(block);
                        break;
                    }
                }
                if encoder_done {
                    break;
                }
                match blocks.try_recv() {
                    Ok(item) => pending = self.absorb(item),
                    Err(flume::TryRecvError::Empty) => break,
                    Err(flume::TryRecvError::Disconnected) => encoder_done = true,
                }
            }

            let now = sluice_common::instant_since(self.start);
            let wait_until = match self
                .scheduler
                .poll_transmit(now, link.frame_buf())
                .map_err(|e| std::io::Error::other(format!("frame encoding: {e:?}")))?
            {
                Transmit::Frame(len) => {
                    link.commit(len).await?;
                    self.take_sent();
                    continue;
                }
                Transmit::WaitUntil(at) => at,
            };
            link.flush().await?;
            self.counters.record_tx(&self.scheduler.stats());
            self.announce_audit_head();
            let idle = encoder_done && pending.is_none() && self.scheduler.is_drained();
            let deadline = if idle {
                drained_after.get_or_insert_with(|| self.start.elapsed());
                let end = *finish_at.get_or_insert(now + self.settings.linger);
                if now >= end {
                    break;
                }
                wait_until.min(end)
            } else {
                wait_until
            };
            let sleep =
                tokio::time::sleep_until(tokio_start + Duration::from_micros(deadline.as_micros()));
            if pending.is_none() && !encoder_done {
                tokio::select! {
                    item = blocks.recv_async() => match item {
                        Ok(item) => pending = self.absorb(item),
                        Err(_) => encoder_done = true,
                    },
                    () = sleep => {}
                }
            } else {
                sleep.await;
            }
        }
        link.flush().await?;
        self.take_sent();
        self.counters.record_tx(&self.scheduler.stats());
        self.progress.finish();
        Ok(drained_after.unwrap_or_else(|| self.start.elapsed()))
    }

    /// Takes what the encoder produced; returns the block to push, if it was one.
    fn absorb(&mut self, item: Produced) -> Option<OutgoingBlock> {
        match item {
            Produced::Block {
                block,
                plain_bytes,
                pass,
            } => {
                let key = block.key();
                self.unsent_plain.entry(key).or_default().push(plain_bytes);
                let track = self.in_flight.entry(key.object).or_default();
                track.pending += 1;
                if key.kind == BlockKind::Manifest && pass + 1 >= self.settings.passes {
                    track.last_pushed = true;
                }
                return Some(block);
            }
            Produced::ObjectQueued {
                object,
                entries,
                segments,
            } => {
                if let Some(last) = entries.last() {
                    self.progress.working_on(&last.path);
                }
                self.in_flight.entry(object).or_default().queued =
                    Some(entries.iter().map(|e| (e.path.clone(), e.size)).collect());
                let packed = entries.len() > 1;
                for entry in entries {
                    self.emit(Outcome::Queued {
                        path: entry.path,
                        size: entry.size,
                        sha256: entry.sha256,
                        segments,
                        packed,
                    });
                }
                self.check_sent(object);
            }
            Produced::EntryFailed { path, reason } => {
                self.failed_since_barrier += 1;
                self.emit(Outcome::Failed { path, reason });
            }
            Produced::ObjectFailed {
                object,
                path,
                reason,
            } => {
                self.failed_since_barrier += 1;
                self.in_flight.remove(&object);
                self.left(object);
                self.emit(Outcome::Failed { path, reason });
            }
            Produced::PassQueued(pass) => tracing::debug!(pass, "pass queued"),
            Produced::NotSent(skipped) => {
                if skipped.refused {
                    self.failed_since_barrier += 1;
                }
                self.emit(Outcome::not_sent(skipped));
            }
            Produced::Barrier(token) => {
                self.barriers.push_back(Barrier {
                    token,
                    waiting: self.in_flight.keys().copied().collect(),
                    failed: std::mem::take(&mut self.failed_since_barrier),
                });
                self.release_barriers();
            }
        }
        None
    }

    /// `object` is no longer in flight: barriers stop waiting for it.
    fn left(&mut self, object: ObjectId) {
        for barrier in &mut self.barriers {
            barrier.waiting.remove(&object);
        }
        self.release_barriers();
    }

    /// Reports the barriers, oldest first, that wait for nothing any more.
    fn release_barriers(&mut self) {
        while self.barriers.front().is_some_and(|b| b.waiting.is_empty()) {
            let Some(barrier) = self.barriers.pop_front() else {
                break;
            };
            if let Some(passed) = &self.passed {
                // A daemon that stopped listening is shutting down.
                let _ = passed.send(Passed {
                    token: barrier.token,
                    failed: barrier.failed,
                });
            }
        }
    }

    /// Counts blocks the scheduler finished against their objects.
    fn take_sent(&mut self) {
        while let Some(key) = self.scheduler.poll_sent() {
            if let Some(plain) = self.unsent_plain.get_mut(&key) {
                let bytes = plain.pop().unwrap_or(0);
                if plain.is_empty() {
                    self.unsent_plain.remove(&key);
                }
                self.progress.advance(bytes);
            }
            if let Some(track) = self.in_flight.get_mut(&key.object) {
                track.pending = track.pending.saturating_sub(1);
                self.check_sent(key.object);
            }
        }
    }

    /// An object whose every block of every pass left, and that the encoder queued, is sent.
    fn check_sent(&mut self, object: ObjectId) {
        let done = self
            .in_flight
            .get(&object)
            .is_some_and(|t| t.pending == 0 && t.last_pushed && t.queued.is_some());
        if !done {
            return;
        }
        let entries = self.in_flight.remove(&object).and_then(|t| t.queued);
        for (path, size) in entries.into_iter().flatten() {
            self.emit(Outcome::Sent { path, size });
        }
        self.left(object);
    }
}
