//! Typed errors: why a packet was refused, and why a configuration was rejected.
//!
//! Packet errors ([`Error`]) are small `Copy` values so that the burst path can report
//! one per packet without allocating. Every packet error maps to exactly one
//! [`DropReason`], and every drop bumps the counter of that reason in
//! [`SaStats`](crate::SaStats): nothing is dropped silently.

use core::fmt;

/// Why a packet was dropped. Each reason has its own counter in [`SaStats`](crate::SaStats).
///
/// The string forms ([`DropReason::as_str`]) are stable: they are the keys of the
/// Python `sa.stats` dictionary, the C stats struct fields and the CLI's JSON output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DropReason {
    /// The integrity check value did not verify.
    AuthFailed,
    /// The sequence number was already received (inside the replay window).
    Replay,
    /// The sequence number is older than the replay window's bottom.
    TooOld,
    /// The packet could not be parsed: truncated, bad lengths, not ESP, bad IP header.
    Malformed,
    /// The ICV verified but the RFC 4303 padding bytes were not 1, 2, 3, ...
    BadPadding,
    /// The ICV verified but the next-header field names nothing this SA may carry.
    BadNextHeader,
    /// The SPI is not the SA's (or, in a SAD, not known at all).
    UnknownSpi,
    /// The decapsulated packet does not match the selectors of the SA's policy.
    PolicyMismatch,
    /// A hard lifetime (bytes, packets or time) has been reached.
    LifetimeExpired,
    /// The outbound sequence number space is exhausted; the SA must be replaced.
    SequenceOverflow,
    /// An RFC 4303 dummy packet (next header 59): dropped on purpose, counted here.
    Dummy,
    /// The caller's buffer had too little headroom or tailroom for the transform.
    NoBufferSpace,
    /// The SPD said DISCARD (or no policy matched, which means DISCARD).
    PolicyDiscard,
    /// A NAT-T keepalive (RFC 3948 §2.3: one 0xFF byte in UDP) was handed to an SA: it
    /// carries no ESP and is consumed here.
    NatKeepalive,
    /// The outer header said CE (congestion experienced) but the inner packet is not
    /// ECN-capable: RFC 6040 §4.2 requires the packet to be dropped.
    EcnCeOnNotEct,
    /// A packet was given to an SA of the other direction (encrypt on an inbound SA,
    /// decrypt on an outbound one).
    WrongDirection,
    /// The packet would exceed the path MTU after ESP and may not be fragmented (DF set,
    /// or IPv6): refused, and an ICMP "too big" can be built for its sender
    /// (RFC 4301 §8.2).
    TooBig,
    /// A fragment's datagram was not complete within the reassembly lifetime.
    FragmentTimeout,
    /// A fragment overlapped another of its datagram (RFC 5722; RFC 1858 attacks): the
    /// whole datagram is dropped.
    FragmentOverlap,
    /// An exact copy of a fragment already held (RFC 8200 §4.5): only the copy is dropped.
    FragmentDuplicate,
    /// A reassembly limit (memory, datagrams in progress, fragments per datagram) was
    /// reached.
    FragmentLimit,
    /// A fragment that cannot be part of a valid datagram: a non-last fragment whose
    /// length is not a multiple of 8, a datagram beyond 65,535 bytes, ends that disagree.
    FragmentInvalid,
    /// A first fragment too short to hold the transport ports or ICMP type the policy
    /// decides on (RFC 3128 "tiny fragments").
    FragmentTooShort,
    /// A non-first fragment whose policy cannot be decided: its first fragment was not
    /// seen, and a port-specific policy could cover it (RFC 4301 §7).
    FragmentUnresolved,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 24] = [
        DropReason::AuthFailed,
        DropReason::Replay,
        DropReason::TooOld,
        DropReason::Malformed,
        DropReason::BadPadding,
        DropReason::BadNextHeader,
        DropReason::UnknownSpi,
        DropReason::PolicyMismatch,
        DropReason::LifetimeExpired,
        DropReason::SequenceOverflow,
        DropReason::Dummy,
        DropReason::NoBufferSpace,
        DropReason::PolicyDiscard,
        DropReason::NatKeepalive,
        DropReason::EcnCeOnNotEct,
        DropReason::WrongDirection,
        DropReason::TooBig,
        DropReason::FragmentTimeout,
        DropReason::FragmentOverlap,
        DropReason::FragmentDuplicate,
        DropReason::FragmentLimit,
        DropReason::FragmentInvalid,
        DropReason::FragmentTooShort,
        DropReason::FragmentUnresolved,
    ];

    /// The stable snake_case name of the reason (`"auth_failed"`, `"replay"`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::AuthFailed => "auth_failed",
            DropReason::Replay => "replay",
            DropReason::TooOld => "too_old",
            DropReason::Malformed => "malformed",
            DropReason::BadPadding => "bad_padding",
            DropReason::BadNextHeader => "bad_next_header",
            DropReason::UnknownSpi => "unknown_spi",
            DropReason::PolicyMismatch => "policy_mismatch",
            DropReason::LifetimeExpired => "lifetime_expired",
            DropReason::SequenceOverflow => "sequence_overflow",
            DropReason::Dummy => "dummy",
            DropReason::NoBufferSpace => "no_buffer_space",
            DropReason::PolicyDiscard => "policy_discard",
            DropReason::NatKeepalive => "nat_keepalive",
            DropReason::EcnCeOnNotEct => "ecn_ce_not_ect",
            DropReason::WrongDirection => "wrong_direction",
            DropReason::TooBig => "too_big",
            DropReason::FragmentTimeout => "fragment_timeout",
            DropReason::FragmentOverlap => "fragment_overlap",
            DropReason::FragmentDuplicate => "fragment_duplicate",
            DropReason::FragmentLimit => "fragment_limit",
            DropReason::FragmentInvalid => "fragment_invalid",
            DropReason::FragmentTooShort => "fragment_too_short",
            DropReason::FragmentUnresolved => "fragment_unresolved",
        }
    }

    /// Position of this reason in [`DropReason::ALL`] (and in the counter array).
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What exactly was wrong with a malformed packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Malformed {
    /// Fewer bytes than the headers or the ICV need.
    Truncated,
    /// The IP version nibble is neither 4 nor 6.
    BadIpVersion,
    /// An IPv4 header length, IPv4 total length or IPv6 payload length disagrees with
    /// the bytes present.
    BadIpLength,
    /// The IPv4 header checksum is wrong.
    BadIpChecksum,
    /// The packet is neither ESP (IP protocol 50) nor ESP in UDP.
    NotEsp,
    /// A UDP-encapsulated packet is a NAT-T keepalive (a single 0xFF byte): it carries
    /// no ESP and is consumed, not forwarded. Counted as `nat_keepalive`.
    NatKeepalive,
    /// A UDP-encapsulated packet starts with the non-ESP marker (IKE traffic): it belongs
    /// to the key exchange daemon, not the data plane.
    NonEspMarker,
    /// The encrypted part is not a multiple of the cipher's block size.
    BadCiphertextLength,
    /// The packet is an IPv4 fragment or carries an IPv6 Fragment header (other than an
    /// atomic fragment, RFC 6946): ESP is removed from whole packets (reassemble first:
    /// [`Reassembler`](crate::Reassembler)), and transport mode protects whole
    /// datagrams only (RFC 4303 §3.3).
    Fragment,
    /// An IPv6 extension header chain is longer than the packet or loops too long.
    BadExtensionHeader,
    /// The inner packet's length fields disagree with what was decrypted.
    BadInnerLength,
    /// The caller's packet descriptor is inconsistent (offset + length beyond the buffer).
    BadDescriptor,
    /// The outer header says CE (congestion experienced) but the inner packet is not
    /// ECN-capable: RFC 6040 §4.2 requires the packet to be dropped. Counted as
    /// `ecn_ce_not_ect`.
    EcnCeOnNotEct,
    /// The packet to encapsulate is not an IPv4 or IPv6 packet (tunnel mode) or its
    /// header cannot carry ESP (transport mode).
    BadInnerPacket,
    /// The protected packet would exceed the IP length limit (65,535 bytes).
    TooBig,
    /// Not an ICMP "fragmentation needed" / ICMPv6 "packet too big" message about this
    /// SA's own packets (see `SecurityAssociation::handle_icmp`).
    NotPathMtuMessage,
}

