//! Publishing: turns a complete, verified object into files and directories under `--out`,
//! atomically, through directory fds only.
//!
//! ```text
//!  segmented file: content file (staging, 0600; each segment decrypted to its offset by the
//!                  decoders) ─► SHA-256 in order (ahead of time while waiting) ─► size and
//!                  hash against the manifest ─► fchmod, futimens, fsync
//!  pack entry:     inline content ─► SHA-256 ─► new staging file, fchmod, futimens (no fsync:
//!                  one syncfs covers the pack's files)
//!  then, per entry: walk --out one component at a time (openat, O_NOFOLLOW; mkdirat for what
//!  is missing) ─► refuse a symlink, a directory or a Unicode twin at the name ─►
//!  renameat(staging, parent fd, name); the publisher fsyncs the parents for many entries
//! ```
//!
//! `--out` is opened once; nothing below it is ever resolved by path, so a local user who can
//! write somewhere under `--out` cannot redirect a write, a rename or a chmod through a
//! symlink or a swapped directory: the walk refuses links, and metadata is only ever changed
//! through the fd of what was opened. Permission bits are the sender's masked by
//! `--mode-mask` (default 0755: never setuid, setgid, sticky, group- or other-writable) and by
//! the receiver's umask; a directory that existed before keeps its mode unless this receiver
//! delivered it. Content is read through one buffer, so memory does not depend on file size.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::num::NonZeroU64;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use sluice_common::approval::ContentQuorums;
use sluice_common::beneath::{self, Dir, Kind, WalkError};
use sluice_common::keys::KeyId;
use sluice_common::paths::{self, PathError};
use sluice_protocol::manifest::{Entry, EntryKind};

use crate::context::Context;
use crate::failure::Failure;
use crate::object::ObjectKey;
use crate::records::Delivery;
use crate::state::StateDir;

/// Read and write buffer sizes while publishing.
pub(crate) const IO_BUFFER: usize = 256 * 1024;
/// Mode of directories created on the way to an object (before the umask).
const PARENT_MODE: u32 = 0o755;

/// Mode and mtime of a delivered directory, applied again after its contents change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirMeta {
    mode: u32,
    mtime_secs: i64,
    mtime_nanos: u32,
}

/// Directories this receiver made and delivered, by object path (`None`: looked up, not one).
pub type DirCache = HashMap<String, Option<DirMeta>>;

fn refused(path: &str, error: impl std::fmt::Display) -> Failure {
    Failure::PathRefused {
        path: path.to_string(),
        error: error.to_string(),
    }
}

/// Checks a manifest path: valid, and not inside the state directory.
pub(crate) fn check_path(ctx: &Context, path: &str) -> Result<(), Failure> {
    paths::validate_object_path(path).map_err(|e| refused(path, e))?;
    if let Some(reserved) = &ctx.reserved {
        let head = path.get(..reserved.len());
        let inside = head.is_some_and(|h| h.eq_ignore_ascii_case(reserved))
            && path[reserved.len()..]
                .chars()
                .next()
                .is_none_or(|c| c == '/');
        if inside {
            return Err(refused(
                path,
                format!("path is inside the state directory {reserved}"),
            ));
        }
    }
    Ok(())
}

/// Whether this receiver made the directory `path` (by its records).
fn made_by_us(ctx: &Context, path: &str) -> bool {
    ctx.state.records().made_dir(path).unwrap_or(false)
}

/// Records durably that this receiver is about to create the directory `path`, so that after
/// a crash before its delivery is committed it is still known as ours.
fn making_dir(ctx: &Context, path: &str) -> io::Result<()> {
    ctx.state
        .records()
        .making_dir(path)
        .map_err(io::Error::other)
}

fn walk_failure(path: &str, error: WalkError) -> Failure {
    match error {
        WalkError::Io { path: at, source } => {
            Failure::Io(format!("cannot prepare {}: {source}", at.display()))
        }
        other => refused(path, other),
    }
}

