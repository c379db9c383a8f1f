//! A small per-thread cache of freed node allocations.
//!
//! Every `with_cancel` allocates one node and every release frees one. The
//! system allocator serves that churn well while it fits its own per-thread
//! cache, but glibc's holds only 7 blocks per size: a tree built before it is
//! dropped (a chain 100 deep, 10 timeouts derived and then cancelled) falls
//! through to its shared bins, whose coalescing took a third of
//! `cancel_tree/depth=100` (issue 8's regression check, `docs::internals`).
//! So each thread keeps freed blocks of each of the two common node layouts
//! (a plain cancel node, a deadline node) and takes a derivation's block
//! from there first: up to [`CAPACITY`] per layout at first, and up to
//! [`MAX_CAPACITY`] while the thread frees and derives more at once (a chain
//! 1000 deep dropped and built again in a loop), shrinking back when it
//! stops (`imp::Bin`).
//!
//! - Only memory is cached: a block enters the cache after its node was
//!   dropped in place, exactly where it would have gone to the allocator
//!   (the last memory reference, `CancelNode::release_memory`), and leaves
//!   it uninitialised. No user data is ever held.
//! - The cache is bounded (20 KiB per thread at first, 320 KiB at
//!   most) and freed when its thread exits; a block freed during thread
//!   teardown, after the cache is gone, goes straight to the allocator.
//!   (The cache itself is a `const` thread-local with no destructor, so
//!   that taking and giving a block are plain thread-local loads and
//!   stores with nothing to call — `take_fast` and `give_fast` let a
//!   derivation and a release stay leaf functions; the freeing at exit is
//!   a second thread-local's destructor, `imp::Guard`, registered by the
//!   thread's first give.)
//! - Nothing is shared between threads: a block freed on another thread
//!   joins that thread's cache. The cache is plain thread-local state, with
//!   no atomics and no locks.
//! - Nodes bypass it under loom and miri, and with
//!   `RUSTFLAGS="--cfg goctx_no_node_cache"`, which the AddressSanitizer run
//!   sets, so that a use after free of a node is still reported. (Under
//!   miri the cache itself still runs, in its own unit tests on blocks of
//!   its own.)

use core::mem::MaybeUninit;

/// Freed blocks a thread keeps per bin at first, and at least.
#[cfg_attr(any(loom, goctx_no_node_cache), allow(dead_code))]
pub(crate) const CAPACITY: usize = 64;

/// Freed blocks a thread keeps per bin at most: the bound doubles from
/// [`CAPACITY`] up to this while the thread's churn outgrows it (see
/// `imp::Bin`), 1024 × (128 + 192) bytes = 320 KiB per thread at most.
#[cfg_attr(any(loom, goctx_no_node_cache), allow(dead_code))]
pub(crate) const MAX_CAPACITY: usize = 1024;

/// Bins: the caller names one per layout it wants cached (cancel.rs: a
/// plain cancel node, a deadline node) and never puts two layouts in one.
pub(crate) const BINS: usize = 2;

/// An uninitialised block for a `T`: from this thread's `bin` if it holds
/// one, from the global allocator otherwise (and always when `bin` is
/// `None`).
#[inline]
pub(crate) fn alloc<T>(bin: Option<usize>) -> *mut T {
    #[cfg(not(any(loom, miri, goctx_no_node_cache)))]
    if let Some(bin) = bin
        && let Some(block) = imp::take(bin)
    {
        return block.cast();
    }
    #[cfg(any(loom, miri, goctx_no_node_cache))]
    let _ = bin;
    Box::into_raw(Box::<T>::new_uninit()).cast()
}

/// `alloc` when this thread's `bin` holds a block and no bookkeeping is
/// due (`imp::take_fast`), calling nothing; `None` otherwise (always under
/// loom and miri, and with `goctx_no_node_cache`), and the caller then
/// goes the general way, `alloc`.
#[inline(always)]
pub(crate) fn take_fast<T>(bin: usize) -> Option<*mut T> {
    #[cfg(not(any(loom, miri, goctx_no_node_cache)))]
    return imp::take_fast(bin).map(|block| block.cast());
    #[cfg(any(loom, miri, goctx_no_node_cache))]
    {
        let _ = bin;
        None
    }
}

