//! `after_func`: run a callback once a context is done (Go's `AfterFunc`).
//!
//! An after-func is one allocation, an [`AfterEntry<F>`]: a waiter entry
//! (see `waiters.rs`) followed by the closure. It is linked into the waiter
//! set of the context's cancellable node, so the cancellation that closes the
//! set finds it with the threads and tasks it wakes — but instead of waking
//! anyone, notifying it *dispatches* it: the entry is pushed on a lock-free
//! queue and the runner thread is unparked. `cancel()` therefore never runs
//! `f` and never waits for it.
//!
//! The runner hands every callback to a worker thread of its own (idle
//! workers are reused, new ones spawned when none is idle), so a blocking
//! `f` delays no other callback and no deadline; a panicking `f` is caught
//! (the panic hook has already reported it) and breaks nothing.
//!
//! # Invariants
//!
//! 1. `NOTIFIED` (set by the notifying cancellation) and `REGISTERING`
//!    (meaning *stopped*, set by `stop`) are claimed with `fetch_or`; the
//!    first one wins. `f` runs iff `NOTIFIED` won; `stop` returns true iff
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
//!    linked, and the runner queue while dispatched.

use core::fmt;
use core::ptr::{self, NonNull};

use crate::cancel::CancelNode;
use crate::context::Context;
use crate::node::Node;
use crate::primitive::UnsafeCell;
use crate::primitive::atomic::{AtomicPtr, Ordering};
use crate::waiters::{CallbackVtable, NOTIFIED, REF, REGISTERING, Waiter};

