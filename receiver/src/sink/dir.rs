//! `--out DIR`: files renamed from the private staging directory into place, every path walked
//! from the `--out` fd without following a link (`publish`); the directories published into are
//! fsynced once per commit, and the mode and mtime of directories this receiver made are
//! applied again after their contents changed.

use std::collections::{BTreeSet, HashMap};

use sluice_common::beneath::Dir;
use sluice_protocol::manifest::Entry;

use super::{Placed, Sink};
use crate::context::Context;
use crate::failure::Failure;
use crate::publish::{self, DirCache, Published, Signed, StagedFile};

/// The directory sink's state between commits.
#[derive(Debug, Default)]
pub(crate) struct DirSink {
    /// Directories this receiver made and delivered (looked up once).
    dirs: DirCache,
    /// Directories published into since the last commit, by device and inode (each synced
    /// once).
    dirty: HashMap<(u64, u64), Dir>,
    /// Entry paths placed since the last commit: their ancestors' metadata is applied again.
    touched: BTreeSet<String>,
}

impl DirSink {
    fn placed(&mut self, e: &Entry, published: Published) -> Placed {
        if let Ok(entry) = published.dir.stat_self() {
            self.dirty
                .entry((entry.device, entry.inode))
                .or_insert(published.dir);
        }
        self.touched.insert(e.path.clone());
        Placed {
            bytes: published.bytes,
            delivery: published.delivery,
            created_dirs: published.created_dirs,
        }
    }
}

impl Sink for DirSink {
    fn precheck(&self, ctx: &Context, e: &Entry) -> Result<(), Failure> {
        publish::precheck(ctx, e)
    }

    fn already_there(&self, ctx: &Context, e: &Entry) -> bool {
        publish::already_delivered(ctx, e)
    }

    fn place(
        &mut self,
        ctx: &Context,
        staged: StagedFile,
        e: &Entry,
        signed: &Signed,
    ) -> Result<Placed, Failure> {
        let published = publish::place(ctx, staged, e, signed, &mut self.dirs)?;
        Ok(self.placed(e, published))
    }

    fn place_dir(&mut self, ctx: &Context, e: &Entry, signed: &Signed) -> Result<Placed, Failure> {
        let published = publish::publish_dir(ctx, e, signed, &mut self.dirs)?;
        Ok(self.placed(e, published))
    }

    fn commit(&mut self, ctx: &Context) {
        publish::reapply_ancestors(ctx, std::mem::take(&mut self.touched), &mut self.dirs);
        for (_, dir) in std::mem::take(&mut self.dirty) {
            if let Err(e) = dir.sync() {
                tracing::warn!("cannot fsync a published-into directory: {e}");
            }
        }
    }

    fn finish(&mut self, ctx: &Context) {
        publish::reapply_all(ctx, &mut self.dirs);
    }
}
