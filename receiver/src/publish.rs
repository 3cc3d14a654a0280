//! Publishing: turns a complete, verified object into a file or directory under `--out`,
//! atomically, and recognises content that is already there.
//!
//! ```text
//!  seg-0 ─┐                                      staging file (state dir, 0600)
//!  seg-1 ─┼─► age decrypt ─► SHA-256(plaintext) + byte count ─► write
//!  seg-n ─┘   (ciphertext SHA-256 checked against the signed manifest when decoded)
//!        then: mode, mtime, fsync ─► resolve target (no symlink, no clash) ─► rename ─► fsync dir
//! ```
//!
//! One segment is in flight at a time and read through fixed buffers, so memory does not
//! depend on the file's size. Directories are created (mode and mtime applied), and because
//! adding an entry changes a directory's mtime, the recorded mtime of every delivered ancestor
//! is applied again after each publish and once more at shutdown ("directories after their
//! contents"). Setuid and setgid bits are never applied: a gateway must not mint privileged
//! executables from across the diode.

use std::collections::HashMap;
use std::fs::{self, File, FileTimes, OpenOptions, Permissions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use sluice_common::paths::{self, PathError, Target};
use sluice_protocol::manifest::{EntryKind, Manifest};

use crate::context::Context;
use crate::failure::Failure;
use crate::state::{ObjectKey, Record};

/// Permission bits applied: everything but setuid and setgid.
const MODE_MASK: u32 = 0o1777;
/// Files smaller than this get no delivery record: hashing them again to recognise a re-send
/// costs less than writing a record for every one.
const RECORD_MIN_SIZE: u64 = 1 << 20;
/// Read and write buffer sizes while publishing.
pub(crate) const IO_BUFFER: usize = 256 * 1024;

/// Mode and mtime of a delivered directory, applied again after its contents change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirMeta {
    mode: u32,
    mtime_secs: i64,
    mtime_nanos: u32,
}

/// Delivered directories by object path (`None`: looked up, not a delivered directory).
pub type DirCache = HashMap<String, Option<DirMeta>>;

/// Checks a manifest path: valid, and not inside the state directory.
pub(crate) fn check_path(ctx: &Context, path: &str) -> Result<(), Failure> {
    let refused = |error: String| Failure::PathRefused {
        path: path.to_string(),
        error,
    };
    paths::validate_object_path(path).map_err(|e| refused(e.to_string()))?;
    if let Some(reserved) = &ctx.reserved {
        let inside = path == reserved
            || path
                .strip_prefix(reserved.as_str())
                .is_some_and(|rest| rest.starts_with('/'));
        if inside {
            return Err(refused(format!(
                "path is inside the state directory {reserved}"
            )));
        }
    }
    Ok(())
}

fn path_failure(path: &str, error: PathError) -> Failure {
    match error {
        PathError::Io { path: at, source } => {
            Failure::Io(format!("cannot prepare {}: {source}", at.display()))
        }
        other => Failure::PathRefused {
            path: path.to_string(),
            error: other.to_string(),
        },
    }
}

fn io_failure(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> Failure {
    move |e| Failure::Io(format!("{what}: {e}"))
}

/// The `SystemTime` of a manifest mtime, if representable.
fn system_time(secs: i64, nanos: u32) -> Option<SystemTime> {
    let nanos = Duration::from_nanos(u64::from(nanos.min(999_999_999)));
    let base = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))?
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))?
    };
    base.checked_add(nanos)
}

/// Applies mode and mtime through an open handle (never through a path that could be a link).
fn apply_meta(file: &File, mode: u32, secs: i64, nanos: u32) -> io::Result<()> {
    file.set_permissions(Permissions::from_mode(mode & MODE_MASK))?;
    if let Some(time) = system_time(secs, nanos) {
        file.set_times(FileTimes::new().set_modified(time))?;
    }
    Ok(())
}

/// Makes a directory's entries durable.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Runs `f` with `dir` writable by its owner, restoring its mode afterwards (a delivered
/// read-only directory must still receive the rest of its contents when not running as root).
fn with_writable_dir<T>(dir: &Path, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let meta = fs::symlink_metadata(dir)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o300 == 0o300 {
        return f();
    }
    fs::set_permissions(dir, Permissions::from_mode(mode | 0o300))?;
    let result = f();
    fs::set_permissions(dir, Permissions::from_mode(mode))?;
    result
}

/// A published object: its bytes, and the directory whose entry changed (to be fsynced by
/// the caller, which batches that for many small files).
#[derive(Debug)]
pub(crate) struct Published {
    /// Plaintext bytes written.
    pub bytes: u64,
    /// The parent directory the object was renamed or created in.
    pub dir: PathBuf,
}

