//! Models 3 and 4: concurrent cancellations — the first wins, and err/cause
//! of the node and its descendants agree with the winner.
#![cfg(loom)]

mod support;

use goctx::{Context, Error};
use loom::thread;
use support::{Tag, model, tag_of};

/// Model 3: two cancels of one node with different causes.
#[test]
fn two_cancels_one_winner() {
    model("two_cancels_one_winner", || {
        let (ctx, cancel) = Context::background().with_cancel_cause();
        let (child, _child_cancel) = ctx.with_cancel();
        let other = cancel.clone();
        let t = thread::spawn(move || other.cancel(Tag(1)));
        cancel.cancel(Tag(2));
        t.join().unwrap();
        let winner = tag_of(&ctx).expect("a Tag cause");
        assert!(winner == 1 || winner == 2);
        assert_eq!(ctx.err(), Some(Error::Canceled));
        assert_eq!(tag_of(&child), Some(winner));
        assert_eq!(child.err(), Some(Error::Canceled));
    });
}

/// Model 3, observed while racing: a reader never sees err without the
/// matching cause, nor a cause that later changes.
#[test]
fn reader_sees_consistent_err_and_cause() {
    model("reader_sees_consistent_err_and_cause", || {
        let (ctx, cancel) = Context::background().with_cancel_cause();
        let other = cancel.clone();
        let t = thread::spawn(move || other.cancel(Tag(1)));
        let reader = {
            let ctx = ctx.clone();
            thread::spawn(move || {
                let first = ctx.err().map(|_| tag_of(&ctx));
                let second = ctx.err().map(|_| tag_of(&ctx));
                if let (Some(a), Some(b)) = (first, second) {
                    assert!(a.is_some());
                    assert_eq!(a, b);
                }
            })
        };
        cancel.cancel(Tag(2));
        t.join().unwrap();
        reader.join().unwrap();
    });
}

/// Model 4: a parent and its grandparent cancelled at once.
#[test]
fn parent_and_grandparent_cancel() {
    model("parent_and_grandparent_cancel", || {
        let (grand, cancel_grand) = Context::background().with_cancel_cause();
        let (parent, cancel_parent) = grand.with_cancel_cause();
        let (child, _cancel_child) = parent.with_cancel();
        let t = thread::spawn(move || cancel_grand.cancel(Tag(1)));
        cancel_parent.cancel(Tag(2));
        t.join().unwrap();
        assert_eq!(tag_of(&grand), Some(1));
        let p = tag_of(&parent).expect("parent done with a Tag");
        assert!(p == 1 || p == 2);
        // The child always agrees with its parent's winner.
        assert_eq!(tag_of(&child), Some(p));
        assert_eq!(grand.registered_children(), 0);
    });
}
