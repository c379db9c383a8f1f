//! Deadlines and timeouts (API.md semantics 7, 10 and 12): ports of Go's
//! deadline tests (`x_test.go`: TestDeadline, TestTimeout,
//! TestCanceledTimeout, TestLayersTimeout, the deadline rows of TestCause,
//! TestDeadlineExceededSupportsTimeout; `context_test.go`: the WithTimeout
//! round of TestCancelRemoves), then the behaviour Go leaves implicit:
//! overflowing timeouts, deadlines already past, cancel against expiry,
//! expiry with nobody waiting, waking threads and tasks, a million timers at
//! once, releasing deadline contexts that are dropped without `cancel()`,
//! and `cancel()` landing at the moment of expiry.
//!
//! Go's delegating `otherContext` becomes a value layer (transparent to
//! cancellation and deadlines, as `otherContext` is), as in `golang.rs`.
//! Every time bound is a guard against a hang, never a speed check.
//!
//! The global allocator counts live bytes for the memory test; that test
//! takes `EXCLUSIVE` for writing, every other test for reading, so nothing
//! else allocates while it measures.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use goctx::{AfterFunc, CancelFunc, Context, Error};

/// The longest any test is willing to wait before calling it a hang (Go's
/// "quiescent" wait); not a speed bound (miri runs ~1000× slower).
// A hang guard only: generous, because valgrind and sanitizers run 20-100x
// slower and one thread at a time (CI, issue 12).
const QUIESCENT: Duration = Duration::from_secs(if cfg!(miri) { 600 } else { 120 });
/// Rounds of the randomised layer tests.
const LAYER_ROUNDS: usize = if cfg!(miri) { 3 } else { 20 };
/// Go's `shortDuration`.
const SHORT: Duration = Duration::from_millis(1);
/// Go's `veryLongDuration` (1000 h).
const VERY_LONG: Duration = Duration::from_secs(1000 * 3600);

mod support;

use support::rng::Rng;
use support::{Named, WantCause, cause_of, exclusive, live_bytes, shared};

#[global_allocator]
static GLOBAL: support::LiveBytes = support::LiveBytes;

/// A value layer standing in for Go's `otherContext`.
#[derive(Debug)]
struct Wrapper;

/// Go's "expect deadline" helper: `ctx` becomes done within the quiescent
/// wait, with `DeadlineExceeded`.
#[track_caller]
fn expect_deadline(what: &str, ctx: &Context) {
    assert!(
        ctx.done().wait_timeout(QUIESCENT),
        "{what}: {ctx} not timed out"
    );
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded), "{what}: {ctx}");
}

/// `s` with the text inside every `.WithDeadline(…)` replaced by `_`, so
/// names can be compared whatever the clock said.
fn mask_deadlines(s: &str) -> String {
    const OPEN: &str = ".WithDeadline(";
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find(OPEN) {
        out.push_str(&rest[..at + OPEN.len()]);
        out.push('_');
        rest = &rest[at + OPEN.len()..];
        let close = rest.find(')').expect("a deadline segment is closed");
        rest = &rest[close..];
    }
    out.push_str(rest);
    out
}

/// Ports of Go's deadline tests.
mod go {
    use super::*;

    // Port of TestDeadlineExceededSupportsTimeout (and the error strings
    // Go's net_test.go relies on).
    #[test]
    fn deadline_exceeded_supports_timeout() {
        assert!(Error::DeadlineExceeded.is_timeout());
        assert!(!Error::Canceled.is_timeout());
        assert_eq!(
            Error::DeadlineExceeded.to_string(),
            "context deadline exceeded"
        );
        assert_eq!(Error::Canceled.to_string(), "context canceled");
        let as_std: &dyn std::error::Error = &Error::DeadlineExceeded;
        assert_eq!(as_std.to_string(), "context deadline exceeded");
    }

    // Port of TestDeadline.
    #[test]
    fn deadline() {
        let _shared = shared();
        let (c, _cancel) = Context::background().with_deadline(Instant::now() + SHORT);
        assert!(
            c.to_string()
                .starts_with("context.Background.WithDeadline("),
            "{c}"
        );
        expect_deadline("deadline", &c);
        // API.md 12: `.WithDeadline(<deadline> [<remaining>])`, before and
        // after it passed.
        for (c, _cancel) in [
            Context::background().with_timeout(Duration::from_secs(3600)),
            Context::background().with_deadline(Instant::now() - SHORT),
        ] {
            let shown = c.to_string();
            assert!(
                shown.starts_with("context.Background.WithDeadline(")
                    && shown.ends_with("])")
                    && shown.matches(" [").count() == 1,
                "{shown}"
            );
        }

        let (c, _cancel) = Context::background().with_deadline(Instant::now() + SHORT);
        let o = c.with_value(Wrapper);
        expect_deadline("deadline through a wrapper", &o);

        let (c, _cancel) = Context::background().with_deadline(Instant::now() + SHORT);
        let o = c.with_value(Wrapper);
        let (c, _cancel) = o.with_deadline(Instant::now() + VERY_LONG);
        // The later deadline is ignored: a plain cancellable child.
        assert!(c.to_string().ends_with(".WithCancel"), "{c}");
        assert_eq!(c.deadline(), o.deadline());
        expect_deadline("a later deadline under an earlier one", &c);

        let (c, _cancel) = Context::background().with_deadline(Instant::now() - SHORT);
        assert!(c.is_done(), "a past deadline: not done on return");
        expect_deadline("a past deadline", &c);

        let (c, _cancel) = Context::background().with_deadline(Instant::now());
        assert!(c.is_done(), "a deadline of now: not done on return");
        expect_deadline("a deadline of now", &c);
    }

    // Port of TestTimeout.
    #[test]
    fn timeout() {
        let _shared = shared();
        let (c, _cancel) = Context::background().with_timeout(SHORT);
        assert!(
            c.to_string()
                .starts_with("context.Background.WithDeadline("),
            "{c}"
        );
        expect_deadline("timeout", &c);

        let (c, _cancel) = Context::background().with_timeout(SHORT);
        let o = c.with_value(Wrapper);
        expect_deadline("timeout through a wrapper", &o);

        let (c, _cancel) = Context::background().with_timeout(SHORT);
        let o = c.with_value(Wrapper);
        let (c, _cancel) = o.with_timeout(VERY_LONG);
        assert!(c.to_string().ends_with(".WithCancel"), "{c}");
        expect_deadline("a longer timeout under a shorter one", &c);
    }

