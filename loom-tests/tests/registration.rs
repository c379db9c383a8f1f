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

/// A child leaving from the head of the list (its remover unlinks it at
/// once) while a cleanup pass, started by another child's removal, walks
/// past it: the head entry must not be freed under the pass (list
/// invariant 6), and the survivor stays registered.
#[test]
fn head_unlink_races_cleanup_pass() {
    model("head_unlink_races_cleanup_pass", || {
        let (parent, cancel) = Context::background().with_cancel();
        let (a, _a_cancel) = parent.with_cancel();
        let (b, b_cancel) = parent.with_cancel();
        let (c, c_cancel) = parent.with_cancel();
        // `b` is in the middle: its removal runs a cleanup pass (every
        // removal cleans under loom).
        let t = thread::spawn(move || {
            drop(b_cancel);
            drop(b);
        });
        // `c` is the head: its remover unlinks it itself.
        drop(c_cancel);
        drop(c);
        t.join().unwrap();
        assert_eq!(parent.registered_children(), 1);
        cancel.cancel();
        assert!(a.is_done());
    });
}

/// A head unlink racing a new registration and the parent's cancel: the
/// new child is cancelled (registered before the close, or refused by it),
/// the departing one's link reference is released exactly once.
#[test]
fn head_unlink_races_push_and_close() {
    model("head_unlink_races_push_and_close", || {
        let (parent, cancel) = Context::background().with_cancel();
        let (old, old_cancel) = parent.with_cancel();
        let p1 = parent.clone();
        let t1 = thread::spawn(move || p1.with_cancel());
        let t2 = thread::spawn(move || cancel.cancel());
        drop(old_cancel);
        drop(old);
        let (new, _new_cancel) = t1.join().unwrap();
        t2.join().unwrap();
        assert!(new.is_done());
        assert_eq!(parent.registered_children(), 0);
    });
}

/// Reads whether `cancelled` is done, then how many children `parent` has
/// registered (one at most): none once `cancelled` read as done.
fn done_means_unregistered(cancelled: &Context, parent: &Context) {
    let done = cancelled.is_done();
    let registered = parent.registered_children();
    if done {
        assert_eq!(registered, 0);
    } else {
        assert!(registered <= 1);
    }
}

/// Reading `registered_children()` while another thread cancels: once the
/// parent reads as done, it reports no registered children, even before
/// the canceller has closed its list (found by the `ops` fuzz target under
/// load, with the timer thread as the canceller).
#[test]
fn registered_children_once_done_is_zero() {
    model("registered_children_once_done_is_zero", || {
        let (parent, cancel) = Context::background().with_cancel();
        let (child, _child_cancel) = parent.with_cancel();
        let t = thread::spawn(move || cancel.cancel());
        done_means_unregistered(&parent, &parent);
        t.join().unwrap();
        assert!(child.is_done());
        assert_eq!(parent.registered_children(), 0);
    });
}

/// A child cancelling itself while the parent's registered children are
/// read: once the child reads as done, it is not counted, even before its
/// canceller has taken it off the parent's list (the `ops` fuzz target
/// caught this window under load, with a child's deadline expiring).
#[test]
fn done_child_is_not_registered() {
    model("done_child_is_not_registered", || {
        let (parent, _cancel) = Context::background().with_cancel();
        let (child, child_cancel) = parent.with_cancel();
        let t = thread::spawn(move || child_cancel.cancel());
        done_means_unregistered(&child, &parent);
        t.join().unwrap();
        assert_eq!(parent.registered_children(), 0);
    });
}
