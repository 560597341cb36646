//! IP header parsing and rewriting needed around ESP: lengths, checksums, IPv6
//! extension-header walks, DSCP and ECN (RFC 6040).
//!
//! Everything here works on byte slices and never allocates.

use crate::error::Malformed;

/// IP protocol number of ESP.
pub const IPPROTO_ESP: u8 = 50;
/// IP protocol number of AH.
pub const IPPROTO_AH: u8 = 51;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// IP protocol number of IPv4-in-IP (tunnel-mode next header for an IPv4 inner packet).
pub const IPPROTO_IPIP: u8 = 4;
/// IP protocol number of IPv6-in-IP (tunnel-mode next header for an IPv6 inner packet).
pub const IPPROTO_IPV6: u8 = 41;
/// "No next header": RFC 4303 dummy packets carry this next-header value.
pub const IPPROTO_NONE: u8 = 59;
/// The UDP port of NAT traversal (RFC 3948).
pub const NAT_T_PORT: u16 = 4500;

/// Length of an IPv4 header without options.
pub const IPV4_HEADER_LEN: usize = 20;
/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// Length of a UDP header.
pub const UDP_HEADER_LEN: usize = 8;

/// The IP version of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// What [`parse_ip`] found out about an IP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct IpInfo {
    /// IPv4 or IPv6.
    pub version: IpVersion,
    /// Length of the fixed header plus IPv4 options (not IPv6 extension headers).
    pub header_len: usize,
    /// The packet's length according to its own header (≤ the bytes given).
    pub total_len: usize,
    /// IPv4 protocol or the IPv6 fixed header's next header.
    pub protocol: u8,
    /// The DSCP and ECN byte (IPv4 TOS, IPv6 traffic class).
    pub tos: u8,
    /// True for an IPv4 packet with MF set or a non-zero fragment offset. [`parse_ip`]
    /// reads only the fixed header, so it sets this for IPv4 alone; [`locate_esp`], which
    /// walks the IPv6 header chain, also sets it for an IPv6 packet with a Fragment
    /// header that is not an atomic fragment (RFC 6946: offset 0 and M clear).
    pub is_fragment: bool,
    /// True for an IPv4 packet with DF (don't fragment) set; false for IPv6, which has no
    /// such flag.
    pub dont_fragment: bool,
}

/// Reads the version and lengths of the IP packet at the start of `pkt`.
///
/// `pkt` may be longer than the packet (link-layer padding); the packet's own length is
/// in [`IpInfo::total_len`]. Fails when the header is truncated or its lengths are
/// inconsistent.
#[inline(always)]
pub fn parse_ip(pkt: &[u8]) -> Result<IpInfo, Malformed> {
    let first = *pkt.first().ok_or(Malformed::Truncated)?;
    match first >> 4 {
        4 => {
            if pkt.len() < IPV4_HEADER_LEN {
                return Err(Malformed::Truncated);
            }
            let header_len = usize::from(first & 0x0f) * 4;
            let total_len = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
            if header_len < IPV4_HEADER_LEN || total_len < header_len || total_len > pkt.len() {
                return Err(Malformed::BadIpLength);
            }
            let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
            Ok(IpInfo {
                version: IpVersion::V4,
                header_len,
                total_len,
                protocol: pkt[9],
                tos: pkt[1],
                is_fragment: frag & 0x3fff != 0,
                dont_fragment: frag & 0x4000 != 0,
            })
        }
        6 => {
            if pkt.len() < IPV6_HEADER_LEN {
                return Err(Malformed::Truncated);
            }
            let total_len = IPV6_HEADER_LEN + usize::from(u16::from_be_bytes([pkt[4], pkt[5]]));
            if total_len > pkt.len() {
                return Err(Malformed::BadIpLength);
            }
            Ok(IpInfo {
                version: IpVersion::V6,
                header_len: IPV6_HEADER_LEN,
                total_len,
                protocol: pkt[6],
                tos: ((pkt[0] & 0x0f) << 4) | (pkt[1] >> 4),
                is_fragment: false,
                dont_fragment: false,
            })
        }
        _ => Err(Malformed::BadIpVersion),
    }
}

