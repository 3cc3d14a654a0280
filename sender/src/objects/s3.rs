//! `s3://BUCKET/PREFIX` as a source: the objects under a prefix sent as a tree, as a local
//! directory would be (`s3://b/runs/eval7` → `eval7/…`), or the one object a key names
//! (`s3://b/runs/eval7/report.pdf` → `report.pdf`).
//!
//! Listing. The keys are listed with `ListObjectsV2` and `encoding-type=url`, signed by
//! `object_store`'s own SigV4 ([`AwsAuthorizer`]), not through `object_store::list`: that one
//! fails a whole listing at the first key it cannot hold as a path (`a/../x`, a control
//! character) and reads `dir/` as `dir`, so anyone who may write one key could stop an export
//! or turn a directory marker into an empty file. Here every key is seen as stored: one that
//! is not a valid Sluice object path is refused and named (escaped), the rest go on; a key
//! ending in `/` is a directory marker and skipped. Directories implied by the keys are sent
//! before their contents, depth first in name order, as the local walk does.
//!
//! Reading. An object is read in ranges of [`RANGE`] bytes, each a `GET` with `If-Match` the
//! ETag listed, and each answer checked against the listed ETag and size: an object
//! overwritten or deleted since it was listed fails at its next range and is reported (as a
//! local file that changed is), never sent as a mix of two versions. An object listed without
//! an ETag cannot be pinned so, and is refused. At most one range per reading thread is in
//! memory, whatever the object's size: a range's body is read up to the length asked and
//! refused past it.
//!
//! A store that answers wrongly (broken, or whoever controls it) cannot make the sender hold
//! more than the limits say: a listing page is read up to [`PAGE_BYTES_PER_KEY`] per key asked
//! (plus [`PAGE_BYTES_BESIDE`]); one listing takes at most [`MAX_LISTING_KEYS`] keys and
//! [`MAX_LISTING_KEY_BYTES`] bytes of keys; and it must advance: keys strictly increasing
//! across pages (as S3 lists them, in byte order), a continuation token other than the last,
//! at most [`MAX_EMPTY_PAGES`] truncated pages in a row without a key. Past any of them the
//! argument is refused, naming the limit.
//!
//! Threads. The encoder reads on plain threads (its reader, and the threads of the start-up
//! checks); the store's client is async. Each [`Store`] owns a small runtime (one I/O thread)
//! and a reading thread blocks on it for one request at a time: no runtime per thread, one
//! connection pool per bucket, and the sender's own runtime (the send loop's pacing) never
//! runs a store request.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3ConfigKey, AwsAuthorizer};
use object_store::client::{HttpClient, HttpConnector, HttpRequestBody, ReqwestConnector};
use object_store::path::Path as Key;
use object_store::{ClientConfigKey, ClientOptions, GetOptions, GetRange, ObjectStore};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sluice_common::paths::{escaped, validate_object_path};
use sluice_common::s3::{self, Settings, Target};

use super::{Found, Source, SourceObject};

/// Bytes per ranged `GET` (and so the most of an object in memory per reading thread).
pub const RANGE: u64 = 8 << 20;
/// How long one `GET` is retried while the store fails.
const RETRY_FOR: Duration = Duration::from_secs(5 * 60);
/// Keys per listing page (S3's most).
const PAGE_KEYS: u32 = 1000;
/// The most bytes a listing page may have per key asked: a key is at most 1024 bytes, 3 KiB
/// URL-encoded, and its entry adds its ETag, size and date.
pub const PAGE_BYTES_PER_KEY: u64 = 4 << 10;
/// And beyond its keys (the prefix asked for, echoed, and the continuation token).
pub const PAGE_BYTES_BESIDE: u64 = 16 << 10;
/// The most keys one listing (one `s3://` argument) takes.
pub const MAX_LISTING_KEYS: usize = 10_000_000;
/// The most bytes of keys (their sum) one listing takes.
pub const MAX_LISTING_KEY_BYTES: u64 = 1 << 30;
/// Truncated listing pages in a row without a key before the listing is refused as not
/// advancing.
pub const MAX_EMPTY_PAGES: u32 = 16;
/// Why an object listed without an ETag is not sent.
const NO_ETAG: &str = "refused: the store listed it without an ETag, so its reads cannot be \
                       pinned to the version listed (an overwrite of the same size could be sent \
                       as a mix of two versions)";
/// Mode bits objects and the directories their keys imply are sent with.
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

