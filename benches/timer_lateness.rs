//! Deadline expiry lateness: how long after its deadline `Instant` a deadline
//! context is *observed* done, on an idle process and under load.
//!
//! Every scenario derives `live` contexts with `with_timeout(U(from, to))`
//! (the deadline is read back with `ctx.deadline()`) and watches them expire
//! through up to four observers, each on its own row so that the cost of
//! observing is visible:
//!
//! * `spin`   — one thread spinning on `is_done()` over a small set (256
//!   contexts, in deadline order: each due one is re-checked until it reads
//!   true, then `Instant::now()` is recorded). No wake-up involved: the
//!   closest view of when the timer thread cancelled the context.
//! * `wait`   — a few dedicated threads, each parked in `done().wait()` on a
//!   context of its own, record `Instant::now()` when they return (timer
//!   thread → unpark → scheduler).
//! * `await`  — tasks on a one-worker tokio runtime awaiting `ctx.done()`
//!   (timer thread → waker → tokio worker).
//! * `after`  — an `after_func` on *every* context records `Instant::now()`
//!   when it runs (the expiry queues the job back to the timer thread, which
//!   hands it to a worker thread: a thread hop, reported separately).
//!
//! `X-spin` rows are per-context differences `X − spin` (the same context
//! seen by both observers): the cost of the wake-up path alone. Negative
//! values mean the spinner itself was descheduled.
//!
//! Scenarios (each in a fresh process, since the timer thread is global):
//! `a` idle, 1000 deadlines over 0.05–1.05 s; `b0` 100k deadlines over
//! 0.2–2 s without churn (control); `b` the same plus two threads deriving
//! and cancelling `with_timeout(30 s)` contexts in a tight loop for the whole
//! run; `b1` with one churn thread; `b-noaf` without the after_funcs.
//! Only when named: `b0-noaf` (b0 without the after_funcs) and `b-nospin`
//! (b without the spinner).
//!
//! ```text
//! cargo run --release -p goctx-benches --bin timer_lateness             # the default scenarios
//! cargo run --release -p goctx-benches --bin timer_lateness -- a b      # some of them
//! ```
//!
//! Exits 1 only on a correctness failure (a context done before its
//! deadline, or with an error other than `DeadlineExceeded`); lateness,
//! however large, is reported (`LATE:` when contexts had still not expired
//! one second after the last deadline) but is not a failure.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use goctx::{AfterFunc, CancelFunc, Context, Error};

/// splitmix64, shared with the tests: deterministic spread without a `rand`
/// dependency.
#[path = "../tests/support/rng.rs"]
mod rng;

use rng::Rng;

/// Observers give up this long after the last deadline (a missed expiry).
const GRACE: Duration = Duration::from_secs(1);
/// The churn threads' contexts: never expire during a run.
const CHURN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    what: &'static str,
    live: usize,
    from: Duration,
    to: Duration,
    churn: usize,
    after_funcs: bool,
    /// Run by default (others only when named).
    default: bool,
    /// Contexts the spinning observer watches (0: no spinner).
    spins: usize,
    waiters: usize,
    tasks: usize,
}

