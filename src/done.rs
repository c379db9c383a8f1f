//! `Done`: the handle `ctx.done()` returns — Go's `<-ctx.Done()` for threads
//! (blocking waits that park) and for any async runtime (a `Future`).

use core::fmt;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use crate::cancel::CancelNode;
use crate::error::ContextError;
use crate::node::NodeRef;
use crate::primitive::thread;
use crate::waiters::{TaskWaiter, park_on};

/// Waits for a context to be done: Go's `ctx.Done()` channel.
///
/// Holds the context's cancellable node alive (not the whole context). A
/// `Done` of a context that can never be done (`background()`, `todo()`,
/// `without_cancel()` and their value children) never completes.
///
/// * [`wait`](Done::wait) parks the calling thread until done;
/// * [`wait_timeout`](Done::wait_timeout) / [`wait_deadline`](Done::wait_deadline)
///   give up at a limit and return whether the context is done;
/// * `.await` resolves when done, on any executor.
///
/// Untimed blocking waits allocate nothing once the thread has waited
/// before; an awaited `Done` allocates one waiter entry on its first pending
/// poll. A timed-out wait or a dropped future withdraws its entry.
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
#[must_use = "a Done does nothing unless waited on or polled"]
pub struct Done {
    /// A handle on the context's anchor, a `CancelNode`.
    anchor: Option<NodeRef>,
    task: Option<TaskWaiter>,
    /// The future has returned `Ready` (for `FusedFuture`).
    finished: bool,
}

// `Send + Sync` through `NodeRef` and `TaskWaiter`.

// See the `UnwindSafe` impls of `Context`.
impl std::panic::UnwindSafe for Done {}
impl std::panic::RefUnwindSafe for Done {}

impl Done {
    /// A `Done` holding one handle on `anchor` (taken by the caller), or a
    /// `Done` that never completes.
    pub(crate) fn new(anchor: Option<NodeRef>) -> Done {
        Done {
            anchor,
            task: None,
            finished: false,
        }
    }

    #[inline]
    fn node(&self) -> Option<&CancelNode> {
        self.anchor.as_ref().map(|node| {
            // SAFETY: our handle keeps the node alive; it heads a `CancelNode`.
            unsafe { node.as_ptr().cast::<CancelNode>().as_ref() }
        })
    }

    /// The anchor as the pointer stored in the node (with its allocation's
    /// provenance, so handles may be made from it), or null: for layers
    /// that register on it (`receiver.rs`).
    #[cfg_attr(not(feature = "crossbeam-channel"), allow(dead_code))]
    pub(crate) fn anchor_ptr(&self) -> *const CancelNode {
        self.anchor
            .as_ref()
            .map_or(core::ptr::null(), |node| node.as_ptr().as_ptr().cast())
    }

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
            Some(node) => {
                while !node.is_done() {
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
            Some(node) => {
                while !node.is_done() {
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

impl Future for Done {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
        let this = self.get_mut();
        let Some(anchor) = &this.anchor else {
            return Poll::Pending;
        };
        // SAFETY: our handle keeps the node alive; it heads a `CancelNode`.
        let node = unsafe { anchor.as_ptr().cast::<CancelNode>().as_ref() };
        if node.is_done() {
            if let Some(task) = this.task.take() {
                task.finish();
            }
            this.finished = true;
            return Poll::Ready(());
        }
        let poll = match &mut this.task {
            None => match TaskWaiter::register(&node.waiters, cx.waker()) {
                Ok(task) => {
                    this.task = Some(task);
                    Poll::Pending
                }
                Err(()) => Poll::Ready(()),
            },
            Some(task) => task.poll(cx),
        };
        if poll.is_ready() {
            this.finished = true;
            if let Some(task) = this.task.take() {
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
impl futures_core::future::FusedFuture for Done {
    fn is_terminated(&self) -> bool {
        self.finished
    }
}

impl Clone for Done {
    fn clone(&self) -> Done {
        Done::new(self.anchor.clone())
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        // The handle in `anchor` is given up after this, when the field is
        // dropped.
        if let Some(anchor) = &self.anchor
            && let Some(task) = self.task.take()
        {
            // SAFETY: registered on this node's waiter list, a `CancelNode`'s;
            // our handle keeps it alive.
            unsafe { task.cancel(&anchor.as_ptr().cast::<CancelNode>().as_ref().waiters) };
        }
    }
}

impl Done {
    /// The context's error and cause, once done.
    pub(crate) fn error(&self) -> Option<ContextError> {
        let node = self.node()?;
        Some(ContextError::new(node.err()?, node.cause()?))
    }
}

impl fmt::Debug for Done {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Done")
            .field("cancellable", &self.anchor.is_some())
            .field("done", &self.is_done())
            .finish()
    }
}
