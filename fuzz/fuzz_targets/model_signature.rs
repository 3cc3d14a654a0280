//! A model's signature bundle (`model.sig`) as the receiver reads it under `[signing]`: the
//! bytes are attacker B's (B cannot sign, but can send any file under that name).
//!
//! Invariants: verification never panics, and without the trusted key's signature nothing
//! verifies (the key here has no signer: its private half is not in the fuzzer).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_inspect::signing::{self, TrustedKey};

/// A P-256 public key whose private key is not in this program.
const KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEH6NyyJ+g265sJajzlEmQ2TjEMu0T
gMQu8GLdVz9Nt2DF28hrV9Mnqz+2wDEiJ59De0ORnwTMAXvq3WGi7GrVHA==
-----END PUBLIC KEY-----
";

fuzz_target!(|data: &[u8]| {
    let Ok(key) = TrustedKey::from_pem("fuzz.pem", KEY) else {
        return;
    };
    assert!(signing::verify(data, &[key]).is_err());
});