const SCENARIOS: [Scenario; 7] = [
    Scenario {
        name: "a",
        default: true,
        what: "idle: 1000 deadlines over 0.05-1.05 s",
        live: 1_000,
        from: Duration::from_millis(50),
        to: Duration::from_millis(1_050),
        churn: 0,
        after_funcs: true,
        spins: 256,
        waiters: 8,
        tasks: 64,
    },
    Scenario {
        name: "b0",
        default: true,
        what: "control: 100k deadlines over 0.2-2 s, no churn",
        live: 100_000,
        from: Duration::from_millis(200),
        to: Duration::from_millis(2_000),
        churn: 0,
        after_funcs: true,
        spins: 256,
        waiters: 8,
        tasks: 64,
    },
    Scenario {
        name: "b0-noaf",
        default: false,
        what: "control: as b0, without the 100k after_funcs",
        live: 100_000,
        from: Duration::from_millis(200),
        to: Duration::from_millis(2_000),
        churn: 0,
        after_funcs: false,
        spins: 256,
        waiters: 8,
        tasks: 64,
    },
    Scenario {
        name: "b",
        default: true,
        what: "load: 100k deadlines over 0.2-2 s + 2 churn threads",
        live: 100_000,
        from: Duration::from_millis(200),
        to: Duration::from_millis(2_000),
        churn: 2,
        after_funcs: true,
        spins: 256,
        waiters: 8,
        tasks: 64,
    },
    Scenario {
        name: "b1",
        default: true,
        what: "as b, with 1 churn thread instead of 2",
        live: 100_000,
        from: Duration::from_millis(200),
        to: Duration::from_millis(2_000),
        churn: 1,
        after_funcs: true,
        spins: 256,
        waiters: 8,
        tasks: 64,
    },
    Scenario {
        name: "b-noaf",
        default: true,
        what: "as b, without the 100k after_funcs",
        live: 100_000,
        from: Duration::from_millis(200),
        to: Duration::from_millis(2_000),
        churn: 2,
        after_funcs: false,
        spins: 256,
        waiters: 8,
        tasks: 64,
    },
    Scenario {
        name: "b-nospin",
        default: false,
        what: "as b, without the spinning observer (one less busy thread)",
        live: 100_000,
        from: Duration::from_millis(200),
        to: Duration::from_millis(2_000),
        churn: 2,
        after_funcs: true,
        spins: 0,
        waiters: 8,
        tasks: 64,
    },
];

/// All times are nanoseconds since this instant (0 means "not observed").
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn ns(at: Instant) -> u64 {
    (at.saturating_duration_since(base()).as_nanos() as u64).max(1)
}

fn now_ns() -> u64 {
    ns(Instant::now())
}

