//! The low side's command lines as one tree per binary, for the man pages and shell
//! completions the packages ship (`packaging/manual` writes them). `sluice-send` picks its
//! subcommands by hand (`main_with_args`: a first argument `keygen`, `watch` or `status`);
//! here they are the subcommands clap would have.

use clap::{Command, CommandFactory};

use crate::cli::KEYGEN_ABOUT;
use crate::cli::{Args, WatchArgs};
use crate::watch::status::StatusArgs;
use crate::{approve, inspect_cli};

/// `sluice-send` (with `keygen`, `watch`, `status`), `sluice-approve` and `sluice-inspect`.
pub fn commands() -> Vec<Command> {
    let keygen = sluice_common::config::keygen_command("keygen", KEYGEN_ABOUT);
    let send = Args::command()
        // A subcommand is only ever the first argument; there is no `help` subcommand.
        .override_usage(
            "sluice-send [OPTIONS] PATH... | -\n       sluice-send keygen DIR\n       \
             sluice-send watch [OPTIONS]\n       sluice-send status [OPTIONS]",
        )
        .disable_help_subcommand(true)
        .subcommand(keygen.bin_name("sluice-send keygen"))
        .subcommand(WatchArgs::command().name("watch"))
        .subcommand(StatusArgs::command().name("status"));
    vec![send, approve::command(), inspect_cli::Args::command()]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap's own consistency checks (duplicate flags, bad defaults, conflicting names) on the
    /// assembled trees, which no parse of the binaries runs.
    #[test]
    fn the_command_trees_are_consistent() {
        let names: Vec<String> = commands()
            .into_iter()
            .map(|c| {
                c.clone().debug_assert();
                c.get_name().to_string()
            })
            .collect();
        assert_eq!(names, ["sluice-send", "sluice-approve", "sluice-inspect"]);
    }
}
