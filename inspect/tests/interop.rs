//! Models written by the formats' own Python writers pass the gate, and the same models
//! tampered with the writers' own APIs are refused: gguf-py's `GGUFWriter` (every ggml type
//! it knows, little- and big-endian), the `onnx` package (external data beside the model,
//! and moved out of it), and `model-signing` (a directory it signs verifies here; a changed
//! file or another key does not). The Python packages are the ones `./test.sh` installs into
//! `target/pyenv`; `SLUICE_TEST_PYTHON` names that interpreter.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::path::Path;
use std::process::Command;

use sluice_inspect::formats::gguf;
use sluice_inspect::policy::Policy;
use sluice_inspect::signing::{self, TrustedKey};

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

#[test]
#[ignore = "needs model-signing from PyPI (./test.sh installs it and runs this)"]
fn a_model_directory_signed_by_model_signing_verifies_here() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    run_python(
        r#"
import os, subprocess, sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
for name, curve in [("p256", ec.SECP256R1()), ("p384", ec.SECP384R1()), ("other", ec.SECP256R1())]:
    k = ec.generate_private_key(curve)
    open(name + ".pem", "wb").write(k.private_bytes(serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    open(name + ".pub", "wb").write(k.public_key().public_bytes(serialization.Encoding.PEM,
        serialization.PublicFormat.SubjectPublicKeyInfo))
for name in ["p256", "p384"]:
    os.makedirs(f"{name}/model/sub")
    open(f"{name}/model/config.json", "w").write("{}")
    open(f"{name}/model/w.safetensors", "wb").write(os.urandom(4096))
    open(f"{name}/model/sub/tok.txt", "w").write("a b c")
    subprocess.run([sys.executable, "-m", "model_signing", "sign", "key", f"{name}/model",
        "--private_key", f"{name}.pem", "--signature", f"{name}/model/model.sig"], check=True,
        capture_output=True)
"#,
        dir.path(),
    );
    let key = |name: &str| {
        let pem = std::fs::read_to_string(dir.path().join(format!("{name}.pub"))).unwrap();
        TrustedKey::from_pem(name, &pem).unwrap()
    };
    for curve in ["p256", "p384"] {
        let model = dir.path().join(curve).join("model");
        let bundle = std::fs::read(model.join("model.sig")).unwrap();
        let signed = signing::verify(&bundle, &[key("other"), key(curve)]).unwrap();
        assert_eq!(signed.signer, curve);
        let mut present = std::collections::BTreeMap::new();
        for name in ["config.json", "w.safetensors", "sub/tok.txt", "model.sig"] {
            let data = std::fs::read(model.join(name)).unwrap();
            present.insert(name.to_string(), sha2::Sha256::digest(&data).into());
        }
        assert_eq!(signing::check_files(&signed, &present, "model.sig"), Ok(()));
        present.insert("w.safetensors".into(), [0; 32]);
        assert_eq!(
            signing::check_files(&signed, &present, "model.sig").unwrap_err(),
            "model file changed since signing: w.safetensors"
        );
        assert_eq!(
            signing::verify(&bundle, &[key("other")]).unwrap_err(),
            "model signed by an untrusted key"
        );
    }
    // The other way: a bundle Sluice writes verifies in model-signing, and a file changed
    // after signing fails there too.
    let model = dir.path().join("p256").join("model");
    let mut files = std::collections::BTreeMap::new();
    for name in ["config.json", "w.safetensors", "sub/tok.txt"] {
        let data = std::fs::read(model.join(name)).unwrap();
        files.insert(name.to_string(), sha2::Sha256::digest(&data).into());
    }
    let pem = std::fs::read_to_string(dir.path().join("p256.pem")).unwrap();
    let ignore: Vec<String> = [".git", ".gitattributes", ".github", ".gitignore"]
        .map(String::from)
        .to_vec();
    let ours = signing::sign(&files, "model", &pem, &ignore).unwrap();
    std::fs::write(model.join("model.sig"), &ours).unwrap();
    let verify = |expect_ok: bool| {
        let out = Command::new(python())
            .args(["-m", "model_signing", "verify", "key"])
            .arg(&model)
            .arg("--signature")
            .arg(model.join("model.sig"))
            .arg("--public_key")
            .arg(dir.path().join("p256.pub"))
            .output()
            .unwrap();
        assert_eq!(
            out.status.success(),
            expect_ok,
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    verify(true);
    std::fs::write(model.join("config.json"), "{\"changed\": 1}").unwrap();
    verify(false);
}

#[test]
#[ignore = "needs model-signing from PyPI (./test.sh installs it and runs this)"]
fn a_model_signed_with_a_certificate_by_model_signing_verifies_under_its_ca_only() {
    let dir = tempfile::tempdir().unwrap();
    // A root, an intermediate, and two signing certificates under it: one for code signing
    // (what the reference tool's certificate method expects) and a TLS server's.
    run_python(
        r#"
import datetime, os, subprocess, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID
now = datetime.datetime.now(datetime.timezone.utc)
def cert(name, key, issuer_name, issuer_key, ca, usage=None, eku=None):
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
         .issuer_name(issuer_name).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(days=1))
         .not_valid_after(now + datetime.timedelta(days=30))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
    if usage:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return b.sign(issuer_key, hashes.SHA256())
def name(n): return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, n)])
def write(path, c): open(path, "wb").write(c.public_bytes(serialization.Encoding.PEM))
def keyfile(path, k): open(path, "wb").write(k.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
root_k, other_k, int_k = (ec.generate_private_key(ec.SECP384R1()) for _ in range(3))
write("root.pem", cert("Example Root", root_k, name("Example Root"), root_k, True))
write("other-root.pem", cert("Other Root", other_k, name("Other Root"), other_k, True))
inter = cert("Example Models CA", int_k, name("Example Root"), root_k, True)
write("intermediate.pem", inter)
for leaf, eku, curve in [("ml-team", [ExtendedKeyUsageOID.CODE_SIGNING], ec.SECP256R1()),
                         ("ml-384", [ExtendedKeyUsageOID.CODE_SIGNING], ec.SECP384R1()),
                         ("gw", [ExtendedKeyUsageOID.SERVER_AUTH], ec.SECP256R1())]:
    k = ec.generate_private_key(curve)
    keyfile(leaf + ".key", k)
    write(leaf + ".crt", cert(leaf, k, name("Example Models CA"), int_k, False, True, eku))
    os.makedirs(f"{leaf}/model")
    open(f"{leaf}/model/config.json", "w").write("{}")
    open(f"{leaf}/model/w.safetensors", "wb").write(os.urandom(4096))
    subprocess.run([sys.executable, "-m", "model_signing", "sign", "certificate", f"{leaf}/model",
        "--private_key", leaf + ".key", "--signing_certificate", leaf + ".crt",
        "--certificate_chain", "intermediate.pem", "--signature", f"{leaf}/model/model.sig"],
        check=True, capture_output=True)
"#,
        dir.path(),
    );
    let policy = |ca: &str| {
        Policy::parse_at(
            &format!(
                "quarantine = \"q\"\n[signing]\nmodels = \"require\"\n\
                 certificates = [{{ file = \"{ca}\", paths = [\"ml-*/*\", \"gw/*\"] }}]\n"
            ),
            dir.path(),
        )
        .unwrap()
    };
    let trusted = policy("root.pem");
    let foreign = policy("other-root.pem");
    let model = dir.path().join("ml-team").join("model");
    let bundle = std::fs::read(model.join("model.sig")).unwrap();
    let trust = trusted.model_trust().unwrap();
    let signed = trust.verify("ml-team/model", &bundle).unwrap();
    assert_eq!(signed.signer, "CN=ml-team (root.pem)");
    let mut present = std::collections::BTreeMap::new();
    for name in ["config.json", "w.safetensors"] {
        let data = std::fs::read(model.join(name)).unwrap();
        present.insert(
            name.to_string(),
            <sha2::Sha256 as sha2::Digest>::digest(&data).into(),
        );
    }
    assert_eq!(signing::check_files(&signed, &present, "model.sig"), Ok(()));
    present.insert("w.safetensors".into(), [0; 32]);
    assert_eq!(
        signing::check_files(&signed, &present, "model.sig").unwrap_err(),
        "model file changed since signing: w.safetensors"
    );
    // A P-384 signing certificate (its signature over SHA-384).
    let p384 = std::fs::read(dir.path().join("ml-384/model/model.sig")).unwrap();
    assert_eq!(
        trust.verify("ml-384/model", &p384).unwrap().signer,
        "CN=ml-384 (root.pem)"
    );
    // Under another CA, and outside the CA's paths.
    let e = foreign
        .model_trust()
        .unwrap()
        .verify("ml-team/model", &bundle)
        .unwrap_err();
    assert!(
        e.starts_with("model signed by an untrusted certificate: CN=ml-team: no valid chain to other-root.pem"),
        "{e}"
    );
    let e = trust.verify("elsewhere/model", &bundle).unwrap_err();
    assert_eq!(
        e,
        "model signed by an untrusted certificate: no CA is trusted for this model"
    );
    // The reference tool agrees on both, by the same CA files.
    let reference = |ca: &str| {
        Command::new(python())
            .args(["-m", "model_signing", "verify", "certificate"])
            .arg(&model)
            .arg("--signature")
            .arg(model.join("model.sig"))
            .arg("--certificate_chain")
            .arg(dir.path().join(ca))
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(reference("root.pem"));
    assert!(!reference("other-root.pem"));
    // The other way: what `sluice-send --sign-model-cert` writes verifies in the reference
    // tool, and under another root fails there too.
    let mut files = std::collections::BTreeMap::new();
    for name in ["config.json", "w.safetensors"] {
        let data = std::fs::read(model.join(name)).unwrap();
        files.insert(
            name.to_string(),
            <sha2::Sha256 as sha2::Digest>::digest(&data).into(),
        );
    }
    let key = std::fs::read_to_string(dir.path().join("ml-team.key")).unwrap();
    let chain = std::fs::read_to_string(dir.path().join("ml-team.crt")).unwrap()
        + &std::fs::read_to_string(dir.path().join("intermediate.pem")).unwrap();
    let ours = signing::sign(&files, "model", &key, &[]).unwrap();
    let ours = signing::with_certificates(&ours, &key, &chain).unwrap();
    std::fs::write(model.join("model.sig"), &ours).unwrap();
    assert!(reference("root.pem"));
    assert!(!reference("other-root.pem"));
    assert_eq!(
        trust.verify("ml-team/model", &ours).unwrap().signer,
        "CN=ml-team (root.pem)"
    );
    // Stricter than the reference tool: a TLS server's certificate under the same CA signs
    // no model here.
    let gw = std::fs::read(dir.path().join("gw/model/model.sig")).unwrap();
    let e = trust.verify("gw/model", &gw).unwrap_err();
    assert!(
        e.ends_with("CN=gw: not a certificate for code signing (its extended key usages)"),
        "{e}"
    );
}
