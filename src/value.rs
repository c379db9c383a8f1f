//! Value contexts: `with_value::<T>(v)` adds one node holding `v`, keyed by
//! `T`'s `TypeId`. A value node has no cancellation machinery: its anchor is
//! its parent's, so it is exactly as done as its parent.

use core::any::{TypeId, type_name};
use core::ptr::NonNull;

use crate::node::{Kind, Node, NodeRef, Repr, ValueVtable};

/// What every value node starts with, whatever its `T`: the header, then
/// the key (`value_of` reads it without knowing `T`).
#[repr(C)]
struct ValueHeader {
    node: Node,
    type_id: TypeId,
}

/// A value context's node: the header and key, then the value.
#[repr(C)]
pub(crate) struct ValueNode<T> {
    header: ValueHeader,
    value: T,
}

impl<T: Send + Sync + 'static> ValueNode<T> {
    const KIND: Kind = Kind::Value(ValueVtable {
        type_name: type_name::<T>,
        free: Self::free,
    });

    /// Allocates a value node under `parent` (one allocation).
    pub(crate) fn derive(parent: &Repr, value: T) -> NodeRef {
        let node = Box::new(ValueNode {
            header: ValueHeader {
                node: Node::new(1, &Self::KIND, parent.clone(), parent.anchor_ptr()),
                type_id: TypeId::of::<T>(),
            },
            value,
        });
        // SAFETY: `Box::into_raw` never returns null; the header is the first
        // field of a `#[repr(C)]` struct, so the cast keeps the address; the
        // node's one handle is the caller's.
        unsafe { NodeRef::from_raw(NonNull::new_unchecked(Box::into_raw(node)).cast()) }
    }

    /// # Safety
    ///
    /// `node` heads a `ValueNode<T>` allocated by `derive`, released, whose
    /// parent was already moved out.
    unsafe fn free(node: NonNull<Node>) {
        // SAFETY: per the contract; `parent` is `ManuallyDrop`, so only the
        // value is dropped here.
        drop(unsafe { Box::from_raw(node.cast::<ValueNode<T>>().as_ptr()) });
    }
}

/// The value stored in `node` if it is a `ValueNode<T>`.
///
/// # Safety
///
/// `node` is alive for `'a`.
#[inline]
pub(crate) unsafe fn value_of<'a, T: 'static>(node: NonNull<Node>) -> Option<&'a T> {
    // SAFETY: alive for 'a per the contract.
    let header = unsafe { node.as_ref() };
    let Kind::Value(_) = header.kind else {
        return None;
    };
    // SAFETY: the kind says the header starts a `ValueNode`, so a
    // `ValueHeader` (its first field, laid out the same for every `T`);
    // alive for 'a.
    if unsafe { node.cast::<ValueHeader>().as_ref() }.type_id != TypeId::of::<T>() {
        return None;
    }
    // SAFETY: the `TypeId` says this header starts a `ValueNode<T>`.
    Some(unsafe { &node.cast::<ValueNode<T>>().as_ref().value })
}
