//! Objects in, FEC-encoded blocks out: read → hash → age-encrypt each segment → FEC, then the
//! signed and encrypted manifest block, for every pass.
//!
//! Runs on its own thread and hands blocks to the paced send loop through a bounded channel,
//! so memory stays a few blocks deep whatever the file size. Each segment is an independent
//! age file (a lost segment costs only itself). Because age is randomised and a block's FEC
//! code is fixed by its first pass, later passes must resend the *same* ciphertext: pass 0
//! spools every block's ciphertext, later passes re-read it (nothing is spooled for one pass).

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use sluice_common::keys::SigningKey;
use sluice_protocol::fec::ReedSolomon;
use sluice_protocol::manifest::{
    EntryKind, Manifest, SegmentInfo, SignedManifest, MANIFEST_VERSION,
};
use sluice_protocol::tx::{BlockPlan, OutgoingBlock};
use sluice_protocol::wire::{BlockKey, BlockKind, ObjectId, SessionId};
use tokio::sync::mpsc;

use crate::objects::{Source, SourceObject};

/// Fewest repair symbols per pass any block gets (unless `--repair 0%`).
const MIN_REPAIR_SYMBOLS: u64 = 4;

/// What the encoder tells the send loop.
#[derive(Debug)]
pub enum Produced {
    /// A block's symbols for one pass; `plain_bytes` of file content it carries (0 for
    /// manifests and later passes' progress is counted the same way).
    Block {
        block: OutgoingBlock,
        plain_bytes: u64,
    },
    /// Every block of an object went to the send loop in pass 0.
    ObjectQueued {
        path: String,
        size: u64,
        sha256: [u8; 32],
        segments: usize,
    },
    /// An object could not be read or encoded; none of its later blocks will come.
    ObjectFailed { path: String, reason: String },
    /// A pass finished queueing.
    PassQueued(u16),
}

/// Fixed settings of one run's encoder.
pub struct EncodeConfig {
    pub session: SessionId,
    pub symbol_size: u16,
    pub segment_size: u32,
    pub repair_permille: u32,
    pub passes: u16,
    pub recipients: Vec<age::x25519::Recipient>,
    pub signer: SigningKey,
    /// Where pass 0 keeps ciphertext for later passes (required when `passes > 1`).
    pub spool: Option<PathBuf>,
}

impl std::fmt::Debug for EncodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodeConfig")
            .field("session", &self.session)
            .field("symbol_size", &self.symbol_size)
            .field("segment_size", &self.segment_size)
            .field("passes", &self.passes)
            .finish_non_exhaustive()
    }
}

/// Why encoding stopped early.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("the send loop stopped")]
    Closed,
    #[error("spool {path}: {source}")]
    Spool { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Other(String),
}

/// Blocks of one object that later passes resend.
#[derive(Debug)]
struct Sent {
    object: ObjectId,
    blocks: Vec<(BlockKind, u32)>,
}

struct Encoder<'a> {
    config: &'a EncodeConfig,
    codec: ReedSolomon,
    out: mpsc::Sender<Produced>,
}

