//! The state directory: everything a transfer leaves behind between frames, passes and
//! receiver restarts, written so that a SIGKILL at any instant leaves it consistent.
//!
//! ```text
//! <state>/                        default <out>/.sluice-state, mode 0700, same file system as --out
//!   VERSION                       "sluice-state 1"
//!   lock                          flock()ed while a receiver uses the directory
//!   tmp/                          files being written; emptied at start
//!   objects/<session>-<object>/   one in-progress object (session: 16 hex digits, object: decimal)
//!       manifest                  the verified, decrypted SignedManifest envelope (postcard)
//!       seg-<i>                   decoded ciphertext of data block i, behind a 48-byte header:
//!                                 "SLSEG\0\0\x01", length (u64 LE), SHA-256 of the ciphertext
//!       partial-m, partial-<i>    symbols of a stalled manifest / data block, for a later pass:
//!                                 "SLPART\0\x01", header length (u32 LE), postcard(key,
//!                                 geometry, ids), then the symbols back to back
//!   done/<session>/<object>       empty marker: the object was delivered (or already was)
//!   delivered/<xx>/<sha256(path)>.json
//!                                 the last delivery at that path: path, kind, SHA-256, size,
//!                                 mode, mtime, inode (recognises re-sent content, restores
//!                                 directory mtimes after their contents)
//! ```
//!
//! Every file is written under `tmp/` and renamed into place, so a reader sees the old
//! version or the new one, never a torn one. State files are not fsynced (a SIGKILL loses
//! nothing the kernel already has); what a power cut might damage is caught by the hashes:
//! the segment header's SHA-256 and the age authentication when publishing, the manifest
//! signature when it is loaded again. Published files themselves are fsynced before and after
//! their rename. In-progress objects and done markers untouched for [`PRUNE_AFTER`] are removed
//! at start: sessions are random per sender start, so they will not be resumed.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sluice_protocol::fec::Geometry;
use sluice_protocol::rx::PartialBlock;
use sluice_protocol::wire::{BlockKey, BlockKind, ObjectId, SessionId};

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
const VERSION_TEXT: &str = "sluice-state 1\n";
const SEGMENT_MAGIC: [u8; 8] = *b"SLSEG\0\0\x01";
/// Bytes before the ciphertext in a `seg-<i>` file.
pub const SEGMENT_HEADER_LEN: u64 = 48;
const PARTIAL_MAGIC: [u8; 8] = *b"SLPART\0\x01";
/// In-progress objects and done markers older than this are removed at start.
pub const PRUNE_AFTER: Duration = Duration::from_secs(14 * 24 * 3600);

/// Paths and atomic writes inside the state directory.
#[derive(Debug)]
pub struct StateDir {
    root: PathBuf,
    tmp: PathBuf,
    objects: PathBuf,
    done: PathBuf,
    delivered: PathBuf,
    counter: AtomicU64,
    /// This process's id, part of every temporary name.
    pid: u32,
    /// Held open with an exclusive `flock` for as long as this value lives.
    _lock: File,
}

/// What a previous run left for one object.
#[derive(Debug, Default)]
pub struct Leftover {
    /// The stored SignedManifest envelope, if the manifest was decoded.
    pub manifest: Option<Vec<u8>>,
    /// Stored segments: index and ciphertext SHA-256 (from the header).
    pub segments: Vec<(u32, [u8; 32])>,
    /// Saved partial blocks.
    pub partials: BTreeSet<(BlockKind, u32)>,
}

/// The last delivery at one path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Object path under `--out`.
    pub path: String,
    /// `"file"` or `"directory"`.
    pub kind: String,
    /// Plaintext SHA-256, hex (files).
    pub sha256: String,
    /// Plaintext bytes.
    pub size: u64,
    /// Permission bits applied.
    pub mode: u32,
    /// Modification time applied, seconds.
    pub mtime_secs: i64,
    /// Modification time applied, nanoseconds.
    pub mtime_nanos: u32,
    /// Inode of the published file (a replaced file has another one).
    pub inode: u64,
}

fn create_private_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

