//! Uploading one local file into an S3 bucket, whole or not at all: the S3 sink's deliveries
//! and a quarantine in the store both go through an [`Uploader`].
//!
//! A file of up to [`PART_SIZE`] is one `PUT`; a larger one a multipart upload completed after
//! its last part (an unfinished multipart upload is never listed), at most
//! [`PARTS_IN_FLIGHT`] parts in memory. A multipart upload is recorded in the receiver's
//! records before its first part and its record dropped once it is completed or aborted, so
//! one a crash cut short is aborted at the next start ([`Uploader::abort_unfinished`]). Each
//! upload carries its SHA-256 as its checksum (`x-amz-checksum-sha256`, per part for a
//! multipart upload), which a store that knows it checks.
//!
//! The client runs on a runtime of its own with one I/O thread, made at first use; any plain
//! thread (the publisher, an inspection thread) blocks on it for one upload at a time.

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{FuturesOrdered, StreamExt};
use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{
    Attributes, MultipartId, ObjectStore, PutMultipartOptions, PutOptions, PutPayload,
};
use sluice_common::s3::{self, Settings, Target};

use crate::records::Records;

/// A file up to this size is one `PUT`; a larger one goes in parts of this size.
pub(crate) const PART_SIZE: usize = 16 << 20;
/// Parts uploading at once (and so in memory) per file.
pub(crate) const PARTS_IN_FLIGHT: usize = 2;
/// Most parts of one multipart upload (S3's limit).
const MAX_PARTS: u64 = 10_000;

/// The part size for a file of `size` bytes: [`PART_SIZE`], or as much larger (in whole MiB)
/// as the file needs to fit [`MAX_PARTS`] parts — beyond 156 GiB, memory per upload grows with
/// the file (2 parts in flight: 2 × size / 10 000).
fn part_size(size: u64) -> usize {
    let needed = size.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
    usize::try_from(needed).map_or(usize::MAX, |n| n.max(PART_SIZE))
}
/// How long one request is retried (with backoff) before the upload is given up for now.
pub(crate) const RETRY_FOR: Duration = Duration::from_secs(10);

/// Why one try at an upload failed.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// The store failed or did not answer: trying again later may pass.
    Unavailable(String),
    /// The file cannot be uploaded: the store refuses this object (its key, its size), or the
    /// local file cannot be read.
    Refused(String),
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attempt::Unavailable(why) | Attempt::Refused(why) => f.write_str(why),
        }
    }
}

/// The store's error `err` while doing `what` to `shown`, as an [`Attempt`].
fn attempt(what: &str, shown: &str, err: &object_store::Error) -> Attempt {
    let text = format!("cannot {what} {shown}: {err}");
    if refuses_the_object(http_status(err)) {
        Attempt::Refused(text)
    } else {
        Attempt::Unavailable(text)
    }
}

/// Whether a store's HTTP status refuses the request for the object's own sake (its key,
/// its size, its headers): trying again would not change the answer. A client error other
/// than the credentials (401, 403: an operator fixes those), a timeout (408) or a throttle
/// (429) — and anything else, a server error or no answer at all — may pass later.
fn refuses_the_object(status: Option<u16>) -> bool {
    matches!(status, Some(400..=499)) && !matches!(status, Some(401 | 403 | 404 | 408 | 409 | 429))
}

/// The HTTP status of a store's error, if it had one. `object_store` keeps it in an error type
/// of its own that it does not export; its text, somewhere down the chain of sources, says it
/// as `Server returned non-2xx status code: 400 Bad Request` (or `error response` with the
/// same status in the variants it maps: 404 not found, 412 precondition, 401/403).
fn http_status(err: &object_store::Error) -> Option<u16> {
    match err {
        object_store::Error::NotFound { .. } => return Some(404),
        object_store::Error::Precondition { .. } => return Some(412),
        object_store::Error::AlreadyExists { .. } => return Some(409),
        object_store::Error::PermissionDenied { .. } => return Some(403),
        object_store::Error::Unauthenticated { .. } => return Some(401),
        _ => {}
    }
    let mut source: Option<&dyn std::error::Error> = Some(err);
    while let Some(e) = source {
        if let Some(status) = status_in(&e.to_string()) {
            return Some(status);
        }
        source = e.source();
    }
    None
}

/// The status in a text as `object_store` words it.
fn status_in(text: &str) -> Option<u16> {
    let (_, after) = text.split_once("non-2xx status code: ")?;
    after.get(..3)?.parse().ok()
}