fn io_failure(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> Failure {
    move |e| Failure::Io(format!("{what}: {e}"))
}

/// The parent directory of an object (created as needed when `create`), its last name, and
/// the paths of the directories this walk created.
fn parent_of<'p>(
    ctx: &Context,
    path: &'p str,
    create: bool,
) -> Result<(Dir, &'p str, Vec<String>), Failure> {
    let components: Vec<&str> = path.split('/').collect();
    let (name, parents) = components
        .split_last()
        .ok_or_else(|| refused(path, PathError::Empty))?;
    // Errors name the directory walked, relative to --out.
    let shown = Path::new("");
    let out = ctx.out.as_ref().ok_or_else(|| {
        Failure::Io("no --out directory: this receiver delivers to an object store".into())
    })?;
    let walked = if create {
        out.walk_creating(parents, PARENT_MODE, shown, &mut |made| {
            making_dir(ctx, &made.join("/"))
        })
    } else {
        out.walk(parents, None, shown)
    };
    let (dir, created) = walked.map_err(|e| walk_failure(path, e))?;
    let created = (parents.len() - created..parents.len())
        .map(|end| parents[..=end].join("/"))
        .collect();
    Ok((dir, name, created))
}

/// Records for directories created on the way to an object: this receiver's, with the mode
/// and mtime they were created with, so their own object later applies its metadata (also
/// within the batch not yet committed: they are marked in `dirs` at once).
fn created_records(
    ctx: &Context,
    created: Vec<String>,
    dirs: &mut DirCache,
) -> Vec<(String, Delivery)> {
    created
        .into_iter()
        .filter_map(|path| {
            let components: Vec<&str> = path.split('/').collect();
            let (dir, _) = ctx
                .out
                .as_ref()?
                .walk(&components, None, Path::new(""))
                .ok()?;
            let entry = dir.stat_self().ok()?;
            let record = Delivery {
                signer: 0,
                sequence: 0,
                directory: true,
                sha256: [0; 32],
                size: 0,
                mode: entry.mode,
                mtime_secs: entry.mtime_secs,
                mtime_nanos: entry.mtime_nanos,
                inode: entry.inode,
                device: entry.device,
            };
            dirs.insert(
                path.clone(),
                Some(DirMeta {
                    mode: entry.mode,
                    mtime_secs: entry.mtime_secs,
                    mtime_nanos: entry.mtime_nanos,
                }),
            );
            Some((path, record))
        })
        .collect()
}

/// What sits at `name` in `parent` must not block a new entry there: no symlink (never
/// replaced or followed), no entry of the other kind, and — for a new name — no entry that
/// differs only by Unicode normalization (it would look the same).
fn check_target(parent: &Dir, name: &str, path: &str, directory: bool) -> Result<bool, Failure> {
    let existing = parent
        .stat(name)
        .map_err(io_failure(format!("cannot look at {path}")))?;
    match existing.map(|e| e.kind) {
        Some(Kind::Symlink) => Err(refused(
            path,
            format!("{path} is a symlink; refusing to replace or follow it"),
        )),
        Some(Kind::Directory) if !directory => {
            Err(refused(path, PathError::IsADirectory(path.into())))
        }
        Some(kind) if directory && kind != Kind::Directory => {
            Err(refused(path, PathError::NotADirectory(path.into())))
        }
        Some(Kind::Other) => Err(refused(path, format!("{path} is a device, FIFO or socket"))),
        Some(_) => Ok(true),
        None => {
            for twin in paths::normalization_twins(name) {
                if parent.stat(&twin).ok().flatten().is_some() {
                    return Err(refused(
                        path,
                        PathError::NormalizationTwin(name.to_string(), twin),
                    ));
                }
            }
            Ok(false)
        }
    }
}

/// Runs `f` with `dir` writable by its owner, restoring its mode afterwards (a delivered
/// read-only directory must still receive the rest of its contents when not running as root).
fn with_writable_dir<T>(dir: &Dir, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let mode = dir.stat_self()?.mode;
    if mode & 0o300 == 0o300 || rustix::process::geteuid().is_root() {
        return f();
    }
    dir.set_mode(mode | 0o300)?;
    let result = f();
    dir.set_mode(mode)?;
    result
}

