//! Security associations: creation from a config struct or TOML, packets one at a time
//! and in bursts, overhead, counters, lifetime events.

use core::ffi::c_char;
use core::time::Duration;

use ipsec_core::sa_file::parse_sa_file;
use ipsec_core::{
    Cipher, ConfigError, DfPolicy, Direction, DropReason, Error, EspPadding, Integrity, Lifetime,
    LifetimeLimit, Mode, NAT_KEEPALIVE_MAX_LEN, PacketBuf, SaConfig, SaEvent, SaLane, SaLookup,
    SaStats, SecurityAssociation, TfcPadding,
};

use crate::boundary::{
    BurstProgress, bad_descriptor, boundary, burst_boundary, call, config_error, fail, invalid,
    packet_error,
};
use crate::handle::{
    Handle, array_mut, borrow, borrow_mut, bytes, bytes_mut, c_str, free_handle, into_handle,
    out_ptr, read_struct, text,
};
use crate::status::ipsec_status;

/// One direction of an IPsec SA: keys, sequence numbers or replay window, lifetimes,
/// counters.
///
/// Thread safety: one thread at a time (every packet changes it); it may move between
/// threads. Use one SA per core, or a lock around it.
pub struct ipsec_sa {
    _private: [u8; 0],
}

impl Handle for ipsec_sa {
    type Inner = SecurityAssociation;
}

/// Which way an SA carries traffic.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ipsec_direction {
    /// This side encrypts.
    IPSEC_DIRECTION_OUTBOUND = 1,
    /// This side decrypts.
    IPSEC_DIRECTION_INBOUND = 2,
}

/// ESP mode (RFC 4301 §4.1).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ipsec_mode {
    /// The whole IP packet is carried inside a new outer IP header.
    IPSEC_MODE_TUNNEL = 1,
    /// The IP header stays; what follows it is protected.
    IPSEC_MODE_TRANSPORT = 2,
}

/// The ESP cipher. Key lengths: GCM, GMAC and ChaCha20-Poly1305 take the key followed
/// by the 4-byte salt (20 or 36 bytes); AES-CBC 16 or 32 bytes; NULL none.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ipsec_cipher {
    /// AES-GCM-16, 128-bit key (RFC 4106); 20 key bytes.
    IPSEC_CIPHER_AES_128_GCM = 1,
    /// AES-GCM-16, 256-bit key (RFC 4106); 36 key bytes.
    IPSEC_CIPHER_AES_256_GCM = 2,
    /// ChaCha20-Poly1305 (RFC 7634); 36 key bytes.
    IPSEC_CIPHER_CHACHA20_POLY1305 = 3,
    /// AES-GMAC, 128-bit key (RFC 4543): integrity only; 20 key bytes.
    IPSEC_CIPHER_AES_128_GMAC = 4,
    /// AES-GMAC, 256-bit key (RFC 4543): integrity only; 36 key bytes.
    IPSEC_CIPHER_AES_256_GMAC = 5,
    /// AES-CBC, 128-bit key (RFC 3602); needs an integrity algorithm.
    IPSEC_CIPHER_AES_128_CBC = 6,
    /// AES-CBC, 256-bit key (RFC 3602); needs an integrity algorithm.
    IPSEC_CIPHER_AES_256_CBC = 7,
    /// NULL encryption (RFC 2410); needs an integrity algorithm.
    IPSEC_CIPHER_NULL = 8,
}

/// The integrity algorithm for AES-CBC and NULL encryption.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ipsec_integrity {
    /// None (the combined-mode ciphers).
    IPSEC_INTEGRITY_NONE = 0,
    /// HMAC-SHA-1-96 (RFC 2404); 20 key bytes.
    IPSEC_INTEGRITY_HMAC_SHA1_96 = 1,
    /// HMAC-SHA-256-128 (RFC 4868); 32 key bytes.
    IPSEC_INTEGRITY_HMAC_SHA256_128 = 2,
    /// HMAC-SHA-384-192 (RFC 4868); 48 key bytes.
    IPSEC_INTEGRITY_HMAC_SHA384_192 = 3,
    /// HMAC-SHA-512-256 (RFC 4868); 64 key bytes.
    IPSEC_INTEGRITY_HMAC_SHA512_256 = 4,
}

/// How much ESP padding outbound packets get.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ipsec_padding {
    /// Pad the encrypted part to whole 16-byte blocks (faster to seal; the default).
    IPSEC_PADDING_BLOCKS = 0,
    /// The RFC 4303 minimum (4-byte alignment, 16 for AES-CBC), as Linux sends.
    IPSEC_PADDING_MINIMAL = 1,
}

/// The DF bit policy of outer IPv4 headers (RFC 4301 §8.1), `ipsec_sa_config.df`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ipsec_df {
    /// Copy DF from the inner IPv4 header; packets without one (inner IPv6, dummy
    /// packets, NAT-keepalives) get DF set, as Linux does. The default.
    IPSEC_DF_COPY = 0,
    /// Always set DF.
    IPSEC_DF_SET = 1,
    /// Always clear DF (routers may fragment the outer packet).
    IPSEC_DF_CLEAR = 2,
}

/// How the gateway finds an inbound SA for a packet (RFC 4301 §4.1),
/// `ipsec_sa_config.lookup`. A packet goes to the SA of the longest match: SPI +
/// destination + source, then SPI + destination, then SPI alone. Two inbound SAs of a
/// gateway may share an SPI when their lookups (or the addresses these compare) differ;
/// a packet whose SPI is known but that matches no SA's lookup is dropped as an unknown
/// SPI.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ipsec_sa_lookup {
    /// By the SPI alone (unicast SAs; the default, and a zeroed struct's).
    IPSEC_LOOKUP_SPI = 0,
    /// By the SPI and the IPsec protocol. The library does ESP only (ESP in UDP counts
    /// as ESP), so this finds the packets `IPSEC_LOOKUP_SPI` finds, and the two collide.
    IPSEC_LOOKUP_SPI_PROTOCOL = 1,
    /// By the SPI and the outer destination address, `tunnel_dst` (a multicast group).
    /// Needs an inbound tunnel-mode SA with both tunnel endpoints.
    IPSEC_LOOKUP_SPI_DESTINATION = 2,
    /// By the SPI, the outer destination and the outer source: `tunnel_dst` and
    /// `tunnel_src` (source-specific multicast). As `IPSEC_LOOKUP_SPI_DESTINATION`, it
    /// needs an inbound tunnel-mode SA with both tunnel endpoints.
    IPSEC_LOOKUP_SPI_DESTINATION_SOURCE = 3,
}

/// The largest NAT-keepalive `ipsec_sa_poll_keepalive` writes (IPv6 header, UDP header,
/// one 0xFF byte): give it a buffer of at least this many bytes.
pub const IPSEC_NAT_KEEPALIVE_MAX_LEN: usize = 49;
const _: () = assert!(IPSEC_NAT_KEEPALIVE_MAX_LEN == ipsec_core::NAT_KEEPALIVE_MAX_LEN);

/// What `ipsec_sa_poll_event` reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ipsec_event_kind {
    /// Nothing to act on.
    IPSEC_EVENT_NONE = 0,
    /// A soft lifetime was reached: negotiate a replacement SA now.
    IPSEC_EVENT_REKEY = 1,
    /// A hard lifetime was reached: the SA refuses packets from now on.
    IPSEC_EVENT_EXPIRED = 2,
}

/// Which lifetime limit an event is about.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ipsec_lifetime_limit {
    /// No limit (with `IPSEC_EVENT_NONE`).
    IPSEC_LIMIT_NONE = 0,
    /// Bytes of inner packets.
    IPSEC_LIMIT_BYTES = 1,
    /// Packets.
    IPSEC_LIMIT_PACKETS = 2,
    /// Time since the SA was created.
    IPSEC_LIMIT_TIME = 3,
}

/// Lifetime limits (RFC 4301 §4.4.2.1); 0 means no limit of that kind. A soft limit must
/// be below the hard limit of its kind when both are set (`IPSEC_ERR_CONFIG` otherwise,
/// naming e.g. `soft_lifetime.bytes`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ipsec_lifetime {
    /// Bytes of inner packets processed.
    pub bytes: u64,
    /// Packets processed.
    pub packets: u64,
    /// Seconds since the SA was created (the `now_ns` given at creation).
    pub seconds: u64,
}

