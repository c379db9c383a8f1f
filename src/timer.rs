//! Deadlines: the timer entry inside a deadline context's node, and the one
//! shared timer thread that expires them (and runs `after_func` callbacks'
//! dispatch).
//!
//! # Design
//!
//! * **No thread, no allocation until needed.** The timer thread is started
//!   by the first deadline context or after-func (a one-time `OnceLock`
//!   initialisation; afterwards every access is one atomic load).
//! * **Arming is O(1) and lock-free for the deriving thread.** The node
//!   itself is the timer entry: the deriver takes one reference on the node's
//!   memory for the timer, pushes the node on a Treiber stack of submissions
//!   and unparks the timer thread *only if* the new deadline is earlier than
//!   the one the thread sleeps toward. No allocation: `with_timeout` costs the
//!   node's one allocation.
//! * **The timer thread owns a binary heap** of `(deadline, node)`; only it
//!   touches the heap, so no lock is needed. It drains submissions, expires
//!   what is due (`cancel(DeadlineExceeded, cause)`), and parks until the
//!   earliest deadline (or indefinitely when there is none).
//! * **Disarming is O(1) and lock-free.** Cancelling or releasing a deadline
//!   context flips its entry `ARMED → DISARMED` and counts it as garbage. The
//!   thread drops garbage when it reaches its deadline or, sooner, in a
//!   compaction pass that runs once garbage is at least half of what the
//!   timer holds (and at least `COMPACT_MIN`): the thread is woken for that,
//!   so memory under churn of long timeouts stays within a constant factor of
//!   the live deadline contexts.
//!
//! # Entry states
//!
//! | state      | meaning                                                  |
//! |------------|----------------------------------------------------------|
//! | `NONE`     | not a deadline node                                      |
//! | `UNARMED`  | a deadline node whose timer was not (yet) armed          |
//! | `ARMED`    | the timer holds a memory reference and will fire it      |
//! | `DISARMED` | cancelled or released; the timer will just drop it       |
//! | `FIRED`    | the timer claimed it and cancels it                      |
//!
//! # Invariants
//!
//! 1. `ARMED` leaves by exactly one CAS: to `FIRED` (the timer) or to
//!    `DISARMED` (a cancellation or the release). So a deadline expiry and a
//!    manual cancel never both act, and `err()`/`cause()` come from the one
//!    that won the node's state word.
//! 2. While armed (and until the timer drops the entry), the timer owns one
//!    reference on the node's *memory* (`links`), never a handle: a deadline
//!    context dropped without cancel is released at once; its entry is
//!    garbage.
//! 3. The timer cancels a node only after taking a handle on it with
//!    `try_acquire` (which fails once the node is released), so it never
//!    touches a released node's ancestors.
//! 4. The timer thread sets `sleeping_until` before its last look at the
//!    submission stack, and a submitter pushes before it reads
//!    `sleeping_until`, with SeqCst fences between (the store-buffer
//!    pattern): either the thread sees the submission, or the submitter sees
//!    the thread's deadline and unparks it if its own is earlier.

use core::ptr::{self, NonNull};
use std::time::Instant;

use crate::cancel::CancelNode;
use crate::error::{Cause, Error};
use crate::node::Node;
use crate::primitive::atomic::{AtomicPtr, AtomicUsize, Ordering};

const NONE: usize = 0;
const UNARMED: usize = 1;
const ARMED: usize = 2;
const DISARMED: usize = 3;
const FIRED: usize = 4;

/// The timer part of a cancellable node.
pub(crate) struct TimerEntry {
    state: AtomicUsize,
    /// The submission stack link.
    next: AtomicPtr<CancelNode>,
    /// The cause a deadline expiry records (`DeadlineExceeded` when `None`).
    cause: Option<Cause>,
}

impl TimerEntry {
    /// The entry of a node without a deadline of its own.
    pub(crate) fn none() -> TimerEntry {
        TimerEntry {
            state: AtomicUsize::new(NONE),
            next: AtomicPtr::new(ptr::null_mut()),
            cause: None,
        }
    }

    /// The entry of a deadline node, not yet armed.
    pub(crate) fn deadline(cause: Option<Cause>) -> TimerEntry {
        TimerEntry {
            state: AtomicUsize::new(UNARMED),
            next: AtomicPtr::new(ptr::null_mut()),
            cause,
        }
    }

