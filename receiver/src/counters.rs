//! The receiver's counters: one struct, shared by reference. Each field has one writer, the
//! owner of the fact: the link task (frames, drops, restored partials), the delivery driver
//! (blocks, objects, bytes: the delivery core's `DeliveryStats`) and the sink (whether the
//! object store answers). The final report reads it, and so can anything that wants live
//! figures (a metrics endpoint), without a lock.
//!
//! `DeliveryStats` is declared here, beside the counters it feeds, so that this module (used
//! by the link task, the sink and the report) depends on no other module of the receiver.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sluice_common::budget::{self, BudgetKey, Limit, Usage};
use sluice_common::metrics::Metric;
use sluice_protocol::counters::{DropCounters, DropReason};
use sluice_protocol::rx::RxStats;

/// Live counters of one receiver run.
#[derive(Debug)]
pub struct Counters {
    /// Start of the run; instants are kept as microseconds after it (0: not yet).
    base: Instant,
    frames_received: AtomicU64,
    frames_valid: AtomicU64,
    sessions_seen: AtomicU64,
    partials_restored: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
    first_frame_us: AtomicU64,
    last_frame_us: AtomicU64,
    link_up: AtomicU64,
    blocks_decoded: AtomicU64,
    blocks_recovered: AtomicU64,
    blocks_stalled: AtomicU64,
    partials_saved: AtomicU64,
    objects_delivered: AtomicU64,
    objects_already_delivered: AtomicU64,
    objects_failed: AtomicU64,
    files_held: AtomicU64,
    /// Models delivered, by the key that signed them.
    models_delivered: Mutex<Vec<(String, u64)>>,
    objects_lost_whole: AtomicU64,
    bytes_delivered: AtomicU64,
    sender_frames_sent: AtomicU64,
    last_delivery_us: AtomicU64,
    objects_publishing: AtomicU64,
    bytes_publishing: AtomicU64,
    store_down_since_us: AtomicU64,
    store_retries: AtomicU64,
    kernel_drops: AtomicU64,
    links_down: AtomicU64,
    /// Datagrams each link brought, with several links.
    link_datagrams: Mutex<Vec<u64>>,
    /// The export budgets of `--approval-policy` and what the deliveries spent (written by
    /// the publisher, which owns the use).
    export_budget: Mutex<(Vec<(BudgetKey, Limit)>, Usage)>,
}

/// Counts only the delivery core knows, kept by it as it decides (it is sans-IO, so it holds
/// no shared counters); the driver copies them in with [`Counters::record_delivery`].
#[derive(Debug, Default, Clone)]
pub(crate) struct DeliveryStats {
    pub blocks_decoded: u64,
    pub blocks_recovered: u64,
    pub blocks_stalled: u64,
    pub partials_saved: u64,
    pub objects_delivered: u64,
    pub objects_already_delivered: u64,
    pub objects_failed: u64,
    /// Files that began to wait for their model's signature (`[signing]`).
    pub files_held: u64,
    /// Models delivered whole with their signature, by the key that signed them.
    pub models_delivered: BTreeMap<String, u64>,
    /// Of `objects_failed`: announced, and not one frame of them arrived.
    pub objects_lost_whole: u64,
    pub bytes_delivered: u64,
    /// When the last object was delivered.
    pub last_delivery: Option<Instant>,
    /// Objects complete and handed to the publisher, not yet answered for.
    pub objects_publishing: u64,
    /// Their bytes in the state directory.
    pub bytes_publishing: u64,
    /// Frames each sender run says it sent (its latest heartbeat), by session.
    pub sender_frames: HashMap<u64, u64>,
}

