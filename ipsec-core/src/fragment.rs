//! Splitting an IP packet into fragments (RFC 791 §3.2, RFC 8200 §4.5), for packets
//! that do not fit an SA's path MTU (see [`crate::path_mtu`]).
//!
//! The first fragment stays in the caller's buffer, where the packet was; the others
//! are written into spare buffers ([`crate::SpareBuffers`]), each at its spare's
//! offset. A split is planned first and checked against every buffer involved, so it
//! either happens completely or not at all (the packet is then unchanged).

use crate::buffer::PacketBuf;
use crate::error::{Error, Malformed};
use crate::packet::{self, IPV4_HEADER_LEN, IPV6_HEADER_LEN};

/// IPv6 Fragment extension header number.
const IPPROTO_FRAGMENT: u8 = 44;
/// Length of the IPv6 Fragment header.
const FRAGMENT_HEADER_LEN: usize = 8;

/// How an IPv4 packet is cut.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ipv4Split {
    /// Header length of the first fragment (the packet's own).
    header_len: usize,
    /// Header of the later fragments: the fixed header and the options whose "copied"
    /// flag is set (RFC 791 §3.1), padded to 32 bits.
    later_header: [u8; 60],
    later_header_len: usize,
    /// Data bytes of the whole packet, and per fragment (the last may have fewer).
    data_len: usize,
    first_data: usize,
    later_data: usize,
    /// Fragment offset (8-byte units) and MF flag of the packet itself: a fragment can
    /// be cut again.
    base_offset: usize,
    more_after: bool,
}

impl Ipv4Split {
    /// Plans fragments of at most `mtu` bytes of the IPv4 packet `pkt`. Fails with
    /// [`Malformed::TooBig`] when `mtu` leaves no room for 8 data bytes per fragment.
    pub(crate) fn plan(pkt: &[u8], mtu: usize) -> Result<Ipv4Split, Error> {
        let info = packet::parse_ip(pkt).map_err(Error::Malformed)?;
        let header_len = info.header_len;
        let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
        let mut later_header = [0u8; 60];
        later_header[..IPV4_HEADER_LEN].copy_from_slice(&pkt[..IPV4_HEADER_LEN]);
        let mut at = IPV4_HEADER_LEN;
        let mut i = IPV4_HEADER_LEN;
        while i < header_len {
            let kind = pkt[i];
            let len = match kind {
                0 => break,
                1 => 1,
                _ => match pkt.get(i + 1) {
                    Some(&l) if l >= 2 && i + usize::from(l) <= header_len => usize::from(l),
                    _ => return Err(Error::Malformed(Malformed::BadInnerPacket)),
                },
            };
            if kind & 0x80 != 0 {
                later_header[at..at + len].copy_from_slice(&pkt[i..i + len]);
                at += len;
            }
            i += len;
        }
        let later_header_len = at.next_multiple_of(4);
        later_header[0] = 0x40 | (later_header_len / 4) as u8;
        let first_data = mtu.saturating_sub(header_len) & !7;
        let later_data = mtu.saturating_sub(later_header_len) & !7;
        if first_data == 0 || later_data == 0 {
            return Err(Error::Malformed(Malformed::TooBig));
        }
        Ok(Ipv4Split {
            header_len,
            later_header,
            later_header_len,
            data_len: info.total_len - header_len,
            first_data,
            later_data,
            base_offset: usize::from(frag & 0x1fff),
            more_after: frag & 0x2000 != 0,
        })
    }

    /// How many fragments the packet becomes.
    pub(crate) fn count(&self) -> usize {
        if self.data_len <= self.first_data {
            1
        } else {
            1 + (self.data_len - self.first_data).div_ceil(self.later_data)
        }
    }

    /// `(data start, data length)` of fragment `i`.
    fn data_range(&self, i: usize) -> (usize, usize) {
        if i == 0 {
            (0, self.data_len.min(self.first_data))
        } else {
            let start = self.first_data + (i - 1) * self.later_data;
            (start, (self.data_len - start).min(self.later_data))
        }
    }

