//! The server layer: a context per request, from the server-wide context and
//! the caller's `grpc-timeout`, ended with a cause saying why.
//!
//! (The lifetime of a request's context is tabled in the crate docs.)

use core::future::Future;
use core::pin::Pin;
use core::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use goctx::{CancelCauseFunc, Context};
use http::{HeaderValue, Request, Response, StatusCode, header};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::ServerBody;
use crate::end::RequestEnd;
use crate::timeout::{GRPC_TIMEOUT, TimeoutError, parse_grpc_timeout};

/// A [`Layer`] that gives every request a [`goctx::Context`] in its
/// extensions: a child of the server-wide context, with the deadline the
/// caller sent in `grpc-timeout` (or the server's per-request timeout, if
/// set and earlier), cancelled when the caller goes away, when the handler
/// finishes, or when the server shuts down (see the table in the
/// [crate docs](crate) for the causes).
///
/// A malformed `grpc-timeout` is answered without calling the inner
/// service: `400 Bad Request` with the reason as a text body, or, for a
/// gRPC request (`content-type: application/grpc...`), a trailers-only
/// gRPC response with `grpc-status: 3` (`INVALID_ARGUMENT`) and the reason
/// in `grpc-message`.
///
/// ```
/// use goctx::Context;
/// use goctx_tower::{ServerLayer, shutdown_tree};
/// use http::{Request, Response};
/// use http_body_util::BodyExt;
/// use std::time::Duration;
/// use tower_layer::Layer;
/// use tower_service::Service;
///
/// /// A handler that reads its request's context.
/// #[derive(Clone)]
/// struct Handler;
///
/// impl Service<Request<()>> for Handler {
///     type Response = Response<String>;
///     type Error = std::convert::Infallible;
///     type Future = std::future::Ready<Result<Response<String>, Self::Error>>;
///
///     fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
///         std::task::Poll::Ready(Ok(()))
///     }
///
///     fn call(&mut self, request: Request<()>) -> Self::Future {
///         let ctx = request.extensions().get::<Context>().unwrap();
///         let remaining = ctx.deadline().unwrap() - std::time::Instant::now();
///         std::future::ready(Ok(Response::new(format!("{}", remaining <= Duration::from_millis(250)))))
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let (server_ctx, shutdown) = shutdown_tree(&Context::background());
/// let mut service = ServerLayer::new(server_ctx).timeout(Duration::from_secs(30)).layer(Handler);
/// let request = Request::builder().header("grpc-timeout", "250m").body(()).unwrap();
/// let response = service.call(request).await.unwrap();
/// assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "true");
/// // ... and on SIGTERM, every request in flight ends with RequestEnd::ServerShutdown:
/// shutdown.shutdown();
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct ServerLayer {
    root: Context,
    timeout: Option<Duration>,
}

impl ServerLayer {
    /// A layer deriving each request's context from `root`, the server-wide
    /// context (see [`shutdown_tree`](crate::shutdown_tree)). No
    /// per-request timeout: only the caller's `grpc-timeout` sets a
    /// deadline.
    pub fn new(root: Context) -> ServerLayer {
        ServerLayer {
            root,
            timeout: None,
        }
    }

    /// Gives every request at most `timeout`: its deadline is the earlier of
    /// now + `timeout` and the caller's `grpc-timeout`.
    pub fn timeout(mut self, timeout: Duration) -> ServerLayer {
        self.timeout = Some(timeout);
        self
    }
}

impl<S> Layer<S> for ServerLayer {
    type Service = ContextService<S>;

    fn layer(&self, inner: S) -> ContextService<S> {
        ContextService {
            inner,
            root: self.root.clone(),
            timeout: self.timeout,
        }
    }
}

/// The service [`ServerLayer`] makes.
#[derive(Clone, Debug)]
pub struct ContextService<S> {
    inner: S,
    root: Context,
    timeout: Option<Duration>,
}

