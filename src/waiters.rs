//! The waiter set: parked threads and task wakers waiting on a node's `Done`.
//!
//! A [`Waiter`] is a heap entry linked into its node's `List<Waiter>` (see
//! [`crate::list`]). Cancellation closes the list — one swap takes the whole
//! set — and notifies every entry that has not given up.
//!
//! * **Callbacks** (`WaiterKind::Callback`) are claimed like a task's waker
//!   cell and dispatched through their vtable: an after-func entry goes to
//!   the worker pool (`after_func/`), an on-done entry runs its `f` on the
//!   notifying thread (`on_done.rs`, which also parks its stoppers on a
//!   waiter set of its own with `park_on`).
//! * **Blocking waits** park on the node's sequence word where the target
//!   has a futex (`park.rs`: Linux), outside the waiter set. Elsewhere, and
//!   for `on_done`'s stoppers, they use a per-thread cached entry
//!   (`park_on`): once a thread has waited, later untimed waits reuse it
//!   and allocate nothing. The entry is reused only when no list holds a
//!   reference to it any more.
//! * **Async waits** (`Done` as a `Future`) take an entry on their first
//!   pending poll and keep it for the life of that `Done`. The entry comes
//!   from the polling thread's spares (`SPARE_TASKS`, a few entries per
//!   thread) when one is free, and goes back to the spares of the thread
//!   that drops the `Done`: a `select!` loop that makes a fresh `done()`,
//!   polls it pending and drops it on every iteration allocates nothing in
//!   steady state (invariant 4).
//! * A waiter that gives up (a timed-out wait, a dropped future) removes its
//!   entry logically; the list unlinks it later (amortised) and drops it.
//!   A dropped future also drops its waker at once (unless a cancellation
//!   froze its entry first: that one wakes the waker and drops it).
//!
//! # The entry's state word
//!
//! | bits      | meaning                                                     |
//! |-----------|-------------------------------------------------------------|
//! | `NOTIFIED`| the closer has notified this entry (set once, never cleared |
//! |           | while shared)                                               |
//! | `REGISTERING` | a poller or a withdrawing future owns the waker cell    |
//! | `>> 2`    | reference count: the owner (thread cache or `Done`) + the list |
//!
//! # Invariants
//!
//! 1. `thread` never changes after creation; `waker` is accessed only by the
//!    holder of the cell: a poller between setting and clearing
//!    `REGISTERING` (and only if `NOTIFIED` was clear when it set it), or the
//!    closer after setting `NOTIFIED` while `REGISTERING` was clear. The two
//!    `fetch_or`s are totally ordered, so at most one holds it. A closer
//!    that found `REGISTERING` set never comes back, so the poller that
//!    then sees `NOTIFIED` in its clearing `fetch_and` keeps the cell; a
//!    withdrawing owner whose `remove` marked the entry before any closer
//!    froze it holds the cell too (a closer never notifies a removed
//!    entry); and an entry no list holds (count 1) is its owner's alone
//!    (invariant 4).
//! 2. An entry is reused (blocking waits) only when its count is 1: no list
//!    and no deferred release can touch it.
//! 3. The closer notifies a thread entry and drops the list's reference in a
//!    single `fetch_sub` when it may release immediately, so a thread that
//!    sees `NOTIFIED` also sees its entry free for reuse: untimed waits on
//!    the steady path allocate nothing.
//! 4. A task entry is taken from a thread's spares only when its count is 1
//!    (as in invariant 2): the list has given up its reference — unlinked
//!    by the withdrawing `remove` (at the head, the usual case), by a
//!    cleanup pass or an epoch-deferred release, or released by the closer
//!    after notifying — so no closer, cleanup pass or deferred release can
//!    still read its link or its waker cell. The Acquire load of that count
//!    pairs with the AcqRel decrement that gave the list's reference up.
//!    A spare may still be linked (count 2, withdrawn but not yet
//!    unlinked): it is skipped, and evicted (its reference dropped, the
//!    list frees it) when a returning entry needs its slot. A spare's
//!    waker cell is empty: withdrawing drops the waker, the closer takes
//!    it, and a poll that holds the cell when the closer comes (so the
//!    closer skips it) drops it; taking a spare overwrites the cell anyway.