/// Everything needed to create an SA with `ipsec_sa_new`. Fill it with
/// `ipsec_sa_config_init` first (it sets the defaults), then set the fields. The field
/// names are those of the `[[sa]]` TOML keys.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ipsec_sa_config {
    /// The SPI; 0..=255 are reserved and refused.
    pub spi: u32,
    /// An `ipsec_direction` value.
    pub direction: u32,
    /// An `ipsec_mode` value.
    pub mode: u32,
    /// An `ipsec_cipher` value.
    pub cipher: u32,
    /// The cipher key (for GCM, GMAC and ChaCha20-Poly1305 followed by the 4-byte
    /// salt); copied, so it may be wiped after `ipsec_sa_new` returns. NULL if
    /// `key_len` is 0.
    pub key: *const u8,
    /// Bytes at `key`.
    pub key_len: usize,
    /// An `ipsec_integrity` value (`IPSEC_INTEGRITY_NONE` by default).
    pub integrity: u32,
    /// The integrity key (copied); NULL if `integrity_key_len` is 0.
    pub integrity_key: *const u8,
    /// Bytes at `integrity_key`.
    pub integrity_key_len: usize,
    /// Extended (64-bit) sequence numbers (RFC 4303 §2.2.1).
    pub esn: bool,
    /// Inbound replay window: 0 (off) or 32..=16777216 packets (default 64). An outbound
    /// SA has none: leave it at 64 (`ipsec_sa_config_init`) or 0; another value is
    /// refused (`IPSEC_ERR_CONFIG`).
    pub replay_window: u32,
    /// Outbound: the last sequence number used (the next is `seq + 1`). Inbound: the
    /// highest already received. 0 for a new SA. Above 2^32-1 only with `esn`.
    pub seq: u64,
    /// Outer source address (IPv4 or IPv6 text), NUL-terminated; NULL for none.
    /// Outbound tunnel-mode SAs need both endpoints.
    pub tunnel_src: *const c_char,
    /// Outer destination address, NUL-terminated; NULL for none.
    pub tunnel_dst: *const c_char,
    /// Encapsulate ESP in UDP (RFC 3948 NAT traversal) with the two ports below.
    pub udp_encap: bool,
    /// UDP source port when `udp_encap` (not 0: refused).
    pub udp_src_port: u16,
    /// UDP destination port when `udp_encap` (not 0: refused); NAT-T uses 4500.
    pub udp_dst_port: u16,
    /// Outer TTL / hop limit of tunnel-mode packets and NAT-keepalives, 1..=255
    /// (`ipsec_sa_config_init` sets the default, 64). 0 is refused (`IPSEC_ERR_CONFIG`
    /// naming `outer_ttl`), as by the Rust, TOML and Python forms: the first router
    /// would drop every packet.
    pub outer_ttl: u8,
    /// TFC padding (outbound tunnel mode): pad inner packets up to this many bytes; 0
    /// for none. A length whose padded packet cannot be an IP packet after ESP (over
    /// 65,535 bytes of IP length) is refused.
    pub tfc_pad_to: u16,
    /// An `ipsec_padding` value (`IPSEC_PADDING_BLOCKS` by default).
    pub padding: u32,
    /// Reaching it raises `IPSEC_EVENT_REKEY`.
    pub soft_lifetime: ipsec_lifetime,
    /// Reaching it raises `IPSEC_EVENT_EXPIRED`; the SA then refuses packets. A packet
    /// that would cross the byte limit is refused (`IPSEC_ERR_LIFETIME_EXPIRED`) and
    /// expires the SA: the limit is never overshot.
    pub hard_lifetime: ipsec_lifetime,
    /// An `ipsec_df` value: the DF bit of outer IPv4 headers (`IPSEC_DF_COPY` by
    /// default, and in a zeroed struct).
    pub df: u32,
    /// Outbound with `udp_encap`: seconds of silence after which a NAT-keepalive is due
    /// (`ipsec_sa_poll_keepalive`); 0 turns keepalives off. `ipsec_sa_config_init` sets
    /// 20 (RFC 3948).
    pub nat_keepalive_interval: u32,
    /// Inbound transport mode with UDP encapsulation: the original source address of
    /// the peer's packets before NAT (NAT-OA, from IKE), NUL-terminated; NULL for none.
    /// With both original addresses the inner TCP/UDP/ICMPv6 checksum is updated
    /// incrementally to the received addresses, without them it is recomputed
    /// (RFC 3948 §3.1.2).
    pub nat_original_src: *const c_char,
    /// The original destination address (NAT-OA), NUL-terminated; NULL for none.
    pub nat_original_dst: *const c_char,
    /// Outbound: the path MTU, the largest outer packet the path carries (0: no limit).
    /// Larger packets are fragmented (`ipsec_sa_encrypt_fragmenting`) or refused with
    /// `IPSEC_ERR_TOO_BIG`; see `ipsec_sa_set_path_mtu`.
    pub path_mtu: u32,
    /// Soft lifetime jitter in percent, 0..=100 (over 100: `IPSEC_ERR_CONFIG` naming
    /// `soft_lifetime_jitter`): each soft limit of the SA is drawn once, at creation,
    /// uniformly from `[soft - soft * jitter / 100, soft]` (never 0), so that SAs
    /// created together do not rekey together. `ipsec_sa_config_init` sets the
    /// library's default, 10 (as strongSwan's `rand_time`); 0 (as in a zeroed struct)
    /// keeps the soft limits exact. `ipsec_sa_get_soft_limits` gives the limits drawn.
    /// (This was `reserved32`.)
    pub soft_lifetime_jitter: u32,
    /// Inbound: an `ipsec_sa_lookup` value, how the gateway finds the SA for a packet
    /// (`IPSEC_LOOKUP_SPI` by default, and in a zeroed struct). Another value on an
    /// outbound SA, or an address lookup without tunnel mode and both endpoints, is
    /// refused (`IPSEC_ERR_CONFIG` naming `lookup`). (This was the first half of
    /// `reserved[0]`.)
    pub lookup: u32,
    /// Must be zero: room for a 32-bit field added later.
    pub reserved32: u32,
    /// Must be zero: room for fields added later without changing the struct's size.
    /// (These were `reserved[8]`; the fields above took the first five words.)
    pub reserved: [u64; 3],
}

// The fields above came out of the reserved words: the struct keeps its size, and the
// words still reserved their offsets (on 64-bit targets, where pointers take a word).
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(core::mem::size_of::<ipsec_sa_config>() == 216);
    assert!(core::mem::offset_of!(ipsec_sa_config, df) == 152);
    assert!(core::mem::offset_of!(ipsec_sa_config, path_mtu) == 176);
    assert!(core::mem::offset_of!(ipsec_sa_config, soft_lifetime_jitter) == 180);
    assert!(core::mem::offset_of!(ipsec_sa_config, lookup) == 184);
    assert!(core::mem::offset_of!(ipsec_sa_config, reserved32) == 188);
    assert!(core::mem::offset_of!(ipsec_sa_config, reserved) == 192);
};

/// How much room an outbound packet needs around it (`ipsec_sa_overhead`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ipsec_overhead {
    /// Bytes of headroom an outbound packet needs in front of it (outer IP header, UDP
    /// header for NAT-T, ESP header, IV).
    pub headroom: usize,
    /// Bytes of tailroom a packet of the given length needs behind it (TFC and ESP
    /// padding, pad length, next header, ICV).
    pub tailroom: usize,
    /// The most any outbound packet can grow (headroom plus the largest tailroom), for
    /// sizing buffers once.
    pub max_overhead: usize,
}

