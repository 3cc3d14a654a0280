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
//! - safetensors: 1 024 tensors over the whole size; only the header is read;
//! - GGUF: a ChatML template and 1 024 F16 tensors, through the whole gate (the header
//!   parsed and checked, the data read to its end);
//! - ONNX: 256 initializers of raw data in one graph, through the whole gate (the protobuf
//!   walked, the data skipped).

use std::time::Instant;

use sluice_inspect::policy::Policy;
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

fn gguf_file(size: usize) -> Vec<u8> {
    let s = |out: &mut Vec<u8>, text: &[u8]| {
        out.extend_from_slice(&(text.len() as u64).to_le_bytes());
        out.extend_from_slice(text);
    };
    let tensors = 1024usize;
    let per = (size / tensors / 64) * 64; // bytes of each F16 tensor, 32-aligned
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors as u64).to_le_bytes());
    out.extend_from_slice(&2u64.to_le_bytes());
    s(&mut out, b"general.architecture");
    out.extend_from_slice(&8u32.to_le_bytes());
    s(&mut out, b"llama");
    s(&mut out, b"tokenizer.chat_template");
    out.extend_from_slice(&8u32.to_le_bytes());
    s(
        &mut out,
        b"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    );
    for i in 0..tensors {
        s(&mut out, format!("blk.{i}.weight").as_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&((per / 2) as u64).to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes()); // F16
        out.extend_from_slice(&((i * per) as u64).to_le_bytes());
    }
    out.resize(out.len().div_ceil(32) * 32, 0);
    out.resize(out.len() + tensors * per, 0x3c);
    out
}

fn onnx_file(size: usize) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn field(out: &mut Vec<u8>, number: u64, payload: &[u8]) {
        varint(out, number << 3 | 2);
        varint(out, payload.len() as u64);
        out.extend_from_slice(payload);
    }
    let tensors = 256usize;
    let per = size / tensors - 64;
    let mut graph = Vec::new();
    let mut node = Vec::new();
    field(&mut node, 4, b"Add");
    field(&mut graph, 1, &node);
    for i in 0..tensors {
        let mut t = vec![0x08];
        varint(&mut t, (per / 4) as u64); // dims
        t.extend_from_slice(&[0x10, 0x01]); // FLOAT
        field(&mut t, 8, format!("w{i}").as_bytes());
        field(&mut t, 9, &vec![0x3f; per]); // raw_data
        field(&mut graph, 5, &t);
    }
    let mut model = vec![0x08, 0x08];
    field(&mut model, 2, b"bench");
    field(&mut model, 7, &graph);
    model
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
    drop(s);

    let Ok(policy) = Policy::parse("quarantine = \"q\"\n") else {
        unreachable!("the built-in policy parses")
    };
    for (what, name, file) in [
        ("gguf, whole gate", "model.gguf", gguf_file(size)),
        ("onnx, whole gate", "model.onnx", onnx_file(size)),
    ] {
        let len = file.len() as u64;
        let check = || policy.inspect_all(&mut std::io::Cursor::new(&file[..]), name, len);
        assert_eq!(
            check().map_err(|e| e.to_string()).map(|f| f.len()),
            Ok(1),
            "{what}"
        );
        time(what, file.len(), check);
    }
}