/// Query values as SigV4 wants them: everything but the unreserved characters encoded.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Whether the PATH argument `path` names object storage (`s3://…`).
pub fn is_s3(path: &Path) -> bool {
    path.as_os_str().as_encoded_bytes().starts_with(b"s3://")
}

fn target_of(path: &Path) -> Result<Target, String> {
    match path.to_str().map(Target::parse) {
        Some(Some(target)) => target,
        _ => Err(format!(
            "{}: not an s3://BUCKET/PREFIX URL in UTF-8",
            path.display()
        )),
    }
}

/// The buckets the `s3://` arguments name, each connected and probed.
#[derive(Debug, Default)]
pub struct Stores {
    stores: Vec<Arc<Store>>,
}

impl Stores {
    /// Connects to the bucket of every `s3://` argument of `paths` (the `[s3]` `settings` over
    /// the AWS variables) and checks that its prefix can be listed: a wrong key, a missing
    /// bucket or an unreachable endpoint is one line (`sluice_common::s3`'s words). Blocks: call
    /// it from a plain thread, never from async code.
    pub fn connect(paths: &[PathBuf], settings: &Settings) -> Result<Stores, String> {
        let mut stores: Vec<Arc<Store>> = Vec::new();
        for path in paths.iter().filter(|p| is_s3(p)) {
            let target = target_of(path)?;
            let store = match stores.iter().find(|s| s.bucket == target.bucket) {
                Some(store) => store.clone(),
                None => {
                    let store = Arc::new(Store::connect(&target, settings)?);
                    stores.push(store.clone());
                    store
                }
            };
            store.probe(&target, settings)?;
        }
        Ok(Stores { stores })
    }

    fn get(&self, bucket: &str) -> Option<&Arc<Store>> {
        self.stores.iter().find(|s| s.bucket == bucket)
    }
}

/// One bucket: its client, its runtime, and where its listing is asked.
#[derive(Debug)]
pub struct Store {
    bucket: String,
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    client: AmazonS3,
    http: HttpClient,
    region: String,
    /// The bucket's URL, as the client reaches it.
    endpoint: String,
}

