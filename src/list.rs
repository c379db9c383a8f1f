//! A lock-free intrusive list that can be closed once: the shape behind a
//! cancellable node's children (`CancelNode::children`), its waiter set and
//! the timer wheel's lists.
//!
//! The operations are exactly what a cancellation tree needs:
//!
//! * [`List::push`] — O(1) Treiber push at the head, refused once the list is
//!   closed;
//! * [`List::remove`] — O(1) removal: the entry's `next` pointer is marked
//!   (logical removal); an entry at the head is then unlinked at once by its
//!   remover with one CAS, and any other is unlinked later by a Harris–Michael
//!   style cleanup pass, amortised over removals and one CAS per run of
//!   removed entries, so a long-lived list under churn stays at a length
//!   proportional to its live entries; a lone entry (the head, with no
//!   successor) is unlinked with its one CAS before it is marked, with a
//!   store (invariant 9);
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
//! The list is tested alone, over entries that fail on any read after their
//! last reference is gone (`list/tracked.rs`): unit tests and loom models
//! in `list/tests.rs` and `list/tests/models.rs`, and the `list` fuzz target
//! (`fuzz/src/list.rs`) against a `Vec` model.
//!
//! # Invariants
//!
//! 1. `head` holds `CLOSED` from the moment [`List::close`] swaps it in, and
//!    forever after; no entry is linked after that.
//! 2. A marked `next` pointer never changes again. Marks are set by
//!    [`List::remove`] (logical removal) or by the closer (freezing); both use
//!    `fetch_or`, so their order decides which happened first. In a closed
//!    list that no cleanup pass can reach (the closer read `cleaners == 0`),
//!    the address part of an unmarked `next` does not change either (only
//!    passes unlink behind the head): a closer whose removers do not need
//!    that decision walks without freezing ([`Chain::next_entry_unfrozen`]).
//! 3. An entry is physically unlinked only by a successful CAS on an
//!    *unmarked* predecessor pointer (the head, or a live entry's `next`):
//!    by a cleanup pass, or by the remover of the entry at the head.
//!    After the closer has frozen an entry's `next`, nothing can be unlinked
//!    behind it, so the closer and the cleanup passes never both take the
//!    same entry: exactly one of them owns its link reference.
//! 4. An entry's memory stays valid while it is reachable from the list, and
//!    for an epoch grace period after a cleanup pass unlinks it
//!    (`defer_unchecked` of its link reference), so a pinned cleanup pass
//!    never reads freed memory.
//! 5. `cleaners` counts cleanup passes in progress. The closer reads it after
//!    its SeqCst swap with a SeqCst load (each pass fences after its
//!    increment: the store-buffer pattern, see below invariant 6):
//!    if it reads zero, no pass can ever touch the detached chain, and the
//!    closer may drop link references immediately; otherwise it defers them
//!    by an epoch. This keeps `cancel()` free of allocation (deferring can
//!    allocate a garbage bag) whenever no cleanup races with it.
//! 6. Apart from whoever unlinks it, only *cleanup passes* can still hold a
//!    pointer to an unlinked entry: a closer reaches entries only through
//!    `fetch_or` on a predecessor, which fails to be the pointer a cleanup
//!    CAS replaced (invariant 3); pushers and removers never dereference
//!    another entry. So a pass that unlinks entries while it is the only
//!    pass (`cleaners == 1`), or a remover that unlinks its own entry from
//!    the head while no pass runs (`cleaners == 0`), releases at once — each
//!    reads `cleaners` after a SeqCst fence that pairs with the fence every
//!    pass makes after incrementing `cleaners` (the store-buffer pattern:
//!    either the unlinker sees the pass counted, or the pass's later loads
//!    see the entry unlinked). Epoch deferral is only for overlapping
//!    passes. This keeps churn from flooding crossbeam-epoch's garbage
//!    queue.
//!
//!    The unlinker's side needs no fence of its own on real targets: its
//!    unlink (the remover's head CAS, the closer's swap) is a SeqCst
//!    read-modify-write and its read of `cleaners` a SeqCst load. Were
//!    both reads stale — the unlinker's load before the pass's increment,
//!    the pass's later Acquire load of the head before the unlink — the
//!    single total order S of C++20 [atomics.order] p4 would hold the
//!    cycle unlink < load (sequenced before) < increment (4.1: coherence
//!    between two SeqCst operations) < the pass's fence (sequenced before)
//!    < unlink (4.3: a SeqCst fence that happens before a read coherence-
//!    ordered before a SeqCst write precedes that write). loom, though,
//!    models SeqCst *accesses* as AcqRel (only its fences are SeqCst), so
//!    under loom the unlinker fences too (`sb_fence`), and its models check
//!    that protocol; on x86-64 the fence is a `lock or` per unlink
//!    that the CAS has already paid for.
//! 7. `marked` counts removed-but-linked entries. A remover whose head CAS
//!    fails counts its entry only after marking it, so a pass may unlink it
//!    and decrement first: the counter is then briefly one below the truth
//!    (wrapping below zero). Readers treat it as signed (`i32`); it only drives the
//!    cleanup heuristic (a pass starts once `marked` reaches `threshold`,
//!    half the number of live entries the previous pass walked past, so
//!    each pass's walk is paid for by removals in proportion). A cleanup
//!    pass stops once it has unlinked as many entries as `marked` counted
//!    when it started, so churn near the head never walks the live entries
//!    behind it; a low count only ends a pass early, and what it leaves is
//!    still counted for the next one. (The timer's `sweep` walks the whole
//!    list: it claims live entries too.)
//! 8. Every pointer the list dereferences or hands out is rebuilt from its
//!    address with the provenance `push` exposed (`entry_at`). A pointer
//!    *stored* in the list may carry the provenance of an earlier entry at
//!    the same address: a push loads the head (entry A) and writes it into
//!    its entry's `next`; meanwhile A is removed, released and freed, and a
//!    new entry B is allocated at A's address and pushed; the push's CAS
//!    compares addresses, so it succeeds. The list is right — B is the
//!    successor — but the stored pointer names A's freed allocation, and
//!    reaching B through it would be a use-after-free in Rust's abstract
//!    machine (miri found it: `tests/churn.rs` under Tree Borrows, and
//!    `list::tests::unit::two_threads_push_and_remove_their_own_entries`).
//!    Exposing costs nothing at run time.
//! 9. In a list no sweep claims from (all but the timer's, [`List::swept`]),
//!    the remover of an entry that is the head and has no successor
//!    (`next` null) unlinks it with one CAS of the head from the entry to
//!    null before marking it, and then marks it with a plain store (so a
//!    second removal reads it as removed, and a pass that still reaches it
//!    finds what the marked unlink leaves). Its `next` cannot change
//!    between the read and the CAS: only a
//!    pass unlinking its successor writes an unmarked `next`, and it has
//!    none (pushes link in front of the head, never behind an entry). The
//!    CAS and the closer's swap are on the same word, so one of them comes
//!    first: a closer that comes later finds an empty list, and a remover
//!    that comes later fails and marks as usual (invariant 2 decides). A
//!    pass that reached the entry through the head is counted in
//!    `cleaners`, as for the marked unlink (invariant 6). A sweep, though,
//!    claims a live entry by marking its `next`, which this remover does
//!    not read again, so swept lists always mark.
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
//! * Head unlink by the remover (marked, or a lone entry's): SeqCst CAS,
//!   then a SeqCst load of
//!   `cleaners` (invariant 6; under loom a SeqCst fence between them).
//!   The closer's swap likewise (invariant 5).
//! * `marked` and the threshold (`List::threshold`) only decide when to
//!   clean; they are Relaxed. Pushes and head unlinks touch no counter at
//!   all; the diagnostics (`live`, `linked`) walk the list instead.
//!   `cleaners` is the exception above.

