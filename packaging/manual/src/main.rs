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
