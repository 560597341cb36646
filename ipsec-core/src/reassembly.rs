//! Reassembly of IP fragments, IPv4 (RFC 791) and IPv6 (RFC 8200 §4.5), within hard
//! limits: for ESP packets that a router on the path fragmented (outer fragments). ESP
//! is removed from whole packets only (RFC 4303 §3.4.1), so they are put back together
//! first.
//!
//! # Driving it
//!
//! The caller hands every received packet (or only the fragments: IPv4 with MF set or a
//! fragment offset, IPv6 with a Fragment header) to [`Reassembler::insert`] with its own
//! clock's `now`, and acts on the answer:
//!
//! * [`Reassembly::NotFragment`]: a whole packet; process it as it is.
//! * [`Reassembly::Held`]: a fragment was copied and is held; nothing to do yet (the
//!   caller's buffer is free again).
//! * [`Reassembly::Complete`]: this fragment completed its datagram, which is returned
//!   whole: IPv4 with MF and the offset cleared, the total length and the header
//!   checksum fixed; IPv6 with the Fragment header removed, the next-header chain and the
//!   payload length fixed. An IPv6 atomic fragment (offset 0, M clear; RFC 6946) is
//!   returned this way at once, on its own, whatever else is held.
//! * an [`Error`]: the fragment was dropped and counted (below).
//!
//! [`Reassembler::insert_in_place`] does the same on a [`PacketBuf`] and writes a
//! completed datagram into the caller's buffer, at the fragment's offset; when it does
//! not fit, the fragment is refused with [`Error::NoTailroom`] and not taken (the held
//! fragments stay, so the caller may offer it again with a larger buffer).
//!
//! The library never reads a clock: a datagram's lifetime runs from the `now` of its
//! first fragment, and every call first drops the datagrams whose lifetime has ended at
//! its `now` (`fragment_timeout`). Call [`Reassembler::expire`] when no fragment arrives
//! for a while, to free what is held. `now` may come from any monotonic clock with any
//! epoch; if it goes backwards nothing breaks, datagrams just live longer.
//!
//! # Limits
//!
//! [`ReassemblyLimits`] bounds the memory held (every held fragment is charged its IP
//! length plus [`Reassembler::FRAGMENT_OVERHEAD`] bytes for its bookkeeping, so a flood
//! of tiny fragments is charged what it costs, as Linux charges an skb's true size), the
//! datagrams in progress, the fragments per datagram and the lifetime. Besides what it
//! holds, a reassembler keeps one output buffer of at most one datagram
//! ([`MAX_DATAGRAM_LEN`], 65,575 bytes) for [`Reassembler::insert`].
//!
//! A fragment that would exceed a limit is refused (`fragment_limit`); nothing held is
//! evicted to make room. This is what Linux does since 4.17: evicting old datagrams for
//! new fragments lets a flood of spoofed fragments flush every legitimate datagram in
//! progress, keeps the table churning at the attacker's pace and costs a search for a
//! victim per fragment, while refusing is O(1) and an attack's effect ends one lifetime
//! after it stops. The defaults are Linux's (4 MiB, `ipfrag_high_thresh`; 30 s,
//! `ipfrag_time`) plus a datagram and a per-datagram fragment limit.
//!
//! # Rules, in the order they are applied
//!
//! 1. Datagrams whose lifetime has ended are dropped, each held fragment counted once
//!    under `fragment_timeout`.
//! 2. A packet that is not an IP packet is refused as `malformed`; so is an IPv4
//!    fragment whose header checksum is wrong (its header would otherwise be rewritten
//!    with a fresh checksum), or an IPv6 packet whose headers before the Fragment header
//!    run past its end.
//! 3. A fragment that cannot belong to any valid datagram is dropped on its own
//!    (`fragment_invalid`): no payload; a non-last fragment whose payload is not a
//!    multiple of 8 bytes; one that would end beyond 65,535 bytes (IPv4 total length,
//!    IPv6 payload length); an IPv6 first fragment that does not hold the whole header
//!    chain up to and including the upper-layer header (RFC 7112), or holds a second
//!    Fragment header.
//! 4. Fragments belong together by (source, destination, protocol, identification) for
//!    IPv4 and (source, destination, identification) for IPv6 (RFC 8200 §4.5).
//! 5. An exact copy of a held fragment (same offset, same payload, same M flag) is
//!    dropped alone (`fragment_duplicate`): the network duplicates packets, and RFC 8200
//!    §4.5 allows keeping the datagram.
//! 6. A fragment that contradicts its datagram drops the whole datagram, the new
//!    fragment and every held one counted under `fragment_invalid`: a second last
//!    fragment with another end, a fragment beyond the end the last fragment gave, a
//!    last fragment ending before data already held, a datagram that would exceed the
//!    length limit with the first fragment's header, or ECN codepoints that mix Not-ECT
//!    with ECT or CE (RFC 3168 §5.3).
//! 7. A fragment that overlaps a held one without being its exact copy drops the whole
//!    datagram, every fragment counted under `fragment_overlap`. RFC 5722 requires this
//!    for IPv6; IPv4 is treated the same way, as Linux does since the FragmentSmack fixes
//!    (CVE-2018-5391): overlapping fragments have no legitimate use, choosing which copy
//!    of a byte wins is how the RFC 1858 and RFC 3128 attacks slip data past filters,
//!    and keeping the fragment list free of overlaps makes every insertion a binary
//!    search. (For ESP the ICV would reject a doctored datagram anyway; dropping it
//!    early costs nothing.) Fragments of a dropped datagram that arrive later start a
//!    new one, which cannot complete and times out.
//! 8. Limits: a fragment that would start a datagram beyond `max_datagrams`, give its
//!    datagram more than `max_fragments` fragments or raise the bytes held beyond
//!    `max_bytes` is refused alone (`fragment_limit`).
//! 9. Otherwise the fragment is held; when the datagram is whole (its last fragment and
//!    every byte before it held), it is assembled and returned. The first fragment's
//!    header (IPv4, options included) or unfragmentable part (IPv6) becomes the
//!    datagram's; its ECN field becomes CE if any fragment was CE (RFC 3168 §5.3).
//!
//! # Counters
//!
//! [`Reassembler::stats`] is an [`SaStats`]: `packets` and `bytes` count the datagrams
//! returned by [`Reassembly::Complete`] (atomic fragments included) and their bytes; every
//! dropped fragment (a packet) is counted once under its reason.
//!
//! Allocation: this is a slow path. A held fragment's payload (and the first
//! fragment's header) are copied into memory of their own; everything stays within
//! the limits above.

