//! Signed models with the real daemons (`[signing]` in `--policy`): a model signed on the low
//! side (`sluice-send --sign-model`) is delivered whole with its signer in the audit log and
//! `/metrics`; under "require" nothing of an unsigned, tampered or foreign-signed model reaches
//! `--out`, files wait across restarts for a signature that comes later, and a file sent later
//! into a delivered model waits for a new signature (attacker B, who holds the low side's
//! keys, cannot swap a signed model's config).

// Test helpers panic on failure by design, like the tests that call them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use sluice_tests::binaries::{self, free_udp_port, Finished};
use sluice_tests::harness::{assert_exit, output_text, Setup, Summary};

/// A safetensors file of one F32 tensor of `n` elements.
fn safetensors(n: usize) -> Vec<u8> {
    let header = format!(
        "{{\"w\":{{\"dtype\":\"F32\",\"shape\":[{n}],\"data_offsets\":[0,{}]}}}}",
        n * 4
    );
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend((0..n * 4).map(|i| i as u8));
    bytes
}

/// The files (not directories) under `dir`, relative; none if it is missing.
fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    found.sort();
    found
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// The files of a [`model`] once signed.
const MODEL_FILES: [&str; 4] = [
    "model.safetensors",
    "config.json",
    "tokenizer/vocab.txt",
    "model.sig",
];

/// A model directory `name` under `root`.
fn model(root: &Path, name: &str, config: &str) -> PathBuf {
    let dir = root.join(name);
    write(&dir.join("model.safetensors"), &safetensors(256));
    write(&dir.join("config.json"), config.as_bytes());
    write(&dir.join("tokenizer/vocab.txt"), b"a\nb\n");
    dir
}

/// A P-256 key pair: (private PEM path, public PEM path).
fn key_pair(dir: &Path, name: &str, seed: u8) -> (PathBuf, PathBuf) {
    let key = p256::ecdsa::SigningKey::from_bytes(&[seed; 32].into()).unwrap();
    let (private, public) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pem")),
    );
    std::fs::write(
        &private,
        key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
    )
    .unwrap();
    let pem = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    std::fs::write(&public, pem).unwrap();
    (private, public)
}

struct Bench {
    s: Setup,
    policy: PathBuf,
    quarantine: PathBuf,
    team_key: PathBuf,
    other_key: PathBuf,
}

impl Bench {
    fn new(wait: &str) -> Bench {
        let s = Setup::new();
        let keys = s.tmp.path().join("model-keys");
        std::fs::create_dir_all(&keys).unwrap();
        let (team_key, _) = key_pair(&keys, "ml-team", 11);
        let (other_key, _) = key_pair(&keys, "stranger", 12);
        let quarantine = s.tmp.path().join("quarantine");
        let policy = s.tmp.path().join("policy.toml");
        let bench = Bench {
            s,
            policy,
            quarantine,
            team_key,
            other_key,
        };
        bench.set_wait(wait);
        bench
    }

    fn set_wait(&self, wait: &str) {
        std::fs::write(
            &self.policy,
            format!(
                "quarantine = {:?}\n[signing]\nmodels = \"require\"\nwait = \"{wait}\"\n\
                 model_dirs = [\"zoo/*\"]\nkeys = [\"model-keys/ml-team.pem\"]\n",
                self.quarantine.display().to_string()
            ),
        )
        .unwrap();
    }

    /// One receiver run taking one sender run per entry of `sends` (options, paths).
    fn transfer(&self, sends: &[(&[&str], &[&Path])], expect: i32) -> Finished {
        let port = free_udp_port();
        let to: SocketAddr = ([127, 0, 0, 1], port).into();
        let policy = self.policy.to_str().unwrap();
        let mut recv = self.s.receiver(port, 3, &["--policy", policy]);
        for (extra, paths) in sends {
            let mut options = vec!["--rate", "20MB"];
            options.extend_from_slice(extra);
            let sent = self.s.send(to, &options, paths, Duration::from_secs(60));
            assert_exit(&sent, 0, "sluice-send");
        }
        let got = recv.finish(Duration::from_secs(60));
        assert_exit(&got, expect, "sluice-recv");
        got
    }

