//! The state directory: everything a transfer leaves behind between frames, passes and
//! receiver restarts, written so that a SIGKILL at any instant leaves it consistent.
//!
//! ```text
//! <state>/                        default <out>/.sluice-state; mode 0700, owned by the receiver's
//!                                 user (checked at start), same file system as --out
//!   VERSION                       "sluice-state 2"
//!   lock                          flock()ed while a receiver uses the directory
//!   records.redb                  deliveries, sequences, done markers (see `records`)
//!   tmp/                          files being written, staging files; emptied at start
//!   objects/<session>-<object>/   one in-progress object (session: 16 hex digits, object: decimal)
//!       manifest                  the verified, decrypted SignedManifest envelope (postcard)
//!       seg-<i>                   decoded ciphertext of data block i, behind a 48-byte header:
//!                                 "SLSEG\0\0\x01", length (u64 LE), SHA-256 of the ciphertext
//!       partial-m, partial-<i>    symbols of a stalled manifest / data block, for a later pass:
//!                                 "SLPART\0\x02", header length (u32 LE), postcard(key,
//!                                 geometry, segment size, ids), then the symbols back to back
//! ```
//!
//! Everything is reached through directory fds opened once at start (`sluice_common::beneath`):
//! no path is looked up twice, and a directory that is not private to the receiver's user is
//! refused, since whoever can write in it could swap what the receiver verified. Every file
//! is written under `tmp/` and renamed into place, so a reader sees the old version or the new
//! one, never a torn one. Stored blocks are not fsynced (a SIGKILL loses nothing the kernel
//! already has); what a power cut might damage is caught by the hashes: the segment header's
//! SHA-256 and the age authentication when publishing, the manifest signature when loaded
//! again. In-progress objects untouched for [`PRUNE_AFTER`] are removed at start: sessions are
//! random per sender start, so they will not be resumed.

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

use crate::records::{Records, RecordsError};

/// Names one object of one sender run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Sender run.
    pub session: SessionId,
    /// Object within the run.
    pub object: ObjectId,
}

impl ObjectKey {
    /// Object `object` of sender run `session`.
    pub fn new(session: SessionId, object: ObjectId) -> Self {
        ObjectKey { session, object }
    }

    /// The object a block belongs to.
    pub fn of(block: &BlockKey) -> Self {
        ObjectKey {
            session: block.session,
            object: block.object,
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}/{}", self.session.0, self.object.0)
    }
}

/// State-directory format written in `VERSION`.
const VERSION_TEXT: &str = "sluice-state 2\n";
/// The format before delivery records moved into `records.redb`: migrated at start.
const VERSION_1_TEXT: &str = "sluice-state 1\n";
const SEGMENT_MAGIC: [u8; 8] = *b"SLSEG\0\0\x01";
/// Bytes before the ciphertext in a `seg-<i>` file.
pub const SEGMENT_HEADER_LEN: u64 = 48;
/// Version 2: the header holds the wire-v2 segment size.
const PARTIAL_MAGIC: [u8; 8] = *b"SLPART\0\x02";
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
    /// Stored segments: index, ciphertext SHA-256 (from the header) and length.
    pub segments: Vec<(u32, [u8; 32], u64)>,
    /// Saved partial blocks and their symbol bytes.
    pub partials: BTreeSet<(BlockKind, u32)>,
    /// Bytes the object holds in the state directory.
    pub bytes: u64,
}

/// The state directory, opened once.
#[derive(Debug)]
pub struct StateDir {
    /// For messages only: nothing is opened by this path after start.
    path: PathBuf,
    root: Dir,
    tmp: Dir,
    objects: Dir,
    records: Records,
    counter: AtomicU64,
    /// This process's id, part of every temporary name.
    pid: u32,
    /// Held open with an exclusive `flock` for as long as this value lives.
    _lock: File,
}