use crate::buffer::PacketBuf;
use crate::error::{DropReason, Error, FragmentError, Malformed};
use crate::packet::{self, IPV6_HEADER_LEN, IpVersion};
use crate::sa::SaStats;
use core::fmt;
use core::time::Duration;
use std::collections::HashMap;

/// The largest value of the IPv4 total length and the IPv6 payload length.
const MAX_LENGTH_FIELD: usize = 65_535;

/// The longest datagram a [`Reassembler`] returns: an IPv6 header and a 65,535-byte
/// payload (an IPv4 datagram is at most 65,535 bytes). A buffer of this many bytes from
/// the fragment's offset always has room for [`Reassembler::insert_in_place`].
pub const MAX_DATAGRAM_LEN: usize = IPV6_HEADER_LEN + MAX_LENGTH_FIELD;

/// The limits of a [`Reassembler`]. Start from [`ReassemblyLimits::DEFAULT`] (also
/// `Default`) and change what you need with the `with_*` methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReassemblyLimits {
    /// Bytes held at most: each held fragment counts its IP length plus
    /// [`Reassembler::FRAGMENT_OVERHEAD`]. To reassemble the largest datagrams it must
    /// be at least 65,535 bytes plus the overhead of their fragments. Default 4 MiB
    /// (Linux's `ipfrag_high_thresh`).
    pub max_bytes: usize,
    /// Datagrams in progress at most. Default 1,024.
    pub max_datagrams: usize,
    /// Fragments held per datagram at most (a datagram that needs more never
    /// completes). Default 64: a 9,000-byte jumbo frame over a 1,280-byte path needs 8,
    /// and an ESP packet cut at IPv4's 576-byte minimum MTU 17.
    pub max_fragments: usize,
    /// How long a datagram may take to complete, from its first fragment, on the
    /// caller's clock. Default 30 s (Linux's `ipfrag_time`; RFC 8200 §4.5 abandons
    /// reassembly after 60 s at most).
    pub lifetime: Duration,
}

impl ReassemblyLimits {
    /// 4 MiB, 1,024 datagrams, 64 fragments per datagram, 30 seconds.
    pub const DEFAULT: ReassemblyLimits = ReassemblyLimits {
        max_bytes: 4 << 20,
        max_datagrams: 1024,
        max_fragments: 64,
        lifetime: Duration::from_secs(30),
    };

    /// The same limits with `max_bytes` bytes held at most.
    pub const fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The same limits with `max_datagrams` datagrams in progress at most.
    pub const fn with_max_datagrams(mut self, max_datagrams: usize) -> Self {
        self.max_datagrams = max_datagrams;
        self
    }

    /// The same limits with `max_fragments` fragments per datagram at most.
    pub const fn with_max_fragments(mut self, max_fragments: usize) -> Self {
        self.max_fragments = max_fragments;
        self
    }

    /// The same limits with a datagram lifetime of `lifetime`.
    pub const fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What [`Reassembler::insert`] did with a packet that it did not drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reassembly<'a> {
    /// Not a fragment (an IPv4 packet without MF and offset, an IPv6 packet without a
    /// Fragment header): process the packet as it is.
    NotFragment,
    /// A fragment, copied and held until its datagram completes; nothing to do yet.
    Held,
    /// The whole datagram this fragment completed (or an IPv6 atomic fragment without
    /// its Fragment header), a valid IP packet of exactly this length.
    Complete(&'a [u8]),
}

/// Which datagram a fragment belongs to (RFC 791; RFC 8200 §4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Key {
    V4 {
        src: [u8; 4],
        dst: [u8; 4],
        protocol: u8,
        id: u16,
    },
    V6 {
        src: [u8; 16],
        dst: [u8; 16],
        id: u32,
    },
}

impl Key {
    fn version(&self) -> IpVersion {
        match self {
            Key::V4 { .. } => IpVersion::V4,
            Key::V6 { .. } => IpVersion::V6,
        }
    }
}

/// A fragment, parsed (borrowing the packet).
struct Fragment<'p> {
    key: Key,
    /// The IPv4 header (options included) or the IPv6 unfragmentable part.
    head: &'p [u8],
    /// IPv6: where in `head` the byte naming the Fragment header is.
    next_header_at: usize,
    /// IPv6: the Fragment header's next header.
    next_header: u8,
    /// Offset of the payload in the datagram's payload (fragmentable part).
    start: usize,
    payload: &'p [u8],
    /// M flag clear.
    last: bool,
    /// The ECN codepoint.
    ecn: u8,
    /// The fragment's IP length (what it is charged, with the overhead).
    wire_len: usize,
}

impl Fragment<'_> {
    fn end(&self) -> usize {
        self.start + self.payload.len()
    }
}

/// The bytes of a datagram's head that its length field counts: the IPv4 header
/// (counted in the total length), or the IPv6 extension headers of the unfragmentable
/// part (counted in the payload length).
fn counted_head(version: IpVersion, head_len: usize) -> usize {
    match version {
        IpVersion::V4 => head_len,
        IpVersion::V6 => head_len - IPV6_HEADER_LEN,
    }
}

/// An IPv6 atomic fragment: positions in the packet.
struct Atomic {
    /// Offset of the Fragment header.
    at: usize,
    next_header_at: usize,
    next_header: u8,
    total_len: usize,
}

impl Atomic {
    /// The packet's length without its Fragment header.
    fn out_len(&self) -> usize {
        self.total_len - 8
    }
}

/// What a packet is.
enum Class<'p> {
    Whole,
    Atomic(Atomic),
    Fragment(Fragment<'p>),
}

fn invalid() -> Error {
    Error::Fragment(FragmentError::Invalid)
}