impl Drop for Store {
    fn drop(&mut self) {
        // Wherever the last object went (an async task may drop it): never wait for the I/O
        // thread there.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Store {
    fn connect(target: &Target, settings: &Settings) -> Result<Store, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sluice-s3")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the S3 client: {e}"))?;
        let builder = s3::builder(target, settings, s3::retry(RETRY_FOR))?;
        let setting = |key: AmazonS3ConfigKey| builder.get_config_value(&key);
        // As the builder places the bucket (it keeps that to itself).
        let region = setting(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into());
        let virtual_hosted = setting(AmazonS3ConfigKey::VirtualHostedStyleRequest)
            .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
        let bucket = &target.bucket;
        let endpoint = match (
            setting(AmazonS3ConfigKey::S3Endpoint).or(setting(AmazonS3ConfigKey::Endpoint)),
            virtual_hosted,
        ) {
            (Some(endpoint), true) => endpoint,
            (Some(endpoint), false) => format!("{}/{bucket}", endpoint.trim_end_matches('/')),
            (None, true) => format!("https://{bucket}.s3.{region}.amazonaws.com"),
            (None, false) => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        };
        let mut options = ClientOptions::new();
        if let Some(allow) = setting(AmazonS3ConfigKey::Client(ClientConfigKey::AllowHttp)) {
            options = options.with_config(ClientConfigKey::AllowHttp, allow);
        }
        let http = ReqwestConnector::default()
            .connect(&options)
            .map_err(|e| format!("{}: {e}", target.url()))?;
        let client = builder
            .build()
            .map_err(|e| format!("{}: {e}", target.url()))?;
        Ok(Store {
            bucket: bucket.clone(),
            runtime: Some(runtime),
            client,
            http,
            region,
            endpoint,
        })
    }

    /// Runs `future` (a request of this store's client) to its end on this store's runtime.
    fn block_on<F: Future>(&self, future: F) -> io::Result<F::Output> {
        match &self.runtime {
            Some(runtime) => Ok(runtime.block_on(future)),
            None => Err(io::Error::other("the S3 client was stopped")),
        }
    }

    /// One listing request: can the key list `target`'s prefix at all?
    fn probe(&self, target: &Target, settings: &Settings) -> Result<(), String> {
        let asked = self
            .block_on(self.page(&target.prefix, None, 1))
            .map_err(|e| e.to_string())
            .and_then(|page| page);
        asked.map(|_| ()).map_err(|e| {
            format!(
                "{}: {} ({e})",
                target.url(),
                s3::diagnose(&e, target, settings)
            )
        })
    }

    /// One page of at most `keys` keys starting with `prefix`; its body read up to
    /// [`page_cap`]`(keys)` bytes.
    async fn page(&self, prefix: &str, token: Option<&str>, keys: u32) -> Result<Page, String> {
        let max_keys = keys.to_string();
        let mut query = vec![
            ("encoding-type", "url"),
            ("list-type", "2"),
            ("max-keys", max_keys.as_str()),
            ("prefix", prefix),
        ];
        if let Some(token) = token {
            query.push(("continuation-token", token));
        }
        let query: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, QUERY)))
            .collect();
        let url = format!("{}?{}", self.endpoint, query.join("&"));
        let mut request = http::Request::get(url.as_str())
            .body(HttpRequestBody::empty())
            .map_err(|e| format!("a listing request: {e}"))?;
        let credential = self
            .client
            .credentials()
            .get_credential()
            .await
            .map_err(|e| format!("no credentials: {e}"))?;
        AwsAuthorizer::new(&credential, "s3", &self.region)
            .try_authorize(&mut request, None)
            .map_err(|e| format!("cannot sign a listing request: {e}"))?;
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| format!("error sending request: {e}"))?;
        let status = response.status();
        let cap = page_cap(keys);
        let mut stream = response.into_body().bytes_stream();
        let body = read_capped(|cx| stream.as_mut().poll_next(cx), cap, 0)
            .await
            .map_err(|e| match e {
                Capped::Over => format!(
                    "a listing page longer than {cap} bytes ({PAGE_BYTES_PER_KEY} per key asked \
                     and {PAGE_BYTES_BESIDE}); refusing it"
                ),
                Capped::Failed(e) => format!("error reading a listing: {e}"),
            })?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            return Err(format!("status: {}; {}", status.as_u16(), escaped(&text)));
        }
        quick_xml::de::from_reader(body.as_ref())
            .map_err(|e| format!("a listing that does not parse: {e}"))
    }

    /// Every key starting with `prefix` (as stored, decoded), in the store's order, within
    /// [`LIMITS`].
    fn list(&self, prefix: &str) -> Result<Vec<Listed>, String> {
        list_pages(
            |token| {
                self.block_on(self.page(prefix, token, PAGE_KEYS))
                    .map_err(|e| e.to_string())?
            },
            LIMITS,
        )
    }

    /// The object whose key is exactly `key`, if there is one.
    fn exact(&self, key: &str) -> Result<Option<Listed>, String> {
        // The key itself sorts before every longer key it prefixes: one key is enough.
        let page = self
            .block_on(self.page(key, None, 1))
            .map_err(|e| e.to_string())??;
        let encoded = page.encoding_type.as_deref() == Some("url");
        Ok(page
            .contents
            .into_iter()
            .map(|c| c.decoded(encoded))
            .find(|l| l.key.as_deref() == Ok(key)))
    }
}

/// The most bytes of a listing page of `keys` keys.
fn page_cap(keys: u32) -> u64 {
    u64::from(keys) * PAGE_BYTES_PER_KEY + PAGE_BYTES_BESIDE
}

/// What bounds one listing (the constants, smaller in tests).
#[derive(Debug, Clone, Copy)]
struct Limits {
    keys: usize,
    key_bytes: u64,
    empty_pages: u32,
}

const LIMITS: Limits = Limits {
    keys: MAX_LISTING_KEYS,
    key_bytes: MAX_LISTING_KEY_BYTES,
    empty_pages: MAX_EMPTY_PAGES,
};

