//! `Context::merge` (API.md rule 15): a child of `ctx` also done when
//! `other` is done — synchronously for both parents, err/cause from the
//! first, the earlier deadline, `ctx`'s values, withdrawal from `other` on
//! release (flat memory under churn), chains and merges of merges.
//!
//! Time bounds are hang guards, never speed checks. The churn test measures
//! live bytes: it takes `EXCLUSIVE` for writing, every other test for
//! reading.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use goctx::{Cause, Context, Error};
use support::{exclusive, live_bytes, shared};

#[global_allocator]
static GLOBAL: support::LiveBytes = support::LiveBytes;

/// A hang guard only.
const QUIESCENT: Duration = Duration::from_secs(if cfg!(miri) { 600 } else { 120 });

#[derive(Debug, PartialEq)]
struct Mine(u32);
#[derive(Debug, PartialEq)]
struct Theirs(u32);

#[test]
fn either_parent_cancels_it_synchronously() {
    let _shared = shared();
    for other_first in [false, true] {
        let (ctx, cancel_ctx) = Context::background().with_cancel_cause();
        let (other, cancel_other) = Context::background().with_cancel_cause();
        let (merged, _cancel) = ctx.merge(&other);
        let (child, _c) = merged.with_value(1u8).with_cancel();
        let ran = Arc::new(AtomicUsize::new(0));
        let _on_done = {
            let ran = ran.clone();
            child.on_done(move || {
                ran.fetch_add(1, Ordering::SeqCst);
            })
        };
        let waiter = {
            let child = child.clone();
            thread::spawn(move || child.done().wait())
        };
        assert!(!merged.is_done());
        if other_first {
            cancel_other.cancel(Cause::msg("other"));
            assert!(!ctx.is_done(), "rule 4: the merge does not reach ctx");
        } else {
            cancel_ctx.cancel(Cause::msg("ctx"));
            assert!(!other.is_done(), "rule 4: the merge does not reach other");
        }
        // When `cancel()` returns, the merged subtree is done and woken.
        assert!(merged.is_done() && child.is_done());
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        let want = if other_first { "other" } else { "ctx" };
        assert_eq!(merged.cause().unwrap().to_string(), want);
        assert_eq!(child.cause().unwrap().to_string(), want);
        assert_eq!(merged.err(), Some(Error::Canceled));
        // The second parent's cancellation changes nothing.
        cancel_ctx.cancel(Cause::msg("late"));
        cancel_other.cancel(Cause::msg("late"));
        assert_eq!(merged.cause().unwrap().to_string(), want);
        waiter.join().unwrap();
    }
}

#[test]
fn own_cancel_affects_neither_parent() {
    let _shared = shared();
    let (ctx, _a) = Context::background().with_cancel();
    let (other, _b) = Context::background().with_cancel();
    let (merged, cancel) = ctx.merge(&other);
    cancel.cancel();
    assert_eq!(merged.err(), Some(Error::Canceled));
    assert!(!ctx.is_done() && !other.is_done());
    assert_eq!(ctx.registered_children(), 0);
}

#[test]
fn already_done_other_gives_a_done_result() {
    let _shared = shared();
    let (other, cancel_other) = Context::background().with_cancel_cause();
    cancel_other.cancel(Cause::msg("gone"));
    let (ctx, _c) = Context::background().with_cancel();
    let (merged, _cancel) = ctx.merge(&other);
    assert!(merged.is_done());
    assert_eq!(merged.cause().unwrap().to_string(), "gone");
    // A done ctx wins over a done other: it is the parent, seen first.
    let (done_ctx, cancel_ctx) = Context::background().with_cancel_cause();
    cancel_ctx.cancel(Cause::msg("ctx"));
    let (merged, _cancel) = done_ctx.merge(&other);
    assert_eq!(merged.cause().unwrap().to_string(), "ctx");
}

/// `other` done from birth — derived from a done parent, so no cancellation
/// ever closed its waiter set: the merge is done before it returns, with
/// `other`'s error and cause (found by the `ops` fuzz corpus when the merge
/// began registering its embedded entry without looking at `other` first).
#[test]
fn other_done_from_birth_gives_a_done_result() {
    let (parent, cancel) = Context::background().with_cancel_cause();
    cancel.cancel(Cause::msg("parent gone"));
    let (born_done, _c) = parent.with_cancel();
    let (merge_of_it, _c) = born_done.merge(&born_done);
    let (ctx, _keep) = Context::background().with_cancel();
    for other in [&born_done, &merge_of_it] {
        let (merged, _c) = ctx.merge(other);
        assert_eq!(merged.err(), Some(Error::Canceled));
        assert_eq!(merged.cause().unwrap().to_string(), "parent gone");
        assert!(!ctx.is_done());
    }
}

