//! # sluice-receiver
//!
//! `sluice-recv`, the high-side daemon: it listens on a one-way link, rebuilds the blocks the
//! sender's FEC protected, verifies and decrypts each object and publishes it atomically under
//! `--out`: complete and verified, or not at all. See `README.md` for usage.
//!
//! ```text
//!  link task (tokio)               delivery thread                 workers
//!  ─────────────────               ───────────────                 ───────
//!  flows: FrameRx ─▶ CRC, MAC       Delivery (sans-IO):             decoders 1..n: FEC-decode,
//!  (a task per link) ─▶ batches ─▶
//!  rx::Assembler ──LinkEvent──▶    the object table, the census,   store segments, open and
//!     (permits bound the bytes)    every decision about objects    verify manifests, keep
//!  ◀──LinkCommand── mark done,      │ ▲                              stalled symbols
//!     restore                       │ └──────── Reply ◀──────────  publisher: stage, publish
//!                                   └─ jobs ───────────────────▶   (rename, fsync), commit
//!                                   └─ outcomes ─▶ log line, report's failures, …
//! ```
//!
//! One owner per fact: the assembler belongs to the link task, the object table to the
//! delivery core (driven by one thread), the staging files to the publisher; they talk through
//! one typed channel each way, and nothing about objects sits behind a lock. Outcomes
//! (delivered, already delivered, failed, lost whole) are emitted at one place, to
//! subscribers; counters live in one struct that the report reads.
//!
//! - [`cli`]: command line and TOML config. `error`: start-up errors.
//! - `flow`: one task per link, verifying its frames. `link_task`: verified frames to
//!   assembler events. `delivery`: the object table and its rules;
//!   `dispatch`: the thread that drives it. `workers`: the decoder pool. `publisher`,
//!   `publish`: turning objects into files; `gate`: the content policy; `models`, `held`:
//!   files that wait for their model's signature (`[signing]`). [`state`]: the restart-safe state directory;
//!   [`footprint`]: what an incomplete object holds there as `du` counts it (`--max-state`).
//!   [`segment`]: a stored segment and its record there. [`object`]: the key every module
//!   names an object by.
//! - [`outcome`]: outcomes and their subscribers. [`counters`], [`summary`]: the figures.
//!
//! Where things go: a new link is a backend in `sluice_common::link`; a new consumer of
//! outcomes (audit log, metrics) is a [`Subscriber`](sluice_common::outcome::Subscriber) added
//! in [`Receiver::run`]; a new check before publication belongs to the publisher's jobs, decided
//! by the delivery core.
//!
//! The binary is [`main_with_args`]; tests and other programs drive [`Receiver`] in-process.

pub mod cli;
mod content_policy;
mod context;
pub mod counters;
mod delivery;
mod dispatch;
mod error;
mod export_budget;
pub mod failure;
mod flow;
pub mod footprint;
mod gate;
mod heads;
mod held;
mod link_health;
mod link_task;
pub mod manual;
mod models;
pub mod object;
pub mod outcome;
mod publish;
mod publisher;
mod records;
mod release;
mod s3_upload;
pub mod segment;
mod sink;
pub mod state;
pub mod summary;
mod workers;

use std::ffi::OsString;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use sluice_common::approval::Policy;
use sluice_common::audit::{AuditLog, Event};
use sluice_common::beneath::Dir;
use sluice_common::config::{self, Parsed, UsageError};
use sluice_common::exit::ExitStatus;
use sluice_common::keys::{self, TrustedKeys};
use sluice_common::link::FrameRx;
use sluice_common::logging::{self, LogFormat};
use sluice_common::outcome::Outcomes;
use sluice_common::s3;
use sluice_common::units::Bytes;
use sluice_protocol::rx::{Assembler, RxConfig};
use sluice_protocol::wire::LinkKey;
use tokio::sync::Semaphore;

pub use cli::Options;
pub use error::Error;
pub use summary::{Report, Stop};

use crate::context::Context;
use crate::counters::Counters;
use crate::delivery::{Delivery, Limits, Resumed};
use crate::error::{io_error, key_error};
use crate::outcome::{AuditTrail, FailureList, LogLine};
use crate::state::StateDir;

