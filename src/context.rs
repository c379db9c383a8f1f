//! The public `Context`.

use core::fmt;
use core::ptr::NonNull;
use std::time::{Duration, Instant, SystemTime};

use crate::after_func::AfterFunc;
use crate::cancel::{CancelCauseFunc, CancelFunc, CancelNode};
use crate::done::Done;
use crate::error::{Cause, Error};
use crate::node::{self, Kind, Merged, Node, NodeRef, Repr, Up};
use crate::on_done::OnDone;
use crate::timer::TimerOwner;
use crate::value::{ValueNode, value_of};

/// A Go-style context: a cancellation signal, a deadline and request-scoped
/// values, passed down a call tree and across threads and tasks.
///
/// `Context` is cheap to clone (one reference-count increment at most) and
/// `Send + Sync`. The roots [`background`](Context::background) and
/// [`todo`](Context::todo) allocate nothing; each derived context is one
/// allocation. A derived context is freed when its last clone, owned
/// `Done`, cancel handle and descendant is dropped — no `cancel()` needed.
///
/// ```
/// use goctx::{Context, Error};
///
/// #[derive(Debug, PartialEq)]
/// struct RequestId(u64);
///
/// let root = Context::background();
/// let (ctx, cancel) = root.with_cancel();
/// let ctx = ctx.with_value(RequestId(7));
///
/// let worker = {
///     let ctx = ctx.clone();
///     std::thread::spawn(move || {
///         assert_eq!(ctx.value::<RequestId>(), Some(&RequestId(7)));
///         ctx.done().wait();
///         ctx.err()
///     })
/// };
/// cancel.cancel();
/// assert_eq!(worker.join().unwrap(), Some(Error::Canceled));
/// assert!(ctx.to_string().starts_with("context.Background.WithCancel.WithValue("));
/// ```
#[derive(Clone)]
pub struct Context(Repr);

// `Send + Sync` through `NodeRef` (node.rs).

// Every state change is one atomic transition and cancellation finishes its
// whole subtree even when a waker panics (the panic resumes afterwards), so
// a panic never leaves a context half-cancelled for code that catches it.
impl std::panic::UnwindSafe for Context {}
impl std::panic::RefUnwindSafe for Context {}

impl Context {
    /// The root of every context tree: never done, no deadline, no values
    /// (Go's `context.Background()`). Allocates nothing.
    ///
    /// ```
    /// let ctx = goctx::Context::background();
    /// assert!(!ctx.is_done());
    /// assert_eq!(ctx.err(), None);
    /// assert_eq!(ctx.to_string(), "context.Background");
    /// ```
    #[inline]
    pub const fn background() -> Context {
        Context(Repr::Background)
    }

    /// Like [`background`](Context::background), marking code that has not
    /// been given a context yet (Go's `context.TODO()`).
    ///
    /// ```
    /// let ctx = goctx::Context::todo();
    /// assert!(!ctx.is_done());
    /// assert_eq!(ctx.to_string(), "context.TODO");
    /// ```
    #[inline]
    pub const fn todo() -> Context {
        Context(Repr::Todo)
    }

    /// Derives a context that is done when `cancel()` is called on the
    /// returned [`CancelFunc`] or when this context is done, whichever comes
    /// first (Go's `WithCancel`). One allocation.
    ///
    /// ```
    /// use goctx::Context;
    ///
    /// let (parent, cancel_parent) = Context::background().with_cancel();
    /// let (child, _cancel_child) = parent.with_cancel();
    /// cancel_parent.cancel();
    /// assert!(child.is_done());
    /// ```
    #[must_use = "the derived context is dropped at once (and with it, often, its only use)"]
    #[inline]
    pub fn with_cancel(&self) -> (Context, CancelFunc) {
        // Inlined: the usual child of `background()` is built in the
        // caller's frame (`CancelNode::derive_fast`), everything else by a
        // call that returns the node in a register. (A call returning the
        // pair instead wrote it to the caller's stack as three words that
        // the caller read back as 16 bytes: a store-forwarding stall, +5 ns
        // on `child_create_drop/serial`.)
        let [ctx, cancel] = handles(CancelNode::derive(&self.0, 2));
        (Context(Repr::Node(ctx)), CancelFunc::new(cancel))
    }

