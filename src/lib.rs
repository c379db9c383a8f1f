//! Go's `context` package for Rust, built as a lock-free concurrency
//! primitive: cancellation trees, request-scoped values, cancel causes, and
//! waiting from plain threads (parking) or any async runtime (`Done` is a
//! `Future`).
//!
//! # Go to Rust
//!
//! | Go                              | goctx                                   |
//! |---------------------------------|-----------------------------------------|
//! | `context.Background()`          | [`Context::background()`]               |
//! | `context.TODO()`                | [`Context::todo()`]                     |
//! | `WithCancel(p)`                 | [`p.with_cancel()`](Context::with_cancel) |
//! | `WithCancelCause(p)`            | [`p.with_cancel_cause()`](Context::with_cancel_cause) |
//! | `WithValue(p, k, v)`            | [`p.with_value(v)`](Context::with_value) (the key is `v`'s type) |
//! | `WithoutCancel(p)`              | [`p.without_cancel()`](Context::without_cancel) |
//! | `ctx.Done()`                    | [`ctx.done()`](Context::done) → [`Done<'_>`](Done) (borrows); [`ctx.done_owned()`](Context::done_owned) → `Done<'static>` to keep or move |
//! | `<-ctx.Done()`                  | `ctx.done().wait()` or `ctx.done().await` |
//! | `select` with a timer           | [`Done::wait_timeout`], [`Done::wait_deadline`] |
//! | `ctx.Err()`                     | [`ctx.err()`](Context::err) → `Option<`[`Error`]`>` |
//! | `ctx.Err() != nil`              | [`ctx.is_done()`](Context::is_done)     |
//! | `ctx.Value(k)`                  | [`ctx.value::<T>()`](Context::value)    |
//! | `context.Cause(ctx)`            | [`ctx.cause()`](Context::cause) → `Option<`[`Cause`]`>` |
//! | `cancel()` / `defer cancel()`   | [`CancelFunc::cancel`] / [`CancelFunc::guard`] |
//! | `cancel(cause)`                 | [`CancelCauseFunc::cancel`]             |
//! | `context.Canceled`              | [`Error::Canceled`]                     |
//! | `context.DeadlineExceeded`      | [`Error::DeadlineExceeded`]             |
//! | `if err := ctx.Err(); err != nil { return err }` | [`ctx.check()?`](Context::check) → [`ContextError`] |
//! | `ctx.Done() != nil`             | [`ctx.can_be_done()`](Context::can_be_done) |
//! | `WithDeadline(p, d)` / `WithTimeout(p, t)` | [`p.with_deadline(d)`](Context::with_deadline) / [`p.with_timeout(t)`](Context::with_timeout) |
//! | `WithDeadlineCause` / `WithTimeoutCause` | [`with_deadline_cause`](Context::with_deadline_cause) / [`with_timeout_cause`](Context::with_timeout_cause) |
//! | `ctx.Deadline()`                | [`ctx.deadline()`](Context::deadline)   |
//! | `AfterFunc(ctx, f)` → `stop()`  | [`ctx.after_func(f)`](Context::after_func) → [`AfterFunc::stop`] |
//! | (C++ `std::stop_callback`, .NET `Register`) | [`ctx.on_done(f)`](Context::on_done) → [`OnDone`]: `f` runs inside `cancel()` |
//! | `AfterFunc` merge example (C# linked tokens) | [`ctx.merge(&other)`](Context::merge) → `(Context, CancelFunc)` |
//! | `case <-ctx.Done():` in a `select` | `recv(ctx.done().receiver())` in `crossbeam_channel::select!` (feature `crossbeam-channel`) |
//!
//! # Threads
//!
//! ```
//! use goctx::{Context, Error};
//! use std::time::Duration;
//!
//! let (root, shutdown) = Context::background().with_cancel();
//! let workers: Vec<_> = (0..4)
//!     .map(|i| {
//!         let (ctx, _cancel) = root.with_cancel();
//!         std::thread::spawn(move || {
//!             let mut served = 0;
//!             // Serve until the tree is cancelled.
//!             while !ctx.done().wait_timeout(Duration::from_micros(100)) {
//!                 served += 1;
//!             }
//!             (i, served, ctx.err())
//!         })
//!     })
//!     .collect();
//! std::thread::sleep(Duration::from_millis(5));
//! shutdown.cancel();
//! for worker in workers {
//!     let (_, _, err) = worker.join().unwrap();
//!     assert_eq!(err, Some(Error::Canceled));
//! }
//! ```
//!
//! # Async
//!
//! `Done` is a `Future` that works on any executor:
//!
//! ```
//! use goctx::Context;
//!
//! # tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap().block_on(async {
//! let (ctx, cancel) = Context::background().with_cancel();
//! let task = tokio::spawn({
//!     let ctx = ctx.clone();
//!     async move {
//!         ctx.done().await;
//!         ctx.err()
//!     }
//! });
//! cancel.cancel();
//! assert_eq!(task.await.unwrap(), Some(goctx::Error::Canceled));
//! # });
//! ```
//!
//! # Cost model
//!
//! * `is_done()`, `err()`: one Acquire load of the nearest cancellable
//!   node's state word. `cause()`: the same plus a clone of the cause.
//! * `background()`, `todo()`, `clone()` of a root: no allocation. Each
//!   derived context: one allocation (registration with the parent
//!   included), or none: each thread keeps the nodes it freed (64 of each
//!   of the two common kinds, plain and deadline, at first; up to 1024
//!   while its churn needs them) and reuses them before it asks the
//!   allocator (`docs::internals`, "The node cache"). `cancel()`: no
//!   allocation; it wakes every waiter of the subtree before returning.
//! * `ctx.done()` borrows the context: no reference count, no shared
//!   write, no allocation (`done_owned()` takes one reference count). An
//!   awaited `Done` takes a waiter entry from a few spares its thread keeps
//!   and gives it back when dropped: a `select!` loop on `ctx.done()`
//!   allocates nothing in steady state.
//! * A deadline context is the same one allocation (its timer entry lives in
//!   the node); one shared timer thread, started by the first deadline
//!   context, expires deadlines.
//! * [`after_func`](Context::after_func) callbacks run on a pool of worker
//!   threads, started by the first after-func: at most
//!   [`max_after_func_workers`] of them
//!   ([`DEFAULT_MAX_AFTER_FUNC_WORKERS`] = 512 unless set with
//!   [`set_max_after_func_workers`]), each exiting after
//!   [`after_func_keep_alive`] idle ([`DEFAULT_AFTER_FUNC_KEEP_ALIVE`] =
//!   10 s unless set with [`set_after_func_keep_alive`]). When every worker
//!   is busy, further callbacks wait in a lock-free queue, in dispatch
//!   order. A callback never runs on the thread that cancels (nor on the
//!   timer thread), however many block and even if no thread can be
//!   started: then it stays queued, the pool retries the start (every
//!   10 ms to 1 s) and prints the error once; if no thread can ever be
//!   started, queued callbacks never run. One more thread, the pool's
//!   dispatcher, is the only one that starts workers.
//! * [`on_done`](Context::on_done) callbacks run on the thread that makes
//!   the context done, inside `cancel()` (or on the timer thread for a
//!   deadline), as wakers are woken: one allocation to register (none on a
//!   context that can never be done), none to run or stop; no thread hop.
//! * [`merge`](Context::merge): one allocation plus the on-done entry on
//!   `other` (none when `other` can never be done); `other`'s `cancel()`
//!   cancels the merged subtree inside it, as a child's.
//! * Nothing on the paths that derive, cancel, check, wait on or drop a
//!   context takes a lock: see [`docs::internals`] for the design, its
//!   state table, invariants, orderings and memory reclamation.
//!
//! # Differences from Go
//!
//! * Dropping a [`CancelFunc`] does not cancel, and a context needs no
//!   `cancel()` to be freed: dropping every handle frees it, its registration
//!   with its parent and its waiters. Use [`CancelFunc::guard`] for Go's
//!   `defer cancel()`.
//! * Values are keyed by type (`value::<T>()`), so a newtype is the key.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod after_func;
mod cancel;
mod check;
mod context;
mod done;
mod error;
mod list;
mod merge;
mod node;
mod node_cache;
mod on_done;
mod park;
mod primitive;
#[cfg(feature = "crossbeam-channel")]
mod receiver;
mod state;
mod stripes;
mod timer;
mod value;
mod waiters;