    // Port of TestCanceledTimeout.
    #[test]
    fn canceled_timeout() {
        let _shared = shared();
        let (c, _cancel_c) = Context::background().with_timeout(Duration::from_secs(1));
        let o = c.with_value(Wrapper);
        let (leaf, cancel) = o.with_timeout(VERY_LONG);
        cancel.cancel();
        assert!(leaf.done().is_done(), "{leaf} not done right after cancel");
        assert_eq!(leaf.err(), Some(Error::Canceled));
        assert_eq!(cause_of(&leaf), WantCause::Plain(Error::Canceled));
        assert!(!c.is_done(), "cancelling {leaf} reached {c}");
    }

    use crate::support::slot::{SLOTS, slot_value, with_slot};

    /// Go's layer helper: a random chain of value, cancel and timeout
    /// layers, at least 30 long and with at least one of each. Returns the
    /// leaf, the cancel funcs (timeout layers' included), the nearest layer
    /// per value slot, and the leaf's expected name with every deadline
    /// masked (see `mask_deadlines`).
    fn random_chain(
        rng: &mut Rng,
        timeout: Duration,
    ) -> (Context, Vec<CancelFunc>, [Option<usize>; SLOTS], String) {
        let mut ctx = Context::background();
        let mut name = String::from("context.Background");
        let mut nearest = [None; SLOTS];
        let mut cancels = Vec::new();
        let (mut timers, mut plain_cancels) = (0, 0);
        let mut layer = 0;
        while layer < 30 || timers == 0 || plain_cancels == 0 || nearest.iter().all(Option::is_none)
        {
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
                    assert_eq!(next.deadline(), ctx.deadline());
                    ctx = next;
                    name += ".WithCancel";
                    cancels.push(cancel);
                    plain_cancels += 1;
                }
                _ => {
                    let before = ctx.deadline();
                    let earliest = Instant::now() + timeout;
                    let (next, cancel) = ctx.with_timeout(timeout);
                    match before {
                        // The first deadline on the path: a deadline layer.
                        None => {
                            let own = next.deadline().expect("a timeout layer has a deadline");
                            assert!(own >= earliest, "deadline before now + timeout");
                            name += ".WithDeadline(_)";
                        }
                        // Later ones come after it: plain cancel layers.
                        Some(first) => {
                            assert_eq!(next.deadline(), Some(first));
                            name += ".WithCancel";
                        }
                    }
                    ctx = next;
                    cancels.push(cancel);
                    timers += 1;
                }
            }
            layer += 1;
        }
        (ctx, cancels, nearest, name)
    }

    fn check_values(what: &str, ctx: &Context, nearest: &[Option<usize>; SLOTS]) {
        for (slot, want) in nearest.iter().enumerate() {
            assert_eq!(slot_value(ctx, slot), *want, "{what}: slot {slot}");
        }
    }

    // Port of TestLayersTimeout: the leaf of a random chain with 1 ms
    // timeout layers times out, and keeps its values.
    #[test]
    fn layers_timeout() {
        let _shared = shared();
        let mut rng = Rng::from_clock();
        let seed = rng.0;
        for round in 0..LAYER_ROUNDS {
            let (ctx, _cancels, nearest, name) = random_chain(&mut rng, SHORT);
            let what = format!("seed {seed}, round {round}: {ctx}");
            let shown = ctx.to_string();
            assert!(shown.starts_with("context.Background."), "{what}");
            assert_eq!(
                shown.matches(".WithDeadline(").count(),
                1,
                "{what}: one deadline layer"
            );
            assert_eq!(mask_deadlines(&shown), name, "{what}");
            check_values(&what, &ctx, &nearest);

            assert!(ctx.done().wait_timeout(QUIESCENT), "{what}: never done");
            assert_eq!(ctx.err(), Some(Error::DeadlineExceeded), "{what}");
            assert_eq!(
                cause_of(&ctx),
                WantCause::Plain(Error::DeadlineExceeded),
                "{what}"
            );
            check_values(&what, &ctx, &nearest);
        }
    }

    // Port of TestLayersCancel with Go's timeout layers (very long
    // timeouts): any layer's cancel, a timeout layer's included, makes the
    // leaf done at once with `Canceled`.
    #[test]
    fn layers_cancel_with_timeout_layers() {
        let _shared = shared();
        let mut rng = Rng::from_clock();
        let seed = rng.0;
        for round in 0..LAYER_ROUNDS {
            let (ctx, cancels, nearest, name) = random_chain(&mut rng, VERY_LONG);
            let what = format!("seed {seed}, round {round}: {ctx}");
            assert!(!ctx.is_done(), "{what}: done before any cancel");
            assert_eq!(mask_deadlines(&ctx.to_string()), name, "{what}");
            check_values(&what, &ctx, &nearest);

            cancels[rng.below(cancels.len())].cancel();

            assert!(ctx.done().is_done(), "{what}: not done after cancel");
            assert_eq!(ctx.err(), Some(Error::Canceled), "{what}");
            assert_eq!(cause_of(&ctx), WantCause::Plain(Error::Canceled), "{what}");
            check_values(&what, &ctx, &nearest);
        }
    }

    // Port of TestCause: the deadline and timeout rows (Go's rows 12-17 and
    // 20), plus the rule of API.md 7 that a child whose parent's deadline
    // is not after its own is a plain cancellable child and ignores its
    // cause.
    #[test]
    fn cause_of_deadlines() {
        use Named::{FinishedEarly, ParentCause, TooSlow};
        let _shared = shared();
        const FOREVER: Duration = Duration::from_secs(1_000_000);
        type Row = (&'static str, fn() -> Context, Option<Error>, WantCause);
        let rows: [Row; 11] = [
            (
                "with_timeout(0), then cancel",
                || {
                    let (ctx, cancel) = Context::background().with_timeout(Duration::ZERO);
                    cancel.cancel();
                    ctx
                },
                Some(Error::DeadlineExceeded),
                WantCause::Plain(Error::DeadlineExceeded),
            ),
            (
                "with_timeout(FOREVER) canceled",
                || {
                    let (ctx, cancel) = Context::background().with_timeout(FOREVER);
                    cancel.cancel();
                    ctx
                },
                Some(Error::Canceled),
                WantCause::Plain(Error::Canceled),
            ),
            (
                "with_timeout_cause(0), then cancel",
                || {
                    let (ctx, cancel) =
                        Context::background().with_timeout_cause(Duration::ZERO, TooSlow);
                    cancel.cancel();
                    ctx
                },
                Some(Error::DeadlineExceeded),
                WantCause::Named(TooSlow),
            ),
            (
                "with_timeout_cause(FOREVER) canceled: the cancel func sets no cause",
                || {
                    let (ctx, cancel) = Context::background().with_timeout_cause(FOREVER, TooSlow);
                    cancel.cancel();
                    ctx
                },
                Some(Error::Canceled),
                WantCause::Plain(Error::Canceled),
            ),
            (
                "with_timeout_cause(0) stacked on a cause-cancelled parent",
                || {
                    let (parent, cancel_parent) = Context::background().with_cancel_cause();
                    let (child, _cancel_child) = parent.with_timeout_cause(Duration::ZERO, TooSlow);
                    cancel_parent.cancel(FinishedEarly);
                    child
                },
                Some(Error::DeadlineExceeded),
                WantCause::Named(TooSlow),
            ),
            (
                "with_timeout_cause(FOREVER) stacked, parent cancelled",
                || {
                    let (parent, cancel_parent) = Context::background().with_cancel_cause();
                    let (child, _cancel_child) = parent.with_timeout_cause(FOREVER, TooSlow);
                    cancel_parent.cancel(FinishedEarly);
                    child
                },
                Some(Error::Canceled),
                WantCause::Named(FinishedEarly),
            ),
            (
                "without_cancel of an expired timeout",
                || {
                    let (parent, cancel) =
                        Context::background().with_timeout_cause(Duration::ZERO, TooSlow);
                    let detached = parent.without_cancel();
                    cancel.cancel();
                    detached
                },
                None,
                WantCause::Nothing,
            ),
            // API.md 7: not after the parent's deadline means with_cancel.
            (
                "deadline cause under an equal parent deadline is ignored",
                || {
                    let at = Instant::now() + Duration::from_millis(20);
                    let (parent, _cancel_parent) =
                        Context::background().with_deadline_cause(at, ParentCause);
                    let (child, _cancel_child) = parent.with_deadline_cause(at, TooSlow);
                    assert!(child.to_string().ends_with(".WithCancel"), "{child}");
                    assert_eq!(child.deadline(), Some(at));
                    assert!(child.done().wait_timeout(QUIESCENT), "{child} never done");
                    child
                },
                Some(Error::DeadlineExceeded),
                WantCause::Named(ParentCause),
            ),
            (
                "timeout cause under a sooner plain timeout is ignored",
                || {
                    let (parent, _cancel_parent) =
                        Context::background().with_timeout(Duration::from_millis(20));
                    let (child, _cancel_child) = parent.with_timeout_cause(FOREVER, TooSlow);
                    assert!(child.done().wait_timeout(QUIESCENT), "{child} never done");
                    child
                },
                Some(Error::DeadlineExceeded),
                WantCause::Plain(Error::DeadlineExceeded),
            ),
            (
                "past deadline cause under an expired parent is ignored",
                || {
                    let (parent, _cancel_parent) =
                        Context::background().with_deadline(Instant::now() - SHORT);
                    let (child, _cancel_child) =
                        parent.with_deadline_cause(Instant::now(), TooSlow);
                    child
                },
                Some(Error::DeadlineExceeded),
                WantCause::Plain(Error::DeadlineExceeded),
            ),
            (
                "ignored cause, child cancelled first",
                || {
                    let (parent, _cancel_parent) = Context::background().with_timeout(FOREVER);
                    let (child, cancel_child) = parent.with_timeout_cause(FOREVER, TooSlow);
                    cancel_child.cancel();
                    assert!(!parent.is_done());
                    child
                },
                Some(Error::Canceled),
                WantCause::Plain(Error::Canceled),
            ),
        ];
        for (name, build, err, cause) in rows {
            let ctx = build();
            assert_eq!(ctx.err(), err, "{name}: err of {ctx}");
            assert_eq!(cause_of(&ctx), cause, "{name}: cause of {ctx}");
        }
    }

    /// Go's `customContext`: a context type of the test's own, done by its
    /// own cancel or, through `after_func`, when its parent is done. Its
    /// cause is Go's `Cause` algorithm: the nearest built-in cancellable
    /// context's cause, else its own error.
    struct CustomContext {
        parent: Context,
        err: Arc<OnceLock<Error>>,
        forwarded: Arc<AtomicBool>,
        after: AfterFunc,
    }

    impl CustomContext {
        fn new(parent: &Context) -> CustomContext {
            let err = Arc::new(OnceLock::new());
            let forwarded = Arc::new(AtomicBool::new(false));
            let after = parent.after_func({
                let (err, forwarded, parent) = (err.clone(), forwarded.clone(), parent.clone());
                move || {
                    let parent_err = parent.err().expect("after_func runs once done");
                    let _ = err.set(parent_err);
                    forwarded.store(true, Ordering::SeqCst);
                }
            });
            CustomContext {
                parent: parent.clone(),
                err,
                forwarded,
                after,
            }
        }

        fn cancel(&self) {
            let _ = self.err.set(Error::Canceled);
        }

        fn err(&self) -> Option<Error> {
            self.err.get().copied()
        }

        fn cause(&self) -> WantCause {
            match cause_of(&self.parent) {
                WantCause::Nothing => self.err().map_or(WantCause::Nothing, WantCause::Plain),
                cause => cause,
            }
        }

        /// Waits for the after-func to have forwarded the parent's error.
        fn wait_forwarded(&self) -> bool {
            let give_up = Instant::now() + QUIESCENT;
            while !self.forwarded.load(Ordering::SeqCst) {
                if Instant::now() > give_up {
                    return false;
                }
                thread::sleep(Duration::from_millis(1));
            }
            true
        }
    }

    impl Drop for CustomContext {
        fn drop(&mut self) {
            // The callback holds the parent: withdraw it if it never ran.
            self.after.stop();
        }
    }

    // Port of TestCause's rows 21-23: a context of the caller's own making,
    // fed by `after_func`, under a cause-cancellable parent.
    #[test]
    fn cause_through_after_func_context() {
        use Named::ParentCause;
        let _shared = shared();

        // Row 21: the parent is never cancelled.
        let (parent, _cancel_parent) = Context::background().with_cancel_cause();
        let custom = CustomContext::new(&parent);
        custom.cancel();
        assert_eq!(custom.err(), Some(Error::Canceled));
        assert_eq!(custom.cause(), WantCause::Plain(Error::Canceled));
        assert!(!custom.forwarded.load(Ordering::SeqCst));

        // Row 22: the parent is cancelled first.
        let (parent, cancel_parent) = Context::background().with_cancel_cause();
        let custom = CustomContext::new(&parent);
        cancel_parent.cancel(ParentCause);
        custom.cancel();
        assert_eq!(custom.err(), Some(Error::Canceled));
        assert_eq!(custom.cause(), WantCause::Named(ParentCause));
        assert!(custom.wait_forwarded(), "after_func never ran");

        // Row 23: the custom context is cancelled first; Go's `Cause`
        // still reports the parent's cause (a quirk its source admits).
        let (parent, cancel_parent) = Context::background().with_cancel_cause();
        let custom = CustomContext::new(&parent);
        custom.cancel();
        cancel_parent.cancel(ParentCause);
        assert_eq!(custom.err(), Some(Error::Canceled));
        assert_eq!(custom.cause(), WantCause::Named(ParentCause));
        assert!(custom.wait_forwarded(), "after_func never ran");

        // And fed by an expiring deadline alone.
        let (parent, _cancel_parent) = Context::background().with_timeout(SHORT);
        let custom = CustomContext::new(&parent);
        assert!(custom.wait_forwarded(), "after_func never ran");
        assert_eq!(custom.err(), Some(Error::DeadlineExceeded));
        assert_eq!(custom.cause(), WantCause::Plain(Error::DeadlineExceeded));
    }

    // Port of TestCancelRemoves, the WithTimeout round, with the other ways
    // a deadline child leaves its parent: expiry and being dropped.
    #[test]
    fn cancel_removes_timeout_child() {
        let _shared = shared();
        let (parent, _cancel) = Context::background().with_cancel();
        assert_eq!(parent.registered_children(), 0);
        let (_child, cancel_child) = parent.with_timeout(Duration::from_secs(60 * 60));
        assert_eq!(parent.registered_children(), 1);
        cancel_child.cancel();
        assert_eq!(parent.registered_children(), 0);

        // Through a value layer, with a cause.
        let (_child, cancel_child) = parent
            .with_value(Wrapper)
            .with_deadline_cause(Instant::now() + VERY_LONG, Named::TooSlow);
        assert_eq!(parent.registered_children(), 1);
        cancel_child.cancel();
        assert_eq!(parent.registered_children(), 0);

        // Expiry deregisters, too.
        let (child, _cancel_child) = parent.with_timeout(SHORT);
        expect_deadline("expiring child", &child);
        assert_eq!(parent.registered_children(), 0);

        // So does dropping it without cancel.
        let (child, cancel_child) = parent.with_timeout(VERY_LONG);
        assert_eq!(parent.registered_children(), 1);
        drop((child, cancel_child));
        assert_eq!(parent.registered_children(), 0);

        // A deadline already past never registers.
        let (child, _cancel_child) = parent.with_timeout(Duration::ZERO);
        assert!(child.is_done());
        assert_eq!(parent.registered_children(), 0);
        assert!(!parent.is_done());
    }

    // Port of TestParentFinishesChild with its timer child (derived through
    // the value layer) and its after-func, which `golang.rs` leaves out.
    #[test]
    fn parent_finishes_timer_child() {
        let _shared = shared();
        let (parent, cancel) = Context::background().with_cancel();
        let (cancel_child, _c1) = parent.with_cancel();
        let value_child = parent.with_value(Wrapper);
        let (timer_child, _c2) = value_child.with_timeout(VERY_LONG);
        let (ran, after_ran) = mpsc::channel();
        let _after = parent.after_func(move || ran.send(()).unwrap());

        for ctx in [&parent, &cancel_child, &value_child, &timer_child] {
            assert!(!ctx.is_done(), "{ctx}");
        }
        // The timer child registers with `parent` itself; the after-func
        // is no child.
        assert_eq!(parent.registered_children(), 2);

        cancel.cancel();

        assert_eq!(parent.registered_children(), 0);
        for ctx in [&parent, &cancel_child, &value_child, &timer_child] {
            assert!(ctx.done().is_done(), "{ctx} not done right after cancel");
            assert_eq!(ctx.err(), Some(Error::Canceled), "{ctx}");
        }
        after_ran
            .recv_timeout(QUIESCENT)
            .expect("the parent's after_func never ran");
    }
}