/// Messages from the link task and the workers waiting for the delivery thread: if it falls
/// this far behind, the link task waits (and the kernel drops datagrams) rather than memory
/// growing.
const INPUT_QUEUE: usize = 4096;

/// A receiver with its keys loaded, state directory opened and link bound.
#[derive(Debug)]
pub struct Receiver {
    options: Options,
    ctx: Arc<Context>,
    /// Every link, with its name, each read by its own flow task.
    links: Vec<(String, Box<dyn FrameRx>)>,
    link_key: LinkKey,
    leftovers: Vec<Resumed>,
    limits: Limits,
    /// Bound at start (so a busy port is a start-up error), served while running.
    metrics: Option<tokio::net::TcpListener>,
    /// The audit log, open from start to finish.
    audit: Arc<AuditLog>,
    /// `--out` when it is an object store.
    store: Option<sink::s3::Store>,
}

impl Receiver {
    /// Loads keys, opens `--out` and the state directory (picking up what an earlier run
    /// left), and opens the link.
    pub async fn bind(options: Options) -> Result<Self, Error> {
        let identities = keys::load_identities(&options.identity).map_err(key_error("identity"))?;
        let trusted = TrustedKeys::load(&options.trust).map_err(key_error("trust"))?;
        let approval = match &options.approval_policy {
            None => None,
            Some(path) => Some(Arc::new(Policy::load(path).map_err(|e| {
                Error::Usage(UsageError(format!("--approval-policy: {e}")))
            })?)),
        };
        let link_key =
            keys::load_link_key(&options.shared.link_key).map_err(key_error("link-key"))?;

        let usage = |e: String| Error::Usage(UsageError(e));
        let store = match options.out.to_str().and_then(s3::Target::parse) {
            Some(target) => Some(sink::s3::Store {
                target: target.map_err(usage)?,
                settings: options.s3.clone(),
            }),
            None => None,
        };
        let out = match &store {
            None => {
                std::fs::create_dir_all(&options.out).map_err(io_error(format!(
                    "cannot create --out {}",
                    options.out.display()
                )))?;
                Some(Dir::open(&options.out).map_err(io_error(format!(
                    "cannot open --out {}",
                    options.out.display()
                )))?)
            }
            Some(target) => {
                if options.state.is_none() {
                    return Err(usage(format!(
                        "--out {}: an object store needs --state (a local directory for what \
                         is on its way)",
                        options.out.display()
                    )));
                }
                // A wrong endpoint, key or bucket fails here, before the link is opened.
                s3::probe(&target.target, &target.settings)
                    .await
                    .map_err(usage)?;
                None
            }
        };
        let gate = match &options.policy {
            None => None,
            Some(path) => {
                let delivered = match &store {
                    Some(store) => content_policy::Out::Store(&store.target),
                    None => content_policy::Out::Dir(&options.out),
                };
                let gate = content_policy::ContentPolicy::open(path, delivered, &options.s3)
                    .map_err(|e| usage(format!("--policy: {e}")))?;
                // A quarantine in a store is checked as --out is, before the link is opened.
                if let Some(quarantine) = gate.store() {
                    s3::probe(quarantine.target(), &options.s3)
                        .await
                        .map_err(|e| usage(format!("--policy: quarantine {e}")))?;
                }
                Some(gate)
            }
        };
        let state_path = options.state_dir();
        let state = match &out {
            Some(out) => StateDir::open(&state_path, out, &options.out),
            // Staging in the state directory itself: nothing is renamed out of it. Made
            // private, as the state directory must be.
            None => std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&state_path)
                .and_then(|()| Dir::open(&state_path))
                .map_err(|e| crate::state::StateError::Io {
                    what: format!("cannot open --state {}", state_path.display()),
                    source: e,
                })
                .and_then(|root| StateDir::open(&state_path, &root, &state_path)),
        }
        .map_err(error::state_error)?;
        let reserved = out
            .as_ref()
            .and_then(|_| reserved_name(&options.out, &state_path));
        let mode_mask = options.mode_mask & !context::process_umask();
        let max_state_bytes = match options.max_state {
            Some(bytes) => bytes,
            None => default_max_state(&state),
        };
        let limits = Limits {
            max_objects: options.max_objects,
            max_state_bytes,
            disk: state.disk(),
            // Packs and manifests waiting for the publisher: as much as the assembler holds.
            max_queued_bytes: options.max_memory,
        };

