//! Striped child lists: a context whose children are derived on several
//! threads at once gets one child list per stripe, each on its own cache
//! line, so that concurrent derivations and drops of its children stop
//! writing one shared list head (`docs::internals`, "Striped child lists").
//!
//! A [`StripeSlot`] sits in every cancel node, null until a push onto the
//! node's own child list loses a CAS to another thread (`cancel.rs`
//! installs the stripes then, once). Threads are handed stripes round
//! robin; a thread pushes the children it derives onto its stripe's list,
//! and every child removes itself from the list it was pushed onto (its
//! `registered`), whichever thread drops it. The stripes live as long as
//! the node's memory: the slot frees them when the node is dropped in place.

use core::ptr;

use crossbeam_utils::CachePadded;

use crate::list::{Entry, List};
use crate::primitive::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// Stripes per striped node; under loom two, to keep the models small.
/// Eight stripes of `CachePadded` lists (128 bytes each on x86-64) are
/// 1 KiB, allocated only for a node whose children were derived
/// concurrently.
#[cfg(not(loom))]
pub(crate) const STRIPES: usize = 8;
#[cfg(loom)]
pub(crate) const STRIPES: usize = 2;

/// One child list per stripe, each alone on its cache lines.
pub(crate) struct Stripes<E: Entry> {
    lists: [CachePadded<List<E>>; STRIPES],
}

impl<E: Entry> Stripes<E> {
    /// The list of stripe `index` (`index()`).
    pub(crate) fn list(&self, index: usize) -> &List<E> {
        &self.lists[index % STRIPES]
    }

    /// Every stripe's list.
    pub(crate) fn lists(&self) -> impl Iterator<Item = &List<E>> {
        self.lists.iter().map(|list| &**list)
    }
}

/// A node's stripes: null until installed, then fixed for the node's life.
pub(crate) struct StripeSlot<E: Entry>(AtomicPtr<Stripes<E>>);

impl<E: Entry> StripeSlot<E> {
    pub(crate) fn new() -> StripeSlot<E> {
        StripeSlot(AtomicPtr::new(ptr::null_mut()))
    }

    /// The stripes, if installed.
    #[inline]
    pub(crate) fn get(&self) -> Option<&Stripes<E>> {
        // Ordering: SeqCst — the load of the store-buffer patterns in
        // `cancel.rs` (invariant 8): a deriver loads the slot, pushes onto a
        // stripe (SeqCst) and loads its anchor's word (SeqCst); a canceller
        // CASes the word and then loads the slot and each stripe's head. The
        // Acquire half pairs with the installing CAS: the lists it
        // initialised are visible. (A plain load on x86-64.)
        // SAFETY: null, or the installed allocation, which lives until the
        // slot is dropped (with the node, after `&self`).
        unsafe { self.0.load(Ordering::SeqCst).as_ref() }
    }

    /// Installs stripes if none are yet; a racing installer's win is kept
    /// (ours is freed).
    #[cold]
    #[inline(never)]
    pub(crate) fn install(&self) {
        if self.get().is_some() {
            return;
        }
        let stripes = Box::into_raw(Box::new(Stripes {
            lists: core::array::from_fn(|_| CachePadded::new(List::new())),
        }));
        // Ordering: SeqCst — the write every later `get` reads (Release:
        // the lists' initialisation is published with it; SeqCst: the
        // install comes before, in the total order, every push made onto
        // one of its lists, see `get`). Failure: Relaxed, we only free ours.
        if self
            .0
            .compare_exchange(
                ptr::null_mut(),
                stripes,
                Ordering::SeqCst,
                Ordering::Relaxed,
            )
            .is_err()
        {
            // SAFETY: never shared: the CAS that would have published it
            // failed.
            drop(unsafe { Box::from_raw(stripes) });
        }
    }
}

impl<E: Entry> Drop for StripeSlot<E> {
    fn drop(&mut self) {
        // Ordering: Relaxed — `&mut self`: the node's last memory reference
        // is gone (its Acquire made every other holder's accesses, the
        // installing CAS among them, happen before this).
        let stripes = self.0.load(Ordering::Relaxed);
        if !stripes.is_null() {
            // SAFETY: installed by `install` from a `Box`, owned by the
            // slot; the node is being dropped, so nothing reads it any more
            // (its lists were closed at the node's release).
            drop(unsafe { Box::from_raw(stripes) });
        }
    }
}

/// This thread's stripe, handed out round robin at its first use.
#[cfg(not(loom))]
#[inline]
pub(crate) fn index() -> usize {
    use core::cell::Cell;
    /// Not yet handed out.
    const NONE: usize = usize::MAX;
    std::thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(NONE) };
    }
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    // A const thread-local without `Drop` has no destructor state: `with`
    // cannot fail, even in thread teardown.
    INDEX.with(|index| {
        let current = index.get();
        if current != NONE {
            return current;
        }
        // Ordering: Relaxed — a spreading hint; any value is correct.
        let current = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
        index.set(current);
        current
    })
}

/// This thread's stripe (loom: one counter per model execution).
#[cfg(loom)]
pub(crate) fn index() -> usize {
    crate::primitive::lazy_static! {
        static ref NEXT: AtomicUsize = AtomicUsize::new(0);
    }
    crate::primitive::thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    INDEX.with(|index| *index)
}
