//! Target `list`: bytes decode into operations on one of goctx's intrusive
//! lists (`goctx::__fuzz::TrackedList`, cargo feature `fuzzing-internals`),
//! all on one thread, checked after every step against a `Vec` model of the
//! list that knows which entries are live, removed but still linked, or
//! unlinked.
//!
//! The model is exact, cleanup heuristic included: on one thread every
//! removal of the head unlinks it, every other removal marks it and runs a
//! pass once `marked` reaches the threshold, a pass unlinks runs of marked
//! entries head first until it has unlinked as many as were marked when it
//! started (list invariant 7) and sets the next threshold to half the live
//! entries it walked past (at least the minimum), and every release is
//! immediate (no pass overlaps
//! another). So after each step: the live ids head first, the number of
//! linked entries, each entry's `is_linked()`, and whether each entry is
//! freed (no owner left and unlinked) must all match.
//!
//! Byte format: the first byte `b` picks the cleanup minimum (`1 + b % 8`)
//! and whether the list is built for sweeps (`b / 8` odd: `List::swept`,
//! whose removers always mark; otherwise a lone head is unlinked before it is marked,
//! list invariant 9, which the model cannot tell apart); then each
//! operation is one byte (`op % 8`) and its argument bytes:
//!
//! | op | operation | argument |
//! |----|-----------|----------|
//! | 0, 1 | push a new entry | — |
//! | 2 | remove an entry | which owner |
//! | 3 | drop an owner | which owner |
//! | 4 | clone an owner | which owner |
//! | 5 | cleanup pass | — |
//! | 6 | sweep, claiming live ids `id % 3 == k` (a cleanup pass if the list is not swept) | `k` |
//! | 7 | close (each entry back with whether it was removed) | — |
//!
//! Target `list_threads` runs the two-thread variant, [`run_two_threads`].

use std::sync::Barrier;

use goctx::__fuzz::{Owner, TrackedList, Watch};

use crate::input::Input;

/// Where an entry stands, in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Linked {
    Live,
    /// Logically removed, still in the chain.
    Removed,
    Unlinked,
}

struct Model {
    /// Every entry ever pushed, in push order (so the head is the last
    /// one still linked); index = id.
    entries: Vec<Linked>,
    /// Removed entries still linked (the list's `marked`).
    marked: usize,
    threshold: usize,
    min: usize,
    closed: bool,
}

impl Model {
    fn new(min: usize) -> Model {
        Model {
            entries: Vec::new(),
            marked: 0,
            threshold: min,
            min,
            closed: false,
        }
    }

    /// Live ids, head first.
    fn live(&self) -> Vec<u64> {
        (0..self.entries.len())
            .rev()
            .filter(|&id| self.entries[id] == Linked::Live)
            .map(|id| id as u64)
            .collect()
    }

    fn linked(&self) -> usize {
        self.entries
            .iter()
            .filter(|&&e| e != Linked::Unlinked)
            .count()
    }

    /// The entry at the head of the chain.
    fn head(&self) -> Option<usize> {
        (0..self.entries.len())
            .rev()
            .find(|&id| self.entries[id] != Linked::Unlinked)
    }

    /// A cleanup pass (list invariant 7): walks head first, unlinks each
    /// run of marked entries with one step, and stops once it has unlinked
    /// as many as were marked when it started; the next threshold is half
    /// the live entries it walked past (at least the minimum).
    fn pass(&mut self) {
        self.pass_until(self.marked);
    }

    /// A sweep's pass: it walks the whole list (no early stop).
    fn sweep_pass(&mut self) {
        self.pass_until(usize::MAX);
    }

    /// A pass that stops once it has unlinked `target` entries.
    fn pass_until(&mut self, target: usize) {
        if self.closed {
            return;
        }
        // Head first: the newest linked entry (highest id) is the head.
        let order: Vec<usize> = (0..self.entries.len())
            .rev()
            .filter(|&id| self.entries[id] != Linked::Unlinked)
            .collect();
        let (mut kept, mut unlinked, mut i) = (0, 0, 0);
        while i < order.len() {
            if self.entries[order[i]] == Linked::Removed {
                let mut run = 0;
                while i < order.len() && self.entries[order[i]] == Linked::Removed {
                    self.entries[order[i]] = Linked::Unlinked;
                    run += 1;
                    i += 1;
                }
                self.marked -= run;
                unlinked += run;
                if unlinked >= target {
                    break;
                }
            } else {
                kept += 1;
                i += 1;
            }
        }
        self.threshold = (kept / 2).max(self.min);
    }

