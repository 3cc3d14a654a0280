//! The end-of-run report: what `sluice-recv` prints when it stops (a human block on stderr, or
//! one JSON line with `--log-format json`) and the exit status it implies.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;
use sluice_common::exit::ExitStatus;
use sluice_common::units::Bytes;
use sluice_protocol::counters::{DropCounters, DropReason};

use crate::counters::Snapshot;

/// One failed object as the report lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedObject {
    /// Session and object (`session/object`).
    pub object: String,
    /// Its path, if the manifest was read.
    pub path: Option<String>,
    /// Why (the documented phrase).
    pub reason: String,
}

/// Why the receive loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// `--exit-after-idle` elapsed without frames.
    Idle,
    /// SIGINT, SIGTERM or the embedding caller's shutdown future.
    Shutdown,
    /// The link failed (the message says how).
    LinkError(String),
}

/// Everything the final summary reports.
#[derive(Debug, Clone)]
pub struct Report {
    /// Why the run ended.
    pub stop: Stop,
    /// Whether `--exit-after-idle` was given (it decides exit status 3).
    pub exit_after_idle: bool,
    /// Objects published in this run.
    pub objects_delivered: u64,
    /// Objects recognised as already in `--out` (not written again).
    pub objects_already_delivered: u64,
    /// Objects refused, failed or left incomplete.
    pub objects_failed: u64,
    /// Of `objects_failed`: announced by the sender, and not one frame of them arrived.
    pub objects_lost_whole: u64,
    /// The failures, with their reasons (the first 1000).
    pub failures: Vec<FailedObject>,
    /// Plaintext bytes published.
    pub bytes_delivered: u64,
    /// Frames (datagrams or deframed serial frames) received, valid or not.
    pub frames_received: u64,
    /// Frames that passed every check.
    pub frames_valid: u64,
    /// Frames the senders said they sent, from their latest heartbeats (a lower bound: frames
    /// after a sender's last heartbeat are not in it).
    pub sender_frames_sent: u64,
    /// Drops by reason.
    pub drops: DropCounters,
    /// Datagrams the kernel dropped because the receive buffer was full (link overrun).
    pub kernel_drops: u64,
    /// Blocks decoded.
    pub blocks_decoded: u64,
    /// Blocks that needed repair symbols to decode.
    pub blocks_recovered: u64,
    /// Blocks given up while the link was running.
    pub blocks_stalled: u64,
    /// Partial blocks saved to the state directory.
    pub partials_saved: u64,
    /// Partial blocks restored from the state directory.
    pub partials_restored: u64,
    /// Sender runs seen.
    pub sessions_seen: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// From the first frame to the last delivery (what goodput is measured over).
    pub active: Option<Duration>,
}

impl Report {
    /// The report of a run that ended for `stop`, from its counters and failures.
    pub(crate) fn new(
        stop: Stop,
        exit_after_idle: bool,
        c: Snapshot,
        failures: Vec<FailedObject>,
        elapsed: Duration,
    ) -> Self {
        let active = match (c.first_frame, c.last_delivery) {
            (Some(first), Some(last)) => Some(last.saturating_sub(first)),
            _ => None,
        };
        Report {
            stop,
            exit_after_idle,
            objects_delivered: c.objects_delivered,
            objects_already_delivered: c.objects_already_delivered,
            objects_failed: c.objects_failed,
            objects_lost_whole: c.objects_lost_whole,
            failures,
            bytes_delivered: c.bytes_delivered,
            frames_received: c.frames_received,
            frames_valid: c.frames_valid,
            sender_frames_sent: c.sender_frames_sent,
            drops: c.drops,
            kernel_drops: c.kernel_drops,
            blocks_decoded: c.blocks_decoded,
            blocks_recovered: c.blocks_recovered,
            blocks_stalled: c.blocks_stalled,
            partials_saved: c.partials_saved,
            partials_restored: c.partials_restored,
            sessions_seen: c.sessions_seen,
            elapsed,
            active,
        }
    }

    /// Success; failure (1) on a link error; objects failed (3) when some object failed or
    /// stayed incomplete (only with `--exit-after-idle`: a daemon stopped by a signal exits 0).
    pub fn exit_status(&self) -> ExitStatus {
        if matches!(self.stop, Stop::LinkError(_)) {
            ExitStatus::Failure
        } else if self.exit_after_idle && self.objects_failed > 0 {
            ExitStatus::ObjectsFailed
        } else if self.exit_after_idle && self.nothing_valid() {
            ExitStatus::NothingValid
        } else {
            ExitStatus::Success
        }
    }

    /// No valid frame arrived and nothing was delivered (a run that only finished objects
    /// kept in the state directory received nothing, and is still a good run).
    fn nothing_valid(&self) -> bool {
        self.frames_valid == 0 && self.objects_delivered == 0 && self.objects_already_delivered == 0
    }

    /// The numeric exit status (see [`exit_status`](Self::exit_status)).
    pub fn exit_code(&self) -> u8 {
        self.exit_status().code()
    }

