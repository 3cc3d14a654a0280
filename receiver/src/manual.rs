//! `sluice-recv`'s command line as one tree, for the man page and shell completions the
//! package ships (`packaging/manual` writes them). The binary picks `keygen` and `release` by
//! hand (`main_with_args`); here they are the subcommands clap would have.

use clap::{Command, CommandFactory};

use crate::cli::Args;
use crate::cli::KEYGEN_ABOUT;
use crate::release;

/// `sluice-recv` with `keygen` and `release`.
pub fn command() -> Command {
    let keygen = sluice_common::config::keygen_command("keygen", KEYGEN_ABOUT);
    Args::command()
        // A subcommand is only ever the first argument; there is no `help` subcommand.
        .override_usage(
            "sluice-recv [OPTIONS]\n       sluice-recv keygen DIR\n       \
             sluice-recv release [OPTIONS] --reason TEXT PATH",
        )
        .disable_help_subcommand(true)
        .subcommand(keygen.bin_name("sluice-recv keygen"))
        .subcommand(release::command().name("release"))
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks on the assembled tree, which no parse of the binary runs.
    #[test]
    fn the_command_tree_is_consistent() {
        let command = super::command();
        command.clone().debug_assert();
        let subcommands: Vec<&str> = command.get_subcommands().map(|c| c.get_name()).collect();
        assert_eq!(subcommands, ["keygen", "release"]);
    }
}
