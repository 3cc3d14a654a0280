//! Key files work with the stock tools operators already have: Debian's `minisign` verifies a
//! manifest signature made with `sender.key`, and `age -d -i receiver.key` opens a segment.
//! Ignored by a plain `cargo test` (they need Debian's `age` and `minisign`); `./test.sh`
//! installs both and runs them, and they fail if either is missing.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use sluice_common::keys;
use sluice_tests::require;

#[test]
#[ignore = "needs minisign (./test.sh installs it and runs this)"]
fn minisign_cli_verifies_our_signatures() {
    require::tool("minisign", "minisign");
    let dir = tempfile::tempdir().unwrap();
    keys::generate_sender_keys(dir.path()).unwrap();
    let signer = keys::SigningKey::load(&dir.path().join(keys::SENDER_KEY)).unwrap();
    let data = dir.path().join("manifest.bin");
    std::fs::write(&data, b"a manifest's exact bytes").unwrap();
    std::fs::write(
        dir.path().join("manifest.bin.minisig"),
        signer.sign(b"a manifest's exact bytes").unwrap(),
    )
    .unwrap();
    let verify = |pub_file: &Path| {
        Command::new("minisign")
            .arg("-V")
            .arg("-p")
            .arg(pub_file)
            .arg("-m")
            .arg(&data)
            .output()
            .unwrap()
    };
    let ok = verify(&dir.path().join(keys::SENDER_PUB));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("sluice manifest"));

    let other = tempfile::tempdir().unwrap();
    keys::generate_sender_keys(other.path()).unwrap();
    assert!(!verify(&other.path().join(keys::SENDER_PUB))
        .status
        .success());
}

#[test]
#[ignore = "needs age (./test.sh installs it and runs this)"]
fn age_cli_decrypts_with_receiver_key() {
    require::tool("age", "age");
    let dir = tempfile::tempdir().unwrap();
    keys::generate_receiver_keys(dir.path()).unwrap();
    let recipients = keys::load_recipients(&dir.path().join(keys::RECEIVER_PUB)).unwrap();
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .unwrap();
    let mut ciphertext = Vec::new();
    let mut writer = encryptor.wrap_output(&mut ciphertext).unwrap();
    writer.write_all(b"segment plaintext").unwrap();
    writer.finish().unwrap();
    let encrypted = dir.path().join("segment.age");
    std::fs::write(&encrypted, &ciphertext).unwrap();

    let out = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(dir.path().join(keys::RECEIVER_KEY))
        .arg(&encrypted)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"segment plaintext");
}
