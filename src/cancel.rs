//! Cancellable contexts: the node, its cancellation and propagation, and the
//! public cancel handles.
//!
//! # The protocol
//!
//! A [`CancelNode`] has a state word (see [`crate::state`]), a list of the
//! cancellable children registered with it, and a waiter set. To cancel:
//!
//! 1. **Decide.** One `compare_exchange(active word → done word)` on the
//!    state word (retried only if an announcement changed the active word
//!    meanwhile). The winner's error and cause are published together;
//!    losers return at once (a stalled winner never blocks anybody: losers
//!    do not wait, and readers see the final word already).
//! 2. **Deregister.** The winner removes the node from the list of the
//!    ancestor it registered with (Go's `removeChild`), so a cancelled child
//!    no longer counts against its parent.
//! 3. **Propagate.** The winner wakes the node's waiters (closing the waiter
//!    set), closes its child list and tries the same CAS on every live child
//!    with the inherited word (same error, cause pointer borrowed). Each
//!    child it wins has its waiters woken at once; a child with no children
//!    of its own has its child list closed right there too (a leaf, the
//!    usual case, is done with while its memory is in cache). A child with
//!    children is pushed on an intrusive work stack (`work_next`) and its
//!    list processed the same way: no recursion, no allocation. An empty
//!    child list and an unannounced waiter set are left alone (invariant
//!    7): a leaf nobody waited on costs its CAS and no list operation.
//!
//! A child registers by pushing itself on its anchor's child list (or, once
//! the anchor's children were derived on several threads at the same
//! moment, on its thread's stripe of them, invariant 8) and then
//! reading the anchor's word again; waiters and callbacks announce
//! `HAS_WAITERS` before pushing on the waiter set. If the anchor is done
//! before the push, or the push finds the list closed, or the word read
//! after it is done, the child cancels itself with the anchor's word before
//! the derivation returns (a waiter is ready).
//!
//! A node's allocation has a [`Shape`]: a plain `CancelNode`, a
//! [`DeadlineNode`], or one followed by a layer's data (a merged context's
//! link to its other parent, `merge::MergeNode`), torn down and freed
//! through the function pointers of its `Kind::Cancel`. A merged node is also cancelled
//! by `cancel_inherited`, with the done word of a node it does not descend
//! from (its cause box borrowed, as propagation borrows an ancestor's).
//!
//! # Invariants
//!
//! 1. The state word goes from active to done once (state table in
//!    `state.rs`); before that it only gains announce bits.
//! 2. Only the thread that won a node's CAS closes that node's lists for
//!    cancellation, and writes its `work_next`; so each live child is
//!    cancelled exactly once, by exactly one thread.
//! 3. `links` (in the header: `Node::links`) counts the references that
//!    keep the node's *memory* (not its contents) alive: one for all
//!    handles together, dropped at release, and one while an anchor's child
//!    list links it (and one each for a deadline node's armed timer and a
//!    merge's entry in its other parent's list). The memory is freed when
//!    all are gone; the list's reference outlives every reader of the chain
//!    (see `list.rs`). A node with only those two
//!    (`has_list_and_handles_only`) that its remover unlinks from the head
//!    while no pass runs (list invariant 6) gives the list's back with a
//!    store: the remover holds the handles' (a handle, or the release of
//!    the last one), so nobody else can change the count.
//! 4. A released node may still be reached through a frozen chain. Work done
//!    on it then is harmless: it has no waiters (a `Done` holds a handle or
//!    borrows a context that holds one), no
//!    live children (a child holds a handle), and nobody reads its cause.
//! 5. A registered node's `registered` list belongs to an ancestor, alive
//!    until the node is released (node invariant 2).
//! 6. `deadline` is null or points to the `deadline` field of a
//!    [`DeadlineNode`] that outlives the node: the node itself, an ancestor
//!    (node invariant 2), or — for a merged node and its descendants — the
//!    merged node's other parent or one of its ancestors, on which the
//!    merged node holds a handle until it is released (merge.rs). Only a
//!    node whose kind says `timed` is a `DeadlineNode`; only it has a timer
//!    entry.
//! 7. A cancellation touches a list only if something may be in it, and no
//!    entry is missed:
//!    * **Waiter set.** Every push is preceded by an announcement in the
//!      node's active word (`announce`: a CAS adding `HAS_WAITERS`, or a
//!      load that finds it added), and an announcement fails on a done
//!      word. The deciding CAS reads the latest value in the word's
//!      modification order, so it reads every announcement made before it;
//!      one made after it fails. A set whose bit the winner did not read
//!      was never pushed onto and never will be: it is left open and empty.
//!      A set whose bit it read is closed as before: a push racing the
//!      close is ordered with it on the set's head. No fence: both sides
//!      are read-modify-writes of the same two locations.
//!    * **Child list.** A store-buffer pattern instead, so a derivation
//!      pays no read-modify-write on its anchor's word: the deriver pushes
//!      (SeqCst) and then loads the anchor's word (SeqCst); the winner
//!      CASes the word (SeqCst) and then loads the list's head (SeqCst,
//!      `List::is_empty_after_rmw`). In the single total order one of the
//!      two loads sees the other side's write (the argument of list
//!      invariant 6; under loom both sides fence, `list::sb_fence`). If the
//!      winner sees the list empty, it leaves it open, and any deriver
//!      whose push it missed sees the word done and cancels its child
//!      itself (its CAS, then its own removal from the list); otherwise the
//!      winner closes and walks the list as before. A child that both
//!      cancel is decided by its own CAS.
//!
//!    Two read-modify-writes saved per cancelled leaf nobody waited on.
//! 8. Stripes (`stripes.rs`): a node's `stripes` slot is null until a push
//!    onto its own child list loses a CAS to another thread's change of
//!    the head; the loser installs them (one SeqCst CAS; the slot never
//!    changes again while the node's memory lives). A derivation loads the
//!    slot (SeqCst) and pushes onto its thread's stripe if there are
//!    stripes, onto the own list otherwise; `registered` is the list it
//!    pushed onto. The winner of a node's CAS loads the slot after the CAS
//!    (SeqCst, after `sb_fence`): it treats the node as a leaf only if the
//!    own list is empty and there are no stripes, and otherwise closes and
//!    walks the own list and then every stripe. Invariant 7's argument
//!    holds per list: a deriver whose word load misses the cancel pushed
//!    onto a stripe installed before that load, so before the winner's slot
//!    load in the total order, and the winner's close of the stripe sees the
//!    push. The stripes are freed with the node's memory (after its release
//!    closed every stripe with entries left).

use core::fmt;
use core::ptr::{self, NonNull};
use std::time::Instant;

use crossbeam_epoch::Guard;

use crate::error::{Cause, Error};
use crate::list::{Entry, Link, List, release_link_from, sb_fence};
use crate::node::{self, Kind, Merged, Node, NodeRef, Repr};
use crate::node_cache;
use crate::park;
use crate::primitive::UnsafeCell;
use crate::primitive::atomic::{AtomicPtr, Ordering};
use crate::state::{self, CauseBox, Pending, Word};
use crate::stripes::{self, StripeSlot};
use crate::timer::{self, TimerEntry, TimerOwner};
use crate::waiters::{self, Panic, WaiterList};

/// A cancellable context's node.
///
/// Field order is cache-line order (`#[repr(C)]`): `is_done()` reads the
/// header's `anchor` and then `state`, which sit next to each other; the
/// child list, which derivations and drops of children write, comes last,
/// away from them (`docs::internals` has the layout and its measurements).
#[repr(C)]
pub(crate) struct CancelNode {
    pub(crate) node: Node,
    /// The state word: written once, read by every `is_done()`.
    state: AtomicPtr<CauseBox>,
    /// The earliest deadline on the path to the root, or null: the
    /// `deadline` field of the `DeadlineNode` that set it — this node, an
    /// ancestor, or (for a merged node and its descendants) the other
    /// parent or one of its ancestors, which the merged node keeps alive
    /// (invariant 6). Immutable.
    deadline: *const Instant,
    /// This node's entry in `registered`.
    link: Link,
    /// The child list this node is linked into (its anchor's `children`, or
    /// one of the anchor's stripes), or null.
    registered: *const List<CancelNode>,
    pub(crate) waiters: WaiterList,
    /// The propagation work stack (invariant 2): the next node to process,
    /// tagged with `DEFER` when its link reference must go through the
    /// epoch.
    work_next: UnsafeCell<*const CancelNode>,
    /// Written by every derivation and drop of a child.
    children: List<CancelNode>,
    /// Null until children are derived on several threads at once; then
    /// the lists new children go to (invariant 8).
    stripes: StripeSlot<CancelNode>,
}

