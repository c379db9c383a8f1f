//! Wake-up latency of the synchronous composition pieces (issue 9):
//!
//! * `select_exit` — a worker thread blocked in `crossbeam_channel::select!`
//!   on a job channel (never sent on) and a cancellation signal; the main
//!   thread takes `Instant::now()` and calls `cancel()`, the worker records
//!   `Instant::now()` when it leaves the select. Signals compared:
//!   `receiver` (`ctx.done().receiver()`, on `on_done`), the two bridges a
//!   program had to build before it — `poll` (`recv_timeout(period)` on the
//!   job channel, then `ctx.is_done()`; periods 50 µs and 1 ms) and
//!   `after_func` (`after_func(move || drop(tx))` disconnecting a second
//!   channel) — and `wait` (`ctx.done().wait()`, no select: one thread
//!   wake-up, the floor).
//! * `on_done_start` — from the `Instant` taken before `cancel()` to the
//!   start of the callback (`f` records `Instant::now()` first): `on_done`
//!   runs `f` inside `cancel()`, `after_func` hands it to a worker thread.
//!
//! Each round uses a fresh context. The worker is one long-lived thread,
//! handed each round's body over a channel; the main thread waits until
//! the worker has started the body, then sleeps [`SETTLE`] plus a random
//! 0–[`JITTER`] (so that the cancel falls at a random phase of a polling
//! period) before the cancel. Latencies are reported as p50/p99/max over
//! the rounds.
//!
//! ```text
//! cargo run --release -p goctx-benches --bin select_exit            # 2000 rounds
//! cargo run --release -p goctx-benches --bin select_exit -- 500     # rounds
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, select, unbounded};
use goctx::{CancelFunc, Context};

/// splitmix64, shared with the tests: deterministic spread without a `rand`
/// dependency.
#[path = "../tests/support/rng.rs"]
mod rng;

use rng::Rng;

/// Rounds per row unless given as the first argument.
const DEFAULT_ROUNDS: usize = 2000;
/// How long the main thread sleeps once the worker started a round's body,
/// so that the worker is blocked when `cancel()` is called.
const SETTLE: Duration = Duration::from_micros(200);
/// Upper bound (µs) of the random extra sleep before each cancel: one
/// polling period of the slower poll, so its phase is uniform.
const JITTER: u64 = 1000;
/// A callback or worker that has not reported after this long is a failure.
const GIVE_UP: Duration = Duration::from_secs(10);

/// A round's body, run on the worker: blocks until the round's context is
/// done and returns the `Instant` it saw it.
type Body = Box<dyn FnOnce() -> Instant + Send>;

/// The long-lived worker: runs bodies, reports their `Instant`s.
struct Worker {
    bodies: mpsc::Sender<(Body, Arc<AtomicBool>)>,
    exits: mpsc::Receiver<Instant>,
}

