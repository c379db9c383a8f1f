//! Errors for `?` (API.md rule 17) and the small additions of rule 18:
//! `ContextError`, `check()`, `run_until_done()`, the `Cause` conversions,
//! `CancelCauseFunc::guard`, `can_be_done()`, and the trait surface of the
//! new types.

use std::error::Error as StdError;
use std::fmt::{Debug, Display};
use std::future::Future;
use std::panic::{RefUnwindSafe, UnwindSafe};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::time::Duration;

use goctx::{
    AfterFunc, CancelCauseFunc, CancelCauseGuard, CancelFunc, CancelGuard, Cause, Context,
    ContextError, Done, Error, RunUntilDone,
};

fn error_traits<T: Clone + Send + Sync + Debug + Display + StdError + 'static>() {}
fn unwind_safe<T: UnwindSafe + RefUnwindSafe>() {}
fn send_sync_debug<T: Send + Sync + Debug>() {}

#[test]
fn new_types_have_the_promised_traits() {
    error_traits::<ContextError>();
    send_sync_debug::<CancelCauseGuard>();
    send_sync_debug::<RunUntilDone<std::future::Ready<()>>>();
    // UnwindSafe is the same across every handle.
    unwind_safe::<Context>();
    unwind_safe::<Done>();
    unwind_safe::<CancelFunc>();
    unwind_safe::<CancelCauseFunc>();
    unwind_safe::<AfterFunc>();
    unwind_safe::<Cause>();
    unwind_safe::<ContextError>();
    unwind_safe::<CancelGuard>();
    unwind_safe::<CancelCauseGuard>();
}

#[derive(Debug)]
struct Upstream;

impl Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream closed")
    }
}

impl StdError for Upstream {}

#[test]
fn check_is_ok_while_running_and_carries_err_and_cause_after() {
    let (ctx, cancel) = Context::background().with_cancel_cause();
    assert!(ctx.check().is_ok());
    cancel.cancel(Upstream);
    let err = ctx.check().unwrap_err();
    assert_eq!(err.err(), Error::Canceled);
    assert!(err.cause().downcast_ref::<Upstream>().is_some());
    assert!(!err.is_timeout());
    assert_eq!(err.to_string(), "context canceled: upstream closed");
    // The custom cause is the source; the chain never repeats a text.
    let source = err.source().expect("a custom cause is the source");
    assert_eq!(source.to_string(), "upstream closed");
    assert!(source.source().is_none());
    // A value layer and a child see the same.
    let child = ctx.with_value(5u8);
    assert_eq!(child.check().unwrap_err().to_string(), err.to_string());
}

#[test]
fn plain_causes_print_the_go_string_once() {
    let (ctx, cancel) = Context::background().with_cancel();
    cancel.cancel();
    let err = ctx.check().unwrap_err();
    assert_eq!(err.to_string(), "context canceled");
    assert!(err.source().is_none());

    let (ctx, _cancel) = Context::background().with_timeout(Duration::ZERO);
    let err = ctx.check().unwrap_err();
    assert_eq!(err.to_string(), "context deadline exceeded");
    assert!(err.is_timeout());
    assert!(err.source().is_none());

    // A plain cause that differs from the error is shown after it.
    let (ctx, cancel) = Context::background().with_cancel_cause();
    cancel.cancel(Error::DeadlineExceeded);
    let err = ctx.check().unwrap_err();
    assert_eq!(err.err(), Error::Canceled);
    assert_eq!(
        err.to_string(),
        "context canceled: context deadline exceeded"
    );
}

#[test]
fn deadline_cause_is_kept() {
    let (ctx, _cancel) =
        Context::background().with_deadline_cause(std::time::Instant::now(), Upstream);
    let err = ctx.check().unwrap_err();
    assert_eq!(
        err.to_string(),
        "context deadline exceeded: upstream closed"
    );
    assert!(err.is_timeout());
}

#[test]
fn context_error_into_io_error() {
    fn io_step(ctx: &Context) -> std::io::Result<()> {
        ctx.check()?;
        Ok(())
    }
    let (ctx, _cancel) = Context::background().with_timeout(Duration::ZERO);
    let err = io_step(&ctx).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<ContextError>());
    assert_eq!(inner.map(ContextError::err), Some(Error::DeadlineExceeded));

    let (ctx, cancel) = Context::background().with_cancel();
    cancel.cancel();
    let err = io_step(&ctx).unwrap_err();
    // Not `Interrupted`: io's loops retry that.
    assert_eq!(err.kind(), std::io::ErrorKind::Other);
    assert_eq!(err.to_string(), "context canceled");
}

#[test]
fn question_mark_into_boxed_errors() {
    fn boxed(ctx: &Context) -> Result<(), Box<dyn StdError + Send + Sync>> {
        ctx.check()?;
        Ok(())
    }
    fn from_cause(ctx: &Context) -> Result<(), Box<dyn StdError + Send + Sync>> {
        if let Some(cause) = ctx.cause() {
            return Err(cause.into());
        }
        Ok(())
    }
    fn unsync(ctx: &Context) -> Result<(), Box<dyn StdError>> {
        if let Some(cause) = ctx.cause() {
            Err(cause)?;
        }
        Ok(())
    }
    let (ctx, cancel) = Context::background().with_cancel_cause();
    assert!(boxed(&ctx).is_ok() && from_cause(&ctx).is_ok() && unsync(&ctx).is_ok());
    cancel.cancel(std::io::Error::other("disk full"));
    let err = boxed(&ctx).unwrap_err();
    assert_eq!(err.to_string(), "context canceled: disk full");
    assert!(err.downcast_ref::<ContextError>().is_some());
    assert_eq!(from_cause(&ctx).unwrap_err().to_string(), "disk full");
    assert_eq!(unsync(&ctx).unwrap_err().to_string(), "disk full");
}

