//! The list alone: unit tests (single-threaded walks through every path,
//! and a small multi-threaded churn) and, under `--cfg loom`, models of
//! push, remove, close and sweep racing each other. Entries are
//! [`TrackedEntry`](super::tracked::TrackedEntry)s, which fail on any read
//! the list makes of an entry after its last reference is gone.
//!
//! The loom models run with
//! `RUSTFLAGS="--cfg loom --cfg crossbeam_loom" LOOM_MAX_PREEMPTIONS=2
//! cargo test --release --lib --target-dir target/loom list::`.

#[cfg(not(loom))]
mod unit {
    use super::super::CLEANUP_MIN;
    use super::super::tracked::{Owner, TrackedList};

    /// Pushes ids `0..n` (so the head is `n - 1`).
    fn filled(list: &TrackedList, n: u64) -> Vec<Owner> {
        (0..n).map(|id| list.push(id).expect("open list")).collect()
    }

    #[test]
    fn push_links_at_the_head() {
        let list = TrackedList::new();
        assert!(list.is_empty());
        let owners = filled(&list, 3);
        assert_eq!(list.live_ids(), [2, 1, 0]);
        assert_eq!(list.linked(), 3);
        assert!(!list.is_empty());
        assert!(owners.iter().all(Owner::is_linked));
    }

    #[test]
    fn close_yields_every_entry_head_first_and_releases_it() {
        let list = TrackedList::new();
        let owners = filled(&list, 4);
        let watches: Vec<_> = owners.iter().map(Owner::watch).collect();
        assert_eq!(
            list.close(),
            [(3, false), (2, false), (1, false), (0, false)]
        );
        assert!(list.is_closed() && list.is_empty());
        assert!(owners.iter().all(|owner| !owner.is_linked()));
        assert!(
            !watches.iter().any(|w| w.is_freed()),
            "owners still hold them"
        );
        drop(owners);
        assert!(watches.iter().all(|w| w.is_freed()));
        // Only the first close gets the entries.
        assert_eq!(list.close(), []);
    }

    #[test]
    fn unfrozen_walk_yields_what_a_frozen_one_does() {
        for unfrozen in [false, true] {
            let list = TrackedList::with_cleanup_min(usize::MAX);
            let owners = filled(&list, 5);
            let watches: Vec<_> = owners.iter().map(Owner::watch).collect();
            // Removed behind the head: marked, still linked.
            assert!(list.remove(&owners[1]) && list.remove(&owners[3]));
            let walked = if unfrozen {
                list.close_unfrozen()
            } else {
                list.close()
            };
            assert_eq!(
                walked,
                [(4, false), (3, true), (2, false), (1, true), (0, false)],
                "unfrozen: {unfrozen}"
            );
            drop(owners);
            assert!(watches.iter().all(|w| w.is_freed()), "unfrozen: {unfrozen}");
        }
    }

    #[test]
    fn close_if_empty_closes_only_an_empty_list() {
        let list = TrackedList::new();
        let owner = list.push(1).expect("open list");
        assert!(!list.close_if_empty(), "an entry is linked");
        assert!(!list.is_closed());
        assert!(list.remove(&owner));
        drop(owner);
        assert!(list.is_empty());
        assert!(list.close_if_empty());
        assert!(list.is_closed());
        assert!(list.push(2).is_none(), "closed for good");
        assert!(list.close_if_empty(), "already closed");
        assert_eq!(list.close(), []);
    }

    #[test]
    fn push_after_close_is_refused_and_frees_the_entry() {
        let list = TrackedList::new();
        assert_eq!(list.close(), []);
        assert!(list.push(7).is_none());
        assert_eq!(list.linked(), 0);
    }

    #[test]
    fn removing_the_head_unlinks_it_at_once() {
        let list = TrackedList::new();
        let mut owners = filled(&list, 3);
        let head = owners.pop().expect("three entries");
        let watch = head.watch();
        assert!(list.remove(&head));
        assert!(!head.is_linked(), "the remover of the head unlinks it");
        assert_eq!(list.linked(), 2);
        assert_eq!(list.live_ids(), [1, 0]);
        drop(head);
        assert!(watch.is_freed());
        // LIFO churn: each removal takes the head, nothing waits for a pass.
        while let Some(owner) = owners.pop() {
            assert!(list.remove(&owner));
            assert!(!owner.is_linked());
        }
        assert_eq!(list.linked(), 0);
    }

    #[test]
    fn removing_twice_is_false() {
        for list in [TrackedList::new(), TrackedList::swept(usize::MAX)] {
            let owners = filled(&list, 2);
            // Inside the list, then at the head with a (removed) successor.
            assert!(list.remove(&owners[0]));
            assert!(!list.remove(&owners[0]));
            assert!(list.remove(&owners[1]));
            assert!(!list.remove(&owners[1]));
            assert!(list.close().iter().all(|&(_, removed)| removed));
        }
        // A lone head: unlinked by one CAS, marked after (invariant 9).
        let list = TrackedList::new();
        let lone = list.push(0).expect("open");
        assert!(list.remove(&lone));
        assert!(!list.remove(&lone));
        assert!(list.close().is_empty());
    }