fn proc_status(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// `/proc` clock ticks per second (`USER_HZ`, 100 on Linux).
const TICKS: f64 = 100.0;

/// (busy, total) clock ticks of the whole machine, from `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    // idle + iowait are not busy.
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// utime + stime of a `/proc/.../stat` file.
fn stat_ticks(path: &str) -> u64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after_comm` starts at field 3.
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(14) + field(15)
}

/// CPU ticks used so far by this process's thread named `name`.
fn thread_ticks(name: &str) -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            return Some(stat_ticks(&path.join("stat").to_string_lossy()));
        }
    }
    None
}

/// CPU accounting over a scenario: the timer thread, this process, and
/// everything else running on the machine meanwhile.
struct Cpu {
    at: Instant,
    machine_busy: u64,
    own: u64,
    timer: u64,
}

impl Cpu {
    fn now() -> Cpu {
        Cpu {
            at: Instant::now(),
            machine_busy: machine_ticks().0,
            own: stat_ticks("/proc/self/stat"),
            timer: thread_ticks("goctx-timer").unwrap_or(0),
        }
    }

    /// (timer thread, this process, other processes) in CPUs.
    fn since(&self, start: &Cpu) -> (f64, f64, f64) {
        let ticks = self.at.duration_since(start.at).as_secs_f64() * TICKS;
        let own = (self.own - start.own) as f64 / ticks;
        let busy = (self.machine_busy - start.machine_busy) as f64 / ticks;
        (
            (self.timer - start.timer) as f64 / ticks,
            own,
            (busy - own).max(0.0),
        )
    }
}

/// One observer's lateness samples (ns; negative = observed before the
/// deadline) and how many contexts it never saw expire.
struct Row {
    observer: String,
    samples: Vec<i64>,
    missed: usize,
}

impl Row {
    fn new(observer: impl Into<String>) -> Row {
        Row {
            observer: observer.into(),
            samples: Vec::new(),
            missed: 0,
        }
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.saturating_sub(1).min(sorted.len() - 1)]
}

fn us(ns: i64) -> String {
    format!("{:.1}", ns as f64 / 1_000.0)
}

fn print_header() {
    println!(
        "{:<9} {:<12} {:>7} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "scenario", "observer", "n", "miss", "min", "p50", "p90", "p99", "p99.9", "max"
    );
}

fn print_row(scenario: &str, row: &mut Row) {
    row.samples.sort_unstable();
    let s = &row.samples;
    if s.is_empty() {
        println!(
            "{:<9} {:<12} {:>7} {:>5}   (no samples)",
            scenario, row.observer, 0, row.missed
        );
        return;
    }
    println!(
        "{:<9} {:<12} {:>7} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        scenario,
        row.observer,
        s.len(),
        row.missed,
        us(s[0]),
        us(percentile(s, 0.50)),
        us(percentile(s, 0.90)),
        us(percentile(s, 0.99)),
        us(percentile(s, 0.999)),
        us(s[s.len() - 1]),
    );
}

/// The churn load: derive and cancel long timeouts as fast as possible.
fn churn(stop: &AtomicBool, cycles: &AtomicU64) {
    let root = Context::background();
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..256 {
            let (ctx, cancel) = root.with_timeout(CHURN_TIMEOUT);
            cancel.cancel();
            drop(ctx);
        }
        cycles.fetch_add(256, Ordering::Relaxed);
    }
}

/// What the spinning observer saw.
struct Spin {
    /// Observation time per context index (0: never seen done).
    seen: Vec<u64>,
    /// Longest time between two consecutive passes (descheduled?).
    max_gap: u64,
    /// Passes that took more than 1 ms from the previous one.
    gaps_over_1ms: u64,
    passes: u64,
}

/// Spins on `is_done()` over `set` (index, deadline, context), in deadline
/// order: every due, not yet seen context is re-checked on every pass.
fn spin(mut set: Vec<(usize, u64, Context)>, total: usize, give_up: u64) -> Spin {
    set.sort_by_key(|&(_, deadline, _)| deadline);
    let mut out = Spin {
        seen: vec![0; total],
        max_gap: 0,
        gaps_over_1ms: 0,
        passes: 0,
    };
    let mut due: Vec<usize> = Vec::new();
    let mut next = 0;
    let mut last = now_ns();
    loop {
        let now = now_ns();
        let gap = now - last;
        out.max_gap = out.max_gap.max(gap);
        if gap > 1_000_000 {
            out.gaps_over_1ms += 1;
        }
        last = now;
        out.passes += 1;
        while next < set.len() && set[next].1 <= now {
            due.push(next);
            next += 1;
        }
        due.retain(|&k| {
            if set[k].2.is_done() {
                out.seen[set[k].0] = now_ns();
                false
            } else {
                true
            }
        });
        if (next == set.len() && due.is_empty()) || now > give_up {
            return out;
        }
    }
}

/// Result of one scenario: whether it met the correctness checks.
fn run(sc: &Scenario) -> bool {
    println!();
    println!("== {} — {}", sc.name, sc.what);
    let threads_before = proc_status("Threads:").unwrap_or(0);

    // Load first, so the deadlines are armed into a busy timer.
    let stop = Arc::new(AtomicBool::new(false));
    let cycles = Arc::new(AtomicU64::new(0));
    let churners: Vec<_> = (0..sc.churn)
        .map(|_| {
            let (stop, cycles) = (stop.clone(), cycles.clone());
            thread::spawn(move || churn(&stop, &cycles))
        })
        .collect();
    if sc.churn > 0 {
        thread::sleep(Duration::from_millis(100));
    }
    let churn_start = (Instant::now(), cycles.load(Ordering::Relaxed));
    let cpu_start = Cpu::now();

    // The live deadline contexts.
    let t0 = Instant::now();
    let mut rng = Rng(0x5EED ^ sc.live as u64);
    let span = (sc.to - sc.from).as_nanos() as u64;
    let root = Context::background();
    let after_seen: Arc<Vec<AtomicU64>> =
        Arc::new((0..sc.live).map(|_| AtomicU64::new(0)).collect());
    let mut deadlines = Vec::with_capacity(sc.live);
    let mut contexts: Vec<(Context, CancelFunc)> = Vec::with_capacity(sc.live);
    let mut afters: Vec<AfterFunc> = Vec::with_capacity(if sc.after_funcs { sc.live } else { 0 });
    let mut born_done = 0;
    for i in 0..sc.live {
        let timeout = sc.from + Duration::from_nanos(rng.next_u64() % span);
        let (ctx, cancel) = root.with_timeout(timeout);
        if ctx.is_done() {
            born_done += 1;
        }
        let at = ctx.deadline().expect("a deadline context");
        if sc.after_funcs {
            let seen = after_seen.clone();
            afters.push(ctx.after_func(move || seen[i].store(now_ns(), Ordering::Relaxed)));
        }
        deadlines.push(ns(at));
        contexts.push((ctx, cancel));
    }
    let setup = t0.elapsed();
    let last_deadline = *deadlines.iter().max().expect("live > 0");
    let give_up = last_deadline + GRACE.as_nanos() as u64;

    // Observer subsets: evenly spaced in deadline order, skipping anything
    // due within 50 ms of now (the observers must be in place first).
    let mut by_deadline: Vec<usize> = (0..sc.live).collect();
    by_deadline.sort_by_key(|&i| deadlines[i]);
    let ready = now_ns() + 50_000_000;
    let eligible: Vec<usize> = by_deadline
        .iter()
        .copied()
        .filter(|&i| deadlines[i] > ready)
        .collect();
    let pick = |count: usize, phase: usize| -> Vec<usize> {
        (0..count)
            .map(|k| eligible[(k * eligible.len() + phase) / count.max(1) % eligible.len()])
            .collect()
    };
    let wait_set = pick(sc.waiters, 0);
    let task_set = pick(sc.tasks, eligible.len() / (2 * sc.tasks.max(1)));
    // The spinner watches the waiters' and tasks' contexts too (for the
    // per-context hop rows), topped up to `spins` evenly spaced ones.
    let mut spin_set: Vec<usize> = Vec::new();
    if sc.spins > 0 {
        spin_set.extend(&wait_set);
        spin_set.extend(&task_set);
        let extra = sc.spins.saturating_sub(spin_set.len());
        spin_set.extend(pick(extra, eligible.len() / (3 * extra.max(1))));
        spin_set.sort_unstable();
        spin_set.dedup();
    }

    let waiters: Vec<_> = wait_set
        .iter()
        .map(|&i| {
            let done = contexts[i].0.done_owned();
            thread::spawn(move || {
                done.wait();
                (i, now_ns())
            })
        })
        .collect();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let tasks: Vec<_> = task_set
        .iter()
        .map(|&i| {
            let done = contexts[i].0.done_owned();
            runtime.spawn(async move {
                done.await;
                (i, now_ns())
            })
        })
        .collect();

    let spinner = (sc.spins > 0).then(|| {
        let set: Vec<_> = spin_set
            .iter()
            .map(|&i| (i, deadlines[i], contexts[i].0.clone()))
            .collect();
        let total = sc.live;
        thread::spawn(move || spin(set, total, give_up))
    });

    // Wait for the run, sampling the thread count (after_func workers).
    let mut peak_threads = 0;
    loop {
        peak_threads = peak_threads.max(proc_status("Threads:").unwrap_or(0));
        let now = now_ns();
        if now > give_up {
            break;
        }
        if now > last_deadline {
            let afters_done = !sc.after_funcs
                || after_seen
                    .iter()
                    .all(|seen| seen.load(Ordering::Relaxed) != 0);
            if afters_done && contexts.iter().all(|(ctx, _)| ctx.is_done()) {
                break;
            }
        }
        let pause = if now > last_deadline { 1 } else { 20 };
        thread::sleep(Duration::from_millis(pause));
    }
    let churn_end = (Instant::now(), cycles.load(Ordering::Relaxed));
    let cpu = Cpu::now().since(&cpu_start);
    stop.store(true, Ordering::Relaxed);
    for churner in churners {
        churner.join().expect("churn thread");
    }

    // Correctness: every context expired, with DeadlineExceeded. Whatever is
    // still running is cancelled so that blocked observers return.
    let mut not_expired = 0;
    let mut wrong_err = 0;
    for (ctx, cancel) in &contexts {
        match ctx.err() {
            None => {
                not_expired += 1;
                cancel.cancel();
            }
            Some(Error::DeadlineExceeded) => {}
            Some(_) => wrong_err += 1,
        }
    }

    let mut rows = Vec::new();
    let spin_seen = spinner.map(|handle| {
        let spin = handle.join().expect("spinner");
        let mut row = Row::new("spin");
        for &i in &spin_set {
            let seen = spin.seen[i];
            if seen == 0 {
                row.missed += 1;
            } else {
                row.samples.push(seen as i64 - deadlines[i] as i64);
            }
        }
        rows.push(row);
        (spin.seen, spin.max_gap, spin.gaps_over_1ms, spin.passes)
    });
    let observed = |row: &mut Row, hop: &mut Row, i: usize, at: u64| {
        if at == 0 || at > give_up {
            row.missed += 1;
            return;
        }
        row.samples.push(at as i64 - deadlines[i] as i64);
        if let Some((seen, ..)) = &spin_seen
            && seen[i] != 0
        {
            hop.samples.push(at as i64 - seen[i] as i64);
        }
    };

    let (mut wait_row, mut wait_hop) = (Row::new("wait"), Row::new("wait-spin"));
    for waiter in waiters {
        let (i, at) = waiter.join().expect("waiter");
        observed(&mut wait_row, &mut wait_hop, i, at);
    }
    let (mut task_row, mut task_hop) = (Row::new("await"), Row::new("await-spin"));
    let results = runtime.block_on(async {
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.expect("task"));
        }
        out
    });
    for (i, at) in results {
        observed(&mut task_row, &mut task_hop, i, at);
    }
    runtime.shutdown_background();
    let (mut after_row, mut after_hop) = (Row::new("after"), Row::new("after-spin"));
    if sc.after_funcs {
        for (i, seen) in after_seen.iter().enumerate() {
            observed(
                &mut after_row,
                &mut after_hop,
                i,
                seen.load(Ordering::Relaxed),
            );
        }
    }
    rows.push(wait_row);
    rows.push(task_row);
    if sc.after_funcs {
        rows.push(after_row);
    }
    if spin_seen.is_some() {
        rows.push(wait_hop);
        rows.push(task_hop);
        if sc.after_funcs {
            rows.push(after_hop);
        }
    }

    let early: usize = rows
        .iter()
        .filter(|row| !row.observer.ends_with("-spin"))
        .map(|row| row.samples.iter().filter(|&&late| late < 0).count())
        .sum();

    print_header();
    for row in &mut rows {
        print_row(sc.name, row);
    }
    let churn_rate = (churn_end.1 - churn_start.1) as f64
        / churn_end.0.duration_since(churn_start.0).as_secs_f64();
    println!(
        "setup {:.1} ms for {} contexts ({} done at birth); churn {:.2} M cycles/s; threads {} -> peak {}; RSS {} MiB",
        setup.as_secs_f64() * 1e3,
        sc.live,
        born_done,
        churn_rate / 1e6,
        threads_before,
        peak_threads,
        proc_status("VmRSS:").unwrap_or(0) / 1024,
    );
    println!(
        "CPU over the run: timer thread {:.2}, this process {:.2}, other processes {:.2} (of {} CPUs); load average {}",
        cpu.0,
        cpu.1,
        cpu.2,
        thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    if let Some((_, max_gap, gaps, passes)) = spin_seen {
        println!(
            "spinner: {passes} passes, longest gap between passes {} us, {gaps} gaps > 1 ms",
            us(max_gap as i64)
        );
    }
    if not_expired > 0 {
        println!(
            "LATE: {not_expired} of {} contexts had not expired {} s after the last deadline",
            sc.live,
            GRACE.as_secs()
        );
    }
    let ok = wrong_err == 0 && early == 0 && born_done == 0;
    if !ok {
        println!(
            "FAILED: {wrong_err} expired with the wrong error, {early} observed done before their deadline, {born_done} done at birth"
        );
    }
    drop(afters);
    ok
}

fn main() -> ExitCode {
    base();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `--one NAME`: run one scenario in this process (the parent's child).
    if args.first().is_some_and(|a| a == "--one") {
        let name = args.get(1).cloned().unwrap_or_default();
        let Some(sc) = SCENARIOS.iter().find(|sc| sc.name == name) else {
            eprintln!("unknown scenario {name}");
            return ExitCode::FAILURE;
        };
        return if run(sc) {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if args.is_empty() {
        args = SCENARIOS
            .iter()
            .filter(|sc| sc.default)
            .map(|sc| sc.name.to_string())
            .collect();
    }
    let started = Instant::now();
    println!(
        "timer lateness (deadline Instant -> observed done), in microseconds; {} CPUs",
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("each scenario runs in a fresh process (the timer thread is per process)");
    let exe = std::env::current_exe().expect("current exe");
    let mut ok = true;
    for name in &args {
        if !SCENARIOS.iter().any(|sc| sc.name == name) {
            eprintln!("unknown scenario {name}");
            ok = false;
            continue;
        }
        let status = std::process::Command::new(&exe)
            .args(["--one", name])
            .status()
            .expect("spawn scenario");
        ok &= status.success();
    }
    println!();
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