/// An SA's counters: packets and bytes processed, and one counter per drop reason.
///
/// A drop with status `IPSEC_ERR_x` (300 + n) is counted in the n-th counter after
/// `bytes`. New counters will be taken from `reserved`, so the struct keeps its size.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ipsec_sa_stats {
    /// Packets encrypted (outbound) or decrypted (inbound).
    pub packets: u64,
    /// Bytes of inner packets in those packets.
    pub bytes: u64,
    /// Dropped: ICV did not verify.
    pub auth_failed: u64,
    /// Dropped: replayed sequence number.
    pub replay: u64,
    /// Dropped: sequence number below the replay window.
    pub too_old: u64,
    /// Dropped: unparseable packet.
    pub malformed: u64,
    /// Dropped: bad ESP padding.
    pub bad_padding: u64,
    /// Dropped: bad next header.
    pub bad_next_header: u64,
    /// Dropped: SPI not the SA's / unknown.
    pub unknown_spi: u64,
    /// Dropped: inner packet outside the SA's policy, or unprotected cleartext.
    pub policy_mismatch: u64,
    /// Dropped: hard lifetime reached.
    pub lifetime_expired: u64,
    /// Dropped: sequence numbers exhausted.
    pub sequence_overflow: u64,
    /// Dropped on purpose: dummy packets.
    pub dummy: u64,
    /// Dropped: too little headroom or tailroom.
    pub no_buffer_space: u64,
    /// Dropped: the SPD said DISCARD.
    pub policy_discard: u64,
    /// Consumed: NAT-T keepalives handed to the SA.
    pub nat_keepalive: u64,
    /// Dropped: outer ECN CE on a Not-ECT inner packet.
    pub ecn_ce_not_ect: u64,
    /// Refused: encrypt on an inbound SA or decrypt on an outbound one
    /// (`IPSEC_ERR_WRONG_DIRECTION`).
    pub wrong_direction: u64,
    /// Refused: too big for the path MTU and not fragmentable.
    pub too_big: u64,
    /// Dropped: fragments whose datagram timed out.
    pub fragment_timeout: u64,
    /// Dropped: overlapping fragments (and the rest of their datagram).
    pub fragment_overlap: u64,
    /// Dropped: duplicate fragments.
    pub fragment_duplicate: u64,
    /// Dropped: fragments over a reassembly limit.
    pub fragment_limit: u64,
    /// Dropped: invalid fragments.
    pub fragment_invalid: u64,
    /// Dropped: first fragments too short to hold the ports.
    pub fragment_too_short: u64,
    /// Dropped: non-first fragments with no policy decision.
    pub fragment_unresolved: u64,
    /// When the SA last carried traffic, on the caller's clock, in nanoseconds: the
    /// last packet it encrypted (NAT-keepalives and dummy packets do not count) or
    /// accepted (refused packets do not count). Meaningful only when `packets` is not
    /// 0; 0 in the final counters of `ipsec_gateway_delete_sa` and in
    /// `ipsec_shared_sa_get_stats` (ask a lane). What an IKE daemon's `query_sa` wants
    /// for idle and dead-peer checks. (This was `reserved[0]`.)
    pub last_used_ns: u64,
    /// Zero; room for counters added later.
    pub reserved: [u64; 5],
}

/// The counters of `sa`, with its use time.
pub(crate) fn stats_of(sa: &SecurityAssociation) -> ipsec_sa_stats {
    with_use_time(&sa.stats(), sa.last_used())
}

/// `stats` as C counters, with the use time `last_used` (see `last_used_ns`).
pub(crate) fn with_use_time(stats: &SaStats, last_used: Option<Duration>) -> ipsec_sa_stats {
    let mut s = ipsec_sa_stats::from(stats);
    s.last_used_ns = last_used.map_or(0, |t| u64::try_from(t.as_nanos()).unwrap_or(u64::MAX));
    s
}

impl From<&SaStats> for ipsec_sa_stats {
    fn from(s: &SaStats) -> Self {
        ipsec_sa_stats {
            packets: s.packets,
            bytes: s.bytes,
            auth_failed: s.dropped(DropReason::AuthFailed),
            replay: s.dropped(DropReason::Replay),
            too_old: s.dropped(DropReason::TooOld),
            malformed: s.dropped(DropReason::Malformed),
            bad_padding: s.dropped(DropReason::BadPadding),
            bad_next_header: s.dropped(DropReason::BadNextHeader),
            unknown_spi: s.dropped(DropReason::UnknownSpi),
            policy_mismatch: s.dropped(DropReason::PolicyMismatch),
            lifetime_expired: s.dropped(DropReason::LifetimeExpired),
            sequence_overflow: s.dropped(DropReason::SequenceOverflow),
            dummy: s.dropped(DropReason::Dummy),
            no_buffer_space: s.dropped(DropReason::NoBufferSpace),
            policy_discard: s.dropped(DropReason::PolicyDiscard),
            nat_keepalive: s.dropped(DropReason::NatKeepalive),
            ecn_ce_not_ect: s.dropped(DropReason::EcnCeOnNotEct),
            wrong_direction: s.dropped(DropReason::WrongDirection),
            too_big: s.dropped(DropReason::TooBig),
            fragment_timeout: s.dropped(DropReason::FragmentTimeout),
            fragment_overlap: s.dropped(DropReason::FragmentOverlap),
            fragment_duplicate: s.dropped(DropReason::FragmentDuplicate),
            fragment_limit: s.dropped(DropReason::FragmentLimit),
            fragment_invalid: s.dropped(DropReason::FragmentInvalid),
            fragment_too_short: s.dropped(DropReason::FragmentTooShort),
            fragment_unresolved: s.dropped(DropReason::FragmentUnresolved),
            last_used_ns: 0,
            reserved: [0; 5],
        }
    }
}

/// What an SA is (`ipsec_sa_get_info`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ipsec_sa_info {
    /// The SPI.
    pub spi: u32,
    /// An `ipsec_direction` value.
    pub direction: u32,
    /// An `ipsec_mode` value.
    pub mode: u32,
    /// An `ipsec_cipher` value.
    pub cipher: u32,
    /// An `ipsec_integrity` value.
    pub integrity: u32,
    /// Extended sequence numbers on.
    pub esn: bool,
    /// A hard lifetime was reached: the SA refuses packets.
    pub expired: bool,
    /// The inbound replay window's size (0: off).
    pub replay_window: u32,
    /// Outbound: the last sequence number used. Inbound: the highest received.
    pub seq: u64,
}

/// One `ipsec_sa_poll_event` answer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ipsec_sa_event {
    /// An `ipsec_event_kind` value.
    pub kind: u32,
    /// An `ipsec_lifetime_limit` value (`IPSEC_LIMIT_NONE` with `IPSEC_EVENT_NONE`).
    pub limit: u32,
}

/// A packet in a caller-owned buffer, for the burst calls (a DPDK mbuf, reduced): the
/// packet occupies `buf[offset .. offset + length]`; the bytes in front are headroom,
/// those behind (up to `capacity`) tailroom.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
// C programs (and Rust callers of the C API) build it field by field: its layout is
// the ABI, so it is exhaustive by design.
#[allow(clippy::exhaustive_structs)]
pub struct ipsec_packet {
    /// The buffer (never freed by the library).
    pub buf: *mut u8,
    /// Bytes at `buf`.
    pub capacity: usize,
    /// Where the packet starts; updated on success.
    pub offset: usize,
    /// The packet's length; updated on success.
    pub length: usize,
    /// Written by the burst call: an `ipsec_status` value, `IPSEC_OK` or why this packet
    /// failed (its offset and length are then unchanged).
    pub status: u32,
    /// Written by `ipsec_sa_encrypt_burst_fragmenting`: how many spare descriptors this
    /// packet's extra fragments filled (0 when it fit the path MTU). Other calls leave
    /// it alone. (It sits in what was the struct's tail padding: the size is unchanged.)
    pub fragments: u32,
}

// ---------------------------------------------------------------------------------------
// Conversions of C integers to core enums and back.

pub(crate) fn direction_from(v: u32, field: &str) -> Result<Direction, ipsec_status> {
    match v {
        1 => Ok(Direction::Outbound),
        2 => Ok(Direction::Inbound),
        _ => Err(invalid(format!(
            "{field} {v} is not an ipsec_direction (1 outbound, 2 inbound)"
        ))),
    }
}

pub(crate) fn direction_to(d: Direction) -> u32 {
    match d {
        Direction::Outbound => ipsec_direction::IPSEC_DIRECTION_OUTBOUND as u32,
        _ => ipsec_direction::IPSEC_DIRECTION_INBOUND as u32,
    }
}

fn mode_from(v: u32) -> Result<Mode, ipsec_status> {
    match v {
        1 => Ok(Mode::Tunnel),
        2 => Ok(Mode::Transport),
        _ => Err(invalid(format!(
            "mode {v} is not an ipsec_mode (1 tunnel, 2 transport)"
        ))),
    }
}

const CIPHERS: [(u32, Cipher); 8] = [
    (1, Cipher::Aes128Gcm),
    (2, Cipher::Aes256Gcm),
    (3, Cipher::ChaCha20Poly1305),
    (4, Cipher::Aes128Gmac),
    (5, Cipher::Aes256Gmac),
    (6, Cipher::Aes128Cbc),
    (7, Cipher::Aes256Cbc),
    (8, Cipher::Null),
];

const INTEGRITIES: [(u32, Integrity); 4] = [
    (1, Integrity::HmacSha1_96),
    (2, Integrity::HmacSha256_128),
    (3, Integrity::HmacSha384_192),
    (4, Integrity::HmacSha512_256),
];

