//! Export budgets: how much may leave in a rolling day, for all exports and per rule of
//! `approvals.toml`:
//!
//! ```toml
//! bytes_per_day = "50 GiB"     # every export together
//! [[rule]]
//! name = "weights"
//! paths = ["*.safetensors", "*.pt", "*.gguf"]
//! threshold = 3
//! approvers = "security"
//! bytes_per_day = "10 GiB"     # files matching the rule
//! files_per_day = 20           # 0 forbids the kind outright
//! ```
//!
//! A file counts against the default budget and against every rule its path matches. Use is
//! kept per minute ([`Usage`]) and summed over the last 24 hours: a minute older than that
//! no longer counts; one in the future (the clock set back) still does. Both ends keep their
//! own use — the sender of what it sent, the receiver of what it delivered — so a sender
//! that ignores its budget is still stopped by the receiver.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::metrics::Metric;

/// The rolling window, in minutes.
pub const WINDOW_MINUTES: u64 = 24 * 60;

/// How much may leave in the window; `None`: no limit of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limit {
    pub bytes: Option<u64>,
    pub files: Option<u64>,
}

impl Limit {
    pub fn is_set(&self) -> bool {
        self.bytes.is_some() || self.files.is_some()
    }

    /// A limit of 0 (bytes or files) forbids every file it covers, even an empty one.
    pub fn forbids(&self) -> bool {
        self.bytes == Some(0) || self.files == Some(0)
    }
}

/// A budget's key in the use records: `""` for the default (every export), else the
/// rule's name (never empty: `approvals.toml` refuses an empty rule name).
pub type BudgetKey = String;

/// What an export (or one delivered file) takes from one budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub budget: BudgetKey,
    pub bytes: u64,
    pub files: u64,
}

/// What one export (or one delivered file) asks of the budgets that count it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Demand {
    /// The limits of the budgets charged.
    pub limits: Vec<(BudgetKey, Limit)>,
    pub charges: Vec<Charge>,
    /// What identifies the export (its request's SHA-256): one sent again — after a
    /// restart, or a failed attempt — is charged once.
    pub export: Option<String>,
}

impl Demand {
    /// No budget counts it.
    pub fn is_empty(&self) -> bool {
        self.charges.is_empty()
    }

    /// Whether it fits, given `usage` at `now` (minutes).
    pub fn check(&self, usage: &Usage, now: u64) -> Result<(), Exceeded> {
        check(
            self.limits.iter().map(|(k, l)| (k.as_str(), *l)),
            usage,
            &self.charges,
            now,
        )
    }
}

/// One minute's use of one budget, as both ends store it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spent {
    /// Minutes since the Unix epoch.
    pub minute: u64,
    pub budget: BudgetKey,
    pub bytes: u64,
    pub files: u64,
    /// The export charged ([`Demand::export`]), where the ledger keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<String>,
}

/// The current minute since the Unix epoch.
pub fn minute_now() -> u64 {
    minute_of(SystemTime::now())
}

pub fn minute_of(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

/// Use per budget and minute, within the window (bounded: at most one entry per minute of
/// the window and budget, plus minutes ahead of the clock).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    spent: BTreeMap<BudgetKey, BTreeMap<u64, (u64, u64)>>,
}

impl Usage {
    /// Adds `charges` at `minute`.
    pub fn add(&mut self, minute: u64, charges: &[Charge]) {
        for charge in charges {
            let slot = self
                .spent
                .entry(charge.budget.clone())
                .or_default()
                .entry(minute)
                .or_default();
            slot.0 = slot.0.saturating_add(charge.bytes);
            slot.1 = slot.1.saturating_add(charge.files);
        }
    }

    /// Adds stored records.
    pub fn add_spent(&mut self, spent: &Spent) {
        self.add(
            spent.minute,
            &[Charge {
                budget: spent.budget.clone(),
                bytes: spent.bytes,
                files: spent.files,
            }],
        );
    }

    /// Forgets minutes that left the window at `now` (minutes); minutes ahead of the clock
    /// (it was set back) count as now, so they count a whole window, and no longer.
    pub fn prune(&mut self, now: u64) {
        let oldest = now.saturating_sub(WINDOW_MINUTES - 1);
        for minutes in self.spent.values_mut() {
            let mut kept = minutes.split_off(&oldest);
            let ahead = kept.split_off(&now.saturating_add(1));
            for (bytes, files) in ahead.into_values() {
                let slot = kept.entry(now).or_default();
                slot.0 = slot.0.saturating_add(bytes);
                slot.1 = slot.1.saturating_add(files);
            }
            *minutes = kept;
        }
        self.spent.retain(|_, minutes| !minutes.is_empty());
    }

