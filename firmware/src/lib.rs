//! The protocol break: a microcontroller between the low-side UART and the high-side UART that
//! lets through only frames it has parsed and checked, re-encoded from their parsed fields.
//!
//! ```text
//!   low-side UART ──bytes──▶ Relay::feed ──▶ COBS deframe ─▶ length/magic/version/CRC/header/
//!                                            geometry (+ MAC when provisioned) ─▶ rate ceiling
//!                                            ─▶ re-encode ─▶ COBS ──bytes──▶ high-side UART
//!                                                  │ everything else: dropped and counted
//!                            Relay::poll_status ──▶ RelayStatus frame every interval (provisioned)
//! ```
//!
//! Hardware-independent and `no_std`, no heap, no `unsafe`: the board glue (`firmware/board/`)
//! moves bytes between the UART registers and this crate, and the same code runs in host tests.

#![no_std]
#![forbid(unsafe_code)]

pub mod relay;

pub use relay::{Relay, RelayConfig, RelayCounters};
