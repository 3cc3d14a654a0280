//! Decoder threads: FEC-decode ready blocks, store data blocks as ciphertext in the state
//! directory, open and verify manifests, and save the symbols of stalled blocks.
//!
//! ```text
//!  link task ──Job──► decoder 1..n ──SinkMsg──► sink
//!                      │  data block:     decode, SHA-256, store seg-<i>
//!                      │  manifest block: decode, age-decrypt, verify signature against
//!                      │                  --trust, check ids and path, "already
//!                      │                  delivered?"
//!                      │  stalled block:  store partial-<i>
//! ```
//!
//! Every job carries a semaphore permit for the bytes it holds; dropping the job releases it,
//! which is what bounds the memory between the link task and the disk.

use std::io::Read;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use sha2::{Digest, Sha256};
use sluice_common::keys::SignatureError;
use sluice_protocol::fec::ReedSolomon;
use sluice_protocol::manifest::{Manifest, SignedManifest, MAX_ENCODED_LEN, MAX_SIGNATURE_LEN};
use sluice_protocol::rx::{PartialBlock, ReadyBlock};
use sluice_protocol::wire::{BlockKey, BlockKind};
use tokio::sync::OwnedSemaphorePermit;

use crate::objects::{Failure, Status};
use crate::publish;
use crate::shared::{Counters, Shared};
use crate::state::ObjectKey;

/// Nice increment of decoder and sink threads relative to the link task.
pub(crate) const WORKER_NICE: i32 = 3;

/// Work for a decoder thread.
#[derive(Debug)]
pub(crate) enum Job {
    /// A block with `k` symbols.
    Decode(ReadyBlock, OwnedSemaphorePermit),
    /// Symbols of a block given up, to keep for a later pass or run.
    SavePartial(PartialBlock, OwnedSemaphorePermit),
}

/// What decoders tell the sink.
#[derive(Debug)]
pub(crate) enum SinkMsg {
    /// A data block was stored (and entered in the object table).
    Stored {
        key: BlockKey,
        sha256: [u8; 32],
        len: u64,
    },
    /// A manifest decrypted and verified; the sink stores the envelope if the object is not
    /// complete yet (a complete one is published at once, and needs no copy).
    Manifest {
        key: BlockKey,
        manifest: Manifest,
        envelope: Vec<u8>,
        already_delivered: bool,
    },
    /// The object cannot be delivered.
    Failed { obj: ObjectKey, failure: Failure },
    /// Nothing to do (the block's object finished meanwhile).
    Ignored,
}

/// Starts `n` decoder threads.
pub(crate) fn spawn(
    n: usize,
    shared: &Arc<Shared>,
    jobs: &Receiver<Job>,
    sink: &Sender<SinkMsg>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    (0..n)
        .map(|i| {
            let (shared, jobs, sink) = (shared.clone(), jobs.clone(), sink.clone());
            std::thread::Builder::new()
                .name(format!("decode-{i}"))
                .spawn(move || run(&shared, &jobs, &sink))
        })
        .collect()
}

fn run(shared: &Shared, jobs: &Receiver<Job>, sink: &Sender<SinkMsg>) {
    crate::shared::lower_priority(WORKER_NICE);
    let mut codec = ReedSolomon::new();
    for job in jobs.iter() {
        match job {
            Job::Decode(block, _permit) => decode(shared, &mut codec, block, sink),
            Job::SavePartial(partial, _permit) => save_partial(shared, &partial),
        }
    }
}

fn save_partial(shared: &Shared, partial: &PartialBlock) {
    let obj = ObjectKey::of(&partial.key);
    if !shared.index().is_open(&obj) {
        return;
    }
    match shared.state.store_partial(partial) {
        Ok(()) => {
            match shared.index().get_mut(&obj) {
                Some(entry) if entry.status == Status::Open => {
                    entry.partials.insert((partial.key.kind, partial.key.index));
                }
                _ => {
                    let path = shared.state.partial_path(&partial.key);
                    shared.state.remove_stray(obj, &path);
                    return;
                }
            }
            Counters::add(&shared.counters.partials_saved, 1);
        }
        Err(e) => tracing::warn!(object = %obj, "cannot save the symbols of a stalled block: {e}"),
    }
}

