//! Model 7: two children registering under one parent at once, plus a
//! deregistration (which, under loom, always runs a cleanup pass).
#![cfg(loom)]

mod support;

use goctx::Context;
use loom::thread;
use support::model;

#[test]
fn concurrent_registration_and_deregistration() {
    model("concurrent_registration_and_deregistration", || {
        let (parent, cancel) = Context::background().with_cancel();
        let (old, old_cancel) = parent.with_cancel();
        let p1 = parent.clone();
        let t1 = thread::spawn(move || p1.with_cancel());
        let t2 = thread::spawn(move || {
            drop(old);
            drop(old_cancel);
        });
        let (mine, _mine_cancel) = parent.with_cancel();
        let (theirs, _theirs_cancel) = t1.join().unwrap();
        t2.join().unwrap();
        assert_eq!(parent.registered_children(), 2);
        cancel.cancel();
        assert!(mine.is_done());
        assert!(theirs.is_done());
    });
}

/// Registration racing a cleanup pass that unlinks the head entry.
#[test]
fn registration_races_cleanup_then_cancel() {
    model("registration_races_cleanup_then_cancel", || {
        let (parent, cancel) = Context::background().with_cancel();
        let (a, a_cancel) = parent.with_cancel();
        let (b, _b_cancel) = parent.with_cancel();
        let t = thread::spawn(move || {
            // Cancelling removes `a` from the parent's list (and cleans).
            a_cancel.cancel();
            drop(a);
        });
        let (c, _c_cancel) = parent.with_cancel();
        t.join().unwrap();
        assert_eq!(parent.registered_children(), 2);
        cancel.cancel();
        assert!(b.is_done() && c.is_done());
    });
}

/// Cleanup racing the parent's cancel: the closer must defer releases that a
/// running cleanup pass could still read.
#[test]
fn cleanup_races_close() {
    model("cleanup_races_close", || {
        let (parent, cancel) = Context::background().with_cancel();
        let (a, a_cancel) = parent.with_cancel();
        let (b, _b_cancel) = parent.with_cancel();
        let t = thread::spawn(move || {
            drop(a_cancel);
            drop(a);
        });
        cancel.cancel();
        t.join().unwrap();
        assert!(b.is_done());
    });
}
