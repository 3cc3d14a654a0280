//! The real `sluice-send` binary against a UDP socket this test binds: everything it puts on
//! the wire must be accepted by the protocol's assembler, decode, decrypt with the receiver's
//! age key, carry a manifest signed by the sender key, and reproduce the file exactly. A
//! second pass must carry only repair symbols the first pass did not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sluice_common::{envelope, keys};
use sluice_protocol::fec::ReedSolomon;
use sluice_protocol::manifest::{EntryKind, Manifest, SignedManifest};
use sluice_protocol::rx::{Assembler, Event, RxConfig};
use sluice_protocol::time::Instant;
use sluice_protocol::wire::{self, BlockKey, BlockKind, Header};

struct Capture {
    frames: Vec<Vec<u8>>,
}

fn send(dir: &Path, extra: &[&str], paths: &[&Path]) -> (Capture, std::process::Output) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let port = sock.local_addr().unwrap().port();
    let reader = std::thread::spawn(move || {
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = sock.recv(&mut buf) {
            frames.push(buf[..n].to_vec());
        }
        frames
    });
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-send"))
        .arg("--link")
        .arg(format!("udp://127.0.0.1:{port}"))
        .arg("--recipient")
        .arg(dir.join("receiver.pub"))
        .arg("--sign-key")
        .arg(dir.join("sender.key"))
        .arg("--link-key")
        .arg(dir.join("link.key"))
        .args(["--rate", "20MB", "--log-format", "json"])
        .args(extra)
        .args(paths)
        .output()
        .unwrap();
    let frames = reader.join().unwrap();
    (Capture { frames }, out)
}

fn keys_in(dir: &Path) {
    keys::generate_receiver_keys(dir).unwrap();
    keys::generate_sender_keys(dir).unwrap();
}

fn decrypt(identity: &age::x25519::Identity, ciphertext: &[u8]) -> Vec<u8> {
    let decryptor = age::Decryptor::new(ciphertext).unwrap();
    let mut reader = decryptor
        .decrypt(std::iter::once(identity as &dyn age::Identity))
        .unwrap();
    let mut plain = Vec::new();
    reader.read_to_end(&mut plain).unwrap();
    plain
}

/// Runs the captured frames through the assembler; returns every decoded block.
fn assemble(dir: &Path, frames: &[Vec<u8>]) -> BTreeMap<BlockKey, Vec<u8>> {
    let key = keys::load_link_key(&dir.join("link.key")).unwrap();
    let mut asm = Assembler::new(RxConfig::default(), key);
    let mut codec = ReedSolomon::new();
    let mut blocks = BTreeMap::new();
    let now = Instant::from_micros(1);
    for f in frames {
        asm.handle_frame(now, f);
        while let Some(event) = asm.poll_event() {
            if let Event::BlockReady(k) = event {
                let ready = asm.take_ready(&k).unwrap();
                blocks.insert(k, ready.decode(&mut codec).unwrap());
            }
        }
    }
    assert_eq!(
        asm.drops().total(),
        asm.drops()
            .get(sluice_protocol::counters::DropReason::BlockDone)
    );
    blocks
}

#[test]
fn a_file_round_trips_through_the_protocol_and_keys() {
    let tmp = tempfile::tempdir().unwrap();
    keys_in(tmp.path());
    let file = tmp.path().join("data.bin");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &content).unwrap();

    let (capture, out) = send(tmp.path(), &["--segment-size", "64KiB"], &[&file]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("\"frames_sent\""), "{log}");

    let blocks = assemble(tmp.path(), &capture.frames);
    let identity = &keys::load_identities(&tmp.path().join("receiver.key")).unwrap()[0];
    let trust = keys::TrustedKeys::load(&[tmp.path().join("sender.pub")]).unwrap();
    let (mkey, mblock) = blocks
        .iter()
        .find(|(k, _)| k.kind == BlockKind::Manifest)
        .expect("a manifest block");
    let envelope = SignedManifest::from_bytes(&decrypt(identity, mblock)).unwrap();
    trust
        .verify(&envelope.manifest, &envelope.signature)
        .unwrap();
    let manifest = Manifest::from_bytes(&envelope.manifest).unwrap();
    assert_eq!(
        (manifest.session, manifest.object),
        (mkey.session, mkey.object)
    );
    let [entry] = manifest.entries.as_slice() else {
        panic!("one entry: {manifest:?}");
    };
    assert_eq!(entry.path, "data.bin");
    assert_eq!(entry.kind, EntryKind::File);
    assert_eq!(entry.size, content.len() as u64);
    assert_eq!(manifest.segments.len(), 5);
    assert_eq!(entry.sha256, <[u8; 32]>::from(Sha256::digest(&content)));
    assert!(envelope.inline.is_empty());

    let mut rebuilt = Vec::new();
    for (i, seg) in manifest.segments.iter().enumerate() {
        let key = BlockKey {
            kind: BlockKind::Data,
            index: i as u32,
            ..*mkey
        };
        let ciphertext = &blocks[&key];
        // Each segment is bound to the signed manifest by its age header's MAC.
        assert_eq!(envelope::header_mac(ciphertext), Some(seg.header_mac));
        assert_eq!(ciphertext.len(), seg.ciphertext_len as usize);
        rebuilt.extend(decrypt(identity, ciphertext));
    }
    assert_eq!(rebuilt, content);
}

