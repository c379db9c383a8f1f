//! The cancellation state word: bit constants and pure encode/decode.
//!
//! Every cancellable node owns one pointer-sized word (an `AtomicPtr`, tagged) that holds its whole cancellation
//! state. It is written exactly once (by the single compare-and-swap that
//! decides which cancellation wins) and read with one Acquire load by
//! `is_done()`, `err()` and `cause()`.
//!
//! # Layout
//!
//! ```text
//!  63                                   4   3         2       1          0
//! +--------------------------------------+-----------+-------+----------+------+
//! | cause pointer (*const CauseBox) >> 4 | CAUSE_DL  | OWNED | DEADLINE | DONE |
//! +--------------------------------------+-----------+-------+----------+------+
//! ```
//!
//! # State table
//!
//! | word                          | `is_done` | `err()`            | `cause()`                      |
//! |-------------------------------|-----------|--------------------|--------------------------------|
//! | `0`                           | false     | `None`             | `None`                         |
//! | `DONE`                        | true      | `Canceled`         | `Canceled`                     |
//! | `DONE\|CAUSE_DL`              | true      | `Canceled`         | `DeadlineExceeded`             |
//! | `DONE\|DEADLINE\|CAUSE_DL`    | true      | `DeadlineExceeded` | `DeadlineExceeded`             |
//! | `DONE\|DEADLINE`              | true      | `DeadlineExceeded` | `Canceled`                     |
//! | `ptr\|DONE[\|DEADLINE]\|OWNED`| true      | per `DEADLINE`     | `*ptr`, freed with this node   |
//! | `ptr\|DONE[\|DEADLINE]`       | true      | per `DEADLINE`     | `*ptr`, owned by an ancestor   |
//!
//! `CAUSE_DL` is only meaningful when the pointer is null.
//!
//! An *active* word (no `DONE`) carries no pointer; two of its bits
//! *announce* whether the node's waiter set was ever pushed onto, and
//! whether a thread ever parked on it:
//!
//! | active word                   | meaning                                        |
//! |-------------------------------|------------------------------------------------|
//! | `0`                           | no waiter was ever registered                  |
//! | `HAS_WAITERS`                 | a waiter or callback may have been linked      |
//! | `HAS_PARKED`                  | a thread may be parked for it (`park.rs`)      |
//! | `HAS_WAITERS\|HAS_PARKED`     | both                                           |
//!
//! Transitions: an active word gains announce bits (a CAS by a registering
//! thread, before its push or park: `CancelNode::announce`) and goes to a
//! done word once (the cancelling CAS, which reads the bits it replaces); a
//! done word never changes again (it is cleared only by the node's own
//! destructor, which frees an `OWNED` pointer). A waiter set whose bit the
//! cancelling CAS did not read was never pushed onto and never will be
//! (every push announces first, and an announce fails on a done word), so
//! the canceller leaves it alone. (The child list needs no bit: cancel.rs
//! invariant 7.)
//!
//! A *borrowed* pointer (no `OWNED`) always points into the `CauseBox` owned
//! by an ancestor of this node — or, for a merged context (`merge.rs`) and
//! its descendants, by its other parent or one of that one's ancestors.
//! Every node keeps its parent alive until the node itself is released (and
//! a merged node its other parent), so the box outlives every node that
//! borrows it.

use core::ptr;

use crate::error::{Cause, Error};

/// Set in every done word.
pub(crate) const DONE: usize = 0b0001;
/// The error is `DeadlineExceeded` (else `Canceled`).
pub(crate) const DEADLINE: usize = 0b0010;
/// The cause pointer is owned by this node and freed with it.
pub(crate) const OWNED: usize = 0b0100;
/// With a null pointer: the cause is `DeadlineExceeded` (else `Canceled`).
pub(crate) const CAUSE_DL: usize = 0b1000;
const TAG_MASK: usize = 0b1111;
/// In an active word: the waiter set may have been pushed onto.
pub(crate) const HAS_WAITERS: usize = 0b0100;
/// In an active word: a thread may be parked on the node's sequence word
/// (`park.rs`).
pub(crate) const HAS_PARKED: usize = 0b1000;

