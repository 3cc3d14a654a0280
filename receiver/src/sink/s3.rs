//! `--out s3://BUCKET/PREFIX`: each verified, gated file is uploaded to `PREFIX/<its path>` in
//! an S3-compatible store (Garage, MinIO, Ceph RGW, AWS S3) with the `object_store` client
//! (settings and start-up probe: `sluice_common::s3`; one upload, whole or not at all, and
//! the multipart journal that lets a crash leave nothing behind: `s3_upload`).
//!
//! Each object carries its SHA-256 and where it came from as user metadata (`sluice-sha256`,
//! `sluice-signer`, `sluice-sequence`, `sluice-mode`, `sluice-mtime`, and with
//! `--approval-policy` `sluice-approvers`: the key IDs of the approvers counted). Directories are not
//! objects: S3 prefixes need no creating. "Already there" and freshness are decided from the
//! receiver's records alone, never by reading the store. At start, the multipart uploads an
//! earlier run left unfinished are aborted; the files they were for are still complete in the
//! state directory and uploaded again.
//!
//! A store that is down, slow or refusing (an expired key, a full disk) is normal life: each
//! request is retried with backoff for `s3_upload::RETRY_FOR`, then the whole upload again
//! after a pause (doubling up to [`MAX_PAUSE`]) for as long as it takes, the publisher waiting
//! meanwhile. Verified objects wait in the state directory, counted in `--max-state`; the
//! link is read as ever (blocks beyond the bound are dropped and counted, as when the disk is
//! full). The log says what waits and why, `/metrics` whether the store is up. Only a refusal
//! of the object itself (its key or size: HTTP 400, 413, 414) fails it at once. When the
//! receiver stops while the store is down, a segmented file stays in the state directory and
//! is uploaded at the next start; a pack's files need the sender again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::path::Path as Key;
use object_store::{Attribute, Attributes};
use sluice_common::s3::{Settings, Target};
use sluice_protocol::manifest::{Entry, EntryKind};

use super::{Placed, Sink};
use crate::context::Context;
use crate::counters::Counters;
use crate::failure::Failure;
use crate::publish::{self, Signed, StagedFile};
use crate::records::Delivery;
use crate::s3_upload::{Attempt, Uploader};

/// The first pause before an upload is tried again; it doubles at each failure.
const FIRST_PAUSE: Duration = Duration::from_secs(2);
/// The longest pause between two tries of an upload.
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// An `--out s3://…` store: where, and the client's settings.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    pub target: Target,
    pub settings: Settings,
}

/// The S3 sink.
#[derive(Debug)]
pub(crate) struct S3Sink {
    uploader: Uploader,
    counters: Arc<Counters>,
    /// Since when uploads fail for the store's sake (`None`: it answers).
    down_since: Option<Instant>,
}

impl S3Sink {
    pub fn new(store: Store, counters: Arc<Counters>) -> S3Sink {
        S3Sink {
            uploader: Uploader::new(store.target, store.settings),
            counters,
            down_since: None,
        }
    }

