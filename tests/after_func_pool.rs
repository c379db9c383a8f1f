//! The after-func worker pool under load (API.md rule 19): blocking
//! callbacks start at most the documented default cap of threads, queue
//! beyond it and all run; a deadline expires on time while the pool is
//! saturated; callbacks never run on the cancelling thread or the timer
//! thread. Regression tests for issue 8, failure 2: at bdad359 10,000
//! blocking callbacks started 10,003 threads and a 5 ms deadline waited for
//! the timer thread to spawn them.
//!
//! Only the public API of bdad359 is used, with the pool's default
//! settings, so these tests build and run at that commit. Tests that
//! saturate the pool or count threads take `EXCLUSIVE` for writing; the
//! others take it for reading. Thread counts come from `/proc`, so those
//! tests are Linux-only; under miri (whose `/proc` is the interpreter's)
//! they are skipped.
// Under miri (and off Linux) only the last test runs.
#![cfg_attr(any(miri, not(target_os = "linux")), allow(dead_code, unused_imports))]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use goctx::{AfterFunc, Context};

mod support;

use support::{exclusive, shared};

/// The longest any test is willing to wait before calling it a hang; not a
/// speed bound.
const QUIESCENT: Duration = Duration::from_secs(if cfg!(miri) { 600 } else { 30 });
/// The documented default cap on after-func worker threads.
const DEFAULT_CAP: usize = 512;
/// Blocking callbacks dispatched at once (the figure).
const CALLBACKS: usize = if cfg!(miri) { 40 } else { 10_000 };
/// Threads a test process may have besides the workers: the test harness
/// and its test threads (blocked on `EXCLUSIVE`), the timer thread, the
/// pool's dispatcher, a sampler, and workers of the previous keep-alive
/// period that are still returning.
const OTHER_THREADS: usize = 24;

/// Polls `cond` (backing off) until it holds or `QUIESCENT` passes.
fn eventually(cond: impl Fn() -> bool) -> bool {
    support::eventually_within(QUIESCENT, cond)
}

/// Whether a sanitizer (which reserves terabytes of shadow memory) or
/// valgrind (which maps its tool into the process) runs this test.
#[cfg(target_os = "linux")]
fn instrumented() -> (bool, bool) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let vm_kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmSize:"))
        .and_then(|size| size.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let valgrind = maps.contains("vgpreload") || maps.contains("valgrind");
    (vm_kb > 1 << 30, valgrind)
}

/// The process's thread count.
#[cfg(target_os = "linux")]
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .count()
}

/// Samples the thread count every millisecond until dropped; `peak()` is
/// the highest count seen.
#[cfg(target_os = "linux")]
struct ThreadPeak {
    peak: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    sampler: Option<thread::JoinHandle<()>>,
}

#[cfg(target_os = "linux")]
impl ThreadPeak {
    fn start() -> ThreadPeak {
        let peak = Arc::new(AtomicUsize::new(threads()));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = thread::spawn({
            let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
            move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(threads(), Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(1));
                }
            }
        });
        ThreadPeak {
            peak,
            stop,
            sampler: Some(sampler),
        }
    }

    fn peak(&self) -> usize {
        self.peak
            .fetch_max(threads(), Ordering::Relaxed)
            .max(threads())
    }
}

#[cfg(target_os = "linux")]
impl Drop for ThreadPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(sampler) = self.sampler.take() {
            let _ = sampler.join();
        }
    }
}

/// `count` callbacks on one context, each counting its runs in `runs` and
/// `started`, then blocking until `gate` can be read (the test holds it
/// for writing).
fn blocking_callbacks(
    ctx: &Context,
    count: usize,
    gate: &Arc<RwLock<()>>,
    runs: &Arc<Vec<AtomicUsize>>,
    started: &Arc<AtomicUsize>,
) -> Vec<AfterFunc> {
    (0..count)
        .map(|i| {
            let (gate, runs, started) = (Arc::clone(gate), Arc::clone(runs), Arc::clone(started));
            ctx.after_func(move || {
                runs[i].fetch_add(1, Ordering::SeqCst);
                started.fetch_add(1, Ordering::SeqCst);
                drop(gate.read().unwrap_or_else(|e| e.into_inner()));
            })
        })
        .collect()
}

fn counters(count: usize) -> Arc<Vec<AtomicUsize>> {
    Arc::new((0..count).map(|_| AtomicUsize::new(0)).collect())
}

// Issue 8, failure 2: 10,000 callbacks that block until released never
// push the process above the default cap of 512 workers plus a few other
// threads (bdad359: 10,003 threads), at most the cap's worth run at once,
// and once released every one of them runs exactly once.
#[cfg(all(target_os = "linux", not(miri)))]
#[test]
fn blocking_callbacks_stay_under_the_worker_cap() {
    let _exclusive = exclusive();
    if instrumented().1 {
        // valgrind allows 500 threads (`--max-threads`), under the cap.
        eprintln!("skipped under valgrind");
        return;
    }
    let gate = Arc::new(RwLock::new(()));
    let runs = counters(CALLBACKS);
    let started = Arc::new(AtomicUsize::new(0));
    let (ctx, cancel) = Context::background().with_cancel();
    let afters = blocking_callbacks(&ctx, CALLBACKS, &gate, &runs, &started);
    let peak = ThreadPeak::start();
    let closed = gate.write().unwrap();
    cancel.cancel();
    assert!(
        eventually(|| started.load(Ordering::SeqCst) >= DEFAULT_CAP),
        "the pool never ran {DEFAULT_CAP} callbacks at once"
    );
    // Time for an unbounded pool to overshoot.
    thread::sleep(Duration::from_millis(300));
    let running = started.load(Ordering::SeqCst);
    let peak_threads = peak.peak();
    drop(closed);
    eprintln!("{CALLBACKS} blocking callbacks: {running} ran at once, peak {peak_threads} threads");
    assert!(
        peak_threads <= DEFAULT_CAP + OTHER_THREADS,
        "{peak_threads} threads for {CALLBACKS} blocking callbacks (cap {DEFAULT_CAP})"
    );
    assert!(
        running <= DEFAULT_CAP,
        "{running} callbacks ran at once (cap {DEFAULT_CAP})"
    );
    assert!(
        eventually(|| started.load(Ordering::SeqCst) == CALLBACKS),
        "only {} of {CALLBACKS} queued callbacks ran",
        started.load(Ordering::SeqCst)
    );
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(run.load(Ordering::SeqCst), 1, "callback {i}");
    }
    assert!(peak.peak() <= DEFAULT_CAP + OTHER_THREADS);
    for after in &afters {
        assert!(!after.stop());
    }
}

