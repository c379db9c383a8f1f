//! The header every derived context starts with, handle counting, and the
//! iterative release that frees a context once nothing refers to it.
//!
//! A derived context is one heap allocation: a `#[repr(C)]` struct whose
//! first field is a [`Node`]. `Context`, `Done` and the cancel handles hold
//! *handles* (counted in `Node::handles`, like `Arc`'s strong count). A child
//! holds one handle on its parent, through its `parent` field.
//!
//! # Invariants
//!
//! 1. A node is *released* exactly once, by whoever drops its last handle;
//!    nothing can take a handle on a released node (handles are only ever
//!    cloned from a live one).
//! 2. `parent` is moved out exactly once, at release, and dropped after the
//!    node's own teardown — so a node's ancestors outlive it, and every
//!    pointer a node keeps into its ancestors (`anchor`, a borrowed cause,
//!    the list it is registered in) is valid while it is not released.
//! 3. Releasing walks up the chain in a loop, never recursing: a chain a
//!    million deep drops in constant stack.
//! 4. `anchor` is the nearest cancellable node on the path to the root
//!    (itself for a cancellable node), or null when the context can never be
//!    done. It never changes after construction.
//! 5. User data — a value, a cause, a callback that can no longer run — is
//!    dropped at release, on the thread that drops the last handle, never
//!    where the last reference on the *memory* goes (a cleanup pass, a
//!    closer, an epoch-deferred closure, the timer's bucket sweep): those
//!    run inside goctx's own critical paths. The timer thread never drops a
//!    last handle itself (timer invariant 6). A panicking `Drop` is
//!    contained until the whole release is done (`release_slow`).

use core::any::TypeId;
use core::mem::ManuallyDrop;
use core::ptr::{self, NonNull};

use crate::cancel::CancelNode;
use crate::context::Context;
use crate::primitive::atomic::{AtomicUsize, Ordering};
use crate::waiters::Panic;

/// What kind of context a node is.
pub(crate) enum Kind {
    /// A [`CancelNode`]: `with_cancel`, `with_cancel_cause`.
    Cancel,
    /// A bare `Node`: `without_cancel`.
    WithoutCancel,
    /// A `ValueNode<T>` for the `T` with this `TypeId`.
    Value {
        type_id: TypeId,
        vtable: &'static ValueVtable,
    },
}

/// The per-`T` operations of a value node.
pub(crate) struct ValueVtable {
    pub(crate) type_name: fn() -> &'static str,
    /// Drops the value and frees the node.
    pub(crate) free: unsafe fn(NonNull<Node>),
}

/// The header of every derived context.
#[repr(C)]
pub(crate) struct Node {
    handles: AtomicUsize,
    pub(crate) kind: Kind,
    /// Taken at release (invariant 2); never dropped in place.
    parent: ManuallyDrop<Context>,
    /// Invariant 4.
    pub(crate) anchor: *const CancelNode,
}

/// Handle counts above this abort, as `Arc` does, rather than overflow.
const MAX_HANDLES: usize = isize::MAX as usize;

impl Node {
    /// A header with `handles` handles.
    pub(crate) fn new(
        handles: usize,
        kind: Kind,
        parent: Context,
        anchor: *const CancelNode,
    ) -> Node {
        Node {
            handles: AtomicUsize::new(handles),
            kind,
            parent: ManuallyDrop::new(parent),
            anchor,
        }
    }

    /// The context this one was derived from.
    #[inline]
    pub(crate) fn parent(&self) -> &Context {
        &self.parent
    }

    /// The nearest cancellable node, if any.
    #[inline]
    pub(crate) fn anchor(&self) -> Option<&CancelNode> {
        // SAFETY: invariant 4 and 2 — the anchor is this node or an ancestor,
        // alive while this node is.
        unsafe { self.anchor.as_ref() }
    }

    /// Takes one more handle.
    #[inline]
    pub(crate) fn acquire(&self) {
        // Ordering: Relaxed — a new handle is made from an existing one, so
        // the node is already visible to this thread (as `Arc::clone`).
        let old = self.handles.fetch_add(1, Ordering::Relaxed);
        if old > MAX_HANDLES {
            std::process::abort();
        }
    }

