//! Looking inside archives (zip — PyTorch checkpoints and NumPy `.npz` are zips — and tar):
//! every member is checked with the policy's rules, nested archives too, within bounds that
//! a hostile archive cannot stretch.
//!
//! - Member paths must be plain relative paths (`sluice_common::paths`: no absolute path, no
//!   `..`, no control or bidi characters, no backslash), and pass the `deny` rules.
//! - Links and special files are refused (a symlink member is how archive extractors get
//!   turned into writes outside their directory).
//! - Bombs: a member may not expand more than [`MAX_RATIO`] times its compressed size (beyond
//!   1 MiB), nor declare one size and deliver more; all members together may not exceed the
//!   policy's `max_file_size` (else [`DEFAULT_MAX_EXPANDED`]); at most [`MAX_MEMBERS`]
//!   members and [`MAX_DEPTH`] levels of nesting. A zip nested in an archive is read into
//!   memory to be opened, so it may be at most [`MAX_NESTED_ZIP`] bytes.

use std::io::{self, Read, Seek};

use crate::inspector::{Inspector, Nested, ReadSeek};
use crate::sniff::{self, Kind};
use crate::Refusal;

/// Levels of archives within archives.
pub const MAX_DEPTH: u32 = 3;
/// Members of all archives of one file together.
pub const MAX_MEMBERS: usize = 10_000;
/// Largest expansion of a compressed member (above 1 MiB).
pub const MAX_RATIO: u64 = 200;
/// All members together, when the policy sets no `max_file_size`.
pub const DEFAULT_MAX_EXPANDED: u64 = 1 << 40;
/// Largest zip opened inside another archive (held in memory).
pub const MAX_NESTED_ZIP: u64 = 64 << 20;

/// What the members of one file's archives may still use.
#[derive(Debug)]
pub struct Budget {
    members: usize,
    expanded: u64,
    max_expanded: u64,
}

impl Budget {
    pub fn new(max_expanded: u64) -> Self {
        Budget {
            members: 0,
            expanded: 0,
            max_expanded,
        }
    }

    /// Counts one member of `size` bytes.
    pub fn take(&mut self, shown: &str, size: u64) -> Result<(), Refusal> {
        self.members += 1;
        if self.members > MAX_MEMBERS {
            return Err(refused(shown, "more than 10000 members"));
        }
        self.expanded = self.expanded.saturating_add(size);
        if self.expanded > self.max_expanded {
            return Err(refused(
                shown,
                &format!("members expand beyond {} bytes", self.max_expanded),
            ));
        }
        Ok(())
    }
}

/// The refusal for member `shown`.
pub fn refused(shown: &str, why: &str) -> Refusal {
    Refusal::Archive(format!("{shown}: {why}"))
}

/// A member's refusal, naming the member (a nested archive's refusal names its own).
pub fn within(shown: &str, refusal: Refusal) -> Refusal {
    match refusal {
        Refusal::Archive(_) => refusal,
        other => refused(shown, &other.to_string()),
    }
}

/// A member's path checked: a plain relative path (directories may end in `/`).
pub fn check_member_path(shown: &str, name: &str) -> Result<(), Refusal> {
    let trimmed = name.strip_suffix('/').unwrap_or(name);
    sluice_common::paths::validate_object_path(trimmed)
        .map_err(|e| refused(shown, &format!("hostile member path ({e})")))
}

/// A reader that fails once it has delivered more than its member declared.
#[derive(Debug)]
pub struct Declared<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Declared<R> {
    pub fn new(inner: R, size: u64) -> Self {
        Declared { inner, left: size }
    }
}

impl<R: Read> Read for Declared<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // Anything more than declared is a lie (a bomb in disguise).
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other("member longer than it declares")),
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Opens a zip, refusing one that does not parse.
pub fn open_zip<R: Read + Seek>(reader: R, shown: &str) -> Result<zip::ZipArchive<R>, Refusal> {
    zip::ZipArchive::new(reader).map_err(|e| refused(shown, &format!("not a readable zip ({e})")))
}

