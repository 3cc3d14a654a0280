//! Seeded lossy link simulator: a UDP relay on loopback that damages traffic on purpose.
//!
//! ```text
//!   sluice-send ──udp──▶ 127.0.0.1:A  [Relay: FaultModel]  ──udp──▶ 127.0.0.1:B  sluice-recv
//! ```
//!
//! [`FaultModel`] is the pure part: frames in, damaged frames out, every decision drawn from one
//! ChaCha8 stream seeded by [`Faults::seed`], so a failing run replays exactly. [`Relay`] wraps
//! it around a socket on a thread that stops when the handle is stopped or dropped, and in any
//! case after [`Faults::max_lifetime`], so a hung test cannot leave it running.
//!
//! Faults are applied to each frame in this order: burst loss (Gilbert–Elliott), random loss,
//! tampering, bit flips, truncation, duplication, reordering. Each is counted in
//! [`FaultCounts`], which the end-to-end tests compare with the receiver's own counters.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sluice_protocol::wire::{self, BlockKind, Header, LinkKey, CRC_LEN, MAC_LEN, PREFIX_LEN};

/// Gilbert–Elliott two-state burst loss: the link flips between a good state (no burst loss)
/// and a bad one where each frame is lost with [`loss_in_bad`](Self::loss_in_bad).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BurstLoss {
    /// Per frame, probability of entering the bad state from the good one.
    pub p_good_to_bad: f64,
    /// Per frame, probability of leaving the bad state.
    pub p_bad_to_good: f64,
    /// Loss probability while in the bad state.
    pub loss_in_bad: f64,
}

impl BurstLoss {
    /// Mean number of consecutive frames spent in the bad state.
    pub fn mean_bad_run(&self) -> f64 {
        1.0 / self.p_bad_to_good
    }

    /// Long-run fraction of frames lost to bursts.
    pub fn mean_loss(&self) -> f64 {
        self.p_good_to_bad / (self.p_good_to_bad + self.p_bad_to_good) * self.loss_in_bad
    }
}

/// Deliberate modification of a frame that keeps it well-formed on the line.
#[derive(Clone, Debug)]
pub enum Tamper {
    /// Flip one bit after the version byte and before the MAC, then recompute the CRC-32C:
    /// line checks pass, only the link MAC can catch it.
    RecomputeCrc {
        /// Per-frame probability.
        probability: f64,
    },
    /// Flip one payload bit of data-block symbols, then recompute MAC and CRC with the link
    /// key: a forger holding the link key; only the signed manifest's hashes can catch it.
    RecomputeMac {
        /// Per data-symbol-frame probability.
        probability: f64,
        /// The raw 32-byte shared link secret.
        link_key: [u8; 32],
    },
}

/// What the relay does to traffic. `Faults::default()` forwards everything untouched.
#[derive(Clone, Debug)]
pub struct Faults {
    /// Seed of the RNG behind every decision.
    pub seed: u64,
    /// Independent per-frame loss probability.
    pub loss: f64,
    /// Burst loss on top of `loss`.
    pub burst: Option<BurstLoss>,
    /// Per-frame probability of flipping bits.
    pub bit_flip: f64,
    /// A damaged frame gets `1..=max_bit_flips` flipped bits.
    pub max_bit_flips: u32,
    /// Per-frame probability of cutting the frame short (at a random length, at least 1 byte).
    pub truncate: f64,
    /// Per-frame probability of sending the frame twice.
    pub duplicate: f64,
    /// Per-frame probability of holding the frame back.
    pub reorder: f64,
    /// A held frame goes out after `1..=reorder_depth` later frames (or when the link idles).
    pub reorder_depth: u32,
    /// Optional tampering.
    pub tamper: Option<Tamper>,
    /// Every symbol frame of these object ids (in any session) is lost: objects lost whole,
    /// as when all the frames of a small file fall into one burst.
    pub lose_objects: Vec<u64>,
    /// The relay thread stops by itself after this long.
    pub max_lifetime: Duration,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            seed: 0,
            loss: 0.0,
            burst: None,
            bit_flip: 0.0,
            max_bit_flips: 1,
            truncate: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_depth: 1,
            tamper: None,
            lose_objects: Vec::new(),
            max_lifetime: Duration::from_secs(600),
        }
    }
}

