//! Looking inside archives (zip — PyTorch checkpoints and NumPy `.npz` are zips — and tar):
//! every member is checked with the policy's rules, nested archives too, within bounds that
//! a hostile archive cannot stretch.
//!
//! - Member paths must be plain relative paths (`sluice_common::paths`: no absolute path, no
//!   `..`, no control or bidi characters, no backslash), and pass the `deny` rules.
//! - Links and special files are refused (a symlink member is how archive extractors get
//!   turned into writes outside their directory).
//! - A zip must read the same to every zip reader (`zipmap`): no prefix, no appended bytes,
//!   no bytes between members, no overlapping entries, no name twice.
//! - Bombs: a member may not expand more than [`MAX_RATIO`] times its compressed size (beyond
//!   1 MiB), nor declare one size and deliver another; all members of all archives of one
//!   file together may not expand beyond [`MAX_RATIO`] times the file's real size (at least
//!   [`EXPANDED_FLOOR`](crate::bounds::EXPANDED_FLOOR)), nor beyond the policy's `max_file_size` (else
//!   [`DEFAULT_MAX_EXPANDED`](crate::bounds::DEFAULT_MAX_EXPANDED)) — budgets by what arrived, not by what the archive declares; at
//!   most [`MAX_MEMBERS`] members and [`MAX_DEPTH`](crate::bounds::MAX_DEPTH) levels of nesting. A compressed member
//!   that must be read twice (a zip, or a member that is two things at once) is held in
//!   memory, so it may be at most [`MAX_NESTED_ZIP`] bytes.

use std::io::{self, Read, Seek};

use crate::bounds::{refused, MAX_CENTRAL_DIRECTORY, MAX_MEMBERS, MAX_NESTED_ZIP, MAX_RATIO};
use crate::inspector::{Inspector, Nested, ReadSeek};
use crate::refusal::Refusal;
use crate::sniff::{Kind, Kinds};
use crate::zipmap::{self, le, Layout};

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

/// Opens a zip, refusing one that does not parse — and, first, one whose end-of-central-
/// directory records (every candidate in the last 64 KiB, and its ZIP64 record) announce more
/// than [`MAX_MEMBERS`] members or a central directory over [`MAX_CENTRAL_DIRECTORY`]: the
/// zip library reads the whole central directory into memory when it opens an archive.
pub fn open_zip<R: Read + Seek>(mut reader: R, shown: &str) -> Result<zip::ZipArchive<R>, Refusal> {
    check_central_directory(&mut reader, shown)?;
    zip::ZipArchive::new(reader).map_err(|e| refused(shown, &format!("not a readable zip ({e})")))
}

fn check_central_directory<R: Read + Seek>(r: &mut R, shown: &str) -> Result<(), Refusal> {
    use io::SeekFrom;
    let len = r.seek(SeekFrom::End(0))?;
    let tail_len = len.min(22 + 65_535);
    r.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = vec![0u8; usize::try_from(tail_len).unwrap_or(0)];
    r.read_exact(&mut tail)?;
    let too_big = |entries: u64, directory: u64| {
        entries > MAX_MEMBERS as u64 || directory > MAX_CENTRAL_DIRECTORY
    };
    let candidates = tail
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"PK\x05\x06");
    for (at, _) in candidates {
        let (mut entries, mut directory) = (le(&tail, at + 10, 2), le(&tail, at + 12, 4));
        // ZIP64: the locator 20 bytes before points at the record with the real counts.
        if (entries == 0xFFFF || directory == 0xFFFF_FFFF) && at >= 20 {
            let locator = &tail[at - 20..at];
            if locator.starts_with(b"PK\x06\x07") {
                let mut record = [0u8; 56];
                r.seek(SeekFrom::Start(le(locator, 8, 8)))?;
                if r.read_exact(&mut record).is_ok() && record.starts_with(b"PK\x06\x06") {
                    (entries, directory) = (le(&record, 32, 8), le(&record, 40, 8));
                }
            }
        }
        if too_big(entries, directory) {
            return Err(refused(
                shown,
                &format!("a central directory of {entries} members, {directory} bytes"),
            ));
        }
    }
    r.seek(SeekFrom::Start(0))?;
    Ok(())
}

/// Whether a member of `size` bytes compressed to `compressed` expands too much.
pub fn is_bomb(size: u64, compressed: u64) -> bool {
    size > 1 << 20 && size / compressed.max(1) > MAX_RATIO
}

/// Longest GNU long-name record accepted (the names themselves are at most 4 KiB).
const MAX_LONG_NAME: u64 = 4096;
/// Longest PAX extended header accepted.
const MAX_PAX: u64 = 64 << 10;

/// tar archives (POSIX ustar, GNU long names, PAX headers), walked header by header with
/// bounded memory (a general tar library reads extension records of any size into memory):
/// each member checked by `Nested::member`.
#[derive(Debug)]
pub struct TarInspector;