/// A deadline context's node: a `CancelNode` (whose kind says `timed`),
/// then its timer entry and its own deadline. One allocation, as every
/// context's.
#[repr(C)]
pub(crate) struct DeadlineNode {
    node: CancelNode,
    timer: TimerEntry,
    /// What `CancelNode::deadline` of this node and of its descendants
    /// points to.
    deadline: Instant,
}

/// Tag on a work-stack pointer: release its link reference through the epoch.
const DEFER: usize = 1;

/// A deadline further than this after a clock reading taken just before a
/// derivation cannot pass during it (`CancelNode::derive_deadline`).
const CLOCK_SLACK: core::time::Duration = core::time::Duration::from_millis(1);

// SAFETY: `CancelNode` is pointer-aligned (≥ 2, for the tag bit); `link`
// is a fixed field; the memory stays valid until `links` reaches zero, which
// needs the list's reference to be released.
unsafe impl Entry for CancelNode {
    fn link(&self) -> &Link {
        &self.link
    }

    unsafe fn release_link(this: *const Self) {
        // SAFETY: forwarded (the list's reference on the memory).
        unsafe { CancelNode::release_memory(this) }
    }

    unsafe fn release_link_unlinked(this: *const Self) {
        // SAFETY: the remover's reference keeps the node alive.
        let node = unsafe { &*this };
        if node.has_list_and_handles_only() {
            // Invariant 3: the memory has two references, the list's (ours
            // now) and the handles', which the remover holds (it holds a
            // handle, or is releasing the last one): nobody else can change
            // the count, so no read-modify-write.
            // Checked in debug builds and in every loom schedule.
            if cfg!(any(debug_assertions, loom)) {
                assert_eq!(node.node.links.load(Ordering::Relaxed), 2);
            }
            // Ordering: Release — as the decrement it stands for: pairs
            // with the Acquire load of whoever frees.
            node.node.links.store(1, Ordering::Release);
        } else {
            // SAFETY: forwarded.
            unsafe { CancelNode::release_memory(this) }
        }
    }
}

// SAFETY: all shared mutable state is atomic or behind the protocol of the
// module docs (`work_next`: invariant 2); raw pointers point into ancestors
// that outlive the node.
unsafe impl Send for CancelNode {}
// SAFETY: as above.
unsafe impl Sync for CancelNode {}

impl Node {
    /// Whether someone holding only a reference on this node's memory may
    /// still take a handle on it (`NodeRef::try_acquire`): the timer
    /// thread, on a deadline node whose entry it may yet claim (timer
    /// invariant 3), and a merge's dispatch, on a merged node (merge
    /// invariant 1). No one else ever does, so for other nodes a handle
    /// count of one is its holder's alone (`Node::give_back`).
    ///
    /// (A cheap check of the state the last handle usually finds: a
    /// deadline context cancelled before it is dropped, its entry
    /// disarmed.)
    #[inline]
    pub(crate) fn upgradable(this: NonNull<Node>) -> bool {
        // SAFETY: every caller holds a handle or a memory reference; the
        // kind is immutable.
        match unsafe { this.as_ref() }.kind {
            Kind::Cancel {
                merged: Merged::Node,
                ..
            } => true,
            // SAFETY: a deadline node's entry, valid as its node is.
            Kind::Cancel { timed: true, .. } => unsafe {
                timer::may_claim(DeadlineNode::timer_entry(this.as_ptr().cast()))
            },
            _ => false,
        }
    }

    /// The nearest cancellable node, if any (node invariant 4): the typed
    /// view of the type-erased `anchor`.
    #[inline]
    pub(crate) fn anchor(&self) -> Option<&CancelNode> {
        // SAFETY: node invariants 4 and 2 — the anchor heads a `CancelNode`
        // that is this node or an ancestor, alive while this node is.
        unsafe { self.anchor.cast::<CancelNode>().as_ref() }
    }
}

impl Repr {
    /// The nearest cancellable node of this context, if any.
    #[inline]
    pub(crate) fn anchor(&self) -> Option<&CancelNode> {
        match self {
            Repr::Node(node) => node.anchor(),
            Repr::Background | Repr::Todo => None,
        }
    }
}

impl Repr {
    /// What a node derived from this context starts its `deadline` with.
    #[inline]
    pub(crate) fn deadline_ptr(&self) -> *const Instant {
        self.anchor().map_or(ptr::null(), CancelNode::deadline_ptr)
    }
}

impl DeadlineNode {
    /// The timer entry of the deadline node `this` heads, through a pointer
    /// with the provenance of `this` (the timer pushes, withdraws and frees
    /// through it).
    #[inline]
    fn timer_entry(this: *const CancelNode) -> NonNull<TimerEntry> {
        // SAFETY: every caller's `this` heads a live `DeadlineNode` (its
        // kind says `timed`); an in-bounds projection of a non-null pointer
        // is non-null.
        unsafe {
            NonNull::new_unchecked((&raw const (*this.cast::<DeadlineNode>()).timer).cast_mut())
        }
    }

    /// The node holding `entry`.
    ///
    /// # Safety
    ///
    /// `entry` is the `timer` field of a `DeadlineNode` (`timer_entry`).
    unsafe fn of_timer(entry: NonNull<TimerEntry>) -> NonNull<CancelNode> {
        // SAFETY: the field lies `offset_of!` bytes into the node, and the
        // pointer keeps the node's provenance (`timer_entry`).
        unsafe {
            NonNull::new_unchecked(
                entry
                    .as_ptr()
                    .byte_sub(core::mem::offset_of!(DeadlineNode, timer))
                    .cast::<CancelNode>(),
            )
        }
    }
}

impl CancelNode {
    /// Derives a cancellable child of `parent`, with `handles` handles.
    /// Registers it with `parent`'s anchor, or makes it done at once if the
    /// anchor already is (invariant: done before the derivation returns).
    /// The usual child of a root is `derive_fast`'s; the rest
    /// `derive_general`'s.
    #[inline]
    pub(crate) fn derive(parent: &Repr, handles: u32) -> NonNull<CancelNode> {
        match CancelNode::derive_fast(parent, handles) {
            Some(node) => node,
            None => CancelNode::derive_general(parent, handles),
        }
    }

    /// `derive` of a child of a root with a cached block at hand (the
    /// usual case under `background()`), built by a leaf: no anchor to
    /// register with, no deadline to inherit, nothing called; `None`, and
    /// nothing done, otherwise. Inlined (through `derive`) into
    /// `with_cancel`, itself inlined, so it runs in the caller's frame with
    /// no call and no register spills of its own — the stores a
    /// derivation makes are what its first handle's locked decrement
    /// waits for (`docs::internals`, "Where the time goes").
    #[inline(always)]
    pub(crate) fn derive_fast(parent: &Repr, handles: u32) -> Option<NonNull<CancelNode>> {
        let (Repr::Background | Repr::Todo) = parent else {
            return None;
        };
        let raw = node_cache::take_fast::<CancelNode>(PLAIN_BIN)?;
        // SAFETY: an exclusively owned, uninitialised block for a
        // `CancelNode`, from `PLAIN`'s bin: `PLAIN`'s allocation.
        unsafe {
            CancelNode::init(
                raw,
                Node::new(handles, &PLAIN.kind, parent.clone(), raw.cast::<Node>()),
                ptr::null(),
                1,
            );
            Some(NonNull::new_unchecked(raw))
        }
    }

    /// `derive` of any other case.
    #[inline(never)]
    pub(crate) fn derive_general(parent: &Repr, handles: u32) -> NonNull<CancelNode> {
        let deadline = Repr::deadline_ptr(parent);
        CancelNode::derive_shaped(parent, handles, deadline, 1, &PLAIN, |_| {})
    }

