//! High availability: an SA's whole state as bytes ([`SaSnapshot`]), and an SA
//! restored from them ([`SecurityAssociation::restore`]) on a standby.
//!
//! # What a snapshot holds
//!
//! Everything needed to rebuild the SA and carry on: its configuration **with its
//! keys** (cipher key and salt, integrity key), the outbound sequence number or the
//! inbound replay window (top and bitmap, bit for bit), the lifetime usage (packets,
//! bytes, age), the counters, the lifetime events raised and not yet polled, the
//! configured and learned path MTU, the outer IPv4 Identification and IPv6 fragment
//! Identification counters, the NAT-keepalive timer and the late-packet histogram (an
//! SA without one writes an empty one; a restored SA keeps a histogram when the
//! snapshot's counted a packet, or when [`RestoreOptions::late_histogram`] asks).
//!
//! Not carried: a custom [`crate::crypto::IvSource`] (the restored SA draws its CBC
//! IVs from the OS, as by default) and the headers of transport-mode NAT-keepalives,
//! which the restored SA learns again from its next packet.
//!
//! **A snapshot is key material.** [`SaSnapshot`] wipes its bytes when dropped and its
//! `Debug` form shows no byte of them; whoever stores or sends the bytes must protect
//! them as they protect the keys themselves (an authenticated, encrypted channel to the
//! standby; no logs, no swap). The format has no integrity check of its own: a
//! corrupted snapshot is refused when a field is impossible, not always otherwise.
//!
//! # Time across machines
//!
//! The library reads no clock: `now` is the caller's, and the standby's clock need not
//! agree with the primary's. A snapshot therefore records **ages and remaining times**,
//! never the primary's `now`: the SA's age (what time lifetimes count), how long the SA
//! had been silent (NAT-keepalives) and how long a learned path MTU still holds. The
//! restore measures them from the standby's `now`. The time between taking the
//! snapshot and restoring it is not known to the library; a caller that knows it adds
//! it with [`RestoreOptions::elapsed_since_snapshot`] (otherwise the SA's age is
//! undercounted by it, and its time lifetimes fire that much later). A standby clock
//! that reads less than the SA's age is fine: the age is carried as an offset.
//!
//! # Never the same nonce twice
//!
//! An outbound SA restored from a snapshot taken before the primary's last packet would
//! send sequence numbers the primary already sent: with AES-GCM, ChaCha20-Poly1305 or
//! GMAC the nonce is the sequence number, so the same (key, nonce) pair would protect
//! two different packets, which gives the key stream and the authentication key away.
//! So restoring an outbound SA jumps its sequence number ahead by a margin (as
//! OpenBSD's pfsync does for the replay counters of the SAs it synchronises):
//! the restored SA's last-used sequence number is `snapshot + margin`, and its next
//! packet carries `snapshot + margin + 1`. The margin must exceed the packets the
//! primary can send between two snapshots (snapshot interval × peak packet rate); the
//! default, [`RestoreOptions::DEFAULT_SEQ_MARGIN`] = 2^20, covers a snapshot a second at
//! one million packets a second and costs 1/4096 of a 32-bit sequence space, which the
//! peer's receiver simply skips (a jump ahead is always accepted). A caller that knows a
//! sequence number the primary has used (from its own bookkeeping or a later, smaller
//! heartbeat) passes it to [`RestoreOptions::not_below`], and a restore that would start
//! at or below it is refused ([`SnapshotError::Backwards`]). A margin that leaves no
//! sequence number to send (past 2^32 - 1, or 2^64 - 1 with ESN) is refused as well
//! ([`SnapshotError::SeqSpaceExhausted`]): replace the SA instead.
//!
//! An inbound SA is restored exactly: a packet recorded in the window before the
//! snapshot is refused after the restore. Packets the primary accepted **after** the
//! snapshot are unknown to the standby and would be accepted once more if an attacker
//! replayed them: the window of a snapshot is as fresh as the snapshot.
//!
//! # Format, versions 1 and 2
//!
//! All integers big-endian. A duration is `secs: u64, nanos: u32` (`nanos` below
//! 10^9). An optional value is a `u8` tag (0 absent, 1 present) followed by the value
//! when present. An address pair is a `u8` family (0 none, 4 IPv4, 6 IPv6) followed by
//! two addresses of 4 or 16 bytes.
//!
//! ```text
//! header   magic        8 bytes  "IPSEC-SA"
//!          version      u16      1, or 2 (below)
//!          flags        u16      0 (reserved)
//!          body_len     u32      bytes after the header, exactly
//! config   spi u32, direction u8 (1 outbound, 2 inbound), mode u8 (1 tunnel,
//!          2 transport), cipher (u8 length + name as `Cipher::name`), integrity (u8
//!          length + name, length 0 for none), key (u16 length + bytes), integrity key
//!          (u16 length + bytes), esn u8 (0/1), tunnel (address pair), udp_encap
//!          (optional u16 source port, u16 destination port), soft and hard lifetime
//!          (each: optional u64 bytes, optional u64 packets, optional duration),
//!          tfc_pad_to (optional u16), padding u8 (0 blocks, 1 minimal), outer_ttl u8,
//!          df u8 (0 copy, 1 set, 2 clear), path_mtu (optional u16: the value in force,
//!          set at creation or by `set_path_mtu`), nat_keepalive_interval (optional
//!          duration), nat_original_addresses (address pair)
//! state    seq u64 (outbound: last used; inbound: the window's top), age (duration),
//!          packets u64, bytes u64, drop counters (u8 count n, then n × u64 in
//!          `DropReason::ALL` order; a reader takes fewer than it knows as zeros),
//!          events raised u8, events pending u8 (bits: rekey bytes, packets, time,
//!          expired bytes, packets, time), expired u8 (0 no, 1 bytes, 2 packets,
//!          3 time), learned path MTU (optional: u16 MTU, duration it still holds),
//!          next IPv4 Identification u16, next IPv6 fragment Identification u32,
//!          silence (duration since the SA last sent; 0 for an inbound SA, which
//!          sends nothing), late histogram 64 × u64,
//!          window size u32 (inbound; 0 for an outbound SA or replay protection off),
//!          bitmap: ceil(size / 8) bytes, bit d (byte d / 8, bit d % 8 from the least
//!          significant) set when sequence number `seq - d` was received
//! version 2 only, after the bitmap:
//!          lookup u8 (0 spi, 1 spi+protocol, 2 spi+destination,
//!          3 spi+destination+source: `SaLookup`, RFC 4301 §4.1)
//! ```
//!
//! A writer writes version 1 for an SA found by its SPI alone (every SA before
//! version 2 was; such a snapshot is byte for byte what an older library writes and
//! reads) and version 2 for any other lookup (which an older library refuses as a
//! version it does not know, rather than restore an SA that would take packets of
//! other destinations). A reader reads both; a version 1 snapshot restores an SA found
//! by its SPI alone.
//!
//! A reader refuses another magic ([`SnapshotError::BadMagic`]), a version it does not
//! know ([`SnapshotError::UnsupportedVersion`]), a body shorter than `body_len` or
//! than its fields ([`SnapshotError::Truncated`]), bytes left over after either
//! ([`SnapshotError::BadLength`]), impossible values ([`SnapshotError::BadField`]) and a
//! configuration [`SecurityAssociation::new`] would refuse ([`SnapshotError::Config`]).
//! A later version adds fields at the end of the body and bumps the version.