fn cipher_from(v: u32) -> Result<Cipher, ipsec_status> {
    CIPHERS
        .iter()
        .find(|(n, _)| *n == v)
        .map(|&(_, c)| c)
        .ok_or_else(|| invalid(format!("cipher {v} is not an ipsec_cipher (1..=8)")))
}

fn integrity_from(v: u32) -> Result<Option<Integrity>, ipsec_status> {
    if v == 0 {
        return Ok(None);
    }
    INTEGRITIES
        .iter()
        .find(|(n, _)| *n == v)
        .map(|&(_, i)| Some(i))
        .ok_or_else(|| {
            invalid(format!(
                "integrity {v} is not an ipsec_integrity (0 none, 1..=4)"
            ))
        })
}

fn padding_from(v: u32) -> Result<EspPadding, ipsec_status> {
    match v {
        0 => Ok(EspPadding::CipherBlocks),
        1 => Ok(EspPadding::Minimal),
        _ => Err(invalid(format!(
            "padding {v} is not an ipsec_padding (0 blocks, 1 minimal)"
        ))),
    }
}

fn df_from(v: u32) -> Result<DfPolicy, ipsec_status> {
    match v {
        0 => Ok(DfPolicy::Copy),
        1 => Ok(DfPolicy::Set),
        2 => Ok(DfPolicy::Clear),
        _ => Err(invalid(format!(
            "df {v} is not an ipsec_df (0 copy, 1 set, 2 clear)"
        ))),
    }
}

fn lookup_from(v: u32) -> Result<SaLookup, ipsec_status> {
    match v {
        0 => Ok(SaLookup::Spi),
        1 => Ok(SaLookup::SpiProtocol),
        2 => Ok(SaLookup::SpiDestination),
        3 => Ok(SaLookup::SpiDestinationSource),
        _ => Err(invalid(format!(
            "lookup {v} is not an ipsec_sa_lookup (0 spi, 1 spi+protocol, 2 \
             spi+destination, 3 spi+destination+source)"
        ))),
    }
}

fn lifetime_from(l: &ipsec_lifetime) -> Lifetime {
    let mut out = Lifetime::NONE;
    if l.bytes != 0 {
        out = out.with_bytes(l.bytes);
    }
    if l.packets != 0 {
        out = out.with_packets(l.packets);
    }
    if l.seconds != 0 {
        out = out.with_time(Duration::from_secs(l.seconds));
    }
    out
}

fn limit_to(l: LifetimeLimit) -> u32 {
    match l {
        LifetimeLimit::Bytes => ipsec_lifetime_limit::IPSEC_LIMIT_BYTES as u32,
        LifetimeLimit::Packets => ipsec_lifetime_limit::IPSEC_LIMIT_PACKETS as u32,
        _ => ipsec_lifetime_limit::IPSEC_LIMIT_TIME as u32,
    }
}

/// The C form of a polled event.
pub(crate) fn event_to(event: Option<SaEvent>) -> ipsec_sa_event {
    match event {
        None => ipsec_sa_event {
            kind: ipsec_event_kind::IPSEC_EVENT_NONE as u32,
            limit: ipsec_lifetime_limit::IPSEC_LIMIT_NONE as u32,
        },
        Some(SaEvent::Rekey(l)) => ipsec_sa_event {
            kind: ipsec_event_kind::IPSEC_EVENT_REKEY as u32,
            limit: limit_to(l),
        },
        Some(SaEvent::Expired(l)) => ipsec_sa_event {
            kind: ipsec_event_kind::IPSEC_EVENT_EXPIRED as u32,
            limit: limit_to(l),
        },
        // A kind of event added to ipsec-core later: the SA stops working either way.
        Some(_) => ipsec_sa_event {
            kind: ipsec_event_kind::IPSEC_EVENT_EXPIRED as u32,
            limit: ipsec_lifetime_limit::IPSEC_LIMIT_NONE as u32,
        },
    }
}

pub(crate) fn info_of(sa: &SecurityAssociation) -> ipsec_sa_info {
    ipsec_sa_info {
        spi: sa.spi(),
        direction: direction_to(sa.direction()),
        mode: match sa.mode() {
            Mode::Tunnel => ipsec_mode::IPSEC_MODE_TUNNEL as u32,
            _ => ipsec_mode::IPSEC_MODE_TRANSPORT as u32,
        },
        cipher: CIPHERS
            .iter()
            .find(|(_, c)| *c == sa.cipher())
            .map_or(0, |&(n, _)| n),
        integrity: sa.integrity().map_or(0, |i| {
            INTEGRITIES
                .iter()
                .find(|(_, x)| *x == i)
                .map_or(0, |&(n, _)| n)
        }),
        esn: sa.esn(),
        expired: sa.is_expired(),
        replay_window: sa.replay_window().size(),
        seq: sa.seq(),
    }
}

/// The caller's time.
#[inline]
pub(crate) fn now(now_ns: u64) -> Duration {
    Duration::from_nanos(now_ns)
}

/// The core configuration a C config struct describes.
///
/// # Safety
///
/// The pointers in `c` are valid as their field docs say.
unsafe fn config_from(c: &ipsec_sa_config) -> Result<SaConfig, ipsec_status> {
    if c.reserved.iter().any(|&r| r != 0) || c.reserved32 != 0 {
        return Err(invalid(
            "ipsec_sa_config.reserved and reserved32 must be zero (initialise with \
             ipsec_sa_config_init)",
        ));
    }
    // SAFETY: forwarded caller's contract for `key` / `integrity_key`.
    let key = unsafe { bytes(c.key, c.key_len, "config->key") }?;
    // SAFETY: as above.
    let integrity_key = unsafe {
        bytes(
            c.integrity_key,
            c.integrity_key_len,
            "config->integrity_key",
        )
    }?;
    let mut cfg = SaConfig::new(
        c.spi,
        direction_from(c.direction, "direction")?,
        mode_from(c.mode)?,
        cipher_from(c.cipher)?,
        key,
    );
    match integrity_from(c.integrity)? {
        Some(alg) => {
            cfg.integrity(alg, integrity_key);
        }
        None if !integrity_key.is_empty() => {
            return Err(config_error(&ConfigError::new(
                "integrity_key",
                "given without an integrity algorithm",
            )));
        }
        None => {}
    }
    // An outbound SA has no window: the defaults (64 from `ipsec_sa_config_init`, 0 in a
    // zeroed struct) mean "not set"; another value is passed on, and refused.
    let unset_window = [0, SaConfig::DEFAULT_REPLAY_WINDOW];
    if c.direction != ipsec_direction::IPSEC_DIRECTION_OUTBOUND as u32
        || !unset_window.contains(&c.replay_window)
    {
        cfg.replay_window(c.replay_window);
    }
    cfg.esn(c.esn)
        .seq(c.seq)
        .padding(padding_from(c.padding)?)
        .soft_lifetime(lifetime_from(&c.soft_lifetime))
        .soft_lifetime_jitter(c.soft_lifetime_jitter)
        .hard_lifetime(lifetime_from(&c.hard_lifetime))
        .df(df_from(c.df)?)
        .lookup(lookup_from(c.lookup)?)
        .nat_keepalive_interval(
            (c.nat_keepalive_interval != 0)
                .then(|| Duration::from_secs(u64::from(c.nat_keepalive_interval))),
        );
    // SAFETY: non-NULL endpoints are NUL-terminated (the fields' contract).
    let addr = |ptr: *const c_char, field: &'static str| unsafe { read_addr(ptr, field) };
    // SAFETY: as above.
    if let Some((s, d)) = unsafe { read_endpoints(c.tunnel_src, c.tunnel_dst) }? {
        cfg.tunnel(s, d);
    }
    if c.udp_encap {
        cfg.udp_encap(c.udp_src_port, c.udp_dst_port);
    }
    match (
        addr(c.nat_original_src, "nat_original_src")?,
        addr(c.nat_original_dst, "nat_original_dst")?,
    ) {
        (Some(s), Some(d)) => {
            cfg.nat_original_addresses(s, d);
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err(config_error(&ConfigError::new(
                "nat_original_dst",
                "missing (nat_original_src is given)",
            )));
        }
        (None, Some(_)) => {
            return Err(config_error(&ConfigError::new(
                "nat_original_src",
                "missing (nat_original_dst is given)",
            )));
        }
    }
    // 0 is passed on, and refused, as in every other layer (a TTL of 0 would be
    // dropped by the first router); `ipsec_sa_config_init` sets the default, 64.
    cfg.outer_ttl(c.outer_ttl);
    if c.tfc_pad_to != 0 {
        cfg.tfc_padding(TfcPadding::PadTo(c.tfc_pad_to));
    }
    if c.path_mtu != 0 {
        let mtu = u16::try_from(c.path_mtu)
            .map_err(|_| config_error(&ConfigError::new("path_mtu", "exceeds 65,535")))?;
        cfg.path_mtu(Some(mtu));
    }
    Ok(cfg)
}

