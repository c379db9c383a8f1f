//! The header every derived context starts with, handle counting, and the
//! iterative release that frees a context once nothing refers to it.
//!
//! A derived context is one heap allocation: a `#[repr(C)]` struct whose
//! first field is a [`Node`]. `Context`, `Done`, the cancel handles and
//! `AfterFunc` hold *handles* (counted in `Node::handles`, like `Arc`'s
//! strong count), each one a [`NodeRef`]: cloning takes a handle, dropping
//! gives it back. A child holds one handle on its parent, through its
//! `parent` field ([`Repr`], the representation of a `Context`).
//!
//! This module names no kind of node: a cancellable node's teardown is
//! reached through [`Kind::Cancel`]'s function pointer, and `anchor` is a
//! type-erased pointer whose typed accessor lives in `cancel.rs`.
//!
//! # Invariants
//!
//! 1. A node is *released* exactly once, by whoever drops its last handle;
//!    nothing can take a handle on a released node (handles are only ever
//!    cloned from a live one, or taken by `try_acquire` from a memory
//!    reference, which fails once the count is zero, and which only the
//!    kinds `Node::upgradable` names see). On every other node a count of
//!    one is its holder's alone, so the last handle goes without a
//!    decrement (`Node::give_back`).
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

use core::mem::ManuallyDrop;
use core::ops::Deref;
use core::ptr::{self, NonNull};

use crate::primitive::atomic::{AtomicU32, Ordering};
use crate::waiters::{Panic, contain};

/// What kind of context a node is.
pub(crate) enum Kind {
    /// A `CancelNode` (cancel.rs): `with_cancel`, `with_cancel_cause`, the
    /// deadline variants. `retire` tears it down once released.
    Cancel {
        /// `CancelNode::retire` (or an extended node's, which also drops
        /// the layer's data).
        retire: unsafe fn(NonNull<Node>, &mut Option<Panic>),
        /// Frees the allocation once its memory references are gone: a
        /// plain `CancelNode`'s box, or an extended one's (cancel.rs).
        free: unsafe fn(*mut Node),
        /// Whether this is a merged context (merge.rs), and with what.
        merged: Merged,
        /// Whether the allocation is a `DeadlineNode`, with a timer entry.
        timed: bool,
        /// The release of a node with nothing to tear down, for the shapes
        /// that have one (a plain `CancelNode`): frees a released node that
        /// has nothing to close, drain or drop — no user code can run — and
        /// returns true, leaving its parent handle to the caller; returns
        /// false, having touched nothing, for `retire` to do the rest.
        free_quiet: Option<unsafe fn(NonNull<Node>) -> bool>,
        /// With `free_quiet`, for the same shapes: the release of such a
        /// node whose last handle just went (`CancelNode::release_plain`),
        /// a loop freeing it and its quiet ancestors with `free_quiet`
        /// inlined, which hands the first node that is not quiet to
        /// `release_slow` (or `release_last`). A kind has both or neither,
        /// and every kind that has them heads a plain `CancelNode`.
        release_quiet: Option<unsafe fn(NonNull<Node>)>,
    },
    /// A bare `Node`: `without_cancel`.
    WithoutCancel,
    /// A `ValueNode<T>` (value.rs), whose `TypeId` follows the header.
    Value(ValueVtable),
}

/// What a cancel node was merged with (merge.rs), for `Display`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Merged {
    /// Not a merged context.
    No,
    /// With `background()` (or `todo()`): a plain allocation, as
    /// `with_cancel`'s, since nothing links it to a root.
    Background,
    Todo,
    /// With a derived context: the allocation carries it (`MergeNode`).
    Node,
}

/// The per-`T` operations of a value node.
pub(crate) struct ValueVtable {
    pub(crate) type_name: fn() -> &'static str,
    /// Drops the value and frees the node.
    pub(crate) free: unsafe fn(NonNull<Node>),
}

/// The header of every derived context: four words.
#[repr(C)]
pub(crate) struct Node {
    /// 32 bits, sharing a word with `links`: one context with 2^31 handles
    /// would take 16 GiB of `Context`s, and the count aborts before it
    /// could wrap (`MAX_HANDLES`).
    handles: AtomicU32,
    /// A `CancelNode`'s memory references (cancel.rs invariant 3); zero in
    /// other nodes. Here rather than in the `CancelNode`, where it would
    /// cost the node another word (`docs::internals`, "Node layout").
    pub(crate) links: AtomicU32,
    /// A `static` per kind (a shape's, a value type's), so the header
    /// carries one pointer for it.
    pub(crate) kind: &'static Kind,
    /// Taken at release (invariant 2); never dropped in place.
    parent: Parent,
    /// Invariant 4: the header of a `CancelNode`, or null. Typed by
    /// `Node::anchor` in cancel.rs.
    pub(crate) anchor: *const Node,
}