    /// Delivered plaintext megabytes (10⁶) per second of active time.
    pub fn goodput_mb_s(&self) -> f64 {
        match self.active {
            Some(t) if t.as_secs_f64() > 0.0 => self.bytes_delivered as f64 / 1e6 / t.as_secs_f64(),
            _ => 0.0,
        }
    }

    /// The human summary block.
    pub fn human(&self) -> String {
        let mut s = String::from("sluice-recv summary\n");
        let _ = writeln!(
            s,
            "  objects:  {} delivered, {} already delivered, {} failed",
            self.objects_delivered, self.objects_already_delivered, self.objects_failed
        );
        let _ = writeln!(s, "  bytes:    {} delivered", Bytes(self.bytes_delivered));
        let _ = writeln!(
            s,
            "  frames:   {} received, {} valid (senders' heartbeats report {} sent)",
            self.frames_received, self.frames_valid, self.sender_frames_sent
        );
        let drops: Vec<String> = self
            .drops
            .nonzero()
            .map(|(r, n)| format!("{} {n}", r.name()))
            .collect();
        let drops = if drops.is_empty() {
            "none".to_string()
        } else {
            drops.join(", ")
        };
        let _ = writeln!(s, "  dropped:  {drops}");
        if self.kernel_drops > 0 {
            let _ = writeln!(
                s,
                "  overrun:  {} datagrams dropped by the kernel before this receiver read them \
                 (its receive buffer was full){}",
                self.kernel_drops,
                if self.objects_failed > 0 {
                    ": lower the sender's --rate, or raise net.core.rmem_max"
                } else {
                    ""
                }
            );
        }
        let _ = writeln!(
            s,
            "  blocks:   {} decoded, {} recovered by FEC, {} stalled",
            self.blocks_decoded, self.blocks_recovered, self.blocks_stalled
        );
        let _ = writeln!(
            s,
            "  goodput:  {:.2} MB/s (elapsed {:.2} s)",
            self.goodput_mb_s(),
            self.elapsed.as_secs_f64()
        );
        if self.nothing_valid() {
            let why = if self.frames_received == 0 {
                "nothing arrived on the link".to_string()
            } else if self.drops.get(DropReason::BadMac) > 0 {
                format!(
                    "{} frames arrived, none passed the link's checks ({} failed link \
                     authentication: is --link-key the sender's?)",
                    self.frames_received,
                    self.drops.get(DropReason::BadMac)
                )
            } else {
                format!(
                    "{} frames arrived, none passed the link's checks",
                    self.frames_received
                )
            };
            let _ = writeln!(s, "  no valid frame: {why}");
        }
        for f in &self.failures {
            let name = f.path.as_deref().unwrap_or(&f.object);
            let _ = writeln!(
                s,
                "  failed:   {}: {}",
                sluice_common::paths::escaped(name),
                f.reason
            );
        }
        if let Stop::LinkError(e) = &self.stop {
            let _ = writeln!(s, "  stopped:  link error: {e}");
        }
        s
    }

    /// The JSON summary: `{"message": "summary", "summary": {...}}`, drop counters by
    /// [`DropReason`] name (all of them, zeros included).
    pub fn json(&self) -> serde_json::Value {
        let dropped: serde_json::Map<String, serde_json::Value> = DropReason::ALL
            .iter()
            .map(|r| (r.name().to_string(), json!(self.drops.get(*r))))
            .collect();
        let failures: Vec<serde_json::Value> = self
            .failures
            .iter()
            // Escaped as in the log lines: a sender's name never reaches a terminal raw.
            .map(|f| {
                let path = f.path.as_deref().map(sluice_common::paths::escaped);
                json!({"object": f.object, "path": path, "reason": f.reason})
            })
            .collect();
        json!({
            "message": "summary",
            "summary": {
                "stop": match &self.stop {
                    Stop::Idle => "idle".to_string(),
                    Stop::Shutdown => "shutdown".to_string(),
                    Stop::LinkError(e) => format!("link error: {e}"),
                },
                "objects_delivered": self.objects_delivered,
                "objects_already_delivered": self.objects_already_delivered,
                "objects_failed": self.objects_failed,
                "objects_lost_whole": self.objects_lost_whole,
                "bytes_delivered": self.bytes_delivered,
                "frames_received": self.frames_received,
                "frames_valid": self.frames_valid,
                "sender_frames_sent": self.sender_frames_sent,
                "dropped": dropped,
                "kernel_drops": self.kernel_drops,
                "blocks_decoded": self.blocks_decoded,
                "blocks_recovered": self.blocks_recovered,
                "blocks_stalled": self.blocks_stalled,
                "partials_saved": self.partials_saved,
                "partials_restored": self.partials_restored,
                "sessions_seen": self.sessions_seen,
                "goodput_mb_s": (self.goodput_mb_s() * 100.0).round() / 100.0,
                "elapsed_s": (self.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
                "failures": failures,
                "exit_code": self.exit_code(),
            }
        })
    }
}
