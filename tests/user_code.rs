//! User code that runs inside goctx (API.md rule 19): a cause's `Drop` that
//! panics or blocks, a waker that panics on a deadline expiry, and the
//! clock re-check of very short timeouts (rule 7). Regression tests for
//! issue 8, failures 1, 3 and 5; each failed on `bdad359`.
//!
//! A binary of its own: before the fixes, the first test here killed the
//! process-wide timer thread, which would have failed every deadline test
//! that shared the binary.
//!
//! Every time bound is a guard against a hang, never a speed check.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

use goctx::Context;

/// The longest any test waits before calling it a hang (miri runs ~1000×
/// slower).
const QUIESCENT: Duration = Duration::from_secs(if cfg!(miri) { 600 } else { 10 });

/// Waits (bounded by `QUIESCENT`) until `done` holds; returns whether it
/// did. Backs off: spins briefly, then yields, then sleeps.
fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    let mut round = 0u32;
    while !done() {
        if start.elapsed() > QUIESCENT {
            return false;
        }
        round += 1;
        if round < 64 {
            std::hint::spin_loop();
        } else if round < 128 {
            thread::yield_now();
        } else {
            thread::sleep(Duration::from_millis(1));
        }
    }
    true
}

/// A cause error: `Display`/`Error` boilerplate for the causes below.
macro_rules! cause_type {
    ($name:ident) => {
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($name))
            }
        }
        impl std::error::Error for $name {}
    };
}

/// Arms two deadline contexts at `deadline` from this thread, so they share
/// a timer bucket, the second above the first: `with_cause` first, then a
/// plain one (returned, still armed). Cancels and returns the first one's
/// handles, so that on `bdad359` the timer's bucket sweep, which unlinks
/// the withdrawn entry, dropped the last reference on its memory — and the
/// cause with it, on the timer thread.
fn cancelled_under_another(
    deadline: Instant,
    cause: impl Into<goctx::Cause>,
) -> ((Context, goctx::CancelFunc), (Context, goctx::CancelFunc)) {
    let background = Context::background();
    let first = background.with_deadline_cause(deadline, cause);
    let second = background.with_deadline(deadline);
    first.1.cancel();
    (first, second)
}

/// Failure 1: a cause whose `Drop` panics, on a deadline context cancelled
/// and dropped while still linked in a timer bucket. On `bdad359` the drop
/// ran on the timer thread inside the bucket sweep and killed it: no
/// deadline fired again and no after-func ran again.
#[test]
fn panicking_cause_drop_keeps_the_timer_alive() {
    #[derive(Debug)]
    struct PanicOnDrop;
    cause_type!(PanicOnDrop);
    impl Drop for PanicOnDrop {
        fn drop(&mut self) {
            panic!("PanicOnDrop dropped (expected by the test)");
        }
    }

    let deadline = Instant::now() + Duration::from_millis(50);
    let (first, (second, _keep)) = cancelled_under_another(deadline, PanicOnDrop);
    // The drop now runs here, where the last handle goes, and its panic
    // surfaces here (after the release is complete).
    let _ = std::panic::catch_unwind(move || drop(first));
    assert!(
        second.done().wait_timeout(QUIESCENT),
        "the deadline sharing the bucket never fired"
    );
    // Later deadlines still fire, and after-funcs still run.
    for _ in 0..3 {
        let (later, _cancel) = Context::background().with_timeout(Duration::from_millis(10));
        assert!(
            later.done().wait_timeout(QUIESCENT),
            "the timer thread is gone: a 10 ms deadline never fired"
        );
        let (tx, rx) = mpsc::channel();
        let _after = later.after_func(move || tx.send(()).unwrap());
        assert!(
            rx.recv_timeout(QUIESCENT).is_ok(),
            "an after-func never ran"
        );
    }
}

