//! `after_func`: run a callback once a context is done (Go's `AfterFunc`).
//!
//! An after-func is one allocation, an [`AfterEntry<F>`]: a waiter entry
//! (see `waiters.rs`) followed by the closure. It is linked into the waiter
//! set of the context's cancellable node, so the cancellation that closes the
//! set finds it with the threads and tasks it wakes — but instead of waking
//! anyone, notifying it *dispatches* it to the worker pool (`runner.rs`):
//! the spare idle worker takes it with one swap, or it is pushed on a
//! lock-free queue for the pool's dispatcher. `cancel()` therefore never
//! runs `f`, never waits for it and never starts a thread; a deadline expiry
//! dispatches the same way, so the timer thread is not involved either.
//!
//! The pool runs each callback on a worker thread of its own while fewer
//! than the cap ([`max_after_func_workers`]) are busy, and queues the rest,
//! so a blocking `f` delays no deadline and no other callback beyond the
//! cap's worth of blocking ones; a panicking `f` is caught (the panic hook
//! has already reported it) and breaks nothing.
//!
//! # Invariants
//!
//! 1. `NOTIFIED` (set by the notifying cancellation, or by
//!    `Waiter::claim_unlisted` for an entry that never registered) and
//!    `REGISTERING` (meaning *stopped*, set by `Waiter::claim_stop`) are
//!    claimed with `fetch_or` (the bits and claims live in `waiters.rs`);
//!    the first one wins. `f` runs iff `NOTIFIED` won; `stop` returns true iff
//!    `REGISTERING` won. The winner alone touches the closure cell.
//! 2. The `AfterFunc` holds one handle on the node it registered with (like
//!    a `Done`) until it is dropped or its `stop` wins. So the context stays
//!    alive — registered with its ancestors, cancellable by them — while
//!    the `AfterFunc` or any other handle exists. Once every handle is gone
//!    it is freed like any context: its release drains its waiter set
//!    without notifying, dropping a callback that can never run, so nothing
//!    leaks when nobody can cancel the context any more.
//! 3. One exception, as in Go (where the runtime timer keeps such a context
//!    reachable): if the context has a deadline, some timer will end it, so
//!    the pending entry itself holds a handle until `f` has run or `stop`
//!    won; the winner of invariant 1 releases it. The hold is bounded by the
//!    deadline.
//! 4. References on the entry: the `AfterFunc`, the waiter list while
//!    linked, and the runner (its queue, the dispatcher's backlog or a
//!    worker) while dispatched.

mod runner;

#[cfg(loom)]
pub use runner::pool_hooks;

use core::fmt;
use core::ptr::{self, NonNull};
use core::time::Duration;

use crate::cancel::CancelNode;
use crate::node::NodeRef;
use crate::primitive::UnsafeCell;
use crate::primitive::atomic::{AtomicPtr, Ordering};
use crate::waiters::{CallbackVtable, Waiter, WaiterKind};

/// The type-independent head of an after-func allocation.
#[repr(C)]
pub(crate) struct AfterHeader {
    waiter: Waiter,
    /// The runner queue link.
    job_next: AtomicPtr<AfterHeader>,
    /// The handle invariant 3 holds, or null. Written at registration,
    /// then only by the winner of invariant 1.
    keep_alive: UnsafeCell<*const CancelNode>,
    /// Runs the closure (the caller won invariant 1 for running).
    run: unsafe fn(*const AfterHeader),
    /// Drops the closure unrun (the caller won invariant 1 for stopping).
    discard: unsafe fn(*const AfterHeader),
}

#[repr(C)]
struct AfterEntry<F> {
    header: AfterHeader,
    f: UnsafeCell<Option<F>>,
}