use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ptr;

use crossbeam_epoch::{self as epoch, Guard};

use crate::primitive::atomic::{AtomicPtr, AtomicU32, Ordering, fence, fetch_or_tag};

/// Tag on `head`: the list is closed.
const CLOSED: usize = 1;
/// Tag on an entry's `next`: the entry is removed (or frozen by the closer).
const MARK: usize = 1;

/// A cleanup pass starts only when at least this many entries are removed
/// but still linked (and at least half as many as the live entries the last
/// pass walked past). Under loom every removal cleans, so the models
/// exercise the pass.
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

/// The entry at a pointer read from the list (`head` or a `next`), tag
/// removed.
///
/// The pointer is rebuilt from its address, with the provenance `push`
/// exposed (invariant 8): a pointer stored in the list may carry the
/// provenance of an earlier entry that lived at the same address.
#[inline]
fn entry_at<E>(ptr: *mut ()) -> *const E {
    ptr::with_exposed_provenance(untagged(ptr).addr())
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

    /// `release_link` by a remover that has just unlinked its entry from
    /// the head while no cleanup pass runs (invariant 6): nobody else can
    /// reach the entry through the list any more, and the remover holds a
    /// reference of its own (`remove`'s contract), so a type whose other
    /// holders it can rule out may drop the count without a
    /// read-modify-write.
    ///
    /// # Safety
    ///
    /// As `release_link`, and as just said.
    unsafe fn release_link_unlinked(this: *const Self) {
        // SAFETY: forwarded.
        unsafe { Self::release_link(this) }
    }
}

