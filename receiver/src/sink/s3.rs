//! `--out s3://BUCKET/PREFIX`: each verified, gated file is uploaded to `PREFIX/<its path>` in
//! an S3-compatible store (Garage, MinIO, Ceph RGW, AWS S3) with the `object_store` client
//! (settings and start-up probe: `sluice_common::s3`).
//!
//! An object becomes visible only whole: a file of up to [`PART_SIZE`] is one `PUT`, a larger
//! one a multipart upload completed after its last part (an unfinished multipart upload is
//! never listed). A multipart upload is recorded durably before its first part and its record
//! dropped once it is completed or aborted, so one a crash cut short is aborted at the next
//! start (then the object, still complete in the state directory, is uploaded again). The bytes
//! come from the staged file, verified before, through its fd; at most [`PARTS_IN_FLIGHT`]
//! parts are in memory. Each object carries its SHA-256 as its checksum
//! (`x-amz-checksum-sha256` of a single `PUT`, checked by a store that knows it) and as user
//! metadata with where it came from (`sluice-sha256`, `sluice-signer`, `sluice-sequence`,
//! `sluice-mode`, `sluice-mtime`). Directories are not objects: S3 prefixes need no creating.
//!
//! "Already there" and freshness are decided from the receiver's records alone, never by
//! reading the store.
//!
//! A store that is down, slow or refusing (an expired key, a full disk) is normal life: each
//! request is retried with backoff for [`RETRY_FOR`], then the whole upload again after a
//! pause (doubling up to [`MAX_PAUSE`]) for as long as it takes, the publisher waiting
//! meanwhile. Verified objects wait in the state directory, counted in `--max-state`; the
//! link is read as ever (blocks beyond the bound are dropped and counted, as when the disk is
//! full). The log says what waits and why, `/metrics` whether the store is up. Only a refusal
//! of the object itself (its key or size: HTTP 400, 413, 414) fails it at once. When the
//! receiver stops while the store is down, a segmented file stays in the state directory and
//! is uploaded at the next start; a pack's files need the sender again.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, StreamExt};
use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{
    Attribute, Attributes, MultipartId, ObjectStore, PutMultipartOptions, PutOptions, PutPayload,
};
use sluice_common::s3::{self, Settings, Target};
use sluice_protocol::manifest::{Entry, EntryKind};

use super::{Placed, Sink};
use crate::context::Context;
use crate::counters::Counters;
use crate::failure::Failure;
use crate::publish::{self, Signed, StagedFile};
use crate::records::Delivery;

/// A file up to this size is one `PUT`; a larger one goes in parts of this size.
pub(crate) const PART_SIZE: usize = 16 << 20;
/// Parts uploading at once (and so in memory) per file.
pub(crate) const PARTS_IN_FLIGHT: usize = 2;
/// How long one request is retried (with backoff) before the upload is tried again later.
pub(crate) const RETRY_FOR: Duration = Duration::from_secs(10);
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

/// The S3 sink; its client and runtime are made on the publisher's thread at first use.
#[derive(Debug)]
pub(crate) struct S3Sink {
    store: Store,
    counters: Arc<Counters>,
    client: Option<Client>,
    /// Since when uploads fail for the store's sake (`None`: it answers).
    down_since: Option<Instant>,
}

/// The object-store client and the runtime it runs on.
#[derive(Debug)]
struct Client {
    runtime: tokio::runtime::Runtime,
    store: Arc<AmazonS3>,
}

/// Why one try at an upload failed.
#[derive(Debug)]
enum Attempt {
    /// The store failed or did not answer: the file waits and the upload is tried again.
    Unavailable(String),
    /// The file cannot be placed: the store refuses this object, or the staged file is
    /// unreadable.
    Failed(Failure),
}

