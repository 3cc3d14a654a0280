//! Candidates for the per-frame MAC and CRC, on the frame sizes that matter (1500- and
//! 9000-byte MTUs): wire v2's choice (`LinkKey`, POLYVAL-AES) was made here
//! (protocol/BENCHMARKS.md, SPEC.md section 5).
//!
//! - HMAC-SHA-256 truncated to 16 bytes (wire v1; SHA-NI on this CPU);
//! - keyed BLAKE3 (nonce-free);
//! - GMAC: AES-256-GCM over the frame as associated data, one 96-bit nonce per frame;
//! - Poly1305 with a one-time key per frame from ChaCha20(key, nonce) (as in ChaCha20-Poly1305);
//! - POLYVAL then AES: `AES-256(k2, POLYVAL(k1, frame ‖ length))`, a universal hash under a
//!   PRF (as in AES-GCM-SIV's tag): nonce-free, so no nonce uniqueness to prove. This is
//!   `LinkKey` (`link_key_v2`).
//!
//! CRC-32C: the portable table (`crc`, wire v1) against the SSE4.2 instruction (`crc32c`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use aes::cipher::KeyInit;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_protocol::wire::LinkKey;

/// Frame sizes: a 1408-byte symbol (MTU 1500) and an 8896-byte one (MTU 9000), headers included.
const FRAME_SIZES: [usize; 2] = [1452, 8940];

fn macs(c: &mut Criterion) {
    let secret = [7u8; 32];
    let link_key = LinkKey::new(&secret);
    let hmac = {
        use hmac::digest::KeyInit as _;
        hmac::Hmac::<sha2::Sha256>::new_from_slice(&secret).unwrap()
    };
    let blake = blake3::Hasher::new_keyed(&secret);
    let gcm = aes_gcm::Aes256Gcm::new(&secret.into());
    let mut group = c.benchmark_group("mac");
    for len in FRAME_SIZES {
        let frame: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::new("link_key_v2", len), |b| {
            b.iter(|| link_key.tag(black_box(&frame)))
        });
        group.bench_function(BenchmarkId::new("hmac_sha256", len), |b| {
            use hmac::Mac;
            b.iter(|| {
                let mut mac = hmac.clone();
                mac.update(black_box(&frame));
                mac.finalize().into_bytes()
            })
        });
        group.bench_function(BenchmarkId::new("blake3_keyed", len), |b| {
            b.iter(|| {
                let mut h = blake.clone();
                h.update(black_box(&frame));
                h.finalize()
            })
        });
        group.bench_function(BenchmarkId::new("blake3_keyed_oneshot", len), |b| {
            b.iter(|| blake3::keyed_hash(&secret, black_box(&frame)))
        });
        group.bench_function(BenchmarkId::new("gmac_aes256", len), |b| {
            use aes_gcm::aead::AeadInPlace;
            let nonce = aes_gcm::Nonce::from([3u8; 12]);
            b.iter(|| {
                gcm.encrypt_in_place_detached(&nonce, black_box(&frame), &mut [])
                    .unwrap()
            })
        });
        group.bench_function(BenchmarkId::new("gmac_aes256_ring", len), |b| {
            use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
            let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &secret).unwrap());
            b.iter(|| {
                let nonce = Nonce::assume_unique_for_key([3u8; 12]);
                key.seal_in_place_separate_tag(nonce, Aad::from(black_box(&frame[..])), &mut [])
                    .unwrap()
            })
        });
        group.bench_function(BenchmarkId::new("chacha20_poly1305_ring", len), |b| {
            use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
            let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &secret).unwrap());
            b.iter(|| {
                let nonce = Nonce::assume_unique_for_key([3u8; 12]);
                key.seal_in_place_separate_tag(nonce, Aad::from(black_box(&frame[..])), &mut [])
                    .unwrap()
            })
        });
        group.bench_function(BenchmarkId::new("hmac_sha256_ring", len), |b| {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
            b.iter(|| ring::hmac::sign(&key, black_box(&frame)))
        });
        group.bench_function(BenchmarkId::new("chacha20_poly1305_onetime", len), |b| {
            use chacha20::cipher::{KeyIvInit, StreamCipher};
            use poly1305::universal_hash::KeyInit as _;
            b.iter(|| {
                let mut one_time = [0u8; 32];
                let mut cipher = chacha20::ChaCha20::new(&secret.into(), &[5u8; 12].into());
                cipher.apply_keystream(&mut one_time);
                poly1305::Poly1305::new(&one_time.into()).compute_unpadded(black_box(&frame))
            })
        });
        group.bench_function(BenchmarkId::new("crc32c_table", len), |b| {
            let table = crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);
            b.iter(|| table.checksum(black_box(&frame)))
        });
        group.bench_function(BenchmarkId::new("crc32c_sse42", len), |b| {
            b.iter(|| crc32c::crc32c(black_box(&frame)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1));
    targets = macs
}
criterion_main!(benches);
