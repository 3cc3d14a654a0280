//! `--out s3://BUCKET/PREFIX`: each verified, gated file is uploaded to `PREFIX/<its path>` in
//! an S3-compatible store (Garage, MinIO, Ceph RGW, AWS S3) with the `object_store` client.
//!
//! An object becomes visible only whole: a file of up to [`PART_SIZE`] is one `PUT`, a larger
//! one a multipart upload completed after its last part (an unfinished multipart upload is
//! never listed) and aborted if a part fails. The bytes come from the staged file, verified
//! before, through its fd; at most [`PARTS_IN_FLIGHT`] parts are in memory. Each object carries
//! its SHA-256 and where it came from as user metadata (`sluice-sha256`, `sluice-signer`,
//! `sluice-sequence`, `sluice-mode`, `sluice-mtime`). Directories are not objects: S3 prefixes
//! need no creating.
//!
//! "Already there" and freshness are decided from the receiver's records alone, never by
//! reading the store. The endpoint, region and credentials come from the standard AWS
//! variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_ALLOW_HTTP`); the bucket is probed at start so a wrong key or bucket fails there, in
//! one line. A store that is down is retried with backoff for up to [`RETRY_FOR`] per request,
//! the publisher waiting meanwhile (verified objects wait in the state directory, within
//! `--max-state`; the link is never read less for it).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3;
use object_store::path::Path as Key;
use object_store::{
    Attribute, Attributes, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, WriteMultipart,
};
use sluice_common::s3::{self, Settings, Target};
use sluice_protocol::manifest::{Entry, EntryKind};

use super::{Placed, Sink};
use crate::context::Context;
use crate::failure::Failure;
use crate::publish::{self, Signed, StagedFile};
use crate::records::Delivery;

/// A file up to this size is one `PUT`; a larger one goes in parts of this size.
pub(crate) const PART_SIZE: usize = 16 << 20;
/// Parts uploading at once (and so in memory) per file.
pub(crate) const PARTS_IN_FLIGHT: usize = 2;
/// How long one request is retried while the store is down or failing.
pub(crate) const RETRY_FOR: Duration = Duration::from_secs(15 * 60);

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
    client: Option<(tokio::runtime::Runtime, Arc<AmazonS3>)>,
}

impl S3Sink {
    pub fn new(store: Store) -> S3Sink {
        S3Sink {
            store,
            client: None,
        }
    }

    fn client(&mut self) -> Result<&(tokio::runtime::Runtime, Arc<AmazonS3>), Failure> {
        if self.client.is_none() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Failure::Io(format!("cannot start the S3 client: {e}")))?;
            let store = s3::client(
                &self.store.target,
                &self.store.settings,
                s3::retry(RETRY_FOR),
            )
            .map_err(Failure::Io)?;
            self.client = Some((runtime, Arc::new(store)));
        }
        self.client
            .as_ref()
            .ok_or_else(|| Failure::Io("no S3 client".into()))
    }

    /// Uploads the staged file as `key`, whole or not at all.
    fn upload(
        &mut self,
        ctx: &Context,
        staged: &StagedFile,
        e: &Entry,
        signed: Signed,
        key: &Key,
    ) -> Result<(), Failure> {
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
        let failed = |what: &str, err: &dyn std::fmt::Display| {
            Failure::Io(format!("cannot {what} s3://{shown}: {err}"))
        };
        // The staged file was written through a write-only fd: read it through a new one.
        let mut file = ctx
            .state
            .staging()
            .open_file(staged.name())
            .map_err(|err| failed("open the staged file for", &err))?;
        let (runtime, store) = self.client()?;
        let size = usize::try_from(e.size).unwrap_or(usize::MAX);
        if size <= PART_SIZE {
            let mut bytes = Vec::with_capacity(size);
            file.take(e.size)
                .read_to_end(&mut bytes)
                .map_err(|err| failed("read the staged file for", &err))?;
            let options = PutOptions {
                attributes,
                ..Default::default()
            };
            runtime
                .block_on(store.put_opts(key, PutPayload::from(bytes), options))
                .map_err(|err| failed("upload", &err))?;
            return Ok(());
        }
        let options = PutMultipartOptions {
            attributes,
            ..Default::default()
        };
        runtime.block_on(async {
            let upload = store
                .put_multipart_opts(key, options)
                .await
                .map_err(|err| failed("start the upload of", &err))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut buf = vec![0u8; PART_SIZE];
            let mut left = e.size;
            let result = async {
                while left > 0 {
                    writer
                        .wait_for_capacity(PARTS_IN_FLIGHT)
                        .await
                        .map_err(|err| failed("upload a part of", &err))?;
                    let want = buf.len().min(usize::try_from(left).unwrap_or(buf.len()));
                    let n = file
                        .read(&mut buf[..want])
                        .map_err(|err| failed("read the staged file for", &err))?;
                    if n == 0 {
                        return Err(failed("read the staged file for", &"it is short"));
                    }
                    writer.write(&buf[..n]);
                    left -= n as u64;
                }
                Ok(())
            }
            .await;
            match result {
                Ok(()) => writer
                    .finish()
                    .await
                    .map(|_| ())
                    .map_err(|err| failed("complete the upload of", &err)),
                Err(failure) => {
                    // Nothing of it is listed; abort so no part is left stored either.
                    let _ = writer.abort().await;
                    Err(failure)
                }
            }
        })
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
            .and_then(|key| self.upload(ctx, &staged, e, signed, &key));
        // Uploaded or not, the staged copy has served.
        staged.discard(ctx);
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