/// Publishes a complete object (everything but the final fsync of its directory).
pub(crate) fn publish(
    ctx: &Context,
    obj: ObjectKey,
    manifest: &Manifest,
    dirs: &mut DirCache,
    staged: Option<Staged>,
    buf: &mut [u8],
) -> Result<Published, Failure> {
    if let Err(failure) = check_path(ctx, &manifest.path) {
        if let Some(staged) = staged {
            staged.discard();
        }
        return Err(failure);
    }
    let published = match manifest.kind {
        EntryKind::Directory => {
            if let Some(staged) = staged {
                staged.discard();
            }
            publish_dir(ctx, manifest, dirs)?
        }
        EntryKind::File => publish_file(ctx, obj, manifest, staged, buf)?,
    };
    Ok(published)
}

fn parent_of(path: &Path) -> Result<&Path, Failure> {
    path.parent()
        .ok_or_else(|| Failure::Io(format!("{} has no parent", path.display())))
}

fn publish_dir(ctx: &Context, m: &Manifest, dirs: &mut DirCache) -> Result<Published, Failure> {
    let target = paths::resolve_under(&ctx.out, &m.path, Target::Directory, true)
        .map_err(|e| path_failure(&m.path, e))?;
    let parent = parent_of(&target)?;
    if !target.is_dir() {
        with_writable_dir(parent, || fs::DirBuilder::new().mode(0o700).create(&target))
            .or_else(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .map_err(io_failure(format!("cannot create {}", target.display())))?;
        // Whatever is there now must be the directory we made, not a link raced in.
        paths::resolve_under(&ctx.out, &m.path, Target::Directory, false)
            .map_err(|e| path_failure(&m.path, e))?;
    }
    let dir =
        File::open(&target).map_err(io_failure(format!("cannot open {}", target.display())))?;
    apply_meta(&dir, m.mode, m.mtime_secs, m.mtime_nanos).map_err(io_failure(format!(
        "cannot set mode/mtime of {}",
        target.display()
    )))?;
    dir.sync_all()
        .map_err(io_failure(format!("cannot fsync {}", target.display())))?;
    let meta = DirMeta {
        mode: m.mode,
        mtime_secs: m.mtime_secs,
        mtime_nanos: m.mtime_nanos,
    };
    dirs.insert(m.path.clone(), Some(meta));
    let inode = dir.metadata().map(|md| md.ino()).unwrap_or(0);
    write_record(ctx, m, "directory", inode);
    Ok(Published {
        bytes: 0,
        dir: parent.to_path_buf(),
    })
}

fn write_record(ctx: &Context, m: &Manifest, kind: &str, inode: u64) {
    let record = Record {
        path: m.path.clone(),
        kind: kind.to_string(),
        sha256: hex::encode(m.sha256),
        size: m.size,
        mode: m.mode & MODE_MASK,
        mtime_secs: m.mtime_secs,
        mtime_nanos: m.mtime_nanos,
        inode,
    };
    if let Err(e) = ctx.state.write_record(&record) {
        // The object is delivered; only the shortcut for recognising it again is lost.
        tracing::warn!(path = %m.path, "cannot record the delivery in the state directory: {e}");
    }
}

fn publish_file(
    ctx: &Context,
    obj: ObjectKey,
    m: &Manifest,
    staged: Option<Staged>,
    buf: &mut [u8],
) -> Result<Published, Failure> {
    // Resolve first (creating nothing): a refused path fails before any decryption work, and
    // an object that fails later leaves no directories behind.
    if let Err(e) = paths::resolve_under(&ctx.out, &m.path, Target::File, false) {
        if let Some(staged) = staged {
            staged.discard();
        }
        return Err(path_failure(&m.path, e));
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
        staged.finish(m)
    })();
    let path = staged.path.clone();
    let result = result.and_then(|()| {
        // Resolve again right before the rename: nothing planted meanwhile is followed.
        let target = paths::resolve_under(&ctx.out, &m.path, Target::File, true)
            .map_err(|e| path_failure(&m.path, e))?;
        let parent = parent_of(&target)?;
        with_writable_dir(parent, || fs::rename(&path, &target)).map_err(io_failure(format!(
            "cannot rename into {}",
            target.display()
        )))?;
        if m.size >= RECORD_MIN_SIZE {
            let inode = fs::symlink_metadata(&target)
                .map(|md| md.ino())
                .unwrap_or(0);
            write_record(ctx, m, "file", inode);
        }
        Ok(parent.to_path_buf())
    });
    if result.is_err() {
        let _ = fs::remove_file(&path);
    }
    result.map(|dir| Published { bytes: m.size, dir })
}

