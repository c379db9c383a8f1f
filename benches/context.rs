//! Criterion benchmarks for the core of goctx (cancellation, values, waits),
//! with tokio-util's `CancellationToken` measured in the same group wherever
//! it has a natural counterpart.
//!
//! The scenarios follow what one iteration of Go's
//! `context/benchmark_test.go` does (see the project notes for the per
//! benchmark descriptions and Go's numbers on the reference machine), plus a
//! few of our own: child churn on one parent, fan-out cancellation, after-func
//! callbacks and wake-up latency of parked threads and tasks.
//!
//! Names read `scenario/implementation[/parameters]`, so criterion prints the
//! two implementations of a scenario next to each other. Go's `RunParallel`
//! (2 workers on this 2-core machine sharing one iteration budget) becomes
//! [`run_parallel`]: threads split `iters` and the wall time is returned, so
//! the reported time per iteration is throughput, as in Go.
//!
//! Run with `cargo bench -p goctx-benches --bench context` (about four and a half minutes on 2 cores);
//! pass a filter such as `cargo bench -p goctx-benches --bench context -- cancel_tree` to run
//! one scenario.

use std::cell::Cell;
use std::future::Future;
use std::hint::black_box;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    Bencher, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main,
};
use goctx::{CancelFunc, Context, Done};
use tokio_util::sync::CancellationToken;

const GOCTX: &str = "goctx";
const TOKIO: &str = "tokio_util";
/// The std-only floor of `cancel_wake` (see [`UnparkSignal`]).
const UNPARK_BASELINE: &str = "unpark_baseline";

/// Worker threads in Go's `RunParallel` on this machine (`GOMAXPROCS=2`).
const PARALLELISM: usize = 2;

// ---------------------------------------------------------------------------
// Harness helpers
// ---------------------------------------------------------------------------

/// The share of `iters` that thread `index` of `threads` runs.
fn share(iters: u64, threads: usize, index: usize) -> u64 {
    let (threads, index) = (threads as u64, index as u64);
    iters / threads + u64::from(index < iters % threads)
}

/// Go's `b.RunParallel`: `threads` threads split `iters` between them and
/// each runs `body(its_share)`. Returns the wall time from the first thread's
/// start to the last thread's finish (thread start-up and join excluded).
fn run_parallel<F>(threads: usize, iters: u64, body: F) -> Duration
where
    F: Fn(u64) + Sync,
{
    let barrier = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|index| {
                let (barrier, body) = (&barrier, &body);
                let n = share(iters, threads, index);
                scope.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    body(n);
                    (start, Instant::now())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("benchmark thread panicked"))
            .collect()
    });
    let start = spans.iter().map(|span| span.0).min().expect("threads > 0");
    let end = spans.iter().map(|span| span.1).max().expect("threads > 0");
    end - start
}

/// Settings for benchmarks of a few nanoseconds to a few microseconds.
fn quick(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
}

/// Settings for benchmarks whose iteration takes tens of microseconds or
/// more, or whose untimed set-up dominates the real time.
fn slow(group: &mut BenchmarkGroup<'_, WallTime>, measurement: Duration) {
    group
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(measurement)
        .sample_size(20);
}

