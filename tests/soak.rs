//! A randomized multi-threaded soak over a shared forest of contexts.
//!
//! `THREADS` threads pick random operations on `SLOTS` shared slots (each a
//! `Mutex<Option<Entry>>`; the lock is the test's, never held across a
//! cancellation or a wait) and a few long-lived roots: derive (`with_cancel`,
//! `with_cancel_cause`, `with_value`, `without_cancel`, deadlines near, far
//! and past, `with_timeout` small and `Duration::MAX`), cancel, drop, clone,
//! cancel through a guard, wait (zero, small and deadline-bound timeouts),
//! poll `Done` as a future and keep it pending, register and stop
//! after-funcs, and check invariants all the while:
//!
//! * a cancel returns with its context done; a context derived from a done
//!   parent is done when the derivation returns;
//! * a child of a done parent is done once no cancellation that could still
//!   be propagating is in flight (API.md 2: every explicit cancel is counted
//!   in `IN_FLIGHT`; subtrees under a near deadline, which the timer thread
//!   may be cancelling at any moment, only get an eventual check), and every
//!   pending `Done` future of a context done that way has been woken;
//! * `err()` and `cause()` never change once set, come from the same
//!   cancellation (a deadline error always with a deadline cause), and a
//!   context with no canceller of its own carries its parent's error and
//!   cause (API.md 3);
//! * values and deadlines are what the path to the root says;
//! * every after-func runs at most once, after its context is done, never on
//!   a soak thread, and iff `stop()` returned false (API.md 8);
//! * every on-done callback runs at most once, after its context is done,
//!   never after a `stop()` that returned true, and a `stop()` or drop of
//!   its guard that did not prevent it returns only once it has returned
//!   (API.md 14), whichever thread ran it (a canceller, the timer);
//! * timed waits never give up early and see a done context as done.
//!
//! At the end everything is stopped and dropped, and nothing is left: the
//! long-lived roots have no registered children, and every tracked value
//! (context values, after-func closures, cancel causes) has been dropped.
//!
//! Knobs: `GOCTX_SOAK_SECS` (default 3 s; under Miri 0.2 s and at least 60
//! operations per thread), `GOCTX_SOAK_THREADS` (default 6, 3 under Miri),
//! `GOCTX_SOAK_SEED` (seeds the threads' choices; the interleaving is the
//! scheduler's, so a seed does not replay a run). For hours:
//! `GOCTX_SOAK_SECS=3600 cargo test --release --test soak -- --nocapture`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use goctx::{AfterFunc, CancelCauseFunc, CancelFunc, Context, Done, Error};

mod support;

use support::identity::{CauseId, Tag, Tracked};
use support::rng::Rng;

const DEFAULT_SECS: f64 = if cfg!(miri) { 0.2 } else { 3.0 };
const DEFAULT_THREADS: usize = if cfg!(miri) { 3 } else { 6 };
/// Operations each thread does at least, whatever the time budget: Miri
/// runs a few dozen operations per second.
fn min_ops_per_thread() -> u64 {
    if cfg!(miri) { 60 } else { 0 }
}
const SLOTS: usize = if cfg!(miri) { 12 } else { 48 };
/// Derivations from a slot this deep start from a root instead.
const MAX_DEPTH: usize = 24;
/// Upper bound on anything that must happen "promptly" (a deadline firing,
/// a dispatched after-func running). Generous for sanitizers and valgrind;
/// only a failing run ever waits this long.
const GRACE: Duration = Duration::from_secs(120);
/// Near deadlines: 1 µs to 20 ms ahead.
const NEAR_MAX_MICROS: u64 = 20_000;
/// Far deadlines never fire during a soak.
const FAR: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Deadlines further than this ahead count as far.
const FAR_ENOUGH: Duration = Duration::from_secs(24 * 3600);

// ---------------------------------------------------------------------------
// Global bookkeeping.

/// Live `Tracked` values, per `What`.
static LIVE: LazyLock<[Arc<AtomicUsize>; 3]> = LazyLock::new(Default::default);
/// Explicit cancellations in progress (`cancel()` calls and guard drops).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Set when the time budget is over.
static STOP: AtomicBool = AtomicBool::new(false);
/// Set when a soak thread panicked: the others stop at once.
static FAILED: AtomicBool = AtomicBool::new(false);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// Problems found off the soak threads (inside after-funcs).
static VIOLATIONS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, SeqCst)
}

