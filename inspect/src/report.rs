//! What the gate saw in one file: the formats that checked it (its types by content) and
//! what each found — a pickle's imports, a safetensors file's tensors and dtypes, a GGUF
//! file's chat templates, an ONNX model's operator domains. `sluice-inspect` prints it; the
//! receiver keeps it beside a quarantined file as `NAME.report.json`, so the reviewer of a
//! refusal sees what the gate saw, and a reviewer on the low side sees it before sending.

use serde::Serialize;
use serde_json::Value;

/// Most findings kept for one file (an archive of many models): beyond, only counted.
pub const MAX_FINDINGS: usize = 1000;

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

/// The findings of one file's inspection, bounded.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    pub kept: Vec<Finding>,
    pub dropped: u64,
}

impl Findings {
    pub fn note(&mut self, at: &str, format: &'static str, facts: Value) {
        if self.kept.len() < MAX_FINDINGS {
            self.kept.push(Finding {
                at: at.to_string(),
                format,
                facts,
            });
        } else {
            self.dropped += 1;
        }
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