    /// Takes a handle unless the node has been released (its count reached
    /// zero), like `Weak::upgrade`. For the timer thread, which holds only a
    /// reference on the memory (timer invariant 3).
    pub(crate) fn try_acquire(&self) -> bool {
        // Ordering: Relaxed load, Acquire on success — as `Weak::upgrade`:
        // the handle we take synchronises with the Release of earlier
        // drops, so the node we then use is the live one.
        let mut current = self.handles.load(Ordering::Relaxed);
        loop {
            if current == 0 {
                return false;
            }
            if current > MAX_HANDLES {
                std::process::abort();
            }
            match self.handles.compare_exchange_weak(
                current,
                current + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Drops one handle unless it is the last one (then returns false and
    /// the caller still owns it). For the timer thread, which must not run
    /// the release's user drops (timer invariant 6).
    pub(crate) fn release_unless_last(&self) -> bool {
        // Ordering: Relaxed load; Release on success — as in `release`: our
        // uses of the node happen before the final release, whose Acquire
        // load in `release_slow` reads this decrement's release sequence.
        let mut current = self.handles.load(Ordering::Relaxed);
        loop {
            if current == 1 {
                return false;
            }
            match self.handles.compare_exchange_weak(
                current,
                current - 1,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Drops one handle; releases the node when it was the last.
    ///
    /// # Safety
    ///
    /// The caller owns a handle on `this` and gives it up.
    #[inline]
    pub(crate) unsafe fn release(this: NonNull<Node>) {
        // SAFETY: the caller's handle keeps the node alive.
        // Ordering: Release — every use of the node through this handle
        // happens before the release; pairs with the Acquire load in
        // `release_slow`.
        if unsafe { this.as_ref() }
            .handles
            .fetch_sub(1, Ordering::Release)
            == 1
        {
            // SAFETY: that was the last handle.
            unsafe { release_slow(this) };
        }
    }
}

/// Tears down `this` and then its ancestors whose last handle it held.
///
/// User data (values, causes, callbacks that can no longer run) is dropped
/// here, where the last handle goes (invariant 5). A `Drop` that panics does
/// not stop the teardown: the first panic is caught, every node whose last
/// handle went is still torn down, and the panic then resumes on this
/// thread, as a panicking waker's does in `cancel()`.
///
/// # Safety
///
/// `this` is alive and its handle count just reached zero.
#[cold]
unsafe fn release_slow(this: NonNull<Node>) {
    let mut panic = None;
    // SAFETY: forwarded.
    unsafe { teardown_chain(this, &mut panic) };
    if let Some(payload) = panic {
        std::panic::resume_unwind(payload);
    }
}

/// Runs `drop_user_data`, catching a panic into `panic` (the first one is
/// kept): user code never cuts a release short.
pub(crate) fn contain(panic: &mut Option<Panic>, drop_user_data: impl FnOnce()) {
    if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(drop_user_data)) {
        panic.get_or_insert(payload);
    }
}

/// The loop of `release_slow`.
///
/// # Safety
///
/// As `release_slow`.
unsafe fn teardown_chain(mut this: NonNull<Node>, panic: &mut Option<Panic>) {
    loop {
        // Ordering: Acquire — reads the final count, the last value in the
        // release sequence of every other handle's Release decrement, so
        // their uses happen before the teardown. (A load rather than an
        // Acquire fence, as std's `Arc` does under ThreadSanitizer: this is a
        // cold path, and TSan does not model standalone fences.)
        // SAFETY: the node is alive until its teardown below.
        let _ = unsafe { this.as_ref() }.handles.load(Ordering::Acquire);
        // SAFETY: no handle is left (invariant 1): we have the node to
        // ourselves, and `parent` is moved out exactly once (invariant 2).
        let parent = unsafe { ManuallyDrop::into_inner(ptr::read(&this.as_ref().parent)) };
        // SAFETY: as above; `kind` says which struct the header starts.
        unsafe {
            match this.as_ref().kind {
                Kind::Cancel => CancelNode::retire(this.cast(), panic),
                Kind::WithoutCancel => drop(Box::from_raw(this.as_ptr())),
                // A panicking `T::drop` still frees the box (drop glue
                // deallocates while unwinding).
                Kind::Value { vtable, .. } => contain(panic, || (vtable.free)(this)),
            }
        }
        // Drop the parent handle without recursing (invariant 3).
        match parent.into_node() {
            None => return,
            Some(next) => {
                // SAFETY: `into_node` handed us the parent's handle.
                // Ordering: Release — as in `Node::release`.
                if unsafe { next.as_ref() }
                    .handles
                    .fetch_sub(1, Ordering::Release)
                    != 1
                {
                    return;
                }
                this = next;
            }
        }
    }
}

/// Allocates a `without_cancel()` node: a bare header with no anchor.
pub(crate) fn new_without_cancel(parent: Context) -> NonNull<Node> {
    let node = Box::new(Node::new(1, Kind::WithoutCancel, parent, ptr::null()));
    // SAFETY: `Box::into_raw` never returns null.
    unsafe { NonNull::new_unchecked(Box::into_raw(node)) }
}