impl<F: FnOnce() + Send + 'static> AfterEntry<F> {
    const VTABLE: CallbackVtable = CallbackVtable {
        dispatch: dispatch_waiter,
        free: Self::free,
    };

    /// # Safety
    ///
    /// `this` heads an `AfterEntry<F>` with no reference left.
    unsafe fn free(this: *const Waiter) {
        // SAFETY: per the contract; the waiter is the first field of the
        // header, the header the first field of the entry.
        drop(unsafe { Box::from_raw(this as *mut AfterEntry<F>) });
    }

    /// # Safety
    ///
    /// The caller won invariant 1 for running and owns a reference.
    unsafe fn run(this: *const AfterHeader) {
        // SAFETY: the entry is alive (the caller's reference); the cell is
        // ours (invariant 1).
        let f = unsafe {
            (*(this as *const AfterEntry<F>))
                .f
                .with_mut(|cell| (*cell).take())
        };
        if let Some(f) = f {
            // The panic hook has already reported a panic by the time it is
            // caught here; containing it keeps the runner alive.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        }
    }

    /// # Safety
    ///
    /// The caller won invariant 1 for stopping.
    unsafe fn discard(this: *const AfterHeader) {
        // SAFETY: as in `run`.
        let f = unsafe {
            (*(this as *const AfterEntry<F>))
                .f
                .with_mut(|cell| (*cell).take())
        };
        drop(f);
    }
}

/// `CallbackVtable::dispatch` for every entry type: never runs `f` here,
/// so it never panics.
unsafe fn dispatch_waiter(waiter: *const Waiter) -> Result<(), crate::waiters::Panic> {
    // SAFETY: forwarded; the waiter heads an `AfterHeader`.
    unsafe { runner::dispatch(waiter as *const AfterHeader) };
    Ok(())
}

/// Runs a dispatched job and drops what it held: the closure, a deadline
/// keep-alive handle (invariant 3) and the queue's reference (invariant 4).
///
/// # Safety
///
/// `job` was dispatched (it won invariant 1) and the caller owns the queue's
/// reference.
unsafe fn run_job(job: *const AfterHeader) {
    // SAFETY: per the contract.
    unsafe {
        ((*job).run)(job);
        release_keep_alive(job);
        Waiter::release_ref(job as *const Waiter);
    }
}

/// Releases the entry's keep-alive handle, if it holds one.
///
/// # Safety
///
/// Called by the winner of invariant 1 (or before the entry is shared).
unsafe fn release_keep_alive(entry: *const AfterHeader) {
    // SAFETY: the winner alone touches the cell after registration.
    let node = unsafe {
        (*entry)
            .keep_alive
            .with_mut(|cell| ptr::replace(cell, ptr::null()))
    };
    if let Some(node) = NonNull::new(node.cast_mut()) {
        // SAFETY: the handle taken at registration, given up once, here.
        drop(unsafe { NodeRef::from_raw(node.cast()) });
    }
}

/// Stops a pending callback: Go's `stop` function returned by `AfterFunc`.
///
/// Dropping an `AfterFunc` does not stop the callback, but it gives up the
/// handle on the context that the `AfterFunc` holds: once nothing else holds
/// the context either (no clone, `Done`, cancel handle or descendant), the
/// context is freed and a callback that has not run is dropped, as it can
/// no longer be cancelled.
///
/// ```
/// use goctx::Context;
/// use std::sync::mpsc;
///
/// let (ctx, cancel) = Context::background().with_cancel();
/// let (tx, rx) = mpsc::channel();
/// let after = ctx.after_func(move || tx.send("ran").unwrap());
/// cancel.cancel();
/// assert_eq!(rx.recv().unwrap(), "ran");
/// assert!(!after.stop()); // too late: it already ran
/// ```
pub struct AfterFunc {
    entry: NonNull<AfterHeader>,
    /// A handle on the node the entry is registered with (invariant 2), or
    /// null once given up.
    node: AtomicPtr<CancelNode>,
}

// SAFETY: the entry is shared by design; the closure is `Send` and only the
// winner of invariant 1 touches it.
unsafe impl Send for AfterFunc {}
// SAFETY: as above; `stop` synchronises through the entry's state word.
unsafe impl Sync for AfterFunc {}

