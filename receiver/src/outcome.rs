//! What happened to each object, emitted by the delivery core at one place
//! ([`Action::Emit`](crate::delivery::Action)) to every subscriber: the log line here, the
//! report's list of failures, and later the audit log and metrics. The log phrases are stable:
//! operators and tests grep for them (README.md lists them).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sluice_common::approval::{self, Policy};
use sluice_common::audit::{AuditLog, Event};
use sluice_common::keys::KeyId;
use sluice_common::outcome::Subscriber;
use sluice_common::paths;
use sluice_protocol::manifest::{Entry, Manifest};

use crate::failure::Failure;
use crate::object::ObjectKey;
use crate::summary::FailedObject;

/// The fate of one object (or, for objects lost whole, of several).
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Entry `entry` of the object's manifest (the only one, or one of a pack's) is
    /// published under `--out`, durable.
    Delivered {
        obj: ObjectKey,
        manifest: Arc<Manifest>,
        entry: usize,
        /// The key that signed the manifest.
        signer: KeyId,
        /// From its object's first block in this run to its commit.
        duration: Duration,
    },
    /// Already in `--out` (an earlier pass or run delivered it): not written again. The
    /// manifest and entry are known when the content was recognised, not when a done marker
    /// answered for the whole object.
    AlreadyDelivered {
        obj: ObjectKey,
        manifest: Option<(Arc<Manifest>, usize)>,
    },
    /// Waiting in the state directory for its model's signature (`[signing]`); a later
    /// `Released` or `Failed` names it again.
    Held { obj: ObjectKey, path: String },
    /// A file that waited for its model's signature, delivered with its model.
    Released {
        obj: ObjectKey,
        entry: Entry,
        /// The key that signed its manifest, and the approvers counted for it.
        signer: KeyId,
        approvers: Vec<KeyId>,
        /// The trusted key that signed the model (its name in `[signing] keys`).
        model_signer: String,
    },
    /// Refused, failed, or left incomplete.
    Failed {
        obj: ObjectKey,
        path: Option<String>,
        failure: Failure,
    },
    /// Announced by a sender, never seen: `count` objects, the first of them listed.
    LostWhole { first: Vec<ObjectKey>, count: u64 },
}

/// Every outcome as a record of the audit log (paths as JSON strings: no escaping needed).
pub(crate) struct AuditTrail {
    log: Arc<AuditLog>,
    /// `--approval-policy`: a delivered entry's record names the approvers it counted.
    policy: Option<Arc<Policy>>,
    /// The approvers of the last object recorded (a pack's entries share them).
    last: Option<(ObjectKey, Vec<String>)>,
}

impl AuditTrail {
    pub fn new(log: Arc<AuditLog>, policy: Option<Arc<Policy>>) -> Self {
        AuditTrail {
            log,
            policy,
            last: None,
        }
    }

    /// The approvers of `manifest`'s approval under the policy (the delivery core let the
    /// object through only if they make a quorum), once per object.
    fn approvers(&mut self, obj: ObjectKey, manifest: &Manifest) -> Option<Vec<String>> {
        let (policy, carried) = (self.policy.as_ref()?, manifest.approval.as_ref()?);
        match &self.last {
            Some((last, ids)) if *last == obj => Some(ids.clone()),
            _ => {
                let ids: Vec<String> = approval::approvers_of(policy, carried)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                self.last = Some((obj, ids.clone()));
                Some(ids)
            }
        }
    }
}

impl Subscriber<Outcome> for AuditTrail {
    fn on_outcome(&mut self, outcome: &Outcome) {
        let entry = |event: &'static str, obj: &ObjectKey, e: &Entry| {
            Event::new(event)
                .with("object", obj.to_string())
                .with("path", e.path.clone())
                .with("size", e.size)
                .with("sha256", sha256_of(e))
        };
        let event = match outcome {
            Outcome::Delivered {
                obj,
                manifest,
                entry: index,
                signer,
                ..
            } => match manifest.entries.get(*index) {
                Some(e) => entry("delivered", obj, e)
                    .with("signer", signer.to_string())
                    .with("approvers", self.approvers(*obj, manifest)),
                None => return,
            },
            Outcome::AlreadyDelivered {
                obj,
                manifest: Some((manifest, index)),
            } => match manifest.entries.get(*index) {
                Some(e) => entry("already_delivered", obj, e),
                None => return,
            },
            Outcome::AlreadyDelivered {
                obj,
                manifest: None,
            } => Event::new("already_delivered").with("object", obj.to_string()),
            Outcome::Held { obj, path } => Event::new("held")
                .with("object", obj.to_string())
                .with("path", path.clone())
                .with("reason", "waiting for its model's signature"),
            Outcome::Released {
                obj,
                entry: e,
                signer,
                approvers,
                model_signer,
            } => entry("delivered", obj, e)
                .with("signer", signer.to_string())
                .with(
                    "approvers",
                    self.policy.is_some().then(|| {
                        approvers
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                    }),
                )
                .with("model_signer", model_signer.clone()),
            Outcome::Failed { obj, path, failure } => {
                let event = Event::new("failed")
                    .with("object", obj.to_string())
                    .with("path", path.clone())
                    .with("reason", failure.to_string());
                match report_of(failure) {
                    Some(report) => event.with("report", report),
                    None => event,
                }
            }
            Outcome::LostWhole { first, count } => {
                Event::new("lost_whole").with("count", *count).with(
                    "first",
                    first.iter().map(ToString::to_string).collect::<Vec<_>>(),
                )
            }
        };
        self.log.record(event);
    }
}

/// Where a refused file's report was kept (beside its quarantined copy), if it was.
fn report_of(failure: &Failure) -> Option<String> {
    match failure {
        Failure::Refused {
            quarantined: Ok(at),
            report: true,
            ..
        } => Some(format!("{}{}", at.display(), crate::gate::REPORT)),
        _ => None,
    }
}

