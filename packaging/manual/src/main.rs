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

/// `command` as completions should offer it: without the options its `--help` hides (clap_complete
/// offers hidden ones too: `sluice-send watch --approval`, which the daemon refuses) and
/// without a `help` subcommand (the binaries have none).
fn visible(command: &Command) -> Command {
    // clap takes names as `&'static str` (without its `string` feature, which building this
    // beside the packaged binaries would switch on for them too): a few short strings, kept
    // for the life of this one-shot program.
    let leak = |text: &str| -> &'static str { Box::leak(text.to_string().into_boxed_str()) };
    let mut shown = Command::new(leak(command.get_name()))
        .disable_help_subcommand(true)
        .args(
            (command.get_arguments())
                .filter(|arg| !arg.is_hide_set())
                .cloned(),
        );
    if let Some(about) = command.get_about() {
        shown = shown.about(about.clone());
    }
    if let Some(version) = command.get_version() {
        shown = shown.version(leak(version));
    }
    for sub in command.get_subcommands() {
        shown = shown.subcommand(visible(sub));
    }
    shown
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
    for command in commands() {
        let name = command.get_name().to_string();
        // One page per command and per subcommand (sluice-send-watch.1, …).
        clap_mangen::generate_to(command.clone(), &man)?;
        files += 1 + command.get_subcommands().count();
        let mut offered = visible(&command);
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut offered, &name, &mut script);
            let mut script = String::from_utf8_lossy(&script).into_owned();
            if shell == Shell::Bash {
                script = fix_hyphenated_bash(&script, &name);
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

    /// The `shell` script for `sluice-send`, as `write` makes it.
    fn script_for_send(shell: Shell) -> String {
        let mut send = visible(&sluice_sender::manual::commands().remove(0));
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut send, "sluice-send", &mut script);
        fix_hyphenated_bash(&String::from_utf8_lossy(&script), "sluice-send")
    }

    #[test]
    fn a_subcommands_arm_is_reached_and_offers_only_what_its_help_shows() {
        let script = script_for_send(Shell::Bash);
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
        // keygen's arm is reached too (its name, not its own bin name).
        assert!(script.contains("\n        sluice__send__subcmd__keygen)\n"));
        assert!(!script.contains("help)"), "a help subcommand offered");
    }

    #[test]
    fn zsh_and_fish_offer_no_hidden_option_either() {
        let send = sluice_sender::manual::commands().remove(0);
        let watch = send.find_subcommand("watch").cloned().unwrap_or_default();
        for shell in [Shell::Zsh, Shell::Fish] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut visible(&watch), "watch", &mut script);
            let script = String::from_utf8_lossy(&script);
            assert!(script.contains("outbox"), "{shell}: {script}");
            assert!(
                !script.contains("sign-model"),
                "{shell}: --sign-model offered"
            );
        }
    }
}
