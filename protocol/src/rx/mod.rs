//! Receive assembler: authenticated frames in, decodable blocks and link events out; and the
//! [`Census`] of objects the senders announced against those that showed up.
//!
//! Sans-IO and deterministic: the driver passes in frame bytes and the time, and polls for
//! events. Time only moves forward: every `now` passed in must be at least the one before
//! (the driver reads one monotonic clock). Memory is bounded by [`RxConfig`] whatever arrives: a block is admitted only if its
//! full padded size fits in the byte budget, and frames that fail the CRC or MAC never create
//! state at all.
//!
//! Call order (one driver loop):
//!
//! ```text
//!   loop {
//!       handle_frame(now, bytes)      for every frame the link delivered (or
//!       handle_verified(now, batch)   for frames verified where they arrived: VerifiedFrames)
//!       handle_timeout(now)           when poll_timeout() has passed (or just periodically)
//!       evict_idle(now, idle)         when memory is short: set quiet blocks aside early
//!       while let Some(ev) = poll_event() {
//!           BlockStarted  -> restore(..) spilled symbols, or mark_done(..) if already stored
//!           BlockReady    -> take_ready(key) and decode it (possibly on another thread)
//!           BlockStalled  -> persist the partial symbols for a later pass, report it
//!           ...
//!       }
//!   }
//!   drain_partials()                  at the end of a run: every unfinished block, to keep
//! ```

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec::Vec;
use core::time::Duration;

use crate::counters::{DropCounters, DropReason};
use crate::fec::{CodecError, ErasureCodec, Geometry};
use crate::time::Instant;
use crate::wire::{
    self, AuditHead, BlockKey, Header, Heartbeat, LinkKey, RelayStatus, SessionId, SymbolHeader,
};

pub mod census;
mod verified;
pub use census::{Census, Missing};
pub use verified::VerifiedFrames;

/// Bounds and timeouts of the assembler.
#[derive(Clone, Copy, Debug)]
pub struct RxConfig {
    /// Most blocks assembled at once (partial or ready but not yet taken).
    pub max_blocks: usize,
    /// Most bytes of block buffers held at once (each block is charged its full padded size).
    pub max_buffered_bytes: usize,
    /// A block that receives no new symbol for this long is given up and reported stalled.
    pub block_timeout: Duration,
    /// No valid frame for this long means the link is down.
    pub link_timeout: Duration,
    /// How many finished block keys to remember, so late symbols are dropped cheaply.
    pub remembered_done: usize,
    /// A block that holds `k` symbols, some of them repair, waits this long for its missing
    /// source symbols before it is decoded with the repair ones. Frames striped over several
    /// flows arrive out of order, so a repair symbol is often there before the last source
    /// symbols: decoding then costs the full erasure decode where copying the sources would
    /// have done. A late source symbol takes a repair symbol's place, so the block never
    /// holds more than `k` symbols. Zero decodes as soon as `k` symbols are there.
    pub source_grace: Duration,
}

impl Default for RxConfig {
    fn default() -> Self {
        RxConfig {
            max_blocks: 256,
            max_buffered_bytes: 32 * 1024 * 1024,
            block_timeout: Duration::from_secs(10),
            link_timeout: Duration::from_secs(5),
            remembered_done: 1 << 16,
            source_grace: Duration::from_millis(20),
        }
    }
}

/// What the assembler reports; drain with [`Assembler::poll_event`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// The first symbol of a block not held yet arrived. The driver may
    /// [`restore`](Assembler::restore) symbols it saved earlier, or
    /// [`mark_done`](Assembler::mark_done) a block it already has.
    BlockStarted(BlockKey),
    /// A block holds `k` distinct symbols: [`take_ready`](Assembler::take_ready) it.
    BlockReady(BlockKey),
    /// A block got no symbol for `block_timeout` and was evicted with fewer than `k` symbols.
    BlockStalled(PartialBlock),
    /// A valid frame arrived after `link_timeout` of silence (or for the first time).
    LinkUp,
    /// No valid frame for `link_timeout`.
    LinkDown,
    /// A sender heartbeat.
    Heartbeat(Heartbeat),
    /// Counters from a protocol-break relay on the link.
    RelayStatus(RelayStatus),
    /// The head of a sender's audit log.
    AuditHead(AuditHead),
}

/// Symbols of one block, held until `k` distinct ones are there.
#[derive(Debug)]
struct Assembly {
    geometry: Geometry,
    segment_size: u32,
    /// One bit per symbol id: already held.
    seen: Vec<u64>,
    /// Ids of the held symbols, in arrival order.
    ids: Vec<u16>,
    /// Held symbols back to back, `symbol_size` bytes each, same order as `ids`.
    symbols: Vec<u8>,
    /// How many of `ids` are repair symbols.
    repairs: usize,
    /// When it first held `k` symbols with some repair among them (see
    /// [`RxConfig::source_grace`]).
    full_since: Option<Instant>,
    last_update: Instant,
}

