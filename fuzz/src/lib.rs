//! Bodies of the `ipsec-core` fuzz targets.
//!
//! The `fuzz_targets/*.rs` binaries are one-liners that call into this library, so that
//! `tests/corpus.rs` can replay every seed as a plain test on stable Rust.
//!
//! * [`esp_decap`]: arbitrary bytes into inbound SAs (every cipher, tunnel and transport,
//!   with and without ESN), plus a valid packet built from the input and then mutated.
//! * [`esp_roundtrip`]: structured IP packets ([`RoundtripInput`]) encrypted and decrypted;
//!   the output must equal the input.
//! * [`spd::policy_parse`] and [`spd::spd_differential`]: the policy file parser and the
//!   compiled SPD against the naive scan.
//! * [`reassembly::reassembly`]: a fragment reassembler driven by coded operations
//!   (raw packets, synthetic fragments, time, expiry, limits), its invariants checked
//!   after every one.
//! * [`control::gateway_control`]: the control plane of two live gateways (SAs added,
//!   rekeyed, deleted and retired, policies installed, replaced and removed) between
//!   packets, against a model of what is installed.
//! * [`snapshot::sa_snapshot`]: untrusted bytes into the SA snapshot parser and restore
//!   (no panic, parser and restore agree, snapshots stable after one restore).
//! * `aead_ipsec_mb::aead_ipsec_mb` (feature `ipsec-mb` only): intel-ipsec-mb's
//!   AES-GCM against RustCrypto's, sealing, opening and refusing tampered input.
//! * [`cbc_burst::cbc_burst`]: AES-CBC + HMAC and AES-GCM bursts (`encrypt_burst` /
//!   `decrypt_burst`, on intel-ipsec-mb with `--features ipsec-mb`) against one packet
//!   at a time, with damaged and replayed packets among them.
//! * [`gateway_burst::gateway_burst`]: `Gateway::inbound_burst` against
//!   `Gateway::inbound` one packet at a time, on ESP of three SAs with damage,
//!   replays, outer fragments and cleartext among it.
//!
//! Keys are those of `tests/interop/scapy_vectors.json`, so the scapy packets of that file
//! are meaningful seeds for `esp_decap` (see `corpus/README.md`).

#[cfg(feature = "ipsec-mb")]
pub mod aead_ipsec_mb;
pub mod cbc_burst;
pub mod control;
pub mod fragmenting;
pub mod gateway_burst;
pub mod reassembly;
pub mod snapshot;
pub mod spd;

use arbitrary::Arbitrary;
use core::time::Duration;
use ipsec_core::crypto::IvSource;
use ipsec_core::packet::{self, IpVersion};
use ipsec_core::sa::TfcPadding;
use ipsec_core::{
    Cipher, Direction, Error, Integrity, Malformed, Mode, PacketBuf, SaConfig, SecurityAssociation,
};
use std::net::IpAddr;

