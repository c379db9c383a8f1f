//! The per-request cost of goctx-tower's layers, called in-process (no
//! sockets, no runtime: the services answer at once and their futures are
//! polled with a no-op waker), each against the same service without the
//! layer.
//!
//! * `server/*`: a request through `ServerLayer` (a context per request,
//!   put in the extensions, ended when the response body is dropped), with
//!   no deadline and with a `grpc-timeout` header (parsing plus a deadline
//!   node and its timer entry); `bare` is the handler alone.
//! * `client/*`: a request carrying a context through `ClientLayer` (a
//!   check, the race against the context), without and with a deadline
//!   (formatting `grpc-timeout`); `bare` is the inner service alone.
//!
//! Run with `cargo bench -p goctx-benches --bench tower_layers` (about a
//! minute); a short run: `-- --warm-up-time 1 --measurement-time 2`.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use goctx::Context;
use goctx_tower::{ClientLayer, ServerLayer};
use http::{HeaderValue, Request, Response};
use http_body_util::Empty;
use tower_layer::Layer;
use tower_service::Service;

/// A handler that answers at once with an empty body.
#[derive(Clone, Copy)]
struct Answer;

impl Service<Request<()>> for Answer {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Empty<Bytes>>, Infallible>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        black_box(&request);
        ready(Ok(Response::new(Empty::new())))
    }
}

/// Polls a future that is ready at once.
fn now<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut TaskContext::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("the services answer at once"),
    }
}

fn request(grpc_timeout: Option<&'static str>, ctx: Option<&Context>) -> Request<()> {
    let mut request = Request::new(());
    if let Some(value) = grpc_timeout {
        request
            .headers_mut()
            .insert("grpc-timeout", HeaderValue::from_static(value));
    }
    if let Some(ctx) = ctx {
        request.extensions_mut().insert(ctx.clone());
    }
    request
}

fn server(c: &mut Criterion) {
    let mut group = c.benchmark_group("tower_server");
    let (root, _shutdown) = goctx_tower::shutdown_tree(&Context::background());
    for (name, header) in [("", None), ("/grpc_timeout", Some("30S"))] {
        group.bench_function(format!("bare{name}"), |b| {
            let mut service = Answer;
            b.iter(|| drop(black_box(now(service.call(request(header, None))))));
        });
        group.bench_function(format!("layer{name}"), |b| {
            let mut service = ServerLayer::new(root.clone()).layer(Answer);
            b.iter(|| drop(black_box(now(service.call(request(header, None))))));
        });
    }
    group.finish();
    assert_eq!(root.registered_children(), 0);
}

fn client(c: &mut Criterion) {
    let mut group = c.benchmark_group("tower_client");
    let (plain, _cancel) = Context::background().with_cancel();
    let (timed, _cancel_timed) = Context::background().with_timeout(Duration::from_secs(3600));
    for (name, ctx) in [("", &plain), ("/deadline", &timed)] {
        group.bench_function(format!("bare{name}"), |b| {
            let mut service = Answer;
            b.iter(|| drop(black_box(now(service.call(request(None, Some(ctx)))))));
        });
        group.bench_function(format!("layer{name}"), |b| {
            let mut service = ClientLayer::new().layer(Answer);
            b.iter(|| drop(black_box(now(service.call(request(None, Some(ctx)))))));
        });
    }
    group.finish();
}

criterion_group!(benches, server, client);
criterion_main!(benches);