/// A published entry: its bytes, the directory whose entry changed (to be fsynced by the
/// caller, which batches that for many small files), and what to record.
#[derive(Debug)]
pub(crate) struct Published {
    /// Plaintext bytes written.
    pub bytes: u64,
    /// The parent directory the entry was renamed or created in.
    pub dir: Dir,
    /// The record of this delivery.
    pub delivery: Delivery,
    /// Directories created on the way, to record as this receiver's.
    pub created_dirs: Vec<(String, Delivery)>,
}

/// Who made an entry and when: what its delivery record keeps besides the entry itself, and
/// the approvers the receiver counted for it (with `--approval-policy`; a sink may show them).
#[derive(Debug, Clone)]
pub(crate) struct Signed {
    pub signer: u64,
    pub sequence: u64,
    pub approvers: Arc<[KeyId]>,
    /// The approval rules by type its approval falls short of: a file of such a type is
    /// refused once its bytes show it (none for a file that waited for its model's
    /// signature: checked when it began to wait).
    pub content: Arc<ContentQuorums>,
}

fn delivery(ctx: &Context, e: &Entry, signed: &Signed, entry: beneath::Entry) -> Delivery {
    let dir = e.kind == EntryKind::Directory;
    Delivery {
        signer: signed.signer,
        sequence: signed.sequence,
        directory: dir,
        sha256: if dir { [0; 32] } else { e.sha256 },
        size: e.size,
        mode: e.mode & ctx.mode_mask,
        mtime_secs: e.mtime_secs,
        mtime_nanos: e.mtime_nanos,
        inode: entry.inode,
        device: entry.device,
    }
}

/// Publishes a directory entry (fsynced itself; its parent is left to the caller).
pub(crate) fn publish_dir(
    ctx: &Context,
    e: &Entry,
    signed: &Signed,
    dirs: &mut DirCache,
) -> Result<Published, Failure> {
    check_path(ctx, &e.path)?;
    let (parent, name, created_parents) = parent_of(ctx, &e.path, true)?;
    let existed = check_target(&parent, name, &e.path, true)?;
    if !existed {
        making_dir(ctx, &e.path).map_err(io_failure(format!("cannot create {}", e.path)))?;
    }
    let created = with_writable_dir(&parent, || parent.create_dir(name, 0o700))
        .map_err(io_failure(format!("cannot create {}", e.path)))?;
    let dir = parent.open_dir(name).map_err(|err| {
        walk_failure(
            &e.path,
            WalkError::Io {
                path: e.path.clone().into(),
                source: err,
            },
        )
    })?;
    // A directory someone else made keeps its mode and mtime; ours (made now, on the way to
    // an earlier entry, or by an earlier run, even one that stopped before recording its
    // delivery) gets the sender's, masked.
    let ours = created || !existed || made_by_us(ctx, &e.path);
    let meta = DirMeta {
        mode: e.mode & ctx.mode_mask,
        mtime_secs: e.mtime_secs,
        mtime_nanos: e.mtime_nanos,
    };
    if ours {
        apply_dir_meta(&dir, meta)
            .map_err(io_failure(format!("cannot set mode/mtime of {}", e.path)))?;
    }
    dirs.insert(e.path.clone(), ours.then_some(meta));
    dir.sync()
        .map_err(io_failure(format!("cannot fsync {}", e.path)))?;
    let entry = dir
        .stat_self()
        .map_err(io_failure(format!("cannot stat {}", e.path)))?;
    let mut record = delivery(ctx, e, signed, entry);
    if !ours {
        // What is there, not what the sender asked for.
        record.mode = entry.mode;
        record.mtime_secs = entry.mtime_secs;
        record.mtime_nanos = entry.mtime_nanos;
    }
    Ok(Published {
        bytes: 0,
        dir: parent,
        delivery: record,
        created_dirs: created_records(ctx, created_parents, dirs),
    })
}

fn apply_dir_meta(dir: &Dir, meta: DirMeta) -> io::Result<()> {
    dir.set_mode(meta.mode)?;
    dir.set_mtime(meta.mtime_secs, meta.mtime_nanos)
}

