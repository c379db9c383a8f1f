//! Exact allocation counts of the public API (lib.rs "Cost model", API.md
//! "Types": roots allocate nothing, one allocation per derived context,
//! deadline contexts included — with a cold node cache, and none with a
//! warm one, `cancel()` allocates nothing, untimed waits
//! allocate nothing once the thread has waited before, an after-func is at
//! most one allocation and stopping it none; API.md rule 13: `done()` and a
//! `select!`-loop iteration on it allocate nothing in steady state).
//!
//! The counting allocator counts only allocations made by the thread that
//! is inside [`count`], so tests running in parallel, helper threads and the
//! test harness never disturb a measurement.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::{Arc, Barrier, mpsc};
use std::task::{Context as TaskContext, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use goctx::{Context, Done, Error};

/// Counts allocations (including reallocations) of the current thread while
/// its `ENABLED` flag is set.
struct ThreadCounting;

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn note_alloc() {
    // `const` thread-locals of `Cell<_>` (no destructor) never allocate or
    // register anything; `try_with` keeps thread teardown safe anyway.
    let _ = ENABLED.try_with(|enabled| {
        if enabled.get() {
            let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments; the
// counting touches only `const` thread-locals and never allocates.
unsafe impl GlobalAlloc for ThreadCounting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: forwarded from the caller.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: forwarded from the caller.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc();
        // SAFETY: forwarded from the caller.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the caller.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: ThreadCounting = ThreadCounting;

/// Runs `f` and returns its result with the number of allocations the
/// current thread made during it. The result is dropped by the caller,
/// outside the counted region.
fn count<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = ALLOCS.with(Cell::get);
    ENABLED.with(|e| e.set(true));
    let r = std::hint::black_box(f());
    ENABLED.with(|e| e.set(false));
    (r, ALLOCS.with(Cell::get) - before)
}

/// Asserts that `f` makes exactly `expected` allocations on this thread.
#[track_caller]
fn assert_allocs<R>(what: &str, expected: usize, f: impl FnOnce() -> R) -> R {
    let (r, n) = count(f);
    assert_eq!(n, expected, "{what}: {n} allocations, expected {expected}");
    r
}

/// One-time per-thread costs that are not the operation under test:
/// `std::thread::current()`, the thread's cached waiter entry, crossbeam-epoch's
/// thread-local handle (registered on the first pin: a cleanup pass of a
/// child list pins), and the library's own thread-locals.
fn warm_up() {
    let _ = thread::current();
    // A derive/cancel/wait cycle with a blocking wait that really parks.
    let (ctx, cancel) = Context::background().with_cancel();
    let (child, _child_cancel) = ctx.with_cancel();
    let canceller = thread::spawn(move || {
        thread::sleep(Duration::from_millis(2));
        cancel.cancel();
    });
    child.done().wait();
    canceller.join().unwrap();
    assert!(child.is_done());
    // A timed wait that times out, then an untimed one on a done context.
    let (ctx, cancel) = Context::background().with_cancel();
    assert!(!ctx.done().wait_timeout(Duration::from_micros(10)));
    cancel.cancel();
    ctx.done().wait();
    // Enough dropped children to run a cleanup pass (which pins the epoch).
    let (parent, _cancel) = Context::background().with_cancel();
    for _ in 0..256 {
        drop(parent.with_cancel());
    }
    assert_eq!(parent.registered_children(), 0);
}

/// goctx keeps freed nodes of each layout per thread (its node cache,
/// `src/node_cache.rs`: 64 at first, up to 1024 when the thread's churn
/// needs them), and a derivation takes its node from there before it asks
/// the allocator. Holding more live contexts of each layout than the cache
/// can hold empties it, so the counts that follow are those of a cold
/// cache: one allocation per derivation. (Hold the result.)
fn empty_node_cache() -> Vec<(Context, goctx::CancelFunc)> {
    // Under miri nodes bypass the cache (there is nothing to empty), and
    // 2200 derivations there take minutes.
    let held = if cfg!(miri) { 1 } else { 1100 };
    let bg = Context::background();
    (0..held)
        .flat_map(|_| [bg.with_cancel(), bg.with_timeout(Duration::from_secs(3600))])
        .collect()
}

#[derive(Debug, PartialEq)]
struct RequestId(u64);

#[derive(Debug, PartialEq)]
struct Other(u32);

#[test]
fn roots_allocate_nothing() {
    warm_up();
    let bg = assert_allocs("background()", 0, Context::background);
    let todo = assert_allocs("todo()", 0, Context::todo);
    let default = assert_allocs("Context::default()", 0, Context::default);
    assert_allocs("background().clone()", 0, || bg.clone());
    assert_allocs("todo().clone()", 0, || todo.clone());
    assert_allocs("root checks", 0, || {
        assert!(!bg.is_done());
        assert_eq!(todo.err(), None);
        assert!(default.cause().is_none());
        assert!(bg.value::<RequestId>().is_none());
        let done = bg.done();
        assert!(!done.is_done());
        drop(done);
        assert_eq!(bg.deadline(), None);
    });
    assert_allocs("dropping roots", 0, || drop((bg, todo, default)));
}

/// The warm side of `empty_node_cache`: a node freed on this thread is
/// reused by its next derivation of the same layout, without the allocator
/// (with_cancel, with_timeout, and a merge, which is a plain node here).
#[test]
#[cfg(not(any(miri, goctx_no_node_cache)))] // the cache is compiled out there
fn a_warm_node_cache_serves_derivations_without_allocating() {
    warm_up_deadlines();
    let bg = Context::background();
    drop(bg.with_cancel());
    drop(assert_allocs(
        "with_cancel() after one was dropped",
        0,
        || bg.with_cancel(),
    ));
    let (ctx, cancel) = bg.with_cancel();
    drop(bg.with_cancel());
    drop(assert_allocs(
        "merge() after a with_cancel() was dropped",
        0,
        || ctx.merge(&bg),
    ));
    // A deadline node's memory is freed once the timer's list lets go of
    // it too (its cleanup, amortised): free enough of them for that.
    let timeout = Duration::from_secs(3600);
    drop(
        (0..64)
            .map(|_| bg.with_timeout(timeout))
            .collect::<Vec<_>>(),
    );
    drop(assert_allocs(
        "with_timeout() after many were dropped",
        0,
        || bg.with_timeout(timeout),
    ));
    drop((ctx, cancel));
}

#[test]
fn derivations_allocate_once() {
    warm_up();
    let _cold = empty_node_cache();
    let bg = Context::background();

    let (a, cancel_a) = assert_allocs("background().with_cancel()", 1, || bg.with_cancel());
    let (b, cancel_b) = assert_allocs("with_cancel() on a cancellable parent", 1, || {
        a.with_cancel()
    });
    assert_eq!(a.registered_children(), 1);
    let (c, cancel_c) = assert_allocs("with_cancel_cause() on a cancellable parent", 1, || {
        a.with_cancel_cause()
    });
    assert_eq!(a.registered_children(), 2);
    let (d, _cancel_d) = assert_allocs("background().with_cancel_cause()", 1, || {
        bg.with_cancel_cause()
    });
    let v = assert_allocs("with_value()", 1, || b.with_value(RequestId(7)));
    let v_root = assert_allocs("background().with_value()", 1, || bg.with_value(Other(1)));
    let w = assert_allocs("without_cancel()", 1, || v.without_cancel());
    let w_root = assert_allocs("background().without_cancel()", 1, || bg.without_cancel());
    let (under_value, _cancel_uv) =
        assert_allocs("with_cancel() under a value", 1, || v.with_cancel());
    assert_eq!(b.registered_children(), 1);
    let (under_w, _cancel_uw) =
        assert_allocs("with_cancel() under without_cancel", 1, || w.with_cancel());
    assert_allocs("clone() of derived contexts and handles", 0, || {
        (
            a.clone(),
            v.clone(),
            w.clone(),
            cancel_a.clone(),
            cancel_c.clone(),
        )
    });

    // Deriving from a parent that is already done: still one allocation.
    cancel_b.cancel();
    let (e, _cancel_e) = assert_allocs("with_cancel() on a done parent", 1, || b.with_cancel());
    assert!(e.is_done());
    cancel_c.cancel(Error::Canceled);
    drop((a, c, d, v_root, w_root, under_value, under_w, e));
}

#[test]
fn cancel_allocates_nothing() {
    warm_up();
    // A leaf.
    let (leaf, cancel) = Context::background().with_cancel();
    assert_allocs("cancel() of a leaf", 0, || cancel.cancel());
    assert_allocs("second cancel() of a leaf", 0, || cancel.cancel());
    assert_eq!(leaf.err(), Some(Error::Canceled));

    // A registered leaf under a live parent.
    let (parent, _parent_cancel) = Context::background().with_cancel();
    let (child, child_cancel) = parent.with_cancel();
    assert_allocs("cancel() of a registered child", 0, || {
        child_cancel.cancel()
    });
    assert!(child.is_done());
    assert!(!parent.is_done());
    assert_eq!(parent.registered_children(), 0);

    // CancelCauseFunc with a plain Error cause (stored inline).
    let (ctx, cancel) = Context::background().with_cancel_cause();
    let (below, _below_cancel) = ctx.with_cancel();
    assert_allocs(
        "CancelCauseFunc::cancel(Error::DeadlineExceeded)",
        0,
        || cancel.cancel(Error::DeadlineExceeded),
    );
    assert_eq!(ctx.err(), Some(Error::Canceled));
    let cause = assert_allocs("cause() (inline Error)", 0, || below.cause());
    assert_eq!(
        cause.unwrap().downcast_ref::<Error>(),
        Some(&Error::DeadlineExceeded)
    );
    assert_allocs("CancelCauseFunc::cancel(Error::Canceled) again", 0, || {
        cancel.cancel(Error::Canceled)
    });
}

#[test]
fn cancel_of_a_tree_with_a_blocked_waiter_allocates_nothing() {
    warm_up();
    let (root, cancel) = Context::background().with_cancel();
    let mut tree = Vec::new();
    for i in 0..4 {
        let (child, child_cancel) = root.with_cancel();
        let child = if i % 2 == 0 {
            child.with_value(RequestId(i))
        } else {
            child
        };
        for _ in 0..3 {
            let (grandchild, grandchild_cancel) = child.with_cancel();
            tree.push((grandchild, Some(grandchild_cancel)));
        }
        tree.push((child, Some(child_cancel)));
    }
    // A detached branch that must stay running.
    let detached = root.without_cancel();
    let (detached_child, _detached_cancel) = detached.with_cancel();
    assert_eq!(root.registered_children(), 4);

    // Blocked waiters: on the root, on a grandchild, and an async-free
    // timed wait that would run for a minute.
    let start = Arc::new(Barrier::new(4));
    let waiters: Vec<_> = [
        root.done_owned(),
        tree[0].0.done_owned(),
        tree[tree.len() - 1].0.done_owned(),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, done)| {
        let start = Arc::clone(&start);
        thread::spawn(move || {
            start.wait();
            if i == 2 {
                assert!(done.wait_timeout(Duration::from_secs(60)));
            } else {
                done.wait();
            }
        })
    })
    .collect();
    start.wait();
    // Give the waiters time to park (the count is the canceller's either
    // way; this makes `cancel()` take the wake-up path).
    thread::sleep(Duration::from_millis(50));

    assert_allocs("cancel() of a tree with blocked waiters", 0, || {
        cancel.cancel()
    });
    // Every descendant is done when cancel() returns, and the waiters were
    // woken.
    for (ctx, _) in &tree {
        assert_eq!(ctx.err(), Some(Error::Canceled));
    }
    assert!(!detached.is_done());
    assert!(!detached_child.is_done());
    for waiter in waiters {
        waiter.join().unwrap();
    }
    // Cancelling cancelled descendants again allocates nothing either.
    assert_allocs("cancel() of already-cancelled descendants", 0, || {
        for (_, cancel) in &tree {
            cancel.as_ref().unwrap().cancel();
        }
    });
    // Dropping the whole cancelled tree allocates nothing.
    assert_allocs("dropping a cancelled tree", 0, || {
        drop(tree);
        drop(root);
    });
}

#[test]
fn queries_allocate_nothing() {
    warm_up();
    let (ctx, cancel) = Context::background().with_cancel();
    let ctx = ctx.with_value(RequestId(42));
    let (leaf, _leaf_cancel) = ctx.with_cancel();
    let detached = leaf.without_cancel();
    for stage in ["running", "cancelled"] {
        assert_allocs(&format!("queries ({stage})"), 0, || {
            let _ = std::hint::black_box(leaf.is_done());
            let _ = std::hint::black_box(leaf.err());
            let _ = std::hint::black_box(ctx.is_done());
            let _ = std::hint::black_box(detached.is_done());
            let _ = std::hint::black_box(detached.err());
            assert!(detached.cause().is_none());
            assert_eq!(leaf.value::<RequestId>(), Some(&RequestId(42)));
            assert_eq!(detached.value::<RequestId>(), Some(&RequestId(42)));
            assert_eq!(leaf.value::<Other>(), None);
            let done = leaf.done();
            let _ = std::hint::black_box(done.is_done());
            let done2 = done.clone();
            drop(done);
            drop(done2);
            let never = detached.done();
            assert!(!never.is_done());
        });
        cancel.cancel();
    }
    let cause = assert_allocs("cause() (inline Error)", 0, || leaf.cause());
    assert_eq!(
        cause.unwrap().downcast_ref::<Error>(),
        Some(&Error::Canceled)
    );
    assert_allocs("err()/is_done() when done", 0, || {
        assert_eq!(leaf.err(), Some(Error::Canceled));
        assert!(ctx.is_done());
    });
}

#[test]
fn dropping_allocates_nothing() {
    warm_up();
    // A leaf under background, never cancelled.
    let (leaf, cancel) = Context::background().with_cancel();
    assert_allocs("dropping a leaf and its CancelFunc", 0, || {
        drop((leaf, cancel))
    });

    // A child registered under a live parent.
    let (parent, parent_cancel) = Context::background().with_cancel();
    let (child, child_cancel) = parent.with_cancel();
    assert_eq!(parent.registered_children(), 1);
    assert_allocs("dropping a registered child", 0, || {
        drop((child, child_cancel))
    });
    assert_eq!(parent.registered_children(), 0);
    assert!(!parent.is_done());

    // A child with a Done handle and a value layer, dropped piecewise.
    let (child, child_cancel) = parent.with_cancel_cause();
    let done = child.done_owned();
    let valued = child.with_value(Other(3));
    assert_allocs("dropping a child, its Done and value layer", 0, || {
        drop(child);
        drop(child_cancel);
        drop(valued);
        drop(done);
    });
    assert_eq!(parent.registered_children(), 0);

    // A cancelled leaf.
    let (leaf, cancel) = parent.with_cancel();
    cancel.cancel();
    assert_allocs("dropping a cancelled child", 0, || drop((leaf, cancel)));

    // The parent's last handles, one of them through a without_cancel
    // layer: frees the parent.
    let w = parent.without_cancel();
    assert_allocs("dropping a live parent via its last handles", 0, || {
        drop(parent);
        drop(parent_cancel);
        drop(w);
    });
}

#[test]
fn blocking_wait_allocates_nothing_on_the_steady_path() {
    warm_up();
    // The first blocking wait on this thread may allocate the thread's
    // waiter entry; this one is not measured.
    let (ctx, cancel) = Context::background().with_cancel();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(2));
        cancel.cancel();
    });
    ctx.done().wait();
    t.join().unwrap();

    let mut counts = Vec::new();
    for i in 0..20 {
        let (parent, parent_cancel) = Context::background().with_cancel();
        let (ctx, _cancel) = parent.with_cancel();
        let ctx = ctx.with_value(RequestId(i));
        let done = ctx.done();
        // Cancel the waited context's parent from another thread, after
        // this thread had time to park.
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(1 + i % 3));
            parent_cancel.cancel();
        });
        let ((), n) = count(|| done.wait());
        t.join().unwrap();
        assert!(ctx.is_done());
        drop(parent);
        counts.push(n);
    }
    assert_eq!(
        counts,
        vec![0; 20],
        "allocations of 20 blocking waits woken by another thread"
    );

    // Waiting on a context that is already done.
    let (ctx, cancel) = Context::background().with_cancel();
    cancel.cancel();
    assert_allocs("wait() on a done context", 0, || ctx.done().wait());
    assert_allocs("wait_timeout() on a done context", 0, || {
        assert!(ctx.done().wait_timeout(Duration::from_secs(1)));
    });
}

