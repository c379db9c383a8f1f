//! Distinct value types for chains of value contexts: `Slot<N>` is the key
//! `N`, and its payload says which layer set it (Go's layer tests use
//! distinct key values; goctx keys by type). Include it with `mod support;`
//! (as `support::slot`).
#![allow(dead_code, unreachable_pub)]

use std::any::type_name;

use goctx::Context;

/// A distinct value type per `N`, so a chain can hold several independent
/// keys; the payload identifies the layer that set it.
#[derive(Debug)]
pub struct Slot<const N: usize>(pub usize);

/// How many slots (keys) there are.
pub const SLOTS: usize = 4;

/// Derives a context carrying `Slot::<slot>(layer)`; returns it with the
/// type name its `Display` shows.
pub fn with_slot(ctx: &Context, slot: usize, layer: usize) -> (Context, &'static str) {
    match slot {
        0 => (ctx.with_value(Slot::<0>(layer)), type_name::<Slot<0>>()),
        1 => (ctx.with_value(Slot::<1>(layer)), type_name::<Slot<1>>()),
        2 => (ctx.with_value(Slot::<2>(layer)), type_name::<Slot<2>>()),
        3 => (ctx.with_value(Slot::<3>(layer)), type_name::<Slot<3>>()),
        _ => unreachable!("{SLOTS} slots"),
    }
}

/// The layer of the nearest `Slot::<slot>`.
pub fn slot_value(ctx: &Context, slot: usize) -> Option<usize> {
    match slot {
        0 => ctx.value::<Slot<0>>().map(|s| s.0),
        1 => ctx.value::<Slot<1>>().map(|s| s.0),
        2 => ctx.value::<Slot<2>>().map(|s| s.0),
        3 => ctx.value::<Slot<3>>().map(|s| s.0),
        _ => unreachable!("{SLOTS} slots"),
    }
}
