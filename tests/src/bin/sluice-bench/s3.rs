//! The `s3-1g` case: the receiver's S3 sink (`--out s3://BUCKET/PREFIX`) beside its directory
//! sink. Each run sends the same 1 GiB file twice, into a directory and then into a real
//! Garage on 127.0.0.1 (`sluice_tests::garage`, a fresh node per run), and the table pairs
//! the two.
//!
//! The S3 transfer is timed from the sender's start to the object being listed whole in the
//! bucket (a `LIST` every [`POLL`], as a consumer would see it). The receiver uploads a file
//! only once all of it is verified, so the upload adds to the end-to-end time; the directory
//! sink's rename does not.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{Attribute, ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use sluice_tests::garage::{self, Garage};

use crate::{json_value, run_case_into, Args, Case, Out, Run};

pub const BUCKET: &str = "sluice-bench";
pub const PREFIX: &str = "landing";
/// How often the bucket is listed while the transfer runs: the S3 time's resolution.
const POLL: Duration = Duration::from_millis(50);
const INSTALL: &str = "cargo install garage --version 2.5.0 --locked \
                       --no-default-features --features bundled-libs,lmdb";

/// Runs the case `args.runs` times, each run a directory-sink transfer and an S3-sink one.
pub fn run_pairs(case: &Case, args: &Args) -> Result<()> {
    if garage::find_binary().is_none() {
        bail!(
            "{}: needs Garage, a test S3 server, on PATH or in ~/.cargo/bin: {INSTALL}",
            case.name
        );
    }
    let mut pairs = Vec::new();
    for i in 0..args.runs.max(1) {
        let seed = i as u64 + 1;
        let context = |sink: &str| format!("case {} run {} ({sink} sink)", case.name, i + 1);
        let dir = run_case_into(case, seed, args.tuning(), &Out::Dir)
            .with_context(|| context("directory"))?;
        println!("{}", with_sink(case, i + 1, &dir, "dir"));
        let node = Garage::start(BUCKET);
        let s3 = run_case_into(case, seed, args.tuning(), &Out::S3(&node))
            .with_context(|| context("S3"))?;
        drop(node);
        println!("{}", with_sink(case, i + 1, &s3, "s3"));
        pairs.push((dir, s3));
    }
    if !args.json {
        print_pairs(case, args, &pairs);
    }
    Ok(())
}

fn with_sink(case: &Case, run: usize, r: &Run, sink: &str) -> String {
    let mut line = json_value(case, run, r);
    line["sink"] = sink.into();
    line.to_string()
}

fn print_pairs(case: &Case, args: &Args, pairs: &[(Run, Run)]) {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| {} run | dir MB/s | S3 MB/s | S3 / dir | dir s | S3 s | S3 − dir s | recv CPU s/GB dir / S3 | Garage CPU s/GB | recv RSS MiB dir / S3 | intact dir / S3 |",
        case.name
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---|");
    let mut ratios = Vec::new();
    for (i, (dir, s3)) in pairs.iter().enumerate() {
        // A pair counts only when both files arrived intact.
        let ratio = if dir.intact && s3.intact {
            let r = s3.goodput_mb_s / dir.goodput_mb_s.max(1e-9);
            ratios.push((r, dir.goodput_mb_s, s3.goodput_mb_s));
            format!("{r:.2}")
        } else {
            "–".to_string()
        };
        let _ = writeln!(
            out,
            "| {} | {:.1} | {:.1} | {ratio} | {:.2} | {:.2} | {:.2} | {:.2} / {:.2} | {:.2} | {:.0} / {:.0} | {} / {} |",
            i + 1,
            dir.goodput_mb_s,
            s3.goodput_mb_s,
            dir.seconds,
            s3.seconds,
            s3.seconds - dir.seconds,
            dir.recv_cpu_s_per_gb,
            s3.recv_cpu_s_per_gb,
            s3.store_cpu_s_per_gb,
            dir.recv_peak_rss_mib,
            s3.recv_peak_rss_mib,
            if dir.intact { "yes" } else { "NO" },
            if s3.intact { "yes" } else { "NO" },
        );
    }
    // The pair with the median ratio, so the figures quoted together come from one run.
    ratios.sort_by(|a, b| a.0.total_cmp(&b.0));
    let median = match ratios.get(ratios.len() / 2) {
        None => "– (no pair where both files arrived intact)".to_string(),
        Some((r, dir, s3)) => format!("{r:.2} (S3 {s3:.1} MB/s, dir {dir:.1} MB/s)"),
    };
    let _ = writeln!(
        out,
        "
median S3 / dir goodput ratio over {} intact pair(s): {median}
sender at --rate {}, repair 0 %, MTU 1500; dir: sender start → the receiver's last 'delivered' line; \
S3: sender start → the object listed whole in the bucket (a LIST every {} ms). The receiver \
uploads after verifying the whole file, so the upload adds to the S3 time (S3 − dir s). Garage \
runs on the same machine, its CPU beside the receiver's (same 1 GiB).",
        ratios.len(),
        args.rate,
        POLL.as_millis()
    );
    println!("\n{out}");
}

