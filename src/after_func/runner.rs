//! The after-func worker pool: the threads that run dispatched callbacks.
//!
//! A cancellation that notifies an after-func entry calls `dispatch`; it
//! never runs the callback and never starts a thread. Callbacks run on
//! worker threads named `goctx-after-func`, at most
//! [`max_after_func_workers`](crate::max_after_func_workers) of them (512 by
//! default). One more thread, `goctx-dispatch` (the dispatcher),
//! is the only one that starts workers. The timer thread is not involved:
//! a deadline expiry dispatches like any other cancellation.
//!
//! # Design
//!
//! * **Spare worker.** One idle worker sits in `spare`, which any thread
//!   claims with one swap (take-all, so no ABA problem). `dispatch` hands the
//!   job straight to it: one wake-up from `cancel()` to the callback.
//! * **Queue.** Otherwise `dispatch` pushes the job onto `queue`, an
//!   intrusive Treiber stack threaded through `AfterHeader::job_next`
//!   (lock-free, no allocation), and unparks the dispatcher.
//! * **Dispatcher.** Takes the whole queue with one swap (so it is the only
//!   consumer: no ABA problem), appends it in arrival order to its private
//!   backlog, and gives each backlog job to an idle worker (popped from the
//!   `idle` stack, whose only consumer it is, or the spare), or starts a new
//!   worker with the job while fewer than the cap are alive. At the cap, the
//!   rest of the backlog waits until a worker goes idle or exits. If a
//!   thread cannot be started, the job stays in the backlog and the
//!   dispatcher retries (after 10 ms, doubling up to 1 s); it never runs a
//!   callback itself.
//! * **Workers.** A worker runs its job (a panic is contained), then
//!   becomes the spare or pushes itself on `idle`, watches its slot for
//!   10 µs (a job handed over meanwhile costs no wake-up), and parks. After the
//!   keep-alive ([`after_func_keep_alive`](crate::after_func_keep_alive),
//!   10 s by default) without a job it retires and exits.
//!
//! # Invariants
//!
//! 1. A job is owned by exactly one place at a time: the caller of
//!    `dispatch`, `spare`'s worker slot, `queue`, the dispatcher's backlog,
//!    or a worker's slot; a worker slot is filled only by a CAS from null,
//!    which fails once the worker retired or was dismissed (`retired()`),
//!    so a job given to a retiring worker stays with the giver.
//! 2. No lost job in the queue: a pusher pushes, then unparks the
//!    dispatcher (a park token, so a push after the dispatcher's last swap
//!    makes its next park return at once). Before the dispatcher has
//!    published its `Thread` the pusher finds `dispatcher` null; both sides
//!    are fenced (the dispatcher publishes, then takes the queue), so either
//!    the pusher sees the dispatcher or the dispatcher's first swap sees the
//!    job.
//! 3. No lost capacity: a dispatcher with a backlog it cannot place sets
//!    `wanted`, then (fenced) looks once more for an idle worker, the spare
//!    and the live count; a worker that goes idle or exits publishes that,
//!    then (fenced) reads `wanted` and unparks the dispatcher if it is set
//!    (the store-buffer pattern, both sides fenced). So a backlog never
//!    waits while a worker is idle or a slot under the cap is free.
//! 4. `live` counts started workers that have not retired. Only the
//!    dispatcher raises it, before starting a thread, and only while it is
//!    below the cap, so at most the cap's worth of workers exist, plus ones
//!    that retired and are still returning.
//!
//! Under `cfg(loom)` after-func jobs run inline on the dispatching thread,
//! which is the schedule the models of invariant 1 of `after_func` (run vs
//! stop) need; the pool's hand-offs (`Pool`, the same code the std pool
//! runs) are modelled with test jobs through `pool_hooks` by
//! `loom-tests/tests/after_func.rs`.

use core::ptr;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::AfterHeader;
use crate::primitive::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering, fence};
use crate::primitive::thread::Thread;

/// The default cap on after-func worker threads (tokio's blocking-pool
/// default).
pub(crate) const DEFAULT_MAX_WORKERS: usize = 512;
/// The default time an idle after-func worker waits for a job before it
/// exits.
pub(crate) const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(10);

#[cfg(loom)]
pub(crate) use inline::*;
#[cfg(not(loom))]
pub(crate) use threads::*;

/// What the pool queues: a job with an intrusive queue link.
pub(crate) trait Job: Sized {
    fn link(&self) -> &AtomicPtr<Self>;
}

