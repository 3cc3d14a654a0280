//! The chat-template checker on arbitrary text (a GGUF model's Jinja template is attacker
//! B's), and the Python-literal parser NumPy headers go through.
//!
//! Invariants: neither panics; whatever a template holds, appending an expression that
//! reaches a dunder attribute makes it refused (no prefix can switch the checker off: an
//! unclosed string or tag swallowing what follows is refused too).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_inspect::formats::{chat_template, pyliteral};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = pyliteral::parse(text);
    let _ = chat_template::check(text);
    let attack = format!("{text}{{{{ messages.__class__ }}}}");
    assert!(chat_template::check(&attack).is_err(), "{text:?}");
});