    /// Derives a deadline node: `deadline` must be earlier than the
    /// parent's. Cancels it at once if the deadline has passed, otherwise
    /// arms its timer.
    ///
    /// The clock is read after the node is built, as Go's
    /// `time.Until(d) <= 0` check: a deadline that has passed by then,
    /// however short the timeout, is done before the derivation returns
    /// (API rule 7). `timeout`: the caller (`with_timeout`) made `deadline`
    /// as a clock reading it took just before plus `timeout`; that reading
    /// stands in for a new one when `timeout` exceeds `CLOCK_SLACK`:
    /// building the node takes well under that, and a thread preempted for
    /// longer between the two points is indistinguishable from one
    /// preempted right after the check, which Go has too. So long timeouts
    /// skip a clock read and the wheel's placement a second clock
    /// subtraction; short ones never do.
    ///
    /// `timer_owner` is how the timer treats the node
    /// (`CancelNode::timer_owner`). `cause` makes the expiry's cause: a
    /// closure rather than an `Option<Cause>`, so that the common `None`
    /// is a constant in its own copy of this function. (Passed as a value,
    /// the 24-byte option went through the caller's stack: an 8-byte store
    /// of its tag read back as 16 bytes, a store-to-load forwarding stall
    /// that was a third of this function's samples under `perf`.)
    pub(crate) fn derive_deadline(
        parent: &Repr,
        handles: u32,
        deadline: Instant,
        cause: impl FnOnce() -> Option<Cause>,
        timeout: Option<core::time::Duration>,
        timer_owner: &'static TimerOwner,
    ) -> NonNull<CancelNode> {
        // The memory starts with the wheel list's reference counted (invariant
        // 3 and timer invariant 2), saving the arming a read-modify-write.
        let raw = CancelNode::derive_shaped(parent, handles, ptr::null(), 2, &DEADLINE, |raw| {
            let timed = raw.cast::<DeadlineNode>();
            // SAFETY: `DEADLINE`'s allocation, still exclusively ours; the
            // two fields are written once, here.
            unsafe {
                (&raw mut (*timed).timer).write(TimerEntry::new(cause()));
                (&raw mut (*timed).deadline).write(deadline);
                (*raw).deadline = &raw const (*timed).deadline;
            }
        });
        // SAFETY: we hold the handles just created.
        let node = unsafe { raw.as_ref() };
        let entry = DeadlineNode::timer_entry(raw.as_ptr());
        // How far the deadline lies after a clock reading taken during the
        // derivation; zero once it has passed (`time.Until(d) <= 0`).
        let remaining = match timeout {
            Some(timeout) if timeout > CLOCK_SLACK => timeout,
            _ => deadline.saturating_duration_since(Instant::now()),
        };
        if !node.is_done() && !remaining.is_zero() {
            // SAFETY: a deadline entry, with the node's provenance; the
            // wheel's reference, counted at construction.
            unsafe { timer::arm(entry, deadline, remaining, timer_owner) };
            // A cancellation that ran before `ARMED` was visible could not
            // disarm: do it for it.
            if node.is_done() {
                // SAFETY: we hold handles; the node's provenance.
                unsafe { timer::disarm(entry) };
            }
        } else {
            if !node.is_done() {
                // SAFETY: the entry of a live deadline node (our handles).
                node.cancel(Error::DeadlineExceeded, unsafe { entry.as_ref() }.cause());
            }
            // Never armed: give the wheel's reference back (never the last
            // one: the handles hold theirs).
            // SAFETY: the reference counted at construction, unused.
            unsafe { CancelNode::release_memory(raw.as_ptr()) };
        }
        raw
    }

    /// One heap allocation, initialised field by field in place (building
    /// the node on the stack and moving it into a `Box` cost a `memmove`
    /// that once showed up as a quarter of `with_cancel` + `cancel`).
    ///
    /// `shape` says which allocation: a plain `CancelNode`, a
    /// `DeadlineNode`, or a layer's (`merge::MergeNode`), whose own fields
    /// the layer writes afterwards.
    /// The node is its own anchor (node invariant 4).
    fn alloc(
        handles: u32,
        parent: Repr,
        deadline: *const Instant,
        links: u32,
        shape: &'static Shape,
    ) -> *mut CancelNode {
        let raw = (shape.alloc)();
        let node = Node::new(handles, &shape.kind, parent, raw.cast::<Node>());
        // SAFETY: a fresh allocation of `shape`, which starts with a
        // `CancelNode`.
        unsafe { CancelNode::init(raw, node, deadline, links) };
        raw
    }

    /// Writes a new node's fields: `node` is its header, its anchor
    /// (`raw`) included.
    ///
    /// # Safety
    ///
    /// `raw` points to an exclusively owned, properly aligned,
    /// uninitialised allocation that starts with a `CancelNode`.
    #[inline(always)]
    unsafe fn init(raw: *mut CancelNode, node: Node, deadline: *const Instant, links: u32) {
        // Invariant 3, counted in the header (`Node::links`).
        let node = node.with_links(links);
        // SAFETY: per the contract; every field is written exactly once
        // below, so the node is fully initialised after.
        unsafe {
            (&raw mut (*raw).node).write(node);
            (&raw mut (*raw).deadline).write(deadline);
            (&raw mut (*raw).state).write(AtomicPtr::new(state::ACTIVE));
            (&raw mut (*raw).link).write(Link::new());
            (&raw mut (*raw).registered).write(ptr::null());
            (&raw mut (*raw).children).write(List::new());
            (&raw mut (*raw).waiters).write(List::new());
            (&raw mut (*raw).work_next).write(UnsafeCell::new(ptr::null()));
            (&raw mut (*raw).stripes).write(StripeSlot::new());
        }
    }

    /// Derives a cancellable child of `parent` allocated per `shape` (a
    /// layer's, whose own fields the caller writes before sharing any
    /// handle, or a marked plain node), with `deadline` as its earliest
    /// deadline (`CancelNode::deadline`) and no timer of its own.
    /// `links` counts the memory references the caller wants (1: the
    /// handles'; a layer may count one more for itself, saving a
    /// read-modify-write later).
    pub(crate) fn derive_with_shape(
        parent: &Repr,
        handles: u32,
        deadline: *const Instant,
        links: u32,
        shape: &'static Shape,
    ) -> NonNull<CancelNode> {
        CancelNode::derive_shaped(parent, handles, deadline, links, shape, |_| {})
    }

    /// The derivation. `links`: the memory references the caller wants
    /// besides the list's (1: the handles'; 2: also a timer wheel list's).
    /// `init` writes the rest of the shape's allocation (a deadline node's
    /// timer) before the node is published.
    fn derive_shaped(
        parent: &Repr,
        handles: u32,
        deadline: *const Instant,
        links: u32,
        shape: &'static Shape,
        init: impl FnOnce(*mut CancelNode),
    ) -> NonNull<CancelNode> {
        let anchor = parent.anchor_ptr().cast::<CancelNode>();
        let raw = CancelNode::alloc(handles, parent.clone(), deadline, links, shape);
        init(raw);
        // SAFETY: `raw` is a fresh, exclusively owned allocation until it is
        // pushed below.
        unsafe {
            if let Some(anchor) = anchor.as_ref() {
                // Ordering: Acquire — pairs with the winning CAS, so a done
                // word's cause box is visible before we borrow it.
                let word = anchor.state.load(Ordering::Acquire);
                if state::is_done(word) {
                    (*raw).state.store(state::inherit(word), Ordering::Relaxed);
                } else {
                    (*raw).node.links.store(links + 1, Ordering::Relaxed);
                    // Invariant 8: the anchor's own list until children are
                    // derived on several threads at once, then this
                    // thread's stripe.
                    let stripes = anchor.stripes.get();
                    let list = match stripes {
                        None => &anchor.children,
                        Some(stripes) => stripes.list(stripes::index()),
                    };
                    (*raw).registered = list;
                    // Invariant 7: a SeqCst push, then a SeqCst load of the
                    // anchor's word (the store-buffer pattern with the
                    // canceller's CAS and its load of our list's head).
                    if let Ok(contended) = list.push_seqcst_contended(raw) {
                        sb_fence();
                        let word = anchor.state.load(Ordering::SeqCst);
                        if contended && stripes.is_none() && !state::is_done(word) {
                            anchor.stripes.install();
                        }
                        if state::is_done(word) {
                            // The canceller may have found the list empty
                            // and left it alone: cancel ourselves as its
                            // propagation would (whoever wins our CAS also
                            // unlinks us from the anchor's list).
                            if let Some(active) = (*raw).decide(state::inherit(word)) {
                                (*raw).after_decided(state::inherit(word), active);
                            }
                        }
                    } else {
                        // Closed: the anchor is done (it closes only after
                        // its CAS; the failed push loaded CLOSED with
                        // Acquire). Never linked, so still exclusive.
                        (*raw).node.links.store(links, Ordering::Relaxed);
                        (*raw).registered = ptr::null();
                        // Ordering: Acquire — as above.
                        let word = anchor.state.load(Ordering::Acquire);
                        (*raw).state.store(state::inherit(word), Ordering::Relaxed);
                    }
                }
            }
            NonNull::new_unchecked(raw)
        }
    }

    /// The earliest deadline on the path to the root.
    #[inline]
    pub(crate) fn deadline(&self) -> Option<Instant> {
        // SAFETY: null, or a `DeadlineNode`'s immutable `deadline` that
        // outlives this node (the field's docs).
        unsafe { self.deadline.as_ref() }.copied()
    }

    /// What `deadline` points to, for a node derived from this one (or
    /// merged with it).
    #[inline]
    pub(crate) fn deadline_ptr(&self) -> *const Instant {
        self.deadline
    }