/// See the module docs.
pub(crate) struct List<E: Entry> {
    head: AtomicPtr<()>,
    /// Entries logically removed but still linked (invariant 7). The
    /// counters are 32 bits, so a list is three words (a node embeds two):
    /// 2^31 removed entries would take 48 GiB of nodes.
    marked: AtomicU32,
    /// Cleanup passes in progress (at most one per thread).
    cleaners: AtomicU32,
    /// Removed-but-linked entries that trigger a cleanup pass
    /// (`List::threshold`), less the least of them (`List::cleanup_min`):
    /// half the number of live entries the last pass kept (so a pass's
    /// traversal is paid for by removals in proportion), and at least the
    /// least. Written only by passes. Stored as the excess over the least,
    /// and the least as its shortfall from `CLEANUP_MIN` (the next field),
    /// so that a new list of the usual minimum is all zero bytes (but a
    /// swept list's flag): a node then writes its two lists, its state and
    /// its link as six 16-byte zero stores (12 -> 10 stores in all, which
    /// the first handle's locked decrement waits to drain).
    threshold_over_min: AtomicU32,
    /// `CLEANUP_MIN` less the least threshold (which is at most
    /// `CLEANUP_MIN`; zero for `List::new`).
    min_under_default: u16,
    /// Whether `sweep` may claim live entries (`List::swept`). If not, the
    /// remover of a lone entry at the head unlinks it with one CAS
    /// (invariant 9).
    swept: bool,
    /// The byte after `swept`, written as zero when the list is built, so
    /// that the two thresholds, `swept` and it are eight bytes
    /// without a hole and go out as one store: a node builds two lists, and
    /// with the byte left as padding each took three stores, which the
    /// first handle's locked decrement then waits to drain (`with_cancel`
    /// of `background()` and the drop of both handles 13.7 -> 13.3 ns in
    /// alternating runs; `docs::internals`, "Where the time goes").
    _fill: u8,
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

/// A hint to start loading the two cache lines at `at` (an entry about to
/// be visited); nothing on targets without a prefetch instruction. Never
/// faults, whatever the address.
#[inline(always)]
fn prefetch(at: *mut ()) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: `_mm_prefetch` is a hint: it reads nothing the program can
    // observe and does not fault on any address.
    unsafe {
        use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let at = at.cast::<i8>().cast_const();
        _mm_prefetch::<_MM_HINT_T0>(at);
        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(64));
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = at;
}

/// The fence on the read-modify-write side of a store-buffer pattern
/// whose other side fences: between a SeqCst read-modify-write and a
/// SeqCst load, it adds nothing on real targets (C++20 [atomics.order] p4;
/// invariant 6 has the argument), and is needed only under loom, which
/// models SeqCst accesses as AcqRel. Here: the unlinker's, between its
/// unlink and its load of `cleaners` (invariants 5 and 6); in the timer,
/// the arming thread's (timer invariant 5).
#[inline(always)]
pub(crate) fn sb_fence() {
    if cfg!(loom) {
        fence(Ordering::SeqCst);
    }
}

impl<E: Entry> List<E> {
    pub(crate) fn new() -> Self {
        List::with_cleanup_min(CLEANUP_MIN)
    }

    /// A list that cleans up once `min` removed entries (and at least half
    /// of the list) are waiting to be unlinked.
    pub(crate) fn with_cleanup_min(min: usize) -> Self {
        List::build(min, false)
    }

    /// `with_cleanup_min`, for a list that `sweep` may claim entries of
    /// (the timer wheel's): its removers always mark (invariant 9).
    pub(crate) fn swept(min: usize) -> Self {
        List::build(min, true)
    }

    fn build(min: usize, swept: bool) -> Self {
        // At most `CLEANUP_MIN`, so it fits in 16 bits.
        let min = min.min(CLEANUP_MIN) as u16;
        List {
            min_under_default: CLEANUP_MIN as u16 - min,
            swept,
            head: AtomicPtr::new(ptr::null_mut()),
            threshold_over_min: AtomicU32::new(0),
            marked: AtomicU32::new(0),
            cleaners: AtomicU32::new(0),
            _fill: 0,
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
        // SAFETY: forwarded.
        unsafe { self.push_ordered(entry, Ordering::Release) }.map(drop)
    }

    /// `push` with a SeqCst CAS: for a pusher whose next step is the
    /// read-modify-write side of a store-buffer pattern (`sb_fence`; the
    /// timer's arming). The same instruction as `push` on x86-64.
    ///
    /// # Safety
    ///
    /// As `push`.
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) unsafe fn push_seqcst(&self, entry: *const E) -> Result<(), Closed> {
        // SAFETY: forwarded.
        unsafe { self.push_ordered(entry, Ordering::SeqCst) }.map(drop)
    }