/// What a `Context` is: a root, or a handle on a derived node. Also a
/// node's `parent`.
#[derive(Clone)]
pub(crate) enum Repr {
    Background,
    Todo,
    Node(NodeRef),
}

impl Repr {
    /// The anchor (invariant 4) as the raw pointer stored in the node, which
    /// keeps the provenance of the anchor's allocation: handles made from it
    /// may free the node (a pointer derived from a `&Node` may not, under
    /// Tree Borrows). Null for roots.
    #[inline]
    pub(crate) fn anchor_ptr(&self) -> *const Node {
        match self {
            // SAFETY: our handle keeps the node alive; the field is read
            // through the node's own pointer, never through a reference.
            Repr::Node(node) => unsafe { (*node.as_ptr().as_ptr()).anchor },
            Repr::Background | Repr::Todo => ptr::null(),
        }
    }
}

/// A node's parent in one word: the address of the parent node, on which it
/// owns a handle, or one of the two roots (`Repr`'s three cases, packed).
/// Moved out at release (invariant 2); dropping it in place does nothing.
struct Parent(*const Node);

/// The `Parent` of a child of `todo()`. Never a node's address: nodes are
/// pointer-aligned. (`background()`'s is null.)
const TODO_PARENT: *const Node = ptr::without_provenance(1);

/// A node's parent as `Node::parent` shows it: a `Repr` by reference.
pub(crate) enum Up<'a> {
    Background,
    Todo,
    Node(&'a NodeRef),
}

impl Parent {
    /// Packs `parent`, taking over its handle.
    fn new(parent: Repr) -> Parent {
        Parent(match parent {
            Repr::Background => ptr::null(),
            Repr::Todo => TODO_PARENT,
            Repr::Node(node) => node.into_raw().as_ptr(),
        })
    }

    fn get(&self) -> Up<'_> {
        if self.0.is_null() {
            Up::Background
        } else if self.0 == TODO_PARENT {
            Up::Todo
        } else {
            // SAFETY: a node's address, on which we own a handle: the word
            // is a `NodeRef`'s (`repr(transparent)` over a non-null
            // pointer), borrowed for as long as `self` is.
            Up::Node(unsafe { &*(&raw const self.0).cast::<NodeRef>() })
        }
    }

    /// Unpacks the parent, giving its handle back to the caller.
    ///
    /// # Safety
    ///
    /// Called at most once (the node's release); `self` is not used after.
    unsafe fn take(&self) -> Repr {
        match self.get() {
            Up::Background => Repr::Background,
            Up::Todo => Repr::Todo,
            // SAFETY: the handle we owned, handed over once.
            Up::Node(node) => Repr::Node(unsafe { ptr::read(node) }),
        }
    }
}

impl<'a> Up<'a> {
    /// A context's own representation, as a parent is shown.
    #[inline]
    pub(crate) fn of(repr: &'a Repr) -> Up<'a> {
        match repr {
            Repr::Background => Up::Background,
            Repr::Todo => Up::Todo,
            Repr::Node(node) => Up::Node(node),
        }
    }
}

/// One counted handle on a node (invariant 1), as `Arc` is one strong
/// reference: `Clone` takes a handle, `Drop` gives it back and releases the
/// node (iteratively, with its ancestors: invariant 3) when it was the last.
/// `repr(transparent)`: a `Parent` word is one.
#[repr(transparent)]
pub(crate) struct NodeRef(NonNull<Node>);

// SAFETY: a handle is a counted reference to shared data that is `Sync` for
// every kind of node: all shared mutable state is atomic or behind the
// protocols of cancel.rs, waiters.rs and list.rs; values are `Send + Sync`
// by the bound on `with_value` and callbacks `Send`. The handle count is
// atomic, and the release that the last handle's drop runs may run on any
// thread (user data is `Send`). So handles may move and be shared across
// threads.
unsafe impl Send for NodeRef {}
// SAFETY: as above: `&NodeRef` only gives `&Node`, shared data.
unsafe impl Sync for NodeRef {}

impl NodeRef {
    /// Takes ownership of a handle counted by the caller.
    ///
    /// # Safety
    ///
    /// The caller owns one handle on `node` (counted in `handles`) and gives
    /// it up.
    #[inline]
    pub(crate) unsafe fn from_raw(node: NonNull<Node>) -> NodeRef {
        NodeRef(node)
    }

