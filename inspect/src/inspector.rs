//! One file format the gate can look into. The policy asks each inspector in turn whether a
//! file is its format (by its first bytes, rarely its name); the first that claims it checks
//! it. A new format (GGUF, ONNX, OCI layers) is one new type implementing [`Inspector`],
//! added to the list `Policy` builds.

use std::io::{Cursor, Read, Seek};

use crate::archive::{self, Budget};
use crate::policy::Rules;
use crate::sniff::{self, Kind};
use crate::Refusal;

/// A readable, seekable file.
pub trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// A format's checks.
pub trait Inspector: std::fmt::Debug + Send + Sync {
    /// The format's name, for messages and results.
    fn name(&self) -> &'static str;

    /// Whether a file named `path` whose first bytes are `head` (up to [`sniff::SNIFF_LEN`])
    /// and sniff as `kind` (computed once for all inspectors) is this format.
    fn claims(&self, kind: Kind, head: &[u8], path: &str) -> bool;

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
}

/// The inspectors of a policy, and what an archive's members may still use.
#[derive(Debug)]
pub struct Nested<'a> {
    inspectors: &'a [Box<dyn Inspector>],
    /// Name rules members must pass (the policy's `deny`).
    deny: &'a Rules,
    depth: u32,
    budget: Budget,
}

impl<'a> Nested<'a> {
    pub(crate) fn new(
        inspectors: &'a [Box<dyn Inspector>],
        deny: &'a Rules,
        max_expanded: u64,
    ) -> Self {
        Nested {
            inspectors,
            deny,
            depth: 0,
            budget: Budget::new(max_expanded),
        }
    }

    /// The inspector that claims a file starting with `head`, if any.
    fn claimant(&self, head: &[u8], size: u64, path: &str) -> Option<&'a dyn Inspector> {
        let kind = sniff::sniff(head, size);
        self.inspectors
            .iter()
            .find(|i| i.claims(kind, head, path))
            .map(|i| &**i)
    }

    /// Inspects the top-level file; the name of the format that checked it, if any did.
    pub fn file(
        &mut self,
        file: &mut dyn ReadSeek,
        path: &str,
        size: u64,
    ) -> Result<Option<&'static str>, Refusal> {
        file.seek(std::io::SeekFrom::Start(0))?;
        let head = read_head(&mut *file, size)?;
        file.seek(std::io::SeekFrom::Start(0))?;
        let Some(inspector) = self.claimant(&head, size, path) else {
            return Ok(None);
        };
        inspector.inspect_file(file, path, size, self)?;
        Ok(Some(inspector.name()))
    }

    /// Inspects a member of an archive (`shown`: `archive!member`) of `size` bytes: its path,
    /// the deny rules, the budget and the depth first; a refusal names the member.
    pub fn member(
        &mut self,
        r: &mut dyn Read,
        shown: &str,
        name: &str,
        size: u64,
    ) -> Result<(), Refusal> {
        self.budget.take(shown, size)?;
        let head = read_head(&mut *r, size)?;
        let Some(inspector) = self.claimant(&head, size, name) else {
            return Ok(());
        };
        let mut stream = Cursor::new(head).chain(r);
        self.depth += 1;
        let result = inspector.inspect(&mut stream, shown, size, self);
        self.depth -= 1;
        result.map_err(|e| archive::within(shown, e))
    }

    /// A member's path and name rules (also for directories, which have no content).
    pub fn check_member_name(&self, shown: &str, name: &str) -> Result<(), Refusal> {
        archive::check_member_path(shown, name)?;
        match self.deny.first_match(name.trim_end_matches('/')) {
            Some(pattern) => Err(archive::refused(
                shown,
                &format!("denied by the name rule {pattern:?}"),
            )),
            None => Ok(()),
        }
    }

    /// Refuses opening one more level of archive beyond [`archive::MAX_DEPTH`].
    pub fn check_depth(&self, path: &str) -> Result<(), Refusal> {
        if self.depth >= archive::MAX_DEPTH {
            return Err(archive::refused(path, "archives nested more than 3 deep"));
        }
        Ok(())
    }
}

/// The first bytes of a stream of `size` bytes, for claiming.
pub fn read_head(r: &mut dyn Read, size: u64) -> Result<Vec<u8>, Refusal> {
    let want = sniff::SNIFF_LEN.min(usize::try_from(size).unwrap_or(usize::MAX));
    let mut head = Vec::with_capacity(want);
    r.take(want as u64).read_to_end(&mut head)?;
    Ok(head)
}
