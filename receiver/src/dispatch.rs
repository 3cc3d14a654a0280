//! The thread that drives the delivery core: it feeds it every input (link events and worker
//! replies arrive on one channel), carries out its actions, and is the one place where
//! outcomes are emitted. Its only I/O is the `stat` of a done marker when an object it has not
//! seen starts, which the core asks through a closure.
//!
//! ```text
//!  Input ──▶ Delivery::handle_* ──▶ poll_action ──▶ Link      → link task
//!                                               ├─▶ Decode    → decoder pool
//!                                               ├─▶ Publish   → publisher
//!                                               ├─▶ Emit      → Outcomes (log, report, …)
//!                                               └─▶ Notice    → a log line (link up and
//!                                                               down: an audit record too)
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_common::audit::{AuditLog, Event};
use sluice_common::outcome::Outcomes;
use sluice_protocol::wire::BlockKind;

use crate::context::Context;
use crate::counters::Counters;
use crate::delivery::{Action, DecodeJob, Delivery, Input, LinkCommand, Notice, PublishJob};
use crate::object::ObjectKey;
use crate::outcome::Outcome;

/// How often the stall-warning window rolls when nothing arrives.
const TICK: Duration = Duration::from_millis(100);

/// Stall warnings per [`STALL_WARN_WINDOW`]; beyond that they go to debug and the count of the
/// rest is warned when the window ends (heavy loss, or a key holder sending blocks that never
/// complete, would otherwise flood the log).
const STALL_WARNINGS: u32 = 20;
const STALL_WARN_WINDOW: Duration = Duration::from_secs(10);

/// Where the delivery core's actions go.
pub(crate) struct Dispatch {
    pub core: Delivery,
    pub ctx: Arc<Context>,
    pub decode: flume::Sender<DecodeJob>,
    pub publish: flume::Sender<PublishJob>,
    pub link: flume::Sender<LinkCommand>,
    pub outcomes: Outcomes<Outcome>,
    pub counters: Arc<Counters>,
    pub audit: Arc<AuditLog>,
}

/// Starts the delivery thread; it ends when the link has closed and every job has answered.
pub(crate) fn spawn(
    dispatch: Dispatch,
    inputs: flume::Receiver<Input>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("delivery".into())
        .spawn(move || dispatch.run(&inputs))
}

impl Dispatch {
    fn run(mut self, inputs: &flume::Receiver<Input>) {
        let mut stalls = WarnLimit::new();
        // Jobs already due (objects an earlier run left complete).
        self.execute(&mut stalls);
        while !self.core.is_finished() {
            let input = match inputs.recv_timeout(TICK) {
                Ok(input) => input,
                Err(flume::RecvTimeoutError::Timeout) => {
                    stalls.roll();
                    continue;
                }
                Err(flume::RecvTimeoutError::Disconnected) => break,
            };
            let now = Instant::now();
            match input {
                Input::Link(event) => {
                    let ctx = &self.ctx;
                    self.core.handle_link(
                        event,
                        now,
                        |obj| ctx.finished_before(obj),
                        |obj| ctx.knows(obj),
                    );
                }
                Input::Reply(reply) => self.core.handle_reply(reply, now),
            }
            self.execute(&mut stalls);
        }
        let ctx = self.ctx.clone();
        self.core.finish(|obj| ctx.knows(obj));
        self.execute(&mut stalls);
        stalls.flush();
    }

    /// Carries out every action the core has.
    fn execute(&mut self, stalls: &mut WarnLimit) {
        while let Some(action) = self.core.poll_action() {
            match action {
                // A closed channel means that side is gone (the link task at the end of the
                // run); its work is moot.
                Action::Link(command) => {
                    let _ = self.link.send(command);
                }
                Action::Decode(job) => {
                    if self.decode.send(job).is_err() {
                        tracing::error!("decoder threads are gone; dropping a block");
                    }
                }
                Action::Publish(job) => {
                    if self.publish.send(job).is_err() {
                        tracing::error!("the publisher thread is gone");
                    }
                }
                Action::Emit(outcome) => self.outcomes.emit(outcome),
                Action::Notice(notice) => {
                    audit_notice(&self.audit, &notice);
                    log_notice(notice, stalls);
                }
            }
        }
        self.counters.record_delivery(self.core.stats());
    }
}

/// Link up and down are audit events (when frames stopped and started crossing).
fn audit_notice(audit: &AuditLog, notice: &Notice) {
    match notice {
        Notice::LinkUp => audit.record(Event::new("link_up")),
        Notice::SenderAuditHead(head) => audit.record(
            Event::new("sender_audit_head")
                .with("session", format!("{:016x}", head.session.0))
                // The record's own `seq` is the receiver's chain: these are the sender's.
                .with("head_seq", head.seq)
                .with("head_hash", hex::encode(head.hash)),
        ),
        Notice::LinkDown { after, .. } => {
            audit.record(Event::new("link_down").with("idle_secs", after.as_secs()));
        }
        _ => {}
    }
}

/// The log line of a notice.
fn log_notice(notice: Notice, stalls: &mut WarnLimit) {
    match notice {
        Notice::LinkUp => tracing::info!("link up: valid frames arriving"),
        Notice::LinkDown { after, missing } => {
            tracing::info!("link down: no valid frame for {} s", after.as_secs());
            if let Some(missing) = missing {
                let first: Vec<String> = missing
                    .first
                    .iter()
                    .map(|(s, o)| ObjectKey::new(*s, *o).to_string())
                    .collect();
                tracing::warn!(
                    count = missing.count,
                    first = %first.join(", "),
                    "{} object(s) lost whole: the sender announced them but none of their frames \
                     arrived (a later pass can still bring them)",
                    missing.count
                );
            }
        }
        Notice::BlockStalled { key, held, needed } => {
            let obj = ObjectKey::of(&key);
            if !stalls.allow() {
                tracing::debug!(object = %obj, held, needed, "block stalled");
                return;
            }
            match key.kind {
                BlockKind::Data => tracing::warn!(
                    object = %obj,
                    segment = key.index,
                    held,
                    needed,
                    "block stalled: object {obj} segment {} has {held} of {needed} symbols",
                    key.index
                ),
                BlockKind::Manifest => tracing::warn!(
                    object = %obj,
                    held,
                    needed,
                    "block stalled: object {obj} manifest has {held} of {needed} symbols"
                ),
            }
        }
        Notice::Heartbeat(beat) => tracing::debug!(
            session = format_args!("{:016x}", beat.session.0),
            seq = beat.seq,
            frames_sent = beat.frames_sent,
            rate = beat.rate,
            "heartbeat"
        ),
        Notice::RelayStatus(status) => tracing::info!(?status, "relay status"),
        Notice::SenderAuditHead(head) => tracing::debug!(
            session = format_args!("{:016x}", head.session.0),
            seq = head.seq,
            "sender audit head recorded"
        ),
    }
}

/// Counts warnings in a time window.
#[derive(Debug)]
struct WarnLimit {
    window_start: Instant,
    warned: u32,
    suppressed: u64,
}

impl WarnLimit {
    fn new() -> Self {
        WarnLimit {
            window_start: Instant::now(),
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
        self.window_start = Instant::now();
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
