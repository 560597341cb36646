//! Building test packets (IPv4 with TCP or UDP, correct checksums) and taking link-layer
//! headers off and putting them back.

use ipsec_core::packet::{IPPROTO_TCP, IPPROTO_UDP, internet_checksum};
use std::net::Ipv4Addr;

/// One's-complement sum of `data` (not folded, not inverted).
fn sum16(data: &[u8]) -> u32 {
    let mut acc = 0u32;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// An IPv4 packet carrying a TCP segment (flags PSH|ACK) or a UDP datagram with
/// `payload`, header and transport checksums correct.
pub(crate) fn ipv4_l4(
    protocol: u8,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    ident: u16,
    payload: &[u8],
) -> Vec<u8> {
    let l4_len = if protocol == IPPROTO_TCP { 20 } else { 8 } + payload.len();
    let total = 20 + l4_len;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&ident.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = protocol;
    p[12..16].copy_from_slice(&src.0.octets());
    p[16..20].copy_from_slice(&dst.0.octets());
    let c = internet_checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let l4 = &mut p[20..];
    l4[0..2].copy_from_slice(&src.1.to_be_bytes());
    l4[2..4].copy_from_slice(&dst.1.to_be_bytes());
    let csum_at = if protocol == IPPROTO_TCP {
        l4[4..8].copy_from_slice(&u32::from(ident).wrapping_mul(7919).to_be_bytes()); // seq
        l4[8..12].copy_from_slice(&1u32.to_be_bytes()); // ack
        l4[12] = 5 << 4;
        l4[13] = 0x18; // PSH|ACK
        l4[14..16].copy_from_slice(&64240u16.to_be_bytes());
        l4[20..].copy_from_slice(payload);
        16
    } else {
        l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        l4[8..].copy_from_slice(payload);
        6
    };
    let mut pseudo = sum16(&src.0.octets()) + sum16(&dst.0.octets());
    pseudo += u32::from(protocol) + l4_len as u32;
    let mut csum = fold(pseudo + sum16(&p[20..]));
    if protocol == IPPROTO_UDP && csum == 0 {
        csum = 0xffff;
    }
    p[20 + csum_at..22 + csum_at].copy_from_slice(&csum.to_be_bytes());
    p
}

/// True when the transport checksum of an IPv4 TCP/UDP packet verifies.
pub(crate) fn ipv4_l4_checksum_ok(p: &[u8]) -> bool {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return false;
    }
    let hl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if total > p.len() || hl > total {
        return false;
    }
    let l4 = &p[hl..total];
    let pseudo = sum16(&p[12..20]) + u32::from(p[9]) + l4.len() as u32;
    fold(pseudo + sum16(l4)) == 0 && internet_checksum(&p[..hl]) == 0
}

/// Why [`ip_offset`] found no IP packet in a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LinkError {
    /// The frame ends inside its link-layer header.
    Truncated,
    /// Not an IP frame: the EtherType.
    NotIp(u16),
    /// A link type this tool does not read.
    Unsupported(u32),
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkError::Truncated => f.write_str("Ethernet frame truncated"),
            LinkError::NotIp(ty) => write!(f, "not an IP frame (EtherType {ty:#06x})"),
            LinkError::Unsupported(lt) => write!(f, "link type {lt} is not supported"),
        }
    }
}

/// Where the IP packet starts inside a frame of `linktype`, and where the EtherType
/// that names it sits (Ethernet only; 802.1Q/802.1ad tags are skipped).
pub(crate) fn ip_offset(linktype: u32, frame: &[u8]) -> Result<(usize, Option<usize>), LinkError> {
    use crate::pcap::{
        LINKTYPE_ETHERNET, LINKTYPE_IPV4, LINKTYPE_IPV6, LINKTYPE_RAW, LINKTYPE_RAW_BSD,
    };
    match linktype {
        LINKTYPE_RAW | LINKTYPE_RAW_BSD | LINKTYPE_IPV4 | LINKTYPE_IPV6 => Ok((0, None)),
        LINKTYPE_ETHERNET => {
            let mut at = 12;
            loop {
                if frame.len() < at + 2 {
                    return Err(LinkError::Truncated);
                }
                let ty = u16::from_be_bytes([frame[at], frame[at + 1]]);
                match ty {
                    0x8100 | 0x88a8 => at += 4,
                    0x0800 | 0x86dd => return Ok((at + 2, Some(at))),
                    other => return Err(LinkError::NotIp(other)),
                }
            }
        }
        other => Err(LinkError::Unsupported(other)),
    }
}
