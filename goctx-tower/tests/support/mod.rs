//! Shared pieces of the integration tests: a `tower_service::Service` from
//! a closure, bodies with known behaviour, and a bounded wait.

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};

/// A `Service` calling `f` (tower's `service_fn`, without tower's
/// `util` feature and its dependencies).
#[derive(Clone)]
pub struct ServiceFn<F>(pub F);

pub fn service_fn<F>(f: F) -> ServiceFn<F> {
    ServiceFn(f)
}

impl<F, Req, Fut, Res, E> tower_service::Service<Req> for ServiceFn<F>
where
    F: FnMut(Req) -> Fut,
    Fut: Future<Output = Result<Res, E>>,
{
    type Response = Res;
    type Error = E;
    type Future = Fut;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), E>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Fut {
        (self.0)(request)
    }
}

/// A body that yields one frame, then never ends (a stream the handler
/// keeps open).
#[derive(Debug)]
pub struct Endless {
    pub first: Option<Bytes>,
}

impl Body for Endless {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.first.take() {
            Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            None => Poll::Pending,
        }
    }
}

/// The hang guard of the tests' waits: generous (a noisy 2-core machine,
/// sanitizers); a passing test never waits for it.
pub const HANG_GUARD: Duration = Duration::from_secs(30);

/// Awaits `future`, failing the test with `what` if it hangs.
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(HANG_GUARD, future).await {
        Ok(output) => output,
        Err(_) => panic!("hung for {HANG_GUARD:?}: {what}"),
    }
}

/// Serves `service` over HTTP/1 on 127.0.0.1 (a port the OS picks), one
/// task per connection, until the runtime stops. Returns the address.
pub async fn serve<S, B>(service: S) -> std::net::SocketAddr
where
    S: tower_service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper_util::service::TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                // A connection's error (the peer hung up) ends its task.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A real hyper client (pooled connections, HTTP/1).
pub type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<Bytes>,
>;

pub fn http_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// A GET of `http://{addr}{path}` carrying `ctx`.
pub fn get(
    addr: std::net::SocketAddr,
    path: &str,
    ctx: Option<&goctx::Context>,
) -> http::Request<http_body_util::Full<Bytes>> {
    let mut request = http::Request::get(format!("http://{addr}{path}"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    if let Some(ctx) = ctx {
        request.extensions_mut().insert(ctx.clone());
    }
    request
}