impl AfterFunc {
    /// Registers `f` to run once the context whose anchor is `anchor_ptr`
    /// is done (see `Context::after_func`). `anchor_ptr` is the raw anchor
    /// pointer stored in the context's node (not one made from a
    /// reference: the handle taken below may be the one that frees the
    /// node), or null; the caller's context keeps it alive during the call.
    pub(crate) fn new<F>(anchor_ptr: *const CancelNode, f: F) -> AfterFunc
    where
        F: FnOnce() + Send + 'static,
    {
        let header = new_entry(f);
        if !anchor_ptr.is_null() {
            // The pool's dispatcher must exist before any cancellation
            // dispatches to it: a canceller never starts threads.
            runner::start();
        }
        let mut node = None;
        // SAFETY: the anchor lives as long as the caller's context.
        if let Some(anchor) = unsafe { anchor_ptr.as_ref() } {
            // Handles are taken through the raw pointer, which keeps the
            // allocation's provenance (one made from `anchor`, a reference,
            // could not free the node under Tree Borrows).
            let raw = NonNull::new(anchor_ptr.cast_mut())
                .expect("non-null: as_ref returned Some")
                .cast();
            // Announced before the push (cancel.rs invariant 7).
            if !anchor.announce_waiter() {
                fire_now(header);
            } else {
                if anchor.deadline().is_some() {
                    // Invariant 3.
                    // SAFETY: the anchor is alive (see above).
                    let keep_alive = unsafe { NodeRef::acquire(raw) }.into_raw();
                    // SAFETY: a fresh allocation, exclusively ours until
                    // pushed.
                    unsafe {
                        (*header)
                            .keep_alive
                            .with_mut(|cell| *cell = keep_alive.as_ptr().cast_const().cast())
                    };
                }
                // SAFETY: valid, ours, unlinked.
                if unsafe { Waiter::push_unshared(header as *const Waiter, &anchor.waiters) }
                    .is_ok()
                {
                    // SAFETY: the anchor is alive (see above).
                    node = Some(unsafe { NodeRef::acquire(raw) }.into_raw());
                } else {
                    // Closed: done meanwhile. Not linked, so still ours.
                    // SAFETY: not shared yet.
                    unsafe { release_keep_alive(header) };
                    fire_now(header);
                }
            }
        }
        AfterFunc {
            // SAFETY: `Box::into_raw` is never null.
            entry: unsafe { NonNull::new_unchecked(header.cast_mut()) },
            node: AtomicPtr::new(node.map_or(ptr::null_mut(), |node| node.as_ptr().cast())),
        }
    }

    /// Prevents the callback from running. Returns true if this call stopped
    /// it; false if it has already been started (the context is done) or
    /// stopped. On a context that can never be done, the first call returns
    /// true. A stopped callback is dropped at once.
    ///
    /// ```
    /// let (ctx, cancel) = goctx::Context::background().with_cancel();
    /// let after = ctx.after_func(|| unreachable!("stopped first"));
    /// assert!(after.stop());
    /// assert!(!after.stop());
    /// cancel.cancel();
    /// ```
    pub fn stop(&self) -> bool {
        let header = self.entry.as_ptr() as *const AfterHeader;
        // SAFETY: our reference keeps the entry alive.
        let waiter = unsafe { &(*header).waiter };
        // Invariant 1.
        if !waiter.claim_stop() {
            return false;
        }
        // We won (invariant 1): drop the closure now and withdraw the entry
        // from the waiter set — nothing is left behind but the entry's
        // memory until the set unlinks it.
        // A closure whose `Drop` panics still leaves nothing behind: the
        // keep-alive handle and the registration are given up before the
        // panic resumes.
        let mut panic = None;
        crate::waiters::contain(&mut panic, || {
            // SAFETY: the closure cell is ours (invariant 1).
            unsafe { ((*header).discard)(header) }
        });
        // SAFETY: the keep-alive cell is ours (invariant 1); our node handle
        // keeps the node (and its waiter set, where the entry is linked)
        // alive until we give it up, last.
        unsafe {
            release_keep_alive(header);
            // Ordering: AcqRel — `drop` is the only other taker, and it has
            // `&mut self`; the swap makes the give-up exactly once.
            let node = self.node.swap(ptr::null_mut(), Ordering::AcqRel);
            if let Some(node) = NonNull::new(node) {
                node.as_ref().waiters.remove(header as *const Waiter);
                drop(NodeRef::from_raw(node.cast()));
            }
        }
        if let Some(payload) = panic {
            std::panic::resume_unwind(payload);
        }
        true
    }
}

