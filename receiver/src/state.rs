//! The state directory: everything a transfer leaves behind between frames, passes and
//! receiver restarts, written so that a SIGKILL at any instant leaves it consistent.
//!
//! ```text
//! <state>/                        default <out>/.sluice-state; mode 0700, owned by the receiver's
//!                                 user (checked at start)
//!   VERSION                       "sluice-state 3"
//!   lock                          flock()ed while a receiver uses the directory
//!   records.redb                  deliveries, sequences, done markers (see `records`)
//!   tmp/                          files being written; emptied at start
//!   staging/                      content files: the plaintext of in-progress objects, each
//!                                 segment decrypted straight to its offset, renamed into
//!                                 --out when complete (when the state directory is on another
//!                                 file system than --out: <out>/.sluice-state/staging instead)
//!   staging/held/                 files waiting for their model's signature (`[signing]`):
//!                                 <id> and <id>.meta (JSON: the entry, its signer), see `held`
//!   objects/<session>-<object>/   one in-progress object (session: 16 hex digits, object: decimal)
//!       manifest                  the verified, decrypted SignedManifest envelope (postcard)
//!       segments                  one 56-byte record per segment in the content file, appended:
//!                                 "SLSR", index, segment size, plaintext length, ciphertext
//!                                 length (u32 LE each), age header MAC (32), CRC-32C of the rest
//!       partial-m, partial-<i>    symbols of a stalled manifest / data block, for a later pass:
//!                                 "SLPART\0\x02", header length (u32 LE), postcard(key,
//!                                 geometry, segment size, ids), then the symbols back to back
//! ```
//!
//! Everything is reached through directory fds opened once at start (`sluice_common::beneath`):
//! no path is looked up twice, and a directory that is not private to the receiver's user is
//! refused, since whoever can write in it could swap what the receiver verified. Each byte of
//! content is written once: a decoded segment is decrypted into the content file at its
//! offset, then its record is appended. Neither is fsynced (a SIGKILL loses nothing the kernel
//! already has); what a power cut might damage is caught before anything is published: the
//! whole content's SHA-256 against the signed manifest (the object then fails and a later
//! sender run brings it again), the record's CRC, the manifest's signature when loaded again.
//! Other files are written under `tmp/` and renamed into place, so a reader sees the old
//! version or the new one, never a torn one. In-progress objects untouched for
//! [`PRUNE_AFTER`] are removed at start: sessions are random per sender start, so they will
//! not be resumed.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use sluice_common::beneath::{self, Dir, Entry};
use sluice_protocol::fec::Geometry;
use sluice_protocol::rx::PartialBlock;
use sluice_protocol::wire::{self, BlockKey, BlockKind, ObjectId, SessionId};

use crate::footprint::{Disk, Footprint};
use crate::object::ObjectKey;
use crate::records::{Records, RecordsError};
use crate::segment::{StoredSegment, RECORD_LEN};

/// State-directory format written in `VERSION`.
const VERSION_TEXT: &str = "sluice-state 3\n";
/// The format before delivery records moved into `records.redb`: migrated at start.
const VERSION_1_TEXT: &str = "sluice-state 1\n";
/// The format that kept each segment's ciphertext (`seg-<i>` files): migrated at start.
const VERSION_2_TEXT: &str = "sluice-state 2\n";
/// Version 2: the header holds the wire-v2 segment size.
const PARTIAL_MAGIC: [u8; 8] = *b"SLPART\0\x02";
/// The subdirectory of `staging/` where files wait for their model's signature.
const HELD: &str = "held";
/// In-progress objects untouched for this long are removed at start.
pub const PRUNE_AFTER: Duration = Duration::from_secs(14 * 24 * 3600);

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The file system refused.
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    /// A directory someone else could write in (or read): the receiver would trust whatever
    /// they put there.
    #[error("{path} is {problem}; refusing to use it (run `{fix}`, or pick another --state)")]
    NotPrivate {
        path: PathBuf,
        problem: String,
        fix: String,
    },
    /// Another receiver holds the lock.
    #[error("{0} is in use by another sluice-recv")]
    InUse(PathBuf),
    /// Not a state directory of a format this receiver knows.
    #[error("{path}/VERSION holds {found:?}, not {VERSION_TEXT:?}: not a sluice state directory of this version")]
    Version { path: PathBuf, found: String },
    /// The delivery records.
    #[error(transparent)]
    Records(#[from] RecordsError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StateError {
    let what = what.into();
    move |source| StateError::Io { what, source }
}