// API.md 7: the earliest deadline on the path to the root, through value
// layers; none through without_cancel.
#[test]
fn deadline_is_the_earliest_on_the_path() {
    let _shared = shared();
    let bg = Context::background();
    assert_eq!(bg.deadline(), None);
    assert_eq!(bg.with_cancel().0.deadline(), None);
    assert_eq!(bg.with_value(Wrapper).deadline(), None);

    let now = Instant::now();
    let (d1, d0, d2) = (
        now + Duration::from_secs(3600),
        now + Duration::from_secs(1800),
        now + Duration::from_secs(7200),
    );
    let (a, cancel_a) = bg.with_deadline(d1);
    assert_eq!(a.deadline(), Some(d1));
    let v = a.with_value(Wrapper);
    assert_eq!(v.deadline(), Some(d1));
    let (c, _cc) = v.with_cancel();
    assert_eq!(c.deadline(), Some(d1));
    let (later, _cl) = c.with_value(Wrapper).with_deadline(d2);
    assert_eq!(later.deadline(), Some(d1), "a later deadline is ignored");
    assert!(later.to_string().ends_with(".WithCancel"), "{later}");
    let (sooner, _cs) = later.with_value(Wrapper).with_deadline(d0);
    assert_eq!(sooner.deadline(), Some(d0), "a sooner deadline wins");
    assert!(sooner.to_string().contains(".WithDeadline("), "{sooner}");
    let below = sooner.with_value(Wrapper).with_cancel_cause().0;
    assert_eq!(below.deadline(), Some(d0));

    // without_cancel cuts the path: no deadline, and a timeout below it is
    // its own even if later than the one above.
    let detached = sooner.without_cancel();
    assert_eq!(detached.deadline(), None);
    assert_eq!(detached.with_value(Wrapper).deadline(), None);
    assert_eq!(detached.with_cancel().0.deadline(), None);
    let (own, _co) = detached.with_deadline(d2);
    assert_eq!(own.deadline(), Some(d2));
    assert!(
        own.to_string().contains(".WithoutCancel.WithDeadline("),
        "{own}"
    );

    // Cancelling does not change the deadline.
    cancel_a.cancel();
    assert_eq!(sooner.deadline(), Some(d0));
    assert_eq!(a.deadline(), Some(d1));
}

