//! One file format the gate can look into, and how a file is put to them.
//!
//! A file is what every parser a consumer may use says it is: its kinds come from its first
//! bytes (magic at byte 0, a tar header's at 257) and, for a zip, from its end record, found
//! at its end whatever its first bytes (`zipmap`). Every inspector that claims any of them
//! checks it, in the policy's order, and the file passes only if each one passes it: a
//! pickle that is also a zip is scanned as a pickle *and* looked into as a zip (which then
//! refuses a zip with a prefix). A new format (GGUF, ONNX, OCI layers) is one new type
//! implementing [`Inspector`], added to the list `Policy` builds.
//!
//! ```text
//!  file ─ head (512 B) ─ sniff::kinds ─┐
//!       ─ last 64 KiB ─ zipmap::find ──┴─ every claimant, each from byte 0 ─ pass / refusal
//!  member (stream) ─ one claimant: read once through zipmap::Kept, then its tail is asked
//!                  ─ a zip, or two claimants: held in memory (≤ 64 MiB), then as a file
//! ```

use std::io::{self, Cursor, Read, Seek, SeekFrom};
use std::time::Duration;

use crate::bounds::{self, Budget};
use crate::clock::{Clock, Timed};
use crate::refusal::Refusal;
use crate::report::Findings;
use crate::rules::Rules;
use crate::sniff::{self, Kind, Kinds};
use crate::zipmap::{self, Kept};

/// A readable, seekable file.
pub trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// A format's checks.
pub trait Inspector: std::fmt::Debug + Send + Sync {
    /// The format's name, for messages and results.
    fn name(&self) -> &'static str;

    /// Whether a file named `path` whose first bytes are `head` (up to [`sniff::SNIFF_LEN`])
    /// and which is `kinds` (by its head and its end; computed once for all inspectors) is
    /// this format.
    fn claims(&self, kinds: Kinds, head: &[u8], path: &str) -> bool;

    /// Checks the file, read as a stream from its start; `nested` inspects what it holds
    /// (archive members).
    fn inspect(
        &self,
        file: &mut dyn Read,
        path: &str,
        size: u64,
        nested: &mut Nested<'_>,
    ) -> Result<(), Refusal>;

    /// The same on a file that can seek (the top-level file); by default as a stream.
    fn inspect_file(
        &self,
        file: &mut dyn ReadSeek,
        path: &str,
        size: u64,
        nested: &mut Nested<'_>,
    ) -> Result<(), Refusal> {
        self.inspect(file, path, size, nested)
    }

    /// Whether it must seek (a zip's directory is at its end): an archive member it claims is
    /// then held in memory.
    fn seeks(&self) -> bool {
        false
    }
}

/// The inspectors of a policy, and what one file and its archives' members may still use.
#[derive(Debug)]
pub struct Nested<'a> {
    inspectors: &'a [Box<dyn Inspector>],
    /// Name rules members must pass (the policy's `deny`).
    deny: &'a Rules,
    depth: u32,
    /// `max_file_size` (or the default), until the file's real size is known.
    max_expanded: u64,
    budget: Budget,
    clock: Clock,
    /// Data ranges of the regular members of the tar walked last.
    tar_members: Vec<(u64, u64)>,
    /// What the inspectors found, for the file's report.
    findings: Findings,
}

impl<'a> Nested<'a> {
    pub(crate) fn new(
        inspectors: &'a [Box<dyn Inspector>],
        deny: &'a Rules,
        max_expanded: u64,
        timeout: Duration,
    ) -> Self {
        Nested {
            inspectors,
            deny,
            depth: 0,
            max_expanded,
            budget: Budget::new(max_expanded),
            clock: Clock::new(timeout),
            tar_members: Vec::new(),
            findings: Findings::default(),
        }
    }

    /// Notes what `format` found in `at` (the file or `archive!member`) for the file's
    /// report: a JSON object of facts (bounded: past [`crate::report::MAX_FINDINGS`] only
    /// counted).
    pub fn note(&mut self, at: &str, format: &'static str, facts: serde_json::Value) {
        self.findings.note(at, format, facts);
    }

    /// The findings noted, and how many were not kept.
    pub(crate) fn into_findings(self) -> (Vec<crate::report::Finding>, u64) {
        (self.findings.kept, self.findings.dropped)
    }

    /// Bytes this file's members (and compressed contents) may still expand to.
    pub fn expansion_left(&self) -> u64 {
        self.budget.left()
    }

