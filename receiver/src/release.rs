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
//! only then is it removed from the quarantine.

use std::io::{Read, Write};

use clap::Parser;
use sha2::{Digest, Sha256};
use sluice_common::audit::{AuditLog, Event};
use sluice_common::beneath::Dir;
use sluice_common::config::{self, Parsed, UsageError};
use sluice_common::exit::ExitStatus;
use sluice_common::paths;

use crate::cli::{self, Options};

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
    size: u64,
    sha256: String,
}

fn parse_reason(text: &str) -> Option<Refusal> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
            .map(str::to_string)
    };
    Some(Refusal {
        refused: field("refused")?,
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
        // One writer for the audit log: the daemon must be stopped.
        let state_path = options.state_dir();
        let state = Dir::open(&state_path)
            .map_err(|e| failure(format!("cannot open --state {}: {e}", state_path.display())))?;
        let lock = state
            .open_rw("lock", 0o600)
            .map_err(|e| failure(format!("cannot open {}/lock: {e}", state_path.display())))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |_| {
                failure(format!(
                    "the receiver is running (--state {} is locked): stop it, release, start it",
                    state_path.display()
                ))
            },
        )?;
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
            .ok_or_else(|| {
                failure(format!(
                    "{shown}: no readable {reason_name} beside it in the quarantine: not a file \
                     the gate refused"
                ))
            })?;
        let (mut file, entry) = held_dir
            .open_regular(name)
            .map_err(|e| failure(format!("{shown}: cannot open it in the quarantine: {e}")))?;
        let out = Dir::open(&options.out)
            .map_err(|e| failure(format!("cannot open --out {}: {e}", options.out.display())))?;
        let (out_parents, out_name) = match self.path.rsplit_once('/') {
            Some((dir, name)) => (dir.split('/').collect::<Vec<_>>(), name),
            None => (Vec::new(), self.path.as_str()),
        };
        let (dest, _) = out
            .walk(&out_parents, Some(0o755 & options.mode_mask), &options.out)
            .map_err(|e| failure(format!("{shown}: cannot reach its place in --out: {e}")))?;
        if dest.stat(out_name).ok().flatten().is_some() {
            return Err(failure(format!(
                "{shown} is already in --out: nothing released"
            )));
        }
        // Copied into a new file first, hashed as it is read: what lands is what was checked.
        let temporary = format!(".sluice-release-{}", std::process::id());
        let _ = dest.remove_file(&temporary);
        let mut copy = dest
            .create_file(&temporary, 0o600)
            .map_err(|e| failure(format!("cannot write in --out: {e}")))?;
        let copied = copy_hashing(&mut file, &mut copy)
            .and_then(|(size, sha)| {
                sluice_common::beneath::set_mode(&copy, 0o644 & options.mode_mask)?;
                copy.sync_all()?;
                Ok((size, sha))
            })
            .map_err(|e| failure(format!("cannot copy {shown}: {e}")));
        let (size, sha256) = match copied {
            Ok(copied) => copied,
            Err(e) => {
                let _ = dest.remove_file(&temporary);
                return Err(e);
            }
        };
        if size != refusal.size || size != entry.size || sha256 != refusal.sha256 {
            let _ = dest.remove_file(&temporary);
            return Err(failure(format!(
                "{shown} changed in the quarantine since it was refused (recorded {} bytes, \
                 SHA-256 {}; now {size} bytes, {sha256}): nothing released",
                refusal.size, refusal.sha256
            )));
        }
        if let Err(e) = dest
            .rename_new(&temporary, &dest, out_name)
            .and_then(|()| dest.sync())
        {
            let _ = dest.remove_file(&temporary);
            return Err(failure(format!("cannot place {shown} in --out: {e}")));
        }
        let audit_path = options.audit_log_path();
        let audit = AuditLog::open(&audit_path).map_err(|e| {
            failure(format!(
                "cannot open --audit-log {}: {e}",
                audit_path.display()
            ))
        })?;
        audit.record(
            Event::new("released")
                .with("path", self.path.clone())
                .with("size", size)
                .with("sha256", sha256.clone())
                .with("refused", refusal.refused.clone())
                .with("reason", self.reason.clone())
                .with("by", self.by.clone()),
        );
        if !wait_settled(&audit) {
            return Err(failure(format!(
                "{shown} is in --out, but its audit record is not on disk yet: the quarantined \
                 copy is kept; check {}",
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

/// A small text file of `dir` (a `.reason`), read without following links.
fn read_small(dir: &Dir, name: &str) -> std::io::Result<String> {
    let (file, _) = dir.open_regular(name)?;
    let mut text = String::new();
    file.take(64 << 10).read_to_string(&mut text)?;
    Ok(text)
}

fn copy_hashing(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Whether the audit record got on disk (its writer thread fsyncs it) within a few seconds.
fn wait_settled(audit: &AuditLog) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !audit.settled() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    true
}
