//! Model 11: a task waiter entry reused from its thread's spares (waiter
//! invariant 4) races the cancellation that may still hold it: the entry is
//! taken again only once the list has let it go, so the closer's access to
//! its waker cell never overlaps the reuse (loom's `UnsafeCell` tracking
//! reports it if it does), and the future on the reused entry is woken
//! (loom reports a deadlock if it is not). The reuse is on a second
//! context: the first one's closer may still be notifying the entry when
//! its future is dropped (a reuse on the same context would find it done
//! and not register). Each model fails if a spare is taken while a list
//! still holds it.
#![cfg(loom)]

mod support;

use std::future::Future;
use std::pin::pin;
use std::task::{Context as TaskContext, Waker};

use goctx::{Context, Done};
use loom::thread;
use support::model;

/// Polls `done` once (registering a waker) and drops it (withdrawing it, or
/// finding it notified): one iteration of a `select!` loop.
fn poll_once_and_drop(done: Done<'_>) {
    let mut done = pin!(done);
    let _ = done
        .as_mut()
        .poll(&mut TaskContext::from_waker(Waker::noop()));
}

/// A `select!` loop's entry on `a`, withdrawn at the head of the list (or
/// notified first), is reused by the next future, on `b`.
#[test]
fn reused_entry_races_cancel() {
    model("reused_entry_races_cancel", || {
        let (a, cancel_a) = Context::background().with_cancel();
        let (b, cancel_b) = Context::background().with_cancel();
        let waiter = thread::spawn(move || {
            poll_once_and_drop(a.done());
            loom::future::block_on(b.done());
        });
        cancel_a.cancel();
        cancel_b.cancel();
        waiter.join().unwrap();
    });
}

/// An entry withdrawn behind a later one stays linked (marked) until a
/// cleanup pass or the closer takes it out; the next future must not reuse
/// it before then, and is still woken.
#[test]
fn entry_withdrawn_behind_another_races_cancel() {
    model("entry_withdrawn_behind_another_races_cancel", || {
        let (a, cancel_a) = Context::background().with_cancel();
        let (b, cancel_b) = Context::background().with_cancel();
        let waiter = thread::spawn(move || {
            let waker = Waker::noop();
            // Boxed, so that the `drop`s below drop the futures themselves
            // (a `pin!`ned future lives to the end of the closure).
            let mut behind = Box::pin(a.done());
            let mut ahead = Box::pin(a.done());
            let _ = behind.as_mut().poll(&mut TaskContext::from_waker(waker));
            let _ = ahead.as_mut().poll(&mut TaskContext::from_waker(waker));
            drop(behind);
            drop(ahead);
            loom::future::block_on(b.done());
        });
        cancel_a.cancel();
        cancel_b.cancel();
        waiter.join().unwrap();
    });
}

/// A future registered on one thread is dropped on another, whose spares
/// take the entry and serve that thread's next future while the cancel
/// runs.
#[test]
fn entry_moved_to_another_thread_races_cancel() {
    model("entry_moved_to_another_thread_races_cancel", || {
        let (a, cancel_a) = Context::background().with_cancel();
        let (b, cancel_b) = Context::background().with_cancel();
        let mut registered = Box::pin(a.done_owned());
        let _ = registered
            .as_mut()
            .poll(&mut TaskContext::from_waker(Waker::noop()));
        let waiter = thread::spawn(move || {
            drop(registered);
            loom::future::block_on(b.done());
        });
        cancel_a.cancel();
        cancel_b.cancel();
        waiter.join().unwrap();
    });
}