    /// Like [`with_cancel`](Context::with_cancel), with a cancel handle that
    /// records a [`Cause`] (Go's `WithCancelCause`).
    ///
    /// ```
    /// use goctx::{Context, Error};
    ///
    /// let (ctx, cancel) = Context::background().with_cancel_cause();
    /// cancel.cancel(std::fmt::Error);
    /// assert_eq!(ctx.err(), Some(Error::Canceled));
    /// assert!(ctx.cause().unwrap().downcast_ref::<std::fmt::Error>().is_some());
    /// ```
    #[must_use = "the derived context is dropped at once"]
    pub fn with_cancel_cause(&self) -> (Context, CancelCauseFunc) {
        let [ctx, cancel] = handles(CancelNode::derive(&self.0, 2));
        (Context(Repr::Node(ctx)), CancelCauseFunc::new(cancel))
    }

    /// Derives a context carrying `value`, found by
    /// [`value::<T>()`](Context::value) here and in every descendant, and
    /// shadowing any `T` further up (Go's `WithValue`; the key is the type,
    /// so use a newtype of your own). Transparent to cancellation. One
    /// allocation.
    ///
    /// ```
    /// #[derive(Debug, PartialEq)]
    /// struct User(&'static str);
    ///
    /// let ctx = goctx::Context::background().with_value(User("ada"));
    /// let inner = ctx.with_value(User("grace"));
    /// assert_eq!(ctx.value::<User>(), Some(&User("ada")));
    /// assert_eq!(inner.value::<User>(), Some(&User("grace")));
    /// ```
    #[must_use = "with_value returns a new context; the receiver is unchanged"]
    pub fn with_value<T>(&self, value: T) -> Context
    where
        T: Send + Sync + 'static,
    {
        Context(Repr::Node(ValueNode::derive(&self.0, value)))
    }

    /// Derives a context that keeps this one's values but is never done, has
    /// no deadline and no cause, and whose descendants are unaffected by this
    /// context's cancellation (Go's `WithoutCancel`).
    ///
    /// ```
    /// #[derive(Debug, PartialEq)]
    /// struct TraceId(u32);
    ///
    /// let (ctx, cancel) = goctx::Context::background().with_cancel();
    /// let ctx = ctx.with_value(TraceId(9));
    /// let detached = ctx.without_cancel();
    /// cancel.cancel();
    /// assert!(ctx.is_done());
    /// assert!(!detached.is_done());
    /// assert_eq!(detached.value::<TraceId>(), Some(&TraceId(9)));
    /// ```
    #[must_use = "without_cancel returns a new context; the receiver is unchanged"]
    pub fn without_cancel(&self) -> Context {
        Context(Repr::Node(node::new_without_cancel(self.0.clone())))
    }

    /// Derives a context that is done with [`Error::DeadlineExceeded`] once
    /// `deadline` passes — promptly, whether or not anyone waits — or when
    /// cancelled (with [`Error::Canceled`]) or when this context is done,
    /// whichever comes first (Go's `WithDeadline`). One allocation, timer
    /// entry included.
    ///
    /// If this context's deadline is not after `deadline`, this is
    /// [`with_cancel`](Context::with_cancel). A deadline at or before now
    /// makes the context done before the call returns. Cancelling releases
    /// the timer at once, and so does dropping every handle.
    ///
    /// ```
    /// use goctx::{Context, Error};
    /// use std::time::{Duration, Instant};
    ///
    /// let (ctx, _cancel) = Context::background().with_deadline(Instant::now() + Duration::from_millis(5));
    /// ctx.done().wait();
    /// assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    /// ```
    #[must_use = "the derived context is dropped at once"]
    pub fn with_deadline(&self, deadline: Instant) -> (Context, CancelFunc) {
        self.deadline_node(deadline, || None, None)
    }

