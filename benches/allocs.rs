//! Heap allocations per operation, goctx next to tokio-util's
//! `CancellationToken`, for the scenarios of `benches/context.rs` (Go's
//! `-benchmem` column, `allocs/op`).
//!
//! A counting global allocator counts every `alloc`, `alloc_zeroed` and
//! `realloc` call of the whole process, on every thread: goctx's timer
//! thread and after-func workers, crossbeam-epoch's amortised garbage bags
//! and tokio's worker threads included. Each scenario runs single-threaded
//! (background threads aside): one untimed warm-up round, then `ops`
//! operations between two reads of the counter. The result is printed as
//!
//! ```text
//! ALLOCS <scenario> <implementation> <allocations per operation, 2 decimals>
//! ```
//!
//! Run with `cargo bench -p goctx-benches --bench allocs` (a few seconds).

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Waker};
use std::thread;
use std::time::Duration;

use goctx::{CancelFunc, Context};
use tokio_util::sync::CancellationToken;

const GOCTX: &str = "goctx";
const TOKIO: &str = "tokio_util";

/// Operations per scenario unless a scenario says otherwise.
const OPS: u64 = 10_000;

/// Allocation calls (`alloc`, `alloc_zeroed`, `realloc`) since start-up.
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// `System`, counting allocation calls in [`ALLOCATIONS`].
struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments;
// counting is one relaxed atomic increment, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded from the caller.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded from the caller.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded from the caller.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the caller.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `op` `ops` times as a warm-up, then `ops` times counted, waits
/// `settle` for background threads to finish what the operations handed
/// them, and prints allocations per operation divided by `per`.
fn report(
    scenario: &str,
    implementation: &str,
    ops: u64,
    per: u64,
    settle: Duration,
    mut op: impl FnMut(),
) {
    for _ in 0..ops {
        op();
    }
    thread::sleep(settle);
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    for _ in 0..ops {
        op();
    }
    thread::sleep(settle);
    let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;
    let per_op = allocations as f64 / (ops * per) as f64;
    println!("ALLOCS {scenario} {implementation} {per_op:.2}");
}

/// [`report`] per operation, without a settling pause.
fn simple(scenario: &str, implementation: &str, op: impl FnMut()) {
    report(scenario, implementation, OPS, 1, Duration::ZERO, op);
}

