//! Models 8 and 10: a deadline expiry racing a manual cancel, and a deadline
//! context dropped while its timer fires. The timer is driven by hand
//! (`goctx::loom_hooks`): under loom, arming queues the entry on the model
//! thread, and `fire` runs exactly what the timer thread runs at expiry.
//! The wheel models (`move_races_cancel`, `move_races_drop`,
//! `link_races_sweep`) link the entry into a two-list model wheel instead
//! and sweep it with the timer's own `sweep_list` and `relink`: arming vs
//! sweeping vs disarming, and moving an entry down the wheel.
#![cfg(loom)]

mod support;

use std::time::{Duration, Instant};

use goctx::{Context, Error, loom_hooks};
use loom::thread;
use support::{Tag, model, tag_of};

fn far() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

fn armed_timer() -> loom_hooks::ArmedTimer {
    let mut armed = loom_hooks::take_armed();
    assert_eq!(armed.len(), 1, "one deadline armed");
    armed.pop().unwrap()
}

/// Model 8: exactly one of expiry and cancel wins; err/cause (of the node
/// and its child) agree with the winner; the timer entry is not used after
/// free whichever wins.
#[test]
fn expiry_races_cancel() {
    model("expiry_races_cancel", || {
        let (ctx, cancel) = Context::background().with_deadline_cause(far(), Tag(8));
        let (child, _child_cancel) = ctx.with_cancel();
        let timer = armed_timer();
        let t = thread::spawn(move || timer.fire());
        cancel.cancel();
        t.join().unwrap();
        match ctx.err() {
            Some(Error::Canceled) => {
                let cause = ctx.cause().unwrap();
                assert_eq!(cause.downcast_ref::<Error>(), Some(&Error::Canceled));
            }
            Some(Error::DeadlineExceeded) => assert_eq!(tag_of(&ctx), Some(8)),
            None => panic!("neither cancellation took effect"),
        }
        assert_eq!(child.err(), ctx.err());
        assert_eq!(
            child.cause().map(|c| c.to_string()),
            ctx.cause().map(|c| c.to_string())
        );
    });
}

/// Model 8 through a parent: the parent's cancel races the child's expiry.
#[test]
fn child_expiry_races_parent_cancel() {
    model("child_expiry_races_parent_cancel", || {
        let (parent, cancel) = Context::background().with_cancel_cause();
        let (ctx, _ctx_cancel) = parent.with_deadline(far());
        let timer = armed_timer();
        let t = thread::spawn(move || timer.fire());
        cancel.cancel(Tag(1));
        t.join().unwrap();
        match ctx.err() {
            Some(Error::Canceled) => assert_eq!(tag_of(&ctx), Some(1)),
            Some(Error::DeadlineExceeded) => {
                let cause = ctx.cause().unwrap();
                assert_eq!(
                    cause.downcast_ref::<Error>(),
                    Some(&Error::DeadlineExceeded)
                );
            }
            None => panic!("neither cancellation took effect"),
        }
        assert_eq!(parent.registered_children(), 0);
    });
}

/// Model 10: the deadline context's last handles are dropped while its
/// timer fires: the timer never touches the released node beyond its own
/// memory reference.
#[test]
fn drop_races_expiry() {
    model("drop_races_expiry", || {
        let (ctx, cancel) = Context::background().with_deadline(far());
        let timer = armed_timer();
        let t = thread::spawn(move || timer.fire());
        drop(ctx);
        drop(cancel);
        t.join().unwrap();
    });
}

/// A deadline context reduced to its cancel handle, and its armed timer:
/// the cancel handle's drop is the last handle's.
fn last_handle_and_timer() -> (goctx::CancelFunc, loom_hooks::ArmedTimer) {
    let (ctx, cancel) = Context::background().with_deadline(far());
    drop(ctx);
    (cancel, armed_timer())
}

/// Model 10 with a cancel first: the last handle goes right after a
/// `cancel()` that races the expiry. If the cancel's disarm won, the entry
/// is `DISARMED` for good and the handle goes without a read-modify-write
/// (`Node::give_back`); if the timer claimed the entry, it may be taking a
/// handle with `try_acquire` at that moment, so the drop must decrement —
/// and whichever gives the last handle back releases the node, once.
#[test]
fn cancel_and_last_drop_race_expiry() {
    model("cancel_and_last_drop_race_expiry", || {
        let (cancel, timer) = last_handle_and_timer();
        let t = thread::spawn(move || timer.fire());
        cancel.cancel();
        t.join().unwrap();
    });
}

