//! # sluice-sender
//!
//! `sluice-send`, the low side of a Sluice data diode.
//!
//! ```text
//!  paths ─▶ objects ─▶ encode: reader (read, SHA-256) ─▶ workers (age per segment, FEC)
//!                              ─▶ collector (sign + encrypt the manifest, in order)
//!                         │ bounded channel (a few blocks)
//!                         ▼
//!                      send loop: tx::Scheduler (interleave, heartbeats, token-bucket pacing),
//!                         │        outcomes (queued, sent, failed, …) to their subscribers
//!                         ▼
//!                      FrameTx (UDP datagrams or COBS on a byte stream), never read from
//! ```
//!
//! The encoder and the send loop run on different threads so pacing never waits for
//! encryption; the channel between them keeps memory bounded whatever the file sizes.
//!
//! - [`cli`]: command line and TOML config. `error`: start-up errors.
//! - [`objects`]: what the paths expand to. [`encode`]: the encode pipeline.
//! - `session`: what a run opens (keys, link, `/metrics`) and starts (the send loop).
//! - `content`: the content policy checked before sending (one-shot and watch).
//! - `send_loop`: pacing, the link, and the one place outcomes are emitted.
//! - [`outcome`]: outcomes and their subscribers. [`counters`], [`summary`]: the figures.
//!
//! The mirror of `sluice_receiver::Receiver`: [`Sender::bind`] loads keys, opens the link and
//! finds the objects; [`Sender::run`] sends them and returns the [`Summary`].

pub mod approve;
pub mod cli;
mod content;
pub mod counters;
pub mod encode;
mod error;
pub mod export_budget;
pub mod inspect_cli;
pub mod manual;
pub mod model_sign;
pub mod objects;
pub mod outcome;
pub mod progress;
mod send_loop;
mod session;
pub mod summary;
pub mod watch;

use std::ffi::OsString;
use std::future::Future;
use std::io::IsTerminal;
use std::process::ExitCode;

use sha2::{Digest, Sha256};
use sluice_common::audit::Event;
use sluice_common::config::{self, Parsed};
use sluice_common::exit::ExitStatus;
use sluice_common::keys;
use sluice_common::logging;
use sluice_common::sequence::Sequence;

pub use cli::Options;
pub use error::Error;
pub use summary::Summary;

use crate::objects::{Skipped, SourceObject};
use crate::outcome::Outcome;
use crate::session::{Ends, Session};

/// A sender with its keys loaded, its objects found and its link open.
pub struct Sender {
    options: Options,
    ends: Ends,
    objects: Vec<SourceObject>,
    skipped: Vec<Skipped>,
    /// The export approval checked at bind, if a policy asked for one.
    approval: Option<approve::Approved>,
}

impl std::fmt::Debug for Sender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("link", &self.options.shared.link)
            .field("objects", &self.objects.len())
            .finish_non_exhaustive()
    }
}

