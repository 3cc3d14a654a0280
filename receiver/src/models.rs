//! Signed models (`[signing]` in `--policy`): which arriving files wait for their model's
//! signature, which go out with it, which are refused. Sans-IO: the waiting files' bytes are
//! `held`'s; this decides from paths and digests, the verified signatures, and what the
//! receiver delivered before (its records), so its rules are tested directly.
//!
//! ```text
//!  file passed the gate ─▶ arrive ─┬─ Place   nothing asks for a signature
//!                                  ├─ Hold    a signature (model.sig), a model's file under
//!                                  │          "require", or a file of a model whose signature
//!                                  │          waits or was delivered before
//!                                  └─ Refuse  the held space is full
//!  a model's signature held ─▶ evaluate ─┬─ Wait     signed files still to come
//!                                        ├─ Release  every signed file here (or delivered
//!                                        │           before, same digest): all go out, the
//!                                        │           signature last
//!                                        └─ Refuse   untrusted or unreadable signature, or a
//!                                                    changed or unsigned file: the whole model
//!  every file held past `wait` ─▶ refused ("model signature missing", or the first signed
//!                                  file still missing)
//! ```
//!
//! A file belongs to the model of the nearest directory above it with a signature waiting.
//! Files already delivered are never taken back: under "require" the receiver holds every
//! file a model may need before its signature arrives, so the first file delivered of a model
//! is one that came with its signature checked.

use std::collections::{BTreeMap, BTreeSet};

use sluice_inspect::model_trust::{Mode, ModelTrust};
use sluice_inspect::signing::{self, Signed};

/// Files waiting at once, at most (each has a file and a metadata file in `held/`).
pub(crate) const MAX_HELD_FILES: usize = 100_000;
/// Files one model's signature may list: a model's check costs in proportion to them, and
/// it is done again as its files arrive.
pub(crate) const MAX_MODEL_FILES: usize = 10_000;
/// Directories remembered as models, and models remembered as refused, this run.
const MAX_REMEMBERED: usize = 10_000;

/// A file waiting for its model's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Held {
    pub path: String,
    pub sha256: [u8; 32],
    pub size: u64,
    /// When it began to wait (seconds since the Unix epoch).
    pub since: u64,
}

/// What to do with a file that passed the gate.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    Place,
    Hold,
    Refuse(String),
}

/// What a model's signature says of the files held for it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Signed files are still to come (why: the first one missing, or no signature yet).
    Wait(String),
    /// Every file of the model is here: deliver `ids` (the signature last), signed by
    /// `signer`; `unsigned` are files the signature says it leaves out (`ignore_paths`, such
    /// as `.git`): never delivered as part of a signed model, refused on their own.
    Release {
        ids: Vec<u64>,
        signer: String,
        unsigned: Vec<(u64, String)>,
    },
    /// The model is refused: these files, for this reason.
    Refuse { ids: Vec<u64>, reason: String },
}

/// The files held, indexed by id, path, age, and (for signatures) model directory, so that
/// each decision costs in proportion to a path's depth or a model's files, never to all
/// that is held.
#[derive(Debug, Default)]
pub(crate) struct ModelHold {
    held: BTreeMap<u64, Held>,
    by_path: BTreeMap<String, u64>,
    by_age: BTreeSet<(u64, u64)>,
    /// Signatures waiting, by model directory.
    signatures: BTreeMap<String, u64>,
    bytes: u64,
    /// Directories a model's file or signature was seen in (held, or coming in a pack being
    /// published): under "require", every file in them waits for a signature.
    announced: BTreeSet<String>,
    /// Models refused this run, and why: their files still to come are refused on arrival
    /// (the model is refused whole), until a new signature for it arrives.
    refused: BTreeMap<String, String>,
}