/// A waker whose clones are reference counts (as a runtime's are): made
/// outside the counted regions.
struct NoopWake;

impl Wake for NoopWake {
    fn wake(self: Arc<Self>) {}
}

/// One iteration of a `select!` loop on `done`: polled once, pending (its
/// waker registered), then dropped (withdrawn).
fn select_iteration(done: Done<'_>, waker: &Waker) {
    let mut done = pin!(done);
    let poll = done.as_mut().poll(&mut TaskContext::from_waker(waker));
    assert!(poll.is_pending());
}

/// API rule 13: `ctx.done()` borrows (making and dropping one allocates
/// nothing), and a `select!`-loop iteration — a fresh `Done` polled pending
/// once, then dropped — allocates nothing in steady state, with `done()` and
/// with `done_owned()`, also with another task's future pending on the same
/// context. At bdad359 every such iteration allocated one waiter entry.
#[test]
fn select_loop_iteration_allocates_nothing_in_steady_state() {
    warm_up();
    let waker = Waker::from(Arc::new(NoopWake));
    let (parent, cancel) = Context::background().with_cancel();
    let ctx = parent.with_value(RequestId(1));
    assert_allocs("ctx.done() made and dropped", 0, || drop(ctx.done()));
    assert_allocs("ctx.done().is_done()", 0, || assert!(!ctx.done().is_done()));

    // Warm-up: the thread's first pending poll may allocate its spare entry.
    select_iteration(ctx.done(), &waker);
    let borrowed: Vec<usize> = (0..100)
        .map(|_| count(|| select_iteration(ctx.done(), &waker)).1)
        .collect();
    assert_eq!(borrowed, vec![0; 100], "select! iterations on ctx.done()");
    let owned: Vec<usize> = (0..100)
        .map(|_| count(|| select_iteration(ctx.done_owned(), &waker)).1)
        .collect();
    assert_eq!(
        owned,
        vec![0; 100],
        "select! iterations on ctx.done_owned()"
    );

    // Another future stays pending on the same context (registered before
    // the loop, on another thread): the loop's entry is still withdrawn at
    // once and reused.
    let mut other = parent.done_owned();
    let other_waker = Waker::from(Arc::new(NoopWake));
    let mut other = thread::spawn(move || {
        let poll = Pin::new(&mut other).poll(&mut TaskContext::from_waker(&other_waker));
        assert!(poll.is_pending());
        other
    })
    .join()
    .unwrap();
    let shared: Vec<usize> = (0..100)
        .map(|_| count(|| select_iteration(ctx.done(), &waker)).1)
        .collect();
    assert_eq!(
        shared,
        vec![0; 100],
        "select! iterations beside a pending future"
    );

    // The loop ends when the context is done; the pending future is woken.
    cancel.cancel();
    let mut done = ctx.done();
    assert_allocs("polling ctx.done() once it is done", 0, || {
        assert!(
            Pin::new(&mut done)
                .poll(&mut TaskContext::from_waker(&waker))
                .is_ready()
        );
    });
    assert!(
        Pin::new(&mut other)
            .poll(&mut TaskContext::from_waker(&waker))
            .is_ready()
    );
}

