//! `sluice-send watch`: the outbox daemon.
//!
//! ```text
//!  inotify (notify) ─┐                   coordinator thread
//!  rescan timer ─────┼─▶ Settling ─▶ journal "sending" ─▶ job ─▶ encoder thread
//!                    │                                            │ blocks, then Barrier(item)
//!                    │                                            ▼
//!  Passed(item) ◀────┴──────────────────────────────────── send loop (paced; heartbeats
//!       │                                                  while idle; one session)
//!       ▼
//!  journal "sent" ─▶ move to --sent (or delete) ─▶ journal "done"
//! ```
//!
//! One item is encoded at a time, through the same bounded channel as a one-shot run, so the
//! outbox is never read faster than the link carries it and memory stays bounded whatever
//! the outbox holds. Objects are numbered on across items, without a gap (an id skipped would
//! be reported lost whole by the receiver): one session for the daemon's life.
//! The journal (see [`journal`]) makes a `kill -9` cost at most one more sending of the
//! items that were in flight, never a second sending of a finished one.

pub mod held;
pub mod journal;
pub mod outbox;
pub mod request;
pub mod status;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sluice_common::audit::{AuditLog, Event};
use sluice_common::beneath::{Dir, Kind};
use sluice_common::config::UsageError;
use sluice_common::sequence::Sequence;
use sluice_common::service::{Progress, Stage};

use crate::approve::NotApproved;
use crate::counters::Counters;
use crate::encode::{self, EncodeConfig, Passed, Produced};
use crate::error::Error;
use crate::export_budget;
use crate::session::{Ends, Session};
use journal::{Journal, State};
use outbox::{Fingerprint, Listing, Settling};

pub use crate::cli::{AfterSend, WatchOptions};

/// The safety-net rescan when no event came.
const RESCAN_EVERY: Duration = Duration::from_secs(5);
/// A request waiting for the export budget is looked at again this often (the budget's
/// window moves by the minute).
const BUDGET_RECHECK: Duration = Duration::from_secs(60);
/// How long events are gathered before a rescan.
const EVENT_DEBOUNCE: Duration = Duration::from_millis(50);
/// How often `--keep-sent` prunes.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Names warned about (not UTF-8, not a file or directory) that are remembered.
const MAX_STRANGE: usize = 1024;
/// File-system events buffered between rescans (beyond, the rescan finds the changes).
const FS_EVENTS: usize = 4096;