    /// Every file of the model `name` (from `src`) is in `--out`, as it was signed.
    fn assert_delivered_whole(&self, name: &str, src: &Path, log: &str) {
        for f in MODEL_FILES {
            assert_eq!(
                std::fs::read(self.out(&format!("{name}/{f}"))).unwrap(),
                std::fs::read(src.join(f)).unwrap(),
                "{name}/{f}\n{log}"
            );
        }
    }

    fn out(&self, path: &str) -> PathBuf {
        self.s.out.join(path)
    }

    fn audit(&self) -> String {
        std::fs::read_to_string(self.s.state.join("audit.log")).unwrap()
    }

    fn reason(&self, path: &str) -> String {
        std::fs::read_to_string(self.quarantine.join(format!("{path}.reason"))).unwrap_or_default()
    }
}

/// Signs `dir` as a model with `key` (the send goes to a port nobody listens on).
fn sign_only(b: &Bench, key: &Path, dir: &Path) {
    let link = format!("udp://127.0.0.1:{}", free_udp_port());
    let out = binaries::sender_cmd(&link, &b.s.keys)
        .arg("--sign-model")
        .arg(key)
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
}

#[test]
fn a_signed_model_is_delivered_whole_and_an_unsigned_one_waits() {
    let b = Bench::new("1h");
    let signed = model(&b.s.src, "llama", "{\"layers\":2}");
    let unsigned = model(&b.s.src.join("low"), "mistral", "{}");
    write(&b.s.src.join("data/train.csv"), b"x,y\n1,2\n");
    let key = b.team_key.to_str().unwrap();
    let got = b.transfer(
        &[
            (&["--sign-model", key], &[&signed]),
            (&[], &[&unsigned, &b.s.src.join("data")]),
        ],
        0,
    );
    b.assert_delivered_whole("llama", &signed, &got.log);
    assert!(got
        .log
        .contains("delivered llama/config.json (model signed by model-keys/ml-team.pem)"));
    let audit = b.audit();
    assert!(
        audit.lines().any(|l| l.contains("\"delivered\"")
            && l.contains("llama/model.safetensors")
            && l.contains("\"model_signer\":\"model-keys/ml-team.pem\"")),
        "{audit}"
    );
    // Unsigned: held, none of it in --out; ordinary data goes.
    assert!(b.out("data/train.csv").exists());
    assert_eq!(
        files_under(&b.out("mistral")),
        [] as [String; 0],
        "{}",
        got.log
    );
    for f in ["model.safetensors", "config.json", "tokenizer/vocab.txt"] {
        let phrase = format!("held mistral/{f}: waiting for its model's signature");
        assert!(got.log.contains(&phrase), "{phrase}\n{}", got.log);
    }
    assert!(audit
        .lines()
        .any(|l| l.contains("\"held\"") && l.contains("mistral/config.json")));
    let summary = Summary::find(&got.log, "objects_failed").unwrap();
    assert_eq!(summary.get("objects_failed"), 0);

    // Its wait over, the next start refuses it whole into the quarantine.
    b.set_wait("1s");
    std::thread::sleep(Duration::from_millis(1500));
    write(&b.s.src.join("later/notes.txt"), b"n");
    let got = b.transfer(&[(&[], &[&b.s.src.join("later")])], 3);
    assert_eq!(files_under(&b.out("mistral")), [] as [String; 0]);
    for f in ["model.safetensors", "config.json", "tokenizer/vocab.txt"] {
        let path = format!("mistral/{f}");
        assert!(
            b.reason(&path).contains("refused: model signature missing"),
            "{path}\n{}",
            got.log
        );
        assert_eq!(
            std::fs::read(b.quarantine.join(&path)).unwrap(),
            std::fs::read(unsigned.join(f)).unwrap()
        );
    }
    assert!(b.out("later/notes.txt").exists());
}

