//! ESP encapsulation and decapsulation (RFC 4303), tunnel and transport mode, IPv4 and
//! IPv6, with UDP encapsulation for NAT traversal (RFC 3948).
//!
//! All transforms work in place on a [`PacketBuf`]:
//!
//! ```text
//! tunnel encap:     [headroom][inner IP packet     ][tailroom]
//!                => [outer IP][UDP][ESP][IV][inner IP packet][TFC][pad][pl][nh][ICV]
//! transport encap:  [headroom][IP hdr][payload          ][tailroom]
//!                => [IP hdr][UDP][ESP][IV][payload][pad][pl][nh][ICV]
//! ```
//!
//! The payload is encrypted where it lies; in transport mode only the IP header (and
//! the IPv6 extension headers that stay in front of ESP) move, into the headroom.
//! Decapsulation reverses this and leaves the inner packet in the buffer's window.
//!
//! Inbound order of checks (RFC 4303 §3.4): parse, SPI, replay check (no state change),
//! ICV verification, replay window update, then padding and next header. Every failure
//! is counted under its [`DropReason`](crate::DropReason) before it is returned.

use crate::buffer::PacketBuf;
use crate::crypto::EspLayout;
use crate::error::{Error, Malformed};
use crate::packet::{
    self, IPPROTO_ESP, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_NONE, IPPROTO_UDP, IPV4_HEADER_LEN,
    IPV6_HEADER_LEN, IpVersion, UDP_HEADER_LEN,
};
use crate::sa::{Direction, Mode, SecurityAssociation, TfcPadding};
use bytes::BytesMut;
use core::time::Duration;
use std::net::IpAddr;

const ESP_HEADER_LEN: usize = 8;

/// The RFC 4303 §2.4 padding pattern 1, 2, 3, ..., 255: written and checked as one
/// slice rather than byte by byte.
const PAD_BYTES: [u8; 255] = {
    let mut t = [0u8; 255];
    let mut i = 0;
    while i < 255 {
        t[i] = (i + 1) as u8;
        i += 1;
    }
    t
};

impl SecurityAssociation {
    /// Encrypts the IP packet in `pkt` in place (outbound SAs).
    ///
    /// Tunnel mode: the whole packet becomes the payload of a new outer IPv4/IPv6 header
    /// (DSCP copied, ECN per RFC 6040, TTL/hop limit [`crate::SaConfig::outer_ttl`]).
    /// Transport mode: the IP header stays, its protocol becomes ESP (or UDP with NAT-T).
    /// Needs [`SecurityAssociation::max_headroom`] bytes of headroom and
    /// [`SecurityAssociation::tailroom_for`] bytes of tailroom; bytes after the IP
    /// packet's own length (link-layer padding) are dropped.
    pub fn encrypt(&mut self, pkt: &mut PacketBuf<'_>, now: Duration) -> Result<(), Error> {
        if self.direction != Direction::Outbound {
            return Err(self.drop(Error::WrongDirection));
        }
        self.admit(now)?;
        self.encrypt_admitted(pkt, None)
    }

    /// Sends an RFC 4303 §2.6 dummy packet: the `pkt.len()` bytes in `pkt` (any content)
    /// are carried with next header 59, which the receiver drops and counts as `dummy`.
    pub fn encrypt_dummy(&mut self, pkt: &mut PacketBuf<'_>, now: Duration) -> Result<(), Error> {
        if self.direction != Direction::Outbound || self.mode != Mode::Tunnel {
            return Err(self.drop(Error::WrongDirection));
        }
        self.admit(now)?;
        self.encrypt_admitted(pkt, Some(IPPROTO_NONE))
    }