use crate::crypto::{Cipher, Integrity};
use crate::error::{ConfigError, DropReason, LifetimeLimit};
use crate::replay::{LateHistogram, ReplayWindow};
use crate::sa::Side;
use crate::sa::{
    DfPolicy, Direction, EspPadding, Lifetime, Mode, SaConfig, SaLookup, SecurityAssociation,
    TfcPadding,
};
use core::fmt;
use core::time::Duration;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use zeroize::Zeroizing;

/// The first 8 bytes of every snapshot.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"IPSEC-SA";
/// The newest format version this library writes and reads (it reads every version
/// from 1 on, and writes the oldest that holds the SA: see the [module docs](self)).
pub const SNAPSHOT_VERSION: u16 = 2;
/// Bytes of the header (magic, version, flags, body length).
const HEADER_LEN: usize = 16;
/// Room for every fixed-size field of the body (the keys and the bitmap come on top).
const FIXED_BODY_MAX: usize = 1024;

/// Why snapshot bytes could not be read, or an SA could not be restored from them.
///
/// No variant carries, and no message quotes, a byte of the snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The bytes end before the header, the body its header declares, or a field does.
    Truncated,
    /// The bytes do not start with [`SNAPSHOT_MAGIC`]: not an SA snapshot.
    BadMagic,
    /// A format version this library does not read.
    UnsupportedVersion(u16),
    /// Bytes are left over after the body the header declares, or after the body's
    /// last field.
    BadLength {
        /// The body length the header declares.
        declared: u64,
        /// The body bytes present.
        actual: u64,
    },
    /// A field holds a value that cannot be (an unknown enum value, a bit that cannot be
    /// set, a reserved field not zero).
    BadField {
        /// The field, named as in the format description.
        field: &'static str,
        /// What was wrong with it.
        problem: &'static str,
    },
    /// The configuration in the snapshot is one [`SecurityAssociation::new`] refuses
    /// (the error names the field, never a key's bytes).
    Config(ConfigError),
    /// The outbound sequence number plus the margin leaves no sequence number to send
    /// (`limit` is 2^32 - 1, or 2^64 - 1 with ESN).
    SeqSpaceExhausted {
        /// The last sequence number used, as in the snapshot.
        seq: u64,
        /// The margin asked for.
        margin: u64,
        /// The last sequence number the SA may send.
        limit: u64,
    },
    /// The restored outbound SA would start at or below a sequence number the caller
    /// says was already used ([`RestoreOptions::not_below`]): its snapshot is too stale
    /// for the margin.
    Backwards {
        /// The last-used sequence number the restore would give (`snapshot + margin`).
        restored: u64,
        /// The sequence number the caller says was used.
        not_below: u64,
    },
}

impl SnapshotError {
    /// True when the bytes are not a valid snapshot (truncated, wrong magic or
    /// version, bad length or field, refused configuration); false when they are, but
    /// the restore was refused for the sequence numbers' sake.
    pub fn is_invalid_snapshot(&self) -> bool {
        !matches!(
            self,
            SnapshotError::SeqSpaceExhausted { .. } | SnapshotError::Backwards { .. }
        )
    }

