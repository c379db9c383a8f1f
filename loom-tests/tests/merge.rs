//! `merge` (`src/merge.rs`): a merged context's two parents cancel at once
//! (one winner, every reader consistent); `other` cancels while the merged
//! context is being released (its callback finds it released, or cancels
//! it under a handle, and nothing is freed twice); a merge derived while
//! `other` cancels ends up done.
#![cfg(loom)]

mod support;

use goctx::Context;
use loom::thread;
use support::{Tag, model, tag_of};

#[test]
fn merge_both_parents_cancel_concurrently() {
    model("merge_both_parents_cancel_concurrently", || {
        let (ctx, cancel_ctx) = Context::background().with_cancel_cause();
        let (other, cancel_other) = Context::background().with_cancel_cause();
        let (merged, _cancel) = ctx.merge(&other);
        let (child, _child_cancel) = merged.with_cancel();
        let t = thread::spawn(move || cancel_other.cancel(Tag(2)));
        cancel_ctx.cancel(Tag(1));
        // Rule 2 for ctx: the merged context is done now, whoever won (its
        // child too, unless other's cancellation still propagates).
        assert!(merged.is_done());
        let first = tag_of(&merged);
        t.join().unwrap();
        assert!(child.is_done());
        let winner = tag_of(&merged).expect("a tagged cause");
        assert_eq!(first, Some(winner), "the cause never changes");
        assert!(winner == 1 || winner == 2);
        assert_eq!(tag_of(&child), Some(winner), "the child agrees");
    });
}

#[test]
fn merge_other_cancels_while_merged_is_released() {
    model("merge_other_cancels_while_merged_is_released", || {
        let (ctx, _cancel_ctx) = Context::background().with_cancel();
        let (other, cancel_other) = Context::background().with_cancel();
        let (merged, cancel) = ctx.merge(&other);
        let t = thread::spawn(move || drop((merged, cancel)));
        cancel_other.cancel();
        t.join().unwrap();
        assert!(other.is_done() && !ctx.is_done());
        assert_eq!(ctx.registered_children(), 0);
    });
}

#[test]
fn merge_derive_races_other_cancel() {
    model("merge_derive_races_other_cancel", || {
        let (ctx, _cancel_ctx) = Context::background().with_cancel();
        let (other, cancel_other) = Context::background().with_cancel_cause();
        let t = thread::spawn(move || cancel_other.cancel(Tag(7)));
        let (merged, _cancel) = ctx.merge(&other);
        t.join().unwrap();
        assert!(
            merged.is_done(),
            "a merge racing other's cancel ends up done"
        );
        assert_eq!(tag_of(&merged), Some(7));
    });
}