/// The address string `ptr` (NULL: none) of the field `field`.
///
/// # Safety
///
/// `ptr` is NULL or a NUL-terminated string.
pub(crate) unsafe fn read_addr(
    ptr: *const c_char,
    field: &'static str,
) -> Result<Option<std::net::IpAddr>, ipsec_status> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: caller's contract.
    let s = unsafe { c_str(ptr, field) }?;
    s.parse().map(Some).map_err(|_| {
        config_error(&ConfigError::new(
            field,
            format!("{s:?} is not an IPv4 or IPv6 address"),
        ))
    })
}

/// The tunnel endpoints `tunnel_src` and `tunnel_dst`: both or neither (NULL).
///
/// # Safety
///
/// Each is NULL or a NUL-terminated string.
pub(crate) unsafe fn read_endpoints(
    tunnel_src: *const c_char,
    tunnel_dst: *const c_char,
) -> Result<Option<(std::net::IpAddr, std::net::IpAddr)>, ipsec_status> {
    // SAFETY: caller's contract.
    let (src, dst) = unsafe {
        (
            read_addr(tunnel_src, "tunnel_src")?,
            read_addr(tunnel_dst, "tunnel_dst")?,
        )
    };
    match (src, dst) {
        (Some(s), Some(d)) => Ok(Some((s, d))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(config_error(&ConfigError::new("tunnel_dst", "missing"))),
        (None, Some(_)) => Err(config_error(&ConfigError::new("tunnel_src", "missing"))),
    }
}

/// The core configuration of the C config struct at `config` (`ipsec_sa_new`,
/// `ipsec_gateway_add_sa`, `ipsec_gateway_rekey_sa`): read by value, `bool` fields and
/// reserved space checked, enums and addresses converted.
///
/// # Safety
///
/// `config` is NULL or points to an initialised `ipsec_sa_config` whose pointers are
/// valid as its field docs say.
pub(crate) unsafe fn read_config(config: *const ipsec_sa_config) -> Result<SaConfig, ipsec_status> {
    // SAFETY: initialised (caller's contract); read by value so no reference to
    // caller memory outlives the call.
    let c = unsafe {
        read_struct(
            config,
            "config",
            &[
                (core::mem::offset_of!(ipsec_sa_config, esn), "esn"),
                (
                    core::mem::offset_of!(ipsec_sa_config, udp_encap),
                    "udp_encap",
                ),
            ],
        )
    }?;
    // SAFETY: the pointers inside are valid (caller's contract).
    unsafe { config_from(&c) }
}

// ---------------------------------------------------------------------------------------
// Entry points.

/// Fills `*config` with the defaults: everything zero or NULL, except `replay_window`
/// 64, `outer_ttl` 64, `nat_keepalive_interval` 20 and `soft_lifetime_jitter` 10 (`df`
/// 0 is `IPSEC_DF_COPY`). `direction`, `mode`, `cipher` stay 0, which is no valid
/// value: set them (and `spi`, the keys, the tunnel endpoints) before `ipsec_sa_new`.
///
/// # Safety
///
/// `config` points to a writable `ipsec_sa_config`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_config_init(config: *mut ipsec_sa_config) -> ipsec_status {
    call(|| {
        let config = out_ptr(config, "config")?;
        let value = ipsec_sa_config {
            spi: 0,
            direction: 0,
            mode: 0,
            cipher: 0,
            key: core::ptr::null(),
            key_len: 0,
            integrity: ipsec_integrity::IPSEC_INTEGRITY_NONE as u32,
            integrity_key: core::ptr::null(),
            integrity_key_len: 0,
            esn: false,
            replay_window: SaConfig::DEFAULT_REPLAY_WINDOW,
            seq: 0,
            tunnel_src: core::ptr::null(),
            tunnel_dst: core::ptr::null(),
            udp_encap: false,
            udp_src_port: 0,
            udp_dst_port: 0,
            outer_ttl: SaConfig::DEFAULT_OUTER_TTL,
            tfc_pad_to: 0,
            padding: ipsec_padding::IPSEC_PADDING_BLOCKS as u32,
            soft_lifetime: ipsec_lifetime::default(),
            hard_lifetime: ipsec_lifetime::default(),
            df: ipsec_df::IPSEC_DF_COPY as u32,
            nat_keepalive_interval: SaConfig::DEFAULT_NAT_KEEPALIVE_INTERVAL.as_secs() as u32,
            nat_original_src: core::ptr::null(),
            nat_original_dst: core::ptr::null(),
            path_mtu: 0,
            soft_lifetime_jitter: SaConfig::DEFAULT_SOFT_LIFETIME_JITTER,
            lookup: ipsec_sa_lookup::IPSEC_LOOKUP_SPI as u32,
            reserved32: 0,
            reserved: [0; 3],
        };
        // SAFETY: `config` is non-NULL, aligned and writable (checked / caller's contract).
        unsafe { config.write(value) };
        Ok(())
    })
}

/// Creates an SA from `*config` at time `now_ns` (lifetimes count from here) and
/// stores it in `*out`. Keys are copied. `IPSEC_ERR_CONFIG` when the configuration is
/// refused (reserved SPI, wrong key length, CBC without integrity, missing tunnel
/// endpoints, bad window size ...), `IPSEC_ERR_INVALID_ARGUMENT` for NULL pointers or
/// enum fields out of range. Free the SA with `ipsec_sa_free`.
///
/// # Safety
///
/// `config` points to an initialised `ipsec_sa_config` whose pointers are valid as
/// documented; `out` points to a writable `ipsec_sa *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_new(
    config: *const ipsec_sa_config,
    now_ns: u64,
    out: *mut *mut ipsec_sa,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let cfg = unsafe { read_config(config) }?;
        let sa = SecurityAssociation::new(cfg, now(now_ns)).map_err(|e| config_error(&e))?;
        // SAFETY: `out` checked non-NULL and aligned; writable by contract.
        unsafe { out.write(into_handle::<ipsec_sa>(sa)) };
        Ok(())
    })
}

/// Creates the SA called `name` from TOML text holding `[[sa]]` tables (an SA file such
/// as examples/sa-pair.toml, or a policy file) at time `now_ns` and stores it in `*out`.
/// A table's keys: `name`, `spi`, `direction` ("outbound" / "inbound"), `mode`,
/// `cipher` ("aes-128-gcm", ...), `key` (hex), and optionally `integrity`,
/// `integrity_key`, `esn`, `replay_window`, `tunnel_src`, `tunnel_dst`,
/// `udp_encap = [src, dst]`, `seq`, `outer_ttl`, `tfc_pad_to`, `padding`, `path_mtu`,
/// `soft_lifetime` / `hard_lifetime = { bytes, packets, seconds }`, `df` ("copy", "set",
/// "clear"), `nat_keepalive_interval` (seconds, 0 off), `nat_original_addresses =
/// [src, dst]`, `lookup` ("spi", "spi+protocol", "spi+destination",
/// "spi+destination+source"); the 64-bit values (`seq`, lifetimes) may be decimal or `0x` strings
/// (`seq = "0x8765432100000006"`). `IPSEC_ERR_CONFIG` when the text or an SA
/// in it is invalid (the message names the SA and the key), `IPSEC_ERR_NOT_FOUND` when no
/// SA has that name.
///
/// # Safety
///
/// `toml` points to `toml_len` bytes of UTF-8; `name` is NUL-terminated; `out` points
/// to a writable `ipsec_sa *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_from_toml(
    toml: *const c_char,
    toml_len: usize,
    name: *const c_char,
    now_ns: u64,
    out: *mut *mut ipsec_sa,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let toml = unsafe { text(toml, toml_len, "toml") }?;
        // SAFETY: caller's contract.
        let name = unsafe { c_str(name, "name") }?;
        let mut sas = parse_sa_file(toml).map_err(|e| config_error(&e))?;
        let Some(pos) = sas.iter().position(|s| s.name == name) else {
            let names: Vec<&str> = sas.iter().map(|s| s.name.as_str()).collect();
            return Err(fail(
                ipsec_status::IPSEC_ERR_NOT_FOUND,
                format!(
                    "no [[sa]] named {name:?} (the text has: {})",
                    names.join(", ")
                ),
            ));
        };
        let named = sas.swap_remove(pos);
        let sa = SecurityAssociation::new(named.config, now(now_ns))
            .map_err(|e| config_error(&e.in_context(&format!("sa {name:?}"))))?;
        // SAFETY: `out` checked non-NULL and aligned; writable by contract.
        unsafe { out.write(into_handle::<ipsec_sa>(sa)) };
        Ok(())
    })
}