    /// `push_seqcst` that also says whether another thread changed the
    /// head while we pushed (a CAS lost to a push or an unlink; a spurious
    /// failure of the weak CAS does not count): contention, which a child
    /// list answers with stripes (cancel.rs).
    ///
    /// # Safety
    ///
    /// As `push`.
    pub(crate) unsafe fn push_seqcst_contended(&self, entry: *const E) -> Result<bool, Closed> {
        // SAFETY: forwarded.
        unsafe { self.push_ordered(entry, Ordering::SeqCst) }
    }

    /// `push`, whose linking CAS succeeds with `success` (Release at least);
    /// `Ok(true)` if a CAS was lost to another thread's change of the head.
    ///
    /// # Safety
    ///
    /// As `push`.
    #[inline(always)]
    unsafe fn push_ordered(&self, entry: *const E, success: Ordering) -> Result<bool, Closed> {
        // SAFETY: the caller guarantees `entry` is valid.
        let link = unsafe { (*entry).link() };
        // Invariant 8: whoever reaches the entry through the list rebuilds
        // its pointer from the address (`entry_at`), with this provenance.
        let _ = entry.expose_provenance();
        // Ordering: Acquire — if we see CLOSED we must also see what the
        // closer did before closing; pairs with the swap in `close`.
        let mut head = self.head.load(Ordering::Acquire);
        let mut contended = false;
        loop {
            if tagged(head, CLOSED) {
                return Err(Closed);
            }
            // Ordering: Relaxed — published by the Release CAS below.
            link.next.store(head, Ordering::Relaxed);
            // Ordering: Release (or stronger, `success`) on success
            // publishes the entry; Acquire on failure for the same reason
            // as the load above.
            match self.head.compare_exchange_weak(
                head,
                entry.cast_mut().cast(),
                success,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(contended),
                Err(actual) => {
                    contended |= actual != head;
                    head = actual;
                }
            }
        }
    }

    /// Removes `entry`. Returns false if it was already removed or frozen by
    /// a closer (who then owns its link reference).
    ///
    /// An entry at the head (the usual case when children come and go in
    /// LIFO order) is unlinked at once by its remover; any other entry is
    /// removed logically and unlinked by a later cleanup pass.
    ///
    /// # Safety
    ///
    /// `entry` must have been pushed onto *this* list and still be valid.
    #[inline]
    pub(crate) unsafe fn remove(&self, entry: *const E) -> bool {
        // SAFETY: the caller guarantees `entry` is valid.
        let link = unsafe { (*entry).link() };
        let raw: *mut () = entry.cast_mut().cast();
        // Ordering: Relaxed — only a hint for which path to take; the CAS
        // below decides.
        if self.head.load(Ordering::Relaxed) != raw {
            // Counted before marking, so a cleanup pass that unlinks the
            // entry (which it can only do after seeing the mark) decrements
            // after us.
            self.marked.fetch_add(1, Ordering::Relaxed);
            // Ordering: AcqRel — totally ordered with the closer's freezing
            // fetch_or (invariant 2); Release lets a cleanup pass that sees
            // the mark see the remover's prior writes.
            let prev = fetch_or_tag(&link.next, MARK, Ordering::AcqRel);
            if tagged(prev, MARK) {
                self.marked.fetch_sub(1, Ordering::Relaxed);
                return false;
            }
            self.maybe_cleanup();
            return true;
        }
        // A lone entry (no successor) of a list no sweep claims from:
        // unlinked with one CAS, marked after it (invariant 9). Ordering: Relaxed
        // — only picks the path: `next` was set by our push, which happens
        // before our removal, and it becomes null only when a pass unlinks
        // our successor, never non-null again; the CAS decides.
        if !self.swept && link.next.load(Ordering::Relaxed).is_null() {
            // Ordering: SeqCst on success — as the marked unlink below;
            // failure needs nothing (we fall back to marking).
            if let Ok(linked) = self.head.compare_exchange(
                raw,
                ptr::null_mut(),
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                // Marked now, as the path below leaves it, so that removing
                // it again returns false. A store: nobody else writes this
                // `next` any more (invariant 9). Ordering: Relaxed — read
                // only by a later removal of ours and by passes, which
                // treat it as the marked path's unlinked entry.
                link.next
                    .store(ptr::without_provenance_mut(MARK), Ordering::Relaxed);
                // SAFETY: our CAS unlinked the entry (invariant 9).
                unsafe { self.release_unlinked_head(linked) };
                return true;
            }
        }
        // Ordering: AcqRel — as above (invariant 2).
        let prev = fetch_or_tag(&link.next, MARK, Ordering::AcqRel);
        if tagged(prev, MARK) {
            return false;
        }
        // Our mark froze `next`: if we are still the head, `succ` is still
        // our successor (nothing behind a marked pointer can be unlinked).
        // Ordering: SeqCst on success — the store-buffer pattern with a
        // cleanup pass's increment of `cleaners` and fence (invariant 6);
        // failure needs nothing.
        let succ = untagged(prev);
        if let Ok(linked) =
            self.head
                .compare_exchange(raw, succ, Ordering::SeqCst, Ordering::Relaxed)
        {
            // SAFETY: our CAS unlinked the entry (invariant 3).
            unsafe { self.release_unlinked_head(linked) };
            return true;
        }
        // A push or a cleanup pass moved the head (or a closer took the
        // list): the entry stays linked, marked, for a pass or the closer.
        // Counted after marking here, so a pass may decrement first and
        // the counter wraps below zero for a moment (invariant 7).
        self.marked.fetch_add(1, Ordering::Relaxed);
        self.maybe_cleanup();
        true
    }

