//! Deadlines: the timer entry inside a deadline context's node, and the one
//! shared timer thread that expires them. (After-func callbacks are run by
//! their own pool, `after_func/runner.rs`; an expiry dispatches them as any
//! cancellation does.)
//!
//! # Design
//!
//! * **No thread, no allocation until needed.** The timer thread and its
//!   wheel are created by the first deadline context (a
//!   one-time `OnceLock` initialisation; afterwards every access is one
//!   atomic load).
//! * **A hierarchical timing wheel** (Varghese & Lauck; the shape of
//!   tokio's and the Linux kernel's wheels). Time is counted in ticks of
//!   2^20 ns (~1.05 ms); `LEVELS` = 6 levels of 64 slots, a level-`l` slot
//!   covering 64^l ticks, so the wheel reaches ~2.3 years ahead. An entry
//!   goes to the level of the highest 6-bit digit in which its deadline's
//!   tick differs from the current tick, into the slot that digit names
//!   (`slot_of`). Far deadlines therefore sit in high-level slots that no
//!   short deadline shares (invariant 7), and a slot's entries are close to
//!   one another in time.
//! * **The node is the timer entry.** A deadline node links itself (through
//!   a second intrusive link, `TimerEntry::link`) into a lock-free list of
//!   the kind `list.rs` describes: each slot has one list per *stripe*
//!   (`STRIPES`, handed out to threads round robin), so threads that arm
//!   deadlines in the same slot push onto different lists. The list's index
//!   is kept in the entry for the disarm. No allocation: `with_timeout`
//!   costs the node's one allocation.
//! * **Arming is O(1) and lock-free** (deriving thread): the slot from the
//!   clock reading the derivation takes anyway, a Treiber push, a
//!   `fetch_min` of the slot's earliest deadline (skipped when it is
//!   already earlier), and an unpark of the timer thread only if the new
//!   deadline is earlier than the one it sleeps toward.
//! * **Disarming is O(1) and lock-free** (cancelling or releasing thread):
//!   a CAS `ARMED → DISARMED` and a logical removal from the list. The
//!   cancelling threads themselves unlink removed entries, amortised, as for
//!   child lists — so churn of long timeouts (derive, cancel, repeat) never
//!   reaches the timer thread at all, and memory stays within a constant
//!   factor of the live deadline contexts.
//! * **The timer thread** parks until the earliest slot deadline. When
//!   woken, it sweeps each slot whose earliest deadline has passed: it takes
//!   the due entries and fires them, and *moves* the others — a slot is due
//!   once time has entered its range, so they now belong to a lower level
//!   (`MOVING`: unlinked by the sweep, pushed again onto the lower slot's
//!   list of the same stripe, invariant 8). Each entry is walked at most
//!   once per level on its way down (plus, in its last tick, by sweeps of
//!   its level-0 slot), so a due sweep costs the due entries, the entries
//!   that move down (each moves at most `LEVELS - 1` times in its life) and
//!   a bounded scan of the 384 slots' `earliest` — whatever is parked for
//!   later.
//!
//! # Entry states
//!
//! | state      | meaning                                                    |
//! |------------|------------------------------------------------------------|
//! | `UNARMED`  | not (yet) linked into a wheel list                         |
//! | `ARMED`    | linked; the list holds a memory reference                  |
//! | `MOVING`   | taken off its list by a sweep, to be linked lower; the timer thread holds a memory reference |
//! | `DISARMED` | cancelled or released; withdrawn from its list (or, if it was `MOVING`, dropped by the timer) |
//! | `FIRED`    | the timer claimed it and cancels it                        |
//!
//! # Invariants
//!
//! 1. `ARMED` is left by exactly one CAS: to `FIRED` (the timer, for an
//!    expiry), to `MOVING` (the timer, to move it down) or to `DISARMED` (a
//!    cancellation or the release); `MOVING` is left by one CAS too: back
//!    to `ARMED` (relinked) or to `DISARMED`. So a deadline expiry and a
//!    manual cancel never both act, and `err()`/`cause()` come from the one
//!    that won the node's state word.
//! 2. A list holds a reference on the node's *memory* (`links`), never a
//!    handle: a deadline context dropped without cancel is released at once
//!    and merely withdrawn from its list.
//! 3. The timer cancels a node only after taking a handle on it with
//!    `try_acquire` (which fails once the node is released), so it never
//!    touches a released node's ancestors.
//! 4. `ARMED` is set only after the node is linked (by a Release store or
//!    the relinking CAS, after the list index is written), so a disarm that
//!    wins `ARMED → DISARMED` withdraws a linked entry from the list its
//!    `list` index names; the sweep keeps (and re-counts) an entry it
//!    finds still `UNARMED`.
//! 5. No lost wake-up: an arming thread links, raises its slot's
//!    `earliest`, then reads `sleeping_until` (if `earliest` is already at
//!    or before its deadline it stops there: whoever wrote that value made
//!    sure the thread wakes by then, and a sweep that resets it afterwards
//!    traverses the new entry); the timer thread publishes
//!    `sleeping_until`, then reads every slot's `earliest` again — the
//!    store-buffer pattern: the timer thread fences between its SeqCst
//!    store and its load; the arming thread's steps are SeqCst
//!    read-modify-writes (the push's CAS, `fetch_min`) each followed by a
//!    SeqCst load, which needs no fence on real targets (`list::sb_fence`
//!    has the argument; under loom it fences) — so either the
//!    thread sees the new deadline or the arming thread unparks it. A sweep
//!    resets `earliest` and then traverses the slot's lists, fenced the
//!    same way, so an entry pushed during the sweep is either traversed or
//!    raises `earliest` after the reset. Relinked entries raise `earliest`
//!    on the timer thread itself, before it computes where to sleep.
//! 6. The timer thread runs no user `Drop`: a list holds a memory
//!    reference only, and freeing the memory drops no user data (the
//!    entry's cause is taken by the node's release, node invariant 5); the
//!    handle `fire` takes is given back with `release_unless_last`, and a
//!    last one goes to an after-func worker. Wakers woken by an expiry run
//!    on the timer thread by design; their panics, and any other panic in
//!    a timer step, are caught, so the thread never dies.
//! 7. Placement: at any time, every entry of a level-`l` slot that is not
//!    yet due has its deadline inside one range of 64^l ticks — the one
//!    that slot names within the current level-`l+1` range. (An entry is
//!    placed relative to a clock reading at or before now; had the
//!    level-`l+1` range changed since, its deadline, which lay in the old
//!    range, would have passed.) So a slot whose `earliest` has passed has
//!    entered its range: its entries are due or belong lower. Deadlines
//!    beyond the wheel's reach (~2.3 years) are kept at the top level and
//!    may share a slot with nearer ones (a limitation, as tokio caps its
//!    timers).
//! 8. Moving: a sweep moves an entry only after winning `ARMED → MOVING`,
//!    and only with a memory reference of its own, so the entry stays
//!    valid whoever unlinks it (the sweep itself or a disarming thread's
//!    cleanup pass, which then drops the list's reference). The sweep has
//!    unlinked it when it returns; the timer pushes it again only once its
//!    old list `is_quiescent` (no pass can still read its link, list
//!    invariant 6), waiting a tick and trying again otherwise. A disarm
//!    that wins `MOVING → DISARMED` touches no list: the timer finds the
//!    state before relinking (and drops its reference), or after (its
//!    relinking CAS fails, and it withdraws the entry itself).