/// Whether `path` lies in directory `dir` (`""` is the top), at any depth.
#[cfg(test)]
fn under(path: &str, dir: &str) -> bool {
    dir.is_empty()
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The directories above `path`, nearest first, ending with the top (`""`).
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(path);
    std::iter::from_fn(move || {
        let p = rest?;
        match p.rsplit_once('/') {
            Some((dir, _)) => {
                rest = Some(dir);
                Some(dir)
            }
            None => {
                rest = None;
                Some("")
            }
        }
    })
}

/// `path` relative to `dir`.
fn relative<'p>(path: &'p str, dir: &str) -> &'p str {
    if dir.is_empty() {
        path
    } else {
        path.get(dir.len() + 1..).unwrap_or(path)
    }
}

impl ModelHold {
    /// The hold as an earlier run left it.
    pub fn resume(trust: &ModelTrust, held: impl IntoIterator<Item = (u64, Held)>) -> Self {
        let mut hold = ModelHold::default();
        for (id, file) in held {
            hold.insert(trust, id, file);
        }
        hold
    }

    /// Notes that `path`, a file arriving (held, or coming in the pack being published), may
    /// make its directory a model.
    pub fn announce(&mut self, trust: &ModelTrust, path: &str) {
        if !(trust.is_model_file(path) || trust.signature_of(path).is_some()) {
            return;
        }
        let dir = ancestors(path).next().unwrap_or("");
        // A model file at the top is a model of its own, not of everything.
        if !dir.is_empty() && self.announced.len() < MAX_REMEMBERED {
            self.announced.insert(dir.to_string());
        }
    }

    /// Notes that the model at `dir` was refused for `reason`.
    pub fn refuse_model(&mut self, dir: &str, reason: &str) {
        if self.refused.len() < MAX_REMEMBERED {
            self.refused.insert(dir.to_string(), reason.to_string());
        }
    }

    /// The file held at `path`, if one is: its id and digest.
    pub fn held_at(&self, path: &str) -> Option<(u64, [u8; 32])> {
        let id = *self.by_path.get(path)?;
        Some((id, self.held.get(&id)?.sha256))
    }

    /// Holds `file` as `id` (a signature is no longer refused, and makes its directory a
    /// model). The caller first removes a file held at the same path.
    pub fn insert(&mut self, trust: &ModelTrust, id: u64, file: Held) {
        self.announce(trust, &file.path);
        if let Some(dir) = trust.signature_of(&file.path) {
            self.refused.remove(dir);
            self.signatures.insert(dir.to_string(), id);
        }
        self.bytes += file.size;
        self.by_path.insert(file.path.clone(), id);
        self.by_age.insert((file.since, id));
        self.held.insert(id, file);
    }

    pub fn remove(&mut self, trust: &ModelTrust, id: u64) -> Option<Held> {
        let file = self.held.remove(&id)?;
        self.bytes -= file.size;
        if self.by_path.get(&file.path) == Some(&id) {
            self.by_path.remove(&file.path);
        }
        self.by_age.remove(&(file.since, id));
        if let Some(dir) = trust.signature_of(&file.path) {
            if self.signatures.get(dir) == Some(&id) {
                self.signatures.remove(dir);
            }
        }
        Some(file)
    }

    /// The directories of the signatures waiting.
    pub fn signature_dirs(&self) -> Vec<String> {
        self.signatures.keys().cloned().collect()
    }

