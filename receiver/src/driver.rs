//! The link task: frames in, assembled blocks out to the decoders. It does nothing slow: no
//! decoding, no crypto beyond the frame MAC, no file I/O except the `stat` of a done marker
//! when an unknown object starts, and no allocation per frame (the link reuses its buffer,
//! the assembler allocates once per block).
//!
//! ```text
//!   link.recv() ──► Assembler::handle_frame ──► events
//!        BlockStarted ─► object table: assemble / mark_done / restore saved symbols
//!        BlockReady   ─► take_ready once permits for its bytes are free ─► decoders
//!        BlockStalled ─► warn, save its symbols (decoders) for a later pass
//!   every 100 ms: handle_timeout, idle check, "frames failed link authentication" warning
//! ```
//!
//! Ready blocks wait inside the assembler (charged to `--max-memory`) while the decoders are
//! busy, so a slow disk turns into counted `capacity` drops, never into unbounded memory.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use sluice_common::link::{LinkReceiver, Received};
use sluice_protocol::counters::DropReason;
use sluice_protocol::rx::{Assembler, Event, PartialBlock, ReadyBlock};
use sluice_protocol::time::Instant;
use sluice_protocol::wire::{BlockKey, BlockKind};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::census::Census;
use crate::decode::Job;
use crate::objects::StartAction;
use crate::shared::{Counters, Shared};
use crate::state::ObjectKey;
use crate::summary::Stop;

/// How often timeouts, the idle limit and the MAC warning are checked.
const TICK: Duration = Duration::from_millis(100);
/// Least time between two "failed link authentication" warnings.
const BAD_MAC_WARN_EVERY: Duration = Duration::from_secs(10);
/// When the assembler is full, blocks without a new symbol for this long are set aside
/// (saved as partial blocks) to make room. A sender interleaves a handful of blocks, so a
/// block that went quiet this long on a busy link has had its last symbol of the pass; left
/// in memory until the block timeout (10 s) it would cost every block after it.
const PRESSURE_IDLE: Duration = Duration::from_millis(100);

/// Stall warnings per [`STALL_WARN_WINDOW`]; beyond that they go to debug and the count of the
/// rest is warned when the window ends (heavy loss, or a key holder sending blocks that never
/// complete, would otherwise flood the log).
const STALL_WARNINGS: u32 = 20;
const STALL_WARN_WINDOW: Duration = Duration::from_secs(10);

/// Counts warnings in a time window.
#[derive(Debug)]
struct WarnLimit {
    window_start: std::time::Instant,
    warned: u32,
    suppressed: u64,
}

impl WarnLimit {
    fn new() -> Self {
        WarnLimit {
            window_start: std::time::Instant::now(),
            warned: 0,
            suppressed: 0,
        }
    }

