//! The systemd side of running as a service (`Type=notify`): readiness, stopping and watchdog
//! pings through `sd-notify`. Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op,
//! so the daemons call these unconditionally.

use std::time::Duration;

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
    let interval = sd_notify::watchdog_enabled()?;
    let period = (interval / 2).max(Duration::from_millis(100));
    Some(Watchdog(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            notify(&[NotifyState::Watchdog]);
        }
    })))
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
        stopping();
        // Pings already on their way may arrive first.
        while recv() != "STOPPING=1\n" {}
        std::env::remove_var("NOTIFY_SOCKET");
    }
}