/// The type-independent head of an after-func allocation.
#[repr(C)]
pub(crate) struct AfterHeader {
    waiter: Waiter,
    /// The runner queue link.
    pub(crate) job_next: AtomicPtr<AfterHeader>,
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

/// `CallbackVtable::dispatch` for every entry type.
unsafe fn dispatch_waiter(waiter: *const Waiter) {
    // SAFETY: forwarded; the waiter heads an `AfterHeader`.
    unsafe { runner::dispatch(waiter as *const AfterHeader) }
}

/// Runs a dispatched job and drops what it held: the closure, a deadline
/// keep-alive handle (invariant 3) and the queue's reference (invariant 4).
///
/// # Safety
///
/// `job` was dispatched (it won invariant 1) and the caller owns the queue's
/// reference.
pub(crate) unsafe fn run_job(job: *const AfterHeader) {
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
        // SAFETY: the handle taken at registration.
        unsafe { Node::release(node.cast()) };
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
    /// Registers `f` to run once `ctx` is done (see `Context::after_func`).
    pub(crate) fn new<F>(ctx: &Context, f: F) -> AfterFunc
    where
        F: FnOnce() + Send + 'static,
    {
        let entry = Box::into_raw(Box::new(AfterEntry {
            header: AfterHeader {
                waiter: Waiter::new(None, None, Some(&AfterEntry::<F>::VTABLE)),
                job_next: AtomicPtr::new(ptr::null_mut()),
                keep_alive: UnsafeCell::new(ptr::null()),
                run: AfterEntry::<F>::run,
                discard: AfterEntry::<F>::discard,
            },
            f: UnsafeCell::new(Some(f)),
        }));
        let header = entry as *const AfterHeader;
        if ctx.anchor().is_some() {
            // The runner must exist before any cancellation dispatches to it:
            // a canceller never starts threads.
            runner::start();
        }
        // The raw anchor pointer (not one made from a reference): the handle
        // taken below may be the one that frees the node.
        let anchor_ptr = ctx.anchor_ptr();
        let mut node = None;
        // SAFETY: the anchor lives as long as `ctx`.
        if let Some(anchor) = unsafe { anchor_ptr.as_ref() } {
            if anchor.is_done() {
                fire_now(header);
            } else {
                if anchor.deadline().is_some() {
                    // Invariant 3.
                    anchor.node.acquire();
                    // SAFETY: a fresh allocation, exclusively ours until
                    // pushed.
                    unsafe { (*header).keep_alive.with_mut(|cell| *cell = anchor_ptr) };
                }
                // SAFETY: valid, ours, unlinked.
                if unsafe { Waiter::push_onto(header as *const Waiter, &anchor.waiters) }.is_ok() {
                    anchor.node.acquire();
                    node = NonNull::new(anchor_ptr.cast_mut());
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
            node: AtomicPtr::new(node.map_or(ptr::null_mut(), NonNull::as_ptr)),
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
        // Ordering: AcqRel — invariant 1, totally ordered with the notifying
        // `fetch_or(NOTIFIED)`.
        let prev = waiter.state.fetch_or(REGISTERING, Ordering::AcqRel);
        if prev & (NOTIFIED | REGISTERING) != 0 {
            return false;
        }
        // We won (invariant 1): drop the closure now and withdraw the entry
        // from the waiter set — nothing is left behind but the entry's
        // memory until the set unlinks it.
        // A closure whose `Drop` panics still leaves nothing behind: the
        // keep-alive handle and the registration are given up before the
        // panic resumes.
        let mut panic = None;
        crate::node::contain(&mut panic, || {
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
                Node::release(node.cast());
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
            unsafe { Node::release(node.cast()) };
        }
    }
}

impl fmt::Debug for AfterFunc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // SAFETY: our reference keeps the entry alive.
        let state = unsafe { (*self.entry.as_ptr()).waiter.state.load(Ordering::Acquire) };
        f.debug_struct("AfterFunc")
            .field("started", &(state & NOTIFIED != 0))
            .field(
                "stopped",
                &(state & REGISTERING != 0 && state & NOTIFIED == 0),
            )
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
    let entry = Box::into_raw(Box::new(AfterEntry {
        header: AfterHeader {
            waiter: Waiter::new(None, None, Some(&AfterEntry::<F>::VTABLE)),
            job_next: AtomicPtr::new(ptr::null_mut()),
            keep_alive: UnsafeCell::new(ptr::null()),
            run: AfterEntry::<F>::run,
            discard: AfterEntry::<F>::discard,
        },
        f: UnsafeCell::new(Some(f)),
    }));
    let header = entry as *const AfterHeader;
    runner::start();
    fire_now(header);
    // SAFETY: the reference the entry was made with; the runner holds its
    // own (taken by `fire_now`).
    unsafe { Waiter::release_ref(header as *const Waiter) };
}

/// Claims and dispatches an entry that is in no list (its context was done
/// before it could register).
fn fire_now(header: *const AfterHeader) {
    // SAFETY: the caller still owns the only reference.
    let waiter = unsafe { &(*header).waiter };
    // Ordering: AcqRel — invariant 1 (no `stop` can run yet: the `AfterFunc`
    // does not exist), kept for uniformity.
    waiter.state.fetch_or(NOTIFIED, Ordering::AcqRel);
    waiter.state.fetch_add(REF, Ordering::Relaxed);
    // SAFETY: we pass the new reference to the runner.
    unsafe { runner::dispatch(header) };
}

/// The runner: std builds hand jobs to worker threads through the timer
/// thread; loom models run them inline on the notifying thread, which is the
/// schedule loom needs to explore `stop` racing the notification.
#[cfg(loom)]
mod runner {
    use super::{AfterHeader, run_job};

    pub(super) fn start() {}

    /// # Safety
    ///
    /// As `run_job`.
    pub(super) unsafe fn dispatch(job: *const AfterHeader) {
        // SAFETY: forwarded.
        unsafe { run_job(job) }
    }
}

#[cfg(not(loom))]
mod runner {
    use super::AfterHeader;

    pub(super) fn start() {
        crate::timer::start_thread();
    }

    /// # Safety
    ///
    /// `job` won invariant 1 and the caller passes its queue reference.
    pub(super) unsafe fn dispatch(job: *const AfterHeader) {
        // SAFETY: forwarded.
        unsafe { crate::timer::submit_job(job) }
    }
}
