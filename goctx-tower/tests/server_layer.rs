//! The server layer called in-process (no sockets): what each request's
//! context holds and why it ends.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use goctx::{Context, Error};
use goctx_tower::{RequestEnd, ServerLayer, shutdown_tree};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use support::{Endless, service_fn, within};
use tower_layer::Layer;
use tower_service::Service;

/// The request context's end, as `(err, RequestEnd)`.
fn end_of(ctx: &Context) -> Option<(Error, RequestEnd)> {
    let cause = ctx.cause()?;
    Some((ctx.err()?, *cause.downcast_ref::<RequestEnd>()?))
}

/// A handler that sends its request's context out and answers with an
/// empty 200.
fn reporting(
    tx: mpsc::Sender<Context>,
) -> impl Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>>,
> + Clone {
    service_fn(move |request: Request<()>| {
        let ctx = request.extensions().get::<Context>().cloned();
        tx.send(ctx.expect("the layer put a context in")).unwrap();
        async { Ok(Response::new(Full::new(Bytes::from_static(b"ok")))) }
    })
}

fn request(grpc_timeout: Option<&str>) -> Request<()> {
    let mut builder = Request::builder().uri("/");
    if let Some(value) = grpc_timeout {
        builder = builder.header("grpc-timeout", value);
    }
    builder.body(()).unwrap()
}

#[tokio::test]
async fn each_request_gets_a_child_of_the_server_context_ended_when_the_body_is() {
    let (server, _shutdown) = shutdown_tree(&Context::background());
    let (tx, rx) = mpsc::channel();
    let mut service = ServerLayer::new(server.clone()).layer(reporting(tx));
    let response = service.call(request(None)).await.unwrap();
    let ctx = rx.recv().unwrap();
    assert_eq!(ctx.deadline(), None, "no grpc-timeout, no server timeout");
    assert!(!ctx.is_done(), "the body is still to be sent");
    assert_eq!(server.registered_children(), 1);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
    assert_eq!(
        end_of(&ctx),
        Some((Error::Canceled, RequestEnd::HandlerFinished))
    );
    assert_eq!(server.registered_children(), 0);
    assert!(!server.is_done(), "a request's end is not the server's");
}

#[tokio::test]
async fn grpc_timeout_sets_the_deadline() {
    let (tx, rx) = mpsc::channel();
    let mut service = ServerLayer::new(Context::background()).layer(reporting(tx));
    let before = Instant::now();
    let _response = service.call(request(Some("200m"))).await.unwrap();
    let after = Instant::now();
    let deadline = rx.recv().unwrap().deadline().expect("a deadline");
    assert!(deadline >= before + Duration::from_millis(200));
    assert!(deadline <= after + Duration::from_millis(200));
}

#[tokio::test]
async fn the_earlier_of_server_timeout_and_grpc_timeout_wins() {
    let (tx, rx) = mpsc::channel();
    let layer = ServerLayer::new(Context::background()).timeout(Duration::from_secs(100));
    let mut service = layer.layer(reporting(tx));

    let before = Instant::now();
    let _response = service.call(request(Some("10S"))).await.unwrap();
    let deadline = rx.recv().unwrap().deadline().unwrap();
    assert!(deadline >= before + Duration::from_secs(10));
    assert!(deadline < before + Duration::from_secs(100), "the caller's");

    let before = Instant::now();
    let _response = service.call(request(Some("1000S"))).await.unwrap();
    let after = Instant::now();
    let deadline = rx.recv().unwrap().deadline().unwrap();
    assert!(
        deadline >= before + Duration::from_secs(100),
        "the server's"
    );
    assert!(deadline <= after + Duration::from_secs(100));

    let _response = service.call(request(None)).await.unwrap();
    assert!(
        rx.recv().unwrap().deadline().is_some(),
        "the server's alone"
    );
}

