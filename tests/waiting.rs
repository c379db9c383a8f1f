//! Blocking waits on `Done`: `wait`, `wait_timeout` and `wait_deadline`
//! from plain threads.
//!
//! Bounds here are deadlock guards (a waiter not woken within `QUIESCENT`
//! fails the test), never checks on how fast anything is.

use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use goctx::{Context, Error};

/// The longest any test is willing to wait before calling it a lost wake-up.
/// A guard against hangs, not a speed bound (miri runs ~1000× slower).
// A hang guard only: generous, because valgrind and sanitizers run 20-100x
// slower and one thread at a time (CI, issue 12).
const QUIESCENT: Duration = Duration::from_secs(if cfg!(miri) { 600 } else { 120 });

#[derive(Debug, PartialEq)]
struct RequestId(u32);

/// Cancels from another thread after a few milliseconds.
fn cancel_soon(cancel: goctx::CancelFunc) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        thread::sleep(Duration::from_millis(5));
        cancel.cancel();
    })
}

#[test]
fn cancel_wakes_every_blocked_thread() {
    const THREADS: usize = 16;
    let (root, cancel) = Context::background().with_cancel();
    let (child, _cancel_child) = root.with_cancel();
    let value_child = root.with_value(RequestId(1));
    let start = Arc::new(Barrier::new(THREADS + 1));
    let (woken, all_woken) = mpsc::channel();
    for i in 0..THREADS {
        let ctx = [&root, &child, &value_child][i % 3].clone();
        let start = Arc::clone(&start);
        let woken = woken.clone();
        thread::spawn(move || {
            start.wait();
            if i % 2 == 0 {
                ctx.done().wait();
            } else {
                assert!(ctx.done().wait_timeout(QUIESCENT), "waiter {i} timed out");
            }
            woken.send((i, ctx.err())).expect("the test is listening");
        });
    }
    start.wait();
    // Give the waiters a moment to park; they are correct either way.
    thread::sleep(Duration::from_millis(10));

    cancel.cancel();

    for _ in 0..THREADS {
        let (i, err) = all_woken
            .recv_timeout(QUIESCENT)
            .expect("a blocked thread was never woken");
        assert_eq!(err, Some(Error::Canceled), "waiter {i}");
    }
}

#[test]
fn wait_timeout_is_false_on_timeout_and_true_once_done() {
    let (ctx, cancel) = Context::background().with_cancel();
    let done = ctx.done();

    let timeout = Duration::from_millis(5);
    let started = Instant::now();
    assert!(!done.wait_timeout(timeout));
    assert!(started.elapsed() >= timeout, "gave up before the timeout");
    assert!(!done.wait_deadline(Instant::now() + timeout));
    assert!(
        !done.wait_deadline(started),
        "a past deadline on a live context"
    );

    let canceller = cancel_soon(cancel);
    assert!(
        done.wait_timeout(QUIESCENT),
        "the cancel never woke the wait"
    );
    canceller.join().expect("cancel does not panic");

    assert!(done.wait_timeout(Duration::ZERO));
    assert!(
        done.wait_deadline(started),
        "a past deadline on a done context"
    );
    assert_eq!(ctx.err(), Some(Error::Canceled));
}

#[test]
fn unbounded_limits_wait_for_cancel() {
    let (ctx, cancel) = Context::background().with_cancel();
    let far_future = Instant::now() + Duration::from_secs(u32::MAX as u64);
    let (results, all_results) = mpsc::channel();
    let waiters = [
        thread::spawn({
            let done = ctx.done_owned();
            let results = results.clone();
            move || results.send(("wait_timeout(MAX)", done.wait_timeout(Duration::MAX)))
        }),
        thread::spawn({
            let done = ctx.done_owned();
            move || results.send(("wait_deadline(far)", done.wait_deadline(far_future)))
        }),
    ];
    let canceller = cancel_soon(cancel);

    for _ in 0..waiters.len() {
        let (which, result) = all_results
            .recv_timeout(QUIESCENT)
            .expect("an unbounded wait was never woken (or panicked)");
        assert!(result, "{which} returned false");
    }
    for waiter in waiters {
        waiter
            .join()
            .expect("waiter does not panic")
            .expect("the test is listening");
    }
    canceller.join().expect("cancel does not panic");

    // And on a context that is already done they return at once.
    assert!(ctx.done().wait_timeout(Duration::MAX));
    assert!(ctx.done().wait_deadline(far_future));
}

#[test]
fn zero_timeout_on_a_running_context_is_false() {
    let (ctx, _cancel) = Context::background().with_cancel();
    for ctx in [
        ctx.clone(),
        ctx.with_value(RequestId(1)),
        Context::background(),
        Context::todo(),
    ] {
        assert!(!ctx.done().wait_timeout(Duration::ZERO), "{ctx}");
        assert!(!ctx.done().wait_deadline(Instant::now()), "{ctx}");
    }
}

