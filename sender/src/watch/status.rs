//! `sluice-send status`: what the outbox daemon has, read from its journal and its outbox —
//! items waiting for approval (who signed, who still may), in flight, failed, not yet taken,
//! refused and sent — for a person, or `--json` for scripts. It only reads (the journal
//! without its lock, the outbox through its fd): it runs beside the daemon.

use std::path::PathBuf;

use clap::Parser;
use serde::Serialize;
use sluice_common::beneath::Dir;
use sluice_common::config::{self, Layers, UsageError};

use super::journal::{self, State};
use super::request::REQUEST_FILE;
use super::{outbox, REFUSED_DIR};
use crate::cli::WatchArgs;
use sluice_protocol::manifest::MAX_REQUEST_LEN;

/// Sent items listed by name; the others are counted.
const LATEST_SENT: usize = 5;
/// Bytes of a refusal's reason shown.
const REASON_BYTES: usize = 300;

/// `sluice-send status`.
#[derive(Debug, Parser)]
#[command(
    name = "sluice-send status",
    bin_name = "sluice-send status",
    version,
    about = "What the outbox daemon (sluice-send watch) has: items waiting for approval, in \
             flight, failed, not yet taken, refused and sent."
)]
pub struct StatusArgs {
    /// The daemon's config file (send-watch.toml): its outbox, state, sent and
    /// approval-policy are used unless given here.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The daemon's --state directory (its journal).
    #[arg(long)]
    state: Option<PathBuf>,
    /// The watched outbox.
    #[arg(long)]
    outbox: Option<PathBuf>,
    /// The daemon's --sent directory. Default: OUTBOX/.sent
    #[arg(long)]
    sent: Option<PathBuf>,
    /// approvals.toml: say who has signed each waiting request and who still may.
    #[arg(long)]
    approval_policy: Option<PathBuf>,
    /// One JSON document on standard output.
    #[arg(long)]
    json: bool,
}

/// Where to look.
#[derive(Debug)]
pub struct StatusOptions {
    state: PathBuf,
    outbox: PathBuf,
    sent: PathBuf,
    approval_policy: Option<PathBuf>,
    json: bool,
}

/// Merges the daemon's config file under the command line.
pub fn resolve(args: StatusArgs) -> Result<StatusOptions, UsageError> {
    let file = config::load_file::<WatchArgs>(args.config.as_deref())?;
    let layers = Layers::new(file.as_ref());
    let state = layers.required_path("state", args.state, "the daemon's --state directory")?;
    let outbox = layers.required_path("outbox", args.outbox, "the watched outbox")?;
    let sent = layers
        .path("sent", args.sent)?
        .unwrap_or_else(|| outbox.join(".sent"));
    Ok(StatusOptions {
        state,
        approval_policy: layers.path("approval-policy", args.approval_policy)?,
        outbox,
        sent,
        json: args.json,
    })
}