    /// Like [`with_deadline`](Context::with_deadline), recording `cause` when
    /// the deadline passes (Go's `WithDeadlineCause`). The cause is ignored
    /// when this context's deadline comes first (the child is then a plain
    /// `with_cancel` child), and cancelling through the returned handle still
    /// records [`Error::Canceled`].
    ///
    /// ```
    /// use goctx::Context;
    /// use std::time::Instant;
    ///
    /// let (ctx, _cancel) = Context::background()
    ///     .with_deadline_cause(Instant::now(), std::io::Error::other("too slow"));
    /// assert!(ctx.is_done());
    /// assert_eq!(ctx.cause().unwrap().to_string(), "too slow");
    /// ```
    #[must_use = "the derived context is dropped at once"]
    pub fn with_deadline_cause(
        &self,
        deadline: Instant,
        cause: impl Into<Cause>,
    ) -> (Context, CancelFunc) {
        self.deadline_node(deadline, || Some(cause.into()), None)
    }

    /// [`with_deadline`](Context::with_deadline)`(now + timeout)` (Go's
    /// `WithTimeout`). A timeout too large to add to now (such as
    /// `Duration::MAX`) means no deadline: the result is a plain
    /// [`with_cancel`](Context::with_cancel) child. `Duration::ZERO` is done
    /// at once.
    ///
    /// ```
    /// use goctx::{Context, Error};
    /// use std::time::Duration;
    ///
    /// let (ctx, cancel) = Context::background().with_timeout(Duration::from_secs(30));
    /// assert!(ctx.deadline().is_some());
    /// cancel.cancel(); // releases the timer
    /// assert_eq!(ctx.err(), Some(Error::Canceled));
    /// ```
    #[must_use = "the derived context is dropped at once"]
    pub fn with_timeout(&self, timeout: Duration) -> (Context, CancelFunc) {
        let now = Instant::now();
        match now.checked_add(timeout) {
            Some(deadline) => self.deadline_node(deadline, || None, Some(timeout)),
            None => self.with_cancel(),
        }
    }

    /// [`with_deadline_cause`](Context::with_deadline_cause)`(now + timeout,
    /// cause)` (Go's `WithTimeoutCause`); an overflowing timeout means no
    /// deadline, as in [`with_timeout`](Context::with_timeout).
    ///
    /// ```
    /// use goctx::{Context, Error};
    /// use std::time::Duration;
    ///
    /// let (ctx, _cancel) = Context::background()
    ///     .with_timeout_cause(Duration::from_millis(1), std::io::Error::other("slow backend"));
    /// ctx.done().wait();
    /// assert_eq!(ctx.err(), Some(Error::DeadlineExceeded));
    /// assert_eq!(ctx.cause().unwrap().to_string(), "slow backend");
    /// ```
    #[must_use = "the derived context is dropped at once"]
    pub fn with_timeout_cause(
        &self,
        timeout: Duration,
        cause: impl Into<Cause>,
    ) -> (Context, CancelFunc) {
        let now = Instant::now();
        match now.checked_add(timeout) {
            Some(deadline) => self.deadline_node(deadline, || Some(cause.into()), Some(timeout)),
            None => self.with_cancel(),
        }
    }

    /// `timeout`: `deadline` is a clock reading the caller took just before
    /// plus this (see `CancelNode::derive_deadline`).
    fn deadline_node(
        &self,
        deadline: Instant,
        cause: impl FnOnce() -> Option<Cause>,
        timeout: Option<Duration>,
    ) -> (Context, CancelFunc) {
        if self.deadline().is_some_and(|current| current <= deadline) {
            return self.with_cancel();
        }
        let node =
            CancelNode::derive_deadline(&self.0, 2, deadline, cause, timeout, &DEADLINE_TIMER);
        let [ctx, cancel] = handles(node);
        (Context(Repr::Node(ctx)), CancelFunc::new(cancel))
    }

