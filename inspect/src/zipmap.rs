//! Where a zip's parts lie, read by our own parser before the zip library opens it, so that
//! what the gate inspects is what every zip reader sees.
//!
//! ```text
//!  0 ─ local header │ data │ [descriptor] ─ local header │ data │ … ─ central directory
//!    ─ [ZIP64 end record ─ ZIP64 locator] ─ end record │ comment ─ end of file
//! ```
//!
//! Readers disagree about zips in ways an attacker can choose between. Directory readers
//! (Python's `zipfile`, `unzip`, libarchive, Go, Java) find a zip by its end record in the
//! last 64 KiB of a file, *whatever its first bytes*, and take bytes before the offsets'
//! origin for a self-extractor's stub; the zip crate searches the whole file, and keeps one
//! entry per name; PyTorch and NumPy call a file a zip only if it starts with `PK\3\4`, else
//! they unpickle it; streaming readers walk local headers from byte 0. So:
//!
//! - [`find`] says whether a file is a zip to *any* of them — an end record in its last
//!   64 KiB whose central directory is where some reader looks (at its offset, or right
//!   before the end records) — so a zip behind a pickle, a NumPy or safetensors header is
//!   still inspected as a zip ([`Kept`] does the same for a stream).
//! - [`Layout::read`] accepts a zip only if every reader sees the same members: the archive
//!   starts at byte 0 and its members tile the file exactly — the first local header at 0,
//!   each next one right after the previous member's data (and data descriptor), the central
//!   directory right after the last member and ending where the end records begin, the end
//!   record ending the file — with no name twice, each local header naming the same file,
//!   method and sizes as its central entry, and the central directory's entries filling it.
//!   Refused: a prefix (a polyglot), bytes appended after the end record, bytes between
//!   members that no member holds, and members that overlap (one compressed stream shared by
//!   many entries: a bomb whose cost grows with the entries, not with the file).

use std::collections::HashSet;
use std::io::{self, Read, Seek, SeekFrom};

use crate::bounds::{refused, MAX_CENTRAL_DIRECTORY, MAX_MEMBERS};
use crate::clock::Clock;
use crate::refusal::Refusal;

const END_SIG: &[u8; 4] = b"PK\x05\x06";
const CENTRAL_SIG: &[u8; 4] = b"PK\x01\x02";
const LOCAL_SIG: &[u8; 4] = b"PK\x03\x04";
const LOCATOR_SIG: &[u8; 4] = b"PK\x06\x07";
const ZIP64_END_SIG: &[u8; 4] = b"PK\x06\x06";
const DESCRIPTOR_SIG: &[u8; 4] = b"PK\x07\x08";

/// The end record's fixed part.
pub const END_LEN: u64 = 22;
/// Where readers look for the end record: its fixed part and the longest comment.
pub const TAIL_LEN: u64 = END_LEN + 0xFFFF;
/// The ZIP64 end record without extensible data, and its locator.
const ZIP64_END_LEN: u64 = 56;
const LOCATOR_LEN: u64 = 20;
/// Central directory header positions a [`Kept`] stream remembers.
const MAX_HEADERS: usize = 1 << 16;
/// A 32-bit field that says "see the ZIP64 extra field".
const SATURATED: u64 = 0xFFFF_FFFF;

/// The little-endian number of `n` bytes at `at` (0 where `bytes` is shorter: callers check
/// lengths first).
pub(crate) fn le(bytes: &[u8], at: usize, n: usize) -> u64 {
    bytes.get(at..at + n).map_or(0, |b| {
        b.iter().rev().fold(0u64, |v, x| (v << 8) | u64::from(*x))
    })
}

/// Where `needle` starts in `hay`.
fn positions<'a>(
    hay: &'a [u8],
    needle: &'a [u8; 4],
) -> impl DoubleEndedIterator<Item = usize> + 'a {
    hay.windows(4)
        .enumerate()
        .filter(move |(_, w)| *w == needle)
        .map(|(i, _)| i)
}

/// Bytes of a file at given offsets: a seekable file, or what a stream kept.
pub trait Lookup {
    /// Up to `n` bytes at `at` (fewer at the end of the file); `None` if not known.
    fn bytes(&mut self, at: u64, n: usize) -> io::Result<Option<Vec<u8>>>;