impl Job for AfterHeader {
    fn link(&self) -> &AtomicPtr<AfterHeader> {
        &self.job_next
    }
}

/// The pool's shared state (see the module docs; one static in std builds,
/// one per model in loom models).
pub(crate) struct Pool<J> {
    /// The cap on live workers (`set_max`).
    max: AtomicUsize,
    /// An idle worker's keep-alive in nanoseconds (`set_keep_alive`).
    #[cfg_attr(loom, allow(dead_code))]
    keep_alive_nanos: AtomicU64,
    /// Started workers that have not retired (invariant 4).
    live: AtomicUsize,
    /// Dispatched jobs not yet taken by the dispatcher: a Treiber stack
    /// through `Job::link`, pushed by any thread, taken whole by the
    /// dispatcher.
    queue: AtomicPtr<J>,
    /// Idle workers: pushed by the workers, popped only by the dispatcher
    /// (a single consumer, so the Treiber pop has no ABA problem). Each
    /// entry holds an `Arc` reference.
    idle: AtomicPtr<Worker<J>>,
    /// One more idle worker, which any thread may claim with a swap; holds
    /// an `Arc` reference, or null.
    spare: AtomicPtr<Worker<J>>,
    /// 1 while the dispatcher holds jobs it could not place (invariant 3).
    wanted: AtomicUsize,
    /// The dispatcher's `Thread` (leaked once), published by the dispatcher
    /// itself; null until then.
    dispatcher: AtomicPtr<Thread>,
}

/// The fields of a new pool (a macro: std needs a `const fn`, loom's
/// atomics have none).
macro_rules! new_pool {
    ($max:expr, $live:expr) => {
        Pool {
            max: AtomicUsize::new($max),
            keep_alive_nanos: AtomicU64::new(DEFAULT_KEEP_ALIVE.as_nanos() as u64),
            live: AtomicUsize::new($live),
            queue: AtomicPtr::new(ptr::null_mut()),
            idle: AtomicPtr::new(ptr::null_mut()),
            spare: AtomicPtr::new(ptr::null_mut()),
            wanted: AtomicUsize::new(0),
            dispatcher: AtomicPtr::new(ptr::null_mut()),
        }
    };
}

/// A worker as the pool sees it.
pub(crate) struct Worker<J> {
    /// The job handed to this idle worker, null, or `retired()`.
    slot: AtomicPtr<J>,
    thread: Thread,
    next_idle: AtomicPtr<Worker<J>>,
}

/// What a worker finds in its slot.
pub(crate) enum Taken<J> {
    Job(*mut J),
    /// The dispatcher dismissed it (a lowered cap).
    Dismissed,
    Nothing,
}

/// How a dispatcher pass ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Placement {
    /// Every job went to a worker.
    Done,
    /// Jobs are left: every worker is busy and the cap is reached.
    AtCap,
    /// Jobs are left: a thread could not be started.
    StartFailed,
}

/// What the dispatcher does with jobs left over.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Wait {
    /// Capacity appeared meanwhile: place again at once.
    No,
    /// Park until a worker goes idle or exits (or a job is dispatched).
    Park,
    /// Park, but retry a thread start after a while.
    Retry,
}

/// A worker's slot value meaning "retired, send nothing".
fn retired<J>() -> *mut J {
    ptr::without_provenance_mut(1)
}

