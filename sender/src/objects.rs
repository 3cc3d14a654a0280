//! What gets sent: the command line's paths expanded into objects, one per file, directory
//! (empty or not, the top one included) and stdin stream.
//!
//! Directories come before their contents so the receiver can create them first; object paths
//! are `/`-separated and relative, named as `cp -r` would place them (`x/dir` arrives as `dir`).
//! Symlinks, devices, sockets and FIFOs are skipped with a warning: a diode moves data, not
//! links that would point somewhere else on the other side.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sluice_common::paths::validate_object_path;
use sluice_protocol::manifest::EntryKind;

/// Where an object's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A regular file.
    File(PathBuf),
    /// A directory (no content).
    Directory,
    /// Standard input.
    Stdin,
}

/// One object to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceObject {
    /// Path under the receiver's `--out`.
    pub path: String,
    pub source: Source,
    /// Size in bytes when known up front (files); stdin is measured while reading.
    pub size: Option<u64>,
    pub mode: u32,
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
}

impl SourceObject {
    pub fn kind(&self) -> EntryKind {
        match self.source {
            Source::Directory => EntryKind::Directory,
            _ => EntryKind::File,
        }
    }
}

/// Something on the command line that will not be sent, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
    /// A refusal (an error the operator must see) rather than a documented skip.
    pub refused: bool,
}

/// Expands `paths` into objects in send order, plus what was skipped or refused.
pub fn enumerate(paths: &[PathBuf], stdin_name: Option<&str>) -> (Vec<SourceObject>, Vec<Skipped>) {
    let mut objects = Vec::new();
    let mut skipped = Vec::new();
    for arg in paths {
        if arg.as_os_str() == "-" {
            let name = stdin_name.unwrap_or("stdin").to_string();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            objects.push(SourceObject {
                path: name,
                source: Source::Stdin,
                size: None,
                mode: 0o644,
                mtime_secs: i64::try_from(now.as_secs()).unwrap_or(0),
                mtime_nanos: now.subsec_nanos(),
            });
            continue;
        }
        let base = match base_name(arg) {
            Some(b) => b,
            None => {
                skipped.push(Skipped {
                    path: arg.clone(),
                    reason: "has no file name to send it under".into(),
                    refused: true,
                });
                continue;
            }
        };
        for entry in walkdir::WalkDir::new(arg)
            .follow_links(false)
            .sort_by_file_name()
        {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    skipped.push(Skipped {
                        path: e
                            .path()
                            .map(Path::to_path_buf)
                            .unwrap_or_else(|| arg.clone()),
                        reason: format!("cannot read: {e}"),
                        refused: true,
                    });
                    continue;
                }
            };
            let rel = entry.path().strip_prefix(arg).unwrap_or(entry.path());
            let mut object_path = base.clone();
            for part in rel.components() {
                object_path.push('/');
                object_path.push_str(&part.as_os_str().to_string_lossy());
            }
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) => {
                    skipped.push(Skipped {
                        path: entry.path().to_path_buf(),
                        reason: format!("cannot stat: {e}"),
                        refused: true,
                    });
                    continue;
                }
            };
            let file_type = entry.file_type();
            let source = if file_type.is_dir() {
                Source::Directory
            } else if file_type.is_file() {
                Source::File(entry.path().to_path_buf())
            } else {
                let what = if file_type.is_symlink() {
                    "a symlink"
                } else {
                    "not a regular file or directory"
                };
                skipped.push(Skipped {
                    path: entry.path().to_path_buf(),
                    reason: format!("skipped: {what}"),
                    refused: false,
                });
                continue;
            };
            if entry.path().to_str().is_none() {
                skipped.push(Skipped {
                    path: entry.path().to_path_buf(),
                    reason: "refused: name is not valid UTF-8".into(),
                    refused: true,
                });
                continue;
            }
            if let Err(e) = validate_object_path(&object_path) {
                skipped.push(Skipped {
                    path: entry.path().to_path_buf(),
                    reason: format!("refused: the receiver would refuse this name ({e})"),
                    refused: true,
                });
                continue;
            }
            objects.push(SourceObject {
                path: object_path,
                size: matches!(source, Source::File(_)).then(|| meta.len()),
                source,
                mode: meta.mode() & 0o7777,
                mtime_secs: meta.mtime(),
                mtime_nanos: u32::try_from(meta.mtime_nsec()).unwrap_or(0),
            });
        }
    }
    (objects, skipped)
}

/// The name an argument arrives under: its last component (`x/dir/` → `dir`).
fn base_name(arg: &Path) -> Option<String> {
    let name = arg.file_name()?.to_str()?;
    Some(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trees_expand_directories_first_with_cp_r_names() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        std::fs::create_dir_all(root.join("sub/empty")).unwrap();
        std::fs::write(root.join("sub/a.txt"), b"abc").unwrap();
        std::fs::write(root.join("z empty"), b"").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        std::fs::write(root.join("bad\nname"), b"x").unwrap();
        let single = tmp.path().join("one.bin");
        std::fs::write(&single, b"1").unwrap();

        let (objects, skipped) = enumerate(&[root.clone(), single], None);
        let paths: Vec<&str> = objects.iter().map(|o| o.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "data",
                "data/sub",
                "data/sub/a.txt",
                "data/sub/empty",
                "data/z empty",
                "one.bin"
            ]
        );
        assert_eq!(objects[0].kind(), EntryKind::Directory);
        assert_eq!(objects[2].size, Some(3));
        assert_eq!(objects[4].size, Some(0));
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped
            .iter()
            .any(|s| !s.refused && s.reason.contains("symlink")));
        assert!(skipped
            .iter()
            .any(|s| s.refused && s.reason.contains("control")));
    }

    #[test]
    fn stdin_gets_its_name() {
        let (objects, skipped) = enumerate(&[PathBuf::from("-")], Some("streams/log.txt"));
        assert!(skipped.is_empty());
        assert_eq!(objects[0].path, "streams/log.txt");
        assert_eq!(objects[0].source, Source::Stdin);
    }
}