#[test]
fn tampered_or_foreign_signed_models_are_refused_whole() {
    let b = Bench::new("1h");
    // Changed after signing: the config swapped on the low side.
    let tampered = model(&b.s.src, "tampered", "{\"layers\":2}");
    let foreign = model(&b.s.src, "foreign", "{}");
    let sign = |key: &Path, dir: &Path| {
        sign_only(&b, key, dir);
    };
    sign(&b.team_key, &tampered);
    write(
        &tampered.join("config.json"),
        b"{\"auto_map\":\"evil.Model\"}",
    );
    sign(&b.other_key, &foreign);
    let got = b.transfer(&[(&[], &[&tampered, &foreign])], 3);
    for model in ["tampered", "foreign"] {
        assert_eq!(files_under(&b.out(model)), [] as [String; 0], "{}", got.log);
    }
    for f in MODEL_FILES {
        let reason = b.reason(&format!("tampered/{f}"));
        assert!(
            reason.contains("refused: model file changed since signing: config.json"),
            "tampered/{f}: {reason}\n{}",
            got.log
        );
        let reason = b.reason(&format!("foreign/{f}"));
        assert!(
            reason.contains("refused: model signed by an untrusted key"),
            "foreign/{f}: {reason}"
        );
    }
}

/// A CA named `name` (self-signed) that may issue certificates.
fn certificate_authority(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// A code-signing certificate `name` issued by `ca`, written to `dir` as `name.key` (PKCS#8)
/// and `name.crt`; their paths.
fn code_signer(
    dir: &Path,
    name: &str,
    ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
) -> (PathBuf, PathBuf) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    let (key_path, cert_path) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.crt")),
    );
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    (key_path, cert_path)
}

#[test]
fn a_model_signed_with_a_certificate_of_a_trusted_ca_is_delivered_and_one_of_another_ca_refused() {
    let b = Bench::new("1h");
    let keys = b.s.tmp.path().join("model-keys");
    let org = certificate_authority("Example Org CA");
    let rogue_ca = certificate_authority("Rogue CA");
    std::fs::write(keys.join("org-ca.pem"), org.pem()).unwrap();
    let mut policy = std::fs::read_to_string(&b.policy).unwrap();
    policy.push_str("certificates = [\"model-keys/org-ca.pem\"]\n");
    std::fs::write(&b.policy, policy).unwrap();
    let (release_key, release_cert) = code_signer(&keys, "ml-release", &org);
    let (rogue_key, rogue_cert) = code_signer(&keys, "ml-release-2", &rogue_ca);
    let good = model(&b.s.src, "qwen", "{\"layers\":4}");
    let bad = model(&b.s.src, "phi", "{}");
    for (dir, key, cert) in [
        (&good, &release_key, &release_cert),
        (&bad, &rogue_key, &rogue_cert),
    ] {
        let link = format!("udp://127.0.0.1:{}", free_udp_port());
        let out = binaries::sender_cmd(&link, &b.s.keys)
            .arg("--sign-model")
            .arg(key)
            .arg("--sign-model-cert")
            .arg(cert)
            .arg(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
    }
    // What the low side's reviewer sees, with the CA the receiver trusts.
    let inspect = |dir: &Path| {
        let out = std::process::Command::new(&binaries::binaries().inspect)
            .arg("--model-ca")
            .arg(keys.join("org-ca.pem"))
            .arg(dir)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = inspect(&good);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("qwen: model signed by CN=ml-release ("),
        "{text}"
    );
    let (code, text) = inspect(&bad);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("refused: model signed by an untrusted certificate"),
        "{text}"
    );

    let got = b.transfer(&[(&[], &[&good, &bad])], 3);
    b.assert_delivered_whole("qwen", &good, &got.log);
    for f in MODEL_FILES {
        let reason = b.reason(&format!("phi/{f}"));
        assert!(
            reason.contains(
                "refused: model signed by an untrusted certificate: CN=ml-release-2: \
                 no valid chain to model-keys/org-ca.pem (UnknownIssuer)"
            ),
            "phi/{f}: {reason}\n{}",
            got.log
        );
    }
    assert_eq!(files_under(&b.out("phi")), [] as [String; 0]);
    assert!(
        got.log.contains(
            "delivered qwen/config.json (model signed by CN=ml-release (model-keys/org-ca.pem))"
        ),
        "{}",
        got.log
    );
    assert!(b
        .audit()
        .contains("\"model_signer\":\"CN=ml-release (model-keys/org-ca.pem)\""));
}

