//! Object storage as both daemons reach it: an `s3://BUCKET/PREFIX` URL, the client's settings
//! and a start-up probe that names what is wrong in one line. The client is `object_store`'s
//! (no hand-written SigV4).
//!
//! Settings come from a config file's `[s3]` table, each one absent there from the standard
//! AWS variables (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP`). The table never holds the secret itself: it names
//! a file that only its owner may read (`secret-access-key-file`), and the secret is never
//! logged.
//!
//! ```toml
//! [s3]
//! endpoint = "http://10.1.0.5:3900"
//! region = "garage"
//! access-key-id = "GK31c2f2…"
//! secret-access-key-file = "/etc/sluice/s3.secret"
//! allow-http = true
//! ```

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, Checksum};
use object_store::path::Path as Key;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};

/// Where an `s3://` URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub bucket: String,
    /// Without a leading or trailing `/`; may be empty.
    pub prefix: String,
}

impl Target {
    /// `s3://BUCKET[/PREFIX]`, or `None` if `url` is not an `s3://` URL.
    pub fn parse(url: &str) -> Option<Result<Target, String>> {
        let rest = url.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/').to_string();
        if bucket.is_empty() {
            return Some(Err(format!(
                "{url}: no bucket (expected s3://BUCKET/PREFIX)"
            )));
        }
        // Trimmed of its outer slashes: an empty part can only be a `//` inside.
        let bad_prefix = !prefix.is_empty()
            && prefix
                .split('/')
                .any(|part| part.is_empty() || part == "." || part == "..");
        if bad_prefix {
            return Some(Err(format!(
                "{url}: the prefix has an empty, `.` or `..` part"
            )));
        }
        Some(Ok(Target {
            bucket: bucket.to_string(),
            prefix,
        }))
    }

    /// The key of the object at `path` (a checked object path) under the prefix: the path's
    /// own characters, not percent-encoded (a consumer lists the names the sender gave).
    pub fn key(&self, path: &str) -> Result<Key, String> {
        let key = if self.prefix.is_empty() {
            Key::parse(path)
        } else {
            Key::parse(format!("{}/{path}", self.prefix))
        };
        key.map_err(|e| e.to_string())
    }

    /// The prefix as a key (`None` for the whole bucket).
    pub fn prefix_key(&self) -> Option<Key> {
        // Parsed, not built: `Key::from` would percent-encode `[`, `%`, `#`… a second time.
        (!self.prefix.is_empty())
            .then(|| Key::parse(&self.prefix).ok())
            .flatten()
    }

    /// `s3://BUCKET/PREFIX`, for messages.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}

/// A config file's `[s3]` table: each setting given here wins over its AWS variable.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// The store's URL (`AWS_ENDPOINT_URL`); AWS itself when neither is set.
    pub endpoint: Option<String>,
    /// `AWS_REGION`.
    pub region: Option<String>,
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// A file holding the secret key (`AWS_SECRET_ACCESS_KEY`) alone, readable by its owner
    /// only.
    pub secret_access_key_file: Option<PathBuf>,
    /// Allow a plain-HTTP endpoint (`AWS_ALLOW_HTTP`).
    pub allow_http: Option<bool>,
}

impl Settings {
    /// The access key ID in effect, for messages (never the secret).
    pub fn key_id(&self) -> String {
        self.access_key_id
            .clone()
            .or_else(|| std::env::var("AWS_ACCESS_KEY_ID").ok())
            .unwrap_or_default()
    }
}

/// Reads the secret key from `path`: a regular file no one but its owner may read or write.
pub fn read_secret(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let file = std::fs::OpenOptions::new()
        .read(true)
        // Not through a symlink, and never waiting on a FIFO planted there.
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)
        .map_err(|e| format!("secret-access-key-file {shown}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("secret-access-key-file {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "secret-access-key-file {shown}: not a regular file"
        ));
    }
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(format!(
            "secret-access-key-file {shown}: owned by uid {}, not by this user (uid {euid})",
            meta.uid()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "secret-access-key-file {shown}: readable or writable by others (mode {:o}); \
             chmod 600 it",
            meta.mode() & 0o7777
        ));
    }
    let mut secret = String::new();
    file.take(4096)
        .read_to_string(&mut secret)
        .map_err(|e| format!("secret-access-key-file {shown}: {e}"))?;
    let secret = secret.trim().to_string();
    if secret.is_empty() || secret.contains(char::is_whitespace) {
        return Err(format!(
            "secret-access-key-file {shown}: expected the secret key alone"
        ));
    }
    Ok(secret)
}

