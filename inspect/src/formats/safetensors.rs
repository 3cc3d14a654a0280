//! safetensors validation: the header must describe the data section exactly.
//!
//! ```text
//!  u64 LE N | N bytes of JSON header (UTF-8, may end in spaces) | data section
//!  header = { "NAME": {"dtype": "F32", "shape": [2, 3], "data_offsets": [BEGIN, END]}, …,
//!             "__metadata__": {"key": "value", …} (optional) }
//! ```
//!
//! A file passes only if N is within bounds, the header is valid JSON of that shape with no
//! name twice, every dtype is known, every tensor's byte range is its dtype's size times the
//! product of its shape, and the ranges, sorted, are contiguous from 0 and end exactly at the
//! end of the file (no gap, no overlap, no trailing bytes). Only the header is read: the cost
//! does not grow with the tensors.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Read;

use serde_json::Value;

use crate::inspector::{Inspector, Nested};
use crate::refusal::Refusal;
use crate::sniff::{Kind, Kinds};

/// safetensors files: by content, and any file named `.safetensors` (one that is not one is
/// refused by the validation).
#[derive(Debug)]
pub struct SafetensorsInspector;

impl Inspector for SafetensorsInspector {
    fn name(&self) -> &'static str {
        "safetensors"
    }

    fn claims(&self, kinds: Kinds, _head: &[u8], path: &str) -> bool {
        kinds.has(Kind::Safetensors) || path.ends_with(".safetensors")
    }

    fn inspect(
        &self,
        file: &mut dyn Read,
        path: &str,
        size: u64,
        nested: &mut Nested<'_>,
    ) -> Result<(), Refusal> {
        let valid = validate(file, size)?;
        nested.note(
            path,
            "safetensors",
            serde_json::json!({"tensors": valid.tensors, "dtypes": valid.dtypes,
                "data_bytes": valid.data_len}),
        );
        Ok(())
    }
}

/// Longest header accepted. The format's own library allows 100 MB; real headers are well
/// under 1 MiB (a few hundred bytes a tensor), and the parsed JSON takes several times its
/// size in memory, so the gate stops at 16 MiB.
pub const MAX_HEADER_LEN: u64 = 16 << 20;

/// What a valid file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    /// Tensors described.
    pub tensors: usize,
    /// Bytes of the data section.
    pub data_len: u64,
    /// Tensors per dtype.
    pub dtypes: std::collections::BTreeMap<String, usize>,
}

/// Bytes per element of a safetensors dtype.
fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" | "C64" => 8,
        _ => return None,
    })
}

fn invalid(why: impl Into<String>) -> Refusal {
    Refusal::Safetensors(why.into())
}

/// Validates a safetensors file of `file_len` bytes read from its start.
pub fn validate(mut reader: impl Read, file_len: u64) -> Result<Validated, Refusal> {
    let mut len = [0u8; 8];
    reader
        .read_exact(&mut len)
        .map_err(|_| invalid("shorter than its 8-byte header length"))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER_LEN || header_len > file_len.saturating_sub(8) {
        return Err(invalid(format!(
            "header length {header_len} out of bounds (file of {file_len} bytes)"
        )));
    }
    let mut header = Vec::new();
    (&mut reader).take(header_len).read_to_end(&mut header)?;
    if header.len() as u64 != header_len {
        return Err(invalid("the file ends inside its header"));
    }
    if header.first() != Some(&b'{') {
        return Err(invalid("the header is not a JSON object"));
    }
    let text = std::str::from_utf8(&header).map_err(|_| invalid("the header is not UTF-8"))?;
    let entries: Entries = serde_json::from_str(text.trim_end_matches(' '))
        .map_err(|e| invalid(format!("the header is not valid JSON: {e}")))?;
    let data_len = file_len - 8 - header_len;
    check_entries(&entries.0, data_len)
}