pub mod docs;

#[cfg(loom)]
#[doc(hidden)]
pub use after_func::pool_hooks;
pub use after_func::{
    AfterFunc, DEFAULT_AFTER_FUNC_KEEP_ALIVE, DEFAULT_MAX_AFTER_FUNC_WORKERS,
    after_func_keep_alive, max_after_func_workers, set_after_func_keep_alive,
    set_max_after_func_workers,
};
#[cfg(any(loom, feature = "fuzzing-internals"))]
#[doc(hidden)]
pub use cancel::stripe_hooks;
pub use cancel::{CancelCauseFunc, CancelCauseGuard, CancelFunc, CancelGuard};
pub use check::RunUntilDone;
pub use context::Context;
pub use done::Done;
pub use error::{Cause, ContextError, Error};
pub use on_done::OnDone;
#[cfg(loom)]
#[doc(hidden)]
pub use timer::loom_hooks;

/// Crate internals for the fuzz targets in `fuzz/` (cargo feature
/// `fuzzing-internals`); not part of the API.
#[cfg(feature = "fuzzing-internals")]
#[doc(hidden)]
#[allow(missing_docs, unreachable_pub)]
pub mod __fuzz {
    pub use crate::list::tracked::{Owner, TrackedList, Watch};
}

/// The README's examples run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