    /// Whether only the handles and one list can hold references on this
    /// node's memory (invariant 3): not a deadline node (its timer holds
    /// one too) nor a merge with a derived context (its entry in the other
    /// parent's list holds one).
    #[inline]
    fn has_list_and_handles_only(&self) -> bool {
        matches!(
            self.node.kind,
            Kind::Cancel {
                timed: false,
                merged: Merged::No | Merged::Background | Merged::Todo,
                ..
            }
        )
    }

    /// Whether this is a `DeadlineNode` (made by the deadline variants).
    #[inline]
    pub(crate) fn is_timed(&self) -> bool {
        matches!(self.node.kind, Kind::Cancel { timed: true, .. })
    }

    /// This node's timer entry if it is a deadline node.
    #[inline]
    fn own_timer(this: *const CancelNode) -> Option<NonNull<TimerEntry>> {
        // SAFETY: every caller's `this` is a valid node; its kind is
        // immutable.
        unsafe { (*this).is_timed() }.then(|| DeadlineNode::timer_entry(this))
    }

    /// How the timer treats a deadline node's entry (timer.rs names no
    /// kind of node); `drop_detached` drops a last handle off the timer
    /// thread (timer invariant 6). Composed in context.rs.
    pub(crate) const fn timer_owner(drop_detached: fn(NodeRef)) -> TimerOwner {
        /// # Safety
        ///
        /// `entry` is a `CancelNode`'s (all four below).
        unsafe fn node(entry: NonNull<TimerEntry>) -> NonNull<Node> {
            // SAFETY: forwarded; the header is the first field.
            unsafe { DeadlineNode::of_timer(entry) }.cast()
        }
        /// # Safety
        ///
        /// As `node`, and the memory is valid.
        unsafe fn acquire_memory(entry: NonNull<TimerEntry>) {
            // SAFETY: forwarded.
            unsafe { DeadlineNode::of_timer(entry).as_ref() }.acquire_memory();
        }
        /// # Safety
        ///
        /// As `node`; the caller owns a memory reference and gives it up.
        unsafe fn release_memory(entry: NonNull<TimerEntry>) {
            // SAFETY: forwarded.
            unsafe { CancelNode::release_memory(DeadlineNode::of_timer(entry).as_ptr()) }
        }
        /// # Safety
        ///
        /// As `node`; the caller holds a handle on the node.
        unsafe fn expire(entry: NonNull<TimerEntry>) {
            // SAFETY: forwarded: the handle keeps the node alive.
            let node = unsafe { DeadlineNode::of_timer(entry).as_ref() };
            // SAFETY: as above.
            node.cancel(Error::DeadlineExceeded, unsafe { entry.as_ref() }.cause());
        }
        TimerOwner {
            node,
            acquire_memory,
            release_memory,
            expire,
            drop_detached,
        }
    }

    /// Takes one more reference on the memory (for the timer's sweep; loom
    /// models arm and fire timers by hand, without it).
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn acquire_memory(&self) {
        // Ordering: Relaxed — taken from a live node, like a handle clone.
        self.node.links.fetch_add(1, Ordering::Relaxed);
    }

    /// The current state word.
    #[inline]
    pub(crate) fn word(&self) -> Word {
        // Ordering: Acquire — pairs with the Release half of the winning
        // CAS, so the cause box is visible before it is decoded.
        self.state.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn is_done(&self) -> bool {
        state::is_done(self.word())
    }

    #[inline]
    pub(crate) fn err(&self) -> Option<Error> {
        state::err(self.word())
    }

    pub(crate) fn cause(&self) -> Option<Cause> {
        // SAFETY: a cause pointer in our word is owned by us or borrowed from
        // an ancestor (state.rs); both outlive `&self`.
        unsafe { state::cause(self.word()) }
    }

    /// Live children registered with this node (diagnostics): linked, not
    /// removed and not done. Zero once the node is done, even while the
    /// canceller (another thread, the timer) has yet to close the list; and
    /// a child that is done but has yet to deregister itself (its canceller
    /// sets the state word first) does not count: from then on neither waits
    /// for a future cancellation. The fuzzer caught both windows under load.
    pub(crate) fn registered_children(&self) -> usize {
        if self.is_done() {
            return 0;
        }
        self.child_lists()
            .map(|list| list.live(|child| !child.is_done()))
            .sum()
    }

    /// Children still physically linked, including removed ones not yet
    /// unlinked (to observe bounded memory under churn).
    pub(crate) fn linked_children(&self) -> usize {
        self.child_lists().map(List::linked).sum()
    }

    /// The lists children register in: the node's own, then its stripes'
    /// if it has any (invariant 8).
    fn child_lists(&self) -> impl Iterator<Item = &List<CancelNode>> {
        let stripes = self.stripes.get().into_iter().flat_map(|s| s.lists());
        core::iter::once(&self.children).chain(stripes)
    }

    /// Whether no child can be linked to this node, read by the winner of
    /// its CAS (invariant 7's store-buffer load: `sb_fence`, then SeqCst
    /// loads of the list's head and of the stripes, invariant 8). A node
    /// with stripes counts as having children: its lists are closed as a
    /// parent's.
    #[inline]
    fn childless_after_rmw(&self) -> bool {
        self.children.is_empty_after_rmw() && self.stripes.get().is_none()
    }

    /// Cancels with the error and cause of `word`, the done word of a node
    /// this one does not descend from (a merged context's other parent,
    /// merge.rs), borrowing its cause box as propagation does. Returns
    /// whether this call decided the cancellation.
    ///
    /// # Safety
    ///
    /// `word` is done, and whatever owns its cause box outlives this node
    /// and every node that may inherit from it (the merged node holds a
    /// handle on its other parent until it is released).
    pub(crate) unsafe fn cancel_inherited(&self, word: Word) -> bool {
        let word = state::inherit(word);
        // As in `cancel`; the word's borrowed box was published to the
        // caller by the Acquire load of the other node's word.
        let Some(active) = self.decide(word) else {
            return false;
        };
        self.after_decided(word, active);
        true
    }

    /// Cancels with `error` and `cause` (the error itself when `None`).
    /// Returns whether this call decided the cancellation.
    pub(crate) fn cancel(&self, error: Error, cause: Option<Cause>) -> bool {
        let pending = Pending::new(error, cause);
        let (word, boxed) = match pending {
            Pending::Inline(word) => (word, ptr::null_mut()),
            Pending::Boxed(cause, error) => {
                let raw = Box::into_raw(cause);
                let err_bits = match error {
                    Error::Canceled => 0,
                    Error::DeadlineExceeded => state::DEADLINE,
                };
                (state::boxed_word(raw, state::DONE | err_bits), raw)
            }
        };
        let Some(active) = self.decide(word) else {
            if !boxed.is_null() {
                // SAFETY: we lost, so the box was never published.
                drop(unsafe { Box::from_raw(boxed) });
            }
            return false;
        };
        self.after_decided(word, active);
        true
    }

    /// Step 1 of the protocol: the CAS from the current active word to
    /// `word` (done), retried while announcements change the active word.
    /// Returns the active word it replaced — its announce bits say whether
    /// the winner must close the waiter set — or `None` if the node was
    /// already done.
    #[inline]
    fn decide(&self, word: Word) -> Option<Word> {
        // Ordering: Acquire — a done word's cause box and the canceller's
        // writes are visible to a loser, as to any reader; otherwise only
        // the expected value for the CAS.
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if state::is_done(current) {
                return None;
            }
            // Ordering: SeqCst (AcqRel and more) — Release publishes the
            // cause box with the word (pairs with `word()`); Acquire orders
            // our list operations after the pushes the announce bits we read
            // announced (every announce precedes its push); SeqCst for the
            // store-buffer pattern with derivations (invariant 7, child
            // list). The same instruction as AcqRel on x86-64. Failure:
            // Acquire, as the load.
            match self
                .state
                .compare_exchange(current, word, Ordering::SeqCst, Ordering::Acquire)
            {
                Ok(active) => return Some(active),
                Err(actual) => current = actual,
            }
        }
    }

    /// Announces, before a push onto this node's waiter set
    /// (`HAS_WAITERS`) or a park on its sequence word (`HAS_PARKED`), that
    /// a cancellation must close the set or wake the word (invariant 7).
    /// False if the node is done: the caller must not push or park.
    #[inline]
    pub(crate) fn announce(&self, bit: usize) -> bool {
        // Ordering: Acquire — pairs with the winning CAS, so a done word's
        // cause box is visible before a caller borrows it.
        self.announce_from(self.state.load(Ordering::Acquire), bit)
    }

