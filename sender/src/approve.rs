//! `sluice-approve`: make an export request, sign it, and check a quorum of approvals
//! (`sluice_common::approval` holds the rules; this is the command line around them).
//!
//! ```text
//! sluice-approve request PATH... --purpose "Q3 eval report" [--expires 7d] --out req.toml
//! minisign -S -s alice.key -m req.toml -x req.toml.alice.minisig   # each approver, stock minisign
//! sluice-approve sign req.toml --key bob.key                        # or this, same format
//! sluice-approve check req.toml --policy approvals.toml [PATH...]   # who approved, quorum met?
//! sluice-approve show req.toml [--policy approvals.toml]             # a reviewer's view
//! ```
//!
//! A PATH may be `s3://BUCKET/PREFIX` (the store's settings from the AWS variables): its
//! objects are read and hashed as `sluice-send` would send them.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Parser, Subcommand};
use sha2::{Digest, Sha256};
use sluice_common::approval::{self, ApprovalError, Policy, Request, RequestFile};
use sluice_common::budget::Demand;
use sluice_common::exit::ExitStatus;
use sluice_protocol::manifest::{
    Approval, EntryKind, MAX_APPROVAL_SIGNATURES, MAX_REQUEST_LEN, MAX_SIGNATURE_LEN,
};

use crate::objects::{self, s3::Stores, Skipped, SourceObject};

#[derive(Debug, Parser)]
#[command(
    name = "sluice-approve",
    version,
    about = "Export approvals: a request approvers sign with minisign, and an M-of-N check."
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a request naming every file under PATH... (path, size, SHA-256).
    Request {
        /// Files and directory trees (or s3://BUCKET/PREFIX), named as sluice-send would name
        /// them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Why these files should leave.
        #[arg(long)]
        purpose: String,
        /// Who asks (default: $USER@hostname).
        #[arg(long)]
        requester: Option<String>,
        /// How long approvals of it stay valid (e.g. 7d, 12h).
        #[arg(long, default_value = "7d")]
        expires: String,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
        /// The receiver's content policy (policy.toml), for the report each file carries
        /// (default: the gate's defaults, as sluice-inspect without --policy).
        #[arg(long)]
        content_policy: Option<PathBuf>,
        /// Embed no content reports.
        #[arg(long)]
        no_report: bool,
    },
    /// Sign a request with a minisign secret key (as `minisign -S` would).
    Sign {
        request: PathBuf,
        /// minisign secret key (a password is asked for if it has one).
        #[arg(long)]
        key: PathBuf,
        /// Signature file (default: REQUEST.<KEY ID>.minisig).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Say who approved a request and whether the policy's quorum is met; with PATH..., also
    /// that they are exactly the approved files, unchanged.
    Check {
        request: PathBuf,
        /// approvals.toml: threshold and approvers.
        #[arg(long)]
        policy: PathBuf,
        /// Signature files (default: REQUEST*.minisig beside the request). Repeatable.
        #[arg(long = "approval-sig")]
        signatures: Vec<PathBuf>,
        paths: Vec<PathBuf>,
    },
    /// A reviewer's view of a request: purpose, requester, expiry, every file, and (with
    /// --policy) who has signed and who still may.
    Show {
        request: PathBuf,
        /// approvals.toml: count the signatures beside the request against it.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Signature files (default: REQUEST*.minisig beside the request). Repeatable.
        #[arg(long = "approval-sig")]
        signatures: Vec<PathBuf>,
        /// The content policy to compute reports with when PATH... is given.
        #[arg(long)]
        content_policy: Option<PathBuf>,
        /// The files: each is hashed and its report computed again, and compared with what
        /// the request says (a request's reports are the requester's word until then).
        paths: Vec<PathBuf>,
    },
}

/// `sluice-approve`'s command line, for its man page and completions (`crate::manual`).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

