//! What every worker reads and nobody changes during a run: the output and state
//! directories, the keys, and the memory budget between the link task and the disk.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sluice_common::approval::Policy;
use sluice_common::beneath::Dir;
use sluice_common::keys::TrustedKeys;
use tokio::sync::Semaphore;

use crate::content_policy::ContentPolicy;
use crate::object::ObjectKey;
use crate::state::StateDir;

/// Read-only configuration of one run.
pub(crate) struct Context {
    /// `--out`, opened once: every path below it is walked from this fd (the directory sink's
    /// only; `None` when the receiver delivers to an object store).
    pub out: Option<Dir>,
    /// `--out` as given (a directory or an `s3://` URL), for messages only.
    pub out_path: PathBuf,
    /// The state directory.
    pub state: StateDir,
    /// Permission bits a published file or directory may have: `--mode-mask` less the umask.
    pub mode_mask: u32,
    /// Keys from `--identity`.
    pub identities: Vec<age::x25519::Identity>,
    /// The `--identity` file, for messages.
    pub identity_path: PathBuf,
    /// Keys from `--trust`.
    pub trusted: TrustedKeys,
    /// The state directory's path relative to `out` when it lies inside it: no object may
    /// land there.
    pub reserved: Option<String>,
    /// Bytes of blocks between the link task and the disk (held by decoder jobs).
    pub permits: Arc<Semaphore>,
    /// All the permits there are.
    pub permits_total: usize,
    /// `--approval-policy`: what every object must carry to be published.
    pub approval: Option<Arc<Policy>>,
    /// `--policy`: the content gate every file passes before it is placed.
    pub gate: Option<ContentPolicy>,
    /// Set once the link is done with: whatever waits on something outside (an object store
    /// that is down) gives up then, keeping what it holds for the next start.
    pub stopping: AtomicBool,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("out", &self.out_path)
            .field("state", &self.state)
            .field("identities", &self.identities.len())
            .field("trusted", &self.trusted)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// Whether the decoders are keeping up (at most a quarter of the in-flight budget in
    /// use): only then may the publisher spend CPU on work that can wait. On a one-way link a
    /// receiver that falls behind loses frames for good.
    pub fn decoders_idle(&self) -> bool {
        self.permits.available_permits() * 4 >= self.permits_total * 3
    }

    /// Whether an earlier run finished `obj` or left part of it in the state directory.
    pub fn knows(&self, obj: ObjectKey) -> bool {
        self.state.knows(obj)
    }

    /// The run is ending: stop waiting on the outside.
    pub fn stop_waiting(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Whether [`Context::stop_waiting`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Whether `obj` was finished (delivered, or found already delivered) before.
    pub fn finished_before(&self, obj: ObjectKey) -> bool {
        self.state.records().is_done(obj).unwrap_or(false)
    }
}

/// Lowers the calling thread's scheduling priority by `increment` (Linux nice values are per
/// thread). Worker threads call it so that, on a busy machine, the link task, whose kernel
/// buffer lasts only tens of milliseconds at full rate, runs first; the workers have the
/// assembler's and the in-flight budget's buffering to catch up with.
pub(crate) fn lower_priority(increment: i32) {
    if let Err(e) = rustix::process::nice(increment) {
        tracing::debug!("cannot lower a worker thread's priority: {e}");
    }
}

/// Nice increment of worker threads relative to the link task.
pub(crate) const WORKER_NICE: i32 = 3;

/// The process umask (read by setting it, then setting it back).
pub(crate) fn process_umask() -> u32 {
    // Read, not set-and-restore: setting it would briefly change the mask of every thread
    // of the process (and of other receivers in one test process).
    if let Some(mask) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| umask_of(&status))
    {
        return mask;
    }
    let mask = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    rustix::process::umask(mask);
    mask.as_raw_mode()
}

/// The `Umask:` line of `/proc/<pid>/status` (Linux 4.7 and later).
fn umask_of(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

#[cfg(test)]
mod umask_tests {
    use super::*;

    #[test]
    fn the_umask_is_read_from_proc_status() {
        assert_eq!(umask_of("Name:\tx\nUmask:\t0027\nState:\tR\n"), Some(0o027));
        assert_eq!(umask_of("Name:\tx\n"), None);
        assert_eq!(umask_of("Umask:\tzz\n"), None);
    }
}
