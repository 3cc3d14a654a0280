//! Export approvals: an M-of-N quorum of minisign signatures over a request.
//!
//! A **request** (`req.toml`) is a human-readable statement of what may leave: every file's
//! relative path, size and SHA-256, the purpose, the requester, when it was made, when it
//! expires, and a random nonce (two requests for the same files are different statements).
//! Approvers read it and sign its exact bytes with stock `minisign` (or `sluice-approve sign`,
//! same format). A **policy** (`approvals.toml`) says how many distinct approvers must sign:
//!
//! ```toml
//! threshold = 2
//! approvers = ["/etc/sluice/approvers/alice.pub", "RWQ…(a minisign public key line)"]
//! ```
//!
//! Signatures are counted by **distinct key**: a key listed twice, or one key's signature
//! given twice, counts once (TUF's known threshold bug), and two different keys that share a
//! key id make the policy ambiguous, so it is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use sluice_protocol::manifest::{Approval, Entry, EntryKind};

use crate::budget::{Charge, Demand, Limit};
use crate::keys::{self, KeyId, TrustedKeys};
use crate::paths;

/// The request format this code writes and reads.
pub const REQUEST_VERSION: u32 = 2;
/// The request versions this Sluice reads: 1, and 2 (a content report per file may be
/// embedded).
const READS: std::ops::RangeInclusive<u32> = 1..=REQUEST_VERSION;

/// Why a request, policy or approval is not acceptable. The `Display` texts are stable
/// phrases operators and tests match on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("request {path}: {reason}")]
    Request { path: String, reason: String },
    #[error("approval policy {path}: {reason}")]
    Policy { path: String, reason: String },
    #[error("not approved: {}{valid} of {threshold} approvals{}", rule_prefix(.rule), problems_suffix(.problems))]
    Quorum {
        valid: usize,
        threshold: usize,
        problems: Vec<String>,
        /// The rule of `approvals.toml` whose quorum is short (`None`: the default).
        rule: Option<String>,
    },
    #[error("approval expired at {0}")]
    Expired(String),
    #[error("not in the approved request: {0}")]
    NotInRequest(String),
    #[error("approved file missing: {0}")]
    Missing(String),
    #[error("changed since approval: {0}")]
    Changed(String),
}

fn rule_prefix(rule: &Option<String>) -> String {
    match rule {
        Some(name) => format!("rule {name:?}: "),
        None => String::new(),
    }
}

fn problems_suffix(problems: &[String]) -> String {
    if problems.is_empty() {
        String::new()
    } else {
        format!(" ({})", problems.join("; "))
    }
}

/// The file types a rule may name (`types = ["safetensors"]`): what a file is by its bytes,
/// never its name, as the content gate's sniffer tells them (`sluice_inspect::sniff::Kind`).
pub const CONTENT_TYPES: [&str; 8] = [
    "pickle",
    "zip",
    "tar",
    "numpy",
    "safetensors",
    "compressed",
    "gguf",
    "hdf5",
];

/// One approved file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestFile {
    /// Relative path, as the receiver will publish it.
    pub path: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
    /// What the content gate said of the file when the request was made, for the approvers
    /// (the requester's tool computed it; `sluice-approve show … PATH` computes it again from
    /// the files, and the receiver's own gate decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<FileReport>,
}

/// A report's verdicts.
const REPORT_VERDICTS: [&str; 3] = ["admitted", "refused", "not shown"];
/// Finding lines (and formats) a carried report may have.
pub const MAX_REPORT_FINDINGS: usize = 17;
/// Bytes of one text of a carried report.
pub const MAX_REPORT_TEXT: usize = 1024;

/// The content gate's report on one file, as a request carries it (bounded: see
/// `sluice-approve request`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileReport {
    /// `admitted` or `refused`.
    pub verdict: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The formats that recognised the file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub formats: Vec<String>,
    /// What they found, one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<String>,
}

/// What approvers sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub version: u32,
    pub purpose: String,
    pub requester: String,
    /// RFC 3339, UTC.
    pub created: String,
    /// RFC 3339, UTC.
    pub expires: String,
    /// 32 random bytes, hex.
    pub nonce: String,
    #[serde(rename = "file")]
    pub files: Vec<RequestFile>,
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

impl Request {
    /// A new request for `files`, valid for `valid_for` from now.
    pub fn new(
        purpose: &str,
        requester: &str,
        valid_for: Duration,
        mut files: Vec<RequestFile>,
    ) -> Result<Request, ApprovalError> {
        let mut nonce = [0u8; 32];
        getrandom::getrandom(&mut nonce).map_err(|e| ApprovalError::Request {
            path: "(new)".into(),
            reason: format!("no OS randomness for the nonce: {e}"),
        })?;
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let now = SystemTime::now();
        let request = Request {
            version: REQUEST_VERSION,
            purpose: purpose.to_string(),
            requester: requester.to_string(),
            created: rfc3339(now),
            expires: rfc3339(now + valid_for),
            nonce: hex::encode(nonce),
            files,
        };
        request.check("(new)")?;
        Ok(request)
    }

    /// The file approvers sign: a comment saying so, then the TOML.
    pub fn to_text(&self) -> Result<String, ApprovalError> {
        let body = toml::to_string(self).map_err(|e| ApprovalError::Request {
            path: "(new)".into(),
            reason: e.to_string(),
        })?;
        Ok(format!(
            "# Sluice export request. Approvers: read it, then sign this exact file:\n\
             #   minisign -S -s YOUR.key -m THIS_FILE -x THIS_FILE.YOURNAME.minisig\n{body}"
        ))
    }

    /// Parses and checks a request's text (`shown` names it in errors).
    pub fn parse(text: &str, shown: &str) -> Result<Request, ApprovalError> {
        // toml quotes an unknown key as written: a sender's control characters are escaped.
        let request: Request = toml::from_str(text).map_err(|e| ApprovalError::Request {
            path: shown.into(),
            reason: paths::escaped(e.message().trim()),
        })?;
        request.check(shown)?;
        Ok(request)
    }