/// The counters at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub frames_received: u64,
    pub frames_valid: u64,
    pub sessions_seen: u64,
    pub partials_restored: u64,
    pub drops: DropCounters,
    pub first_frame: Option<Duration>,
    pub last_frame: Option<Duration>,
    pub link_up: bool,
    pub blocks_decoded: u64,
    pub blocks_recovered: u64,
    pub blocks_stalled: u64,
    pub partials_saved: u64,
    pub objects_delivered: u64,
    pub objects_already_delivered: u64,
    pub objects_failed: u64,
    /// Files that began to wait for their model's signature.
    pub files_held: u64,
    /// Models delivered, by the key that signed them.
    pub models_delivered: Vec<(String, u64)>,
    /// Of `objects_failed`: announced, and not one frame of them arrived.
    pub objects_lost_whole: u64,
    pub bytes_delivered: u64,
    pub sender_frames_sent: u64,
    /// When the last object was delivered, after the start of the run.
    pub last_delivery: Option<Duration>,
    /// Objects complete and not yet placed (verifying, at the gate, waiting for the store).
    pub objects_publishing: u64,
    /// Their bytes in the state directory.
    pub bytes_publishing: u64,
    /// Since when the object store has not answered (after the start of the run), if it is
    /// down now.
    pub store_down_since: Option<Duration>,
    /// Uploads tried again after the store failed them.
    pub store_retries: u64,
    /// Datagrams the kernel dropped (the socket's receive buffer full).
    pub kernel_drops: u64,
    /// Links of several bringing nothing while another brings frames.
    pub links_down: u64,
    /// Datagrams each link brought, with several links.
    pub link_datagrams: Vec<u64>,
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

fn set(a: &AtomicU64, v: u64) {
    a.store(v, Ordering::Relaxed);
}

impl Counters {
    /// Zeroed counters for a run starting now.
    pub fn new() -> Self {
        Counters {
            base: Instant::now(),
            frames_received: AtomicU64::new(0),
            frames_valid: AtomicU64::new(0),
            sessions_seen: AtomicU64::new(0),
            partials_restored: AtomicU64::new(0),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            first_frame_us: AtomicU64::new(0),
            last_frame_us: AtomicU64::new(0),
            link_up: AtomicU64::new(0),
            blocks_decoded: AtomicU64::new(0),
            blocks_recovered: AtomicU64::new(0),
            blocks_stalled: AtomicU64::new(0),
            partials_saved: AtomicU64::new(0),
            objects_delivered: AtomicU64::new(0),
            objects_already_delivered: AtomicU64::new(0),
            objects_failed: AtomicU64::new(0),
            files_held: AtomicU64::new(0),
            models_delivered: Mutex::new(Vec::new()),
            objects_lost_whole: AtomicU64::new(0),
            bytes_delivered: AtomicU64::new(0),
            sender_frames_sent: AtomicU64::new(0),
            last_delivery_us: AtomicU64::new(0),
            objects_publishing: AtomicU64::new(0),
            bytes_publishing: AtomicU64::new(0),
            store_down_since_us: AtomicU64::new(0),
            store_retries: AtomicU64::new(0),
            kernel_drops: AtomicU64::new(0),
            links_down: AtomicU64::new(0),
            link_datagrams: Mutex::new(Vec::new()),
            export_budget: Mutex::new(Default::default()),
        }
    }

    /// Microseconds after the start (at least 1, so 0 can mean "never").
    fn stamp(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_micros())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn since_start(us: u64) -> Option<Duration> {
        (us != 0).then(|| Duration::from_micros(us))
    }

    /// The link task's figures (it owns the assembler).
    pub(crate) fn record_link(
        &self,
        frames_received: u64,
        rx: &RxStats,
        drops: &DropCounters,
        partials_restored: u64,
    ) {
        set(&self.frames_received, frames_received);
        set(&self.frames_valid, rx.frames_ok);
        set(&self.sessions_seen, rx.sessions_seen);
        set(&self.partials_restored, partials_restored);
        for (slot, reason) in self.drops.iter().zip(DropReason::ALL) {
            set(slot, drops.get(reason));
        }
    }

    /// A valid frame arrived at `at`.
    pub(crate) fn record_frame_at(&self, at: Instant) {
        let us = self.stamp(at);
        if get(&self.first_frame_us) == 0 {
            set(&self.first_frame_us, us);
        }
        set(&self.last_frame_us, us);
    }

    /// The links' health (see `link_health`): the kernel's drops, the links down, what each
    /// link brought.
    pub(crate) fn record_links(
        &self,
        kernel_drops: u64,
        links_down: usize,
        datagrams: impl Iterator<Item = u64>,
    ) {
        set(&self.kernel_drops, kernel_drops);
        set(&self.links_down, links_down as u64);
        let mut slot = self
            .link_datagrams
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        slot.clear();
        slot.extend(datagrams);
    }

    /// Whether valid frames are arriving.
    pub(crate) fn record_link_up(&self, up: bool) {
        set(&self.link_up, u64::from(up));
    }