/// The value stored at the root of Go's `CommonParentCancel` tree.
#[derive(Debug, PartialEq)]
struct Key(&'static str);

/// A value type no context in these benchmarks holds: a guaranteed miss.
struct Missing;

/// The busy work Go's `CommonParentCancel` source asks for: 100 rounds of
/// `x = x / (x + 1)`, a chain of dependent integer divisions (`x` stays 0).
/// `black_box` keeps the optimiser from proving `x == 0` and folding the
/// divisions away.
#[inline(always)]
fn divisions(x: &mut i64) {
    for _ in 0..100 {
        *x = black_box(*x / (*x + 1));
    }
}

/// The busy work Go actually runs: Go 1.25's compiler proves that `x` stays
/// 0 and removes the divisions, leaving an empty loop of 100 trips
/// (`INCQ; CMPQ $0x64; JL` in the compiled benchmark).
#[inline(always)]
fn empty_loop() {
    for trip in 0..100_u32 {
        black_box(trip);
    }
}

/// How much busy work a `common_parent_cancel` iteration does around its
/// `cancel()`.
#[derive(Clone, Copy)]
enum Work {
    /// None (the Go twin).
    None,
    /// What Go executes: two empty 100-trip loops.
    EmptyLoops,
    /// What Go's source reads: 2 × 100 dependent divisions.
    Divisions,
}

impl Work {
    #[inline(always)]
    fn run(self, x: &mut i64) {
        match self {
            Work::None => {}
            Work::EmptyLoops => empty_loop(),
            Work::Divisions => divisions(x),
        }
    }
}

/// A cancelled `goctx` context (its `CancelFunc` is dropped: that does not
/// cancel, and the context no longer needs it).
fn canceled_context() -> Context {
    let (ctx, cancel) = Context::background().with_cancel();
    cancel.cancel();
    ctx
}

fn canceled_token() -> CancellationToken {
    let token = CancellationToken::new();
    token.cancel();
    token
}

// ---------------------------------------------------------------------------
// Err and Done checks (Go: ErrOK, ErrCanceled, CheckCanceled,
// ContextCancelDone)
// ---------------------------------------------------------------------------

/// Go's `ErrOK` / `ErrCanceled`: one `Err()` on a live or cancelled context,
/// serial and from 2 threads at once (read-only sharing of one context).
fn err(c: &mut Criterion) {
    let (live, _keep_live) = Context::background().with_cancel();
    let canceled = canceled_context();
    let live_token = CancellationToken::new();
    let canceled_token = canceled_token();

    for (scenario, ctx, token, expect_done) in [
        ("err_ok", &live, &live_token, false),
        ("err_canceled", &canceled, &canceled_token, true),
    ] {
        let mut group = c.benchmark_group(scenario);
        quick(&mut group);
        group.bench_function(GOCTX, |b| {
            b.iter(|| assert_eq!(black_box(ctx).err().is_some(), expect_done));
        });
        group.bench_function(TOKIO, |b| {
            b.iter(|| assert_eq!(black_box(token).is_cancelled(), expect_done));
        });
        group.bench_function(BenchmarkId::new(GOCTX, "parallel"), |b| {
            b.iter_custom(|iters| {
                run_parallel(PARALLELISM, iters, |n| {
                    for _ in 0..n {
                        assert_eq!(black_box(ctx).err().is_some(), expect_done);
                    }
                })
            });
        });
        group.bench_function(BenchmarkId::new(TOKIO, "parallel"), |b| {
            b.iter_custom(|iters| {
                run_parallel(PARALLELISM, iters, |n| {
                    for _ in 0..n {
                        assert_eq!(black_box(token).is_cancelled(), expect_done);
                    }
                })
            });
        });
        group.finish();
    }
}

/// Go's `CheckCanceled`: on a cancelled context, `Err()` versus a
/// non-blocking receive from `Done()`.
///
/// * `goctx/err`: `ctx.err()`;
/// * `goctx/done`: `ctx.done().is_done()` — like Go's `Done()` it fetches the
///   handle each time; `done()` borrows the context (API rule 13), so that
///   is one more load, no reference count;
/// * `goctx/done_poll`: `ctx.done()` polled once as a future, the closest
///   analogue of Go's `select { case <-ctx.Done(): default: }`;
/// * `goctx/is_done`: `ctx.is_done()`, one load;
/// * `goctx/done_handle`: `is_done()` on a `Done` fetched once beforehand;
/// * `tokio_util/is_cancelled`, and `tokio_util/cancelled_poll`: a fresh
///   `cancelled()` future polled once.
fn check_canceled(c: &mut Criterion) {
    let ctx = canceled_context();
    let token = canceled_token();
    let mut cx = TaskContext::from_waker(Waker::noop());

    let mut group = c.benchmark_group("check_canceled");
    quick(&mut group);
    group.bench_function(BenchmarkId::new(GOCTX, "err"), |b| {
        b.iter(|| assert!(black_box(&ctx).err().is_some()));
    });
    group.bench_function(BenchmarkId::new(GOCTX, "done"), |b| {
        b.iter(|| assert!(black_box(&ctx).done().is_done()));
    });
    group.bench_function(BenchmarkId::new(GOCTX, "done_poll"), |b| {
        b.iter(|| {
            let mut done = black_box(&ctx).done();
            assert!(Pin::new(&mut done).poll(&mut cx).is_ready());
        });
    });
    group.bench_function(BenchmarkId::new(GOCTX, "is_done"), |b| {
        b.iter(|| assert!(black_box(&ctx).is_done()));
    });
    let done = ctx.done();
    group.bench_function(BenchmarkId::new(GOCTX, "done_handle"), |b| {
        b.iter(|| assert!(black_box(&done).is_done()));
    });
    group.bench_function(BenchmarkId::new(TOKIO, "is_cancelled"), |b| {
        b.iter(|| assert!(black_box(&token).is_cancelled()));
    });
    group.bench_function(BenchmarkId::new(TOKIO, "cancelled_poll"), |b| {
        b.iter(|| {
            let cancelled = pin!(black_box(&token).cancelled());
            assert!(cancelled.poll(&mut cx).is_ready());
        });
    });
    group.finish();
}

/// Go's `ContextCancelDone`: 2 threads poll one live context's `Done()`
/// (read-only sharing; the not-done branch). `goctx/done` fetches the handle
/// each time as Go's `Done()` does (a borrow: no shared write, API rule 13);
/// `goctx/is_done` and `goctx/done_handle` (each thread fetches its `Done`
/// once) only read as well.
fn context_cancel_done(c: &mut Criterion) {
    let (ctx, _keep_live) = Context::background().with_cancel();
    let token = CancellationToken::new();

    let mut group = c.benchmark_group("context_cancel_done");
    quick(&mut group);
    group.bench_function(BenchmarkId::new(GOCTX, "done"), |b| {
        b.iter_custom(|iters| {
            run_parallel(PARALLELISM, iters, |n| {
                for _ in 0..n {
                    assert!(!black_box(&ctx).done().is_done());
                }
            })
        });
    });
    group.bench_function(BenchmarkId::new(GOCTX, "is_done"), |b| {
        b.iter_custom(|iters| {
            run_parallel(PARALLELISM, iters, |n| {
                for _ in 0..n {
                    assert!(!black_box(&ctx).is_done());
                }
            })
        });
    });
    group.bench_function(BenchmarkId::new(GOCTX, "done_handle"), |b| {
        b.iter_custom(|iters| {
            run_parallel(PARALLELISM, iters, |n| {
                let done = ctx.done();
                for _ in 0..n {
                    assert!(!black_box(&done).is_done());
                }
            })
        });
    });
    group.bench_function(BenchmarkId::new(TOKIO, "is_cancelled"), |b| {
        b.iter_custom(|iters| {
            run_parallel(PARALLELISM, iters, |n| {
                for _ in 0..n {
                    assert!(!black_box(&token).is_cancelled());
                }
            })
        });
    });
    group.finish();
}

/// A waker whose clones are reference counts, as a runtime's are.
struct CountedNoopWake;

impl Wake for CountedNoopWake {
    fn wake(self: Arc<Self>) {}
}

/// Threads in `select_loop`'s shared-context rows.
const SELECT_LOOP_THREADS: usize = 8;

/// One iteration of a `select!` loop on a live context (API rule 13): a
/// fresh `Done` polled once — pending, so its waker is registered — then
/// dropped, which withdraws it; the same with tokio-util's `cancelled()`.
///
/// * `goctx/done`: `ctx.done()` (borrowed; its waiter entry comes from the
///   thread's spares and goes back there, no allocation);
/// * `goctx/done_owned`: `ctx.done_owned()`, which also takes and gives back
///   a reference count;
/// * `tokio_util/cancelled`: `token.cancelled()`, registered and withdrawn
///   under the token's mutex.
///
/// And [`SELECT_LOOP_THREADS`] threads each looping over one shared live
/// context (throughput, as `run_parallel`): `goctx/done_is_done` is
/// `ctx.done().is_done()` (reads only), `goctx/is_done` the one-load floor,
/// `goctx/done_owned_is_done` the same
/// through `done_owned()` (two contended reference-count RMWs: what
/// `done()` cost before it borrowed), `tokio_util/is_cancelled`.
fn select_loop(c: &mut Criterion) {
    let (ctx, _keep_live) = Context::background().with_cancel();
    let token = CancellationToken::new();
    let waker = Waker::from(Arc::new(CountedNoopWake));
    let mut cx = TaskContext::from_waker(&waker);

    let mut group = c.benchmark_group("select_loop");
    quick(&mut group);
    group.bench_function(BenchmarkId::new(GOCTX, "done"), |b| {
        b.iter(|| {
            let done = pin!(black_box(&ctx).done());
            assert!(done.poll(&mut cx).is_pending());
        });
    });
    group.bench_function(BenchmarkId::new(GOCTX, "done_owned"), |b| {
        b.iter(|| {
            let done = pin!(black_box(&ctx).done_owned());
            assert!(done.poll(&mut cx).is_pending());
        });
    });
    group.bench_function(BenchmarkId::new(TOKIO, "cancelled"), |b| {
        b.iter(|| {
            let cancelled = pin!(black_box(&token).cancelled());
            assert!(cancelled.poll(&mut cx).is_pending());
        });
    });
    let threads = format!("threads={SELECT_LOOP_THREADS}");
    group.bench_function(
        BenchmarkId::new(GOCTX, format!("done_is_done/{threads}")),
        |b| {
            b.iter_custom(|iters| {
                run_parallel(SELECT_LOOP_THREADS, iters, |n| {
                    for _ in 0..n {
                        assert!(!black_box(&ctx).done().is_done());
                    }
                })
            });
        },
    );
    group.bench_function(BenchmarkId::new(GOCTX, format!("is_done/{threads}")), |b| {
        b.iter_custom(|iters| {
            run_parallel(SELECT_LOOP_THREADS, iters, |n| {
                for _ in 0..n {
                    assert!(!black_box(&ctx).is_done());
                }
            })
        });
    });
    group.bench_function(
        BenchmarkId::new(GOCTX, format!("done_owned_is_done/{threads}")),
        |b| {
            b.iter_custom(|iters| {
                run_parallel(SELECT_LOOP_THREADS, iters, |n| {
                    for _ in 0..n {
                        assert!(!black_box(&ctx).done_owned().is_done());
                    }
                })
            });
        },
    );
    group.bench_function(
        BenchmarkId::new(TOKIO, format!("is_cancelled/{threads}")),
        |b| {
            b.iter_custom(|iters| {
                run_parallel(SELECT_LOOP_THREADS, iters, |n| {
                    for _ in 0..n {
                        assert!(!black_box(&token).is_cancelled());
                    }
                })
            });
        },
    );
    group.finish();
}

// ---------------------------------------------------------------------------
// Go: CommonParentCancel (+ the busy-work-free twin)
// ---------------------------------------------------------------------------

/// Go's `CommonParentCancel`: 2 threads derive children of one shared
/// cancellable parent (under a value root), look the value up through the
/// child, do busy work, cancel the child, do busy work.
///
/// * no suffix: the busy work Go executes (two empty 100-trip loops: its
///   compiler folds the divisions), the variant to compare with Go;
/// * `div_work`: the busy work Go's source reads (200 real divisions);
/// * `nowork`: no busy work (the Go twin); `nowork_serial` on one thread.
///
/// tokio-util has no values: its iteration is `child_token()`, busy work,
/// `cancel()`, busy work, drop.
fn common_parent_cancel(c: &mut Criterion) {
    let root = Context::background().with_value(Key("value"));
    let (shared, _shared_cancel) = root.with_cancel();
    let shared_token = CancellationToken::new();

    let goctx_iteration = |work: Work, x: &mut i64| {
        let (ctx, cancel) = shared.with_cancel();
        assert_eq!(ctx.value::<Key>(), Some(&Key("value")));
        work.run(x);
        cancel.cancel();
        work.run(x);
    };
    let tokio_iteration = |work: Work, x: &mut i64| {
        let token = shared_token.child_token();
        work.run(x);
        token.cancel();
        work.run(x);
    };

    let mut group = c.benchmark_group("common_parent_cancel");
    quick(&mut group);
    for (name, work) in [
        (None, Work::EmptyLoops),
        (Some("div_work"), Work::Divisions),
        (Some("nowork"), Work::None),
    ] {
        let id = |implementation| match name {
            Some(name) => BenchmarkId::new(implementation, name),
            None => BenchmarkId::from_parameter(implementation),
        };
        bench_parallel_iteration(&mut group, id(GOCTX), |x| goctx_iteration(work, x));
        bench_parallel_iteration(&mut group, id(TOKIO), |x| tokio_iteration(work, x));
    }
    group.bench_function(BenchmarkId::new(GOCTX, "nowork_serial"), |b| {
        b.iter(|| goctx_iteration(Work::None, &mut 0));
    });
    group.bench_function(BenchmarkId::new(TOKIO, "nowork_serial"), |b| {
        b.iter(|| tokio_iteration(Work::None, &mut 0));
    });
    group.finish();
}

/// Benchmarks `iteration` run by [`PARALLELISM`] threads, each with its own
/// busy-work accumulator.
fn bench_parallel_iteration<F>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: BenchmarkId,
    iteration: F,
) where
    F: Fn(&mut i64) + Sync,
{
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            run_parallel(PARALLELISM, iters, |n| {
                let mut x = black_box(0);
                for _ in 0..n {
                    iteration(&mut x);
                }
                black_box(x);
            })
        });
    });
}