    /// Whether a central directory header starts at `at`; `None` if not known.
    fn central_header_at(&mut self, at: u64) -> io::Result<Option<bool>> {
        Ok(self.bytes(at, 4)?.map(|b| b == CENTRAL_SIG))
    }
}

/// A seekable file of `len` bytes.
#[derive(Debug)]
pub struct FileLookup<'r, R: ?Sized> {
    r: &'r mut R,
    len: u64,
}

impl<'r, R: Read + Seek + ?Sized> FileLookup<'r, R> {
    /// `r`, whose length is found by seeking to its end.
    pub fn new(r: &'r mut R) -> io::Result<Self> {
        let len = r.seek(SeekFrom::End(0))?;
        Ok(FileLookup { r, len })
    }

    /// Its last [`TAIL_LEN`] bytes, and where they start.
    fn tail(&mut self) -> io::Result<(Vec<u8>, u64)> {
        let base = self.len.saturating_sub(TAIL_LEN);
        Ok((
            self.bytes(base, TAIL_LEN as usize)?.unwrap_or_default(),
            base,
        ))
    }
}

impl<R: Read + Seek + ?Sized> Lookup for FileLookup<'_, R> {
    fn bytes(&mut self, at: u64, n: usize) -> io::Result<Option<Vec<u8>>> {
        let n = n.min(usize::try_from(self.len.saturating_sub(at)).unwrap_or(usize::MAX));
        let mut buf = Vec::with_capacity(n);
        if n > 0 {
            self.r.seek(SeekFrom::Start(at))?;
            (&mut *self.r).take(n as u64).read_to_end(&mut buf)?;
        }
        Ok(Some(buf))
    }
}

/// An end record as a reader finds it, with what its ZIP64 end record says (if it has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    /// Where the end record starts.
    pub at: u64,
    /// Where it ends, with its comment.
    pub ends: u64,
    /// Members, and the central directory's size and offset.
    pub entries: u64,
    pub directory_size: u64,
    pub directory_offset: u64,
    /// Where the central directory must end: the ZIP64 end record, else the end record.
    pub directory_end: u64,
}

impl End {
    /// Where a reader that allows bytes before an archive (Python's `zipfile`, `unzip`) takes
    /// it to start: its central directory is right before its end records, so offsets count
    /// from there. `None` if the directory cannot be there.
    pub fn start(&self) -> Option<u64> {
        self.directory_end
            .checked_sub(self.directory_size)?
            .checked_sub(self.directory_offset)
    }

    /// The end record starting at `tail[i..]` (at least [`END_LEN`] bytes), the file's tail
    /// starting at `base`.
    fn parse(tail: &[u8], i: usize, base: u64) -> End {
        let r = &tail[i..];
        let at = base + i as u64;
        End {
            at,
            ends: at + END_LEN + le(r, 20, 2),
            entries: le(r, 10, 2),
            directory_size: le(r, 12, 4),
            directory_offset: le(r, 16, 4),
            directory_end: at,
        }
    }

    /// The same end record read through a ZIP64 end record `z` at `place`.
    fn zip64(self, z: &[u8], place: u64) -> End {
        End {
            entries: le(z, 32, 8),
            directory_size: le(z, 40, 8),
            directory_offset: le(z, 48, 8),
            directory_end: place,
            ..self
        }
    }
}

