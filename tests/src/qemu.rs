//! The firmware protocol break running in QEMU (`mps2-an385`): its low-side UART0 and
//! high-side UART1 are TCP servers on loopback, which tests connect to directly or bridge to
//! pseudo-terminals with socat for the daemons' `serial://` links.
//!
//! ```text
//!   test / socat ──tcp──▶ UART0 ─ relay firmware ─ UART1 ──tcp──▶ test / socat
//! ```

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::binaries::Proc;

/// Where `firmware/build-board.sh` leaves the image.
pub fn board_image() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../firmware/board/target/thumbv7m-none-eabi/release/sluice-relay-board")
}

/// Fails the test unless QEMU is installed; the board image is built by [`QemuRelay::start`].
pub fn require() {
    crate::require::tool("qemu-system-arm", "qemu-system-arm");
}

/// Why the emulated relay cannot run here (for tools that report instead of failing).
pub fn missing() -> Option<&'static str> {
    let qemu = Command::new("qemu-system-arm")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    (!qemu).then_some("qemu-system-arm is not installed (apt-get install qemu-system-arm)")
}

/// A running emulated relay.
#[derive(Debug)]
pub struct QemuRelay {
    /// The QEMU process (killed on drop).
    pub proc: Proc,
    /// UART0, the low side.
    pub low: SocketAddr,
    /// UART1, the high side.
    pub high: SocketAddr,
}

fn free_tcp_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding an ephemeral port");
    l.local_addr().expect("local addr").port()
}

impl QemuRelay {
    /// Boots the image (building it first if needed) with both UARTs on loopback TCP servers;
    /// returns once both listen.
    pub fn start() -> QemuRelay {
        let image = crate::require::board_image();
        let (low_port, high_port) = (free_tcp_port(), free_tcp_port());
        let mut cmd = Command::new("qemu-system-arm");
        cmd.args(["-M", "mps2-an385", "-display", "none", "-monitor", "none"])
            .arg("-serial")
            .arg(format!("tcp:127.0.0.1:{low_port},server=on,wait=off"))
            .arg("-serial")
            .arg(format!("tcp:127.0.0.1:{high_port},server=on,wait=off"))
            .arg("-kernel")
            .arg(image);
        let mut proc = Proc::spawn("qemu", cmd);
        let low: SocketAddr = ([127, 0, 0, 1], low_port).into();
        let high: SocketAddr = ([127, 0, 0, 1], high_port).into();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(listening(low_port) && listening(high_port)) {
            assert!(proc.running(), "qemu exited:\n{}", proc.log());
            assert!(
                Instant::now() < deadline,
                "qemu never listened:\n{}",
                proc.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        QemuRelay { proc, low, high }
    }

    /// Connects to a UART's TCP server.
    pub fn connect(addr: SocketAddr) -> TcpStream {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpStream::connect(addr) {
                Ok(s) => return s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("connecting to {addr}: {e}"),
            }
        }
    }

    /// Bridges a UART to a pseudo-terminal at `link` with socat; returns the socat process
    /// once the pty exists.
    pub fn bridge(addr: SocketAddr, link: &Path) -> Proc {
        let mut cmd = Command::new("socat");
        cmd.arg(format!("pty,raw,echo=0,link={}", link.display()))
            .arg(format!("tcp:{addr}"));
        let mut proc = Proc::spawn("socat", cmd);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !link.exists() {
            assert!(proc.running(), "socat exited:\n{}", proc.log());
            assert!(
                Instant::now() < deadline,
                "socat made no pty:\n{}",
                proc.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        proc
    }
}

/// Whether a TCP socket listens on `port` (read from /proc, so probing connects nothing).
fn listening(port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().skip(1).any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|a| format!("{a} ").ends_with(&needle))
                    && l.split_whitespace().nth(3) == Some("0A")
            })
        })
    })
}
