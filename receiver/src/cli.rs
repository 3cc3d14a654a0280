//! Command line and `--config` TOML file, merged into one checked [`Options`].
//!
//! Every option can come from the TOML file under the name of its long option
//! (`link = "udp://0.0.0.0:9000"`, `trust = ["keys/sender.pub"]`, `max-memory = "64MiB"`,
//! `exit-after-idle = 30`); the command line wins. A bad value is one line naming the option
//! and the accepted form, and exit status 2.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use sluice_common::link::LinkSpec;
use sluice_common::logging::LogFormat;
use sluice_common::units;

/// Default assembler buffer bound (`--max-memory`).
pub const DEFAULT_MAX_MEMORY: u64 = 32 << 20;
/// Smallest `--max-memory`: a few blocks of the largest segment size must fit.
pub const MIN_MAX_MEMORY: u64 = 4 << 20;
/// Largest `--max-memory`.
pub const MAX_MAX_MEMORY: u64 = 64 << 30;
/// Longest `--exit-after-idle`: a week, far beyond any sensible idle window.
const MAX_IDLE_SECS: f64 = 7.0 * 24.0 * 3600.0;

const LINK_FORM: &str = "udp://HOST:PORT[?mtu=1500] or serial:///dev/ttyX[?baud=115200]";

/// `sluice-recv`: the high-side daemon.
#[derive(Debug, Parser)]
#[command(
    name = "sluice-recv",
    version,
    about = "Receive files and directory trees from a one-way link (data diode).",
    after_help = "Key setup: `sluice-recv keygen DIR` writes DIR/receiver.key and DIR/receiver.pub."
)]
pub struct Args {
    /// Link to listen on: udp://HOST:PORT[?mtu=1500] or serial:///dev/ttyX[?baud=115200].
    #[arg(long)]
    pub link: Option<String>,
    /// age identity file that decrypts manifests and segments (receiver.key).
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// minisign public key whose manifest signatures are accepted (sender.pub); repeatable.
    #[arg(long)]
    pub trust: Vec<PathBuf>,
    /// Shared 32-byte frame-authentication key (link.key).
    #[arg(long)]
    pub link_key: Option<PathBuf>,
    /// Directory objects are published into (created if missing).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// State directory for partial transfers; same file system as --out.
    /// Default: OUT/.sluice-state.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Exit after this many seconds without frames (status 0 if everything seen was
    /// delivered, 3 otherwise). Default: run until SIGINT/SIGTERM.
    #[arg(long, value_name = "SECS", allow_hyphen_values = true)]
    pub exit_after_idle: Option<String>,
    /// Bound on the bytes of blocks being assembled (e.g. 32MiB, 256MB). Default 32MiB.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub max_memory: Option<String>,
    /// TOML file with any of these options; the command line wins.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Log format: human or json.
    #[arg(long)]
    pub log_format: Option<String>,
    /// More log output (debug).
    #[arg(short, long)]
    pub verbose: bool,
    /// Only warnings and errors.
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
}

/// `sluice-recv keygen DIR`.
#[derive(Debug, Parser)]
#[command(
    name = "sluice-recv keygen",
    about = "Create DIR/receiver.key (age identity) and DIR/receiver.pub (its recipient)"
)]
pub struct KeygenArgs {
    /// Directory to write the keys into (created if missing).
    pub dir: PathBuf,
}

/// A number or a string in the TOML file (`max-memory = "32MiB"` or `= 33554432`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Int(i64),
    Float(f64),
    Text(String),
}

impl Scalar {
    fn into_text(self) -> String {
        match self {
            Scalar::Int(n) => n.to_string(),
            Scalar::Float(x) => x.to_string(),
            Scalar::Text(s) => s,
        }
    }
}

/// `trust = "a.pub"` or `trust = ["a.pub", "b.pub"]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

/// The `--config` file: the same options as the command line.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ConfigFile {
    link: Option<String>,
    identity: Option<PathBuf>,
    trust: Option<OneOrMany>,
    link_key: Option<PathBuf>,
    out: Option<PathBuf>,
    state: Option<PathBuf>,
    exit_after_idle: Option<Scalar>,
    max_memory: Option<Scalar>,
    log_format: Option<String>,
    verbose: Option<bool>,
    quiet: Option<bool>,
}

/// A usage or configuration error: one line, exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Checked options for one run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where frames come from.
    pub link: LinkSpec,
    /// age identity file.
    pub identity: PathBuf,
    /// Trusted minisign public key files.
    pub trust: Vec<PathBuf>,
    /// Link key file.
    pub link_key: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// State directory (`None`: `<out>/.sluice-state`).
    pub state: Option<PathBuf>,
    /// Exit after this long without frames.
    pub exit_after_idle: Option<Duration>,
    /// Assembler buffer bound in bytes.
    pub max_memory: u64,
    /// Log output format.
    pub log_format: LogFormat,
    /// Debug logging.
    pub verbose: bool,
    /// Warnings only.
    pub quiet: bool,
}

