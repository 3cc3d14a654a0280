//! The content-policy gate (`--policy`): every file, verified and staged, is checked before
//! it is placed in `--out`; one that fails goes to the quarantine instead, under its relative
//! path, with `NAME.reason` beside it saying which rule refused it and `NAME.report.json`
//! saying what the inspectors found (`sluice_inspect::report`): a directory (mode 0600
//! files), or a prefix in an object store (the reason also in the object's `sluice-refused`
//! metadata).
//!
//! Checks run cheapest first (`sluice_inspect::policy`): name rules and size, then the type by
//! content and its inspector, then the external scanner, each on the staged file through the
//! state directory (private to the receiver: nobody else can swap it in between). The policy
//! and quarantine directory themselves, opened at start, are `content_policy`'s.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::{Attribute, Attributes};
use sluice_common::beneath::{self, Dir};
use sluice_inspect::policy;
use sluice_inspect::report::Report;
use sluice_inspect::Refusal;
use sluice_protocol::manifest::Entry;

use crate::content_policy::{ContentPolicy, Quarantine};
use crate::context::{self, Context};
use crate::failure::Failure;
use crate::object::ObjectKey;
use crate::publish::{Signed, StagedFile};
use crate::s3_upload::Uploader;

/// Threads that inspect files at once, whatever the worker count: one slow file (a large
/// archive, a scanner near its timeout) then holds back only itself.
const INSPECTORS: usize = 2;

/// One staged file to inspect: which entry of which object it is.
#[derive(Debug)]
pub(crate) struct Inspection {
    pub obj: ObjectKey,
    pub index: usize,
    pub entry: Entry,
    pub signed: Signed,
    pub staged: StagedFile,
}

/// The verdict on an [`Inspection`]: the file back to be placed, or the failure (the file
/// is then in quarantine, or removed).
#[derive(Debug)]
pub(crate) struct Inspected {
    pub obj: ObjectKey,
    pub index: usize,
    pub entry: Entry,
    pub signed: Signed,
    pub verdict: Result<StagedFile, Failure>,
}

/// The gate off the publisher's thread: [`INSPECTORS`] threads take staged files and hand
/// back verdicts, so the publisher goes on placing other objects while one is inspected.
/// At most [`INSPECTORS`] more wait in the queue: beyond, the publisher waits (memory and
/// open files stay bounded).
#[derive(Debug)]
pub(crate) struct Inspectors {
    jobs: Option<flume::Sender<Inspection>>,
    pub done: flume::Receiver<Inspected>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Inspectors {
    /// The pool, if there is a gate.
    pub fn spawn(ctx: &Arc<Context>) -> io::Result<Option<Inspectors>> {
        if ctx.gate.is_none() {
            return Ok(None);
        }
        let (jobs, queue) = flume::bounded::<Inspection>(INSPECTORS);
        let (verdicts, done) = flume::unbounded();
        let mut threads = Vec::with_capacity(INSPECTORS);
        for n in 0..INSPECTORS {
            let (ctx, queue, verdicts) = (ctx.clone(), queue.clone(), verdicts.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("inspect-{n}"))
                    .spawn(move || {
                        context::lower_priority(context::WORKER_NICE);
                        for job in queue.iter() {
                            let verdict = pass(&ctx, &job.entry, job.staged);
                            let inspected = Inspected {
                                obj: job.obj,
                                index: job.index,
                                entry: job.entry,
                                signed: job.signed,
                                verdict,
                            };
                            if verdicts.send(inspected).is_err() {
                                return;
                            }
                        }
                    })?,
            );
        }
        Ok(Some(Inspectors {
            jobs: Some(jobs),
            done,
            threads,
        }))
    }

    /// Queues a file (waiting while the queue is full).
    pub fn submit(&self, inspection: Inspection, ctx: &Context) -> Result<(), Failure> {
        let Some(jobs) = &self.jobs else {
            inspection.staged.discard(ctx);
            return Err(Failure::Io("the inspectors stopped".into()));
        };
        if let Err(flume::SendError(inspection)) = jobs.send(inspection) {
            inspection.staged.discard(ctx);
            return Err(Failure::Io("the inspectors stopped".into()));
        }
        Ok(())
    }
}

