//! The selectors of one packet ([`Flow`]), given by the caller or read from IP bytes,
//! and where a fragment sits in its datagram ([`Fragment`]).

use crate::error::{FragmentError, Malformed};
use crate::sa::Direction;
use crate::spd::selector::{has_ports, is_icmp};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The selector values of one packet, as the SPD matches them.
///
/// `src` and `dst` are the packet's own source and destination: for an outbound packet
/// the source is the policy's `local` side, for an inbound packet the destination is.
///
/// # Unknown ports, and fragments
///
/// Ports are `None` when the packet has none (ICMP, ESP, ...) or when they are unknown
/// (OPAQUE in the sense of RFC 4301 §4.4.1.1); the same holds for `icmp_type` and
/// `icmp_code`. [`crate::Spd::lookup`] *matches* such a flow: an unknown port matches
/// only a port selector of `any`, so the answer is the first policy that certainly
/// covers it.
///
/// That is not the answer for a **non-first fragment** (RFC 4301 §7), whose ports are
/// unknown because they travel in the first fragment only: a port-specific PROTECT
/// policy may well cover it, and skipping that policy would let part of a protected
/// datagram through a later BYPASS in the clear. Fragments are decided so:
///
/// * a **first fragment** carries the transport header and is looked up like a whole
///   packet, once it has passed [`Fragment::check_transport_header`] (RFC 3128 tiny
///   fragments are dropped as `fragment_too_short`, RFC 1858 overlaps as
///   `fragment_overlap`);
/// * a **non-first fragment** is decided by [`crate::Spd::lookup_non_first_fragment`]:
///   the first policy that *could* match it with its ports unknown decides when it does
///   not look at ports or ICMP fields (then it certainly matches); otherwise the answer
///   is unresolved and the fragment is dropped as `fragment_unresolved`;
/// * the [`crate::Gateway`] adds state (RFC 4301 §7.3/§7.4): it remembers the decision
///   of each first fragment it saw, for a bounded time and number of datagrams
///   ([`crate::gateway::FragmentLimits`]), and gives the datagram's later fragments that
///   same decision (PROTECT with the same SA, BYPASS or DISCARD); a later fragment that
///   overlaps the first one is dropped (`fragment_overlap`). Only fragments whose first
///   fragment was not seen get the stateless answer above.
///
/// [`Flow::from_packet_with_fragment`] reads both the selectors and the fragment facts
/// from a packet; [`crate::Spd::lookup_packet`] applies the stateless rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Flow {
    /// Outbound (about to be protected or sent) or inbound (received).
    pub direction: Direction,
    /// The packet's source address.
    pub src: IpAddr,
    /// The packet's destination address.
    pub dst: IpAddr,
    /// The IP protocol (IPv6: the upper-layer header after the extension headers).
    pub protocol: u8,
    /// TCP/UDP/SCTP source port, `None` if the protocol has no ports or it is unknown.
    pub src_port: Option<u16>,
    /// TCP/UDP/SCTP destination port, `None` if the protocol has no ports or it is unknown.
    pub dst_port: Option<u16>,
    /// ICMP/ICMPv6 message type, `None` for other protocols or when unknown.
    pub icmp_type: Option<u8>,
    /// ICMP/ICMPv6 message code, `None` for other protocols or when unknown.
    pub icmp_code: Option<u8>,
}

impl Flow {
    /// A flow with no ports and no ICMP fields; add them with the builder methods.
    pub fn new(direction: Direction, src: IpAddr, dst: IpAddr, protocol: u8) -> Flow {
        Flow {
            direction,
            src,
            dst,
            protocol,
            src_port: None,
            dst_port: None,
            icmp_type: None,
            icmp_code: None,
        }
    }

    /// Sets both ports (TCP, UDP, SCTP).
    #[must_use]
    pub fn ports(mut self, src_port: u16, dst_port: u16) -> Flow {
        self.src_port = Some(src_port);
        self.dst_port = Some(dst_port);
        self
    }

    /// Sets the ICMP type and code.
    #[must_use]
    pub fn icmp(mut self, icmp_type: u8, icmp_code: u8) -> Flow {
        self.icmp_type = Some(icmp_type);
        self.icmp_code = Some(icmp_code);
        self
    }

    /// Reads the selectors of the IPv4 or IPv6 packet at the start of `pkt`
    /// ([`Flow::from_packet_with_fragment`] without the fragment facts).
    ///
    /// A non-first fragment has OPAQUE ports and ICMP fields (`None`, see [`Flow`]);
    /// so does a first fragment too short to hold them. An unfragmented packet whose
    /// transport header is cut short is [`Malformed::Truncated`].
    #[inline]
    pub fn from_packet(direction: Direction, pkt: &[u8]) -> Result<Flow, Malformed> {
        Flow::from_packet_with_fragment(direction, pkt).map(|(flow, _)| flow)
    }

