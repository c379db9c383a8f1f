//! Ports of the intent of Go's own `context` tests (go1.25, `src/context/`),
//! rewritten against goctx's API: one module per Go test file, one test per
//! Go test, each named after the behaviour it checks.
//!
//! Mapping used throughout:
//!
//! * Go's non-blocking poll of `Done()` becomes `done().is_done()`; a
//!   blocking receive with Go's "quiescent" watchdog becomes
//!   `done().wait_timeout(QUIESCENT)` asserted true (a deadlock guard, not a
//!   speed check).
//! * Go's `otherContext` (a foreign type that delegates to a context) has no
//!   Rust counterpart: where it sits between two contexts, a value layer —
//!   transparent to cancellation, as `otherContext` is — takes its place.
//! * Go compares errors by identity; causes here are shared, so identity is
//!   checked with `std::ptr::eq` on the downcast cause where Go relies on it.
//! * Deadlines, timeouts and `AfterFunc` are not implemented yet: the rows
//!   and rounds of the Go tests that need them are left out.

use std::time::Duration;

use goctx::{CancelCauseFunc, CancelFunc, Context, Error};

mod support;

use support::rng::Rng;

/// The longest any test is willing to block before calling it a deadlock.
/// A guard against hangs, not a speed bound (miri runs ~1000× slower).
// A hang guard only: generous, because valgrind and sanitizers run 20-100x
// slower and one thread at a time (CI, issue 12).
const QUIESCENT: Duration = Duration::from_secs(if cfg!(miri) { 600 } else { 120 });

/// A cause with an identity, standing in for Go's `errors.New("Because!")`.
#[derive(Debug, PartialEq, Eq)]
struct Because(usize);

impl std::fmt::Display for Because {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Because! ({})", self.0)
    }
}

impl std::error::Error for Because {}

/// The error and cause of a context, with the cause narrowed to the two
/// kinds these tests use.
fn err_and_because(ctx: &Context) -> (Option<Error>, Option<usize>) {
    let because = ctx
        .cause()
        .and_then(|cause| cause.downcast_ref::<Because>().map(|b| b.0));
    (ctx.err(), because)
}

/// Go's `context_test.go`: the tests that look inside the tree. The
/// children set Go inspects is observed here through
/// `Context::registered_children()`.
mod context_test {
    use super::*;

    /// A value type for the value layers below.
    #[derive(Debug, PartialEq)]
    struct Key(&'static str);

    // Port of TestParentFinishesChild.
    #[test]
    fn parent_finishes_child() {
        let (parent, cancel) = Context::background().with_cancel();
        let (cancel_child, _cancel_child) = parent.with_cancel();
        let value_child = parent.with_value(Key("value"));
        // Go derives a timer child through the value layer; a cancellable
        // child stands in for it (deadlines are not implemented yet).
        let (layered_child, _cancel_layered) = value_child.with_cancel();

        for ctx in [&parent, &cancel_child, &value_child, &layered_child] {
            assert!(!ctx.is_done(), "{ctx} done before any cancel");
            assert_eq!(ctx.err(), None, "{ctx}");
        }
        // Both cancellable children register with `parent` itself: the one
        // under the value layer skips it.
        assert_eq!(parent.registered_children(), 2);
        assert_eq!(value_child.registered_children(), 2);

        cancel.cancel();

        assert_eq!(parent.registered_children(), 0);
        for ctx in [&parent, &cancel_child, &value_child, &layered_child] {
            assert!(ctx.done().is_done(), "{ctx} not done right after cancel");
            assert_eq!(ctx.err(), Some(Error::Canceled), "{ctx}");
        }

        let late_value = parent.with_value(Key("late"));
        assert!(late_value.is_done());
        assert_eq!(late_value.err(), Some(Error::Canceled));
        let (late_child, _cancel_late) = parent.with_cancel();
        assert!(late_child.is_done());
        assert_eq!(late_child.err(), Some(Error::Canceled));
    }

    // Port of TestChildFinishesFirst.
    #[test]
    fn child_finishes_first() {
        let (live, _cancel_live) = Context::background().with_cancel();
        for (parent, cancellable) in [(Context::background(), false), (live, true)] {
            let (child, cancel_child) = parent.with_cancel();
            assert!(!parent.is_done(), "{parent}");
            assert!(!child.is_done(), "{child}");
            assert_eq!(parent.registered_children(), usize::from(cancellable));

            cancel_child.cancel();

            assert_eq!(parent.registered_children(), 0, "{parent}");
            assert!(child.done().is_done(), "{child}");
            assert_eq!(child.err(), Some(Error::Canceled));
            assert!(!parent.is_done(), "cancelling {child} reached {parent}");
            assert_eq!(parent.err(), None);
        }
    }

    // Port of TestCancelRemoves (the WithCancel round; Go's WithTimeout and
    // AfterFunc rounds wait for those features). A cause-cancellable child
    // and a child under a value layer are two more ways in.
    #[test]
    fn cancel_removes_child_registration() {
        let (parent, _cancel) = Context::background().with_cancel();
        assert_eq!(parent.registered_children(), 0);
        let (_child, cancel_child) = parent.with_cancel();
        assert_eq!(parent.registered_children(), 1);
        cancel_child.cancel();
        assert_eq!(parent.registered_children(), 0);

        let (parent, _cancel) = Context::background().with_cancel();
        let (_child, cancel_child) = parent.with_cancel_cause();
        assert_eq!(parent.registered_children(), 1);
        cancel_child.cancel(Because(1));
        assert_eq!(parent.registered_children(), 0);

        let (parent, _cancel) = Context::background().with_cancel();
        let (_child, cancel_child) = parent.with_value(Key("layer")).with_cancel();
        assert_eq!(parent.registered_children(), 1);
        cancel_child.cancel();
        assert_eq!(parent.registered_children(), 0);
        assert!(!parent.is_done());
    }
}

/// Go's `x_test.go`: the tests written against the public API.
mod x_test {
    use std::any::type_name;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, Barrier, mpsc};
    use std::task::{Poll, Waker};
    use std::time::Instant;