/// Whether a file whose last bytes are `tail` (from offset `base`) is a zip to some reader:
/// an end record there (the last first) whose central directory is where a reader looks —
/// at its offset, or right before the end records — read through its ZIP64 records where
/// they are found (where the locator says, or right before it). An empty directory is no
/// zip (no reader finds a member in it). An end record whose directory cannot be checked (a
/// stream that did not keep those bytes) counts as a zip. Readers that search the whole
/// file (the zip crate) are not followed beyond the last 64 KiB.
pub fn find(look: &mut dyn Lookup, tail: &[u8], base: u64) -> io::Result<Option<End>> {
    for i in positions(tail, END_SIG).rev() {
        if i + END_LEN as usize > tail.len() {
            continue;
        }
        let plain = End::parse(tail, i, base);
        let mut views = vec![plain];
        let mut unknown = false;
        if plain.at >= LOCATOR_LEN {
            let locator_at = plain.at - LOCATOR_LEN;
            match look.bytes(locator_at, LOCATOR_LEN as usize)? {
                Some(loc) if loc.starts_with(LOCATOR_SIG) && loc.len() == 20 => {
                    let mut places = vec![le(&loc, 8, 8)];
                    places.extend(locator_at.checked_sub(ZIP64_END_LEN));
                    for place in places {
                        match look.bytes(place, ZIP64_END_LEN as usize)? {
                            Some(z) if z.len() == 56 && z.starts_with(ZIP64_END_SIG) => {
                                views.push(plain.zip64(&z, place));
                            }
                            Some(_) => {}
                            None => unknown = true,
                        }
                    }
                }
                Some(_) => {}
                None => unknown = true,
            }
        }
        for view in &views {
            if view.entries == 0 && view.directory_size == 0 {
                continue;
            }
            let places = [
                Some(view.directory_offset),
                view.directory_end.checked_sub(view.directory_size),
            ];
            for place in places.into_iter().flatten() {
                if place >= view.directory_end {
                    continue;
                }
                match look.central_header_at(place)? {
                    Some(true) => return Ok(Some(*view)),
                    Some(false) => {}
                    None => unknown = true,
                }
            }
        }
        if unknown {
            return Ok(Some(plain));
        }
    }
    Ok(None)
}

/// [`find`] on a seekable file.
pub fn find_in<R: Read + Seek + ?Sized>(r: &mut R) -> io::Result<Option<End>> {
    let mut look = FileLookup::new(r)?;
    let (tail, base) = look.tail()?;
    find(&mut look, &tail, base)
}

/// A reader that keeps, of the stream it passes on, what a zip reader would look at: the
/// last [`TAIL_LEN`] bytes (and the 76 before them, where ZIP64 records would be), and where
/// central directory headers began (the first 65 536). So a stream (a compressed archive
/// member) can be asked [`Kept::zip_end`] once read.
#[derive(Debug)]
pub struct Kept<R> {
    inner: R,
    window: Vec<u8>,
    /// Offset of `window[0]` in the stream.
    base: u64,
    headers: Vec<u64>,
    overflow: bool,
}

impl<R> Kept<R> {
    pub fn new(inner: R) -> Self {
        Kept {
            inner,
            window: Vec::new(),
            base: 0,
            headers: Vec::new(),
            overflow: false,
        }
    }

    /// Bytes passed on so far.
    pub fn total(&self) -> u64 {
        self.base + self.window.len() as u64
    }

    fn keep(&mut self, bytes: &[u8]) {
        // A signature may straddle two reads.
        let from = self.window.len().saturating_sub(3);
        self.window.extend_from_slice(bytes);
        for i in positions(&self.window[from..], CENTRAL_SIG) {
            if self.headers.len() >= MAX_HEADERS {
                self.overflow = true;
                break;
            }
            self.headers.push(self.base + (from + i) as u64);
        }
        // The tail, and a ZIP64 end record and locator before an end record at its start.
        let keep = (TAIL_LEN + ZIP64_END_LEN + LOCATOR_LEN) as usize;
        if self.window.len() > 2 * keep {
            let cut = self.window.len() - keep;
            self.window.drain(..cut);
            self.base += cut as u64;
        }
    }

    /// [`find`] on what was read: the stream's zip end record, if it ends as a zip.
    pub fn zip_end(&self) -> io::Result<Option<End>> {
        let start = self.window.len().saturating_sub(TAIL_LEN as usize);
        let mut seen = Seen {
            window: &self.window,
            base: self.base,
            headers: &self.headers,
            overflow: self.overflow,
        };
        find(&mut seen, &self.window[start..], self.base + start as u64)
    }
}

impl<R: Read> Read for Kept<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.keep(&buf[..n]);
        Ok(n)
    }
}

/// What a [`Kept`] stream remembers, as a [`Lookup`].
struct Seen<'a> {
    window: &'a [u8],
    base: u64,
    headers: &'a [u64],
    overflow: bool,
}

impl Lookup for Seen<'_> {
    fn bytes(&mut self, at: u64, n: usize) -> io::Result<Option<Vec<u8>>> {
        let Some(from) = at.checked_sub(self.base) else {
            return Ok(None);
        };
        let from = usize::try_from(from)
            .unwrap_or(usize::MAX)
            .min(self.window.len());
        let to = from.saturating_add(n).min(self.window.len());
        Ok(Some(self.window[from..to].to_vec()))
    }

    fn central_header_at(&mut self, at: u64) -> io::Result<Option<bool>> {
        if at >= self.base {
            return Ok(self.bytes(at, 4)?.map(|b| b == CENTRAL_SIG));
        }
        Ok((!self.overflow).then(|| self.headers.binary_search(&at).is_ok()))
    }
}