/// Classifies `pkt` and checks what a fragment can be checked for on its own.
fn classify(pkt: &[u8]) -> Result<Class<'_>, Error> {
    let ip = packet::parse_ip(pkt).map_err(Error::Malformed)?;
    let f = match ip.version {
        IpVersion::V4 => {
            if !ip.is_fragment {
                return Ok(Class::Whole);
            }
            if !packet::ipv4_checksum_ok(&pkt[..ip.header_len]) {
                return Err(Error::Malformed(Malformed::BadIpChecksum));
            }
            let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
            Fragment {
                key: Key::V4 {
                    src: pkt[12..16].try_into().expect("4 bytes"),
                    dst: pkt[16..20].try_into().expect("4 bytes"),
                    protocol: pkt[9],
                    id: u16::from_be_bytes([pkt[4], pkt[5]]),
                },
                head: &pkt[..ip.header_len],
                next_header_at: 9,
                next_header: pkt[9],
                start: usize::from(frag & 0x1fff) * 8,
                payload: &pkt[ip.header_len..ip.total_len],
                last: frag & 0x2000 == 0,
                ecn: ip.tos & 0b11,
                wire_len: ip.total_len,
            }
        }
        IpVersion::V6 => {
            let Some(fh) = packet::ipv6_fragment(pkt, ip.total_len).map_err(Error::Malformed)?
            else {
                return Ok(Class::Whole);
            };
            let payload = &pkt[fh.at + 8..ip.total_len];
            if fh.offset == 0 && !header_chain_complete(fh.next_header, payload) {
                return Err(invalid());
            }
            if fh.is_atomic() {
                return Ok(Class::Atomic(Atomic {
                    at: fh.at,
                    next_header_at: fh.next_header_at,
                    next_header: fh.next_header,
                    total_len: ip.total_len,
                }));
            }
            Fragment {
                key: Key::V6 {
                    src: pkt[8..24].try_into().expect("16 bytes"),
                    dst: pkt[24..40].try_into().expect("16 bytes"),
                    id: fh.id,
                },
                head: &pkt[..fh.at],
                next_header_at: fh.next_header_at,
                next_header: fh.next_header,
                start: fh.offset,
                payload,
                last: !fh.more,
                ecn: ip.tos & 0b11,
                wire_len: ip.total_len,
            }
        }
    };
    let len = f.payload.len();
    if len == 0
        || (!f.last && !len.is_multiple_of(8))
        || counted_head(f.key.version(), f.head.len()) + f.end() > MAX_LENGTH_FIELD
    {
        return Err(invalid());
    }
    Ok(Class::Fragment(f))
}

/// RFC 7112: does the first fragment's payload `p`, whose first header is `nh`, hold the
/// whole header chain, up to and including the upper-layer header?
fn header_chain_complete(mut nh: u8, p: &[u8]) -> bool {
    let mut at = 0usize;
    for _ in 0..16 {
        let len = match nh {
            // Routing, Destination Options: (length + 1) * 8 bytes.
            43 | 60 => match p.get(at + 1) {
                Some(&l) => (usize::from(l) + 1) * 8,
                None => return false,
            },
            // AH (RFC 4302): (length + 2) * 4 bytes.
            51 => match p.get(at + 1) {
                Some(&l) => (usize::from(l) + 2) * 4,
                None => return false,
            },
            // Hop-by-Hop only follows the IPv6 header; a second Fragment header is not
            // a valid chain.
            0 | 44 => return false,
            // Upper layers: the fixed part of their header must be there.
            packet::IPPROTO_TCP => return p.len() >= at + 20,
            packet::IPPROTO_UDP | packet::IPPROTO_ESP => return p.len() >= at + 8,
            packet::IPPROTO_ICMPV6 => return p.len() >= at + 4,
            // No next header, or an upper layer whose header length is not known here.
            _ => return true,
        };
        if p.len() < at + len {
            return false;
        }
        nh = p[at];
        at += len;
    }
    false
}

/// A held fragment's payload.
struct Piece {
    start: usize,
    last: bool,
    data: Box<[u8]>,
}

impl Piece {
    fn end(&self) -> usize {
        self.start + self.data.len()
    }
}

/// A datagram in progress.
struct Datagram {
    /// The `now` of its first-arriving fragment.
    created: Duration,
    /// The first fragment's head, once it arrived.
    head: Option<Box<[u8]>>,
    /// IPv6: from the first fragment.
    next_header_at: usize,
    next_header: u8,
    /// The payload's length, once the last fragment arrived.
    end: Option<usize>,
    /// The largest end of any held fragment.
    max_end: usize,
    /// The held fragments in offset order, never overlapping.
    pieces: Vec<Piece>,
    /// Payload bytes held.
    payload: usize,
    /// Bytes charged against the limit.
    charged: usize,
    /// ECN codepoints seen, one bit each.
    ecn_seen: u8,
}

impl Datagram {
    fn new(created: Duration) -> Self {
        Datagram {
            created,
            head: None,
            next_header_at: 0,
            next_header: 0,
            end: None,
            max_end: 0,
            pieces: Vec::new(),
            payload: 0,
            charged: 0,
            ecn_seen: 0,
        }
    }

    /// Where a fragment starting at `start` goes in `pieces`.
    fn position(&self, start: usize) -> usize {
        self.pieces.partition_point(|p| p.start < start)
    }

    fn is_duplicate(&self, f: &Fragment<'_>) -> bool {
        self.pieces
            .get(self.position(f.start))
            .is_some_and(|p| p.start == f.start && p.last == f.last && *p.data == *f.payload)
    }

    /// Rule 6: does `f` contradict what the held fragments say?
    fn contradicts(&self, f: &Fragment<'_>, version: IpVersion) -> bool {
        let end = f.end();
        let disagrees = if f.last {
            self.end.is_some_and(|e| e != end) || end < self.max_end
        } else {
            self.end.is_some_and(|e| end > e)
        };
        let head_len = match (&self.head, f.start) {
            (Some(h), _) => Some(h.len()),
            (None, 0) => Some(f.head.len()),
            (None, _) => None,
        };
        let longest = end.max(self.max_end);
        let too_long =
            head_len.is_some_and(|h| counted_head(version, h) + longest > MAX_LENGTH_FIELD);
        let ecn = self.ecn_seen | 1 << f.ecn;
        let ecn_mix = ecn & 1 != 0 && ecn & !1 != 0;
        disagrees || too_long || ecn_mix
    }

