//! ICMP "too big" messages: the one an SA's refusal calls for, and the ones that teach
//! an SA its path MTU (RFC 4301 §8.2, RFC 792, RFC 1191, RFC 4443, RFC 8201).
//!
//! [`too_big_reply`] builds the ICMP "fragmentation needed and DF set" (IPv4, type 3
//! code 4) or ICMPv6 "packet too big" (type 2) error that tells the sender of a packet
//! refused with [`Error::TooBig`](crate::Error::TooBig) how large its packets may be.
//! The caller sends it towards the packet's source and **rate-limits** it (RFC 1812
//! §4.3.2.8, RFC 4443 §2.4(f)): the library keeps no state about what it was asked to
//! build.
//!
//! [`TooBigMessage::parse`] reads such a message received from the path; an SA takes
//! it through [`crate::SecurityAssociation::handle_icmp`] only when the packet it
//! quotes is one of the SA's own.

use crate::error::Malformed;
use crate::packet::{
    self, IPPROTO_ESP, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_UDP, IPV4_HEADER_LEN, IPV6_HEADER_LEN,
    IpVersion,
};
use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The largest ICMP error built for an IPv4 packet (RFC 1812 §4.3.2.3: no more than
/// 576 bytes in all).
pub const ICMPV4_ERROR_MAX: usize = 576;
/// The largest ICMPv6 error built (RFC 4443 §2.4(c): no more than the IPv6 minimum MTU).
pub const ICMPV6_ERROR_MAX: usize = 1280;
/// Hop limit / TTL of the errors built.
const ERROR_TTL: u8 = 64;

/// Why [`too_big_reply`] built nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IcmpError {
    /// The refused packet is not an IP packet that can be answered.
    BadPacket(Malformed),
    /// The reply's source address is not of the refused packet's family.
    AddressFamily,
    /// `out` is too small for the reply.
    BufferTooSmall {
        /// Bytes the reply needs.
        needed: usize,
    },
}

impl fmt::Display for IcmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IcmpError::BadPacket(m) => write!(f, "cannot answer the packet: {}", m.describe()),
            IcmpError::AddressFamily => {
                f.write_str("the ICMP source address is not of the packet's IP family")
            }
            IcmpError::BufferTooSmall { needed } => {
                write!(
                    f,
                    "output buffer too small: the ICMP error needs {needed} bytes"
                )
            }
        }
    }
}

impl std::error::Error for IcmpError {}

/// Builds into `out` the ICMP error that tells the sender of `refused` (the inner packet
/// an SA refused with [`Error::TooBig`](crate::Error::TooBig)) that packets of at most
/// `mtu` bytes pass: ICMP type 3 code 4 with the next-hop MTU (RFC 1191 §4) for IPv4,
/// ICMPv6 "packet too big" for IPv6. `src` is the address the error comes from (the
/// gateway's own, of the packet's family); the error goes to the packet's source and
/// quotes as much of the packet as fits in 576 (IPv4) or 1,280 (IPv6) bytes. Returns the
/// reply's length, or `Ok(None)` when no ICMP error may be sent about this packet
/// (RFC 1122 §3.2.2, RFC 4443 §2.4(e)): it is itself an ICMP error, a non-first fragment,
/// or comes from an address that cannot be answered (unspecified, multicast, broadcast,
/// loopback). `out` needs at most [`ICMPV4_ERROR_MAX`] / [`ICMPV6_ERROR_MAX`] bytes.
///
/// Sending it, and rate-limiting what is sent, is the caller's part.
pub fn too_big_reply(
    refused: &[u8],
    mtu: u16,
    src: IpAddr,
    out: &mut [u8],
) -> Result<Option<usize>, IcmpError> {
    let info = packet::parse_ip(refused).map_err(IcmpError::BadPacket)?;
    let refused = &refused[..info.total_len];
    match (info.version, src) {
        (IpVersion::V4, IpAddr::V4(src)) => reply_v4(refused, info, mtu, src, out),
        (IpVersion::V6, IpAddr::V6(src)) => reply_v6(refused, mtu, src, out),
        _ => Err(IcmpError::AddressFamily),
    }
}