impl Options {
    /// Options for `link` and the key files, with every default (for tests and embedding).
    pub fn new(
        link: LinkSpec,
        identity: PathBuf,
        trust: Vec<PathBuf>,
        link_key: PathBuf,
        out: PathBuf,
    ) -> Self {
        Options {
            link,
            identity,
            trust,
            link_key,
            out,
            state: None,
            exit_after_idle: None,
            max_memory: DEFAULT_MAX_MEMORY,
            log_format: LogFormat::Human,
            verbose: false,
            quiet: false,
        }
    }

    /// The state directory in effect.
    pub fn state_dir(&self) -> PathBuf {
        self.state
            .clone()
            .unwrap_or_else(|| self.out.join(sluice_common::paths::RESERVED_STATE_DIR))
    }
}

/// Where a value came from, for error messages.
#[derive(Clone, Copy)]
enum Source<'a> {
    CommandLine,
    File(&'a Path),
}

fn usage(option: &str, value: &str, form: &str, source: Source<'_>) -> UsageError {
    match source {
        Source::CommandLine => UsageError(format!("--{option} {value:?}: expected {form}")),
        Source::File(path) => UsageError(format!(
            "--{option} {value:?} (in {}): expected {form}",
            path.display()
        )),
    }
}

fn required<T>(value: Option<T>, option: &str, form: &str) -> Result<T, UsageError> {
    value.ok_or_else(|| UsageError(format!("--{option} is required ({form})")))
}

/// Why the command line was not turned into [`Options`].
#[derive(Debug)]
pub enum ParseError {
    /// clap's own error (also `--help` and `--version`, which are not failures).
    Clap(clap::Error),
    /// A value that parsed but is not acceptable.
    Usage(UsageError),
}

/// Parses the command line (program name first) into checked options.
pub fn parse<I, T>(args: I) -> Result<Options, ParseError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::try_parse_from(args).map_err(ParseError::Clap)?;
    resolve(args).map_err(ParseError::Usage)
}

fn load_config(path: &Path) -> Result<ConfigFile, UsageError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("--config {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        // toml's messages span several lines (with a source excerpt); keep the gist.
        let message = e.message().trim().replace('\n', " ");
        UsageError(format!("--config {}: {message}", path.display()))
    })
}

/// Picks the command-line value if given, else the file's, remembering which.
fn pick<T>(cli: Option<T>, file: Option<T>, path: Option<&Path>) -> Option<(T, Source<'_>)> {
    match (cli, file, path) {
        (Some(v), _, _) => Some((v, Source::CommandLine)),
        (None, Some(v), Some(p)) => Some((v, Source::File(p))),
        (None, Some(v), None) => Some((v, Source::CommandLine)),
        (None, None, _) => None,
    }
}

/// Merges the config file under the command line and checks every value.
pub fn resolve(args: Args) -> Result<Options, UsageError> {
    let file = match &args.config {
        Some(path) => load_config(path)?,
        None => ConfigFile::default(),
    };
    let cfg = args.config.as_deref();

    let (link_text, _) = required(pick(args.link, file.link, cfg), "link", LINK_FORM)?;
    let link: LinkSpec = link_text.parse().map_err(|e| UsageError(format!("{e}")))?;
    let identity = required(
        args.identity.or(file.identity),
        "identity",
        "the receiver's age identity file, receiver.key",
    )?;
    let trust = if args.trust.is_empty() {
        match file.trust {
            Some(OneOrMany::One(p)) => vec![p],
            Some(OneOrMany::Many(v)) => v,
            None => Vec::new(),
        }
    } else {
        args.trust
    };
    if trust.is_empty() {
        return Err(UsageError(
            "--trust is required (the sender's minisign public key, sender.pub; repeatable)".into(),
        ));
    }
    let link_key = required(
        args.link_key.or(file.link_key),
        "link-key",
        "the shared link.key file",
    )?;
    let out = required(
        args.out.or(file.out),
        "out",
        "the directory objects are published into",
    )?;
    let exit_after_idle = match pick(
        args.exit_after_idle,
        file.exit_after_idle.map(Scalar::into_text),
        cfg,
    ) {
        None => None,
        Some((text, source)) => Some(parse_idle(&text).ok_or_else(|| {
            usage(
                "exit-after-idle",
                &text,
                "a number of seconds greater than 0 (e.g. 30 or 2.5)",
                source,
            )
        })?),
    };
    let max_memory = match pick(args.max_memory, file.max_memory.map(Scalar::into_text), cfg) {
        None => DEFAULT_MAX_MEMORY,
        Some((text, source)) => units::parse_bytes(&text)
            .ok()
            .filter(|n| (MIN_MAX_MEMORY..=MAX_MAX_MEMORY).contains(n))
            .ok_or_else(|| {
                usage(
                    "max-memory",
                    &text,
                    "a size from 4MiB to 64GiB (e.g. 32MiB, 256MB)",
                    source,
                )
            })?,
    };
    let log_format = match pick(args.log_format, file.log_format, cfg) {
        None => LogFormat::Human,
        Some((text, source)) => text
            .parse()
            .map_err(|_| usage("log-format", &text, "human or json", source))?,
    };
    let verbose = args.verbose || (!args.quiet && file.verbose.unwrap_or(false));
    let quiet = args.quiet || (!args.verbose && file.quiet.unwrap_or(false));
    if verbose && quiet {
        return Err(UsageError(
            "--verbose and --quiet exclude each other".into(),
        ));
    }
    Ok(Options {
        link,
        identity,
        trust,
        link_key,
        out,
        state: args.state.or(file.state),
        exit_after_idle,
        max_memory,
        log_format,
        verbose,
        quiet,
    })
}