    #[test]
    fn removing_inside_the_list_marks_and_a_pass_unlinks() {
        let list = TrackedList::new();
        let owners = filled(&list, 3);
        assert!(list.remove(&owners[1]));
        // Below the threshold: still linked, no longer live.
        assert!(owners[1].is_linked());
        assert_eq!(list.linked(), 3);
        assert_eq!(list.live_ids(), [2, 0]);
        list.cleanup();
        assert!(!owners[1].is_linked());
        assert_eq!(list.linked(), 2);
        assert_eq!(list.live_ids(), [2, 0]);
    }

    #[test]
    fn a_pass_unlinks_runs_of_removed_entries() {
        // Runs at the head, inside and at the tail, with live entries
        // between them: head 9 .. tail 0.
        let list = TrackedList::new();
        let owners = filled(&list, 10);
        let removed = [9, 8, 6, 5, 4, 2, 1, 0];
        for &id in &removed[2..] {
            assert!(list.remove(&owners[id]));
        }
        assert_eq!(list.linked(), 10);
        // 9 is the head: unlinked at once; then 8 is.
        assert!(list.remove(&owners[9]));
        assert!(list.remove(&owners[8]));
        assert_eq!(list.linked(), 8);
        list.cleanup();
        assert_eq!(list.linked(), 2);
        assert_eq!(list.live_ids(), [7, 3]);
        for (id, owner) in owners.iter().enumerate() {
            assert_eq!(owner.is_linked(), !removed.contains(&id), "entry {id}");
        }
    }

    #[test]
    fn removals_clean_up_once_the_threshold_is_reached() {
        let min = 4;
        let list = TrackedList::with_cleanup_min(min);
        let owners = filled(&list, 2 * min as u64 + 1);
        // The tail entries: never the head, so each waits for a pass.
        for owner in &owners[..min - 1] {
            assert!(list.remove(owner));
        }
        assert_eq!(list.linked(), owners.len(), "below the threshold");
        assert!(list.remove(&owners[min - 1]));
        assert_eq!(list.linked(), owners.len() - min, "the pass unlinked them");
        assert!(owners[..min].iter().all(|owner| !owner.is_linked()));
    }

    #[test]
    fn the_threshold_follows_the_live_length() {
        // A pass sets the next threshold to half the live entries it walked
        // past (at least the minimum).
        let list = TrackedList::new();
        let n = 4 * CLEANUP_MIN as u64;
        let owners = filled(&list, n);
        // The first pass runs at the minimum and walks past the rest.
        for owner in &owners[..CLEANUP_MIN] {
            assert!(list.remove(owner));
        }
        let live = (n as usize) - CLEANUP_MIN;
        assert_eq!(list.linked(), live);
        // The next one waits for `live / 2` removals.
        let next = live / 2;
        for owner in &owners[CLEANUP_MIN..CLEANUP_MIN + next - 1] {
            assert!(list.remove(owner));
        }
        assert_eq!(list.linked(), live, "one removal short of the threshold");
        assert!(list.remove(&owners[CLEANUP_MIN + next - 1]));
        assert_eq!(list.linked(), live - next);
    }

    #[test]
    fn close_reports_removed_but_linked_entries_and_freezes_the_rest() {
        let list = TrackedList::new();
        let owners = filled(&list, 3);
        assert!(list.remove(&owners[1]));
        assert_eq!(list.close(), [(2, false), (1, true), (0, false)]);
        // Frozen by the closer: a later remove loses.
        assert!(!list.remove(&owners[0]));
        assert!(!list.remove(&owners[2]));
        assert!(owners.iter().all(|owner| !owner.is_linked()));
    }

    #[test]
    fn a_dropped_chain_releases_what_it_did_not_yield() {
        let list = TrackedList::new();
        let owners = filled(&list, 3);
        let watches: Vec<_> = owners.iter().map(Owner::watch).collect();
        drop(owners);
        list.close_and_drop();
        assert!(watches.iter().all(|w| w.is_freed()));
    }

    #[test]
    fn sweep_claims_live_entries_and_unlinks_them_with_the_removed() {
        let list = TrackedList::swept(usize::MAX);
        let owners = filled(&list, 6);
        assert!(list.remove(&owners[3]));
        let claimed = list.sweep(|id| id % 2 == 0);
        let mut ids: Vec<_> = claimed.iter().map(Owner::id).collect();
        ids.sort();
        assert_eq!(ids, [0, 2, 4]);
        assert_eq!(list.live_ids(), [5, 1]);
        assert_eq!(list.linked(), 2);
        // A claimed entry is removed: its owner's remove loses.
        assert!(!list.remove(&owners[4]));
        // The claim keeps the entry alive after its owner and link are gone.
        let watch = claimed[0].watch();
        drop(owners);
        assert!(!watch.is_freed());
        drop(claimed);
        assert!(watch.is_freed());
    }

