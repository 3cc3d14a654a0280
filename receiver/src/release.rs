//! `sluice-recv release PATH --reason TEXT`: an operator lets a file the content gate refused
//! (a false positive) out of the quarantine directory into `--out`, on purpose and on the
//! record.
//!
//! It takes the receiver's own options (`--config recv.toml`), so the quarantine, `--out`,
//! `--state` and the audit log are the daemon's. It runs while the daemon is stopped (it
//! takes the state directory's lock: the audit log has one writer). The quarantined file is
//! read through the quarantine's directory fd without following links and must still hash
//! to the SHA-256 its `.reason` recorded; it is copied into a new file beside its place in
//! `--out` and renamed there without replacing anything; then `released` is recorded in the
//! audit log (path, size, SHA-256, why it was refused, the operator's reason and name), and
//! only then is it removed from the quarantine. Under export budgets (`--approval-policy`) a
//! release is checked and charged as a delivery is: over budget, nothing is released.

use std::io::Read;
use std::sync::Arc;

use clap::Parser;
use sluice_common::approval::Policy;
use sluice_common::audit::{AuditLog, Event};
use sluice_common::beneath::Dir;
use sluice_common::config::{self, Parsed, UsageError};
use sluice_common::exit::ExitStatus;
use sluice_common::hashed_copy::copy_hashing;
use sluice_common::paths;

use crate::cli::{self, Options};
use crate::counters::Counters;
use crate::export_budget::ExportBudget;
use crate::state::StateDir;

/// `sluice-recv release`.
#[derive(Debug, Parser)]
#[command(
    name = "sluice-recv release",
    about = "Release a file the content policy refused from the quarantine into --out, \
             audited. Run it with the receiver's options (--config recv.toml) while the \
             receiver is stopped."
)]
struct ReleaseArgs {
    #[command(flatten)]
    recv: cli::Args,
    /// Why it may go out after all (recorded in the audit log).
    #[arg(long)]
    reason: String,
    /// Who releases it (recorded). Default: $SUDO_USER, else $USER.
    #[arg(long)]
    by: Option<String>,
    /// The refused file, as the sender named it (its path under --out and the quarantine).
    #[arg(value_name = "PATH")]
    path: String,
}

struct Release {
    options: Options,
    reason: String,
    by: String,
    path: String,
}

fn resolve(args: ReleaseArgs) -> Result<Release, UsageError> {
    if args.reason.trim().is_empty() {
        return Err(UsageError("--reason: say why it may go out".into()));
    }
    paths::validate_object_path(&args.path)
        .map_err(|e| UsageError(format!("{}: {e}", paths::escaped(&args.path))))?;
    let by = args
        .by
        .or_else(|| std::env::var("SUDO_USER").ok())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    Ok(Release {
        options: cli::resolve(args.recv)?,
        reason: args.reason,
        by,
        path: args.path,
    })
}

/// `sluice-recv release`'s command line, for the man page and completions (`crate::manual`).
pub(crate) fn command() -> clap::Command {
    <ReleaseArgs as clap::CommandFactory>::command()
}

/// Runs `sluice-recv release` (`args`: `release` first).
pub(crate) fn main(args: Vec<std::ffi::OsString>) -> ExitStatus {
    let release = match config::parse(args, resolve) {
        Parsed::Run(release) => release,
        Parsed::Exit(status) => return status,
    };
    match release.run() {
        Ok(done) => {
            println!("{done}");
            ExitStatus::Success
        }
        Err((status, why)) => {
            eprintln!("error: {why}");
            status
        }
    }
}

/// What `.reason` says of a quarantined file.
struct Refusal {
    refused: String,
    path: String,
    size: u64,
    sha256: String,
}

/// The `.reason` the gate wrote: each field exactly once (its reason text escaped, so no
/// file name can add a line of its own).
fn parse_reason(text: &str) -> Option<Refusal> {
    let field = |key: &str| {
        let mut found = text
            .lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix(": "));
        let value = found.next()?;
        found.next().is_none().then(|| value.to_string())
    };
    Some(Refusal {
        refused: field("refused")?,
        path: field("path")?,
        size: field("size")?.parse().ok()?,
        sha256: field("sha256")?,
    })
}

type Failed = (ExitStatus, String);

fn usage(why: String) -> Failed {
    (ExitStatus::Usage, why)
}

fn failure(why: String) -> Failed {
    (ExitStatus::Failure, why)
}