    /// `announce`, starting from `current`, a word the caller has just read
    /// with Acquire (a poll that read it to test for done saves a load).
    #[inline]
    pub(crate) fn announce_from(&self, mut current: Word, bit: usize) -> bool {
        loop {
            if state::is_done(current) {
                return false;
            }
            // Announced already (by an RMW that the cancelling CAS, later in
            // the word's modification order, reads): the usual case.
            if state::announces(current, bit) {
                return true;
            }
            // Ordering: success Relaxed — the bit publishes nothing: the
            // entry is published by the push; only the modification order
            // matters (the cancelling CAS reads the bit or we read done).
            // Failure: Acquire, as the caller's load.
            match self.state.compare_exchange_weak(
                current,
                state::announcing(current, bit),
                Ordering::Relaxed,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// `announce(HAS_WAITERS)`, for a waiter or callback about to be pushed
    /// onto `waiters`: false if the node is done (do not push).
    #[inline]
    pub(crate) fn announce_waiter(&self) -> bool {
        self.announce(state::HAS_WAITERS)
    }

    /// Blocks the calling thread until this node is done (true) or
    /// `deadline` passes (false, unless it is done by then): parked on the
    /// node's sequence word, announced with `HAS_PARKED` (`park.rs` has the
    /// protocol). Only where `park::SUPPORTED`.
    pub(crate) fn park_until(&self, deadline: Option<Instant>) -> bool {
        let addr = ptr::from_ref(self).addr();
        loop {
            let sequence = park::sequence(addr);
            if !self.announce(state::HAS_PARKED) {
                return true;
            }
            let timeout = match deadline {
                None => None,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return self.is_done(),
                },
            };
            park::park(addr, sequence, timeout);
        }
    }

    /// Steps 2 and 3 of the protocol, for the winner of the CAS from
    /// `active` to `word`.
    fn after_decided(&self, word: Word, active: Word) {
        if let Some(entry) = CancelNode::own_timer(self) {
            // SAFETY: the caller holds a handle; the pointer has the
            // provenance of `self`, as every disarm's.
            unsafe { timer::disarm(entry) };
        }
        if let Some(registered) =
            // SAFETY: invariant 5.
            unsafe { self.registered.as_ref() }
        {
            // SAFETY: we were pushed onto exactly this list.
            unsafe { registered.remove(self) };
        }
        self.propagate(state::inherit(word), active);
    }

    /// Wakes this node's waiters and cancels its subtree with `word`
    /// (invariant 2), iteratively; `active` is the word our CAS replaced
    /// (invariant 7: a waiter set it does not announce, and an empty child
    /// list, are left alone).
    fn propagate(&self, word: Word, active: Word) {
        if state::announces(active, state::HAS_PARKED) {
            park::wake_all(ptr::from_ref(self).addr());
        }
        let panic = if state::announces(active, state::HAS_WAITERS) {
            waiters::wake_all(&self.waiters)
        } else {
            None
        };
        // A leaf (the usual cancel): its empty child list is left open
        // (invariant 7), with no chain to walk.
        if self.childless_after_rmw() {
            if let Some(payload) = panic {
                std::panic::resume_unwind(payload);
            }
            return;
        }
        self.propagate_subtree(word, panic);
    }

    /// `propagate` below a node with children (its waiters woken already;
    /// `panic` holds a waker's panic payload from that).
    fn propagate_subtree(&self, word: Word, mut panic: Option<Panic>) {
        let mut guard: Option<Guard> = None;
        // The intrusive work stack: `DEFER`-tagged nodes, null when empty.
        let mut stack: *const CancelNode = ptr::null();
        let mut current: *const CancelNode = self;
        let mut current_tag: Option<*const CancelNode> = None;
        loop {
            // SAFETY: `self`, or a node whose link reference we hold (pushed
            // below), so its memory is valid (invariant 3). Its waiters are
            // woken already (above, or when its CAS was won).
            let node = unsafe { &*current };
            // Invariant 8: the node's own list, then its stripes' (loaded
            // after our CAS, or after the CAS that won this child).
            for list in node.child_lists() {
                let mut chain = list.close();
                // Unfrozen: a child removed behind our back (its own cancel, its
                // release) is settled by its state CAS below, or is released
                // (invariant 4), whichever mark we read.
                while let Some((child, removed)) = chain.next_entry_unfrozen() {
                    // SAFETY: the chain holds the child's link reference.
                    let child_ref = unsafe { &*child };
                    // `decide` publishes the inherited word (its borrowed cause
                    // box was published to us by our own CAS).
                    let won = if removed {
                        None
                    } else {
                        child_ref.decide(word)
                    };
                    if let Some(active) = won {
                        // The child is valid: we hold its link reference, or its
                        // list is frozen by our close.
                        if let Some(entry) = CancelNode::own_timer(child_ref) {
                            // SAFETY: valid, as just said.
                            unsafe { timer::disarm(entry) };
                        }
                        // Wake the child's waiters now, while its memory is in
                        // cache; a leaf needs nothing more (its empty child
                        // list stays open, invariant 7) — a fanout of a million
                        // children is then one pass over them, not two.
                        if state::announces(active, state::HAS_PARKED) {
                            park::wake_all(child.addr());
                        }
                        if state::announces(active, state::HAS_WAITERS)
                            && let Some(payload) = waiters::wake_all(&child_ref.waiters)
                        {
                            panic.get_or_insert(payload);
                        }
                        if child_ref.childless_after_rmw() {
                            // SAFETY: yielded by this chain, released once.
                            unsafe { chain.release(child) };
                            continue;
                        }
                        // Keep the link reference until the child is processed.
                        let defer = if chain.deferring() { DEFER } else { 0 };
                        let tagged = child.map_addr(|addr| addr | defer);
                        child_ref.work_next.with_mut(|next| {
                            // SAFETY: we won the child's CAS: its `work_next` is
                            // ours (invariant 2).
                            unsafe { *next = stack }
                        });
                        stack = tagged;
                    } else {
                        // SAFETY: yielded by this chain, released once.
                        unsafe { chain.release(child) };
                    }
                }
                drop(chain);
            }
            if let Some(tag) = current_tag {
                let guard = if tag.addr() & DEFER != 0 {
                    Some(&*guard.get_or_insert_with(crossbeam_epoch::pin))
                } else {
                    None
                };
                // SAFETY: we kept this link reference when we pushed the node
                // and release it once, after processing it.
                unsafe { release_link_from(guard, current) };
            }
            if stack.is_null() {
                break;
            }
            current = stack.map_addr(|addr| addr & !DEFER);
            current_tag = Some(stack);
            // SAFETY: we hold its link reference; `work_next` is ours.
            stack = unsafe { &*current }.work_next.with(|next| unsafe { *next });
        }
        if let Some(guard) = guard {
            // As in the cleanup pass: let the deferred releases be collected.
            guard.flush();
        }
        // The whole subtree is cancelled and woken: only now let a waker's
        // panic continue, on the cancelling thread.
        if let Some(payload) = panic {
            std::panic::resume_unwind(payload);
        }
    }

    /// Tears the node down once its last handle is gone (node.rs release
    /// loop; the parent has already been moved out and is alive). User data
    /// is dropped here, after the bookkeeping, each drop contained: a panic
    /// goes into `panic` and the teardown goes on (node invariant 5).
    ///
    /// # Safety
    ///
    /// `this` heads a `CancelNode` (its kind is `Kind::Cancel`) and was
    /// just released (no handles left).
    pub(crate) unsafe fn retire(this: NonNull<Node>, panic: &mut Option<Panic>) {
        let this = this.cast::<CancelNode>();
        // SAFETY: the memory is valid until `release_memory` below.
        let node = unsafe { this.as_ref() };
        // SAFETY: released, and the caller still holds our parent.
        unsafe { node.deregister_released() };
        // The usual node is done with (`nothing_left`). The rest is out of
        // line, which keeps this path's registers (and its prologue) few.
        if node.nothing_left() {
            // SAFETY: forwarded.
            unsafe { CancelNode::retire_timer_and_memory(this, panic) };
        } else {
            // SAFETY: forwarded; the node is still ours.
            unsafe { CancelNode::retire_rest(this, panic) };
        }
    }

    /// `retire` of a node with children or waiter entries left, stripes,
    /// or a cause in its state word: closes and drops what is left, then
    /// ends as every `retire` does.
    ///
    /// # Safety
    ///
    /// As `retire`, whose bookkeeping of `registered` is done.
    #[cold]
    #[inline(never)]
    unsafe fn retire_rest(this: NonNull<CancelNode>, panic: &mut Option<Panic>) {
        // SAFETY: the memory is valid until `release_memory` below.
        let node = unsafe { this.as_ref() };
        // Every child and waiter left is a released or withdrawn entry
        // (invariant 4): closing drops the list's references on them.
        // Nothing can be linked any more (linking needs a handle), so an
        // empty list needs no closing: skip its SeqCst swap and fence. (The
        // stripes themselves are freed with the memory: a propagation that
        // reached this node through a frozen chain may still close them.)
        for list in node.child_lists() {
            if !list.is_empty() {
                drop(list.close());
            }
        }
        // No thread or task can be waiting (a `Done` holds a handle, or
        // borrows a context that does); what
        // is left is withdrawn entries and callbacks whose `AfterFunc` was
        // dropped — the context can no longer be done, so they never run.
        if !node.waiters.is_empty()
            && let Some(payload) = waiters::drain(&node.waiters)
        {
            panic.get_or_insert(payload);
        }
        let word = node.word();
        if state::owns_cause(word) {
            // SAFETY: we own the box; nobody dereferences it any more: every
            // node borrowing it was a descendant, and they are all released.
            let cause = unsafe { Box::from_raw(state::cause_ptr(word)) };
            waiters::contain(panic, move || drop(cause));
        }
        // SAFETY: forwarded.
        unsafe { CancelNode::retire_timer_and_memory(this, panic) };
    }

    /// The end of every `retire`: disarms a deadline node's timer, drops
    /// its timer cause, and gives the handles' reference on the memory
    /// back. (The disarm may come after the rest of the teardown: the node
    /// is released, so its timer cannot take a handle to cancel it —
    /// its count is zero, or its entry was `DISARMED` already,
    /// `Node::give_back`.)
    ///
    /// # Safety
    ///
    /// As `retire`; the caller is done with the node.
    #[inline(always)]
    unsafe fn retire_timer_and_memory(this: NonNull<CancelNode>, panic: &mut Option<Panic>) {
        if let Some(entry) = CancelNode::own_timer(this.as_ptr()) {
            // SAFETY: the memory is valid until `release_memory` below.
            unsafe { timer::disarm(entry) };
            // SAFETY: released: nobody reads the timer's cause any more.
            if let Some(cause) = unsafe { entry.as_ref().take_cause() } {
                drop_cause(panic, cause);
            }
        }
        // SAFETY: the handles' reference on the memory.
        unsafe { CancelNode::release_memory(this.as_ptr()) };
    }

    /// `Kind::Cancel::free_quiet` of a plain `CancelNode`: `retire`'s usual
    /// case (no child or waiter entry left, no stripes, no cause of its
    /// own) taken whole, the free included, with no panic to contain: the
    /// node is deregistered and its memory reference dropped, and true is
    /// returned. Otherwise returns false having changed nothing, for
    /// `retire`.
    ///
    /// The checks come before the deregistration (`retire` has them after
    /// it): a released node's lists only ever close (a propagation that
    /// reaches it through a frozen chain), so an empty one stays empty, and
    /// a propagation leaves an inherited word, never a cause of our own.
    ///
    /// # Safety
    ///
    /// `this` heads a plain `CancelNode` and was just released (no handles
    /// left); its parent handle is still held.
    #[inline(always)]
    unsafe fn free_if_quiet(this: NonNull<Node>) -> bool {
        let raw = this.cast::<CancelNode>();
        // SAFETY: the memory is valid until `release_memory` below.
        let node = unsafe { raw.as_ref() };
        if !node.nothing_left() {
            return false;
        }
        // SAFETY: released, and the caller still holds our parent.
        unsafe { node.deregister_released() };
        // The handles' reference on the memory, as `release_memory` drops
        // it (a plain node has no timer to disarm), freed without the
        // kind's indirection: the shape is known.
        // SAFETY: the handles' reference, given back once.
        if unsafe { CancelNode::drop_memory_reference(raw.as_ptr()) } {
            // SAFETY: the last reference on a plain `CancelNode`, allocated
            // by `alloc_as::<CancelNode>`; the parent is the caller's.
            unsafe { free_as::<CancelNode>(this.as_ptr()) };
        }
        true
    }

    /// `Kind::Cancel::release_quiet` of a plain `CancelNode`, whose last
    /// handle just went: frees it with `free_if_quiet` and goes on up the
    /// chain — giving back the parent handle each node held, after its
    /// free (node invariant 2) and without recursing (invariant 3) — for
    /// as long as the ancestors it releases are plain and quiet. The first
    /// node that is not goes to `node::release_slow`, whole; a released
    /// parent of another kind to `node::release_last`.
    ///
    /// Two levels, so that the usual child of a root pays no frame (the
    /// stores of register spills are what the next node's first locked
    /// decrement waits to drain; `docs::internals`, "Where the time
    /// goes"): this function, a leaf, frees that child;
    /// `release_plain_general` is the loop for everything else, with
    /// `free_if_quiet` inlined (no call through the kind).
    ///
    /// # Safety
    ///
    /// `this` heads a plain `CancelNode` whose last handle just went
    /// (`Node::give_back` said so).
    #[inline(never)]
    unsafe fn release_plain(this: NonNull<Node>) {
        let raw = this.cast::<CancelNode>();
        // SAFETY: released: ours until it is freed.
        let node = unsafe { raw.as_ref() };
        // The usual child of a root, freed by a leaf (nothing called, so no
        // register spills, which the next derivation's first locked
        // decrement would wait to drain): `free_if_quiet`'s case with no
        // list to leave and no parent handle, its memory reference ours
        // alone (`drop_memory_reference`'s load), its block taken by
        // `node_cache::give_fast`. Anything else, or a cache that cannot
        // take the block, goes the general way below, from the start.
        if node.registered.is_null()
            // SAFETY: released, not yet freed; a child of a root has no
            // parent handle to take over.
            && unsafe { Node::parent_node(this) }.is_none()
            && node.nothing_left()
            // Ordering: Acquire — as in `drop_memory_reference`.
            && node.node.links.load(Ordering::Acquire) == 1
            // SAFETY: the last reference on a plain `CancelNode` from
            // `alloc_as::<CancelNode>`, whose only drop glue, its stripe
            // slot's, has nothing to do: `nothing_left` read it empty, and
            // a released node's slot never fills.
            && unsafe { node_cache::give_fast(raw.as_ptr(), PLAIN_BIN) }
        {
            return;
        }
        // SAFETY: forwarded, untouched.
        unsafe { CancelNode::release_plain_general(this) }
    }

    /// `release_plain` of any other case: the loop up the chain.
    ///
    /// # Safety
    ///
    /// As `release_plain`.
    #[inline(never)]
    unsafe fn release_plain_general(mut this: NonNull<Node>) {
        loop {
            // Read before the free, which leaves the handle to us.
            // SAFETY: released, not yet freed; we take the handle over.
            let parent = unsafe { Node::parent_node(this) };
            // SAFETY: a released plain `CancelNode` (the contract, and the
            // parent's kind below), its parent handle still held by us.
            if !unsafe { CancelNode::free_if_quiet(this) } {
                // SAFETY: untouched, and still released.
                return unsafe { node::release_slow(this) };
            }
            let Some(parent) = parent else { return };
            // SAFETY: the parent handle the node held, given back once.
            if !unsafe { Node::give_back(parent) } {
                return;
            }
            // SAFETY: its last handle just went; `kind` is immutable.
            let kind = unsafe { parent.as_ref() }.kind;
            if !matches!(
                *kind,
                Kind::Cancel {
                    release_quiet: Some(_),
                    ..
                }
            ) {
                // SAFETY: released, as above.
                return unsafe { node::release_last(parent) };
            }
            // A kind with `release_quiet` heads a plain `CancelNode`.
            this = parent;
        }
    }

    /// Whether a released node has nothing to close, drain or drop: no
    /// child or waiter entry left, no stripes and no cause of its own.
    #[inline(always)]
    fn nothing_left(&self) -> bool {
        self.children.is_empty()
            && self.stripes.get().is_none()
            && self.waiters.is_empty()
            && !state::owns_cause(self.word())
    }

    /// A released node leaves the list it registered in, if it is still
    /// live. One that is done has left it already: its own cancel removed
    /// it (that canceller held a handle, so it finished before this
    /// release), or a propagation froze it in the closed list, whose
    /// closer owns the link reference (three atomic operations saved per
    /// level when a cancelled tree is dropped).
    ///
    /// # Safety
    ///
    /// `self` is released and its parent handle still held (invariant 5:
    /// `registered` is valid).
    #[inline(always)]
    unsafe fn deregister_released(&self) {
        // SAFETY: per the contract.
        if let Some(registered) = unsafe { self.registered.as_ref() }
            && !self.is_done()
        {
            // SAFETY: we were pushed onto exactly this list.
            unsafe { registered.remove(self) };
        }
    }

    /// Drops one reference on the node's memory (invariant 3).
    ///
    /// # Safety
    ///
    /// The caller owns one such reference.
    pub(crate) unsafe fn release_memory(this: *const CancelNode) {
        // SAFETY: forwarded.
        if unsafe { CancelNode::drop_memory_reference(this) } {
            // SAFETY: last reference: the memory is ours; `kind` is
            // immutable.
            let Kind::Cancel { free, .. } = (unsafe { (*this).node.kind }) else {
                unreachable!("a CancelNode's kind is Kind::Cancel")
            };
            // SAFETY: last reference; allocated by the shape's `alloc`,
            // which `free` matches. The parent was moved out at release and
            // is `ManuallyDrop`.
            unsafe { free(this.cast_mut().cast()) };
        }
    }

    /// Gives one reference on the node's memory back; true if it was the
    /// last (the caller then frees the memory, and every other holder's
    /// accesses happen before).
    ///
    /// # Safety
    ///
    /// The caller owns one such reference and gives it up.
    #[inline(always)]
    unsafe fn drop_memory_reference(this: *const CancelNode) -> bool {
        // SAFETY: the caller's reference keeps the memory alive.
        let links = unsafe { &(*this).node.links };
        // A count of one is ours alone, and only a holder of a reference can
        // take another (`acquire_memory`): nobody can race us, so the usual
        // case (a context never linked anywhere, or already unlinked) frees
        // without a read-modify-write.
        // Ordering: Acquire — pairs with the Release half of the decrements
        // that brought the count to one, so their holders' accesses happen
        // before the free. Otherwise AcqRel: the last one sees all others.
        links.load(Ordering::Acquire) == 1 || links.fetch_sub(1, Ordering::AcqRel) == 1
    }
}

/// `Shape::alloc` of every shape: an uninitialised box for a `T` that
/// starts with a `CancelNode` (`CancelNode`, `DeadlineNode`, `MergeNode`).
#[inline(always)]
pub(crate) fn alloc_as<T>() -> *mut CancelNode {
    node_cache::alloc::<T>(const { cache_bin::<T>() }).cast()
}

/// The node cache's bin of a plain `CancelNode`.
const PLAIN_BIN: usize = cache_bin::<CancelNode>().unwrap();

/// The node cache's bin for `T` (a constant per `T`): one per node layout
/// that derivations churn, none for the rest.
const fn cache_bin<T>() -> Option<usize> {
    const LAYOUTS: [core::alloc::Layout; node_cache::BINS] = [
        core::alloc::Layout::new::<CancelNode>(),
        core::alloc::Layout::new::<DeadlineNode>(),
    ];
    let layout = core::alloc::Layout::new::<T>();
    let mut bin = 0;
    while bin < LAYOUTS.len() {
        if LAYOUTS[bin].size() == layout.size() && LAYOUTS[bin].align() == layout.align() {
            return Some(bin);
        }
        bin += 1;
    }
    None
}

/// Striping by hand, for the loom models, the tests and the fuzz targets;
/// not an API.
#[cfg(any(loom, feature = "fuzzing-internals"))]
#[doc(hidden)]
pub mod stripe_hooks {
    use crate::Context;

    /// Gives the children of `ctx`'s anchor stripes now, as a contended
    /// derivation would (nothing for a context without an anchor).
    pub fn stripe(ctx: &Context) {
        if let Some(anchor) = ctx.anchor() {
            anchor.stripes.install();
        }
    }

    /// Whether the children of `ctx`'s anchor have stripes.
    pub fn is_striped(ctx: &Context) -> bool {
        ctx.anchor()
            .is_some_and(|anchor| anchor.stripes.get().is_some())
    }
}

/// Drops a cause taken from a released node, its `Drop` contained (node
/// invariant 5). Out of line: user code, off `retire`'s usual path.
#[cold]
#[inline(never)]
fn drop_cause(panic: &mut Option<Panic>, cause: Cause) {
    waiters::contain(panic, move || drop(cause));
}

/// `Shape::free` of every shape.
///
/// # Safety
///
/// `this` came from `alloc_as::<T>`, every field `T` drops was written (a
/// layer's `MaybeUninit` fields drop nothing), and no reference is left.
pub(crate) unsafe fn free_as<T>(this: *mut Node) {
    // SAFETY: per the contract (`alloc_as` is `node_cache::alloc`).
    unsafe { node_cache::free(this.cast::<T>(), const { cache_bin::<T>() }) };
}

/// How a cancel node is allocated, torn down and freed: a plain
/// `CancelNode`, a `DeadlineNode`, or a layer's allocation that starts with
/// one (`merge::MergeNode`).
pub(crate) struct Shape {
    /// An uninitialised allocation starting with a `CancelNode`.
    pub(crate) alloc: fn() -> *mut CancelNode,
    /// A `Kind::Cancel`: how the allocation is torn down and freed, and
    /// whether it is merged. Its nodes' headers point here.
    pub(crate) kind: Kind,
}

/// Every context of `with_cancel` and `with_cancel_cause`.
static PLAIN: Shape = Shape::plain(Merged::No);

/// Every context of the deadline variants: a `DeadlineNode`.
static DEADLINE: Shape = Shape {
    alloc: alloc_as::<DeadlineNode>,
    kind: Kind::Cancel {
        retire: CancelNode::retire,
        free: free_as::<DeadlineNode>,
        merged: Merged::No,
        timed: true,
        free_quiet: None,
        release_quiet: None,
    },
};

impl Shape {
    /// A plain `CancelNode` allocation, marked `merged`.
    pub(crate) const fn plain(merged: Merged) -> Shape {
        Shape {
            alloc: alloc_as::<CancelNode>,
            kind: Kind::Cancel {
                retire: CancelNode::retire,
                free: free_as::<CancelNode>,
                merged,
                timed: false,
                free_quiet: Some(CancelNode::free_if_quiet),
                release_quiet: Some(CancelNode::release_plain),
            },
        }
    }
}

/// A handle on a cancellable node: shared by `CancelFunc` and
/// `CancelCauseFunc`.
#[derive(Clone)]
struct Handle(NodeRef);

// See the `UnwindSafe` impls of `Context`: the handles share that argument.
impl std::panic::UnwindSafe for Handle {}
impl std::panic::RefUnwindSafe for Handle {}

impl Handle {
    fn node(&self) -> &CancelNode {
        // SAFETY: our handle keeps the node alive; it heads a `CancelNode`
        // (`CancelFunc::new`'s contract).
        unsafe { self.0.as_ptr().cast::<CancelNode>().as_ref() }
    }
}

/// Cancels the context returned with it by [`Context::with_cancel`](crate::Context::with_cancel) (and
/// the deadline variants): Go's `CancelFunc`.
///
/// `cancel()` is idempotent and may be called from any thread. Dropping a
/// `CancelFunc` does **not** cancel: in Go, forgetting `cancel()` leaks the
/// context until its parent is done; here a context needs no `cancel()` to be
/// freed (dropping every handle frees it), so dropping must not have a side
/// effect that a clone might not want. For Go's `defer cancel()` use
/// [`CancelFunc::guard`].
///
/// ```
/// use goctx::Context;
///
/// let (ctx, cancel) = Context::background().with_cancel();
/// let worker = {
///     let ctx = ctx.clone();
///     std::thread::spawn(move || ctx.done().wait())
/// };
/// cancel.cancel();
/// worker.join().unwrap();
/// assert!(ctx.is_done());
/// ```
#[derive(Clone)]
pub struct CancelFunc(Handle);

impl CancelFunc {
    /// `handle` is on a `CancelNode`.
    pub(crate) fn new(handle: NodeRef) -> CancelFunc {
        CancelFunc(Handle(handle))
    }

    /// Cancels the context with [`Error::Canceled`] (no effect if it is
    /// already done). When this returns, the context and every context
    /// derived from it report done and all their waiters have been woken,
    /// unless another cancellation of the same subtree is still running.
    ///
    /// If a task's waker panics while being woken, every other waiter is
    /// still woken and the whole subtree cancelled; the panic then resumes
    /// on this thread.
    ///
    /// ```
    /// let (ctx, cancel) = goctx::Context::background().with_cancel();
    /// cancel.cancel();
    /// cancel.cancel(); // idempotent
    /// assert_eq!(ctx.err(), Some(goctx::Error::Canceled));
    /// ```
    #[inline]
    pub fn cancel(&self) {
        self.0.node().cancel(Error::Canceled, None);
    }

    /// Returns a guard that cancels when dropped: Go's `defer cancel()`.
    ///
    /// ```
    /// use goctx::Context;
    ///
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// {
    ///     let _guard = cancel.guard();
    ///     assert!(!ctx.is_done());
    /// } // dropped here: cancels
    /// assert!(ctx.is_done());
    /// ```
    pub fn guard(self) -> CancelGuard {
        CancelGuard(Some(self))
    }
}

impl fmt::Debug for CancelFunc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelFunc")
            .field("done", &self.0.node().is_done())
            .finish()
    }
}