use core::ptr;
use core::task::{Context as TaskContext, Poll, Waker};
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use crossbeam_epoch::Guard;

use crate::list::{Entry, Link, List, release_link_from};
use crate::primitive::atomic::{AtomicUsize, Ordering};
use crate::primitive::thread::{self, Thread};
use crate::primitive::{UnsafeCell, thread_local};

const NOTIFIED: usize = 0b01;
const REGISTERING: usize = 0b10;
const REF: usize = 0b100;

/// What a waiter is: what notifying it does, and what `REGISTERING` means.
/// The state bits are set only by this module's methods (the claims below
/// for callback entries), so the protocol lives here.
pub(crate) enum WaiterKind {
    /// A parked thread (blocking waits): notifying unparks it.
    Thread(Thread),
    /// A task (`Done` as a `Future`): notifying wakes its waker.
    Task(Waker),
    /// A callback entry, the head of a larger allocation: an after-func
    /// (`after_func/mod.rs`) or an on-done callback (`on_done.rs`).
    /// Notifying dispatches it through its vtable — to the worker pool, or
    /// by running `f` right there — and `REGISTERING` means "stopped"
    /// (`claim_stop`).
    Callback(&'static CallbackVtable),
}

/// One parked thread or task waiting on a node.
pub(crate) struct Waiter {
    link: Link,
    state: AtomicUsize,
    thread: Option<Thread>,
    waker: UnsafeCell<Option<Waker>>,
    /// Set for after-func entries: the entry is the head of a larger
    /// allocation (see `after_func.rs`), and notifying it dispatches the
    /// callback instead of waking anyone. `REGISTERING` then means
    /// "stopped".
    callback: Option<&'static CallbackVtable>,
}

/// The per-closure-type operations of a callback entry.
pub(crate) struct CallbackVtable {
    /// Dispatches a claimed entry (takes one reference): an after-func is
    /// handed to the callback runners; an on-done callback runs here, and a
    /// panic of its `f` comes back as `Err`, to be resumed by the canceller
    /// once its work is done (as a waker's, `wake_all`).
    pub(crate) dispatch: unsafe fn(*const Waiter) -> Result<(), Panic>,
    /// Frees the whole allocation, dropping a closure that never ran.
    pub(crate) free: unsafe fn(*const Waiter),
}

// SAFETY: the entry's `Link`, state word and `UnsafeCell` are accessed under
// the protocol of the module docs; `Thread` and `Waker` are `Send + Sync`.
unsafe impl Entry for Waiter {
    fn link(&self) -> &Link {
        &self.link
    }

    unsafe fn release_link(this: *const Self) {
        // SAFETY: forwarded from the caller (the list's reference).
        unsafe { Waiter::release_ref(this) }
    }

    /// A count of two is then the list's (ours to drop) and the remover's:
    /// nobody else holds a reference, and a new one can only be taken from
    /// a held one, so nothing else writes the state word — the usual
    /// withdrawal (a dropped pending `Done`, a stopped callback) gives the
    /// reference back with a plain store instead of a locked `fetch_sub`.
    unsafe fn release_link_unlinked(this: *const Self) {
        // SAFETY: the caller's references keep the entry alive.
        let state = unsafe { &(*this).state };
        // Ordering: Relaxed — per the above, no other thread can write the
        // word now; the remover's own earlier accesses are ordered by
        // program order, other threads' by how the remover got the entry.
        let word = state.load(Ordering::Relaxed);
        if word / REF == 2 {
            state.store(word - REF, Ordering::Relaxed);
        } else {
            // SAFETY: forwarded from the caller (the list's reference).
            unsafe { Waiter::release_ref(this) }
        }
    }
}

// SAFETY: see the `Entry` impl.
unsafe impl Sync for Waiter {}
// SAFETY: see the `Entry` impl.
unsafe impl Send for Waiter {}

/// The set of waiters of one cancellable node.
pub(crate) type WaiterList = List<Waiter>;

impl Waiter {
    fn alloc(kind: WaiterKind) -> *const Waiter {
        Box::into_raw(Box::new(Waiter::new(kind)))
    }

