//! Loom models of the list: each races two operations on a list of two or
//! three [`TrackedEntry`](crate::list::tracked::TrackedEntry)s, whose
//! `link()` fails if the list reads an entry after its last reference is
//! gone (at once, or as a loom causality violation when the read and the
//! free are unordered). Under loom `CLEANUP_MIN` is 1, so every removal of
//! an entry that is not the head runs a cleanup pass.
//!
//! `release_link` asserts that no link reference is released twice. That
//! none is lost is checked by the unit tests and the fuzz target, where
//! nothing is deferred: here a release deferred through the epoch may run
//! only when the model's collector is torn down, after the model's checks.
//!
//! `pass_races_close` and `pass_races_head_unlink` (and
//! `pass_races_lone_head_unlink`, invariant 9's unlink) are the
//! store-buffer cases of list invariants 5 and 6, and `sweep_races_remove` covers the
//! same pattern between two passes. Each fails (a loom causality violation
//! on the entry's `freed` flag: the pass reads the entry while the closer
//! or the remover frees it) when the releasing side's fence is deleted:
//! `close`'s, `remove`'s after the head unlink, or the sweep's before its
//! `cleaners == 1` check. The pass's own side is fenced twice — the fence
//! in `enter_pass` and the SeqCst fence inside crossbeam-epoch's `pin()`
//! that follows it — so deleting `enter_pass`'s alone stays invisible here
//! (it is kept: off loom, crossbeam's x86 `pin()` uses a SeqCst CAS in
//! place of the fence, which the language's memory model does not count
//! as one).

use std::cell::Cell;
use std::time::Instant;

use loom::sync::Arc;
use loom::thread;

use crate::list::tracked::{Owner, TrackedList};

/// Runs `f` under `loom::model` and prints how many schedules it explored
/// and how long that took.
fn model(name: &str, f: impl Fn() + Sync + Send + 'static) {
    // The count lives outside the model, which must not see it (a loom
    // atomic cannot outlive one execution, and a std one would be an
    // atomic loom does not model): loom runs every execution of a model
    // on the thread that called `loom::model`, so a plain thread-local
    // counter, per test thread and hence per model, is enough.
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
        "loom model list::{name}: {} iterations in {:.2?}",
        RUNS.with(Cell::get),
        start.elapsed()
    );
}

/// A list holding entries `0..n` (head `n - 1`), and their owners.
fn filled(n: u64) -> (Arc<TrackedList>, Vec<Owner>) {
    filled_in(TrackedList::new(), n)
}

/// `list`, filled with entries `0..n`.
fn filled_in(list: TrackedList, n: u64) -> (Arc<TrackedList>, Vec<Owner>) {
    let list = Arc::new(list);
    let owners = (0..n).map(|id| list.push(id).expect("open")).collect();
    (list, owners)
}

/// The ids `close` found live (not removed), head first.
fn live(closed: &[(u64, bool)]) -> Vec<u64> {
    closed
        .iter()
        .filter(|&&(_, removed)| !removed)
        .map(|&(id, _)| id)
        .collect()
}

/// A push racing the close: the entry is either refused or handed to the
/// closer, never lost.
#[test]
fn push_races_close() {
    model("push_races_close", || {
        let (list, owners) = filled(1);
        let pusher = thread::spawn({
            let list = Arc::clone(&list);
            move || list.push(1)
        });
        let closed = list.close();
        let pushed = pusher.join().unwrap();
        match &pushed {
            Some(_) => assert_eq!(closed, [(1, false), (0, false)]),
            None => assert_eq!(closed, [(0, false)]),
        }
        assert!(list.push(2).is_none());
        drop((owners, pushed));
    });
}

/// A push moves the head while its old head is removed: the remover's head
/// CAS fails and it falls back to marking and a cleanup pass.
#[test]
fn push_races_head_removal() {
    model("push_races_head_removal", || {
        let (list, mut owners) = filled(2);
        let pusher = thread::spawn({
            let list = Arc::clone(&list);
            move || list.push(2).expect("open")
        });
        let head = owners.pop().expect("two entries");
        assert!(list.remove(&head));
        let pushed = pusher.join().unwrap();
        assert_eq!(list.live_ids(), [2, 0]);
        drop(head);
        assert_eq!(live(&list.close()), [2, 0]);
        drop((owners, pushed));
    });
}

/// A timer-style sweep claiming an entry races its owner's removal (and the
/// owner's cleanup pass: two passes overlap, so unlinked entries go through
/// the epoch). A claim is not exclusive (the timer arbitrates with its entry
/// state CAS, timer invariant 1): the claim closure may run for an entry
/// whose remover marks it first. The list's part is that at least one of
/// them sees the entry, that it is unlinked once, and that the rest of the
/// list is untouched.
#[test]
fn sweep_races_remove() {
    model("sweep_races_remove", || {
        let (list, mut owners) = filled_in(TrackedList::swept(usize::MAX), 2);
        let inner = owners.remove(0);
        let sweeper = thread::spawn({
            let list = Arc::clone(&list);
            move || list.sweep(|id| id == 0)
        });
        let removed = list.remove(&inner);
        drop(inner);
        let claimed = sweeper.join().unwrap();
        assert!(removed || !claimed.is_empty(), "the entry was lost");
        assert_eq!(list.live_ids(), [1]);
        assert_eq!(live(&list.close()), [1]);
        drop((owners, claimed));
    });
}

