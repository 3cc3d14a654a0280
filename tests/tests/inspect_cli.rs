//! `sluice-inspect`: the gate's verdict per file on the low side, as the receiver will give
//! it — text and JSON, exit 0 when all are admitted, 1 when one is refused, 2 on a usage
//! error.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use sluice_tests::binaries::{binaries, free_udp_port, keygen, sender_cmd};

#[test]
fn a_reviewer_sees_each_files_verdict_and_the_exit_status_says_if_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(model.join("train.csv"), "city,population\nParis,2100000\n").unwrap();
    std::fs::write(model.join("weights.bin"), b"\x80\x02cos\ngetcwd\n)R.").unwrap();
    let header = r#"{"w":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#;
    let mut tensors = (header.len() as u64).to_le_bytes().to_vec();
    tensors.extend_from_slice(header.as_bytes());
    tensors.extend_from_slice(&[0; 4]);
    std::fs::write(model.join("w.safetensors"), tensors).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(&binaries().inspect)
            .args(args)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };
    let dir_arg = model.to_str().unwrap();
    let (code, text) = run(&[dir_arg]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("train.csv: admitted\n"), "{text}");
    // What each format found, under its verdict.
    assert!(
        text.contains(
            "w.safetensors: admitted (safetensors)\n  w.safetensors [safetensors] \
             data_bytes 4, dtypes {\"F16\":1}, tensors 1\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("weights.bin: refused: pickle imports os.getcwd (not on the allow-list)"),
        "{text}"
    );
    let (code, json) = run(&["--json", dir_arg]);
    assert_eq!(code, Some(1));
    let verdicts: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(verdicts.len(), 3);
    let tensors = verdicts
        .iter()
        .find(|v| v["formats"][0] == "safetensors")
        .unwrap();
    assert_eq!(
        tensors["findings"][0]["facts"]["dtypes"]["F16"], 1,
        "{tensors}"
    );
    assert!(verdicts
        .iter()
        .any(|v| v["verdict"] == "refused" && v["reason"].as_str().unwrap().contains("os.getcwd")));
    let csv = model.join("train.csv");
    assert_eq!(run(&[csv.to_str().unwrap()]).0, Some(0));
    assert_eq!(run(&["/nonexistent/sluice"]).0, Some(2));
}

#[test]
fn a_model_signed_by_sluice_send_is_shown_signed_and_a_change_after_signing_refused() {
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let dir = tempfile::tempdir().unwrap();
    let keys = keygen(dir.path());
    let model = dir.path().join("tiny-model");
    std::fs::create_dir_all(model.join("tokenizer")).unwrap();
    std::fs::write(model.join("config.json"), "{\"hidden_size\": 8}").unwrap();
    std::fs::write(model.join("tokenizer/vocab.txt"), "a\nb\n").unwrap();
    let key = p256::ecdsa::SigningKey::from_bytes(&[5u8; 32].into()).unwrap();
    let private = dir.path().join("model-key.pem");
    let public = dir.path().join("model-key.pub");
    std::fs::write(
        &private,
        key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
    )
    .unwrap();
    std::fs::write(
        &public,
        key.verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap(),
    )
    .unwrap();
    // Signed on the way out (nothing listens on the port: the send goes nowhere).
    let link = format!("udp://127.0.0.1:{}", free_udp_port());
    let sent = sender_cmd(&link, &keys)
        .arg("--sign-model")
        .arg(&private)
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    assert!(model.join("model.sig").exists());
    let inspect = |dir: &std::path::Path| {
        let out = Command::new(&binaries().inspect)
            .arg("--model-key")
            .arg(&public)
            .arg(dir)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };
    let (code, text) = inspect(&model);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("tiny-model: model signed by"), "{text}");
    std::fs::write(model.join("tokenizer/vocab.txt"), "a\nb\nc\n").unwrap();
    let (code, text) = inspect(&model);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("refused: model file changed since signing: tokenizer/vocab.txt"),
        "{text}"
    );
    std::fs::remove_file(model.join("model.sig")).unwrap();
    let (code, text) = inspect(&model);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("refused: model signature missing"), "{text}");
    // A file is no model directory.
    let out = sender_cmd(&link, &keys)
        .arg("--sign-model")
        .arg(&private)
        .arg(model.join("config.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("signs directories"));
}
