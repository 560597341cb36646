//! [`PacketBuf`]: a packet inside a caller-owned buffer, with headroom and tailroom.
//!
//! This is the DPDK mbuf model: the caller owns `buf`, the packet occupies
//! `buf[offset..offset + len]`, the bytes before it are headroom and the bytes after it
//! tailroom. Transforms grow the packet into the headroom (headers) and the tailroom
//! (trailer, ICV) and shrink it again, updating `offset` and `len`; the payload stays
//! where it is.

use crate::error::{Error, Malformed};

/// A packet at `offset..offset + len` of a caller-owned buffer.
#[derive(Debug)]
pub struct PacketBuf<'a> {
    buf: &'a mut [u8],
    offset: usize,
    len: usize,
}

impl<'a> PacketBuf<'a> {
    /// Describes the packet at `buf[offset..offset + len]`.
    ///
    /// Fails with [`Malformed::BadDescriptor`] when that range does not lie inside `buf`.
    pub fn new(buf: &'a mut [u8], offset: usize, len: usize) -> Result<Self, Error> {
        match offset.checked_add(len) {
            Some(end) if end <= buf.len() => Ok(PacketBuf { buf, offset, len }),
            _ => Err(Error::Malformed(Malformed::BadDescriptor)),
        }
    }

    /// The packet bytes.
    #[inline(always)]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.offset..self.offset + self.len]
    }

    /// The packet bytes, mutable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.offset..self.offset + self.len]
    }

    /// Where the packet starts in the buffer (bytes of headroom).
    #[inline]
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The packet's length.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the packet has no bytes.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Free bytes in front of the packet.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.offset
    }

    /// Free bytes behind the packet.
    #[inline]
    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.offset - self.len
    }

    /// The whole underlying buffer (headroom, packet and tailroom).
    #[inline]
    pub fn buffer(&self) -> &[u8] {
        self.buf
    }

    /// The whole underlying buffer, mutable (to write the next packet into it before
    /// [`PacketBuf::reset`]).
    #[inline]
    pub fn buffer_mut(&mut self) -> &mut [u8] {
        self.buf
    }

    /// Points the descriptor at a new packet at `offset..offset + len` of the same
    /// buffer, as a gateway does when it reuses a buffer for the next packet (DPDK's
    /// `rte_pktmbuf_reset`). Fails with [`Malformed::BadDescriptor`] when the range does
    /// not lie inside the buffer; the descriptor is then unchanged.
    #[inline]
    pub fn reset(&mut self, offset: usize, len: usize) -> Result<(), Error> {
        match offset.checked_add(len) {
            Some(end) if end <= self.buf.len() => {
                self.offset = offset;
                self.len = len;
                Ok(())
            }
            _ => Err(Error::Malformed(Malformed::BadDescriptor)),
        }
    }

    /// Moves the packet window; callers inside the crate guarantee it stays in bounds.
    #[inline]
    pub(crate) fn set_window(&mut self, offset: usize, len: usize) {
        debug_assert!(offset + len <= self.buf.len());
        self.offset = offset;
        self.len = len;
    }

    /// Gives back the buffer, the packet's offset and its length.
    pub fn into_parts(self) -> (&'a mut [u8], usize, usize) {
        (self.buf, self.offset, self.len)
    }
}

/// Spare buffers for the packets an operation adds to the one it was given: the
/// fragments of a packet that had to be split to fit the path MTU (RFC 4459
/// pre-fragmentation: each fragment becomes its own ESP packet).
///
/// The caller owns the buffers, as a gateway owns mbufs from a pool. Each spare's
/// current offset is the headroom to keep in front of the packet written into it (as
/// a fresh mbuf's data offset); its contents are overwritten. An operation takes
/// spares in order from the front, all it needs or none (then it fails with
/// [`Error::NoSpareBuffers`] and leaves its packet unchanged), and reports how many it
/// took. A burst takes them in packet order: the extra packets of packet `i` follow
/// those of packet `i - 1`. [`SpareBuffers::filled`] gives them back in that order.
///
/// ```
/// use ipsec_core::{PacketBuf, SpareBuffers};
/// let mut a = [0u8; 2048];
/// let mut b = [0u8; 2048];
/// let mut spares = [PacketBuf::new(&mut a, 128, 0)?, PacketBuf::new(&mut b, 128, 0)?];
/// let pool = SpareBuffers::new(&mut spares);
/// assert_eq!((pool.used(), pool.remaining()), (0, 2));
/// # Ok::<(), ipsec_core::Error>(())
/// ```
#[derive(Debug)]
pub struct SpareBuffers<'s, 'b> {
    bufs: &'s mut [PacketBuf<'b>],
    used: usize,
}