#[test]
fn never_done_other_is_with_cancel() {
    let _shared = shared();
    let (ctx, cancel) = Context::background().with_cancel();
    for other in [
        Context::background(),
        Context::todo(),
        Context::todo().with_value(Theirs(1)),
        ctx.without_cancel(),
    ] {
        let (merged, _c) = ctx.merge(&other);
        assert!(!merged.is_done());
        assert_eq!(merged.to_string(), format!("{ctx}.Merge({other})"));
    }
    let (merged, _c) = ctx.merge(&Context::background());
    cancel.cancel();
    assert!(merged.is_done());
}

#[test]
fn deadline_is_the_earlier_values_are_ctxs() {
    let _shared = shared();
    let soon = Instant::now() + Duration::from_secs(60);
    let later = soon + Duration::from_secs(60);
    let (ctx, _a) = Context::background()
        .with_value(Mine(1))
        .with_deadline(later);
    let (other, _b) = Context::background()
        .with_value(Theirs(2))
        .with_deadline(soon);
    let (merged, _c) = ctx.merge(&other);
    assert_eq!(merged.deadline(), Some(soon));
    assert_eq!(other.merge(&ctx).0.deadline(), Some(soon));
    assert_eq!(merged.value::<Mine>(), Some(&Mine(1)));
    assert_eq!(merged.value::<Theirs>(), None);
    assert_eq!(
        Context::background().merge(&Context::todo()).0.deadline(),
        None
    );
}

#[test]
fn others_deadline_expires_it() {
    let _shared = shared();
    let (ctx, _a) = Context::background().with_cancel();
    let (other, _b) = Context::background().with_timeout(Duration::from_millis(1));
    let (merged, _c) = ctx.merge(&other);
    let (child, _d) = merged.with_cancel();
    assert!(child.done().wait_timeout(QUIESCENT));
    assert_eq!(merged.err(), Some(Error::DeadlineExceeded));
    assert_eq!(
        child.cause().unwrap().downcast_ref::<Error>(),
        Some(&Error::DeadlineExceeded)
    );
    assert!(!ctx.is_done());
}

#[test]
fn display() {
    let _shared = shared();
    let (ctx, _a) = Context::background().with_cancel();
    let other = Context::todo().with_value(Theirs(0));
    let (merged, _c) = ctx.merge(&other);
    assert_eq!(
        merged.to_string(),
        "context.Background.WithCancel.Merge(context.TODO.WithValue(merge::Theirs))"
    );
    let (child, _d) = merged.with_cancel();
    assert_eq!(
        child.to_string(),
        "context.Background.WithCancel.Merge(context.TODO.WithValue(merge::Theirs)).WithCancel"
    );
}

#[test]
fn chains_and_merges_of_merges_keep_the_rules() {
    let _shared = shared();
    let (a, cancel_a) = Context::background().with_cancel_cause();
    let (b, _cancel_b) = Context::background().with_cancel();
    let (c, _cancel_c) = Context::background().with_cancel();
    let (ab, _x) = a.merge(&b);
    let (cb, _y) = c.merge(&b);
    let (abcb, _z) = ab.merge(&cb);
    let (c_ab, _w) = c.merge(&ab);
    // A chain: each merged with `a` in turn.
    let mut chain = vec![];
    let mut current = c.clone();
    for _ in 0..100 {
        let (next, cancel) = current.merge(&a);
        chain.push(cancel);
        current = next;
    }
    cancel_a.cancel(Cause::msg("a"));
    for ctx in [&ab, &abcb, &c_ab, &current] {
        assert!(ctx.is_done(), "{ctx}");
        assert_eq!(ctx.cause().unwrap().to_string(), "a");
    }
    assert!(!cb.is_done() && !c.is_done() && !b.is_done());
}

