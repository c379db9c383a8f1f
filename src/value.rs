//! Value contexts: `with_value::<T>(v)` adds one node holding `v`, keyed by
//! `T`'s `TypeId`. A value node has no cancellation machinery: its anchor is
//! its parent's, so it is exactly as done as its parent.

use core::any::{TypeId, type_name};
use core::ptr::NonNull;

use crate::node::{Kind, Node, NodeRef, Repr, ValueVtable};

/// A value context's node: the header, then the value.
#[repr(C)]
pub(crate) struct ValueNode<T> {
    node: Node,
    value: T,
}

impl<T: Send + Sync + 'static> ValueNode<T> {
    const VTABLE: ValueVtable = ValueVtable {
        type_name: type_name::<T>,
        free: Self::free,
    };

    /// Allocates a value node under `parent` (one allocation).
    pub(crate) fn derive(parent: &Repr, value: T) -> NodeRef {
        let node = Box::new(ValueNode {
            node: Node::new(
                1,
                Kind::Value {
                    type_id: TypeId::of::<T>(),
                    vtable: &Self::VTABLE,
                },
                parent.clone(),
                parent.anchor_ptr(),
            ),
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
    match header.kind {
        Kind::Value { type_id, .. } if type_id == TypeId::of::<T>() => {
            // SAFETY: the `TypeId` says this header starts a `ValueNode<T>`.
            Some(unsafe { &node.cast::<ValueNode<T>>().as_ref().value })
        }
        _ => None,
    }
}