// Issue 8, failure 2: while the timer thread had to start a thread for each
// of 10,000 blocking callbacks, a 5 ms deadline fired 248 ms late on
// bdad359. Now the timer thread never touches the pool: a deadline armed
// right after the dispatch, and one armed once the pool is saturated and
// callbacks queue, both fire within a generous bound.
#[cfg(all(target_os = "linux", not(miri)))]
#[test]
fn deadline_is_on_time_while_the_pool_is_saturated() {
    const TIMEOUT: Duration = Duration::from_millis(5);
    let _exclusive = exclusive();
    let (sanitizer, valgrind) = instrumented();
    if valgrind {
        // valgrind allows 500 threads (`--max-threads`), under the cap, and
        // runs them one at a time.
        eprintln!("skipped under valgrind");
        return;
    }
    // Far above the few milliseconds this takes now, far below bdad359's
    // lateness on the same machine (893 ms, see the report of issue 8);
    // sanitizers slow thread starts and the timer thread alike.
    let late = Duration::from_millis(if sanitizer { 1000 } else { 150 });
    let gate = Arc::new(RwLock::new(()));
    let runs = counters(CALLBACKS);
    let started = Arc::new(AtomicUsize::new(0));
    let (ctx, cancel) = Context::background().with_cancel();
    let afters = blocking_callbacks(&ctx, CALLBACKS, &gate, &runs, &started);
    // The timer thread runs before the storm.
    let (warm, _warm_cancel) = Context::background().with_timeout(Duration::from_millis(1));
    assert!(warm.done().wait_timeout(QUIESCENT));
    let closed = gate.write().unwrap();

    cancel.cancel();
    let armed = Instant::now();
    let (d, _cancel_d) = Context::background().with_timeout(TIMEOUT);
    assert!(d.done().wait_timeout(QUIESCENT), "deadline never fired");
    let during_dispatch = armed.elapsed().saturating_sub(TIMEOUT);

    assert!(eventually(
        || started.load(Ordering::SeqCst) >= DEFAULT_CAP.min(CALLBACKS)
    ));
    let armed = Instant::now();
    let (d, _cancel_d) = Context::background().with_timeout(TIMEOUT);
    assert!(d.done().wait_timeout(QUIESCENT), "deadline never fired");
    let while_saturated = armed.elapsed().saturating_sub(TIMEOUT);
    drop(closed);
    eprintln!(
        "5 ms deadline late by {during_dispatch:?} during the dispatch of {CALLBACKS} \
         blocking callbacks, {while_saturated:?} with the pool saturated"
    );
    assert!(
        during_dispatch < late,
        "a 5 ms deadline fired {during_dispatch:?} late during the dispatch"
    );
    assert!(
        while_saturated < late,
        "a 5 ms deadline fired {while_saturated:?} late while the pool was saturated"
    );
    assert!(eventually(|| started.load(Ordering::SeqCst) == CALLBACKS));
    drop(afters);
}

// API.md rules 8 and 19: a callback runs neither on the thread that cancels
// (a plain cancel, a parent's cancel) nor on the timer thread (a deadline
// expiry), whether a worker is idle or not.
#[test]
fn callbacks_never_run_on_the_canceller_or_the_timer() {
    let _shared = shared();
    let (ran_on, seen) = mpsc::channel::<(&'static str, thread::ThreadId, Option<String>)>();
    let record = |what: &'static str| {
        let ran_on = ran_on.clone();
        move || {
            let me = thread::current();
            ran_on
                .send((what, me.id(), me.name().map(str::to_owned)))
                .unwrap();
        }
    };
    let mut afters = Vec::new();
    let mut cancellers = Vec::new();
    for round in 0..3 {
        let (ctx, cancel) = Context::background().with_cancel();
        afters.push(ctx.after_func(record("cancel")));
        let (parent, cancel_parent) = Context::background().with_cancel();
        let child = parent.with_value(round);
        afters.push(child.after_func(record("parent cancel")));
        let (expiring, _cancel) = Context::background().with_timeout(Duration::from_millis(2));
        afters.push(expiring.after_func(record("deadline")));
        // Cancel from a thread of our own, so its id is known.
        let canceller = thread::spawn(move || {
            cancel.cancel();
            cancel_parent.cancel();
            thread::current().id()
        })
        .join()
        .unwrap();
        cancellers.push(canceller);
        assert!(expiring.done().wait_timeout(QUIESCENT));
    }
    for _ in 0..afters.len() {
        let (what, id, name) = seen.recv_timeout(QUIESCENT).expect("a callback never ran");
        assert!(
            !cancellers.contains(&id),
            "a callback after a {what} ran on the cancelling thread"
        );
        assert_ne!(
            name.as_deref(),
            Some("goctx-timer"),
            "a callback after a {what} ran on the timer thread"
        );
        assert_ne!(id, thread::current().id());
    }
}