/// Failure lines per [`FAILURE_WINDOW`]; beyond that they are counted, and the count is
/// logged when the window ends (a key holder sending objects that never finish, or a burst
/// of evictions, would otherwise flood the log). Every failure is still in the report.
const FAILURE_LINES: u32 = 50;
const FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// The receiver's log line for every outcome.
#[derive(Debug)]
pub(crate) struct LogLine {
    window_start: std::time::Instant,
    failures_logged: u32,
    failures_held: u64,
}

impl Default for LogLine {
    fn default() -> Self {
        LogLine {
            window_start: std::time::Instant::now(),
            failures_logged: 0,
            failures_held: 0,
        }
    }
}

impl LogLine {
    /// Whether one more failure line may go out now.
    fn failure_allowed(&mut self) -> bool {
        if self.window_start.elapsed() >= FAILURE_WINDOW {
            self.flush();
            self.window_start = std::time::Instant::now();
            self.failures_logged = 0;
        }
        if self.failures_logged < FAILURE_LINES {
            self.failures_logged += 1;
            true
        } else {
            self.failures_held += 1;
            false
        }
    }

    fn flush(&mut self) {
        if self.failures_held > 0 {
            tracing::warn!(
                count = self.failures_held,
                "{} more objects failed (not listed here; the summary has them)",
                self.failures_held
            );
            self.failures_held = 0;
        }
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        self.flush();
    }
}

impl Subscriber<Outcome> for LogLine {
    fn on_outcome(&mut self, outcome: &Outcome) {
        if matches!(outcome, Outcome::Failed { .. }) && !self.failure_allowed() {
            return;
        }
        match outcome {
            Outcome::Delivered {
                obj,
                manifest,
                entry,
                duration,
                ..
            } => {
                let Some(e) = manifest.entries.get(*entry) else {
                    return;
                };
                tracing::info!(
                    object = %obj,
                    path = %paths::escaped(&e.path),
                    kind = ?e.kind,
                    sha256 = %sha256_of(e),
                    size = e.size,
                    packed = manifest.entries.len() > 1,
                    duration_ms = duration.as_millis() as u64,
                    "delivered {}",
                    paths::escaped(&e.path)
                )
            }
            Outcome::AlreadyDelivered {
                obj,
                manifest: Some((manifest, entry)),
            } => {
                let Some(e) = manifest.entries.get(*entry) else {
                    return;
                };
                tracing::info!(
                    object = %obj,
                    path = %paths::escaped(&e.path),
                    sha256 = %sha256_of(e),
                    size = e.size,
                    "already delivered {}",
                    paths::escaped(&e.path)
                )
            }
            Outcome::AlreadyDelivered {
                obj,
                manifest: None,
            } => {
                tracing::info!(object = %obj, "already delivered {obj} (by an earlier pass or run)")
            }
            Outcome::Held { obj, path } => tracing::info!(
                object = %obj,
                path = %paths::escaped(path),
                "held {}: waiting for its model's signature",
                paths::escaped(path)
            ),
            Outcome::Released {
                obj,
                entry: e,
                model_signer,
                ..
            } => tracing::info!(
                object = %obj,
                path = %paths::escaped(&e.path),
                kind = ?e.kind,
                sha256 = %sha256_of(e),
                size = e.size,
                model_signer = %model_signer,
                "delivered {} (model signed by {model_signer})",
                paths::escaped(&e.path)
            ),
            Outcome::Failed {
                obj,
                path: Some(p),
                failure,
            } => {
                tracing::warn!(object = %obj, path = %paths::escaped(p), "object failed: {failure}")
            }
            Outcome::Failed {
                obj,
                path: None,
                failure,
            } => tracing::warn!(object = %obj, "object failed: {failure}"),
            Outcome::LostWhole { first, count } => {
                for obj in first {
                    tracing::warn!(object = %obj, "object failed: {}", Failure::LostWhole);
                }
                let more = count.saturating_sub(first.len() as u64);
                if more > 0 {
                    tracing::warn!("{more} more object(s) lost whole");
                }
            }
        }
    }
}

/// An entry's SHA-256 for the log (empty for a directory).
fn sha256_of(entry: &Entry) -> String {
    match entry.kind {
        sluice_protocol::manifest::EntryKind::File => hex::encode(entry.sha256),
        sluice_protocol::manifest::EntryKind::Directory => String::new(),
    }
}

/// Failures kept in full for the report (all are counted and logged).
const MAX_REPORTED_FAILURES: usize = 1000;

/// Collects the failures the final report lists.
#[derive(Debug, Default, Clone)]
pub(crate) struct FailureList {
    list: Arc<Mutex<Vec<FailedObject>>>,
}

impl FailureList {
    /// The failures collected so far.
    pub fn take(&self) -> Vec<FailedObject> {
        std::mem::take(&mut *self.list.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn add(&self, obj: &ObjectKey, path: Option<String>, failure: &Failure) {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        if list.len() < MAX_REPORTED_FAILURES {
            list.push(FailedObject {
                object: obj.to_string(),
                path,
                reason: failure.to_string(),
            });
        }
    }
}

impl Subscriber<Outcome> for FailureList {
    fn on_outcome(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Failed { obj, path, failure } => self.add(obj, path.clone(), failure),
            Outcome::LostWhole { first, .. } => {
                for obj in first {
                    self.add(obj, None, &Failure::LostWhole);
                }
            }
            Outcome::Delivered { .. }
            | Outcome::AlreadyDelivered { .. }
            | Outcome::Held { .. }
            | Outcome::Released { .. } => {}
        }
    }
}
