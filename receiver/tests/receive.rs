//! The receiver in-process against frames from the test producer over loopback UDP: trees
//! arrive identical, and every refusal (missing data, wrong keys, tampering, hostile paths)
//! is reported with its documented phrase while `--out` stays clean; state survives a
//! receiver that goes away mid-transfer; nothing is written twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use sluice_common::envelope;
use sluice_common::keys::SigningKey;
use sluice_protocol::counters::DropReason;
use sluice_protocol::manifest::EntryKind;
use sluice_protocol::wire::BlockKind;
use support::{all, bytes, generate_keys, reasons, Item, Producer, Rig};

const IDLE: Duration = Duration::from_secs(1);

/// Sends `items` (as objects 0..n of one session) to a fresh receiver; returns its report.
async fn transfer(rig: &Rig, producer: &Producer, items: &[Item]) -> sluice_receiver::Report {
    let encoded: Vec<_> = items
        .iter()
        .enumerate()
        .map(|(i, item)| producer.encode(i as u64, item))
        .collect();
    let running = rig.start(rig.options(IDLE)).await;
    running.send(producer.frames(&encoded, 0, all)).await;
    running.finish().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_arrives_identical_with_modes_and_mtimes() {
    let rig = Rig::new();
    let producer = Producer::new(&rig.keys, 0x1111);
    let items = vec![
        Item::dir("tree", 0o750, (1_600_000_000, 111)),
        Item::dir("tree/sub", 0o700, (1_600_000_100, 222)),
        Item::file(
            "tree/sub/data.bin",
            bytes(200_000, 1),
            0o640,
            (1_600_000_200, 333),
        ),
        Item::file("tree/empty.txt", Vec::new(), 0o600, (1_600_000_300, 0)),
        Item::dir("tree/empty dir", 0o755, (1_600_000_400, 444)),
        Item::file("tree/one", vec![42], 0o644, (1_600_000_500, 999_999_999)),
        Item::file("tree/edge.bin", bytes(64 << 10, 2), 0o444, (-5, 6)),
        Item::file(
            "tree/ünï côde.txt",
            b"hello".to_vec(),
            0o664,
            (1_700_000_000, 7),
        ),
    ];
    let report = transfer(&rig, &producer, &items).await;
    assert_eq!(reasons(&report), Vec::<String>::new());
    assert_eq!(report.objects_delivered, items.len() as u64);
    assert_eq!(report.exit_code(), 0);
    assert_eq!(report.drops.get(DropReason::BadMac), 0);
    // The producer's scheduler opens with a heartbeat counting itself.
    assert_eq!(report.sender_frames_sent, 1);
    // Modes are the sender's, masked by --mode-mask (default 0755: never group- or
    // other-writable) and the receiver's umask.
    // Read from /proc, never set-and-restore: receivers of other tests in this process read
    // theirs at the same time.
    let umask = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s
                .lines()
                .find_map(|l| l.strip_prefix("Umask:"))?
                .trim()
                .to_string();
            u32::from_str_radix(&line, 8).ok()
        })
        .expect("Umask: in /proc/self/status");
    for item in &items {
        let path = rig.out.join(&item.path);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(
            meta.mode() & 0o7777,
            item.mode & 0o755 & !umask,
            "{}",
            item.path
        );
        assert_eq!(
            (meta.mtime(), meta.mtime_nsec()),
            (item.mtime.0, i64::from(item.mtime.1)),
            "{}",
            item.path
        );
        match item.kind {
            EntryKind::File => assert_eq!(std::fs::read(&path).unwrap(), item.content),
            EntryKind::Directory => assert!(meta.is_dir()),
        }
    }
    assert_eq!(rig.published().len(), items.len());
    // 4 + 0 + 0 + 1 + 1 + 1 data blocks, and a manifest per object.
    assert_eq!(report.blocks_decoded, 7 + items.len() as u64);
}