/// Checks the directories, opens the journal, keys and link, and runs until `shutdown`.
pub async fn run(
    options: WatchOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let watch_error = |what: String| move |e: std::io::Error| Error::Watch(format!("{what}: {e}"));
    // Configuration first: a bad policy stops the daemon before it opens anything.
    let approvals = options
        .approval_policy
        .as_deref()
        .map(sluice_common::approval::Policy::load)
        .transpose()
        .map_err(|e| Error::Usage(UsageError(format!("--approval-policy: {e}"))))?;
    let content = options
        .send
        .policy
        .as_deref()
        .map(crate::content::load_policy)
        .transpose()?;
    let gated = approvals.is_some() || content.is_some();
    let Ends {
        recipients,
        signer,
        link_key,
        mut link,
        metrics,
    } = Ends::open(&options.send).await?;
    let Dirs {
        outbox,
        sent,
        refused,
    } = prepare_dirs(&options, gated)?;
    let journal = Journal::open(&options.state).map_err(watch_error(format!(
        "cannot open the journal in --state {}",
        options.state.display()
    )))?;
    let Session {
        config,
        mut send_loop,
        counters,
        overhead: _,
        audit,
        _metrics,
    } = Session::start(
        &options.send,
        recipients,
        signer,
        link_key,
        metrics,
        (crate::progress::Show::Nothing, 0),
    )?;
    let sequence = Sequence::open(&options.state, config.signer.id());
    if let Some(policy) = &approvals {
        let limits: Vec<_> = (policy.budgets().into_iter())
            .map(|(name, limit)| (name.to_string(), limit))
            .collect();
        if !limits.is_empty() {
            // Unreadable: said here; every export under a budget then waits with the reason.
            let usage = export_budget::usage(&options.state).unwrap_or_else(|e| {
                tracing::error!(state = %options.state.display(), "export budget ledger: {e}");
                Default::default()
            });
            counters.set_budget_limits(limits, usage);
        }
    }
    tracing::info!(
        outbox = %options.outbox.display(),
        link = %options.send.shared.link,
        session = format_args!("{:016x}", config.session.0),
        rate = %Session::rate_text(&options.send),
        passes = options.send.passes,
        settle = ?options.settle,
        approvals = approvals.is_some(),
        policy = content.is_some(),
        "watching"
    );

    let (blocks_tx, blocks_rx) = flume::bounded(4);
    let (passed_tx, passed_rx) = flume::unbounded();
    send_loop.report_barriers(passed_tx);
    let (fs_tx, fs_rx) = flume::bounded(FS_EVENTS);
    let (stop_tx, stop_rx) = flume::bounded(1);
    let mut watcher = notify::recommended_watcher(move |event| {
        // Full: the rescan that follows finds the changes anyway.
        let _ = fs_tx.try_send(event);
    })
    .map_err(|e| Error::Watch(format!("cannot watch --outbox: {e}")))?;
    notify::Watcher::watch(
        &mut watcher,
        &options.outbox,
        notify::RecursiveMode::NonRecursive,
    )
    .map_err(|e| {
        Error::Watch(format!(
            "cannot watch --outbox {}: {e}",
            options.outbox.display()
        ))
    })?;

    let (jobs_tx, jobs_rx) = flume::bounded::<Job>(1);
    let (encoded_tx, encoded_rx) = flume::unbounded();
    let spool_base = options.send.spool.clone();
    // The watchdog pings only while neither thread is stuck in one step.
    let progress = Arc::new(Progress::default());
    let mut config = config;
    config.watched = Some(progress.stage("the encoder"));
    let checks = Checks {
        approvals,
        content,
        audit: audit.clone(),
        counters: counters.clone(),
        copies_in: options.state.clone(),
        stage: progress.stage("the outbox checks"),
    };
    let encoder = std::thread::Builder::new()
        .name("sluice-encode".into())
        .spawn(move || {
            encoder(
                config, checks, sequence, spool_base, jobs_rx, blocks_tx, encoded_tx,
            )
        })
        .map_err(Error::Thread)?;
    let coordinator = Coordinator {
        outbox: options.outbox.clone(),
        dir: outbox,
        after: sent,
        refused,
        stage: progress.stage("the outbox coordinator"),
        keep_sent: options.keep_sent,
        settling: Settling::new(options.settle),
        journal,
        counters: counters.clone(),
        jobs: jobs_tx,
        next_token: 0,
        in_flight: Vec::new(),
        encoding: false,
        stuck: BTreeSet::new(),
        strange: BTreeSet::new(),
        audit: audit.clone(),
        said_pending: std::collections::BTreeMap::new(),
        budget_wait: std::collections::BTreeMap::new(),
    };
    let channels = Channels {
        fs: fs_rx,
        passed: passed_rx,
        encoded: encoded_rx,
        stop: stop_rx,
    };
    let coordinator = std::thread::Builder::new()
        .name("sluice-watch".into())
        .spawn(move || coordinator.run(channels))
        .map_err(Error::Thread)?;

    sluice_common::service::ready(&format!("watching {}", options.outbox.display()));
    let _watchdog = sluice_common::service::spawn_watchdog_of(Some(progress));
    let shutdown = std::pin::pin!(shutdown);
    let sent = tokio::select! {
        sent = send_loop.run(link.as_mut(), blocks_rx) => Some(sent),
        () = shutdown => None,
    };
    sluice_common::service::stopping();
    let _ = stop_tx.send(());
    drop(watcher);
    // The coordinator stops at once; the encoder when its channel (owned by the send loop's
    // run, now ended) closes. The send loop itself stays to anchor the last records.
    let coordinated = tokio::task::spawn_blocking(move || {
        let coordinated = coordinator.join();
        let _ = encoder.join();
        coordinated
    })
    .await
    .map_err(|e| Error::Watch(format!("the coordinator stopped: {e}")))?
    .unwrap_or_else(|_| Err(Error::Watch("the coordinator panicked".into())));
    let snapshot = counters.snapshot();
    let [items, refused, pending, left] = counters.outbox();
    // What an operator reads when the daemon stops, as the receiver's summary.
    tracing::info!(
        items_sent = items,
        objects_sent = snapshot.objects_sent,
        objects_failed = snapshot.objects_failed,
        bytes = snapshot.bytes,
        items_refused = refused,
        items_pending = pending,
        items_left = left,
        "watch stopped: {items} item(s) sent ({} object(s), {}), {} object(s) failed; {refused} \
         item(s) refused; {pending} request(s) waiting for approval; {left} item(s) not yet \
         sent",
        snapshot.objects_sent,
        sluice_common::units::Bytes(snapshot.bytes),
        snapshot.objects_failed,
    );
    audit.record(
        sluice_common::audit::Event::new("stop")
            .with("sent", snapshot.objects_sent)
            .with("failed", snapshot.objects_failed),
    );
    let link_error = |source| Error::Link {
        link: options.send.shared.link.to_string(),
        source,
    };
    if let Some(Err(source)) = sent {
        return Err(link_error(source));
    }
    // The daemon's last records, "stop" included, are covered by a head the receiver holds
    // (while it runs, heads follow every heartbeat).
    send_loop
        .anchor_audit_log(link.as_mut())
        .await
        .map_err(link_error)?;
    coordinated
}

/// The outbox and the sent directory, opened once: every later operation on them goes
/// through these fds.
#[derive(Debug)]
struct Dirs {
    outbox: Arc<Dir>,
    /// `None` with `--delete-after-send`.
    sent: Option<Dir>,
    /// `OUTBOX/.refused`, where requests and items the checks refuse are moved with their
    /// reason (`None` without `--approval-policy` or `--policy`).
    refused: Option<Dir>,
}

/// The refused items' directory in the outbox.
pub const REFUSED_DIR: &str = ".refused";

