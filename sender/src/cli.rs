//! Command line and `--config` TOML file, merged into one checked [`Options`] by the shared
//! layered config (`sluice_common::config`).
//!
//! Every option can come from the TOML file (same names as the long options, e.g.
//! `link = "udp://gw:9000"`, `recipient = ["keys/receiver.pub"]`, `verbose = true`); the
//! command line wins. A bad value is one line naming the option and the accepted form, and
//! exit status 2.

use std::path::PathBuf;

use clap::Parser;
use sluice_common::config::{self, Common, Layers, SharedArgs, UsageError};
use sluice_common::units;
use sluice_protocol::wire;

/// `sluice-send`: the low-side daemon.
#[derive(Debug, Parser)]
#[command(
    name = "sluice-send",
    version,
    about = "Send files and directory trees across a one-way link (data diode).",
    after_help = "Other commands:\n  sluice-send keygen DIR    write DIR/sender.key, DIR/sender.pub and DIR/link.key\n  \
                  sluice-send watch …       the outbox daemon (sluice-send watch --help)\n  \
                  sluice-send status …      what the outbox daemon has (sluice-send status --help)"
)]
pub struct Args {
    #[command(flatten)]
    pub shared: SharedArgs,
    /// Receiver's age recipient file (receiver.pub); repeat to encrypt to several receivers.
    #[arg(long)]
    pub recipient: Vec<PathBuf>,
    /// Minisign secret key that signs every manifest (sender.key).
    #[arg(long)]
    pub sign_key: Option<PathBuf>,
    /// Link rate in bytes per second (500KB, 100MB, 1.5GB); 0 sends unpaced.
    /// Default: 100MB on UDP, baud/10 on serial.
    #[arg(long)]
    pub rate: Option<String>,
    /// Passes over the data; each later pass carries fresh repair symbols. Default 1.
    #[arg(long)]
    pub passes: Option<String>,
    /// Repair symbols per pass, as a share of source symbols (e.g. 10%). Default 10%.
    #[arg(long)]
    pub repair: Option<String>,
    /// Plaintext bytes per encrypted segment, 64KiB..8MiB. Default 1MiB.
    #[arg(long)]
    pub segment_size: Option<String>,
    /// Files smaller than this, and directories, travel in packs: many to one object whose
    /// manifest carries their content (one key exchange and signature for hundreds of small
    /// files). 0 sends each as its own object. At most --segment-size. Default 256KiB.
    #[arg(long)]
    pub pack_under: Option<String>,
    /// Directory for the ciphertext later passes resend (default: a temporary directory).
    #[arg(long)]
    pub spool: Option<PathBuf>,
    /// Where the sender keeps its manifest sequence number (freshness; one file per signing
    /// key). Default: the --sign-key file's directory.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Object name for data read from stdin (`-`).
    #[arg(long)]
    pub name: Option<String>,
    /// When stderr is not a terminal (cron, systemd), log a progress line this often
    /// (30s, 5m). Default 30s.
    #[arg(long, value_name = "DURATION")]
    pub progress_every: Option<String>,
    /// Blocks whose symbols are interleaved on the link (spreads loss bursts). Default 8.
    #[arg(long)]
    pub interleave: Option<String>,
    /// An export request (sluice-approve request) that must approve exactly PATH...
    #[arg(long)]
    pub approval: Option<PathBuf>,
    /// approvals.toml: with it, nothing is sent without a quorum over --approval.
    #[arg(long)]
    pub approval_policy: Option<PathBuf>,
    /// Approval signature files (default: REQUEST*.minisig beside the request). Repeatable.
    #[arg(long)]
    pub approval_sig: Vec<PathBuf>,
    /// policy.toml: check every file against the receiver's content policy before sending
    /// (the receiver's check is the one that counts); nothing is sent if one is refused.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Sign each directory given as a model (OpenSSF model signing, the key method): writes
    /// DIR/model.sig, verifiable with `model_signing verify key`, before sending. KEY.pem: a
    /// P-256 private key (PKCS#8 PEM).
    #[arg(long, value_name = "KEY.pem")]
    pub sign_model: Option<PathBuf>,
    /// With --sign-model: sign with the certificate method instead. CERT.pem holds the key's
    /// certificate, then its intermediates; receivers trust the root (`[signing]
    /// certificates`), `model_signing verify certificate` verifies it.
    #[arg(long, value_name = "CERT.pem")]
    pub sign_model_cert: Option<PathBuf>,
    /// Files and directories to send, s3://BUCKET/PREFIX (its objects, as a tree named after
    /// the prefix's last part; the store's settings as the receiver's: the config file's [s3]
    /// table over the AWS variables), or `-` for stdin.
    pub paths: Vec<PathBuf>,
}