impl Worker {
    fn spawn() -> Worker {
        let (bodies, body_rx) = mpsc::channel::<(Body, Arc<AtomicBool>)>();
        let (exit_tx, exits) = mpsc::channel();
        thread::Builder::new()
            .name("select_exit worker".into())
            .spawn(move || {
                for (body, started) in body_rx {
                    // Ordering: Release/Acquire are not needed for a
                    // timing hint; Relaxed suffices (the exit Instant
                    // travels through the channel).
                    started.store(true, Ordering::Relaxed);
                    if exit_tx.send(body()).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn the worker");
        Worker { bodies, exits }
    }

    /// One round: hands `body` over, lets it block, cancels, returns the
    /// latency from just before `cancel()` to the body's `Instant`.
    fn round(&self, body: Body, cancel: CancelFunc, rng: &mut Rng) -> Duration {
        let started = Arc::new(AtomicBool::new(false));
        self.bodies
            .send((body, started.clone()))
            .expect("worker alive");
        while !started.load(Ordering::Relaxed) {
            std::hint::spin_loop();
            thread::yield_now();
        }
        thread::sleep(SETTLE + rng.micros(JITTER));
        let t0 = Instant::now();
        cancel.cancel();
        let t1 = self.exits.recv_timeout(GIVE_UP).expect("worker exited");
        t1.saturating_duration_since(t0)
    }
}

/// A row of the table: the latencies of one signal over the rounds.
struct Row {
    bench: &'static str,
    signal: String,
    latencies: Vec<Duration>,
}

impl Row {
    fn print(&mut self) {
        self.latencies.sort_unstable();
        let n = self.latencies.len();
        let at = |q: f64| {
            let i = ((n as f64 * q).ceil() as usize).clamp(1, n) - 1;
            self.latencies[i].as_secs_f64() * 1e6
        };
        println!(
            "| `{}` | {} | {} | {:.2} | {:.2} | {:.2} |",
            self.bench,
            self.signal,
            n,
            at(0.50),
            at(0.99),
            at(1.0)
        );
    }
}

/// The select worker's body on `done`'s receiver.
fn receiver_body(ctx: &Context, jobs: &crossbeam_channel::Receiver<u32>) -> Body {
    let done = ctx.done().receiver();
    let jobs = jobs.clone();
    Box::new(move || {
        select! {
            recv(jobs) -> _ => unreachable!("no job is ever sent"),
            recv(done) -> _ => Instant::now(),
        }
    })
}

/// The polling bridge: `recv_timeout(period)`, then a check of the context.
fn poll_body(ctx: &Context, jobs: &crossbeam_channel::Receiver<u32>, period: Duration) -> Body {
    let ctx = ctx.clone();
    let jobs = jobs.clone();
    Box::new(move || {
        loop {
            match jobs.recv_timeout(period) {
                Ok(_) => unreachable!("no job is ever sent"),
                Err(RecvTimeoutError::Timeout) if !ctx.is_done() => {}
                Err(_) => return Instant::now(),
            }
        }
    })
}

/// The `after_func` bridge: the callback drops the only sender of a second
/// channel, which the select then sees disconnected.
fn after_func_body(ctx: &Context, jobs: &crossbeam_channel::Receiver<u32>) -> Body {
    let (tx, done) = crossbeam_channel::bounded::<()>(0);
    let after = ctx.after_func(move || drop(tx));
    let jobs = jobs.clone();
    Box::new(move || {
        let exit = select! {
            recv(jobs) -> _ => unreachable!("no job is ever sent"),
            recv(done) -> _ => Instant::now(),
        };
        drop(after);
        exit
    })
}

/// The floor: a thread parked in `done().wait()`, no select.
fn wait_body(ctx: &Context) -> Body {
    let done = ctx.done_owned();
    Box::new(move || {
        done.wait();
        Instant::now()
    })
}

fn select_exit(rounds: usize, worker: &Worker) -> Vec<Row> {
    let (_jobs_tx, jobs) = unbounded::<u32>();
    let mut rng = Rng::from_clock();
    type Make<'a> = Box<dyn Fn(&Context) -> Body + 'a>;
    let signals: Vec<(String, Make)> = vec![
        (
            "`ctx.done().receiver()`".into(),
            Box::new(|ctx| receiver_body(ctx, &jobs)),
        ),
        (
            "poll: `recv_timeout(50 µs)` + `is_done()`".into(),
            Box::new(|ctx| poll_body(ctx, &jobs, Duration::from_micros(50))),
        ),
        (
            "poll: `recv_timeout(1 ms)` + `is_done()`".into(),
            Box::new(|ctx| poll_body(ctx, &jobs, Duration::from_millis(1))),
        ),
        (
            "bridge: `after_func(move || drop(tx))`".into(),
            Box::new(|ctx| after_func_body(ctx, &jobs)),
        ),
        (
            "floor: `ctx.done().wait()` (no select)".into(),
            Box::new(wait_body),
        ),
    ];
    signals
        .into_iter()
        .map(|(signal, make)| {
            let latencies = (0..rounds)
                .map(|_| {
                    let (ctx, cancel) = Context::background().with_cancel();
                    let body = make(&ctx);
                    worker.round(body, cancel, &mut rng)
                })
                .collect();
            Row {
                bench: "select_exit",
                signal,
                latencies,
            }
        })
        .collect()
}

/// Waits for a callback's `Instant` (set on another thread for
/// `after_func`).
fn started_at(slot: &OnceLock<Instant>) -> Instant {
    let give_up = Instant::now() + GIVE_UP;
    loop {
        if let Some(at) = slot.get() {
            return *at;
        }
        assert!(Instant::now() < give_up, "the callback never ran");
        std::hint::spin_loop();
        thread::yield_now();
    }
}

fn on_done_start(rounds: usize) -> Vec<Row> {
    let mut on_done = Vec::with_capacity(rounds);
    let mut after_func = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let (ctx, cancel) = Context::background().with_cancel();
        let slot = Arc::new(OnceLock::new());
        let f_slot = slot.clone();
        let _on_done = ctx.on_done(move || {
            let _ = f_slot.set(Instant::now());
        });
        let t0 = Instant::now();
        cancel.cancel();
        on_done.push(started_at(&slot).saturating_duration_since(t0));

        let (ctx, cancel) = Context::background().with_cancel();
        let slot = Arc::new(OnceLock::new());
        let f_slot = slot.clone();
        let _after = ctx.after_func(move || {
            let _ = f_slot.set(Instant::now());
        });
        let t0 = Instant::now();
        cancel.cancel();
        after_func.push(started_at(&slot).saturating_duration_since(t0));
    }
    vec![
        Row {
            bench: "on_done_start",
            signal: "`on_done(f)` (inside `cancel()`)".into(),
            latencies: on_done,
        },
        Row {
            bench: "on_done_start",
            signal: "`after_func(f)` (on an after-func worker)".into(),
            latencies: after_func,
        },
    ]
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    let rounds = match std::env::args().nth(1) {
        Some(arg) => arg.parse().expect("rounds: a positive integer"),
        None => DEFAULT_ROUNDS,
    };
    assert!(rounds > 0, "rounds: a positive integer");
    let command: Vec<String> = std::env::args().collect();
    println!("command: {}", command.join(" "));
    println!(
        "cpu: {} ({} threads available)",
        cpu_model(),
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "rounds: {rounds}, settle before cancel: {SETTLE:?} + U(0, {JITTER} µs); latencies in µs\n"
    );
    println!("| bench | signal | rounds | p50 µs | p99 µs | max µs |");
    println!("|---|---|---:|---:|---:|---:|");
    let begin = Instant::now();
    let worker = Worker::spawn();
    for mut row in select_exit(rounds, &worker) {
        row.print();
    }
    for mut row in on_done_start(rounds) {
        row.print();
    }
    println!("\nwhole run: {:.1} s", begin.elapsed().as_secs_f64());
}