    /// An entry with one reference.
    pub(crate) fn new(kind: WaiterKind) -> Waiter {
        let (thread, waker, callback) = match kind {
            WaiterKind::Thread(thread) => (Some(thread), None, None),
            WaiterKind::Task(waker) => (None, Some(waker), None),
            WaiterKind::Callback(vtable) => (None, None, Some(vtable)),
        };
        Waiter {
            link: Link::new(),
            state: AtomicUsize::new(REF),
            thread,
            waker: UnsafeCell::new(waker),
            callback,
        }
    }

    /// Claims a callback entry for `AfterFunc::stop` (after-func invariant
    /// 1): true if this call won, before any notification and any other
    /// stop; the winner alone then touches the closure.
    pub(crate) fn claim_stop(&self) -> bool {
        // Ordering: AcqRel — after-func invariant 1, totally ordered with
        // the notifying `fetch_or(NOTIFIED)`.
        let prev = self.state.fetch_or(REGISTERING, Ordering::AcqRel);
        prev & (NOTIFIED | REGISTERING) == 0
    }

    /// Claims a callback entry that is in no list (its context was done
    /// before it could register) for dispatch, and takes the reference the
    /// dispatch hands to the runner. The caller owns the only reference.
    pub(crate) fn claim_unlisted(&self) {
        // Ordering: AcqRel — after-func invariant 1 (no `stop` can run yet:
        // the `AfterFunc` does not exist), kept for uniformity.
        self.state.fetch_or(NOTIFIED, Ordering::AcqRel);
        // Ordering: Relaxed — a new reference made from the caller's, on an
        // entry no other thread can reach yet.
        self.state.fetch_add(REF, Ordering::Relaxed);
    }

    /// Whether a callback entry was started (notified) and whether it was
    /// stopped first, for `Debug`.
    pub(crate) fn callback_status(&self) -> (bool, bool) {
        // Ordering: Acquire — a diagnostic read of the claims above.
        let state = self.state.load(Ordering::Acquire);
        let started = state & NOTIFIED != 0;
        (started, state & REGISTERING != 0 && !started)
    }

    /// Drops one reference; frees the entry when it was the last.
    ///
    /// # Safety
    ///
    /// The caller owns one reference on `this` and does not use it after.
    pub(crate) unsafe fn release_ref(this: *const Waiter) {
        // SAFETY: the caller's reference keeps the entry alive until here.
        // Ordering: AcqRel — the last owner sees every other owner's writes
        // before freeing (like `Arc`).
        let prev = unsafe { (*this).state.fetch_sub(REF, Ordering::AcqRel) };
        if prev / REF == 1 {
            // SAFETY: that was the last reference.
            unsafe { Waiter::free(this) };
        }
    }

    /// # Safety
    ///
    /// No reference is left on `this`.
    unsafe fn free(this: *const Waiter) {
        // SAFETY: per the contract; callback entries are freed by their own
        // type, plain ones came from `Box::into_raw` in `alloc`.
        unsafe {
            match (*this).callback {
                Some(vtable) => (vtable.free)(this),
                None => drop(Box::from_raw(this as *mut Waiter)),
            }
        }
    }

