//! Memory under timeout churn: millions of `with_timeout(60 s)` contexts
//! that are cancelled (or just dropped) right away, the pattern of a server
//! giving every request a generous timeout. None of these timers ever
//! fires, so every one of them is garbage for the timer thread to drop; the
//! claim under test is that resident memory stays flat (bounded by a
//! constant factor of the *live* deadline contexts), not linear in the
//! number of cycles.
//!
//! Prints the resident set (`/proc/self/statm`: resident pages × page size)
//! at the start, every million cycles and at the end, with the live heap
//! bytes (a counting global allocator: allocated minus freed, all threads),
//! the CPU time of the `goctx-timer` thread, and cycles per second. After the
//! churn stops it keeps sampling for a moment to show whether the timer
//! thread catches up with what it was handed.
//!
//! ```text
//! cargo run --release -p goctx-benches --bin timeout_churn                  # cancel, then drop: 10M cycles each
//! cargo run --release -p goctx-benches --bin timeout_churn -- cancel        # only with_timeout + cancel()
//! cargo run --release -p goctx-benches --bin timeout_churn -- drop          # only with_timeout + drop (no cancel)
//! cargo run --release -p goctx-benches --bin timeout_churn -- parent        # cancel, under a long-lived with_cancel parent
//! cargo run --release -p goctx-benches --bin timeout_churn -- --cycles 2000000 --threads 1 cancel
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use goctx::Context;

const TIMEOUT: Duration = Duration::from_secs(60);
const REPORT_EVERY: u64 = 1_000_000;
const BATCH: u64 = 1_000;
/// How long to keep sampling after the churn, waiting for the heap to come
/// back to where it started.
const SETTLE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Live heap bytes, sharded per thread so counting does not serialise the
// churn threads on one cache line.

#[repr(align(128))]
struct Shard(AtomicIsize);

const SHARDS: usize = 32;
static LIVE: [Shard; SHARDS] = [const { Shard(AtomicIsize::new(0)) }; SHARDS];
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static MY_SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn shard() -> &'static AtomicIsize {
    let index = MY_SHARD
        .try_with(|cell| {
            if cell.get() == usize::MAX {
                cell.set(NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS);
            }
            cell.get()
        })
        .unwrap_or(0);
    &LIVE[index].0
}

fn live_heap() -> isize {
    LIVE.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
}

struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments; the
// bookkeeping is one relaxed atomic and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            shard().fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            shard().fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            shard().fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the caller.
        unsafe { System.dealloc(ptr, layout) };
        shard().fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

// ---------------------------------------------------------------------------
// /proc readings.

/// Resident set in bytes: `/proc/self/statm` field 2 (pages) × page size.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    pages * page_size()
}

/// The page size, from the kernel page size line of `/proc/self/smaps`
/// (4096 when it cannot be read).
fn page_size() -> u64 {
    static PAGE: AtomicU64 = AtomicU64::new(0);
    let cached = PAGE.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let kib: u64 = smaps
        .lines()
        .find_map(|line| line.strip_prefix("KernelPageSize:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(4);
    PAGE.store(kib * 1024, Ordering::Relaxed);
    kib * 1024
}

/// CPU seconds used so far by this process's `goctx-timer` thread
/// (utime + stime, at `USER_HZ` = 100).
fn timer_cpu() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == "goctx-timer" {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // stat(5) fields 14 and 15; `rest` starts at field 3.
            let ticks: u64 = [14, 15]
                .iter()
                .filter_map(|&n| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok()))
                .sum();
            return ticks as f64 / 100.0;
        }
    }
    0.0
}

fn mib(bytes: impl Into<f64>) -> f64 {
    bytes.into() / (1024.0 * 1024.0)
}

// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `with_timeout(60 s)` then `cancel()`.
    Cancel,
    /// `with_timeout(60 s)` then drop both handles, no `cancel()`.
    Drop,
    /// As `Cancel`, under one long-lived `with_cancel` parent.
    Parent,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Cancel => "cancel",
            Mode::Drop => "drop",
            Mode::Parent => "parent",
        }
    }
}

