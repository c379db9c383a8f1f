//! Model 9: `stop()` racing the cancellation that would run the callback —
//! `f` runs iff `stop()` returned false, at most once. (Under loom the
//! callback runs inline on the notifying thread instead of on a worker; the
//! claim protocol is the same.)
#![cfg(loom)]

mod support;

use goctx::Context;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use support::model;

#[test]
fn stop_races_cancel() {
    model("stop_races_cancel", || {
        let (ctx, cancel) = Context::background().with_cancel();
        let ran = Arc::new(AtomicUsize::new(0));
        let after = {
            let ran = ran.clone();
            ctx.after_func(move || {
                ran.fetch_add(1, Ordering::SeqCst);
            })
        };
        let t = thread::spawn(move || cancel.cancel());
        let stopped = after.stop();
        t.join().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), usize::from(!stopped));
        assert!(!after.stop(), "a second stop never succeeds");
    });
}

/// The callback's registration races the cancel: it runs exactly once.
#[test]
fn register_races_cancel() {
    model("register_races_cancel", || {
        let (ctx, cancel) = Context::background().with_cancel();
        let ran = Arc::new(AtomicUsize::new(0));
        let t = thread::spawn(move || cancel.cancel());
        let after = {
            let ran = ran.clone();
            ctx.after_func(move || {
                ran.fetch_add(1, Ordering::SeqCst);
            })
        };
        t.join().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert!(!after.stop());
    });
}

/// The context's other handles are dropped while the parent cancels, but
/// the `AfterFunc` is kept: it keeps the context registered, so the
/// callback runs exactly once.
#[test]
fn held_after_func_keeps_its_context() {
    model("held_after_func_keeps_its_context", || {
        let (parent, cancel) = Context::background().with_cancel();
        let (ctx, ctx_cancel) = parent.with_cancel();
        let ran = Arc::new(AtomicUsize::new(0));
        let after = {
            let ran = ran.clone();
            ctx.after_func(move || {
                ran.fetch_add(1, Ordering::SeqCst);
            })
        };
        let t = thread::spawn(move || {
            drop(ctx);
            drop(ctx_cancel);
        });
        cancel.cancel();
        t.join().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        drop(after);
    });
}

/// Every handle, the `AfterFunc` included, is dropped while the parent
/// cancels: the callback runs at most once (once if the cancel came first),
/// and nothing is freed while still reachable.
#[test]
fn released_callback_races_parent_cancel() {
    model("released_callback_races_parent_cancel", || {
        let (parent, cancel) = Context::background().with_cancel();
        let (ctx, ctx_cancel) = parent.with_cancel();
        let ran = Arc::new(AtomicUsize::new(0));
        let after = {
            let ran = ran.clone();
            ctx.after_func(move || {
                ran.fetch_add(1, Ordering::SeqCst);
            })
        };
        let t = thread::spawn(move || {
            drop(ctx);
            drop(ctx_cancel);
            drop(after);
        });
        cancel.cancel();
        t.join().unwrap();
        assert!(ran.load(Ordering::SeqCst) <= 1);
        assert_eq!(parent.registered_children(), 0);
    });
}