/// Runs `sluice-approve` with `args` (program name first).
pub fn main_with_args(args: Vec<OsString>) -> ExitCode {
    let args = match Args::try_parse_from(args) {
        Ok(args) => args,
        Err(e) => return sluice_common::config::report_clap_error(&e).into(),
    };
    let result = match args.command {
        Command::Request {
            paths,
            purpose,
            requester,
            expires,
            out,
            content_policy,
            no_report,
        } => {
            let reports = match no_report {
                true => Ok(None),
                false => content_policy_or_default(content_policy.as_deref()).map(Some),
            };
            reports.and_then(|reports| {
                request(
                    &paths,
                    &purpose,
                    requester,
                    &expires,
                    &out,
                    reports.as_ref(),
                )
            })
        }
        Command::Sign { request, key, out } => sign(&request, &key, out),
        Command::Check {
            request,
            policy,
            signatures,
            paths,
        } => check(&request, &policy, signatures, &paths),
        Command::Show {
            request,
            policy,
            signatures,
            content_policy,
            paths,
        } => content_policy_or_default(content_policy.as_deref())
            .and_then(|content| show(&request, policy.as_deref(), signatures, &paths, &content)),
    };
    match result {
        Ok(()) => ExitStatus::Success.into(),
        Err((status, message)) => {
            eprintln!("error: {message}");
            status.into()
        }
    }
}

type Failed = (ExitStatus, String);

fn usage(message: impl std::fmt::Display) -> Failed {
    (ExitStatus::Usage, message.to_string())
}

fn refused(e: ApprovalError) -> Failed {
    (ExitStatus::Failure, e.to_string())
}

/// Checks, before anything is sent, that `objects` (what the paths expanded to, `skipped` what
/// they did not) are exactly the files of the approved request and that a quorum of the
/// policy's approvers signed it; returns what passed, to travel in every manifest.
///
/// The objects checked are the ones then sent, not a second listing of the same paths: each
/// is read as it was found (a file as the inode the walk saw, a stored object pinned to the
/// ETag and size listed), so one changed after this check is refused when it is read to be
/// sent, never sent unapproved.
pub fn preflight(
    options: &crate::cli::ApprovalOptions,
    objects: &[SourceObject],
    skipped: &[Skipped],
) -> Result<Approved, String> {
    evaluate(options, Some((objects, skipped)))
}

/// A request that passed its checks.
#[derive(Debug)]
pub struct Approved {
    pub request: Request,
    pub threshold: usize,
    /// The approvers whose signatures verified, by key id.
    pub approvers: Vec<sluice_common::keys::KeyId>,
    /// The same, as people read them (`alice (05AC3CCD17626569)`).
    pub names: Vec<String>,
    /// The request's exact bytes and the signatures given, as the manifests carry them.
    pub carried: Approval,
    /// What its files ask of the export budgets (`bytes_per_day`, `files_per_day`).
    pub demand: Demand,
}

/// Files by path: size and SHA-256 (lowercase hex), as read.
pub type Digests = BTreeMap<String, (u64, String)>;

/// Why a request did not pass. `pending` when only approvals are missing: more signatures may
/// still come (the watch daemon keeps such a request waiting; anything else is final).
/// `recheck` when it waits for the export budget: looked at again as time passes, not only
/// when it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotApproved {
    pub pending: bool,
    pub recheck: bool,
    pub reason: String,
}

impl NotApproved {
    pub fn refused(reason: impl std::fmt::Display) -> NotApproved {
        NotApproved {
            pending: false,
            recheck: false,
            reason: reason.to_string(),
        }
    }

    /// Over the export budget: waiting while it may fit later (or the ledger cannot be read:
    /// an operator can mend it), refused if it never will.
    pub fn over_budget(not_spent: &crate::export_budget::NotSpent) -> NotApproved {
        use crate::export_budget::NotSpent;
        let waits = match not_spent {
            NotSpent::Exceeded(exceeded) => !exceeded.never_fits(),
            NotSpent::Ledger(_) => true,
        };
        NotApproved {
            pending: waits,
            recheck: waits,
            reason: not_spent.to_string(),
        }
    }
}

/// The quorum over the request, its expiry, and (given the objects found and what was skipped)
/// its files.
fn evaluate(
    options: &crate::cli::ApprovalOptions,
    found: Option<(&[SourceObject], &[Skipped])>,
) -> Result<Approved, String> {
    let shown = options.request.display().to_string();
    let bytes = std::fs::read(&options.request).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let policy = Policy::load(&options.policy).map_err(|e| e.to_string())?;
    let signature_files = if options.signatures.is_empty() {
        approval::signatures_beside(&options.request).map_err(|e| e.to_string())?
    } else {
        options.signatures.clone()
    };
    let mut signatures = Vec::new();
    for path in &signature_files {
        signatures
            .push(std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?);
    }
    if let Some((path, _)) = signature_files
        .iter()
        .zip(&signatures)
        .find(|(_, s)| s.len() > MAX_SIGNATURE_LEN)
    {
        return Err(format!(
            "{} is longer than a minisign signature ({MAX_SIGNATURE_LEN} bytes at most)",
            path.display()
        ));
    }
    evaluate_bytes(&policy, bytes, &shown, signatures, found).map_err(|e| e.reason)
}