/// Caches the block of a `T` whose value has no drop left to run (the
/// caller read every field with drop glue in its empty state), if this
/// thread's `bin` has room and no bookkeeping is due
/// (`imp::give_fast`), calling nothing; false otherwise (always under loom
/// and miri, and with `goctx_no_node_cache`), and the caller then goes the
/// general way, `free`.
///
/// # Safety
///
/// As `free`, and dropping the `T` in place would do nothing.
#[inline(always)]
pub(crate) unsafe fn give_fast<T>(this: *mut T, bin: usize) -> bool {
    #[cfg(not(any(loom, miri, goctx_no_node_cache)))]
    return imp::give_fast(bin, this.cast(), core::alloc::Layout::new::<T>());
    #[cfg(any(loom, miri, goctx_no_node_cache))]
    {
        let _ = (this, bin);
        false
    }
}

/// Drops the `T` at `this` in place and frees its block: into this
/// thread's `bin` if there is room, to the global allocator otherwise.
///
/// # Safety
///
/// `this` came from `alloc::<T>` with the same `bin`, holds an initialised
/// `T` (a layer's `MaybeUninit` fields drop nothing), and nothing refers to
/// it any more. `bin` is only ever used with `T`'s layout.
#[inline]
pub(crate) unsafe fn free<T>(this: *mut T, bin: Option<usize>) {
    // SAFETY: per the contract: initialised, and ours alone.
    unsafe { this.drop_in_place() };
    #[cfg(any(loom, miri, goctx_no_node_cache))]
    let _ = bin;
    #[cfg(not(any(loom, miri, goctx_no_node_cache)))]
    if let Some(bin) = bin
        && imp::give(bin, this.cast(), core::alloc::Layout::new::<T>())
    {
        return;
    }
    // SAFETY: a `Box<T>` allocation (`alloc`'s fallback, or a cached block
    // of the same layout, which came from one), its value dropped above.
    drop(unsafe { Box::from_raw(this.cast::<MaybeUninit<T>>()) });
}

#[cfg(not(any(loom, goctx_no_node_cache)))]
#[cfg_attr(miri, allow(dead_code))]
mod imp {
    use core::alloc::Layout;
    use core::cell::Cell;
    use core::ptr;

    use super::{BINS, CAPACITY, MAX_CAPACITY};

    /// A cached block: its first word links the next one.
    struct Free {
        next: *mut Free,
    }

    /// The blocks of one layout, as a stack, with an adaptive bound.
    ///
    /// The bound (`cap`) starts at `CAPACITY`. It doubles, up to
    /// `MAX_CAPACITY`, when the bin runs dry after it refused a block since
    /// it last ran dry: the thread frees more blocks at once than the bin
    /// keeps and then derives them again (a chain deeper than the bound,
    /// built and dropped in a loop). After every `cap` takes, the bin gives
    /// back half of the blocks it never needed in that window (the fewest
    /// it held, `low`), and halves the bound (not below `CAPACITY`) if more
    /// than half of it went unused. So a thread's cache follows its working
    /// set both ways, as an allocator's thread cache does (jemalloc's
    /// tcache works alike); a thread that stops deriving keeps what it
    /// holds until it exits.
    struct Bin {
        top: Cell<*mut Free>,
        /// The blocks held (low 32 bits) and the takes left before the next
        /// trim (high 32 bits; a window is `cap` takes), in one word so that
        /// a take writes both with one store: the stores before a node's
        /// first locked decrement are what it waits for (`docs::internals`,
        /// "Where the time goes"). Both stay below `MAX_CAPACITY`.
        counts: Cell<u64>,
        cap: Cell<usize>,
        /// A block was refused since the bin last ran dry.
        refused: Cell<bool>,
        /// The fewest blocks held since the last trim.
        low: Cell<usize>,
        /// The layout of the blocks (`Layout::new::<u8>()` while none
        /// came).
        layout: Cell<Layout>,
    }

    /// One block in `Bin::counts`.
    const ONE_BLOCK: u64 = 1;
    /// One take in `Bin::counts`.
    const ONE_TAKE: u64 = 1 << 32;

    impl Bin {
        /// The blocks held.
        #[inline]
        fn len(&self) -> usize {
            (self.counts.get() & 0xffff_ffff) as usize
        }

        /// The takes left before the next trim.
        #[inline]
        fn budget(&self) -> usize {
            (self.counts.get() >> 32) as usize
        }

