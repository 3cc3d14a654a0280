//! A frame producer that does what `sluice-send` does, from the protocol crate and the shared
//! envelope alone, so tests can build what a real sender never would: hostile paths, foreign
//! signers, tampered segments, missing blocks, chosen symbols. The red-team tests use it as
//! attacker B (a low side holding `link.key` and `sender.key`), the receiver's own tests as a
//! sender they control symbol by symbol.
//!
//! ```text
//!  Item ─► segments ─► age(recipients) ─► data blocks ─┐
//!        └► Manifest ─► minisign ─► age ─► manifest block ─┴─► encode_pass ─► Scheduler ─► frames
//! ```

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sluice_common::envelope;
use sluice_common::keys::{self, SigningKey};
use sluice_protocol::fec::ReedSolomon;
use sluice_protocol::manifest::{
    Approval, Entry, EntryKind, Manifest, SegmentInfo, MANIFEST_VERSION,
};
use sluice_protocol::time::Instant;
use sluice_protocol::tx::{BlockPlan, OutgoingBlock, Scheduler, Transmit, TxConfig};
use sluice_protocol::wire::{
    self, BlockKey, BlockKind, Header, LinkKey, ObjectId, SessionId, SymbolHeader,
};

pub use crate::binaries::Keys;

/// Generates both key sets under `dir` with the library (no binary needed).
pub fn generate_keys(dir: &Path) -> Keys {
    keys::generate_receiver_keys(dir).unwrap();
    keys::generate_sender_keys(dir).unwrap();
    Keys {
        receiver_key: dir.join(keys::RECEIVER_KEY),
        receiver_pub: dir.join(keys::RECEIVER_PUB),
        sender_key: dir.join(keys::SENDER_KEY),
        sender_pub: dir.join(keys::SENDER_PUB),
        link_key: dir.join(keys::LINK_KEY),
    }
}

/// One object to send.
#[derive(Debug, Clone)]
pub struct Item {
    pub path: String,
    pub kind: EntryKind,
    pub content: Vec<u8>,
    pub mode: u32,
    pub mtime: (i64, u32),
}

impl Item {
    pub fn file(path: &str, content: Vec<u8>, mode: u32, mtime: (i64, u32)) -> Item {
        Item {
            path: path.into(),
            kind: EntryKind::File,
            content,
            mode,
            mtime,
        }
    }

    pub fn dir(path: &str, mode: u32, mtime: (i64, u32)) -> Item {
        Item {
            path: path.into(),
            kind: EntryKind::Directory,
            content: Vec::new(),
            mode,
            mtime,
        }
    }
}

impl Item {
    /// Its manifest entry.
    pub fn entry(&self) -> Entry {
        Entry {
            path: self.path.clone(),
            kind: self.kind,
            size: self.content.len() as u64,
            mode: self.mode,
            mtime_secs: self.mtime.0,
            mtime_nanos: self.mtime.1,
            sha256: match self.kind {
                EntryKind::File => Sha256::digest(&self.content).into(),
                EntryKind::Directory => [0; 32],
            },
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), so contents differ per seed.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// One object encoded: its blocks' data (ciphertext), data blocks first, manifest last.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub manifest: Manifest,
    pub blocks: Vec<(BlockKey, Vec<u8>)>,
}

/// Encrypts, signs and FEC-encodes objects like `sluice-send`.
#[allow(missing_debug_implementations)]
pub struct Producer {
    pub session: SessionId,
    pub recipients: Vec<age::x25519::Recipient>,
    pub signer: SigningKey,
    pub link_key: LinkKey,
    pub symbol_size: u16,
    pub segment_size: usize,
    pub repair_permille: u32,
    pub passes: u16,
    /// Freshness of the manifests: object `n` gets `sequence + n`.
    pub sequence: u64,
    /// The export approval every manifest carries (none by default).
    pub approval: Option<Approval>,
}

impl Producer {
    /// A producer for `keys` with a 64 KiB segment size, 10% repair, two planned passes.
    pub fn new(keys: &Keys, session: u64) -> Producer {
        Producer {
            session: SessionId(session),
            recipients: keys::load_recipients(&keys.receiver_pub).unwrap(),
            signer: SigningKey::load(&keys.sender_key).unwrap(),
            link_key: keys::load_link_key(&keys.link_key).unwrap(),
            symbol_size: wire::max_symbol_size(1472),
            segment_size: 64 << 10,
            repair_permille: 100,
            passes: 2,
            sequence: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_micros() as u64),
            approval: None,
        }
    }

    fn encrypt(&self, plain: &[u8]) -> Vec<u8> {
        envelope::encrypt(plain, &self.recipients).unwrap()
    }