    /// Whether the node was made by `with_deadline` (for `Display`).
    pub(crate) fn is_deadline(&self) -> bool {
        self.state.load(Ordering::Relaxed) != NONE
    }

    /// The cause a deadline expiry records.
    pub(crate) fn cause(&self) -> Option<Cause> {
        self.cause.clone()
    }
}

/// Arms `node`'s timer for `deadline`. Called once, by the deriving thread,
/// after the node is fully built.
pub(crate) fn arm(raw: NonNull<CancelNode>, deadline: Instant) {
    // SAFETY: the deriving thread holds handles on the node.
    let node = unsafe { raw.as_ref() };
    // The timer's reference on the memory (invariant 2).
    node.acquire_memory();
    // Ordering: Release — pairs with the Acquire CASes of `disarm`/`fire`.
    node.timer.state.store(ARMED, Ordering::Release);
    // SAFETY: the node's memory is kept alive by the reference just taken,
    // which the timer now owns.
    unsafe { imp::submit(TimerRef(raw), deadline) };
    // A cancellation that ran before `ARMED` was visible could not disarm:
    // do it for it.
    if node.is_done() {
        disarm(node);
    }
}

/// Disarms `node`'s timer if it is armed (invariant 1). Called on every
/// cancellation of a deadline node and on its release.
#[inline]
pub(crate) fn disarm(node: &CancelNode) {
    if node.timer.state.load(Ordering::Relaxed) != ARMED {
        return;
    }
    // Counted before the CAS, so the timer (which can only drop the entry as
    // garbage after seeing DISARMED) always decrements after we increment.
    imp::count_garbage(1);
    // Ordering: AcqRel — invariant 1, against the timer's `fire` CAS.
    if node
        .timer
        .state
        .compare_exchange(ARMED, DISARMED, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
    {
        imp::maybe_compact();
    } else {
        imp::count_garbage(-1);
    }
}

/// The timer's reference on an armed node's memory.
pub(crate) struct TimerRef(NonNull<CancelNode>);

// SAFETY: a memory reference on a `Sync` node, handed to the timer thread.
unsafe impl Send for TimerRef {}

impl TimerRef {
    fn node(&self) -> &CancelNode {
        // SAFETY: our memory reference keeps the node's memory valid.
        unsafe { self.0.as_ref() }
    }

    /// Whether a cancellation or release disarmed the entry.
    pub(crate) fn is_disarmed(&self) -> bool {
        self.node().timer.state.load(Ordering::Acquire) == DISARMED
    }

    /// The deadline has passed: cancel the node with `DeadlineExceeded`
    /// unless a cancellation or release came first. Drops the reference.
    /// Returns whether the entry was disarmed (garbage).
    pub(crate) fn fire(self) -> bool {
        let node = self.node();
        // Ordering: AcqRel — invariant 1.
        let claimed = node
            .timer
            .state
            .compare_exchange(ARMED, FIRED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if claimed && node.node.try_acquire() {
            node.cancel(Error::DeadlineExceeded, node.timer.cause());
            // SAFETY: the handle `try_acquire` took (invariant 3).
            unsafe { Node::release(self.0.cast()) };
        }
        self.discard();
        !claimed
    }

    /// Drops the timer's reference without firing.
    pub(crate) fn discard(self) {
        // SAFETY: the reference `arm` took, given up once.
        unsafe { CancelNode::release_memory(self.0.as_ptr()) };
    }

    /// Gives the reference up as a raw pointer, for the submission stack
    /// (the timer thread rebuilds the `TimerRef` when it drains it).
    #[cfg(not(loom))]
    fn into_raw(self) -> *mut CancelNode {
        self.0.as_ptr()
    }
}

#[cfg(not(loom))]
pub(crate) use imp::{start_thread, submit_job};

/// The shared timer thread.
#[cfg(not(loom))]
mod imp {
    use std::cmp::{Ordering as CmpOrdering, Reverse};
    use std::collections::BinaryHeap;
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use super::TimerRef;
    use crate::after_func::{AfterHeader, run_job};
    use crate::cancel::CancelNode;
    use crate::primitive::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering, fence};
    use crate::primitive::thread::{self, Thread};

    /// Garbage below this never triggers a compaction.
    const COMPACT_MIN: usize = 1024;
    /// `sleeping_until` while the thread is awake: submitters never unpark.
    const AWAKE: u64 = 0;

    pub(super) struct Timer {
        /// Deadlines are kept as nanoseconds since this instant.
        base: Instant,
        submissions: AtomicPtr<CancelNode>,
        /// Ready after-func jobs (`AfterHeader::job_next`).
        jobs: AtomicPtr<AfterHeader>,
        /// The deadline the thread parks toward (`u64::MAX`: none), or
        /// `AWAKE`.
        sleeping_until: AtomicU64,
        /// Entries the timer holds (submitted, not yet dropped).
        held: AtomicUsize,
        /// Of those, disarmed ones.
        garbage: AtomicUsize,
        /// Set when a compaction was requested and not yet run.
        compact: AtomicUsize,
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
        let timer: &'static Timer = Box::leak(Box::new(Timer {
            base: Instant::now(),
            submissions: AtomicPtr::new(core::ptr::null_mut()),
            jobs: AtomicPtr::new(core::ptr::null_mut()),
            sleeping_until: AtomicU64::new(AWAKE),
            held: AtomicUsize::new(0),
            garbage: AtomicUsize::new(0),
            compact: AtomicUsize::new(0),
            thread: handle.thread().clone(),
        }));
        let _ = tx.send(timer);
        timer
    }

    impl Timer {
        fn nanos(&self, at: Instant) -> u64 {
            let nanos = at.saturating_duration_since(self.base).as_nanos();
            // Never AWAKE (0) for a real deadline; saturate far futures.
            (nanos.min(u64::MAX as u128 - 1) as u64).max(1)
        }
    }

    /// # Safety
    ///
    /// `entry` owns a memory reference on an armed node.
    pub(super) unsafe fn submit(entry: TimerRef, deadline: Instant) {
        let timer = timer();
        timer.held.fetch_add(1, Ordering::Relaxed);
        let node = entry.into_raw();
        // Ordering: SeqCst push — invariant 4; Release publishes the node.
        let mut head = timer.submissions.load(Ordering::Relaxed);
        loop {
            // SAFETY: the reference keeps the node valid; its `next` is ours
            // until the push succeeds.
            unsafe { (*node).timer.next.store(head, Ordering::Relaxed) };
            match timer.submissions.compare_exchange_weak(
                head,
                node,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => head = actual,
            }
        }
        fence(Ordering::SeqCst);
        // Ordering: Relaxed after the fence — invariant 4.
        if timer.nanos(deadline) < timer.sleeping_until.load(Ordering::Relaxed) {
            timer.thread.unpark();
        }
    }

    /// Adjusts the count of disarmed entries the timer still holds.
    pub(super) fn count_garbage(delta: isize) {
        let Some(timer) = TIMER.get() else { return };
        if delta >= 0 {
            timer
                .garbage
                .fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
        } else {
            timer
                .garbage
                .fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// Wakes the thread to compact when garbage is at least half of what it
    /// holds (and at least `COMPACT_MIN`).
    pub(super) fn maybe_compact() {
        let Some(timer) = TIMER.get() else { return };
        let garbage = timer.garbage.load(Ordering::Relaxed);
        if garbage >= COMPACT_MIN
            && garbage * 2 >= timer.held.load(Ordering::Relaxed)
            && timer.compact.swap(1, Ordering::AcqRel) == 0
        {
            timer.thread.unpark();
        }
    }

    /// Starts the timer thread if it is not running yet (so that a later
    /// cancellation never has to).
    pub(crate) fn start_thread() {
        let _ = timer();
    }

    /// Hands a dispatched after-func job to the timer thread.
    ///
    /// # Safety
    ///
    /// `job` won the after-func race and the caller passes its queue
    /// reference.
    pub(crate) unsafe fn submit_job(job: *const AfterHeader) {
        let timer = timer();
        let job = job.cast_mut();
        let mut head = timer.jobs.load(Ordering::Relaxed);
        loop {
            // SAFETY: the queue reference keeps the job valid.
            unsafe { (*job).job_next.store(head, Ordering::Relaxed) };
            // Ordering: Release publishes the job to the thread's swap.
            match timer
                .jobs
                .compare_exchange_weak(head, job, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(actual) => head = actual,
            }
        }
        // Always wake: a callback must run promptly.
        timer.thread.unpark();
    }

    struct Armed {
        when: u64,
        entry: TimerRef,
    }

    impl PartialEq for Armed {
        fn eq(&self, other: &Self) -> bool {
            self.when == other.when
        }
    }
    impl Eq for Armed {}
    impl PartialOrd for Armed {
        fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Armed {
        fn cmp(&self, other: &Self) -> CmpOrdering {
            self.when.cmp(&other.when)
        }
    }

    fn run(timer: &'static Timer) -> ! {
        let mut heap: BinaryHeap<Reverse<Armed>> = BinaryHeap::new();
        loop {
            // Ordering: Acquire — pairs with the submitters' Release pushes.
            let mut node = timer
                .submissions
                .swap(core::ptr::null_mut(), Ordering::SeqCst);
            while let Some(entry) = core::ptr::NonNull::new(node) {
                // SAFETY: the submitted reference keeps it valid; `next` was
                // written before the push we acquired.
                node = unsafe { entry.as_ref() }.timer.next.load(Ordering::Relaxed);
                // SAFETY: as above.
                let when = timer.nanos(unsafe { entry.as_ref() }.deadline_instant());
                heap.push(Reverse(Armed {
                    when,
                    entry: TimerRef(entry),
                }));
            }

            if timer.compact.swap(0, Ordering::AcqRel) != 0 {
                let entries = std::mem::take(&mut heap).into_vec();
                let mut kept = Vec::with_capacity(entries.len());
                let mut dropped = 0;
                for Reverse(armed) in entries {
                    if armed.entry.is_disarmed() {
                        armed.entry.discard();
                        dropped += 1;
                    } else {
                        kept.push(Reverse(armed));
                    }
                }
                heap = BinaryHeap::from(kept);
                heap.shrink_to(heap.len() * 2);
                timer.garbage.fetch_sub(dropped, Ordering::Relaxed);
                timer.held.fetch_sub(dropped, Ordering::Relaxed);
            }

            let now = timer.nanos(Instant::now());
            while heap.peek().is_some_and(|top| top.0.when <= now) {
                let Some(Reverse(armed)) = heap.pop() else {
                    break;
                };
                // Cancelling runs foreign code (wakers, value drops when the
                // last handle goes): a panic there must not kill the timer.
                let was_garbage =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| armed.entry.fire()))
                        .unwrap_or(false);
                timer.held.fetch_sub(1, Ordering::Relaxed);
                if was_garbage {
                    timer.garbage.fetch_sub(1, Ordering::Relaxed);
                }
            }

            // Ordering: Acquire — pairs with `submit_job`'s Release.
            let mut job = timer.jobs.swap(core::ptr::null_mut(), Ordering::Acquire);
            while !job.is_null() {
                // SAFETY: the queue reference keeps the job valid.
                let next = unsafe { (*job).job_next.load(Ordering::Relaxed) };
                super::workers::hand_off(job, run_job);
                job = next;
            }

            let next = heap.peek().map_or(u64::MAX, |top| top.0.when);
            timer.sleeping_until.store(next, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            // Invariant 4: a last look after announcing the deadline.
            let pending = !timer.submissions.load(Ordering::SeqCst).is_null()
                || !timer.jobs.load(Ordering::Acquire).is_null()
                || timer.compact.load(Ordering::Acquire) != 0;
            if !pending {
                if next == u64::MAX {
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
/// any thread, which is exactly the race the real timer thread runs.
#[cfg(loom)]
mod imp {
    use std::cell::RefCell;
    use std::time::Instant;

    use super::TimerRef;

    crate::primitive::thread_local! {
        static ARMED: RefCell<Vec<TimerRef>> = RefCell::new(Vec::new());
    }

    /// # Safety
    ///
    /// As the std `submit`.
    pub(super) unsafe fn submit(entry: TimerRef, _deadline: Instant) {
        ARMED.with(|armed| armed.borrow_mut().push(entry));
    }

    pub(super) fn count_garbage(_delta: isize) {}

    pub(super) fn maybe_compact() {}

    pub(super) fn take_armed() -> Vec<TimerRef> {
        ARMED.with(|armed| std::mem::take(&mut *armed.borrow_mut()))
    }
}

/// Test hooks for the loom models (only under `--cfg loom`).
#[cfg(loom)]
#[doc(hidden)]
pub mod loom_hooks {
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
    }

    /// Takes the timers armed on this thread since the last call.
    pub fn take_armed() -> Vec<ArmedTimer> {
        super::imp::take_armed()
            .into_iter()
            .map(ArmedTimer)
            .collect()
    }
}

/// The after-func worker pool (std only).
#[cfg(not(loom))]
mod workers {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crate::after_func::AfterHeader;
    use crate::primitive::atomic::{AtomicPtr, Ordering};
    use crate::primitive::thread::{self, Thread};

    /// An idle worker exits after this long without a job.
    const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

    /// A worker's job slot value meaning "retired, send nothing".
    fn retired() -> *mut AfterHeader {
        core::ptr::without_provenance_mut(1)
    }

    struct Worker {
        slot: AtomicPtr<AfterHeader>,
        thread: Thread,
        next_idle: AtomicPtr<Worker>,
    }

    /// Idle workers: pushed by the workers, popped only by the timer thread
    /// (a single consumer, so the Treiber pop has no ABA problem).
    static IDLE: AtomicPtr<Worker> = AtomicPtr::new(core::ptr::null_mut());

    /// Runs `job` on an idle worker, or on a new one (called only by the
    /// timer thread, the idle stack's single consumer).
    pub(super) fn hand_off(job: *mut AfterHeader, run: unsafe fn(*const AfterHeader)) {
        while let Some(worker) = pop_idle() {
            // Ordering: AcqRel — Release publishes the job to the worker's
            // Acquire swap; fails if the worker retired.
            if worker
                .slot
                .compare_exchange(
                    core::ptr::null_mut(),
                    job,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
            {
                worker.thread.unpark();
                return;
            }
        }
        let send = SendJob(job);
        let spawned = std::thread::Builder::new()
            .name("goctx-after-func".into())
            .spawn(move || {
                let send = send;
                work(send.0, run)
            });
        if let Err(error) = spawned {
            // No thread can be had: run it here rather than lose it (the
            // closure that held the job was dropped unrun).
            eprintln!(
                "goctx: cannot start an after_func worker ({error}); running it on the timer thread"
            );
            // SAFETY: the job's queue reference was passed to us.
            unsafe { run(job) };
        }
    }

    struct SendJob(*mut AfterHeader);
    // SAFETY: a dispatched job is handed to exactly one thread.
    unsafe impl Send for SendJob {}

    fn pop_idle() -> Option<Arc<Worker>> {
        // Ordering: Acquire — sees the pushed worker's `next_idle`.
        let mut head = IDLE.load(Ordering::Acquire);
        loop {
            if head.is_null() {
                return None;
            }
            // SAFETY: an idle-stack entry is an `Arc` leaked by `push_idle`;
            // only this (single) consumer takes it back.
            let next = unsafe { (*head).next_idle.load(Ordering::Relaxed) };
            match IDLE.compare_exchange_weak(head, next, Ordering::Acquire, Ordering::Acquire) {
                // SAFETY: we took the stack's reference.
                Ok(_) => return Some(unsafe { Arc::from_raw(head) }),
                Err(actual) => head = actual,
            }
        }
    }

    fn push_idle(worker: &Arc<Worker>) {
        let raw = Arc::into_raw(worker.clone()).cast_mut();
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

    /// Runs a job. `f` itself is contained by `run_job`; this also keeps a
    /// panicking drop (of the last handle the job releases) from killing
    /// the worker.
    fn run_contained(job: *mut AfterHeader, run: unsafe fn(*const AfterHeader)) {
        let job = SendJob(job);
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let job = job;
            // SAFETY: the job was handed to this thread with its queue
            // reference.
            unsafe { run(job.0) }
        }));
    }

    fn work(first: *mut AfterHeader, run: unsafe fn(*const AfterHeader)) {
        let me = Arc::new(Worker {
            slot: AtomicPtr::new(core::ptr::null_mut()),
            thread: thread::current(),
            next_idle: AtomicPtr::new(core::ptr::null_mut()),
        });
        run_contained(first, run);
        loop {
            push_idle(&me);
            let idle_until = Instant::now() + IDLE_TIMEOUT;
            loop {
                // Ordering: Acquire — pairs with `hand_off`'s Release CAS.
                let job = me.slot.swap(core::ptr::null_mut(), Ordering::Acquire);
                if !job.is_null() {
                    run_contained(job, run);
                    break;
                }
                let now = Instant::now();
                if now >= idle_until {
                    // Retire unless a job lands first; the stack's reference
                    // on us is dropped by `pop_idle`'s caller.
                    if me
                        .slot
                        .compare_exchange(
                            core::ptr::null_mut(),
                            retired(),
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok()
                    {
                        return;
                    }
                    continue;
                }
                thread::park_timeout(idle_until - now);
            }
        }
    }
}
