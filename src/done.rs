//! `Done`: the handle `ctx.done()` returns — Go's `<-ctx.Done()` for threads
//! (blocking waits that park) and for any async runtime (a `Future`).

use core::fmt;
use core::future::Future;
use core::marker::PhantomData;
use core::pin::Pin;
use core::ptr::{self, NonNull};
use core::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use crate::cancel::CancelNode;
use crate::error::ContextError;
use crate::node::{Node, NodeRef};
use crate::park;
use crate::primitive::thread;
use crate::state;
use crate::waiters::{TaskWaiter, Waiter, park_on};

/// Waits for a context to be done: Go's `ctx.Done()` channel.
///
/// [`ctx.done()`](crate::Context::done) gives a `Done<'_>` that borrows the
/// context: making and dropping it touches no shared memory (no reference
/// count). [`ctx.done_owned()`](crate::Context::done_owned) and
/// [`into_owned`](Done::into_owned) give a `Done<'static>` that holds the
/// context's cancellable node alive (not the whole context), to store it,
/// move it into a thread or spawn a task on it. A `Done` of a context that
/// can never be done (`background()`, `todo()`, `without_cancel()` and their
/// value children) never completes.
///
/// * [`wait`](Done::wait) parks the calling thread until done;
/// * [`wait_timeout`](Done::wait_timeout) / [`wait_deadline`](Done::wait_deadline)
///   give up at a limit and return whether the context is done;
/// * `.await` resolves when done, on any executor.
///
/// Untimed blocking waits allocate nothing once the thread has waited
/// before. An awaited `Done` takes a waiter entry on its first pending poll
/// from a few spares its thread keeps, and gives it back when dropped: a
/// `select!` loop on `ctx.done()` allocates nothing in steady state. A
/// timed-out wait or a dropped future withdraws its entry.
///
/// ```
/// use goctx::Context;
/// use std::time::Duration;
///
/// let (ctx, cancel) = Context::background().with_cancel();
/// let done = ctx.done();
/// assert!(!done.wait_timeout(Duration::from_millis(1)));
/// std::thread::spawn(move || cancel.cancel());
/// done.wait();
/// assert!(done.is_done());
/// ```
///
/// Moving one into a thread takes an owned `Done`:
///
/// ```
/// let (ctx, cancel) = goctx::Context::background().with_cancel();
/// let done = ctx.done_owned();
/// drop(ctx); // `done` keeps what it waits on alive
/// let waiter = std::thread::spawn(move || done.wait());
/// cancel.cancel();
/// waiter.join().unwrap();
/// ```
#[must_use = "a Done does nothing unless waited on or polled"]
pub struct Done<'a> {
    /// What the `Done` waits on: the anchor's header (a `CancelNode`) as
    /// stored in the node, with the anchor allocation's provenance
    /// (`Repr::anchor_ptr`), so `into_owned` may make a handle from it;
    /// null when the context can never be done.
    node: *const Node,
    /// What dropping it has to do, in one word: null for a borrowing
    /// `Done` with no waiter entry (`ctx.done().is_done()`, a blocking
    /// wait), so that drop is one test the compiler inlines everywhere,
    /// even on a cold (panicking) path; otherwise the registered entry's
    /// address (`TaskWaiter`, or null), tagged with `OWNED` when the `Done`
    /// holds a counted handle on `node`. Otherwise a context borrowed for
    /// `'a` keeps `node` alive (node invariants 2 and 4).
    held: *const Waiter,
    /// The future has returned `Ready` (for `FusedFuture`).
    finished: bool,
    _borrow: PhantomData<&'a Node>,
}

/// Tag on `Done::held`: the `Done` holds one handle on its node. Entries
/// are word-aligned, so the bit is free.
const OWNED: usize = 1;

// SAFETY: a borrowing `Done` is a shared borrow of a node (`&'a Node` in
// substance), and nodes are `Sync` (see `NodeRef`'s impls in node.rs); an
// owned one holds a `NodeRef`, which is `Send + Sync`; the entry is a
// `TaskWaiter`, `Send + Sync` (waiters.rs).
unsafe impl Send for Done<'_> {}
// SAFETY: as above; `&Done` reads the node's state and the pointers only.
unsafe impl Sync for Done<'_> {}

// See the `UnwindSafe` impls of `Context`.
impl std::panic::UnwindSafe for Done<'_> {}
impl std::panic::RefUnwindSafe for Done<'_> {}

