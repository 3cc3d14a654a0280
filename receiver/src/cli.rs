//! Command line and `--config` TOML file, merged into one checked [`Options`] by the shared
//! layered config (`sluice_common::config`).
//!
//! Every option can come from the TOML file under the name of its long option
//! (`link = "udp://0.0.0.0:9000"`, `trust = ["keys/sender.pub"]`, `max-memory = "64MiB"`,
//! `exit-after-idle = 30`, `verbose = true`); the command line wins. A bad value is one line
//! naming the option and the accepted form, and exit status 2.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use sluice_common::config::{Common, ConfigFile, Layers, SharedArgs, UsageError};
use sluice_common::link::LinkSpec;
use sluice_common::units;

/// Default assembler buffer bound (`--max-memory`).
pub const DEFAULT_MAX_MEMORY: u64 = 32 << 20;
/// Smallest `--max-memory`: a few blocks of the largest segment size must fit.
pub const MIN_MAX_MEMORY: u64 = 4 << 20;
/// Largest `--max-memory`.
pub const MAX_MAX_MEMORY: u64 = 64 << 30;
/// Default `--max-objects`.
pub const DEFAULT_MAX_OBJECTS: usize = 10_000;
/// Default `--mode-mask`: never setuid, setgid, sticky, group- or other-writable.
pub const DEFAULT_MODE_MASK: u32 = 0o755;
/// Longest `--exit-after-idle`: a week, far beyond any sensible idle window.
const MAX_IDLE_SECS: f64 = 7.0 * 24.0 * 3600.0;

const LINK_FORM: &str = "udp://HOST:PORT[?mtu=1500] or serial:///dev/ttyX[?baud=115200]";

/// `sluice-recv`: the high-side daemon.
#[derive(Debug, Parser)]
#[command(
    name = "sluice-recv",
    version,
    about = "Receive files and directory trees from a one-way link (data diode).",
    after_help = "Other commands:\n  sluice-recv keygen DIR    write DIR/receiver.key and DIR/receiver.pub\n  \
                  sluice-recv release PATH --reason TEXT …  let a refused file out of the \
                  quarantine, audited (sluice-recv release --help)"
)]
pub struct Args {
    #[command(flatten)]
    pub shared: SharedArgs,
    /// age identity file that decrypts manifests and segments (receiver.key).
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// minisign public key whose manifest signatures are accepted (sender.pub); repeatable.
    #[arg(long)]
    pub trust: Vec<PathBuf>,
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
    /// Bound on the bytes of blocks being assembled (e.g. 32MiB, 256MB), and, apart, on packs
    /// of small files waiting in memory to be published. Default 32MiB.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub max_memory: Option<String>,
    /// Bound on what the state directory holds for incomplete objects (e.g. 20GiB); beyond it
    /// the oldest is evicted. Default: half the free space of its file system at start.
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub max_state: Option<String>,
    /// Most objects in flight (collected but not finished); beyond it the oldest is evicted.
    /// Default 10000.
    #[arg(long, value_name = "N")]
    pub max_objects: Option<String>,
    /// Permission bits published files and directories may have, in octal (further masked
    /// by the umask). Default 755: never setuid, setgid, sticky or group/other-writable.
    #[arg(long, value_name = "OCTAL")]
    pub mode_mask: Option<String>,
    /// approvals.toml: publish only what a quorum of its approvers approved for export
    /// (checked here, whatever the sender checked). Default: no approval needed.
    #[arg(long, value_name = "FILE")]
    pub approval_policy: Option<PathBuf>,
    /// policy.toml: the content gate (name rules, size, pickle and safetensors inspection, an
    /// external scanner); refused files go to its quarantine directory. Default: no gate.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
}

