//! Transmit scheduler: encoded blocks in, paced frames out.
//!
//! Sans-IO and deterministic. The driver pushes FEC-encoded blocks ([`OutgoingBlock`]) while
//! [`Scheduler::has_room`] says so, and calls [`Scheduler::poll_transmit`] with the time; it
//! either writes the next frame into the caller's buffer or says when to call again.
//!
//! - **Interleaving**: symbols go out round-robin over up to `interleave` blocks, so a burst of
//!   `B` lost frames costs each block only about `B / interleave` symbols.
//! - **Pacing**: a token bucket in bytes (frame plus the link's own per-frame overhead). A
//!   one-way link cannot push back, so the sender must never outrun it.
//! - **Heartbeats**: one every `heartbeat_interval`, busy or idle, so the receiver can tell
//!   "link down" from "nothing to send" and estimate loss from `frames_sent`.
//!
//! Call order: `while has_room() { push_block(..) }`, then `poll_transmit(now, buf)` until it
//! returns [`Transmit::WaitUntil`], taking finished blocks with `poll_sent()`; sleep until
//! then or until a new block is ready.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::time::Duration;

use crate::fec::{ErasureCodec, Geometry, RepairPlan};
use crate::time::Instant;
use crate::wire::{
    self, AuditHead, BlockKey, BlockKind, EncodeError, Header, Heartbeat, LinkKey, SessionId,
    SymbolHeader,
};

/// Pacing, interleaving and heartbeat settings.
#[derive(Clone, Copy, Debug)]
pub struct TxConfig {
    /// Link bytes per second (frame bytes plus `frame_overhead`); 0 means unpaced.
    pub rate: u64,
    /// Token bucket depth in bytes: the largest burst sent back to back at line rate.
    pub burst: u64,
    /// Bytes the link adds to each frame (IP/UDP headers, COBS and delimiter, ...).
    pub frame_overhead: u32,
    /// Blocks whose symbols are interleaved.
    pub interleave: usize,
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
}

impl Default for TxConfig {
    fn default() -> Self {
        TxConfig {
            rate: 0,
            burst: 64 * 1024,
            frame_overhead: 0,
            interleave: 8,
            heartbeat_interval: Duration::from_secs(1),
        }
    }
}

/// Why a block was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TxError {
    /// The symbol bytes are not `ids.len() * symbol_size` long.
    SymbolBytes,
    /// A symbol id is not below `k + R`, or the geometry is invalid.
    Geometry,
    /// The erasure codec failed.
    Codec,
}

/// One block's symbols to send, in send order.
#[derive(Debug)]
pub struct OutgoingBlock {
    key: BlockKey,
    geometry: Geometry,
    segment_size: u32,
    ids: Vec<u16>,
    /// The symbols in send order: the first ones here, the rest (if any) in `rest`, so a
    /// first pass keeps the source bytes and the repair symbols in the buffers they were
    /// made in.
    symbols: Vec<u8>,
    rest: Vec<u8>,
}

impl OutgoingBlock {
    /// A block whose symbol `ids[i]` is `symbols[i * symbol_size ..][.. symbol_size]`;
    /// `segment_size` as [`SymbolHeader::segment_size`] (0 for a manifest block).
    pub fn new(
        key: BlockKey,
        geometry: Geometry,
        segment_size: u32,
        ids: Vec<u16>,
        symbols: Vec<u8>,
    ) -> Result<Self, TxError> {
        Self::in_two_parts(key, geometry, segment_size, ids, symbols, Vec::new())
    }