fn decode(shared: &Shared, codec: &mut ReedSolomon, block: ReadyBlock, sink: &Sender<SinkMsg>) {
    let key = block.key;
    let obj = ObjectKey::of(&key);
    if !shared.index().is_open(&obj) {
        return;
    }
    let data = match block.decode(codec) {
        Ok(data) => data,
        Err(e) => {
            // Any k distinct symbols decode an MDS code; this means a codec limit was hit.
            let failure = Failure::Decode(format!("{key:?}: {e:?}"));
            let _ = sink.send(SinkMsg::Failed { obj, failure });
            return;
        }
    };
    Counters::add(&shared.counters.blocks_decoded, 1);
    if block.used_repair() {
        Counters::add(&shared.counters.blocks_recovered, 1);
    }
    drop(block);
    let msg = match key.kind {
        BlockKind::Data => store_segment(shared, key, &data),
        BlockKind::Manifest => open_manifest(shared, key, &data),
    };
    let _ = sink.send(msg);
}

fn store_segment(shared: &Shared, key: BlockKey, data: &[u8]) -> SinkMsg {
    let obj = ObjectKey::of(&key);
    let sha256: [u8; 32] = Sha256::digest(data).into();
    if let Err(e) = shared.state.store_segment(obj, key.index, &sha256, data) {
        let failure = Failure::Io(format!(
            "cannot store segment {} in {}: {e}",
            key.index,
            shared.state.root().display()
        ));
        return SinkMsg::Failed { obj, failure };
    }
    // Entered in the table only after the file exists, and under the lock: if the object
    // was refused meanwhile (its state removed), the file just written is removed too.
    let had_partial = match shared.index().get_mut(&obj) {
        Some(entry) if entry.status == Status::Open => {
            entry.segments.insert(key.index, sha256);
            entry.partials.remove(&(BlockKind::Data, key.index))
        }
        _ => {
            shared
                .state
                .remove_stray(obj, &shared.state.segment_path(obj, key.index));
            return SinkMsg::Ignored;
        }
    };
    if had_partial {
        shared.state.remove_partial(&key);
    }
    SinkMsg::Stored {
        key,
        sha256,
        len: data.len() as u64,
    }
}

fn open_manifest(shared: &Shared, key: BlockKey, data: &[u8]) -> SinkMsg {
    let obj = ObjectKey::of(&key);
    let (manifest, envelope) = match decrypt_manifest(shared, key, data) {
        Ok(opened) => opened,
        Err(failure) => return SinkMsg::Failed { obj, failure },
    };
    if shared
        .index()
        .get_mut(&obj)
        .is_some_and(|e| e.partials.remove(&(BlockKind::Manifest, 0)))
    {
        shared.state.remove_partial(&key);
    }
    let already_delivered = publish::already_delivered(shared, &manifest);
    SinkMsg::Manifest {
        key,
        manifest,
        envelope,
        already_delivered,
    }
}

/// age-decrypts a manifest block and verifies it; returns the manifest and the envelope bytes.
fn decrypt_manifest(
    shared: &Shared,
    key: BlockKey,
    data: &[u8],
) -> Result<(Manifest, Vec<u8>), Failure> {
    let undecryptable = |e: &dyn std::fmt::Display| Failure::ManifestUndecryptable {
        identity: shared.identity_path.clone(),
        error: e.to_string(),
    };
    let decryptor = age::Decryptor::new_buffered(data).map_err(|e| undecryptable(&e))?;
    let reader = decryptor
        .decrypt(shared.identities.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| undecryptable(&e))?;
    let limit = (MAX_ENCODED_LEN + MAX_SIGNATURE_LEN + 64) as u64;
    let mut envelope = Vec::new();
    reader
        .take(limit)
        .read_to_end(&mut envelope)
        .map_err(|e| undecryptable(&e))?;
    let manifest = verify_envelope(shared, &envelope)?;
    if manifest.session != key.session || manifest.object != key.object {
        return Err(Failure::ManifestMismatch);
    }
    Ok((manifest, envelope))
}

/// Checks a decrypted envelope: signature by a `--trust` key, manifest limits, path.
pub(crate) fn verify_envelope(shared: &Shared, envelope: &[u8]) -> Result<Manifest, Failure> {
    let signed = SignedManifest::from_bytes(envelope)
        .map_err(|e| Failure::ManifestMalformed(format!("{e:?}")))?;
    shared
        .trusted
        .verify(&signed.manifest, &signed.signature)
        .map_err(|e| match e {
            SignatureError::Untrusted(id) => Failure::UntrustedSigner(id.to_string()),
            other => Failure::BadSignature(other.to_string()),
        })?;
    let manifest = Manifest::from_bytes(&signed.manifest)
        .map_err(|e| Failure::ManifestMalformed(format!("{e:?}")))?;
    publish::check_path(shared, &manifest.path)?;
    Ok(manifest)
}
