//! Finds (building once if needed) and drives the real `sluice-send` and `sluice-recv`
//! binaries: key generation, spawning with captured stderr, bounded waits, readiness probes.
//!
//! The binaries are looked up in the profile directory of the running executable
//! (`target/<profile>/deps/<test>` or `target/<profile>/<bin>`), so `cargo test` uses debug
//! daemons and `cargo run --release --bin sluice-demo` release ones. The first lookup runs
//! `cargo build -p sluice-sender -p sluice-receiver` (cargo makes it a no-op when up to date) so
//! a test never runs stale daemons; set `SLUICE_TEST_NO_BUILD=1` to skip that.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Paths of the two daemons and the tools.
#[derive(Debug)]
pub struct Binaries {
    /// `sluice-send`.
    pub send: PathBuf,
    /// `sluice-recv`.
    pub recv: PathBuf,
    /// `sluice-approve`.
    pub approve: PathBuf,
    /// `sluice-audit`.
    pub audit: PathBuf,
    /// `sluice-inspect`.
    pub inspect: PathBuf,
}

/// The daemons of the current profile, built on first use.
pub fn binaries() -> &'static Binaries {
    static BINS: OnceLock<Binaries> = OnceLock::new();
    BINS.get_or_init(|| {
        let dir = profile_dir();
        if std::env::var_os("SLUICE_TEST_NO_BUILD").is_none() || !dir.join("sluice-send").exists() {
            build(&dir);
        }
        let bins = Binaries {
            send: dir.join("sluice-send"),
            recv: dir.join("sluice-recv"),
            approve: dir.join("sluice-approve"),
            audit: dir.join("sluice-audit"),
            inspect: dir.join("sluice-inspect"),
        };
        assert!(
            bins.send.exists(),
            "{} missing after build",
            bins.send.display()
        );
        assert!(
            bins.recv.exists(),
            "{} missing after build",
            bins.recv.display()
        );
        bins
    })
}

/// `target/<profile>` of the running executable.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe has a parent").to_path_buf();
    if dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
    {
        dir.pop();
    }
    dir
}

fn build(dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // The checkout this run was started from (`cargo run` and `cargo test` say so at run
    // time); the path compiled in is only a fallback — a copied or moved checkout must not
    // build and run the daemons of the original one.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    let workspace = manifest_dir.parent().expect("tests/ has a parent");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace).args([
        "build",
        "-p",
        "sluice-sender",
        "-p",
        "sluice-receiver",
        "-p",
        "sluice-common",
    ]);
    if dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    if let Some(target) = dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    let status = cmd.status().expect("running cargo build");
    assert!(
        status.success(),
        "cargo build of the daemons failed: {status}"
    );
}

/// Key files made by the two `keygen` subcommands.
#[derive(Clone, Debug)]
pub struct Keys {
    /// Receiver's age identity.
    pub receiver_key: PathBuf,
    /// Receiver's age recipient.
    pub receiver_pub: PathBuf,
    /// Sender's minisign secret key.
    pub sender_key: PathBuf,
    /// Sender's minisign public key.
    pub sender_pub: PathBuf,
    /// Shared frame-authentication key.
    pub link_key: PathBuf,
}

impl Keys {
    /// The raw 32-byte link secret, for a relay that forges frames on purpose.
    pub fn link_secret(&self) -> [u8; 32] {
        let bytes = std::fs::read(&self.link_key).expect("reading link.key");
        parse_link_key(&bytes).expect("link.key holds 32 bytes (raw, hex or base64)")
    }
}

/// Reads a link key file: 32 raw bytes, or 64 hex digits (surrounding whitespace ignored).
pub fn parse_link_key(bytes: &[u8]) -> Option<[u8; 32]> {
    if let Ok(raw) = <[u8; 32]>::try_from(bytes) {
        return Some(raw);
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    let hex = text
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit()))?;
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

