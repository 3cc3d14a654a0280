//! A model's signature bundle (`model.sig`) as the receiver reads it under `[signing]`: the
//! bytes are attacker B's (B cannot sign, but can send any file under that name).
//!
//! Invariants: verification never panics, and without the trusted key's signature, or a
//! certificate its CA issued, nothing verifies (neither private key is in the fuzzer). The
//! seeds reach both methods: a bundle signed by another key, and one carrying a certificate
//! chain of another CA (read by `x509-cert`, validated by `webpki`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_inspect::signing::{self, TrustedKey};

/// A P-256 public key whose private key is not in this program.
const KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEH6NyyJ+g265sJajzlEmQ2TjEMu0T
gMQu8GLdVz9Nt2DF28hrV9Mnqz+2wDEiJ59De0ORnwTMAXvq3WGi7GrVHA==
-----END PUBLIC KEY-----
";

/// A CA certificate whose private key is not in this program.
const CA: &str = "-----BEGIN CERTIFICATE-----
MIIBSDCB76ADAgECAhQS8JUqrOa0C2me2XYDIdi5OunfqTAKBggqhkjOPQQDAjAS
MRAwDgYDVQQDDAdGdXp6IENBMB4XDTI2MDEwMTAwMDAwMFoXDTM1MTIzMDAwMDAw
MFowEjEQMA4GA1UEAwwHRnV6eiBDQTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IA
BKNUDDQs2rPT1F3KIJoefy4JBLZE7cjc+mnsiGbralhdQPW2fLDGTBu5+Dfz3bI/
Mp7EW1wckZRSdimJMMlCuQijIzAhMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/
BAQDAgEGMAoGCCqGSM49BAMCA0gAMEUCIQDjP2ytmADqQYC8FRpEZpn+aKSzTZZe
0iNJxYfygsuc6wIgBp4tlMk7JWPrV1T/1USYU0fRXUB5MCEh4ZqezbcQiWw=
-----END CERTIFICATE-----
";

fuzz_target!(|data: &[u8]| {
    let (Ok(key), Ok(ca)) = (
        TrustedKey::from_pem("fuzz.pem", KEY),
        TrustedKey::from_ca_pem("fuzz-ca.pem", CA),
    ) else {
        return;
    };
    assert!(signing::verify(data, &[key, ca]).is_err());
});