/// A member's header, with what GNU and PAX extension records said before it.
#[derive(Debug, Default)]
struct TarHeader {
    name: String,
    kind: u8,
    size: u64,
}

/// Bytes of padding after `size` bytes of data.
fn tar_padding(size: u64) -> u64 {
    (512 - size % 512) % 512
}

/// A numeric header field: octal ASCII, or base-256 when the high bit of its first byte is set.
fn tar_number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut n: u64 = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            n = n.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(n);
    }
    let text = std::str::from_utf8(field).ok()?;
    let digits = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(digits, 8).ok()
}

/// A NUL-terminated header string.
fn tar_string(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// Reads exactly `n` bytes (an extension record) after checking the bound.
fn tar_record(r: &mut dyn Read, n: u64, max: u64, path: &str) -> Result<Vec<u8>, Refusal> {
    if n > max {
        return Err(refused(
            path,
            &format!("a tar extension record of {n} bytes"),
        ));
    }
    let mut data = Vec::new();
    r.take(n).read_to_end(&mut data)?;
    if data.len() as u64 != n {
        return Err(refused(path, "not a readable tar (truncated)"));
    }
    io::copy(&mut r.take(tar_padding(n)), &mut io::sink())?;
    Ok(data)
}

/// The `path` and `size` of PAX records (`LEN key=value\n` each).
fn pax_overrides(data: &[u8], header: &mut TarHeader) {
    let text = String::from_utf8_lossy(data);
    for record in text.split_terminator('\n') {
        let Some((_, kv)) = record.split_once(' ') else {
            continue;
        };
        match kv.split_once('=') {
            Some(("path", v)) => header.name = v.to_string(),
            Some(("size", v)) => {
                if let Ok(n) = v.parse() {
                    header.size = n;
                }
            }
            _ => {}
        }
    }
}

impl TarInspector {
    /// The next member's header, or `None` at the end of the archive.
    fn next(r: &mut dyn Read, path: &str) -> Result<Option<TarHeader>, Refusal> {
        let mut pending = TarHeader::default();
        let (mut long_name, mut pax) = (None, None);
        loop {
            let mut block = [0u8; 512];
            let mut got = 0;
            while got < 512 {
                match r.read(&mut block[got..])? {
                    0 if got == 0 => return Ok(None),
                    0 => return Err(refused(path, "not a readable tar (truncated header)")),
                    n => got += n,
                }
            }
            if block.iter().all(|b| *b == 0) {
                return Ok(None);
            }
            let stored = tar_number(&block[148..156]);
            let mut sum: u64 = block.iter().map(|b| u64::from(*b)).sum();
            sum -= block[148..156].iter().map(|b| u64::from(*b)).sum::<u64>();
            sum += 8 * u64::from(b' ');
            if stored != Some(sum) {
                return Err(refused(path, "not a readable tar (bad header checksum)"));
            }
            let size = tar_number(&block[124..136])
                .ok_or_else(|| refused(path, "not a readable tar (bad size)"))?;
            match block[156] {
                b'L' => long_name = Some(tar_record(r, size, MAX_LONG_NAME, path)?),
                b'K' => drop(tar_record(r, size, MAX_LONG_NAME, path)?),
                b'x' => pax = Some(tar_record(r, size, MAX_PAX, path)?),
                b'g' => drop(tar_record(r, size, MAX_PAX, path)?),
                kind => {
                    let mut name = tar_string(&block[..100]);
                    if &block[257..262] == b"ustar" {
                        let prefix = tar_string(&block[345..500]);
                        if !prefix.is_empty() {
                            name = format!("{prefix}/{name}");
                        }
                    }
                    pending.name = name;
                    pending.kind = kind;
                    pending.size = size;
                    if let Some(long) = long_name {
                        pending.name = tar_string(&long);
                    }
                    if let Some(data) = pax {
                        pax_overrides(&data, &mut pending);
                    }
                    return Ok(Some(pending));
                }
            }
        }
    }
}

/// A reader that counts what it hands out (where a tar's members lie).
#[derive(Debug)]
struct Counting<R> {
    inner: R,
    at: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.at += n as u64;
        Ok(n)
    }
}