    fn overlaps(&self, f: &Fragment<'_>) -> bool {
        let i = self.position(f.start);
        let before = i
            .checked_sub(1)
            .is_some_and(|j| self.pieces[j].end() > f.start);
        let after = self.pieces.get(i).is_some_and(|p| p.start < f.end());
        before || after
    }

    /// Would holding `f` complete the datagram? Its length if so.
    fn completed_by(&self, f: &Fragment<'_>) -> Option<usize> {
        let end = if f.last { Some(f.end()) } else { self.end }?;
        let head = match &self.head {
            Some(h) => h.len(),
            None if f.start == 0 => f.head.len(),
            None => return None,
        };
        (self.payload + f.payload.len() == end).then_some(head + end)
    }

    /// Holds `f` (checked: no overlap), charging `charge` bytes.
    fn hold(&mut self, f: &Fragment<'_>, charge: usize) {
        if f.start == 0 {
            self.head = Some(f.head.into());
            self.next_header_at = f.next_header_at;
            self.next_header = f.next_header;
        }
        if f.last {
            self.end = Some(f.end());
        }
        self.max_end = self.max_end.max(f.end());
        self.ecn_seen |= 1 << f.ecn;
        self.payload += f.payload.len();
        self.charged += charge;
        let at = self.position(f.start);
        self.pieces.insert(
            at,
            Piece {
                start: f.start,
                last: f.last,
                data: f.payload.into(),
            },
        );
    }

    /// Writes the whole datagram into `out` (exactly its length) and fixes its header.
    fn assemble(&self, version: IpVersion, out: &mut [u8]) {
        let head = self.head.as_deref().unwrap_or_default();
        let h = head.len();
        out[..h].copy_from_slice(head);
        for p in &self.pieces {
            out[h + p.start..h + p.end()].copy_from_slice(&p.data);
        }
        let ce = self.ecn_seen & 1 << packet::ECN_CE != 0;
        match version {
            IpVersion::V4 => {
                // MF and the offset cleared; DF and the reserved bit as the first
                // fragment had them.
                out[6] &= 0xc0;
                out[7] = 0;
                if ce {
                    out[1] |= packet::ECN_CE;
                }
                let len = out.len();
                packet::set_ip_length(out, IpVersion::V4, h, len);
            }
            IpVersion::V6 => {
                out[self.next_header_at] = self.next_header;
                if ce {
                    let tc = ((out[0] & 0x0f) << 4) | (out[1] >> 4);
                    packet::set_tos(out, IpVersion::V6, tc | packet::ECN_CE);
                }
                let len = out.len();
                packet::set_ip_length(out, IpVersion::V6, IPV6_HEADER_LEN, len);
            }
        }
    }
}

/// What [`Reassembler::take`] decided.
enum Taken {
    NotFragment,
    Held,
    Atomic(Atomic),
    /// The completed datagram (removed from the table) and its length.
    Complete(IpVersion, Datagram, usize),
}

/// Puts IP fragments back together, within [`ReassemblyLimits`]; see the
/// [module documentation](self) for the rules.
///
/// Thread safety: every call changes it, so one thread owns it at a time (it may move
/// between threads), like a [`SecurityAssociation`](crate::SecurityAssociation).
pub struct Reassembler {
    limits: ReassemblyLimits,
    datagrams: HashMap<Key, Datagram>,
    /// Bytes charged for everything held.
    held_bytes: usize,
    /// Fragments held.
    held_fragments: usize,
    /// The earliest end of a lifetime among the datagrams (`Duration::MAX`: none).
    next_deadline: Duration,
    stats: SaStats,
    /// The output of [`Reassembler::insert`].
    out: Vec<u8>,
}

impl fmt::Debug for Reassembler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reassembler")
            .field("limits", &self.limits)
            .field("datagrams", &self.datagrams.len())
            .field("held_fragments", &self.held_fragments)
            .field("held_bytes", &self.held_bytes)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Default for Reassembler {
    fn default() -> Self {
        Reassembler::new(ReassemblyLimits::DEFAULT)
    }
}

impl Reassembler {
    /// Bytes charged for each held fragment on top of its IP length: the bookkeeping of
    /// one fragment (its entry, its allocation).
    pub const FRAGMENT_OVERHEAD: usize = 64;

    /// An empty reassembler with these limits.
    pub fn new(limits: ReassemblyLimits) -> Self {
        Reassembler {
            limits,
            datagrams: HashMap::new(),
            held_bytes: 0,
            held_fragments: 0,
            next_deadline: Duration::MAX,
            stats: SaStats::default(),
            out: Vec::new(),
        }
    }

    /// The limits.
    pub fn limits(&self) -> ReassemblyLimits {
        self.limits
    }

    /// Datagrams reassembled (`packets`, `bytes`) and fragments dropped, one counter per
    /// reason.
    pub fn stats(&self) -> &SaStats {
        &self.stats
    }

    /// Bytes charged for the fragments held (at most `limits().max_bytes`).
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Fragments held.
    pub fn held_fragments(&self) -> usize {
        self.held_fragments
    }

    /// Datagrams in progress.
    pub fn datagrams(&self) -> usize {
        self.datagrams.len()
    }

    /// Replaces the limits. What is held beyond the new ones is dropped, oldest datagrams
    /// first, each fragment counted under `fragment_limit`; lifetimes run on from each
    /// datagram's first fragment. Returns how many fragments were dropped.
    pub fn set_limits(&mut self, limits: ReassemblyLimits) -> usize {
        self.limits = limits;
        let mut by_age: Vec<(Duration, Key)> = self
            .datagrams
            .iter()
            .map(|(k, d)| (d.created, *k))
            .collect();
        by_age.sort_unstable();
        let mut dropped = 0;
        let mut kept = by_age.len();
        for (_, key) in &by_age {
            let over = kept > limits.max_datagrams || self.held_bytes > limits.max_bytes;
            let too_many = self.datagrams[key].pieces.len() > limits.max_fragments;
            if over || too_many {
                dropped += self.remove(key).pieces.len();
                kept -= 1;
            }
        }
        self.stats
            .count_drops(DropReason::FragmentLimit, dropped as u64);
        self.next_deadline = self.earliest_deadline();
        dropped
    }