/// Who signed a request and who may still: `signed: alice (…); still to sign: 1 more of bob
/// (…), carol (…)`.
pub fn who_signed(policy: &Policy, tally: &approval::Tally) -> String {
    let names = |ids: &[sluice_common::keys::KeyId]| {
        ids.iter()
            .map(|id| policy.name_of(*id))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let signed = match tally.signed.is_empty() {
        true => "nobody yet".to_string(),
        false => names(&tally.signed),
    };
    let needed = tally.threshold.saturating_sub(tally.signed.len());
    match needed {
        0 => format!("signed: {signed}"),
        n => format!(
            "signed: {signed}; still to sign: {n} more of {}",
            names(&tally.missing)
        ),
    }
}

/// [`evaluate`] on a request's bytes and its signatures' (`shown` names the request in
/// messages): [`precheck`], then the files' content.
pub fn evaluate_bytes(
    policy: &Policy,
    bytes: Vec<u8>,
    shown: &str,
    signatures: Vec<Vec<u8>>,
    found: Option<(&[SourceObject], &[Skipped])>,
) -> Result<Approved, NotApproved> {
    let prechecked = precheck(policy, bytes, shown, signatures, found)?;
    let files = match found {
        Some((objects, skipped)) => Some(digests(objects, skipped).map_err(NotApproved::refused)?),
        None => None,
    };
    prechecked.finish(files.as_ref())
}

/// A request whose every check but its files' content passed.
#[derive(Debug)]
pub struct Prechecked {
    approved: Approved,
}

impl Prechecked {
    /// What its files ask of the export budgets.
    pub fn demand(&self) -> &Demand {
        &self.approved.demand
    }

    /// The last check: `files` (path → size and SHA-256 hex, as read) are exactly the
    /// request's, unchanged.
    pub fn finish(
        self,
        files: Option<&BTreeMap<String, (u64, String)>>,
    ) -> Result<Approved, NotApproved> {
        if let Some(files) = files {
            self.approved
                .request
                .check_files(files)
                .map_err(NotApproved::refused)?;
        }
        Ok(self.approved)
    }
}

/// Every check that reads no file content, cheapest first: the limits, the request's form and
/// expiry, the names and listed sizes of what was `found` (a file not in the request, one of
/// another size, a directory with no approved file below it, an approved file missing, or
/// anything skipped), and last the quorum — so a request short of approvals (`pending`) costs
/// no read of its files, and one refused for another reason is never left waiting.
pub fn precheck(
    policy: &Policy,
    bytes: Vec<u8>,
    shown: &str,
    signatures: Vec<Vec<u8>>,
    found: Option<(&[SourceObject], &[Skipped])>,
) -> Result<Prechecked, NotApproved> {
    if bytes.len() > MAX_REQUEST_LEN {
        return Err(NotApproved::refused(format!(
            "{shown} is longer than the {MAX_REQUEST_LEN} bytes a request may have"
        )));
    }
    // They travel in every manifest: the limits are the manifest's.
    if signatures.len() > MAX_APPROVAL_SIGNATURES {
        return Err(NotApproved::refused(format!(
            "{} signature files; at most {MAX_APPROVAL_SIGNATURES} travel with an export",
            signatures.len()
        )));
    }
    if signatures.iter().any(|s| s.len() > MAX_SIGNATURE_LEN) {
        return Err(NotApproved::refused(format!(
            "a signature is longer than a minisign signature ({MAX_SIGNATURE_LEN} bytes at most)"
        )));
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| NotApproved::refused(format!("{shown} is not UTF-8")))?;
    let request = Request::parse(text, shown).map_err(NotApproved::refused)?;
    request
        .check_not_expired(SystemTime::now())
        .map_err(NotApproved::refused)?;
    if let Some((objects, skipped)) = found {
        check_listed(&request, objects, skipped).map_err(NotApproved::refused)?;
    }
    // Every quorum the files need (the default's, each matching rule's): the first short one
    // is the reason, named by its rule.
    let tallies = policy.tallies(&request, &bytes, &signatures);
    if let Some(tally) = tallies.iter().find(|t| !t.met()) {
        let short = ApprovalError::Quorum {
            valid: tally.signed.len(),
            threshold: tally.threshold,
            problems: tally.problems.clone(),
            rule: tally.rule.clone(),
        };
        return Err(NotApproved {
            pending: true,
            recheck: false,
            reason: format!("{short}; {}", who_signed(policy, tally)),
        });
    }
    let mut signed: Vec<sluice_common::keys::KeyId> = tallies
        .iter()
        .flat_map(|t| t.signed.iter().copied())
        .collect();
    signed.sort_by_key(|id| id.0);
    signed.dedup_by_key(|id| id.0);
    let export = hex::encode(Sha256::digest(&bytes));
    Ok(Prechecked {
        approved: Approved {
            threshold: tallies
                .iter()
                .map(|t| t.threshold)
                .max()
                .unwrap_or(policy.threshold),
            names: signed.iter().map(|id| policy.name_of(*id)).collect(),
            approvers: signed,
            carried: Approval {
                request: bytes,
                signatures,
            },
            demand: Demand {
                export: Some(export),
                ..policy.demand_typed(
                    (request.files.iter()).map(|f| (f.path.as_str(), f.size, f.reported_types())),
                )
            },
            request,
        },
    })
}

/// What was found matches the request by name and listed size (content is not read): every
/// file approved, at its approved size; every directory above an approved file; every approved
/// file there; nothing skipped. The receiver refuses a directory entry with no approved file
/// below it, so none is sent.
fn check_listed(
    request: &Request,
    objects: &[SourceObject],
    skipped: &[Skipped],
) -> Result<(), String> {
    if let Some(s) = skipped.first() {
        return Err(format!("{}: {}", s.path.display(), s.reason));
    }
    check_listed_names(request, objects).map_err(|e| e.to_string())
}

fn check_listed_names(request: &Request, objects: &[SourceObject]) -> Result<(), ApprovalError> {
    let approved: BTreeMap<&str, u64> = request
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.size))
        .collect();
    let mut present = 0;
    for object in objects {
        match object.kind() {
            EntryKind::File => match approved.get(object.path.as_str()) {
                None => return Err(ApprovalError::NotInRequest(object.path.clone())),
                Some(size) if object.size.is_some_and(|listed| listed != *size) => {
                    return Err(ApprovalError::Changed(object.path.clone()))
                }
                Some(_) => present += 1,
            },
            EntryKind::Directory => {
                let below = format!("{}/", object.path);
                if !approved.keys().any(|p| p.starts_with(&below)) {
                    return Err(ApprovalError::NotInRequest(object.path.clone()));
                }
            }
        }
    }
    if present < approved.len() {
        let found: std::collections::BTreeSet<&str> =
            objects.iter().map(|o| o.path.as_str()).collect();
        if let Some(missing) = approved.keys().find(|p| !found.contains(**p)) {
            return Err(ApprovalError::Missing((*missing).to_string()));
        }
    }
    Ok(())
}