    /// Arranges for `f` to run once this context is done, on a thread of its
    /// own (Go's `AfterFunc`): never on the thread that calls `cancel()`,
    /// never delaying it; promptly if the context is already done. `f` runs
    /// at most once. A blocking `f` delays no deadline, and no other
    /// callback while fewer than [`max_after_func_workers`](crate::max_after_func_workers)
    /// (512 by default) block: beyond that, callbacks queue until a worker
    /// thread is free. A panicking `f` is reported by the panic hook and
    /// contained.
    ///
    /// [`AfterFunc::stop`] prevents a pending `f`. On a context that can
    /// never be done, `f` never runs. The returned [`AfterFunc`] holds the
    /// context (as a `Done` does), so `f` runs when an ancestor cancels it
    /// even if every other handle was dropped; once the `AfterFunc` and every
    /// other handle are gone, the context is freed and a pending `f` is
    /// dropped unrun — unless a deadline is on its path, which will end it
    /// (then, as in Go, the pending `f` keeps the context until it runs).
    /// At most one allocation.
    ///
    /// ```
    /// use goctx::Context;
    /// use std::sync::mpsc;
    ///
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// let (tx, rx) = mpsc::channel();
    /// let _after = ctx.after_func(move || tx.send(std::thread::current().id()).unwrap());
    /// cancel.cancel();
    /// assert_ne!(rx.recv().unwrap(), std::thread::current().id());
    /// ```
    #[must_use = "keep the AfterFunc to stop f (dropping it does not stop f; bind it to `_f` to register and forget)"]
    pub fn after_func<F>(&self, f: F) -> AfterFunc
    where
        F: FnOnce() + Send + 'static,
    {
        AfterFunc::new(self.anchor_ptr(), f)
    }

    /// Runs `f` once this context is done, synchronously, on the thread
    /// that makes it done (C++'s `std::stop_callback`, .NET's
    /// `CancellationToken.Register`): inside `cancel()` — of this context or
    /// of an ancestor — before it returns, as a waker is woken; on the timer
    /// thread for a deadline; or at once, on this thread before `on_done`
    /// returns, if the context is already done. `f` runs at most once. Like
    /// [`Waker::wake`](core::task::Waker::wake), `f` must be short and must
    /// not block: it delays the cancellation that runs it. A panicking `f`
    /// is contained as a panicking waker is: the cancellation of the whole
    /// subtree completes (every other callback runs, every waiter is woken),
    /// then the panic resumes in the canceller; the timer thread survives
    /// it.
    ///
    /// Dropping the returned [`OnDone`] (or [`OnDone::stop`]) deregisters
    /// `f`, waiting for it if it is running on another thread, so what `f`
    /// uses may be freed right after; [`OnDone::detach`] keeps `f`
    /// registered. The `OnDone` holds the context (as a `Done` does), so
    /// `f` runs when an ancestor cancels it even if every other handle was
    /// dropped. On a context that can never be done, `f` never runs: it is
    /// dropped at once and nothing is allocated. Otherwise one allocation
    /// at most; registering and deregistering take no lock.
    ///
    /// ```
    /// use goctx::Context;
    /// use std::sync::mpsc;
    ///
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// let (tx, rx) = mpsc::channel();
    /// let _on_done = ctx.on_done(move || tx.send(std::thread::current().id()).unwrap());
    /// cancel.cancel();
    /// // Ran inside `cancel()`, on this thread.
    /// assert_eq!(rx.try_recv(), Ok(std::thread::current().id()));
    ///
    /// // Already done: runs before `on_done` returns.
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// ctx.on_done(move || tx.send("ran").unwrap()).detach();
    /// assert_eq!(rx.try_recv(), Ok("ran"));
    /// ```
    #[must_use = "dropping the OnDone stops f at once; call .detach() to keep f registered"]
    pub fn on_done<F>(&self, f: F) -> OnDone
    where
        F: FnOnce() + Send + 'static,
    {
        OnDone::new(self.anchor_ptr(), f)
    }

