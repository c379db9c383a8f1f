//! A list entry that checks how the list treats it, and a safe list of them:
//! the test subject of the unit tests, the loom models (`tests.rs`) and the
//! `list` fuzz target (through `goctx::__fuzz`, cargo feature
//! `fuzzing-internals`).
//!
//! An entry counts its *logical* references: one per [`Owner`] handle and
//! one for each list link ([`Entry::release_link`] gives it back). When the
//! count reaches zero the entry is logically freed: the `freed` flag is set
//! through an `UnsafeCell` write, as a real free would write the memory. The
//! list reads an entry only through [`Entry::link`], and every such read
//! checks the flag through the same `UnsafeCell`, so a list that reads an
//! entry it may no longer hold (list invariants 4–6) fails: at once if the
//! read comes after the free, and under loom also when the two are merely
//! unordered (loom reports concurrent `UnsafeCell` accesses as a causality
//! violation). The real memory is an `Arc` and outlives every read, so the
//! check never turns into undefined behaviour itself.

// Public for `goctx::__fuzz`; crate-private otherwise.
#![cfg_attr(not(feature = "fuzzing-internals"), allow(unreachable_pub))]
// The loom models use a part of it.
#![cfg_attr(loom, allow(dead_code))]

use std::sync::Arc;

use super::{Chain, Entry, Link, List};
use crate::primitive::UnsafeCell;
use crate::primitive::atomic::{AtomicUsize, Ordering};

/// See the module docs.
#[derive(Debug)]
pub(crate) struct TrackedEntry {
    link: Link,
    id: u64,
    /// The list this entry is pushed onto (its only one).
    home: Arc<()>,
    /// Logical references: owners plus the list's link.
    refs: AtomicUsize,
    /// Whether the list still holds its link reference.
    linked: AtomicUsize,
    /// Set when `refs` reaches zero.
    freed: UnsafeCell<bool>,
}

// SAFETY: `freed` is written once, by whoever drops the last logical
// reference, and read only by holders of a reference (or, if the list is
// wrong, by a reader that the check is there to catch); everything else is
// atomic or immutable.
unsafe impl Sync for TrackedEntry {}
// SAFETY: as above.
unsafe impl Send for TrackedEntry {}

impl TrackedEntry {
    /// The entry's id, read after checking the entry is not freed.
    fn checked_id(&self) -> u64 {
        assert!(
            !self.is_freed(),
            "the list read entry {} after its last reference was dropped",
            self.id
        );
        self.id
    }

    /// Whether the entry has been logically freed.
    fn is_freed(&self) -> bool {
        // SAFETY: a read of a `bool`; loom checks it is ordered with the
        // one write.
        self.freed.with(|freed| unsafe { *freed })
    }

    /// Drops one logical reference; the last one frees.
    fn unref(&self) {
        // Ordering: AcqRel — as `Arc`: the last owner sees every other
        // owner's reads before it frees.
        if self.refs.fetch_sub(1, Ordering::AcqRel) == 1 {
            // SAFETY: the last reference: nobody may read `freed` now
            // except a faulty list, which is what the check catches.
            self.freed.with_mut(|freed| unsafe { *freed = true });
        }
    }
}

// SAFETY: `TrackedEntry` is aligned to 8 (it holds atomics); `link()` is a
// fixed field; the memory is an `Arc` of which the list's link reference
// holds one strong count (`Arc::into_raw` in `TrackedList::push`,
// `Arc::from_raw` in `release_link`).
unsafe impl Entry for TrackedEntry {
    fn link(&self) -> &Link {
        self.checked_id();
        &self.link
    }

    unsafe fn release_link(this: *const Self) {
        // SAFETY: the list holds a link reference on `this`, which includes
        // one strong count of the `Arc` (`TrackedList::push`).
        let entry = unsafe { Arc::from_raw(this) };
        // Ordering: Relaxed — an RMW, so it sees every other one.
        let linked = entry.linked.fetch_sub(1, Ordering::Relaxed);
        assert_eq!(linked, 1, "entry {}: its link released twice", entry.id);
        entry.unref();
    }
}

