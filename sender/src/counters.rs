//! The sender's counters: one struct, shared by reference. The send loop writes what went out
//! on the link; the outcome counter writes what happened to objects. The summary reads it, and
//! so can anything that wants live figures, without a lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sluice_common::budget::{self, BudgetKey, Limit, Usage};
use sluice_common::metrics::Metric;
use sluice_common::outcome::Subscriber;
use sluice_protocol::tx::TxStats;

use crate::outcome::Outcome;

/// Live counters of one sender run.
#[derive(Debug, Default)]
pub struct Counters {
    objects_queued: AtomicU64,
    objects_sent: AtomicU64,
    objects_failed: AtomicU64,
    objects_refused: AtomicU64,
    objects_skipped: AtomicU64,
    bytes: AtomicU64,
    frames: AtomicU64,
    frame_bytes: AtomicU64,
    symbols: AtomicU64,
    heartbeats: AtomicU64,
    blocks: AtomicU64,
    /// Gauges of the watch daemon: items in the outbox not yet sent, and their bytes.
    outbox_items: AtomicU64,
    outbox_bytes: AtomicU64,
    /// Export requests in the outbox waiting for approvals (a gauge), and items the daemon's
    /// checks refused and moved aside (a counter).
    outbox_pending: AtomicU64,
    outbox_refused: AtomicU64,
    /// Items the daemon sent whole.
    outbox_sent: AtomicU64,
    /// The export budgets of `approvals.toml` and what the ledger says is spent.
    export_budget: Mutex<(Vec<(BudgetKey, Limit)>, Usage)>,
}

/// The counters at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub objects_queued: u64,
    pub objects_sent: u64,
    pub objects_failed: u64,
    pub objects_refused: u64,
    pub objects_skipped: u64,
    /// Plaintext bytes of the objects queued, counted once (not per pass).
    pub bytes: u64,
    pub tx: TxStats,
}

impl Snapshot {
    /// Bytes on the link: frame bytes plus `frame_overhead` per frame.
    pub fn link_bytes(&self, frame_overhead: u32) -> u64 {
        self.tx.bytes + self.tx.frames * u64::from(frame_overhead)
    }
}

fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Counters {
    /// Counts one outcome.
    pub(crate) fn record_outcome(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Skipped { .. } => add(&self.objects_skipped, 1),
            Outcome::Refused { .. } => add(&self.objects_refused, 1),
            Outcome::Queued { size, .. } => {
                add(&self.objects_queued, 1);
                add(&self.bytes, *size);
            }
            Outcome::Sent { .. } => add(&self.objects_sent, 1),
            Outcome::Failed { .. } => add(&self.objects_failed, 1),
        }
    }

    /// What the scheduler says went out.
    pub(crate) fn record_tx(&self, stats: &TxStats) {
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&self.frames, stats.frames);
        set(&self.frame_bytes, stats.bytes);
        set(&self.symbols, stats.symbols);
        set(&self.heartbeats, stats.heartbeats);
        set(&self.blocks, stats.blocks);
    }

    /// Export requests waiting for approvals, now.
    pub(crate) fn set_pending_approval(&self, items: u64) {
        self.outbox_pending.store(items, Ordering::Relaxed);
    }

    /// The export budgets to show in `/metrics`, and what is spent of them.
    pub(crate) fn set_budget_limits(&self, limits: Vec<(BudgetKey, Limit)>, usage: Usage) {
        *self
            .export_budget
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = (limits, usage);
    }

    /// What is spent of the export budgets, now.
    pub(crate) fn set_export_budget(&self, usage: &Usage) {
        self.export_budget
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .1 = usage.clone();
    }

    /// One more item refused by the daemon's checks.
    pub(crate) fn count_refused_item(&self) {
        self.outbox_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// One more item sent whole by the daemon.
    pub(crate) fn count_sent_item(&self) {
        self.outbox_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// The watch daemon's outbox, now: items sent whole, items refused, requests waiting for
    /// approval, items not yet sent.
    pub(crate) fn outbox(&self) -> [u64; 4] {
        [
            get(&self.outbox_sent),
            get(&self.outbox_refused),
            get(&self.outbox_pending),
            get(&self.outbox_items),
        ]
    }

    /// The watch daemon's outbox, now.
    pub(crate) fn set_outbox(&self, items: u64, bytes: u64) {
        self.outbox_items.store(items, Ordering::Relaxed);
        self.outbox_bytes.store(bytes, Ordering::Relaxed);
    }

    /// The figures `/metrics` serves, from the same snapshot the summary reads;
    /// `frame_overhead` is the link's bytes per frame beyond it (IP/UDP headers, COBS).
    pub fn metrics(&self, frame_overhead: u32) -> Vec<Metric> {
        let s = self.snapshot();
        let budgets = {
            let guard = self
                .export_budget
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            budget::metrics(&guard.0, &guard.1, budget::minute_now())
        };
        let mut metrics = vec![
            Metric::counter_by(
                "sluice_objects",
                "Objects (files, directories, packs) by outcome.",
                "outcome",
                [
                    ("queued", s.objects_queued),
                    ("sent", s.objects_sent),
                    ("failed", s.objects_failed),
                    ("refused", s.objects_refused),
                    ("skipped", s.objects_skipped),
                ],
            ),
            Metric::counter_by(
                "sluice_bytes",
                "File bytes queued (once, not per pass), and bytes sent on the link (frames \
                 with the link's per-frame overhead, as the summary's link_bytes).",
                "kind",
                [("file", s.bytes), ("link", s.link_bytes(frame_overhead))],
            ),
            Metric::counter("sluice_frames", "Frames sent on the link.", s.tx.frames),
            Metric::counter(
                "sluice_heartbeats",
                "Heartbeat frames sent.",
                s.tx.heartbeats,
            ),
            Metric::counter("sluice_blocks", "FEC blocks scheduled.", s.tx.blocks),
            Metric::gauge(
                "sluice_outbox_items",
                "Items in the watched outbox not yet sent (sluice-send watch; 0 otherwise).",
                get(&self.outbox_items) as f64,
            ),
            Metric::gauge(
                "sluice_outbox_bytes",
                "File bytes of the items in the watched outbox not yet sent.",
                get(&self.outbox_bytes) as f64,
            ),
            Metric::gauge(
                "sluice_outbox_pending_approval",
                "Export requests in the watched outbox waiting for approvals.",
                get(&self.outbox_pending) as f64,
            ),
            Metric::counter(
                "sluice_outbox_refused",
                "Outbox items refused by the approval or content checks and moved aside.",
                get(&self.outbox_refused),
            ),
        ];
        metrics.extend(budgets);
        metrics
    }

    /// Everything, now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            objects_queued: get(&self.objects_queued),
            objects_sent: get(&self.objects_sent),
            objects_failed: get(&self.objects_failed),
            objects_refused: get(&self.objects_refused),
            objects_skipped: get(&self.objects_skipped),
            bytes: get(&self.bytes),
            tx: TxStats {
                frames: get(&self.frames),
                bytes: get(&self.frame_bytes),
                symbols: get(&self.symbols),
                heartbeats: get(&self.heartbeats),
                blocks: get(&self.blocks),
                ..TxStats::default()
            },
        }
    }
}

/// Counts outcomes into the sender's counters.
#[derive(Debug)]
pub(crate) struct Count(pub Arc<Counters>);

impl Subscriber<Outcome> for Count {
    fn on_outcome(&mut self, outcome: &Outcome) {
        self.0.record_outcome(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::Summary;
    use sluice_common::metrics::Values;
    use std::time::Duration;

    /// `/metrics` and the JSON summary give the same link bytes (overhead included).
    #[test]
    fn metrics_link_bytes_are_the_summarys() {
        let counters = Counters::default();
        counters.record_tx(&TxStats {
            frames: 10,
            bytes: 14_000,
            symbols: 9,
            heartbeats: 1,
            blocks: 1,
            ..TxStats::default()
        });
        let summary = Summary::new(&counters.snapshot(), 1, 28, Duration::ZERO);
        let bytes = counters
            .metrics(28)
            .into_iter()
            .find(|m| m.name == "sluice_bytes")
            .expect("sluice_bytes");
        let Values::CountBy(_, values) = bytes.values else {
            panic!("sluice_bytes has a kind label");
        };
        assert!(
            values.contains(&("link".into(), summary.link_bytes)),
            "{values:?}"
        );
        assert_eq!(summary.link_bytes, 14_280);
    }
}