/// Every file (or stored object) of `objects`, as found (see [`objects::enumerate_with`]) and
/// named: path → (size, SHA-256 hex). Refused if anything was `skipped`.
pub fn digests(
    objects: &[SourceObject],
    skipped: &[Skipped],
) -> Result<BTreeMap<String, (u64, String)>, String> {
    if let Some(s) = skipped.first() {
        return Err(format!("{}: {}", s.path.display(), s.reason));
    }
    let mut files = BTreeMap::new();
    for object in objects {
        let Some(opened) = object.source.open() else {
            continue;
        };
        let (size, sha256) = opened
            .and_then(|(opened, _)| hash_file(opened))
            .map_err(|e| format!("cannot read {}: {e}", object.source.shown()))?;
        files.insert(object.path.clone(), (size, sha256));
    }
    if files.is_empty() {
        return Err("no file to approve".into());
    }
    Ok(files)
}

fn hash_file(mut file: impl Read) -> std::io::Result<(u64, String)> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hash.finalize())))
}

fn request(
    paths: &[PathBuf],
    purpose: &str,
    requester: Option<String>,
    expires: &str,
    out: &Path,
    reports: Option<&ContentPolicy>,
) -> Result<(), Failed> {
    let valid_for = humantime::parse_duration(expires).map_err(|_| {
        usage(format!(
            "--expires {expires:?}: expected a duration, e.g. 7d"
        ))
    })?;
    let stores = connect(paths)?;
    let (found, skipped) = objects::enumerate_with(paths, None, &stores);
    let files = read_files(&found, &skipped, reports).map_err(|e| (ExitStatus::Failure, e))?;
    let requester = requester.unwrap_or_else(|| {
        let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        format!("{user}@{host}")
    });
    let mut request = Request::new(purpose, &requester, valid_for, files).map_err(refused)?;
    // Without reports, the first version: receivers that read only it take the request.
    if request.files.iter().all(|f| f.report.is_none()) {
        request.version = 1;
    }
    let text = request.to_text().map_err(refused)?;
    if text.len() > MAX_REQUEST_LEN {
        return Err((
            ExitStatus::Failure,
            format!(
                "the request would be {} bytes, more than the {MAX_REQUEST_LEN} a request may \
                 have (it travels in every manifest): split the export, or --no-report",
                text.len()
            ),
        ));
    }
    write_new(out, text.as_bytes())?;
    println!(
        "wrote {} ({} files, expires {}); approvers sign it with minisign -S",
        out.display(),
        request.files.len(),
        request.expires
    );
    Ok(())
}

