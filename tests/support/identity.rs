//! Values and causes with an identity, shared by the integration tests
//! (`support::identity`) and the fuzz targets (which include this file by
//! path, `fuzz/src/lib.rs`; `cargo package` leaves `fuzz/` out, so the
//! shared file lives here):
//!
//! * [`Tracked`] counts its live instances in a counter of the caller's, so
//!   a leaked context, callback or cause shows as a count that never
//!   returns to zero (a counter per run or per kind, not one global: tests
//!   run in parallel).
//! * [`Tag`] is a cause with an id; [`CauseId`] names any cause a test
//!   hands out, comparable across reads.
#![allow(dead_code, unreachable_pub)]

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use goctx::{Cause, Error};

/// A value counted in `live` while it exists.
#[derive(Debug)]
pub struct Tracked {
    pub id: u32,
    live: Arc<AtomicUsize>,
}

impl Tracked {
    pub fn new(id: u32, live: &Arc<AtomicUsize>) -> Tracked {
        live.fetch_add(1, Ordering::SeqCst);
        Tracked {
            id,
            live: Arc::clone(live),
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A cause with an identity: the `id`th cause a run handed out, optionally
/// counted while it lives.
#[derive(Debug)]
pub struct Tag {
    pub id: u64,
    pub tracked: Option<Tracked>,
}

impl Tag {
    pub fn new(id: u64) -> Tag {
        Tag { id, tracked: None }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cause #{}", self.id)
    }
}

impl std::error::Error for Tag {}

/// The identity of a cause.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CauseId {
    /// `Error::Canceled` itself.
    Canceled,
    /// `Error::DeadlineExceeded` itself.
    DeadlineExceeded,
    /// A [`Tag`].
    Tag(u64),
}

impl CauseId {
    /// The identity of a real cause; panics on a cause no test hands out.
    pub fn of(cause: &Cause) -> CauseId {
        if let Some(tag) = cause.downcast_ref::<Tag>() {
            CauseId::Tag(tag.id)
        } else {
            match cause.downcast_ref::<Error>() {
                Some(Error::Canceled) => CauseId::Canceled,
                Some(Error::DeadlineExceeded) => CauseId::DeadlineExceeded,
                None => panic!("a cause no test gave: {cause:?}"),
            }
        }
    }

    /// A real cause with this identity (an untracked `Tag` for `Tag`).
    pub fn cause(self) -> Cause {
        match self {
            CauseId::Canceled => Error::Canceled.into(),
            CauseId::DeadlineExceeded => Error::DeadlineExceeded.into(),
            CauseId::Tag(id) => Cause::new(Tag::new(id)),
        }
    }
}
