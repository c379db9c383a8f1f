//! Deadlines and cancellation across three services on loopback:
//! client → A → B, all hyper, with goctx-tower's layers.
//!
//! 1. The client grants 1 s; each hop works 100 ms before calling the next,
//!    and prints the deadline it was given: it shrinks hop by hop.
//! 2. The client hangs up while B is working: A's context ends ("caller
//!    went away"), A's call to B is abandoned, and B's context ends too.
//!    Each hop's latency after the hang-up is printed.
//!
//! ```sh
//! cargo run --release -p goctx-tower --example hops
//! ```
//!
//! Exits non-zero if a hop did not see what it should.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use goctx::Context;
use goctx_tower::{
    ClientError, ClientLayer, ContextClient, RequestEnd, ServerLayer, shutdown_tree,
};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tower_layer::Layer;
use tower_service::Service;

type HttpClient = ContextClient<Client<HttpConnector, Full<Bytes>>>;

/// What each hop reports to `main` during the hang-up.
#[derive(Debug)]
enum Event {
    /// B is working on the request.
    BStarted,
    /// A hop's request context became done.
    Done {
        hop: &'static str,
        at: Instant,
        ctx: Context,
    },
    /// A's call to B returned (abandoned).
    CallReturned {
        at: Instant,
        result: Result<(), ClientError<hyper_util::client::legacy::Error>>,
    },
}

const WORK: Duration = Duration::from_millis(100);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (events, mut event) = unbounded_channel();
    let (b_root, _b_shutdown) = shutdown_tree(&Context::background());
    let b = serve(ServerLayer::new(b_root).layer(Handler {
        hop: "B",
        next: None,
        events: events.clone(),
    }))
    .await;
    let (a_root, _a_shutdown) = shutdown_tree(&Context::background());
    let a = serve(ServerLayer::new(a_root).layer(Handler {
        hop: "A",
        next: Some((b, client())),
        events,
    }))
    .await;
    let mut client = client();

    println!("1. the deadline, hop by hop (each hop works {WORK:?} first)");
    let granted = Duration::from_secs(1);
    let (ctx, _cancel) = Context::background().with_timeout(granted);
    let response = client.call(get(a, "/deadline", &ctx)).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    println!("   client   grants {granted:?}");
    print!("{}", String::from_utf8_lossy(&body));

    println!("2. the client hangs up while B works (5 rounds)");
    let mut failed = false;
    for round in 1..=5 {
        let (ctx, _cancel) = Context::background().with_cancel();
        let call = tokio::spawn(client.call(get(a, "/hang", &ctx)));
        // Wait until B works on it (A's call is then in flight).
        while !matches!(event.recv().await, Some(Event::BStarted)) {}
        let hung_up = Instant::now();
        call.abort();
        let (mut a_done, mut b_done, mut call_returned) = (None, None, None);
        for _ in 0..3 {
            match event.recv().await.expect("the hops report") {
                Event::Done { hop, at, ctx } => {
                    let cause = ctx.cause().unwrap();
                    failed |= cause.downcast_ref::<RequestEnd>() != Some(&RequestEnd::CallerGone);
                    let slot = if hop == "A" { &mut a_done } else { &mut b_done };
                    *slot = Some(format!("{:?} ({cause})", at - hung_up));
                }
                Event::CallReturned { at, result } => {
                    let cause = result.as_ref().err().and_then(ClientError::cause);
                    failed |= cause.and_then(|c| c.downcast_ref::<RequestEnd>())
                        != Some(&RequestEnd::CallerGone);
                    call_returned = Some(format!("{:?}", at - hung_up));
                }
                Event::BStarted => unreachable!("one request at a time"),
            }
        }
        let missing = || "missing".to_owned();
        println!(
            "   round {round}: A sees its context done {}, A's call to B abandoned {}, B sees its context done {}",
            a_done.unwrap_or_else(missing),
            call_returned.unwrap_or_else(missing),
            b_done.unwrap_or_else(missing),
        );
    }
    if failed {
        eprintln!("a hop did not see the hang-up as it should");
        std::process::exit(1);
    }
}

/// A hop: reports its deadline (`/deadline`) or waits until its context is
/// done (`/hang`), calling the next hop first if there is one.
#[derive(Clone)]
struct Handler {
    hop: &'static str,
    next: Option<(SocketAddr, HttpClient)>,
    events: UnboundedSender<Event>,
}

impl Service<Request<Incoming>> for Handler {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let ctx = request.extensions().get::<Context>().unwrap().clone();
        let this = self.clone();
        let path = request.uri().path().to_owned();
        Box::pin(async move {
            let text = match path.as_str() {
                "/deadline" => this.deadline(ctx).await,
                _ => this.hang(ctx).await,
            };
            Ok(Response::new(Full::new(Bytes::from(text))))
        })
    }
}

impl Handler {
    async fn deadline(self, ctx: Context) -> String {
        let remaining = ctx.deadline().expect("the client set one") - Instant::now();
        let mut text = format!("   {}        given  {remaining:?}\n", self.hop);
        // Work, but no longer than the context allows.
        let _ = ctx.run_until_done(tokio::time::sleep(WORK)).await;
        if let Some((addr, mut client)) = self.next {
            let response = client.call(get(addr, "/deadline", &ctx)).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            text += &String::from_utf8_lossy(&body);
        }
        text
    }

    async fn hang(self, ctx: Context) -> String {
        // Record when this hop's context ends.
        let (hop, events) = (self.hop, self.events.clone());
        let watched = ctx.clone();
        tokio::spawn(async move {
            watched.done().await;
            let at = Instant::now();
            let _ = events.send(Event::Done {
                hop,
                at,
                ctx: watched,
            });
        });
        match self.next {
            Some((addr, mut client)) => {
                // The call runs in a task of its own, as work a handler
                // hands off does: when the caller hangs up, hyper drops this
                // handler's future, but it is A's context ending that stops
                // the call (the client layer abandons it).
                let events = self.events.clone();
                let call = tokio::spawn(async move {
                    let result = client.call(get(addr, "/hang", &ctx)).await.map(drop);
                    let at = Instant::now();
                    let _ = events.send(Event::CallReturned { at, result });
                });
                let _ = call.await;
            }
            None => {
                let _ = self.events.send(Event::BStarted);
                ctx.done().await;
            }
        }
        String::new()
    }
}

fn client() -> HttpClient {
    ClientLayer::new().layer(Client::builder(TokioExecutor::new()).build_http())
}

fn get(addr: SocketAddr, path: &str, ctx: &Context) -> Request<Full<Bytes>> {
    let mut request = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    request.extensions_mut().insert(ctx.clone());
    request
}

/// Serves `service` on 127.0.0.1 (a port the OS picks), HTTP/1.
async fn serve<S>(service: S) -> SocketAddr
where
    S: Service<Request<Incoming>, Response = Response<goctx_tower::ServerBody<Full<Bytes>>>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}