    use super::*;

    // Port of TestBackground and TestTODO.
    #[test]
    fn roots_are_never_done() {
        for (root, name) in [
            (Context::background(), "context.Background"),
            (Context::todo(), "context.TODO"),
        ] {
            assert_eq!(root.to_string(), name);
            assert!(!root.done().is_done());
            assert!(!root.done().wait_timeout(Duration::from_millis(1)));
            assert_eq!(root.err(), None);
            assert!(root.cause().is_none());
            assert_eq!(root.deadline(), None);
        }
    }

    /// A value layer standing in for Go's delegating `otherContext`.
    #[derive(Debug)]
    struct Wrapper;

    // Port of TestWithCancel.
    #[test]
    fn cancel_propagates_synchronously() {
        let (c1, cancel) = Context::background().with_cancel();
        let o = c1.with_value(Wrapper);
        let (c2, _cancel_c2) = o.with_cancel();
        assert_eq!(c1.to_string(), "context.Background.WithCancel");

        let dones: Vec<_> = [&c1, &o, &c2].map(Context::done).into();
        for (ctx, done) in [&c1, &o, &c2].into_iter().zip(&dones) {
            assert_eq!(ctx.err(), None, "{ctx}");
            assert!(!done.is_done(), "{ctx} done before cancel");
        }

        cancel.cancel();

        for (ctx, done) in [&c1, &o, &c2].into_iter().zip(&dones) {
            assert!(done.is_done(), "{ctx} not done when cancel() returned");
            assert!(ctx.done().is_done(), "{ctx}");
            assert_eq!(ctx.err(), Some(Error::Canceled), "{ctx}");
        }
    }