/// One item the journal or the outbox knows.
#[derive(Debug, Serialize)]
pub struct Item {
    pub item: String,
    /// `pending` (approval), `sending`, `sent` (leaving the outbox), `failed`, `queued`.
    pub state: &'static str,
    /// Who signed a waiting request, and who still may (with --approval-policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A refused item and why.
#[derive(Debug, Serialize)]
pub struct Refused {
    pub name: String,
    pub reason: String,
}

/// The whole picture.
#[derive(Debug, Serialize)]
pub struct Status {
    pub outbox: String,
    pub items: Vec<Item>,
    pub refused: Vec<Refused>,
    pub sent: usize,
    pub latest_sent: Vec<String>,
}

/// Reads the journal, the outbox, `.refused` and the sent directory.
pub fn status(options: &StatusOptions) -> Result<Status, String> {
    let open = journal::read_open(&options.state).map_err(|e| {
        format!(
            "cannot read the journal in --state {}: {e}",
            options.state.display()
        )
    })?;
    let dir = Dir::open(&options.outbox)
        .map_err(|e| format!("--outbox {}: {e}", options.outbox.display()))?;
    let (names, _) = outbox::scan(&dir)
        .map_err(|e| format!("cannot read --outbox {}: {e}", options.outbox.display()))?;
    let policy = options
        .approval_policy
        .as_deref()
        .map(sluice_common::approval::Policy::load)
        .transpose()
        .map_err(|e| format!("--approval-policy: {e}"))?;
    let mut items = Vec::new();
    for (name, record) in &open {
        let state = match record.state {
            State::Pending => "pending",
            State::Sending => "sending",
            State::Sent => "sent",
            State::Failed => "failed",
            State::Done => continue,
        };
        let detail = match (record.state, &policy) {
            (State::Pending, Some(policy)) => Some(who_signed(&dir, name, policy)),
            _ => None,
        };
        items.push(Item {
            item: name.clone(),
            state,
            detail,
        });
    }
    for name in names {
        if !open.iter().any(|(n, _)| *n == name) {
            items.push(Item {
                item: name,
                state: "queued",
                detail: None,
            });
        }
    }
    let mut refused = Vec::new();
    if let Ok(refused_dir) = dir.open_dir(REFUSED_DIR) {
        let mut names = refused_dir.names().unwrap_or_default();
        names.sort();
        for name in names.iter().filter(|n| !n.ends_with(".reason")) {
            let reason = read_small(&refused_dir, &format!("{name}.reason"), MAX_REQUEST_LEN)
                .map(|text| clip(text.trim()))
                .unwrap_or_else(|| "(no reason file)".into());
            refused.push(Refused {
                name: name.clone(),
                reason,
            });
        }
    }
    // The default OUTBOX/.sent through the outbox's fd, never followed (a writer may plant
    // one while the daemon uses another --sent).
    let sent_dir = match options.sent == options.outbox.join(".sent") {
        true => dir.open_dir(".sent"),
        false => Dir::open(&options.sent),
    };
    let mut sent: Vec<String> = sent_dir.and_then(|d| d.names()).unwrap_or_default();
    sent.sort();
    let latest_sent = sent.iter().rev().take(LATEST_SENT).cloned().collect();
    Ok(Status {
        outbox: options.outbox.display().to_string(),
        items,
        refused,
        sent: sent.len(),
        latest_sent,
    })
}

/// Who signed the waiting request `name` and who still may, read as the daemon reads it.
fn who_signed(outbox: &Dir, name: &str, policy: &sluice_common::approval::Policy) -> String {
    let Ok(item) = outbox.open_dir(name) else {
        return "cannot open the item".into();
    };
    let Some(request) = read_small(&item, REQUEST_FILE, MAX_REQUEST_LEN) else {
        return format!("no readable {REQUEST_FILE}");
    };
    let mut names = item.names().unwrap_or_default();
    names.sort();
    let signatures: Vec<Vec<u8>> = names
        .iter()
        .filter(|n| n.ends_with(".minisig"))
        .take(sluice_protocol::manifest::MAX_APPROVAL_SIGNATURES)
        .filter_map(|n| {
            read_small(&item, n, sluice_protocol::manifest::MAX_SIGNATURE_LEN)
                .map(String::into_bytes)
        })
        .collect();
    let parsed = match sluice_common::approval::Request::parse(&request, REQUEST_FILE) {
        Ok(parsed) => parsed,
        Err(e) => return e.to_string(),
    };
    let tallies = policy.tallies(&parsed, request.as_bytes(), &signatures);
    // The first quorum still short (the default's, or a rule's), or the last one met.
    let Some(tally) = tallies.iter().find(|t| !t.met()).or(tallies.last()) else {
        return "no quorum applies".into();
    };
    let rule = match &tally.rule {
        Some(name) => format!("rule {name:?}: "),
        None => String::new(),
    };
    format!(
        "{rule}{} of {} approvals; {}",
        tally.signed.len(),
        tally.threshold,
        crate::approve::who_signed(policy, tally)
    )
}

/// At most `limit` bytes of the regular file `name` of `dir`, never following a link.
fn read_small(dir: &Dir, name: &str, limit: usize) -> Option<String> {
    use std::io::Read;
    let (file, _) = dir.open_regular(name).ok()?;
    let mut text = String::new();
    file.take(limit as u64).read_to_string(&mut text).ok()?;
    Some(text)
}

/// A reason as one escaped line of at most [`REASON_BYTES`].
fn clip(text: &str) -> String {
    let escaped = sluice_common::paths::escaped(text);
    match escaped.char_indices().nth(REASON_BYTES) {
        Some((at, _)) => format!("{}…", &escaped[..at]),
        None => escaped,
    }
}

/// Prints `status` for a person.
fn print_text(status: &Status) {
    println!("outbox {}", status.outbox);
    let states = [
        ("pending", "waiting for approval"),
        ("sending", "sending"),
        ("sent", "sent, being moved away"),
        ("failed", "failed (retried once changed)"),
        ("queued", "not yet taken"),
    ];
    for (state, title) in states {
        let items: Vec<&Item> = status.items.iter().filter(|i| i.state == state).collect();
        println!("{title}: {}", items.len());
        for item in items {
            let name = sluice_common::paths::escaped(&item.item);
            match &item.detail {
                Some(detail) => println!("  {name}  {}", sluice_common::paths::escaped(detail)),
                None => println!("  {name}"),
            }
        }
    }
    println!("refused: {} (OUTBOX/{REFUSED_DIR})", status.refused.len());
    for refused in &status.refused {
        println!(
            "  {}  {}",
            sluice_common::paths::escaped(&refused.name),
            refused.reason
        );
    }
    println!("sent: {}", status.sent);
    for name in &status.latest_sent {
        println!("  {}", sluice_common::paths::escaped(name));
    }
}

/// Runs `sluice-send status`; the exit status: 0, or 1 when it could not read what it needs.
pub fn run(options: &StatusOptions) -> sluice_common::exit::ExitStatus {
    use sluice_common::exit::ExitStatus;
    match status(options) {
        Ok(status) if options.json => match serde_json::to_string_pretty(&status) {
            Ok(text) => {
                println!("{text}");
                ExitStatus::Success
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitStatus::Failure
            }
        },
        Ok(status) => {
            print_text(&status);
            ExitStatus::Success
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitStatus::Failure
        }
    }
}