/// One cipher suite the targets exercise.
#[derive(Clone, Copy, Debug)]
pub struct Suite {
    /// Name as in the Python API (`cipher` or `cipher+integrity`).
    pub name: &'static str,
    /// The cipher.
    pub cipher: Cipher,
    /// The cipher key as hex (key || salt for the AEADs and GMAC).
    pub key: &'static str,
    /// The integrity algorithm and its key as hex, for CBC and NULL.
    pub integrity: Option<(Integrity, &'static str)>,
}

const SHA1_KEY: &str = "cb9a8c47a4da88970d86cf40d99f4963d7aeaefa";
const SHA256_KEY: &str = "53a1e15e3f1a44e32e58335fc6f9e5f46531d31e2eeae835078614720cb89caa";
const SHA384_KEY: &str = "db67a3c7fc24967ec07d465cf932f2812e3a8059475b1b64\
                          52df8a142dae6acd3246511859bfa12a95a076c6f2e05b35";

/// The suites, indexed by the low three bits of the selector byte. The keys are the
/// ones of `tests/interop/scapy_vectors.json`.
pub const SUITES: [Suite; 8] = [
    Suite {
        name: "aes-128-gcm",
        cipher: Cipher::Aes128Gcm,
        key: "222ce456a89441399b071152fd9647ebcb3d8edf",
        integrity: None,
    },
    Suite {
        name: "aes-256-gcm",
        cipher: Cipher::Aes256Gcm,
        key: "9c5d000c337434e41dc20e0f2d335155138e60de5ed31b031e916fc09e1780ca494e0968",
        integrity: None,
    },
    Suite {
        name: "chacha20-poly1305",
        cipher: Cipher::ChaCha20Poly1305,
        key: "114885b3bb310434574434e6caf67f59e2fa5134a168c58e85a5c797346d5b1114723a14",
        integrity: None,
    },
    Suite {
        name: "aes-128-gmac",
        cipher: Cipher::Aes128Gmac,
        key: "146393a296aa803346ad55f509d82d8783fbf57c",
        integrity: None,
    },
    Suite {
        name: "aes-256-gmac",
        cipher: Cipher::Aes256Gmac,
        key: "5f483d7a32735bb0b7e24e9f40b9a93d8140bc04b4c45d12df8f4cad94d270010236929c",
        integrity: None,
    },
    Suite {
        name: "aes-128-cbc+hmac-sha256-128",
        cipher: Cipher::Aes128Cbc,
        key: "f7f95b276225f2a682e69b8ffe2cbc2f",
        integrity: Some((Integrity::HmacSha256_128, SHA256_KEY)),
    },
    Suite {
        name: "aes-256-cbc+hmac-sha384-192",
        cipher: Cipher::Aes256Cbc,
        key: "8bbb6129e1ad105685396343ae712638fd67f8df6381339a559fa8398b64515f",
        integrity: Some((Integrity::HmacSha384_192, SHA384_KEY)),
    },
    Suite {
        name: "null+hmac-sha1-96",
        cipher: Cipher::Null,
        key: "",
        integrity: Some((Integrity::HmacSha1_96, SHA1_KEY)),
    },
];

/// The SPI of the SAs that carry packets built by the targets themselves.
pub const SPI: u32 = 0x1000;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("valid hex constant"))
        .collect()
}

/// Deterministic CBC IVs, so that a crashing input reproduces exactly.
struct CounterIv(u128);