/// The Internet checksum (RFC 1071) of `data`, as it would be stored in a header.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The one's-complement sum (RFC 1071) of `data` read as big-endian 16-bit words (an
/// odd last byte padded with a zero byte), folded to 16 bits and not complemented:
/// add it to other such sums with [`fold_checksum`].
///
/// One pass over the bytes: 32-bit words are added into eight 64-bit accumulators in
/// the machine's own byte order (which the compiler turns into vector additions, 32
/// bytes a step), and the folded result is byte-swapped once at the end: the
/// one's-complement sum does not depend on the byte order the words are read in, except
/// for that final swap (RFC 1071 §2 (B)). The last 0 to 3 bytes are added without a
/// copy. On the machine this was tuned on it sums 1,453 bytes in about 34 ns and 105
/// bytes in about 5 ns, as fast as four accumulators or 64-bit words added with carries
/// into 128-bit ones (one 32-bit accumulator: 64 and 12 ns; 16-bit words into a 32-bit
/// accumulator: 82 and 5 ns; one carry-chained 64-bit accumulator: 124 and 11 ns).
#[inline(never)]
pub fn ones_complement_sum(data: &[u8]) -> u16 {
    let mut blocks = data.chunks_exact(32);
    let mut lanes = [0u64; 8];
    for block in &mut blocks {
        for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(4)) {
            *lane += u64::from(u32::from_ne_bytes([word[0], word[1], word[2], word[3]]));
        }
    }
    let mut acc: u64 = lanes.iter().sum();
    let mut words = blocks.remainder().chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    // 0 to 3 bytes left: the first bytes of a zero-padded word.
    let rest = words.remainder();
    let byte = |i: usize| rest.get(i).copied().unwrap_or(0);
    acc += u64::from(u32::from_ne_bytes([byte(0), byte(1), byte(2), 0]));
    // 2^16 = 1 (mod 2^16 - 1): fold the 64-bit sum to 16 bits with end-around carries.
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    let mut sum = (acc & 0xffff) + (acc >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let sum = sum as u16;
    if cfg!(target_endian = "little") {
        sum.swap_bytes()
    } else {
        sum
    }
}

