//! Helpers shared by integration tests: the causes of Go's TestCause table,
//! and a live-bytes allocator for tests that measure memory; in submodules
//! the random generator (`rng`), value types for chains of value contexts
//! (`slot`), and counted values and causes with an identity (`identity`,
//! which the fuzz targets include by path too). A test file
//! declares `mod support;`; one that measures memory also installs the
//! allocator: `#[global_allocator] static GLOBAL: support::LiveBytes =
//! support::LiveBytes;`.
#![allow(dead_code, unreachable_pub)]

pub mod identity;
pub mod rng;
pub mod slot;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use goctx::{Context, Error};

/// The distinct causes of Go's TestCause table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Named {
    ParentCause,
    ChildCause,
    TooSlow,
    FinishedEarly,
}

impl std::fmt::Display for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for Named {}

/// What a TestCause row expects `cause()` to hold.
#[derive(Debug, PartialEq)]
pub enum WantCause {
    Nothing,
    Plain(Error),
    Named(Named),
}

/// The cause of `ctx`, as a `WantCause`; panics on any other cause type.
pub fn cause_of(ctx: &Context) -> WantCause {
    let Some(cause) = ctx.cause() else {
        return WantCause::Nothing;
    };
    if let Some(&error) = cause.downcast_ref::<Error>() {
        return WantCause::Plain(error);
    }
    match cause.downcast_ref::<Named>() {
        Some(&named) => WantCause::Named(named),
        None => panic!("unexpected cause {cause:?} in {ctx}"),
    }
}

/// Counts live heap bytes (allocated minus freed), process-wide.
pub struct LiveBytes;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments;
// the bookkeeping is one atomic and never allocates.
unsafe impl GlobalAlloc for LiveBytes {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded from the caller.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
}

/// Live heap bytes now (needs `LiveBytes` as the global allocator).
pub fn live_bytes() -> isize {
    LIVE.load(Ordering::SeqCst)
}

/// Held for reading by every test, for writing by the one that measures
/// live bytes.
static EXCLUSIVE: RwLock<()> = RwLock::new(());

/// Taken by every test that does not measure memory.
pub fn shared() -> RwLockReadGuard<'static, ()> {
    EXCLUSIVE.read().unwrap_or_else(|e| e.into_inner())
}

/// Taken by a test that measures live bytes: nothing else runs meanwhile.
pub fn exclusive() -> RwLockWriteGuard<'static, ()> {
    EXCLUSIVE.write().unwrap_or_else(|e| e.into_inner())
}

/// Polls `cond` every millisecond until it holds (true) or `bound` passes
/// (false): a hang guard for work another thread finishes.
pub fn eventually_within(bound: std::time::Duration, cond: impl Fn() -> bool) -> bool {
    let give_up = std::time::Instant::now() + bound;
    while !cond() {
        if std::time::Instant::now() > give_up {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    true
}