impl IvSource for CounterIv {
    fn fill_iv(&mut self, iv: &mut [u8; 16]) {
        self.0 = self
            .0
            .wrapping_add(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        iv.copy_from_slice(&self.0.to_be_bytes());
    }
}

/// Options of one SA, beyond its suite and direction.
#[derive(Clone, Copy, Debug)]
struct SaOpts {
    spi: u32,
    mode: Mode,
    esn: bool,
    seq: u64,
    window: u32,
    tunnel: Option<(IpAddr, IpAddr)>,
    nat_t: bool,
    tfc: Option<u16>,
}

fn make_sa(suite: &Suite, direction: Direction, o: SaOpts) -> SecurityAssociation {
    let key = unhex(suite.key);
    let mut cfg = SaConfig::new(o.spi, direction, o.mode, suite.cipher, &key);
    if let Some((integrity, ikey)) = suite.integrity {
        cfg.integrity(integrity, &unhex(ikey));
    }
    cfg.esn(o.esn).seq(o.seq);
    match direction {
        Direction::Inbound => {
            cfg.replay_window(o.window);
        }
        _ => {
            cfg.iv_source(Box::new(CounterIv(u128::from(o.seq))));
            if let Some((src, dst)) = o.tunnel {
                cfg.tunnel(src, dst);
            }
            if o.nat_t {
                cfg.udp_encap(4500, 4500);
            }
            if let Some(n) = o.tfc {
                cfg.tfc_padding(TfcPadding::PadTo(n));
            }
        }
    }
    SecurityAssociation::new(cfg, Duration::ZERO).expect("the fuzz SA configurations are valid")
}

/// An inbound SA plus the number of `decrypt` calls made on it, so the accounting
/// invariant (every call is a packet or a counted drop) can be checked.
struct Inbound {
    sa: SecurityAssociation,
    calls: u64,
}

impl Inbound {
    /// `decrypt`, with the invariants every call must keep: a failure is a typed error
    /// counted under exactly its own drop reason; a success counts one packet; the
    /// total of packets and drops equals the number of calls.
    fn decrypt(&mut self, pkt: &mut PacketBuf<'_>) -> Result<(), Error> {
        let before = self.sa.stats();
        let res = self.sa.decrypt(pkt, Duration::ZERO);
        self.calls += 1;
        let after = self.sa.stats();
        match res {
            Ok(()) => {
                assert_eq!(after.packets, before.packets + 1, "success not counted");
                assert_eq!(after.bytes, before.bytes + pkt.len() as u64);
                assert_eq!(after.dropped_total(), before.dropped_total());
            }
            Err(e) => {
                let reason = e.drop_reason();
                assert_eq!(
                    after.dropped(reason),
                    before.dropped(reason) + 1,
                    "{e:?} not counted under {reason}"
                );
                assert_eq!(after.dropped_total(), before.dropped_total() + 1);
                assert_eq!(after.packets, before.packets);
                assert!(!e.to_string().is_empty());
                assert!(!matches!(e, Error::WrongDirection));
            }
        }
        assert_eq!(
            after.packets + after.dropped_total(),
            self.calls,
            "a packet was lost without a counter"
        );
        res
    }
}

/// Decrypts `bytes` placed with `head` bytes of headroom and `tail` of tailroom;
/// returns the result and the output window's bytes.
fn decrypt_in_buffer(
    inbound: &mut Inbound,
    bytes: &[u8],
    head: usize,
    tail: usize,
) -> (Result<(), Error>, Vec<u8>) {
    let mut storage = vec![0xa5u8; head + bytes.len() + tail];
    storage[head..head + bytes.len()].copy_from_slice(bytes);
    let mut pkt = PacketBuf::new(&mut storage, head, bytes.len()).expect("in bounds");
    let res = inbound.decrypt(&mut pkt);
    if res.is_err() {
        // A refused packet keeps its descriptor (the caller still owns it).
        assert_eq!((pkt.offset(), pkt.len()), (head, bytes.len()));
    }
    let out = pkt.data().to_vec();
    (res, out)
}

fn tunnel_addrs(v6: bool) -> (IpAddr, IpAddr) {
    if v6 {
        (
            "2001:db8::1".parse().expect("address"),
            "2001:db8::2".parse().expect("address"),
        )
    } else {
        (
            "192.0.2.1".parse().expect("address"),
            "198.51.100.2".parse().expect("address"),
        )
    }
}

/// A minimal IPv4 or IPv6 UDP packet carrying `payload`.
fn udp_packet(v6: bool, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut p = Vec::with_capacity(40 + udp_len);
    if v6 {
        p.extend_from_slice(&[0x60, 0, 0, 0]);
        p.extend_from_slice(&(udp_len as u16).to_be_bytes());
        p.extend_from_slice(&[17, 64]);
        p.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
        p.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
    } else {
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 5, 10, 1, 2, 3]);
        packet::set_ipv4_checksum(&mut p[..20]);
    }
    p.extend_from_slice(&[0x13, 0x88, 0x11, 0x94]);
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    // A valid UDP checksum (IPv6 requires one; after transport-mode ESP in UDP the
    // receiver makes it valid, RFC 3948 §3.1.2).
    with_valid_l4_checksum(&p)
}