/// Opens `--outbox`, creates and opens the `--sent` directory and checks it is on the outbox's
/// file system (items are renamed into it). A sent directory inside the outbox (the default,
/// `OUTBOX/.sent`) is in a directory other users write to: it is made (mode 0700) and opened
/// from the outbox's fd and never followed, so one planted as a symlink is refused. With
/// `gated` (an approval or content policy), `OUTBOX/.refused` is made the same way.
fn prepare_dirs(options: &WatchOptions, gated: bool) -> Result<Dirs, Error> {
    // A missing or wrong outbox is configuration (exit 2), like a wrong option.
    let bad_outbox = |e: std::io::Error| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "does not exist".to_string(),
            std::io::ErrorKind::NotADirectory => "is not a directory".to_string(),
            _ => format!("cannot be opened: {e}"),
        };
        Error::Usage(UsageError(format!(
            "--outbox {} {why}",
            options.outbox.display()
        )))
    };
    let outbox = Dir::open(&options.outbox).map_err(bad_outbox)?;
    let outbox_entry = outbox.stat_self().map_err(bad_outbox)?;
    let refused = match gated {
        true => Some(own_dir_in_outbox(&outbox, REFUSED_DIR, &|e| {
            Error::Watch(format!(
                "{}: {e}",
                options.outbox.join(REFUSED_DIR).display()
            ))
        })?),
        false => None,
    };
    let sent = match &options.after {
        AfterSend::Move(dir) => dir.clone(),
        AfterSend::Delete => {
            return Ok(Dirs {
                outbox: Arc::new(outbox),
                sent: None,
                refused,
            })
        }
    };
    let sent_error =
        |e: &dyn std::fmt::Display| Error::Watch(format!("--sent {}: {e}", sent.display()));
    let in_outbox = sent.parent() == Some(options.outbox.as_path());
    let name = sent.file_name().and_then(|n| n.to_str());
    let sent_dir = match name {
        Some(name) if in_outbox => {
            // A --sent directory that is itself an item of the outbox would be sent again and
            // again.
            if !outbox::ignored(name) {
                return Err(Error::Usage(UsageError(format!(
                    "--sent {} would be an item of --outbox: name it with a leading `.` (the \
                     default is OUTBOX/.sent) or put it beside the outbox",
                    sent.display()
                ))));
            }
            own_dir_in_outbox(&outbox, name, &sent_error)?
        }
        _ => std::fs::create_dir_all(&sent)
            .and_then(|()| Dir::open(&sent))
            .map_err(|e| sent_error(&e))?,
    };
    let sent_entry = sent_dir.stat_self().map_err(|e| sent_error(&e))?;
    if sent_entry.device != outbox_entry.device {
        return Err(Error::Watch(format!(
            "--sent {} is on another file system than --outbox {}: items are renamed into it, \
             so it must be on the same one",
            sent.display(),
            options.outbox.display()
        )));
    }
    Ok(Dirs {
        outbox: Arc::new(outbox),
        sent: Some(sent_dir),
        refused,
    })
}

/// The daemon's own directory `name` in the outbox, a directory other users write to: made
/// (mode 0700) and opened from the outbox's fd, never followed (one planted as a symlink is
/// refused), and refused if another user made it before the daemon first started.
fn own_dir_in_outbox(
    outbox: &Dir,
    name: &str,
    error: &dyn Fn(&dyn std::fmt::Display) -> Error,
) -> Result<Dir, Error> {
    let dir = outbox
        .create_dir(name, 0o700)
        .and_then(|_| outbox.open_dir(name))
        .map_err(|e| match outbox.stat(name) {
            Ok(Some(entry)) if entry.kind == Kind::Symlink => error(
                &"is a symlink, which the outbox's writers could have planted; refusing to \
                  follow it (remove it, or point --sent at a directory outside the outbox)",
            ),
            _ => error(&e),
        })?;
    let entry = dir.stat_self().map_err(|e| error(&e))?;
    // One a writer made before the daemon first started is theirs: refused, not adopted.
    let me = rustix::process::geteuid().as_raw();
    if entry.uid != me {
        return Err(error(&format!(
            "is owned by uid {}, not by this daemon's user (uid {me}): a writer may have made \
             it; remove it and the daemon makes its own",
            entry.uid
        )));
    }
    if entry.mode & 0o077 != 0 {
        dir.set_mode(0o700).map_err(|e| error(&e))?;
    }
    Ok(dir)
}

/// One item for the encoder thread: the listing that settled.
#[derive(Debug)]
struct Job {
    token: u64,
    name: String,
    listing: Listing,
}

/// The encoder thread's word on a job.
#[derive(Debug)]
struct Encoded {
    token: u64,
    /// Why the encode pipeline stopped, if it did.
    error: Option<String>,
    /// Not sent at all: why (waiting for approvals, or refused by a check).
    held: Option<NotApproved>,
}

/// What every item must pass before its first frame: the export approval (with
/// `--approval-policy`, each item is a request, see [`request`]) and the content policy.
struct Checks {
    approvals: Option<sluice_common::approval::Policy>,
    content: Option<sluice_inspect::policy::Policy>,
    audit: Arc<AuditLog>,
    counters: Arc<Counters>,
    /// Where the files' private copies are made, and the export budget's ledger kept
    /// (`--state`).
    copies_in: PathBuf,
    /// Marks each chunk copied for the watchdog.
    stage: Stage,
}

impl Checks {
    fn gated(&self) -> bool {
        self.approvals.is_some() || self.content.is_some()
    }