    /// Encodes `item` as object `object`: its content in data segments (none for a
    /// directory or an empty file, whose manifest is inline), manifest last.
    pub fn encode(&self, object: u64, item: &Item) -> Encoded {
        let mut blocks = Vec::new();
        let mut segments = Vec::new();
        for (i, chunk) in item.content.chunks(self.segment_size).enumerate() {
            let ciphertext = self.encrypt(chunk);
            segments.push(SegmentInfo {
                ciphertext_len: ciphertext.len() as u32,
                header_mac: envelope::header_mac(&ciphertext).unwrap(),
            });
            blocks.push((self.key(object, BlockKind::Data, i as u32), ciphertext));
        }
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            session: self.session,
            object: ObjectId(object),
            sequence: self.sequence + object,
            entries: vec![item.entry()],
            segment_size: if segments.is_empty() {
                0
            } else {
                self.segment_size as u32
            },
            segments,
            approval: self.approval.clone(),
        };
        let manifest_block = self.seal(&manifest, &self.signer);
        blocks.push((self.key(object, BlockKind::Manifest, 0), manifest_block));
        Encoded { manifest, blocks }
    }

    /// Encodes `items` as one pack, object `object`: a manifest block carrying their content.
    pub fn encode_pack(&self, object: u64, items: &[Item]) -> Encoded {
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            session: self.session,
            object: ObjectId(object),
            sequence: self.sequence + object,
            entries: items.iter().map(Item::entry).collect(),
            segment_size: 0,
            segments: Vec::new(),
            approval: self.approval.clone(),
        };
        let inline: Vec<u8> = items.iter().flat_map(|i| i.content.clone()).collect();
        let block = self.seal_inline(&manifest, &inline, &self.signer);
        Encoded {
            manifest,
            blocks: vec![(self.key(object, BlockKind::Manifest, 0), block)],
        }
    }

    /// The manifest block data, signed by `signer` (the envelope `sluice-send` makes).
    pub fn seal(&self, manifest: &Manifest, signer: &SigningKey) -> Vec<u8> {
        self.seal_inline(manifest, &[], signer)
    }

    /// The manifest block data with `inline` content, signed by `signer`.
    pub fn seal_inline(&self, manifest: &Manifest, inline: &[u8], signer: &SigningKey) -> Vec<u8> {
        envelope::seal_manifest(manifest, inline, signer, &self.recipients).unwrap()
    }

    pub fn key(&self, object: u64, kind: BlockKind, index: u32) -> BlockKey {
        BlockKey {
            session: self.session,
            object: ObjectId(object),
            kind,
            index,
        }
    }

    /// Frames of pass `pass` for `objects`, interleaved by the scheduler (unpaced, with
    /// heartbeats), keeping only symbols `keep` accepts.
    pub fn frames(
        &self,
        objects: &[Encoded],
        pass: u16,
        mut keep: impl FnMut(&SymbolHeader) -> bool,
    ) -> Vec<Vec<u8>> {
        let mut codec = ReedSolomon::new();
        let mut queue = Vec::new();
        for obj in objects {
            for (key, data) in &obj.blocks {
                let plan = BlockPlan::for_block(
                    key.kind,
                    data.len(),
                    self.symbol_size,
                    self.repair_permille,
                    self.passes,
                );
                queue.push(
                    OutgoingBlock::encode_pass(
                        *key,
                        match key.kind {
                            BlockKind::Data => self.segment_size as u32,
                            BlockKind::Manifest => 0,
                        },
                        data,
                        self.symbol_size,
                        plan,
                        pass,
                        &mut codec,
                    )
                    .unwrap(),
                );
            }
        }
        let config = TxConfig {
            rate: 0,
            ..TxConfig::default()
        };
        let mut scheduler =
            Scheduler::new(config, self.session, self.link_key.clone(), Instant::ZERO);
        let mut queue = queue.into_iter().peekable();
        let mut buf = vec![0u8; wire::MAX_FRAME_LEN];
        let mut frames = Vec::new();
        loop {
            while scheduler.has_room() {
                match queue.next() {
                    Some(block) => scheduler.push_block(block).unwrap(),
                    None => break,
                }
            }
            match scheduler.poll_transmit(Instant::ZERO, &mut buf).unwrap() {
                Transmit::Frame(n) => {
                    let frame = &buf[..n];
                    let header = wire::parse_frame(frame, &self.link_key).unwrap().header;
                    let wanted = match &header {
                        Header::Symbol(symbol) => keep(symbol),
                        _ => true,
                    };
                    if wanted {
                        frames.push(frame.to_vec());
                    }
                }
                Transmit::WaitUntil(_) if queue.peek().is_none() && scheduler.is_drained() => break,
                Transmit::WaitUntil(_) => {}
            }
        }
        frames
    }
}

/// Every symbol.
pub fn all(_: &SymbolHeader) -> bool {
    true
}

/// Sends frames to `to` over loopback UDP, pausing now and then so no socket buffer
/// overflows on a busy machine.
pub fn send(to: SocketAddr, frames: &[Vec<u8>]) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    for (i, frame) in frames.iter().enumerate() {
        socket.send_to(frame, to).unwrap();
        if i % 64 == 63 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