/// Folds a sum of 16-bit one's-complement sums (such as those of
/// [`ones_complement_sum`] and of single header words) to 16 bits.
#[inline]
pub const fn fold_checksum(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The UDP checksum field for a datagram whose pseudo-header, header and payload sum
/// (not complemented) to `sum`: the complement, with a computed 0 sent as 0xffff
/// (RFC 768; 0 would mean "no checksum", which IPv6 forbids).
#[inline]
pub const fn udp_checksum_field(sum: u32) -> u16 {
    match !fold_checksum(sum) {
        0 => 0xffff,
        c => c,
    }
}

/// Recomputes the checksum of the IPv4 header `header` (exactly the header bytes).
pub fn set_ipv4_checksum(header: &mut [u8]) {
    header[10] = 0;
    header[11] = 0;
    let c = internet_checksum(header);
    header[10..12].copy_from_slice(&c.to_be_bytes());
}

/// True when the IPv4 header `header` (exactly the header bytes) has a correct checksum.
///
/// This runs for every received packet, so instead of folding 16-bit words it adds
/// 32-bit words (an IPv4 header is a whole number of them) into a 64-bit sum and tests
/// that sum modulo 2^16 - 1: the one's-complement sum of the 16-bit words is 0xffff
/// (a correct header) exactly when the plain sum is a non-zero multiple of 2^16 - 1,
/// because 2^16 ≡ 1 (mod 2^16 - 1). Byte order does not matter to that test (0 and
/// 0xffff read the same both ways), so the words are loaded without swapping.
#[inline]
pub fn ipv4_checksum_ok(header: &[u8]) -> bool {
    let mut words = header.chunks_exact(4);
    let mut sum: u64 = 0;
    for w in &mut words {
        sum += u64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
    }
    if !words.remainder().is_empty() {
        // Not an IPv4 header length; the byte-wise definition decides.
        return internet_checksum(header) == 0;
    }
    sum != 0 && sum.is_multiple_of(0xffff)
}

/// Writes the DSCP/ECN byte of the IP packet starting at `pkt` (IPv4 TOS, with the
/// header checksum updated incrementally per RFC 1624; IPv6 traffic class).
pub fn set_tos(pkt: &mut [u8], version: IpVersion, tos: u8) {
    match version {
        IpVersion::V4 => {
            let old = pkt[1];
            if old == tos {
                return;
            }
            pkt[1] = tos;
            // RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), on the 16-bit word holding TOS.
            let hc = u16::from_be_bytes([pkt[10], pkt[11]]);
            let m = u16::from_be_bytes([pkt[0], old]);
            let m2 = u16::from_be_bytes([pkt[0], tos]);
            let mut sum = u32::from(!hc) + u32::from(!m) + u32::from(m2);
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            pkt[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        }
        IpVersion::V6 => {
            pkt[0] = (pkt[0] & 0xf0) | (tos >> 4);
            pkt[1] = (pkt[1] & 0x0f) | (tos << 4);
        }
    }
}

/// ECN codepoint Not-ECT.
pub const ECN_NOT_ECT: u8 = 0b00;
/// ECN codepoint ECT(1).
pub const ECN_ECT1: u8 = 0b01;
/// ECN codepoint ECT(0).
pub const ECN_ECT0: u8 = 0b10;
/// ECN codepoint CE (congestion experienced).
pub const ECN_CE: u8 = 0b11;

/// The outer header's DSCP/ECN byte for tunnel encapsulation: the DSCP is copied and
/// the ECN field set by RFC 6040 §4.1 normal mode (copied, except that CE becomes
/// ECT(0) so that congestion marks are not duplicated by the decapsulator).
pub const fn encap_tos(inner_tos: u8) -> u8 {
    let ecn = inner_tos & 0b11;
    let outer_ecn = if ecn == ECN_CE { ECN_ECT0 } else { ecn };
    (inner_tos & !0b11) | outer_ecn
}

/// The inner header's new ECN field at tunnel decapsulation (RFC 6040 §4.2, Figure 4),
/// or `None` when the packet must be dropped (outer CE on a Not-ECT inner packet).
/// The inner DSCP is left unchanged (RFC 4301 §5.1.2.1: no copy on decapsulation).
pub const fn decap_ecn(outer_tos: u8, inner_tos: u8) -> Option<u8> {
    let outer = outer_tos & 0b11;
    let inner = inner_tos & 0b11;
    let new = match (inner, outer) {
        (ECN_NOT_ECT, ECN_CE) => return None,
        (ECN_NOT_ECT, _) => ECN_NOT_ECT,
        (_, ECN_CE) => ECN_CE,
        (ECN_ECT0, ECN_ECT1) => ECN_ECT1,
        (i, _) => i,
    };
    Some(new)
}

/// Where ESP goes in an IPv6 packet in transport mode (RFC 4303 §3.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ipv6EspInsertion {
    /// Offset of the first byte that ESP protects (the ESP header is inserted here).
    pub offset: usize,
    /// Offset of the next-header byte that must become 50 (the fixed header's, or that
    /// of the last extension header that stays in front of ESP).
    pub next_header_at: usize,
    /// The protocol that ESP will carry (its trailer's next header).
    pub protocol: u8,
}

const EXT_HOP_BY_HOP: u8 = 0;
const EXT_ROUTING: u8 = 43;
const EXT_FRAGMENT: u8 = 44;
const EXT_DEST_OPTS: u8 = 60;

/// Walks the IPv6 extension headers of `pkt` (whose packet length is `total_len`) and
/// finds where ESP must be inserted in transport mode: after Hop-by-Hop, Routing and
/// Fragment headers, and after a Destination Options header only when a Routing
/// header follows it (those options are for the intermediate hops); a final
/// Destination Options header is for the receiver and is protected by ESP.
///
/// Transport mode protects whole datagrams only (RFC 4303 §3.3): a Fragment header
/// that is not an atomic fragment (RFC 6946) is refused with [`Malformed::Fragment`].
pub fn ipv6_esp_insertion(pkt: &[u8], total_len: usize) -> Result<Ipv6EspInsertion, Malformed> {
    let mut next_header_at = 6;
    let mut offset = IPV6_HEADER_LEN;
    let mut nh = pkt[6];
    // Bounded: each extension header is at least 8 bytes and the packet is finite,
    // but a cap keeps the walk cheap on hostile input.
    for _ in 0..16 {
        let stays_in_front = match nh {
            EXT_HOP_BY_HOP | EXT_ROUTING | EXT_FRAGMENT => true,
            EXT_DEST_OPTS => {
                // Peek: does a Routing header follow these options?
                let len = ext_len(pkt, offset, total_len, nh)?;
                pkt[offset] == EXT_ROUTING && offset + len <= total_len
            }
            _ => false,
        };
        if !stays_in_front {
            return Ok(Ipv6EspInsertion {
                offset,
                next_header_at,
                protocol: nh,
            });
        }
        let len = ext_len(pkt, offset, total_len, nh)?;
        if nh == EXT_FRAGMENT && !read_fragment_header(pkt, offset, next_header_at).is_atomic() {
            return Err(Malformed::Fragment);
        }
        next_header_at = offset;
        nh = pkt[offset];
        offset += len;
    }
    Err(Malformed::BadExtensionHeader)
}

fn ext_len(pkt: &[u8], offset: usize, total_len: usize, kind: u8) -> Result<usize, Malformed> {
    if offset + 8 > total_len {
        return Err(Malformed::BadExtensionHeader);
    }
    let len = if kind == EXT_FRAGMENT {
        8
    } else {
        (usize::from(pkt[offset + 1]) + 1) * 8
    };
    if offset + len > total_len {
        return Err(Malformed::BadExtensionHeader);
    }
    Ok(len)
}

/// The final destination of the IPv6 packet `pkt`, the address its upper-layer
/// checksum covers (RFC 8200 §8.1): the header's destination, unless a Routing header
/// among the extension headers in `pkt[40..end]` still has segments left. Routing
/// types 0 (RFC 2460: the last address), 2 (RFC 6275: the home address) and 4
/// (RFC 8754: Segment List\[0\]) are understood; a Routing header of another type with
/// segments left is [`Malformed::BadExtensionHeader`], since no checksum computed here
/// could be right.
pub fn ipv6_final_destination(pkt: &[u8], end: usize) -> Result<[u8; 16], Malformed> {
    let mut dst: [u8; 16] = pkt
        .get(24..40)
        .ok_or(Malformed::Truncated)?
        .try_into()
        .expect("16 bytes");
    let mut nh = pkt[6];
    let mut offset = IPV6_HEADER_LEN;
    while offset < end
        && matches!(
            nh,
            EXT_HOP_BY_HOP | EXT_ROUTING | EXT_FRAGMENT | EXT_DEST_OPTS
        )
    {
        let len = ext_len(pkt, offset, end, nh)?;
        if nh == EXT_ROUTING && pkt[offset + 3] != 0 {
            let final_at = match pkt[offset + 2] {
                // Type 0: addresses after 8 bytes of header; the last one is final.
                0 if len >= 24 => len - 16,
                // Type 2: exactly one address, the home address.
                2 if len == 24 => 8,
                // Type 4 (segment routing): Segment List[0] is the last segment.
                4 if len >= 24 => 8,
                _ => return Err(Malformed::BadExtensionHeader),
            };
            let at = offset + final_at;
            dst.copy_from_slice(&pkt[at..at + 16]);
        }
        nh = pkt[offset];
        offset += len;
    }
    Ok(dst)
}

/// Writes the length field of the IP packet at the start of `pkt` (IPv4 total length
/// with the checksum recomputed over `header_len` bytes, or IPv6 payload length).
pub fn set_ip_length(pkt: &mut [u8], version: IpVersion, header_len: usize, total_len: usize) {
    match version {
        IpVersion::V4 => {
            pkt[2..4].copy_from_slice(&(total_len as u16).to_be_bytes());
            set_ipv4_checksum(&mut pkt[..header_len]);
        }
        IpVersion::V6 => {
            pkt[4..6].copy_from_slice(&((total_len - IPV6_HEADER_LEN) as u16).to_be_bytes());
        }
    }
}

/// Walks every IPv6 extension header (Hop-by-Hop, Routing, Fragment, Destination
/// Options) of `pkt` and returns `(offset, next_header_at, protocol)` of the first
/// header that is not one of them: for a received ESP packet, where ESP starts.
///
/// In a non-first fragment (a Fragment header with a non-zero offset) nothing after the
/// Fragment header is a header: the walk stops there and answers with the Fragment
/// header's next header.
pub fn ipv6_upper_layer(pkt: &[u8], total_len: usize) -> Result<(usize, usize, u8), Malformed> {
    ipv6_walk(pkt, total_len).map(|w| (w.offset, w.next_header_at, w.protocol))
}

/// What a walk of an IPv6 header chain found.
struct Ipv6Walk {
    /// Offset of the first header that is not an extension header.
    offset: usize,
    /// Offset of the next-header byte that names it.
    next_header_at: usize,
    /// Its protocol number.
    protocol: u8,
    /// True when the chain holds a Fragment header that is not an atomic fragment.
    fragment: bool,
}

fn ipv6_walk(pkt: &[u8], total_len: usize) -> Result<Ipv6Walk, Malformed> {
    let mut next_header_at = 6;
    let mut offset = IPV6_HEADER_LEN;
    let mut nh = pkt[6];
    let mut fragment = false;
    for _ in 0..16 {
        if !matches!(
            nh,
            EXT_HOP_BY_HOP | EXT_ROUTING | EXT_FRAGMENT | EXT_DEST_OPTS
        ) {
            return Ok(Ipv6Walk {
                offset,
                next_header_at,
                protocol: nh,
                fragment,
            });
        }
        let len = ext_len(pkt, offset, total_len, nh)?;
        let later_fragment = if nh == EXT_FRAGMENT {
            let f = read_fragment_header(pkt, offset, next_header_at);
            fragment |= !f.is_atomic();
            f.offset != 0
        } else {
            false
        };
        next_header_at = offset;
        nh = pkt[offset];
        offset += len;
        if later_fragment {
            return Ok(Ipv6Walk {
                offset,
                next_header_at,
                protocol: nh,
                fragment,
            });
        }
    }
    Err(Malformed::BadExtensionHeader)
}

/// An IPv6 Fragment header (RFC 8200 §4.5), as [`ipv6_fragment`] finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ipv6Fragment {
    /// Offset of the Fragment header: the length of the unfragmentable part (the IPv6
    /// header and the extension headers in front of the Fragment header).
    pub at: usize,
    /// Offset of the next-header byte that names the Fragment header (44): 6, or the
    /// first byte of the last extension header of the unfragmentable part.
    pub next_header_at: usize,
    /// The Fragment header's next header: the first header of the fragmentable part.
    pub next_header: u8,
    /// The fragment offset, in bytes (the 13-bit field times 8).
    pub offset: usize,
    /// The M flag: more fragments follow.
    pub more: bool,
    /// The Identification field.
    pub id: u32,
}

