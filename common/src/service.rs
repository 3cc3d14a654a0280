//! The systemd side of running as a service (`Type=notify`): readiness, stopping and watchdog
//! pings through `sd-notify`. Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op,
//! so the daemons call these unconditionally.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Tells the service manager the daemon is up (its link and `--metrics` are bound).
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager the daemon is finishing (draining, writing its summary).
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// While the returned guard lives, pings the watchdog at half the interval systemd asked for
/// (`WatchdogSec=`), from a task of the current runtime — the runtime that runs the link
/// task, so a wedged runtime stops the pings and systemd restarts the daemon. `None` when no
/// watchdog was asked for.
pub fn spawn_watchdog() -> Option<Watchdog> {
    spawn_watchdog_of(None)
}

/// [`spawn_watchdog`], and the pings also stop while a step of `progress` has lasted longer
/// than the watchdog's interval: a work thread wedged in one system call (a FIFO opened for
/// reading, a hung file system) gets the daemon restarted, which pings from a timer alone
/// would prevent.
pub fn spawn_watchdog_of(progress: Option<Arc<Progress>>) -> Option<Watchdog> {
    let interval = sd_notify::watchdog_enabled()?;
    Some(watchdog_task(interval, progress))
}

fn watchdog_task(interval: Duration, progress: Option<Arc<Progress>>) -> Watchdog {
    let period = (interval / 2).max(Duration::from_millis(100));
    Watchdog(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        let mut stalled = false;
        loop {
            tick.tick().await;
            match progress.as_ref().and_then(|p| p.stuck(interval)) {
                Some((stage, busy)) => {
                    if !stalled {
                        tracing::error!(
                            stage,
                            busy_secs = busy.as_secs(),
                            "{stage} has been stuck in one step for {busy:?}; no more watchdog \
                             pings, so the service manager restarts the daemon"
                        );
                    }
                    stalled = true;
                }
                None => {
                    stalled = false;
                    notify(&[NotifyState::Watchdog]);
                }
            }
        }
    }))
}

/// The steps work threads are in, for the watchdog: each thread marks a step with
/// [`Stage::step`] (not its waits for work, which may last for ever on an idle daemon).
#[derive(Debug)]
pub struct Progress {
    start: Instant,
    stages: Mutex<Vec<(&'static str, Arc<AtomicU64>)>>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            start: Instant::now(),
            stages: Mutex::new(Vec::new()),
        }
    }
}

impl Progress {
    /// A stage to mark steps of, named in the log line when it is stuck.
    pub fn stage(self: &Arc<Self>, name: &'static str) -> Stage {
        let since = Arc::new(AtomicU64::new(0));
        if let Ok(mut stages) = self.stages.lock() {
            stages.push((name, since.clone()));
        }
        Stage {
            progress: self.clone(),
            since,
        }
    }

    fn now(&self) -> u64 {
        // Milliseconds since start, plus one: 0 means "not in a step".
        u64::try_from(self.start.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// A stage that has been in one step for longer than `limit`, and for how long.
    pub fn stuck(&self, limit: Duration) -> Option<(&'static str, Duration)> {
        let now = self.now();
        let stages = self.stages.lock().ok()?;
        stages.iter().find_map(|(name, since)| {
            let since = since.load(Ordering::Relaxed);
            let busy = Duration::from_millis(now.saturating_sub(since));
            (since != 0 && busy > limit).then_some((*name, busy))
        })
    }
}

/// One work thread's mark.
#[derive(Debug)]
pub struct Stage {
    progress: Arc<Progress>,
    since: Arc<AtomicU64>,
}

impl Stage {
    /// Marks a step until the guard is dropped.
    pub fn step(&self) -> Step {
        self.since.store(self.progress.now(), Ordering::Relaxed);
        Step(self.since.clone())
    }
}

/// A step in progress.
#[derive(Debug)]
pub struct Step(Arc<AtomicU64>);

impl Drop for Step {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

/// The watchdog task; it stops when dropped.
#[derive(Debug)]
pub struct Watchdog(tokio::task::JoinHandle<()>);

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}

/// Resolves on SIGINT or SIGTERM (how systemd and a terminal stop a daemon).
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    /// The messages reach `NOTIFY_SOCKET` as systemd reads them. (The only test in this crate
    /// that sets the variable, so no other test sees it.)
    // Multi-threaded: the test blocks its thread on the socket while the watchdog task pings.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ready_stopping_and_watchdog_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        std::env::set_var("NOTIFY_SOCKET", &path);
        std::env::set_var("WATCHDOG_USEC", "200000");
        std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
        let recv = || {
            let mut buf = [0u8; 256];
            let n = socket.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).to_string()
        };
        ready("receiving");
        assert_eq!(recv(), "READY=1\nSTATUS=receiving\n");
        let watchdog = spawn_watchdog().expect("WATCHDOG_USEC is set");
        assert_eq!(recv(), "WATCHDOG=1\n");
        assert_eq!(recv(), "WATCHDOG=1\n");
        drop(watchdog);
        // A stage stuck in one step longer than the interval stops the pings.
        let progress = Arc::new(Progress::default());
        let stage = progress.stage("encoder");
        let step = stage.step();
        let watchdog = watchdog_task(Duration::from_millis(200), Some(progress.clone()));
        assert_eq!(recv(), "WATCHDOG=1\n", "a step just begun is not stuck");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            progress.stuck(Duration::from_millis(200)).map(|s| s.0),
            Some("encoder")
        );
        // Drain what was sent before the step counted as stuck, then nothing comes.
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut buf = [0u8; 64];
        while socket.recv(&mut buf).is_ok() {}
        socket
            .set_read_timeout(Some(Duration::from_millis(400)))
            .unwrap();
        assert!(
            socket.recv(&mut buf).is_err(),
            "pinged while a step was stuck"
        );
        drop(step);
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(recv(), "WATCHDOG=1\n", "pings resume once the step ends");
        drop(watchdog);
        stopping();
        // Pings already on their way may arrive first.
        while recv() != "STOPPING=1\n" {}
        std::env::remove_var("NOTIFY_SOCKET");
    }
}
