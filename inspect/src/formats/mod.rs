//! Every file format the gate looks into, and its inspector: the one list a new format is
//! added to (a new file here, one line in [`inspectors`], and its `[models]` setting if it
//! has one).
//!
//! | format | claimed by | inspector |
//! |---|---|---|
//! | pickle (protocols 0–5, back to back) | `PROTO` opcode, or opcodes that parse | [`pickle`] |
//! | NumPy `.npy` | magic | [`numpy`] (an object array is a pickle) |
//! | tar | `ustar` at 257 | [`archive::TarInspector`] |
//! | zip (PyTorch, `.npz`, `.keras`) | magic, or an end record in the last 64 KiB | [`archive::ZipInspector`] |
//! | safetensors | header length, then `{` | [`safetensors`] |
//! | GGUF | magic | [`gguf`] (bounds, tensors in the file, [`chat_template`]) |
//! | ONNX | its first fields are a `ModelProto`'s, or `.onnx` | [`onnx`] (external data, custom operators) |
//! | Keras 3 `config.json` (in a `.keras` zip) | its name, then `{` | [`keras`] (no code, Keras' own modules) |
//! | HDF5 (legacy Keras) | signature, or `.h5`/`.hdf5` | [`keras`] (Keras models refused) |
//! | gzip, zlib, bzip2, xz, lzma, zstd (lz4 refused) | magic | [`compressed`] (the content as a member) |

pub mod archive;
pub mod chat_template;
pub mod compressed;
pub mod gguf;
pub mod keras;
pub mod numpy;
pub mod onnx;
pub mod pickle;
pub mod pyliteral;
pub mod safetensors;
mod xz;

use serde::Deserialize;

use crate::inspector::Inspector;
use archive::{TarInspector, ZipInspector};
use compressed::CompressedInspector;
use gguf::GgufInspector;
use keras::{KerasConfigInspector, KerasH5Inspector};
use numpy::NumpyInspector;
use onnx::{CustomOperators, OnnxInspector};
use pickle::{AllowList, PickleInspector, PickleRule};
use safetensors::SafetensorsInspector;

/// What to do with safetensors files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SafetensorsRule {
    /// Header checked against the data.
    Validate,
    /// Pass unexamined.
    Allow,
}

/// The `[models]` table of `policy.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Models {
    pickle: Option<PickleRule>,
    pickle_allow: Option<Vec<String>>,
    safetensors: Option<SafetensorsRule>,
    onnx_custom_operators: Option<CustomOperators>,
    keras_h5: Option<KerasH5Rule>,
}

/// What to do with legacy HDF5 Keras models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KerasH5Rule {
    Refuse,
    Allow,
}

/// The inspectors of a policy whose `[models]` table is `models`, in the order they are
/// asked: every one that claims a file checks it, and the first refusal is the file's (a
/// pickle named `.safetensors` is refused as a pickle first).
pub fn inspectors(models: &Models) -> Vec<Box<dyn Inspector>> {
    let extra = models.pickle_allow.clone().unwrap_or_default();
    let pickle = PickleInspector {
        rule: models.pickle.unwrap_or(PickleRule::Scan),
        allow: AllowList::with(extra.iter().map(String::as_str)),
    };
    let mut inspectors: Vec<Box<dyn Inspector>> = vec![
        Box::new(pickle.clone()),
        Box::new(NumpyInspector { pickle }),
        Box::new(TarInspector),
        Box::new(ZipInspector),
        Box::new(CompressedInspector),
        Box::new(GgufInspector),
        Box::new(KerasConfigInspector),
        Box::new(KerasH5Inspector {
            allow: models.keras_h5 == Some(KerasH5Rule::Allow),
        }),
        Box::new(OnnxInspector {
            custom_operators: models
                .onnx_custom_operators
                .unwrap_or(CustomOperators::Allow),
        }),
    ];
    if models.safetensors.unwrap_or(SafetensorsRule::Validate) == SafetensorsRule::Validate {
        inspectors.push(Box::new(SafetensorsInspector));
    }
    inspectors
}
