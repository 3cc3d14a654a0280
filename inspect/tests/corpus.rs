//! The bypass corpus (`tests/corpus/make_corpus.py`): every published scanner bypass we found,
//! by class, and benign real-shaped models of every format. Every malicious file must be
//! refused and every benign one admitted, by the gate's default policy.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::path::Path;
use std::process::Command;

use sluice_inspect::policy::Policy;

#[test]
#[ignore = "needs python3 (./test.sh installs it and runs this)"]
fn every_malicious_file_is_refused_and_every_benign_one_admitted() {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/make_corpus.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("python3 is needed (apt-get install python3): {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let index = std::fs::read_to_string(dir.path().join("index.tsv")).unwrap();
    let policy = Policy::parse("quarantine = \"q\"\n").unwrap();
    let (mut malicious, mut benign) = (0, 0);
    let mut wrong = Vec::new();
    for line in index.lines() {
        let mut fields = line.splitn(3, '\t');
        let (verdict, name, source) = (
            fields.next().unwrap(),
            fields.next().unwrap(),
            fields.next().unwrap_or(""),
        );
        let path = dir.path().join(verdict).join(name);
        let size = std::fs::metadata(&path).unwrap().len();
        let result = policy
            .check_name_and_size(name, size)
            .and_then(|()| policy.inspect_all(&mut File::open(&path).unwrap(), name, size));
        match (verdict, &result) {
            ("malicious", Err(_)) => malicious += 1,
            ("benign", Ok(_)) => benign += 1,
            _ => wrong.push(format!("{verdict} {name}: {result:?}\n    ({source})")),
        }
    }
    println!("corpus: {malicious} malicious files refused, {benign} benign files admitted");
    assert!(
        malicious >= 100 && benign >= 30,
        "the corpus shrank: {malicious}, {benign}"
    );
    assert!(
        wrong.is_empty(),
        "the gate got these wrong:\n{}",
        wrong.join("\n")
    );
}