    fn check(&self, shown: &str) -> Result<(), ApprovalError> {
        let bad = |reason: String| ApprovalError::Request {
            path: shown.into(),
            reason,
        };
        if !READS.contains(&self.version) {
            return Err(bad(format!(
                "version {} (this Sluice reads {} to {})",
                self.version,
                READS.start(),
                READS.end()
            )));
        }
        for (what, value) in [("created", &self.created), ("expires", &self.expires)] {
            humantime::parse_rfc3339(value)
                .map_err(|_| bad(format!("{what} is not an RFC 3339 time: {value:?}")))?;
        }
        if self.files.is_empty() {
            return Err(bad("it names no file".into()));
        }
        let mut seen = BTreeSet::new();
        for report in self.files.iter().filter_map(|f| f.report.as_ref()) {
            if !REPORT_VERDICTS.contains(&report.verdict.as_str()) {
                return Err(bad(format!("report verdict {:?}", report.verdict)));
            }
            let texts = report
                .reason
                .iter()
                .chain(&report.formats)
                .chain(&report.findings);
            if report.findings.len() > MAX_REPORT_FINDINGS
                || report.formats.len() > MAX_REPORT_FINDINGS
                || texts.clone().any(|t| t.len() > MAX_REPORT_TEXT)
            {
                return Err(bad("a report longer than a request's reports may be".into()));
            }
        }
        for file in &self.files {
            paths::validate_object_path(&file.path)
                .map_err(|e| bad(format!("path {:?}: {e}", file.path)))?;
            if !seen.insert(file.path.as_str()) {
                return Err(bad(format!("path {:?} is listed twice", file.path)));
            }
            let digest_ok = file.sha256.len() == 64
                && file
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !digest_ok {
                return Err(bad(format!(
                    "sha256 of {:?} is not 64 lowercase hex digits",
                    file.path
                )));
            }
        }
        Ok(())
    }

    /// Refuses a request whose expiry has passed at `now`.
    pub fn check_not_expired(&self, now: SystemTime) -> Result<(), ApprovalError> {
        match humantime::parse_rfc3339(&self.expires) {
            Ok(expires) if now < expires => Ok(()),
            _ => Err(ApprovalError::Expired(self.expires.clone())),
        }
    }

    /// Checks that `files` (path → size and SHA-256 hex) are exactly the approved ones.
    pub fn check_files(
        &self,
        files: &BTreeMap<String, (u64, String)>,
    ) -> Result<(), ApprovalError> {
        let approved: BTreeMap<&str, &RequestFile> =
            self.files.iter().map(|f| (f.path.as_str(), f)).collect();
        for (path, (size, sha256)) in files {
            let Some(want) = approved.get(path.as_str()) else {
                return Err(ApprovalError::NotInRequest(path.clone()));
            };
            if want.size != *size || want.sha256 != *sha256 {
                return Err(ApprovalError::Changed(path.clone()));
            }
        }
        match approved.keys().find(|p| !files.contains_key(**p)) {
            Some(missing) => Err(ApprovalError::Missing((*missing).to_string())),
            None => Ok(()),
        }
    }
}

/// Who may approve, and how many must: a default quorum, and rules by kind of file (path
/// patterns) with quorums of their own.
#[derive(Debug)]
pub struct Policy {
    pub threshold: usize,
    approvers: TrustedKeys,
    /// Approvers' names by key id: the stem of the key file that listed them (`alice` for
    /// `approvers/alice.pub`); keys given as lines have none.
    names: BTreeMap<u64, String>,
    rules: Vec<Rule>,
    /// What may leave in a day, all exports together.
    budget: Limit,
    /// SHA-256 (hex) of the `approvals.toml` it was loaded from: which policy was in force.
    file_sha256: Option<String>,
}

/// `[[rule]]` of `approvals.toml`: files whose path matches `paths` need `threshold` of its
/// approvers (instead of the default's); a file matching several rules needs them all.
#[derive(Debug)]
struct Rule {
    name: String,
    /// The patterns as written.
    paths: Vec<String>,
    /// Each pattern with its matchers (a pattern without `/` also matches the bare name
    /// anywhere below, as the content policy's name rules do).
    patterns: Vec<Vec<globset::GlobMatcher>>,
    /// File types by content ([`CONTENT_TYPES`]).
    types: Vec<String>,
    threshold: usize,
    approvers: TrustedKeys,
    /// What may leave in a day of the files it matches.
    budget: Limit,
}

impl Rule {
    /// Whether a file at `path` that is of `types` by content is one of this rule's.
    fn matches(&self, path: &str, types: &[&str]) -> bool {
        self.patterns
            .iter()
            .any(|m| m.iter().any(|g| g.is_match(path)))
            || self.of_types(types).is_some()
    }

    /// The first of `types` this rule names.
    fn of_types<'t>(&self, types: &[&'t str]) -> Option<&'t str> {
        types
            .iter()
            .copied()
            .find(|t| self.types.iter().any(|r| r == t))
    }
}

impl RequestFile {
    /// The types by content its report says it is (the requester's word: the receiver
    /// sniffs the content itself).
    pub fn reported_types(&self) -> Vec<&str> {
        let formats = self.report.as_ref().map(|r| r.formats.as_slice());
        (formats.unwrap_or_default().iter())
            .map(String::as_str)
            .filter(|f| CONTENT_TYPES.contains(f))
            .collect()
    }
}

/// One quorum a request must meet: the default's, or a rule's.
#[derive(Debug, Clone, Copy)]
pub struct Requirement<'a> {
    /// The rule's name (`None`: the default).
    pub rule: Option<&'a str>,
    pub threshold: usize,
    approvers: &'a TrustedKeys,
}

/// Whose signatures over a request verify, and what was wrong with the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Distinct approvers whose signature verifies, by key id.
    pub signed: Vec<KeyId>,
    /// Why each other signature counted for nothing.
    pub problems: Vec<String>,
    /// Approvers who have not signed (yet).
    pub missing: Vec<KeyId>,
    pub threshold: usize,
    /// The rule counted (`None`: the default).
    pub rule: Option<String>,
}

