//! Publishing: turns a complete, verified object into a file or directory under `--out`,
//! atomically, through directory fds only.
//!
//! ```text
//!  seg-0 ─┐                                      staging file (state tmp/, 0600, by fd)
//!  seg-1 ─┼─► age decrypt ─► SHA-256(plaintext) + byte count ─► write
//!  seg-n ─┘   (ciphertext SHA-256 checked against the signed manifest when decoded)
//!        then: fchmod, futimens, fsync ─► walk --out one component at a time (openat,
//!        O_NOFOLLOW; mkdirat for what is missing) ─► refuse a symlink, a directory or a
//!        Unicode twin at the name ─► renameat(staging, parent fd, name) ─► fsync the parent
//! ```
//!
//! `--out` is opened once; nothing below it is ever resolved by path, so a local user who can
//! write somewhere under `--out` cannot redirect a write, a rename or a chmod through a
//! symlink or a swapped directory: the walk refuses links, and metadata is only ever changed
//! through the fd of what was opened. Permission bits are the sender's masked by
//! `--mode-mask` (default 0755: never setuid, setgid, sticky, group- or other-writable) and by
//! the receiver's umask; a directory that existed before keeps its mode unless this receiver
//! delivered it. One segment is in flight at a time, so memory does not depend on file size.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};
use sluice_common::beneath::{self, Dir, Kind, WalkError};
use sluice_common::paths::{self, PathError};
use sluice_protocol::manifest::{EntryKind, Manifest};

use crate::context::Context;
use crate::failure::Failure;
use crate::records::Delivery;
use crate::state::ObjectKey;

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

/// Delivered directories by object path (`None`: looked up, not a delivered directory).
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
    let (dir, created) = ctx
        .out
        .walk(parents, create.then_some(PARENT_MODE), Path::new(path))
        .map_err(|e| walk_failure(path, e))?;
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
            let (dir, _) = ctx.out.walk(&components, None, Path::new(&path)).ok()?;
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

/// A published object: its bytes, the directory whose entry changed (to be fsynced by the
/// caller, which batches that for many small files), and what to record.
#[derive(Debug)]
pub(crate) struct Published {
    /// Plaintext bytes written.
    pub bytes: u64,
    /// The parent directory the object was renamed or created in.
    pub dir: Dir,
    /// The record of this delivery.
    pub delivery: Delivery,
    /// Directories created on the way, to record as this receiver's.
    pub created_dirs: Vec<(String, Delivery)>,
}

/// Publishes a complete object (everything but the final fsync of its directory).
pub(crate) fn publish(
    ctx: &Context,
    obj: ObjectKey,
    manifest: &Manifest,
    signer: u64,
    dirs: &mut DirCache,
    staged: Option<Staged>,
    buf: &mut [u8],
) -> Result<Published, Failure> {
    let checked = check_path(ctx, &manifest.path);
    match (checked, manifest.kind) {
        (Ok(()), EntryKind::File) => publish_file(ctx, obj, manifest, signer, dirs, staged, buf),
        (checked, _) => {
            if let Some(staged) = staged {
                staged.discard(ctx);
            }
            checked.and_then(|()| publish_dir(ctx, manifest, signer, dirs))
        }
    }
}

fn delivery(
    ctx: &Context,
    m: &Manifest,
    signer: u64,
    entry: beneath::Entry,
    dir: bool,
) -> Delivery {
    Delivery {
        signer,
        sequence: m.sequence,
        directory: dir,
        sha256: if dir { [0; 32] } else { m.sha256 },
        size: m.size,
        mode: m.mode & ctx.mode_mask,
        mtime_secs: m.mtime_secs,
        mtime_nanos: m.mtime_nanos,
        inode: entry.inode,
        device: entry.device,
    }
}