use sluice_inspect::policy::Policy as ContentPolicy;

/// Report text a request carries at most, all files together (it travels in every manifest,
/// whose request is at most [`MAX_REQUEST_LEN`]); files past it carry none, and say so.
const MAX_REPORTS_BYTES: usize = 256 << 10;
/// Finding lines kept per file.
const MAX_REPORT_LINES: usize = 16;

/// `--content-policy`, or the gate's defaults.
fn content_policy_or_default(path: Option<&Path>) -> Result<ContentPolicy, Failed> {
    match path {
        Some(path) => ContentPolicy::load(path),
        None => ContentPolicy::parse("quarantine = \"quarantine\"\n"),
    }
    .map_err(|e| usage(format!("--content-policy: {e}")))
}

/// Every file of `objects` as a request names it: read once each — copied, as found, into an
/// unnamed temporary file while hashed — and, with `reports`, the gate's report on that very
/// copy, so the report and the hash are of the same bytes. Refused if anything was skipped.
fn read_files(
    objects: &[SourceObject],
    skipped: &[Skipped],
    reports: Option<&ContentPolicy>,
) -> Result<Vec<RequestFile>, String> {
    if let Some(s) = skipped.first() {
        return Err(format!("{}: {}", s.path.display(), s.reason));
    }
    let mut files = Vec::new();
    let mut report_bytes = 0;
    for object in objects {
        let Some(opened) = object.source.open() else {
            continue;
        };
        let shown = object.source.shown();
        let cannot = |e: std::io::Error| format!("cannot read {shown}: {e}");
        let (mut reader, _) = opened.map_err(cannot)?;
        let mut copy = tempfile::tempfile().map_err(cannot)?;
        let listed = object.size.unwrap_or(u64::MAX);
        let (size, sha256) =
            sluice_common::hashed_copy::copy_hashing(&mut reader, &mut copy, listed, None)
                .map_err(cannot)?;
        if size > listed {
            return Err(format!("{shown} grew while it was being read"));
        }
        let report = match reports {
            Some(policy) if report_bytes < MAX_REPORTS_BYTES => {
                std::io::Seek::rewind(&mut copy).map_err(cannot)?;
                let report = file_report(&policy.report(&mut copy, &object.path, size));
                report_bytes += report_len(&report);
                Some(report)
            }
            Some(_) => Some(approval::FileReport {
                verdict: "not shown".into(),
                reason: Some(
                    "the request's reports are full: check this file with sluice-inspect".into(),
                ),
                formats: Vec::new(),
                findings: Vec::new(),
            }),
            None => None,
        };
        files.push(RequestFile {
            path: object.path.clone(),
            size,
            sha256,
            report,
        });
    }
    if files.is_empty() {
        return Err("no file to approve".into());
    }
    Ok(files)
}

/// The gate's report as a request carries it: the verdict, the formats, and at most
/// [`MAX_REPORT_LINES`] finding lines (the report's own text, already escaped and clipped).
fn file_report(report: &sluice_inspect::report::Report) -> approval::FileReport {
    let mut lines = report
        .text()
        .lines()
        .skip(1)
        .map(|l| l.trim().to_string())
        .collect::<Vec<_>>();
    if lines.len() > MAX_REPORT_LINES {
        let more = lines.len() - MAX_REPORT_LINES;
        lines.truncate(MAX_REPORT_LINES);
        lines.push(format!("({more} more lines: sluice-inspect shows them)"));
    }
    approval::FileReport {
        verdict: report.verdict.to_string(),
        reason: report.reason.clone(),
        formats: report.formats.iter().map(ToString::to_string).collect(),
        findings: lines,
    }
}

