//! `Error` (Go's `context.Canceled` / `context.DeadlineExceeded`) and `Cause`
//! (the value behind Go's `context.Cause`).

use std::any::Any;
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// Why a context is done: Go's `context.Canceled` and
/// `context.DeadlineExceeded`.
///
/// ```
/// use goctx::{Context, Error};
///
/// let (ctx, cancel) = Context::background().with_cancel();
/// assert_eq!(ctx.err(), None);
/// cancel.cancel();
/// assert_eq!(ctx.err(), Some(Error::Canceled));
/// assert_eq!(Error::Canceled.to_string(), "context canceled");
/// assert!(Error::DeadlineExceeded.is_timeout());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Error {
    /// The context was cancelled through its cancel handle or an ancestor's.
    Canceled,
    /// The context's deadline (or an ancestor's) passed.
    DeadlineExceeded,
}

impl Error {
    /// True for [`Error::DeadlineExceeded`], as Go's `DeadlineExceeded`
    /// implements `Timeout() bool`.
    ///
    /// ```
    /// assert!(goctx::Error::DeadlineExceeded.is_timeout());
    /// assert!(!goctx::Error::Canceled.is_timeout());
    /// ```
    #[inline]
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::DeadlineExceeded)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Canceled => "context canceled",
            Error::DeadlineExceeded => "context deadline exceeded",
        })
    }
}

impl StdError for Error {}

/// The reason a context was cancelled, as returned by
/// [`Context::cause`](crate::Context::cause) (Go's `context.Cause`).
///
/// A cause wraps any `std::error::Error + Send + Sync + 'static`. Without an
/// explicit cause it holds the context's [`Error`] itself; a cause made from
/// a plain [`Error`] allocates nothing. Cloning is one reference-count
/// increment at most.
///
/// ```
/// use goctx::{Cause, Context, Error};
///
/// #[derive(Debug)]
/// struct Shutdown;
/// impl std::fmt::Display for Shutdown {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("server shutting down")
///     }
/// }
/// impl std::error::Error for Shutdown {}
///
/// let (ctx, cancel) = Context::background().with_cancel_cause();
/// cancel.cancel(Shutdown);
/// assert_eq!(ctx.err(), Some(Error::Canceled));
/// let cause: Cause = ctx.cause().unwrap();
/// assert!(cause.downcast_ref::<Shutdown>().is_some());
/// assert_eq!(cause.to_string(), "server shutting down");
/// ```
#[derive(Clone)]
pub struct Cause(Repr);

#[derive(Clone)]
enum Repr {
    Context(Error),
    Custom(Arc<dyn StdError + Send + Sync + 'static>),
}

impl Cause {
    /// Wraps an error as a cause. A plain [`Error`] is stored inline without
    /// allocating; anything else is reference counted.
    ///
    /// ```
    /// let cause = goctx::Cause::new(std::io::Error::other("disk full"));
    /// assert_eq!(cause.to_string(), "disk full");
    /// assert!(cause.downcast_ref::<std::io::Error>().is_some());
    /// ```
    pub fn new<E>(error: E) -> Cause
    where
        E: StdError + Send + Sync + 'static,
    {
        match (&error as &dyn Any).downcast_ref::<Error>() {
            Some(&plain) => Cause(Repr::Context(plain)),
            None => Cause(Repr::Custom(Arc::new(error))),
        }
    }

    /// Returns the wrapped error if it is of type `E`.
    ///
    /// ```
    /// use goctx::{Cause, Error};
    /// let cause = Cause::from(Error::DeadlineExceeded);
    /// assert_eq!(cause.downcast_ref::<Error>(), Some(&Error::DeadlineExceeded));
    /// assert!(cause.downcast_ref::<std::io::Error>().is_none());
    /// ```
    pub fn downcast_ref<E>(&self) -> Option<&E>
    where
        E: StdError + 'static,
    {
        self.as_error().downcast_ref::<E>()
    }

    /// The wrapped error as a trait object, e.g. to walk its `source()` chain.
    ///
    /// ```
    /// let cause = goctx::Cause::from(goctx::Error::Canceled);
    /// assert_eq!(cause.as_error().to_string(), "context canceled");
    /// ```
    pub fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        match &self.0 {
            Repr::Context(e) => e,
            Repr::Custom(e) => &**e,
        }
    }

    /// The plain [`Error`] this cause holds, if it is one (no allocation was
    /// made for it).
    ///
    /// ```
    /// let cause = goctx::Cause::from(goctx::Error::Canceled);
    /// assert_eq!(cause.as_context_error(), Some(goctx::Error::Canceled));
    /// ```
    #[inline]
    pub fn as_context_error(&self) -> Option<Error> {
        match &self.0 {
            Repr::Context(e) => Some(*e),
            Repr::Custom(e) => e.downcast_ref::<Error>().copied(),
        }
    }
}

impl<E> From<E> for Cause
where
    E: StdError + Send + Sync + 'static,
{
    fn from(error: E) -> Cause {
        Cause::new(error)
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Context(e) => fmt::Debug::fmt(e, f),
            Repr::Custom(e) => fmt::Debug::fmt(&**e, f),
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.as_error(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_error_cause_is_inline() {
        let c = Cause::new(Error::Canceled);
        assert!(matches!(c.0, Repr::Context(Error::Canceled)));
        let c: Cause = Error::DeadlineExceeded.into();
        assert_eq!(c.downcast_ref::<Error>(), Some(&Error::DeadlineExceeded));
        assert_eq!(c.to_string(), "context deadline exceeded");
    }

    #[test]
    fn custom_cause_downcasts() {
        let c = Cause::new(std::fmt::Error);
        assert!(c.downcast_ref::<std::fmt::Error>().is_some());
        assert!(c.downcast_ref::<Error>().is_none());
        assert_eq!(c.as_context_error(), None);
    }
}
