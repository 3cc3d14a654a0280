//! Cross-crate test support: a seeded lossy UDP relay ([`relay`]), helpers that build, run and
//! check the real `sluice-send` / `sluice-recv` binaries ([`binaries`], [`harness`]), and
//! seeded test trees with a byte-exact comparison ([`tree`]).
//!
//! The end-to-end tests in `tests/` and the `sluice-demo` binary are built on these.

// A test-support library: a broken expectation is a test failure, and panicking with a message
// that says which one is how a helper reports it.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod binaries;
pub mod harness;
pub mod relay;
pub mod tree;