fn violation(msg: String) {
    eprintln!("soak violation: {msg}");
    lock(&VIOLATIONS).push(msg);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a `Tracked` value is part of.
#[derive(Clone, Copy, Debug)]
enum What {
    Value = 0,
    AfterFunc = 1,
    Cause = 2,
}

/// A value counted in `LIVE` as part of `what`.
fn tracked(what: What) -> Tracked {
    Tracked::new(0, &LIVE[what as usize])
}

fn live() -> [usize; 3] {
    [0, 1, 2].map(|i| LIVE[i].load(SeqCst))
}

/// The context value type.
#[derive(Debug)]
struct Val {
    id: u64,
    _tracked: Tracked,
}

/// A custom cause's id: odd if it was given to a deadline.
fn tag_id(deadline: bool) -> u64 {
    next_id() * 2 + u64::from(deadline)
}

/// Whether a cause can only come from a deadline expiry.
fn is_deadline(cause: CauseId) -> bool {
    match cause {
        CauseId::Canceled => false,
        CauseId::DeadlineExceeded => true,
        CauseId::Tag(id) => id % 2 == 1,
    }
}

// ---------------------------------------------------------------------------
// The forest.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Root,
    Cancel,
    CancelCause,
    Value,
    WithoutCancel,
    Deadline,
}

/// What the test knows about a context; shared by its clones.
struct Meta {
    id: u64,
    kind: Kind,
    /// The parent context and its meta (`None` for roots).
    parent: Option<(Context, Arc<Meta>)>,
    depth: usize,
    /// Can be cancelled other than by propagation from its parent (it had a
    /// canceller of its own, or a deadline timer).
    own_cancel: bool,
    /// Can never be done (a root without a node, `without_cancel` and its
    /// value layers).
    never_done: bool,
    /// This context or an ancestor may be cancelled by the timer thread at
    /// any moment (a near deadline armed on the path).
    near: bool,
    deadline: Option<Instant>,
    value: Option<u64>,
    /// The first `(err, cause)` anyone observed.
    seen: OnceLock<(Error, CauseId)>,
}

impl Meta {
    fn root(kind_never_done: bool, deadline: Option<Instant>, value: Option<u64>) -> Arc<Meta> {
        Arc::new(Meta {
            id: next_id(),
            kind: Kind::Root,
            parent: None,
            depth: 0,
            own_cancel: true,
            never_done: kind_never_done,
            near: false,
            deadline,
            value,
            seen: OnceLock::new(),
        })
    }
}

#[derive(Clone)]
enum Canceller {
    None,
    Plain(CancelFunc),
    Cause(CancelCauseFunc),
}

/// A `Done` future polled once and left pending, with the flag its waker
/// sets.
struct PendingPoll {
    fut: Done<'static>,
    flag: Arc<Flag>,
}

#[derive(Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, SeqCst);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, SeqCst);
    }
}

struct Entry {
    ctx: Context,
    meta: Arc<Meta>,
    cancel: Canceller,
    pending: Option<PendingPoll>,
}

/// A registered after-func whose handle is kept.
struct AfterRec {
    handle: AfterFunc,
    probe: Arc<Probe>,
    never_done: bool,
}

/// What an after-func did.
struct Probe {
    id: u64,
    ran: AtomicUsize,
    stopped: AtomicBool,
    /// Set at the end of the closure, after its checks.
    finished: AtomicBool,
}

struct Shared {
    roots: Vec<(Context, Arc<Meta>)>,
    slots: Vec<Mutex<Option<Entry>>>,
    afters: Mutex<Vec<AfterRec>>,
    /// After-funcs that must run (stop returned false, or the handle was
    /// dropped on a context with a near deadline), with when they are due.
    must_run: Mutex<Vec<(Arc<Probe>, Instant)>>,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    ops: AtomicU64,
    derived: AtomicU64,
    cancels: AtomicU64,
    checks: AtomicU64,
    strict_child_checks: AtomicU64,
    eventual_child_checks: AtomicU64,
    wake_checks: AtomicU64,
    waits: AtomicU64,
    timed_out_waits: AtomicU64,
    polls_pending: AtomicU64,
    afters: AtomicU64,
    stopped: AtomicU64,
    on_dones: AtomicU64,
    on_dones_stopped: AtomicU64,
    ran: AtomicU64,
    expired_seen: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, SeqCst);
}

// ---------------------------------------------------------------------------
// Checks.