impl StateDir {
    /// Opens (creating if needed) the state directory at `path`: checks that it and its
    /// subdirectories are private to this user, takes its lock, empties `tmp/`, opens the
    /// records.
    pub fn open(path: &Path) -> Result<Self, StateError> {
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
        let records_file = root
            .open_rw("records.redb", 0o600)
            .map_err(io_err(format!("cannot open {shown}/records.redb")))?;
        let records = Records::open(records_file)?;
        Ok(StateDir {
            path: path.to_path_buf(),
            root,
            tmp,
            objects,
            records,
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

    /// `tmp/`: staging files live here.
    pub fn tmp(&self) -> &Dir {
        &self.tmp
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

    /// Stores a decoded data block with its ciphertext SHA-256.
    pub fn store_segment(
        &self,
        obj: ObjectKey,
        index: u32,
        sha256: &[u8; 32],
        data: &[u8],
    ) -> io::Result<()> {
        let dir = self.object_dir(obj, true)?;
        self.write_atomic(&dir, &format!("seg-{index}"), |w| {
            w.write_all(&SEGMENT_MAGIC)?;
            w.write_all(&(data.len() as u64).to_le_bytes())?;
            w.write_all(sha256)?;
            w.write_all(data)
        })
    }

    /// Opens a stored segment: the file positioned at the ciphertext, its length and the
    /// SHA-256 recorded when it was decoded.
    pub fn open_segment(&self, obj: ObjectKey, index: u32) -> io::Result<(File, u64, [u8; 32])> {
        let mut file = self
            .object_dir(obj, false)?
            .open_file(&format!("seg-{index}"))?;
        let (len, sha) = read_segment_header(&mut file)?;
        if beneath::stat_fd(&file)?.size != SEGMENT_HEADER_LEN + len {
            return Err(damaged(&format!("segment {index} of {obj}")));
        }
        Ok((file, len, sha))
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
        let header = postcard::to_allocvec(&(
            partial.key,
            partial.geometry,
            partial.segment_size,
            &partial.ids,
        ))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
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

    /// Removes everything kept for an in-progress object.
    pub fn remove_object(&self, obj: ObjectKey) -> io::Result<()> {
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
        Ok(found)
    }

    fn scan_object(&self, name: &str) -> io::Result<Leftover> {
        let dir = self.objects.open_dir(name)?;
        let mut left = Leftover::default();
        for entry in dir.names()? {
            let size = dir.stat(&entry)?.map_or(0, |e| e.size);
            if entry == "manifest" {
                let mut bytes = Vec::new();
                dir.open_file(&entry)?.read_to_end(&mut bytes)?;
                left.manifest = Some(bytes);
            } else if entry == "partial-m" {
                left.partials.insert((BlockKind::Manifest, 0));
            } else if let Some(i) = entry.strip_prefix("partial-").and_then(|n| n.parse().ok()) {
                left.partials.insert((BlockKind::Data, i));
            } else if let Some(i) = entry.strip_prefix("seg-").and_then(|n| n.parse().ok()) {
                let header = dir.open_file(&entry).and_then(|mut f| {
                    let (len, sha) = read_segment_header(&mut f)?;
                    Ok((size == SEGMENT_HEADER_LEN + len).then_some((sha, len)))
                });
                match header {
                    Ok(Some((sha, len))) => left.segments.push((i, sha, len)),
                    _ => {
                        tracing::warn!(segment = i, "removing a damaged stored segment");
                        dir.remove_file(&entry)?;
                        continue;
                    }
                }
            }
            left.bytes += size;
        }
        left.segments.sort_unstable_by_key(|(i, _, _)| *i);
        Ok(left)
    }
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

/// Checks (or writes) `VERSION`; a format-1 directory is migrated: its done markers and JSON
/// delivery records are dropped (the records start afresh), its stored objects kept.
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
        Some(VERSION_1_TEXT) => {
            tracing::warn!(
                state = %path.display(),
                "migrating a format-1 state directory: stored objects are kept, earlier \
                 delivery records and done markers are dropped"
            );
            for old in ["done", "delivered"] {
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

fn read_segment_header(file: &mut File) -> io::Result<(u64, [u8; 32])> {
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    file.read_exact(&mut header)?;
    if header[..8] != SEGMENT_MAGIC {
        return Err(damaged("a stored segment"));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[8..16]);
    let mut sha = [0u8; 32];
    sha.copy_from_slice(&header[16..48]);
    Ok((u64::from_le_bytes(len), sha))
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

    #[test]
    fn segments_and_partials_round_trip_and_scan() {
        use sha2::{Digest, Sha256};
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&state_path(&dir)).unwrap();
        let data = b"ciphertext bytes".to_vec();
        let sha: [u8; 32] = Sha256::digest(&data).into();
        state.store_segment(obj(1), 3, &sha, &data).unwrap();
        let (mut file, len, got) = state.open_segment(obj(1), 3).unwrap();
        let mut back = Vec::new();
        file.read_to_end(&mut back).unwrap();
        assert_eq!((len, got, back), (data.len() as u64, sha, data.clone()));

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
        let loaded = state.load_partial(&key).unwrap();
        assert_eq!(
            (loaded.segment_size, loaded.ids, loaded.symbols),
            (partial.segment_size, partial.ids, partial.symbols)
        );
        state.store_manifest(obj(1), b"envelope").unwrap();

        // A torn segment file is removed by the scan; the rest is found.
        let seg5 = state_path(&dir).join("objects/0000000000000abc-1/seg-5");
        std::fs::write(&seg5, b"SLSEG\0\0\x01short").unwrap();
        let found = state.scan().unwrap();
        assert_eq!(found.len(), 1);
        let (key1, left) = &found[0];
        assert_eq!(*key1, obj(1));
        assert_eq!(left.segments, vec![(3, sha, data.len() as u64)]);
        assert_eq!(left.manifest.as_deref(), Some(&b"envelope"[..]));
        assert!(left.partials.contains(&(BlockKind::Data, 4)));
        assert!(!seg5.exists());
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
    }

    #[test]
    fn tmp_is_emptied_the_lock_held_and_versions_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(&dir);
        let state = StateDir::open(&path).unwrap();
        state.tmp().create_file("junk", 0o600).unwrap();
        let err = StateDir::open(&path).unwrap_err();
        assert!(matches!(err, StateError::InUse(_)), "{err}");
        drop(state);
        let state = StateDir::open(&path).unwrap();
        assert!(state.tmp().names().unwrap().is_empty());
        drop(state);
        std::fs::write(path.join("VERSION"), "something else").unwrap();
        assert!(matches!(
            StateDir::open(&path),
            Err(StateError::Version { .. })
        ));
        // A format-1 directory is migrated, its stored objects kept.
        std::fs::write(path.join("VERSION"), VERSION_1_TEXT).unwrap();
        std::fs::create_dir_all(path.join("done/0000000000000abc")).unwrap();
        std::fs::create_dir_all(path.join("objects/0000000000000abc-9")).unwrap();
        let state = StateDir::open(&path).unwrap();
        assert!(!path.join("done").exists());
        assert_eq!(state.scan().unwrap().len(), 1);
    }

    #[test]
    fn a_state_directory_others_can_reach_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(&dir);
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = StateDir::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("accessible by group or others (mode 755)") && err.contains("chmod 700"),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::create_dir(path.join("objects")).unwrap();
        std::fs::set_permissions(path.join("objects"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        let err = StateDir::open(&path).unwrap_err().to_string();
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
