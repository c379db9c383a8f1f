//! A simulated server that uses one goctx tree as its shutdown switch.
//!
//! Requests are served from two worlds at once — a pool of plain OS threads
//! and tasks on a tokio multi-thread runtime — and every request runs under
//! its own child of the server's root context. After a fixed run time the
//! main thread cancels the root with a `Shutdown` cause; the demo then checks
//! what every cut-off request observed and measures how quickly parked
//! threads and pending tasks woke up. It exits with status 1 if any cut-off
//! request saw anything but `Canceled` with the `Shutdown` cause.
//!
//! ```text
//! cargo run --release --example server            # runs for 1000 ms
//! cargo run --release --example server -- 250     # runs for 250 ms
//! SERVER_RUN_MS=3000 cargo run --release --example server
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use goctx::{CancelFunc, Context, Error};
use tokio::task::JoinSet;

/// How long the server runs before shutdown when nothing else is given.
const DEFAULT_RUN: Duration = Duration::from_millis(1000);
/// Plain OS threads serving blocking requests, one at a time each.
const WORKER_THREADS: usize = 4;
/// A new async request arrives this often.
const ASYNC_ARRIVAL: Duration = Duration::from_millis(1);
/// Dedicated waiters that do nothing but wait for shutdown: they measure the
/// cancel-to-wake latency without any request work in the way.
const PARKED_WAITERS: usize = 8;
const ASYNC_WAITERS: usize = 64;
/// A blocking handler never goes longer than this without looking at its
/// context, so it would notice cancellation even without being woken.
const SLICE: Duration = Duration::from_millis(5);
/// If shutdown has not completed this long after `cancel()`, something is
/// wrong (a lost wake-up): say so and exit instead of hanging.
const WATCHDOG: Duration = Duration::from_secs(5);

/// The request-scoped value: `ctx.value::<RequestId>()` finds it anywhere
/// below the request's context (the type is the key, as Go's key types are).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RequestId(u64);

/// The cause the server cancels its root with, so every request can tell a
/// shutdown apart from, say, a client disconnect.
#[derive(Debug)]
struct Shutdown;

impl fmt::Display for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("server shutting down")
    }
}

impl StdError for Shutdown {}

/// What one request ended with.
enum Outcome {
    Finished,
    /// Cut off by cancellation: when the handler noticed, and whether what it
    /// saw in its context was what shutdown promises (`Err` says what wasn't).
    CutOff {
        noticed: Instant,
        check: Result<(), String>,
    },
}

/// Per-world request statistics.
#[derive(Default)]
struct Tally {
    finished: usize,
    /// When each cut-off request noticed the cancellation.
    cut_off: Vec<Instant>,
    /// Contract violations seen by cut-off requests (empty when all is well).
    violations: Vec<String>,
}

impl Tally {
    fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Finished => self.finished += 1,
            Outcome::CutOff { noticed, check } => {
                self.cut_off.push(noticed);
                if let Err(violation) = check {
                    self.violations.push(violation);
                }
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.finished += other.finished;
        self.cut_off.extend(other.cut_off);
        self.violations.extend(other.violations);
    }
}

/// Server-wide request numbering, shared by threads and tasks.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A request mix: one in `long_every` requests is long-running (around
/// `long`, so most outlive the run and get cut off), the rest take up to
/// `short`.
struct Mix {
    long_every: u64,
    short: Duration,
    long: Duration,
}

// Rarer long requests on threads: each one occupies a whole worker.
const THREAD_MIX: Mix = Mix {
    long_every: 40,
    short: Duration::from_millis(20),
    long: Duration::from_secs(2),
};
const TASK_MIX: Mix = Mix {
    long_every: 10,
    short: Duration::from_millis(40),
    long: Duration::from_secs(3),
};

/// One request: its context and how much simulated work it needs.
struct Request {
    ctx: Context,
    cancel: CancelFunc,
    work: Duration,
}

impl Request {
    /// A cancellable child of the server root, carrying the request's id.
    ///
    /// The child has its own `CancelFunc` although nothing here aborts a
    /// single request: that is where a per-request abort (client gone, a
    /// limit) would hook in, and it would never touch the root or the other
    /// requests.
    fn new(root: &Context, mix: &Mix) -> Request {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let (ctx, cancel) = root.with_cancel();
        // Pseudo-random but fixed per id: the mix is the same on every run.
        let r = splitmix64(id);
        let spread = (r >> 32) as f64 / u32::MAX as f64;
        let work = if r.is_multiple_of(mix.long_every) {
            mix.long.mul_f64(0.5 + spread)
        } else {
            mix.short.mul_f64(0.1 + 0.9 * spread)
        };
        Request {
            ctx: ctx.with_value(RequestId(id)),
            cancel,
            work,
        }
    }
}