    /// Drops the link reference of the entry at `linked`, which the
    /// caller's SeqCst CAS has just unlinked from the head.
    ///
    /// # Safety
    ///
    /// The caller's CAS unlinked it (so it owns the link reference,
    /// invariant 3) and it holds a reference of its own (`remove`'s
    /// contract).
    #[inline]
    unsafe fn release_unlinked_head(&self, linked: *mut ()) {
        // Release through the provenance the pusher exposed (the
        // allocation's full one, invariant 8), not through the remover's
        // pointer, which a caller may have made from a shared reference:
        // freeing through that would be undefined behaviour (Tree Borrows).
        let entry = entry_at::<E>(linked);
        sb_fence();
        // Invariant 6: a pass that started after our CAS cannot reach the
        // entry (it was only reachable from the head); one that started
        // before is counted here.
        if self.cleaners.load(Ordering::SeqCst) == 0 {
            // SAFETY: we own its link reference (the caller's), and no pass
            // can reach it (invariant 6).
            unsafe { E::release_link_unlinked(entry) };
        } else {
            let guard = epoch::pin();
            // SAFETY: we own the link reference; a running pass may still
            // read the entry (invariant 4).
            unsafe { defer_release(&guard, entry) };
        }
    }

    /// The least number of removed-but-linked entries that triggers a
    /// cleanup pass.
    #[inline]
    fn cleanup_min(&self) -> u32 {
        CLEANUP_MIN as u32 - u32::from(self.min_under_default)
    }

    /// Removed-but-linked entries that trigger a cleanup pass now.
    #[inline]
    fn threshold(&self) -> u32 {
        // Ordering: Relaxed — only decides when to clean (module docs).
        let over = self.threshold_over_min.load(Ordering::Relaxed);
        over.saturating_add(self.cleanup_min())
    }

    /// Runs a cleanup pass if enough removed entries wait to be unlinked
    /// and no pass is running.
    #[inline]
    fn maybe_cleanup(&self) {
        // Wrapping difference: see invariant 7.
        let marked = self.marked.load(Ordering::Relaxed) as i32 as isize;
        if marked >= self.threshold() as isize && self.cleaners.load(Ordering::Relaxed) == 0 {
            self.cleanup();
        }
    }

    /// Unlinks the removed entries it finds (Harris–Michael traversal),
    /// stopping once it has unlinked as many as were counted removed when
    /// it started: removed entries gather where the churn is, usually near
    /// the head, so a pass need not walk every live entry behind them (a
    /// long-lived list of many live entries — a parent's children, a timer
    /// slot of far deadlines — under churn at its head).
    #[cold]
    fn cleanup(&self) {
        self.pass(|_| false, true);
    }