impl Release {
    fn run(self) -> Result<String, Failed> {
        let options = &self.options;
        let policy_path = (options.policy.as_ref()).ok_or_else(|| {
            usage("release needs the receiver's --policy (its quarantine)".into())
        })?;
        let policy = sluice_inspect::policy::Policy::load(policy_path)
            .map_err(|e| usage(format!("--policy: {e}")))?;
        let quarantine_path = policy.quarantine.clone();
        if quarantine_path
            .to_str()
            .is_some_and(|q| q.starts_with("s3://"))
            || options.out.to_str().is_some_and(|o| o.starts_with("s3://"))
        {
            return Err(usage(
                "release works on a quarantine directory and a directory --out".into(),
            ));
        }
        let out = Dir::open(&options.out)
            .map_err(|e| failure(format!("cannot open --out {}: {e}", options.out.display())))?;
        // The daemon's own state directory, locked (one writer for the audit log): its
        // private staging directory, on --out's file system, holds the copy until it is
        // renamed into place, so nobody who can write under --out can touch it meanwhile.
        let state_path = options.state_dir();
        let state = StateDir::open(&state_path, &out, &options.out).map_err(|e| match e {
            crate::state::StateError::InUse(_) => failure(format!(
                "the receiver is running (--state {} is locked): stop it, release, start it",
                state_path.display()
            )),
            other => failure(other.to_string()),
        })?;
        // The budgets before anything is copied: a bad policy stops the release at once.
        let mut budget = self.export_budget(&state)?;
        let audit_path = options.audit_log_path();
        let audit = AuditLog::open(&audit_path).map_err(|e| {
            failure(format!(
                "cannot open the audit log {}: {e}",
                audit_path.display()
            ))
        })?;
        let quarantine = Dir::open(&quarantine_path).map_err(|e| {
            failure(format!(
                "cannot open the quarantine {}: {e}",
                quarantine_path.display()
            ))
        })?;
        let stored = crate::gate::stored_path(&self.path);
        let components: Vec<&str> = stored.split('/').collect();
        let Some((name, parents)) = components.split_last() else {
            return Err(usage("an empty path".into()));
        };
        let (held_dir, _) = quarantine
            .walk(parents, None, &quarantine_path)
            .map_err(|e| failure(format!("not in the quarantine: {e}")))?;
        let shown = paths::escaped(&self.path);
        let reason_name = format!("{name}{}", crate::gate::REASON);
        let refusal = read_small(&held_dir, &reason_name)
            .ok()
            .and_then(|text| parse_reason(&text))
            .filter(|r| r.path == self.path)
            .ok_or_else(|| {
                failure(format!(
                    "{shown}: no {reason_name} for this path beside it in the quarantine: not \
                     a file the gate refused"
                ))
            })?;
        let (mut file, entry) = held_dir
            .open_regular(name)
            .map_err(|e| failure(format!("{shown}: cannot open it in the quarantine: {e}")))?;
        let (out_parents, out_name) = match self.path.rsplit_once('/') {
            Some((dir, name)) => (dir.split('/').collect::<Vec<_>>(), name),
            None => (Vec::new(), self.path.as_str()),
        };
        let mode_mask = options.mode_mask & !crate::context::process_umask();
        let (dest, _) = out
            .walk(&out_parents, Some(0o755 & mode_mask), &options.out)
            .map_err(|e| failure(format!("{shown}: cannot reach its place in --out: {e}")))?;
        // Nor beside a name that looks the same (another Unicode normalization of it).
        let taken = std::iter::once(out_name.to_string())
            .chain(paths::normalization_twins(out_name))
            .any(|n| dest.stat(&n).ok().flatten().is_some());
        if taken {
            return Err(failure(format!(
                "{shown} (or a name that looks the same) is already in --out: nothing released"
            )));
        }
        // Copied into a new file first, hashed as it is read: what lands is what was checked.
        let staging = state.staging();
        let temporary = state.unique_name("release");
        // Private to this user: only a copy a crashed release left can be there.
        let _ = staging.remove_file(&temporary);
        let mut copy = staging
            .create_file(&temporary, 0o600)
            .map_err(|e| failure(format!("cannot write in the state directory: {e}")))?;
        // One byte past the recorded size is enough to tell it changed: never more.
        let copied = copy_hashing(&mut file, &mut copy, refusal.size, None)
            .and_then(|(size, sha)| {
                sluice_common::beneath::set_mode(&copy, 0o644 & mode_mask)?;
                copy.sync_all()?;
                Ok((size, sha))
            })
            .map_err(|e| failure(format!("cannot copy {shown}: {e}")));
        let discard = || {
            let _ = staging.remove_file(&temporary);
        };
        let (size, sha256) = copied.inspect_err(|_| discard())?;
        if size != refusal.size || size != entry.size || sha256 != refusal.sha256 {
            discard();
            return Err(failure(format!(
                "{shown} changed in the quarantine since it was refused (recorded {} bytes, \
                 SHA-256 {}; now {size} bytes, {sha256}): nothing released",
                refusal.size, refusal.sha256
            )));
        }
        // What the receiver delivers counts against the export budgets, a release too:
        // checked, then charged durably before it is placed (a placement that fails after
        // that has cost budget, never the other way round).
        if let Some(budget) = &mut budget {
            // The quarantined file (open for reading): the same bytes as the copy.
            let types = crate::export_budget::types_by_content(&file).map_err(|e| {
                discard();
                failure(format!("cannot read {shown} to tell its type: {e}"))
            })?;
            let demand = budget
                .check_file(&self.path, size, &types)
                .map_err(|over| {
                    discard();
                    failure(format!("{shown}: {over}: nothing released"))
                })?;
            budget.charge(demand);
            if let Err(e) = state.records().commit_spent(&[], &budget.take_unspent()) {
                discard();
                return Err(failure(format!(
                    "{shown}: cannot record its export budget charge ({e}): nothing released"
                )));
            }
        }
        if let Err(e) = staging.rename_new(&temporary, &dest, out_name) {
            discard();
            return Err(failure(format!("cannot place {shown} in --out: {e}")));
        }
        // In place from here on: whatever follows is said, never undone.
        if let Err(e) = dest.sync() {
            eprintln!("warning: {shown} is in --out, but its directory did not sync: {e}");
        }
        let before = audit.durable_head().seq;
        audit.record(
            Event::new("released")
                .with("path", self.path.clone())
                .with("size", size)
                .with("sha256", sha256.clone())
                .with("refused", refusal.refused.clone())
                .with("reason", self.reason.clone())
                .with("by", self.by.clone()),
        );
        if !wait_recorded(&audit, before) {
            return Err(failure(format!(
                "{shown} is in --out, but its audit record could not be written to {}: the \
                 quarantined copy is kept",
                audit_path.display()
            )));
        }
        for suffix in ["", crate::gate::REASON, crate::gate::REPORT] {
            let _ = held_dir.remove_file(&format!("{name}{suffix}"));
        }
        let _ = held_dir.sync();
        Ok(format!(
            "released {shown} ({size} bytes, SHA-256 {sha256}) into {}; recorded in {}",
            options.out.display(),
            audit_path.display()
        ))
    }
}

