//! `Context::after_func` (API.md semantics 8 and 10): ports of Go's
//! AfterFunc tests (`x_test.go`; `afterfunc_test.go` tests parents of a
//! foreign type with their own `AfterFunc` method, which has no goctx
//! counterpart), then what the contract adds: contexts that can never be
//! done, `stop` racing `cancel`, panicking and blocking callbacks, the
//! registration a pending callback keeps, and what stopping leaves behind.
//!
//! Every time bound is a guard against a hang, never a speed check. A test
//! that checks that `f` does *not* run waits a little and looks.
//!
//! The global allocator counts live bytes for the memory test; that test
//! takes `EXCLUSIVE` for writing, every other test for reading.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use goctx::{AfterFunc, Context, Error};

/// The longest any test is willing to wait before calling it a hang; not a
/// speed bound (miri runs ~1000× slower).
// A hang guard only: generous, because valgrind and sanitizers run 20-100x
// slower and one thread at a time (CI, issue 12).
const QUIESCENT: Duration = Duration::from_secs(if cfg!(miri) { 600 } else { 120 });
/// How long a test waits to see that something does not happen.
const GRACE: Duration = Duration::from_millis(20);
/// Go's `veryLongDuration` (1000 h).
const VERY_LONG: Duration = Duration::from_secs(1000 * 3600);

mod support;

use support::{exclusive, live_bytes, shared};

#[global_allocator]
static GLOBAL: support::LiveBytes = support::LiveBytes;

#[derive(Debug)]
struct Wrapper;

/// Polls `cond` until it holds or `QUIESCENT` passes.
fn eventually(cond: impl Fn() -> bool) -> bool {
    support::eventually_within(QUIESCENT, cond)
}

/// Ports of Go's AfterFunc tests in `x_test.go`.
mod go {
    use super::*;

    // Port of TestAfterFuncCalledAfterCancel.
    #[test]
    fn called_after_cancel() {
        let _shared = shared();
        let (ctx, cancel) = Context::background().with_cancel();
        let (ran, f_ran) = mpsc::channel();
        let stop = ctx.after_func({
            let ctx = ctx.clone();
            move || ran.send(ctx.err()).unwrap()
        });
        assert!(
            f_ran.recv_timeout(GRACE).is_err(),
            "f ran before the context was done"
        );
        cancel.cancel();
        let err = f_ran.recv_timeout(QUIESCENT).expect("f never ran");
        assert_eq!(err, Some(Error::Canceled), "f saw the context not done");
        assert!(!stop.stop(), "stop() after f started returned true");
        assert!(!stop.stop());
    }

    // Port of TestAfterFuncCalledAfterTimeout.
    #[test]
    fn called_after_timeout() {
        let _shared = shared();
        let (ctx, _cancel) = Context::background().with_timeout(Duration::from_millis(1));
        let (ran, f_ran) = mpsc::channel();
        let _stop = ctx.after_func({
            let ctx = ctx.clone();
            move || ran.send(ctx.err()).unwrap()
        });
        let err = f_ran.recv_timeout(QUIESCENT).expect("f never ran");
        assert_eq!(err, Some(Error::DeadlineExceeded));
    }

    // Port of TestAfterFuncCalledImmediately.
    #[test]
    fn called_immediately() {
        let _shared = shared();
        let (ctx, cancel) = Context::background().with_cancel();
        cancel.cancel();
        let (ran, f_ran) = mpsc::channel();
        let stop = ctx.after_func(move || ran.send(thread::current().id()).unwrap());
        let on = f_ran.recv_timeout(QUIESCENT).expect("f never ran");
        assert_ne!(
            on,
            thread::current().id(),
            "f ran on the registering thread"
        );
        assert!(!stop.stop());

        // Already expired, through a value layer.
        let (ctx, _cancel) = Context::background().with_timeout(Duration::ZERO);
        let (ran, f_ran) = mpsc::channel();
        let _stop = ctx
            .with_value(Wrapper)
            .after_func(move || ran.send(()).unwrap());
        f_ran.recv_timeout(QUIESCENT).expect("f never ran");
    }

