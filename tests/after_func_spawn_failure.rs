//! Issue 8, failure 2 (API.md rule 19): when no thread can be started, a
//! dispatched callback waits in the queue; it never runs on the timer
//! thread or the cancelling thread, and deadlines keep expiring on time.
//! At bdad359 the timer thread ran such a callback itself.
//!
//! Thread starts are made to fail by lowering the address-space limit
//! (`RLIMIT_AS`) just above what the process maps, so a new thread's stack
//! cannot be mapped. This needs a process of its own (one test, no idle
//! worker yet, nothing else starting threads) and is skipped where the
//! limit cannot be used that way: under miri, and under a sanitizer or
//! valgrind (which map far more address space as they go).
#![cfg(all(target_os = "linux", target_pointer_width = "64", not(miri)))]

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use goctx::Context;

/// `struct rlimit` on 64-bit Linux.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct RLimit {
    cur: u64,
    max: u64,
}

/// `RLIMIT_AS` on Linux.
const RLIMIT_AS: i32 = 9;

unsafe extern "C" {
    fn getrlimit(resource: i32, limit: *mut RLimit) -> i32;
    fn setrlimit(resource: i32, limit: *const RLimit) -> i32;
}

fn address_space_limit() -> RLimit {
    let mut limit = RLimit { cur: 0, max: 0 };
    // SAFETY: `limit` is a valid, writable `struct rlimit`.
    assert_eq!(unsafe { getrlimit(RLIMIT_AS, &mut limit) }, 0);
    limit
}

fn set_address_space_limit(limit: RLimit) {
    // SAFETY: `limit` is a valid `struct rlimit`.
    assert_eq!(unsafe { setrlimit(RLIMIT_AS, &limit) }, 0, "setrlimit");
}

/// The process's mapped address space (`VmSize`) in bytes.
fn mapped_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmSize:"))
        .expect("VmSize");
    let kb: u64 = line
        .trim_start_matches("VmSize:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

/// Sanitizers reserve terabytes of shadow memory; valgrind maps its tool.
fn instrumented() -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    mapped_bytes() > 1 << 40 || maps.contains("valgrind") || maps.contains("vgpreload")
}

#[test]
fn failed_thread_start_never_runs_a_callback_on_the_timer_or_canceller() {
    const QUIESCENT: Duration = Duration::from_secs(30);
    if instrumented() {
        eprintln!("skipped: RLIMIT_AS cannot be used under a sanitizer or valgrind");
        return;
    }
    // The timer thread and the pool start before the limit is lowered.
    let (_far, _cancel_far) = Context::background().with_timeout(Duration::from_secs(3600));
    let (warm, _cancel_warm) = Context::background().with_timeout(Duration::from_millis(1));
    assert!(warm.done().wait_timeout(QUIESCENT));
    let (ctx, cancel) = Context::background().with_cancel();
    let (ran_on, seen) = mpsc::channel::<(thread::ThreadId, Option<String>)>();
    let after = ctx.after_func(move || {
        let me = thread::current();
        let _ = ran_on.send((me.id(), me.name().map(str::to_owned)));
    });
    // Let the pool's dispatcher (if any) start and park.
    thread::sleep(Duration::from_millis(100));

    let saved = address_space_limit();
    set_address_space_limit(RLimit {
        cur: mapped_bytes() + (512 << 10),
        max: saved.max,
    });
    let refused = thread::Builder::new().spawn(|| {}).is_err();
    cancel.cancel();
    // Meanwhile deadlines still expire.
    let armed = Instant::now();
    let (d, _cancel_d) = Context::background().with_timeout(Duration::from_millis(5));
    let fired = d.done().wait_timeout(QUIESCENT);
    let late = armed.elapsed();
    let early = seen.recv_timeout(Duration::from_millis(300));
    set_address_space_limit(saved);

    assert!(refused, "the lowered limit did not stop thread starts");
    assert!(fired, "a deadline never fired while no thread could start");
    eprintln!("5 ms deadline fired after {late:?} while no thread could start");
    let timer_or_canceller = |(id, name): &(thread::ThreadId, Option<String>)| {
        *id == thread::current().id() || name.as_deref() == Some("goctx-timer")
    };
    if let Ok(ran) = &early {
        assert!(
            !timer_or_canceller(ran),
            "the callback ran on {:?} (the timer thread or the canceller) \
             because no worker could start",
            ran.1
        );
    }
    // Thread starts work again: the queued callback runs on a worker.
    let ran = match early {
        Ok(ran) => ran,
        Err(_) => seen
            .recv_timeout(QUIESCENT)
            .expect("the queued callback never ran once threads could start"),
    };
    assert!(!timer_or_canceller(&ran), "ran on {:?}", ran.1);
    assert!(!after.stop());
}
