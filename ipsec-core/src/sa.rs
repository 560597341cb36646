//! Security associations: configuration, state, lifetimes, events and counters.
//!
//! A [`SecurityAssociation`] is one direction of one IPsec SA (RFC 4301 §4.4.2): its
//! keys, its mode, its sequence numbers or replay window, its lifetimes and its
//! counters. The packet transforms themselves live in [`crate::esp`].
//!
//! Method kinds follow the sans-IO convention: getters take `&self`; `encrypt*` and
//! `decrypt*` take packets and the caller's `now`; [`SecurityAssociation::poll_event`]
//! returns what the caller must act on (a rekey request) until it returns `None`.
//!
//! Thread safety: an SA is `Send` but is mutated by every packet, so one thread owns it
//! at a time (as DPDK: "only one thread processes a given SA"). Wrap it in a mutex to
//! share it.

use crate::crypto::{Cipher, Integrity, IvSource, Transform};
use crate::error::{ConfigError, DropReason, Error, LifetimeLimit};
use crate::esp::OuterHeader;
use crate::icmp::{TooBigMessage, plateau_below};
use crate::nat::NatTraversal;
use crate::path_mtu::{IPV4_MIN_MTU, IPV6_MIN_MTU, MIN_LEARNED_IPV4_MTU, PathMtu};
use crate::replay::ReplayWindow;
use core::fmt;
use core::time::Duration;
use std::net::IpAddr;
use zeroize::Zeroizing;

/// Which way an SA carries traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Direction {
    /// This side encrypts.
    Outbound,
    /// This side decrypts.
    Inbound,
}

impl Direction {
    /// `"outbound"` or `"inbound"`.
    pub const fn name(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }

    /// Parses `"outbound"` / `"inbound"`.
    pub fn from_name(name: &str) -> Result<Direction, ConfigError> {
        match name.to_ascii_lowercase().as_str() {
            "outbound" | "out" => Ok(Direction::Outbound),
            "inbound" | "in" => Ok(Direction::Inbound),
            _ => Err(ConfigError::new(
                "direction",
                format!("expected \"outbound\" or \"inbound\", got {name:?}"),
            )),
        }
    }
}

/// ESP mode (RFC 4301 §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mode {
    /// The whole IP packet is protected and carried inside a new outer IP header.
    Tunnel,
    /// The IP header stays; only what follows it is protected.
    Transport,
}

impl Mode {
    /// `"tunnel"` or `"transport"`.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Tunnel => "tunnel",
            Mode::Transport => "transport",
        }
    }

    /// Parses `"tunnel"` / `"transport"`.
    pub fn from_name(name: &str) -> Result<Mode, ConfigError> {
        match name.to_ascii_lowercase().as_str() {
            "tunnel" => Ok(Mode::Tunnel),
            "transport" => Ok(Mode::Transport),
            _ => Err(ConfigError::new(
                "mode",
                format!("expected \"tunnel\" or \"transport\", got {name:?}"),
            )),
        }
    }
}

/// A set of lifetime limits (RFC 4301 §4.4.2.1); `None` means no limit of that kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lifetime {
    /// Bytes of inner packets processed.
    pub bytes: Option<u64>,
    /// Packets processed.
    pub packets: Option<u64>,
    /// Time since the SA was created (the `now` given to [`SecurityAssociation::new`]).
    pub time: Option<Duration>,
}

impl Lifetime {
    /// No limits.
    pub const NONE: Lifetime = Lifetime {
        bytes: None,
        packets: None,
        time: None,
    };

    /// The same limits with a byte limit.
    pub const fn with_bytes(mut self, bytes: u64) -> Self {
        self.bytes = Some(bytes);
        self
    }

    /// The same limits with a packet limit.
    pub const fn with_packets(mut self, packets: u64) -> Self {
        self.packets = Some(packets);
        self
    }

    /// The same limits with a time limit.
    pub const fn with_time(mut self, time: Duration) -> Self {
        self.time = Some(time);
        self
    }
}

/// What [`SecurityAssociation::replay_window`] shows for an outbound SA (which has
/// none): size 0, without and with ESN.
static OUTBOUND_WINDOW: std::sync::LazyLock<ReplayWindow> = std::sync::LazyLock::new(|| {
    ReplayWindow::without_histogram(0, false).expect("0 is a valid size")
});
static OUTBOUND_WINDOW_ESN: std::sync::LazyLock<ReplayWindow> = std::sync::LazyLock::new(|| {
    ReplayWindow::without_histogram(0, true).expect("0 is a valid size")
});

/// A duration as the SA keeps it: whole nanoseconds in a `u64` (up to 584 years),
/// saturating at `u64::MAX`.
#[inline]
pub(crate) fn nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

/// [`nanos`] as an `i64` (saturating: 292 years).
pub(crate) fn signed_nanos(d: Duration) -> i64 {
    i64::try_from(nanos(d)).unwrap_or(i64::MAX)
}

/// A [`Lifetime`] as the SA keeps it, in 24 bytes instead of 48: each limit a `u64`,
/// [`Limits::NONE`] (`u64::MAX`) for no limit of that kind, the time in nanoseconds.
/// A limit of `u64::MAX` bytes or packets, or of `u64::MAX` nanoseconds (584 years) or
/// more, can never be reached on any real SA, so it is kept as no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Bytes of inner packets processed.
    pub(crate) bytes: u64,
    /// Packets processed.
    pub(crate) packets: u64,
    /// Time since the SA was created, in nanoseconds.
    pub(crate) nanos: u64,
}

impl Limits {
    /// "No limit" in each field.
    pub(crate) const NONE: u64 = u64::MAX;

    /// `l` as the SA keeps it.
    pub(crate) fn of(l: &Lifetime) -> Limits {
        Limits {
            bytes: l.bytes.unwrap_or(Self::NONE),
            packets: l.packets.unwrap_or(Self::NONE),
            nanos: l.time.map_or(Self::NONE, nanos),
        }
    }

    /// The limits as a [`Lifetime`] (`None` for no limit).
    pub(crate) fn lifetime(&self) -> Lifetime {
        let some = |v: u64| (v != Self::NONE).then_some(v);
        Lifetime {
            bytes: some(self.bytes),
            packets: some(self.packets),
            time: some(self.nanos).map(Duration::from_nanos),
        }
    }

    /// The first limit that `bytes`, `packets` and `age` (nanoseconds) have reached,
    /// if any.
    fn reached(&self, bytes: u64, packets: u64, age: u64) -> Option<LifetimeLimit> {
        if self.nanos != Self::NONE && age >= self.nanos {
            Some(LifetimeLimit::Time)
        } else if self.packets != Self::NONE && packets >= self.packets {
            Some(LifetimeLimit::Packets)
        } else if self.bytes != Self::NONE && bytes >= self.bytes {
            Some(LifetimeLimit::Bytes)
        } else {
            None
        }
    }
}

/// The first point (absolute time, packet count, byte count) at which a lifetime that
/// has not fired yet is reached, so that the per-packet check is three comparisons.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Trip {
    /// On the caller's clock, in nanoseconds (`u64::MAX`: never).
    at: u64,
    packets: u64,
    bytes: u64,
}

impl Trip {
    const NEVER: Trip = Trip {
        at: u64::MAX,
        packets: u64::MAX,
        bytes: u64::MAX,
    };

    /// The trip point of `l` for an SA whose age at `now` is `now - born` (in
    /// nanoseconds; `born` is negative for an SA restored on a clock that read less
    /// than the SA's age: see [`crate::snapshot`]).
    fn of(l: &Limits, born: i64) -> Trip {
        Trip {
            at: if l.nanos == Limits::NONE {
                u64::MAX
            } else {
                let at = i128::from(born) + i128::from(l.nanos);
                u64::try_from(at.max(0)).unwrap_or(u64::MAX)
            },
            packets: l.packets,
            bytes: l.bytes,
        }
    }

    fn min(self, o: Trip) -> Trip {
        Trip {
            at: self.at.min(o.at),
            packets: self.packets.min(o.packets),
            bytes: self.bytes.min(o.bytes),
        }
    }

    #[inline]
    fn hit(&self, now: Duration, packets: u64, bytes: u64) -> bool {
        nanos(now) >= self.at || packets >= self.packets || bytes >= self.bytes
    }
}

/// Something the owner of an SA must act on; returned by
/// [`SecurityAssociation::poll_event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SaEvent {
    /// A soft lifetime was reached: negotiate a replacement SA (rekey) now.
    Rekey(LifetimeLimit),
    /// A hard lifetime was reached: the SA refuses all packets from now on.
    Expired(LifetimeLimit),
}

/// Counters of one SA: packets and bytes processed, and one counter per drop reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaStats {
    /// Packets successfully encrypted (outbound) or decrypted (inbound).
    pub packets: u64,
    /// Bytes of inner packets in those packets (before encryption / after decryption).
    pub bytes: u64,
    pub(crate) drops: [u64; DropReason::ALL.len()],
}

impl SaStats {
    /// Packets dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    /// All packets dropped, whatever the reason.
    pub fn dropped_total(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// `(reason, count)` for every reason, zero counts included, in a stable order.
    pub fn drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .into_iter()
            .map(|r| (r, self.drops[r.index()]))
    }

    #[inline]
    pub(crate) fn count_drop(&mut self, reason: DropReason) {
        self.drops[reason.index()] += 1;
    }

    /// Counts `n` packets dropped for `reason` at once (a datagram's held fragments).
    #[inline]
    pub(crate) fn count_drops(&mut self, reason: DropReason, n: u64) {
        self.drops[reason.index()] += n;
    }
}

/// The packet and byte counters of an SA (its drop counters are kept by direction:
/// see [`Side`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SaCounts {
    /// Packets successfully encrypted (outbound) or decrypted (inbound).
    pub(crate) packets: u64,
    /// Bytes of inner packets in those packets.
    pub(crate) bytes: u64,
}

/// "No counter for this reason" in the slot tables below.
const NO_SLOT: u8 = u8::MAX;

/// The slot of each reason (by [`DropReason::index`]) in an array of the counters of
/// `list`, in `list`'s order; [`NO_SLOT`] for the reasons not in it.
const fn slots(list: &[DropReason]) -> [u8; DropReason::ALL.len()] {
    let mut t = [NO_SLOT; DropReason::ALL.len()];
    let mut i = 0;
    while i < list.len() {
        t[list[i].index()] = i as u8;
        i += 1;
    }
    t
}