impl Sender {
    /// Loads keys, expands the paths into objects, and opens the link.
    pub async fn bind(options: Options) -> Result<Self, Error> {
        // Listing and reading (the approval's and the policy's checks) block: on a thread of
        // their own, not the send loop's worker (a store's requests block on its own runtime,
        // which cannot be entered from async code).
        let prepared = tokio::task::spawn_blocking(move || {
            let prepared = prepare(&options);
            (options, prepared)
        })
        .await;
        let (options, prepared) = match prepared {
            Ok(done) => done,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => return Err(Error::Thread(std::io::Error::other(e.to_string()))),
            },
        };
        let Prepared {
            approval,
            objects,
            skipped,
        } = prepared?;
        if objects.is_empty() {
            for s in &skipped {
                log_skipped(s);
            }
            return Err(Error::NothingToSend);
        }
        let ends = Ends::open(&options).await?;
        Ok(Sender {
            options,
            ends,
            objects,
            skipped,
            approval,
        })
    }

    /// Sends every object, every pass; stops early (after the heartbeat tail) when `shutdown`
    /// resolves. Objects that fail are outcomes, counted in the summary, not errors.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<Summary, Error> {
        let Sender {
            options,
            ends,
            objects,
            skipped,
            approval,
        } = self;
        let Ends {
            recipients,
            signer,
            link_key,
            mut link,
            metrics,
        } = ends;
        let file_bytes: u64 = objects.iter().filter_map(|o| o.size).sum();
        let progress = match (options.shared.log.quiet, std::io::stderr().is_terminal()) {
            (true, _) => progress::Show::Nothing,
            (false, true) => progress::Show::Bar,
            (false, false) => progress::Show::Lines,
        };
        let progress = (progress, file_bytes * u64::from(options.passes));
        let Session {
            mut config,
            mut send_loop,
            counters,
            overhead,
            audit,
            _metrics,
        } = Session::start(&options, recipients, signer, link_key, metrics, progress)?;
        let spool = match options.passes {
            1 => None,
            _ => Some(encode::Spool::create(options.spool.as_deref()).map_err(Error::Spool)?),
        };
        config.spool = spool.as_ref().map(|s| s.path().to_path_buf());
        if let Some(approved) = approval {
            audit.record(
                Event::new("approval_checked")
                    .with(
                        "request_sha256",
                        hex::encode(Sha256::digest(&approved.carried.request)),
                    )
                    .with("purpose", approved.request.purpose.clone())
                    .with("requester", approved.request.requester.clone())
                    .with("expires", approved.request.expires.clone())
                    .with("threshold", approved.threshold as u64)
                    .with("approvers", key_ids(&approved.approvers)),
            );
            config.approval = Some(approved.carried);
        }
        tracing::info!(
            link = %options.shared.link,
            session = format_args!("{:016x}", config.session.0),
            objects = objects.len(),
            bytes = file_bytes,
            rate = %Session::rate_text(&options),
            passes = options.passes,
            repair = format_args!("{}%", f64::from(options.repair_permille) / 10.0),
            symbol_size = config.symbol_size,
            "sending"
        );
        for s in skipped {
            send_loop.emit(Outcome::not_sent(s));
        }

        let mut sequence = Sequence::open(&options.state_dir(), config.signer.id());
        let (tx, rx) = flume::bounded(2);
        let encoder = std::thread::Builder::new()
            .name("sluice-encode".into())
            .spawn(move || encode::run(&config, &objects, &mut sequence, tx))
            .map_err(Error::Thread)?;
        let shutdown = std::pin::pin!(shutdown);
        let sent = tokio::select! {
            sent = send_loop.run(link.as_mut(), rx) => sent,
            () = shutdown => Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "stopped by a signal")),
        };
        let encoded = encoder.join().unwrap_or(Err(encode::EncodeError::Panicked));
        drop(spool);
        let elapsed = sent.map_err(|source| Error::Link {
            link: options.shared.link.to_string(),
            source,
        })?;
        encoded?;
        let summary = Summary::new(&counters.snapshot(), options.passes, overhead, elapsed);
        audit.record(
            Event::new("stop")
                .with("sent", summary.objects_sent)
                .with("failed", summary.objects_failed)
                .with("refused", summary.objects_refused),
        );
        // The run's last records, "stop" included, are covered by a head the receiver holds.
        send_loop
            .anchor_audit_log(link.as_mut())
            .await
            .map_err(|source| Error::Link {
                link: options.shared.link.to_string(),
                source,
            })?;
        Ok(summary)
    }
}

/// What [`Sender::bind`] finds before it opens the link.
struct Prepared {
    approval: Option<approve::Approved>,
    objects: Vec<SourceObject>,
    skipped: Vec<Skipped>,
}

/// Connects the `s3://` sources' buckets, expands the paths, and checks what they expanded to
/// against the approval and the policy. Blocks.
///
/// The paths are expanded (a bucket's prefix listed) once: the approval and the policy check
/// the very objects then sent, each read as found (a file as the inode seen, a stored object
/// pinned to its listed ETag and size), so one changed after its check is refused when read
/// to be sent, never sent unchecked.
fn prepare(options: &Options) -> Result<Prepared, Error> {
    // A wrong key, a missing bucket or an unreachable endpoint: one line and exit 2, before
    // the link is opened.
    let stores = objects::s3::Stores::connect(&options.paths, &options.s3)
        .map_err(|e| Error::Usage(config::UsageError(e)))?;
    if let Some(key) = &options.sign_model {
        sign_models(key, options.sign_model_cert.as_deref(), &options.paths)?;
    }
    let (objects, skipped) =
        objects::enumerate_with(&options.paths, options.name.as_deref(), &stores);
    let approval = match &options.approval {
        None => None,
        Some(given) => {
            let approved =
                approve::preflight(given, &objects, &skipped).map_err(Error::NotApproved)?;
            tracing::info!(
                request = %given.request.display(),
                approvers = %key_ids(&approved.approvers).join(","),
                "export approved"
            );
            Some(approved)
        }
    };
    if let Some(path) = &options.policy {
        content::preflight(path, &objects)?;
    }
    // Last, once nothing else can stop the export: taken from the budget before the link
    // opens (what may leave is counted, whether or not it arrives).
    if let Some(approved) = &approval {
        let state = options.state_dir();
        export_budget::spend(&state, &approved.demand)
            .map_err(|e| Error::NotApproved(e.to_string()))?;
    }
    Ok(Prepared {
        approval,
        objects,
        skipped,
    })
}