/// Every key of the pages `next` gives (called with the continuation token, `None` first),
/// refused past `limits` or when the listing does not advance: a key not after the one before
/// it (S3 lists each key once, in byte order), the same continuation token twice in a row, or
/// more than `limits.empty_pages` truncated pages in a row without a key.
fn list_pages(
    mut next: impl FnMut(Option<&str>) -> Result<Page, String>,
    limits: Limits,
) -> Result<Vec<Listed>, String> {
    let mut all = Vec::new();
    let mut token: Option<String> = None;
    let mut last: Option<Vec<u8>> = None;
    let (mut key_bytes, mut empty) = (0u64, 0u32);
    loop {
        let page = next(token.as_deref())?;
        let encoded = page.encoding_type.as_deref() == Some("url");
        empty = if page.contents.is_empty() {
            empty.saturating_add(1)
        } else {
            0
        };
        for contents in page.contents {
            let raw = contents.raw_key(encoded);
            if let Some(last) = last.as_deref().filter(|last| raw.as_slice() <= *last) {
                return Err(format!(
                    "the store listed {} after {}: keys out of order or listed again, so the \
                     listing does not advance; refusing it",
                    shown_key(&raw),
                    shown_key(last)
                ));
            }
            key_bytes = key_bytes.saturating_add(raw.len() as u64);
            if all.len() >= limits.keys {
                return Err(format!(
                    "more than {} keys under it, the most one listing takes; send a narrower \
                     prefix",
                    limits.keys
                ));
            }
            if key_bytes > limits.key_bytes {
                return Err(format!(
                    "more than {} bytes of keys under it, the most one listing takes; send a \
                     narrower prefix",
                    limits.key_bytes
                ));
            }
            all.push(contents.listed(&raw));
            last = Some(raw);
        }
        match (page.is_truncated, page.next_continuation_token) {
            (false, _) => return Ok(all),
            (true, None) => return Err("a truncated listing without a continuation".into()),
            (true, Some(next)) if token.as_deref() == Some(next.as_str()) => {
                return Err(
                    "the store gave the same continuation token twice in a row, so the listing \
                     does not advance; refusing it"
                        .into(),
                )
            }
            (true, Some(_)) if empty > limits.empty_pages => {
                return Err(format!(
                    "{empty} truncated listing pages in a row without a key (at most {} \
                     taken), so the listing does not advance; refusing it",
                    limits.empty_pages
                ))
            }
            (true, Some(next)) => token = Some(next),
        }
    }
}

/// A key's bytes as messages show them (escaped).
fn shown_key(raw: &[u8]) -> String {
    escaped(&String::from_utf8_lossy(raw))
}

/// Why [`read_capped`] stopped.
#[derive(Debug)]
enum Capped<E> {
    Failed(E),
    /// The body went past the cap.
    Over,
}