/// Refuses early what could never be published at `e.path` (a refused path, a symlink or a
/// directory in the way), before any content is hashed or written. A missing parent is fine:
/// it is created when the entry is placed.
pub(crate) fn precheck(ctx: &Context, e: &Entry) -> Result<(), Failure> {
    check_path(ctx, &e.path)?;
    let checked = parent_of(ctx, &e.path, false)
        .and_then(|(parent, name, _)| check_target(&parent, name, &e.path, false).map(|_| ()));
    match checked {
        Ok(()) | Err(Failure::Io(_)) => Ok(()),
        Err(failure) => Err(failure),
    }
}

/// A file ready in the staging directory, its content verified and its metadata applied.
#[derive(Debug)]
pub(crate) struct StagedFile {
    name: String,
    file: File,
    /// In the state directory's `held/` rather than the staging directory (see `held`).
    held: bool,
}

impl StagedFile {
    /// `file`, open, at `name` in the directory of files waiting for their model's
    /// signature (see `held`): placed or quarantined straight from there.
    pub fn held(name: String, file: File) -> Self {
        StagedFile {
            name,
            file,
            held: true,
        }
    }

    /// The directory it is in: the staging directory, or `held/` beside it (same file
    /// system).
    pub fn dir<'c>(&self, ctx: &'c Context) -> &'c Dir {
        if self.held {
            ctx.state.held()
        } else {
            ctx.state.staging()
        }
    }

    /// Its name in the staging directory.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Removes it (its entry failed).
    pub fn discard(self, ctx: &Context) {
        let _ = self.dir(ctx).remove_file(&self.name);
    }
}

/// Sets the masked mode and the mtime of a staged file, through its fd.
fn apply_file_meta(ctx: &Context, file: &File, e: &Entry) -> Result<(), Failure> {
    beneath::set_mode(file, e.mode & ctx.mode_mask)
        .and_then(|()| beneath::set_mtime(file, e.mtime_secs, e.mtime_nanos))
        .map_err(io_failure(format!("cannot set mode/mtime of {}", e.path)))
}

/// Writes a pack entry's content (checked against its SHA-256) to a new staging file with
/// its metadata. Not fsynced: the publisher syncs the file system once for all of a pack's
/// files before any of them is placed.
pub(crate) fn stage_inline(
    ctx: &Context,
    e: &Entry,
    content: &[u8],
) -> Result<StagedFile, Failure> {
    let sha: [u8; 32] = Sha256::digest(content).into();
    if sha != e.sha256 || content.len() as u64 != e.size {
        return Err(Failure::ContentMismatch);
    }
    let name = ctx.state.unique_name("pack");
    let written = ctx
        .state
        .staging()
        .create_file(&name, 0o600)
        .and_then(|mut file| file.write_all(content).map(|()| file));
    let file = match written {
        Ok(file) => file,
        Err(err) => {
            let _ = ctx.state.staging().remove_file(&name);
            return Err(Failure::Io(format!(
                "cannot write the staging file {name}: {err}"
            )));
        }
    };
    let staged = StagedFile {
        name,
        file,
        held: false,
    };
    if let Err(failure) = apply_file_meta(ctx, &staged.file, e) {
        staged.discard(ctx);
        return Err(failure);
    }
    Ok(staged)
}

/// Renames a staged file into place at `e.path`, resolving its parent again right before
/// (by fds: nothing planted meanwhile is followed).
pub(crate) fn place(
    ctx: &Context,
    staged: StagedFile,
    e: &Entry,
    signed: &Signed,
    dirs: &mut DirCache,
) -> Result<Published, Failure> {
    let placed = (|| {
        let (parent, name, created) = parent_of(ctx, &e.path, true)?;
        check_target(&parent, name, &e.path, false)?;
        with_writable_dir(&parent, || {
            staged.dir(ctx).rename(&staged.name, &parent, name)
        })
        .map_err(io_failure(format!("cannot rename into {}", e.path)))?;
        Ok((parent, created))
    })();
    let (parent, created) = match placed {
        Ok(placed) => placed,
        Err(failure) => {
            staged.discard(ctx);
            return Err(failure);
        }
    };
    let entry =
        beneath::stat_fd(&staged.file).map_err(io_failure(format!("cannot stat {}", e.path)))?;
    Ok(Published {
        bytes: e.size,
        dir: parent,
        delivery: delivery(ctx, e, signed, entry),
        created_dirs: created_records(ctx, created, dirs),
    })
}

