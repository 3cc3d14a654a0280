//! Two links read by two flows at once: frames striped over both, sent concurrently, are all
//! verified where they arrive and assembled into the same objects; what a flow refuses (a
//! corrupted frame, a forged one) is counted in the report as if one task had read it all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use sluice_common::link::Links;
use sluice_protocol::counters::DropReason;
use sluice_tests::binaries::free_udp_port;
use support::{all, bytes, send, Item, Producer, Rig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_on_two_flows_at_once_are_all_assembled() {
    let rig = Rig::new();
    let producer = Producer::new(&rig.keys, 0x2727);
    let items: Vec<Item> = (0..6)
        .map(|i| {
            Item::file(
                &format!("flow/{i}.bin"),
                bytes(300_000 + i * 7_000, i as u64),
                0o644,
                (1_700_000_000, 0),
            )
        })
        .collect();
    let encoded: Vec<_> = items
        .iter()
        .enumerate()
        .map(|(i, item)| producer.encode(i as u64, item))
        .collect();
    let frames = producer.frames(&encoded, 0, all);

    let mut options = rig.options(Duration::from_secs(1));
    let (p1, p2) = (free_udp_port(), free_udp_port());
    options.shared.link = Links::parse_all(&[
        format!("udp://127.0.0.1:{p1}"),
        format!("udp://127.0.0.1:{p2}"),
    ])
    .unwrap();
    let receiver = sluice_receiver::Receiver::bind(options).await.unwrap();
    let addrs: Vec<_> = receiver
        .local_addrs()
        .into_iter()
        .map(Option::unwrap)
        .collect();
    assert_eq!(addrs.len(), 2);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(receiver.run(async move {
        let _ = stopped.await;
    }));

    // Every other frame on each link, both senders at once; one link also brings a frame
    // corrupted on the line and one under another key.
    let mut halves = [Vec::new(), Vec::new()];
    for (i, frame) in frames.iter().enumerate() {
        halves[i % 2].push(frame.clone());
    }
    let mut corrupt = frames[1].clone();
    corrupt[10] ^= 0x40;
    halves[1].push(corrupt);
    let forged_keys = support::generate_keys(&rig.tmp.path().join("other-keys"));
    let forger = Producer::new(&forged_keys, 0x2727);
    let forged = forger.frames(&[forger.encode(0, &items[0])], 0, all);
    halves[1].push(forged[0].clone());
    let total = frames.len() as u64 + 2;
    let senders: Vec<_> = halves
        .into_iter()
        .zip(addrs)
        .map(|(half, to)| std::thread::spawn(move || send(to, &half)))
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }

    let _keep = stop;
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.objects_delivered, items.len() as u64, "{report:?}");
    for item in &items {
        assert_eq!(
            std::fs::read(rig.out.join(&item.path)).unwrap(),
            item.content
        );
    }
    assert_eq!(report.frames_received, total);
    assert_eq!(report.frames_valid, frames.len() as u64);
    assert_eq!(report.drops.get(DropReason::BadCrc), 1);
    assert_eq!(report.drops.get(DropReason::BadMac), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_held_back_by_a_flow_is_still_counted_when_the_receiver_stops() {
    // A flow holds a batch of refused datagrams back (up to a second) rather than queue it
    // alone; stopping the receiver inside that second must still count every one.
    let rig = Rig::new();
    let mut options = rig.options(Duration::from_secs(60));
    let port = free_udp_port();
    options.shared.link = Links::parse_all(&[format!("udp://127.0.0.1:{port}")]).unwrap();
    let receiver = sluice_receiver::Receiver::bind(options).await.unwrap();
    let to = receiver.local_addrs()[0].unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(receiver.run(async move {
        let _ = stopped.await;
    }));
    // Let the flow's first once-a-second tick pass, then send junk and stop at once.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let junk: Vec<Vec<u8>> = (0..500u32)
        .map(|i| {
            let mut d = vec![0x5A; 40 + (i % 60) as usize];
            d[..4].copy_from_slice(&i.to_le_bytes());
            d
        })
        .collect();
    let count = junk.len() as u64;
    std::thread::spawn(move || send(to, &junk)).join().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).unwrap();
    let report = task.await.unwrap().unwrap();
    assert_eq!(report.frames_received, count, "{report:?}");
    assert_eq!(report.frames_valid, 0);
    let dropped: u64 = DropReason::ALL.iter().map(|r| report.drops.get(*r)).sum();
    assert_eq!(dropped, count, "{report:?}");
}