    /// Whether one more warning may go out now.
    fn allow(&mut self) -> bool {
        self.roll();
        if self.warned < STALL_WARNINGS {
            self.warned += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// Starts a new window when the current one is over, reporting what it held back.
    fn roll(&mut self) {
        if self.window_start.elapsed() < STALL_WARN_WINDOW {
            return;
        }
        self.flush();
        self.window_start = std::time::Instant::now();
        self.warned = 0;
    }

    fn flush(&mut self) {
        if self.suppressed > 0 {
            tracing::warn!(
                count = self.suppressed,
                "block stalled: {} more blocks stalled (not listed)",
                self.suppressed
            );
            self.suppressed = 0;
        }
    }
}

/// A block taken from the assembler, waiting for permits.
#[derive(Debug)]
enum Waiting {
    Ready(ReadyBlock),
    Partial(PartialBlock),
}

impl Waiting {
    /// Bytes the job will hold: its symbols, plus the decoded block for a ready block.
    fn charge(&self) -> u32 {
        let bytes = match self {
            Waiting::Ready(b) => b.geometry.padded_len().saturating_mul(2),
            Waiting::Partial(p) => p.symbols.len() as u64,
        };
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// Counts the link task keeps.
#[derive(Debug, Default, Clone)]
pub(crate) struct LinkStats {
    pub frames_received: u64,
    pub first_frame: Option<std::time::Instant>,
    pub blocks_stalled: u64,
    /// Frames each sender run says it sent (its latest heartbeat), by session.
    pub sender_frames: std::collections::HashMap<u64, u64>,
}

/// Ids checked against the state directory when looking for objects lost whole.
pub(crate) const MISSING_CHECKS: usize = 10_000;

/// `a, b, c` of object keys.
pub(crate) fn list(keys: &[ObjectKey]) -> String {
    keys.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sender runs whose heartbeat counts are kept (a bound against a stream of forged sessions;
/// heartbeats are authenticated, so this only matters for a misbehaving key holder).
const MAX_SESSIONS_TRACKED: usize = 1024;

/// The receive loop's state.
pub(crate) struct LinkLoop {
    pub asm: Assembler,
    shared: Arc<Shared>,
    jobs: crossbeam_channel::Sender<Job>,
    permits: Arc<Semaphore>,
    pending: VecDeque<BlockKey>,
    waiting: Option<Waiting>,
    restored_tx: mpsc::UnboundedSender<PartialBlock>,
    restored_rx: mpsc::UnboundedReceiver<PartialBlock>,
    clock: std::time::Instant,
    idle: Option<Duration>,
    last_frame: Instant,
    bad_mac_reported: u64,
    bad_mac_warned_at: Option<std::time::Instant>,
    /// Capacity drops already answered by setting idle blocks aside.
    capacity_seen: u64,
    /// The assembler's block timeout, to shift its clock by.
    block_timeout: Duration,
    /// A pressure eviction made the assembler report the link down; its next "up" is not news.
    quiet_link_up: bool,
    /// Events being drained come from a shifted clock.
    clock_shifted: bool,
    stall_warnings: WarnLimit,
    pub stats: LinkStats,
    /// Objects the senders announced against objects seen.
    pub census: Census,
    /// Objects lost whole at the last link-down report (warned again only when it changes).
    missing_reported: u64,
}

impl LinkLoop {
    pub fn new(
        asm: Assembler,
        block_timeout: Duration,
        shared: Arc<Shared>,
        jobs: crossbeam_channel::Sender<Job>,
        permits: Arc<Semaphore>,
        idle: Option<Duration>,
    ) -> Self {
        let (restored_tx, restored_rx) = mpsc::unbounded_channel();
        LinkLoop {
            asm,
            shared,
            jobs,
            permits,
            pending: VecDeque::new(),
            waiting: None,
            restored_tx,
            restored_rx,
            clock: std::time::Instant::now(),
            idle,
            last_frame: Instant::ZERO,
            bad_mac_reported: 0,
            bad_mac_warned_at: None,
            capacity_seen: 0,
            block_timeout,
            quiet_link_up: false,
            clock_shifted: false,
            stall_warnings: WarnLimit::new(),
            stats: LinkStats::default(),
            census: Census::default(),
            missing_reported: 0,
        }
    }

    fn now(&self) -> Instant {
        sluice_common::instant_since(self.clock)
    }

    /// Receives until idle, shutdown or a link error.
    pub async fn run(
        &mut self,
        link: &mut LinkReceiver,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Stop {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let need = self.waiting.as_ref().map(Waiting::charge);
            let (asm, clock) = (&mut self.asm, self.clock);
            let mut batch_time = None;
            tokio::select! {
                biased;
                () = &mut shutdown => return Stop::Shutdown,
                permit = acquire(&self.permits, need.unwrap_or(0)), if need.is_some() => {
                    match permit {
                        Some(permit) => self.send_waiting(permit),
                        None => return Stop::LinkError("permit semaphore closed".into()),
                    }
                }
                received = link.recv_many(|frame| {
                    // One clock read per batch (up to 32 datagrams).
                    let now = *batch_time.get_or_insert_with(|| sluice_common::instant_since(clock));
                    match frame {
                        Received::Frame(bytes) => asm.handle_frame(now, bytes),
                        Received::Dropped(reason) => asm.record_drop(reason),
                    }
                }) => {
                    match received {
                        Ok(n) => self.stats.frames_received += n as u64,
                        Err(e) => return Stop::LinkError(e.to_string()),
                    }
                    if let Some(now) = batch_time {
                        self.last_frame = now;
                    }
                    if self.stats.first_frame.is_none() {
                        self.stats.first_frame = Some(std::time::Instant::now());
                    }
                }
                Some(partial) = self.restored_rx.recv() => {
                    let added = self.asm.restore(self.now(), &partial);
                    if added > 0 {
                        Counters::add(&self.shared.counters.partials_restored, 1);
                    }
                    tracing::debug!(block = ?partial.key, added, "restored saved symbols");
                }
                _ = tick.tick() => {
                    let now = self.now();
                    self.asm.handle_timeout(now);
                    self.warn_bad_mac(false);
                    self.stall_warnings.roll();
                    if let Some(idle) = self.idle {
                        if now.saturating_since(self.last_frame) >= idle {
                            return Stop::Idle;
                        }
                    }
                }
            }
            self.drain_events();
            self.relieve_pressure();
        }
    }

    /// Handles every pending assembler event, then hands ready blocks to the decoders.
    fn drain_events(&mut self) {
        while let Some(event) = self.asm.poll_event() {
            match event {
                Event::BlockStarted(key) => self.on_started(key),
                Event::BlockReady(key) => self.pending.push_back(key),
                Event::BlockStalled(partial) => self.on_stalled(partial, true),
                Event::LinkDown if self.clock_shifted => self.quiet_link_up = true,
                Event::LinkUp if self.quiet_link_up => self.quiet_link_up = false,
                Event::LinkUp => tracing::info!("link up: valid frames arriving"),
                Event::LinkDown => {
                    tracing::info!("link down: no valid frame for 5 s");
                    self.report_missing();
                }
                Event::Heartbeat(beat) => {
                    tracing::debug!(
                        session = format_args!("{:016x}", beat.session.0),
                        seq = beat.seq,
                        frames_sent = beat.frames_sent,
                        rate = beat.rate,
                        "heartbeat"
                    );
                    self.census.announced(beat.session, beat.objects);
                    let tracked = &mut self.stats.sender_frames;
                    if tracked.len() < MAX_SESSIONS_TRACKED || tracked.contains_key(&beat.session.0)
                    {
                        let sent = tracked.entry(beat.session.0).or_insert(0);
                        *sent = (*sent).max(beat.frames_sent);
                    }
                }
                Event::RelayStatus(status) => tracing::info!(?status, "relay status"),
                _ => {}
            }
        }
        self.dispatch_pending();
    }

    /// After capacity drops, sets aside blocks idle for [`PRESSURE_IDLE`]: the assembler's
    /// clock is moved forward so its block timeout means that. The link-down event this
    /// shift also produces is dropped, and so is the "up" that follows.
    fn relieve_pressure(&mut self) {
        let capacity = self.asm.drops().get(DropReason::Capacity);
        if capacity == self.capacity_seen {
            return;
        }
        self.capacity_seen = capacity;
        let shift = self.block_timeout.saturating_sub(PRESSURE_IDLE);
        self.asm.handle_timeout(self.last_frame + shift);
        self.clock_shifted = true;
        self.drain_events();
        self.clock_shifted = false;
    }

    fn on_started(&mut self, key: BlockKey) {
        self.census.seen(ObjectKey::of(&key));
        let action = self.shared.index().on_block_started(
            &key,
            &self.shared.state,
            std::time::Instant::now(),
        );
        match action {
            StartAction::Assemble => {}
            StartAction::MarkDone => self.asm.mark_done(key),
            StartAction::AlreadyDone => {
                self.asm.mark_done(key);
                let obj = ObjectKey::of(&key);
                Counters::add(&self.shared.counters.objects_already, 1);
                tracing::info!(object = %obj, "already delivered {obj} (by an earlier pass or run)");
            }
            StartAction::Restore => {
                let (shared, tx) = (self.shared.clone(), self.restored_tx.clone());
                // Reading a saved block is file I/O: off the link task.
                tokio::task::spawn_blocking(move || match shared.state.load_partial(&key) {
                    Ok(partial) => {
                        let _ = tx.send(partial);
                    }
                    Err(e) => tracing::debug!(block = ?key, "saved symbols unusable: {e}"),
                });
            }
        }
    }

    /// Warns about objects the senders announced of which no frame arrived (once per change:
    /// the link goes down after every transfer).
    fn report_missing(&mut self) {
        let missing = self
            .census
            .missing(|obj| self.shared.knows(obj), MISSING_CHECKS);
        if missing.count != self.missing_reported && missing.count > 0 {
            tracing::warn!(
                count = missing.count,
                first = %list(&missing.first),
                "{} object(s) lost whole: the sender announced them but none of their frames \
                 arrived (a later pass can still bring them)",
                missing.count
            );
        }
        self.missing_reported = missing.count;
    }

    /// A block got no symbol for the block timeout: warn, and keep its symbols if possible.
    fn on_stalled(&mut self, partial: PartialBlock, running: bool) {
        let obj = ObjectKey::of(&partial.key);
        if !self.shared.index().is_open(&obj) {
            return;
        }
        let held = partial.ids.len();
        let needed = partial.geometry.source_symbols;
        if running {
            self.stats.blocks_stalled += 1;
            if self.stall_warnings.allow() {
                warn_stalled(&partial, obj, held, needed);
            } else {
                tracing::debug!(object = %obj, held, needed, "block stalled");
            }
        }
        let waiting = Waiting::Partial(partial);
        match self
            .permits
            .clone()
            .try_acquire_many_owned(waiting.charge())
        {
            Ok(permit) => self.send(waiting, permit),
            // Symbols are only an optimisation for a later pass; never wait for room here.
            Err(_) => tracing::debug!(object = %obj, "no room to save a stalled block's symbols"),
        }
    }

    fn dispatch_pending(&mut self) {
        while self.waiting.is_none() {
            let Some(key) = self.pending.pop_front() else {
                break;
            };
            let Some(block) = self.asm.take_ready(&key) else {
                continue;
            };
            let waiting = Waiting::Ready(block);
            match self
                .permits
                .clone()
                .try_acquire_many_owned(waiting.charge())
            {
                Ok(permit) => self.send(waiting, permit),
                Err(_) => self.waiting = Some(waiting),
            }
        }
    }

    fn send_waiting(&mut self, permit: OwnedSemaphorePermit) {
        if let Some(waiting) = self.waiting.take() {
            self.send(waiting, permit);
        }
        self.dispatch_pending();
    }

    fn send(&mut self, waiting: Waiting, permit: OwnedSemaphorePermit) {
        let job = match waiting {
            Waiting::Ready(block) => Job::Decode(block, permit),
            Waiting::Partial(partial) => Job::SavePartial(partial, permit),
        };
        if self.jobs.send(job).is_err() {
            tracing::error!("decoder threads are gone; dropping a block");
        }
    }

    /// Warns about frames that failed the link MAC since the last warning (at most every
    /// [`BAD_MAC_WARN_EVERY`] unless `force`).
    pub fn warn_bad_mac(&mut self, force: bool) {
        let total = self.asm.drops().get(DropReason::BadMac);
        let new = total.saturating_sub(self.bad_mac_reported);
        if new == 0 {
            return;
        }
        let due = force
            || self
                .bad_mac_warned_at
                .is_none_or(|at| at.elapsed() >= BAD_MAC_WARN_EVERY);
        if due {
            tracing::warn!(
                count = new,
                "{new} frames failed link authentication (wrong --link-key?)"
            );
            self.bad_mac_reported = total;
            self.bad_mac_warned_at = Some(std::time::Instant::now());
        }
    }

    /// At the end of a run: every block still assembling is saved for a later run, every
    /// ready one is decoded. Waits for permits as needed.
    pub async fn flush(&mut self) {
        self.drain_events();
        self.warn_bad_mac(true);
        self.stall_warnings.flush();
        self.asm.handle_timeout(Instant::from_micros(u64::MAX));
        while let Some(event) = self.asm.poll_event() {
            if let Event::BlockStalled(partial) = event {
                let obj = ObjectKey::of(&partial.key);
                if self.shared.index().is_open(&obj) {
                    let waiting = Waiting::Partial(partial);
                    if let Some(permit) = acquire(&self.permits, waiting.charge()).await {
                        self.send(waiting, permit);
                    }
                }
            }
        }
        loop {
            if let Some(waiting) = self.waiting.take() {
                if let Some(permit) = acquire(&self.permits, waiting.charge()).await {
                    self.send(waiting, permit);
                }
            }
            let Some(key) = self.pending.pop_front() else {
                break;
            };
            if let Some(block) = self.asm.take_ready(&key) {
                self.waiting = Some(Waiting::Ready(block));
            }
        }
    }
}

/// The documented "block stalled" warning.
fn warn_stalled(partial: &PartialBlock, obj: ObjectKey, held: usize, needed: u16) {
    match partial.key.kind {
        BlockKind::Data => tracing::warn!(
            object = %obj,
            segment = partial.key.index,
            held,
            needed,
            "block stalled: object {obj} segment {} has {held} of {needed} symbols",
            partial.key.index
        ),
        BlockKind::Manifest => tracing::warn!(
            object = %obj,
            held,
            needed,
            "block stalled: object {obj} manifest has {held} of {needed} symbols"
        ),
    }
}

/// Waits for `n` permits (`None` if the semaphore was closed).
async fn acquire(permits: &Arc<Semaphore>, n: u32) -> Option<OwnedSemaphorePermit> {
    permits.clone().acquire_many_owned(n).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stall_warnings_are_limited_per_window() {
        let mut limit = WarnLimit::new();
        let allowed = (0..50).filter(|_| limit.allow()).count();
        assert_eq!(allowed, STALL_WARNINGS as usize);
        assert_eq!(limit.suppressed, 30);
        limit.flush();
        assert_eq!(limit.suppressed, 0);
    }
}