impl Malformed {
    /// A short description, used in error messages.
    pub const fn describe(self) -> &'static str {
        match self {
            Malformed::Truncated => "packet truncated",
            Malformed::BadIpVersion => "IP version is neither 4 nor 6",
            Malformed::BadIpLength => "IP length fields disagree with the packet size",
            Malformed::BadIpChecksum => "IPv4 header checksum is wrong",
            Malformed::NotEsp => "not an ESP or UDP-encapsulated ESP packet",
            Malformed::NatKeepalive => "NAT-T keepalive (no ESP payload)",
            Malformed::NonEspMarker => "non-ESP marker: IKE packet on the NAT-T port",
            Malformed::BadCiphertextLength => {
                "encrypted payload is not a multiple of the cipher block size"
            }
            Malformed::Fragment => "IP fragment (reassemble before ESP processing)",
            Malformed::BadExtensionHeader => "bad IPv6 extension header chain",
            Malformed::BadInnerLength => "inner packet length fields disagree with the payload",
            Malformed::BadDescriptor => "packet offset/length lie outside the buffer",
            Malformed::EcnCeOnNotEct => "outer CE mark on a Not-ECT inner packet (RFC 6040)",
            Malformed::BadInnerPacket => "the packet to protect is not a valid IP packet",
            Malformed::TooBig => "the protected packet would exceed 65,535 bytes",
            Malformed::NotPathMtuMessage => "not an ICMP too-big message about this SA's packets",
        }
    }
}