    /// The length of fragment `i`, headers included.
    pub(crate) fn fragment_len(&self, i: usize) -> usize {
        let header = if i == 0 {
            self.header_len
        } else {
            self.later_header_len
        };
        header + self.data_range(i).1
    }

    /// Cuts the packet in `pkt`: fragment 0 stays in `pkt`, fragment `i` goes into
    /// `spares[i - 1]` at that spare's offset. The caller has checked that every spare
    /// holds its fragment (see [`spares_hold`]); `spares.len() == count() - 1`.
    pub(crate) fn split(&self, pkt: &mut PacketBuf<'_>, spares: &mut [PacketBuf<'_>]) {
        let n = self.count();
        debug_assert_eq!(spares.len(), n - 1);
        for (i, spare) in spares.iter_mut().enumerate().map(|(k, s)| (k + 1, s)) {
            let (start, len) = self.data_range(i);
            let h = self.later_header_len;
            let at = spare.offset();
            let src = &pkt.data()[self.header_len + start..self.header_len + start + len];
            let out = &mut spare.buffer_mut()[at..at + h + len];
            out[..h].copy_from_slice(&self.later_header[..h]);
            out[h..].copy_from_slice(src);
            self.write_fields(&mut out[..h], h + len, start, i + 1 < n);
            spare.set_window(at, h + len);
        }
        let (_, len) = self.data_range(0);
        let hl = self.header_len;
        let data = pkt.data_mut();
        self.write_fields(&mut data[..hl], hl + len, 0, n > 1);
        let offset = pkt.offset();
        pkt.set_window(offset, hl + len);
    }

    /// Writes total length, fragment offset, MF and the checksum of one fragment.
    fn write_fields(&self, header: &mut [u8], total: usize, start: usize, more: bool) {
        header[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        let mut frag = u16::from_be_bytes([header[6], header[7]]) & 0x4000; // keep DF
        frag |= (self.base_offset + start / 8) as u16;
        if more || self.more_after {
            frag |= 0x2000;
        }
        header[6..8].copy_from_slice(&frag.to_be_bytes());
        packet::set_ipv4_checksum(header);
    }
}

/// How an IPv6 packet is cut: the unfragmentable part (the IPv6 header and the
/// extension headers routers read: Hop-by-Hop, Routing, and Destination Options before
/// a Routing header) goes in front of every fragment, followed by a Fragment header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ipv6Split {
    /// Length of the unfragmentable part.
    unfragmentable: usize,
    /// Offset of the next-header byte (in the unfragmentable part) that becomes 44.
    next_header_at: usize,
    /// The header the fragmentable part starts with.
    first_header: u8,
    data_len: usize,
    data_per_fragment: usize,
}

impl Ipv6Split {
    /// Plans fragments of at most `mtu` bytes of the IPv6 packet `pkt` (which carries
    /// no Fragment header). Fails with [`Malformed::TooBig`] when `mtu` leaves no room
    /// for 8 data bytes per fragment.
    pub(crate) fn plan(pkt: &[u8], mtu: usize) -> Result<Ipv6Split, Error> {
        let info = packet::parse_ip(pkt).map_err(Error::Malformed)?;
        let ins = packet::ipv6_esp_insertion(pkt, info.total_len).map_err(Error::Malformed)?;
        // A packet that already is a fragment is not cut again (one Fragment header
        // per packet, RFC 8200 §4.1).
        if ins.protocol == IPPROTO_FRAGMENT || has_fragment_header(pkt, ins.offset) {
            return Err(Error::Malformed(Malformed::Fragment));
        }
        let unfragmentable = ins.offset;
        let data_per_fragment = mtu.saturating_sub(unfragmentable + FRAGMENT_HEADER_LEN) & !7;
        if data_per_fragment == 0 {
            return Err(Error::Malformed(Malformed::TooBig));
        }
        Ok(Ipv6Split {
            unfragmentable,
            next_header_at: ins.next_header_at,
            first_header: ins.protocol,
            data_len: info.total_len - unfragmentable,
            data_per_fragment,
        })
    }

