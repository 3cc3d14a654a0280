//! The relay core: bytes from the low side in, COBS-encoded valid frames for the high side out.

use sluice_protocol::counters::DropReason;
use sluice_protocol::framing::{encode_frame, encoded_len, CobsAccumulator, Feed};
use sluice_protocol::time::Instant;
use sluice_protocol::wire::{
    parse_frame, parse_frame_unauthenticated, write_frame, write_frame_with_tag, Header, LinkKey,
    ParseError, RelayStatus, MAX_FRAME_LEN,
};

/// Limits of one relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// Largest frame forwarded (bytes before COBS); longer ones are dropped as `TooLong`.
    pub max_frame_len: usize,
    /// Frames per second forwarded at most (token bucket); 0 = no ceiling.
    pub max_frames_per_sec: u32,
    /// Frames that may pass back to back before the ceiling applies.
    pub burst_frames: u32,
    /// Time between status frames, in microseconds (only when provisioned with the link key).
    pub status_interval_us: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            max_frame_len: 2048,
            max_frames_per_sec: 0,
            burst_frames: 64,
            status_interval_us: 1_000_000,
        }
    }
}

/// What the relay did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayCounters {
    /// Frames forwarded (status frames not included).
    pub forwarded: u32,
    /// Bytes of forwarded frames (before COBS).
    pub forwarded_bytes: u64,
    /// Deframing failures: bad COBS, or more bytes than the buffer before a delimiter.
    pub dropped_framing: u32,
    /// Frames failing length, magic, version, CRC, header or geometry checks.
    pub dropped_invalid: u32,
    /// Frames whose link MAC did not verify (provisioned relays only).
    pub dropped_mac: u32,
    /// Frames over the rate ceiling.
    pub dropped_rate: u32,
    /// Status frames emitted.
    pub status_frames: u32,
}

/// The longest frame whose line encoding (COBS and delimiter) fits in `N` bytes.
pub const fn max_frame_for<const N: usize>() -> usize {
    let mut len = if N < MAX_FRAME_LEN { N } else { MAX_FRAME_LEN };
    while len > 0 && encoded_len(len) > N {
        len -= 1;
    }
    len
}

/// A deframing buffer size that holds frames of up to `max_frame` bytes.
pub const fn buffer_for(max_frame: usize) -> usize {
    encoded_len(max_frame)
}

/// The relay. `N` is the deframing buffer: the COBS-encoded size of the largest frame.
#[derive(Debug)]
pub struct Relay<const N: usize> {
    config: RelayConfig,
    key: Option<LinkKey>,
    deframer: CobsAccumulator<N>,
    counters: RelayCounters,
    /// Rate ceiling: tokens in millionths of a frame.
    tokens: u64,
    refilled_at: Instant,
    next_status: Instant,
}

impl<const N: usize> Relay<N> {
    /// A relay that checks MACs when `key` is given (and only then sends status frames).
    pub fn new(config: RelayConfig, key: Option<LinkKey>, now: Instant) -> Self {
        Relay {
            tokens: u64::from(config.burst_frames) * 1_000_000,
            config: RelayConfig {
                max_frame_len: config.max_frame_len.min(max_frame_for::<N>()),
                ..config
            },
            key,
            deframer: CobsAccumulator::new(),
            counters: RelayCounters::default(),
            refilled_at: now,
            next_status: now,
        }
    }

    /// Counters so far.
    pub fn counters(&self) -> RelayCounters {
        self.counters
    }

    /// Takes bytes from the low side; calls `emit` with the line bytes (COBS and delimiter
    /// included) of every frame to forward, in order. Never emits a byte it did not parse:
    /// what goes out is rebuilt from the parsed header, payload and tag.
    pub fn feed(&mut self, now: Instant, mut bytes: &[u8], emit: &mut impl FnMut(&[u8])) {
        loop {
            match self.deframer.feed(bytes) {
                Feed::Consumed => return,
                Feed::Dropped { rest, .. } => {
                    bytes = rest;
                    self.counters.dropped_framing += 1;
                }
                Feed::Frame { frame, rest } => {
                    bytes = rest;
                    let parsed = if frame.len() > self.config.max_frame_len {
                        Err(DropReason::TooLong)
                    } else {
                        match &self.key {
                            Some(key) => parse_frame(frame, key),
                            None => parse_frame_unauthenticated(frame),
                        }
                        .map_err(|e: ParseError| DropReason::from(e))
                    };
                    let parsed = match parsed {
                        Ok(p) => p,
                        Err(DropReason::BadMac) => {
                            self.counters.dropped_mac += 1;
                            continue;
                        }
                        Err(_) => {
                            self.counters.dropped_invalid += 1;
                            continue;
                        }
                    };
                    if !take_token(&self.config, &mut self.tokens, &mut self.refilled_at, now) {
                        self.counters.dropped_rate += 1;
                        continue;
                    }
                    let mut rebuilt = [0u8; N];
                    let Ok(len) = write_frame_with_tag(
                        &parsed.header,
                        parsed.payload,
                        &parsed.tag,
                        &mut rebuilt,
                    ) else {
                        self.counters.dropped_invalid += 1;
                        continue;
                    };
                    self.counters.forwarded += 1;
                    self.counters.forwarded_bytes += len as u64;
                    emit_encoded::<N>(&rebuilt[..len], emit);
                }
            }
        }
    }

    /// Emits a status frame when one is due (provisioned relays only: an unauthenticated
    /// status frame would be dropped by the receiver anyway).
    pub fn poll_status(&mut self, now: Instant, emit: &mut impl FnMut(&[u8])) {
        let Some(key) = &self.key else {
            return;
        };
        if now < self.next_status {
            return;
        }
        self.next_status = Instant::from_micros(
            now.as_micros()
                .saturating_add(self.config.status_interval_us.max(1)),
        );
        let c = self.counters;
        let header = Header::RelayStatus(RelayStatus {
            seq: c.status_frames,
            forwarded: c.forwarded,
            forwarded_bytes: c.forwarded_bytes,
            dropped_framing: c.dropped_framing,
            dropped_invalid: c.dropped_invalid,
            dropped_mac: c.dropped_mac,
            dropped_rate: c.dropped_rate,
        });
        let mut frame = [0u8; 128];
        if let Ok(len) = write_frame(&header, &[], key, &mut frame) {
            self.counters.status_frames += 1;
            emit_encoded::<128>(&frame[..len], emit);
        }
    }
}

/// Rate ceiling: one token per forwarded frame, refilled at `max_frames_per_sec`.
fn take_token(
    config: &RelayConfig,
    tokens: &mut u64,
    refilled_at: &mut Instant,
    now: Instant,
) -> bool {
    let rate = u64::from(config.max_frames_per_sec);
    if rate == 0 {
        return true;
    }
    let cap = u64::from(config.burst_frames.max(1)) * 1_000_000;
    let elapsed = u64::try_from(now.saturating_since(*refilled_at).as_micros()).unwrap_or(u64::MAX);
    *tokens = tokens.saturating_add(elapsed.saturating_mul(rate)).min(cap);
    *refilled_at = now;
    if *tokens >= 1_000_000 {
        *tokens -= 1_000_000;
        true
    } else {
        false
    }
}

/// COBS-encodes `frame` (at most `max_frame_for::<N>()` bytes) and hands the line bytes on.
fn emit_encoded<const N: usize>(frame: &[u8], emit: &mut impl FnMut(&[u8])) {
    let mut line = [0u8; N];
    if let Ok(n) = encode_frame(frame, &mut line) {
        emit(&line[..n]);
    }
}
