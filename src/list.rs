//! A lock-free intrusive list that can be closed once: the shape behind both
//! a node's children ([`ChildList`](crate::node)) and its waiter set.
//!
//! The operations are exactly what a cancellation tree needs:
//!
//! * [`List::push`] — O(1) Treiber push at the head, refused once the list is
//!   closed;
//! * [`List::remove`] — O(1) *logical* removal: the entry's `next` pointer is
//!   marked; physical unlinking is amortised over later removals by a
//!   Harris–Michael style cleanup pass, so a long-lived list under churn stays
//!   at a length proportional to its live entries;
//! * [`List::close`] — one atomic swap takes the whole list and forbids new
//!   pushes; the closer then walks the detached chain, *freezing* each
//!   `next` pointer as it goes.
//!
//! Entries are intrusive: each embeds a [`Link`]. The list holds one
//! reference on every entry it links (the "link reference", see
//! [`Entry::release_link`]); whoever removes an entry from the chain
//! physically (a cleanup pass by CAS, or the closer) owns that reference and
//! drops it.
//!
//! # Invariants
//!
//! 1. `head` holds `CLOSED` from the moment [`List::close`] swaps it in, and
//!    forever after; no entry is linked after that.
//! 2. A marked `next` pointer never changes again. Marks are set by
//!    [`List::remove`] (logical removal) or by the closer (freezing); both use
//!    `fetch_or`, so their order decides which happened first.
//! 3. An entry is physically unlinked only by a successful CAS on an
//!    *unmarked* predecessor pointer (the head, or a live entry's `next`).
//!    After the closer has frozen an entry's `next`, nothing can be unlinked
//!    behind it, so the closer and the cleanup passes never both take the
//!    same entry: exactly one of them owns its link reference.
//! 4. An entry's memory stays valid while it is reachable from the list, and
//!    for an epoch grace period after a cleanup pass unlinks it
//!    (`defer_unchecked` of its link reference), so a pinned cleanup pass
//!    never reads freed memory.
//! 6. Apart from the pass that unlinks it, only *other cleanup passes* can
//!    still hold a pointer to an unlinked entry: a closer reaches entries
//!    only through `fetch_or` on a predecessor, which fails to be the
//!    pointer a cleanup CAS replaced (invariant 3), and removers own their
//!    entries. So a pass that unlinks an entry while it is the only pass
//!    (`cleaners == 1`, read after a SeqCst fence that pairs with the fence
//!    every pass makes after incrementing `cleaners`) releases it at once;
//!    epoch deferral is only for overlapping passes. This keeps churn from
//!    flooding crossbeam-epoch's garbage queue.
//! 5. `cleaners` counts cleanup passes in progress. The closer reads it after
//!    its swap (with a SeqCst fence on both sides, the store-buffer pattern):
//!    if it reads zero, no pass can ever touch the detached chain, and the
//!    closer may drop link references immediately; otherwise it defers them
//!    by an epoch. This keeps `cancel()` free of allocation (deferring can
//!    allocate a garbage bag) whenever no cleanup races with it.
//!
//! # Orderings
//!
//! * `push`: the CAS that links an entry is Release, publishing the entry's
//!   fields; it pairs with the Acquire loads of `head` in cleanup passes and
//!   the AcqRel swap in `close`. A push that sees `CLOSED` loads it with
//!   Acquire, pairing with the closer's Release swap, so the caller then sees
//!   everything the closer did before closing (the owner's done state).
//! * `remove`/freezing: `fetch_or` with AcqRel — each side sees the other's
//!   prior writes to the entry when it loses.
//! * Counters (`linked`, `marked`) are heuristics for when to clean and a
//!   diagnostic; they are Relaxed. `cleaners` is the exception above.

use core::marker::PhantomData;
use core::ptr;

use crossbeam_epoch::{self as epoch, Guard};