/// How many times each fault was applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Frames that came in.
    pub received: u64,
    /// Frames that went out (duplicates counted twice).
    pub forwarded: u64,
    /// Frames lost to independent loss.
    pub dropped_random: u64,
    /// Frames lost in the bad burst state.
    pub dropped_burst: u64,
    /// Frames lost because their object is in [`Faults::lose_objects`].
    pub dropped_object: u64,
    /// Frames with flipped bits.
    pub bit_flipped: u64,
    /// Bits flipped over all frames.
    pub bits_flipped: u64,
    /// Frames cut short.
    pub truncated: u64,
    /// Frames sent twice.
    pub duplicated: u64,
    /// Frames held back.
    pub reordered: u64,
    /// Frames tampered with.
    pub tampered: u64,
    /// Frames that went out with flipped bits or cut short (duplicates counted twice): what
    /// the receiver should drop as line damage (CRC, magic, version or length).
    pub damaged_out: u64,
}

impl FaultCounts {
    /// Frames lost by any loss fault.
    pub fn dropped(&self) -> u64 {
        self.dropped_random + self.dropped_burst + self.dropped_object
    }
}

/// The pure fault model: frames in, damaged frames out.
#[derive(Debug)]
pub struct FaultModel {
    faults: Faults,
    link_key: Option<LinkKey>,
    rng: ChaCha8Rng,
    in_bad_state: bool,
    /// Held-back frames with the number of later frames still to pass them.
    held: Vec<(u32, Vec<u8>)>,
    counts: FaultCounts,
}

impl FaultModel {
    /// A model starting in the good state.
    pub fn new(faults: Faults) -> Self {
        let link_key = match &faults.tamper {
            Some(Tamper::RecomputeMac { link_key, .. }) => Some(LinkKey::new(link_key)),
            _ => None,
        };
        FaultModel {
            rng: ChaCha8Rng::seed_from_u64(faults.seed),
            faults,
            link_key,
            in_bad_state: false,
            held: Vec::new(),
            counts: FaultCounts::default(),
        }
    }

    /// Counts so far.
    pub fn counts(&self) -> FaultCounts {
        self.counts
    }

    /// Takes one frame; calls `emit` for every frame that goes out now, in order.
    pub fn process(&mut self, mut frame: Vec<u8>, emit: &mut impl FnMut(&[u8])) {
        self.counts.received += 1;
        let mut out: Vec<Vec<u8>> = Vec::new();
        if self.lose_object(&frame) {
            self.counts.dropped_object += 1;
        } else if !self.lose() {
            self.tamper(&mut frame);
            let damaged = self.flip_bits(&mut frame) | self.truncate(&mut frame);
            let copies = if self.roll(self.faults.duplicate) {
                self.counts.duplicated += 1;
                out.push(frame.clone());
                2
            } else {
                1
            };
            if damaged {
                self.counts.damaged_out += copies;
            }
            if self.roll(self.faults.reorder) {
                self.counts.reordered += 1;
                let depth = self.rng.gen_range(1..=self.faults.reorder_depth.max(1));
                // Held frames already waiting keep their own countdown; this one starts after.
                self.held.push((depth + 1, frame));
            } else {
                out.push(frame);
            }
        }
        for held in &mut self.held {
            held.0 -= 1;
        }
        let (due, waiting): (Vec<_>, Vec<_>) = self.held.drain(..).partition(|(n, _)| *n == 0);
        self.held = waiting;
        out.extend(due.into_iter().map(|(_, f)| f));
        for f in &out {
            self.counts.forwarded += 1;
            emit(f);
        }
    }

    /// Releases every held frame (the link went idle).
    pub fn flush(&mut self, emit: &mut impl FnMut(&[u8])) {
        for (_, f) in self.held.drain(..) {
            self.counts.forwarded += 1;
            emit(&f);
        }
    }

