//! File-system operations beneath a directory fd.
//!
//! The receiver works under `--out` and its state directory, where a local user may be able to
//! rename entries, plant symlinks or swap a directory for a link at any moment. So nothing is
//! ever looked up by a path twice: each root is opened once, and every operation below it
//! walks one component at a time from an fd with `O_NOFOLLOW` (`openat`, `mkdirat`,
//! `renameat`, `unlinkat`, `fstatat` without following), and metadata is changed only through
//! fds opened that way (`fchmod`, `futimens`). A symlink anywhere on the way is refused, not
//! followed; a directory swapped for a link after it was opened changes nothing, since the fd
//! still names the directory that was opened.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;

/// What an entry is, as `fstatat` without following links sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Directory,
    Symlink,
    /// A device, FIFO or socket.
    Other,
}

/// What `fstatat` says about an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub size: u64,
    pub inode: u64,
    pub device: u64,
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
    /// Last status change (a rename, a write, a chmod): with the inode, tells a file from
    /// another made later under a reused inode number.
    pub ctime_secs: i64,
    pub ctime_nanos: u32,
}

impl Entry {
    fn of(stat: &rustix::fs::Stat) -> Self {
        let file_type = rustix::fs::FileType::from_raw_mode(stat.st_mode);
        let kind = match file_type {
            rustix::fs::FileType::RegularFile => Kind::File,
            rustix::fs::FileType::Directory => Kind::Directory,
            rustix::fs::FileType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        };
        Entry {
            kind,
            mode: stat.st_mode & 0o7777,
            uid: stat.st_uid,
            size: u64::try_from(stat.st_size).unwrap_or(0),
            inode: stat.st_ino,
            device: stat.st_dev,
            mtime_secs: stat.st_mtime,
            mtime_nanos: u32::try_from(stat.st_mtime_nsec).unwrap_or(0),
            ctime_secs: stat.st_ctime,
            ctime_nanos: u32::try_from(stat.st_ctime_nsec).unwrap_or(0),
        }
    }
}

/// Why a walk beneath a root stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalkError {
    /// A component is a symlink: never followed.
    #[error("{0} is a symlink; refusing to follow it")]
    Symlink(PathBuf),
    /// A component that must be a directory is something else.
    #[error("{0} exists and is not a directory")]
    NotADirectory(PathBuf),
    /// A component was not a directory when opened and is one when looked at: swapped in
    /// between (by a local user racing the walk).
    #[error("{0} changed while it was being opened; refusing it")]
    Changed(PathBuf),
    /// The file system refused.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Called by [`Dir::walk_creating`] with the components of each directory it is about to make.
pub type BeforeCreate<'a> = &'a mut dyn FnMut(&[&str]) -> io::Result<()>;

/// A directory opened once; everything else is reached from it.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

/// One path component: no `/`, not empty, not `.` or `..` (callers pass validated names; this
/// is the last guard, so a name can never walk upwards or sideways).
fn component(name: &str) -> io::Result<&str> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a single path component"),
        ));
    }
    Ok(name)
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