        /// Sets both counts (each below `MAX_CAPACITY`).
        fn set_counts(&self, len: usize, budget: usize) {
            self.counts.set(((budget as u64) << 32) | len as u64);
        }

        /// Unlinks the top block; the bin holds at least one. The caller
        /// counts it (`counts`).
        #[inline]
        fn unlink(&self) -> *mut Free {
            let block = self.top.get();
            // SAFETY: a cached block, written by `give`.
            self.top.set(unsafe { (*block).next });
            block
        }

        /// A take found the bin empty: grow if it refused a block since it
        /// last ran dry.
        #[cold]
        fn ran_dry(&self) {
            if self.refused.replace(false) {
                self.cap.set((self.cap.get() * 2).min(MAX_CAPACITY));
            }
        }

        /// The end of a window of `cap` takes (see the type's docs).
        #[cold]
        fn trim(&self) {
            let (low, cap, len) = (self.low.get(), self.cap.get(), self.len());
            let cap = if low > cap / 2 {
                (cap / 2).max(CAPACITY)
            } else {
                cap
            };
            self.cap.set(cap);
            let excess = (low / 2).max(len.saturating_sub(cap));
            let layout = self.layout.get();
            for _ in 0..excess {
                let block = self.unlink();
                // SAFETY: allocated by the global allocator with this bin's
                // one layout; ours alone.
                unsafe { std::alloc::dealloc(block.cast(), layout) };
            }
            let len = len - excess;
            self.set_counts(len, cap);
            self.low.set(len);
        }
    }

    /// `Cache::state`: no block given yet, so nothing to free at exit.
    const UNGUARDED: u8 = 0;
    /// `Cache::state`: the thread's `GUARD` is registered.
    const GUARDED: u8 = 1;
    /// `Cache::state`: the thread is exiting and its `GUARD` has run: every
    /// block goes to the allocator from now on.
    const CLOSED: u8 = 2;

    /// One thread's bins. No `Drop` of its own, so that every access is a
    /// plain thread-local load or store, with no lazy registration to test
    /// for (`take_fast` then calls nothing, and neither need its callers):
    /// the blocks are freed at thread exit by `GUARD`, which the first
    /// `give` registers.
    struct Cache {
        bins: [Bin; BINS],
        /// `UNGUARDED`, `GUARDED` or `CLOSED`.
        state: Cell<u8>,
    }

    /// Frees the thread's cached blocks when it exits.
    struct Guard;

    impl Drop for Guard {
        fn drop(&mut self) {
            CACHE.with(|cache| {
                cache.state.set(CLOSED);
                cache.free_all();
            });
        }
    }

    impl Cache {
        /// Gives every cached block back to the allocator.
        fn free_all(&self) {
            for bin in &self.bins {
                let layout = bin.layout.get();
                let mut block = bin.top.replace(ptr::null_mut());
                while !block.is_null() {
                    // SAFETY: a cached block: valid, ours alone, its first
                    // word written by `give`.
                    let next = unsafe { (*block).next };
                    // SAFETY: allocated by the global allocator with this
                    // bin's one layout (a `Box` of a type of that layout).
                    unsafe { std::alloc::dealloc(block.cast(), layout) };
                    block = next;
                }
                bin.counts.set(0);
            }
        }
    }

    std::thread_local! {
        static GUARD: Guard = const { Guard };
        static CACHE: Cache = const {
            Cache {
                state: Cell::new(UNGUARDED),
                bins: [const {
                    Bin {
                        top: Cell::new(ptr::null_mut()),
                        counts: Cell::new((CAPACITY as u64) << 32),
                        cap: Cell::new(CAPACITY),
                        refused: Cell::new(false),
                        low: Cell::new(0),
                        layout: Cell::new(Layout::new::<u8>()),
                    }
                }; BINS],
            }
        };
    }

    /// Runs `f` on this thread's cache. `LocalKey::with` only hands out
    /// the address, so that its own call is always inlined (with the fast
    /// paths' closures it sometimes was not, and then their captures went
    /// through memory).
    #[inline(always)]
    fn with_cache<R>(f: impl FnOnce(&Cache) -> R) -> R {
        let cache = CACHE.with(ptr::from_ref);
        // SAFETY: `CACHE` has no destructor (a `const` thread-local without
        // drop glue): its storage is valid for as long as this thread runs,
        // and the reference does not outlive `f`.
        f(unsafe { &*cache })
    }