impl Tally {
    pub fn met(&self) -> bool {
        self.signed.len() >= self.threshold
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    threshold: usize,
    approvers: Vec<String>,
    /// Named lists of approver entries, for rules.
    #[serde(default)]
    groups: BTreeMap<String, Vec<String>>,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleFile>,
    #[serde(default)]
    bytes_per_day: Option<SizeValue>,
    #[serde(default)]
    files_per_day: Option<u64>,
}

/// A size as a number of bytes or with a unit (`"10 GiB"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

/// A budget's limits as the file gives them.
fn limit_of(bytes: Option<&SizeValue>, files: Option<u64>) -> Result<Limit, String> {
    let bytes = match bytes {
        None => None,
        Some(SizeValue::Bytes(n)) => Some(*n),
        Some(SizeValue::Text(text)) => {
            Some(crate::units::parse_bytes(text).map_err(|e| format!("bytes_per_day: {e}"))?)
        }
    };
    Ok(Limit { bytes, files })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: String,
    #[serde(default)]
    paths: Vec<String>,
    /// File types by content ([`CONTENT_TYPES`]): a file of one of them matches, whatever
    /// its name.
    #[serde(default)]
    types: Vec<String>,
    threshold: usize,
    /// A group's name, or approver entries.
    approvers: ApproverList,
    #[serde(default)]
    bytes_per_day: Option<SizeValue>,
    #[serde(default)]
    files_per_day: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ApproverList {
    Group(String),
    Entries(Vec<String>),
}

/// Approver entries (key lines, or key files relative to `base`) as keys, each file's keys
/// named after its stem in `names`.
fn load_entries(
    entries: &[String],
    base: &Path,
    names: &mut BTreeMap<u64, String>,
) -> Result<Vec<minisign::PublicKey>, String> {
    let mut keys = Vec::new();
    for entry in entries {
        match minisign::PublicKey::from_base64(entry.trim()) {
            Ok(key) => keys.push(key),
            Err(_) => {
                let text = keys::read_public(&base.join(entry)).map_err(|e| e.to_string())?;
                let found = keys::parse_public_keys(&text).ok_or_else(|| {
                    format!(
                        "approver {entry:?} is neither a minisign public key nor a file of them"
                    )
                })?;
                let stem = Path::new(entry).file_stem().and_then(|s| s.to_str());
                for (id, key) in found {
                    if let Some(stem) = stem {
                        names.insert(id.0, stem.to_string());
                    }
                    keys.push(key);
                }
            }
        }
    }
    Ok(keys)
}

/// A quorum's keys, checked as [`Policy::new`] checks the default's.
fn quorum_keys(threshold: usize, keys: Vec<minisign::PublicKey>) -> Result<TrustedKeys, String> {
    let approvers = TrustedKeys::from_keys(keys);
    let ids: Vec<KeyId> = approvers.ids().collect();
    let distinct: BTreeSet<u64> = ids.iter().map(|id| id.0).collect();
    if distinct.len() != ids.len() {
        return Err(
            "two different approver keys share a key id; refusing an ambiguous policy".into(),
        );
    }
    if threshold == 0 {
        return Err("threshold must be at least 1".into());
    }
    if threshold > ids.len() {
        return Err(format!(
            "threshold {threshold} but only {} distinct approver keys",
            ids.len()
        ));
    }
    Ok(approvers)
}

impl Policy {
    /// Loads `approvals.toml`; approver entries are minisign public key lines, or public key
    /// files (relative to the policy's directory).
    pub fn load(path: &Path) -> Result<Policy, ApprovalError> {
        let shown = path.display().to_string();
        let bad = |reason: String| ApprovalError::Policy {
            path: shown.clone(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let file: PolicyFile =
            toml::from_str(&text).map_err(|e| bad(crate::config::toml_error(&text, &e)))?;
        let base = path.parent().map_or_else(PathBuf::new, Path::to_path_buf);
        let mut names = BTreeMap::new();
        let keys = load_entries(&file.approvers, &base, &mut names).map_err(bad)?;
        let mut policy = Policy::new(file.threshold, keys).map_err(bad)?;
        policy.budget = limit_of(file.bytes_per_day.as_ref(), file.files_per_day).map_err(bad)?;
        let mut seen = BTreeSet::new();
        for rule in &file.rules {
            let bad_rule = |why: String| bad(format!("rule {:?}: {why}", rule.name));
            // `(all exports)` names the top-level budget in `/metrics`.
            if rule.name.is_empty() || rule.name.starts_with('(') {
                return Err(bad_rule(
                    "a rule needs a name, not starting with '('".into(),
                ));
            }
            if !seen.insert(rule.name.as_str()) {
                return Err(bad_rule("named twice".into()));
            }
            if rule.paths.is_empty() && rule.types.is_empty() {
                return Err(bad_rule("no paths and no types".into()));
            }
            if let Some(unknown) = rule
                .types
                .iter()
                .find(|t| !CONTENT_TYPES.contains(&t.as_str()))
            {
                return Err(bad_rule(format!(
                    "unknown type {unknown:?}: types are {}",
                    CONTENT_TYPES.join(", ")
                )));
            }
            let entries = match &rule.approvers {
                ApproverList::Entries(entries) => entries,
                ApproverList::Group(group) => file
                    .groups
                    .get(group)
                    .ok_or_else(|| bad_rule(format!("no group {group:?} in [groups]")))?,
            };
            let keys = load_entries(entries, &base, &mut names).map_err(bad_rule)?;
            let approvers = quorum_keys(rule.threshold, keys).map_err(bad_rule)?;
            let mut patterns = Vec::new();
            for pattern in &rule.paths {
                if pattern.starts_with('/') || pattern.ends_with('/') {
                    return Err(bad_rule(format!(
                        "pattern {pattern:?}: paths are relative, and name files"
                    )));
                }
                // `M.SafeTensors` is weights too.
                let glob = |p: &str| {
                    globset::GlobBuilder::new(p)
                        .literal_separator(true)
                        .case_insensitive(true)
                        .build()
                        .map(|g| g.compile_matcher())
                        .map_err(|e| bad_rule(format!("pattern {pattern:?}: {e}")))
                };
                let mut matchers = vec![glob(pattern)?];
                if !pattern.contains('/') {
                    matchers.push(glob(&format!("**/{pattern}"))?);
                }
                patterns.push(matchers);
            }
            let budget =
                limit_of(rule.bytes_per_day.as_ref(), rule.files_per_day).map_err(bad_rule)?;
            policy.rules.push(Rule {
                name: rule.name.clone(),
                paths: rule.paths.clone(),
                patterns,
                types: rule.types.clone(),
                threshold: rule.threshold,
                approvers,
                budget,
            });
        }
        policy.names = names;
        policy.file_sha256 = Some(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            text.as_bytes(),
        )));
        Ok(policy)
    }

    /// Whether a rule names types: only then is a file's content looked at for them.
    pub fn has_type_rules(&self) -> bool {
        self.rules.iter().any(|rule| !rule.types.is_empty())
    }

    /// The rules by type whose quorum `carried` (an object's approval, if any) does not meet.
    pub fn content_quorums(&self, carried: Option<&Approval>) -> ContentQuorums {
        let none = Vec::new();
        let (request, signatures) = match carried {
            Some(approval) => (approval.request.as_slice(), &approval.signatures),
            None => (&[][..], &none),
        };
        let short = (self.rules.iter())
            .filter(|rule| !rule.types.is_empty())
            .filter_map(|rule| {
                let requirement = Requirement {
                    rule: Some(rule.name.as_str()),
                    threshold: rule.threshold,
                    approvers: &rule.approvers,
                };
                let tally = tally_of(requirement, request, signatures);
                let met = tally.met();
                let error = ApprovalError::Quorum {
                    valid: tally.signed.len(),
                    threshold: tally.threshold,
                    problems: tally.problems,
                    rule: tally.rule,
                };
                (!met).then(|| (rule.types.clone(), error))
            })
            .collect();
        ContentQuorums { short }
    }

    /// What the policy requires, for the audit log's `start` record: the file's SHA-256, the
    /// default quorum and budget, and each rule (patterns, quorum, approvers, budget).
    pub fn summary(&self) -> serde_json::Value {
        let ids = |keys: &TrustedKeys| keys.ids().map(|id| id.to_string()).collect::<Vec<_>>();
        let rules: Vec<serde_json::Value> = (self.rules.iter())
            .map(|rule| {
                serde_json::json!({
                    "name": rule.name,
                    "paths": rule.paths,
                    "types": rule.types,
                    "threshold": rule.threshold,
                    "approvers": ids(&rule.approvers),
                    "bytes_per_day": rule.budget.bytes,
                    "files_per_day": rule.budget.files,
                })
            })
            .collect();
        serde_json::json!({
            "sha256": self.file_sha256,
            "threshold": self.threshold,
            "approvers": ids(&self.approvers),
            "bytes_per_day": self.budget.bytes,
            "files_per_day": self.budget.files,
            "rules": rules,
        })
    }

    /// The quorums a request for `files` (path, and types by content as far as known) must
    /// meet, each once: the default's always, and every rule matching one of its files (the
    /// strictest wins: all must hold; a lax rule never lets a file past the default).
    pub fn requirements<'a, 'f>(
        &'a self,
        files: impl IntoIterator<Item = (&'f str, Vec<&'f str>)>,
    ) -> Vec<Requirement<'a>> {
        let mut rules = BTreeSet::new();
        for (path, types) in files {
            for (at, rule) in self.rules.iter().enumerate() {
                if rule.matches(path, &types) {
                    rules.insert(at);
                }
            }
        }
        let mut out = vec![Requirement {
            rule: None,
            threshold: self.threshold,
            approvers: &self.approvers,
        }];
        out.extend(rules.into_iter().map(|at| Requirement {
            rule: Some(self.rules[at].name.as_str()),
            threshold: self.rules[at].threshold,
            approvers: &self.rules[at].approvers,
        }));
        out
    }

    /// The tally of each quorum `request` must meet (`bytes`: its exact bytes).
    pub fn tallies(&self, request: &Request, bytes: &[u8], signatures: &[Vec<u8>]) -> Vec<Tally> {
        self.requirements(
            request
                .files
                .iter()
                .map(|f| (f.path.as_str(), f.reported_types())),
        )
        .into_iter()
        .map(|r| tally_of(r, bytes, signatures))
        .collect()
    }

    /// Every quorum `request` must meet is met: the approvers whose signatures count, all
    /// quorums together; otherwise the first short one, named by its rule.
    pub fn check_request(
        &self,
        request: &Request,
        bytes: &[u8],
        signatures: &[Vec<u8>],
    ) -> Result<Vec<KeyId>, ApprovalError> {
        let mut signed = BTreeSet::new();
        for tally in self.tallies(request, bytes, signatures) {
            if !tally.met() {
                return Err(ApprovalError::Quorum {
                    valid: tally.signed.len(),
                    threshold: tally.threshold,
                    problems: tally.problems,
                    rule: tally.rule,
                });
            }
            signed.extend(tally.signed.iter().map(|id| id.0));
        }
        Ok(signed.into_iter().map(KeyId).collect())
    }

    /// An approver as people read it: `alice (05AC3CCD17626569)`, or the key id alone.
    pub fn name_of(&self, id: KeyId) -> String {
        match self.names.get(&id.0) {
            Some(name) => format!("{name} ({id})"),
            None => id.to_string(),
        }
    }

    /// Whose signatures over `request` (its exact bytes) verify for the default quorum,
    /// counted by distinct key.
    pub fn tally(&self, request: &[u8], signatures: &[Vec<u8>]) -> Tally {
        tally_of(
            Requirement {
                rule: None,
                threshold: self.threshold,
                approvers: &self.approvers,
            },
            request,
            signatures,
        )
    }

    /// A policy of `threshold` among `keys` (each key counted once).
    pub fn new(
        threshold: usize,
        keys: impl IntoIterator<Item = minisign::PublicKey>,
    ) -> Result<Policy, String> {
        let approvers = quorum_keys(threshold, keys.into_iter().collect())?;
        Ok(Policy {
            threshold,
            approvers,
            names: BTreeMap::new(),
            rules: Vec::new(),
            budget: Limit::default(),
            file_sha256: None,
        })
    }

    /// The budgets set (`bytes_per_day`, `files_per_day`): the default's under the key `""`,
    /// each rule's under its name.
    pub fn budgets(&self) -> Vec<(&str, Limit)> {
        let rules = self.rules.iter().map(|r| (r.name.as_str(), r.budget));
        std::iter::once(("", self.budget))
            .chain(rules)
            .filter(|(_, limit)| limit.is_set())
            .collect()
    }

    /// What exporting `files` (path, size) asks of the budgets set: every file counts
    /// against the default's and against each rule its path matches.
    pub fn demand<'a>(&self, files: impl IntoIterator<Item = (&'a str, u64)>) -> Demand {
        self.demand_typed(
            files
                .into_iter()
                .map(|(path, size)| (path, size, Vec::new())),
        )
    }

    /// [`Policy::demand`] of files whose types by content are known too: a rule naming one of
    /// them counts the file whatever its name.
    pub fn demand_typed<'a>(
        &self,
        files: impl IntoIterator<Item = (&'a str, u64, Vec<&'a str>)>,
    ) -> Demand {
        let budgets = self.budgets();
        let mut charges: Vec<Charge> = budgets
            .iter()
            .map(|(name, _)| Charge {
                budget: (*name).to_string(),
                bytes: 0,
                files: 0,
            })
            .collect();
        for (path, size, types) in files {
            for (charge, (name, _)) in charges.iter_mut().zip(&budgets) {
                let counts = name.is_empty()
                    || self
                        .rules
                        .iter()
                        .any(|r| r.name == *name && r.matches(path, &types));
                if counts {
                    charge.bytes = charge.bytes.saturating_add(size);
                    charge.files += 1;
                }
            }
        }
        let (limits, charges) = budgets
            .into_iter()
            .zip(charges)
            .filter(|(_, charge)| charge.files > 0)
            .map(|((name, limit), charge)| ((name.to_string(), limit), charge))
            .unzip();
        Demand {
            limits,
            charges,
            export: None,
        }
    }

    /// The approvers' key ids.
    pub fn approver_ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.approvers.ids()
    }

    /// The approvers whose signatures over `request` (its exact bytes) are valid, counted by
    /// distinct key; `Err` unless at least the threshold signed.
    pub fn check_quorum(
        &self,
        request: &[u8],
        signatures: &[Vec<u8>],
    ) -> Result<Vec<KeyId>, ApprovalError> {
        let tally = self.tally(request, signatures);
        if tally.met() {
            Ok(tally.signed)
        } else {
            Err(ApprovalError::Quorum {
                valid: tally.signed.len(),
                threshold: self.threshold,
                problems: tally.problems,
                rule: None,
            })
        }
    }
}

