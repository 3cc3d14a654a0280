//! What one file's archives may use, whatever they declare: members, expansion, nesting and
//! memory (the numbers `formats::archive` and `zipmap` enforce), and the refusal that names
//! the member that broke a bound.

use crate::refusal::Refusal;

/// Levels of archives within archives.
pub const MAX_DEPTH: u32 = 3;
/// Members of all archives of one file together.
pub const MAX_MEMBERS: usize = 10_000;
/// Largest expansion of a compressed member (above 1 MiB).
pub const MAX_RATIO: u64 = 200;
/// All members together, when the policy sets no `max_file_size`.
pub const DEFAULT_MAX_EXPANDED: u64 = 1 << 40;
/// Largest member held in memory (a compressed nested zip; a member that is two things).
pub const MAX_NESTED_ZIP: u64 = 64 << 20;
/// What all members of a small file may expand to, whatever its size.
pub const EXPANDED_FLOOR: u64 = 64 << 20;

/// What the members of one file's archives may still use.
#[derive(Debug)]
pub struct Budget {
    members: usize,
    expanded: u64,
    max_expanded: u64,
    /// Why the bound is what it is, for the refusal.
    why: String,
}

impl Budget {
    pub fn new(max_expanded: u64) -> Self {
        Budget {
            members: 0,
            expanded: 0,
            max_expanded,
            why: String::new(),
        }
    }

    /// For a file of `real` bytes: at most `max`, and at most [`MAX_RATIO`] times `real`
    /// (but at least [`EXPANDED_FLOOR`]) — what arrived, not what its archives declare.
    pub fn for_file(max: u64, real: u64) -> Self {
        let by_size = real.saturating_mul(MAX_RATIO).max(EXPANDED_FLOOR);
        let mut budget = Budget::new(max.min(by_size));
        if by_size < max {
            budget.why = format!(" ({MAX_RATIO} times the file's {real} bytes)");
        }
        budget
    }

    /// Bytes members may still expand to.
    pub fn left(&self) -> u64 {
        self.max_expanded.saturating_sub(self.expanded)
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
                &format!(
                    "members expand beyond {} bytes{}",
                    self.max_expanded, self.why
                ),
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
        Refusal::Archive(_) | Refusal::TooSlow { .. } => refusal,
        other => refused(shown, &other.to_string()),
    }
}

/// A member's path checked: a plain relative path (directories may end in `/`).
pub fn check_member_path(shown: &str, name: &str) -> Result<(), Refusal> {
    let trimmed = name.strip_suffix('/').unwrap_or(name);
    sluice_common::paths::validate_object_path(trimmed)
        .map_err(|e| refused(shown, &format!("hostile member path ({e})")))
}

/// Largest central directory a zip may have (10 000 members with long names and extras).
pub const MAX_CENTRAL_DIRECTORY: u64 = 16 << 20;