    /// Pushes `entry`, which no other thread can reach yet, onto `list`,
    /// counting the list's reference first — with a plain store: nobody
    /// else can read the count. `Err` means the list is closed (the
    /// reference is given back).
    ///
    /// # Safety
    ///
    /// `entry` is valid, not linked anywhere, and the caller's are its only
    /// references.
    pub(crate) unsafe fn push_unshared(entry: *const Waiter, list: &WaiterList) -> Result<(), ()> {
        // SAFETY: valid per the contract.
        let waiter = unsafe { &*entry };
        // Ordering: Relaxed — nobody else reads the count before the push's
        // Release CAS publishes it.
        let count = waiter.state.load(Ordering::Relaxed);
        waiter.state.store(count + REF, Ordering::Relaxed);
        // SAFETY: valid and unlinked; kept alive by the caller's reference
        // and the list's.
        match unsafe { list.push(entry) } {
            Ok(()) => Ok(()),
            Err(_) => {
                // Ordering: Relaxed — still unshared: the push failed.
                waiter.state.store(count, Ordering::Relaxed);
                Err(())
            }
        }
    }

    /// Notifies the entry and gives up the list's reference on it (now, or
    /// through `guard` when a cleanup pass may still read the chain).
    ///
    /// # Safety
    ///
    /// The caller owns the list's reference on `this` (it froze the entry and
    /// it had not been removed).
    unsafe fn notify(this: *const Waiter, guard: Option<&Guard>) -> Result<(), Panic> {
        // SAFETY: the list reference keeps the entry alive until released.
        let waiter = unsafe { &*this };
        if let Some(thread) = &waiter.thread {
            let thread = thread.clone();
            if guard.is_none() {
                // Set NOTIFIED and drop the list's reference at once
                // (invariant 3). NOTIFIED is clear: only a closer sets it,
                // and this entry is in one closed list.
                // Ordering: AcqRel — Release publishes the done state to the
                // waiter's Acquire load of `state`; Acquire for freeing.
                let prev = waiter.state.fetch_sub(REF - NOTIFIED, Ordering::AcqRel);
                if prev / REF == 1 {
                    // SAFETY: the owner has already dropped its reference and
                    // ours was the last one.
                    unsafe { Waiter::free(this) };
                }
            } else {
                // Ordering: Release — pairs with the waiter's Acquire load.
                waiter.state.fetch_or(NOTIFIED, Ordering::Release);
                // SAFETY: we own the list's reference.
                unsafe { release_link_from(guard, this) };
            }
            thread.unpark();
            Ok(())
        } else if let Some(callback) = waiter.callback {
            // Ordering: AcqRel — totally ordered with `stop`'s
            // `fetch_or(REGISTERING)`: exactly one of the two wins.
            let prev = waiter.state.fetch_or(NOTIFIED, Ordering::AcqRel);
            let dispatched = if prev & REGISTERING == 0 {
                // The dispatch's reference, taken while ours keeps it alive.
                waiter.state.fetch_add(REF, Ordering::Relaxed);
                // SAFETY: we pass that new reference on.
                unsafe { (callback.dispatch)(this) }
            } else {
                Ok(())
            };
            // SAFETY: we own the list's reference.
            unsafe { release_link_from(guard, this) };
            dispatched
        } else {
            // Ordering: AcqRel — totally ordered with the poller's
            // `fetch_or(REGISTERING)` (invariant 1).
            let prev = waiter.state.fetch_or(NOTIFIED, Ordering::AcqRel);
            let waker = if prev & REGISTERING == 0 {
                // SAFETY: invariant 1 — we hold the cell.
                waiter.waker.with_mut(|cell| unsafe { (*cell).take() })
            } else {
                None
            };
            // SAFETY: we own the list's reference.
            unsafe { release_link_from(guard, this) };
            match waker {
                // A waker is foreign code: contain its panic (see `wake_all`).
                Some(waker) => std::panic::catch_unwind(AssertUnwindSafe(|| waker.wake())),
                None => Ok(()),
            }
        }
    }

