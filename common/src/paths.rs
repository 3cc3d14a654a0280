//! Path safety: which object paths may cross the link, and where they may land.
//!
//! An object path comes from a signed manifest, but a trusted sender can still be mistaken or
//! compromised, so the receiver treats it as hostile: it must be relative, made of ordinary
//! components, free of control characters and of characters that make a name look like
//! another (bidirectional overrides, zero-width and separator characters), and must not reach
//! outside `--out` through `..` or an existing symlink. The sender applies the same rule so it
//! never sends what would be refused. Names shown in logs go through [`escaped`].

use std::io;
use std::path::{Path, PathBuf};

/// The receiver's state directory name under `--out`; no object may be named after it.
pub const RESERVED_STATE_DIR: &str = ".sluice-state";
/// Longest object path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest single path component accepted, in bytes (the common file-system limit).
pub const MAX_COMPONENT_BYTES: usize = 255;

/// Why an object path is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("path is {0} bytes, longer than {MAX_PATH_BYTES}")]
    TooLong(usize),
    #[error("absolute path")]
    Absolute,
    #[error("path component {0:?} is not allowed (empty, '.' or '..')")]
    BadComponent(String),
    #[error("path component is {0} bytes, longer than {MAX_COMPONENT_BYTES}")]
    ComponentTooLong(usize),
    #[error("path contains a NUL or control character")]
    ControlCharacter,
    #[error(
        "path contains U+{0:04X}, an invisible, bidirectional-override or separator character \
         that makes a name look like another"
    )]
    Deceptive(u32),
    #[error("{0:?} differs from an existing entry {1:?} only by Unicode normalization")]
    NormalizationTwin(String, String),
    #[error("path contains a backslash (ambiguous between systems)")]
    Backslash,
    #[error("path is inside the reserved state directory {RESERVED_STATE_DIR}")]
    Reserved,
    #[error("{0} is a symlink; refusing to follow it out of the output directory")]
    Symlink(PathBuf),
    #[error("{0} exists and is not a directory")]
    NotADirectory(PathBuf),
    #[error("{0} exists and is a directory; refusing to replace it with a file")]
    IsADirectory(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Checks an object path received from (or about to be sent over) the link.
pub fn validate_object_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong(path.len()));
    }
    if path.chars().any(char::is_control) {
        return Err(PathError::ControlCharacter);
    }
    if let Some(c) = path.chars().find(|c| is_deceptive(*c)) {
        return Err(PathError::Deceptive(u32::from(c)));
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    for (i, component) in path.split('/').enumerate() {
        if component.is_empty() || component == "." || component == ".." {
            return Err(PathError::BadComponent(component.to_string()));
        }
        if component.len() > MAX_COMPONENT_BYTES {
            return Err(PathError::ComponentTooLong(component.len()));
        }
        // Case-insensitively: --out may be on a file system that folds case.
        if i == 0 && component.eq_ignore_ascii_case(RESERVED_STATE_DIR) {
            return Err(PathError::Reserved);
        }
    }
    Ok(())
}