// API.md 7: a timeout that overflows `now + t` means no deadline, never a
// panic; a far-future deadline is accepted and never fires.
#[test]
fn huge_timeouts_never_panic() {
    let _shared = shared();
    let bg = Context::background();
    let (max, cancel_max) = bg.with_timeout(Duration::MAX);
    assert_eq!(max.deadline(), None);
    assert_eq!(max.to_string(), "context.Background.WithCancel");
    let (max_cause, cancel_max_cause) = bg.with_timeout_cause(Duration::MAX, Named::TooSlow);
    assert_eq!(max_cause.deadline(), None);
    assert_eq!(max_cause.to_string(), "context.Background.WithCancel");

    // The farthest instant this platform can represent (within a second).
    let now = Instant::now();
    let (mut lo, mut hi) = (0u64, u64::MAX);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if now.checked_add(Duration::from_secs(mid)).is_some() {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let farthest = now + Duration::from_secs(lo);
    let century = now + Duration::from_secs(100 * 365 * 24 * 3600);
    let mut far = Vec::new();
    for at in [farthest, century] {
        let (ctx, cancel) = bg.with_deadline(at);
        assert_eq!(ctx.deadline(), Some(at));
        let shown = ctx.to_string();
        assert!(
            shown.starts_with("context.Background.WithDeadline("),
            "{shown}"
        );
        let (cause_ctx, cause_cancel) = bg.with_deadline_cause(at, Named::TooSlow);
        assert_eq!(cause_ctx.deadline(), Some(at));
        // Under an existing deadline, a huge timeout is a plain child.
        let (under, _cu) = ctx.with_timeout(Duration::MAX);
        assert_eq!(under.deadline(), Some(at));
        assert!(under.to_string().ends_with(".WithCancel"), "{under}");
        far.push((ctx, cancel, cause_ctx, cause_cancel));
    }

    // None of them fires.
    thread::sleep(Duration::from_millis(20));
    for ctx in [&max, &max_cause] {
        assert!(!ctx.is_done(), "{ctx}");
    }
    for (ctx, _, cause_ctx, _) in &far {
        assert!(!ctx.is_done(), "{ctx}");
        assert!(!cause_ctx.is_done(), "{cause_ctx}");
    }

    // They cancel like any cancellable context.
    cancel_max.cancel();
    cancel_max_cause.cancel();
    assert_eq!(max.err(), Some(Error::Canceled));
    assert_eq!(cause_of(&max_cause), WantCause::Plain(Error::Canceled));
    for (ctx, cancel, cause_ctx, cause_cancel) in &far {
        cancel.cancel();
        cause_cancel.cancel();
        assert_eq!(ctx.err(), Some(Error::Canceled));
        assert_eq!(cause_of(cause_ctx), WantCause::Plain(Error::Canceled));
    }

    // Waiting forever-ish on a never-expiring deadline gives up cleanly.
    let (ctx, _cancel) = bg.with_deadline(century);
    assert!(!ctx.done().wait_timeout(Duration::from_millis(1)));
    assert!(!ctx.done().wait_deadline(now + Duration::from_millis(2)));
}

// API.md 7: `Duration::ZERO` and a deadline at or before now are done
// before the call returns, with `DeadlineExceeded` and the given cause.
#[test]
fn zero_and_past_deadlines_are_done_on_return() {
    let _shared = shared();
    let (parent, _cancel_parent) = Context::background().with_cancel();
    let parents = [
        Context::background(),
        parent.clone(),
        parent.with_value(Wrapper),
    ];
    let past = Instant::now() - Duration::from_secs(1);
    for p in &parents {
        let made: [(&str, (Context, CancelFunc), WantCause); 6] = [
            (
                "with_timeout(ZERO)",
                p.with_timeout(Duration::ZERO),
                WantCause::Plain(Error::DeadlineExceeded),
            ),
            (
                "with_timeout_cause(ZERO)",
                p.with_timeout_cause(Duration::ZERO, Named::TooSlow),
                WantCause::Named(Named::TooSlow),
            ),
            (
                "with_deadline(past)",
                p.with_deadline(past),
                WantCause::Plain(Error::DeadlineExceeded),
            ),
            (
                "with_deadline_cause(past)",
                p.with_deadline_cause(past, Named::TooSlow),
                WantCause::Named(Named::TooSlow),
            ),
            (
                "with_deadline(now)",
                p.with_deadline(Instant::now()),
                WantCause::Plain(Error::DeadlineExceeded),
            ),
            (
                "with_deadline_cause(now), plain error as cause",
                p.with_deadline_cause(Instant::now(), Error::Canceled),
                WantCause::Plain(Error::Canceled),
            ),
        ];
        for (what, (ctx, cancel), cause) in made {
            let what = format!("{what} under {p}");
            assert!(ctx.done().is_done(), "{what}: not done on return");
            assert_eq!(ctx.err(), Some(Error::DeadlineExceeded), "{what}");
            assert_eq!(cause_of(&ctx), cause, "{what}");
            assert!(ctx.to_string().contains(".WithDeadline("), "{what}: {ctx}");
            // Descendants derived afterwards are done at once, with the same
            // error and cause.
            let (child, _cc) = ctx.with_value(Wrapper).with_cancel();
            assert!(child.is_done(), "{what}: child");
            assert_eq!(child.err(), Some(Error::DeadlineExceeded), "{what}");
            assert_eq!(cause_of(&child), cause, "{what}: child");
            // Cancelling afterwards changes nothing.
            cancel.cancel();
            assert_eq!(ctx.err(), Some(Error::DeadlineExceeded), "{what}");
            assert_eq!(cause_of(&ctx), cause, "{what}");
        }
    }
    assert!(!parent.is_done());
    assert_eq!(parent.registered_children(), 0);

    // Under a parent that is already done, the parent's cancellation came
    // first and wins.
    let (done_parent, cancel) = Context::background().with_cancel_cause();
    cancel.cancel(Named::FinishedEarly);
    let (ctx, _c) = done_parent.with_timeout_cause(Duration::ZERO, Named::TooSlow);
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(cause_of(&ctx), WantCause::Named(Named::FinishedEarly));
    let (ctx, _c) = done_parent.with_timeout_cause(VERY_LONG, Named::TooSlow);
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(cause_of(&ctx), WantCause::Named(Named::FinishedEarly));
}

// API.md 7 and 3: the cancel func of a deadline context cancels with
// `Canceled`; the deadline passing later changes neither err nor cause.
// And the other way round: an expiry is not overwritten by a later cancel.
#[test]
fn cancel_and_expiry_first_one_wins() {
    let _shared = shared();
    // Long enough that the cancel below normally lands first; a round in
    // which the clock passed the deadline before `cancel()` returned (a
    // stalled thread, miri's slow interpreter) says nothing and is redone.
    let wait = Duration::from_millis(if cfg!(miri) { 500 } else { 30 });
    let mut rounds = 0;
    let (ctx, child, deadline) = loop {
        rounds += 1;
        assert!(
            rounds <= 20,
            "cancel() never returned before a {wait:?} deadline"
        );
        let (parent, _cp) = Context::background().with_cancel();
        let (ctx, cancel) = parent.with_timeout_cause(wait, Named::TooSlow);
        let (child, cc) = ctx.with_value(Wrapper).with_cancel();
        let deadline = ctx.deadline().expect("a deadline");
        cancel.cancel();
        if Instant::now() >= deadline {
            continue;
        }
        // The cancel returned before the deadline, so it won.
        assert_eq!(ctx.err(), Some(Error::Canceled));
        assert_eq!(cause_of(&ctx), WantCause::Plain(Error::Canceled));
        assert_eq!(child.err(), Some(Error::Canceled));
        assert_eq!(parent.registered_children(), 0);
        drop(cc);
        break (ctx, child, deadline);
    };
    // Past the deadline, with margin.
    while Instant::now() < deadline + wait {
        thread::sleep(wait);
    }
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(cause_of(&ctx), WantCause::Plain(Error::Canceled));
    assert_eq!(child.err(), Some(Error::Canceled));
    assert_eq!(cause_of(&child), WantCause::Plain(Error::Canceled));
    assert_eq!(ctx.deadline(), Some(deadline));

    // A parent's cancellation before the child's deadline wins, too.
    let mut rounds = 0;
    let ctx = loop {
        rounds += 1;
        assert!(
            rounds <= 20,
            "cancel() never returned before a {wait:?} deadline"
        );
        let (parent, cancel_parent) = Context::background().with_cancel_cause();
        let (ctx, _c) = parent.with_timeout_cause(wait, Named::TooSlow);
        let deadline = ctx.deadline().expect("a deadline");
        cancel_parent.cancel(Named::FinishedEarly);
        if Instant::now() < deadline {
            break ctx;
        }
    };
    thread::sleep(wait * 2);
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(cause_of(&ctx), WantCause::Named(Named::FinishedEarly));

    // Expiry first: cancel() afterwards changes nothing.
    let (ctx, cancel) = Context::background().with_timeout_cause(SHORT, Named::TooSlow);
    expect_deadline("expiry before cancel", &ctx);
    cancel.cancel();
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_of(&ctx), WantCause::Named(Named::TooSlow));
}