/// Checked options for one run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The link frames come from, its key, workers, metrics, audit log, logging.
    pub shared: Common,
    /// age identity file.
    pub identity: PathBuf,
    /// Trusted minisign public key files.
    pub trust: Vec<PathBuf>,
    /// Output directory.
    pub out: PathBuf,
    /// State directory (`None`: `<out>/.sluice-state`).
    pub state: Option<PathBuf>,
    /// Exit after this long without frames.
    pub exit_after_idle: Option<Duration>,
    /// Assembler buffer bound in bytes.
    pub max_memory: u64,
    /// State directory bound in bytes (`None`: half the free space at start).
    pub max_state: Option<u64>,
    /// Most objects in flight.
    pub max_objects: usize,
    /// Permission bits published entries may have.
    pub mode_mask: u32,
    /// The approval policy every object must satisfy, if any.
    pub approval_policy: Option<PathBuf>,
    /// The content policy, if any.
    pub policy: Option<PathBuf>,
    /// The config file's `[s3]` table, for `--out s3://…` (over the AWS variables).
    pub s3: sluice_common::s3::Settings,
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
            shared: Common::new(link, link_key),
            identity,
            trust,
            out,
            state: None,
            exit_after_idle: None,
            max_memory: DEFAULT_MAX_MEMORY,
            max_state: None,
            max_objects: DEFAULT_MAX_OBJECTS,
            mode_mask: DEFAULT_MODE_MASK,
            approval_policy: None,
            policy: None,
            s3: Default::default(),
        }
    }

    /// The state directory in effect.
    pub fn state_dir(&self) -> PathBuf {
        self.state
            .clone()
            .unwrap_or_else(|| self.out.join(sluice_common::paths::RESERVED_STATE_DIR))
    }

    /// The audit log: `--audit-log`, or `audit.log` in the state directory.
    pub fn audit_log_path(&self) -> PathBuf {
        self.shared.audit_log_in(&self.state_dir())
    }
}

/// Merges the config file under the command line and checks every value.
pub fn resolve(args: Args) -> Result<Options, UsageError> {
    let file = sluice_common::config::load_file::<Args>(args.shared.config.as_deref())?;
    resolve_in(file.as_ref(), args)
}

/// Checks every option, the command line's over the config file's.
fn resolve_in(file: Option<&ConfigFile>, args: Args) -> Result<Options, UsageError> {
    let layers = Layers::new(file);
    let shared = layers.common(args.shared, LINK_FORM)?;
    let identity = layers.required_path(
        "identity",
        args.identity,
        "the receiver's age identity file, receiver.key",
    )?;
    let trust = layers.required_paths(
        "trust",
        args.trust,
        "the sender's minisign public key, sender.pub",
    )?;
    let out = layers.required_path("out", args.out, "the directory objects are published into")?;
    let exit_after_idle = layers
        .value("exit-after-idle", args.exit_after_idle)?
        .map(|v| {
            v.parse(
                "a number of seconds greater than 0 (e.g. 30 or 2.5)",
                parse_idle,
            )
        })
        .transpose()?;
    let max_memory = match layers.value("max-memory", args.max_memory)? {
        None => DEFAULT_MAX_MEMORY,
        Some(v) => v.parse("a size from 4MiB to 64GiB (e.g. 32MiB, 256MB)", |t| {
            units::parse_bytes(t)
                .ok()
                .filter(|n| (MIN_MAX_MEMORY..=MAX_MAX_MEMORY).contains(n))
        })?,
    };
    let max_state = layers
        .value("max-state", args.max_state)?
        .map(|v| {
            v.parse("a size of at least 64MiB (e.g. 20GiB)", |t| {
                units::parse_bytes(t).ok().filter(|n| *n >= 64 << 20)
            })
        })
        .transpose()?;
    let max_objects = match layers.value("max-objects", args.max_objects)? {
        None => DEFAULT_MAX_OBJECTS,
        Some(v) => v.parse("a number of objects from 1 to 10000000", |t| {
            t.parse::<usize>()
                .ok()
                .filter(|n| (1..=10_000_000).contains(n))
        })?,
    };
    let mode_mask = match layers.value("mode-mask", args.mode_mask)? {
        None => DEFAULT_MODE_MASK,
        Some(v) => v.parse("octal permission bits, at most 7777 (e.g. 755)", |t| {
            u32::from_str_radix(t.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o7777)
        })?,
    };
    Ok(Options {
        shared,
        identity,
        trust,
        out,
        max_state,
        max_objects,
        mode_mask,
        state: layers.path("state", args.state)?,
        exit_after_idle,
        max_memory,
        approval_policy: layers.path("approval-policy", args.approval_policy)?,
        policy: layers.path("policy", args.policy)?,
        s3: file
            .map(|f| f.section("s3"))
            .transpose()?
            .flatten()
            .unwrap_or_default(),
    })
}

fn parse_idle(text: &str) -> Option<Duration> {
    let secs: f64 = text.trim().parse().ok()?;
    (secs.is_finite() && secs > 0.0 && secs <= MAX_IDLE_SECS).then(|| Duration::from_secs_f64(secs))
}