/// Plaintext hashed between two checks of whether the decoders need the CPU back.
pub(crate) const HASH_STEP: u64 = 8 << 20;

/// How far the hash gets between two hand-backs of the content file's pages (see
/// [`Content::release_hashed`]).
const RELEASE_STEP: u64 = 8 << 20;

/// An object's content file, hashed in order from its start. The publisher hashes the
/// stored prefix while the rest arrives, so publishing a large file only has its tail left.
///
/// Pages behind the hash are handed back to the kernel as it goes: only a `--policy` check
/// reads them again, and new writes then reuse memory just freed instead of claiming more
/// page cache (see [`Content::release_hashed`]).
#[derive(Debug)]
pub(crate) struct Content {
    obj: ObjectKey,
    file: File,
    sha: Sha256,
    hashed: u64,
    release: ReleaseSchedule,
}

impl Content {
    /// Opens `obj`'s content file.
    pub fn open(ctx: &Context, obj: ObjectKey) -> Result<Self, Failure> {
        let file = ctx
            .state
            .open_content(obj)
            .map_err(io_failure(format!("cannot open the content file of {obj}")))?;
        Ok(Content {
            obj,
            file,
            sha: Sha256::new(),
            hashed: 0,
            release: ReleaseSchedule::default(),
        })
    }

    /// Bytes hashed so far.
    pub fn hashed(&self) -> u64 {
        self.hashed
    }

    /// Hashes on up to byte `upto`.
    pub fn hash_upto(&mut self, upto: u64, buf: &mut [u8]) -> Result<(), Failure> {
        while self.hashed < upto {
            let want = usize::try_from(upto - self.hashed)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let n = self
                .file
                .read_at(&mut buf[..want], self.hashed)
                .map_err(io_failure(format!(
                    "cannot read the content file of {}",
                    self.obj
                )))?;
            if n == 0 {
                // Shorter than its records say: a crash lost the end.
                return Err(Failure::ContentMismatch);
            }
            self.sha.update(&buf[..n]);
            self.hashed += n as u64;
            self.release_hashed();
        }
        Ok(())
    }

    /// Advises the kernel that hashed pages are not needed (`POSIX_FADV_DONTNEED`) when
    /// [`ReleaseSchedule`] says so. Advice loses nothing: dirty pages stay until written, and
    /// `finish` still fsyncs.
    ///
    /// Why: a receiver streams far more than it rereads, and page cache grown by claiming
    /// memory the machine has not touched lately is the receiver's largest cost on virtual
    /// machines that hand free memory back to their host (README, performance); pages freed
    /// a moment ago are reused at a fraction of that. It also bounds the dirty pages one
    /// large object leaves for the final fsync. The price: a `--policy` check that reads the
    /// whole staged file (an archive walk, the AV scanner) reads it from disk.
    fn release_hashed(&mut self) {
        let Some((offset, len)) = self.release.due(self.hashed) else {
            return;
        };
        let advice = rustix::fs::Advice::DontNeed;
        if let Err(e) = rustix::fs::fadvise(&self.file, offset, NonZeroU64::new(len), advice) {
            // Only a hint: the pages stay cached and the kernel reclaims them later.
            tracing::debug!(object = %self.obj, "cannot release hashed pages: {e}");
        }
    }

    /// Trims the file to the entry's size, finishes the hash and checks it, applies the
    /// metadata and fsyncs: the file is ready to be placed.
    pub fn finish(
        mut self,
        ctx: &Context,
        e: &Entry,
        buf: &mut [u8],
    ) -> Result<StagedFile, Failure> {
        let size = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        if size < e.size {
            return Err(Failure::SizeMismatch {
                expected: e.size,
                got: size,
            });
        }
        let obj = self.obj;
        let write_error = move |err: io::Error| {
            Failure::Io(format!("cannot write the content file of {obj}: {err}"))
        };
        self.file.set_len(e.size).map_err(write_error)?;
        self.hash_upto(e.size, buf)?;
        let sha: [u8; 32] = self.sha.finalize().into();
        if sha != e.sha256 {
            return Err(Failure::ContentMismatch);
        }
        apply_file_meta(ctx, &self.file, e)?;
        self.file.sync_all().map_err(write_error)?;
        Ok(StagedFile {
            name: StateDir::content_name(self.obj),
            file: self.file,
            held: false,
        })
    }
}