/// A member as the central directory and its local header say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name's bytes, as stored.
    pub name: Vec<u8>,
    /// Where its local header starts, and its data.
    pub header: u64,
    pub data: u64,
    pub compressed: u64,
    pub size: u64,
    pub method: u16,
    pub flags: u16,
    pub crc: u32,
}

/// A zip every reader reads the same way: its end records and its members in central
/// directory order.
#[derive(Debug)]
pub struct Layout {
    pub end: End,
    pub entries: Vec<Entry>,
}

/// `archive!member` for messages.
fn member_shown(shown: &str, name: &[u8]) -> String {
    format!("{shown}!{}", String::from_utf8_lossy(name))
}

fn not_readable(shown: &str, why: &str) -> Refusal {
    refused(shown, &format!("not a readable zip ({why})"))
}

/// The refusal for a zip whose offsets' origin is not byte 0.
pub fn prefixed(shown: &str, before: u64) -> Refusal {
    refused(
        shown,
        &format!(
            "a zip that does not start at byte 0 ({before} bytes before it: a prefixed or polyglot file)"
        ),
    )
}

impl Layout {
    /// Reads and checks the layout of the zip `r` (`shown` in messages); see the module doc.
    pub fn read<R: Read + Seek + ?Sized>(
        r: &mut R,
        shown: &str,
        clock: &Clock,
    ) -> Result<Layout, Refusal> {
        let mut look = FileLookup::new(r)?;
        let end = the_end(&mut look, shown)?;
        match end.start() {
            None => {
                return Err(not_readable(
                    shown,
                    "its central directory does not end where its end record begins",
                ))
            }
            Some(0) => {}
            Some(before) => return Err(prefixed(shown, before)),
        }
        let size = usize::try_from(end.directory_size).unwrap_or(usize::MAX);
        let directory = look.bytes(end.directory_offset, size)?.unwrap_or_default();
        if directory.len() != size {
            return Err(not_readable(shown, "its central directory is cut short"));
        }
        let mut entries = central_entries(&directory, &end, shown, clock)?;
        tile(&mut look, &mut entries, &end, shown, clock)?;
        Ok(Layout { end, entries })
    }
}

/// The end record every reader uses — the last in the file's last 64 KiB — ending the file,
/// read through its ZIP64 records (right before its locator, where every reader finds them).
fn the_end<R: Read + Seek + ?Sized>(
    look: &mut FileLookup<'_, R>,
    shown: &str,
) -> Result<End, Refusal> {
    let (tail, base) = look.tail()?;
    let Some(i) = positions(&tail, END_SIG).next_back() else {
        return Err(not_readable(shown, "no end record"));
    };
    if i + END_LEN as usize > tail.len() {
        return Err(not_readable(shown, "its end record is cut short"));
    }
    let end = End::parse(&tail, i, base);
    if end.ends < look.len {
        return Err(refused(
            shown,
            &format!(
                "{} bytes after the zip's end record (appended data)",
                look.len - end.ends
            ),
        ));
    }
    if end.ends > look.len {
        return Err(not_readable(
            shown,
            "its end record's comment runs past the end of the file",
        ));
    }
    let rec = &tail[i..];
    let locator = match end.at.checked_sub(LOCATOR_LEN) {
        Some(at) => look.bytes(at, LOCATOR_LEN as usize)?.unwrap_or_default(),
        None => Vec::new(),
    };
    if !(locator.len() == 20 && locator.starts_with(LOCATOR_SIG)) {
        bounded(&end, shown)?;
        let (disk, directory_disk, disk_entries) = (le(rec, 4, 2), le(rec, 6, 2), le(rec, 8, 2));
        if disk != 0 || directory_disk != 0 || disk_entries != end.entries {
            return Err(not_readable(shown, "it spans several disks"));
        }
        return Ok(end);
    }
    let place = le(&locator, 8, 8);
    let right_before = (end.at - LOCATOR_LEN).checked_sub(ZIP64_END_LEN);
    if right_before != Some(place) {
        return Err(not_readable(
            shown,
            "its ZIP64 end record is not right before its locator",
        ));
    }
    let z = look
        .bytes(place, ZIP64_END_LEN as usize)?
        .unwrap_or_default();
    if z.len() != 56 || !z.starts_with(ZIP64_END_SIG) || le(&z, 4, 8) != ZIP64_END_LEN - 12 {
        return Err(not_readable(
            shown,
            "no ZIP64 end record where its locator says",
        ));
    }
    if le(&locator, 4, 4) != 0
        || le(&locator, 16, 4) > 1
        || le(&z, 16, 4) != 0
        || le(&z, 20, 4) != 0
        || le(&z, 24, 8) != le(&z, 32, 8)
    {
        return Err(not_readable(shown, "it spans several disks"));
    }
    let wide = end.zip64(&z, place);
    // The end record's own fields: the same as the ZIP64 record's, or saturated.
    let agree = |narrow: u64, wide: u64, max: u64| narrow == wide || narrow == max;
    if !(agree(end.entries, wide.entries, 0xFFFF)
        && agree(end.directory_size, wide.directory_size, SATURATED)
        && agree(end.directory_offset, wide.directory_offset, SATURATED))
    {
        return Err(not_readable(
            shown,
            "its end record and ZIP64 end record disagree",
        ));
    }
    bounded(&wide, shown)?;
    Ok(wide)
}

