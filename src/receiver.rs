//! `Done::receiver()` (cargo feature `crossbeam-channel`): Go's
//! `case <-ctx.Done():` for `crossbeam_channel::select!`, built on
//! `on_done` — the callback holds the channel's only sender and drops it,
//! so the cancellation itself disconnects the receiver (inside `cancel()`,
//! or on the timer thread for a deadline): no worker thread, no polling.

use crate::done::Done;
use crate::on_done::OnDone;

/// With the `crossbeam-channel` feature: `select!` on a context beside
/// other channels.
impl Done<'_> {
    /// A receiver that is disconnected once the context is done (`recv`
    /// returns `Err`, and a `select!` arm on it fires): Go's
    /// `case <-ctx.Done():` for [`crossbeam_channel::select!`]. Built on
    /// [`Context::on_done`](crate::Context::on_done): the sending side is
    /// dropped by the cancellation itself (inside `cancel()`, or on the
    /// timer thread for a deadline) — no worker thread, no polling. Nothing
    /// is ever sent. On a context that can never be done it is
    /// [`crossbeam_channel::never()`] (and allocates nothing).
    ///
    /// The sending side lives in the context: if the context is freed
    /// without ever being done — every handle on it (clones, `Done`s,
    /// cancel handles, descendants) dropped, so that nothing can make it
    /// done any more — the receiver is disconnected too. Keep a handle
    /// while selecting if the two must be told apart.
    ///
    /// ```
    /// use crossbeam_channel::{select, unbounded};
    /// use goctx::Context;
    ///
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// let (jobs_tx, jobs) = unbounded::<u32>();
    /// let worker = std::thread::spawn({
    ///     let done = ctx.done().receiver();
    ///     move || {
    ///         let mut sum = 0;
    ///         loop {
    ///             select! {
    ///                 recv(jobs) -> job => sum += job.unwrap(),
    ///                 recv(done) -> _ => return sum,
    ///             }
    ///         }
    ///     }
    /// });
    /// jobs_tx.send(2).unwrap();
    /// cancel.cancel();
    /// let sum = worker.join().unwrap();
    /// assert!(sum == 0 || sum == 2);
    /// assert!(ctx.done().receiver().recv().is_err());
    /// ```
    pub fn receiver(&self) -> crossbeam_channel::Receiver<core::convert::Infallible> {
        let anchor = self.anchor_ptr();
        if anchor.is_null() {
            return crossbeam_channel::never();
        }
        let (tx, rx) = crossbeam_channel::bounded(0);
        // `self` keeps the anchor alive during the call.
        OnDone::new(anchor, move || drop(tx)).detach();
        rx
    }
}