use core::ptr::NonNull;
use core::time::Duration;
use std::time::Instant;

use crate::error::Cause;
use crate::list::{Entry, Link, List};
use crate::node::{Node, NodeRef};
use crate::primitive::UnsafeCell;
use crate::primitive::atomic::{AtomicU32, AtomicU64, Ordering};

const UNARMED: u32 = 1;
const ARMED: u32 = 2;
const DISARMED: u32 = 3;
const FIRED: u32 = 4;
const MOVING: u32 = 5;

/// What the timer needs of the node a [`TimerEntry`] lives in, supplied
/// by the entry's owner: timer.rs names no kind of node. cancel.rs provides
/// the operations on a `CancelNode` (`CancelNode::timer_owner`); context.rs
/// composes them with the after-func pool's `drop_detached`.
pub(crate) struct TimerOwner {
    /// The header of the node holding the entry (a pointer with the
    /// provenance of the node's allocation).
    pub(crate) node: unsafe fn(NonNull<TimerEntry>) -> NonNull<Node>,
    /// Takes one more reference on the node's memory (for the sweep).
    pub(crate) acquire_memory: unsafe fn(NonNull<TimerEntry>),
    /// Drops one reference on the node's memory, freeing it at the last.
    pub(crate) release_memory: unsafe fn(NonNull<TimerEntry>),
    /// The deadline has passed and `fire` won `ARMED → FIRED` and holds a
    /// handle: cancel the node with `DeadlineExceeded` and the entry's
    /// cause.
    pub(crate) expire: unsafe fn(NonNull<TimerEntry>),
    /// Drops a last handle off the timer thread (invariant 6): on an
    /// after-func worker.
    pub(crate) drop_detached: fn(NodeRef),
}

/// How the timer treats the nodes its entries live in: one `TimerOwner` per
/// process (context.rs's), registered by the first `arm`, before any entry
/// is linked, so every entry the timer or a list reaches has it. Kept here
/// rather than in each entry: a word less in every deadline node.
///
/// A std `OnceLock` under loom too: it is written once per process, before
/// the push that publishes the first entry, always with the same value, so
/// no model has a race on it to explore.
static OWNER: std::sync::OnceLock<&'static TimerOwner> = std::sync::OnceLock::new();

/// Registers the process's `TimerOwner` (`OWNER`).
#[inline]
fn register_owner(new: &'static TimerOwner) {
    if OWNER.get().is_none() {
        let _ = OWNER.set(new);
    }
    debug_assert!(core::ptr::eq(owner(), new), "one TimerOwner per process");
}

/// The registered `TimerOwner`: every armed entry's.
#[inline]
fn owner() -> &'static TimerOwner {
    OWNER
        .get()
        .expect("an entry the timer reaches was armed, so an owner is registered")
}

/// The timer part of a deadline node (six words).
// (Under loom the models arm and fire timers by hand: no wheel.)
#[cfg_attr(loom, allow(dead_code))]
pub(crate) struct TimerEntry {
    /// The state table above. 32 bits, as `list`: the two share a word.
    state: AtomicU32,
    /// The index of the wheel list the node is linked into (set before
    /// each push).
    list: AtomicU32,
    /// The node's link in its wheel list.
    link: Link,
    /// The deadline in nanoseconds since the timer's base (set before the
    /// node is first linked, then immutable).
    when: AtomicU64,
    /// The cause a deadline expiry records (`DeadlineExceeded` when `None`).
    /// User data: taken and dropped by the node's release (the last
    /// *handle*, `take_cause`), never by whoever frees the memory — a wheel
    /// sweep on the timer thread, a cleanup pass, an epoch-deferred closure
    /// (invariant 6).
    cause: UnsafeCell<Option<Cause>>,
}