    /// The error as a [`ConfigError`], for layers that report configuration errors:
    /// the field is `snapshot` (or the refused configuration's field, prefixed with
    /// `snapshot: `), `seq_margin` or `not_below`.
    pub fn to_config_error(&self) -> ConfigError {
        match self {
            SnapshotError::Config(e) => e.clone().in_context("snapshot"),
            SnapshotError::SeqSpaceExhausted { .. } => {
                ConfigError::new("seq_margin", self.to_string())
            }
            SnapshotError::Backwards { .. } => ConfigError::new("not_below", self.to_string()),
            _ => ConfigError::new("snapshot", self.to_string()),
        }
    }
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Truncated => f.write_str("SA snapshot truncated"),
            SnapshotError::BadMagic => f.write_str("not an SA snapshot (bad magic)"),
            SnapshotError::UnsupportedVersion(v) => write!(
                f,
                "SA snapshot format version {v} is not supported (this library reads \
                 versions 1 to {SNAPSHOT_VERSION})"
            ),
            SnapshotError::BadLength { declared, actual } => write!(
                f,
                "SA snapshot body length {declared} disagrees with its {actual} bytes"
            ),
            SnapshotError::BadField { field, problem } => {
                write!(f, "SA snapshot field {field}: {problem}")
            }
            SnapshotError::Config(e) => write!(f, "SA snapshot configuration refused: {e}"),
            SnapshotError::SeqSpaceExhausted { seq, margin, limit } => write!(
                f,
                "sequence number {seq} + margin {margin} leaves no sequence number to send \
                 (the last is {limit}): replace the SA"
            ),
            SnapshotError::Backwards {
                restored,
                not_below,
            } => write!(
                f,
                "the restored SA would continue after sequence number {restored}, but \
                 {not_below} was already used: the snapshot is too stale for the margin \
                 (a larger margin, or a newer snapshot)"
            ),
        }
    }
}

impl std::error::Error for SnapshotError {}

impl From<ConfigError> for SnapshotError {
    fn from(e: ConfigError) -> Self {
        SnapshotError::Config(e)
    }
}

/// The bytes of an SA snapshot (the format of the [module documentation](self)).
///
/// **Holds the SA's keys**: wiped when dropped, never shown by `Debug`. Not `Clone`, so
/// that copies are deliberate ([`SaSnapshot::as_bytes`]).
pub struct SaSnapshot {
    bytes: Zeroizing<Vec<u8>>,
}

impl SaSnapshot {
    /// The bytes, to store or send to a standby (protect them like keys).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Checks `bytes` as a snapshot (everything [`SecurityAssociation::restore`]
    /// checks but the sequence number margin) and keeps a copy (wiped on drop).
    pub fn from_bytes(bytes: &[u8]) -> Result<SaSnapshot, SnapshotError> {
        parse(bytes)?;
        let mut copy = Zeroizing::new(Vec::with_capacity(bytes.len()));
        copy.extend_from_slice(bytes);
        Ok(SaSnapshot { bytes: copy })
    }

    /// The SPI of the snapshot's SA.
    pub fn spi(&self) -> u32 {
        // The header was checked when the snapshot was made or read.
        u32::from_be_bytes([
            self.bytes[HEADER_LEN],
            self.bytes[HEADER_LEN + 1],
            self.bytes[HEADER_LEN + 2],
            self.bytes[HEADER_LEN + 3],
        ])
    }
}

impl fmt::Debug for SaSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaSnapshot")
            .field("spi", &format_args!("{:#010x}", self.spi()))
            .field("len", &self.bytes.len())
            .field("bytes", &"<redacted: holds keys>")
            .finish()
    }
}

/// How [`SecurityAssociation::restore`] restores an SA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoreOptions {
    /// Outbound: how far the sequence number jumps ahead.
    pub seq_margin: u64,
    /// Outbound: a sequence number known to be used; the restore must continue above it.
    pub not_below: Option<u64>,
    /// Time that passed between taking the snapshot and restoring it, added to the
    /// SA's age.
    pub elapsed_since_snapshot: Duration,
    /// Inbound: give the restored SA a late-packet histogram even when the snapshot's
    /// is empty (see [`RestoreOptions::late_histogram`]).
    pub late_histogram: bool,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions::new()
    }
}

impl RestoreOptions {
    /// The default sequence number margin, 2^20 (see the [module documentation](self)).
    pub const DEFAULT_SEQ_MARGIN: u64 = 1 << 20;

    /// The defaults: margin [`Self::DEFAULT_SEQ_MARGIN`], no `not_below`, no elapsed time.
    pub const fn new() -> Self {
        RestoreOptions {
            seq_margin: Self::DEFAULT_SEQ_MARGIN,
            not_below: None,
            elapsed_since_snapshot: Duration::ZERO,
            late_histogram: false,
        }
    }

    /// Sets the outbound sequence number margin: the restored SA's last-used sequence
    /// number is the snapshot's plus this. 0 only for a snapshot known to be the
    /// primary's last state (taken after it stopped sending). Ignored for inbound SAs.
    pub const fn seq_margin(mut self, margin: u64) -> Self {
        self.seq_margin = margin;
        self
    }

    /// Refuses ([`SnapshotError::Backwards`]) an outbound restore whose last-used
    /// sequence number (snapshot + margin) would be below `seq`, a sequence number the
    /// caller knows the primary used. Ignored for inbound SAs.
    pub const fn not_below(mut self, seq: u64) -> Self {
        self.not_below = Some(seq);
        self
    }

