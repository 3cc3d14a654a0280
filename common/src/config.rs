//! Options for both daemons, in layers: built-in defaults < the `--config` TOML file < the
//! command line.
//!
//! Each daemon declares its options once, as a clap `Args` struct. The TOML file takes the
//! same names as the long options (`rate = "50MB"`, `trust = ["a.pub", "b.pub"]`,
//! `verbose = true`); a key that is not a long option is refused, so the file and the command
//! line can never disagree about what exists. A value is looked up with [`Layers`], which
//! remembers where it came from, so every bad value is one line naming the option, the file
//! if it came from one, and the accepted form — and exit status 2.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::exit::ExitStatus;
use crate::link::Links;
use crate::logging::LogFormat;
pub use crate::logging::LogOptions;

/// A usage or configuration error: one line, exit status 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The options both daemons take besides their own: the link, its key, the config file and
/// logging. Flattened into each daemon's clap `Args`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SharedArgs {
    /// The link: udp://HOST:PORT[?mtu=1500] or serial:///dev/ttyX[?baud=115200&frame=1024]
    /// (the sender sends to it, the receiver listens on it). Repeatable: several links used as
    /// one, frames striped over them; udp://HOST:9000-9003 is one flow per port.
    #[arg(long)]
    pub link: Vec<String>,
    /// Shared 32-byte frame-authentication key (link.key).
    #[arg(long)]
    pub link_key: Option<PathBuf>,
    /// TOML file with any of these options (same names); the command line wins.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Worker threads for the parallel work (the sender's encryption, the receiver's
    /// decoding and decryption), 1 to 64. Default: one per core, 2 to 4.
    #[arg(long, value_name = "N")]
    pub workers: Option<String>,
    /// Serve the counters in Prometheus text at http://ADDR/metrics (IP:PORT, e.g.
    /// 127.0.0.1:9630).
    /// Default: off.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Append a hash-chained audit record for every event to FILE (sluice-audit verify checks
    /// it). Default: audit.log in the state directory.
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Remove rotated audit logs (FILE.1, FILE.2.gz, …) last written longer ago than this
    /// (e.g. 400d), at start. Default: keep them.
    #[arg(long, value_name = "DURATION")]
    pub audit_retention: Option<String>,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Most `--workers`.
pub const MAX_WORKERS: usize = 64;

/// The checked options both daemons share ([`SharedArgs`] resolved by [`Layers::common`]).
#[derive(Debug, Clone)]
pub struct Common {
    /// The links: where the sender sends, where the receiver listens.
    pub link: Links,
    /// The link key file.
    pub link_key: PathBuf,
    /// Worker threads.
    pub workers: usize,
    /// Where `/metrics` is served, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// `--audit-log`, if given (see [`Common::audit_log_in`]).
    pub audit_log: Option<PathBuf>,
    /// `--audit-retention`: rotated audit logs older than this are removed at start.
    pub audit_retention: Option<std::time::Duration>,
    /// Logging.
    pub log: LogOptions,
}

impl Common {
    /// The options of `link` and `link_key`, everything else by default (tests, embedding).
    pub fn new(link: impl Into<Links>, link_key: PathBuf) -> Self {
        Common {
            link: link.into(),
            link_key,
            workers: default_workers(),
            metrics: None,
            audit_log: None,
            audit_retention: None,
            log: LogOptions::default(),
        }
    }

    /// The audit log: `--audit-log`, or `audit.log` in the daemon's state directory.
    pub fn audit_log_in(&self, state_dir: &Path) -> PathBuf {
        self.audit_log
            .clone()
            .unwrap_or_else(|| state_dir.join("audit.log"))
    }
}

/// `--workers` when not given: one per core, at least 2 (the I/O stages need a core of their
/// own less than the workers do) and at most 4 (beyond, the single-threaded stages limit).
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 4)
}

