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

use crate::buffer::{PacketBuf, SpareBuffers};
use crate::crypto::{BURST_CHUNK, EspLayout, IcvAhead, PendingSeal};
use crate::error::{Error, LifetimeLimit, Malformed};
use crate::fragment::{Ipv4Split, Ipv6Split, has_fragment_header, spares_hold};
use crate::packet::{
    self, IPPROTO_ESP, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_NONE, IPPROTO_UDP, IPV4_HEADER_LEN,
    IPV6_HEADER_LEN, IpVersion, UDP_HEADER_LEN,
};
use crate::path_mtu::IPV6_MIN_MTU;
use crate::sa::{DfPolicy, Direction, Mode, SecurityAssociation, Side, TfcPadding, nanos};
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
    ///
    /// A packet that does not fit the SA's path MTU ([`crate::path_mtu`]) is refused
    /// with [`Error::TooBig`] when it may not be fragmented, and with
    /// [`Error::NoSpareBuffers`] when it may: [`Self::encrypt_fragmenting`] takes the
    /// buffers fragmenting needs.
    pub fn encrypt(&mut self, pkt: &mut PacketBuf<'_>, now: Duration) -> Result<(), Error> {
        if self.direction != Direction::Outbound {
            return Err(self.drop(Error::WrongDirection));
        }
        self.admit(now)?;
        self.encrypt_admitted(pkt, None, &mut SpareBuffers::none(), now, None)?;
        self.note_protected(now);
        Ok(())
    }

    /// [`Self::encrypt`] for a packet that may need more than one packet on the wire:
    /// when it does not fit the path MTU and may be fragmented ([`crate::path_mtu`]:
    /// tunnel-mode IPv4 with DF clear is pre-fragmented, each fragment its own ESP
    /// packet, RFC 4459; transport mode and small IPv6 packets are sent as fragments of
    /// the ESP packet), the first packet stays in `pkt` and the others are written into
    /// the next spares of `spares` (each needs the SA's [`Self::max_headroom`] in front
    /// and room for a path-MTU sized packet behind: [`Self::spares_needed`] says how
    /// many). Returns how many spares were filled (0 when the packet fit). On failure
    /// the packet and the spares are unchanged, and no spare is counted as used.
    pub fn encrypt_fragmenting(
        &mut self,
        pkt: &mut PacketBuf<'_>,
        spares: &mut SpareBuffers<'_, '_>,
        now: Duration,
    ) -> Result<usize, Error> {
        if self.direction != Direction::Outbound {
            return Err(self.drop(Error::WrongDirection));
        }
        self.admit(now)?;
        let extra = self.encrypt_admitted(pkt, None, spares, now, None)?;
        self.note_protected(now);
        Ok(extra)
    }

    /// How many spare buffers [`Self::encrypt_fragmenting`] needs for the IP packet
    /// `packet` at `now`: 0 when it fits the path MTU (or will be refused).
    pub fn spares_needed(&self, packet: &[u8], now: Duration) -> usize {
        let Ok(info) = packet::parse_ip(packet) else {
            return 0;
        };
        let cap = self.pmtu.cap(now);
        match self.oversize_plan(packet, &info, cap) {
            Ok(Oversize::Pre(plan)) => plan.count() - 1,
            Ok(Oversize::Post(n)) => n - 1,
            _ => 0,
        }
    }

    /// Sends an RFC 4303 §2.6 dummy packet: the `pkt.len()` bytes in `pkt` (any content)
    /// are carried with next header 59, which the receiver drops and counts as `dummy`.
    pub fn encrypt_dummy(&mut self, pkt: &mut PacketBuf<'_>, now: Duration) -> Result<(), Error> {
        if self.direction != Direction::Outbound || self.mode != Mode::Tunnel {
            return Err(self.drop(Error::WrongDirection));
        }
        self.admit(now)?;
        self.encrypt_admitted(
            pkt,
            Some(IPPROTO_NONE),
            &mut SpareBuffers::none(),
            now,
            None,
        )?;
        self.note_sent(now);
        Ok(())
    }

    /// Encrypts a burst of packets under one key schedule. `results[i]` receives the
    /// outcome of `packets[i]`; a failed packet is left in its buffer, never freed, and
    /// counted under its drop reason. Only the first `min(packets.len(),
    /// results.len())` packets are processed. Returns how many succeeded.
    ///
    /// AES-CBC packets are encrypted 8 at a time with their CBC chains side by
    /// side (one packet's chain is serial; the packets' chains are independent), and
    /// their ICVs computed after; the packets come out exactly as [`Self::encrypt`]
    /// would make them one by one, IVs drawn in the same order. With the `ipsec-mb`
    /// feature they go to intel-ipsec-mb instead, 32 at a time, through its hash
    /// bursts and its cipher bursts, or, for short packets where the process measured
    /// it faster, 32 CBC chains side by side in the `aes` crate (same bytes; see
    /// `crypto::burst_backend`); AES-GCM packets are all
    /// encapsulated first, then sealed one after the other (same bytes as one packet
    /// at a time; back to back, the library's calls overlap in the processor).
    pub fn encrypt_burst(
        &mut self,
        packets: &mut [PacketBuf<'_>],
        results: &mut [Result<(), Error>],
        now: Duration,
    ) -> usize {
        let n = packets.len().min(results.len());
        let (packets, results) = (&mut packets[..n], &mut results[..n]);
        if !self.transform.seals_in_lanes() || self.direction != Direction::Outbound {
            let mut ok = 0;
            for (pkt, res) in packets.iter_mut().zip(results.iter_mut()) {
                ok += usize::from(store_result(res, self.encrypt(pkt, now)));
            }
            return ok;
        }
        let mut ok = 0;
        for (pkts, ress) in packets
            .chunks_mut(BURST_CHUNK)
            .zip(results.chunks_mut(BURST_CHUNK))
        {
            let mut pending: [Option<PendingSeal>; BURST_CHUNK] = [None; BURST_CHUNK];
            for ((pkt, res), slot) in pkts.iter_mut().zip(ress.iter_mut()).zip(&mut pending) {
                let r = self.admit(now).and_then(|()| {
                    self.encrypt_admitted(pkt, None, &mut SpareBuffers::none(), now, Some(slot))?;
                    self.note_protected(now);
                    Ok(())
                });
                ok += usize::from(store_result(res, r));
            }
            let mut lanes: [Option<crate::crypto::Lane<'_>>; BURST_CHUNK] =
                [const { None }; BURST_CHUNK];
            let mut count = 0;
            for (pkt, p) in pkts.iter_mut().zip(pending) {
                if let Some(p) = p {
                    lanes[count] = Some((pkt.buffer_mut(), p));
                    count += 1;
                }
            }
            self.transform.seal_lanes(&mut lanes[..count]);
        }
        ok
    }

    /// [`Self::encrypt_burst`] with spare buffers for packets that must be fragmented
    /// ([`Self::encrypt_fragmenting`]): `results[i]` receives how many spares packet `i`
    /// filled; packet `i`'s extra packets follow those of the packets before it in
    /// `spares`. Returns how many packets succeeded.
    pub fn encrypt_burst_fragmenting(
        &mut self,
        packets: &mut [PacketBuf<'_>],
        results: &mut [Result<usize, Error>],
        spares: &mut SpareBuffers<'_, '_>,
        now: Duration,
    ) -> usize {
        let mut ok = 0;
        for (pkt, res) in packets.iter_mut().zip(results.iter_mut()) {
            let r = self.encrypt_fragmenting(pkt, spares, now);
            ok += usize::from(r.is_ok());
            *res = r;
        }
        ok
    }

    /// Whether this SA's burst calls ([`Self::encrypt_burst`] outbound,
    /// [`Self::decrypt_burst`] inbound) work across the packets of a burst: AES-CBC +
    /// HMAC (CBC chains and HMACs side by side, or intel-ipsec-mb's multi-buffer
    /// bursts; inbound without ESN, the ICVs computed together) and with `ipsec-mb`
    /// AES-GCM seals back to back. Otherwise a burst call is one packet at a time, and
    /// a caller holding packets in another form need not gather them for it.
    pub fn bursts_interleave(&self) -> bool {
        match self.direction {
            Direction::Outbound => self.transform.seals_in_lanes(),
            _ => self.transform.icvs_ahead_pay() && !self.esn,
        }
    }

    /// Decrypts a burst of packets. `results[i]` receives the outcome of `packets[i]`;
    /// failed packets stay in their buffers and are counted under their drop reason.
    /// Only the first `min(packets.len(), results.len())` packets are processed.
    /// Returns how many succeeded.
    ///
    /// For AES-CBC + HMAC-SHA-256-128 without ESN, the ICVs of 8 packets at a
    /// time are computed first, their hashes side by side; each packet is then checked
    /// (ICV compared in constant time before anything is decrypted, as
    /// [`Self::decrypt`] does) and decrypted in turn. With the `ipsec-mb` feature,
    /// the ICVs of AES-CBC with any HMAC (without ESN) are computed as intel-ipsec-mb
    /// hash bursts, 32 at a time, and the rest is the same: nothing is decrypted
    /// before its sequence number and ICV passed, and results and counters are those
    /// of one packet at a time.
    pub fn decrypt_burst(
        &mut self,
        packets: &mut [PacketBuf<'_>],
        results: &mut [Result<(), Error>],
        now: Duration,
    ) -> usize {
        self.decrypt_burst_verified(packets, results, now, |_| Ok(()))
    }

    /// [`Self::decrypt_burst`] with the check of [`Self::decrypt_verified`]: `verify`
    /// is shown each decapsulated packet, in order, and refuses it with the error to
    /// count (the replay window still records it).
    pub(crate) fn decrypt_burst_verified(
        &mut self,
        packets: &mut [PacketBuf<'_>],
        results: &mut [Result<(), Error>],
        now: Duration,
        mut verify: impl FnMut(&[u8]) -> Result<(), Error>,
    ) -> usize {
        let n = packets.len().min(results.len());
        let (packets, results) = (&mut packets[..n], &mut results[..n]);
        let mut ok = 0;
        if !self.transform.icvs_ahead_pay() || self.esn || self.direction != Direction::Inbound {
            for (pkt, res) in packets.iter_mut().zip(results.iter_mut()) {
                let r = self.decrypt_verified(pkt, now, &mut verify);
                ok += usize::from(store_result(res, r));
            }
            return ok;
        }
        for (pkts, ress) in packets
            .chunks_mut(BURST_CHUNK)
            .zip(results.chunks_mut(BURST_CHUNK))
        {
            let mut ahead = [IcvAhead::default(); BURST_CHUNK];
            let mut bufs: [&[u8]; BURST_CHUNK] = [&[]; BURST_CHUNK];
            // `slot[i]`: the index in `ahead` of packet i's ICV, if it has one.
            let mut slot = [usize::MAX; BURST_CHUNK];
            let mut count = 0;
            for (pkt, slot) in pkts.iter().zip(slot.iter_mut()) {
                if let Some(at) = self.esp_layout(pkt) {
                    ahead[count] = IcvAhead {
                        esp: at.esp,
                        icv: at.icv,
                        tag: [0; crate::crypto::AHEAD_TAG],
                    };
                    bufs[count] = pkt.buffer();
                    *slot = count;
                    count += 1;
                }
            }
            self.transform
                .icvs_ahead(&bufs[..count], &mut ahead[..count]);
            for ((pkt, res), &k) in pkts.iter_mut().zip(ress.iter_mut()).zip(slot.iter()) {
                // `open` uses the hint only for the layout `decap` finds, which is the
                // one `esp_layout` found: nothing touched this buffer since.
                let hint = (k < count).then(|| &ahead[k]);
                let r = self.decrypt_hinted(pkt, now, hint, &mut verify);
                ok += usize::from(store_result(res, r));
            }
        }
        ok
    }

    /// Where the ESP header and ICV of the received packet in `pkt` lie, as
    /// [`Self::decap`] will find them, or `None` if it will refuse the packet before
    /// looking at the ICV (not ESP, another SPI, lengths that do not add up).
    fn esp_layout(&self, pkt: &PacketBuf<'_>) -> Option<EspLayout> {
        let data = pkt.data();
        let outer = OuterEsp::of(data).ok()?;
        let iv_len = self.transform.iv_len();
        let icv_len = self.transform.icv_len();
        let esp_len = outer.total_len - outer.esp;
        if esp_len < ESP_HEADER_LEN + iv_len + 2 + icv_len {
            return None;
        }
        let spi = u32::from_be_bytes(data[outer.esp..outer.esp + 4].try_into().ok()?);
        let enc_len = esp_len - ESP_HEADER_LEN - iv_len - icv_len;
        if spi != self.spi || enc_len & (self.transform.cipher_block() - 1) != 0 {
            return None;
        }
        let esp = pkt.offset() + outer.esp;
        Some(EspLayout {
            esp,
            icv: esp + ESP_HEADER_LEN + iv_len + enc_len,
        })
    }

    /// Convenience for code that holds packets in [`BytesMut`]: replaces the IP packet
    /// in `packet` with its protected form, reusing the allocation when it is large
    /// enough. (This moves the packet twice; the zero-copy path is [`Self::encrypt`].)
    pub fn encrypt_bytes(&mut self, packet: &mut BytesMut, now: Duration) -> Result<(), Error> {
        let head = self.max_headroom();
        let tail = self.tailroom_for(packet.len());
        self.transform_bytes(packet, head, tail, |sa, p| sa.encrypt(p, now))
    }

    /// The usable inner MTU when [`Self::encrypt`] would refuse the IP packet `packet`
    /// at `now` as [`Error::TooBig`] (what the ICMP error to its sender reports,
    /// [`crate::icmp::too_big_reply`]); `None` when it would not.
    pub fn too_big_mtu(&self, packet: &[u8], now: Duration) -> Option<u16> {
        let info = packet::parse_ip(packet).ok()?;
        match self.oversize_plan(packet, &info, self.pmtu.cap(now)) {
            Err(Error::TooBig { inner_mtu }) => Some(inner_mtu),
            _ => None,
        }
    }

    /// [`Self::encrypt_bytes`] for packets that may have to be fragmented
    /// ([`Self::encrypt_fragmenting`]): the first packet replaces `packet`, the others
    /// are returned in order (an empty vector when the packet fit).
    pub fn encrypt_bytes_fragmenting(
        &mut self,
        packet: &mut BytesMut,
        now: Duration,
    ) -> Result<Vec<BytesMut>, Error> {
        let n = self.spares_needed(packet, now);
        if n == 0 {
            return self.encrypt_bytes(packet, now).map(|()| Vec::new());
        }
        let head = self.max_headroom();
        let room = self.pmtu.cap(now).min(packet.len());
        let size = head + room + self.tailroom_for(room);
        let mut stores: Vec<BytesMut> = (0..n).map(|_| BytesMut::zeroed(size)).collect();
        let mut used = 0;
        let (len, mut spans) = (packet.len(), Vec::with_capacity(n));
        let tail = self.tailroom_for(len);
        let res = {
            let mut spares = stores
                .iter_mut()
                .map(|s| PacketBuf::new(&mut s[..], head, 0))
                .collect::<Result<Vec<_>, _>>()?;
            let mut pool = SpareBuffers::new(&mut spares);
            let r = self.transform_bytes(packet, head, tail, |sa, p| {
                sa.encrypt_fragmenting(p, &mut pool, now).map(|k| used = k)
            });
            spans.extend(pool.filled().iter().map(|p| (p.offset(), p.len())));
            r
        };
        res?;
        debug_assert_eq!(used, spans.len());
        Ok(stores
            .into_iter()
            .zip(spans)
            .map(|(mut b, (off, len))| {
                b.truncate(off + len);
                b.split_off(off)
            })
            .collect())
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

    /// Encrypts an admitted packet; returns how many spares it filled. With `pending`
    /// (the burst path), a CBC packet on the fast path may be left with its IV written
    /// and its encryption and ICV pending in the slot ([`Transform::seal_begin`]).
    ///
    /// [`Transform::seal_begin`]: crate::crypto::Transform
    #[inline(always)]
    fn encrypt_admitted(
        &mut self,
        pkt: &mut PacketBuf<'_>,
        dummy: Option<u8>,
        spares: &mut SpareBuffers<'_, '_>,
        now: Duration,
        pending: Option<&mut Option<PendingSeal>>,
    ) -> Result<usize, Error> {
        let next = match self.next_seq() {
            Ok(s) => s,
            Err(e) => return Err(self.drop(e)),
        };
        let res = match self.mode {
            Mode::Tunnel => self.encap_tunnel(pkt, next, dummy, true, pending),
            Mode::Transport => self.encap_transport(pkt, next, true, pending),
        };
        match res {
            Ok(inner_len) => {
                self.out_mut().seq = next;
                self.account(inner_len);
                Ok(0)
            }
            Err(Some(e)) => Err(self.drop(e)),
            Err(None) => self.encrypt_oversize(pkt, dummy, spares, now),
        }
    }

    /// The slow path of a packet beyond the cached path MTU or the hard byte lifetime:
    /// refreshes the path MTU (a learned value may have aged out), then encrypts the
    /// packet whole, fragments it, or refuses it ([`crate::path_mtu`]).
    #[cold]
    #[inline(never)]
    fn encrypt_oversize(
        &mut self,
        pkt: &mut PacketBuf<'_>,
        dummy: Option<u8>,
        spares: &mut SpareBuffers<'_, '_>,
        now: Duration,
    ) -> Result<usize, Error> {
        self.out_mut().mtu_cap = self.pmtu.cap(now);
        let plan = match dummy {
            // A dummy packet's size is the caller's choice: never fragmented.
            Some(_) => {
                let total = self.protected_len(pkt.len(), 0);
                if total > self.out().mtu_cap {
                    let mtu = self.inner_mtu_within(self.out().mtu_cap, 0);
                    return Err(self.drop(Error::TooBig { inner_mtu: mtu }));
                }
                Oversize::Fits(pkt.len())
            }
            None => {
                let info = match packet::parse_ip(pkt.data()) {
                    Ok(i) => i,
                    Err(_) => return Err(self.drop(Error::Malformed(Malformed::BadInnerPacket))),
                };
                match self.oversize_plan(pkt.data(), &info, self.out().mtu_cap) {
                    Ok(plan) => plan,
                    Err(e) => return Err(self.drop(e)),
                }
            }
        };
        match plan {
            Oversize::Fits(len) => {
                self.check_lifetime_room(1, len as u64)?;
                let next = self.next_seq().map_err(|e| self.drop(e))?;
                let res = match self.mode {
                    Mode::Tunnel => self.encap_tunnel(pkt, next, dummy, false, None),
                    Mode::Transport => self.encap_transport(pkt, next, false, None),
                };
                let len = res.map_err(|e| self.drop(e.unwrap_or(Error::SequenceOverflow)))?;
                self.out_mut().seq = next;
                self.account(len);
                Ok(0)
            }
            Oversize::Pre(plan) => self.pre_fragment(pkt, &plan, spares),
            Oversize::Post(n) => self.post_fragment(pkt, n, spares),
        }
    }

    /// What to do with the IP packet `data` (parsed as `info`) against an outer MTU of
    /// `cap` bytes.
    fn oversize_plan(
        &self,
        data: &[u8],
        info: &packet::IpInfo,
        cap: usize,
    ) -> Result<Oversize, Error> {
        let len = info.total_len;
        let hdr = self.front_len(data, info)?;
        let total = self.protected_len(len, hdr);
        if total <= cap {
            return Ok(Oversize::Fits(len));
        }
        let df = info.dont_fragment;
        let inner_mtu = self.inner_mtu_within(cap, hdr);
        match (self.mode, info.version) {
            (Mode::Tunnel, IpVersion::V4) if !df => Ok(Oversize::Pre(Ipv4Split::plan(
                data,
                usize::from(inner_mtu),
            )?)),
            (Mode::Tunnel, IpVersion::V6) if len <= usize::from(IPV6_MIN_MTU) => {
                Ok(Oversize::Post(self.post_count(total, hdr, cap)?))
            }
            (Mode::Tunnel, IpVersion::V6) => Err(Error::TooBig {
                inner_mtu: inner_mtu.max(IPV6_MIN_MTU),
            }),
            // A fragment is not cut again (and transport mode protects whole datagrams).
            (Mode::Transport, IpVersion::V6) if has_fragment_header(data, hdr) => {
                Err(Error::Malformed(Malformed::Fragment))
            }
            (Mode::Transport, IpVersion::V6) => {
                Ok(Oversize::Post(self.post_count(total, hdr, cap)?))
            }
            (Mode::Transport, IpVersion::V4) if !df => {
                Ok(Oversize::Post(self.post_count(total, hdr, cap)?))
            }
            _ => Err(Error::TooBig { inner_mtu }),
        }
    }

    /// Bytes of the inner packet that stay in front of ESP (transport mode: the IP
    /// header, and the IPv6 extension headers routers read); 0 in tunnel mode.
    fn front_len(&self, data: &[u8], info: &packet::IpInfo) -> Result<usize, Error> {
        match (self.mode, info.version) {
            (Mode::Tunnel, _) => Ok(0),
            (Mode::Transport, IpVersion::V4) => Ok(info.header_len),
            (Mode::Transport, IpVersion::V6) => {
                Ok(packet::ipv6_esp_insertion(data, info.total_len)
                    .map_err(Error::Malformed)?
                    .offset)
            }
        }
    }

    /// The length of the ESP packet made of an inner packet of `len` bytes (`hdr` of
    /// them staying in front of ESP in transport mode).
    pub(crate) fn protected_len(&self, len: usize, hdr: usize) -> usize {
        let t = &self.transform;
        let udp = if self.udp_encap.is_some() {
            UDP_HEADER_LEN
        } else {
            0
        };
        match self.mode {
            Mode::Tunnel => {
                let outer = self.outer().map_or(0, |o| o.ip_len());
                let payload = match self.tfc() {
                    TfcPadding::PadTo(n) => len.max(usize::from(n)),
                    _ => len,
                };
                outer
                    + udp
                    + ESP_HEADER_LEN
                    + t.iv_len()
                    + payload
                    + self.pad_len(payload)
                    + 2
                    + t.icv_len()
            }
            Mode::Transport => {
                let payload = len - hdr;
                len + udp + ESP_HEADER_LEN + t.iv_len() + self.pad_len(payload) + 2 + t.icv_len()
            }
        }
    }

    /// How many fragments an ESP packet of `total` bytes becomes at an MTU of `cap`.
    fn post_count(&self, total: usize, hdr: usize, cap: usize) -> Result<usize, Error> {
        let v6 = match self.mode {
            Mode::Tunnel => self.outer().is_some_and(|o| o.ip_len() == IPV6_HEADER_LEN),
            Mode::Transport => hdr >= IPV6_HEADER_LEN,
        };
        let front = match self.mode {
            Mode::Tunnel => self.outer().map_or(0, |o| o.ip_len()),
            Mode::Transport => hdr,
        };
        let per = if v6 {
            cap.saturating_sub(front + 8) & !7
        } else {
            cap.saturating_sub(front) & !7
        };
        if per == 0 {
            return Err(Error::Malformed(Malformed::TooBig));
        }
        Ok((total - front).div_ceil(per).max(1))
    }

    /// Refuses `packets` more packets of `bytes` inner bytes when they would cross a
    /// hard lifetime; the SA then expires (raising [`crate::SaEvent::Expired`]).
    fn check_lifetime_room(&mut self, packets: u64, bytes: u64) -> Result<(), Error> {
        let limit = if self.stats.bytes.saturating_add(bytes) > self.hard.bytes {
            Some(LifetimeLimit::Bytes)
        } else if self.stats.packets.saturating_add(packets) > self.hard.packets {
            Some(LifetimeLimit::Packets)
        } else {
            None
        };
        match limit {
            Some(l) => {
                self.expire(l);
                Err(self.drop(Error::LifetimeExpired(l)))
            }
            None => Ok(()),
        }
    }

    /// RFC 4459 pre-fragmentation: the inner IPv4 packet is cut to the inner MTU and
    /// each fragment becomes its own ESP packet.
    fn pre_fragment(
        &mut self,
        pkt: &mut PacketBuf<'_>,
        plan: &Ipv4Split,
        spares: &mut SpareBuffers<'_, '_>,
    ) -> Result<usize, Error> {
        let n = plan.count();
        let bytes: usize = (0..n).map(|i| plan.fragment_len(i)).sum();
        self.check_lifetime_room(n as u64, bytes as u64)?;
        let limit = if self.esn {
            u64::MAX
        } else {
            u64::from(u32::MAX)
        };
        if limit - self.out().seq < n as u64 {
            return Err(self.drop(Error::SequenceOverflow));
        }
        let head = self.max_headroom();
        check_room(
            pkt,
            head,
            plan.fragment_len(0),
            self.tailroom_for(plan.fragment_len(0)),
        )
        .map_err(|e| self.drop(e))?;
        let reserved = match spares.reserve(n - 1) {
            Ok(r) => r,
            Err(e) => return Err(self.drop(e)),
        };
        if let Err(e) = spares_hold(
            reserved,
            (1..n).map(|i| plan.fragment_len(i)),
            head,
            |len| self.tailroom_for(len),
        ) {
            return Err(self.drop(e));
        }
        plan.split(pkt, reserved);
        self.encap_fragment(pkt)?;
        for p in reserved.iter_mut() {
            self.encap_fragment(p)?;
        }
        spares.commit(n - 1);
        Ok(n - 1)
    }

    /// Encrypts one pre-made fragment whose room was checked.
    fn encap_fragment(&mut self, p: &mut PacketBuf<'_>) -> Result<(), Error> {
        let next = self.out().seq + 1;
        match self.encap_tunnel(p, next, None, false, None) {
            Ok(len) => {
                self.out_mut().seq = next;
                self.account(len);
                Ok(())
            }
            // Every size and room was checked before the split: a failure here is a
            // bug; the fragments already encrypted are valid packets all the same.
            Err(e) => Err(self.drop(e.unwrap_or(Error::Malformed(Malformed::TooBig)))),
        }
    }

    /// Fragmentation of the ESP packet itself (transport mode, where the SA is the
    /// source host, and IPv6 inner packets of at most 1,280 bytes in tunnel mode).
    fn post_fragment(
        &mut self,
        pkt: &mut PacketBuf<'_>,
        n: usize,
        spares: &mut SpareBuffers<'_, '_>,
    ) -> Result<usize, Error> {
        let cap = self.out().mtu_cap;
        let len = packet::parse_ip(pkt.data()).map_or(pkt.len(), |i| i.total_len);
        self.check_lifetime_room(1, len as u64)?;
        let next = self.next_seq().map_err(|e| self.drop(e))?;
        let reserved = match spares.reserve(n - 1) {
            Ok(r) => r,
            Err(e) => return Err(self.drop(e)),
        };
        // Each spare takes at most one MTU-sized fragment; the first fragment of an
        // IPv6 packet needs 8 more bytes of headroom for its Fragment header.
        if let Err(e) = spares_hold(reserved, (1..n).map(|_| cap), 0, |_| 0) {
            return Err(self.drop(e));
        }
        let v6 = match self.mode {
            Mode::Tunnel => self.outer().is_some_and(|o| o.ip_len() == IPV6_HEADER_LEN),
            Mode::Transport => {
                packet::parse_ip(pkt.data()).is_ok_and(|i| i.version == IpVersion::V6)
            }
        };
        let head = self.max_headroom() + if v6 { 8 } else { 0 };
        if pkt.offset() < head {
            return Err(self.drop(Error::NoHeadroom {
                needed: head,
                available: pkt.offset(),
            }));
        }
        let len = match self.mode {
            Mode::Tunnel => self.encap_tunnel(pkt, next, None, false, None),
            Mode::Transport => self.encap_transport(pkt, next, false, None),
        }
        .map_err(|e| self.drop(e.unwrap_or(Error::Malformed(Malformed::TooBig))))?;
        self.out_mut().seq = next;
        self.account(len);
        let used = match packet::parse_ip(pkt.data()).map(|i| i.version) {
            Ok(IpVersion::V4) => Ipv4Split::plan(pkt.data(), cap).map(|plan| {
                let k = plan.count();
                plan.split(pkt, &mut reserved[..k - 1]);
                k - 1
            }),
            _ => Ipv6Split::plan(pkt.data(), cap).map(|plan| {
                let k = plan.count();
                let id = self.out().fragment_id;
                self.out_mut().fragment_id = id.wrapping_add(1);
                plan.split(pkt, &mut reserved[..k - 1], id);
                k - 1
            }),
        };
        match used {
            Ok(k) => {
                // Later IPv4 fragments may carry fewer options than the first, so the
                // count planned ahead is an upper bound.
                debug_assert!(k < n);
                spares.commit(k);
                Ok(k)
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
        if self.out().seq >= limit {
            Err(Error::SequenceOverflow)
        } else {
            Ok(self.out().seq + 1)
        }
    }

    /// Padding length for `payload` bytes followed by the 2-byte trailer.
    #[inline]
    fn pad_len(&self, payload: usize) -> usize {
        crate::crypto::pad_len(payload, self.transform.pad_align())
    }

    /// Writes padding, pad length and next header at `at`; returns the end offset.
    #[inline(always)]
    fn write_trailer(buf: &mut [u8], at: usize, pad: usize, next_header: u8) -> usize {
        buf[at..at + pad].copy_from_slice(&PAD_BYTES[..pad]);
        buf[at + pad] = pad as u8;
        buf[at + pad + 1] = next_header;
        at + pad + 2
    }

    /// Tunnel-mode encapsulation. With `limits`, a packet beyond the cached path MTU or
    /// the hard byte lifetime is left unchanged and `Err(None)` sends it to the slow
    /// path; `Err(Some(e))` is a drop. With `pending`, the seal may be left half done
    /// in it ([`Self::encrypt_admitted`]); not when a UDP checksum must be computed over
    /// the sealed packet.
    #[inline(always)]
    fn encap_tunnel(
        &mut self,
        pkt: &mut PacketBuf<'_>,
        seq: u64,
        dummy: Option<u8>,
        limits: bool,
        pending: Option<&mut Option<PendingSeal>>,
    ) -> Result<usize, Option<Error>> {
        // `inner_df`: what DfPolicy::Copy copies; true unless an inner IPv4 header says
        // the packet may be fragmented.
        let (inner_len, inner_tos, inner_df, next_header) = match dummy {
            Some(nh) => (pkt.len(), 0, true, nh),
            None => {
                let info = packet::parse_ip(pkt.data())
                    .map_err(|_| Error::Malformed(Malformed::BadInnerPacket))?;
                let (nh, df) = match info.version {
                    IpVersion::V4 => (IPPROTO_IPIP, info.dont_fragment),
                    IpVersion::V6 => (IPPROTO_IPV6, true),
                };
                (info.total_len, info.tos, df, nh)
            }
        };
        // Fields, not accessors: the transform is borrowed mutably below.
        let Side::Outbound(out) = &self.side else {
            return Err(Some(Error::WrongDirection));
        };
        let Some(outer) = &out.outer else {
            return Err(Some(Error::WrongDirection));
        };
        let (outer_len, udp_len) = (outer.ip_len(), outer.udp_len());
        let iv_len = self.transform.iv_len();
        let icv_len = self.transform.icv_len();
        let head = outer_len + udp_len + ESP_HEADER_LEN + iv_len;
        let payload = match out.tfc {
            TfcPadding::PadTo(n) if dummy.is_none() => inner_len.max(usize::from(n)),
            _ => inner_len,
        };
        let pad = self.pad_len(payload);
        let tail = (payload - inner_len) + pad + 2 + icv_len;
        let total = head + payload + pad + 2 + icv_len;
        if limits
            && (total > out.mtu_cap
                || self.stats.bytes.saturating_add(inner_len as u64) > self.hard.bytes)
        {
            return Err(None);
        }
        let offset = pkt.offset();
        check_room(pkt, head, inner_len, tail)?;
        if total - outer.length_field_excludes() > usize::from(u16::MAX) {
            return Err(Some(Error::Malformed(Malformed::TooBig)));
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
        let ident = out.next_ipv4_ident;
        outer.write(
            &mut buf[start..esp],
            packet::encap_tos(inner_tos),
            total,
            inner_df,
            ident,
        );
        write_esp_header(buf, esp, spi, seq);
        let at = EspLayout { esp, icv };
        match pending {
            Some(slot) if !outer.udp_checksum => {
                *slot = self.transform.seal_begin(buf, at, seq, self.esn);
            }
            _ => self.transform.seal(buf, at, seq, self.esn),
        }
        if outer.udp_checksum {
            // IPv6: over the sealed packet (RFC 8200 §8.1).
            outer.set_udp_checksum(&mut buf[start..start + total], icv - start);
        }
        self.out_mut().next_ipv4_ident = ident.wrapping_add(1);
        pkt.set_window(start, total);
        Ok(inner_len)
    }

    /// Transport-mode encapsulation; `limits`, `pending` and the errors as
    /// [`Self::encap_tunnel`].
    #[inline(always)]
    fn encap_transport(
        &mut self,
        pkt: &mut PacketBuf<'_>,
        seq: u64,
        limits: bool,
        pending: Option<&mut Option<PendingSeal>>,
    ) -> Result<usize, Option<Error>> {
        let info = packet::parse_ip(pkt.data())
            .map_err(|_| Error::Malformed(Malformed::BadInnerPacket))?;
        if info.is_fragment {
            return Err(Some(Error::Malformed(Malformed::Fragment)));
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
            return Err(Some(Error::Malformed(Malformed::BadInnerPacket)));
        }
        let udp_len = if self.udp_encap.is_some() {
            UDP_HEADER_LEN
        } else {
            0
        };
        // ESP in UDP over IPv6 needs a UDP checksum, whose pseudo-header holds the final
        // destination (RFC 8200 §8.1): found (or refused) before anything moves.
        let udp6_addresses = match (udp_len, info.version) {
            (UDP_HEADER_LEN, IpVersion::V6) => Some(ipv6_pseudo_header_addresses(pkt.data(), hdr)?),
            _ => None,
        };
        let iv_len = self.transform.iv_len();
        let icv_len = self.transform.icv_len();
        let grow = udp_len + ESP_HEADER_LEN + iv_len;
        let payload = total_len - hdr;
        let pad = self.pad_len(payload);
        let tail = pad + 2 + icv_len;
        let new_total = total_len + grow + tail;
        if limits
            && (new_total > self.out().mtu_cap
                || self.stats.bytes.saturating_add(total_len as u64) > self.hard.bytes)
        {
            return Err(None);
        }
        let offset = pkt.offset();
        check_room(pkt, grow, total_len, tail)?;
        let start = offset - grow;
        let esp = start + hdr + udp_len;
        let body = esp + ESP_HEADER_LEN + iv_len;
        debug_assert_eq!(body, offset + hdr);
        if new_total > usize::from(u16::MAX) {
            return Err(Some(Error::Malformed(Malformed::TooBig)));
        }
        let spi = self.spi;
        let udp_ports = self.udp_encap;
        let buf = pkt.buffer_mut();
        // Move the IP header (and the extension headers that stay in front) into the
        // headroom; the payload does not move.
        buf.copy_within(offset..offset + hdr, start);
        let icv = Self::write_trailer(buf, body + payload, pad, protocol);
        write_esp_header(buf, esp, spi, seq);
        let at = EspLayout { esp, icv };
        match pending {
            Some(slot) if udp6_addresses.is_none() => {
                *slot = self.transform.seal_begin(buf, at, seq, self.esn);
            }
            _ => self.transform.seal(buf, at, seq, self.esn),
        }
        buf[start + nh_at] = if let Some((sport, dport)) = udp_ports {
            let udp = esp - UDP_HEADER_LEN;
            let end = start + new_total;
            write_udp(&mut buf[udp..esp], sport, dport, new_total - hdr);
            if let Some(addresses) = udp6_addresses {
                set_udp_checksum(&mut buf[udp..end], icv - udp, addresses);
            }
            self.nat
                .learn_transport_peer(&buf[start..end], info.version, hdr);
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
        self.decrypt_hinted(pkt, now, None, verify)
    }

    /// [`Self::decrypt_verified`] with the packet's ICV possibly computed ahead
    /// ([`Self::decrypt_burst`]).
    #[inline(always)]
    fn decrypt_hinted(
        &mut self,
        pkt: &mut PacketBuf<'_>,
        now: Duration,
        hint: Option<&IcvAhead>,
        verify: impl FnOnce(&[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if self.direction != Direction::Inbound {
            return Err(self.drop(Error::WrongDirection));
        }
        self.admit(now)?;
        match self.decap(pkt, hint) {
            Ok(len) => match verify(pkt.data()) {
                Ok(()) => {
                    if self.stats.bytes.saturating_add(len as u64) > self.hard.bytes {
                        // The hard byte lifetime is never overshot (its ICV verified, so
                        // the replay window has recorded it all the same).
                        self.expire(LifetimeLimit::Bytes);
                        return Err(self.drop(Error::LifetimeExpired(LifetimeLimit::Bytes)));
                    }
                    self.account(len);
                    self.inb_mut().last_accepted = nanos(now);
                    Ok(())
                }
                Err(e) => Err(self.drop(e)),
            },
            Err(e) => {
                if let Error::TooOld { seq, .. } = e {
                    self.inb_mut().replay.note_too_old(seq);
                }
                Err(self.drop(e))
            }
        }
    }

    fn decap(&mut self, pkt: &mut PacketBuf<'_>, hint: Option<&IcvAhead>) -> Result<usize, Error> {
        let data = pkt.data();
        // The common cases (an outer IPv4 header without options, or an IPv6 header
        // without extension headers, carrying ESP directly or in UDP) are recognised
        // with a few fixed-offset tests; everything else, and every packet those tests
        // do not like, takes the general parse, which also says what is wrong.
        let outer = OuterEsp::of(data)?;
        let OuterEsp {
            version,
            header_len,
            total_len,
            tos: outer_tos,
            header_end: hdr,
            next_header_at: nh_at,
            esp: esp_rel,
        } = outer;
        let iv_len = self.transform.iv_len();
        let icv_len = self.transform.icv_len();
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
        if enc_len & (self.transform.cipher_block() - 1) != 0 {
            return Err(Error::Malformed(Malformed::BadCiphertextLength));
        }
        let seq_wire =
            u32::from_be_bytes([esp_header[4], esp_header[5], esp_header[6], esp_header[7]]);
        let seq = self.replay_check(seq_wire)?;
        let offset = pkt.offset();
        let esp = offset + esp_rel;
        let body = esp + ESP_HEADER_LEN + iv_len;
        let icv = body + enc_len;
        let esn = self.esn;
        if !self
            .transform
            .open(pkt.buffer_mut(), EspLayout { esp, icv }, seq, esn, hint)
        {
            return Err(Error::AuthenticationFailed);
        }
        // `check` passed and nothing has touched the window since (on a lane of a
        // shared SA another lane may have: then this is a replay).
        self.replay_record(seq)?;
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
                if esp_rel != hdr {
                    // It came in UDP: a NAT may have rewritten the addresses its TCP/UDP
                    // checksum covers (RFC 3948 §3.1.2).
                    self.nat.fix_transport_checksum(
                        &mut buf[start..start + new_total],
                        version,
                        header_len,
                    );
                }
                pkt.set_window(start, new_total);
                Ok(new_total)
            }
        }
    }
}

/// Writes the ESP header (SPI, low 32 bits of `seq`) at `esp` with one 8-byte store:
/// without ESN it is the AEAD's AAD, which the AES-GCM backend then reads with one
/// load, and a load that spans two stores still in the store buffer waits for both to
/// reach the cache.
#[inline(always)]
fn write_esp_header(buf: &mut [u8], esp: usize, spi: u32, seq: u64) {
    let header = (u64::from(spi) << 32) | (seq & 0xffff_ffff);
    buf[esp..esp + ESP_HEADER_LEN].copy_from_slice(&header.to_be_bytes());
}

/// What the slow path does with a packet beyond the path MTU.
enum Oversize {
    /// It fits after all (a learned MTU aged out); encrypt these bytes whole.
    Fits(usize),
    /// Pre-fragment the inner IPv4 packet.
    Pre(Ipv4Split),
    /// Encrypt, then fragment the ESP packet into this many fragments.
    Post(usize),
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// An IPv4 header without options, not a fragment, its lengths consistent and
    /// checksum correct, and the protocol it carries; `None` for any other header.
    #[inline(always)]
    fn ipv4_header(data: &[u8]) -> Option<(OuterEsp, u8)> {
        let h: &[u8; IPV4_HEADER_LEN] = data.first_chunk()?;
        let total_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let plain = h[0] == 0x45
            && h[6] & 0x3f == 0
            && h[7] == 0
            && (IPV4_HEADER_LEN..=data.len()).contains(&total_len)
            && packet::ipv4_checksum_ok(h);
        plain.then_some((
            OuterEsp {
                version: IpVersion::V4,
                header_len: IPV4_HEADER_LEN,
                total_len,
                tos: h[1],
                header_end: IPV4_HEADER_LEN,
                next_header_at: 9,
                esp: IPV4_HEADER_LEN,
            },
            h[9],
        ))
    }

    /// The fast path: an IPv4 header without options, not a fragment, its lengths
    /// consistent and checksum correct, or an IPv6 header without extension headers,
    /// carrying ESP directly or in UDP ([`OuterEsp::carried`]). `None` for anything else
    /// (which [`OuterEsp::parse`] then handles or refuses with a reason). It reads what
    /// the general parse reads of such a packet, and answers the same.
    #[inline]
    fn plain(data: &[u8]) -> Option<OuterEsp> {
        match OuterEsp::ipv4_header(data) {
            // The commonest shape in the fewest steps: IPv4 carrying ESP.
            Some((o, IPPROTO_ESP)) => Some(o),
            Some((o, protocol)) => o.carried(protocol, data),
            None => OuterEsp::ipv6_header(data).and_then(|(o, p)| o.carried(p, data)),
        }
    }

    /// An IPv6 header, its payload length within `data`, and its next header (an
    /// extension header is not carried: [`OuterEsp::carried`] refuses it).
    #[inline(always)]
    fn ipv6_header(data: &[u8]) -> Option<(OuterEsp, u8)> {
        let h: &[u8; IPV6_HEADER_LEN] = data.first_chunk()?;
        let total_len = IPV6_HEADER_LEN + usize::from(u16::from_be_bytes([h[4], h[5]]));
        let plain = h[0] >> 4 == 6 && total_len <= data.len();
        plain.then_some((
            OuterEsp {
                version: IpVersion::V6,
                header_len: IPV6_HEADER_LEN,
                total_len,
                tos: ((h[0] & 0x0f) << 4) | (h[1] >> 4),
                header_end: IPV6_HEADER_LEN,
                next_header_at: 6,
                esp: IPV6_HEADER_LEN,
            },
            h[6],
        ))
    }

    /// A plain outer header followed by `protocol`: ESP at `header_end`, or ESP in UDP
    /// (RFC 3948; any port, as [`OuterEsp::parse`] takes it: the caller chose the SA)
    /// when the UDP payload holds an SPI that is not the non-ESP marker of IKE. `None`
    /// for anything else (another protocol, a keepalive, IKE, too short: the general
    /// parse says which).
    #[inline(always)]
    fn carried(self, protocol: u8, data: &[u8]) -> Option<OuterEsp> {
        match protocol {
            IPPROTO_ESP => Some(self),
            IPPROTO_UDP => {
                let esp = self.header_end + UDP_HEADER_LEN;
                let spi: &[u8; 4] = data.get(esp..self.total_len)?.first_chunk()?;
                (*spi != [0; 4]).then_some(OuterEsp { esp, ..self })
            }
            _ => None,
        }
    }

    /// The outer header of a received packet: [`OuterEsp::plain`] where it applies (a
    /// few fixed-offset tests), else [`OuterEsp::parse`], which also says what is wrong.
    #[inline(always)]
    fn of(data: &[u8]) -> Result<OuterEsp, Error> {
        OuterEsp::plain(data).map_or_else(|| OuterEsp::parse(data), Ok)
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
/// is created (also the header of its NAT-keepalives, and of a transport-mode SA's
/// keepalives once their addresses are known).
///
/// Per packet only the DSCP/ECN byte, the lengths and, for IPv4, the Identification,
/// the DF bit and the header checksum change; the checksum comes from a precomputed
/// partial sum (RFC 1071) plus those few words. Over IPv6 with UDP encapsulation the UDP
/// checksum is computed once the packet is sealed: the pseudo-header and ports are a
/// precomputed partial sum, and the ESP packet is summed in one pass
/// ([`packet::ones_complement_sum`]).
///
/// IPv4 Identifications (RFC 6864 §4.1: they must not repeat within the reassembly
/// lifetime while DF is clear) come from a per-SA 16-bit counter
/// (`SecurityAssociation::next_ipv4_ident`) that starts at a random value drawn from the
/// SA's randomness source when it is created. Several SAs between
/// the same two addresses count independently, so their values may meet; 65,536 values
/// last a few seconds at gigabit rates anyway, which is why fragmenting the outer packet
/// ([`DfPolicy::Clear`]) is best avoided.
#[derive(Clone, Debug)]
pub(crate) struct OuterHeader {
    bytes: [u8; IPV6_HEADER_LEN + UDP_HEADER_LEN],
    /// The IP header's length (20 or 40), read through [`OuterHeader::ip_len`]; `u8`s
    /// keep the header, which every outbound tunnel-mode SA holds, small.
    ip_len: u8,
    /// The UDP header's length (0 or 8), read through [`OuterHeader::udp_len`].
    udp_len: u8,
    /// One's-complement sum of the IPv4 header words with TOS, length, Identification,
    /// flags and checksum 0.
    v4_sum: u32,
    /// IPv4 flags word: the bits every packet gets (DF under [`DfPolicy::Set`]).
    df_always: u16,
    /// IPv4 flags word: the DF bit taken from the inner packet ([`DfPolicy::Copy`]).
    df_copied: u16,
    /// With UDP: the sum of the pseudo-header's addresses and protocol and of the UDP
    /// ports, to which a packet adds its UDP length (twice) and its payload.
    udp_sum: u32,
    /// Data packets carry a UDP checksum: IPv6 with UDP encapsulation.
    pub(crate) udp_checksum: bool,
}

/// The DF bit in the IPv4 flags/fragment-offset word.
const IPV4_DF: u16 = 0x4000;

impl OuterHeader {
    /// The IP header's length: 20 (IPv4) or 40 (IPv6).
    #[inline(always)]
    pub(crate) fn ip_len(&self) -> usize {
        usize::from(self.ip_len)
    }

    /// The UDP header's length: 8 with UDP encapsulation, else 0.
    #[inline(always)]
    pub(crate) fn udp_len(&self) -> usize {
        usize::from(self.udp_len)
    }

    /// The header for endpoints `src`/`dst` (same family), outer TTL / hop limit `ttl`,
    /// optional UDP encapsulation ports and the DF policy.
    pub(crate) fn new(
        src: IpAddr,
        dst: IpAddr,
        ttl: u8,
        udp: Option<(u16, u16)>,
        df: DfPolicy,
    ) -> Self {
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
        let (udp_len, udp_sum) = match udp {
            Some((sport, dport)) => {
                write_udp(&mut bytes[ip_len..ip_len + UDP_HEADER_LEN], sport, dport, 0);
                // The addresses as just written into the IP header.
                let addresses = if ip_len == IPV4_HEADER_LEN {
                    12..20
                } else {
                    8..40
                };
                let addresses = u32::from(packet::ones_complement_sum(&bytes[addresses]));
                (
                    UDP_HEADER_LEN,
                    addresses + u32::from(IPPROTO_UDP) + u32::from(sport) + u32::from(dport),
                )
            }
            None => (0, 0),
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
        let (df_always, df_copied) = match df {
            DfPolicy::Set => (IPV4_DF, 0),
            DfPolicy::Clear => (0, 0),
            _ => (0, IPV4_DF),
        };
        OuterHeader {
            bytes,
            ip_len: ip_len as u8,
            udp_len: udp_len as u8,
            v4_sum,
            df_always,
            df_copied,
            udp_sum,
            udp_checksum: ip_len == IPV6_HEADER_LEN && udp_len != 0,
        }
    }

    /// Bytes of the packet that the IP length field does not count (the IPv6 header).
    #[inline]
    fn length_field_excludes(&self) -> usize {
        if self.ip_len() == IPV6_HEADER_LEN {
            IPV6_HEADER_LEN
        } else {
            0
        }
    }

    /// Writes the header into `out` (exactly `ip_len + udp_len` bytes) for a packet of
    /// `total` bytes whose DSCP/ECN byte is `tos`; `inner_df` is the DF bit that
    /// [`DfPolicy::Copy`] copies, `ident` the IPv4 Identification. The UDP checksum is
    /// left 0 (see [`OuterHeader::set_udp_checksum`]).
    #[inline(always)]
    fn write(&self, out: &mut [u8], tos: u8, total: usize, inner_df: bool, ident: u16) {
        // Constant-length copies: each arm compiles to a few vector stores.
        match out.len() {
            20 => out.copy_from_slice(&self.bytes[..20]),
            28 => out.copy_from_slice(&self.bytes[..28]),
            40 => out.copy_from_slice(&self.bytes[..40]),
            _ => out.copy_from_slice(&self.bytes[..48]),
        }
        if self.ip_len() == IPV4_HEADER_LEN {
            let flags = self.df_always | (self.df_copied & (u16::from(inner_df) << 14));
            out[1] = tos;
            out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            // Identification and flags/fragment offset: one 32-bit store.
            out[4..8].copy_from_slice(&((u32::from(ident) << 16) | u32::from(flags)).to_be_bytes());
            let sum =
                self.v4_sum + u32::from(tos) + total as u32 + u32::from(ident) + u32::from(flags);
            out[10..12].copy_from_slice(&(!packet::fold_checksum(sum)).to_be_bytes());
        } else {
            out[0] |= tos >> 4;
            out[1] |= tos << 4;
            out[4..6].copy_from_slice(&((total - IPV6_HEADER_LEN) as u16).to_be_bytes());
        }
        if self.udp_len() != 0 {
            let udp = &mut out[self.ip_len()..];
            udp[4..6].copy_from_slice(&((total - self.ip_len()) as u16).to_be_bytes());
        }
    }

    /// Fills in the UDP checksum of `pkt`, a whole packet whose headers
    /// [`OuterHeader::write`] wrote and whose payload is final, its ICV (if any) at
    /// `icv_at`: one pass over the payload ([`udp_payload_sum`]), the rest from the
    /// precomputed sum. Out of line: only IPv6 needs it.
    #[inline(never)]
    pub(crate) fn set_udp_checksum(&self, pkt: &mut [u8], icv_at: usize) {
        let udp = self.ip_len();
        let payload = udp + UDP_HEADER_LEN;
        let udp_len = (pkt.len() - udp) as u32;
        let sum = self.udp_sum + 2 * udp_len + udp_payload_sum(&pkt[payload..], icv_at - payload);
        pkt[udp + 6..udp + 8].copy_from_slice(&packet::udp_checksum_field(sum).to_be_bytes());
    }

    /// Writes a NAT-keepalive (RFC 3948 §2.3: IP, UDP and one 0xFF byte, with a UDP
    /// checksum over either family) into `out` and returns its length. Needs UDP
    /// encapsulation. Over IPv4 it carries `ident`, and DF as a packet without an inner
    /// IPv4 header would.
    pub(crate) fn write_keepalive(
        &self,
        out: &mut [u8; crate::nat::NAT_KEEPALIVE_MAX_LEN],
        ident: u16,
    ) -> usize {
        debug_assert_eq!(self.udp_len(), UDP_HEADER_LEN);
        let len = self.ip_len() + UDP_HEADER_LEN + 1;
        let pkt = &mut out[..len];
        self.write(&mut pkt[..len - 1], 0, len, true, ident);
        pkt[len - 1] = 0xff;
        self.set_udp_checksum(pkt, len);
        len
    }
}

/// The sum of the addresses in the UDP pseudo-header of the IPv6 packet `pkt` whose
/// first `hdr` bytes stay in front of ESP: its source and final destination.
/// Out of line, like [`set_udp_checksum`], so that the IPv4 and plain-ESP paths keep
/// their code as it was.
#[inline(never)]
fn ipv6_pseudo_header_addresses(pkt: &[u8], hdr: usize) -> Result<u32, Error> {
    if hdr == IPV6_HEADER_LEN {
        return Ok(u32::from(packet::ones_complement_sum(&pkt[8..40])));
    }
    let final_dst = packet::ipv6_final_destination(pkt, hdr).map_err(Error::Malformed)?;
    Ok(u32::from(packet::ones_complement_sum(&pkt[8..24]))
        + u32::from(packet::ones_complement_sum(&final_dst)))
}

/// Fills in the checksum of the UDP datagram `udp` (header just written, checksum 0;
/// payload an ESP packet whose ICV starts at `icv_at`) whose pseudo-header addresses
/// sum to `addresses`. The header's words are added by value, not read back: they were
/// stored a moment ago in pieces, and wide loads over them would wait for the stores.
#[inline(never)]
fn set_udp_checksum(udp: &mut [u8], icv_at: usize, addresses: u32) {
    let h = |i: usize| u32::from(u16::from_be_bytes([udp[i], udp[i + 1]]));
    let header = h(0) + h(2) + h(4);
    let sum = addresses
        + u32::from(IPPROTO_UDP)
        + udp.len() as u32
        + header
        + udp_payload_sum(&udp[UDP_HEADER_LEN..], icv_at - UDP_HEADER_LEN);
    udp[6..8].copy_from_slice(&packet::udp_checksum_field(sum).to_be_bytes());
}

/// The one's-complement sum of a UDP payload (an ESP packet, or a keepalive's byte) in
/// two parts split where its ICV starts (`icv_at`; even, as ESP aligns the ICV to 4
/// bytes). The transform stores the ICV last, a moment before this runs: summing from
/// its first byte reads it with loads that match that store, where loads straddling
/// its start would stall until the store completes (failed store-to-load forwarding).
/// The bytes before it are read in 16-byte steps from the ESP header, in phase with the
/// payload the transform wrote.
#[inline]
fn udp_payload_sum(payload: &[u8], icv_at: usize) -> u32 {
    debug_assert!(icv_at.is_multiple_of(2) || icv_at == payload.len());
    let (body, icv) = payload.split_at(icv_at);
    u32::from(packet::ones_complement_sum(body)) + u32::from(packet::ones_complement_sum(icv))
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

/// Writes a UDP header for ESP-in-UDP with checksum zero: final over IPv4 (RFC 3948
/// §2.1 allows it); over IPv6 the caller fills in the checksum once the packet is sealed
/// (RFC 8200 §8.1 forbids a zero one).
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
            // Identification and flags: written per packet (OuterHeader::write).
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
pub(crate) mod tests {
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

    /// Outer headers of the shapes the fast paths test for and their near misses:
    /// IPv4 with and without options, fragment bits, protocols ESP, UDP, TCP, correct
    /// and wrong checksums; IPv6 with next header ESP, UDP, a Fragment header, hop-by-hop
    /// options; total and payload lengths below, at and above the buffer's; UDP to and
    /// from the NAT-T port or not, carrying an SPI, a keepalive or IKE's non-ESP marker.
    pub(crate) fn outer_header_shapes() -> Vec<Vec<u8>> {
        let mut all = Vec::new();
        for len in [0usize, 20, 23, 24, 29, 32, 39, 40, 43, 44, 49, 52, 60, 72] {
            for first in [0x45u8, 0x46, 0x44, 0x60, 0x6f, 0x65, 0x50] {
                for next in [IPPROTO_ESP, IPPROTO_UDP, 6, 44, 0] {
                    for stated in [0usize, 4, 20, 24, 28, 29, 32, 40, 44, 48, 49, 52, 60, 72] {
                        for frag in [[0u8, 0], [0x40, 0], [0x20, 0], [0, 1]] {
                            for udp in 0..if next == IPPROTO_UDP { 5 } else { 1 } {
                                let mut p: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
                                let set = |p: &mut Vec<u8>, at: usize, b: u8| {
                                    if let Some(x) = p.get_mut(at) {
                                        *x = b;
                                    }
                                };
                                set(&mut p, 0, first);
                                if first >> 4 == 4 {
                                    let [hi, lo] = (stated as u16).to_be_bytes();
                                    set(&mut p, 2, hi);
                                    set(&mut p, 3, lo);
                                    set(&mut p, 6, frag[0]);
                                    set(&mut p, 7, frag[1]);
                                    set(&mut p, 9, next);
                                    if p.len() >= IPV4_HEADER_LEN {
                                        p[10..12].fill(0);
                                        packet::set_ipv4_checksum(&mut p[..IPV4_HEADER_LEN]);
                                        if frag == [0, 1] {
                                            // (with these bits: a wrong checksum instead)
                                            p[7] = 0;
                                            p[11] ^= 1;
                                        }
                                    }
                                } else {
                                    let [hi, lo] = (stated.saturating_sub(40) as u16).to_be_bytes();
                                    set(&mut p, 4, hi);
                                    set(&mut p, 5, lo);
                                    set(&mut p, 6, next);
                                    set(&mut p, 40, frag[0]);
                                }
                                // UDP: ports (NAT-T's 4500 on either side, or neither), then
                                // an SPI, a keepalive byte or the non-ESP marker.
                                let at = if first >> 4 == 4 { 20 } else { 40 };
                                let (ports, body): ([u16; 2], [u8; 4]) = match udp {
                                    1 => ([4500, 4500], [0, 0, 0x10, 1]),
                                    2 => ([1234, 4500], [0xff, 0, 0, 0]),
                                    3 => ([4500, 1234], [0, 0, 0, 0]),
                                    4 => ([1234, 1235], [0, 0, 0x10, 1]),
                                    _ => ([0, 0], [0; 4]),
                                };
                                if udp != 0 {
                                    let [a, b] = ports[0].to_be_bytes();
                                    let [c, d] = ports[1].to_be_bytes();
                                    for (i, x) in
                                        [a, b, c, d, 0, 0, 0, 0].into_iter().chain(body).enumerate()
                                    {
                                        set(&mut p, at + i, x);
                                    }
                                }
                                all.push(p);
                            }
                        }
                    }
                }
            }
        }
        all
    }

    /// The fast path of the outer header ([`OuterEsp::plain`]) answers, where it
    /// answers, what the general parse answers, and it does answer for plain packets of
    /// both families, ESP in UDP too.
    #[test]
    fn plain_outer_headers_parse_as_the_general_parse() {
        let (mut v4, mut v6, mut udp) = (0, 0, 0);
        for p in outer_header_shapes() {
            if let Some(o) = OuterEsp::plain(&p) {
                assert_eq!(OuterEsp::parse(&p), Ok(o), "{p:02x?}");
                match o.version {
                    IpVersion::V4 => v4 += 1,
                    IpVersion::V6 => v6 += 1,
                }
                udp += usize::from(o.esp != o.header_end);
            }
            assert_eq!(OuterEsp::of(&p).ok(), OuterEsp::parse(&p).ok(), "{p:02x?}");
        }
        assert!(
            v4 > 0 && v6 > 0 && udp > 0,
            "fast paths taken: IPv4 {v4}, IPv6 {v6}, of which in UDP {udp}"
        );
    }
}