impl Ipv6Fragment {
    /// An atomic fragment (RFC 6946): offset 0 and M clear, a whole packet that carries
    /// a Fragment header. It is processed as a whole packet.
    pub const fn is_atomic(&self) -> bool {
        self.offset == 0 && !self.more
    }
}

/// Reads the Fragment header at `at` (8 bytes present) named by the byte at
/// `next_header_at`.
fn read_fragment_header(pkt: &[u8], at: usize, next_header_at: usize) -> Ipv6Fragment {
    let off_m = u16::from_be_bytes([pkt[at + 2], pkt[at + 3]]);
    Ipv6Fragment {
        at,
        next_header_at,
        next_header: pkt[at],
        offset: usize::from(off_m >> 3) * 8,
        more: off_m & 1 != 0,
        id: u32::from_be_bytes([pkt[at + 4], pkt[at + 5], pkt[at + 6], pkt[at + 7]]),
    }
}

/// Finds the Fragment header of the IPv6 packet `pkt` (whose packet length is
/// `total_len`): it follows the headers that may precede it (Hop-by-Hop, Routing,
/// Destination Options; RFC 8200 §4.1). `None` when the chain reaches any other header
/// first. Fails when one of those headers runs past the packet.
pub fn ipv6_fragment(pkt: &[u8], total_len: usize) -> Result<Option<Ipv6Fragment>, Malformed> {
    if pkt.len() < IPV6_HEADER_LEN || total_len > pkt.len() {
        return Err(Malformed::Truncated);
    }
    let mut next_header_at = 6;
    let mut offset = IPV6_HEADER_LEN;
    let mut nh = pkt[6];
    for _ in 0..16 {
        match nh {
            EXT_FRAGMENT => {
                ext_len(pkt, offset, total_len, nh)?;
                return Ok(Some(read_fragment_header(pkt, offset, next_header_at)));
            }
            EXT_HOP_BY_HOP | EXT_ROUTING | EXT_DEST_OPTS => {
                let len = ext_len(pkt, offset, total_len, nh)?;
                next_header_at = offset;
                nh = pkt[offset];
                offset += len;
            }
            _ => return Ok(None),
        }
    }
    Err(Malformed::BadExtensionHeader)
}

