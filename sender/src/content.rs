//! The content policy checked before sending (`--policy`, one-shot and `watch`): every file
//! inspected as the receiver's gate will inspect it, so nothing it would refuse leaves.

use crate::error::Error;
use crate::objects::{self, SourceObject};

/// Checks every file against the content policy at `path`, as the receiver will: the
/// refused ones are logged with their rule, and nothing is sent if there is one. (Stdin is
/// not inspected here: it is read once, while sending.)
pub(crate) fn preflight(path: &std::path::Path, objects: &[SourceObject]) -> Result<(), Error> {
    match check_policy(&load_policy(path)?, objects).len() {
        0 => Ok(()),
        n => Err(Error::PolicyRefused(n)),
    }
}

/// The content policy at `path` (`--policy`); a bad one is a usage error.
pub(crate) fn load_policy(path: &std::path::Path) -> Result<sluice_inspect::policy::Policy, Error> {
    sluice_inspect::policy::Policy::load(path)
        .map_err(|e| Error::Usage(sluice_common::config::UsageError(format!("--policy: {e}"))))
}

/// The files of `objects` `policy` refuses, each with its reason (and logged), as the
/// receiver's gate would refuse them.
pub(crate) fn check_policy(
    policy: &sluice_inspect::policy::Policy,
    objects: &[SourceObject],
) -> Vec<(String, String)> {
    use sluice_inspect::policy;
    let mut refused = Vec::new();
    for object in objects {
        let size = object.size.unwrap_or(0);
        // Inspected and scanned through one fd, opened as the encoder opens it (never through
        // a link, never a FIFO or device); a stored object is first copied, as listed, to an
        // unnamed temporary file (TMPDIR) the checks read.
        let opened = match &object.source {
            objects::Source::File(file) => {
                Box::new(move || Ok(file.open()?.0)) as Box<dyn Fn() -> std::io::Result<_>>
            }
            objects::Source::Object(stored) => Box::new(move || {
                use std::io::Seek;
                let (mut reader, _) = stored.open()?;
                let mut copy = tempfile::tempfile()?;
                std::io::copy(&mut reader, &mut copy)?;
                copy.rewind()?;
                Ok(copy)
            }),
            objects::Source::Held(copy) => Box::new(move || copy.reopen()),
            objects::Source::Directory | objects::Source::Stdin => continue,
        };
        let checked = policy
            .check_name_and_size(&object.path, size)
            .and_then(|()| Ok(opened()?))
            .and_then(|mut opened| {
                policy.inspect(&mut opened, &object.path, size)?;
                match policy.scan_command() {
                    Some(command) => {
                        use std::io::Seek;
                        use std::os::fd::AsRawFd;
                        opened.rewind()?;
                        let by_fd =
                            format!("/proc/{}/fd/{}", std::process::id(), opened.as_raw_fd());
                        policy::run_scanner(command, std::path::Path::new(&by_fd))
                    }
                    None => Ok(()),
                }
            });
        if let Err(reason) = checked {
            tracing::error!(path = %object.path, "refused by policy: {reason}");
            refused.push((object.path.clone(), reason.to_string()));
        }
    }
    refused
}