/// What [`Assembly::insert`] did with a symbol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Insert {
    Stored,
    /// Already held.
    Duplicate,
    /// The block holds `k` symbols already and this one would not replace a repair symbol.
    NotNeeded,
}

impl Assembly {
    fn new(geometry: Geometry, segment_size: u32, now: Instant) -> Self {
        let k = usize::from(geometry.source_symbols);
        let words = (geometry.total_symbols() as usize).div_ceil(64);
        Assembly {
            geometry,
            segment_size,
            seen: alloc::vec![0; words],
            ids: Vec::with_capacity(k),
            symbols: Vec::with_capacity(k * usize::from(geometry.symbol_size)),
            repairs: 0,
            full_since: None,
            last_update: now,
        }
    }

    /// Bytes this block is charged against the budget: everything allocated for it.
    fn charge(geometry: &Geometry) -> usize {
        let k = usize::from(geometry.source_symbols);
        let words = (geometry.total_symbols() as usize).div_ceil(64);
        k * usize::from(geometry.symbol_size) + k * 2 + words * 8
    }

    /// Adds a symbol while fewer than `k` are held; after that, a source symbol only takes a
    /// repair symbol's place (the block's buffer never grows past `k` symbols). Source symbols
    /// are kept before repair ones (`ids[..sources]`, then the `repairs`), so the place to take
    /// is always the first repair symbol's: constant time per symbol whatever `k` a sender
    /// chose.
    fn insert(&mut self, id: u16, data: &[u8]) -> Insert {
        let (word, bit) = (usize::from(id) / 64, u64::from(id) % 64);
        let size = usize::from(self.geometry.symbol_size);
        let full = self.is_ready();
        let source = self.geometry.is_source(id);
        let Some(slot) = self.seen.get_mut(word) else {
            return Insert::Duplicate;
        };
        if *slot & (1 << bit) != 0 {
            return Insert::Duplicate;
        }
        if data.len() != size || (full && (!source || self.repairs == 0)) {
            return Insert::NotNeeded;
        }
        *slot |= 1 << bit;
        let first_repair = self.ids.len() - self.repairs;
        if full {
            // Overwrite the first repair symbol; the sources grow by one.
            if let (Some(held), Some(bytes)) = (
                self.ids.get_mut(first_repair),
                self.symbols
                    .get_mut(first_repair * size..(first_repair + 1) * size),
            ) {
                *held = id;
                bytes.copy_from_slice(data);
                self.repairs -= 1;
            }
            return Insert::Stored;
        }
        self.ids.push(id);
        self.symbols.extend_from_slice(data);
        if !source {
            self.repairs += 1;
        } else if self.repairs > 0 {
            // Swap the new source with the first repair symbol, so sources stay in front.
            let last = self.ids.len() - 1;
            self.ids.swap(first_repair, last);
            let (front, back) = self.symbols.split_at_mut(last * size);
            if let Some(first) = front.get_mut(first_repair * size..(first_repair + 1) * size) {
                first.swap_with_slice(back);
            }
        }
        Insert::Stored
    }

    /// Holds `k` symbols: decodable.
    fn is_ready(&self) -> bool {
        self.ids.len() >= usize::from(self.geometry.source_symbols)
    }

    fn into_parts(self) -> (Geometry, u32, Vec<u16>, Vec<u8>) {
        (self.geometry, self.segment_size, self.ids, self.symbols)
    }
}

/// A block with `k` distinct symbols, ready to decode.
#[derive(Debug)]
pub struct ReadyBlock {
    /// The block.
    pub key: BlockKey,
    /// Its geometry.
    pub geometry: Geometry,
    /// Its [`SymbolHeader::segment_size`].
    pub segment_size: u32,
    ids: Vec<u16>,
    symbols: Vec<u8>,
}

impl ReadyBlock {
    /// Decodes the block's data (`block_len` bytes, padding removed) with `codec`.
    pub fn decode(&self, codec: &mut dyn ErasureCodec) -> Result<Vec<u8>, CodecError> {
        let padded =
            usize::try_from(self.geometry.padded_len()).map_err(|_| CodecError::BufferLength)?;
        let mut out = alloc::vec![0u8; padded];
        let size = usize::from(self.geometry.symbol_size);
        let mut symbols = self
            .ids
            .iter()
            .copied()
            .zip(self.symbols.chunks_exact(size));
        codec.decode(&self.geometry, &mut symbols, &mut out)?;
        out.truncate(self.geometry.block_len as usize);
        Ok(out)
    }

