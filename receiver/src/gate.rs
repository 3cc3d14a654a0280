//! The content-policy gate (`--policy`): every file, verified and staged, is checked before
//! it is placed in `--out`; one that fails goes to the quarantine instead, under its relative
//! path, with `NAME.reason` beside it saying which rule refused it: a directory (mode 0600
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
    let Err(refusal) = check(gate, ctx, e, &staged) else {
        return Ok(staged);
    };
    let quarantined = quarantine(gate, ctx, e, &staged, &refusal).map_err(|err| err.to_string());
    if quarantined.is_err() {
        staged.discard(ctx);
    }
    Err(Failure::Refused {
        reason: refusal.to_string(),
        quarantined,
    })
}

/// Refuses a staged file for a reason found beside the content checks (its model's
/// signature, `models`): into the quarantine like any refusal, or removed if even that fails.
pub(crate) fn refuse(ctx: &Context, e: &Entry, staged: StagedFile, reason: String) -> Failure {
    let quarantined = match &ctx.gate {
        Some(gate) => quarantine(gate, ctx, e, &staged, &reason).map_err(|err| err.to_string()),
        None => Err("no --policy quarantine".to_string()),
    };
    if quarantined.is_err() {
        staged.discard(ctx);
    }
    Failure::Refused {
        reason,
        quarantined,
    }
}

/// Every check of the policy on the staged file of entry `e`.
fn check(
    gate: &ContentPolicy,
    ctx: &Context,
    e: &Entry,
    staged: &StagedFile,
) -> Result<(), Refusal> {
    gate.policy.check_name_and_size(&e.path, e.size)?;
    let mut file = staged.dir(ctx).open_file(staged.name())?;
    gate.policy.inspect(&mut file, &e.path, e.size)?;
    if let Some(command) = gate.policy.scan_command() {
        // The scanner opens the very file this fd holds, whatever happens to names.
        let by_fd = format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd());
        policy::run_scanner(command, Path::new(&by_fd))?;
    }
    Ok(())
}

/// Puts a refused staged file in the quarantine, with the reason beside it.
fn quarantine(
    gate: &ContentPolicy,
    ctx: &Context,
    e: &Entry,
    staged: &StagedFile,
    reason: &dyn std::fmt::Display,
) -> io::Result<PathBuf> {
    let reason = format!(
        "refused: {reason}\npath: {}\nsize: {}\nsha256: {}\ntime: {}\n",
        e.path,
        e.size,
        hex::encode(e.sha256),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    );
    match &gate.quarantine {
        Quarantine::Dir { dir, path } => quarantine_in_dir(dir, path, ctx, e, staged, &reason),
        Quarantine::Store(uploader) => quarantine_in_store(uploader, ctx, e, staged, &reason),
    }
}

/// Uploads a refused staged file to `PREFIX/<e.path>` and its reason to
/// `PREFIX/<e.path>.reason` (one try: a store that is down costs the quarantined copy, never
/// the refusal), then drops the staged file.
fn quarantine_in_store(
    uploader: &Uploader,
    ctx: &Context,
    e: &Entry,
    staged: &StagedFile,
    reason: &str,
) -> io::Result<PathBuf> {
    let target = uploader.target();
    let key = |path: &str| target.key(path).map_err(io::Error::other);
    let (file_key, reason_key) = (key(&e.path)?, key(&format!("{}.reason", e.path))?);
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
        .and_then(|()| {
            uploader.put(
                &reason_key,
                reason.as_bytes().to_vec(),
                attributes(&refused),
            )
        })
        .map_err(|attempt| io::Error::other(attempt.to_string()))?;
    let _ = staged.dir(ctx).remove_file(staged.name());
    Ok(PathBuf::from(format!("s3://{}/{file_key}", target.bucket)))
}

/// Moves a refused staged file to `quarantine/<e.path>` (mode 0600) and writes the reason
/// beside it (`<name>.reason`).
fn quarantine_in_dir(
    quarantine: &Dir,
    quarantine_path: &Path,
    ctx: &Context,
    e: &Entry,
    staged: &StagedFile,
    reason: &str,
) -> io::Result<PathBuf> {
    let components: Vec<&str> = e.path.split('/').collect();
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
        let temporary = format!(".{name}.sluice-new");
        let _ = dir.remove_file(&temporary);
        let mut copy = dir.create_file(&temporary, 0o600)?;
        let mut from = staged.dir(ctx).open_file(staged.name())?;
        io::copy(&mut from, &mut copy)?;
        copy.sync_all()?;
        dir.rename(&temporary, &dir, name)?;
        let _ = staged.dir(ctx).remove_file(staged.name());
    }
    let reason_name = format!("{name}.reason");
    let temporary = format!(".{reason_name}.sluice-new");
    let _ = dir.remove_file(&temporary);
    let mut file = dir.create_file(&temporary, 0o600)?;
    file.write_all(reason.as_bytes())?;
    file.sync_all()?;
    dir.rename(&temporary, &dir, &reason_name)?;
    Ok(quarantine_path.join(&e.path))
}