/// Refuses a directory that is not private to the receiver's user.
pub fn check_private(path: &Path, entry: &Entry) -> Result<(), StateError> {
    let me = rustix::process::geteuid().as_raw();
    let shown = path.display();
    if entry.uid != me {
        return Err(StateError::NotPrivate {
            path: path.to_path_buf(),
            problem: format!(
                "owned by uid {}, not by this receiver's uid {me}",
                entry.uid
            ),
            fix: format!("chown {me} {shown} && chmod 700 {shown}"),
        });
    }
    if entry.mode & 0o077 != 0 {
        return Err(StateError::NotPrivate {
            path: path.to_path_buf(),
            problem: format!(
                "accessible by group or others (mode {:o})",
                entry.mode & 0o7777
            ),
            fix: format!("chmod 700 {shown}"),
        });
    }
    Ok(())
}

/// What a previous run left for one object.
#[derive(Debug, Default)]
pub struct Leftover {
    /// The stored SignedManifest envelope, if the manifest was decoded.
    pub manifest: Option<Vec<u8>>,
    /// Segments in the content file (the last record of an index wins).
    pub segments: Vec<StoredSegment>,
    /// Saved partial blocks.
    pub partials: BTreeSet<(BlockKind, u32)>,
    /// What the object holds on disk, as `du` counts it (see [`Footprint`]).
    pub footprint: Footprint,
}

/// Locks that content-file writes take turns at (see [`StateDir::store_segment`]).
const CONTENT_WRITE_LOCKS: usize = 16;

/// The state directory, opened once.
#[derive(Debug)]
pub struct StateDir {
    /// For messages only: nothing is opened by this path after start.
    path: PathBuf,
    root: Dir,
    tmp: Dir,
    objects: Dir,
    /// Content files, renamed from here into `--out`: on its file system.
    staging: Dir,
    /// `staging/held/`: files waiting for their model's signature (see `held`).
    held: Dir,
    records: Records,
    /// Writers of one content file take turns here, not at the kernel's inode lock: a decoder
    /// waiting there spins for the whole of the other's copy (measured: two threads writing
    /// one file took twice the CPU of one), here it sleeps.
    content_writes: [std::sync::Mutex<()>; CONTENT_WRITE_LOCKS],
    counter: AtomicU64,
    /// This process's id, part of every temporary name.
    pid: u32,
    /// Held open with an exclusive `flock` for as long as this value lives.
    _lock: File,
}

impl StateDir {
    /// Opens (creating if needed) the state directory at `path`: checks that it and its
    /// subdirectories are private to this user, takes its lock, empties `tmp/`, opens the
    /// records, and picks the staging directory on `out`'s file system.
    pub fn open(path: &Path, out: &Dir, out_path: &Path) -> Result<Self, StateError> {
        let shown = path.display().to_string();
        // Created private; an existing directory is checked below, never changed.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(io_err(format!("cannot create {shown}")))?;
        let root = Dir::open(path).map_err(io_err(format!("cannot open {shown}")))?;
        check_private(path, &root.stat_self().map_err(io_err(shown.clone()))?)?;
        let lock = lock(&root, path)?;
        check_version(&root, path)?;
        root.remove_all("tmp")
            .map_err(io_err(format!("cannot empty {shown}/tmp")))?;
        let tmp = private_subdir(&root, path, "tmp")?;
        let objects = private_subdir(&root, path, "objects")?;
        let staging = staging_dir(&root, path, out, out_path)?;
        let held = private_subdir(&staging, &path.join("staging"), HELD)?;
        let records_file = root
            .open_rw("records.redb", 0o600)
            .map_err(io_err(format!("cannot open {shown}/records.redb")))?;
        let records = Records::open(records_file)?;
        Ok(StateDir {
            path: path.to_path_buf(),
            root,
            tmp,
            objects,
            staging,
            held,
            records,
            content_writes: Default::default(),
            counter: AtomicU64::new(0),
            pid: std::process::id(),
            _lock: lock,
        })
    }

