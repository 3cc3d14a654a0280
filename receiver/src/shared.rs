//! What every stage of the pipeline shares: output and state directories, keys, the object
//! table and the counters the final summary is built from.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sluice_common::keys::TrustedKeys;
use tokio::sync::Semaphore;

use crate::objects::Index;
use crate::state::{ObjectKey, StateDir};

/// Read-only configuration plus the shared, locked object table.
pub(crate) struct Shared {
    /// `--out`, canonical.
    pub out: PathBuf,
    /// The state directory.
    pub state: StateDir,
    /// Where published files are staged: on the same file system as `out`.
    pub staging: PathBuf,
    /// Keys from `--identity`.
    pub identities: Vec<age::x25519::Identity>,
    /// The `--identity` file, for messages.
    pub identity_path: PathBuf,
    /// Keys from `--trust`.
    pub trusted: TrustedKeys,
    /// The state directory's path relative to `out` when it lies inside it: no object may
    /// land there.
    pub reserved: Option<String>,
    /// Objects in progress.
    pub index: Mutex<Index>,
    /// Counters for the summary.
    pub counters: Counters,
    /// Bytes of blocks between the link task and the disk (held by decoder jobs).
    pub permits: Arc<Semaphore>,
    /// All the permits there are.
    pub permits_total: usize,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("out", &self.out)
            .field("state", &self.state)
            .field("identities", &self.identities.len())
            .field("trusted", &self.trusted)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The object table. A panic elsewhere while holding the lock leaves the table usable:
    /// every update to it is a single insert or remove.
    pub fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the decoders are keeping up (at most a quarter of the in-flight budget in
    /// use): only then may the sink spend CPU on work that can wait. On a one-way link a
    /// receiver that falls behind loses frames for good.
    pub fn decoders_idle(&self) -> bool {
        self.permits.available_permits() * 4 >= self.permits_total * 3
    }

    /// Whether an earlier run delivered `obj` or left part of it in the state directory.
    pub fn knows(&self, obj: ObjectKey) -> bool {
        self.state.is_done(obj) || self.state.object_dir(obj).exists()
    }
}

/// Counters updated by the worker threads.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub blocks_decoded: AtomicU64,
    pub blocks_recovered: AtomicU64,
    pub partials_saved: AtomicU64,
    pub partials_restored: AtomicU64,
    pub objects_delivered: AtomicU64,
    pub objects_already: AtomicU64,
    pub objects_failed: AtomicU64,
    pub bytes_delivered: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
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
