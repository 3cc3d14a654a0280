//! Host-side pieces both Sluice daemons share: the link (`udp://`, `serial://`), key files,
//! units on the command line, path safety and logging.
//!
//! The wire format and the state machines live in `sluice-protocol`; this crate is the I/O
//! and operator-facing edge around them.

pub mod keys;
pub mod link;
pub mod logging;
pub mod paths;
pub mod units;

/// Microseconds since `start` as a protocol [`Instant`](sluice_protocol::time::Instant): the
/// state machines take time as a value, the daemons read the monotonic clock.
pub fn instant_since(start: std::time::Instant) -> sluice_protocol::time::Instant {
    let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
    sluice_protocol::time::Instant::from_micros(micros)
}