/// One report line's bookkeeping, shared by the churn threads.
struct Progress {
    start: Instant,
    done: AtomicU64,
    next_report: AtomicU64,
    /// (time, cycles) of the previous report, for the interval rate.
    last: std::sync::Mutex<(Instant, u64)>,
    timer_cpu_start: f64,
}

impl Progress {
    fn report(&self, cycles: u64) {
        let now = Instant::now();
        let mut last = self.last.lock().expect("report lock");
        let rate = (cycles - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        *last = (now, cycles);
        let elapsed = now.duration_since(self.start).as_secs_f64();
        println!(
            "{:>11} {:>8.2} {:>10.2} {:>10.1} {:>10.1} {:>9.2}",
            cycles,
            elapsed,
            rate / 1e6,
            mib(rss() as f64),
            mib(live_heap() as f64),
            (timer_cpu() - self.timer_cpu_start) / elapsed,
        );
    }
}

fn header() {
    println!(
        "{:>11} {:>8} {:>10} {:>10} {:>10} {:>9}",
        "cycles", "time s", "M cyc/s", "RSS MiB", "heap MiB", "timer CPU"
    );
}

fn run(mode: Mode, total: u64, threads: u64) {
    println!();
    println!(
        "== {}: {} x with_timeout(60 s) + {} from {} threads",
        mode.name(),
        total,
        match mode {
            Mode::Drop => "drop (no cancel)",
            Mode::Cancel => "cancel()",
            Mode::Parent => "cancel() under one long-lived with_cancel parent",
        },
        threads
    );
    // Start the timer thread (and let the allocator settle) before the
    // baseline reading.
    let (warm, cancel) = Context::background().with_timeout(TIMEOUT);
    cancel.cancel();
    drop(warm);
    thread::sleep(Duration::from_millis(20));

    let (parent, parent_cancel) = Context::background().with_cancel();
    let root = if mode == Mode::Parent {
        parent.clone()
    } else {
        Context::background()
    };
    let rss_start = rss();
    let heap_start = live_heap();
    let progress = Arc::new(Progress {
        start: Instant::now(),
        done: AtomicU64::new(0),
        next_report: AtomicU64::new(REPORT_EVERY),
        last: std::sync::Mutex::new((Instant::now(), 0)),
        timer_cpu_start: timer_cpu(),
    });
    header();
    println!(
        "{:>11} {:>8.2} {:>10} {:>10.1} {:>10.1} {:>9}",
        0,
        0.0,
        "-",
        mib(rss_start as f64),
        mib(heap_start as f64),
        "-"
    );
    let barrier = Arc::new(Barrier::new(threads as usize));
    let per_thread = total / threads;
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (progress, barrier, root) = (progress.clone(), barrier.clone(), root.clone());
            thread::spawn(move || {
                barrier.wait();
                let mut left = per_thread;
                while left > 0 {
                    let batch = left.min(BATCH);
                    for _ in 0..batch {
                        let (ctx, cancel) = root.with_timeout(TIMEOUT);
                        if mode != Mode::Drop {
                            cancel.cancel();
                        }
                        drop(ctx);
                        drop(cancel);
                    }
                    left -= batch;
                    let done = progress.done.fetch_add(batch, Ordering::Relaxed) + batch;
                    let due = progress.next_report.load(Ordering::Relaxed);
                    if done >= due
                        && progress
                            .next_report
                            .compare_exchange(
                                due,
                                due + REPORT_EVERY,
                                Ordering::Relaxed,
                                Ordering::Relaxed,
                            )
                            .is_ok()
                    {
                        progress.report(due);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("churn thread");
    }
    let elapsed = progress.start.elapsed();
    let cycles = progress.done.load(Ordering::Relaxed);
    let timer = (timer_cpu() - progress.timer_cpu_start) / elapsed.as_secs_f64();
    let (rss_end, heap_end) = (rss(), live_heap());
    println!(
        "end: {} cycles in {:.2} s = {:.2} M cycles/s; RSS {:.1} -> {:.1} MiB ({:+.1}); heap {:.1} -> {:.1} MiB ({:+.1}); timer thread {:.2} CPU",
        cycles,
        elapsed.as_secs_f64(),
        cycles as f64 / elapsed.as_secs_f64() / 1e6,
        mib(rss_start as f64),
        mib(rss_end as f64),
        mib(rss_end as f64 - rss_start as f64),
        mib(heap_start as f64),
        mib(heap_end as f64),
        mib(heap_end as f64 - heap_start as f64),
        timer,
    );

    // Does the timer thread get rid of what it was handed once the churn
    // stops? Sample until the heap is back at its baseline (or `SETTLE`
    // passes); if it stays up, derive and cancel one more timeout (a
    // "nudge": one more disarmed entry re-evaluates the compaction trigger)
    // and sample again.
    let settle = |label: &str, limit: Duration| {
        let since = Instant::now();
        let mut printed: isize = -(1 << 40);
        loop {
            let heap = live_heap();
            let back = heap - heap_start < 1 << 20;
            let last = back || since.elapsed() >= limit;
            // Print changes (and the last sample) only.
            if last || (heap - printed).abs() >= 1 << 20 {
                println!(
                    "{label} {:>6.0} ms  heap {:>7.1} MiB  RSS {:>7.1} MiB  timer CPU {:.2} s",
                    since.elapsed().as_secs_f64() * 1e3,
                    mib(heap as f64),
                    mib(rss() as f64),
                    timer_cpu(),
                );
                printed = heap;
            }
            if last {
                return back;
            }
            thread::sleep(Duration::from_millis(250));
        }
    };
    if !settle("after churn:", SETTLE) {
        let (ctx, cancel) = root.with_timeout(TIMEOUT);
        cancel.cancel();
        drop(ctx);
        settle("after nudge:", Duration::from_secs(2));
        // Garbage deferred through crossbeam-epoch is freed by later pins;
        // an idle process makes none, so flush a few rounds by hand.
        for _ in 0..64 {
            crossbeam_epoch::pin().flush();
        }
        settle("after epoch flushes:", Duration::from_secs(1));
        println!(
            "root: {} registered children, {} still linked",
            root.registered_children(),
            root.linked_children()
        );
    }
    parent_cancel.cancel();
}

fn main() {
    let mut modes = Vec::new();
    let mut total: u64 = 10_000_000;
    let mut threads: u64 = 2;
    let mut child = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--child" => child = true,
            "cancel" => modes.push(Mode::Cancel),
            "drop" => modes.push(Mode::Drop),
            "parent" => modes.push(Mode::Parent),
            "both" => modes.extend([Mode::Cancel, Mode::Drop]),
            "--cycles" => {
                total = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--cycles N")
            }
            "--threads" => {
                threads = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--threads N")
            }
            other => {
                eprintln!(
                    "usage: timeout_churn [cancel|drop|both|parent]... [--cycles N] [--threads T] (unknown: {other})"
                );
                std::process::exit(2);
            }
        }
    }
    if modes.is_empty() {
        modes = vec![Mode::Cancel, Mode::Drop];
    }
    if child {
        for mode in modes {
            run(mode, total, threads);
        }
        return;
    }
    println!(
        "timeout churn: {} CPUs, page size {} bytes",
        thread::available_parallelism().map_or(0, |n| n.get()),
        page_size()
    );
    println!("each variant runs in a fresh process (the timer thread is per process)");
    let started = Instant::now();
    let exe = std::env::current_exe().expect("current exe");
    for mode in modes {
        let status = std::process::Command::new(&exe)
            .args([
                "--child",
                mode.name(),
                "--cycles",
                &total.to_string(),
                "--threads",
                &threads.to_string(),
            ])
            .status()
            .expect("spawn variant");
        if !status.success() {
            eprintln!("variant {} failed: {status}", mode.name());
            std::process::exit(1);
        }
    }
    println!();
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}
