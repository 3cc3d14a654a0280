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
//! local file that changed is), never sent as a mix of two versions. At most one range per
//! reading thread is in memory, whatever the object's size.
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
const PAGE_KEYS: &str = "1000";
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
            .block_on(self.page(&target.prefix, None, "1"))
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

    /// One page of the keys starting with `prefix`.
    async fn page(&self, prefix: &str, token: Option<&str>, keys: &str) -> Result<Page, String> {
        let mut query = vec![
            ("encoding-type", "url"),
            ("list-type", "2"),
            ("max-keys", keys),
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
        let body = response
            .into_body()
            .bytes()
            .await
            .map_err(|e| format!("error reading a listing: {e}"))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            return Err(format!("status: {}; {}", status.as_u16(), escaped(&text)));
        }
        quick_xml::de::from_reader(body.as_ref())
            .map_err(|e| format!("a listing that does not parse: {e}"))
    }

    /// Every key starting with `prefix` (as stored, decoded), in the store's order.
    fn list(&self, prefix: &str) -> Result<Vec<Listed>, String> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .block_on(self.page(prefix, token.as_deref(), PAGE_KEYS))
                .map_err(|e| e.to_string())??;
            let encoded = page.encoding_type.as_deref() == Some("url");
            all.extend(page.contents.into_iter().map(|c| c.decoded(encoded)));
            match (page.is_truncated, page.next_continuation_token) {
                (true, Some(next)) => token = Some(next),
                (true, None) => return Err("a truncated listing without a continuation".into()),
                (false, _) => return Ok(all),
            }
        }
    }

    /// The object whose key is exactly `key`, if there is one.
    fn exact(&self, key: &str) -> Result<Option<Listed>, String> {
        // The key itself sorts before every longer key it prefixes: one key is enough.
        let page = self
            .block_on(self.page(key, None, "1"))
            .map_err(|e| e.to_string())??;
        let encoded = page.encoding_type.as_deref() == Some("url");
        Ok(page
            .contents
            .into_iter()
            .map(|c| c.decoded(encoded))
            .find(|l| l.key.as_deref() == Ok(key)))
    }
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
    fn decoded(self, encoded: bool) -> Listed {
        let key = if encoded {
            // As AWS encodes it: a form (`+` for a space, `%2B` for a plus).
            let plus = self.key.replace('+', " ");
            match percent_decode_str(&plus).decode_utf8() {
                Ok(key) => Ok(key.into_owned()),
                Err(_) => Err(escaped(&String::from_utf8_lossy(
                    &percent_decode_str(&plus).collect::<Vec<u8>>(),
                ))),
            }
        } else {
            Ok(self.key)
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

/// A stored object the listing found: its bucket, key, and the ETag and size it must still
/// have when read.
#[derive(Debug, Clone)]
pub struct ObjectRef {
    store: Arc<Store>,
    key: String,
    etag: Option<String>,
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

    /// The range of at most [`RANGE`] bytes from `offset`, pinned to the listed ETag.
    fn fetch(&self, offset: u64) -> io::Result<Bytes> {
        let key = Key::parse(&self.key)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let end = self.size.min(offset.saturating_add(RANGE));
        let options = GetOptions {
            if_match: self.etag.clone(),
            // An empty object has no range to ask for.
            range: (end > offset).then_some(GetRange::Bounded(offset..end)),
            ..GetOptions::default()
        };
        let store = &self.store;
        let got = store.block_on(async {
            let got = store.client.get_opts(&key, options).await?;
            let meta = got.meta.clone();
            Ok::<_, object_store::Error>((meta, got.bytes().await?))
        })?;
        let (meta, bytes) = got.map_err(|e| self.refusal(&e))?;
        let etag_differs = matches!((&self.etag, &meta.e_tag), (Some(a), Some(b)) if a != b);
        if etag_differs || meta.size != self.size {
            return Err(self.changed());
        }
        if bytes.len() as u64 != end - offset {
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
            self.size,
            self.etag.as_deref().unwrap_or("none")
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
    object: Option<Listed>,
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
        Ok(Some(listed)) => {
            if found.valid(name, &shown) {
                let object = object_of(store, target.prefix.clone(), name.to_string(), &listed);
                found.objects.push(object);
            }
        }
        Ok(None) => found.refuse(shown, "cannot read: no such object or prefix".into()),
        Err(e) => found.refuse(shown, format!("cannot list: {e}")),
    }
}

fn object_of(store: &Arc<Store>, key: String, path: String, listed: &Listed) -> SourceObject {
    SourceObject {
        path,
        size: Some(listed.size),
        source: Source::Object(ObjectRef {
            store: store.clone(),
            key,
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
        Object(String, &'a Listed),
    }
    let mut stack = vec![Step::Directory(name.to_string(), root)];
    while let Some(step) = stack.pop() {
        let (path, node) = match step {
            Step::Object(path, listed) => {
                if let Ok(key) = &listed.key {
                    found
                        .objects
                        .push(object_of(store, key.clone(), path, listed));
                }
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
                    let key = listed.key.as_deref().unwrap_or_default();
                    found.refuse(
                        PathBuf::from(format!("s3://{bucket}/{}", escaped(key))),
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

    #[test]
    fn s3_arguments_are_told_from_paths() {
        assert!(is_s3(Path::new("s3://b/p")));
        assert!(!is_s3(Path::new("./s3://b")));
        assert!(!is_s3(Path::new("data")));
        assert!(target_of(Path::new("s3://b/a/../c")).is_err());
    }
}
