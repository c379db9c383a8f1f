//! Model 1: a child derived while its parent is being cancelled ends up done,
//! with the parent's cause.
#![cfg(loom)]

mod support;

use goctx::{Context, Error};
use loom::thread;
use support::{Tag, model, tag_of};

#[test]
fn derive_races_parent_cancel() {
    model("derive_races_parent_cancel", || {
        let (parent, cancel) = Context::background().with_cancel_cause();
        let canceller = thread::spawn(move || cancel.cancel(Tag(1)));
        let (child, _child_cancel) = parent.with_cancel();
        canceller.join().unwrap();
        assert_eq!(child.err(), Some(Error::Canceled));
        assert_eq!(tag_of(&child), Some(1));
        assert_eq!(parent.registered_children(), 0);
    });
}

/// The same race one value layer down: the child registers with the nearest
/// cancellable ancestor, through the value node.
#[test]
fn derive_through_value_races_cancel() {
    model("derive_through_value_races_cancel", || {
        let (parent, cancel) = Context::background().with_cancel_cause();
        let layer = parent.with_value(7u8);
        let canceller = thread::spawn(move || cancel.cancel(Tag(2)));
        let (child, _child_cancel) = layer.with_cancel();
        canceller.join().unwrap();
        assert!(child.is_done());
        assert_eq!(tag_of(&child), Some(2));
        assert_eq!(child.value::<u8>(), Some(&7));
    });
}

/// A cancellation reaches a child with no children of its own, whose empty
/// child list the canceller closes in place (`List::close_if_empty`), while
/// another thread derives that child's first child. The grandchild ends up
/// cancelled with the root's cause either way: by the canceller, if its
/// push came first (the list is then not empty, and the child goes on the
/// work stack), or by itself, if it found the list closed.
#[test]
fn grandchild_derive_races_root_cancel() {
    model("grandchild_derive_races_root_cancel", || {
        let (root, cancel) = Context::background().with_cancel_cause();
        let (child, _child_cancel) = root.with_cancel();
        let canceller = thread::spawn(move || cancel.cancel(Tag(3)));
        let (grandchild, _grandchild_cancel) = child.with_cancel();
        canceller.join().unwrap();
        assert_eq!(grandchild.err(), Some(Error::Canceled));
        assert_eq!(tag_of(&grandchild), Some(3));
        assert_eq!(child.registered_children(), 0);
        assert_eq!(root.registered_children(), 0);
    });
}

/// Both halves of cancel.rs invariant 7 racing the deciding CAS: one
/// thread derives a child (a push, then a second read of the parent's
/// word: the store-buffer pattern with the canceller's CAS and its read of
/// the child list's head) while another blocks on the parent's `done()`
/// (announcing `HAS_PARKED`, a CAS on the word that the cancel's CAS may
/// have to retry after) and the parent is cancelled. Whichever order they
/// take, the child ends up cancelled and the waiter wakes (loom reports a
/// deadlock if `wait` never returns). Fails if the deriver skips its
/// second read, or either side its fence.
#[test]
fn announcements_race_cancel() {
    model("announcements_race_cancel", || {
        let (parent, cancel) = Context::background().with_cancel_cause();
        let done = parent.done_owned();
        let waiter = thread::spawn(move || done.wait());
        let deriving = parent.clone();
        let deriver = thread::spawn(move || {
            let (child, _child_cancel) = deriving.with_cancel();
            child
        });
        cancel.cancel(Tag(4));
        waiter.join().unwrap();
        let child = deriver.join().unwrap();
        assert_eq!(tag_of(&child), Some(4));
        assert_eq!(parent.registered_children(), 0);
    });
}

/// A child list used before (by a child that is gone, so it is empty
/// again): a second child derives while the parent is cancelled. The
/// canceller finds the list empty and leaves it open, or finds the new
/// child and closes and walks the list; the child's second read of the
/// parent's word covers the first case (cancel.rs invariant 7).
#[test]
fn derive_on_announced_list_races_cancel() {
    model("derive_on_announced_list_races_cancel", || {
        let (parent, cancel) = Context::background().with_cancel_cause();
        drop(parent.with_cancel());
        let canceller = thread::spawn(move || cancel.cancel(Tag(5)));
        let (child, _child_cancel) = parent.with_cancel();
        canceller.join().unwrap();
        assert_eq!(tag_of(&child), Some(5));
        assert_eq!(parent.registered_children(), 0);
    });
}
