//! A tokio service with per-request deadlines: each request runs under
//! `ctx.run_until_done(..)`, which drops the handler's future the moment
//! the request's context is done (its deadline passed, or the server shut
//! down) and returns the context's error for `?`.
//!
//! ```text
//! cargo run --release --example tokio_service
//! ```

use std::time::{Duration, Instant};

use goctx::{Cause, Context, ContextError};

/// A handler that takes `work` of async time.
async fn handler(id: u32, work: Duration) -> String {
    tokio::time::sleep(work).await;
    format!("request {id} served in {work:?}")
}

/// Serves one request under a child of the server's context.
async fn serve(server: Context, id: u32, work: Duration) -> Result<String, ContextError> {
    let (ctx, _cancel) = server.with_timeout(Duration::from_millis(30));
    ctx.run_until_done(handler(id, work)).await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (server, shutdown) = Context::background().with_cancel_cause();
    let started = Instant::now();
    let ms = Duration::from_millis;
    let mut requests = Vec::new();
    // At 0 ms: work of 5, 15, 45 and 60 ms against a 30 ms budget each.
    for (id, work) in [(0, 5), (1, 15), (2, 45), (3, 60)] {
        requests.push((id, tokio::spawn(serve(server.clone(), id, ms(work)))));
    }
    // At 20 ms: long requests, still inside their budget (due at 50 ms)
    // when the server shuts down at 35 ms.
    tokio::time::sleep(ms(20)).await;
    for (id, work) in [(4, 40), (5, 40)] {
        requests.push((id, tokio::spawn(serve(server.clone(), id, ms(work)))));
    }
    tokio::time::sleep(ms(15)).await;
    shutdown.cancel(Cause::msg("server shutting down"));
    for (id, request) in requests {
        match request.await.expect("handlers do not panic") {
            Ok(answer) => println!("{answer}"),
            Err(e) => println!("request {id}: {e} (timeout: {})", e.is_timeout()),
        }
    }
    println!("all requests settled {:?} after start", started.elapsed());
}