/// Refuses a central directory announced too large to read (the zip library reads it all).
fn bounded(end: &End, shown: &str) -> Result<(), Refusal> {
    if end.entries > MAX_MEMBERS as u64 || end.directory_size > MAX_CENTRAL_DIRECTORY {
        return Err(refused(
            shown,
            &format!(
                "a central directory of {} members, {} bytes",
                end.entries, end.directory_size
            ),
        ));
    }
    Ok(())
}

/// The ZIP64 extra field's values for the fields saturated in the fixed part, in the order
/// the format lists them (size, compressed size, header offset); `None` if one is missing.
fn zip64_fields(extra: &[u8], fields: [&mut u64; 3]) -> Option<()> {
    if fields.iter().all(|f| **f != SATURATED) {
        return Some(());
    }
    let data = extra_block(extra, 1)?;
    let mut at = 0;
    for field in fields {
        if *field == SATURATED {
            *field = le(data.get(at..at + 8)?, 0, 8);
            at += 8;
        }
    }
    Some(())
}

/// The data of the extra field block `id`.
fn extra_block(extra: &[u8], id: u64) -> Option<&[u8]> {
    let mut at = 0;
    while at + 4 <= extra.len() {
        let (kind, len) = (le(extra, at, 2), le(extra, at + 2, 2) as usize);
        let data = extra.get(at + 4..at + 4 + len)?;
        if kind == id {
            return Some(data);
        }
        at += 4 + len;
    }
    None
}

/// The central directory's entries, which must fill it exactly, with no name twice.
fn central_entries(
    directory: &[u8],
    end: &End,
    shown: &str,
    clock: &Clock,
) -> Result<Vec<Entry>, Refusal> {
    let mut entries = Vec::new();
    let mut pos = 0usize;
    let short = || {
        not_readable(
            shown,
            "its central directory has fewer entries than it says",
        )
    };
    for _ in 0..end.entries {
        clock.check(shown)?;
        let fixed = directory
            .get(pos..pos + 46)
            .filter(|f| f.starts_with(CENTRAL_SIG))
            .ok_or_else(short)?;
        let (n, x, c) = (
            le(fixed, 28, 2) as usize,
            le(fixed, 30, 2) as usize,
            le(fixed, 32, 2) as usize,
        );
        let name = directory.get(pos + 46..pos + 46 + n).ok_or_else(short)?;
        let extra = directory
            .get(pos + 46 + n..pos + 46 + n + x)
            .ok_or_else(short)?;
        if directory.len() < pos + 46 + n + x + c {
            return Err(short());
        }
        let mut entry = Entry {
            name: name.to_vec(),
            header: le(fixed, 42, 4),
            data: 0,
            compressed: le(fixed, 20, 4),
            size: le(fixed, 24, 4),
            method: le(fixed, 10, 2) as u16,
            flags: le(fixed, 8, 2) as u16,
            crc: le(fixed, 16, 4) as u32,
        };
        let fields = [&mut entry.size, &mut entry.compressed, &mut entry.header];
        if zip64_fields(extra, fields).is_none() {
            return Err(refused(
                &member_shown(shown, name),
                "its ZIP64 sizes are missing",
            ));
        }
        if !matches!(le(fixed, 34, 2), 0 | 0xFFFF) {
            return Err(not_readable(shown, "it spans several disks"));
        }
        entries.push(entry);
        pos += 46 + n + x + c;
    }
    if pos != directory.len() {
        return Err(refused(
            shown,
            &format!(
                "{} bytes of its central directory that no entry accounts for",
                directory.len() - pos
            ),
        ));
    }
    let mut names = HashSet::new();
    for e in &entries {
        if !names.insert(e.name.as_slice()) {
            return Err(refused(
                &member_shown(shown, &e.name),
                "a member name twice",
            ));
        }
    }
    Ok(entries)
}