// API.md 2 and 7: a deadline context derived while its parent is being
// cancelled ends up done, and with one cancellation's error and cause:
// the parent's, or (for a deadline already past) possibly its own expiry.
#[test]
fn deadline_derivation_racing_parent_cancel() {
    let _shared = shared();
    for round in 0..if cfg!(miri) { 3 } else { 100 } {
        let (parent, cancel) = Context::background().with_cancel_cause();
        let start = Arc::new(Barrier::new(2));
        let canceller = {
            let start = Arc::clone(&start);
            thread::spawn(move || {
                start.wait();
                cancel.cancel(Named::FinishedEarly);
            })
        };
        start.wait();
        let (long, _c1) = parent.with_timeout_cause(VERY_LONG, Named::TooSlow);
        let (past, _c2) = parent.with_timeout_cause(Duration::ZERO, Named::TooSlow);
        assert!(past.is_done(), "round {round}: a past deadline not done");
        assert!(
            long.done().wait_timeout(QUIESCENT),
            "round {round}: never done"
        );
        assert_eq!(long.err(), Some(Error::Canceled), "round {round}");
        assert_eq!(
            cause_of(&long),
            WantCause::Named(Named::FinishedEarly),
            "round {round}"
        );
        let pair = (past.err(), cause_of(&past));
        assert!(
            pair == (
                Some(Error::Canceled),
                WantCause::Named(Named::FinishedEarly)
            ) || pair
                == (
                    Some(Error::DeadlineExceeded),
                    WantCause::Named(Named::TooSlow)
                ),
            "round {round}: {pair:?}"
        );
        canceller.join().unwrap();
        assert_eq!(parent.registered_children(), 0);
    }
}

