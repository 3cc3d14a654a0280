//! The sender's export budget ledger: what it has sent under `approvals.toml`'s budgets
//! (`bytes_per_day`, `files_per_day`, see [`sluice_common::budget`]), kept in the state
//! directory so that one-shot runs and the outbox daemon share it.
//!
//! ```text
//!   STATE/export-budget.lock    flock'ed for each check-and-spend (never replaced)
//!   STATE/export-budget.jsonl   one line per budget and minute: {"minute":…,"budget":…,…}
//! ```
//!
//! An export is checked and charged under the lock, and the charge is fsynced before the
//! export's first frame: a crash afterwards leaves it spent (what may have left is counted).
//! The file is rewritten (to a new file, then renamed) when it holds minutes out of the
//! window, so it stays within one line per budget and minute of the day. A line torn by a
//! crash is the last and is skipped (its export never started); any other unreadable line
//! stops every export until an operator looks: a ledger that cannot be read cannot say what
//! is left.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use sluice_common::budget::{self, Demand, Exceeded, Spent, Usage};

const LOCK: &str = "export-budget.lock";
const LEDGER: &str = "export-budget.jsonl";
const REWRITE: &str = "export-budget.jsonl.new";
/// Rewritten once it holds this many more lines than minutes in use.
const SLACK_LINES: usize = 4096;

/// Why an export may not be sent now.
#[derive(Debug)]
pub enum NotSpent {
    /// Over a budget (the stable phrase).
    Exceeded(Exceeded),
    /// The ledger cannot be read or written: nothing under a budget is sent.
    Ledger(String),
}

impl std::fmt::Display for NotSpent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotSpent::Exceeded(e) => e.fmt(f),
            NotSpent::Ledger(why) => write!(
                f,
                "export budget unknown: cannot use the ledger ({why}); nothing under a budget \
                 is sent"
            ),
        }
    }
}

fn open_flags() -> OpenOptions {
    let mut options = OpenOptions::new();
    options
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    options
}

/// Takes `demand` from the budgets in the ledger in `state`, if it fits; returns the use of
/// every budget afterwards (for `/metrics`). Nothing to do for files no budget counts.
pub fn spend(state: &Path, demand: &Demand) -> Result<Usage, NotSpent> {
    if demand.is_empty() {
        return Ok(Usage::default());
    }
    let ledger = |what: &str, e: io::Error| NotSpent::Ledger(format!("{what}: {e}"));
    std::fs::create_dir_all(state).map_err(|e| ledger(&state.display().to_string(), e))?;
    let lock = open_flags()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(state.join(LOCK))
        .map_err(|e| ledger(LOCK, e))?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| ledger(LOCK, io::Error::from_raw_os_error(e.raw_os_error())))?;
    let now = budget::minute_now();
    let Ledger {
        mut usage,
        lines,
        whole,
        mut paid,
    } = read(state).map_err(|e| ledger(LEDGER, e))?;
    // Sent again (a restart mid-send, a failed attempt): it was charged when it first left.
    if let Some(export) = demand.export.as_ref().filter(|e| paid.contains_key(*e)) {
        tracing::info!(request_sha256 = %export, "export budget: this request was charged already");
        return Ok(usage);
    }
    demand.check(&usage, now).map_err(NotSpent::Exceeded)?;
    usage.add(now, &demand.charges);
    let spent: Vec<Spent> = (demand.charges.iter())
        .map(|c| Spent {
            minute: now,
            budget: c.budget.clone(),
            bytes: c.bytes,
            files: c.files,
            export: demand.export.clone(),
        })
        .collect();
    usage.prune(now);
    if let Some(export) = &demand.export {
        paid.insert(export.clone(), now);
    }
    if lines > usage.records().len() + paid.len() + SLACK_LINES {
        rewrite(state, &usage, &paid).map_err(|e| ledger(LEDGER, e))?;
    } else {
        append(state, &spent, whole).map_err(|e| ledger(LEDGER, e))?;
    }
    for charge in &demand.charges {
        let (bytes, files) = usage.used(&charge.budget, now);
        tracing::info!(
            budget = %budget::label(&charge.budget),
            ledger = %state.join(LEDGER).display(),
            "export budget: {} and {} file(s) spent today",
            sluice_common::units::Bytes(bytes),
            files
        );
    }
    Ok(usage)
}