/// What a cut-off request must see: `Canceled`, the server's `Shutdown`
/// cause (passed down from the root), and its own request id still readable.
fn check_cut_off(ctx: &Context) -> Result<(), String> {
    let id = ctx.value::<RequestId>().ok_or("RequestId value lost")?;
    if ctx.err() != Some(Error::Canceled) {
        return Err(format!("{id:?}: err() = {:?}", ctx.err()));
    }
    match ctx.cause() {
        Some(cause) if cause.downcast_ref::<Shutdown>().is_some() => Ok(()),
        other => Err(format!("{id:?}: cause() = {other:?}")),
    }
}

/// A blocking handler: works in slices, checks the context between them and
/// blocks on `done()` rather than `sleep`, so a cancellation wakes it at once
/// (Go's `select { case <-ctx.Done(): case <-time.After(slice): }`).
fn handle_blocking(req: Request) -> Outcome {
    // `defer cancel()`: releases the request's registration with the root as
    // soon as the handler returns, whatever the outcome.
    let _cancel = req.cancel.guard();
    let ctx = &req.ctx;
    let done = ctx.done(); // one handle, reused for every slice
    let finish = Instant::now() + req.work;
    loop {
        // The cheap poll a CPU-bound handler would do between chunks of work.
        if ctx.is_done() {
            return Outcome::CutOff {
                noticed: Instant::now(),
                check: check_cut_off(ctx),
            };
        }
        let left = finish.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Outcome::Finished;
        }
        // Simulated I/O: up to one slice, cut short by cancellation. The
        // poll at the top of the loop turns a `true` into `CutOff`.
        done.wait_timeout(left.min(SLICE));
    }
}

/// An async handler: the simulated work races the request's `done()`.
async fn handle_async(req: Request) -> Outcome {
    let _cancel = req.cancel.guard();
    let ctx = &req.ctx;
    tokio::select! {
        () = tokio::time::sleep(req.work) => Outcome::Finished,
        () = ctx.done() => Outcome::CutOff {
            noticed: Instant::now(),
            check: check_cut_off(ctx),
        },
    }
}

/// One server thread: serves requests back to back until shutdown.
fn serve_thread(root: Context) -> Tally {
    let mut tally = Tally::default();
    // Stop accepting once the server is shutting down. A request accepted
    // in the instant between this check and `cancel()` is still fine: its
    // context is born done (or becomes done) with the root's cause.
    while !root.is_done() {
        tally.record(handle_blocking(Request::new(&root, &THREAD_MIX)));
    }
    tally
}

/// The async acceptor: spawns a request task per arrival until shutdown,
/// then waits for the in-flight ones (which are being cut off) to return.
async fn serve_async(root: Context) -> Tally {
    let mut tally = Tally::default();
    let mut requests = JoinSet::new();
    let mut arrivals = tokio::time::interval(ASYNC_ARRIVAL);
    // One `Done` for the whole loop: `&mut shutdown` is a future that can
    // lose the race again and again without re-registering each time.
    let mut shutdown = root.done();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = arrivals.tick() => {
                requests.spawn(handle_async(Request::new(&root, &TASK_MIX)));
            }
        }
        // Reap finished requests as we go, so the set stays small.
        while let Some(outcome) = requests.try_join_next() {
            tally.record(outcome.expect("request task panicked"));
        }
    }
    while let Some(outcome) = requests.join_next().await {
        tally.record(outcome.expect("request task panicked"));
    }
    tally
}

/// The run time: first CLI argument, else `SERVER_RUN_MS`, else 1 s.
fn run_time() -> Result<Duration, String> {
    let arg = std::env::args().nth(1);
    let env = std::env::var("SERVER_RUN_MS").ok();
    match arg.or(env) {
        None => Ok(DEFAULT_RUN),
        Some(ms) => ms
            .trim()
            .parse()
            .map(Duration::from_millis)
            .map_err(|_| format!("run time must be whole milliseconds, got {ms:?}")),
    }
}