impl<'s, 'b> SpareBuffers<'s, 'b> {
    /// A pool of the spare buffers `bufs`, none used yet.
    pub fn new(bufs: &'s mut [PacketBuf<'b>]) -> Self {
        SpareBuffers { bufs, used: 0 }
    }

    /// No spare buffers: an operation that would need one fails with
    /// [`Error::NoSpareBuffers`] instead.
    pub fn none() -> SpareBuffers<'static, 'static> {
        SpareBuffers {
            bufs: &mut [],
            used: 0,
        }
    }

    /// How many spares operations have filled so far.
    #[inline]
    pub fn used(&self) -> usize {
        self.used
    }

    /// How many spares are left.
    #[inline]
    pub fn remaining(&self) -> usize {
        self.bufs.len() - self.used
    }

    /// The filled spares, in the order the packets were produced.
    pub fn filled(&self) -> &[PacketBuf<'b>] {
        &self.bufs[..self.used]
    }

    /// Reserves the next `n` spares (all or none), or fails with
    /// [`Error::NoSpareBuffers`]. They count as used once [`Self::commit`] is called.
    #[inline]
    pub(crate) fn reserve(&mut self, n: usize) -> Result<&mut [PacketBuf<'b>], Error> {
        let available = self.remaining();
        if n > available {
            return Err(Error::NoSpareBuffers {
                needed: n,
                available,
            });
        }
        Ok(&mut self.bufs[self.used..self.used + n])
    }

    /// Marks the `n` spares last reserved as used.
    #[inline]
    pub(crate) fn commit(&mut self, n: usize) {
        debug_assert!(n <= self.remaining());
        self.used += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_outside_the_buffer_are_refused() {
        let mut storage = [0u8; 16];
        assert!(PacketBuf::new(&mut storage, 10, 7).is_err());
        assert!(PacketBuf::new(&mut storage, usize::MAX, 2).is_err());
        let mut p = PacketBuf::new(&mut storage, 4, 8).unwrap();
        assert_eq!((p.headroom(), p.len(), p.tailroom()), (4, 8, 4));
        assert_eq!(
            p.reset(9, 8),
            Err(Error::Malformed(Malformed::BadDescriptor))
        );
        assert_eq!(
            (p.offset(), p.len()),
            (4, 8),
            "unchanged after a refused reset"
        );
        p.buffer_mut()[0] = 7;
        p.reset(0, 16).unwrap();
        assert_eq!(p.data()[0], 7);
        assert!(!p.is_empty());
    }

    #[test]
    fn spares_are_reserved_all_or_none_and_taken_in_order() {
        let (mut a, mut b) = ([0u8; 8], [0u8; 8]);
        let mut bufs = [
            PacketBuf::new(&mut a, 2, 0).unwrap(),
            PacketBuf::new(&mut b, 2, 0).unwrap(),
        ];
        let mut pool = SpareBuffers::new(&mut bufs);
        assert_eq!(
            pool.reserve(3).unwrap_err(),
            Error::NoSpareBuffers {
                needed: 3,
                available: 2
            }
        );
        pool.reserve(1).unwrap()[0].reset(2, 3).unwrap();
        pool.commit(1);
        assert_eq!((pool.used(), pool.remaining()), (1, 1));
        assert_eq!(pool.filled().len(), 1);
        assert_eq!(pool.filled()[0].len(), 3);
        assert!(SpareBuffers::none().reserve(1).is_err());
        assert!(pool.reserve(1).is_ok());
    }
}
