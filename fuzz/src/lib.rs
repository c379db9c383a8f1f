//! Fuzz targets for goctx, as a library so that the same bodies run under
//! cargo-fuzz (`fuzz_targets/*.rs`, nightly) and under `cargo test` on
//! stable (`tests/fuzz_regressions.rs` in the root crate compiles the same
//! files and replays `tests/fuzz/regressions/<target>/`). The bodies live in
//! the root crate's `tests/fuzz/`, so the published crate's own tests
//! (which cannot see this separate package) still replay the corpus.
//!
//! * [`ops`]: bytes decode into a sequence of operations on a forest of
//!   contexts; after every step the real tree is compared with `model`, a
//!   plain sequential model of it.
//! * [`concurrent`]: bytes decode into operations split between two
//!   threads that rendezvous at chosen points; checks are the invariants
//!   that hold under any interleaving.
//! * [`list`]: bytes decode into operations on goctx's intrusive list
//!   alone (through `goctx::__fuzz`), checked against a `Vec` model
//!   (target `list`), or split between two threads and checked for set
//!   semantics (target `list_threads`).
//!
//! The modules name each other through `crate::`, so the regression test
//! declares them at its crate root under the same names.

#[path = "../../tests/fuzz/concurrent.rs"]
pub mod concurrent;
// Shared with the integration tests; it lives under tests/ because
// `cargo package` leaves fuzz/ out.
#[path = "../../tests/support/identity.rs"]
mod identity;
#[path = "../../tests/fuzz/input.rs"]
mod input;
#[path = "../../tests/fuzz/list.rs"]
pub mod list;
#[path = "../../tests/fuzz/model.rs"]
mod model;
#[path = "../../tests/fuzz/ops.rs"]
pub mod ops;
#[path = "../../tests/fuzz/probe.rs"]
mod probe;