/// A client of a Garage node's bucket, with a runtime of its own.
pub struct Store {
    runtime: tokio::runtime::Runtime,
    store: AmazonS3,
}

impl Store {
    pub fn new(node: &Garage) -> Result<Store> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let store = AmazonS3Builder::new()
            .with_endpoint(&node.endpoint)
            .with_region(&node.region)
            .with_access_key_id(&node.key_id)
            .with_secret_access_key(&node.secret)
            .with_allow_http(true)
            .with_bucket_name(&node.bucket)
            .build()?;
        Ok(Store { runtime, store })
    }

    /// Size of every object listed under `prefix`.
    fn sizes(&self, prefix: &str) -> Result<BTreeMap<String, u64>> {
        let prefix = Key::from(prefix);
        let listed = self
            .runtime
            .block_on(self.store.list(Some(&prefix)).try_collect::<Vec<_>>())?;
        Ok(listed
            .into_iter()
            .map(|meta| (meta.location.to_string(), meta.size))
            .collect())
    }

    /// Whether `key` holds `size` bytes whose SHA-256 is `sha256`, both as streamed back and
    /// as its `sluice-sha256` metadata says; why not, if not. Read as a stream: the object is
    /// never all in memory.
    pub fn check(&self, key: &str, size: u64, sha256: &[u8; 32]) -> Result<(), String> {
        let want = hex(sha256);
        self.runtime.block_on(async {
            let got = self
                .store
                .get(&Key::from(key))
                .await
                .map_err(|e| format!("{key}: {e}"))?;
            let recorded = got.attributes.iter().find_map(|(k, v)| match k {
                Attribute::Metadata(name) if name == "sluice-sha256" => Some(v.to_string()),
                _ => None,
            });
            if recorded.as_deref() != Some(want.as_str()) {
                return Err(format!(
                    "{key}: sluice-sha256 is {recorded:?}, the source's is {want}"
                ));
            }
            let mut body = got.into_stream();
            let mut hasher = Sha256::new();
            let mut read = 0u64;
            while let Some(chunk) = body.try_next().await.map_err(|e| format!("{key}: {e}"))? {
                hasher.update(&chunk);
                read += chunk.len() as u64;
            }
            let streamed = hex(&hasher.finalize());
            if read != size || streamed != want {
                return Err(format!(
                    "{key}: {read} bytes with SHA-256 {streamed}, the source has {size} with {want}"
                ));
            }
            Ok(())
        })
    }
}

/// The key the receiver gives `file` (sent by itself, so named by its file name).
pub fn key_of(file: &Path) -> Result<String> {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .context("the payload has no UTF-8 file name")?;
    Ok(format!("{PREFIX}/{name}"))
}

/// A thread listing the bucket until `key` is there with all its bytes.
pub struct Lister {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<Option<SystemTime>>>,
}

impl Lister {
    pub fn start(node: &Garage, key: String, size: u64) -> Result<Lister> {
        let store = Store::new(node)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                if store.sizes(PREFIX)?.get(&key) == Some(&size) {
                    return Ok(Some(SystemTime::now()));
                }
                std::thread::sleep(POLL);
            }
            Ok(None)
        });
        Ok(Lister { stop, thread })
    }

    /// When the object was first listed whole; `None` if it never was.
    pub fn listed(self) -> Result<Option<SystemTime>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the bucket lister panicked"))?
            .context("listing the bucket")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