    /// The state directory's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state directory itself.
    pub fn root(&self) -> &Dir {
        &self.root
    }

    /// Where content files and a pack's files are staged before they are renamed into
    /// `--out`.
    pub fn staging(&self) -> &Dir {
        &self.staging
    }

    /// Where files wait for their model's signature (in the staging directory: renamed from
    /// and back to it).
    pub fn held(&self) -> &Dir {
        &self.held
    }

    /// The allocation unit of the file systems holding the state and staging directories
    /// (the larger), in which incomplete objects are charged (`--max-state`).
    pub fn disk(&self) -> Disk {
        let block = |dir: &Dir| {
            rustix::fs::fstatvfs(dir).map_or(0, |v| {
                if v.f_frsize > 0 {
                    v.f_frsize
                } else {
                    v.f_bsize
                }
            })
        };
        Disk::new(block(&self.root).max(block(&self.staging)))
    }

    /// The delivery records.
    pub fn records(&self) -> &Records {
        &self.records
    }

    /// A name no other file of this process uses (`what-<pid>-<n>`).
    pub fn unique_name(&self, what: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{what}-{}-{n}", self.pid)
    }

    /// Writes a file in `tmp/` and renames it to `name` in `dest`.
    fn write_atomic(
        &self,
        dest: &Dir,
        name: &str,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        let tmp_name = self.unique_name("w");
        let result = (|| {
            let file = self.tmp.create_file(&tmp_name, 0o600)?;
            let mut writer = io::BufWriter::with_capacity(64 * 1024, file);
            write(&mut writer)?;
            writer.flush()?;
            drop(writer);
            self.tmp.rename(&tmp_name, dest, name)
        })();
        if result.is_err() {
            let _ = self.tmp.remove_file(&tmp_name);
        }
        result
    }

    fn object_name(obj: ObjectKey) -> String {
        format!("{:016x}-{}", obj.session.0, obj.object.0)
    }

    /// The directory of an in-progress object, created if asked (0700).
    fn object_dir(&self, obj: ObjectKey, create: bool) -> io::Result<Dir> {
        let name = Self::object_name(obj);
        if create {
            self.objects.create_dir(&name, 0o700)?;
        }
        self.objects.open_dir(&name)
    }

    /// The content file's name in the staging directory.
    pub fn content_name(obj: ObjectKey) -> String {
        Self::object_name(obj)
    }