/// Checks that the members tile the file from byte 0 to the central directory (local headers
/// agreeing with the directory), and notes where each one's data starts.
fn tile<R: Read + Seek + ?Sized>(
    look: &mut FileLookup<'_, R>,
    entries: &mut [Entry],
    end: &End,
    shown: &str,
    clock: &Clock,
) -> Result<(), Refusal> {
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| (entries[i].header, i));
    let mut expected = 0u64;
    let mut previous: Option<usize> = None;
    for (k, &i) in order.iter().enumerate() {
        clock.check(shown)?;
        let e = &entries[i];
        let ms = member_shown(shown, &e.name);
        if let Some(p) = previous.filter(|_| e.header < expected) {
            return Err(refused(
                &ms,
                &format!(
                    "overlaps {} (entries that share their data: a bomb that grows with the entries)",
                    String::from_utf8_lossy(&entries[p].name)
                ),
            ));
        }
        if e.header > expected {
            return Err(match previous {
                None => prefixed(shown, e.header),
                Some(_) => refused(
                    &ms,
                    &format!(
                        "{} bytes before it that no member holds",
                        e.header - expected
                    ),
                ),
            });
        }
        if e.flags & 1 != 0 {
            return Err(refused(&ms, "encrypted members cannot be inspected"));
        }
        if e.method == 0 && e.compressed != e.size {
            return Err(refused(&ms, "a stored member whose sizes differ"));
        }
        let data = local_header(look, e, &ms)?;
        let data_end = data
            .checked_add(e.compressed)
            .filter(|d| *d <= end.directory_offset)
            .ok_or_else(|| refused(&ms, "its data runs into the central directory"))?;
        let next = order
            .get(k + 1)
            .map_or(end.directory_offset, |&j| entries[j].header);
        expected = if e.flags & 8 != 0 {
            let len = descriptor(look, data_end, next, e)?.ok_or_else(|| {
                refused(
                    &ms,
                    "its data descriptor does not match the central directory",
                )
            })?;
            data_end + len
        } else {
            data_end
        };
        entries[i].data = data;
        previous = Some(i);
    }
    if expected > end.directory_offset {
        return Err(refused(
            shown,
            "its last data descriptor runs into the central directory",
        ));
    }
    if expected < end.directory_offset {
        return Err(match previous {
            None => prefixed(shown, end.directory_offset),
            Some(_) => refused(
                shown,
                &format!(
                    "{} bytes between its last member and its central directory that no member holds",
                    end.directory_offset - expected
                ),
            ),
        });
    }
    Ok(())
}

/// Checks `e`'s local header against its central entry; where its data starts.
fn local_header<R: Read + Seek + ?Sized>(
    look: &mut FileLookup<'_, R>,
    e: &Entry,
    ms: &str,
) -> Result<u64, Refusal> {
    let local = look.bytes(e.header, 30)?.unwrap_or_default();
    if local.len() != 30 || !local.starts_with(LOCAL_SIG) {
        return Err(refused(
            ms,
            "no local header where the central directory says",
        ));
    }
    let (n, x) = (le(&local, 26, 2), le(&local, 28, 2));
    let rest = look
        .bytes(e.header + 30, (n + x) as usize)?
        .unwrap_or_default();
    if rest.len() as u64 != n + x {
        return Err(refused(ms, "its local header is cut short"));
    }
    let (name, extra) = rest.split_at(n as usize);
    if name != e.name {
        return Err(refused(
            ms,
            &format!(
                "its local header names another file ({})",
                String::from_utf8_lossy(name)
            ),
        ));
    }
    let flags = le(&local, 6, 2) as u16;
    if le(&local, 8, 2) as u16 != e.method || flags & 8 != e.flags & 8 {
        return Err(refused(
            ms,
            "its local header disagrees with the central directory (method or flags)",
        ));
    }
    // Without a data descriptor, streaming readers take the sizes from the local header.
    if flags & 8 == 0 {
        let (mut size, mut compressed) = (le(&local, 22, 4), le(&local, 18, 4));
        if size == SATURATED || compressed == SATURATED {
            let wide = extra_block(extra, 1).unwrap_or_default();
            (size, compressed) = (le(wide, 0, 8), le(wide, 8, 8));
        }
        if size != e.size || compressed != e.compressed || le(&local, 14, 4) as u32 != e.crc {
            return Err(refused(
                ms,
                "its local header disagrees with the central directory (sizes or CRC)",
            ));
        }
    }
    Ok(e.header + 30 + n + x)
}

