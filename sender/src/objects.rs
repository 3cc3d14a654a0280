//! What gets sent: the command line's paths expanded into objects, one per file, directory
//! (empty or not, the top one included) and stdin stream.
//!
//! Directories come before their contents so the receiver can create them first; object paths
//! are `/`-separated and relative, named as `cp -r` would place them (`x/dir` arrives as `dir`).
//! Symlinks, devices, sockets and FIFOs are skipped with a warning: a diode moves data, not
//! links that would point somewhere else on the other side.
//!
//! Another user may be able to write where the files are (the outbox of `sluice-send watch`
//! is shared by its writers), and swap an entry for a symlink or a FIFO at any moment. So the
//! walk goes through directory fds (`sluice_common::beneath`), never following a link below
//! the root it was given, and a file is remembered as the inode the walk saw: [`FileRef::open`]
//! walks to it again the same way, opens it without following or blocking, and refuses it
//! unless `fstat` on that fd shows the same regular file. Everything sent of a file (its
//! bytes, size and SHA-256) is then read through that one fd.
//!
//! An `s3://BUCKET/PREFIX` argument is listed and named the same way ([`s3`]): its objects
//! become [`Source::Object`]s, read as listed or refused.

pub mod s3;

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice_common::beneath::{self, Dir, Kind};
use sluice_common::paths::{validate_object_path, MAX_PATH_BYTES};
use sluice_protocol::manifest::EntryKind;

/// Where an object's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A regular file.
    File(FileRef),
    /// An object in a bucket (`s3://…`).
    Object(s3::ObjectRef),
    /// A directory (no content).
    Directory,
    /// Standard input.
    Stdin,
    /// A private copy of a file, taken as it was checked (see [`HeldCopy`]).
    Held(HeldCopy),
}

impl Source {
    /// The content of a file or a stored object, opened as it was found: a reader and the
    /// size it has now (a stored object's is the listed size, which its reader yields exactly
    /// or fails). `None` for a directory or stdin.
    pub fn open(&self) -> Option<io::Result<(Box<dyn Read + Send>, u64)>> {
        match self {
            Source::File(file) => Some(
                file.open()
                    .map(|(f, size)| (Box::new(f) as Box<dyn Read + Send>, size)),
            ),
            Source::Object(object) => Some(
                object
                    .open()
                    .map(|(r, size)| (Box::new(r) as Box<dyn Read + Send>, size)),
            ),
            Source::Held(copy) => Some(Ok((
                Box::new(copy.reader()) as Box<dyn Read + Send>,
                copy.size,
            ))),
            Source::Directory | Source::Stdin => None,
        }
    }

    /// Where the content comes from, for messages.
    pub fn shown(&self) -> String {
        match self {
            Source::File(file) => file.shown().display().to_string(),
            Source::Object(object) => object.shown(),
            Source::Directory => "a directory".into(),
            Source::Stdin => "standard input".into(),
            Source::Held(copy) => copy.shown.display().to_string(),
        }
    }
}

/// A file's content copied by the sender into an unnamed file of its own (`O_TMPFILE` in its
/// state directory) while it was hashed and checked: what the checks read is what is sent,
/// whatever a writer does to the original afterwards (rewriting it in place keeps its inode,
/// which [`FileRef::open`] cannot see).
#[derive(Debug, Clone)]
pub struct HeldCopy {
    file: Arc<File>,
    size: u64,
    /// The original's path, for messages.
    shown: PathBuf,
}

impl PartialEq for HeldCopy {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.file, &other.file)
    }
}

impl Eq for HeldCopy {}

impl HeldCopy {
    pub fn new(file: File, size: u64, shown: PathBuf) -> HeldCopy {
        HeldCopy {
            file: Arc::new(file),
            size,
            shown,
        }
    }