#[test]
fn many_timed_out_waits_then_cancel_still_wakes() {
    let (ctx, cancel) = Context::background().with_cancel();
    let done = ctx.done();
    for _ in 0..if cfg!(miri) { 50 } else { 10_000 } {
        assert!(!done.wait_timeout(Duration::ZERO));
    }
    // Waits long enough to register before giving up, from several threads.
    let timed_out: Vec<_> = (0..2)
        .map(|_| {
            let done = ctx.done_owned();
            thread::spawn(move || {
                for _ in 0..if cfg!(miri) { 10 } else { 500 } {
                    assert!(!done.wait_timeout(Duration::from_micros(20)));
                }
            })
        })
        .collect();
    for _ in 0..if cfg!(miri) { 10 } else { 500 } {
        assert!(!done.wait_timeout(Duration::from_micros(20)));
    }
    for thread in timed_out {
        thread.join().expect("timed waits do not panic");
    }

    let (woken, final_woken) = mpsc::channel();
    let final_waiter = thread::spawn({
        let done = ctx.done_owned();
        move || {
            done.wait();
            woken.send(()).expect("the test is listening");
        }
    });
    thread::sleep(Duration::from_millis(5));

    cancel.cancel();

    final_woken
        .recv_timeout(QUIESCENT)
        .expect("the final waiter was never woken");
    final_waiter.join().expect("waiter does not panic");
    assert!(done.wait_timeout(Duration::ZERO));
}

#[test]
fn short_timed_waits_racing_cancel_all_finish() {
    const THREADS: usize = 4;
    let (ctx, cancel) = Context::background().with_cancel();
    let (finished, all_finished) = mpsc::channel();
    for _ in 0..THREADS {
        let done = ctx.done_owned();
        let finished = finished.clone();
        thread::spawn(move || {
            while !done.wait_timeout(Duration::from_micros(50)) {
                // The wait parks; yield too, so no one-thread-at-a-time
                // scheduler (valgrind, miri) starves the canceller.
                thread::yield_now();
            }
            finished.send(()).expect("the test is listening");
        });
    }
    thread::sleep(Duration::from_millis(5));

    cancel.cancel();

    for _ in 0..THREADS {
        all_finished
            .recv_timeout(QUIESCENT)
            .expect("a timed waiter never saw the cancel");
    }
}

#[test]
fn done_of_value_and_without_cancel_children() {
    let (parent, cancel) = Context::background().with_cancel();
    let value_child = parent.with_value(RequestId(7));
    let detached = value_child.without_cancel();
    let (detached_child, cancel_detached_child) = detached.with_cancel();

    let waiter = thread::spawn({
        let value_child = value_child.clone();
        move || value_child.done().wait_timeout(QUIESCENT)
    });
    cancel.cancel();
    assert!(
        waiter.join().expect("waiter does not panic"),
        "the parent's cancel never woke a waiter on its value child"
    );
    assert_eq!(value_child.err(), Some(Error::Canceled));

    // The detached branch never hears of the parent's cancel.
    assert!(!detached.done().wait_timeout(Duration::from_millis(2)));
    assert!(!detached.done().is_done());
    assert!(!detached_child.done().wait_timeout(Duration::from_millis(2)));
    assert_eq!(detached.value::<RequestId>(), Some(&RequestId(7)));

    // Only its own cancel ends it.
    let waiter = thread::spawn({
        let done = detached_child.done_owned();
        move || done.wait_timeout(QUIESCENT)
    });
    cancel_detached_child.cancel();
    assert!(waiter.join().expect("waiter does not panic"));
    assert!(!detached.is_done());
}

/// Blocked threads of many contexts share the few sequence words they park
/// on (64, chosen by the node's address; more contexts than words here, so
/// some share one): a cancellation wakes every thread parked on its word,
/// and those of other contexts must go back to sleep. Contexts are
/// cancelled one at a time, each only after the previous one's waiter has
/// reported, so any report but the expected one is a wait that returned
/// before its context was done.
#[test]
fn waiters_of_contexts_sharing_a_sequence_word_wake_only_for_their_own() {
    let contexts = if cfg!(miri) { 6 } else { 96 };
    let (reported, reports) = mpsc::channel();
    let mut cancels = Vec::new();
    for i in 0..contexts {
        let (ctx, cancel) = Context::background().with_cancel();
        cancels.push(cancel);
        let reported = reported.clone();
        thread::spawn(move || {
            if i % 2 == 0 {
                ctx.done().wait();
            } else {
                assert!(ctx.done().wait_timeout(QUIESCENT), "waiter {i} timed out");
            }
            reported
                .send((i, ctx.is_done()))
                .expect("the test is listening");
        });
    }
    for (i, cancel) in cancels.into_iter().enumerate() {
        cancel.cancel();
        let report = reports
            .recv_timeout(QUIESCENT)
            .expect("a waiter never woke");
        assert_eq!(
            report,
            (i, true),
            "only the cancelled context's waiter returns"
        );
    }
}