#[test]
fn wait_on_a_done_context_allocates_nothing_on_a_fresh_thread() {
    let (ctx, cancel) = Context::background().with_cancel();
    cancel.cancel();
    // No warm-up on this thread at all: the done check comes first.
    thread::spawn(move || {
        let (child, _c) =
            assert_allocs("with_cancel() under a done parent (cold thread)", 1, || {
                ctx.with_cancel()
            });
        assert_allocs("wait() on a done context (cold thread)", 0, || {
            ctx.done().wait();
            child.done().wait();
        });
    })
    .join()
    .unwrap();
}

#[test]
fn counter_counts_only_the_current_thread() {
    let (b, n) = count(|| Box::new(5u64));
    assert_eq!((*b, n), (5, 1));
    let (v, n) = count(|| {
        let mut v = Vec::with_capacity(1);
        v.extend([1u8, 2, 3]); // one realloc
        v
    });
    assert_eq!((v.len(), n), (3, 2));
    // Another thread allocating meanwhile is not counted.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let noisy = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            // At least one allocation, however the threads are scheduled
            // (miri may not run this thread before `stop` is set).
            let mut n = 0usize;
            loop {
                n += std::hint::black_box(vec![0u8; 64]).len();
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break n;
                }
                // Never starve the measuring thread on a one-thread-at-a-
                // time scheduler (valgrind).
                thread::yield_now();
            }
        })
    };
    let ((), n) = count(|| thread::sleep(Duration::from_millis(5)));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(noisy.join().unwrap() > 0);
    assert_eq!(n, 0);
}