    #[inline]
    fn is_notified(&self) -> bool {
        // Ordering: Acquire — pairs with the closer's Release in `notify`.
        self.state.load(Ordering::Acquire) & NOTIFIED != 0
    }
}

/// Wakes every waiter of a node. Called once, by the cancellation that won
/// the node's state word (or by its release, when no waiter can remain).
///
/// A waker that panics in `wake` does not stop the others: the first panic
/// is caught, every remaining waiter is still notified, and the payload is
/// returned for the caller to resume once its own work is complete.
#[inline]
pub(crate) fn wake_all(list: &WaiterList) -> Option<Panic> {
    // Most contexts are cancelled with nobody waiting: close the empty list
    // in place (the same one read-modify-write as `close`), with no chain.
    if list.close_if_empty() {
        return None;
    }
    wake_linked(list)
}

/// `wake_all` for a list with entries linked.
fn wake_linked(list: &WaiterList) -> Option<Panic> {
    let mut panic = None;
    let mut chain = list.close();
    while let Some((waiter, removed)) = chain.next_entry() {
        if removed {
            // SAFETY: yielded by this chain; the waiter gave up, we only drop
            // the list's reference.
            unsafe { chain.release(waiter) };
        } else {
            // SAFETY: the chain gave us the list's reference on `waiter`.
            if let Err(payload) = unsafe { Waiter::notify(waiter, chain.guard()) } {
                panic.get_or_insert(payload);
            }
        }
    }
    panic
}

/// A caught panic payload.
pub(crate) type Panic = Box<dyn core::any::Any + Send + 'static>;

/// Runs `drop_user_data`, catching a panic into `panic` (the first one is
/// kept): user code never cuts a release (node.rs) or a drain short.
pub(crate) fn contain(panic: &mut Option<Panic>, drop_user_data: impl FnOnce()) {
    if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(drop_user_data)) {
        panic.get_or_insert(payload);
    }
}

/// Closes the waiter set of a released node without notifying: what is
/// left there is withdrawn waiters and callbacks of a context that can no
/// longer be done; dropping the set's references frees them (and the
/// closures of those callbacks, on this thread: the node's release). A
/// closure whose `Drop` panics does not stop the drain: the first panic is
/// returned once every entry is released.
pub(crate) fn drain(list: &WaiterList) -> Option<Panic> {
    let mut panic = None;
    let mut chain = list.close();
    while let Some((waiter, _)) = chain.next_entry() {
        contain(&mut panic, || {
            // SAFETY: yielded by this chain, released once.
            unsafe { chain.release(waiter) }
        });
    }
    panic
}

/// The calling thread's reusable entry.
struct LocalWaiter(core::cell::Cell<*const Waiter>);

impl Drop for LocalWaiter {
    fn drop(&mut self) {
        let waiter = self.0.get();
        if !waiter.is_null() {
            // SAFETY: the cache owns one reference.
            unsafe { Waiter::release_ref(waiter) };
        }
    }
}

#[cfg(not(loom))]
thread_local! {
    static LOCAL: LocalWaiter = const { LocalWaiter(core::cell::Cell::new(ptr::null())) };
}

// loom's `thread_local!` has no `const` initialisers.
#[cfg(loom)]
thread_local! {
    static LOCAL: LocalWaiter = LocalWaiter(core::cell::Cell::new(ptr::null()));
}

/// Runs `f` with an entry owned by the calling thread, whose count is 1
/// (reused when possible, invariant 2).
fn with_thread_waiter<R>(f: impl FnOnce(*const Waiter) -> R) -> R {
    let mut f = Some(f);
    let reused = LOCAL.try_with(|local| {
        let mut waiter = local.0.get();
        let free = !waiter.is_null() && {
            // SAFETY: the cache owns a reference, so the entry is alive.
            // Ordering: Acquire — pairs with the AcqRel release of the
            // list's reference, so nobody else's accesses can be pending.
            let state = unsafe { (*waiter).state.load(Ordering::Acquire) };
            state / REF == 1
        };
        if !free {
            if !waiter.is_null() {
                // SAFETY: the cache's reference; a list still holds another.
                unsafe { Waiter::release_ref(waiter) };
            }
            waiter = Waiter::alloc(WaiterKind::Thread(thread::current()));
            local.0.set(waiter);
        }
        // SAFETY: the count is 1 and that reference is ours: the entry is
        // exclusively ours until we push it.
        unsafe { (*waiter).state.store(REF, Ordering::Relaxed) };
        (f.take().expect("called once"))(waiter)
    });
    match reused {
        Ok(r) => r,
        // The thread-local is being destroyed: use a one-off entry.
        Err(_) => {
            let waiter = Waiter::alloc(WaiterKind::Thread(thread::current()));
            let r = (f.take().expect("called once"))(waiter);
            // SAFETY: our reference.
            unsafe { Waiter::release_ref(waiter) };
            r
        }
    }
}