/// The store's error `err` while doing `what` to `shown`, as an [`Attempt`].
fn attempt(what: &str, shown: &str, err: &object_store::Error) -> Attempt {
    let text = format!("cannot {what} s3://{shown}: {err}");
    // The store refusing this request for the object's own sake (its key, its size):
    // trying again would not change its answer. Anything else may pass later.
    let refused = [
        "status: 400",
        "status: 413",
        "status: 414",
        "KeyTooLong",
        "EntityTooLarge",
        "InvalidArgument",
    ];
    if refused.iter().any(|r| text.contains(r)) {
        Attempt::Failed(Failure::Io(text))
    } else {
        Attempt::Unavailable(text)
    }
}

impl S3Sink {
    pub fn new(store: Store, counters: Arc<Counters>) -> S3Sink {
        S3Sink {
            store,
            counters,
            client: None,
            down_since: None,
        }
    }

    fn client(&mut self) -> Result<&Client, Failure> {
        if self.client.is_none() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Failure::Io(format!("cannot start the S3 client: {e}")))?;
            let retry = s3::retry(RETRY_FOR);
            let store =
                s3::client(&self.store.target, &self.store.settings, retry).map_err(Failure::Io)?;
            self.client = Some(Client {
                runtime,
                store: Arc::new(store),
            });
        }
        self.client
            .as_ref()
            .ok_or_else(|| Failure::Io("no S3 client".into()))
    }

    /// Aborts the multipart uploads the records hold as begun and not ended: an earlier run
    /// (or an earlier try of this one) stopped in the middle of them. One that cannot be
    /// aborted now stays recorded for the next time.
    fn abort_unfinished(&mut self, ctx: &Context) {
        let uploads = match ctx.state.records().uploads() {
            Ok(uploads) => uploads,
            Err(e) => return tracing::warn!("cannot read the unfinished uploads: {e}"),
        };
        if uploads.is_empty() {
            return;
        }
        let Ok(client) = self.client() else {
            return;
        };
        for (id, key) in uploads {
            let location = Key::from(key.as_str());
            let aborted = client
                .runtime
                .block_on(client.store.abort_multipart(&location, &id));
            match aborted {
                // Not found: completed, or aborted already.
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    tracing::info!(key = %key, "aborted an unfinished multipart upload");
                    if let Err(e) = ctx.state.records().upload_ended(&id) {
                        tracing::warn!("cannot record the upload of {key} aborted: {e}");
                    }
                }
                Err(e) => tracing::warn!(
                    key = %key,
                    "cannot abort an unfinished multipart upload yet (tried again later): {e}"
                ),
            }
        }
    }

    /// Uploads the staged file as `key`, trying again while the store is unavailable; gives
    /// up only when the file itself is refused or the receiver stops.
    fn upload_waiting(
        &mut self,
        ctx: &Context,
        staged: &StagedFile,
        e: &Entry,
        signed: Signed,
        key: &Key,
    ) -> Result<(), Failure> {
        let mut pause = FIRST_PAUSE;
        loop {
            let why = match self.upload(ctx, staged, e, signed, key) {
                Ok(()) => {
                    self.store_answers(ctx);
                    return Ok(());
                }
                Err(Attempt::Failed(failure)) => {
                    self.store_answers(ctx);
                    return Err(failure);
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
            self.abort_unfinished(ctx);
        }
    }

    /// One try at uploading the staged file as `key`, whole or not at all.
    fn upload(
        &mut self,
        ctx: &Context,
        staged: &StagedFile,
        e: &Entry,
        signed: Signed,
        key: &Key,
    ) -> Result<(), Attempt> {
        let attributes = Attributes::from_iter([
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
        let shown = format!("{}/{key}", self.store.target.bucket);
        let unreadable = |err: std::io::Error| {
            Attempt::Failed(Failure::Io(format!(
                "cannot read the staged file for s3://{shown}: {err}"
            )))
        };
        // The staged file was written through a write-only fd: read it through a new one.
        let file = ctx
            .state
            .staging()
            .open_file(staged.name())
            .map_err(unreadable)?;
        let client = self.client().map_err(Attempt::Failed)?;
        let store = &client.store;
        if e.size <= PART_SIZE as u64 {
            let mut bytes = Vec::with_capacity(PART_SIZE.min(e.size as usize));
            file.take(e.size)
                .read_to_end(&mut bytes)
                .map_err(unreadable)?;
            if bytes.len() as u64 != e.size {
                return Err(unreadable(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let options = PutOptions {
                attributes,
                ..Default::default()
            };
            return client
                .runtime
                .block_on(store.put_opts(key, PutPayload::from(bytes), options))
                .map(|_| ())
                .map_err(|err| attempt("upload", &shown, &err));
        }
        let options = PutMultipartOptions {
            attributes,
            ..Default::default()
        };
        client.runtime.block_on(async {
            let id = store
                .create_multipart_opts(key, options)
                .await
                .map_err(|err| attempt("start the upload of", &shown, &err))?;
            if let Err(err) = ctx.state.records().upload_begun(&id, key.as_ref()) {
                // Unrecorded, a crash would leave it behind: do not go on with it.
                let _ = store.abort_multipart(key, &id).await;
                return Err(Attempt::Failed(Failure::Io(format!(
                    "cannot record the upload of s3://{shown}: {err}"
                ))));
            }
            let uploaded = match upload_parts(store, key, &id, &file, e.size, &shown).await {
                Ok(parts) => store
                    .complete_multipart(key, &id, parts)
                    .await
                    .map(|_| ())
                    .map_err(|err| attempt("complete the upload of", &shown, &err)),
                Err(failed) => Err(failed),
            };
            // Completed, or aborted so no part stays stored; an abort that fails keeps the
            // record, and the upload is aborted later.
            let ended = match &uploaded {
                Ok(()) => true,
                Err(_) => store.abort_multipart(key, &id).await.is_ok(),
            };
            if ended {
                if let Err(err) = ctx.state.records().upload_ended(&id) {
                    tracing::warn!("cannot record the upload of s3://{shown} ended: {err}");
                }
            }
            uploaded
        })
    }
}

/// Uploads `file`'s first `size` bytes as the parts of upload `id`, [`PARTS_IN_FLIGHT`] at a
/// time; their IDs in order.
async fn upload_parts(
    store: &AmazonS3,
    key: &Key,
    id: &MultipartId,
    file: &std::fs::File,
    size: u64,
    shown: &str,
) -> Result<Vec<PartId>, Attempt> {
    let mut parts = Vec::new();
    let mut in_flight = FuturesOrdered::new();
    let mut offset = 0u64;
    loop {
        while in_flight.len() < PARTS_IN_FLIGHT && offset < size {
            let len = usize::try_from(size - offset).map_or(PART_SIZE, |left| left.min(PART_SIZE));
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset).map_err(|err| {
                Attempt::Failed(Failure::Io(format!(
                    "cannot read the staged file for s3://{shown}: {err}"
                )))
            })?;
            let index = parts.len() + in_flight.len();
            in_flight.push_back(store.put_part(key, id, index, PutPayload::from(buf)));
            offset += len as u64;
        }
        match in_flight.next().await {
            Some(part) => parts.push(part.map_err(|err| attempt("upload a part of", shown, &err))?),
            None => return Ok(parts),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The record of an entry placed in the store (no inode: a store has none).
fn delivery(ctx: &Context, e: &Entry, signed: Signed) -> Delivery {
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
        self.abort_unfinished(ctx);
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
        signed: Signed,
    ) -> Result<Placed, Failure> {
        let uploaded = publish::check_path(ctx, &e.path)
            .and_then(|()| {
                self.store
                    .target
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

    fn place_dir(&mut self, ctx: &Context, e: &Entry, signed: Signed) -> Result<Placed, Failure> {
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
