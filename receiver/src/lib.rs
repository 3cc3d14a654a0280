//! # sluice-receiver
//!
//! `sluice-recv`, the high-side daemon: it listens on a one-way link, rebuilds the blocks the
//! sender's FEC protected, verifies and decrypts each object and publishes it atomically under
//! `--out`: complete and verified, or not at all. See `README.md` for usage.
//!
//! ```text
//!  link task (tokio)             decoder threads (n)               sink thread
//!  ─────────────────             ───────────────────               ───────────
//!  recv ─► CRC, MAC ─► rx::Assembler
//!     BlockReady ─► take_ready ─Job─► RS decode ─► data: SHA-256, store seg-<i> ─┐
//!     (permits bound the bytes)       manifest: age decrypt, minisign verify,    ├─SinkMsg─►
//!     BlockStalled ─────────Job─►     check path, store; save partial symbols   ─┘
//!                                                                   check segments against
//!                                                                   the manifest, publish:
//!                                                                   decrypt segment by segment
//!                                                                   into a staging file, fsync,
//!                                                                   rename into --out, fsync dir
//! ```
//!
//! - [`cli`]: command line and TOML config.
//! - `driver`: the link task. `decode`: decoder threads. `sink`, `publish`: deciding and
//!   publishing. [`state`]: the restart-safe state directory. `objects`: the object table and
//!   failure reasons. [`summary`]: the final report.
//!
//! The binary is [`main_with_args`]; tests and other programs drive [`Receiver`] in-process.

mod census;
pub mod cli;
mod decode;
mod driver;
pub mod objects;
mod publish;
mod shared;
pub mod sink;
pub mod state;
pub mod summary;

use std::ffi::OsString;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use sluice_common::keys::{self, TrustedKeys};
use sluice_common::link::LinkReceiver;
use sluice_protocol::rx::{Assembler, RxConfig};
use sluice_protocol::wire::LinkKey;
use tokio::sync::Semaphore;

pub use cli::Options;
pub use summary::{Report, Stop};

use crate::objects::Index;
use crate::shared::{Counters, Shared};
use crate::sink::FailedObject;
use crate::state::StateDir;

/// Failure reason of an object the sender announced (heartbeat) of which no frame arrived.
const LOST_WHOLE: &str =
    "lost whole: the sender announced it but none of its frames arrived (or the sender could not read it)";

/// Exit status for bad usage or configuration.
pub const EXIT_USAGE: u8 = 2;
/// Exit status for a runtime error.
pub const EXIT_RUNTIME: u8 = 1;

/// Why the receiver could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad configuration: key files, options (exit status 2).
    #[error("{0}")]
    Config(String),
    /// The file system or the link failed (exit status 1).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Error {
    /// The exit status this error implies.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => EXIT_USAGE,
            Error::Io { .. } => EXIT_RUNTIME,
        }
    }
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// A receiver with its keys loaded, state directory opened and link bound.
#[derive(Debug)]
pub struct Receiver {
    options: Options,
    shared: Arc<Shared>,
    link: LinkReceiver,
    link_key: LinkKey,
}