impl<'a> Done<'a> {
    /// A `Done` borrowing `anchor` (a `CancelNode`'s header, as stored in a
    /// node), or one that never completes if it is null. Takes no handle.
    ///
    /// # Safety
    ///
    /// `anchor` is null or stays alive for `'a` (the caller borrows a
    /// context whose anchor it is, node invariants 2 and 4).
    #[inline]
    pub(crate) unsafe fn borrowed(anchor: *const Node) -> Done<'a> {
        Done {
            node: anchor,
            held: ptr::null(),
            finished: false,
            _borrow: PhantomData,
        }
    }

    /// The node waited on, if any.
    #[inline]
    fn node(&self) -> Option<&CancelNode> {
        // SAFETY: the borrowed context or our handle keeps the node alive
        // while `self` is; it heads a `CancelNode`.
        unsafe { self.node.cast::<CancelNode>().as_ref() }
    }

    /// Whether we hold a counted handle on `node`.
    #[inline]
    fn holds_handle(&self) -> bool {
        self.held.addr() & OWNED != 0
    }

    /// The registered waiter entry, if any.
    #[inline]
    fn task(&self) -> Option<TaskWaiter> {
        let entry = self.held.map_addr(|addr| addr & !OWNED);
        // SAFETY: a non-null untagged `held` is our registered entry.
        (!entry.is_null()).then(|| unsafe { TaskWaiter::from_raw(entry) })
    }

    /// Records the registered entry (or none), keeping `OWNED`.
    #[inline]
    fn set_task(&mut self, task: Option<TaskWaiter>) {
        let owned = self.held.addr() & OWNED;
        self.held = task
            .map_or(ptr::null(), TaskWaiter::into_raw)
            .map_addr(|addr| addr | owned);
    }

    /// The anchor as the pointer stored in the node (with its allocation's
    /// provenance, so handles may be made from it), or null: for layers
    /// that register on it (`receiver.rs`).
    #[cfg_attr(not(feature = "crossbeam-channel"), allow(dead_code))]
    pub(crate) fn anchor_ptr(&self) -> *const CancelNode {
        self.node.cast()
    }

    /// A `Done` that holds the context's cancellable node alive itself, for
    /// storing, moving into a thread or spawning a task on it. Takes one
    /// reference count if this one borrows; a registered waiter entry moves
    /// along.
    ///
    /// ```
    /// fn watch(done: goctx::Done<'static>) -> std::thread::JoinHandle<()> {
    ///     std::thread::spawn(move || done.wait())
    /// }
    ///
    /// let (ctx, cancel) = goctx::Context::background().with_cancel();
    /// let watcher = watch(ctx.done().into_owned());
    /// cancel.cancel();
    /// watcher.join().unwrap();
    /// ```
    pub fn into_owned(self) -> Done<'static> {
        // The handle (if any) and the entry (if any) move to the new `Done`;
        // this one must not give them back.
        let this = core::mem::ManuallyDrop::new(self);
        let mut held = this.held;
        if !this.holds_handle() && !this.node.is_null() {
            // SAFETY: the borrowed context keeps the node alive (node
            // invariant 2), and the pointer has its allocation's provenance.
            let handle = unsafe { NodeRef::acquire(NonNull::new_unchecked(this.node.cast_mut())) };
            // Ours now, recorded by `OWNED` and given back in `drop_slow`.
            let _ = handle.into_raw();
            held = held.map_addr(|addr| addr | OWNED);
        }
        // The entry stays registered on the same node's list, which the
        // handle keeps alive.
        Done {
            node: this.node,
            held,
            finished: this.finished,
            _borrow: PhantomData,
        }
    }
}

impl<'a> Done<'a> {
    /// A `Done` that keeps `handle` (on an anchor), with no waiter entry.
    fn holding(handle: NodeRef) -> Done<'a> {
        Done {
            node: handle.into_raw().as_ptr(),
            held: ptr::without_provenance(OWNED),
            finished: false,
            _borrow: PhantomData,
        }
    }
}

impl Done<'static> {
    /// A `Done` holding one handle on `anchor` (taken by the caller), or a
    /// `Done` that never completes.
    pub(crate) fn owned(anchor: Option<NodeRef>) -> Done<'static> {
        match anchor {
            Some(handle) => Done::holding(handle),
            // SAFETY: null: a `Done` that never completes.
            None => unsafe { Done::borrowed(ptr::null()) },
        }
    }
}

