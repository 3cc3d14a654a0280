//! Which object a block, a record or an outcome is about: [`ObjectKey`], the one name every
//! part of the receiver uses for an object (the state directory names its files by it, the
//! records their done markers, the delivery core its table). Its own module so that none of
//! them has to import another for it.

use sluice_protocol::wire::{BlockKey, ObjectId, SessionId};

/// Names one object of one sender run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Sender run.
    pub session: SessionId,
    /// Object within the run.
    pub object: ObjectId,
}

impl ObjectKey {
    /// Object `object` of sender run `session`.
    pub fn new(session: SessionId, object: ObjectId) -> Self {
        ObjectKey { session, object }
    }

    /// The object a block belongs to.
    pub fn of(block: &BlockKey) -> Self {
        ObjectKey {
            session: block.session,
            object: block.object,
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}/{}", self.session.0, self.object.0)
    }
}
