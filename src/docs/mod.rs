//! Long-form documentation: how goctx works inside.
//!
//! Nothing here is code; the modules exist so that the prose renders on
//! docs.rs next to the API it explains.

#[doc = include_str!("internals.md")]
pub mod internals {}