fn reply_v4(
    refused: &[u8],
    info: packet::IpInfo,
    mtu: u16,
    src: Ipv4Addr,
    out: &mut [u8],
) -> Result<Option<usize>, IcmpError> {
    let dst = Ipv4Addr::new(refused[12], refused[13], refused[14], refused[15]);
    let to = Ipv4Addr::new(refused[16], refused[17], refused[18], refused[19]);
    let later_fragment = u16::from_be_bytes([refused[6], refused[7]]) & 0x1fff != 0;
    let is_icmp_error = info.protocol == IPPROTO_ICMP
        && refused
            .get(info.header_len)
            .is_some_and(|&t| matches!(t, 3 | 4 | 5 | 11 | 12));
    if later_fragment
        || is_icmp_error
        || dst.is_unspecified()
        || dst.is_multicast()
        || dst.is_broadcast()
        || dst.is_loopback()
        || to.is_multicast()
        || to.is_broadcast()
    {
        return Ok(None);
    }
    let quoted = refused.len().min(ICMPV4_ERROR_MAX - IPV4_HEADER_LEN - 8);
    let total = IPV4_HEADER_LEN + 8 + quoted;
    let out = out
        .get_mut(..total)
        .ok_or(IcmpError::BufferTooSmall { needed: total })?;
    out[0] = 0x45;
    out[1] = 0xc0; // DSCP CS6, as routers send control traffic
    out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    out[4..8].copy_from_slice(&[0, 0, 0, 0]);
    out[8] = ERROR_TTL;
    out[9] = IPPROTO_ICMP;
    out[12..16].copy_from_slice(&src.octets());
    out[16..20].copy_from_slice(&dst.octets());
    packet::set_ipv4_checksum(&mut out[..IPV4_HEADER_LEN]);
    let icmp = &mut out[IPV4_HEADER_LEN..];
    icmp[0] = 3; // destination unreachable
    icmp[1] = 4; // fragmentation needed and DF set
    icmp[2..6].copy_from_slice(&[0, 0, 0, 0]);
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    icmp[8..].copy_from_slice(&refused[..quoted]);
    let c = packet::internet_checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Ok(Some(total))
}

fn reply_v6(
    refused: &[u8],
    mtu: u16,
    src: Ipv6Addr,
    out: &mut [u8],
) -> Result<Option<usize>, IcmpError> {
    let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&refused[8..24]).expect("16 bytes"));
    if dst.is_unspecified() || dst.is_multicast() || dst.is_loopback() {
        return Ok(None);
    }
    // RFC 4443 §2.4(e): no error about an ICMPv6 error (types below 128) or a
    // non-first fragment. "Packet too big" is the one error sent even for multicast
    // destinations (§2.4(e.2)), so the destination is not checked.
    if let Ok((l4, _, proto)) = packet::ipv6_upper_layer(refused, refused.len())
        && proto == IPPROTO_ICMPV6
        && refused.get(l4).is_some_and(|&t| t < 128)
    {
        return Ok(None);
    }
    if ipv6_later_fragment(refused) {
        return Ok(None);
    }
    let quoted = refused.len().min(ICMPV6_ERROR_MAX - IPV6_HEADER_LEN - 8);
    let total = IPV6_HEADER_LEN + 8 + quoted;
    let out = out
        .get_mut(..total)
        .ok_or(IcmpError::BufferTooSmall { needed: total })?;
    out[0] = 0x6c; // traffic class CS6
    out[1..4].copy_from_slice(&[0, 0, 0]);
    out[4..6].copy_from_slice(&((total - IPV6_HEADER_LEN) as u16).to_be_bytes());
    out[6] = IPPROTO_ICMPV6;
    out[7] = ERROR_TTL;
    out[8..24].copy_from_slice(&src.octets());
    out[24..40].copy_from_slice(&dst.octets());
    let (head, icmp) = out.split_at_mut(IPV6_HEADER_LEN);
    icmp[0] = 2; // packet too big
    icmp[1] = 0;
    icmp[2..4].copy_from_slice(&[0, 0]);
    icmp[4..8].copy_from_slice(&u32::from(mtu).to_be_bytes());
    icmp[8..].copy_from_slice(&refused[..quoted]);
    let c = icmpv6_checksum(&head[8..24], &head[24..40], icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Ok(Some(total))
}

