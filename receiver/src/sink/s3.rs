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

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{
    Attribute, Attributes, BackoffConfig, ObjectStore, PutMultipartOptions, PutOptions, PutPayload,
    RetryConfig, WriteMultipart,
};
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

/// Where an `s3://` URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub bucket: String,
    /// Without a leading or trailing `/`; may be empty.
    pub prefix: String,
}

impl Target {
    /// `s3://BUCKET[/PREFIX]`, or `None` if `out` is not an `s3://` URL.
    pub fn parse(out: &str) -> Option<Result<Target, String>> {
        let rest = out.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/').to_string();
        if bucket.is_empty() {
            return Some(Err(format!(
                "{out}: no bucket (expected s3://BUCKET/PREFIX)"
            )));
        }
        // Trimmed of its outer slashes: an empty part can only be a `//` inside.
        let bad_prefix = !prefix.is_empty()
            && prefix
                .split('/')
                .any(|part| part.is_empty() || part == "." || part == "..");
        if bad_prefix {
            return Some(Err(format!(
                "{out}: the prefix has an empty, `.` or `..` part"
            )));
        }
        Some(Ok(Target {
            bucket: bucket.to_string(),
            prefix,
        }))
    }

    /// The key of the object at `path` (a checked object path) under the prefix: the path's
    /// own characters, not percent-encoded (a consumer lists the names the sender gave).
    pub fn key(&self, path: &str) -> Result<Key, Failure> {
        let key = if self.prefix.is_empty() {
            Key::parse(path)
        } else {
            Key::parse(format!("{}/{path}", self.prefix))
        };
        key.map_err(|e| Failure::PathRefused {
            path: path.to_string(),
            error: e.to_string(),
        })
    }

    fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

/// The client for `target` from the AWS variables, retrying each request for `retry_for`.
fn client(target: &Target, retry_for: Duration) -> object_store::Result<AmazonS3> {
    AmazonS3Builder::from_env()
        .with_bucket_name(&target.bucket)
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(15),
                base: 2.0,
            },
            max_retries: usize::MAX,
            retry_timeout: retry_for,
        })
        .build()
}

/// Checks at start that the bucket answers and the key may list it, naming what is wrong in
/// one line: the endpoint, the key, or the bucket.
pub(crate) async fn probe(target: &Target) -> Result<(), String> {
    let url = target.url();
    let store = client(target, Duration::from_secs(10)).map_err(|e| format!("{url}: {e}"))?;
    let key_id = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_default();
    let prefix = (!target.prefix.is_empty()).then(|| Key::from(target.prefix.as_str()));
    match store.list_with_delimiter(prefix.as_ref()).await {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = e.to_string();
            let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
            // Status codes as the client prints them ("status: 404"), never a bare number: the
            // endpoint's port is in the text too.
            let why = if has(&["NoSuchBucket", "status: 404"]) {
                format!("bucket {} not found", target.bucket)
            } else if has(&[
                "AccessDenied",
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "status: 403",
                "Forbidden",
            ]) {
                format!("access denied for key {key_id}")
            } else if has(&[
                "error sending request",
                "connect",
                "Connection refused",
                "dns",
            ]) {
                "endpoint unreachable (AWS_ENDPOINT_URL)".to_string()
            } else {
                "the store refused".to_string()
            };
            Err(format!("{url}: {why} ({text})"))
        }
    }
}

/// The S3 sink; its client and runtime are made on the publisher's thread at first use.
#[derive(Debug)]
pub(crate) struct S3Sink {
    target: Target,
    client: Option<(tokio::runtime::Runtime, Arc<AmazonS3>)>,
}

impl S3Sink {
    pub fn new(target: Target) -> S3Sink {
        S3Sink {
            target,
            client: None,
        }
    }

    fn client(&mut self) -> Result<&(tokio::runtime::Runtime, Arc<AmazonS3>), Failure> {
        if self.client.is_none() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Failure::Io(format!("cannot start the S3 client: {e}")))?;
            let store = client(&self.target, RETRY_FOR)
                .map_err(|e| Failure::Io(format!("{}: {e}", self.target.url())))?;
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
        let shown = format!("{}/{key}", self.target.bucket);
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
            .and_then(|()| self.target.key(&e.path))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_bucket_and_a_clean_prefix() {
        let t = |s: &str| Target::parse(s).map(|r| r.map(|t| (t.bucket, t.prefix)));
        assert_eq!(t("/srv/in"), None);
        assert_eq!(t("s3://b"), Some(Ok(("b".into(), "".into()))));
        assert_eq!(
            t("s3://b/in/data/"),
            Some(Ok(("b".into(), "in/data".into())))
        );
        assert!(matches!(t("s3:///x"), Some(Err(_))));
        assert!(matches!(t("s3://b/a/../c"), Some(Err(_))));
        assert!(matches!(t("s3://b/a//c"), Some(Err(_))));
        let target = Target::parse("s3://b/in").unwrap().unwrap();
        assert_eq!(target.key("data/x.bin").unwrap().as_ref(), "in/data/x.bin");
        // Names as given, not percent-encoded.
        assert_eq!(
            target.key("naïve café.txt").unwrap().as_ref(),
            "in/naïve café.txt"
        );
        let bare = Target::parse("s3://b").unwrap().unwrap();
        assert_eq!(bare.key("x").unwrap().as_ref(), "x");
    }
}