impl StateDir {
    /// Opens (creating if needed) the state directory at `root` and empties `tmp/`.
    pub fn open(root: &Path) -> io::Result<Self> {
        create_private_dir(root)?;
        let version = root.join("VERSION");
        match fs::read_to_string(&version) {
            Ok(text) if text == VERSION_TEXT => {}
            Ok(text) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} holds {:?}, not {VERSION_TEXT:?}: not a sluice state directory of this version",
                        version.display(),
                        text.trim()
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::write(&version, VERSION_TEXT)?,
            Err(e) => return Err(e),
        }
        let lock = lock(root)?;
        let state = StateDir {
            _lock: lock,
            tmp: root.join("tmp"),
            objects: root.join("objects"),
            done: root.join("done"),
            delivered: root.join("delivered"),
            root: root.to_path_buf(),
            counter: AtomicU64::new(0),
            pid: std::process::id(),
        };
        if state.tmp.exists() {
            fs::remove_dir_all(&state.tmp)?;
        }
        for dir in [&state.tmp, &state.objects, &state.done, &state.delivered] {
            create_private_dir(dir)?;
        }
        Ok(state)
    }

    /// The state directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A name no other file of this process uses (`what-<pid>-<n>`).
    pub fn unique_name(&self, what: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{what}-{}-{n}", self.pid)
    }

    /// A fresh, unused path under `tmp/`.
    pub fn tmp_path(&self, what: &str) -> PathBuf {
        self.tmp.join(self.unique_name(what))
    }

    /// Writes a file through `tmp/` and renames it to `dest`, creating `dest`'s directory
    /// (0700) only if the rename finds it missing: the common case costs no `mkdir`.
    pub fn write_atomic(
        &self,
        dest: &Path,
        write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        let tmp = self.tmp_path("w");
        let result = (|| {
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            let mut writer = io::BufWriter::with_capacity(64 * 1024, file);
            write(&mut writer)?;
            writer.flush()?;
            drop(writer);
            match fs::rename(&tmp, dest) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if let Some(parent) = dest.parent() {
                        create_private_dir(parent)?;
                    }
                    fs::rename(&tmp, dest)
                }
                other => other,
            }
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// The directory of an in-progress object.
    pub fn object_dir(&self, obj: ObjectKey) -> PathBuf {
        self.objects
            .join(format!("{:016x}-{}", obj.session.0, obj.object.0))
    }

    /// Where data block `index` of `obj` is stored.
    pub fn segment_path(&self, obj: ObjectKey, index: u32) -> PathBuf {
        self.object_dir(obj).join(format!("seg-{index}"))
    }

    /// Stores a decoded data block with its ciphertext SHA-256.
    pub fn store_segment(
        &self,
        obj: ObjectKey,
        index: u32,
        sha256: &[u8; 32],
        data: &[u8],
    ) -> io::Result<()> {
        self.write_atomic(&self.segment_path(obj, index), |w| {
            w.write_all(&SEGMENT_MAGIC)?;
            w.write_all(&(data.len() as u64).to_le_bytes())?;
            w.write_all(sha256)?;
            w.write_all(data)
        })
    }

    /// Opens a stored segment: the file positioned at the ciphertext, its length and the
    /// SHA-256 recorded when it was decoded.
    pub fn open_segment(&self, obj: ObjectKey, index: u32) -> io::Result<(File, u64, [u8; 32])> {
        let path = self.segment_path(obj, index);
        let mut file = File::open(&path)?;
        let (len, sha) = read_segment_header(&mut file)?;
        if file.metadata()?.len() != SEGMENT_HEADER_LEN + len {
            return Err(damaged(&path));
        }
        Ok((file, len, sha))
    }

    /// Stores the verified manifest envelope of `obj`.
    pub fn store_manifest(&self, obj: ObjectKey, envelope: &[u8]) -> io::Result<()> {
        self.write_atomic(&self.object_dir(obj).join("manifest"), |w| {
            w.write_all(envelope)
        })
    }

    /// Where the saved symbols of a block live.
    pub fn partial_path(&self, key: &BlockKey) -> PathBuf {
        let name = match key.kind {
            BlockKind::Manifest => "partial-m".to_string(),
            BlockKind::Data => format!("partial-{}", key.index),
        };
        self.object_dir(ObjectKey::of(key)).join(name)
    }

    /// Saves the symbols of a stalled block.
    pub fn store_partial(&self, partial: &PartialBlock) -> io::Result<()> {
        let header = postcard::to_allocvec(&(partial.key, partial.geometry, &partial.ids))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let header_len = u32::try_from(header.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "partial header too long"))?;
        self.write_atomic(&self.partial_path(&partial.key), |w| {
            w.write_all(&PARTIAL_MAGIC)?;
            w.write_all(&header_len.to_le_bytes())?;
            w.write_all(&header)?;
            w.write_all(&partial.symbols)
        })
    }

    /// Loads the saved symbols of a block, checking they are self-consistent.
    pub fn load_partial(&self, key: &BlockKey) -> io::Result<PartialBlock> {
        let path = self.partial_path(key);
        let bytes = fs::read(&path)?;
        parse_partial(&bytes)
            .filter(|p| p.key == *key)
            .ok_or_else(|| damaged(&path))
    }

    /// Removes the saved symbols of a block (it was decoded).
    pub fn remove_partial(&self, key: &BlockKey) {
        let _ = fs::remove_file(self.partial_path(key));
    }

    /// Removes a file written for an object that was finished or refused meanwhile, and the
    /// object's directory if that leaves it empty.
    pub fn remove_stray(&self, obj: ObjectKey, path: &Path) {
        let _ = fs::remove_file(path);
        let _ = fs::remove_dir(self.object_dir(obj));
    }

    /// Removes everything kept for an in-progress object.
    pub fn remove_object(&self, obj: ObjectKey) -> io::Result<()> {
        match fs::remove_dir_all(self.object_dir(obj)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn done_path(&self, obj: ObjectKey) -> PathBuf {
        self.done
            .join(format!("{:016x}", obj.session.0))
            .join(obj.object.0.to_string())
    }

    /// Records that `obj` was delivered. The marker is empty, so creating it is atomic by
    /// itself: no temporary file is needed.
    pub fn mark_done(&self, obj: ObjectKey) -> io::Result<()> {
        let path = self.done_path(obj);
        let create = || {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
        };
        match create() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent() {
                    create_private_dir(parent)?;
                }
                create().map(drop)
            }
            other => other.map(drop),
        }
    }

    /// Whether `obj` was delivered by this or an earlier run.
    pub fn is_done(&self, obj: ObjectKey) -> bool {
        self.done_path(obj).exists()
    }

    /// Where the record of the last delivery at `path` lives.
    fn record_path(&self, path: &str) -> PathBuf {
        let digest = hex::encode(Sha256::digest(path.as_bytes()));
        self.delivered
            .join(&digest[..2])
            .join(format!("{digest}.json"))
    }

    /// The record of the last delivery at `path`, if any (an unreadable one counts as none).
    pub fn read_record(&self, path: &str) -> Option<Record> {
        let bytes = fs::read(self.record_path(path)).ok()?;
        serde_json::from_slice::<Record>(&bytes)
            .ok()
            .filter(|r| r.path == path)
    }

    /// Replaces the record of the last delivery at `record.path`.
    pub fn write_record(&self, record: &Record) -> io::Result<()> {
        let dest = self.record_path(&record.path);
        let json = serde_json::to_vec(record).map_err(io::Error::other)?;
        self.write_atomic(&dest, |w| w.write_all(&json))
    }

    /// Reads what earlier runs left in `objects/`; removes objects already done, damaged
    /// segment files, and objects untouched for [`PRUNE_AFTER`]. Also prunes old done markers.
    pub fn scan(&self) -> io::Result<Vec<(ObjectKey, Leftover)>> {
        let now = SystemTime::now();
        let stale = |meta: &fs::Metadata| {
            meta.modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > PRUNE_AFTER)
        };
        for entry in fs::read_dir(&self.done)? {
            let entry = entry?;
            if stale(&entry.metadata()?) {
                tracing::info!(dir = %entry.path().display(), "pruning done markers of an old session");
                fs::remove_dir_all(entry.path())?;
            }
        }
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.objects)? {
            let entry = entry?;
            let path = entry.path();
            let Some(obj) = entry.file_name().to_str().and_then(parse_object_dir) else {
                tracing::warn!(path = %path.display(), "ignoring an unknown entry in the state directory");
                continue;
            };
            if self.is_done(obj) {
                fs::remove_dir_all(&path)?;
                continue;
            }
            if stale(&entry.metadata()?) {
                tracing::info!(object = %obj, "pruning an incomplete object of an old session");
                fs::remove_dir_all(&path)?;
                continue;
            }
            found.push((obj, self.scan_object(&path)?));
        }
        found.sort_by_key(|(obj, _)| *obj);
        Ok(found)
    }

    fn scan_object(&self, dir: &Path) -> io::Result<Leftover> {
        let mut left = Leftover::default();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_str().unwrap_or("");
            if name == "manifest" {
                left.manifest = Some(fs::read(&path)?);
            } else if name == "partial-m" {
                left.partials.insert((BlockKind::Manifest, 0));
            } else if let Some(i) = name.strip_prefix("partial-").and_then(|n| n.parse().ok()) {
                left.partials.insert((BlockKind::Data, i));
            } else if let Some(i) = name.strip_prefix("seg-").and_then(|n| n.parse().ok()) {
                let header = File::open(&path).and_then(|mut f| {
                    let (len, sha) = read_segment_header(&mut f)?;
                    let size = f.metadata()?.len();
                    Ok((size == SEGMENT_HEADER_LEN + len).then_some(sha))
                });
                match header {
                    Ok(Some(sha)) => left.segments.push((i, sha)),
                    _ => {
                        tracing::warn!(path = %path.display(), "removing a damaged stored segment");
                        fs::remove_file(&path)?;
                    }
                }
            }
        }
        left.segments.sort_unstable_by_key(|(i, _)| *i);
        Ok(left)
    }
}