use crate::primitive::atomic::{AtomicPtr, AtomicUsize, Ordering, fence, fetch_or_tag};

/// Tag on `head`: the list is closed.
const CLOSED: usize = 1;
/// Tag on an entry's `next`: the entry is removed (or frozen by the closer).
const MARK: usize = 1;

/// A cleanup pass starts only when at least this many entries are removed
/// but still linked (and they are at least half the list). Under loom every
/// removal cleans, so the models exercise the pass.
#[cfg(not(loom))]
const CLEANUP_MIN: usize = 32;
#[cfg(loom)]
const CLEANUP_MIN: usize = 1;

/// The intrusive part of a list entry.
///
/// `next` points to the following entry (of the list's entry type), tagged
/// with `MARK`; it is untyped so that `Link` can be embedded in any entry.
#[derive(Debug)]
pub(crate) struct Link {
    next: AtomicPtr<()>,
}

impl Link {
    pub(crate) fn new() -> Link {
        Link {
            next: AtomicPtr::new(ptr::null_mut()),
        }
    }
}

/// Whether a tagged pointer carries `tag`.
#[inline]
fn tagged<T>(ptr: *mut T, tag: usize) -> bool {
    ptr.addr() & tag != 0
}

/// The pointer without its tag bit.
#[inline]
fn untagged<T>(ptr: *mut T) -> *mut T {
    ptr.map_addr(|addr| addr & !1)
}

/// The head value of a closed list: no entry, only the tag.
#[inline]
fn closed<T>() -> *mut T {
    ptr::without_provenance_mut(CLOSED)
}

/// A type that embeds a [`Link`] and can be linked into a [`List`].
///
/// # Safety
///
/// Implementors must be aligned to at least 2 bytes (the tag bit), `link()`
/// must always return the same `Link`, and the entry's memory must stay valid
/// until `release_link` has been called for every time it was pushed.
pub(crate) unsafe trait Entry {
    fn link(&self) -> &Link;

    /// Drops the reference the list held on `this`.
    ///
    /// # Safety
    ///
    /// Called exactly once per successful push, by whoever unlinked the
    /// entry, after which the caller must not touch `this` again.
    unsafe fn release_link(this: *const Self);
}

/// See the module docs.
pub(crate) struct List<E: Entry> {
    head: AtomicPtr<()>,
    /// Entries physically linked (incremented before linking).
    linked: AtomicUsize,
    /// Entries logically removed but still linked (incremented before
    /// marking).
    marked: AtomicUsize,
    /// Cleanup passes in progress.
    cleaners: AtomicUsize,
    /// Removed-but-linked entries below this never trigger a cleanup pass.
    cleanup_min: usize,
    _entries: PhantomData<*const E>,
}

// SAFETY: the list only hands out raw entry pointers to its (crate-internal)
// callers and synchronises all of its own state with atomics; entries are
// shared between threads by design and are themselves `Sync`.
unsafe impl<E: Entry + Sync> Send for List<E> {}
// SAFETY: as above.
unsafe impl<E: Entry + Sync> Sync for List<E> {}

/// The push found the list closed.
#[derive(Debug)]
pub(crate) struct Closed;

impl<E: Entry> List<E> {
    pub(crate) fn new() -> Self {
        List::with_cleanup_min(CLEANUP_MIN)
    }

    /// A list that cleans up once `min` removed entries (and at least half
    /// of the list) are waiting to be unlinked.
    pub(crate) fn with_cleanup_min(min: usize) -> Self {
        List {
            cleanup_min: min.min(CLEANUP_MIN),
            head: AtomicPtr::new(ptr::null_mut()),
            linked: AtomicUsize::new(0),
            marked: AtomicUsize::new(0),
            cleaners: AtomicUsize::new(0),
            _entries: PhantomData,
        }
    }