    /// Drops every datagram whose lifetime has ended at `now` (each held fragment
    /// counted under `fragment_timeout`) and returns how many fragments were dropped.
    /// [`Self::insert`] does this first on every call; call this when no fragments come,
    /// to free what is held.
    pub fn expire(&mut self, now: Duration) -> usize {
        if now < self.next_deadline {
            return 0;
        }
        let lifetime = self.limits.lifetime;
        let (mut dropped, mut freed, mut next) = (0, 0, Duration::MAX);
        self.datagrams.retain(|_, d| {
            let deadline = d.created.saturating_add(lifetime);
            if now >= deadline {
                dropped += d.pieces.len();
                freed += d.charged;
                false
            } else {
                next = next.min(deadline);
                true
            }
        });
        self.held_bytes -= freed;
        self.held_fragments -= dropped;
        self.next_deadline = next;
        self.stats
            .count_drops(DropReason::FragmentTimeout, dropped as u64);
        dropped
    }

    /// Takes `packet` (one IP packet; bytes after its own length are ignored) at time
    /// `now`: see [`Reassembly`] for the answers, the [module documentation](self) for
    /// the rules. A completed datagram is returned in a buffer of the reassembler, valid
    /// until the next call. Every dropped fragment is counted under its reason.
    pub fn insert(&mut self, packet: &[u8], now: Duration) -> Result<Reassembly<'_>, Error> {
        match self.take(packet, now, usize::MAX)? {
            Taken::NotFragment => Ok(Reassembly::NotFragment),
            Taken::Held => Ok(Reassembly::Held),
            Taken::Atomic(a) => {
                self.out.clear();
                self.out.extend_from_slice(&packet[..a.at]);
                self.out.extend_from_slice(&packet[a.at + 8..a.total_len]);
                fix_atomic(&mut self.out, &a);
                Ok(Reassembly::Complete(&self.out))
            }
            Taken::Complete(version, datagram, len) => {
                self.out.clear();
                self.out.resize(len, 0);
                datagram.assemble(version, &mut self.out);
                Ok(Reassembly::Complete(&self.out))
            }
        }
    }

    /// [`Self::insert`] for a packet in a caller's buffer: a completed datagram is
    /// written into `pkt`'s buffer at the fragment's offset and `pkt` describes it (an
    /// atomic fragment loses its Fragment header in place, its start moving 8 bytes
    /// on). When the datagram does not fit behind the offset, the fragment is refused
    /// with [`Error::NoTailroom`] (counted as `no_buffer_space`) and not taken: what was
    /// held stays, and the fragment may be offered again in a larger buffer. `pkt` is
    /// unchanged unless the answer is `Complete`.
    pub fn insert_in_place<'p>(
        &mut self,
        pkt: &'p mut PacketBuf<'_>,
        now: Duration,
    ) -> Result<Reassembly<'p>, Error> {
        let room = pkt.buffer().len() - pkt.offset();
        match self.take(pkt.data(), now, room)? {
            Taken::NotFragment => Ok(Reassembly::NotFragment),
            Taken::Held => Ok(Reassembly::Held),
            Taken::Atomic(a) => {
                let off = pkt.offset();
                let buf = pkt.buffer_mut();
                buf.copy_within(off..off + a.at, off + 8);
                let len = a.out_len();
                fix_atomic(&mut buf[off + 8..off + 8 + len], &a);
                pkt.set_window(off + 8, len);
                let pkt: &'p PacketBuf<'_> = pkt;
                Ok(Reassembly::Complete(pkt.data()))
            }
            Taken::Complete(version, datagram, len) => {
                let off = pkt.offset();
                datagram.assemble(version, &mut pkt.buffer_mut()[off..off + len]);
                pkt.set_window(off, len);
                let pkt: &'p PacketBuf<'_> = pkt;
                Ok(Reassembly::Complete(pkt.data()))
            }
        }
    }

    /// Counts `err` once and hands it back.
    fn refuse(&mut self, err: Error) -> Error {
        self.stats.count_drops(err.drop_reason(), 1);
        err
    }

    /// Removes a datagram from the table and its charge from the totals.
    fn remove(&mut self, key: &Key) -> Datagram {
        let d = self.datagrams.remove(key).expect("key held");
        self.held_bytes -= d.charged;
        self.held_fragments -= d.pieces.len();
        d
    }

    fn earliest_deadline(&self) -> Duration {
        let lifetime = self.limits.lifetime;
        self.datagrams
            .values()
            .map(|d| d.created.saturating_add(lifetime))
            .min()
            .unwrap_or(Duration::MAX)
    }

    /// Drops the datagram of `key` because of the fragment that was just offered: that
    /// fragment and every held one are counted under `error`'s reason.
    fn drop_datagram(&mut self, key: &Key, error: FragmentError) -> Error {
        let n = self.remove(key).pieces.len() + 1;
        self.stats.count_drops(error.drop_reason(), n as u64);
        Error::Fragment(error)
    }

    /// The decision for one packet; `room` is the space for a completed datagram. The
    /// state changes only when the answer is `Ok` (or a drop was counted).
    fn take(&mut self, packet: &[u8], now: Duration, room: usize) -> Result<Taken, Error> {
        self.expire(now);
        let f = match classify(packet) {
            Ok(Class::Whole) => return Ok(Taken::NotFragment),
            Ok(Class::Atomic(a)) => {
                self.stats.packets += 1;
                self.stats.bytes += a.out_len() as u64;
                return Ok(Taken::Atomic(a));
            }
            Ok(Class::Fragment(f)) => f,
            Err(e) => return Err(self.refuse(e)),
        };
        let version = f.key.version();
        let charge = f.wire_len + Self::FRAGMENT_OVERHEAD;
        let limits = self.limits;
        let over_bytes = self.held_bytes + charge > limits.max_bytes;
        let completes = match self.datagrams.get(&f.key) {
            Some(d) => {
                if d.is_duplicate(&f) {
                    return Err(self.refuse(Error::Fragment(FragmentError::Duplicate)));
                }
                if d.contradicts(&f, version) {
                    return Err(self.drop_datagram(&f.key, FragmentError::Invalid));
                }
                if d.overlaps(&f) {
                    return Err(self.drop_datagram(&f.key, FragmentError::Overlap));
                }
                if d.pieces.len() >= limits.max_fragments || over_bytes {
                    return Err(self.refuse(Error::Fragment(FragmentError::Limit)));
                }
                d.completed_by(&f)
            }
            None => {
                if self.datagrams.len() >= limits.max_datagrams
                    || limits.max_fragments == 0
                    || over_bytes
                {
                    return Err(self.refuse(Error::Fragment(FragmentError::Limit)));
                }
                // Only an unfragmented datagram completes with one fragment, and that
                // is not a fragment: a new datagram is always held.
                None
            }
        };
        if let Some(len) = completes
            && len > room
        {
            let have = packet.len();
            return Err(self.refuse(Error::NoTailroom {
                needed: len - have,
                available: room - have,
            }));
        }
        let d = self.datagrams.entry(f.key).or_insert_with(|| {
            let deadline = now.saturating_add(limits.lifetime);
            if deadline < self.next_deadline {
                self.next_deadline = deadline;
            }
            Datagram::new(now)
        });
        d.hold(&f, charge);
        self.held_bytes += charge;
        self.held_fragments += 1;
        match completes {
            None => Ok(Taken::Held),
            Some(len) => {
                let d = self.remove(&f.key);
                if self.datagrams.is_empty() {
                    self.next_deadline = Duration::MAX;
                }
                self.stats.packets += 1;
                self.stats.bytes += len as u64;
                Ok(Taken::Complete(version, d, len))
            }
        }
    }
}

