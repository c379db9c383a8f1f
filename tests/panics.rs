//! Foreign code that panics inside cancellation must not leave a context
//! half-cancelled or a waiter asleep.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Wake, Waker};
use std::time::Duration;

use goctx::{Context, Error};

struct PanickingWaker;

impl Wake for PanickingWaker {
    fn wake(self: Arc<Self>) {
        panic!("waker exploded");
    }
}

#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn panicking_waker_does_not_half_cancel() {
    let (root, cancel) = Context::background().with_cancel();
    let (child, _child_cancel) = root.with_cancel();
    let (grandchild, _gc_cancel) = child.with_cancel();

    // A task on the root whose waker panics.
    let bad = Waker::from(Arc::new(PanickingWaker));
    let mut bad_future = pin!(root.done());
    assert!(
        bad_future
            .as_mut()
            .poll(&mut TaskContext::from_waker(&bad))
            .is_pending()
    );

    // Well-behaved tasks on the root and on the grandchild.
    let counter = Arc::new(CountingWaker::default());
    let good = Waker::from(counter.clone());
    let mut root_future = pin!(root.done());
    let mut leaf_future = pin!(grandchild.done());
    let mut cx = TaskContext::from_waker(&good);
    assert!(root_future.as_mut().poll(&mut cx).is_pending());
    assert!(leaf_future.as_mut().poll(&mut cx).is_pending());

    // A parked thread on the child.
    let waiter = {
        let done = child.done_owned();
        std::thread::spawn(move || {
            done.wait_timeout(Duration::from_secs(if cfg!(miri) { 600 } else { 10 }))
        })
    };
    std::thread::sleep(Duration::from_millis(20));

    let result = catch_unwind(AssertUnwindSafe(|| cancel.cancel()));
    let payload = result.expect_err("the waker's panic resumes after cancelling");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"waker exploded"));

    // Everything was cancelled and woken regardless.
    for ctx in [&root, &child, &grandchild] {
        assert_eq!(ctx.err(), Some(Error::Canceled));
    }
    assert_eq!(counter.0.load(Ordering::SeqCst), 2);
    assert!(waiter.join().unwrap(), "the parked thread was woken");
    assert!(root_future.as_mut().poll(&mut cx).is_ready());
    assert!(leaf_future.as_mut().poll(&mut cx).is_ready());
}

/// A value whose `Drop` panics: the panic reaches the thread that dropped
/// the last handle, and the tree around it keeps working.
#[test]
fn panicking_value_drop_leaves_tree_working() {
    struct Explodes;
    impl Drop for Explodes {
        fn drop(&mut self) {
            panic!("value drop exploded");
        }
    }

    let (root, cancel) = Context::background().with_cancel();
    let layer = root.with_value(Explodes);
    let (child, child_cancel) = layer.with_cancel();
    let (sibling, _sibling_cancel) = root.with_cancel();
    drop((child, child_cancel));
    let result = catch_unwind(AssertUnwindSafe(move || drop(layer)));
    assert!(result.is_err());
    assert_eq!(root.registered_children(), 1);
    cancel.cancel();
    assert!(sibling.is_done());
    assert_eq!(root.registered_children(), 0);
}

/// A waker whose `drop` panics.
struct PanicsOnDrop;

impl Wake for PanicsOnDrop {
    fn wake(self: Arc<Self>) {}
}

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        panic!("waker drop exploded");
    }
}

/// Counts its drops: shows when a context's memory is given back.
struct DropCounter(Arc<AtomicUsize>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A pending owned `Done` whose waker panics when dropped: dropping the
/// `Done` withdraws its entry, the panic reaches the code that dropped it,
/// and the `Done`'s handle is still given back (the context's memory, here
/// a value above it, is freed once the context goes) while the context
/// keeps working for other waiters.
#[test]
fn panicking_waker_drop_in_a_dropped_done_releases_its_handle() {
    let drops = Arc::new(AtomicUsize::new(0));
    let valued = Context::background().with_value(DropCounter(Arc::clone(&drops)));
    let (ctx, cancel) = valued.with_cancel();
    drop(valued);

    let mut done = Box::pin(ctx.done_owned());
    {
        let waker = Waker::from(Arc::new(PanicsOnDrop));
        let mut cx = TaskContext::from_waker(&waker);
        assert!(done.as_mut().poll(&mut cx).is_pending());
        // Dropping the test's own waker leaves the entry's clone the last
        // one: the `Done`'s withdrawal drops it and runs the panicking drop.
        drop(waker);
    }
    let dropped = catch_unwind(AssertUnwindSafe(move || drop(done)));
    assert!(dropped.is_err(), "the waker's panic reaches the dropper");

    // The context still works: a new waiter sees the cancellation.
    {
        let counting = Arc::new(CountingWaker::default());
        let waker = Waker::from(Arc::clone(&counting));
        let mut cx = TaskContext::from_waker(&waker);
        let mut again = pin!(ctx.done());
        assert!(again.as_mut().poll(&mut cx).is_pending());
        cancel.cancel();
        assert_eq!(counting.0.load(Ordering::SeqCst), 1);
        assert!(again.poll(&mut cx).is_ready());
    }

    // No handle is left behind: dropping the context (its cancel function
    // is gone) frees it and its parent's value.
    drop(cancel);
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(ctx);
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}
