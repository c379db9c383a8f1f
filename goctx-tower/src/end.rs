//! Why a request's context ended: the causes the server layer cancels with.

use core::fmt;
use std::sync::OnceLock;

use goctx::{CancelCauseFunc, Cause, Context};

/// Why a request's context is done: its [`cause()`](goctx::Context::cause)
/// holds one of these (find it with `downcast_ref::<RequestEnd>()`).
///
/// ```
/// use goctx::Context;
/// use goctx_tower::{RequestEnd, shutdown_tree};
///
/// let (server, shutdown) = shutdown_tree(&Context::background());
/// let (request, _cancel) = server.with_cancel();
/// shutdown.shutdown();
/// let cause = request.cause().unwrap();
/// assert_eq!(cause.downcast_ref::<RequestEnd>(), Some(&RequestEnd::ServerShutdown));
/// assert_eq!(cause.to_string(), "server shutting down");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestEnd {
    /// The caller went away before the response was complete: the response
    /// future, or the response body, was dropped unfinished (a closed
    /// connection, a reset stream). `err()` is `Canceled`.
    CallerGone,
    /// The handler finished: its response (head and whole body, or an
    /// error) is complete. `err()` is `Canceled`.
    HandlerFinished,
    /// The server-wide context was shut down through [`Shutdown`].
    /// `err()` is `Canceled`.
    ServerShutdown,
    /// The caller's `grpc-timeout` passed. `err()` is `DeadlineExceeded`.
    CallerDeadline,
    /// The server's per-request timeout passed (see
    /// [`ServerLayer::timeout`](crate::ServerLayer::timeout)). `err()` is
    /// `DeadlineExceeded`.
    ServerTimeout,
}

impl fmt::Display for RequestEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RequestEnd::CallerGone => "caller went away",
            RequestEnd::HandlerFinished => "handler finished",
            RequestEnd::ServerShutdown => "server shutting down",
            RequestEnd::CallerDeadline => "the caller's grpc-timeout passed",
            RequestEnd::ServerTimeout => "the server's per-request timeout passed",
        })
    }
}

impl std::error::Error for RequestEnd {}

impl RequestEnd {
    /// The cause, made once per process: cloning it is one reference-count
    /// increment, where `Cause::new` would allocate for every request.
    pub(crate) fn cause(self) -> Cause {
        static CAUSES: OnceLock<[Cause; 5]> = OnceLock::new();
        let causes = CAUSES.get_or_init(|| {
            [
                Cause::new(RequestEnd::CallerGone),
                Cause::new(RequestEnd::HandlerFinished),
                Cause::new(RequestEnd::ServerShutdown),
                Cause::new(RequestEnd::CallerDeadline),
                Cause::new(RequestEnd::ServerTimeout),
            ]
        });
        causes[self as usize].clone()
    }
}

/// Makes a server-wide context under `parent`: the root of every request
/// context the [`ServerLayer`](crate::ServerLayer) derives, and the handle
/// that shuts them all down with the cause [`RequestEnd::ServerShutdown`].
///
/// ```
/// use goctx::{Context, Error};
/// use goctx_tower::shutdown_tree;
///
/// let (server, shutdown) = shutdown_tree(&Context::background());
/// assert!(!server.is_done());
/// shutdown.shutdown();
/// assert_eq!(server.err(), Some(Error::Canceled));
/// ```
pub fn shutdown_tree(parent: &Context) -> (Context, Shutdown) {
    let (ctx, cancel) = parent.with_cancel_cause();
    (ctx, Shutdown(cancel))
}

/// Shuts a server-wide context down (see [`shutdown_tree`]). Dropping it
/// does not shut down.
#[derive(Clone, Debug)]
pub struct Shutdown(CancelCauseFunc);

impl Shutdown {
    /// Cancels the server-wide context and every request context under it
    /// with the cause [`RequestEnd::ServerShutdown`]. Idempotent.
    pub fn shutdown(&self) {
        self.0.cancel(RequestEnd::ServerShutdown.cause());
    }
}