// ---------------------------------------------------------------------------
// Go: CancelTree
// ---------------------------------------------------------------------------

/// How the root of a `cancel_tree` iteration is made.
#[derive(Clone, Copy)]
enum Root {
    /// The chain hangs off `background()`; nothing is cancelled.
    Background,
    /// The chain hangs off a live cancellable root, which is then cancelled.
    Open,
    /// The root is cancelled before the chain is built under it.
    Closed,
}

impl Root {
    fn name(self) -> &'static str {
        match self {
            Root::Background => "background",
            Root::Open => "open",
            Root::Closed => "closed",
        }
    }
}

/// `depth` nested `with_cancel()` under `root`; the cancel handles are
/// dropped at once (that does not cancel), the leaf holds the chain.
fn goctx_chain(root: &Context, depth: usize) -> Context {
    let (mut ctx, _) = root.with_cancel();
    for _ in 1..depth {
        ctx = ctx.with_cancel().0;
    }
    ctx
}

/// `depth` nested child tokens under `root`, all kept in `chain` (a token
/// that loses its last handle is taken out of the tree by tokio-util and its
/// children re-parented, which would flatten the chain).
fn tokio_chain(root: &CancellationToken, depth: usize, chain: &mut Vec<CancellationToken>) {
    let mut token = root.child_token();
    for _ in 1..depth {
        let child = token.child_token();
        chain.push(token);
        token = child;
    }
    chain.push(token);
}

/// Drops a chain leaf first (the cheapest order for tokio-util: no
/// re-parenting).
fn drop_chain(chain: &mut Vec<CancellationToken>) {
    while let Some(token) = chain.pop() {
        drop(token);
    }
}