fn report_len(report: &approval::FileReport) -> usize {
    report.verdict.len()
        + report.reason.as_ref().map_or(0, String::len)
        + report.formats.iter().map(String::len).sum::<usize>()
        + report.findings.iter().map(String::len).sum::<usize>()
}

/// A report as the lines `show` prints under its file.
fn report_lines(report: &approval::FileReport) -> Vec<String> {
    let mut head = report.verdict.clone();
    if !report.formats.is_empty() {
        head.push_str(&format!(" ({})", report.formats.join(", ")));
    }
    if let Some(reason) = &report.reason {
        head.push_str(&format!(": {reason}"));
    }
    std::iter::once(head)
        .chain(report.findings.iter().cloned())
        .map(|l| sluice_common::paths::escaped(&l))
        .collect()
}

/// The buckets of the `s3://` paths, connected with the AWS variables (a wrong key, a missing
/// bucket or an unreachable endpoint: exit 2, one line).
fn connect(paths: &[PathBuf]) -> Result<Stores, Failed> {
    Stores::connect(paths, &sluice_common::s3::Settings::default()).map_err(usage)
}

/// Writes `bytes` to a new file (never over an existing one).
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), Failed> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .map_err(|e| {
            (
                ExitStatus::Failure,
                format!("cannot write {}: {e}", path.display()),
            )
        })
}

fn sign(request: &Path, key: &Path, out: Option<PathBuf>) -> Result<(), Failed> {
    let bytes = std::fs::read(request)
        .map_err(|e| usage(format!("cannot read {}: {e}", request.display())))?;
    // Only a valid request gets a signature: an approver never signs garbage by mistake.
    let text = std::str::from_utf8(&bytes).map_err(|_| usage("the request is not UTF-8"))?;
    Request::parse(text, &request.display().to_string()).map_err(refused)?;
    let key_text =
        std::fs::read_to_string(key).map_err(|e| usage(format!("--key {}: {e}", key.display())))?;
    let (id, signature) = approval::sign(&key_text, &bytes)
        .map_err(|e| usage(format!("--key {}: {e}", key.display())))?;
    let out = out.unwrap_or_else(|| {
        let mut name = request.as_os_str().to_owned();
        name.push(format!(".{id}.minisig"));
        PathBuf::from(name)
    });
    write_new(&out, signature.as_bytes())?;
    println!("wrote {} (key {id})", out.display());
    Ok(())
}

fn check(
    request: &Path,
    policy: &Path,
    signatures: Vec<PathBuf>,
    paths: &[PathBuf],
) -> Result<(), Failed> {
    let options = crate::cli::ApprovalOptions {
        policy: policy.to_path_buf(),
        request: request.to_path_buf(),
        signatures,
    };
    let stores = connect(paths)?;
    let (found, skipped) = objects::enumerate_with(paths, None, &stores);
    let found = (!paths.is_empty()).then_some((found.as_slice(), skipped.as_slice()));
    let approved = evaluate(&options, found).map_err(|e| (ExitStatus::Failure, e))?;
    println!(
        "approved: {} of {} approvals ({}); {} files, purpose {:?}, expires {}",
        approved.approvers.len(),
        approved.threshold,
        approved.names.join(", "),
        approved.request.files.len(),
        approved.request.purpose,
        approved.request.expires
    );
    Ok(())
}

