//! One task per link (or per flow of a port range): it reads its own socket, checks every
//! frame there — length, magic, version, CRC-32C, link MAC, header — and hands the link task
//! only batches of verified frames. The per-byte work of the receive path thus runs on as many
//! cores as there are flows; the link task keeps the one assembler and copies symbols into
//! their blocks.
//!
//! ```text
//!   flow 1: FrameRx ─▶ VerifiedFrames::verify ─┐
//!   flow 2: FrameRx ─▶ VerifiedFrames::verify ─┼─ batches (QUEUE) ─▶ link task: Assembler
//!   flow n: FrameRx ─▶ VerifiedFrames::verify ─┘ ◀── emptied batches ─┘ (reused)
//! ```
//!
//! Memory is bounded: a batch holds at most [`BATCH_FRAMES`] frames and [`BATCH_BYTES`] of
//! payload, at most [`QUEUE`] batches wait for the link task, and a flow whose batch finds the
//! queue full waits. Its socket's receive buffer then absorbs what arrives, and what the kernel
//! cannot hold it counts, reported as `link overrun` (each flow reads its socket's count once a
//! second, for the link task's health check). A batch that holds only refused datagrams waits
//! for frames or that second, so junk sent to a port cannot fill the queue with near-empty
//! batches; at the end each flow hands on what it holds, so every datagram taken from a socket
//! is counted.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sluice_common::link::{FrameRx, LinkActivity, Received};
use sluice_protocol::rx::VerifiedFrames;
use sluice_protocol::wire::LinkKey;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Most frames one batch carries.
pub(crate) const BATCH_FRAMES: usize = 128;
/// Most payload bytes one batch carries: 93 symbols of 1 408 bytes, or 14 of 8 896.
pub(crate) const BATCH_BYTES: usize = 128 << 10;
/// Batches waiting for the link task, whatever the number of flows.
pub(crate) const QUEUE: usize = 16;
/// How often a flow reads what the kernel dropped on its socket.
const KERNEL_DROPS_EVERY: Duration = Duration::from_secs(1);

/// What a flow hands the link task.
#[derive(Debug)]
pub(crate) enum FlowMsg {
    /// Frames the flow verified and the drops it counted; `received` is how many items
    /// (frames and deframing drops) it took from its link.
    Frames {
        batch: VerifiedFrames,
        received: u64,
    },
    /// Flow `index`'s link failed; the flow has ended.
    Failed { index: usize, error: String },
}

/// What a flow tells the health check.
#[derive(Debug, Default)]
struct Status {
    /// Verified frames it brought.
    datagrams: u64,
    last: Option<Instant>,
    failed: bool,
    kernel_drops: Option<u64>,
}

/// A socket's drop count widened to 64 bits: the kernel keeps it in 32 (`sk_drops`, printed
/// as `%u` in `/proc/net/udp`), so it wraps after 2^32 drops; the increments are summed.
#[derive(Debug, Default)]
struct KernelDrops {
    last: u32,
    total: u64,
}

impl KernelDrops {
    /// The running total after a reading of `raw`.
    fn total(&mut self, raw: u64) -> u64 {
        // The low 32 bits are the counter (a wider reading is taken as it is, modulo 2^32).
        let raw = raw as u32;
        self.total += u64::from(raw.wrapping_sub(self.last));
        self.last = raw;
        self.total
    }
}

fn lock(status: &Mutex<Status>) -> MutexGuard<'_, Status> {
    status.lock().unwrap_or_else(|e| e.into_inner())
}

/// The flows of one run, as the link task sees them.
#[derive(Debug)]
pub(crate) struct Flows {
    batches: mpsc::Receiver<FlowMsg>,
    /// Emptied batches back to the flows.
    spare: flume::Sender<VerifiedFrames>,
    names: Vec<String>,
    status: Vec<Arc<Mutex<Status>>>,
    tasks: Vec<JoinHandle<()>>,
    failed: usize,
    /// Tells the flows to hand on what they hold and end.
    stop: watch::Sender<bool>,
    /// What the flows handed on while they were stopping.
    last: VecDeque<FlowMsg>,
}