impl<J> Worker<J> {
    pub(crate) fn new(thread: Thread) -> Worker<J> {
        Worker {
            slot: AtomicPtr::new(ptr::null_mut()),
            thread,
            next_idle: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Puts `job` in this idle worker's slot and wakes it. False if the
    /// worker retired first (then it takes no more jobs and the job is
    /// still the caller's: invariant 1).
    fn give(&self, job: *mut J) -> bool {
        // Ordering: AcqRel — Release publishes the job to the worker's
        // Acquire swap in `take`; Acquire on failure sees the retirement.
        let given = self
            .slot
            .compare_exchange(ptr::null_mut(), job, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if given {
            self.thread.unpark();
        }
        given
    }

    /// Tells this idle worker to exit (the cap was lowered). False if it
    /// retired or was given a job first.
    fn dismiss(&self) -> bool {
        // Ordering: AcqRel — as in `give`; the worker's swap sees it.
        let dismissed = self
            .slot
            .compare_exchange(
                ptr::null_mut(),
                retired(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if dismissed {
            self.thread.unpark();
        }
        dismissed
    }

    /// Watches the slot until something is put there or `until` passes
    /// (the worker's own thread, before it parks): a job given meanwhile is
    /// then found without a futex wake-up. Reads the clock once per 64
    /// spins.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn watch(&self, until: Instant) {
        loop {
            for _ in 0..64 {
                // Ordering: Relaxed — only a signal to stop spinning; the
                // caller's `take` swaps with Acquire.
                if !self.slot.load(Ordering::Relaxed).is_null() {
                    return;
                }
                core::hint::spin_loop();
            }
            if Instant::now() >= until {
                return;
            }
        }
    }

    /// Takes what was put in the slot (the worker's own thread).
    pub(crate) fn take(&self) -> Taken<J> {
        // Ordering: Acquire — pairs with the Release CASes of `give` and
        // `dismiss`.
        let job = self.slot.swap(ptr::null_mut(), Ordering::Acquire);
        if job == retired() {
            Taken::Dismissed
        } else if job.is_null() {
            Taken::Nothing
        } else {
            Taken::Job(job)
        }
    }

    /// Retires this idle worker unless a job lands first (its keep-alive
    /// ran out); the caller then calls `Pool::retire`. The reference the
    /// idle stack or the spare holds on it is dropped by whoever takes it
    /// (`give` then fails).
    pub(crate) fn try_retire(&self) -> bool {
        // Ordering: AcqRel — Acquire on failure sees a job given meanwhile
        // (the next `take` returns it).
        self.slot
            .compare_exchange(
                ptr::null_mut(),
                retired(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }
}

impl<J: Job> Pool<J> {
    #[cfg(not(loom))]
    const fn new() -> Pool<J> {
        new_pool!(DEFAULT_MAX_WORKERS, 0)
    }

    #[cfg(loom)]
    fn with(max: usize, live: usize) -> Pool<J> {
        new_pool!(max, live)
    }

    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn set_max(&self, max: usize) {
        // Ordering: Relaxed — a setting, read afresh at each decision; a
        // dispatcher that waits at the old cap is woken to see the new one.
        self.max.store(max.max(1), Ordering::Relaxed);
        self.notify_capacity();
    }

    pub(crate) fn max(&self) -> usize {
        // Ordering: Relaxed — a setting.
        self.max.load(Ordering::Relaxed)
    }

    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn set_keep_alive(&self, keep_alive: Duration) {
        let nanos = u64::try_from(keep_alive.as_nanos()).unwrap_or(u64::MAX);
        // Ordering: Relaxed — a setting, read when a worker goes idle.
        self.keep_alive_nanos.store(nanos, Ordering::Relaxed);
    }

    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn keep_alive(&self) -> Duration {
        // Ordering: Relaxed — a setting.
        Duration::from_nanos(self.keep_alive_nanos.load(Ordering::Relaxed))
    }

    /// Hands a dispatched job to the spare worker, or queues it for the
    /// dispatcher. Never runs the job and never starts a thread.
    pub(crate) fn dispatch(&self, job: *mut J) {
        if let Some(worker) = self.take_spare()
            && worker.give(job)
        {
            return;
        }
        let mut head = self.queue.load(Ordering::Relaxed);
        loop {
            // SAFETY: the job is valid (the caller's contract) and ours
            // until the push succeeds.
            unsafe { (*job).link().store(head, Ordering::Relaxed) };
            // Ordering: Release — publishes the job (and its link) to the
            // dispatcher's Acquire swap.
            match self
                .queue
                .compare_exchange_weak(head, job, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(actual) => head = actual,
            }
        }
        // Ordering: Acquire — pairs with `publish_dispatcher`'s Release.
        let mut dispatcher = self.dispatcher.load(Ordering::Acquire);
        if dispatcher.is_null() {
            // Invariant 2: the push, then (fenced) a second look; the
            // dispatcher publishes itself, then (fenced) takes the queue.
            fence(Ordering::SeqCst);
            // Ordering: Acquire — as above.
            dispatcher = self.dispatcher.load(Ordering::Acquire);
            if dispatcher.is_null() {
                return;
            }
        }
        // SAFETY: a leaked `Thread`, never freed.
        unsafe { (*dispatcher).unpark() };
    }

    /// The dispatcher's first step, on its own thread.
    pub(crate) fn publish_dispatcher(&self, me: &'static Thread) {
        // Ordering: Release — publishes the `Thread` to `dispatch`.
        self.dispatcher
            .store(ptr::from_ref(me).cast_mut(), Ordering::Release);
        // Invariant 2: published, then (fenced) the first swap of the queue.
        fence(Ordering::SeqCst);
    }

    fn take_spare(&self) -> Option<Arc<Worker<J>>> {
        // Ordering: Relaxed — a hint, to skip the swap when there is none.
        if self.spare.load(Ordering::Relaxed).is_null() {
            return None;
        }
        // Ordering: Acquire — pairs with the Release CAS in `offer_spare`,
        // so the worker's fields are visible.
        let spare = self.spare.swap(ptr::null_mut(), Ordering::Acquire);
        if spare.is_null() {
            return None;
        }
        // SAFETY: `spare` held a reference leaked by `offer_spare`; the
        // swap gave it to us alone.
        Some(unsafe { Arc::from_raw(spare) })
    }

    /// Makes `worker` the spare if there is none; otherwise false.
    fn offer_spare(&self, worker: &Arc<Worker<J>>) -> bool {
        let raw = Arc::into_raw(Arc::clone(worker)).cast_mut();
        // Ordering: Release — publishes the worker to `take_spare`'s swap.
        if self
            .spare
            .compare_exchange(ptr::null_mut(), raw, Ordering::Release, Ordering::Relaxed)
            .is_ok()
        {
            return true;
        }
        // SAFETY: the reference leaked just above, never published.
        drop(unsafe { Arc::from_raw(raw) });
        false
    }

    /// Pops an idle worker (the dispatcher only: the single consumer).
    fn pop_idle(&self) -> Option<Arc<Worker<J>>> {
        // Ordering: Acquire — sees the pushed worker's `next_idle`.
        let mut head = self.idle.load(Ordering::Acquire);
        loop {
            if head.is_null() {
                return None;
            }
            // SAFETY: an idle-stack entry is an `Arc` leaked by `push_idle`;
            // only this (single) consumer takes it back, so it is alive.
            let next = unsafe { (*head).next_idle.load(Ordering::Relaxed) };
            // Ordering: Acquire — as the load.
            match self
                .idle
                .compare_exchange_weak(head, next, Ordering::Acquire, Ordering::Acquire)
            {
                // SAFETY: we took the stack's reference.
                Ok(_) => return Some(unsafe { Arc::from_raw(head) }),
                Err(actual) => head = actual,
            }
        }
    }

    fn push_idle(&self, worker: &Arc<Worker<J>>) {
        let raw = Arc::into_raw(Arc::clone(worker)).cast_mut();
        let mut head = self.idle.load(Ordering::Relaxed);
        loop {
            worker.next_idle.store(head, Ordering::Relaxed);
            // Ordering: Release — publishes `next_idle` to `pop_idle`.
            match self
                .idle
                .compare_exchange_weak(head, raw, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => head = actual,
            }
        }
    }

    /// Invariant 3, worker side: after publishing an idle worker or a
    /// retirement, wakes a dispatcher that waits for one.
    fn notify_capacity(&self) {
        fence(Ordering::SeqCst);
        // Ordering: Relaxed — after the fence (invariant 3).
        if self.wanted.load(Ordering::Relaxed) != 0 {
            self.wake_dispatcher();
        }
    }

    pub(crate) fn wake_dispatcher(&self) {
        // Ordering: Acquire — pairs with `publish_dispatcher`'s Release.
        let dispatcher = self.dispatcher.load(Ordering::Acquire);
        if !dispatcher.is_null() {
            // SAFETY: a leaked `Thread`, never freed.
            unsafe { (*dispatcher).unpark() };
        }
    }

    /// Moves the queue, oldest first, to the back of `backlog` (the
    /// dispatcher).
    pub(crate) fn take_queue(&self, backlog: &mut VecDeque<*mut J>) {
        // Ordering: Acquire — pairs with `dispatch`'s Release CAS.
        let mut job = self.queue.swap(ptr::null_mut(), Ordering::Acquire);
        let start = backlog.len();
        while !job.is_null() {
            // SAFETY: a queued job stays valid until it has run.
            let next = unsafe { (*job).link().load(Ordering::Relaxed) };
            backlog.push_back(job);
            job = next;
        }
        // The stack gave them newest first.
        backlog.make_contiguous()[start..].reverse();
    }

    /// Gives backlog jobs, oldest first, to idle workers, or to `start`
    /// (which starts a worker with the job and says whether it could)
    /// while fewer than the cap are live (the dispatcher).
    pub(crate) fn place(
        &self,
        backlog: &mut VecDeque<*mut J>,
        mut start: impl FnMut(*mut J) -> bool,
    ) -> Placement {
        // Workers above a lowered cap: idle ones are dismissed rather than
        // given jobs.
        // Ordering: Relaxed — a count compared with a setting.
        let mut excess = self.live.load(Ordering::Relaxed).saturating_sub(self.max());
        while let Some(&job) = backlog.front() {
            if let Some(worker) = self.pop_idle().or_else(|| self.take_spare()) {
                if excess > 0 {
                    if worker.dismiss() {
                        excess -= 1;
                    }
                    continue;
                }
                // A retired worker refuses it; then try the next one.
                if worker.give(job) {
                    backlog.pop_front();
                }
                continue;
            }
            // Invariant 4: only the dispatcher raises `live`, so a load and
            // an add suffice.
            // Ordering: Relaxed — a count; workers only lower it meanwhile.
            if self.live.load(Ordering::Relaxed) >= self.max() {
                return Placement::AtCap;
            }
            // Ordering: Relaxed — as above.
            self.live.fetch_add(1, Ordering::Relaxed);
            if !start(job) {
                // The job stays at the front of the backlog.
                // Ordering: Relaxed — undoes the reservation.
                self.live.fetch_sub(1, Ordering::Relaxed);
                return Placement::StartFailed;
            }
            backlog.pop_front();
        }
        Placement::Done
    }

    /// Invariant 3, dispatcher side: announces that jobs wait, then looks
    /// once more for capacity. The caller parks as told, then calls
    /// `stop_waiting`.
    pub(crate) fn wait_for_capacity(&self, placement: Placement) -> Wait {
        // Ordering: Relaxed — followed by the fence.
        self.wanted.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        // Ordering: Relaxed — after the fence (invariant 3).
        let idle = !self.idle.load(Ordering::Relaxed).is_null()
            || !self.spare.load(Ordering::Relaxed).is_null();
        if idle {
            Wait::No
        } else if placement == Placement::StartFailed {
            Wait::Retry
        } else if self.live.load(Ordering::Relaxed) < self.max() {
            Wait::No
        } else {
            Wait::Park
        }
    }

    pub(crate) fn stop_waiting(&self) {
        // Ordering: Relaxed — a spurious unpark later is harmless.
        self.wanted.store(0, Ordering::Relaxed);
    }

    /// A worker that ran its job offers itself: as the spare (which serves
    /// cancellers directly), or, while the dispatcher waits for a worker,
    /// on the idle stack where it looks first; then wakes the dispatcher if
    /// it waits (invariant 3).
    pub(crate) fn worker_idle(&self, me: &Arc<Worker<J>>) {
        // Ordering: Relaxed — a hint; `notify_capacity` does the rest.
        if self.wanted.load(Ordering::Relaxed) != 0 || !self.offer_spare(me) {
            self.push_idle(me);
        }
        self.notify_capacity();
    }

    #[cfg_attr(loom, allow(dead_code))]
    /// Gives up `me`'s place under the cap if more than the cap are live
    /// (the cap was lowered): one CAS per leaver, so leavers never take the
    /// count below the cap.
    pub(crate) fn leave_over_cap(&self, me: &Arc<Worker<J>>) -> bool {
        // Ordering: Relaxed — a count compared with a setting.
        let mut live = self.live.load(Ordering::Relaxed);
        loop {
            if live <= self.max() {
                return false;
            }
            // Ordering: Relaxed — as above; invariant 3's fence follows in
            // `retired_from_count`.
            match self.live.compare_exchange_weak(
                live,
                live - 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.retired_from_count(me);
                    return true;
                }
                Err(actual) => live = actual,
            }
        }
    }

    /// Gives up `me`'s place under the cap (invariant 4) and wakes a
    /// dispatcher waiting for one (invariant 3).
    pub(crate) fn retire(&self, me: &Arc<Worker<J>>) {
        // Ordering: Relaxed — a count; invariant 3's fence follows.
        self.live.fetch_sub(1, Ordering::Relaxed);
        self.retired_from_count(me);
    }

    /// What a worker does once `live` no longer counts it.
    fn retired_from_count(&self, me: &Arc<Worker<J>>) {
        // A retired spare would keep others from becoming the spare.
        let raw = Arc::as_ptr(me).cast_mut();
        // Ordering: Relaxed — success only takes back our own reference.
        if self
            .spare
            .compare_exchange(raw, ptr::null_mut(), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            // SAFETY: the reference `offer_spare` leaked for us.
            drop(unsafe { Arc::from_raw(raw) });
        }
        self.notify_capacity();
    }
}

/// Loom models run a dispatched job inline on the notifying thread.
#[cfg(loom)]
mod inline {
    use core::time::Duration;

    use super::{AfterHeader, DEFAULT_KEEP_ALIVE, DEFAULT_MAX_WORKERS};
    use crate::after_func::run_job;

    pub(crate) fn start() {}

    /// # Safety
    ///
    /// As `run_job`.
    pub(crate) unsafe fn dispatch(job: *const AfterHeader) {
        // SAFETY: forwarded.
        unsafe { run_job(job) }
    }

    // Configuration has no effect in loom models: there is no pool.
    pub(crate) fn set_max_workers(_max: usize) {}
    pub(crate) fn max_workers() -> usize {
        DEFAULT_MAX_WORKERS
    }
    pub(crate) fn set_keep_alive(_keep_alive: Duration) {}
    pub(crate) fn keep_alive() -> Duration {
        DEFAULT_KEEP_ALIVE
    }
}

/// The std pool: one static `Pool`, the dispatcher thread and the workers.
#[cfg(not(loom))]
mod threads {
    use std::collections::VecDeque;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::{AfterHeader, Placement, Pool, Taken, Wait, Worker};
    use crate::after_func::run_job;
    use crate::primitive::atomic::{AtomicUsize, Ordering};
    use crate::primitive::thread::{self, Thread};

    static POOL: Pool<AfterHeader> = Pool::new();
    /// 1 once a thread has started (or is starting) the dispatcher.
    static STARTED: AtomicUsize = AtomicUsize::new(0);

    /// The first and the longest wait before the dispatcher retries a
    /// thread start that failed.
    const RETRY_FIRST: Duration = Duration::from_millis(10);
    const RETRY_MAX: Duration = Duration::from_secs(1);
    /// How long a worker that went idle watches its slot before it parks.
    /// About what a futex wake-up of a parked thread costs from `cancel()`
    /// to the callback on a VM (5-18 µs measured on the 2-vCPU VMs the
    /// benchmarks run on), so that spinning then parking never costs more
    /// than twice the better of the two (the classic spin-then-block
    /// bound); Go's scheduler keeps threads spinning for work the same
    /// way. A burst of cancellations with after-funcs then reaches a
    /// worker with a store, not a wake-up.
    const SPIN: Duration = Duration::from_micros(10);

    pub(crate) fn set_max_workers(max: usize) {
        POOL.set_max(max);
    }

    pub(crate) fn max_workers() -> usize {
        POOL.max()
    }

    pub(crate) fn set_keep_alive(keep_alive: Duration) {
        POOL.set_keep_alive(keep_alive);
    }

    pub(crate) fn keep_alive() -> Duration {
        POOL.keep_alive()
    }

    /// A job pointer moved into a new worker thread.
    struct SendJob(*mut AfterHeader);
    // SAFETY: a dispatched job is owned by one thread at a time
    // (invariant 1); the closure inside it is `Send`.
    unsafe impl Send for SendJob {}

    /// Starts the dispatcher if nobody has (called when an after-func is
    /// registered, so that a later cancellation never has to). If the
    /// thread cannot be started, the next registration tries again;
    /// dispatched jobs wait in the queue meanwhile.
    #[inline]
    pub(crate) fn start() {
        // Ordering: Relaxed — a hint; `start_slow` claims with a swap.
        if STARTED.load(Ordering::Relaxed) == 0 {
            start_slow();
        }
    }

    #[cold]
    fn start_slow() {
        // Ordering: Relaxed — the swap only elects one starter; the
        // dispatcher publishes itself through `Pool::publish_dispatcher`.
        if STARTED.swap(1, Ordering::Relaxed) != 0 {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("goctx-dispatch".into())
            .spawn(run_dispatcher);
        if let Err(error) = spawned {
            eprintln!(
                "goctx: cannot start the after_func dispatcher thread ({error}); \
                 callbacks wait until a later after_func registration starts it"
            );
            // Ordering: Relaxed — as the swap.
            STARTED.store(0, Ordering::Relaxed);
        }
    }

    /// Hands a dispatched job to the pool.
    ///
    /// # Safety
    ///
    /// `job` won the after-func claim (it must run) and the caller passes
    /// its queue reference.
    pub(crate) unsafe fn dispatch(job: *const AfterHeader) {
        POOL.dispatch(job.cast_mut());
    }

    fn run_dispatcher() {
        let me: &'static Thread = Box::leak(Box::new(thread::current()));
        POOL.publish_dispatcher(me);
        let mut backlog = VecDeque::new();
        let mut retry = RETRY_FIRST;
        let mut failing = false;
        loop {
            POOL.take_queue(&mut backlog);
            let placement = POOL.place(&mut backlog, |job| {
                let job = SendJob(job);
                let spawned = std::thread::Builder::new()
                    .name("goctx-after-func".into())
                    .spawn(move || work(job));
                match spawned {
                    Ok(_) => {
                        if failing {
                            eprintln!("goctx: after_func worker threads start again");
                            failing = false;
                            retry = RETRY_FIRST;
                        }
                        true
                    }
                    // The closure that held the job was dropped unrun; the
                    // job stays in the backlog.
                    Err(error) => {
                        if !failing {
                            eprintln!(
                                "goctx: cannot start an after_func worker ({error}); \
                                 callbacks stay queued and the start is retried"
                            );
                            failing = true;
                        }
                        false
                    }
                }
            });
            if placement == Placement::Done {
                // New jobs come with an unpark (invariant 2).
                thread::park();
                continue;
            }
            match POOL.wait_for_capacity(placement) {
                Wait::No => {}
                Wait::Park => thread::park(),
                Wait::Retry => {
                    thread::park_timeout(retry);
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
            POOL.stop_waiting();
        }
    }

    /// Runs a job. `f` itself is contained by `run_job`; this also keeps a
    /// panicking drop (of the last handle the job releases) from killing
    /// the worker.
    fn run_contained(job: *mut AfterHeader) {
        let job = SendJob(job);
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let job = job;
            // SAFETY: the job was handed to this thread with its queue
            // reference (invariant 1).
            unsafe { run_job(job.0) }
        }));
    }

    fn work(first: SendJob) {
        let me = Arc::new(Worker::new(thread::current()));
        run_contained(first.0);
        loop {
            // A lowered cap: leave at once rather than idle.
            if POOL.leave_over_cap(&me) {
                return;
            }
            POOL.worker_idle(&me);
            let keep_alive = POOL.keep_alive();
            let idle_since = Instant::now();
            let idle_until = idle_since.checked_add(keep_alive);
            me.watch(idle_since + SPIN.min(keep_alive));
            loop {
                match me.take() {
                    Taken::Job(job) => {
                        run_contained(job);
                        break;
                    }
                    Taken::Dismissed => {
                        POOL.retire(&me);
                        return;
                    }
                    Taken::Nothing => {}
                }
                let now = Instant::now();
                match idle_until {
                    Some(until) if now >= until => {
                        if me.try_retire() {
                            POOL.retire(&me);
                            return;
                        }
                    }
                    Some(until) => thread::park_timeout(until - now),
                    None => thread::park(),
                }
            }
        }
    }
}

/// Test hooks for the loom models of the pool's hand-offs (only under
/// `--cfg loom`): a pool of test jobs, driven step by step by the model's
/// threads with the same code the std pool runs.
#[cfg(loom)]
#[doc(hidden)]
pub mod pool_hooks {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use super::{Job, Placement, Pool, Taken, Wait, Worker};
    use crate::primitive::atomic::{AtomicPtr, Ordering, fence};
    use crate::primitive::thread;

    /// A job of the model: an id behind the intrusive link.
    #[derive(Debug)]
    pub struct TestJob {
        link: AtomicPtr<TestJob>,
        id: usize,
    }

    impl Job for TestJob {
        fn link(&self) -> &AtomicPtr<TestJob> {
            &self.link
        }
    }

    /// A pool of the model.
    pub struct TestPool(Pool<TestJob>);

    impl core::fmt::Debug for TestPool {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("TestPool")
        }
    }

    /// A worker of the model, made on its own thread.
    pub struct TestWorker(Arc<Worker<TestJob>>);

    impl core::fmt::Debug for TestWorker {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            f.write_str("TestWorker")
        }
    }

    /// What a worker found in its slot.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Found {
        /// The job with this id.
        Job(usize),
        /// Dismissed by the dispatcher.
        Dismissed,
        /// Nothing yet.
        Nothing,
    }

    impl TestPool {
        /// A pool with cap `max`, `live` of whose workers already run (the
        /// model makes them with `worker`). Leaked: the model's threads
        /// share it.
        pub fn new(max: usize, live: usize) -> &'static TestPool {
            Box::leak(Box::new(TestPool(Pool::with(max, live))))
        }

        /// Dispatches job `id` as a cancelling thread does.
        pub fn dispatch(&self, id: usize) {
            let job = Box::into_raw(Box::new(TestJob {
                link: AtomicPtr::new(core::ptr::null_mut()),
                id,
            }));
            self.0.dispatch(job);
        }

        /// A busy worker on the calling thread (counted in `live` already).
        pub fn worker(&self) -> TestWorker {
            TestWorker(Arc::new(Worker::new(thread::current())))
        }

        /// `worker` ran its job and goes idle.
        pub fn go_idle(&self, worker: &TestWorker) {
            self.0.worker_idle(&worker.0);
        }

        /// What `worker` finds in its slot (a job is freed here).
        pub fn take(&self, worker: &TestWorker) -> Found {
            match worker.0.take() {
                Taken::Job(job) => {
                    // SAFETY: the job was boxed by `dispatch` and is ours.
                    let job = unsafe { Box::from_raw(job) };
                    Found::Job(job.id)
                }
                Taken::Dismissed => Found::Dismissed,
                Taken::Nothing => Found::Nothing,
            }
        }

        /// `worker`'s keep-alive ran out: retires it unless a job landed.
        pub fn try_retire(&self, worker: &TestWorker) -> bool {
            let retired = worker.0.try_retire();
            if retired {
                self.0.retire(&worker.0);
            }
            retired
        }

        /// Unparks the dispatcher (so a model can end it: store the model's
        /// "done" flag first; fenced against the dispatcher's publication,
        /// so either this sees the dispatcher or the dispatcher sees the
        /// flag before it parks).
        pub fn wake_dispatcher(&self) {
            fence(Ordering::SeqCst);
            self.0.wake_dispatcher();
        }

        /// Runs the dispatcher on the calling thread, as the std pool does
        /// (`start` stands for starting a worker with the job's id), until
        /// `done()` holds with nothing left to place.
        pub fn run_dispatcher(
            &self,
            done: impl Fn() -> bool,
            mut start: impl FnMut(usize) -> bool,
        ) {
            let me = Box::leak(Box::new(thread::current()));
            self.0.publish_dispatcher(me);
            let mut backlog = VecDeque::new();
            loop {
                self.0.take_queue(&mut backlog);
                let placement = self.0.place(&mut backlog, |job| {
                    // SAFETY: a job boxed by `dispatch`, still queued.
                    let id = unsafe { (*job).id };
                    let started = start(id);
                    if started {
                        // SAFETY: the "worker" took it; it is ours to free.
                        drop(unsafe { Box::from_raw(job) });
                    }
                    started
                });
                if placement == Placement::Done {
                    if done() {
                        return;
                    }
                    thread::park();
                    continue;
                }
                match self.0.wait_for_capacity(placement) {
                    Wait::No => {}
                    Wait::Park | Wait::Retry => thread::park(),
                }
                self.0.stop_waiting();
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::{Taken, Worker};

    #[test]
    fn a_watching_worker_stops_at_a_job_given_meanwhile() {
        let worker = Arc::new(Worker::<u64>::new(std::thread::current()));
        struct SendJob(*mut u64);
        // SAFETY: the box behind it is only touched by this test's main
        // thread, before the hand-off and after the join.
        unsafe impl Send for SendJob {}
        let job = Box::into_raw(Box::new(7_u64));
        let sent = SendJob(job);
        let giver = {
            let worker = Arc::clone(&worker);
            std::thread::spawn(move || {
                let sent = sent;
                std::thread::sleep(Duration::from_millis(5));
                assert!(worker.give(sent.0));
            })
        };
        let started = Instant::now();
        worker.watch(started + Duration::from_secs(600));
        assert!(started.elapsed() < Duration::from_secs(300));
        match worker.take() {
            Taken::Job(taken) => assert_eq!(taken, job),
            _ => panic!("the watch ended without the job"),
        }
        giver.join().unwrap();
        // SAFETY: `job` came from `Box::into_raw` above; the worker only
        // passed the pointer back.
        drop(unsafe { Box::from_raw(job) });
    }

    #[test]
    fn a_watching_worker_stops_at_its_deadline() {
        let worker = Worker::<u64>::new(std::thread::current());
        let until = Instant::now() + Duration::from_millis(2);
        worker.watch(until);
        assert!(Instant::now() >= until);
        assert!(matches!(worker.take(), Taken::Nothing));
    }
}