impl Drop for AfterFunc {
    fn drop(&mut self) {
        // SAFETY: our reference, given up.
        unsafe { Waiter::release_ref(self.entry.as_ptr() as *const Waiter) };
        // Ordering: Acquire — sees a `stop` that gave the handle up.
        let node = self.node.swap(ptr::null_mut(), Ordering::Acquire);
        if let Some(node) = NonNull::new(node) {
            // SAFETY: our handle (invariant 2), given up.
            drop(unsafe { NodeRef::from_raw(node.cast()) });
        }
    }
}

// `stop()` is one atomic state change: a panic caught around it leaves no
// half-done state to observe (as for `Context`).
impl std::panic::UnwindSafe for AfterFunc {}
impl std::panic::RefUnwindSafe for AfterFunc {}

impl fmt::Debug for AfterFunc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SAFETY: our reference keeps the entry alive.
        let (started, stopped) = unsafe { (*self.entry.as_ptr()).waiter.callback_status() };
        f.debug_struct("AfterFunc")
            .field("started", &started)
            .field("stopped", &stopped)
            .finish()
    }
}

/// Runs `f` on an after-func worker, as a callback of a context that is
/// already done: for work that must not run on the calling thread (the
/// timer thread hands over the release of a last handle this way: timer
/// invariant 6).
pub(crate) fn run_detached<F>(f: F)
where
    F: FnOnce() + Send + 'static,
{
    let header = new_entry(f);
    runner::start();
    fire_now(header);
    // SAFETY: the reference the entry was made with; the runner holds its
    // own (taken by `fire_now`).
    unsafe { Waiter::release_ref(header as *const Waiter) };
}

/// Allocates an after-func entry holding `f` (one allocation), with the
/// one reference it is made with, in no list.
fn new_entry<F>(f: F) -> *const AfterHeader
where
    F: FnOnce() + Send + 'static,
{
    let entry = Box::into_raw(Box::new(AfterEntry {
        header: AfterHeader {
            waiter: Waiter::new(WaiterKind::Callback(&AfterEntry::<F>::VTABLE)),
            job_next: AtomicPtr::new(ptr::null_mut()),
            keep_alive: UnsafeCell::new(ptr::null()),
            run: AfterEntry::<F>::run,
            discard: AfterEntry::<F>::discard,
        },
        f: UnsafeCell::new(Some(f)),
    }));
    entry as *const AfterHeader
}

/// Claims and dispatches an entry that is in no list (its context was done
/// before it could register).
fn fire_now(header: *const AfterHeader) {
    // SAFETY: the caller still owns the only reference.
    let waiter = unsafe { &(*header).waiter };
    // Invariant 1 (no `stop` can run yet: the `AfterFunc` does not exist).
    waiter.claim_unlisted();
    // SAFETY: we pass the new reference to the runner.
    unsafe { runner::dispatch(header) };
}

/// The default of [`max_after_func_workers`]: 512 threads (the default cap
/// of tokio's blocking pool).
pub const DEFAULT_MAX_AFTER_FUNC_WORKERS: usize = runner::DEFAULT_MAX_WORKERS;

/// The default of [`after_func_keep_alive`]: 10 seconds.
pub const DEFAULT_AFTER_FUNC_KEEP_ALIVE: Duration = runner::DEFAULT_KEEP_ALIVE;

