//! `merge`: a context with two parents (C#'s linked token source, Folly's
//! `CancellationToken::merge`, Go's `AfterFunc` merge example made native).
//!
//! A merged context is a cancellable child of `ctx` — derived, registered
//! and cancelled by `ctx` like any `with_cancel` child — whose allocation
//! (`cancel::Extended<Merge>`) also carries its link to `other`: a handle on
//! `other` (for `Display`, and to keep alive what the link points into) and
//! an `OnDone` registered on `other`'s cancellable node, which takes no
//! handle of its own (`OnDone::new_borrowed`: the one on `other` keeps that
//! node alive, and is dropped after it). So `other`'s
//! cancellation reaches the merged context synchronously, inside `other`'s
//! `cancel()` (or on the timer thread), as a waker is woken: the callback
//! cancels the merged node with `other`'s error and cause, and the merged
//! node propagates to its own subtree before the callback returns.
//!
//! # Invariants
//!
//! 1. The callback holds a reference on the merged node's *memory* (its
//!    `links`, as a list or the timer does), never a handle: a handle would
//!    keep the merged context alive as long as `other` lives. It cancels
//!    only under a handle taken by `try_acquire`, which fails once the
//!    merged node is released, and then touches nothing else.
//! 2. Releasing the merged node drops its `Merge` first (`Extended::retire`):
//!    dropping the `OnDone` withdraws the callback from `other`'s waiter set
//!    (or waits for it, if it is running: it then fails `try_acquire` and
//!    returns), so merges that churn under a long-lived `other` leave
//!    nothing behind but what the waiter set's cleanup passes unlink.
//! 3. The merged node borrows `other`'s cause box (`cancel_inherited`), as
//!    a child borrows its ancestor's: the `other` handle in `Merge` keeps
//!    the box's owner alive until the merged node is released, after every
//!    node that can inherit from it (its descendants hold handles on it).
//! 4. The callback never drops a last handle itself (it may run on the timer
//!    thread: timer invariant 6): a last handle goes to an after-func
//!    worker, as the timer's does.
//! 5. If `other` can never be done, nothing is registered (the `OnDone` is
//!    idle): the merge costs one allocation, as `with_cancel`; with a root
//!    (`background()`, `todo()`) it *is* `with_cancel`'s allocation, only
//!    marked for `Display` (`Merged::Background`/`Todo`). If `other` is done
//!    already, the callback runs before `merge` returns: the result is done.

use core::ptr::NonNull;

use crate::cancel::{CancelNode, Extended, Shape};
use crate::node::{Kind, Merged, Node, NodeRef, Repr};
use crate::on_done::OnDone;

/// What a merged node carries beside its `CancelNode`.
pub(crate) struct Merge {
    /// The registration on `other`'s cancellable node (invariant 2),
    /// without a handle of its own: `other` below keeps that node alive,
    /// and is dropped after it (fields drop in order).
    _link: OnDone,
    /// A handle on `other` (invariant 3, and `Display`).
    other: Repr,
}

static MERGED: Shape = Shape {
    alloc: Extended::<Merge>::alloc,
    kind: Kind::Cancel {
        retire: Extended::<Merge>::retire,
        free: Extended::<Merge>::free,
        merged: Merged::Node,
        timed: false,
    },
};

/// Merges with a root: nothing to carry, a plain allocation (invariant 5).
static WITH_BACKGROUND: Shape = Shape::plain(Merged::Background);
static WITH_TODO: Shape = Shape::plain(Merged::Todo);