// Regression: `cancel()` landing just as the timer fires the deadline. The
// timer could see the entry disarmed and uncount it as garbage before the
// cancelling thread had counted it, so the count dipped below zero and, in
// a debug build, the cancelling thread's `fetch_add(1) + 1` panicked with
// "attempt to add with overflow" inside `cancel()` (or a drop). The dip
// needs no other garbage in the timer, so this test runs alone
// (`EXCLUSIVE`), and sweeps the cancel across the moment of expiry.
#[test]
fn cancel_at_the_moment_of_expiry() {
    let _exclusive = exclusive();
    let rounds: u64 = if cfg!(miri) { 20 } else { 20_000 };
    let budget = Instant::now() + Duration::from_millis(1500);
    let (mut cancelled, mut expired) = (0, 0);
    for round in 0..rounds {
        let at = Instant::now() + Duration::from_micros(100 + round % 200);
        let (ctx, cancel) = Context::background().with_deadline_cause(at, Named::TooSlow);
        // From the deadline to well after it, where the timer wakes.
        let lead = Duration::from_micros(round % 150);
        while Instant::now() < at + lead {
            std::hint::spin_loop();
        }
        cancel.cancel();
        match (ctx.err(), cause_of(&ctx)) {
            (Some(Error::Canceled), WantCause::Plain(Error::Canceled)) => cancelled += 1,
            (Some(Error::DeadlineExceeded), WantCause::Named(Named::TooSlow)) => expired += 1,
            other => panic!("round {round}: {other:?}"),
        }
        drop(ctx);
        if Instant::now() > budget {
            break;
        }
    }
    eprintln!(
        "cancel_at_the_moment_of_expiry: cancel first {cancelled} times, expiry first {expired} times"
    );
}

