//! The content policy (`policy.toml`): what may pass the gate, checked cheapest first —
//! name rules, size, then the type by content and its inspector, then the external scanner.
//!
//! ```toml
//! quarantine = "/srv/sluice/quarantine"   # refused files land here, with NAME.reason
//! max_file_size = "200GiB"
//! inspect_timeout = "120s"                # longest one file's inspection may take
//! allow = ["*.safetensors", "*.parquet", "*.jsonl", "*.json", "*.txt"]   # empty = all
//! deny  = ["*.exe", "*.so"]               # deny wins over allow
//! [models]
//! pickle = "scan"            # refuse | scan | allow
//! pickle_allow = ["mylib.layers.Dense"]   # more callables a scanned pickle may import
//! safetensors = "validate"   # validate | allow
//! [signing]                  # signed models: see `model_trust`
//! models = "require"
//! keys = ["/etc/sluice/model-signers/ml-team.pem"]
//! [scan]
//! command = ["clamscan", "--no-summary", "-d", "/var/lib/sluice/sigs", "{path}"]
//! timeout = "120s"
//! ```
//!
//! Patterns match the file's relative path (`*` does not cross `/`; `**` does), and also its
//! bare name, so `*.exe` refuses `a/b/c.exe`.

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::bounds;
use crate::clock;
use crate::formats::{self, Models};
use crate::inspector::{Inspector, Nested};
use crate::model_trust::{Mode, ModelTrust, SigningFile};
use crate::refusal::Refusal;
use crate::report::Report;
use crate::rules::Rules;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanFile {
    command: Vec<String>,
    timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    quarantine: PathBuf,
    max_file_size: Option<String>,
    inspect_timeout: Option<String>,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    models: Models,
    scan: Option<ScanFile>,
    signing: Option<SigningFile>,
}

/// An external scanner: `argv` with `{path}` replaced by the file's path; exit 0 = clean,
/// 1 = infected, anything else (or the timeout) = scanner error.
#[derive(Debug, Clone)]
pub struct ScanCommand {
    pub argv: Vec<String>,
    pub timeout: Duration,
}

/// A loaded, checked policy.
#[derive(Debug)]
pub struct Policy {
    /// Where refused files go (the receiver's).
    pub quarantine: PathBuf,
    max_file_size: Option<u64>,
    inspect_timeout: Duration,
    allow: Option<Rules>,
    deny: Rules,
    /// The formats looked into, in the order they are asked.
    inspectors: Vec<Box<dyn Inspector>>,
    scan: Option<ScanCommand>,
    /// `[signing]`, unless it is off.
    signing: Option<ModelTrust>,
}

impl Policy {
    /// Parses `text` (key files named relative to the current directory).
    pub fn parse(text: &str) -> Result<Policy, String> {
        Policy::parse_at(text, Path::new("."))
    }