    /// How many fragments the packet becomes.
    pub(crate) fn count(&self) -> usize {
        self.data_len.div_ceil(self.data_per_fragment).max(1)
    }

    fn data_range(&self, i: usize) -> (usize, usize) {
        let start = i * self.data_per_fragment;
        (start, (self.data_len - start).min(self.data_per_fragment))
    }

    /// Cuts the packet in `pkt` (which needs 8 bytes of headroom: its unfragmentable
    /// part moves forward to make room for the Fragment header, the data stays where
    /// it is). Fragment `i > 0` goes into `spares[i - 1]` at that spare's offset.
    pub(crate) fn split(
        &self,
        pkt: &mut PacketBuf<'_>,
        spares: &mut [PacketBuf<'_>],
        identification: u32,
    ) {
        let n = self.count();
        debug_assert_eq!(spares.len(), n - 1);
        let u = self.unfragmentable;
        for (i, spare) in spares.iter_mut().enumerate().map(|(k, s)| (k + 1, s)) {
            let (start, len) = self.data_range(i);
            let total = u + FRAGMENT_HEADER_LEN + len;
            let at = spare.offset();
            let data = pkt.data();
            let out = &mut spare.buffer_mut()[at..at + total];
            out[..u].copy_from_slice(&data[..u]);
            out[u + FRAGMENT_HEADER_LEN..].copy_from_slice(&data[u + start..u + start + len]);
            self.write_headers(out, start, i + 1 < n, identification);
            spare.set_window(at, total);
        }
        let (_, len) = self.data_range(0);
        let offset = pkt.offset();
        let start = offset - FRAGMENT_HEADER_LEN;
        let total = u + FRAGMENT_HEADER_LEN + len;
        let buf = pkt.buffer_mut();
        buf.copy_within(offset..offset + u, start);
        self.write_headers(&mut buf[start..start + total], 0, n > 1, identification);
        pkt.set_window(start, total);
    }

    /// Writes the payload length, the next-header byte and the Fragment header.
    fn write_headers(&self, out: &mut [u8], start: usize, more: bool, id: u32) {
        let u = self.unfragmentable;
        let payload = (out.len() - IPV6_HEADER_LEN) as u16;
        out[4..6].copy_from_slice(&payload.to_be_bytes());
        out[self.next_header_at] = IPPROTO_FRAGMENT;
        let fh = &mut out[u..u + FRAGMENT_HEADER_LEN];
        fh[0] = self.first_header;
        fh[1] = 0;
        let offset_flags = (start as u16) | u16::from(more);
        fh[2..4].copy_from_slice(&offset_flags.to_be_bytes());
        fh[4..8].copy_from_slice(&id.to_be_bytes());
    }
}

/// True when a Fragment header sits among the IPv6 extension headers before `end`
/// (a chain [`packet::ipv6_esp_insertion`] has already checked).
pub(crate) fn has_fragment_header(pkt: &[u8], end: usize) -> bool {
    let mut nh = pkt[6];
    let mut at = IPV6_HEADER_LEN;
    while at < end {
        if nh == IPPROTO_FRAGMENT {
            return true;
        }
        nh = pkt[at];
        at += (usize::from(pkt[at + 1]) + 1) * 8;
    }
    false
}

/// Checks that each spare can take its packet: `lens[i]` bytes at the spare's offset,
/// with `head` bytes of headroom in front and `tail(lens[i])` bytes of tailroom behind
/// (the room ESP needs when the fragments are encrypted afterwards).
pub(crate) fn spares_hold(
    spares: &[PacketBuf<'_>],
    lens: impl Iterator<Item = usize>,
    head: usize,
    tail: impl Fn(usize) -> usize,
) -> Result<(), Error> {
    for (spare, len) in spares.iter().zip(lens) {
        if spare.offset() < head {
            return Err(Error::NoHeadroom {
                needed: head,
                available: spare.offset(),
            });
        }
        let room = spare.buffer().len() - spare.offset();
        let needed = len + tail(len);
        if room < needed {
            return Err(Error::NoTailroom {
                needed: needed - len,
                available: room.saturating_sub(len),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(payload: usize, options: &[u8], frag: u16) -> Vec<u8> {
        let hl = 20 + options.len();
        let mut p = vec![0u8; hl + payload];
        p[0] = 0x40 | (hl / 4) as u8;
        p[2..4].copy_from_slice(&((hl + payload) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 1, 0, 1]);
        p[20..hl].copy_from_slice(options);
        for (i, b) in p[hl..].iter_mut().enumerate() {
            *b = i as u8;
        }
        packet::set_ipv4_checksum(&mut p[..hl]);
        p
    }

    /// Splits `pkt` with room around every piece; returns the fragments.
    fn split_v4(pkt: &[u8], mtu: usize) -> Vec<Vec<u8>> {
        let plan = Ipv4Split::plan(pkt, mtu).unwrap();
        let n = plan.count();
        let mut first = vec![0u8; 64 + pkt.len()];
        first[64..].copy_from_slice(pkt);
        let mut stores: Vec<Vec<u8>> = (1..n).map(|_| vec![0u8; 2048]).collect();
        let mut spares: Vec<PacketBuf<'_>> = stores
            .iter_mut()
            .map(|s| PacketBuf::new(s, 32, 0).unwrap())
            .collect();
        let mut p = PacketBuf::new(&mut first, 64, pkt.len()).unwrap();
        spares_hold(&spares, (1..n).map(|i| plan.fragment_len(i)), 32, |_| 0).unwrap();
        plan.split(&mut p, &mut spares);
        let mut out = vec![p.data().to_vec()];
        out.extend(spares.iter().map(|s| s.data().to_vec()));
        out
    }

    /// A naive reassembly: the data at each fragment's offset.
    fn reassemble_v4(frags: &[Vec<u8>]) -> Vec<u8> {
        let mut data = vec![];
        for f in frags {
            assert!(packet::ipv4_checksum_ok(&f[..usize::from(f[0] & 15) * 4]));
            let hl = usize::from(f[0] & 15) * 4;
            let off = usize::from(u16::from_be_bytes([f[6], f[7]]) & 0x1fff) * 8;
            let total = usize::from(u16::from_be_bytes([f[2], f[3]]));
            assert_eq!(total, f.len());
            if data.len() < off + total - hl {
                data.resize(off + total - hl, 0);
            }
            data[off..off + total - hl].copy_from_slice(&f[hl..]);
        }
        data
    }

    #[test]
    fn ipv4_fragments_fit_the_mtu_and_reassemble_to_the_original() {
        for payload in [1usize, 8, 100, 1480, 1481, 3000] {
            for mtu in [68usize, 576, 1280, 1500] {
                let pkt = ipv4(payload, &[], 0);
                let frags = split_v4(&pkt, mtu);
                for (i, f) in frags.iter().enumerate() {
                    assert!(f.len() <= mtu, "fragment {i} of {} bytes", f.len());
                    let more = f[6] & 0x20 != 0;
                    assert_eq!(more, i + 1 < frags.len());
                    assert_eq!(&f[4..6], &[0x12, 0x34], "the ID is kept");
                    if i + 1 < frags.len() {
                        assert_eq!((f.len() - 20) % 8, 0);
                    }
                }
                assert_eq!(reassemble_v4(&frags), pkt[20..], "{payload} at {mtu}");
            }
        }
    }

    #[test]
    fn ipv4_later_fragments_carry_only_copied_options_and_a_fragment_splits_again() {
        // Record route (7, not copied, 7 bytes) then a copied option (0x83 loose source
        // route, 7 bytes), then NOP and EOL padding to 16 bytes.
        let opts = [7, 7, 4, 0, 0, 0, 0, 0x83, 7, 4, 10, 9, 9, 9, 1, 0];
        let pkt = ipv4(600, &opts, 0x2000 | 10); // itself a fragment at 80 bytes, MF set
        let frags = split_v4(&pkt, 300);
        assert!(frags.len() > 2);
        assert_eq!(frags[0][0] & 15, 9, "the first keeps every option");
        for f in &frags[1..] {
            assert_eq!(f[0] & 15, 7, "20 + 7 copied option bytes, padded to 28");
            assert_eq!(&f[20..27], &opts[7..14]);
            assert_eq!(f[27], 0);
        }
        for f in &frags {
            assert!(
                f[6] & 0x20 != 0,
                "MF stays set: the original had more after it"
            );
        }
        let first_off = u16::from_be_bytes([frags[0][6], frags[0][7]]) & 0x1fff;
        assert_eq!(first_off, 10);
    }

    #[test]
    fn ipv6_fragments_carry_the_unfragmentable_part_and_a_fragment_header() {
        // IPv6 | Hop-by-Hop (8) | ESP payload of 1000 bytes.
        let mut pkt = vec![0u8; 40 + 8 + 1000];
        pkt[0] = 0x60;
        pkt[4..6].copy_from_slice(&1008u16.to_be_bytes());
        pkt[6] = 0; // Hop-by-Hop
        pkt[7] = 64;
        pkt[40] = 50; // then ESP
        for (i, b) in pkt[48..].iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        let plan = Ipv6Split::plan(&pkt, 400).unwrap();
        let n = plan.count();
        assert_eq!(n, 3);
        let mut first = vec![0u8; 16 + pkt.len()];
        first[16..].copy_from_slice(&pkt);
        let mut stores: Vec<Vec<u8>> = (1..n).map(|_| vec![0u8; 600]).collect();
        let mut spares: Vec<PacketBuf<'_>> = stores
            .iter_mut()
            .map(|s| PacketBuf::new(s, 0, 0).unwrap())
            .collect();
        let mut p = PacketBuf::new(&mut first, 16, pkt.len()).unwrap();
        plan.split(&mut p, &mut spares, 0xdead_beef);
        assert_eq!(p.offset(), 8, "the headers moved 8 bytes forward");
        let frags: Vec<Vec<u8>> = std::iter::once(p.data().to_vec())
            .chain(spares.iter().map(|s| s.data().to_vec()))
            .collect();
        let mut data = vec![0u8; 1000];
        for (i, f) in frags.iter().enumerate() {
            assert!(f.len() <= 400);
            assert_eq!(usize::from(u16::from_be_bytes([f[4], f[5]])) + 40, f.len());
            assert_eq!(&f[..4], &pkt[..4]);
            assert_eq!(f[40], 44, "Hop-by-Hop now points at the Fragment header");
            assert_eq!(f[48], 50, "which points at ESP");
            let ofm = u16::from_be_bytes([f[50], f[51]]);
            assert_eq!(ofm & 1 == 1, i + 1 < n);
            assert_eq!(&f[52..56], &0xdead_beefu32.to_be_bytes());
            let off = usize::from(ofm & !7);
            data[off..off + f.len() - 56].copy_from_slice(&f[56..]);
        }
        assert_eq!(data, pkt[48..]);
    }

    #[test]
    fn spares_too_small_are_refused_before_anything_moves() {
        let pkt = ipv4(1000, &[], 0);
        let plan = Ipv4Split::plan(&pkt, 576).unwrap();
        let mut small = [0u8; 100];
        let spares = [PacketBuf::new(&mut small, 10, 0).unwrap()];
        assert!(matches!(
            spares_hold(&spares, [plan.fragment_len(1)].into_iter(), 0, |_| 0),
            Err(Error::NoTailroom { .. })
        ));
        assert!(matches!(
            spares_hold(&spares, [10].into_iter(), 20, |_| 0),
            Err(Error::NoHeadroom { .. })
        ));
        assert_eq!(
            Ipv4Split::plan(&pkt, 24).unwrap_err(),
            Error::Malformed(Malformed::TooBig)
        );
    }
}