        let max_memory = usize::try_from(options.max_memory).unwrap_or(usize::MAX);
        // In flight between the link task and the disk: as much again as the assembler, and
        // always room for the largest possible block (symbols plus decoded copy).
        let in_flight = max_memory
            .max(2 * sluice_protocol::fec::MAX_BLOCK_BYTES as usize)
            .min(Semaphore::MAX_PERMITS);
        let ctx = Arc::new(Context {
            permits: Arc::new(Semaphore::new(in_flight)),
            permits_total: in_flight,
            out,
            out_path: options.out.clone(),
            state,
            mode_mask,
            identities,
            identity_path: options.identity.clone(),
            trusted,
            reserved,
            approval,
            gate,
            stopping: Default::default(),
        });
        let leftovers = load_leftovers(&ctx)?;
        tracing::debug!(
            max_objects = limits.max_objects,
            max_state = %Bytes(limits.max_state_bytes),
            block = limits.disk.block(),
            mode_mask = format_args!("{:o}", ctx.mode_mask),
            "limits"
        );
        let links = options
            .shared
            .link
            .open_rx_each()
            .await
            .map_err(io_error(format!(
                "cannot open --link {}",
                options.shared.link
            )))?;
        let metrics = match options.shared.metrics {
            None => None,
            Some(addr) => Some(
                sluice_common::metrics::bind(addr)
                    .await
                    .map_err(io_error(format!("cannot listen on --metrics {addr}")))?,
            ),
        };
        let audit_path = options.audit_log_path();
        let retention = options.shared.audit_retention;
        let audit = Arc::new(
            AuditLog::open_with_retention(&audit_path, retention).map_err(io_error(format!(
                "cannot open --audit-log {}",
                audit_path.display()
            )))?,
        );
        let trusted: Vec<String> = ctx.trusted.ids().map(|id| id.to_string()).collect();
        let recipients: Vec<String> = ctx
            .identities
            .iter()
            .map(|i| i.to_public().to_string())
            .collect();
        audit.record(
            Event::new("start")
                .with("program", "sluice-recv")
                .with("version", env!("CARGO_PKG_VERSION"))
                .with("config_sha256", sluice_common::audit::digest_of(&options))
                .with("link", options.shared.link.to_string())
                .with("out", options.out.display().to_string())
                .with("trusted_signers", trusted)
                .with("recipients", recipients)
                .with(
                    "approval_policy",
                    ctx.approval.as_ref().map(|p| p.summary()),
                ),
        );
        Ok(Receiver {
            options,
            ctx,
            links,
            link_key,
            leftovers,
            limits,
            metrics,
            audit,
            store,
        })
    }

    /// The bound UDP address (e.g. after binding port 0); the first link's when there are
    /// several.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.links.first().and_then(|(_, link)| link.local_addr())
    }

    /// Every link's bound UDP address, in `--link` order.
    pub fn local_addrs(&self) -> Vec<Option<SocketAddr>> {
        self.links
            .iter()
            .map(|(_, link)| link.local_addr())
            .collect()
    }

    /// Receives until `shutdown` resolves, `--exit-after-idle` passes or the link fails;
    /// then finishes every block in flight and reports.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<Report, Error> {
        let started = std::time::Instant::now();
        let Receiver {
            options,
            ctx,
            links,
            link_key,
            leftovers,
            limits,
            metrics,
            audit,
            store,
        } = self;
        let config = RxConfig {
            max_buffered_bytes: usize::try_from(options.max_memory).unwrap_or(usize::MAX),
            ..RxConfig::default()
        };
        let counters = Arc::new(Counters::new());
        // Served until dropped at the end of the run.
        let _metrics = metrics.map(|listener| {
            let counters = counters.clone();
            sluice_common::metrics::spawn(listener, Arc::new(move || counters.metrics()))
        });
        let (input_tx, input_rx) = flume::bounded(INPUT_QUEUE);
        let (decode_tx, decode_rx) = flume::unbounded();
        let (publish_tx, publish_rx) = flume::unbounded();
        let (command_tx, command_rx) = flume::unbounded();

        let mut threads = workers::spawn(options.shared.workers, &ctx, &decode_rx, &input_tx)
            .map_err(io_error("cannot start decoder threads"))?;
        drop(decode_rx);
        threads.push(
            publisher::spawn(
                ctx.clone(),
                counters.clone(),
                sink::open(store, counters.clone()),
                publish_rx,
                input_tx.clone(),
            )
            .map_err(io_error("cannot start the publisher"))?,
        );
        let failures = FailureList::default();
        let mut outcomes = Outcomes::default();
        outcomes.subscribe(LogLine::default());
        outcomes.subscribe(failures.clone());
        outcomes.subscribe(AuditTrail::new(audit.clone(), ctx.approval.clone()));
        let dispatch = dispatch::Dispatch {
            core: Delivery::resume(leftovers, limits),
            ctx: ctx.clone(),
            decode: decode_tx,
            publish: publish_tx,
            link: command_tx,
            outcomes,
            counters: counters.clone(),
            audit: audit.clone(),
        };
        threads.push(
            dispatch::spawn(dispatch, input_rx)
                .map_err(io_error("cannot start the delivery thread"))?,
        );

        tracing::info!(
            link = %options.shared.link,
            out = %ctx.out_path.display(),
            state = %ctx.state.path().display(),
            "receiving"
        );
        let mut flows = flow::Flows::spawn(links, &link_key);
        let mut link_task = link_task::LinkTask::new(
            Assembler::new(config, link_key),
            config.link_timeout,
            input_tx,
            command_rx,
            ctx.permits.clone(),
            options.exit_after_idle,
            counters.clone(),
        );
        // Under systemd (Type=notify): up, and watched while the link task's runtime lives.
        sluice_common::service::ready("receiving");
        let watchdog = sluice_common::service::spawn_watchdog();
        let shutdown = std::pin::pin!(shutdown);
        let stop = link_task.run(&mut flows, shutdown).await;
        sluice_common::service::stopping();
        ctx.stop_waiting();
        drop(watchdog);
        match &stop {
            Stop::Idle => tracing::info!("no frames for --exit-after-idle; finishing"),
            Stop::Shutdown => tracing::info!("shutting down"),
            Stop::LinkError(e) => tracing::error!("link failed: {e}"),
        }
        link_task.finish(flows).await;
        // The delivery thread ends once every job answered; then the workers run out of jobs.
        tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await
        .map_err(|e| Error::Io {
            what: "waiting for the workers".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let report = Report::new(
            stop,
            options.exit_after_idle.is_some(),
            counters.snapshot(),
            failures.take(),
            started.elapsed(),
        );
        audit.record(
            Event::new("stop")
                .with("delivered", report.objects_delivered)
                .with("already_delivered", report.objects_already_delivered)
                .with("failed", report.objects_failed)
                .with("bytes_delivered", report.bytes_delivered),
        );
        Ok(report)
    }
}

