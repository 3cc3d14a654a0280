//! Manifest decoding on arbitrary bytes: what the receiver runs on a decrypted manifest block
//! before it trusts a single field.
//!
//! Invariants: decoding never panics; an accepted manifest passes `validate`, its segment sizes
//! add up to its content (or it has none and its content is inline, within the inline limit),
//! a pack names no path twice, and re-encoding it gives back the exact bytes (the signature
//! covers those bytes, so two encodings of one manifest must not exist).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_protocol::manifest::{Manifest, SignedManifest, MAX_INLINE_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(signed) = SignedManifest::from_bytes(data) {
        let again = signed.to_bytes().expect("an accepted envelope re-encodes");
        assert_eq!(again, data, "envelope encoding is not canonical");
        assert!(signed.inline.len() <= MAX_INLINE_LEN);
        check(&signed.manifest);
    }
    check(data);
});

fn check(bytes: &[u8]) {
    let Ok(manifest) = Manifest::from_bytes(bytes) else {
        return;
    };
    assert!(manifest.validate().is_ok());
    let total: u64 = (0..manifest.segments.len())
        .map(|i| {
            manifest
                .segment_plain_len(i)
                .expect("every listed segment has a length")
        })
        .sum();
    if manifest.is_inline() {
        assert!(manifest.segments.is_empty());
        assert!(manifest.content_len() <= MAX_INLINE_LEN as u64);
        let paths: std::collections::BTreeSet<&str> =
            manifest.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths.len(), manifest.entries.len(), "a path twice");
    } else {
        assert_eq!(manifest.entries.len(), 1, "segments carry one file");
        assert_eq!(total, manifest.content_len(), "segment lengths do not add up");
    }
    let again = manifest
        .to_bytes()
        .expect("an accepted manifest re-encodes");
    assert_eq!(again, bytes, "manifest encoding is not canonical");
}