    /// Adds `elapsed` (time between the snapshot and the restore, if the caller knows
    /// it) to the restored SA's age, so its time lifetimes stay on schedule.
    pub const fn elapsed_since_snapshot(mut self, elapsed: Duration) -> Self {
        self.elapsed_since_snapshot = elapsed;
        self
    }

    /// Inbound: whether the restored SA keeps a late-packet histogram
    /// ([`crate::SaConfig::late_histogram`]) when the snapshot's is empty. The snapshot
    /// does not record whether the SA had one (an empty histogram and none are written
    /// alike), so a restored SA has one when the snapshot's histogram counted a packet,
    /// or when this is true. Default false. Ignored for outbound SAs.
    pub const fn late_histogram(mut self, on: bool) -> Self {
        self.late_histogram = on;
        self
    }
}

impl SecurityAssociation {
    /// The SA's whole state at `now` (the caller's clock) as a [`SaSnapshot`]: keys,
    /// sequence number or replay window, lifetime usage, counters, events. See
    /// [`crate::snapshot`] for the format and for what restoring it guarantees.
    ///
    /// The snapshot holds the keys: it is wiped when dropped; protect its bytes.
    pub fn snapshot(&self, now: Duration) -> SaSnapshot {
        let c = &self.kept;
        let window = self.replay_window().size();
        let capacity = HEADER_LEN
            + FIXED_BODY_MAX
            + c.key().len()
            + c.integrity_key().len()
            + (window as usize).div_ceil(8);
        // Reserved once, so that no reallocation leaves a copy of the keys behind.
        let mut w = Writer(Zeroizing::new(Vec::with_capacity(capacity)));
        w.0.extend_from_slice(&SNAPSHOT_MAGIC);
        let version = if c.lookup == SaLookup::Spi { 1 } else { 2 };
        w.u16(version);
        w.u16(0);
        w.u32(0); // body length, filled in below
        w.u32(self.spi);
        w.u8(match self.direction {
            Direction::Outbound => 1,
            Direction::Inbound => 2,
        });
        w.u8(match self.mode {
            Mode::Tunnel => 1,
            Mode::Transport => 2,
        });
        w.name(self.cipher.name());
        w.name(self.integrity.map_or("", Integrity::name));
        w.blob(c.key());
        w.blob(c.integrity_key());
        w.u8(u8::from(self.esn));
        w.addrs(self.tunnel());
        w.opt(self.udp_encap, |w, (s, d)| {
            w.u16(s);
            w.u16(d);
        });
        for l in [&self.soft.lifetime(), &self.hard.lifetime()] {
            w.opt(l.bytes, Writer::u64);
            w.opt(l.packets, Writer::u64);
            w.opt(l.time, Writer::duration);
        }
        w.opt(
            match self.tfc() {
                TfcPadding::PadTo(n) => Some(n),
                _ => None,
            },
            Writer::u16,
        );
        w.u8(match c.padding {
            EspPadding::Minimal => 1,
            _ => 0,
        });
        w.u8(c.outer_ttl);
        w.u8(match c.df {
            DfPolicy::Set => 1,
            DfPolicy::Clear => 2,
            _ => 0,
        });
        w.opt(self.pmtu.configured(), Writer::u16);
        w.opt(c.nat_keepalive_interval(), Writer::duration);
        w.addrs(self.nat_original_addresses());
        // State.
        w.u64(self.seq());
        w.duration(self.age(now));
        w.u64(self.stats.packets);
        w.u64(self.stats.bytes);
        w.u8(DropReason::ALL.len() as u8);
        for d in self.stats().drops {
            w.u64(d);
        }
        w.u8(self.events.raised);
        w.u8(self.events.pending);
        w.u8(match self.expired {
            None => 0,
            Some(LifetimeLimit::Bytes) => 1,
            Some(LifetimeLimit::Packets) => 2,
            Some(LifetimeLimit::Time) => 3,
        });
        w.opt(
            self.pmtu.learned().filter(|&(_, until)| until > now),
            |w, (mtu, until)| {
                w.u16(mtu);
                w.duration(until - now);
            },
        );
        // An inbound SA writes no IPv4 header and no fragment: 0 for both.
        let (ident, fragment_id) = match &self.side {
            Side::Outbound(o) => (o.next_ipv4_ident, o.fragment_id),
            Side::Inbound(_) => (0, 0),
        };
        w.u16(ident);
        w.u32(fragment_id);
        w.duration(match &self.side {
            Side::Outbound(o) => now.saturating_sub(Duration::from_nanos(o.last_sent)),
            // An inbound SA sends nothing (and keeps no time for it).
            Side::Inbound(_) => Duration::ZERO,
        });
        for b in self.replay_window().late_histogram().buckets() {
            w.u64(*b);
        }
        w.u32(window);
        let mut byte = 0u8;
        for d in 0..u64::from(window) {
            if self.replay_window().recorded_below_top(d) {
                byte |= 1 << (d % 8);
            }
            if d % 8 == 7 {
                w.u8(byte);
                byte = 0;
            }
        }
        if !window.is_multiple_of(8) {
            w.u8(byte);
        }
        if version >= 2 {
            w.u8(match c.lookup {
                SaLookup::SpiProtocol => 1,
                SaLookup::SpiDestination => 2,
                SaLookup::SpiDestinationSource => 3,
                _ => 0,
            });
        }
        let body = (w.0.len() - HEADER_LEN) as u32;
        w.0[12..16].copy_from_slice(&body.to_be_bytes());
        debug_assert!(w.0.capacity() == capacity, "the snapshot buffer grew");
        SaSnapshot { bytes: w.0 }
    }