impl Encoder<'_> {
    fn emit(&self, produced: Produced) -> Result<(), EncodeError> {
        self.out
            .blocking_send(produced)
            .map_err(|_| EncodeError::Closed)
    }

    /// Repair for a block of `len` bytes. A percentage of a small block is a symbol or two,
    /// and a block of few symbols fails on a single unlucky loss, so every block gets at least
    /// [`MIN_REPAIR_SYMBOLS`] repair symbols per pass (cheap: such blocks are small).
    fn plan(&self, kind: BlockKind, len: usize) -> BlockPlan {
        let k = len
            .div_ceil(usize::from(self.config.symbol_size.max(1)))
            .max(1) as u64;
        let floor = (MIN_REPAIR_SYMBOLS * 1000).div_ceil(k) as u32;
        let repair_permille = match kind {
            // Manifests are small and losing one loses the object: at least 100% repair.
            BlockKind::Manifest => self.config.repair_permille.max(1000),
            _ => self.config.repair_permille,
        };
        BlockPlan {
            repair_permille: if repair_permille == 0 {
                0
            } else {
                repair_permille.max(floor)
            },
            passes: self.config.passes,
        }
    }

    fn block_key(&self, object: ObjectId, kind: BlockKind, index: u32) -> BlockKey {
        BlockKey {
            session: self.config.session,
            object,
            kind,
            index,
        }
    }

    fn spool_path(&self, object: ObjectId, kind: BlockKind, index: u32) -> Option<PathBuf> {
        let dir = self.config.spool.as_ref()?;
        let tag = match kind {
            BlockKind::Manifest => "m",
            _ => "d",
        };
        Some(dir.join(format!("{}-{tag}{index}", object.0)))
    }

    /// FEC-encodes `data` for `pass` and hands the block on.
    fn send_block(
        &mut self,
        key: BlockKey,
        data: &[u8],
        pass: u16,
        plain_bytes: u64,
    ) -> Result<(), EncodeError> {
        let block = OutgoingBlock::encode_pass(
            key,
            data,
            self.config.symbol_size,
            self.plan(key.kind, data.len()),
            pass,
            &mut self.codec,
        )
        .map_err(|e| EncodeError::Other(format!("FEC encoding of {key:?} failed: {e:?}")))?;
        self.emit(Produced::Block { block, plain_bytes })
    }

    fn spool(&self, key: BlockKey, data: &[u8]) -> Result<(), EncodeError> {
        if self.config.passes <= 1 {
            return Ok(());
        }
        let path = self
            .spool_path(key.object, key.kind, key.index)
            .ok_or_else(|| EncodeError::Other("passes > 1 needs a spool directory".into()))?;
        std::fs::write(&path, data).map_err(|source| EncodeError::Spool { path, source })
    }

    fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, String> {
        let encryptor = age::Encryptor::with_recipients(
            self.config
                .recipients
                .iter()
                .map(|r| r as &dyn age::Recipient),
        )
        .map_err(|e| format!("age: {e}"))?;
        let mut ciphertext = Vec::with_capacity(plaintext.len() + plaintext.len() / 4096 + 512);
        let mut writer = encryptor
            .wrap_output(&mut ciphertext)
            .map_err(|e| format!("age: {e}"))?;
        writer
            .write_all(plaintext)
            .map_err(|e| format!("age: {e}"))?;
        writer.finish().map_err(|e| format!("age: {e}"))?;
        Ok(ciphertext)
    }

    /// Pass 0 of one object: its segments, then its manifest. `Ok(None)` if the object
    /// failed (reported) and should not be resent.
    fn first_pass(
        &mut self,
        id: ObjectId,
        object: &SourceObject,
    ) -> Result<Option<Sent>, EncodeError> {
        match self.first_pass_inner(id, object) {
            Ok(sent) => Ok(Some(sent)),
            Err(ObjectError::Fatal(e)) => Err(e),
            Err(ObjectError::Object(reason)) => {
                self.emit(Produced::ObjectFailed {
                    path: object.path.clone(),
                    reason,
                })?;
                Ok(None)
            }
        }
    }

    fn first_pass_inner(
        &mut self,
        id: ObjectId,
        object: &SourceObject,
    ) -> Result<Sent, ObjectError> {
        let mut reader: Option<Box<dyn Read>> = match &object.source {
            Source::File(path) => Some(Box::new(File::open(path).map_err(|e| {
                ObjectError::Object(format!("cannot open {}: {e}", path.display()))
            })?)),
            Source::Stdin => Some(Box::new(io::stdin().lock())),
            Source::Directory => None,
        };
        let segment_size = self.config.segment_size as usize;
        let mut plain_hash = Sha256::new();
        let mut segments = Vec::new();
        let mut blocks = Vec::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; segment_size];
        if let Some(reader) = reader.as_mut() {
            loop {
                let n = read_full(reader, &mut buf).map_err(|e| {
                    ObjectError::Object(format!("read error after {size} bytes: {e}"))
                })?;
                if n == 0 {
                    break;
                }
                let plaintext = &buf[..n];
                plain_hash.update(plaintext);
                size += n as u64;
                let ciphertext = self.encrypt(plaintext).map_err(ObjectError::Object)?;
                let index = u32::try_from(segments.len())
                    .map_err(|_| ObjectError::Object("too many segments".into()))?;
                segments.push(SegmentInfo {
                    ciphertext_len: u32::try_from(ciphertext.len())
                        .map_err(|_| ObjectError::Object("segment too large".into()))?,
                    ciphertext_sha256: Sha256::digest(&ciphertext).into(),
                });
                let key = self.block_key(id, BlockKind::Data, index);
                self.spool(key, &ciphertext).map_err(ObjectError::Fatal)?;
                self.send_block(key, &ciphertext, 0, n as u64)
                    .map_err(ObjectError::Fatal)?;
                blocks.push((BlockKind::Data, index));
                if n < segment_size {
                    break;
                }
            }
        }
        let sha256: [u8; 32] = plain_hash.finalize().into();
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            session: self.config.session,
            object: id,
            path: object.path.clone(),
            kind: object.kind(),
            size,
            mode: object.mode,
            mtime_secs: object.mtime_secs,
            mtime_nanos: object.mtime_nanos,
            segment_size: if object.kind() == EntryKind::Directory || size == 0 {
                0
            } else {
                self.config.segment_size
            },
            sha256,
            segments,
        };
        let segment_count = manifest.segments.len();
        let manifest_bytes = manifest
            .to_bytes()
            .map_err(|e| ObjectError::Object(format!("manifest: {e:?}")))?;
        let signature = self
            .config
            .signer
            .sign(&manifest_bytes)
            .map_err(|e| ObjectError::Object(format!("signing: {e}")))?;
        let envelope = SignedManifest {
            manifest: manifest_bytes,
            signature: signature.into_bytes(),
        }
        .to_bytes()
        .map_err(|e| ObjectError::Object(format!("manifest envelope: {e:?}")))?;
        let ciphertext = self.encrypt(&envelope).map_err(ObjectError::Object)?;
        let key = self.block_key(id, BlockKind::Manifest, 0);
        self.spool(key, &ciphertext).map_err(ObjectError::Fatal)?;
        self.send_block(key, &ciphertext, 0, 0)
            .map_err(ObjectError::Fatal)?;
        blocks.push((BlockKind::Manifest, 0));
        self.emit(Produced::ObjectQueued {
            path: object.path.clone(),
            size,
            sha256,
            segments: segment_count,
        })
        .map_err(ObjectError::Fatal)?;
        Ok(Sent { object: id, blocks })
    }

    fn later_pass(&mut self, pass: u16, sent: &Sent) -> Result<(), EncodeError> {
        for (kind, index) in &sent.blocks {
            let path = self
                .spool_path(sent.object, *kind, *index)
                .ok_or_else(|| EncodeError::Other("no spool directory".into()))?;
            let data = std::fs::read(&path).map_err(|source| EncodeError::Spool {
                path: path.clone(),
                source,
            })?;
            let key = self.block_key(sent.object, *kind, *index);
            let plain = if *kind == BlockKind::Manifest {
                0
            } else {
                data.len() as u64
            };
            self.send_block(key, &data, pass, plain)?;
        }
        Ok(())
    }
}

