//! `merge`: a context with two parents (C#'s linked token source, Folly's
//! `CancellationToken::merge`, Go's `AfterFunc` merge example made native).
//!
//! A merged context is a cancellable child of `ctx` — derived, registered
//! and cancelled by `ctx` like any `with_cancel` child — whose allocation
//! (a [`MergeNode`]) also carries its link to `other`: a handle on `other`
//! (for `Display`, and to keep alive what the link points into) and a
//! callback waiter entry, embedded in the same allocation, registered on
//! `other`'s cancellable node. So a merge costs one allocation, as
//! `with_cancel` does, and `other`'s cancellation reaches the merged
//! context synchronously, inside `other`'s `cancel()` (or on the timer
//! thread), as a waker is woken: the entry's dispatch cancels the merged
//! node with `other`'s error and cause, and the merged node propagates to
//! its own subtree before the dispatch returns. (The entry is a
//! `WaiterKind::Callback` as on-done and after-func entries are, with the
//! same claim; it needs no `OnDone` around it: nobody ever waits for it,
//! invariant 2.)
//!
//! # Invariants
//!
//! 1. The entry's references (the merged node's own, the waiter list's
//!    while linked, a dispatch's while it runs) together hold one reference
//!    on the merged node's *memory* (its `links`, as a list or the timer
//!    does), given back when the last one goes (`entry_free`), never a
//!    handle: a handle would keep the merged context alive as long as
//!    `other` lives. The dispatch cancels only under a handle taken by
//!    `try_acquire`, which fails once the merged node is released, and then
//!    touches nothing else.
//! 2. Releasing the merged node (`retire`) first stops the entry (the same
//!    claim as `AfterFunc::stop`) and withdraws it from `other`'s waiter
//!    set, then drops its handle on `other`. A dispatch that won the claim
//!    instead needs no waiting for: it holds its own reference on the
//!    entry, and fails `try_acquire`. So merges that churn under a
//!    long-lived `other` leave nothing behind but what the waiter set's
//!    cleanup passes unlink.
//! 3. The merged node borrows `other`'s cause box (`cancel_inherited`), as
//!    a child borrows its ancestor's: the `other` handle in the node keeps
//!    the box's owner alive until the merged node is released, after every
//!    node that can inherit from it (its descendants hold handles on it).
//! 4. The callback never drops a last handle itself (it may run on the timer
//!    thread: timer invariant 6): a last handle goes to an after-func
//!    worker, as the timer's does.
//! 5. If `other` can never be done, nothing is registered (the entry is
//!    never initialised); with a root
//!    (`background()`, `todo()`) it *is* `with_cancel`'s allocation, only
//!    marked for `Display` (`Merged::Background`/`Todo`). If `other` is done
//!    already, the dispatch runs before `merge` returns: the result is done.

use core::mem::MaybeUninit;
use core::ptr::{self, NonNull};

use crate::cancel::{CancelNode, Shape, alloc_as, free_as};
use crate::node::{Kind, Merged, Node, NodeRef, Repr};
use crate::waiters::{self, CallbackVtable, Panic, Waiter, WaiterKind};

/// A merged context's allocation: its `CancelNode`, then its link to
/// `other`. The fields after `node` are written through raw pointers into
/// the allocation, never through a reference to the whole: other threads
/// use the node and the entry meanwhile.
#[repr(C)]
pub(crate) struct MergeNode {
    node: CancelNode,
    /// `other`'s cancellable node, or null (it can never be done).
    /// Written before the entry is pushed, then immutable.
    anchor: *const CancelNode,
    /// The callback registered on `anchor`'s waiter set, initialised iff
    /// `anchor` is not null, shared through raw pointers only and freed by
    /// its vtable (invariant 1).
    entry: MaybeUninit<Waiter>,
    /// A handle on `other` (invariant 3, and `Display`): written right
    /// after the derivation, before any handle is shared; taken at release.
    other: MaybeUninit<Repr>,
}

static MERGED: Shape = Shape {
    alloc: alloc_as::<MergeNode>,
    kind: Kind::Cancel {
        retire: MergeNode::retire,
        free: free_as::<MergeNode>,
        merged: Merged::Node,
        timed: false,
        free_quiet: None,
        release_quiet: None,
    },
};

/// The merged node's entry: dispatched on `other`'s cancellation.
static ENTRY: CallbackVtable = CallbackVtable {
    dispatch: MergeNode::dispatch,
    free: MergeNode::entry_free,
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
            return CancelNode::derive_with_shape(ctx, 2, deadline, 1, &WITH_BACKGROUND);
        }
        Repr::Todo => return CancelNode::derive_with_shape(ctx, 2, deadline, 1, &WITH_TODO),
        Repr::Node(_) => {}
    }
    // Invariant 1: the entry's reference on the node's memory is counted
    // from the start when there will be an entry.
    let links = if other_anchor.is_null() { 1 } else { 2 };
    let raw = CancelNode::derive_with_shape(ctx, 2, deadline, links, &MERGED);
    let host = raw.as_ptr().cast::<MergeNode>();
    // SAFETY: `MERGED`'s allocation; these fields are ours to write once,
    // here (a concurrent propagation from `ctx` touches only `node`), and
    // the entry is written before it is pushed.
    unsafe {
        (&raw mut (*host).other).write(MaybeUninit::new(other.clone()));
        (&raw mut (*host).anchor).write(other_anchor);
        let Some(anchor) = other_anchor.as_ref() else {
            // Invariant 5: nothing to register.
            return raw;
        };
        let entry = (&raw mut (*host).entry).cast::<Waiter>();
        // One reference: the merged node's own, given up at release. (The
        // entry's memory reference was counted by the derivation.)
        entry.write(Waiter::new(WaiterKind::Callback(&ENTRY)));
        // Announced first (cancel.rs invariant 7): a done node (born done,
        // or cancelled without a waiter announced) may never close its
        // waiter set; one that is not done yet can only become done by a
        // cancellation, which then reads the announcement and closes the
        // set: the push either comes first (and is notified) or fails.
        if !anchor.announce_waiter() || Waiter::push_unshared(entry, &anchor.waiters).is_err() {
            // `other` is done already: dispatch here (claimed, so the
            // release's stop loses), before `merge` returns (invariant 5).
            (*entry).claim_unlisted();
            if let Err(payload) = MergeNode::dispatch(entry) {
                std::panic::resume_unwind(payload);
            }
        }
    }
    raw
}