/// Go's `CancelTree`: one iteration builds a chain `depth` deep (one
/// allocation per level for goctx) and, for `open`, cancels it from the
/// root; the tree is dropped inside the timed iteration.
///
/// Go's `Root=Background` chain starts on `context.Background()`; tokio-util
/// has no never-cancelled root, so there the first level is a
/// `CancellationToken::new()`.
fn cancel_tree(c: &mut Criterion) {
    let mut group = c.benchmark_group("cancel_tree");
    group
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1200))
        .sample_size(20);
    for depth in [1, 10, 100, 1000] {
        for root in [Root::Background, Root::Open, Root::Closed] {
            let parameter = format!("depth={depth}/root={}", root.name());
            group.bench_function(BenchmarkId::new(GOCTX, &parameter), |b| {
                b.iter(|| match root {
                    Root::Background => goctx_chain(&Context::background(), depth),
                    Root::Open => {
                        let (root, cancel) = Context::background().with_cancel();
                        let leaf = goctx_chain(&root, depth);
                        cancel.cancel();
                        leaf
                    }
                    Root::Closed => goctx_chain(&canceled_context(), depth),
                });
            });
            let mut chain = Vec::with_capacity(depth);
            group.bench_function(BenchmarkId::new(TOKIO, &parameter), |b| {
                b.iter(|| match root {
                    Root::Background => {
                        chain.push(CancellationToken::new());
                        if depth > 1 {
                            let first = chain[0].clone();
                            tokio_chain(&first, depth - 1, &mut chain);
                        }
                        drop_chain(&mut chain);
                    }
                    Root::Open => {
                        let root = CancellationToken::new();
                        tokio_chain(&root, depth, &mut chain);
                        root.cancel();
                        drop_chain(&mut chain);
                    }
                    Root::Closed => {
                        tokio_chain(&canceled_token(), depth, &mut chain);
                        drop_chain(&mut chain);
                    }
                });
            });
        }
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// Go: DeepValueSameGoRoutine
// ---------------------------------------------------------------------------

/// Go's `DeepValueSameGoRoutine`: look up a value no layer holds through
/// `depth` value layers (a full walk to the root). No tokio-util counterpart.
fn deep_value(c: &mut Criterion) {
    let mut group = c.benchmark_group("deep_value");
    quick(&mut group);
    for depth in [10, 20, 30, 50, 100] {
        let mut ctx = Context::background();
        for layer in 0..depth {
            ctx = ctx.with_value(layer);
        }
        group.bench_function(BenchmarkId::new(GOCTX, format!("depth={depth}")), |b| {
            b.iter(|| assert!(black_box(&ctx).value::<Missing>().is_none()));
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// Child churn on one parent
// ---------------------------------------------------------------------------

/// Derive a child of one long-lived parent and drop it without cancelling
/// (the registration must be undone by the drop), serially and from 2, 4, 8
/// and 16 threads on the same parent (wall time per operation; on 2 cores the
/// larger counts oversubscribe, so threads are preempted inside operations).
fn child_create_drop(c: &mut Criterion) {
    let (parent, _keep_live) = Context::background().with_cancel();
    let token = CancellationToken::new();

    let mut group = c.benchmark_group("child_create_drop");
    quick(&mut group);
    group.bench_function(BenchmarkId::new(GOCTX, "serial"), |b| {
        b.iter(|| drop(black_box(parent.with_cancel())));
    });
    group.bench_function(BenchmarkId::new(TOKIO, "serial"), |b| {
        b.iter(|| drop(black_box(token.child_token())));
    });
    for threads in [2, 4, 8, 16] {
        let parameter = format!("threads={threads}");
        group.bench_function(BenchmarkId::new(GOCTX, &parameter), |b| {
            b.iter_custom(|iters| {
                run_parallel(threads, iters, |n| {
                    for _ in 0..n {
                        drop(black_box(parent.with_cancel()));
                    }
                })
            });
        });
        group.bench_function(BenchmarkId::new(TOKIO, &parameter), |b| {
            b.iter_custom(|iters| {
                run_parallel(threads, iters, |n| {
                    for _ in 0..n {
                        drop(black_box(token.child_token()));
                    }
                })
            });
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// Fan-out cancellation
// ---------------------------------------------------------------------------

/// `children` live children under one parent; only the parent's `cancel()`
/// is timed (building and dropping the tree is not).
fn fanout_cancel(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout_cancel");
    for children in [100, 10_000, 1_000_000] {
        if children >= 1_000_000 {
            // A set-up costs a few hundred milliseconds: one per sample.
            group
                .sampling_mode(SamplingMode::Flat)
                .warm_up_time(Duration::from_millis(1))
                .measurement_time(Duration::from_secs(1))
                .sample_size(10);
        } else {
            slow(&mut group, Duration::from_secs(2));
        }
        let parameter = format!("children={children}");
        group.bench_function(BenchmarkId::new(GOCTX, &parameter), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let (parent, cancel) = Context::background().with_cancel();
                    let tree: Vec<Context> =
                        (0..children).map(|_| parent.with_cancel().0).collect();
                    let start = Instant::now();
                    cancel.cancel();
                    timed += start.elapsed();
                    assert!(tree.iter().all(Context::is_done));
                }
                timed
            });
        });
        group.bench_function(BenchmarkId::new(TOKIO, &parameter), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let parent = CancellationToken::new();
                    let tree: Vec<CancellationToken> =
                        (0..children).map(|_| parent.child_token()).collect();
                    let start = Instant::now();
                    parent.cancel();
                    timed += start.elapsed();
                    assert!(tree.iter().all(CancellationToken::is_cancelled));
                }
                timed
            });
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// Go: WithTimeout
// ---------------------------------------------------------------------------

/// The timeout of every context in `with_timeout`: far enough out that none
/// expires during a run.
const HOUR: Duration = Duration::from_secs(3600);

/// Contexts one `with_timeout` iteration derives and cancels (Go's `wcf`).
const TIMEOUTS_PER_ITERATION: usize = 10;

/// The timer load of Go's `WithTimeout`: `contexts` live contexts with a 1 h
/// timeout, derived from `background()` by [`PARALLELISM`] threads. As in
/// Go only the cancel handles are kept (the deadline keeps each context
/// armed); the caller cancels them when done.
fn timer_load(contexts: usize) -> Vec<Vec<CancelFunc>> {
    thread::scope(|scope| {
        let builders: Vec<_> = (0..PARALLELISM)
            .map(|index| {
                let count = share(contexts as u64, PARALLELISM, index);
                scope.spawn(move || {
                    (0..count)
                        .map(|_| Context::background().with_timeout(HOUR).1)
                        .collect::<Vec<CancelFunc>>()
                })
            })
            .collect();
        builders
            .into_iter()
            .map(|builder| builder.join().expect("load thread panicked"))
            .collect()
    })
}

/// Go's `WithTimeout`: with `concurrency` other 1 h timeouts pending (built
/// once per parameter, untimed, and cancelled after it), 2 threads each
/// derive 10 contexts with `with_timeout(1 h)` from `background()`, keeping
/// the cancel handles only, then cancel the 10. One iteration is the 10
/// derivations and 10 cancellations, as in Go.
///
/// No tokio-util contender: `CancellationToken` has no deadline (a timeout
/// there is a separate `tokio::time` timer on a runtime).
fn with_timeout(c: &mut Criterion) {
    let mut group = c.benchmark_group("with_timeout");
    quick(&mut group);
    for concurrency in [40, 4000, 400_000] {
        let load = timer_load(concurrency);
        let id = BenchmarkId::new(GOCTX, format!("concurrency={concurrency}"));
        group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                run_parallel(PARALLELISM, iters, |n| {
                    let mut cancels: Vec<CancelFunc> = Vec::with_capacity(TIMEOUTS_PER_ITERATION);
                    for _ in 0..n {
                        for _ in 0..TIMEOUTS_PER_ITERATION {
                            let (ctx, cancel) = Context::background().with_timeout(HOUR);
                            drop(black_box(ctx));
                            cancels.push(cancel);
                        }
                        for cancel in cancels.drain(..) {
                            cancel.cancel();
                        }
                    }
                })
            });
        });
        for cancel in load.iter().flatten() {
            cancel.cancel();
        }
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// After-func callbacks
// ---------------------------------------------------------------------------

/// Runs of the `after_func` callbacks (a static, so that the closures
/// capture nothing and cost no reference count).
static FIRED: AtomicU64 = AtomicU64::new(0);

/// Spins until [`FIRED`] has moved past `before`.
fn await_fired(before: u64) {
    while FIRED.load(Ordering::Acquire) == before {
        std::hint::spin_loop();
    }
}

/// Go's `AfterFunc`, which has no benchmark in Go's suite.
///
/// * `goctx/register_stop`: `after_func` on a live long-lived context, then
///   `stop()` (which wins): register and withdraw one callback.
/// * `tokio_util/register_stop`: the nearest tokio-util operation, which
///   registers interest in a live token and withdraws it: a fresh
///   `cancelled()` future polled once with a no-op waker (it is pending, its
///   waker now registered), then dropped.
/// * `goctx/register_fire`: derive a child of a live parent, register a
///   callback on it, cancel the child, and spin until the callback has run on
///   goctx's worker thread: register + cancel + dispatch + run.
/// * `tokio_util/spawn_fire`: tokio-util has no callback registration; the
///   idiom for "run `f` on another thread once the token is cancelled" is a
///   task on a runtime (2 workers here) that awaits `cancelled()` and then
///   runs `f`. One iteration derives a child token, spawns that task,
///   cancels the child and spins until `f` has run. It is named apart from
///   `register_fire` because the work differs: the task is allocated and
///   scheduled, and since the cancellation follows the spawn at once, the
///   task usually finds the token cancelled on its first poll (no waker is
///   registered or woken).
fn after_func(c: &mut Criterion) {
    let (ctx, _keep_live) = Context::background().with_cancel();
    let token = CancellationToken::new();
    let mut cx = TaskContext::from_waker(Waker::noop());

    let mut group = c.benchmark_group("after_func");
    quick(&mut group);
    let fired_before = FIRED.load(Ordering::Acquire);
    group.bench_function(BenchmarkId::new(GOCTX, "register_stop"), |b| {
        after_func_register_stop(b, &ctx);
    });
    assert_none_fired_since(fired_before);
    group.bench_function(BenchmarkId::new(TOKIO, "register_stop"), |b| {
        cancelled_register_drop(b, &token, &mut cx);
    });
    group.bench_function(BenchmarkId::new(GOCTX, "register_fire"), |b| {
        b.iter(|| {
            let before = FIRED.load(Ordering::Acquire);
            let (child, cancel) = ctx.with_cancel();
            let after = black_box(&child).after_func(|| {
                FIRED.fetch_add(1, Ordering::Release);
            });
            cancel.cancel();
            await_fired(before);
            drop(after);
        });
    });
    thread_round_trip(&mut group);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("tokio runtime");
    group.bench_function(BenchmarkId::new(TOKIO, "spawn_fire"), |b| {
        b.iter(|| {
            let before = FIRED.load(Ordering::Acquire);
            let child = token.child_token();
            let waiter = child.clone();
            drop(runtime.spawn(async move {
                waiter.cancelled().await;
                FIRED.fetch_add(1, Ordering::Release);
            }));
            child.cancel();
            await_fired(before);
        });
    });
    group.finish();
}

/// Not goctx: this thread writes a cache line another thread spins on and
/// waits for its answer on the same line: one hand-off to another core and
/// back, the floor of any row that hands work to another thread and waits
/// for it (`after_func/register_fire`, whose Go twin runs the callback's
/// goroutine on the waiting thread). Measured in the group of the row it
/// bounds, right after it: on a VM it depends on where the host runs the two
/// vCPUs at the time.
fn thread_round_trip(group: &mut BenchmarkGroup<'_, WallTime>) {
    /// A cache line of its own for the ping-pong.
    #[repr(align(128))]
    struct Line(AtomicU64);
    const STOP: u64 = u64::MAX;

    let line = Arc::new(Line(AtomicU64::new(0)));
    let partner = {
        let line = Arc::clone(&line);
        thread::spawn(move || {
            loop {
                let seen = line.0.load(Ordering::Acquire);
                if seen == STOP {
                    return;
                }
                // Odd: a ping to answer.
                if seen % 2 == 1 {
                    line.0.store(seen + 1, Ordering::Release);
                }
                std::hint::spin_loop();
            }
        })
    };
    let mut ping = 1;
    group.bench_function(BenchmarkId::new("std", "thread_round_trip"), |b| {
        b.iter(|| {
            line.0.store(ping, Ordering::Release);
            while line.0.load(Ordering::Acquire) != ping + 1 {
                std::hint::spin_loop();
            }
            ping += 2;
        });
    });
    line.0.store(STOP, Ordering::Release);
    partner.join().expect("the round-trip partner panicked");
}

/// `after_func` on a live `ctx`, then `stop()` (which wins).
fn after_func_register_stop(b: &mut Bencher<'_, WallTime>, ctx: &Context) {
    b.iter(|| {
        let after = black_box(ctx).after_func(|| {
            FIRED.fetch_add(1, Ordering::Release);
        });
        assert!(black_box(&after).stop());
    });
}

/// tokio-util's nearest to registering and withdrawing a callback: a fresh
/// `cancelled()` future polled once (pending), then dropped.
fn cancelled_register_drop(
    b: &mut Bencher<'_, WallTime>,
    token: &CancellationToken,
    cx: &mut TaskContext<'_>,
) {
    b.iter(|| {
        let cancelled = pin!(black_box(token).cancelled());
        assert!(cancelled.poll(cx).is_pending());
    });
}

/// No callback ran since `FIRED` read `before` (the stopped ones must not).
fn assert_none_fired_since(before: u64) {
    assert_eq!(
        FIRED.load(Ordering::Acquire),
        before,
        "a stopped callback ran"
    );
}

/// `on_done` (API rule 14), with its nearest peers in the same group so
/// one run compares them:
///
/// * `goctx/register_stop`: `on_done` on a live long-lived context, then
///   `stop()` (which wins): register and withdraw one synchronous callback.
/// * `goctx/after_func_register_stop`: the same with `after_func` (the
///   `after_func` group's row, repeated here for a same-run comparison).
/// * `tokio_util/register_stop`: a fresh `cancelled()` future polled once
///   with a no-op waker, then dropped (as in the `after_func` group).
/// * `goctx/register_fire`: derive a child of a live parent, register a
///   callback on it, cancel the child: `f` has run when `cancel()` returns
///   (no thread hop, nothing to wait for), then drop the guard.
fn on_done(c: &mut Criterion) {
    let (ctx, _keep_live) = Context::background().with_cancel();
    let token = CancellationToken::new();
    let mut cx = TaskContext::from_waker(Waker::noop());

    let mut group = c.benchmark_group("on_done");
    quick(&mut group);
    let fired_before = FIRED.load(Ordering::Acquire);
    group.bench_function(BenchmarkId::new(GOCTX, "register_stop"), |b| {
        b.iter(|| {
            let on_done = black_box(&ctx).on_done(|| {
                FIRED.fetch_add(1, Ordering::Release);
            });
            assert!(black_box(&on_done).stop());
        });
    });
    group.bench_function(BenchmarkId::new(GOCTX, "after_func_register_stop"), |b| {
        after_func_register_stop(b, &ctx);
    });
    assert_none_fired_since(fired_before);
    group.bench_function(BenchmarkId::new(TOKIO, "register_stop"), |b| {
        cancelled_register_drop(b, &token, &mut cx);
    });
    group.bench_function(BenchmarkId::new(GOCTX, "register_fire"), |b| {
        b.iter(|| {
            let before = FIRED.load(Ordering::Relaxed);
            let (child, cancel) = ctx.with_cancel();
            let on_done = black_box(&child).on_done(|| {
                FIRED.fetch_add(1, Ordering::Relaxed);
            });
            cancel.cancel();
            // Ran inside `cancel()`: nothing to wait for.
            assert_ne!(FIRED.load(Ordering::Relaxed), before);
            drop(on_done);
        });
    });
    group.finish();
}

/// `merge` (API rule 15) against `with_cancel`, in one group:
///
/// * `goctx/with_cancel_drop`: derive a child of a live long-lived context
///   and drop it (the context and its `CancelFunc`).
/// * `goctx/merge_drop`: merge a live long-lived context with another live
///   long-lived one and drop the result: the derivation, the registration
///   with `other`, and the withdrawal from both at release.
/// * `goctx/merge_never_done_drop`: the same with `other` a context that
///   can never be done (`background()`): nothing to register there.
/// * `goctx/other_cancel_is_done`: merge, cancel `other` (a fresh child of
///   a long-lived context each time), check the merged context is done:
///   the cost class of a child's cancellation.
fn merge(c: &mut Criterion) {
    let (ctx, _keep_ctx) = Context::background().with_cancel();
    let (other, _keep_other) = Context::background().with_cancel();
    let never = Context::background();

    let mut group = c.benchmark_group("merge");
    quick(&mut group);
    group.bench_function(BenchmarkId::new(GOCTX, "with_cancel_drop"), |b| {
        b.iter(|| drop(black_box(&ctx).with_cancel()));
    });
    group.bench_function(BenchmarkId::new(GOCTX, "merge_drop"), |b| {
        b.iter(|| drop(black_box(&ctx).merge(black_box(&other))));
    });
    group.bench_function(BenchmarkId::new(GOCTX, "merge_never_done_drop"), |b| {
        b.iter(|| drop(black_box(&ctx).merge(black_box(&never))));
    });
    group.bench_function(BenchmarkId::new(GOCTX, "other_cancel_is_done"), |b| {
        b.iter(|| {
            let (other, cancel_other) = other.with_cancel();
            let (merged, _cancel) = ctx.merge(&other);
            cancel_other.cancel();
            assert!(black_box(&merged).is_done());
        });
    });
    group.finish();
}

// ---------------------------------------------------------------------------
// Wake-up latency: parked threads and async tasks
// ---------------------------------------------------------------------------

/// One cancellation whose wake-up is measured, abstracted over goctx,
/// tokio-util and the std-only baseline.
trait Signal {
    /// What a waiter holds.
    type Waiter: Send + 'static;
    fn new() -> Self;
    fn waiter(&self) -> Self::Waiter;
    fn fire(&self);
    /// Blocks the calling thread until `waiter` sees the cancellation.
    fn block(waiter: Self::Waiter);
}

/// A [`Signal`] that async tasks can also wait on.
trait AsyncSignal: Signal {
    /// A future that resolves when `waiter` sees the cancellation.
    fn wait_async(waiter: Self::Waiter) -> impl Future<Output = ()> + Send + Unpin + 'static;
}

struct GoctxSignal(Context, CancelFunc);

impl Signal for GoctxSignal {
    type Waiter = Done<'static>;
    fn new() -> Self {
        let (ctx, cancel) = Context::background().with_cancel();
        GoctxSignal(ctx, cancel)
    }
    fn waiter(&self) -> Done<'static> {
        self.0.done_owned()
    }
    fn fire(&self) {
        self.1.cancel();
    }
    fn block(waiter: Done<'static>) {
        waiter.wait();
    }
}

impl AsyncSignal for GoctxSignal {
    fn wait_async(waiter: Done<'static>) -> impl Future<Output = ()> + Send + Unpin + 'static {
        waiter
    }
}

struct TokioSignal(CancellationToken);

impl Signal for TokioSignal {
    type Waiter = CancellationToken;
    fn new() -> Self {
        TokioSignal(CancellationToken::new())
    }
    fn waiter(&self) -> CancellationToken {
        self.0.clone()
    }
    fn fire(&self) {
        self.0.cancel();
    }
    fn block(waiter: CancellationToken) {
        block_on(waiter.cancelled());
    }
}

impl AsyncSignal for TokioSignal {
    fn wait_async(waiter: CancellationToken) -> impl Future<Output = ()> + Send + Unpin + 'static {
        Box::pin(waiter.cancelled_owned())
    }
}

/// The reference point for `cancel_wake`: no context at all, only what std
/// offers for "wake these parked threads". A waiter adds its `Thread` handle
/// to a list and parks in a loop until a flag is set (the loop absorbs
/// spurious wake-ups and unpark tokens left over from an earlier round);
/// `fire` sets the flag, then calls `Thread::unpark` on each listed thread
/// in turn. The time goctx's `cancel()` takes beyond this is what its
/// wake-all costs over one plain unpark per waiter.
///
/// As with `Done::wait`, a waiter registers when it starts waiting, in the
/// untimed settle period before `fire`; the timed `fire` only adds one
/// uncontended lock to read the list. The lock also covers a late waiter:
/// one that registers after `fire` has read the list then finds the flag
/// already set and does not park.
struct UnparkSignal(Arc<UnparkList>);

struct UnparkList {
    fired: AtomicBool,
    parked: Mutex<Vec<Thread>>,
}

impl Signal for UnparkSignal {
    type Waiter = Arc<UnparkList>;
    fn new() -> Self {
        UnparkSignal(Arc::new(UnparkList {
            fired: AtomicBool::new(false),
            parked: Mutex::new(Vec::new()),
        }))
    }
    fn waiter(&self) -> Arc<UnparkList> {
        Arc::clone(&self.0)
    }
    fn fire(&self) {
        self.0.fired.store(true, Ordering::Release);
        for thread in self.0.parked.lock().expect("no waiter panicked").iter() {
            thread.unpark();
        }
    }
    fn block(waiter: Arc<UnparkList>) {
        waiter
            .parked
            .lock()
            .expect("no waiter panicked")
            .push(thread::current());
        while !waiter.fired.load(Ordering::Acquire) {
            thread::park();
        }
    }
}

/// Unparks a thread: the waker of [`block_on`].
struct Unparker(Thread);

impl Wake for Unparker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on this thread, parking between polls: how a
/// plain thread waits on a tokio-util token (the same park/unpark that
/// goctx's `Done::wait` uses).
fn block_on<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unparker(thread::current())));
    let mut cx = TaskContext::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        thread::park();
    }
}

