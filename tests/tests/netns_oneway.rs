//! A real kernel one-way path: sender and receiver each in a network namespace of their own,
//! joined by a veth pair whose return direction is cut three ways (iptables OUTPUT DROP on the
//! receiver side, INPUT DROP on the sender side, ARP off and IPv6 disabled so nothing below
//! IP leaks back either). The transfer must still complete, and the receiver's interface must
//! have transmitted zero packets: the protocol needs no packet back.
//!
//! ```text
//!   netns slc<id>s                                 netns slc<id>r
//!   sluice-send ── vs<id> 10.231.N.1/30 ═══════ vr<id> 10.231.N.2/30 ── sluice-recv
//!                  INPUT DROP          ◀── ✗ ───  OUTPUT DROP, arp off
//! ```
//!
//! Needs root, iproute2 (`ip netns`) and iptables: ignored by a plain `cargo test`, run by
//! `./test.sh`, and failing (never half-running) when any of them is missing. Everything it
//! creates is removed by a drop guard, also when the test fails.

// Test helpers panic on failure by design, like the tests that call them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};
use std::time::Duration;

use sluice_tests::binaries::{self, Proc};
use sluice_tests::harness::{assert_exit, Setup};
use sluice_tests::require;
use sluice_tests::tree::{self, Check, TreeSpec};

/// The two namespaces; deleting a namespace also deletes its veth end and its iptables rules.
struct Netns {
    send: String,
    recv: String,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.send, &self.recv] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn in_ns(ns: &str, args: &[&str]) -> Output {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    run(&all)
}

fn counter(ns: &str, dev: &str, stat: &str) -> u64 {
    let path = format!("/sys/class/net/{dev}/statistics/{stat}");
    let out = in_ns(ns, &["cat", &path]);
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Creates the namespaces and the cut veth pair; fails the test, saying why, if impossible.
fn one_way_pair(id: u32) -> (Netns, String, String, String) {
    require::root("it creates network namespaces and iptables rules");
    require::tool("ip", "iproute2");
    require::tool("iptables", "iptables");
    let guard = Netns {
        send: format!("slc{id}s"),
        recv: format!("slc{id}r"),
    };
    let probe = Command::new("ip")
        .args(["netns", "add", &guard.send])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "`ip netns add` failed: {probe:?}"
    );
    run(&["ip", "netns", "add", &guard.recv]);
    let (vs, vr) = (format!("vs{id}"), format!("vr{id}"));
    let net = id % 250;
    let (addr_s, addr_r) = (format!("10.231.{net}.1"), format!("10.231.{net}.2"));
    let mac_r = format!("02:53:4c:{:02x}:{:02x}:02", net, (id >> 8) & 0xff);
    for ns in [&guard.send, &guard.recv] {
        for key in ["all", "default"] {
            in_ns(
                ns,
                &[
                    "sysctl",
                    "-qw",
                    &format!("net.ipv6.conf.{key}.disable_ipv6=1"),
                ],
            );
        }
    }
    run(&[
        "ip",
        "link",
        "add",
        &vs,
        "netns",
        &guard.send,
        "type",
        "veth",
        "peer",
        "name",
        &vr,
        "address",
        &mac_r,
        "netns",
        &guard.recv,
    ]);
    run(&[
        "ip",
        "-n",
        &guard.send,
        "addr",
        "add",
        &format!("{addr_s}/30"),
        "dev",
        &vs,
    ]);
    run(&[
        "ip",
        "-n",
        &guard.recv,
        "addr",
        "add",
        &format!("{addr_r}/30"),
        "dev",
        &vr,
    ]);
    // The receiver never answers ARP; the sender knows its MAC statically.
    run(&["ip", "-n", &guard.recv, "link", "set", &vr, "arp", "off"]);
    run(&[
        "ip",
        "-n",
        &guard.send,
        "neigh",
        "replace",
        &addr_r,
        "lladdr",
        &mac_r,
        "dev",
        &vs,
        "nud",
        "permanent",
    ]);
    in_ns(&guard.recv, &["iptables", "-P", "OUTPUT", "DROP"]);
    in_ns(&guard.send, &["iptables", "-P", "INPUT", "DROP"]);
    for (ns, dev) in [(&guard.send, &vs), (&guard.recv, &vr)] {
        run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        run(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }
    (guard, vs, vr, addr_r)
}

#[test]
#[ignore = "needs root, iproute2 and iptables: network namespaces (./test.sh runs it)"]
fn transfer_completes_with_the_return_path_cut() {
    let id = std::process::id() % 100_000;
    let (ns, vs, vr, addr_r) = one_way_pair(id);
    let s = Setup::new();
    let root = s.src.join("oneway");
    tree::make_tree(
        &root,
        TreeSpec {
            big_bytes: 8 << 20,
            segment_edges: false,
            small_scale: 1,
            seed: 99,
        },
    )
    .unwrap();
    let bins = binaries::binaries();
    let link = format!("udp://{addr_r}:9000");

    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.recv]).arg(&bins.recv);
    cmd.args([
        "--link",
        "udp://0.0.0.0:9000",
        "--exit-after-idle",
        "4",
        "--log-format",
        "json",
    ])
    .arg("--identity")
    .arg(&s.keys.receiver_key)
    .arg("--trust")
    .arg(&s.keys.sender_pub)
    .arg("--link-key")
    .arg(&s.keys.link_key)
    .arg("--out")
    .arg(&s.out)
    .arg("--state")
    .arg(&s.state);
    let mut recv = Proc::spawn("sluice-recv", cmd);
    // The port is bound inside the namespace: wait on the namespace's own socket table.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = in_ns(&ns.recv, &["cat", "/proc/net/udp"]);
        if String::from_utf8_lossy(&out.stdout).contains(":2328 ") {
            break;
        }
        assert!(recv.running(), "receiver exited:\n{}", recv.log());
        assert!(
            std::time::Instant::now() < deadline,
            "receiver never bound:\n{}",
            recv.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.send]).arg(&bins.send);
    cmd.args(["--link", &link, "--rate", "20MB", "--log-format", "json"])
        .arg("--recipient")
        .arg(&s.keys.receiver_pub)
        .arg("--sign-key")
        .arg(&s.keys.sender_key)
        .arg("--link-key")
        .arg(&s.keys.link_key)
        .arg(&root);
    let sent = Proc::spawn("sluice-send", cmd).finish(Duration::from_secs(120));
    assert_exit(&sent, 0, "sluice-send");
    let got = recv.finish(Duration::from_secs(60));
    assert_exit(&got, 0, "sluice-recv");
    tree::compare(&root, &s.out.join("oneway"), Check::ALL)
        .unwrap_or_else(|d| panic!("trees differ:\n{d}\nreceiver log:\n{}", got.log));

    // Traffic flowed one way only: at least the tree's bytes arrived (packet counts say little:
    // UDP segmentation offload crosses the veth as a few large packets), and not one packet
    // went back.
    let forward = counter(&ns.recv, &vr, "rx_bytes");
    let payload = tree::total_bytes(&root);
    assert!(
        forward > payload,
        "only {forward} bytes reached the receiver for {payload} bytes of files"
    );
    assert_eq!(
        counter(&ns.recv, &vr, "tx_packets"),
        0,
        "the receiver side transmitted"
    );
    assert_eq!(
        counter(&ns.send, &vs, "rx_packets"),
        0,
        "the sender side received"
    );
}