#[test]
fn a_file_planted_ahead_of_a_model_or_a_signature_moved_to_another_directory_refuses_it() {
    let b = Bench::new("1h");
    // B sends a code file alone into a directory no model is known in yet: it goes out as an
    // ordinary file, and the model signed without it is then refused, not vouched for.
    let planted = b.s.src.join("pre/llama");
    write(&planted.join("modeling_evil.py"), b"import os\n");
    let signed = model(&b.s.src, "llama", "{}");
    sign_only(&b, &b.team_key, &signed);
    // A signature made for one directory, sent with another's files.
    let original = model(&b.s.src.join("orig"), "phi", "{}");
    sign_only(&b, &b.team_key, &original);
    let moved = b.s.src.join("moved/qwen2");
    std::fs::create_dir_all(&moved).unwrap();
    for f in ["model.safetensors", "config.json", "model.sig"] {
        std::fs::copy(original.join(f), moved.join(f)).unwrap();
    }
    write(&moved.join("tokenizer/vocab.txt"), b"a\nb\n");
    b.transfer(&[(&[], &[&planted])], 0);
    let got = b.transfer(&[(&[], &[&signed, &moved])], 3);
    assert_eq!(
        files_under(&b.out("llama")),
        ["modeling_evil.py"],
        "{}",
        got.log
    );
    assert_eq!(files_under(&b.out("qwen2")), [] as [String; 0]);
    let reason = b.reason("llama/model.safetensors");
    assert!(
        reason.contains("model file not signed: modeling_evil.py (delivered before its signature)"),
        "{reason}\n{}",
        got.log
    );
    let reason = b.reason("qwen2/config.json");
    assert!(
        reason.contains("model signature names model \"phi\", not its directory \"qwen2\""),
        "{reason}\n{}",
        got.log
    );
}

#[test]
fn files_wait_across_restarts_for_a_later_signature_and_a_delivered_model_stays_signed() {
    let b = Bench::new("1h");
    let dir = model(&b.s.src, "qwen", "{\"layers\":4}");
    // Signed, then sent without the signature: every file waits, through the receiver's exit.
    let sig_only = b.s.src.join("sig-only/qwen");
    {
        sign_only(&b, &b.team_key, &dir);
        std::fs::create_dir_all(&sig_only).unwrap();
        std::fs::rename(dir.join("model.sig"), sig_only.join("model.sig")).unwrap();
    }
    let got = b.transfer(&[(&[], &[&dir])], 0);
    assert_eq!(
        files_under(&b.out("qwen")),
        [] as [String; 0],
        "{}",
        got.log
    );
    assert!(
        got.log.contains("held qwen/model.safetensors"),
        "{}",
        got.log
    );
    // The signature alone, in another run: the model goes out whole.
    let got = b.transfer(&[(&[], &[&sig_only])], 0);
    assert!(got
        .log
        .contains("files waiting for their model's signature since an earlier run"));
    for f in ["model.safetensors", "config.json", "tokenizer/vocab.txt"] {
        assert_eq!(
            std::fs::read(b.out(&format!("qwen/{f}"))).unwrap(),
            std::fs::read(dir.join(f)).unwrap(),
            "qwen/{f}\n{}",
            got.log
        );
    }
    assert!(b.out("qwen/model.sig").exists());
    assert!(
        got.log.contains("(model signed by model-keys/ml-team.pem)"),
        "{}",
        got.log
    );

    // Attacker B sends a new config into the delivered model: it waits for a new signature
    // and the delivered one stays.
    let swap = b.s.src.join("swap/qwen");
    write(&swap.join("config.json"), b"{\"auto_map\":\"evil.Model\"}");
    // A directory `model_dirs` names is a model from its first file, whatever it is.
    let zoo = b.s.src.join("zoo/phi");
    write(
        &zoo.join("tokenizer_config.json"),
        b"{\"chat_template\":\"{{x}}\"}",
    );
    let got = b.transfer(&[(&[], &[&swap, &b.s.src.join("zoo")])], 0);
    assert!(got.log.contains("held qwen/config.json"), "{}", got.log);
    assert!(
        got.log.contains("held zoo/phi/tokenizer_config.json"),
        "{}",
        got.log
    );
    assert_eq!(files_under(&b.out("zoo")), [] as [String; 0]);
    assert_eq!(
        std::fs::read(b.out("qwen/config.json")).unwrap(),
        b"{\"layers\":4}"
    );
}