/// Takes the directory's lock, so two receivers never share (and corrupt) one state.
fn lock(root: &Path) -> io::Result<File> {
    let path = root.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("{} is in use by another sluice-recv", root.display()),
        )),
        Err(e) => Err(e.into()),
    }
}

fn damaged(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} is damaged", path.display()),
    )
}

fn read_segment_header(file: &mut File) -> io::Result<(u64, [u8; 32])> {
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    file.read_exact(&mut header)?;
    if header[..8] != SEGMENT_MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a stored segment",
        ));
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
    let (key, geometry, ids): (BlockKey, Geometry, Vec<u16>) = postcard::from_bytes(header).ok()?;
    geometry.validate().ok()?;
    if symbols.len() != ids.len() * usize::from(geometry.symbol_size) {
        return None;
    }
    Some(PartialBlock {
        key,
        geometry,
        ids,
        symbols: symbols.to_vec(),
    })
}

/// Inode of a file, for [`Record::inode`].
pub fn inode(meta: &fs::Metadata) -> u64 {
    meta.ino()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(o: u64) -> ObjectKey {
        ObjectKey {
            session: SessionId(0xabc),
            object: ObjectId(o),
        }
    }

    #[test]
    fn segments_and_partials_round_trip_and_scan() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let data = b"ciphertext bytes".to_vec();
        let sha: [u8; 32] = Sha256::digest(&data).into();
        state.store_segment(obj(1), 3, &sha, &data).unwrap();
        let (mut file, len, got) = state.open_segment(obj(1), 3).unwrap();
        let mut back = Vec::new();
        file.read_to_end(&mut back).unwrap();
        assert_eq!((len, got, back), (data.len() as u64, sha, data));

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
            ids: vec![0, 4],
            symbols: vec![7; 128],
        };
        state.store_partial(&partial).unwrap();
        let loaded = state.load_partial(&key).unwrap();
        assert_eq!((loaded.ids, loaded.symbols), (partial.ids, partial.symbols));
        state.store_manifest(obj(1), b"envelope").unwrap();

        // A torn segment file is removed by the scan; the rest is found.
        fs::write(state.segment_path(obj(1), 5), b"SLSEG\0\0\x01short").unwrap();
        let found = state.scan().unwrap();
        assert_eq!(found.len(), 1);
        let (key1, left) = &found[0];
        assert_eq!(*key1, obj(1));
        assert_eq!(left.segments, vec![(3, sha)]);
        assert_eq!(left.manifest.as_deref(), Some(&b"envelope"[..]));
        assert!(left.partials.contains(&(BlockKind::Data, 4)));
        assert!(!state.segment_path(obj(1), 5).exists());

        // Done objects are cleaned out of objects/ at the next scan.
        state.mark_done(obj(1)).unwrap();
        assert!(state.is_done(obj(1)));
        assert!(state.scan().unwrap().is_empty());
        assert!(!state.object_dir(obj(1)).exists());
    }

    #[test]
    fn records_round_trip_and_tmp_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let record = Record {
            path: "a/b c.txt".into(),
            kind: "file".into(),
            sha256: "00".repeat(32),
            size: 5,
            mode: 0o644,
            mtime_secs: 1,
            mtime_nanos: 2,
            inode: 3,
        };
        state.write_record(&record).unwrap();
        assert_eq!(state.read_record("a/b c.txt"), Some(record));
        assert_eq!(state.read_record("other"), None);
        fs::write(state.tmp_path("junk"), b"x").unwrap();
        drop(state);
        let state = StateDir::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        let err = StateDir::open(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("in use by another sluice-recv"),
            "{err}"
        );
        fs::write(dir.path().join("VERSION"), "something else").unwrap();
        drop(state);
        assert!(StateDir::open(dir.path()).is_err());
    }

    #[test]
    fn damaged_partials_are_refused() {
        assert!(parse_partial(b"SLPART\0\x01\xff\xff\xff\xff").is_none());
        assert!(parse_partial(b"garbage").is_none());
    }
}
