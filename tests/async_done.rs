//! `Done` as a `Future`: on a hand-written executor, on tokio, under
//! `select!`, and the waiter bookkeeping of futures that are dropped early.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::task::{Context as TaskContext, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use goctx::{Context, Done, Error};

/// The longest any test is willing to wait before calling it a lost wake-up.
/// A guard against hangs, not a speed bound (miri runs ~1000× slower).
// A hang guard only: generous, because valgrind and sanitizers run 20-100x
// slower and one thread at a time (CI, issue 12).
const QUIESCENT: Duration = Duration::from_secs(if cfg!(miri) { 600 } else { 120 });

/// Wakes a parked thread.
struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// A minimal executor: polls `future` on this thread, parking between
/// polls, and gives up at `deadline` (`None` means the future was never
/// woken into completion in time).
fn block_on_until<F: Future>(future: F, deadline: Instant) -> Option<F::Output> {
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut task = TaskContext::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut task) {
            return Some(output);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::park_timeout(deadline - now);
    }
}

/// A waker that counts its wake-ups.
#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl CountingWaker {
    fn wakes(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn poll_once(done: &mut Done, waker: &Waker) -> Poll<()> {
    Pin::new(done).poll(&mut TaskContext::from_waker(waker))
}

#[derive(Debug)]
struct RequestId(usize);

#[test]
fn done_resolves_on_a_hand_written_executor() {
    let (parent, cancel) = Context::background().with_cancel();
    let child = parent.with_value(RequestId(1));
    let canceller = thread::spawn(move || {
        thread::sleep(Duration::from_millis(5));
        cancel.cancel();
    });

    let woken = block_on_until(child.done(), Instant::now() + QUIESCENT);

    assert_eq!(woken, Some(()), "the cancel never woke the executor");
    assert_eq!(child.err(), Some(Error::Canceled));
    assert_eq!(child.value::<RequestId>().map(|id| id.0), Some(1));
    canceller.join().expect("cancel does not panic");

    // Already done: ready on the first poll.
    assert_eq!(
        block_on_until(parent.done(), Instant::now() + QUIESCENT),
        Some(())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_resolve_after_one_cancel() {
    const TASKS: usize = 300;
    let (root, cancel) = Context::background().with_cancel();
    let pending = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            // Wait on the root itself, on a value child and on a
            // cancellable child: one cancel reaches all of them.
            let ctx = match i % 3 {
                0 => root.clone(),
                1 => root.with_value(RequestId(i)),
                _ => root.with_cancel().0,
            };
            let pending = Arc::clone(&pending);
            tokio::spawn(async move {
                let mut done = ctx.done();
                // Register with the context before the cancel happens.
                let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut done).poll(cx)));
                assert!(first.await.is_pending(), "done before the cancel");
                pending.fetch_add(1, Ordering::SeqCst);
                done.await;
                if i % 3 == 1 {
                    assert_eq!(ctx.value::<RequestId>().map(|id| id.0), Some(i));
                }
                ctx.err()
            })
        })
        .collect();

    tokio::time::timeout(QUIESCENT, async {
        while pending.load(Ordering::SeqCst) < TASKS {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("every task polls its Done once");

    cancel.cancel();

    for (i, task) in tasks.into_iter().enumerate() {
        let err = tokio::time::timeout(QUIESCENT, task)
            .await
            .unwrap_or_else(|_| panic!("task {i} never woken"))
            .expect("task does not panic");
        assert_eq!(err, Some(Error::Canceled), "task {i}");
    }
}

#[test]
fn dropped_future_leaves_no_waiter_behind() {
    let (ctx, cancel) = Context::background().with_cancel();
    let dropped = Arc::new(CountingWaker::default());
    let dropped_waker = Waker::from(Arc::clone(&dropped));
    let kept = Arc::new(CountingWaker::default());
    let kept_waker = Waker::from(Arc::clone(&kept));

    for _ in 0..100 {
        let mut done = ctx.done();
        assert_eq!(poll_once(&mut done, &dropped_waker), Poll::Pending);
        drop(done);
    }
    let mut survivor = ctx.done();
    assert_eq!(poll_once(&mut survivor, &kept_waker), Poll::Pending);
    // The dropped futures gave their waker clones back: only the test's own
    // two references remain.
    assert_eq!(Arc::strong_count(&dropped), 2);

    cancel.cancel();

    assert_eq!(dropped.wakes(), 0, "a dropped future was woken");
    assert!(kept.wakes() >= 1, "the live future was not woken");
    assert_eq!(poll_once(&mut survivor, &kept_waker), Poll::Ready(()));
    // Nothing hangs afterwards: new waits on the context complete.
    assert!(ctx.done().wait_timeout(Duration::ZERO));
    assert_eq!(
        block_on_until(ctx.done(), Instant::now() + QUIESCENT),
        Some(())
    );
}

/// Waiter entries are reused (API rule 13: a thread keeps spares): an entry
/// that was notified, one withdrawn at the head of the list and one
/// withdrawn behind another entry each serve a later future on another
/// context, which is woken exactly once, while none of the earlier wakers
/// is woken again or kept.
#[test]
fn reused_waiter_entries_wake_only_their_new_future() {
    let first = Arc::new(CountingWaker::default());
    let first_waker = Waker::from(Arc::clone(&first));
    // Notified, then dropped without a second poll.
    let (a, cancel_a) = Context::background().with_cancel();
    let mut notified = a.done();
    assert_eq!(poll_once(&mut notified, &first_waker), Poll::Pending);
    cancel_a.cancel();
    assert_eq!(first.wakes(), 1);
    drop(notified);

    // Withdrawn behind a later entry (left linked, marked), and at the
    // head (unlinked at once).
    let (b, cancel_b) = Context::background().with_cancel();
    let withdrawn = Arc::new(CountingWaker::default());
    let withdrawn_waker = Waker::from(Arc::clone(&withdrawn));
    let mut behind = b.done();
    let mut ahead = b.done();
    assert_eq!(poll_once(&mut behind, &withdrawn_waker), Poll::Pending);
    assert_eq!(poll_once(&mut ahead, &withdrawn_waker), Poll::Pending);
    drop(behind);
    drop(ahead);
    for _ in 0..10 {
        let mut done = b.done();
        assert_eq!(poll_once(&mut done, &withdrawn_waker), Poll::Pending);
    }

    // New futures on a third context, on this thread's reused entries, and
    // one moved to another thread to be dropped there.
    let (c, cancel_c) = Context::background().with_cancel();
    let later: Vec<_> = (0..3).map(|_| Arc::new(CountingWaker::default())).collect();
    let mut futures: Vec<_> = later
        .iter()
        .map(|waker| {
            let mut done = c.done_owned();
            let waker = Waker::from(Arc::clone(waker));
            assert_eq!(poll_once(&mut done, &waker), Poll::Pending);
            done
        })
        .collect();
    let moved = futures.pop().unwrap();
    thread::spawn(move || drop(moved)).join().unwrap();
    cancel_b.cancel();
    cancel_c.cancel();
    assert_eq!(first.wakes(), 1, "a notified entry's old waker woke again");
    assert_eq!(withdrawn.wakes(), 0, "a withdrawn future was woken");
    assert_eq!(later[0].wakes(), 1);
    assert_eq!(later[1].wakes(), 1);
    assert_eq!(
        later[2].wakes(),
        0,
        "the future dropped on another thread was woken"
    );
    for waker in [&first, &withdrawn] {
        // No entry, spare or linked, still holds a clone of an old waker.
        assert_eq!(Arc::strong_count(waker), 2);
    }
    for mut done in futures {
        assert_eq!(poll_once(&mut done, Waker::noop()), Poll::Ready(()));
    }
    drop((a, b));
}

#[test]
fn dropping_futures_while_cancelling_never_hangs() {
    let (ctx, cancel) = Context::background().with_cancel();
    let (finished, threads_finished) = mpsc::channel();
    const THREADS: usize = 3;
    for _ in 0..THREADS {
        let ctx = ctx.clone();
        let finished = finished.clone();
        thread::spawn(move || {
            let waker = Waker::from(Arc::new(CountingWaker::default()));
            // Register and withdraw until the cancel lands, yielding now
            // and then: a scheduler that runs one thread at a time
            // (valgrind, miri) must still get to the cancelling thread.
            let mut polls = 0u32;
            while poll_once(&mut ctx.done(), &waker).is_pending() {
                polls += 1;
                if polls.is_multiple_of(64) {
                    thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            finished.send(()).expect("the test is listening");
        });
    }
    thread::sleep(Duration::from_millis(2));

    cancel.cancel();

    for _ in 0..THREADS {
        threads_finished
            .recv_timeout(QUIESCENT)
            .expect("a polling thread never saw the cancel");
    }
    assert_eq!(
        block_on_until(ctx.done(), Instant::now() + QUIESCENT),
        Some(())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_between_done_and_sleep() {
    let (ctx, cancel) = Context::background().with_cancel();

    tokio::select! {
        _ = ctx.done() => panic!("done before any cancel"),
        _ = tokio::time::sleep(Duration::from_millis(5)) => {}
    }

    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        cancel.cancel();
    });
    tokio::select! {
        _ = ctx.done() => {}
        _ = tokio::time::sleep(QUIESCENT) => panic!("the cancel never woke the select"),
    }
    assert_eq!(ctx.err(), Some(Error::Canceled));
    canceller.await.expect("cancel does not panic");

    // Already done: a biased select takes the done branch first.
    tokio::select! {
        biased;
        _ = ctx.done() => {}
        _ = std::future::ready(()) => panic!("done branch not ready"),
    }
}

#[test]
fn repolling_after_ready_stays_ready() {
    let waker = Waker::noop();

    // Registered as a waiter first, then cancelled.
    let (ctx, cancel) = Context::background().with_cancel();
    let mut done = ctx.done();
    assert_eq!(poll_once(&mut done, waker), Poll::Pending);
    cancel.cancel();
    for _ in 0..3 {
        assert_eq!(poll_once(&mut done, waker), Poll::Ready(()));
    }

    // Done before the first poll.
    let mut late = ctx.done();
    for _ in 0..3 {
        assert_eq!(poll_once(&mut late, waker), Poll::Ready(()));
    }
}

#[test]
fn done_of_a_never_done_context_stays_pending() {
    let waker = Waker::noop();
    let (parent, cancel) = Context::background().with_cancel();
    let detached = parent.without_cancel();
    cancel.cancel();
    for ctx in [
        Context::background(),
        Context::todo(),
        Context::background().with_value(RequestId(1)),
        detached.clone(),
        detached.with_value(RequestId(2)),
    ] {
        let mut done = ctx.done();
        assert_eq!(poll_once(&mut done, waker), Poll::Pending, "{ctx}");
        assert_eq!(poll_once(&mut done, waker), Poll::Pending, "{ctx}");
        assert!(!done.is_done(), "{ctx}");
    }
}
