//! `on_done`: a synchronous callback run by whoever makes a context done
//! (C++'s `std::stop_callback`, .NET's `CancellationToken.Register`).
//!
//! An on-done callback is one allocation, an `OnDoneEntry<F>`: a waiter
//! entry (see `waiters.rs`) followed by the callback's own state word
//! (`progress`), a waiter set of its own (`stoppers`) and the closure. The
//! entry is a `WaiterKind::Callback` waiter, exactly like an after-func
//! entry: it is linked into the waiter set of the context's cancellable
//! node, and the cancellation that closes the set claims it with the same
//! `fetch_or(NOTIFIED)` that `stop` races with `fetch_or(REGISTERING)`
//! (after-func invariant 1; the claims live in `waiters.rs`). The two kinds
//! differ only in what their vtable's `dispatch` does with a claimed entry:
//! an after-func entry is handed to the worker pool, an on-done entry runs
//! `f` right there, on the notifying thread — inside `cancel()`, on the
//! timer thread for a deadline, before either returns — as a task entry's
//! waker is woken there. A panicking `f` is caught and handed back through
//! `wake_all` like a panicking waker's, so the cancellation of the whole
//! subtree completes before the panic resumes in the canceller.
//!
//! What the after-func protocol does not need, and an on-done callback
//! does, is *waiting for a running `f`*: `stop()` and drop must not return
//! while `f` runs on another thread (so that what `f` uses can be freed
//! right after), and must return at once when called from inside `f`. That
//! is `progress`, below; the waiting itself is a parked-thread wait on the
//! entry's own `stoppers` set (`waiters::park_on`), closed and woken by
//! `waiters::wake_all` when `f` is settled. So parked threads, task wakers,
//! after-func dispatch and on-done callbacks all share one waiter-set
//! machinery, and stop-waiters park (no spinning, no lock).
//!
//! # The callback's state
//!
//! The claim (in the waiter's state word, `waiters.rs`) decides *whether*
//! `f` runs; `progress` records *where it is*, for the losers of the claim:
//!
//! | claim won by  | `progress`                 | meaning                                           |
//! |---------------|----------------------------|---------------------------------------------------|
//! | nobody        | `0`                        | pending: `f` is in the entry                      |
//! | the notifier  | `token \| RUNNING`         | `f` runs on the thread whose token this is        |
//! | the notifier  | `token \| RUNNING \| SETTLED` | `f` has returned (or panicked)                 |
//! | a `stop`      | `SETTLED \| STOPPED`       | `f` was taken out unrun (and is dropped after)    |
//! | any           | `… \| WAITING`             | a stopper may be parked on `stoppers`             |
//!
//! `token` is the address of a thread-local of the running thread: unique
//! among live threads, 16-aligned, so it leaves the four flag bits free.
//!
//! # Invariants
//!
//! 1. Exactly one party claims the entry (after-func invariant 1): the
//!    notifier (then `f` runs once, on its thread) or one `stop` (then `f`
//!    is dropped unrun); a drained entry (its context released undone) is
//!    claimed by nobody and freed with `f` inside.
//! 2. Only the claimant writes `token | RUNNING` and `SETTLED`, each once,
//!    in that order; `SETTLED` is set after `f` has returned, or after `f`
//!    was taken out of the entry by a winning `stop` (before its `Drop`
//!    runs, so a `Drop` that stops its own callback does not wait). A stop
//!    that loses the claim cannot tell from the claim bits alone whether a
//!    notifier or another stop won (a notifier that loses sets its bit
//!    too), so it waits for `SETTLED` either way.
//! 3. `SETTLED` and `WAITING` are set by `fetch_or` on the one word, so they
//!    are totally ordered: a stopper that set `WAITING` first is woken by
//!    the settler, which then closes `stoppers`; a stopper that comes
//!    after sees `SETTLED` and never parks. A stopper parks only on
//!    `stoppers`, whose close is the settler's last touch of it.
//! 4. A stopper that lost the claim waits for `SETTLED` unless `RUNNING`
//!    carries its own thread's token: then it is inside `f` (`f` runs
//!    synchronously, so every later frame of that thread is nested in it)
//!    and returns at once. Before `RUNNING` is set the claimant runs only
//!    goctx code, so a stopper on the claimant's thread cannot exist then.
//!    The stopper takes its token *before* it reads the runner's, and reads
//!    it with its `fetch_or(WAITING)` (a read-modify-write reads the latest
//!    value): a runner that has exited — the only one whose token a live
//!    thread can share, its thread-local's memory reused — settled before
//!    exiting, before the stopper's token existed, so the stopper sees
//!    `SETTLED`, never a stale `RUNNING` with an equal token. (The loom
//!    model `on_done_two_stops_race_cancel` found that ordering needed at 3
//!    preemptions: loom's thread-locals are boxed lazily.)
//! 5. References on the entry: the `OnDone` (until dropped or detached),
//!    the waiter list while linked, and the notifier while it runs `f`
//!    (the one `dispatch` is handed), so `stoppers` outlives its close.
//! 6. The `OnDone` holds one handle on the node it registered with until it
//!    is dropped, detached or its `stop` wins (after-func invariant 2): the
//!    context stays registered, cancellable by its ancestors, while the
//!    `OnDone` exists. Once every handle is gone the context is released
//!    and a pending, detached `f` is dropped unrun with it (it can never
//!    run: nothing can make the context done any more).
//!
//! # Orderings
//!
//! * `token | RUNNING`: Relaxed — the word carries the token itself, and a
//!   stopper compares it only with its own thread's (equal only if that
//!   thread wrote it, earlier in its own program order).
//! * `SETTLED`: AcqRel — Release makes everything `f` did happen before a
//!   stopper's Acquire load that sees it (the `stop_callback` guarantee:
//!   what `f` uses may be freed once `stop()` returns); Acquire sees a
//!   stopper's `WAITING`, totally ordered with it (invariant 3).
//! * `WAITING`: AcqRel — the other half of invariant 3; it is also how a
//!   stopper reads the runner's token (invariant 4).

