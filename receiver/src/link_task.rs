//! The link task: verified frames in, assembler events out to the delivery core. It does
//! nothing slow — no decoding, no crypto (the flows check CRC and MAC, see `flow`), no file
//! I/O, no decision about objects — and allocates nothing per frame (batches are reused, the
//! assembler allocates once per block). It talks to the rest through one channel each way.
//!
//! ```text
//!   flows' batches ──▶ Assembler::handle_verified ──▶ events ──LinkEvent──▶ delivery core
//!        BlockReady: take_ready once permits for its bytes are free
//!   ◀──LinkCommand── delivery core: mark_done (not needed), restore (saved symbols)
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

use sluice_protocol::counters::DropReason;
use sluice_protocol::rx::{Assembler, Event, PartialBlock, ReadyBlock, VerifiedFrames};
use sluice_protocol::time::Instant;
use sluice_protocol::wire::BlockKey;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::counters::Counters;
use crate::delivery::{Input, LinkCommand, LinkEvent};
use crate::flow::{FlowMsg, Flows};
use crate::link_health::{LinkHealth, Notice};
use crate::summary::Stop;

/// How often timeouts, the idle limit and the MAC warning are checked.
const TICK: Duration = Duration::from_millis(100);
/// Ticks between two looks at the links' health (each link's activity, the kernel's drops).
const HEALTH_TICKS: u32 = 10;
/// Least time between two "failed link authentication" warnings.
const BAD_MAC_WARN_EVERY: Duration = Duration::from_secs(10);
/// When the assembler is full, blocks without a new symbol for this long are set aside
/// (saved as partial blocks) to make room. A sender interleaves a handful of blocks, so a
/// block that went quiet this long on a busy link has had its last symbol of the pass; left
/// in memory until the block timeout (10 s) it would cost every block after it.
const PRESSURE_IDLE: Duration = Duration::from_millis(100);

/// A block taken from the assembler, waiting for permits.
#[derive(Debug)]
enum Waiting {
    Ready(ReadyBlock),
    Partial(PartialBlock),
}

