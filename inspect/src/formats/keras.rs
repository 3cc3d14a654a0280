//! Keras models. A Keras 3 `.keras` file is a zip whose `config.json` says which classes to
//! build, by module and name; loading it imports those modules and, for a `Lambda` layer,
//! runs the Python code stored in it (CVE-2024-3660; `safe_mode` bypasses: CVE-2025-1550,
//! CVE-2025-8747). A legacy HDF5 (`.h5`) model keeps the same config in its `model_config`
//! attribute.
//!
//! - `config.json` (a zip member so named, as Keras finds it): every object in it is read;
//!   refused are a `Lambda`, `TFOpLambda`, `SlicingOpLambda` or `__lambda__` class, a
//!   `module` other than Keras' packages of serializable objects (`keras.layers`,
//!   `keras.src.optimizers.…`: not `keras.src.utils`, whose `get_file` writes files), and a
//!   `registered_name` of a custom object (`package>Name`: code outside Keras).
//! - HDF5 files that are Keras models (the attribute names `model_config` or
//!   `keras_version` in their bytes) are refused unless `[models] keras_h5 = "allow"`: their
//!   config is not parsed here (save models as `.keras`). Other HDF5 files (datasets) pass.
//!   An HDF5 file is one by its signature at byte 0 or by its `.h5`/`.hdf5` name (one with
//!   a user block, its signature at byte 512 or later, is found by its name only).

use std::io::Read;

use serde_json::Value;

use crate::inspector::{Inspector, Nested};
use crate::refusal::Refusal;
use crate::sniff::{Kind, Kinds};

/// Largest `config.json` read (real ones are a few MiB at most).
pub const MAX_CONFIG: u64 = 64 << 20;
/// Objects nested deeper than this are refused (serde_json's own limit is 128).
const MAX_DEPTH: usize = 100;

/// Classes whose config carries code.
const CODE_CLASSES: &[&str] = &["Lambda", "TFOpLambda", "SlicingOpLambda", "__lambda__"];

fn bad(why: impl Into<String>) -> Refusal {
    Refusal::Keras(why.into())
}

/// Keras 3 `config.json`.
#[derive(Debug)]
pub struct KerasConfigInspector;

impl Inspector for KerasConfigInspector {
    fn name(&self) -> &'static str {
        "keras"
    }

    fn claims(&self, _kinds: Kinds, head: &[u8], path: &str) -> bool {
        let name = path.rsplit(['!', '/']).next().unwrap_or(path);
        name == "config.json" && head.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
    }

    fn inspect(
        &self,
        file: &mut dyn Read,
        _path: &str,
        size: u64,
        _nested: &mut Nested<'_>,
    ) -> Result<(), Refusal> {
        if size > MAX_CONFIG {
            return Err(bad(format!("a config.json of {size} bytes")));
        }
        let mut text = Vec::new();
        file.take(MAX_CONFIG).read_to_end(&mut text)?;
        let config: Value =
            serde_json::from_slice(&text).map_err(|e| bad(format!("config.json: {e}")))?;
        check_config(&config, 0)
    }
}

/// Checks every object of a Keras config.
pub fn check_config(value: &Value, depth: usize) -> Result<(), Refusal> {
    if depth > MAX_DEPTH {
        return Err(bad("a config nested too deep"));
    }
    match value {
        Value::Object(map) => {
            if let Some(Value::String(class)) = map.get("class_name") {
                if CODE_CLASSES.contains(&class.as_str()) {
                    return Err(bad(format!(
                        "a {class} layer (it runs code stored in the model)"
                    )));
                }
            }
            if let Some(Value::String(module)) = map.get("module") {
                if !is_keras_module(module) {
                    return Err(bad(format!(
                        "an object from the module {module} (only Keras' own are admitted)"
                    )));
                }
            }
            if let Some(Value::String(registered)) = map.get("registered_name") {
                if registered.contains('>') {
                    return Err(bad(format!(
                        "the custom object {registered} (its code is not Keras')"
                    )));
                }
            }
            map.values().try_for_each(|v| check_config(v, depth + 1))
        }
        Value::Array(items) => items.iter().try_for_each(|v| check_config(v, depth + 1)),
        _ => Ok(()),
    }
}

