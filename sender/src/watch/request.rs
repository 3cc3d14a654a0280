//! Request items: with `--approval-policy`, each outbox item is an export request — a directory
//! holding `request.toml` (made by `sluice-approve request`), its approvers' `*.minisig` beside
//! it, and the files laid out under the names the request gives them:
//!
//! ```text
//!   OUTBOX/q3-eval/request.toml
//!   OUTBOX/q3-eval/request.toml.alice.minisig
//!   OUTBOX/q3-eval/report/eval.json          sent as report/eval.json
//! ```
//!
//! The request and its signatures are read from the listing that is then sent (each file
//! pinned to the inode seen), never sent as files themselves; the files go out under their
//! names below the item, with the approval in every manifest for the receiver to check again.

use std::io::Read;

use sluice_common::approval::Policy;
use sluice_protocol::manifest::{MAX_APPROVAL_SIGNATURES, MAX_REQUEST_LEN, MAX_SIGNATURE_LEN};

use super::outbox::Listing;
use crate::approve::{self, NotApproved, Prechecked};
use crate::objects::{Source, SourceObject};

/// The request's name in a request item.
pub const REQUEST_FILE: &str = "request.toml";

/// Splits the listing of the item `name` into its request, its signatures and its files, and
/// checks them against `policy` as far as no file content is read ([`approve::precheck`]):
/// the files to send (named below the item) and the request, or why not (pending while only
/// approvals are missing). The caller reads the files once, and finishes the check on what
/// it read.
pub fn precheck(
    policy: &Policy,
    name: &str,
    listing: Listing,
) -> Result<(Prechecked, Listing), NotApproved> {
    let refused = |reason: String| NotApproved::refused(reason);
    let below = format!("{name}/");
    let mut request = None;
    let mut signatures = Vec::new();
    let mut files = Vec::new();
    for mut object in listing.objects {
        if object.path == name {
            if matches!(object.source, Source::Directory) {
                continue;
            }
            return Err(refused(format!(
                "not a request: with --approval-policy an item is a directory holding \
                 {REQUEST_FILE}, its *.minisig signatures and the files it names"
            )));
        }
        let Some(inside) = object.path.strip_prefix(&below).map(str::to_string) else {
            return Err(refused(format!("{}: outside the item", object.path)));
        };
        if inside == REQUEST_FILE {
            request = Some(read_bounded(&object, MAX_REQUEST_LEN).map_err(refused)?);
        } else if !inside.contains('/') && inside.ends_with(".minisig") {
            // Refused at the first beyond the limit: a writer's million files are never read.
            if signatures.len() == MAX_APPROVAL_SIGNATURES {
                return Err(refused(format!(
                    "more than {MAX_APPROVAL_SIGNATURES} signature files; at most \
                     {MAX_APPROVAL_SIGNATURES} travel with an export"
                )));
            }
            signatures.push(read_bounded(&object, MAX_SIGNATURE_LEN).map_err(refused)?);
        } else {
            object.path = inside;
            files.push(object);
        }
    }
    let Some(request) = request else {
        return Err(refused(format!(
            "not a request: no {REQUEST_FILE} in it (with --approval-policy every item is an \
             export request)"
        )));
    };
    let shown = format!("{name}/{REQUEST_FILE}");
    let prechecked = approve::precheck(
        policy,
        request,
        &shown,
        signatures,
        Some((&files, &listing.skipped)),
    )?;
    Ok((
        prechecked,
        Listing {
            objects: files,
            skipped: listing.skipped,
        },
    ))
}