    /// A context that is done when this one or `other` is done, or when
    /// the returned [`CancelFunc`] is called, whichever comes first (C#'s
    /// linked token source, Folly's `CancellationToken::merge`, Go's
    /// `AfterFunc` merge example made native). It is a child of this
    /// context — its values are this context's only — that is also linked
    /// to `other`: its [`err`](Context::err) and [`cause`](Context::cause)
    /// come from the first of the three cancellations, its
    /// [`deadline`](Context::deadline) is the earlier of the two.
    ///
    /// Propagation from either parent is synchronous: when `other`'s
    /// `cancel()` returns, the merged context and its descendants are done
    /// and their waiters woken, exactly as for this context's `cancel()`.
    /// Dropping every handle on the merged context withdraws it from
    /// `other` as well as from this context, so merges that come and go
    /// under a long-lived `other` use bounded memory. If `other` can never
    /// be done, `merge` costs what [`with_cancel`](Context::with_cancel)
    /// costs (one allocation); if it is already done, so is the result.
    /// Display: this context's string followed by `.Merge(<other>)`.
    ///
    /// ```
    /// use goctx::{Cause, Context};
    ///
    /// let (server, shutdown) = Context::background().with_cancel_cause();
    /// let (client, _hang_up) = Context::background().with_cancel_cause();
    /// let (request, _cancel) = server.merge(&client);
    /// assert_eq!(
    ///     request.to_string(),
    ///     "context.Background.WithCancel.Merge(context.Background.WithCancel)"
    /// );
    /// shutdown.cancel(Cause::msg("shutting down"));
    /// assert!(request.is_done()); // before `cancel` returned
    /// assert_eq!(request.cause().unwrap().to_string(), "shutting down");
    /// assert!(!client.is_done());
    /// ```
    #[must_use = "the merged context is dropped at once"]
    pub fn merge(&self, other: &Context) -> (Context, CancelFunc) {
        let [ctx, cancel] = handles(crate::merge::derive(&self.0, &other.0));
        (Context(Repr::Node(ctx)), CancelFunc::new(cancel))
    }

    /// The earliest deadline on the path to the root, if any (Go's
    /// `Deadline`).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    ///
    /// let at = Instant::now() + Duration::from_secs(60);
    /// let (ctx, _cancel) = goctx::Context::background().with_deadline(at);
    /// let (child, _child_cancel) = ctx.with_timeout(Duration::from_secs(3600));
    /// assert_eq!(child.deadline(), Some(at)); // the parent's comes first
    /// assert_eq!(goctx::Context::background().deadline(), None);
    /// ```
    #[inline]
    pub fn deadline(&self) -> Option<Instant> {
        self.anchor().and_then(CancelNode::deadline)
    }