/// `--sign-model`: each directory given is signed as a model (`DIR/model.sig`) before it is
/// listed, so the signature is sent with it — with the key's certificate chain if `cert` is
/// given. Anything but a local directory is a usage error.
fn sign_models(
    key: &std::path::Path,
    cert: Option<&std::path::Path>,
    paths: &[std::path::PathBuf],
) -> Result<(), Error> {
    let usage = |text: String| Error::Usage(config::UsageError(text));
    let pem = std::fs::read_to_string(key)
        .map_err(|e| usage(format!("--sign-model {}: {e}", key.display())))?;
    let chain = cert
        .map(|c| {
            std::fs::read_to_string(c)
                .map_err(|e| usage(format!("--sign-model-cert {}: {e}", c.display())))
        })
        .transpose()?;
    for path in paths {
        if !std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
            return Err(usage(format!(
                "--sign-model signs directories (a model is a directory): {} is not one",
                path.display()
            )));
        }
        let files = model_sign::sign_directory(path, &pem, chain.as_deref())
            .map_err(|e| usage(format!("--sign-model {}: {e}", path.display())))?;
        tracing::info!(model = %path.display(), files, key = %key.display(), "model signed");
    }
    Ok(())
}

fn log_skipped(s: &Skipped) {
    if s.refused {
        tracing::error!(path = %s.path.display(), "{}", s.reason);
    } else {
        tracing::warn!(path = %s.path.display(), "{}", s.reason);
    }
}

/// The exit status of a finished run: failure if any object failed or was refused.
pub fn exit_status(summary: &Summary) -> ExitStatus {
    if summary.objects_failed > 0 || summary.objects_refused > 0 {
        ExitStatus::Failure
    } else {
        ExitStatus::Success
    }
}

/// Runs `sluice-send` with `args` (program name first) and returns its exit status.
pub fn main_with_args(mut args: Vec<OsString>) -> ExitCode {
    // `sluice-send help` is `--help`, never a file named help.
    if args.len() == 2 && args[1] == "help" {
        args[1] = "--help".into();
    }
    if args.get(1).is_some_and(|a| a == "keygen") {
        return keygen(args[1..].to_vec()).into();
    }
    if args.get(1).is_some_and(|a| a == "watch") {
        return watch_main(args[1..].to_vec());
    }
    if args.get(1).is_some_and(|a| a == "status") {
        return match config::parse(args[1..].to_vec(), watch::status::resolve) {
            Parsed::Run(options) => watch::status::run(&options).into(),
            Parsed::Exit(status) => status.into(),
        };
    }
    let options = match config::parse(args, cli::resolve) {
        Parsed::Run(options) => options,
        Parsed::Exit(status) => return status.into(),
    };
    logging::init(options.shared.log);
    let Some(runtime) = runtime() else {
        return ExitStatus::Failure.into();
    };
    let format = options.shared.log.format;
    let result = on_worker(&runtime, async move {
        let sender = Sender::bind(options).await?;
        sender.run(std::future::pending()).await
    });
    match result {
        Ok(summary) => {
            summary.print(format);
            exit_status(&summary).into()
        }
        Err(e) => {
            logging::error(format, &e);
            e.exit_status().into()
        }
    }
}

/// The runtime of the send loop (one thread: the encoder has its own).
fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| eprintln!("error: cannot start the runtime: {e}"))
        .ok()
}

/// Runs `job` on the runtime's worker, the thread that also waits on the timers and sockets:
/// each pacing wake-up of the send loop is then one thread switch, not two (a `block_on`
/// caller is woken by the worker). A panic in `job` is resumed here.
fn on_worker<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    job: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    match runtime.block_on(runtime.spawn(job)) {
        Ok(value) => value,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // The runtime is only shut down when it is dropped, after this returns.
            Err(e) => unreachable!("the send loop was cancelled: {e}"),
        },
    }
}

/// `sluice-send watch …`: runs until SIGTERM or SIGINT, then exits 0.
fn watch_main(args: Vec<OsString>) -> ExitCode {
    let options = match config::parse(args, cli::resolve_watch) {
        Parsed::Run(options) => options,
        Parsed::Exit(status) => return status.into(),
    };
    logging::init(options.send.shared.log);
    let format = options.send.shared.log.format;
    let Some(runtime) = runtime() else {
        return ExitStatus::Failure.into();
    };
    match on_worker(
        &runtime,
        watch::run(options, sluice_common::service::shutdown_signal()),
    ) {
        Ok(()) => ExitStatus::Success.into(),
        Err(e) => {
            logging::error(format, &e);
            e.exit_status().into()
        }
    }
}

/// `sluice-send keygen DIR`.
fn keygen(args: Vec<OsString>) -> ExitStatus {
    let args = match config::parse_keygen(args, "sluice-send keygen", cli::KEYGEN_ABOUT) {
        Parsed::Run(args) => args,
        Parsed::Exit(status) => return status,
    };
    match keys::generate_sender_keys(&args.dir) {
        Ok(id) => {
            println!(
                "wrote {0}/{1} (keep secret), {0}/{2} (give to the receiver's --trust) and \
                 {0}/{3} (copy to the receiver over a trusted path); signing key id {id}",
                args.dir.display(),
                keys::SENDER_KEY,
                keys::SENDER_PUB,
                keys::LINK_KEY
            );
            ExitStatus::Success
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitStatus::Failure
        }
    }
}

/// Key ids as the audit log and the log lines show them.
fn key_ids(ids: &[sluice_common::keys::KeyId]) -> Vec<String> {
    ids.iter().map(ToString::to_string).collect()
}