/// The content of the file `object` as listed, refused beyond `limit` bytes (a request or a
/// signature is small; a writer's huge one is never read whole).
fn read_bounded(object: &SourceObject, limit: usize) -> Result<Vec<u8>, String> {
    let opened = match (&object.source, object.source.open()) {
        (Source::File(_), Some(opened)) => opened,
        _ => return Err(format!("{}: not a file", object.path)),
    };
    let mut bytes = Vec::new();
    opened
        .and_then(|(reader, _)| reader.take(limit as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {}: {e}", object.path))?;
    if bytes.len() > limit {
        return Err(format!(
            "{} is longer than the {limit} bytes it may have",
            object.path
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::approval::{self, Request, RequestFile};
    use sluice_common::beneath::Dir;
    use sluice_common::keys;
    use std::sync::Arc;

    /// An outbox with one approver's policy (threshold 1) and a request item `q` approving
    /// `data/a.txt`, signed.
    fn setup() -> (tempfile::TempDir, Arc<Dir>, Policy) {
        let tmp = tempfile::tempdir().unwrap();
        let approver = tmp.path().join("approver");
        keys::generate_sender_keys(&approver).unwrap();
        let policy_path = tmp.path().join("approvals.toml");
        std::fs::write(
            &policy_path,
            format!(
                "threshold = 1\napprovers = [{:?}]\n",
                approver.join(keys::SENDER_PUB).display().to_string()
            ),
        )
        .unwrap();
        let item = tmp.path().join("outbox/q");
        std::fs::create_dir_all(item.join("data")).unwrap();
        std::fs::write(item.join("data/a.txt"), b"approved").unwrap();
        let files = vec![RequestFile {
            path: "data/a.txt".into(),
            size: 8,
            sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"approved")),
            report: None,
        }];
        let request = Request::new("t", "tester", std::time::Duration::from_secs(3600), files)
            .unwrap()
            .to_text()
            .unwrap();
        std::fs::write(item.join(REQUEST_FILE), &request).unwrap();
        let key = std::fs::read_to_string(approver.join(keys::SENDER_KEY)).unwrap();
        let (_, signature) = approval::sign(&key, request.as_bytes()).unwrap();
        std::fs::write(item.join("request.toml.minisig"), signature).unwrap();
        let outbox = Arc::new(Dir::open(&tmp.path().join("outbox")).unwrap());
        (tmp, outbox, Policy::load(&policy_path).unwrap())
    }

    fn admit_q(outbox: &Arc<Dir>, policy: &Policy) -> Result<Vec<String>, NotApproved> {
        let listing = Listing::of(outbox, "q", std::path::Path::new("outbox"));
        let (prechecked, listing) = precheck(policy, "q", listing)?;
        let files = approve::digests(&listing.objects, &listing.skipped).unwrap();
        prechecked.finish(Some(&files))?;
        Ok(listing.objects.into_iter().map(|o| o.path).collect())
    }

    #[test]
    fn a_request_item_sends_its_files_under_the_requests_names_and_never_itself() {
        let (_tmp, outbox, policy) = setup();
        assert_eq!(admit_q(&outbox, &policy).unwrap(), ["data", "data/a.txt"]);
    }

    /// A writer of the outbox bends the request item: a request too long to be one (never
    /// read whole), a signature file too long, a request that is a symlink or a directory.
    /// Each is refused for good, not left pending.
    #[test]
    fn hostile_request_items_are_refused_not_left_waiting() {
        let (tmp, outbox, policy) = setup();
        let item = tmp.path().join("outbox/q");
        let refused = |outbox: &Arc<Dir>| {
            let err = admit_q(outbox, &policy).unwrap_err();
            assert!(!err.pending, "{err:?}");
            err.reason
        };

        std::fs::write(item.join("extra.minisig"), vec![b'x'; 64 << 10]).unwrap();
        assert!(refused(&outbox).contains("longer than the 1024 bytes"));
        std::fs::remove_file(item.join("extra.minisig")).unwrap();

        let request = std::fs::read(item.join(REQUEST_FILE)).unwrap();
        let mut long = request.clone();
        long.resize(3 << 20, b'\n');
        std::fs::write(item.join(REQUEST_FILE), &long).unwrap();
        assert!(refused(&outbox).contains("longer than the 1048576 bytes"));

        std::fs::write(tmp.path().join("elsewhere.toml"), &request).unwrap();
        std::fs::remove_file(item.join(REQUEST_FILE)).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("elsewhere.toml"), item.join(REQUEST_FILE))
            .unwrap();
        assert!(refused(&outbox).contains("request.toml"));

        std::fs::remove_file(item.join(REQUEST_FILE)).unwrap();
        std::fs::create_dir(item.join(REQUEST_FILE)).unwrap();
        assert!(refused(&outbox).contains("request.toml: not a file"));

        // An empty directory carries a name (data) the request never approved.
        std::fs::remove_dir(item.join(REQUEST_FILE)).unwrap();
        std::fs::write(item.join(REQUEST_FILE), &request).unwrap();
        std::fs::create_dir(item.join("data/exfiltrated-name")).unwrap();
        assert!(refused(&outbox).contains("not in the approved request: data/exfiltrated-name"));
        std::fs::remove_dir(item.join("data/exfiltrated-name")).unwrap();
        // 33 signature files: refused at the 33rd, before it is read.
        for n in 0..33 {
            std::fs::write(item.join(format!("s{n}.minisig")), b"x").unwrap();
        }
        assert!(refused(&outbox).contains("more than 32 signature files"));
        for n in 0..33 {
            std::fs::remove_file(item.join(format!("s{n}.minisig"))).unwrap();
        }

        // Put right again, it passes: the refusals were about the request, not the setup.
        assert!(admit_q(&outbox, &policy).is_ok());
    }

    /// A writer's own unsigned request for a 1 TiB (sparse) file waits for approvals at once:
    /// nothing of the file is read while the quorum is short (reading it would hold the daemon
    /// for hours). A file whose listed size is not the request's is refused, unread, too.
    #[test]
    fn an_unsigned_request_for_a_huge_file_waits_without_its_file_being_read() {
        let (tmp, outbox, policy) = setup();
        let item = tmp.path().join("outbox/big");
        std::fs::create_dir_all(&item).unwrap();
        let huge = std::fs::File::create(item.join("huge.bin")).unwrap();
        huge.set_len(1 << 40).unwrap();
        let files = vec![RequestFile {
            path: "huge.bin".into(),
            size: 1 << 40,
            sha256: "0".repeat(64),
            report: None,
        }];
        let request = Request::new("t", "writer", std::time::Duration::from_secs(3600), files)
            .unwrap()
            .to_text()
            .unwrap();
        std::fs::write(item.join(REQUEST_FILE), &request).unwrap();
        let listing = Listing::of(&outbox, "big", std::path::Path::new("outbox"));
        let err = precheck(&policy, "big", listing).unwrap_err();
        assert!(err.pending, "{err:?}");
        assert!(err.reason.contains("0 of 1 approvals"), "{}", err.reason);
        huge.set_len((1 << 40) + 1).unwrap();
        let listing = Listing::of(&outbox, "big", std::path::Path::new("outbox"));
        let err = precheck(&policy, "big", listing).unwrap_err();
        assert!(
            !err.pending && err.reason.contains("changed since approval"),
            "{err:?}"
        );
    }
}