impl TimerEntry {
    /// The entry of a deadline node, not yet armed.
    pub(crate) fn new(cause: Option<Cause>) -> TimerEntry {
        TimerEntry {
            state: AtomicU32::new(UNARMED),
            list: AtomicU32::new(0),
            link: Link::new(),
            when: AtomicU64::new(0),
            cause: UnsafeCell::new(cause),
        }
    }

    /// Records the index of the wheel list the entry is about to be pushed
    /// onto.
    fn set_list(&self, index: usize) {
        // The wheel has `STRIPES * WHEEL` lists (and loom's two), far below
        // 2^32; `HELD` is `u32::MAX`.
        // Ordering: Relaxed — published by the push's Release CAS and the
        // `ARMED` store or relinking CAS after it (each caller says which).
        self.list.store(index as u32, Ordering::Relaxed);
    }

    /// The index `set_list` recorded.
    fn list(&self) -> usize {
        // Ordering: Relaxed — every caller has read the state that
        // published it with Acquire (or runs on the thread that wrote it).
        self.list.load(Ordering::Relaxed) as usize
    }

    /// The cause a deadline expiry records. Called only by holders of a
    /// handle on the node (the deriving thread, the timer after
    /// `try_acquire`).
    pub(crate) fn cause(&self) -> Option<Cause> {
        // SAFETY: the caller holds a handle, so `take_cause` (at release,
        // after the last handle is gone, ordered by the handle count's
        // Release/Acquire) has not run; nobody writes the cell before.
        self.cause.with(|cause| unsafe { (*cause).clone() })
    }

    /// Takes the cause out, for the node's release to drop.
    ///
    /// # Safety
    ///
    /// The node has just been released (no handle is left), so nobody can
    /// read the cell any more (`cause` needs a handle).
    pub(crate) unsafe fn take_cause(&self) -> Option<Cause> {
        self.cause.with_mut(|cause| {
            // SAFETY: per the contract, we are the cell's only user.
            let cause = unsafe { &mut *cause };
            // Read before writing: most deadline nodes have no cause, and
            // their line is then left clean.
            if cause.is_some() { cause.take() } else { None }
        })
    }
}

// SAFETY: every field but `cause` is atomic or immutable; `cause` is only read by holders of a handle
// on the node and only taken at its release, after the last handle is gone
// (ordered by the handle count's Release/Acquire). Entries are shared
// between the deriving, cancelling and timer threads by design.
unsafe impl Sync for TimerEntry {}
// SAFETY: as above.
unsafe impl Send for TimerEntry {}

/// Takes one more reference on the memory of the node holding `entry`.
///
/// # Safety
///
/// The memory is valid (the caller holds a reference on it, or the entry
/// is linked and the caller's sweep is pinned), and the entry was armed.
unsafe fn acquire_memory(entry: NonNull<TimerEntry>) {
    // SAFETY: forwarded.
    unsafe { (owner().acquire_memory)(entry) }
}

/// Drops one reference on the memory of the node holding `entry`.
///
/// # Safety
///
/// The caller owns one such reference, and the entry was armed.
unsafe fn release_memory(entry: NonNull<TimerEntry>) {
    // SAFETY: forwarded.
    unsafe { (owner().release_memory)(entry) }
}

/// Arms the timer `entry` for `deadline`, which lies after `now` (a clock
/// reading taken during the derivation: at or before the present, which is
/// all placement needs, invariant 7). Called once, by the deriving thread,
/// which then disarms it if the node was cancelled meanwhile (a
/// cancellation that ran before `ARMED` was visible could not).
///
/// # Safety
///
/// `entry` is a deadline entry (`TimerEntry::deadline`), reached through a
/// pointer with its node's provenance; the caller holds handles on the node
/// and gives the wheel (or, under loom, the test) one memory reference it
/// counted for it (invariant 2).
///
/// `remaining`: how far `deadline` lies after the caller's latest clock
/// reading (not zero); the wheel places the entry by it.
pub(crate) unsafe fn arm(
    entry: NonNull<TimerEntry>,
    deadline: Instant,
    remaining: Duration,
    owner: &'static TimerOwner,
) {
    register_owner(owner);
    // SAFETY: the node's memory is kept alive by the caller's reference,
    // which the timer now owns. `submit` sets `ARMED` once the entry is
    // linked, so a disarm never removes an entry that is not linked yet.
    unsafe { imp::submit(entry, deadline, remaining) };
}

/// Whether the timer may still claim `entry` (and then take a handle on
/// its node, invariant 3): not once it is `DISARMED`, which is final
/// (invariant 1). Anything else counts as maybe — also `UNARMED`, which
/// is final too in the std timer once the derivation returns, but not in
/// the loom hooks, whose `ArmedTimer::link` passes through it.
///
/// # Safety
///
/// `entry` is valid (the caller holds a handle or a memory reference on
/// its node).
#[inline]
pub(crate) unsafe fn may_claim(entry: NonNull<TimerEntry>) -> bool {
    // Ordering: Relaxed — reading `DISARMED` means no claim ever comes (the
    // final value of the entry's state); reading anything else only sends
    // the caller the slow way.
    // SAFETY: valid per the contract.
    unsafe { entry.as_ref() }.state.load(Ordering::Relaxed) != DISARMED
}