/// Failure 1: a cause whose `Drop` blocks (a gate standing for a 3 s
/// sleep). On `bdad359` it blocked the timer thread, so every deadline
/// waited for it; now it blocks only the thread that drops the last handle.
#[test]
fn blocking_cause_drop_does_not_delay_deadlines() {
    static ENTERED: AtomicBool = AtomicBool::new(false);
    static RELEASE: AtomicBool = AtomicBool::new(false);
    #[derive(Debug)]
    struct BlockOnDrop;
    cause_type!(BlockOnDrop);
    impl Drop for BlockOnDrop {
        fn drop(&mut self) {
            ENTERED.store(true, Ordering::SeqCst);
            // Held until the test has seen a later deadline fire (30 s at
            // most, so that a broken build still finishes).
            let start = Instant::now();
            while !RELEASE.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(30) {
                thread::sleep(Duration::from_millis(1));
            }
        }
    }

    let deadline = Instant::now() + Duration::from_millis(50);
    let (first, (second, _keep)) = cancelled_under_another(deadline, BlockOnDrop);
    let dropper = thread::spawn(move || drop(first));
    assert!(
        eventually(|| ENTERED.load(Ordering::SeqCst)),
        "the cause was never dropped"
    );
    // The drop is blocked now, wherever it runs.
    let armed = Instant::now();
    let (later, _cancel) = Context::background().with_timeout(Duration::from_millis(10));
    let fired = later.done().wait_timeout(QUIESCENT);
    let lateness = armed.elapsed();
    RELEASE.store(true, Ordering::SeqCst);
    dropper.join().unwrap();
    assert!(
        fired,
        "a 10 ms deadline did not fire while a cause's Drop blocked ({lateness:?})"
    );
    assert!(second.done().wait_timeout(QUIESCENT));
}

/// Failure 1, on a user thread: a cause whose `Drop` panics inside a child
/// list's cleanup pass. On `bdad359` the panic skipped the end of the pass,
/// which left the list's pass counter raised, so the list was never cleaned
/// again and grew by one entry per child.
#[test]
fn panicking_cause_drop_leaves_child_lists_clean() {
    static PANICKED: AtomicBool = AtomicBool::new(false);
    #[derive(Debug)]
    struct PanicOnceOnDrop;
    cause_type!(PanicOnceOnDrop);
    impl Drop for PanicOnceOnDrop {
        fn drop(&mut self) {
            // Once only: one panic broke the list for good.
            if !PANICKED.swap(true, Ordering::SeqCst) {
                panic!("PanicOnceOnDrop dropped (expected by the test)");
            }
        }
    }

    let rounds = if cfg!(miri) { 200 } else { 5000 };
    let (parent, _cancel) = Context::background().with_cancel();
    let far = Instant::now() + Duration::from_secs(3600);
    for _ in 0..rounds {
        // `child` is cancelled below `sibling`, so it stays linked in the
        // parent's list (removed) for a cleanup pass to unlink; it is the
        // head of its timer bucket, so its bucket lets go of it at once, and
        // on `bdad359` the pass dropped its memory and the cause with it.
        let child = parent.with_deadline_cause(far, PanicOnceOnDrop);
        let sibling = parent.with_cancel();
        let _ = std::panic::catch_unwind(move || {
            child.1.cancel();
            drop(child);
        });
        sibling.1.cancel();
    }
    assert!(PANICKED.load(Ordering::SeqCst), "the cause never panicked");
    let linked = parent.linked_children();
    assert!(
        linked < 200,
        "{linked} entries linked after {rounds} cancelled children: the list is no longer cleaned"
    );
}