/// Runs both keygens into `dir/recv` and `dir/send`.
pub fn keygen(dir: &Path) -> Keys {
    let bins = binaries();
    let (recv, send) = (dir.join("recv"), dir.join("send"));
    for (bin, sub) in [(&bins.recv, &recv), (&bins.send, &send)] {
        let out = Command::new(bin)
            .arg("keygen")
            .arg(sub)
            .output()
            .expect("running keygen");
        assert!(
            out.status.success(),
            "{} keygen {} failed: {}\n{}",
            bin.display(),
            sub.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let keys = Keys {
        receiver_key: recv.join("receiver.key"),
        receiver_pub: recv.join("receiver.pub"),
        sender_key: send.join("sender.key"),
        sender_pub: send.join("sender.pub"),
        link_key: send.join("link.key"),
    };
    for p in [
        &keys.receiver_key,
        &keys.receiver_pub,
        &keys.sender_key,
        &keys.sender_pub,
        &keys.link_key,
    ] {
        assert!(p.exists(), "keygen did not write {}", p.display());
    }
    keys
}

/// `sluice-recv` with link, identity, trust, link key, output and state set.
pub fn receiver_cmd(link: &str, keys: &Keys, out: &Path, state: &Path) -> Command {
    receiving(Command::new(&binaries().recv), link, keys, out, state)
}

/// `sluice-recv release` with the receiver's link, keys, output and state set; add the
/// policy, the reason and the path.
pub fn release_cmd(link: &str, keys: &Keys, out: &Path, state: &Path) -> Command {
    let mut cmd = Command::new(&binaries().recv);
    cmd.arg("release");
    receiving(cmd, link, keys, out, state)
}

fn receiving(mut cmd: Command, link: &str, keys: &Keys, out: &Path, state: &Path) -> Command {
    cmd.arg("--link")
        .arg(link)
        .arg("--identity")
        .arg(&keys.receiver_key)
        .arg("--trust")
        .arg(&keys.sender_pub)
        .arg("--link-key")
        .arg(&keys.link_key)
        .arg("--out")
        .arg(out)
        .arg("--state")
        .arg(state);
    cmd
}

/// `sluice-send` with link, recipient, signing key and link key set; add options and paths.
pub fn sender_cmd(link: &str, keys: &Keys) -> Command {
    sending(Command::new(&binaries().send), link, keys)
}

/// `sluice-send watch` with link, recipient, signing key and link key set; add the rest.
pub fn watch_cmd(link: &str, keys: &Keys) -> Command {
    let mut cmd = Command::new(&binaries().send);
    cmd.arg("watch");
    sending(cmd, link, keys)
}

fn sending(mut cmd: Command, link: &str, keys: &Keys) -> Command {
    cmd.arg("--link")
        .arg(link)
        .arg("--recipient")
        .arg(&keys.receiver_pub)
        .arg("--sign-key")
        .arg(&keys.sender_key)
        .arg("--link-key")
        .arg(&keys.link_key);
    cmd
}

/// A child process whose stdout and stderr are collected (and echoed with a prefix when
/// `SLUICE_TEST_ECHO` is set). Killed on drop if still running.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    started: Instant,
    status: Option<ExitStatus>,
}

/// How a [`Proc`] ended.
#[derive(Debug)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stdout and stderr.
    pub log: String,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
}

impl Finished {
    /// Exit code (`-1` if killed by a signal).
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
}