    /// A cleanup pass that also removes every live entry for which
    /// `remove` returns true (it may be called again for an entry it
    /// declined, after a restart). The timer's expiry uses it; `remove`
    /// must take whatever reference it needs on an entry it claims, since
    /// the list's own is released (after an epoch) once it is unlinked.
    /// It walks the whole list.
    pub(crate) fn sweep(&self, remove: impl FnMut(*const E) -> bool) {
        // Invariant 9: a lone head's remover would not see the claim.
        assert!(
            self.swept,
            "goctx: `sweep` on a list not built by `List::swept`"
        );
        self.pass(remove, false);
    }

    /// `sweep`, or with `early`, `cleanup`'s early stop.
    fn pass(&self, mut remove: impl FnMut(*const E) -> bool, early: bool) {
        let pass = self.enter_pass();
        let guard = &pass.guard;
        let mut deferred = false;
        // Stop after unlinking this many (invariant 7: the count is exact
        // once removers settle; a low reading only ends this pass early,
        // and the entries left are still counted for the next one).
        let target = if early {
            self.marked.load(Ordering::Relaxed) as i32 as isize
        } else {
            isize::MAX
        };
        let mut unlinked = 0isize;
        // Live entries this pass walked past (and keeps).
        let mut kept;
        'restart: loop {
            kept = 0;
            let mut pred: &AtomicPtr<()> = &self.head;
            // Ordering: Acquire — pairs with the Release CAS in `push`, so
            // the entry's fields are visible.
            let mut cur = pred.load(Ordering::Acquire);
            if tagged(cur, CLOSED) {
                break;
            }
            while !cur.is_null() {
                let entry = entry_at::<E>(cur);
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
                    // Unlink the whole run of removed entries that starts
                    // here with one CAS. Their `next` pointers are marked,
                    // hence frozen (invariant 2): the run cannot change.
                    let mut run = 1;
                    let mut succ = untagged(next);
                    while !succ.is_null() {
                        // SAFETY: reachable from a linked entry's frozen
                        // `next` while we are pinned and counted as a pass
                        // (invariants 4 and 6).
                        let succ_link = unsafe { (*entry_at::<E>(succ)).link() };
                        // Ordering: Acquire — as the load of `next` above.
                        let succ_next = succ_link.next.load(Ordering::Acquire);
                        if !tagged(succ_next, MARK) {
                            break;
                        }
                        run += 1;
                        succ = untagged(succ_next);
                    }
                    // Ordering: AcqRel on success (we take ownership of the
                    // run's link references), Acquire on failure.
                    if pred
                        .compare_exchange(cur, succ, Ordering::AcqRel, Ordering::Acquire)
                        .is_err()
                    {
                        // The predecessor was removed, frozen or changed:
                        // start over from the head (which may be CLOSED).
                        continue 'restart;
                    }
                    self.marked.fetch_sub(run, Ordering::Relaxed);
                    // Invariant 6: only other cleanup passes can still read
                    // the entries we unlinked. If we are the only one,
                    // release them now; otherwise after an epoch.
                    fence(Ordering::SeqCst);
                    let alone = self.cleaners.load(Ordering::SeqCst) == 1;
                    let mut gone = cur;
                    while gone != succ {
                        let entry = entry_at::<E>(gone);
                        // SAFETY: we own the entry's link reference until
                        // we release it below; read its frozen `next` first.
                        let after = unsafe { (*entry).link() }.next.load(Ordering::Relaxed);
                        if alone {
                            // SAFETY: we own its link reference (invariant
                            // 3) and no other pass can reach it (invariant
                            // 6).
                            unsafe { E::release_link(entry) };
                        } else {
                            // SAFETY: we own its link reference (invariant
                            // 3); other pinned passes may still read it
                            // (invariant 4).
                            unsafe { defer_release(guard, entry) };
                            deferred = true;
                        }
                        gone = untagged(after);
                    }
                    unlinked += run as isize;
                    if unlinked >= target {
                        break 'restart;
                    }
                    cur = succ;
                } else {
                    kept += 1;
                    pred = &link.next;
                    cur = next;
                }
            }
            break;
        }
        // The next pass waits for removals of half as many entries as there
        // are to walk past, which keeps cleanup amortised O(1) per operation,
        // and halves the wait each time a list drains from its tail. (Under
        // loom the threshold stays at its minimum, so every removal cleans.)
        if cfg!(not(loom)) {
            let half = u32::try_from(kept / 2).unwrap_or(u32::MAX);
            let min = self.cleanup_min();
            // Ordering: Relaxed — as in `threshold`.
            self.threshold_over_min
                .store(half.max(min) - min, Ordering::Relaxed);
        }
        if deferred {
            // Hand what we deferred to the global queue and collect what has
            // expired, rather than wait for the collector's own cadence.
            guard.flush();
        }
    }

    /// Starts a pass over the list (a cleanup pass or a diagnostic walk):
    /// counted in `cleaners` and pinned, so nothing it can reach is freed
    /// under it (invariants 4–6). The pass ends when the returned guard is
    /// dropped — also if the pass unwinds (a panic in code it calls: an
    /// entry's release, the sweep's `remove`), so `cleaners` never stays
    /// raised and the list is cleaned again by later passes.
    fn enter_pass(&self) -> Pass<'_> {
        // Ordering: SeqCst increment + fence — the store-buffer pattern with
        // `close` and with head unlinks (invariants 5 and 6): either we see
        // their change of the head, or they see our increment.
        self.cleaners.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        Pass {
            cleaners: &self.cleaners,
            guard: ManuallyDrop::new(epoch::pin()),
        }
    }

    /// Closes the list and returns the detached chain. Only the first call
    /// gets entries; later calls get an empty chain.
    pub(crate) fn close(&self) -> Chain<E> {
        // Ordering: AcqRel — Acquire sees every pushed entry's fields;
        // Release publishes the owner's state (set before closing) to
        // pushers that find the list closed. SeqCst for invariant 5.
        let first = self.head.swap(closed(), Ordering::SeqCst);
        if tagged(first, CLOSED) || first.is_null() {
            // Nothing to walk (the common case of a context with no live
            // children or waiters): no pass can hold any entry of ours.
            return Chain::empty();
        }
        sb_fence();
        // Ordering: SeqCst — the store-buffer pattern with a pass's
        // increment and fence (invariants 5 and 6); Acquire in it pairs with
        // the Release decrement of a pass that has ended.
        let defer = self.cleaners.load(Ordering::SeqCst) != 0;
        Chain {
            cur: first,
            guard: if defer { Some(epoch::pin()) } else { None },
            _entries: PhantomData,
        }
    }

    /// Closes the list if nothing is linked: `close` for a list known to be
    /// empty, with nothing to walk. Returns whether the list is now closed
    /// (by us or by an earlier `close`); `false` if entries are linked, and
    /// the list stays open for `close`.
    pub(crate) fn close_if_empty(&self) -> bool {
        // A list with entries is left alone without a doomed CAS (an inner
        // node of a cancelled tree: its list is closed later by `close`).
        // Ordering: Relaxed — a hint; the CAS below decides.
        let head = self.head.load(Ordering::Relaxed);
        if !head.is_null() {
            return tagged(head, CLOSED);
        }
        // Ordering: SeqCst on success — as `close`'s swap (invariants 1 and
        // 5; with no entry detached there is no chain for a pass to share,
        // so no `cleaners` check follows). Failure: Relaxed, only the tag
        // is read.
        match self.head.compare_exchange(
            ptr::null_mut(),
            closed(),
            Ordering::SeqCst,
            Ordering::Relaxed,
        ) {
            Ok(_) => true,
            Err(head) => tagged(head, CLOSED),
        }
    }

    /// Whether the list was never pushed onto or is empty again, read as
    /// the load side of a store-buffer pattern whose other side is a push
    /// (`push_seqcst`) followed by a SeqCst load: the caller has just made
    /// a SeqCst read-modify-write (a node's deciding CAS, cancel.rs
    /// invariant 7). `sb_fence` then a SeqCst load, as the head unlink's
    /// read of `cleaners` (invariant 6 has the argument).
    pub(crate) fn is_empty_after_rmw(&self) -> bool {
        sb_fence();
        self.head.load(Ordering::SeqCst).is_null()
    }

    /// Whether nothing is linked (the list is empty or closed).
    pub(crate) fn is_empty(&self) -> bool {
        // Ordering: Acquire — as the other loads of `head`.
        let head = self.head.load(Ordering::Acquire);
        head.is_null() || tagged(head, CLOSED)
    }

    /// Whether no pass is running. Once this is true, no pass can hold a
    /// pointer to an entry that was unlinked before the call (invariant 6:
    /// only passes can, and a pass that starts later cannot reach it), so
    /// the entry's link may be pushed again — the timer wheel moves entries
    /// between lists this way.
    pub(crate) fn is_quiescent(&self) -> bool {
        // Ordering: SeqCst fence, then Acquire — the fence orders the
        // unlink we (or the pass that unlinked the entry, whose CAS we
        // read) made before it against the fence each pass makes after its
        // increment, so a pass that may have reached the entry is counted
        // here; Acquire pairs with the Release decrement of a pass that
        // has ended, so its reads happen before the entry is relinked.
        fence(Ordering::SeqCst);
        self.cleaners.load(Ordering::Acquire) == 0
    }

    /// Whether `close` has run.
    pub(crate) fn is_closed(&self) -> bool {
        tagged(self.head.load(Ordering::Acquire), CLOSED)
    }

    /// Entries linked, not removed and for which `counts` is true, for
    /// diagnostics (exact when no other thread touches the list).
    pub(crate) fn live(&self, counts: impl FnMut(&E) -> bool) -> usize {
        self.count(counts).1
    }

    /// Entries physically linked (including removed ones not yet unlinked).
    pub(crate) fn linked(&self) -> usize {
        self.count(|_| true).0
    }

    /// Walks the list: `(linked, live)` where live entries are the unremoved
    /// ones `counts` accepts. Diagnostics only (O(n)); the walk counts itself
    /// as a cleanup pass, so nothing it can reach is freed under it
    /// (invariant 6).
    fn count(&self, mut counts: impl FnMut(&E) -> bool) -> (usize, usize) {
        let pass = self.enter_pass();
        let (mut linked, mut live) = (0, 0);
        // Ordering: Acquire — as in `sweep`.
        let mut cur = self.head.load(Ordering::Acquire);
        if tagged(cur, CLOSED) {
            cur = ptr::null_mut();
        }
        while !cur.is_null() {
            // SAFETY: reachable while we are pinned and counted as a pass
            // (invariants 4 and 6).
            let entry = unsafe { &*entry_at::<E>(cur) };
            // Ordering: Acquire — as in `sweep`.
            let next = entry.link().next.load(Ordering::Acquire);
            linked += 1;
            if !tagged(next, MARK) && counts(entry) {
                live += 1;
            }
            cur = untagged(next);
        }
        drop(pass);
        (linked, live)
    }
}