/// The client and the runtime it runs on.
#[derive(Debug)]
struct Client {
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    store: AmazonS3,
}

impl Drop for Client {
    fn drop(&mut self) {
        // Wherever the last owner goes (an async task may drop it): never wait for the I/O
        // thread there.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Client {
    fn block_on<F: std::future::Future>(&self, future: F) -> Result<F::Output, Attempt> {
        match &self.runtime {
            Some(runtime) => Ok(runtime.block_on(future)),
            None => Err(Attempt::Unavailable("the S3 client was stopped".into())),
        }
    }
}

/// Uploads into one bucket (its client made at first use).
#[derive(Debug)]
pub(crate) struct Uploader {
    target: Target,
    settings: Settings,
    client: Mutex<Option<Arc<Client>>>,
    /// This uploader's multipart uploads whose abort failed (the store was down): aborted
    /// again by [`Uploader::retry_aborts`]. Only its own: another uploader into the same
    /// bucket (a quarantine beside the delivered prefix) may have one running.
    failed_aborts: Mutex<Vec<(MultipartId, Key)>>,
}

impl Uploader {
    pub fn new(target: Target, settings: Settings) -> Uploader {
        Uploader {
            target,
            settings,
            client: Mutex::new(None),
            failed_aborts: Mutex::new(Vec::new()),
        }
    }

    /// Where it uploads.
    pub fn target(&self) -> &Target {
        &self.target
    }