/// Blocks the calling thread until the list is closed by a cancellation or
/// `deadline` passes. Returns true if it was notified (or found the list
/// closed).
pub(crate) fn park_on(list: &WaiterList, deadline: Option<Instant>) -> bool {
    with_thread_waiter(|waiter| {
        // SAFETY: exclusive until pushed (count 1, ours).
        let entry = unsafe { &*waiter };
        // The list's reference, counted before linking.
        entry.state.store(2 * REF, Ordering::Relaxed);
        // SAFETY: valid, not linked anywhere, kept alive by our reference
        // and then by the list's.
        if unsafe { list.push(waiter) }.is_err() {
            entry.state.store(REF, Ordering::Relaxed);
            return true;
        }
        loop {
            if entry.is_notified() {
                return true;
            }
            match deadline {
                None => thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    thread::park_timeout(deadline - now);
                }
            }
        }
        // Timed out: give up the entry. If a closer froze it first, it will
        // be (or was) notified and the caller sees the node done.
        // SAFETY: pushed onto this list, alive (our reference).
        unsafe { list.remove(waiter) };
        entry.is_notified()
    })
}

/// How many spare task entries a thread keeps (invariant 4): one per
/// `Done` a task on this thread typically has pending at once, plus room
/// for entries that are withdrawn but not yet unlinked.
const SPARE_TASK_ENTRIES: usize = 4;

/// The calling thread's spare task entries: each slot owns one reference,
/// or is null (invariant 4).
struct SpareTasks([core::cell::Cell<*const Waiter>; SPARE_TASK_ENTRIES]);

impl Drop for SpareTasks {
    fn drop(&mut self) {
        // loom drops a thread's thread-locals in hash-map order, so a
        // destructor here that touched a modelled atomic would make the
        // schedule differ between runs next to crossbeam-epoch's own
        // thread-local ("is the model fully deterministic?"). Under loom the
        // spares are leaked instead (plain memory: no waker, no loom `Arc`).
        if cfg!(loom) {
            return;
        }
        for slot in &self.0 {
            let waiter = slot.get();
            if !waiter.is_null() {
                // SAFETY: the slot owns one reference.
                unsafe { Waiter::release_ref(waiter) };
            }
        }
    }
}

#[cfg(not(loom))]
thread_local! {
    static SPARE_TASKS: SpareTasks =
        const { SpareTasks([const { core::cell::Cell::new(ptr::null()) }; SPARE_TASK_ENTRIES]) };
}

// loom's `thread_local!` has no `const` initialisers.
#[cfg(loom)]
thread_local! {
    static SPARE_TASKS: SpareTasks =
        SpareTasks([const { core::cell::Cell::new(ptr::null()) }; SPARE_TASK_ENTRIES]);
}

/// Whether no list holds a reference on `waiter` any more: its count is 1,
/// the caller's (invariant 4).
///
/// # Safety
///
/// The caller owns a reference on `waiter`.
#[inline]
unsafe fn is_unshared(waiter: *const Waiter) -> bool {
    // SAFETY: the caller's reference keeps the entry alive.
    let entry = unsafe { &*waiter };
    // Ordering: Acquire — pairs with the AcqRel decrement that gave up the
    // list's reference (`release_ref`), so the closer's, the cleanup
    // passes' and the remover's accesses to the entry happen before ours.
    entry.state.load(Ordering::Acquire) / REF == 1
}