/// `keygen DIR`, on both daemons.
#[derive(Debug, Clone, clap::Args)]
pub struct KeygenArgs {
    /// Directory to write the keys into (created if missing).
    pub dir: PathBuf,
}

/// Logging options, the same on both daemons (and in both config files).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
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

/// Tables a config file may hold beside the long options: settings that are not options of
/// their own (`[s3]`: the object store's endpoint and credentials, `sluice_common::s3`).
pub const SECTIONS: [&str; 1] = ["s3"];

/// A parsed `--config` file.
#[derive(Debug)]
pub struct ConfigFile {
    path: PathBuf,
    table: toml::Table,
}

/// A TOML error as one line naming where it is: `line 3, column 7: invalid string` (toml's
/// own message spans several lines with a source excerpt).
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let gist = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {gist}")
        }
        None => gist,
    }
}

impl ConfigFile {
    /// Reads `path`; every key must be a long option of `command` (other than `config`).
    pub fn load(path: &Path, command: &clap::Command) -> Result<Self, UsageError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| UsageError(format!("--config {}: {e}", path.display())))?;
        Self::parse(path, &text, command)
    }

    /// Parses `text`, the contents of `path`; every key must be a long option of `command`.
    pub fn parse(path: &Path, text: &str, command: &clap::Command) -> Result<Self, UsageError> {
        let fail = |why: String| UsageError(format!("--config {}: {why}", path.display()));
        let table: toml::Table = toml::from_str(text).map_err(|e| fail(toml_error(text, &e)))?;
        let known: Vec<&str> = command
            .get_arguments()
            .filter_map(clap::Arg::get_long)
            .filter(|long| *long != "config")
            .collect();
        let is_section = |key: &str, value: &toml::Value| {
            SECTIONS.contains(&key) && matches!(value, toml::Value::Table(_))
        };
        if let Some(key) = table
            .iter()
            .find(|(k, v)| !known.contains(&k.as_str()) && !is_section(k, v))
            .map(|(k, _)| k)
        {
            return Err(fail(format!(
                "unknown option {key:?} (the file takes the long options: {}; and the \
                 tables: {})",
                known.join(", "),
                SECTIONS.map(|s| format!("[{s}]")).join(", ")
            )));
        }
        Ok(ConfigFile {
            path: path.to_path_buf(),
            table,
        })
    }

    /// The table `[name]` (one of [`SECTIONS`]), checked into `T`; `None` when absent.
    pub fn section<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, UsageError> {
        let Some(value) = self.table.get(name) else {
            return Ok(None);
        };
        value
            .clone()
            .try_into()
            .map(Some)
            .map_err(|e: toml::de::Error| {
                UsageError(format!(
                    "--config {}: [{name}]: {}",
                    self.path.display(),
                    e.message().trim().replace('\n', " ")
                ))
            })
    }
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone, Copy)]
enum Source<'a> {
    CommandLine,
    File(&'a Path),
}

/// One option's value as text, and where it came from.
#[derive(Debug, Clone)]
pub struct Value<'a> {
    option: &'static str,
    /// The value as given.
    pub text: String,
    source: Source<'a>,
}

impl Value<'_> {
    /// The error for this value: `--option "text" (in FILE): expected FORM`.
    pub fn error(&self, form: &str) -> UsageError {
        let (option, text) = (self.option, &self.text);
        match self.source {
            Source::CommandLine => UsageError(format!("--{option} {text:?}: expected {form}")),
            Source::File(path) => UsageError(format!(
                "--{option} {text:?} (in {}): expected {form}",
                path.display()
            )),
        }
    }

    /// Converts with `parse`; `None` from it is a usage error naming `form`.
    pub fn parse<T>(
        &self,
        form: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, UsageError> {
        parse(&self.text).ok_or_else(|| self.error(form))
    }
}

/// The command line over the config file.
#[derive(Debug, Clone, Copy)]
pub struct Layers<'a> {
    file: Option<&'a ConfigFile>,
}

