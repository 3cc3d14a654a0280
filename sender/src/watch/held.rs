//! Private copies of a checked item's files. With `--approval-policy` or `--policy`, each file
//! is read once from the outbox — copied into an unnamed file of the daemon's own
//! (`O_TMPFILE` in `--state`) while it is hashed — and the checks and the encoder read the copy.
//! A writer who rewrites a file in place after it was read (same inode, same size, the mtime
//! put back) changes nothing that is sent.

use std::path::Path;

use sluice_common::service::Stage;

use crate::approve::Digests;
use crate::objects::{HeldCopy, Source, SourceObject};

/// The files of `objects` (path → size and SHA-256 hex, as copied), each object now reading
/// its copy in `dir`. A file is read up to the size it was listed with, and one byte more to
/// see it grew (refused: a writer appending without end cannot hold the daemon).
pub fn hold(
    objects: Vec<SourceObject>,
    dir: &Path,
    stage: Option<&Stage>,
) -> Result<(Vec<SourceObject>, Digests), String> {
    let mut held = Vec::with_capacity(objects.len());
    let mut files = Digests::new();
    for mut object in objects {
        let listed = object.size.unwrap_or(0);
        let Some(opened) = object.source.open() else {
            held.push(object);
            continue;
        };
        let shown = object.source.shown();
        let cannot = |e: std::io::Error| format!("cannot read {shown}: {e}");
        let (mut reader, _) = opened.map_err(cannot)?;
        let mut copy = tempfile::tempfile_in(dir)
            .map_err(|e| format!("cannot make a private copy in {}: {e}", dir.display()))?;
        let (size, sha256) =
            sluice_common::hashed_copy::copy_hashing(&mut reader, &mut copy, listed, stage)
                .map_err(cannot)?;
        if size > listed {
            return Err(format!("{shown} grew while it was being checked"));
        }
        files.insert(object.path.clone(), (size, sha256));
        object.size = Some(size);
        object.source = Source::Held(HeldCopy::new(copy, size, shown.into()));
        held.push(object);
    }
    Ok((held, files))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::outbox::Listing;
    use sluice_common::beneath::Dir;
    use std::io::{Read, Write};
    use std::sync::Arc;

    /// The review's finding: the checks read a file, then the encoder opened it again; a
    /// writer who rewrote it in place in between (same inode, same size) had other bytes
    /// sent than those checked. What is sent is now the copy the checks read.
    #[test]
    fn a_file_rewritten_in_place_after_it_was_held_changes_nothing_sent() {
        let tmp = tempfile::tempdir().unwrap();
        let outbox = tmp.path().join("outbox");
        std::fs::create_dir_all(outbox.join("item")).unwrap();
        std::fs::write(outbox.join("item/a.txt"), b"approved").unwrap();
        let dir = Arc::new(Dir::open(&outbox).unwrap());
        let listing = Listing::of(&dir, "item", &outbox);
        let (held, files) = hold(listing.objects, tmp.path(), None).unwrap();
        assert_eq!(files["item/a.txt"].0, 8);
        // Rewritten in place: same inode, same size.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(outbox.join("item/a.txt"))
            .unwrap();
        file.write_all(b"SECRETS!").unwrap();
        drop(file);
        let a = held.iter().find(|o| o.path == "item/a.txt").unwrap();
        let read = |object: &SourceObject| {
            let (mut reader, size) = object.source.open().unwrap().unwrap();
            let mut bytes = Vec::new();
            reader.read_to_end(&mut bytes).unwrap();
            (bytes, size)
        };
        assert_eq!(read(a), (b"approved".to_vec(), 8));
        // Twice, and through a reopened copy, the same bytes (every reader has its offset).
        assert_eq!(read(a).0, b"approved");
        let Source::Held(copy) = &a.source else {
            panic!("not held: {:?}", a.source)
        };
        let mut again = Vec::new();
        copy.reopen().unwrap().read_to_end(&mut again).unwrap();
        assert_eq!(again, b"approved");
        // No name in the state directory: the copies are unnamed.
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_file_that_grew_past_its_listed_size_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let outbox = tmp.path().join("outbox");
        std::fs::create_dir_all(&outbox).unwrap();
        std::fs::write(outbox.join("f"), b"short").unwrap();
        let dir = Arc::new(Dir::open(&outbox).unwrap());
        let listing = Listing::of(&dir, "f", &outbox);
        std::fs::OpenOptions::new()
            .append(true)
            .open(outbox.join("f"))
            .unwrap()
            .write_all(b" and then some")
            .unwrap();
        let err = hold(listing.objects, tmp.path(), None).unwrap_err();
        assert!(err.contains("grew while it was being checked"), "{err}");
    }
}
