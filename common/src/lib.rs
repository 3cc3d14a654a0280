//! Host-side pieces both Sluice daemons share:
//!
//! - [`link`]: the link behind two traits (frames out, frames in) and its backends;
//! - [`config`]: layered options (defaults < TOML < command line) and usage errors;
//! - [`exit`]: the exit statuses; [`logging`]: log output;
//! - [`envelope`]: age encryption and the signed manifest envelope;
//! - [`outcome`]: outcomes as events, emitted at one place to a list of subscribers;
//! - [`sequence`]: the sender's freshness numbers for manifests;
//! - [`keys`]: key files; [`paths`]: object path safety; [`beneath`]: file operations
//!   beneath a directory fd, never by path; [`units`]: sizes and rates.
//!
//! The wire format and the state machines live in `sluice-protocol`; this crate is the I/O
//! and operator-facing edge around them.

pub mod approval;
pub mod audit;
pub mod audit_cli;
pub mod beneath;
pub mod budget;
pub mod config;
pub mod envelope;
pub mod exit;
pub mod hashed_copy;
pub mod keys;
pub mod link;
pub mod logging;
pub mod metrics;
pub mod outcome;
pub mod paths;
#[cfg(feature = "s3")]
pub mod s3;
pub mod sequence;
pub mod service;
pub mod units;

/// Microseconds since `start` as a protocol [`Instant`](sluice_protocol::time::Instant): the
/// state machines take time as a value, the daemons read the monotonic clock.
pub fn instant_since(start: std::time::Instant) -> sluice_protocol::time::Instant {
    let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    sluice_protocol::time::Instant::from_micros(micros)
}
