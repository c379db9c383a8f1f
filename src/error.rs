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

    /// A cause from a message: anything `Display + Debug`, such as a
    /// `&'static str` or a `String` (`From<&str>` cannot exist beside the
    /// blanket `From<E: Error>`). Its `Display` is the message's.
    ///
    /// ```
    /// use goctx::{Cause, Context};
    ///
    /// let (ctx, cancel) = Context::background().with_cancel_cause();
    /// cancel.cancel(Cause::msg("shutting down"));
    /// assert_eq!(ctx.cause().unwrap().to_string(), "shutting down");
    /// let why = format!("job {} timed out", 7);
    /// assert_eq!(Cause::msg(why).to_string(), "job 7 timed out");
    /// ```
    pub fn msg<M>(message: M) -> Cause
    where
        M: fmt::Display + fmt::Debug + Send + Sync + 'static,
    {
        Cause(Repr::Custom(Arc::new(Message(message))))
    }

    /// A cause from a boxed error (what `?` gives in a function returning
    /// `Box<dyn Error + Send + Sync>`). A boxed plain [`Error`] becomes the
    /// inline, allocation-free cause; any other error keeps its type for
    /// [`downcast_ref`](Cause::downcast_ref).
    ///
    /// ```
    /// use goctx::Cause;
    ///
    /// let boxed: Box<dyn std::error::Error + Send + Sync> = "bad gateway".into();
    /// let cause = Cause::from_boxed(boxed);
    /// assert_eq!(cause.to_string(), "bad gateway");
    ///
    /// let io: Box<dyn std::error::Error + Send + Sync> =
    ///     Box::new(std::io::Error::other("disk full"));
    /// assert!(Cause::from_boxed(io).downcast_ref::<std::io::Error>().is_some());
    /// ```
    pub fn from_boxed(error: Box<dyn StdError + Send + Sync + 'static>) -> Cause {
        match error.downcast_ref::<Error>() {
            Some(&plain) => Cause(Repr::Context(plain)),
            None => Cause(Repr::Custom(Arc::from(error))),
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

// A cause is immutable once made (an `Error` or a shared, read-only error
// object), so observing one across a caught panic can see no broken state.
impl std::panic::UnwindSafe for Cause {}
impl std::panic::RefUnwindSafe for Cause {}

/// What [`Cause::msg`] wraps: a message as an error.
struct Message<M>(M);

impl<M: fmt::Display> fmt::Display for Message<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl<M: fmt::Debug> fmt::Debug for Message<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<M: fmt::Display + fmt::Debug> StdError for Message<M> {}

/// A [`Cause`] as a boxed error, for `?` in functions that return
/// `Box<dyn Error + Send + Sync>`.
///
/// The box holds the cause (one reference-count increment, no copy of the
/// error): its `Display`, `Debug` and `source()` are the wrapped error's.
/// The box does not downcast to the original error type (it is wrapped):
/// keep the `Cause` (or a [`ContextError`]) where the type matters.
///
/// ```
/// fn step(ctx: &goctx::Context) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
///     if let Some(cause) = ctx.cause() {
///         return Err(cause.into());
///     }
///     Ok(())
/// }
/// let (ctx, cancel) = goctx::Context::background().with_cancel_cause();
/// cancel.cancel(goctx::Cause::msg("client went away"));
/// assert_eq!(step(&ctx).unwrap_err().to_string(), "client went away");
/// ```
impl From<Cause> for Box<dyn StdError + Send + Sync + 'static> {
    fn from(cause: Cause) -> Self {
        Box::new(Boxed(cause))
    }
}

/// As the `Send + Sync` conversion, for `Box<dyn Error>`.
///
/// ```
/// let boxed: Box<dyn std::error::Error> = goctx::Cause::msg("stop").into();
/// assert_eq!(boxed.to_string(), "stop");
/// ```
impl From<Cause> for Box<dyn StdError + 'static> {
    fn from(cause: Cause) -> Self {
        Box::new(Boxed(cause))
    }
}

/// A `Cause` inside a `Box<dyn Error>`: transparent to `Display`, `Debug`
/// and `source()`.
struct Boxed(Cause);

impl fmt::Display for Boxed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Boxed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl StdError for Boxed {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.as_error().source()
    }
}

