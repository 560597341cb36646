//! NAT traversal (RFC 3948) beyond the UDP header: the NAT-keepalives an outbound SA
//! owes its peer after a silence, and the transport-mode checksum fix-up after a packet
//! crossed a NAT.
//!
//! ## NAT-keepalives (RFC 3948 §2.3, §4)
//!
//! A NAT forgets a UDP mapping that carries no traffic for a while, after which the
//! peer's packets no longer reach us. An outbound SA with UDP encapsulation therefore
//! sends a NAT-keepalive (IP, UDP with the SA's ports, one 0xFF byte) when it has sent
//! nothing for [`SaConfig::nat_keepalive_interval`] (default 20 s; `None` or zero: off).
//!
//! The library sends nothing itself (sans-IO, like quinn's `poll_transmit`): the
//! caller asks [`SecurityAssociation::next_keepalive`] when one is due, on its own clock,
//! arms a timer for that time, and calls [`SecurityAssociation::poll_keepalive`], which
//! writes the keepalive into the caller's buffer when it is due, and counts it as sent;
//! the caller then sends it like an encrypted packet. Every packet the SA encrypts
//! postpones the next keepalive by the full interval. [`crate::Gateway::poll_keepalive`]
//! does the same for all SAs of a gateway. An expired SA sends no keepalives.
//!
//! A tunnel-mode SA sends its keepalives between its tunnel endpoints. A transport-mode
//! SA has no addresses of its own: the packets it protects carry them, and in transport
//! mode those are the SA's two endpoints. It takes them from the first packet it
//! encrypts and sends keepalives from then on; until then there is no mapping of its
//! own to keep (the IKE daemon's keepalives, on the same ports, keep the one IKE made).
//!
//! ## Transport mode behind a NAT (RFC 3948 §3.1.2)
//!
//! The TCP and UDP checksums (and ICMPv6's) cover the IP addresses, which a NAT
//! rewrites in the IP header but cannot fix inside the encrypted payload. After a
//! transport-mode SA removes ESP from a packet that came in UDP, it brings that
//! checksum in line with the addresses of the header it received:
//!
//! * with the NAT original addresses of the peer's packets
//!   ([`SaConfig::nat_original_addresses`], from IKE), by the incremental update of
//!   RFC 1624 (eqn. 3) from those addresses to the received ones: a few additions;
//! * without them, by computing the checksum again over the whole segment. The ESP ICV
//!   has verified every byte of it, so no corruption can hide behind the new checksum.
//!   This is chosen over zeroing the UDP checksum (RFC 3948 allows that for UDP over
//!   IPv4) because it serves every case alike: TCP cannot go without a checksum, UDP
//!   over IPv6 must not (RFC 8200 §8.1), and a zero UDP checksum would also turn off the
//!   end-to-end check for the hop after this one if the packet is forwarded.
//!
//! A UDP checksum of 0 over IPv4 ("none") stays 0. Segments too short to hold their
//! checksum are left as they are, for the receiving stack to drop.

use crate::esp::OuterHeader;
use crate::packet::{
    self, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV6_HEADER_LEN, IpVersion, UDP_HEADER_LEN,
};
use crate::sa::{DfPolicy, Direction, Mode, SaConfig, SecurityAssociation, Side};
use core::time::Duration;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The largest NAT-keepalive [`SecurityAssociation::poll_keepalive`] writes: an IPv6
/// header, a UDP header and the 0xFF byte (49 bytes; 29 over IPv4).
pub const NAT_KEEPALIVE_MAX_LEN: usize = IPV6_HEADER_LEN + UDP_HEADER_LEN + 1;

/// An SA's NAT traversal state beyond the UDP header.
#[derive(Clone, Debug)]
pub(crate) struct NatTraversal {
    /// The rest, on the heap, only for an SA with UDP encapsulation or NAT original
    /// addresses; without either every part of it would be empty.
    more: Option<Box<NatMore>>,
}

/// The NAT traversal state of an SA that uses it (see [`NatTraversal::more`]).
#[derive(Clone, Debug)]
struct NatMore {
    /// Outbound with UDP encapsulation: the keepalive interval (`None`: no keepalives).
    keepalive_interval: Option<Duration>,
    /// Transport mode: the keepalive's headers, once the first packet gave the
    /// addresses.
    transport_header: Option<OuterHeader>,
    /// What a transport-mode keepalive header is built with.
    ttl: u8,
    df: DfPolicy,
    ports: (u16, u16),
    /// Inbound transport mode: the NAT original addresses and their one's-complement sum.
    original: Option<((IpAddr, IpAddr), u16)>,
}