/// The value at the root of Go's `CommonParentCancel` tree.
#[derive(Debug, PartialEq)]
struct Key(&'static str);

/// A value type no context here holds.
struct Missing;

/// Go's `CommonParentCancel` without the busy work: derive a child of a
/// shared cancellable parent under a value root, look the value up, cancel.
fn common_parent_cancel() {
    let root = Context::background().with_value(Key("value"));
    let (shared, _keep_live) = root.with_cancel();
    simple("common_parent_cancel", GOCTX, || {
        let (ctx, cancel) = shared.with_cancel();
        assert_eq!(ctx.value::<Key>(), Some(&Key("value")));
        cancel.cancel();
    });
    let shared = CancellationToken::new();
    simple("common_parent_cancel", TOKIO, || {
        let token = shared.child_token();
        token.cancel();
    });
}

/// Go's `WithTimeout` iteration: 10 × `with_timeout(1 h)` from
/// `background()`, keeping the cancel handles, then 10 cancels. Reported per
/// iteration (Go's allocs/op) and per context. No tokio-util counterpart.
fn with_timeout() {
    const PER_ITERATION: usize = 10;
    let hour = Duration::from_secs(3600);
    let mut cancels: Vec<CancelFunc> = Vec::with_capacity(PER_ITERATION);
    let mut iteration = || {
        for _ in 0..PER_ITERATION {
            cancels.push(Context::background().with_timeout(hour).1);
        }
        for cancel in cancels.drain(..) {
            cancel.cancel();
        }
    };
    let settle = Duration::from_millis(20);
    report("with_timeout", GOCTX, OPS, 1, settle, &mut iteration);
    report(
        "with_timeout_per_ctx",
        GOCTX,
        OPS,
        PER_ITERATION as u64,
        settle,
        iteration,
    );
}

/// Go's `CancelTree` at depth 1000 with an open root: a chain of 1000
/// `with_cancel` under a `with_cancel` root, root cancelled, all dropped;
/// per iteration. tokio-util: the same chain of child tokens, every token
/// kept until the end (as in `benches/context.rs`).
fn cancel_tree() {
    const DEPTH: usize = 1000;
    const ITERATIONS: u64 = 200;
    let zero = Duration::ZERO;
    report("cancel_tree/depth=1000", GOCTX, ITERATIONS, 1, zero, || {
        let (root, cancel) = Context::background().with_cancel();
        let mut leaf = root.with_cancel().0;
        for _ in 1..DEPTH {
            leaf = leaf.with_cancel().0;
        }
        cancel.cancel();
        assert!(leaf.is_done());
    });
    let mut chain: Vec<CancellationToken> = Vec::with_capacity(DEPTH + 1);
    report("cancel_tree/depth=1000", TOKIO, ITERATIONS, 1, zero, || {
        chain.push(CancellationToken::new());
        for level in 0..DEPTH {
            let child = chain[level].child_token();
            chain.push(child);
        }
        chain[0].cancel();
        assert!(chain[DEPTH].is_cancelled());
        while let Some(token) = chain.pop() {
            drop(token);
        }
    });
}

/// Go's `DeepValueSameGoRoutine` at depth 100: a lookup that misses.
fn deep_value() {
    let mut ctx = Context::background();
    for layer in 0..100_u32 {
        ctx = ctx.with_value(layer);
    }
    simple("deep_value/depth=100", GOCTX, || {
        assert!(black_box(&ctx).value::<Missing>().is_none());
    });
}

/// Go's `ErrOK`: `err()` on a live context.
fn err_ok() {
    let (ctx, _keep_live) = Context::background().with_cancel();
    simple("err_ok", GOCTX, || assert!(black_box(&ctx).err().is_none()));
    let token = CancellationToken::new();
    simple("err_ok", TOKIO, || {
        assert!(!black_box(&token).is_cancelled())
    });
}

/// Go's `CheckCanceled/Done`: `ctx.done().is_done()` on a cancelled context.
/// tokio-util: its waitable handle, a `cancelled()` future polled once.
fn check_canceled_done() {
    let (ctx, cancel) = Context::background().with_cancel();
    cancel.cancel();
    simple("check_canceled/done", GOCTX, || {
        assert!(black_box(&ctx).done().is_done());
    });
    let token = CancellationToken::new();
    token.cancel();
    let mut cx = TaskContext::from_waker(Waker::noop());
    simple("check_canceled/done", TOKIO, || {
        let cancelled = pin!(black_box(&token).cancelled());
        assert!(cancelled.poll(&mut cx).is_ready());
    });
}

/// A `select!`-loop iteration on a live context: a fresh `ctx.done()`
/// polled pending once, then dropped (API rule 13). tokio-util: a fresh
/// `cancelled()` future, the same way.
fn select_loop() {
    let (ctx, _keep_live) = Context::background().with_cancel();
    let mut cx = TaskContext::from_waker(Waker::noop());
    simple("select_loop", GOCTX, || {
        let done = pin!(black_box(&ctx).done());
        assert!(done.poll(&mut cx).is_pending());
    });
    let token = CancellationToken::new();
    simple("select_loop", TOKIO, || {
        let cancelled = pin!(black_box(&token).cancelled());
        assert!(cancelled.poll(&mut cx).is_pending());
    });
}

/// Derive a child of a live parent and drop it without cancelling.
fn child_create_drop() {
    let (parent, _keep_live) = Context::background().with_cancel();
    simple("child_create_drop", GOCTX, || {
        drop(black_box(parent.with_cancel()))
    });
    let token = CancellationToken::new();
    simple("child_create_drop", TOKIO, || {
        drop(black_box(token.child_token()))
    });
}

/// Runs of the after-func callbacks.
static FIRED: AtomicU64 = AtomicU64::new(0);

/// `after_func` registered and stopped on a live context; `register_fire`:
/// registered on a fresh child that is then cancelled, waiting (spinning)
/// until the callback has run on goctx's worker, so its allocations (and
/// those of the thread hand-off) are counted too. tokio-util's counterparts
/// are those of `benches/context.rs`: a `cancelled()` future polled once
/// and dropped, and a task spawned on a 2-worker runtime that awaits
/// `cancelled()` (`spawn_fire`).
fn after_func() {
    let (ctx, _keep_live) = Context::background().with_cancel();
    simple("after_func/register_stop", GOCTX, || {
        let after = black_box(&ctx).after_func(|| {
            FIRED.fetch_add(1, Ordering::Release);
        });
        assert!(after.stop());
    });
    let token = CancellationToken::new();
    let mut cx = TaskContext::from_waker(Waker::noop());
    simple("after_func/register_stop", TOKIO, || {
        let cancelled = pin!(black_box(&token).cancelled());
        assert!(cancelled.poll(&mut cx).is_pending());
    });

    let settle = Duration::from_millis(20);
    report("after_func/register_fire", GOCTX, OPS, 1, settle, || {
        let before = FIRED.load(Ordering::Acquire);
        let (child, cancel) = ctx.with_cancel();
        let after = child.after_func(|| {
            FIRED.fetch_add(1, Ordering::Release);
        });
        cancel.cancel();
        while FIRED.load(Ordering::Acquire) == before {
            std::hint::spin_loop();
        }
        drop(after);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("tokio runtime");
    report("after_func/spawn_fire", TOKIO, OPS, 1, settle, || {
        let before = FIRED.load(Ordering::Acquire);
        let child = token.child_token();
        let waiter = child.clone();
        drop(runtime.spawn(async move {
            waiter.cancelled().await;
            FIRED.fetch_add(1, Ordering::Release);
        }));
        child.cancel();
        while FIRED.load(Ordering::Acquire) == before {
            std::hint::spin_loop();
        }
    });
}

fn main() {
    println!("goctx allocation counts: heap allocations per operation");
    println!("  counted: alloc, alloc_zeroed and realloc calls of the whole process, on every");
    println!("  thread (goctx's timer thread and after-func workers, tokio's workers); not frees.");
    println!("  Each scenario: an uncounted warm-up round, then {OPS} counted operations");
    println!("  (cancel_tree: 200), run on this thread; *_fire wait until the callback ran.");
    println!("  Lines below: ALLOCS <scenario> <implementation> <allocations per operation>");
    println!();
    common_parent_cancel();
    with_timeout();
    cancel_tree();
    deep_value();
    err_ok();
    check_canceled_done();
    select_loop();
    child_create_drop();
    after_func();
}