/// The same with the threads swapped (the cancel and the drop spawned,
/// the expiry on the model's thread). This is the orientation in which loom
/// stops the timer between its claim and its `try_acquire` while the other
/// thread cancels and drops (183 schedules, against 26 above): with a
/// `may_claim` that wrongly called `FIRED` final, it fails with a causality
/// violation in `retire` even with `try_acquire`'s `upgradable`
/// assertion taken out.
#[test]
fn cancel_and_last_drop_on_another_thread_race_expiry() {
    model("cancel_and_last_drop_on_another_thread_race_expiry", || {
        let (cancel, timer) = last_handle_and_timer();
        let t = thread::spawn(move || cancel.cancel());
        timer.fire();
        t.join().unwrap();
    });
}

/// Model 10 under a live parent: the timer's cancel of the child must not
/// touch the parent's list after the child deregistered on release.
#[test]
fn drop_races_expiry_under_parent() {
    model("drop_races_expiry_under_parent", || {
        let (parent, _parent_cancel) = Context::background().with_cancel();
        let (ctx, cancel) = parent.with_deadline(far());
        let timer = armed_timer();
        let t = thread::spawn(move || timer.fire());
        drop(ctx);
        drop(cancel);
        t.join().unwrap();
        assert_eq!(parent.registered_children(), 0);
        assert!(!parent.is_done());
    });
}

/// Sweeps both lists of the model wheel at a time after every deadline,
/// then checks nothing is left linked: every list reference was given back.
fn drain_model_wheel() {
    loom_hooks::sweep(0, u64::MAX);
    loom_hooks::sweep(1, u64::MAX);
    assert_eq!(loom_hooks::linked(0) + loom_hooks::linked(1), 0);
}

/// Timer invariants 1 and 8: the sweep moving an entry down the wheel
/// (`ARMED → MOVING → ARMED`, relinked once the old list is quiescent, then
/// fired by a later sweep) races a manual cancel, whose disarm may find the
/// entry armed in either list or moving. Exactly one of expiry and cancel
/// wins, and the entry leaves the wheel either way.
#[test]
fn move_races_cancel() {
    model("move_races_cancel", || {
        let (ctx, cancel) = Context::background().with_deadline(far());
        armed_timer().link(2);
        let t = thread::spawn(|| {
            loom_hooks::sweep(0, 1);
            loom_hooks::sweep(1, 3);
        });
        cancel.cancel();
        t.join().unwrap();
        assert!(matches!(
            ctx.err(),
            Some(Error::Canceled | Error::DeadlineExceeded)
        ));
        drain_model_wheel();
    });
}

/// Timer invariant 8 against a release: the last handles are dropped while
/// the sweep moves the entry; the sweep's own memory reference keeps the
/// node valid whoever unlinks it, and the entry leaves the wheel.
#[test]
fn move_races_drop() {
    model("move_races_drop", || {
        let (ctx, cancel) = Context::background().with_deadline(far());
        armed_timer().link(2);
        let t = thread::spawn(|| loom_hooks::sweep(0, 1));
        drop(ctx);
        drop(cancel);
        t.join().unwrap();
        drain_model_wheel();
    });
}

/// Timer invariants 4 and 5 (sweep side): an entry linked while a sweep
/// walks its list is kept (still `UNARMED`), moved (already `ARMED`) or not
/// seen at all; whichever, a later sweep finds and fires it.
#[test]
fn link_races_sweep() {
    model("link_races_sweep", || {
        let armer = thread::spawn(|| {
            let derived = Context::background().with_deadline(far());
            armed_timer().link(2);
            derived
        });
        loom_hooks::sweep(0, 1);
        let (ctx, _cancel) = armer.join().unwrap();
        loom_hooks::sweep(0, 3);
        loom_hooks::sweep(1, 3);
        assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
        drain_model_wheel();
    });
}