    /// [`Self::new`] with the symbols in `first` followed by `rest`.
    fn in_two_parts(
        key: BlockKey,
        geometry: Geometry,
        segment_size: u32,
        ids: Vec<u16>,
        first: Vec<u8>,
        rest: Vec<u8>,
    ) -> Result<Self, TxError> {
        geometry.validate().map_err(|_| TxError::Geometry)?;
        wire::check_segment_size(key.kind, segment_size).map_err(|_| TxError::Geometry)?;
        if ids
            .iter()
            .any(|id| u32::from(*id) >= geometry.total_symbols())
        {
            return Err(TxError::Geometry);
        }
        let size = usize::from(geometry.symbol_size);
        if first.len() % size.max(1) != 0 || first.len() + rest.len() != ids.len() * size {
            return Err(TxError::SymbolBytes);
        }
        Ok(OutgoingBlock {
            key,
            geometry,
            segment_size,
            ids,
            symbols: first,
            rest,
        })
    }

    /// The bytes of the `i`-th symbol in send order.
    fn symbol(&self, i: usize) -> &[u8] {
        let size = usize::from(self.geometry.symbol_size);
        let at = i * size;
        match self.symbols.get(at..at + size) {
            Some(symbol) => symbol,
            None => &self.rest[at - self.symbols.len()..][..size],
        }
    }

    /// Encodes pass `pass` (0-based) of a block holding `data`: its source and repair symbols
    /// as [`RepairPlan`] assigns them, so every pass after the first carries fresh repair
    /// symbols. Every pass of a block must be given the same `data`, `symbol_size`,
    /// `repair_permille` and `passes`. Copies `data` once; [`Self::encode_pass_owned`] does not.
    pub fn encode_pass(
        key: BlockKey,
        segment_size: u32,
        data: &[u8],
        symbol_size: u16,
        plan: BlockPlan,
        pass: u16,
        codec: &mut dyn ErasureCodec,
    ) -> Result<Self, TxError> {
        Self::encode_pass_owned(
            key,
            segment_size,
            data.to_vec(),
            symbol_size,
            plan,
            pass,
            codec,
        )
    }

    /// [`Self::encode_pass`] taking the block's bytes: a first pass (source symbols in order,
    /// then repair) sends them from `data`'s own buffer, padded in place, so the sender's
    /// largest copy of every byte is gone.
    pub fn encode_pass_owned(
        key: BlockKey,
        segment_size: u32,
        data: Vec<u8>,
        symbol_size: u16,
        plan: BlockPlan,
        pass: u16,
        codec: &mut dyn ErasureCodec,
    ) -> Result<Self, TxError> {
        let block_len = u32::try_from(data.len()).map_err(|_| TxError::Geometry)?;
        let k = u16::try_from(data.len().div_ceil(usize::from(symbol_size.max(1))))
            .map_err(|_| TxError::Geometry)?;
        let repair = RepairPlan::new(k, plan.repair_permille, plan.passes);
        let geometry = Geometry::new(block_len, symbol_size, repair.reserved_repair())
            .map_err(|_| TxError::Geometry)?;
        let ids: Vec<u16> = repair.symbols(pass).collect();
        let size = usize::from(symbol_size);
        let mut padded = data;
        // Exactly: growing by doubling would keep up to twice the block in memory.
        padded.reserve_exact((usize::from(k) * size).saturating_sub(padded.len()));
        padded.resize(usize::from(k) * size, 0);
        let reserved = repair.reserved_repair();
        let needs_repair = ids.iter().any(|id| !geometry.is_source(*id));
        let mut repair_symbols =
            alloc::vec![0u8; if needs_repair { usize::from(reserved) * size } else { 0 }];
        if needs_repair {
            codec
                .encode(&geometry, &padded, 0..reserved, &mut repair_symbols)
                .map_err(|_| TxError::Codec)?;
        }
        let symbol = |id: u16| -> &[u8] {
            if geometry.is_source(id) {
                &padded[usize::from(id) * size..][..size]
            } else {
                &repair_symbols[usize::from(id - k) * size..][..size]
            }
        };
        // Ids 0, 1, 2, … (every first pass): the sources are `padded` as it is.
        let in_order = ids.len() >= usize::from(k)
            && ids.iter().enumerate().all(|(i, id)| usize::from(*id) == i);
        if in_order {
            repair_symbols.truncate((ids.len() - usize::from(k)) * size);
            return Self::in_two_parts(key, geometry, segment_size, ids, padded, repair_symbols);
        }
        let mut symbols = Vec::with_capacity(ids.len() * size);
        for id in &ids {
            symbols.extend_from_slice(symbol(*id));
        }
        OutgoingBlock::new(key, geometry, segment_size, ids, symbols)
    }