    /// Links `entry` at the head. On success the list owns one link
    /// reference on `entry` (the caller must have counted it).
    ///
    /// # Safety
    ///
    /// `entry` must be valid, not currently linked in any list, and stay
    /// valid until its link reference is released.
    pub(crate) unsafe fn push(&self, entry: *const E) -> Result<(), Closed> {
        // SAFETY: the caller guarantees `entry` is valid.
        let link = unsafe { (*entry).link() };
        self.linked.fetch_add(1, Ordering::Relaxed);
        // Ordering: Acquire — if we see CLOSED we must also see what the
        // closer did before closing; pairs with the swap in `close`.
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            if tagged(head, CLOSED) {
                self.linked.fetch_sub(1, Ordering::Relaxed);
                return Err(Closed);
            }
            // Ordering: Relaxed — published by the Release CAS below.
            link.next.store(head, Ordering::Relaxed);
            // Ordering: Release on success publishes the entry; Acquire on
            // failure for the same reason as the load above.
            match self.head.compare_exchange_weak(
                head,
                entry.cast_mut().cast(),
                Ordering::Release,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => head = actual,
            }
        }
    }

    /// Logically removes `entry`. Returns false if it was already removed or
    /// frozen by a closer (who then owns its link reference).
    ///
    /// # Safety
    ///
    /// `entry` must have been pushed onto *this* list and still be valid.
    pub(crate) unsafe fn remove(&self, entry: *const E) -> bool {
        // Counted before marking, so a cleanup pass that unlinks the entry
        // (which it can only do after seeing the mark) decrements after us.
        let marked = self.marked.fetch_add(1, Ordering::Relaxed) + 1;
        // SAFETY: the caller guarantees `entry` is valid.
        let link = unsafe { (*entry).link() };
        // Ordering: AcqRel — totally ordered with the closer's freezing
        // fetch_or (invariant 2); Release lets a cleanup pass that sees the
        // mark see the remover's prior writes.
        let prev = fetch_or_tag(&link.next, MARK, Ordering::AcqRel);
        if tagged(prev, MARK) {
            self.marked.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        if marked >= self.cleanup_min
            && marked * 2 >= self.linked.load(Ordering::Relaxed)
            && self.cleaners.load(Ordering::Relaxed) == 0
        {
            self.cleanup();
        }
        true
    }

    /// Unlinks every removed entry it finds (Harris–Michael traversal).
    #[cold]
    fn cleanup(&self) {
        self.sweep(|_| false);
    }

    /// A cleanup pass that also removes every live entry for which
    /// `remove` returns true (it may be called again for an entry it
    /// declined, after a restart). The timer's expiry uses it; `remove`
    /// must take whatever reference it needs on an entry it claims, since
    /// the list's own is released (after an epoch) once it is unlinked.
    pub(crate) fn sweep(&self, mut remove: impl FnMut(*const E) -> bool) {
        // Ordering: SeqCst increment + fence — the store-buffer pattern with
        // `close` (invariant 5): either we see CLOSED at the head, or the
        // closer sees our increment.
        self.cleaners.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let guard = epoch::pin();
        let mut deferred = false;
        'restart: loop {
            let mut pred: &AtomicPtr<()> = &self.head;
            // Ordering: Acquire — pairs with the Release CAS in `push`, so
            // the entry's fields are visible.
            let mut cur = pred.load(Ordering::Acquire);
            if tagged(cur, CLOSED) {
                break;
            }
            while !cur.is_null() {
                let entry = cur.cast::<E>().cast_const();
                // SAFETY: `entry` was reachable while we are pinned
                // (invariant 4); unlinked entries are released only after
                // an epoch grace period, and a closer that could release it
                // immediately saw `cleaners != 0` and defers instead.
                let link = unsafe { (*entry).link() };
                // Ordering: Acquire — see the remover's writes if marked.
                let mut next = link.next.load(Ordering::Acquire);
                if !tagged(next, MARK) && remove(entry) {
                    // Remove it as `remove()` would (counted first).
                    self.marked.fetch_add(1, Ordering::Relaxed);
                    // Ordering: AcqRel — invariant 2.
                    let prev = fetch_or_tag(&link.next, MARK, Ordering::AcqRel);
                    if tagged(prev, MARK) {
                        self.marked.fetch_sub(1, Ordering::Relaxed);
                    }
                    next = prev.map_addr(|addr| addr | MARK);
                }
                if tagged(next, MARK) {
                    let succ = untagged(next);
                    // Ordering: AcqRel on success (we take ownership of the
                    // entry's link reference), Acquire on failure.
                    if pred
                        .compare_exchange(cur, succ, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                    {
                        // The predecessor was removed, frozen or changed:
                        // start over from the head (which may be CLOSED).
                        continue 'restart;
                    }
                    self.marked.fetch_sub(1, Ordering::Relaxed);
                    self.linked.fetch_sub(1, Ordering::Relaxed);
                    // Invariant 6: only other cleanup passes can still read
                    // an entry we unlinked. If we are the only one, release
                    // it now; otherwise after an epoch.
                    fence(Ordering::SeqCst);
                    if self.cleaners.load(Ordering::SeqCst) == 1 {
                        // SAFETY: we own its link reference (invariant 3)
                        // and no other pass can reach it (invariant 6).
                        unsafe { E::release_link(entry) };
                    } else {
                        // SAFETY: we own its link reference (invariant 3);
                        // other pinned passes may still read it (invariant
                        // 4).
                        unsafe { defer_release(&guard, entry) };
                        deferred = true;
                    }
                    cur = succ;
                } else {
                    pred = &link.next;
                    cur = next;
                }
            }
            break;
        }
        if deferred {
            // Hand what we deferred to the global queue and collect what has
            // expired, rather than wait for the collector's own cadence.
            guard.flush();
        }
        drop(guard);
        // Ordering: Release — our reads of the chain happen before a closer
        // that reads zero here (Acquire after its fence).
        self.cleaners.fetch_sub(1, Ordering::Release);
    }

    /// Closes the list and returns the detached chain. Only the first call
    /// gets entries; later calls get an empty chain.
    pub(crate) fn close(&self) -> Chain<E> {
        // Ordering: AcqRel — Acquire sees every pushed entry's fields;
        // Release publishes the owner's state (set before closing) to
        // pushers that find the list closed. SeqCst for invariant 5.
        let first = self.head.swap(closed(), Ordering::SeqCst);
        if tagged(first, CLOSED) {
            return Chain::empty();
        }
        fence(Ordering::SeqCst);
        // Ordering: Acquire — pairs with the Release decrement in `cleanup`.
        let defer = self.cleaners.load(Ordering::Acquire) != 0;
        Chain {
            cur: first,
            guard: if defer { Some(epoch::pin()) } else { None },
            _entries: PhantomData,
        }
    }

    /// Whether nothing is linked (the list is empty or closed).
    pub(crate) fn is_empty(&self) -> bool {
        // Ordering: Acquire — as the other loads of `head`.
        let head = self.head.load(Ordering::Acquire);
        head.is_null() || tagged(head, CLOSED)
    }

    /// Whether `close` has run.
    pub(crate) fn is_closed(&self) -> bool {
        tagged(self.head.load(Ordering::Acquire), CLOSED)
    }

    /// Entries linked and not removed, for diagnostics (exact when no other
    /// thread touches the list).
    pub(crate) fn live(&self) -> usize {
        if self.is_closed() {
            return 0;
        }
        let linked = self.linked.load(Ordering::Relaxed);
        let marked = self.marked.load(Ordering::Relaxed);
        linked.saturating_sub(marked)
    }

    /// Entries physically linked (including removed ones not yet unlinked).
    pub(crate) fn linked(&self) -> usize {
        self.linked.load(Ordering::Relaxed)
    }
}