/// Characters that make a name display as something it is not: bidirectional controls and
/// overrides (`U+202E` turns `exe.txt` around), zero-width and other invisible characters,
/// line and paragraph separators, and every space but the ASCII one.
pub fn is_deceptive(c: char) -> bool {
    matches!(
        c,
        '\u{00A0}' | '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}'
            | '\u{1680}' | '\u{17B4}' | '\u{17B5}' | '\u{180B}'..='\u{180E}'
            | '\u{2000}'..='\u{200F}' | '\u{2028}'..='\u{202F}' | '\u{205F}'..='\u{206F}'
            | '\u{3000}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// `name` for a log line or a message: control and deceptive characters (which a refused
/// name may hold) are shown as `\u{…}` escapes, never written raw to a terminal or a log.
pub fn escaped(name: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_control() || is_deceptive(c) || c == '\\' {
            let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// The other spellings of `name` under Unicode normalization (its NFC and NFD forms, where
/// they differ from it): an existing entry under one of them is a twin that looks the same.
pub fn normalization_twins(name: &str) -> Vec<String> {
    use unicode_normalization::UnicodeNormalization;
    let mut twins: Vec<String> = Vec::new();
    for form in [
        name.nfc().collect::<String>(),
        name.nfd().collect::<String>(),
    ] {
        if form != name && !twins.contains(&form) {
            twins.push(form);
        }
    }
    twins
}

/// What is about to be placed at a resolved path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    File,
    Directory,
}

/// Maps a validated object path to its place under `root`, creating missing parent directories
/// (mode 0755) when `create_parents` is set.
///
/// Refuses if any existing parent is a symlink or not a directory, if the final entry is a
/// symlink, or if a file would replace a directory (or a directory a file). The caller renames
/// into the returned path; it never follows a link planted in `root`.
pub fn resolve_under(
    root: &Path,
    path: &str,
    target: Target,
    create_parents: bool,
) -> Result<PathBuf, PathError> {
    validate_object_path(path)?;
    let components: Vec<&str> = path.split('/').collect();
    let mut current = root.to_path_buf();
    let (last, parents) = components.split_last().ok_or(PathError::Empty)?;
    for component in parents {
        current.push(component);
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => return Err(PathError::Symlink(current)),
            Ok(meta) if !meta.is_dir() => return Err(PathError::NotADirectory(current)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && create_parents => {
                if let Err(source) = std::fs::create_dir(&current) {
                    if source.kind() != io::ErrorKind::AlreadyExists {
                        return Err(PathError::Io {
                            path: current,
                            source,
                        });
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(PathError::Io {
                    path: current,
                    source,
                })
            }
        }
    }
    current.push(last);
    match std::fs::symlink_metadata(&current) {
        Ok(meta) if meta.file_type().is_symlink() => Err(PathError::Symlink(current)),
        Ok(meta) if meta.is_dir() && target == Target::File => {
            Err(PathError::IsADirectory(current))
        }
        Ok(meta) if !meta.is_dir() && target == Target::Directory => {
            Err(PathError::NotADirectory(current))
        }
        Ok(_) => Ok(current),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(current),
        Err(source) => Err(PathError::Io {
            path: current,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_paths_pass() {
        for ok in [
            "a",
            "dir/sub/file.txt",
            "ünïcode dir/with space",
            ".hidden/x",
            "a..b",
        ] {
            assert!(validate_object_path(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn hostile_paths_are_refused() {
        let long_component = "x".repeat(256);
        let long_path = vec!["d"; 2100].join("/");
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("../x", "'..'"),
            ("a/../../x", "'..'"),
            ("a//b", "empty"),
            ("./a", "'.'"),
            ("a/", "empty"),
            ("a\0b", "control"),
            ("a\nb", "control"),
            ("a\u{1b}[31m", "control"),
            (&long_component, "longer than 255"),
            (&long_path, "longer than 4096"),
            (".sluice-state/x", "reserved"),
            (".SLUICE-STATE/x", "reserved"),
            ("report\u{202E}txt.exe", "U+202E"),
            ("zero\u{200B}width", "U+200B"),
            ("line\u{2028}sep", "U+2028"),
            ("no\u{00A0}break", "U+00A0"),
            ("bom\u{FEFF}", "U+FEFF"),
            ("a\\..\\b", "backslash"),
        ];
        for (path, reason) in cases {
            let err = validate_object_path(path).unwrap_err().to_string();
            assert!(err.contains(reason), "{path:?}: {err}");
        }
    }

    #[test]
    fn names_are_escaped_for_logs_and_twins_found() {
        assert_eq!(escaped("a\u{202E}b\nc"), "a\\u{202e}b\\u{000a}c");
        assert_eq!(escaped("plain/ünïcode name"), "plain/ünïcode name");
        let nfd = "cafe\u{301}";
        assert_eq!(normalization_twins(nfd), ["caf\u{e9}"]);
        assert_eq!(normalization_twins("caf\u{e9}"), [nfd]);
        assert!(normalization_twins("plain").is_empty());
        assert!(
            validate_object_path(nfd).is_ok(),
            "either form alone is fine"
        );
    }

    #[test]
    fn symlinks_and_clashes_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        std::fs::write(root.path().join("file"), b"x").unwrap();
        std::fs::create_dir(root.path().join("dir")).unwrap();

        let err = resolve_under(root.path(), "link/x", Target::File, true).unwrap_err();
        assert!(matches!(err, PathError::Symlink(_)), "{err}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        let err = resolve_under(root.path(), "link", Target::File, true).unwrap_err();
        assert!(matches!(err, PathError::Symlink(_)), "{err}");
        let err = resolve_under(root.path(), "file/x", Target::File, true).unwrap_err();
        assert!(matches!(err, PathError::NotADirectory(_)), "{err}");
        let err = resolve_under(root.path(), "dir", Target::File, true).unwrap_err();
        assert!(matches!(err, PathError::IsADirectory(_)), "{err}");
        let err = resolve_under(root.path(), "file", Target::Directory, true).unwrap_err();
        assert!(matches!(err, PathError::NotADirectory(_)), "{err}");

        let placed = resolve_under(root.path(), "new/deeper/f", Target::File, true).unwrap();
        assert_eq!(placed, root.path().join("new/deeper/f"));
        assert!(root.path().join("new/deeper").is_dir());
        assert_eq!(
            resolve_under(root.path(), "dir", Target::Directory, false).unwrap(),
            root.path().join("dir")
        );
    }
}
