//! Test trees: generate them (seeded, streaming) and compare two of them entry by entry.
//!
//! A comparison looks at relative paths, kinds, SHA-256 of every file, and optionally permission
//! bits and modification times (to the nanosecond), so "arrived byte-identical" means exactly
//! that, empty files and empty directories included.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// Chunk size for streaming reads and writes: big files are never held in memory.
const CHUNK: usize = 1 << 20;

/// What one path in a tree is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file with its length and SHA-256.
    File {
        /// Length in bytes.
        size: u64,
        /// SHA-256 of the content.
        sha256: [u8; 32],
    },
    /// A directory.
    Dir,
    /// Anything else (symlink, fifo, ...).
    Other,
}

/// One entry of a [`snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Kind and content digest.
    pub kind: Kind,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// Modification time: seconds and nanoseconds since the epoch.
    pub mtime: (i64, i64),
}

/// Every entry under `root` (not `root` itself), keyed by '/'-separated relative path.
pub fn snapshot(root: &Path) -> io::Result<BTreeMap<String, Entry>> {
    let mut map = BTreeMap::new();
    for item in walkdir::WalkDir::new(root).min_depth(1) {
        let item = item.map_err(io::Error::other)?;
        let rel = item
            .path()
            .strip_prefix(root)
            .map_err(io::Error::other)?
            .to_string_lossy()
            .into_owned();
        let meta = fs::symlink_metadata(item.path())?;
        let kind = if meta.is_file() {
            Kind::File {
                size: meta.len(),
                sha256: sha256_file(item.path())?,
            }
        } else if meta.is_dir() {
            Kind::Dir
        } else {
            Kind::Other
        };
        let entry = Entry {
            kind,
            mode: meta.mode() & 0o7777,
            mtime: (meta.mtime(), meta.mtime_nsec()),
        };
        map.insert(rel, entry);
    }
    Ok(map)
}

/// Which metadata [`compare`] checks besides paths, kinds and content.
#[derive(Clone, Copy, Debug)]
pub struct Check {
    /// Compare permission bits.
    pub modes: bool,
    /// Compare modification times.
    pub mtimes: bool,
}

impl Check {
    /// Content only.
    pub const CONTENT: Check = Check {
        modes: false,
        mtimes: false,
    };
    /// Content, modes and mtimes.
    pub const ALL: Check = Check {
        modes: true,
        mtimes: true,
    };
}

/// Compares two trees; `Err` lists every difference, one per line.
pub fn compare(expected: &Path, actual: &Path, check: Check) -> Result<usize, String> {
    let want = snapshot(expected).map_err(|e| format!("reading {}: {e}", expected.display()))?;
    let got = snapshot(actual).map_err(|e| format!("reading {}: {e}", actual.display()))?;
    let mut diffs = Vec::new();
    for (path, w) in &want {
        match got.get(path) {
            None => diffs.push(format!("missing: {path}")),
            Some(g) => {
                if g.kind != w.kind {
                    diffs.push(format!(
                        "content differs: {path}: {:?} vs {:?}",
                        w.kind, g.kind
                    ));
                }
                if check.modes && g.mode != w.mode {
                    diffs.push(format!(
                        "mode differs: {path}: {:o} vs {:o}",
                        w.mode, g.mode
                    ));
                }
                if check.mtimes && g.mtime != w.mtime {
                    diffs.push(format!(
                        "mtime differs: {path}: {:?} vs {:?}",
                        w.mtime, g.mtime
                    ));
                }
            }
        }
    }
    for path in got.keys().filter(|p| !want.contains_key(*p)) {
        diffs.push(format!("unexpected: {path}"));
    }
    if diffs.is_empty() {
        Ok(want.len())
    } else {
        Err(diffs.join("\n"))
    }
}

