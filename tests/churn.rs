//! API.md semantics 9 and 10 under churn: a long-lived parent whose children
//! are created and dropped a million times, from several threads, keeps
//! bounded memory — nothing stays registered, few entries stay linked, and
//! live heap bytes return to the baseline once crossbeam-epoch's deferred
//! garbage is flushed. Timed waits that give up leave nothing behind.
//!
//! The global allocator tracks live bytes for the whole process, so the
//! tests of this file run one at a time (`SERIAL`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use goctx::{Context, Error};

/// Counts live heap bytes (allocated minus freed) and their peak.
struct LiveBytes;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn grow(by: usize) {
    let now = LIVE.fetch_add(by as isize, Ordering::Relaxed) + by as isize;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

fn shrink(by: usize) {
    LIVE.fetch_sub(by as isize, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments;
// the bookkeeping is two atomics and never allocates.
unsafe impl GlobalAlloc for LiveBytes {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            shrink(layout.size());
            grow(new_size);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the caller.
        unsafe { System.dealloc(ptr, layout) };
        shrink(layout.size());
    }
}

#[global_allocator]
static GLOBAL: LiveBytes = LiveBytes;

/// Serialises the tests of this file: live bytes are process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

/// Child create/drop cycles in total (split over the churn threads).
const CYCLES: usize = if cfg!(miri) { 200 } else { 1_000_000 };
/// Timed waits in total (split over the waiting threads).
const WAITS: usize = if cfg!(miri) { 40 } else { 100_000 };
/// Live bytes allowed above the baseline after flushing (epoch bags, the
/// few entries a list keeps linked, thread bookkeeping).
const SLACK: isize = 64 * 1024;
/// "A few" flush rounds: each round pins, tries to advance the epoch and
/// frees up to 8 expired garbage bags of 64 deferred releases each. (A
/// child that leaves from the head of its parent's list while the other
/// thread's cleanup pass runs is released through the epoch: a few percent
/// of the cycles here, up to ~20 000 entries, ~350 bags.)
const FLUSH_ROUNDS: usize = 128;
/// Bounded memory under churn (API.md 10): the most live bytes above the
/// baseline at any time during the work, independent of `CYCLES`: a few
/// live children, the threads' epoch bags and queued garbage bags. Garbage
/// piles up while a pinned thread is descheduled, so this is generous (a
/// million unreclaimed children would be ~380 MB).
const PEAK_BOUND: isize = 64 * 1024 * 1024;

fn live() -> isize {
    LIVE.load(Ordering::SeqCst)
}

/// `rounds` rounds of flushing this thread's epoch bag and collecting
/// global garbage.
fn flush_epoch(rounds: usize) {
    for _ in 0..rounds {
        crossbeam_epoch::pin().flush();
    }
}

/// Flushes until live bytes are within `SLACK` of `baseline` or stop
/// falling; returns the rounds used (a diagnostic, and to drain garbage
/// before a baseline is taken).
fn drain_epoch(baseline: isize) -> usize {
    let (mut rounds, mut stable, mut last) = (0, 0, live());
    while rounds < 100_000 && stable < 100 && live() - baseline >= SLACK {
        crossbeam_epoch::pin().flush();
        rounds += 1;
        let now = live();
        stable = if now < last { 0 } else { stable + 1 };
        last = now;
    }
    rounds
}

/// Takes the baseline: drains garbage left by earlier work, then resets the
/// peak.
fn baseline() -> isize {
    flush_epoch(FLUSH_ROUNDS);
    drain_epoch(live() - SLACK);
    let baseline = live();
    PEAK.store(baseline, Ordering::SeqCst);
    baseline
}

/// Reports and checks memory after the work: bounded while it ran
/// (`PEAK_BOUND`), and back to the baseline after `FLUSH_ROUNDS` flushes.
fn check_memory(name: &str, baseline: isize, start: Instant) {
    let after_work = live() - baseline;
    let peak = PEAK.load(Ordering::SeqCst) - baseline;
    flush_epoch(FLUSH_ROUNDS);
    let after_flush = live() - baseline;
    // Diagnostic only: how many more rounds it takes to get back.
    let more = drain_epoch(baseline);
    let drained = live() - baseline;
    eprintln!(
        "{name}: {:?}; live bytes above baseline: after work {after_work:+}, peak {peak:+}, \
         after {FLUSH_ROUNDS} flush rounds {after_flush:+}, after {more} more rounds {drained:+}",
        start.elapsed()
    );
    assert!(
        peak < PEAK_BOUND && after_flush < SLACK,
        "{name}: memory not bounded: peak {peak} bytes above baseline during the work \
         (bound {PEAK_BOUND}), {after_work} after it, {after_flush} after {FLUSH_ROUNDS} epoch \
         flush rounds (slack {SLACK}); {drained} after {more} more rounds"
    );
}

/// Warms up one-time allocations of this thread and the process (the epoch
/// collector and this thread's handle, the waiter cache, `thread::current`)
/// so they are part of the baseline.
fn warm_up() {
    let _ = thread::current();
    let (ctx, cancel) = Context::background().with_cancel();
    assert!(!ctx.done().wait_timeout(Duration::from_micros(1)));
    cancel.cancel();
    ctx.done().wait();
    crossbeam_epoch::pin().flush();
    thread::spawn(|| crossbeam_epoch::pin().flush())
        .join()
        .unwrap();
}

#[derive(Debug, PartialEq)]
struct Tag(usize);

/// `cycles` create/drop cycles of children (and sometimes grandchildren and
/// value layers) under `parent`; one in five is cancelled before the drop.
fn churn(parent: &Context, cycles: usize, seed: usize) {
    for i in 0..cycles {
        let (child, cancel) = parent.with_cancel();
        match (i + seed) % 4 {
            0 => {
                let v = child.with_value(Tag(i));
                assert_eq!(v.value::<Tag>(), Some(&Tag(i)));
                drop(v);
            }
            1 => {
                let (grandchild, _g) = child.with_value(Tag(i)).with_cancel();
                assert!(!grandchild.is_done());
            }
            _ => {}
        }
        if i % 5 == 0 {
            cancel.cancel();
            assert_eq!(child.err(), Some(Error::Canceled));
        } else {
            assert!(!child.is_done());
        }
        drop(child);
        drop(cancel);
    }
}

#[test]
fn million_child_cycles_from_two_threads() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let start = Instant::now();
    warm_up();
    let (parent, cancel_parent) = Context::background().with_cancel();
    let parent = parent.with_value(Tag(0));
    let baseline = baseline();

    let go = Arc::new(Barrier::new(2));
    let workers: Vec<_> = (0..2)
        .map(|t| {
            let parent = parent.clone();
            let go = Arc::clone(&go);
            thread::spawn(move || {
                go.wait();
                churn(&parent, CYCLES / 2, t);
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }

    assert_eq!(parent.registered_children(), 0);
    let linked = parent.linked_children();
    eprintln!("million_child_cycles_from_two_threads: {linked} children still linked");
    assert!(linked < 1000, "{linked} children still linked");
    assert!(!parent.is_done());
    check_memory("million_child_cycles_from_two_threads", baseline, start);

    // The parent still works.
    let (child, _c) = parent.with_cancel();
    cancel_parent.cancel();
    assert!(child.is_done());
}

#[test]
fn churn_with_concurrent_timed_waits() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let start = Instant::now();
    warm_up();
    let (parent, cancel_parent) = Context::background().with_cancel_cause();
    let baseline = baseline();

    let stop = Arc::new(AtomicBool::new(false));
    let go = Arc::new(Barrier::new(5));

    // Two threads of timed waits on the long-lived parent: mostly zero
    // timeouts (a done check), some that register, park and give up.
    let waiters: Vec<_> = (0..2)
        .map(|t| {
            let done = parent.done_owned();
            let go = Arc::clone(&go);
            thread::spawn(move || {
                go.wait();
                let mut timed_out = 0;
                for i in 0..WAITS / 2 {
                    let timeout = match (i + t) % 16 {
                        0 => Duration::from_micros(1),
                        8 => Duration::from_micros(20),
                        _ => Duration::ZERO,
                    };
                    assert!(!done.wait_timeout(timeout));
                    timed_out += 1;
                }
                timed_out
            })
        })
        .collect();

    // An untimed waiter and an async-free deadline waiter, woken by cancel.
    let blocked: Vec<_> = (0..2)
        .map(|t| {
            let done = parent.done_owned();
            let go = Arc::clone(&go);
            thread::spawn(move || {
                go.wait();
                if t == 0 {
                    done.wait();
                } else {
                    // Woken by the cancel below, which comes only after all the
                    // waits and churn: the bound is a hang guard, far above
                    // what valgrind's serialised scheduler needs (71 s once).
                    assert!(done.wait_deadline(Instant::now() + Duration::from_secs(1800)));
                }
            })
        })
        .collect();

    // Child churn on the same parent meanwhile.
    let churner = {
        let parent = parent.clone();
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            go.wait();
            let mut cycles = 0;
            while !stop.load(Ordering::Relaxed) && cycles < CYCLES {
                churn(&parent, 1000.min(CYCLES), cycles);
                cycles += 1000.min(CYCLES);
            }
            cycles
        })
    };

    let waited: usize = waiters.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(waited, WAITS / 2 * 2);
    stop.store(true, Ordering::Relaxed);
    let cycles = churner.join().unwrap();
    assert!(!parent.is_done());
    assert_eq!(parent.registered_children(), 0);
    let linked = parent.linked_children();
    assert!(linked < 1000, "{linked} children still linked");

    // A few children left live for the cancellation to reach.
    let kids: Vec<_> = (0..8).map(|_| parent.with_cancel()).collect();
    cancel_parent.cancel(Error::DeadlineExceeded);
    assert_eq!(parent.err(), Some(Error::Canceled));
    for (kid, _) in &kids {
        assert_eq!(
            kid.cause().unwrap().downcast_ref::<Error>(),
            Some(&Error::DeadlineExceeded)
        );
    }
    for b in blocked {
        b.join().unwrap();
    }
    drop(kids);
    assert!(parent.done().wait_timeout(Duration::ZERO));

    eprintln!("churn_with_concurrent_timed_waits: {cycles} child cycles alongside {waited} waits");
    check_memory("churn_with_concurrent_timed_waits", baseline, start);
}
