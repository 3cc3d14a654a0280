//! Hostile zips and tars, built here byte by byte (issue 25, findings 4 and 5): polyglots (a
//! pickle that is also a zip), zips with bytes before or after them, overlapping entries (one
//! compressed member behind hundreds of entries), archives that expand far beyond their real
//! size, and a file whose inspection takes longer than the policy allows. Each is refused
//! with its stable reason; the benign shapes next to them pass.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Cursor, Write};
use std::time::Instant;

use sluice_inspect::policy::Policy;
use sluice_inspect::Refusal;

/// A plain PyTorch state dict's data.pkl (what it imports, simplified).
const TENSOR: &[u8] =
    b"\x80\x02ccollections\nOrderedDict\n)Rctorch._utils\n_rebuild_tensor_v2\n)R.";
/// A pickle whose `__reduce__` calls `os.system("id")`.
const EVIL: &[u8] = b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00id\x85R.";
/// `pickle.dumps({'a': 1}, protocol=2)`: complete and harmless.
const HARMLESS: &[u8] = b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01K\x01s.";

fn policy(extra: &str) -> Policy {
    Policy::parse(&format!("quarantine = \"q\"\n{extra}")).unwrap()
}

/// What the gate says of `bytes` named `name`: the formats that checked it, or the refusal.
fn gate(p: &Policy, bytes: &[u8], name: &str) -> Result<Vec<&'static str>, String> {
    p.inspect_all(&mut Cursor::new(bytes.to_vec()), name, bytes.len() as u64)
        .map_err(|e| e.to_string())
}

