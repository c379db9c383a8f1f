//! Model 8 (cancel.rs invariant 8): striped child lists. A derivation onto
//! a stripe racing the parent's cancel, stripes installed while the parent
//! is cancelled, a child leaving its stripe while the parent is cancelled,
//! and stripes installed by two derivations whose pushes collide. Under
//! loom a node has two stripes, and each model thread gets one of its own
//! (round robin at its first derivation onto stripes).
#![cfg(loom)]

mod support;

use goctx::Context;
use goctx::stripe_hooks::{is_striped, stripe};
use loom::thread;
use support::model;

/// A child pushed onto its thread's stripe while the parent is cancelled:
/// the canceller finds it there, or the deriver sees the cancel (the
/// store-buffer pattern over the stripe's head and the parent's word).
#[test]
fn derivation_onto_a_stripe_races_cancel() {
    model("derivation_onto_a_stripe_races_cancel", || {
        let (parent, cancel) = Context::background().with_cancel();
        stripe(&parent);
        let p = parent.clone();
        let t = thread::spawn(move || p.with_cancel());
        cancel.cancel();
        let (child, _child_cancel) = t.join().unwrap();
        assert!(child.is_done());
        assert_eq!(parent.registered_children(), 0);
    });
}

/// Stripes installed while the parent is cancelled, then a derivation onto
/// them: whether the canceller loaded the stripes or not, the child is done
/// before its derivation returns.
#[test]
fn stripes_installed_while_the_parent_is_cancelled() {
    model("stripes_installed_while_the_parent_is_cancelled", || {
        let (parent, cancel) = Context::background().with_cancel();
        let (old, _old_cancel) = parent.with_cancel();
        let p = parent.clone();
        let t = thread::spawn(move || {
            stripe(&p);
            p.with_cancel()
        });
        cancel.cancel();
        let (child, _child_cancel) = t.join().unwrap();
        assert!(old.is_done());
        assert!(child.is_done());
    });
}

/// A child cancelled and dropped on its own thread (leaving its stripe, at
/// the head or by a cleanup pass behind the other child) while the parent
/// is cancelled and closes that stripe.
#[test]
fn a_child_leaves_its_stripe_while_the_parent_is_cancelled() {
    model(
        "a_child_leaves_its_stripe_while_the_parent_is_cancelled",
        || {
            let (parent, cancel) = Context::background().with_cancel();
            stripe(&parent);
            let (a, a_cancel) = parent.with_cancel();
            let (b, _b_cancel) = parent.with_cancel();
            let t = thread::spawn(move || {
                a_cancel.cancel();
                drop(a);
            });
            cancel.cancel();
            t.join().unwrap();
            assert!(b.is_done());
            assert_eq!(parent.registered_children(), 0);
        },
    );
}

/// Two derivations at once on a parent without stripes: when their pushes
/// collide (a lost CAS), the loser installs stripes; a third derivation,
/// then the cancel, reach every child wherever it registered.
#[test]
fn colliding_derivations_install_stripes() {
    model("colliding_derivations_install_stripes", || {
        let (parent, cancel) = Context::background().with_cancel();
        let p = parent.clone();
        let t = thread::spawn(move || p.with_cancel());
        let (mine, _mine_cancel) = parent.with_cancel();
        let (theirs, _theirs_cancel) = t.join().unwrap();
        let striped = is_striped(&parent);
        let (late, _late_cancel) = parent.with_cancel();
        assert_eq!(parent.registered_children(), 3);
        assert_eq!(is_striped(&parent), striped);
        cancel.cancel();
        assert!(mine.is_done() && theirs.is_done() && late.is_done());
    });
}

/// A striped parent released while its child is being dropped on another
/// thread: the stripes outlive every list operation on them, and are freed
/// with the parent's memory.
#[test]
fn a_striped_parent_is_released_while_its_child_leaves() {
    model(
        "a_striped_parent_is_released_while_its_child_leaves",
        || {
            let (parent, cancel) = Context::background().with_cancel();
            stripe(&parent);
            let child = parent.with_cancel();
            let t = thread::spawn(move || drop(child));
            drop((parent, cancel));
            t.join().unwrap();
        },
    );
}