/// Checks `ctx` against `meta`; `pending` is the entry's pending poll, if
/// any. Called with the entry's slot locked (or on a root).
fn check(shared: &Shared, ctx: &Context, meta: &Meta, pending: Option<&PendingPoll>) {
    bump(&shared.stats.checks);
    let id = meta.id;
    // Cause first: once a cause is seen, the error must be there too.
    let cause = ctx.cause().map(|c| CauseId::of(&c));
    let err = ctx.err();
    let done = ctx.is_done();
    if cause.is_some() {
        assert!(err.is_some(), "#{id}: cause {cause:?} without err");
    }
    if err.is_some() {
        assert!(done, "#{id}: err {err:?} but not is_done");
    }
    if let Some(err) = err {
        let cause = cause.unwrap_or_else(|| CauseId::of(&ctx.cause().expect("done has a cause")));
        assert_eq!(
            err == Error::DeadlineExceeded,
            is_deadline(cause),
            "#{id}: err {err:?} and cause {cause:?} from different cancellations"
        );
        let first = *meta.seen.get_or_init(|| (err, cause));
        assert_eq!(first, (err, cause), "#{id}: err/cause changed once set");
        if err == Error::DeadlineExceeded {
            bump(&shared.stats.expired_seen);
        }
    }
    if meta.never_done {
        assert!(!done, "#{id}: a context that can never be done is done");
        assert!(!ctx.done().wait_timeout(Duration::ZERO));
    }
    assert_eq!(ctx.deadline(), meta.deadline, "#{id}: deadline");
    assert_eq!(ctx.value::<Val>().map(|v| v.id), meta.value, "#{id}: value");

    if let Some((parent, pmeta)) = &meta.parent {
        // Without an own canceller, only the parent's cancellation reaches
        // this context, and it passes its error and cause on (API.md 3).
        if done && !meta.own_cancel {
            // Done: both are final now (re-read: `err` may predate `done`).
            let mine = (ctx.err(), ctx.cause().map(|c| CauseId::of(&c)));
            let perr = parent.err();
            let pcause = parent.cause().map(|c| CauseId::of(&c));
            assert_eq!(
                (perr, pcause),
                mine,
                "#{id} ({:?}) is done without a canceller of its own, unlike its parent #{}",
                meta.kind,
                pmeta.id
            );
        }
        if !meta.never_done && !pmeta.never_done {
            // API.md 2: a child of a done parent is done once no
            // cancellation of the subtree is still in progress.
            let parent_done = parent.is_done();
            let quiet = IN_FLIGHT.load(SeqCst) == 0;
            if parent_done && !pmeta.near {
                if quiet {
                    bump(&shared.stats.strict_child_checks);
                    assert!(
                        ctx.is_done(),
                        "#{id} ({:?}) not done although its parent #{} ({:?}) is and no \
                         cancellation is in flight",
                        meta.kind,
                        pmeta.id,
                        pmeta.kind
                    );
                }
            } else if parent_done {
                // The timer thread may still be propagating: eventually.
                bump(&shared.stats.eventual_child_checks);
                assert!(
                    ctx.done().wait_timeout(GRACE),
                    "#{id} not done {GRACE:?} after its parent #{} was",
                    pmeta.id
                );
            }
        }
    }

    if let Some(p) = pending {
        // A woken future's context is done; a context done by a finished
        // cancellation has woken every pending future.
        let woken = p.flag.0.load(SeqCst);
        if woken {
            assert!(ctx.is_done(), "#{id}: future woken but not done");
        }
        let done_now = ctx.is_done();
        let quiet = IN_FLIGHT.load(SeqCst) == 0;
        if done_now && quiet && !meta.near {
            bump(&shared.stats.wake_checks);
            assert!(
                p.flag.0.load(SeqCst),
                "#{id}: done, no cancellation in flight, but a pending future was not woken"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Operations.

/// A source to derive from: a slot's entry (cloned) or a root.
fn pick_source(shared: &Shared, rng: &mut Rng) -> (Context, Arc<Meta>) {
    if !rng.chance(25) {
        let slot = &shared.slots[rng.below(SLOTS)];
        if let Some(e) = lock(slot).as_ref()
            && e.meta.depth < MAX_DEPTH
        {
            return (e.ctx.clone(), Arc::clone(&e.meta));
        }
    }
    let (ctx, meta) = &shared.roots[rng.below(shared.roots.len())];
    (ctx.clone(), Arc::clone(meta))
}

fn min_deadline(a: Option<Instant>, b: Instant) -> Instant {
    a.map_or(b, |a| a.min(b))
}

fn derive(shared: &Shared, rng: &mut Rng) {
    let (parent, pmeta) = pick_source(shared, rng);
    let parent_done_before = parent.is_done();
    let pdl = pmeta.deadline;
    let mut own_cancel = true;
    let mut never_done = false;
    let mut near = pmeta.near;
    let mut deadline = pdl;
    let mut value = pmeta.value;
    let mut must_be_done = parent_done_before;
    let (kind, ctx, cancel) = match rng.below(20) {
        0..=4 => {
            let (ctx, cancel) = parent.with_cancel();
            if rng.chance(20) {
                own_cancel = false;
                (Kind::Cancel, ctx, Canceller::None)
            } else {
                (Kind::Cancel, ctx, Canceller::Plain(cancel))
            }
        }
        5..=7 => {
            let (ctx, cancel) = parent.with_cancel_cause();
            (Kind::CancelCause, ctx, Canceller::Cause(cancel))
        }
        8..=10 => {
            let id = next_id();
            let ctx = parent.with_value(Val {
                id,
                _tracked: tracked(What::Value),
            });
            value = Some(id);
            own_cancel = false;
            never_done = pmeta.never_done;
            (Kind::Value, ctx, Canceller::None)
        }
        11 => {
            must_be_done = false;
            never_done = true;
            near = false;
            deadline = None;
            own_cancel = false;
            (
                Kind::WithoutCancel,
                parent.without_cancel(),
                Canceller::None,
            )
        }
        12..=13 => {
            // Near: the timer thread fires it during the soak.
            let at = Instant::now() + rng.micros(NEAR_MAX_MICROS);
            let (ctx, cancel) = deadline_with_cause(&parent, at, rng);
            if pdl.is_none_or(|p| p > at) {
                near = true;
            }
            deadline = Some(min_deadline(pdl, at));
            (Kind::Deadline, ctx, keep_or_drop(cancel, rng))
        }
        14..=15 => {
            let at = Instant::now() + FAR + rng.micros(1_000_000);
            let (ctx, cancel) = deadline_with_cause(&parent, at, rng);
            deadline = Some(min_deadline(pdl, at));
            (Kind::Deadline, ctx, keep_or_drop(cancel, rng))
        }
        16 => {
            // Past: done before the call returns, unless the parent's
            // deadline comes first (then it is a plain `with_cancel`).
            let at = Instant::now()
                .checked_sub(rng.micros(1000))
                .unwrap_or_else(Instant::now);
            let (ctx, cancel) = deadline_with_cause(&parent, at, rng);
            if pdl.is_none_or(|p| p > at) {
                must_be_done = true;
                let err = ctx.err();
                assert!(err.is_some(), "a past deadline is done at once");
                if err != Some(Error::DeadlineExceeded) {
                    assert!(
                        parent.is_done(),
                        "past deadline: {err:?} without a done parent"
                    );
                }
            }
            deadline = Some(min_deadline(pdl, at));
            (Kind::Deadline, ctx, keep_or_drop(cancel, rng))
        }
        17 => {
            // Overflowing timeout: no deadline of its own, never a panic.
            let (ctx, cancel) = parent.with_timeout(Duration::MAX);
            (Kind::Cancel, ctx, Canceller::Plain(cancel))
        }
        _ => {
            let t = rng.micros(NEAR_MAX_MICROS);
            let before = Instant::now();
            let (ctx, cancel) = if rng.chance(50) {
                parent.with_timeout(t)
            } else {
                parent.with_timeout_cause(t, soak_deadline_cause())
            };
            let after = Instant::now();
            let got = ctx.deadline().expect("with_timeout has a deadline");
            if pdl != Some(got) {
                assert!(
                    got >= before + t && got <= after + t,
                    "with_timeout({t:?}) gave a deadline outside the call"
                );
                near = true;
            }
            deadline = Some(got);
            (Kind::Deadline, ctx, keep_or_drop(cancel, rng))
        }
    };
    if kind == Kind::Deadline && matches!(cancel, Canceller::None) {
        // Its timer can still cancel it: only `near` ones really can, but
        // a deadline node is never "propagation only".
        own_cancel = true;
    }
    if kind == Kind::Cancel && matches!(cancel, Canceller::None) {
        own_cancel = false;
    }
    if must_be_done && kind != Kind::WithoutCancel {
        assert!(
            ctx.is_done(),
            "a {kind:?} derived from a done parent #{} is not done when the derivation returns",
            pmeta.id
        );
    }
    let meta = Arc::new(Meta {
        id: next_id(),
        kind,
        depth: pmeta.depth + 1,
        own_cancel,
        never_done,
        near,
        deadline,
        value,
        seen: OnceLock::new(),
        parent: Some((parent, pmeta)),
    });
    let entry = Entry {
        ctx,
        meta,
        cancel,
        pending: None,
    };
    check(shared, &entry.ctx, &entry.meta, None);
    bump(&shared.stats.derived);
    let slot = &shared.slots[rng.below(SLOTS)];
    let old = lock(slot).replace(entry);
    drop(old);
}

fn soak_deadline_cause() -> Tag {
    // A deadline's cause lives in the node until the timer lets go of it
    // (possibly far later): not tracked.
    Tag::new(tag_id(true))
}

fn deadline_with_cause(parent: &Context, at: Instant, rng: &mut Rng) -> (Context, CancelFunc) {
    if rng.chance(40) {
        parent.with_deadline_cause(at, soak_deadline_cause())
    } else {
        parent.with_deadline(at)
    }
}

fn keep_or_drop(cancel: CancelFunc, rng: &mut Rng) -> Canceller {
    if rng.chance(70) {
        Canceller::Plain(cancel)
    } else {
        Canceller::None
    }
}

fn cancel(shared: &Shared, rng: &mut Rng) {
    let slot = &shared.slots[rng.below(SLOTS)];
    let Some((ctx, meta, cancel)) = lock(slot)
        .as_ref()
        .map(|e| (e.ctx.clone(), Arc::clone(&e.meta), e.cancel.clone()))
    else {
        return;
    };
    IN_FLIGHT.fetch_add(1, SeqCst);
    match &cancel {
        Canceller::None => {}
        Canceller::Plain(c) => c.cancel(),
        Canceller::Cause(c) => {
            if rng.chance(20) {
                c.cancel(Error::Canceled);
            } else {
                c.cancel(Tag {
                    id: tag_id(false),
                    tracked: Some(tracked(What::Cause)),
                });
            }
        }
    }
    if !matches!(cancel, Canceller::None) {
        // No caveat for the context itself (API.md 2).
        assert!(ctx.is_done(), "#{}: cancel() returned, not done", meta.id);
        bump(&shared.stats.cancels);
    }
    IN_FLIGHT.fetch_sub(1, SeqCst);
}

/// Takes an entry out and cancels it through a guard (Go's `defer
/// cancel()`), or gives the guard back.
fn guard_drop(shared: &Shared, rng: &mut Rng) {
    let slot = &shared.slots[rng.below(SLOTS)];
    let mut guard = lock(slot);
    let Some(Entry {
        cancel: Canceller::Plain(_),
        ..
    }) = guard.as_ref()
    else {
        return;
    };
    let entry = guard.take().expect("checked");
    drop(guard);
    let Canceller::Plain(cancel) = entry.cancel else {
        unreachable!()
    };
    let g = cancel.guard();
    if rng.chance(20) {
        // Disarmed: back in a slot, not cancelled by us.
        let cancel = g.disarm();
        *lock(slot) = Some(Entry {
            cancel: Canceller::Plain(cancel),
            ..entry
        });
        return;
    }
    IN_FLIGHT.fetch_add(1, SeqCst);
    drop(g);
    assert!(
        entry.ctx.is_done(),
        "#{}: guard dropped, not done",
        entry.meta.id
    );
    IN_FLIGHT.fetch_sub(1, SeqCst);
    bump(&shared.stats.cancels);
}

fn drop_slot(shared: &Shared, rng: &mut Rng) {
    let old = lock(&shared.slots[rng.below(SLOTS)]).take();
    drop(old);
}

fn copy_slot(shared: &Shared, rng: &mut Rng) {
    let copy = lock(&shared.slots[rng.below(SLOTS)])
        .as_ref()
        .map(|e| Entry {
            ctx: e.ctx.clone(),
            meta: Arc::clone(&e.meta),
            cancel: e.cancel.clone(),
            pending: None,
        });
    if let Some(copy) = copy {
        let old = lock(&shared.slots[rng.below(SLOTS)]).replace(copy);
        drop(old);
    }
}

fn check_slot(shared: &Shared, rng: &mut Rng) {
    if rng.chance(10) {
        let (ctx, meta) = &shared.roots[rng.below(shared.roots.len())];
        assert!(!ctx.is_done(), "a long-lived root is done");
        check(shared, ctx, meta, None);
        return;
    }
    let guard = lock(&shared.slots[rng.below(SLOTS)]);
    if let Some(e) = guard.as_ref() {
        check(shared, &e.ctx, &e.meta, e.pending.as_ref());
    }
}

fn wait(shared: &Shared, rng: &mut Rng) {
    let (ctx, meta) = pick_source(shared, rng);
    let done = ctx.done();
    bump(&shared.stats.waits);
    let near_deadline = meta
        .deadline
        .filter(|&d| d < Instant::now() + FAR_ENOUGH && !meta.never_done);
    match (rng.below(4), near_deadline) {
        (3, Some(at)) => {
            // Its deadline fires (or something cancels it sooner).
            assert!(
                done.wait_deadline(at + GRACE),
                "#{}: not done {GRACE:?} after its deadline",
                meta.id
            );
            assert!(ctx.err().is_some());
        }
        (choice, _) => {
            let limit = match choice {
                0 => Duration::ZERO,
                _ => rng.micros(300),
            };
            let was_done = ctx.is_done();
            let start = Instant::now();
            let r = if choice == 2 {
                done.wait_deadline(start + limit)
            } else {
                done.wait_timeout(limit)
            };
            let elapsed = start.elapsed();
            if was_done {
                assert!(r, "#{}: wait on a done context timed out", meta.id);
            }
            if r {
                assert!(ctx.is_done(), "#{}: wait returned true, not done", meta.id);
            } else {
                bump(&shared.stats.timed_out_waits);
                assert!(
                    elapsed >= limit,
                    "#{}: wait gave up after {elapsed:?}, before its {limit:?}",
                    meta.id
                );
            }
            if meta.never_done {
                assert!(!r, "#{}: a never-done context's wait succeeded", meta.id);
            }
        }
    }
}

fn poll(shared: &Shared, rng: &mut Rng) {
    let mut guard = lock(&shared.slots[rng.below(SLOTS)]);
    let Some(e) = guard.as_mut() else { return };
    // Re-poll the pending future with a fresh waker, or start a new one
    // (dropping the old: its waiter entry is withdrawn).
    let mut p = match e.pending.take() {
        Some(p) if rng.chance(50) => p,
        _ => PendingPoll {
            fut: e.ctx.done_owned(),
            flag: Arc::default(),
        },
    };
    p.flag = Arc::default();
    let waker = Waker::from(Arc::clone(&p.flag));
    match Pin::new(&mut p.fut).poll(&mut TaskContext::from_waker(&waker)) {
        Poll::Ready(()) => {
            assert!(e.ctx.is_done(), "#{}: Done ready, not done", e.meta.id)
        }
        Poll::Pending => {
            bump(&shared.stats.polls_pending);
            e.pending = Some(p);
        }
    }
}

fn register_after(shared: &Shared, rng: &mut Rng) {
    let (ctx, meta) = pick_source(shared, rng);
    let probe = Arc::new(Probe {
        id: next_id(),
        ran: AtomicUsize::new(0),
        stopped: AtomicBool::new(false),
        finished: AtomicBool::new(false),
    });
    let f = {
        let probe = Arc::clone(&probe);
        let done = ctx.done_owned();
        let tracked = tracked(What::AfterFunc);
        move || {
            let _tracked = tracked;
            let id = probe.id;
            // `ran` before `stopped`, as `stop_one` stores `stopped` before
            // reading `ran` (SeqCst both): one of the two sees the other.
            if probe.ran.fetch_add(1, SeqCst) != 0 {
                violation(format!("after-func {id} ran twice"));
            }
            if probe.stopped.load(SeqCst) {
                violation(format!("after-func {id} ran after stop() returned true"));
            }
            if !done.is_done() {
                violation(format!("after-func {id} ran before its context was done"));
            }
            if thread::current()
                .name()
                .is_some_and(|n| n.starts_with("soak-"))
            {
                violation(format!("after-func {id} ran on a soak thread"));
            }
            probe.finished.store(true, SeqCst);
        }
    };
    let handle = ctx.after_func(f);
    bump(&shared.stats.afters);
    if meta.near && !meta.never_done && rng.chance(30) {
        // Fire and forget: the timer will cancel it, so it must run.
        let due = meta.deadline.expect("near has a deadline");
        drop(handle);
        lock(&shared.must_run).push((probe, due));
    } else {
        lock(&shared.afters).push(AfterRec {
            handle,
            probe,
            never_done: meta.never_done,
        });
    }
}

fn stop_one(shared: &Shared, rec: AfterRec) {
    let AfterRec {
        handle,
        probe,
        never_done,
    } = rec;
    let stopped = handle.stop();
    if stopped {
        probe.stopped.store(true, SeqCst);
        assert_eq!(
            probe.ran.load(SeqCst),
            0,
            "after-func {}: stop() returned true but it ran",
            probe.id
        );
        bump(&shared.stats.stopped);
    } else {
        assert!(
            !never_done,
            "after-func {}: stop() false on a never-done context",
            probe.id
        );
        lock(&shared.must_run).push((probe, Instant::now()));
    }
    assert!(!handle.stop(), "a second stop() returned true");
}

fn stop_after(shared: &Shared, rng: &mut Rng) {
    let rec = {
        let mut afters = lock(&shared.afters);
        if afters.is_empty() {
            return;
        }
        let i = rng.below(afters.len());
        afters.swap_remove(i)
    };
    stop_one(shared, rec);
}

/// Registers an on-done callback on a random context, then stops it or
/// drops its guard at once, while other threads (and the timer) cancel.
fn on_done_stop(shared: &Shared, rng: &mut Rng) {
    let (ctx, meta) = pick_source(shared, rng);
    let probe = Arc::new(Probe {
        id: next_id(),
        ran: AtomicUsize::new(0),
        stopped: AtomicBool::new(false),
        finished: AtomicBool::new(false),
    });
    let f = {
        let probe = Arc::clone(&probe);
        let done = ctx.done_owned();
        move || {
            let id = probe.id;
            if probe.ran.fetch_add(1, SeqCst) != 0 {
                violation(format!("on-done {id} ran twice"));
            }
            if probe.stopped.load(SeqCst) {
                violation(format!("on-done {id} ran after stop() returned true"));
            }
            if !done.is_done() {
                violation(format!("on-done {id} ran before its context was done"));
            }
            // A window for a stop on another thread to wait in.
            thread::yield_now();
            probe.finished.store(true, SeqCst);
        }
    };
    let on_done = ctx.on_done(f);
    bump(&shared.stats.on_dones);
    if rng.chance(50) {
        thread::yield_now();
    }
    let id = probe.id;
    if rng.chance(50) {
        if on_done.stop() {
            probe.stopped.store(true, SeqCst);
            bump(&shared.stats.on_dones_stopped);
            assert_eq!(
                probe.ran.load(SeqCst),
                0,
                "on-done {id}: stop() true but it ran"
            );
        } else {
            assert!(
                !meta.never_done,
                "on-done {id}: stop() false on a never-done context"
            );
            assert!(
                probe.finished.load(SeqCst),
                "on-done {id}: stop() returned false before f returned"
            );
        }
        assert!(
            !on_done.stop(),
            "on-done {id}: a second stop() returned true"
        );
    } else {
        drop(on_done);
        assert!(
            probe.ran.load(SeqCst) == 0 || probe.finished.load(SeqCst),
            "on-done {id}: the guard's drop returned before f returned"
        );
    }
}

/// Drops the after-funcs that ran; fails on one overdue.
fn reap(shared: &Shared) {
    let now = Instant::now();
    let mut must_run = lock(&shared.must_run);
    must_run.retain(|(probe, due)| {
        if probe.finished.load(SeqCst) {
            bump(&shared.stats.ran);
            return false;
        }
        assert!(
            now < *due + GRACE,
            "after-func {} did not run {GRACE:?} after it was due",
            probe.id
        );
        true
    });
}

fn display(shared: &Shared, rng: &mut Rng) {
    let (ctx, _) = pick_source(shared, rng);
    let s = ctx.to_string();
    assert!(
        s.starts_with("context.Background") || s.starts_with("context.TODO"),
        "{s}"
    );
}

fn soak_thread(shared: &Shared, seed: u64) {
    /// Stops the others early when this thread panics.
    struct StopOnPanic;
    impl Drop for StopOnPanic {
        fn drop(&mut self) {
            if thread::panicking() {
                FAILED.store(true, SeqCst);
            }
        }
    }
    let _stop = StopOnPanic;
    let mut rng = Rng(seed);
    let mut ops = 0;
    let keep_going =
        |ops: u64| !FAILED.load(SeqCst) && (!STOP.load(SeqCst) || ops < min_ops_per_thread());
    while keep_going(ops) {
        ops += 1;
        bump(&shared.stats.ops);
        match rng.below(100) {
            0..=29 => derive(shared, &mut rng),
            30..=39 => cancel(shared, &mut rng),
            40..=41 => guard_drop(shared, &mut rng),
            42..=49 => drop_slot(shared, &mut rng),
            50..=53 => copy_slot(shared, &mut rng),
            54..=71 => check_slot(shared, &mut rng),
            72..=78 => wait(shared, &mut rng),
            79..=80 => on_done_stop(shared, &mut rng),
            81..=85 => poll(shared, &mut rng),
            86..=91 => register_after(shared, &mut rng),
            92..=97 => stop_after(shared, &mut rng),
            98 => reap(shared),
            _ => display(shared, &mut rng),
        }
    }
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} does not parse")),
    )
}

#[test]
fn randomized_soak() {
    let secs: f64 = env("GOCTX_SOAK_SECS").unwrap_or(DEFAULT_SECS);
    let threads: usize = env("GOCTX_SOAK_THREADS").unwrap_or(DEFAULT_THREADS);
    let seed: u64 = env("GOCTX_SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64
    });
    eprintln!("soak: {secs} s, {threads} threads, seed {seed} (GOCTX_SOAK_SEED)");
    let start = Instant::now();

    // The long-lived roots.
    let (r_cancel, r_cancel_fn) = Context::background().with_cancel();
    let (r_cause, r_cause_fn) = Context::background().with_cancel_cause();
    let r_cause_val = next_id();
    let r_cause = r_cause.with_value(Val {
        id: r_cause_val,
        _tracked: tracked(What::Value),
    });
    let far = Instant::now() + FAR;
    let (r_far, r_far_fn) = Context::background().with_deadline(far);
    let r_wo = r_cancel.without_cancel();
    let todo_val = next_id();
    let r_todo = Context::todo().with_value(Val {
        id: todo_val,
        _tracked: tracked(What::Value),
    });
    let roots = vec![
        (Context::background(), Meta::root(true, None, None)),
        (r_todo, Meta::root(true, None, Some(todo_val))),
        (r_cancel.clone(), Meta::root(false, None, None)),
        (r_cause.clone(), Meta::root(false, None, Some(r_cause_val))),
        (r_far.clone(), Meta::root(false, Some(far), None)),
        (r_wo, Meta::root(true, None, None)),
    ];
    let shared = Arc::new(Shared {
        roots,
        slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
        afters: Mutex::new(Vec::new()),
        must_run: Mutex::new(Vec::new()),
        stats: Stats::default(),
    });

    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let shared = Arc::clone(&shared);
            let seed = seed.wrapping_add((t as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            thread::Builder::new()
                .name(format!("soak-{t}"))
                .spawn(move || soak_thread(&shared, seed))
                .expect("spawn")
        })
        .collect();
    let budget = Duration::from_secs_f64(secs);
    while start.elapsed() < budget && !FAILED.load(SeqCst) {
        thread::sleep(Duration::from_millis(10).min(budget));
    }
    STOP.store(true, SeqCst);
    let mut panicked = None;
    for w in workers {
        if let Err(e) = w.join() {
            panicked.get_or_insert(e);
        }
    }
    if let Some(e) = panicked {
        std::panic::resume_unwind(e);
    }
    let work = start.elapsed();

    // Quiescent now: check everything once more, stop every after-func and
    // wait for those that must run.
    for slot in &shared.slots {
        if let Some(e) = lock(slot).as_ref() {
            check(&shared, &e.ctx, &e.meta, e.pending.as_ref());
        }
    }
    for rec in std::mem::take(&mut *lock(&shared.afters)) {
        stop_one(&shared, rec);
    }
    while !lock(&shared.must_run).is_empty() {
        reap(&shared);
        thread::sleep(Duration::from_millis(1));
    }

    // Drop everything: nothing may stay registered with the roots.
    for slot in &shared.slots {
        let old = lock(slot).take();
        drop(old);
    }
    for (ctx, name) in [(&r_cancel, "cancel"), (&r_cause, "cause"), (&r_far, "far")] {
        assert!(!ctx.is_done(), "root {name} is done");
        let linked = ctx.linked_children();
        eprintln!("soak: root {name}: {linked} children still linked after dropping everything");
        assert_eq!(
            ctx.registered_children(),
            0,
            "root {name}: children still registered after everything was dropped"
        );
        assert!(linked < 1000, "root {name}: {linked} children still linked");
    }
    let violations = std::mem::take(&mut *lock(&VIOLATIONS));
    assert!(violations.is_empty(), "{violations:#?}");

    // The roots still work, then go too.
    let (child, child_cancel) = r_cause.with_cancel();
    r_cause_fn.cancel(Error::Canceled);
    assert!(child.is_done());
    r_cancel_fn.cancel();
    r_far_fn.cancel();
    drop((child, child_cancel, r_cancel, r_cause, r_far));
    drop(shared);

    // Every tracked value is dropped; after-func closures are dropped on
    // their worker right after running, so allow them a moment.
    let since = Instant::now();
    while live() != [0; 3] && since.elapsed() < GRACE {
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        live(),
        [0; 3],
        "tracked values leaked: [context values, after-func closures, cancel causes]"
    );
    eprintln!("soak: {work:?} of work, {:?} in all", start.elapsed());
}

/// Prints the counters (on the way out, pass or fail).
impl Drop for Shared {
    fn drop(&mut self) {
        let s = &self.stats;
        let g = |c: &AtomicU64| c.load(SeqCst);
        eprintln!(
            "soak: {} ops: {} derived, {} cancels, {} checks ({} strict child checks, {} \
             eventual, {} wake checks), {} waits ({} timed out), {} pending polls, {} \
             after-funcs ({} stopped, {} ran), {} on-dones ({} stopped), {} deadline \
             expiries seen",
            g(&s.ops),
            g(&s.derived),
            g(&s.cancels),
            g(&s.checks),
            g(&s.strict_child_checks),
            g(&s.eventual_child_checks),
            g(&s.wake_checks),
            g(&s.waits),
            g(&s.timed_out_waits),
            g(&s.polls_pending),
            g(&s.afters),
            g(&s.stopped),
            g(&s.ran),
            g(&s.on_dones),
            g(&s.on_dones_stopped),
            g(&s.expired_seen),
        );
    }
}
