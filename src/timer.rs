//! Deadlines: the timer entry inside a deadline context's node, and the one
//! shared timer thread that expires them (and runs `after_func` callbacks'
//! dispatch).
//!
//! # Design
//!
//! * **No thread, no allocation until needed.** The timer thread and its
//!   buckets are created by the first deadline context or after-func (a
//!   one-time `OnceLock` initialisation; afterwards every access is one
//!   atomic load).
//! * **The node is the timer entry.** A deadline node links itself (through
//!   a second intrusive link, `TimerEntry::link`) into one of `BUCKETS`
//!   lock-free lists of the kind `list.rs` describes, chosen by its deadline
//!   in milliseconds shifted by the arming thread's stripe (one of
//!   `STRIPES`, handed out round robin), so threads that arm deadlines in
//!   the same millisecond push onto different lists. The index is kept in
//!   the entry for the disarm. No allocation: `with_timeout` costs the
//!   node's one allocation.
//! * **Arming is O(1) and lock-free** (deriving thread): a Treiber push, a
//!   `fetch_min` of the bucket's earliest deadline (skipped when it is
//!   already earlier), and an unpark of the timer thread only if the new
//!   deadline is earlier than the one it sleeps toward.
//! * **Disarming is O(1) and lock-free** (cancelling or releasing thread):
//!   a CAS `ARMED → DISARMED` and a logical removal from the bucket. The
//!   cancelling threads themselves unlink removed entries, amortised, as for
//!   child lists — so churn of long timeouts (derive, cancel, repeat) never
//!   reaches the timer thread at all, and memory stays within a constant
//!   factor of the live deadline contexts.
//! * **The timer thread** parks until the earliest bucket deadline. When
//!   woken, it sweeps each bucket whose earliest deadline has passed,
//!   removing and firing the due entries and recomputing the bucket's
//!   earliest deadline from those that stay (later deadlines that share the
//!   bucket), then hands ready after-func jobs to workers.
//!
//! # Entry states
//!
//! | state      | meaning                                                    |
//! |------------|------------------------------------------------------------|
//! | `NONE`     | not a deadline node                                        |
//! | `UNARMED`  | a deadline node not (yet) linked into a bucket             |
//! | `ARMED`    | linked; the bucket holds a memory reference                |
//! | `DISARMED` | cancelled or released; withdrawn from its bucket           |
//! | `FIRED`    | the timer claimed it and cancels it                        |
//!
//! # Invariants
//!
//! 1. `ARMED` is left by exactly one CAS: to `FIRED` (the timer) or to
//!    `DISARMED` (a cancellation or the release). So a deadline expiry and a
//!    manual cancel never both act, and `err()`/`cause()` come from the one
//!    that won the node's state word.
//! 2. A bucket holds a reference on the node's *memory* (`links`), never a
//!    handle: a deadline context dropped without cancel is released at once
//!    and merely withdrawn from its bucket.
//! 3. The timer cancels a node only after taking a handle on it with
//!    `try_acquire` (which fails once the node is released), so it never
//!    touches a released node's ancestors.
//! 4. `ARMED` is set only after the node is linked, so a disarm always
//!    withdraws a linked entry from the bucket its `bucket` index names; the sweep
//!    keeps (and re-counts) an entry it finds still `UNARMED`.
//! 5. No lost wake-up: an arming thread links, raises its bucket's
//!    `earliest`, then reads `sleeping_until` (if `earliest` is already at
//!    or before its deadline it stops there: whoever wrote that value made
//!    sure the thread wakes by then, and a sweep that resets it afterwards
//!    traverses the new entry); the timer thread publishes
//!    `sleeping_until`, then reads every bucket's `earliest` again — each
//!    step after a SeqCst fence (the store-buffer pattern), so either the
//!    thread sees the new deadline or the arming thread unparks it. A sweep
//!    resets `earliest` and then traverses, fenced the same way, so an entry
//!    pushed during the sweep is either traversed or raises `earliest`
//!    after the reset.

use core::ptr::NonNull;
use std::time::Instant;

use crate::cancel::CancelNode;
use crate::error::{Cause, Error};
use crate::list::{Entry, Link};
use crate::node::Node;
use crate::primitive::atomic::{AtomicU64, AtomicUsize, Ordering};

