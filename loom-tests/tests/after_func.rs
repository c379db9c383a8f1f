//! Model 9: `stop()` racing the cancellation that would run the callback —
//! `f` runs iff `stop()` returned false, at most once. (Under loom the
//! callback runs inline on the notifying thread instead of on a worker; the
//! claim protocol is the same.)
//!
//! Then the worker pool's hand-offs (`after_func/runner.rs`, driven through
//! `goctx::pool_hooks` with test jobs, by the same code the std pool runs):
//! a job dispatched while the only worker, at the cap, goes idle or retires
//! is never lost, and no worker is started above the cap.
#![cfg(loom)]

mod support;

use goctx::Context;
use goctx::pool_hooks::{Found, TestPool};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// Pool invariants 2 and 3: one worker, at the cap of one, finishes its job
/// and goes idle while a job is dispatched and the dispatcher (which may
/// not even have published itself yet) looks for a worker. The job ends up
/// with that worker (through the spare or the idle stack), and the
/// dispatcher never starts another.
#[test]
fn pool_job_queued_vs_worker_going_idle() {
    model("pool_job_queued_vs_worker_going_idle", || {
        let pool = TestPool::new(1, 1);
        let done = Arc::new(AtomicBool::new(false));
        let dispatcher = thread::spawn({
            let done = done.clone();
            move || {
                pool.run_dispatcher(
                    || done.load(Ordering::SeqCst),
                    |_| panic!("a worker was started above the cap"),
                )
            }
        });
        let worker = thread::spawn({
            let done = done.clone();
            move || {
                let me = pool.worker();
                pool.go_idle(&me);
                loop {
                    match pool.take(&me) {
                        Found::Job(id) => {
                            done.store(true, Ordering::SeqCst);
                            pool.wake_dispatcher();
                            return id;
                        }
                        Found::Nothing => thread::park(),
                        Found::Dismissed => panic!("dismissed under the cap"),
                    }
                }
            }
        });
        pool.dispatch(7);
        assert_eq!(worker.join().unwrap(), 7);
        dispatcher.join().unwrap();
    });
}

/// Pool invariants 1 and 3: the only worker, at the cap of one, retires
/// (its keep-alive ran out) while a job is dispatched. Either the job
/// landed in its slot first (the retirement fails and it runs the job) or
/// the dispatcher, woken by the retirement, starts a new worker with it:
/// exactly one of the two, never neither.
#[test]
fn pool_job_queued_vs_worker_retiring() {
    model("pool_job_queued_vs_worker_retiring", || {
        let pool = TestPool::new(1, 1);
        let done = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicUsize::new(0));
        let dispatcher = thread::spawn({
            let (done, started) = (done.clone(), started.clone());
            move || {
                pool.run_dispatcher(
                    || done.load(Ordering::SeqCst),
                    |id| {
                        assert_eq!(id, 7);
                        started.fetch_add(1, Ordering::SeqCst);
                        done.store(true, Ordering::SeqCst);
                        true
                    },
                )
            }
        });
        let worker = thread::spawn({
            let done = done.clone();
            move || {
                let me = pool.worker();
                pool.go_idle(&me);
                if pool.try_retire(&me) {
                    return None;
                }
                loop {
                    match pool.take(&me) {
                        Found::Job(id) => {
                            done.store(true, Ordering::SeqCst);
                            pool.wake_dispatcher();
                            return Some(id);
                        }
                        Found::Nothing => thread::park(),
                        Found::Dismissed => panic!("dismissed under the cap"),
                    }
                }
            }
        });
        pool.dispatch(7);
        let ran_on_worker = worker.join().unwrap();
        dispatcher.join().unwrap();
        let started = started.load(Ordering::SeqCst);
        match ran_on_worker {
            Some(id) => {
                assert_eq!(id, 7);
                assert_eq!(started, 0, "the job ran twice");
            }
            None => assert_eq!(started, 1, "the job was lost"),
        }
    });
}