/// A spare task entry of this thread that no list holds any more, with one
/// reference (ours) and a clean state word; `None` if there is none.
#[inline]
fn take_spare_task() -> Option<*const Waiter> {
    let spare = SPARE_TASKS
        .try_with(|spares| {
            spares.0.iter().find_map(|slot| {
                let waiter = slot.get();
                // SAFETY: the slot owns a reference.
                (!waiter.is_null() && unsafe { is_unshared(waiter) }).then(|| {
                    slot.set(ptr::null());
                    waiter
                })
            })
        })
        .ok()
        .flatten()?;
    // SAFETY: the count is 1 and that reference is ours (invariant 4): the
    // entry is exclusively ours until we push it. Clears `NOTIFIED` and
    // `REGISTERING` from its last use.
    // Ordering: Relaxed — published by the push's Release CAS.
    unsafe { (*spare).state.store(REF, Ordering::Relaxed) };
    Some(spare)
}

/// Gives a task entry (the caller's reference on it) back to this thread's
/// spares: into an empty slot, else in place of a spare that a list still
/// holds (whose reference is dropped: the list frees it). With no room, or
/// while the thread-local is being destroyed, the reference is dropped.
#[inline]
fn recycle_task(waiter: *const Waiter) {
    let kept = SPARE_TASKS
        .try_with(|spares| {
            let slot = spares
                .0
                .iter()
                .find(|slot| slot.get().is_null())
                .or_else(|| {
                    spares.0.iter().find(|slot| {
                        // SAFETY: the slot owns a reference.
                        !unsafe { is_unshared(slot.get()) }
                    })
                });
            slot.map(|slot| {
                let evicted = slot.replace(waiter);
                if !evicted.is_null() {
                    // SAFETY: the slot's reference, given up.
                    unsafe { Waiter::release_ref(evicted) };
                }
            })
            .is_some()
        })
        .unwrap_or(false);
    if !kept {
        // SAFETY: the caller's reference, given up.
        unsafe { Waiter::release_ref(waiter) };
    }
}

/// The async half: one entry per `Done` future, taken from the thread's
/// spares and given back to them (invariant 4).
#[derive(Debug)]
pub(crate) struct TaskWaiter(*const Waiter);

// SAFETY: the pointer is an owned reference on a `Sync` entry.
unsafe impl Send for TaskWaiter {}
// SAFETY: `TaskWaiter` has no `&self` methods that touch the entry.
unsafe impl Sync for TaskWaiter {}

impl TaskWaiter {
    /// Registers an entry with `waker`: a spare of this thread, or a new
    /// one. `Err` means the list is closed (the node is done).
    #[inline]
    pub(crate) fn register(list: &WaiterList, waker: &Waker) -> Result<TaskWaiter, ()> {
        let waiter = match take_spare_task() {
            Some(waiter) => {
                // SAFETY: our reference keeps the entry alive.
                let entry = unsafe { &*waiter };
                let old = entry.waker.with_mut(|cell| {
                    // SAFETY: exclusively ours (invariant 4): no list holds
                    // it, so nobody else reads the cell.
                    unsafe { (*cell).replace(waker.clone()) }
                });
                drop(old);
                waiter
            }
            None => Waiter::alloc(WaiterKind::Task(waker.clone())),
        };
        // SAFETY: exclusively ours (count 1, our reference).
        let entry = unsafe { &*waiter };
        // The list's reference, counted before linking.
        // Ordering: Relaxed — published by the push's Release CAS.
        entry.state.store(2 * REF, Ordering::Relaxed);
        // SAFETY: valid and unlinked; kept alive by our reference and the
        // list's.
        match unsafe { list.push(waiter) } {
            Ok(()) => Ok(TaskWaiter(waiter)),
            Err(_) => {
                // Never linked: still exclusively ours.
                entry.state.store(REF, Ordering::Relaxed);
                // SAFETY: exclusively ours.
                let waker = entry.waker.with_mut(|cell| unsafe { (*cell).take() });
                drop(waker);
                recycle_task(waiter);
                Err(())
            }
        }
    }