impl Dir {
    /// Opens a root directory by path (the operator's `--out` or `--state`; a symlink there is
    /// the operator's choice, so the root itself may be one).
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        Ok(Dir { fd })
    }

    /// Another handle on the same directory.
    pub fn try_clone(&self) -> io::Result<Dir> {
        Ok(Dir {
            fd: self.fd.try_clone()?,
        })
    }

    /// The directory `name` right below this one, never through a symlink.
    pub fn open_dir(&self, name: &str) -> io::Result<Dir> {
        let fd = rustix::fs::openat(&self.fd, component(name)?, DIR_FLAGS, Mode::empty())
            .map_err(errno)?;
        Ok(Dir { fd })
    }

    /// Creates the directory `name` (mode `mode`, before the umask); false if it existed.
    pub fn create_dir(&self, name: &str, mode: u32) -> io::Result<bool> {
        match rustix::fs::mkdirat(&self.fd, component(name)?, Mode::from_raw_mode(mode)) {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(errno(e)),
        }
    }

    /// Walks `components` down from here, creating missing directories with `create` (a
    /// mode) when given. Returns the last directory and how many of the walked directories
    /// were created by this call (always a suffix of the walk). `shown` names the walk in
    /// errors (the object path it is part of).
    pub fn walk(
        &self,
        components: &[&str],
        create: Option<u32>,
        shown: &Path,
    ) -> Result<(Dir, usize), WalkError> {
        match create {
            Some(mode) => self.walk_creating(components, mode, shown, &mut |_| Ok(())),
            None => self.walk_inner(components, None, shown),
        }
    }

    /// [`walk`](Self::walk) creating missing directories with `mode`, calling `before_create`
    /// with the components of each one just before it is made: a caller that must know after
    /// a crash which directories it made records that there first. An error from it stops
    /// the walk before that directory exists.
    pub fn walk_creating(
        &self,
        components: &[&str],
        mode: u32,
        shown: &Path,
        before_create: BeforeCreate<'_>,
    ) -> Result<(Dir, usize), WalkError> {
        self.walk_inner(components, Some((mode, before_create)), shown)
    }

    fn walk_inner(
        &self,
        components: &[&str],
        mut create: Option<(u32, BeforeCreate<'_>)>,
        shown: &Path,
    ) -> Result<(Dir, usize), WalkError> {
        let mut current: Option<Dir> = None;
        let mut created = 0;
        let mut at = PathBuf::new();
        for (depth, name) in components.iter().enumerate() {
            at.push(name);
            let parent = current.as_ref().unwrap_or(self);
            let io = |source: io::Error| WalkError::Io {
                path: shown.join(&at),
                source,
            };
            let next = match parent.open_dir(name) {
                Ok(dir) => dir,
                Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => {
                    let Some((mode, before_create)) = create.as_mut() else {
                        return Err(io(e));
                    };
                    before_create(&components[..=depth]).map_err(io)?;
                    if parent.create_dir(name, *mode).map_err(io)? {
                        created += 1;
                    }
                    parent
                        .open_dir(name)
                        .map_err(|e| self.classify(parent, name, e, shown.join(&at)))?
                }
                Err(e) => return Err(self.classify(parent, name, e, shown.join(&at))),
            };
            current = Some(next);
        }
        let dir = match current {
            Some(dir) => dir,
            None => self.try_clone().map_err(|source| WalkError::Io {
                path: shown.to_path_buf(),
                source,
            })?,
        };
        Ok((dir, created))
    }

    /// Turns a failed `open_dir` into the refusal it means.
    fn classify(&self, parent: &Dir, name: &str, e: io::Error, at: PathBuf) -> WalkError {
        match parent.stat(name) {
            Ok(Some(entry)) if entry.kind == Kind::Symlink => WalkError::Symlink(at),
            Ok(Some(entry)) if entry.kind != Kind::Directory => WalkError::NotADirectory(at),
            Ok(Some(_))
                if [Errno::NOTDIR, Errno::LOOP]
                    .map(|n| Some(n.raw_os_error()))
                    .contains(&e.raw_os_error()) =>
            {
                WalkError::Changed(at)
            }
            _ => WalkError::Io {
                path: at,
                source: e,
            },
        }
    }

    /// What `name` is (without following a symlink), or `None` if there is nothing there.
    pub fn stat(&self, name: &str) -> io::Result<Option<Entry>> {
        match rustix::fs::statat(&self.fd, component(name)?, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(Entry::of(&stat))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(errno(e)),
        }
    }

    /// What this directory is.
    pub fn stat_self(&self) -> io::Result<Entry> {
        Ok(Entry::of(&rustix::fs::fstat(&self.fd).map_err(errno)?))
    }

    /// Creates a new file `name` for writing (`O_EXCL`: never an existing file or a link).
    pub fn create_file(&self, name: &str, mode: u32) -> io::Result<File> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, component(name)?, flags, Mode::from_raw_mode(mode))
            .map_err(errno)?;
        Ok(File::from(fd))
    }

    /// Opens the file `name` for reading, never through a symlink.
    pub fn open_file(&self, name: &str) -> io::Result<File> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd =
            rustix::fs::openat(&self.fd, component(name)?, flags, Mode::empty()).map_err(errno)?;
        Ok(File::from(fd))
    }

    /// Opens the regular file `name` for reading, for content another user may have placed:
    /// never through a symlink, without blocking (a FIFO or device swapped in is opened, seen
    /// and refused, never waited on), and checked by `fstat` on the fd that will be read.
    /// Returns the file and what it is; anything but a regular file is an `InvalidInput` error.
    pub fn open_regular(&self, name: &str) -> io::Result<(File, Entry)> {
        let flags =
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        let fd =
            rustix::fs::openat(&self.fd, component(name)?, flags, Mode::empty()).map_err(|e| {
                match e {
                    // O_NOFOLLOW on a symlink.
                    Errno::LOOP => io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{name} is a symlink; refusing to follow it"),
                    ),
                    e => errno(e),
                }
            })?;
        let entry = stat_fd(&fd)?;
        if entry.kind != Kind::File {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name} is not a regular file (a FIFO, device or socket?); refusing it"),
            ));
        }
        Ok((File::from(fd), entry))
    }

    /// Opens (creating if needed) the file `name` for reading and writing, never through a
    /// symlink.
    pub fn open_rw(&self, name: &str, mode: u32) -> io::Result<File> {
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, component(name)?, flags, Mode::from_raw_mode(mode))
            .map_err(errno)?;
        Ok(File::from(fd))
    }

    /// Opens (creating if needed) the file `name` for appending, never through a symlink:
    /// each `write` lands whole at the end, whatever other writers do.
    pub fn open_append(&self, name: &str, mode: u32) -> io::Result<File> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::APPEND | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, component(name)?, flags, Mode::from_raw_mode(mode))
            .map_err(errno)?;
        Ok(File::from(fd))
    }

    /// Renames `from` here to `to` in `dest` (replacing a file there, never a directory).
    pub fn rename(&self, from: &str, dest: &Dir, to: &str) -> io::Result<()> {
        rustix::fs::renameat(&self.fd, component(from)?, &dest.fd, component(to)?).map_err(errno)
    }

    /// Removes the file (or symlink) `name`; fine if it is already gone.
    pub fn remove_file(&self, name: &str) -> io::Result<()> {
        match rustix::fs::unlinkat(&self.fd, component(name)?, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(errno(e)),
        }
    }

    /// Removes `name` and everything below it, never following a link out; fine if it is
    /// already gone.
    pub fn remove_all(&self, name: &str) -> io::Result<()> {
        match self.stat(name)? {
            None => Ok(()),
            Some(entry) if entry.kind != Kind::Directory => self.remove_file(name),
            Some(_) => {
                let dir = self.open_dir(name)?;
                for child in dir.names()? {
                    dir.remove_all(&child)?;
                }
                match rustix::fs::unlinkat(&self.fd, name, AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => Ok(()),
                    Err(e) => Err(errno(e)),
                }
            }
        }
    }

    /// The names in this directory (not `.` and `..`; names that are not UTF-8 are left out,
    /// since nothing this program writes has one).
    pub fn names(&self) -> io::Result<Vec<String>> {
        Ok(self.list()?.0)
    }

    /// The names in this directory (not `.` and `..`), sorted by their bytes: the UTF-8 ones,
    /// and apart the others (for a caller that must report them rather than skip them).
    pub fn list(&self) -> io::Result<(Vec<String>, Vec<std::ffi::OsString>)> {
        use std::os::unix::ffi::OsStrExt;
        let fd = rustix::fs::openat(&self.fd, ".", DIR_FLAGS, Mode::empty()).map_err(errno)?;
        let mut dir = rustix::fs::Dir::new(fd).map_err(errno)?;
        let mut names = Vec::new();
        let mut strange = Vec::new();
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(errno)?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            match std::str::from_utf8(name) {
                Ok(name) => names.push(name.to_string()),
                Err(_) => strange.push(std::ffi::OsStr::from_bytes(name).to_os_string()),
            }
        }
        names.sort_unstable();
        strange.sort_unstable();
        Ok((names, strange))
    }

    /// Renames `from` here to `to` in `dest`, never replacing anything there
    /// (`RENAME_NOREPLACE`: an existing `to` is an `AlreadyExists` error).
    pub fn rename_new(&self, from: &str, dest: &Dir, to: &str) -> io::Result<()> {
        rustix::fs::renameat_with(
            &self.fd,
            component(from)?,
            &dest.fd,
            component(to)?,
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(errno)
    }

    /// Makes this directory's entries durable.
    pub fn sync(&self) -> io::Result<()> {
        rustix::fs::fsync(&self.fd).map_err(errno)
    }

    /// Makes everything written to this directory's file system durable (`syncfs`): one call
    /// instead of one fsync per file when many small files were written.
    pub fn sync_file_system(&self) -> io::Result<()> {
        rustix::fs::syncfs(&self.fd).map_err(errno)
    }

    /// Sets this directory's permission bits.
    pub fn set_mode(&self, mode: u32) -> io::Result<()> {
        set_mode(&self.fd, mode)
    }

    /// Sets this directory's modification time.
    pub fn set_mtime(&self, secs: i64, nanos: u32) -> io::Result<()> {
        set_mtime(&self.fd, secs, nanos)
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Sets the permission bits of an open file or directory (never through a path).
pub fn set_mode(fd: impl AsFd, mode: u32) -> io::Result<()> {
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777)).map_err(errno)
}

