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

    /// The kernel's wait queue keyed by a 32-bit word's address (Linux's
    /// futex): blocking waits park there, so that one call wakes every
    /// thread parked on a word (`park.rs`).
    pub(crate) mod futex {
        pub(crate) use sys::{SUPPORTED, wait, wake_all};

        #[cfg(all(
            target_os = "linux",
            any(
                target_arch = "x86_64",
                target_arch = "aarch64",
                target_arch = "riscv64"
            )
        ))]
        mod sys {
            use core::sync::atomic::AtomicU32;
            use core::time::Duration;

            /// Whether this target has one; without it, blocking waits use
            /// the node's waiter set (one entry and one unpark per thread).
            pub(crate) const SUPPORTED: bool = true;

            #[cfg(target_arch = "x86_64")]
            const SYS_FUTEX: i64 = 202;
            #[cfg(any(target_arch = "aarch64", target_arch = "riscv64"))]
            const SYS_FUTEX: i64 = 98;
            // The arguments have their C types (`int op`, `u32 val`), as
            // std's own futex passes them (and as miri's model of the call
            // checks).
            const FUTEX_WAIT_PRIVATE: i32 = 128;
            const FUTEX_WAKE_PRIVATE: i32 = 129;

            /// The kernel's `struct timespec` on these 64-bit targets.
            #[repr(C)]
            struct Timespec {
                tv_sec: i64,
                tv_nsec: i64,
            }

            unsafe extern "C" {
                /// libc's `syscall(2)` wrapper (std links libc on Linux).
                fn syscall(number: i64, ...) -> i64;
            }

            /// Parks the calling thread while `word` holds `expected`
            /// (checked atomically with queueing, by the kernel), until
            /// `wake_all` on it, `timeout`, or a spurious wake-up: the
            /// caller checks its condition again after every return.
            pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
                let timespec = timeout.map(|timeout| Timespec {
                    tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
                    tv_nsec: i64::from(timeout.subsec_nanos()),
                });
                let timespec_ptr = timespec
                    .as_ref()
                    .map_or(core::ptr::null(), |timespec| timespec as *const Timespec);
                // SAFETY: FUTEX_WAIT reads the aligned 32-bit word at a
                // valid address (a `&AtomicU32`, alive for the call) and
                // the timespec, if any, which lives on our stack for the
                // call. Every error (EAGAIN: the word changed; EINTR;
                // ETIMEDOUT) is a return the caller handles by checking
                // again.
                unsafe {
                    syscall(
                        SYS_FUTEX,
                        word.as_ptr(),
                        FUTEX_WAIT_PRIVATE,
                        expected,
                        timespec_ptr,
                    );
                }
            }

            /// Wakes every thread parked on `word`.
            pub(crate) fn wake_all(word: &AtomicU32) {
                // SAFETY: FUTEX_WAKE only uses the address as a key (a valid
                // `&AtomicU32`).
                unsafe {
                    syscall(SYS_FUTEX, word.as_ptr(), FUTEX_WAKE_PRIVATE, i32::MAX);
                }
            }
        }

        /// No futex: `SUPPORTED` is false, so nothing calls these.
        #[cfg(not(all(
            target_os = "linux",
            any(
                target_arch = "x86_64",
                target_arch = "aarch64",
                target_arch = "riscv64"
            )
        )))]
        mod sys {
            use core::sync::atomic::AtomicU32;
            use core::time::Duration;

            pub(crate) const SUPPORTED: bool = false;

            pub(crate) fn wait(_word: &AtomicU32, _expected: u32, _timeout: Option<Duration>) {
                unreachable!("no futex on this target");
            }

            pub(crate) fn wake_all(_word: &AtomicU32) {
                unreachable!("no futex on this target");
            }
        }
    }

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

    /// The kernel's futex, modelled: one wait queue (a mutex and a
    /// condition variable, the kernel's hash-bucket lock and queue) for
    /// every word. `wait` checks the word and queues under the lock, as the
    /// kernel does, so loom explores exactly the races the real one has.
    /// (A model-only primitive: nothing outside loom uses a lock here.)
    pub(crate) mod futex {
        use loom::sync::atomic::{AtomicU32, Ordering};
        use loom::sync::{Condvar, Mutex};

        pub(crate) const SUPPORTED: bool = true;

        loom::lazy_static! {
            static ref BUCKET: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());
        }

        /// As the real `wait`; a timed wait parks until woken (loom has no
        /// time), the schedule loom explores anyway.
        pub(crate) fn wait(
            word: &AtomicU32,
            expected: u32,
            _timeout: Option<core::time::Duration>,
        ) {
            let queued = BUCKET.0.lock().unwrap();
            // The kernel reads the word under the bucket lock.
            if word.load(Ordering::Relaxed) == expected {
                drop(BUCKET.1.wait(queued).unwrap());
            }
        }

        /// As the real `wake_all`.
        pub(crate) fn wake_all(_word: &AtomicU32) {
            let _bucket = BUCKET.0.lock().unwrap();
            BUCKET.1.notify_all();
        }
    }
}

pub(crate) use imp::*;