/// `sluice-approve show`: what a reviewer needs before signing, on standard output.
fn show(
    request: &Path,
    policy: Option<&Path>,
    signatures: Vec<PathBuf>,
    paths: &[PathBuf],
    content: &ContentPolicy,
) -> Result<(), Failed> {
    let shown = request.display().to_string();
    let bytes = std::fs::read(request).map_err(|e| usage(format!("cannot read {shown}: {e}")))?;
    if bytes.len() > MAX_REQUEST_LEN {
        return Err(refused_text(format!(
            "{shown} is longer than the {MAX_REQUEST_LEN} bytes a request may have"
        )));
    }
    let text =
        std::str::from_utf8(&bytes).map_err(|_| refused_text(format!("{shown} is not UTF-8")))?;
    let parsed = Request::parse(text, &shown).map_err(refused)?;
    let expiry = match parsed.check_not_expired(SystemTime::now()) {
        Ok(()) => String::new(),
        Err(_) => "  EXPIRED: no approval of it is valid".into(),
    };
    let total: u64 = parsed.files.iter().map(|f| f.size).sum();
    let mut out = format!(
        "request    {shown} (sha256 {})\npurpose    {}\nrequester  {}\ncreated    {}\n\
         expires    {}{expiry}\nfiles      {}, {}\n",
        hex::encode(Sha256::digest(&bytes)),
        sluice_common::paths::escaped(&parsed.purpose),
        sluice_common::paths::escaped(&parsed.requester),
        parsed.created,
        parsed.expires,
        parsed.files.len(),
        sluice_common::units::Bytes(total),
    );
    // With the files: each read once, hashed and reported on again, and compared.
    let found = match paths.is_empty() {
        true => None,
        false => {
            let stores = connect(paths)?;
            let (objects, skipped) = objects::enumerate_with(paths, None, &stores);
            let files = read_files(&objects, &skipped, Some(content))
                .map_err(|e| (ExitStatus::Failure, e))?;
            Some(files)
        }
    };
    for file in &parsed.files {
        out.push_str(&format!(
            "  {}  {}  sha256 {}\n",
            sluice_common::paths::escaped(&file.path),
            sluice_common::units::Bytes(file.size),
            file.sha256
        ));
        let now = found
            .as_ref()
            .map(|files| files.iter().find(|f| f.path == file.path));
        let said = file.report.as_ref().map(report_lines);
        match (&said, &now) {
            (_, Some(None)) => out.push_str("      MISSING from the files given\n"),
            (_, Some(Some(now))) if now.sha256 != file.sha256 || now.size != file.size => {
                out.push_str("      DIFFERS: the file given is not the one approved\n")
            }
            (Some(said), Some(Some(now))) => {
                let computed = now.report.as_ref().map(report_lines);
                if computed.as_ref() == Some(said) {
                    out.push_str("      report (checked against the file):\n");
                } else {
                    out.push_str("      report as the request says (NOT what the file shows):\n");
                }
                // The request's own text is marked as such: it cannot pass for show's lines.
                for line in said {
                    out.push_str(&format!("        │ {line}\n"));
                }
                if computed.as_ref() != Some(said) {
                    out.push_str("      report of the file given:\n");
                    for line in computed.unwrap_or_default() {
                        out.push_str(&format!("        {line}\n"));
                    }
                }
            }
            (Some(said), None) => {
                out.push_str("      report (the requester's; give the files to check it):\n");
                for line in said {
                    out.push_str(&format!("        │ {line}\n"));
                }
            }
            (None, Some(Some(now))) => {
                out.push_str("      report of the file given (none in the request):\n");
                for line in now.report.as_ref().map(report_lines).unwrap_or_default() {
                    out.push_str(&format!("        {line}\n"));
                }
            }
            (None, None) => {}
        }
    }
    if let Some(files) = &found {
        for extra in files
            .iter()
            .filter(|f| !parsed.files.iter().any(|p| p.path == f.path))
        {
            out.push_str(&format!(
                "  NOT IN THE REQUEST: {}\n",
                sluice_common::paths::escaped(&extra.path)
            ));
        }
    }
    let signature_files = match signatures.is_empty() {
        true => approval::signatures_beside(request).map_err(|e| usage(e.to_string()))?,
        false => signatures,
    };
    let mut read = Vec::new();
    for path in &signature_files {
        let signature = std::fs::read(path)
            .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
        read.push(signature);
    }
    match policy {
        None => out.push_str(&format!(
            "approvals  {} signature file(s) beside it, not checked: give --policy approvals.toml\n",
            read.len()
        )),
        Some(path) => {
            let policy = Policy::load(path).map_err(|e| usage(e.to_string()))?;
            // One line per quorum the files need: the default's, each matching rule's.
            for tally in policy.tallies(&parsed, &bytes, &read) {
                let rule = match &tally.rule {
                    Some(name) => format!("rule {name:?}, "),
                    None => String::new(),
                };
                out.push_str(&format!(
                    "approvals  {rule}{} of {}: {}\n",
                    tally.signed.len(),
                    tally.threshold,
                    who_signed(&policy, &tally)
                ));
                for problem in &tally.problems {
                    out.push_str(&format!("  not counted: {problem}\n"));
                }
            }
        }
    }
    print!("{out}");
    Ok(())
}