    // Go keys values by (type, value); goctx keys them by type alone. These
    // three key types all wrap the same representation, so finding one must
    // never find another; `None` stands in for Go's nil value, which still
    // shadows the key further up.
    #[derive(Debug)]
    struct Key1(Option<&'static str>);
    #[derive(Debug)]
    struct Key2(Option<&'static str>);
    #[derive(Debug)]
    struct Key3(Option<&'static str>);

    fn lookups(ctx: &Context) -> [Option<&'static str>; 3] {
        [
            ctx.value::<Key1>().and_then(|k| k.0),
            ctx.value::<Key2>().and_then(|k| k.0),
            ctx.value::<Key3>().and_then(|k| k.0),
        ]
    }

    // Port of TestValues.
    #[test]
    fn values_are_found_by_type_and_shadowed() {
        let c0 = Context::background();
        let c1 = c0.with_value(Key1(Some("c1k1")));
        let c2 = c1.with_value(Key2(Some("c2k2")));
        let c3 = c2.with_value(Key3(Some("c3k3")));
        let c4 = c3.with_value(Key1(None));
        // Go wraps contexts in `otherContext`; a cancel layer is the
        // transparent wrapper here.
        let (o0, _cancel_o0) = Context::background().with_cancel();
        let (o1, _cancel_o1) = Context::background()
            .with_value(Key1(Some("c1k1")))
            .with_cancel();
        let o2 = o1.with_value(Key2(Some("o2k2")));
        let (o3, _cancel_o3) = c4.with_cancel();
        let o4 = o3.with_value(Key3(None));

        let table = [
            ("c0", &c0, [None, None, None]),
            ("c1", &c1, [Some("c1k1"), None, None]),
            ("c2", &c2, [Some("c1k1"), Some("c2k2"), None]),
            ("c3", &c3, [Some("c1k1"), Some("c2k2"), Some("c3k3")]),
            ("c4", &c4, [None, Some("c2k2"), Some("c3k3")]),
            ("o0", &o0, [None, None, None]),
            ("o1", &o1, [Some("c1k1"), None, None]),
            ("o2", &o2, [Some("c1k1"), Some("o2k2"), None]),
            ("o3", &o3, [None, Some("c2k2"), Some("c3k3")]),
            ("o4", &o4, [None, Some("c2k2"), None]),
        ];
        for (name, ctx, want) in table {
            assert_eq!(lookups(ctx), want, "{name} = {ctx}");
            // Neither the wrapped representation nor an unrelated type is
            // a key.
            assert!(ctx.value::<Option<&'static str>>().is_none(), "{name}");
            assert!(ctx.value::<Wrapper>().is_none(), "{name}");
        }
        // The shadowing layer is found, not skipped.
        assert!(c4.value::<Key1>().is_some_and(|k| k.0.is_none()));

        let (k1, k2, k3) = (
            type_name::<Key1>(),
            type_name::<Key2>(),
            type_name::<Key3>(),
        );
        assert_eq!(
            c1.to_string(),
            format!("context.Background.WithValue({k1})")
        );
        assert_eq!(
            c2.to_string(),
            format!("context.Background.WithValue({k1}).WithValue({k2})")
        );
        assert_eq!(
            c4.to_string(),
            format!(
                "context.Background.WithValue({k1}).WithValue({k2}).WithValue({k3}).WithValue({k1})"
            )
        );
        assert_eq!(
            o2.to_string(),
            format!("context.Background.WithValue({k1}).WithCancel.WithValue({k2})")
        );
    }

    // Port of TestSimultaneousCancels.
    #[test]
    fn simultaneous_cancels_all_finish() {
        let mut rng = Rng::from_clock();
        let seed = rng.0;
        // Breadth-first: each node in turn gets four children, until there
        // are at least 100 contexts.
        let mut tree: Vec<(Context, CancelFunc)> = vec![Context::background().with_cancel()];
        let mut next = 0;
        while tree.len() < 100 {
            let parent = tree[next].0.clone();
            tree.extend((0..4).map(|_| parent.with_cancel()));
            next += 1;
        }

        let mut cancels: Vec<(usize, CancelFunc)> = tree
            .iter()
            .map(|(_, cancel)| cancel.clone())
            .enumerate()
            .collect();
        rng.shuffle(&mut cancels);
        let start = Arc::new(Barrier::new(cancels.len()));
        let (returned, cancels_returned) = mpsc::channel();
        for (index, cancel) in cancels {
            let start = Arc::clone(&start);
            let returned = returned.clone();
            std::thread::spawn(move || {
                start.wait();
                cancel.cancel();
                returned.send(index).expect("the test is listening");
            });
        }

        let mut order: Vec<usize> = (0..tree.len()).collect();
        rng.shuffle(&mut order);
        for index in order {
            let ctx = &tree[index].0;
            assert!(
                ctx.done().wait_timeout(QUIESCENT),
                "seed {seed}: context {index} never became done"
            );
            assert_eq!(ctx.err(), Some(Error::Canceled), "seed {seed}: {index}");
        }
        for _ in 0..tree.len() {
            cancels_returned
                .recv_timeout(QUIESCENT)
                .unwrap_or_else(|_| panic!("seed {seed}: a cancel() call never returned"));
        }
        assert_eq!(tree[0].0.registered_children(), 0);
    }

    // Port of TestInterlockedCancels.
    #[test]
    fn interlocked_cancels_finish() {
        let (parent, cancel_parent) = Context::background().with_cancel();
        let (child, cancel_child) = parent.with_cancel();
        let (finished, cancel_finished) = mpsc::channel();
        std::thread::spawn(move || {
            parent.done().wait();
            cancel_child.cancel();
            finished.send(()).expect("the test is listening");
        });

        cancel_parent.cancel();

        assert!(child.done().wait_timeout(QUIESCENT), "child never done");
        assert_eq!(child.err(), Some(Error::Canceled));
        cancel_finished
            .recv_timeout(QUIESCENT)
            .expect("the child's cancel() never returned");
    }

    use crate::support::slot::{SLOTS, slot_value, with_slot};

    enum Canceller {
        Plain(CancelFunc),
        WithCause(CancelCauseFunc, usize),
    }

    // Port of TestLayersCancel (Go's timeout layers wait for deadlines;
    // cause-cancellable layers take their place). Several random chains per
    // run.
    #[test]
    fn layers_cancel() {
        let mut rng = Rng::from_clock();
        let seed = rng.0;
        for round in 0..if cfg!(miri) { 3 } else { 50 } {
            let mut ctx = Context::background();
            let mut name = String::from("context.Background");
            let mut nearest: [Option<usize>; SLOTS] = [None; SLOTS];
            let mut cancellers = Vec::new();
            let mut layer = 0;
            while layer < 30 || cancellers.is_empty() || nearest.iter().all(Option::is_none) {
                match rng.below(3) {
                    0 => {
                        let slot = rng.below(SLOTS);
                        let (next, type_name) = with_slot(&ctx, slot, layer);
                        ctx = next;
                        name += &format!(".WithValue({type_name})");
                        nearest[slot] = Some(layer);
                    }
                    1 => {
                        let (next, cancel) = ctx.with_cancel();
                        ctx = next;
                        name += ".WithCancel";
                        cancellers.push(Canceller::Plain(cancel));
                    }
                    _ => {
                        let (next, cancel) = ctx.with_cancel_cause();
                        ctx = next;
                        name += ".WithCancel";
                        cancellers.push(Canceller::WithCause(cancel, layer));
                    }
                }
                layer += 1;
            }
            let what = format!("seed {seed}, round {round}: {ctx}");

            assert!(!ctx.is_done(), "{what}: done before any cancel");
            assert!(ctx.to_string().starts_with("context.Background."), "{what}");
            assert_eq!(ctx.to_string(), name, "{what}");
            for (slot, want) in nearest.iter().enumerate() {
                assert_eq!(slot_value(&ctx, slot), *want, "{what}: slot {slot}");
            }

            let chosen = rng.below(cancellers.len());
            let cause = match &cancellers[chosen] {
                Canceller::Plain(cancel) => {
                    cancel.cancel();
                    None
                }
                Canceller::WithCause(cancel, id) => {
                    cancel.cancel(Because(*id));
                    Some(*id)
                }
            };

            assert!(ctx.done().is_done(), "{what}: not done after cancel");
            assert_eq!(
                err_and_because(&ctx),
                (Some(Error::Canceled), cause),
                "{what}"
            );
            if cause.is_none() {
                let cause = ctx.cause().expect("done contexts have a cause");
                assert_eq!(cause.downcast_ref::<Error>(), Some(&Error::Canceled));
            }
            for (slot, want) in nearest.iter().enumerate() {
                assert_eq!(slot_value(&ctx, slot), *want, "{what}: slot {slot}");
            }
        }
    }

    // Port of TestWithCancelCanceledParent.
    #[test]
    fn with_cancel_of_canceled_parent() {
        let (parent, cancel) = Context::background().with_cancel_cause();
        cancel.cancel(Because(7));

        let (child, _cancel_child) = parent.with_cancel();

        assert!(
            child.done().is_done(),
            "child of a canceled parent not done"
        );
        assert_eq!(err_and_because(&child), (Some(Error::Canceled), Some(7)));
        let (parent_cause, child_cause) = (parent.cause().unwrap(), child.cause().unwrap());
        assert!(
            std::ptr::eq(
                parent_cause.downcast_ref::<Because>().unwrap(),
                child_cause.downcast_ref::<Because>().unwrap(),
            ),
            "the child's cause is not the parent's cause itself"
        );
    }

    // Port of TestWithCancelSimultaneouslyCanceledParent.
    #[test]
    fn with_cancel_racing_parent_cancel() {
        for round in 0..if cfg!(miri) { 3 } else { 100 } {
            let (parent, cancel) = Context::background().with_cancel_cause();
            let canceller = std::thread::spawn(move || cancel.cancel(Because(round)));

            let (child, _cancel_child) = parent.with_cancel();

            assert!(
                child.done().wait_timeout(QUIESCENT),
                "round {round}: child never done"
            );
            assert_eq!(
                err_and_because(&child),
                (Some(Error::Canceled), Some(round)),
                "round {round}"
            );
            canceller.join().expect("cancel does not panic");
        }
    }

    use crate::support::{Named, WantCause, cause_of};

    // Port of TestCause: the rows without deadlines or timeouts (Go's rows
    // 1-11, 18 and 19). Go's `cancel(nil)` has no Rust spelling; passing the
    // plain `Error::Canceled` is the equivalent "no cause of my own".
    #[test]
    fn cause_follows_first_cancellation() {
        use Named::{ChildCause, FinishedEarly, ParentCause};
        type Row = (&'static str, fn() -> Context, Option<Error>, WantCause);
        let canceled = Some(Error::Canceled);
        let rows: [Row; 13] = [
            ("background", Context::background, None, WantCause::Nothing),
            ("todo", Context::todo, None, WantCause::Nothing),
            (
                "with_cancel",
                || {
                    let (ctx, cancel) = Context::background().with_cancel();
                    cancel.cancel();
                    ctx
                },
                canceled,
                WantCause::Plain(Error::Canceled),
            ),
            (
                "with_cancel_cause",
                || {
                    let (ctx, cancel) = Context::background().with_cancel_cause();
                    cancel.cancel(ParentCause);
                    ctx
                },
                canceled,
                WantCause::Named(ParentCause),
            ),
            (
                "with_cancel_cause, plain error as cause",
                || {
                    let (ctx, cancel) = Context::background().with_cancel_cause();
                    cancel.cancel(Error::Canceled);
                    ctx
                },
                canceled,
                WantCause::Plain(Error::Canceled),
            ),
            (
                "parent cause before child cause",
                || {
                    let (parent, cancel_parent) = Context::background().with_cancel_cause();
                    let (child, cancel_child) = parent.with_cancel_cause();
                    cancel_parent.cancel(ParentCause);
                    cancel_child.cancel(ChildCause);
                    child
                },
                canceled,
                WantCause::Named(ParentCause),
            ),
            (
                "parent cause after child cause",
                || {
                    let (parent, cancel_parent) = Context::background().with_cancel_cause();
                    let (child, cancel_child) = parent.with_cancel_cause();
                    cancel_child.cancel(ChildCause);
                    cancel_parent.cancel(ParentCause);
                    child
                },
                canceled,
                WantCause::Named(ChildCause),
            ),
            (
                "parent cause before plain child cancel",
                || {
                    let (parent, cancel_parent) = Context::background().with_cancel_cause();
                    let (child, cancel_child) = parent.with_cancel();
                    cancel_parent.cancel(ParentCause);
                    cancel_child.cancel();
                    child
                },
                canceled,
                WantCause::Named(ParentCause),
            ),
            (
                "parent cause after plain child cancel",
                || {
                    let (parent, cancel_parent) = Context::background().with_cancel_cause();
                    let (child, cancel_child) = parent.with_cancel();
                    cancel_child.cancel();
                    cancel_parent.cancel(ParentCause);
                    child
                },
                canceled,
                WantCause::Plain(Error::Canceled),
            ),
            (
                "child cause after plain parent cancel",
                || {
                    let (parent, cancel_parent) = Context::background().with_cancel();
                    let (child, cancel_child) = parent.with_cancel_cause();
                    cancel_parent.cancel();
                    cancel_child.cancel(ChildCause);
                    child
                },
                canceled,
                WantCause::Plain(Error::Canceled),
            ),
            (
                "child cause before plain parent cancel",
                || {
                    let (parent, cancel_parent) = Context::background().with_cancel();
                    let (child, cancel_child) = parent.with_cancel_cause();
                    cancel_child.cancel(ChildCause);
                    cancel_parent.cancel();
                    child
                },
                canceled,
                WantCause::Named(ChildCause),
            ),
            (
                "without_cancel",
                || Context::background().without_cancel(),
                None,
                WantCause::Nothing,
            ),
            (
                "without_cancel of a canceled parent",
                || {
                    let (parent, cancel) = Context::background().with_cancel_cause();
                    let detached = parent.without_cancel();
                    cancel.cancel(FinishedEarly);
                    detached
                },
                None,
                WantCause::Nothing,
            ),
        ];
        for (name, build, err, cause) in rows {
            let ctx = build();
            assert_eq!(ctx.err(), err, "{name}: err of {ctx}");
            assert_eq!(cause_of(&ctx), cause, "{name}: cause of {ctx}");
        }
    }

    // Port of TestCauseRace: a poller of `cause()` alone never sees a
    // cancellation without its cause, nor an error without a cause.
    #[test]
    fn cause_published_with_cancellation() {
        for round in 0..if cfg!(miri) { 3 } else { 100 } {
            let (ctx, cancel) = Context::background().with_cancel_cause();
            let canceller = std::thread::spawn(move || cancel.cancel(Because(round)));
            let give_up = Instant::now() + QUIESCENT;
            loop {
                let err = ctx.err();
                if let Some(cause) = ctx.cause() {
                    assert_eq!(
                        cause.downcast_ref::<Because>(),
                        Some(&Because(round)),
                        "round {round}: first cause seen is {cause:?}"
                    );
                    assert_eq!(ctx.err(), Some(Error::Canceled), "round {round}");
                    break;
                }
                assert_eq!(err, None, "round {round}: err seen before the cause");
                assert!(Instant::now() < give_up, "round {round}: no cause");
                std::thread::yield_now();
            }
            canceller.join().expect("cancel does not panic");
        }
    }

    #[derive(Debug, PartialEq)]
    struct Key(&'static str);

    // Port of TestWithoutCancel.
    #[test]
    fn without_cancel_keeps_values_only() {
        let ctx = Context::background()
            .with_value(Key("value"))
            .without_cancel();
        assert_eq!(ctx.deadline(), None);
        assert!(!ctx.done().is_done());
        assert!(!ctx.done().wait_timeout(Duration::from_millis(1)));
        assert_eq!(ctx.err(), None);
        assert!(ctx.cause().is_none());
        assert_eq!(ctx.value::<Key>(), Some(&Key("value")));
        assert_eq!(
            ctx.to_string(),
            format!(
                "context.Background.WithValue({}).WithoutCancel",
                type_name::<Key>()
            )
        );

        // Cut off from a cancellable parent, too.
        let (parent, cancel) = Context::background().with_cancel();
        let detached = parent.with_value(Key("kept")).without_cancel();
        assert_eq!(
            detached.to_string(),
            format!(
                "context.Background.WithCancel.WithValue({}).WithoutCancel",
                type_name::<Key>()
            )
        );
        cancel.cancel();
        assert!(parent.is_done());
        assert!(!detached.is_done());
        assert!(!detached.done().is_done());
        assert_eq!(detached.err(), None);
        assert!(detached.cause().is_none());
        assert_eq!(detached.value::<Key>(), Some(&Key("kept")));
    }

    // Port of TestContextErrDoneRace (Go issue 75533): once `err()` reports
    // done, a `Done` taken (and even registered as a waiter) before the
    // cancellation is already complete.
    #[test]
    fn err_implies_done_is_signalled() {
        let mut task = std::task::Context::from_waker(Waker::noop());
        for round in 0..if cfg!(miri) { 3 } else { 100 } {
            let (ctx, cancel) = Context::background().with_cancel();
            let done = ctx.done();
            let mut polled = ctx.done();
            assert!(Pin::new(&mut polled).poll(&mut task).is_pending());

            let canceller = std::thread::spawn(move || cancel.cancel());
            let give_up = Instant::now() + QUIESCENT;
            let mut spins = 0u32;
            while ctx.err().is_none() {
                assert!(Instant::now() < give_up, "round {round}: never canceled");
                // Spin briefly, then yield, so no scheduler starves the
                // canceller (valgrind runs one thread at a time).
                spins += 1;
                if spins < 64 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }

            assert!(done.is_done(), "round {round}: err set, Done not");
            assert!(done.wait_timeout(Duration::ZERO), "round {round}");
            assert_eq!(
                Pin::new(&mut polled).poll(&mut task),
                Poll::Ready(()),
                "round {round}: err set, registered future still pending"
            );
            canceller.join().expect("cancel does not panic");
        }
    }
}