    /// The listing to send and the approval its manifests carry, or why nothing of the item
    /// may be sent. On the encoder's thread: every check that reads no content first (a
    /// request short of approvals costs no read of its files), then each file read once into
    /// a private copy ([`held`]), then the checks on the copies, which are what is sent.
    fn admit(
        &self,
        name: &str,
        listing: Listing,
    ) -> Result<(Listing, Option<sluice_protocol::manifest::Approval>), NotApproved> {
        if !self.gated() {
            return Ok((listing, None));
        }
        let refused = |reason: String| NotApproved::refused(reason);
        let (prechecked, listing) = match &self.approvals {
            None => (None, listing),
            Some(policy) => {
                let (prechecked, listing) = request::precheck(policy, name, listing)?;
                // Over the budget now: no file is read while it waits.
                export_budget::fits(&self.copies_in, prechecked.demand())
                    .map_err(|e| NotApproved::over_budget(&e))?;
                (Some(prechecked), listing)
            }
        };
        let Listing { objects, skipped } = listing;
        let (objects, files) =
            held::hold(objects, &self.copies_in, Some(&self.stage)).map_err(refused)?;
        let listing = Listing { objects, skipped };
        let approved = match prechecked {
            None => None,
            Some(prechecked) => Some(prechecked.finish(Some(&files))?),
        };
        if let Some(policy) = &self.content {
            let refused = crate::content::check_policy(policy, &listing.objects);
            if let Some((path, reason)) = refused.first() {
                return Err(NotApproved::refused(format!(
                    "refused by the content policy: {path}: {reason}{}",
                    match refused.len() {
                        1 => String::new(),
                        n => format!(" (and {} more, see the log)", n - 1),
                    }
                )));
            }
        }
        let approval = match approved {
            None => None,
            Some(approved) => {
                // Last: taken from the budget only once nothing else can hold the item back.
                let usage = export_budget::spend(&self.copies_in, &approved.demand)
                    .map_err(|e| NotApproved::over_budget(&e))?;
                self.counters.set_export_budget(&usage);
                let approvers = approved.names.clone();
                tracing::info!(item = %name, approvers = %approvers.join(", "), "export approved");
                self.audit.record(
                    Event::new("approval_checked")
                        .with("item", name)
                        .with(
                            "request_sha256",
                            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                                &approved.carried.request,
                            )),
                        )
                        .with("purpose", approved.request.purpose.clone())
                        .with("requester", approved.request.requester.clone())
                        .with("expires", approved.request.expires.clone())
                        .with("threshold", approved.threshold as u64)
                        .with(
                            "approvers",
                            approved
                                .approvers
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>(),
                        ),
                );
                Some(approved.carried)
            }
        };
        Ok((listing, approval))
    }
}

/// Encodes one item at a time into the send loop's channel, each followed by its barrier.
fn encoder(
    mut config: EncodeConfig,
    checks: Checks,
    mut sequence: Sequence,
    spool_base: Option<PathBuf>,
    jobs: flume::Receiver<Job>,
    blocks: flume::Sender<Produced>,
    encoded: flume::Sender<Encoded>,
) {
    for job in jobs.iter() {
        // Nothing of an item leaves before all of it passed: held items get no barrier (no
        // frame of theirs is in flight), only the coordinator's word.
        let (listing, approval) = match checks.admit(&job.name, job.listing) {
            Ok(admitted) => admitted,
            Err(held) => {
                let word = Encoded {
                    token: job.token,
                    error: None,
                    held: Some(held),
                };
                if encoded.send(word).is_err() {
                    return;
                }
                continue;
            }
        };
        if checks.gated() {
            let bytes: u64 = listing.objects.iter().filter_map(|o| o.size).sum();
            tracing::info!(item = %job.name, bytes, "sending item");
        }
        config.approval = approval;
        let Listing { objects, skipped } = listing;
        let mut error = None;
        for s in skipped {
            if blocks.send(Produced::NotSent(s)).is_err() {
                return;
            }
        }
        let spool = match config.passes {
            1 => Ok(None),
            _ => spool_base
                .as_deref()
                .map_or_else(tempfile::tempdir, |base| {
                    std::fs::create_dir_all(base).and_then(|()| tempfile::tempdir_in(base))
                })
                .map(Some),
        };
        match spool {
            Ok(spool) => {
                config.spool = spool.as_ref().map(|s| s.path().to_path_buf());
                let (ids, encoded) =
                    encode::run_numbered(&config, &objects, &mut sequence, blocks.clone());
                if let Err(e) = encoded {
                    error = Some(e.to_string());
                }
                // The next item's objects are numbered right after this one's, not after its
                // entries (a pack is one object for several): the heartbeats announce every id
                // below the highest sent, and the receiver reports each it never heard of as
                // an object lost whole (issue 31).
                config.first_object += ids;
            }
            Err(e) => error = Some(format!("cannot make a spool directory: {e}")),
        }
        if blocks.send(Produced::Barrier(job.token)).is_err() {
            return;
        }
        if encoded
            .send(Encoded {
                token: job.token,
                error,
                held: None,
            })
            .is_err()
        {
            return;
        }
    }
}

/// What the coordinator waits on.
struct Channels {
    fs: flume::Receiver<notify::Result<notify::Event>>,
    passed: flume::Receiver<Passed>,
    encoded: flume::Receiver<Encoded>,
    stop: flume::Receiver<()>,
}

enum Wake {
    Fs(notify::Result<notify::Event>),
    Passed(Passed),
    Encoded(Encoded),
    Stop,
    Timeout,
}

/// An item given to the encoder and not yet finished.
#[derive(Debug)]
struct InFlight {
    token: u64,
    name: String,
    fingerprint: Fingerprint,
    bytes: u64,
    error: Option<String>,
}

