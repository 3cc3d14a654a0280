//! `sluice-inspect`: the gate's verdict per file on the low side, as the receiver will give
//! it — text and JSON, exit 0 when all are admitted, 1 when one is refused, 2 on a usage
//! error.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use sluice_tests::binaries::binaries;

#[test]
fn a_reviewer_sees_each_files_verdict_and_the_exit_status_says_if_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(model.join("train.csv"), "city,population\nParis,2100000\n").unwrap();
    std::fs::write(model.join("weights.bin"), b"\x80\x02cos\ngetcwd\n)R.").unwrap();
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
    assert_eq!(verdicts.len(), 2);
    assert!(verdicts
        .iter()
        .any(|v| v["verdict"] == "refused" && v["reason"].as_str().unwrap().contains("os.getcwd")));
    let csv = model.join("train.csv");
    assert_eq!(run(&[csv.to_str().unwrap()]).0, Some(0));
    assert_eq!(run(&["/nonexistent/sluice"]).0, Some(2));
}