    /// Pops a block of `bin`'s layout if the bin holds one and its trim is
    /// not due: the usual case, which calls nothing, so that a caller that
    /// goes elsewhere when it fails can stay a leaf function (no register
    /// spills: a derivation's stores are what its first handle's locked
    /// decrement waits for). `take` does the rest.
    #[inline(always)]
    pub(super) fn take_fast(bin: usize) -> Option<*mut u8> {
        with_cache(|cache| {
            let bin = &cache.bins[bin];
            if bin.top.get().is_null() || bin.budget() == 0 {
                return None;
            }
            let block = bin.unlink();
            bin.counts.set(bin.counts.get() - ONE_BLOCK - ONE_TAKE);
            if bin.len() < bin.low.get() {
                bin.low.set(bin.len());
            }
            Some(block.cast::<u8>())
        })
    }

    /// Pops a block of `bin`'s layout, if this thread has one.
    #[inline]
    pub(super) fn take(bin: usize) -> Option<*mut u8> {
        take_fast(bin).or_else(|| take_slow(bin))
    }

    /// `take` when `take_fast` fails: the bin is empty (it may grow,
    /// `Bin::ran_dry`) or the window ends with this take (`Bin::trim`).
    #[cold]
    fn take_slow(bin: usize) -> Option<*mut u8> {
        CACHE.with(|cache| {
            let bin = &cache.bins[bin];
            if bin.top.get().is_null() {
                bin.ran_dry();
                return None;
            }
            let block = bin.unlink();
            bin.counts.set(bin.counts.get() - ONE_BLOCK);
            // The window's low-water mark counts this take, as in
            // `take_fast`, before the trim reads it.
            if bin.len() < bin.low.get() {
                bin.low.set(bin.len());
            }
            bin.trim();
            Some(block.cast::<u8>())
        })
    }

    /// Pushes `block` (of `bin`'s layout, unused) if the thread's guard is
    /// registered and the bin has room: the usual case, which calls
    /// nothing (see `take_fast`); false, having changed nothing, otherwise.
    #[inline(always)]
    pub(super) fn give_fast(bin: usize, block: *mut u8, layout: Layout) -> bool {
        with_cache(|cache| {
            let bin = &cache.bins[bin];
            if cache.state.get() != GUARDED || bin.len() >= bin.cap.get() {
                return false;
            }
            let block = block.cast::<Free>();
            // SAFETY: the block is ours, unused, and at least a word
            // long and pointer-aligned (a node).
            unsafe {
                block.write(Free {
                    next: bin.top.get(),
                })
            };
            // The bin's one layout (a cached block is freed with it),
            // written once rather than on every give.
            if bin.layout.get() != layout {
                bin.layout.set(layout);
            }
            bin.top.set(block);
            bin.counts.set(bin.counts.get() + ONE_BLOCK);
            true
        })
    }

    /// Pushes `block` (of `bin`'s layout, unused) if there is room; returns
    /// whether it was kept.
    #[inline]
    pub(super) fn give(bin: usize, block: *mut u8, layout: Layout) -> bool {
        give_fast(bin, block, layout) || give_slow(bin, block, layout)
    }

    /// `give` when `give_fast` cannot: the thread's first (`guard`), one
    /// after the thread's guard ran, or one the bin has no room for.
    #[cold]
    fn give_slow(bin: usize, block: *mut u8, layout: Layout) -> bool {
        let guarded = CACHE.with(|cache| cache.state.get() == GUARDED || guard(cache));
        if !guarded {
            return false;
        }
        if give_fast(bin, block, layout) {
            return true;
        }
        CACHE.with(|cache| cache.bins[bin].refused.set(true));
        false
    }

    /// A thread's first `give`: registers its `GUARD`, so that its blocks
    /// are freed when it exits, and returns true; false once the thread
    /// is exiting and the guard has run (or cannot be registered any
    /// more), and the block goes to the allocator.
    #[cold]
    fn guard(cache: &Cache) -> bool {
        if cache.state.get() == CLOSED || GUARD.try_with(|_| ()).is_err() {
            cache.state.set(CLOSED);
            return false;
        }
        cache.state.set(GUARDED);
        true
    }

    /// Blocks this thread holds, per bin (for tests).
    #[cfg(test)]
    pub(super) fn held() -> [usize; BINS] {
        CACHE.with(|cache| cache.bins.each_ref().map(Bin::len))
    }