/// Where the measuring thread and the waiters meet in one round.
struct Rendezvous {
    waiters: usize,
    /// Waiters about to wait (threads) or registered (tasks).
    ready: AtomicUsize,
    /// Waiters that have resumed and recorded their time.
    finished: AtomicUsize,
    /// The latest resume time, in nanoseconds since `base`.
    latest: AtomicU64,
    base: Instant,
    /// The measuring thread, unparked when a count reaches `waiters`.
    measurer: Thread,
}

impl Rendezvous {
    fn new(waiters: usize) -> Arc<Rendezvous> {
        Arc::new(Rendezvous {
            waiters,
            ready: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            latest: AtomicU64::new(0),
            base: Instant::now(),
            measurer: thread::current(),
        })
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn reset(&self) {
        self.ready.store(0, Ordering::SeqCst);
        self.finished.store(0, Ordering::SeqCst);
        self.latest.store(0, Ordering::SeqCst);
    }

    fn arrive(&self) {
        if self.ready.fetch_add(1, Ordering::SeqCst) + 1 == self.waiters {
            self.measurer.unpark();
        }
    }

    /// Called by a waiter right after it resumes.
    fn resumed(&self) {
        self.latest.fetch_max(self.now(), Ordering::SeqCst);
        if self.finished.fetch_add(1, Ordering::SeqCst) + 1 == self.waiters {
            self.measurer.unpark();
        }
    }

    fn await_count(&self, count: &AtomicUsize) {
        while count.load(Ordering::SeqCst) < self.waiters {
            thread::park();
        }
    }

    /// Lets the waiters settle into their parked state, fires and returns
    /// the time from just before `fire` until the last waiter resumed.
    fn measure(&self, signal: &impl Signal) -> Duration {
        self.await_count(&self.ready);
        thread::sleep(Duration::from_micros(50 + 4 * self.waiters as u64));
        let start = self.now();
        signal.fire();
        self.await_count(&self.finished);
        Duration::from_nanos(self.latest.load(Ordering::SeqCst) - start)
    }
}

/// Long-lived threads that each wait on one waiter per round.
struct WaiterThreads<S: Signal> {
    rendezvous: Arc<Rendezvous>,
    senders: Vec<mpsc::Sender<S::Waiter>>,
    threads: Vec<JoinHandle<()>>,
}

impl<S: Signal> WaiterThreads<S> {
    fn new(waiters: usize) -> Self {
        let rendezvous = Rendezvous::new(waiters);
        let (senders, threads) = (0..waiters)
            .map(|_| {
                let (sender, receiver) = mpsc::channel::<S::Waiter>();
                let rendezvous = Arc::clone(&rendezvous);
                let thread = thread::spawn(move || {
                    while let Ok(waiter) = receiver.recv() {
                        rendezvous.arrive();
                        S::block(waiter);
                        rendezvous.resumed();
                    }
                });
                (sender, thread)
            })
            .unzip();
        WaiterThreads {
            rendezvous,
            senders,
            threads,
        }
    }