impl NatTraversal {
    /// The state of a new SA made from `config` (already validated) at time `now`.
    pub(crate) fn new(config: &SaConfig) -> NatTraversal {
        let keepalive_interval = match (config.direction, config.udp_encap) {
            (Direction::Outbound, Some(_)) => config
                .nat_keepalive_interval
                .filter(|interval| !interval.is_zero()),
            _ => None,
        };
        let original = config.nat_original_addresses.map(|(src, dst)| {
            let sum = u32::from(address_sum(src)) + u32::from(address_sum(dst));
            ((src, dst), packet::fold_checksum(sum))
        });
        let used = config.udp_encap.is_some() || original.is_some();
        NatTraversal {
            more: used.then(|| {
                Box::new(NatMore {
                    keepalive_interval,
                    transport_header: None,
                    ttl: config.outer_ttl,
                    df: config.df,
                    ports: config.udp_encap.unwrap_or((0, 0)),
                    original,
                })
            }),
        }
    }

    /// The keepalive interval, if the SA sends keepalives.
    #[inline]
    fn keepalive_interval(&self) -> Option<Duration> {
        self.more.as_ref().and_then(|m| m.keepalive_interval)
    }

    /// The transport-mode keepalive header, once learned.
    fn transport_header(&self) -> Option<&OuterHeader> {
        self.more.as_ref().and_then(|m| m.transport_header.as_ref())
    }

    /// Transport mode with UDP encapsulation: the first packet sent gives the addresses
    /// of the SA's keepalives. `pkt` is that packet, its IP header at the start and
    /// `hdr` bytes of headers in front of ESP (an IPv6 Routing header among them may
    /// name the final destination).
    #[inline]
    pub(crate) fn learn_transport_peer(&mut self, pkt: &[u8], version: IpVersion, hdr: usize) {
        if let Some(more) = &mut self.more
            && more.transport_header.is_none()
            && more.keepalive_interval.is_some()
        {
            more.learn_transport_peer_slow(pkt, version, hdr);
        }
    }
}

impl NatMore {
    #[cold]
    #[inline(never)]
    fn learn_transport_peer_slow(&mut self, pkt: &[u8], version: IpVersion, hdr: usize) {
        let octets16 = |b: &[u8]| -> [u8; 16] { b.try_into().expect("16 bytes") };
        let octets4 = |b: &[u8]| -> [u8; 4] { b.try_into().expect("4 bytes") };
        let (src, dst) = match version {
            IpVersion::V4 => (
                IpAddr::V4(Ipv4Addr::from(octets4(&pkt[12..16]))),
                IpAddr::V4(Ipv4Addr::from(octets4(&pkt[16..20]))),
            ),
            IpVersion::V6 => (
                IpAddr::V6(Ipv6Addr::from(octets16(&pkt[8..24]))),
                IpAddr::V6(Ipv6Addr::from(
                    packet::ipv6_final_destination(pkt, hdr)
                        .unwrap_or_else(|_| octets16(&pkt[24..40])),
                )),
            ),
        };
        self.transport_header = Some(OuterHeader::new(
            src,
            dst,
            self.ttl,
            Some(self.ports),
            self.df,
        ));
    }
}

impl NatTraversal {
    /// After ESP was removed from a transport-mode packet that came in UDP: brings the
    /// TCP, UDP or ICMPv6 checksum of `pkt` (the restored packet, exactly) in line with
    /// the addresses of its IP header (see the module docs).
    pub(crate) fn fix_transport_checksum(
        &self,
        pkt: &mut [u8],
        version: IpVersion,
        header_len: usize,
    ) {
        let (at, protocol, addresses) = match version {
            IpVersion::V4 => (header_len, pkt[9], 12..20),
            IpVersion::V6 => match packet::ipv6_upper_layer(pkt, pkt.len()) {
                Ok((at, _, protocol)) => (at, protocol, 8..40),
                Err(_) => return,
            },
        };
        let field = match (protocol, version) {
            (IPPROTO_TCP, _) => 16,
            (IPPROTO_UDP, _) => 6,
            (IPPROTO_ICMPV6, IpVersion::V6) => 2,
            _ => return,
        };
        let Some(checksum) = pkt.get(at + field..at + field + 2) else {
            return;
        };
        let old = u16::from_be_bytes([checksum[0], checksum[1]]);
        if protocol == IPPROTO_UDP && version == IpVersion::V4 && old == 0 {
            return;
        }
        let received = packet::ones_complement_sum(&pkt[addresses]);
        let new = match self.more.as_ref().and_then(|m| m.original) {
            // RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), m the original addresses, m' the
            // received ones.
            Some((_, original)) => {
                !packet::fold_checksum(u32::from(!old) + u32::from(!original) + u32::from(received))
            }
            None => {
                pkt[at + field..at + field + 2].fill(0);
                let segment = &pkt[at..];
                !packet::fold_checksum(
                    u32::from(received)
                        + u32::from(protocol)
                        + segment.len() as u32
                        + u32::from(packet::ones_complement_sum(segment)),
                )
            }
        };
        // UDP: a computed 0 is sent as 0xffff (0 means "no checksum").
        let new = if protocol == IPPROTO_UDP && new == 0 {
            0xffff
        } else {
            new
        };
        pkt[at + field..at + field + 2].copy_from_slice(&new.to_be_bytes());
    }
}

