//! Frame parsing on arbitrary bytes.
//!
//! Invariants: parsing never panics; an accepted frame's payload has exactly the length its
//! header requires and its header passes validation; and re-encoding an accepted frame
//! reproduces the input byte for byte (the encoding is canonical, so a relay that re-encodes
//! what it parsed never changes a frame).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_protocol::wire::{
    parse_frame, parse_frame_unauthenticated, write_frame_with_tag, LinkKey, MAX_FRAME_LEN,
};

fuzz_target!(|data: &[u8]| {
    let key = LinkKey::new(&[0u8; 32]);
    if let Ok(frame) = parse_frame(data, &key) {
        assert_eq!(frame.payload.len(), frame.header.payload_len());
        assert!(frame.header.validate().is_ok());
    }
    if let Ok(frame) = parse_frame_unauthenticated(data) {
        assert_eq!(frame.payload.len(), frame.header.payload_len());
        assert!(frame.header.validate().is_ok());
        let mut out = [0u8; MAX_FRAME_LEN];
        let n = write_frame_with_tag(&frame.header, frame.payload, &frame.tag, &mut out)
            .expect("an accepted frame re-encodes");
        assert_eq!(&out[..n], data, "re-encoding changed the frame");
    }
});