    /// A reader from its start, with an offset of its own (reads never move another's).
    fn reader(&self) -> impl Read + Send {
        struct At {
            file: Arc<File>,
            at: u64,
        }
        impl Read for At {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                use std::os::unix::fs::FileExt;
                let n = self.file.read_at(buf, self.at)?;
                self.at += n as u64;
                Ok(n)
            }
        }
        At {
            file: self.file.clone(),
            at: 0,
        }
    }

    /// The copy opened again (its own file description, offset 0), for checks that want a
    /// `File` of their own.
    pub fn reopen(&self) -> io::Result<File> {
        use std::os::fd::AsRawFd;
        File::open(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// A regular file the walk found: the directory it started from, the components below it
/// (walked again without following links) and the inode that must still be there.
#[derive(Debug, Clone)]
pub struct FileRef {
    base: Arc<Dir>,
    path: Arc<Chain>,
    device: u64,
    inode: u64,
    /// The file's path as the operator or writer knows it, for messages.
    shown: PathBuf,
}

impl PartialEq for FileRef {
    fn eq(&self, other: &Self) -> bool {
        (self.device, self.inode, self.path.names())
            == (other.device, other.inode, other.path.names())
    }
}

impl Eq for FileRef {}

impl FileRef {
    /// The regular file at `path` (its directories followed as given, the file itself not): a
    /// shortcut for tests of the encoder, which take files without a walk.
    #[cfg(test)]
    pub(crate) fn find(path: &Path) -> io::Result<FileRef> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| invalid("has no UTF-8 file name"))?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let base = Arc::new(Dir::open(parent)?);
        let entry = base
            .stat(name)?
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        if entry.kind != Kind::File {
            return Err(invalid("is not a regular file"));
        }
        Ok(FileRef::new(
            base,
            Chain::child(None, name.to_string()),
            &entry,
            path.to_path_buf(),
        ))
    }

    fn new(base: Arc<Dir>, path: Arc<Chain>, entry: &beneath::Entry, shown: PathBuf) -> Self {
        FileRef {
            base,
            path,
            device: entry.device,
            inode: entry.inode,
            shown,
        }
    }

    /// The inode the walk saw: (device, inode).
    pub fn identity(&self) -> (u64, u64) {
        (self.device, self.inode)
    }

    /// The path for messages.
    pub fn shown(&self) -> &Path {
        &self.shown
    }

    /// Opens the file the walk found, read-only: every directory on the way and the file
    /// itself without following a link, the file without blocking. Refused unless `fstat` on
    /// the open fd shows the same regular file (a FIFO, device, symlink or another file
    /// swapped in since is never read). Returns the file and its size now.
    pub fn open(&self) -> io::Result<(File, u64)> {
        let names = self.path.names();
        let Some((name, parents)) = names.split_last() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "an empty path"));
        };
        let (dir, _) = self
            .base
            .walk(parents, None, Path::new(""))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let (file, entry) = dir.open_regular(name)?;
        if (entry.device, entry.inode) != (self.device, self.inode) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "was replaced by another file since it was listed; refusing it",
            ));
        }
        Ok((file, entry.size))
    }
}

/// One object to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceObject {
    /// Path under the receiver's `--out`.
    pub path: String,
    pub source: Source,
    /// Size in bytes when known up front (files); stdin is measured while reading.
    pub size: Option<u64>,
    pub mode: u32,
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
}

impl SourceObject {
    pub fn kind(&self) -> EntryKind {
        match self.source {
            Source::Directory => EntryKind::Directory,
            _ => EntryKind::File,
        }
    }
}

/// Something on the command line that will not be sent, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
    /// A refusal (an error the operator must see) rather than a documented skip.
    pub refused: bool,
}

/// Expands local `paths` into objects in send order, plus what was skipped or refused (see
/// [`enumerate_with`]; an `s3://` argument is refused here: its bucket is not connected).
pub fn enumerate(paths: &[PathBuf], stdin_name: Option<&str>) -> (Vec<SourceObject>, Vec<Skipped>) {
    enumerate_with(paths, stdin_name, &s3::Stores::default())
}

/// Expands `paths` into objects in send order, plus what was skipped or refused. The
/// directories leading to each path are followed as given; the path itself and nothing below
/// it ever is. An `s3://` argument is listed in its bucket, one of `stores` (blocks: call it
/// from a plain thread).
pub fn enumerate_with(
    paths: &[PathBuf],
    stdin_name: Option<&str>,
    stores: &s3::Stores,
) -> (Vec<SourceObject>, Vec<Skipped>) {
    let mut found = Found::default();
    for arg in paths {
        if s3::is_s3(arg) {
            s3::expand(stores, arg, &mut found);
            continue;
        }
        if arg.as_os_str() == "-" {
            let name = stdin_name.unwrap_or("stdin").to_string();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            found.objects.push(SourceObject {
                path: name,
                source: Source::Stdin,
                size: None,
                mode: 0o644,
                mtime_secs: i64::try_from(now.as_secs()).unwrap_or(0),
                mtime_nanos: now.subsec_nanos(),
            });
            continue;
        }
        let Some(base) = arg.file_name().and_then(|n| n.to_str()) else {
            found.refuse(arg.clone(), "has no file name to send it under".into());
            continue;
        };
        // The directories on the way are the operator's path, followed as given; the argument
        // itself is looked at without following it: a symlink there (say, one another user
        // planted where a glob picks it up) is refused, not sent.
        let parent = match arg.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = match Dir::open(parent) {
            Ok(dir) => Arc::new(dir),
            Err(e) => {
                found.refuse(arg.clone(), format!("cannot read: {e}"));
                continue;
            }
        };
        match dir.stat(base) {
            Ok(Some(entry)) if entry.kind == Kind::Symlink => found.refuse(
                arg.clone(),
                "is a symlink; not followed (give the path it points to)".into(),
            ),
            Ok(Some(_)) => found.entry(&dir, base, base, arg),
            Ok(None) => found.refuse(arg.clone(), "cannot read: no such file or directory".into()),
            Err(e) => found.refuse(arg.clone(), format!("cannot read: {e}")),
        }
    }
    (found.objects, found.skipped)
}