    /// The file's deadline.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The inspectors that claim a file that is `kinds` and starts with `head`, in order.
    fn claimants(&self, kinds: Kinds, head: &[u8], name: &str) -> Vec<&'a dyn Inspector> {
        self.inspectors
            .iter()
            .filter(|i| i.claims(kinds, head, name))
            .map(|i| &**i)
            .collect()
    }

    /// Inspects the top-level file as everything it is; the names of the formats that checked
    /// it (none: no inspector claimed it). Its members' budget is set by its real size.
    pub fn file(
        &mut self,
        file: &mut dyn ReadSeek,
        path: &str,
        _size: u64,
    ) -> Result<Vec<&'static str>, Refusal> {
        let real = file.seek(SeekFrom::End(0))?;
        self.budget = Budget::for_file(self.max_expanded, real);
        let clock = self.clock.clone();
        let mut timed = Timed::new(file, clock.clone(), path);
        let result = self.seekable(&mut timed, path, path);
        // Whatever an inspector made of a read the clock refused, the refusal is the clock's.
        match clock.expired() {
            Some(late) => Err(late),
            None => result,
        }
    }

    /// Every inspector that claims a seekable file (or member), each reading it from byte 0.
    fn seekable(
        &mut self,
        r: &mut dyn ReadSeek,
        shown: &str,
        name: &str,
    ) -> Result<Vec<&'static str>, Refusal> {
        self.clock.check(shown)?;
        let kinds = file_kinds(&mut *r)?;
        let size = r.seek(SeekFrom::End(0))?;
        r.seek(SeekFrom::Start(0))?;
        let head = read_head(&mut *r, size)?;
        self.tar_members.clear();
        let mut names = Vec::new();
        for inspector in self.claimants(kinds, &head, name) {
            r.seek(SeekFrom::Start(0))?;
            inspector.inspect_file(&mut *r, shown, size, self)?;
            names.push(inspector.name());
        }
        Ok(names)
    }

    /// Inspects a member of an archive (`shown`: `archive!member`) of `size` bytes, read as a
    /// stream, to its end: the budget and the clock first; a refusal names the member.
    pub fn member(
        &mut self,
        r: &mut dyn Read,
        shown: &str,
        name: &str,
        size: u64,
    ) -> Result<(), Refusal> {
        self.clock.check(shown)?;
        self.budget.take(shown, size)?;
        let mut timed = Timed::new(r, self.clock.clone(), shown);
        let head = read_head(&mut timed, size)?;
        let claimants = self.claimants(sniff::kinds(&head, size), &head, name);
        let stream = Cursor::new(head).chain(timed);
        self.depth += 1;
        let result = if claimants.len() > 1 || claimants.iter().any(|i| i.seeks()) {
            self.held(stream, shown, name, size, &claimants)
        } else {
            self.streamed(stream, shown, size, claimants.first().copied())
        };
        self.depth -= 1;
        result.map_err(|e| bounds::within(shown, e))
    }

    /// The same for a member that can seek (stored in a zip): inspected in place.
    pub fn member_seekable(
        &mut self,
        r: &mut dyn ReadSeek,
        shown: &str,
        name: &str,
        size: u64,
    ) -> Result<(), Refusal> {
        self.clock.check(shown)?;
        self.budget.take(shown, size)?;
        let mut timed = Timed::new(r, self.clock.clone(), shown);
        self.depth += 1;
        let result = self.seekable(&mut timed, shown, name).map(drop);
        self.depth -= 1;
        result.map_err(|e| bounds::within(shown, e))
    }

    /// A member read into memory, to be inspected as a file.
    fn held(
        &mut self,
        stream: impl Read,
        shown: &str,
        name: &str,
        size: u64,
        claimants: &[&dyn Inspector],
    ) -> Result<(), Refusal> {
        if size > bounds::MAX_NESTED_ZIP {
            let names: Vec<&str> = claimants.iter().map(|i| i.name()).collect();
            let why = match names.as_slice() {
                ["zip"] => "a nested zip larger than 64 MiB".to_string(),
                _ => format!(
                    "{} at once and larger than 64 MiB (held in memory to be inspected as each)",
                    names.join(" and ")
                ),
            };
            return Err(bounds::refused(shown, &why));
        }
        let mut all = Vec::new();
        // One byte more than declared: the member's reader refuses a member that is longer.
        stream.take(size.saturating_add(1)).read_to_end(&mut all)?;
        if all.len() as u64 != size {
            return Err(truncated(shown));
        }
        let mut held = Timed::new(Cursor::new(all), self.clock.clone(), shown);
        self.seekable(&mut held, shown, name).map(drop)
    }

    /// A member read once, by its one claimant if any, then to its end: it must deliver what
    /// it declares, and not end as a zip (a zip must start with its first member, and one
    /// that does is held, not streamed) unless it is a member of a tar it holds.
    fn streamed(
        &mut self,
        stream: impl Read,
        shown: &str,
        size: u64,
        claimant: Option<&dyn Inspector>,
    ) -> Result<(), Refusal> {
        self.tar_members.clear();
        let mut kept = Kept::new(stream);
        if let Some(inspector) = claimant {
            inspector.inspect(&mut kept, shown, size, self)?;
        }
        io::copy(&mut kept, &mut io::sink())?;
        if kept.total() != size {
            return Err(truncated(shown));
        }
        if let Some(end) = kept.zip_end()? {
            let start = end.start();
            if !start.is_some_and(|s| s > 0 && self.is_tar_member(s, end.ends)) {
                return Err(zipmap::prefixed(shown, start.unwrap_or(0)));
            }
        }
        Ok(())
    }

    /// Notes where the regular members of the tar just walked lie (data start, end).
    pub(crate) fn walked_tar(&mut self, members: Vec<(u64, u64)>) {
        self.tar_members = members;
    }

    /// Whether bytes `start..end` of what is being inspected are exactly a member of the tar
    /// it was just walked as (so inspected as a member).
    pub(crate) fn is_tar_member(&self, start: u64, end: u64) -> bool {
        self.tar_members.contains(&(start, end))
    }

    /// A member's path and name rules (also for directories, which have no content).
    pub fn check_member_name(&self, shown: &str, name: &str) -> Result<(), Refusal> {
        bounds::check_member_path(shown, name)?;
        match self.deny.first_match(name.trim_end_matches('/')) {
            Some(pattern) => Err(bounds::refused(
                shown,
                &format!("denied by the name rule {pattern:?}"),
            )),
            None => Ok(()),
        }
    }

    /// Refuses opening one more level of archive beyond [`bounds::MAX_DEPTH`].
    pub fn check_depth(&self, path: &str) -> Result<(), Refusal> {
        if self.depth >= bounds::MAX_DEPTH {
            return Err(bounds::refused(path, "archives nested more than 3 deep"));
        }
        Ok(())
    }
}

