//! Done contexts as errors for `?`: [`Context::check`],
//! [`Context::run_until_done`] and its future, [`RunUntilDone`].

use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context as TaskContext, Poll};

use crate::context::Context;
use crate::done::Done;
use crate::error::ContextError;

impl Context {
    /// `Ok(())` while the context is running, else its error and cause as a
    /// [`ContextError`], for `?`. One atomic load while running.
    ///
    /// ```
    /// use goctx::{Context, ContextError};
    ///
    /// fn step(ctx: &Context, n: u32) -> Result<u32, ContextError> {
    ///     ctx.check()?;
    ///     Ok(n + 1)
    /// }
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// assert_eq!(step(&ctx, 1).unwrap(), 2);
    /// cancel.cancel();
    /// assert_eq!(step(&ctx, 1).unwrap_err().to_string(), "context canceled");
    /// ```
    #[inline]
    pub fn check(&self) -> Result<(), ContextError> {
        if !self.is_done() {
            return Ok(());
        }
        Err(self.error().expect("a done context has an error"))
    }

    /// Whether this context can ever be done (Go's `ctx.Done() != nil`):
    /// false for `background()`, `todo()`, `without_cancel()` and their
    /// value children, true for any context with a cancellable ancestor.
    ///
    /// ```
    /// use goctx::Context;
    ///
    /// let root = Context::background();
    /// assert!(!root.can_be_done());
    /// let (ctx, _cancel) = root.with_cancel();
    /// assert!(ctx.can_be_done());
    /// assert!(!ctx.without_cancel().can_be_done());
    /// ```
    #[inline]
    pub fn can_be_done(&self) -> bool {
        !self.anchor_ptr().is_null()
    }

    /// Runs `fut` until it completes or the context is done, whichever is
    /// first: `Ok(output)`, or `Err` with the context's error and cause
    /// (and `fut` dropped at once). Works on any executor; the returned
    /// future holds the context's cancellable node (not a borrow of `self`),
    /// so it can be spawned.
    ///
    /// If the context is already done, `fut` is never polled.
    ///
    /// ```
    /// use goctx::{Context, Error};
    /// use std::time::Duration;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let (ctx, _cancel) = Context::background().with_timeout(Duration::from_millis(10));
    /// let slow = tokio::time::sleep(Duration::from_secs(3600));
    /// let err = ctx.run_until_done(slow).await.unwrap_err();
    /// assert_eq!(err.err(), Error::DeadlineExceeded);
    ///
    /// let (ctx, _cancel) = Context::background().with_cancel();
    /// assert_eq!(ctx.run_until_done(async { 7 }).await.unwrap(), 7);
    /// # });
    /// ```
    pub fn run_until_done<F: Future>(&self, fut: F) -> RunUntilDone<F> {
        RunUntilDone {
            done: self.done_owned(),
            fut: Some(fut),
        }
    }

    /// The error and cause, once done.
    fn error(&self) -> Option<ContextError> {
        // Once set, `err()` and `cause()` never change and come from the
        // same cancellation (API rule 3), so two reads agree.
        Some(ContextError::new(self.err()?, self.cause()?))
    }
}

/// The future of [`Context::run_until_done`]: the inner future's output, or
/// the context's [`ContextError`] when the context is done first.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let (ctx, cancel) = goctx::Context::background().with_cancel();
/// cancel.cancel();
/// let never_polled = async { unreachable!() };
/// assert!(ctx.run_until_done(never_polled).await.is_err());
/// # });
/// ```
#[must_use = "futures do nothing unless polled"]
pub struct RunUntilDone<F> {
    done: Done<'static>,
    /// `None` once finished (the output was taken or the context won).
    fut: Option<F>,
}

impl<F: Future> Future for RunUntilDone<F> {
    type Output = Result<F::Output, ContextError>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        // SAFETY: `fut` is structurally pinned: it is never moved out (only
        // dropped in place, through `Pin::set`), and `RunUntilDone` has no
        // `Drop` impl and is `Unpin` only when `F` is. `done` is not pinned
        // (`Done` is `Unpin`): it is only used by `&mut`.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: see above.
        let mut fut = unsafe { Pin::new_unchecked(&mut this.fut) };
        // The context first: once it is done, the inner future is not
        // polled again, whatever it would return.
        if this.done.is_done() {
            fut.set(None);
            return Poll::Ready(Err(this.done.error().expect("done")));
        }
        let Some(inner) = fut.as_mut().as_pin_mut() else {
            panic!("RunUntilDone polled after it completed");
        };
        if let Poll::Ready(output) = inner.poll(cx) {
            fut.set(None);
            return Poll::Ready(Ok(output));
        }
        // Registers the waker (or finds the context done in the meantime).
        match Pin::new(&mut this.done).poll(cx) {
            Poll::Ready(()) => {
                fut.set(None);
                Poll::Ready(Err(this.done.error().expect("done")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(feature = "futures")]
impl<F: Future> futures_core::future::FusedFuture for RunUntilDone<F> {
    /// True once it has returned `Ready`.
    fn is_terminated(&self) -> bool {
        self.fut.is_none()
    }
}

impl<F> fmt::Debug for RunUntilDone<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunUntilDone")
            .field("done", &self.done)
            .field("finished", &self.fut.is_none())
            .finish()
    }
}