/// Checked options for one run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The link frames go to, its key, workers, metrics, audit log, logging.
    pub shared: Common,
    /// age recipient files.
    pub recipients: Vec<PathBuf>,
    /// minisign secret key file.
    pub sign_key: PathBuf,
    /// Link bytes per second; 0 = unpaced.
    pub rate: u64,
    /// Passes over the data.
    pub passes: u16,
    /// Repair symbols per thousand source symbols, per pass.
    pub repair_permille: u32,
    /// Plaintext bytes per segment (and most content bytes per pack).
    pub segment_size: u32,
    /// Files under this size are packed.
    pub pack_under: u64,
    /// Where later passes' ciphertext is kept.
    pub spool: Option<PathBuf>,
    /// Where the manifest sequence is kept (`None`: beside the signing key).
    pub state: Option<PathBuf>,
    /// Object name for stdin.
    pub name: Option<String>,
    /// A progress line this often when stderr is not a terminal.
    pub progress_every: std::time::Duration,
    /// Blocks interleaved on the link.
    pub interleave: usize,
    /// The export approval PATH... must carry, if a policy is configured.
    pub approval: Option<ApprovalOptions>,
    /// The content policy checked before sending, if any.
    pub policy: Option<PathBuf>,
    /// The key each directory sent is signed with as a model, if any.
    pub sign_model: Option<PathBuf>,
    /// That key's certificate and intermediates (the certificate method), if any.
    pub sign_model_cert: Option<PathBuf>,
    /// What to send.
    pub paths: Vec<PathBuf>,
    /// The config file's `[s3]` table, for `s3://` paths (over the AWS variables).
    pub s3: sluice_common::s3::Settings,
}

impl Options {
    /// The audit log: `--audit-log`, or `audit.log` in the state directory.
    pub fn audit_log_path(&self) -> PathBuf {
        self.shared.audit_log_in(&self.state_dir())
    }

    /// The directory the manifest sequence lives in.
    pub fn state_dir(&self) -> PathBuf {
        self.state.clone().unwrap_or_else(|| {
            self.sign_key
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf)
        })
    }
}

/// `--segment-size` bounds: the wire format's.
const SEGMENT_SIZES: std::ops::RangeInclusive<u64> =
    wire::MIN_SEGMENT_SIZE as u64..=wire::MAX_SEGMENT_SIZE as u64;

