//! ONNX models: the protobuf walked with bounds (never decoded into memory), every tensor
//! anywhere in it — graph initializers, node attributes, subgraphs of `If`/`Loop`/`Scan`,
//! functions, training graphs — checked for where its data lives.
//!
//! - A tensor's `external_data` location is a path the runtime opens beside the model:
//!   it must be a plain relative path (no `/` at the start, no `..`, no backslash, no
//!   control characters), so the data stays inside the model's own directory (path
//!   traversal, CVE-2024-27318 and CVE-2024-5187 in `onnx`).
//! - Operators from a domain outside ONNX's own (`""`, `ai.onnx`, `ai.onnx.ml`,
//!   `ai.onnx.training`, `ai.onnx.preview.training`, `com.microsoft`) are custom operators,
//!   run by code the runtime loads; `[models] onnx_custom_operators = "refuse"` refuses them.
//! - Refused: a protobuf that does not parse (a length past its message, a group, a number
//!   longer than 10 bytes), messages nested deeper than [`MAX_DEPTH`].
//!
//! A file is an ONNX model by content when its first fields are a `ModelProto`'s (field
//! numbers and wire types of the schema), or by its `.onnx` name.

use std::io::{self, Read};

use crate::inspector::{Inspector, Nested};
use crate::refusal::Refusal;
use crate::sniff::Kinds;

/// Messages within messages (a graph in a node's attribute is three levels down).
pub const MAX_DEPTH: u32 = 64;
/// Longest string kept to be checked (a domain, an external data key or location).
const MAX_KEPT: u64 = 4096;

/// Operator domains of ONNX itself and of ONNX Runtime's contrib operators.
const STANDARD_DOMAINS: &[&str] = &[
    "",
    "ai.onnx",
    "ai.onnx.ml",
    "ai.onnx.training",
    "ai.onnx.preview.training",
    "com.microsoft",
];

/// What to do with custom operator domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CustomOperators {
    Allow,
    Refuse,
}

/// ONNX models.
#[derive(Debug)]
pub struct OnnxInspector {
    pub custom_operators: CustomOperators,
}

impl Inspector for OnnxInspector {
    fn name(&self) -> &'static str {
        "onnx"
    }

    fn claims(&self, _kinds: Kinds, head: &[u8], path: &str) -> bool {
        path.to_ascii_lowercase().ends_with(".onnx") || starts_like_a_model(head)
    }

    fn inspect(
        &self,
        file: &mut dyn Read,
        path: &str,
        size: u64,
        nested: &mut Nested<'_>,
    ) -> Result<(), Refusal> {
        let mut walker = Walker {
            inner: io::BufReader::with_capacity(64 << 10, file),
            at: 0,
            found: Found::default(),
        };
        walker.message(Message::Model, size, 0, &|| nested.clock().check(path))?;
        if self.custom_operators == CustomOperators::Refuse {
            if let Some(domain) = walker.found.custom_domains.first() {
                return Err(bad(format!("a custom operator domain {domain:?}")));
            }
        }
        nested.note(
            path,
            "onnx",
            serde_json::json!({"custom_operator_domains":
                walker.found.custom_domains.iter().take(32).collect::<Vec<_>>()}),
        );
        Ok(())
    }
}

fn bad(why: impl Into<String>) -> Refusal {
    Refusal::Onnx(why.into())
}

/// The protobuf messages the walk descends into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Message {
    Model,
    Graph,
    Node,
    Attribute,
    Tensor,
    SparseTensor,
    Function,
    TrainingInfo,
    StringEntry,
}

/// What a length-delimited field of a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Sub(Message),
    /// A string the checks read.
    Kept,
    Skip,
}

/// The schema: which fields hold the messages the walk must see (everything else skipped).
fn field(message: Message, number: u64) -> Field {
    use Message::*;
    match (message, number) {
        (Model, 7) => Field::Sub(Graph),
        (Model, 20) => Field::Sub(TrainingInfo),
        (Model, 25) => Field::Sub(Function),
        (TrainingInfo, 1 | 3) => Field::Sub(Graph),
        (Graph, 1) => Field::Sub(Node),
        (Graph, 5) => Field::Sub(Tensor),
        (Graph, 15) => Field::Sub(SparseTensor),
        (Function, 7) => Field::Sub(Node),
        (Function, 11) => Field::Sub(Attribute),
        (Node, 5) => Field::Sub(Attribute),
        (Node, 7) => Field::Kept, // domain
        (Attribute, 5 | 10) => Field::Sub(Tensor),
        (Attribute, 6 | 11) => Field::Sub(Graph),
        (Attribute, 22 | 23) => Field::Sub(SparseTensor),
        (SparseTensor, 1 | 2) => Field::Sub(Tensor),
        (Tensor, 13) => Field::Sub(StringEntry), // external_data
        (StringEntry, 1 | 2) => Field::Kept,
        _ => Field::Skip,
    }
}