/// Warms up what deadlines and after-funcs need once: the timer thread
/// (started by the first deadline context or after-func in the process)
/// and an after-func worker. Their allocations happen on those threads,
/// but starting the timer allocates on the caller's.
fn warm_up_deadlines() {
    warm_up();
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_millis(1));
    ctx.done().wait();
    let (ran, f_ran) = mpsc::channel();
    let (ctx, cancel) = Context::background().with_cancel();
    let _after = ctx.after_func(move || ran.send(()).unwrap());
    cancel.cancel();
    f_ran.recv().unwrap();
}

#[test]
fn deadline_derivations_allocate_once() {
    warm_up_deadlines();
    let _cold = empty_node_cache();
    let bg = Context::background();
    let in_30s = || Instant::now() + Duration::from_secs(30);

    let (t, cancel_t) = assert_allocs("background().with_timeout(30 s)", 1, || {
        bg.with_timeout(Duration::from_secs(30))
    });
    let (parent, cancel_parent) = bg.with_cancel();
    let (d, cancel_d) = assert_allocs("with_deadline() on a cancellable parent", 1, || {
        parent.with_deadline(in_30s())
    });
    assert_eq!(parent.registered_children(), 1);
    let v = parent.with_value(RequestId(1));
    let (dc, cancel_dc) = assert_allocs(
        "with_deadline_cause(plain Error) under a value layer",
        1,
        || v.with_deadline_cause(in_30s(), Error::Canceled),
    );
    let (under, _cancel_under) = assert_allocs("with_timeout() under a sooner deadline", 1, || {
        d.with_timeout(Duration::from_secs(3600))
    });
    let (max, _cancel_max) = assert_allocs("with_timeout(Duration::MAX)", 1, || {
        bg.with_timeout(Duration::MAX)
    });
    let (zero, _cancel_zero) = assert_allocs("with_timeout(ZERO) (done at once)", 1, || {
        parent.with_timeout(Duration::ZERO)
    });
    assert_eq!(zero.err(), Some(Error::DeadlineExceeded));
    assert_allocs("deadline queries", 0, || {
        assert!(t.deadline().is_some());
        assert_eq!(under.deadline(), d.deadline());
        assert_eq!(max.deadline(), None);
        assert!(!dc.is_done());
    });
    assert_eq!(parent.registered_children(), 2);

    assert_allocs("cancel() of a deadline context", 0, || cancel_d.cancel());
    assert_eq!(d.err(), Some(Error::Canceled));
    assert!(under.is_done());
    assert_allocs("cancel() of a deadline context with a cause", 0, || {
        cancel_dc.cancel()
    });
    assert_allocs("cancel() of a deadline context under background", 0, || {
        cancel_t.cancel()
    });
    assert_eq!(parent.registered_children(), 0);

    // Dropping: never cancelled, cancelled, and through a value layer.
    let (live, cancel_live) = parent.with_timeout(Duration::from_secs(30));
    let (live_bg, cancel_live_bg) = bg.with_timeout(Duration::from_secs(30));
    let (timed, cancel_layered) = parent.with_timeout(Duration::from_secs(30));
    let layered = timed.with_value(Other(2));
    drop(timed);
    assert_eq!(parent.registered_children(), 2);
    assert_allocs("dropping a live deadline context", 0, || {
        drop((live, cancel_live))
    });
    assert_allocs(
        "dropping a live deadline context under background",
        0,
        || drop((live_bg, cancel_live_bg)),
    );
    assert_allocs("dropping a deadline context and its value layer", 0, || {
        drop((layered, cancel_layered))
    });
    assert_eq!(parent.registered_children(), 0);
    assert_allocs("dropping cancelled deadline contexts", 0, || {
        drop((t, d, dc, under, max, zero))
    });

    // Waiting for an expiry.
    let (soon, _cancel_soon) = parent.with_timeout(Duration::from_millis(2));
    assert_allocs("wait() for an expiry", 0, || soon.done().wait());
    assert_eq!(soon.err(), Some(Error::DeadlineExceeded));
    cancel_parent.cancel();
}