fn refused_text(message: String) -> Failed {
    (ExitStatus::Failure, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file whose report runs long (an archive of many members) carries at most 16 finding
    /// lines in the request, and says how many more there were.
    #[test]
    fn a_files_report_in_a_request_is_bounded() {
        use sluice_inspect::report::{Finding, Report};
        let report = Report {
            path: "big.zip".into(),
            size: 1,
            verdict: "admitted",
            reason: None,
            formats: vec!["zip"],
            findings: (0..40)
                .map(|i| Finding {
                    at: format!("big.zip!m{i}"),
                    format: "pickle",
                    facts: serde_json::json!({ "imports": ["collections.OrderedDict"] }),
                })
                .collect(),
            findings_dropped: 0,
        };
        let carried = file_report(&report);
        assert_eq!(carried.findings.len(), MAX_REPORT_LINES + 1);
        assert_eq!(
            carried.findings.last().unwrap(),
            "(24 more lines: sluice-inspect shows them)"
        );
        assert_eq!(carried.formats, ["zip"]);
        assert!(report_len(&carried) < 4096);
    }
    use sluice_common::keys;

    /// The security review's finding: the approval check listed the paths and hashed what it
    /// found, then the sender listed them again and sent what it found then, so a writer who
    /// swapped a file (or a stored object) between the two listings had it sent unapproved.
    /// The objects checked are now the objects sent, each read as it was found: one swapped
    /// after the check is refused when read, and a second listing (which would have found it)
    /// is no longer made.
    #[test]
    fn the_objects_approved_are_the_objects_sent() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("a.txt"), b"approved").unwrap();
        std::fs::write(data.join("b.txt"), b"also ok").unwrap();
        let approver = tmp.path().join("approver");
        keys::generate_sender_keys(&approver).unwrap();
        let policy = tmp.path().join("approvals.toml");
        let public = approver.join(keys::SENDER_PUB);
        std::fs::write(
            &policy,
            format!(
                "threshold = 1\napprovers = [{:?}]\n",
                public.display().to_string()
            ),
        )
        .unwrap();

        let paths = [data.clone()];
        let (objects, skipped) = objects::enumerate(&paths, None);
        let files = digests(&objects, &skipped).unwrap();
        let files = files
            .into_iter()
            .map(|(path, (size, sha256))| RequestFile {
                path,
                size,
                sha256,
                report: None,
            })
            .collect();
        let request = Request::new(
            "test",
            "tester",
            std::time::Duration::from_secs(3600),
            files,
        )
        .unwrap()
        .to_text()
        .unwrap();
        let request_path = tmp.path().join("req.toml");
        std::fs::write(&request_path, &request).unwrap();
        let key = std::fs::read_to_string(approver.join(keys::SENDER_KEY)).unwrap();
        let (_, signature) = approval::sign(&key, request.as_bytes()).unwrap();
        let signature_path = tmp.path().join("req.toml.minisig");
        std::fs::write(&signature_path, signature).unwrap();
        let options = crate::cli::ApprovalOptions {
            policy,
            request: request_path,
            signatures: vec![signature_path],
        };

        let approved = preflight(&options, &objects, &skipped).unwrap();
        assert_eq!(approved.request.files.len(), 2);
        // After the check, before the send: a.txt swapped for other bytes of the same size.
        std::fs::write(tmp.path().join("other"), b"tampered").unwrap();
        std::fs::rename(tmp.path().join("other"), data.join("a.txt")).unwrap();
        // What is sent is what was checked: a.txt, read as the file approved, is refused.
        let a = objects.iter().find(|o| o.path == "data/a.txt").unwrap();
        let err = a.source.open().unwrap().map(|_| ()).unwrap_err();
        assert!(
            err.to_string().contains("replaced by another file"),
            "{err}"
        );
        let b = objects.iter().find(|o| o.path == "data/b.txt").unwrap();
        assert!(b.source.open().unwrap().is_ok());
        // A second listing would have found the swapped file (and sent it, unchecked).
        let (again, skipped) = objects::enumerate(&paths, None);
        let err = preflight(&options, &again, &skipped).unwrap_err();
        assert!(err.contains("changed since approval: data/a.txt"), "{err}");
    }
}