/// A member that delivers fewer bytes than it declares (more is refused by its reader).
fn truncated(shown: &str) -> Refusal {
    bounds::refused(shown, "truncated (fewer bytes than it declares)")
}

/// Every kind a seekable file is, as the gate decides which inspectors check it: by its first
/// bytes, and a zip by its end too, where zip readers look (whatever comes before it).
pub fn file_kinds(r: &mut dyn ReadSeek) -> io::Result<Kinds> {
    Ok(file_kinds_and_head(r)?.0)
}

/// [`file_kinds`], and the first bytes it looked at.
pub fn file_kinds_and_head(r: &mut dyn ReadSeek) -> io::Result<(Kinds, Vec<u8>)> {
    let size = r.seek(SeekFrom::End(0))?;
    r.seek(SeekFrom::Start(0))?;
    let mut head = Vec::with_capacity(sniff::SNIFF_LEN);
    (&mut *r)
        .take(sniff::SNIFF_LEN as u64)
        .read_to_end(&mut head)?;
    let mut kinds = sniff::kinds(&head, size);
    if !kinds.has(Kind::Zip) && zipmap::find_in(&mut *r)?.is_some() {
        kinds = kinds.with(Kind::Zip);
    }
    Ok((kinds, head))
}

/// The first bytes of a stream of `size` bytes, for claiming.
pub fn read_head(r: &mut dyn Read, size: u64) -> Result<Vec<u8>, Refusal> {
    let want = sniff::SNIFF_LEN.min(usize::try_from(size).unwrap_or(usize::MAX));
    let mut head = Vec::with_capacity(want);
    r.take(want as u64).read_to_end(&mut head)?;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zip after 600 bytes of something else is a zip to zip readers (a self-extracting
    /// archive, a checkpoint with a prefix): `file_kinds` finds it by its end, as the gate does.
    #[test]
    fn a_zip_behind_other_bytes_is_a_zip() {
        use std::io::Write;
        let mut out = Cursor::new(vec![b'#'; 600]);
        out.set_position(600);
        let mut zip = zip::ZipWriter::new(&mut out);
        let options = zip::write::SimpleFileOptions::default();
        zip.start_file("archive/data.pkl", options).unwrap();
        zip.write_all(b"\x80\x02}q\x00.").unwrap();
        zip.finish().unwrap();
        let bytes = out.into_inner();
        assert!(!sniff::kinds(&bytes[..sniff::SNIFF_LEN], bytes.len() as u64).has(Kind::Zip));
        let kinds = file_kinds(&mut Cursor::new(bytes)).unwrap();
        assert_eq!(kinds.names(), ["zip"]);
        let text = file_kinds(&mut Cursor::new(b"just text".to_vec())).unwrap();
        assert!(text.is_empty());
    }
}