/// Whether `demand` fits the ledger in `state` now: read without the lock, to wait without
/// reading any file; [`spend`] decides.
pub fn fits(state: &Path, demand: &Demand) -> Result<(), NotSpent> {
    if demand.is_empty() {
        return Ok(());
    }
    let ledger = read(state).map_err(|e| NotSpent::Ledger(format!("{LEDGER}: {e}")))?;
    if demand
        .export
        .as_ref()
        .is_some_and(|e| ledger.paid.contains_key(e))
    {
        return Ok(());
    }
    let usage = ledger.usage;
    demand
        .check(&usage, budget::minute_now())
        .map_err(NotSpent::Exceeded)
}

/// What the ledger in `state` holds (nothing if there is none yet), for `/metrics` and
/// `sluice-send status`.
pub fn usage(state: &Path) -> io::Result<Usage> {
    read(state).map(|ledger| ledger.usage)
}

/// What the ledger holds.
struct Ledger {
    usage: Usage,
    /// Its lines, and the length of the whole ones (a torn last line after them).
    lines: usize,
    whole: u64,
    /// The exports charged in the window, with the minute of their charge.
    paid: std::collections::BTreeMap<String, u64>,
}

fn read(state: &Path) -> io::Result<Ledger> {
    let mut text = Vec::new();
    match open_flags().read(true).open(state.join(LEDGER)) {
        Ok(mut file) => file.read_to_end(&mut text)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let mut usage = Usage::default();
    let mut paid = std::collections::BTreeMap::new();
    let mut lines = 0;
    let mut rest = text.as_slice();
    while let Some(end) = rest.iter().position(|b| *b == b'\n') {
        let line = &rest[..end];
        rest = &rest[end + 1..];
        lines += 1;
        let spent: Spent = serde_json::from_slice(line).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("line {lines} is damaged ({e})"),
            )
        })?;
        usage.add_spent(&spent);
        if let Some(export) = spent.export {
            paid.insert(export, spent.minute);
        }
    }
    // `rest`: a line torn by a crash before its fsync; its export never began.
    let now = budget::minute_now();
    usage.prune(now);
    let oldest = now.saturating_sub(budget::WINDOW_MINUTES - 1);
    paid.retain(|_, minute| *minute >= oldest);
    let whole = (text.len() - rest.len()) as u64;
    Ok(Ledger {
        usage,
        lines,
        whole,
        paid,
    })
}

fn line_of(spent: &Spent) -> io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(spent).map_err(io::Error::other)?;
    line.push(b'\n');
    Ok(line)
}

/// Appends `spent` after the ledger's `whole` lines (a torn line a crash left is cut off).
fn append(state: &Path, spent: &[Spent], whole: u64) -> io::Result<()> {
    use std::io::{Seek, SeekFrom};
    let created = !state.join(LEDGER).exists();
    let mut file = open_flags()
        .write(true)
        .create(true)
        .truncate(false)
        .open(state.join(LEDGER))?;
    if created {
        // The new name must survive a crash as well as the charge in it.
        File::open(state)?.sync_all()?;
    }
    if file.metadata()?.len() > whole {
        file.set_len(whole)?;
    }
    file.seek(SeekFrom::Start(whole))?;
    let mut out = Vec::new();
    for s in spent {
        out.extend(line_of(s)?);
    }
    file.write_all(&out)?;
    file.sync_all()
}

