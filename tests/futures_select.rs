//! With the `futures` feature, `Done` and `RunUntilDone` are
//! `FusedFuture`s, so they work in `futures::select!` (API.md rule 18).
//! Run with `cargo test --features futures --test futures_select`.
#![cfg(feature = "futures")]

use std::time::Duration;

use futures::future::{FusedFuture, FutureExt};
use goctx::Context;

#[test]
fn done_in_futures_select() {
    let (ctx, cancel) = Context::background().with_cancel();
    let mut done = ctx.done();
    assert!(!done.is_terminated());
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(5));
        cancel.cancel();
    });
    let mut pending_work = futures::future::pending::<u32>().fuse();
    let picked = futures::executor::block_on(async {
        futures::select! {
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
    let mut never = Context::background().done();
    let got = futures::executor::block_on(async {
        futures::select! {
            r = work => r.unwrap(),
            () = never => unreachable!("background is never done"),
        }
    });
    assert_eq!(got, 5);
    assert!(work.is_terminated());
}
