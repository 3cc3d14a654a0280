//! `--policy` as opened at start: the content policy and the quarantine directory that files
//! it refuses go to. The run's [`Context`](crate::context::Context) holds it; `gate` applies
//! it to each staged file. Apart from `gate` because that module needs the context, and this
//! is part of it.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use sluice_common::beneath::Dir;
use sluice_inspect::policy::Policy;

/// The policy and the quarantine directory, opened at start.
#[derive(Debug)]
pub(crate) struct ContentPolicy {
    pub policy: Policy,
    pub quarantine: Dir,
    /// The quarantine directory as configured, for messages.
    pub quarantine_path: PathBuf,
}

impl ContentPolicy {
    /// Loads `policy_path` and opens (creating, mode 0700) its quarantine directory, which may
    /// not lie inside `out` (a refused file would be published there).
    /// `out` is `None` when the receiver delivers to an object store (nothing to contain).
    pub fn open(policy_path: &Path, out: Option<&Path>) -> Result<ContentPolicy, String> {
        let policy = Policy::load(policy_path)?;
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
            quarantine,
            quarantine_path,
        })
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
            let opened = ContentPolicy::open(&policy, Some(&out));
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
}