#[tokio::test]
async fn an_expired_deadline_says_whose_it_was() {
    let (tx, rx) = mpsc::channel();
    let layer = ServerLayer::new(Context::background()).timeout(Duration::from_millis(1));
    let mut service = layer.layer(reporting(tx.clone()));
    let _response = service.call(request(Some("1000S"))).await.unwrap();
    let ctx = rx.recv().unwrap();
    within("the server timeout", ctx.done()).await;
    assert_eq!(
        end_of(&ctx),
        Some((Error::DeadlineExceeded, RequestEnd::ServerTimeout))
    );

    let layer = ServerLayer::new(Context::background()).timeout(Duration::from_secs(1000));
    let mut service = layer.layer(reporting(tx));
    let response = service.call(request(Some("1m"))).await.unwrap();
    let ctx = rx.recv().unwrap();
    within("the caller's grpc-timeout", ctx.done()).await;
    // The first cancellation decides: the body's end comes later.
    drop(response);
    assert_eq!(
        end_of(&ctx),
        Some((Error::DeadlineExceeded, RequestEnd::CallerDeadline))
    );
}

#[tokio::test]
async fn grpc_timeout_zero_is_done_at_once() {
    let (tx, rx) = mpsc::channel();
    let mut service = ServerLayer::new(Context::background()).layer(reporting(tx));
    let _response = service.call(request(Some("0n"))).await.unwrap();
    let ctx = rx.recv().unwrap();
    assert_eq!(
        end_of(&ctx),
        Some((Error::DeadlineExceeded, RequestEnd::CallerDeadline))
    );
}

/// A handler counting its calls in `calls`.
fn counting(
    calls: Arc<AtomicUsize>,
) -> impl Service<
    Request<()>,
    Response = Response<Empty<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Empty<Bytes>>, Infallible>>,
> {
    service_fn(move |_: Request<()>| {
        calls.fetch_add(1, Ordering::Relaxed);
        async { Ok(Response::new(Empty::new())) }
    })
}