/// `sluice-send watch`: the outbox daemon.
#[derive(Debug, Parser)]
#[command(
    name = "sluice-send watch",
    bin_name = "sluice-send watch",
    version,
    about = "Send every item (top-level file or directory) put into --outbox, once, in \
             arrival order; runs until stopped. Writers rename finished items into the outbox, \
             or write them elsewhere or as NAME.partial first: names starting with `.` or \
             ending in `.partial` are never sent.",
    // One-shot options the daemon refuses (each with its reason): not in its help.
    mut_arg("approval", |a| a.hide(true)),
    mut_arg("approval_sig", |a| a.hide(true)),
    mut_arg("sign_model", |a| a.hide(true)),
    mut_arg("sign_model_cert", |a| a.hide(true)),
    mut_arg("progress_every", |a| a.hide(true)),
    mut_arg("name", |a| a.hide(true)),
    mut_arg("paths", |a| a.hide(true))
)]
pub struct WatchArgs {
    #[command(flatten)]
    pub send: Args,
    /// The directory to watch.
    #[arg(long)]
    pub outbox: Option<PathBuf>,
    /// Where sent items are moved (on the outbox's file system). Default: OUTBOX/.sent
    #[arg(long)]
    pub sent: Option<PathBuf>,
    /// Delete items once sent instead of moving them to --sent.
    #[arg(long)]
    pub delete_after_send: bool,
    /// Remove items from --sent this long after they were sent (e.g. 7d). Default: keep.
    #[arg(long)]
    pub keep_sent: Option<String>,
    /// An item written in place is sent once it has not changed for this long. Default 2s.
    #[arg(long)]
    pub settle: Option<String>,
}

/// What becomes of a sent item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterSend {
    /// Renamed into this directory as `<time sent>-<name>`.
    Move(PathBuf),
    Delete,
}

/// An approval policy and the request and signatures that must satisfy it.
#[derive(Debug, Clone)]
pub struct ApprovalOptions {
    pub policy: PathBuf,
    pub request: PathBuf,
    /// Empty: the signatures beside the request.
    pub signatures: Vec<PathBuf>,
}

/// Checked options of the watch daemon.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// How to send (paths unused). Its `policy`, if any, is checked on every item.
    pub send: Options,
    /// approvals.toml: with it, every item is an export request shipped once approved.
    pub approval_policy: Option<PathBuf>,
    pub outbox: PathBuf,
    /// Where the journal (and the manifest sequence) live.
    pub state: PathBuf,
    pub after: AfterSend,
    pub keep_sent: Option<std::time::Duration>,
    pub settle: std::time::Duration,
}

fn resolve_approval(
    layers: &Layers<'_>,
    request: Option<PathBuf>,
    policy: Option<PathBuf>,
    signatures: Vec<PathBuf>,
) -> Result<Option<ApprovalOptions>, UsageError> {
    let request = layers.path("approval", request)?;
    let policy = layers.path("approval-policy", policy)?;
    let signatures = layers.paths("approval-sig", signatures)?;
    match (policy, request) {
        (None, None) if signatures.is_empty() => Ok(None),
        (None, _) => Err(UsageError(
            "--approval and --approval-sig need --approval-policy (approvals.toml)".into(),
        )),
        (Some(_), None) => Err(UsageError(
            "not approved: --approval-policy is set, so an --approval request is required".into(),
        )),
        (Some(policy), Some(request)) => Ok(Some(ApprovalOptions {
            policy,
            request,
            signatures,
        })),
    }
}

fn duration(text: &str) -> Option<std::time::Duration> {
    humantime::parse_duration(text.trim()).ok()
}