/// The other parent of a merged node, for `Display`.
///
/// # Safety
///
/// `node` is alive, its kind is `Kind::Cancel` with `Merged::Node`.
pub(crate) unsafe fn other_of<'a>(node: NonNull<Node>) -> &'a Repr {
    // SAFETY: per the contract, the node heads a `MergeNode` whose `other`
    // was written before any handle was shared, and is taken only at
    // release.
    unsafe { (*node.cast::<MergeNode>().as_ptr()).other.assume_init_ref() }
}

impl MergeNode {
    /// `Kind::Cancel::retire`: stops and withdraws the entry, drops the
    /// handle on `other` (contained), then retires the node (invariant 2).
    ///
    /// # Safety
    ///
    /// As `CancelNode::retire`; `this` heads a `MergeNode` written by
    /// `derive`.
    unsafe fn retire(this: NonNull<Node>, panic: &mut Option<Panic>) {
        let host = this.cast::<MergeNode>().as_ptr();
        // SAFETY: written by `derive`; the node is being released, so
        // nothing else takes `other`.
        unsafe {
            if let Some(anchor) = (*host).anchor.as_ref() {
                let entry = (&raw const (*host).entry).cast::<Waiter>();
                // Won: never dispatched, and never will be; withdraw it
                // (our handle on `other` below keeps `anchor` alive). Lost:
                // a dispatch has it, with a reference of its own.
                if (*entry).claim_stop() {
                    anchor.waiters.remove(entry);
                }
                // The node's own reference (invariant 1).
                Waiter::release_ref(entry);
            }
            let other = (&raw const (*host).other).read().assume_init();
            waiters::contain(panic, move || drop(other));
            CancelNode::retire(this, panic);
        }
    }

    /// `CallbackVtable::dispatch`: `other` is done; cancel the merged node
    /// with its word unless the node is released (invariant 1), then give
    /// the dispatch's reference back. A waker's panic in the merged subtree
    /// comes back as `Err`, for the canceller to resume (as `wake_all`).
    ///
    /// # Safety
    ///
    /// `entry` is a `MergeNode`'s, claimed for dispatch, and the caller
    /// passes one reference on.
    unsafe fn dispatch(entry: *const Waiter) -> Result<(), Panic> {
        // SAFETY: the entry's reference keeps the node's memory valid
        // (invariant 1).
        let host = unsafe { MergeNode::of_entry(entry) };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: as above.
            let Some(handle) = (unsafe { NodeRef::try_acquire(host.cast()) }) else {
                // Released: nothing to cancel, and `other` may be gone.
                return;
            };
            let handle = Held(Some(handle));
            // SAFETY: our handle keeps the merged node alive, and with it
            // its handle on `other`, which keeps `anchor` alive (or
            // `merge`'s caller does, when we run before it returns).
            let (merged, other) = unsafe { (&(*host.as_ptr()).node, &*(*host.as_ptr()).anchor) };
            // We run because `other` is done: its word is final. (A merged
            // node derived done from `ctx`, or cancelled since, keeps its
            // word.)
            // SAFETY: invariant 3.
            unsafe { merged.cancel_inherited(other.word()) };
            drop(handle);
        }));
        // SAFETY: the reference we were handed, given back once.
        unsafe { Waiter::release_ref(entry) };
        result
    }

    /// `CallbackVtable::free`: the entry's last reference is gone; give
    /// its reference on the node's memory back (invariant 1).
    ///
    /// # Safety
    ///
    /// `entry` is a `MergeNode`'s, with no reference left.
    unsafe fn entry_free(entry: *const Waiter) {
        // SAFETY: per the contract; the node's memory is still held by the
        // reference we give back after dropping the entry in place.
        unsafe {
            let host = MergeNode::of_entry(entry);
            ptr::drop_in_place(entry.cast_mut());
            CancelNode::release_memory(host.as_ptr().cast());
        }
    }

    /// The node holding `entry`.
    ///
    /// # Safety
    ///
    /// `entry` is a `MergeNode`'s `entry` field, reached through a pointer
    /// with the node's provenance.
    unsafe fn of_entry(entry: *const Waiter) -> NonNull<MergeNode> {
        // SAFETY: the field lies `offset_of!` bytes into the node.
        unsafe {
            NonNull::new_unchecked(
                entry
                    .byte_sub(core::mem::offset_of!(MergeNode, entry))
                    .cast::<MergeNode>()
                    .cast_mut(),
            )
        }
    }
}

/// A handle the dispatch gives back unless it is the last (invariant 4),
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