/// Disarms the timer `entry` if it is armed (invariant 1). Called on every
/// cancellation of a deadline node and on its release.
///
/// # Safety
///
/// `entry` is valid (the caller holds a handle on its node, or is its
/// release), reached through a pointer with its node's provenance.
#[inline]
pub(crate) unsafe fn disarm(entry: NonNull<TimerEntry>) {
    // SAFETY: valid per the contract.
    let timer = unsafe { entry.as_ref() };
    let mut state = timer.state.load(Ordering::Relaxed);
    loop {
        if state != ARMED && state != MOVING {
            return;
        }
        // Ordering: AcqRel — invariant 1, against the timer's `fire` and
        // move CASes; Acquire also reads the `list` index the `ARMED`
        // store or the relinking CAS published. Failure: Relaxed, we only
        // retry with the new state.
        match timer
            .state
            .compare_exchange(state, DISARMED, Ordering::AcqRel, Ordering::Relaxed)
        {
            // A moving entry is in no list: the timer withdraws it when it
            // finds it disarmed (invariant 8).
            // SAFETY: forwarded.
            Ok(ARMED) => return unsafe { imp::withdraw(entry) },
            Ok(_) => return,
            Err(actual) => state = actual,
        }
    }
}

/// The timer's reference on an armed node's memory, through its entry.
pub(crate) struct TimerRef(NonNull<TimerEntry>);

// SAFETY: a memory reference on a `Sync` node, handed to the timer thread.
unsafe impl Send for TimerRef {}

impl TimerRef {
    fn entry(&self) -> &TimerEntry {
        // SAFETY: our memory reference keeps the node's memory valid.
        unsafe { self.0.as_ref() }
    }

    /// The deadline has passed: cancel the node with `DeadlineExceeded`
    /// unless a cancellation or release came first. Drops the reference.
    /// Returns whether the entry was disarmed (garbage).
    pub(crate) fn fire(self) -> bool {
        // The memory reference is given up last, also while a waker's panic
        // unwinds out of the expiry (the node's memory would leak otherwise).
        let memory = Discard(self.0);
        let entry = self.entry();
        // Ordering: AcqRel — invariant 1.
        let claimed = entry
            .state
            .compare_exchange(ARMED, FIRED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        let owner = owner();
        // SAFETY: our memory reference keeps the memory valid; `node` keeps
        // the allocation's provenance.
        if claimed && let Some(handle) = unsafe { NodeRef::try_acquire((owner.node)(self.0)) } {
            // Given back even if `cancel` resumes a waker's panic: otherwise
            // the node and its ancestors would never be freed.
            let handle = TimerHandle(Some(handle), owner.drop_detached);
            // SAFETY: `handle` is a handle on the entry's node.
            unsafe { (owner.expire)(self.0) };
            drop(handle);
        }
        drop(memory);
        !claimed
    }
}

/// `TimerRef::fire`'s memory reference, given up when dropped (also while a
/// panic unwinds).
struct Discard(NonNull<TimerEntry>);

impl Drop for Discard {
    fn drop(&mut self) {
        // SAFETY: the reference `arm` (or the sweep that moved the entry)
        // took, given up once.
        unsafe { release_memory(self.0) };
    }
}

/// The handle `TimerRef::fire` took with `try_acquire` (invariant 3),
/// given back when dropped, also while a waker's panic unwinds. If it is the
/// last handle, the release — which drops user data: causes, values, a
/// callback that can no longer run — goes to an after-func worker, never
/// onto the timer thread (invariant 6).
struct TimerHandle(Option<NodeRef>, fn(NodeRef));

impl Drop for TimerHandle {
    fn drop(&mut self) {
        let Some(handle) = self.0.take() else { return };
        if let Err(last) = handle.release_unless_last() {
            (self.1)(last);
        }
    }
}

/// A deadline entry seen as an entry of its wheel list: the same memory,
/// linked through `TimerEntry::link`, the list holding a memory reference
/// on the node around it.
#[repr(transparent)]
#[cfg_attr(loom, allow(dead_code))]
pub(crate) struct TimerView(TimerEntry);

// SAFETY: `TimerEntry` is pointer-aligned (≥ 2, for the tag bit: it holds
// atomics of pointer size); `link` is a fixed field; the list's memory
// reference (counted at construction, or taken by the sweep that moves the
// entry) keeps the memory valid until `release_link`. Entries are pushed
// through pointers with their node's provenance.
unsafe impl Entry for TimerView {
    fn link(&self) -> &Link {
        &self.0.link
    }