    /// Parses `text`, the contents of a policy file in `base` (key files are read from there).
    pub fn parse_at(text: &str, base: &Path) -> Result<Policy, String> {
        let file: PolicyFile =
            toml::from_str(text).map_err(|e| sluice_common::config::toml_error(text, &e))?;
        let max_file_size = file
            .max_file_size
            .map(|s| {
                sluice_common::units::parse_bytes(&s)
                    .map_err(|_| format!("max_file_size {s:?}: expected a size, e.g. 200GiB"))
            })
            .transpose()?;
        let inspect_timeout = match file.inspect_timeout {
            None => clock::DEFAULT_TIMEOUT,
            Some(t) => humantime::parse_duration(&t)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| format!("inspect_timeout {t:?}: expected a duration, e.g. 120s"))?,
        };
        let allow = (!file.allow.is_empty())
            .then(|| Rules::new(&file.allow, "allow"))
            .transpose()?;
        let deny = Rules::new(&file.deny, "deny")?;
        let scan = file
            .scan
            .map(|s| {
                if s.command.is_empty() || !s.command.iter().any(|a| a.contains("{path}")) {
                    return Err("[scan] command must name the file as {path}".to_string());
                }
                let timeout = match s.timeout {
                    None => Duration::from_secs(120),
                    Some(t) => humantime::parse_duration(&t)
                        .map_err(|_| format!("[scan] timeout {t:?}: expected e.g. 120s"))?,
                };
                Ok(ScanCommand {
                    argv: s.command,
                    timeout,
                })
            })
            .transpose()?;
        let inspectors = formats::inspectors(&file.models);
        let signing = file
            .signing
            .map(|s| ModelTrust::load(s, base))
            .transpose()?
            .filter(|t| t.mode != Mode::Off);
        Ok(Policy {
            quarantine: file.quarantine,
            max_file_size,
            inspect_timeout,
            allow,
            deny,
            inspectors,
            scan,
            signing,
        })
    }

    /// Loads `path`.
    pub fn load(path: &Path) -> Result<Policy, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Policy::parse_at(&text, base).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// `[signing]`: what models must carry, unless it is off.
    pub fn model_trust(&self) -> Option<&ModelTrust> {
        self.signing.as_ref()
    }

    /// The longest one file's inspection may take (`inspect_timeout`).
    pub fn inspect_timeout(&self) -> Duration {
        self.inspect_timeout
    }

    /// The external scanner, if one is configured.
    pub fn scan_command(&self) -> Option<&ScanCommand> {
        self.scan.as_ref()
    }

    /// The name and size rules (cheap: no content read).
    pub fn check_name_and_size(&self, path: &str, size: u64) -> Result<(), Refusal> {
        if let Some(pattern) = self.deny.first_match(path) {
            return Err(Refusal::Denied(pattern.to_string()));
        }
        // A model's signature is let through `allow` when signatures are looked for: without
        // it no model could pass.
        let signature = self
            .signing
            .as_ref()
            .is_some_and(|t| t.signature_of(path).is_some());
        if let Some(allow) = self.allow.as_ref().filter(|_| !signature) {
            if allow.first_match(path).is_none() {
                return Err(Refusal::NotAllowed);
            }
        }
        match self.max_file_size {
            Some(max) if size > max => Err(Refusal::TooLarge { size, max }),
            _ => Ok(()),
        }
    }

    /// The types by content and their inspectors, on `file` (read from its start) of `size`
    /// bytes named `path`; archives are looked into; within `inspect_timeout`. The name of
    /// the first format that checked it, if one claimed it ([`Policy::inspect_all`] has all).
    pub fn inspect(
        &self,
        file: &mut (impl Read + Seek),
        path: &str,
        size: u64,
    ) -> Result<Option<&'static str>, Refusal> {
        Ok(self.inspect_all(file, path, size)?.first().copied())
    }

    /// The same; the names of every format that checked the file (a polyglot has several).
    pub fn inspect_all(
        &self,
        file: &mut (impl Read + Seek),
        path: &str,
        size: u64,
    ) -> Result<Vec<&'static str>, Refusal> {
        self.nested().file(file, path, size)
    }

    /// Name rules, size, and the inspectors on `file`, as [`Policy::inspect_all`]; the
    /// verdict with what the inspectors found on the way (a refused file's report holds what
    /// was found before the refusal).
    pub fn report(&self, file: &mut (impl Read + Seek), path: &str, size: u64) -> Report {
        let mut nested = self.nested();
        let verdict = self
            .check_name_and_size(path, size)
            .and_then(|()| nested.file(file, path, size));
        let (findings, findings_dropped) = nested.into_findings();
        let (formats, reason) = match verdict {
            Ok(formats) => (formats, None),
            Err(refusal) => (Vec::new(), Some(refusal.to_string())),
        };
        Report {
            path: path.to_string(),
            size,
            verdict: if reason.is_none() {
                "admitted"
            } else {
                "refused"
            },
            reason,
            formats,
            findings,
            findings_dropped,
        }
    }

    fn nested(&self) -> Nested<'_> {
        let max = self.max_file_size.unwrap_or(bounds::DEFAULT_MAX_EXPANDED);
        Nested::new(&self.inspectors, &self.deny, max, self.inspect_timeout)
    }
}