/// Fixes an IPv6 atomic fragment copied without its Fragment header into `out`.
fn fix_atomic(out: &mut [u8], a: &Atomic) {
    out[a.next_header_at] = a.next_header;
    let len = out.len();
    packet::set_ip_length(out, IpVersion::V6, IPV6_HEADER_LEN, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(100);

    /// An IPv4 datagram of `n` payload bytes (protocol ESP), ID `id`, TOS `tos`.
    fn v4_datagram(id: u16, n: usize, tos: u8) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[1] = tos;
        p[2..4].copy_from_slice(&((20 + n) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&id.to_be_bytes());
        p[8] = 64;
        p[9] = packet::IPPROTO_ESP;
        p[12..16].copy_from_slice(&[192, 0, 2, 1]);
        p[16..20].copy_from_slice(&[198, 51, 100, 2]);
        p.extend((0..n).map(|i| (i * 31 + usize::from(id)) as u8));
        packet::set_ipv4_checksum(&mut p[..20]);
        p
    }

    /// The fragment of the IPv4 datagram `d` holding its payload `range`.
    fn v4_frag(d: &[u8], range: core::ops::Range<usize>, last: bool) -> Vec<u8> {
        let mut p = d[..20].to_vec();
        p.extend_from_slice(&d[20 + range.start..20 + range.end]);
        p[2..4].copy_from_slice(&((20 + range.len()) as u16).to_be_bytes());
        let frag = (range.start / 8) as u16 | if last { 0 } else { 0x2000 };
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        packet::set_ipv4_checksum(&mut p[..20]);
        p
    }

    /// An IPv6 datagram with a Hop-by-Hop header and `n` bytes of ESP.
    fn v6_datagram(n: usize, tc: u8) -> Vec<u8> {
        let mut p = vec![0u8; 48];
        p[0] = 0x60 | (tc >> 4);
        p[1] = tc << 4;
        p[4..6].copy_from_slice(&((8 + n) as u16).to_be_bytes());
        p[6] = 0; // Hop-by-Hop
        p[7] = 64;
        p[8] = 0x20;
        p[24] = 0x20;
        p[39] = 2;
        p[40] = packet::IPPROTO_ESP;
        p[42] = 1; // PadN
        p[43] = 4;
        p.extend((0..n).map(|i| (i * 17 + 5) as u8));
        p
    }

    /// The fragment of the IPv6 datagram `d` (48-byte unfragmentable part) holding
    /// `range` of its payload, with identification `id`.
    fn v6_frag(d: &[u8], range: core::ops::Range<usize>, last: bool, id: u32) -> Vec<u8> {
        let mut p = d[..48].to_vec();
        p[40] = 44;
        let off_m = ((range.start / 8) as u16) << 3 | u16::from(!last);
        p.extend_from_slice(&[packet::IPPROTO_ESP, 0]);
        p.extend_from_slice(&off_m.to_be_bytes());
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&d[48 + range.start..48 + range.end]);
        let plen = (p.len() - 40) as u16;
        p[4..6].copy_from_slice(&plen.to_be_bytes());
        p
    }

    fn complete(r: &mut Reassembler, p: &[u8], now: Duration) -> Vec<u8> {
        match r.insert(p, now) {
            Ok(Reassembly::Complete(d)) => d.to_vec(),
            other => panic!("expected a complete datagram, got {other:?}"),
        }
    }

    fn held(r: &mut Reassembler, p: &[u8], now: Duration) {
        assert_eq!(r.insert(p, now), Ok(Reassembly::Held));
    }

    fn frag_err(e: FragmentError) -> Result<Reassembly<'static>, Error> {
        Err(Error::Fragment(e))
    }

    #[test]
    fn ipv4_fragments_in_any_order_give_back_the_datagram() {
        let d = v4_datagram(7, 100, 0);
        let mut r = Reassembler::default();
        let whole = d.clone();
        assert_eq!(r.insert(&whole, T), Ok(Reassembly::NotFragment));
        held(&mut r, &v4_frag(&d, 48..100, true), T);
        held(&mut r, &v4_frag(&d, 0..24, false), T);
        assert_eq!((r.datagrams(), r.held_fragments()), (1, 2));
        assert_eq!(complete(&mut r, &v4_frag(&d, 24..48, false), T), d);
        assert_eq!(
            (r.datagrams(), r.held_fragments(), r.held_bytes()),
            (0, 0, 0)
        );
        assert_eq!((r.stats().packets, r.stats().bytes), (1, 120));
        assert_eq!(r.stats().dropped_total(), 0);
    }

    #[test]
    fn ipv6_fragments_lose_their_fragment_header() {
        let d = v6_datagram(200, 0);
        let mut r = Reassembler::default();
        held(&mut r, &v6_frag(&d, 0..96, false, 9), T);
        assert_eq!(complete(&mut r, &v6_frag(&d, 96..200, true, 9), T), d);
        // An atomic fragment: returned at once, even with a datagram of its ID held.
        held(&mut r, &v6_frag(&d, 0..96, false, 9), T);
        assert_eq!(complete(&mut r, &v6_frag(&d, 0..200, true, 9), T), d);
        assert_eq!(r.datagrams(), 1);
        assert_eq!(r.stats().packets, 2);
    }

    #[test]
    fn an_overlap_drops_the_whole_datagram_and_counts_every_fragment() {
        type Cut = fn(&[u8], core::ops::Range<usize>, bool) -> Vec<u8>;
        for v6 in [false, true] {
            let (d, f): (Vec<u8>, Cut) = if v6 {
                (v6_datagram(160, 0), |d, r, l| v6_frag(d, r, l, 1))
            } else {
                (v4_datagram(1, 160, 0), v4_frag)
            };
            let mut r = Reassembler::default();
            held(&mut r, &f(&d, 0..40, false), T);
            held(&mut r, &f(&d, 80..120, false), T);
            assert_eq!(
                r.insert(&f(&d, 32..48, false), T),
                frag_err(FragmentError::Overlap)
            );
            assert_eq!(r.stats().dropped(DropReason::FragmentOverlap), 3);
            assert_eq!((r.datagrams(), r.held_bytes()), (0, 0));
            // The rest of that datagram starts a new one, which cannot complete.
            held(&mut r, &f(&d, 120..160, true), T);
            assert_eq!(r.expire(T + Duration::from_secs(30)), 1);
            assert_eq!(r.stats().dropped(DropReason::FragmentTimeout), 1);
        }
    }

    #[test]
    fn an_exact_duplicate_drops_only_the_copy() {
        let d = v4_datagram(2, 64, 0);
        let mut r = Reassembler::default();
        held(&mut r, &v4_frag(&d, 0..32, false), T);
        let bytes = r.held_bytes();
        assert_eq!(
            r.insert(&v4_frag(&d, 0..32, false), T),
            frag_err(FragmentError::Duplicate)
        );
        assert_eq!(r.held_bytes(), bytes);
        // Same range, other bytes: an overlap, not a duplicate.
        let mut other = v4_frag(&d, 0..32, false);
        other[25] ^= 1;
        let mut r2 = Reassembler::default();
        held(&mut r2, &v4_frag(&d, 0..32, false), T);
        assert_eq!(r2.insert(&other, T), frag_err(FragmentError::Overlap));
        assert_eq!(complete(&mut r, &v4_frag(&d, 32..64, true), T), d);
        assert_eq!(r.stats().dropped(DropReason::FragmentDuplicate), 1);
    }

    #[test]
    fn fragments_that_cannot_be_valid_are_dropped_alone() {
        let d = v4_datagram(3, 200, 0);
        let mut r = Reassembler::default();
        held(&mut r, &v4_frag(&d, 0..16, false), T);
        // Non-last, not a multiple of 8.
        assert_eq!(
            r.insert(&v4_frag(&d, 16..30, false), T),
            frag_err(FragmentError::Invalid)
        );
        // No payload.
        assert_eq!(
            r.insert(&v4_frag(&d, 16..16, true), T),
            frag_err(FragmentError::Invalid)
        );
        // Ends beyond 65,535 bytes: offset 8184 * 8 + 100 + 20.
        let mut far = v4_frag(&d, 0..100, true);
        far[6..8].copy_from_slice(&8184u16.to_be_bytes());
        packet::set_ipv4_checksum(&mut far[..20]);
        assert_eq!(r.insert(&far, T), frag_err(FragmentError::Invalid));
        // A bad header checksum: malformed.
        let mut bad = v4_frag(&d, 16..24, false);
        bad[10] ^= 1;
        assert_eq!(
            r.insert(&bad, T),
            Err(Error::Malformed(Malformed::BadIpChecksum))
        );
        assert_eq!(r.stats().dropped(DropReason::FragmentInvalid), 3);
        assert_eq!(r.stats().dropped(DropReason::Malformed), 1);
        assert_eq!(r.held_fragments(), 1, "the held fragment stays");
        // RFC 7112: an IPv6 first fragment without the whole ESP header.
        let d6 = v6_datagram(64, 0);
        let mut first = v6_frag(&d6, 0..8, false, 5);
        first.truncate(first.len() - 4);
        first[5] -= 4;
        assert_eq!(r.insert(&first, T), frag_err(FragmentError::Invalid));
    }

    #[test]
    fn fragments_that_contradict_their_datagram_drop_it() {
        let d = v4_datagram(4, 96, 0);
        let mut r = Reassembler::default();
        held(&mut r, &v4_frag(&d, 0..16, false), T);
        held(&mut r, &v4_frag(&d, 48..96, true), T);
        // A second last fragment with another end.
        assert_eq!(
            r.insert(&v4_frag(&d, 16..32, true), T),
            frag_err(FragmentError::Invalid)
        );
        assert_eq!(r.stats().dropped(DropReason::FragmentInvalid), 3);
        assert_eq!(r.datagrams(), 0);
        // A fragment beyond the end the last fragment gave.
        held(&mut r, &v4_frag(&d, 16..48, true), T);
        assert_eq!(
            r.insert(&v4_frag(&d, 48..96, false), T),
            frag_err(FragmentError::Invalid)
        );
        assert_eq!(r.stats().dropped(DropReason::FragmentInvalid), 5);
    }

    #[test]
    fn ecn_marks_are_combined_as_rfc_3168_says() {
        let ect0 = v4_datagram(5, 64, 0b10);
        let ce = v4_datagram(5, 64, 0b11);
        let mut r = Reassembler::default();
        held(&mut r, &v4_frag(&ect0, 0..32, false), T);
        let out = complete(&mut r, &v4_frag(&ce, 32..64, true), T);
        assert_eq!(
            out[1] & 0b11,
            0b11,
            "CE on one fragment: CE on the datagram"
        );
        assert!(packet::ipv4_checksum_ok(&out[..20]));
        let not_ect = v4_datagram(5, 64, 0);
        held(&mut r, &v4_frag(&ect0, 0..32, false), T);
        assert_eq!(
            r.insert(&v4_frag(&not_ect, 32..64, true), T),
            frag_err(FragmentError::Invalid)
        );
        let d6 = v6_datagram(64, 0b10);
        let d6ce = v6_datagram(64, 0b11);
        held(&mut r, &v6_frag(&d6, 0..32, false, 3), T);
        assert_eq!(complete(&mut r, &v6_frag(&d6ce, 32..64, true, 3), T), d6ce);
    }

    #[test]
    fn limits_refuse_the_new_fragment_and_keep_what_is_held() {
        let limits = ReassemblyLimits::DEFAULT
            .with_max_datagrams(2)
            .with_max_fragments(2);
        let mut r = Reassembler::new(limits);
        let (a, b, c) = (
            v4_datagram(10, 64, 0),
            v4_datagram(11, 64, 0),
            v4_datagram(12, 64, 0),
        );
        held(&mut r, &v4_frag(&a, 0..8, false), T);
        held(&mut r, &v4_frag(&b, 0..8, false), T);
        assert_eq!(
            r.insert(&v4_frag(&c, 0..8, false), T),
            frag_err(FragmentError::Limit)
        );
        held(&mut r, &v4_frag(&a, 8..16, false), T);
        assert_eq!(
            r.insert(&v4_frag(&a, 16..64, true), T),
            frag_err(FragmentError::Limit)
        );
        assert_eq!((r.datagrams(), r.held_fragments()), (2, 3));
        // Bytes: room for exactly two 28-byte fragments.
        let limits =
            ReassemblyLimits::DEFAULT.with_max_bytes(2 * (28 + Reassembler::FRAGMENT_OVERHEAD));
        let mut r = Reassembler::new(limits);
        held(&mut r, &v4_frag(&a, 0..8, false), T);
        held(&mut r, &v4_frag(&b, 0..8, false), T);
        assert_eq!(
            r.insert(&v4_frag(&a, 8..16, false), T),
            frag_err(FragmentError::Limit)
        );
        assert_eq!(r.held_bytes(), limits.max_bytes);
        assert_eq!(r.stats().dropped(DropReason::FragmentLimit), 1);
        // Lowering the limits drops the oldest datagrams.
        assert_eq!(r.set_limits(limits.with_max_datagrams(1)), 1);
        assert_eq!(r.datagrams(), 1);
        assert_eq!(r.stats().dropped(DropReason::FragmentLimit), 2);
    }

    #[test]
    fn datagrams_time_out_on_the_callers_clock() {
        let d = v4_datagram(20, 64, 0);
        let mut r =
            Reassembler::new(ReassemblyLimits::DEFAULT.with_lifetime(Duration::from_secs(5)));
        held(&mut r, &v4_frag(&d, 0..8, false), T);
        held(
            &mut r,
            &v4_frag(&d, 8..16, false),
            T + Duration::from_secs(4),
        );
        held(
            &mut r,
            &v4_frag(&d, 16..24, false),
            T + Duration::from_secs(4),
        );
        assert_eq!(r.expire(T + Duration::from_millis(4999)), 0);
        // The next insert drops the expired datagram first: its last fragment starts anew.
        held(
            &mut r,
            &v4_frag(&d, 24..64, true),
            T + Duration::from_secs(5),
        );
        assert_eq!(r.stats().dropped(DropReason::FragmentTimeout), 3);
        assert_eq!(r.held_fragments(), 1);
        // A clock that goes backwards breaks nothing.
        assert_eq!(r.expire(Duration::ZERO), 0);
        assert_eq!(r.expire(Duration::MAX), 1);
        assert_eq!(r.held_bytes(), 0);
    }

    #[test]
    fn in_place_writes_the_datagram_into_the_buffer_or_refuses_without_losing_anything() {
        let d = v4_datagram(30, 300, 0);
        let mut r = Reassembler::default();
        held(&mut r, &v4_frag(&d, 0..160, false), T);
        let last = v4_frag(&d, 160..300, true);
        let mut small = vec![0u8; 8 + last.len() + 100];
        small[8..8 + last.len()].copy_from_slice(&last);
        let mut pkt = PacketBuf::new(&mut small, 8, last.len()).unwrap();
        assert_eq!(
            r.insert_in_place(&mut pkt, T),
            Err(Error::NoTailroom {
                needed: 320 - last.len(),
                available: 100
            })
        );
        assert_eq!((pkt.offset(), pkt.len()), (8, last.len()));
        assert_eq!(r.stats().dropped(DropReason::NoBufferSpace), 1);
        assert_eq!(r.held_fragments(), 1, "the held fragment stays");
        let mut big = vec![0u8; 8 + 320];
        big[8..8 + last.len()].copy_from_slice(&last);
        let mut pkt = PacketBuf::new(&mut big, 8, last.len()).unwrap();
        assert_eq!(
            r.insert_in_place(&mut pkt, T),
            Ok(Reassembly::Complete(&d[..]))
        );
        assert_eq!((pkt.offset(), pkt.len()), (8, 320));
        // An atomic IPv6 fragment loses its Fragment header in place.
        let d6 = v6_datagram(40, 0);
        let atomic = v6_frag(&d6, 0..40, true, 1);
        let mut buf = vec![0u8; 4 + atomic.len()];
        buf[4..].copy_from_slice(&atomic);
        let mut pkt = PacketBuf::new(&mut buf, 4, atomic.len()).unwrap();
        assert_eq!(
            r.insert_in_place(&mut pkt, T),
            Ok(Reassembly::Complete(&d6[..]))
        );
        assert_eq!(pkt.offset(), 12);
    }

    #[test]
    fn garbage_is_malformed_and_counted() {
        let mut r = Reassembler::default();
        assert_eq!(
            r.insert(&[], T),
            Err(Error::Malformed(Malformed::Truncated))
        );
        assert_eq!(
            r.insert(&[0x45; 10], T),
            Err(Error::Malformed(Malformed::Truncated))
        );
        assert_eq!(
            r.insert(&[0x75; 40], T),
            Err(Error::Malformed(Malformed::BadIpVersion))
        );
        assert_eq!(r.stats().dropped(DropReason::Malformed), 3);
    }
}