/// Failure 3: a waker that panics when a deadline expiry wakes it. On
/// `bdad359` the panic skipped the release of the handle the timer took,
/// so the context, its ancestors and their values were never freed.
#[test]
fn panicking_waker_on_deadline_expiry_leaks_nothing() {
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    struct Counted;
    impl Drop for Counted {
        fn drop(&mut self) {
            DROPPED.fetch_add(1, Ordering::SeqCst);
        }
    }
    struct PanicWaker;
    impl Wake for PanicWaker {
        fn wake(self: Arc<Self>) {
            panic!("PanicWaker woken (expected by the test)");
        }
    }

    let rounds = if cfg!(miri) { 2 } else { 10 };
    let waker = Waker::from(Arc::new(PanicWaker));
    // Contexts made so far: each must be freed, its value dropped once.
    let mut made = 0;
    let mut timeout = Duration::from_millis(5);
    let mut round = 1;
    while round <= rounds {
        let (ctx, cancel) = Context::background()
            .with_value(Counted)
            .with_timeout(timeout);
        made += 1;
        let registered = {
            let mut done = pin!(ctx.done());
            let registered = done.as_mut().poll(&mut TaskContext::from_waker(&waker));
            if registered == Poll::Pending {
                // Kept registered until the expiry has woken (and panicked).
                assert!(ctx.done().wait_timeout(QUIESCENT), "never expired");
            }
            registered
        };
        drop((ctx, cancel));
        assert!(
            eventually(|| DROPPED.load(Ordering::SeqCst) == made),
            "round {round}: the context was never freed (values dropped {} of {made})",
            DROPPED.load(Ordering::SeqCst)
        );
        if registered == Poll::Pending {
            round += 1;
        } else {
            // The deadline passed before the waker could register (a slow
            // scheduler, such as valgrind's): again, with a longer timeout.
            timeout *= 4;
        }
    }
}

/// Failure 5: a timeout so short that its deadline has passed by the time
/// the derivation returns is done on return (rule 7; Go re-reads the clock:
/// `time.Until(d) <= 0`). On `bdad359`, 18,809 of 20,000 at 1 ns were not.
#[test]
fn tiny_timeouts_are_done_on_return() {
    let rounds = if cfg!(miri) { 200 } else { 20_000 };
    for nanos in [1, 10] {
        let timeout = Duration::from_nanos(nanos);
        let mut not_done = 0;
        for _ in 0..rounds {
            let (ctx, _cancel) = Context::background().with_timeout(timeout);
            if !ctx.is_done() {
                not_done += 1;
            }
            let (ctx, _cancel) = Context::background().with_timeout_cause(timeout, TooShort);
            if !ctx.is_done() {
                not_done += 1;
            }
        }
        assert_eq!(
            not_done,
            0,
            "{not_done} of {} contexts with a {timeout:?} timeout were not done on return",
            2 * rounds
        );
    }

    #[derive(Debug)]
    struct TooShort;
    cause_type!(TooShort);
}

/// The last handle of a chain tears it down leaf first, across every kind
/// of node on the way (plain cancel nodes take the short release path, the
/// others the general one, and the walk up goes from one to the other and
/// back): each value is dropped exactly once, the leaf's first, and only
/// once its node goes.
#[test]
fn a_chain_of_every_kind_is_torn_down_leaf_first() {
    struct Noted(usize, Arc<std::sync::Mutex<Vec<usize>>>);
    impl Drop for Noted {
        fn drop(&mut self) {
            self.1.lock().unwrap().push(self.0);
        }
    }
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let noted = |n| Noted(n, Arc::clone(&log));
    let (other, cancel_other) = Context::background().with_cancel();

    let mut leaf = Context::background().with_value(noted(0));
    leaf = leaf.with_cancel().0;
    leaf = leaf.with_timeout(Duration::from_secs(3600)).0;
    leaf = leaf.with_cancel().0;
    leaf = leaf.with_value(noted(1));
    let (caused, cancel_caused) = leaf.with_cancel_cause();
    cancel_caused.cancel(std::io::Error::other("stop"));
    leaf = caused.with_cancel().0;
    drop((caused, cancel_caused));
    assert!(leaf.is_done(), "born under a cancelled context");
    leaf = leaf.merge(&other).0;
    leaf = leaf.with_value(noted(2));
    leaf = leaf.with_cancel().0;
    leaf = leaf.with_cancel().0;

    let probe = leaf.clone();
    drop(leaf);
    assert!(log.lock().unwrap().is_empty(), "a handle is left");
    drop(probe);
    assert_eq!(*log.lock().unwrap(), [2, 1, 0]);
    assert!(!other.is_done());
    cancel_other.cancel();
}