    fn run(&self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            self.rendezvous.reset();
            let signal = S::new();
            for sender in &self.senders {
                sender.send(signal.waiter()).expect("waiter thread alive");
            }
            total += self.rendezvous.measure(&signal);
        }
        total
    }
}

impl<S: Signal> Drop for WaiterThreads<S> {
    fn drop(&mut self) {
        self.senders.clear();
        for thread in self.threads.drain(..) {
            thread.join().expect("waiter thread panicked");
        }
    }
}

/// Tells the rendezvous once the wrapped future has returned `Pending` for
/// the first time, i.e. its waker is registered.
struct Registered<F> {
    future: F,
    rendezvous: Arc<Rendezvous>,
    signalled: bool,
}

impl<F: Future + Unpin> Future for Registered<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.future).poll(cx);
        if poll.is_pending() && !this.signalled {
            this.signalled = true;
            this.rendezvous.arrive();
        }
        poll
    }
}

fn run_async<S: AsyncSignal>(
    runtime: &tokio::runtime::Runtime,
    rendezvous: &Arc<Rendezvous>,
    iters: u64,
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        rendezvous.reset();
        let signal = S::new();
        for _ in 0..rendezvous.waiters {
            let registered = Registered {
                future: S::wait_async(signal.waiter()),
                rendezvous: Arc::clone(rendezvous),
                signalled: false,
            };
            let rendezvous = Arc::clone(rendezvous);
            runtime.spawn(async move {
                registered.await;
                rendezvous.resumed();
            });
        }
        total += rendezvous.measure(&signal);
    }
    total
}