impl Drop for Inspectors {
    fn drop(&mut self) {
        self.jobs.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The gate on one staged file: the file back to be placed, or the failure once it is in
/// quarantine (or, if even that failed, removed).
pub(crate) fn pass(ctx: &Context, e: &Entry, staged: StagedFile) -> Result<StagedFile, Failure> {
    let Some(gate) = &ctx.gate else {
        return Ok(staged);
    };
    let Err((reason, report)) = check(gate, ctx, e, &staged) else {
        return Ok(staged);
    };
    let quarantined = quarantine(gate, ctx, e, &staged, &reason, report.as_deref());
    if quarantined.is_err() {
        staged.discard(ctx);
    }
    Err(Failure::Refused {
        report: quarantined.as_ref().is_ok_and(|q| q.report),
        reason,
        quarantined: quarantined.map(|q| q.at).map_err(|err| err.to_string()),
    })
}

/// Refuses a staged file for a reason found beside the content checks (its model's
/// signature, `models`): into the quarantine like any refusal, or removed if even that fails.
pub(crate) fn refuse(ctx: &Context, e: &Entry, staged: StagedFile, reason: String) -> Failure {
    let quarantined = match &ctx.gate {
        Some(gate) => quarantine(gate, ctx, e, &staged, &reason, None)
            .map(|q| q.at)
            .map_err(|err| err.to_string()),
        None => Err("no --policy quarantine".to_string()),
    };
    if quarantined.is_err() {
        staged.discard(ctx);
    }
    Failure::Refused {
        reason,
        quarantined,
        report: false,
    }
}

/// Every check of the policy on the staged file of entry `e`; a refusal comes with the
/// inspectors' report (what they found), unless the staged file could not even be opened.
fn check(
    gate: &ContentPolicy,
    ctx: &Context,
    e: &Entry,
    staged: &StagedFile,
) -> Result<(), (String, Option<Box<Report>>)> {
    let mut file = staged
        .dir(ctx)
        .open_file(staged.name())
        .map_err(|err| (Refusal::from(err).to_string(), None))?;
    let mut report = Box::new(gate.policy.report(&mut file, &e.path, e.size));
    if let Some(reason) = &report.reason {
        return Err((reason.clone(), Some(report)));
    }
    if let Some(command) = gate.policy.scan_command() {
        // The scanner opens the very file this fd holds, whatever happens to names.
        let by_fd = format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd());
        if let Err(refusal) = policy::run_scanner(command, Path::new(&by_fd)) {
            let reason = refusal.to_string();
            report.verdict = "refused";
            report.reason = Some(reason.clone());
            return Err((reason, Some(report)));
        }
    }
    Ok(())
}

/// Where a refused file went, and whether its report is beside it.
struct Quarantined {
    at: PathBuf,
    report: bool,
}

/// Puts a refused staged file in the quarantine, with the reason beside it (`NAME.reason`)
/// and the inspectors' report if there is one (`NAME.report.json`, what `sluice-inspect
/// --json` prints). Once the file is in, what goes beside it is written as well as it can
/// be: a failure is logged, never undoes the quarantine.
fn quarantine(
    gate: &ContentPolicy,
    ctx: &Context,
    e: &Entry,
    staged: &StagedFile,
    reason: &str,
    report: Option<&Report>,
) -> io::Result<Quarantined> {
    // One line a field: the reason (which may quote a name from the file) and the path are
    // escaped, so neither can add a line of its own (`sluice-recv release` reads them).
    let reason = format!(
        "refused: {}\npath: {}\nsize: {}\nsha256: {}\ntime: {}\n",
        sluice_common::paths::escaped(reason),
        e.path,
        e.size,
        hex::encode(e.sha256),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    );
    let mut beside = vec![(REASON, reason.into_bytes())];
    if let Some(report) = report {
        match serde_json::to_vec_pretty(report) {
            Ok(json) => beside.push((REPORT, json)),
            Err(err) => tracing::warn!(path = %e.path, "report not kept: {err}"),
        }
    }
    let stored = stored_path(&e.path);
    let (at, written) = match &gate.quarantine {
        Quarantine::Dir { dir, path } => {
            quarantine_in_dir(dir, path, ctx, &stored, staged, &beside)?
        }
        Quarantine::Store(uploader) => {
            quarantine_in_store(uploader, ctx, e, &stored, staged, &beside)?
        }
    };
    for ((suffix, _), result) in beside.iter().zip(&written) {
        if let Err(err) = result {
            tracing::warn!(path = %e.path, "quarantined, but its {suffix} file was not written: {err}");
        }
    }
    Ok(Quarantined {
        at,
        report: written.get(1).is_some_and(Result::is_ok),
    })
}

/// What a quarantined file's reason and report are named by: `NAME` + this.
pub(crate) const REASON: &str = ".reason";
pub(crate) const REPORT: &str = ".report.json";
const REFUSED: &str = ".refused";

/// The path a refused file is kept under: its own, unless its name ends like a reason or a
/// report — then `.refused` is added, so a sender's file never takes the place of what the
/// gate wrote beside another.
pub(crate) fn stored_path(path: &str) -> String {
    // `.refused` too: `a.reason` is kept as `a.reason.refused`, which another file may not be.
    if path.ends_with(REASON) || path.ends_with(REPORT) || path.ends_with(REFUSED) {
        format!("{path}{REFUSED}")
    } else {
        path.to_string()
    }
}

/// A short name to write `name` under before it is renamed into place (the name itself may
/// be as long as a name can be).
fn temporary_for(name: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(name.as_bytes());
    format!(".sluice-{}.tmp", hex::encode(&digest[..8]))
}

/// Uploads a refused staged file to `PREFIX/<stored>` and what goes beside it (its reason
/// first) to `PREFIX/<stored>.reason`, … (one try: a store that is down costs the
/// quarantined copy, never the refusal), then drops the staged file. Where it went, and
/// how each upload beside it went.
fn quarantine_in_store(
    uploader: &Uploader,
    ctx: &Context,
    e: &Entry,
    stored: &str,
    staged: &StagedFile,
    beside: &[(&str, Vec<u8>)],
) -> io::Result<(PathBuf, Vec<io::Result<()>>)> {
    let target = uploader.target();
    let key = |path: &str| target.key(path).map_err(io::Error::other);
    let file_key = key(stored)?;
    let reason = beside
        .first()
        .map(|(_, text)| String::from_utf8_lossy(text).into_owned())
        .unwrap_or_default();
    let attributes = |refused: &str| {
        Attributes::from_iter([
            (
                Attribute::Metadata("sluice-refused".into()),
                refused.to_string(),
            ),
            (
                Attribute::Metadata("sluice-sha256".into()),
                hex::encode(e.sha256),
            ),
        ])
    };
    let first_line = reason.lines().next().unwrap_or_default();
    // Metadata travels in HTTP headers: printable ASCII only.
    let refused: String = first_line
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(1024)
        .collect();
    let file = staged.dir(ctx).open_file(staged.name())?;
    uploader
        .upload(
            ctx.state.records(),
            &file,
            e.size,
            &file_key,
            attributes(&refused),
        )
        .map_err(|attempt| io::Error::other(attempt.to_string()))?;
    let written = beside
        .iter()
        .map(|(suffix, bytes)| {
            uploader
                .put(
                    &key(&format!("{stored}{suffix}"))?,
                    bytes.clone(),
                    attributes(&refused),
                )
                .map_err(|attempt| io::Error::other(attempt.to_string()))
        })
        .collect();
    let _ = staged.dir(ctx).remove_file(staged.name());
    Ok((
        PathBuf::from(format!("s3://{}/{file_key}", target.bucket)),
        written,
    ))
}

/// Moves a refused staged file to `quarantine/<stored>` (mode 0600) and writes what goes
/// beside it (`<name>.reason`, `<name>.report.json`). Where it went, and how each file
/// beside it went.
fn quarantine_in_dir(
    quarantine: &Dir,
    quarantine_path: &Path,
    ctx: &Context,
    stored: &str,
    staged: &StagedFile,
    beside: &[(&str, Vec<u8>)],
) -> io::Result<(PathBuf, Vec<io::Result<()>>)> {
    let components: Vec<&str> = stored.split('/').collect();
    let Some((name, parents)) = components.split_last() else {
        return Err(io::Error::other("empty path"));
    };
    let (dir, _) = match parents {
        [] => (quarantine.try_clone()?, 0),
        parents => quarantine
            .walk(parents, Some(0o700), quarantine_path)
            .map_err(io::Error::other)?,
    };
    beneath::set_mode(staged.file(), 0o600)?;
    if let Err(err) = staged.dir(ctx).rename(staged.name(), &dir, name) {
        // Another file system: copy through the fd, then drop the staged file.
        if err.raw_os_error() != Some(rustix::io::Errno::XDEV.raw_os_error()) {
            return Err(err);
        }
        let temporary = temporary_for(name);
        let _ = dir.remove_file(&temporary);
        let mut copy = dir.create_file(&temporary, 0o600)?;
        let mut from = staged.dir(ctx).open_file(staged.name())?;
        io::copy(&mut from, &mut copy)?;
        copy.sync_all()?;
        dir.rename(&temporary, &dir, name)?;
        let _ = staged.dir(ctx).remove_file(staged.name());
    }
    let write = |beside_name: &str, bytes: &[u8]| -> io::Result<()> {
        let temporary = temporary_for(beside_name);
        let _ = dir.remove_file(&temporary);
        let mut file = dir.create_file(&temporary, 0o600)?;
        let written = file
            .write_all(bytes)
            .and_then(|()| file.sync_all())
            .and_then(|()| dir.rename(&temporary, &dir, beside_name));
        if written.is_err() {
            let _ = dir.remove_file(&temporary);
        }
        written
    };
    let written = beside
        .iter()
        .map(|(suffix, bytes)| write(&format!("{name}{suffix}"), bytes))
        .collect();
    Ok((quarantine_path.join(stored), written))
}
