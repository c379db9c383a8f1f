//! The client layer called in-process (no sockets): fail fast, propagate
//! the remaining time, abandon the call when the context is done.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use goctx::{Cause, Context, Error};
use goctx_tower::{ClientError, ClientLayer, parse_grpc_timeout};
use http::{HeaderMap, Request, Response};
use support::{service_fn, within};
use tokio::sync::oneshot;
use tower_layer::Layer;
use tower_service::Service;

/// A request carrying `ctx`.
fn request(ctx: Option<&Context>) -> Request<()> {
    let mut request = Request::new(());
    if let Some(ctx) = ctx {
        request.extensions_mut().insert(ctx.clone());
    }
    request
}

/// An inner service that sends out the headers it was called with and
/// answers at once.
fn recording(
    tx: mpsc::Sender<HeaderMap>,
) -> impl Service<
    Request<()>,
    Response = Response<()>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<()>, Infallible>>,
> {
    service_fn(move |request: Request<()>| {
        tx.send(request.headers().clone()).unwrap();
        std::future::ready(Ok(Response::new(())))
    })
}

#[tokio::test]
async fn a_done_context_fails_at_once_and_the_inner_service_is_not_called() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut client = ClientLayer::new().layer(service_fn({
        let calls = calls.clone();
        move |_: Request<()>| {
            calls.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Ok::<_, Infallible>(Response::new(())))
        }
    }));
    let (ctx, cancel) = Context::background().with_cancel_cause();
    cancel.cancel(Cause::msg("user hung up"));
    let err = client.call(request(Some(&ctx))).await.unwrap_err();
    assert_eq!(err.err(), Some(Error::Canceled));
    assert_eq!(err.cause().unwrap().to_string(), "user hung up");
    assert_eq!(err.to_string(), "context canceled: user hung up");
    assert_eq!(calls.load(Ordering::Relaxed), 0);

    let (ctx, _cancel) = Context::background().with_timeout(Duration::ZERO);
    let err = client.call(request(Some(&ctx))).await.unwrap_err();
    assert_eq!(err.err(), Some(Error::DeadlineExceeded));
    assert_eq!(calls.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn grpc_timeout_is_set_to_the_remaining_time() {
    let (tx, rx) = mpsc::channel();
    let mut client = ClientLayer::new().layer(recording(tx));
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(10));
    let deadline = ctx.deadline().unwrap();
    let before = Instant::now();
    client.call(request(Some(&ctx))).await.unwrap();
    let after = Instant::now();
    let headers = rx.recv().unwrap();
    let sent = parse_grpc_timeout(headers["grpc-timeout"].as_bytes()).unwrap();
    // Rounded up by less than one unit (here microseconds).
    assert!(
        sent <= deadline - before + Duration::from_micros(1),
        "{sent:?}"
    );
    assert!(sent >= deadline - after, "{sent:?}");
}

#[tokio::test]
async fn a_shorter_grpc_timeout_already_set_is_kept_and_a_longer_one_replaced() {
    let (tx, rx) = mpsc::channel();
    let mut client = ClientLayer::new().layer(recording(tx));
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(10));

    let mut shorter = request(Some(&ctx));
    shorter
        .headers_mut()
        .insert("grpc-timeout", "5S".parse().unwrap());
    client.call(shorter).await.unwrap();
    assert_eq!(rx.recv().unwrap()["grpc-timeout"], "5S");

    for value in ["20S", "garbage"] {
        let mut other = request(Some(&ctx));
        other
            .headers_mut()
            .insert("grpc-timeout", value.parse().unwrap());
        client.call(other).await.unwrap();
        let headers = rx.recv().unwrap();
        let sent = parse_grpc_timeout(headers["grpc-timeout"].as_bytes()).unwrap();
        assert!(sent <= Duration::from_secs(10), "{value}: {sent:?}");
    }
}

#[tokio::test]
async fn a_request_without_a_context_or_deadline_passes_through() {
    let (tx, rx) = mpsc::channel();
    let mut client = ClientLayer::new().layer(recording(tx));
    client.call(request(None)).await.unwrap();
    assert!(rx.recv().unwrap().get("grpc-timeout").is_none());
    let (ctx, _cancel) = Context::background().with_cancel();
    client.call(request(Some(&ctx))).await.unwrap();
    assert!(rx.recv().unwrap().get("grpc-timeout").is_none());
}

#[tokio::test]
async fn the_inner_services_error_is_passed_on() {
    let mut client = ClientLayer::new().layer(service_fn(|_: Request<()>| {
        std::future::ready(Err::<Response<()>, _>("refused"))
    }));
    let (ctx, _cancel) = Context::background().with_cancel();
    let err = client.call(request(Some(&ctx))).await.unwrap_err();
    assert!(matches!(err, ClientError::Inner("refused")));
    assert_eq!(err.err(), None);
}

/// Signals when dropped: the inner call's future was abandoned.
struct DropSignal(Option<oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.take().unwrap().send(());
    }
}

/// An inner service whose calls never finish, each signalling on `dropped`
/// when its future is dropped.
fn hanging(
    dropped: mpsc::Sender<oneshot::Receiver<()>>,
) -> impl Service<
    Request<()>,
    Response = Response<()>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<()>, Infallible>> + Send + 'static,
> {
    service_fn(move |_: Request<()>| {
        let (tx, rx) = oneshot::channel();
        dropped.send(rx).unwrap();
        let guard = DropSignal(Some(tx));
        async move {
            let _guard = guard;
            std::future::pending().await
        }
    })
}

#[tokio::test]
async fn a_cancelled_context_abandons_the_call_in_flight() {
    let (tx, rx) = mpsc::channel();
    let mut client = ClientLayer::new().layer(hanging(tx));
    let (ctx, cancel) = Context::background().with_cancel_cause();
    let call = tokio::spawn(client.call(request(Some(&ctx))));
    let mut dropped = rx.recv().unwrap();
    // The call is in flight (the inner future exists and is not dropped).
    tokio::task::yield_now().await;
    cancel.cancel(Cause::msg("caller hung up"));
    let err = within("the abandoned call", call)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.err(), Some(Error::Canceled));
    assert_eq!(err.cause().unwrap().to_string(), "caller hung up");
    // The inner future was dropped by the time the call returned.
    assert_eq!(dropped.try_recv(), Ok(()));
}

#[tokio::test]
async fn a_deadline_abandons_the_call_in_flight() {
    let (tx, rx) = mpsc::channel();
    let mut client = ClientLayer::new().layer(hanging(tx));
    let (ctx, _cancel) = Context::background().with_timeout(Duration::from_millis(20));
    let err = within("the timed-out call", client.call(request(Some(&ctx))))
        .await
        .unwrap_err();
    assert_eq!(err.err(), Some(Error::DeadlineExceeded));
    assert!(err.context_error().unwrap().is_timeout());
    assert_eq!(
        rx.recv().unwrap().try_recv(),
        Ok(()),
        "the inner future was dropped"
    );
}