    /// The nearest directory above `path` with a signature waiting.
    pub fn model_of<'p>(&self, path: &'p str) -> Option<&'p str> {
        ancestors(path).find(|dir| self.signatures.contains_key(*dir))
    }

    /// Decides for a file at `path` of `size` bytes that passed the gate. `signed_before`
    /// says whether a model's signature was delivered at a directory earlier.
    pub fn arrive(
        &self,
        trust: &ModelTrust,
        path: &str,
        size: u64,
        signed_before: impl Fn(&str) -> bool,
    ) -> Arrival {
        let signature = trust.signature_of(path);
        if let Some(dir) = signature {
            if dir.is_empty() {
                return Arrival::Refuse(format!(
                    "a model signature at the top names no model directory: {path}"
                ));
            }
            // Inside a model signed already, a signature is one of its files: it cannot take
            // a subdirectory over from the model's own signature.
            let outer =
                ancestors(dir).find(|a| self.signatures.contains_key(*a) || signed_before(a));
            if outer.is_some() || trust.in_model_dir(dir) {
                return Arrival::Refuse(format!("a model signature inside another model: {path}"));
            }
        }
        let signature = signature.is_some();
        if !signature && self.model_of(path).is_none() {
            // A file of a model refused this run is refused with it.
            if let Some(reason) = ancestors(path).find_map(|dir| self.refused.get(dir)) {
                return Arrival::Refuse(reason.clone());
            }
        }
        let hold = signature
            || self.model_of(path).is_some()
            || (trust.mode == Mode::Require
                && (trust.is_model_file(path)
                    || trust.in_model_dir(path)
                    || ancestors(path).any(|dir| self.announced.contains(dir))
                    // Once no more model directories can be remembered, every file is
                    // taken for a model's (fail closed).
                    || self.announced.len() >= MAX_REMEMBERED
                    || ancestors(path).any(&signed_before)));
        if !hold {
            return Arrival::Place;
        }
        if self.held.len() >= MAX_HELD_FILES || self.bytes.saturating_add(size) > trust.max_held {
            return Arrival::Refuse(format!(
                "model files waiting for their signature fill the held space ({} files, {} \
                 bytes; [signing] max_held)",
                self.held.len(),
                self.bytes
            ));
        }
        Arrival::Hold
    }

    /// The files of the model at `dir`, its signature last: held under `dir`, and under no
    /// nearer directory with a signature waiting.
    fn members(&self, dir: &str) -> Vec<u64> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut ids: Vec<u64> = self
            .by_path
            .range(prefix.clone()..)
            .take_while(|(path, _)| path.starts_with(&prefix))
            .filter(|(path, _)| self.model_of(path) == Some(dir))
            .map(|(_, id)| *id)
            .filter(|id| self.signatures.get(dir) != Some(id))
            .collect();
        ids.extend(self.signatures.get(dir));
        ids
    }

    /// Holds the model at `dir` to its signature: `verify` checks the held bundle of that id;
    /// `delivered` lists the files delivered before under `dir` (path, SHA-256). The model
    /// goes out only as exactly its signed files: a file under `dir` delivered before and not
    /// signed, or held and neither signed nor left out by the signature, refuses it.
    pub fn evaluate(
        &self,
        trust: &ModelTrust,
        dir: &str,
        verify: impl FnOnce(u64) -> Result<Signed, String>,
        delivered: impl FnOnce() -> Result<Vec<(String, [u8; 32])>, String>,
    ) -> Verdict {
        let Some(&signature) = self.signatures.get(dir) else {
            return Verdict::Wait("model signature missing".to_string());
        };
        let ids = self.members(dir);
        let signed = match verify(signature) {
            Ok(signed) if signed.files.len() > MAX_MODEL_FILES => {
                let reason = format!("model signature lists more than {MAX_MODEL_FILES} files");
                return Verdict::Refuse { ids, reason };
            }
            Ok(signed) => signed,
            Err(reason) => return Verdict::Refuse { ids, reason },
        };
        let mut present: BTreeMap<String, [u8; 32]> = BTreeMap::new();
        let mut unsigned = Vec::new();
        let mut release = Vec::with_capacity(ids.len());
        for &id in &ids {
            let Some(f) = self.held.get(&id) else {
                continue;
            };
            let name = relative(&f.path, dir);
            if id == signature || signed.files.contains_key(name) {
                present.insert(name.to_string(), f.sha256);
                release.push(id);
            } else if signed.ignores(name) {
                unsigned.push((
                    id,
                    format!("model file not signed (its signature leaves it out): {name}"),
                ));
            } else {
                return Verdict::Refuse {
                    ids,
                    reason: format!("model file not signed: {name}"),
                };
            }
        }
        let before = match delivered() {
            Ok(before) => before,
            Err(reason) => return Verdict::Refuse { ids, reason },
        };
        for (path, digest) in before {
            let name = relative(&path, dir);
            if present.contains_key(name) || name == trust.signature {
                continue;
            }
            match signed.files.get(name) {
                Some(d) if *d == digest => {
                    present.insert(name.to_string(), digest);
                }
                // Another version delivered before: the signed one may still come.
                Some(_) => {}
                None => {
                    return Verdict::Refuse {
                        ids,
                        reason: format!(
                            "model file not signed: {name} (delivered before its signature)"
                        ),
                    }
                }
            }
        }
        present.remove(&trust.signature);
        match signing::check_files(&signed, &present, &trust.signature) {
            Ok(()) => Verdict::Release {
                ids: release,
                signer: signed.signer,
                unsigned,
            },
            Err(reason) if reason.starts_with(signing::MISSING) => Verdict::Wait(reason),
            Err(reason) => Verdict::Refuse { ids, reason },
        }
    }

    /// Files that waited longer than `[signing] wait` by `now` (seconds since the Unix
    /// epoch): alone (no signature came: `None`), or a whole model whose signature waits for
    /// files that did not come (its directory).
    pub fn expired(&self, trust: &ModelTrust, now: u64) -> Vec<(Option<String>, Vec<u64>)> {
        let wait = trust.wait.as_secs();
        let mut expired: Vec<(Option<String>, Vec<u64>)> = Vec::new();
        let mut models: BTreeSet<&str> = BTreeSet::new();
        for (since, id) in &self.by_age {
            if since.saturating_add(wait) > now {
                break;
            }
            let Some(f) = self.held.get(id) else {
                continue;
            };
            match self.model_of(&f.path) {
                Some(dir) => {
                    models.insert(dir);
                }
                None => expired.push((None, vec![*id])),
            }
        }
        for dir in models {
            expired.push((Some(dir.to_string()), self.members(dir)));
        }
        expired
    }

    /// When the oldest file began to wait.
    pub fn oldest(&self) -> Option<u64> {
        self.by_age.first().map(|(since, _)| *since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    use sha2::{Digest, Sha256};
    use sluice_inspect::policy::Policy;

    struct Fixture {
        _dir: tempfile::TempDir,
        policy: Policy,
        key: String,
        other: String,
    }

    fn fixture(mode: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let pem = |seed: u8| {
            let k = p256::ecdsa::SigningKey::from_bytes(&[seed; 32].into()).unwrap();
            let public = k.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
            (k.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(), public)
        };
        let (key, public) = pem(3);
        let (other, _) = pem(4);
        std::fs::write(dir.path().join("team.pem"), public).unwrap();
        let policy = Policy::parse_at(
            &format!(
                "quarantine = \"/q\"\n[signing]\nmodels = \"{mode}\"\nkeys = [\"team.pem\"]\n\
                 wait = \"1h\"\nmax_held = \"1KiB\"\n"
            ),
            dir.path(),
        )
        .unwrap();
        Fixture {
            _dir: dir,
            policy,
            key,
            other,
        }
    }

    fn digest(content: &str) -> [u8; 32] {
        Sha256::digest(content.as_bytes()).into()
    }

    fn bundle(key: &str, files: &[(&str, &str)]) -> Vec<u8> {
        let files = files
            .iter()
            .map(|(n, c)| (n.to_string(), digest(c)))
            .collect();
        signing::sign(&files, "m", key, &[]).unwrap()
    }

    fn held(path: &str, content: &str, since: u64) -> Held {
        Held {
            path: path.into(),
            sha256: digest(content),
            size: content.len() as u64,
            since,
        }
    }

    const NEVER: fn(&str) -> bool = |_| false;
    type Delivered = Result<Vec<(String, [u8; 32])>, String>;
    const NOTHING: fn() -> Delivered = || Ok(Vec::new());

    #[test]
    fn under_require_a_model_waits_whole_for_its_signature_then_goes_out_with_it() {
        let f = fixture("require");
        let trust = f.policy.model_trust().unwrap();
        let mut hold = ModelHold::default();
        // Unrelated files go; a model's weights wait, and so does the config beside them.
        assert_eq!(hold.arrive(trust, "data/a.csv", 10, NEVER), Arrival::Place);
        assert_eq!(
            hold.arrive(trust, "m/w.safetensors", 10, NEVER),
            Arrival::Hold
        );
        hold.announce(trust, "m/w.safetensors");
        hold.insert(trust, 1, held("m/w.safetensors", "weights", 100));
        assert_eq!(hold.arrive(trust, "m/config.json", 2, NEVER), Arrival::Hold);
        hold.insert(trust, 2, held("m/config.json", "{}", 100));
        assert_eq!(
            hold.arrive(trust, "other/config.json", 2, NEVER),
            Arrival::Place
        );
        // A model file at the top is a model of its own, not of everything.
        let mut top = ModelHold::default();
        top.announce(trust, "w.gguf");
        top.insert(trust, 7, held("w.gguf", "w", 0));
        assert_eq!(top.arrive(trust, "data/a.csv", 1, NEVER), Arrival::Place);
        assert_eq!(hold.arrive(trust, "m/model.sig", 500, NEVER), Arrival::Hold);
        let files = [("w.safetensors", "weights"), ("config.json", "{}")];
        hold.insert(trust, 3, held("m/model.sig", "sig", 100));
        let verify = |b: Vec<u8>| {
            move |id: u64| {
                assert_eq!(id, 3, "the signature's id");
                trust.verify("m", &b)
            }
        };
        assert_eq!(
            hold.evaluate(trust, "m", verify(bundle(&f.key, &files)), NOTHING),
            Verdict::Release {
                ids: vec![2, 1, 3],
                signer: "team.pem".into(),
                unsigned: vec![]
            }
        );
        // A file signed but not yet here: wait; delivered before with its digest: go.
        let more = [
            ("w.safetensors", "weights"),
            ("config.json", "{}"),
            ("t.json", "t"),
        ];
        let b = bundle(&f.key, &more);
        let waiting = Verdict::Wait("model file missing since signing: t.json".into());
        assert_eq!(
            hold.evaluate(trust, "m", verify(b.clone()), NOTHING),
            waiting
        );
        let before = || Ok(vec![("m/t.json".to_string(), digest("t"))]);
        assert!(matches!(
            hold.evaluate(trust, "m", verify(b.clone()), before),
            Verdict::Release { .. }
        ));
        let older = || Ok(vec![("m/t.json".to_string(), digest("old"))]);
        assert_eq!(hold.evaluate(trust, "m", verify(b), older), waiting);
        // Any model file of a model signed before waits for a new signature.
        let mut hold = ModelHold::default();
        let signed_m = |dir: &str| dir == "m";
        assert_eq!(
            hold.arrive(trust, "m/sub/README", 1, signed_m),
            Arrival::Hold
        );
        assert_eq!(hold.arrive(trust, "n/README", 1, signed_m), Arrival::Place);
        // The held space is bounded.
        hold.insert(trust, 9, held("x/big.gguf", &"x".repeat(1000), 1));
        assert!(matches!(
            hold.arrive(trust, "y/w.gguf", 100, NEVER),
            Arrival::Refuse(r) if r.contains("max_held")
        ));
    }

    #[test]
    fn a_changed_unsigned_or_foreign_signed_file_refuses_the_whole_model() {
        let f = fixture("require");
        let trust = f.policy.model_trust().unwrap();
        let mut hold = ModelHold::default();
        hold.insert(trust, 1, held("m/w.gguf", "weights", 0));
        hold.insert(trust, 2, held("m/config.json", "{\"evil\":1}", 0));
        hold.insert(trust, 3, held("m/model.sig", "sig", 0));
        hold.insert(trust, 4, held("elsewhere/w.gguf", "w", 0));
        let signed = [("w.gguf", "weights"), ("config.json", "{}")];
        let verdict = |key: &str, files: &[(&str, &str)]| {
            let b = bundle(key, files);
            hold.evaluate(trust, "m", |_| trust.verify("m", &b), NOTHING)
        };
        assert_eq!(
            verdict(&f.key, &signed),
            Verdict::Refuse {
                ids: vec![2, 1, 3],
                reason: "model file changed since signing: config.json".into()
            }
        );
        assert_eq!(
            verdict(&f.key, &[("w.gguf", "weights")]),
            Verdict::Refuse {
                ids: vec![2, 1, 3],
                reason: "model file not signed: config.json".into()
            }
        );
        assert_eq!(
            verdict(&f.other, &signed),
            Verdict::Refuse {
                ids: vec![2, 1, 3],
                reason: "model signed by an untrusted key".into()
            }
        );
    }

    #[test]
    fn files_that_wait_too_long_are_refused_and_verify_mode_holds_only_signed_models() {
        let f = fixture("require");
        let trust = f.policy.model_trust().unwrap();
        let mut hold = ModelHold::default();
        hold.insert(trust, 1, held("a/w.gguf", "w", 0));
        hold.insert(trust, 2, held("m/w.gguf", "w", 5000));
        hold.insert(trust, 3, held("m/model.sig", "s", 0));
        hold.insert(trust, 4, held("b/w.gguf", "w", 3000));
        assert_eq!(
            hold.expired(trust, 3700),
            vec![(None, vec![1]), (Some("m".to_string()), vec![2, 3])]
        );
        assert_eq!(hold.oldest(), Some(0));

        let f = fixture("verify");
        let trust = f.policy.model_trust().unwrap();
        let mut hold = ModelHold::default();
        assert_eq!(hold.arrive(trust, "m/w.gguf", 1, NEVER), Arrival::Place);
        assert_eq!(hold.arrive(trust, "m/model.sig", 1, NEVER), Arrival::Hold);
        hold.insert(trust, 1, held("m/model.sig", "s", 0));
        assert_eq!(hold.arrive(trust, "m/w.gguf", 1, NEVER), Arrival::Hold);
        assert_eq!(hold.arrive(trust, "n/w.gguf", 1, |_| true), Arrival::Place);
    }

    #[test]
    fn a_refused_model_refuses_its_files_still_to_come_until_a_new_signature() {
        let f = fixture("require");
        let trust = f.policy.model_trust().unwrap();
        let mut hold = ModelHold::default();
        hold.refuse_model("m", "model signed by an untrusted key");
        assert_eq!(
            hold.arrive(trust, "m/sub/w.gguf", 1, NEVER),
            Arrival::Refuse("model signed by an untrusted key".into())
        );
        assert_eq!(hold.arrive(trust, "n/w.gguf", 1, NEVER), Arrival::Hold);
        assert_eq!(hold.arrive(trust, "m/model.sig", 1, NEVER), Arrival::Hold);
        hold.insert(trust, 1, held("m/model.sig", "s", 0));
        assert_eq!(hold.arrive(trust, "m/sub/w.gguf", 1, NEVER), Arrival::Hold);
    }

    #[test]
    fn a_signature_listing_too_many_files_is_refused_before_any_is_checked() {
        let f = fixture("require");
        let trust = f.policy.model_trust().unwrap();
        let mut hold = ModelHold::default();
        hold.insert(trust, 1, held("m/model.sig", "s", 0));
        let names: Vec<String> = (0..=MAX_MODEL_FILES).map(|i| format!("f{i}")).collect();
        let files: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "x")).collect();
        let b = bundle(&f.key, &files);
        assert_eq!(
            hold.evaluate(trust, "m", |_| trust.verify("m", &b), NOTHING),
            Verdict::Refuse {
                ids: vec![1],
                reason: format!("model signature lists more than {MAX_MODEL_FILES} files")
            }
        );
    }

    #[test]
    fn a_model_goes_out_as_exactly_its_signed_files() {
        let f = fixture("require");
        let trust = f.policy.model_trust().unwrap();
        let mut hold = ModelHold::default();
        hold.insert(trust, 1, held("m/w.gguf", "weights", 0));
        hold.insert(trust, 2, held("m/.git/config", "[core]", 0));
        hold.insert(trust, 3, held("m/model.sig", "sig", 0));
        let files = [("w.gguf", "weights")];
        let keyfile = f.key.clone();
        let b = signing::sign(
            &files
                .iter()
                .map(|(n, c)| (n.to_string(), digest(c)))
                .collect(),
            "m",
            &keyfile,
            &[".git".to_string()],
        )
        .unwrap();
        // What the signature leaves out is not delivered with the model.
        assert_eq!(
            hold.evaluate(trust, "m", |_| trust.verify("m", &b), NOTHING),
            Verdict::Release {
                ids: vec![1, 3],
                signer: "team.pem".into(),
                unsigned: vec![(
                    2,
                    "model file not signed (its signature leaves it out): .git/config".into()
                )]
            }
        );
        // A file delivered into the directory before, and not signed, refuses the model.
        let planted = || Ok(vec![("m/modeling_evil.py".to_string(), digest("x"))]);
        assert_eq!(
            hold.evaluate(trust, "m", |_| trust.verify("m", &b), planted),
            Verdict::Refuse {
                ids: vec![2, 1, 3],
                reason: "model file not signed: modeling_evil.py (delivered before its signature)"
                    .into()
            }
        );
    }

    #[test]
    fn signatures_at_the_top_or_inside_another_model_are_refused_and_a_full_memory_holds_all() {
        let f = fixture("require");
        let trust = f.policy.model_trust().unwrap();
        let mut hold = ModelHold::default();
        assert!(matches!(
            hold.arrive(trust, "model.sig", 1, NEVER),
            Arrival::Refuse(r) if r.contains("at the top")
        ));
        hold.insert(trust, 1, held("m/model.sig", "s", 0));
        assert!(matches!(
            hold.arrive(trust, "m/sub/model.sig", 1, NEVER),
            Arrival::Refuse(r) if r.contains("inside another model")
        ));
        let delivered_m = |dir: &str| dir == "m";
        let hold = ModelHold::default();
        assert!(matches!(
            hold.arrive(trust, "m/sub/model.sig", 1, delivered_m),
            Arrival::Refuse(_)
        ));
        let mut hold = ModelHold::default();
        for i in 0..MAX_REMEMBERED {
            hold.announce(trust, &format!("d{i}/w.gguf"));
        }
        assert_eq!(hold.arrive(trust, "data/a.csv", 1, NEVER), Arrival::Hold);
    }

    #[test]
    fn the_nearest_signature_owns_a_file() {
        let f = fixture("require");
        let trust = f.policy.model_trust().unwrap();
        let mut hold = ModelHold::default();
        hold.insert(trust, 1, held("zoo/model.sig", "s", 0));
        hold.insert(trust, 2, held("zoo/llama/model.sig", "s", 0));
        hold.insert(trust, 3, held("zoo/llama/w.gguf", "w", 0));
        hold.insert(trust, 4, held("zoo/README", "r", 0));
        assert_eq!(hold.members("zoo/llama"), vec![3, 2]);
        assert_eq!(hold.members("zoo"), vec![4, 1]);
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), vec!["a/b", "a", ""]);
        assert_eq!(ancestors("c").collect::<Vec<_>>(), vec![""]);
        assert!(under("a/b", "") && under("a/b", "a") && !under("ab/c", "a"));
    }
}
