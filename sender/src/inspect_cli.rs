//! `sluice-inspect`'s command line (the binary is `src/bin/sluice-inspect.rs`; its man page
//! and completions are made from this, `crate::manual`).

use std::path::PathBuf;

use clap::Parser;

/// Checks files as the receiver's content gate would.
#[derive(Debug, Parser)]
#[command(name = "sluice-inspect", version)]
pub struct Args {
    /// The receiver's `policy.toml` (default: the built-in rules, no name rules).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// One JSON object per file (the report the receiver keeps beside a quarantined file)
    /// instead of text.
    #[arg(long)]
    pub json: bool,
    /// A public key (PEM, P-256 or P-384) models may be signed with; each directory argument
    /// must then hold a `model.sig` that verifies with one and lists exactly its files.
    #[arg(long = "model-key", value_name = "PEM")]
    pub model_keys: Vec<PathBuf>,
    /// A CA (PEM certificates) whose code-signing certificates may sign models (the
    /// reference tool's certificate method).
    #[arg(long = "model-ca", value_name = "PEM")]
    pub model_cas: Vec<PathBuf>,
    /// Files, or directories walked (their files are named by their path below the directory,
    /// as the receiver names a file by its path in the transfer).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}