impl<'a> Layers<'a> {
    /// Layers over `file` (if a `--config` was given).
    pub fn new(file: Option<&'a ConfigFile>) -> Self {
        Layers { file }
    }

    fn in_file(&self, option: &str) -> Option<(&'a toml::Value, &'a Path)> {
        let file = self.file?;
        Some((file.table.get(option)?, &file.path))
    }

    fn wrong_type(option: &str, path: &Path, expected: &str) -> UsageError {
        UsageError(format!(
            "--{option} (in {}): expected {expected}",
            path.display()
        ))
    }

    /// A single value: the command line's, else the file's (a string or a number there).
    pub fn value(
        &self,
        option: &'static str,
        cli: Option<String>,
    ) -> Result<Option<Value<'a>>, UsageError> {
        if let Some(text) = cli {
            return Ok(Some(Value {
                option,
                text,
                source: Source::CommandLine,
            }));
        }
        let Some((value, path)) = self.in_file(option) else {
            return Ok(None);
        };
        let text = match value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            _ => return Err(Self::wrong_type(option, path, "a string or a number")),
        };
        Ok(Some(Value {
            option,
            text,
            source: Source::File(path),
        }))
    }

    /// A single value that must be given; `form` says what it is.
    pub fn required(
        &self,
        option: &'static str,
        cli: Option<String>,
        form: &str,
    ) -> Result<Value<'a>, UsageError> {
        self.value(option, cli)?
            .ok_or_else(|| UsageError(format!("--{option} is required ({form})")))
    }

    /// A path option.
    pub fn path(
        &self,
        option: &'static str,
        cli: Option<PathBuf>,
    ) -> Result<Option<PathBuf>, UsageError> {
        match cli {
            Some(path) => Ok(Some(path)),
            None => Ok(self.value(option, None)?.map(|v| PathBuf::from(v.text))),
        }
    }

    /// A path option that must be given.
    pub fn required_path(
        &self,
        option: &'static str,
        cli: Option<PathBuf>,
        form: &str,
    ) -> Result<PathBuf, UsageError> {
        self.path(option, cli)?
            .ok_or_else(|| UsageError(format!("--{option} is required ({form})")))
    }

    /// A repeatable path option: the command line's if any, else the file's (one string or
    /// an array of strings).
    pub fn paths(
        &self,
        option: &'static str,
        cli: Vec<PathBuf>,
    ) -> Result<Vec<PathBuf>, UsageError> {
        if !cli.is_empty() {
            return Ok(cli);
        }
        let Some((value, path)) = self.in_file(option) else {
            return Ok(Vec::new());
        };
        let expected = "a path or an array of paths";
        match value {
            toml::Value::String(s) => Ok(vec![PathBuf::from(s)]),
            toml::Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(s) => Ok(PathBuf::from(s)),
                    _ => Err(Self::wrong_type(option, path, expected)),
                })
                .collect(),
            _ => Err(Self::wrong_type(option, path, expected)),
        }
    }

    /// A switch: on if given on the command line, else the file's `true`/`false`.
    pub fn flag(&self, option: &'static str, cli: bool) -> Result<bool, UsageError> {
        if cli {
            return Ok(true);
        }
        match self.in_file(option) {
            None => Ok(false),
            Some((toml::Value::Boolean(b), _)) => Ok(*b),
            Some((_, path)) => Err(Self::wrong_type(option, path, "true or false")),
        }
    }

    /// A repeatable path option that must be given at least once.
    pub fn required_paths(
        &self,
        option: &'static str,
        cli: Vec<PathBuf>,
        form: &str,
    ) -> Result<Vec<PathBuf>, UsageError> {
        let paths = self.paths(option, cli)?;
        if paths.is_empty() {
            return Err(UsageError(format!(
                "--{option} is required ({form}; repeatable)"
            )));
        }
        Ok(paths)
    }

    /// The options both daemons share; `link_form` says what `--link` looks like.
    pub fn common(&self, args: SharedArgs, link_form: &str) -> Result<Common, UsageError> {
        let given: Vec<PathBuf> = args.link.into_iter().map(PathBuf::from).collect();
        let texts: Vec<String> = self
            .required_paths("link", given, link_form)?
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let link = Links::parse_all(&texts).map_err(|e| UsageError(format!("{e}")))?;
        Ok(Common {
            link,
            link_key: self.required_path("link-key", args.link_key, "the shared link.key file")?,
            workers: self.workers(args.workers)?,
            metrics: self
                .value("metrics", args.metrics)?
                .map(|v| v.parse("IP:PORT, e.g. 127.0.0.1:9630", |t| t.parse().ok()))
                .transpose()?,
            audit_log: self.path("audit-log", args.audit_log)?,
            audit_retention: self
                .value("audit-retention", args.audit_retention)?
                .map(|v| {
                    v.parse("a duration, e.g. 400d or 13months", |t| {
                        humantime::parse_duration(t.trim()).ok()
                    })
                })
                .transpose()?,
            log: self.log(args.log)?,
        })
    }

    /// `--workers`, or the default.
    fn workers(&self, cli: Option<String>) -> Result<usize, UsageError> {
        match self.value("workers", cli)? {
            None => Ok(default_workers()),
            Some(v) => v.parse("a thread count from 1 to 64", |t| {
                t.parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_WORKERS).contains(n))
            }),
        }
    }

    /// The logging options. A switch on the command line overrides the other one in the file.
    fn log(&self, cli: LogArgs) -> Result<LogOptions, UsageError> {
        let format = match self.value("log-format", cli.log_format)? {
            None => LogFormat::Human,
            Some(v) => v.parse("human or json", |t| t.parse().ok())?,
        };
        let verbose = cli.verbose || (!cli.quiet && self.flag("verbose", false)?);
        let quiet = cli.quiet || (!cli.verbose && self.flag("quiet", false)?);
        if verbose && quiet {
            return Err(UsageError(
                "--verbose and --quiet exclude each other".into(),
            ));
        }
        Ok(LogOptions {
            format,
            verbose,
            quiet,
        })
    }
}

