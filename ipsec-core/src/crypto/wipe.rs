//! [`WipeOnDrop`]: a heap box whose memory is zeroed when it is dropped.
//!
//! Some crypto backends (ring) keep key schedules in plain structs with no `Drop` that
//! wipes them. This box gives any such key the same guarantee the RustCrypto types give
//! with their `zeroize` feature: when the SA goes away, the key bytes go with it.
//!
//! It also wipes what a type's own `Drop` cannot reach: padding. An enum whose variants
//! differ in size (the HMAC states: SHA-1's is far smaller than SHA-512's) leaves the
//! unused tail of a small variant as padding, and `Box::new` copies it from wherever
//! the value was built on the stack, stale key bytes of an earlier call included.
//! Zeroing the whole allocation on drop means such bytes never reach freed memory.
//!
//! This module holds two lines of `unsafe` code, justified below.
#![allow(unsafe_code)]

use core::mem::{ManuallyDrop, MaybeUninit};
use core::ops::{Deref, DerefMut};
use zeroize::Zeroize;

/// A `Box<T>` that overwrites the value's bytes with zeros after dropping it.
///
/// Only meaningful for "flat" `T` (no pointers to further secret memory); ring's
/// `LessSafeKey` is such a type.
pub(crate) struct WipeOnDrop<T> {
    inner: ManuallyDrop<Box<T>>,
}

impl<T> WipeOnDrop<T> {
    /// Moves `value` to the heap.
    pub(crate) fn new(value: T) -> Self {
        WipeOnDrop {
            inner: ManuallyDrop::new(Box::new(value)),
        }
    }
}

impl<T> Deref for WipeOnDrop<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> DerefMut for WipeOnDrop<T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T> Drop for WipeOnDrop<T> {
    fn drop(&mut self) {
        // SAFETY: `inner` is taken exactly once, here, and never used afterwards.
        let boxed = unsafe { ManuallyDrop::take(&mut self.inner) };
        let raw: *mut T = Box::into_raw(boxed);
        // SAFETY: `raw` comes from `Box::into_raw` of a live, initialised `T`; it is
        // dropped in place once, then only its memory is reused, as `MaybeUninit<T>`
        // (same size and alignment), whose box frees the allocation without dropping
        // a `T` again.
        let mut memory: Box<MaybeUninit<T>> = unsafe {
            core::ptr::drop_in_place(raw);
            Box::from_raw(raw.cast::<MaybeUninit<T>>())
        };
        // Volatile writes of zeros over the whole value, then a compiler fence.
        memory.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static DROPS: AtomicUsize = AtomicUsize::new(0);

    struct Counted([u8; 32]);
    impl Drop for Counted {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn drops_the_value_exactly_once_and_derefs() {
        let b = WipeOnDrop::new(Counted([7; 32]));
        assert_eq!(b.0[31], 7);
        drop(b);
        assert_eq!(DROPS.load(Ordering::SeqCst), 1);
    }
}
