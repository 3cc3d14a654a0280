//! The decoder pool: pure workers. Each job is a block (or a block's saved symbols) and the
//! answer is one [`Reply`] to the delivery core; a worker decides nothing about objects.
//!
//! ```text
//!  delivery ──DecodeJob──▶ decoder 1..n ──Reply──▶ delivery
//!                          data block:     FEC-decode, age-decrypt straight into the content
//!                                          file at the segment's offset, record its header MAC
//!                          manifest block: FEC-decode, age-decrypt, verify signature against
//!                                          --trust, check ids and paths, look for a single
//!                                          file's content already in --out
//!                          stalled block:  store partial-<i>;  restore: read it back
//!                          evicted object: remove its directory and content file
//! ```
//!
//! Every block job carries a semaphore permit for the bytes it holds; dropping the job
//! releases it, which is what bounds the memory between the link task and the disk.

use std::sync::Arc;

use std::io::Read;

use sluice_common::approval;
use sluice_common::envelope::{self, OpenError, Opened};
use sluice_protocol::fec::ReedSolomon;
use sluice_protocol::manifest::Manifest;
use sluice_protocol::rx::{PartialBlock, ReadyBlock};
use sluice_protocol::wire::{BlockKey, BlockKind};

use crate::context::{self, Context};
use crate::delivery::{BlockResult, DecodeJob, Input, Reply};
use crate::failure::Failure;
use crate::object::ObjectKey;
use crate::publish;
use crate::segment::StoredSegment;

/// Starts `n` decoder threads; each runs until `jobs` closes.
pub(crate) fn spawn(
    n: usize,
    ctx: &Arc<Context>,
    jobs: &flume::Receiver<DecodeJob>,
    replies: &flume::Sender<Input>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    (0..n)
        .map(|i| {
            let (ctx, jobs, replies) = (ctx.clone(), jobs.clone(), replies.clone());
            std::thread::Builder::new()
                .name(format!("decode-{i}"))
                .spawn(move || run(&ctx, &jobs, &replies))
        })
        .collect()
}

/// Decoder work space kept between blocks; a larger one (charged to the job's permits while
/// it was used) is given back after its block.
const KEEP_DECODER_WORK: u64 = 8 << 20;

fn run(ctx: &Context, jobs: &flume::Receiver<DecodeJob>, replies: &flume::Sender<Input>) {
    context::lower_priority(context::WORKER_NICE);
    let mut codec = ReedSolomon::new();
    // Decrypted segments, reused: at most one segment (8 MiB) per decoder.
    let mut plaintext = Vec::new();
    for job in jobs.iter() {
        let reply = match job {
            DecodeJob::Decode {
                block,
                permit: _permit,
                drop_partial,
            } => {
                let work = block.geometry.decode_work_bytes();
                let reply = decode(ctx, &mut codec, &mut plaintext, block, drop_partial);
                if work > KEEP_DECODER_WORK {
                    codec = ReedSolomon::new();
                }
                reply
            }
            DecodeJob::SavePartial {
                partial,
                permit: _permit,
            } => save_partial(ctx, &partial),
            DecodeJob::LoadPartial(key) => load_partial(ctx, key),
            DecodeJob::Remove(obj) => remove(ctx, obj),
        };
        if replies.send(Input::Reply(reply)).is_err() {
            return;
        }
    }
}

fn save_partial(ctx: &Context, partial: &PartialBlock) -> Reply {
    let saved = match ctx.state.store_partial(partial) {
        Ok(()) => true,
        Err(e) => {
            let obj = ObjectKey::of(&partial.key);
            tracing::warn!(object = %obj, "cannot save the symbols of a stalled block: {e}");
            false
        }
    };
    Reply::PartialSaved {
        key: partial.key,
        saved,
    }
}

/// Here rather than on the publisher's thread: space is freed as fast as the decoders fill
/// it, whatever the publisher is doing.
fn remove(ctx: &Context, obj: ObjectKey) -> Reply {
    if let Err(e) = ctx.state.remove_object(obj) {
        tracing::warn!(object = %obj, "cannot clean up the state directory: {e}");
    }
    Reply::Removed(obj)
}

fn load_partial(ctx: &Context, key: BlockKey) -> Reply {
    // File I/O: this is why restoring is a job, not the link task's work.
    let partial = match ctx.state.load_partial(&key) {
        Ok(partial) => Some(partial),
        Err(e) => {
            tracing::debug!(block = ?key, "saved symbols unusable: {e}");
            None
        }
    };
    Reply::PartialLoaded(key, partial)
}

fn decode(
    ctx: &Context,
    codec: &mut ReedSolomon,
    plaintext: &mut Vec<u8>,
    block: ReadyBlock,
    drop_partial: bool,
) -> Reply {
    let key = block.key;
    let segment_size = block.segment_size;
    let data = match block.decode(codec) {
        Ok(data) => data,
        Err(e) => {
            // Any k distinct symbols decode an MDS code; this means a codec limit was hit.
            return Reply::Block {
                key,
                recovered: None,
                result: BlockResult::Failed(Failure::Decode(format!("{key:?}: {e:?}"))),
            };
        }
    };
    let recovered = Some(block.used_repair());
    drop(block);
    let result = match key.kind {
        BlockKind::Data => store_segment(ctx, key, segment_size, &data, plaintext),
        BlockKind::Manifest => open_manifest(ctx, key, &data),
    };
    if drop_partial && !matches!(result, BlockResult::Failed(_)) {
        ctx.state.remove_partial(&key);
    }
    Reply::Block {
        key,
        recovered,
        result,
    }
}

