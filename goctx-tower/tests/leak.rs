//! 10,000 requests through both layers over a real socket leave no context,
//! timer or task behind: the server-wide context has no child left, and the
//! process's live allocations do not grow with the number of requests.
//!
//! A binary of its own: it counts every allocation of the process.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use goctx::Context;
use goctx_tower::{ClientLayer, ServerLayer, shutdown_tree};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use support::{get, http_client, serve, service_fn};
use tower_layer::Layer;
use tower_service::Service;

/// Live allocations of the process (allocations minus deallocations).
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is forwarded to `System` unchanged; the counter is a
// side effect.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const WARM_UP: usize = 1_000;
const REQUESTS: usize = 10_000;

#[test]
fn ten_thousand_requests_leave_no_context_behind() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (server_ctx, _shutdown) = shutdown_tree(&Context::background());
        // Each request gets a deadline node (a timer) from grpc-timeout, and
        // the server default, and answers with its remaining time.
        let handler = service_fn(|request: Request<Incoming>| {
            let ctx = request.extensions().get::<Context>().unwrap();
            assert!(ctx.deadline().is_some());
            assert!(!ctx.is_done());
            std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(
                Bytes::from_static(b"ok"),
            ))))
        });
        let layer = ServerLayer::new(server_ctx.clone()).timeout(Duration::from_secs(60));
        let addr = serve(layer.layer(handler)).await;
        let mut client = ClientLayer::new().layer(http_client());
        let (ctx, _cancel) = Context::background().with_timeout(Duration::from_secs(3600));

        let mut run = async |n: usize| {
            for _ in 0..n {
                let response = client.call(get(addr, "/", Some(&ctx))).await.unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                let body = response.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&body[..], b"ok");
            }
        };
        run(WARM_UP).await;
        let metrics = tokio::runtime::Handle::current().metrics();
        let tasks_before = metrics.num_alive_tasks();
        let before = LIVE.load(Ordering::Relaxed);
        run(REQUESTS).await;
        let after = LIVE.load(Ordering::Relaxed);
        let tasks_after = metrics.num_alive_tasks();
        let growth = after - before;
        println!(
            "live allocations: {before} after {WARM_UP} requests, {after} after {REQUESTS} more \
             (growth {growth}); server context: {} registered, {} linked children; \
             tasks: {tasks_before} before, {tasks_after} after",
            server_ctx.registered_children(),
            server_ctx.linked_children()
        );
        assert_eq!(server_ctx.registered_children(), 0);
        // The accept loop and one connection's tasks, server and client.
        assert_eq!(tasks_after, tasks_before);
        assert!(
            server_ctx.linked_children() < 1_000,
            "{}",
            server_ctx.linked_children()
        );
        // One allocation kept per request would be 10,000; epoch-deferred
        // frees and pools may hold a few hundred at any moment.
        assert!(
            growth < (REQUESTS / 10) as isize,
            "{growth} live allocations more"
        );
    });
}