/// Decides which item goes next and what becomes of it; owns the journal.
struct Coordinator {
    /// The outbox as configured, for messages and file-system events.
    outbox: PathBuf,
    /// The outbox, opened once: items are listed, opened, moved and removed through it.
    dir: Arc<Dir>,
    /// Where sent items go (`None`: deleted).
    after: Option<Dir>,
    /// Where refused items go, with their reason (`None`: no checks configured).
    refused: Option<Dir>,
    /// Marks each turn of the loop for the watchdog.
    stage: Stage,
    keep_sent: Option<Duration>,
    settling: Settling,
    journal: Journal,
    counters: Arc<Counters>,
    jobs: flume::Sender<Job>,
    next_token: u64,
    /// Items given to the encoder, oldest first.
    in_flight: Vec<InFlight>,
    /// The encoder is busy with the newest of `in_flight`.
    encoding: bool,
    /// Sent items that could not be moved away: left alone until restart.
    stuck: BTreeSet<String>,
    /// Names already warned about (not UTF-8, not a file or directory).
    strange: BTreeSet<String>,
    audit: Arc<AuditLog>,
    /// The reason last logged for each request waiting for approvals (one per item in the
    /// journal as pending).
    said_pending: std::collections::BTreeMap<String, String>,
    /// Requests waiting for the export budget, and when to look at each again (the window
    /// rolls on: it may fit later without changing).
    budget_wait: std::collections::BTreeMap<String, Instant>,
}

impl Coordinator {
    fn run(mut self, channels: Channels) -> Result<(), Error> {
        self.recover()?;
        let mut rescan_at = Instant::now();
        let mut prune_at = Instant::now();
        loop {
            let step = self.stage.step();
            let now = Instant::now();
            if now >= rescan_at {
                self.rescan(now);
                // From the end of the rescan: a long one is not followed by another at once.
                rescan_at = Instant::now() + RESCAN_EVERY;
            }
            if now >= prune_at {
                self.prune_sent();
                prune_at = now + PRUNE_EVERY;
            }
            self.start_next(now)?;
            self.publish_gauges();
            // Wake for the next settle (looking again first), or the safety-net rescan.
            let deadline = self
                .settling
                .next_settle(now)
                .map_or(rescan_at, |at| at.min(rescan_at))
                .min(prune_at);
            drop(step);
            // The first ready channel wins: the stop and the pipeline's word before file-system
            // events, so a flood of events can never starve them.
            let wake = flume::Selector::new()
                .recv(&channels.stop, |_| Wake::Stop)
                .recv(&channels.passed, |p| p.map_or(Wake::Stop, Wake::Passed))
                .recv(&channels.encoded, |e| e.map_or(Wake::Stop, Wake::Encoded))
                .recv(&channels.fs, |e| e.map_or(Wake::Stop, Wake::Fs))
                .wait_deadline(deadline)
                .unwrap_or(Wake::Timeout);
            match wake {
                Wake::Stop => return Ok(()),
                Wake::Timeout => rescan_at = rescan_at.min(deadline),
                // Opens and reads (the daemon's own among them) change nothing: only a change
                // brings the rescan forward.
                Wake::Fs(event) if is_change(&event) => {
                    self.note_event(event, Instant::now());
                    rescan_at = rescan_at.min(Instant::now() + EVENT_DEBOUNCE);
                }
                Wake::Fs(_) => {}
                Wake::Encoded(Encoded {
                    token,
                    held: Some(held),
                    ..
                }) => {
                    self.encoding = false;
                    self.hold(token, held)?;
                }
                Wake::Encoded(encoded) => {
                    self.encoding = false;
                    if let Some(item) = self.in_flight.iter_mut().find(|i| i.token == encoded.token)
                    {
                        item.error = encoded.error;
                    }
                }
                Wake::Passed(passed) => self.finish(passed)?,
            }
        }
    }

    /// Picks up what the journal says an earlier run left: finished items are only moved
    /// away, interrupted ones are sent again first.
    fn recover(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        for (name, record) in self.journal.open_items() {
            let look = self.list(&name).map(|listing| listing.look());
            let same = look
                .as_ref()
                .is_some_and(|l| l.fingerprint == record.fingerprint);
            match (record.state, look) {
                (State::Sent, Some(_)) if same => {
                    tracing::info!(item = %name, "sent before a restart; moving it away");
                    self.dispose(&name, &record.fingerprint)?;
                }
                (State::Sending, Some(look)) if same => {
                    tracing::info!(item = %name, "interrupted by a restart; sending it again");
                    if let Some(identity) = self.identity(&name) {
                        self.settling.renamed_in(&name, identity, now);
                        self.settling.observe(&name, look, identity, now);
                    }
                }
                // Looked at again: the approval policy may have changed, or the request
                // expired, while the daemon was stopped.
                (State::Pending, Some(look)) if same => {
                    if let Some(identity) = self.identity(&name) {
                        self.settling.renamed_in(&name, identity, now);
                        self.settling.observe(&name, look, identity, now);
                    }
                }
                (State::Failed, Some(_)) if same => {}
                // Gone, or changed since: a new item if it is there at all.
                _ => self.journal_record(&name, &record.fingerprint, State::Done)?,
            }
        }
        Ok(())
    }

    fn journal_record(&mut self, name: &str, fp: &Fingerprint, state: State) -> Result<(), Error> {
        self.journal
            .record(name, fp, state)
            .map_err(|e| Error::Watch(format!("cannot write the journal: {e}")))
    }