    /// Reads the selectors of the IPv4 or IPv6 packet at the start of `pkt`, and, when
    /// it is a fragment, where it sits in its datagram.
    ///
    /// IPv6 extension headers (Hop-by-Hop, Routing, Fragment, Destination Options) are
    /// walked to the upper-layer protocol; AH and ESP are upper-layer protocols here (no
    /// ports). A packet is a fragment when its IPv4 MF flag or fragment offset is set,
    /// or its IPv6 Fragment header has M set or a non-zero offset (an IPv6 "atomic
    /// fragment", offset 0 and M clear, is a whole packet: RFC 6946). A non-first
    /// fragment's protocol is the IPv4 protocol field, or the IPv6 Fragment header's
    /// next header (the first header of the fragmentable part); its ports and ICMP
    /// fields are OPAQUE (`None`), and so are those of a first fragment too short to
    /// hold them. An unfragmented packet whose transport header is cut short is
    /// [`Malformed::Truncated`]; two IPv6 Fragment headers are
    /// [`Malformed::BadExtensionHeader`].
    // Always inlined: `from_packet` and the gateway's fast path then drop the fragment
    // bookkeeping they do not use (measured: a plain `#[inline]` cost whole packets
    // about 3 ns more through `Gateway::outbound`).
    #[inline(always)]
    pub fn from_packet_with_fragment(
        direction: Direction,
        pkt: &[u8],
    ) -> Result<(Flow, Option<Fragment>), Malformed> {
        let first = *pkt.first().ok_or(Malformed::Truncated)?;
        let (src, dst, protocol, l4, end, fragment) = match first >> 4 {
            4 => {
                if pkt.len() < 20 {
                    return Err(Malformed::Truncated);
                }
                let ihl = usize::from(first & 0x0f) * 4;
                let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
                if ihl < 20 || total < ihl || total > pkt.len() {
                    return Err(Malformed::BadIpLength);
                }
                let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
                let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
                let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
                let fragment = (frag & 0x3fff != 0).then(|| Fragment {
                    id: u32::from(u16::from_be_bytes([pkt[4], pkt[5]])),
                    offset: u32::from(frag & 0x1fff) * 8,
                    len: (total - ihl) as u32,
                    more: frag & 0x2000 != 0,
                    upper_layer_len: 0,
                });
                (
                    IpAddr::V4(src),
                    IpAddr::V4(dst),
                    pkt[9],
                    ihl,
                    total,
                    fragment,
                )
            }
            6 => {
                if pkt.len() < 40 {
                    return Err(Malformed::Truncated);
                }
                let total = 40 + usize::from(u16::from_be_bytes([pkt[4], pkt[5]]));
                if total > pkt.len() {
                    return Err(Malformed::BadIpLength);
                }
                let src = Ipv6Addr::from(<[u8; 16]>::try_from(&pkt[8..24]).expect("16 bytes"));
                let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&pkt[24..40]).expect("16 bytes"));
                let (mut nh, mut off) = (pkt[6], 40usize);
                let mut fragment: Option<Fragment> = None;
                let mut fragment_header = false;
                let mut hops = 0;
                while matches!(nh, 0 | 43 | 44 | 60) {
                    hops += 1;
                    if hops > 16 || off + 8 > total {
                        return Err(Malformed::BadExtensionHeader);
                    }
                    let len = if nh == 44 {
                        if fragment_header {
                            return Err(Malformed::BadExtensionHeader);
                        }
                        fragment_header = true;
                        let fo = u16::from_be_bytes([pkt[off + 2], pkt[off + 3]]);
                        let id = u32::from_be_bytes([
                            pkt[off + 4],
                            pkt[off + 5],
                            pkt[off + 6],
                            pkt[off + 7],
                        ]);
                        let (offset, more) = (u32::from(fo >> 3) * 8, fo & 1 != 0);
                        fragment = (offset != 0 || more).then_some(Fragment {
                            id,
                            offset,
                            len: (total - (off + 8)) as u32,
                            more,
                            upper_layer_len: 0,
                        });
                        8
                    } else {
                        (usize::from(pkt[off + 1]) + 1) * 8
                    };
                    nh = pkt[off];
                    off += len;
                    if off > total {
                        return Err(Malformed::BadExtensionHeader);
                    }
                    if fragment.is_some_and(|f| !f.is_first()) {
                        break;
                    }
                }
                (IpAddr::V6(src), IpAddr::V6(dst), nh, off, total, fragment)
            }
            _ => return Err(Malformed::BadIpVersion),
        };
        let mut flow = Flow::new(direction, src, dst, protocol);
        let fragment = match fragment {
            Some(f) if f.is_first() => Some(Fragment {
                upper_layer_len: end.saturating_sub(l4) as u32,
                ..f
            }),
            Some(f) => return Ok((flow, Some(f))),
            None => None,
        };
        if !(has_ports(protocol) || is_icmp(protocol)) {
            return Ok((flow, fragment));
        }
        let l4 = &pkt[l4.min(end)..end];
        if l4.len() < 4 {
            // A first fragment too short for the ports: OPAQUE. A whole packet: broken.
            return if fragment.is_some() {
                Ok((flow, fragment))
            } else {
                Err(Malformed::Truncated)
            };
        }
        if has_ports(protocol) {
            flow = flow.ports(
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]]),
            );
        } else {
            flow = flow.icmp(l4[0], l4[1]);
        }
        Ok((flow, fragment))
    }

    /// True when the flow's protocol has ports (TCP, UDP, SCTP) or ICMP type and code
    /// and none of them is known: what a non-first fragment looks like. The policy
    /// tools answer such a flow as the data path answers a non-first fragment whose
    /// first fragment it has not seen ([`crate::Spd::lookup_non_first_fragment`]).
    pub fn ports_unknown(&self) -> bool {
        if has_ports(self.protocol) {
            self.src_port.is_none() && self.dst_port.is_none()
        } else if is_icmp(self.protocol) {
            self.icmp_type.is_none() && self.icmp_code.is_none()
        } else {
            false
        }
    }
}

