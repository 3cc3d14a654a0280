//! Why the gate refused a file: one stable phrase per reason, for logs, the audit log and
//! quarantine `.reason` files.

use std::time::Duration;

/// Why an inspector refused a file. The `Display` texts are stable phrases.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// A pickle imports a callable that is not on the allow-list.
    #[error("pickle imports {0} (not on the allow-list)")]
    PickleImport(String),
    /// A pickle names its callable in a way the scanner cannot resolve to a plain name.
    #[error("pickle imports a callable it does not name plainly ({0})")]
    PickleOpaqueImport(&'static str),
    /// Pickles are refused outright (`pickle = "refuse"`).
    #[error("pickle refused by policy")]
    PickleRefused,
    /// The pickle stream does not parse.
    #[error("pickle malformed at byte {at}: {why}")]
    PickleMalformed { at: u64, why: &'static str },
    /// The pickle needs more memory to scan than the bound allows.
    #[error("pickle too complex to scan: {0}")]
    PickleTooComplex(&'static str),
    /// A safetensors file that breaks the format.
    #[error("safetensors invalid: {0}")]
    Safetensors(String),
    /// A NumPy file whose header does not parse.
    #[error("numpy header malformed: {0}")]
    NumpyMalformed(&'static str),
    /// A GGUF model that breaks the format or a bound, or whose chat template is refused.
    #[error("gguf refused: {0}")]
    Gguf(String),
    /// An ONNX model that does not parse, keeps data outside its directory, or uses custom
    /// operators a policy refuses.
    #[error("onnx refused: {0}")]
    Onnx(String),
    /// A Keras model whose config loads code, or a legacy HDF5 Keras model.
    #[error("keras refused: {0}")]
    Keras(String),
    /// A name rule of the policy refuses it.
    #[error("denied by the name rule {0:?}")]
    Denied(String),
    /// The policy has an allow list and no pattern of it matches.
    #[error("not on the allow list")]
    NotAllowed,
    /// Larger than the policy's `max_file_size`.
    #[error("larger than max_file_size ({size} > {max} bytes)")]
    TooLarge { size: u64, max: u64 },
    /// An archive (or one of its members) breaks a rule or a bound.
    #[error("archive refused: {0}")]
    Archive(String),
    /// The external scanner found something (its first line of output).
    #[error("the scanner flagged it: {0}")]
    Infected(String),
    /// The external scanner failed: the file is not known to be clean.
    #[error("scanner error: {0}")]
    ScannerFailed(String),
    /// Inspecting the file took longer than the policy's `inspect_timeout` (`at`: the file, or
    /// the archive member being inspected when the time ran out).
    #[error("inspection took longer than {} (in {at})", seconds(.limit))]
    TooSlow { limit: Duration, at: String },
    /// Reading the file failed.
    #[error("cannot read the file: {0}")]
    Io(String),
}

impl From<std::io::Error> for Refusal {
    fn from(e: std::io::Error) -> Self {
        Refusal::Io(e.to_string())
    }
}

/// A duration in seconds for messages: `120 s`, `0.05 s`.
fn seconds(d: &Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} s", d.as_secs_f64())
    }
}