    fn roll(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.gen_bool(p.min(1.0))
    }

    /// Steps the Gilbert–Elliott chain and draws the losses; true if the frame is lost.
    fn lose_object(&self, frame: &[u8]) -> bool {
        !self.faults.lose_objects.is_empty()
            && matches!(
                wire::parse_frame_unauthenticated(frame),
                Ok(f) if matches!(f.header, Header::Symbol(s)
                    if self.faults.lose_objects.contains(&s.block.object.0))
            )
    }

    fn lose(&mut self) -> bool {
        if let Some(burst) = self.faults.burst {
            let flip = if self.in_bad_state {
                burst.p_bad_to_good
            } else {
                burst.p_good_to_bad
            };
            if self.roll(flip) {
                self.in_bad_state = !self.in_bad_state;
            }
            if self.in_bad_state && self.roll(burst.loss_in_bad) {
                self.counts.dropped_burst += 1;
                return true;
            }
        }
        if self.roll(self.faults.loss) {
            self.counts.dropped_random += 1;
            return true;
        }
        false
    }

    fn tamper(&mut self, frame: &mut [u8]) {
        let n = frame.len();
        match self.faults.tamper.clone() {
            Some(Tamper::RecomputeCrc { probability }) => {
                if n <= PREFIX_LEN + MAC_LEN + CRC_LEN || !self.roll(probability) {
                    return;
                }
                let pos = self.rng.gen_range(PREFIX_LEN..n - MAC_LEN - CRC_LEN);
                frame[pos] ^= 1 << self.rng.gen_range(0..8);
                reseal_crc(frame);
                self.counts.tampered += 1;
            }
            Some(Tamper::RecomputeMac { probability, .. }) => {
                let Some(key) = self.link_key.clone() else {
                    return;
                };
                let payload_len = match wire::parse_frame(frame, &key) {
                    Ok(f) => match f.header {
                        Header::Symbol(s) if s.block.kind == BlockKind::Data => f.payload.len(),
                        _ => return,
                    },
                    Err(_) => return,
                };
                if payload_len == 0 || !self.roll(probability) {
                    return;
                }
                let mac_start = n - MAC_LEN - CRC_LEN;
                let pos = self.rng.gen_range(mac_start - payload_len..mac_start);
                frame[pos] ^= 1 << self.rng.gen_range(0..8);
                let tag = key.tag(&frame[..mac_start]);
                frame[mac_start..mac_start + MAC_LEN].copy_from_slice(&tag);
                reseal_crc(frame);
                self.counts.tampered += 1;
            }
            None => {}
        }
    }

    /// True if bits were flipped.
    fn flip_bits(&mut self, frame: &mut [u8]) -> bool {
        if frame.is_empty() || !self.roll(self.faults.bit_flip) {
            return false;
        }
        let flips = self.rng.gen_range(1..=self.faults.max_bit_flips.max(1));
        // Distinct bit positions, so `flips` is exactly the Hamming distance.
        let bits = frame.len() * 8;
        let chosen = rand::seq::index::sample(&mut self.rng, bits, (flips as usize).min(bits));
        for bit in chosen.iter() {
            frame[bit / 8] ^= 1 << (bit % 8);
        }
        self.counts.bit_flipped += 1;
        self.counts.bits_flipped += chosen.len() as u64;
        true
    }

    /// True if the frame was cut short.
    fn truncate(&mut self, frame: &mut Vec<u8>) -> bool {
        if frame.len() < 2 || !self.roll(self.faults.truncate) {
            return false;
        }
        let len = self.rng.gen_range(1..frame.len());
        frame.truncate(len);
        self.counts.truncated += 1;
        true
    }
}

/// Recomputes the CRC-32C trailer over everything before it.
pub fn reseal_crc(frame: &mut [u8]) {
    let crc_start = frame.len() - CRC_LEN;
    let crc = wire::crc32c(&frame[..crc_start]);
    frame[crc_start..].copy_from_slice(&crc.to_le_bytes());
}

