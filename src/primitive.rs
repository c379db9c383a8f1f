//! The one place that names std or loom primitives.
//!
//! Every atomic, `UnsafeCell`, thread handle and thread-local the crate uses
//! comes from here, so that under `--cfg loom` the model checker sees every
//! shared access. Nothing else in the crate imports `core::sync::atomic`.
//!
//! The std half mirrors loom's API shapes (`UnsafeCell::with`/`with_mut`,
//! `park_timeout` as a free function), so the rest of the crate is written
//! once.

#[cfg(not(loom))]
mod imp {
    pub(crate) mod atomic {
        pub(crate) use core::sync::atomic::{
            AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
        };

        /// Sets tag bits in an atomic pointer's address, keeping its
        /// provenance; returns the previous pointer.
        #[inline]
        pub(crate) fn fetch_or_tag<T>(
            atomic: &AtomicPtr<T>,
            tag: usize,
            order: Ordering,
        ) -> *mut T {
            atomic.fetch_or(tag, order)
        }
    }

    pub(crate) mod thread {
        pub(crate) use std::thread::{Thread, current, park, park_timeout};
    }

    pub(crate) use std::thread_local;

    /// `core::cell::UnsafeCell` with loom's closure-based accessors.
    #[derive(Debug)]
    pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        pub(crate) const fn new(value: T) -> Self {
            Self(core::cell::UnsafeCell::new(value))
        }

        #[inline]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        #[inline]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

#[cfg(loom)]
mod imp {
    pub(crate) mod atomic {
        pub(crate) use loom::sync::atomic::{
            AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
        };

        /// loom's `AtomicPtr` has no `fetch_or`: the same read-modify-write
        /// as a CAS loop (one atomic RMW per attempt, as loom models it).
        pub(crate) fn fetch_or_tag<T>(
            atomic: &AtomicPtr<T>,
            tag: usize,
            order: Ordering,
        ) -> *mut T {
            let failure = match order {
                Ordering::AcqRel => Ordering::Acquire,
                Ordering::Release => Ordering::Relaxed,
                other => other,
            };
            let mut current = atomic.load(failure);
            loop {
                let new = current.map_addr(|addr| addr | tag);
                match atomic.compare_exchange_weak(current, new, order, failure) {
                    Ok(previous) => return previous,
                    Err(actual) => current = actual,
                }
            }
        }
    }

    pub(crate) mod thread {
        pub(crate) use loom::thread::{Thread, current, park, yield_now};

        /// loom has no timed park; a timed wait in a model parks until
        /// unparked, which is exactly the schedule loom explores.
        pub(crate) fn park_timeout(_timeout: std::time::Duration) {
            park();
        }
    }

    pub(crate) use loom::cell::UnsafeCell;
    pub(crate) use loom::{lazy_static, thread_local};
}

pub(crate) use imp::*;