/// The drop reasons an outbound SA can count, each a `u64`. The others can only come
/// from receiving: the ICV check (`auth_failed`), the replay window (`replay`,
/// `too_old`), the decapsulated trailer (`bad_padding`, `bad_next_header`, `dummy`), a
/// NAT-keepalive handed in (`nat_keepalive`) and the policy check of a decapsulated
/// packet ([`SecurityAssociation::decrypt_verified`], whose check may return any error,
/// fragments' included): every decrypting call on an outbound SA fails with
/// `wrong_direction` before any of these. A few reasons no outbound path counts today
/// (`unknown_spi`, `policy_mismatch`, `policy_discard`, `ecn_ce_on_not_ect`) keep a
/// counter all the same, so that no count can be lost.
const OUTBOUND_REASONS: [DropReason; 10] = [
    DropReason::Malformed,
    DropReason::UnknownSpi,
    DropReason::PolicyMismatch,
    DropReason::LifetimeExpired,
    DropReason::SequenceOverflow,
    DropReason::NoBufferSpace,
    DropReason::PolicyDiscard,
    DropReason::EcnCeOnNotEct,
    DropReason::WrongDirection,
    DropReason::TooBig,
];
const OUTBOUND_SLOTS: [u8; DropReason::ALL.len()] = slots(&OUTBOUND_REASONS);

/// The drop reasons an inbound SA counts in a `u64`: those anyone who can send it
/// packets can drive without the keys (forged, replayed, old, malformed or misdirected
/// packets, NAT-keepalives, packets after expiry, CE marks on the unprotected outer
/// header), and those an authenticated peer or the hosts behind it can drive at the
/// traffic's rate (dummy packets, decapsulated packets the policy refuses, and the
/// fragments among them).
const INBOUND_WIDE: [DropReason; 18] = [
    DropReason::AuthFailed,
    DropReason::Replay,
    DropReason::TooOld,
    DropReason::Malformed,
    DropReason::UnknownSpi,
    DropReason::PolicyMismatch,
    DropReason::LifetimeExpired,
    DropReason::Dummy,
    DropReason::PolicyDiscard,
    DropReason::NatKeepalive,
    DropReason::EcnCeOnNotEct,
    DropReason::FragmentTimeout,
    DropReason::FragmentOverlap,
    DropReason::FragmentDuplicate,
    DropReason::FragmentLimit,
    DropReason::FragmentInvalid,
    DropReason::FragmentTooShort,
    DropReason::FragmentUnresolved,
];
const INBOUND_WIDE_SLOTS: [u8; DropReason::ALL.len()] = slots(&INBOUND_WIDE);

/// The other reasons an inbound SA counts, each in a `u32` that saturates at
/// `u32::MAX`: packets whose ICV verified but whose trailer is invalid (a broken
/// peer, not an attacker: `bad_padding`, `bad_next_header`), the caller's own mistakes
/// (`no_buffer_space`, `wrong_direction`), and the outbound reasons a check passed to
/// [`SecurityAssociation::decrypt_verified`] could still return (`sequence_overflow`,
/// `too_big`).
const INBOUND_NARROW: [DropReason; 6] = [
    DropReason::BadPadding,
    DropReason::BadNextHeader,
    DropReason::NoBufferSpace,
    DropReason::WrongDirection,
    DropReason::SequenceOverflow,
    DropReason::TooBig,
];
const INBOUND_NARROW_SLOTS: [u8; DropReason::ALL.len()] = slots(&INBOUND_NARROW);

/// The state only an outbound SA has, and its drop counters.
pub(crate) struct OutboundState {
    /// The last sequence number used.
    pub(crate) seq: u64,
    /// Tunnel mode: the outer header, built once.
    pub(crate) outer: Option<OuterHeader>,
    /// The largest outer packet that needs no further look (the path MTU as last
    /// computed, `usize::MAX` without one); larger packets take the slow path, which
    /// refreshes it first.
    pub(crate) mtu_cap: usize,
    /// Identification of the next IPv6 Fragment header this SA writes (a per-peer
    /// counter from a random start, RFC 7739 §5.1).
    pub(crate) fragment_id: u32,
    /// The Identification of the next IPv4 header the SA writes (tunnel mode,
    /// NAT-keepalives): a counter from a random start (RFC 6864 §4.1; see
    /// `OuterHeader`).
    pub(crate) next_ipv4_ident: u16,
    pub(crate) tfc: TfcPadding,
    /// When the SA last sent a packet (or was created), on the caller's clock, in
    /// nanoseconds: NAT-keepalives are due after a silence (snapshots carry it).
    pub(crate) last_sent: u64,
    /// When the SA last encrypted a packet of traffic (not a NAT-keepalive nor a dummy
    /// packet), in nanoseconds (meaningful once it did: see
    /// [`SecurityAssociation::last_used`]).
    pub(crate) last_protected: u64,
    /// One counter per reason of [`OUTBOUND_REASONS`].
    drops: [u64; OUTBOUND_REASONS.len()],
}

/// The state only an inbound SA has, and its drop counters.
pub(crate) struct InboundState {
    /// The replay window (always present; size 0 means "off").
    pub(crate) replay: ReplayWindow,
    /// A lane of a [`crate::shared::SharedSa`]: the replay window it checks.
    pub(crate) shared_replay: Option<std::sync::Arc<crate::shared::SharedState>>,
    /// One counter per reason of [`INBOUND_WIDE`].
    wide: [u64; INBOUND_WIDE.len()],
    /// One counter per reason of [`INBOUND_NARROW`] (saturating).
    narrow: [u32; INBOUND_NARROW.len()],
    /// When the SA last accepted a packet, on the caller's clock, in nanoseconds
    /// (meaningful once it accepted one: see [`SecurityAssociation::last_used`]).
    pub(crate) last_accepted: u64,
}

/// What one direction of SA keeps that the other does not, so that neither pays for
/// the other's fields (issue 12: memory per SA).
pub(crate) enum Side {
    Outbound(OutboundState),
    Inbound(InboundState),
}

impl Side {
    /// Counts `n` packets dropped for `reason`.
    #[inline]
    fn count_drops(&mut self, reason: DropReason, n: u64) {
        let i = reason.index();
        match self {
            Side::Outbound(o) => {
                let slot = OUTBOUND_SLOTS[i];
                debug_assert_ne!(slot, NO_SLOT, "{reason:?} counted on an outbound SA");
                if let Some(c) = o.drops.get_mut(usize::from(slot)) {
                    *c += n;
                }
            }
            Side::Inbound(s) => {
                let wide = INBOUND_WIDE_SLOTS[i];
                if let Some(c) = s.wide.get_mut(usize::from(wide)) {
                    *c += n;
                } else if let Some(c) = s.narrow.get_mut(usize::from(INBOUND_NARROW_SLOTS[i])) {
                    *c = c.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
                }
            }
        }
    }

    /// The count for `reason` (0 for a reason this direction does not count).
    fn dropped(&self, reason: DropReason) -> u64 {
        let i = reason.index();
        match self {
            Side::Outbound(o) => o.drops.get(usize::from(OUTBOUND_SLOTS[i])).copied(),
            Side::Inbound(s) => s
                .wide
                .get(usize::from(INBOUND_WIDE_SLOTS[i]))
                .copied()
                .or_else(|| {
                    s.narrow
                        .get(usize::from(INBOUND_NARROW_SLOTS[i]))
                        .map(|&c| u64::from(c))
                }),
        }
        .unwrap_or(0)
    }

    /// Sets the count for `reason` (a restored snapshot's); a narrow counter saturates,
    /// and a reason this direction cannot count is left out.
    fn set_dropped(&mut self, reason: DropReason, count: u64) {
        let i = reason.index();
        match self {
            Side::Outbound(o) => {
                if let Some(c) = o.drops.get_mut(usize::from(OUTBOUND_SLOTS[i])) {
                    *c = count;
                }
            }
            Side::Inbound(s) => {
                if let Some(c) = s.wide.get_mut(usize::from(INBOUND_WIDE_SLOTS[i])) {
                    *c = count;
                } else if let Some(c) = s.narrow.get_mut(usize::from(INBOUND_NARROW_SLOTS[i])) {
                    *c = u32::try_from(count).unwrap_or(u32::MAX);
                }
            }
        }
    }
}

/// What the tailroom an SA needs behind a packet depends on
/// ([`SecurityAssociation::tailroom_for`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TailroomShape {
    tunnel: bool,
    /// TFC padding target (0: none).
    pad_to: u16,
    pad_align: usize,
    icv_len: usize,
}

impl TailroomShape {
    /// The tailroom behind an inner packet of `len` bytes: TFC padding (tunnel mode),
    /// ESP padding to the cipher's alignment, the pad-length and next-header bytes,
    /// and the ICV.
    pub(crate) fn tailroom_for(self, len: usize) -> usize {
        let trailer = 2 + self.icv_len;
        if !self.tunnel {
            return self.pad_align - 1 + trailer;
        }
        let payload = len.max(usize::from(self.pad_to));
        (payload - len) + crate::crypto::pad_len(payload, self.pad_align) + trailer
    }
}

/// Extra bytes TFC padding (RFC 4303 §2.7) adds to tunnel-mode packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TfcPadding {
    /// No TFC padding.
    #[default]
    None,
    /// Pad every inner packet up to this many bytes (shorter packets grow, longer ones
    /// are unchanged), hiding packet sizes below it.
    PadTo(u16),
}

/// How much ESP padding outbound packets get (RFC 4303 §2.4 allows 0 to 255 bytes).
///
/// Receivers accept either: the padding is verified as 1, 2, 3, ... whatever its length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum EspPadding {
    /// Pad the encrypted part (payload, padding, pad length, next header) to whole
    /// 16-byte blocks. Up to 12 bytes more on the wire than [`EspPadding::Minimal`], but
    /// the AEAD backends process whole blocks much faster: sealing 68 bytes with ring's
    /// AES-GCM took 113-117 ns against 87-94 ns for 80 bytes on the machine this was tuned
    /// on (RustCrypto: 146-183 ns against 101-108 ns). The default.
    #[default]
    CipherBlocks,
    /// The fewest bytes: 4-byte alignment (16 for AES-CBC), as Linux and scapy send.
    Minimal,
}

impl EspPadding {
    /// `"blocks"` or `"minimal"`.
    pub const fn name(self) -> &'static str {
        match self {
            EspPadding::CipherBlocks => "blocks",
            EspPadding::Minimal => "minimal",
        }
    }

    /// Parses `"blocks"` / `"minimal"`.
    pub fn from_name(name: &str) -> Result<EspPadding, ConfigError> {
        match name.to_ascii_lowercase().as_str() {
            "blocks" => Ok(EspPadding::CipherBlocks),
            "minimal" => Ok(EspPadding::Minimal),
            _ => Err(ConfigError::new(
                "padding",
                format!("expected \"blocks\" or \"minimal\", got {name:?}"),
            )),
        }
    }

    /// The alignment of the encrypted part for `cipher` under this policy.
    pub(crate) const fn align(self, cipher: Cipher) -> usize {
        match (self, cipher) {
            (EspPadding::Minimal, c) => c.pad_align(),
            // NULL has no cipher blocks; its HMAC does not care about alignment.
            (EspPadding::CipherBlocks, Cipher::Null) => 4,
            (EspPadding::CipherBlocks, _) => 16,
        }
    }
}

