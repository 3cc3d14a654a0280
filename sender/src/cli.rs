//! Command line and `--config` TOML file, merged into one checked [`Options`].
//!
//! Every option can come from the TOML file (same names as the long options, e.g.
//! `link = "udp://gw:9000"`, `recipient = ["keys/receiver.pub"]`); the command line wins. A bad
//! value is one line naming the option and the accepted form, and exit status 2.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;
use sluice_common::link::LinkSpec;
use sluice_common::logging::LogFormat;
use sluice_common::units;

/// `sluice-send`: the low-side daemon.
#[derive(Debug, Parser)]
#[command(
    name = "sluice-send",
    version,
    about = "Send files and directory trees across a one-way link (data diode).",
    after_help = "Key setup: `sluice-send keygen DIR` writes DIR/sender.key, DIR/sender.pub and DIR/link.key."
)]
pub struct Args {
    /// Link to send on: udp://HOST:PORT[?mtu=1500] or serial:///dev/ttyX[?baud=115200&frame=1024].
    #[arg(long)]
    pub link: Option<String>,
    /// Receiver's age recipient file (receiver.pub); repeat to encrypt to several receivers.
    #[arg(long)]
    pub recipient: Vec<PathBuf>,
    /// Minisign secret key that signs every manifest (sender.key).
    #[arg(long)]
    pub sign_key: Option<PathBuf>,
    /// Shared 32-byte frame-authentication key (link.key).
    #[arg(long)]
    pub link_key: Option<PathBuf>,
    /// Link rate in bytes per second (500KB, 100MB, 1.5GB); 0 sends unpaced.
    /// Default: 100MB on UDP, baud/10 on serial.
    #[arg(long)]
    pub rate: Option<String>,
    /// Passes over the data; each later pass carries fresh repair symbols. Default 1.
    #[arg(long)]
    pub passes: Option<u16>,
    /// Repair symbols per pass, as a share of source symbols (e.g. 10%). Default 10%.
    #[arg(long)]
    pub repair: Option<String>,
    /// Plaintext bytes per encrypted segment, 64KiB..8MiB. Default 1MiB.
    #[arg(long)]
    pub segment_size: Option<String>,
    /// Directory for the ciphertext later passes resend (default: a temporary directory).
    #[arg(long)]
    pub spool: Option<PathBuf>,
    /// Object name for data read from stdin (`-`).
    #[arg(long)]
    pub name: Option<String>,
    /// Blocks whose symbols are interleaved on the link (spreads loss bursts). Default 8.
    #[arg(long)]
    pub interleave: Option<usize>,
    /// TOML file with any of these options; the command line wins.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Log format: human or json.
    #[arg(long)]
    pub log_format: Option<String>,
    /// More log output.
    #[arg(short, long)]
    pub verbose: bool,
    /// Only warnings and errors.
    #[arg(short, long)]
    pub quiet: bool,
    /// Files and directories to send, or `-` for stdin.
    pub paths: Vec<PathBuf>,
}

/// `sluice-send keygen DIR`.
#[derive(Debug, Parser)]
#[command(
    name = "sluice-send keygen",
    about = "Create sender.key, sender.pub and link.key in DIR"
)]
pub struct KeygenArgs {
    /// Directory to write the keys into (created if missing).
    pub dir: PathBuf,
}

/// The `--config` file: the same options as the command line.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ConfigFile {
    link: Option<String>,
    recipient: Option<Vec<PathBuf>>,
    sign_key: Option<PathBuf>,
    link_key: Option<PathBuf>,
    rate: Option<String>,
    passes: Option<u16>,
    repair: Option<String>,
    segment_size: Option<String>,
    spool: Option<PathBuf>,
    name: Option<String>,
    interleave: Option<usize>,
    log_format: Option<String>,
}

/// A usage or configuration error: one line, exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Checked options for one run.
#[derive(Debug, Clone)]
pub struct Options {
    pub link: LinkSpec,
    pub recipients: Vec<PathBuf>,
    pub sign_key: PathBuf,
    pub link_key: PathBuf,
    /// Link bytes per second; 0 = unpaced.
    pub rate: u64,
    pub passes: u16,
    pub repair_permille: u32,
    pub segment_size: u32,
    pub spool: Option<PathBuf>,
    pub name: Option<String>,
    pub interleave: usize,
    pub log_format: LogFormat,
    pub verbose: bool,
    pub quiet: bool,
    pub paths: Vec<PathBuf>,
}