    /// An SA rebuilt from snapshot `bytes` ([`SaSnapshot::as_bytes`]) at `now` on the
    /// caller's (the standby's) clock, with the sequence number rules of `options`.
    ///
    /// An outbound SA continues after `snapshot seq + options.seq_margin`, so that it
    /// never sends a sequence number (an AEAD nonce) the primary may have sent after
    /// the snapshot; an inbound SA gets its replay window back bit for bit. Lifetime
    /// usage, counters and pending events come back as they were; the SA's age is
    /// measured from `now` (see [`crate::snapshot`]).
    ///
    /// Errors: bytes that are not a valid snapshot (typed: truncated, bad magic,
    /// unsupported version, bad length, bad field, refused configuration), a margin
    /// that exhausts the sequence space, or a restore below `options.not_below`.
    /// Never panics on any input.
    pub fn restore(
        bytes: &[u8],
        options: &RestoreOptions,
        now: Duration,
    ) -> Result<SecurityAssociation, SnapshotError> {
        let Parsed { config, state } = parse(bytes)?;
        Self::restore_parsed(config, state, options, now)
    }

    /// This SA with other tunnel endpoints and UDP encapsulation, all else as it is
    /// at `now`: keys, sequence number (no jump: the caller replaces this SA with the
    /// result in one step, so no sequence number, no nonce, is used twice), replay
    /// window, lifetimes and their usage, counters, events. For
    /// [`crate::Gateway::update_sa`] (a NAT mapping or a MOBIKE address change). A
    /// path MTU learned from ICMP is forgotten (it was the old path's); an injected
    /// IV source is not carried over (the new SA draws CBC IVs from the OS).
    ///
    /// Refused as a configuration with these endpoints would be ([`ConfigError`]
    /// naming `tunnel_src`, `tunnel_dst`, `udp_encap`, ...).
    pub(crate) fn moved(
        &self,
        tunnel: Option<(IpAddr, IpAddr)>,
        udp_encap: Option<(u16, u16)>,
        now: Duration,
    ) -> Result<SecurityAssociation, ConfigError> {
        let Parsed {
            mut config,
            mut state,
        } = parse(self.snapshot(now).as_bytes()).map_err(|e| e.to_config_error())?;
        config.tunnel = tunnel;
        config.udp_encap = udp_encap;
        state.learned_mtu = None;
        let options = RestoreOptions::new().seq_margin(0).late_histogram(
            self.direction == Direction::Inbound && self.inb().replay.has_histogram(),
        );
        let mut sa = Self::restore_parsed(config, state, &options, now).map_err(|e| match e {
            // The new endpoints refused: the error names the field as `add_sa`'s would.
            SnapshotError::Config(c) => c,
            e => e.to_config_error(),
        })?;
        // Use times exactly (a snapshot keeps only the outbound silence).
        match (&mut sa.side, &self.side) {
            (Side::Outbound(new), Side::Outbound(old)) => {
                new.last_sent = old.last_sent;
                new.last_protected = old.last_protected;
            }
            (Side::Inbound(new), Side::Inbound(old)) => new.last_accepted = old.last_accepted,
            _ => {}
        }
        Ok(sa)
    }

    /// [`SecurityAssociation::restore`] of a parsed snapshot.
    fn restore_parsed(
        mut config: SaConfig,
        state: State,
        options: &RestoreOptions,
        now: Duration,
    ) -> Result<SecurityAssociation, SnapshotError> {
        if config.direction == Direction::Outbound {
            let limit = if config.esn {
                u64::MAX
            } else {
                u64::from(u32::MAX)
            };
            let margin = options.seq_margin;
            let restored = state.seq.checked_add(margin).filter(|&s| s < limit).ok_or(
                SnapshotError::SeqSpaceExhausted {
                    seq: state.seq,
                    margin,
                    limit,
                },
            )?;
            if let Some(used) = options.not_below
                && restored < used
            {
                return Err(SnapshotError::Backwards {
                    restored,
                    not_below: used,
                });
            }
            config.seq = restored;
        } else {
            config.seq = state.seq;
        }
        let mut sa = SecurityAssociation::new(config, now)?;
        if sa.direction == Direction::Inbound {
            let bitmap = &state.bitmap;
            sa.inb_mut().replay = ReplayWindow::restored(
                state.window,
                sa.esn,
                state.seq,
                |d| bitmap[(d / 8) as usize] & (1 << (d % 8)) != 0,
                LateHistogram::from_buckets(state.late),
                options.late_histogram,
            )?;
        }
        let age = state.age.saturating_add(options.elapsed_since_snapshot);
        sa.born = crate::sa::signed_nanos(now).saturating_sub(crate::sa::signed_nanos(age));
        sa.stats.packets = state.packets;
        sa.stats.bytes = state.bytes;
        sa.set_drops(&state.drops);
        sa.events.raised = state.raised;
        sa.events.pending = state.pending;
        sa.expired = state.expired;
        if let Some((mtu, remaining)) = state.learned_mtu {
            sa.pmtu
                .set_learned(Some((mtu, now.saturating_add(remaining))));
        }
        let mtu_cap = sa.pmtu.cap(now);
        if let Side::Outbound(o) = &mut sa.side {
            o.mtu_cap = mtu_cap;
            o.next_ipv4_ident = state.next_ipv4_ident;
            o.fragment_id = state.fragment_id;
        }
        if let Side::Outbound(o) = &mut sa.side {
            o.last_sent = crate::sa::nanos(now.saturating_sub(state.silence));
        }
        // Re-arm the lifetime checks from the restored usage (raising what the
        // standby's `now` has reached).
        sa.update_lifetimes(now);
        Ok(sa)
    }
}