/// Decrypts a decoded data block (an age file) straight into its object's content file at
/// the segment's offset, and records what binds it to the manifest: each plaintext byte is
/// written once. Checked against the signed manifest when that is known (the delivery core).
fn store_segment(
    ctx: &Context,
    key: BlockKey,
    segment_size: u32,
    ciphertext: &[u8],
    plaintext: &mut Vec<u8>,
) -> BlockResult {
    let index = key.index;
    let undecryptable = |e: &dyn std::fmt::Display| {
        BlockResult::Failed(Failure::SegmentUndecryptable(index, first_line(e)))
    };
    let Some(header_mac) = envelope::header_mac(ciphertext) else {
        return undecryptable(&"not an age file");
    };
    let Ok(ciphertext_len) = u32::try_from(ciphertext.len()) else {
        return BlockResult::Failed(Failure::SegmentUnexpected(index));
    };
    // One byte more than a segment holds tells a too-long one apart. The buffer keeps its
    // length between segments, so it is zeroed once, not before every read.
    let room = segment_size as usize + 1;
    if plaintext.len() < room {
        plaintext.resize(room, 0);
    }
    let read = envelope::decrypt(ciphertext, &ctx.identities).and_then(|reader| {
        read_up_to(reader, &mut plaintext[..room]).map_err(age::DecryptError::from)
    });
    let plaintext = match read {
        Ok(filled) => &plaintext[..filled],
        // Encrypted to someone else: say which key was tried.
        Err(age::DecryptError::NoMatchingKeys) => {
            return undecryptable(&format!(
                "no key in --identity {} opens it",
                ctx.identity_path.display()
            ))
        }
        Err(e) => return undecryptable(&e),
    };
    let Ok(plain_len) = u32::try_from(plaintext.len()) else {
        return BlockResult::Failed(Failure::SegmentUnexpected(index));
    };
    if plain_len > segment_size {
        return BlockResult::Failed(Failure::SegmentUnexpected(index));
    }
    let segment = StoredSegment {
        index,
        segment_size,
        plain_len,
        ciphertext_len,
        header_mac,
    };
    match ctx
        .state
        .store_segment(ObjectKey::of(&key), &segment, plaintext)
    {
        Ok(()) => BlockResult::Stored(segment),
        Err(e) => BlockResult::Failed(Failure::Io(format!(
            "cannot store segment {index} in {}: {e}",
            ctx.state.path().display()
        ))),
    }
}

/// Reads from `reader` until `buf` is full or the reader ends; returns how much was read.
fn read_up_to(mut reader: impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn open_manifest(ctx: &Context, key: BlockKey, data: &[u8]) -> BlockResult {
    let opened = match envelope::open_manifest(data, &ctx.identities, &ctx.trusted) {
        Ok(opened) => opened,
        Err(e) => return BlockResult::Failed(open_failure(ctx, e)),
    };
    if opened.manifest.session != key.session || opened.manifest.object != key.object {
        return BlockResult::Failed(Failure::ManifestMismatch);
    }
    if let Err(failure) = check_opened(ctx, &opened) {
        // Refused, not unreadable: say what it would have delivered (a pack's first few
        // entries: one refusal is not worth thousands of records).
        let paths = (opened.manifest.entries.into_iter())
            .map(|e| e.path)
            .take(MAX_REFUSED_NAMED)
            .collect();
        return BlockResult::Refused { failure, paths };
    }
    // A single file already in place is recognised now; a pack's entries when published.
    let existing = match opened.manifest.entries.as_slice() {
        [entry] if !opened.manifest.is_inline() => publish::already_delivered(ctx, entry),
        _ => false,
    };
    BlockResult::Manifest {
        opened: Box::new(opened),
        existing,
    }
}

/// Entries of a refused manifest named in its outcomes.
const MAX_REFUSED_NAMED: usize = 16;

/// The path rules a verified manifest must also meet: a single entry's path must be
/// acceptable (a pack's entries are refused one by one when it is published).
pub(crate) fn check_opened(ctx: &Context, opened: &Opened) -> Result<(), Failure> {
    check_approval(ctx, &opened.manifest)?;
    match opened.manifest.entries.as_slice() {
        [entry] => publish::check_path(ctx, &entry.path),
        _ => Ok(()),
    }
}

/// With `--approval-policy`, the approval that came with the manifest must pass this
/// receiver's own check for every entry (before any content is published).
pub(crate) fn check_approval(ctx: &Context, manifest: &Manifest) -> Result<(), Failure> {
    let Some(policy) = &ctx.approval else {
        return Ok(());
    };
    approval::check_carried(
        policy,
        manifest.approval.as_ref(),
        &manifest.entries,
        std::time::SystemTime::now(),
    )
    .map(drop)
    .map_err(|e| Failure::NotApproved(e.to_string()))
}

/// The first line of an error's text (age's can go on with advice for interactive users).
fn first_line(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    text.lines()
        .next()
        .unwrap_or_default()
        .trim_end_matches('.')
        .to_string()
}

/// The documented failure for a manifest that does not open.
pub(crate) fn open_failure(ctx: &Context, error: OpenError) -> Failure {
    match error {
        OpenError::Undecryptable(error) => Failure::ManifestUndecryptable {
            identity: ctx.identity_path.clone(),
            error: first_line(&error),
        },
        OpenError::Untrusted(id) => Failure::UntrustedSigner(id.to_string()),
        OpenError::BadSignature(e) => Failure::BadSignature(e.to_string()),
        OpenError::Malformed(e) => Failure::ManifestMalformed(e),
        _ => Failure::ManifestMalformed(error.to_string()),
    }
}
