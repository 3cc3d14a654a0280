//! `sluice-audit`'s command line (the binary is `src/bin/sluice-audit.rs`; the packages' man
//! page and completions are made from this too).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// `sluice-audit`.
#[derive(Debug, Parser)]
#[command(
    name = "sluice-audit",
    version,
    about = "Verify and read Sluice's hash-chained audit logs."
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

/// `sluice-audit verify` and `sluice-audit show`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Exit 0 if the chain is intact; otherwise name the first bad record and exit 1.
    Verify {
        /// Log files, oldest first (rotated files continue one chain).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Heads recorded elsewhere ("SEQ HASH" per line, e.g. a copy of <log>.head taken
        /// earlier): each must be in the log, which catches a truncated tail.
        #[arg(long)]
        heads: Option<PathBuf>,
        /// The receiver's audit log: every head of this sender's runs it recorded (the
        /// sender's heartbeats carry them across the link) must be in the log.
        #[arg(long, value_name = "RECEIVER_LOG")]
        against: Option<PathBuf>,
        /// With --against: the receiver also hears other senders, so heads of runs this log
        /// does not start are theirs (a note), not runs removed from this log (exit 1).
        #[arg(long, requires = "against")]
        other_senders: bool,
    },
    /// Print records readably, filtered.
    Show {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Only records about this path.
        #[arg(long)]
        path: Option<String>,
        /// Only records with this SHA-256.
        #[arg(long)]
        sha256: Option<String>,
        /// Only records at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only records before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
    },
}
