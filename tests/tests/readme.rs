//! README is what an operator follows literally. Two checks with the real binaries:
//!
//! - every option README writes for a command — in a shell example, a command quoted in the
//!   prose, or an option table of that command's section — is one that command's `--help` lists (a renamed or removed
//!   option fails here, not on a gateway box);
//! - the first steps run as written: the two `keygen` lines, the receiver and the one-shot
//!   sender of "sluice-send"/"sluice-recv" (addresses turned into loopback, placeholders
//!   filled in); then the receiver's audit log verifies (`sluice-audit verify`).

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sluice_tests::binaries::{binaries, free_udp_port, wait_bound, Proc};

/// The commands and the subcommands each takes as its first argument.
const COMMANDS: [(&str, &[&str]); 5] = [
    ("sluice-send", &["keygen", "watch", "status"]),
    ("sluice-recv", &["keygen", "release"]),
    ("sluice-approve", &["request", "sign", "check", "show"]),
    ("sluice-audit", &["verify", "show"]),
    ("sluice-inspect", &[]),
];

fn readme() -> String {
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    std::fs::read_to_string(root.join("../README.md")).unwrap()
}

fn binary(name: &str) -> &'static Path {
    let bins = binaries();
    match name {
        "sluice-send" => &bins.send,
        "sluice-recv" => &bins.recv,
        "sluice-approve" => &bins.approve,
        "sluice-audit" => &bins.audit,
        _ => &bins.inspect,
    }
}

/// A command README shows: which binary and subcommand, and the long options it writes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Mention {
    command: String,
    subcommand: Option<String>,
    option: String,
    line: usize,
}

/// The lines of README's `sh` blocks, continuation lines joined, comments cut, each with the
/// number of its first line.
fn shell_lines(readme: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut in_block = false;
    let mut pending: Option<(usize, String)> = None;
    for (index, line) in readme.lines().enumerate() {
        if line.starts_with("```") {
            in_block = line == "```sh";
            continue;
        }
        if !in_block {
            continue;
        }
        let code = line.find(" #").map_or(line, |at| &line[..at]);
        let code = if code.starts_with('#') { "" } else { code };
        let (start, mut text) = pending.take().unwrap_or((index + 1, String::new()));
        text.push(' ');
        match code.trim_end().strip_suffix('\\') {
            Some(more) => {
                text.push_str(more);
                pending = Some((start, text));
            }
            None => {
                text.push_str(code);
                lines.push((start, text.trim().to_string()));
            }
        }
    }
    lines
}

/// `--option` in a README token such as `[--rate`, `--sent=DIR]` or `--out,`.
fn option_in(token: &str) -> Option<String> {
    let token = token.trim_start_matches(['[', '(', '`']);
    let name: String = token
        .strip_prefix("--")?
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    (!name.is_empty()).then(|| format!("--{name}"))
}

/// Commands README writes in its prose as code (`` `sluice-inspect --json` ``), each with its
/// line number.
fn inline_commands(readme: &str) -> Vec<(usize, String)> {
    let mut spans = Vec::new();
    let mut in_code = false;
    for (index, line) in readme.lines().enumerate() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if !in_code {
            let quoted = line.split('`').skip(1).step_by(2);
            spans.extend(quoted.map(|span| (index + 1, span.to_string())));
        }
    }
    spans
}

/// Options README writes in its shell examples and in commands quoted in its prose.
fn mentions_in_examples(readme: &str) -> Vec<Mention> {
    let mut found = Vec::new();
    for (line, text) in shell_lines(readme)
        .into_iter()
        .chain(inline_commands(readme))
    {
        let words: Vec<&str> = text.split_whitespace().collect();
        let Some((command, subcommands)) = COMMANDS.iter().find(|(c, _)| words.first() == Some(c))
        else {
            continue;
        };
        let subcommand = words
            .get(1)
            .filter(|w| subcommands.contains(w))
            .map(|w| w.to_string());
        for word in &words[1..] {
            if let Some(option) = option_in(word) {
                found.push(Mention {
                    command: command.to_string(),
                    subcommand: subcommand.clone(),
                    option,
                    line,
                });
            }
        }
    }
    found
}

/// Options in the first column of the option tables of the sections about one command
/// (`## sluice-send`, `### sluice-send watch: …`, `## sluice-recv`, …).
fn mentions_in_tables(readme: &str) -> Vec<Mention> {
    let mut found = Vec::new();
    let mut section: Option<(String, Option<String>)> = None;
    let mut in_code = false;
    for (index, line) in readme.lines().enumerate() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        if let Some(title) = line.strip_prefix('#') {
            let level = 1 + title.chars().take_while(|c| *c == '#').count();
            let title = title.trim_start_matches('#');
            let named = COMMANDS.iter().find_map(|(command, subs)| {
                let at = title.find(command)?;
                let rest = title[at + command.len()..].trim_start();
                let sub = subs
                    .iter()
                    .find(|s| rest.split([' ', ':']).next() == Some(s));
                Some((command.to_string(), sub.map(|s| s.to_string())))
            });
            if named.is_some() || level <= 2 {
                section = named;
            }
            continue;
        }
        let Some((command, subcommand)) = &section else {
            continue;
        };
        let Some(first_cell) = line.strip_prefix("| ").and_then(|l| l.split(" | ").next()) else {
            continue;
        };
        for quoted in first_cell.split('`').skip(1).step_by(2) {
            if let Some(option) = quoted.split_whitespace().next().and_then(option_in) {
                found.push(Mention {
                    command: command.clone(),
                    subcommand: subcommand.clone(),
                    option,
                    line: index + 1,
                });
            }
        }
    }
    found
}