#[test]
fn causes_from_messages_and_boxes() {
    let (ctx, cancel) = Context::background().with_cancel_cause();
    cancel.cancel(Cause::msg("shutting down"));
    assert_eq!(ctx.cause().unwrap().to_string(), "shutting down");
    assert_eq!(format!("{:?}", ctx.cause().unwrap()), "\"shutting down\"");
    assert_eq!(Cause::msg(String::from("owned")).to_string(), "owned");

    let plain: Box<dyn StdError + Send + Sync> = Box::new(Error::DeadlineExceeded);
    let cause = Cause::from_boxed(plain);
    assert_eq!(cause.as_context_error(), Some(Error::DeadlineExceeded));
    let custom: Box<dyn StdError + Send + Sync> = Box::new(Upstream);
    assert!(
        Cause::from_boxed(custom)
            .downcast_ref::<Upstream>()
            .is_some()
    );
}

#[test]
fn cause_guard_cancels_with_its_cause_on_drop_unless_disarmed() {
    let (ctx, cancel) = Context::background().with_cancel_cause();
    {
        let _guard = cancel.clone().guard(Upstream);
        assert!(!ctx.is_done());
    }
    assert!(ctx.cause().unwrap().downcast_ref::<Upstream>().is_some());

    let (ctx, cancel) = Context::background().with_cancel_cause();
    let cancel = cancel.guard(Upstream).disarm();
    assert!(!ctx.is_done());
    cancel.cancel(Error::Canceled);
    assert_eq!(
        ctx.cause().unwrap().as_context_error(),
        Some(Error::Canceled)
    );
}

#[test]
fn can_be_done_follows_go_done_not_nil() {
    assert!(!Context::background().can_be_done());
    assert!(!Context::todo().can_be_done());
    let (ctx, _cancel) = Context::background().with_cancel();
    assert!(ctx.can_be_done());
    assert!(ctx.with_value(1u32).can_be_done());
    assert!(!ctx.without_cancel().can_be_done());
    assert!(!ctx.without_cancel().with_value(1u32).can_be_done());
    let (deadline, _cancel) = Context::background().with_timeout(Duration::from_secs(3600));
    assert!(deadline.can_be_done());
}

struct Flag(std::sync::atomic::AtomicUsize);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn flag_waker() -> (Arc<Flag>, Waker) {
    let flag = Arc::new(Flag(Default::default()));
    (Arc::clone(&flag), Waker::from(flag))
}

/// A future that is pending forever and counts its drops.
struct Forever(Arc<std::sync::atomic::AtomicUsize>);

impl Future for Forever {
    type Output = u8;
    fn poll(self: std::pin::Pin<&mut Self>, _: &mut TaskContext<'_>) -> Poll<u8> {
        Poll::Pending
    }
}

impl Drop for Forever {
    fn drop(&mut self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn run_until_done_drops_the_future_when_the_context_wins() {
    let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (ctx, cancel) = Context::background().with_cancel_cause();
    let (woken, waker) = flag_waker();
    let mut task = TaskContext::from_waker(&waker);
    let mut fut = pin!(ctx.run_until_done(Forever(Arc::clone(&dropped))));
    assert!(fut.as_mut().poll(&mut task).is_pending());
    assert_eq!(dropped.load(std::sync::atomic::Ordering::SeqCst), 0);
    cancel.cancel(Upstream);
    // The cancel woke the task that polled.
    assert!(woken.0.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    match fut.as_mut().poll(&mut task) {
        Poll::Ready(Err(err)) => {
            assert_eq!(err.to_string(), "context canceled: upstream closed")
        }
        other => panic!("expected the context's error, got {other:?}"),
    }
    // Dropped at once, before the wrapper itself is.
    assert_eq!(dropped.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn run_until_done_returns_the_output_when_the_future_wins() {
    let (ctx, _cancel) = Context::background().with_cancel();
    let (_, waker) = flag_waker();
    let mut task = TaskContext::from_waker(&waker);
    let mut fut = pin!(ctx.run_until_done(std::future::ready(9)));
    assert!(matches!(fut.as_mut().poll(&mut task), Poll::Ready(Ok(9))));

    // On a never-done context it is the future alone.
    let root = Context::background();
    let mut fut = pin!(root.run_until_done(std::future::ready("x")));
    assert!(matches!(fut.as_mut().poll(&mut task), Poll::Ready(Ok("x"))));
}

#[test]
fn run_until_done_on_a_done_context_never_polls_the_future() {
    let (ctx, cancel) = Context::background().with_cancel();
    cancel.cancel();
    let (_, waker) = flag_waker();
    let mut task = TaskContext::from_waker(&waker);
    let mut fut = pin!(ctx.run_until_done(std::future::poll_fn(|_| -> Poll<()> {
        panic!("polled after the context was done")
    })));
    assert!(matches!(fut.as_mut().poll(&mut task), Poll::Ready(Err(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_until_done_on_tokio_with_a_deadline() {
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_millis(20));
    let spawned = tokio::spawn(ctx.run_until_done(tokio::time::sleep(Duration::from_secs(3600))));
    let err = tokio::time::timeout(Duration::from_secs(120), spawned)
        .await
        .expect("the deadline ended the future")
        .expect("no panic")
        .unwrap_err();
    assert!(err.is_timeout());
    assert_eq!(err.to_string(), "context deadline exceeded");
}