/// Which lifetime limit was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LifetimeLimit {
    /// Bytes of payload processed.
    Bytes,
    /// Packets processed.
    Packets,
    /// Time since the SA was created.
    Time,
}

impl LifetimeLimit {
    /// `"bytes"`, `"packets"` or `"time"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            LifetimeLimit::Bytes => "bytes",
            LifetimeLimit::Packets => "packets",
            LifetimeLimit::Time => "time",
        }
    }
}

/// Why a packet could not be processed. Small and `Copy`: the burst path returns one
/// per packet without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The ICV did not verify: the packet was tampered with or the key is wrong.
    AuthenticationFailed,
    /// The sequence number was already received.
    Replayed {
        /// The (ESN-inferred) sequence number of the packet.
        seq: u64,
    },
    /// The sequence number lies below the replay window.
    TooOld {
        /// The (ESN-inferred) sequence number of the packet.
        seq: u64,
        /// The highest sequence number received so far.
        highest: u64,
    },
    /// The packet could not be parsed.
    Malformed(Malformed),
    /// The padding bytes were not 1, 2, 3, ... (RFC 4303 §2.4).
    BadPadding,
    /// The next-header field is not an IP protocol this SA's mode can carry.
    BadNextHeader(u8),
    /// The packet's SPI is not the SA's.
    UnknownSpi {
        /// The SPI found in the packet.
        spi: u32,
    },
    /// The decapsulated packet does not match the policy the SA serves.
    PolicyMismatch,
    /// A hard lifetime was reached; the SA refuses packets.
    LifetimeExpired(LifetimeLimit),
    /// The outbound sequence number would wrap; the SA refuses packets.
    SequenceOverflow,
    /// A dummy packet (next header 59) was received and dropped on purpose.
    DummyPacket,
    /// Not enough headroom in front of the packet.
    NoHeadroom {
        /// Bytes needed in front of the packet.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// Not enough tailroom behind the packet.
    NoTailroom {
        /// Bytes needed behind the packet.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The operation does not fit the SA's direction (encrypt on an inbound SA or
    /// decrypt on an outbound one).
    WrongDirection,
    /// The SPD discards this traffic (a DISCARD policy, or no policy at all).
    PolicyDiscard,
    /// Cleartext arrived for traffic that a PROTECT policy says must come through
    /// IPsec (RFC 4301 §5.2): dropped, counted as `policy_mismatch`.
    UnprotectedTraffic,
    /// The packet would not fit the SA's path MTU after ESP and may not be fragmented
    /// (IPv4 with DF set, or IPv6): RFC 4301 §8.2. `inner_mtu` is the largest inner
    /// packet that fits; send the sender an ICMP "too big" carrying it
    /// (`icmp::too_big_reply`).
    TooBig {
        /// The largest inner packet, in bytes, that fits the path MTU after ESP.
        inner_mtu: u16,
    },
    /// A fragment was dropped, or a fragmented datagram could not be decided on.
    Fragment(FragmentError),
    /// The packet had to be split into several (pre-fragmentation, RFC 4459) but too few
    /// spare buffers were given for the extra packets ([`crate::SpareBuffers`]). The
    /// packet is unchanged. Counted as `no_buffer_space`.
    NoSpareBuffers {
        /// Extra buffers the packet needs.
        needed: usize,
        /// Spare buffers that were left.
        available: usize,
    },
}

/// Why a fragment was dropped (each has its own [`DropReason`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FragmentError {
    /// The datagram was not complete within the reassembly lifetime.
    Timeout,
    /// The fragment overlapped another one of its datagram: the datagram is dropped.
    Overlap,
    /// An exact copy of a fragment already held: this copy is dropped.
    Duplicate,
    /// A reassembly limit was reached (memory, datagrams in progress, fragments per
    /// datagram).
    Limit,
    /// The fragment cannot belong to a valid datagram (bad length or offset, beyond
    /// 65,535 bytes, last fragments that disagree).
    Invalid,
    /// A first fragment too short to hold the transport ports or ICMP type.
    TooShort,
    /// A non-first fragment whose policy cannot be decided (RFC 4301 §7).
    Unresolved,
}