    /// A handle to wait on this context (Go's `Done`), borrowing it: making
    /// and dropping it costs no reference count and writes no shared memory,
    /// so `ctx.done()` in a loop (`select!` on it, `is_done()` on it) stays
    /// on the reader's cache line. It never completes for a context that
    /// can never be done. Allocates nothing. To store it, move it into a
    /// thread or spawn a task on it, use [`done_owned`](Context::done_owned).
    ///
    /// ```
    /// let (ctx, cancel) = goctx::Context::background().with_cancel();
    /// let done = ctx.done();
    /// cancel.cancel();
    /// done.wait();
    /// ```
    #[inline]
    #[must_use = "done() only makes a handle: wait on it or await it"]
    pub fn done(&self) -> Done<'_> {
        // SAFETY: the anchor lives as long as `self` (node invariants 2 and
        // 4), and the pointer is the one stored in the node.
        unsafe { Done::borrowed(self.0.anchor_ptr()) }
    }

    /// A `Done` that keeps this context's cancellable node alive by itself
    /// (one reference count), for storing it, moving it into a thread or
    /// spawning a task on it. Same as `ctx.done().into_owned()`. Allocates
    /// nothing.
    ///
    /// ```
    /// let (ctx, cancel) = goctx::Context::background().with_cancel();
    /// let done = ctx.done_owned();
    /// let waiter = std::thread::spawn(move || done.wait());
    /// cancel.cancel();
    /// waiter.join().unwrap();
    /// ```
    #[inline]
    #[must_use = "done_owned() only makes a handle: wait on it or await it"]
    pub fn done_owned(&self) -> Done<'static> {
        let anchor = NonNull::new(self.0.anchor_ptr().cast_mut());
        // SAFETY: the anchor lives as long as `self` (node invariant 4).
        Done::owned(anchor.map(|anchor| unsafe { NodeRef::acquire(anchor) }))
    }

    /// `None` while the context is running; afterwards why it is done
    /// (Go's `Err`). Never changes once set. One atomic load.
    ///
    /// ```
    /// let (ctx, cancel) = goctx::Context::background().with_cancel();
    /// assert_eq!(ctx.err(), None);
    /// cancel.cancel();
    /// assert_eq!(ctx.err(), Some(goctx::Error::Canceled));
    /// ```
    #[inline]
    pub fn err(&self) -> Option<Error> {
        self.anchor().and_then(CancelNode::err)
    }

    /// Whether the context is done (`err().is_some()`). One atomic load.
    ///
    /// ```
    /// let (ctx, cancel) = goctx::Context::background().with_cancel();
    /// assert!(!ctx.is_done());
    /// cancel.cancel();
    /// assert!(ctx.is_done());
    /// ```
    #[inline]
    pub fn is_done(&self) -> bool {
        self.anchor().is_some_and(CancelNode::is_done)
    }

    /// Why the context was cancelled (Go's `context.Cause`): `None` while it
    /// is running; the cause given to the winning cancellation, or its
    /// [`Error`] when none was given. Always from the same cancellation as
    /// [`err`](Context::err).
    ///
    /// ```
    /// use goctx::{Context, Error};
    ///
    /// let (ctx, cancel) = Context::background().with_cancel();
    /// cancel.cancel();
    /// assert_eq!(ctx.cause().unwrap().downcast_ref::<Error>(), Some(&Error::Canceled));
    /// ```
    pub fn cause(&self) -> Option<Cause> {
        self.anchor().and_then(CancelNode::cause)
    }

    /// The nearest value of type `T` on the path to the root (Go's `Value`).
    ///
    /// ```
    /// #[derive(Debug, PartialEq)]
    /// struct Locale(&'static str);
    ///
    /// let ctx = goctx::Context::background().with_value(Locale("fr"));
    /// let (child, _cancel) = ctx.with_cancel();
    /// assert_eq!(child.value::<Locale>(), Some(&Locale("fr")));
    /// assert_eq!(child.value::<u32>(), None);
    /// ```
    #[inline]
    pub fn value<T: 'static>(&self) -> Option<&T> {
        let mut current = Up::of(&self.0);
        while let Up::Node(node) = current {
            // SAFETY: `self` keeps every ancestor alive for its lifetime
            // (node invariant 2), so `node` lives as long as `&self`.
            if let Some(value) = unsafe { value_of::<T>(node.as_ptr()) } {
                return Some(value);
            }
            current = node.parent();
        }
        None
    }

    /// How many cancellable contexts are registered with this context's
    /// nearest cancellable ancestor-or-self for cancellation: derived, not
    /// yet cancelled and not yet dropped. Zero for contexts that can never
    /// be done, and once this context is done. A diagnostic (exact when no
    /// other thread is deriving or dropping under it), the observable behind
    /// Go's `TestCancelRemoves`.
    ///
    /// ```
    /// let (parent, cancel) = goctx::Context::background().with_cancel();
    /// let (child, child_cancel) = parent.with_cancel();
    /// assert_eq!(parent.registered_children(), 1);
    /// child_cancel.cancel();
    /// assert_eq!(parent.registered_children(), 0);
    /// drop((child, cancel));
    /// ```
    pub fn registered_children(&self) -> usize {
        self.anchor().map_or(0, CancelNode::registered_children)
    }

    /// Children entries still physically linked under this context's
    /// nearest cancellable ancestor-or-self, including dropped or cancelled
    /// ones awaiting amortised unlinking. Bounded by a constant factor of
    /// [`registered_children`](Context::registered_children) plus a small
    /// constant; a diagnostic for memory under churn.
    ///
    /// ```
    /// let (parent, _cancel) = goctx::Context::background().with_cancel();
    /// for _ in 0..1000 {
    ///     drop(parent.with_cancel());
    /// }
    /// assert!(parent.linked_children() < 100);
    /// ```
    pub fn linked_children(&self) -> usize {
        self.anchor().map_or(0, CancelNode::linked_children)
    }

    /// The nearest cancellable node (this one or an ancestor), if any.
    #[inline]
    pub(crate) fn anchor(&self) -> Option<&CancelNode> {
        self.0.anchor()
    }

    /// The anchor as the raw pointer stored in the node (see
    /// `Repr::anchor_ptr`).
    #[inline]
    pub(crate) fn anchor_ptr(&self) -> *const CancelNode {
        self.0.anchor_ptr().cast()
    }

    /// Go's `String()` segments, root first, built iteratively.
    fn name_segments(&self) -> Vec<String> {
        let mut segments = Vec::new();
        let mut current = Up::of(&self.0);
        loop {
            match current {
                Up::Background => segments.push("context.Background".to_owned()),
                Up::Todo => segments.push("context.TODO".to_owned()),
                Up::Node(node) => {
                    // Alive while `self` is (node invariant 2).
                    let header: &Node = node;
                    segments.push(match header.kind {
                        Kind::Cancel {
                            merged: Merged::Node,
                            ..
                        } => {
                            // SAFETY: the kind says the header starts a
                            // merged node; alive while `self` is.
                            let other = unsafe { crate::merge::other_of(node.as_ptr()) };
                            format!(".Merge({})", Context(other.clone()))
                        }
                        Kind::Cancel {
                            merged: Merged::Background,
                            ..
                        } => ".Merge(context.Background)".to_owned(),
                        Kind::Cancel {
                            merged: Merged::Todo,
                            ..
                        } => ".Merge(context.TODO)".to_owned(),
                        Kind::Cancel { .. } => {
                            // SAFETY: the kind says the header starts a
                            // `CancelNode`.
                            let node = unsafe { node.as_ptr().cast::<CancelNode>().as_ref() };
                            match node.deadline() {
                                Some(deadline) if node.is_timed() => {
                                    format!(".WithDeadline({})", display_deadline(deadline))
                                }
                                _ => ".WithCancel".to_owned(),
                            }
                        }
                        Kind::WithoutCancel => ".WithoutCancel".to_owned(),
                        Kind::Value(vtable) => {
                            format!(".WithValue({})", (vtable.type_name)())
                        }
                    });
                    current = header.parent();
                    continue;
                }
            }
            break;
        }
        segments.reverse();
        segments
    }
}