/// The oracle's own Internet checksum (RFC 1071), independent of `ipsec_core::packet`.
fn rfc1071(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u64::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u64::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What a receiver's transport-mode NAT-T fix-up (RFC 3948 §3.1.2, without NAT
/// original addresses) leaves of the IP packet `p`: the TCP, UDP or ICMPv6 checksum
/// made valid over the header's own addresses, found after any IPv6 extension headers;
/// a zero UDP checksum over IPv4 and segments too short for a checksum stay as they are.
pub fn with_valid_l4_checksum(p: &[u8]) -> Vec<u8> {
    let mut out = p.to_vec();
    let v6 = p[0] >> 4 == 6;
    let (mut at, mut proto) = if v6 {
        (40, p[6])
    } else {
        (usize::from(p[0] & 0x0f) * 4, p[9])
    };
    while v6 && matches!(proto, 0 | 43 | 44 | 60) {
        if at + 8 > p.len() {
            return out;
        }
        let len = if proto == 44 {
            8
        } else {
            (usize::from(p[at + 1]) + 1) * 8
        };
        proto = p[at];
        at += len;
    }
    let field = match proto {
        6 => 16,
        17 => 6,
        58 if v6 => 2,
        _ => return out,
    };
    if at + field + 2 > p.len() || (!v6 && proto == 17 && p[at + field..at + field + 2] == [0, 0]) {
        return out;
    }
    out[at + field..at + field + 2].fill(0);
    let (addresses, seg) = if v6 {
        (&p[8..40], &out[at..])
    } else {
        (&p[12..20], &out[at..])
    };
    let seg_len = seg.len() as u32;
    let pseudo: Vec<u8> = if v6 {
        let mut v = seg_len.to_be_bytes().to_vec();
        v.extend_from_slice(&[0, 0, 0, proto]);
        v
    } else {
        vec![0, proto, (seg_len >> 8) as u8, seg_len as u8]
    };
    let mut c = rfc1071(&[addresses, &pseudo, seg]);
    if c == 0 && proto == 17 {
        c = 0xffff;
    }
    out[at + field..at + field + 2].copy_from_slice(&c.to_be_bytes());
    out
}

/// Transport mode with ESP in UDP over IPv6: true when a Routing header in front of ESP
/// (within `p[..esp_at]`) has segments left but is too short to name the final
/// destination (type 0 needs at least one address): the sender cannot compute the UDP
/// checksum (RFC 8200 §8.1) and refuses the packet. The builder makes type 0 only.
fn routing_header_without_final_destination(p: &[u8], esp_at: usize) -> bool {
    let (mut at, mut nh) = (40, p[6]);
    while at < esp_at && matches!(nh, 0 | 43 | 44 | 60) {
        let len = if nh == 44 {
            8
        } else {
            (usize::from(p[at + 1]) + 1) * 8
        };
        if nh == 43 && p[at + 3] != 0 && len < 24 {
            return true;
        }
        nh = p[at];
        at += len;
    }
    false
}

/// Fuzz target `esp_decap`.
///
/// Input layout: `sel`, `room`, `spi` (4 bytes), `seq` (8 bytes), then `rest`.
/// * `sel`: bits 0-2 the suite ([`SUITES`]), bit 3 transport mode, bit 4 ESN, bit 5 an
///   IPv6 outer header, bit 6 NAT-T, bit 7 replay window 0 (off) instead of 64.
/// * `room`: headroom (low nibble × 4) and tailroom (high nibble × 4) around the data.
/// * `seq`: the inbound SA's highest received sequence number (low 32 bits without ESN);
///   the outbound SA of the second stage starts there too.
///
/// Stage 1 decrypts `rest` as is, under an SA with the input's `spi`. Stage 2 reaches
/// deep code: `rest[0]` gives the length (low 7 bits) and family (bit 7) of an inner UDP
/// payload taken from `rest[1..]`; that packet is encrypted by a matching outbound SA
/// (SPI [`SPI`]); the remaining bytes are `(position: u16, xor: u8)` triples that mutate
/// the protected packet before it is decrypted. An unmutated packet must decrypt to the
/// original and then be refused as a replay (or accepted again with the window off).
pub fn esp_decap(data: &[u8]) {
    if data.len() < 14 {
        return;
    }
    let sel = data[0];
    let room = data[1];
    let spi = u32::from_be_bytes(data[2..6].try_into().expect("4 bytes")).max(256);
    let raw_seq = u64::from_be_bytes(data[6..14].try_into().expect("8 bytes"));
    let rest = &data[14..];

    let suite = &SUITES[usize::from(sel & 7)];
    let mode = if sel & 0x08 != 0 {
        Mode::Transport
    } else {
        Mode::Tunnel
    };
    let esn = sel & 0x10 != 0;
    let outer_v6 = sel & 0x20 != 0;
    let nat_t = sel & 0x40 != 0;
    let window = if sel & 0x80 != 0 { 0 } else { 64 };
    let seq = if esn {
        raw_seq
    } else {
        raw_seq & u64::from(u32::MAX)
    };
    let head = usize::from(room & 0x0f) * 4;
    let tail = usize::from(room >> 4) * 4;
    let opts = SaOpts {
        spi,
        mode,
        esn,
        seq,
        window,
        tunnel: None,
        nat_t: false,
        tfc: None,
    };

    // Stage 1: the bytes as they are.
    let mut raw = Inbound {
        sa: make_sa(suite, Direction::Inbound, opts),
        calls: 0,
    };
    let (res, _) = decrypt_in_buffer(&mut raw, rest, head, tail);
    if res.is_ok() {
        // The same packet again: a replay unless the window is off.
        let (again, _) = decrypt_in_buffer(&mut raw, rest, head, tail);
        if window != 0 {
            assert!(
                matches!(again, Err(Error::Replayed { .. })),
                "replayed packet accepted: {again:?}"
            );
        }
    }

    // Stage 2: a valid packet built from the input, then mutated.
    let (len_byte, after) = rest.split_first().map_or((0, &[][..]), |(b, a)| (*b, a));
    let plen = usize::from(len_byte & 0x7f).min(after.len());
    let (payload, mutations) = after.split_at(plen);
    let inner = udp_packet(len_byte & 0x80 != 0, payload);
    let out_opts = SaOpts {
        spi: SPI,
        tunnel: (mode == Mode::Tunnel).then(|| tunnel_addrs(outer_v6)),
        nat_t,
        ..opts
    };
    let mut outbound = make_sa(suite, Direction::Outbound, out_opts);
    let limit = if esn { u64::MAX } else { u64::from(u32::MAX) };
    let ohead = outbound.max_headroom() + head;
    let otail = outbound.tailroom_for(inner.len()) + tail;
    let mut storage = vec![0u8; ohead + inner.len() + otail];
    storage[ohead..ohead + inner.len()].copy_from_slice(&inner);
    let mut pkt = PacketBuf::new(&mut storage, ohead, inner.len()).expect("in bounds");
    let enc = outbound.encrypt(&mut pkt, Duration::ZERO);
    if seq >= limit {
        assert_eq!(enc, Err(Error::SequenceOverflow));
        return;
    }
    enc.expect("a valid packet with enough room encrypts");
    assert_eq!(outbound.seq(), seq + 1);
    let protected = pkt.data().to_vec();

    let mut mutated = protected.clone();
    for m in mutations.chunks_exact(3) {
        let pos = usize::from(u16::from_be_bytes([m[0], m[1]])) % mutated.len();
        mutated[pos] ^= m[2];
    }
    let in_opts = SaOpts { spi: SPI, ..opts };
    let mut inbound = Inbound {
        sa: make_sa(suite, Direction::Inbound, in_opts),
        calls: 0,
    };
    let (res, out) = decrypt_in_buffer(&mut inbound, &mutated, head, tail);
    if mutated == protected {
        res.unwrap_or_else(|e| panic!("{}: own packet refused: {e:?}", suite.name));
        assert_eq!(out, inner, "{}: decrypted packet differs", suite.name);
        assert_eq!(inbound.sa.seq(), seq + 1);
        let (again, out) = decrypt_in_buffer(&mut inbound, &protected, head, tail);
        if window == 0 {
            again.expect("no replay protection: accepted again");
            assert_eq!(out, inner);
        } else {
            assert_eq!(again, Err(Error::Replayed { seq: seq + 1 }));
        }
    } else if res.is_ok() {
        // Only unauthenticated bytes (outer header fields) may have changed; the output
        // is still a well-formed IP packet no longer than what came in.
        assert!(out.len() <= mutated.len());
        assert!(packet::parse_ip(&out).is_ok());
    }
}

/// A transport-layer protocol of a generated inner packet.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Proto {
    /// UDP with the given ports.
    Udp,
    /// TCP with the given ports (a 20-byte header).
    Tcp,
    /// ICMP (ICMPv6 for IPv6): echo request.
    Icmp,
    /// Any other protocol number: the payload follows the IP header directly.
    Other(u8),
}

