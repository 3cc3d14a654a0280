//! The `manifest` fuzz target's seeds are of the current manifest version: a version bump
//! that left them behind would have the fuzzer start from inputs refused at the first byte.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sluice_protocol::manifest::{Manifest, SignedManifest};

#[test]
fn manifest_seeds_decode_as_the_current_version() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/manifest");
    let (mut seeds, mut decoded, mut with_approval) = (0, 0, 0);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        seeds += 1;
        let inner = SignedManifest::from_bytes(&bytes)
            .map(|s| s.manifest)
            .unwrap_or_else(|_| bytes.clone());
        if let Ok(m) = Manifest::from_bytes(&inner) {
            decoded += 1;
            with_approval += usize::from(m.approval.is_some());
        }
    }
    // Most seeds are minimised fuzzer inputs that are refused on purpose (50 of 438 decode
    // at manifest v4); a seed set left at an older version would decode none.
    assert!(decoded * 10 >= seeds, "{decoded} of {seeds} seeds decode");
    assert!(with_approval >= 1, "no seed carries an approval");
}