impl Waiting {
    /// Bytes the job will hold: its symbols; for a ready block also the decoded copy and,
    /// when a repair symbol must be used, the decoder's work space (bounded by the geometry
    /// rules to a small multiple of the block).
    fn charge(&self) -> u32 {
        let bytes = match self {
            Waiting::Ready(b) => {
                let work = if b.used_repair() {
                    b.geometry.decode_work_bytes()
                } else {
                    0
                };
                b.geometry
                    .padded_len()
                    .saturating_mul(2)
                    .saturating_add(work)
            }
            Waiting::Partial(p) => p.symbols.len() as u64,
        };
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// The receive loop's state.
pub(crate) struct LinkTask {
    asm: Assembler,
    link_timeout: Duration,
    /// To the delivery core.
    events: flume::Sender<Input>,
    /// From the delivery core.
    commands: flume::Receiver<LinkCommand>,
    permits: Arc<Semaphore>,
    /// Ready blocks not yet taken, in the order they became ready.
    pending: VecDeque<BlockKey>,
    waiting: Option<Waiting>,
    clock: std::time::Instant,
    idle: Option<Duration>,
    last_frame: Instant,
    frames_received: u64,
    partials_restored: u64,
    bad_mac_reported: u64,
    bad_mac_warned_at: Option<std::time::Instant>,
    /// Capacity drops already answered by setting idle blocks aside.
    capacity_seen: u64,
    counters: Arc<Counters>,
    /// The links' activity and the kernel's drops, looked at every [`HEALTH_TICKS`].
    health: LinkHealth,
    ticks: u32,
}

impl LinkTask {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        asm: Assembler,
        link_timeout: Duration,
        events: flume::Sender<Input>,
        commands: flume::Receiver<LinkCommand>,
        permits: Arc<Semaphore>,
        idle: Option<Duration>,
        counters: Arc<Counters>,
    ) -> Self {
        LinkTask {
            asm,
            link_timeout,
            events,
            commands,
            permits,
            pending: VecDeque::new(),
            waiting: None,
            clock: std::time::Instant::now(),
            idle,
            last_frame: Instant::ZERO,
            frames_received: 0,
            partials_restored: 0,
            bad_mac_reported: 0,
            bad_mac_warned_at: None,
            capacity_seen: 0,
            counters,
            health: LinkHealth::new(std::time::Instant::now()),
            ticks: 0,
        }
    }

    fn now(&self) -> Instant {
        sluice_common::instant_since(self.clock)
    }

    /// Receives until idle, shutdown or a link error.
    pub async fn run(
        &mut self,
        flows: &mut Flows,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Stop {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let need = self.waiting.as_ref().map(Waiting::charge);
            tokio::select! {
                biased;
                () = &mut shutdown => return Stop::Shutdown,
                permit = acquire(&self.permits, need.unwrap_or(0)), if need.is_some() => {
                    match permit {
                        Some(permit) => self.send_waiting(permit).await,
                        None => return Stop::LinkError("permit semaphore closed".into()),
                    }
                }
                // Before the frames: with several flows the queue may never be empty, and the
                // timeouts, the counters and the health checks must still run.
                _ = tick.tick() => {
                    let now = self.now();
                    self.asm.handle_timeout(now);
                    self.warn_bad_mac(false);
                    self.record();
                    self.ticks = self.ticks.wrapping_add(1);
                    if self.ticks % HEALTH_TICKS == 0 {
                        self.check_links(flows);
                    }
                    if let Some(idle) = self.idle {
                        if now.saturating_since(self.last_frame) >= idle {
                            return Stop::Idle;
                        }
                    }
                }
                message = flows.recv() => match message {
                    Some(FlowMsg::Frames { batch, received }) => {
                        self.take_batch(&batch, received);
                        flows.recycle(batch);
                    }
                    Some(FlowMsg::Failed { index, error }) => {
                        if let Some(error) = flows.failed(index, &error) {
                            return Stop::LinkError(error);
                        }
                    }
                    None => return Stop::LinkError("every link's reader ended".into()),
                },
            }
            // Commands are not urgent (a block marked done a batch later costs a few
            // duplicate drops): taking them here saves a waker registration per batch.
            while let Ok(command) = self.commands.try_recv() {
                self.apply(command);
            }
            self.drain_events().await;
            self.relieve_pressure().await;
        }
    }

    /// Hands a flow's batch of verified frames (and its drops) to the assembler, with one
    /// clock read per batch; `received` frames came off the link for it.
    fn take_batch(&mut self, batch: &VerifiedFrames, received: u64) {
        let now = self.now();
        self.asm.handle_verified(now, batch);
        if received > 0 {
            self.frames_received += received;
            self.last_frame = now;
            self.counters.record_frame_at(std::time::Instant::now());
        }
    }

    /// Says which links went down or came back, and what the kernel dropped.
    fn check_links(&mut self, flows: &Flows) {
        let activity = flows.activity();
        let notices = self
            .health
            .check(&activity, flows.kernel_drops(), std::time::Instant::now());
        for notice in notices {
            match notice {
                Notice::Down { index, name } => tracing::warn!(
                    link = index,
                    "link {index} down: nothing from {name} for {} s while the others bring frames",
                    sluice_common::link::QUIET_LINK.as_secs()
                ),
                Notice::Up { index, name } => {
                    tracing::info!(link = index, "link {index} up: frames from {name} again")
                }
                Notice::Overrun { dropped, total } => tracing::warn!(
                    dropped,
                    total,
                    "link overrun: {dropped} datagrams dropped by the kernel (the receive buffer \
                     was full): the sender paces above what this box takes; lower its --rate \
                     or raise net.core.rmem_max"
                ),
            }
        }
        self.counters.record_links(
            self.health.kernel_drops(),
            self.health.links_down(),
            activity.iter().map(|a| a.datagrams),
        );
    }

    fn record(&self) {
        self.counters.record_link(
            self.frames_received,
            &self.asm.stats(),
            self.asm.drops(),
            self.partials_restored,
        );
    }

    fn apply(&mut self, command: LinkCommand) {
        match command {
            LinkCommand::MarkDone(key) => self.asm.mark_done(key),
            LinkCommand::Restore(partial) => {
                let added = self.asm.restore(self.now(), &partial);
                if added > 0 {
                    self.partials_restored += 1;
                }
                tracing::debug!(block = ?partial.key, added, "restored saved symbols");
            }
        }
    }

    async fn send(&self, event: LinkEvent) {
        // The delivery core outlives the link task; a closed channel means it died, and the
        // run ends with whatever it reported.
        let _ = self.events.send_async(Input::Link(event)).await;
    }

    /// Hands every pending assembler event on, then offers ready blocks to the decoders.
    async fn drain_events(&mut self) {
        while let Some(event) = self.asm.poll_event() {
            let event = match event {
                Event::BlockStarted(key) => LinkEvent::BlockStarted(key),
                Event::BlockReady(key) => {
                    self.pending.push_back(key);
                    continue;
                }
                Event::BlockStalled(partial) => {
                    let permit = self.permits.clone().try_acquire_many_owned(
                        u32::try_from(partial.symbols.len()).unwrap_or(u32::MAX),
                    );
                    LinkEvent::BlockStalled {
                        partial,
                        permit: permit.ok(),
                        running: true,
                    }
                }
                Event::LinkUp => {
                    self.counters.record_link_up(true);
                    LinkEvent::LinkUp
                }
                Event::LinkDown => {
                    self.counters.record_link_up(false);
                    LinkEvent::LinkDown(self.link_timeout)
                }
                Event::Heartbeat(beat) => LinkEvent::Heartbeat(beat),
                Event::RelayStatus(status) => LinkEvent::RelayStatus(status),
                Event::AuditHead(head) => LinkEvent::AuditHead(head),
                _ => continue,
            };
            self.send(event).await;
        }
        self.dispatch_pending().await;
    }

    /// After capacity drops, sets aside blocks idle for [`PRESSURE_IDLE`] to make room.
    async fn relieve_pressure(&mut self) {
        let capacity = self.asm.drops().get(DropReason::Capacity);
        if capacity == self.capacity_seen {
            return;
        }
        self.capacity_seen = capacity;
        self.asm.evict_idle(self.now(), PRESSURE_IDLE);
        self.drain_events().await;
    }

    async fn dispatch_pending(&mut self) {
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
                Ok(permit) => self.send_block(waiting, permit).await,
                Err(_) => self.waiting = Some(waiting),
            }
        }
    }

    async fn send_waiting(&mut self, permit: OwnedSemaphorePermit) {
        if let Some(waiting) = self.waiting.take() {
            self.send_block(waiting, permit).await;
        }
        self.dispatch_pending().await;
    }

    async fn send_block(&self, waiting: Waiting, permit: OwnedSemaphorePermit) {
        let event = match waiting {
            Waiting::Ready(block) => LinkEvent::BlockReady(block, permit),
            Waiting::Partial(partial) => LinkEvent::BlockStalled {
                partial,
                permit: Some(permit),
                running: false,
            },
        };
        self.send(event).await;
    }

    /// Warns about frames that failed the link MAC since the last warning (at most every
    /// [`BAD_MAC_WARN_EVERY`] unless `force`).
    fn warn_bad_mac(&mut self, force: bool) {
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

    /// At the end of a run: the flows stop and what they had verified is assembled; every
    /// block still assembling goes to be saved for a later run, every ready one to be decoded
    /// (waiting for permits as needed); then the delivery core hears that the link is closed.
    pub async fn finish(mut self, mut flows: Flows) {
        flows.stop().await;
        while let Some(message) = flows.try_recv() {
            if let FlowMsg::Frames { batch, received } = message {
                self.take_batch(&batch, received);
            }
        }
        drop(flows);
        self.drain_events().await;
        self.warn_bad_mac(true);
        self.asm.drain_partials();
        while let Some(event) = self.asm.poll_event() {
            match event {
                Event::BlockStalled(partial) => {
                    let waiting = Waiting::Partial(partial);
                    if let Some(permit) = acquire(&self.permits, waiting.charge()).await {
                        self.send_block(waiting, permit).await;
                    }
                }
                // A block that was waiting for its source symbols: decoded below.
                Event::BlockReady(key) => self.pending.push_back(key),
                _ => {}
            }
        }
        loop {
            if let Some(waiting) = self.waiting.take() {
                if let Some(permit) = acquire(&self.permits, waiting.charge()).await {
                    self.send_block(waiting, permit).await;
                }
            }
            let Some(key) = self.pending.pop_front() else {
                break;
            };
            if let Some(block) = self.asm.take_ready(&key) {
                self.waiting = Some(Waiting::Ready(block));
            }
        }
        self.record();
        self.send(LinkEvent::Closed).await;
    }
}

/// Waits for `n` permits (`None` if the semaphore was closed).
async fn acquire(permits: &Arc<Semaphore>, n: u32) -> Option<OwnedSemaphorePermit> {
    permits.clone().acquire_many_owned(n).await.ok()
}