impl Flows {
    /// Starts one task per link on the current runtime, each verifying with `key`.
    pub fn spawn(links: Vec<(String, Box<dyn FrameRx>)>, key: &LinkKey) -> Flows {
        let (out, batches) = mpsc::channel(QUEUE);
        let (spare, spare_rx) = flume::bounded(QUEUE + links.len() + 1);
        let (stop, stopping) = watch::channel(false);
        let mut flows = Flows {
            batches,
            spare,
            names: Vec::with_capacity(links.len()),
            status: Vec::with_capacity(links.len()),
            tasks: Vec::with_capacity(links.len()),
            failed: 0,
            stop,
            last: VecDeque::new(),
        };
        for (index, (name, link)) in links.into_iter().enumerate() {
            let status = Arc::new(Mutex::new(Status::default()));
            let flow = Flow {
                index,
                link,
                key: key.clone(),
                status: status.clone(),
                out: out.clone(),
                spare: spare_rx.clone(),
                stopping: stopping.clone(),
            };
            flows.tasks.push(tokio::spawn(flow.run()));
            flows.names.push(name);
            flows.status.push(status);
        }
        flows
    }

    /// The next message of any flow; `None` once every flow has ended. Cancel-safe.
    pub async fn recv(&mut self) -> Option<FlowMsg> {
        self.batches.recv().await
    }

    /// A message already waiting, if any.
    pub fn try_recv(&mut self) -> Option<FlowMsg> {
        self.last
            .pop_front()
            .or_else(|| self.batches.try_recv().ok())
    }

    /// Gives an emptied batch back for reuse (dropped if enough are spare).
    pub fn recycle(&self, mut batch: VerifiedFrames) {
        batch.clear();
        let _ = self.spare.try_send(batch);
    }

    /// Notes that flow `index` failed; the error ending the run when no flow is left.
    pub fn failed(&mut self, index: usize, error: &str) -> Option<String> {
        self.failed += 1;
        let name = self.names.get(index).map_or("?", String::as_str);
        if self.failed >= self.names.len() {
            return Some(match self.names.len() {
                1 => error.to_string(),
                _ => format!("every link failed; the last, {name}: {error}"),
            });
        }
        tracing::warn!(
            link = index + 1,
            "link {} failed: {name}: {error}; receiving on the others",
            index + 1
        );
        None
    }

    /// Each link's activity when there are several (empty for one, as the health check
    /// expects).
    pub fn activity(&self) -> Vec<LinkActivity> {
        if self.names.len() < 2 {
            return Vec::new();
        }
        let now = Instant::now();
        self.names
            .iter()
            .zip(&self.status)
            .map(|(name, status)| {
                let status = lock(status);
                LinkActivity {
                    name: name.clone(),
                    datagrams: status.datagrams,
                    quiet_for: status.last.map(|t| now.saturating_duration_since(t)),
                    failed: status.failed,
                }
            })
            .collect()
    }

    /// What the kernel dropped on every socket, as last read by the flows.
    pub fn kernel_drops(&self) -> Option<u64> {
        self.status
            .iter()
            .filter_map(|s| lock(s).kernel_drops)
            .fold(None, |sum, d| Some(sum.unwrap_or(0) + d))
    }

    /// Stops every flow and waits until they have handed on what they hold and let go of
    /// their links; every batch stays to be taken with [`try_recv`](Self::try_recv). The
    /// queue is emptied meanwhile, so no flow waits on it.
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        for mut task in std::mem::take(&mut self.tasks) {
            loop {
                tokio::select! {
                    _ = &mut task => break,
                    message = self.batches.recv() => match message {
                        Some(message) => self.last.push_back(message),
                        None => {
                            let _ = task.await;
                            break;
                        }
                    },
                }
            }
        }
    }
}

