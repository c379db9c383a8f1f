//! With the `futures` feature, `Done` and `RunUntilDone` are
//! `FusedFuture`s, so they work in `futures::select!` and `select_biased!`
//! (API.md rule 18; the test uses futures-util's `select_biased!`, which
//! needs no `std` feature and keeps the dev-dependency tree small).
//! Run with `cargo test --features futures --test futures_select`.
#![cfg(feature = "futures")]

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use futures_util::future::{FusedFuture, FutureExt};
use goctx::Context;

/// Unparks the blocked thread.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// A minimal executor: polls on the calling thread, parking in between.
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut task = TaskContext::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = fut.as_mut().poll(&mut task) {
            return output;
        }
        thread::park();
    }
}

#[test]
fn done_in_futures_select() {
    let (ctx, cancel) = Context::background().with_cancel();
    let mut done = ctx.done();
    assert!(!done.is_terminated());
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(5));
        cancel.cancel();
    });
    let mut pending_work = futures_util::future::pending::<u32>().fuse();
    let picked = block_on(async {
        futures_util::select_biased! {
            () = done => "done",
            _ = pending_work => "work",
        }
    });
    assert_eq!(picked, "done");
    assert!(done.is_terminated());
    canceller.join().unwrap();
}

#[test]
fn run_until_done_in_futures_select() {
    let (ctx, _cancel) = Context::background().with_cancel();
    let mut work = std::pin::pin!(ctx.run_until_done(async { 5 }));
    assert!(!work.is_terminated());
    let mut never = Context::background().done_owned();
    let got = block_on(async {
        futures_util::select_biased! {
            r = work => r.unwrap(),
            () = never => unreachable!("background is never done"),
        }
    });
    assert_eq!(got, 5);
    assert!(work.is_terminated());
}