    /// The delivery core's figures.
    pub(crate) fn record_delivery(&self, stats: &DeliveryStats) {
        set(&self.blocks_decoded, stats.blocks_decoded);
        set(&self.blocks_recovered, stats.blocks_recovered);
        set(&self.blocks_stalled, stats.blocks_stalled);
        set(&self.partials_saved, stats.partials_saved);
        set(&self.objects_delivered, stats.objects_delivered);
        set(
            &self.objects_already_delivered,
            stats.objects_already_delivered,
        );
        set(&self.objects_failed, stats.objects_failed);
        set(&self.files_held, stats.files_held);
        if !stats.models_delivered.is_empty() {
            *self
                .models_delivered
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = stats
                .models_delivered
                .iter()
                .map(|(k, n)| (k.clone(), *n))
                .collect();
        }
        set(&self.objects_lost_whole, stats.objects_lost_whole);
        set(&self.bytes_delivered, stats.bytes_delivered);
        set(&self.sender_frames_sent, stats.sender_frames.values().sum());
        if let Some(at) = stats.last_delivery {
            set(&self.last_delivery_us, self.stamp(at));
        }
        set(&self.objects_publishing, stats.objects_publishing);
        set(&self.bytes_publishing, stats.bytes_publishing);
    }

    /// The sink's view of the object store: down since `at`, or answering (`None`).
    pub(crate) fn record_store_down(&self, at: Option<Instant>) {
        set(&self.store_down_since_us, at.map_or(0, |at| self.stamp(at)));
    }

