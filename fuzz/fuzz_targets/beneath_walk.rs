//! The receiver's file-system layer (`sluice_common::beneath`) under a local user who plants
//! symlinks, files and swapped directories between its operations: the walks that create
//! directories and files for objects.
//!
//! Invariant: nothing is ever created outside the root, whatever was planted, and no walk
//! panics.
#![no_main]

use std::path::Path;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sluice_common::beneath::Dir;

#[derive(Debug, Arbitrary)]
enum Step {
    Publish(Vec<u8>),
    PlantLink(Vec<u8>),
    PlantFile(Vec<u8>),
    SwapDirForLink(Vec<u8>),
}

fn names(parts: &[u8]) -> Vec<String> {
    parts.iter().take(6).map(|b| format!("n{}", b % 4)).collect()
}

fuzz_target!(|steps: Vec<Step>| {
    let (Ok(root), Ok(outside)) = (tempfile::tempdir(), tempfile::tempdir()) else {
        return;
    };
    let Ok(dir) = Dir::open(root.path()) else {
        return;
    };
    let at = |parts: &[u8], what: &dyn Fn(&Dir, &str)| {
        let names = names(parts);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        if let Some((last, parents)) = refs.split_last() {
            if let Ok((parent, _)) = dir.walk(parents, None, Path::new("plant")) {
                what(&parent, last);
            }
        }
    };
    for (i, step) in steps.iter().take(32).enumerate() {
        match step {
            Step::Publish(parts) => {
                let names = names(parts);
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                if let Some((last, parents)) = refs.split_last() {
                    if let Ok((parent, _)) = dir.walk(parents, Some(0o755), Path::new("obj")) {
                        let _ = parent.create_file(&format!("{last}-{i}"), 0o644);
                    }
                }
            }
            Step::PlantLink(parts) => at(parts, &|parent, name| {
                let _ = rustix::fs::symlinkat(outside.path(), parent, name);
            }),
            Step::PlantFile(parts) => at(parts, &|parent, name| {
                let _ = parent.create_file(name, 0o644);
            }),
            Step::SwapDirForLink(parts) => at(parts, &|parent, name| {
                if parent.rename(name, &dir, &format!("moved-{i}")).is_ok() {
                    let _ = rustix::fs::symlinkat(outside.path(), parent, name);
                }
            }),
        }
        let outside_entries = std::fs::read_dir(outside.path()).map_or(0, |d| d.count());
        assert_eq!(outside_entries, 0, "created outside the root: {steps:?}");
    }
});
