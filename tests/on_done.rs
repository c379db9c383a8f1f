//! `Context::on_done` (API.md rule 14): a synchronous callback run by
//! whoever makes the context done, and its `OnDone` guard — the races of
//! `stop`/drop with the cancellation that runs `f`, waiting for a running
//! `f`, stopping from inside `f`, panicking callbacks, deadlines.
//!
//! Every time bound is a guard against a hang, never a speed check. A test
//! that checks that a drop waited for `f` makes `f` outlast the drop's call
//! by a sleep; a drop that did not wait would see `f` unfinished.
//! (Allocation counts are in tests/alloc_counts.rs.)

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, OnceLock, mpsc};
use std::thread;
use std::time::Duration;

use goctx::{Context, Error, OnDone};

/// A hang guard only (miri and valgrind run 20-1000× slower).
const QUIESCENT: Duration = Duration::from_secs(if cfg!(miri) { 600 } else { 120 });
/// How long `f` keeps running after it has signalled that it started.
const HOLD: Duration = Duration::from_millis(if cfg!(miri) { 200 } else { 50 });
/// Iterations of the real-thread races.
const ROUNDS: usize = if cfg!(miri) { 20 } else { 2000 };

fn counter() -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let n = Arc::new(AtomicUsize::new(0));
    (n.clone(), n)
}