/// Cancels with [`Error::Canceled`] when dropped (see [`CancelFunc::guard`]).
///
/// ```
/// let (ctx, cancel) = goctx::Context::background().with_cancel();
/// let guard = cancel.guard();
/// let cancel = guard.disarm(); // keep the context running after all
/// assert!(!ctx.is_done());
/// cancel.cancel();
/// assert!(ctx.is_done());
/// ```
#[must_use = "dropping the guard cancels at once"]
pub struct CancelGuard(Option<CancelFunc>);

impl CancelGuard {
    /// Gives the `CancelFunc` back without cancelling.
    ///
    /// ```
    /// let (ctx, cancel) = goctx::Context::background().with_cancel();
    /// drop(cancel.guard().disarm());
    /// assert!(!ctx.is_done());
    /// ```
    pub fn disarm(mut self) -> CancelFunc {
        self.0
            .take()
            .expect("guard holds its CancelFunc until dropped")
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(cancel) = &self.0 {
            cancel.cancel();
        }
    }
}

impl fmt::Debug for CancelGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CancelGuard").field(&self.0).finish()
    }
}

/// Cancels the context returned with it by
/// [`Context::with_cancel_cause`](crate::Context::with_cancel_cause), recording a cause: Go's
/// `CancelCauseFunc`.
///
/// The first cancellation wins: later calls (or a parent's cancellation that
/// came first) leave the recorded error and cause unchanged. Dropping it does
/// not cancel.
///
/// ```
/// use goctx::{Context, Error};
///
/// let (ctx, cancel) = Context::background().with_cancel_cause();
/// cancel.cancel(std::io::Error::other("upstream closed"));
/// assert_eq!(ctx.err(), Some(Error::Canceled));
/// assert_eq!(ctx.cause().unwrap().to_string(), "upstream closed");
/// ```
#[derive(Clone)]
pub struct CancelCauseFunc(Handle);

