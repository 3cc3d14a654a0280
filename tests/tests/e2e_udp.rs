//! End to end over UDP loopback with the real daemons: a tree with nested directories, unicode
//! and space-containing names, an empty file, empty directories, a 1-byte file, segment-edge
//! files and a 64 MiB file arrives byte-identical, with modes and mtimes; sending it again
//! writes nothing twice.

// Test helpers panic on failure by design, like the tests that call them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use sluice_tests::binaries::free_udp_port;
use sluice_tests::harness::{assert_exit, assert_logged, Setup, Summary};
use sluice_tests::tree::{self, Check, TreeSpec};

#[test]
fn tree_with_big_file_arrives_identical_with_modes_and_mtimes() {
    let s = Setup::new();
    let root = s.src.join("dataset");
    tree::make_tree(
        &root,
        TreeSpec {
            big_bytes: 64 << 20,
            segment_edges: true,
            small_scale: 1,
            seed: 42,
        },
    )
    .unwrap();
    let port = free_udp_port();
    let mut recv = s.receiver(port, 4, &[]);
    let sent = s.send(
        ([127, 0, 0, 1], port).into(),
        &["--rate", "40MB"],
        &[&root],
        Duration::from_secs(120),
    );
    assert_exit(&sent, 0, "sluice-send");
    let got = recv.finish(Duration::from_secs(60));
    assert_exit(&got, 0, "sluice-recv");

    // A directory argument arrives as a directory of the same name, and nothing else does.
    let names: Vec<_> = std::fs::read_dir(&s.out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["dataset"], "--out holds {names:?}");
    let entries = tree::compare(&root, &s.out.join("dataset"), Check::ALL)
        .unwrap_or_else(|d| panic!("trees differ:\n{d}\nreceiver log:\n{}", got.log));
    assert!(entries >= 15, "only {entries} entries compared");
    // The top directory's own mode and mtime travel too.
    let (a, b) = (
        std::fs::metadata(&root).unwrap(),
        std::fs::metadata(s.out.join("dataset")).unwrap(),
    );
    assert_eq!(
        (a.mode() & 0o7777, a.mtime(), a.mtime_nsec()),
        (b.mode() & 0o7777, b.mtime(), b.mtime_nsec())
    );

    let files = tree::count_files(&root);
    if let Some(summary) = Summary::find(&got.log, "bad_crc") {
        assert_eq!(summary.get("bad_crc"), 0, "no line damage on loopback");
        assert_eq!(summary.get("bad_mac"), 0);
    }
    assert!(files >= 11);
}

#[test]
fn sending_the_same_files_again_does_not_rewrite_them() {
    let s = Setup::new();
    let a = s.src.join("alpha.bin");
    let b = s.src.join("beta notes.txt");
    tree::write_random_file(&a, 300_000, 1).unwrap();
    tree::write_random_file(&b, 5_000, 2).unwrap();
    let port = free_udp_port();
    let to = ([127, 0, 0, 1], port).into();
    let paths: [&Path; 2] = [&a, &b];

    let mut recv = s.receiver(port, 4, &[]);
    assert_exit(
        &s.send(to, &[], &paths, Duration::from_secs(60)),
        0,
        "first sluice-send",
    );
    assert_exit(
        &recv.finish(Duration::from_secs(60)),
        0,
        "first sluice-recv",
    );
    assert_eq!(tree::compare(&s.src, &s.out, Check::ALL), Ok(2));
    let inode = |p: &Path| std::fs::metadata(p).unwrap().ino();
    let before = (
        inode(&s.out.join("alpha.bin")),
        inode(&s.out.join("beta notes.txt")),
    );

    // A new sender run (new session) of identical content: recognised, not written again.
    let mut recv = s.receiver(port, 4, &[]);
    assert_exit(
        &s.send(to, &[], &paths, Duration::from_secs(60)),
        0,
        "second sluice-send",
    );
    let got = recv.finish(Duration::from_secs(60));
    assert_exit(&got, 0, "second sluice-recv");
    assert_logged(&got.log, "already delivered");
    let after = (
        inode(&s.out.join("alpha.bin")),
        inode(&s.out.join("beta notes.txt")),
    );
    assert_eq!(before, after, "files were replaced");
    assert_eq!(tree::compare(&s.src, &s.out, Check::ALL), Ok(2));
}
