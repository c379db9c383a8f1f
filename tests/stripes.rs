//! Striped child lists (`docs::internals`, "Striped child lists"): a
//! context whose children are derived on several threads at once registers
//! later children in per-thread stripes. Nothing observable may change:
//! cancellation reaches children on every list, a cancelled or dropped child
//! leaves its list, counts add up across lists, and a striped context is
//! freed with its stripes (LeakSanitizer and miri run this file).
//!
//! `goctx::stripe_hooks` (feature `fuzzing-internals`, on in this tree's
//! tests through the self dev-dependency) stripes a context by hand; the
//! last test gets stripes the real way, from contended derivations.
#![cfg(feature = "fuzzing-internals")]

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use goctx::stripe_hooks::{is_striped, stripe};
use goctx::{Context, Error};

/// Threads deriving at once (each gets a stripe of its own, round robin).
const THREADS: usize = if cfg!(miri) { 2 } else { 4 };

#[test]
fn cancellation_reaches_children_on_every_list() {
    let (parent, cancel) = Context::background().with_cancel();
    // Before the stripes: in the parent's own list.
    let (old, _old_cancel) = parent.with_cancel();
    stripe(&parent);
    assert!(is_striped(&parent));
    // After: in the stripes of the deriving threads.
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (parent, barrier) = (parent.clone(), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                parent.with_cancel()
            })
        })
        .collect();
    let children: Vec<_> = threads
        .into_iter()
        .map(|thread| thread.join().expect("deriving thread"))
        .collect();
    // A grandchild under a striped child, and a deadline child.
    stripe(&children[0].0);
    let (grandchild, _grandchild_cancel) = children[0].0.with_cancel();
    let (timed, _timed_cancel) = parent.with_timeout(Duration::from_secs(3600));
    assert_eq!(parent.registered_children(), 1 + THREADS + 1);
    assert_eq!(children[0].0.registered_children(), 1);

    cancel.cancel();
    assert_eq!(old.err(), Some(Error::Canceled));
    for (child, _) in &children {
        assert_eq!(child.err(), Some(Error::Canceled));
    }
    assert_eq!(grandchild.err(), Some(Error::Canceled));
    assert_eq!(timed.err(), Some(Error::Canceled));
    assert_eq!(parent.registered_children(), 0);
}

#[test]
fn a_child_derived_after_the_cancel_is_done_at_once() {
    let (parent, cancel) = Context::background().with_cancel();
    stripe(&parent);
    cancel.cancel();
    let (child, _child_cancel) = parent.with_cancel();
    assert!(child.is_done());
    // Stripes installed after the cancel change nothing either.
    let (other, other_cancel) = Context::background().with_cancel();
    other_cancel.cancel();
    stripe(&other);
    assert!(other.with_cancel().0.is_done());
}

#[test]
fn cancelled_and_dropped_children_leave_their_stripe() {
    let (parent, cancel) = Context::background().with_cancel();
    stripe(&parent);
    let kept = parent.with_cancel();
    let rounds: u32 = if cfg!(miri) { 20 } else { 1_000 };
    thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                for round in 0..rounds {
                    let (child, child_cancel) = parent.with_cancel();
                    if round.is_multiple_of(2) {
                        child_cancel.cancel();
                        assert!(child.is_done());
                    }
                    drop((child, child_cancel));
                }
            });
        }
    });
    assert_eq!(parent.registered_children(), 1);
    // Removed entries are unlinked as they go (each thread removes from the
    // head of its own stripe) or by the cleanup passes: bounded.
    assert!(parent.linked_children() < 1 + THREADS * 64);
    cancel.cancel();
    assert!(kept.0.is_done());
}

#[test]
fn a_striped_context_outlives_its_handles_while_children_live() {
    let (parent, cancel) = Context::background().with_cancel();
    stripe(&parent);
    let (child, child_cancel) = parent.with_cancel();
    let (released, released_cancel) = parent.with_cancel();
    drop((parent, cancel, released_cancel));
    // The parent is held by its children only; dropping one leaves its
    // stripe, the other is freed with the parent (and its stripes) at last.
    drop(released);
    assert!(!child.is_done());
    child_cancel.cancel();
    assert!(child.is_done());
}

#[test]
fn a_striped_subtree_dropped_uncancelled_is_freed() {
    for _ in 0..if cfg!(miri) { 2 } else { 100 } {
        let (root, root_cancel) = Context::background().with_cancel();
        stripe(&root);
        let mut leaves = Vec::new();
        let mut ctx = root.clone();
        for _ in 0..4 {
            let (next, next_cancel) = ctx.with_cancel();
            stripe(&next);
            leaves.push(next.with_cancel());
            leaves.push((next.clone(), next_cancel));
            ctx = next;
        }
        drop((root, root_cancel, ctx));
        drop(leaves);
    }
}

/// Children derived and dropped on several threads at once, as a server's
/// requests under one long-lived context: the lost CASes on the parent's
/// list install stripes, and everything stays correct while and after
/// they do. Stripes are installed the moment two pushes collide, which on
/// any multi-core machine happens in the first milliseconds; the test runs
/// until then (or, if the scheduler never lets two threads collide, for
/// the time given) and checks the behaviour either way.
#[test]
fn contended_derivations_stripe_the_parent() {
    let (parent, cancel) = Context::background().with_cancel();
    let give_up = Instant::now() + Duration::from_secs(if cfg!(miri) { 1 } else { 10 });
    let kept: Vec<_> = thread::scope(|scope| {
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                scope.spawn(|| {
                    let mut rounds = 0_u64;
                    while !is_striped(&parent) && Instant::now() < give_up {
                        for _ in 0..64 {
                            let (child, child_cancel) = parent.with_cancel();
                            if rounds.is_multiple_of(3) {
                                child_cancel.cancel();
                            }
                            drop((child, child_cancel));
                            rounds += 1;
                        }
                    }
                    // One kept child per thread, registered after the stripes.
                    parent.with_cancel()
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().expect("deriving thread"))
            .collect()
    });
    eprintln!("striped: {}", is_striped(&parent));
    assert_eq!(parent.registered_children(), THREADS);
    cancel.cancel();
    for (child, _) in &kept {
        assert_eq!(child.err(), Some(Error::Canceled));
    }
    assert_eq!(parent.registered_children(), 0);
}