    // Port of TestAfterFuncNotCalledAfterStop.
    #[test]
    fn not_called_after_stop() {
        let _shared = shared();
        let (ctx, cancel) = Context::background().with_cancel();
        let (ran, f_ran) = mpsc::channel();
        let stop = ctx.after_func(move || ran.send(()).unwrap());
        assert!(stop.stop(), "the first stop() did not stop a pending f");
        cancel.cancel();
        assert!(
            matches!(
                f_ran.recv_timeout(GRACE),
                Err(mpsc::RecvTimeoutError::Disconnected)
            ),
            "a stopped f ran, or was not dropped by stop()"
        );
        assert!(!stop.stop(), "a second stop() returned true");
    }

    // Port of TestAfterFuncCalledAsynchronously: `f` runs on a thread of
    // its own, and `cancel()` returns while `f` is still blocked (it is
    // released only after `cancel()` returned). Cancelled directly and
    // through a parent.
    #[test]
    fn called_asynchronously() {
        let _shared = shared();
        for through_parent in [false, true] {
            let (parent, cancel_parent) = Context::background().with_cancel();
            let (ctx, cancel) = parent.with_cancel();
            let (started, f_started) = mpsc::channel();
            let (release, released) = mpsc::channel::<()>();
            let (finished, f_finished) = mpsc::channel();
            let stop = ctx.after_func(move || {
                started.send(thread::current().id()).unwrap();
                // Bounded, so a broken runner cannot hang the test forever.
                let _ = released.recv_timeout(QUIESCENT);
                finished.send(()).unwrap();
            });
            let (returned, cancel_returned) = mpsc::channel();
            let canceller = thread::spawn(move || {
                if through_parent {
                    cancel_parent.cancel();
                } else {
                    cancel.cancel();
                }
                returned.send(thread::current().id()).unwrap();
            });
            let canceller_id = cancel_returned
                .recv_timeout(QUIESCENT)
                .expect("cancel() did not return while f was blocked");
            let f_thread = f_started.recv_timeout(QUIESCENT).expect("f never ran");
            assert_ne!(f_thread, canceller_id, "f ran on the cancelling thread");
            assert_ne!(f_thread, thread::current().id());
            assert!(
                f_finished.try_recv().is_err(),
                "f finished before it was released"
            );
            release.send(()).unwrap();
            f_finished
                .recv_timeout(QUIESCENT)
                .expect("f never finished");
            canceller.join().unwrap();
            assert!(!stop.stop());
        }
    }

    // Port of TestCancelRemoves, the AfterFunc round. An after-func is not
    // a child context here (it waits in the context's waiter set), so the
    // registered children do not change; stopping withdraws it.
    #[test]
    fn after_func_is_no_child_and_stop_withdraws_it() {
        let _shared = shared();
        let (parent, cancel) = Context::background().with_cancel();
        assert_eq!(parent.registered_children(), 0);
        let stop = parent.after_func(|| {});
        assert_eq!(parent.registered_children(), 0);
        assert!(stop.stop());
        assert_eq!(parent.registered_children(), 0);
        assert_eq!(parent.linked_children(), 0);
        cancel.cancel();
        assert!(!stop.stop());
    }
}

