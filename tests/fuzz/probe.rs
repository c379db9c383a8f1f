//! What the targets plug into a real context tree to observe it: values
//! that count their live instances (`Tracked`, with the causes with an
//! identity, shared with the integration tests in
//! `tests/support/identity.rs`), and a reading of a context's state that
//! checks `err()`/`cause()`/`is_done()` agree.

use goctx::Context;

use crate::identity::CauseId;
pub(crate) use crate::identity::Tracked;
use crate::model::State;

/// The value types of the forest: `Val<K>` is the key `K` of the model.
#[derive(Debug)]
pub(crate) struct Val<const K: usize>(pub(crate) Tracked);

/// How many value keys there are.
pub(crate) const KEYS: usize = 3;

/// Derives a context carrying `Val<key>(value)`.
pub(crate) fn with_value(ctx: &Context, key: usize, value: Tracked) -> Context {
    match key {
        0 => ctx.with_value(Val::<0>(value)),
        1 => ctx.with_value(Val::<1>(value)),
        _ => ctx.with_value(Val::<2>(value)),
    }
}

/// The id of the nearest `Val<key>`.
pub(crate) fn value_id(ctx: &Context, key: usize) -> Option<u32> {
    match key {
        0 => ctx.value::<Val<0>>().map(|v| v.0.id),
        1 => ctx.value::<Val<1>>().map(|v| v.0.id),
        _ => ctx.value::<Val<2>>().map(|v| v.0.id),
    }
}

/// The type name `Display` shows for `Val<key>`.
pub(crate) fn value_type_name(key: usize) -> &'static str {
    match key {
        0 => std::any::type_name::<Val<0>>(),
        1 => std::any::type_name::<Val<1>>(),
        _ => std::any::type_name::<Val<2>>(),
    }
}

/// Reads `err()`, `cause()`, `err()` again and `is_done()`, checking they
/// agree (a deadline may expire between two reads, but nothing ever goes
/// back to running or changes once set), and returns the state.
pub(crate) fn observe(ctx: &Context) -> Option<State> {
    let err = ctx.err();
    let cause = ctx.cause();
    let err_again = ctx.err();
    let done = ctx.is_done();
    if err.is_some() {
        assert!(cause.is_some(), "err() was {err:?}, then cause() None");
        assert_eq!(err_again, err, "err() changed");
    }
    if cause.is_some() {
        assert!(
            err_again.is_some(),
            "cause() was {cause:?}, then err() None"
        );
    }
    if err_again.is_some() {
        assert!(done, "err() was {err_again:?}, then is_done() false");
    }
    if !done {
        return None;
    }
    let err = match err_again {
        Some(err) => err,
        None => ctx.err().expect("is_done() was true, then err() None"),
    };
    let cause = match cause {
        Some(cause) => cause,
        None => ctx.cause().expect("is_done() was true, then cause() None"),
    };
    assert_eq!(ctx.err(), Some(err), "err() changed");
    Some(State {
        err,
        cause: CauseId::of(&cause),
    })
}