/// What the walk found that a policy may act on.
#[derive(Debug, Default)]
struct Found {
    custom_domains: Vec<String>,
}

struct Walker<R> {
    inner: R,
    at: u64,
    found: Found,
}

impl<R: Read> Walker<R> {
    fn byte(&mut self) -> Result<u8, Refusal> {
        let mut b = [0u8; 1];
        self.inner
            .read_exact(&mut b)
            .map_err(|_| bad("truncated"))?;
        self.at += 1;
        Ok(b[0])
    }

    fn varint(&mut self) -> Result<u64, Refusal> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(bad("a number longer than 10 bytes"))
    }

    fn skip(&mut self, n: u64) -> Result<(), Refusal> {
        let skipped = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())?;
        self.at += skipped;
        if skipped != n {
            return Err(bad("truncated"));
        }
        Ok(())
    }

    fn kept(&mut self, n: u64) -> Result<String, Refusal> {
        if n > MAX_KEPT {
            return Err(bad(format!("a name or location of {n} bytes")));
        }
        let mut buf = Vec::new();
        (&mut self.inner).take(n).read_to_end(&mut buf)?;
        self.at += buf.len() as u64;
        if buf.len() as u64 != n {
            return Err(bad("truncated"));
        }
        String::from_utf8(buf).map_err(|_| bad("a name that is not UTF-8"))
    }

    /// Walks the fields of `message` up to byte `end`; the kept strings of a string entry.
    fn message(
        &mut self,
        message: Message,
        end: u64,
        depth: u32,
        in_time: &dyn Fn() -> Result<(), Refusal>,
    ) -> Result<Vec<(u64, String)>, Refusal> {
        if depth > MAX_DEPTH {
            return Err(bad(format!("messages nested more than {MAX_DEPTH} deep")));
        }
        in_time()?;
        let mut kept = Vec::new();
        let mut external = Vec::new();
        while self.at < end {
            let tag = self.varint()?;
            let number = tag >> 3;
            match tag & 7 {
                0 => drop(self.varint()?),
                1 => self.skip(8)?,
                5 => self.skip(4)?,
                2 => {
                    let len = self.varint()?;
                    let stop = self
                        .at
                        .checked_add(len)
                        .filter(|s| *s <= end)
                        .ok_or_else(|| bad("a field longer than its message"))?;
                    match field(message, number) {
                        Field::Sub(sub) => {
                            let entry = self.message(sub, stop, depth + 1, in_time)?;
                            if message == Message::Tensor {
                                external.push(entry);
                            }
                        }
                        Field::Kept => {
                            let text = self.kept(len)?;
                            if message == Message::Node
                                && !STANDARD_DOMAINS.contains(&text.as_str())
                                && !self.found.custom_domains.contains(&text)
                            {
                                self.found.custom_domains.push(text.clone());
                            }
                            kept.push((number, text));
                        }
                        Field::Skip => self.skip(len)?,
                    }
                }
                other => return Err(bad(format!("wire type {other} (groups are not read)"))),
            }
        }
        if self.at != end {
            return Err(bad("a field longer than its message"));
        }
        for entry in external {
            check_external(&entry)?;
        }
        Ok(kept)
    }
}

/// An `external_data` entry: its `location` must stay in the model's directory.
fn check_external(entry: &[(u64, String)]) -> Result<(), Refusal> {
    let key = entry.iter().find(|(n, _)| *n == 1).map(|(_, k)| k.as_str());
    let value = entry.iter().find(|(n, _)| *n == 2).map(|(_, v)| v.as_str());
    if key == Some("location") {
        let location = value.unwrap_or("");
        sluice_common::paths::validate_object_path(location).map_err(|e| {
            bad(format!(
                "external data at {location:?}, outside the model's directory ({e})"
            ))
        })?;
    }
    Ok(())
}

