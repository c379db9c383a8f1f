//! The after-func worker pool: the threads that run dispatched callbacks.
//!
//! A cancellation that notifies an after-func entry calls [`dispatch`]; it
//! never runs the callback and never starts a thread. Callbacks run on
//! worker threads named `goctx-after-func`, at most
//! [`max_after_func_workers`](crate::max_after_func_workers) of them (512 by
//! default). One more thread, `goctx-dispatch` (the dispatcher),
//! is the only one that starts workers. The timer thread is not involved:
//! a deadline expiry dispatches like any other cancellation.
//!
//! # Design
//!
//! * **Spare worker.** One idle worker sits in `SPARE`, which any thread
//!   claims with one swap (take-all, so no ABA problem). `dispatch` hands the
//!   job straight to it: one wake-up from `cancel()` to the callback.
//! * **Queue.** Otherwise `dispatch` pushes the job onto `QUEUE`, an
//!   intrusive Treiber stack threaded through `AfterHeader::job_next`
//!   (lock-free, no allocation), and unparks the dispatcher.
//! * **Dispatcher.** Takes the whole queue with one swap (so it is the only
//!   consumer: no ABA problem), appends it in arrival order to its private
//!   backlog, and gives each backlog job to an idle worker (popped from the
//!   `IDLE` stack, whose only consumer it is, or the spare), or starts a new
//!   worker with the job while fewer than the cap are alive. At the cap, the
//!   rest of the backlog waits until a worker goes idle or exits. If a
//!   thread cannot be started, the job stays in the backlog and the
//!   dispatcher retries (after 10 ms, doubling up to 1 s); it never runs a
//!   callback itself.
//! * **Workers.** A worker runs its job (a panic is contained), then
//!   becomes the spare or pushes itself on `IDLE`, and parks. After the
//!   keep-alive ([`after_func_keep_alive`](crate::after_func_keep_alive),
//!   10 s by default) without a job it retires and exits.
//!
//! # Invariants
//!
//! 1. A job is owned by exactly one place at a time: the caller of
//!    `dispatch`, `SPARE`'s worker slot, `QUEUE`, the dispatcher's backlog,
//!    or a worker's slot; a worker slot is filled only by a CAS from null,
//!    which fails once the worker retired or was dismissed (`retired()`),
//!    so a job given to a retiring worker stays with the giver.
//! 2. No lost job in the queue: a pusher pushes, then unparks the
//!    dispatcher (a park token, so a push after the dispatcher's last swap
//!    makes its next park return at once). Before the dispatcher has
//!    published its `Thread` the pusher finds `DISPATCHER` null; both sides
//!    are fenced (the dispatcher publishes, then takes the queue), so either
//!    the pusher sees the dispatcher or the dispatcher's first swap sees the
//!    job.
//! 3. No lost capacity: a dispatcher with a backlog it cannot place sets
//!    `WANTED`, then (fenced) looks once more for an idle worker, the spare
//!    and the live count; a worker that goes idle or exits publishes that,
//!    then (fenced) reads `WANTED` and unparks the dispatcher if it is set
//!    (the store-buffer pattern, both sides fenced). So a backlog never
//!    waits while a worker is idle or a slot under the cap is free.
//! 4. `LIVE` counts started workers that have not retired. Only the
//!    dispatcher raises it, before starting a thread, and only while it is
//!    below the cap, so at most the cap's worth of workers exist, plus ones
//!    that retired and are still returning.
//!
//! Under `cfg(loom)` the pool is replaced by running the job inline on the
//! dispatching thread, which is the schedule the models of invariant 1 of
//! `after_func` (run vs stop) need; the pool's own hand-offs are modelled
//! by `loom-tests/tests/after_func.rs` through `loom_hooks`.

use std::time::Duration;

use super::AfterHeader;

/// The default cap on after-func worker threads (tokio's blocking-pool
/// default).
pub(crate) const DEFAULT_MAX_WORKERS: usize = 512;
/// The default time an idle after-func worker waits for a job before it
/// exits.
pub(crate) const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(10);

