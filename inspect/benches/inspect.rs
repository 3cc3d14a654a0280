//! What the content gate costs: pickle scanning and safetensors validation throughput on
//! 1 GiB inputs held in memory (CPU only; the receiver reads from the page cache).
//!
//! ```text
//! cargo bench -p sluice-inspect --bench inspect [-- SIZE_MIB]
//! ```
//!
//! - pickle, payload-heavy: a NumPy-style array pickle (protocol 4), the data in 1 MiB
//!   `BINBYTES8` chunks inside a list: what a real checkpoint looks like;
//! - pickle, opcode-dense: a list of small integers (2 bytes an element, in `APPENDS` batches
//!   of 1 000 as `pickle` writes them): the worst case;
//! - safetensors: 1 024 tensors over the whole size; only the header is read.

use std::time::Instant;

use sluice_inspect::{pickle, safetensors};

fn mib_per_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

fn payload_pickle(size: usize) -> Vec<u8> {
    let mut p =
        b"\x80\x04\x8c\x15numpy.core.multiarray\x94\x8c\x0c_reconstruct\x94\x93\x94]\x94(".to_vec();
    let chunk = 1 << 20;
    while p.len() + chunk + 16 < size {
        p.push(0x8e);
        p.extend_from_slice(&(chunk as u64).to_le_bytes());
        p.extend(std::iter::repeat_n(0x5a, chunk));
    }
    p.extend_from_slice(b"e\x85R.");
    p
}

/// As `pickle` writes a long list: `APPENDS` batches of 1 000 small integers.
fn dense_pickle(size: usize) -> Vec<u8> {
    let mut p = b"\x80\x04]".to_vec();
    while p.len() + 2_010 < size {
        p.push(b'(');
        for _ in 0..1000 {
            p.extend_from_slice(b"K\x07");
        }
        p.push(b'e');
    }
    p.push(b'.');
    p
}

fn safetensors_file(size: usize) -> Vec<u8> {
    let tensors = 1024usize;
    let per = (size / tensors / 4) * 4;
    let mut header = String::from("{");
    for i in 0..tensors {
        let (b, e) = (i * per, (i + 1) * per);
        header.push_str(&format!(
            "\"layer.{i}\":{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{b},{e}]}},",
            per / 4
        ));
    }
    header.pop();
    header.push('}');
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(bytes.len() + tensors * per, 0);
    bytes
}

fn time<T>(what: &str, bytes: usize, run: impl Fn() -> T) {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        std::hint::black_box(run());
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!(
        "{what:<28} {:>6} MiB  {:>8.3} s  {:>9.0} MiB/s (best of 3)",
        bytes >> 20,
        best,
        mib_per_s(bytes, best)
    );
}

fn main() {
    let mib: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1024);
    let size = mib << 20;
    let allow = pickle::AllowList::default();

    let p = payload_pickle(size);
    assert!(pickle::scan(&p[..], &allow).is_ok());
    time("pickle scan, payload-heavy", p.len(), || {
        pickle::scan(&p[..], &allow)
    });
    drop(p);

    let p = dense_pickle(size);
    assert!(pickle::scan(&p[..], &allow).is_ok());
    time("pickle scan, opcode-dense", p.len(), || {
        pickle::scan(&p[..], &allow)
    });
    drop(p);

    let s = safetensors_file(size);
    let len = s.len() as u64;
    assert!(safetensors::validate(&s[..], len).is_ok());
    time("safetensors validation", s.len(), || {
        safetensors::validate(&s[..], len)
    });
}