/// True when the IPv6 packet carries a Fragment header with a non-zero offset.
fn ipv6_later_fragment(pkt: &[u8]) -> bool {
    let mut nh = pkt[6];
    let mut off = IPV6_HEADER_LEN;
    for _ in 0..16 {
        match nh {
            44 => {
                return pkt
                    .get(off + 2..off + 4)
                    .is_some_and(|b| u16::from_be_bytes([b[0], b[1]]) >> 3 != 0);
            }
            0 | 43 | 60 => match (pkt.get(off), pkt.get(off + 1)) {
                (Some(&next), Some(&len)) => {
                    nh = next;
                    off += (usize::from(len) + 1) * 8;
                }
                _ => return false,
            },
            _ => return false,
        }
    }
    false
}

/// The ICMPv6 checksum of `icmp` between `src` and `dst` (RFC 4443 §2.3, the RFC 8200
/// §8.1 pseudo-header).
fn icmpv6_checksum(src: &[u8], dst: &[u8], icmp: &[u8]) -> u16 {
    let mut pseudo = [0u8; 40];
    pseudo[..16].copy_from_slice(src);
    pseudo[16..32].copy_from_slice(dst);
    pseudo[32..36].copy_from_slice(&(icmp.len() as u32).to_be_bytes());
    pseudo[39] = IPPROTO_ICMPV6;
    !fold(sum_words(&pseudo, 0) + sum_words(icmp, 0))
}

fn sum_words(data: &[u8], mut sum: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// A received ICMP "fragmentation needed" or ICMPv6 "packet too big" message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TooBigMessage<'a> {
    /// The MTU the message reports (0 when an old IPv4 router left the field empty).
    pub mtu: u32,
    /// The start of the packet that did not fit, as quoted by the message.
    pub quoted: &'a [u8],
    /// Where the quoted packet's ESP header (its SPI) starts, when the quote reaches it.
    pub quoted_esp: Option<usize>,
    /// The quoted packet's UDP ports, when it is ESP in UDP.
    pub quoted_udp_ports: Option<(u16, u16)>,
}