/// The state directory's path relative to `--out` when it lies inside it (no object may land
/// there); worked out once at start from the operator's paths.
fn reserved_name(out: &Path, state: &Path) -> Option<String> {
    let out = std::fs::canonicalize(out).ok()?;
    let state = std::fs::canonicalize(state).ok()?;
    state
        .strip_prefix(&out)
        .ok()
        .and_then(Path::to_str)
        .filter(|rel| !rel.is_empty())
        .map(str::to_string)
}

/// `--max-state` when not given: half the free space of the state's file system at start,
/// and at least 1 GiB.
fn default_max_state(state: &StateDir) -> u64 {
    rustix::fs::fstatvfs(state.root())
        .map(|v| v.f_bavail.saturating_mul(v.f_frsize) / 2)
        .unwrap_or(u64::MAX)
        .max(1 << 30)
}

/// What earlier runs left in the state directory; a stored manifest is verified again (the
/// `--trust` keys may have changed) and dropped with its object if it no longer verifies.
fn load_leftovers(ctx: &Context) -> Result<Vec<Resumed>, Error> {
    let leftovers = ctx.state.scan().map_err(error::state_error)?;
    if !leftovers.is_empty() {
        tracing::info!(
            objects = leftovers.len(),
            "resuming incomplete objects from the state directory"
        );
    }
    let mut resumed = Vec::with_capacity(leftovers.len());
    for (obj, left) in leftovers {
        let manifest = match left.manifest.as_deref().map(|envelope| {
            let (manifest, signer, _) =
                sluice_common::envelope::verify_envelope(envelope, &ctx.trusted)
                    .map_err(|e| workers::open_failure(ctx, e))?;
            // Only a segmented file's manifest is ever stored.
            match manifest.entries.as_slice() {
                [entry] if !manifest.is_inline() => publish::check_path(ctx, &entry.path)?,
                _ => return Err(failure::Failure::ManifestMismatch),
            }
            // The policy may have changed since (or the approval expired meanwhile).
            workers::check_approval(ctx, &manifest)?;
            Ok::<_, failure::Failure>((manifest, signer.0))
        }) {
            None => None,
            Some(Ok((m, signer))) if m.session == obj.session && m.object == obj.object => {
                Some((m, signer))
            }
            Some(Ok(_)) | Some(Err(_)) => {
                tracing::warn!(object = %obj, "discarding a stored manifest that no longer verifies");
                let _ = ctx.state.remove_object(obj);
                continue;
            }
        };
        resumed.push(Resumed {
            obj,
            manifest,
            segments: left.segments,
            partials: left.partials,
            footprint: left.footprint,
        });
    }
    Ok(resumed)
}

