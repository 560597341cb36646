//! The selectors of one packet ([`Flow`]), given by the caller or read from IP bytes.

use crate::error::Malformed;
use crate::sa::Direction;
use crate::spd::selector::{has_ports, is_icmp};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The selector values of one packet, as the SPD matches them.
///
/// `src` and `dst` are the packet's own source and destination: for an outbound packet
/// the source is the policy's `local` side, for an inbound packet the destination is.
///
/// Ports are `None` when the packet has none (ICMP, ESP, ...) or when they are unknown:
/// a non-first fragment carries no transport header, so its ports are OPAQUE in the
/// sense of RFC 4301 §4.4.1.1 and §7. An OPAQUE port matches only a port selector of
/// `any`; a policy with a port range never matches it. The same holds for `icmp_type`
/// and `icmp_code`. (RFC 4301 §7.1 lets an implementation keep a separate policy for
/// non-initial fragments; this SPD takes the stricter route: such fragments can only be
/// covered by rules that do not look at ports, and are otherwise discarded by the final
/// rule. Reassemble before classification to treat them like whole packets.)
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

    /// Reads the selectors of the IPv4 or IPv6 packet at the start of `pkt`.
    ///
    /// IPv6 extension headers (Hop-by-Hop, Routing, Fragment, Destination Options) are
    /// walked to the upper-layer protocol; AH and ESP are upper-layer protocols here (no
    /// ports). A non-first fragment (IPv4 offset ≠ 0, or an IPv6 Fragment header with
    /// offset ≠ 0) has OPAQUE ports and ICMP fields (`None`, see [`Flow`]); so does a
    /// first fragment too short to hold them. An unfragmented packet whose transport
    /// header is cut short is [`Malformed::Truncated`].
    pub fn from_packet(direction: Direction, pkt: &[u8]) -> Result<Flow, Malformed> {
        let first = *pkt.first().ok_or(Malformed::Truncated)?;
        let (src, dst, protocol, l4, end, fragmented, later_fragment) = match first >> 4 {
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
                (
                    IpAddr::V4(src),
                    IpAddr::V4(dst),
                    pkt[9],
                    ihl,
                    total,
                    frag & 0x3fff != 0,
                    frag & 0x1fff != 0,
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
                let (mut fragmented, mut later) = (false, false);
                let mut hops = 0;
                while matches!(nh, 0 | 43 | 44 | 60) {
                    hops += 1;
                    if hops > 16 || off + 8 > total {
                        return Err(Malformed::BadExtensionHeader);
                    }
                    let len = if nh == 44 {
                        fragmented = true;
                        let fo = u16::from_be_bytes([pkt[off + 2], pkt[off + 3]]);
                        later |= fo >> 3 != 0;
                        8
                    } else {
                        (usize::from(pkt[off + 1]) + 1) * 8
                    };
                    nh = pkt[off];
                    off += len;
                    if off > total {
                        return Err(Malformed::BadExtensionHeader);
                    }
                    if later {
                        break;
                    }
                }
                (
                    IpAddr::V6(src),
                    IpAddr::V6(dst),
                    nh,
                    off,
                    total,
                    fragmented,
                    later,
                )
            }
            _ => return Err(Malformed::BadIpVersion),
        };
        let mut flow = Flow::new(direction, src, dst, protocol);
        if later_fragment || !(has_ports(protocol) || is_icmp(protocol)) {
            return Ok(flow);
        }
        let l4 = &pkt[l4.min(end)..end];
        if l4.len() < 4 {
            // A first fragment too short for the ports: OPAQUE. A whole packet: broken.
            return if fragmented {
                Ok(flow)
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
        Ok(flow)
    }
}