/// Expands the entry `name` of `dir` (an outbox item: never followed, whatever it is) into
/// objects named from `name`.
pub fn enumerate_entry(
    dir: &Arc<Dir>,
    name: &str,
    shown: &Path,
) -> (Vec<SourceObject>, Vec<Skipped>) {
    let mut found = Found::default();
    found.entry(dir, name, name, shown);
    (found.objects, found.skipped)
}

#[derive(Default)]
struct Found {
    objects: Vec<SourceObject>,
    skipped: Vec<Skipped>,
}

impl Found {
    fn refuse(&mut self, path: PathBuf, reason: String) {
        self.skipped.push(Skipped {
            path,
            reason,
            refused: true,
        });
    }

    fn skip(&mut self, path: PathBuf, reason: String) {
        self.skipped.push(Skipped {
            path,
            reason,
            refused: false,
        });
    }

    /// Whether `object_path` is one the receiver takes; refused here if not.
    fn valid(&mut self, object_path: &str, shown: &Path) -> bool {
        match validate_object_path(object_path) {
            Ok(()) => true,
            Err(e) => {
                self.refuse(
                    shown.to_path_buf(),
                    format!("refused: the receiver would refuse this name ({e})"),
                );
                false
            }
        }
    }

    /// The entry `name` of `base` (an argument's file or an outbox item), looked at without
    /// following it.
    fn entry(&mut self, base: &Arc<Dir>, name: &str, object_path: &str, shown: &Path) {
        let work = match base.stat(name) {
            Ok(Some(entry)) => Work::of(
                base,
                None,
                Chain::child(None, name.to_string()),
                &entry,
                object_path,
                shown,
            ),
            Ok(None) => Work::Refused(shown.to_path_buf(), "cannot read: it is gone".into()),
            Err(e) => Work::Refused(shown.to_path_buf(), format!("cannot stat: {e}")),
        };
        self.run(base, work);
    }

    /// Does `first` and what it leads to, depth first in name order (a directory, then
    /// everything below it, then its next sibling), from an explicit stack: any depth, and one
    /// directory fd open at a time.
    fn run(&mut self, base: &Arc<Dir>, first: Work) {
        let mut stack = vec![first];
        while let Some(work) = stack.pop() {
            let (parent, chain, object_path, shown) = match work {
                Work::Directory(parent, chain, object_path, shown) => {
                    (parent, chain, object_path, shown)
                }
                Work::File(object) => {
                    self.objects.push(object);
                    continue;
                }
                Work::Skipped(path, reason) => {
                    self.skip(path, reason);
                    continue;
                }
                Work::Refused(path, reason) => {
                    self.refuse(path, reason);
                    continue;
                }
            };
            if !self.valid(&object_path, &shown) {
                continue;
            }
            // From its parent's fd (one `openat`, never following), or from the base.
            let opened = match &parent {
                Some(parent) => parent.open_dir(&chain.name),
                None => base
                    .walk(&chain.names(), None, Path::new(""))
                    .map(|(dir, _)| dir)
                    .map_err(|e| io::Error::other(e.to_string())),
            };
            let listed = opened.and_then(|dir| Ok((dir.stat_self()?, dir.list()?, Arc::new(dir))));
            let (me, (names, strange), dir) = match listed {
                Ok(listed) => listed,
                Err(e) => {
                    self.refuse(shown, format!("cannot read: {e}"));
                    continue;
                }
            };
            self.objects.push(SourceObject {
                path: object_path.clone(),
                source: Source::Directory,
                size: None,
                mode: me.mode,
                mtime_secs: me.mtime_secs,
                mtime_nanos: me.mtime_nanos,
            });
            for name in strange {
                let shown = shown.join(&name);
                self.refuse(shown, "refused: name is not valid UTF-8".into());
            }
            let mut below = Vec::with_capacity(names.len());
            for name in names {
                let child_path = format!("{object_path}/{name}");
                let child_shown = shown.join(&name);
                let child = Chain::child(Some(&chain), name);
                below.push(match dir.stat(&child.name) {
                    Ok(Some(entry)) => {
                        Work::of(base, Some(&dir), child, &entry, &child_path, &child_shown)
                    }
                    // Removed since the listing.
                    Ok(None) => continue,
                    Err(e) => Work::Refused(child_shown, format!("cannot stat: {e}")),
                });
            }
            stack.extend(below.into_iter().rev());
        }
    }
}