/// Sets the modification time of an open file or directory, leaving its access time.
pub fn set_mtime(fd: impl AsFd, secs: i64, nanos: u32) -> io::Result<()> {
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: secs,
            tv_nsec: i64::from(nanos.min(999_999_999)),
        },
    };
    rustix::fs::futimens(fd, &times).map_err(errno)
}

/// What an open file is.
pub fn stat_fd(fd: impl AsFd) -> io::Result<Entry> {
    Ok(Entry::of(&rustix::fs::fstat(fd).map_err(errno)?))
}

/// The `SystemTime` of an mtime, if representable.
pub fn system_time(secs: i64, nanos: u32) -> Option<SystemTime> {
    let nanos = Duration::from_nanos(u64::from(nanos.min(999_999_999)));
    let base = if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))?
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))?
    };
    base.checked_add(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::symlink;

    #[test]
    fn walks_never_follow_a_symlink_and_create_only_below_the_root() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        symlink(outside.path(), root.path().join("link")).unwrap();
        std::fs::write(root.path().join("file"), b"x").unwrap();
        let dir = Dir::open(root.path()).unwrap();
        let shown = Path::new("obj");

        let err = dir.walk(&["link", "x"], Some(0o700), shown).unwrap_err();
        assert!(matches!(err, WalkError::Symlink(_)), "{err}");
        let err = dir.walk(&["file", "x"], Some(0o700), shown).unwrap_err();
        assert!(matches!(err, WalkError::NotADirectory(_)), "{err}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);

        let mut announced = Vec::new();
        let (deep, created) = dir
            .walk_creating(&["a", "b", "c"], 0o700, shown, &mut |made| {
                announced.push(made.join("/"));
                Ok(())
            })
            .unwrap();
        assert_eq!(created, 3);
        assert_eq!(announced, ["a", "a/b", "a/b/c"]);
        let (_, created) = dir.walk(&["a", "b"], Some(0o700), shown).unwrap();
        assert_eq!(created, 0);
        // A refusal before a directory is made leaves it unmade.
        let err = dir
            .walk_creating(&["a", "new"], 0o700, shown, &mut |_| {
                Err(io::Error::other("no"))
            })
            .unwrap_err();
        assert!(matches!(err, WalkError::Io { .. }), "{err}");
        assert!(!root.path().join("a/new").exists());
        let mut f = deep.create_file("f", 0o600).unwrap();
        f.write_all(b"data").unwrap();
        assert!(deep.create_file("f", 0o600).is_err(), "O_EXCL");
        assert_eq!(std::fs::read(root.path().join("a/b/c/f")).unwrap(), b"data");

        // A directory swapped for a link after it was opened: the fd still names the real one.
        let (b, _) = dir.walk(&["a", "b"], None, shown).unwrap();
        std::fs::rename(root.path().join("a/b"), root.path().join("moved")).unwrap();
        symlink(outside.path(), root.path().join("a/b")).unwrap();
        b.create_file("g", 0o600).unwrap();
        assert!(root.path().join("moved/g").exists());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        assert!(matches!(
            dir.walk(&["a", "b"], None, shown),
            Err(WalkError::Symlink(_))
        ));

        // Files are opened and removed without following links either.
        assert!(dir.open_file("link").is_err());
        dir.remove_all("moved").unwrap();
        assert!(!root.path().join("moved").exists());
        dir.remove_file("link").unwrap();
        assert!(outside.path().exists());
        assert!(component("..").is_err() && component("a/b").is_err());
    }

    #[test]
    fn metadata_changes_go_through_fds() {
        let root = tempfile::tempdir().unwrap();
        let dir = Dir::open(root.path()).unwrap();
        let file = dir.create_file("f", 0o600).unwrap();
        set_mode(&file, 0o640).unwrap();
        set_mtime(&file, 1_000_000, 5).unwrap();
        let entry = dir.stat("f").unwrap().unwrap();
        assert_eq!((entry.kind, entry.mode), (Kind::File, 0o640));
        assert_eq!((entry.mtime_secs, entry.mtime_nanos), (1_000_000, 5));
        assert_eq!(stat_fd(&file).unwrap().inode, entry.inode);
        assert_eq!(dir.stat("missing").unwrap(), None);
        assert_eq!(dir.names().unwrap(), ["f"]);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    /// One step of a hostile sequence: a path to create as the receiver would (walk with
    /// create, then a new file), or, between steps, a local user planting a symlink to the
    /// outside (or a file) at a path below the root.
    #[derive(Debug, Clone)]
    enum Step {
        Publish(Vec<u8>),
        PlantLink(Vec<u8>),
        PlantFile(Vec<u8>),
        SwapDirForLink(Vec<u8>),
    }

    fn names(parts: &[u8]) -> Vec<String> {
        // A small alphabet so plants and publishes meet on the same names.
        parts.iter().map(|b| format!("n{}", b % 4)).collect()
    }

    fn step() -> impl Strategy<Value = Step> {
        let parts = proptest::collection::vec(any::<u8>(), 1..4);
        prop_oneof![
            3 => parts.clone().prop_map(Step::Publish),
            1 => parts.clone().prop_map(Step::PlantLink),
            1 => parts.clone().prop_map(Step::PlantFile),
            1 => parts.prop_map(Step::SwapDirForLink),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Whatever a local user plants between them, no sequence of publications creates
        /// anything outside the root.
        #[test]
        fn no_sequence_of_walks_creates_anything_outside_the_root(
            steps in proptest::collection::vec(step(), 1..24),
        ) {
            let root = tempfile::tempdir().unwrap();
            let outside = tempfile::tempdir().unwrap();
            let dir = Dir::open(root.path()).unwrap();
            // The local user's plants, made below the root without following a link (they could
            // write outside themselves; what is checked is what the walks do).
            let plant = |parts: &[u8], what: &dyn Fn(&Dir, &str)| {
                let names = names(parts);
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let (last, parents) = refs.split_last().unwrap();
                if let Ok((parent, _)) = dir.walk(parents, None, Path::new("plant")) {
                    what(&parent, last);
                }
            };
            for (i, step) in steps.iter().enumerate() {
                match step {
                    Step::Publish(parts) => {
                        let names = names(parts);
                        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                        let (last, parents) = refs.split_last().unwrap();
                        if let Ok((parent, _)) = dir.walk(parents, Some(0o755), Path::new("p")) {
                            let _ = parent.create_file(&format!("{last}-{i}"), 0o644);
                        }
                    }
                    Step::PlantLink(parts) => plant(parts, &|parent, name| {
                        let _ = rustix::fs::symlinkat(outside.path(), parent, name);
                    }),
                    Step::PlantFile(parts) => plant(parts, &|parent, name| {
                        let _ = parent.create_file(name, 0o644);
                    }),
                    Step::SwapDirForLink(parts) => plant(parts, &|parent, name| {
                        if parent.rename(name, &dir, &format!("moved-{i}")).is_ok() {
                            let _ = rustix::fs::symlinkat(outside.path(), parent, name);
                        }
                    }),
                }
                prop_assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
            }
        }
    }
}