impl Default for Context {
    /// [`Context::background`].
    fn default() -> Context {
        Context::background()
    }
}

impl fmt::Display for Context {
    /// Go's `String()`: `context.Background.WithCancel.WithValue(my::Key)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for segment in self.name_segments() {
            f.write_str(&segment)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("name", &format_args!("{self}"))
            .field("err", &self.err())
            .finish()
    }
}

/// How the timer treats a deadline node: cancel.rs's operations on a
/// `CancelNode`, and the after-func pool for a last handle, which the timer
/// thread never drops itself (timer invariant 6).
static DEADLINE_TIMER: TimerOwner = CancelNode::timer_owner(drop_detached);

/// Drops `last` on an after-func worker.
fn drop_detached(last: NodeRef) {
    crate::after_func::run_detached(move || drop(last));
}

/// The two handles a node derived with two handles starts with.
fn handles(node: NonNull<CancelNode>) -> [NodeRef; 2] {
    // SAFETY: the node was derived with two handles, now ours: one for the
    // context, one for its cancel handle.
    unsafe {
        [
            NodeRef::from_raw(node.cast()),
            NodeRef::from_raw(node.cast()),
        ]
    }
}

/// Go's `deadline.String() + " [" + time.Until(deadline).String() + "]"`:
/// the deadline as UTC wall-clock time, then the time remaining (negative
/// once passed).
fn display_deadline(deadline: Instant) -> String {
    let now = Instant::now();
    let wall = SystemTime::now();
    let (at, remaining) = match deadline.checked_duration_since(now) {
        Some(left) => (wall.checked_add(left), format!("{left:?}")),
        None => {
            let late = now - deadline;
            (wall.checked_sub(late), format!("-{late:?}"))
        }
    };
    let at = at
        .and_then(|at| at.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or_else(|| "?".to_owned(), format_utc);
    format!("{at} [{remaining}]")
}

/// `YYYY-MM-DD hh:mm:ss.nnnnnnnnn +0000 UTC` for a time since the Unix epoch.
fn format_utc(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:09} +0000 UTC",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        since_epoch.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::format_utc;
    use std::time::Duration;

    #[test]
    fn utc_format_matches_known_dates() {
        assert_eq!(
            format_utc(Duration::ZERO),
            "1970-01-01 00:00:00.000000000 +0000 UTC"
        );
        // 2009-11-10 23:00:00 UTC, Go's playground time.
        assert_eq!(
            format_utc(Duration::from_secs(1_257_894_000)),
            "2009-11-10 23:00:00.000000000 +0000 UTC"
        );
        assert_eq!(
            format_utc(Duration::new(951_782_400, 5)),
            "2000-02-29 00:00:00.000000005 +0000 UTC"
        );
    }
}