    /// Gives up the handle to the caller (see `from_raw`).
    #[inline]
    pub(crate) fn into_raw(self) -> NonNull<Node> {
        ManuallyDrop::new(self).0
    }

    /// Takes one more handle on `node`, through a pointer that keeps its
    /// provenance (the anchor pointer stored in a node: a handle made from
    /// a `&Node` may not free it, under Tree Borrows).
    ///
    /// # Safety
    ///
    /// `node` is alive: the caller holds a handle on it or on a descendant
    /// (invariant 2).
    #[inline]
    pub(crate) unsafe fn acquire(node: NonNull<Node>) -> NodeRef {
        // SAFETY: alive per the contract.
        unsafe { node.as_ref() }.acquire();
        NodeRef(node)
    }

    /// A handle on `node` unless it has been released (`Node::try_acquire`).
    /// For the timer thread, which holds only a reference on the memory.
    ///
    /// # Safety
    ///
    /// `node`'s memory is valid (the caller holds a memory reference).
    pub(crate) unsafe fn try_acquire(node: NonNull<Node>) -> Option<NodeRef> {
        // `Node::give_back` frees the last handle of other nodes without
        // zeroing the count, which this would then take.
        // Checked in debug builds and in every loom schedule.
        if cfg!(any(debug_assertions, loom)) {
            assert!(
                Node::upgradable(node),
                "try_acquire on a node that says it is not upgradable"
            );
        }
        // SAFETY: valid memory per the contract.
        unsafe { node.as_ref() }
            .try_acquire()
            .then_some(NodeRef(node))
    }

    /// Gives the handle back unless it is the last one, which is returned
    /// (`Node::release_unless_last`): for the timer thread, which must not
    /// run a release's user drops (timer invariant 6).
    pub(crate) fn release_unless_last(self) -> Result<(), NodeRef> {
        if Node::release_unless_last(&self) {
            // The handle was given back by the decrement.
            core::mem::forget(self);
            Ok(())
        } else {
            Err(self)
        }
    }

    /// The node, as a pointer that keeps the allocation's provenance.
    #[inline]
    pub(crate) fn as_ptr(&self) -> NonNull<Node> {
        self.0
    }
}

impl Deref for NodeRef {
    type Target = Node;

    #[inline]
    fn deref(&self) -> &Node {
        // SAFETY: our handle keeps the node alive.
        unsafe { self.0.as_ref() }
    }
}

impl Clone for NodeRef {
    #[inline]
    fn clone(&self) -> NodeRef {
        self.acquire();
        NodeRef(self.0)
    }
}

impl Drop for NodeRef {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: we own one handle and give it up.
        unsafe { Node::release(self.0) };
    }
}

/// Handle counts above this abort, as `Arc` does, rather than overflow: each
/// thread adds one handle at most before it sees the count above this, so
/// the count cannot wrap unless 2^31 threads take one at once.
const MAX_HANDLES: u32 = i32::MAX as u32;

/// What `Node::give_back` leaves in the count of a node whose last handle
/// it gave back without a decrement, in debug builds and under loom, so
/// that `try_acquire` can tell (release builds leave one).
const GIVEN_BACK: u32 = u32::MAX;

impl Node {
    /// The parent node of a released node, on which it owns a handle (none
    /// for a child of a root), as the raw address that handle holds: for a
    /// release loop, which frees `this` and then gives that handle back
    /// (invariants 2 and 3) without unpacking the parent.
    ///
    /// # Safety
    ///
    /// `this` is released (invariant 1) and not yet freed; the caller
    /// takes over the parent handle and frees `this` without dropping its
    /// `parent` (which is never dropped in place: `Parent`).
    #[inline(always)]
    pub(crate) unsafe fn parent_node(this: NonNull<Node>) -> Option<NonNull<Node>> {
        // SAFETY: no handle is left: the node is ours.
        let parent = unsafe { this.as_ref() }.parent.0;
        if parent == TODO_PARENT {
            return None;
        }
        NonNull::new(parent.cast_mut())
    }

    /// A header with `handles` handles.
    pub(crate) fn new(
        handles: u32,
        kind: &'static Kind,
        parent: Repr,
        anchor: *const Node,
    ) -> Node {
        Node {
            handles: AtomicU32::new(handles),
            links: AtomicU32::new(0),
            kind,
            parent: Parent::new(parent),
            anchor,
        }
    }