/// # Safety
///
/// The caller owns `entry`'s link reference and gives it up.
unsafe fn defer_release<E: Entry>(guard: &Guard, entry: *const E) {
    let entry = SendPtr(entry);
    // SAFETY: the closure runs once, after every thread pinned now has
    // unpinned, which is when no cleanup pass can still read `entry`
    // (invariant 4). `release_link` is called exactly once for this link.
    unsafe {
        guard.defer_unchecked(move || {
            let entry = entry;
            E::release_link(entry.0)
        })
    };
}

struct SendPtr<E>(*const E);
// SAFETY: entries are shared between threads by design (`Sync`); the
// pointer is only used to drop a reference.
unsafe impl<E> Send for SendPtr<E> {}

impl<E: Entry> core::fmt::Debug for List<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("List")
            .field("closed", &self.is_closed())
            .field("live", &self.live())
            .finish()
    }
}

/// The detached chain of a closed list. Iterating freezes each entry and
/// yields it with whether it had been removed before; the caller must hand
/// every yielded entry back through [`Chain::release`] (or keep its link
/// reference and release it later with [`Chain::deferring`]'s answer).
pub(crate) struct Chain<E: Entry> {
    cur: *mut (),
    guard: Option<Guard>,
    _entries: PhantomData<*const E>,
}