/// What the DF (Don't Fragment) bit of an outer IPv4 header says, per SA (RFC 4301
/// §8.1: copy, set or clear).
///
/// It applies to the IPv4 headers the SA writes itself: the outer header of tunnel
/// mode and the NAT-keepalives. Transport mode keeps the packet's own header, DF
/// included; an IPv6 outer header has no DF bit (routers never fragment IPv6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DfPolicy {
    /// Copy DF from the inner IPv4 header (the default, as Linux does). A packet with no
    /// inner IPv4 header gets DF **set**: an inner IPv6 packet, because IPv6 packets are
    /// never fragmented on their way (RFC 8200 §5) and their senders rely on path MTU
    /// discovery, which an outer IPv4 fragmentation would defeat (Linux sets DF there
    /// too, unless PMTU discovery is off for the SA; choose [`DfPolicy::Clear`] for
    /// that); and the packets the SA makes up itself (dummy packets, NAT-keepalives),
    /// which then look like the rest of the traffic.
    #[default]
    Copy,
    /// Always set DF: the outer packet is never fragmented on its way.
    Set,
    /// Always clear DF: routers may fragment the outer packet (the receiver reassembles
    /// before ESP; fragments often do not cross NATs and firewalls).
    Clear,
}

impl DfPolicy {
    /// `"copy"`, `"set"` or `"clear"`.
    pub const fn name(self) -> &'static str {
        match self {
            DfPolicy::Copy => "copy",
            DfPolicy::Set => "set",
            DfPolicy::Clear => "clear",
        }
    }

    /// Parses `"copy"` / `"set"` / `"clear"`.
    pub fn from_name(name: &str) -> Result<DfPolicy, ConfigError> {
        match name.to_ascii_lowercase().as_str() {
            "copy" => Ok(DfPolicy::Copy),
            "set" => Ok(DfPolicy::Set),
            "clear" => Ok(DfPolicy::Clear),
            _ => Err(ConfigError::new(
                "df",
                format!("expected \"copy\", \"set\" or \"clear\", got {name:?}"),
            )),
        }
    }
}

/// How the gateway's SAD finds an inbound SA for an ESP packet (RFC 4301 §4.1): by
/// its SPI alone, or by the SPI with the packet's outer destination address, or with
/// its destination and source addresses.
///
/// RFC 4301 §4.1: "Each entry in the SA Database (SAD) must indicate whether the SA
/// lookup makes use of the destination IP address, or the destination and source IP
/// addresses, in addition to the SPI". Unicast SAs are found by the SPI alone or the SPI
/// and the IPsec protocol; multicast SAs (whose SPIs a group controller chooses, not each
/// receiver, so that two groups may use one SPI) by the SPI and the destination (the
/// group address), or by the SPI, destination and source (source-specific multicast).
/// A packet is given the SA of the "longest" match: first SPI + destination + source,
/// then SPI + destination, then the SPI alone.
///
/// The destination and source are the SA's tunnel endpoints
/// ([`SaConfig::tunnel`]: `tunnel_dst`, `tunnel_src`), compared with the outer IP
/// header's destination and source. So only inbound tunnel-mode SAs with both
/// endpoints may be found by address; a transport-mode SA has no endpoints and is found
/// by its SPI (and protocol).
///
/// Two inbound SAs of one gateway may share an SPI when their lookup keys differ (two
/// groups of one SPI; an SPI-alone SA beside an SPI + destination one, which takes the
/// packets to its destination); two with the same key are refused
/// ([`crate::ControlError::DuplicateSpi`]). A packet whose SPI is known but that
/// matches no SA's key is dropped as `unknown_spi`, as an unknown SPI is.
///
/// The lookup is the gateway's: [`SecurityAssociation::decrypt`] on an SA the caller
/// chose checks the SPI only. Only inbound SAs have one; a lookup other than
/// [`SaLookup::Spi`] on an outbound SA is refused when it is created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SaLookup {
    /// By the SPI alone (the default; unicast SAs, whose SPI the receiver chose).
    #[default]
    Spi,
    /// By the SPI and the IPsec protocol (RFC 4301 §4.1: for a receiver that keeps
    /// separate SPI spaces for AH and ESP). This library does ESP only: the protocol is
    /// always ESP (IP protocol 50, and ESP in UDP, RFC 3948, counts as ESP), so this
    /// finds exactly the packets [`SaLookup::Spi`] finds, and the two keys collide.
    SpiProtocol,
    /// By the SPI and the outer destination address, which must be the SA's
    /// `tunnel_dst` (a multicast group, RFC 4301 §4.1).
    SpiDestination,
    /// By the SPI, the outer destination and the outer source address: `tunnel_dst` and
    /// `tunnel_src` (source-specific multicast, RFC 4301 §4.1).
    SpiDestinationSource,
}

impl SaLookup {
    /// `"spi"`, `"spi+protocol"`, `"spi+destination"` or `"spi+destination+source"`.
    pub const fn name(self) -> &'static str {
        match self {
            SaLookup::Spi => "spi",
            SaLookup::SpiProtocol => "spi+protocol",
            SaLookup::SpiDestination => "spi+destination",
            SaLookup::SpiDestinationSource => "spi+destination+source",
        }
    }

    /// Parses the names of [`SaLookup::name`] (case-insensitive).
    pub fn from_name(name: &str) -> Result<SaLookup, ConfigError> {
        match name.to_ascii_lowercase().as_str() {
            "spi" => Ok(SaLookup::Spi),
            "spi+protocol" => Ok(SaLookup::SpiProtocol),
            "spi+destination" => Ok(SaLookup::SpiDestination),
            "spi+destination+source" => Ok(SaLookup::SpiDestinationSource),
            _ => Err(ConfigError::new(
                "lookup",
                format!(
                    "expected \"spi\", \"spi+protocol\", \"spi+destination\" or \
                     \"spi+destination+source\", got {name:?}"
                ),
            )),
        }
    }

    /// Whether the lookup uses the destination address (and perhaps the source).
    pub const fn uses_addresses(self) -> bool {
        matches!(
            self,
            SaLookup::SpiDestination | SaLookup::SpiDestinationSource
        )
    }
}

/// Everything needed to create a [`SecurityAssociation`].
///
/// Field names are those of the Python constructor and the `[[sa]]` TOML tables.
pub struct SaConfig {
    pub(crate) spi: u32,
    pub(crate) direction: Direction,
    pub(crate) mode: Mode,
    pub(crate) cipher: Cipher,
    pub(crate) key: Zeroizing<Vec<u8>>,
    pub(crate) integrity: Option<Integrity>,
    pub(crate) integrity_key: Zeroizing<Vec<u8>>,
    pub(crate) esn: bool,
    /// `None`: not set (the default window for an inbound SA; an outbound SA has none).
    pub(crate) replay_window: Option<u32>,
    pub(crate) tunnel: Option<(IpAddr, IpAddr)>,
    pub(crate) udp_encap: Option<(u16, u16)>,
    pub(crate) seq: u64,
    pub(crate) soft: Lifetime,
    /// Percent of each soft limit by which the SA's own soft limit may come earlier.
    pub(crate) soft_jitter: u32,
    pub(crate) hard: Lifetime,
    pub(crate) tfc: TfcPadding,
    pub(crate) padding: EspPadding,
    pub(crate) outer_ttl: u8,
    pub(crate) path_mtu: Option<u16>,
    pub(crate) iv_source: Option<Box<dyn IvSource>>,
    pub(crate) df: DfPolicy,
    pub(crate) nat_keepalive_interval: Option<Duration>,
    pub(crate) nat_original_addresses: Option<(IpAddr, IpAddr)>,
    pub(crate) lookup: SaLookup,
    /// Inbound: whether the replay window keeps a late-packet histogram.
    pub(crate) late_histogram: bool,
}

impl fmt::Debug for SaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaConfig")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("direction", &self.direction)
            .field("mode", &self.mode)
            .field("cipher", &self.cipher)
            .field("key", &"<redacted>")
            .field("integrity", &self.integrity)
            .field("esn", &self.esn)
            .field("replay_window", &self.replay_window)
            .field("tunnel", &self.tunnel)
            .field("udp_encap", &self.udp_encap)
            .field("seq", &self.seq)
            .field("soft_lifetime_jitter", &self.soft_jitter)
            .field("df", &self.df)
            .field("nat_keepalive_interval", &self.nat_keepalive_interval)
            .field("nat_original_addresses", &self.nat_original_addresses)
            .field("lookup", &self.lookup)
            .field("late_histogram", &self.late_histogram)
            .finish_non_exhaustive()
    }
}

impl SaConfig {
    /// The default outer TTL / hop limit of tunnel-mode packets.
    pub const DEFAULT_OUTER_TTL: u8 = 64;
    /// The default replay window (RFC 4303 §3.4.3 suggests 32 at least; 64 is common).
    pub const DEFAULT_REPLAY_WINDOW: u32 = 64;
    /// The default NAT-keepalive interval: 20 seconds of silence (RFC 3948 §4).
    pub const DEFAULT_NAT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
    /// The default soft lifetime jitter: 10 percent, as strongSwan's default
    /// `rand_time` (its `over_time`, 10% of `rekey_time`): each soft limit of an SA is
    /// drawn from the last tenth before the configured one.
    pub const DEFAULT_SOFT_LIFETIME_JITTER: u32 = 10;

    /// A configuration with the required fields; everything else has its default
    /// (no integrity algorithm, no ESN, 64-packet replay window, no tunnel endpoints, no
    /// UDP encapsulation, sequence number 0, no lifetimes, soft lifetime jitter 10
    /// percent ([`Self::DEFAULT_SOFT_LIFETIME_JITTER`]), no TFC padding, padding to
    /// cipher blocks, DF copied, NAT-keepalives every 20 s of silence when UDP
    /// encapsulation is on, no NAT original addresses, found by its SPI alone, no
    /// late-packet histogram).
    ///
    /// `key` is copied; the copy is zeroized when the configuration is dropped.
    pub fn new(spi: u32, direction: Direction, mode: Mode, cipher: Cipher, key: &[u8]) -> Self {
        SaConfig {
            spi,
            direction,
            mode,
            cipher,
            key: Zeroizing::new(key.to_vec()),
            integrity: None,
            integrity_key: Zeroizing::new(Vec::new()),
            esn: false,
            replay_window: None,
            tunnel: None,
            udp_encap: None,
            seq: 0,
            soft: Lifetime::NONE,
            soft_jitter: Self::DEFAULT_SOFT_LIFETIME_JITTER,
            hard: Lifetime::NONE,
            tfc: TfcPadding::None,
            padding: EspPadding::CipherBlocks,
            outer_ttl: Self::DEFAULT_OUTER_TTL,
            path_mtu: None,
            iv_source: None,
            df: DfPolicy::Copy,
            nat_keepalive_interval: Some(Self::DEFAULT_NAT_KEEPALIVE_INTERVAL),
            nat_original_addresses: None,
            lookup: SaLookup::Spi,
            late_histogram: false,
        }
    }