    #[test]
    fn sweep_of_a_closed_list_claims_nothing() {
        let list = TrackedList::swept(usize::MAX);
        let _owners = filled(&list, 2);
        list.close();
        assert!(list.sweep(|_| true).is_empty());
    }

    #[test]
    fn every_entry_is_freed_once_its_owner_and_link_are_gone() {
        let list = TrackedList::with_cleanup_min(2);
        let owners = filled(&list, 20);
        let watches: Vec<_> = owners.iter().map(Owner::watch).collect();
        for (i, owner) in owners.into_iter().enumerate() {
            if i % 3 != 0 {
                assert!(list.remove(&owner));
            }
        }
        list.close();
        assert!(watches.iter().all(|w| w.is_freed()));
    }

    /// Two threads each push an entry and remove it again, as children of
    /// one parent come and go (`tests/churn.rs`): removals race at the head
    /// (immediate release by the remover) and inside (cleanup passes).
    #[test]
    fn two_threads_push_and_remove_their_own_entries() {
        use std::sync::Barrier;
        let rounds = if cfg!(miri) { 400 } else { 20_000 };
        let list = TrackedList::with_cleanup_min(2);
        let barrier = Barrier::new(2);
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let (list, barrier) = (&list, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    for i in 0..rounds {
                        let owner = list.push(t * 1_000_000 + i).expect("open");
                        if i % 3 == 0 {
                            let second = list.push(t * 1_000_000 + i + 500_000).expect("open");
                            assert!(list.remove(&second));
                        }
                        assert!(list.remove(&owner));
                    }
                });
            }
        });
        list.cleanup();
        assert_eq!(list.linked(), 0);
    }

    #[test]
    #[should_panic(expected = "not built by `List::swept`")]
    fn sweep_of_a_list_not_built_for_it_panics() {
        let list = TrackedList::new();
        let _owners = filled(&list, 1);
        drop(list.sweep(|_| true));
    }

    /// A lone entry (the head, no successor) is unlinked at once and
    /// before it is marked (list invariant 9); with a successor, or in a swept list,
    /// its remover marks it first (the closer then sees no difference).
    #[test]
    fn a_lone_head_is_unlinked_by_its_remover() {
        for list in [TrackedList::new(), TrackedList::swept(usize::MAX)] {
            let owners = filled(&list, 2);
            assert!(list.remove(&owners[1]));
            assert_eq!(list.linked(), 1);
            assert!(list.remove(&owners[0]));
            assert_eq!(list.linked(), 0);
            let watches: Vec<_> = owners.iter().map(Owner::watch).collect();
            drop(owners);
            assert!(watches.iter().all(|w| w.is_freed()));
            assert!(list.close().is_empty());
        }
    }

    /// Threads push, remove (some at the head, most inside) and sweep while
    /// the list is cleaned; then one closes it. Every entry is freed exactly
    /// once and the closer sees exactly the entries nobody removed.
    #[test]
    fn churn_on_several_threads_then_close() {
        churn_then_close(TrackedList::swept(4), true);
    }

    /// The same without sweeps, on a list whose lone head is unlinked
    /// before it is marked (list invariant 9).
    #[test]
    fn churn_without_sweeps_then_close() {
        churn_then_close(TrackedList::with_cleanup_min(4), false);
    }

    fn churn_then_close(list: TrackedList, sweeps: bool) {
        use std::sync::Barrier;
        let threads = 4;
        let rounds = if cfg!(miri) { 20 } else { 2_000 };
        let barrier = Barrier::new(threads);
        let kept: Vec<Vec<Owner>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads as u64)
                .map(|t| {
                    let (list, barrier) = (&list, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        let mut kept = Vec::new();
                        let mut mine = Vec::new();
                        for i in 0..rounds {
                            let id = t * 1_000_000 + i;
                            mine.push(list.push(id).expect("open"));
                            match i % 4 {
                                0 => {
                                    let owner = mine.pop().expect("just pushed");
                                    assert!(list.remove(&owner));
                                }
                                1 if mine.len() > 3 => {
                                    let owner = mine.swap_remove(0);
                                    assert!(list.remove(&owner));
                                }
                                2 if sweeps && t == 0 => drop(list.sweep(|_| false)),
                                _ => {}
                            }
                            if mine.len() > 8 {
                                kept.push(mine.remove(4));
                            }
                        }
                        kept.extend(mine);
                        kept
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        let mut expected: Vec<u64> = kept.iter().flatten().map(Owner::id).collect();
        expected.sort();
        let mut live: Vec<u64> = list
            .close()
            .into_iter()
            .filter(|&(_, removed)| !removed)
            .map(|(id, _)| id)
            .collect();
        live.sort();
        assert_eq!(live, expected);
        let watches: Vec<_> = kept.iter().flatten().map(Owner::watch).collect();
        drop(kept);
        // Entries unlinked by overlapping passes are released through the
        // epoch; these were all released by the closer, alone.
        assert!(watches.iter().all(|w| w.is_freed()));
    }
}

#[cfg(loom)]
mod models;