    /// The block this is.
    pub fn key(&self) -> BlockKey {
        self.key
    }

    /// Symbols to send.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// How much repair a block carries: per pass, and over how many passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockPlan {
    /// Repair symbols per thousand source symbols, per pass.
    pub repair_permille: u32,
    /// Passes the sender will make over the block (at least 1).
    pub passes: u16,
}

/// Fewest repair symbols per pass any block gets (unless repair is off).
pub const MIN_REPAIR_SYMBOLS: u64 = 4;
/// Fewest repair symbols per pass a manifest block gets, repair off or not (100 % for a
/// manifest of up to this many symbols).
pub const MIN_MANIFEST_REPAIR_SYMBOLS: u64 = 16;

impl BlockPlan {
    /// The repair rule for a block of `len` bytes cut into `symbol_size`-byte symbols, when
    /// the sender asks for `repair_permille` per pass over `passes` passes:
    ///
    /// - a percentage of a small block is a symbol or two, and a block of few symbols fails on
    ///   a single unlucky loss, so every block gets at least [`MIN_REPAIR_SYMBOLS`] per pass;
    /// - losing a manifest loses its whole object (a pack: many files), so a manifest gets at
    ///   least [`MIN_MANIFEST_REPAIR_SYMBOLS`] per pass (100 % for a small one), and at least
    ///   the data's ratio when it is large (a pack's content travels in it);
    /// - `repair_permille == 0` sends data blocks without repair (manifests keep their floor).
    pub fn for_block(
        kind: BlockKind,
        len: usize,
        symbol_size: u16,
        repair_permille: u32,
        passes: u16,
    ) -> Self {
        let k = len.div_ceil(usize::from(symbol_size.max(1))).max(1) as u64;
        let floor = u32::try_from((MIN_REPAIR_SYMBOLS * 1000).div_ceil(k)).unwrap_or(u32::MAX);
        let asked = match kind {
            BlockKind::Manifest => {
                let floor = (MIN_MANIFEST_REPAIR_SYMBOLS * 1000).div_ceil(k).min(1000);
                repair_permille.max(u32::try_from(floor).unwrap_or(1000))
            }
            BlockKind::Data => repair_permille,
        };
        BlockPlan {
            repair_permille: if asked == 0 { 0 } else { asked.max(floor) },
            passes,
        }
    }
}

/// A block being sent and how far along it is.
#[derive(Debug)]
struct Active {
    block: OutgoingBlock,
    next: usize,
}

/// What [`Scheduler::poll_transmit`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Transmit {
    /// A frame of this many bytes was written at the start of the buffer: send it.
    Frame(usize),
    /// Nothing may go out before this instant (pacing or next heartbeat); call again then,
    /// or earlier if a block was pushed.
    WaitUntil(Instant),
}

/// Counts of what went out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxStats {
    /// Frames written, heartbeats included.
    pub frames: u64,
    /// Bytes of those frames.
    pub bytes: u64,
    /// Symbol frames.
    pub symbols: u64,
    /// Heartbeat frames.
    pub heartbeats: u64,
    /// Audit-head frames.
    pub audit_heads: u64,
    /// Blocks whose every symbol went out.
    pub blocks: u64,
}

