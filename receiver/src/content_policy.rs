//! `--policy` as opened at start: the content policy and the quarantine that files it refuses
//! go to — a local directory, or a prefix in an object store (`quarantine =
//! "s3://BUCKET/PREFIX"`, with the receiver's `[s3]` settings). The run's
//! [`Context`](crate::context::Context) holds it; `gate` applies it to each staged file. Apart
//! from `gate` because that module needs the context, and this is part of it.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use sluice_common::beneath::Dir;
use sluice_common::s3::{Settings, Target};
use sluice_inspect::policy::Policy;

use crate::s3_upload::Uploader;

/// Where refused files go.
#[derive(Debug)]
pub(crate) enum Quarantine {
    /// A local directory, opened at start.
    Dir {
        dir: Dir,
        /// As configured, for messages.
        path: PathBuf,
    },
    /// A prefix in an object store.
    Store(Uploader),
}

/// The policy and its quarantine, opened at start.
#[derive(Debug)]
pub(crate) struct ContentPolicy {
    pub policy: Policy,
    pub quarantine: Quarantine,
}

/// Where the receiver delivers, as far as the quarantine must keep out of it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Out<'a> {
    Dir(&'a Path),
    Store(&'a Target),
}

/// Whether one prefix of a bucket lies within the other, part by part.
fn nested(a: &Target, b: &Target) -> bool {
    let parts = |t: &Target| -> Vec<String> {
        t.prefix
            .split('/')
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()
    };
    let (pa, pb) = (parts(a), parts(b));
    a.bucket == b.bucket && (pa.starts_with(&pb) || pb.starts_with(&pa))
}

impl ContentPolicy {
    /// Loads `policy_path` and opens its quarantine: a directory (created mode 0700) or an
    /// `s3://` prefix (probed by the caller), which may not lie inside `out` or around it (a
    /// refused file would be published).
    pub fn open(policy_path: &Path, out: Out<'_>, s3: &Settings) -> Result<ContentPolicy, String> {
        let policy = Policy::load(policy_path)?;
        if let Some(target) = policy.quarantine.to_str().and_then(Target::parse) {
            let target = target?;
            if let Out::Store(out) = out {
                if nested(&target, out) {
                    return Err(format!(
                        "quarantine {} and --out {} must not contain each other",
                        target.url(),
                        out.url()
                    ));
                }
            }
            return Ok(ContentPolicy {
                policy,
                quarantine: Quarantine::Store(Uploader::new(target, s3.clone())),
            });
        }
        let out = match out {
            Out::Dir(dir) => Some(dir),
            Out::Store(_) => None,
        };
        let quarantine_path = policy.quarantine.clone();
        let existed = quarantine_path.exists();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&quarantine_path)
            .map_err(|e| {
                format!(
                    "cannot create quarantine {}: {e}",
                    quarantine_path.display()
                )
            })?;
        let nested = match out {
            Some(out) => {
                let (q, o) = (
                    quarantine_path.canonicalize().map_err(|e| e.to_string())?,
                    out.canonicalize().map_err(|e| e.to_string())?,
                );
                (q.starts_with(&o) || o.starts_with(&q)).then_some(out)
            }
            None => None,
        };
        if let Some(out) = nested {
            if !existed {
                let _ = std::fs::remove_dir(&quarantine_path);
            }
            return Err(format!(
                "quarantine {} and --out {} must not contain each other",
                quarantine_path.display(),
                out.display()
            ));
        }
        let quarantine = Dir::open(&quarantine_path)
            .map_err(|e| format!("cannot open quarantine {}: {e}", quarantine_path.display()))?;
        Ok(ContentPolicy {
            policy,
            quarantine: Quarantine::Dir {
                dir: quarantine,
                path: quarantine_path,
            },
        })
    }

    /// The quarantine in an object store, if it is one.
    pub fn store(&self) -> Option<&Uploader> {
        match &self.quarantine {
            Quarantine::Store(uploader) => Some(uploader),
            Quarantine::Dir { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarantine_inside_out_or_around_it_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let policy = dir.path().join("policy.toml");
        for (quarantine, ok) in [
            (out.join("q"), false),
            (dir.path().to_path_buf(), false),
            (dir.path().join("q"), true),
        ] {
            std::fs::write(
                &policy,
                format!("quarantine = {:?}\n", quarantine.display().to_string()),
            )
            .unwrap();
            let opened = ContentPolicy::open(&policy, Out::Dir(&out), &Settings::default());
            assert_eq!(opened.is_ok(), ok, "{}: {opened:?}", quarantine.display());
            if let Err(e) = opened {
                assert!(e.contains("must not contain each other"), "{e}");
            }
        }
        assert!(
            !out.join("q").exists(),
            "a refused quarantine is not left in --out"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("q"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_quarantine_in_the_store_stays_out_of_the_delivered_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("policy.toml");
        let out = Target::parse("s3://data/in").unwrap().unwrap();
        for (quarantine, ok) in [
            ("s3://data/in/q", false),
            ("s3://data", false),
            ("s3://data/inbox", true),
            ("s3://data/q", true),
            ("s3://other/in", true),
        ] {
            std::fs::write(&policy, format!("quarantine = {quarantine:?}\n")).unwrap();
            let opened = ContentPolicy::open(&policy, Out::Store(&out), &Settings::default());
            assert_eq!(opened.is_ok(), ok, "{quarantine}: {opened:?}");
            if let Ok(opened) = opened {
                assert!(opened.store().is_some());
            }
        }
        // A directory sink with a quarantine in a store: nothing to contain.
        std::fs::write(&policy, "quarantine = \"s3://data/in\"\n").unwrap();
        assert!(ContentPolicy::open(&policy, Out::Dir(dir.path()), &Settings::default()).is_ok());
    }
}