/// A bound that only catches a hang: the callback runs on a worker thread,
/// which miri (and a loaded CI machine) may not schedule for a long time.
const HANG_GUARD: Duration = Duration::from_secs(if cfg!(miri) { 600 } else { 120 });

#[test]
fn after_func_allocates_at_most_once() {
    warm_up_deadlines();
    let (ran, f_ran) = mpsc::channel();

    let (ctx, cancel) = Context::background().with_cancel();
    let tx = ran.clone();
    let (stopped, n) = count(|| ctx.after_func(move || tx.send("stopped").unwrap()));
    assert!(n <= 1, "after_func(): {n} allocations, expected at most 1");
    assert_eq!(n, 1, "after_func(): the entry, with the closure");
    assert_allocs("AfterFunc::stop()", 0, || assert!(stopped.stop()));
    assert_allocs("AfterFunc::stop() again", 0, || assert!(!stopped.stop()));
    assert_allocs("dropping a stopped AfterFunc", 0, || drop(stopped));

    let tx = ran.clone();
    let layered = ctx.with_value(RequestId(3));
    let pending = assert_allocs("after_func() on a value layer", 1, || {
        layered.after_func(move || tx.send("ran").unwrap())
    });
    assert_allocs("dropping a pending AfterFunc", 0, || drop(pending));
    assert_allocs("cancel() with a pending after_func", 0, || cancel.cancel());
    assert_eq!(f_ran.recv_timeout(HANG_GUARD), Ok("ran"));

    let tx = ran.clone();
    let done_already = assert_allocs("after_func() on a done context", 1, || {
        ctx.after_func(move || tx.send("immediately").unwrap())
    });
    assert_eq!(f_ran.recv_timeout(HANG_GUARD), Ok("immediately"));
    assert_allocs("AfterFunc::stop() after f ran", 0, || {
        assert!(!done_already.stop())
    });

    let never = Context::background();
    let tx = ran.clone();
    let on_never = assert_allocs("after_func() on background", 1, || {
        never.after_func(move || tx.send("never").unwrap())
    });
    assert_allocs("AfterFunc::stop() on background", 0, || {
        assert!(on_never.stop())
    });

    let (deadline, _cancel_deadline) = Context::background().with_timeout(Duration::from_secs(30));
    let on_deadline = assert_allocs("after_func() on a deadline context", 1, || {
        deadline.after_func(move || ran.send("deadline").unwrap())
    });
    assert_allocs("AfterFunc::stop() on a deadline context", 0, || {
        assert!(on_deadline.stop())
    });
}