/// Merges the config file under the command line and checks every value of `watch`.
pub fn resolve_watch(mut args: WatchArgs) -> Result<WatchOptions, UsageError> {
    let file = config::load_file::<WatchArgs>(args.send.shared.config.as_deref())?;
    let layers = Layers::new(file.as_ref());
    if args.send.paths.iter().any(|p| crate::objects::s3::is_s3(p)) {
        return Err(UsageError(
            "watch does not take s3:// sources: send from a bucket one-shot (sluice-send \
             s3://BUCKET/PREFIX)"
                .into(),
        ));
    }
    if !args.send.paths.is_empty() {
        return Err(UsageError(
            "watch takes no paths: it sends what appears in --outbox".into(),
        ));
    }
    if args.send.name.is_some() {
        return Err(UsageError(
            "--name names stdin for one-shot sends: the daemon sends items by their own names"
                .into(),
        ));
    }
    if args.send.progress_every.is_some() {
        return Err(UsageError(
            "--progress-every is for one-shot sends: the daemon logs each item as it goes".into(),
        ));
    }
    let outbox = layers.required_path("outbox", args.outbox, "the directory to watch")?;
    if crate::objects::s3::is_s3(&outbox) {
        return Err(UsageError(
            "--outbox: watch does not take s3:// sources: send from a bucket one-shot \
             (sluice-send s3://BUCKET/PREFIX)"
                .into(),
        ));
    }
    let delete = layers.flag("delete-after-send", args.delete_after_send)?;
    let sent = layers.path("sent", args.sent)?;
    let after = match (delete, sent) {
        (true, Some(_)) => {
            return Err(UsageError(
                "--sent and --delete-after-send exclude each other".into(),
            ))
        }
        (true, None) => AfterSend::Delete,
        (false, Some(dir)) => AfterSend::Move(dir),
        (false, None) => AfterSend::Move(outbox.join(".sent")),
    };
    let keep_sent = match layers.value("keep-sent", args.keep_sent)? {
        None => None,
        Some(v) => Some(v.parse("a duration, e.g. 7d or 12h", duration)?),
    };
    let settle = match layers.value("settle", args.settle)? {
        None => std::time::Duration::from_secs(2),
        Some(v) => v.parse("a duration, e.g. 2s or 500ms", duration)?,
    };
    let approval_policy = layers.path("approval-policy", args.send.approval_policy.take())?;
    let request = layers.path("approval", args.send.approval.take())?;
    let signatures = layers.paths("approval-sig", std::mem::take(&mut args.send.approval_sig))?;
    if request.is_some() || !signatures.is_empty() {
        return Err(UsageError(
            "watch takes each export request from its outbox item (request.toml and its \
             *.minisig beside the files): --approval and --approval-sig are for one-shot sends"
                .into(),
        ));
    }
    let send = resolve_in(layers, args.send, false)?;
    if send.sign_model.is_some() {
        return Err(UsageError(
            "watch does not sign models (anyone who can write the outbox would have them \
             signed): sign with sluice-send --sign-model one-shot"
                .into(),
        ));
    }
    let state = send.state.clone().ok_or_else(|| {
        UsageError("--state is required: the directory of the outbox journal".into())
    })?;
    Ok(WatchOptions {
        send,
        approval_policy,
        outbox,
        state,
        after,
        keep_sent,
        settle,
    })
}

/// Merges the config file under the command line and checks every value. The file may be
/// the daemon's (`send-watch.toml`): one file serves both, and a one-shot send ignores the
/// keys only `watch` takes (`outbox`, `settle`, `keep-sent`, …); any other key is an error.
pub fn resolve(args: Args) -> Result<Options, UsageError> {
    let file = config::load_file::<WatchArgs>(args.shared.config.as_deref())?;
    let mut options = resolve_in(Layers::new(file.as_ref()), args, true)?;
    options.s3 = file
        .map(|f| f.section("s3"))
        .transpose()?
        .flatten()
        .unwrap_or_default();
    Ok(options)
}