    /// Whether `remove(id)` succeeds, and its effect.
    fn remove(&mut self, id: usize) -> bool {
        if self.closed || self.entries[id] != Linked::Live {
            return false;
        }
        if self.head() == Some(id) {
            self.entries[id] = Linked::Unlinked;
        } else {
            self.entries[id] = Linked::Removed;
            self.marked += 1;
            if self.marked >= self.threshold {
                self.pass();
            }
        }
        true
    }
}

struct Harness {
    list: TrackedList,
    /// Whether `list` is built for sweeps.
    swept: bool,
    model: Model,
    /// Owner references the harness holds (several may share an entry).
    owners: Vec<Owner>,
    /// One watch per entry ever pushed; index = id.
    watches: Vec<Watch>,
}

impl Harness {
    fn check(&self) {
        let model = &self.model;
        if model.closed {
            assert!(self.list.is_closed() && self.list.is_empty());
            assert_eq!(self.list.live_ids(), Vec::<u64>::new());
        } else {
            assert!(!self.list.is_closed());
            assert_eq!(self.list.live_ids(), model.live(), "live entries");
            assert_eq!(self.list.linked(), model.linked(), "linked entries");
            assert_eq!(self.list.is_empty(), model.linked() == 0);
        }
        let mut held = vec![0usize; model.entries.len()];
        for owner in &self.owners {
            held[owner.id() as usize] += 1;
        }
        for owner in &self.owners {
            let id = owner.id() as usize;
            assert_eq!(
                owner.is_linked(),
                model.entries[id] != Linked::Unlinked,
                "entry {id}: is_linked()"
            );
        }
        for (id, watch) in self.watches.iter().enumerate() {
            let gone = held[id] == 0 && model.entries[id] == Linked::Unlinked;
            assert_eq!(watch.is_freed(), gone, "entry {id}: freed");
        }
    }

    fn step(&mut self, input: &mut Input<'_>, op: u8) {
        match op % 8 {
            0 | 1 => {
                let id = self.model.entries.len() as u64;
                match self.list.push(id) {
                    Some(owner) => {
                        assert!(!self.model.closed, "a closed list took a push");
                        self.model.entries.push(Linked::Live);
                        self.watches.push(owner.watch());
                        self.owners.push(owner);
                    }
                    None => assert!(self.model.closed, "an open list refused a push"),
                }
            }
            2 => {
                if let Some(i) = self.pick(input) {
                    let id = self.owners[i].id() as usize;
                    let removed = self.list.remove(&self.owners[i]);
                    assert_eq!(removed, self.model.remove(id), "remove({id})");
                }
            }
            3 => {
                if let Some(i) = self.pick(input) {
                    drop(self.owners.swap_remove(i));
                }
            }
            4 => {
                if let Some(i) = self.pick(input) {
                    let clone = self.owners[i].clone();
                    self.owners.push(clone);
                }
            }
            5 => {
                self.list.cleanup();
                self.model.pass();
            }
            6 if !self.swept => {
                let _k = input.byte();
                self.list.cleanup();
                self.model.pass();
            }
            6 => {
                let k = input.choose(3) as u64;
                let claimed = self.list.sweep(|id| id % 3 == k);
                let mut ids: Vec<u64> = claimed.iter().map(Owner::id).collect();
                ids.sort_unstable();
                let mut want = Vec::new();
                if !self.model.closed {
                    for id in self.model.live() {
                        if id % 3 == k {
                            self.model.entries[id as usize] = Linked::Removed;
                            self.model.marked += 1;
                            want.push(id);
                        }
                    }
                    self.model.sweep_pass();
                }
                want.sort_unstable();
                assert_eq!(ids, want, "claimed by the sweep");
                self.owners.extend(claimed);
            }
            _ => {
                let closed = self.list.close();
                let want: Vec<(u64, bool)> = if self.model.closed {
                    Vec::new()
                } else {
                    (0..self.model.entries.len())
                        .rev()
                        .filter(|&id| self.model.entries[id] != Linked::Unlinked)
                        .map(|id| (id as u64, self.model.entries[id] == Linked::Removed))
                        .collect()
                };
                assert_eq!(closed, want, "the closed chain");
                self.model.closed = true;
                for entry in &mut self.model.entries {
                    *entry = Linked::Unlinked;
                }
            }
        }
    }