/// Blocks in, paced and interleaved frames out.
#[derive(Debug)]
pub struct Scheduler {
    config: TxConfig,
    session: SessionId,
    key: LinkKey,
    active: VecDeque<Active>,
    queued: VecDeque<OutgoingBlock>,
    /// Token bucket level in micro-bytes (bytes × 10⁻⁶); may dip below zero by one frame.
    tokens: i64,
    refilled_at: Instant,
    next_heartbeat: Instant,
    heartbeat_seq: u64,
    /// One past the highest object id a symbol went out for.
    objects_started: u64,
    /// Blocks whose last symbol went out, not yet polled.
    sent: VecDeque<BlockKey>,
    /// The sender's audit-log head (sequence number, record hash), sent after each heartbeat.
    audit_head: Option<(u64, [u8; 32])>,
    /// A heartbeat went out and the audit head is to follow it.
    audit_head_due: bool,
    stats: TxStats,
}

impl Scheduler {
    /// A scheduler for one sender run. The first heartbeat goes out at `now`.
    pub fn new(config: TxConfig, session: SessionId, key: LinkKey, now: Instant) -> Self {
        let config = TxConfig {
            interleave: config.interleave.max(1),
            ..config
        };
        Scheduler {
            config,
            session,
            key,
            active: VecDeque::new(),
            queued: VecDeque::new(),
            tokens: Self::micro(config.burst),
            refilled_at: now,
            next_heartbeat: now,
            heartbeat_seq: 0,
            objects_started: 0,
            sent: VecDeque::new(),
            audit_head: None,
            audit_head_due: false,
            stats: TxStats::default(),
        }
    }

    fn micro(bytes: u64) -> i64 {
        i64::try_from(bytes.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
    }

    /// Whether [`push_block`](Self::push_block) will take another block.
    pub fn has_room(&self) -> bool {
        self.queued.len() < self.config.interleave
    }

    /// Queues a block; hands it back if there is no room.
    pub fn push_block(&mut self, block: OutgoingBlock) -> Result<(), OutgoingBlock> {
        if !self.has_room() {
            return Err(block);
        }
        if block.is_empty() {
            self.sent.push_back(block.key);
        } else {
            self.queued.push_back(block);
            self.fill_active();
        }
        Ok(())
    }

    /// Whether every pushed block has gone out.
    pub fn is_drained(&self) -> bool {
        self.active.is_empty() && self.queued.is_empty()
    }

    /// A block whose every symbol (of this push) has gone out, in the order they finished.
    /// Poll after [`poll_transmit`](Self::poll_transmit); unpolled keys accumulate.
    #[must_use]
    pub fn poll_sent(&mut self) -> Option<BlockKey> {
        self.sent.pop_front()
    }

    /// What went out so far.
    pub fn stats(&self) -> TxStats {
        self.stats
    }

    fn fill_active(&mut self) {
        while self.active.len() < self.config.interleave {
            let Some(block) = self.queued.pop_front() else {
                break;
            };
            self.active.push_back(Active { block, next: 0 });
        }
    }

    fn refill(&mut self, now: Instant) {
        let rate = self.config.rate;
        if rate == 0 {
            return;
        }
        let burst = Self::micro(self.config.burst);
        let elapsed = now.saturating_since(self.refilled_at).as_micros();
        let elapsed = u64::try_from(elapsed).unwrap_or(u64::MAX);
        // Micro-bytes gained = rate (bytes/s) × elapsed (µs); capped before it can overflow.
        let gained = i64::try_from(elapsed.saturating_mul(rate)).unwrap_or(i64::MAX);
        self.tokens = self.tokens.saturating_add(gained).min(burst);
        self.refilled_at = now;
    }

    /// When the bucket allows the next frame, or `None` if it does now.
    fn paced_until(&self) -> Option<Instant> {
        if self.config.rate == 0 || self.tokens > 0 {
            return None;
        }
        let deficit = u64::try_from(1 - self.tokens).unwrap_or(u64::MAX);
        Some(self.refilled_at + Duration::from_micros(deficit.div_ceil(self.config.rate)))
    }

    /// Writes the next frame into `out` (at least [`wire::MAX_FRAME_LEN`] bytes is always
    /// enough), or says when to call again.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Result<Transmit, EncodeError> {
        self.refill(now);
        if let Some(until) = self.paced_until() {
            return Ok(Transmit::WaitUntil(until));
        }
        let len = if now >= self.next_heartbeat {
            self.write_heartbeat(now, out)?
        } else if let Some(len) = self.write_audit_head(out)? {
            len
        } else if let Some(len) = self.write_next_symbol(out)? {
            len
        } else {
            return Ok(Transmit::WaitUntil(self.next_heartbeat));
        };
        let cost = len as u64 + u64::from(self.config.frame_overhead);
        if self.config.rate != 0 {
            self.tokens = self.tokens.saturating_sub(Self::micro(cost));
        }
        self.stats.frames += 1;
        self.stats.bytes += len as u64;
        Ok(Transmit::Frame(len))
    }