    /// Notes a file-system event: an entry renamed into the outbox is complete.
    fn note_event(&mut self, event: notify::Result<notify::Event>, now: Instant) {
        use notify::event::{EventKind, ModifyKind, RenameMode};
        let Ok(event) = event else {
            return;
        };
        let renamed = matches!(
            event.kind,
            EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
        );
        if !renamed {
            return;
        }
        // With `Both` the paths are [from, to]: the last is where it is now.
        let Some(to) = event.paths.last() else {
            return;
        };
        if to.parent() != Some(self.outbox.as_path()) {
            return;
        }
        if let Some(name) = to.file_name().and_then(|n| n.to_str()) {
            // As the entry there now: gone already, or later replaced, it must settle.
            if !outbox::ignored(name) && !self.taken(name) {
                if let Some(identity) = self.identity(name) {
                    self.settling.renamed_in(name, identity, now);
                }
            }
        }
    }

    /// Which entry `name` is now (never followed).
    fn identity(&self, name: &str) -> Option<outbox::Identity> {
        self.dir
            .stat(name)
            .ok()
            .flatten()
            .map(|e| outbox::identity(&e))
    }

    /// The item `name` listed, if it is a file or a directory (never followed).
    fn list(&self, name: &str) -> Option<Listing> {
        match self.dir.stat(name) {
            Ok(Some(entry)) if matches!(entry.kind, Kind::File | Kind::Directory) => {
                Some(Listing::of(&self.dir, name, &self.outbox))
            }
            _ => None,
        }
    }

    /// Whether `name` is warned about for the first time. At most [`MAX_STRANGE`] names are
    /// remembered (a writer making names without end costs no memory and no log beyond).
    fn first_warning(&mut self, name: &str) -> bool {
        if self.strange.len() >= MAX_STRANGE {
            if self.strange.len() == MAX_STRANGE {
                tracing::warn!("{MAX_STRANGE} names left alone so far; no more are listed");
                self.strange.insert(String::new());
            }
            return false;
        }
        self.strange.insert(name.to_string())
    }

    fn taken(&self, name: &str) -> bool {
        self.in_flight.iter().any(|i| i.name == name) || self.stuck.contains(name)
    }

    /// Looks at every candidate in the outbox.
    fn rescan(&mut self, now: Instant) {
        let (names, strange) = match outbox::scan(&self.dir) {
            Ok(scanned) => scanned,
            Err(e) => {
                tracing::error!(outbox = %self.outbox.display(), "cannot read the outbox: {e}");
                return;
            }
        };
        for name in strange {
            let shown = name.to_string_lossy().into_owned();
            if self.first_warning(&shown) {
                tracing::warn!(item = %shown, "not UTF-8: the receiver would refuse it; left alone");
            }
        }
        let present: BTreeSet<String> = names.iter().cloned().collect();
        self.settling.keep_only(&present);
        // Items that waited (for approvals, or after a failure) and are gone: closed.
        for (name, record) in self.journal.open_items() {
            let waiting = matches!(record.state, State::Pending | State::Failed);
            if waiting && !present.contains(&name) && !self.taken(&name) {
                self.said_pending.remove(&name);
                self.budget_wait.remove(&name);
                if let Err(e) = self.journal_record(&name, &record.fingerprint, State::Done) {
                    tracing::error!("{e}");
                }
            }
        }
        for name in names {
            if self.taken(&name) {
                continue;
            }
            let Ok(Some(entry)) = self.dir.stat(&name) else {
                continue;
            };
            if !matches!(entry.kind, Kind::File | Kind::Directory) {
                if self.first_warning(&name) {
                    tracing::warn!(item = %name, "not a file or directory; left alone");
                }
                continue;
            }
            let Some(look) = self.list(&name).map(|listing| listing.look()) else {
                continue;
            };
            // Failed, or waiting for approvals: looked at again once it changes; waiting for
            // the budget: also once a while has passed.
            let budget_due = self.budget_wait.get(&name).is_some_and(|at| *at <= now);
            let failed_as_is = !budget_due
                && self.journal.get(&name).is_some_and(|r| {
                    matches!(r.state, State::Failed | State::Pending)
                        && r.fingerprint == look.fingerprint
                });
            if budget_due {
                self.budget_wait.remove(&name);
            }
            if !failed_as_is {
                self.settling
                    .observe(&name, look, outbox::identity(&entry), now);
            }
        }
    }

    /// Gives the next ready item to the encoder, if it is free.
    fn start_next(&mut self, now: Instant) -> Result<(), Error> {
        if self.encoding {
            return Ok(());
        }
        let Some((name, look)) = self.settling.next_ready(now) else {
            return Ok(());
        };
        // Listed again: what is sent is a listing equal to the one that settled, each file
        // pinned to the inode it had (anything swapped in later is refused when opened).
        let Some(listing) = self.list(&name) else {
            self.settling.forget(&name);
            return Ok(());
        };
        if listing.look() != look {
            if let Some(identity) = self.identity(&name) {
                self.settling.observe(&name, listing.look(), identity, now);
            }
            return Ok(());
        }
        self.settling.forget(&name);
        self.journal_record(&name, &look.fingerprint, State::Sending)?;
        self.next_token += 1;
        let token = self.next_token;
        // Held back by a check, an item is never said to be sending.
        let gated = self.refused.is_some();
        let doing = if gated {
            "checking item"
        } else {
            "sending item"
        };
        tracing::info!(item = %name, bytes = look.bytes, "{doing}");
        let job = Job {
            token,
            name: name.clone(),
            listing,
        };
        if self.jobs.send(job).is_err() {
            return Err(Error::Watch("the encoder stopped".into()));
        }
        self.encoding = true;
        self.in_flight.push(InFlight {
            token,
            name,
            fingerprint: look.fingerprint,
            bytes: look.bytes,
            error: None,
        });
        Ok(())
    }