impl Done<'_> {
    /// Whether the context is done (one atomic load).
    ///
    /// ```
    /// let (ctx, cancel) = goctx::Context::background().with_cancel();
    /// let done = ctx.done();
    /// assert!(!done.is_done());
    /// cancel.cancel();
    /// assert!(done.is_done());
    /// ```
    #[inline]
    pub fn is_done(&self) -> bool {
        self.node().is_some_and(CancelNode::is_done)
    }

    /// Parks the calling thread until the context is done. On a context that
    /// can never be done this blocks forever (as receiving from Go's nil
    /// `Done` channel does).
    ///
    /// ```
    /// let (ctx, cancel) = goctx::Context::background().with_cancel();
    /// let t = std::thread::spawn(move || cancel.cancel());
    /// ctx.done().wait();
    /// t.join().unwrap();
    /// ```
    pub fn wait(&self) {
        match self.node() {
            None => loop {
                thread::park();
            },
            // Parked with every other waiting thread, woken by one call.
            Some(node) if park::SUPPORTED => {
                node.park_until(None);
            }
            Some(node) => {
                // Announced before each push (cancel.rs invariant 7).
                while node.announce_waiter() {
                    park_on(&node.waiters, None);
                }
            }
        }
    }

    /// Waits until the context is done or `timeout` has passed; returns
    /// whether it is done. `Duration::MAX` (or any timeout too large to add
    /// to now) waits forever.
    ///
    /// ```
    /// use std::time::Duration;
    /// let ctx = goctx::Context::background();
    /// assert!(!ctx.done().wait_timeout(Duration::from_millis(2)));
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        match Instant::now().checked_add(timeout) {
            Some(deadline) => self.wait_deadline(deadline),
            None => {
                self.wait();
                true
            }
        }
    }

    /// Waits until the context is done or `deadline` is reached; returns
    /// whether it is done.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let (ctx, cancel) = goctx::Context::background().with_cancel();
    /// cancel.cancel();
    /// assert!(ctx.done().wait_deadline(Instant::now() + Duration::from_secs(60)));
    /// ```
    pub fn wait_deadline(&self, deadline: Instant) -> bool {
        match self.node() {
            None => loop {
                let now = Instant::now();
                if now >= deadline {
                    return false;
                }
                thread::park_timeout(deadline - now);
            },
            Some(node) if park::SUPPORTED => node.park_until(Some(deadline)),
            Some(node) => {
                // Announced before each push (cancel.rs invariant 7).
                while node.announce_waiter() {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    park_on(&node.waiters, Some(deadline));
                }
                true
            }
        }
    }
}

impl Future for Done<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = self.get_mut();
        let Some(node) = this.node() else {
            return Poll::Pending;
        };
        let word = node.word();
        if state::is_done(word) {
            if let Some(task) = this.task() {
                this.set_task(None);
                task.finish();
            }
            this.finished = true;
            return Poll::Ready(());
        }
        let poll = match this.task() {
            // Announced before the push (cancel.rs invariant 7), from the
            // word just read: it usually has the bit already (a `select!`
            // loop polls a fresh `Done` of one context on every iteration).
            None if !node.announce_from(word, state::HAS_WAITERS) => Poll::Ready(()),
            None => match TaskWaiter::register(&node.waiters, cx.waker()) {
                Ok(task) => {
                    this.set_task(Some(task));
                    Poll::Pending
                }
                Err(()) => Poll::Ready(()),
            },
            Some(mut task) => task.poll(cx),
        };
        if poll.is_ready() {
            this.finished = true;
            if let Some(task) = this.task() {
                this.set_task(None);
                task.finish();
            }
        }
        poll
    }
}

/// With the `futures` feature, for `futures::select!`: terminated once it
/// has returned `Ready` (polling it again is allowed and stays `Ready`).
///
/// ```
/// # #[cfg(feature = "futures")] {
/// use futures_core::future::FusedFuture;
///
/// let (ctx, cancel) = goctx::Context::background().with_cancel();
/// let mut done = ctx.done();
/// assert!(!done.is_terminated());
/// cancel.cancel();
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// (&mut done).await;
/// # });
/// assert!(done.is_terminated());
/// # }
/// ```
#[cfg(feature = "futures")]
impl futures_core::future::FusedFuture for Done<'_> {
    fn is_terminated(&self) -> bool {
        self.finished
    }
}