    /// Writes a decrypted segment into `obj`'s content file at its offset, then appends its
    /// record: a record always describes bytes already handed to the kernel.
    pub fn store_segment(
        &self,
        obj: ObjectKey,
        segment: &StoredSegment,
        plaintext: &[u8],
    ) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let dir = self.object_dir(obj, true)?;
        let content = self.staging.open_rw(&Self::content_name(obj), 0o600)?;
        {
            // Objects spread over the locks; a poisoned lock guards nothing but the turn.
            let turn = (obj.session.0 ^ obj.object.0) as usize % CONTENT_WRITE_LOCKS;
            let _turn = self.content_writes[turn]
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            content.write_all_at(plaintext, segment.offset())?;
        }
        dir.open_append("segments", 0o600)?
            .write_all(&segment.to_record())
    }

    /// Opens `obj`'s content file for reading and writing.
    pub fn open_content(&self, obj: ObjectKey) -> io::Result<File> {
        self.staging.open_rw(&Self::content_name(obj), 0o600)
    }

    /// Stores the verified manifest envelope of `obj`.
    pub fn store_manifest(&self, obj: ObjectKey, envelope: &[u8]) -> io::Result<()> {
        let dir = self.object_dir(obj, true)?;
        self.write_atomic(&dir, "manifest", |w| w.write_all(envelope))
    }

    fn partial_name(key: &BlockKey) -> String {
        match key.kind {
            BlockKind::Manifest => "partial-m".to_string(),
            BlockKind::Data => format!("partial-{}", key.index),
        }
    }

    /// Saves the symbols of a stalled block.
    pub fn store_partial(&self, partial: &PartialBlock) -> io::Result<()> {
        let header = partial_header(partial)?;
        let header_len = u32::try_from(header.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "partial header too long"))?;
        let dir = self.object_dir(ObjectKey::of(&partial.key), true)?;
        self.write_atomic(&dir, &Self::partial_name(&partial.key), |w| {
            w.write_all(&PARTIAL_MAGIC)?;
            w.write_all(&header_len.to_le_bytes())?;
            w.write_all(&header)?;
            w.write_all(&partial.symbols)
        })
    }

    /// Loads the saved symbols of a block, checking they are self-consistent.
    pub fn load_partial(&self, key: &BlockKey) -> io::Result<PartialBlock> {
        let mut file = self
            .object_dir(ObjectKey::of(key), false)?
            .open_file(&Self::partial_name(key))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        parse_partial(&bytes)
            .filter(|p| p.key == *key)
            .ok_or_else(|| damaged("saved symbols"))
    }

    /// Removes the saved symbols of a block (it was decoded).
    pub fn remove_partial(&self, key: &BlockKey) {
        if let Ok(dir) = self.object_dir(ObjectKey::of(key), false) {
            let _ = dir.remove_file(&Self::partial_name(key));
        }
    }

    /// Removes everything kept for an in-progress object: its records and its content file.
    pub fn remove_object(&self, obj: ObjectKey) -> io::Result<()> {
        self.staging.remove_file(&Self::content_name(obj))?;
        self.objects.remove_all(&Self::object_name(obj))
    }

    /// Whether an earlier run finished `obj` or left part of it here.
    pub fn knows(&self, obj: ObjectKey) -> bool {
        self.records.is_done(obj).unwrap_or(false)
            || matches!(self.objects.stat(&Self::object_name(obj)), Ok(Some(_)))
    }

    /// Reads what earlier runs left in `objects/`; removes objects already done, damaged
    /// segment files, and objects untouched for [`PRUNE_AFTER`].
    pub fn scan(&self) -> Result<Vec<(ObjectKey, Leftover)>, StateError> {
        let now = SystemTime::now();
        let mut found = Vec::new();
        let names = self.objects.names().map_err(io_err(format!(
            "cannot read {}/objects",
            self.path.display()
        )))?;
        for name in names {
            let Some(obj) = parse_object_dir(&name) else {
                tracing::warn!(entry = %sluice_common::paths::escaped(&name), "ignoring an unknown entry in the state directory");
                continue;
            };
            let remove = |why: &str| {
                tracing::info!(object = %obj, "{why}");
                self.objects.remove_all(&name)
            };
            let old = self.objects.stat(&name).ok().flatten().is_some_and(|e| {
                beneath::system_time(e.mtime_secs, e.mtime_nanos)
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|age| age > PRUNE_AFTER)
            });
            let result = if self.records.is_done(obj)? {
                remove("removing the blocks of an object already finished")
            } else if old {
                remove("pruning an incomplete object of an old session")
            } else {
                match self.scan_object(&name) {
                    Ok(left) => {
                        found.push((obj, left));
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            };
            result.map_err(io_err(format!("cannot read the stored object {obj}")))?;
        }
        found.sort_by_key(|(obj, _)| *obj);
        self.sweep_staging(&found).map_err(io_err(format!(
            "cannot clean the staging directory of {}",
            self.path.display()
        )))?;
        Ok(found)
    }

    /// Removes from the staging directory everything but the content files of `kept`
    /// objects: files of objects finished or pruned, and a pack's files a crash left.
    fn sweep_staging(&self, kept: &[(ObjectKey, Leftover)]) -> io::Result<()> {
        let keep: BTreeSet<String> = kept
            .iter()
            .map(|(obj, _)| Self::content_name(*obj))
            .collect();
        for name in self.staging.names()? {
            if !keep.contains(&name) && name != HELD {
                self.staging.remove_all(&name)?;
            }
        }
        Ok(())
    }

    fn scan_object(&self, name: &str) -> io::Result<Leftover> {
        let dir = self.objects.open_dir(name)?;
        let mut left = Leftover::default();
        // What `du` counts: the directory, each file in it, the content file; and their names.
        let mut du = allocated_self(&dir)?;
        let mut names = 1;
        let mut log = 0;
        for entry in dir.names()? {
            du = du.saturating_add(allocated(&dir, &entry)?);
            names += 1;
            if entry == "manifest" {
                let mut bytes = Vec::new();
                dir.open_file(&entry)?.read_to_end(&mut bytes)?;
                left.manifest = Some(bytes);
            } else if entry == "segments" {
                let mut bytes = Vec::new();
                dir.open_file(&entry)?.read_to_end(&mut bytes)?;
                log = bytes.len() as u64;
                let mut by_index = std::collections::BTreeMap::new();
                // A record torn by a crash fails its CRC (or is short): it and what follows
                // are dropped, so those segments are simply received again.
                for record in bytes.chunks(RECORD_LEN) {
                    match StoredSegment::from_record(record) {
                        Some(segment) => by_index.insert(segment.index, segment),
                        None => {
                            tracing::warn!(object = name, "dropping damaged segment records");
                            break;
                        }
                    };
                }
                left.segments = by_index.into_values().collect();
            } else if entry == "partial-m" {
                left.partials.insert((BlockKind::Manifest, 0));
            } else if let Some(i) = entry.strip_prefix("partial-").and_then(|n| n.parse().ok()) {
                left.partials.insert((BlockKind::Data, i));
            }
        }
        // The content file has the object directory's name.
        let content = self.staging.stat(name)?;
        if let Some(content) = &content {
            du = du.saturating_add(allocated(&self.staging, name)?);
            names += 1;
            // Records past the end of the content file describe bytes a crash lost.
            left.segments
                .retain(|s| s.offset() + u64::from(s.plain_len) <= content.size);
        } else {
            left.segments.clear();
        }
        left.footprint = Footprint::measured(du, names, log, content.is_some());
        Ok(left)
    }
}

