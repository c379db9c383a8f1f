//! `on_done` (`src/on_done.rs`): the callback's claim and its `progress`
//! word. Registration racing the cancel; `stop` racing the cancel (exactly
//! one of "ran" and "stop returned true"); a drop racing the cancel returns
//! only once `f` has returned; `stop` and drop from inside `f`, racing a
//! `stop` from another thread.
#![cfg(loom)]

mod support;

use goctx::{Context, OnDone};
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex};
use loom::thread;
use support::model;

/// `f`'s progress, as the test sees it: `STARTED`, then `RETURNED`.
const STARTED: usize = 1;
const RETURNED: usize = 2;

fn callback(progress: &Arc<AtomicUsize>) -> impl FnOnce() + Send + 'static {
    let progress = progress.clone();
    move || {
        progress.fetch_add(STARTED, Ordering::SeqCst);
        // A point where another thread can look at a running `f`.
        thread::yield_now();
        progress.fetch_add(RETURNED, Ordering::SeqCst);
    }
}

/// The callback's registration races the cancel: it runs exactly once,
/// on one side or the other, and a later `stop` reports it ran.
#[test]
fn on_done_register_races_cancel() {
    model("on_done_register_races_cancel", || {
        let (ctx, cancel) = Context::background().with_cancel();
        let progress = Arc::new(AtomicUsize::new(0));
        let t = thread::spawn(move || cancel.cancel());
        let on_done = ctx.on_done(callback(&progress));
        t.join().unwrap();
        assert_eq!(progress.load(Ordering::SeqCst), STARTED | RETURNED);
        assert!(!on_done.stop());
    });
}

/// `stop` races the cancellation that runs `f`: exactly one of "`f` ran"
/// and "`stop` returned true"; and a losing `stop` returns only after `f`
/// has returned.
#[test]
fn on_done_stop_races_cancel() {
    model("on_done_stop_races_cancel", || {
        let (ctx, cancel) = Context::background().with_cancel();
        let progress = Arc::new(AtomicUsize::new(0));
        let on_done = ctx.on_done(callback(&progress));
        let t = thread::spawn(move || cancel.cancel());
        let stopped = on_done.stop();
        let seen = progress.load(Ordering::SeqCst);
        if stopped {
            assert_eq!(seen, 0, "a winning stop means f never starts");
        } else {
            assert_eq!(seen, STARTED | RETURNED, "stop returned while f ran");
        }
        t.join().unwrap();
        assert_eq!(
            progress.load(Ordering::SeqCst),
            if stopped { 0 } else { STARTED | RETURNED }
        );
        assert!(!on_done.stop(), "a second stop never succeeds");
    });
}

/// Dropping the guard while `f` may be running on the cancelling thread:
/// the drop returns only once `f` has returned (or after preventing it).
#[test]
fn on_done_drop_waits_for_running_f() {
    model("on_done_drop_waits_for_running_f", || {
        let (ctx, cancel) = Context::background().with_cancel();
        let progress = Arc::new(AtomicUsize::new(0));
        let on_done = ctx.on_done(callback(&progress));
        let t = thread::spawn(move || cancel.cancel());
        drop(on_done);
        let seen = progress.load(Ordering::SeqCst);
        assert!(
            seen == 0 || seen == STARTED | RETURNED,
            "drop returned while f was running: {seen}"
        );
        t.join().unwrap();
    });
}

/// `f` stops its own guard while another thread stops it too: `f`'s own
/// `stop` returns false at once (no deadlock), the other one either
/// prevents `f` or waits for it.
#[test]
fn on_done_stop_from_inside_f() {
    model("on_done_stop_from_inside_f", || {
        let (ctx, cancel) = Context::background().with_cancel();
        let progress = Arc::new(AtomicUsize::new(0));
        let slot: Arc<Mutex<Option<Arc<OnDone>>>> = Arc::new(Mutex::new(None));
        let on_done = Arc::new({
            let progress = progress.clone();
            let slot = slot.clone();
            ctx.on_done(move || {
                progress.fetch_add(STARTED, Ordering::SeqCst);
                let own = slot.lock().unwrap().take().expect("set before the cancel");
                assert!(!own.stop(), "f's own stop prevents nothing");
                // Dropping the guard from inside f (maybe the last one).
                drop(own);
                progress.fetch_add(RETURNED, Ordering::SeqCst);
            })
        });
        *slot.lock().unwrap() = Some(on_done.clone());
        let t = thread::spawn(move || cancel.cancel());
        let stopped = on_done.stop();
        let seen = progress.load(Ordering::SeqCst);
        assert_eq!(seen, if stopped { 0 } else { STARTED | RETURNED });
        drop(on_done);
        t.join().unwrap();
        // A stopped f never took its guard out: break the cycle.
        drop(slot.lock().unwrap().take());
    });
}

/// Two `stop`s race the cancel: at most one returns true, exactly one
/// party prevents or runs `f`, and every losing `stop` (to the cancel or to
/// the other `stop`) returns only once `f` is settled.
#[test]
fn on_done_two_stops_race_cancel() {
    model("on_done_two_stops_race_cancel", || {
        let (ctx, cancel) = Context::background().with_cancel();
        let progress = Arc::new(AtomicUsize::new(0));
        let on_done = Arc::new(ctx.on_done(callback(&progress)));
        let canceller = thread::spawn(move || cancel.cancel());
        let other = {
            let on_done = on_done.clone();
            let progress = progress.clone();
            thread::spawn(move || {
                let stopped = on_done.stop();
                (stopped, progress.load(Ordering::SeqCst))
            })
        };
        let stopped = on_done.stop();
        let seen = progress.load(Ordering::SeqCst);
        let (other_stopped, other_seen) = other.join().unwrap();
        canceller.join().unwrap();
        assert!(!(stopped && other_stopped));
        let ran = !(stopped || other_stopped);
        let settled = if ran { STARTED | RETURNED } else { 0 };
        assert_eq!(seen, settled);
        assert_eq!(other_seen, settled);
        assert_eq!(progress.load(Ordering::SeqCst), settled);
    });
}