#[test]
fn derive_races_others_cancel_ends_up_done() {
    let _shared = shared();
    let barrier = Arc::new(Barrier::new(2));
    for _ in 0..if cfg!(miri) { 10 } else { 1000 } {
        let (ctx, _a) = Context::background().with_cancel();
        let (other, cancel_other) = Context::background().with_cancel();
        let b = barrier.clone();
        let t = thread::spawn(move || {
            b.wait();
            cancel_other.cancel();
        });
        barrier.wait();
        let (merged, _c) = ctx.merge(&other);
        let (child, _d) = merged.with_cancel();
        t.join().unwrap();
        assert!(merged.is_done() && child.is_done());
    }
}

#[test]
fn both_parents_cancel_concurrently_one_wins() {
    let _shared = shared();
    let barrier = Arc::new(Barrier::new(3));
    for _ in 0..if cfg!(miri) { 10 } else { 1000 } {
        let (ctx, cancel_ctx) = Context::background().with_cancel_cause();
        let (other, cancel_other) = Context::background().with_cancel_cause();
        let (merged, _c) = ctx.merge(&other);
        let (child, _d) = merged.with_cancel();
        let cancellers = [(cancel_ctx, "ctx"), (cancel_other, "other")].map(|(c, name)| {
            let b = barrier.clone();
            thread::spawn(move || {
                b.wait();
                c.cancel(Cause::msg(name));
            })
        });
        barrier.wait();
        for t in cancellers {
            t.join().unwrap();
        }
        let cause = merged.cause().unwrap().to_string();
        assert!(cause == "ctx" || cause == "other");
        assert_eq!(child.cause().unwrap().to_string(), cause);
    }
}

/// Merges released under a long-lived `other` (and `ctx`) leave nothing
/// behind: live bytes stay flat (a leaked entry per merge would be
/// megabytes).
#[test]
fn churned_merges_under_a_long_lived_other_use_flat_memory() {
    let _exclusive = exclusive();
    const MERGES: usize = if cfg!(miri) {
        200
    } else if cfg!(debug_assertions) {
        200_000
    } else {
        1_000_000
    };
    const SLACK: isize = 256 * 1024;
    let (ctx, _a) = Context::background().with_cancel();
    let (other, cancel_other) = Context::background().with_cancel();
    for _ in 0..256 {
        drop(ctx.merge(&other));
    }
    for _ in 0..32 {
        crossbeam_epoch::pin().flush();
    }
    let baseline = live_bytes();
    let mut peak = 0;
    for i in 0..MERGES {
        let (merged, cancel) = ctx.merge(&other);
        if i % 3 == 0 {
            cancel.cancel();
        }
        drop((merged, cancel));
        if i % 4096 == 0 {
            peak = peak.max(live_bytes() - baseline);
        }
    }
    let give_up = Instant::now() + QUIESCENT;
    let mut above = live_bytes() - baseline;
    while above >= SLACK && Instant::now() < give_up {
        for _ in 0..8 {
            crossbeam_epoch::pin().flush();
        }
        thread::sleep(Duration::from_millis(1));
        above = live_bytes() - baseline;
    }
    eprintln!("{MERGES} merges: peak {peak} B, after {above} B above the baseline");
    assert!(peak < 4 * SLACK, "peak {peak} B during churn");
    assert!(above < SLACK, "{above} B left after {MERGES} merges");
    assert_eq!(ctx.registered_children(), 0);
    // `other` still cancels, and reaches a merge made now.
    let (merged, _c) = ctx.merge(&other);
    cancel_other.cancel();
    assert!(merged.is_done());
}

#[test]
fn a_panic_in_the_merged_subtree_resumes_in_others_canceller() {
    let _shared = shared();
    let (ctx, _a) = Context::background().with_cancel();
    let (other, cancel_other) = Context::background().with_cancel();
    let (merged, _c) = ctx.merge(&other);
    let (child, _d) = merged.with_cancel();
    let (sibling, _e) = other.with_cancel();
    let _panics = child.on_done(|| panic!("callback in the merged subtree"));
    let ran = Arc::new(AtomicUsize::new(0));
    let _runs = {
        let ran = ran.clone();
        merged.on_done(move || {
            ran.fetch_add(1, Ordering::SeqCst);
        })
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cancel_other.cancel()));
    let payload = outcome.expect_err("the panic resumes in other's canceller");
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&"callback in the merged subtree")
    );
    assert!(merged.is_done() && child.is_done() && sibling.is_done());
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert!(!ctx.is_done());
}