/// `n` entries; the first pushed (id 0, not the head) is removed on another
/// thread (a mark and a cleanup pass) while this one closes the list with
/// `close`. The other entries are held by their links alone. Returns what
/// the close yielded and whether the removal succeeded.
fn close_races_inner_removal(
    n: u64,
    close: fn(&TrackedList) -> Vec<(u64, bool)>,
) -> (Vec<(u64, bool)>, bool) {
    let (list, mut owners) = filled(n);
    let inner = owners.remove(0);
    drop(owners);
    let remover = thread::spawn({
        let list = Arc::clone(&list);
        move || list.remove(&inner)
    });
    let closed = close(&list);
    (closed, remover.join().unwrap())
}

/// A removal (and its cleanup pass) racing the close; list invariant 5, the
/// store-buffer case. Exactly one of the remover and the closer decides the
/// removed entry's fate. And the closer reads `cleaners` after its swap
/// while the pass reads the head after counting itself: with the fences,
/// either the pass finds the list closed or the closer sees it counted and
/// defers; without them both can read the old value, and the closer frees
/// the head entry (whose owner is gone) while the pass reads it.
#[test]
fn pass_races_close() {
    model("pass_races_close", || {
        let (closed, removed) = close_races_inner_removal(2, TrackedList::close);
        assert_eq!(closed[0], (1, false));
        if removed {
            // Removed first: the closer saw it marked, or the pass unlinked
            // it before the swap.
            assert!(closed.len() == 1 || closed[1] == (0, true), "{closed:?}");
        } else {
            assert_eq!(closed[1], (0, false), "frozen by the closer");
        }
    });
}

/// `n` entries; the head's owner removes it on another thread and lets go
/// at once, while this one removes the first pushed (id 0, not the head: a
/// mark and a cleanup pass). Both succeed. Returns the list and the owners
/// of the entries between.
fn head_removal_races_inner_removal(n: u64) -> (Arc<TrackedList>, Vec<Owner>) {
    let (list, mut owners) = filled(n);
    let head = owners.pop().expect("a head");
    let inner = owners.remove(0);
    let remover = thread::spawn({
        let list = Arc::clone(&list);
        move || list.remove(&head)
    });
    assert!(list.remove(&inner));
    drop(inner);
    assert!(remover.join().unwrap());
    (list, owners)
}

/// List invariant 6, the store-buffer case: the remover of the head unlinks
/// it and reads `cleaners` after its CAS; a pass started by the removal of
/// an inner entry reads the head after counting itself. With the fences,
/// either the pass no longer finds the entry or the remover sees the pass
/// and defers; without them the remover frees the entry under the pass.
/// (The head unlink may also race the pass's own CAS on the head.)
#[test]
fn pass_races_head_unlink() {
    model("pass_races_head_unlink", || {
        let (list, middle) = head_removal_races_inner_removal(3);
        assert_eq!(list.live_ids(), [1]);
        assert_eq!(live(&list.close()), [1]);
        drop(middle);
    });
}

/// `pass_races_close` with the walk a cancellation uses on child lists
/// (`Chain::next_entry_unfrozen`): no freeze while no pass is counted, so a
/// removal racing the walk may be read either way; what must hold is that
/// no pass unlinks (and frees) an entry the walk is about to read. Either
/// the closer sees the pass counted and freezes as `close` does, or the
/// pass finds the list closed and touches nothing.
#[test]
fn pass_races_unfrozen_close() {
    model("pass_races_unfrozen_close", || {
        let (closed, removed) = close_races_inner_removal(3, TrackedList::close_unfrozen);
        assert!(removed, "nobody else removes it");
        assert_eq!(closed[..2], [(2, false), (1, false)]);
        assert!(closed.len() == 2 || closed[2].0 == 0, "{closed:?}");
    });
}

/// List invariant 9: the remover of a lone head unlinks it with one CAS,
/// marking it only after, while the list is closed. The head word orders the two: the
/// closer finds the list empty, or the remover's CAS fails and it marks,
/// racing the closer's freeze as any remover does (invariant 2). Nobody
/// reads the entry after its owner lets go.
#[test]
fn lone_head_removal_races_close() {
    model("lone_head_removal_races_close", || {
        let (closed, removed) = close_races_inner_removal(1, TrackedList::close);
        if removed {
            assert!(closed.is_empty() || closed == [(0, true)], "{closed:?}");
        } else {
            assert_eq!(closed, [(0, false)], "frozen by the closer");
        }
    });
}

/// `lone_head_removal_races_close` with the unfrozen walk: the removal
/// always succeeds, and the walk finds the list empty or reads the entry
/// either way.
#[test]
fn lone_head_removal_races_unfrozen_close() {
    model("lone_head_removal_races_unfrozen_close", || {
        let (closed, removed) = close_races_inner_removal(1, TrackedList::close_unfrozen);
        assert!(removed, "nobody else removes it");
        assert!(
            closed.len() <= 1 && closed.iter().all(|&(id, _)| id == 0),
            "{closed:?}"
        );
    });
}

/// List invariants 6 and 9: the head's successor is removed (a mark and a
/// cleanup pass, which unlinks it from the head's `next`) while the head's
/// owner removes the head: it finds a successor and marks, or finds `next`
/// null and unlinks the lone head before marking it, reading `cleaners` after its
/// CAS either way.
#[test]
fn pass_races_lone_head_unlink() {
    model("pass_races_lone_head_unlink", || {
        let (list, _) = head_removal_races_inner_removal(2);
        assert!(list.live_ids().is_empty());
        assert!(live(&list.close()).is_empty());
    });
}