/// Which hashed ranges of a content file to hand back to the kernel, and when. Linux answers
/// `POSIX_FADV_DONTNEED` by starting the write-back of dirty pages and dropping clean ones,
/// so every range is advised twice, [`RELEASE_STEP`] of hashing apart: the first call starts
/// its write-back, the second drops what that wrote.
#[derive(Debug, Default)]
struct ReleaseSchedule {
    /// Bytes before this offset were advised twice.
    twice: u64,
    /// Bytes before this offset were advised at least once.
    once: u64,
}

impl ReleaseSchedule {
    /// The range `(offset, len)` to advise now that `hashed` bytes are hashed, if any.
    fn due(&mut self, hashed: u64) -> Option<(u64, u64)> {
        if hashed < self.once.saturating_add(RELEASE_STEP) {
            return None;
        }
        let range = (self.twice, hashed - self.twice);
        self.twice = self.once;
        self.once = hashed;
        Some(range)
    }
}

/// Applies the recorded mode and mtime of every delivered ancestor of `paths`, deepest first,
/// each directory once.
pub(crate) fn reapply_ancestors(
    ctx: &Context,
    paths: impl IntoIterator<Item = String>,
    dirs: &mut DirCache,
) {
    let mut ancestors = std::collections::BTreeSet::new();
    for path in paths {
        let mut end = path.len();
        while let Some(slash) = path[..end].rfind('/') {
            end = slash;
            if !ancestors.insert(path[..end].to_string()) {
                break;
            }
        }
    }
    let mut ancestors: Vec<String> = ancestors.into_iter().collect();
    ancestors.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
    for dir in ancestors {
        reapply_dir(ctx, &dir, dirs);
    }
}

/// Applies the recorded mode and mtime of a directory this receiver made and delivered
/// (cached lookups; reached by a walk that never follows a link).
pub(crate) fn reapply_dir(ctx: &Context, dir: &str, dirs: &mut DirCache) {
    let meta = *dirs.entry(dir.to_string()).or_insert_with(|| {
        ctx.state
            .records()
            .latest(dir)
            .ok()
            .flatten()
            .filter(|r| r.directory && made_by_us(ctx, dir))
            .map(|r| DirMeta {
                mode: r.mode,
                mtime_secs: r.mtime_secs,
                mtime_nanos: r.mtime_nanos,
            })
    });
    let Some(meta) = meta else {
        return;
    };
    let components: Vec<&str> = dir.split('/').collect();
    let Some(out) = &ctx.out else {
        return;
    };
    let applied = out
        .walk(&components, None, Path::new(""))
        .map_err(|e| io::Error::other(e.to_string()))
        .and_then(|(d, _)| apply_dir_meta(&d, meta));
    if let Err(e) = applied {
        tracing::debug!(dir = %paths::escaped(dir), "cannot apply directory metadata: {e}");
    }
}

/// Applies every cached directory's metadata, deepest first (at shutdown).
pub(crate) fn reapply_all(ctx: &Context, dirs: &mut DirCache) {
    let mut known: Vec<String> = dirs
        .iter()
        .filter(|(_, meta)| meta.is_some())
        .map(|(path, _)| path.clone())
        .collect();
    known.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
    for dir in known {
        reapply_dir(ctx, &dir, dirs);
    }
}

/// Whether an entry's content already sits at its path, by this receiver's own records: a
/// record for the path with the same SHA-256 and size, and, in an `--out` directory, the file
/// there still the one recorded (same inode, device, size and mtime; an object store has no
/// such thing to look at, and is never read). No file the link names is ever hashed.
pub(crate) fn already_delivered(ctx: &Context, e: &Entry) -> bool {
    if e.kind != EntryKind::File {
        return false;
    }
    let Ok(Some(record)) = ctx.state.records().latest(&e.path) else {
        return false;
    };
    if record.directory || record.sha256 != e.sha256 || record.size != e.size {
        return false;
    }
    if ctx.out.is_none() {
        return true;
    }
    let Ok((parent, name, _)) = parent_of(ctx, &e.path, false) else {
        return false;
    };
    parent.stat(name).ok().flatten().is_some_and(|found| {
        found.kind == Kind::File
            && found.inode == record.inode
            && found.device == record.device
            && found.size == record.size
            && found.mtime_secs == record.mtime_secs
            && found.mtime_nanos == record.mtime_nanos
    })
}

