//! API.md semantics 11 (scale) and 12 (display): chains a million deep and a
//! million children under one parent are created, cancelled and dropped
//! without stack overflow.
//!
//! Every test runs its work on a thread spawned with the *default* stack
//! size (no `stack_size` call), so any recursion proportional to the depth
//! or the width would overflow it.

use std::fmt;
use std::thread;
use std::time::Instant;

use goctx::{Cause, Context, Error};

/// Depth and width of the trees. Scaled down under Miri.
const N: usize = if cfg!(miri) { 100 } else { 1_000_000 };
/// Depth of the chain whose `Display` is checked.
const DISPLAY_DEPTH: usize = if cfg!(miri) { 100 } else { 100_000 };

/// Runs `f` on a thread with the default stack size (2 MiB unless
/// `RUST_MIN_STACK` says otherwise) and reports how long it took.
fn on_default_stack<R: Send + 'static>(name: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let start = Instant::now();
    let r = thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .expect("spawn")
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    eprintln!("{name}: {:?}", start.elapsed());
    r
}

/// A custom cause, to check that a root's cause reaches the leaf unchanged.
#[derive(Debug, PartialEq)]
struct RootCause(u32);

impl fmt::Display for RootCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "root cause {}", self.0)
    }
}

impl std::error::Error for RootCause {}

#[derive(Debug, PartialEq)]
struct Depth(usize);

#[derive(Debug, PartialEq)]
struct Marker;

fn assert_root_cause(ctx: &Context, id: u32) {
    assert_eq!(ctx.err(), Some(Error::Canceled));
    let cause: Cause = ctx.cause().expect("done context has a cause");
    assert_eq!(cause.downcast_ref::<RootCause>(), Some(&RootCause(id)));
}

#[test]
fn million_deep_cancel_chain_cancel_and_drop() {
    on_default_stack("million_deep_cancel_chain_cancel_and_drop", || {
        let (root, cancel) = Context::background().with_cancel_cause();
        let mut leaf = root.clone();
        for _ in 0..N {
            // The child holds its parent: the leaf keeps the whole chain.
            leaf = leaf.with_cancel().0;
        }
        assert_eq!(root.registered_children(), 1);
        assert!(!leaf.is_done());

        cancel.cancel(RootCause(1));
        assert!(root.is_done());
        assert_root_cause(&leaf, 1);
        leaf.done().wait();
        assert_eq!(root.registered_children(), 0);

        drop(leaf);
        drop(root);
        drop(cancel);
    });
}

#[test]
fn million_deep_chain_dropped_without_cancel() {
    on_default_stack("million_deep_chain_dropped_without_cancel", || {
        let (root, cancel) = Context::background().with_cancel();
        let mut leaf = root.clone();
        for i in 0..N {
            leaf = match i % 4 {
                0 | 2 => leaf.with_cancel().0,
                1 => leaf.with_cancel_cause().0,
                _ => leaf.with_value(Depth(i)),
            };
        }
        assert_eq!(root.registered_children(), 1);
        // Dropping the leaf frees the whole chain below the root.
        drop(leaf);
        assert_eq!(root.registered_children(), 0);
        assert!(!root.is_done());
        drop(cancel);
        drop(root);

        // And a chain whose root handles are dropped first: the leaf's drop
        // frees everything, root included.
        let (root, cancel) = Context::background().with_cancel();
        let mut leaf = root.with_value(Depth(0));
        drop((root, cancel));
        for _ in 0..N / 4 {
            leaf = leaf.with_cancel().0;
        }
        assert!(!leaf.is_done());
        drop(leaf);
    });
}