impl Proc {
    /// Spawns `cmd` with piped output.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped());
        Self::spawn_logging_stderr(name, cmd)
    }

    /// Spawns `cmd` with its standard output going to `out` (a program that writes its data
    /// there); only standard error is collected as its log.
    pub fn spawn_to_file(name: &str, mut cmd: Command, out: std::fs::File) -> Proc {
        cmd.stdout(out);
        Self::spawn_logging_stderr(name, cmd)
    }

    fn spawn_logging_stderr(name: &str, mut cmd: Command) -> Proc {
        cmd.stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(collect(name, out, log.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(collect(name, err, log.clone()));
        }
        Proc {
            name: name.to_string(),
            child,
            log,
            readers,
            started,
            status: None,
        }
    }

    /// Process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory so far (`VmHWM`), in KiB; `None` once it has exited.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.id())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// Output so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.poll().is_none()
    }

    fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout`; `None` if still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Finished> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll() {
                let elapsed = self.started.elapsed();
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return Some(Finished {
                    status,
                    log: self.log(),
                    elapsed,
                });
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `timeout`, then kills it and panics with its output.
    pub fn finish(&mut self, timeout: Duration) -> Finished {
        match self.wait_timeout(timeout) {
            Some(f) => f,
            None => {
                self.kill();
                panic!(
                    "{} still running after {timeout:?}; output:\n{}",
                    self.name,
                    self.log()
                );
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if self.poll().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn collect(
    name: &str,
    stream: impl Read + Send + 'static,
    log: Arc<Mutex<String>>,
) -> JoinHandle<()> {
    let echo = std::env::var_os("SLUICE_TEST_ECHO").is_some();
    let name = name.to_string();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&line);
            if echo {
                eprint!("[{name}] {text}");
            }
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_str(&text);
            line.clear();
        }
    })
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("binding an ephemeral port");
    s.local_addr().expect("local addr").port()
}

/// The first of `count` consecutive UDP ports on 127.0.0.1 that were free a moment ago (a
/// link's port range).
pub fn free_udp_ports(count: usize) -> std::io::Result<u16> {
    let count = u16::try_from(count).unwrap_or(u16::MAX);
    (0..100)
        .map(|_| free_udp_port())
        .find(|first| {
            first.checked_add(count).is_some()
                && (0..count).all(|i| std::net::UdpSocket::bind(("127.0.0.1", first + i)).is_ok())
        })
        .ok_or_else(|| std::io::Error::other(format!("no {count} consecutive free UDP ports")))
}

/// Whether some socket is bound to UDP `port` (read from /proc, so probing takes no port).
pub fn udp_port_bound(port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    ["/proc/net/udp", "/proc/net/udp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().skip(1).any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|a| format!("{a} ").ends_with(&needle))
            })
        })
    })
}

/// Waits until `proc` has bound `addr`'s port; panics with its log if it exits or times out.
pub fn wait_bound(proc: &mut Proc, addr: SocketAddr, timeout: Duration) {
    wait_for(proc, timeout, "bind its UDP port", || {
        udp_port_bound(addr.port())
    });
}

/// Waits until `proc` holds `path` open (e.g. its serial device); panics like [`wait_bound`].
pub fn wait_open(proc: &mut Proc, path: &Path, timeout: Duration) {
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let fd_dir = PathBuf::from(format!("/proc/{}/fd", proc.id()));
    wait_for(proc, timeout, "open its serial device", || {
        std::fs::read_dir(&fd_dir).is_ok_and(|d| {
            d.filter_map(Result::ok)
                .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == target))
        })
    });
}

fn wait_for(proc: &mut Proc, timeout: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if !proc.running() {
            panic!(
                "{} exited before it could {what}:\n{}",
                proc.name,
                proc.log()
            );
        }
        if Instant::now() >= deadline {
            panic!(
                "{} did not {what} within {timeout:?}:\n{}",
                proc.name,
                proc.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last JSON object line in `log` that has key `key` at its top level or one level down.
pub fn json_summary(log: &str, key: &str) -> Option<serde_json::Value> {
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .find(|v| find_key(v, key).is_some())
}

/// Looks `key` up anywhere in `value` (depth first); numbers and strings alike.
pub fn find_key<'a>(value: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    match value {
        serde_json::Value::Object(map) => map
            .get(key)
            .or_else(|| map.values().find_map(|v| find_key(v, key))),
        serde_json::Value::Array(items) => items.iter().find_map(|v| find_key(v, key)),
        _ => None,
    }
}

/// `find_key` as an unsigned number (also accepts numeric strings).
pub fn find_u64(value: &serde_json::Value, key: &str) -> Option<u64> {
    let v = find_key(value, key)?;
    v.as_u64()
        .or_else(|| v.as_f64().map(|f| f as u64))
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_keys_parse_raw_and_hex() {
        let raw = [7u8; 32];
        assert_eq!(parse_link_key(&raw), Some(raw));
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_link_key(format!("{hex}\n").as_bytes()), Some(raw));
        assert_eq!(parse_link_key(b"short"), None);
    }

    #[test]
    fn bound_udp_ports_are_seen_in_proc() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        assert!(udp_port_bound(port));
        drop(s);
        assert!(!udp_port_bound(port));
    }

    #[test]
    fn json_summary_finds_nested_counters() {
        let log = "plain line\n{\"a\":1}\n{\"summary\":{\"dropped\":{\"bad_mac\":5}}}\ntrailer\n";
        let v = json_summary(log, "bad_mac").unwrap();
        assert_eq!(find_u64(&v, "bad_mac"), Some(5));
        assert!(json_summary(log, "bad_crc").is_none());
    }
}