/// A zip of `members` (name, bytes, stored or deflated), written by the zip crate.
fn zip_of(members: &[(&str, &[u8], bool)]) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    for (name, bytes, deflate) in members {
        let method = if *deflate {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        zip.start_file(*name, options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
    out.into_inner()
}

/// A PyTorch-style checkpoint whose data.pkl is `pickle`.
fn checkpoint(pickle: &[u8]) -> Vec<u8> {
    zip_of(&[
        ("archive/data.pkl", pickle, false),
        ("archive/data/0", &[7u8; 4096], false),
        ("archive/version", b"3\n", false),
    ])
}

/// A ustar archive of regular files.
fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, bytes) in members {
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        header[100..107].copy_from_slice(b"0000644");
        header[124..135].copy_from_slice(format!("{:011o}", bytes.len()).as_bytes());
        header[136..147].copy_from_slice(b"00000000000");
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
        header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(bytes);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    // The end-of-archive blocks, and GNU tar's padding to 10 KiB records.
    out.resize((out.len() + 1024).div_ceil(10240) * 10240, 0);
    out
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// The parts of a one-member zip: local header with data, its central entry, and the
/// central directory's offset.
fn one_member(zip: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let end = zip.windows(4).rposition(|w| w == b"PK\x05\x06").unwrap();
    let (size, offset) = (le32(zip, end + 12) as usize, le32(zip, end + 16) as usize);
    (zip[..offset].to_vec(), zip[offset..offset + size].to_vec())
}

/// An end record for `entries` entries, a directory of `size` bytes at `offset`.
fn end_record(entries: u16, size: usize, offset: usize) -> Vec<u8> {
    let mut e = b"PK\x05\x06\0\0\0\0".to_vec();
    e.extend_from_slice(&entries.to_le_bytes());
    e.extend_from_slice(&entries.to_le_bytes());
    e.extend_from_slice(&(size as u32).to_le_bytes());
    e.extend_from_slice(&(offset as u32).to_le_bytes());
    e.extend_from_slice(&[0, 0]);
    e
}

/// A zip of `entries` central entries that all point at the one member of `zip` (its name
/// of 9 bytes, `p0000.pkl`, numbered in each entry): the overlapping-entries bomb.
fn overlapping(zip: &[u8], entries: u16) -> Vec<u8> {
    let (local, central) = one_member(zip);
    let mut directory = Vec::new();
    for i in 0..entries {
        let mut entry = central.clone();
        entry[46..55].copy_from_slice(format!("p{i:04}.pkl").as_bytes());
        directory.extend_from_slice(&entry);
    }
    let mut out = local.clone();
    out.extend_from_slice(&directory);
    out.extend(end_record(entries, directory.len(), local.len()));
    out
}

/// A pickle of `ops` cheap opcodes (push a small int, pop it) that deflate compresses only
/// about threefold, so no single entry looks like a bomb.
fn cheap_pickle(ops: usize) -> Vec<u8> {
    let mut p = b"\x80\x02".to_vec();
    let mut x: u32 = 0x2545_f491;
    for _ in 0..ops {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p.extend_from_slice(&[b'K', x as u8, b'0']);
    }
    p.extend_from_slice(b"N.");
    p
}

#[test]
fn a_pickle_that_is_also_a_zip_is_inspected_as_both_and_refused() {
    let p = policy("");
    // Each alone: the pickle passes, the checkpoint with os.system is refused.
    assert_eq!(gate(&p, HARMLESS, "model.pt").unwrap(), ["pickle"]);
    let evil = checkpoint(EVIL);
    assert!(gate(&p, &evil, "model.pt")
        .unwrap_err()
        .contains("model.pt!archive/data.pkl: pickle imports posix.system"));
    // The polyglot (finding 4): pickle.load reads the harmless pickle, zipfile (which finds
    // a zip by its end record) the checkpoint. Offsets counted from the zip's own start, as
    // when the bytes are concatenated...
    let mut glued = HARMLESS.to_vec();
    glued.extend_from_slice(&evil);
    let prefix = HARMLESS.len();
    let refusal = format!(
        "archive refused: model.pt: a zip that does not start at byte 0 ({prefix} bytes before it: a prefixed or polyglot file)"
    );
    assert_eq!(gate(&p, &glued, "model.pt").unwrap_err(), refusal);
    // ...or from the file's start, as Python's zipfile writes when it appends to a file.
    let mut appended = Cursor::new(HARMLESS.to_vec());
    appended.set_position(prefix as u64);
    {
        let mut zip = zip::ZipWriter::new(&mut appended);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", options).unwrap();
        zip.write_all(EVIL).unwrap();
        zip.finish().unwrap();
    }
    let appended = appended.into_inner();
    assert_eq!(&appended[..prefix], HARMLESS);
    assert_eq!(gate(&p, &appended, "model.pt").unwrap_err(), refusal);
    // Ambiguous, so refused whatever the zip holds: a harmless checkpoint behind the pickle
    // too (torch.load and numpy.load would read the pickle, zipfile the archive).
    let mut benign = HARMLESS.to_vec();
    benign.extend_from_slice(&checkpoint(TENSOR));
    assert_eq!(gate(&p, &benign, "model.pt").unwrap_err(), refusal);
    // Whatever the first bytes: a NumPy header, a safetensors header, text.
    let mut numpy = b"\x93NUMPY\x01\x00\x76\x00".to_vec();
    let header = format!(
        "{:<117}\n",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (0,), }"
    );
    numpy.extend_from_slice(header.as_bytes());
    for head in [&numpy[..], b"#!/usr/bin/env python3\n", b"plain notes\n"] {
        let mut file = head.to_vec();
        file.extend_from_slice(&evil);
        let err = gate(&p, &file, "x.bin").unwrap_err();
        assert!(
            err.contains(": a zip that does not start at byte 0"),
            "{err}"
        );
    }
}

#[test]
fn a_polyglot_inside_an_archive_is_refused_naming_the_member() {
    let p = policy("");
    let mut polyglot = HARMLESS.to_vec();
    polyglot.extend_from_slice(&checkpoint(EVIL));
    // Stored in a zip (inspected in place), deflated (read once as a stream, its end kept),
    // and in a tar (a stream too).
    let stored = zip_of(&[("inner.pt", &polyglot, false)]);
    let deflated = zip_of(&[("inner.pt", &polyglot, true)]);
    let tar = tar_of(&[("inner.pt", &polyglot)]);
    for (bytes, name) in [(stored, "a.zip"), (deflated, "b.zip"), (tar, "c.tar")] {
        assert_eq!(
            gate(&p, &bytes, name).unwrap_err(),
            format!(
                "archive refused: {name}!inner.pt: a zip that does not start at byte 0 ({} bytes before it: a prefixed or polyglot file)",
                HARMLESS.len()
            )
        );
    }
}

#[test]
fn a_pickle_that_is_also_a_tar_is_inspected_as_both() {
    let p = policy("");
    // `K*.` is a complete pickle of protocol 1 (the integer 42) and a plain file name: as the
    // first member's name it starts a tar that pickle.load reads too. Both are inspected.
    let both = tar_of(&[("K*.", TENSOR)]);
    assert_eq!(gate(&p, &both, "both.bin").unwrap(), ["pickle", "tar"]);
    let evil = tar_of(&[("K*.", EVIL)]);
    assert_eq!(
        gate(&p, &evil, "both.bin").unwrap_err(),
        "archive refused: both.bin!K*.: pickle imports posix.system (not on the allow-list)"
    );
}

#[test]
fn a_zip_with_bytes_before_or_after_it_is_refused() {
    let p = policy("");
    let zip = checkpoint(TENSOR);
    assert_eq!(gate(&p, &zip, "model.pt").unwrap(), ["zip"]);
    // A self-extractor's stub, or any other prefix.
    let mut prefixed = b"MZ\x90\x00 stub".to_vec();
    prefixed.extend_from_slice(&zip);
    assert_eq!(
        gate(&p, &prefixed, "model.pt").unwrap_err(),
        "archive refused: model.pt: a zip that does not start at byte 0 (9 bytes before it: a prefixed or polyglot file)"
    );
    // Bytes after the end record (zipfile and the zip crate read past them).
    let mut appended = zip.clone();
    appended.extend_from_slice(&[0x5a; 1000]);
    assert_eq!(
        gate(&p, &appended, "model.pt").unwrap_err(),
        "archive refused: model.pt: 1000 bytes after the zip's end record (appended data)"
    );
    // Bytes between two members that no member holds (what a streaming reader would see).
    let two = zip_of(&[("a.txt", b"hello", false), ("b.txt", b"world", false)]);
    let end = two.windows(4).rposition(|w| w == b"PK\x05\x06").unwrap();
    let directory = le32(&two, end + 16) as usize;
    let b_local = two.windows(4).rposition(|w| w == b"PK\x03\x04").unwrap();
    let mut gap = two[..b_local].to_vec();
    gap.extend_from_slice(b"hidden");
    gap.extend_from_slice(&two[b_local..directory]);
    let mut central = two[directory..end].to_vec();
    // b.txt's central entry is the second: its local header offset moves by 6.
    let b_entry = central
        .windows(4)
        .rposition(|w| w == b"PK\x01\x02")
        .unwrap();
    let moved = le32(&central, b_entry + 42) + 6;
    central[b_entry + 42..b_entry + 46].copy_from_slice(&moved.to_le_bytes());
    gap.extend_from_slice(&central);
    gap.extend(end_record(2, central.len(), directory + 6));
    assert_eq!(
        gate(&p, &gap, "g.zip").unwrap_err(),
        "archive refused: g.zip!b.txt: 6 bytes before it that no member holds"
    );
}

#[test]
fn a_name_twice_and_local_headers_that_disagree_are_refused() {
    let p = policy("");
    // Two entries named alike: the zip crate keeps one of them, zipfile reads the last.
    let two = zip_of(&[("a.pkl", TENSOR, false), ("b.pkl", EVIL, false)]);
    let mut renamed = two.clone();
    let at = renamed.windows(5).rposition(|w| w == b"b.pkl").unwrap();
    renamed[at..at + 5].copy_from_slice(b"a.pkl");
    let local = renamed.windows(5).position(|w| w == b"b.pkl").unwrap();
    renamed[local..local + 5].copy_from_slice(b"a.pkl");
    assert_eq!(
        gate(&p, &renamed, "d.zip").unwrap_err(),
        "archive refused: d.zip!a.pkl: a member name twice"
    );
    // A local header that names another file than its central entry.
    let mut lying = two.clone();
    let local = lying.windows(5).position(|w| w == b"b.pkl").unwrap();
    lying[local..local + 5].copy_from_slice(b"c.pkl");
    assert_eq!(
        gate(&p, &lying, "l.zip").unwrap_err(),
        "archive refused: l.zip!b.pkl: its local header names another file (c.pkl)"
    );
}

#[test]
fn overlapping_entries_are_refused_before_anything_is_inflated() {
    let p = policy("");
    // Finding 5: one deflated pickle of 4 MiB of cheap opcodes, behind 300 entries — 1.2 GiB
    // of pickle to scan from a file of about 1.6 MB (each entry's ratio is modest).
    let pickle = cheap_pickle((4 << 20) / 3);
    let zip = zip_of(&[("p0000.pkl", &pickle, true)]);
    let ratio = pickle.len() / zip.len();
    assert!((2..200).contains(&ratio), "ratio {ratio}");
    let bomb = overlapping(&zip, 300);
    let started = Instant::now();
    let refusal = gate(&p, &bomb, "bomb.zip").unwrap_err();
    eprintln!(
        "overlapping entries: {} bytes refused in {:?}",
        bomb.len(),
        started.elapsed()
    );
    assert_eq!(
        refusal,
        "archive refused: bomb.zip!p0001.pkl: overlaps p0000.pkl (entries that share their data: a bomb that grows with the entries)"
    );
    // The uninspected variant: data no inspector claims, behind entries enough to expand
    // past any budget. Refused by its layout as well.
    let zeros = zip_of(&[("p0000.pkl", &[0u8; 1 << 20], true)]);
    assert!(gate(&p, &overlapping(&zeros, 5000), "z.zip")
        .unwrap_err()
        .contains("z.zip!p0001.pkl: overlaps p0000.pkl"));
    // The same member once is fine.
    assert_eq!(gate(&p, &overlapping(&zip, 1), "one.zip").unwrap(), ["zip"]);
}

#[test]
fn members_expanding_far_beyond_the_archive_s_real_size_are_refused() {
    let p = policy("");
    // 100 separate members of 1 MiB of zeros: none is a bomb by itself (at most 1 MiB each),
    // but together they expand 100 MiB from about 100 KiB: past 200 times the real size
    // (at least 64 MiB). The budget is the file's size, not what its directory declares.
    let zeros = vec![0u8; 1 << 20];
    let names: Vec<String> = (0..100).map(|i| format!("z{i:03}.bin")).collect();
    let members: Vec<(&str, &[u8], bool)> = names
        .iter()
        .map(|n| (n.as_str(), &zeros[..], true))
        .collect();
    let zip = zip_of(&members);
    assert!(zip.len() < 1 << 20, "{} bytes", zip.len());
    let err = gate(&p, &zip, "many.zip").unwrap_err();
    assert!(
        err.starts_with("archive refused: many.zip!z064.bin: members expand beyond 67108864 bytes (200 times the file's"),
        "{err}"
    );
    // Half as many fit.
    let half = zip_of(&members[..50]);
    assert_eq!(gate(&p, &half, "half.zip").unwrap(), ["zip"]);
}

#[test]
fn an_inspection_that_takes_longer_than_the_policy_allows_is_refused() {
    // A 16 MiB pickle of the densest opcodes scans in tens of milliseconds at best: with a
    // budget of 1 ms, the clock refuses it, naming what was being read.
    let quick = policy("inspect_timeout = \"1ms\"\n");
    let dense = cheap_pickle((16 << 20) / 3);
    assert_eq!(
        gate(&quick, &dense, "big.pkl").unwrap_err(),
        "inspection took longer than 0.001 s (in big.pkl)"
    );
    // Inside an archive, the member is named.
    let zip = zip_of(&[("archive/data.pkl", &dense, true)]);
    assert_eq!(
        gate(&quick, &zip, "m.pt").unwrap_err(),
        "inspection took longer than 0.001 s (in m.pt!archive/data.pkl)"
    );
    // The refusal is its own kind, and the default limit passes the same files.
    let err = quick
        .inspect(
            &mut Cursor::new(dense.clone()),
            "big.pkl",
            dense.len() as u64,
        )
        .unwrap_err();
    assert!(matches!(err, Refusal::TooSlow { .. }), "{err:?}");
    assert_eq!(gate(&policy(""), &zip, "m.pt").unwrap(), ["zip"]);
    assert!(
        Policy::parse("quarantine = \"q\"\ninspect_timeout = \"0s\"\n")
            .unwrap_err()
            .contains("inspect_timeout")
    );
}

#[test]
fn benign_shapes_still_pass() {
    let p = policy("");
    // A tar whose last member is a checkpoint: zipfile reads the tar as that zip (a prefix,
    // the tar's end after it), which is the member the tar inspection looked into.
    let bundle = tar_of(&[("notes.txt", b"run 7"), ("model.pt", &checkpoint(TENSOR))]);
    assert_eq!(gate(&p, &bundle, "bundle.tar").unwrap(), ["tar", "zip"]);
    let evil_bundle = tar_of(&[("model.pt", &checkpoint(EVIL))]);
    assert!(gate(&p, &evil_bundle, "bundle.tar")
        .unwrap_err()
        .contains("bundle.tar!model.pt!archive/data.pkl: pickle imports posix.system"));
    // A zip in a zip, stored (inspected in place) and deflated (held in memory).
    let ckpt = checkpoint(TENSOR);
    for deflate in [false, true] {
        let outer = zip_of(&[("model.pt", &ckpt, deflate), ("readme.txt", b"hi", deflate)]);
        assert_eq!(gate(&p, &outer, "outer.zip").unwrap(), ["zip"]);
    }
    // An empty zip, a plain pickle, text.
    assert_eq!(gate(&p, &zip_of(&[]), "e.zip").unwrap(), ["zip"]);
    assert_eq!(gate(&p, TENSOR, "w.pkl").unwrap(), ["pickle"]);
    assert!(gate(&p, b"a,b\n1,2\n", "t.csv").unwrap().is_empty());
}

/// CRC-32 (IEEE), bit by bit.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// A zip laid out as PyTorch's writer (miniz, `MZ_ZIP_FLAG_WRITE_ZIP64`) lays out a
/// checkpoint: stored members, each local header with zero sizes, the data-descriptor flag
/// and an extra field padding its data to 64 bytes; a signed data descriptor after each
/// member; a ZIP64 end record and locator before the end record, whose own fields are not
/// saturated.
fn pytorch_like(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in members {
        let offset = out.len() as u32;
        let crc = crc32(data);
        let mut pad = (64 - (out.len() + 30 + name.len() + 4) % 64) % 64;
        if pad == 0 {
            pad = 64;
        }
        let mut local = b"PK\x03\x04\x2d\x00\x08\x08\x00\x00\x00\x00\x00\x00".to_vec();
        local.extend_from_slice(&[0; 12]); // CRC and sizes: in the descriptor
        local.extend_from_slice(&(name.len() as u16).to_le_bytes());
        local.extend_from_slice(&((pad + 4) as u16).to_le_bytes());
        local.extend_from_slice(name.as_bytes());
        local.extend_from_slice(b"FB");
        local.extend_from_slice(&(pad as u16).to_le_bytes());
        local.resize(local.len() + pad, b'Z');
        out.extend_from_slice(&local);
        assert_eq!(out.len() % 64, 0);
        out.extend_from_slice(data);
        out.extend_from_slice(b"PK\x07\x08");
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        let mut entry = b"PK\x01\x02\x1e\x03\x2d\x00\x08\x08\x00\x00\x00\x00\x00\x00".to_vec();
        entry.extend_from_slice(&crc.to_le_bytes());
        entry.extend_from_slice(&(data.len() as u32).to_le_bytes());
        entry.extend_from_slice(&(data.len() as u32).to_le_bytes());
        entry.extend_from_slice(&(name.len() as u16).to_le_bytes());
        entry.extend_from_slice(&[0; 12]); // extra, comment, disk, attributes
        entry.extend_from_slice(&offset.to_le_bytes());
        entry.extend_from_slice(name.as_bytes());
        central.extend_from_slice(&entry);
    }
    let directory = out.len();
    out.extend_from_slice(&central);
    let record = out.len();
    let n = members.len() as u64;
    out.extend_from_slice(b"PK\x06\x06");
    out.extend_from_slice(&44u64.to_le_bytes());
    out.extend_from_slice(&[0x1e, 0x03, 0x2d, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]);
    for v in [n, n, central.len() as u64, directory as u64] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(b"PK\x06\x07\0\0\0\0");
    out.extend_from_slice(&(record as u64).to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend(end_record(n as u16, central.len(), directory));
    out
}

#[test]
fn zips_laid_out_as_pytorch_writes_them_pass() {
    let p = policy("");
    let weights: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let members = [
        ("archive/data.pkl", TENSOR),
        ("archive/byteorder", &b"little"[..]),
        ("archive/data/0", &weights[..]),
        ("archive/version", b"3\n"),
    ];
    let ckpt = pytorch_like(&members);
    assert_eq!(gate(&p, &ckpt, "model.pt").unwrap(), ["zip"]);
    let mut evil = members;
    evil[0].1 = EVIL;
    assert_eq!(
        gate(&p, &pytorch_like(&evil), "model.pt").unwrap_err(),
        "archive refused: model.pt!archive/data.pkl: pickle imports posix.system (not on the allow-list)"
    );
    // A descriptor that does not repeat what the central directory says.
    let mut wrong = ckpt.clone();
    let at = wrong.windows(4).position(|w| w == b"PK\x07\x08").unwrap();
    wrong[at + 4] ^= 1;
    assert_eq!(
        gate(&p, &wrong, "model.pt").unwrap_err(),
        "archive refused: model.pt!archive/data.pkl: its data descriptor does not match the central directory"
    );
}