/// An IPv6 extension header of a generated packet.
#[derive(Arbitrary, Clone, Debug)]
pub enum ExtHeader {
    /// Hop-by-Hop options (only placed first; ignored elsewhere).
    HopByHop(Vec<u8>),
    /// Routing header with `segments_left` and data.
    Routing(u8, Vec<u8>),
    /// Destination options.
    DestOpts(Vec<u8>),
    /// Fragment header (an atomic fragment: offset 0, M clear).
    Fragment(u32),
}

/// The inner packet of [`RoundtripInput`].
#[derive(Arbitrary, Clone, Debug)]
pub struct InnerPacket {
    /// IPv6 instead of IPv4.
    pub v6: bool,
    /// The protocol after the IP header (and extension headers).
    pub proto: Proto,
    /// Source port (UDP/TCP).
    pub src_port: u16,
    /// Destination port (UDP/TCP).
    pub dst_port: u16,
    /// DSCP (6 bits are used).
    pub dscp: u8,
    /// ECN (2 bits are used).
    pub ecn: u8,
    /// TTL / hop limit.
    pub ttl: u8,
    /// Source address (the first 4 bytes for IPv4).
    pub src: [u8; 16],
    /// Destination address (the first 4 bytes for IPv4).
    pub dst: [u8; 16],
    /// IPv6 extension headers (at most 6 are used).
    pub ext: Vec<ExtHeader>,
    /// Payload bytes (at most 1500 are used).
    pub payload: Vec<u8>,
}