/// Derives the merged child of `ctx` and `other`, with two handles.
pub(crate) fn derive(ctx: &Repr, other: &Repr) -> NonNull<CancelNode> {
    let other_anchor = other.anchor_ptr().cast::<CancelNode>();
    // The earlier deadline, as a pointer into the node that set it
    // (cancel.rs invariant 6: the merged node keeps `other`, and so that
    // node, alive).
    let (own, theirs) = (ctx.deadline_ptr(), other.deadline_ptr());
    // SAFETY: each is null or points into a node that `ctx` or `other`
    // keeps alive for this call.
    let deadline = match unsafe { (own.as_ref(), theirs.as_ref()) } {
        (Some(a), Some(b)) if b < a => theirs,
        (Some(_), _) => own,
        (None, _) => theirs,
    };
    match other {
        // Invariant 5: exactly what `with_cancel` does, marked for Display.
        Repr::Background => {
            return CancelNode::derive_with_shape(ctx, 2, deadline, &WITH_BACKGROUND);
        }
        Repr::Todo => return CancelNode::derive_with_shape(ctx, 2, deadline, &WITH_TODO),
        Repr::Node(_) => {}
    }
    let raw = CancelNode::derive_with_shape(ctx, 2, deadline, &MERGED);
    // SAFETY: we hold the two handles just created.
    let node = unsafe { raw.as_ref() };
    let link = if other_anchor.is_null() {
        // Invariant 5: nothing to register, nothing allocated.
        // SAFETY: `Merge` keeps `other` (so its anchor) until after its
        // `OnDone` is dropped, and never detaches it.
        unsafe { OnDone::new_borrowed(other_anchor, || {}) }
    } else {
        // Invariant 1: the callback's memory reference.
        node.acquire_memory();
        let callback = Callback {
            merged: raw,
            other: other_anchor,
        };
        // May run `f` at once (invariant 5): our handles and `other` are
        // alive for the call.
        // SAFETY: as above.
        unsafe { OnDone::new_borrowed(other_anchor, move || callback.fire()) }
    };
    let merge = Merge {
        _link: link,
        other: other.clone(),
    };
    // SAFETY: `raw` heads an `Extended<Merge>` (`MERGED`'s shape); `ext` is
    // written once, here, before any handle is shared (a concurrent
    // propagation from `ctx` touches the node's state and lists, never
    // `ext`).
    unsafe {
        raw.cast::<Extended<Merge>>()
            .as_ref()
            .ext
            .with_mut(|ext| (*ext).write(merge));
    }
    raw
}

/// The other parent of a merged node, for `Display`.
///
/// # Safety
///
/// `node` is alive, its kind is `Kind::Cancel` with `Merged::Node`.
pub(crate) unsafe fn other_of<'a>(node: NonNull<Node>) -> &'a Repr {
    // SAFETY: per the contract, the node heads an `Extended<Merge>` whose
    // `ext` was written before any handle was shared, and is dropped only
    // at release.
    unsafe {
        let ext = node
            .cast::<Extended<Merge>>()
            .as_ref()
            .ext
            .with(|ext| (*ext).as_ptr());
        &(*ext).other
    }
}

/// The callback registered on `other` (invariant 1).
struct Callback {
    /// The merged node: one memory reference, given back on drop.
    merged: NonNull<CancelNode>,
    /// `other`'s cancellable node: dereferenced only under a handle on the
    /// merged node, whose `Merge` keeps it alive.
    other: *const CancelNode,
}

// SAFETY: a memory reference and a pointer used under the protocol of the
// module docs; the node types are `Send + Sync`.
unsafe impl Send for Callback {}

impl Callback {
    fn fire(self) {
        // SAFETY: our memory reference keeps the node's memory valid.
        let Some(handle) = (unsafe { NodeRef::try_acquire(self.merged.cast()) }) else {
            // Released: nothing to cancel, and `other` may be gone.
            return;
        };
        let handle = Held(Some(handle));
        // SAFETY: our handle keeps the merged node alive, and with it its
        // `Merge`, whose handle keeps `other`'s node alive (or `merge`'s
        // caller does, when we run before it returns).
        let (merged, other) = unsafe { (self.merged.as_ref(), &*self.other) };
        // We run because `other` is done: its word is final. (A merged node
        // derived done from `ctx`, or cancelled since, keeps its word.)
        // SAFETY: invariant 3.
        unsafe { merged.cancel_inherited(other.word()) };
        drop(handle);
    }
}

impl Drop for Callback {
    fn drop(&mut self) {
        // SAFETY: our memory reference (invariant 1), given up once.
        unsafe { CancelNode::release_memory(self.merged.as_ptr()) };
    }
}

/// A handle the callback gives back unless it is the last (invariant 4),
/// also while a panic from the merged subtree's wakers unwinds.
struct Held(Option<NodeRef>);

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take()
            && let Err(last) = handle.release_unless_last()
        {
            crate::after_func::run_detached(move || drop(last));
        }
    }
}