/// Whether `head` (a file's first bytes: the whole file if shorter than 512) parses as the
/// first fields of a `ModelProto`: each field number with the wire type the schema gives
/// it, at least two whole fields, and lengths that fit in the file (a text file starting
/// `r` reads as field 14 for one byte, and fails at once after).
fn starts_like_a_model(head: &[u8]) -> bool {
    let whole_file = head.len() < crate::sniff::SNIFF_LEN;
    let mut at = 0usize;
    let mut fields = 0;
    let varint = |at: &mut usize| -> Option<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = *head.get(*at)?;
            *at += 1;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    };
    while at < head.len() {
        let Some(tag) = varint(&mut at) else {
            return !whole_file && fields >= 2;
        };
        let expected = match tag >> 3 {
            1 | 5 => 0,
            2..=4 | 6..=8 | 14 | 20 | 25 => 2,
            _ => return false,
        };
        if tag & 7 != expected {
            return false;
        }
        let value = varint(&mut at);
        if expected == 2 {
            let Some(len) = value else {
                return !whole_file && fields >= 2;
            };
            at = at.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
            if at > head.len() {
                return !whole_file && fields >= 2;
            }
        } else if value.is_none() {
            return !whole_file && fields >= 2;
        }
        fields += 1;
    }
    fields >= 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_bytes(number: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, (number << 3) | 2);
        put_varint(&mut out, payload.len() as u64);
        out.extend_from_slice(payload);
        out
    }

    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    /// A model whose graph has one initializer stored at `location`, and one node of
    /// `domain`.
    fn model(location: &str, domain: &str) -> Vec<u8> {
        let entry = [
            field_bytes(1, b"location"),
            field_bytes(2, location.as_bytes()),
        ]
        .concat();
        let tensor = [field_bytes(8, b"w"), field_bytes(13, &entry), vec![0x70, 1]].concat();
        let node = [field_bytes(4, b"Relu"), field_bytes(7, domain.as_bytes())].concat();
        let graph = [field_bytes(1, &node), field_bytes(5, &tensor)].concat();
        [vec![0x08, 0x08], field_bytes(7, &graph)].concat()
    }

    fn walk(bytes: &[u8]) -> Result<Found, Refusal> {
        let mut w = Walker {
            inner: bytes,
            at: 0,
            found: Found::default(),
        };
        w.message(Message::Model, bytes.len() as u64, 0, &|| Ok(()))?;
        Ok(w.found)
    }

    #[test]
    fn external_data_must_stay_beside_the_model() {
        assert!(walk(&model("weights.bin", "")).is_ok());
        assert!(walk(&model("data/weights.bin", "")).is_ok());
        for location in ["../../etc/passwd", "/etc/passwd", "a/../../b", "..\\x", ""] {
            let err = walk(&model(location, "")).unwrap_err().to_string();
            assert!(
                err.contains("outside the model's directory"),
                "{location}: {err}"
            );
        }
        assert!(starts_like_a_model(&model("w", "")));
        assert!(!starts_like_a_model(b"The quick brown fox"));
        assert!(!starts_like_a_model(b"{\"a\": 1}"));
        assert!(
            !starts_like_a_model(b"run 7"),
            "a field longer than the file"
        );
    }

    #[test]
    fn custom_domains_are_found_and_damage_is_refused() {
        let found = walk(&model("w", "com.evil.ops")).unwrap();
        assert_eq!(found.custom_domains, ["com.evil.ops"]);
        assert!(walk(&model("w", "ai.onnx.ml"))
            .unwrap()
            .custom_domains
            .is_empty());
        let mut cut = model("w", "");
        cut.truncate(cut.len() - 3);
        assert!(walk(&cut).is_err());
        // A length past its message.
        assert!(walk(&[0x3a, 0x05, 0x0a, 0x09, 0, 0, 0]).is_err());
        // Subgraphs without end (graph → node → attribute → graph …): refused at the depth
        // bound, not by the stack.
        let mut graph = Vec::new();
        for _ in 0..100 {
            graph = field_bytes(1, &field_bytes(5, &field_bytes(6, &graph)));
        }
        let err = walk(&field_bytes(7, &graph)).unwrap_err().to_string();
        assert!(err.contains("nested more than 64 deep"), "{err}");
    }
}