/// Replaces the ledger by the window's use and the exports charged in it, durably (new
/// file, fsync, rename, fsync dir).
fn rewrite(
    state: &Path,
    usage: &Usage,
    paid: &std::collections::BTreeMap<String, u64>,
) -> io::Result<()> {
    let mut out = Vec::new();
    for s in usage.records() {
        out.extend(line_of(&s)?);
    }
    for (export, minute) in paid {
        out.extend(line_of(&Spent {
            minute: *minute,
            budget: String::new(),
            bytes: 0,
            files: 0,
            export: Some(export.clone()),
        })?);
    }
    let mut file: File = open_flags()
        .write(true)
        .create(true)
        .truncate(true)
        .open(state.join(REWRITE))?;
    file.write_all(&out)?;
    file.sync_all()?;
    std::fs::rename(state.join(REWRITE), state.join(LEDGER))?;
    File::open(state)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    use sluice_common::approval::Policy;

    fn policy(dir: &Path, budget: &str) -> Policy {
        let approver = dir.join("approver");
        sluice_common::keys::generate_sender_keys(&approver).unwrap();
        std::fs::copy(
            approver.join(sluice_common::keys::SENDER_PUB),
            dir.join("a.pub"),
        )
        .unwrap();
        let path = dir.join("approvals.toml");
        std::fs::write(
            &path,
            format!(
                "threshold = 1\napprovers = [\"a.pub\"]\n[[rule]]\nname = \"weights\"\n\
                 paths = [\"*.safetensors\"]\nthreshold = 1\napprovers = [\"a.pub\"]\n{budget}\n"
            ),
        )
        .unwrap();
        Policy::load(&path).unwrap()
    }

    #[test]
    fn the_second_export_over_the_budget_is_refused_and_the_ledger_survives_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let policy = policy(dir.path(), "bytes_per_day = \"1 MiB\"");
        let state = dir.path().join("state");
        let weights = [("m.safetensors", 800 << 10)];
        let used = spend(&state, &policy.demand(weights)).unwrap();
        assert_eq!(used.used("weights", budget::minute_now()).0, 800 << 10);
        let refused = spend(&state, &policy.demand(weights)).unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with("export budget exceeded: rule \"weights\" 0.8 of 1 MiB today"),
            "{refused}"
        );
        // Files no budget counts pass, and cost nothing.
        spend(&state, &policy.demand([("report.pdf", 5 << 20)])).unwrap();
        // A crash mid-line: skipped, and the next line starts afresh.
        let mut file = OpenOptions::new()
            .append(true)
            .open(state.join(LEDGER))
            .unwrap();
        file.write_all(b"{\"minute\":1,\"bud").unwrap();
        spend(&state, &policy.demand([("small.safetensors", 1000)])).unwrap();
        let used = usage(&state).unwrap().used("weights", budget::minute_now());
        assert_eq!(used, ((800 << 10) + 1000, 2));
        // A damaged line elsewhere stops exports under a budget.
        let text = std::fs::read_to_string(state.join(LEDGER)).unwrap();
        std::fs::write(state.join(LEDGER), format!("garbage\n{text}")).unwrap();
        let stopped = spend(&state, &policy.demand([("x.safetensors", 1)])).unwrap_err();
        assert!(
            stopped.to_string().contains("line 1 is damaged"),
            "{stopped}"
        );
    }

    #[test]
    fn one_export_sent_again_is_charged_once_even_across_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let policy = policy(dir.path(), "files_per_day = 1");
        let state = dir.path().join("state");
        let demand = |export: &str| Demand {
            export: Some(export.into()),
            ..policy.demand([("m.safetensors", 10)])
        };
        spend(&state, &demand("request-a")).unwrap();
        // A restart mid-send, or a retry: the same request passes, and costs nothing more.
        fits(&state, &demand("request-a")).unwrap();
        let again = spend(&state, &demand("request-a")).unwrap();
        assert_eq!(again.used("weights", budget::minute_now()), (10, 1));
        assert!(spend(&state, &demand("request-b")).is_err());
        // Compacted: the request is still known as paid.
        let usage = usage(&state).unwrap();
        let paid =
            std::collections::BTreeMap::from([("request-a".to_string(), budget::minute_now())]);
        rewrite(&state, &usage, &paid).unwrap();
        spend(&state, &demand("request-a")).unwrap();
        assert!(spend(&state, &demand("request-b")).is_err());
    }

    #[test]
    fn minutes_out_of_the_window_are_rewritten_away() {
        let dir = tempfile::tempdir().unwrap();
        let policy = policy(dir.path(), "files_per_day = 1000000");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let mut old = Vec::new();
        for minute in 0..(SLACK_LINES as u64 + 10) {
            old.extend(
                line_of(&Spent {
                    minute,
                    budget: "weights".into(),
                    bytes: 1,
                    files: 1,
                    export: None,
                })
                .unwrap(),
            );
        }
        std::fs::write(state.join(LEDGER), old).unwrap();
        spend(&state, &policy.demand([("m.safetensors", 7)])).unwrap();
        let text = std::fs::read_to_string(state.join(LEDGER)).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert_eq!(
            usage(&state).unwrap().used("weights", budget::minute_now()),
            (7, 1)
        );
    }
}