/// `waiters` threads parked in a blocking wait; the time from just before
/// `cancel()` until the last of them has resumed. The waiter threads are
/// spawned once per benchmark and reused. tokio-util's waiters block with a
/// minimal park/unpark `block_on` over `cancelled()`. `unpark_baseline`
/// ([`UnparkSignal`]) runs the same rounds with a flag and one
/// `Thread::unpark` per waiter in place of a cancellation: the floor that
/// goctx's wake-all is to be compared with.
fn cancel_wake(c: &mut Criterion) {
    let mut group = c.benchmark_group("cancel_wake");
    slow(&mut group, Duration::from_secs(2));
    for waiters in [1, 8, 64] {
        let parameter = format!("waiters={waiters}");
        let pool = WaiterThreads::<GoctxSignal>::new(waiters);
        group.bench_function(BenchmarkId::new(GOCTX, &parameter), |b| {
            b.iter_custom(|iters| pool.run(iters));
        });
        drop(pool);
        let pool = WaiterThreads::<TokioSignal>::new(waiters);
        group.bench_function(BenchmarkId::new(TOKIO, &parameter), |b| {
            b.iter_custom(|iters| pool.run(iters));
        });
        drop(pool);
        let pool = WaiterThreads::<UnparkSignal>::new(waiters);
        group.bench_function(BenchmarkId::new(UNPARK_BASELINE, &parameter), |b| {
            b.iter_custom(|iters| pool.run(iters));
        });
    }
    group.finish();
}