    /// Whether every source symbol arrived (no repair symbol was needed).
    pub fn used_repair(&self) -> bool {
        self.ids.iter().any(|id| !self.geometry.is_source(*id))
    }
}

/// The symbols of a block that was given up, so a driver can keep them for a later pass.
#[derive(Debug, Clone)]
pub struct PartialBlock {
    /// The block.
    pub key: BlockKey,
    /// Its geometry.
    pub geometry: Geometry,
    /// Its [`SymbolHeader::segment_size`].
    pub segment_size: u32,
    /// Held symbol ids.
    pub ids: Vec<u16>,
    /// Held symbols back to back, same order as `ids`.
    pub symbols: Vec<u8>,
}

/// Frames in, events out. See the module docs for the call order.
#[derive(Debug)]
pub struct Assembler {
    config: RxConfig,
    key: LinkKey,
    assembling: BTreeMap<BlockKey, Assembly>,
    ready: BTreeMap<BlockKey, Assembly>,
    buffered: usize,
    done: BTreeSet<BlockKey>,
    done_order: VecDeque<BlockKey>,
    events: VecDeque<Event>,
    drops: DropCounters,
    stats: RxStats,
    last_frame: Option<Instant>,
    link_up: bool,
    recent_sessions: VecDeque<SessionId>,
    /// The earliest end of a block's [`RxConfig::source_grace`], if one is waiting.
    grace_ends: Option<Instant>,
}

/// Sessions remembered for counting distinct senders runs.
const RECENT_SESSIONS: usize = 16;

/// Counts of what the assembler accepted and produced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxStats {
    /// Frames that passed every check.
    pub frames_ok: u64,
    /// Symbols stored into a block.
    pub symbols_stored: u64,
    /// Blocks that reached `k` symbols.
    pub blocks_ready: u64,
    /// Blocks given up on a timeout.
    pub blocks_stalled: u64,
    /// Sessions seen (distinct senders runs), counted on first sight.
    pub sessions_seen: u64,
}

impl Assembler {
    /// An empty assembler that authenticates frames with `key`.
    pub fn new(config: RxConfig, key: LinkKey) -> Self {
        Assembler {
            config,
            key,
            assembling: BTreeMap::new(),
            ready: BTreeMap::new(),
            buffered: 0,
            done: BTreeSet::new(),
            done_order: VecDeque::new(),
            events: VecDeque::new(),
            drops: DropCounters::default(),
            stats: RxStats::default(),
            last_frame: None,
            link_up: false,
            recent_sessions: VecDeque::new(),
            grace_ends: None,
        }
    }

    /// Drops counted so far, by reason.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Counts a drop that happened before the assembler (e.g. serial deframing).
    pub fn record_drop(&mut self, reason: DropReason) {
        self.drops.record(reason);
    }

    /// What the assembler accepted and produced so far.
    pub fn stats(&self) -> RxStats {
        self.stats
    }

    /// Bytes of block buffers held now; never above `max_buffered_bytes`.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Blocks held now (assembling or ready); never above `max_blocks`.
    pub fn blocks_held(&self) -> usize {
        self.assembling.len() + self.ready.len()
    }

    /// Handles one frame as delivered by the link (datagram or deframed serial frame):
    /// verifies it with the assembler's key, then assembles it.
    pub fn handle_frame(&mut self, now: Instant, bytes: &[u8]) {
        match wire::parse_frame(bytes, &self.key) {
            Ok(frame) => self.accept(now, &frame.header, frame.payload),
            Err(error) => self.drops.record(error.into()),
        }
        self.end_grace(now);
    }

    /// Handles a batch of frames verified elsewhere (on the thread that received them, see
    /// [`VerifiedFrames`]), in the order they were verified, and counts the drops found while
    /// verifying them. Nothing is checked again: a batch holds only frames that passed every
    /// check of [`wire::parse_frame`]. The drops, statistics and events are those
    /// [`handle_frame`](Self::handle_frame) would give for the same frames. The batch must
    /// have been verified under this assembler's key (the driver holds both).
    pub fn handle_verified(&mut self, now: Instant, batch: &VerifiedFrames) {
        for (header, payload) in batch.frames() {
            self.accept(now, header, payload);
        }
        self.drops.merge(batch.drops());
        self.end_grace(now);
    }

    /// One frame that passed every check.
    fn accept(&mut self, now: Instant, header: &Header, payload: &[u8]) {
        self.stats.frames_ok += 1;
        if !self.link_up {
            self.link_up = true;
            self.events.push_back(Event::LinkUp);
        }
        self.last_frame = Some(now);
        match header {
            Header::Symbol(symbol) => self.handle_symbol(now, symbol, payload),
            Header::Heartbeat(beat) => self.events.push_back(Event::Heartbeat(*beat)),
            Header::RelayStatus(status) => self.events.push_back(Event::RelayStatus(*status)),
            Header::AuditHead(head) => self.events.push_back(Event::AuditHead(*head)),
        }
    }