    unsafe fn release_link(this: *const Self) {
        // SAFETY: non-null (a linked entry); forwarded: the list's memory
        // reference, on a deadline entry.
        unsafe { release_memory(NonNull::new_unchecked(this.cast_mut().cast())) }
    }
}

/// An entry a sweep took off its list to link it again lower in the wheel
/// (invariant 8), with the memory reference the sweep took on it; `from`
/// is the index of the list it came from.
pub(crate) struct Moving {
    entry: NonNull<TimerEntry>,
    from: usize,
}

/// Sweeps one wheel list (index `from`): takes the entries due by `now`
/// into `due` and those that no longer belong in this slot (`stays` is
/// false for their deadline) into `moving`, each with a memory reference,
/// and lowers `earliest` to the deadlines of the entries that stay.
fn sweep_list(
    list: &List<TimerView>,
    from: usize,
    now: u64,
    stays: impl Fn(u64) -> bool,
    earliest: &AtomicU64,
    due: &mut Vec<TimerRef>,
    moving: &mut Vec<Moving>,
) {
    list.sweep(|view| {
        // SAFETY: linked entries are valid while the sweep is pinned.
        let entry = unsafe { &*view.cast::<TimerEntry>() };
        // SAFETY: non-null (a linked entry).
        let raw = unsafe { NonNull::new_unchecked(view.cast_mut().cast::<TimerEntry>()) };
        // Ordering: Relaxed — published with the entry by its push.
        let when = entry.when.load(Ordering::Relaxed);
        // Ordering: Acquire — pairs with the Release that set it.
        match entry.state.load(Ordering::Acquire) {
            ARMED if when <= now => {
                // SAFETY: valid while the sweep is pinned; armed.
                unsafe { acquire_memory(raw) };
                due.push(TimerRef(raw));
                true
            }
            ARMED if !stays(when) => {
                // Ordering: AcqRel — invariant 1 against a disarm; failure
                // (it was disarmed) needs nothing.
                let claimed = entry
                    .state
                    .compare_exchange(ARMED, MOVING, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok();
                if claimed {
                    // SAFETY: as above.
                    unsafe { acquire_memory(raw) };
                    moving.push(Moving { entry: raw, from });
                }
                claimed
            }
            // Withdrawn: its disarm marks it; nothing to wait for.
            DISARMED | FIRED => false,
            // Linked a moment ago and not `ARMED` yet, or in its place: it
            // stays, and so does its deadline in `earliest`.
            _ => {
                earliest.fetch_min(when, Ordering::SeqCst);
                false
            }
        }
    });
}

/// Links a moved entry again, into the list `place` names for its
/// deadline (whose slot's earliest bound it lowers); the sweep's memory
/// reference becomes that list's, or is dropped if the entry was disarmed
/// meanwhile (invariant 8).
///
/// # Safety
///
/// `moving` came from `sweep_list` on one of `lists`, which has been
/// quiescent since the sweep returned (no pass can read the entry's link:
/// list invariant 6).
unsafe fn relink<'a>(
    lists: &[List<TimerView>],
    moving: Moving,
    place: impl FnOnce(u64) -> (usize, &'a AtomicU64),
) {
    // SAFETY: the sweep's memory reference keeps the node valid.
    let node = unsafe { moving.entry.as_ref() };
    let view = moving.entry.as_ptr().cast_const().cast::<TimerView>();
    // Ordering: Acquire — pairs with a disarm's Release CAS.
    if node.state.load(Ordering::Acquire) == DISARMED {
        // SAFETY: the sweep's reference, given up once.
        unsafe { release_memory(moving.entry) };
        return;
    }
    // Ordering: Relaxed — written once before the first push.
    let when = node.when.load(Ordering::Relaxed);
    let (index, earliest) = place(when);
    // Ordering: Relaxed — published by the Release CAS below, which a
    // disarm's CAS reads before it withdraws the entry from `index`.
    node.set_list(index);
    // SAFETY: the node is valid and in no list (the caller's contract:
    // unlinked, and no pass reads its link any more); the list now owns the
    // sweep's memory reference.
    if unsafe { lists[index].push(view) }.is_err() {
        unreachable!("timer lists are never closed");
    }
    // Ordering: AcqRel — invariant 1 against a disarm (Release publishes
    // `list`); failure needs nothing.
    let armed = node
        .state
        .compare_exchange(MOVING, ARMED, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok();
    if armed {
        // Read by the timer thread itself before it parks (invariant 5).
        earliest.fetch_min(when, Ordering::SeqCst);
    } else {
        // Disarmed while moving: its disarm left the withdrawal to us.
        // SAFETY: the sweep's reference keeps the memory valid (the list's
        // may be gone already); a deadline entry.
        unsafe { acquire_memory(moving.entry) };
        // SAFETY: pushed onto exactly this list just now; kept valid by the
        // reference taken above.
        unsafe { lists[index].remove(view) };
        // SAFETY: the reference taken above.
        unsafe { release_memory(moving.entry) };
    }
}

/// The shared timer thread and its wheel.
#[cfg(not(loom))]
mod imp {
    use core::ptr::NonNull;
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use super::{Moving, TimerEntry, TimerRef, TimerView};
    use crate::list::{List, sb_fence};
    use crate::primitive::atomic::{AtomicU64, AtomicUsize, Ordering, fence};
    use crate::primitive::thread::{self, Thread};

    /// A tick is 2^20 ns (~1.05 ms): the width of a level-0 slot.
    const TICK_SHIFT: u32 = 20;
    /// Slots per level (a power of two), as in tokio's and the Linux
    /// kernel's wheels.
    const SLOT_BITS: u32 = 6;
    const SLOTS: usize = 1 << SLOT_BITS;
    /// Levels: level `l` slots are 64^l ticks wide, so six levels reach
    /// 64^6 ticks (~2.3 years) ahead; a deadline further out is kept at
    /// the top level (module docs, "Limitations").
    const LEVELS: usize = 6;
    /// The wheel's slots, all levels.
    const WHEEL: usize = LEVELS * SLOTS;
    /// A slot's list cleans up once this many entries are removed but
    /// linked (and they are half of it), so removed entries held across
    /// all lists stay under `STRIPES * WHEEL * CLEANUP` plus twice the live
    /// ones.
    const LIST_CLEANUP: usize = 8;
    /// Threads spread their deadlines over this many stripes: each slot has
    /// one list per stripe.
    const STRIPES: usize = 8;
    /// Hands out stripes to threads, round robin.
    static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);
    std::thread_local! {
        /// This thread's stripe.
        static STRIPE: usize = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    /// `sleeping_until` while the thread is awake: submitters never unpark.
    const AWAKE: u64 = 0;
    /// A slot's earliest deadline when it holds none.
    const EMPTY: u64 = u64::MAX;
    /// How often the thread looks again at entries waiting to be relinked
    /// (`Moving`) while another pass holds their old list.
    const RELINK_RETRY: u64 = 1 << TICK_SHIFT;

    /// One slot of the wheel, all stripes.
    struct Slot {
        /// A lower bound of the deadlines linked in this slot's lists
        /// (exact after a sweep, but for entries disarmed since).
        earliest: AtomicU64,
    }

    pub(super) struct Timer {
        /// Deadlines are kept as nanoseconds since this instant.
        base: Instant,
        /// `WHEEL` slots, indexed `level * SLOTS + slot`.
        slots: Box<[Slot]>,
        /// `STRIPES * WHEEL` lists, indexed `stripe * WHEEL + slot index`:
        /// a stripe's lists are contiguous, so two threads arming the same
        /// slot touch different cache lines.
        lists: Box<[List<TimerView>]>,
        /// The deadline the thread parks toward (`EMPTY`: none), or `AWAKE`.
        sleeping_until: AtomicU64,
        thread: Thread,
    }

    static TIMER: OnceLock<&'static Timer> = OnceLock::new();

    fn timer() -> &'static Timer {
        TIMER.get_or_init(start)
    }

    #[cold]
    fn start() -> &'static Timer {
        let (tx, rx) = std::sync::mpsc::channel::<&'static Timer>();
        let handle = std::thread::Builder::new()
            .name("goctx-timer".into())
            .spawn(move || {
                if let Ok(timer) = rx.recv() {
                    run(timer);
                }
            })
            .expect("goctx: cannot start the timer thread");
        let slots = (0..WHEEL)
            .map(|_| Slot {
                earliest: AtomicU64::new(EMPTY),
            })
            .collect();
        let lists = (0..STRIPES * WHEEL)
            .map(|_| List::swept(LIST_CLEANUP))
            .collect();
        let timer: &'static Timer = Box::leak(Box::new(Timer {
            base: Instant::now(),
            slots,
            lists,
            sleeping_until: AtomicU64::new(AWAKE),
            thread: handle.thread().clone(),
        }));
        let _ = tx.send(timer);
        timer
    }

    /// `duration` in nanoseconds, saturating at `u64::MAX` (584 years), in
    /// 64-bit arithmetic: `Duration::as_nanos` works in 128 bits, which
    /// showed up on the arming path.
    fn u64_nanos(duration: Duration) -> u64 {
        duration
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(duration.subsec_nanos()))
    }

    /// The slot (`level * SLOTS + slot`) of a deadline `when`, seen at
    /// `now` (both in nanoseconds since the base): the level is the
    /// highest 6-bit digit in which the two tick counts differ, the slot
    /// that digit of `when`. So every entry of a level-`l` slot that is
    /// not yet due lies in one range of 64^l ticks, whoever placed it and
    /// when (invariant 7).
    fn slot_of(when: u64, now: u64) -> usize {
        let (when, now) = (when >> TICK_SHIFT, now >> TICK_SHIFT);
        let differ = when ^ now;
        let level = if differ == 0 {
            0
        } else {
            ((63 - differ.leading_zeros()) / SLOT_BITS).min(LEVELS as u32 - 1)
        };
        level as usize * SLOTS + ((when >> (level * SLOT_BITS)) as usize & (SLOTS - 1))
    }

    impl Timer {
        fn nanos(&self, at: Instant) -> u64 {
            // Never AWAKE (0) nor EMPTY for a real deadline.
            u64_nanos(at.saturating_duration_since(self.base)).clamp(1, EMPTY - 1)
        }

        /// The list of `slot` for `stripe`.
        fn list(&self, stripe: usize, slot: usize) -> &List<TimerView> {
            &self.lists[stripe * WHEEL + slot]
        }

        /// The earliest deadline over all slots.
        fn earliest(&self) -> u64 {
            self.slots
                .iter()
                // Ordering: Acquire — pairs with the SeqCst `fetch_min` of
                // `submit` (after its fence: invariant 5).
                .map(|slot| slot.earliest.load(Ordering::Acquire))
                .min()
                .unwrap_or(EMPTY)
        }
    }

    /// Links an armed node into its slot's list for this thread's stripe.
    ///
    /// # Safety
    ///
    /// `node` is armed and the caller gives the list the memory reference
    /// it took for it.
    pub(super) unsafe fn submit(node: NonNull<TimerEntry>, deadline: Instant, remaining: Duration) {
        let timer = timer();
        let when = timer.nanos(deadline);
        // The caller's clock reading, from `remaining` rather than a second
        // `Instant` subtraction (it only places the entry; a reading from
        // before the wheel's base counts as the base).
        let remaining = u64_nanos(remaining);
        let slot = slot_of(when, when.saturating_sub(remaining));
        // (A thread-local destructor arming a deadline gets stripe 0.)
        let stripe = STRIPE.try_with(|stripe| *stripe).unwrap_or(0);
        // SAFETY: the reference keeps the node valid.
        let entry = unsafe { node.as_ref() };
        // Ordering: Relaxed — published by the push's Release CAS.
        entry.when.store(when, Ordering::Relaxed);
        // Ordering: Relaxed — as `when`.
        entry.set_list(stripe * WHEEL + slot);
        // SAFETY: the node is valid and in no list; the list now owns the
        // memory reference.
        // SeqCst: the write side of invariant 5's store-buffer pattern.
        if unsafe {
            timer
                .list(stripe, slot)
                .push_seqcst(node.as_ptr().cast::<TimerView>())
        }
        .is_err()
        {
            unreachable!("timer lists are never closed");
        }
        // Ordering: Release — pairs with the Acquire CASes of `disarm` (which
        // then removes a linked entry from the right list) and `fire`.
        entry.state.store(super::ARMED, Ordering::Release);
        // Invariant 5: the push, then the slot's earliest deadline, then
        // the thread's; each a SeqCst read-modify-write followed by a
        // SeqCst load, against the timer thread's SeqCst store and fence
        // (no fence needed on this side outside loom: `list::sb_fence`).
        sb_fence();
        let earliest = &timer.slots[slot].earliest;
        // A slot whose earliest deadline is already at or before ours needs
        // no update (a `fetch_min` would leave it unchanged; the SeqCst load
        // reads the same latest value in the total order), and then neither
        // does the thread, which sleeps until at most that slot's deadline:
        // the usual case for a batch of equal timeouts, which skips a CAS
        // loop, a fence and a load.
        if earliest.load(Ordering::SeqCst) <= when {
            return;
        }
        earliest.fetch_min(when, Ordering::SeqCst);
        sb_fence();
        if when < timer.sleeping_until.load(Ordering::SeqCst) {
            timer.thread.unpark();
        }
    }

    /// Removes a disarmed node from its list (logically; the list's cleanup
    /// unlinks it, amortised, on this or another disarming thread).
    ///
    /// # Safety
    ///
    /// As `disarm`: `entry` is valid, with its node's provenance.
    pub(super) unsafe fn withdraw(entry: NonNull<TimerEntry>) {
        let Some(timer) = TIMER.get() else { return };
        // Ordering: Relaxed — set before the push, which happens before the
        // `ARMED` store (or the relinking CAS) that the caller's disarming
        // CAS read (Acquire).
        // SAFETY: valid per the contract.
        let index = unsafe { entry.as_ref() }.list();
        let view = entry.as_ptr().cast_const().cast::<TimerView>();
        // SAFETY: the node was pushed onto exactly this list (`index`) and
        // the caller keeps it alive.
        unsafe { timer.lists[index].remove(view) };
    }

    /// Sweeps one slot (every stripe's list): takes the entries due by
    /// `now` into `due` and those that belong lower in the wheel by now
    /// into `moving` (each with a memory reference), and recomputes the
    /// slot's earliest deadline from the rest.
    fn sweep(
        timer: &Timer,
        slot: usize,
        now: u64,
        due: &mut Vec<TimerRef>,
        moving: &mut Vec<Moving>,
    ) {
        let earliest = &timer.slots[slot].earliest;
        // Invariant 5, slot side: reset, then (fenced) traverse; a push the
        // traversal misses raises `earliest` again after it.
        earliest.store(EMPTY, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        for stripe in 0..STRIPES {
            let from = stripe * WHEEL + slot;
            let stays = |when| slot_of(when, now) == slot;
            super::sweep_list(&timer.lists[from], from, now, stays, earliest, due, moving);
        }
    }

    fn run(timer: &'static Timer) -> ! {
        let mut due = Vec::new();
        let mut moving = Vec::new();
        // Moved entries whose old list another pass still walks.
        let mut waiting = Vec::new();
        loop {
            let now = timer.nanos(Instant::now());
            // Every step that can meet foreign code is contained
            // (invariant 6): no panic, wherever it comes from, stops the
            // timer thread.
            for (index, slot) in timer.slots.iter().enumerate() {
                if slot.earliest.load(Ordering::Acquire) <= now {
                    let swept = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        sweep(timer, index, now, &mut due, &mut moving)
                    }));
                    if swept.is_err() {
                        // Entries the sweep did not reach stay linked: look
                        // again in a tick.
                        slot.earliest
                            .fetch_min(now + RELINK_RETRY, Ordering::SeqCst);
                    }
                }
            }
            // Relink the moved entries whose old list no pass walks any
            // more (invariant 7); the others wait for a later round.
            moving.append(&mut waiting);
            for entry in moving.drain(..) {
                if timer.lists[entry.from].is_quiescent() {
                    let stripe = entry.from / WHEEL;
                    let place = |when| {
                        let slot = slot_of(when, now);
                        (stripe * WHEEL + slot, &timer.slots[slot].earliest)
                    };
                    // SAFETY: from `sweep`; its old list is quiescent.
                    unsafe { super::relink(&timer.lists, entry, place) };
                } else {
                    waiting.push(entry);
                }
            }
            for entry in due.drain(..) {
                // Cancelling runs foreign code (wakers): a panic there must
                // not kill the timer.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| entry.fire()));
            }

            let mut next = timer.earliest();
            if !waiting.is_empty() {
                next = next.min(now + RELINK_RETRY);
            }
            timer.sleeping_until.store(next, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            // Invariant 5: a last look after announcing the deadline.
            if timer.earliest() >= next {
                if next == EMPTY {
                    thread::park();
                } else {
                    let now = timer.nanos(Instant::now());
                    if next > now {
                        thread::park_timeout(Duration::from_nanos(next - now));
                    }
                }
            }
            timer.sleeping_until.store(AWAKE, Ordering::SeqCst);
        }
    }
}

