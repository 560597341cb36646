//! # ipsec-core: an embeddable IPsec data plane
//!
//! The packet path of IPsec, without I/O: security associations with their keys,
//! sequence numbers, lifetimes and counters ([`SecurityAssociation`]), the RFC 4303
//! anti-replay window with ESN inference ([`ReplayWindow`]) and the ESP transforms in
//! tunnel and transport mode, IPv4 and IPv6, with NAT traversal (RFC 3948: ESP in
//! UDP, NAT-keepalives the caller polls for, the transport-mode checksum fix-up:
//! [`nat`]). Packets that do not fit the path MTU are fragmented or refused
//! ([`path_mtu`]); ESP packets fragmented on the path are put back together by a
//! bounded [`Reassembler`] first.
//!
//! The library opens no sockets, starts no threads and reads no clock: every call that
//! depends on time takes `now` from the caller, so a gateway, a test tool and a
//! simulation all drive it the same way.
//!
//! Packets are transformed **in place** in caller-owned buffers ([`PacketBuf`]): the
//! ESP header and outer IP header go into the headroom in front of the packet, the
//! trailer and ICV into the tailroom behind it, and the payload is encrypted where it
//! lies. No heap allocation happens per packet. A burst call processes many packets
//! under one key schedule and reports a result per packet.
//!
//! ```
//! use ipsec_core::{Cipher, Direction, Mode, PacketBuf, SaConfig, SecurityAssociation};
//! use std::time::Duration;
//!
//! let key = [0x11u8; 20]; // AES-128 key || 4-byte salt (RFC 4106 §8.1)
//! let mut out_cfg = SaConfig::new(0x1000, Direction::Outbound, Mode::Tunnel, Cipher::Aes128Gcm, &key);
//! out_cfg.tunnel("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
//! let mut outbound = SecurityAssociation::new(out_cfg, Duration::ZERO).unwrap();
//! let in_cfg = SaConfig::new(0x1000, Direction::Inbound, Mode::Tunnel, Cipher::Aes128Gcm, &key);
//! let mut inbound = SecurityAssociation::new(in_cfg, Duration::ZERO).unwrap();
//!
//! // A minimal IPv4/UDP packet, placed with headroom and tailroom around it.
//! let inner: [u8; 28] = [
//!     0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 1, 0, 1, // IPv4
//!     0x13, 0x88, 0x13, 0x88, 0, 8, 0, 0, // UDP
//! ];
//! let mut storage = [0u8; 256];
//! storage[128..156].copy_from_slice(&inner);
//! let mut pkt = PacketBuf::new(&mut storage, 128, inner.len()).unwrap();
//! outbound.encrypt(&mut pkt, Duration::ZERO).unwrap();
//! assert_eq!(pkt.data()[9], 50); // outer IPv4 protocol: ESP
//! inbound.decrypt(&mut pkt, Duration::ZERO).unwrap();
//! // The inner packet comes back (the checksum was fixed on the way in).
//! assert_eq!(&pkt.data()[12..], &inner[12..]);
//! assert_eq!(inbound.stats().packets, 1);
//! ```
//!
//! ## Cargo features
//!
//! - `ring` (default): ring carries the AEADs (AES-GCM, AES-GMAC, ChaCha20-Poly1305);
//!   without it the pure-Rust RustCrypto crates do. CBC and HMAC are always
//!   RustCrypto's.
//! - `ipsec-mb` (off by default): AES-128/256-GCM and AES-128/256-GMAC run on Intel's
//!   intel-ipsec-mb library (its one-call GCM functions with precomputed key data),
//!   through a small C shim that `build.rs` compiles with the `cc` crate; the rest stays
//!   as above. It needs intel-ipsec-mb 1.x at build and run time (Debian/Ubuntu:
//!   `apt-get install libipsec-mb-dev`; `IPSEC_MB_INCLUDE_DIR` / `IPSEC_MB_LIB_DIR` for
//!   other places) and fails the build with a message saying so when it is missing.
//!   Enable it with `cargo build --features ipsec-core/ipsec-mb` (or `ipsec-cli`'s
//!   `ipsec-mb` feature); [`crypto::aead_backend`] names each cipher's backend. An
//!   AES-GCM SA then keeps the library's 1,008-byte key data (zeroed on drop) instead
//!   of ring's 544 bytes, or both where large payloads go to ring (a CPU with VAES on
//!   which the library does not run its AVX-512 code). The default build is portable
//!   Rust (plus ring's assembly) and does not change.
//!
//! ## Unsafe code
//!
//! Four modules hold audited `unsafe` blocks: `crypto::wipe`, a box that zeroes a
//! backend's key schedule after dropping it (ring keeps keys in plain structs),
//! `crypto::one_store`, one 16-byte SSE2 store that writes a nonce or AAD the way the
//! backends' wide loads can be forwarded from, `spd::prefetch`, the cache-line
//! prefetch of the SPD's burst lookups, and `spd::huge`, the `madvise` that asks Linux
//! for huge pages under a large compiled SPD. With
//! the `ipsec-mb` feature, `crypto::ipsec_mb` adds the FFI calls into its C shim, each
//! with its justification, behind safe functions that check lengths first. Every other
//! module is checked by `deny(unsafe_code)`.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod buffer;
pub mod control;
pub mod crypto;
pub mod error;
pub mod esp;
mod fragment;
pub mod fragment_policy;
pub mod gateway;
pub mod icmp;
pub mod nat;
pub mod packet;
pub mod path_mtu;
pub mod reassembly;
pub mod replay;
pub mod sa;
pub mod sa_file;
pub mod sa_set;
mod sad;
pub mod secret;
pub mod shared;
pub mod snapshot;
pub mod spd;
pub mod spi;

pub use buffer::{PacketBuf, SpareBuffers};
pub use control::{CompiledPolicies, ControlError, LaneRefused, PolicyEdit, RetiredPolicies};
pub use crypto::{Cipher, Integrity};
pub use error::{ConfigError, DropReason, Error, FragmentError, LifetimeLimit, Malformed};
pub use fragment_policy::FragmentLimits;
pub use gateway::Gateway;
pub use nat::NAT_KEEPALIVE_MAX_LEN;
pub use reassembly::{Reassembler, Reassembly, ReassemblyLimits};
pub use replay::{LateHistogram, ReplayWindow};
pub use sa::{
    DfPolicy, Direction, EspPadding, Lifetime, Mode, SaConfig, SaEvent, SaLookup, SaStats,
    SecurityAssociation, TfcPadding,
};
pub use shared::{SaLane, SharedSa, SharedSaOptions};
pub use snapshot::{RestoreOptions, SaSnapshot, SnapshotError};
pub use spd::{
    Action, Decision, Flow, Fragment, FragmentDecision, Policy, PolicyDirection, Spd, SpdCache,
};
pub use spi::{SpiAllocator, SpiError};