    fn client(&self) -> Result<Arc<Client>, Attempt> {
        let mut slot = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = &*slot {
            return Ok(client.clone());
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sluice-s3")
            .enable_all()
            .build()
            .map_err(|e| Attempt::Unavailable(format!("cannot start the S3 client: {e}")))?;
        // A secret file made unreadable since the start is for an operator to fix: wait.
        let store = s3::client(&self.target, &self.settings, s3::retry(RETRY_FOR))
            .map_err(Attempt::Unavailable)?;
        let client = Arc::new(Client {
            runtime: Some(runtime),
            store,
        });
        *slot = Some(client.clone());
        Ok(client)
    }

    /// How the journal names an upload of `key`: the bucket too, as uploaders of several
    /// buckets share it.
    fn journal_key(&self, key: &Key) -> String {
        format!("s3://{}/{key}", self.target.bucket)
    }

    /// Aborts the multipart uploads into this bucket that the records hold as begun and not
    /// ended: an earlier run (or an earlier try of this one) stopped in the middle of them.
    /// One that cannot be aborted now stays recorded for the next time.
    pub fn abort_unfinished(&self, records: &Records) {
        let uploads = match records.uploads() {
            Ok(uploads) => uploads,
            Err(e) => return tracing::warn!("cannot read the unfinished uploads: {e}"),
        };
        let ours = format!("s3://{}/", self.target.bucket);
        let mine: Vec<(String, String)> = uploads
            .into_iter()
            .filter(|(_, at)| at.starts_with(&ours))
            .collect();
        if mine.is_empty() {
            return;
        }
        let Ok(client) = self.client() else {
            return;
        };
        for (id, at) in mine {
            // Parsed, not built: the journal holds the key as it was sent (`Key::from` would
            // encode `[`, `%`, `#`… again and abort another, missing key).
            let Ok(location) = Key::parse(at.get(ours.len()..).unwrap_or_default()) else {
                tracing::warn!(key = %at, "an unfinished upload's key does not parse; left");
                continue;
            };
            let aborted = client.block_on(client.store.abort_multipart(&location, &id));
            match aborted {
                // Not found: completed, or aborted already.
                Ok(Ok(()) | Err(object_store::Error::NotFound { .. })) => {
                    tracing::info!(key = %at, "aborted an unfinished multipart upload");
                    if let Err(e) = records.upload_ended(&id) {
                        tracing::warn!("cannot record the upload of {at} aborted: {e}");
                    }
                }
                Ok(Err(e)) => tracing::warn!(
                    key = %at,
                    "cannot abort an unfinished multipart upload yet (tried again later): {e}"
                ),
                Err(e) => tracing::warn!(key = %at, "{e}"),
            }
        }
    }

    /// Aborts again the uploads of this uploader whose abort failed, now that the store
    /// answers; one that fails again stays recorded for the next start.
    pub fn retry_aborts(&self, records: &Records) {
        let failed =
            std::mem::take(&mut *self.failed_aborts.lock().unwrap_or_else(|e| e.into_inner()));
        let Ok(client) = self.client() else {
            return;
        };
        for (id, key) in failed {
            match client.block_on(client.store.abort_multipart(&key, &id)) {
                Ok(Ok(()) | Err(object_store::Error::NotFound { .. })) => {
                    if let Err(e) = records.upload_ended(&id) {
                        tracing::warn!("cannot record the upload of {key} aborted: {e}");
                    }
                }
                _ => {
                    tracing::debug!(key = %key, "an upload's abort failed again; at the next start")
                }
            }
        }
    }

    /// Stores `bytes` (a short text) as `key`.
    pub fn put(&self, key: &Key, bytes: Vec<u8>, attributes: Attributes) -> Result<(), Attempt> {
        let shown = self.journal_key(key);
        let client = self.client()?;
        let options = PutOptions {
            attributes,
            ..Default::default()
        };
        client
            .block_on(client.store.put_opts(key, PutPayload::from(bytes), options))?
            .map(|_| ())
            .map_err(|err| attempt("upload", &shown, &err))
    }

    /// One try at uploading `file`'s first `size` bytes as `key`, whole or not at all.
    pub fn upload(
        &self,
        records: &Records,
        file: &std::fs::File,
        size: u64,
        key: &Key,
        attributes: Attributes,
    ) -> Result<(), Attempt> {
        let shown = self.journal_key(key);
        let unreadable = |err: std::io::Error| {
            Attempt::Refused(format!("cannot read the file for {shown}: {err}"))
        };
        if size <= PART_SIZE as u64 {
            let mut bytes = Vec::with_capacity(PART_SIZE.min(size as usize));
            file.take(size)
                .read_to_end(&mut bytes)
                .map_err(unreadable)?;
            if bytes.len() as u64 != size {
                return Err(unreadable(std::io::ErrorKind::UnexpectedEof.into()));
            }
            return self.put(key, bytes, attributes);
        }
        let client = self.client()?;
        let store = &client.store;
        let options = PutMultipartOptions {
            attributes,
            ..Default::default()
        };
        client.block_on(async {
            let id = store
                .create_multipart_opts(key, options)
                .await
                .map_err(|err| attempt("start the upload of", &shown, &err))?;
            if let Err(err) = records.upload_begun(&id, &shown) {
                // Unrecorded, a crash would leave it behind: do not go on with it.
                let _ = store.abort_multipart(key, &id).await;
                return Err(Attempt::Refused(format!(
                    "cannot record the upload of {shown}: {err}"
                )));
            }
            let uploaded = match upload_parts(store, key, &id, file, size, &shown).await {
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
                if let Err(err) = records.upload_ended(&id) {
                    tracing::warn!("cannot record the upload of {shown} ended: {err}");
                }
            } else {
                self.failed_aborts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((id, key.clone()));
            }
            uploaded
        })?
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
    let part = part_size(size);
    loop {
        while in_flight.len() < PARTS_IN_FLIGHT && offset < size {
            let len = usize::try_from(size - offset).map_or(part, |left| left.min(part));
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset).map_err(|err| {
                Attempt::Refused(format!("cannot read the file for {shown}: {err}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refusal_of_the_object_itself_fails_a_file() {
        // As object_store words the status of a request the server refused.
        assert_eq!(
            status_in("Error performing PUT http://s/b/k: Server returned non-2xx status code: 400 Bad Request: <Error><Code>XMinioParentIsObject</Code></Error>"),
            Some(400)
        );
        assert_eq!(status_in("HTTP error: error sending request"), None);
        // The endpoint's port is never read as a status.
        assert_eq!(status_in("http://127.0.0.1:4000/b/k"), None);
        for refused in [400, 405, 411, 413, 414, 431] {
            assert!(refuses_the_object(Some(refused)), "{refused}");
        }
        for wait in [401, 403, 404, 408, 409, 429, 500, 502, 503] {
            assert!(!refuses_the_object(Some(wait)), "{wait}");
        }
        assert!(!refuses_the_object(None));
        let missing = object_store::Error::NotFound {
            path: "k".into(),
            source: "gone".into(),
        };
        assert_eq!(http_status(&missing), Some(404));
    }

    #[test]
    fn parts_grow_with_the_file_so_every_size_fits_the_part_limit() {
        assert_eq!(part_size(1 << 30), PART_SIZE);
        let huge = 500u64 << 30;
        let part = part_size(huge) as u64;
        assert!(part > PART_SIZE as u64 && part % (1 << 20) == 0);
        assert!(huge.div_ceil(part) <= MAX_PARTS);
    }
}