/// Frees an SA (its keys are wiped). NULL is ignored.
///
/// # Safety
///
/// `sa` is NULL or an SA from `ipsec_sa_new` / `ipsec_sa_from_toml` not freed before;
/// it must not be used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_free(sa: *mut ipsec_sa) {
    // SAFETY: caller's contract.
    boundary(|| unsafe { free_handle(sa) })
}

/// Runs `f` on the packet `buf[*offset .. *offset + *length]` and writes the new offset
/// and length back on success.
///
/// # Safety
///
/// `buf` points to `capacity` writable bytes; `offset` and `length` to `size_t`s.
#[inline(always)]
pub(crate) unsafe fn in_place(
    buf: *mut u8,
    capacity: usize,
    offset: *mut usize,
    length: *mut usize,
    f: impl FnOnce(&mut PacketBuf<'_>) -> Result<(), ipsec_core::Error>,
) -> Result<(), ipsec_status> {
    let offset = out_ptr(offset, "offset")?;
    let length = out_ptr(length, "length")?;
    // SAFETY: caller's contract.
    let buf = unsafe { bytes_mut(buf, capacity, "buf") }?;
    // SAFETY: both checked non-NULL and aligned; readable by contract.
    let (off, len) = unsafe { (offset.read(), length.read()) };
    let mut pkt = PacketBuf::new(buf, off, len).map_err(|_| bad_descriptor(off, len, capacity))?;
    crate::test_hooks::packet_step();
    f(&mut pkt).map_err(packet_error)?;
    // SAFETY: checked non-NULL and aligned; writable by contract.
    unsafe {
        offset.write(pkt.offset());
        length.write(pkt.len());
    }
    Ok(())
}

/// Encrypts the IP packet at `buf[*offset .. *offset + *length]` in place with an
/// outbound SA and updates `*offset` and `*length` to the ESP packet.
///
/// The headers go into the headroom in front of the packet and the trailer into the
/// tailroom behind it (`ipsec_sa_overhead` says how much); the payload is encrypted
/// where it lies. On failure `*offset` and `*length` are unchanged, the packet is
/// counted under its drop reason and the status says why: `IPSEC_ERR_NO_BUFFER_SPACE`,
/// `IPSEC_ERR_MALFORMED` (not an IP packet, empty), `IPSEC_ERR_LIFETIME_EXPIRED`,
/// `IPSEC_ERR_SEQUENCE_OVERFLOW`, `IPSEC_ERR_WRONG_DIRECTION`; NULL pointers or a
/// descriptor beyond `capacity` give `IPSEC_ERR_INVALID_ARGUMENT` (not counted).
///
/// # Safety
///
/// `sa` is a live SA used by no other thread during the call; `buf` points to
/// `capacity` writable bytes; `offset` and `length` point to writable `size_t`s.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_encrypt(
    sa: *mut ipsec_sa,
    buf: *mut u8,
    capacity: usize,
    offset: *mut usize,
    length: *mut usize,
    now_ns: u64,
) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let mut sa = unsafe { borrow_mut(sa, "sa") }?;
        // SAFETY: caller's contract.
        unsafe {
            in_place(buf, capacity, offset, length, |p| {
                sa.encrypt(p, now(now_ns))
            })
        }
    })
}

/// Decrypts the ESP (or UDP-encapsulated ESP) packet at `buf[*offset .. *offset +
/// *length]` in place with an inbound SA and updates `*offset` and `*length` to the
/// inner packet (tunnel mode) or the restored packet (transport mode).
///
/// The replay window is checked before and updated after the ICV verifies. On failure
/// `*offset` and `*length` are unchanged (the buffer's bytes may not be), the packet is
/// counted under its drop reason and the status says why: `IPSEC_ERR_AUTH_FAILED`,
/// `IPSEC_ERR_REPLAY`, `IPSEC_ERR_TOO_OLD`, `IPSEC_ERR_UNKNOWN_SPI`,
/// `IPSEC_ERR_MALFORMED`, `IPSEC_ERR_BAD_PADDING`, `IPSEC_ERR_BAD_NEXT_HEADER`,
/// `IPSEC_ERR_DUMMY`, `IPSEC_ERR_LIFETIME_EXPIRED`, `IPSEC_ERR_WRONG_DIRECTION`.
///
/// # Safety
///
/// As `ipsec_sa_encrypt`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_decrypt(
    sa: *mut ipsec_sa,
    buf: *mut u8,
    capacity: usize,
    offset: *mut usize,
    length: *mut usize,
    now_ns: u64,
) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let mut sa = unsafe { borrow_mut(sa, "sa") }?;
        // SAFETY: caller's contract.
        unsafe {
            in_place(buf, capacity, offset, length, |p| {
                sa.decrypt(p, now(now_ns))
            })
        }
    })
}

/// The packet a burst descriptor describes, or why it does not describe one (the last
/// error says so too).
///
/// # Safety
///
/// `p.buf` points to `p.capacity` writable bytes that nothing else accesses for `'a`.
pub(crate) unsafe fn described_packet<'a>(p: &ipsec_packet) -> Result<PacketBuf<'a>, ipsec_status> {
    // SAFETY: caller's contract.
    let buf = unsafe { bytes_mut(p.buf, p.capacity, "packets[i].buf") }?;
    PacketBuf::new(buf, p.offset, p.length)
        .map_err(|_| bad_descriptor(p.offset, p.length, p.capacity))
}