// API.md 8: on a context that can never be done, `f` never runs and the
// first `stop()` returns true, later ones false.
#[test]
fn stop_on_contexts_that_are_never_done() {
    let _shared = shared();
    let (parent, cancel_parent) = Context::background().with_cancel();
    let (done_parent, cancel_done) = Context::background().with_cancel();
    cancel_done.cancel();
    let never = [
        Context::background(),
        Context::todo(),
        Context::background().with_value(Wrapper),
        parent.without_cancel(),
        parent
            .with_value(Wrapper)
            .without_cancel()
            .with_value(Wrapper),
        done_parent.without_cancel(),
    ];
    let ran = Arc::new(AtomicUsize::new(0));
    let mut unstopped = Vec::new();
    for ctx in &never {
        let stopped = ctx.after_func({
            let ran = Arc::clone(&ran);
            move || {
                ran.fetch_add(1, Ordering::SeqCst);
            }
        });
        assert!(stopped.stop(), "first stop() on {ctx}");
        assert!(!stopped.stop(), "second stop() on {ctx}");
        assert!(!stopped.stop(), "third stop() on {ctx}");
        // One more that is never stopped.
        unstopped.push(ctx.after_func({
            let ran = Arc::clone(&ran);
            move || {
                ran.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    cancel_parent.cancel();
    thread::sleep(GRACE);
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "f ran on a never-done context"
    );
    for (ctx, after) in never.iter().zip(&unstopped) {
        assert!(after.stop(), "late first stop() on {ctx}");
        assert!(!after.stop(), "late second stop() on {ctx}");
    }
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

// API.md 8: `stop` racing the cancellation from several threads: `f` runs
// iff no `stop` returned true, at most one `stop` returns true, and `f`
// never runs twice.
#[test]
fn stop_racing_cancel() {
    const ROUNDS: usize = if cfg!(miri) { 5 } else { 1000 };
    const STOPPERS: usize = 3;
    let _shared = shared();
    let ran: Arc<Vec<AtomicUsize>> = Arc::new((0..ROUNDS).map(|_| AtomicUsize::new(0)).collect());
    let ran_early = Arc::new(AtomicUsize::new(0));
    let mut stopped = vec![0usize; ROUNDS];
    for (round, stopped) in stopped.iter_mut().enumerate() {
        let (parent, cancel_parent) = Context::background().with_cancel();
        let (ctx, cancel) = parent.with_cancel();
        let after = ctx.after_func({
            let (ran, ran_early, ctx) = (Arc::clone(&ran), Arc::clone(&ran_early), ctx.clone());
            move || {
                if !ctx.is_done() {
                    ran_early.fetch_add(1, Ordering::SeqCst);
                }
                ran[round].fetch_add(1, Ordering::SeqCst);
            }
        });
        let start = Barrier::new(STOPPERS + 1);
        *stopped = thread::scope(|s| {
            let stoppers: Vec<_> = (0..STOPPERS)
                .map(|_| {
                    s.spawn(|| {
                        start.wait();
                        after.stop()
                    })
                })
                .collect();
            // This thread cancels, as soon as the stoppers are released or
            // a little later: the spread covers both orders.
            start.wait();
            for _ in 0..(round % 16) * 500 {
                std::hint::spin_loop();
            }
            // Alternate the cancellation's source.
            if round % 2 == 0 {
                cancel.cancel();
            } else {
                cancel_parent.cancel();
            }
            stoppers
                .into_iter()
                .map(|h| usize::from(h.join().unwrap()))
                .sum()
        });
        assert!(
            *stopped <= 1,
            "round {round}: {stopped} stop() calls returned true"
        );
        assert!(ctx.is_done());
    }
    // Every f that was not stopped runs.
    let settled =
        eventually(|| (0..ROUNDS).all(|i| ran[i].load(Ordering::SeqCst) + stopped[i] >= 1));
    // And nothing more happens afterwards.
    thread::sleep(GRACE);
    let mut wins = 0;
    for (round, &stopped) in stopped.iter().enumerate() {
        let runs = ran[round].load(Ordering::SeqCst);
        assert!(runs <= 1, "round {round}: f ran {runs} times");
        assert_eq!(
            runs + stopped,
            1,
            "round {round}: f ran {runs} times and stop() returned true {stopped} times \
             (settled: {settled})"
        );
        wins += stopped;
    }
    assert_eq!(ran_early.load(Ordering::SeqCst), 0, "f ran before done");
    eprintln!("stop_racing_cancel: stop won {wins} of {ROUNDS} rounds, f ran in the rest");
}

// API.md 8: registering while the context is being cancelled: `f` runs
// exactly once, after the context is done, whichever wins.
#[test]
fn registration_racing_cancel() {
    const ROUNDS: usize = if cfg!(miri) { 3 } else { 200 };
    let _shared = shared();
    let runs = Arc::new(AtomicUsize::new(0));
    let early = Arc::new(AtomicUsize::new(0));
    let mut afters = Vec::new();
    for _ in 0..ROUNDS {
        let (ctx, cancel) = Context::background().with_cancel();
        let start = Barrier::new(2);
        let after = thread::scope(|s| {
            s.spawn(|| {
                start.wait();
                cancel.cancel();
            });
            start.wait();
            ctx.after_func({
                let (runs, early, ctx) = (Arc::clone(&runs), Arc::clone(&early), ctx.clone());
                move || {
                    if !ctx.is_done() {
                        early.fetch_add(1, Ordering::SeqCst);
                    }
                    runs.fetch_add(1, Ordering::SeqCst);
                }
            })
        });
        afters.push(after);
    }
    assert!(
        eventually(|| runs.load(Ordering::SeqCst) >= ROUNDS),
        "only {} of {ROUNDS} callbacks ran",
        runs.load(Ordering::SeqCst)
    );
    thread::sleep(GRACE);
    assert_eq!(runs.load(Ordering::SeqCst), ROUNDS, "a callback ran twice");
    assert_eq!(early.load(Ordering::SeqCst), 0, "f ran before done");
    for after in &afters {
        assert!(!after.stop());
    }
}

// API.md 8: whatever cancels the context first (its own cancel, its
// parent's, its deadline), `f` runs exactly once.
#[test]
fn f_runs_once_whatever_cancels() {
    const ROUNDS: usize = if cfg!(miri) { 3 } else { 200 };
    let _shared = shared();
    let runs = Arc::new(AtomicUsize::new(0));
    for _ in 0..ROUNDS {
        let (parent, cancel_parent) = Context::background().with_cancel();
        let (ctx, cancel) = parent.with_timeout(Duration::from_micros(200));
        let _after = ctx.with_value(Wrapper).after_func({
            let runs = Arc::clone(&runs);
            move || {
                runs.fetch_add(1, Ordering::SeqCst);
            }
        });
        let start = Barrier::new(2);
        thread::scope(|s| {
            s.spawn(|| {
                start.wait();
                cancel_parent.cancel();
            });
            start.wait();
            cancel.cancel();
        });
    }
    assert!(
        eventually(|| runs.load(Ordering::SeqCst) >= ROUNDS),
        "only {} of {ROUNDS} callbacks ran",
        runs.load(Ordering::SeqCst)
    );
    thread::sleep(GRACE);
    assert_eq!(runs.load(Ordering::SeqCst), ROUNDS, "a callback ran twice");
}

// API.md 8: many callbacks on one context, some stopped: each of the others
// runs once, none of the stopped ones.
#[test]
fn many_callbacks_on_one_context() {
    const N: usize = if cfg!(miri) { 20 } else { 1000 };
    let _shared = shared();
    let (ctx, cancel) = Context::background().with_cancel();
    let (child, _cancel_child) = ctx.with_value(Wrapper).with_cancel();
    let runs: Arc<Vec<AtomicUsize>> = Arc::new((0..N).map(|_| AtomicUsize::new(0)).collect());
    let afters: Vec<AfterFunc> = (0..N)
        .map(|i| {
            let runs = Arc::clone(&runs);
            let on = if i % 3 == 0 { &child } else { &ctx };
            on.after_func(move || {
                runs[i].fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    for after in afters.iter().step_by(2) {
        assert!(after.stop());
    }
    cancel.cancel();
    let expected = |i: usize| usize::from(i % 2 == 1);
    assert!(
        eventually(|| (0..N).all(|i| runs[i].load(Ordering::SeqCst) >= expected(i))),
        "not every unstopped callback ran"
    );
    thread::sleep(GRACE);
    for (i, after) in afters.iter().enumerate() {
        assert_eq!(runs[i].load(Ordering::SeqCst), expected(i), "callback {i}");
        assert!(!after.stop(), "callback {i}");
    }
}

// API.md 8: a callback may register callbacks and cancel contexts that
// have callbacks of their own; all of them run.
#[test]
fn callbacks_can_register_callbacks_and_cancel() {
    let _shared = shared();
    let (ran, f_ran) = mpsc::channel();
    let (first, cancel_first) = Context::background().with_cancel();
    let (second, cancel_second) = Context::background().with_cancel();
    let _on_second = second.after_func({
        let ran = ran.clone();
        move || ran.send("second, cancelled by a callback").unwrap()
    });
    let _on_first = first.after_func({
        let first = first.clone();
        move || {
            // `first` is done: this one is dispatched at once.
            let nested = first.after_func(move || ran.send("nested").unwrap());
            assert!(!nested.stop());
            cancel_second.cancel();
        }
    });
    cancel_first.cancel();
    let mut heard: Vec<_> = (0..2)
        .map(|_| f_ran.recv_timeout(QUIESCENT).expect("a callback never ran"))
        .collect();
    heard.sort_unstable();
    assert_eq!(heard, ["nested", "second, cancelled by a callback"]);
    assert_eq!(second.err(), Some(Error::Canceled));
}

// API.md 8: dropping the `AfterFunc` does not stop the callback.
#[test]
fn dropping_the_handle_does_not_stop() {
    let _shared = shared();
    let (ctx, cancel) = Context::background().with_cancel();
    let (ran, f_ran) = mpsc::channel();
    drop(ctx.after_func(move || ran.send(()).unwrap()));
    cancel.cancel();
    f_ran.recv_timeout(QUIESCENT).expect("f never ran");

    // Nor on a deadline context whose every other handle is gone.
    let (ctx, cancel) = Context::background().with_timeout(Duration::from_millis(5));
    let (ran, f_ran) = mpsc::channel();
    drop(ctx.after_func(move || ran.send(()).unwrap()));
    drop((ctx, cancel));
    f_ran.recv_timeout(QUIESCENT).expect("f never ran");
}

// API.md 8: a panicking `f` breaks no later callback, no other callback of
// the same context, no cancellation and no deadline.
#[test]
fn panicking_callbacks_break_nothing() {
    let _shared = shared();
    let (tx, rx) = mpsc::channel();
    let (a, cancel_a) = Context::background().with_cancel();
    let panicking: Vec<_> = (0..4)
        .map(|_| a.after_func(|| panic!("deliberate panic in an after_func (tests/after_func.rs)")))
        .collect();
    let _same = a.after_func({
        let tx = tx.clone();
        move || tx.send("same context").unwrap()
    });
    // The panics happen elsewhere: cancel() returns normally.
    cancel_a.cancel();
    // On a context that is already done, and on one that expires.
    let _done = a.after_func(|| panic!("deliberate panic in an after_func (tests/after_func.rs)"));
    let (expiring, _ce) = Context::background().with_timeout(Duration::from_millis(2));
    let _expiring =
        expiring.after_func(|| panic!("deliberate panic in an after_func (tests/after_func.rs)"));

    let mut heard = vec![
        rx.recv_timeout(QUIESCENT)
            .expect("a callback beside panicking ones never ran"),
    ];
    assert!(expiring.done().wait_timeout(QUIESCENT));

    // Afterwards: a new callback, a deadline, and a callback on it.
    let (b, cancel_b) = Context::background().with_cancel();
    let _later = b.after_func({
        let tx = tx.clone();
        move || tx.send("later context").unwrap()
    });
    let (deadline, _cd) = Context::background().with_timeout(Duration::from_millis(5));
    let _on_deadline = deadline.after_func(move || tx.send("deadline").unwrap());
    cancel_b.cancel();
    for _ in 0..2 {
        heard.push(
            rx.recv_timeout(QUIESCENT)
                .expect("a callback after panicking ones never ran"),
        );
    }
    heard.sort_unstable();
    assert_eq!(heard, ["deadline", "later context", "same context"]);
    assert!(
        deadline.done().wait_timeout(QUIESCENT),
        "deadline never fired"
    );
    assert_eq!(deadline.err(), Some(Error::DeadlineExceeded));
    for p in &panicking {
        assert!(!p.stop(), "a panicking f counts as started");
    }
}

// API.md 8: blocking callbacks (released after up to a few seconds) delay
// neither another callback nor a deadline expiry: both happen while every
// blocker is still blocked. No timing is asserted beyond that. One blocker
// follows a deadline expiry, so it must not be running on the timer.
#[test]
fn blocking_callbacks_delay_nothing() {
    const BLOCKERS: usize = 3;
    /// How long a blocker blocks unless released first: the generous bound
    /// within which the other callback and the deadline must happen.
    const BLOCK: Duration = Duration::from_secs(if cfg!(miri) { 300 } else { 3 });
    let _shared = shared();
    let released = Arc::new(AtomicUsize::new(0));
    let (started, blockers_started) = mpsc::channel();
    let mut releases = Vec::new();
    let (a, cancel_a) = Context::background().with_cancel();
    // One blocker runs after a deadline expiry, so it was dispatched by the
    // timer; the others after a cancel, two of them on the same context.
    let (expiring, _cancel_expiring) = Context::background().with_timeout(Duration::from_millis(1));
    let mut blockers = Vec::new();
    for i in 0..BLOCKERS {
        let (release, release_rx) = mpsc::channel::<()>();
        releases.push(release);
        let (started, released) = (started.clone(), Arc::clone(&released));
        let on = match i {
            0 => expiring.clone(),
            1 => a.clone(),
            _ => a.with_value(Wrapper),
        };
        blockers.push(on.after_func(move || {
            started.send(i).unwrap();
            let _ = release_rx.recv_timeout(BLOCK);
            released.fetch_add(1, Ordering::SeqCst);
        }));
    }
    cancel_a.cancel();
    // All blockers block at once: they did not wait for one another.
    for _ in 0..BLOCKERS {
        blockers_started
            .recv_timeout(QUIESCENT)
            .expect("a blocker never started");
    }
    assert_eq!(
        released.load(Ordering::SeqCst),
        0,
        "a blocker was released before all of them started: callbacks ran one after another"
    );

    // Another callback runs while they block.
    let (b, cancel_b) = Context::background().with_cancel();
    let (ran, other_ran) = mpsc::channel();
    let _other = b.after_func({
        let released = Arc::clone(&released);
        move || ran.send(released.load(Ordering::SeqCst)).unwrap()
    });
    cancel_b.cancel();
    let seen = other_ran
        .recv_timeout(QUIESCENT)
        .expect("other f never ran");
    assert_eq!(seen, 0, "another callback waited for a blocker");

    // A deadline expires, and its own callback runs, while they block.
    let (d, _cancel_d) = Context::background().with_timeout(Duration::from_millis(10));
    let (ran, deadline_f_ran) = mpsc::channel();
    let _on_deadline = d.after_func({
        let released = Arc::clone(&released);
        move || ran.send(released.load(Ordering::SeqCst)).unwrap()
    });
    assert!(d.done().wait_timeout(QUIESCENT), "deadline never fired");
    let at_expiry = released.load(Ordering::SeqCst);
    assert_eq!(at_expiry, 0, "the deadline waited for a blocker");
    assert_eq!(d.err(), Some(Error::DeadlineExceeded));
    let seen = deadline_f_ran
        .recv_timeout(QUIESCENT)
        .expect("the deadline's f never ran");
    assert_eq!(seen, 0, "the deadline's callback waited for a blocker");

    for release in releases {
        release.send(()).unwrap();
    }
    assert!(
        eventually(|| released.load(Ordering::SeqCst) == BLOCKERS),
        "blockers never finished"
    );
    for b in &blockers {
        assert!(!b.stop());
    }
}

// API.md 8 and 10: a held `AfterFunc` keeps its context registered with its
// ancestors, as a child context does: the callback runs when an ancestor is
// cancelled or its own deadline passes, even after every other handle was
// dropped; stopping it lets the context go. With a deadline on its path the
// pending callback keeps the context alive by itself (as Go's runtime timer
// does).
#[test]
fn pending_callback_keeps_its_context_registered() {
    let _shared = shared();
    let (parent, cancel_parent) = Context::background().with_cancel();
    let (ran, f_ran) = mpsc::channel();
    let mut pending = Vec::new();

    // A cancellable child, a value layer over one, and a deadline child.
    let (ctx, cancel) = parent.with_cancel();
    pending.push(ctx.after_func({
        let ran = ran.clone();
        move || ran.send("cancel child").unwrap()
    }));
    drop((ctx, cancel));
    let (ctx, cancel) = parent.with_cancel();
    let layered = ctx.with_value(Wrapper);
    pending.push(layered.after_func({
        let ran = ran.clone();
        move || ran.send("value layer").unwrap()
    }));
    drop((ctx, cancel, layered));
    let (ctx, cancel) = parent.with_timeout(VERY_LONG);
    pending.push(ctx.after_func({
        let ran = ran.clone();
        move || ran.send("deadline child").unwrap()
    }));
    drop((ctx, cancel));
    assert_eq!(
        parent.registered_children(),
        3,
        "dropped contexts with pending callbacks must stay registered"
    );

    // Stopping one lets its context go.
    let (ctx, cancel) = parent.with_cancel();
    let stopped = ctx.after_func({
        let ran = ran.clone();
        move || ran.send("stopped").unwrap()
    });
    drop((ctx, cancel));
    assert_eq!(parent.registered_children(), 4);
    assert!(stopped.stop());
    assert_eq!(parent.registered_children(), 3);

    cancel_parent.cancel();
    let mut heard: Vec<_> = (0..3)
        .map(|_| f_ran.recv_timeout(QUIESCENT).expect("a callback never ran"))
        .collect();
    heard.sort_unstable();
    assert_eq!(heard, ["cancel child", "deadline child", "value layer"]);
    assert!(
        f_ran.recv_timeout(GRACE).is_err(),
        "the stopped callback ran"
    );
    for after in &pending {
        assert!(!after.stop());
    }

    // Its own deadline, with every handle dropped: the timer still fires,
    // and the context leaves its parent afterwards.
    let (parent, _cancel_parent) = Context::background().with_cancel();
    let (ctx, cancel) = parent.with_timeout(Duration::from_millis(5));
    let (ran, f_ran) = mpsc::channel();
    let after = ctx.after_func(move || ran.send(()).unwrap());
    drop((ctx, cancel));
    f_ran
        .recv_timeout(QUIESCENT)
        .expect("f never ran at expiry");
    assert!(
        eventually(|| parent.registered_children() == 0),
        "the expired context stayed registered"
    );
    assert!(!after.stop());
    assert!(!parent.is_done());
}

/// Register and stop cycles on one context.
const CYCLES: usize = if cfg!(miri) { 100 } else { 100_000 };
/// Live bytes allowed above the baseline after the cycles: the few
/// withdrawn entries a waiter set keeps linked, and epoch bags. A leaked
/// entry per cycle would be several megabytes.
const SLACK: isize = 256 * 1024;

fn live() -> isize {
    live_bytes()
}

// API.md 8 and 9: stopping leaves nothing behind — no registration, no
// memory that grows with the number of stopped callbacks — and the context
// still cancels and runs a later callback.
#[test]
fn stopping_leaves_nothing_behind() {
    let _exclusive = exclusive();
    let (parent, _cancel_parent) = Context::background().with_cancel();
    let (ctx, cancel) = parent.with_cancel();
    let layered = ctx.with_value(Wrapper);
    let ran = Arc::new(AtomicBool::new(false));
    // Warm up: this thread's epoch handle, a few cycles.
    for _ in 0..if cfg!(miri) { 16 } else { 256 } {
        assert!(ctx.after_func(|| {}).stop());
    }
    for _ in 0..32 {
        crossbeam_epoch::pin().flush();
    }
    let baseline = live();

    for i in 0..CYCLES {
        let on = if i % 2 == 0 { &ctx } else { &layered };
        let after = on.after_func({
            let ran = Arc::clone(&ran);
            move || ran.store(true, Ordering::SeqCst)
        });
        assert!(after.stop(), "cycle {i}");
        if i % 1000 == 0 {
            assert!(!after.stop(), "cycle {i}");
        }
    }
    let after_cycles = live() - baseline;
    let give_up = Instant::now() + QUIESCENT;
    let mut above = after_cycles;
    while above >= SLACK && Instant::now() < give_up {
        for _ in 0..8 {
            crossbeam_epoch::pin().flush();
        }
        thread::sleep(Duration::from_millis(1));
        above = live() - baseline;
    }
    eprintln!(
        "stopping_leaves_nothing_behind: {CYCLES} register+stop cycles: {after_cycles:+} bytes \
         right after, {above:+} after flushing"
    );
    assert!(
        above < SLACK,
        "{above} bytes above the baseline after {CYCLES} register+stop cycles (slack {SLACK})"
    );
    assert_eq!(parent.registered_children(), 1);
    assert_eq!(ctx.registered_children(), 0);
    assert_eq!(ctx.linked_children(), 0);

    // The context still works.
    let (tx, rx) = mpsc::channel();
    let last = layered.after_func(move || tx.send(()).unwrap());
    cancel.cancel();
    rx.recv_timeout(QUIESCENT)
        .expect("the last callback never ran");
    assert!(!last.stop());
    thread::sleep(GRACE);
    assert!(!ran.load(Ordering::SeqCst), "a stopped callback ran");
    assert_eq!(parent.registered_children(), 0);
}

// API.md 10: once every handle — the `AfterFunc` included — is gone, a
// context without a deadline can never be done: it is freed, and its pending
// callback with it, unrun (found by the `ops` fuzz target as a leak).
#[test]
fn released_context_drops_its_pending_callback() {
    let _shared = shared();
    let (parent, cancel_parent) = Context::background().with_cancel();
    let (ran, f_ran) = mpsc::channel::<()>();
    let (ctx, cancel) = parent.with_cancel();
    let after = ctx.after_func(move || ran.send(()).unwrap());
    assert_eq!(parent.registered_children(), 1);
    drop((ctx, cancel, after));
    assert_eq!(parent.registered_children(), 0, "the context was not freed");
    // The closure (and its sender) was dropped with it.
    assert!(matches!(
        f_ran.recv_timeout(QUIESCENT),
        Err(mpsc::RecvTimeoutError::Disconnected)
    ));
    cancel_parent.cancel();
}