impl FragmentError {
    /// The counter this error is accounted under.
    pub const fn drop_reason(self) -> DropReason {
        match self {
            FragmentError::Timeout => DropReason::FragmentTimeout,
            FragmentError::Overlap => DropReason::FragmentOverlap,
            FragmentError::Duplicate => DropReason::FragmentDuplicate,
            FragmentError::Limit => DropReason::FragmentLimit,
            FragmentError::Invalid => DropReason::FragmentInvalid,
            FragmentError::TooShort => DropReason::FragmentTooShort,
            FragmentError::Unresolved => DropReason::FragmentUnresolved,
        }
    }

    /// A short description, used in error messages.
    pub const fn describe(self) -> &'static str {
        match self {
            FragmentError::Timeout => "datagram not reassembled within its lifetime",
            FragmentError::Overlap => "fragment overlaps another of its datagram",
            FragmentError::Duplicate => "duplicate of a fragment already held",
            FragmentError::Limit => "reassembly limit reached",
            FragmentError::Invalid => "fragment cannot belong to a valid datagram",
            FragmentError::TooShort => "first fragment too short to hold the ports",
            FragmentError::Unresolved => {
                "non-first fragment whose policy cannot be decided (first fragment not seen)"
            }
        }
    }
}

impl Error {
    /// The counter this error is accounted under.
    pub const fn drop_reason(&self) -> DropReason {
        match self {
            Error::AuthenticationFailed => DropReason::AuthFailed,
            Error::Replayed { .. } => DropReason::Replay,
            Error::TooOld { .. } => DropReason::TooOld,
            Error::Malformed(Malformed::NatKeepalive) => DropReason::NatKeepalive,
            Error::Malformed(Malformed::EcnCeOnNotEct) => DropReason::EcnCeOnNotEct,
            Error::Malformed(_) => DropReason::Malformed,
            Error::WrongDirection => DropReason::WrongDirection,
            Error::TooBig { .. } => DropReason::TooBig,
            Error::Fragment(f) => f.drop_reason(),
            Error::BadPadding => DropReason::BadPadding,
            Error::BadNextHeader(_) => DropReason::BadNextHeader,
            Error::UnknownSpi { .. } => DropReason::UnknownSpi,
            Error::PolicyMismatch | Error::UnprotectedTraffic => DropReason::PolicyMismatch,
            Error::PolicyDiscard => DropReason::PolicyDiscard,
            Error::LifetimeExpired(_) => DropReason::LifetimeExpired,
            Error::SequenceOverflow => DropReason::SequenceOverflow,
            Error::DummyPacket => DropReason::Dummy,
            Error::NoHeadroom { .. } | Error::NoTailroom { .. } | Error::NoSpareBuffers { .. } => {
                DropReason::NoBufferSpace
            }
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::AuthenticationFailed => f.write_str("authentication failed: ICV mismatch"),
            Error::Replayed { seq } => write!(f, "replayed packet: sequence number {seq}"),
            Error::TooOld { seq, highest } => write!(
                f,
                "sequence number {seq} is below the replay window (highest received {highest})"
            ),
            Error::Malformed(m) => write!(f, "malformed packet: {}", m.describe()),
            Error::BadPadding => f.write_str("bad ESP padding (RFC 4303 §2.4)"),
            Error::BadNextHeader(nh) => write!(f, "bad ESP next header {nh}"),
            Error::UnknownSpi { spi } => write!(f, "unknown SPI {spi:#010x}"),
            Error::PolicyMismatch => {
                f.write_str("decapsulated packet does not match the SA's policy selectors")
            }
            Error::LifetimeExpired(l) => write!(f, "SA hard lifetime ({}) expired", l.as_str()),
            Error::SequenceOverflow => f.write_str("outbound sequence number space exhausted"),
            Error::DummyPacket => f.write_str("dummy packet (next header 59) dropped"),
            Error::NoHeadroom { needed, available } => write!(
                f,
                "not enough headroom: {needed} bytes needed, {available} available"
            ),
            Error::NoTailroom { needed, available } => write!(
                f,
                "not enough tailroom: {needed} bytes needed, {available} available"
            ),
            Error::WrongDirection => f.write_str("operation does not match the SA's direction"),
            Error::PolicyDiscard => f.write_str("discarded by policy"),
            Error::UnprotectedTraffic => {
                f.write_str("cleartext for traffic that policy says must be protected")
            }
            Error::TooBig { inner_mtu } => write!(
                f,
                "packet too big for the path MTU after ESP (largest inner packet {inner_mtu} \
                 bytes) and it may not be fragmented"
            ),
            Error::Fragment(e) => write!(f, "fragment dropped: {}", e.describe()),
            Error::NoSpareBuffers { needed, available } => write!(
                f,
                "not enough spare buffers for the fragments: {needed} needed, {available} given"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// A rejected configuration: which field, and what was wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The contexts (outermost first) and the key, joined by `": "`.
    field: String,
    /// Where the key starts in `field`.
    key_start: usize,
    message: String,
}

impl ConfigError {
    /// A new error about `field` (a keyword argument or TOML key name).
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            key_start: 0,
            message: message.into(),
        }
    }

    /// The field (keyword or TOML key) that was wrong; may include a context prefix
    /// such as `sa "branch1-out": key` (see [`Self::key`] and [`Self::context`] for the
    /// two parts).
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The keyword argument or TOML key that was wrong, without its context: `key`,
    /// or `hard_lifetime.bytes` for a nested key.
    pub fn key(&self) -> &str {
        &self.field[self.key_start..]
    }

    /// Where the key is (`sa "branch1-out"`, or several joined by `": "`), or `None`
    /// when the error is about a keyword argument or key of its own.
    pub fn context(&self) -> Option<&str> {
        self.key_start.checked_sub(2).map(|end| &self.field[..end])
    }

    /// What was wrong with it.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error with its field and message replaced by same-length rewrites (a
    /// secret masked byte for byte), so that [`Self::key`] and [`Self::context`] still
    /// split it where they did; a field of another length is taken as one key.
    pub(crate) fn rewritten(&self, field: String, message: String) -> Self {
        let key_start = if field.len() == self.field.len() {
            self.key_start
        } else {
            0
        };
        ConfigError {
            field,
            key_start,
            message,
        }
    }

    /// The same error with `context` prepended to the field (e.g. the SA's name).
    pub fn in_context(mut self, context: &str) -> Self {
        self.field = format!("{context}: {}", self.field);
        self.key_start += context.len() + 2;
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}
