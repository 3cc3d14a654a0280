//! # sluice-protocol
//!
//! Everything both ends of a Sluice one-way link must agree on, with no I/O, no clock and no
//! randomness of its own: time and random values are passed in. The same crate runs on the
//! sender, the receiver and the protocol-break microcontroller, so it is `no_std` and never
//! panics on input from the link.
//!
//! Read it bottom-up, the way bytes travel:
//!
//! ```text
//!  file bytes ──► (sender: age, segments) ──► fec ──► tx ──► wire ──► framing ──► link
//!  link ──► framing ──► wire (CRC, MAC) ──► rx ──► fec ──► (receiver: verify, publish)
//! ```
//!
//! - [`wire`]: frame layout v1 (see `SPEC.md`), checked parsing and encoding, CRC-32C and the
//!   keyed link MAC. After [`wire::parse_frame`] succeeds every field is within its limits.
//! - [`framing`]: COBS stream framing for serial links, a `feed(bytes)` accumulator that
//!   resynchronises on `0x00`.
//! - [`fec`]: block geometry, the repair-symbol plan for repeated passes, and the erasure codec
//!   trait (Reed–Solomon implementation behind the `alloc` feature).
//! - [`counters`]: the drop reasons every layer counts.
//! - `tx` / `rx` (feature `alloc`): the sans-IO transmit scheduler and receive assembler.
//! - `manifest` (feature `alloc`): the signed, encrypted description of each object.
//!
//! Features: `std` (default) ⊃ `alloc`. With no features the crate needs no allocator and builds
//! for `thumbv7em-none-eabihf`.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod counters;
pub mod fec;
pub mod framing;
pub mod time;
pub mod wire;

#[cfg(feature = "alloc")]
pub mod manifest;
#[cfg(feature = "alloc")]
pub mod rx;
#[cfg(feature = "alloc")]
pub mod tx;
