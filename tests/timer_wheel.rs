//! The timer's sweep cost does not depend on what is parked for later
//! (issue 8, failure 4). On `bdad359` deadlines lived in 1024 buckets by
//! millisecond modulo 1024, and a due bucket was walked in full: a million
//! deadlines at one far instant made every short deadline that hashed into
//! their bucket wait for a walk over all of them. The hierarchical wheel
//! keeps far deadlines in high-level slots that no short deadline shares.
//!
//! A binary of its own: it parks a million contexts (~350 MB), and its
//! lateness figures should not be disturbed by other tests' timers. Every
//! time bound is generous; see the test for what it compares.

use std::thread;
use std::time::{Duration, Instant};

use goctx::Context;

/// The longest any wait may take before it counts as a hang.
const QUIESCENT: Duration = Duration::from_secs(if cfg!(miri) { 600 } else { 20 });

/// A million deadlines parked at one instant about an hour away, then
/// short deadlines armed from the same thread at instants a whole number of
/// 1024 ms periods before it — each of them shared the parked ones' bucket
/// on `bdad359` (same millisecond modulo 1024, same thread stripe). Each
/// short deadline must fire with a lateness far below the cost of walking
/// the parked ones: on this 2-core VM, `bdad359` showed a best lateness of
/// well over 100 ms in a debug build, the wheel ~1 ms.
#[test]
fn parked_deadlines_do_not_delay_short_ones() {
    let parked = if cfg!(miri) { 100 } else { 1_000_000 };
    let rounds = if cfg!(miri) { 1 } else { 3 };
    const PERIOD: Duration = Duration::from_millis(1024);
    let far = Instant::now() + PERIOD * 3600;
    let (witness, _keep) = Context::background().with_deadline(far);
    let cancels: Vec<_> = (0..parked)
        .map(|_| Context::background().with_deadline(far).1)
        .collect();

    // The first period boundary (counting back from `far`) at least 50 ms
    // from now, then the following ones.
    let now = Instant::now();
    let mut periods_before = ((far - now).as_nanos() / PERIOD.as_nanos()) as u32;
    while far - PERIOD * periods_before < now + Duration::from_millis(50) {
        periods_before -= 1;
    }
    let mut lateness = Vec::new();
    for _ in 0..rounds {
        let short = far - PERIOD * periods_before;
        periods_before -= 1;
        let (ctx, _cancel) = Context::background().with_deadline(short);
        assert!(
            ctx.done().wait_timeout(QUIESCENT),
            "a short deadline never fired"
        );
        lateness.push(Instant::now().saturating_duration_since(short));
    }
    let best = lateness.iter().min().copied().unwrap_or_default();
    let worst = lateness.iter().max().copied().unwrap_or_default();
    eprintln!(
        "short deadlines beside {parked} parked ones: lateness best {best:?}, worst {worst:?} ({lateness:?})"
    );
    assert!(!witness.is_done(), "a parked deadline fired an hour early");
    if !cfg!(miri) {
        // The best of three rounds: scheduling noise on a loaded VM can
        // delay any one wake-up, never all of them; the walk delayed all.
        assert!(
            best < Duration::from_millis(60),
            "short deadlines fired {lateness:?} late beside {parked} parked ones"
        );
    }
    drop(cancels);
    thread::yield_now();
}

/// Deadlines spread over every level of the wheel all fire, in order of
/// their deadlines' levels cascading down: a quick check that moved
/// entries are relinked and fire on time (none lost, none early).
#[test]
fn deadlines_cascading_down_the_wheel_fire_on_time() {
    let start = Instant::now();
    // 1 tick ≈ 1.05 ms: these cross level boundaries (64 and 4096 ticks).
    let delays_ms: &[u64] = if cfg!(miri) {
        &[1, 70]
    } else {
        &[1, 5, 63, 64, 65, 70, 130, 700, 4300]
    };
    let contexts: Vec<_> = delays_ms
        .iter()
        .map(|&ms| {
            let deadline = start + Duration::from_millis(ms);
            (deadline, Context::background().with_deadline(deadline))
        })
        .collect();
    for (deadline, (ctx, _cancel)) in &contexts {
        assert!(
            ctx.done().wait_timeout(QUIESCENT),
            "a deadline {:?} after the start never fired",
            *deadline - start
        );
        assert!(Instant::now() >= *deadline, "fired early");
    }
}