    fn write_heartbeat(&mut self, now: Instant, out: &mut [u8]) -> Result<usize, EncodeError> {
        let header = Header::Heartbeat(Heartbeat {
            session: self.session,
            seq: self.heartbeat_seq,
            frames_sent: self.stats.frames + 1,
            rate: self.config.rate,
            objects: self.objects_started,
        });
        let len = wire::write_frame(&header, &[], &self.key, out)?;
        self.heartbeat_seq += 1;
        self.stats.heartbeats += 1;
        self.next_heartbeat = now + self.config.heartbeat_interval;
        self.audit_head_due = self.audit_head.is_some();
        Ok(len)
    }

    /// Sets the sender's audit-log head: from now on it follows every heartbeat (repeated, so
    /// a lost frame costs only an interval).
    pub fn set_audit_head(&mut self, seq: u64, hash: [u8; 32]) {
        self.audit_head = Some((seq, hash));
    }

    /// Sets the audit-log head and sends it at once behind a heartbeat, without waiting for
    /// the interval: how a sender that stops announces its last objects (the heartbeat's
    /// count, so an object that went out just before is not left unannounced) and anchors its
    /// last records.
    pub fn send_audit_head_now(&mut self, now: Instant, seq: u64, hash: [u8; 32]) {
        self.audit_head = Some((seq, hash));
        self.next_heartbeat = self.next_heartbeat.min(now);
    }

    fn write_audit_head(&mut self, out: &mut [u8]) -> Result<Option<usize>, EncodeError> {
        let Some((seq, hash)) = self.audit_head.filter(|_| self.audit_head_due) else {
            return Ok(None);
        };
        let header = Header::AuditHead(AuditHead {
            session: self.session,
            seq,
            hash,
        });
        let len = wire::write_frame(&header, &[], &self.key, out)?;
        self.audit_head_due = false;
        self.stats.audit_heads += 1;
        Ok(Some(len))
    }