impl<S> ContextService<S> {
    /// The request context's deadline and the cause of its expiry, or the
    /// reason the caller's `grpc-timeout` is unusable.
    fn deadline<B>(
        &self,
        request: &Request<B>,
    ) -> Result<Option<(Instant, RequestEnd)>, TimeoutError> {
        let mut values = request.headers().get_all(GRPC_TIMEOUT).iter();
        let caller = match (values.next(), values.next()) {
            (None, _) => None,
            (Some(value), None) => Some(parse_grpc_timeout(value.as_bytes())?),
            (Some(_), Some(_)) => return Err(TimeoutError::Repeated),
        };
        if caller.is_none() && self.timeout.is_none() {
            return Ok(None);
        }
        let now = Instant::now();
        // A timeout too large to add to now is no deadline (as goctx's
        // `with_timeout` treats it).
        let caller = caller.and_then(|t| Some((now.checked_add(t)?, RequestEnd::CallerDeadline)));
        let server = self
            .timeout
            .and_then(|t| Some((now.checked_add(t)?, RequestEnd::ServerTimeout)));
        Ok(match (caller, server) {
            (Some(c), Some(s)) => Some(if s.0 < c.0 { s } else { c }),
            (c, s) => c.or(s),
        })
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ContextService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: http_body::Body,
    ResBody::Data: From<Bytes>,
{
    type Response = Response<ServerBody<ResBody>>;
    type Error = S::Error;
    type Future = ContextFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let deadline = match self.deadline(&request) {
            Ok(deadline) => deadline,
            Err(error) => {
                return ContextFuture {
                    state: State::Rejected {
                        response: Some(reject(&request, error)),
                    },
                    end: None,
                };
            }
        };
        let (ctx, end) = self.root.with_cancel_cause();
        let ctx = match deadline {
            // A second node for the deadline: `with_deadline_cause` gives a
            // `CancelFunc`, which cannot say why; cancelling its parent
            // with a cause ends both (and stops the timer).
            Some((deadline, why)) => ctx.with_deadline_cause(deadline, why.cause()).0,
            None => ctx,
        };
        request.extensions_mut().insert(ctx);
        ContextFuture {
            state: State::Called {
                future: self.inner.call(request),
            },
            end: Some(end),
        }
    }
}

/// The answer to a request whose `grpc-timeout` is malformed.
/// (The body is built when the future is polled, where its type is known.)
fn reject<B>(request: &Request<B>, error: TimeoutError) -> Response<Option<Bytes>> {
    let message = error.to_string();
    let is_grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
    let mut response;
    if is_grpc {
        // A trailers-only gRPC response: the status goes in the headers.
        response = Response::new(None);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from_static("3"));
        // The message is printable ASCII without `%` (the grpc-message
        // escape), so it needs no percent-encoding.
        let value = HeaderValue::from_str(&message).expect("printable ASCII");
        headers.insert("grpc-message", value);
    } else {
        response = Response::new(Some(Bytes::from(message + "\n")));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    response
}

pin_project! {
    /// The response future of [`ContextService`]: the inner service's
    /// future, ending the request's context with
    /// [`RequestEnd::CallerGone`] if dropped before it is ready, and handing
    /// the context's end over to the response body when it is.
    pub struct ContextFuture<F> {
        #[pin]
        state: State<F>,
        end: Option<CancelCauseFunc>,
    }

    impl<F> PinnedDrop for ContextFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(end) = this.project().end.take() {
                end.cancel(RequestEnd::CallerGone.cause());
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] future: F },
        Rejected { response: Option<Response<Option<Bytes>>> },
    }
}

impl<F, B, E> Future for ContextFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
    B::Data: From<Bytes>,
{
    type Output = Result<Response<ServerBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.state.project() {
            StateProj::Called { future } => {
                let result = core::task::ready!(future.poll(cx));
                let end = this.end.take();
                Poll::Ready(match result {
                    Ok(response) => Ok(response.map(|body| ServerBody::new(body, end))),
                    Err(error) => {
                        if let Some(end) = end {
                            end.cancel(RequestEnd::HandlerFinished.cause());
                        }
                        Err(error)
                    }
                })
            }
            StateProj::Rejected { response } => {
                let response = response.take().expect("polled after completion");
                Poll::Ready(Ok(response.map(ServerBody::rejection)))
            }
        }
    }
}

impl<F> core::fmt::Debug for ContextFuture<F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let state = match self.state {
            State::Called { .. } => "called",
            State::Rejected { .. } => "rejected",
        };
        f.debug_struct("ContextFuture")
            .field("state", &state)
            .field("end", &self.end)
            .finish()
    }
}