use core::fmt;
use core::ptr::{self, NonNull};

use crate::cancel::CancelNode;
use crate::node::NodeRef;
use crate::primitive::UnsafeCell;
use crate::primitive::atomic::{AtomicPtr, AtomicUsize, Ordering};
use crate::primitive::thread_local;
use crate::waiters::{self, CallbackVtable, Panic, Waiter, WaiterKind, WaiterList};

/// `f` was claimed by a notifier and has started (with its thread's token).
const RUNNING: usize = 0b0001;
/// `f` has returned, or was taken out unrun by a winning `stop`.
const SETTLED: usize = 0b0010;
/// A stopper waits (or is about to) on `stoppers`.
const WAITING: usize = 0b0100;
/// A `stop` won the claim (with `SETTLED`; for `Debug`).
const STOPPED: usize = 0b1000;
const TOKEN_MASK: usize = !0b1111;

/// The type-independent head of an on-done allocation.
#[repr(C)]
pub(crate) struct OnDoneHeader {
    waiter: Waiter,
    /// The table in the module docs.
    progress: AtomicUsize,
    /// Threads in `stop()`/drop waiting for a running `f` (invariant 3).
    stoppers: WaiterList,
    /// Takes `f` out and runs it (the caller won the claim for running).
    run: unsafe fn(*const OnDoneHeader) -> Result<(), Panic>,
    /// Takes `f` out, settles the entry, then drops `f` (the caller won the
    /// claim for stopping).
    discard: unsafe fn(*const OnDoneHeader),
}

#[repr(C)]
struct OnDoneEntry<F> {
    header: OnDoneHeader,
    f: UnsafeCell<Option<F>>,
}