    /// Uploads the staged file as `key`, trying again while the store is unavailable; gives
    /// up only when the file itself is refused or the receiver stops.
    fn upload_waiting(
        &mut self,
        ctx: &Context,
        staged: &StagedFile,
        e: &Entry,
        signed: &Signed,
        key: &Key,
    ) -> Result<(), Failure> {
        let mut pause = FIRST_PAUSE;
        loop {
            if ctx.is_stopping() && self.down_since.is_some() {
                // Stopping with the store down: every file left would cost a try of its own.
                return Err(Failure::StoreUnavailable(
                    "the object store was unavailable".into(),
                ));
            }
            let why = match self.upload(ctx, staged, e, signed, key) {
                Ok(()) => {
                    self.store_answers(ctx);
                    return Ok(());
                }
                Err(Attempt::Refused(why)) => {
                    self.store_answers(ctx);
                    return Err(Failure::Io(why));
                }
                Err(Attempt::Unavailable(why)) => why,
            };
            if ctx.is_stopping() {
                return Err(Failure::StoreUnavailable(why));
            }
            if self.down_since.is_none() {
                let now = Instant::now();
                self.down_since = Some(now);
                self.counters.record_store_down(Some(now));
            }
            tracing::warn!(
                path = %e.path,
                retry_in = ?pause,
                "the object store is unavailable: {why}; this file and those after it wait \
                 in the state directory"
            );
            self.counters.record_store_retry();
            let until = Instant::now() + pause;
            while Instant::now() < until {
                if ctx.is_stopping() {
                    return Err(Failure::StoreUnavailable(why));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// An upload went through, or was refused for the file's own sake: the store answers.
    fn store_answers(&mut self, ctx: &Context) {
        if let Some(since) = self.down_since.take() {
            tracing::info!(
                down_for = ?since.elapsed(),
                "the object store answers again; uploading what waited"
            );
            self.counters.record_store_down(None);
            // Tries that failed may have left multipart uploads behind.
            self.uploader.retry_aborts(ctx.state.records());
        }
    }

    /// One try at uploading the staged file as `key` with its metadata.
    fn upload(
        &self,
        ctx: &Context,
        staged: &StagedFile,
        e: &Entry,
        signed: &Signed,
        key: &Key,
    ) -> Result<(), Attempt> {
        let mut attributes = Attributes::from_iter([
            (Attribute::Metadata("sluice-sha256".into()), hex(&e.sha256)),
            (
                Attribute::Metadata("sluice-signer".into()),
                format!("{:016X}", signed.signer),
            ),
            (
                Attribute::Metadata("sluice-sequence".into()),
                signed.sequence.to_string(),
            ),
            (
                Attribute::Metadata("sluice-mode".into()),
                format!("{:o}", e.mode & 0o7777),
            ),
            (
                Attribute::Metadata("sluice-mtime".into()),
                format!("{}.{:09}", e.mtime_secs, e.mtime_nanos),
            ),
        ]);
        if !signed.approvers.is_empty() {
            let ids: Vec<String> = signed.approvers.iter().map(ToString::to_string).collect();
            attributes.insert(
                Attribute::Metadata("sluice-approvers".into()),
                ids.join(",").into(),
            );
        }
        // The staged file was written through a write-only fd: read it through a new one.
        let file = staged
            .dir(ctx)
            .open_file(staged.name())
            .map_err(|err| Attempt::Refused(format!("cannot open the staged file: {err}")))?;
        self.uploader
            .upload(ctx.state.records(), &file, e.size, key, attributes)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The record of an entry placed in the store (no inode: a store has none).
fn delivery(ctx: &Context, e: &Entry, signed: &Signed) -> Delivery {
    let directory = e.kind == EntryKind::Directory;
    Delivery {
        signer: signed.signer,
        sequence: signed.sequence,
        directory,
        sha256: if directory { [0; 32] } else { e.sha256 },
        size: e.size,
        mode: e.mode & ctx.mode_mask,
        mtime_secs: e.mtime_secs,
        mtime_nanos: e.mtime_nanos,
        inode: 0,
        device: 0,
    }
}

impl Sink for S3Sink {
    fn start(&mut self, ctx: &Context) {
        self.uploader.abort_unfinished(ctx.state.records());
    }

    fn precheck(&self, ctx: &Context, e: &Entry) -> Result<(), Failure> {
        publish::check_path(ctx, &e.path)
    }

    fn already_there(&self, ctx: &Context, e: &Entry) -> bool {
        // By the records alone: the store is never read for it.
        publish::already_delivered(ctx, e)
    }

    fn place(
        &mut self,
        ctx: &Context,
        staged: StagedFile,
        e: &Entry,
        signed: &Signed,
    ) -> Result<Placed, Failure> {
        let uploaded = publish::check_path(ctx, &e.path)
            .and_then(|()| {
                self.uploader
                    .target()
                    .key(&e.path)
                    .map_err(|error| Failure::PathRefused {
                        path: e.path.clone(),
                        error,
                    })
            })
            .and_then(|key| self.upload_waiting(ctx, &staged, e, signed, &key));
        match &uploaded {
            // The receiver stops with the store down: a segmented file's staged content is
            // resumed at the next start (a pack's staged file is swept then).
            Err(Failure::StoreUnavailable(_)) => {}
            // Uploaded or refused, the staged copy has served.
            _ => staged.discard(ctx),
        }
        uploaded?;
        Ok(Placed {
            bytes: e.size,
            delivery: delivery(ctx, e, signed),
            created_dirs: Vec::new(),
        })
    }

    fn place_dir(&mut self, ctx: &Context, e: &Entry, signed: &Signed) -> Result<Placed, Failure> {
        publish::check_path(ctx, &e.path)?;
        Ok(Placed {
            bytes: 0,
            delivery: delivery(ctx, e, signed),
            created_dirs: Vec::new(),
        })
    }

    // Each upload is durable once it completed: nothing is left to sync.
    fn commit(&mut self, _: &Context) {}

    fn finish(&mut self, _: &Context) {}
}