/// Retries each request with backoff (100 ms doubling to 15 s) for up to `retry_for`.
pub fn retry(retry_for: Duration) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        },
        max_retries: usize::MAX,
        retry_timeout: retry_for,
    }
}

/// A client of `target`'s bucket with `settings` over the AWS variables. Uploads carry their
/// SHA-256 (`x-amz-checksum-sha256`), which a store that knows it checks and keeps.
pub fn client(
    target: &Target,
    settings: &Settings,
    retry: RetryConfig,
) -> Result<AmazonS3, String> {
    builder(target, settings, retry)?
        .build()
        .map_err(|e| format!("{}: {e}", target.url()))
}

/// [`client`]'s builder, for a caller that also needs the settings in effect (the sender's
/// listing reads the endpoint and region from it).
pub fn builder(
    target: &Target,
    settings: &Settings,
    retry: RetryConfig,
) -> Result<AmazonS3Builder, String> {
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&target.bucket)
        .with_checksum_algorithm(Checksum::SHA256)
        .with_retry(retry);
    if let Some(endpoint) = &settings.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &settings.region {
        builder = builder.with_region(region);
    }
    if let Some(key_id) = &settings.access_key_id {
        builder = builder.with_access_key_id(key_id);
    }
    if let Some(file) = &settings.secret_access_key_file {
        builder = builder.with_secret_access_key(read_secret(file)?);
    }
    if let Some(allow) = settings.allow_http {
        builder = builder.with_allow_http(allow);
    }
    Ok(builder)
}

/// Checks at start that the bucket answers and the key may list it, naming what is wrong in
/// one line: the endpoint, the key, or the bucket.
pub async fn probe(target: &Target, settings: &Settings) -> Result<(), String> {
    let url = target.url();
    let store = client(target, settings, retry(Duration::from_secs(10)))?;
    // One page of one key: a prefix holding millions of objects is not listed at start.
    let first = store.list(target.prefix_key().as_ref()).next().await;
    match first {
        None | Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(format!(
            "{url}: {} ({e})",
            diagnose(&e.to_string(), target, settings)
        )),
    }
}

/// What a failed request's text says is wrong, in words an operator acts on.
pub fn diagnose(text: &str, target: &Target, settings: &Settings) -> String {
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    // Status codes as the client prints them ("status: 404"), never a bare number: the
    // endpoint's port is in the text too.
    if has(&["NoSuchBucket", "status: 404"]) {
        format!("bucket {} not found", target.bucket)
    } else if has(&[
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "status: 403",
        "Forbidden",
    ]) {
        format!("access denied for key {}", settings.key_id())
    } else if has(&[
        "error sending request",
        "connect",
        "Connection refused",
        "dns",
    ]) {
        "endpoint unreachable (AWS_ENDPOINT_URL or [s3] endpoint)".to_string()
    } else {
        "the store refused".to_string()
    }
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
        assert_eq!(bare.prefix_key(), None);
    }

    #[test]
    fn the_secret_file_must_be_its_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s3.secret");
        std::fs::write(&path, "abc123\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = read_secret(&path).unwrap_err();
        assert!(
            err.contains("chmod 600") && !err.contains("abc123"),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret(&path).unwrap(), "abc123");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(read_secret(&link).is_err());
        std::fs::write(&path, "two words").unwrap();
        assert!(read_secret(&path).unwrap_err().contains("alone"));
        // A FIFO planted there is refused, never waited on.
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        assert!(read_secret(&fifo)
            .unwrap_err()
            .contains("not a regular file"));
        // Root reads any file: one another user owns is refused all the same.
        if rustix::process::geteuid().is_root() {
            std::fs::write(&path, "abc123").unwrap();
            std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
            assert!(read_secret(&path)
                .unwrap_err()
                .contains("owned by uid 65534"));
        }
    }

    #[test]
    fn a_config_table_is_checked_field_by_field() {
        let table: Settings = toml::from_str(
            "endpoint = \"http://127.0.0.1:3900\"\nallow-http = true\nregion = \"garage\"",
        )
        .unwrap();
        assert_eq!(table.endpoint.as_deref(), Some("http://127.0.0.1:3900"));
        assert_eq!(table.allow_http, Some(true));
        // The secret itself is never a setting.
        assert!(toml::from_str::<Settings>("secret-access-key = \"x\"").is_err());
    }
}
