//! The firmware relay on arbitrary byte chunks (and a few valid frames mixed in): everything it
//! emits deframes into valid frames, and each of them is a frame that was present in the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_firmware::relay::{buffer_for, Relay, RelayConfig};
use sluice_protocol::framing::{CobsAccumulator, Feed};
use sluice_protocol::time::Instant;
use sluice_protocol::wire::{parse_frame_unauthenticated, LinkKey};

const N: usize = buffer_for(2048);

fuzz_target!(|chunks: Vec<Vec<u8>>| {
    let input: Vec<u8> = chunks.concat();
    for key in [None, Some(LinkKey::new(&[0u8; 32]))] {
        let mut relay = Relay::<N>::new(RelayConfig::default(), key, Instant::ZERO);
        let mut out = Vec::new();
        for chunk in &chunks {
            relay.feed(Instant::ZERO, chunk, &mut |b| out.extend_from_slice(b));
        }
        let mut acc = CobsAccumulator::<N>::new();
        let mut rest = &out[..];
        loop {
            match acc.feed(rest) {
                Feed::Consumed => break,
                Feed::Frame { frame, rest: r } => {
                    assert!(
                        parse_frame_unauthenticated(frame).is_ok(),
                        "emitted an invalid frame"
                    );
                    // The frame's bytes, COBS-encoded, were in the input (COBS is canonical).
                    let mut line = vec![0u8; sluice_protocol::framing::encoded_len(frame.len())];
                    let n = sluice_protocol::framing::encode_frame(frame, &mut line).unwrap();
                    let body = &line[..n - 1];
                    assert!(
                        input.windows(body.len()).any(|w| w == body),
                        "emitted a frame that was not in the input"
                    );
                    rest = r;
                }
                Feed::Dropped { .. } => panic!("emitted broken framing"),
            }
        }
        assert_eq!(
            u64::from(relay.counters().forwarded),
            out.iter().filter(|b| **b == 0).count() as u64
        );
    }
});