/// What `du` counts for `name` in `dir` (its allocated blocks); nothing if it is gone.
fn allocated(dir: &Dir, name: &str) -> io::Result<u64> {
    match rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(blocks_bytes(&stat)),
        Err(rustix::io::Errno::NOENT) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// What `du` counts for the directory itself.
fn allocated_self(dir: &Dir) -> io::Result<u64> {
    Ok(blocks_bytes(&rustix::fs::fstat(dir)?))
}

/// `st_blocks` counts 512-byte units whatever the file system's block size.
fn blocks_bytes(stat: &rustix::fs::Stat) -> u64 {
    // `st_blocks` is signed on some targets.
    #[allow(clippy::useless_conversion)]
    u64::try_from(stat.st_blocks)
        .unwrap_or(0)
        .saturating_mul(512)
}

/// Where content files go: the state's `staging/` when it shares a file system with `out`
/// (rename is atomic only within one), else a private `.sluice-state/staging` under `out` (a
/// reserved name no object can take).
fn staging_dir(root: &Dir, path: &Path, out: &Dir, out_path: &Path) -> Result<Dir, StateError> {
    let device = |dir: &Dir| dir.stat_self().map(|e| e.device).ok();
    if device(out) == device(root) {
        return private_subdir(root, path, "staging");
    }
    let shown = out_path
        .join(sluice_common::paths::RESERVED_STATE_DIR)
        .join("staging");
    tracing::warn!(
        state = %path.display(),
        staging = %shown.display(),
        "the state directory is on another file system than --out; staging files in --out"
    );
    let (staging, _) = out
        .walk(
            &[sluice_common::paths::RESERVED_STATE_DIR, "staging"],
            Some(0o700),
            out_path,
        )
        .map_err(|e| StateError::Io {
            what: format!("cannot create {}", shown.display()),
            source: io::Error::other(e.to_string()),
        })?;
    let entry = staging
        .stat_self()
        .map_err(io_err(format!("cannot open {}", shown.display())))?;
    check_private(&shown, &entry)?;
    Ok(staging)
}

/// A subdirectory of the state directory, created private if missing, refused if not private.
fn private_subdir(root: &Dir, path: &Path, name: &str) -> Result<Dir, StateError> {
    let shown = path.join(name);
    root.create_dir(name, 0o700)
        .map_err(io_err(format!("cannot create {}", shown.display())))?;
    let dir = root
        .open_dir(name)
        .map_err(io_err(format!("cannot open {}", shown.display())))?;
    check_private(
        &shown,
        &dir.stat_self()
            .map_err(io_err(shown.display().to_string()))?,
    )?;
    Ok(dir)
}

/// Checks (or writes) `VERSION`; a format-1 or -2 directory is migrated: its in-progress
/// objects are dropped (and format 1's done markers and JSON delivery records).
fn check_version(root: &Dir, path: &Path) -> Result<(), StateError> {
    let text = match root.open_file("VERSION") {
        Ok(mut f) => {
            let mut text = String::new();
            f.read_to_string(&mut text)
                .map_err(io_err(format!("cannot read {}/VERSION", path.display())))?;
            Some(text)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(format!("cannot open {}/VERSION", path.display()))(e)),
    };
    match text.as_deref() {
        Some(VERSION_TEXT) => return Ok(()),
        Some(old @ (VERSION_1_TEXT | VERSION_2_TEXT)) => {
            // Their in-progress objects hold ciphertext of an older manifest version, from
            // sender sessions that are over: a later sender run brings them again.
            tracing::warn!(
                state = %path.display(),
                "migrating a format-{} state directory: in-progress objects are dropped",
                if old == VERSION_1_TEXT { 1 } else { 2 }
            );
            let mut dropped = vec!["objects"];
            if old == VERSION_1_TEXT {
                // Format 1 kept done markers and JSON records; `records.redb` starts afresh.
                dropped.extend(["done", "delivered"]);
            }
            for old in dropped {
                root.remove_all(old)
                    .map_err(io_err(format!("cannot remove {}/{old}", path.display())))?;
            }
        }
        Some(other) => {
            return Err(StateError::Version {
                path: path.to_path_buf(),
                found: other.trim().to_string(),
            })
        }
        None => {}
    }
    let tmp = format!("VERSION.{}", std::process::id());
    let written = root.create_file(&tmp, 0o600).and_then(|mut f| {
        f.write_all(VERSION_TEXT.as_bytes())?;
        f.sync_all()?;
        root.rename(&tmp, root, "VERSION")
    });
    written.map_err(io_err(format!("cannot write {}/VERSION", path.display())))
}

/// Takes the directory's lock, so two receivers never share (and corrupt) one state.
fn lock(root: &Dir, path: &Path) -> Result<File, StateError> {
    let file = root
        .open_rw("lock", 0o600)
        .map_err(io_err(format!("cannot open {}/lock", path.display())))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(StateError::InUse(path.to_path_buf())),
        Err(e) => Err(io_err(format!("cannot lock {}", path.display()))(e.into())),
    }
}