// API.md 7: the deadline fires with nobody waiting on the context; never
// before the deadline; and reaches descendants.
#[test]
fn expiry_fires_with_nobody_waiting() {
    let _shared = shared();
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_millis(20));
    let deadline = ctx.deadline().expect("a deadline");
    let (child, _cc) = ctx.with_value(Wrapper).with_cancel();
    let value_child = ctx.with_value(Wrapper);
    let give_up = Instant::now() + QUIESCENT;
    while !ctx.is_done() {
        assert!(Instant::now() < give_up, "{ctx} never expired");
        thread::sleep(Duration::from_millis(1));
    }
    assert!(
        Instant::now() >= deadline,
        "{ctx} expired before its deadline"
    );
    assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    assert_eq!(cause_of(&ctx), WantCause::Plain(Error::DeadlineExceeded));
    // The expiry reaches the descendants right after the context itself
    // (it is done first, then its subtree): wait for them, boundedly.
    for c in [&child, &value_child] {
        assert!(c.done().wait_timeout(QUIESCENT), "{c} not cancelled");
        assert_eq!(c.err(), Some(Error::DeadlineExceeded), "{c}");
        assert_eq!(
            cause_of(c),
            WantCause::Plain(Error::DeadlineExceeded),
            "{c}"
        );
    }

    // Several with distinct deadlines, none held by a waiter: each expires
    // at or after its own deadline.
    let timers: Vec<_> = (0..8)
        .map(|i| Context::background().with_timeout(Duration::from_millis(5 + 5 * (i % 4))))
        .collect();
    for (ctx, _) in &timers {
        let deadline = ctx.deadline().expect("a deadline");
        while !ctx.is_done() {
            assert!(Instant::now() < give_up, "{ctx} never expired");
            thread::sleep(Duration::from_millis(1));
        }
        assert!(Instant::now() >= deadline, "{ctx} expired early");
        assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    }
}

// API.md 7 and 9: blocked threads and pending tasks wake on expiry,
// whichever context of the subtree they wait on.
#[test]
fn waiters_wake_on_expiry() {
    let _shared = shared();
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_millis(30));
    let (cancel_child, _c1) = ctx.with_cancel();
    let value_child = ctx.with_value(Wrapper);
    let (long_child, _c2) = value_child.with_timeout(VERY_LONG);
    let targets = [ctx.clone(), cancel_child, value_child, long_child];

    // Threads: untimed, timed and deadline waits.
    let start = Arc::new(Barrier::new(9));
    let (woken, all_woken) = mpsc::channel();
    for i in 0..8 {
        let ctx = targets[i % targets.len()].clone();
        let (start, woken) = (Arc::clone(&start), woken.clone());
        thread::spawn(move || {
            start.wait();
            match i % 3 {
                0 => ctx.done().wait(),
                1 => assert!(ctx.done().wait_timeout(Duration::MAX)),
                _ => assert!(ctx.done().wait_deadline(Instant::now() + QUIESCENT)),
            }
            woken.send((i, ctx.err())).unwrap();
        });
    }
    start.wait();

    // Tasks on a runtime.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let ctx = targets[i % targets.len()].clone();
            rt.spawn(async move {
                ctx.done().await;
                ctx.err()
            })
        })
        .collect();

    for _ in 0..8 {
        let (i, err) = all_woken
            .recv_timeout(QUIESCENT)
            .expect("a blocked thread was never woken by the expiry");
        assert_eq!(err, Some(Error::DeadlineExceeded), "thread {i}");
    }
    rt.block_on(async {
        for (i, task) in tasks.into_iter().enumerate() {
            let err = tokio::time::timeout(QUIESCENT, task)
                .await
                .unwrap_or_else(|_| panic!("task {i} was never woken by the expiry"))
                .unwrap();
            assert_eq!(err, Some(Error::DeadlineExceeded), "task {i}");
        }
    });
    assert!(ctx.is_done());
}

// The design's one shared timer thread: arming, expiring and cancelling
// many deadlines starts no thread per context (the counterpart of Go's
// TestCustomContextGoroutines, which counts watcher goroutines).
#[cfg(all(target_os = "linux", not(miri)))]
#[test]
fn deadlines_start_no_thread_each() {
    let _exclusive = exclusive();
    // goctx's own threads only (all are named `goctx-…`): the test harness
    // starts a thread for the next test meanwhile (it then waits for the
    // lock), so the process's total is no measure of what goctx started.
    let threads = || {
        std::fs::read_dir("/proc/self/task")
            .expect("procfs")
            .filter_map(|task| {
                let comm = task.ok()?.path().join("comm");
                let name = std::fs::read_to_string(comm).ok()?;
                name.starts_with("goctx").then_some(())
            })
            .count()
    };
    let (warm, _cancel) = Context::background().with_timeout(SHORT);
    warm.done().wait();
    let before = threads();

    let (parent, cancel_parent) = Context::background().with_cancel();
    let long: Vec<_> = (0..1000)
        .map(|i| {
            let base = if i % 2 == 0 {
                parent.clone()
            } else {
                Context::background()
            };
            base.with_timeout(VERY_LONG)
        })
        .collect();
    let short: Vec<_> = (0..1000)
        .map(|i| parent.with_timeout(Duration::from_millis(1 + i % 5)))
        .collect();
    for (ctx, _) in &short {
        expect_deadline("a short deadline", ctx);
    }
    let during = threads();
    cancel_parent.cancel();
    drop((long, short));
    let after = threads();
    assert!(
        during <= before && after <= before,
        "threads: {before} before, {during} with 2000 deadlines armed, {after} after"
    );
}