fn parse_idle(text: &str) -> Option<Duration> {
    let secs: f64 = text.trim().parse().ok()?;
    (secs.is_finite() && secs > 0.0 && secs <= MAX_IDLE_SECS).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<&'static str> {
        vec![
            "sluice-recv",
            "--link",
            "udp://127.0.0.1:9000",
            "--identity",
            "r.key",
            "--trust",
            "s.pub",
            "--link-key",
            "l.key",
            "--out",
            "inbox",
        ]
    }

    fn resolve_args(extra: &[&str]) -> Result<Options, UsageError> {
        let mut argv = base();
        argv.extend_from_slice(extra);
        resolve(Args::try_parse_from(argv).unwrap())
    }

    #[test]
    fn defaults() {
        let o = resolve_args(&[]).unwrap();
        assert_eq!(o.max_memory, DEFAULT_MAX_MEMORY);
        assert_eq!(o.exit_after_idle, None);
        assert_eq!(o.state_dir(), Path::new("inbox/.sluice-state"));
        assert_eq!(o.log_format, LogFormat::Human);
        assert_eq!(o.link.max_frame_len(), 1472);
    }

    #[test]
    fn values_parse() {
        let o = resolve_args(&[
            "--exit-after-idle",
            "2.5",
            "--max-memory",
            "64MiB",
            "--state",
            "st",
            "--trust",
            "t2.pub",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(o.exit_after_idle, Some(Duration::from_millis(2500)));
        assert_eq!(o.max_memory, 64 << 20);
        assert_eq!(o.state_dir(), Path::new("st"));
        assert_eq!(o.trust.len(), 2);
        assert_eq!(o.log_format, LogFormat::Json);
    }

    #[test]
    fn bad_values_name_their_option_and_form() {
        for (extra, needle) in [
            (
                &["--exit-after-idle", "soon"][..],
                "--exit-after-idle \"soon\": expected a number of seconds",
            ),
            (&["--exit-after-idle", "0"][..], "--exit-after-idle"),
            (
                &["--max-memory", "lots"][..],
                "--max-memory \"lots\": expected a size",
            ),
            (&["--max-memory", "1KB"][..], "4MiB to 64GiB"),
            (
                &["--log-format", "xml"][..],
                "--log-format \"xml\": expected human or json",
            ),
        ] {
            let err = resolve_args(extra).unwrap_err().to_string();
            assert!(err.contains(needle), "{extra:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
        let mut argv = base();
        argv[2] = "tcp://x:1";
        let err = resolve(Args::try_parse_from(argv).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--link") && err.contains("udp://HOST:PORT"),
            "{err}"
        );
    }

    #[test]
    fn missing_options_are_named() {
        let err = resolve(Args::try_parse_from(["sluice-recv"]).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--link is required"), "{err}");
        let argv = [
            "sluice-recv",
            "--link",
            "udp://0.0.0.0:1",
            "--identity",
            "k",
        ];
        let err = resolve(Args::try_parse_from(argv).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--trust is required"), "{err}");
    }

    #[test]
    fn config_file_fills_in_and_command_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("recv.toml");
        std::fs::write(
            &cfg,
            "link = \"udp://0.0.0.0:9000?mtu=9000\"\nidentity = \"r.key\"\n\
             trust = [\"a.pub\", \"b.pub\"]\nlink-key = \"l.key\"\nout = \"inbox\"\n\
             exit-after-idle = 30\nmax-memory = \"128MiB\"\n",
        )
        .unwrap();
        let argv = [
            "sluice-recv",
            "--config",
            cfg.to_str().unwrap(),
            "--max-memory",
            "8MiB",
        ];
        let o = resolve(Args::try_parse_from(argv).unwrap()).unwrap();
        assert_eq!(o.max_memory, 8 << 20);
        assert_eq!(o.exit_after_idle, Some(Duration::from_secs(30)));
        assert_eq!(o.trust.len(), 2);
        assert_eq!(o.link.max_frame_len(), 8972);

        std::fs::write(&cfg, "link = \"udp://0.0.0.0:9\"\nmax-memory = 12\n").unwrap();
        let argv = [
            "sluice-recv",
            "--config",
            cfg.to_str().unwrap(),
            "--identity",
            "k",
            "--trust",
            "t",
            "--link-key",
            "l",
            "--out",
            "o",
        ];
        let err = resolve(Args::try_parse_from(argv).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--max-memory \"12\" (in ") && err.contains("4MiB"),
            "{err}"
        );

        std::fs::write(&cfg, "speed = 3\n").unwrap();
        let argv = ["sluice-recv", "--config", cfg.to_str().unwrap()];
        let err = resolve(Args::try_parse_from(argv).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--config") && err.contains("speed"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