fn publish_dir(
    ctx: &Context,
    m: &Manifest,
    signer: u64,
    dirs: &mut DirCache,
) -> Result<Published, Failure> {
    let (parent, name, created_parents) = parent_of(ctx, &m.path, true)?;
    let existed = check_target(&parent, name, &m.path, true)?;
    let created = with_writable_dir(&parent, || parent.create_dir(name, 0o700))
        .map_err(io_failure(format!("cannot create {}", m.path)))?;
    let dir = parent.open_dir(name).map_err(|e| {
        walk_failure(
            &m.path,
            WalkError::Io {
                path: m.path.clone().into(),
                source: e,
            },
        )
    })?;
    // A directory someone else made keeps its mode and mtime; ours (now, on the way to an
    // earlier object, or by an earlier delivery) gets the sender's, masked.
    let ours = created
        || !existed
        || dirs.get(&m.path).is_some_and(Option::is_some)
        || ctx
            .state
            .records()
            .latest(&m.path)
            .ok()
            .flatten()
            .is_some_and(|r| r.directory);
    let meta = DirMeta {
        mode: m.mode & ctx.mode_mask,
        mtime_secs: m.mtime_secs,
        mtime_nanos: m.mtime_nanos,
    };
    if ours {
        apply_dir_meta(&dir, meta)
            .map_err(io_failure(format!("cannot set mode/mtime of {}", m.path)))?;
        dirs.insert(m.path.clone(), Some(meta));
    }
    dir.sync()
        .map_err(io_failure(format!("cannot fsync {}", m.path)))?;
    let entry = dir
        .stat_self()
        .map_err(io_failure(format!("cannot stat {}", m.path)))?;
    Ok(Published {
        bytes: 0,
        dir: parent,
        delivery: delivery(ctx, m, signer, entry, true),
        created_dirs: created_records(ctx, created_parents, dirs),
    })
}

fn apply_dir_meta(dir: &Dir, meta: DirMeta) -> io::Result<()> {
    dir.set_mode(meta.mode)?;
    dir.set_mtime(meta.mtime_secs, meta.mtime_nanos)
}

fn publish_file(
    ctx: &Context,
    obj: ObjectKey,
    m: &Manifest,
    signer: u64,
    dirs: &mut DirCache,
    staged: Option<Staged>,
    buf: &mut [u8],
) -> Result<Published, Failure> {
    // Walk first (creating nothing): a refused path fails before any decryption work, and an
    // object that fails later leaves no directories behind.
    let checked = parent_of(ctx, &m.path, false)
        .and_then(|(parent, name, _)| check_target(&parent, name, &m.path, false).map(|_| ()));
    match checked {
        Ok(()) => {}
        // A missing parent is created below; anything else is a refusal.
        Err(Failure::Io(_)) => {}
        Err(failure) => {
            if let Some(staged) = staged {
                staged.discard(ctx);
            }
            return Err(failure);
        }
    }
    let mut staged = match staged {
        Some(staged) => staged,
        None => Staged::create(ctx, obj)?,
    };
    let result = (|| {
        while let Some(info) = m.segments.get(staged.next as usize) {
            let expected = (u64::from(info.ciphertext_len), info.ciphertext_sha256);
            staged.append(ctx, obj, Some(expected), Some(m.size), buf)?;
        }
        staged.finish(ctx, m)?;
        // Resolve again right before the rename, by fds: nothing planted meanwhile is followed.
        let (parent, name, created) = parent_of(ctx, &m.path, true)?;
        check_target(&parent, name, &m.path, false)?;
        with_writable_dir(&parent, || ctx.staging.rename(&staged.name, &parent, name))
            .map_err(io_failure(format!("cannot rename into {}", m.path)))?;
        let entry = beneath::stat_fd(staged.out.get_ref())
            .map_err(io_failure(format!("cannot stat {}", m.path)))?;
        Ok((parent, entry, created))
    })();
    match result {
        Ok((dir, entry, created)) => Ok(Published {
            bytes: m.size,
            dir,
            delivery: delivery(ctx, m, signer, entry, false),
            created_dirs: created_records(ctx, created, dirs),
        }),
        Err(failure) => {
            staged.discard(ctx);
            Err(failure)
        }
    }
}

