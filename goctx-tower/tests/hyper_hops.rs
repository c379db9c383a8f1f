//! The layers over real sockets: a hyper server on 127.0.0.1 (a port the OS
//! picks) and a real hyper client, one or two hops.
//!
//! Waits await the event itself; the hang guard (`support::within`) only
//! turns a hang into a failure. Latencies are printed (`--nocapture`), not
//! asserted: the machine may be slow.

mod support;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use goctx::{Cause, Context, Error};
use goctx_tower::{ClientLayer, RequestEnd, ServerLayer, parse_grpc_timeout, shutdown_tree};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use support::{get, http_client, serve, service_fn, within};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tower_layer::Layer;
use tower_service::Service;

fn end_of(ctx: &Context) -> Option<(Error, RequestEnd)> {
    let cause = ctx.cause()?;
    Some((ctx.err()?, *cause.downcast_ref::<RequestEnd>()?))
}

fn ok(text: String) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from(text))))
}

/// A handler that sends its context out and answers once it is done.
fn until_done(
    tx: UnboundedSender<Context>,
) -> impl tower_service::Service<
    Request<Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
> + Clone
+ Send
+ 'static {
    service_fn(move |request: Request<Incoming>| {
        let ctx = request.extensions().get::<Context>().unwrap().clone();
        tx.send(ctx.clone()).unwrap();
        async move {
            ctx.done().await;
            ok(String::new())
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_client_request_cancels_the_server_side_context() {
    let (server_ctx, _shutdown) = shutdown_tree(&Context::background());
    let (tx, mut rx) = unbounded_channel();
    let addr = serve(ServerLayer::new(server_ctx.clone()).layer(until_done(tx))).await;
    let client = http_client();
    for _ in 0..3 {
        let call = tokio::spawn(client.request(get(addr, "/", None)));
        let ctx = within("the request to arrive", rx.recv()).await.unwrap();
        assert!(!ctx.is_done());
        let hung_up = Instant::now();
        call.abort();
        within("the server to see the caller go", ctx.done()).await;
        let latency = hung_up.elapsed();
        println!("client hung up -> server context done: {latency:?}");
        assert_eq!(
            end_of(&ctx),
            Some((Error::Canceled, RequestEnd::CallerGone))
        );
    }
    assert_eq!(server_ctx.registered_children(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_shrinks_across_two_hops() {
    const WORK: Duration = Duration::from_millis(50);
    // B reports the time its request was given.
    let b = serve(ServerLayer::new(Context::background()).layer(service_fn(
        |request: Request<Incoming>| {
            let ctx = request.extensions().get::<Context>().unwrap();
            let remaining = ctx.deadline().unwrap() - Instant::now();
            std::future::ready(ok(format!("{}", remaining.as_nanos())))
        },
    )))
    .await;
    // A works for WORK, then asks B with its own context; it answers with
    // its own remaining time at arrival and B's.
    let client = ClientLayer::new().layer(http_client());
    let a = serve(ServerLayer::new(Context::background()).layer(service_fn(
        move |request: Request<Incoming>| {
            let mut client = client.clone();
            let ctx = request.extensions().get::<Context>().unwrap().clone();
            let remaining = ctx.deadline().unwrap() - Instant::now();
            async move {
                tokio::time::sleep(WORK).await;
                let response = client.call(get(b, "/", Some(&ctx))).await.unwrap();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                ok(format!(
                    "{} {}",
                    remaining.as_nanos(),
                    std::str::from_utf8(&body).unwrap()
                ))
            }
        },
    )))
    .await;

    let mut client = ClientLayer::new().layer(http_client());
    let granted = Duration::from_secs(5);
    let (ctx, _cancel) = Context::background().with_timeout(granted);
    let response = within("two hops", client.call(get(a, "/", Some(&ctx))))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let hops: Vec<Duration> = std::str::from_utf8(&body)
        .unwrap()
        .split(' ')
        .map(|nanos| Duration::from_nanos(nanos.parse().unwrap()))
        .collect();
    let (at_a, at_b) = (hops[0], hops[1]);
    println!("granted {granted:?}, at A {at_a:?}, at B {at_b:?}");
    assert!(at_a <= granted, "{at_a:?}");
    // A spent at least WORK before its call; what it sent was rounded up
    // by less than a microsecond at these scales.
    assert!(
        at_b + WORK <= at_a + Duration::from_micros(1),
        "{at_a:?} {at_b:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_layer_fails_fast_on_a_done_context() {
    let (tx, mut rx) = unbounded_channel();
    let addr = serve(ServerLayer::new(Context::background()).layer(until_done(tx))).await;
    let mut client = ClientLayer::new().layer(http_client());
    let (ctx, cancel) = Context::background().with_cancel_cause();
    cancel.cancel(Cause::msg("batch aborted"));
    let err = client.call(get(addr, "/", Some(&ctx))).await.unwrap_err();
    assert_eq!(err.err(), Some(Error::Canceled));
    assert_eq!(err.cause().unwrap().to_string(), "batch aborted");
    // Nothing reached the server.
    assert!(rx.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_layer_abandons_a_call_when_its_context_is_cancelled() {
    let (tx, mut rx) = unbounded_channel();
    let (server_ctx, _shutdown) = shutdown_tree(&Context::background());
    let addr = serve(ServerLayer::new(server_ctx.clone()).layer(until_done(tx))).await;
    let mut client = ClientLayer::new().layer(http_client());
    let (ctx, cancel) = Context::background().with_cancel_cause();
    let call = tokio::spawn(client.call(get(addr, "/", Some(&ctx))));
    let server_side = within("the request to arrive", rx.recv()).await.unwrap();
    let cancelled = Instant::now();
    cancel.cancel(Cause::msg("user pressed stop"));
    let err = within("the abandoned call", call)
        .await
        .unwrap()
        .unwrap_err();
    let client_latency = cancelled.elapsed();
    assert_eq!(err.err(), Some(Error::Canceled));
    assert_eq!(err.cause().unwrap().to_string(), "user pressed stop");
    // The abandoned call's connection is closed: the server sees the
    // caller go.
    within("the server to see the caller go", server_side.done()).await;
    let server_latency = cancelled.elapsed();
    println!(
        "cancel -> client call returned {client_latency:?}, -> server context done {server_latency:?}"
    );
    assert_eq!(
        end_of(&server_side),
        Some((Error::Canceled, RequestEnd::CallerGone))
    );
    assert_eq!(server_ctx.registered_children(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_going_away_is_seen_two_hops_down() {
    // B: waits until its context is done.
    let (b_tx, mut b_rx) = unbounded_channel();
    let b = serve(ServerLayer::new(Context::background()).layer(until_done(b_tx))).await;
    // A: calls B with its own context, in a task of its own (so it is A's
    // context, not the drop of A's handler future, that stops the call);
    // reports its context and how the call ended.
    let (a_tx, mut a_rx) = unbounded_channel();
    let (call_tx, mut call_rx) = unbounded_channel();
    let client = ClientLayer::new().layer(http_client());
    let a = serve(ServerLayer::new(Context::background()).layer(service_fn(
        move |request: Request<Incoming>| {
            let mut client = client.clone();
            let ctx = request.extensions().get::<Context>().unwrap().clone();
            a_tx.send(ctx.clone()).unwrap();
            let call_tx = call_tx.clone();
            let call = tokio::spawn(async move {
                let result = client.call(get(b, "/", Some(&ctx))).await;
                call_tx.send(result.map(drop)).unwrap();
            });
            async move {
                let _ = call.await;
                ok(String::new())
            }
        },
    )))
    .await;
    let client = http_client();
    let call = tokio::spawn(client.request(get(a, "/", None)));
    let at_a = within("the request to reach A", a_rx.recv()).await.unwrap();
    let at_b = within("the request to reach B", b_rx.recv()).await.unwrap();
    let hung_up = Instant::now();
    call.abort();
    within("A to see the caller go", at_a.done()).await;
    let a_latency = hung_up.elapsed();
    within("B to see A's call abandoned", at_b.done()).await;
    let b_latency = hung_up.elapsed();
    let call = within("A's call to B to be abandoned", call_rx.recv())
        .await
        .unwrap();
    let c_latency = hung_up.elapsed();
    println!(
        "client hung up -> A's context done {a_latency:?}, A's call abandoned {c_latency:?}, \
         B's context done {b_latency:?}"
    );
    let err = call.unwrap_err();
    assert_eq!(err.err(), Some(Error::Canceled));
    assert_eq!(
        err.cause().unwrap().downcast_ref::<RequestEnd>(),
        Some(&RequestEnd::CallerGone),
        "A's call ended with A's context's cause"
    );
    assert_eq!(
        end_of(&at_a),
        Some((Error::Canceled, RequestEnd::CallerGone))
    );
    assert_eq!(
        end_of(&at_b),
        Some((Error::Canceled, RequestEnd::CallerGone))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_grpc_timeout_is_rejected_over_the_wire() {
    let (tx, mut rx) = unbounded_channel();
    let addr = serve(ServerLayer::new(Context::background()).layer(until_done(tx))).await;
    let client = http_client();
    let mut request = get(addr, "/", None);
    request
        .headers_mut()
        .insert("grpc-timeout", "12345678901S".parse().unwrap());
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"malformed grpc-timeout: more than 8 digits\n");
    assert!(rx.try_recv().is_err(), "the handler was not called");
    // And a valid one reaches the handler with its deadline.
    let mut request = get(addr, "/", None);
    request
        .headers_mut()
        .insert("grpc-timeout", "30S".parse().unwrap());
    let _call = tokio::spawn(client.request(request));
    let ctx = within("the request to arrive", rx.recv()).await.unwrap();
    let remaining = ctx.deadline().unwrap() - Instant::now();
    assert!(remaining <= parse_grpc_timeout(b"30S").unwrap());
}
