//! The end-of-run summary `sluice-send` prints: a short block for people, or one JSON line.

use std::time::Duration;

use sluice_common::logging::LogFormat;
use sluice_common::units::Bytes;

use crate::counters::Snapshot;

/// What a run sent.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    pub objects_queued: u64,
    /// Objects of which every block of every pass left on the link.
    pub objects_sent: u64,
    pub objects_failed: u64,
    pub objects_refused: u64,
    /// Plaintext bytes of the objects, counted once (not per pass).
    pub bytes: u64,
    pub frames_sent: u64,
    /// Frame bytes.
    pub frame_bytes: u64,
    /// Frame bytes plus the link's per-frame overhead (IP/UDP headers, COBS).
    pub link_bytes: u64,
    pub symbols: u64,
    pub heartbeats: u64,
    pub blocks: u64,
    pub passes: u16,
    /// From start to the last symbol frame (the trailing heartbeats are not counted).
    pub elapsed: Duration,
}

impl Summary {
    /// The summary of a run, from its counters.
    pub(crate) fn new(c: &Snapshot, passes: u16, frame_overhead: u32, elapsed: Duration) -> Self {
        Summary {
            objects_queued: c.objects_queued,
            objects_sent: c.objects_sent,
            objects_failed: c.objects_failed,
            objects_refused: c.objects_refused,
            bytes: c.bytes,
            frames_sent: c.tx.frames,
            frame_bytes: c.tx.bytes,
            link_bytes: c.link_bytes(frame_overhead),
            symbols: c.tx.symbols,
            heartbeats: c.tx.heartbeats,
            blocks: c.tx.blocks,
            passes,
            elapsed,
        }
    }

    fn goodput(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// One JSON object with every counter.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "summary": {
                "program": "sluice-send",
                "objects_queued": self.objects_queued,
                "objects_sent": self.objects_sent,
                "objects_failed": self.objects_failed,
                "objects_refused": self.objects_refused,
                "bytes": self.bytes,
                "frames_sent": self.frames_sent,
                "frame_bytes": self.frame_bytes,
                "link_bytes": self.link_bytes,
                "symbols": self.symbols,
                "heartbeats": self.heartbeats,
                "blocks": self.blocks,
                "passes": self.passes,
                "elapsed_s": self.elapsed.as_secs_f64(),
                "goodput_mb_s": self.goodput(),
            }
        })
    }

    /// Prints the summary on stderr: a JSON line, or a short block for people.
    pub fn print(&self, format: LogFormat) {
        match format {
            LogFormat::Json => eprintln!("{}", self.to_json()),
            LogFormat::Human => eprintln!(
                "sluice-send summary: {} objects sent ({} failed, {} refused), {} in {:.2} s \
                 ({:.1} MB/s of file data)\n  frames: {} ({} symbols, {} heartbeats), {} on the \
                 link, {} blocks over {} pass(es)",
                self.objects_queued,
                self.objects_failed,
                self.objects_refused,
                Bytes(self.bytes),
                self.elapsed.as_secs_f64(),
                self.goodput(),
                self.frames_sent,
                self.symbols,
                self.heartbeats,
                Bytes(self.link_bytes),
                self.blocks,
                self.passes
            ),
        }
    }
}