/// Whose signatures over `request` (its exact bytes) verify among `requirement`'s approvers.
fn tally_of(requirement: Requirement<'_>, request: &[u8], signatures: &[Vec<u8>]) -> Tally {
    let mut valid = BTreeSet::new();
    let mut problems = Vec::new();
    for signature in signatures {
        match requirement.approvers.verify(request, signature) {
            Ok(id) => {
                valid.insert(id.0);
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    Tally {
        signed: valid.iter().copied().map(KeyId).collect(),
        problems,
        missing: (requirement.approvers.ids())
            .filter(|id| !valid.contains(&id.0))
            .collect(),
        threshold: requirement.threshold,
        rule: requirement.rule.map(str::to_string),
    }
}

/// Signs a request's exact bytes with the minisign secret key `key_text` (its password is
/// asked for on the terminal if it has one, as `minisign -S` does); returns the signer's key
/// id and the `.minisig` text, in the format `minisign -V` reads.
pub fn sign(key_text: &str, request: &[u8]) -> Result<(KeyId, String), String> {
    // A key without a password as is; otherwise its password is asked for.
    let secret = match keys::unencrypted_secret_key(key_text) {
        Some(secret) => secret,
        None => minisign::SecretKeyBox::from_string(key_text)
            .and_then(|b| b.into_secret_key(None))
            .map_err(|e| format!("not a usable minisign secret key: {e}"))?,
    };
    let signature = minisign::sign(
        None,
        &secret,
        std::io::Cursor::new(request),
        Some("sluice export approval"),
        None,
    )
    .map_err(|e| e.to_string())?;
    Ok((KeyId::from_keynum(secret.keynum()), signature.into_string()))
}

/// What a receiver checks before publishing the entries of an object that came with
/// `carried` (the approval in its manifest, if any), against its own `policy`: every quorum
/// the request's files need (the default's, each matching rule's) met by distinct approvers
/// over the request's exact bytes, the request not expired at `now`, and
/// every file entry listed in the request with the same size and SHA-256 (a directory entry:
/// some approved file lies below it). Returns the approvers. A manifest's entries may be a
/// part of the request (the sender cuts an export into objects).
pub fn check_carried(
    policy: &Policy,
    carried: Option<&Approval>,
    entries: &[Entry],
    now: SystemTime,
) -> Result<Vec<KeyId>, ApprovalError> {
    let Some(approval) = carried else {
        return Err(ApprovalError::Quorum {
            valid: 0,
            threshold: policy.threshold,
            problems: vec!["no approval came with it".into()],
            rule: None,
        });
    };
    let request = carried_request(approval)?;
    // The quorums follow from the request's files (rules by kind): from the request signed,
    // not from this manifest's entries, so every part of an export meets the same ones.
    let approvers = policy.check_request(&request, &approval.request, &approval.signatures)?;
    request.check_not_expired(now)?;
    let approved: BTreeMap<&str, &RequestFile> =
        request.files.iter().map(|f| (f.path.as_str(), f)).collect();
    for entry in entries {
        match entry.kind {
            EntryKind::File => match approved.get(entry.path.as_str()) {
                None => return Err(ApprovalError::NotInRequest(entry.path.clone())),
                Some(f) if f.size != entry.size || f.sha256 != hex::encode(entry.sha256) => {
                    return Err(ApprovalError::Changed(entry.path.clone()))
                }
                Some(_) => {}
            },
            EntryKind::Directory => {
                let below = format!("{}/", entry.path);
                if !approved.keys().any(|p| p.starts_with(&below)) {
                    return Err(ApprovalError::NotInRequest(entry.path.clone()));
                }
            }
        }
    }
    Ok(approvers)
}

/// What an approval that came with an object says for its files' types by content: each rule
/// naming types whose quorum it does not meet. Worked out once per object (`Policy::
/// content_quorums`), checked per file once its bytes are known ([`ContentQuorums::check`]).
#[derive(Debug, Clone, Default)]
pub struct ContentQuorums {
    short: Vec<(Vec<String>, ApprovalError)>,
}

impl ContentQuorums {
    /// Whether no rule by type is short (nothing to check).
    pub fn is_empty(&self) -> bool {
        self.short.is_empty()
    }

    /// A file at `path` that is of `types` by content needs the quorum of every rule naming
    /// one of them, whatever it is called: a weights file renamed `report.txt` still needs the
    /// weights rule's approvers.
    pub fn check(&self, path: &str, types: &[&str]) -> Result<(), ApprovalError> {
        for (rule_types, short) in &self.short {
            let Some(kind) = types.iter().find(|t| rule_types.iter().any(|r| r == *t)) else {
                continue;
            };
            let mut short = short.clone();
            if let ApprovalError::Quorum { problems, .. } = &mut short {
                problems.push(format!("{} is {kind} by content", paths::escaped(path)));
            }
            return Err(short);
        }
        Ok(())
    }
}

/// The approvers whose signatures in `carried` verify under `policy` (no other check): what
/// an audit record names for an entry [`check_carried`] let through.
pub fn approvers_of(policy: &Policy, carried: &Approval) -> Vec<KeyId> {
    carried_request(carried)
        .and_then(|request| policy.check_request(&request, &carried.request, &carried.signatures))
        .unwrap_or_default()
}

/// The request an approval carries, parsed (bounded by the manifest's request limit).
fn carried_request(approval: &Approval) -> Result<Request, ApprovalError> {
    let shown = "(the approval that came with it)";
    let text = std::str::from_utf8(&approval.request).map_err(|_| ApprovalError::Request {
        path: shown.into(),
        reason: "not UTF-8".into(),
    })?;
    Request::parse(text, shown)
}

/// The signature files beside a request: `<request file name>*.minisig` in its directory.
pub fn signatures_beside(request: &Path) -> std::io::Result<Vec<PathBuf>> {
    let Some(name) = request.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let dir = match request.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(name) && n.ends_with(".minisig"))
        })
        .collect();
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, byte: u8) -> RequestFile {
        RequestFile {
            path: path.into(),
            size: 10,
            sha256: hex::encode([byte; 32]),
            report: None,
        }
    }

    fn keypair() -> minisign::KeyPair {
        minisign::KeyPair::generate_unencrypted_keypair().unwrap()
    }

    fn sign(pair: &minisign::KeyPair, data: &[u8]) -> Vec<u8> {
        minisign::sign(None, &pair.sk, std::io::Cursor::new(data), None, None)
            .unwrap()
            .into_string()
            .into_bytes()
    }

    #[test]
    fn a_request_round_trips_through_its_text_and_checks_its_files() {
        let request = Request::new(
            "Q3 eval report",
            "alice@lab",
            Duration::from_secs(3600),
            vec![file("report/b.pdf", 2), file("report/a.json", 1)],
        )
        .unwrap();
        let text = request.to_text().unwrap();
        let parsed = Request::parse(&text, "req.toml").unwrap();
        assert_eq!(parsed, request);
        assert_eq!(parsed.files[0].path, "report/a.json", "sorted");
        parsed.check_not_expired(SystemTime::now()).unwrap();
        assert!(matches!(
            parsed.check_not_expired(SystemTime::now() + Duration::from_secs(7200)),
            Err(ApprovalError::Expired(_))
        ));

        let mut sent: BTreeMap<String, (u64, String)> = parsed
            .files
            .iter()
            .map(|f| (f.path.clone(), (f.size, f.sha256.clone())))
            .collect();
        parsed.check_files(&sent).unwrap();
        sent.insert("report/extra".into(), (1, hex::encode([9; 32])));
        assert_eq!(
            parsed.check_files(&sent).unwrap_err().to_string(),
            "not in the approved request: report/extra"
        );
        sent.remove("report/extra");
        sent.insert("report/a.json".into(), (10, hex::encode([7; 32])));
        assert_eq!(
            parsed.check_files(&sent).unwrap_err().to_string(),
            "changed since approval: report/a.json"
        );
        sent.remove("report/a.json");
        assert_eq!(
            parsed.check_files(&sent).unwrap_err().to_string(),
            "approved file missing: report/a.json"
        );
    }

    #[test]
    fn hostile_or_ambiguous_requests_are_refused() {
        let base = Request::new("p", "r", Duration::from_secs(60), vec![file("a", 1)]).unwrap();
        for (edit, phrase) in [
            (r#"path = "a""#, r#"path = "../a""#),
            (r#"version = 2"#, r#"version = 9"#),
            (r#"[[file]]"#, "extra = 1\n[[file]]"),
        ] {
            let text = base.to_text().unwrap().replace(edit, phrase);
            assert!(Request::parse(&text, "r").is_err(), "{phrase}");
        }
        let twice = Request {
            files: vec![file("a", 1), file("a", 2)],
            ..base
        };
        assert!(Request::parse(&twice.to_text().unwrap(), "r")
            .unwrap_err()
            .to_string()
            .contains("listed twice"));
    }

    #[test]
    fn the_quorum_counts_distinct_keys_only() {
        let (alice, bob, carol, mallory) = (keypair(), keypair(), keypair(), keypair());
        // Bob listed twice is one approver.
        let policy = Policy::new(2, [&alice, &bob, &bob, &carol].map(|p| p.pk.clone())).unwrap();
        assert!(Policy::new(4, [&alice, &bob, &bob, &carol].map(|p| p.pk.clone())).is_err());
        let request = b"the request bytes";
        // One key's signature twice counts once.
        let twice = [sign(&alice, request), sign(&alice, request)];
        assert_eq!(
            policy
                .check_quorum(request, &twice)
                .unwrap_err()
                .to_string(),
            "not approved: 1 of 2 approvals"
        );
        // An outsider's signature does not count; a signature over other bytes neither.
        let mixed = [
            sign(&alice, request),
            sign(&mallory, request),
            sign(&bob, b"another request"),
        ];
        let refused = policy
            .check_quorum(request, &mixed)
            .unwrap_err()
            .to_string();
        assert!(
            refused.starts_with("not approved: 1 of 2 approvals ("),
            "{refused}"
        );
        let two = [sign(&alice, request), sign(&carol, request)];
        let approved = policy.check_quorum(request, &two).unwrap();
        assert_eq!(approved.len(), 2);
    }

    /// Issue 29, part 3: rules by kind of file. Weights need 2 of the security group, anything
    /// else 1 of the team; a request holding both needs both quorums, the short one named;
    /// a file matching two rules needs them both. The receiver's check is the same.
    #[test]
    fn rules_by_kind_of_file_each_need_their_own_quorum_and_the_short_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let pairs: Vec<(&str, minisign::KeyPair)> = ["alice", "bob", "carol", "dave"]
            .into_iter()
            .map(|n| (n, keypair()))
            .collect();
        for (name, pair) in &pairs {
            let text = pair.pk.to_box().unwrap().to_string();
            std::fs::write(dir.path().join(format!("{name}.pub")), text).unwrap();
        }
        let policy_path = dir.path().join("approvals.toml");
        std::fs::write(
            &policy_path,
            "threshold = 1\napprovers = [\"alice.pub\", \"bob.pub\"]\n\
             [groups]\nsecurity = [\"carol.pub\", \"dave.pub\"]\n\
             [[rule]]\nname = \"weights\"\npaths = [\"*.safetensors\", \"checkpoints/**\"]\n\
             threshold = 2\napprovers = \"security\"\n\
             [[rule]]\nname = \"big-weights\"\npaths = [\"*.70b.safetensors\"]\n\
             threshold = 1\napprovers = [\"alice.pub\"]\n",
        )
        .unwrap();
        let policy = Policy::load(&policy_path).unwrap();
        let key = |name: &str| &pairs.iter().find(|(n, _)| *n == name).unwrap().1;
        let check = |paths: &[&str], signers: &[&str]| {
            let files = paths
                .iter()
                .enumerate()
                .map(|(i, p)| file(p, i as u8))
                .collect();
            let request = Request::new("p", "r", Duration::from_secs(60), files).unwrap();
            let bytes = request.to_text().unwrap().into_bytes();
            let signatures: Vec<Vec<u8>> = signers.iter().map(|s| sign(key(s), &bytes)).collect();
            policy
                .check_request(&request, &bytes, &signatures)
                .map(|ids| ids.len())
                .map_err(|e| e.to_string())
        };
        assert_eq!(check(&["report.pdf"], &["alice"]), Ok(1));
        assert!(check(
            &["report.pdf", "out/model.safetensors"],
            &["alice", "carol"]
        )
        .unwrap_err()
        .starts_with("not approved: rule \"weights\": 1 of 2 approvals"));
        // The team's approver counts nothing for the weights rule, and says so.
        assert!(check(&["out/model.safetensors"], &["alice", "carol"])
            .unwrap_err()
            .contains("rule \"weights\": 1 of 2 approvals (signed by untrusted key"));
        assert_eq!(
            check(
                &["report.pdf", "out/model.safetensors"],
                &["alice", "carol", "dave"]
            ),
            Ok(3)
        );
        // Only weights: the default's quorum applies too (a rule adds, never replaces).
        assert!(check(&["checkpoints/step-10/w.bin"], &["carol", "dave"])
            .unwrap_err()
            .starts_with("not approved: 0 of 1 approvals"));
        assert_eq!(
            check(&["checkpoints/step-10/w.bin"], &["carol", "dave", "bob"]),
            Ok(3)
        );
        // Case does not dodge a rule.
        assert!(check(&["M.SafeTensors"], &["alice"])
            .unwrap_err()
            .contains("rule \"weights\""));
        // Two rules match: both hold.
        assert!(check(&["m.70b.safetensors"], &["bob", "carol", "dave"])
            .unwrap_err()
            .starts_with("not approved: rule \"big-weights\": 0 of 1 approvals"));
        assert_eq!(
            check(&["m.70b.safetensors"], &["carol", "dave", "alice"]),
            Ok(3)
        );
        // A policy that cannot mean one thing is refused at load.
        for (edit, why) in [
            ("approvers = \"security\"", "approvers = \"nobody\""),
            ("name = \"big-weights\"", "name = \"weights\""),
            ("paths = [\"*.70b.safetensors\"]", "paths = []"),
            ("paths = [\"*.70b.safetensors\"]", "paths = [\"[\"]"),
            ("paths = [\"*.70b.safetensors\"]", "paths = [\"/abs/*\"]"),
            ("threshold = 2", "threshold = 3"),
        ] {
            let text = std::fs::read_to_string(&policy_path)
                .unwrap()
                .replacen(edit, why, 1);
            let bad = dir.path().join("bad.toml");
            std::fs::write(&bad, text).unwrap();
            assert!(Policy::load(&bad).is_err(), "{why}");
        }
    }

    #[test]
    fn a_rule_by_type_holds_a_file_of_that_type_whatever_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let (alice, bob) = (keypair(), keypair());
        for (name, pair) in [("alice", &alice), ("bob", &bob)] {
            let key = pair.pk.to_box().unwrap().to_string();
            std::fs::write(dir.path().join(format!("{name}.pub")), key).unwrap();
        }
        let path = dir.path().join("approvals.toml");
        let write = |rule: &str| {
            std::fs::write(
                &path,
                format!("threshold = 1\napprovers = [\"alice.pub\"]\n[[rule]]\nname = \"weights\"\n{rule}"),
            )
            .unwrap();
            Policy::load(&path)
        };
        let policy = write(
            "types = [\"safetensors\", \"gguf\"]\nthreshold = 2\n\
             approvers = [\"alice.pub\", \"bob.pub\"]\nbytes_per_day = 100\n",
        )
        .unwrap();
        let bytes = b"a request".to_vec();
        let alone = Approval {
            request: bytes.clone(),
            signatures: vec![sign(&alice, &bytes)],
        };
        let short = policy.content_quorums(Some(&alone));
        // A text file passes; weights called report.txt do not, named by the rule.
        assert_eq!(short.check("out/report.txt", &[]), Ok(()));
        let refused = short
            .check("out/report.txt", &["safetensors"])
            .unwrap_err()
            .to_string();
        assert_eq!(
            refused,
            "not approved: rule \"weights\": 1 of 2 approvals (out/report.txt is safetensors by \
             content)"
        );
        assert!(policy.content_quorums(None).check("m", &["gguf"]).is_err());
        let both = Approval {
            request: bytes.clone(),
            signatures: vec![sign(&alice, &bytes), sign(&bob, &bytes)],
        };
        let met = policy.content_quorums(Some(&both));
        assert!(met.is_empty() && met.check("out/report.txt", &["safetensors"]).is_ok());
        // Its budget counts the file by type too.
        let demand = policy.demand_typed([("out/report.txt", 7, vec!["safetensors"])]);
        let charged: Vec<(&str, u64)> = (demand.charges.iter())
            .map(|c| (c.budget.as_str(), c.bytes))
            .collect();
        assert_eq!(charged, [("weights", 7)]);
        assert!(policy.demand([("out/report.txt", 7)]).is_empty());
        // A type the gate does not know, or a rule that names nothing, is refused.
        let err = write("types = [\"weights\"]\nthreshold = 1\napprovers = [\"bob.pub\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown type \"weights\": types are pickle, zip"),
            "{err}"
        );
        let err = write("threshold = 1\napprovers = [\"bob.pub\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no paths and no types"), "{err}");
    }

    #[test]
    fn budgets_count_every_file_against_the_default_and_the_rules_it_matches() {
        let dir = tempfile::tempdir().unwrap();
        let pair = keypair();
        let key = pair.pk.to_box().unwrap().to_string();
        std::fs::write(dir.path().join("alice.pub"), key).unwrap();
        let path = dir.path().join("approvals.toml");
        std::fs::write(
            &path,
            "threshold = 1\napprovers = [\"alice.pub\"]\nbytes_per_day = \"10 GiB\"\n\
             [[rule]]\nname = \"weights\"\npaths = [\"*.safetensors\"]\nthreshold = 1\n\
             approvers = [\"alice.pub\"]\nbytes_per_day = 1048576\nfiles_per_day = 3\n\
             [[rule]]\nname = \"pickles\"\npaths = [\"*.pt\"]\nthreshold = 1\n\
             approvers = [\"alice.pub\"]\nfiles_per_day = 0\n\
             [[rule]]\nname = \"reports\"\npaths = [\"*.pdf\"]\nthreshold = 1\n\
             approvers = [\"alice.pub\"]\n",
        )
        .unwrap();
        let policy = Policy::load(&path).unwrap();
        let names: Vec<&str> = policy.budgets().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["", "weights", "pickles"]);
        let demand = policy.demand([("a/m.SafeTensors", 600), ("r.pdf", 5), ("b.safetensors", 1)]);
        let got: Vec<(&str, u64, u64)> = demand
            .charges
            .iter()
            .map(|c| (c.budget.as_str(), c.bytes, c.files))
            .collect();
        assert_eq!(got, [("", 606, 3), ("weights", 601, 2)]);
        let usage = crate::budget::Usage::default();
        assert_eq!(demand.check(&usage, 1), Ok(()));
        let pickle = policy.demand([("x/model.pt", 0)]);
        let refused = pickle.check(&usage, 1).unwrap_err();
        assert!(refused.never_fits(), "{refused}");
        assert!(
            refused.to_string().contains("rule \"pickles\""),
            "{refused}"
        );
        for bad in [
            "bytes_per_day = \"ten\"",
            "bytes_per_day = -1",
            "files_per_day = \"3\"",
        ] {
            std::fs::write(
                &path,
                format!("threshold = 1\napprovers = [\"alice.pub\"]\n{bad}\n"),
            )
            .unwrap();
            assert!(Policy::load(&path).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_receiver_checks_what_came_with_the_manifest_itself() {
        let (alice, bob) = (keypair(), keypair());
        let policy = Policy::new(2, [alice.pk.clone(), bob.pk.clone()]).unwrap();
        let request = Request::new(
            "release",
            "carol",
            Duration::from_secs(3600),
            vec![file("out/model.bin", 1), file("out/card.md", 2)],
        )
        .unwrap();
        let bytes = request.to_text().unwrap().into_bytes();
        let carried = Approval {
            signatures: vec![sign(&alice, &bytes), sign(&bob, &bytes)],
            request: bytes.clone(),
        };
        let entry = |path: &str, kind: EntryKind, size: u64, byte: u8| Entry {
            path: path.into(),
            kind,
            size,
            mode: 0o644,
            mtime_secs: 0,
            mtime_nanos: 0,
            sha256: [byte; 32],
        };
        let now = SystemTime::now();
        let check = |carried: Option<&Approval>, entries: &[Entry], now| {
            check_carried(&policy, carried, entries, now).map_err(|e| e.to_string())
        };
        let part = [
            entry("out", EntryKind::Directory, 0, 0),
            entry("out/model.bin", EntryKind::File, 10, 1),
        ];
        assert_eq!(check(Some(&carried), &part, now).unwrap().len(), 2);
        assert_eq!(
            approvers_of(&policy, &carried),
            check(Some(&carried), &part, now).unwrap()
        );
        for (entries, phrase) in [
            (
                vec![entry("out/other.bin", EntryKind::File, 10, 1)],
                "not in the approved request: out/other.bin",
            ),
            (
                vec![entry("out/model.bin", EntryKind::File, 10, 9)],
                "changed since approval: out/model.bin",
            ),
            (
                vec![entry("elsewhere", EntryKind::Directory, 0, 0)],
                "not in the approved request: elsewhere",
            ),
        ] {
            assert_eq!(check(Some(&carried), &entries, now).unwrap_err(), phrase);
        }
        assert_eq!(
            check(None, &part, now).unwrap_err(),
            "not approved: 0 of 2 approvals (no approval came with it)"
        );
        let later = now + Duration::from_secs(7200);
        assert!(check(Some(&carried), &part, later)
            .unwrap_err()
            .starts_with("approval expired at "));
        let one = Approval {
            signatures: vec![sign(&alice, &bytes), sign(&alice, &bytes)],
            request: bytes,
        };
        assert_eq!(
            check(Some(&one), &part, now).unwrap_err(),
            "not approved: 1 of 2 approvals"
        );
    }
}