/// `waiters` tasks on a 2-worker tokio runtime awaiting `ctx.done()` /
/// `token.cancelled_owned()`; the time from just before `cancel()` (on a
/// thread outside the runtime) until the last task has resumed.
fn cancel_wake_async(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("tokio runtime");
    let mut group = c.benchmark_group("cancel_wake_async");
    slow(&mut group, Duration::from_secs(2));
    for waiters in [1, 8, 64] {
        let parameter = format!("waiters={waiters}");
        let rendezvous = Rendezvous::new(waiters);
        group.bench_function(BenchmarkId::new(GOCTX, &parameter), |b| {
            b.iter_custom(|iters| run_async::<GoctxSignal>(&runtime, &rendezvous, iters));
        });
        group.bench_function(BenchmarkId::new(TOKIO, &parameter), |b| {
            b.iter_custom(|iters| run_async::<TokioSignal>(&runtime, &rendezvous, iters));
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// Floors
// ---------------------------------------------------------------------------

/// Not goctx: what two kinds of row cannot go below on this machine, in the
/// same run (as `cancel_wake/unpark_baseline` is for the wake-ups).
///
/// * `std/arc_new_clone_drop`: an `Arc` of a 128-byte payload (a plain
///   cancel node's size) made, cloned and both handles dropped: one
///   allocation, its free and two reference counts — what any
///   reference-counted child context costs at least. It bounds
///   `cancel_tree/depth=1/root=background` (a child of `background()`
///   derived and dropped), and Go's twin of that row, which pays no free
///   and no count (it costs the same with `GOMAXPROCS=1`, its collector
///   then on the same core), is compared with it in `benches/README.md`.
/// * `std/cached_counted_node`: the least a counted child costs at all: a
///   128-byte block from a one-slot thread-local cache, written whole (two
///   handles counted), the first handle given back with a locked decrement
///   and the last with a load, the block back to the cache — 30
///   instructions, no bookkeeping. What `depth=1/root=background` pays
///   beyond it is goctx's node: its parent, anchor and deadline, its
///   lists, stripes and cache bounds, and the checks of a release.
/// * `std/instant_now`: one `Instant::now()`, the clock reading every
///   `with_timeout` takes (Go's `WithTimeout` takes three): an iteration of
///   a `with_timeout` row reads it 10 times on each of its 2 threads.
///
/// The third floor, `after_func/std/thread_round_trip`, is measured inside
/// the `after_func` group, right after the row it bounds
/// ([`thread_round_trip`]).
fn floor(c: &mut Criterion) {
    let mut group = c.benchmark_group("floor");
    quick(&mut group);
    group.bench_function(BenchmarkId::new("std", "arc_new_clone_drop"), |b| {
        b.iter(|| {
            let node = Arc::new(black_box([0_u64; 16]));
            let handle = Arc::clone(&node);
            drop(black_box(node));
            drop(black_box(handle));
        });
    });
    group.bench_function(BenchmarkId::new("std", "cached_counted_node"), |b| {
        b.iter(|| {
            let mut node = BARE_CACHE
                .with(Cell::take)
                .unwrap_or_else(|| Box::new(BareNode::new()));
            *node = BareNode::new();
            let node = black_box(node);
            // The first handle: a count of one would be the last.
            if node.handles.load(Ordering::Acquire) != 1 {
                node.handles.fetch_sub(1, Ordering::Release);
            }
            let node = black_box(node);
            // The last handle: a count of one is ours alone.
            if node.handles.load(Ordering::Acquire) == 1 {
                BARE_CACHE.with(|cache| cache.set(Some(node)));
            }
        });
    });
    group.bench_function(BenchmarkId::new("std", "instant_now"), |b| {
        b.iter(Instant::now);
    });
    group.finish();
}

/// `floor/std/cached_counted_node`'s node: a handle count and the rest of
/// a plain cancel node's 128 bytes.
#[repr(C)]
struct BareNode {
    handles: AtomicU32,
    links: u32,
    words: [usize; 15],
}

impl BareNode {
    fn new() -> BareNode {
        BareNode {
            handles: AtomicU32::new(2),
            links: 1,
            words: [0; 15],
        }
    }
}

thread_local! {
    /// `floor/std/cached_counted_node`'s one-slot cache.
    static BARE_CACHE: Cell<Option<Box<BareNode>>> = const { Cell::new(None) };
}

criterion_group! {
    name = benches;
    // Plots cost several seconds of analysis per benchmark (kernel density
    // estimates over the bootstrap); without them the whole suite fits in
    // about five minutes on 2 cores.
    config = Criterion::default().without_plots();
    targets =
        err,
        check_canceled,
        context_cancel_done,
        select_loop,
        common_parent_cancel,
        cancel_tree,
        deep_value,
        child_create_drop,
        fanout_cancel,
        with_timeout,
        after_func,
        on_done,
        merge,
        cancel_wake,
        cancel_wake_async,
        floor
}
criterion_main!(benches);