impl<E: Entry> Chain<E> {
    fn empty() -> Self {
        Chain {
            cur: ptr::null_mut(),
            guard: None,
            _entries: PhantomData,
        }
    }

    /// Whether link references from this chain must be released through the
    /// epoch (a cleanup pass may still be reading the chain).
    pub(crate) fn deferring(&self) -> bool {
        self.guard.is_some()
    }

    /// The guard to release link references through, when deferring.
    pub(crate) fn guard(&self) -> Option<&Guard> {
        self.guard.as_ref()
    }

    /// Freezes and yields the next entry: `(entry, was_removed)`.
    pub(crate) fn next_entry(&mut self) -> Option<(*const E, bool)> {
        if self.cur.is_null() {
            return None;
        }
        let entry = self.cur.cast::<E>().cast_const();
        // SAFETY: the chain owns the link reference of every entry it has not
        // yet yielded, so `entry` is valid.
        let link = unsafe { (*entry).link() };
        // Ordering: AcqRel — invariant 2; Acquire sees a remover's writes.
        let prev = fetch_or_tag(&link.next, MARK, Ordering::AcqRel);
        self.cur = untagged(prev);
        Some((entry, tagged(prev, MARK)))
    }

    /// Gives back the link reference of an entry this chain yielded.
    ///
    /// # Safety
    ///
    /// `entry` was yielded by this chain (or one with the same
    /// `deferring()`), and is released exactly once.
    pub(crate) unsafe fn release(&self, entry: *const E) {
        // SAFETY: forwarded from the caller.
        unsafe { release_link_from(self.guard.as_ref(), entry) }
    }
}

/// Releases a link reference now (no guard: nobody else can read the entry)
/// or after an epoch grace period.
///
/// # Safety
///
/// The caller owns `entry`'s link reference.
pub(crate) unsafe fn release_link_from<E: Entry>(guard: Option<&Guard>, entry: *const E) {
    match guard {
        // SAFETY: forwarded from the caller.
        Some(guard) => unsafe { defer_release(guard, entry) },
        // SAFETY: forwarded from the caller; no cleanup pass can read it.
        None => unsafe { E::release_link(entry) },
    }
}

impl<E: Entry> Drop for Chain<E> {
    fn drop(&mut self) {
        // Entries not yielded are released here (a caller that stops early).
        while let Some((entry, _)) = self.next_entry() {
            // SAFETY: yielded just now, released once.
            unsafe { self.release(entry) };
        }
    }
}

impl<E: Entry> core::fmt::Debug for Chain<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Chain")
            .field("deferring", &self.deferring())
            .finish()
    }
}