    /// Bytes and files spent from `budget` in the window ending at `now` (minutes).
    pub fn used(&self, budget: &str, now: u64) -> (u64, u64) {
        let oldest = now.saturating_sub(WINDOW_MINUTES - 1);
        self.spent.get(budget).map_or((0, 0), |minutes| {
            minutes
                .range(oldest..)
                .fold((0u64, 0u64), |(b, f), (_, (bytes, files))| {
                    (b.saturating_add(*bytes), f.saturating_add(*files))
                })
        })
    }

    /// Every minute's use, for storing.
    pub fn records(&self) -> Vec<Spent> {
        let mut out = Vec::new();
        for (budget, minutes) in &self.spent {
            for (minute, (bytes, files)) in minutes {
                out.push(Spent {
                    minute: *minute,
                    budget: budget.clone(),
                    bytes: *bytes,
                    files: *files,
                    export: None,
                });
            }
        }
        out
    }
}

/// Which limit an export would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    Bytes,
    Files,
}

/// An export that does not fit its budget. `Display` is the stable phrase: `export budget
/// exceeded: rule "weights" 10.0 of 10 GiB today; this export adds 800.0 KiB`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    pub budget: BudgetKey,
    pub over: Over,
    pub used: u64,
    pub limit: u64,
    pub adds: u64,
}

impl Exceeded {
    /// The export can never fit: it alone is over the limit (or the limit is 0). One that
    /// fits an empty window may pass once earlier exports leave it.
    pub fn never_fits(&self) -> bool {
        self.limit == 0 || self.adds > self.limit
    }
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("export budget exceeded: ")?;
        match self.budget.as_str() {
            "" => f.write_str("all exports ")?,
            rule => write!(f, "rule {rule:?} ")?,
        }
        match self.over {
            Over::Bytes => {
                let (unit, scale) = binary_unit(self.limit);
                write!(
                    f,
                    "{:.1} of {} {unit} today; this export adds {}",
                    self.used as f64 / scale,
                    trimmed(self.limit as f64 / scale),
                    size(self.adds)
                )?;
            }
            Over::Files => write!(
                f,
                "{} of {} files today; this export adds {}",
                self.used, self.limit, self.adds
            )?,
        }
        if self.limit == 0 {
            f.write_str(" (the budget forbids it)")?;
        }
        Ok(())
    }
}

/// The largest binary unit the limit holds once: its name and size.
fn binary_unit(bytes: u64) -> (&'static str, f64) {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    UNITS
        .iter()
        .find(|(_, size)| bytes >= *size)
        .map_or(("B", 1.0), |(unit, size)| (*unit, *size as f64))
}