/// A pass over a list in progress (`List::enter_pass`): counted in the
/// list's `cleaners` and pinned until dropped.
struct Pass<'a> {
    cleaners: &'a AtomicU32,
    guard: ManuallyDrop<Guard>,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        // Unpin first, as a pass that ends normally: nothing of the list is
        // read after this point.
        // SAFETY: dropped exactly once, here; not used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.guard) };
        // Ordering: Release — our reads of the chain happen before a closer
        // that reads zero here (Acquire after its fence).
        self.cleaners.fetch_sub(1, Ordering::Release);
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
            .field("live", &self.live(|_| true))
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
        self.step(true)
    }

    /// `next_entry` without the freeze where it is not needed: for a chain
    /// no cleanup pass can reach (`!deferring()`), of a list whose removers
    /// do not care whether the closer reached their entry first (a child
    /// list: there a removal only means "do not cancel me", which the
    /// child's own state CAS decides anyway). No pass can unlink behind a
    /// closed head then (invariants 1, 5 and 6) and removers only set marks,
    /// so nothing changes the address part of a `next` in the chain any
    /// more: one Acquire load reads the successor, one locked
    /// read-modify-write per entry less. The mark it reads may be stale (a
    /// removal racing the walk); the caller must cope with both answers.
    /// With a pass running it freezes, as `next_entry`.
    pub(crate) fn next_entry_unfrozen(&mut self) -> Option<(*const E, bool)> {
        self.step(self.guard.is_some())
    }

    /// Yields the next entry, freezing its `next` first if `freeze`.
    #[inline(always)]
    fn step(&mut self, freeze: bool) -> Option<(*const E, bool)> {
        if self.cur.is_null() {
            return None;
        }
        let entry = entry_at::<E>(self.cur);
        // SAFETY: the chain owns the link reference of every entry it has not
        // yet yielded, so `entry` is valid.
        let link = unsafe { (*entry).link() };
        let next = if freeze {
            // Ordering: AcqRel — invariant 2; Acquire sees a remover's writes.
            fetch_or_tag(&link.next, MARK, Ordering::AcqRel)
        } else {
            // Ordering: Acquire — sees a remover's writes to the entry if
            // its mark is read (the freeze's Acquire half).
            link.next.load(Ordering::Acquire)
        };
        self.cur = untagged(next);
        // The walk is a pointer chase: ask for the successor's memory now,
        // so that it arrives while the caller works on this entry (a
        // fanout over a million children waits on memory otherwise).
        prefetch(self.cur);
        Some((entry, tagged(next, MARK)))
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

#[cfg(any(test, feature = "fuzzing-internals"))]
pub(crate) mod tracked;

#[cfg(test)]
mod tests;