    /// Every frame of an item left (or its objects failed): move it away, or keep it.
    fn finish(&mut self, passed: Passed) -> Result<(), Error> {
        let Some(at) = self.in_flight.iter().position(|i| i.token == passed.token) else {
            return Ok(());
        };
        let item = self.in_flight.remove(at);
        self.said_pending.remove(&item.name);
        let now_look = self.list(&item.name).map(|listing| listing.look());
        if passed.failed > 0 || item.error.is_some() {
            tracing::error!(
                item = %item.name,
                failed = passed.failed,
                error = item.error.as_deref().unwrap_or("see the errors above"),
                "item not sent whole; left in the outbox, retried once it changes"
            );
            return self.journal_record(&item.name, &item.fingerprint, State::Failed);
        }
        if now_look.map(|l| l.fingerprint) != Some(item.fingerprint.clone()) {
            tracing::warn!(
                item = %item.name,
                "changed while it was being sent; it will be sent again once it settles"
            );
            return self.journal_record(&item.name, &item.fingerprint, State::Done);
        }
        self.journal_record(&item.name, &item.fingerprint, State::Sent)?;
        self.counters.count_sent_item();
        tracing::info!(item = %item.name, bytes = item.bytes, "item sent");
        self.dispose(&item.name, &item.fingerprint)
    }

    /// An item the checks held back, none of it sent: one waiting for approvals stays in the
    /// outbox until it changes (a signature dropped in); a refused one is moved to
    /// `OUTBOX/.refused` beside a file saying why.
    fn hold(&mut self, token: u64, held: NotApproved) -> Result<(), Error> {
        let Some(at) = self.in_flight.iter().position(|i| i.token == token) else {
            return Ok(());
        };
        let item = self.in_flight.remove(at);
        self.budget_wait.remove(&item.name);
        if held.pending {
            if held.recheck {
                self.budget_wait
                    .insert(item.name.clone(), Instant::now() + BUDGET_RECHECK);
            }
            // Said once per reason: a writer touching the item again and again adds no line.
            if self.said_pending.get(&item.name) != Some(&held.reason) {
                let waits_for = if held.recheck {
                    "export budget"
                } else {
                    "approval"
                };
                tracing::warn!(item = %item.name, "waiting for {waits_for}: {}", held.reason);
                self.audit.record(
                    Event::new("pending")
                        .with("item", item.name.as_str())
                        .with("reason", held.reason.as_str()),
                );
                self.said_pending
                    .insert(item.name.clone(), held.reason.clone());
            }
            return self.journal_record(&item.name, &item.fingerprint, State::Pending);
        }
        self.said_pending.remove(&item.name);
        tracing::error!(item = %item.name, "refused, nothing of it sent: {}", held.reason);
        self.counters.count_refused_item();
        self.audit.record(
            Event::new("refused")
                .with("item", item.name.as_str())
                .with("reason", held.reason.as_str()),
        );
        let moved = match &self.refused {
            Some(refused) => move_aside(&self.dir, refused, &item.name),
            None => Err(std::io::Error::other("no refused directory")),
        };
        match moved {
            Ok(to) => {
                tracing::info!(item = %item.name, to = %format!("{REFUSED_DIR}/{to}"), "moved aside");
                // Moved: done, whatever becomes of the reason beside it (it is in the log).
                if let Some(refused) = &self.refused {
                    if let Err(e) = write_reason(refused, &to, &held.reason) {
                        tracing::warn!(item = %item.name, "cannot write {to}.reason: {e}");
                    }
                }
                self.journal_record(&item.name, &item.fingerprint, State::Done)
            }
            Err(e) => {
                tracing::error!(item = %item.name, "cannot be moved aside: {e}; left in the outbox, looked at again once it changes");
                self.journal_record(&item.name, &item.fingerprint, State::Failed)
            }
        }
    }

    /// Moves a sent item to the sent directory (or deletes it), then closes its journal entry.
    fn dispose(&mut self, name: &str, fingerprint: &Fingerprint) -> Result<(), Error> {
        let result = match &self.after {
            Some(sent) => move_to_sent(&self.dir, sent, name).map(drop),
            None => self.dir.remove_all(name),
        };
        match result {
            Ok(()) => self.journal_record(name, fingerprint, State::Done),
            Err(e) => {
                tracing::error!(item = %name, "sent, but cannot be moved out of the outbox: {e}; it will not be sent again");
                self.stuck.insert(name.to_string());
                Ok(())
            }
        }
    }

    /// Removes sent items older than `--keep-sent` (by the time in their name).
    /// Sent items and refused ones (with their reasons) alike.
    fn prune_sent(&self) {
        let Some(keep) = self.keep_sent else {
            return;
        };
        for dir in [&self.after, &self.refused].into_iter().flatten() {
            let Ok(names) = dir.names() else {
                continue;
            };
            let now = SystemTime::now();
            for name in names {
                let Some(sent_at) = sent_time(&name) else {
                    continue;
                };
                if now.duration_since(sent_at).unwrap_or_default() > keep {
                    // Through the directory's fd, never following a link.
                    if let Err(e) = dir.remove_all(&name) {
                        tracing::warn!(item = %name, "cannot prune: {e}");
                    }
                }
            }
        }
    }

