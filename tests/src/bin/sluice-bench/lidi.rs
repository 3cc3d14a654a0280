//! The comparison peer: lidi (ANSSI's open-source Rust diode, GPL-3.0; RaptorQ, no encryption
//! or authentication), run on the same file over loopback UDP, tuned as its documentation
//! says (`--batch 512`, two encode and decode threads). It is never vendored: build it from
//! its public source in a scratch directory and point `SLUICE_BENCH_LIDI` at the directory
//! holding `diode-oneshot-send` and `diode-oneshot-receive` (docs/PERFORMANCE.md).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sluice_tests::binaries::{self, Proc};

use crate::usage;

/// Environment variable naming the directory of the lidi binaries.
pub const ENV: &str = "SLUICE_BENCH_LIDI";

/// Datagrams per `sendmmsg`/`recvmmsg` and RaptorQ threads per side, as lidi's docs tune it.
pub const BATCH: &str = "512";
const THREADS: &str = "2";

/// Socket buffer limit lidi's documentation asks for (its receiver warns below ≈97 MB and
/// loses blocks when unpaced); Sluice's receiver asks for 64 MiB.
const DEEP_BUFFERS: u64 = 128 << 20;

/// Raises `net.core.{r,w}mem_max` to [`DEEP_BUFFERS`] for the comparison and puts the old
/// values back when dropped. Needs root; without it the limits stay and a line says so.
pub struct DeepBuffers {
    restore: Vec<(&'static str, String)>,
}

impl DeepBuffers {
    pub fn raise() -> DeepBuffers {
        let mut restore = Vec::new();
        for knob in ["/proc/sys/net/core/rmem_max", "/proc/sys/net/core/wmem_max"] {
            let Ok(old) = std::fs::read_to_string(knob) else {
                continue;
            };
            if old.trim().parse::<u64>().is_ok_and(|v| v >= DEEP_BUFFERS) {
                continue;
            }
            match std::fs::write(knob, DEEP_BUFFERS.to_string()) {
                Ok(()) => restore.push((knob, old)),
                Err(e) => println!(
                    "note: {knob} stays at {} ({e}): lidi may lose blocks unpaced",
                    old.trim()
                ),
            }
        }
        DeepBuffers { restore }
    }
}

impl Drop for DeepBuffers {
    fn drop(&mut self) {
        for (knob, old) in &self.restore {
            let _ = std::fs::write(knob, old.trim());
        }
    }
}

/// A lidi build.
#[derive(Debug)]
pub struct Lidi {
    send: PathBuf,
    receive: PathBuf,
}

/// One lidi transfer.
#[derive(Debug, Clone, Default)]
pub struct PeerRun {
    pub seconds: f64,
    pub goodput_mb_s: f64,
    pub send_cpu_s_per_gb: f64,
    pub recv_cpu_s_per_gb: f64,
    pub send_peak_rss_mib: f64,
    pub recv_peak_rss_mib: f64,
    pub intact: bool,
}

impl Lidi {
    /// The build `SLUICE_BENCH_LIDI` points at; `Ok(None)` when it is not set.
    pub fn from_env() -> Result<Option<Lidi>> {
        let Some(dir) = std::env::var_os(ENV) else {
            return Ok(None);
        };
        let dir = PathBuf::from(dir);
        let lidi = Lidi {
            send: dir.join("diode-oneshot-send"),
            receive: dir.join("diode-oneshot-receive"),
        };
        for bin in [&lidi.send, &lidi.receive] {
            if !bin.is_file() {
                bail!("{ENV}={}: no {}", dir.display(), bin.display());
            }
        }
        Ok(Some(lidi))
    }

    /// Sends `file` through lidi over loopback at `mtu` with `repair_percent` of repair data,
    /// unpaced (lidi has no pacing), and checks what arrives.
    pub fn run(&self, file: &Path, mtu: u32, repair_percent: u32, out: &Path) -> Result<PeerRun> {
        let bytes = std::fs::metadata(file)?.len();
        let port = binaries::free_udp_port();
        let (mtu, repair) = (mtu.to_string(), repair_percent.to_string());
        let mut recv_cmd = Command::new(&self.receive);
        recv_cmd
            .args(["--from", &format!("127.0.0.1:{port}"), "--from-mtu", &mtu])
            .args([
                "--batch",
                BATCH,
                "--decode-threads",
                THREADS,
                "--repair",
                &repair,
            ])
            .args(["--log-level", "Warn"]);
        let mut recv = Proc::spawn_to_file(
            "diode-oneshot-receive",
            recv_cmd,
            std::fs::File::create(out)?,
        );
        binaries::wait_bound(
            &mut recv,
            ([127, 0, 0, 1], port).into(),
            Duration::from_secs(20),
        );
        let mut send_cmd = Command::new(&self.send);
        send_cmd
            .args(["--to", &format!("127.0.0.1:{port}"), "--to-mtu", &mtu])
            .args([
                "--batch",
                BATCH,
                "--encode-threads",
                THREADS,
                "--repair",
                &repair,
            ])
            .args(["--log-level", "Warn"])
            .stdin(Stdio::from(std::fs::File::open(file)?));
        let started = Instant::now();
        let mut send = Proc::spawn("diode-oneshot-send", send_cmd);
        // lidi's receiver exits at the end of the stream; its sender does not exit on its own
        // (2.1.1), so the run ends with the receiver and the sender is stopped then. A receiver
        // that lost data and never exits is stopped after 10 minutes: not intact.
        let watched = usage::watch(
            &mut [&mut send, &mut recv],
            Some(1),
            Duration::from_secs(600),
        );
        let seconds = started.elapsed().as_secs_f64();
        let usage = match watched {
            Ok(usage) => usage,
            Err(e) => {
                eprintln!("lidi: {e:#}; stopping it");
                vec![usage::Usage::default(); 2]
            }
        };
        send.kill();
        recv.kill();
        let sent = send.finish(Duration::from_secs(1));
        let got = recv.finish(Duration::from_secs(1));
        let intact = got.code() == 0 && files_equal(file, out)?;
        if !intact {
            eprintln!(
                "lidi: the output differs (receiver exit {}, sender exit {})\n{}{}",
                got.code(),
                sent.code(),
                recv.log(),
                send.log()
            );
        }
        let gb = bytes as f64 / 1e9;
        let ticks = usage::clock_ticks_per_second();
        Ok(PeerRun {
            seconds,
            goodput_mb_s: bytes as f64 / 1e6 / seconds,
            send_cpu_s_per_gb: usage[0].cpu_ticks as f64 / ticks / gb,
            recv_cpu_s_per_gb: usage[1].cpu_ticks as f64 / ticks / gb,
            send_peak_rss_mib: usage[0].peak_rss_kib as f64 / 1024.0,
            recv_peak_rss_mib: usage[1].peak_rss_kib as f64 / 1024.0,
            intact,
        })
    }
}

/// Whether two files hold the same bytes (SHA-256 of each).
fn files_equal(a: &Path, b: &Path) -> Result<bool> {
    use sha2::{Digest, Sha256};
    let hash = |p: &Path| -> Result<[u8; 32]> {
        let mut file = std::fs::File::open(p).with_context(|| p.display().to_string())?;
        let mut sha = Sha256::new();
        std::io::copy(&mut file, &mut sha)?;
        Ok(sha.finalize().into())
    };
    Ok(hash(a)? == hash(b)?)
}
