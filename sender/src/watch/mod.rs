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
//! the outbox holds. Objects are numbered on across items: one session for the daemon's life.
//! The journal (see [`journal`]) makes a `kill -9` cost at most one more sending of the
//! items that were in flight, never a second sending of a finished one.

pub mod journal;
pub mod outbox;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sluice_common::sequence::Sequence;

use crate::counters::Counters;
use crate::encode::{self, EncodeConfig, Passed, Produced};
use crate::objects;
use crate::{Ends, Error, Session};
use journal::{Journal, State};
use outbox::{Fingerprint, Settling};

pub use crate::cli::{AfterSend, WatchOptions};

/// The safety-net rescan when no event came.
const RESCAN_EVERY: Duration = Duration::from_secs(5);
/// How long events are gathered before a rescan.
const EVENT_DEBOUNCE: Duration = Duration::from_millis(50);
/// How often `--keep-sent` prunes.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// File-system events buffered between rescans (beyond, the rescan finds the changes).
const FS_EVENTS: usize = 4096;

/// Checks the directories, opens the journal, keys and link, and runs until `shutdown`.
pub async fn run(
    options: WatchOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), Error> {
    let watch_error = |what: String| move |e: std::io::Error| Error::Watch(format!("{what}: {e}"));
    let Ends {
        recipients,
        signer,
        link_key,
        mut link,
        metrics,
    } = Ends::open(&options.send).await?;
    let sent_dir = prepare_dirs(&options)?;
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
    } = Session::start(&options.send, recipients, signer, link_key, metrics, None)?;
    let sequence = Sequence::open(&options.state, config.signer.id());
    tracing::info!(
        outbox = %options.outbox.display(),
        link = %options.send.shared.link,
        session = format_args!("{:016x}", config.session.0),
        rate = %Session::rate_text(&options.send),
        passes = options.send.passes,
        settle = ?options.settle,
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
    let encoder = std::thread::Builder::new()
        .name("sluice-encode".into())
        .spawn(move || encoder(config, sequence, spool_base, jobs_rx, blocks_tx, encoded_tx))
        .map_err(Error::Thread)?;
    let coordinator = Coordinator {
        outbox: options.outbox.clone(),
        after: match &options.after {
            AfterSend::Delete => None,
            AfterSend::Move(_) => Some(sent_dir),
        },
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
    let _watchdog = sluice_common::service::spawn_watchdog();
    let shutdown = std::pin::pin!(shutdown);
    let sent = tokio::select! {
        sent = send_loop.run(link.as_mut(), blocks_rx) => Some(sent),
        () = shutdown => None,
    };
    sluice_common::service::stopping();
    let _ = stop_tx.send(());
    drop(watcher);
    // The coordinator stops at once; the encoder when its channel closes.
    drop(send_loop);
    let coordinated = tokio::task::spawn_blocking(move || {
        let coordinated = coordinator.join();
        let _ = encoder.join();
        coordinated
    })
    .await
    .map_err(|e| Error::Watch(format!("the coordinator stopped: {e}")))?
    .unwrap_or_else(|_| Err(Error::Watch("the coordinator panicked".into())));
    let snapshot = counters.snapshot();
    audit.record(
        sluice_common::audit::Event::new("stop")
            .with("sent", snapshot.objects_sent)
            .with("failed", snapshot.objects_failed),
    );
    if let Some(Err(source)) = sent {
        return Err(Error::Link {
            link: options.send.shared.link.to_string(),
            source,
        });
    }
    coordinated
}

/// Checks `--outbox` and `--state`, creates the `--sent` directory and checks it is on the
/// outbox's file system (items are renamed into it). Returns it.
fn prepare_dirs(options: &WatchOptions) -> Result<PathBuf, Error> {
    use std::os::unix::fs::MetadataExt;
    let outbox = std::fs::metadata(&options.outbox)
        .ok()
        .filter(std::fs::Metadata::is_dir)
        .ok_or_else(|| {
            Error::Watch(format!(
                "--outbox {} is not a directory",
                options.outbox.display()
            ))
        })?;
    let sent = match &options.after {
        AfterSend::Move(dir) => dir.clone(),
        AfterSend::Delete => return Ok(PathBuf::new()),
    };
    // A --sent directory that is itself an item of the outbox would be sent again and again.
    let visible_in_outbox = sent.parent() == Some(options.outbox.as_path())
        && sent
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| !outbox::ignored(n));
    if visible_in_outbox {
        return Err(Error::Watch(format!(
            "--sent {} would be an item of --outbox: name it with a leading `.` (the default is \
             OUTBOX/.sent) or put it beside the outbox",
            sent.display()
        )));
    }
    std::fs::create_dir_all(&sent)
        .and_then(|()| std::fs::metadata(&sent))
        .map_err(|e| Error::Watch(format!("--sent {}: {e}", sent.display())))
        .and_then(|meta| {
            if meta.dev() == outbox.dev() {
                Ok(sent)
            } else {
                Err(Error::Watch(format!(
                    "--sent {} is on another file system than --outbox {}: items are renamed \
                     into it, so it must be on the same one",
                    sent.display(),
                    options.outbox.display()
                )))
            }
        })
}