/// Loads the `--config` file of a command, if one was named.
pub fn load_file<A: clap::CommandFactory>(
    path: Option<&Path>,
) -> Result<Option<ConfigFile>, UsageError> {
    path.map(|p| ConfigFile::load(p, &A::command())).transpose()
}

/// How a command line ended up.
#[derive(Debug)]
pub enum Parsed<T> {
    /// Options to run with.
    Run(T),
    /// Nothing to run: `--help` or `--version` was printed, or a usage error was.
    Exit(ExitStatus),
}

/// Parses `args` (program name first) with clap, then checks them with `resolve`. Help and
/// version are printed as clap prints them; every error is printed as one line on stderr.
pub fn parse<A, T>(
    args: impl IntoIterator<Item = OsString>,
    resolve: impl FnOnce(A) -> Result<T, UsageError>,
) -> Parsed<T>
where
    A: clap::Parser,
{
    let parsed = match A::try_parse_from(args) {
        Ok(parsed) => parsed,
        Err(e) => return Parsed::Exit(report_clap_error(&e)),
    };
    match resolve(parsed) {
        Ok(options) => Parsed::Run(options),
        Err(e) => {
            eprintln!("error: {e}");
            Parsed::Exit(ExitStatus::Usage)
        }
    }
}

/// The `keygen DIR` command named `name` (its help and man page), described by `about`.
pub fn keygen_command(name: &'static str, about: &'static str) -> clap::Command {
    use clap::Args as _;
    // After `augment_args`, which would otherwise describe the command by `KeygenArgs`' doc.
    KeygenArgs::augment_args(clap::Command::new(name))
        .bin_name(name)
        .about(about)
}

