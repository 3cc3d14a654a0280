//! `sluice-manual OUT`: writes the man pages and shell completions of Sluice's five binaries
//! from the command lines the binaries parse (each crate's `manual` or `*_cli` module), as the
//! packages install them:
//!
//! ```text
//! OUT/man/sluice-send.1, sluice-send-watch.1, …           → /usr/share/man/man1/
//! OUT/bash/sluice-send                                     → /usr/share/bash-completion/completions/
//! OUT/zsh/_sluice-send                                     → /usr/share/zsh/vendor-completions/
//! OUT/fish/sluice-send.fish                                → /usr/share/fish/vendor_completions.d/
//! ```
//!
//! The output depends only on the sources (no date, no path): the packages stay reproducible.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Command, CommandFactory};
use clap_complete::Shell;

/// Every binary the packages ship, as clap describes it.
fn commands() -> Vec<Command> {
    let mut all = sluice_sender::manual::commands();
    all.push(sluice_receiver::manual::command());
    all.push(sluice_common::audit_cli::Args::command());
    all
}

/// Where each shell's completion for `name` goes under OUT.
fn completion_file(out: &Path, shell: Shell, name: &str) -> PathBuf {
    match shell {
        Shell::Zsh => out.join("zsh").join(format!("_{name}")),
        Shell::Fish => out.join("fish").join(format!("{name}.fish")),
        _ => out.join("bash").join(name),
    }
}

/// clap_complete's bash script (4.6.12) spells a subcommand's state two ways when the binary's
/// name has a hyphen: the loop that reads the words says `sluice__send__subcmd__watch`, the
/// case arms `sluice__subcmd__send__subcmd__watch`, so nothing after a subcommand would
/// complete (clap issues 6421 and 6529, open). The arms are spelt as the loop spells them.
fn fix_hyphenated_bash(script: &str, name: &str) -> String {
    let arms = format!("{}__subcmd__", name.replace('-', "__subcmd__"));
    let state = format!("{}__subcmd__", name.replace('-', "__"));
    script.replace(&arms, &state)
}

/// clap_complete's bash script offers hidden options too (`sluice-send watch --approval`, which
/// the daemon refuses and its `--help` leaves out): each case arm's `opts` loses them. `label`
/// is the arm of `command` (`sluice__send`, `sluice__send__subcmd__watch`).
fn drop_hidden_bash(script: &str, command: &Command, label: &str) -> String {
    let hidden: Vec<String> = (command.get_arguments())
        .filter(|arg| arg.is_hide_set())
        .filter_map(|arg| arg.get_long().map(|long| format!("--{long}")))
        .collect();
    let mut script = script.to_string();
    let arm = format!("\n        {label})\n            opts=\"");
    if let Some(start) = script.find(&arm).map(|at| at + arm.len()) {
        if let Some(len) = script[start..].find('"') {
            let opts: Vec<&str> = script[start..start + len]
                .split(' ')
                .filter(|word| !hidden.iter().any(|h| h == word))
                .collect();
            script.replace_range(start..start + len, &opts.join(" "));
        }
    }
    for sub in command.get_subcommands() {
        let label = format!("{label}__subcmd__{}", sub.get_name().replace('-', "__"));
        script = drop_hidden_bash(&script, sub, &label);
    }
    script
}

fn write(out: &Path) -> std::io::Result<usize> {
    let mut files = 0;
    let man = out.join("man");
    std::fs::create_dir_all(&man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        if let Some(dir) = completion_file(out, shell, "x").parent() {
            std::fs::create_dir_all(dir)?;
        }
    }
    for mut command in commands() {
        let name = command.get_name().to_string();
        // One page per command and per subcommand (sluice-send-watch.1, …).
        clap_mangen::generate_to(command.clone(), &man)?;
        files += 1 + command.get_subcommands().count();
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, &name, &mut script);
            let mut script = String::from_utf8_lossy(&script).into_owned();
            if shell == Shell::Bash {
                script = fix_hyphenated_bash(&script, &name);
                script = drop_hidden_bash(&script, &command, &name.replace('-', "__"));
            }
            std::fs::write(completion_file(out, shell, &name), script)?;
            files += 1;
        }
    }
    Ok(files)
}

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [out] = args.as_slice() else {
        eprintln!("usage: sluice-manual OUT   (writes OUT/man, OUT/bash, OUT/zsh, OUT/fish)");
        return ExitCode::from(2);
    };
    match write(out) {
        Ok(files) => {
            eprintln!("sluice-manual: wrote {files} files under {}", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice-manual: {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bash script for `sluice-send`, as `write` makes it.
    fn bash_for_send() -> String {
        let mut send = sluice_sender::manual::commands().remove(0);
        let mut script = Vec::new();
        clap_complete::generate(Shell::Bash, &mut send, "sluice-send", &mut script);
        let script = fix_hyphenated_bash(&String::from_utf8_lossy(&script), "sluice-send");
        drop_hidden_bash(&script, &send, "sluice__send")
    }

    #[test]
    fn a_subcommands_arm_is_reached_and_offers_only_what_its_help_shows() {
        let script = bash_for_send();
        // The word loop's state has an arm (no `sluice__subcmd__send…` left unreachable).
        assert!(script.contains("cmd=\"sluice__send__subcmd__watch\""));
        let arm = script
            .split("\n        sluice__send__subcmd__watch)\n            opts=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default();
        let opts: Vec<&str> = arm.split(' ').collect();
        assert!(
            opts.contains(&"--outbox") && opts.contains(&"--approval-policy"),
            "{arm}"
        );
        for refused in ["--approval", "--approval-sig", "--name", "--sign-model"] {
            assert!(!opts.contains(&refused), "{refused} offered: {arm}");
        }
    }
}