    /// The replay window an SA of this configuration starts with: the configured size
    /// (default [`SaConfig::DEFAULT_REPLAY_WINDOW`]) from `seq` for an inbound SA, with
    /// a late-packet histogram if asked for; none for an outbound one.
    pub(crate) fn initial_replay_window(&self) -> Result<ReplayWindow, ConfigError> {
        match self.direction {
            Direction::Inbound => ReplayWindow::with_highest_and_histogram(
                self.replay_window
                    .unwrap_or(SaConfig::DEFAULT_REPLAY_WINDOW),
                self.esn,
                self.seq,
                self.late_histogram,
            ),
            Direction::Outbound => ReplayWindow::without_histogram(0, self.esn),
        }
    }

    /// A copy of this configuration, keys included (the copies are wiped when dropped
    /// too); `None` when it has an [`IvSource`], which cannot be copied. Configurations
    /// read from policy and SA files have none.
    pub fn try_clone(&self) -> Option<SaConfig> {
        if self.iv_source.is_some() {
            return None;
        }
        Some(SaConfig {
            key: self.key.clone(),
            integrity_key: self.integrity_key.clone(),
            iv_source: None,
            ..*self
        })
    }

    /// Sets the integrity algorithm and its key (AES-CBC and NULL need one).
    pub fn integrity(&mut self, integrity: Integrity, key: &[u8]) -> &mut Self {
        self.integrity = Some(integrity);
        self.integrity_key = Zeroizing::new(key.to_vec());
        self
    }

    /// Inbound: whether the replay window keeps a late-packet histogram
    /// ([`ReplayWindow::late_histogram`]: how far behind the window's top late packets
    /// arrived, to size the window). Off by default: the histogram costs 512 bytes per
    /// SA (64 `u64` buckets), more than the rest of an AES-GCM SA's state. When on, it
    /// is made with the SA, so the packet path never allocates; when off, the SA's
    /// window reads as an empty histogram and late packets are not counted in one (the
    /// replay and too-old drop counters still count every refused packet). An SA
    /// restored from a snapshot whose histogram counted a packet keeps a histogram
    /// ([`crate::snapshot`]). Ignored on outbound SAs, which receive nothing.
    pub fn late_histogram(&mut self, on: bool) -> &mut Self {
        self.late_histogram = on;
        self
    }

    /// Turns extended (64-bit) sequence numbers on or off (RFC 4303 §2.2.1).
    pub fn esn(&mut self, esn: bool) -> &mut Self {
        self.esn = esn;
        self
    }

    /// Sets the inbound replay window size: 0 (off) or 32..=2^24 packets (default
    /// [`Self::DEFAULT_REPLAY_WINDOW`]). Only inbound SAs have a window: setting one on
    /// an outbound SA is refused when the SA is created (the receiver keeps the window;
    /// a window on the sender usually means the two directions were mixed up).
    pub fn replay_window(&mut self, size: u32) -> &mut Self {
        self.replay_window = Some(size);
        self
    }

    /// Sets the outer tunnel addresses (outbound tunnel mode needs them; IPv4 and IPv6
    /// may be mixed with either inner family, but both ends share one family).
    pub fn tunnel(&mut self, src: IpAddr, dst: IpAddr) -> &mut Self {
        self.tunnel = Some((src, dst));
        self
    }

    /// Encapsulates ESP in UDP with these ports (RFC 3948 NAT traversal). Port 0 is
    /// refused when the SA is created (no packet can be addressed to it, RFC 768).
    pub fn udp_encap(&mut self, src_port: u16, dst_port: u16) -> &mut Self {
        self.udp_encap = Some((src_port, dst_port));
        self
    }

    /// Outbound: the last sequence number used (the next is `seq + 1`). Inbound: the
    /// highest already received, the window's top (64-bit with ESN): for restoring SAs.
    pub fn seq(&mut self, seq: u64) -> &mut Self {
        self.seq = seq;
        self
    }

    /// Sets the soft lifetime: reaching it raises [`SaEvent::Rekey`]. Each limit must be
    /// above 0 and below the hard limit of its kind, if there is one (checked when the
    /// SA is created): a rekey that comes with, or after, the expiry is no warning (and
    /// a soft byte limit equal to the hard one is never reached, since no packet may
    /// cross the hard one).
    pub fn soft_lifetime(&mut self, lifetime: Lifetime) -> &mut Self {
        self.soft = lifetime;
        self
    }

    /// Sets the soft lifetime jitter, in percent (0..=100, default
    /// [`Self::DEFAULT_SOFT_LIFETIME_JITTER`]): so that SAs created together do not all
    /// ask for a rekey at the same moment, each soft limit (bytes, packets, time) of an
    /// SA is drawn once, when the SA is created, uniformly from
    /// `[soft - soft * percent / 100, soft]`, from the OS random generator (or the SA's
    /// [`IvSource`], when one is set, so that tests can repeat it). It never becomes 0
    /// (at least 1 byte, 1 packet, 1 ns) and never rises, so it stays below the hard
    /// limit. 0 keeps the configured limits exactly. A value above 100 is refused when
    /// the SA is created. [`SecurityAssociation::soft_limits`] gives the limits drawn.
    ///
    /// strongSwan draws its `rand_time` the same way; when a key manager that already
    /// jitters its soft lifetimes (charon does) passes them on, set 0 here.
    pub fn soft_lifetime_jitter(&mut self, percent: u32) -> &mut Self {
        self.soft_jitter = percent;
        self
    }

    /// Sets the hard lifetime: reaching it raises [`SaEvent::Expired`] and the SA
    /// refuses packets with [`Error::LifetimeExpired`]. A limit of 0 is refused when the
    /// SA is created (the SA would expire before its first packet): leave the kind out
    /// for no limit.
    pub fn hard_lifetime(&mut self, lifetime: Lifetime) -> &mut Self {
        self.hard = lifetime;
        self
    }

    /// Sets TFC padding for outbound tunnel-mode packets (RFC 4303 §2.7). A length whose
    /// padded packet cannot be an IP packet after ESP (more than 65,535 bytes in the
    /// outer IPv4 total length or IPv6 payload length, for this SA's cipher, integrity,
    /// padding, outer header and UDP encapsulation: at most 65,470 for AES-GCM over IPv4)
    /// is refused when the SA is created, since every packet would be dropped.
    pub fn tfc_padding(&mut self, tfc: TfcPadding) -> &mut Self {
        self.tfc = tfc;
        self
    }

    /// Sets how much ESP padding outbound packets get (default
    /// [`EspPadding::CipherBlocks`]).
    pub fn padding(&mut self, padding: EspPadding) -> &mut Self {
        self.padding = padding;
        self
    }

    /// Sets the outer TTL / hop limit of tunnel-mode packets and NAT-keepalives
    /// (default [`Self::DEFAULT_OUTER_TTL`]). 0 is refused when the SA is created: the
    /// first router would drop every packet (RFC 1812 §5.3.1, RFC 8200 §3). The SA
    /// file, Python and C forms refuse it alike.
    pub fn outer_ttl(&mut self, ttl: u8) -> &mut Self {
        self.outer_ttl = ttl;
        self
    }

    /// Sets the path MTU towards the peer (outbound SAs): the largest outer packet the
    /// path carries. Packets that would be larger after ESP are fragmented or refused
    /// as [`crate::path_mtu`] describes. `None` (the default) sets no limit. The value
    /// can change later ([`SecurityAssociation::set_path_mtu`]) and ICMP can lower it
    /// ([`SecurityAssociation::handle_icmp`]).
    pub fn path_mtu(&mut self, mtu: Option<u16>) -> &mut Self {
        self.path_mtu = mtu;
        self
    }

    /// Replaces the source of CBC IVs (by default: the OS, see [`crate::crypto::OsIvSource`]).
    /// An outbound SA also draws the first Identification of its outer IPv4 headers
    /// from it (one IV, when the SA is created).
    pub fn iv_source(&mut self, source: Box<dyn IvSource>) -> &mut Self {
        self.iv_source = Some(source);
        self
    }

    /// Sets how the gateway finds this inbound SA for a packet (default
    /// [`SaLookup::Spi`]; see [`SaLookup`], RFC 4301 §4.1). [`SaLookup::SpiDestination`]
    /// and [`SaLookup::SpiDestinationSource`] need tunnel mode and the tunnel endpoints
    /// (the addresses compared), checked when the SA is created, as is the direction.
    pub fn lookup(&mut self, lookup: SaLookup) -> &mut Self {
        self.lookup = lookup;
        self
    }

    /// Sets the DF bit policy of the outer IPv4 header (default [`DfPolicy::Copy`]).
    pub fn df(&mut self, df: DfPolicy) -> &mut Self {
        self.df = df;
        self
    }

    /// Sets after how much silence (no packet sent on the SA) an outbound SA with UDP
    /// encapsulation owes its peer a NAT-keepalive (RFC 3948 §2.3); `None` or zero turns
    /// keepalives off. Default 20 s. See
    /// [`SecurityAssociation::poll_keepalive`]; ignored without UDP encapsulation and on
    /// inbound SAs.
    pub fn nat_keepalive_interval(&mut self, interval: Option<Duration>) -> &mut Self {
        self.nat_keepalive_interval = interval;
        self
    }

    /// Inbound transport mode with UDP encapsulation: the original source and
    /// destination addresses of the peer's packets before a NAT rewrote them (NAT-OA,
    /// from IKE: RFC 3947 NAT-OAi/NAT-OAr, or in IKEv2 the traffic selectors, RFC 7296
    /// §2.23.1). The inner TCP, UDP and ICMPv6 checksums, which cover these addresses,
    /// are then updated incrementally to the addresses of the received header
    /// (RFC 3948 §3.1.2, RFC 1624). Without them, such checksums are recomputed. Give
    /// the received address for a side that no NAT rewrote.
    pub fn nat_original_addresses(&mut self, src: IpAddr, dst: IpAddr) -> &mut Self {
        self.nat_original_addresses = Some((src, dst));
        self
    }

    /// Every check [`SecurityAssociation::new`] makes of this configuration, without
    /// creating the SA: the field checks (SPI range, sequence number width, tunnel
    /// endpoints, path MTU, TFC padding, NAT original addresses), the key lengths and
    /// the algorithm combination, and the replay window size of an inbound SA.
    /// `SecurityAssociation::new` runs exactly this first, so a configuration that
    /// passes can fail there only for want of OS randomness. Loaders and the policy
    /// lint call it to report every invalid SA of a file without building any
    /// ([`crate::sa_set::check_sas`]).
    ///
    /// Errors name the field, never a key's bytes.
    pub fn check(&self) -> Result<(), ConfigError> {
        self.validate()?;
        Transform::check(self.cipher, &self.key, self.integrity, &self.integrity_key)?;
        if self.direction == Direction::Inbound {
            ReplayWindow::check_size(
                self.replay_window
                    .unwrap_or(SaConfig::DEFAULT_REPLAY_WINDOW),
            )?;
        }
        Ok(())
    }

