//! Models 8 and 10: a deadline expiry racing a manual cancel, and a deadline
//! context dropped while its timer fires. The timer is driven by hand
//! (`goctx::loom_hooks`): under loom, arming queues the entry on the model
//! thread, and `fire` runs exactly what the timer thread runs at expiry.
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