#[cfg(loom)]
pub(crate) use inline::*;
#[cfg(not(loom))]
pub(crate) use pool::*;

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

#[cfg(not(loom))]
mod pool {
    use core::ptr;
    use std::collections::VecDeque;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::{AfterHeader, DEFAULT_KEEP_ALIVE, DEFAULT_MAX_WORKERS};
    use crate::after_func::run_job;
    use crate::primitive::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering, fence};
    use crate::primitive::thread::{self, Thread};

    /// The cap on live workers (`set_max_workers`).
    static MAX_WORKERS: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_WORKERS);
    /// An idle worker's keep-alive in nanoseconds (`set_keep_alive`).
    static KEEP_ALIVE_NANOS: AtomicU64 = AtomicU64::new(DEFAULT_KEEP_ALIVE.as_nanos() as u64);
    /// Started workers that have not retired (invariant 4).
    static LIVE: AtomicUsize = AtomicUsize::new(0);
    /// Dispatched jobs not yet taken by the dispatcher: a Treiber stack
    /// through `AfterHeader::job_next`, pushed by any thread, taken whole
    /// by the dispatcher.
    static QUEUE: AtomicPtr<AfterHeader> = AtomicPtr::new(ptr::null_mut());
    /// Idle workers: pushed by the workers, popped only by the dispatcher
    /// (a single consumer, so the Treiber pop has no ABA problem). Each
    /// entry holds an `Arc` reference.
    static IDLE: AtomicPtr<Worker> = AtomicPtr::new(ptr::null_mut());
    /// One more idle worker, which any thread may claim with a swap; holds
    /// an `Arc` reference, or null.
    static SPARE: AtomicPtr<Worker> = AtomicPtr::new(ptr::null_mut());
    /// 1 while the dispatcher holds jobs it could not place (invariant 3).
    static WANTED: AtomicUsize = AtomicUsize::new(0);
    /// The dispatcher's `Thread` (leaked once), published by the dispatcher
    /// itself; null until then.
    static DISPATCHER: AtomicPtr<Thread> = AtomicPtr::new(ptr::null_mut());
    /// 1 once a thread has started (or is starting) the dispatcher.
    static STARTED: AtomicUsize = AtomicUsize::new(0);

    /// The first and the longest wait before the dispatcher retries a
    /// thread start that failed.
    const RETRY_FIRST: Duration = Duration::from_millis(10);
    const RETRY_MAX: Duration = Duration::from_secs(1);

    pub(crate) fn set_max_workers(max: usize) {
        // Ordering: Relaxed — a setting, read afresh at each decision; a
        // dispatcher that waits at the old cap is woken to see the new one.
        MAX_WORKERS.store(max.max(1), Ordering::Relaxed);
        notify_capacity();
    }

    pub(crate) fn max_workers() -> usize {
        // Ordering: Relaxed — a setting.
        MAX_WORKERS.load(Ordering::Relaxed)
    }

    pub(crate) fn set_keep_alive(keep_alive: Duration) {
        let nanos = u64::try_from(keep_alive.as_nanos()).unwrap_or(u64::MAX);
        // Ordering: Relaxed — a setting, read when a worker goes idle.
        KEEP_ALIVE_NANOS.store(nanos, Ordering::Relaxed);
    }

    pub(crate) fn keep_alive() -> Duration {
        // Ordering: Relaxed — a setting.
        Duration::from_nanos(KEEP_ALIVE_NANOS.load(Ordering::Relaxed))
    }

    /// A worker's slot value meaning "retired, send nothing".
    fn retired() -> *mut AfterHeader {
        ptr::without_provenance_mut(1)
    }

    struct Worker {
        /// The job handed to this idle worker, null, or `retired()`.
        slot: AtomicPtr<AfterHeader>,
        thread: Thread,
        next_idle: AtomicPtr<Worker>,
    }

    impl Worker {
        /// Puts `job` in this idle worker's slot and wakes it. False if the
        /// worker retired first (then it takes no more jobs and the job is
        /// still the caller's: invariant 1).
        fn give(&self, job: *mut AfterHeader) -> bool {
            // Ordering: AcqRel — Release publishes the job to the worker's
            // Acquire swap; Acquire on failure sees the retirement.
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
        // dispatcher publishes itself through `DISPATCHER`.
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

    /// Hands a dispatched job to the spare worker, or queues it for the
    /// dispatcher. Never runs the job and never starts a thread.
    ///
    /// # Safety
    ///
    /// `job` won the after-func claim (it must run) and the caller passes
    /// its queue reference.
    pub(crate) unsafe fn dispatch(job: *const AfterHeader) {
        let job = job.cast_mut();
        if try_spare(job) {
            return;
        }
        let mut head = QUEUE.load(Ordering::Relaxed);
        loop {
            // SAFETY: the queue reference keeps the job valid; it is ours
            // until the push succeeds.
            unsafe { (*job).job_next.store(head, Ordering::Relaxed) };
            // Ordering: Release — publishes the job (and `job_next`) to the
            // dispatcher's Acquire swap.
            match QUEUE.compare_exchange_weak(head, job, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => break,
                Err(actual) => head = actual,
            }
        }
        // Ordering: Acquire — pairs with the dispatcher's Release store of
        // its `Thread`.
        let mut dispatcher = DISPATCHER.load(Ordering::Acquire);
        if dispatcher.is_null() {
            // Invariant 2: the push, then (fenced) a second look; the
            // dispatcher publishes itself, then (fenced) takes the queue.
            fence(Ordering::SeqCst);
            // Ordering: Acquire — as above.
            dispatcher = DISPATCHER.load(Ordering::Acquire);
            if dispatcher.is_null() {
                return;
            }
        }
        // SAFETY: a leaked `Thread`, never freed.
        unsafe { (*dispatcher).unpark() };
    }

    /// Gives `job` to the spare worker. False if there is none (or it just
    /// retired): the caller queues the job instead.
    fn try_spare(job: *mut AfterHeader) -> bool {
        match take_spare() {
            Some(worker) => worker.give(job),
            None => false,
        }
    }

    fn take_spare() -> Option<Arc<Worker>> {
        // Ordering: Relaxed — a hint, to skip the swap when there is none.
        if SPARE.load(Ordering::Relaxed).is_null() {
            return None;
        }
        // Ordering: Acquire — pairs with the Release CAS in `offer_spare`,
        // so the worker's fields are visible.
        let spare = SPARE.swap(ptr::null_mut(), Ordering::Acquire);
        if spare.is_null() {
            return None;
        }
        // SAFETY: `SPARE` held a reference leaked by `offer_spare`; the swap
        // gave it to us alone.
        Some(unsafe { Arc::from_raw(spare) })
    }

    /// Makes `worker` the spare if there is none; otherwise false.
    fn offer_spare(worker: &Arc<Worker>) -> bool {
        let raw = Arc::into_raw(Arc::clone(worker)).cast_mut();
        // Ordering: Release — publishes the worker to `take_spare`'s swap.
        if SPARE
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
    fn pop_idle() -> Option<Arc<Worker>> {
        // Ordering: Acquire — sees the pushed worker's `next_idle`.
        let mut head = IDLE.load(Ordering::Acquire);
        loop {
            if head.is_null() {
                return None;
            }
            // SAFETY: an idle-stack entry is an `Arc` leaked by `push_idle`;
            // only this (single) consumer takes it back, so it is alive.
            let next = unsafe { (*head).next_idle.load(Ordering::Relaxed) };
            // Ordering: Acquire — as the load.
            match IDLE.compare_exchange_weak(head, next, Ordering::Acquire, Ordering::Acquire) {
                // SAFETY: we took the stack's reference.
                Ok(_) => return Some(unsafe { Arc::from_raw(head) }),
                Err(actual) => head = actual,
            }
        }
    }

    fn push_idle(worker: &Arc<Worker>) {
        let raw = Arc::into_raw(Arc::clone(worker)).cast_mut();
        let mut head = IDLE.load(Ordering::Relaxed);
        loop {
            worker.next_idle.store(head, Ordering::Relaxed);
            // Ordering: Release — publishes `next_idle` to `pop_idle`.
            match IDLE.compare_exchange_weak(head, raw, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => head = actual,
            }
        }
    }

    /// An idle worker for the dispatcher: from the idle stack, else the
    /// spare.
    fn take_idle() -> Option<Arc<Worker>> {
        pop_idle().or_else(take_spare)
    }

    /// Invariant 3, worker side: after publishing an idle worker or a
    /// retirement, wakes a dispatcher that waits for one.
    fn notify_capacity() {
        fence(Ordering::SeqCst);
        // Ordering: Relaxed — after the fence (invariant 3).
        if WANTED.load(Ordering::Relaxed) != 0 {
            // Ordering: Acquire — pairs with the dispatcher's Release store.
            let dispatcher = DISPATCHER.load(Ordering::Acquire);
            if !dispatcher.is_null() {
                // SAFETY: a leaked `Thread`, never freed.
                unsafe { (*dispatcher).unpark() };
            }
        }
    }

    /// Reserves a worker slot under the cap (invariant 4). Only the
    /// dispatcher raises `LIVE`, so a load and an add suffice.
    fn reserve_worker() -> bool {
        // Ordering: Relaxed — a count; workers only lower it concurrently.
        if LIVE.load(Ordering::Relaxed) >= max_workers() {
            return false;
        }
        // Ordering: Relaxed — as above.
        LIVE.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn run_dispatcher() {
        let me: &'static Thread = Box::leak(Box::new(thread::current()));
        // Ordering: Release — publishes the `Thread` to `dispatch`.
        DISPATCHER.store(ptr::from_ref(me).cast_mut(), Ordering::Release);
        // Invariant 2: published, then (fenced) the first swap of the queue.
        fence(Ordering::SeqCst);
        let mut backlog: VecDeque<SendJob> = VecDeque::new();
        let mut retry = RETRY_FIRST;
        let mut failing = false;
        loop {
            take_queue(&mut backlog);
            let mut start_failed = false;
            // Workers above a lowered cap: idle ones are dismissed rather
            // than given jobs.
            // Ordering: Relaxed — a count compared with a setting.
            let mut excess = LIVE.load(Ordering::Relaxed).saturating_sub(max_workers());
            while let Some(job) = backlog.front() {
                let job = job.0;
                if let Some(worker) = take_idle() {
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
                if !reserve_worker() {
                    break;
                }
                let send = SendJob(job);
                let spawned = std::thread::Builder::new()
                    .name("goctx-after-func".into())
                    .spawn(move || {
                        let send = send;
                        work(send.0);
                    });
                match spawned {
                    Ok(_) => {
                        backlog.pop_front();
                        if failing {
                            eprintln!("goctx: after_func worker threads start again");
                            failing = false;
                            retry = RETRY_FIRST;
                        }
                    }
                    Err(error) => {
                        // The closure that held the job was dropped unrun;
                        // the job itself stays at the front of the backlog.
                        // Ordering: Relaxed — undoes the reservation.
                        LIVE.fetch_sub(1, Ordering::Relaxed);
                        if !failing {
                            eprintln!(
                                "goctx: cannot start an after_func worker ({error}); \
                                 callbacks stay queued and the start is retried"
                            );
                            failing = true;
                        }
                        start_failed = true;
                        break;
                    }
                }
            }
            if backlog.is_empty() {
                // New jobs come with an unpark (invariant 2).
                thread::park();
                continue;
            }
            // Invariant 3, dispatcher side.
            // Ordering: Relaxed — followed by the fence.
            WANTED.store(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            // Ordering: Relaxed — after the fence (invariant 3).
            let idle =
                !IDLE.load(Ordering::Relaxed).is_null() || !SPARE.load(Ordering::Relaxed).is_null();
            let room = !start_failed && LIVE.load(Ordering::Relaxed) < max_workers();
            if start_failed {
                if !idle {
                    thread::park_timeout(retry);
                    retry = (retry * 2).min(RETRY_MAX);
                }
            } else if !idle && !room {
                thread::park();
            }
            // Ordering: Relaxed — a spurious unpark later is harmless.
            WANTED.store(0, Ordering::Relaxed);
        }
    }

    /// Moves the queue, oldest first, to the back of `backlog`.
    fn take_queue(backlog: &mut VecDeque<SendJob>) {
        // Ordering: Acquire — pairs with `dispatch`'s Release CAS.
        let mut job = QUEUE.swap(ptr::null_mut(), Ordering::Acquire);
        let start = backlog.len();
        while !job.is_null() {
            // SAFETY: the queue reference keeps the job valid.
            let next = unsafe { (*job).job_next.load(Ordering::Relaxed) };
            backlog.push_back(SendJob(job));
            job = next;
        }
        // The stack gave them newest first.
        backlog.make_contiguous()[start..].reverse();
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

    /// Gives up this worker's place under the cap if more than the cap are
    /// live (the cap was lowered): one CAS per leaver, so leavers never
    /// take the count below the cap.
    fn leave_over_cap(me: &Arc<Worker>) -> bool {
        // Ordering: Relaxed — a count compared with a setting.
        let mut live = LIVE.load(Ordering::Relaxed);
        loop {
            if live <= max_workers() {
                return false;
            }
            // Ordering: Relaxed — as above; invariant 3's fence follows in
            // `retired_from_count`.
            match LIVE.compare_exchange_weak(live, live - 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    retired_from_count(me);
                    return true;
                }
                Err(actual) => live = actual,
            }
        }
    }

    /// Gives up this worker's place under the cap (invariant 4) and wakes a
    /// dispatcher waiting for one (invariant 3).
    fn retire(me: &Arc<Worker>) {
        // Ordering: Relaxed — a count; invariant 3's fence follows.
        LIVE.fetch_sub(1, Ordering::Relaxed);
        retired_from_count(me);
    }

    /// What a worker does once `LIVE` no longer counts it.
    fn retired_from_count(me: &Arc<Worker>) {
        // A retired spare would keep others from becoming the spare.
        let raw = Arc::as_ptr(me).cast_mut();
        // Ordering: Relaxed — success only takes back our own reference.
        if SPARE
            .compare_exchange(raw, ptr::null_mut(), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            // SAFETY: the reference `offer_spare` leaked for us.
            drop(unsafe { Arc::from_raw(raw) });
        }
        notify_capacity();
    }

    fn work(first: *mut AfterHeader) {
        let me = Arc::new(Worker {
            slot: AtomicPtr::new(ptr::null_mut()),
            thread: thread::current(),
            next_idle: AtomicPtr::new(ptr::null_mut()),
        });
        run_contained(first);
        loop {
            // A lowered cap: leave at once rather than idle.
            if leave_over_cap(&me) {
                return;
            }
            // The spare serves cancellers directly; while the dispatcher has
            // a backlog, go where it looks first.
            // Ordering: Relaxed — a hint; `notify_capacity` does the rest.
            if WANTED.load(Ordering::Relaxed) != 0 || !offer_spare(&me) {
                push_idle(&me);
            }
            notify_capacity();
            let idle_until = Instant::now().checked_add(keep_alive());
            loop {
                // Ordering: Acquire — pairs with `give`'s Release CAS.
                let job = me.slot.swap(ptr::null_mut(), Ordering::Acquire);
                if job == retired() {
                    // Dismissed by the dispatcher (a lowered cap).
                    retire(&me);
                    return;
                }
                if !job.is_null() {
                    run_contained(job);
                    break;
                }
                let now = Instant::now();
                match idle_until {
                    Some(until) if now >= until => {
                        // Retire unless a job lands first; the reference the
                        // idle stack holds on us is dropped by whoever pops
                        // it (`give` then fails).
                        // Ordering: AcqRel — Acquire on failure sees a job
                        // given meanwhile (taken by the swap above next).
                        if me
                            .slot
                            .compare_exchange(
                                ptr::null_mut(),
                                retired(),
                                Ordering::AcqRel,
                                Ordering::Acquire,
                            )
                            .is_ok()
                        {
                            retire(&me);
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