    fn handle_symbol(&mut self, now: Instant, header: &SymbolHeader, data: &[u8]) {
        let key = header.block;
        if self.done.contains(&key) || self.ready.contains_key(&key) {
            return self.drops.record(DropReason::BlockDone);
        }
        if !self.assembling.contains_key(&key) {
            if let Err(reason) = self.admit(key, header.geometry, header.segment_size, now) {
                return self.drops.record(reason);
            }
        }
        let Some(block) = self.assembling.get_mut(&key) else {
            return;
        };
        if block.geometry != header.geometry || block.segment_size != header.segment_size {
            return self.drops.record(DropReason::GeometryMismatch);
        }
        match block.insert(header.symbol, data) {
            Insert::Stored => {}
            Insert::Duplicate => return self.drops.record(DropReason::Duplicate),
            // What a symbol arriving after the block was decodable always counted as.
            Insert::NotNeeded => return self.drops.record(DropReason::BlockDone),
        }
        block.last_update = now;
        self.stats.symbols_stored += 1;
        self.promote_if_ready(key, now);
    }

    /// Creates the state for a new block if the bounds allow it.
    fn admit(
        &mut self,
        key: BlockKey,
        geometry: Geometry,
        segment_size: u32,
        now: Instant,
    ) -> Result<(), DropReason> {
        let charge = Assembly::charge(&geometry);
        if self.blocks_held() >= self.config.max_blocks
            || self.buffered + charge > self.config.max_buffered_bytes
        {
            return Err(DropReason::Capacity);
        }
        if !self.recent_sessions.contains(&key.session) {
            self.stats.sessions_seen += 1;
            self.recent_sessions.push_front(key.session);
            self.recent_sessions.truncate(RECENT_SESSIONS);
        }
        self.buffered += charge;
        self.assembling
            .insert(key, Assembly::new(geometry, segment_size, now));
        self.events.push_back(Event::BlockStarted(key));
        Ok(())
    }

    /// Moves a block holding `k` symbols to the ready ones: at once if they are all source
    /// symbols, else once its [`RxConfig::source_grace`] has passed.
    fn promote_if_ready(&mut self, key: BlockKey, now: Instant) {
        let grace = self.config.source_grace;
        let Some(block) = self.assembling.get_mut(&key).filter(|b| b.is_ready()) else {
            return;
        };
        if block.repairs > 0 && !grace.is_zero() {
            let since = *block.full_since.get_or_insert(now);
            if now.saturating_since(since) < grace {
                let ends = since + grace;
                self.grace_ends = Some(self.grace_ends.map_or(ends, |e| e.min(ends)));
                return;
            }
        }
        self.promote(key);
    }

    /// Moves a block to the ready ones.
    fn promote(&mut self, key: BlockKey) {
        if let Some(block) = self.assembling.remove(&key) {
            self.ready.insert(key, block);
            self.stats.blocks_ready += 1;
            self.events.push_back(Event::BlockReady(key));
        }
    }

    /// Gives symbols a driver saved earlier (from a [`PartialBlock`]) back to a block that is
    /// assembling again. Symbols already held or with another geometry or segment size are
    /// ignored. Returns
    /// how many were added.
    pub fn restore(&mut self, now: Instant, saved: &PartialBlock) -> usize {
        let Some(block) = self.assembling.get_mut(&saved.key) else {
            return 0;
        };
        if block.geometry != saved.geometry || block.segment_size != saved.segment_size {
            return 0;
        }
        let size = usize::from(saved.geometry.symbol_size);
        let mut added = 0;
        for (id, data) in saved.ids.iter().zip(saved.symbols.chunks_exact(size)) {
            if u32::from(*id) < saved.geometry.total_symbols()
                && block.insert(*id, data) == Insert::Stored
            {
                added += 1;
            }
        }
        block.last_update = now;
        self.promote_if_ready(saved.key, now);
        added
    }

    /// Takes a ready block out of the assembler; later symbols for it are dropped as done.
    #[must_use]
    pub fn take_ready(&mut self, key: &BlockKey) -> Option<ReadyBlock> {
        let block = self.ready.remove(key)?;
        self.buffered -= Assembly::charge(&block.geometry);
        self.remember_done(*key);
        let (geometry, segment_size, ids, symbols) = block.into_parts();
        Some(ReadyBlock {
            key: *key,
            geometry,
            segment_size,
            ids,
            symbols,
        })
    }