    /// One of the held owners, chosen by the next byte.
    fn pick(&self, input: &mut Input<'_>) -> Option<usize> {
        let indices: Vec<usize> = (0..self.owners.len()).collect();
        input.pick(&indices)
    }
}

/// Runs one input (target `list`).
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let (min, swept) = list_kind(input.byte().unwrap_or(0));
    let mut harness = Harness {
        list: if swept {
            TrackedList::swept(min)
        } else {
            TrackedList::with_cleanup_min(min)
        },
        swept,
        model: Model::new(min),
        owners: Vec::new(),
        watches: Vec::new(),
    };
    while let Some(op) = input.byte() {
        harness.step(&mut input, op);
        harness.check();
    }
    // The end: close (whatever happened), drop every owner; every entry
    // must then be freed, each link released exactly once.
    harness.step(&mut input, 7);
    harness.check();
    harness.owners.clear();
    harness.check();
    assert!(harness.watches.iter().all(Watch::is_freed));
}

/// The cleanup minimum and whether the list is built for sweeps, from the
/// first byte.
fn list_kind(first: u8) -> (usize, bool) {
    (1 + usize::from(first % 8), (first / 8) % 2 == 1)
}

/// Target `list_threads`: the first byte picks the cleanup minimum and
/// whether the list is built for sweeps (as `list`); the bytes after it are
/// dealt alternately
/// to two threads, each running its own operations on the shared list (ops
/// `% 4`: 0, 1 push; 2 remove one of its own entries, chosen by the next
/// byte; 3 a cleanup pass, or on a swept list's second thread a sweep that
/// claims nothing), starting
/// together. No step-by-step model (the interleaving is the scheduler's);
/// checked are set semantics: every remove of a live entry of one's own
/// succeeds, and at the end the closer finds exactly the entries nobody
/// removed, once each, while no entry is read after its last reference is
/// gone and no link is released twice (`TrackedEntry` asserts both).
pub fn run_two_threads(data: &[u8]) {
    let Some(&first) = data.first() else { return };
    let (min, swept) = list_kind(first);
    let list = if swept {
        TrackedList::swept(min)
    } else {
        TrackedList::with_cleanup_min(min)
    };
    let streams: [Vec<u8>; 2] =
        [0, 1].map(|t| data[1..].iter().skip(t).step_by(2).copied().collect());
    let barrier = Barrier::new(2);
    let kept: Vec<Vec<Owner>> = std::thread::scope(|s| {
        let workers: Vec<_> = streams
            .iter()
            .enumerate()
            .map(|(t, bytes)| {
                let (list, barrier) = (&list, &barrier);
                s.spawn(move || {
                    let mut input = Input::new(bytes);
                    let mut mine: Vec<Owner> = Vec::new();
                    let mut next = 0u64;
                    barrier.wait();
                    while let Some(op) = input.byte() {
                        match op % 4 {
                            0 | 1 => {
                                // Ids are unique across the two threads.
                                let id = next * 2 + t as u64;
                                next += 1;
                                mine.push(list.push(id).expect("nobody closes yet"));
                            }
                            2 => {
                                let indices: Vec<usize> = (0..mine.len()).collect();
                                if let Some(i) = input.pick(&indices) {
                                    let owner = mine.swap_remove(i);
                                    assert!(list.remove(&owner), "remove({})", owner.id());
                                }
                            }
                            _ if t == 0 || !swept => list.cleanup(),
                            _ => assert!(list.sweep(|_| false).is_empty()),
                        }
                    }
                    mine
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut want: Vec<u64> = kept.iter().flatten().map(Owner::id).collect();
    want.sort_unstable();
    let closed = list.close();
    let mut live: Vec<u64> = closed
        .iter()
        .filter(|&&(_, removed)| !removed)
        .map(|&(id, _)| id)
        .collect();
    live.sort_unstable();
    assert_eq!(live, want, "the closer found other live entries");
    let mut all: Vec<u64> = closed.iter().map(|&(id, _)| id).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), closed.len(), "an entry came back twice");
    // What the closer released is freed once its owner lets go (entries
    // unlinked by overlapping passes may still wait for the epoch).
    let watches: Vec<Watch> = kept.iter().flatten().map(Owner::watch).collect();
    drop(kept);
    assert!(watches.iter().all(Watch::is_freed));
}