impl Receiver {
    /// Loads keys, opens `--out` and the state directory (picking up what an earlier run
    /// left), and opens the link.
    pub async fn bind(options: Options) -> Result<Self, Error> {
        let identities = keys::load_identities(&options.identity)
            .map_err(|e| Error::Config(format!("--identity: {e}")))?;
        let trusted = TrustedKeys::load(&options.trust)
            .map_err(|e| Error::Config(format!("--trust: {e}")))?;
        let link_key = keys::load_link_key(&options.link_key)
            .map_err(|e| Error::Config(format!("--link-key: {e}")))?;

        std::fs::create_dir_all(&options.out).map_err(io_error(format!(
            "cannot create --out {}",
            options.out.display()
        )))?;
        let out = std::fs::canonicalize(&options.out).map_err(io_error(format!(
            "cannot open --out {}",
            options.out.display()
        )))?;
        let state_path = options.state_dir();
        let state = StateDir::open(&state_path).map_err(io_error(format!(
            "cannot open the state directory {}",
            state_path.display()
        )))?;
        let state_root = std::fs::canonicalize(state.root())
            .map_err(io_error(format!("cannot open {}", state_path.display())))?;
        let reserved = state_root
            .strip_prefix(&out)
            .ok()
            .and_then(Path::to_str)
            .map(str::to_string);
        let staging = staging_dir(&out, &state)?;

        let max_memory = usize::try_from(options.max_memory).unwrap_or(usize::MAX);
        // In flight between the link task and the disk: as much again as the assembler, and
        // always room for the largest possible block (symbols plus decoded copy).
        let in_flight = max_memory
            .max(2 * sluice_protocol::fec::MAX_BLOCK_BYTES as usize)
            .min(Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            permits: Arc::new(Semaphore::new(in_flight)),
            permits_total: in_flight,
            out,
            state,
            staging,
            identities,
            identity_path: options.identity.clone(),
            trusted,
            reserved,
            index: Mutex::new(Index::default()),
            counters: Counters::default(),
        });
        load_leftovers(&shared)?;
        let link = LinkReceiver::open(&options.link)
            .await
            .map_err(io_error(format!("cannot open --link {}", options.link)))?;
        Ok(Receiver {
            options,
            shared,
            link,
            link_key,
        })
    }

    /// The bound UDP address (e.g. after binding port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.link.local_addr()
    }

    /// Receives until `shutdown` resolves, `--exit-after-idle` passes or the link fails;
    /// then finishes every block in flight and reports.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<Report, Error> {
        let started = std::time::Instant::now();
        let Receiver {
            options,
            shared,
            mut link,
            link_key,
        } = self;
        let config = RxConfig {
            max_buffered_bytes: usize::try_from(options.max_memory).unwrap_or(usize::MAX),
            ..RxConfig::default()
        };
        let permits = shared.permits.clone();

        let (job_tx, job_rx) = crossbeam_channel::unbounded();
        let (sink_tx, sink_rx) = crossbeam_channel::unbounded();
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(2, 4);
        let decoders = decode::spawn(workers, &shared, &job_rx, &sink_tx)
            .map_err(io_error("cannot start decoder threads"))?;
        drop((job_rx, sink_tx));
        let sink =
            sink::spawn(shared.clone(), sink_rx).map_err(io_error("cannot start the sink"))?;

        tracing::info!(
            link = %options.link,
            out = %shared.out.display(),
            state = %shared.state.root().display(),
            "receiving"
        );
        let mut driver = driver::LinkLoop::new(
            Assembler::new(config, link_key),
            config.block_timeout,
            shared.clone(),
            job_tx,
            permits,
            options.exit_after_idle,
        );
        let shutdown = std::pin::pin!(shutdown);
        let stop = driver.run(&mut link, shutdown).await;
        match &stop {
            Stop::Idle => tracing::info!("no frames for --exit-after-idle; finishing"),
            Stop::Shutdown => tracing::info!("shutting down"),
            Stop::LinkError(e) => tracing::error!("link failed: {e}"),
        }
        let link_stats = driver.stats.clone();
        let rx_stats = driver.asm.stats();
        driver.flush().await;
        let lost_whole = driver
            .census
            .missing(|obj| shared.knows(obj), driver::MISSING_CHECKS);
        let drops = *driver.asm.drops();
        drop(driver);
        drop(link);

        let mut sink_report = tokio::task::spawn_blocking(move || {
            for handle in decoders {
                let _ = handle.join();
            }
            sink.join()
        })
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();

        // Objects of which nothing arrived have no entry anywhere else: report them here.
        for obj in &lost_whole.first {
            tracing::warn!(object = %obj, "object failed: {LOST_WHOLE}");
            sink_report.failures.push(FailedObject {
                object: obj.to_string(),
                path: None,
                reason: LOST_WHOLE.to_string(),
            });
        }
        if lost_whole.count > lost_whole.first.len() as u64 {
            tracing::warn!(
                "{} more object(s) lost whole",
                lost_whole.count - lost_whole.first.len() as u64
            );
        }
        let c = &shared.counters;
        let active = match (link_stats.first_frame, sink_report.last_delivery) {
            (Some(first), Some(last)) => Some(last.saturating_duration_since(first)),
            _ => None,
        };
        Ok(Report {
            stop,
            exit_after_idle: options.exit_after_idle.is_some(),
            objects_delivered: Counters::get(&c.objects_delivered),
            objects_already_delivered: Counters::get(&c.objects_already),
            objects_failed: Counters::get(&c.objects_failed) + lost_whole.count,
            failures: sink_report.failures,
            bytes_delivered: Counters::get(&c.bytes_delivered),
            frames_received: link_stats.frames_received,
            sender_frames_sent: link_stats.sender_frames.values().sum(),
            frames_valid: rx_stats.frames_ok,
            drops,
            blocks_decoded: Counters::get(&c.blocks_decoded),
            blocks_recovered: Counters::get(&c.blocks_recovered),
            blocks_stalled: link_stats.blocks_stalled,
            partials_saved: Counters::get(&c.partials_saved),
            partials_restored: Counters::get(&c.partials_restored),
            sessions_seen: rx_stats.sessions_seen,
            elapsed: started.elapsed(),
            active,
        })
    }
}