/// Where ESP starts in a received IP packet: right after the IP header chain (RFC 4303)
/// or inside UDP (RFC 3948).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EspPosition {
    /// The outer IP header.
    pub ip: IpInfo,
    /// End of the IP header chain (IPv4 options and IPv6 extension headers included).
    pub header_end: usize,
    /// Offset of the next-header byte that names ESP or UDP.
    pub next_header_at: usize,
    /// Offset of the ESP header (the SPI); at most `ip.total_len`.
    pub esp: usize,
    /// True for ESP in UDP.
    pub udp: bool,
}

/// Finds the ESP header of `pkt`. UDP counts as ESP in UDP when `udp_ports` is `None`
/// or holds its source or destination port; then a NAT-T keepalive (a single 0xFF
/// byte) and the non-ESP marker (four zero bytes: IKE) are recognised and refused as
/// such. Anything else is [`Malformed::NotEsp`].
///
/// A fragment is not refused here: `ip.is_fragment` says so (IPv4 MF or offset, or an
/// IPv6 Fragment header that is not an atomic fragment), and callers that need whole
/// packets check it.
#[inline]
pub fn locate_esp(pkt: &[u8], udp_ports: Option<&[u16]>) -> Result<EspPosition, Malformed> {
    let mut ip = parse_ip(pkt)?;
    let (header_end, next_header_at, proto) = match ip.version {
        IpVersion::V4 => (ip.header_len, 9, ip.protocol),
        IpVersion::V6 => {
            let walk = ipv6_walk(pkt, ip.total_len)?;
            ip.is_fragment = walk.fragment;
            (walk.offset, walk.next_header_at, walk.protocol)
        }
    };
    let (esp, udp) = match proto {
        IPPROTO_ESP => (header_end, false),
        IPPROTO_UDP => {
            let udp = &pkt[header_end..ip.total_len];
            if udp.len() < UDP_HEADER_LEN {
                return Err(Malformed::Truncated);
            }
            if let Some(ports) = udp_ports {
                let sport = u16::from_be_bytes([udp[0], udp[1]]);
                let dport = u16::from_be_bytes([udp[2], udp[3]]);
                if !ports.contains(&sport) && !ports.contains(&dport) {
                    return Err(Malformed::NotEsp);
                }
            }
            let body = &udp[UDP_HEADER_LEN..];
            if body == [0xff] {
                return Err(Malformed::NatKeepalive);
            }
            if body.get(..4) == Some(&[0, 0, 0, 0]) {
                return Err(Malformed::NonEspMarker);
            }
            (header_end + UDP_HEADER_LEN, true)
        }
        _ => return Err(Malformed::NotEsp),
    };
    Ok(EspPosition {
        ip,
        header_end,
        next_header_at,
        esp,
        udp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_rfc1071_example() {
        // A well-known IPv4 header whose checksum is 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        set_ipv4_checksum(&mut h);
        assert_eq!(&h[10..12], &[0xb8, 0x61]);
        assert!(ipv4_checksum_ok(&h));
    }

    #[test]
    fn word_wise_checksum_check_equals_the_byte_wise_definition() {
        // Headers of 20 to 60 bytes with assorted contents, correct and corrupted.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for len in (20..=60).step_by(4) {
            for round in 0..200 {
                let mut h: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        match round % 4 {
                            0 => 0xff,
                            1 => 0,
                            _ => state as u8,
                        }
                    })
                    .collect();
                assert_eq!(ipv4_checksum_ok(&h), internet_checksum(&h) == 0);
                set_ipv4_checksum(&mut h);
                assert!(ipv4_checksum_ok(&h), "len {len} round {round}");
                h[(round * 7) % len] ^= 1 << (round % 8);
                assert_eq!(ipv4_checksum_ok(&h), internet_checksum(&h) == 0);
                assert!(!ipv4_checksum_ok(&h), "a flipped bit must be caught");
            }
        }
        // Odd lengths are not IPv4 headers but still follow the definition.
        assert_eq!(
            ipv4_checksum_ok(&[0xff; 3]),
            internet_checksum(&[0xff; 3]) == 0
        );
        assert!(!ipv4_checksum_ok(&[0; 20]));
    }

    #[test]
    fn ones_complement_sum_equals_the_byte_wise_definition() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..=300usize {
            for round in 0..8 {
                let data: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        match round {
                            0 => 0xff,
                            1 => 0,
                            _ => state as u8,
                        }
                    })
                    .collect();
                assert_eq!(
                    !ones_complement_sum(&data),
                    internet_checksum(&data),
                    "len {len} round {round}"
                );
            }
        }
        // Sums of parts at even offsets add up to the sum of the whole.
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let parts = u32::from(ones_complement_sum(&data[..400]))
            + u32::from(ones_complement_sum(&data[400..998]))
            + u32::from(ones_complement_sum(&data[998..]));
        assert_eq!(fold_checksum(parts), ones_complement_sum(&data));
    }

    #[test]
    fn udp_checksum_field_never_writes_zero() {
        assert_eq!(udp_checksum_field(0xffff), 0xffff);
        assert_eq!(udp_checksum_field(0x1_fffe), 0xffff);
        assert_eq!(udp_checksum_field(0x1234), !0x1234);
    }

    #[test]
    fn final_destination_of_routing_headers() {
        // IPv6 | Routing(type, 1 address, segments left) | UDP
        let build = |rtype: u8, segleft: u8| {
            let mut p = vec![0u8; 40 + 24 + 8];
            p[0] = 0x60;
            p[4..6].copy_from_slice(&32u16.to_be_bytes());
            p[6] = EXT_ROUTING;
            p[24..40].copy_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
            p[40] = IPPROTO_UDP;
            p[41] = 2;
            p[42] = rtype;
            p[43] = segleft;
            p[48..64].copy_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
            p
        };
        let dst: [u8; 16] = build(0, 0)[24..40].try_into().unwrap();
        let last: [u8; 16] = build(0, 0)[48..64].try_into().unwrap();
        for rtype in [0u8, 2, 4] {
            assert_eq!(ipv6_final_destination(&build(rtype, 1), 64), Ok(last));
            assert_eq!(ipv6_final_destination(&build(rtype, 0), 64), Ok(dst));
        }
        assert_eq!(
            ipv6_final_destination(&build(3, 1), 64),
            Err(Malformed::BadExtensionHeader)
        );
        // Headers at or after `end` are not looked at.
        assert_eq!(ipv6_final_destination(&build(3, 1), 40), Ok(dst));
        // A truncated chain is refused, not read past.
        assert_eq!(
            ipv6_final_destination(&build(0, 1)[..60], 60),
            Err(Malformed::BadExtensionHeader)
        );
    }

    #[test]
    fn incremental_tos_update_equals_full_recompute() {
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        set_ipv4_checksum(&mut h);
        for tos in [0u8, 1, 0x2e << 2, 0xff, 0x03] {
            set_tos(&mut h, IpVersion::V4, tos);
            assert!(ipv4_checksum_ok(&h), "tos {tos:#x}");
            assert_eq!(h[1], tos);
        }
    }

    #[test]
    fn ipv6_traffic_class_round_trips() {
        let mut p = [0u8; 40];
        p[0] = 0x60;
        set_tos(&mut p, IpVersion::V6, 0xb9);
        assert_eq!(p[0], 0x6b);
        assert_eq!(p[1] >> 4, 0x9);
        p[4] = 0;
        assert_eq!(parse_ip(&p).unwrap().tos, 0xb9);
    }

    #[test]
    fn rfc6040_encap_and_decap_tables() {
        assert_eq!(encap_tos(0xb8 | ECN_CE), 0xb8 | ECN_ECT0);
        assert_eq!(encap_tos(0xb8 | ECN_ECT1), 0xb8 | ECN_ECT1);
        assert_eq!(encap_tos(0xb8), 0xb8);
        // RFC 6040 Figure 4, row by row: (inner, outer) -> new inner ECN or drop.
        let d = |inner: u8, outer: u8| decap_ecn(outer, inner);
        assert_eq!(d(ECN_NOT_ECT, ECN_NOT_ECT), Some(ECN_NOT_ECT));
        assert_eq!(d(ECN_NOT_ECT, ECN_ECT0), Some(ECN_NOT_ECT));
        assert_eq!(d(ECN_NOT_ECT, ECN_ECT1), Some(ECN_NOT_ECT));
        assert_eq!(d(ECN_NOT_ECT, ECN_CE), None);
        assert_eq!(d(ECN_ECT0, ECN_NOT_ECT), Some(ECN_ECT0));
        assert_eq!(d(ECN_ECT0, ECN_ECT0), Some(ECN_ECT0));
        assert_eq!(d(ECN_ECT0, ECN_ECT1), Some(ECN_ECT1));
        assert_eq!(d(ECN_ECT0, ECN_CE), Some(ECN_CE));
        assert_eq!(d(ECN_ECT1, ECN_NOT_ECT), Some(ECN_ECT1));
        assert_eq!(d(ECN_ECT1, ECN_ECT0), Some(ECN_ECT1));
        assert_eq!(d(ECN_ECT1, ECN_ECT1), Some(ECN_ECT1));
        assert_eq!(d(ECN_ECT1, ECN_CE), Some(ECN_CE));
        assert_eq!(d(ECN_CE, ECN_NOT_ECT), Some(ECN_CE));
        assert_eq!(d(ECN_CE, ECN_ECT0), Some(ECN_CE));
        assert_eq!(d(ECN_CE, ECN_ECT1), Some(ECN_CE));
        assert_eq!(d(ECN_CE, ECN_CE), Some(ECN_CE));
    }

    #[test]
    fn ipv6_walk_keeps_hop_by_hop_in_front_and_protects_final_dest_opts() {
        // IPv6 | HbH(8) | DestOpts(8) | UDP
        let mut p = vec![0u8; 40 + 8 + 8 + 8];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&24u16.to_be_bytes());
        p[6] = EXT_HOP_BY_HOP;
        p[40] = EXT_DEST_OPTS;
        p[48] = IPPROTO_UDP;
        let ins = ipv6_esp_insertion(&p, p.len()).unwrap();
        assert_eq!(ins.offset, 48);
        assert_eq!(ins.next_header_at, 40);
        assert_eq!(ins.protocol, EXT_DEST_OPTS);

        // IPv6 | DestOpts(8) | Routing(8) | UDP: both stay in front.
        p[6] = EXT_DEST_OPTS;
        p[40] = EXT_ROUTING;
        p[48] = IPPROTO_UDP;
        let ins = ipv6_esp_insertion(&p, p.len()).unwrap();
        assert_eq!(
            (ins.offset, ins.next_header_at, ins.protocol),
            (56, 48, IPPROTO_UDP)
        );
    }

    #[test]
    fn ipv6_walk_rejects_truncated_chain() {
        let mut p = vec![0u8; 44];
        p[0] = 0x60;
        p[6] = EXT_HOP_BY_HOP;
        assert_eq!(
            ipv6_esp_insertion(&p, 44),
            Err(Malformed::BadExtensionHeader)
        );
    }

    #[test]
    fn ipv6_fragment_header_is_found_behind_the_unfragmentable_headers() {
        // IPv6 | HbH(8) | Fragment(offset 1448, M=1, id 0x01020304) | 16 bytes
        let mut p = vec![0u8; 40 + 8 + 8 + 16];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&32u16.to_be_bytes());
        p[6] = EXT_HOP_BY_HOP;
        p[40] = EXT_FRAGMENT;
        p[48] = IPPROTO_ESP;
        p[50..52].copy_from_slice(&((1448u16 / 8) << 3 | 1).to_be_bytes());
        p[52..56].copy_from_slice(&[1, 2, 3, 4]);
        let f = ipv6_fragment(&p, p.len()).unwrap().unwrap();
        assert_eq!(
            (
                f.at,
                f.next_header_at,
                f.next_header,
                f.offset,
                f.more,
                f.id
            ),
            (48, 40, IPPROTO_ESP, 1448, true, 0x0102_0304)
        );
        assert!(!f.is_atomic());
        // A later fragment: nothing behind the Fragment header is a header.
        p[56] = EXT_DEST_OPTS;
        p[48] = EXT_DEST_OPTS;
        assert_eq!(ipv6_upper_layer(&p, p.len()), Ok((56, 48, EXT_DEST_OPTS)));
        let pos = locate_esp(&p, None);
        assert_eq!(pos, Err(Malformed::NotEsp));
        p[48] = IPPROTO_ESP;
        let pos = locate_esp(&p, None).unwrap();
        assert!(pos.ip.is_fragment, "a non-atomic IPv6 fragment is flagged");
        // Atomic: offset 0, M clear.
        p[50..52].copy_from_slice(&[0, 0]);
        assert!(ipv6_fragment(&p, p.len()).unwrap().unwrap().is_atomic());
        assert!(!locate_esp(&p, None).unwrap().ip.is_fragment);
        // No Fragment header in front of the upper layer: none.
        p[40] = IPPROTO_UDP;
        assert_eq!(ipv6_fragment(&p, p.len()), Ok(None));
        // A Hop-by-Hop header that runs past the packet.
        p[41] = 9;
        assert_eq!(
            ipv6_fragment(&p, p.len()),
            Err(Malformed::BadExtensionHeader)
        );
        assert_eq!(ipv6_fragment(&p[..39], 39), Err(Malformed::Truncated));
    }

    #[test]
    fn parse_rejects_bad_lengths() {
        assert_eq!(parse_ip(&[]), Err(Malformed::Truncated));
        assert_eq!(parse_ip(&[0x55; 20]), Err(Malformed::BadIpVersion));
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[3] = 40; // claims 40 bytes, has 20
        assert_eq!(parse_ip(&h), Err(Malformed::BadIpLength));
        h[0] = 0x44; // IHL 16 bytes
        h[3] = 20;
        assert_eq!(parse_ip(&h), Err(Malformed::BadIpLength));
    }

    #[test]
    fn locate_esp_finds_esp_and_esp_in_udp_only_on_the_given_ports() {
        let mut p = vec![0u8; 20 + 8 + 12];
        p[0] = 0x45;
        p[3] = p.len() as u8;
        p[9] = IPPROTO_ESP;
        let pos = locate_esp(&p, Some(&[NAT_T_PORT])).unwrap();
        assert_eq!(
            (pos.header_end, pos.next_header_at, pos.esp, pos.udp),
            (20, 9, 20, false)
        );
        p[9] = IPPROTO_UDP;
        p[20..22].copy_from_slice(&4500u16.to_be_bytes());
        p[28] = 0x10; // an SPI, not the non-ESP marker
        assert_eq!(locate_esp(&p, Some(&[NAT_T_PORT])).unwrap().esp, 28);
        assert_eq!(locate_esp(&p, Some(&[9999])), Err(Malformed::NotEsp));
        assert_eq!(locate_esp(&p, None).unwrap().esp, 28);
        p[28] = 0; // 0, 0, 0, 0: IKE
        assert_eq!(locate_esp(&p, None), Err(Malformed::NonEspMarker));
        p.truncate(29);
        p[3] = 29;
        p[28] = 0xff;
        assert_eq!(locate_esp(&p, None), Err(Malformed::NatKeepalive));
    }
}