    /// This thread's bound per bin (for tests).
    #[cfg(test)]
    pub(super) fn capacity() -> [usize; BINS] {
        CACHE.with(|cache| cache.bins.each_ref().map(|bin| bin.cap.get()))
    }
}

#[cfg(all(test, not(any(loom, goctx_no_node_cache))))]
mod tests {
    use super::*;
    use crate::Context;

    /// The cache on blocks of its own (this runs under miri too, where
    /// nodes bypass the cache): a stack per bin, bounded, and whatever it
    /// holds at thread exit is freed with the layout it came with.
    #[test]
    fn blocks_are_kept_per_bin_up_to_capacity_and_freed_at_thread_exit() {
        std::thread::spawn(|| {
            let layout = core::alloc::Layout::new::<[usize; 3]>();
            let blocks: Vec<*mut u8> = (0..CAPACITY + 2)
                // SAFETY: a non-zero-sized layout.
                .map(|_| unsafe { std::alloc::alloc(layout) })
                .collect();
            assert!(blocks.iter().all(|block| !block.is_null()));
            let kept = blocks
                .iter()
                .filter(|&&block| imp::give(1, block, layout))
                .count();
            assert_eq!(kept, CAPACITY);
            assert_eq!(imp::held(), [0, CAPACITY]);
            for &block in &blocks[CAPACITY..] {
                // SAFETY: refused by `give`, still ours, from `alloc(layout)`.
                unsafe { std::alloc::dealloc(block, layout) };
            }
            // Last in, first out, and only from the bin asked for.
            assert_eq!(imp::take(0), None);
            assert_eq!(imp::take(1), Some(blocks[CAPACITY - 1]));
            assert_eq!(imp::held(), [0, CAPACITY - 1]);
            // SAFETY: taken back from the cache: ours, of `layout`.
            unsafe { std::alloc::dealloc(blocks[CAPACITY - 1], layout) };
            // The other CAPACITY - 1 blocks are freed by the thread's exit
            // (valgrind's leak check, in CI, would report them otherwise).
        })
        .join()
        .unwrap();
    }

    /// The bound follows the thread's churn: it doubles when the bin runs
    /// dry after refusing blocks, never past `MAX_CAPACITY`, and shrinks
    /// back (giving blocks back) when a window of takes leaves most of the
    /// bin unused. Blocks of its own, so this runs under miri too.
    #[test]
    fn the_bound_grows_with_deep_churn_and_shrinks_back() {
        std::thread::spawn(|| {
            let layout = core::alloc::Layout::new::<[usize; 3]>();
            // SAFETY: a non-zero-sized layout.
            let fresh = || unsafe { std::alloc::alloc(layout) };
            let release = |block: *mut u8| {
                if !imp::give(0, block, layout) {
                    // SAFETY: refused: still ours, from `alloc(layout)`.
                    unsafe { std::alloc::dealloc(block, layout) };
                }
            };
            // A "chain" deeper than the bound, built and dropped in a loop:
            // every round takes the cache dry after it refused blocks.
            let depth = 3 * CAPACITY;
            let mut bounds = Vec::new();
            for _ in 0..8 {
                let chain: Vec<*mut u8> = (0..depth)
                    .map(|_| imp::take(0).unwrap_or_else(fresh))
                    .collect();
                chain.into_iter().for_each(release);
                bounds.push(imp::capacity()[0]);
            }
            assert_eq!(bounds[0], CAPACITY);
            assert!(bounds.windows(2).all(|pair| pair[0] <= pair[1]));
            assert_eq!(*bounds.last().unwrap(), 4 * CAPACITY);
            assert_eq!(imp::held()[0], depth, "the whole chain is cached now");
            // The other bin is untouched.
            assert_eq!(imp::capacity()[1], CAPACITY);

            // Shallow churn from then on: one block at a time. Each window
            // of takes gives back half of what it never used.
            for _ in 0..64 * CAPACITY {
                let block = imp::take(0).expect("cached");
                release(block);
            }
            assert_eq!(imp::capacity()[0], CAPACITY);
            assert!(imp::held()[0] <= CAPACITY);

            // Never past MAX_CAPACITY, however deep the churn. (Not under
            // miri: twelve chains of 1088 blocks take it half a minute.)
            if cfg!(miri) {
                return;
            }
            let deep = MAX_CAPACITY + CAPACITY;
            for _ in 0..12 {
                let chain: Vec<*mut u8> = (0..deep)
                    .map(|_| imp::take(0).unwrap_or_else(fresh))
                    .collect();
                chain.into_iter().for_each(release);
            }
            assert_eq!(imp::capacity()[0], MAX_CAPACITY);
            assert_eq!(imp::held()[0], MAX_CAPACITY);
            // The cached blocks are freed by the thread's exit.
        })
        .join()
        .unwrap();
    }