/// A running relay; stops when [`stop`](Self::stop)ped or dropped.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<FaultCounts>>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Listens on an ephemeral port of 127.0.0.1 and forwards to `target`.
    pub fn start(target: SocketAddr, faults: Faults) -> std::io::Result<Relay> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        // Like the receiver: a deep buffer so the relay thread losing the CPU for a moment on
        // a busy machine does not add kernel drops to the loss it was asked for (capped by
        // net.core.rmem_max).
        let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(16 << 20);
        let _ = socket2::SockRef::from(&socket).set_send_buffer_size(4 << 20);
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(FaultCounts::default()));
        let thread = {
            let (stop, counts) = (stop.clone(), counts.clone());
            std::thread::Builder::new()
                .name("sluice-relay".into())
                .spawn(move || run(socket, target, faults, &stop, &counts))?
        };
        Ok(Relay {
            addr,
            stop,
            counts,
            thread: Some(thread),
        })
    }

    /// Where the sender should send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counts so far.
    pub fn counts(&self) -> FaultCounts {
        *self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the relay thread and returns the final counts.
    pub fn stop(mut self) -> FaultCounts {
        self.shutdown();
        self.counts()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(
    socket: UdpSocket,
    target: SocketAddr,
    faults: Faults,
    stop: &AtomicBool,
    counts: &Mutex<FaultCounts>,
) {
    let deadline = Instant::now() + faults.max_lifetime;
    let mut model = FaultModel::new(faults);
    let mut buf = vec![0u8; 65536];
    let mut send = |f: &[u8]| {
        // A full socket buffer on the far side is just more loss; nothing to do about it here.
        let _ = socket.send_to(f, target);
    };
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match socket.recv_from(&mut buf) {
            Ok((n, _)) => model.process(buf[..n].to_vec(), &mut send),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                model.flush(&mut send)
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
        *counts.lock().unwrap_or_else(|e| e.into_inner()) = model.counts();
    }
    model.flush(&mut send);
    *counts.lock().unwrap_or_else(|e| e.into_inner()) = model.counts();
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_protocol::fec::Geometry;
    use sluice_protocol::wire::{BlockKey, ObjectId, ParseError, SessionId, SymbolHeader};

    fn numbered(i: u32) -> Vec<u8> {
        let mut f = i.to_le_bytes().to_vec();
        f.resize(64, 0xA5);
        f
    }

    fn run_model(faults: Faults, frames: u32) -> (Vec<Vec<u8>>, FaultCounts) {
        let mut model = FaultModel::new(faults);
        let mut out = Vec::new();
        for i in 0..frames {
            model.process(numbered(i), &mut |f| out.push(f.to_vec()));
        }
        model.flush(&mut |f| out.push(f.to_vec()));
        (out, model.counts())
    }

    fn id(f: &[u8]) -> u32 {
        u32::from_le_bytes(f[..4].try_into().unwrap())
    }

    #[test]
    fn random_loss_fraction_matches_p() {
        for (seed, p) in [(1, 0.02), (2, 0.1), (3, 0.4)] {
            let faults = Faults {
                seed,
                loss: p,
                ..Faults::default()
            };
            let (out, counts) = run_model(faults, 100_000);
            let lost = counts.dropped_random as f64 / 100_000.0;
            // Binomial sd is at most 0.0016 here: 0.006 is > 3.5 sd.
            assert!((lost - p).abs() < 0.006, "p={p} measured {lost}");
            assert_eq!(out.len() as u64, 100_000 - counts.dropped_random);
            assert_eq!(counts.forwarded, out.len() as u64);
        }
    }

    #[test]
    fn bursts_have_the_configured_mean_length() {
        let burst = BurstLoss {
            p_good_to_bad: 0.01,
            p_bad_to_good: 0.25,
            loss_in_bad: 1.0,
        };
        let faults = Faults {
            seed: 7,
            burst: Some(burst),
            ..Faults::default()
        };
        let (out, counts) = run_model(faults, 100_000);
        let ids: Vec<u32> = out.iter().map(|f| id(f)).collect();
        // Runs of consecutive lost frames = gaps between consecutive delivered ids.
        let runs: Vec<u32> = ids
            .windows(2)
            .map(|w| w[1] - w[0] - 1)
            .filter(|&g| g > 0)
            .collect();
        let mean_run = runs.iter().sum::<u32>() as f64 / runs.len() as f64;
        assert!(
            (mean_run - burst.mean_bad_run()).abs() < 0.4,
            "mean burst {mean_run}, want {}",
            burst.mean_bad_run()
        );
        let loss = counts.dropped_burst as f64 / 100_000.0;
        assert!(
            (loss - burst.mean_loss()).abs() < 0.008,
            "burst loss {loss}, want {}",
            burst.mean_loss()
        );
        assert_eq!(counts.dropped_random, 0);
    }

    #[test]
    fn same_seed_same_damage_other_seed_other_damage() {
        let faults = |seed| Faults {
            seed,
            loss: 0.05,
            bit_flip: 0.05,
            max_bit_flips: 4,
            truncate: 0.02,
            duplicate: 0.02,
            reorder: 0.05,
            reorder_depth: 8,
            ..Faults::default()
        };
        let a = run_model(faults(11), 5_000);
        let b = run_model(faults(11), 5_000);
        let c = run_model(faults(12), 5_000);
        assert_eq!(a, b);
        assert_ne!(a.0, c.0);
    }

    #[test]
    fn bit_flips_flip_between_one_and_max_bits() {
        let faults = Faults {
            seed: 5,
            bit_flip: 0.3,
            max_bit_flips: 3,
            ..Faults::default()
        };
        let (out, counts) = run_model(faults, 10_000);
        assert_eq!(out.len(), 10_000);
        let (mut damaged, mut bits) = (0, 0);
        for (i, f) in out.iter().enumerate() {
            let flipped: u32 = numbered(i as u32)
                .iter()
                .zip(f)
                .map(|(a, b)| (a ^ b).count_ones())
                .sum();
            assert!(flipped <= 3, "{flipped} bits flipped");
            if flipped > 0 {
                damaged += 1;
                bits += u64::from(flipped);
            }
        }
        assert_eq!(damaged, counts.bit_flipped);
        assert_eq!(bits, counts.bits_flipped);
        assert_eq!(counts.damaged_out, counts.bit_flipped);
        let rate = counts.bit_flipped as f64 / 10_000.0;
        assert!((rate - 0.3).abs() < 0.02, "flip rate {rate}");
    }

    #[test]
    fn truncation_cuts_frames_to_a_prefix() {
        let faults = Faults {
            seed: 8,
            truncate: 0.05,
            ..Faults::default()
        };
        let (out, counts) = run_model(faults, 20_000);
        assert_eq!(out.len(), 20_000);
        let mut short = 0;
        for (i, f) in out.iter().enumerate() {
            let original = numbered(i as u32);
            assert!(!f.is_empty() && original.starts_with(f));
            short += u64::from(f.len() < original.len());
        }
        assert_eq!(short, counts.truncated);
        assert_eq!(counts.damaged_out, counts.truncated);
        assert!((800..1200).contains(&counts.truncated));
    }

    #[test]
    fn duplication_and_reordering_are_counted_and_bounded() {
        let depth = 5;
        let faults = Faults {
            seed: 9,
            duplicate: 0.05,
            reorder: 0.1,
            reorder_depth: depth,
            ..Faults::default()
        };
        let (out, counts) = run_model(faults, 20_000);
        assert_eq!(out.len() as u64, 20_000 + counts.duplicated);
        assert_eq!(counts.forwarded, out.len() as u64);
        let mut times = std::collections::HashMap::<u32, u64>::new();
        for f in &out {
            *times.entry(id(f)).or_default() += 1;
        }
        assert_eq!(times.len(), 20_000, "a frame went missing");
        let twice = times.values().filter(|&&n| n == 2).count() as u64;
        assert_eq!(twice, counts.duplicated);
        assert!(times.values().all(|&n| n <= 2));
        // A held frame y goes out no later than right after frame y + depth.
        let mut max_seen = 0u32;
        let mut inversions = 0;
        for f in &out {
            let y = id(f);
            if y < max_seen {
                inversions += 1;
                assert!(max_seen - y <= depth, "frame {y} released after {max_seen}");
            }
            max_seen = max_seen.max(y);
        }
        assert!((1_500..2_500).contains(&counts.reordered));
        assert!(
            inversions >= counts.reordered / 2,
            "{inversions} inversions"
        );
    }

    fn real_frame(key: &LinkKey) -> Vec<u8> {
        let header = Header::Symbol(SymbolHeader {
            block: BlockKey {
                session: SessionId(42),
                object: ObjectId(3),
                kind: BlockKind::Data,
                index: 1,
            },
            geometry: Geometry::new(64 * 4, 64, 2).unwrap(),
            symbol: 1,
            segment_size: wire::MIN_SEGMENT_SIZE,
        });
        let payload = [0x5Au8; 64];
        let mut buf = vec![0u8; wire::MAX_FRAME_LEN];
        let n = wire::write_frame(&header, &payload, key, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn crc_tampering_passes_the_crc_and_fails_the_mac() {
        let key = LinkKey::new(&[7; 32]);
        let frame = real_frame(&key);
        assert!(wire::parse_frame(&frame, &key).is_ok());
        let faults = Faults {
            seed: 1,
            tamper: Some(Tamper::RecomputeCrc { probability: 1.0 }),
            ..Faults::default()
        };
        let mut model = FaultModel::new(faults);
        for _ in 0..200 {
            let mut out = Vec::new();
            model.process(frame.clone(), &mut |f| out.push(f.to_vec()));
            assert_ne!(out[0], frame);
            assert_eq!(wire::parse_frame(&out[0], &key), Err(ParseError::BadMac));
        }
        assert_eq!(model.counts().tampered, 200);
    }

    #[test]
    fn mac_tampering_yields_authentic_frames_with_other_payload() {
        let secret = [9u8; 32];
        let key = LinkKey::new(&secret);
        let frame = real_frame(&key);
        let faults = Faults {
            seed: 2,
            tamper: Some(Tamper::RecomputeMac {
                probability: 1.0,
                link_key: secret,
            }),
            ..Faults::default()
        };
        let mut model = FaultModel::new(faults);
        let mut out = Vec::new();
        model.process(frame.clone(), &mut |f| out.push(f.to_vec()));
        let original = wire::parse_frame(&frame, &key).unwrap();
        let tampered = wire::parse_frame(&out[0], &key).unwrap();
        assert_eq!(original.header, tampered.header);
        let diff: u32 = original
            .payload
            .iter()
            .zip(tampered.payload)
            .map(|(a, b)| (a ^ b).count_ones())
            .sum();
        assert_eq!(diff, 1);
        assert_eq!(model.counts().tampered, 1);
    }

    #[test]
    fn relay_forwards_over_loopback_and_counts() {
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        sink.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let relay = Relay::start(
            sink.local_addr().unwrap(),
            Faults {
                seed: 3,
                loss: 0.5,
                ..Faults::default()
            },
        )
        .unwrap();
        let src = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..200u32 {
            src.send_to(&numbered(i), relay.addr()).unwrap();
            // Stay well inside the socket buffers: losses must all be the relay's.
            std::thread::sleep(Duration::from_micros(200));
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 128];
        while let Ok(n) = sink.recv(&mut buf) {
            got.push(id(&buf[..n]));
            if got.len() as u64 == relay.counts().forwarded && relay.counts().received == 200 {
                break;
            }
        }
        let counts = relay.stop();
        assert_eq!(counts.received, 200);
        assert_eq!(counts.forwarded + counts.dropped_random, 200);
        assert_eq!(got.len() as u64, counts.forwarded);
        assert!(counts.dropped_random > 60 && counts.dropped_random < 140);
        assert!(got.windows(2).all(|w| w[0] < w[1]));
    }
}