/// A pack (many small entries, their content inline in one manifest block) publishes each
/// entry on its own: a refused or damaged entry fails alone, the others land with their modes
/// and mtimes, and a pack sent again is recognised entry by entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_publishes_each_entry_on_its_own() {
    let rig = Rig::new();
    std::fs::create_dir_all(rig.out.join("blocked")).unwrap();
    let producer = Producer::new(&rig.keys, 0x1212);
    let items = vec![
        Item::dir("p", 0o750, (1_600_000_000, 1)),
        Item::file("p/a", bytes(100, 1), 0o640, (1_600_000_100, 2)),
        Item::file("p/empty", Vec::new(), 0o600, (1_600_000_200, 3)),
        Item::file("blocked", b"not a dir".to_vec(), 0o644, (1, 0)),
        Item::file("../escape", b"out".to_vec(), 0o644, (1, 0)),
        Item::file("p/b", bytes(4096, 2), 0o644, (1_600_000_300, 4)),
    ];
    let pack = producer.encode_pack(0, &items);
    // A second pack whose signed entry hash does not match the content it carries.
    let damaged_items = [
        Item::file("q/ok", bytes(10, 3), 0o644, (1, 0)),
        Item::file("q/bad", bytes(10, 4), 0o644, (1, 0)),
    ];
    let mut damaged = producer.encode_pack(1, &damaged_items);
    let mut inline: Vec<u8> = damaged_items
        .iter()
        .flat_map(|i| i.content.clone())
        .collect();
    inline[15] ^= 1;
    damaged.blocks[0].1 = producer.seal_inline(&damaged.manifest, &inline, &producer.signer);
    let running = rig.start(rig.options(IDLE)).await;
    running
        .send(producer.frames(&[pack, damaged], 0, all))
        .await;
    let report = running.finish().await;
    let mut got = reasons(&report);
    got.sort();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got[0].starts_with("content SHA-256 mismatch"), "{got:?}");
    assert!(got[1].starts_with("refused path \"../escape\""), "{got:?}");
    assert!(
        got[2].starts_with("refused path \"blocked\"") && got[2].contains("directory"),
        "{got:?}"
    );
    assert_eq!(report.objects_delivered, 5);
    assert_eq!(report.objects_failed, 3);
    assert_eq!(report.blocks_decoded, 2, "two packs, one block each");
    assert_eq!(
        rig.published(),
        ["blocked", "p", "p/a", "p/b", "p/empty", "q", "q/ok"]
    );
    for item in [&items[1], &items[2], &items[5]] {
        let path = rig.out.join(&item.path);
        assert_eq!(std::fs::read(&path).unwrap(), item.content);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, item.mode & 0o755);
        assert_eq!(meta.mtime(), item.mtime.0);
    }
    // The directory's mtime is its own, though files landed in it after.
    let meta = std::fs::metadata(rig.out.join("p")).unwrap();
    assert_eq!(meta.mtime(), 1_600_000_000);

    // The same pack again (a later sender run): its files are recognised, not rewritten.
    let again = Producer::new(&rig.keys, 0x1213).encode_pack(0, &items[..3]);
    let running = rig.start(rig.options(IDLE)).await;
    running
        .send(Producer::new(&rig.keys, 0x1213).frames(&[again], 0, all))
        .await;
    let report = running.finish().await;
    assert_eq!(reasons(&report), Vec::<String>::new());
    assert_eq!(report.objects_already_delivered, 2, "p/a and p/empty");
    assert_eq!(
        report.objects_delivered, 1,
        "the directory is applied again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_segment_leaves_the_object_incomplete_and_unpublished() {
    let rig = Rig::new();
    let producer = Producer::new(&rig.keys, 0x2222);
    let item = Item::file("gap.bin", bytes(200_000, 3), 0o644, (1_600_000_000, 0));
    let encoded = [producer.encode(0, &item)];
    let running = rig.start(rig.options(IDLE)).await;
    let frames = producer.frames(&encoded, 0, |s| {
        !(s.block.kind == BlockKind::Data && s.block.index == 1)
    });
    running.send(frames).await;
    let report = running.finish().await;
    assert_eq!(reasons(&report), ["incomplete: 1 of 4 segments missing"]);
    assert_eq!(report.failures[0].path.as_deref(), Some("gap.bin"));
    assert_eq!(report.exit_code(), 3);
    assert_eq!(rig.published(), Vec::<String>::new());
    // What did arrive is kept for a later pass or run.
    let state = rig.out.join(".sluice-state/objects");
    let object_dir = std::fs::read_dir(&state)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut kept: Vec<String> = std::fs::read_dir(&object_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    kept.sort();
    assert_eq!(kept, ["manifest", "segments"]);
    // Three 56-byte records, and the content file holds their plaintext at its offsets.
    assert_eq!(
        std::fs::metadata(object_dir.join("segments"))
            .unwrap()
            .len(),
        3 * 56
    );
    let content = std::fs::read(
        rig.out
            .join(".sluice-state/staging")
            .join(object_dir.file_name().unwrap()),
    )
    .unwrap();
    let segment = 64 << 10;
    assert_eq!(&content[..segment], &item.content[..segment]);
    assert_eq!(&content[2 * segment..], &item.content[2 * segment..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_for_another_identity_are_refused() {
    let rig = Rig::new();
    let other = generate_keys(&rig.tmp.path().join("other"));
    let mut producer = Producer::new(&rig.keys, 0x3333);
    producer.recipients = sluice_common::keys::load_recipients(&other.receiver_pub).unwrap();
    let items = [Item::file("secret.txt", bytes(5000, 4), 0o600, (1, 0))];
    let report = transfer(&rig, &producer, &items).await;
    let reasons = reasons(&report);
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    // Whichever the workers finish first, the data segment or the manifest, refuses the
    // object, naming the identity that cannot open it.
    let key = rig.keys.receiver_key.display();
    let expected = [
        format!("segment 0 does not decrypt: no key in --identity {key} opens it"),
        format!("cannot decrypt manifest with --identity {key}: No matching keys found"),
    ];
    assert!(expected.contains(&reasons[0]), "{reasons:?}");
    assert_eq!(report.exit_code(), 3);
    assert_eq!(rig.published(), Vec::<String>::new());
    assert_eq!(
        std::fs::read_dir(rig.out.join(".sluice-state/objects"))
            .unwrap()
            .count(),
        0,
        "the refused object's blocks are discarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_signed_by_an_untrusted_key_are_refused() {
    let rig = Rig::new();
    let other = generate_keys(&rig.tmp.path().join("other"));
    let mut producer = Producer::new(&rig.keys, 0x4444);
    producer.signer = SigningKey::load(&other.sender_key).unwrap();
    let untrusted = producer.signer.id();
    let items = [Item::file("a.txt", bytes(100, 5), 0o644, (1, 0))];
    let report = transfer(&rig, &producer, &items).await;
    assert_eq!(
        reasons(&report),
        [format!("manifest signed by untrusted key {untrusted}")]
    );
    assert_eq!(rig.published(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_substituted_segment_is_refused() {
    let rig = Rig::new();
    let producer = Producer::new(&rig.keys, 0x5555);
    let item = Item::file("t.bin", bytes(150_000, 6), 0o644, (1, 0));
    // A forger holding the link key changes a byte of segment 1 after the manifest was
    // signed: age's authentication refuses it.
    let mut tampered = producer.encode(0, &item);
    tampered.blocks[1].1[500] ^= 0x01;
    // Or replaces segment 1 with another valid age file (anyone can encrypt to the
    // receiver's public key): the signed manifest binds another header MAC.
    let mut substituted = producer.encode(1, &item);
    substituted.blocks[1].1 =
        envelope::encrypt(&item.content[64 << 10..128 << 10], &producer.recipients).unwrap();
    let running = rig.start(rig.options(IDLE)).await;
    running
        .send(producer.frames(&[tampered, substituted], 0, all))
        .await;
    let report = running.finish().await;
    // The two objects are decoded on different workers: either may fail first.
    let mut reasons = reasons(&report);
    reasons.sort();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons[0].starts_with("segment 1 does not decrypt"),
        "{reasons:?}"
    );
    assert_eq!(reasons[1], "segment 1 does not match the signed manifest");
    assert_eq!(report.exit_code(), 3);
    assert_eq!(rig.published(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_are_refused_and_nothing_outside_out_is_touched() {
    let rig = Rig::new();
    let outside = rig.tmp.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::create_dir_all(&rig.out).unwrap();
    std::os::unix::fs::symlink(&outside, rig.out.join("link")).unwrap();
    let producer = Producer::new(&rig.keys, 0x6666);
    let content = bytes(1000, 7);
    let hostile = [
        ("../escape.txt", "'..'"),
        ("/etc/sluice-test-escape.txt", "absolute"),
        ("link/through-symlink.txt", "symlink"),
        ("link", "symlink"),
        (".sluice-state/done/x", "reserved"),
    ];
    let mut items: Vec<Item> = hostile
        .iter()
        .map(|(path, _)| Item::file(path, content.clone(), 0o644, (1, 0)))
        .collect();
    items.push(Item::file("ok.txt", content.clone(), 0o644, (1, 0)));
    let report = transfer(&rig, &producer, &items).await;
    let reasons = reasons(&report);
    assert_eq!(reasons.len(), hostile.len(), "{reasons:?}");
    for (path, why) in hostile {
        let prefix = format!("refused path {path:?}");
        assert!(
            reasons
                .iter()
                .any(|r| r.starts_with(&prefix) && r.contains(why)),
            "{path}: {reasons:?}"
        );
    }
    assert_eq!(report.objects_delivered, 1);
    assert_eq!(rig.published(), ["link", "ok.txt"]);
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert!(!rig.tmp.path().join("escape.txt").exists());
    assert!(!std::path::Path::new("/etc/sluice-test-escape.txt").exists());
    assert!(
        rig.out.join("link").is_symlink(),
        "the planted link is left alone"
    );

    // A later object may not turn the published file into a directory.
    let later = Producer::new(&rig.keys, 0x6667);
    let clash = [Item::file("ok.txt/below-a-file", content, 0o644, (1, 0))];
    let report = transfer(&rig, &later, &clash).await;
    assert_eq!(report.failures.len(), 1);
    assert!(
        report.failures[0]
            .reason
            .starts_with("refused path \"ok.txt/below-a-file\"")
            && report.failures[0].reason.contains("not a directory"),
        "{:?}",
        report.failures
    );
    assert!(rig.out.join("ok.txt").is_file());
}

/// A later file may not replace a published directory (the reverse of the `below-a-file`
/// case above): refused with its reason, the directory and its contents untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_may_not_replace_a_published_directory() {
    let rig = Rig::new();
    let producer = Producer::new(&rig.keys, 0x7777);
    let inside = bytes(500, 8);
    let tree = [
        Item::dir("d", 0o755, (1, 0)),
        Item::file("d/x.txt", inside.clone(), 0o644, (1, 0)),
    ];
    let report = transfer(&rig, &producer, &tree).await;
    assert_eq!(report.objects_delivered, 2, "{:?}", report.failures);
    let inode = std::fs::metadata(rig.out.join("d/x.txt")).unwrap().ino();

    let later = Producer::new(&rig.keys, 0x7778);
    let clash = [Item::file("d", bytes(100, 9), 0o644, (1, 0))];
    let report = transfer(&rig, &later, &clash).await;
    assert_eq!(report.objects_delivered, 0);
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    let reason = &report.failures[0].reason;
    assert!(reason.starts_with("refused path \"d\""), "{reason}");
    assert!(reason.contains("directory"), "{reason}");
    assert!(rig.out.join("d").is_dir());
    assert_eq!(std::fs::read(rig.out.join("d/x.txt")).unwrap(), inside);
    assert_eq!(
        std::fs::metadata(rig.out.join("d/x.txt")).unwrap().ino(),
        inode
    );
    assert_eq!(rig.published(), ["d", "d/x.txt"]);
}

/// Pass 0 brings segments 0 and 1 and half of segment 2, no manifest; the receiver goes away.
/// A new receiver on the same state, fed pass 1 with too few symbols of segment 2 to decode it
/// alone, completes the object only by restoring the saved half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_receiver_resumes_from_the_saved_state() {
    let rig = Rig::new();
    let producer = Producer::new(&rig.keys, 0x7777);
    let item = Item::file("resume.bin", bytes(150_000, 8), 0o640, (1_650_000_000, 5));
    let encoded = [producer.encode(0, &item)];
    let k2 = {
        let data = &encoded[0].blocks[2].1;
        data.len().div_ceil(usize::from(producer.symbol_size)) as u16
    };
    let half = k2 / 2;

    let first = rig.start(rig.options(Duration::from_secs(60))).await;
    let pass0 = producer.frames(&encoded, 0, |s| match s.block.kind {
        BlockKind::Manifest => false,
        BlockKind::Data if s.block.index == 2 => s.symbol < half,
        BlockKind::Data => true,
    });
    first.send(pass0).await;
    // Segments 0 and 1 complete after every symbol of segment 2's half went out.
    let objects = rig.out.join(".sluice-state/objects");
    let stored = |i: u32| {
        std::fs::read_dir(&objects)
            .into_iter()
            .flatten()
            .any(|d| d.unwrap().path().join(format!("seg-{i}")).exists())
    };
    for _ in 0..400 {
        if stored(0) && stored(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = first.shutdown().await;
    assert_eq!(reasons(&report), ["manifest never arrived"]);
    assert_eq!(report.blocks_decoded, 2);
    assert_eq!(report.partials_saved, 1);
    assert_eq!(rig.published(), Vec::<String>::new());

    let second = rig.start(rig.options(IDLE)).await;
    let mut sent_of_2 = 0;
    let pass1 = producer.frames(&encoded, 1, |s| {
        if s.block.kind == BlockKind::Data && s.block.index == 2 {
            sent_of_2 += 1;
            sent_of_2 <= k2 - half
        } else {
            true
        }
    });
    second.send(pass1).await;
    let report = second.finish().await;
    assert_eq!(reasons(&report), Vec::<String>::new());
    assert_eq!(report.objects_delivered, 1);
    assert_eq!(report.partials_restored, 1);
    // Segment 2 and the manifest; segments 0 and 1 were already stored.
    assert_eq!(report.blocks_decoded, 2);
    assert!(report.drops.get(DropReason::BlockDone) > 0);
    assert_eq!(
        std::fs::read(rig.out.join("resume.bin")).unwrap(),
        item.content
    );
    assert_eq!(report.exit_code(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivered_object_is_not_written_twice() {
    let rig = Rig::new();
    let first = Producer::new(&rig.keys, 0x8888);
    let items = [
        Item::file("same.bin", bytes(100_000, 9), 0o644, (1_600_000_000, 1)),
        Item::file("notes.txt", bytes(3000, 10), 0o600, (1_600_000_000, 2)),
    ];
    let report = transfer(&rig, &first, &items).await;
    assert_eq!(report.objects_delivered, 2);
    let identity = |name: &str| {
        let m = std::fs::metadata(rig.out.join(name)).unwrap();
        (
            m.ino(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        )
    };
    let before: HashMap<&str, _> = ["same.bin", "notes.txt"]
        .into_iter()
        .map(|n| (n, identity(n)))
        .collect();

    // A new sender run with the same content: recognised by path and SHA-256.
    let second = Producer::new(&rig.keys, 0x9999);
    let report = transfer(&rig, &second, &items).await;
    assert_eq!(report.objects_already_delivered, 2);
    assert_eq!(report.objects_delivered, 0);
    assert_eq!(report.exit_code(), 0);

    // The first run's frames again (a later pass reaching a restarted receiver): its done
    // markers release every block before it is decoded, and each object is reported once.
    let report = transfer(&rig, &first, &items).await;
    assert_eq!(report.objects_delivered, 0);
    assert_eq!(report.objects_already_delivered, 2);
    assert_eq!(report.blocks_decoded, 0);
    assert!(report.drops.get(DropReason::BlockDone) > 0);
    assert_eq!(reasons(&report), Vec::<String>::new());

    for (name, was) in before {
        assert_eq!(identity(name), was, "{name} was written again");
    }
    assert_eq!(
        std::fs::read(rig.out.join("same.bin")).unwrap(),
        items[0].content
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_under_another_link_key_are_counted_and_ignored() {
    let rig = Rig::new();
    let other = generate_keys(&rig.tmp.path().join("other"));
    let mut producer = Producer::new(&rig.keys, 0xAAAA);
    producer.link_key = sluice_common::keys::load_link_key(&other.link_key).unwrap();
    let encoded = [producer.encode(0, &Item::file("x", bytes(10_000, 11), 0o644, (1, 0)))];
    let frames = producer.frames(&encoded, 0, all);
    let count = frames.len() as u64;
    let running = rig.start(rig.options(IDLE)).await;
    running.send(frames).await;
    let report = running.finish().await;
    assert_eq!(report.drops.get(DropReason::BadMac), count);
    assert_eq!(report.frames_received, count);
    assert_eq!(report.frames_valid, 0);
    assert_eq!(rig.published(), Vec::<String>::new());
    // Nothing valid arrived: a script must not take that for a clean run.
    assert_eq!(report.exit_code(), 4);
    assert!(
        report.human().contains("is --link-key the sender's?"),
        "{}",
        report.human()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_hears_nothing_at_all_exits_4_and_says_so() {
    let rig = Rig::new();
    let running = rig.start(rig.options(IDLE)).await;
    let report = running.finish().await;
    assert_eq!(report.frames_received, 0);
    assert_eq!(report.exit_code(), 4);
    assert!(
        report.human().contains("nothing arrived on the link"),
        "{}",
        report.human()
    );
}
