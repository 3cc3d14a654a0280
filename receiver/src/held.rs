//! Where files wait for their model's signature (`staging/held/` in the state directory, so
//! a file goes in and out by a rename): each as `<id>`, with `<id>.meta` beside it, the JSON
//! of what placing it needs later (its manifest entry, who signed the manifest). Both are
//! durable before the object that brought the file is recorded done, and read back at start:
//! a file waits across restarts. `models` decides; this only keeps the bytes.

use std::collections::HashSet;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use sluice_protocol::manifest::Entry;
use sluice_protocol::wire::{ObjectId, SessionId};

use crate::context::Context;
use crate::models::Held;
use crate::object::ObjectKey;
use crate::publish::{Signed, StagedFile};

/// What a held file needs to be placed later.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HeldMeta {
    pub session: u64,
    pub object: u64,
    pub entry: Entry,
    /// The key that signed the manifest, its sequence, and the approvers it counted.
    pub signer: u64,
    pub sequence: u64,
    pub approvers: Vec<u64>,
    /// When it began to wait (seconds since the Unix epoch).
    pub since: u64,
}

impl HeldMeta {
    pub fn obj(&self) -> ObjectKey {
        ObjectKey::new(SessionId(self.session), ObjectId(self.object))
    }

    pub fn signed(&self) -> Signed {
        Signed {
            signer: self.signer,
            sequence: self.sequence,
            approvers: self
                .approvers
                .iter()
                .map(|k| sluice_common::keys::KeyId(*k))
                .collect(),
            // Its type was checked when it began to wait.
            content: std::sync::Arc::default(),
        }
    }

    pub fn held(&self) -> Held {
        Held {
            path: self.entry.path.clone(),
            sha256: self.entry.sha256,
            size: self.entry.size,
            since: self.since,
        }
    }
}

fn meta_name(id: u64) -> String {
    format!("{id}.meta")
}

/// The held files an earlier run left, by id; a file without its metadata (a crash between
/// the two renames) or metadata without its file (placed, not yet forgotten) is removed.
pub(crate) fn scan(ctx: &Context) -> io::Result<Vec<(u64, HeldMeta)>> {
    let dir = ctx.state.held();
    let names: HashSet<String> = dir.names()?.into_iter().collect();
    let mut found = Vec::new();
    for name in &names {
        let Some(id) = name
            .strip_suffix(".meta")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let meta = names
            .contains(&id.to_string())
            .then(|| read_meta(ctx, id))
            .and_then(Result::ok);
        match meta {
            Some(meta) => found.push((id, meta)),
            None => dir.remove_file(name)?,
        }
    }
    let kept: HashSet<u64> = found.iter().map(|(id, _)| *id).collect();
    for name in &names {
        let orphan = name.parse::<u64>().is_ok_and(|id| !kept.contains(&id));
        if orphan || name.ends_with(".tmp") {
            dir.remove_file(name)?;
        }
    }
    found.sort_by_key(|(id, _)| *id);
    Ok(found)
}

/// An id no file in `held/` has (one past the largest), even where [`scan`] failed.
pub(crate) fn next_id(ctx: &Context) -> io::Result<u64> {
    Ok(ctx
        .state
        .held()
        .names()?
        .iter()
        .filter_map(|n| n.split('.').next()?.parse::<u64>().ok())
        .max()
        .map_or(0, |id| id.saturating_add(1)))
}

fn read_meta(ctx: &Context, id: u64) -> io::Result<HeldMeta> {
    let mut text = String::new();
    ctx.state
        .held()
        .open_file(&meta_name(id))?
        .take(1 << 20)
        .read_to_string(&mut text)?;
    serde_json::from_str(&text).map_err(io::Error::other)
}

/// Moves a staged (verified, gated) file into the hold as `id`, durably.
pub(crate) fn hold(ctx: &Context, staged: StagedFile, id: u64, meta: &HeldMeta) -> io::Result<()> {
    let dir = ctx.state.held();
    let tmp = format!("{id}.meta.tmp");
    let written = (|| {
        let mut file = dir.create_file(&tmp, 0o600)?;
        file.write_all(&serde_json::to_vec(meta).map_err(io::Error::other)?)?;
        file.sync_all()?;
        staged.file().sync_all()?;
        ctx.state
            .staging()
            .rename(staged.name(), dir, &id.to_string())?;
        dir.rename(&tmp, dir, &meta_name(id))?;
        dir.sync()
    })();
    if written.is_err() {
        let _ = dir.remove_file(&tmp);
        staged.discard(ctx);
    }
    written
}

/// The held file `id`'s bytes, up to `max` (a signature bundle).
pub(crate) fn read(ctx: &Context, id: u64, max: usize) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    ctx.state
        .held()
        .open_file(&id.to_string())?
        .take(max as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The held file `id`, to be placed or quarantined straight from `held/`; its metadata
/// stays until [`forget`] (after the commit that records the outcome), so a crash before
/// then finds the file again, or its metadata alone (then dropped: the file was placed).
pub(crate) fn take(ctx: &Context, id: u64) -> io::Result<(StagedFile, HeldMeta)> {
    let meta = read_meta(ctx, id)?;
    let name = id.to_string();
    let file = ctx.state.held().open_file(&name)?;
    Ok((StagedFile::held(name, file), meta))
}

/// Drops what is left of held file `id`.
pub(crate) fn forget(ctx: &Context, id: u64) {
    let dir = ctx.state.held();
    for name in [id.to_string(), meta_name(id)] {
        if let Err(e) = dir.remove_file(&name) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!("cannot remove held file {name}: {e}");
            }
        }
    }
}
