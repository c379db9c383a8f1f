//! Model 2: a child dropped (deregistering itself) while its parent is being
//! cancelled: no use after free, no double free, no lost child.
#![cfg(loom)]

mod support;

use goctx::Context;
use loom::thread;
use support::model;

#[test]
fn child_drop_races_parent_cancel() {
    model("child_drop_races_parent_cancel", || {
        let (parent, cancel) = Context::background().with_cancel();
        let (child, child_cancel) = parent.with_cancel();
        let (kept, _kept_cancel) = parent.with_cancel();
        let dropper = thread::spawn(move || {
            drop(child_cancel);
            drop(child);
        });
        cancel.cancel();
        dropper.join().unwrap();
        // The sibling that stayed alive was not lost.
        assert!(kept.is_done());
        assert_eq!(parent.registered_children(), 0);
    });
}

/// A grandchild keeps its parent alive; dropping the middle context's own
/// handles while the root cancels must still cancel the grandchild.
#[test]
fn middle_drop_races_root_cancel() {
    model("middle_drop_races_root_cancel", || {
        let (root, cancel) = Context::background().with_cancel();
        let (middle, middle_cancel) = root.with_cancel();
        let (leaf, _leaf_cancel) = middle.with_cancel();
        let dropper = thread::spawn(move || {
            drop(middle);
            drop(middle_cancel);
        });
        cancel.cancel();
        dropper.join().unwrap();
        assert!(leaf.is_done());
    });
}

/// A child cancelled by its own handle (deregistering) while the parent
/// cancels, then dropped.
#[test]
fn child_cancel_and_drop_race_parent_cancel() {
    model("child_cancel_and_drop_race_parent_cancel", || {
        let (parent, cancel) = Context::background().with_cancel();
        let (child, child_cancel) = parent.with_cancel();
        let observer = child.clone();
        let other = thread::spawn(move || {
            child_cancel.cancel();
            drop(child);
        });
        cancel.cancel();
        other.join().unwrap();
        assert!(observer.is_done());
        assert_eq!(parent.registered_children(), 0);
    });
}

/// A whole branch released (leaf first, then its parent) while the root's
/// cancellation descends into it: propagation may reach released nodes
/// through the frozen chain and must only do harmless work there.
#[test]
fn branch_release_races_root_cancel() {
    model("branch_release_races_root_cancel", || {
        let (root, cancel) = Context::background().with_cancel();
        let (middle, middle_cancel) = root.with_cancel();
        let (leaf, leaf_cancel) = middle.with_cancel();
        let dropper = thread::spawn(move || {
            drop(leaf);
            drop(leaf_cancel);
            drop(middle);
            drop(middle_cancel);
        });
        cancel.cancel();
        dropper.join().unwrap();
        assert!(root.is_done());
        assert_eq!(root.registered_children(), 0);
    });
}

/// Node invariant 1 (`Node::give_back`): the last two handles of a child
/// dropped on two threads at once. Each finds two or one: with two it
/// decrements, with one (the other is gone) it frees without a
/// read-modify-write. Exactly one of them tears the child down: no double
/// free, no leak (loom's allocation checker), and the parent's list is left
/// empty.
#[test]
fn last_handles_dropped_on_two_threads() {
    model("last_handles_dropped_on_two_threads", || {
        let (parent, _parent_cancel) = Context::background().with_cancel();
        let (child, child_cancel) = parent.with_cancel();
        let dropper = thread::spawn(move || drop(child));
        drop(child_cancel);
        dropper.join().unwrap();
        assert_eq!(parent.registered_children(), 0);
    });
}

/// The same through a chain: a child's teardown gives back its handle on
/// the parent (`teardown_chain`) while another thread drops the parent's
/// own last handle; whichever comes second tears the parent down.
#[test]
fn child_teardown_and_parent_drop_race() {
    model("child_teardown_and_parent_drop_race", || {
        let (parent, parent_cancel) = Context::background().with_cancel();
        let (child, child_cancel) = parent.with_cancel();
        drop(parent);
        let dropper = thread::spawn(move || {
            drop(child);
            drop(child_cancel);
        });
        drop(parent_cancel);
        dropper.join().unwrap();
    });
}