    #[test]
    #[cfg(not(miri))] // nodes bypass the cache under miri
    fn a_freed_node_is_reused_by_the_next_derivation() {
        std::thread::spawn(|| {
            let (ctx, cancel) = Context::background().with_cancel();
            let first = ctx.anchor_ptr();
            drop((ctx, cancel));
            assert_eq!(imp::held(), [1, 0]);
            let (ctx, _cancel) = Context::background().with_cancel();
            assert_eq!(ctx.anchor_ptr(), first);
            assert_eq!(imp::held(), [0, 0]);
        })
        .join()
        .unwrap();
    }

    #[test]
    #[cfg(not(miri))] // nodes bypass the cache under miri
    fn the_cache_is_bounded_per_bin() {
        std::thread::spawn(|| {
            let timeout = std::time::Duration::from_secs(3600);
            let many: Vec<_> = (0..3 * CAPACITY)
                .map(|_| {
                    let (a, b) = Context::background().with_cancel();
                    let (c, d) = Context::background().with_timeout(timeout);
                    (a, b, c, d)
                })
                .collect();
            drop(many);
            // A deadline node's memory may still be held by the timer's
            // list (freed by its cleanup later, on this or another thread).
            let [plain, timed] = imp::held();
            assert_eq!(plain, CAPACITY);
            assert!(timed <= CAPACITY);
        })
        .join()
        .unwrap();
    }

    #[test]
    #[cfg(not(miri))] // nodes bypass the cache under miri
    fn an_uncached_layout_bypasses_the_cache() {
        std::thread::spawn(|| {
            let block = alloc::<[u64; 5]>(None);
            // SAFETY: just allocated, initialised here, then freed once.
            unsafe {
                block.write([7; 5]);
                free(block, None);
            }
            assert_eq!(imp::held(), [0, 0]);
        })
        .join()
        .unwrap();
    }

    /// A block freed by a thread-local destructor that runs after the
    /// cache's guard (registered after it, so run before it) goes to the
    /// allocator, and a take finds nothing: nothing is cached where no
    /// guard will free it. (Runs under miri too, which reports a leak.)
    #[test]
    fn a_block_freed_after_the_cache_is_gone_goes_to_the_allocator() {
        struct Late(std::sync::mpsc::Sender<(bool, [usize; BINS], bool)>);
        impl Drop for Late {
            fn drop(&mut self) {
                let layout = core::alloc::Layout::new::<[usize; 3]>();
                // SAFETY: a non-zero-sized layout.
                let block = unsafe { std::alloc::alloc(layout) };
                let kept = imp::give(1, block, layout);
                if !kept {
                    // SAFETY: refused: still ours, from `alloc(layout)`.
                    unsafe { std::alloc::dealloc(block, layout) };
                }
                let _ = self.0.send((kept, imp::held(), imp::take(1).is_some()));
            }
        }
        std::thread_local! {
            static LATE: core::cell::RefCell<Option<Late>> = const { core::cell::RefCell::new(None) };
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Registered first, so its destructor runs after the guard's.
            LATE.with(|late| *late.borrow_mut() = Some(Late(tx)));
            let layout = core::alloc::Layout::new::<[usize; 3]>();
            // SAFETY: a non-zero-sized layout.
            let block = unsafe { std::alloc::alloc(layout) };
            assert!(
                imp::give(1, block, layout),
                "the first give registers the guard"
            );
            assert_eq!(imp::held(), [0, 1]);
        })
        .join()
        .unwrap();
        let (kept, held, taken) = rx.recv().expect("the late destructor ran");
        assert!(!kept, "a block given after the guard ran is refused");
        assert_eq!(held, [0, 0], "the guard freed what the cache held");
        assert!(!taken, "nothing is cached after the guard ran");
    }
}