impl Drop for Flows {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One link's reader and verifier.
struct Flow {
    index: usize,
    link: Box<dyn FrameRx>,
    key: LinkKey,
    status: Arc<Mutex<Status>>,
    out: mpsc::Sender<FlowMsg>,
    spare: flume::Receiver<VerifiedFrames>,
    stopping: watch::Receiver<bool>,
}

impl Flow {
    /// Reads, verifies and hands on until the link fails, the flows are stopped or the link
    /// task is gone.
    async fn run(mut self) {
        let mut batch = fresh(&self.spare);
        // Items taken from the link since the last batch was handed on.
        let mut received = 0u64;
        let mut drops = KernelDrops::default();
        let mut probe = tokio::time::interval(KERNEL_DROPS_EVERY);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Checked every turn, not only when `select!` happens to pick it: under a flood
            // the link is always ready too, and a stopping flow must not keep reading.
            if self.stopping.has_changed().unwrap_or(true) {
                if received > 0 {
                    let _ = hand_on(&self.out, batch, received).await;
                }
                return;
            }
            tokio::select! {
                ready = self.link.ready() => {
                    if let Err(e) = ready {
                        lock(&self.status).failed = true;
                        if received > 0 {
                            let _ = hand_on(&self.out, batch, received).await;
                        }
                        let failed = FlowMsg::Failed { index: self.index, error: e.to_string() };
                        let _ = self.out.send(failed).await;
                        return;
                    }
                }
                _ = probe.tick() => {
                    let total = self.link.kernel_drops().map(|raw| drops.total(raw));
                    lock(&self.status).kernel_drops = total;
                    // Refused datagrams held back are counted at least once a second.
                    if received > 0 {
                        let held = std::mem::replace(&mut batch, fresh(&self.spare));
                        if !hand_on(&self.out, held, std::mem::take(&mut received)).await {
                            return;
                        }
                    }
                    continue;
                }
                _ = self.stopping.changed() => {
                    if received > 0 {
                        let _ = hand_on(&self.out, batch, received).await;
                    }
                    return;
                }
            }
            let mut datagrams = 0u64;
            while let Some(frame) = self.link.next_frame() {
                received += 1;
                match frame {
                    Received::Frame(bytes) => {
                        // Refused frames are counted in the batch; only verified ones show
                        // the link alive (junk sent to a dead link's port must not).
                        if batch.verify(bytes, &self.key).is_ok() {
                            datagrams += 1;
                        }
                    }
                    Received::Dropped(reason) => batch.record_drop(reason),
                }
                if batch.is_full() {
                    let full = std::mem::replace(&mut batch, fresh(&self.spare));
                    if !hand_on(&self.out, full, std::mem::take(&mut received)).await {
                        return;
                    }
                }
            }
            if datagrams > 0 {
                let mut status = lock(&self.status);
                status.datagrams += datagrams;
                status.last = Some(Instant::now());
            }
            // Frames go on at once; refused datagrams alone wait (see the module's comment).
            if !batch.is_empty() {
                let full = std::mem::replace(&mut batch, fresh(&self.spare));
                if !hand_on(&self.out, full, std::mem::take(&mut received)).await {
                    return;
                }
            }
        }
    }
}

/// An emptied batch to reuse, or a new one.
fn fresh(spare: &flume::Receiver<VerifiedFrames>) -> VerifiedFrames {
    spare
        .try_recv()
        .unwrap_or_else(|_| VerifiedFrames::new(BATCH_FRAMES, BATCH_BYTES))
}

/// Queues a batch for the link task, waiting while the queue is full; false once the link
/// task is gone.
async fn hand_on(out: &mpsc::Sender<FlowMsg>, batch: VerifiedFrames, received: u64) -> bool {
    out.send(FlowMsg::Frames { batch, received }).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapping_kernel_drop_counter_keeps_counting() {
        let mut drops = KernelDrops::default();
        assert_eq!(drops.total(10), 10);
        assert_eq!(drops.total(u64::from(u32::MAX)), u64::from(u32::MAX));
        assert_eq!(drops.total(4), u64::from(u32::MAX) + 5);
        assert_eq!(drops.total(4), u64::from(u32::MAX) + 5);
    }
}