impl Release {
    /// The receiver's export budgets (`--approval-policy`), with what its records say was
    /// spent today; `None` without budgets.
    fn export_budget(&self, state: &StateDir) -> Result<Option<ExportBudget>, Failed> {
        let Some(path) = &self.options.approval_policy else {
            return Ok(None);
        };
        let policy = Policy::load(path).map_err(|e| usage(format!("--approval-policy: {e}")))?;
        Ok(ExportBudget::open(
            Some(&Arc::new(policy)),
            state.records(),
            Arc::new(Counters::default()),
        ))
    }
}

/// A small text file of `dir` (a `.reason`), read without following links.
fn read_small(dir: &Dir, name: &str) -> std::io::Result<String> {
    let (file, _) = dir.open_regular(name)?;
    let mut text = String::new();
    file.take(64 << 10).read_to_string(&mut text)?;
    Ok(text)
}

/// Whether the record after `before` is on disk (the log's writer fsyncs it; a write that
/// failed settles too, without moving the durable head), within a few seconds.
fn wait_recorded(audit: &AuditLog, before: u64) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !audit.settled() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    audit.durable_head().seq > before
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_file_with_a_field_twice_or_missing_is_not_trusted() {
        let good = "refused: denied name *.exe\npath: drop/tool.exe\nsize: 5\nsha256: ab\n\
                    time: 2026-12-07T00:00:00Z\n";
        let refusal = parse_reason(good).unwrap();
        assert_eq!(
            (refusal.path.as_str(), refusal.size, refusal.sha256.as_str()),
            ("drop/tool.exe", 5, "ab")
        );
        // A line slipped in ahead of the real one (a name with a newline in a reason).
        let injected = format!("size: 9\nsha256: ff\n{good}");
        assert!(parse_reason(&injected).is_none());
        assert!(parse_reason("refused: x\npath: p\nsize: 1\n").is_none());
    }
}
