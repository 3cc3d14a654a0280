//! Log output for both daemons: readable lines for people by default, one JSON object per
//! line for log shippers (`--log-format json`). `RUST_LOG` overrides the level.

use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// `--log-format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("--log-format {other:?}: expected human or json")),
        }
    }
}

/// Checked logging options (`--log-format`, `-v`, `-q`), the same on both daemons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogOptions {
    /// Human lines or JSON objects.
    pub format: LogFormat,
    /// Debug level.
    pub verbose: bool,
    /// Warnings only.
    pub quiet: bool,
}

/// Installs the global subscriber, writing to stderr. `verbose` raises the default level to
/// debug; `quiet` lowers it to warnings.
pub fn init(options: LogOptions) {
    let LogOptions {
        format,
        verbose,
        quiet,
    } = options;
    // The object-store client logs each retry of a request at info: ten lines a second while
    // a store is down. The S3 sink says once per try what failed; its retries show with -v.
    let default = if verbose {
        "debug"
    } else if quiet {
        "warn"
    } else {
        "info,object_store=warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour only for a person at a terminal: log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    // A second init (tests driving the library twice) keeps the first subscriber.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Reports the error that ends a program: `error: …` on stderr for people, or one JSON log
/// record with the other logs.
pub fn error(format: LogFormat, error: &dyn std::fmt::Display) {
    match format {
        LogFormat::Human => eprintln!("error: {error}"),
        LogFormat::Json => tracing::error!("{error}"),
    }
}