/// Whether `module` is one Keras builds serialized objects from: `keras`, or a package of
/// layers, activations, initializers, regularizers, constraints, losses, metrics,
/// optimizers, models or dtype policies (`keras.layers`, `keras.src.layers.core.dense`). Not
/// the rest of Keras: `keras.src.utils.file_utils.get_file` writes files (CVE-2025-8747).
fn is_keras_module(module: &str) -> bool {
    const PACKAGES: &[&str] = &[
        "layers",
        "activations",
        "initializers",
        "regularizers",
        "constraints",
        "losses",
        "metrics",
        "optimizers",
        "models",
        "dtype_policies",
    ];
    let Some(rest) = module.strip_prefix("keras") else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let rest = rest.strip_prefix('.').unwrap_or("");
    let rest = rest.strip_prefix("src.").unwrap_or(rest);
    let package = rest.split('.').next().unwrap_or("");
    PACKAGES.contains(&package)
}

/// Legacy Keras HDF5 models, by the attribute names every one has.
#[derive(Debug)]
pub struct KerasH5Inspector {
    pub allow: bool,
}

impl Inspector for KerasH5Inspector {
    fn name(&self) -> &'static str {
        "hdf5"
    }

    fn claims(&self, kinds: Kinds, _head: &[u8], path: &str) -> bool {
        let lower = path.to_ascii_lowercase();
        kinds.has(Kind::Hdf5) || lower.ends_with(".h5") || lower.ends_with(".hdf5")
    }

    fn inspect(
        &self,
        file: &mut dyn Read,
        path: &str,
        _size: u64,
        nested: &mut Nested<'_>,
    ) -> Result<(), Refusal> {
        if self.allow {
            return Ok(());
        }
        const NAMES: [&[u8]; 2] = [b"model_config", b"keras_version"];
        let longest = NAMES.iter().map(|n| n.len()).max().unwrap_or(0);
        let mut window = vec![0u8; 1 << 20];
        let mut kept = 0usize;
        loop {
            nested.clock().check(path)?;
            let n = file.read(&mut window[kept..])?;
            if n == 0 {
                return Ok(());
            }
            let filled = kept + n;
            let seen = &window[..filled];
            if let Some(name) = NAMES
                .iter()
                .find(|name| seen.windows(name.len()).any(|w| w == **name))
            {
                return Err(bad(format!(
                    "a legacy HDF5 Keras model ({}): its config is not inspected; save it as \
                     .keras, or set keras_h5 = \"allow\"",
                    String::from_utf8_lossy(name)
                )));
            }
            // Keep the last bytes: a name may straddle two reads.
            let tail = filled.min(longest - 1);
            window.copy_within(filled - tail..filled, 0);
            kept = tail;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: &str) -> Result<(), Refusal> {
        check_config(&serde_json::from_str(json).unwrap(), 0)
    }

    #[test]
    fn keras_own_layers_pass_and_code_or_foreign_modules_do_not() {
        let plain = r#"{"module": "keras.src.models.functional", "class_name": "Functional",
            "config": {"layers": [{"module": "keras.layers", "class_name": "Dense",
            "config": {"activation": {"module": "keras.activations", "class_name": "function",
            "config": "relu", "registered_name": "relu"}}, "registered_name": null}]}}"#;
        assert!(check(plain).is_ok());
        for bad in [
            r#"{"class_name": "Lambda", "config": {"function": {"class_name": "__lambda__"}}}"#,
            r#"{"layers": [{"module": "builtins", "class_name": "function", "config": "exec"}]}"#,
            r#"{"module": "keras.layers", "class_name": "Dense", "registered_name": "evil>Dense"}"#,
            r#"{"a": {"b": {"module": "subprocess", "class_name": "Popen"}}}"#,
            r#"{"module": "keras.src.utils.file_utils", "class_name": "function", "config": "get_file"}"#,
            r#"{"module": "kerasx.layers", "class_name": "Dense"}"#,
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
        // JSON escapes are read as Python reads them.
        assert!(check(r#"{"class_name": "\u004cambda"}"#).is_err());
    }
}