/// A million deadlines at once under `cfg(not(miri))`.
const MANY: usize = if cfg!(miri) { 50 } else { 1_000_000 };

// API.md 7: a million deadline contexts armed at once (50-150 ms, spread)
// all expire, each with `DeadlineExceeded`; half of them are children of a
// long-lived parent, which ends with none registered.
#[test]
fn a_million_deadlines_all_expire() {
    let _shared = shared();
    let start = Instant::now();
    let (parent, _cancel_parent) = Context::background().with_cancel();
    let parent = parent.with_value(Wrapper);
    let makers: Vec<_> = (0..2)
        .map(|t| {
            let parent = parent.clone();
            thread::spawn(move || {
                let base = if t == 0 {
                    Context::background()
                } else {
                    parent
                };
                (0..MANY / 2)
                    .map(|i| {
                        let spread = (i * 7919 + t * 13) % 101;
                        base.with_timeout(Duration::from_millis(50 + spread as u64))
                            .0
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<Context> = makers.into_iter().flat_map(|m| m.join().unwrap()).collect();
    let made = start.elapsed();
    assert_eq!(all.len(), MANY);

    let give_up = Instant::now() + QUIESCENT * 3;
    for (i, ctx) in all.iter().enumerate() {
        assert!(
            ctx.done().wait_deadline(give_up),
            "deadline {i} of {MANY} never expired"
        );
    }
    let expired = start.elapsed();
    let wrong = all
        .iter()
        .filter(|ctx| ctx.err() != Some(Error::DeadlineExceeded))
        .count();
    assert_eq!(wrong, 0, "{wrong} of {MANY} not DeadlineExceeded");
    assert_eq!(parent.registered_children(), 0);
    assert!(!parent.is_done());
    drop(all);
    eprintln!(
        "a_million_deadlines_all_expire: {MANY} armed in {made:?}, all expired by {expired:?}, \
         dropped by {:?}",
        start.elapsed()
    );
}

/// Live bytes allowed above the baseline once dropped deadline contexts
/// are collected: the timer may keep up to 1023 garbage entries (a deadline
/// context is about 400 bytes) uncompacted, and epoch bags hold a little.
const SLACK: isize = 768 * 1024;
/// Deadline contexts dropped without cancel: about 40 MB (1.6 MB under
/// miri, still well above `SLACK`).
const DROPPED: usize = if cfg!(miri) { 500 } else { 100_000 };

fn live() -> isize {
    live_bytes()
}

/// Flushes epoch garbage and gives the timer thread time to compact until
/// live bytes are within `SLACK` of `baseline`, or `QUIESCENT` passes.
/// Returns the bytes above the baseline at the end.
fn settle(baseline: isize) -> isize {
    let give_up = Instant::now() + QUIESCENT;
    loop {
        for _ in 0..8 {
            crossbeam_epoch::pin().flush();
        }
        let above = live() - baseline;
        if above < SLACK || Instant::now() > give_up {
            return above;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

// API.md 10: deadline contexts dropped without `cancel()` before they
// expire are freed by the timer when their deadline comes (the timer holds
// the last reference to their memory).
#[test]
fn dropped_before_expiry_freed_at_the_deadline() {
    const N: usize = if cfg!(miri) { 10 } else { 1000 };
    let _exclusive = exclusive();
    let (warm, _cancel) = Context::background().with_timeout(SHORT);
    warm.done().wait();
    drop((warm, _cancel));
    let baseline = live();
    for i in 0..N {
        drop(Context::background().with_timeout(Duration::from_millis(1 + (i % 5) as u64)));
    }
    let held = live() - baseline;
    // The timer expires in deadline order: once a later deadline has fired,
    // every dropped entry has been taken off the timer.
    let (sentinel, _cancel) = Context::background().with_timeout(Duration::from_millis(20));
    expect_deadline("sentinel", &sentinel);
    let above = live() - baseline;
    eprintln!(
        "dropped_before_expiry_freed_at_the_deadline: {N} dropped contexts held {held:+} bytes, \
         {above:+} after their deadlines"
    );
    assert!(
        above < 64 * 1024,
        "{above} bytes above the baseline after the deadlines of {N} dropped contexts passed \
         (they held {held})"
    );
}

// API.md 10: deadline contexts dropped without `cancel()` are released,
// timer entries included (the timer compacts its garbage), whether their
// parent is the background or a live cancellable context.
#[test]
fn dropped_deadline_contexts_are_released() {
    let _exclusive = exclusive();
    // Warm up: the timer thread, this thread's epoch handle.
    let (warm, _c) = Context::background().with_timeout(SHORT);
    warm.done().wait();
    let (p, _c) = Context::background().with_cancel();
    for _ in 0..256 {
        drop(p.with_timeout(VERY_LONG));
    }
    drop((p, _c, warm));
    let (parent, cancel_parent) = Context::background().with_cancel();
    let parent = parent.with_value(Wrapper);
    // Let garbage of the warm-up and of earlier tests go before measuring.
    for _ in 0..32 {
        crossbeam_epoch::pin().flush();
    }
    thread::sleep(Duration::from_millis(20));

    for (what, base, registers) in [
        ("background", Context::background(), false),
        ("a live parent", parent.clone(), true),
    ] {
        let baseline = live();
        let held: Vec<_> = (0..DROPPED).map(|_| base.with_timeout(VERY_LONG)).collect();
        let peak = live() - baseline;
        assert_eq!(
            base.registered_children(),
            if registers { DROPPED } else { 0 }
        );
        drop(held);
        let after_drop = live() - baseline;
        let above = settle(baseline);
        eprintln!(
            "dropped_deadline_contexts_are_released ({what}): {DROPPED} contexts held \
             {peak:+} bytes, {after_drop:+} right after the drop, {above:+} after settling"
        );
        assert!(
            above < SLACK,
            "{what}: {above} bytes above the baseline after dropping {DROPPED} deadline \
             contexts (they held {peak}; slack {SLACK})"
        );
        assert_eq!(base.registered_children(), 0);
    }
    assert!(!parent.is_done());
    cancel_parent.cancel();
}
