//! [`Block16`]: 12 bytes a crypto backend is about to read, written by one 16-byte store.
//!
//! The backends read nonce and AAD with wide loads right at the start of a call. A
//! value the caller has just written in pieces (a 4-byte and an 8-byte store, as the
//! compiler writes a `[u8; 12]` made of a salt and an IV, or of an SPI and a 64-bit
//! sequence number) cannot be forwarded from the store buffer to a load that spans
//! both stores: the load waits until they reach the cache. Measured in C on an
//! AVX-512 guest, intel-ipsec-mb sealing 68-byte bodies back to back: 23 ns a packet
//! with the nonce written by one 16-byte store, 40 with two stores. Any load inside a
//! single store is forwarded, whatever its width.
//!
//! This module holds one `unsafe` block (the store), justified below.
#![allow(unsafe_code)]

/// 16 bytes, 16-byte aligned: `head` (4 bytes), `tail` (8 bytes), then 4 zero bytes,
/// written by one 16-byte store on x86_64 (two 8-byte halves built in registers).
#[repr(C, align(16))]
pub(crate) struct Block16([u8; 16]);

impl Block16 {
    /// `head || tail || 0000`, written by one store.
    #[inline(always)]
    pub(crate) fn new(head: [u8; 4], tail: [u8; 8]) -> Block16 {
        let mut block = Block16([0; 16]);
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::{__m128i, _mm_set_epi64x};
            // From the parts, in registers: head, then the tail's halves.
            let tail_lo = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
            let tail_hi = u32::from_le_bytes([tail[4], tail[5], tail[6], tail[7]]);
            let lo = u64::from(u32::from_le_bytes(head)) | (u64::from(tail_lo) << 32);
            // SAFETY: `_mm_set_epi64x` needs SSE2, which every x86_64 processor has
            // (it is in the target's baseline). `block` is 16 writable bytes, 16-byte
            // aligned. Volatile, so that the compiler keeps the one 16-byte store
            // rather than splitting it.
            unsafe {
                let v = _mm_set_epi64x(i64::from(tail_hi), lo as i64);
                core::ptr::write_volatile(block.0.as_mut_ptr().cast::<__m128i>(), v);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            block.0[..4].copy_from_slice(&head);
            block.0[4..12].copy_from_slice(&tail);
        }
        block
    }

    /// The 12 bytes `head || tail`.
    #[inline(always)]
    pub(crate) fn bytes12(&self) -> &[u8; 12] {
        self.0[..12].try_into().expect("12 of 16 bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::Block16;

    #[test]
    fn holds_head_then_tail_then_zeros() {
        let b = Block16::new([1, 2, 3, 4], [5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(b.0, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0, 0, 0, 0]);
        assert_eq!(b.bytes12(), &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    }
}
