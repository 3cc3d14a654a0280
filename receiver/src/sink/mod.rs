//! Where verified files go. The delivery core decides whether an entry is to be placed (its
//! approval, freshness, whether it is already there by the receiver's records); the gate
//! passes it; a [`Sink`] only places the verified bytes of the staged file and says what to
//! record. One sink per run, owned by the publisher thread.
//!
//! - [`dir`]: `--out DIR`, a directory reached only through fds (rename into place, fsync the
//!   directories published into at each commit).
//! - [`s3`]: `--out s3://BUCKET/PREFIX`, an S3-compatible object store (each object uploaded
//!   whole or not at all).
//!
//! A new sink is one file here implementing [`Sink`], and one line in [`open`].

pub(crate) mod dir;
pub(crate) mod s3;

use std::sync::Arc;

use sluice_protocol::manifest::Entry;

use crate::context::Context;
use crate::counters::Counters;
use crate::failure::Failure;
use crate::publish::{Signed, StagedFile};
use crate::records::Delivery;

/// What a sink did with one entry: the bytes it placed and the records to keep.
#[derive(Debug)]
pub(crate) struct Placed {
    /// Plaintext bytes placed.
    pub bytes: u64,
    /// The record of this delivery.
    pub delivery: Delivery,
    /// Directories the sink created on the way, recorded as this receiver's.
    pub created_dirs: Vec<(String, Delivery)>,
}

/// A destination for verified entries.
pub(crate) trait Sink: Send + std::fmt::Debug {
    /// Called once on the publisher's thread before the first job (the S3 sink aborts the
    /// uploads an earlier run left unfinished).
    fn start(&mut self, _ctx: &Context) {}

    /// Refuses early what could never be placed at `e.path` (before any content is hashed).
    fn precheck(&self, ctx: &Context, e: &Entry) -> Result<(), Failure>;

    /// Whether `e`'s content is already there as this receiver delivered it, decided from its
    /// records (never by reading what the link names).
    fn already_there(&self, ctx: &Context, e: &Entry) -> bool;

    /// Places a verified, gated file at `e.path` (consuming the staged file either way).
    fn place(
        &mut self,
        ctx: &Context,
        staged: StagedFile,
        e: &Entry,
        signed: &Signed,
    ) -> Result<Placed, Failure>;

    /// Places a directory entry.
    fn place_dir(&mut self, ctx: &Context, e: &Entry, signed: &Signed) -> Result<Placed, Failure>;

    /// Makes what was placed since the last commit durable: called before its records are
    /// written, so a delivery is recorded only once it would survive a crash.
    fn commit(&mut self, ctx: &Context);

    /// The run is over: last touches (the dir sink applies directories' metadata again).
    fn finish(&mut self, ctx: &Context);
}

/// The sink for this run's `--out`: an object store when it is an `s3://` URL.
pub(crate) fn open(store: Option<s3::Store>, counters: Arc<Counters>) -> Box<dyn Sink> {
    match store {
        Some(store) => Box::new(s3::S3Sink::new(store, counters)),
        None => Box::new(dir::DirSink::default()),
    }
}