    /// Encrypts a burst of packets under one key schedule. `results[i]` receives the
    /// outcome of `packets[i]`; a failed packet is left in its buffer, never freed, and
    /// counted under its drop reason. Only the first `min(packets.len(),
    /// results.len())` packets are processed. Returns how many succeeded.
    pub fn encrypt_burst(
        &mut self,
        packets: &mut [PacketBuf<'_>],
        results: &mut [Result<(), Error>],
        now: Duration,
    ) -> usize {
        let mut ok = 0;
        for (pkt, res) in packets.iter_mut().zip(results.iter_mut()) {
            ok += usize::from(store_result(res, self.encrypt(pkt, now)));
        }
        ok
    }

    /// Decrypts a burst of packets. `results[i]` receives the outcome of `packets[i]`;
    /// failed packets stay in their buffers and are counted under their drop reason.
    /// Only the first `min(packets.len(), results.len())` packets are processed.
    /// Returns how many succeeded.
    pub fn decrypt_burst(
        &mut self,
        packets: &mut [PacketBuf<'_>],
        results: &mut [Result<(), Error>],
        now: Duration,
    ) -> usize {
        let mut ok = 0;
        for (pkt, res) in packets.iter_mut().zip(results.iter_mut()) {
            ok += usize::from(store_result(res, self.decrypt(pkt, now)));
        }
        ok
    }

    /// Convenience for code that holds packets in [`BytesMut`]: replaces the IP packet
    /// in `packet` with its protected form, reusing the allocation when it is large
    /// enough. (This moves the packet twice; the zero-copy path is [`Self::encrypt`].)
    pub fn encrypt_bytes(&mut self, packet: &mut BytesMut, now: Duration) -> Result<(), Error> {
        let head = self.max_headroom();
        let tail = self.tailroom_for(packet.len());
        self.transform_bytes(packet, head, tail, |sa, p| sa.encrypt(p, now))
    }

    /// Convenience for code that holds packets in [`BytesMut`]: replaces the protected
    /// packet in `packet` with the inner (tunnel) or restored (transport) packet.
    pub fn decrypt_bytes(&mut self, packet: &mut BytesMut, now: Duration) -> Result<(), Error> {
        self.transform_bytes(packet, 0, 0, |sa, p| sa.decrypt(p, now))
    }

    fn transform_bytes(
        &mut self,
        packet: &mut BytesMut,
        head: usize,
        tail: usize,
        f: impl FnOnce(&mut Self, &mut PacketBuf<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let len = packet.len();
        packet.resize(head + len + tail, 0);
        packet.copy_within(0..len, head);
        let mut buf = PacketBuf::new(&mut packet[..], head, len)?;
        let res = f(self, &mut buf);
        let (offset, out_len) = match res {
            Ok(()) => (buf.offset(), buf.len()),
            Err(_) => (head, len),
        };
        packet.copy_within(offset..offset + out_len, 0);
        packet.truncate(out_len);
        res
    }

    fn encrypt_admitted(
        &mut self,
        pkt: &mut PacketBuf<'_>,
        dummy: Option<u8>,
    ) -> Result<(), Error> {
        let next = match self.next_seq() {
            Ok(s) => s,
            Err(e) => return Err(self.drop(e)),
        };
        let res = match (self.mode, dummy) {
            (Mode::Tunnel, _) => self.encap_tunnel(pkt, next, dummy),
            (Mode::Transport, _) => self.encap_transport(pkt, next),
        };
        match res {
            Ok(inner_len) => {
                self.seq = next;
                self.account(inner_len);
                Ok(())
            }
            Err(e) => Err(self.drop(e)),
        }
    }

    /// The next outbound sequence number; never wraps (RFC 4303 §3.3.3).
    #[inline]
    fn next_seq(&self) -> Result<u64, Error> {
        let limit = if self.esn {
            u64::MAX
        } else {
            u64::from(u32::MAX)
        };
        if self.seq >= limit {
            Err(Error::SequenceOverflow)
        } else {
            Ok(self.seq + 1)
        }
    }

    /// Padding length for `payload` bytes followed by the 2-byte trailer.
    #[inline]
    fn pad_len(&self, payload: usize) -> usize {
        crate::crypto::pad_len(payload, self.transform.pad_align)
    }

    /// Writes padding, pad length and next header at `at`; returns the end offset.
    #[inline]
    fn write_trailer(buf: &mut [u8], at: usize, pad: usize, next_header: u8) -> usize {
        buf[at..at + pad].copy_from_slice(&PAD_BYTES[..pad]);
        buf[at + pad] = pad as u8;
        buf[at + pad + 1] = next_header;
        at + pad + 2
    }

    fn encap_tunnel(
        &mut self,
        pkt: &mut PacketBuf<'_>,
        seq: u64,
        dummy: Option<u8>,
    ) -> Result<usize, Error> {
        let (inner_len, inner_tos, next_header) = match dummy {
            Some(nh) => (pkt.len(), 0, nh),
            None => {
                let info = packet::parse_ip(pkt.data())
                    .map_err(|_| Error::Malformed(Malformed::BadInnerPacket))?;
                let nh = match info.version {
                    IpVersion::V4 => IPPROTO_IPIP,
                    IpVersion::V6 => IPPROTO_IPV6,
                };
                (info.total_len, info.tos, nh)
            }
        };
        let Some(outer) = &self.outer else {
            return Err(Error::WrongDirection);
        };
        let (outer_len, udp_len) = (outer.ip_len, outer.udp_len);
        let iv_len = self.transform.iv_len;
        let icv_len = self.transform.icv_len;
        let head = outer_len + udp_len + ESP_HEADER_LEN + iv_len;
        let payload = match self.tfc {
            TfcPadding::PadTo(n) if dummy.is_none() => inner_len.max(usize::from(n)),
            _ => inner_len,
        };
        let pad = self.pad_len(payload);
        let tail = (payload - inner_len) + pad + 2 + icv_len;
        let offset = pkt.offset();
        check_room(pkt, head, inner_len, tail)?;
        let total = head + payload + pad + 2 + icv_len;
        if total - outer.length_field_excludes() > usize::from(u16::MAX) {
            return Err(Error::Malformed(Malformed::TooBig));
        }
        let start = offset - head;
        let esp = start + outer_len + udp_len;
        let body = esp + ESP_HEADER_LEN + iv_len;
        let spi = self.spi;
        let buf = pkt.buffer_mut();
        // TFC padding: zeros after the inner packet (RFC 4303 §2.7).
        if payload > inner_len {
            buf[body + inner_len..body + payload].fill(0);
        }
        let icv = Self::write_trailer(buf, body + payload, pad, next_header);
        outer.write(&mut buf[start..esp], packet::encap_tos(inner_tos), total);
        buf[esp..esp + 4].copy_from_slice(&spi.to_be_bytes());
        buf[esp + 4..esp + 8].copy_from_slice(&(seq as u32).to_be_bytes());
        self.transform
            .seal(buf, EspLayout { esp, icv }, seq, self.esn);
        pkt.set_window(start, total);
        Ok(inner_len)
    }

    fn encap_transport(&mut self, pkt: &mut PacketBuf<'_>, seq: u64) -> Result<usize, Error> {
        let info = packet::parse_ip(pkt.data())
            .map_err(|_| Error::Malformed(Malformed::BadInnerPacket))?;
        if info.is_fragment {
            return Err(Error::Malformed(Malformed::Fragment));
        }
        let total_len = info.total_len;
        // `hdr`: bytes that stay in front of ESP; `nh_at`: the protocol byte to rewrite.
        let (hdr, nh_at, protocol) = match info.version {
            IpVersion::V4 => (info.header_len, 9, info.protocol),
            IpVersion::V6 => {
                let ins =
                    packet::ipv6_esp_insertion(pkt.data(), total_len).map_err(Error::Malformed)?;
                (ins.offset, ins.next_header_at, ins.protocol)
            }
        };
        if protocol == IPPROTO_NONE || protocol == 0 {
            // In the ESP trailer, 59 means "dummy packet" (RFC 4303 §2.6) and 0
            // (Hop-by-Hop) may only follow an IPv6 header directly: the receiver would
            // drop either, so refuse them here instead of losing them silently there.
            return Err(Error::Malformed(Malformed::BadInnerPacket));
        }
        let udp_len = if self.udp_encap.is_some() {
            UDP_HEADER_LEN
        } else {
            0
        };
        let iv_len = self.transform.iv_len;
        let icv_len = self.transform.icv_len;
        let grow = udp_len + ESP_HEADER_LEN + iv_len;
        let payload = total_len - hdr;
        let pad = self.pad_len(payload);
        let tail = pad + 2 + icv_len;
        let offset = pkt.offset();
        check_room(pkt, grow, total_len, tail)?;
        let start = offset - grow;
        let esp = start + hdr + udp_len;
        let body = esp + ESP_HEADER_LEN + iv_len;
        debug_assert_eq!(body, offset + hdr);
        let new_total = total_len + grow + tail;
        if new_total > usize::from(u16::MAX) {
            return Err(Error::Malformed(Malformed::TooBig));
        }
        let spi = self.spi;
        let udp_ports = self.udp_encap;
        let buf = pkt.buffer_mut();
        // Move the IP header (and the extension headers that stay in front) into the
        // headroom; the payload does not move.
        buf.copy_within(offset..offset + hdr, start);
        let icv = Self::write_trailer(buf, body + payload, pad, protocol);
        buf[esp..esp + 4].copy_from_slice(&spi.to_be_bytes());
        buf[esp + 4..esp + 8].copy_from_slice(&(seq as u32).to_be_bytes());
        self.transform
            .seal(buf, EspLayout { esp, icv }, seq, self.esn);
        buf[start + nh_at] = if let Some((sport, dport)) = udp_ports {
            write_udp(
                &mut buf[esp - UDP_HEADER_LEN..esp],
                sport,
                dport,
                new_total - hdr,
            );
            IPPROTO_UDP
        } else {
            IPPROTO_ESP
        };
        packet::set_ip_length(&mut buf[start..], info.version, info.header_len, new_total);
        pkt.set_window(start, new_total);
        Ok(total_len)
    }

    /// Decrypts the ESP (or UDP-encapsulated ESP) packet in `pkt` in place (inbound SAs)
    /// and leaves the inner packet (tunnel) or the restored packet (transport) in `pkt`.
    ///
    /// NAT-T keepalives and IKE packets (non-ESP marker) on the UDP path are refused
    /// with [`Malformed::NatKeepalive`] / [`Malformed::NonEspMarker`] so the caller can
    /// hand them to the key exchange daemon; they are counted as `malformed`.
    pub fn decrypt(&mut self, pkt: &mut PacketBuf<'_>, now: Duration) -> Result<(), Error> {
        self.decrypt_checked(pkt, now, |_| true)
    }

    /// [`Self::decrypt`], then RFC 4301 §5.2: `selectors_ok` is shown the decapsulated
    /// packet and says whether it matches the selectors of the policy this SA serves
    /// (see `Spd::check_inbound`). If not, the packet is dropped with
    /// [`Error::PolicyMismatch`] and counted as `policy_mismatch`; the replay window
    /// still records it, since its ICV verified.
    pub fn decrypt_checked(
        &mut self,
        pkt: &mut PacketBuf<'_>,
        now: Duration,
        selectors_ok: impl FnOnce(&[u8]) -> bool,
    ) -> Result<(), Error> {
        self.decrypt_verified(pkt, now, |inner| {
            if selectors_ok(inner) {
                Ok(())
            } else {
                Err(Error::PolicyMismatch)
            }
        })
    }

    /// [`Self::decrypt_checked`] with a check that says why it refuses the
    /// decapsulated packet: its error is returned and counted on this SA under its
    /// drop reason (e.g. [`Error::PolicyMismatch`], or a fragment the policy cannot
    /// accept, [`Error::Fragment`]). The replay window still records the packet.
    pub fn decrypt_verified(
        &mut self,
        pkt: &mut PacketBuf<'_>,
        now: Duration,
        verify: impl FnOnce(&[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if self.direction != Direction::Inbound {
            return Err(self.drop(Error::WrongDirection));
        }
        self.admit(now)?;
        match self.decap(pkt) {
            Ok(len) => match verify(pkt.data()) {
                Ok(()) => {
                    self.account(len);
                    Ok(())
                }
                Err(e) => Err(self.drop(e)),
            },
            Err(e) => {
                if let Error::TooOld { seq, .. } = e {
                    self.replay.note_too_old(seq);
                }
                Err(self.drop(e))
            }
        }
    }

    fn decap(&mut self, pkt: &mut PacketBuf<'_>) -> Result<usize, Error> {
        let data = pkt.data();
        // The common case (an outer IPv4 header without options carrying ESP directly)
        // is recognised with a few fixed-offset tests; everything else, and every
        // packet those tests do not like, takes the general parse, which also says
        // what is wrong.
        let outer = match OuterEsp::plain_ipv4(data) {
            Some(o) => o,
            None => OuterEsp::parse(data)?,
        };
        let OuterEsp {
            version,
            header_len,
            total_len,
            tos: outer_tos,
            header_end: hdr,
            next_header_at: nh_at,
            esp: esp_rel,
        } = outer;
        let iv_len = self.transform.iv_len;
        let icv_len = self.transform.icv_len;
        let esp_len = total_len - esp_rel;
        if esp_len < ESP_HEADER_LEN {
            return Err(Error::Malformed(Malformed::Truncated));
        }
        let esp_header: &[u8; ESP_HEADER_LEN] = data[esp_rel..esp_rel + ESP_HEADER_LEN]
            .try_into()
            .expect("8 bytes");
        let spi = u32::from_be_bytes([esp_header[0], esp_header[1], esp_header[2], esp_header[3]]);
        if spi != self.spi {
            return Err(Error::UnknownSpi { spi });
        }
        if esp_len < ESP_HEADER_LEN + iv_len + 2 + icv_len {
            return Err(Error::Malformed(Malformed::Truncated));
        }
        let enc_len = esp_len - ESP_HEADER_LEN - iv_len - icv_len;
        // `cipher_block` is a power of two: a mask, not a division (a `div` here cost
        // a dozen cycles per packet).
        if enc_len & (self.transform.cipher_block - 1) != 0 {
            return Err(Error::Malformed(Malformed::BadCiphertextLength));
        }
        let seq_wire =
            u32::from_be_bytes([esp_header[4], esp_header[5], esp_header[6], esp_header[7]]);
        let seq = self.replay.check(seq_wire)?;
        let offset = pkt.offset();
        let esp = offset + esp_rel;
        let body = esp + ESP_HEADER_LEN + iv_len;
        let icv = body + enc_len;
        let esn = self.esn;
        if !self
            .transform
            .open(pkt.buffer_mut(), EspLayout { esp, icv }, seq, esn)
        {
            return Err(Error::AuthenticationFailed);
        }
        // `check` passed and nothing has touched the window since.
        self.replay.record_checked(seq);
        let buf = pkt.buffer_mut();
        let next_header = buf[icv - 1];
        let pad = usize::from(buf[icv - 2]);
        if pad + 2 > enc_len {
            return Err(Error::BadPadding);
        }
        let payload_end = icv - 2 - pad;
        if !padding_ok(buf, payload_end, pad) {
            return Err(Error::BadPadding);
        }
        if next_header == IPPROTO_NONE {
            return Err(Error::DummyPacket);
        }
        match self.mode {
            Mode::Tunnel => {
                let expected = match next_header {
                    IPPROTO_IPIP => IpVersion::V4,
                    IPPROTO_IPV6 => IpVersion::V6,
                    other => return Err(Error::BadNextHeader(other)),
                };
                let inner = packet::parse_ip(&buf[body..payload_end])
                    .map_err(|_| Error::Malformed(Malformed::BadInnerLength))?;
                if inner.version != expected {
                    return Err(Error::BadNextHeader(next_header));
                }
                let new_ecn = packet::decap_ecn(outer_tos, inner.tos)
                    .ok_or(Error::Malformed(Malformed::EcnCeOnNotEct))?;
                let new_tos = (inner.tos & !0b11) | new_ecn;
                if new_tos != inner.tos {
                    packet::set_tos(&mut buf[body..], inner.version, new_tos);
                }
                // Anything after the inner packet's own length is TFC padding.
                pkt.set_window(body, inner.total_len);
                Ok(inner.total_len)
            }
            Mode::Transport => {
                if next_header == 0 {
                    // Hop-by-Hop options may only follow the IPv6 header directly.
                    return Err(Error::BadNextHeader(next_header));
                }
                let shift = body - (offset + hdr);
                buf.copy_within(offset..offset + hdr, offset + shift);
                let start = offset + shift;
                buf[start + nh_at] = next_header;
                let new_total = payload_end - start;
                packet::set_ip_length(&mut buf[start..], version, header_len, new_total);
                pkt.set_window(start, new_total);
                Ok(new_total)
            }
        }
    }
}

/// Stores a burst member's outcome in its slot; true for success.
///
/// Written as a match so that success stores the constant `Ok(())`: a plain
/// `*slot = r` copied the whole `Result` from the callee's return slot with wide loads
/// right after the callee's narrow store of its tag, a store-forwarding stall that cost
/// about 8 ns per packet in the 64-byte decrypt burst.
#[inline(always)]
fn store_result(slot: &mut Result<(), Error>, r: Result<(), Error>) -> bool {
    match r {
        Ok(()) => {
            *slot = Ok(());
            true
        }
        Err(e) => {
            *slot = Err(e);
            false
        }
    }
}

/// What decapsulation needs to know about the outer headers of a received packet.
#[derive(Clone, Copy, Debug)]
struct OuterEsp {
    version: IpVersion,
    /// The IP header (IPv4 options included, IPv6 extension headers not).
    header_len: usize,
    /// The packet's length by its own header.
    total_len: usize,
    /// The outer DSCP/ECN byte.
    tos: u8,
    /// End of the IP header chain (where ESP or UDP starts).
    header_end: usize,
    /// Offset of the next-header byte that names ESP or UDP.
    next_header_at: usize,
    /// Offset of the ESP header.
    esp: usize,
}

impl OuterEsp {
    /// The fast path: an IPv4 header without options, not a fragment, protocol ESP,
    /// lengths consistent and checksum correct. `None` for anything else (which
    /// [`OuterEsp::parse`] then handles or refuses with a reason).
    #[inline]
    fn plain_ipv4(data: &[u8]) -> Option<OuterEsp> {
        let h: &[u8; IPV4_HEADER_LEN] = data.first_chunk()?;
        let total_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let plain = h[0] == 0x45
            && h[9] == IPPROTO_ESP
            && h[6] & 0x3f == 0
            && h[7] == 0
            && (IPV4_HEADER_LEN..=data.len()).contains(&total_len)
            && packet::ipv4_checksum_ok(h);
        plain.then_some(OuterEsp {
            version: IpVersion::V4,
            header_len: IPV4_HEADER_LEN,
            total_len,
            tos: h[1],
            header_end: IPV4_HEADER_LEN,
            next_header_at: 9,
            esp: IPV4_HEADER_LEN,
        })
    }

    /// The general parse: IPv4 with options, IPv6 with extension headers, ESP in UDP.
    #[inline(never)]
    fn parse(data: &[u8]) -> Result<OuterEsp, Error> {
        // Any UDP port: the caller chose this SA, so a UDP packet handed to it is
        // meant as ESP in UDP.
        let pos = packet::locate_esp(data, None).map_err(Error::Malformed)?;
        let info = pos.ip;
        if info.is_fragment {
            return Err(Error::Malformed(Malformed::Fragment));
        }
        if info.version == IpVersion::V4 && !packet::ipv4_checksum_ok(&data[..info.header_len]) {
            return Err(Error::Malformed(Malformed::BadIpChecksum));
        }
        Ok(OuterEsp {
            version: info.version,
            header_len: info.header_len,
            total_len: info.total_len,
            tos: info.tos,
            header_end: pos.header_end,
            next_header_at: pos.next_header_at,
            esp: pos.esp,
        })
    }
}

/// RFC 4303 §2.4: the `pad` bytes at `buf[at..]` must be 1, 2, 3, ... Up to 16 bytes
/// (what the default padding produces) are compared as one masked 128-bit word: the 16
/// bytes that end where the padding ends, whose top `pad` bytes must hold 1..=pad.
#[inline(always)]
fn padding_ok(buf: &[u8], at: usize, pad: usize) -> bool {
    let end = at + pad;
    if pad <= 16 && end >= 16 {
        let window: [u8; 16] = buf[end - 16..end].try_into().expect("16 bytes");
        let w = u128::from_le_bytes(window);
        w & PAD_MASK[pad] == PAD_EXPECTED[pad]
    } else {
        buf[at..end] == PAD_BYTES[..pad]
    }
}

/// `PAD_MASK[pad]`: the top `pad` bytes of a little-endian 16-byte word.
const PAD_MASK: [u128; 17] = {
    let mut t = [0u128; 17];
    let mut pad = 1;
    while pad <= 16 {
        t[pad] = u128::MAX << (8 * (16 - pad));
        pad += 1;
    }
    t
};

/// `PAD_EXPECTED[pad]`: 1, 2, ..., pad in the top `pad` bytes of a little-endian word.
const PAD_EXPECTED: [u128; 17] = {
    let mut t = [0u128; 17];
    let mut pad = 1;
    while pad <= 16 {
        let mut bytes = [0u8; 16];
        let mut i = 0;
        while i < pad {
            bytes[16 - pad + i] = (i + 1) as u8;
            i += 1;
        }
        t[pad] = u128::from_le_bytes(bytes);
        pad += 1;
    }
    t
};

/// The outer IP (and UDP) header of an outbound tunnel-mode SA, built once when the SA
/// is created; per packet only the DSCP/ECN byte, the lengths and the IPv4 checksum
/// change (the checksum from a precomputed partial sum, RFC 1071).
#[derive(Clone, Debug)]
pub(crate) struct OuterHeader {
    bytes: [u8; IPV6_HEADER_LEN + UDP_HEADER_LEN],
    ip_len: usize,
    udp_len: usize,
    /// One's-complement sum of the IPv4 header words with TOS, length and checksum 0.
    v4_sum: u32,
}

impl OuterHeader {
    /// The header for tunnel endpoints `src`/`dst` (same family), outer TTL / hop limit
    /// `ttl`, and optional UDP encapsulation ports.
    pub(crate) fn new(src: IpAddr, dst: IpAddr, ttl: u8, udp: Option<(u16, u16)>) -> Self {
        let ip_len = if src.is_ipv4() {
            IPV4_HEADER_LEN
        } else {
            IPV6_HEADER_LEN
        };
        let mut bytes = [0u8; IPV6_HEADER_LEN + UDP_HEADER_LEN];
        let proto = if udp.is_some() {
            IPPROTO_UDP
        } else {
            IPPROTO_ESP
        };
        write_outer_ip(&mut bytes[..ip_len], src, dst, 0, ttl, proto, ip_len);
        let udp_len = match udp {
            Some((sport, dport)) => {
                write_udp(&mut bytes[ip_len..ip_len + UDP_HEADER_LEN], sport, dport, 0);
                UDP_HEADER_LEN
            }
            None => 0,
        };
        let mut v4_sum = 0;
        if ip_len == IPV4_HEADER_LEN {
            bytes[2..4].fill(0);
            bytes[10..12].fill(0);
            v4_sum = bytes[..IPV4_HEADER_LEN]
                .chunks_exact(2)
                .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
                .sum();
        }
        OuterHeader {
            bytes,
            ip_len,
            udp_len,
            v4_sum,
        }
    }

    /// Bytes of the packet that the IP length field does not count (the IPv6 header).
    #[inline]
    fn length_field_excludes(&self) -> usize {
        if self.ip_len == IPV6_HEADER_LEN {
            IPV6_HEADER_LEN
        } else {
            0
        }
    }

    /// Writes the header into `out` (exactly `ip_len + udp_len` bytes) for a packet of
    /// `total` bytes whose DSCP/ECN byte is `tos`.
    #[inline]
    fn write(&self, out: &mut [u8], tos: u8, total: usize) {
        // Constant-length copies: each arm compiles to a few vector stores.
        match out.len() {
            20 => out.copy_from_slice(&self.bytes[..20]),
            28 => out.copy_from_slice(&self.bytes[..28]),
            40 => out.copy_from_slice(&self.bytes[..40]),
            _ => out.copy_from_slice(&self.bytes[..48]),
        }
        if self.ip_len == IPV4_HEADER_LEN {
            out[1] = tos;
            out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            let mut sum = self.v4_sum + u32::from(tos) + total as u32;
            sum = (sum & 0xffff) + (sum >> 16);
            sum = (sum & 0xffff) + (sum >> 16);
            out[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        } else {
            out[0] |= tos >> 4;
            out[1] |= tos << 4;
            out[4..6].copy_from_slice(&((total - IPV6_HEADER_LEN) as u16).to_be_bytes());
        }
        if self.udp_len != 0 {
            let udp = &mut out[self.ip_len..];
            udp[4..6].copy_from_slice(&((total - self.ip_len) as u16).to_be_bytes());
        }
    }
}

/// Checks that `head` bytes fit in front of the packet and `tail` bytes behind its
/// first `len` bytes (what follows them, such as link padding, may be overwritten).
#[inline]
fn check_room(pkt: &PacketBuf<'_>, head: usize, len: usize, tail: usize) -> Result<(), Error> {
    let offset = pkt.offset();
    if offset < head {
        return Err(Error::NoHeadroom {
            needed: head,
            available: offset,
        });
    }
    let available = pkt.buffer().len() - offset - len;
    if available < tail {
        return Err(Error::NoTailroom {
            needed: tail,
            available,
        });
    }
    Ok(())
}

/// Writes a UDP header for ESP-in-UDP; the checksum is zero (RFC 3948 §2.1).
#[inline]
fn write_udp(h: &mut [u8], sport: u16, dport: u16, len: usize) {
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&(len as u16).to_be_bytes());
    h[6..8].copy_from_slice(&[0, 0]);
}

/// Writes an outer IPv4 (with checksum) or IPv6 header of a packet of `total` bytes.
#[inline]
fn write_outer_ip(
    h: &mut [u8],
    src: IpAddr,
    dst: IpAddr,
    tos: u8,
    ttl: u8,
    proto: u8,
    total: usize,
) {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h[0] = 0x45;
            h[1] = tos;
            h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            // Identification 0 with DF clear: the packet is not fragmented by us.
            h[4..8].copy_from_slice(&[0, 0, 0, 0]);
            h[8] = ttl;
            h[9] = proto;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            packet::set_ipv4_checksum(h);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            h[0] = 0x60 | (tos >> 4);
            h[1] = tos << 4;
            h[2..4].copy_from_slice(&[0, 0]);
            h[4..6].copy_from_slice(&((total - IPV6_HEADER_LEN) as u16).to_be_bytes());
            h[6] = proto;
            h[7] = ttl;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
        }
        _ => unreachable!("SaConfig::validate refuses mixed tunnel address families"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The masked-word padding check agrees with the byte-wise definition for every
    /// pad length and position, on correct padding and on padding with one wrong byte.
    #[test]
    fn padding_check_equals_the_byte_wise_definition() {
        let reference = |buf: &[u8], at: usize, pad: usize| buf[at..at + pad] == PAD_BYTES[..pad];
        for pad in 0..=40usize {
            for at in 0..=24usize {
                let mut buf = vec![0xeeu8; at + pad + 4];
                buf[at..at + pad].copy_from_slice(&PAD_BYTES[..pad]);
                assert!(padding_ok(&buf, at, pad), "pad {pad} at {at}");
                assert_eq!(padding_ok(&buf, at, pad), reference(&buf, at, pad));
                for wrong in 0..pad {
                    let mut bad = buf.clone();
                    bad[at + wrong] ^= 0x80;
                    assert!(!padding_ok(&bad, at, pad), "pad {pad} at {at} byte {wrong}");
                }
                // Bytes around the padding do not matter.
                if at > 0 {
                    buf[at - 1] = 0x01;
                }
                buf[at + pad] = 0x99;
                assert!(padding_ok(&buf, at, pad));
            }
        }
    }
}