/// What `sluice-recv keygen DIR` does.
pub const KEYGEN_ABOUT: &str =
    "Create DIR/receiver.key (age identity) and DIR/receiver.pub (its recipient)";

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::logging::LogFormat;
    use std::path::Path;

    const REQUIRED: &str = "sluice-recv --link udp://127.0.0.1:9000 --identity r.key \
                            --trust s.pub --link-key l.key --out inbox";

    /// The options of `line`, then `extra`.
    fn resolve_line(line: &str, extra: &[&str]) -> Result<Options, UsageError> {
        let argv = line.split_whitespace().chain(extra.iter().copied());
        resolve(Args::try_parse_from(argv).unwrap())
    }

    fn resolve_args(extra: &[&str]) -> Result<Options, UsageError> {
        resolve_line(REQUIRED, extra)
    }

    #[test]
    fn defaults() {
        let o = resolve_args(&[]).unwrap();
        assert_eq!(o.max_memory, DEFAULT_MAX_MEMORY);
        assert_eq!(o.exit_after_idle, None);
        assert_eq!(o.state_dir(), Path::new("inbox/.sluice-state"));
        assert_eq!(o.shared.log.format, LogFormat::Human);
        assert_eq!(o.shared.link.max_frame_len(), 1472);
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
        assert_eq!(o.shared.log.format, LogFormat::Json);
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
        let err = resolve_line(&REQUIRED.replace("udp://127.0.0.1:9000", "tcp://x:1"), &[])
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
            "--link-key",
            "l",
            "--identity",
            "k",
        ];
        let err = resolve(Args::try_parse_from(argv).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--trust is required"), "{err}");
    }

    /// The options of `argv` over a config file holding `toml`.
    fn resolve_over_file(toml: &str, argv: &[&str]) -> Result<Options, UsageError> {
        use clap::CommandFactory;
        let file = ConfigFile::parse(Path::new("recv.toml"), toml, &Args::command())?;
        let argv = ["sluice-recv", "--config", "recv.toml"].iter().chain(argv);
        resolve_in(Some(&file), Args::try_parse_from(argv).unwrap())
    }

    #[test]
    fn an_s3_table_sets_the_store_and_nothing_else_is_taken_there() {
        let required = "--identity k --trust t --link-key l --out s3://b/in";
        let argv: Vec<&str> = required.split(' ').collect();
        let toml = "link = \"udp://0.0.0.0:9\"\n[s3]\nendpoint = \"http://10.1.0.5:3900\"\n\
                    region = \"garage\"\naccess-key-id = \"GK1\"\n\
                    secret-access-key-file = \"/etc/sluice/s3.secret\"\nallow-http = true\n";
        let o = resolve_over_file(toml, &argv).unwrap();
        assert_eq!(o.s3.endpoint.as_deref(), Some("http://10.1.0.5:3900"));
        assert_eq!(o.s3.access_key_id.as_deref(), Some("GK1"));
        assert_eq!(o.s3.allow_http, Some(true));
        // The secret itself is not a setting, nor is any other table.
        for bad in [
            "link = \"udp://0.0.0.0:9\"\n[s3]\nsecret-access-key = \"x\"\n",
            "link = \"udp://0.0.0.0:9\"\n[gcs]\nendpoint = \"x\"\n",
        ] {
            let err = resolve_over_file(bad, &argv).unwrap_err().to_string();
            assert!(err.contains("recv.toml") && !err.contains("\"x\""), "{err}");
        }
    }

    #[test]
    fn config_file_fills_in_and_command_line_wins() {
        let toml = "link = \"udp://0.0.0.0:9000?mtu=9000\"\nidentity = \"r.key\"\n\
                    trust = [\"a.pub\", \"b.pub\"]\nlink-key = \"l.key\"\nout = \"inbox\"\n\
                    exit-after-idle = 30\nmax-memory = \"128MiB\"\n";
        let o = resolve_over_file(toml, &["--max-memory", "8MiB"]).unwrap();
        assert_eq!(o.max_memory, 8 << 20);
        assert_eq!(o.exit_after_idle, Some(Duration::from_secs(30)));
        assert_eq!(o.trust.len(), 2);
        assert_eq!(o.shared.link.max_frame_len(), 8972);

        let required = "--identity k --trust t --link-key l --out o";
        let argv: Vec<&str> = required.split(' ').collect();
        let err = resolve_over_file("link = \"udp://0.0.0.0:9\"\nmax-memory = 12\n", &argv)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--max-memory \"12\" (in recv.toml)") && err.contains("4MiB"),
            "{err}"
        );

        let err = resolve_over_file("speed = 3\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--config") && err.contains("speed"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