/// Input of [`esp_roundtrip`].
#[derive(Arbitrary, Clone, Debug)]
pub struct RoundtripInput {
    /// Index into [`SUITES`] (modulo 8).
    pub suite: u8,
    /// Transport instead of tunnel mode.
    pub transport: bool,
    /// ESP in UDP (RFC 3948).
    pub nat_t: bool,
    /// Extended sequence numbers.
    pub esn: bool,
    /// The outbound SA's last used sequence number (low 32 bits without ESN); the
    /// inbound SA's window top.
    pub start_seq: u64,
    /// IPv6 outer header (tunnel mode).
    pub outer_v6: bool,
    /// Mark CE on the outer header in transit (tunnel mode), as a router would.
    pub outer_ce: bool,
    /// TFC padding up to this size (tunnel mode), modulo 2048.
    pub tfc: Option<u16>,
    /// Extra headroom and tailroom.
    pub extra_room: (u8, u8),
    /// The packet.
    pub inner: InnerPacket,
}

fn ext_body(data: &[u8], min: usize) -> Vec<u8> {
    // Total header length must be a multiple of 8: 2 bytes of type/length plus body.
    let body = data.len().clamp(min, 62);
    let total = (2 + body).div_ceil(8) * 8;
    let mut v = data.iter().copied().take(total - 2).collect::<Vec<_>>();
    v.resize(total - 2, 0);
    v
}