/// Runs `command` on the file at `path`: exit 0 passes, 1 is a detection, anything else (a
/// crash, an unknown status, the timeout) is a scanner error. Both refuse the file.
pub fn run_scanner(command: &ScanCommand, path: &Path) -> Result<(), Refusal> {
    let shown = path.to_string_lossy();
    let argv: Vec<String> = command
        .argv
        .iter()
        .map(|a| a.replace("{path}", &shown))
        .collect();
    let Some((program, args)) = argv.split_first() else {
        return Err(Refusal::ScannerFailed("no command".into()));
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Refusal::ScannerFailed(format!("cannot run {program}: {e}")))?;
    // Read its output while it runs (a full pipe would stall it): the first 4 KiB are kept.
    let reader = child.stdout.take().map(|mut out| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let _ = (&mut out).take(4096).read_to_end(&mut kept);
            let _ = std::io::copy(&mut out, &mut std::io::sink());
            String::from_utf8_lossy(&kept).into_owned()
        })
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= command.timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Refusal::ScannerFailed(format!(
                    "{program} did not finish within {}",
                    humantime::format_duration(command.timeout)
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(Refusal::ScannerFailed(format!("{program}: {e}"))),
        }
    };
    // The scanner has exited; a child it left holding the pipe could keep the reader waiting,
    // so the output is taken only if it is complete.
    let output = reader
        .filter(|r| {
            r.is_finished() || {
                std::thread::sleep(Duration::from_millis(100));
                r.is_finished()
            }
        })
        .and_then(|r| r.join().ok())
        .unwrap_or_default();
    let first = output
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string();
    match status.code() {
        Some(0) => Ok(()),
        Some(1) => Err(Refusal::Infected(first)),
        other => Err(Refusal::ScannerFailed(format!(
            "{program} exited {}{}",
            other.map_or_else(|| "on a signal".to_string(), |c| c.to_string()),
            if first.is_empty() {
                String::new()
            } else {
                format!(": {first}")
            }
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const POLICY: &str = r#"
quarantine = "/srv/q"
max_file_size = "1MiB"
allow = ["*.safetensors", "*.txt", "*.pkl", "data/**"]
deny = ["*.exe", "secret/*"]
[models]
pickle = "scan"
pickle_allow = ["mylib.Layer"]
"#;

    #[test]
    fn name_and_size_rules_deny_first_then_allow_then_size() {
        let p = Policy::parse(POLICY).unwrap();
        assert!(p.check_name_and_size("model.safetensors", 10).is_ok());
        assert!(p.check_name_and_size("a/b/notes.txt", 10).is_ok());
        assert!(p.check_name_and_size("data/x/y.bin", 10).is_ok());
        let refused = |path: &str, size| p.check_name_and_size(path, size).unwrap_err().to_string();
        assert_eq!(refused("a/run.exe", 1), "denied by the name rule \"*.exe\"");
        assert_eq!(
            refused("secret/notes.txt", 1),
            "denied by the name rule \"secret/*\""
        );
        assert_eq!(refused("model.bin", 1), "not on the allow list");
        assert_eq!(refused("m/model.sig", 1), "not on the allow list");
        // With [signing], a model's signature passes `allow` (never `deny`).
        let dir = tempfile::tempdir().unwrap();
        let key = p256::ecdsa::SigningKey::from_bytes(&[1u8; 32].into()).unwrap();
        let pem = p256::pkcs8::EncodePublicKey::to_public_key_pem(
            key.verifying_key(),
            p256::pkcs8::LineEnding::LF,
        )
        .unwrap();
        std::fs::write(dir.path().join("k.pem"), pem).unwrap();
        let signing = format!("{POLICY}[signing]\nmodels = \"require\"\nkeys = [\"k.pem\"]\n");
        let p = Policy::parse_at(&signing, dir.path()).unwrap();
        assert!(p.check_name_and_size("m/model.sig", 1).is_ok());
        assert!(p.check_name_and_size("secret/model.sig", 1).is_err());
        assert_eq!(
            refused("big.txt", 2 << 20),
            "larger than max_file_size (2097152 > 1048576 bytes)"
        );
    }

    #[test]
    fn types_come_from_content_and_the_models_rules_apply() {
        let p = Policy::parse(POLICY).unwrap();
        let evil = b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00id\x85R.".to_vec();
        let plain = b"\x80\x02cmylib\nLayer\n)R.".to_vec();
        let inspect = |bytes: &[u8], name: &str| {
            p.inspect(&mut Cursor::new(bytes.to_vec()), name, bytes.len() as u64)
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            inspect(&evil, "weights.pkl").unwrap_err(),
            "pickle imports posix.system (not on the allow-list)"
        );
        // The same bytes under another name are still a pickle.
        assert!(inspect(&evil, "weights.safetensors")
            .unwrap_err()
            .contains("posix.system"));
        assert_eq!(inspect(&plain, "w.pkl").unwrap(), Some("pickle"));
        // A file named .safetensors that is not one.
        assert!(inspect(b"hello world", "w.safetensors")
            .unwrap_err()
            .starts_with("safetensors invalid: header length"));
        assert_eq!(inspect(b"hello", "notes.txt").unwrap(), None);
        let refuse = Policy::parse("quarantine = \"q\"\n[models]\npickle = \"refuse\"\n").unwrap();
        assert!(matches!(
            refuse.inspect(&mut Cursor::new(plain.clone()), "w.pkl", plain.len() as u64),
            Err(Refusal::PickleRefused)
        ));
        let mut zip = b"PK\x03\x04".to_vec();
        zip.resize(64, 0);
        assert!(inspect(&zip, "a.zip")
            .unwrap_err()
            .contains("not a readable zip"));
    }

    #[test]
    fn the_packaged_example_policy_parses() {
        let p = Policy::parse(include_str!("../../packaging/config/policy.toml")).unwrap();
        assert_eq!(p.quarantine, Path::new("/srv/sluice/quarantine"));
        assert!(p.check_name_and_size("m/model.safetensors", 1).is_ok());
        assert!(p.check_name_and_size("run.sh", 1).is_err());
    }

    #[test]
    fn bad_policies_are_refused_with_their_reason() {
        for (text, phrase) in [
            ("max_file_size = \"1MiB\"\n", "quarantine"),
            (
                "quarantine = \"q\"\nmax_file_size = \"lots\"\n",
                "max_file_size",
            ),
            ("quarantine = \"q\"\ndeny = [\"[\"]\n", "deny pattern"),
            (
                "quarantine = \"q\"\n[models]\npickle = \"maybe\"\n",
                "maybe",
            ),
            (
                "quarantine = \"q\"\n[scan]\ncommand = [\"clamscan\"]\n",
                "{path}",
            ),
            ("quarantine = \"q\"\nspeed = 1\n", "speed"),
        ] {
            let err = Policy::parse(text).unwrap_err();
            assert!(err.contains(phrase), "{text}: {err}");
        }
    }

    #[test]
    fn the_scanner_s_exit_status_decides_and_a_hung_one_is_stopped() {
        let dir = std::env::temp_dir();
        let run = |argv: &[&str], timeout| {
            let command = ScanCommand {
                argv: argv.iter().map(|s| s.to_string()).collect(),
                timeout,
            };
            run_scanner(&command, &dir)
        };
        let long = Duration::from_secs(10);
        assert!(run(&["sh", "-c", "exit 0", "{path}"], long).is_ok());
        assert_eq!(
            run(
                &["sh", "-c", "echo \"$0: Eicar FOUND\"; exit 1", "{path}"],
                long
            )
            .unwrap_err()
            .to_string(),
            format!("the scanner flagged it: {}: Eicar FOUND", dir.display())
        );
        assert!(run(&["sh", "-c", "exit 2", "{path}"], long)
            .unwrap_err()
            .to_string()
            .starts_with("scanner error: sh exited 2"));
        // A verbose scanner (more than a pipe holds) is not stalled by its own output.
        let verbose = run(
            &["sh", "-c", "yes found | head -c 1000000; exit 1", "{path}"],
            long,
        );
        assert_eq!(
            verbose.unwrap_err().to_string(),
            "the scanner flagged it: found"
        );
        let hung = run(
            &["sh", "-c", "sleep 5", "{path}"],
            Duration::from_millis(200),
        );
        assert!(hung
            .unwrap_err()
            .to_string()
            .contains("did not finish within"));
        assert!(run(&["/nonexistent/scanner", "{path}"], long)
            .unwrap_err()
            .to_string()
            .contains("cannot run"));
    }

    /// A zip of `members` (name, bytes), deflated.
    fn zip_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        use std::io::Write;
        let mut out = Cursor::new(Vec::new());
        let mut zip = zip::ZipWriter::new(&mut out);
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in members {
            zip.start_file(*name, options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
        out.into_inner()
    }

    /// A ustar archive of `members` (name, type flag, bytes), names written raw (the `tar`
    /// crate's own builder refuses `..`, which is the point of some tests).
    fn tar_of(members: &[(&str, u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, bytes) in members {
            let mut header = [0u8; 512];
            header[..name.len()].copy_from_slice(name.as_bytes());
            header[100..107].copy_from_slice(b"0000644");
            header[124..135].copy_from_slice(format!("{:011o}", bytes.len()).as_bytes());
            header[136..147].copy_from_slice(b"00000000000");
            header[156] = *kind;
            header[257..263].copy_from_slice(b"ustar\0");
            header[263..265].copy_from_slice(b"00");
            header[148..156].copy_from_slice(b"        ");
            let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
            header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
            out.extend_from_slice(&header);
            out.extend_from_slice(bytes);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    const EVIL: &[u8] = b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00id\x85R.";
    /// What a plain PyTorch state dict's data.pkl imports (simplified).
    const TENSOR: &[u8] =
        b"\x80\x02ccollections\nOrderedDict\n)Rctorch._utils\n_rebuild_tensor_v2\n)R.";

    fn check(p: &Policy, bytes: &[u8], name: &str) -> Result<Option<&'static str>, String> {
        p.inspect(&mut Cursor::new(bytes.to_vec()), name, bytes.len() as u64)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_checkpoint_zip_is_looked_into_member_by_member() {
        let p = Policy::parse("quarantine = \"q\"\ndeny = [\"*.so\"]\n").unwrap();
        let plain = zip_of(&[
            ("archive/data.pkl", TENSOR),
            ("archive/data/0", &[7u8; 4096]),
            ("archive/version", b"3\n"),
        ]);
        assert_eq!(check(&p, &plain, "model.pt").unwrap(), Some("zip"));
        let evil = zip_of(&[("archive/data.pkl", EVIL), ("archive/data/0", &[7u8; 64])]);
        assert_eq!(
            check(&p, &evil, "model.pt").unwrap_err(),
            "archive refused: model.pt!archive/data.pkl: pickle imports posix.system (not on the allow-list)"
        );
        let library = zip_of(&[("lib/evil.so", b"\x7fELF")]);
        assert!(check(&p, &library, "x.zip")
            .unwrap_err()
            .contains("denied by the name rule"));
        // Nested: a tar holding a zip holding the pickle.
        let nested = tar_of(&[("inner.zip", b'0', &evil)]);
        assert_eq!(
            check(&p, &nested, "bundle.tar").unwrap_err(),
            "archive refused: bundle.tar!inner.zip!archive/data.pkl: pickle imports posix.system (not on the allow-list)"
        );
    }

    #[test]
    fn the_report_says_what_each_format_found_in_the_file_and_its_members() {
        let p = Policy::parse("quarantine = \"q\"\n").unwrap();
        let header = r#"{"w":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}"#;
        let mut tensors = (header.len() as u64).to_le_bytes().to_vec();
        tensors.extend_from_slice(header.as_bytes());
        tensors.extend_from_slice(&[0; 4]);
        let checkpoint = zip_of(&[("archive/data.pkl", TENSOR), ("w.safetensors", &tensors)]);
        let report = |bytes: &[u8], name: &str| {
            p.report(&mut Cursor::new(bytes.to_vec()), name, bytes.len() as u64)
        };
        let r = report(&checkpoint, "model.pt");
        assert_eq!(
            (r.verdict, r.formats.as_slice()),
            ("admitted", &["zip"][..])
        );
        let found: Vec<(&str, &str, String)> = r
            .findings
            .iter()
            .map(|f| (f.at.as_str(), f.format, f.facts.to_string()))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "model.pt!archive/data.pkl",
                    "pickle",
                    r#"{"imports":["collections.OrderedDict","torch._utils._rebuild_tensor_v2"],"pickles":1}"#
                        .to_string()
                ),
                (
                    "model.pt!w.safetensors",
                    "safetensors",
                    r#"{"data_bytes":4,"dtypes":{"BF16":1},"tensors":1}"#.to_string()
                ),
            ]
        );
        // Refused: the reason, and what was found before it.
        let evil = zip_of(&[("a/data.pkl", TENSOR), ("b/data.pkl", EVIL)]);
        let r = report(&evil, "model.pt");
        assert_eq!(r.verdict, "refused");
        assert!(r.reason.as_deref().unwrap().contains("posix.system"));
        assert_eq!(r.findings.len(), 1);
        assert_eq!(r.findings[0].at, "model.pt!a/data.pkl");
        assert!(r.text().starts_with("model.pt: refused: archive refused"));
    }

    #[test]
    fn bombs_hostile_paths_and_links_are_refused() {
        let p = Policy::parse("quarantine = \"q\"\n").unwrap();
        let bomb = zip_of(&[("zeros.bin", &vec![0u8; 32 << 20])]);
        assert!(bomb.len() < 1 << 20, "deflate made {} bytes", bomb.len());
        assert!(check(&p, &bomb, "b.zip").unwrap_err().contains("(a bomb)"));
        let traversal = tar_of(&[("../../etc/cron.d/x", b'0', b"* * * * * root id")]);
        assert!(check(&p, &traversal, "t.tar")
            .unwrap_err()
            .contains("t.tar!../../etc/cron.d/x: hostile member path"));
        let link = tar_of(&[("link", b'2', b"")]);
        assert!(check(&p, &link, "l.tar")
            .unwrap_err()
            .contains("links and special files are refused"));
        let fine = tar_of(&[("dir/", b'5', b""), ("dir/notes.txt", b'0', b"hello")]);
        assert_eq!(check(&p, &fine, "ok.tar").unwrap(), Some("tar"));
        // Too deep: tar in tar in tar in tar.
        let mut deep = tar_of(&[("x.txt", b'0', b"x")]);
        for _ in 0..3 {
            deep = tar_of(&[("inner.tar", b'0', &deep)]);
        }
        assert!(check(&p, &deep, "deep.tar")
            .unwrap_err()
            .contains("nested more than 3 deep"));
        // A size limit counts every member.
        let small = Policy::parse("quarantine = \"q\"\nmax_file_size = \"10KiB\"\n").unwrap();
        let many = tar_of(&[("a", b'0', &[1u8; 6000]), ("b", b'0', &[1u8; 6000])]);
        assert!(check(&small, &many, "m.tar")
            .unwrap_err()
            .contains("expand beyond 10240 bytes"));
    }

    #[test]
    fn archive_metadata_is_bounded_before_it_is_read() {
        let p = Policy::parse("quarantine = \"q\"\n").unwrap();
        // A GNU long name of 1 MiB: refused by its declared size, never read into memory.
        let long = tar_of(&[
            ("././@LongLink", b'L', &vec![b'a'; 1 << 20]),
            ("x", b'0', b"x"),
        ]);
        assert!(check(&p, &long, "l.tar")
            .unwrap_err()
            .contains("a tar extension record of 1048576 bytes"));
        // A PAX header's path is the member's path (and checked like one).
        let pax = tar_of(&[
            ("pax", b'x', b"19 path=../escaped\n"),
            ("ok.txt", b'0', b"x"),
        ]);
        assert!(check(&p, &pax, "p.tar")
            .unwrap_err()
            .contains("p.tar!../escaped: hostile member path"));
        // A corrupt header, and a member cut short.
        let mut bad = tar_of(&[("a.txt", b'0', b"hello")]);
        bad[0] ^= 1;
        assert!(check(&p, &bad, "b.tar")
            .unwrap_err()
            .contains("bad header checksum"));
        let mut cut = tar_of(&[("a.txt", b'0', &[b'z'; 2000])]);
        cut.truncate(512 + 1000);
        assert!(check(&p, &cut, "c.tar").unwrap_err().contains("truncated"));
        // A zip whose end record announces 60 000 members: refused before the library reads
        // its central directory.
        let mut zip = zip_of(&[("a.txt", b"hello")]);
        let at = zip.windows(4).rposition(|w| w == b"PK\x05\x06").unwrap();
        zip[at + 10..at + 12].copy_from_slice(&60_000u16.to_le_bytes());
        assert!(check(&p, &zip, "z.zip")
            .unwrap_err()
            .contains("a central directory of 60000 members"));
    }
}
