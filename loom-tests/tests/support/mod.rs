//! Shared pieces of the loom models.
#![allow(dead_code)]

use std::cell::Cell;
use std::time::Instant;

/// Runs `f` under `loom::model`, then prints how many schedules were
/// explored and how long it took (the closing note reports these).
pub fn model<F>(name: &str, f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    // Counted outside the model, which must not see it: loom runs every
    // execution on the thread that called `loom::model`, so a plain
    // thread-local per test thread (hence per model) is enough.
    std::thread_local! {
        static RUNS: Cell<usize> = const { Cell::new(0) };
    }
    RUNS.with(|runs| runs.set(0));
    let start = Instant::now();
    loom::model(move || {
        RUNS.with(|runs| runs.set(runs.get() + 1));
        f();
    });
    eprintln!(
        "loom model {name}: {} iterations in {:.2?}",
        RUNS.with(Cell::get),
        start.elapsed()
    );
}

/// A cause with an identity, so a test can tell which cancellation won.
#[derive(Debug, PartialEq, Eq)]
pub struct Tag(pub u32);

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tag {}", self.0)
    }
}

impl std::error::Error for Tag {}

/// The tag of a context's cause, if it is a `Tag`.
pub fn tag_of(ctx: &goctx::Context) -> Option<u32> {
    ctx.cause()?.downcast_ref::<Tag>().map(|t| t.0)
}