/// Builds the IP packet described by `p`.
pub fn build_packet(p: &InnerPacket) -> Vec<u8> {
    let payload = &p.payload[..p.payload.len().min(1500)];
    let tos = (p.dscp << 2) | (p.ecn & 3);
    let (l4_proto, l4) = match p.proto {
        Proto::Udp => {
            let mut h = Vec::with_capacity(8 + payload.len());
            h.extend_from_slice(&p.src_port.to_be_bytes());
            h.extend_from_slice(&p.dst_port.to_be_bytes());
            h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            h.extend_from_slice(&[0, 0]);
            h.extend_from_slice(payload);
            (17, h)
        }
        Proto::Tcp => {
            let mut h = Vec::with_capacity(20 + payload.len());
            h.extend_from_slice(&p.src_port.to_be_bytes());
            h.extend_from_slice(&p.dst_port.to_be_bytes());
            h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xfa, 0xf0, 0, 0, 0, 0]);
            h.extend_from_slice(payload);
            (6, h)
        }
        Proto::Icmp => {
            let mut h = vec![if p.v6 { 128 } else { 8 }, 0, 0, 0, 0, 1, 0, 1];
            h.extend_from_slice(payload);
            (if p.v6 { 58 } else { 1 }, h)
        }
        // IPv6 extension header numbers would make the chain claim a header that is
        // not there; use an experimental protocol number (RFC 3692) instead.
        Proto::Other(0 | 43 | 44 | 60) if p.v6 => (253, payload.to_vec()),
        Proto::Other(n) => (n, payload.to_vec()),
    };
    if p.v6 {
        // Extension headers: Hop-by-Hop only first, at most six in all.
        let exts: Vec<&ExtHeader> = p
            .ext
            .iter()
            .enumerate()
            .filter(|(i, e)| *i == 0 || !matches!(e, ExtHeader::HopByHop(_)))
            .map(|(_, e)| e)
            .take(6)
            .collect();
        let kind = |e: &ExtHeader| match e {
            ExtHeader::HopByHop(_) => 0u8,
            ExtHeader::Routing(..) => 43,
            ExtHeader::DestOpts(_) => 60,
            ExtHeader::Fragment(_) => 44,
        };
        let mut chain = Vec::new();
        for (i, e) in exts.iter().enumerate() {
            let next = exts.get(i + 1).map_or(l4_proto, |n| kind(n));
            match e {
                ExtHeader::HopByHop(d) | ExtHeader::DestOpts(d) => {
                    let body = ext_body(d, 6);
                    chain.extend_from_slice(&[next, ((2 + body.len()) / 8 - 1) as u8]);
                    chain.extend_from_slice(&body);
                }
                ExtHeader::Routing(left, d) => {
                    let mut body = ext_body(d, 6);
                    body[0] = 0; // routing type 0 layout: type, segments left, ...
                    body[1] = *left;
                    chain.extend_from_slice(&[next, ((2 + body.len()) / 8 - 1) as u8]);
                    chain.extend_from_slice(&body);
                }
                ExtHeader::Fragment(id) => {
                    chain.extend_from_slice(&[next, 0, 0, 0]);
                    chain.extend_from_slice(&id.to_be_bytes());
                }
            }
        }
        let first = exts.first().map_or(l4_proto, |e| kind(e));
        let plen = chain.len() + l4.len();
        let mut v = Vec::with_capacity(40 + plen);
        v.extend_from_slice(&[0x60 | (tos >> 4), tos << 4, 0x12, 0x34]);
        v.extend_from_slice(&(plen as u16).to_be_bytes());
        v.extend_from_slice(&[first, p.ttl]);
        v.extend_from_slice(&p.src);
        v.extend_from_slice(&p.dst);
        v.extend_from_slice(&chain);
        v.extend_from_slice(&l4);
        v
    } else {
        let total = 20 + l4.len();
        let mut v = Vec::with_capacity(total);
        v.extend_from_slice(&[0x45, tos]);
        v.extend_from_slice(&(total as u16).to_be_bytes());
        v.extend_from_slice(&[0xbe, 0xef, 0x40, 0, p.ttl, l4_proto, 0, 0]);
        v.extend_from_slice(&p.src[..4]);
        v.extend_from_slice(&p.dst[..4]);
        packet::set_ipv4_checksum(&mut v[..20]);
        v.extend_from_slice(&l4);
        v
    }
}