/// Plaintext handed to the kernel's writeback between two kicks, so the fsync before the
/// rename only waits for the tail of the file.
const WRITEBACK_EVERY: u64 = 16 << 20;

/// A file being staged: the plaintext of segments `0..next`, decrypted in order and hashed as
/// it goes. The publisher stages segments as soon as they are stored, before the manifest
/// arrives (it comes last), so publishing a large file only has its tail left to do.
#[derive(Debug)]
pub(crate) struct Staged {
    /// Its name in the staging directory.
    name: String,
    out: BufWriter<File>,
    plain: Sha256,
    written: u64,
    next: u32,
    flushed_at: u64,
}

impl Staged {
    /// An empty staging file for `obj` (mode 0600, in the staging directory).
    pub fn create(ctx: &Context, obj: ObjectKey) -> Result<Self, Failure> {
        let name = ctx
            .state
            .unique_name(&format!("stage-{:016x}-{}", obj.session.0, obj.object.0));
        let file = ctx
            .staging
            .create_file(&name, 0o600)
            .map_err(io_failure(format!("cannot create the staging file {name}")))?;
        Ok(Staged {
            name,
            out: BufWriter::with_capacity(IO_BUFFER, file),
            plain: Sha256::new(),
            written: 0,
            next: 0,
            flushed_at: 0,
        })
    }

    /// The next segment to append.
    pub fn next(&self) -> u32 {
        self.next
    }

    fn write_error(&self, e: io::Error) -> Failure {
        Failure::Io(format!("cannot write the staging file {}: {e}", self.name))
    }

    /// Decrypts stored segment `next` and appends its plaintext. Its stored length and
    /// SHA-256 (recorded when it was decoded) must equal `expected` (from the manifest) when
    /// given; `limit` caps the plaintext at the manifest's size.
    ///
    /// The stored ciphertext is not hashed again: it was hashed when decoded, and age's
    /// authenticated encryption refuses any byte that changed on disk since.
    pub fn append(
        &mut self,
        ctx: &Context,
        obj: ObjectKey,
        expected: Option<(u64, [u8; 32])>,
        limit: Option<u64>,
        buf: &mut [u8],
    ) -> Result<(), Failure> {
        let index = self.next;
        let (file, len, stored_sha) = ctx
            .state
            .open_segment(obj, index)
            .map_err(|_| Failure::StoredSegmentDamaged(index))?;
        if expected.is_some_and(|e| e != (len, stored_sha)) {
            return Err(Failure::SegmentMismatch(index));
        }
        let mut reader = BufReader::with_capacity(IO_BUFFER, file.take(len));
        let undecryptable =
            |e: &dyn std::fmt::Display| Failure::SegmentUndecryptable(index, e.to_string());
        let mut stream = sluice_common::envelope::decrypt(&mut reader, &ctx.identities)
            .map_err(|e| undecryptable(&e))?;
        loop {
            let n = stream.read(buf).map_err(|e| undecryptable(&e))?;
            if n == 0 {
                break;
            }
            self.plain.update(&buf[..n]);
            self.written += n as u64;
            if let Some(limit) = limit.filter(|l| self.written > *l) {
                return Err(Failure::SizeMismatch {
                    expected: limit,
                    got: self.written,
                });
            }
            self.out
                .write_all(&buf[..n])
                .map_err(|e| self.write_error(e))?;
        }
        drop(stream);
        // age stops at its final chunk; anything stored after it is not ours.
        if reader
            .read(&mut buf[..1])
            .map_err(|_| Failure::StoredSegmentDamaged(index))?
            != 0
        {
            return Err(Failure::StoredSegmentDamaged(index));
        }
        self.next += 1;
        if self.written - self.flushed_at >= WRITEBACK_EVERY {
            self.start_writeback().map_err(|e| self.write_error(e))?;
        }
        Ok(())
    }

