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