    /// Next symbol in round-robin order; `None` when no block is active.
    fn write_next_symbol(&mut self, out: &mut [u8]) -> Result<Option<usize>, EncodeError> {
        let Some(mut current) = self.active.pop_front() else {
            return Ok(None);
        };
        let block = &current.block;
        let i = current.next;
        let header = Header::Symbol(SymbolHeader {
            block: block.key,
            geometry: block.geometry,
            symbol: block.ids[i],
            segment_size: block.segment_size,
        });
        let len = wire::write_frame(&header, block.symbol(i), &self.key, out)?;
        current.next += 1;
        self.stats.symbols += 1;
        self.objects_started = self
            .objects_started
            .max(block.key.object.0.saturating_add(1));
        if current.next < current.block.ids.len() {
            self.active.push_back(current);
        } else {
            self.stats.blocks += 1;
            self.sent.push_back(current.block.key);
            self.fill_active();
        }
        Ok(Some(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{parse_frame, ObjectId};

    const SECRET: [u8; 32] = [3; 32];
    const SEGMENT: u32 = wire::MIN_SEGMENT_SIZE;

    fn block(index: u32, symbols: u16) -> OutgoingBlock {
        let geometry = Geometry::new(u32::from(symbols) * 64, 64, 0).unwrap();
        let key = BlockKey {
            session: SessionId(9),
            object: ObjectId(1),
            kind: BlockKind::Data,
            index,
        };
        let ids: Vec<u16> = (0..symbols).collect();
        OutgoingBlock::new(
            key,
            geometry,
            SEGMENT,
            ids,
            alloc::vec![index as u8; usize::from(symbols) * 64],
        )
        .unwrap()
    }

    #[test]
    fn every_pass_sends_each_symbol_the_codec_makes_for_its_id() {
        use crate::fec::ReedSolomon;
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let size = 1024usize;
        let plan = BlockPlan {
            repair_permille: 200,
            passes: 3,
        };
        let key = BlockKey {
            session: SessionId(9),
            object: ObjectId(1),
            kind: BlockKind::Data,
            index: 0,
        };
        let mut codec = ReedSolomon::new();
        for pass in 0..3 {
            let block =
                OutgoingBlock::encode_pass(key, SEGMENT, &data, 1024, plan, pass, &mut codec)
                    .unwrap();
            let geometry = block.geometry;
            let k = geometry.source_symbols;
            let reserved = geometry.repair_symbols;
            let mut padded = data.clone();
            padded.resize(usize::from(k) * size, 0);
            let mut repair = alloc::vec![0u8; usize::from(reserved) * size];
            codec
                .encode(&geometry, &padded, 0..reserved, &mut repair)
                .unwrap();
            assert!(!block.is_empty());
            for (i, id) in block.ids.iter().enumerate() {
                let id = usize::from(*id);
                let expected = if id < usize::from(k) {
                    &padded[id * size..][..size]
                } else {
                    &repair[(id - usize::from(k)) * size..][..size]
                };
                assert_eq!(
                    block.symbol(i),
                    expected,
                    "pass {pass}, symbol {i} (id {id})"
                );
            }
        }
    }

    fn config(rate: u64) -> TxConfig {
        TxConfig {
            rate,
            burst: 1000,
            frame_overhead: 28,
            interleave: 3,
            heartbeat_interval: Duration::from_secs(1),
        }
    }

    /// Runs the scheduler until drained; returns (time of each frame, parsed header).
    fn run(s: &mut Scheduler, start: Instant) -> Vec<(Instant, Header)> {
        let key = LinkKey::new(&SECRET);
        let mut now = start;
        let mut buf = [0u8; wire::MAX_FRAME_LEN];
        let mut sent = Vec::new();
        while !s.is_drained() {
            match s.poll_transmit(now, &mut buf).unwrap() {
                Transmit::Frame(n) => {
                    sent.push((now, parse_frame(&buf[..n], &key).unwrap().header))
                }
                Transmit::WaitUntil(t) => {
                    assert!(t > now, "must wait for a later instant");
                    now = t;
                }
            }
        }
        sent
    }

    #[test]
    fn symbols_interleave_round_robin_across_blocks() {
        let mut s = Scheduler::new(
            config(0),
            SessionId(9),
            LinkKey::new(&SECRET),
            Instant::ZERO,
        );
        for i in 0..4 {
            s.push_block(block(i, 2)).unwrap();
        }
        let order: Vec<(u32, u16)> = run(&mut s, Instant::ZERO)
            .into_iter()
            .filter_map(|(_, h)| match h {
                Header::Symbol(sym) => Some((sym.block.index, sym.symbol)),
                _ => None,
            })
            .collect();
        assert_eq!(
            order,
            [
                (0, 0),
                (1, 0),
                (2, 0),
                (0, 1),
                (1, 1),
                (2, 1),
                (3, 0),
                (3, 1)
            ]
        );
        assert_eq!(s.stats().blocks, 4);
        // Blocks finish in the order their last symbol went out.
        let finished: Vec<u32> = core::iter::from_fn(|| s.poll_sent())
            .map(|k| k.index)
            .collect();
        assert_eq!(finished, [0, 1, 2, 3]);
        // A block with nothing to send in this pass is finished at once.
        let empty = OutgoingBlock::new(
            block(7, 1).key(),
            block(7, 1).geometry,
            SEGMENT,
            vec![],
            vec![],
        )
        .unwrap();
        s.push_block(empty).unwrap();
        assert_eq!(s.poll_sent().map(|k| k.index), Some(7));
    }

    #[test]
    fn pacing_never_exceeds_rate_beyond_one_burst() {
        let rate = 100_000; // bytes per second
        let mut s = Scheduler::new(
            config(rate),
            SessionId(9),
            LinkKey::new(&SECRET),
            Instant::ZERO,
        );
        let mut sent = Vec::new();
        for i in 0..3 {
            s.push_block(block(i, 40)).unwrap();
        }
        sent.extend(run(&mut s, Instant::ZERO));
        let (last, _) = sent[sent.len() - 1];
        let bytes = s.stats().bytes + s.stats().frames * 28;
        let elapsed = last.as_micros() as f64 / 1e6;
        // Everything after the initial burst (and the one frame the bucket may owe) is paced.
        let allowed = rate as f64 * elapsed + 1000.0 + 200.0;
        assert!(bytes as f64 <= allowed, "{bytes} bytes in {elapsed}s");
        // And pacing is not grossly slow: within 5% of the rate.
        assert!(
            bytes as f64 >= rate as f64 * elapsed * 0.95,
            "{bytes} bytes in {elapsed}s"
        );
    }

    #[test]
    fn heartbeats_go_out_when_idle_and_when_busy() {
        let mut s = Scheduler::new(
            config(0),
            SessionId(9),
            LinkKey::new(&SECRET),
            Instant::ZERO,
        );
        let mut buf = [0u8; wire::MAX_FRAME_LEN];
        let key = LinkKey::new(&SECRET);
        let Transmit::Frame(n) = s.poll_transmit(Instant::ZERO, &mut buf).unwrap() else {
            panic!("first poll sends a heartbeat");
        };
        assert!(
            matches!(parse_frame(&buf[..n], &key).unwrap().header, Header::Heartbeat(h) if h.seq == 0 && h.objects == 0)
        );
        let next = Instant::ZERO + Duration::from_secs(1);
        assert_eq!(
            s.poll_transmit(Instant::ZERO, &mut buf).unwrap(),
            Transmit::WaitUntil(next)
        );
        s.push_block(block(0, 5)).unwrap();
        assert!(matches!(
            s.poll_transmit(Instant::ZERO, &mut buf).unwrap(),
            Transmit::Frame(_)
        ));
        let Transmit::Frame(n) = s.poll_transmit(next, &mut buf).unwrap() else {
            panic!("heartbeat due");
        };
        assert!(matches!(
            parse_frame(&buf[..n], &key).unwrap().header,
            Header::Heartbeat(h) if h.seq == 1 && h.frames_sent == 3
        ));
        // A symbol of object 1 went out: ids 0 and 1 are announced.
        assert!(matches!(
            parse_frame(&buf[..n], &key).unwrap().header,
            Header::Heartbeat(h) if h.objects == 2
        ));
    }

    #[test]
    fn the_audit_head_follows_every_heartbeat_once_set() {
        let key = LinkKey::new(&SECRET);
        let mut s = Scheduler::new(config(0), SessionId(9), key.clone(), Instant::ZERO);
        let mut buf = [0u8; wire::MAX_FRAME_LEN];
        let mut kinds = |s: &mut Scheduler, now| {
            let mut kinds = Vec::new();
            while let Transmit::Frame(n) = s.poll_transmit(now, &mut buf).unwrap() {
                kinds.push(parse_frame(&buf[..n], &key).unwrap().header);
            }
            kinds
        };
        // None set: a heartbeat alone.
        assert!(matches!(
            kinds(&mut s, Instant::ZERO).as_slice(),
            [Header::Heartbeat(_)]
        ));
        s.set_audit_head(41, [7; 32]);
        let later = Instant::ZERO + Duration::from_secs(1);
        let sent = kinds(&mut s, later);
        assert!(
            matches!(
                sent.as_slice(),
                [Header::Heartbeat(_), Header::AuditHead(h)]
                    if h.seq == 41 && h.hash == [7; 32] && h.session == SessionId(9)
            ),
            "{sent:?}"
        );
        // Repeated after the next heartbeat (a lost frame costs one interval), with the
        // newest head.
        s.set_audit_head(42, [8; 32]);
        let sent = kinds(&mut s, later + Duration::from_secs(1));
        assert!(
            matches!(sent.as_slice(), [Header::Heartbeat(_), Header::AuditHead(h)] if h.seq == 42)
        );
        assert_eq!(s.stats().audit_heads, 2);
        // At the end of a run: out at once, between heartbeats, behind a heartbeat that
        // announces every object started, and once.
        let end = later + Duration::from_millis(1500);
        s.send_audit_head_now(end, 43, [9; 32]);
        let sent = kinds(&mut s, end);
        assert!(
            matches!(sent.as_slice(), [Header::Heartbeat(_), Header::AuditHead(h)] if h.seq == 43),
            "{sent:?}"
        );
    }

    #[test]
    fn blocks_are_validated_and_queue_is_bounded() {
        let geometry = Geometry::new(64, 64, 0).unwrap();
        let key = block(0, 1).key();
        assert_eq!(
            OutgoingBlock::new(key, geometry, SEGMENT, alloc::vec![1], alloc::vec![0; 64])
                .unwrap_err(),
            TxError::Geometry
        );
        assert_eq!(
            OutgoingBlock::new(key, geometry, SEGMENT, alloc::vec![0], alloc::vec![0; 63])
                .unwrap_err(),
            TxError::SymbolBytes
        );
        let mut s = Scheduler::new(
            config(0),
            SessionId(9),
            LinkKey::new(&SECRET),
            Instant::ZERO,
        );
        let mut accepted = 0;
        while s.push_block(block(accepted, 1)).is_ok() {
            accepted += 1;
        }
        // Three active plus three queued.
        assert_eq!(accepted, 6);
    }

    #[test]
    fn the_repair_rule_floors_small_blocks_and_manifests() {
        // 100 symbols at 10 %: 10 repair per pass, above the floor.
        let big = BlockPlan::for_block(BlockKind::Data, 100 * 64, 64, 100, 2);
        assert_eq!((big.repair_permille, big.passes), (100, 2));
        // 2 symbols at 10 %: the floor of 4 repair symbols is 2000 ‰.
        let small = BlockPlan::for_block(BlockKind::Data, 100, 64, 100, 1);
        assert_eq!(small.repair_permille, 2000);
        // Manifests: 16 repair symbols at least, 100 % for small ones, even with repair off.
        let manifest = BlockPlan::for_block(BlockKind::Manifest, 64 * 10, 64, 0, 1);
        assert_eq!(manifest.repair_permille, 1000);
        let manifest = BlockPlan::for_block(BlockKind::Manifest, 64 * 40, 64, 0, 1);
        assert_eq!(manifest.repair_permille, 400);
        // A pack's manifest (1 MiB of content): the data's ratio, above the floor.
        let pack = BlockPlan::for_block(BlockKind::Manifest, 1 << 20, 1408, 100, 1);
        assert_eq!(pack.repair_permille, 100);
        assert_eq!(
            BlockPlan::for_block(BlockKind::Data, 100, 64, 0, 1).repair_permille,
            0
        );
    }
}