/// Checks every sending option; `paths_required` for a one-shot run.
fn resolve_in(layers: Layers<'_>, args: Args, paths_required: bool) -> Result<Options, UsageError> {
    let shared = layers.common(args.shared, "udp://HOST:PORT or serial:///dev/ttyX?baud=N")?;
    let recipients =
        layers.required_paths("recipient", args.recipient, "the receiver's receiver.pub")?;
    let sign_key = layers.required_path("sign-key", args.sign_key, "a sender.key file")?;
    let rate = match layers.value("rate", args.rate)? {
        None => shared.link.default_rate(),
        Some(v) => v.parse(
            "bytes per second with a unit, e.g. 500KB, 100MB, 1.5GB, or 0 for unpaced",
            |t| units::parse_bytes(t).ok(),
        )?,
    };
    let passes = match layers.value("passes", args.passes)? {
        None => 1,
        Some(v) => v.parse("a number of passes from 1 to 100", |t| {
            t.parse::<u16>().ok().filter(|n| (1..=100).contains(n))
        })?,
    };
    let repair_permille = match layers.value("repair", args.repair)? {
        None => 100,
        Some(v) => v.parse("a percentage from 0% to 1000%, e.g. 10%", |t| {
            units::parse_permille(t).ok()
        })?,
    };
    let segment_size = match layers.value("segment-size", args.segment_size)? {
        None => 1 << 20,
        Some(v) => v.parse("a size from 64KiB to 8MiB, e.g. 1MiB", |t| {
            units::parse_bytes(t)
                .ok()
                .filter(|n| SEGMENT_SIZES.contains(n))
                .and_then(|n| u32::try_from(n).ok())
        })?,
    };
    let pack_under = match layers.value("pack-under", args.pack_under)? {
        None => (256 << 10).min(u64::from(segment_size)),
        Some(v) => v.parse("a size from 0 to --segment-size, e.g. 64KiB", |t| {
            units::parse_bytes(t)
                .ok()
                .filter(|n| *n <= u64::from(segment_size))
        })?,
    };
    let interleave = match layers.value("interleave", args.interleave)? {
        None => 8,
        Some(v) => v.parse("a block count from 1 to 256", |t| {
            t.parse::<usize>().ok().filter(|n| (1..=256).contains(n))
        })?,
    };
    if paths_required && args.paths.is_empty() {
        return Err(UsageError(
            "nothing to send: give files, directories, or - for stdin".into(),
        ));
    }
    for path in args.paths.iter().filter(|p| crate::objects::s3::is_s3(p)) {
        let url = path.to_str().and_then(sluice_common::s3::Target::parse);
        match url {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(UsageError(e)),
            None => return Err(UsageError(format!("{}: not UTF-8", path.display()))),
        }
    }
    let stdin_count = args.paths.iter().filter(|p| p.as_os_str() == "-").count();
    let name = layers.value("name", args.name)?;
    if stdin_count > 1 {
        return Err(UsageError("- (stdin) may appear only once".into()));
    }
    if stdin_count == 1 && name.is_none() {
        return Err(UsageError(
            "--name is required when reading stdin (-): the name the stream gets under --out"
                .into(),
        ));
    }
    let progress_every = match layers.value("progress-every", args.progress_every)? {
        None => crate::progress::LINE_EVERY,
        Some(v) => v.parse("a duration of at least 1s, e.g. 30s or 5m", |t| {
            duration(t).filter(|d| *d >= std::time::Duration::from_secs(1))
        })?,
    };
    let name = match name {
        None => None,
        Some(v) => {
            if let Err(e) = sluice_common::paths::validate_object_path(&v.text) {
                return Err(v.error(&format!("a relative path the receiver accepts ({e})")));
            }
            Some(v.text)
        }
    };
    // The watch daemon takes each request from its outbox item (see `resolve_watch`).
    let approval = match paths_required {
        true => resolve_approval(
            &layers,
            args.approval,
            args.approval_policy,
            args.approval_sig,
        )?,
        false => None,
    };
    let sign_model = layers.path("sign-model", args.sign_model)?;
    let sign_model_cert = layers.path("sign-model-cert", args.sign_model_cert)?;
    if sign_model_cert.is_some() && sign_model.is_none() {
        return Err(UsageError(
            "--sign-model-cert is the certificate of the --sign-model key: give both".into(),
        ));
    }
    Ok(Options {
        approval,
        policy: layers.path("policy", args.policy)?,
        sign_model,
        sign_model_cert,
        shared,
        recipients,
        sign_key,
        rate,
        passes,
        repair_permille,
        segment_size,
        pack_under,
        spool: layers.path("spool", args.spool)?,
        state: layers.path("state", args.state)?,
        name,
        progress_every,
        interleave,
        paths: args.paths,
        s3: sluice_common::s3::Settings::default(),
    })
}