/// Fuzz target `esp_roundtrip`: builds the packet, encrypts it with an outbound SA and
/// decrypts it with the matching inbound SA. Tunnel mode gives back exactly the inner
/// packet; transport mode exactly the original packet. With `outer_ce` (tunnel mode) a
/// router marks CE on the outer header in transit, and RFC 6040 §4.2 applies: a Not-ECT
/// inner packet is dropped, any other gets CE (DSCP unchanged, IPv4 checksum valid).
pub fn esp_roundtrip(input: &RoundtripInput) {
    let suite = &SUITES[usize::from(input.suite % 8)];
    let mode = if input.transport {
        Mode::Transport
    } else {
        Mode::Tunnel
    };
    let esn = input.esn;
    let seq = if esn {
        input.start_seq
    } else {
        input.start_seq & u64::from(u32::MAX)
    };
    let tunnel = mode == Mode::Tunnel;
    let opts = SaOpts {
        spi: SPI,
        mode,
        esn,
        seq,
        window: 64,
        tunnel: tunnel.then(|| tunnel_addrs(input.outer_v6)),
        nat_t: input.nat_t,
        tfc: input.tfc.filter(|_| tunnel).map(|n| n % 2048),
    };
    let original = build_packet(&input.inner);
    let mut outbound = make_sa(suite, Direction::Outbound, opts);
    let mut inbound = Inbound {
        sa: make_sa(suite, Direction::Inbound, opts),
        calls: 0,
    };

    let head = outbound.max_headroom() + usize::from(input.extra_room.0);
    let tail = outbound.tailroom_for(original.len()) + usize::from(input.extra_room.1);
    let mut storage = vec![0x5au8; head + original.len() + tail];
    storage[head..head + original.len()].copy_from_slice(&original);
    let mut pkt = PacketBuf::new(&mut storage, head, original.len()).expect("in bounds");
    let limit = if esn { u64::MAX } else { u64::from(u32::MAX) };
    if !tunnel && seq < limit {
        // The protocol that would end up in the ESP trailer. Two values cannot make the
        // round trip in transport mode, by the RFCs: 59 means "dummy packet" to the
        // receiver (RFC 4303 §2.6) and 0 (Hop-by-Hop) may only follow an IPv6 header
        // directly. The sender refuses them rather than have the receiver drop them.
        let carried = if input.inner.v6 {
            packet::ipv6_esp_insertion(&original, original.len())
                .expect("the builder makes valid chains")
                .protocol
        } else {
            original[9]
        };
        let refusal = if carried == 59 || carried == 0 {
            Some(Malformed::BadInnerPacket)
        } else if input.nat_t && input.inner.v6 {
            let esp_at = packet::ipv6_esp_insertion(&original, original.len())
                .expect("the builder makes valid chains")
                .offset;
            routing_header_without_final_destination(&original, esp_at)
                .then_some(Malformed::BadExtensionHeader)
        } else {
            None
        };
        if let Some(reason) = refusal {
            let enc = outbound.encrypt(&mut pkt, Duration::ZERO);
            assert_eq!(enc, Err(Error::Malformed(reason)));
            assert_eq!(outbound.stats().dropped_total(), 1);
            assert_eq!(
                pkt.data(),
                &original[..],
                "a refused packet stays as it was"
            );
            return;
        }
    }
    let enc = outbound.encrypt(&mut pkt, Duration::ZERO);
    if seq >= limit {
        assert_eq!(enc, Err(Error::SequenceOverflow));
        assert_eq!(outbound.stats().dropped_total(), 1);
        return;
    }
    enc.unwrap_or_else(|e| panic!("{}/{mode:?}: encrypt failed: {e:?}", suite.name));
    assert_eq!(outbound.stats().packets, 1);
    assert!(pkt.offset() + pkt.len() <= head + original.len() + tail);

    // Transport mode in UDP: the receiver makes the inner checksum valid (RFC 3948
    // §3.1.2); the builder leaves checksums 0 or wrong.
    let mut expected = if !tunnel && input.nat_t {
        with_valid_l4_checksum(&original)
    } else {
        original.clone()
    };
    let mut expected_err = None;
    if tunnel && input.outer_ce {
        let data = pkt.data_mut();
        let outer = packet::parse_ip(data).expect("own outer header parses");
        packet::set_tos(data, outer.version, outer.tos | 3);
        let inner_ecn = input.inner.ecn & 3;
        if inner_ecn == 0 {
            expected_err = Some(Error::Malformed(Malformed::EcnCeOnNotEct));
        } else {
            let version = if input.inner.v6 {
                IpVersion::V6
            } else {
                IpVersion::V4
            };
            let tos = (input.inner.dscp << 2) | 3;
            if input.inner.v6 {
                packet::set_tos(&mut expected, version, tos);
            } else {
                expected[1] = tos;
                packet::set_ipv4_checksum(&mut expected[..20]);
            }
        }
    }

    let res = inbound.decrypt(&mut pkt);
    match expected_err {
        Some(e) => assert_eq!(res, Err(e)),
        None => {
            res.unwrap_or_else(|e| panic!("{}/{mode:?}: decrypt failed: {e:?}", suite.name));
            let out = pkt.data();
            if tunnel && input.outer_ce && !input.inner.v6 {
                // The checksum may differ only in its encoding (RFC 1624 incremental
                // update); it must verify.
                assert!(packet::ipv4_checksum_ok(&out[..20]), "bad IPv4 checksum");
                assert_eq!(out[..10], expected[..10]);
                assert_eq!(out[12..], expected[12..]);
            } else {
                assert_eq!(out, &expected[..]);
            }
            assert_eq!(inbound.sa.stats().packets, 1);
            assert_eq!(inbound.sa.seq(), seq + 1);
        }
    }
}