/// Sets the cap on the threads that run [`after_func`](crate::Context::after_func)
/// callbacks (default [`DEFAULT_MAX_AFTER_FUNC_WORKERS`]); 0 counts as 1.
///
/// Each callback runs on a worker thread of the process-wide pool. When
/// `max` callbacks are running (say, blocked), later ones wait in a queue,
/// in dispatch order, until a worker is free; they are never run on the
/// thread that cancels the context, nor on the timer thread, and they
/// delay no deadline. A raised cap lets waiting callbacks start at once; a
/// lowered one retires workers as they finish their callbacks. Callbacks
/// that block for long should be few, or the cap raised for them.
///
/// ```standalone_crate
/// use std::sync::mpsc;
/// use std::time::Duration;
///
/// goctx::set_max_after_func_workers(2);
/// assert_eq!(goctx::max_after_func_workers(), 2);
///
/// // Three callbacks that wait for a release: two run, the third queues
/// // until one of them returns.
/// let (ctx, cancel) = goctx::Context::background().with_cancel();
/// let (started_tx, started) = mpsc::channel();
/// let mut releases = Vec::new();
/// let mut callbacks = Vec::new();
/// for i in 0..3 {
///     let (release, wait) = mpsc::channel::<()>();
///     releases.push(release);
///     let started_tx = started_tx.clone();
///     callbacks.push(ctx.after_func(move || {
///         started_tx.send(i).unwrap();
///         let _ = wait.recv();
///     }));
/// }
/// cancel.cancel();
/// let first = started.recv().unwrap();
/// let second = started.recv().unwrap();
/// assert!(started.recv_timeout(Duration::from_millis(50)).is_err());
/// releases[first].send(()).unwrap();
/// let third = started.recv().unwrap();
/// assert_eq!(first + second + third, 0 + 1 + 2);
/// for release in &releases {
///     let _ = release.send(());
/// }
/// goctx::set_max_after_func_workers(goctx::DEFAULT_MAX_AFTER_FUNC_WORKERS);
/// ```
pub fn set_max_after_func_workers(max: usize) {
    runner::set_max_workers(max);
}

/// The cap on after-func worker threads (see
/// [`set_max_after_func_workers`]).
///
/// ```
/// // Unless the program set another cap:
/// let cap = goctx::max_after_func_workers();
/// assert!(cap >= 1 && cap <= goctx::DEFAULT_MAX_AFTER_FUNC_WORKERS);
/// ```
pub fn max_after_func_workers() -> usize {
    runner::max_workers()
}

/// Sets how long an idle after-func worker thread waits for another
/// callback before it exits (default [`DEFAULT_AFTER_FUNC_KEEP_ALIVE`]).
/// Takes effect the next time a worker becomes idle; `Duration::MAX` keeps
/// idle workers forever. For the first 10 µs of that wait (or all of it,
/// if shorter) a worker that has just run a callback spins on a load
/// rather than sleeping, so that a callback dispatched right after reaches
/// it without a thread wake-up; it then parks, using no CPU.
///
/// ```standalone_crate
/// use std::time::Duration;
///
/// goctx::set_after_func_keep_alive(Duration::from_secs(1));
/// assert_eq!(goctx::after_func_keep_alive(), Duration::from_secs(1));
/// # goctx::set_after_func_keep_alive(goctx::DEFAULT_AFTER_FUNC_KEEP_ALIVE);
/// ```
pub fn set_after_func_keep_alive(keep_alive: Duration) {
    runner::set_keep_alive(keep_alive);
}

/// How long an idle after-func worker waits for a callback before it exits
/// (see [`set_after_func_keep_alive`]).
///
/// ```
/// // Unless the program set another keep-alive:
/// assert!(goctx::after_func_keep_alive() <= goctx::DEFAULT_AFTER_FUNC_KEEP_ALIVE);
/// ```
pub fn after_func_keep_alive() -> Duration {
    runner::keep_alive()
}
