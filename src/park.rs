//! Parked threads: where a blocking wait on a context sleeps, so that a
//! cancellation wakes every such thread with one call.
//!
//! A thread blocked in `Done::wait` (or `wait_timeout`, `wait_deadline`)
//! sleeps in the kernel's wait queue of a 32-bit *sequence word*: one of
//! `SLOTS` cache-padded words, chosen by the node's address (a hash, as
//! parking_lot's and the kernel's own futex table). The protocol
//! (`CancelNode::park_until` and `CancelNode::propagate`):
//!
//! 1. The waiter reads the slot's sequence (Acquire), announces
//!    `HAS_PARKED` in the node's state word (cancel.rs invariant 7; it
//!    returns at once if the node is done), and parks while the slot still
//!    holds the sequence it read (the kernel compares and queues
//!    atomically).
//! 2. The canceller, once its CAS has read `HAS_PARKED`, increments the
//!    slot's sequence (Release) and wakes every thread parked on it.
//!
//! No lost wake-up: if the waiter's announcement came before the
//! canceller's CAS (in the state word's modification order), the canceller
//! increments and wakes; the waiter then either finds the sequence changed
//! when the kernel compares, or is queued before the wake and woken by it.
//! If the waiter's sequence read already saw the increment, it also sees
//! the node done (Acquire/Release) and does not park. An announcement after
//! the CAS fails on the done word. Threads of other nodes that share the
//! slot wake spuriously and park again; a wait returns only on its own
//! node's done word (or its deadline).
//!
//! Compared with one waiter-set entry and one `unpark` per thread (what
//! targets without a futex still do, `waiters::park_on`): the waiter
//! allocates and links nothing, and the canceller makes one system call
//! for all of a node's parked threads instead of one each, before any of
//! them can preempt it. `benches/README.md` has the measurement.
//!
//! Under loom the kernel's queue is modelled (`primitive::futex`), so the
//! waiter models in `loom-tests/` check this protocol.

use core::time::Duration;

use crate::primitive::atomic::{AtomicU32, Ordering};
use crate::primitive::futex;

/// Whether blocking waits park here (else on the waiter set).
pub(crate) const SUPPORTED: bool = futex::SUPPORTED;

/// Sequence words (a power of two). Under loom: two, so that models stay
/// small and still meet a shared slot.
#[cfg(not(loom))]
const SLOTS: usize = 64;
#[cfg(loom)]
const SLOTS: usize = 2;

/// One sequence word on a cache line of its own: cancellations of
/// unrelated nodes do not contend.
#[repr(align(64))]
struct Slot(AtomicU32);

#[cfg(not(loom))]
static TABLE: [Slot; SLOTS] = [const { Slot(AtomicU32::new(0)) }; SLOTS];

#[cfg(loom)]
crate::primitive::lazy_static! {
    static ref TABLE: Vec<Slot> = (0..SLOTS).map(|_| Slot(AtomicU32::new(0))).collect();
}

/// The sequence word of the node at `addr`.
#[inline]
fn slot(addr: usize) -> &'static AtomicU32 {
    // Nodes are at least 64 bytes apart: drop the low bits, fold in higher
    // ones.
    let index = ((addr >> 6) ^ (addr >> 12)) & (SLOTS - 1);
    &TABLE[index].0
}

/// Step 1's first read: the sequence the caller parks on.
#[inline]
pub(crate) fn sequence(addr: usize) -> u32 {
    // Ordering: Acquire — pairs with `wake_all`'s Release increment: a
    // waiter that reads it sees the node done.
    slot(addr).load(Ordering::Acquire)
}

/// Parks while the sequence word of the node at `addr` holds `sequence`,
/// for at most `timeout`; may return spuriously.
#[inline]
pub(crate) fn park(addr: usize, sequence: u32, timeout: Option<Duration>) {
    futex::wait(slot(addr), sequence, timeout);
}

/// Step 2: wakes every thread parked for the node at `addr` (and any that
/// shares its slot).
pub(crate) fn wake_all(addr: usize) {
    let slot = slot(addr);
    // Ordering: Release — pairs with `sequence`'s Acquire (the done word,
    // written before, is visible to a waiter that reads the increment).
    slot.fetch_add(1, Ordering::Release);
    futex::wake_all(slot);
}