/// One packet of a burst: checks its descriptor and runs `f` on it.
///
/// # Safety
///
/// `p.buf` points to `p.capacity` writable bytes not accessed elsewhere.
#[inline(always)]
unsafe fn burst_one(
    p: &mut ipsec_packet,
    f: &mut impl FnMut(&mut PacketBuf<'_>) -> Result<(), ipsec_core::Error>,
) -> Result<(), ipsec_status> {
    // SAFETY: caller's contract.
    let mut pkt = unsafe { described_packet(p) }?;
    crate::test_hooks::packet_step();
    f(&mut pkt).map_err(packet_error)?;
    p.offset = pkt.offset();
    p.length = pkt.len();
    Ok(())
}

/// Which SA burst [`burst`] runs.
#[derive(Clone, Copy)]
pub(crate) enum BurstOp {
    Encrypt,
    Decrypt,
}

/// What [`burst`] needs of the object behind a handle: an SA, or a lane of a shared
/// SA (`ipsec_sa_lane_encrypt_burst`), whose calls are the SA's with the lane's
/// sequence numbers and shared replay window.
pub(crate) trait BurstTarget {
    /// `SecurityAssociation::bursts_interleave`.
    fn bursts_interleave(&self) -> bool;
    /// One packet of `op`.
    fn one(&mut self, op: BurstOp, pkt: &mut PacketBuf<'_>, now: Duration) -> Result<(), Error>;
    /// A burst of `op`; returns how many succeeded.
    fn many(
        &mut self,
        op: BurstOp,
        pkts: &mut [PacketBuf<'_>],
        results: &mut [Result<(), Error>],
        now: Duration,
    ) -> usize;
}

/// [`BurstTarget`] for a type with the SA's packet and burst calls.
macro_rules! burst_target {
    ($($ty:ty),+) => {$(
        impl BurstTarget for $ty {
            fn bursts_interleave(&self) -> bool {
                <$ty>::bursts_interleave(self)
            }

            #[inline(always)]
            fn one(
                &mut self,
                op: BurstOp,
                pkt: &mut PacketBuf<'_>,
                now: Duration,
            ) -> Result<(), Error> {
                match op {
                    BurstOp::Encrypt => self.encrypt(pkt, now),
                    BurstOp::Decrypt => self.decrypt(pkt, now),
                }
            }

            fn many(
                &mut self,
                op: BurstOp,
                pkts: &mut [PacketBuf<'_>],
                results: &mut [Result<(), Error>],
                now: Duration,
            ) -> usize {
                match op {
                    BurstOp::Encrypt => self.encrypt_burst(pkts, results, now),
                    BurstOp::Decrypt => self.decrypt_burst(pkts, results, now),
                }
            }
        }
    )+};
}

burst_target!(SecurityAssociation, SaLane);

/// How many descriptors [`burst`] hands to one `SecurityAssociation::encrypt_burst` /
/// `decrypt_burst` call (the size of the core's own burst chunks).
pub(crate) const BURST_GROUP: usize = 32;

/// How many of the `remaining` descriptors of a burst the next group takes: at most
/// [`BURST_GROUP`], and a group ends before a packet the test hook will panic on, so
/// that the packets before it report their results (test builds only; 0 then means
/// the next packet is that one).
pub(crate) fn burst_group_len(remaining: usize) -> usize {
    remaining
        .min(BURST_GROUP)
        .min(crate::test_hooks::packets_before_panic())
}

/// Whether the buffers of `packets` are pairwise disjoint (then each may be borrowed
/// mutably at the same time). The C contract does not forbid two descriptors in one
/// buffer (packets side by side in one allocation); such a group runs one packet at a
/// time instead.
pub(crate) fn buffers_disjoint(packets: &[ipsec_packet]) -> bool {
    let mut spans = [(0usize, 0usize); BURST_GROUP];
    let n = packets.len().min(BURST_GROUP);
    for (s, p) in spans.iter_mut().zip(packets) {
        *s = (p.buf as usize, (p.buf as usize).saturating_add(p.capacity));
    }
    let spans = &mut spans[..n];
    let ordered = |spans: &[(usize, usize)]| spans.windows(2).all(|w| w[0].1 <= w[1].0);
    // Buffers in address order (an array, a pool) pass in one look; others are sorted.
    ordered(spans) || {
        spans.sort_unstable();
        ordered(spans)
    }
}

/// The burst loop shared by encrypt and decrypt, run inside [`burst_boundary`]:
/// returns how many packets succeeded, also after a panic part-way.
///
/// Where the SA's bursts work across packets (`bursts_interleave`), the descriptors
/// go to its burst call, [`BURST_GROUP`] at a time, as `PacketBuf`s on the stack (no
/// allocation), so that C callers get what the core's bursts do across packets (CBC
/// chains and HMACs side by side or on intel-ipsec-mb's multi-buffer code, AES-GCM
/// seals back to back, ICVs computed ahead); elsewhere they are processed one at a
/// time. A descriptor that does not describe its buffer fails on its own; the others
/// go on. A group whose descriptors share a buffer runs one packet at a time.
///
/// # Safety
///
/// `packets` points to `count` descriptors as documented on the entry points.
#[inline(always)]
pub(crate) unsafe fn burst<H: Handle>(
    sa: *mut H,
    name: &'static str,
    packets: *mut ipsec_packet,
    count: usize,
    op: BurstOp,
    now: Duration,
) -> usize
where
    H::Inner: BurstTarget,
{
    let body = |progress: &mut BurstProgress| {
        // SAFETY: caller's contract.
        let Ok(packets) = (unsafe { array_mut(packets, count, "packets") }) else {
            return 0;
        };
        // SAFETY: caller's contract.
        let mut sa = match unsafe { borrow_mut(sa, name) } {
            Ok(sa) => sa,
            Err(status) => {
                for p in packets.iter_mut() {
                    p.status = status as u32;
                }
                return 0;
            }
        };
        progress.started = true;
        // Groups only where the SA's burst code works across packets (otherwise it is
        // one packet at a time, and gathering the descriptors measured 4-9 % slower).
        let grouped = sa.bursts_interleave();
        let mut rest = packets;
        while !rest.is_empty() {
            let take = burst_group_len(rest.len());
            let (group, tail) = core::mem::take(&mut rest).split_at_mut(take.max(1));
            rest = tail;
            if take == 0 || !grouped || !buffers_disjoint(group) {
                for p in group.iter_mut() {
                    let mut one = |pkt: &mut PacketBuf<'_>| sa.one(op, pkt, now);
                    // SAFETY: each descriptor's buffer is valid (caller's contract);
                    // one buffer is borrowed at a time.
                    p.status = match unsafe { burst_one(p, &mut one) } {
                        Ok(()) => {
                            progress.ok += 1;
                            ipsec_status::IPSEC_OK as u32
                        }
                        Err(s) => s as u32,
                    };
                    progress.done += 1;
                }
                continue;
            }
            // SAFETY: the group's buffers are valid (caller's contract) and pairwise
            // disjoint (checked), so they may all be borrowed at once.
            progress.ok += unsafe { burst_group(&mut *sa, group, op, now) };
            progress.done += group.len();
        }
        progress.ok
    };
    // SAFETY: `started` is set once `packets` was checked (caller's contract).
    unsafe { burst_boundary(packets, count, body, |_| {}) }
}

/// One group of [`burst`] (at most [`BURST_GROUP`] descriptors) through the SA's burst
/// call; every status written; returns how many succeeded.
///
/// # Safety
///
/// Each descriptor's `buf` points to `capacity` writable bytes that nothing else
/// accesses during the call, and no two overlap.
unsafe fn burst_group<T: BurstTarget>(
    sa: &mut T,
    group: &mut [ipsec_packet],
    op: BurstOp,
    now: Duration,
) -> usize {
    debug_assert!(group.len() <= BURST_GROUP);
    let mut bufs: [PacketBuf<'_>; BURST_GROUP] =
        core::array::from_fn(|_| PacketBuf::new(&mut [], 0, 0).expect("an empty window"));
    // `slot[i]`: the index in `bufs` of descriptor i, if it describes its buffer.
    let mut slot = [usize::MAX; BURST_GROUP];
    let mut n = 0;
    for (p, slot) in group.iter_mut().zip(slot.iter_mut()) {
        // SAFETY: caller's contract (valid, and disjoint from the other buffers).
        match unsafe { described_packet(p) } {
            Ok(pkt) => {
                crate::test_hooks::packet_step();
                bufs[n] = pkt;
                *slot = n;
                n += 1;
            }
            Err(status) => p.status = status as u32,
        }
    }
    let mut results = [Ok(()); BURST_GROUP];
    let ok = sa.many(op, &mut bufs[..n], &mut results[..n], now);
    for (p, &k) in group.iter_mut().zip(slot.iter()) {
        if k == usize::MAX {
            // Refused before the burst: its error again, so that the last error
            // describes the last failed packet.
            // SAFETY: as above; this buffer is not among `bufs` (it was refused).
            let _ = unsafe { described_packet(p) };
            continue;
        }
        // By reference: only a failure's error is copied (a wide load of the whole
        // `Result` right after the burst's narrow store of its tag would wait for it).
        p.status = match &results[k] {
            Ok(()) => {
                p.offset = bufs[k].offset();
                p.length = bufs[k].len();
                ipsec_status::IPSEC_OK as u32
            }
            // In order, so that the last error describes the last failed packet.
            Err(e) => packet_error(*e) as u32,
        };
    }
    ok
}

/// Encrypts `count` packets in place with one outbound SA (DPDK's
/// `rte_ipsec_pkt_process`): each descriptor's `offset` and `length` are updated on
/// success and its `status` is set to `IPSEC_OK` or the reason it failed (as
/// `ipsec_sa_encrypt`). Failed packets stay where they are, unchanged, never freed.
/// Returns how many succeeded; 0 also when `sa` is NULL (every status is then
/// `IPSEC_ERR_INVALID_ARGUMENT`; `IPSEC_ERR_POISONED` for a poisoned SA) or `packets`
/// is NULL with `count > 0` (no status can be written; the last error says so). The
/// last error describes the last failed packet.
///
/// Where the SA's burst code works across packets (AES-CBC with HMAC: several
/// packets' CBC chains and HMACs at once; with intel-ipsec-mb, AES-GCM seals back to
/// back) the packets are processed in groups of up to 32 by it; otherwise one at a
/// time. Results, counters and bytes are those of `ipsec_sa_encrypt` on each packet in
/// turn. Descriptors should not share a buffer: a group in which two do is
/// processed one packet at a time (correct, slower). Should a panic be caught
/// part-way, the packets of the groups finished before it keep their results (and are
/// counted in the value returned), the first packet of the group being processed gets
/// `IPSEC_ERR_PANIC`, the rest `IPSEC_ERR_POISONED` (that group's packets may have been
/// partly processed: their bytes are unspecified), and the SA is poisoned.
///
/// # Safety
///
/// `sa` as for `ipsec_sa_encrypt`; `packets` points to `count` writable descriptors,
/// each `buf` to `capacity` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_encrypt_burst(
    sa: *mut ipsec_sa,
    packets: *mut ipsec_packet,
    count: usize,
    now_ns: u64,
) -> usize {
    // SAFETY: caller's contract.
    unsafe { burst(sa, "sa", packets, count, BurstOp::Encrypt, now(now_ns)) }
}

/// Decrypts `count` packets in place with one inbound SA; the burst form of
/// `ipsec_sa_decrypt`, with the conventions of `ipsec_sa_encrypt_burst` (for AES-CBC
/// with HMAC the ICVs of a group are computed together, each compared before its
/// packet is decrypted).
///
/// # Safety
///
/// As `ipsec_sa_encrypt_burst`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_decrypt_burst(
    sa: *mut ipsec_sa,
    packets: *mut ipsec_packet,
    count: usize,
    now_ns: u64,
) -> usize {
    // SAFETY: caller's contract.
    unsafe { burst(sa, "sa", packets, count, BurstOp::Decrypt, now(now_ns)) }
}

/// The room an outbound packet of `packet_len` bytes needs (`headroom` in front,
/// `tailroom` behind) and the most any packet can grow (`max_overhead`).
///
/// # Safety
///
/// `sa` is a live SA; `out` points to a writable `ipsec_overhead`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_overhead(
    sa: *const ipsec_sa,
    packet_len: usize,
    out: *mut ipsec_overhead,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let sa = unsafe { borrow(sa, "sa") }?;
        let value = ipsec_overhead {
            headroom: sa.max_headroom(),
            tailroom: sa.tailroom_for(packet_len),
            max_overhead: sa.max_overhead(),
        };
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(value) };
        Ok(())
    })
}

