//! The after-func pool's settings (API.md rule 19): the worker cap set with
//! `set_max_after_func_workers` holds, and idle workers exit after the
//! keep-alive set with `set_after_func_keep_alive`. These use API added for
//! issue 8, so they do not build at bdad359.
//!
//! The settings are process-wide: every test takes `EXCLUSIVE` for writing
//! and sets what it needs. Worker threads are counted by name in `/proc`
//! (Linux only; skipped under miri, whose `/proc` is the interpreter's).
#![cfg(all(target_os = "linux", not(miri)))]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use goctx::Context;

mod support;

use support::exclusive;

/// The longest any test is willing to wait before calling it a hang.
const QUIESCENT: Duration = Duration::from_secs(30);

/// Polls `cond` (backing off) until it holds or `QUIESCENT` passes.
fn eventually(cond: impl Fn() -> bool) -> bool {
    support::eventually_within(QUIESCENT, cond)
}

/// Live after-func worker threads (`goctx-after-func`, which the kernel
/// truncates to 15 bytes).
fn workers() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == "goctx-after-fun")
        .count()
}

/// Runs `count` callbacks that block until `gate` is released; returns how
/// many started and the handles.
fn blockers(
    count: usize,
    gate: &Arc<RwLock<()>>,
) -> (Arc<AtomicUsize>, Arc<AtomicUsize>, Vec<goctx::AfterFunc>) {
    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let (ctx, cancel) = Context::background().with_cancel();
    let afters = (0..count)
        .map(|_| {
            let (gate, started, finished) = (
                Arc::clone(gate),
                Arc::clone(&started),
                Arc::clone(&finished),
            );
            ctx.after_func(move || {
                started.fetch_add(1, Ordering::SeqCst);
                drop(gate.read().unwrap_or_else(|e| e.into_inner()));
                finished.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    cancel.cancel();
    (started, finished, afters)
}

// Idle workers exit after the keep-alive: eight callbacks that run at once
// start eight workers; once they return, the workers are gone within a
// generous multiple of a 50 ms keep-alive, and a later callback still runs
// (on a new worker).
#[test]
fn idle_workers_exit_after_the_keep_alive() {
    const BLOCKERS: usize = 8;
    let _exclusive = exclusive();
    goctx::set_max_after_func_workers(goctx::DEFAULT_MAX_AFTER_FUNC_WORKERS);
    // Workers left by another test exit first.
    goctx::set_after_func_keep_alive(Duration::from_millis(50));
    assert!(eventually(|| workers() == 0), "idle workers never exited");

    let gate = Arc::new(RwLock::new(()));
    let closed = gate.write().unwrap();
    let (started, finished, _afters) = blockers(BLOCKERS, &gate);
    assert!(eventually(|| started.load(Ordering::SeqCst) == BLOCKERS));
    let busy = workers();
    drop(closed);
    assert_eq!(busy, BLOCKERS, "one worker per blocking callback");
    assert!(eventually(|| finished.load(Ordering::SeqCst) == BLOCKERS));
    let idle_since = Instant::now();
    assert!(
        eventually(|| workers() == 0),
        "{} idle workers still alive {:?} after a 50 ms keep-alive",
        workers(),
        idle_since.elapsed()
    );

    let (ctx, cancel) = Context::background().with_cancel();
    let (ran, ran_rx) = std::sync::mpsc::channel();
    let _after = ctx.after_func(move || ran.send(()).unwrap());
    cancel.cancel();
    ran_rx
        .recv_timeout(QUIESCENT)
        .expect("no callback ran after the workers exited");
    goctx::set_after_func_keep_alive(goctx::DEFAULT_AFTER_FUNC_KEEP_ALIVE);
}

// A configured cap of 4: 50 blocking callbacks run 4 at a time (the rest
// queue) on at most 4 workers; raising the cap to 6 starts two more at once;
// once released, all 50 run exactly once.
#[test]
fn configured_cap_holds_and_can_be_raised() {
    const CALLBACKS: usize = 50;
    let _exclusive = exclusive();
    // Short, so that the workers are gone soon after (for the other test).
    goctx::set_after_func_keep_alive(Duration::from_millis(50));
    goctx::set_max_after_func_workers(4);
    assert_eq!(goctx::max_after_func_workers(), 4);
    // Workers above the new cap (left by another test) retire as they
    // finish; idle ones are reused, never more than 4 of them busy.
    let gate = Arc::new(RwLock::new(()));
    let closed = gate.write().unwrap();
    let (started, finished, afters) = blockers(CALLBACKS, &gate);
    assert!(eventually(|| started.load(Ordering::SeqCst) == 4));
    thread::sleep(Duration::from_millis(100));
    assert_eq!(started.load(Ordering::SeqCst), 4, "more than the cap ran");

    goctx::set_max_after_func_workers(6);
    assert!(eventually(|| started.load(Ordering::SeqCst) == 6));
    thread::sleep(Duration::from_millis(100));
    assert_eq!(
        started.load(Ordering::SeqCst),
        6,
        "more than the raised cap ran"
    );
    drop(closed);

    assert!(eventually(|| finished.load(Ordering::SeqCst) == CALLBACKS));
    assert_eq!(started.load(Ordering::SeqCst), CALLBACKS);
    for after in &afters {
        assert!(!after.stop());
    }
    goctx::set_max_after_func_workers(goctx::DEFAULT_MAX_AFTER_FUNC_WORKERS);
    goctx::set_after_func_keep_alive(goctx::DEFAULT_AFTER_FUNC_KEEP_ALIVE);
}