    fn publish_gauges(&self) {
        let (mut items, mut bytes) = self.settling.totals();
        items += self.in_flight.len() as u64;
        bytes += self.in_flight.iter().map(|i| i.bytes).sum::<u64>();
        self.counters.set_outbox(items, bytes);
        self.counters
            .set_pending_approval(self.journal.count(State::Pending));
    }
}

/// Whether a file-system event may mean the outbox changed (not an open, read or close).
fn is_change(event: &notify::Result<notify::Event>) -> bool {
    event
        .as_ref()
        .map_or(true, |e| !matches!(e.kind, notify::EventKind::Access(_)))
}

/// `2026-12-02T10:30:00Z-report.pdf`: when it was sent, then its name.
fn sent_name(name: &str, at: SystemTime) -> String {
    format!("{}-{name}", humantime::format_rfc3339_seconds(at))
}

/// The time a sent item's name starts with.
fn sent_time(name: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(name.get(..20)?).ok()
}

/// Renames the item `name` of the outbox into the sent directory, under its time and name,
/// never replacing anything there.
fn move_to_sent(outbox: &Dir, sent: &Dir, name: &str) -> std::io::Result<String> {
    let base = sent_name(name, SystemTime::now());
    for n in 0..1000u32 {
        let to = match n {
            0 => base.clone(),
            n => format!("{base}.{n}"),
        };
        match outbox.rename_new(name, sent, &to) {
            Ok(()) => return sent.sync().map(|()| to),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(
        "too many sent items of that name this second",
    ))
}

/// Moves the refused item `name` into `refused` as `<time>-<name>` (`.N` added if taken),
/// under a name whose `.reason` is free too (an item `a.reason` refused the same second as
/// `a` takes no name from it); returns the name it got.
fn move_aside(outbox: &Dir, refused: &Dir, name: &str) -> std::io::Result<String> {
    let base = sent_name(name, SystemTime::now());
    for n in 0..1000u32 {
        let to = match n {
            0 => base.clone(),
            n => format!("{base}.{n}"),
        };
        // Only the daemon writes in its 0700 directory: free now stays free.
        if refused.stat(&format!("{to}.reason"))?.is_some() {
            continue;
        }
        match outbox.rename_new(name, refused, &to) {
            Ok(()) => return refused.sync().map(|()| to),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(
        "too many refused items of that name this second",
    ))
}

/// `<to>.reason` in `refused`: why the item moved there was refused.
fn write_reason(refused: &Dir, to: &str, reason: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = refused.create_file(&format!("{to}.reason"), 0o600)?;
    file.write_all(format!("{reason}\n").as_bytes())?;
    file.sync_all()?;
    refused.sync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn options(outbox: &Path, sent: &Path) -> WatchOptions {
        use clap::Parser;
        let argv = [
            "sluice-send watch",
            "--link",
            "udp://127.0.0.1:9",
            "--recipient",
            "r.pub",
            "--sign-key",
            "s.key",
            "--link-key",
            "l.key",
            "--state",
            "state",
            "--outbox",
            outbox.to_str().unwrap(),
            "--sent",
            sent.to_str().unwrap(),
        ];
        crate::cli::resolve_watch(crate::cli::WatchArgs::try_parse_from(argv).unwrap()).unwrap()
    }

    #[test]
    fn a_sent_directory_that_would_be_an_item_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = dir.path().join("outbox");
        std::fs::create_dir_all(&outbox).unwrap();
        let err = prepare_dirs(&options(&outbox, &outbox.join("sent")), false).unwrap_err();
        assert!(err.to_string().contains("would be an item"), "{err}");
        assert!(prepare_dirs(&options(&outbox, &outbox.join(".done")), false).is_ok());
        assert!(prepare_dirs(&options(&outbox, &dir.path().join("sent")), false).is_ok());
    }

    /// Finding 3 of the second red-team round: a writer planted `OUTBOX/.sent` as a symlink to
    /// another directory, and sent items were moved into it (and pruned there). Now the
    /// daemon refuses to start on it, and makes its own `.sent` private.
    #[test]
    fn a_sent_directory_planted_as_a_symlink_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let outbox = dir.path().join("outbox");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(&outbox).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, outbox.join(".sent")).unwrap();
        let err = prepare_dirs(&options(&outbox, &outbox.join(".sent")), false).unwrap_err();
        assert!(err.to_string().contains("is a symlink"), "{err}");
        std::fs::remove_file(outbox.join(".sent")).unwrap();
        let dirs = prepare_dirs(&options(&outbox, &outbox.join(".sent")), false).unwrap();
        let mode = std::fs::metadata(outbox.join(".sent"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        // Swapped for a symlink after start: moves still land in the directory opened.
        std::fs::write(outbox.join("item"), b"x").unwrap();
        std::fs::rename(outbox.join(".sent"), dir.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, outbox.join(".sent")).unwrap();
        move_to_sent(&dirs.outbox, dirs.sent.as_ref().unwrap(), "item").unwrap();
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        assert_eq!(
            std::fs::read_dir(dir.path().join("moved")).unwrap().count(),
            1
        );
    }

    #[test]
    fn sent_names_carry_their_time() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_200_000);
        let name = sent_name("report.pdf", at);
        assert_eq!(name, "2026-12-02T08:26:40Z-report.pdf");
        assert_eq!(sent_time(&name), Some(at));
        assert_eq!(sent_time("report.pdf"), None);
    }
}