/// Appends big-endian fields to a snapshot.
struct Writer(Zeroizing<Vec<u8>>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn duration(&mut self, d: Duration) {
        self.u64(d.as_secs());
        self.u32(d.subsec_nanos());
    }
    fn name(&mut self, name: &str) {
        self.u8(name.len() as u8);
        self.0.extend_from_slice(name.as_bytes());
    }
    fn blob(&mut self, bytes: &[u8]) {
        self.u16(bytes.len() as u16);
        self.0.extend_from_slice(bytes);
    }
    fn opt<T>(&mut self, v: Option<T>, put: impl FnOnce(&mut Self, T)) {
        match v {
            Some(v) => {
                self.u8(1);
                put(self, v);
            }
            None => self.u8(0),
        }
    }
    fn addrs(&mut self, pair: Option<(IpAddr, IpAddr)>) {
        match pair {
            None => self.u8(0),
            Some((IpAddr::V4(s), IpAddr::V4(d))) => {
                self.u8(4);
                self.0.extend_from_slice(&s.octets());
                self.0.extend_from_slice(&d.octets());
            }
            Some((s, d)) => {
                // Mixed families are refused when the SA is created; write both as IPv6.
                self.u8(6);
                for a in [s, d] {
                    let v6 = match a {
                        IpAddr::V4(a) => a.to_ipv6_mapped(),
                        IpAddr::V6(a) => a,
                    };
                    self.0.extend_from_slice(&v6.octets());
                }
            }
        }
    }
}

/// Reads big-endian fields; every read checks the length.
struct Reader<'a> {
    bytes: &'a [u8],
}

fn bad(field: &'static str, problem: &'static str) -> SnapshotError {
    SnapshotError::BadField { field, problem }
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if self.bytes.len() < n {
            return Err(SnapshotError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn flag(&mut self, field: &'static str) -> Result<bool, SnapshotError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(bad(field, "neither 0 nor 1")),
        }
    }
    fn duration(&mut self, field: &'static str) -> Result<Duration, SnapshotError> {
        let secs = self.u64()?;
        let nanos = self.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(bad(field, "nanoseconds not below 10^9"));
        }
        Ok(Duration::new(secs, nanos))
    }
    fn opt<T>(
        &mut self,
        field: &'static str,
        get: impl FnOnce(&mut Self) -> Result<T, SnapshotError>,
    ) -> Result<Option<T>, SnapshotError> {
        if self.flag(field)? {
            get(self).map(Some)
        } else {
            Ok(None)
        }
    }
    fn name(&mut self) -> Result<&'a str, SnapshotError> {
        let n = usize::from(self.u8()?);
        core::str::from_utf8(self.take(n)?).map_err(|_| bad("name", "not UTF-8"))
    }
    fn blob(&mut self) -> Result<&'a [u8], SnapshotError> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
    fn addrs(&mut self, field: &'static str) -> Result<Option<(IpAddr, IpAddr)>, SnapshotError> {
        match self.u8()? {
            0 => Ok(None),
            4 => {
                let s: [u8; 4] = self.array()?;
                let d: [u8; 4] = self.array()?;
                Ok(Some((Ipv4Addr::from(s).into(), Ipv4Addr::from(d).into())))
            }
            6 => {
                let s: [u8; 16] = self.array()?;
                let d: [u8; 16] = self.array()?;
                Ok(Some((Ipv6Addr::from(s).into(), Ipv6Addr::from(d).into())))
            }
            _ => Err(bad(field, "address family neither 0, 4 nor 6")),
        }
    }
}

/// The state part of a snapshot.
struct State {
    seq: u64,
    age: Duration,
    packets: u64,
    bytes: u64,
    drops: [u64; DropReason::ALL.len()],
    raised: u8,
    pending: u8,
    expired: Option<LifetimeLimit>,
    learned_mtu: Option<(u16, Duration)>,
    next_ipv4_ident: u16,
    fragment_id: u32,
    silence: Duration,
    late: [u64; 64],
    window: u32,
    bitmap: Vec<u8>,
}

/// A parsed snapshot: the configuration (keys in wiped buffers) and the state.
struct Parsed {
    config: SaConfig,
    state: State,
}