/// What `sluice-send keygen DIR` does.
pub const KEYGEN_ABOUT: &str = "Create sender.key, sender.pub and link.key in DIR";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemons_config_file_serves_a_one_shot_send_too() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("send-watch.toml");
        std::fs::write(
            &config,
            "link = \"udp://127.0.0.1:5000\"\nlink-key = \"l.key\"\nrecipient = [\"r.pub\"]\n\
             sign-key = \"s.key\"\noutbox = \"/srv/o\"\nstate = \"/var/lib/s\"\n\
             keep-sent = \"7d\"\nsettle = \"2s\"\nrate = \"50MB\"\n",
        )
        .unwrap();
        let args = Args::try_parse_from(["sluice-send", "--config", config.to_str().unwrap(), "f"])
            .unwrap();
        let options = resolve(args).unwrap();
        assert_eq!(options.rate, 50_000_000);
        assert_eq!(
            options.state.as_deref(),
            Some(std::path::Path::new("/var/lib/s"))
        );
        // Keys neither command takes are still errors.
        std::fs::write(
            &config,
            "link = \"udp://127.0.0.1:5000\"\nsettel = \"2s\"\n",
        )
        .unwrap();
        let args = Args::try_parse_from(["sluice-send", "--config", config.to_str().unwrap(), "f"])
            .unwrap();
        assert!(resolve(args).is_err());
    }

    #[test]
    fn watch_help_lists_only_what_the_daemon_takes() {
        use clap::CommandFactory;
        let help = WatchArgs::command().render_help().to_string();
        for refused in [
            "--approval ",
            "--approval-sig",
            "--sign-model",
            "--progress-every",
            "--name",
        ] {
            assert!(!help.contains(refused), "{refused} in:\n{help}");
        }
        for taken in ["--approval-policy", "--outbox", "--policy", "--rate"] {
            assert!(help.contains(taken), "{taken} not in:\n{help}");
        }
        // Hidden, still parsed: refused with the reason.
        let refused = resolve_watch(
            WatchArgs::try_parse_from([
                "w",
                "--outbox",
                "o",
                "--state",
                "s",
                "--progress-every",
                "1s",
            ])
            .unwrap(),
        );
        assert!(refused.unwrap_err().0.contains("one-shot"));
    }

    /// The required options (with `link`), then `extra`.
    fn resolve_with_link(link: &str, extra: &[&str]) -> Result<Options, UsageError> {
        let required = format!(
            "sluice-send --recipient r.pub --sign-key s.key --link-key l.key --link {link}"
        );
        let argv = required
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        let argv = argv.iter().map(String::as_str).chain(extra.iter().copied());
        resolve(Args::try_parse_from(argv).unwrap())
    }

    fn resolve_args(extra: &[&str]) -> Result<Options, UsageError> {
        resolve_with_link("udp://127.0.0.1:9000", extra)
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
        let o = resolve_with_link("serial:///dev/ttyS0?baud=921600", &["f"]).unwrap();
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
            (&["--approval", "r.toml", "f"][..], "--approval-policy"),
            (
                &["--approval-policy", "a.toml", "f"][..],
                "--approval request",
            ),
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
        use clap::CommandFactory;
        let path = std::path::Path::new("send.toml");
        let toml = "link = \"udp://10.0.0.2:9000?mtu=9000\"\nrecipient = [\"a.pub\", \"b.pub\"]\n\
                    sign-key = \"s.key\"\nlink-key = \"l.key\"\nrate = \"50MB\"\npasses = 2\n";
        let file = config::ConfigFile::parse(path, toml, &Args::command()).unwrap();
        let args = Args::try_parse_from(["sluice-send", "--rate", "1MB", "f"]).unwrap();
        let o = resolve_in(Layers::new(Some(&file)), args, true).unwrap();
        assert_eq!((o.rate, o.passes), (1_000_000, 2));
        assert_eq!(o.recipients.len(), 2);
        assert_eq!(o.shared.link.max_frame_len(), 8972);

        let err = config::ConfigFile::parse(path, "rate = \"50MB\"\nspeed = 3\n", &Args::command())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--config") && err.contains("speed"), "{err}");
    }
}