/// Copies the SA's counters into `*out`.
///
/// # Safety
///
/// `sa` is a live SA; `out` points to a writable `ipsec_sa_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_get_stats(
    sa: *const ipsec_sa,
    out: *mut ipsec_sa_stats,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let sa = unsafe { borrow(sa, "sa") }?;
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(stats_of(&sa)) };
        Ok(())
    })
}

/// Describes the SA (SPI, direction, algorithms, sequence number, expiry).
///
/// # Safety
///
/// `sa` is a live SA; `out` points to a writable `ipsec_sa_info`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_get_info(
    sa: *const ipsec_sa,
    out: *mut ipsec_sa_info,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let sa = unsafe { borrow(sa, "sa") }?;
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(info_of(&sa)) };
        Ok(())
    })
}

/// Writes the SA's soft limits in force into `*out_bytes`, `*out_packets` and
/// `*out_time_ns` (nanoseconds after the SA's creation), 0 for no limit of that kind:
/// the configured soft lifetime with the jitter drawn when the SA was created
/// (`soft_lifetime_jitter`). Reaching one raises `IPSEC_EVENT_REKEY`.
///
/// # Safety
///
/// `sa` is a live SA; the three out-pointers point to writable `uint64_t`s.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_get_soft_limits(
    sa: *const ipsec_sa,
    out_bytes: *mut u64,
    out_packets: *mut u64,
    out_time_ns: *mut u64,
) -> ipsec_status {
    call(|| {
        let out_bytes = out_ptr(out_bytes, "out_bytes")?;
        let out_packets = out_ptr(out_packets, "out_packets")?;
        let out_time_ns = out_ptr(out_time_ns, "out_time_ns")?;
        // SAFETY: caller's contract.
        let sa = unsafe { borrow(sa, "sa") }?;
        let soft = sa.soft_limits();
        let time_ns = soft
            .time
            .map_or(0, |t| u64::try_from(t.as_nanos()).unwrap_or(u64::MAX));
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe {
            out_bytes.write(soft.bytes.unwrap_or(0));
            out_packets.write(soft.packets.unwrap_or(0));
            out_time_ns.write(time_ns);
        }
        Ok(())
    })
}

/// Checks the lifetimes against `now_ns` and writes the next event to act on into
/// `*out`: `IPSEC_EVENT_REKEY` (soft lifetime: negotiate a new SA),
/// `IPSEC_EVENT_EXPIRED` (hard lifetime: the SA now refuses packets) or
/// `IPSEC_EVENT_NONE`. Each event is reported once; call until `IPSEC_EVENT_NONE`:
///
/// ```c
/// ipsec_sa_event ev;
/// while (ipsec_sa_poll_event(sa, now_ns, &ev) == IPSEC_OK && ev.kind != IPSEC_EVENT_NONE) { ... }
/// ```
///
/// # Safety
///
/// `sa` is a live SA used by no other thread during the call; `out` points to a
/// writable `ipsec_sa_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_poll_event(
    sa: *mut ipsec_sa,
    now_ns: u64,
    out: *mut ipsec_sa_event,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let mut sa = unsafe { borrow_mut(sa, "sa") }?;
        let event = event_to(sa.poll_event(now(now_ns)));
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(event) };
        Ok(())
    })
}

/// Writes a NAT-keepalive into `buf` when the SA owes its peer one at `now_ns` (RFC 3948
/// §2.3: an outbound SA with `udp_encap` that has sent nothing for
/// `nat_keepalive_interval` seconds) and stores its length in `*out_len`, counting it as
/// sent; stores 0 when none is due. Send the bytes as they are: a whole IP packet (the
/// SA's addresses, UDP with its ports and a valid checksum, one 0xFF byte). Call it
/// when the time `ipsec_sa_next_keepalive` gives has come; every packet encrypted moves
/// that time on. `capacity` must be at least `IPSEC_NAT_KEEPALIVE_MAX_LEN`
/// (`IPSEC_ERR_BUFFER_TOO_SMALL` otherwise, nothing written). An inbound SA, one
/// without UDP encapsulation or with keepalives off, an expired SA and a transport-mode
/// SA that has not encrypted its first packet yet (it takes the addresses from it) owe
/// none.
///
/// # Safety
///
/// `sa` is a live SA used by no other thread during the call; `buf` points to
/// `capacity` writable bytes; `out_len` to a writable `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_poll_keepalive(
    sa: *mut ipsec_sa,
    now_ns: u64,
    buf: *mut u8,
    capacity: usize,
    out_len: *mut usize,
) -> ipsec_status {
    call(|| {
        let out_len = out_ptr(out_len, "out_len")?;
        // SAFETY: caller's contract.
        let mut sa = unsafe { borrow_mut(sa, "sa") }?;
        // SAFETY: caller's contract.
        let buf = unsafe { bytes_mut(buf, capacity, "buf") }?;
        let out = keepalive_buffer(buf)?;
        let len = sa.poll_keepalive(now(now_ns), out).unwrap_or(0);
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out_len.write(len) };
        Ok(())
    })
}

/// The first `IPSEC_NAT_KEEPALIVE_MAX_LEN` bytes of `buf`, or
/// `IPSEC_ERR_BUFFER_TOO_SMALL`.
pub(crate) fn keepalive_buffer(
    buf: &mut [u8],
) -> Result<&mut [u8; NAT_KEEPALIVE_MAX_LEN], ipsec_status> {
    let len = buf.len();
    buf.first_chunk_mut().ok_or_else(|| {
        fail(
            ipsec_status::IPSEC_ERR_BUFFER_TOO_SMALL,
            format!(
                "capacity {len} is less than IPSEC_NAT_KEEPALIVE_MAX_LEN ({NAT_KEEPALIVE_MAX_LEN})"
            ),
        )
    })
}

/// Stores in `*out_ns` when the SA's next NAT-keepalive is due, on the caller's clock
/// (the `now_ns` of the other calls), for a timer: then call `ipsec_sa_poll_keepalive`.
/// `UINT64_MAX` when the SA owes none (see `ipsec_sa_poll_keepalive`).
///
/// # Safety
///
/// `sa` is a live SA; `out_ns` points to a writable `uint64_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_next_keepalive(
    sa: *const ipsec_sa,
    out_ns: *mut u64,
) -> ipsec_status {
    call(|| {
        let out_ns = out_ptr(out_ns, "out_ns")?;
        // SAFETY: caller's contract.
        let sa = unsafe { borrow(sa, "sa") }?;
        let due = time_ns(sa.next_keepalive());
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out_ns.write(due) };
        Ok(())
    })
}

/// A point on the caller's clock in nanoseconds; `None` (never) is `u64::MAX`, as are
/// times beyond it.
pub(crate) fn time_ns(t: Option<Duration>) -> u64 {
    t.map_or(u64::MAX, |t| {
        u64::try_from(t.as_nanos()).unwrap_or(u64::MAX)
    })
}