/// `10`, `1.5` or `1.96`: a limit as people wrote it.
fn trimmed(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A size in its own binary unit: `800.0 KiB`.
fn size(bytes: u64) -> String {
    let (unit, scale) = binary_unit(bytes);
    if unit == "B" {
        format!("{bytes} B")
    } else {
        format!("{:.1} {unit}", bytes as f64 / scale)
    }
}

/// Whether `charges` fit the `limits` given `usage` at `now` (minutes): the first budget
/// they would exceed otherwise (a forbidding limit first).
pub fn check<'a>(
    limits: impl IntoIterator<Item = (&'a str, Limit)>,
    usage: &Usage,
    charges: &[Charge],
    now: u64,
) -> Result<(), Exceeded> {
    let mut first = None;
    for (budget, limit) in limits {
        let Some(charge) = charges.iter().find(|c| c.budget == budget) else {
            continue;
        };
        let (used_bytes, used_files) = usage.used(budget, now);
        let checks = [
            (Over::Files, limit.files, used_files, charge.files),
            (Over::Bytes, limit.bytes, used_bytes, charge.bytes),
        ];
        for (over, limit, used, adds) in checks {
            let Some(limit) = limit else { continue };
            let exceeds = limit == 0 || used.saturating_add(adds) > limit;
            if exceeds {
                let exceeded = Exceeded {
                    budget: budget.to_string(),
                    over,
                    used,
                    limit,
                    adds,
                };
                if exceeded.never_fits() {
                    return Err(exceeded);
                }
                first.get_or_insert(exceeded);
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// A budget's name in `/metrics` and the log: the rule's, or `(all exports)`.
pub fn label(budget: &str) -> String {
    match budget {
        "" => "(all exports)".to_string(),
        rule => rule.to_string(),
    }
}

/// `/metrics` of the budgets `limits` given `usage` at `now` (minutes): use and limit, in
/// bytes and files, by budget (a limit not set is absent).
pub fn metrics(limits: &[(BudgetKey, Limit)], usage: &Usage, now: u64) -> Vec<Metric> {
    if limits.is_empty() {
        return Vec::new();
    }
    let used: Vec<(String, (u64, u64))> = limits
        .iter()
        .map(|(k, _)| (label(k), usage.used(k, now)))
        .collect();
    let limit_of = |pick: fn(&Limit) -> Option<u64>| -> Vec<(String, f64)> {
        limits
            .iter()
            .filter_map(|(k, l)| pick(l).map(|v| (label(k), v as f64)))
            .collect()
    };
    vec![
        Metric::gauge_by(
            "sluice_export_budget_used_bytes",
            "Bytes exported in the last 24 hours, by budget (approvals.toml).",
            "budget",
            used.iter().map(|(k, (b, _))| (k.clone(), *b as f64)),
        ),
        Metric::gauge_by(
            "sluice_export_budget_used_files",
            "Files exported in the last 24 hours, by budget (approvals.toml).",
            "budget",
            used.iter().map(|(k, (_, f))| (k.clone(), *f as f64)),
        ),
        Metric::gauge_by(
            "sluice_export_budget_limit_bytes",
            "bytes_per_day of each budget that sets one.",
            "budget",
            limit_of(|l| l.bytes),
        ),
        Metric::gauge_by(
            "sluice_export_budget_limit_files",
            "files_per_day of each budget that sets one.",
            "budget",
            limit_of(|l| l.files),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(budget: &str, bytes: u64, files: u64) -> Charge {
        Charge {
            budget: budget.into(),
            bytes,
            files,
        }
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_second_file_over_a_daily_budget_is_refused_until_the_first_leaves_the_window() {
        let limit = Limit {
            bytes: Some(MIB),
            files: None,
        };
        let mut usage = Usage::default();
        let first = [charge("weights", 800 << 10, 1)];
        let now = 30_000_000;
        assert_eq!(check([("weights", limit)], &usage, &first, now), Ok(()));
        usage.add(now, &first);
        let exceeded = check([("weights", limit)], &usage, &first, now + 10).unwrap_err();
        assert_eq!(
            exceeded.to_string(),
            "export budget exceeded: rule \"weights\" 0.8 of 1 MiB today; this export adds \
             800.0 KiB"
        );
        assert!(!exceeded.never_fits());
        // Still counted 23 h 59 min later; gone a day later.
        let later = now + WINDOW_MINUTES - 1;
        assert!(check([("weights", limit)], &usage, &first, later).is_err());
        let day = now + WINDOW_MINUTES;
        assert_eq!(check([("weights", limit)], &usage, &first, day), Ok(()));
        usage.prune(day);
        assert_eq!(usage, Usage::default());
        // Another budget's use is its own.
        assert_eq!(check([("reports", limit)], &usage, &first, now), Ok(()));
    }

    #[test]
    fn zero_forbids_and_an_export_larger_than_the_budget_never_fits() {
        let usage = Usage::default();
        let zero = Limit {
            bytes: None,
            files: Some(0),
        };
        let refused = check([("weights", zero)], &usage, &[charge("weights", 0, 1)], 5);
        let refused = refused.unwrap_err();
        assert!(refused.never_fits());
        assert_eq!(
            refused.to_string(),
            "export budget exceeded: rule \"weights\" 0 of 0 files today; this export adds 1 \
             (the budget forbids it)"
        );
        let small = Limit {
            bytes: Some(10 << 30),
            files: Some(100),
        };
        let huge = check([("", small)], &usage, &[charge("", 11 << 30, 1)], 5).unwrap_err();
        assert!(huge.never_fits());
        assert!(huge
            .to_string()
            .starts_with("export budget exceeded: all exports 0.0 of 10 GiB today"));
    }

    #[test]
    fn a_minute_ahead_of_the_clock_still_counts_and_records_round_trip() {
        let mut usage = Usage::default();
        usage.add(1_000, &[charge("", 5, 1), charge("weights", 5, 1)]);
        usage.add(1_000, &[charge("", 7, 1)]);
        assert_eq!(usage.used("", 900), (12, 2));
        let mut again = Usage::default();
        for spent in usage.records() {
            again.add_spent(&spent);
        }
        assert_eq!(again, usage);
        // Minutes ahead of the clock count as now: a whole window, and no longer.
        usage.prune(900);
        assert_eq!(usage.used("weights", 900), (5, 1));
        assert_eq!(usage.used("weights", 900 + WINDOW_MINUTES - 1), (5, 1));
        assert_eq!(usage.used("weights", 900 + WINDOW_MINUTES), (0, 0));
    }
}