    /// The sink tries an upload again after the store failed it.
    pub(crate) fn record_store_retry(&self) {
        self.store_retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Everything, now.
    pub fn snapshot(&self) -> Snapshot {
        let mut drops = DropCounters::default();
        for (slot, reason) in self.drops.iter().zip(DropReason::ALL) {
            drops.add(reason, get(slot));
        }
        Snapshot {
            frames_received: get(&self.frames_received),
            frames_valid: get(&self.frames_valid),
            sessions_seen: get(&self.sessions_seen),
            partials_restored: get(&self.partials_restored),
            drops,
            first_frame: Self::since_start(get(&self.first_frame_us)),
            last_frame: Self::since_start(get(&self.last_frame_us)),
            link_up: get(&self.link_up) != 0,
            blocks_decoded: get(&self.blocks_decoded),
            blocks_recovered: get(&self.blocks_recovered),
            blocks_stalled: get(&self.blocks_stalled),
            partials_saved: get(&self.partials_saved),
            objects_delivered: get(&self.objects_delivered),
            objects_already_delivered: get(&self.objects_already_delivered),
            objects_failed: get(&self.objects_failed),
            files_held: get(&self.files_held),
            models_delivered: self
                .models_delivered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            objects_lost_whole: get(&self.objects_lost_whole),
            bytes_delivered: get(&self.bytes_delivered),
            sender_frames_sent: get(&self.sender_frames_sent),
            last_delivery: Self::since_start(get(&self.last_delivery_us)),
            objects_publishing: get(&self.objects_publishing),
            bytes_publishing: get(&self.bytes_publishing),
            store_down_since: Self::since_start(get(&self.store_down_since_us)),
            store_retries: get(&self.store_retries),
            kernel_drops: get(&self.kernel_drops),
            links_down: get(&self.links_down),
            link_datagrams: self
                .link_datagrams
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

impl Counters {
    /// The export budgets and what the deliveries spent of them, now.
    pub fn set_export_budget(&self, limits: &[(BudgetKey, Limit)], usage: &Usage) {
        *self
            .export_budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (limits.to_vec(), usage.clone());
    }

    /// The figures `/metrics` serves, from the same snapshot the summary reads.
    pub fn metrics(&self) -> Vec<Metric> {
        let budgets = {
            let guard = self
                .export_budget
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            budget::metrics(&guard.0, &guard.1, budget::minute_now())
        };
        let mut metrics = self.run_metrics();
        metrics.extend(budgets);
        metrics
    }

    fn run_metrics(&self) -> Vec<Metric> {
        let s = self.snapshot();
        let since_last_frame = s.last_frame.map_or(f64::NAN, |last| {
            self.base.elapsed().saturating_sub(last).as_secs_f64()
        });
        vec![
            Metric::counter_by(
                "sluice_objects",
                "Objects (pack entries counted one by one) by outcome; lost_whole: announced by \
                 the sender, and not one frame arrived (the summary counts them in \
                 objects_failed too).",
                "outcome",
                [
                    ("delivered", s.objects_delivered),
                    ("already_delivered", s.objects_already_delivered),
                    (
                        "failed",
                        s.objects_failed.saturating_sub(s.objects_lost_whole),
                    ),
                    ("lost_whole", s.objects_lost_whole),
                ],
            ),
            Metric::counter(
                "sluice_model_files_held",
                "Files that began to wait for their model's signature ([signing] in --policy); \
                 each is counted again in sluice_objects when it is delivered or refused.",
                s.files_held,
            ),
            Metric::counter_by(
                "sluice_models_delivered",
                "Signed models delivered whole, by the key that signed them.",
                "signer",
                s.models_delivered.clone(),
            ),
            Metric::counter_by(
                "sluice_bytes",
                "File bytes delivered.",
                "kind",
                [("file", s.bytes_delivered)],
            ),
            Metric::counter_by(
                "sluice_frames",
                "Frames read from the link, and those that passed every check.",
                "result",
                [("received", s.frames_received), ("valid", s.frames_valid)],
            ),
            Metric::counter_by(
                "sluice_frames_dropped",
                "Frames dropped, by reason.",
                "reason",
                DropReason::ALL.map(|r| (r.name(), s.drops.get(r))),
            ),
            Metric::counter(
                "sluice_fec_recovered_blocks",
                "Blocks rebuilt with repair symbols.",
                s.blocks_recovered,
            ),
            Metric::counter(
                "sluice_blocks_stalled",
                "Blocks given up with too few symbols.",
                s.blocks_stalled,
            ),
            Metric::gauge(
                "sluice_link_up",
                "1 while valid frames arrive, else 0.",
                f64::from(u8::from(s.link_up)),
            ),
            Metric::gauge(
                "sluice_seconds_since_last_frame",
                "Seconds since the last valid frame (NaN before the first).",
                since_last_frame,
            ),
            Metric::gauge(
                "sluice_publishing_objects",
                "Objects complete and not yet placed: being verified, at the gate, or waiting \
                 for the object store.",
                s.objects_publishing as f64,
            ),
            Metric::gauge(
                "sluice_publishing_bytes",
                "Their bytes in the state directory (counted in --max-state).",
                s.bytes_publishing as f64,
            ),
            Metric::gauge(
                "sluice_store_up",
                "0 while the object store (--out s3://) fails uploads and they are retried, \
                 else 1.",
                f64::from(u8::from(s.store_down_since.is_none())),
            ),
            Metric::gauge(
                "sluice_store_down_seconds",
                "Seconds the object store has been failing uploads (0 while it answers).",
                s.store_down_since.map_or(0.0, |since| {
                    self.base.elapsed().saturating_sub(since).as_secs_f64()
                }),
            ),
            Metric::counter(
                "sluice_link_kernel_drops",
                "Datagrams the kernel dropped because a link socket's receive buffer was full \
                 (the sender paces above what this box takes: lower its --rate, or raise \
                 net.core.rmem_max).",
                s.kernel_drops,
            ),
            Metric::gauge(
                "sluice_links_down",
                "Links of several that bring nothing while another brings frames.",
                s.links_down as f64,
            ),
            Metric::counter_by(
                "sluice_link_datagrams",
                "Frames each link brought that passed every check, with several links.",
                "link",
                s.link_datagrams
                    .iter()
                    .enumerate()
                    .map(|(i, n)| ((i + 1).to_string(), *n)),
            ),
            Metric::counter(
                "sluice_store_retries",
                "Uploads tried again after the object store failed them.",
                s.store_retries,
            ),
        ]
    }
}

impl Default for Counters {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn models_delivered_are_served_by_the_key_that_signed_them() {
        let counters = Arc::new(Counters::new());
        let mut stats = DeliveryStats {
            files_held: 3,
            ..DeliveryStats::default()
        };
        stats
            .models_delivered
            .insert("signers/ml-team.pem".into(), 2);
        counters.record_delivery(&stats);
        let source: sluice_common::metrics::Source = {
            let counters = counters.clone();
            Arc::new(move || counters.metrics())
        };
        let text = sluice_common::metrics::render(&source);
        assert!(
            text.contains("sluice_models_delivered_total{signer=\"signers/ml-team.pem\"} 2"),
            "{text}"
        );
        assert!(text.contains("sluice_model_files_held_total 3"), "{text}");
    }
}