/// Plaintext handed to the kernel's writeback between two kicks, so the fsync before the
/// rename only waits for the tail of the file.
const WRITEBACK_EVERY: u64 = 16 << 20;

/// A file being staged: the plaintext of segments `0..next`, decrypted in order and hashed as
/// it goes. The sink stages segments as soon as they are stored, before the manifest arrives
/// (it comes last), so publishing a large file only has its tail left to do.
#[derive(Debug)]
pub(crate) struct Staged {
    path: PathBuf,
    out: BufWriter<File>,
    plain: Sha256,
    written: u64,
    next: u32,
    flushed_at: u64,
}

impl Staged {
    /// An empty staging file for `obj` (mode 0600, in the staging directory).
    pub fn create(ctx: &Context, obj: ObjectKey) -> Result<Self, Failure> {
        let name = format!("stage-{:016x}-{}", obj.session.0, obj.object.0);
        let path = ctx.staging.join(ctx.state.unique_name(&name));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_failure(format!("cannot create {}", path.display())))?;
        Ok(Staged {
            path,
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
        Failure::Io(format!("cannot write {}: {e}", self.path.display()))
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

    /// Checks size and SHA-256 against the manifest, applies mode and mtime, and fsyncs.
    fn finish(&mut self, m: &Manifest) -> Result<(), Failure> {
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
        apply_meta(file, m.mode, m.mtime_secs, m.mtime_nanos).map_err(io_failure(format!(
            "cannot set mode/mtime of {}",
            self.path.display()
        )))?;
        file.sync_all().map_err(|e| self.write_error(e))
    }

    /// Removes the staging file (the object failed or was already delivered).
    pub fn discard(self) {
        let _ = fs::remove_file(&self.path);
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

/// Applies the recorded mode and mtime of a delivered directory (cached lookups).
pub(crate) fn reapply_dir(ctx: &Context, dir: &str, dirs: &mut DirCache) {
    let meta = *dirs.entry(dir.to_string()).or_insert_with(|| {
        ctx.state
            .read_record(dir)
            .filter(|r| r.kind == "directory")
            .map(|r| DirMeta {
                mode: r.mode,
                mtime_secs: r.mtime_secs,
                mtime_nanos: r.mtime_nanos,
            })
    });
    let Some(meta) = meta else {
        return;
    };
    let Ok(target) = paths::resolve_under(&ctx.out, dir, Target::Directory, false) else {
        return;
    };
    let applied = File::open(&target)
        .and_then(|f| apply_meta(&f, meta.mode, meta.mtime_secs, meta.mtime_nanos));
    if let Err(e) = applied {
        tracing::debug!(dir, "cannot apply directory metadata: {e}");
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

/// Whether a file with the manifest's content already sits at its path: the delivery record
/// matches the file (same inode, size and mtime), or hashing the file gives the SHA-256.
pub(crate) fn already_delivered(ctx: &Context, m: &Manifest) -> bool {
    if m.kind != EntryKind::File {
        return false;
    }
    let Ok(target) = paths::resolve_under(&ctx.out, &m.path, Target::File, false) else {
        return false;
    };
    let Ok(meta) = fs::symlink_metadata(&target) else {
        return false;
    };
    if !meta.is_file() || meta.len() != m.size {
        return false;
    }
    let sha = hex::encode(m.sha256);
    if let Some(r) = ctx.state.read_record(&m.path) {
        let same_file = r.inode == meta.ino()
            && r.size == meta.len()
            && r.mtime_secs == meta.mtime()
            && i64::from(r.mtime_nanos) == meta.mtime_nsec();
        if same_file && r.sha256 == sha {
            return true;
        }
    }
    hash_file(&target).is_ok_and(|h| h == m.sha256)
}

fn hash_file(path: &PathBuf) -> io::Result<[u8; 32]> {
    let mut file = File::open(path)?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; IO_BUFFER];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(sha.finalize().into());
        }
        sha.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_and_after_the_epoch() {
        assert_eq!(system_time(1, 5), Some(UNIX_EPOCH + Duration::new(1, 5)));
        assert_eq!(
            system_time(-1, 500),
            Some(UNIX_EPOCH - Duration::from_secs(1) + Duration::from_nanos(500))
        );
    }

    #[test]
    fn read_only_directories_still_take_new_entries() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("ro");
        fs::create_dir(&sub).unwrap();
        fs::set_permissions(&sub, Permissions::from_mode(0o555)).unwrap();
        with_writable_dir(&sub, || fs::write(sub.join("f"), b"x")).unwrap();
        assert!(sub.join("f").exists());
        let mode = fs::metadata(&sub).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o555);
        fs::set_permissions(&sub, Permissions::from_mode(0o755)).unwrap();
    }
}
