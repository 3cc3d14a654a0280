//! Content inspection for the Sluice gate: what a file *is* (by its bytes, never its name),
//! and whether a model file is what it claims to be.
//!
//! - [`sniff`]: the types a file is by its first bytes (pickle, zip, tar, NumPy, safetensors:
//!   a polyglot is several);
//! - [`formats`]: every format and its inspector, in one list;
//! - [`pickle`]: walks a pickle's opcodes without unpickling and refuses any import outside an
//!   allow-list (a pickle is a program: loading it calls whatever it imports);
//! - [`safetensors`]: checks a safetensors file's header against its data section;
//! - [`numpy`]: a `.npy` header (an object array is a pickle);
//! - [`archive`]: zip and tar members, checked with the same rules, within bounds;
//! - [`zipmap`]: where a zip's parts lie, read by our own parser: a zip passes only if every
//!   zip reader sees the same members (no prefix, no appended bytes, no overlapping entries);
//! - [`clock`]: the time one file's inspection may take;
//! - [`policy`]: `policy.toml` and the order of the checks (names, size, type, inspector,
//!   external scanner); [`rules`]: its name rules;
//! - [`signing`]: OpenSSF model-signing bundles, verified offline; [`model_trust`]: which keys
//!   may sign which models (`[signing]`);
//! - [`bounds`]: what one file's archives may use; [`refusal`]: why a file was refused;
//!   [`report`]: what the gate saw in a file (formats, imports, tensors), as text or JSON.
//!
//! Each format is an [`inspector::Inspector`]: a new one (GGUF, ONNX, OCI layers) is one new
//! file and one line in [`formats`]. A file is checked by every inspector that claims it, as
//! every type it parses as (`inspector` says how). Every inspector reads through
//! [`std::io::Read`], keeps a bounded amount of memory whatever the input, never panics, and
//! answers with a [`Refusal`] whose text is a stable phrase for logs, the audit log and
//! quarantine `.reason` files.

pub mod bounds;
pub mod clock;
pub mod file_type;
pub mod formats;
pub mod inspector;
pub mod model_trust;
pub mod policy;
pub mod refusal;
pub mod report;
pub mod rules;
pub mod signing;
pub mod sniff;
pub mod zipmap;

pub use formats::{archive, numpy, pickle, safetensors};
pub use refusal::Refusal;