#[test]
fn f_runs_inside_cancel_before_it_returns() {
    let (ctx, cancel) = Context::background().with_cancel();
    let (child, _child_cancel) = ctx.with_value(7u8).with_cancel();
    let on_thread = Arc::new(Mutex::new(None));
    let seen = on_thread.clone();
    let (ran, r) = counter();
    let _on_done = child.on_done(move || {
        *seen.lock().unwrap() = Some(thread::current().id());
        r.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    cancel.cancel();
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "f ran before cancel() returned"
    );
    assert_eq!(*on_thread.lock().unwrap(), Some(thread::current().id()));
    cancel.cancel();
    assert_eq!(ran.load(Ordering::SeqCst), 1, "exactly once");
}

#[test]
fn already_done_runs_at_once_on_the_caller() {
    let (ctx, cancel) = Context::background().with_cancel();
    cancel.cancel();
    let (ran, r) = counter();
    let on_done = ctx.on_done(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert!(!on_done.stop());
    // A derived context born done, through a value layer.
    let (child, _c) = ctx.with_value("v").with_cancel();
    let r = ran.clone();
    child
        .on_done(move || {
            r.fetch_add(1, Ordering::SeqCst);
        })
        .detach();
    assert_eq!(ran.load(Ordering::SeqCst), 2);
}

#[test]
fn never_done_context_never_runs_f() {
    for ctx in [
        Context::background(),
        Context::todo(),
        Context::background().with_value(1u32),
        {
            let (ctx, cancel) = Context::background().with_cancel();
            let detached = ctx.without_cancel();
            cancel.cancel();
            detached
        },
    ] {
        let dropped = Arc::new(AtomicBool::new(false));
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let flag = Flag(dropped.clone());
        let on_done = ctx.on_done(move || {
            let _flag = &flag;
            panic!("never runs");
        });
        assert!(dropped.load(Ordering::SeqCst), "f is dropped at once");
        assert!(
            on_done.stop(),
            "the first stop returns true, as AfterFunc's"
        );
        assert!(!on_done.stop());
        let on_done = ctx.on_done(|| panic!("never runs"));
        on_done.detach();
    }
}

#[test]
fn stop_before_cancel_prevents_f() {
    let (ctx, cancel) = Context::background().with_cancel();
    let on_done = ctx.on_done(|| panic!("stopped first"));
    assert!(on_done.stop());
    assert!(!on_done.stop());
    cancel.cancel();
    drop(on_done);
    // Dropping stops too.
    let (ctx, cancel) = Context::background().with_cancel();
    drop(ctx.on_done(|| panic!("dropped first")));
    cancel.cancel();
}

#[test]
fn stopped_f_is_dropped_before_stop_returns() {
    let (ctx, _cancel) = Context::background().with_cancel();
    let token = Arc::new(());
    let held = token.clone();
    let on_done = ctx.on_done(move || drop(held));
    assert_eq!(Arc::strong_count(&token), 2);
    assert!(on_done.stop());
    assert_eq!(Arc::strong_count(&token), 1);
}

#[test]
fn detached_f_runs_on_cancel_and_a_held_on_done_keeps_its_context() {
    let (parent, cancel) = Context::background().with_cancel();
    let (ran, r) = counter();
    {
        let (child, _child_cancel) = parent.with_cancel();
        let r = r.clone();
        child
            .on_done(move || {
                r.fetch_add(1, Ordering::SeqCst);
            })
            .detach();
        // The child is still held: by `child` until the end of this block.
    }
    // Released undone: the detached f is dropped unrun with it.
    assert_eq!(parent.registered_children(), 0);
    let held = {
        let (child, _child_cancel) = parent.with_cancel();
        let r = r.clone();
        child.on_done(move || {
            r.fetch_add(10, Ordering::SeqCst);
        })
    };
    // Every handle but the OnDone is gone: it keeps the child registered.
    assert_eq!(parent.registered_children(), 1);
    cancel.cancel();
    assert_eq!(ran.load(Ordering::SeqCst), 10);
    assert!(!held.stop());
}

#[test]
fn stop_races_cancel_exactly_one_wins() {
    let barrier = Arc::new(Barrier::new(2));
    for _ in 0..ROUNDS {
        let (ctx, cancel) = Context::background().with_cancel();
        let (ran, r) = counter();
        let on_done = ctx.on_done(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        let b = barrier.clone();
        let t = thread::spawn(move || {
            b.wait();
            cancel.cancel();
        });
        barrier.wait();
        let stopped = on_done.stop();
        // A losing stop returns only once f has returned.
        assert_eq!(ran.load(Ordering::SeqCst), usize::from(!stopped));
        t.join().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), usize::from(!stopped));
    }
}

#[test]
fn register_races_cancel_runs_exactly_once() {
    let barrier = Arc::new(Barrier::new(2));
    for _ in 0..ROUNDS {
        let (ctx, cancel) = Context::background().with_cancel();
        let (ran, r) = counter();
        let b = barrier.clone();
        let t = thread::spawn(move || {
            b.wait();
            cancel.cancel();
        });
        barrier.wait();
        let on_done = ctx.on_done(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        t.join().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert!(!on_done.stop());
    }
}

/// `f` signals that it started, then holds on for `HOLD` before it marks
/// itself finished; `finish` drops or stops the guard meanwhile.
fn waits_for_running_f(finish: impl FnOnce(OnDone) -> bool) {
    let (ctx, cancel) = Context::background().with_cancel();
    let (started_tx, started) = mpsc::channel();
    let finished = Arc::new(AtomicBool::new(false));
    let f_finished = finished.clone();
    let on_done = ctx.on_done(move || {
        started_tx.send(()).unwrap();
        thread::sleep(HOLD);
        f_finished.store(true, Ordering::SeqCst);
    });
    let t = thread::spawn(move || cancel.cancel());
    started.recv_timeout(QUIESCENT).expect("f started");
    assert!(!finish(on_done), "f had started: nothing was prevented");
    assert!(
        finished.load(Ordering::SeqCst),
        "stop/drop returned while f was still running on the canceller"
    );
    t.join().unwrap();
}

#[test]
fn drop_waits_for_f_running_on_another_thread() {
    waits_for_running_f(|on_done| {
        drop(on_done);
        false
    });
}

#[test]
fn stop_waits_for_f_running_on_another_thread() {
    waits_for_running_f(|on_done| on_done.stop());
}

#[test]
fn concurrent_stops_all_wait_for_running_f() {
    let (ctx, cancel) = Context::background().with_cancel();
    let (started_tx, started) = mpsc::channel();
    let finished = Arc::new(AtomicBool::new(false));
    let f_finished = finished.clone();
    let on_done = Arc::new(ctx.on_done(move || {
        started_tx.send(()).unwrap();
        thread::sleep(HOLD);
        f_finished.store(true, Ordering::SeqCst);
    }));
    let t = thread::spawn(move || cancel.cancel());
    started.recv_timeout(QUIESCENT).expect("f started");
    let stoppers: Vec<_> = (0..3)
        .map(|_| {
            let on_done = on_done.clone();
            let finished = finished.clone();
            thread::spawn(move || {
                assert!(!on_done.stop());
                finished.load(Ordering::SeqCst)
            })
        })
        .collect();
    for s in stoppers {
        assert!(s.join().unwrap(), "a stop returned while f was running");
    }
    t.join().unwrap();
}

/// Runs `body` on a thread and fails (instead of hanging) if it does not
/// finish within the hang guard.
fn without_deadlock(body: impl FnOnce() + Send + 'static) {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        body();
        tx.send(()).unwrap();
    });
    rx.recv_timeout(QUIESCENT)
        .expect("deadlocked (or panicked) inside f");
}

#[test]
fn stop_and_drop_from_inside_f_do_not_deadlock() {
    without_deadlock(|| {
        let (ctx, cancel) = Context::background().with_cancel();
        let slot: Arc<OnceLock<OnDone>> = Arc::new(OnceLock::new());
        let in_f = slot.clone();
        let (results_tx, results) = mpsc::channel();
        let on_done = ctx.on_done(move || {
            let on_done = in_f.get().expect("set before the cancel");
            results_tx.send(on_done.stop()).unwrap();
        });
        assert!(slot.set(on_done).is_ok());
        cancel.cancel();
        assert_eq!(results.try_recv(), Ok(false));

        // Dropping the guard from inside f.
        let (ctx, cancel) = Context::background().with_cancel();
        let slot: Arc<Mutex<Option<OnDone>>> = Arc::new(Mutex::new(None));
        let in_f = slot.clone();
        let (ran, r) = counter();
        let on_done = ctx.on_done(move || {
            drop(in_f.lock().unwrap().take());
            r.fetch_add(1, Ordering::SeqCst);
        });
        *slot.lock().unwrap() = Some(on_done);
        // Only the OnDone holds the context now: dropping it inside f
        // releases the context while its cancellation is running.
        drop(ctx);
        cancel.cancel();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert!(slot.lock().unwrap().is_none());
    });
}