impl Clone for Done<'_> {
    /// Another `Done` on the same context: a borrowing one costs nothing, an
    /// owned one takes a reference count. The clone has no waiter entry of
    /// its own until polled.
    fn clone(&self) -> Self {
        if self.holds_handle() {
            // SAFETY: our handle keeps the node alive; the pointer has its
            // allocation's provenance.
            Done::holding(unsafe { NodeRef::acquire(NonNull::new_unchecked(self.node.cast_mut())) })
        } else {
            // SAFETY: the same borrow.
            unsafe { Done::borrowed(self.node) }
        }
    }
}

impl Drop for Done<'_> {
    /// Inline: a `Done` that borrows its context and never registered
    /// (`ctx.done().is_done()`, a blocking wait) drops with one test.
    #[inline]
    fn drop(&mut self) {
        // One word decides, and the slow path gets it and the node by
        // value, not `&mut self`: this drop is small enough that the
        // compiler inlines it even on a cold (panicking) path, so a `Done`
        // whose address never escapes stays in registers, and after
        // `ctx.done().is_done()` the compiler knows `held` is null and drops
        // it with no code. (Reloading fields from the stack after
        // `is_done`'s atomic load, which they may not move across, made
        // `assert!(ctx.done().is_done())` 2.2 ns against 0.9 ns in a
        // stand-alone model of both layouts.)
        if !self.held.is_null() {
            drop_slow(self.held, self.node);
        }
    }
}

/// Withdraws a dropped pending future's waiter entry from `node`'s list,
/// then gives back an owned `Done`'s handle (also if withdrawing unwinds).
#[cold]
#[inline(never)]
fn drop_slow(held: *const Waiter, node: *const Node) {
    let _handle = if held.addr() & OWNED != 0 {
        // SAFETY: `OWNED` says the `Done` held one handle on `node`, given
        // back once (here, last: it keeps the node alive for the withdrawal).
        Some(unsafe { NodeRef::from_raw(NonNull::new_unchecked(node.cast_mut())) })
    } else {
        None
    };
    let entry = held.map_addr(|addr| addr & !OWNED);
    if entry.is_null() {
        return;
    }
    // SAFETY: the `Done` being dropped borrows the context of `node` or
    // holds `_handle` on it, so it is alive and heads a `CancelNode`; a
    // registered `Done` has a node.
    if let Some(node) = unsafe { node.cast::<CancelNode>().as_ref() } {
        // SAFETY: `entry` is the `Done`'s registered entry (its reference,
        // given up here), on this node's waiter list (`into_owned` keeps
        // the node).
        unsafe { TaskWaiter::from_raw(entry).cancel(&node.waiters) };
    }
}

impl Done<'_> {
    /// The context's error and cause, once done.
    pub(crate) fn error(&self) -> Option<ContextError> {
        let node = self.node()?;
        Some(ContextError::new(node.err()?, node.cause()?))
    }
}

impl fmt::Debug for Done<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Done")
            .field("cancellable", &!self.node.is_null())
            .field("owned", &self.holds_handle())
            .field("done", &self.is_done())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::Context;

    /// The handle count of `ctx`'s anchor.
    fn handles(ctx: &Context) -> u32 {
        ctx.anchor().expect("cancellable").node.handle_count()
    }

    /// API rule 13: `done()` borrows, taking no handle; `done_owned()`,
    /// `into_owned()` and cloning an owned `Done` take one each, given
    /// back on drop.
    #[test]
    fn done_takes_no_handle_and_done_owned_takes_one() {
        let (ctx, cancel) = Context::background().with_cancel();
        let before = handles(&ctx);
        let done = ctx.done();
        let borrowed_clone = done.clone();
        assert_eq!(handles(&ctx), before, "done() and its clone take no handle");
        let owned = ctx.done_owned();
        assert_eq!(handles(&ctx), before + 1, "done_owned() takes one");
        let owned_clone = owned.clone();
        let into = borrowed_clone.into_owned();
        assert_eq!(handles(&ctx), before + 3);
        drop((owned, owned_clone, into));
        assert_eq!(handles(&ctx), before);
        // Through a value layer: still the anchor, still no handle.
        let valued = ctx.with_value(7u8);
        let before = handles(&ctx);
        let via_value = valued.done();
        assert_eq!(handles(&ctx), before);
        cancel.cancel();
        assert!(done.is_done() && via_value.is_done());
        drop((done, via_value));
        assert_eq!(handles(&ctx), before);
    }
}