impl CancelCauseFunc {
    /// `handle` is on a `CancelNode`.
    pub(crate) fn new(handle: NodeRef) -> CancelCauseFunc {
        CancelCauseFunc(Handle(handle))
    }

    /// Cancels the context with [`Error::Canceled`] and `cause` (no effect if
    /// it is already done). Passing an [`Error`] as the cause allocates
    /// nothing; any other cause is boxed once.
    ///
    /// ```
    /// use goctx::{Context, Error};
    ///
    /// let (ctx, cancel) = Context::background().with_cancel_cause();
    /// cancel.cancel(Error::DeadlineExceeded);
    /// assert_eq!(ctx.err(), Some(Error::Canceled));
    /// assert_eq!(ctx.cause().unwrap().downcast_ref::<Error>(), Some(&Error::DeadlineExceeded));
    /// ```
    #[inline]
    pub fn cancel(&self, cause: impl Into<Cause>) {
        self.0.node().cancel(Error::Canceled, Some(cause.into()));
    }

    /// Returns a guard that cancels with `cause` when dropped (Go's
    /// `defer cancel(cause)`), unless [disarmed](CancelCauseGuard::disarm).
    /// The cause is made now, so the drop allocates nothing.
    ///
    /// ```
    /// use goctx::{Cause, Context};
    ///
    /// let (ctx, cancel) = Context::background().with_cancel_cause();
    /// {
    ///     let _guard = cancel.guard(Cause::msg("request finished"));
    ///     assert!(!ctx.is_done());
    /// }
    /// assert_eq!(ctx.cause().unwrap().to_string(), "request finished");
    /// ```
    pub fn guard(self, cause: impl Into<Cause>) -> CancelCauseGuard {
        CancelCauseGuard(Some((self, cause.into())))
    }
}

