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
    #[inline]
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
}