/// The length of the data descriptor at `at` (after `e`'s data) that repeats the central
/// directory's CRC and sizes — with or without its signature, sizes of 4 or 8 bytes; of
/// several that match, the one that ends where the next part begins (`next`).
fn descriptor<R: Read + Seek + ?Sized>(
    look: &mut FileLookup<'_, R>,
    at: u64,
    next: u64,
    e: &Entry,
) -> io::Result<Option<u64>> {
    let b = look.bytes(at, 24)?.unwrap_or_default();
    let mut fits = Vec::new();
    for (signed, w) in [(true, 4), (true, 8), (false, 4), (false, 8)] {
        if signed && !b.starts_with(DESCRIPTOR_SIG) {
            continue;
        }
        let o = if signed { 4 } else { 0 };
        let len = o + 4 + 2 * w;
        let Some(d) = b.get(..len) else {
            continue;
        };
        if le(d, o, 4) == u64::from(e.crc)
            && le(d, o + 4, w) == e.compressed
            && le(d, o + 4 + w, w) == e.size
        {
            fits.push(len as u64);
        }
    }
    Ok(fits
        .iter()
        .copied()
        .find(|len| at + len == next)
        .or(fits.first().copied()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::time::Duration;

    fn clock() -> Clock {
        Clock::new(Duration::from_secs(60))
    }

    fn zip_of(members: &[(&str, &[u8])], method: zip::CompressionMethod) -> Vec<u8> {
        use std::io::Write;
        let mut out = Cursor::new(Vec::new());
        let mut zip = zip::ZipWriter::new(&mut out);
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        for (name, bytes) in members {
            zip.start_file(*name, options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
        out.into_inner()
    }

    fn layout(bytes: &[u8]) -> Result<Layout, String> {
        Layout::read(&mut Cursor::new(bytes.to_vec()), "z.zip", &clock()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_plain_zip_tiles_the_file() {
        let zip = zip_of(
            &[("a.txt", b"hello"), ("dir/b.bin", &[7u8; 5000])],
            zip::CompressionMethod::Deflated,
        );
        let l = layout(&zip).unwrap();
        assert_eq!(l.entries.len(), 2);
        assert_eq!(l.entries[0].header, 0);
        assert_eq!(l.entries[0].data, 30 + 5);
        assert_eq!(l.end.ends, zip.len() as u64);
        assert_eq!(l.end.start(), Some(0));
        assert_eq!(find_in(&mut Cursor::new(&zip)).unwrap(), Some(l.end));
        // An empty zip is a zip by its head, and tiles its 22 bytes.
        let empty = zip_of(&[], zip::CompressionMethod::Stored);
        assert_eq!(empty.len(), 22);
        assert!(layout(&empty).unwrap().entries.is_empty());
    }

    #[test]
    fn prefixes_appended_bytes_and_gaps_are_refused() {
        let zip = zip_of(&[("a.txt", b"hello")], zip::CompressionMethod::Stored);
        let mut prefixed = b"\x80\x02K\x01.".to_vec();
        prefixed.extend_from_slice(&zip);
        assert_eq!(
            layout(&prefixed).unwrap_err(),
            "archive refused: z.zip: a zip that does not start at byte 0 (5 bytes before it: a prefixed or polyglot file)"
        );
        // A reader that allows a prefix finds it; so does the gate.
        let found = find_in(&mut Cursor::new(&prefixed)).unwrap().unwrap();
        assert_eq!(found.start(), Some(5));
        let mut appended = zip.clone();
        appended.extend_from_slice(b"trailing");
        assert_eq!(
            layout(&appended).unwrap_err(),
            "archive refused: z.zip: 8 bytes after the zip's end record (appended data)"
        );
        // Plain text and a file ending in a stray signature are not zips.
        assert_eq!(find_in(&mut Cursor::new(b"hello world")).unwrap(), None);
        let mut stray = vec![b'x'; 100];
        stray.extend_from_slice(b"PK\x05\x06");
        stray.extend_from_slice(&[0x11; 18]);
        assert_eq!(find_in(&mut Cursor::new(&stray)).unwrap(), None);
    }

    /// A stored zip of one member of `len` bytes whose end record has a comment of
    /// `comment` bytes, after `prefix` zeros.
    fn prefixed_zip(prefix: usize, len: usize, comment: usize) -> Vec<u8> {
        use std::io::Write;
        let mut out = Cursor::new(Vec::new());
        let mut zip = zip::ZipWriter::new(&mut out);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zip.start_file("a.txt", options).unwrap();
        zip.write_all(&vec![3u8; len]).unwrap();
        zip.set_raw_comment(vec![b'c'; comment].into());
        zip.finish().unwrap();
        let mut bytes = vec![0u8; prefix];
        bytes.extend_from_slice(&out.into_inner());
        bytes
    }

    /// `bytes` passed through a [`Kept`] in odd-sized reads (so signatures straddle them).
    fn kept(bytes: &[u8]) -> Kept<&[u8]> {
        let mut kept = Kept::new(bytes);
        let mut buf = [0u8; 4093];
        while kept.read(&mut buf).unwrap() > 0 {}
        assert_eq!(kept.total(), bytes.len() as u64);
        kept
    }

    #[test]
    fn a_stream_is_asked_what_it_ended_with() {
        let file = prefixed_zip(100_000, 200_000, 0);
        let stream = kept(&file);
        assert!(stream.window.len() < file.len());
        let end = stream.zip_end().unwrap().unwrap();
        assert_eq!(end.start(), Some(100_000));
        // With a comment of 64 KiB, the central directory may be gone from the kept window:
        // where its header began was noted as it passed.
        let file = prefixed_zip(100_000, 200_000, 0xFFFF);
        let stream = kept(&file);
        let end = stream.zip_end().unwrap().unwrap();
        assert_eq!(end.start(), Some(100_000));
        assert_eq!(find_in(&mut Cursor::new(&file)).unwrap(), Some(end));
        // The window a stream keeps at least: the tail and the 20-byte locator's place.
        let base = file.len() - TAIL_LEN as usize - 20;
        assert!(end.directory_end - end.directory_size < base as u64);
        let mut seen = Seen {
            window: &file[base..],
            base: base as u64,
            headers: &stream.headers,
            overflow: false,
        };
        assert_eq!(
            find(&mut seen, &file[base..], base as u64).unwrap(),
            Some(end)
        );
        // Where the headers were not all noted, an end record counts as a zip.
        let mut unsure = Seen {
            headers: &[],
            overflow: true,
            ..seen
        };
        assert!(find(&mut unsure, &file[base..], base as u64)
            .unwrap()
            .is_some());
        let mut none = Seen {
            headers: &[],
            overflow: false,
            ..unsure
        };
        assert_eq!(find(&mut none, &file[base..], base as u64).unwrap(), None);
        assert_eq!(kept(b"just text").zip_end().unwrap(), None);
    }

    proptest::proptest! {
        #[test]
        fn damaged_zips_never_panic(
            flips in proptest::collection::vec((0usize..400, proptest::prelude::any::<u8>()), 1..8),
            cut in 0usize..40,
        ) {
            let mut bytes = zip_of(
                &[("a.txt", b"hello"), ("b/c.bin", &[9u8; 100])],
                zip::CompressionMethod::Deflated,
            );
            let len = bytes.len();
            for (at, b) in flips {
                bytes[at % len] = b;
            }
            bytes.truncate(len - cut);
            let _ = Layout::read(&mut Cursor::new(&bytes), "z.zip", &clock());
            let _ = find_in(&mut Cursor::new(&bytes));
            let _ = kept(&bytes).zip_end();
        }
    }
}