/// A path below a base as a chain of names sharing their parents: a tree of N entries holds N
/// names whatever its depth (a list per entry would grow as entries × depth).
#[derive(Debug)]
pub struct Chain {
    name: String,
    parent: Option<Arc<Chain>>,
}

impl Chain {
    fn child(parent: Option<&Arc<Chain>>, name: String) -> Arc<Chain> {
        Arc::new(Chain {
            name,
            parent: parent.cloned(),
        })
    }

    /// The names from the base down.
    fn names(&self) -> Vec<&str> {
        let mut names = vec![self.name.as_str()];
        let mut at = self.parent.as_deref();
        while let Some(link) = at {
            names.push(&link.name);
            at = link.parent.as_deref();
        }
        names.reverse();
        names
    }
}

/// One step of the walk.
enum Work {
    /// A directory to list: its parent, opened (`None`: walk from the base; a walk holds at most
    /// one fd per level), its path below the base, object path and shown path.
    Directory(Option<Arc<Dir>>, Arc<Chain>, String, PathBuf),
    File(SourceObject),
    Skipped(PathBuf, String),
    Refused(PathBuf, String),
}

impl Work {
    /// What to do with the entry at `path` below `base`, as `fstatat` (not following
    /// it) saw it.
    fn of(
        base: &Arc<Dir>,
        parent: Option<&Arc<Dir>>,
        path: Arc<Chain>,
        entry: &beneath::Entry,
        object_path: &str,
        shown: &Path,
    ) -> Work {
        let shown = shown.to_path_buf();
        if object_path.len() > MAX_PATH_BYTES {
            // Checked before descending: a deep tree is refused at its first over-long path.
            return Work::Refused(
                shown,
                format!("refused: the receiver would refuse this name (longer than {MAX_PATH_BYTES} bytes)"),
            );
        }
        match entry.kind {
            Kind::Directory => {
                Work::Directory(parent.cloned(), path, object_path.to_string(), shown)
            }
            Kind::File => match validate_object_path(object_path) {
                Ok(()) => Work::File(SourceObject {
                    path: object_path.to_string(),
                    size: Some(entry.size),
                    source: Source::File(FileRef::new(base.clone(), path, entry, shown)),
                    mode: entry.mode,
                    mtime_secs: entry.mtime_secs,
                    mtime_nanos: entry.mtime_nanos,
                }),
                Err(e) => Work::Refused(
                    shown,
                    format!("refused: the receiver would refuse this name ({e})"),
                ),
            },
            Kind::Symlink => Work::Skipped(shown, "skipped: a symlink".into()),
            Kind::Other => Work::Skipped(shown, "skipped: not a regular file or directory".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trees_expand_directories_first_with_cp_r_names() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        std::fs::create_dir_all(root.join("sub/empty")).unwrap();
        std::fs::write(root.join("sub/a.txt"), b"abc").unwrap();
        std::fs::write(root.join("z empty"), b"").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        std::fs::write(root.join("bad\nname"), b"x").unwrap();
        let single = tmp.path().join("one.bin");
        std::fs::write(&single, b"1").unwrap();

        let (objects, skipped) = enumerate(&[root.clone(), single], None);
        let paths: Vec<&str> = objects.iter().map(|o| o.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "data",
                "data/sub",
                "data/sub/a.txt",
                "data/sub/empty",
                "data/z empty",
                "one.bin"
            ]
        );
        assert_eq!(objects[0].kind(), EntryKind::Directory);
        assert_eq!(objects[2].size, Some(3));
        assert_eq!(objects[4].size, Some(0));
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped
            .iter()
            .any(|s| !s.refused && s.reason.contains("symlink")));
        assert!(skipped
            .iter()
            .any(|s| s.refused && s.reason.contains("control")));
    }

