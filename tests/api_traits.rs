//! The trait surface the API contract promises, checked at compile time, and
//! the small behaviours of `Error`, `Cause` and `CancelGuard`.

use std::collections::HashSet;
use std::fmt::{Debug, Display};
use std::future::Future;
use std::hash::Hash;

use goctx::{CancelCauseFunc, CancelFunc, Cause, Context, Done, Error};

fn send_sync<T: Send + Sync>() {}
fn unpin_future<T: Future<Output = ()> + Unpin>() {}
fn context_traits<T: Clone + Default + Debug + Display>() {}
fn error_traits<T: Copy + Eq + Hash + Debug + std::error::Error>() {}
fn cause_traits<T: Clone + Debug + Display>() {}
fn clone_debug<T: Clone + Debug>() {}

#[test]
fn public_types_have_the_promised_traits() {
    send_sync::<Context>();
    send_sync::<Done>();
    send_sync::<Done<'static>>();
    send_sync::<CancelFunc>();
    send_sync::<CancelCauseFunc>();
    send_sync::<Error>();
    send_sync::<Cause>();

    unpin_future::<Done>();
    context_traits::<Context>();
    error_traits::<Error>();
    cause_traits::<Cause>();
    clone_debug::<Done>();
    clone_debug::<CancelFunc>();
    clone_debug::<CancelCauseFunc>();
}

#[test]
fn default_context_is_background() {
    let ctx = Context::default();
    assert_eq!(ctx.to_string(), "context.Background");
    assert!(!ctx.is_done());
}

#[test]
fn error_display_is_exact() {
    assert_eq!(Error::Canceled.to_string(), "context canceled");
    assert_eq!(
        Error::DeadlineExceeded.to_string(),
        "context deadline exceeded"
    );
    assert!(Error::DeadlineExceeded.is_timeout());
    assert!(!Error::Canceled.is_timeout());

    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(Error::Canceled);
    assert!(boxed.source().is_none());
    assert_eq!(boxed.to_string(), "context canceled");

    let set: HashSet<Error> = [Error::Canceled, Error::DeadlineExceeded, Error::Canceled].into();
    assert_eq!(set.len(), 2);
}

#[test]
fn cause_from_error_downcasts() {
    let cause = Cause::from(Error::Canceled);
    assert_eq!(cause.downcast_ref::<Error>(), Some(&Error::Canceled));
    assert!(cause.downcast_ref::<std::fmt::Error>().is_none());
    assert_eq!(cause.to_string(), "context canceled");

    let custom = Cause::from(std::io::Error::other("upstream closed"));
    assert_eq!(custom.to_string(), "upstream closed");
    assert!(custom.downcast_ref::<Error>().is_none());
    let copy = custom.clone();
    assert_eq!(
        copy.downcast_ref::<std::io::Error>()
            .map(ToString::to_string),
        Some("upstream closed".to_owned())
    );
    assert!(!format!("{custom:?}").is_empty());
}

#[test]
fn guard_cancels_on_drop() {
    let (ctx, cancel) = Context::background().with_cancel();
    let (child, _cancel_child) = ctx.with_cancel();
    {
        let _guard = cancel.guard();
        assert!(!ctx.is_done());
    }
    assert_eq!(ctx.err(), Some(Error::Canceled));
    assert_eq!(child.err(), Some(Error::Canceled));
}

#[test]
fn guard_cancels_when_unwinding() {
    let (ctx, cancel) = Context::background().with_cancel();
    // `AssertUnwindSafe`: the guard is moved in and never observed after a
    // panic, only the context it cancels.
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _guard = cancel.guard();
        panic!("request handler failed");
    }));
    assert!(unwound.is_err());
    assert_eq!(ctx.err(), Some(Error::Canceled));
}

#[test]
fn disarmed_guard_does_not_cancel() {
    let (ctx, cancel) = Context::background().with_cancel();
    let cancel = cancel.guard().disarm();
    assert!(!ctx.is_done());
    drop(cancel);
    assert!(!ctx.is_done(), "dropping a CancelFunc cancelled");

    let (ctx, cancel) = Context::background().with_cancel();
    let cancel = cancel.guard().disarm();
    cancel.cancel();
    assert_eq!(ctx.err(), Some(Error::Canceled));
}

/// API rule 13: `done()` borrows the context (so it moves into a scoped
/// thread), `done_owned()` and `into_owned()` give a `Done<'static>` that
/// outlives every clone of the context.
#[test]
fn borrowed_and_owned_done() {
    let (ctx, cancel) = Context::background().with_cancel();
    std::thread::scope(|scope| {
        let borrowed = ctx.done();
        let waiter = scope.spawn(move || borrowed.wait());
        cancel.cancel();
        waiter.join().unwrap();
    });

    let (ctx, cancel) = Context::background().with_cancel();
    let owned: Done<'static> = ctx.done_owned();
    let into: Done<'static> = ctx.done().into_owned();
    drop(ctx);
    let waiter = std::thread::spawn(move || owned.wait());
    cancel.cancel();
    waiter.join().unwrap();
    assert!(into.is_done());
}