/// An owner's reference to an entry (a child's handle, a waiter): keeps it
/// logically alive, gives its reference back when dropped.
#[derive(Debug)]
pub struct Owner(Arc<TrackedEntry>);

impl Owner {
    /// The entry's id.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// Whether the list still holds its link reference on the entry (exact
    /// when no other thread touches the list).
    pub fn is_linked(&self) -> bool {
        // Ordering: Relaxed — a diagnostic.
        self.0.linked.load(Ordering::Relaxed) != 0
    }

    /// A watch on the entry that holds no logical reference.
    pub fn watch(&self) -> Watch {
        Watch(Arc::clone(&self.0))
    }
}

/// Sees whether an entry has been freed, without keeping it alive.
#[derive(Debug)]
pub struct Watch(Arc<TrackedEntry>);

impl Watch {
    /// Whether every reference (owners and the list's link) is gone. Call it
    /// only once those are ordered before the call (joined threads).
    pub fn is_freed(&self) -> bool {
        self.0.is_freed()
    }
}

impl Clone for Owner {
    fn clone(&self) -> Owner {
        // Ordering: Relaxed — as `Arc::clone`: made from a live reference.
        self.0.refs.fetch_add(1, Ordering::Relaxed);
        Owner(Arc::clone(&self.0))
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.unref();
    }
}

/// A `List` of `TrackedEntry`s behind a safe interface: each entry is
/// made by the list's own `push`, linked once, and removable only from that
/// list, so no caller can break `List`'s safety contract.
#[derive(Debug)]
pub struct TrackedList {
    list: List<TrackedEntry>,
    /// The identity entries check `remove` against.
    home: Arc<()>,
}

impl Default for TrackedList {
    fn default() -> Self {
        TrackedList::new()
    }
}

/// A list dropped while open releases what is still linked (closing an
/// already closed list finds nothing), so tests that end without closing
/// leak nothing (LeakSanitizer checks).
impl Drop for TrackedList {
    fn drop(&mut self) {
        drop(self.list.close());
    }
}

impl TrackedList {
    /// A list with the crate's cleanup threshold.
    pub fn new() -> TrackedList {
        TrackedList::from_list(List::new())
    }

    /// A list that cleans up once `min` removed entries wait (see
    /// `List::with_cleanup_min`).
    pub fn with_cleanup_min(min: usize) -> TrackedList {
        TrackedList::from_list(List::with_cleanup_min(min))
    }

    /// A list that `sweep` may claim entries of (see `List::swept`): its
    /// removers always mark.
    pub fn swept(min: usize) -> TrackedList {
        TrackedList::from_list(List::swept(min))
    }

    fn from_list(list: List<TrackedEntry>) -> TrackedList {
        TrackedList {
            list,
            home: Arc::new(()),
        }
    }

    /// Links a new entry `id` at the head and returns its owner; `None` if
    /// the list is closed (the entry is then freed).
    pub fn push(&self, id: u64) -> Option<Owner> {
        let owner = Owner(Arc::new(TrackedEntry {
            link: Link::new(),
            id,
            home: Arc::clone(&self.home),
            // The owner's reference and the link reference, counted before
            // the push (`List::push`).
            refs: AtomicUsize::new(2),
            linked: AtomicUsize::new(1),
            freed: UnsafeCell::new(false),
        }));
        let raw = Arc::into_raw(Arc::clone(&owner.0));
        // SAFETY: `raw` is valid while the list holds the reference counted
        // above; the entry is new, so not linked anywhere.
        if unsafe { self.list.push(raw) }.is_ok() {
            return Some(owner);
        }
        // SAFETY: the link reference counted above, which the list refused.
        unsafe { TrackedEntry::release_link(raw) };
        None
    }