pub const MIN_SEGMENT: u64 = 64 << 10;
pub const MAX_SEGMENT: u64 = 8 << 20;

fn usage(option: &str, value: &str, form: &str) -> UsageError {
    UsageError(format!("--{option} {value:?}: expected {form}"))
}

fn required<T>(value: Option<T>, option: &str, form: &str) -> Result<T, UsageError> {
    value.ok_or_else(|| UsageError(format!("--{option} is required ({form})")))
}

/// Parses the command line (without the program name) and merges the config file.
pub fn parse<I, T>(args: I) -> Result<Options, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::try_parse_from(args)?;
    resolve(args)
        .map_err(|e| clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n")))
}

fn load_config(path: &Path) -> Result<ConfigFile, UsageError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("--config {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        let first = e.to_string();
        let first = first
            .lines()
            .last()
            .unwrap_or("invalid TOML")
            .trim()
            .to_string();
        UsageError(format!("--config {}: {first}", path.display()))
    })
}

/// Merges the config file under the command line and checks every value.
pub fn resolve(args: Args) -> Result<Options, UsageError> {
    let file = match &args.config {
        Some(path) => load_config(path)?,
        None => ConfigFile::default(),
    };
    let link_text = required(
        args.link.or(file.link),
        "link",
        "udp://HOST:PORT or serial:///dev/ttyX?baud=N",
    )?;
    let link: LinkSpec = link_text.parse().map_err(|e| UsageError(format!("{e}")))?;
    let recipients = if args.recipient.is_empty() {
        file.recipient.unwrap_or_default()
    } else {
        args.recipient
    };
    if recipients.is_empty() {
        return Err(UsageError(
            "--recipient is required (the receiver's receiver.pub)".into(),
        ));
    }
    let sign_key = required(
        args.sign_key.or(file.sign_key),
        "sign-key",
        "a sender.key file",
    )?;
    let link_key = required(
        args.link_key.or(file.link_key),
        "link-key",
        "a link.key file",
    )?;
    let rate = match args.rate.or(file.rate) {
        None => link.default_rate(),
        Some(text) => units::parse_bytes(&text).map_err(|_| {
            usage(
                "rate",
                &text,
                "bytes per second with a unit, e.g. 500KB, 100MB, 1.5GB, or 0 for unpaced",
            )
        })?,
    };
    let passes = args.passes.or(file.passes).unwrap_or(1);
    if !(1..=100).contains(&passes) {
        return Err(usage(
            "passes",
            &passes.to_string(),
            "a number of passes from 1 to 100",
        ));
    }
    let repair_permille = match args.repair.or(file.repair) {
        None => 100,
        Some(text) => units::parse_permille(&text)
            .map_err(|_| usage("repair", &text, "a percentage from 0% to 1000%, e.g. 10%"))?,
    };
    let segment_size = match args.segment_size.or(file.segment_size) {
        None => 1 << 20,
        Some(text) => {
            let bytes = units::parse_bytes(&text)
                .ok()
                .filter(|n| (MIN_SEGMENT..=MAX_SEGMENT).contains(n));
            bytes.ok_or_else(|| {
                usage(
                    "segment-size",
                    &text,
                    "a size from 64KiB to 8MiB, e.g. 1MiB",
                )
            })? as u32
        }
    };
    let interleave = args.interleave.or(file.interleave).unwrap_or(8);
    if !(1..=256).contains(&interleave) {
        return Err(usage(
            "interleave",
            &interleave.to_string(),
            "a block count from 1 to 256",
        ));
    }
    let log_format = match args.log_format.or(file.log_format) {
        None => LogFormat::Human,
        Some(text) => text
            .parse()
            .map_err(|_| usage("log-format", &text, "human or json"))?,
    };
    if args.paths.is_empty() {
        return Err(UsageError(
            "nothing to send: give files, directories, or - for stdin".into(),
        ));
    }
    let stdin_count = args.paths.iter().filter(|p| p.as_os_str() == "-").count();
    let name = args.name.or(file.name);
    if stdin_count > 1 {
        return Err(UsageError("- (stdin) may appear only once".into()));
    }
    if stdin_count == 1 && name.is_none() {
        return Err(UsageError(
            "--name is required when reading stdin (-): the name the stream gets under --out"
                .into(),
        ));
    }
    if let Some(name) = &name {
        sluice_common::paths::validate_object_path(name).map_err(|e| {
            usage(
                "name",
                name,
                &format!("a relative path the receiver accepts ({e})"),
            )
        })?;
    }
    Ok(Options {
        link,
        recipients,
        sign_key,
        link_key,
        rate,
        passes,
        repair_permille,
        segment_size,
        spool: args.spool.or(file.spool),
        name,
        interleave,
        log_format,
        verbose: args.verbose,
        quiet: args.quiet,
        paths: args.paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<&'static str> {
        vec![
            "sluice-send",
            "--link",
            "udp://127.0.0.1:9000",
            "--recipient",
            "r.pub",
            "--sign-key",
            "s.key",
            "--link-key",
            "l.key",
        ]
    }

    fn resolve_args(extra: &[&str]) -> Result<Options, UsageError> {
        let mut argv = base();
        argv.extend_from_slice(extra);
        resolve(Args::try_parse_from(argv).unwrap())
    }

    #[test]
    fn defaults() {
        let o = resolve_args(&["file"]).unwrap();
        assert_eq!(o.rate, 100_000_000);
        assert_eq!(o.passes, 1);
        assert_eq!(o.repair_permille, 100);
        assert_eq!(o.segment_size, 1 << 20);
        assert_eq!(o.interleave, 8);
    }

    #[test]
    fn serial_rate_defaults_to_the_baud() {
        let mut argv = base();
        argv[2] = "serial:///dev/ttyS0?baud=921600";
        argv.push("f");
        let o = resolve(Args::try_parse_from(argv).unwrap()).unwrap();
        assert_eq!(o.rate, 92_160);
    }

    #[test]
    fn bad_values_name_their_option() {
        for (extra, option) in [
            (&["--rate", "fast", "f"][..], "--rate"),
            (&["--repair", "10", "f"][..], "--repair"),
            (&["--passes", "0", "f"][..], "--passes"),
            (&["--segment-size", "1KB", "f"][..], "--segment-size"),
            (&["--log-format", "xml", "f"][..], "--log-format"),
            (&["-"][..], "--name"),
            (&["--name", "../x", "-"][..], "--name"),
        ] {
            let err = resolve_args(extra).unwrap_err().to_string();
            assert!(err.contains(option), "{extra:?}: {err}");
        }
        assert!(resolve_args(&[])
            .unwrap_err()
            .to_string()
            .contains("nothing to send"));
    }

    #[test]
    fn config_file_fills_in_and_command_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("send.toml");
        std::fs::write(
            &cfg,
            "link = \"udp://10.0.0.2:9000?mtu=9000\"\nrecipient = [\"a.pub\", \"b.pub\"]\n\
             sign-key = \"s.key\"\nlink-key = \"l.key\"\nrate = \"50MB\"\npasses = 2\n",
        )
        .unwrap();
        let argv = [
            "sluice-send",
            "--config",
            cfg.to_str().unwrap(),
            "--rate",
            "1MB",
            "f",
        ];
        let o = resolve(Args::try_parse_from(argv).unwrap()).unwrap();
        assert_eq!(o.rate, 1_000_000);
        assert_eq!(o.passes, 2);
        assert_eq!(o.recipients.len(), 2);
        assert_eq!(o.link.max_frame_len(), 8972);

        std::fs::write(&cfg, "rate = \"50MB\"\nspeed = 3\n").unwrap();
        let argv = ["sluice-send", "--config", cfg.to_str().unwrap(), "f"];
        let err = resolve(Args::try_parse_from(argv).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--config") && err.contains("speed"), "{err}");
    }
}
