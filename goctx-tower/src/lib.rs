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