/// A state word: a (possibly null, possibly dangling) `CauseBox` pointer
/// with the tag bits in its low address bits. Kept as a pointer so the cause
/// box's provenance survives the tagging (strict provenance).
pub(crate) type Word = *mut CauseBox;

/// The active word of a new node (no announce bits).
pub(crate) const ACTIVE: Word = ptr::null_mut();

/// Whether the active word `word` announces `bit` (`HAS_WAITERS`,
/// `HAS_PARKED`).
#[inline]
pub(crate) fn announces(word: Word, bit: usize) -> bool {
    debug_assert!(!is_done(word));
    word.addr() & bit != 0
}

/// `word` (active) with `bit` announced.
#[inline]
pub(crate) fn announcing(word: Word, bit: usize) -> Word {
    word.map_addr(|addr| addr | bit)
}

/// A word with no cause pointer, only tag bits.
#[inline]
pub(crate) const fn inline_word(bits: usize) -> Word {
    ptr::without_provenance_mut(bits)
}

/// A word owning `cause`, with tag bits.
#[inline]
pub(crate) fn boxed_word(cause: *mut CauseBox, bits: usize) -> Word {
    cause.map_addr(|addr| addr | bits | OWNED)
}

/// A cause on the heap, aligned so that its address leaves the four tag bits
/// of the state word free.
#[repr(align(16))]
pub(crate) struct CauseBox(pub(crate) Cause);

#[inline]
pub(crate) fn is_done(word: Word) -> bool {
    word.addr() & DONE != 0
}

/// The error a done word carries; `None` for the active word.
#[inline]
pub(crate) fn err(word: Word) -> Option<Error> {
    let bits = word.addr();
    if bits & DONE == 0 {
        None
    } else if bits & DEADLINE != 0 {
        Some(Error::DeadlineExceeded)
    } else {
        Some(Error::Canceled)
    }
}

/// The cause pointer of a word, null for inline causes and the active word.
#[inline]
pub(crate) fn cause_ptr(word: Word) -> *mut CauseBox {
    word.map_addr(|addr| addr & !TAG_MASK)
}

/// Whether this word owns its cause box (a done word with `OWNED`; in an
/// active word that bit is `HAS_WAITERS`).
#[inline]
pub(crate) fn owns_cause(word: Word) -> bool {
    word.addr() & (DONE | OWNED) == DONE | OWNED
}

/// Decodes the cause of a done word.
///
/// # Safety
///
/// If the word carries a cause pointer, that `CauseBox` must be alive for the
/// duration of the call (it is, for any word loaded from a node that the
/// caller keeps alive: see the module docs).
#[inline]
pub(crate) unsafe fn cause(word: Word) -> Option<Cause> {
    if word.addr() & DONE == 0 {
        return None;
    }
    let ptr = cause_ptr(word);
    if ptr.is_null() {
        let e = if word.addr() & CAUSE_DL != 0 {
            Error::DeadlineExceeded
        } else {
            Error::Canceled
        };
        Some(Cause::from(e))
    } else {
        // SAFETY: the caller guarantees the box is alive; it is never
        // mutated after publication.
        Some(unsafe { (*ptr).0.clone() })
    }
}

/// What a cancellation wants to write: the error and the cause, before it is
/// known whether it wins.
pub(crate) enum Pending {
    /// An inline word (no allocation).
    Inline(Word),
    /// A freshly boxed custom cause, owned by the node if the CAS wins.
    Boxed(Box<CauseBox>, Error),
}