impl<F: FnOnce() + Send + 'static> OnDoneEntry<F> {
    const VTABLE: CallbackVtable = CallbackVtable {
        dispatch: dispatch_inline,
        free: Self::free,
    };

    /// # Safety
    ///
    /// `this` heads an `OnDoneEntry<F>` with no reference left.
    unsafe fn free(this: *const Waiter) {
        // SAFETY: per the contract; the waiter is the first field of the
        // header, the header the first field of the entry (`repr(C)`).
        drop(unsafe { Box::from_raw(this as *mut OnDoneEntry<F>) });
    }

    /// # Safety
    ///
    /// `this` heads an `OnDoneEntry<F>`; the caller won the claim (the
    /// closure cell is its alone) and owns a reference.
    unsafe fn take(this: *const OnDoneHeader) -> Option<F> {
        // SAFETY: per the contract.
        unsafe {
            (*(this as *const OnDoneEntry<F>))
                .f
                .with_mut(|cell| (*cell).take())
        }
    }

    /// # Safety
    ///
    /// As `take`, for running.
    unsafe fn run(this: *const OnDoneHeader) -> Result<(), Panic> {
        // SAFETY: forwarded.
        match unsafe { Self::take(this) } {
            Some(f) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)),
            None => Ok(()),
        }
    }

    /// # Safety
    ///
    /// As `take`, for stopping.
    unsafe fn discard(this: *const OnDoneHeader) {
        // SAFETY: forwarded.
        let f = unsafe { Self::take(this) };
        // Invariant 2: settled before `f`'s `Drop` runs.
        // SAFETY: the caller's reference keeps the entry alive.
        unsafe { settle(this, STOPPED) };
        drop(f);
    }
}

/// `CallbackVtable::dispatch` of every on-done entry: runs `f` here, on the
/// notifying thread, and gives the reference it was handed back.
///
/// # Safety
///
/// `waiter` heads an `OnDoneHeader`, the caller won the claim for running
/// and passes one reference on.
unsafe fn dispatch_inline(waiter: *const Waiter) -> Result<(), Panic> {
    let header = waiter as *const OnDoneHeader;
    // SAFETY: the reference we were handed keeps the entry alive until the
    // `release_ref` below; the claim makes us the only runner (invariant 1).
    unsafe {
        let result = run_claimed(header);
        Waiter::release_ref(waiter);
        result
    }
}

/// Runs a claimed entry's `f` on this thread: `RUNNING` with our token,
/// `f`, then `SETTLED` (invariant 2).
///
/// # Safety
///
/// The caller won the claim for running and holds a reference.
unsafe fn run_claimed(header: *const OnDoneHeader) -> Result<(), Panic> {
    // SAFETY: alive per the contract.
    let entry = unsafe { &*header };
    // Ordering: Relaxed — see the module's `# Orderings`.
    entry
        .progress
        .fetch_or(current_token() | RUNNING, Ordering::Relaxed);
    // SAFETY: we won the claim (invariant 1).
    let result = unsafe { (entry.run)(header) };
    // SAFETY: alive per the contract.
    unsafe { settle(header, 0) };
    result
}

/// Marks `f` settled and wakes the stoppers that announced themselves
/// (invariant 3).
///
/// # Safety
///
/// The caller won the claim (it settles once) and holds a reference.
unsafe fn settle(header: *const OnDoneHeader, bits: usize) {
    // SAFETY: alive per the contract.
    let entry = unsafe { &*header };
    // Ordering: AcqRel — see the module's `# Orderings` (pairs with the
    // Acquire loads in `wait_settled` and with its `fetch_or(WAITING)`).
    let prev = entry.progress.fetch_or(SETTLED | bits, Ordering::AcqRel);
    if prev & WAITING != 0 {
        // Only parked threads wait there: their wake-ups cannot panic.
        let _ = waiters::wake_all(&entry.stoppers);
    }
}