/// A done context as an error, for `?`: its [`Error`] and its [`Cause`],
/// from the same cancellation. Made by [`Context::check`](crate::Context::check)
/// and by [`Context::run_until_done`](crate::Context::run_until_done).
///
/// `Display` is Go's plain string (`context canceled`, `context deadline
/// exceeded`) when the cause is that same plain [`Error`], else
/// `<err>: <cause>`; `source()` is the cause's error when the cause is not a
/// plain [`Error`], so an error chain never prints the same text twice.
/// Converts into `std::io::Error` (kind `TimedOut` for a deadline, `Other`
/// for a cancellation) and, being a `std::error::Error + Send + Sync`, into
/// `Box<dyn Error + Send + Sync>` or `anyhow::Error` with `?`.
///
/// ```
/// use goctx::{Cause, Context, ContextError, Error};
///
/// fn handler(ctx: &Context) -> Result<u32, ContextError> {
///     ctx.check()?;
///     Ok(42)
/// }
/// let (ctx, cancel) = Context::background().with_cancel_cause();
/// assert_eq!(handler(&ctx).unwrap(), 42);
/// cancel.cancel(Cause::msg("client went away"));
/// let err = handler(&ctx).unwrap_err();
/// assert_eq!(err.err(), Error::Canceled);
/// assert_eq!(err.to_string(), "context canceled: client went away");
/// assert!(!err.is_timeout());
/// ```
#[derive(Clone)]
pub struct ContextError {
    err: Error,
    cause: Cause,
}

impl ContextError {
    /// The error and cause of one cancellation.
    pub(crate) fn new(err: Error, cause: Cause) -> ContextError {
        ContextError { err, cause }
    }

    /// Why the context is done: [`Error::Canceled`] or
    /// [`Error::DeadlineExceeded`] (Go's `ctx.Err()`).
    ///
    /// ```
    /// let (ctx, _cancel) = goctx::Context::background().with_timeout(std::time::Duration::ZERO);
    /// assert_eq!(ctx.check().unwrap_err().err(), goctx::Error::DeadlineExceeded);
    /// ```
    #[inline]
    pub fn err(&self) -> Error {
        self.err
    }

    /// The cause of the cancellation (Go's `context.Cause(ctx)`): the plain
    /// [`Error`] when none was given.
    ///
    /// ```
    /// let (ctx, cancel) = goctx::Context::background().with_cancel();
    /// cancel.cancel();
    /// let err = ctx.check().unwrap_err();
    /// assert_eq!(err.cause().downcast_ref::<goctx::Error>(), Some(&goctx::Error::Canceled));
    /// ```
    #[inline]
    pub fn cause(&self) -> &Cause {
        &self.cause
    }

    /// True when the context's deadline passed (`err()` is
    /// [`Error::DeadlineExceeded`]).
    ///
    /// ```
    /// let (ctx, _cancel) = goctx::Context::background().with_timeout(std::time::Duration::ZERO);
    /// assert!(ctx.check().unwrap_err().is_timeout());
    /// ```
    #[inline]
    pub fn is_timeout(&self) -> bool {
        self.err.is_timeout()
    }

    /// Whether the cause adds nothing to `err` (the same plain [`Error`]).
    fn cause_is_err(&self) -> bool {
        self.cause.as_context_error() == Some(self.err)
    }
}

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.cause_is_err() {
            fmt::Display::fmt(&self.err, f)
        } else {
            write!(f, "{}: {}", self.err, self.cause)
        }
    }
}

impl fmt::Debug for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextError")
            .field("err", &self.err)
            .field("cause", &self.cause)
            .finish()
    }
}

impl StdError for ContextError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self.cause.as_context_error() {
            Some(_) => None,
            None => Some(self.cause.as_error()),
        }
    }
}

/// `TimedOut` for a deadline, `Other` for a cancellation (not
/// `Interrupted`, which `std::io`'s read and write loops retry), with the
/// `ContextError` as the inner error.
///
/// ```
/// fn read(ctx: &goctx::Context) -> std::io::Result<usize> {
///     ctx.check()?;
///     Ok(0)
/// }
/// let (ctx, _cancel) = goctx::Context::background().with_timeout(std::time::Duration::ZERO);
/// let err = read(&ctx).unwrap_err();
/// assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
/// assert_eq!(err.to_string(), "context deadline exceeded");
/// ```
impl From<ContextError> for std::io::Error {
    fn from(error: ContextError) -> std::io::Error {
        let kind = if error.is_timeout() {
            std::io::ErrorKind::TimedOut
        } else {
            std::io::ErrorKind::Other
        };
        std::io::Error::new(kind, error)
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