/// Loom models drive deadlines by hand: `arm` queues the entry on the
/// model thread, and a test takes it with [`take_armed`] and fires it on
/// any thread, which is exactly the race the real timer thread runs. A
/// test may instead link it into a two-list model wheel and sweep that
/// (`loom_hooks::ArmedTimer::link`, `loom_hooks::sweep`), which runs the
/// std timer's own `sweep_list` and `relink`.
#[cfg(loom)]
mod imp {
    use core::ptr::NonNull;
    use std::cell::RefCell;
    use std::time::Instant;

    use super::{TimerEntry, TimerRef, TimerView};
    use crate::list::List;
    use crate::primitive::atomic::{AtomicU64, Ordering};

    /// The `list` index of an entry the test holds (in no list).
    pub(super) const HELD: usize = u32::MAX as usize;

    crate::primitive::thread_local! {
        static ARMED: RefCell<Vec<TimerRef>> = RefCell::new(Vec::new());
    }

    /// The model wheel: two lists (two slots) and their earliest bounds.
    pub(super) struct ModelWheel {
        pub(super) lists: [List<TimerView>; 2],
        pub(super) earliest: [AtomicU64; 2],
    }

    crate::primitive::lazy_static! {
        /// One per model execution; the lists clean up as the crate's
        /// default (`usize::MAX` is clamped to it).
        pub(super) static ref WHEEL: ModelWheel = ModelWheel {
            lists: [List::swept(usize::MAX), List::swept(usize::MAX)],
            earliest: [AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)],
        };
    }

    /// # Safety
    ///
    /// As the std `submit`: the test's `ArmedTimer` takes the reference.
    pub(super) unsafe fn submit(
        node: NonNull<TimerEntry>,
        _deadline: Instant,
        _remaining: core::time::Duration,
    ) {
        // SAFETY: the caller's reference keeps the node valid.
        let entry = unsafe { node.as_ref() };
        // Ordering: Relaxed — the test's hooks run on this thread or after
        // the node was handed over with the `ArmedTimer`.
        entry.set_list(HELD);
        // Ordering: Release — as in the std `submit`.
        entry.state.store(super::ARMED, Ordering::Release);
        ARMED.with(|armed| armed.borrow_mut().push(TimerRef(node)));
    }

    /// The test's `ArmedTimer` keeps its reference until it fires; an
    /// entry linked into the model wheel is withdrawn from its list.
    ///
    /// # Safety
    ///
    /// As the std `withdraw`.
    pub(super) unsafe fn withdraw(entry: NonNull<TimerEntry>) {
        // Ordering: Relaxed — as in the std `withdraw`.
        // SAFETY: valid per the contract.
        let index = unsafe { entry.as_ref() }.list();
        if index != HELD {
            let view = entry.as_ptr().cast_const().cast::<TimerView>();
            // SAFETY: the node was pushed onto exactly this list and the
            // caller keeps it alive.
            unsafe { WHEEL.lists[index].remove(view) };
        }
    }

    pub(super) fn take_armed() -> Vec<TimerRef> {
        ARMED.with(|armed| std::mem::take(&mut *armed.borrow_mut()))
    }
}