#[test]
fn stop_inside_f_of_another_callback_on_the_same_context() {
    // f1 stops f2 before the cancellation reaches it, or finds it run.
    let (ctx, cancel) = Context::background().with_cancel();
    let (ran, r2) = counter();
    let second: Arc<OnceLock<OnDone>> = Arc::new(OnceLock::new());
    let in_first = second.clone();
    let stopped = Arc::new(AtomicBool::new(false));
    let s = stopped.clone();
    let _first = ctx.on_done(move || {
        s.store(in_first.get().unwrap().stop(), Ordering::SeqCst);
    });
    assert!(
        second
            .set(ctx.on_done(move || {
                r2.fetch_add(1, Ordering::SeqCst);
            }))
            .is_ok()
    );
    cancel.cancel();
    assert_eq!(
        ran.load(Ordering::SeqCst),
        usize::from(!stopped.load(Ordering::SeqCst))
    );
}

#[test]
fn panicking_f_completes_the_subtree_then_resumes_in_the_canceller() {
    let (ctx, cancel) = Context::background().with_cancel();
    let (child, _child_cancel) = ctx.with_cancel();
    let (grandchild, _g) = child.with_cancel();
    let (ran, r) = counter();
    let _first = child.on_done(|| panic!("on_done callback panics"));
    let _second = {
        let r = r.clone();
        grandchild.on_done(move || {
            r.fetch_add(1, Ordering::SeqCst);
        })
    };
    let _third = ctx.on_done(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    let waiter = {
        let grandchild = grandchild.clone();
        thread::spawn(move || grandchild.done().wait())
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cancel.cancel()));
    let payload = outcome.expect_err("the panic resumes in the canceller");
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&"on_done callback panics")
    );
    assert!(ctx.is_done() && child.is_done() && grandchild.is_done());
    assert_eq!(ran.load(Ordering::SeqCst), 2, "every other callback ran");
    waiter.join().unwrap();
    assert_eq!(grandchild.err(), Some(Error::Canceled));
}

#[test]
fn deadline_runs_f_on_the_timer_thread_which_survives_a_panic() {
    // Long enough for the registrations below to come first on any
    // machine; if they do not, the premise is checked and the test says so
    // instead of failing (its outcome must not depend on speed).
    let timeout = Duration::from_millis(if cfg!(miri) { 5000 } else { 200 });
    let (ctx, _cancel) = Context::background().with_timeout(timeout);
    let (tx, rx) = mpsc::channel();
    let _reports = ctx.on_done(move || tx.send(thread::current().id()).unwrap());
    let registered = std::panic::catch_unwind(|| {
        ctx.on_done(|| panic!("on_done callback panics on the timer thread"))
    });
    let on = rx.recv_timeout(QUIESCENT).expect("f ran at the deadline");
    if on == thread::current().id() {
        eprintln!("the deadline passed before the registrations: timer path not exercised");
        return;
    }
    let Ok(_panics) = registered else {
        eprintln!("the deadline passed before the second registration: not exercised");
        return;
    };
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    // The timer thread is still there: later deadlines still expire.
    let (later, _c) = Context::background().with_timeout(Duration::from_millis(1));
    assert!(later.done().wait_timeout(QUIESCENT));
    let (tx, rx) = mpsc::channel();
    let _later = later.on_done(move || tx.send(()).unwrap());
    assert!(rx.try_recv().is_ok(), "already done: ran at once");
}

#[test]
fn many_dropped_guards_then_cancel_runs_only_the_kept_one() {
    let (ctx, cancel) = Context::background().with_cancel();
    for _ in 0..if cfg!(miri) { 300 } else { 10_000 } {
        drop(ctx.on_done(|| unreachable!()));
    }
    // Withdrawn entries are unlinked by the waiter set's cleanup passes:
    // the set stays bounded under churn (the cancel below walks it).
    let (ran, r) = counter();
    let _kept = ctx.on_done(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    cancel.cancel();
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

#[test]
fn debug_shows_the_state() {
    let (ctx, cancel) = Context::background().with_cancel();
    let on_done = ctx.on_done(|| {});
    assert_eq!(
        format!("{on_done:?}"),
        "OnDone { pending: true, running: false, stopped: false }"
    );
    assert!(on_done.stop());
    assert_eq!(
        format!("{on_done:?}"),
        "OnDone { pending: false, running: false, stopped: true }"
    );
    cancel.cancel();
}

#[test]
fn on_done_has_the_promised_traits() {
    fn send_sync_debug<T: Send + Sync + std::fmt::Debug>() {}
    send_sync_debug::<OnDone>();
    // `Sync`: stops from several threads at once (see
    // `concurrent_stops_all_wait_for_running_f`); `Send`: moved into `f`'s
    // own thread.
    let (ctx, cancel) = Context::background().with_cancel();
    let on_done = ctx.on_done(|| {});
    let stopped = thread::spawn(move || on_done.stop()).join().unwrap();
    assert!(stopped);
    cancel.cancel();
}