impl Pending {
    /// Builds the word for a cancellation with `error` and an optional cause
    /// (the error itself when `None`). Plain `Error` causes stay inline.
    #[inline]
    pub(crate) fn new(error: Error, cause: Option<Cause>) -> Pending {
        let err_bits = DONE
            | match error {
                Error::Canceled => 0,
                Error::DeadlineExceeded => DEADLINE,
            };
        let plain = match &cause {
            None => Some(error),
            Some(c) => c.as_context_error(),
        };
        match plain {
            Some(Error::Canceled) => Pending::Inline(inline_word(err_bits)),
            Some(Error::DeadlineExceeded) => Pending::Inline(inline_word(err_bits | CAUSE_DL)),
            None => Pending::Boxed(Box::new(CauseBox(cause.expect("custom cause"))), error),
        }
    }
}

/// The word a node adopts when an ancestor whose word is `ancestor` cancels
/// it: same error and cause, the pointer (if any) borrowed.
#[inline]
pub(crate) fn inherit(ancestor: Word) -> Word {
    ancestor.map_addr(|addr| addr & !OWNED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_rows_decode() {
        assert_eq!(err(ACTIVE), None);
        assert!(!is_done(ACTIVE));
        let rows = [
            (DONE, Error::Canceled, Error::Canceled),
            (DONE | CAUSE_DL, Error::Canceled, Error::DeadlineExceeded),
            (
                DONE | DEADLINE | CAUSE_DL,
                Error::DeadlineExceeded,
                Error::DeadlineExceeded,
            ),
            (DONE | DEADLINE, Error::DeadlineExceeded, Error::Canceled),
        ];
        for (bits, e, c) in rows {
            let word = inline_word(bits);
            assert!(is_done(word));
            assert_eq!(err(word), Some(e));
            // SAFETY: inline words carry no pointer.
            let cause = unsafe { cause(word) }.unwrap();
            assert_eq!(cause.downcast_ref::<Error>(), Some(&c));
        }
    }

    #[test]
    fn pending_inline_for_plain_errors() {
        assert!(
            matches!(Pending::new(Error::Canceled, None), Pending::Inline(w) if w.addr() == DONE)
        );
        assert!(matches!(
            Pending::new(Error::DeadlineExceeded, None),
            Pending::Inline(w) if w.addr() == DONE | DEADLINE | CAUSE_DL
        ));
        assert!(matches!(
            Pending::new(Error::Canceled, Some(Error::DeadlineExceeded.into())),
            Pending::Inline(w) if w.addr() == DONE | CAUSE_DL
        ));
        assert!(matches!(
            Pending::new(Error::Canceled, Some(Cause::new(std::fmt::Error))),
            Pending::Boxed(_, Error::Canceled)
        ));
    }

    #[test]
    fn announce_bits_keep_a_word_active() {
        for bits in [0, HAS_WAITERS, HAS_PARKED, HAS_WAITERS | HAS_PARKED] {
            let word = announcing(ACTIVE, bits);
            assert!(!is_done(word));
            assert_eq!(err(word), None);
            assert!(!owns_cause(word));
            assert!(cause_ptr(word).is_null());
            // SAFETY: an active word carries no pointer.
            assert!(unsafe { cause(word) }.is_none());
            assert_eq!(announces(word, HAS_WAITERS), bits & HAS_WAITERS != 0);
            assert_eq!(announces(word, HAS_PARKED), bits & HAS_PARKED != 0);
        }
    }

    #[test]
    fn inherit_drops_ownership_only() {
        let mut cause = Box::new(CauseBox(Cause::from(Error::Canceled)));
        let raw: *mut CauseBox = &mut *cause;
        let w = boxed_word(raw, DONE | DEADLINE);
        assert_eq!(inherit(w).addr(), raw.addr() | DONE | DEADLINE);
        assert_eq!(cause_ptr(w), raw);
        assert_eq!(cause_ptr(inherit(w)), raw);
        // SAFETY: `cause` is alive; the pointer keeps its provenance.
        let decoded = unsafe { super::cause(inherit(w)) }.unwrap();
        assert_eq!(decoded.downcast_ref::<Error>(), Some(&Error::Canceled));
    }
}