    /// Declares a block finished (the driver already stored it): its state is released and
    /// later symbols are dropped.
    pub fn mark_done(&mut self, key: BlockKey) {
        if let Some(block) = self
            .assembling
            .remove(&key)
            .or_else(|| self.ready.remove(&key))
        {
            self.buffered -= Assembly::charge(&block.geometry);
        }
        self.remember_done(key);
    }

    fn remember_done(&mut self, key: BlockKey) {
        if self.config.remembered_done == 0 || !self.done.insert(key) {
            return;
        }
        self.done_order.push_back(key);
        while self.done_order.len() > self.config.remembered_done {
            if let Some(old) = self.done_order.pop_front() {
                self.done.remove(&old);
            }
        }
    }

    /// Promotes the blocks whose wait for source symbols is over, once the earliest is.
    fn end_grace(&mut self, now: Instant) {
        if self.grace_ends.is_none_or(|ends| now < ends) {
            return;
        }
        self.grace_ends = None;
        let waiting: Vec<BlockKey> = self
            .assembling
            .iter()
            .filter(|(_, b)| b.full_since.is_some())
            .map(|(k, _)| *k)
            .collect();
        for key in waiting {
            self.promote_if_ready(key, now);
        }
    }

    /// Evicts stalled blocks, decodes the ones done waiting for sources, and notices a silent
    /// link.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.end_grace(now);
        self.evict_idle(now, self.config.block_timeout);
        if self.link_up
            && self
                .last_frame
                .is_some_and(|t| now.saturating_since(t) >= self.config.link_timeout)
        {
            self.link_up = false;
            self.events.push_back(Event::LinkDown);
        }
    }

    /// Gives up, as [`Event::BlockStalled`], every block that got no symbol for `idle` (which
    /// may be shorter than the block timeout: a driver short of memory sets quiet blocks aside
    /// early, for a later pass); one waiting for its source symbols is decodable and becomes
    /// [`Event::BlockReady`] instead. The link state is not touched.
    pub fn evict_idle(&mut self, now: Instant, idle: Duration) {
        let quiet: Vec<BlockKey> = self
            .assembling
            .iter()
            .filter(|(_, b)| now.saturating_since(b.last_update) >= idle)
            .map(|(k, _)| *k)
            .collect();
        for key in quiet {
            self.stall(key);
        }
    }

    /// Gives up every block still assembling, as [`Event::BlockStalled`] (at the end of a run,
    /// so the driver can keep their symbols for a later one); a block waiting for its source
    /// symbols is decodable and becomes [`Event::BlockReady`] instead.
    pub fn drain_partials(&mut self) {
        let keys: Vec<BlockKey> = self.assembling.keys().copied().collect();
        for key in keys {
            self.stall(key);
        }
    }

    /// Gives a block up as [`Event::BlockStalled`]; one that holds `k` symbols (waiting for
    /// sources) is decodable, and goes to the ready ones instead.
    fn stall(&mut self, key: BlockKey) {
        if self.assembling.get(&key).is_some_and(Assembly::is_ready) {
            return self.promote(key);
        }
        if let Some(block) = self.assembling.remove(&key) {
            self.buffered -= Assembly::charge(&block.geometry);
            self.stats.blocks_stalled += 1;
            let (geometry, segment_size, ids, symbols) = block.into_parts();
            self.events.push_back(Event::BlockStalled(PartialBlock {
                key,
                geometry,
                segment_size,
                ids,
                symbols,
            }));
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has something to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let block = self
            .assembling
            .values()
            .map(|b| b.last_update + self.config.block_timeout)
            .min();
        let link = self
            .last_frame
            .filter(|_| self.link_up)
            .map(|t| t + self.config.link_timeout);
        [block, link, self.grace_ends].into_iter().flatten().min()
    }

    /// The next event, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fec::{ReedSolomon, RepairPlan};
    use crate::wire::{BlockKind, ObjectId};

    const SECRET: [u8; 32] = [7; 32];

    fn key(index: u32) -> BlockKey {
        BlockKey {
            session: SessionId(1),
            object: ObjectId(0),
            kind: BlockKind::Data,
            index,
        }
    }

    /// Encodes `data` and returns (geometry, frames of pass `pass`).
    fn frames(
        block: BlockKey,
        data: &[u8],
        repair_permille: u32,
        pass: u16,
    ) -> (Geometry, Vec<Vec<u8>>) {
        frames_with_segment(block, data, repair_permille, pass, wire::MIN_SEGMENT_SIZE)
    }

    fn frames_with_segment(
        block: BlockKey,
        data: &[u8],
        repair_permille: u32,
        pass: u16,
        segment_size: u32,
    ) -> (Geometry, Vec<Vec<u8>>) {
        let size = 64;
        let k = data.len().div_ceil(size) as u16;
        let plan = RepairPlan::new(k, repair_permille, 2);
        let geometry =
            Geometry::new(data.len() as u32, size as u16, plan.reserved_repair()).unwrap();
        let mut padded = data.to_vec();
        padded.resize(k as usize * size, 0);
        let r = plan.reserved_repair();
        let mut repair = vec![0u8; r as usize * size];
        ReedSolomon::default()
            .encode(&geometry, &padded, 0..r, &mut repair)
            .unwrap();
        let link = LinkKey::new(&SECRET);
        let out = plan
            .symbols(pass)
            .map(|id| {
                let payload = if id < k {
                    &padded[id as usize * size..][..size]
                } else {
                    &repair[(id - k) as usize * size..][..size]
                };
                let header = Header::Symbol(SymbolHeader {
                    block,
                    geometry,
                    symbol: id,
                    segment_size,
                });
                let mut buf = vec![0u8; 512];
                let n = wire::write_frame(&header, payload, &link, &mut buf).unwrap();
                buf.truncate(n);
                buf
            })
            .collect();
        (geometry, out)
    }

    fn drain(a: &mut Assembler) -> Vec<Event> {
        core::iter::from_fn(|| a.poll_event()).collect()
    }

    #[test]
    fn lossy_block_recovers_bit_exact() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 251) as u8).collect();
        let (_, fr) = frames(key(0), &data, 500, 0);
        let mut a = Assembler::new(RxConfig::default(), LinkKey::new(&SECRET));
        // Lose every third frame: 16 source + 8 repair sent, 8 lost, 16 left = k.
        for (i, f) in fr.iter().enumerate() {
            if i % 3 != 0 {
                a.handle_frame(Instant::ZERO, f);
            }
        }
        let events = drain(&mut a);
        assert!(matches!(events[0], Event::LinkUp));
        // k symbols, some repair: the block waits for its missing sources a while...
        assert!(!events.iter().any(|e| matches!(e, Event::BlockReady(_))));
        let grace = RxConfig::default().source_grace;
        assert_eq!(a.poll_timeout(), Some(Instant::ZERO + grace));
        // ...then is decoded with the repair symbols.
        a.handle_timeout(Instant::ZERO + grace);
        assert!(drain(&mut a)
            .iter()
            .any(|e| matches!(e, Event::BlockReady(k) if *k == key(0))));
        let ready = a.take_ready(&key(0)).unwrap();
        assert!(ready.used_repair());
        assert_eq!(ready.decode(&mut ReedSolomon::default()).unwrap(), data);
        assert_eq!(a.buffered_bytes(), 0);
        // Later symbols of the finished block are dropped as done.
        a.handle_frame(Instant::ZERO, &fr[0]);
        assert_eq!(a.drops().get(DropReason::BlockDone), 1);
    }

    /// Diodes with 8- or 16-bit block counters have mixed symbols of blocks whose counters
    /// agree modulo the wrap into one "decoded" block. Blocks and objects whose identifiers
    /// agree modulo 2^8 and 2^16, fed interleaved, each decode to their own bytes.
    #[test]
    fn identifiers_equal_modulo_a_small_counter_never_mix() {
        let keys = [
            key(1),
            key(1 + 256),
            key(1 + 65_536),
            BlockKey {
                object: ObjectId(1 + 256),
                ..key(1)
            },
            BlockKey {
                object: ObjectId(1 + (1 << 32)),
                ..key(1)
            },
        ];
        let blocks: Vec<(BlockKey, Vec<u8>, Vec<Vec<u8>>)> = keys
            .iter()
            .enumerate()
            .map(|(n, &k)| {
                let data: Vec<u8> = (0..900u32)
                    .map(|i| (i * 7 + n as u32 * 101) as u8)
                    .collect();
                let (_, fr) = frames(k, &data, 500, 0);
                (k, data, fr)
            })
            .collect();
        let mut a = Assembler::new(RxConfig::default(), LinkKey::new(&SECRET));
        // Round robin across the blocks, skipping each block's first two symbols (repair fills
        // them in), so every block is assembled while all the others are in flight.
        let longest = blocks.iter().map(|b| b.2.len()).max().unwrap_or(0);
        for i in 2..longest {
            for (_, _, fr) in &blocks {
                if let Some(f) = fr.get(i) {
                    a.handle_frame(Instant::ZERO, f);
                }
            }
        }
        a.handle_timeout(Instant::ZERO + RxConfig::default().source_grace);
        let ready: Vec<BlockKey> = drain(&mut a)
            .into_iter()
            .filter_map(|e| match e {
                Event::BlockReady(k) => Some(k),
                _ => None,
            })
            .collect();
        assert_eq!(ready.len(), keys.len(), "{ready:?}");
        for (k, data, _) in &blocks {
            let block = a.take_ready(k).unwrap();
            assert!(block.used_repair());
            assert_eq!(&block.decode(&mut ReedSolomon::default()).unwrap(), data);
        }
        // The only drops are symbols beyond k of blocks already decodable.
        let drops: Vec<_> = a.drops().nonzero().collect();
        assert!(
            drops
                .iter()
                .all(|(reason, _)| *reason == DropReason::BlockDone),
            "{drops:?}"
        );
    }

    #[test]
    fn stalled_block_is_reported_and_second_pass_merges() {
        let data: Vec<u8> = (0..640u32).map(|i| i as u8).collect();
        let (_, pass1) = frames(key(0), &data, 100, 0);
        let (_, pass2) = frames(key(0), &data, 100, 1);
        let config = RxConfig::default();
        let mut a = Assembler::new(config, LinkKey::new(&SECRET));
        for f in &pass1[..6] {
            a.handle_frame(Instant::ZERO, f);
        }
        let later = Instant::ZERO + config.block_timeout;
        a.handle_timeout(later);
        let partial = drain(&mut a)
            .into_iter()
            .find_map(|e| match e {
                Event::BlockStalled(p) => Some(p),
                _ => None,
            })
            .unwrap();
        assert_eq!(partial.ids.len(), 6);
        assert_eq!(a.buffered_bytes(), 0);
        // Pass 2: the driver restores the saved symbols when the block starts again.
        a.handle_frame(later, &pass2[0]);
        assert!(drain(&mut a)
            .iter()
            .any(|e| matches!(e, Event::BlockStarted(_))));
        assert_eq!(a.restore(later, &partial), 6);
        for f in &pass2[1..4] {
            a.handle_frame(later, f);
        }
        a.handle_timeout(later + config.source_grace);
        let ready = a.take_ready(&key(0)).unwrap();
        assert_eq!(ready.decode(&mut ReedSolomon::default()).unwrap(), data);
    }

    #[test]
    fn a_late_source_symbol_takes_a_repair_symbol_s_place() {
        // Striped over flows, repair symbols may come before the last sources: the block
        // holds k symbols at most, swaps repair for source as sources come, and is ready the
        // moment every source is there — decoded by copying, not by the erasure decode.
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 13 % 241) as u8).collect();
        let (geometry, fr) = frames(key(0), &data, 500, 0);
        let k = usize::from(geometry.source_symbols);
        let mut a = Assembler::new(RxConfig::default(), LinkKey::new(&SECRET));
        let charge = Assembly::charge(&geometry);
        // Every repair symbol first, then the sources, all at one instant.
        for f in fr[k..].iter().chain(&fr[..k]) {
            a.handle_frame(Instant::ZERO, f);
            assert!(a.buffered_bytes() <= charge);
        }
        assert!(drain(&mut a)
            .iter()
            .any(|e| matches!(e, Event::BlockReady(b) if *b == key(0))));
        let ready = a.take_ready(&key(0)).unwrap();
        assert!(!ready.used_repair());
        assert_eq!(ready.ids.len(), k);
        assert_eq!(ready.decode(&mut ReedSolomon::default()).unwrap(), data);
        assert_eq!(a.drops().nonzero().count(), 0);
    }

    #[test]
    fn in_any_order_every_source_arriving_means_a_decode_without_repair() {
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 253) as u8).collect();
        let (geometry, fr) = frames(key(0), &data, 1000, 0);
        let k = usize::from(geometry.source_symbols);
        for seed in 1..40u64 {
            // A seeded shuffle of every frame (sources and repair) of the block.
            let mut order: Vec<usize> = (0..fr.len()).collect();
            let mut x = seed;
            for i in (1..order.len()).rev() {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                order.swap(i, (x >> 33) as usize % (i + 1));
            }
            let mut a = Assembler::new(RxConfig::default(), LinkKey::new(&SECRET));
            for &i in &order {
                a.handle_frame(Instant::ZERO, &fr[i]);
            }
            let ready = a.take_ready(&key(0)).unwrap();
            assert!(!ready.used_repair(), "seed {seed}");
            assert_eq!(ready.ids.len(), k);
            assert_eq!(
                ready.decode(&mut ReedSolomon::default()).unwrap(),
                data,
                "seed {seed}"
            );
        }
    }

    #[test]
    fn a_block_waiting_for_sources_is_ready_not_stalled_at_the_end() {
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let (geometry, fr) = frames(key(0), &data, 500, 0);
        let k = usize::from(geometry.source_symbols);
        let mut a = Assembler::new(RxConfig::default(), LinkKey::new(&SECRET));
        // One source lost: k symbols with one repair, waiting.
        for f in fr[1..=k].iter() {
            a.handle_frame(Instant::ZERO, f);
        }
        assert!(!drain(&mut a)
            .iter()
            .any(|e| matches!(e, Event::BlockReady(_))));
        a.drain_partials();
        let events = drain(&mut a);
        assert!(events
            .iter()
            .any(|e| matches!(e, Event::BlockReady(b) if *b == key(0))));
        assert!(!events.iter().any(|e| matches!(e, Event::BlockStalled(_))));
        let ready = a.take_ready(&key(0)).unwrap();
        assert_eq!(ready.decode(&mut ReedSolomon::default()).unwrap(), data);
    }

    #[test]
    fn memory_bound_holds_and_capacity_drops_are_counted() {
        let config = RxConfig {
            max_blocks: 3,
            ..RxConfig::default()
        };
        let mut a = Assembler::new(config, LinkKey::new(&SECRET));
        for i in 0..10 {
            let (_, fr) = frames(key(i), &[1u8; 200], 0, 0);
            a.handle_frame(Instant::ZERO, &fr[0]);
            assert!(a.blocks_held() <= 3);
        }
        assert_eq!(a.drops().get(DropReason::Capacity), 7);
    }

    #[test]
    fn symbols_disagreeing_with_their_block_are_dropped() {
        let data = [9u8; 640];
        let segment = wire::MIN_SEGMENT_SIZE;
        let (_, first) = frames_with_segment(key(0), &data, 0, 0, segment);
        let (_, other_segment) = frames_with_segment(key(0), &data, 0, 0, segment * 2);
        let (_, other_geometry) = frames_with_segment(key(0), &data[..600], 0, 0, segment);
        let mut a = Assembler::new(RxConfig::default(), LinkKey::new(&SECRET));
        a.handle_frame(Instant::ZERO, &first[0]);
        a.handle_frame(Instant::ZERO, &other_segment[1]);
        a.handle_frame(Instant::ZERO, &other_geometry[2]);
        assert_eq!(a.drops().get(DropReason::GeometryMismatch), 2);
        for f in &first[1..] {
            a.handle_frame(Instant::ZERO, f);
        }
        let ready = a.take_ready(&key(0)).unwrap();
        assert_eq!(ready.segment_size, segment);
        assert_eq!(ready.decode(&mut ReedSolomon::default()).unwrap(), data);
    }

    #[test]
    fn forged_frames_create_no_state() {
        let (_, fr) = frames(key(0), &[5u8; 300], 0, 0);
        let mut a = Assembler::new(RxConfig::default(), LinkKey::new(&[8; 32]));
        for f in &fr {
            a.handle_frame(Instant::ZERO, f);
        }
        assert_eq!(a.drops().get(DropReason::BadMac), fr.len() as u64);
        assert_eq!(a.blocks_held(), 0);
        assert!(a.poll_event().is_none());
    }

    #[test]
    fn link_down_after_silence() {
        let (_, fr) = frames(key(0), &[5u8; 64], 0, 0);
        let config = RxConfig::default();
        let mut a = Assembler::new(config, LinkKey::new(&SECRET));
        a.handle_frame(Instant::ZERO, &fr[0]);
        a.mark_done(key(0));
        drain(&mut a);
        a.handle_timeout(Instant::ZERO + config.link_timeout);
        assert!(matches!(a.poll_event(), Some(Event::LinkDown)));
        assert_eq!(a.poll_timeout(), None);
    }

    #[test]
    fn idle_blocks_are_set_aside_early_without_touching_the_link_state() {
        let config = RxConfig::default();
        let mut a = Assembler::new(config, LinkKey::new(&SECRET));
        let (_, quiet) = frames(key(0), &[1u8; 640], 100, 0);
        let (_, busy) = frames(key(1), &[2u8; 640], 100, 0);
        a.handle_frame(Instant::ZERO, &quiet[0]);
        let t = Instant::ZERO + Duration::from_millis(150);
        a.handle_frame(t, &busy[0]);
        drain(&mut a);
        a.evict_idle(t, Duration::from_millis(100));
        let events = drain(&mut a);
        assert_eq!(
            events.len(),
            1,
            "only the quiet block, and no LinkDown: {events:?}"
        );
        assert!(matches!(&events[0], Event::BlockStalled(p) if p.key == key(0)));
        assert_eq!(a.blocks_held(), 1);
        // At the end of a run every block left is handed over, whatever the time.
        a.drain_partials();
        assert!(matches!(a.poll_event(), Some(Event::BlockStalled(p)) if p.key == key(1)));
        assert_eq!((a.blocks_held(), a.buffered_bytes()), (0, 0));
        assert!(a.poll_event().is_none());
    }
}
