//! Models written by the formats' own Python writers pass the gate, and the same models
//! tampered with the writers' own APIs are refused: gguf-py's `GGUFWriter` (every ggml type
//! it knows, little- and big-endian) and the `onnx` package (external data beside the model,
//! and moved out of it). The Python packages are the ones `./test.sh` installs into
//! `target/pyenv`; `SLUICE_TEST_PYTHON` names that interpreter.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::path::Path;
use std::process::Command;

use sluice_inspect::formats::gguf;
use sluice_inspect::policy::Policy;

fn python() -> String {
    std::env::var("SLUICE_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("SLUICE_TEST_PYTHON is not set: ./test.sh installs gguf and onnx into target/pyenv and sets it")
    })
}

fn run_python(script: &str, dir: &Path) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("the test interpreter runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn verdict(path: &Path, name: &str) -> Result<Vec<&'static str>, String> {
    let policy = Policy::parse("quarantine = \"q\"\n").unwrap();
    let size = std::fs::metadata(path).unwrap().len();
    policy
        .inspect_all(&mut File::open(path).unwrap(), name, size)
        .map_err(|e| e.to_string())
}

#[test]
#[ignore = "needs gguf and onnx from PyPI (./test.sh installs them and runs this)"]
fn gguf_files_gguf_py_writes_pass_and_our_type_table_is_its() {
    let dir = tempfile::tempdir().unwrap();
    let table = run_python(
        r#"
import gguf, numpy as np
from gguf import GGMLQuantizationType as T
for t, (block, size) in gguf.GGML_QUANT_SIZES.items():
    print(int(t), size, block)
for endian, name in [(gguf.GGUFEndian.LITTLE, "le.gguf"), (gguf.GGUFEndian.BIG, "be.gguf")]:
    w = gguf.GGUFWriter(name, "llama", endianess=endian)
    w.add_name("tiny")
    w.add_chat_template("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] }}{% endfor %}")
    w.add_tensor("f32", np.zeros((3, 64), dtype=np.float32))
    w.add_tensor("f16", np.zeros((64, 64), dtype=np.float16))
    for t in [T.Q8_0, T.Q4_0, T.Q4_K, T.Q6_K, T.IQ4_XS, T.BF16]:
        block, size = gguf.GGML_QUANT_SIZES[t]
        w.add_tensor(t.name, np.zeros((2, size * (256 // block)), dtype=np.uint8), raw_dtype=t)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
w = gguf.GGUFWriter("evil.gguf", "llama")
w.add_chat_template("{{ cycler.__init__.__globals__.os.getcwd() }}")
w.add_tensor("f32", np.zeros((4,), dtype=np.float32))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
"#,
        dir.path(),
    );
    let mut types = 0;
    for line in table.lines() {
        let f: Vec<u64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
        let t = u32::try_from(f[0]).unwrap();
        assert_eq!(gguf::ggml_type(t), Some((f[1], f[2])), "ggml type {t}");
        types += 1;
    }
    assert!(types >= 30, "gguf-py knows {types} types");
    for name in ["le.gguf", "be.gguf"] {
        assert_eq!(
            verdict(&dir.path().join(name), name),
            Ok(vec!["gguf"]),
            "{name}"
        );
    }
    let err = verdict(&dir.path().join("evil.gguf"), "evil.gguf").unwrap_err();
    assert!(err.contains("tokenizer.chat_template refused"), "{err}");
}

#[test]
#[ignore = "needs gguf and onnx from PyPI (./test.sh installs them and runs this)"]
fn onnx_models_the_onnx_package_writes_pass_and_data_moved_outside_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    run_python(
        r#"
import onnx, numpy as np
from onnx import helper, numpy_helper, TensorProto
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
w = numpy_helper.from_array(np.ones(4, dtype=np.float32), "w")
then = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "then", [], [y])
other = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "else", [], [y])
nodes = [helper.make_node("Add", ["x", "w"], ["s"]),
         helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
c = numpy_helper.from_array(np.array(True), "c")
g = helper.make_graph(nodes, "g", [x], [y], [w, c])
m = helper.make_model(g)
onnx.save_model(m, "inline.onnx")
onnx.save_model(m, "external.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                location="external.onnx.data", size_threshold=0)
m2 = onnx.load("external.onnx", load_external_data=False)
for t in m2.graph.initializer:
    for entry in t.external_data:
        if entry.key == "location":
            entry.value = "../../etc/passwd"
onnx.save_model(m2, "moved.onnx")
"#,
        dir.path(),
    );
    for name in ["inline.onnx", "external.onnx"] {
        assert_eq!(
            verdict(&dir.path().join(name), name),
            Ok(vec!["onnx"]),
            "{name}"
        );
    }
    let err = verdict(&dir.path().join("moved.onnx"), "moved.onnx").unwrap_err();
    assert!(err.contains("outside the model's directory"), "{err}");
}