    /// Finding 1 of the second red-team round: a writer swapped a listed file for a symlink
    /// to the daemon's own key (or a FIFO, or another file) between the listing and the
    /// read, and the key was sent. A listed file is opened only as the inode listed.
    #[test]
    fn a_file_swapped_after_it_was_listed_is_never_read() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("item");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/f"), b"decoy").unwrap();
        std::fs::write(tmp.path().join("secret"), b"key").unwrap();
        let listed = |name: &str| {
            let (objects, _) = enumerate(std::slice::from_ref(&root), None);
            match objects.into_iter().find(|o| o.path == name).unwrap().source {
                Source::File(file) => file,
                other => panic!("{other:?}"),
            }
        };
        let swap = |to: &dyn Fn(&Path)| {
            let f = root.join("sub/f");
            std::fs::remove_file(&f).ok();
            to(&f);
        };
        let refused = |file: &FileRef, phrase: &str| {
            let err = file.open().map(|_| ()).unwrap_err();
            assert!(err.to_string().contains(phrase), "{err}");
        };

        let file = listed("item/sub/f");
        assert_eq!(file.open().unwrap().1, 5);
        swap(&|f| std::os::unix::fs::symlink(tmp.path().join("secret"), f).unwrap());
        refused(&file, "symlink");

        swap(&|f| std::fs::write(f, b"decoy").unwrap());
        let file = listed("item/sub/f");
        swap(&|f| {
            let status = std::process::Command::new("mkfifo")
                .arg(f)
                .status()
                .unwrap();
            assert!(status.success());
        });
        // Opened without blocking (no writer ever comes), seen, refused.
        refused(&file, "not a regular file");

        swap(&|f| std::fs::write(f, b"decoy").unwrap());
        let file = listed("item/sub/f");
        // Made while the listed one still exists: another inode (a freed inode number may be
        // reused, but only by a file its writer made, whose bytes were theirs to send anyway).
        std::fs::write(tmp.path().join("other"), b"other").unwrap();
        std::fs::rename(tmp.path().join("other"), root.join("sub/f")).unwrap();
        refused(&file, "replaced by another file");

        // A directory on the way swapped for a link to one holding a file of that name.
        let file = listed("item/sub/f");
        std::fs::create_dir(tmp.path().join("outside")).unwrap();
        std::fs::rename(root.join("sub/f"), tmp.path().join("outside/f")).unwrap();
        std::fs::rename(root.join("sub"), tmp.path().join("sub.away")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("outside"), root.join("sub")).unwrap();
        refused(&file, "symlink");

        // The walk itself never descends through a link nor lists a FIFO as a file.
        let (objects, skipped) = enumerate(std::slice::from_ref(&root), None);
        assert_eq!(objects.len(), 1, "{objects:?}");
        assert!(
            skipped.iter().any(|s| s.reason.contains("symlink")),
            "{skipped:?}"
        );
    }

    /// The red team's one-shot finding: `sluice-send shared/*` as root sent `sender.key`
    /// through a symlink another user planted in `shared/`. An argument is never followed.
    #[test]
    fn a_symlink_given_as_an_argument_is_refused_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("secret"), b"key").unwrap();
        std::fs::create_dir(tmp.path().join("real")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), tmp.path().join("to-file")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("real"), tmp.path().join("to-dir")).unwrap();
        let args = [tmp.path().join("to-file"), tmp.path().join("to-dir")];
        let (objects, skipped) = enumerate(&args, None);
        assert!(objects.is_empty(), "{objects:?}");
        assert_eq!(skipped.len(), 2);
        assert!(skipped
            .iter()
            .all(|s| s.refused && s.reason.contains("is a symlink")));
        // The directories leading to an argument are followed as given.
        let via_link = tmp.path().join("to-dir/inside.txt");
        std::fs::write(&via_link, b"ok").unwrap();
        let (objects, skipped) = enumerate(&[via_link], None);
        assert!(skipped.is_empty(), "{skipped:?}");
        assert_eq!(objects[0].path, "inside.txt");
    }

    #[test]
    fn stdin_gets_its_name() {
        let (objects, skipped) = enumerate(&[PathBuf::from("-")], Some("streams/log.txt"));
        assert!(skipped.is_empty());
        assert_eq!(objects[0].path, "streams/log.txt");
        assert_eq!(objects[0].source, Source::Stdin);
    }
}
