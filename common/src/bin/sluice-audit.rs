//! `sluice-audit`: checks and reads the daemons' tamper-evident audit logs
//! (`sluice_common::audit`).
//!
//! ```text
//! sluice-audit verify audit.log.1 audit.log [--heads HEADS]   # rotated files oldest first
//! sluice-audit verify send-audit.log --against recv-audit.log  # heads the high side saw
//! sluice-audit show audit.log [--path P] [--sha256 H] [--since 2026-12-01T00:00:00Z] [--until …]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use serde_json::Value;
use sluice_common::audit::{self, Head};
use sluice_common::audit_cli::{Args, Command};
use sluice_common::exit::ExitStatus;

fn read_all(files: &[PathBuf]) -> Result<String, String> {
    let mut text = String::new();
    for file in files {
        text.push_str(
            &std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?,
        );
    }
    Ok(text)
}

fn parse_heads(path: &PathBuf) -> Result<Vec<Head>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (seq, hash) = l
                .trim()
                .split_once(' ')
                .ok_or_else(|| format!("{}: expected SEQ HASH lines", path.display()))?;
            Ok(Head {
                seq: seq
                    .parse()
                    .map_err(|_| format!("{}: bad sequence number {seq:?}", path.display()))?,
                hash: hash.to_string(),
            })
        })
        .collect()
}

fn time_arg(text: &Option<String>, name: &str) -> Result<Option<std::time::SystemTime>, String> {
    text.as_deref()
        .map(|t| {
            humantime::parse_rfc3339_weak(t)
                .map_err(|_| format!("--{name} {t:?}: expected an RFC 3339 time"))
        })
        .transpose()
}

fn run(command: Command) -> Result<(), (ExitStatus, String)> {
    let usage = |e: String| (ExitStatus::Usage, e);
    match command {
        Command::Verify {
            files,
            heads,
            against,
            other_senders,
        } => {
            let text = read_all(&files).map_err(usage)?;
            let mut heads = match &heads {
                Some(path) => parse_heads(path).map_err(usage)?,
                None => Vec::new(),
            };
            // The newest record a head held by the receiver vouches for.
            let mut anchored = None;
            let mut missing_runs = Vec::new();
            if let Some(receiver_log) = &against {
                let receiver = read_all(std::slice::from_ref(receiver_log)).map_err(usage)?;
                let (recorded, unknown) = audit::heads_recorded_for(&receiver, &text);
                println!(
                    "{} heads recorded by the receiver for the runs in this log",
                    recorded.len()
                );
                // Runs whose `start` this log lacks: their heads within or after this log's
                // records must be in it (a run cut out whole, or the newest runs cut off),
                // unless the receiver also hears other senders. Heads before its first
                // record belong to rotated files not given.
                for (session, heads) in &unknown {
                    if !audit::not_in_log(&text, heads).is_empty() {
                        missing_runs.push(session.clone());
                    }
                }
                if !unknown.is_empty() {
                    let sessions: Vec<&str> = unknown.keys().map(String::as_str).collect();
                    println!(
                        "note: the receiver also recorded heads of runs this log does not \
                         start: {}",
                        sessions.join(", ")
                    );
                }
                if other_senders {
                    missing_runs.clear();
                }
                anchored = Some(recorded.iter().map(|h| h.seq).max().unwrap_or(0));
                heads.extend(recorded);
            }
            let head = audit::verify(&text, &heads)
                .map_err(|broken| (ExitStatus::Failure, format!("tampered: {broken}")))?;
            println!("intact: head seq {} hash {}", head.seq, head.hash);
            // Whole runs cut out (records and `start` together, the chain re-made, or the
            // newest runs truncated) leave heads this log does not hold.
            if !missing_runs.is_empty() {
                return Err((
                    ExitStatus::Failure,
                    format!(
                        "runs missing: the receiver recorded heads of {} run(s) this log does \
                         not hold (session {}): removed from this log, or in rotated files not \
                         given (pass them, oldest first); if this receiver also hears another \
                         sender, --other-senders",
                        missing_runs.len(),
                        missing_runs.join(", ")
                    ),
                ));
            }
            match anchored {
                // Records after the newest head the receiver holds could be cut from this log
                // without a trace: intact is all that can be said of them.
                Some(covered) if head.seq > covered => Err((
                    ExitStatus::Failure,
                    format!(
                        "not anchored: the last {} record(s) (seq {}–{}) are covered by no head \
                         the receiver holds, so their removal could not be told; senders send \
                         their head after their last record, so this is a run cut off before \
                         that, or records added to this log since",
                        head.seq - covered,
                        covered + 1,
                        head.seq
                    ),
                )),
                Some(_) => {
                    println!("anchored: every record is covered by a head the receiver holds");
                    Ok(())
                }
                None => Ok(()),
            }
        }
        Command::Show {
            files,
            path,
            sha256,
            since,
            until,
        } => {
            let text = read_all(&files).map_err(usage)?;
            let since = time_arg(&since, "since").map_err(usage)?;
            let until = time_arg(&until, "until").map_err(usage)?;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let Ok(Value::Object(record)) = serde_json::from_str::<Value>(line) else {
                    println!("(not a record) {line}");
                    continue;
                };
                let field = |key: &str| record.get(key).and_then(Value::as_str);
                let at = field("time").and_then(|t| humantime::parse_rfc3339_weak(t).ok());
                let keep = path.as_deref().is_none_or(|p| field("path") == Some(p))
                    && sha256.as_deref().is_none_or(|h| field("sha256") == Some(h))
                    && since.is_none_or(|s| at.is_some_and(|a| a >= s))
                    && until.is_none_or(|u| at.is_some_and(|a| a < u));
                if !keep {
                    continue;
                }
                let rest: Vec<String> = record
                    .iter()
                    .filter(|(k, _)| !["seq", "time", "prev", "event"].contains(&k.as_str()))
                    // A path or reason a sender chose: never raw control characters on a terminal.
                    .map(|(k, v)| match v {
                        Value::String(s) => format!("{k}={}", sluice_common::paths::escaped(s)),
                        other => format!("{k}={other}"),
                    })
                    .collect();
                println!(
                    "{} #{} {} {}",
                    field("time").unwrap_or("?"),
                    record.get("seq").and_then(Value::as_u64).unwrap_or(0),
                    field("event").unwrap_or("?"),
                    rest.join(" ")
                );
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) => return sluice_common::config::report_clap_error(&e).into(),
    };
    match run(args.command) {
        Ok(()) => ExitStatus::Success.into(),
        Err((status, message)) => {
            eprintln!("error: {message}");
            status.into()
        }
    }
}