/// Whether a member of `size` bytes compressed to `compressed` expands too much.
pub fn is_bomb(size: u64, compressed: u64) -> bool {
    size > 1 << 20 && size / compressed.max(1) > MAX_RATIO
}

/// tar archives: each member checked by `Nested::member`.
#[derive(Debug)]
pub struct TarInspector;

impl Inspector for TarInspector {
    fn name(&self) -> &'static str {
        "tar"
    }

    fn claims(&self, head: &[u8], size: u64, _path: &str) -> bool {
        sniff::sniff(head, size) == Kind::Tar
    }

    fn inspect(
        &self,
        file: &mut dyn Read,
        path: &str,
        _size: u64,
        nested: &mut Nested<'_>,
    ) -> Result<(), Refusal> {
        nested.check_depth(path)?;
        let unreadable = |e: io::Error| refused(path, &format!("not a readable tar ({e})"));
        let mut tar = tar::Archive::new(file);
        for entry in tar.entries().map_err(unreadable)? {
            let mut entry = entry.map_err(unreadable)?;
            let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let shown = format!("{path}!{name}");
            nested.check_member_name(&shown, &name)?;
            let kind = entry.header().entry_type();
            if kind.is_dir() {
                continue;
            }
            if !kind.is_file() {
                return Err(refused(&shown, "links and special files are refused"));
            }
            let size = entry.size();
            nested.member(&mut Declared::new(&mut entry, size), &shown, &name, size)?;
        }
        Ok(())
    }
}

/// zip archives (PyTorch checkpoints, NumPy `.npz`): each member checked by
/// `Nested::member`; the top-level file is read in place, a nested zip from memory.
#[derive(Debug)]
pub struct ZipInspector;

impl ZipInspector {
    fn members<R: Read + Seek>(
        &self,
        r: R,
        path: &str,
        nested: &mut Nested<'_>,
    ) -> Result<(), Refusal> {
        nested.check_depth(path)?;
        let mut zip = open_zip(r, path)?;
        for i in 0..zip.len() {
            let mut member = zip
                .by_index(i)
                .map_err(|e| refused(path, &format!("member {i} unreadable ({e})")))?;
            let name = member.name().to_string();
            let shown = format!("{path}!{name}");
            nested.check_member_name(&shown, &name)?;
            if member.is_symlink() {
                return Err(refused(&shown, "links and special files are refused"));
            }
            if member.is_dir() {
                continue;
            }
            let (size, compressed) = (member.size(), member.compressed_size());
            if is_bomb(size, compressed) {
                return Err(refused(
                    &shown,
                    &format!("expands {size} bytes from {compressed} (a bomb)"),
                ));
            }
            nested.member(&mut Declared::new(&mut member, size), &shown, &name, size)?;
        }
        Ok(())
    }
}

impl Inspector for ZipInspector {
    fn name(&self) -> &'static str {
        "zip"
    }

    fn claims(&self, head: &[u8], size: u64, _path: &str) -> bool {
        sniff::sniff(head, size) == Kind::Zip
    }

    fn inspect(
        &self,
        file: &mut dyn Read,
        path: &str,
        size: u64,
        nested: &mut Nested<'_>,
    ) -> Result<(), Refusal> {
        if size > MAX_NESTED_ZIP {
            return Err(refused(path, "a nested zip larger than 64 MiB"));
        }
        let mut all = Vec::new();
        file.take(size).read_to_end(&mut all)?;
        self.members(io::Cursor::new(all), path, nested)
    }

    fn inspect_file(
        &self,
        file: &mut dyn ReadSeek,
        path: &str,
        _size: u64,
        nested: &mut Nested<'_>,
    ) -> Result<(), Refusal> {
        self.members(file, path, nested)
    }
}