/// `sluice-recv keygen DIR`.
fn keygen(args: Vec<OsString>) -> ExitStatus {
    let parsed = match config::parse_keygen(args, "sluice-recv keygen", cli::KEYGEN_ABOUT) {
        Parsed::Run(parsed) => parsed,
        Parsed::Exit(status) => return status,
    };
    match keys::generate_receiver_keys(&parsed.dir) {
        Ok(recipient) => {
            eprintln!(
                "wrote {} and {}",
                parsed.dir.join(keys::RECEIVER_KEY).display(),
                parsed.dir.join(keys::RECEIVER_PUB).display()
            );
            println!("{recipient}");
            ExitStatus::Success
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitStatus::Failure
        }
    }
}

/// The whole `sluice-recv` program; `args` includes the program name.
pub fn main_with_args(args: Vec<OsString>) -> ExitCode {
    if args.get(1).is_some_and(|a| a == "keygen") {
        return keygen(args[1..].to_vec()).into();
    }
    if args.get(1).is_some_and(|a| a == "release") {
        return release::main(args[1..].to_vec()).into();
    }
    let options = match config::parse(args, cli::resolve) {
        Parsed::Run(options) => options,
        Parsed::Exit(status) => return status.into(),
    };
    logging::init(options.shared.log);
    // The link task runs on this thread; each link's flow (reading and verifying its frames)
    // on a worker: one per link, up to the cores there are.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.shared.link.specs().len().clamp(1, cores))
        .thread_name("link-flow")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitStatus::Failure.into();
        }
    };
    let format = options.shared.log.format;
    let result = runtime.block_on(async move {
        let receiver = Receiver::bind(options).await?;
        receiver
            .run(sluice_common::service::shutdown_signal())
            .await
    });
    match result {
        Ok(report) => {
            print_summary(&report, format);
            report.exit_status().into()
        }
        Err(e) => {
            logging::error(format, &e);
            e.exit_status().into()
        }
    }
}

/// Prints the summary: a human block on stderr, or one JSON line (stderr, with the logs).
pub fn print_summary(report: &Report, format: LogFormat) {
    match format {
        LogFormat::Human => eprint!("{}", report.human()),
        LogFormat::Json => eprintln!("{}", report.json()),
    }
}