/// Test hooks for the loom models (only under `--cfg loom`).
#[cfg(loom)]
#[doc(hidden)]
pub mod loom_hooks {
    use super::imp::WHEEL;
    use crate::primitive::atomic::{Ordering, fence};

    /// A deadline timer armed on this thread, as the timer thread holds it.
    #[derive(Debug)]
    pub struct ArmedTimer(super::TimerRef);

    impl core::fmt::Debug for super::TimerRef {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("TimerRef")
        }
    }

    impl ArmedTimer {
        /// Runs the expiry, as the timer thread does when the deadline
        /// passes. Returns whether the entry had been disarmed.
        pub fn fire(self) -> bool {
            self.0.fire()
        }

        /// Links the timer into list 0 of the model wheel with deadline
        /// `when` (model time), as the std `submit` links an entry: `ARMED`
        /// only once it is linked (invariant 4). Its memory reference
        /// becomes the list's.
        pub fn link(self, when: u64) {
            let node = self.0.entry();
            // Ordering: Relaxed — published by the push's Release CAS.
            node.state.store(super::UNARMED, Ordering::Relaxed);
            node.when.store(when, Ordering::Relaxed);
            node.set_list(0);
            let view = self.0.0.as_ptr().cast_const().cast::<super::TimerView>();
            // SAFETY: valid (our memory reference, now the list's) and in
            // no list.
            if unsafe { WHEEL.lists[0].push(view) }.is_err() {
                unreachable!("timer lists are never closed");
            }
            // Ordering: Release — as in the std `submit`.
            node.state.store(super::ARMED, Ordering::Release);
            fence(Ordering::SeqCst);
            WHEEL.earliest[0].fetch_min(when, Ordering::SeqCst);
        }
    }

    /// Sweeps list `from` of the model wheel at model time `now`, as the
    /// timer thread sweeps a slot: fires the due entries and moves the
    /// others to the other list (in a two-slot wheel, nothing that is not
    /// due stays), relinking them once `from` is quiescent.
    pub fn sweep(from: usize, now: u64) {
        let to = 1 - from;
        let (mut due, mut moving) = (Vec::new(), Vec::new());
        let earliest = &WHEEL.earliest[from];
        earliest.store(u64::MAX, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let stays = |_| false;
        super::sweep_list(
            &WHEEL.lists[from],
            from,
            now,
            stays,
            earliest,
            &mut due,
            &mut moving,
        );
        for entry in moving {
            while !WHEEL.lists[entry.from].is_quiescent() {
                crate::primitive::thread::yield_now();
            }
            // SAFETY: from `sweep_list` on its list, which is quiescent.
            unsafe { super::relink(&WHEEL.lists, entry, |_| (to, &WHEEL.earliest[to])) };
        }
        for entry in due {
            let _ = entry.fire();
        }
    }

    /// Entries still linked in list `index` of the model wheel, removed or
    /// not.
    pub fn linked(index: usize) -> usize {
        WHEEL.lists[index].linked()
    }

    /// Takes the timers armed on this thread since the last call.
    pub fn take_armed() -> Vec<ArmedTimer> {
        super::imp::take_armed()
            .into_iter()
            .map(ArmedTimer)
            .collect()
    }
}