/// Where a fragment sits in its datagram: IPv4 fragmentation (RFC 791) or the IPv6
/// Fragment header (RFC 8200 §4.5), as [`Flow::from_packet_with_fragment`] reads it.
///
/// Offsets and lengths count bytes of the datagram's fragmentable part: what follows
/// the IPv4 header, or what follows the IPv6 Fragment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Fragment {
    /// The datagram's identification: the IPv4 Identification field (16 bits) or the
    /// IPv6 Fragment header's Identification (32 bits).
    pub id: u32,
    /// Where this fragment's data starts in the datagram (the fragment offset × 8).
    pub offset: u32,
    /// Bytes of data this fragment carries.
    pub len: u32,
    /// More fragments follow (IPv4 MF, IPv6 M).
    pub more: bool,
    /// For a first fragment: bytes of the upper-layer header and payload it carries
    /// (after any extension headers of the fragmentable part); 0 for other fragments.
    pub upper_layer_len: u32,
}

impl Fragment {
    /// True for the first fragment (offset 0), which carries the transport header.
    #[inline]
    pub const fn is_first(&self) -> bool {
        self.offset == 0
    }

    /// The offset just past this fragment's data.
    #[inline]
    pub const fn end(&self) -> u32 {
        self.offset + self.len
    }

    /// The bytes of upper-layer header a first fragment of `protocol` must carry, and
    /// that no non-first fragment may start inside:
    ///
    /// * TCP: 16, RFC 1858 §3.2's minimum, which includes the flags as well as the
    ///   ports (an attacker's tiny first fragment could leave them to a later one);
    /// * UDP, SCTP, ICMP, ICMPv6: 8, the part of the header that holds the ports (or
    ///   type and code) rounded to the fragment unit (fragment data comes in multiples
    ///   of 8 bytes, so no real first fragment carries less);
    /// * any other protocol: 0 (the SPD reads nothing past the IP header).
    pub const fn min_first_len(protocol: u8) -> u32 {
        match protocol {
            6 => 16,
            1 | 17 | 58 | 132 => 8,
            _ => 0,
        }
    }

    /// The checks that need no state, made on every fragment before any policy is
    /// consulted:
    ///
    /// * a first fragment carrying less than [`Fragment::min_first_len`] bytes of its
    ///   upper-layer header is a "tiny fragment" (RFC 1858 §3, RFC 3128): the fields
    ///   the policy decides on are missing or could be rewritten by a later fragment,
    ///   so it is [`FragmentError::TooShort`];
    /// * a non-first fragment starting inside that region would overwrite the
    ///   transport header the first fragment was classified by (RFC 1858 §4: TCP at
    ///   offset 8): [`FragmentError::Overlap`].
    ///
    /// `protocol` is the flow's protocol (for a non-first IPv6 fragment, its Fragment
    /// header's next header).
    pub const fn check_transport_header(&self, protocol: u8) -> Result<(), FragmentError> {
        let need = Fragment::min_first_len(protocol);
        if self.is_first() {
            if self.upper_layer_len < need {
                return Err(FragmentError::TooShort);
            }
        } else if self.offset < need {
            return Err(FragmentError::Overlap);
        }
        Ok(())
    }
}