/// One item for the encoder thread.
#[derive(Debug)]
struct Job {
    token: u64,
    path: PathBuf,
}

/// The encoder thread's word on a job.
#[derive(Debug)]
struct Encoded {
    token: u64,
    /// Why the encode pipeline stopped, if it did.
    error: Option<String>,
}

/// Encodes one item at a time into the send loop's channel, each followed by its barrier.
fn encoder(
    mut config: EncodeConfig,
    mut sequence: Sequence,
    spool_base: Option<PathBuf>,
    jobs: flume::Receiver<Job>,
    blocks: flume::Sender<Produced>,
    encoded: flume::Sender<Encoded>,
) {
    for job in jobs.iter() {
        let (objects, skipped) = objects::enumerate(std::slice::from_ref(&job.path), None);
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
                if let Err(e) = encode::run(&config, &objects, &mut sequence, blocks.clone()) {
                    error = Some(e.to_string());
                }
            }
            Err(e) => error = Some(format!("cannot make a spool directory: {e}")),
        }
        // Packs take fewer ids than entries, never more.
        config.first_object += objects.len() as u64;
        if blocks.send(Produced::Barrier(job.token)).is_err() {
            return;
        }
        if encoded
            .send(Encoded {
                token: job.token,
                error,
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
    outbox: PathBuf,
    /// Where sent items go (`None`: deleted).
    after: Option<PathBuf>,
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
}

impl Coordinator {
    fn run(mut self, channels: Channels) -> Result<(), Error> {
        self.recover()?;
        let mut rescan_at = Instant::now();
        let mut prune_at = Instant::now();
        loop {
            let now = Instant::now();
            if now >= rescan_at {
                self.rescan(now);
                rescan_at = now + RESCAN_EVERY;
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
            let wake = flume::Selector::new()
                .recv(&channels.fs, |e| e.map_or(Wake::Stop, Wake::Fs))
                .recv(&channels.passed, |p| p.map_or(Wake::Stop, Wake::Passed))
                .recv(&channels.encoded, |e| e.map_or(Wake::Stop, Wake::Encoded))
                .recv(&channels.stop, |_| Wake::Stop)
                .wait_deadline(deadline)
                .unwrap_or(Wake::Timeout);
            match wake {
                Wake::Stop => return Ok(()),
                Wake::Timeout => rescan_at = rescan_at.min(deadline),
                Wake::Fs(event) => {
                    self.note_event(event, Instant::now());
                    rescan_at = rescan_at.min(Instant::now() + EVENT_DEBOUNCE);
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
            let path = self.outbox.join(&name);
            let look = outbox::look(&path).ok();
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
                    self.settling.renamed_in(&name, now);
                    self.settling.observe(&name, look, now);
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
            if !outbox::ignored(name) && !self.taken(name) {
                self.settling.renamed_in(name, now);
            }
        }
    }

    fn taken(&self, name: &str) -> bool {
        self.in_flight.iter().any(|i| i.name == name) || self.stuck.contains(name)
    }

    /// Looks at every candidate in the outbox.
    fn rescan(&mut self, now: Instant) {
        let (names, strange) = match outbox::scan(&self.outbox) {
            Ok(scanned) => scanned,
            Err(e) => {
                tracing::error!(outbox = %self.outbox.display(), "cannot read the outbox: {e}");
                return;
            }
        };
        for name in strange {
            let shown = name.to_string_lossy().into_owned();
            if self.strange.insert(shown.clone()) {
                tracing::warn!(item = %shown, "not UTF-8: the receiver would refuse it; left alone");
            }
        }
        let present: BTreeSet<String> = names.iter().cloned().collect();
        self.settling.keep_only(&present);
        for name in names {
            if self.taken(&name) {
                continue;
            }
            let path = self.outbox.join(&name);
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.is_file() && !meta.is_dir() {
                if self.strange.insert(name.clone()) {
                    tracing::warn!(item = %name, "not a file or directory; left alone");
                }
                continue;
            }
            let Ok(look) = outbox::look(&path) else {
                continue;
            };
            let failed_as_is = self
                .journal
                .get(&name)
                .is_some_and(|r| r.state == State::Failed && r.fingerprint == look.fingerprint);
            if !failed_as_is {
                self.settling.observe(&name, look, now);
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
        self.settling.forget(&name);
        self.journal_record(&name, &look.fingerprint, State::Sending)?;
        self.next_token += 1;
        let token = self.next_token;
        tracing::info!(item = %name, bytes = look.bytes, "sending item");
        let job = Job {
            token,
            path: self.outbox.join(&name),
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
        let now_look = outbox::look(&self.outbox.join(&item.name)).ok();
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
        tracing::info!(item = %item.name, bytes = item.bytes, "item sent");
        self.dispose(&item.name, &item.fingerprint)
    }

    /// Moves a sent item to the sent directory (or deletes it), then closes its journal entry.
    fn dispose(&mut self, name: &str, fingerprint: &Fingerprint) -> Result<(), Error> {
        let from = self.outbox.join(name);
        let result = match &self.after {
            Some(sent) => move_to_sent(&from, sent, name),
            None => remove(&from),
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
    fn prune_sent(&self) {
        let (Some(sent), Some(keep)) = (&self.after, self.keep_sent) else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(sent) else {
            return;
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(sent_at) = name.to_str().and_then(sent_time) else {
                continue;
            };
            if now.duration_since(sent_at).unwrap_or_default() > keep {
                if let Err(e) = remove(&entry.path()) {
                    tracing::warn!(path = %entry.path().display(), "cannot prune: {e}");
                }
            }
        }
    }

    fn publish_gauges(&self) {
        let (mut items, mut bytes) = self.settling.totals();
        items += self.in_flight.len() as u64;
        bytes += self.in_flight.iter().map(|i| i.bytes).sum::<u64>();
        self.counters.set_outbox(items, bytes);
    }
}

/// `2026-12-02T10:30:00Z-report.pdf`: when it was sent, then its name.
fn sent_name(name: &str, at: SystemTime) -> String {
    format!("{}-{name}", humantime::format_rfc3339_seconds(at))
}

/// The time a sent item's name starts with.
fn sent_time(name: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(name.get(..20)?).ok()
}

fn move_to_sent(from: &Path, sent: &Path, name: &str) -> std::io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    let base = sent_name(name, SystemTime::now());
    for n in 0..1000u32 {
        let to = match n {
            0 => sent.join(&base),
            n => sent.join(format!("{base}.{n}")),
        };
        match renameat_with(CWD, from, CWD, &to, RenameFlags::NOREPLACE) {
            Ok(()) => return std::fs::File::open(sent).and_then(|d| d.sync_all()),
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => return Err(std::io::Error::from_raw_os_error(e.raw_os_error())),
        }
    }
    Err(std::io::Error::other(
        "too many sent items of that name this second",
    ))
}

fn remove(path: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(path)?.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let err = prepare_dirs(&options(&outbox, &outbox.join("sent"))).unwrap_err();
        assert!(err.to_string().contains("would be an item"), "{err}");
        assert!(prepare_dirs(&options(&outbox, &outbox.join(".done"))).is_ok());
        assert!(prepare_dirs(&options(&outbox, &dir.path().join("sent"))).is_ok());
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
