//! What the gate saw in one file: the formats that checked it (its types by content) and
//! what each found — a pickle's imports, a safetensors file's tensors and dtypes, a GGUF
//! file's chat templates, an ONNX model's operator domains. `sluice-inspect` prints it; the
//! receiver keeps it beside a quarantined file as `NAME.report.json`, so the reviewer of a
//! refusal sees what the gate saw, and a reviewer on the low side sees it before sending.

use serde::Serialize;
use serde_json::Value;

/// Most findings kept for one file (an archive of many models): beyond, only counted.
pub const MAX_FINDINGS: usize = 1000;
/// Most bytes of findings kept for one file (as JSON): beyond, only counted.
pub const MAX_FINDINGS_BYTES: usize = 1 << 20;
/// Longest text kept in a finding (a name, a key, an archive member's path), in bytes.
pub const MAX_TEXT: usize = 256;
/// Most items kept in a list of a finding.
pub const MAX_ITEMS: usize = 32;

/// One format's findings on the file or one of its archive members.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// The file, or `archive!member`.
    pub at: String,
    /// The format that looked.
    pub format: &'static str,
    /// What it found: a JSON object.
    pub facts: Value,
}

/// The gate's verdict on a file, and what it saw on the way.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub path: String,
    pub size: u64,
    /// `admitted` or `refused`.
    pub verdict: &'static str,
    /// The refusal, if refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The formats that checked the file itself, in order (a polyglot has several).
    pub formats: Vec<&'static str>,
    /// What they found, the file's and its members', as far as the gate got.
    pub findings: Vec<Finding>,
    /// Findings past [`MAX_FINDINGS`], not kept.
    #[serde(skip_serializing_if = "is_zero")]
    pub findings_dropped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Report {
    /// Whether the gate admits the file.
    pub fn admitted(&self) -> bool {
        self.reason.is_none()
    }

    /// The report as lines for a person: the verdict, then one indented line per finding.
    pub fn text(&self) -> String {
        let mut out = match (&self.reason, self.formats.as_slice()) {
            (Some(reason), _) => format!("{}: refused: {reason}", self.path),
            (None, []) => format!("{}: admitted", self.path),
            (None, formats) => format!("{}: admitted ({})", self.path, formats.join(", ")),
        };
        for f in &self.findings {
            let facts = match &f.facts {
                Value::Object(map) => map
                    .iter()
                    .map(|(k, v)| format!("{k} {}", short(v)))
                    .collect::<Vec<_>>()
                    .join(", "),
                other => short(other),
            };
            out.push_str(&format!("\n  {} [{}] {facts}", f.at, f.format));
        }
        if self.findings_dropped > 0 {
            out.push_str(&format!(
                "\n  ({} more findings not kept)",
                self.findings_dropped
            ));
        }
        out
    }
}

/// A JSON value as text, strings unquoted.
fn short(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(short).collect::<Vec<_>>().join(" "),
        other => other.to_string(),
    }
}

/// The findings of one file's inspection, bounded: what a file's author chose (member names,
/// template keys, operator domains) is escaped and clipped, so a report never holds more than
/// [`MAX_FINDINGS`] findings or [`MAX_FINDINGS_BYTES`] bytes, nor a control character.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    pub kept: Vec<Finding>,
    pub dropped: u64,
    bytes: usize,
}

impl Findings {
    pub fn note(&mut self, at: &str, format: &'static str, facts: Value) {
        let finding = Finding {
            at: clip(at, 4 * MAX_TEXT),
            format,
            facts: bounded(facts),
        };
        let size = finding.at.len() + finding.facts.to_string().len();
        if self.kept.len() < MAX_FINDINGS && self.bytes + size <= MAX_FINDINGS_BYTES {
            self.bytes += size;
            self.kept.push(finding);
        } else {
            self.dropped += 1;
        }
    }
}

/// `text` escaped (control and look-alike characters) and cut at `max` bytes, `…` marking
/// the cut: for text a file's or certificate's author chose.
pub(crate) fn clip(text: &str, max: usize) -> String {
    // Escaping only grows text: escape no more than the first `max` bytes of it.
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut shown = sluice_common::paths::escaped(text.get(..end).unwrap_or_default());
    let mut cut = shown.len().min(max);
    while !shown.is_char_boundary(cut) {
        cut -= 1;
    }
    if cut < shown.len() || end < text.len() {
        shown.truncate(cut);
        shown.push('…');
    }
    shown
}

/// `value` with every text clipped to [`MAX_TEXT`] and every list and map to [`MAX_ITEMS`].
fn bounded(value: Value) -> Value {
    match value {
        Value::String(s) => Value::String(clip(&s, MAX_TEXT)),
        Value::Array(items) => {
            Value::Array(items.into_iter().take(MAX_ITEMS).map(bounded).collect())
        }
        Value::Object(map) => Value::Object(
            map.into_iter()
                .take(MAX_ITEMS)
                .map(|(k, v)| (clip(&k, MAX_TEXT), bounded(v)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_are_bounded_and_the_text_names_each() {
        let mut f = Findings::default();
        for i in 0..MAX_FINDINGS + 5 {
            f.note(
                &format!("a.zip!m{i}.pkl"),
                "pickle",
                serde_json::json!({"pickles": 1}),
            );
        }
        assert_eq!((f.kept.len(), f.dropped), (MAX_FINDINGS, 5));
        // Names an author chose: escaped and clipped; lists cut; bytes bounded.
        let mut g = Findings::default();
        let key = format!("tokenizer.chat_template.\u{202e}{}", "k".repeat(70_000));
        let keys: Vec<String> = (0..100).map(|i| format!("{key}{i}")).collect();
        g.note(
            &"m/".repeat(10_000),
            "gguf",
            serde_json::json!({"chat_templates_checked": keys}),
        );
        let kept = &g.kept[0];
        assert!(kept.at.len() <= 4 * MAX_TEXT + 3);
        let listed = kept.facts["chat_templates_checked"].as_array().unwrap();
        assert_eq!(listed.len(), MAX_ITEMS);
        let first = listed[0].as_str().unwrap();
        assert!(
            first.len() <= MAX_TEXT + 3 && !first.contains('\u{202e}'),
            "{first}"
        );
        let long: Vec<String> = keys
            .iter()
            .take(MAX_ITEMS)
            .map(|k| k[..300].to_string())
            .collect();
        for _ in 0..MAX_FINDINGS {
            g.note(
                "x",
                "gguf",
                serde_json::json!({ "chat_templates_checked": long }),
            );
        }
        assert!(
            g.bytes <= MAX_FINDINGS_BYTES && g.dropped > 0,
            "{} {}",
            g.bytes,
            g.dropped
        );
        let report = Report {
            path: "a.zip".into(),
            size: 9,
            verdict: "admitted",
            reason: None,
            formats: vec!["zip"],
            findings: f.kept.drain(..1).collect(),
            findings_dropped: f.dropped,
        };
        assert_eq!(
            report.text(),
            "a.zip: admitted (zip)\n  a.zip!m0.pkl [pickle] pickles 1\n  (5 more findings not kept)"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["findings"][0]["facts"]["pickles"], 1);
        assert!(json.get("reason").is_none());
    }
}