#[test]
fn on_done_allocates_at_most_once_and_nothing_on_a_never_done_context() {
    warm_up();
    let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    // Never done: f is dropped unrun and nothing is allocated (rule 14).
    for never in [
        Context::background(),
        Context::todo(),
        Context::background().without_cancel(),
    ] {
        let r = ran.clone();
        let on_never = assert_allocs("on_done() on a never-done context", 0, || {
            never.on_done(move || {
                r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
        });
        assert_allocs("OnDone::stop() on a never-done context", 0, || {
            assert!(on_never.stop())
        });
        assert_allocs("dropping it", 0, || drop(on_never));
    }

    let (ctx, cancel) = Context::background().with_cancel();
    let r = ran.clone();
    let stopped = assert_allocs("on_done(): the entry, with the closure", 1, || {
        ctx.on_done(move || {
            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
    });
    assert_allocs("OnDone::stop()", 0, || assert!(stopped.stop()));
    assert_allocs("dropping a stopped OnDone", 0, || drop(stopped));

    let r = ran.clone();
    let layered = ctx.with_value(RequestId(4));
    let pending = assert_allocs("on_done() on a value layer", 1, || {
        layered.on_done(move || {
            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
    });
    // f runs inside cancel(), which still allocates nothing.
    assert_allocs("cancel() running an on_done callback", 0, || {
        cancel.cancel()
    });
    assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_allocs("OnDone::stop() after f ran", 0, || assert!(!pending.stop()));
    assert_allocs("dropping it", 0, || drop(pending));

    let r = ran.clone();
    let done_already = assert_allocs("on_done() on a done context", 0, || {
        ctx.on_done(move || {
            r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
    });
    assert_eq!(ran.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_allocs("OnDone::stop() on a done context", 0, || {
        assert!(!done_already.stop())
    });
}

/// API rule 15: a merge is one allocation, as `with_cancel` — the link to
/// `other` (its callback entry) lives in the merged node — whatever `other`
/// is; cancelling `other` (which cancels the merge) and dropping the merge
/// allocate nothing. (Two allocations before the node diet of issue 10.)
#[test]
fn merge_allocates_once() {
    warm_up();
    let _cold = empty_node_cache();
    let (ctx, _keep) = Context::background().with_cancel();
    let (other, cancel_other) = Context::background().with_cancel();
    let (merged, merged_cancel) =
        assert_allocs("merge() with a live other", 1, || ctx.merge(&other));
    let value = other.with_value(RequestId(9));
    let (under_value, _c) = assert_allocs("merge() with a value layer over other", 1, || {
        ctx.merge(&value)
    });
    let never = Context::background();
    let (with_root, _c) = assert_allocs("merge() with background()", 1, || ctx.merge(&never));
    assert_allocs("cancel() of other, reaching the merges", 0, || {
        cancel_other.cancel()
    });
    assert!(merged.is_done() && under_value.is_done());
    assert!(!with_root.is_done());
    let (done_other, _c) = assert_allocs("merge() with a done other", 1, || ctx.merge(&other));
    assert!(done_other.is_done());
    assert_allocs("dropping merges", 0, || {
        drop((merged, merged_cancel, under_value, with_root, done_other))
    });
    // A merge dropped while other is live withdraws its entry.
    let (live_other, _c) = Context::background().with_cancel();
    let pair = assert_allocs("merge() again", 1, || ctx.merge(&live_other));
    assert_allocs("dropping a merge registered on a live other", 0, || {
        drop(pair)
    });
}