    /// The entry, with our reference on it, for a `Done` to keep in a
    /// tagged word (`Done::held`).
    #[inline]
    pub(crate) fn into_raw(self) -> *const Waiter {
        self.0
    }

    /// The registration `into_raw` gave.
    ///
    /// # Safety
    ///
    /// `entry` came from `into_raw`, and its reference is passed on to the
    /// result exactly once (the result's `cancel` or `finish` gives it up).
    #[inline]
    pub(crate) unsafe fn from_raw(entry: *const Waiter) -> TaskWaiter {
        TaskWaiter(entry)
    }

    /// Re-polls: Ready once notified, otherwise stores the new waker.
    pub(crate) fn poll(&mut self, cx: &mut TaskContext<'_>) -> Poll<()> {
        // SAFETY: our reference keeps the entry alive.
        let entry = unsafe { &*self.0 };
        if entry.is_notified() {
            return Poll::Ready(());
        }
        // Ordering: AcqRel — invariant 1; Acquire sees a notification.
        let prev = entry.state.fetch_or(REGISTERING, Ordering::AcqRel);
        if prev & NOTIFIED != 0 {
            return Poll::Ready(());
        }
        entry.waker.with_mut(|cell| {
            // SAFETY: invariant 1 — we hold the cell until we clear
            // REGISTERING.
            let slot = unsafe { &mut *cell };
            match slot {
                Some(old) if old.will_wake(cx.waker()) => {}
                _ => *slot = Some(cx.waker().clone()),
            }
        });
        // Ordering: AcqRel — Release hands the cell back; Acquire sees a
        // closer that came while we held it (it did not take the waker).
        let prev = entry.state.fetch_and(!REGISTERING, Ordering::AcqRel);
        if prev & NOTIFIED != 0 {
            // The closer came while we held the cell and left the waker:
            // nobody else touches the cell again (notified once; withdrawing
            // is ours), so drop it now rather than keep it in a spare
            // (invariant 4).
            // SAFETY: invariant 1 — the closer gave the cell up for good.
            let waker = entry.waker.with_mut(|cell| unsafe { (*cell).take() });
            drop(waker);
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Gives the entry up: removes it from `list` and, unless a closer got
    /// to it first, drops its waker now.
    ///
    /// # Safety
    ///
    /// `list` is the list this entry was registered on, and it is alive.
    #[inline]
    pub(crate) unsafe fn cancel(self, list: &WaiterList) {
        let this = self.0;
        // SAFETY: registered on `list`, alive (our reference).
        let waker = if unsafe { list.remove(this) } {
            // Our mark came before any closer's freeze (list invariant 2),
            // so no closer will notify the entry: the cell is ours
            // (invariant 1), with no `REGISTERING` claim (one RMW less on
            // the `select!`-loop path). Otherwise the closer froze it first
            // and notifies it: it takes the waker (a spurious wake-up of a
            // task that dropped its future, which futures allow) or finds a
            // poll's `REGISTERING`, which no `Done` leaves set.
            // SAFETY: our reference keeps the entry alive.
            let entry = unsafe { &*this };
            // SAFETY: see above — no other party touches the cell.
            entry.waker.with_mut(|cell| unsafe { (*cell).take() })
        } else {
            None
        };
        // Usually unlinked by the `remove` above (our entry at the head), so
        // free for the next `register` of this thread.
        recycle_task(this);
        // User code last: a waker whose drop panics leaks no entry.
        drop(waker);
    }

    /// Gives the entry back after it was notified (nothing left to
    /// withdraw).
    pub(crate) fn finish(self) {
        recycle_task(self.0);
    }
}