const NONE: usize = 0;
const UNARMED: usize = 1;
const ARMED: usize = 2;
const DISARMED: usize = 3;
const FIRED: usize = 4;

/// The timer part of a cancellable node.
// (Under loom the models arm and fire timers by hand: no buckets.)
#[cfg_attr(loom, allow(dead_code))]
pub(crate) struct TimerEntry {
    state: AtomicUsize,
    /// The node's link in its timer bucket.
    link: Link,
    /// The deadline in nanoseconds since the timer's base (set before the
    /// node is linked into its bucket, then immutable).
    when: AtomicU64,
    /// The index of the bucket the node is linked into (set with `when`).
    bucket: AtomicUsize,
    /// The cause a deadline expiry records (`DeadlineExceeded` when `None`).
    cause: Option<Cause>,
}

impl TimerEntry {
    /// The entry of a node without a deadline of its own.
    pub(crate) fn none() -> TimerEntry {
        TimerEntry {
            state: AtomicUsize::new(NONE),
            link: Link::new(),
            when: AtomicU64::new(0),
            bucket: AtomicUsize::new(0),
            cause: None,
        }
    }

    /// The entry of a deadline node, not yet armed.
    pub(crate) fn deadline(cause: Option<Cause>) -> TimerEntry {
        TimerEntry {
            state: AtomicUsize::new(UNARMED),
            link: Link::new(),
            when: AtomicU64::new(0),
            bucket: AtomicUsize::new(0),
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
///
/// # Safety
///
/// The caller holds handles on the node and gives the bucket (or, under
/// loom, the test) one memory reference it counted for it (invariant 2).
pub(crate) unsafe fn arm(raw: NonNull<CancelNode>, deadline: Instant) {
    // SAFETY: the deriving thread holds handles on the node.
    let node = unsafe { raw.as_ref() };
    // SAFETY: the node's memory is kept alive by the caller's reference,
    // which the timer now owns. `submit` sets `ARMED` once the entry is
    // linked, so a disarm never removes an entry that is not linked yet.
    unsafe { imp::submit(raw, deadline) };
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
    // Ordering: AcqRel — invariant 1, against the timer's `fire` CAS.
    if node
        .timer
        .state
        .compare_exchange(ARMED, DISARMED, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
    {
        imp::withdraw(node);
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
}

/// A deadline node seen as an entry of its timer bucket: the same memory,
/// linked through `TimerEntry::link`, the list holding a memory reference.
#[repr(transparent)]
#[cfg_attr(loom, allow(dead_code))]
pub(crate) struct TimerView(CancelNode);

// SAFETY: `CancelNode` is pointer-aligned (≥ 2, for the tag bit); `link` is
// a fixed field; the bucket's reference (`acquire_memory` in `arm`) keeps
// the memory valid until `release_link`.
unsafe impl Entry for TimerView {
    fn link(&self) -> &Link {
        &self.0.timer.link
    }

    unsafe fn release_link(this: *const Self) {
        // SAFETY: forwarded: the bucket's memory reference.
        unsafe { CancelNode::release_memory(this.cast()) }
    }
}

#[cfg(not(loom))]
pub(crate) use imp::{start_thread, submit_job};

/// The shared timer thread and its buckets.
#[cfg(not(loom))]
mod imp {
    use core::ptr::NonNull;
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    use super::{TimerRef, TimerView};
    use crate::after_func::{AfterHeader, run_job};
    use crate::cancel::CancelNode;
    use crate::list::List;
    use crate::primitive::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering, fence};
    use crate::primitive::thread::{self, Thread};

    /// Buckets, by deadline in milliseconds (shifted by the arming thread's
    /// stripe) modulo this (a power of two).
    const BUCKETS: usize = 1024;
    /// A bucket cleans up once this many entries are removed but linked (and
    /// they are half of it), so removed entries held across all buckets stay
    /// under `BUCKETS * CLEANUP` plus twice the live ones.
    const BUCKET_CLEANUP: usize = 8;
    /// Threads spread their deadlines over this many stripes of buckets.
    const STRIPES: usize = 8;
    /// Hands out stripes to threads, round robin.
    static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);
    std::thread_local! {
        /// This thread's stripe.
        static STRIPE: usize = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    /// `sleeping_until` while the thread is awake: submitters never unpark.
    const AWAKE: u64 = 0;
    /// A bucket's earliest deadline when it holds none.
    const EMPTY: u64 = u64::MAX;

    struct Bucket {
        entries: List<TimerView>,
        /// A lower bound of the deadlines linked here (exact after a sweep).
        earliest: AtomicU64,
    }

    pub(super) struct Timer {
        /// Deadlines are kept as nanoseconds since this instant.
        base: Instant,
        buckets: Box<[Bucket]>,
        /// Ready after-func jobs (`AfterHeader::job_next`).
        jobs: AtomicPtr<AfterHeader>,
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
        let buckets = (0..BUCKETS)
            .map(|_| Bucket {
                entries: List::with_cleanup_min(BUCKET_CLEANUP),
                earliest: AtomicU64::new(EMPTY),
            })
            .collect();
        let timer: &'static Timer = Box::leak(Box::new(Timer {
            base: Instant::now(),
            buckets,
            jobs: AtomicPtr::new(core::ptr::null_mut()),
            sleeping_until: AtomicU64::new(AWAKE),
            thread: handle.thread().clone(),
        }));
        let _ = tx.send(timer);
        timer
    }

    impl Timer {
        fn nanos(&self, at: Instant) -> u64 {
            let nanos = at.saturating_duration_since(self.base).as_nanos();
            // Never AWAKE (0) nor EMPTY for a real deadline.
            nanos.clamp(1, u128::from(EMPTY - 1)) as u64
        }

        /// The bucket for a deadline armed by this thread: by millisecond,
        /// shifted by a per-thread stride, so threads arming deadlines in the
        /// same millisecond (a server's timeouts) push onto different lists
        /// instead of contending for one head. The timer finds due entries by
        /// each bucket's `earliest`, whatever the index.
        fn bucket_index(when: u64) -> usize {
            // (A thread-local destructor arming a deadline gets stripe 0.)
            let stripe = STRIPE.try_with(|stripe| *stripe).unwrap_or(0);
            ((when / 1_000_000) as usize).wrapping_add(stripe * (BUCKETS / STRIPES)) % BUCKETS
        }

        /// The earliest deadline over all buckets.
        fn earliest(&self) -> u64 {
            self.buckets
                .iter()
                // Ordering: Acquire — pairs with the SeqCst `fetch_min` of
                // `submit` (after its fence: invariant 5).
                .map(|bucket| bucket.earliest.load(Ordering::Acquire))
                .min()
                .unwrap_or(EMPTY)
        }
    }

    /// Links an armed node into its bucket.
    ///
    /// # Safety
    ///
    /// `node` is armed and the caller gives the bucket the memory reference
    /// it took for it.
    pub(super) unsafe fn submit(node: NonNull<CancelNode>, deadline: Instant) {
        let timer = timer();
        let when = timer.nanos(deadline);
        // SAFETY: the reference keeps the node valid.
        let entry = unsafe { node.as_ref() };
        // Ordering: Relaxed — published by the push's Release CAS.
        entry.timer.when.store(when, Ordering::Relaxed);
        let index = Timer::bucket_index(when);
        // Ordering: Relaxed — as `when`.
        entry.timer.bucket.store(index, Ordering::Relaxed);
        let bucket = &timer.buckets[index];
        // SAFETY: the node is valid and in no bucket; the list now owns the
        // memory reference.
        if unsafe { bucket.entries.push(node.as_ptr().cast::<TimerView>()) }.is_err() {
            unreachable!("timer buckets are never closed");
        }
        // Ordering: Release — pairs with the Acquire CASes of `disarm` (which
        // then removes a linked entry from the right bucket) and `fire`.
        entry.timer.state.store(super::ARMED, Ordering::Release);
        // Invariant 5: the push, then (fenced) the bucket's earliest
        // deadline, then (fenced) the thread's.
        fence(Ordering::SeqCst);
        // A bucket whose earliest deadline is already at or before ours
        // needs no update (a `fetch_min` would leave it unchanged; the
        // SeqCst load reads the same latest value in the total order), and
        // then neither does the thread, which sleeps until at most that
        // bucket's deadline: the usual case for long timeouts, which skips
        // a CAS loop, a fence and a load.
        if bucket.earliest.load(Ordering::SeqCst) <= when {
            return;
        }
        bucket.earliest.fetch_min(when, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if when < timer.sleeping_until.load(Ordering::SeqCst) {
            timer.thread.unpark();
        }
    }

    /// Removes a disarmed node from its bucket (logically; the bucket's
    /// cleanup unlinks it, amortised, on this or another disarming thread).
    pub(super) fn withdraw(node: &CancelNode) {
        let Some(timer) = TIMER.get() else { return };
        // Ordering: Relaxed — set before the push, which happens before the
        // `ARMED` store that the caller's disarming CAS read (Acquire).
        let index = node.timer.bucket.load(Ordering::Relaxed);
        let view = (node as *const CancelNode).cast::<TimerView>();
        // SAFETY: the node was pushed onto exactly this bucket (`index`)
        // and the caller keeps it alive.
        unsafe { timer.buckets[index].entries.remove(view) };
    }

    /// Starts the timer thread if it is not running yet (so that a later
    /// cancellation never has to).
    pub(crate) fn start_thread() {
        let _ = timer();
    }

    /// Hands a dispatched after-func job to the spare idle worker, if there
    /// is one (one wake-up, on any thread); otherwise to the timer thread,
    /// which finds or starts a worker.
    ///
    /// # Safety
    ///
    /// `job` won the after-func race and the caller passes its queue
    /// reference.
    pub(crate) unsafe fn submit_job(job: *const AfterHeader) {
        let job = job.cast_mut();
        if super::workers::try_spare(job) {
            return;
        }
        let timer = timer();
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

    /// Sweeps one bucket: removes the entries due by `now` into `due` (with
    /// a memory reference each) and recomputes the bucket's earliest
    /// deadline from the rest.
    fn sweep(bucket: &Bucket, now: u64, due: &mut Vec<TimerRef>) {
        // Invariant 5, bucket side: reset, then (fenced) traverse; a push
        // the traversal misses raises `earliest` again after it.
        bucket.earliest.store(EMPTY, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        bucket.entries.sweep(|view| {
            // SAFETY: linked entries are valid while the sweep is pinned.
            let node = unsafe { &*view.cast::<CancelNode>() };
            let when = node.timer.when.load(Ordering::Relaxed);
            // An entry linked a moment ago may not be `ARMED` yet: keep it
            // (its deadline stays in `earliest`, so it is swept again).
            let armed = node.timer.state.load(Ordering::Acquire) != super::UNARMED;
            if when <= now && armed {
                node.acquire_memory();
                // SAFETY: non-null (a linked entry).
                due.push(TimerRef(unsafe {
                    NonNull::new_unchecked(view.cast_mut().cast())
                }));
                true
            } else {
                bucket.earliest.fetch_min(when, Ordering::SeqCst);
                false
            }
        });
    }

    fn run(timer: &'static Timer) -> ! {
        let mut due = Vec::new();
        loop {
            let now = timer.nanos(Instant::now());
            for bucket in timer.buckets.iter() {
                if bucket.earliest.load(Ordering::Acquire) <= now {
                    sweep(bucket, now, &mut due);
                }
            }
            for entry in due.drain(..) {
                // Cancelling runs foreign code (wakers, value drops when the
                // last handle goes): a panic there must not kill the timer.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| entry.fire()));
            }

            // Ordering: Acquire — pairs with `submit_job`'s Release.
            let mut job = timer.jobs.swap(core::ptr::null_mut(), Ordering::Acquire);
            while !job.is_null() {
                // SAFETY: the queue reference keeps the job valid.
                let next = unsafe { (*job).job_next.load(Ordering::Relaxed) };
                super::workers::hand_off(job, run_job);
                job = next;
            }

            let next = timer.earliest();
            timer.sleeping_until.store(next, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            // Invariant 5: a last look after announcing the deadline.
            let pending = timer.earliest() < next || !timer.jobs.load(Ordering::Acquire).is_null();
            if !pending {
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
/// any thread, which is exactly the race the real timer thread runs.
#[cfg(loom)]
mod imp {
    use core::ptr::NonNull;
    use std::cell::RefCell;
    use std::time::Instant;

    use super::TimerRef;
    use crate::cancel::CancelNode;
    use crate::primitive::atomic::Ordering;

    crate::primitive::thread_local! {
        static ARMED: RefCell<Vec<TimerRef>> = RefCell::new(Vec::new());
    }

    /// # Safety
    ///
    /// As the std `submit`: the test's `ArmedTimer` takes the reference.
    pub(super) unsafe fn submit(node: NonNull<CancelNode>, _deadline: Instant) {
        // SAFETY: the caller's reference keeps the node valid.
        let entry = unsafe { node.as_ref() };
        // Ordering: Release — as in the std `submit`.
        entry.timer.state.store(super::ARMED, Ordering::Release);
        ARMED.with(|armed| armed.borrow_mut().push(TimerRef(node)));
    }

    /// The test's `ArmedTimer` keeps its reference until it fires.
    pub(super) fn withdraw(_node: &CancelNode) {}

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

    impl Worker {
        /// Puts `job` in this idle worker's slot and wakes it. False if the
        /// worker retired first (then it takes no more jobs).
        fn give(&self, job: *mut AfterHeader) -> bool {
            // Ordering: AcqRel — Release publishes the job to the worker's
            // Acquire swap; Acquire on failure sees the retirement.
            let given = self
                .slot
                .compare_exchange(
                    core::ptr::null_mut(),
                    job,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok();
            if given {
                self.thread.unpark();
            }
            given
        }
    }

    /// Idle workers: pushed by the workers, popped only by the timer thread
    /// (a single consumer, so the Treiber pop has no ABA problem).
    static IDLE: AtomicPtr<Worker> = AtomicPtr::new(core::ptr::null_mut());

    /// One more idle worker, which any thread may claim: taking it is a
    /// swap (take-all, so no ABA problem), so a cancelling thread hands a
    /// callback straight to it — one wake-up instead of two (timer thread,
    /// then worker). Holds an `Arc` reference on the worker, or null.
    static SPARE: AtomicPtr<Worker> = AtomicPtr::new(core::ptr::null_mut());

    /// Gives `job` to the spare worker. False if there is none (or it just
    /// retired): the caller queues the job for the timer thread instead.
    pub(super) fn try_spare(job: *mut AfterHeader) -> bool {
        // Ordering: Relaxed — a hint, to skip the swap when there is none.
        if SPARE.load(Ordering::Relaxed).is_null() {
            return false;
        }
        // Ordering: Acquire — pairs with the worker's Release CAS in
        // `offer_spare`, so its fields are visible.
        let spare = SPARE.swap(core::ptr::null_mut(), Ordering::Acquire);
        if spare.is_null() {
            return false;
        }
        // SAFETY: `SPARE` held a reference leaked by `offer_spare`; the swap
        // gave it to us alone.
        let worker = unsafe { Arc::from_raw(spare) };
        worker.give(job)
    }

    /// Makes `worker` the spare if there is none; otherwise false.
    fn offer_spare(worker: &Arc<Worker>) -> bool {
        let raw = Arc::into_raw(worker.clone()).cast_mut();
        // Ordering: Release — publishes the worker to `try_spare`'s swap.
        if SPARE
            .compare_exchange(
                core::ptr::null_mut(),
                raw,
                Ordering::Release,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            return true;
        }
        // SAFETY: the reference leaked just above, never published.
        drop(unsafe { Arc::from_raw(raw) });
        false
    }

    /// Runs `job` on an idle worker, or on a new one (called only by the
    /// timer thread, the idle stack's single consumer).
    pub(super) fn hand_off(job: *mut AfterHeader, run: unsafe fn(*const AfterHeader)) {
        while let Some(worker) = pop_idle() {
            if worker.give(job) {
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
            if !offer_spare(&me) {
                push_idle(&me);
            }
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
                    // Retire unless a job lands first; the reference the
                    // idle stack or the spare slot holds on us is dropped
                    // by whoever takes it (`pop_idle`'s caller, `try_spare`).
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
