//! Cross-crate test support: a seeded lossy UDP relay ([`relay`]), helpers that build, run and
//! check the real `sluice-send` / `sluice-recv` binaries ([`binaries`], [`harness`]), and
//! seeded test trees with a byte-exact comparison ([`tree`]), and what a test needs from the
//! machine ([`require`]: tools, root, the firmware image), and `/metrics` pages ([`scrape`]).
//!
//! The end-to-end tests in `tests/` and the `sluice-demo` binary are built on these.

// A test-support library: a broken expectation is a test failure, and panicking with a message
// that says which one is how a helper reports it.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod binaries;
pub mod forge;
pub mod garage;
pub mod harness;
pub mod minisign;
pub mod producer;
pub mod qemu;
pub mod relay;
pub mod require;
pub mod scrape;
pub mod sweep;
pub mod tree;

/// Parses a size with a unit: `300MB`, `1.5GB`, `64MiB` (the daemons' own parser, so the
/// tools accept exactly what `--rate` and `--segment-size` accept).
pub fn parse_size(s: &str) -> Result<u64, String> {
    sluice_common::units::parse_bytes(s).map_err(|e| e.to_string())
}
