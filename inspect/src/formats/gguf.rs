//! GGUF models (llama.cpp, Ollama, LM Studio): the header parsed with bounds before anything
//! is read into memory, the tensors checked to lie inside the file, and the chat templates
//! (`tokenizer.chat_template`, `tokenizer.chat_template.NAME`: Jinja programs the server
//! runs) checked by [`chat_template`](super::chat_template).
//!
//! ```text
//!  "GGUF" │ version u32 (2, 3) │ tensors u64 │ metadata u64
//!  metadata: key (u64 length, bytes) │ type u32 │ value (strings: u64 length; arrays: type,
//!            u64 count, values)
//!  tensor infos: name │ dims u32 (≤ 4) │ each u64 │ ggml type u32 │ offset u64
//!  padding to general.alignment (32) │ tensor data
//! ```
//!
//! Refused: another version, more than [`MAX_TENSORS`] tensors or [`MAX_KEYS`] keys, a
//! string or array longer than what is left of the file, arrays nested more than
//! [`MAX_ARRAY_DEPTH`], a key or tensor name twice, an unknown value or tensor type, a
//! tensor whose size overflows, that is not a whole number of its type's blocks, or that
//! lies outside the data section, and a template the checker refuses.

use std::collections::HashSet;
use std::io::{self, Read};

use crate::inspector::{Inspector, Nested};
use crate::refusal::Refusal;
use crate::sniff::{Kind, Kinds};

use super::chat_template;

/// Most tensors (a large mixture-of-experts model has a few tens of thousands).
pub const MAX_TENSORS: u64 = 1 << 18;
/// Most metadata keys.
pub const MAX_KEYS: u64 = 1 << 16;
/// Longest key or tensor name.
pub const MAX_NAME: u64 = 1 << 16;
/// Longest chat template kept in memory to be checked.
pub const MAX_TEMPLATE: u64 = 1 << 20;
/// Arrays within arrays.
pub const MAX_ARRAY_DEPTH: u32 = 4;

/// GGUF models.
#[derive(Debug)]
pub struct GgufInspector;

impl Inspector for GgufInspector {
    fn name(&self) -> &'static str {
        "gguf"
    }

    fn claims(&self, kinds: Kinds, _head: &[u8], _path: &str) -> bool {
        kinds.has(Kind::Gguf)
    }

    fn inspect(
        &self,
        file: &mut dyn Read,
        path: &str,
        size: u64,
        nested: &mut Nested<'_>,
    ) -> Result<(), Refusal> {
        let mut r = Reader {
            inner: io::BufReader::with_capacity(64 << 10, file),
            at: 0,
            size,
            big_endian: false,
        };
        let summary = read(&mut r, &|| nested.clock().check(path))?;
        nested.note(
            path,
            "gguf",
            serde_json::json!({"version": summary.version, "tensors": summary.tensors,
                "metadata_keys": summary.keys,
                "chat_templates_checked": summary.templates.iter().take(32).collect::<Vec<_>>()}),
        );
        Ok(())
    }
}

/// What a GGUF file holds, as far as the gate looks.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub version: u32,
    pub tensors: u64,
    pub keys: u64,
    /// The keys of the chat templates checked.
    pub templates: Vec<String>,
}

fn bad(why: impl Into<String>) -> Refusal {
    Refusal::Gguf(why.into())
}

/// A reader that knows how much of the file is left.
struct Reader<R> {
    inner: R,
    at: u64,
    size: u64,
    /// gguf-py writes big-endian files too (its version then reads 0x03000000 here).
    big_endian: bool,
}