/// The one's-complement sum of an address's bytes.
fn address_sum(a: IpAddr) -> u16 {
    match a {
        IpAddr::V4(v4) => packet::ones_complement_sum(&v4.octets()),
        IpAddr::V6(v6) => packet::ones_complement_sum(&v6.octets()),
    }
}

impl SecurityAssociation {
    /// How long the SA may stay silent before it owes a NAT-keepalive, or `None` when
    /// it sends none (keepalives off, an inbound SA, or no UDP encapsulation).
    pub fn nat_keepalive_interval(&self) -> Option<Duration> {
        self.nat.keepalive_interval()
    }

    /// The NAT original addresses `(src, dst)` of an inbound transport-mode SA
    /// ([`SaConfig::nat_original_addresses`]).
    pub fn nat_original_addresses(&self) -> Option<(IpAddr, IpAddr)> {
        self.nat
            .more
            .as_ref()
            .and_then(|m| m.original)
            .map(|(addresses, _)| addresses)
    }

    /// When the next NAT-keepalive is due, on the caller's clock (the same as the `now`
    /// of every call): the last packet sent (or the SA's creation) plus
    /// [`SecurityAssociation::nat_keepalive_interval`]. Arm a timer for it and call
    /// [`SecurityAssociation::poll_keepalive`] then; every packet encrypted in between
    /// moves it on. `None` when the SA sends no keepalives: they are off, the SA is
    /// inbound, has no UDP encapsulation or has expired, or (transport mode) has not
    /// encrypted its first packet yet (see the [module docs](crate::nat)).
    pub fn next_keepalive(&self) -> Option<Duration> {
        let interval = self.nat.keepalive_interval()?;
        let has_header = match self.mode {
            Mode::Tunnel => self.outer().is_some(),
            _ => self.nat.transport_header().is_some(),
        };
        if !has_header || self.expired.is_some() {
            return None;
        }
        let Side::Outbound(o) = &self.side else {
            return None;
        };
        Some(Duration::from_nanos(o.last_sent).saturating_add(interval))
    }

    /// Writes a NAT-keepalive (RFC 3948 §2.3) into `out` and returns its length when one
    /// is due at `now` ([`SecurityAssociation::next_keepalive`]), and counts it as sent,
    /// so the next one is due an interval later; `None` when none is due. Send the bytes
    /// as they are: a whole IP packet (IPv4 or IPv6 from the SA's addresses, TTL / hop
    /// limit [`SaConfig::outer_ttl`], UDP with the SA's ports and a correct checksum,
    /// payload one 0xFF byte). Over IPv4 it takes the next Identification and DF as
    /// the [`DfPolicy`] gives it to a packet without an inner IPv4 header.
    ///
    /// `out` has room for the largest keepalive ([`NAT_KEEPALIVE_MAX_LEN`] bytes); a
    /// larger buffer lends it with `buf.first_chunk_mut()`.
    #[must_use]
    pub fn poll_keepalive(
        &mut self,
        now: Duration,
        out: &mut [u8; NAT_KEEPALIVE_MAX_LEN],
    ) -> Option<usize> {
        let due = self.next_keepalive()?;
        if now < due || self.expired_at(now) {
            return None;
        }
        let Side::Outbound(o) = &self.side else {
            return None;
        };
        let ident = o.next_ipv4_ident;
        let header = match self.mode {
            Mode::Tunnel => self.outer()?,
            _ => self.nat.transport_header()?,
        };
        let len = header.write_keepalive(out, ident);
        self.out_mut().next_ipv4_ident = ident.wrapping_add(1);
        self.note_sent(now);
        Some(len)
    }
}