impl Inspector for TarInspector {
    fn name(&self) -> &'static str {
        "tar"
    }

    fn claims(&self, kinds: Kinds, _head: &[u8], _path: &str) -> bool {
        kinds.has(Kind::Tar)
    }

    fn inspect(
        &self,
        file: &mut dyn Read,
        path: &str,
        _size: u64,
        nested: &mut Nested<'_>,
    ) -> Result<(), Refusal> {
        nested.check_depth(path)?;
        let mut file = Counting { inner: file, at: 0 };
        // Where each regular member's data lies: a zip found at the tar's end may be one.
        let mut members = Vec::new();
        while let Some(header) = Self::next(&mut file, path)? {
            nested.clock().check(path)?;
            let shown = format!("{path}!{}", header.name);
            nested.check_member_name(&shown, &header.name)?;
            let size = header.size;
            match header.kind {
                // A regular file (old, ustar and contiguous): read whole by `member`.
                b'0' | 0 | b'7' => {
                    members.push((file.at, file.at.saturating_add(size)));
                    let mut data = (&mut file).take(size);
                    nested.member(&mut data, &shown, &header.name, size)?;
                }
                b'5' => io::copy(&mut (&mut file).take(size), &mut io::sink()).map(drop)?,
                _ => return Err(refused(&shown, "links and special files are refused")),
            }
            io::copy(&mut (&mut file).take(tar_padding(size)), &mut io::sink())?;
        }
        nested.walked_tar(members);
        Ok(())
    }
}

/// zip archives (PyTorch checkpoints, NumPy `.npz`), read in place: the layout checked by our
/// own parser (`zipmap`), then each member checked by `Nested` — a stored one in place, a
/// compressed one as the zip library inflates it. A compressed nested zip is held in memory.
#[derive(Debug)]
pub struct ZipInspector;

/// What the zip library says of a member.
#[derive(Debug)]
struct ZipMember {
    name: String,
    header: u64,
    raw_name: Vec<u8>,
    symlink: bool,
    dir: bool,
    size: u64,
    compressed: u64,
}

impl ZipInspector {
    fn members<R: Read + Seek>(
        &self,
        mut r: R,
        path: &str,
        nested: &mut Nested<'_>,
    ) -> Result<(), Refusal> {
        nested.check_depth(path)?;
        // A zip found at the end of a tar's member is that member, inspected as a zip by the
        // tar (Python's zipfile reads the tar as that zip, with the tar before it).
        if let Some(end) = zipmap::find_in(&mut r)? {
            if end
                .start()
                .is_some_and(|start| start > 0 && nested.is_tar_member(start, end.ends))
            {
                return Ok(());
            }
        }
        let layout = Layout::read(&mut r, path, nested.clock())?;
        let mut zip = open_zip(r, path)?;
        // The zip library must read what every reader reads (it searches the whole file for
        // end records, and keeps one entry per name).
        let differs = |what: &str| {
            refused(
                path,
                &format!("the zip library reads it differently ({what})"),
            )
        };
        if zip.len() != layout.entries.len()
            || zip.offset() != 0
            || zip.central_directory_start() != layout.end.directory_offset
        {
            return Err(differs("its central directory"));
        }
        for (i, entry) in layout.entries.iter().enumerate() {
            let m = Self::member(&mut zip, i, path)?;
            if m.header != entry.header
                || m.raw_name != entry.name
                || (m.size, m.compressed) != (entry.size, entry.compressed)
            {
                return Err(differs(&format!("member {i}")));
            }
            let shown = format!("{path}!{}", m.name);
            nested.check_member_name(&shown, &m.name)?;
            if m.symlink {
                return Err(refused(&shown, "links and special files are refused"));
            }
            if m.dir {
                if m.size > 0 {
                    return Err(refused(&shown, "a directory entry with contents"));
                }
                continue;
            }
            let (size, compressed) = (m.size, m.compressed);
            if is_bomb(size, compressed) {
                return Err(refused(
                    &shown,
                    &format!("expands {size} bytes from {compressed} (a bomb)"),
                ));
            }
            let unreadable = |e| refused(&shown, &format!("unreadable ({e})"));
            if entry.method == 0 {
                let mut member = zip.by_index_seek(i).map_err(unreadable)?;
                nested.member_seekable(&mut member, &shown, &m.name, size)?;
            } else {
                let mut member = zip.by_index(i).map_err(unreadable)?;
                nested.member(&mut Declared::new(&mut member, size), &shown, &m.name, size)?;
            }
        }
        Ok(())
    }

    fn member<R: Read + Seek>(
        zip: &mut zip::ZipArchive<R>,
        i: usize,
        path: &str,
    ) -> Result<ZipMember, Refusal> {
        let m = zip
            .by_index_raw(i)
            .map_err(|e| refused(path, &format!("member {i} unreadable ({e})")))?;
        Ok(ZipMember {
            name: m.name().to_string(),
            header: m.header_start(),
            raw_name: m.name_raw().to_vec(),
            symlink: m.is_symlink(),
            dir: m.is_dir(),
            size: m.size(),
            compressed: m.compressed_size(),
        })
    }
}

impl Inspector for ZipInspector {
    fn name(&self) -> &'static str {
        "zip"
    }

    fn claims(&self, kinds: Kinds, _head: &[u8], _path: &str) -> bool {
        kinds.has(Kind::Zip)
    }

    fn seeks(&self) -> bool {
        true
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