#[tokio::test]
async fn a_malformed_grpc_timeout_is_a_400_and_the_handler_is_not_called() {
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = counting(calls.clone());
    let (server, _shutdown) = shutdown_tree(&Context::background());
    let mut service = ServerLayer::new(server.clone()).layer(handler);
    for bad in [
        "",
        "S",
        "1s",
        "123456789S",
        "-1S",
        "1.5S",
        "9999999999999999999999H",
    ] {
        let response = service.call(request(Some(bad))).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        assert_eq!(
            response.headers()["content-type"],
            "text/plain; charset=utf-8"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = std::str::from_utf8(&body).unwrap();
        assert!(body.starts_with("malformed grpc-timeout: "), "{body:?}");
    }
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    assert_eq!(server.registered_children(), 0, "no context was made");
    // A well-formed one passes.
    let response = service.call(request(Some("1S"))).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_malformed_grpc_timeout_on_a_grpc_request_is_invalid_argument() {
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = counting(calls.clone());
    let mut service = ServerLayer::new(Context::background()).layer(handler);
    let request = Request::builder()
        .uri("/pkg.Service/Method")
        .header("content-type", "application/grpc+proto")
        .header("grpc-timeout", "10x")
        .body(())
        .unwrap();
    let response = service.call(request).await.unwrap();
    // A trailers-only gRPC response: HTTP 200, the status in the headers.
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/grpc");
    assert_eq!(response.headers()["grpc-status"], "3");
    assert_eq!(
        response.headers()["grpc-message"],
        "malformed grpc-timeout: unknown unit 'x' (expected one of H M S m u n)"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(body.is_empty());
    assert_eq!(calls.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_repeated_grpc_timeout_is_rejected() {
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = counting(calls.clone());
    let mut service = ServerLayer::new(Context::background()).layer(handler);
    let request = Request::builder()
        .header("grpc-timeout", "1S")
        .header("grpc-timeout", "2S")
        .body(())
        .unwrap();
    let response = service.call(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(calls.load(Ordering::Relaxed), 0);
}

/// A handler that sends its context out and never answers.
fn hanging(
    tx: mpsc::Sender<Context>,
) -> impl Service<
    Request<()>,
    Response = Response<Empty<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Empty<Bytes>>, Infallible>>,
> {
    service_fn(move |request: Request<()>| {
        tx.send(request.extensions().get::<Context>().unwrap().clone())
            .unwrap();
        std::future::pending()
    })
}

#[tokio::test]
async fn dropping_the_response_future_ends_the_context_with_caller_gone() {
    let (server, _shutdown) = shutdown_tree(&Context::background());
    let (tx, rx) = mpsc::channel();
    let mut service = ServerLayer::new(server.clone()).layer(hanging(tx));
    let mut future = Box::pin(service.call(request(Some("1H"))));
    let ctx = rx.recv().unwrap();
    let polled = std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await;
    assert!(polled.is_pending());
    assert!(!ctx.is_done());
    drop(future);
    assert_eq!(
        end_of(&ctx),
        Some((Error::Canceled, RequestEnd::CallerGone))
    );
    assert_eq!(server.registered_children(), 0);
}

#[tokio::test]
async fn server_shutdown_ends_request_contexts() {
    let (server, shutdown) = shutdown_tree(&Context::background());
    let (tx, rx) = mpsc::channel();
    let mut service = ServerLayer::new(server).layer(hanging(tx));
    let future = service.call(request(Some("1H")));
    let ctx = rx.recv().unwrap();
    shutdown.shutdown();
    assert_eq!(
        end_of(&ctx),
        Some((Error::Canceled, RequestEnd::ServerShutdown))
    );
    drop(future);
    assert_eq!(
        end_of(&ctx),
        Some((Error::Canceled, RequestEnd::ServerShutdown)),
        "the first cause stays"
    );
}

#[tokio::test]
async fn a_stream_dropped_before_its_end_ends_the_context_with_caller_gone() {
    let (tx, rx) = mpsc::channel();
    let handler = service_fn(move |request: Request<()>| {
        tx.send(request.extensions().get::<Context>().unwrap().clone())
            .unwrap();
        async {
            Ok::<_, Infallible>(Response::new(Endless {
                first: Some(Bytes::from_static(b"first")),
            }))
        }
    });
    let mut service = ServerLayer::new(Context::background()).layer(handler);
    let response = service.call(request(None)).await.unwrap();
    let ctx = rx.recv().unwrap();
    let mut body = Box::pin(response.into_body());
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "first");
    assert!(!ctx.is_done(), "the handler is still streaming");
    drop(body);
    assert_eq!(
        end_of(&ctx),
        Some((Error::Canceled, RequestEnd::CallerGone))
    );
}

#[tokio::test]
async fn a_body_dropped_at_its_end_ends_the_context_with_handler_finished() {
    let (tx, rx) = mpsc::channel();
    let handler = service_fn(move |request: Request<()>| {
        tx.send(request.extensions().get::<Context>().unwrap().clone())
            .unwrap();
        async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) }
    });
    let mut service = ServerLayer::new(Context::background()).layer(handler);
    let response = service.call(request(None)).await.unwrap();
    let ctx = rx.recv().unwrap();
    // Never polled: an empty body is at its end from the start (a server
    // sees `is_end_stream()` and drops it).
    drop(response);
    assert_eq!(
        end_of(&ctx),
        Some((Error::Canceled, RequestEnd::HandlerFinished))
    );
}

#[tokio::test]
async fn a_failing_handler_ends_the_context_with_handler_finished() {
    let (tx, rx) = mpsc::channel();
    let handler = service_fn(move |request: Request<()>| {
        tx.send(request.extensions().get::<Context>().unwrap().clone())
            .unwrap();
        async { Err::<Response<Empty<Bytes>>, _>("broken") }
    });
    let mut service = ServerLayer::new(Context::background()).layer(handler);
    assert_eq!(service.call(request(None)).await.unwrap_err(), "broken");
    let ctx = rx.recv().unwrap();
    assert_eq!(
        end_of(&ctx),
        Some((Error::Canceled, RequestEnd::HandlerFinished))
    );
}

#[tokio::test]
async fn the_request_context_keeps_the_server_contexts_values() {
    #[derive(Debug, PartialEq)]
    struct Region(&'static str);
    let server = Context::background().with_value(Region("eu-west"));
    let (tx, rx) = mpsc::channel();
    let mut service = ServerLayer::new(server).layer(reporting(tx));
    let _response = service.call(request(Some("1S"))).await.unwrap();
    assert_eq!(
        rx.recv().unwrap().value::<Region>(),
        Some(&Region("eu-west"))
    );
}