/// A body read to its end, chunk by chunk from `next` (a stream's `poll_next`), refused as
/// soon as it goes past `cap` bytes: never more than `cap` of it is held. `reserve`: the
/// buffer's first capacity.
async fn read_capped<E>(
    mut next: impl FnMut(&mut Context<'_>) -> Poll<Option<Result<Bytes, E>>>,
    cap: u64,
    reserve: usize,
) -> Result<Bytes, Capped<E>> {
    let mut body = Vec::with_capacity(reserve);
    while let Some(chunk) = std::future::poll_fn(&mut next).await {
        let chunk = chunk.map_err(Capped::Failed)?;
        if (body.len() as u64).saturating_add(chunk.len() as u64) > cap {
            return Err(Capped::Over);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// A `ListObjectsV2` answer, as far as it is read.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Page {
    #[serde(default)]
    contents: Vec<Contents>,
    #[serde(default)]
    is_truncated: bool,
    next_continuation_token: Option<String>,
    encoding_type: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Contents {
    key: String,
    size: u64,
    last_modified: String,
    #[serde(rename = "ETag")]
    e_tag: Option<String>,
}

impl Contents {
    /// The key's bytes as stored.
    fn raw_key(&self, encoded: bool) -> Vec<u8> {
        if encoded {
            // As AWS encodes it: a form (`+` for a space, `%2B` for a plus).
            percent_decode_str(&self.key.replace('+', " ")).collect()
        } else {
            self.key.as_bytes().to_vec()
        }
    }

    fn decoded(self, encoded: bool) -> Listed {
        let raw = self.raw_key(encoded);
        self.listed(&raw)
    }

    /// This entry, its key's bytes being `raw` (see [`Contents::raw_key`]).
    fn listed(self, raw: &[u8]) -> Listed {
        let key = match std::str::from_utf8(raw) {
            Ok(key) => Ok(key.to_string()),
            Err(_) => Err(shown_key(raw)),
        };
        let mtime = humantime::parse_rfc3339_weak(self.last_modified.trim())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or((0, 0), |d| {
                (i64::try_from(d.as_secs()).unwrap_or(0), d.subsec_nanos())
            });
        Listed {
            key,
            size: self.size,
            etag: self.e_tag,
            mtime,
        }
    }
}

/// A listed object.
#[derive(Debug, Clone)]
struct Listed {
    /// Its key, or (not UTF-8) the key shown escaped.
    key: Result<String, String>,
    size: u64,
    etag: Option<String>,
    mtime: (i64, u32),
}

/// A listed object that may be sent: its key UTF-8 and its ETag known.
#[derive(Debug)]
struct Pinned {
    key: String,
    etag: String,
    size: u64,
    mtime: (i64, u32),
}

impl Listed {
    /// Its ETag, if it has one to pin its reads to.
    fn etag(&self) -> Option<String> {
        self.etag.clone().filter(|etag| !etag.is_empty())
    }
}

/// A stored object the listing found: its bucket, key, and the ETag and size it must still
/// have when read.
#[derive(Debug, Clone)]
pub struct ObjectRef {
    store: Arc<Store>,
    key: String,
    etag: String,
    size: u64,
}

impl PartialEq for ObjectRef {
    fn eq(&self, other: &Self) -> bool {
        (&self.store.bucket, &self.key, &self.etag, self.size)
            == (&other.store.bucket, &other.key, &other.etag, other.size)
    }
}

impl Eq for ObjectRef {}

impl ObjectRef {
    /// `s3://BUCKET/KEY`, for messages.
    pub fn shown(&self) -> String {
        format!("s3://{}/{}", self.store.bucket, escaped(&self.key))
    }

    /// Opens the object as it was listed: its first range is read now (an object changed or
    /// deleted since is refused here), the rest as the reader is read. Returns the reader and
    /// the listed size, which the reader yields exactly or fails.
    pub fn open(&self) -> io::Result<(ObjectReader, u64)> {
        let first = self.fetch(0)?;
        let offset = first.len() as u64;
        Ok((
            ObjectReader {
                object: self.clone(),
                chunk: first,
                offset,
            },
            self.size,
        ))
    }

    /// The range of at most [`RANGE`] bytes from `offset`, pinned to the listed ETag; its body
    /// read up to the length asked, refused past it.
    fn fetch(&self, offset: u64) -> io::Result<Bytes> {
        let key = Key::parse(&self.key)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let end = self.size.min(offset.saturating_add(RANGE));
        let asked = end - offset;
        let options = GetOptions {
            if_match: Some(self.etag.clone()),
            // An empty object has no range to ask for.
            range: (end > offset).then_some(GetRange::Bounded(offset..end)),
            ..GetOptions::default()
        };
        let store = &self.store;
        let bytes = store.block_on(async {
            let got = store
                .client
                .get_opts(&key, options)
                .await
                .map_err(|e| self.refusal(&e))?;
            if got.meta.e_tag.as_deref() != Some(self.etag.as_str()) || got.meta.size != self.size {
                return Err(self.changed());
            }
            let mut stream = got.into_stream();
            let reserve = usize::try_from(asked).unwrap_or(0);
            read_capped(|cx| stream.as_mut().poll_next(cx), asked, reserve)
                .await
                .map_err(|e| match e {
                    Capped::Failed(e) => self.refusal(&e),
                    Capped::Over => io::Error::other(format!(
                        "the store sent more than the {asked} bytes asked for (bytes \
                         {offset}..{end}); refusing it"
                    )),
                })
        })??;
        if bytes.len() as u64 != asked {
            return Err(io::Error::other(format!(
                "the store sent {} bytes for bytes {offset}..{end}; refusing it",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    fn changed(&self) -> io::Error {
        io::Error::other(format!(
            "changed in the store since it was listed ({} bytes, ETag {}); refusing it, send \
             it again",
            self.size, self.etag
        ))
    }

    fn refusal(&self, e: &object_store::Error) -> io::Error {
        match e {
            object_store::Error::Precondition { .. } => self.changed(),
            object_store::Error::NotFound { .. } => io::Error::new(
                io::ErrorKind::NotFound,
                "deleted from the store since it was listed; refusing it",
            ),
            other => io::Error::other(format!("the store refused the read: {other}")),
        }
    }
}

/// Reads an object range by range (see [`ObjectRef::open`]).
#[derive(Debug)]
pub struct ObjectReader {
    object: ObjectRef,
    /// What is left of the range last fetched.
    chunk: Bytes,
    /// Where the next range starts.
    offset: u64,
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.chunk.is_empty() {
            if self.offset >= self.object.size {
                return Ok(0);
            }
            self.chunk = self.object.fetch(self.offset)?;
            self.offset += self.chunk.len() as u64;
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}

/// Where a tree's keys go: the objects at a name, and the names below it.
#[derive(Debug, Default)]
struct Node {
    object: Option<Pinned>,
    children: BTreeMap<String, Node>,
    /// The newest modification below: the directory's mtime.
    newest: (i64, u32),
}

/// Expands the `s3://` argument `arg` into `found` (see the module's documentation).
pub(super) fn expand(stores: &Stores, arg: &Path, found: &mut Found) {
    let shown = arg.to_path_buf();
    let target = match target_of(arg) {
        Ok(target) => target,
        Err(e) => return found.refuse(shown, e),
    };
    let Some(store) = stores.get(&target.bucket) else {
        return found.refuse(shown, "refused: its bucket was not connected".into());
    };
    let name = match target.prefix.rsplit('/').next() {
        Some(last) if !last.is_empty() => last.to_string(),
        _ => target.bucket.clone(),
    };
    let below = match target.prefix.as_str() {
        "" => String::new(),
        prefix => format!("{prefix}/"),
    };
    let listed = match store.list(&below) {
        Ok(listed) => listed,
        Err(e) => return found.refuse(shown, format!("cannot list: {e}")),
    };
    if listed.is_empty() {
        return single(store, &target, &name, found, shown);
    }
    if !target.prefix.is_empty() && matches!(store.exact(&target.prefix), Ok(Some(_))) {
        found.refuse(
            shown.clone(),
            "refused: the object with this exact key (its prefix's tree is sent)".into(),
        );
    }
    let mut root = Node::default();
    for object in listed {
        let key = match &object.key {
            Ok(key) => key.clone(),
            Err(escaped_key) => {
                found.refuse(
                    PathBuf::from(format!("s3://{}/{escaped_key}", target.bucket)),
                    "refused: its key is not UTF-8".into(),
                );
                continue;
            }
        };
        let key_shown = PathBuf::from(format!("s3://{}/{}", target.bucket, escaped(&key)));
        let Some(rel) = key.strip_prefix(&below) else {
            continue;
        };
        if rel.ends_with('/') {
            found.skip(
                key_shown,
                "skipped: a directory marker (a key ending in /), not a file".into(),
            );
            continue;
        }
        let object_path = format!("{name}/{rel}");
        if let Err(e) = validate_object_path(&object_path) {
            found.refuse(
                key_shown,
                format!("refused: the receiver would refuse this name ({e})"),
            );
            continue;
        }
        let Some(etag) = object.etag() else {
            found.refuse(key_shown, NO_ETAG.into());
            continue;
        };
        let rel = rel.to_string();
        let object = Pinned {
            key,
            etag,
            size: object.size,
            mtime: object.mtime,
        };
        let mut node = &mut root;
        node.newest = node.newest.max(object.mtime);
        for part in rel.split('/') {
            node = node.children.entry(part.to_string()).or_default();
            node.newest = node.newest.max(object.mtime);
        }
        node.object = Some(object);
    }
    walk(store, &target.bucket, &name, &root, found);
}

/// The one object `target`'s prefix names exactly, sent as `name`.
fn single(store: &Arc<Store>, target: &Target, name: &str, found: &mut Found, shown: PathBuf) {
    let exact = match target.prefix.as_str() {
        "" => Ok(None),
        key => store.exact(key),
    };
    match exact {
        Ok(Some(listed)) => match listed.etag() {
            None => found.refuse(shown, NO_ETAG.into()),
            Some(etag) => {
                if found.valid(name, &shown) {
                    let pinned = Pinned {
                        key: target.prefix.clone(),
                        etag,
                        size: listed.size,
                        mtime: listed.mtime,
                    };
                    found
                        .objects
                        .push(object_of(store, name.to_string(), &pinned));
                }
            }
        },
        Ok(None) => found.refuse(shown, "cannot read: no such object or prefix".into()),
        Err(e) => found.refuse(shown, format!("cannot list: {e}")),
    }
}

fn object_of(store: &Arc<Store>, path: String, listed: &Pinned) -> SourceObject {
    SourceObject {
        path,
        size: Some(listed.size),
        source: Source::Object(ObjectRef {
            store: store.clone(),
            key: listed.key.clone(),
            etag: listed.etag.clone(),
            size: listed.size,
        }),
        mode: FILE_MODE,
        mtime_secs: listed.mtime.0,
        mtime_nanos: listed.mtime.1,
    }
}

/// The tree under `root` as objects: each directory before what is below it, depth first in
/// name order (as the local walk), from an explicit stack.
fn walk(store: &Arc<Store>, bucket: &str, name: &str, root: &Node, found: &mut Found) {
    enum Step<'a> {
        Directory(String, &'a Node),
        Object(String, &'a Pinned),
    }
    let mut stack = vec![Step::Directory(name.to_string(), root)];
    while let Some(step) = stack.pop() {
        let (path, node) = match step {
            Step::Object(path, listed) => {
                found.objects.push(object_of(store, path, listed));
                continue;
            }
            Step::Directory(path, node) => (path, node),
        };
        found.objects.push(SourceObject {
            path: path.clone(),
            source: Source::Directory,
            size: None,
            mode: DIR_MODE,
            mtime_secs: node.newest.0,
            mtime_nanos: node.newest.1,
        });
        let mut steps = Vec::with_capacity(node.children.len());
        for (child, below) in &node.children {
            let child_path = format!("{path}/{child}");
            match (&below.object, below.children.is_empty()) {
                (Some(listed), true) => steps.push(Step::Object(child_path, listed)),
                (None, _) => steps.push(Step::Directory(child_path, below)),
                (Some(listed), false) => {
                    found.refuse(
                        PathBuf::from(format!("s3://{bucket}/{}", escaped(&listed.key))),
                        "refused: its key is also the prefix of other keys (they are sent \
                         as a directory of this name)"
                            .into(),
                    );
                    steps.push(Step::Directory(child_path, below));
                }
            }
        }
        stack.extend(steps.into_iter().rev());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_keys_are_decoded_as_stored() {
        let contents = |key: &str| Contents {
            key: key.into(),
            size: 1,
            last_modified: "2024-05-01T12:00:00.500Z".into(),
            e_tag: Some("\"abc\"".into()),
        };
        let key = |key: &str| contents(key).decoded(true).key;
        assert_eq!(key("a%2Fb%20c+d%2B"), Ok("a/b c d+".into()));
        assert_eq!(key("x%01y"), Ok("x\u{1}y".into()));
        assert!(key("bad%FF").is_err());
        assert_eq!(contents("raw+%").decoded(false).key, Ok("raw+%".into()));
        let listed = contents("k").decoded(true);
        assert_eq!(listed.mtime, (1_714_564_800, 500_000_000));
    }

    #[test]
    fn a_listing_page_parses() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name>
<Prefix>runs%2F</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys>
<EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>
<Contents><Key>runs%2Fa</Key><LastModified>2024-05-01T12:00:00.000Z</LastModified>
<ETag>&quot;e1&quot;</ETag><Size>3</Size><StorageClass>STANDARD</StorageClass></Contents>
<Contents><Key>runs%2Fb%2F</Key><LastModified>2024-05-01T12:00:00.000Z</LastModified>
<ETag>&quot;e2&quot;</ETag><Size>0</Size></Contents>
<NextContinuationToken>tok+/=</NextContinuationToken></ListBucketResult>"#;
        let page: Page = quick_xml::de::from_str(xml).unwrap();
        assert!(page.is_truncated);
        assert_eq!(page.next_continuation_token.as_deref(), Some("tok+/="));
        assert_eq!(page.contents.len(), 2);
        assert_eq!(page.contents[0].e_tag.as_deref(), Some("\"e1\""));
        assert_eq!(page.contents[1].key, "runs%2Fb%2F");
    }

    /// A page of `keys` (URL-encoded), truncated with token `next` if given.
    fn page(keys: &[&str], next: Option<&str>) -> Page {
        Page {
            contents: keys
                .iter()
                .map(|key| Contents {
                    key: (*key).into(),
                    size: 1,
                    last_modified: String::new(),
                    e_tag: Some("\"e\"".into()),
                })
                .collect(),
            is_truncated: next.is_some(),
            next_continuation_token: next.map(Into::into),
            encoding_type: Some("url".into()),
        }
    }

    const SMALL: Limits = Limits {
        keys: 5,
        key_bytes: 1 << 20,
        empty_pages: 3,
    };

    fn keys(listed: &[Listed]) -> Vec<&str> {
        listed
            .iter()
            .map(|l| l.key.as_deref().unwrap_or("?"))
            .collect()
    }

    #[test]
    fn a_listing_is_read_page_by_page() {
        let mut asked = Vec::new();
        let listed = list_pages(
            |token| {
                asked.push(token.map(str::to_string));
                Ok(match token {
                    None => page(&["a", "b%20c"], Some("t1")),
                    // An empty page between two: taken, as long as the next one has keys.
                    Some("t1") => page(&[], Some("t2")),
                    Some(_) => page(&["b%20c%2Fd", "e"], None),
                })
            },
            SMALL,
        )
        .unwrap();
        assert_eq!(keys(&listed), ["a", "b c", "b c/d", "e"]);
        assert_eq!(asked, [None, Some("t1".into()), Some("t2".into())]);
    }

    /// A fake store's answer to a listing request: the page for this token, at this call.
    type Answer = Box<dyn FnMut(Option<&str>, u32) -> Page>;

    /// A store that always answers "truncated, here is the next token" is refused after a
    /// bounded number of pages, however it varies its answers, and never grows the listing
    /// past the limits.
    #[test]
    fn a_listing_that_does_not_advance_is_refused() {
        let refused = |mut answer: Answer| {
            let mut calls = 0;
            let e = list_pages(
                |token| {
                    calls += 1;
                    assert!(calls < 100, "the listing went on");
                    Ok(answer(token, calls))
                },
                SMALL,
            )
            .unwrap_err();
            (e, calls)
        };
        let (e, calls) = refused(Box::new(|_: Option<&str>, _: u32| {
            page(&["a"], Some("same"))
        }));
        assert!(e.contains("keys out of order or listed again"), "{e}");
        assert_eq!(calls, 2);
        let (e, calls) = refused(Box::new(|token: Option<&str>, n: u32| match token {
            None => page(&["a"], Some("same")),
            Some(_) => page(&[&format!("b{n}")], Some("same")),
        }));
        assert!(e.contains("same continuation token twice"), "{e}");
        assert_eq!(calls, 2);
        let (e, calls) = refused(Box::new(|_: Option<&str>, n: u32| {
            page(&[], Some(&format!("t{n}")))
        }));
        assert!(
            e.contains("4 truncated listing pages in a row without a key"),
            "{e}"
        );
        assert_eq!(calls, 4);
        let (e, _) = refused(Box::new(|_: Option<&str>, n: u32| {
            page(&["m"], Some(&format!("t{n}")))
        }));
        assert!(e.contains("the store listed m after m"), "{e}");
        let (e, _) = refused(Box::new(|_: Option<&str>, n: u32| {
            page(&["z", "a"], Some(&format!("t{n}")))
        }));
        assert!(e.contains("the store listed a after z"), "{e}");
        // New keys, in order, without end: stopped at the key limit, which is named.
        let (e, calls) = refused(Box::new(|_: Option<&str>, n: u32| {
            page(
                &[&format!("k{n:03}a"), &format!("k{n:03}b")],
                Some(&format!("t{n}")),
            )
        }));
        assert!(
            e.contains("more than 5 keys under it, the most one listing takes"),
            "{e}"
        );
        assert_eq!(calls, 3);
        let few_long = Limits {
            key_bytes: 10,
            ..SMALL
        };
        let e = list_pages(|_| Ok(page(&["aaaa", "bbbb", "cccc"], None)), few_long).unwrap_err();
        assert!(e.contains("more than 10 bytes of keys under it"), "{e}");
    }

    #[test]
    fn bodies_are_read_up_to_their_cap() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let read = |chunks: Vec<Result<Bytes, String>>, cap: u64| {
            let mut chunks = chunks.into_iter();
            runtime.block_on(read_capped(|_| Poll::Ready(chunks.next()), cap, 0))
        };
        let four = || Ok(Bytes::from_static(b"abcd"));
        let body = read(vec![four(), four(), four()], 12).unwrap();
        assert_eq!(body.as_ref(), b"abcdabcdabcd");
        assert!(matches!(
            read(vec![four(), four(), four()], 11),
            Err(Capped::Over)
        ));
        assert!(matches!(
            read(vec![four(), Err("reset".into())], 12),
            Err(Capped::Failed(e)) if e == "reset"
        ));
        // A body without end is refused at its cap, not read on.
        let mut endless = 0u64;
        let over = runtime.block_on(read_capped(
            |_| {
                endless += 1;
                Poll::Ready(Some(Ok::<_, String>(Bytes::from_static(&[0; 1024]))))
            },
            page_cap(1),
            0,
        ));
        assert!(matches!(over, Err(Capped::Over)));
        assert_eq!(endless, page_cap(1) / 1024 + 1);
        assert_eq!(page_cap(1000), 1000 * 4096 + 16 * 1024);
    }

    #[test]
    fn s3_arguments_are_told_from_paths() {
        assert!(is_s3(Path::new("s3://b/p")));
        assert!(!is_s3(Path::new("./s3://b")));
        assert!(!is_s3(Path::new("data")));
        assert!(target_of(Path::new("s3://b/a/../c")).is_err());
    }
}
