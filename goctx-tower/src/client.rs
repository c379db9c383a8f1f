//! The client layer: an outgoing request carrying a context inherits its
//! deadline (`grpc-timeout`) and its cancellation.

use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context as TaskContext, Poll};
use std::time::Instant;

use goctx::{Cause, Context, ContextError, Error};
use http::Request;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::timeout::{GRPC_TIMEOUT, format_grpc_timeout, parse_grpc_timeout};

/// A [`Layer`] for clients: an outgoing `http::Request` carrying a
/// [`goctx::Context`] in its extensions
///
/// * fails at once with [`ClientError::Context`] if the context is already
///   done (the inner service is not called);
/// * gets `grpc-timeout` set to the context's remaining time (rounded up to
///   the finest unit that fits 8 digits), unless it already carries a
///   shorter valid one;
/// * is abandoned as soon as the context is done: the inner service's
///   future is dropped (for hyper's client, the connection is closed rather
///   than reused) and the call returns [`ClientError::Context`] with the
///   context's `err()` and `cause()`.
///
/// A request without a context passes through untouched.
///
/// The inner service's future must be `Send + 'static`: a call with a
/// context is raced in a boxed future that owns the context (one
/// allocation per call).
///
/// ```
/// use goctx::Context;
/// use goctx_tower::{ClientError, ClientLayer};
/// use http::{Request, Response};
/// use std::convert::Infallible;
/// use tower_layer::Layer;
/// use tower_service::Service;
///
/// # #[derive(Clone)] struct Echo;
/// # impl Service<Request<()>> for Echo {
/// #     type Response = Response<()>;
/// #     type Error = Infallible;
/// #     type Future = std::future::Ready<Result<Response<()>, Infallible>>;
/// #     fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
/// #         std::task::Poll::Ready(Ok(()))
/// #     }
/// #     fn call(&mut self, _: Request<()>) -> Self::Future { std::future::ready(Ok(Response::new(()))) }
/// # }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let mut client = ClientLayer::new().layer(Echo);
/// let (ctx, cancel) = Context::background().with_cancel();
/// cancel.cancel();
/// let mut request = Request::new(());
/// request.extensions_mut().insert(ctx);
/// let err = client.call(request).await.unwrap_err();
/// assert_eq!(err.err(), Some(goctx::Error::Canceled));
/// # });
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientLayer {
    _private: (),
}

impl ClientLayer {
    /// The layer.
    pub fn new() -> ClientLayer {
        ClientLayer::default()
    }
}

impl<S> Layer<S> for ClientLayer {
    type Service = ContextClient<S>;

    fn layer(&self, inner: S) -> ContextClient<S> {
        ContextClient { inner }
    }
}

/// The service [`ClientLayer`] makes.
#[derive(Clone, Debug)]
pub struct ContextClient<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for ContextClient<S>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = ClientError<S::Error>;
    type Future = ClientFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(ClientError::Inner)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let Some(ctx) = request.extensions().get::<Context>() else {
            return ClientFuture {
                state: State::Plain {
                    future: self.inner.call(request),
                },
            };
        };
        if let Err(error) = ctx.check() {
            return ClientFuture {
                state: State::Failed { error: Some(error) },
            };
        }
        let ctx = ctx.clone();
        if let Some(deadline) = ctx.deadline() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let headers = request.headers_mut();
            let shorter_already = headers
                .get(GRPC_TIMEOUT)
                .and_then(|value| parse_grpc_timeout(value.as_bytes()).ok())
                .is_some_and(|sent| sent <= remaining);
            if !shorter_already {
                headers.insert(
                    GRPC_TIMEOUT,
                    format_grpc_timeout(remaining).to_header_value(),
                );
            }
        }
        let future = self.inner.call(request);
        // The context is moved into the future, which awaits its `Done`
        // there: no borrow of a `Context` outside it.
        let race = async move { ctx.run_until_done(future).await };
        ClientFuture {
            state: State::Racing {
                future: Box::pin(race),
            },
        }
    }
}

/// The error of a call through [`ClientLayer`]: the context ended it, or the
/// inner service failed.
#[derive(Clone, Debug)]
pub enum ClientError<E> {
    /// The request's context was done before the call, or became done
    /// during it (the call was abandoned).
    Context(ContextError),
    /// The inner service's error.
    Inner(E),
}

impl<E> ClientError<E> {
    /// The context's error (Go's `ctx.Err()`) if the context ended the call.
    pub fn err(&self) -> Option<Error> {
        self.context_error().map(ContextError::err)
    }

    /// The context's cause (Go's `context.Cause(ctx)`) if the context ended
    /// the call.
    pub fn cause(&self) -> Option<&Cause> {
        self.context_error().map(ContextError::cause)
    }

    /// The context's error and cause, if the context ended the call.
    pub fn context_error(&self) -> Option<&ContextError> {
        match self {
            ClientError::Context(error) => Some(error),
            ClientError::Inner(_) => None,
        }
    }
}

impl<E: fmt::Display> fmt::Display for ClientError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Context(error) => fmt::Display::fmt(error, f),
            ClientError::Inner(error) => fmt::Display::fmt(error, f),
        }
    }
}

impl<E: std::error::Error> std::error::Error for ClientError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Context(error) => error.source(),
            ClientError::Inner(error) => error.source(),
        }
    }
}

/// The inner call raced against the context: boxed because the race owns
/// the context whose `Done` it awaits.
type Race<T> = Pin<Box<dyn Future<Output = Result<T, ContextError>> + Send>>;

pin_project! {
    /// The response future of [`ContextClient`].
    pub struct ClientFuture<F: Future> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F: Future> {
        Plain { #[pin] future: F },
        Failed { error: Option<ContextError> },
        Racing { future: Race<F::Output> },
    }
}

impl<F, T, E> Future for ClientFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<T, ClientError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Plain { future } => future.poll(cx).map_err(ClientError::Inner),
            StateProj::Failed { error } => {
                let error = error.take().expect("polled after completion");
                Poll::Ready(Err(ClientError::Context(error)))
            }
            StateProj::Racing { future } => {
                Poll::Ready(match core::task::ready!(future.as_mut().poll(cx)) {
                    Ok(Ok(response)) => Ok(response),
                    Ok(Err(error)) => Err(ClientError::Inner(error)),
                    Err(error) => Err(ClientError::Context(error)),
                })
            }
        }
    }
}

impl<F: Future> fmt::Debug for ClientFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Plain { .. } => "plain",
            State::Failed { .. } => "failed",
            State::Racing { .. } => "racing",
        };
        f.debug_struct("ClientFuture")
            .field("state", &state)
            .finish()
    }
}
