//! Object path validation on arbitrary strings: the receiver's last line of defence before a
//! name from the link becomes a file-system path.
//!
//! Invariants: validation never panics, and an accepted path is relative, has only ordinary
//! components (no empty, `.` or `..`), no control character, is within the length limits and
//! does not name the state directory — so joining it under `--out` cannot leave `--out`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_common::paths::{
    validate_object_path, MAX_COMPONENT_BYTES, MAX_PATH_BYTES, RESERVED_STATE_DIR,
};

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    if validate_object_path(path).is_err() {
        return;
    }
    assert!(!path.starts_with('/'));
    assert!(path.len() <= MAX_PATH_BYTES);
    assert!(!path.chars().any(char::is_control));
    let joined = std::path::Path::new("/out").join(path);
    assert!(joined.starts_with("/out"));
    for (i, c) in path.split('/').enumerate() {
        assert!(!c.is_empty() && c != "." && c != "..", "{path:?}");
        assert!(c.len() <= MAX_COMPONENT_BYTES);
        assert!(i > 0 || c != RESERVED_STATE_DIR);
    }
    for c in std::path::Path::new(path).components() {
        assert!(matches!(c, std::path::Component::Normal(_)), "{path:?}");
    }
});