fn main() -> ExitCode {
    let run = match run_time() {
        Ok(run) => run,
        Err(msg) => {
            eprintln!("usage: server [RUN_MS]   (or SERVER_RUN_MS=RUN_MS)\n{msg}");
            return ExitCode::from(2);
        }
    };

    // The shutdown switch: everything the server does hangs below `root`.
    let (root, shutdown) = Context::background().with_cancel_cause();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");

    // Dedicated waiters first, so they are parked long before shutdown.
    let parked: Vec<_> = (0..PARKED_WAITERS)
        .map(|_| {
            let done = root.done_owned();
            thread::spawn(move || {
                done.wait();
                Instant::now()
            })
        })
        .collect();
    let pending: Vec<_> = (0..ASYNC_WAITERS)
        .map(|_| {
            let done = root.done_owned();
            rt.spawn(async move {
                done.await;
                Instant::now()
            })
        })
        .collect();

    let workers: Vec<_> = (0..WORKER_THREADS)
        .map(|_| {
            let root = root.clone();
            thread::spawn(move || serve_thread(root))
        })
        .collect();
    let acceptor = rt.spawn(serve_async(root.clone()));

    // Latencies below depend heavily on how many CPUs the threads share.
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "goctx server demo: {WORKER_THREADS} worker threads + tokio ({} workers) \
         on {cpus} CPUs, shutdown after {} ms",
        rt.metrics().num_workers(),
        run.as_millis()
    );
    // What a handler's context looks like (Go's `ctx.String()`).
    println!(
        "  request context: {}",
        root.with_cancel().0.with_value(RequestId(0))
    );

    thread::sleep(run);

    // A safety net for the demo itself: never hang, even on a lost wake-up.
    thread::spawn(|| {
        thread::sleep(WATCHDOG);
        eprintln!("shutdown did not complete within {WATCHDOG:?} (a lost wake-up?)");
        std::process::exit(1);
    });

    let before = Instant::now();
    shutdown.cancel(Shutdown);
    let cancel_took = before.elapsed();

    let mut threads = Tally::default();
    for worker in workers {
        threads.merge(worker.join().expect("worker thread panicked"));
    }
    let tasks = rt.block_on(acceptor).expect("acceptor panicked");
    let parked: Vec<Instant> = parked
        .into_iter()
        .map(|waiter| waiter.join().expect("waiter thread panicked"))
        .collect();
    let pending: Vec<Instant> = rt.block_on(async {
        let mut woke = Vec::with_capacity(pending.len());
        for waiter in pending {
            woke.push(waiter.await.expect("waiter task panicked"));
        }
        woke
    });

    println!(
        "\nshutdown: cancel(Shutdown) took {} µs \
         (it cancels the whole tree and wakes every waiter before returning)",
        cancel_took.as_micros(),
    );

    println!("\nrequests       finished  cut off  handler stopped, after cancel (median / max)");
    for (name, tally) in [("threads", &threads), ("tokio tasks", &tasks)] {
        let stop = Latency::since(before, &tally.cut_off);
        println!(
            "  {name:<12} {:>8} {:>8}  {}",
            tally.finished,
            tally.cut_off.len(),
            stop.map_or("-".into(), |l| format!("{} / {} µs", l.median, l.max)),
        );
    }
    let cut_off = threads.cut_off.len() + tasks.cut_off.len();
    let violations: Vec<_> = threads.violations.iter().chain(&tasks.violations).collect();
    if violations.is_empty() {
        println!(
            "  all {cut_off} cut-off requests saw err() = Some(Canceled), \
             cause() = Shutdown (\"{Shutdown}\") and their RequestId"
        );
    } else {
        println!(
            "  {} of {cut_off} cut-off requests saw something else:",
            violations.len()
        );
        for violation in violations.iter().take(5) {
            println!("    {violation}");
        }
    }

    println!("\ncancel -> wake latency (µs)    min   median      max");
    for (name, woke) in [
        (format!("{PARKED_WAITERS} threads in wait()"), &parked),
        (format!("{ASYNC_WAITERS} tasks in .await"), &pending),
    ] {
        let l = Latency::since(before, woke).expect("waiters exist");
        println!("  {name:<26} {:>6} {:>8} {:>8}", l.min, l.median, l.max);
    }

    if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Min / median / max of `times - start`, in microseconds.
struct Latency {
    min: u128,
    median: u128,
    max: u128,
}

impl Latency {
    fn since(start: Instant, times: &[Instant]) -> Option<Latency> {
        let mut micros: Vec<u128> = times
            .iter()
            .map(|t| t.saturating_duration_since(start).as_micros())
            .collect();
        micros.sort_unstable();
        let (&min, &max) = (micros.first()?, micros.last()?);
        Some(Latency {
            min,
            median: micros[micros.len() / 2],
            max,
        })
    }
}

/// A tiny, well-mixed hash (SplitMix64), to vary work without a `rand`
/// dependency.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