/// An entry older than what this receiver delivered at its path for the same signer: a
/// replay that would roll the file back.
pub(crate) fn check_fresh(ctx: &Context, path: &str, signed: &Signed) -> Result<(), Failure> {
    match ctx.state.records().sequence(signed.signer, path) {
        Ok(Some(delivered)) if signed.sequence < delivered => Err(Failure::Stale),
        Ok(_) => Ok(()),
        Err(e) => Err(Failure::Io(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::wire::{ObjectId, SessionId};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn context(root: &Path) -> Context {
        let out_path = root.join("out");
        std::fs::create_dir_all(&out_path).unwrap();
        let out = Dir::open(&out_path).unwrap();
        let state = StateDir::open(&root.join("state"), &out, &out_path).unwrap();
        Context {
            out: Some(out),
            out_path,
            state,
            mode_mask: 0o7777,
            identities: Vec::new(),
            identity_path: Default::default(),
            trusted: Default::default(),
            reserved: None,
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
            permits_total: 1,
            approval: None,
            gate: None,
            stopping: Default::default(),
        }
    }

    fn directory(path: &str, mode: u32, mtime_secs: i64) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Directory,
            size: 0,
            mode,
            mtime_secs,
            mtime_nanos: 7,
            sha256: [0; 32],
        }
    }

    fn signed() -> Signed {
        Signed {
            signer: 1,
            sequence: 1,
            approvers: Arc::new([]),
            content: Arc::default(),
        }
    }

    #[test]
    fn directories_made_by_a_run_that_stopped_before_its_commit_are_still_ours() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("out");
        {
            // Ancestors made on the way to a file; the run stops before recording them.
            let ctx = context(root.path());
            parent_of(&ctx, "data/a/file", true).unwrap();
        }
        std::fs::create_dir_all(out.join("theirs")).unwrap();
        std::fs::set_permissions(out.join("theirs"), PermissionsExt::from_mode(0o711)).unwrap();

        let ctx = context(root.path());
        let mut dirs = DirCache::new();
        let deliveries = ["data/a", "theirs"]
            .map(|path| {
                let published = publish_dir(
                    &ctx,
                    &directory(path, 0o750, 1_600_000_000),
                    &signed(),
                    &mut dirs,
                )
                .unwrap();
                (path.to_string(), published.delivery)
            })
            .to_vec();
        let check = |what: &str| {
            let ours = std::fs::metadata(out.join("data/a")).unwrap();
            assert_eq!(ours.mode() & 0o7777, 0o750, "{what}");
            assert_eq!(
                (ours.mtime(), ours.mtime_nsec()),
                (1_600_000_000, 7),
                "{what}"
            );
            let theirs = std::fs::metadata(out.join("theirs")).unwrap();
            assert_eq!(
                theirs.mode() & 0o7777,
                0o711,
                "{what}: someone else's keeps its mode"
            );
            assert_ne!(theirs.mtime(), 1_600_000_000, "{what}: and its mtime");
        };
        check("published");

        // Later entries land in both; only ours gets its metadata back, also in a later run.
        ctx.state
            .records()
            .commit(&[crate::records::Finished {
                obj: ObjectKey::new(SessionId(1), ObjectId(1)),
                deliveries,
            }])
            .unwrap();
        drop(ctx);
        let ctx = context(root.path());
        std::fs::write(out.join("data/a/later"), b"x").unwrap();
        std::fs::write(out.join("theirs/later"), b"x").unwrap();
        let theirs_before = std::fs::metadata(out.join("theirs")).unwrap().mtime_nsec();
        let touched = ["data/a/later", "theirs/later"].map(String::from);
        reapply_ancestors(&ctx, touched, &mut DirCache::new());
        check("re-applied");
        let theirs_after = std::fs::metadata(out.join("theirs")).unwrap().mtime_nsec();
        assert_eq!(theirs_before, theirs_after, "someone else's is not touched");
    }

    #[test]
    fn the_release_schedule_advises_every_hashed_byte_twice_a_step_apart() {
        let mut schedule = ReleaseSchedule::default();
        // (start, end) of each advice, from reads of uneven sizes; `end` is also how much
        // was hashed when it was given.
        let mut calls: Vec<(u64, u64)> = Vec::new();
        let mut hashed = 0;
        let reads = [
            1 << 20,
            3 << 20,
            7 << 20,
            1,
            5 << 20,
            9 << 20,
            2 << 20,
            8 << 20,
        ];
        for read in reads.iter().cycle().take(64) {
            hashed += read;
            if let Some((offset, len)) = schedule.due(hashed) {
                assert_eq!(offset + len, hashed, "advice ends where the hash is");
                calls.push((offset, hashed));
            }
        }
        for pair in calls.windows(2) {
            assert!(
                pair[1].1 - pair[0].1 >= RELEASE_STEP,
                "one call per step at most"
            );
        }
        // Every piece between two call boundaries, up to where the last call starts.
        let last_start = calls.last().unwrap().0;
        assert!(
            last_start > 100 << 20,
            "the walk went far enough to mean something"
        );
        let mut bounds: Vec<u64> = calls.iter().flat_map(|c| [c.0, c.1]).collect();
        bounds.sort_unstable();
        bounds.dedup();
        for piece in bounds.windows(2).filter(|w| w[1] <= last_start) {
            let covering: Vec<u64> = calls
                .iter()
                .filter(|(start, end)| *start <= piece[0] && piece[1] <= *end)
                .map(|call| call.1)
                .collect();
            assert_eq!(covering.len(), 2, "bytes {piece:?}: {covering:?}");
            assert!(covering[1] - covering[0] >= RELEASE_STEP);
        }
    }

    /// The bytes of a file that sit in the page cache, as util-linux's `fincore` reports them.
    fn cached_bytes(file: &File) -> u64 {
        use std::os::fd::AsRawFd;
        let path = format!("/proc/{}/fd/{}", std::process::id(), file.as_raw_fd());
        let out = std::process::Command::new("fincore")
            .args(["--bytes", "--noheadings", "--raw", "--output", "RES", &path])
            .output()
            .expect("fincore (util-linux) must be installed: ./test.sh installs it");
        assert!(out.status.success(), "fincore: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    #[test]
    fn hashing_a_content_file_hands_its_pages_back_to_the_kernel() {
        let root = tempfile::tempdir().unwrap();
        let ctx = context(root.path());
        let obj = ObjectKey::new(SessionId(1), ObjectId(1));
        let data: Vec<u8> = (0..64u32 << 20).map(|i| (i % 251) as u8).collect();
        let file = ctx.state.open_content(obj).unwrap();
        file.write_all_at(&data, 0).unwrap();
        // Clean pages: the first advice already drops them.
        file.sync_all().unwrap();
        assert_eq!(
            cached_bytes(&file),
            data.len() as u64,
            "a file just written and fsynced is expected in the page cache"
        );

        let mut content = Content::open(&ctx, obj).unwrap();
        content
            .hash_upto(data.len() as u64, &mut vec![0; IO_BUFFER])
            .unwrap();
        let digest: [u8; 32] = content.sha.finalize().into();
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&data)));
        let left = cached_bytes(&file);
        assert!(
            left <= 2 * RELEASE_STEP,
            "{left} of {} bytes still cached (tmpfs cannot drop pages: the test needs \
             $TMPDIR on a disk file system)",
            data.len()
        );
    }

    #[test]
    fn read_only_directories_still_take_new_entries_and_keep_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("ro");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o555)).unwrap();
        let ro = Dir::open(&sub).unwrap();
        with_writable_dir(&ro, || ro.create_file("f", 0o600).map(drop)).unwrap();
        assert!(sub.join("f").exists());
        assert_eq!(ro.stat_self().unwrap().mode, 0o555);
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}