impl<'a> TooBigMessage<'a> {
    /// Reads the IP packet `pkt` as a "too big" message with a correct ICMP checksum,
    /// or says why it is not one ([`Malformed::NotPathMtuMessage`] for other packets).
    pub fn parse(pkt: &'a [u8]) -> Result<TooBigMessage<'a>, Malformed> {
        let info = packet::parse_ip(pkt)?;
        let pkt = &pkt[..info.total_len];
        let (icmp, mtu) = match info.version {
            IpVersion::V4 => {
                if info.protocol != IPPROTO_ICMP || info.is_fragment {
                    return Err(Malformed::NotPathMtuMessage);
                }
                let icmp = &pkt[info.header_len..];
                if icmp.len() < 8 + IPV4_HEADER_LEN || icmp[0] != 3 || icmp[1] != 4 {
                    return Err(Malformed::NotPathMtuMessage);
                }
                if packet::internet_checksum(icmp) != 0 {
                    return Err(Malformed::BadIpChecksum);
                }
                (icmp, u32::from(u16::from_be_bytes([icmp[6], icmp[7]])))
            }
            IpVersion::V6 => {
                let (l4, _, proto) = packet::ipv6_upper_layer(pkt, pkt.len())?;
                let icmp = &pkt[l4..];
                if proto != IPPROTO_ICMPV6 || icmp.len() < 8 + IPV6_HEADER_LEN || icmp[0] != 2 {
                    return Err(Malformed::NotPathMtuMessage);
                }
                if icmpv6_checksum(&pkt[8..24], &pkt[24..40], icmp) != 0 {
                    return Err(Malformed::BadIpChecksum);
                }
                (
                    icmp,
                    u32::from_be_bytes([icmp[4], icmp[5], icmp[6], icmp[7]]),
                )
            }
        };
        let quoted = &icmp[8..];
        let (esp, ports) = quoted_esp(quoted);
        Ok(TooBigMessage {
            mtu,
            quoted,
            quoted_esp: esp,
            quoted_udp_ports: ports,
        })
    }

    /// The quoted packet's source and destination addresses.
    pub fn quoted_addresses(&self) -> Option<(IpAddr, IpAddr)> {
        let q = self.quoted;
        match q.first()? >> 4 {
            4 if q.len() >= IPV4_HEADER_LEN => Some((
                IpAddr::from(<[u8; 4]>::try_from(&q[12..16]).ok()?),
                IpAddr::from(<[u8; 4]>::try_from(&q[16..20]).ok()?),
            )),
            6 if q.len() >= IPV6_HEADER_LEN => Some((
                IpAddr::from(<[u8; 16]>::try_from(&q[8..24]).ok()?),
                IpAddr::from(<[u8; 16]>::try_from(&q[24..40]).ok()?),
            )),
            _ => None,
        }
    }

    /// The quoted ESP header's SPI, when the quote reaches it.
    pub fn quoted_spi(&self) -> Option<u32> {
        let at = self.quoted_esp?;
        let b = self.quoted.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The quoted ESP header's (low 32 bits of the) sequence number, when quoted.
    pub fn quoted_seq(&self) -> Option<u32> {
        let at = self.quoted_esp?;
        let b = self.quoted.get(at + 4..at + 8)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The quoted packet's total length by its own header (what did not fit).
    pub fn quoted_len(&self) -> Option<usize> {
        let q = self.quoted;
        match q.first()? >> 4 {
            4 => Some(usize::from(u16::from_be_bytes([*q.get(2)?, *q.get(3)?]))),
            6 => Some(IPV6_HEADER_LEN + usize::from(u16::from_be_bytes([*q.get(4)?, *q.get(5)?]))),
            _ => None,
        }
    }
}

/// Where ESP starts in a (possibly cut short) quoted packet, and its UDP ports for ESP
/// in UDP.
fn quoted_esp(q: &[u8]) -> (Option<usize>, Option<(u16, u16)>) {
    let (header_end, proto) = match q.first().map(|b| b >> 4) {
        Some(4) if q.len() >= IPV4_HEADER_LEN => (usize::from(q[0] & 0x0f) * 4, q[9]),
        Some(6) if q.len() >= IPV6_HEADER_LEN => {
            let mut nh = q[6];
            let mut off = IPV6_HEADER_LEN;
            let mut hops = 0;
            while matches!(nh, 0 | 43 | 60) && hops < 16 {
                let (Some(&next), Some(&len)) = (q.get(off), q.get(off + 1)) else {
                    return (None, None);
                };
                nh = next;
                off += (usize::from(len) + 1) * 8;
                hops += 1;
            }
            (off, nh)
        }
        _ => return (None, None),
    };
    match proto {
        IPPROTO_ESP => (Some(header_end), None),
        IPPROTO_UDP => {
            let ports = q.get(header_end..header_end + 4).map(|p| {
                (
                    u16::from_be_bytes([p[0], p[1]]),
                    u16::from_be_bytes([p[2], p[3]]),
                )
            });
            (Some(header_end + 8), ports)
        }
        _ => (None, None),
    }
}

/// The MTU to learn from a message that left the field empty (an RFC 792 router): the
/// next plateau below the quoted packet's length (RFC 1191 §7).
pub(crate) fn plateau_below(len: usize) -> u16 {
    const PLATEAUS: [u16; 11] = [32000, 17914, 8166, 4352, 2002, 1492, 1006, 508, 296, 68, 0];
    PLATEAUS
        .into_iter()
        .find(|&p| usize::from(p) < len)
        .unwrap_or(68)
        .max(68)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp4(src: [u8; 4], dst: [u8; 4], payload: usize) -> Vec<u8> {
        let mut p = vec![0u8; 28 + payload];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((28 + payload) as u16).to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        packet::set_ipv4_checksum(&mut p[..20]);
        p
    }

    #[test]
    fn ipv4_reply_goes_back_to_the_sender_and_quotes_the_packet() {
        let refused = udp4([10, 0, 0, 5], [10, 1, 0, 9], 1400);
        let mut out = [0u8; ICMPV4_ERROR_MAX];
        let n = too_big_reply(&refused, 1300, "10.0.0.1".parse().unwrap(), &mut out)
            .unwrap()
            .unwrap();
        assert_eq!(n, ICMPV4_ERROR_MAX);
        let r = &out[..n];
        assert!(packet::ipv4_checksum_ok(&r[..20]));
        assert_eq!(&r[12..16], &[10, 0, 0, 1]);
        assert_eq!(&r[16..20], &[10, 0, 0, 5]);
        assert_eq!(packet::internet_checksum(&r[20..]), 0);
        assert_eq!((r[20], r[21]), (3, 4));
        assert_eq!(u16::from_be_bytes([r[26], r[27]]), 1300);
        assert_eq!(&r[28..], &refused[..n - 28]);
        // Parsed back by our own reader, as an SA would.
        let m = TooBigMessage::parse(r).unwrap();
        assert_eq!(m.mtu, 1300);
        assert_eq!(m.quoted_len(), Some(1428));
    }

    #[test]
    fn no_reply_about_errors_fragments_or_unanswerable_sources() {
        let mut out = [0u8; ICMPV4_ERROR_MAX];
        let src: IpAddr = "10.0.0.1".parse().unwrap();
        let mut frag = udp4([10, 0, 0, 5], [10, 1, 0, 9], 100);
        frag[7] = 1;
        packet::set_ipv4_checksum(&mut frag[..20]);
        assert_eq!(too_big_reply(&frag, 576, src, &mut out), Ok(None));
        let bcast = udp4([255, 255, 255, 255], [10, 1, 0, 9], 100);
        assert_eq!(too_big_reply(&bcast, 576, src, &mut out), Ok(None));
        let mut err = udp4([10, 0, 0, 5], [10, 1, 0, 9], 100);
        err[9] = 1;
        err[20] = 3;
        assert_eq!(too_big_reply(&err, 576, src, &mut out), Ok(None));
        let ok = udp4([10, 0, 0, 5], [10, 1, 0, 9], 100);
        assert_eq!(
            too_big_reply(&ok, 576, "::1".parse().unwrap(), &mut out),
            Err(IcmpError::AddressFamily)
        );
        assert_eq!(
            too_big_reply(&ok, 576, src, &mut out[..50]),
            Err(IcmpError::BufferTooSmall { needed: 156 })
        );
        assert!(matches!(
            too_big_reply(&[0x45, 0], 576, src, &mut out),
            Err(IcmpError::BadPacket(_))
        ));
    }

    #[test]
    fn ipv6_reply_has_a_valid_checksum_and_fits_1280() {
        let mut refused = vec![0u8; 40 + 1500];
        refused[0] = 0x60;
        refused[4..6].copy_from_slice(&1500u16.to_be_bytes());
        refused[6] = 17;
        refused[8..24].copy_from_slice(&"2001:db8::5".parse::<Ipv6Addr>().unwrap().octets());
        refused[24..40].copy_from_slice(&"2001:db8:1::9".parse::<Ipv6Addr>().unwrap().octets());
        let mut out = [0u8; ICMPV6_ERROR_MAX];
        let n = too_big_reply(&refused, 1400, "2001:db8::1".parse().unwrap(), &mut out)
            .unwrap()
            .unwrap();
        assert_eq!(n, 1280);
        let m = TooBigMessage::parse(&out[..n]).unwrap();
        assert_eq!(m.mtu, 1400);
        assert_eq!(&out[24..40], &refused[8..24]);
        let mut bad = out;
        bad[100] ^= 1;
        assert_eq!(
            TooBigMessage::parse(&bad[..n]),
            Err(Malformed::BadIpChecksum)
        );
    }

    #[test]
    fn plateaus_follow_rfc_1191() {
        assert_eq!(plateau_below(1500), 1492);
        assert_eq!(plateau_below(1492), 1006);
        assert_eq!(plateau_below(100), 68);
        assert_eq!(plateau_below(40000), 32000);
    }
}