    /// Checks everything that can be checked without keying the SA: every field on its
    /// own and the fields together (key and ICV lengths are checked by
    /// [`SecurityAssociation::new`]). SA files run it when they are parsed.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.spi < 256 {
            return Err(ConfigError::new(
                "spi",
                format!(
                    "SPI {} is reserved: values 0..=255 are reserved by IANA (RFC 4303 §2.1)",
                    self.spi
                ),
            ));
        }
        self.validate_keys()?;
        if !self.esn && self.seq > u64::from(u32::MAX) {
            return Err(ConfigError::new(
                "seq",
                format!("{} does not fit 32 bits and ESN is off", self.seq),
            ));
        }
        if let Some((src, dst)) = self.tunnel {
            if src.is_ipv4() != dst.is_ipv4() {
                return Err(ConfigError::new(
                    "tunnel_dst",
                    "tunnel_src and tunnel_dst must be of the same IP family",
                ));
            }
            if self.mode == Mode::Transport {
                return Err(ConfigError::new(
                    "tunnel_src",
                    "transport mode has no tunnel endpoints",
                ));
            }
        } else if self.mode == Mode::Tunnel && self.direction == Direction::Outbound {
            return Err(ConfigError::new(
                "tunnel_src",
                "an outbound tunnel-mode SA needs tunnel_src and tunnel_dst",
            ));
        }
        if let Some(mtu) = self.path_mtu {
            let min = match self.tunnel {
                Some((src, _)) if src.is_ipv6() => IPV6_MIN_MTU,
                _ => IPV4_MIN_MTU,
            };
            if mtu < min {
                return Err(ConfigError::new(
                    "path_mtu",
                    format!("{mtu} is below the smallest MTU of the path's IP family ({min})"),
                ));
            }
        }
        if self.tfc != TfcPadding::None && self.mode == Mode::Transport {
            return Err(ConfigError::new(
                "tfc_pad_to",
                "TFC padding needs tunnel mode (the inner IP header gives the real length)",
            ));
        }
        self.validate_tfc()?;
        if self.direction == Direction::Outbound
            && let Some(size) = self.replay_window
        {
            return Err(ConfigError::new(
                "replay_window",
                format!(
                    "{size} given for an outbound SA: only the receiver keeps a replay \
                     window (set it on the inbound SA)"
                ),
            ));
        }
        if self.outer_ttl == 0 {
            return Err(ConfigError::new(
                "outer_ttl",
                "0: the first router would drop every packet (RFC 1812 §5.3.1, RFC 8200 §3); \
                 give 1..=255 (default 64)",
            ));
        }
        if let Some((src, dst)) = self.udp_encap {
            for (port, which) in [(src, "source"), (dst, "destination")] {
                if port == 0 {
                    return Err(ConfigError::new(
                        "udp_encap",
                        format!(
                            "the {which} port is 0, which no UDP packet can be addressed \
                             to (RFC 768); NAT-T uses 4500 (RFC 3948)"
                        ),
                    ));
                }
            }
        }
        self.validate_lookup()?;
        validate_lifetimes(&self.soft, &self.hard)?;
        if self.soft_jitter > 100 {
            return Err(ConfigError::new(
                "soft_lifetime_jitter",
                format!(
                    "{}: the jitter is a percentage of the soft lifetime, 0..=100 (default {})",
                    self.soft_jitter,
                    Self::DEFAULT_SOFT_LIFETIME_JITTER
                ),
            ));
        }
        if let Some((src, dst)) = self.nat_original_addresses {
            if self.direction != Direction::Inbound || self.mode != Mode::Transport {
                return Err(ConfigError::new(
                    "nat_original_addresses",
                    "only inbound transport-mode SAs use NAT original addresses (RFC 3948 \
                     §3.1.2); tunnel mode carries the inner packet unchanged",
                ));
            }
            if src.is_ipv4() != dst.is_ipv4() {
                return Err(ConfigError::new(
                    "nat_original_addresses",
                    "the original source and destination must be of the same IP family",
                ));
            }
        }
        Ok(())
    }
}

impl SaConfig {
    /// The lookup needs an inbound SA, and one by address the tunnel endpoints it
    /// compares.
    fn validate_lookup(&self) -> Result<(), ConfigError> {
        if self.lookup == SaLookup::Spi {
            return Ok(());
        }
        if self.direction == Direction::Outbound {
            return Err(ConfigError::new(
                "lookup",
                format!(
                    "{:?} given for an outbound SA: the lookup is how inbound packets find \
                     their SA (set it on the inbound SA)",
                    self.lookup.name()
                ),
            ));
        }
        if self.lookup.uses_addresses() && (self.mode != Mode::Tunnel || self.tunnel.is_none()) {
            return Err(ConfigError::new(
                "lookup",
                format!(
                    "{:?} compares the packet's outer addresses with the SA's tunnel_dst \
                     (and tunnel_src): it needs tunnel mode with tunnel_src and tunnel_dst",
                    self.lookup.name()
                ),
            ));
        }
        Ok(())
    }

