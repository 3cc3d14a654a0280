//! A real S3 server for the object-store tests: [Garage](https://garagehq.deuxfleurs.fr) on
//! 127.0.0.1, one node, its data and metadata in a temp dir, a bucket and a key made with its
//! own CLI. Garage is AGPL: it runs here as a separate test server, never linked. `./test.sh`
//! installs it (`cargo install garage`) when it is not on `PATH` or in `~/.cargo/bin`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::{Attribute, ObjectStore, ObjectStoreExt};

use crate::binaries::Proc;
use crate::scrape::free_tcp_addr;

/// A running single-node Garage with one bucket and one key allowed on it.
#[derive(Debug)]
pub struct Garage {
    /// Data, metadata, config (removed on drop).
    pub dir: tempfile::TempDir,
    server: Proc,
    binary: PathBuf,
    config: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub key_id: String,
    pub secret: String,
}

/// The `garage` binary: on `PATH`, or where `cargo install` puts it; `None` when there is none.
pub fn find_binary() -> Option<PathBuf> {
    let on_path = Command::new("sh")
        .args(["-c", "command -v garage"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let installed = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map(|home| home.join("bin/garage"))
        .filter(|p| p.exists());
    on_path.or(installed)
}

/// [`find_binary`], or the test fails naming the install command.
pub fn binary() -> PathBuf {
    find_binary().unwrap_or_else(|| {
        panic!(
            "this test needs Garage, a test S3 server: cargo install garage --locked \
             --no-default-features --features bundled-libs,lmdb (./test.sh installs it)"
        )
    })
}

impl Garage {
    /// Starts a node, gives it a layout, and makes bucket `bucket` and a key allowed on it.
    pub fn start(bucket: &str) -> Garage {
        let dir = tempfile::Builder::new()
            .prefix("sluice-garage-")
            .tempdir()
            .expect("temp dir");
        let binary = binary();
        let (s3, rpc, admin) = (free_tcp_addr(), free_tcp_addr(), free_tcp_addr());
        let secret: String = rand::random::<[u8; 32]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let config = dir.path().join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = {meta:?}\ndata_dir = {data:?}\ndb_engine = \"lmdb\"\n\
                 replication_factor = 1\nrpc_bind_addr = \"{rpc}\"\nrpc_public_addr = \"{rpc}\"\n\
                 rpc_secret = \"{secret}\"\n\n[s3_api]\ns3_region = \"garage\"\n\
                 api_bind_addr = \"{s3}\"\nroot_domain = \".s3.garage.localhost\"\n\n\
                 [admin]\napi_bind_addr = \"{admin}\"\n",
                meta = dir.path().join("meta").display().to_string(),
                data = dir.path().join("data").display().to_string(),
            ),
        )
        .expect("writing garage.toml");
        let mut cmd = Command::new(&binary);
        cmd.arg("-c").arg(&config).arg("server");
        let server = Proc::spawn("garage", cmd);
        let mut garage = Garage {
            dir,
            server,
            binary,
            config,
            endpoint: format!("http://{s3}"),
            region: "garage".into(),
            bucket: bucket.into(),
            key_id: String::new(),
            secret: String::new(),
        };
        let started = Instant::now();
        // `node id` reads the node's key from disk; `status` needs the server up.
        let node = loop {
            let out = garage
                .try_cli(&["status"])
                .and_then(|_| garage.try_cli(&["node", "id", "-q"]));
            if let Ok(id) = out {
                break id.trim().split('@').next().unwrap_or_default().to_string();
            }
            assert!(
                garage.server.running() && started.elapsed() < Duration::from_secs(30),
                "garage did not start: {out:?}\n{}",
                garage.server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        garage.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        garage.cli(&["layout", "apply", "--version", "1"]);
        let key = garage.cli(&["key", "create", "sluice-test"]);
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {name} in: {key}"))
        };
        garage.key_id = field("Key ID:");
        garage.secret = field("Secret key:");
        garage.cli(&["bucket", "create", bucket]);
        garage.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            bucket,
            "--key",
            "sluice-test",
        ]);
        garage
    }

    fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// Runs the `garage` CLI against this node; its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|e| panic!("garage {}: {e}", args.join(" ")))
    }

    /// The standard AWS variables for this node and key, set on `cmd`.
    pub fn env<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_REGION", &self.region)
            .env("AWS_ACCESS_KEY_ID", &self.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret)
            .env("AWS_ALLOW_HTTP", "true")
    }

    /// The bucket, as a client with this node's key sees it.
    pub fn bucket(&self) -> Bucket {
        Bucket {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            bucket: self.bucket.clone(),
            key_id: self.key_id.clone(),
            secret: self.secret.clone(),
        }
    }

    /// [`Bucket::sizes`] of this node's bucket.
    pub fn sizes(&self, prefix: &str) -> BTreeMap<String, u64> {
        self.bucket().sizes(prefix)
    }

    /// [`Bucket::objects`] of this node's bucket.
    pub fn objects(&self, prefix: &str) -> BTreeMap<String, Stored> {
        self.bucket().objects(prefix)
    }

    /// The server's process id (to measure what it costs).
    pub fn server_pid(&self) -> u32 {
        self.server.id()
    }

    /// Multipart uploads begun in the bucket and neither completed nor aborted (as
    /// `garage bucket info` counts them; the line is absent when there is none).
    pub fn unfinished_multipart_uploads(&self) -> u64 {
        let info = self.cli(&["bucket", "info", &self.bucket]);
        info.lines()
            .find_map(|line| line.trim().strip_prefix("Unfinished uploads:"))
            .map(|rest| {
                let count = rest.trim().split(' ').next().unwrap_or_default();
                count
                    .parse()
                    .unwrap_or_else(|_| panic!("no count in {rest:?} of:\n{info}"))
            })
            .unwrap_or(0)
    }

    /// Stops the server (its data stays until drop), as a store going down.
    pub fn stop(&mut self) {
        self.server.kill();
    }

    /// Starts the server again on the same data and ports.
    pub fn restart(&mut self) {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-c").arg(&self.config).arg("server");
        self.server = Proc::spawn("garage", cmd);
        let started = Instant::now();
        while self.try_cli(&["bucket", "list"]).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "garage did not come back:\n{}",
                self.server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A client's view of the test bucket (usable from any thread).
#[derive(Debug, Clone)]
pub struct Bucket {
    endpoint: String,
    region: String,
    bucket: String,
    key_id: String,
    secret: String,
}

impl Bucket {
    /// A client of the bucket with this node's key.
    fn client(&self) -> (tokio::runtime::Runtime, AmazonS3) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let store = AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_region(&self.region)
            .with_access_key_id(&self.key_id)
            .with_secret_access_key(&self.secret)
            .with_allow_http(true)
            .with_bucket_name(&self.bucket)
            .build()
            .expect("an S3 client");
        (runtime, store)
    }

    /// The size of every object listed under `prefix` (a `LIST`, as a consumer would see it).
    pub fn sizes(&self, prefix: &str) -> BTreeMap<String, u64> {
        let (runtime, store) = self.client();
        let prefix = object_store::path::Path::from(prefix);
        runtime
            .block_on(store.list(Some(&prefix)).try_collect::<Vec<_>>())
            .expect("listing the bucket")
            .into_iter()
            .map(|meta| (decoded(meta.location.as_ref()), meta.size))
            .collect()
    }

    /// Every object under `prefix`: its bytes and its user metadata.
    pub fn objects(&self, prefix: &str) -> BTreeMap<String, Stored> {
        let (runtime, store) = self.client();
        let mut found = BTreeMap::new();
        for key in self.sizes(prefix).into_keys() {
            let path = object_store::path::Path::parse(&key).expect("a key as listed");
            let stored = runtime.block_on(async {
                let got = store.get(&path).await.expect("getting an object");
                let metadata = got
                    .attributes
                    .iter()
                    .filter_map(|(k, v)| match k {
                        Attribute::Metadata(name) => Some((name.to_string(), v.to_string())),
                        _ => None,
                    })
                    .collect();
                let bytes = got.bytes().await.expect("reading an object").to_vec();
                Stored { bytes, metadata }
            });
            found.insert(key, stored);
        }
        found
    }
}

/// A listed key as stored: `object_store` percent-encodes the characters it would not put in
/// a path (non-ASCII among them) when it parses a listing.
fn decoded(listed: &str) -> String {
    let bytes = listed.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).expect("UTF-8 keys")
}

/// One object as stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub bytes: Vec<u8>,
    /// User metadata (`x-amz-meta-*`), by name.
    pub metadata: BTreeMap<String, String>,
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.server.kill();
    }
}