/// Keys and a tree `tree/{empty dir/, one (1 byte), zero (empty)}` in a temporary directory.
fn small_tree() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    keys_in(tmp.path());
    let root = tmp.path().join("tree");
    std::fs::create_dir_all(root.join("empty dir")).unwrap();
    std::fs::write(root.join("one"), b"1").unwrap();
    std::fs::write(root.join("zero"), b"").unwrap();
    (tmp, root)
}

#[test]
fn trees_send_directories_first_and_a_second_pass_sends_fresh_repair() {
    let (tmp, root) = small_tree();

    let (capture, out) = send(
        tmp.path(),
        &["--passes", "2", "--repair", "10%", "--pack-under", "0"],
        &[&root],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = keys::load_link_key(&tmp.path().join("link.key")).unwrap();
    // Symbol ids per block in the order they were sent, split at the pass boundary: the
    // first time a symbol of pass 2 appears, its id is a repair id beyond pass 1's.
    let mut ids: BTreeMap<BlockKey, Vec<u16>> = BTreeMap::new();
    for f in &capture.frames {
        if let Ok(frame) = wire::parse_frame(f, &key) {
            if let Header::Symbol(s) = frame.header {
                ids.entry(s.block).or_default().push(s.symbol);
            }
        }
    }
    assert_eq!(
        ids.len(),
        4 + 1,
        "4 manifests and 1 data block (\"one\"; \"zero\" has none)"
    );
    for (block, sent) in &ids {
        let distinct: BTreeSet<u16> = sent.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            sent.len(),
            "{block:?} repeated a symbol: {sent:?}"
        );
    }

    let blocks = assemble(tmp.path(), &capture.frames);
    let identity = &keys::load_identities(&tmp.path().join("receiver.key")).unwrap()[0];
    let mut paths = Vec::new();
    for (k, data) in &blocks {
        if k.kind == BlockKind::Manifest {
            let envelope = SignedManifest::from_bytes(&decrypt(identity, data)).unwrap();
            let m = Manifest::from_bytes(&envelope.manifest).unwrap();
            let [entry] = m.entries.as_slice() else {
                panic!("unpacked objects have one entry: {m:?}");
            };
            paths.push((k.object.0, entry.path.clone(), entry.kind));
        }
    }
    paths.sort_by_key(|(object, _, _)| *object);
    let names: Vec<(&str, EntryKind)> = paths.iter().map(|(_, p, k)| (p.as_str(), *k)).collect();
    assert_eq!(
        names,
        [
            ("tree", EntryKind::Directory),
            ("tree/empty dir", EntryKind::Directory),
            ("tree/one", EntryKind::File),
            ("tree/zero", EntryKind::File),
        ]
    );
}

#[test]
fn small_files_and_directories_go_in_one_pack_by_default() {
    let (tmp, root) = small_tree();
    let (capture, out) = send(tmp.path(), &[], &[&root]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blocks = assemble(tmp.path(), &capture.frames);
    assert_eq!(blocks.len(), 1, "one manifest block carries the whole tree");
    let identity = &keys::load_identities(&tmp.path().join("receiver.key")).unwrap()[0];
    let (_, data) = blocks.iter().next().unwrap();
    let envelope = SignedManifest::from_bytes(&decrypt(identity, data)).unwrap();
    let m = Manifest::from_bytes(&envelope.manifest).unwrap();
    let entries: Vec<(&str, EntryKind, u64)> = m
        .entries
        .iter()
        .map(|e| (e.path.as_str(), e.kind, e.size))
        .collect();
    assert_eq!(
        entries,
        [
            ("tree", EntryKind::Directory, 0),
            ("tree/empty dir", EntryKind::Directory, 0),
            ("tree/one", EntryKind::File, 1),
            ("tree/zero", EntryKind::File, 0),
        ]
    );
    assert_eq!(envelope.inline, b"1");
    assert!(m.segments.is_empty());
}

#[test]
fn bad_keys_and_options_exit_2_naming_the_option() {
    let tmp = tempfile::tempdir().unwrap();
    keys_in(tmp.path());
    let file = tmp.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    std::fs::write(tmp.path().join("bad.pub"), b"not a key\n").unwrap();
    let (_, out) = send(
        tmp.path(),
        &["--recipient", tmp.path().join("bad.pub").to_str().unwrap()],
        &[&file],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--recipient"));
    let (_, out) = send(tmp.path(), &["--rate", "quick"], &[&file]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rate"));
}