/// Reads and checks a whole snapshot.
fn parse(bytes: &[u8]) -> Result<Parsed, SnapshotError> {
    let mut r = Reader { bytes };
    if r.bytes.len() < SNAPSHOT_MAGIC.len() {
        return Err(if SNAPSHOT_MAGIC.starts_with(r.bytes) {
            SnapshotError::Truncated
        } else {
            SnapshotError::BadMagic
        });
    }
    if r.take(8)? != SNAPSHOT_MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let version = r.u16()?;
    if !(1..=SNAPSHOT_VERSION).contains(&version) {
        return Err(SnapshotError::UnsupportedVersion(version));
    }
    if r.u16()? != 0 {
        return Err(bad("flags", "reserved, must be 0"));
    }
    let declared = r.u32()?;
    if (declared as usize) > r.bytes.len() {
        return Err(SnapshotError::Truncated);
    }
    if u64::from(declared) != r.bytes.len() as u64 {
        return Err(SnapshotError::BadLength {
            declared: u64::from(declared),
            actual: r.bytes.len() as u64,
        });
    }
    let mut config = parse_config(&mut r)?;
    let state = parse_state(&mut r, &config)?;
    if version >= 2 {
        config.lookup(match r.u8()? {
            0 => SaLookup::Spi,
            1 => SaLookup::SpiProtocol,
            2 => SaLookup::SpiDestination,
            3 => SaLookup::SpiDestinationSource,
            _ => return Err(bad("lookup", "not 0 to 3")),
        });
    }
    if !r.bytes.is_empty() {
        return Err(SnapshotError::BadLength {
            declared: u64::from(declared),
            actual: u64::from(declared) - r.bytes.len() as u64,
        });
    }
    if config.direction == Direction::Inbound {
        config.replay_window = Some(state.window);
    }
    config.seq = state.seq;
    config.check()?;
    Ok(Parsed { config, state })
}

fn parse_config(r: &mut Reader<'_>) -> Result<SaConfig, SnapshotError> {
    let spi = r.u32()?;
    let direction = match r.u8()? {
        1 => Direction::Outbound,
        2 => Direction::Inbound,
        _ => return Err(bad("direction", "neither 1 (outbound) nor 2 (inbound)")),
    };
    let mode = match r.u8()? {
        1 => Mode::Tunnel,
        2 => Mode::Transport,
        _ => return Err(bad("mode", "neither 1 (tunnel) nor 2 (transport)")),
    };
    let cipher = Cipher::from_name(r.name()?)?;
    let integrity = match r.name()? {
        "" => None,
        name => Some(Integrity::from_name(name)?),
    };
    let mut config = SaConfig::new(spi, direction, mode, cipher, r.blob()?);
    let integrity_key = r.blob()?;
    if let Some(i) = integrity {
        config.integrity(i, integrity_key);
    } else if !integrity_key.is_empty() {
        return Err(bad("integrity_key", "given without an integrity algorithm"));
    }
    config.esn(r.flag("esn")?);
    config.tunnel = r.addrs("tunnel")?;
    config.udp_encap = r.opt("udp_encap", |r| Ok((r.u16()?, r.u16()?)))?;
    let mut lifetimes = [Lifetime::NONE; 2];
    for l in &mut lifetimes {
        l.bytes = r.opt("lifetime.bytes", Reader::u64)?;
        l.packets = r.opt("lifetime.packets", Reader::u64)?;
        l.time = r.opt("lifetime.time", |r| r.duration("lifetime.time"))?;
    }
    config.soft_lifetime(lifetimes[0]);
    // The soft limits in a snapshot are the ones the SA drew its jitter for when it was
    // created (`SecurityAssociation::soft_limits`): restored as they are, never drawn again.
    config.soft_lifetime_jitter(0);
    config.hard_lifetime(lifetimes[1]);
    if let Some(n) = r.opt("tfc_pad_to", Reader::u16)? {
        config.tfc_padding(TfcPadding::PadTo(n));
    }
    config.padding(match r.u8()? {
        0 => EspPadding::CipherBlocks,
        1 => EspPadding::Minimal,
        _ => return Err(bad("padding", "neither 0 (blocks) nor 1 (minimal)")),
    });
    config.outer_ttl(r.u8()?);
    config.df(match r.u8()? {
        0 => DfPolicy::Copy,
        1 => DfPolicy::Set,
        2 => DfPolicy::Clear,
        _ => return Err(bad("df", "neither 0 (copy), 1 (set) nor 2 (clear)")),
    });
    config.path_mtu(r.opt("path_mtu", Reader::u16)?);
    config.nat_keepalive_interval(r.opt("nat_keepalive_interval", |r| {
        r.duration("nat_keepalive_interval")
    })?);
    config.nat_original_addresses = r.addrs("nat_original_addresses")?;
    Ok(config)
}