/// Where staging files go: the state's `tmp/` when it shares a file system with `out`
/// (rename is atomic only within one), else `<out>/.sluice-state/staging` (a reserved name
/// no object can take).
fn staging_dir(out: &Path, state: &StateDir) -> Result<PathBuf, Error> {
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev());
    let state_tmp = state.tmp_path("probe");
    let state_tmp = state_tmp.parent().unwrap_or(state.root()).to_path_buf();
    if dev(out).ok() == dev(&state_tmp).ok() {
        return Ok(state_tmp);
    }
    let staging = out
        .join(sluice_common::paths::RESERVED_STATE_DIR)
        .join("staging");
    tracing::warn!(
        state = %state.root().display(),
        staging = %staging.display(),
        "the state directory is on another file system than --out; staging files in --out"
    );
    std::fs::DirBuilder::new()
        .recursive(true)
        .create(&staging)
        .map_err(io_error(format!("cannot create {}", staging.display())))?;
    Ok(staging)
}

/// Enters what earlier runs left in the state directory into the object table; a stored
/// manifest is verified again (the `--trust` keys may have changed).
fn load_leftovers(shared: &Shared) -> Result<(), Error> {
    let leftovers = shared.state.scan().map_err(io_error(format!(
        "cannot read the state directory {}",
        shared.state.root().display()
    )))?;
    if !leftovers.is_empty() {
        tracing::info!(
            objects = leftovers.len(),
            "resuming incomplete objects from the state directory"
        );
    }
    let mut index = shared.index();
    for (obj, left) in leftovers {
        let manifest = match left
            .manifest
            .as_deref()
            .map(|e| decode::verify_envelope(shared, e))
        {
            None => None,
            Some(Ok(m)) if m.session == obj.session && m.object == obj.object => Some(m),
            Some(Ok(_)) | Some(Err(_)) => {
                tracing::warn!(object = %obj, "discarding a stored manifest that no longer verifies");
                let _ = shared.state.remove_object(obj);
                continue;
            }
        };
        let entry = index.insert_leftover(obj);
        entry.manifest = manifest.map(Arc::new);
        entry.segments = left.segments.into_iter().collect();
        entry.partials = left.partials;
    }
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `sluice-recv keygen DIR`.
fn keygen(args: &[OsString]) -> ExitCode {
    let parsed = match cli::KeygenArgs::try_parse_from(args) {
        Ok(parsed) => parsed,
        Err(e) => return clap_exit(&e),
    };
    match keys::generate_receiver_keys(&parsed.dir) {
        Ok(recipient) => {
            eprintln!(
                "wrote {} and {}",
                parsed.dir.join(keys::RECEIVER_KEY).display(),
                parsed.dir.join(keys::RECEIVER_PUB).display()
            );
            println!("{recipient}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

use clap::Parser as _;

/// Prints a clap error: `--help`/`--version` as clap does, anything else as one line.
fn clap_exit(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        _ => {
            let text = e.render().to_string();
            let line = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("error: bad usage")
                .trim();
            eprintln!("{line} (see --help)");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// The whole `sluice-recv` program; `args` includes the program name.
pub fn main_with_args(args: Vec<OsString>) -> ExitCode {
    if args.get(1).is_some_and(|a| a == "keygen") {
        return keygen(&args[1..]);
    }
    let options = match cli::parse(&args) {
        Ok(options) => options,
        Err(cli::ParseError::Clap(e)) => return clap_exit(&e),
        Err(cli::ParseError::Usage(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    sluice_common::logging::init(options.log_format, options.verbose, options.quiet);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let format = options.log_format;
    let result = runtime.block_on(async move {
        let receiver = Receiver::bind(options).await?;
        receiver.run(shutdown_signal()).await
    });
    match result {
        Ok(report) => {
            print_summary(&report, format);
            ExitCode::from(report.exit_code())
        }
        Err(e) => {
            match format {
                sluice_common::logging::LogFormat::Human => eprintln!("error: {e}"),
                sluice_common::logging::LogFormat::Json => tracing::error!("{e}"),
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// Prints the summary: a human block on stderr, or one JSON line (stderr, with the logs).
pub fn print_summary(report: &Report, format: sluice_common::logging::LogFormat) {
    match format {
        sluice_common::logging::LogFormat::Human => eprint!("{}", report.human()),
        sluice_common::logging::LogFormat::Json => eprintln!("{}", report.json()),
    }
}