#[test]
fn million_deep_mixed_chain() {
    on_default_stack("million_deep_mixed_chain", || {
        // with_cancel / with_cancel_cause / with_value: cancellation passes
        // through every layer.
        let (root, cancel) = Context::background().with_cancel_cause();
        let mut leaf = root.clone();
        let mut last_value = None;
        for i in 0..N {
            leaf = match i % 3 {
                0 => leaf.with_cancel().0,
                1 => {
                    last_value = Some(Depth(i));
                    leaf.with_value(Depth(i))
                }
                _ => leaf.with_cancel_cause().0,
            };
        }
        assert_eq!(leaf.value::<Depth>(), last_value.as_ref());
        assert_eq!(leaf.value::<Marker>(), None); // walks all N layers
        cancel.cancel(RootCause(2));
        assert_root_cause(&leaf, 2);
        drop(leaf);
        drop(root);

        // with_cancel / with_value / without_cancel: every without_cancel
        // cuts the chain into independently cancellable segments (API.md 6),
        // so the root's cancellation reaches only its own segment.
        let (root, cancel) = Context::background().with_cancel_cause();
        let root = root.with_value(Marker);
        let mut leaf = root.clone();
        let mut first_segment_end = None;
        let mut last_cancel = None;
        for i in 0..N {
            match i % 3 {
                0 => {
                    let (ctx, c) = leaf.with_cancel();
                    leaf = ctx;
                    last_cancel = Some(c);
                }
                1 => leaf = leaf.with_value(Depth(i)),
                _ => {
                    if first_segment_end.is_none() {
                        first_segment_end = Some(leaf.clone());
                    }
                    leaf = leaf.without_cancel();
                }
            }
        }
        // Values are found through every kind of layer.
        assert_eq!(leaf.value::<Marker>(), Some(&Marker));
        assert!(leaf.value::<Depth>().is_some());
        let first_segment_end = first_segment_end.expect("N >= 3");

        cancel.cancel(RootCause(3));
        assert_root_cause(&root, 3);
        assert_root_cause(&first_segment_end, 3);
        if !N.is_multiple_of(3) {
            // The leaf sits below a with_cancel after the last without_cancel.
            assert!(!leaf.is_done());
            assert!(leaf.cause().is_none());
            last_cancel.as_ref().unwrap().cancel();
            assert_eq!(leaf.err(), Some(Error::Canceled));
        }
        drop(leaf);
        drop(last_cancel);
        drop(first_segment_end);
        drop(root);
    });
}

#[test]
fn million_children_cancel_and_drop() {
    on_default_stack("million_children_cancel_and_drop", || {
        let (parent, cancel) = Context::background().with_cancel_cause();
        let children: Vec<Context> = (0..N)
            .map(|i| match i % 4 {
                0 => parent.with_cancel().0,
                1 => parent.with_cancel_cause().0,
                // A value layer between parent and child: still registered
                // with the parent.
                2 => parent.with_value(Depth(i)).with_cancel().0,
                _ => parent.with_value(Depth(i)),
            })
            .collect();
        assert_eq!(parent.registered_children(), N - N / 4);
        assert!(children.iter().all(|c| !c.is_done()));

        cancel.cancel(RootCause(4));
        assert_eq!(parent.registered_children(), 0);
        for child in &children {
            assert_root_cause(child, 4);
        }
        drop(children);
        drop(parent);
    });
}

#[test]
fn million_children_dropped_without_cancel() {
    on_default_stack("million_children_dropped_without_cancel", || {
        let (parent, cancel) = Context::background().with_cancel();
        let children: Vec<_> = (0..N).map(|_| parent.with_cancel()).collect();
        assert_eq!(parent.registered_children(), N);
        assert_eq!(parent.linked_children(), N);
        // Oldest first: the oldest entries sit at the far end of the list.
        drop(children);
        assert_eq!(parent.registered_children(), 0);
        let linked = parent.linked_children();
        assert!(
            linked < 100,
            "{linked} children still linked after dropping all"
        );

        // Newest first, in two halves with a new child derived between.
        const M: usize = N / 4;
        let mut children: Vec<_> = (0..M).map(|_| parent.with_cancel()).collect();
        while children.len() > M / 2 {
            children.pop();
        }
        assert_eq!(parent.registered_children(), M / 2);
        let (late, late_cancel) = parent.with_cancel();
        drop(children);
        assert_eq!(parent.registered_children(), 1);
        let linked = parent.linked_children();
        assert!(linked < 100, "{linked} children still linked, 1 live");

        cancel.cancel();
        assert!(late.is_done());
        drop((late, late_cancel, parent));
    });
}

#[test]
fn display_of_a_deep_chain() {
    on_default_stack("display_of_a_deep_chain", || {
        let mut ctx = Context::todo();
        let mut expected = String::from("context.TODO");
        let marker = format!(".WithValue({})", std::any::type_name::<Marker>());
        for i in 0..DISPLAY_DEPTH {
            match i % 4 {
                0 | 1 => {
                    ctx = ctx.with_cancel().0;
                    expected.push_str(".WithCancel");
                }
                2 => {
                    ctx = ctx.with_value(Marker);
                    expected.push_str(&marker);
                }
                _ => {
                    ctx = ctx.without_cancel();
                    expected.push_str(".WithoutCancel");
                }
            }
        }
        assert_eq!(ctx.to_string(), expected);
        // Debug goes through Display too.
        assert!(format!("{ctx:?}").contains(".WithoutCancel"));
        drop(ctx);
    });
}