/// Whether `help` lists `option` as an option: in the part of a line that names options
/// (`  -v, --verbose`, `      --rate <RATE>`), not in some description's text.
fn lists(help: &str, option: &str) -> bool {
    help.lines().any(|line| {
        let line = line.trim_start();
        let names = line.split("  ").next().unwrap_or_default();
        line.starts_with('-') && names.split([' ', ',', '=']).any(|word| word == option)
    })
}

#[test]
fn every_option_readme_shows_is_one_the_command_takes() {
    let readme = readme();
    let examples = mentions_in_examples(&readme);
    let tables = mentions_in_tables(&readme);
    // What this test reads of README: if a reshuffle of README hid its examples or tables from
    // it, it would check nothing.
    let commands: BTreeSet<_> = examples.iter().map(|m| m.command.as_str()).collect();
    assert_eq!(
        commands.len(),
        COMMANDS.len(),
        "examples found: {examples:?}"
    );
    assert!(
        examples.len() >= 40,
        "{} options in examples",
        examples.len()
    );
    assert!(tables.len() >= 40, "{} options in tables", tables.len());
    let mut helps: BTreeMap<(String, Option<String>), String> = BTreeMap::new();
    let mut wrong = Vec::new();
    for mention in examples.iter().chain(&tables) {
        let key = (mention.command.clone(), mention.subcommand.clone());
        let help = helps.entry(key).or_insert_with(|| {
            let mut command = Command::new(binary(&mention.command));
            command.args(&mention.subcommand).arg("--help");
            let out = command.output().unwrap();
            assert!(out.status.success(), "{mention:?}: --help failed: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        });
        if !lists(help, &mention.option) {
            wrong.push(format!(
                "README.md:{}: {} {}{} is not in its --help",
                mention.line,
                mention.command,
                mention
                    .subcommand
                    .as_deref()
                    .map_or(String::new(), |s| format!("{s} ")),
                mention.option
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// README's command starting with `prefix`, as words, with the optional `[…]` brackets
/// dropped (the options inside are kept and filled in).
fn readme_command(readme: &str, prefix: &str) -> Vec<String> {
    let (_, line) = shell_lines(readme)
        .into_iter()
        .find(|(_, l)| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("README has no command starting with {prefix:?}"));
    line.split_whitespace()
        .map(|w| w.trim_matches(['[', ']']).to_string())
        .filter(|w| !w.is_empty())
        .collect()
}

/// Runs README's words (the binary first) in `dir`, with `fill` replacing placeholders.
fn readme_cmd(words: &[String], dir: &Path, fill: &[(&str, &str)]) -> Command {
    let mut command = Command::new(binary(&words[0]));
    command.current_dir(dir);
    for word in &words[1..] {
        let mut word = word.clone();
        for (from, to) in fill {
            // A placeholder (`N`, `DIR`) is a whole word; an address or path a part of one.
            if from.chars().all(|c| c.is_ascii_uppercase()) {
                if word == *from {
                    word = to.to_string();
                }
            } else {
                word = word.replace(from, to);
            }
        }
        command.arg(word);
    }
    command
}

#[test]
fn readmes_first_steps_run_as_written() {
    let readme = readme();
    let dir = tempfile::tempdir().unwrap();
    for prefix in ["sluice-recv keygen keys/", "sluice-send keygen keys/"] {
        let words = readme_command(&readme, prefix);
        let out = readme_cmd(&words, dir.path(), &[]).output().unwrap();
        assert!(out.status.success(), "{prefix}: {out:?}");
    }
    for key in [
        "receiver.key",
        "receiver.pub",
        "sender.key",
        "sender.pub",
        "link.key",
    ] {
        assert!(dir.path().join("keys").join(key).is_file(), "keys/{key}");
    }
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.path().join("report.bin"), &data).unwrap();

    let port = free_udp_port().to_string();
    // README's receiver, on loopback, writing where this test looks, exiting when idle.
    let recv_words = readme_command(&readme, "sluice-recv --link");
    let mut receiver = Proc::spawn(
        "recv",
        readme_cmd(
            &recv_words,
            dir.path(),
            &[
                ("0.0.0.0:5000", &format!("127.0.0.1:{port}")),
                ("/srv/inbox", "inbox"),
                ("DIR", "recv-state"),
                ("SECS", "8"),
            ],
        ),
    );
    wait_bound(
        &mut receiver,
        format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(20),
    );
    // README's one-shot sender, to that receiver: `PATH... | -` is one file.
    let mut send_words = readme_command(&readme, "sluice-send --link");
    let paths = send_words.iter().position(|w| w == "PATH...").unwrap();
    send_words.truncate(paths);
    send_words.push("report.bin".into());
    let out = readme_cmd(
        &send_words,
        dir.path(),
        &[("10.0.0.2:5000", &format!("127.0.0.1:{port}")), ("N", "2")],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "sender: {out:?}");
    let finished = receiver.finish(Duration::from_secs(60));
    assert_eq!(finished.code(), 0, "{}", finished.log);
    assert_eq!(
        std::fs::read(dir.path().join("inbox/report.bin")).unwrap(),
        data
    );

    // README: `sluice-audit verify audit.log` says "intact: head seq N hash H" and exits 0.
    let out = Command::new(&binaries().audit)
        .arg("verify")
        .arg(dir.path().join("recv-state/audit.log"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("intact: head seq "),
        "{out:?}"
    );
}