/// The header's entries in file order, duplicates kept (serde_json's map would drop them).
struct Entries(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// One tensor's byte range, for the coverage check.
struct Range {
    begin: u64,
    end: u64,
}

fn check_entries(entries: &[(String, Value)], data_len: u64) -> Result<Validated, Refusal> {
    let mut names = BTreeSet::new();
    let mut ranges = Vec::with_capacity(entries.len());
    let mut dtypes = std::collections::BTreeMap::new();
    for (name, value) in entries {
        if !names.insert(name.as_str()) {
            return Err(invalid(format!("{name:?} appears twice")));
        }
        if name == "__metadata__" {
            let ok = value
                .as_object()
                .is_some_and(|m| m.values().all(Value::is_string));
            if !ok {
                return Err(invalid("__metadata__ is not a map of strings"));
            }
            continue;
        }
        ranges.push(tensor_range(name, value)?);
        if let Some(dtype) = value.get("dtype").and_then(Value::as_str) {
            *dtypes.entry(dtype.to_string()).or_insert(0) += 1;
        }
    }
    ranges.sort_by_key(|r| (r.begin, r.end));
    let mut next = 0u64;
    for r in &ranges {
        if r.begin != next {
            return Err(invalid(if r.begin < next {
                format!("tensor byte ranges overlap at {}", r.begin)
            } else {
                format!("a gap in the data section at {next}")
            }));
        }
        next = r.end;
    }
    if next != data_len {
        return Err(invalid(format!(
            "the tensors cover {next} bytes of a {data_len}-byte data section"
        )));
    }
    Ok(Validated {
        tensors: ranges.len(),
        data_len,
        dtypes,
    })
}

fn tensor_range(name: &str, value: &Value) -> Result<Range, Refusal> {
    let fields = value
        .as_object()
        .ok_or_else(|| invalid(format!("{name:?} is not an object")))?;
    if let Some(extra) = fields
        .keys()
        .find(|k| !matches!(k.as_str(), "dtype" | "shape" | "data_offsets"))
    {
        return Err(invalid(format!("{name:?} has an unknown field {extra:?}")));
    }
    let dtype = fields.get("dtype").and_then(Value::as_str).unwrap_or("");
    let size = dtype_size(dtype)
        .ok_or_else(|| invalid(format!("{name:?} has unknown dtype {dtype:?}")))?;
    let shape = fields
        .get("shape")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid(format!("{name:?} has no shape")))?;
    let mut bytes = size;
    for dim in shape {
        let dim = dim.as_u64().ok_or_else(|| {
            invalid(format!(
                "{name:?} has a shape that is not unsigned integers"
            ))
        })?;
        bytes = bytes
            .checked_mul(dim)
            .ok_or_else(|| invalid(format!("{name:?} has a shape too large")))?;
    }
    let offsets = fields
        .get("data_offsets")
        .and_then(Value::as_array)
        .and_then(|o| match o.as_slice() {
            [b, e] => Some((b.as_u64()?, e.as_u64()?)),
            _ => None,
        })
        .ok_or_else(|| invalid(format!("{name:?} has no [begin, end] data_offsets")))?;
    let (begin, end) = offsets;
    if end < begin || end - begin != bytes {
        return Err(invalid(format!(
            "{name:?} spans {begin}..{end}, its dtype and shape need {bytes} bytes"
        )));
    }
    Ok(Range { begin, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file of `header` (JSON) and `data_len` zero bytes.
    fn file(header: &str, data_len: usize) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, data_len));
        bytes
    }

    fn check(bytes: &[u8]) -> Result<Validated, String> {
        validate(bytes, bytes.len() as u64).map_err(|e| e.to_string())
    }

    const GOOD: &str = r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F16","shape":[3],"data_offsets":[24,30]},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}"#;

    #[test]
    fn a_file_whose_header_describes_its_data_exactly_passes() {
        assert_eq!(
            check(&file(GOOD, 30)).unwrap(),
            Validated {
                tensors: 2,
                data_len: 30,
                dtypes: [("F16".to_string(), 1), ("F32".to_string(), 1)].into(),
            }
        );
        // Padding spaces after the JSON are allowed, as the format says.
        assert!(check(&file(&format!("{GOOD}    "), 30)).is_ok());
    }

    #[test]
    fn every_inconsistency_is_refused_with_its_reason() {
        for (header, data, phrase) in [
            (GOOD, 31, "cover 30 bytes of a 31-byte data section"),
            (GOOD, 29, "cover 30 bytes of a 29-byte data section"),
            (
                r#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"b":{"dtype":"F16","shape":[3],"data_offsets":[20,26]}}"#,
                26,
                "overlap",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[2],"data_offsets":[10,12]}}"#,
                12,
                "a gap",
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}}"#,
                20,
                "need 24 bytes",
            ),
            (
                r#"{"a":{"dtype":"F99","shape":[1],"data_offsets":[0,4]}}"#,
                4,
                "unknown dtype",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#,
                2,
                "appears twice",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[18446744073709551615,2],"data_offsets":[0,1]}}"#,
                1,
                "too large",
            ),
            (r#"{"a":[1,2]"#, 0, "not valid JSON"),
            (r#"["a"]"#, 0, "not a JSON object"),
        ] {
            let err = check(&file(header, data)).unwrap_err();
            assert!(err.contains(phrase), "{header}: {err}");
            assert!(err.starts_with("safetensors invalid: "), "{err}");
        }
        let mut huge = file(GOOD, 30);
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(check(&huge).unwrap_err().contains("header length"));
        assert!(check(&[1, 2, 3]).unwrap_err().contains("8-byte"));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = check(&bytes);
        }
    }
}