fn parse_state(r: &mut Reader<'_>, config: &SaConfig) -> Result<State, SnapshotError> {
    let seq = r.u64()?;
    let age = r.duration("age")?;
    let packets = r.u64()?;
    let bytes = r.u64()?;
    let n = usize::from(r.u8()?);
    if n > DropReason::ALL.len() {
        return Err(bad("drop counters", "more counters than drop reasons"));
    }
    let mut drops = [0u64; DropReason::ALL.len()];
    for d in drops.iter_mut().take(n) {
        *d = r.u64()?;
    }
    let raised = r.u8()?;
    let pending = r.u8()?;
    if raised >= 1 << 6 || pending & !raised != 0 {
        return Err(bad(
            "events",
            "unknown event bits, or an event pending that was never raised",
        ));
    }
    let expired = match r.u8()? {
        0 => None,
        1 => Some(LifetimeLimit::Bytes),
        2 => Some(LifetimeLimit::Packets),
        3 => Some(LifetimeLimit::Time),
        _ => return Err(bad("expired", "not 0 to 3")),
    };
    if let Some(l) = expired {
        let bit = 8 << (l as u8);
        if raised & bit == 0 {
            return Err(bad("expired", "expired without its event raised"));
        }
    }
    let learned_mtu = r.opt("learned path MTU", |r| {
        Ok((r.u16()?, r.duration("learned path MTU")?))
    })?;
    if learned_mtu.is_some() && config.direction != Direction::Outbound {
        return Err(bad("learned path MTU", "an inbound SA learns no path MTU"));
    }
    let next_ipv4_ident = r.u16()?;
    let fragment_id = r.u32()?;
    let silence = r.duration("silence")?;
    let mut late = [0u64; 64];
    for b in &mut late {
        *b = r.u64()?;
    }
    let window = r.u32()?;
    if config.direction == Direction::Outbound && window != 0 {
        return Err(bad("window size", "an outbound SA has no replay window"));
    }
    ReplayWindow::check_size(window)?;
    let nbytes = (window as usize).div_ceil(8);
    let bitmap = r.take(nbytes)?.to_vec();
    // Bits beyond the window and bits for sequence number 0 or below cannot be set.
    let usable = u64::from(window).min(seq);
    for (i, byte) in bitmap.iter().enumerate() {
        for bit in 0..8u64 {
            let d = i as u64 * 8 + bit;
            if byte & (1 << bit) != 0 && d >= usable {
                return Err(bad(
                    "bitmap",
                    "a bit set beyond the window or below sequence number 1",
                ));
            }
        }
    }
    if config.direction == Direction::Inbound && window != 0 && seq != 0 && bitmap[0] & 1 == 0 {
        return Err(bad("bitmap", "the window's top is not marked received"));
    }
    Ok(State {
        seq,
        age,
        packets,
        bytes,
        drops,
        raised,
        pending,
        expired,
        learned_mtu,
        next_ipv4_ident,
        fragment_id,
        silence,
        late,
        window,
        bitmap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbound() -> SecurityAssociation {
        let mut c = SaConfig::new(
            0x1234,
            Direction::Outbound,
            Mode::Tunnel,
            Cipher::Aes128Gcm,
            &[7u8; 20],
        );
        c.tunnel("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap())
            .seq(41);
        SecurityAssociation::new(c, Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn every_truncation_is_refused_with_a_typed_error() {
        let snap = outbound().snapshot(Duration::from_secs(6));
        let bytes = snap.as_bytes();
        for n in 0..bytes.len() {
            let e =
                SecurityAssociation::restore(&bytes[..n], &RestoreOptions::new(), Duration::ZERO)
                    .unwrap_err();
            assert_eq!(e, SnapshotError::Truncated, "{n}");
        }
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(matches!(
            SaSnapshot::from_bytes(&long),
            Err(SnapshotError::BadLength { .. })
        ));
    }

    #[test]
    fn magic_version_and_flags_are_checked() {
        let snap = outbound().snapshot(Duration::ZERO);
        let mut b = snap.as_bytes().to_vec();
        b[0] ^= 1;
        assert_eq!(
            SaSnapshot::from_bytes(&b).unwrap_err(),
            SnapshotError::BadMagic
        );
        let mut b = snap.as_bytes().to_vec();
        b[9] = 3;
        assert_eq!(
            SaSnapshot::from_bytes(&b).unwrap_err(),
            SnapshotError::UnsupportedVersion(3)
        );
        let mut b = snap.as_bytes().to_vec();
        b[9] = 0;
        assert_eq!(
            SaSnapshot::from_bytes(&b).unwrap_err(),
            SnapshotError::UnsupportedVersion(0)
        );
        let mut b = snap.as_bytes().to_vec();
        b[11] = 1;
        assert!(matches!(
            SaSnapshot::from_bytes(&b).unwrap_err(),
            SnapshotError::BadField { field: "flags", .. }
        ));
        assert_eq!(
            SaSnapshot::from_bytes(b"XY").unwrap_err(),
            SnapshotError::BadMagic
        );
        assert_eq!(
            SaSnapshot::from_bytes(b"IPS").unwrap_err(),
            SnapshotError::Truncated
        );
    }

    #[test]
    fn a_bad_key_length_is_a_config_error_that_quotes_no_key_byte() {
        let snap = outbound().snapshot(Duration::ZERO);
        let mut b = snap.as_bytes().to_vec();
        // spi(4) dir(1) mode(1) cipher name(1 + 11) integrity name(1): then the key length.
        let at = HEADER_LEN + 4 + 2 + 12 + 1;
        assert_eq!(u16::from_be_bytes([b[at], b[at + 1]]), 20);
        b[at + 1] = 19;
        // Keep the body length consistent with one byte less.
        b.remove(at + 2);
        let body = (b.len() - HEADER_LEN) as u32;
        b[12..16].copy_from_slice(&body.to_be_bytes());
        let e = SaSnapshot::from_bytes(&b).unwrap_err();
        assert!(matches!(e, SnapshotError::Config(_)), "{e}");
        assert_eq!(e.to_config_error().key(), "key");
        assert!(!e.to_string().contains("07 07") && !e.to_string().contains("0707"));
    }

    #[test]
    fn the_debug_form_shows_no_key() {
        let snap = outbound().snapshot(Duration::ZERO);
        let text = format!("{snap:?}");
        assert!(
            text.contains("redacted") && text.contains("0x00001234"),
            "{text}"
        );
        assert!(!text.contains("[7, 7"));
    }
}