    /// Removes `owner`'s entry: true if this call removed it, false if it
    /// was already removed or frozen by a closer.
    ///
    /// # Panics
    ///
    /// If the entry was pushed onto another list.
    pub fn remove(&self, owner: &Owner) -> bool {
        assert!(
            Arc::ptr_eq(&owner.0.home, &self.home),
            "entry {} belongs to another list",
            owner.id()
        );
        // SAFETY: the entry was pushed onto this list (checked above), and
        // `owner` keeps it valid.
        unsafe { self.list.remove(Arc::as_ptr(&owner.0)) }
    }

    /// One cleanup pass, whatever the threshold.
    pub fn cleanup(&self) {
        self.list.cleanup();
    }

    /// A sweep that also removes every live entry for which `claim` is true;
    /// returns the claimed entries, each with an owner reference of its own
    /// (as the timer takes a handle on an entry it fires).
    pub fn sweep(&self, mut claim: impl FnMut(u64) -> bool) -> Vec<Owner> {
        let mut claimed = Vec::new();
        self.list.sweep(|raw| {
            // SAFETY: the sweep hands out entries it may read (pinned and
            // counted as a pass); `checked_id` checks that.
            let entry = unsafe { &*raw };
            if !claim(entry.checked_id()) {
                return false;
            }
            // The claimed entry's own reference, taken while the list's
            // link reference keeps it alive.
            // Ordering: Relaxed — as `Owner::clone`.
            entry.refs.fetch_add(1, Ordering::Relaxed);
            // SAFETY: `raw` carries the provenance the list exposed at the
            // push, that of `Arc::into_raw` in `push` (full provenance, list
            // invariant 8: the new owner may
            // be the one that frees, which a pointer made from `entry`, a
            // shared reference, must not do); the link reference's strong
            // count keeps it alive while we add one for the new owner.
            claimed.push(Owner(unsafe {
                Arc::increment_strong_count(raw);
                Arc::from_raw(raw)
            }));
            true
        });
        claimed
    }

    /// Closes the list; returns the detached entries in list order (head
    /// first), each with whether it had been removed before the close.
    /// Each link reference is released as soon as its entry is yielded.
    pub fn close(&self) -> Vec<(u64, bool)> {
        self.close_walk(Chain::next_entry)
    }

    /// `close`, walking with `Chain::next_entry_unfrozen`.
    pub fn close_unfrozen(&self) -> Vec<(u64, bool)> {
        self.close_walk(Chain::next_entry_unfrozen)
    }

    fn close_walk(
        &self,
        mut next: impl FnMut(&mut Chain<TrackedEntry>) -> Option<(*const TrackedEntry, bool)>,
    ) -> Vec<(u64, bool)> {
        let mut chain: Chain<TrackedEntry> = self.list.close();
        let mut out = Vec::new();
        while let Some((entry, removed)) = next(&mut chain) {
            // SAFETY: the chain owns the link reference of the entry it
            // just yielded.
            out.push((unsafe { &*entry }.checked_id(), removed));
            // SAFETY: yielded by this chain, released once.
            unsafe { chain.release(entry) };
        }
        out
    }

    /// Closes the list and drops the chain unwalked (its `Drop` releases
    /// every entry).
    pub fn close_and_drop(&self) {
        drop(self.list.close());
    }

    /// The ids of the live (linked, not removed) entries, head first.
    pub fn live_ids(&self) -> Vec<u64> {
        let mut ids = Vec::new();
        self.list.live(|entry| {
            ids.push(entry.checked_id());
            true
        });
        ids
    }

    /// Entries linked, removed or not.
    pub fn linked(&self) -> usize {
        self.list.linked()
    }

    /// Whether nothing is linked.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// `List::close_if_empty`.
    pub fn close_if_empty(&self) -> bool {
        self.list.close_if_empty()
    }

    /// Whether the list is closed.
    pub fn is_closed(&self) -> bool {
        self.list.is_closed()
    }
}