/// Cancels with its cause when dropped (see [`CancelCauseFunc::guard`]).
///
/// ```
/// let (ctx, cancel) = goctx::Context::background().with_cancel_cause();
/// let guard = cancel.guard(goctx::Error::DeadlineExceeded);
/// let cancel = guard.disarm(); // keep the context running after all
/// assert!(!ctx.is_done());
/// cancel.cancel(goctx::Cause::msg("later"));
/// assert!(ctx.is_done());
/// ```
#[must_use = "dropping the guard cancels at once"]
pub struct CancelCauseGuard(Option<(CancelCauseFunc, Cause)>);

impl CancelCauseGuard {
    /// Gives the `CancelCauseFunc` back without cancelling (the cause is
    /// dropped).
    ///
    /// ```
    /// let (ctx, cancel) = goctx::Context::background().with_cancel_cause();
    /// drop(cancel.guard(goctx::Error::Canceled).disarm());
    /// assert!(!ctx.is_done());
    /// ```
    pub fn disarm(mut self) -> CancelCauseFunc {
        self.0
            .take()
            .expect("guard holds its CancelCauseFunc until dropped")
            .0
    }
}

impl Drop for CancelCauseGuard {
    fn drop(&mut self) {
        if let Some((cancel, cause)) = self.0.take() {
            cancel.cancel(cause);
        }
    }
}

impl fmt::Debug for CancelCauseGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some((cancel, cause)) => f
                .debug_struct("CancelCauseGuard")
                .field("cancel", cancel)
                .field("cause", cause)
                .finish(),
            None => f.write_str("CancelCauseGuard(disarmed)"),
        }
    }
}

impl fmt::Debug for CancelCauseFunc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelCauseFunc")
            .field("done", &self.0.node().is_done())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// The node cache keeps plain and deadline nodes, in bins of their own;
    /// any other layout goes to the allocator.
    #[test]
    fn node_cache_bins() {
        assert_eq!(cache_bin::<CancelNode>(), Some(0));
        assert_eq!(cache_bin::<DeadlineNode>(), Some(1));
        assert_eq!(cache_bin::<[u8; 3]>(), None);
    }

    /// Issue 10's node diet, pinned: a plain `with_cancel` node is 128
    /// bytes (376 at bdad359; 120 before the stripes' word), a deadline
    /// node 192, the header of every node (and so a `without_cancel` node)
    /// four words.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn node_sizes() {
        assert_eq!(size_of::<Node>(), 32, "the header");
        assert_eq!(size_of::<List<CancelNode>>(), 24, "a list");
        assert_eq!(size_of::<TimerEntry>(), 48, "a timer entry");
        assert_eq!(size_of::<CancelNode>(), 128, "a with_cancel node");
        assert_eq!(size_of::<DeadlineNode>(), 192, "a deadline node");
        assert_eq!(
            size_of::<crate::value::ValueNode<u64>>(),
            56,
            "a with_value(u64) node: header, TypeId, value"
        );
        // The state word shares the header's cache line with `anchor`
        // (is_done reads both); the child list and the stripes end the node.
        assert_eq!(core::mem::offset_of!(CancelNode, state), 32);
        assert_eq!(core::mem::offset_of!(CancelNode, children), 96);
        assert_eq!(core::mem::offset_of!(CancelNode, stripes), 120);
    }

    /// Invariant 7, pinned: a cancellation closes a node's waiter set only
    /// if its replaced word announced it, and its child list only if it
    /// finds an entry there. A leaf nobody waited on keeps both lists open
    /// (and empty); a node with a child and a callback closes both,
    /// directly or by propagation; a child derived from a done node is born
    /// done and links nothing.
    #[test]
    fn cancel_closes_only_lists_in_use() {
        use crate::Context;
        let lists = |ctx: &Context| {
            let node = ctx.anchor().expect("a cancellable context");
            (node.children.is_closed(), node.waiters.is_closed())
        };

        let (leaf, cancel) = Context::background().with_cancel();
        cancel.cancel();
        assert!(leaf.is_done());
        assert_eq!(lists(&leaf), (false, false));
        let (late, _late_cancel) = leaf.with_cancel();
        assert!(late.is_done());
        assert!(leaf.anchor().unwrap().children.is_empty());

        let (root, cancel_root) = Context::background().with_cancel();
        let (parent, _parent_cancel) = root.with_cancel();
        let (child, _child_cancel) = parent.with_cancel();
        let callback = parent.on_done(|| {});
        let (waited, _waited_cancel) = parent.with_cancel();
        // A task waiting on `done()`: registered by its first poll.
        let mut done = core::pin::pin!(waited.done());
        let mut task = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(core::future::Future::poll(done.as_mut(), &mut task).is_pending());
        cancel_root.cancel();
        assert!(core::future::Future::poll(done.as_mut(), &mut task).is_ready());
        assert!(child.is_done());
        assert_eq!(lists(&root), (true, false), "root: a child, no waiter");
        assert_eq!(
            lists(&parent),
            (true, true),
            "parent: children and a callback"
        );
        assert_eq!(
            lists(&child),
            (false, false),
            "child: a leaf nobody waited on"
        );
        assert_eq!(lists(&waited), (false, true), "waited: a waiter, no child");
        assert!(!callback.stop(), "the callback ran");
    }
}
