//! `Done::receiver()` (API.md rule 16, cargo feature `crossbeam-channel`):
//! a receiver disconnected once the context is done, for
//! `crossbeam_channel::select!` beside other channels.
//!
//! Time bounds are hang guards, never speed checks.
#![cfg(feature = "crossbeam-channel")]

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, TryRecvError, select, unbounded};
use goctx::Context;

/// A hang guard only.
const QUIESCENT: Duration = Duration::from_secs(if cfg!(miri) { 600 } else { 120 });
/// How long a test waits to see that something does not happen.
const GRACE: Duration = Duration::from_millis(20);

#[test]
fn disconnected_before_cancel_returns() {
    let (ctx, cancel) = Context::background().with_cancel();
    let (child, _c) = ctx.with_value(1u8).with_cancel();
    let rx = child.done().receiver();
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    cancel.cancel();
    // No thread hop: the sending side went inside `cancel()`.
    assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
}

#[test]
fn already_done_is_disconnected_at_once() {
    let (ctx, cancel) = Context::background().with_cancel();
    cancel.cancel();
    assert_eq!(
        ctx.done().receiver().try_recv(),
        Err(TryRecvError::Disconnected)
    );
}

#[test]
fn never_done_is_never() {
    for ctx in [
        Context::background(),
        Context::todo(),
        Context::background().with_cancel().0.without_cancel(),
    ] {
        let rx = ctx.done().receiver();
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(rx.recv_timeout(GRACE), Err(RecvTimeoutError::Timeout));
    }
}

#[test]
fn deadline_disconnects_from_the_timer_thread() {
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_millis(1));
    let rx = ctx.done().receiver();
    assert_eq!(
        rx.recv_timeout(QUIESCENT),
        Err(RecvTimeoutError::Disconnected)
    );
    assert!(ctx.is_done());
}

#[test]
fn select_wakes_a_worker_blocked_beside_a_job_channel() {
    let (ctx, cancel) = Context::background().with_cancel();
    let (jobs_tx, jobs) = unbounded::<u32>();
    let (handled_tx, handled) = mpsc::channel();
    let worker = thread::spawn({
        let done = ctx.done().receiver();
        move || {
            loop {
                select! {
                    recv(jobs) -> job => handled_tx.send(job.unwrap()).unwrap(),
                    recv(done) -> msg => {
                        assert!(msg.is_err(), "nothing is ever sent");
                        return;
                    }
                }
            }
        }
    });
    jobs_tx.send(7).unwrap();
    assert_eq!(handled.recv_timeout(QUIESCENT), Ok(7));
    // The worker is (or soon is) blocked in `select!`: the cancel wakes it.
    cancel.cancel();
    let (joined_tx, joined) = mpsc::channel();
    thread::spawn(move || joined_tx.send(worker.join().is_ok()).unwrap());
    assert_eq!(joined.recv_timeout(QUIESCENT), Ok(true));
    // The jobs sender is still alive: only the cancel could end the worker.
    drop(jobs_tx);
}

#[test]
fn many_receivers_of_one_context_all_disconnect() {
    let (ctx, cancel) = Context::background().with_cancel();
    let receivers: Vec<_> = (0..100).map(|_| ctx.done().receiver()).collect();
    let (child, _c) = ctx.with_cancel();
    let child_rx = child.done().receiver();
    cancel.cancel();
    for rx in receivers.iter().chain([&child_rx]) {
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }
}

#[test]
fn a_context_freed_undone_disconnects_its_receivers() {
    // Documented: the sending side lives in the context; once nothing can
    // make it done, it goes with the context rather than leak.
    let (parent, _cancel) = Context::background().with_cancel();
    let rx = {
        let (child, _child_cancel) = parent.with_cancel();
        child.done().receiver()
    };
    assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    assert!(!parent.is_done());
    assert_eq!(parent.registered_children(), 0);
}