/// Parses `keygen DIR` (program name first) for the command `name`, described by `about`.
pub fn parse_keygen(
    args: impl IntoIterator<Item = OsString>,
    name: &'static str,
    about: &'static str,
) -> Parsed<KeygenArgs> {
    use clap::FromArgMatches as _;
    match keygen_command(name, about)
        .try_get_matches_from(args)
        .and_then(|m| KeygenArgs::from_arg_matches(&m))
    {
        Ok(parsed) => Parsed::Run(parsed),
        Err(e) => Parsed::Exit(report_clap_error(&e)),
    }
}

/// Prints a clap error: `--help`/`--version` whole (success), anything else as its first line.
pub fn report_clap_error(e: &clap::Error) -> ExitStatus {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitStatus::Success
        }
        _ => {
            let text = e.render().to_string();
            let line = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("error: bad usage")
                .trim();
            // clap's "did you mean": `tip: a similar argument exists: '--rate'`.
            let tip = text
                .lines()
                .map(str::trim)
                .find(|l| l.starts_with("tip: a similar"))
                .and_then(|l| l.rsplit(": ").next())
                .map(|similar| format!("; did you mean {similar}?"))
                .unwrap_or_default();
            eprintln!("{line}{tip} (see --help)");
            ExitStatus::Usage
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct Args {
        #[arg(long)]
        rate: Option<String>,
        #[arg(long)]
        trust: Vec<PathBuf>,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        log: LogArgs,
    }

    fn file(text: &str) -> (tempfile::TempDir, ConfigFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        let file = ConfigFile::load(&path, &Args::command()).unwrap();
        (dir, file)
    }

    #[test]
    fn command_line_wins_over_the_file() {
        let (_dir, f) = file("rate = 50\ntrust = [\"a\", \"b\"]\nout = \"o\"\nverbose = true\n");
        let layers = Layers::new(Some(&f));
        let rate = layers.value("rate", Some("1MB".into())).unwrap().unwrap();
        assert_eq!(rate.text, "1MB");
        assert_eq!(layers.value("rate", None).unwrap().unwrap().text, "50");
        assert_eq!(layers.paths("trust", vec![]).unwrap().len(), 2);
        assert_eq!(layers.paths("trust", vec!["c".into()]).unwrap().len(), 1);
        assert_eq!(layers.path("out", None).unwrap(), Some(PathBuf::from("o")));
        let log = layers.log(LogArgs::default()).unwrap();
        assert!(log.verbose && !log.quiet);
        let quiet = LogArgs {
            quiet: true,
            ..LogArgs::default()
        };
        let log = layers.log(quiet).unwrap();
        assert!(!log.verbose && log.quiet, "the command line's -q wins");
    }

    #[test]
    fn errors_are_one_line_naming_option_and_file() {
        let (_dir, f) = file("rate = \"fast\"\nverbose = 3\n");
        let layers = Layers::new(Some(&f));
        let err = layers
            .value("rate", None)
            .unwrap()
            .unwrap()
            .parse::<u64>("a number", |t| t.parse().ok())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--rate \"fast\" (in ") && err.ends_with("expected a number"));
        assert!(layers.flag("verbose", false).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "speed = 3\n").unwrap();
        let err = ConfigFile::load(&path, &Args::command())
            .unwrap_err()
            .to_string();
        assert!(err.contains("speed") && !err.contains('\n'), "{err}");
        std::fs::write(&path, "rate = \n").unwrap();
        let err = ConfigFile::load(&path, &Args::command())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--config ") && !err.contains('\n'), "{err}");
        // Issue 31, item 5: where the syntax error is.
        std::fs::write(&path, "# rates\nrate = \"1MB\"\nrate 5\n").unwrap();
        let err = ConfigFile::load(&path, &Args::command())
            .unwrap_err()
            .to_string();
        assert!(err.contains(": line 3, column 6: "), "{err}");
    }
}