/// Waits until `f` is settled, unless the calling thread is running it
/// (invariant 4). Parks; never spins.
fn wait_settled(entry: &OnDoneHeader) {
    // Ordering: Acquire — pairs with the Release half of `settle`, so what
    // `f` did happens before our return.
    if entry.progress.load(Ordering::Acquire) & SETTLED != 0 {
        return;
    }
    // Our token exists before we read a runner's (invariant 4).
    let token = current_token();
    loop {
        // Ordering: AcqRel — invariant 3, totally ordered with `settle`'s
        // `fetch_or`; Acquire as above when it already happened. A
        // read-modify-write reads the latest value, never a stale one.
        let prev = entry.progress.fetch_or(WAITING, Ordering::AcqRel);
        if prev & SETTLED != 0 || (prev & RUNNING != 0 && prev & TOKEN_MASK == token) {
            // Settled, or we are inside `f` (announcing ourselves there
            // only costs `settle` an empty close).
            return;
        }
        // Returns once `stoppers` is closed (after `SETTLED`): at once if
        // it already is.
        waiters::park_on(&entry.stoppers, None);
    }
}

/// A thread-local whose address identifies the calling thread among live
/// threads (`token` in the module docs).
#[repr(align(16))]
struct Token(#[allow(dead_code)] u8);

#[cfg(not(loom))]
thread_local! {
    static TOKEN: Token = const { Token(0) };
}

// loom's `thread_local!` has no `const` initialisers.
#[cfg(loom)]
thread_local! {
    static TOKEN: Token = Token(0);
}

/// The calling thread's token. (A `const` thread-local without `Drop` has
/// no destructor state: `with` cannot fail, even in thread teardown.)
#[inline]
fn current_token() -> usize {
    TOKEN.with(|token| ptr::from_ref(token).addr())
}

/// A never-done context's `OnDone` before its first `stop`: `node` holds
/// this instead of a handle (it is never dereferenced).
const NEVER: *mut CancelNode = ptr::dangling_mut();

/// The guard of a callback registered by [`Context::on_done`](crate::Context::on_done):
/// dropping it stops the callback, waiting for it if it is running on
/// another thread.
///
/// [`stop`](OnDone::stop) returns true only if that call prevented `f`
/// from running. If `f` is running on another thread, `stop()` and drop
/// return only once it has returned, so whatever `f` uses may be freed
/// right after (as C++'s `std::stop_callback` destructor). Called from
/// inside `f` (its own thread) they return at once: they never deadlock.
/// [`detach`](OnDone::detach) keeps `f` registered with no guard.
///
/// ```
/// use goctx::Context;
///
/// let (ctx, cancel) = Context::background().with_cancel();
/// let (tx, rx) = std::sync::mpsc::channel();
/// let on_done = ctx.on_done(move || tx.send("ran").unwrap());
/// cancel.cancel();
/// // `f` ran inside `cancel()`, on this thread, before it returned.
/// assert_eq!(rx.try_recv(), Ok("ran"));
/// assert!(!on_done.stop()); // too late: it already ran
/// ```
#[must_use = "dropping an OnDone stops its callback at once; call .detach() to keep it registered"]
pub struct OnDone {
    /// The entry (one reference, invariant 5), or null when no callback is
    /// pending: `f` already ran, or the context can never be done.
    entry: *const OnDoneHeader,
    /// A handle on the node the entry is registered with (invariant 6), or
    /// null once given up; `NEVER` for a never-done context until stopped.
    node: AtomicPtr<CancelNode>,
}

// SAFETY: the entry is shared by design; the closure is `Send` and only the
// winner of the claim touches it; `node` is an owned handle.
unsafe impl Send for OnDone {}
// SAFETY: as above; `stop` synchronises through the entry's state words.
unsafe impl Sync for OnDone {}

impl OnDone {
    /// Registers `f` with the context whose anchor is `anchor_ptr` (see
    /// `Context::on_done`). `anchor_ptr` is the raw anchor pointer stored in
    /// the context's node, or null; the caller's context keeps it alive
    /// during the call.
    pub(crate) fn new<F>(anchor_ptr: *const CancelNode, f: F) -> OnDone
    where
        F: FnOnce() + Send + 'static,
    {
        // SAFETY: the anchor lives as long as the caller's context.
        let Some(anchor) = (unsafe { anchor_ptr.as_ref() }) else {
            // Never done: `f` can never run, and nothing is allocated.
            drop(f);
            return OnDone::idle(NEVER);
        };
        // Announced before the push (cancel.rs invariant 7).
        if !anchor.announce_waiter() {
            f();
            return OnDone::idle(ptr::null_mut());
        }
        let header = new_entry(f);
        // SAFETY: valid, ours, unlinked.
        if unsafe { Waiter::push_unshared(header as *const Waiter, &anchor.waiters) }.is_err() {
            // Closed: done meanwhile (the list closes only after the state
            // word is done). Never linked, so the entry is still ours: take
            // `f` out, free the entry, run `f` here.
            // SAFETY: the only reference; the claim is trivially ours.
            let f = unsafe { OnDoneEntry::<F>::take(header) };
            // SAFETY: the only reference, given up.
            unsafe { Waiter::release_ref(header as *const Waiter) };
            if let Some(f) = f {
                f();
            }
            return OnDone::idle(ptr::null_mut());
        }
        // Handles are taken through the raw pointer, which keeps the
        // allocation's provenance (see `AfterFunc::new`).
        let raw = NonNull::new(anchor_ptr.cast_mut())
            .expect("non-null: as_ref returned Some")
            .cast();
        // SAFETY: the anchor is alive (see above).
        let node = unsafe { NodeRef::acquire(raw) }.into_raw();
        OnDone {
            entry: header,
            node: AtomicPtr::new(node.as_ptr().cast()),
        }
    }

    fn idle(node: *mut CancelNode) -> OnDone {
        OnDone {
            entry: ptr::null(),
            node: AtomicPtr::new(node),
        }
    }

    /// Prevents the callback from running. Returns true if this call
    /// stopped it (`f` is then dropped, unrun, before `stop` returns);
    /// false if `f` has already run or started, or another `stop` came
    /// first. If `f` is running on another thread, waits until it returns;
    /// from inside `f` it returns false at once. On a context that can
    /// never be done, the first call returns true (as `AfterFunc::stop`).
    ///
    /// ```
    /// let (ctx, cancel) = goctx::Context::background().with_cancel();
    /// let on_done = ctx.on_done(|| unreachable!("stopped first"));
    /// assert!(on_done.stop());
    /// assert!(!on_done.stop());
    /// cancel.cancel();
    /// ```
    pub fn stop(&self) -> bool {
        let (stopped, panic) = self.stop_inner();
        if let Some(payload) = panic {
            std::panic::resume_unwind(payload);
        }
        stopped
    }

    /// `stop`, with a panic of `f`'s `Drop` handed back instead of resumed.
    fn stop_inner(&self) -> (bool, Option<Panic>) {
        // SAFETY: our reference keeps the entry alive (invariant 5).
        let Some(entry) = (unsafe { self.entry.as_ref() }) else {
            // Ordering: Relaxed — `NEVER` is a plain flag here: nothing is
            // published with it.
            return (
                self.node.swap(ptr::null_mut(), Ordering::Relaxed) == NEVER,
                None,
            );
        };
        if !entry.waiter.claim_stop() {
            // The notifier (or another `stop`) won: wait for `f` to be
            // settled, unless we are inside it (invariant 4).
            wait_settled(entry);
            return (false, None);
        }
        // We won (invariant 1): `f` never runs. Drop it (contained: the
        // registration is given up before a panic resumes) and withdraw the
        // entry from the waiter set.
        let mut panic = None;
        waiters::contain(&mut panic, || {
            // SAFETY: we won the claim; our reference keeps the entry alive.
            unsafe { (entry.discard)(self.entry) }
        });
        // Only the winner of the claim gets here, once; `drop`/`detach`
        // have the `OnDone` by value, so they cannot run meanwhile.
        // Ordering: Relaxed — the claim's AcqRel ordered us; `drop` reads
        // the null on this thread or after synchronising with it.
        let node = self.node.load(Ordering::Relaxed);
        self.node.store(ptr::null_mut(), Ordering::Relaxed);
        if let Some(node) = NonNull::new(node) {
            // SAFETY: our handle keeps the node (and the waiter set the
            // entry is linked into) alive until we give it up, last.
            unsafe {
                node.as_ref().waiters.remove(self.entry as *const Waiter);
                drop(NodeRef::from_raw(node.cast()));
            }
        }
        (true, panic)
    }

    /// Leaves `f` registered with no guard: it runs when the context is
    /// done, as if this `OnDone` were kept forever. The handle this
    /// `OnDone` held on the context is given up: if every other handle on
    /// the context is dropped before it is done, nothing can make it done
    /// any more, and `f` is dropped unrun when the context is freed.
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// let (ctx, cancel) = goctx::Context::background().with_cancel();
    /// let (tx, rx) = mpsc::channel();
    /// ctx.on_done(move || tx.send("done").unwrap()).detach();
    /// cancel.cancel();
    /// assert_eq!(rx.try_recv(), Ok("done"));
    /// ```
    pub fn detach(self) {
        let this = core::mem::ManuallyDrop::new(self);
        this.release();
    }

    /// Gives up the entry's reference and the node handle.
    fn release(&self) {
        if !self.entry.is_null() {
            // SAFETY: our reference (invariant 5), given up once: by drop
            // or detach, which consume the `OnDone`.
            unsafe { Waiter::release_ref(self.entry as *const Waiter) };
        }
        // Ordering: Acquire — sees a `stop` that gave the handle up.
        let node = self.node.swap(ptr::null_mut(), Ordering::Acquire);
        if let Some(node) = NonNull::new(node)
            && node.as_ptr() != NEVER
        {
            // SAFETY: our handle (invariant 6), given up.
            drop(unsafe { NodeRef::from_raw(node.cast()) });
        }
    }
}

impl Drop for OnDone {
    fn drop(&mut self) {
        // Ordering: Relaxed — only a winning `stop` clears it, and it ran on
        // this thread or on one that synchronised with us since (we have
        // `&mut self`).
        if !self.entry.is_null() && self.node.load(Ordering::Relaxed).is_null() {
            // A `stop` won already: nothing to stop or wait for.
            // SAFETY: our reference (invariant 5), given up once.
            unsafe { Waiter::release_ref(self.entry as *const Waiter) };
            return;
        }
        let (_, panic) = self.stop_inner();
        self.release();
        if let Some(payload) = panic
            && !std::thread::panicking()
        {
            std::panic::resume_unwind(payload);
        }
    }
}

// `stop()` is one claim: a panic caught around it leaves no half-done state
// to observe (as for `AfterFunc`).
impl std::panic::UnwindSafe for OnDone {}
impl std::panic::RefUnwindSafe for OnDone {}

impl fmt::Debug for OnDone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SAFETY: our reference keeps the entry alive.
        let progress = match unsafe { self.entry.as_ref() } {
            // Ordering: Acquire — a diagnostic read of the table's word.
            Some(entry) => entry.progress.load(Ordering::Acquire),
            None => 0,
        };
        f.debug_struct("OnDone")
            .field("pending", &(progress == 0 && !self.entry.is_null()))
            .field("running", &(progress & (RUNNING | SETTLED) == RUNNING))
            .field("stopped", &(progress & STOPPED != 0))
            .finish()
    }
}

/// Allocates an on-done entry holding `f` (one allocation), with the one
/// reference it is made with, in no list.
fn new_entry<F>(f: F) -> *const OnDoneHeader
where
    F: FnOnce() + Send + 'static,
{
    let entry = Box::into_raw(Box::new(OnDoneEntry {
        header: OnDoneHeader {
            waiter: Waiter::new(WaiterKind::Callback(&OnDoneEntry::<F>::VTABLE)),
            progress: AtomicUsize::new(0),
            stoppers: WaiterList::new(),
            run: OnDoneEntry::<F>::run,
            discard: OnDoneEntry::<F>::discard,
        },
        f: UnsafeCell::new(Some(f)),
    }));
    entry as *const OnDoneHeader
}