    /// Starts writing what was staged since the last call to disk, without waiting for it and
    /// without forcing a journal commit (which would stall every other file operation of the
    /// receiver): `POSIX_FADV_DONTNEED` queues the dirty pages for writeback, and lets the kernel
    /// drop them once written, since they are not read again. The fsync before the rename then
    /// only waits for the tail.
    fn start_writeback(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let len = std::num::NonZeroU64::new(self.written - self.flushed_at);
        rustix::fs::fadvise(
            self.out.get_ref(),
            self.flushed_at,
            len,
            rustix::fs::Advice::DontNeed,
        )?;
        self.flushed_at = self.written;
        Ok(())
    }

    /// Checks size and SHA-256 against the manifest, applies the masked mode and the mtime
    /// through the file's fd, and fsyncs.
    fn finish(&mut self, ctx: &Context, m: &Manifest) -> Result<(), Failure> {
        if self.written != m.size {
            return Err(Failure::SizeMismatch {
                expected: m.size,
                got: self.written,
            });
        }
        let sha: [u8; 32] = std::mem::take(&mut self.plain).finalize().into();
        if sha != m.sha256 {
            return Err(Failure::ContentMismatch);
        }
        self.out.flush().map_err(|e| self.write_error(e))?;
        let file = self.out.get_ref();
        beneath::set_mode(file, m.mode & ctx.mode_mask)
            .and_then(|()| beneath::set_mtime(file, m.mtime_secs, m.mtime_nanos))
            .map_err(io_failure(format!("cannot set mode/mtime of {}", m.path)))?;
        file.sync_all().map_err(|e| self.write_error(e))
    }

    /// Removes the staging file (the object failed or was already delivered).
    pub fn discard(self, ctx: &Context) {
        let _ = ctx.staging.remove_file(&self.name);
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

/// Applies the recorded mode and mtime of a directory this receiver delivered (cached
/// lookups; reached by a walk that never follows a link).
pub(crate) fn reapply_dir(ctx: &Context, dir: &str, dirs: &mut DirCache) {
    let meta = *dirs.entry(dir.to_string()).or_insert_with(|| {
        ctx.state
            .records()
            .latest(dir)
            .ok()
            .flatten()
            .filter(|r| r.directory)
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
    let applied = ctx
        .out
        .walk(&components, None, Path::new(dir))
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

/// Whether the manifest's content already sits at its path, by this receiver's own records:
/// a record for the path with the same SHA-256 and size, and the file there still the one
/// recorded (same inode, device, size and mtime). No file the link names is ever hashed.
pub(crate) fn already_delivered(ctx: &Context, m: &Manifest) -> bool {
    if m.kind != EntryKind::File {
        return false;
    }
    let Ok(Some(record)) = ctx.state.records().latest(&m.path) else {
        return false;
    };
    if record.directory || record.sha256 != m.sha256 || record.size != m.size {
        return false;
    }
    let Ok((parent, name, _)) = parent_of(ctx, &m.path, false) else {
        return false;
    };
    parent.stat(name).ok().flatten().is_some_and(|e| {
        e.kind == Kind::File
            && e.inode == record.inode
            && e.device == record.device
            && e.size == record.size
            && e.mtime_secs == record.mtime_secs
            && e.mtime_nanos == record.mtime_nanos
    })
}

/// A manifest older than what this receiver delivered at its path for the same signer:
/// a replay that would roll the file back.
pub(crate) fn check_fresh(ctx: &Context, m: &Manifest, signer: u64) -> Result<(), Failure> {
    match ctx.state.records().sequence(signer, &m.path) {
        Ok(Some(delivered)) if m.sequence < delivered => Err(Failure::Stale),
        Ok(_) => Ok(()),
        Err(e) => Err(Failure::Io(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_directories_still_take_new_entries_and_keep_their_mode() {
        use std::os::unix::fs::PermissionsExt;
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
