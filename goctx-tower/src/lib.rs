//! goctx contexts across services: Go's per-request `context` for
//! [`tower`](https://docs.rs/tower) stacks (`hyper`, `axum`, `tonic`).
//!
//! * [`ServerLayer`] gives every `http::Request` a [`goctx::Context`] in its
//!   extensions: a child of a server-wide context (see [`shutdown_tree`]),
//!   with the deadline the caller sent in `grpc-timeout` (or a per-request
//!   timeout, whichever is earlier), cancelled with a [`RequestEnd`] cause
//!   saying why: the caller went away, the handler finished, the server is
//!   shutting down, or a deadline passed.
//! * [`ClientLayer`] makes an outgoing request carrying a context (in its
//!   extensions) inherit it: `grpc-timeout` is set to the remaining time,
//!   a context already done fails the call at once, and a context done
//!   during the call abandons it (the inner future is dropped) with a
//!   [`ClientError::Context`] carrying `err()` and `cause()`.
//! * [`parse_grpc_timeout`] and [`format_grpc_timeout`] speak the header's
//!   wire format.
//!
//! # Lifetime of a request's context
//!
//! | event                                            | `err()`            | `cause()`                       |
//! |--------------------------------------------------|--------------------|---------------------------------|
//! | the server-wide context is cancelled             | its error          | its cause ([`RequestEnd::ServerShutdown`] through [`Shutdown`]) |
//! | the caller's `grpc-timeout` passes               | `DeadlineExceeded` | [`RequestEnd::CallerDeadline`]  |
//! | the server's per-request timeout passes          | `DeadlineExceeded` | [`RequestEnd::ServerTimeout`]   |
//! | the response future is dropped before it is ready| `Canceled`         | [`RequestEnd::CallerGone`]      |
//! | the response body is dropped before its end      | `Canceled`         | [`RequestEnd::CallerGone`]      |
//! | the inner service fails, or the body ends or fails | `Canceled`       | [`RequestEnd::HandlerFinished`] |
//!
//! The first of these wins (goctx's rule: first cancellation decides). The
//! context lives until the response *body* is complete, not just its head,
//! so a streaming handler (a gRPC server stream) still sees the caller go
//! away.
//!
//! # Calling the next service
//!
//! A handler that calls another service passes its context on by putting
//! it in the outgoing request's extensions:
//!
//! ```
//! use goctx::Context;
//! use http::Request;
//!
//! fn outgoing(incoming: &Request<()>) -> Request<()> {
//!     let ctx = incoming.extensions().get::<Context>().cloned().unwrap_or_default();
//!     let mut request = Request::new(());
//!     request.extensions_mut().insert(ctx);
//!     request
//! }
//! # let _ = outgoing(&Request::new(()));
//! ```
//!
//! A call awaited inside the handler's own future is dropped with it when
//! the caller goes away (hyper drops the handler's future); the client
//! layer's race is what stops a call whose context ends otherwise: a
//! deadline, a shutdown, or work handed to a task of its own.
//!
//! With axum, `axum::Extension<goctx::Context>` extracts the request's
//! context (any `Clone` extension is extractable), so no extractor of this
//! crate is needed.

#![forbid(unsafe_code)]

mod body;
mod client;
mod end;
mod server;
mod timeout;

pub use body::ServerBody;
pub use client::{ClientError, ClientFuture, ClientLayer, ContextClient};
pub use end::{RequestEnd, Shutdown, shutdown_tree};
pub use server::{ContextFuture, ContextService, ServerLayer};
pub use timeout::{
    GRPC_TIMEOUT, GrpcTimeout, MAX_GRPC_TIMEOUT, TimeoutError, format_grpc_timeout,
    parse_grpc_timeout,
};