    /// The same header with `links` memory references (a `CancelNode`'s,
    /// cancel.rs invariant 3).
    #[inline]
    pub(crate) fn with_links(self, links: u32) -> Node {
        Node {
            links: AtomicU32::new(links),
            ..self
        }
    }

    /// The context this one was derived from.
    #[inline]
    pub(crate) fn parent(&self) -> Up<'_> {
        self.parent.get()
    }

    /// The handle count, for unit tests (`done.rs`: `done()` takes none;
    /// those do not run under loom).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn handle_count(&self) -> u32 {
        // Ordering: Relaxed — read on the only thread that uses the node.
        self.handles.load(Ordering::Relaxed)
    }

    /// Takes one more handle (`NodeRef::clone`, `NodeRef::acquire`).
    #[inline]
    fn acquire(&self) {
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
    fn try_acquire(&self) -> bool {
        // Ordering: Relaxed load, Acquire on success — as `Weak::upgrade`:
        // the handle we take synchronises with the Release of earlier
        // drops, so the node we then use is the live one.
        let mut current = self.handles.load(Ordering::Relaxed);
        loop {
            if current == 0 {
                return false;
            }
            if cfg!(any(debug_assertions, loom)) {
                assert_ne!(current, GIVEN_BACK, "a handle taken on a node torn down");
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
    fn release_unless_last(&self) -> bool {
        // Ordering: Relaxed load; Release on success — as in `give_back`:
        // our uses of the node happen before the final release, whose
        // Acquire load in `give_back` reads this decrement's release
        // sequence.
        let mut current = self.handles.load(Ordering::Relaxed);
        loop {
            if current == 1 {
                return false;
            }
            if cfg!(any(debug_assertions, loom)) {
                assert_ne!(current, GIVEN_BACK, "a handle held on a node torn down");
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
    unsafe fn release(this: NonNull<Node>) {
        // SAFETY: forwarded.
        if unsafe { Node::give_back(this) } {
            // SAFETY: that was the last handle.
            unsafe { release_last(this) };
        }
    }

    /// Gives one handle back; true if it was the last (the caller then
    /// tears the node down), and then every other holder's uses of the node
    /// happen before this returns.
    ///
    /// A count of one is the caller's alone (invariant 1: only a holder of
    /// a handle, on the node or a descendant, can take another, and a
    /// descendant's holder would be counted through its chain), unless
    /// someone with only a reference on the memory may still take one
    /// (`Node::upgradable`). So the last handle of a context that nothing
    /// else refers to goes without a read-modify-write, as `links` does in
    /// `CancelNode::release_memory`; the count then stays at one, which
    /// nothing reads again.
    ///
    /// # Safety
    ///
    /// The caller owns a handle on `this` and gives it up.
    #[inline]
    pub(crate) unsafe fn give_back(this: NonNull<Node>) -> bool {
        // SAFETY: the caller's handle keeps the node alive.
        let handles = unsafe { &this.as_ref().handles };
        // Ordering: Acquire — reading one reads the last value in the
        // release sequence of the other handles' Release decrements, so
        // their uses happen before the teardown.
        if handles.load(Ordering::Acquire) == 1 && !Node::upgradable(this) {
            // Checked in debug builds and in every loom schedule: a handle
            // taken from here on would be on a node being torn down.
            if cfg!(any(debug_assertions, loom)) {
                // Ordering: Relaxed — `try_acquire`'s CAS reads the latest
                // value, this one.
                handles.store(GIVEN_BACK, Ordering::Relaxed);
            }
            return true;
        }
        // Ordering: Release — every use of the node through this handle
        // happens before the teardown; pairs with the Acquire load below,
        // by whichever holder's decrement reaches zero. (A load rather than
        // an Acquire fence, as std's `Arc` does under ThreadSanitizer: it
        // runs once per node, and TSan does not model standalone fences.)
        if handles.fetch_sub(1, Ordering::Release) != 1 {
            return false;
        }
        let _ = handles.load(Ordering::Acquire);
        true
    }
}

/// Tears down `this`, whose last handle just went, and then its ancestors
/// whose last handle it held. The usual case — a chain of plain cancel
/// nodes with nothing to close, drain or drop (`Kind::Cancel::free_quiet`)
/// — goes to the kind's `release_quiet` (`CancelNode::release_plain`), a
/// loop with no panic to contain (no user code runs) and no teardown call
/// per node; everything else, and the first node on the way up that is
/// not quiet, to `release_slow`. (Out of line and small: every handle's
/// drop inlines the call. Against `release_slow` alone: 208 -> 194
/// instructions for a child of `background()` derived and dropped,
/// `cancel_tree/depth=1/root=background` 14.4–14.7 -> 13.9–14.0 ns in
/// alternating runs; `docs::internals`, "Where the time goes".)
///
/// # Safety
///
/// `this` is alive and `Node::give_back` just said its last handle went.
#[inline(never)]
pub(crate) unsafe fn release_last(this: NonNull<Node>) {
    // SAFETY: no handle is left (invariant 1): the node is ours; `kind` is
    // immutable.
    let kind = unsafe { this.as_ref() }.kind;
    // Only tail calls here, so that neither path pays the other's frame.
    if let Kind::Cancel {
        release_quiet: Some(release_quiet),
        ..
    } = *kind
    {
        // SAFETY: forwarded: the node's own kind's.
        unsafe { release_quiet(this) }
    } else {
        // SAFETY: forwarded.
        unsafe { release_slow(this) }
    }
}

/// `release_last` of a node that `Kind::Cancel::free_quiet` does not
/// handle: the general teardown, for `this` and then its ancestors whose
/// last handle it held.
///
/// User data (values, causes, callbacks that can no longer run) is dropped
/// here, where the last handle goes (invariant 5). A `Drop` that panics does
/// not stop the teardown: the first panic is caught, every node whose last
/// handle went is still torn down, and the panic then resumes on this
/// thread, as a panicking waker's does in `cancel()`.
///
/// # Safety
///
/// As `release_last`.
#[cold]
pub(crate) unsafe fn release_slow(this: NonNull<Node>) {
    let mut panic = None;
    // SAFETY: forwarded.
    unsafe { teardown_chain(this, &mut panic) };
    if let Some(payload) = panic {
        std::panic::resume_unwind(payload);
    }
}

/// The loop of `release_slow`.
///
/// # Safety
///
/// As `release_slow`.
unsafe fn teardown_chain(mut this: NonNull<Node>, panic: &mut Option<Panic>) {
    loop {
        // `Node::give_back` said the last handle is gone and made every
        // other holder's uses visible.
        // SAFETY: no handle is left (invariant 1): we have the node to
        // ourselves, and `parent` is moved out exactly once (invariant 2).
        let parent = unsafe { this.as_ref().parent.take() };
        // SAFETY: as above; `kind` says which struct the header starts.
        unsafe {
            match this.as_ref().kind {
                // A parent released here may be quiet too: its short path
                // (which frees it when it returns true), else `retire`.
                Kind::Cancel {
                    free_quiet: Some(free_quiet),
                    ..
                } if free_quiet(this) => {}
                Kind::Cancel { retire, .. } => retire(this, panic),
                Kind::WithoutCancel => drop(Box::from_raw(this.as_ptr())),
                Kind::Value(vtable) => free_value(vtable, this, panic),
            }
        }
        // Drop the parent handle without recursing (invariant 3).
        match parent {
            Repr::Background | Repr::Todo => return,
            Repr::Node(next) => {
                let next = next.into_raw();
                // SAFETY: `into_raw` handed us the parent's handle.
                if !unsafe { Node::give_back(next) } {
                    return;
                }
                this = next;
            }
        }
    }
}

/// Drops a released value node's value and frees the node, the value's
/// `Drop` contained. Out of line, so that the teardown loop keeps few
/// registers for the cancel nodes it mostly releases.
///
/// # Safety
///
/// As `ValueVtable::free`: `this` is the released value node `vtable`
/// belongs to.
#[inline(never)]
unsafe fn free_value(vtable: &ValueVtable, this: NonNull<Node>, panic: &mut Option<Panic>) {
    // A panicking `T::drop` still frees the box (drop glue deallocates
    // while unwinding).
    // SAFETY: forwarded.
    contain(panic, || unsafe { (vtable.free)(this) });
}

/// Allocates a `without_cancel()` node: a bare header with no anchor.
pub(crate) fn new_without_cancel(parent: Repr) -> NodeRef {
    let node = Box::new(Node::new(1, &Kind::WithoutCancel, parent, ptr::null()));
    // SAFETY: `Box::into_raw` never returns null; the box's one handle is
    // the caller's.
    unsafe { NodeRef::from_raw(NonNull::new_unchecked(Box::into_raw(node))) }
}