    /// A missing key is "missing", not "got 0 bytes" (checked before the lengths, which
    /// [`Transform::new`] checks).
    fn validate_keys(&self) -> Result<(), ConfigError> {
        let cipher = self.cipher;
        if self.key.is_empty() && cipher.key_len() > 0 {
            return Err(ConfigError::new(
                "key",
                format!(
                    "missing: {} needs a {}-byte key{}",
                    cipher.name(),
                    cipher.key_len(),
                    if cipher.is_combined() {
                        " (the cipher key followed by the 4-byte salt)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        if let Some(i) = self.integrity
            && !cipher.is_combined()
            && self.integrity_key.is_empty()
        {
            return Err(ConfigError::new(
                "integrity_key",
                format!("missing: {} needs a {}-byte key", i.name(), i.key_len()),
            ));
        }
        Ok(())
    }

    /// TFC padding (outbound tunnel mode) must leave a packet padded to it room to be an
    /// IP packet after ESP; otherwise every packet would be dropped as too big.
    fn validate_tfc(&self) -> Result<(), ConfigError> {
        let (TfcPadding::PadTo(n), Direction::Outbound, Some((src, _))) =
            (self.tfc, self.direction, self.tunnel)
        else {
            return Ok(());
        };
        let max = self.max_tfc_pad_to(src.is_ipv6());
        if usize::from(n) > max {
            return Err(ConfigError::new(
                "tfc_pad_to",
                format!(
                    "{n}: a packet padded to {n} bytes does not fit an IP packet after ESP; \
                     at most {max} with this SA's cipher, integrity, padding, outer header \
                     and UDP encapsulation"
                ),
            ));
        }
        Ok(())
    }

    /// The largest TFC padding length whose ESP packet still fits the outer header's
    /// length field (65,535: the IPv4 total length, or the IPv6 payload length, which
    /// leaves out the 40-byte header).
    fn max_tfc_pad_to(&self, outer_v6: bool) -> usize {
        use crate::packet::{IPV4_HEADER_LEN, IPV6_HEADER_LEN, UDP_HEADER_LEN};
        let (outer, uncounted) = if outer_v6 {
            (IPV6_HEADER_LEN, IPV6_HEADER_LEN)
        } else {
            (IPV4_HEADER_LEN, 0)
        };
        let udp = if self.udp_encap.is_some() {
            UDP_HEADER_LEN
        } else {
            0
        };
        let icv = match self.integrity {
            _ if self.cipher.is_combined() => 16,
            Some(i) => i.icv_len(),
            None => 0,
        };
        let fixed = outer + udp + 8 + self.cipher.iv_len() + icv;
        let align = self.padding.align(self.cipher);
        // The payload, its padding, pad length and next header fill whole `align` units.
        let room = (usize::from(u16::MAX) + uncounted - fixed) & !(align - 1);
        room - 2
    }
}

/// Each lifetime limit must be above 0, and a soft limit below the hard one of its kind.
fn validate_lifetimes(soft: &Lifetime, hard: &Lifetime) -> Result<(), ConfigError> {
    for (which, l, what) in [
        ("soft_lifetime", soft, "ask for a rekey"),
        ("hard_lifetime", hard, "expire the SA"),
    ] {
        let zero = [
            ("bytes", l.bytes == Some(0)),
            ("packets", l.packets == Some(0)),
            ("seconds", l.time == Some(Duration::ZERO)),
        ];
        if let Some((kind, _)) = zero.into_iter().find(|&(_, z)| z) {
            return Err(ConfigError::new(
                format!("{which}.{kind}"),
                format!("0 would {what} before the first packet; leave {kind} out for no limit"),
            ));
        }
    }
    soft_below_hard("bytes", soft.bytes, hard.bytes)?;
    soft_below_hard("packets", soft.packets, hard.packets)?;
    soft_below_hard("seconds", soft.time, hard.time)
}

fn soft_below_hard<T: PartialOrd + fmt::Debug>(
    kind: &str,
    soft: Option<T>,
    hard: Option<T>,
) -> Result<(), ConfigError> {
    match (soft, hard) {
        (Some(s), Some(h)) if s >= h => Err(ConfigError::new(
            format!("soft_lifetime.{kind}"),
            format!(
                "{s:?} is not below hard_lifetime.{kind} ({h:?}): the rekey event must come \
                 while the SA still works"
            ),
        )),
        _ => Ok(()),
    }
}

/// `a` as an IPv6 address (the tunnel endpoints of one SA share a family: an IPv4
/// address here is only reached for a mixed pair, which the configuration refuses).
fn ipv6_of(a: IpAddr) -> std::net::Ipv6Addr {
    match a {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

/// The first Identification of an outbound SA's IPv4 headers: from the injected
/// randomness source if there is one (so that tests are repeatable), else from the OS.
fn first_ipv4_ident(source: &mut Option<Box<dyn IvSource>>) -> Result<u16, ConfigError> {
    let mut bytes = [0u8; 16];
    match source {
        Some(s) => s.fill_iv(&mut bytes),
        None => getrandom::fill(&mut bytes[..2]).map_err(|e| {
            ConfigError::new("iv_source", format!("the OS random generator failed: {e}"))
        })?,
    }
    Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
}

/// The soft limits of a new SA: each limit of `soft` lowered by a random part of up to
/// `percent` of it (never to 0), drawn from the injected randomness source if there is
/// one, else from the OS. No randomness is drawn when there is nothing to jitter.
fn jittered(
    soft: Lifetime,
    percent: u32,
    source: &mut Option<Box<dyn IvSource>>,
) -> Result<Lifetime, ConfigError> {
    if percent == 0 || soft == Lifetime::NONE {
        return Ok(soft);
    }
    let mut bytes = [0u8; 48];
    match source {
        Some(s) => {
            for block in bytes.chunks_exact_mut(16) {
                let mut iv = [0u8; 16];
                s.fill_iv(&mut iv);
                block.copy_from_slice(&iv);
            }
        }
        None => getrandom::fill(&mut bytes).map_err(|e| {
            ConfigError::new(
                "soft_lifetime_jitter",
                format!("the OS random generator failed: {e}"),
            )
        })?,
    }
    let mut draws = bytes.chunks_exact(16).map(|c| {
        let mut r = [0u8; 16];
        r.copy_from_slice(c);
        u128::from_le_bytes(r)
    });
    let mut lower = |limit: u128| -> u128 {
        // Up to `percent` of the limit earlier, uniformly (the modulo bias of a 128-bit
        // draw over a span below 2^72 is under 2^-56).
        let span = limit * u128::from(percent) / 100;
        let r = draws.next().unwrap_or(0);
        (limit - r % (span + 1)).max(1)
    };
    let bytes_limit = soft.bytes.map(|b| lower(u128::from(b)) as u64);
    let packets = soft.packets.map(|p| lower(u128::from(p)) as u64);
    let time = soft.time.map(|t| {
        let nanos = lower(t.as_nanos());
        let per_sec = 1_000_000_000u128;
        Duration::new((nanos / per_sec) as u64, (nanos % per_sec) as u32)
    });
    Ok(Lifetime {
        bytes: bytes_limit,
        packets,
        time,
    })
}

/// Pending events, as bits, so that raising one never allocates.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct PendingEvents {
    /// Every event raised in the SA's life, one bit each (see `bit`).
    pub(crate) raised: u8,
    /// The raised events not polled yet.
    pub(crate) pending: u8,
}

impl PendingEvents {
    fn bit(event: SaEvent) -> u8 {
        let kind = match event {
            SaEvent::Rekey(_) => 0,
            SaEvent::Expired(_) => 3,
        };
        let limit = match event {
            SaEvent::Rekey(l) | SaEvent::Expired(l) => match l {
                LifetimeLimit::Bytes => 0,
                LifetimeLimit::Packets => 1,
                LifetimeLimit::Time => 2,
            },
        };
        1 << (kind + limit)
    }

    /// Raises `event` once in the SA's life.
    fn raise(&mut self, event: SaEvent) {
        let b = Self::bit(event);
        if self.raised & b == 0 {
            self.raised |= b;
            self.pending |= b;
        }
    }

    /// Whether the Rekey event was raised for bytes, packets and time.
    fn raised_rekeys(&self) -> [bool; 3] {
        [
            self.raised & 1 != 0,
            self.raised & 2 != 0,
            self.raised & 4 != 0,
        ]
    }

    fn pop(&mut self) -> Option<SaEvent> {
        if self.pending == 0 {
            return None;
        }
        let i = self.pending.trailing_zeros();
        self.pending &= !(1 << i);
        let limit = match i % 3 {
            0 => LifetimeLimit::Bytes,
            1 => LifetimeLimit::Packets,
            _ => LifetimeLimit::Time,
        };
        Some(if i < 3 {
            SaEvent::Rekey(limit)
        } else {
            SaEvent::Expired(limit)
        })
    }
}

/// The settings of an SA's configuration that the SA does not otherwise hold, and its
/// keys (wiped on drop; the key schedules cannot give them back): with the SA's own
/// fields, the whole configuration, as snapshots write it. (The NAT original
/// addresses are kept by the SA's NAT state.)
pub(crate) struct KeptConfig {
    /// The cipher key (salt included), the integrity key and the tunnel endpoints
    /// (none, two IPv4 or two IPv6 addresses: 0, 8 or 32 bytes), in one block: the
    /// endpoints are only read by control calls (the outer header of an outbound SA
    /// holds its own copy), so they cost no inline bytes.
    keys: Zeroizing<Box<[u8]>>,
    /// Where the cipher key ends in `keys`.
    key_len: u8,
    /// Where the integrity key ends in `keys` (the tunnel endpoints follow).
    keys_end: u8,
    pub(crate) padding: EspPadding,
    pub(crate) outer_ttl: u8,
    pub(crate) df: DfPolicy,
    /// The configured NAT-keepalive interval in nanoseconds ([`Limits::NONE`]: none):
    /// read through [`KeptConfig::nat_keepalive_interval`].
    nat_keepalive_nanos: u64,
    /// How an inbound packet finds the SA (RFC 4301 §4.1).
    pub(crate) lookup: SaLookup,
}

impl KeptConfig {
    /// Keeps `config`'s keys (its copies are wiped when it is dropped) and the
    /// settings above.
    fn new(config: &SaConfig) -> KeptConfig {
        let (key, integrity_key) = (&config.key[..], &config.integrity_key[..]);
        let keys_end = key.len() + integrity_key.len();
        let mut tunnel = [0u8; 32];
        let tunnel_len = match config.tunnel {
            None => 0,
            Some((IpAddr::V4(s), IpAddr::V4(d))) => {
                tunnel[..4].copy_from_slice(&s.octets());
                tunnel[4..8].copy_from_slice(&d.octets());
                8
            }
            Some((s, d)) => {
                tunnel[..16].copy_from_slice(&ipv6_of(s).octets());
                tunnel[16..].copy_from_slice(&ipv6_of(d).octets());
                32
            }
        };
        // Made at its final length (no reallocation leaves a copy behind), then filled.
        let mut keys = Zeroizing::new(vec![0u8; keys_end + tunnel_len].into_boxed_slice());
        keys[..key.len()].copy_from_slice(key);
        keys[key.len()..keys_end].copy_from_slice(integrity_key);
        keys[keys_end..].copy_from_slice(&tunnel[..tunnel_len]);
        KeptConfig {
            keys,
            key_len: u8::try_from(key.len()).expect("checked: keys are at most 36 bytes"),
            keys_end: u8::try_from(keys_end).expect("checked: keys are at most 100 bytes"),
            padding: config.padding,
            outer_ttl: config.outer_ttl,
            df: config.df,
            nat_keepalive_nanos: config.nat_keepalive_interval.map_or(Limits::NONE, nanos),
            lookup: config.lookup,
        }
    }

    /// The cipher key as configured (salt included).
    pub(crate) fn key(&self) -> &[u8] {
        &self.keys[..usize::from(self.key_len)]
    }

    /// The NAT-keepalive interval as configured (an interval of 584 years or more reads
    /// as `None`, as it never elapses).
    pub(crate) fn nat_keepalive_interval(&self) -> Option<Duration> {
        (self.nat_keepalive_nanos != Limits::NONE)
            .then(|| Duration::from_nanos(self.nat_keepalive_nanos))
    }

    /// The integrity key as configured (empty for combined-mode ciphers).
    pub(crate) fn integrity_key(&self) -> &[u8] {
        &self.keys[usize::from(self.key_len)..usize::from(self.keys_end)]
    }

    /// The tunnel endpoints as configured.
    pub(crate) fn tunnel(&self) -> Option<(IpAddr, IpAddr)> {
        let t = &self.keys[usize::from(self.keys_end)..];
        let v4 = |b: &[u8]| IpAddr::from([b[0], b[1], b[2], b[3]]);
        let v6 = |b: &[u8]| {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            IpAddr::from(a)
        };
        match t.len() {
            8 => Some((v4(&t[..4]), v4(&t[4..]))),
            32 => Some((v6(&t[..16]), v6(&t[16..]))),
            _ => None,
        }
    }
}

/// One direction of an IPsec SA: keys, state and counters.
pub struct SecurityAssociation {
    pub(crate) spi: u32,
    pub(crate) direction: Direction,
    pub(crate) mode: Mode,
    pub(crate) cipher: Cipher,
    pub(crate) integrity: Option<Integrity>,
    pub(crate) esn: bool,
    pub(crate) transform: Transform,
    /// The state of one direction: outbound (sequence number, outer header, ...) or
    /// inbound (replay window), each with its drop counters.
    pub(crate) side: Side,
    pub(crate) udp_encap: Option<(u16, u16)>,
    /// The soft limits in force (jitter drawn), as a compact [`Limits`].
    pub(crate) soft: Limits,
    /// The hard limits; `hard.bytes` is also the byte cap no packet may cross
    /// (`u64::MAX` without a byte limit).
    pub(crate) hard: Limits,
    /// When the SA's age was 0, on the caller's clock, in nanoseconds: when it was
    /// created, or for a restored SA the restore time less the age it had, which is
    /// negative when the restoring clock read less than that age. Its age at `now`
    /// is `now - born`.
    pub(crate) born: i64,
    /// What the SA keeps of its configuration beyond its own fields (keys included):
    /// what [`SecurityAssociation::snapshot`] writes out.
    pub(crate) kept: KeptConfig,
    /// When the slow lifetime check must run next.
    pub(crate) trip: Trip,
    pub(crate) expired: Option<LifetimeLimit>,
    pub(crate) events: PendingEvents,
    /// Packets and bytes processed (the drop counters are in [`Side`]).
    pub(crate) stats: SaCounts,
    /// Outbound: the configured and learned path MTU.
    pub(crate) pmtu: PathMtu,
    /// NAT traversal beyond the UDP header: keepalives, NAT original addresses.
    pub(crate) nat: NatTraversal,
}

impl fmt::Debug for SecurityAssociation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecurityAssociation")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("direction", &self.direction)
            .field("mode", &self.mode)
            .field("cipher", &self.cipher)
            .field("integrity", &self.integrity)
            .field("esn", &self.esn)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl SecurityAssociation {
    /// Checks `config` (SPI range, keys present and of the right lengths, algorithm
    /// combination, addresses, window size and direction, ports, outer TTL, TFC padding
    /// length, lifetimes: a configuration that cannot work is refused, the error naming
    /// the field) and creates the SA at time `now` (the caller's clock; lifetimes count
    /// from here).
    pub fn new(mut config: SaConfig, now: Duration) -> Result<Self, ConfigError> {
        config.check()?;
        // RFC 6864: the outer IPv4 Identifications count up from a random start.
        let first_ident = match config.direction {
            Direction::Outbound => first_ipv4_ident(&mut config.iv_source)?,
            Direction::Inbound => 0,
        };
        let soft = jittered(config.soft, config.soft_jitter, &mut config.iv_source)?;
        let transform = Transform::new(
            config.cipher,
            &config.key,
            config.integrity,
            &config.integrity_key,
            config.padding.align(config.cipher),
            config.iv_source.take(),
            config.direction,
        )?;
        Ok(SecurityAssociation {
            spi: config.spi,
            direction: config.direction,
            mode: config.mode,
            cipher: config.cipher,
            integrity: config.integrity,
            esn: config.esn,
            transform,
            side: match config.direction {
                Direction::Outbound => Side::Outbound(OutboundState {
                    seq: config.seq,
                    outer: match (config.mode, config.tunnel) {
                        (Mode::Tunnel, Some((src, dst))) => Some(OuterHeader::new(
                            src,
                            dst,
                            config.outer_ttl,
                            config.udp_encap,
                            config.df,
                        )),
                        _ => None,
                    },
                    mtu_cap: config.path_mtu.map_or(usize::MAX, usize::from),
                    fragment_id: getrandom::u32().unwrap_or(0x9e37_79b9),
                    next_ipv4_ident: first_ident,
                    tfc: config.tfc,
                    last_sent: nanos(now),
                    last_protected: nanos(now),
                    drops: [0; OUTBOUND_REASONS.len()],
                }),
                Direction::Inbound => Side::Inbound(InboundState {
                    replay: config.initial_replay_window()?,
                    shared_replay: None,
                    wide: [0; INBOUND_WIDE.len()],
                    narrow: [0; INBOUND_NARROW.len()],
                    last_accepted: nanos(now),
                }),
            },
            udp_encap: config.udp_encap,
            soft: Limits::of(&soft),
            hard: Limits::of(&config.hard),
            born: signed_nanos(now),
            trip: Trip::of(&Limits::of(&soft), signed_nanos(now))
                .min(Trip::of(&Limits::of(&config.hard), signed_nanos(now))),
            expired: None,
            events: PendingEvents::default(),
            stats: SaCounts::default(),
            pmtu: PathMtu::new(config.path_mtu),
            nat: NatTraversal::new(&config),
            kept: KeptConfig::new(&config),
        })
    }

    /// The part of this SA the key reuse check looks at.
    pub(crate) fn keys(&self) -> crate::sa_set::SaKeys<'_> {
        crate::sa_set::SaKeys {
            cipher: self.cipher,
            direction: self.direction,
            key: self.kept.key(),
            integrity_key: self.kept.integrity_key(),
        }
    }

    /// The SPI.
    pub fn spi(&self) -> u32 {
        self.spi
    }

    /// Outbound or inbound.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Tunnel or transport.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The cipher.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// The integrity algorithm, if the cipher needs one.
    pub fn integrity(&self) -> Option<Integrity> {
        self.integrity
    }

    /// True when extended sequence numbers are on.
    pub fn esn(&self) -> bool {
        self.esn
    }

    /// Outbound: the last sequence number used. Inbound: the highest received.
    pub fn seq(&self) -> u64 {
        match &self.side {
            Side::Outbound(o) => o.seq,
            Side::Inbound(i) => i.replay.highest(),
        }
    }

    /// The counters, by value: the SA keeps only the drop counters its direction can
    /// count (an outbound SA none of the receiving reasons; an inbound SA a few
    /// reasons no attacker can drive in `u32`s that saturate at `u32::MAX`: bad
    /// padding, bad next header, no buffer space, wrong direction, and the outbound
    /// reasons), and reads 0 for the others.
    pub fn stats(&self) -> SaStats {
        let mut s = SaStats {
            packets: self.stats.packets,
            bytes: self.stats.bytes,
            drops: [0; DropReason::ALL.len()],
        };
        for r in DropReason::ALL {
            s.drops[r.index()] = self.side.dropped(r);
        }
        s
    }

    /// Sets every drop counter from `drops` (in [`DropReason::ALL`] order), as a
    /// restored snapshot had them.
    pub(crate) fn set_drops(&mut self, drops: &[u64; DropReason::ALL.len()]) {
        for r in DropReason::ALL {
            self.side.set_dropped(r, drops[r.index()]);
        }
    }

    /// Counts one packet dropped for `reason`.
    #[inline]
    pub(crate) fn count_drop(&mut self, reason: DropReason) {
        self.side.count_drops(reason, 1);
    }

    /// The inbound replay window (its late-packet histogram, when the SA keeps one,
    /// helps size it: [`SaConfig::late_histogram`]). An outbound SA has none: this
    /// reads as a window of size 0 with ESN as configured.
    pub fn replay_window(&self) -> &ReplayWindow {
        match &self.side {
            Side::Inbound(i) => &i.replay,
            Side::Outbound(_) => {
                if self.esn {
                    &OUTBOUND_WINDOW_ESN
                } else {
                    &OUTBOUND_WINDOW
                }
            }
        }
    }

    /// The outbound state. Only called on outbound SAs (the direction is fixed when
    /// the SA is created; every outbound-only path checks it first).
    #[inline(always)]
    pub(crate) fn out(&self) -> &OutboundState {
        match &self.side {
            Side::Outbound(o) => o,
            Side::Inbound(_) => unreachable!("outbound state of an inbound SA"),
        }
    }

    /// [`Self::out`], mutable.
    #[inline(always)]
    pub(crate) fn out_mut(&mut self) -> &mut OutboundState {
        match &mut self.side {
            Side::Outbound(o) => o,
            Side::Inbound(_) => unreachable!("outbound state of an inbound SA"),
        }
    }

    /// The inbound state. Only called on inbound SAs (as [`Self::out`]).
    #[inline(always)]
    pub(crate) fn inb(&self) -> &InboundState {
        match &self.side {
            Side::Inbound(i) => i,
            Side::Outbound(_) => unreachable!("inbound state of an outbound SA"),
        }
    }

    /// [`Self::inb`], mutable.
    #[inline(always)]
    pub(crate) fn inb_mut(&mut self) -> &mut InboundState {
        match &mut self.side {
            Side::Inbound(i) => i,
            Side::Outbound(_) => unreachable!("inbound state of an outbound SA"),
        }
    }

    /// The outer header of an outbound tunnel-mode SA.
    #[inline(always)]
    pub(crate) fn outer(&self) -> Option<&OuterHeader> {
        match &self.side {
            Side::Outbound(o) => o.outer.as_ref(),
            Side::Inbound(_) => None,
        }
    }

    /// Notes that the SA sent a packet at `now` (every successful encryption, and
    /// NAT-keepalives).
    #[inline(always)]
    pub(crate) fn note_sent(&mut self, now: Duration) {
        if let Side::Outbound(o) = &mut self.side {
            o.last_sent = nanos(now);
        }
    }

    /// Notes that the SA encrypted a packet of traffic at `now` (not a dummy packet).
    #[inline(always)]
    pub(crate) fn note_protected(&mut self, now: Duration) {
        if let Side::Outbound(o) = &mut self.side {
            o.last_sent = nanos(now);
            o.last_protected = nanos(now);
        }
    }

    /// When the SA last carried traffic, on the caller's clock: the last packet it
    /// encrypted (outbound; NAT-keepalives and dummy packets do not count) or accepted
    /// (inbound; refused packets do not count). `None` before its first. What an IKE
    /// daemon asks to find idle SAs and dead peers (strongSwan's `query_sa` use time).
    /// A restored SA ([`SecurityAssociation::restore`]) counts from its restore.
    pub fn last_used(&self) -> Option<Duration> {
        if self.stats.packets == 0 {
            return None;
        }
        Some(Duration::from_nanos(match &self.side {
            Side::Outbound(o) => o.last_protected,
            Side::Inbound(i) => i.last_accepted,
        }))
    }

    /// TFC padding (outbound; none on an inbound SA).
    #[inline(always)]
    pub(crate) fn tfc(&self) -> TfcPadding {
        match &self.side {
            Side::Outbound(o) => o.tfc,
            Side::Inbound(_) => TfcPadding::None,
        }
    }

    /// The UDP encapsulation ports, if NAT traversal is on.
    pub fn udp_encap(&self) -> Option<(u16, u16)> {
        self.udp_encap
    }

    /// The tunnel endpoints, if configured.
    pub fn tunnel(&self) -> Option<(IpAddr, IpAddr)> {
        self.kept.tunnel()
    }

    /// How the gateway finds this inbound SA for a packet ([`SaLookup`]).
    pub fn lookup(&self) -> SaLookup {
        self.kept.lookup
    }

    /// The soft limits in force: the configured soft lifetime with this SA's jitter
    /// drawn when it was created ([`SaConfig::soft_lifetime_jitter`]); reaching one
    /// raises [`SaEvent::Rekey`].
    ///
    /// A limit of `u64::MAX` bytes or packets, or of `u64::MAX` nanoseconds (584
    /// years) or more, reads as none: the SA keeps it as no limit.
    pub fn soft_limits(&self) -> Lifetime {
        self.soft.lifetime()
    }

    /// The hard limits: reaching one raises [`SaEvent::Expired`]. Limits out of reach
    /// read as none, as for [`Self::soft_limits`].
    pub fn hard_limits(&self) -> Lifetime {
        self.hard.lifetime()
    }

    /// True once a hard lifetime was reached.
    pub fn is_expired(&self) -> bool {
        self.expired.is_some()
    }

    /// Checks the time-based lifetimes against `now` and returns the next event the
    /// caller must act on, or `None`. Call it until it returns `None`.
    #[must_use]
    pub fn poll_event(&mut self, now: Duration) -> Option<SaEvent> {
        self.update_lifetimes(now);
        self.events.pop()
    }

    /// The path MTU in force at `now` (outbound SAs): the configured value or a lower
    /// one learned from ICMP that has not aged out; `None` when no limit is set.
    pub fn path_mtu(&self, now: Duration) -> Option<u16> {
        self.pmtu.current(now)
    }

    /// Sets (or with `None` removes) the configured path MTU. A value learned from ICMP
    /// is forgotten, so the new value applies at once. Fails for a value below the
    /// smallest MTU of the SA's IP family (68 for IPv4, 1,280 for IPv6).
    pub fn set_path_mtu(&mut self, mtu: Option<u16>) -> Result<(), ConfigError> {
        if let Some(m) = mtu {
            let min = self.min_path_mtu();
            if m < min {
                return Err(ConfigError::new(
                    "path_mtu",
                    format!("{m} is below the smallest MTU of the path's IP family ({min})"),
                ));
            }
        }
        self.pmtu = PathMtu::new(mtu);
        if let Side::Outbound(o) = &mut self.side {
            o.mtu_cap = mtu.map_or(usize::MAX, usize::from);
        }
        Ok(())
    }

    fn min_path_mtu(&self) -> u16 {
        match self.kept.tunnel() {
            Some((src, _)) if src.is_ipv6() => IPV6_MIN_MTU,
            _ => IPV4_MIN_MTU,
        }
    }

    /// The largest inner packet that fits the path MTU at `now` after ESP (for a plain
    /// 20-byte IPv4 header in transport mode), or `None` without a path MTU: what a
    /// gateway advertises to its LAN (a TUN device's MTU, a TCP MSS clamp).
    pub fn inner_mtu(&self, now: Duration) -> Option<u16> {
        let mtu = usize::from(self.pmtu.current(now)?);
        Some(self.inner_mtu_within(mtu, crate::packet::IPV4_HEADER_LEN))
    }

    /// The largest inner packet whose ESP packet fits in `mtu` bytes; `hdr` is the
    /// inner header length that stays in front of ESP (transport mode).
    pub(crate) fn inner_mtu_within(&self, mtu: usize, hdr: usize) -> u16 {
        let align = self.transform.pad_align();
        let fixed = 8 + self.transform.iv_len() + self.transform.icv_len();
        let udp = if self.udp_encap.is_some() {
            crate::packet::UDP_HEADER_LEN
        } else {
            0
        };
        let (outer, front) = match self.mode {
            Mode::Tunnel => (self.outer().map_or(0, OuterHeader::ip_len), 0),
            Mode::Transport => (0, hdr),
        };
        // ESP carries roundup(payload + 2, align) bytes after the fixed headers.
        let room = mtu.saturating_sub(outer + front + udp + fixed) & !(align - 1);
        (front + room.saturating_sub(2)).min(usize::from(u16::MAX)) as u16
    }

    /// Takes an ICMP "fragmentation needed" (IPv4) or ICMPv6 "packet too big" message
    /// that the caller received and, when it is about one of this outbound SA's own
    /// packets, lowers the SA's path MTU for [`crate::path_mtu::PMTU_AGING`]. Returns
    /// the new path MTU, or `None` when the message changes nothing (its MTU is not
    /// lower).
    ///
    /// The message must quote an ESP packet (or ESP in UDP) with this SA's SPI, sent
    /// between this SA's tunnel endpoints (tunnel mode), with a sequence number the SA
    /// has used: a forged message has to guess the SPI and a recent sequence number
    /// (RFC 4301 §8.2.1 asks implementations to authenticate ICMP PMTU messages as far as
    /// they can). Reported MTUs are floored at 552 bytes for IPv4 (as Linux does) and
    /// 1,280 for IPv6 (RFC 8201 §4). Anything else fails with
    /// [`crate::Malformed::NotPathMtuMessage`] (or the parse error), and nothing is
    /// counted: ICMP is not traffic of the SA.
    pub fn handle_icmp(&mut self, icmp: &[u8], now: Duration) -> Result<Option<u16>, Error> {
        use crate::error::Malformed;
        if self.direction != Direction::Outbound {
            return Err(Error::WrongDirection);
        }
        let msg = TooBigMessage::parse(icmp).map_err(Error::Malformed)?;
        let not_ours = Error::Malformed(Malformed::NotPathMtuMessage);
        let (qsrc, qdst) = msg.quoted_addresses().ok_or(not_ours)?;
        if let Some((src, dst)) = self.kept.tunnel()
            && (qsrc != src || qdst != dst)
        {
            return Err(not_ours);
        }
        if let (Some(ours), Some(theirs)) = (self.udp_encap, msg.quoted_udp_ports)
            && ours != theirs
        {
            return Err(not_ours);
        }
        if msg.quoted_spi() != Some(self.spi) {
            return Err(not_ours);
        }
        // The sequence number must be one this SA has sent, recently enough that a
        // router could still be complaining about it.
        let sent = msg.quoted_seq().ok_or(not_ours)?;
        let last = self.out().seq as u32;
        if sent == 0 || last.wrapping_sub(sent) >= 1 << 20 {
            return Err(not_ours);
        }
        let (v6, floor) = match qsrc {
            IpAddr::V4(_) => (false, MIN_LEARNED_IPV4_MTU),
            IpAddr::V6(_) => (true, IPV6_MIN_MTU),
        };
        let reported = if msg.mtu == 0 && !v6 {
            u32::from(plateau_below(
                msg.quoted_len().unwrap_or(usize::from(u16::MAX)),
            ))
        } else {
            msg.mtu
        };
        let mtu = reported.clamp(u32::from(floor), u32::from(u16::MAX)) as u16;
        let learned = self.pmtu.learn(mtu, now);
        self.out_mut().mtu_cap = self.pmtu.cap(now);
        Ok(learned)
    }

    /// The headroom an outbound packet needs in front of it (outer IP header, UDP
    /// header, ESP header and IV), for the largest outer header this SA can write.
    pub fn max_headroom(&self) -> usize {
        let outer = match (self.mode, self.kept.tunnel()) {
            (Mode::Tunnel, Some((src, _))) if src.is_ipv4() => crate::packet::IPV4_HEADER_LEN,
            (Mode::Tunnel, _) => crate::packet::IPV6_HEADER_LEN,
            (Mode::Transport, _) => 0,
        };
        let udp = if self.udp_encap.is_some() {
            crate::packet::UDP_HEADER_LEN
        } else {
            0
        };
        outer + udp + 8 + self.transform.iv_len()
    }

    /// The tailroom an outbound packet of `len` bytes needs behind it (TFC padding,
    /// ESP padding, pad length, next header and ICV). Exact in tunnel mode; in
    /// transport mode only the part after the IP header is padded, so this returns the
    /// worst case over header lengths.
    pub fn tailroom_for(&self, len: usize) -> usize {
        self.tailroom_shape().tailroom_for(len)
    }

    /// What [`Self::tailroom_for`] depends on: SAs of one shape need the same
    /// tailroom at every length (a gateway keeps one entry per shape, not per SA).
    pub(crate) fn tailroom_shape(&self) -> TailroomShape {
        TailroomShape {
            tunnel: self.mode == Mode::Tunnel,
            pad_to: match self.tfc() {
                TfcPadding::PadTo(n) => n,
                TfcPadding::None => 0,
            },
            pad_align: self.transform.pad_align(),
            icv_len: self.transform.icv_len(),
        }
    }

    /// The most an outbound packet can grow: [`Self::max_headroom`] plus the largest
    /// [`Self::tailroom_for`] (for buffer sizing).
    pub fn max_overhead(&self) -> usize {
        let tfc = match self.tfc() {
            TfcPadding::PadTo(n) => usize::from(n),
            TfcPadding::None => 0,
        };
        self.max_headroom() + tfc + self.transform.pad_align() + 1 + self.transform.icv_len()
    }

    /// Brings the lifetimes up to `now` (as a packet would) and says whether a hard
    /// lifetime has been reached.
    pub(crate) fn expired_at(&mut self, now: Duration) -> bool {
        if self.trip.hit(now, self.stats.packets, self.stats.bytes) {
            self.update_lifetimes(now);
        }
        self.expired.is_some()
    }

    /// Refuses a packet when the SA has expired; otherwise `Ok`.
    #[inline]
    pub(crate) fn admit(&mut self, now: Duration) -> Result<(), Error> {
        if self.trip.hit(now, self.stats.packets, self.stats.bytes) {
            self.update_lifetimes(now);
        }
        match self.expired {
            Some(limit) => Err(self.drop(Error::LifetimeExpired(limit))),
            None => Ok(()),
        }
    }

    /// Accounts a processed packet of `bytes` inner bytes.
    #[inline]
    pub(crate) fn account(&mut self, bytes: usize) {
        self.stats.packets += 1;
        self.stats.bytes += bytes as u64;
    }

    /// Marks the SA expired by `limit` now (a packet would have crossed it), raising
    /// [`SaEvent::Expired`] once.
    pub(crate) fn expire(&mut self, limit: LifetimeLimit) {
        if self.expired.is_none() {
            self.expired = Some(limit);
            self.events.raise(SaEvent::Expired(limit));
            self.trip = Trip::NEVER;
        }
    }

    /// Counts `err` under its drop reason and hands it back.
    #[inline]
    pub(crate) fn drop(&mut self, err: Error) -> Error {
        self.count_drop(err.drop_reason());
        err
    }

    /// The SA's age at `now` on the caller's clock (what time lifetimes count).
    pub(crate) fn age(&self, now: Duration) -> Duration {
        Duration::from_nanos(self.age_nanos(now))
    }

    /// [`Self::age`] in nanoseconds (saturating).
    fn age_nanos(&self, now: Duration) -> u64 {
        let age = i128::from(signed_nanos(now)) - i128::from(self.born);
        u64::try_from(age.max(0)).unwrap_or(u64::MAX)
    }

    #[inline]
    pub(crate) fn update_lifetimes(&mut self, now: Duration) {
        let age = self.age_nanos(now);
        let (bytes, packets) = (self.stats.bytes, self.stats.packets);
        if let Some(l) = self.soft.reached(bytes, packets, age) {
            self.events.raise(SaEvent::Rekey(l));
        }
        if self.expired.is_none()
            && let Some(l) = self.hard.reached(bytes, packets, age)
        {
            self.expired = Some(l);
            self.events.raise(SaEvent::Expired(l));
        }
        // Re-arm: the hard limits (once expired, nothing more to watch) and the soft
        // limits whose Rekey event has not been raised yet.
        self.trip = if self.expired.is_some() {
            Trip::NEVER
        } else {
            let mut soft = Trip::of(&self.soft, self.born);
            let raised = self.events.raised_rekeys();
            if raised[0] {
                soft.bytes = u64::MAX;
            }
            if raised[1] {
                soft.packets = u64::MAX;
            }
            if raised[2] {
                soft.at = u64::MAX;
            }
            soft.min(Trip::of(&self.hard, self.born))
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An inbound SA keeps a counter for every reason (a check passed to
    /// `decrypt_verified` may return any error), each in one place; an outbound SA
    /// leaves out exactly the reasons only decrypting calls produce.
    #[test]
    fn drop_counters_cover_every_reason_of_their_direction() {
        for r in DropReason::ALL {
            let wide = INBOUND_WIDE_SLOTS[r.index()] != NO_SLOT;
            let narrow = INBOUND_NARROW_SLOTS[r.index()] != NO_SLOT;
            assert!(wide ^ narrow, "{r:?}: wide {wide}, narrow {narrow}");
        }
        let receive_only = [
            DropReason::AuthFailed,
            DropReason::Replay,
            DropReason::TooOld,
            DropReason::BadPadding,
            DropReason::BadNextHeader,
            DropReason::Dummy,
            DropReason::NatKeepalive,
            DropReason::FragmentTimeout,
            DropReason::FragmentOverlap,
            DropReason::FragmentDuplicate,
            DropReason::FragmentLimit,
            DropReason::FragmentInvalid,
            DropReason::FragmentTooShort,
            DropReason::FragmentUnresolved,
        ];
        for r in DropReason::ALL {
            let kept = OUTBOUND_SLOTS[r.index()] != NO_SLOT;
            assert_eq!(kept, !receive_only.contains(&r), "{r:?}");
        }
    }

    fn sa(direction: Direction) -> SecurityAssociation {
        let mut c = SaConfig::new(0x1000, direction, Mode::Tunnel, Cipher::Aes128Gcm, &[7; 20]);
        c.tunnel([192, 0, 2, 1].into(), [192, 0, 2, 2].into());
        SecurityAssociation::new(c, Duration::ZERO).unwrap()
    }

    /// Counts reach `stats()` under their reason; narrow inbound counters saturate at
    /// `u32::MAX`, wide ones do not; restored counts come back the same way.
    #[test]
    fn drop_counts_by_direction_and_width() {
        let mut inb = sa(Direction::Inbound);
        inb.side
            .count_drops(DropReason::AuthFailed, u64::from(u32::MAX) + 5);
        inb.side
            .count_drops(DropReason::BadPadding, u64::from(u32::MAX) + 5);
        inb.count_drop(DropReason::FragmentOverlap);
        let s = inb.stats();
        assert_eq!(s.dropped(DropReason::AuthFailed), u64::from(u32::MAX) + 5);
        assert_eq!(s.dropped(DropReason::BadPadding), u64::from(u32::MAX));
        assert_eq!(s.dropped(DropReason::FragmentOverlap), 1);
        let mut out = sa(Direction::Outbound);
        out.count_drop(DropReason::SequenceOverflow);
        out.count_drop(DropReason::TooBig);
        assert_eq!(out.stats().dropped(DropReason::SequenceOverflow), 1);
        assert_eq!(out.stats().dropped_total(), 2);
        let mut restored = sa(Direction::Inbound);
        restored.set_drops(&s.drops);
        assert_eq!(restored.stats(), s);
        // The tunnel endpoints live in the kept key block.
        assert_eq!(
            out.tunnel(),
            Some(([192, 0, 2, 1].into(), [192, 0, 2, 2].into()))
        );
        assert_eq!(out.kept.key(), &[7; 20]);
        assert!(out.kept.integrity_key().is_empty());
    }
}
