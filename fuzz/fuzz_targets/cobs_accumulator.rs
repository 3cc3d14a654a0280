//! The COBS accumulator fed arbitrary bytes in arbitrary chunks.
//!
//! Invariants: no panic; `pending()` never exceeds the buffer; every frame that comes out,
//! COBS-encoded again, appears in the input (the accumulator never invents bytes).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sluice_protocol::framing::{encode_frame, encoded_len, CobsAccumulator, Feed};

const N: usize = 256;

#[derive(Arbitrary, Debug)]
struct Input {
    bytes: Vec<u8>,
    chunks: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let mut acc = CobsAccumulator::<N>::new();
    let mut rest: &[u8] = &input.bytes;
    let mut chunk_sizes = input.chunks.iter().map(|c| usize::from(*c) + 1).cycle();
    while !rest.is_empty() {
        let take = chunk_sizes.next().unwrap_or(rest.len()).min(rest.len());
        let (mut piece, tail) = rest.split_at(take);
        rest = tail;
        loop {
            match acc.feed(piece) {
                Feed::Consumed => break,
                Feed::Frame { frame, rest } => {
                    assert!(!frame.is_empty() && frame.len() <= N);
                    let mut enc = vec![0u8; encoded_len(frame.len())];
                    let n = encode_frame(frame, &mut enc).expect("buffer sized by encoded_len");
                    // Without its delimiter the encoding must occur in the input verbatim.
                    let body = &enc[..n - 1];
                    assert!(
                        input.bytes.windows(body.len()).any(|w| w == body),
                        "frame not present in input"
                    );
                    piece = rest;
                }
                Feed::Dropped { rest, .. } => piece = rest,
            }
            assert!(acc.pending() <= N);
        }
    }
});