enum ObjectError {
    /// This object fails; the run goes on.
    Object(String),
    /// The run cannot go on.
    Fatal(EncodeError),
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Encodes every pass of `objects` (object ids are their indices) into `out`.
pub fn run(
    config: &EncodeConfig,
    objects: &[SourceObject],
    out: mpsc::Sender<Produced>,
) -> Result<(), EncodeError> {
    let mut encoder = Encoder {
        config,
        codec: ReedSolomon::new(),
        out,
    };
    let mut sent = Vec::with_capacity(objects.len());
    for (i, object) in objects.iter().enumerate() {
        if let Some(s) = encoder.first_pass(ObjectId(i as u64), object)? {
            sent.push(s);
        }
    }
    encoder.emit(Produced::PassQueued(0))?;
    for pass in 1..config.passes {
        for s in &sent {
            encoder.later_pass(pass, s)?;
        }
        encoder.emit(Produced::PassQueued(pass))?;
    }
    Ok(())
}

/// A spool directory: the one given, or a temporary one removed when dropped.
#[derive(Debug)]
pub enum Spool {
    Given(PathBuf),
    Temporary(tempfile::TempDir),
}

impl Spool {
    pub fn create(given: Option<&Path>) -> io::Result<Spool> {
        match given {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                Ok(Spool::Given(dir.to_path_buf()))
            }
            None => Ok(Spool::Temporary(
                tempfile::Builder::new().prefix("sluice-spool-").tempdir()?,
            )),
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Spool::Given(p) => p,
            Spool::Temporary(t) => t.path(),
        }
    }
}