impl<R: Read> Reader<R> {
    fn left(&self) -> u64 {
        self.size.saturating_sub(self.at)
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], Refusal> {
        let mut b = [0u8; N];
        self.inner
            .read_exact(&mut b)
            .map_err(|_| bad("truncated"))?;
        self.at += N as u64;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, Refusal> {
        let b = self.bytes()?;
        Ok(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    fn u64(&mut self) -> Result<u64, Refusal> {
        let b = self.bytes()?;
        Ok(if self.big_endian {
            u64::from_be_bytes(b)
        } else {
            u64::from_le_bytes(b)
        })
    }

    /// A length that must fit in what is left of the file.
    fn length(&mut self, what: &str) -> Result<u64, Refusal> {
        let n = self.u64()?;
        if n > self.left() {
            return Err(bad(format!("{what} of {n} bytes, longer than the file")));
        }
        Ok(n)
    }

    fn skip(&mut self, n: u64) -> Result<(), Refusal> {
        let skipped = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        self.at += skipped;
        if skipped != n {
            return Err(bad("truncated"));
        }
        Ok(())
    }

    /// A string kept in memory, at most `max` bytes.
    fn string(&mut self, what: &str, max: u64) -> Result<String, Refusal> {
        let n = self.length(what)?;
        if n > max {
            return Err(bad(format!("{what} of {n} bytes (at most {max})")));
        }
        let mut buf = Vec::new();
        (&mut self.inner).take(n).read_to_end(&mut buf)?;
        self.at += buf.len() as u64;
        if buf.len() as u64 != n {
            return Err(bad("truncated"));
        }
        String::from_utf8(buf).map_err(|_| bad(format!("{what} that is not UTF-8")))
    }
}

/// Value types, and the size of the fixed-size ones.
fn fixed_size(value_type: u32) -> Option<u64> {
    match value_type {
        0 | 1 | 7 => Some(1), // u8, i8, bool
        2 | 3 => Some(2),     // u16, i16
        4..=6 => Some(4),     // u32, i32, f32
        10..=12 => Some(8),   // u64, i64, f64
        _ => None,
    }
}

const STRING: u32 = 8;
const ARRAY: u32 = 9;

/// Skips a value of `value_type` (strings and arrays bounded by the file).
fn skip_value<R: Read>(r: &mut Reader<R>, value_type: u32, depth: u32) -> Result<(), Refusal> {
    if let Some(n) = fixed_size(value_type) {
        return r.skip(n);
    }
    match value_type {
        STRING => {
            let n = r.length("a string")?;
            r.skip(n)
        }
        ARRAY => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(bad("arrays nested too deep"));
            }
            let element = r.u32()?;
            let count = r.u64()?;
            match fixed_size(element) {
                Some(n) => {
                    let total = count
                        .checked_mul(n)
                        .filter(|t| *t <= r.left())
                        .ok_or_else(|| bad("an array longer than the file"))?;
                    r.skip(total)
                }
                None => {
                    // Each element takes at least 8 bytes (a length or a count).
                    if count > r.left() / 8 {
                        return Err(bad("an array longer than the file"));
                    }
                    for _ in 0..count {
                        skip_value(r, element, depth + 1)?;
                    }
                    Ok(())
                }
            }
        }
        other => Err(bad(format!("a value of unknown type {other}"))),
    }
}

/// (bytes per block, elements per block) of a ggml tensor type; `None`: unknown or removed.
/// The same table as gguf-py's `GGML_QUANT_SIZES` (checked by `tests/gguf_interop.rs`).
pub fn ggml_type(t: u32) -> Option<(u64, u64)> {
    Some(match t {
        0 => (4, 1),      // F32
        1 => (2, 1),      // F16
        2 => (18, 32),    // Q4_0
        3 => (20, 32),    // Q4_1
        6 => (22, 32),    // Q5_0
        7 => (24, 32),    // Q5_1
        8 => (34, 32),    // Q8_0
        9 => (40, 32),    // Q8_1
        10 => (84, 256),  // Q2_K
        11 => (110, 256), // Q3_K
        12 => (144, 256), // Q4_K
        13 => (176, 256), // Q5_K
        14 => (210, 256), // Q6_K
        15 => (292, 256), // Q8_K
        16 => (66, 256),  // IQ2_XXS
        17 => (74, 256),  // IQ2_XS
        18 => (98, 256),  // IQ3_XXS
        19 => (50, 256),  // IQ1_S
        20 => (18, 32),   // IQ4_NL
        21 => (110, 256), // IQ3_S
        22 => (82, 256),  // IQ2_S
        23 => (136, 256), // IQ4_XS
        24 => (1, 1),     // I8
        25 => (2, 1),     // I16
        26 => (4, 1),     // I32
        27 => (8, 1),     // I64
        28 => (8, 1),     // F64
        29 => (56, 256),  // IQ1_M
        30 => (2, 1),     // BF16
        34 => (54, 256),  // TQ1_0
        35 => (66, 256),  // TQ2_0
        39 => (17, 32),   // MXFP4
        40 => (36, 64),   // NVFP4
        41 => (18, 128),  // Q1_0
        _ => return None,
    })
}

/// Parses the header and tensor infos of a GGUF stream, checks the templates and that every
/// tensor lies in the data section, and reads to the end.
fn read<R: Read>(
    r: &mut Reader<R>,
    in_time: &dyn Fn() -> Result<(), Refusal>,
) -> Result<Summary, Refusal> {
    if &r.bytes::<4>()? != b"GGUF" {
        return Err(bad("no magic"));
    }
    let mut version = r.u32()?;
    if !(2..=3).contains(&version) && (2..=3).contains(&version.swap_bytes()) {
        r.big_endian = true;
        version = version.swap_bytes();
    }
    if !(2..=3).contains(&version) {
        return Err(bad(format!("version {version} (2 and 3 are read)")));
    }
    let tensors = r.u64()?;
    let keys = r.u64()?;
    if tensors > MAX_TENSORS {
        return Err(bad(format!("{tensors} tensors (at most {MAX_TENSORS})")));
    }
    if keys > MAX_KEYS {
        return Err(bad(format!("{keys} metadata keys (at most {MAX_KEYS})")));
    }
    let mut summary = Summary {
        version,
        tensors,
        keys,
        templates: Vec::new(),
    };
    let mut alignment = 32u64;
    // Names are remembered by a keyed hash (`HashSet`'s SipHash, keyed at random): a file of
    // many long names costs 8 bytes each, not the names.
    let mut seen = HashSet::new();
    for _ in 0..keys {
        in_time()?;
        let key = r.string("a key", MAX_NAME)?;
        plain_name(&key, "key")?;
        if !seen.insert(hash_of(&key)) {
            return Err(bad(format!("the key {key} twice")));
        }
        let value_type = r.u32()?;
        let is_template =
            key == "tokenizer.chat_template" || key.starts_with("tokenizer.chat_template.");
        if is_template {
            if value_type != STRING {
                return Err(bad(format!("{key} that is not a string")));
            }
            let template = r.string(&key, MAX_TEMPLATE)?;
            chat_template::check(&template)
                .map_err(|why| Refusal::Gguf(format!("{key} refused: {why}")))?;
            summary.templates.push(key);
        } else if key == "general.alignment" {
            if value_type != 4 {
                return Err(bad("general.alignment that is not a u32"));
            }
            alignment = u64::from(r.u32()?);
            if alignment == 0 || !alignment.is_power_of_two() {
                return Err(bad(format!("alignment {alignment}")));
            }
        } else {
            skip_value(r, value_type, 0)?;
        }
    }
    let mut infos = Vec::new();
    let mut names = HashSet::new();
    for _ in 0..tensors {
        in_time()?;
        let name = r.string("a tensor name", MAX_NAME)?;
        plain_name(&name, "tensor name")?;
        if !names.insert(hash_of(&name)) {
            return Err(bad(format!("the tensor {name} twice")));
        }
        let dims = r.u32()?;
        if !(1..=4).contains(&dims) {
            return Err(bad(format!("tensor {name}: {dims} dimensions")));
        }
        let mut elements = 1u64;
        let mut first = 0;
        for d in 0..dims {
            let n = r.u64()?;
            if d == 0 {
                first = n;
            }
            elements = elements
                .checked_mul(n)
                .filter(|e| *e < 1 << 62)
                .ok_or_else(|| bad(format!("tensor {name}: its size overflows")))?;
        }
        let t = r.u32()?;
        let (block_bytes, block_elements) =
            ggml_type(t).ok_or_else(|| bad(format!("tensor {name}: unknown type {t}")))?;
        if first % block_elements != 0 {
            return Err(bad(format!(
                "tensor {name}: a row of {first} is not whole blocks of {block_elements}"
            )));
        }
        let bytes = (elements / block_elements)
            .checked_mul(block_bytes)
            .ok_or_else(|| bad(format!("tensor {name}: its size overflows")))?;
        let offset = r.u64()?;
        if offset % alignment != 0 {
            return Err(bad(format!("tensor {name}: offset {offset} not aligned")));
        }
        infos.push((infos.len(), offset, bytes));
    }
    let data_start = r.at.div_ceil(alignment) * alignment;
    let data_len = r
        .size
        .checked_sub(data_start)
        .ok_or_else(|| bad("the data section starts after the end of the file"))?;
    for (index, offset, bytes) in &infos {
        if offset.checked_add(*bytes).is_none_or(|end| end > data_len) {
            return Err(bad(format!(
                "tensor {index} lies outside the data section ({bytes} bytes at {offset} of {data_len})"
            )));
        }
    }
    let rest = r.left();
    r.skip(rest)?;
    Ok(summary)
}

/// A key or tensor name must be text without control characters: llama.cpp compares keys
/// as C strings, so `tokenizer.chat_template\0x` would be the template key, unchecked.
fn plain_name(name: &str, what: &str) -> Result<(), Refusal> {
    if name.chars().any(char::is_control) {
        return Err(bad(format!("a {what} with a control character: {name:?}")));
    }
    Ok(())
}

fn hash_of(name: &str) -> u64 {
    use std::hash::BuildHasher;
    thread_local! {
        static KEYS: std::collections::hash_map::RandomState = std::collections::hash_map::RandomState::new();
    }
    KEYS.with(|k| k.hash_one(name))
}

/// Reads a GGUF file's header from `bytes` (for `sluice-inspect` and tests).
pub fn summary(bytes: &[u8]) -> Result<Summary, Refusal> {
    read(
        &mut Reader {
            inner: bytes,
            at: 0,
            size: bytes.len() as u64,
            big_endian: false,
        },
        &|| Ok(()),
    )
}
