//! Models 5 and 6: waiters racing cancellation.
#![cfg(loom)]

mod support;

use std::future::Future;
use std::pin::pin;
use std::task::{Context as TaskContext, Poll, Waker};

use goctx::Context;
use loom::thread;
use support::model;

/// Model 5: a thread registering as a waiter races the cancel: no lost
/// wake-up (loom reports a deadlock if `wait` never returns).
#[test]
fn blocking_waiter_races_cancel() {
    model("blocking_waiter_races_cancel", || {
        let (ctx, cancel) = Context::background().with_cancel();
        let done = ctx.done_owned();
        let waiter = thread::spawn(move || done.wait());
        cancel.cancel();
        waiter.join().unwrap();
        assert!(ctx.is_done());
    });
}

/// Model 5 one level down: a thread waits on a child while its parent is
/// cancelled; the canceller wakes the child's waiters as soon as it wins the
/// child's CAS, in the middle of walking the parent's child list.
#[test]
fn blocking_waiter_on_child_races_parent_cancel() {
    model("blocking_waiter_on_child_races_parent_cancel", || {
        let (parent, cancel) = Context::background().with_cancel();
        let (child, _child_cancel) = parent.with_cancel();
        let done = child.done_owned();
        let waiter = thread::spawn(move || done.wait());
        cancel.cancel();
        waiter.join().unwrap();
        assert!(child.is_done());
    });
}

/// Model 5, async: a task awaiting `done()` races the cancel.
#[test]
fn async_waiter_races_cancel() {
    model("async_waiter_races_cancel", || {
        let (ctx, cancel) = Context::background().with_cancel();
        let done = ctx.done_owned();
        let waiter = thread::spawn(move || loom::future::block_on(done));
        cancel.cancel();
        waiter.join().unwrap();
    });
}

/// Model 5 with two waiters on one node: cancel wakes both.
#[test]
fn two_waiters_one_cancel() {
    model("two_waiters_one_cancel", || {
        let (ctx, cancel) = Context::background().with_cancel();
        let a = ctx.done_owned();
        let b = ctx.done_owned();
        let ta = thread::spawn(move || a.wait());
        let tb = thread::spawn(move || loom::future::block_on(b));
        cancel.cancel();
        ta.join().unwrap();
        tb.join().unwrap();
    });
}

/// Model 6: a future that registered its waker gives up (is dropped) while
/// the cancel runs: nothing is freed while still reachable, and a second
/// waiter is still woken.
#[test]
fn dropped_future_races_cancel() {
    model("dropped_future_races_cancel", || {
        let (ctx, cancel) = Context::background().with_cancel();
        let quitter = ctx.done_owned();
        let stayer = ctx.done_owned();
        let t = thread::spawn(move || {
            let mut fut = pin!(quitter);
            let mut cx = TaskContext::from_waker(Waker::noop());
            let _ = fut.as_mut().poll(&mut cx);
            // Dropped here: withdraws its entry (or finds it notified).
        });
        let s = thread::spawn(move || loom::future::block_on(stayer));
        cancel.cancel();
        t.join().unwrap();
        s.join().unwrap();
    });
}

/// Model 6, re-registration: a future polled twice with different wakers
/// while the cancel runs must still complete.
#[test]
fn repoll_races_cancel() {
    model("repoll_races_cancel", || {
        let (ctx, cancel) = Context::background().with_cancel();
        let done = ctx.done_owned();
        let t = thread::spawn(move || {
            let mut fut = pin!(done);
            let mut cx = TaskContext::from_waker(Waker::noop());
            if fut.as_mut().poll(&mut cx).is_pending() {
                // Second poll with the real executor's waker.
                loom::future::block_on(fut);
            }
        });
        cancel.cancel();
        t.join().unwrap();
        let _ = Poll::<()>::Pending;
    });
}
