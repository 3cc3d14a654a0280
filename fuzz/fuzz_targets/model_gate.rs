//! The content gate on arbitrary bytes, under the names that pick each model inspector: a
//! model file is input attacker B chooses completely (issue 28).
//!
//! Invariants: inspection never panics and ends (the policy's clock, and the parsers'
//! bounds); whatever the verdict, it is a value, not a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_inspect::policy::Policy;

/// Names that make the gate try each format (by name, or as a zip member named so).
const NAMES: &[&str] = &[
    "model.gguf",
    "model.onnx",
    "config.json",
    "model.h5",
    "arr.npy",
    "weights.pkl",
    "model.keras",
    "data.tar.gz",
];

fuzz_target!(|data: &[u8]| {
    let Some((pick, bytes)) = data.split_first() else {
        return;
    };
    let name = NAMES[usize::from(*pick) % NAMES.len()];
    let policy = Policy::parse("quarantine = \"q\"\ninspect_timeout = \"5s\"\n").expect("a policy");
    let _ = policy.inspect_all(&mut std::io::Cursor::new(bytes), name, bytes.len() as u64);
});