/// Checks that every regular file under `out` is byte-identical to the file at the same
/// relative path under `source`: what "nothing corrupt was published" means. Returns how many
/// files were checked.
pub fn published_files_are_intact(source: &Path, out: &Path) -> Result<usize, String> {
    let want = snapshot(source).map_err(|e| e.to_string())?;
    let got = snapshot(out).map_err(|e| e.to_string())?;
    let mut bad = Vec::new();
    let mut files = 0;
    for (path, g) in &got {
        if let Kind::File { .. } = g.kind {
            files += 1;
            match want.get(path) {
                Some(w) if w.kind == g.kind => {}
                Some(_) => bad.push(format!("corrupt: {path}")),
                None => bad.push(format!("not in the source: {path}")),
            }
        }
    }
    if bad.is_empty() {
        Ok(files)
    } else {
        Err(bad.join("\n"))
    }
}

/// Regular files under `root`.
pub fn count_files(root: &Path) -> usize {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .count()
}

/// Regular files under `root` (none if it is missing) whose bytes contain `needle`: where a
/// marker put in a file that must never cross could have landed.
pub fn find_bytes(root: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter(|e| {
            std::fs::read(e.path())
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        })
        .map(|e| e.path().to_path_buf())
        .collect()
}

/// SHA-256 of a file, read in chunks.
pub fn sha256_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

/// Writes `len` bytes of seeded random data, one chunk at a time; returns their SHA-256.
pub fn write_random_file(path: &Path, len: u64, seed: u64) -> io::Result<[u8; 32]> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut file = io::BufWriter::new(File::create(path)?);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(CHUNK as u64)).map_err(io::Error::other)?;
        rng.fill_bytes(&mut buf[..n]);
        file.write_all(&buf[..n])?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(hasher.finalize().into())
}

/// Sets a path's modification time (files and directories alike).
pub fn set_mtime(path: &Path, secs: u64, nanos: u32) -> io::Result<()> {
    let t = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
    File::open(path)?.set_modified(t)
}

/// Shape of a generated tree.
#[derive(Clone, Copy, Debug)]
pub struct TreeSpec {
    /// Size of `big.bin` (0: no big file).
    pub big_bytes: u64,
    /// Add files of exactly one default segment (1 MiB) and one byte more.
    pub segment_edges: bool,
    /// Scales the small files (1 = a few hundred KiB in all).
    pub small_scale: u64,
    /// Seed of all content.
    pub seed: u64,
}

/// Creates `root` holding nested directories, names with spaces and non-ASCII characters,
/// an empty file, an empty directory, a 1-byte file, an executable, optional segment-edge
/// files and an optional big file. Modes and mtimes are set to distinctive values (mtimes with
/// nanoseconds, directories last) so a receiver that drops them is caught.
pub fn make_tree(root: &Path, spec: TreeSpec) -> io::Result<()> {
    let s = spec.small_scale.max(1);
    let files: Vec<(&str, u64)> = vec![
        ("a/b/c/deep.txt", 10_000 * s),
        ("a/b/sibling.bin", 33_333 * s),
        ("a/top.dat", 4_096 * s),
        ("spaced dir/file with spaces.bin", 3_000 * s),
        ("ünïcødé-目录/файл-📦.dat", 70_000 * s),
        ("ünïcødé-目录/naïve café.txt", 12_345),
        ("empty-file", 0),
        ("one-byte", 1),
        ("exec.sh", 100),
    ];
    fs::create_dir_all(root)?;
    let mut seed = spec.seed;
    for (rel, len) in &files {
        let path = root.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        seed += 1;
        write_random_file(&path, *len, seed)?;
    }
    fs::create_dir_all(root.join("empty-dir"))?;
    fs::create_dir_all(root.join("a/empty nested dir"))?;
    if spec.segment_edges {
        write_random_file(&root.join("a/segment-exact.bin"), 1 << 20, seed + 100)?;
        write_random_file(
            &root.join("a/segment-plus-one.bin"),
            (1 << 20) + 1,
            seed + 101,
        )?;
    }
    if spec.big_bytes > 0 {
        write_random_file(&root.join("big.bin"), spec.big_bytes, seed + 200)?;
    }
    fs::set_permissions(root.join("exec.sh"), fs::Permissions::from_mode(0o755))?;
    fs::set_permissions(root.join("one-byte"), fs::Permissions::from_mode(0o600))?;
    fs::set_permissions(root.join("a/top.dat"), fs::Permissions::from_mode(0o640))?;
    fs::set_permissions(root.join("empty-dir"), fs::Permissions::from_mode(0o700))?;
    stamp_mtimes(root)
}