fn damaged(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what} is damaged"))
}

fn parse_object_dir(name: &str) -> Option<ObjectKey> {
    let (session, object) = name.split_once('-')?;
    if session.len() != 16 {
        return None;
    }
    Some(ObjectKey {
        session: SessionId(u64::from_str_radix(session, 16).ok()?),
        object: ObjectId(object.parse().ok()?),
    })
}

/// The header of a saved-symbols file: postcard(key, geometry, segment size, ids).
fn partial_header(partial: &PartialBlock) -> io::Result<Vec<u8>> {
    postcard::to_allocvec(&(
        partial.key,
        partial.geometry,
        partial.segment_size,
        &partial.ids,
    ))
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
}

/// The length of the file [`StateDir::store_partial`] writes for `partial`, known before it
/// is written (what the delivery core charges it).
pub(crate) fn partial_len(partial: &PartialBlock) -> u64 {
    // A header that cannot be encoded is not written; counting its ids is an upper bound.
    let header = partial_header(partial).map_or(64 + 3 * partial.ids.len(), |h| h.len());
    (PARTIAL_MAGIC.len() + 4 + header + partial.symbols.len()) as u64
}

fn parse_partial(bytes: &[u8]) -> Option<PartialBlock> {
    let rest = bytes.strip_prefix(&PARTIAL_MAGIC)?;
    let (len, rest) = rest.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
    let header = rest.get(..len)?;
    let symbols = rest.get(len..)?;
    let (key, geometry, segment_size, ids): (BlockKey, Geometry, u32, Vec<u16>) =
        postcard::from_bytes(header).ok()?;
    geometry.validate().ok()?;
    wire::check_segment_size(key.kind, segment_size).ok()?;
    if symbols.len() != ids.len() * usize::from(geometry.symbol_size) {
        return None;
    }
    Some(PartialBlock {
        key,
        geometry,
        segment_size,
        ids,
        symbols: symbols.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn obj(o: u64) -> ObjectKey {
        ObjectKey {
            session: SessionId(0xabc),
            object: ObjectId(o),
        }
    }

    fn state_path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("state")
    }

    /// Opens the state directory at `path`, with `--out` beside it.
    fn open(path: &Path) -> Result<StateDir, StateError> {
        let out_path = path.with_file_name("out");
        std::fs::create_dir_all(&out_path).unwrap();
        StateDir::open(path, &Dir::open(&out_path).unwrap(), &out_path)
    }

    fn segment(index: u32, plain_len: u32) -> StoredSegment {
        crate::segment::sample(index, plain_len)
    }

    #[test]
    fn segments_land_at_their_offset_and_partials_round_trip_and_scan() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let state = open(&state_path(&dir)).unwrap();
        // Segment 1 before segment 0: each at its own offset, 16 bytes per segment.
        state
            .store_segment(obj(1), &segment(1, 5), b"world")
            .unwrap();
        state
            .store_segment(obj(1), &segment(0, 16), b"hello, segments!")
            .unwrap();
        let mut back = vec![0; 21];
        state
            .open_content(obj(1))
            .unwrap()
            .read_exact_at(&mut back, 0)
            .unwrap();
        assert_eq!(back, b"hello, segments!world");

        let geometry = Geometry::new(200, 64, 2).unwrap();
        let key = BlockKey {
            session: SessionId(0xabc),
            object: ObjectId(1),
            kind: BlockKind::Data,
            index: 4,
        };
        let partial = PartialBlock {
            key,
            geometry,
            segment_size: 1 << 20,
            ids: vec![0, 4],
            symbols: vec![7; 128],
        };
        state.store_partial(&partial).unwrap();
        // Its length is known before it is written (the delivery core charges it then).
        let written = state_path(&dir).join("objects/0000000000000abc-1/partial-4");
        assert_eq!(
            partial_len(&partial),
            std::fs::metadata(written).unwrap().len()
        );
        let loaded = state.load_partial(&key).unwrap();
        assert_eq!(
            (loaded.segment_size, loaded.ids, loaded.symbols),
            (partial.segment_size, partial.ids, partial.symbols)
        );
        state.store_manifest(obj(1), b"envelope").unwrap();

        // A record torn by a crash is dropped; a record past the end of the content file
        // (its bytes lost) too; the rest is found. Stray staging files are removed.
        let records = state_path(&dir).join("objects/0000000000000abc-1/segments");
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(&records)
            .unwrap();
        log.write_all(&segment(7, 16).to_record()).unwrap();
        log.write_all(&segment(5, 16).to_record()[..20]).unwrap();
        drop(log);
        let stray = state_path(&dir).join("staging/pack-1-1");
        std::fs::write(&stray, b"left by a crash").unwrap();
        let found = state.scan().unwrap();
        assert_eq!(found.len(), 1);
        let (key1, left) = &found[0];
        assert_eq!(*key1, obj(1));
        assert_eq!(left.segments, vec![segment(0, 16), segment(1, 5)]);
        assert_eq!(left.manifest.as_deref(), Some(&b"envelope"[..]));
        assert!(left.partials.contains(&(BlockKind::Data, 4)));
        // Charged what `du` counts of its directory, its files and its content file, and
        // their names.
        let du = |p: PathBuf| {
            use std::os::unix::fs::MetadataExt;
            let own = std::fs::symlink_metadata(&p).unwrap().blocks() * 512;
            let inside: u64 = std::fs::read_dir(&p)
                .into_iter()
                .flatten()
                .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
                .sum();
            own + inside
        };
        let measured = du(state_path(&dir).join("objects/0000000000000abc-1"))
            + du(state_path(&dir).join("staging/0000000000000abc-1"));
        let names = 5 * crate::footprint::NAME_BYTES; // dir, 3 files, content
        assert!(measured > 0);
        assert_eq!(left.footprint.charged(), measured + names);
        assert!(!stray.exists());
        assert!(state.knows(obj(1)) && !state.knows(obj(2)));

        // Finished objects are cleaned out of objects/ at the next scan.
        state
            .records()
            .commit(&[crate::records::Finished {
                obj: obj(1),
                deliveries: Vec::new(),
            }])
            .unwrap();
        assert!(state.scan().unwrap().is_empty());
        assert!(!state_path(&dir).join("objects/0000000000000abc-1").exists());
        assert!(!state_path(&dir).join("staging/0000000000000abc-1").exists());
    }

    #[test]
    fn tmp_is_emptied_the_lock_held_and_versions_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(&dir);
        let state = open(&path).unwrap();
        std::fs::write(path.join("tmp/junk"), b"").unwrap();
        let err = open(&path).unwrap_err();
        assert!(matches!(err, StateError::InUse(_)), "{err}");
        drop(state);
        let state = open(&path).unwrap();
        assert!(!path.join("tmp/junk").exists());
        drop(state);
        std::fs::write(path.join("VERSION"), "something else").unwrap();
        assert!(matches!(open(&path), Err(StateError::Version { .. })));
        // Format-1 and -2 directories are migrated: their in-progress objects (ciphertext of
        // an older manifest version) are dropped, format 1's done markers too.
        for old in [VERSION_1_TEXT, VERSION_2_TEXT] {
            std::fs::write(path.join("VERSION"), old).unwrap();
            std::fs::create_dir_all(path.join("done/0000000000000abc")).unwrap();
            std::fs::create_dir_all(path.join("objects/0000000000000abc-9")).unwrap();
            std::fs::write(path.join("objects/0000000000000abc-9/seg-0"), b"old").unwrap();
            let state = open(&path).unwrap();
            assert_eq!(path.join("done").exists(), old == VERSION_2_TEXT);
            assert!(state.scan().unwrap().is_empty());
            assert_eq!(
                std::fs::read_to_string(path.join("VERSION")).unwrap(),
                VERSION_TEXT
            );
            drop(state);
            let _ = std::fs::remove_dir_all(path.join("done"));
        }
    }

    #[test]
    fn a_state_directory_others_can_reach_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(&dir);
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = open(&path).unwrap_err().to_string();
        assert!(
            err.contains("accessible by group or others (mode 755)") && err.contains("chmod 700"),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::create_dir(path.join("objects")).unwrap();
        std::fs::set_permissions(path.join("objects"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        let err = open(&path).unwrap_err().to_string();
        assert!(
            err.contains("objects") && err.contains("chmod 700"),
            "{err}"
        );
    }

    #[test]
    fn damaged_partials_are_refused() {
        assert!(parse_partial(b"SLPART\0\x02\xff\xff\xff\xff").is_none());
        assert!(parse_partial(b"garbage").is_none());
    }
}