/// Gives every entry under and including `root` a distinct past mtime with nanoseconds,
/// deepest entries first so setting a child does not disturb its directory afterwards.
pub fn stamp_mtimes(root: &Path) -> io::Result<()> {
    let mut paths: Vec<_> = walkdir::WalkDir::new(root)
        .contents_first(true)
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(io::Error::other)?;
    // contents_first already orders children before parents.
    for (i, entry) in paths.drain(..).enumerate() {
        let i = i as u64;
        set_mtime(
            entry.path(),
            1_600_000_000 + i * 86_400,
            123_456_789 + i as u32,
        )?;
    }
    Ok(())
}

/// Bytes of regular-file content under `root`.
pub fn total_bytes(root: &Path) -> u64 {
    walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_equals_its_copy_and_differences_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = TreeSpec {
            big_bytes: 3 << 20,
            segment_edges: false,
            small_scale: 1,
            seed: 1,
        };
        make_tree(&tmp.path().join("a"), spec).unwrap();
        make_tree(&tmp.path().join("b"), spec).unwrap();
        let n = compare(&tmp.path().join("a"), &tmp.path().join("b"), Check::ALL).unwrap();
        assert!(n >= 15, "{n} entries");
        let snap = snapshot(&tmp.path().join("a")).unwrap();
        assert_eq!(
            snap["empty-file"].kind,
            Kind::File {
                size: 0,
                sha256: Sha256::digest(b"").into()
            }
        );
        assert_eq!(snap["empty-dir"].kind, Kind::Dir);
        assert_eq!(snap["exec.sh"].mode, 0o755);
        assert!(snap["big.bin"].mtime.1 > 123_456_789, "nanoseconds are set");

        // One flipped byte in the big file, one mode and one extra file: each reported.
        let big = tmp.path().join("b/big.bin");
        let mut bytes = fs::read(&big).unwrap();
        bytes[2 << 20] ^= 1;
        fs::write(&big, bytes).unwrap();
        fs::set_permissions(
            tmp.path().join("b/exec.sh"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        fs::write(tmp.path().join("b/extra"), b"x").unwrap();
        let err = compare(&tmp.path().join("a"), &tmp.path().join("b"), Check::ALL).unwrap_err();
        assert!(err.contains("content differs: big.bin"), "{err}");
        assert!(err.contains("mode differs: exec.sh"), "{err}");
        assert!(err.contains("unexpected: extra"), "{err}");
        let err =
            published_files_are_intact(&tmp.path().join("a"), &tmp.path().join("b")).unwrap_err();
        assert!(err.contains("corrupt: big.bin") && err.contains("not in the source: extra"));
    }

    #[test]
    fn random_files_are_seeded_and_streamed() {
        let tmp = tempfile::tempdir().unwrap();
        let a = write_random_file(&tmp.path().join("a"), 2_500_000, 5).unwrap();
        let b = write_random_file(&tmp.path().join("b"), 2_500_000, 5).unwrap();
        let c = write_random_file(&tmp.path().join("c"), 2_500_000, 6).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(sha256_file(&tmp.path().join("a")).unwrap(), a);
        assert_eq!(fs::metadata(tmp.path().join("a")).unwrap().len(), 2_500_000);
    }
}
