//! Helpers shared by the integration tests: hex, packet builders, buffer handling,
//! a fixed CBC IV source, SA constructors, reference HMACs, and the gateway burst
//! tests' comparison of bursts with single calls.
#![allow(dead_code)]

use core::time::Duration;
use std::net::IpAddr;

use hmac::{KeyInit, Mac};
use ipsec_core::crypto::IvSource;
use ipsec_core::{
    Cipher, Direction, DropReason, Error, Integrity, Mode, PacketBuf, SaConfig, SecurityAssociation,
};

/// Time zero: the tests do not depend on the clock unless they say so.
pub(crate) const T0: Duration = Duration::ZERO;

/// Headroom and tailroom around every packet the helpers encrypt.
pub(crate) const ROOM: usize = 512;

/// Decodes lowercase or uppercase hex (panics on bad input: test data only).
pub(crate) fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd-length hex {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// Encodes bytes as lowercase hex.
pub(crate) fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The RFC 1071 checksum of `data`.
pub(crate) fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// True when `segment` (a TCP, UDP or ICMPv6 header and its data) carries a checksum
/// that verifies over the pseudo-header of `src` and `dst` (4 or 16 bytes each: the
/// IPv4 pseudo-header of RFC 768/793 or the IPv6 one of RFC 8200 §8.1) and `proto`.
pub(crate) fn l4_checksum_ok(src: &[u8], dst: &[u8], proto: u8, segment: &[u8]) -> bool {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(src);
    pseudo.extend_from_slice(dst);
    if src.len() == 4 {
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    } else {
        pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto]);
    }
    pseudo.extend_from_slice(segment);
    checksum(&pseudo) == 0
}

/// Recomputes the checksum of the IPv4 header at the start of `pkt`.
pub(crate) fn fix_ipv4_checksum(pkt: &mut [u8]) {
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    pkt[10] = 0;
    pkt[11] = 0;
    let c = checksum(&pkt[..ihl]);
    pkt[10..12].copy_from_slice(&c.to_be_bytes());
}

/// True when the IPv4 header at the start of `pkt` has a valid checksum.
pub(crate) fn ipv4_checksum_ok(pkt: &[u8]) -> bool {
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    checksum(&pkt[..ihl]) == 0
}

/// An IPv4 packet `src -> dst` with protocol `proto`, TOS `tos` and `payload`.
pub(crate) fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, tos: u8, payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[1] = tos;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0x1c46u16.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 61;
    p[9] = proto;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    fix_ipv4_checksum(&mut p);
    p.extend_from_slice(payload);
    p
}

/// An IPv6 packet with next header `nh`, traffic class `tc` and `payload` (which holds
/// any extension headers).
pub(crate) fn ipv6(nh: u8, tc: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60 | (tc >> 4);
    p[1] = (tc << 4) | 0x0a; // flow label 0xabcde
    p[2] = 0xbc;
    p[3] = 0xde;
    p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    p[6] = nh;
    p[7] = 55;
    let src: std::net::Ipv6Addr = "2001:db8:1::5".parse().expect("addr");
    let dst: std::net::Ipv6Addr = "2001:db8:2::3".parse().expect("addr");
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// A UDP datagram (checksum left 0) with `n` bytes of payload.
pub(crate) fn udp(sport: u16, dport: u16, n: usize) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + n) as u16).to_be_bytes());
    u.extend((0..n).map(|i| (i * 7 + 3) as u8));
    u
}

/// An IPv4 UDP packet 10.0.0.5 -> 10.1.2.3 with `n` bytes of payload and TOS `tos`.
pub(crate) fn inner_v4(n: usize, tos: u8) -> Vec<u8> {
    ipv4([10, 0, 0, 5], [10, 1, 2, 3], 17, tos, &udp(5000, 53, n))
}

/// An IPv6 UDP packet 2001:db8:1::5 -> 2001:db8:2::3 with `n` bytes of payload and a
/// valid UDP checksum (IPv6 requires one).
pub(crate) fn inner_v6(n: usize, tc: u8) -> Vec<u8> {
    let mut p = ipv6(17, tc, &udp(5000, 53, n));
    set_l4_checksum(&mut p, 40, 6);
    p
}

/// Writes the checksum at `at + field` of the segment at `p[at..]` (TCP 16, UDP 6,
/// ICMPv6 2) over the pseudo-header of the IPv4 or IPv6 packet `p` and its protocol
/// byte (`p[9]`, or `p[6]` for IPv6 without extension headers).
pub(crate) fn set_l4_checksum(p: &mut [u8], at: usize, field: usize) {
    p[at + field..at + field + 2].fill(0);
    let v6 = p[0] >> 4 == 6;
    let (src, dst, proto) = if v6 {
        (&p[8..24], &p[24..40], p[6])
    } else {
        (&p[12..16], &p[16..20], p[9])
    };
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(src);
    pseudo.extend_from_slice(dst);
    let seg = &p[at..];
    if v6 {
        pseudo.extend_from_slice(&(seg.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto]);
    } else {
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    }
    pseudo.extend_from_slice(seg);
    let mut c = checksum(&pseudo);
    if c == 0 && proto == 17 {
        c = 0xffff;
    }
    p[at + field..at + field + 2].copy_from_slice(&c.to_be_bytes());
}

/// A CBC IV source that always returns the same IV.
#[derive(Debug)]
pub(crate) struct FixedIv(pub(crate) [u8; 16]);

impl IvSource for FixedIv {
    fn fill_iv(&mut self, iv: &mut [u8; 16]) {
        *iv = self.0;
    }
}

/// The (cipher, integrity) pairs the design allows.
pub(crate) fn all_suites() -> Vec<(Cipher, Option<Integrity>)> {
    let mut v: Vec<(Cipher, Option<Integrity>)> = [
        Cipher::Aes128Gcm,
        Cipher::Aes256Gcm,
        Cipher::ChaCha20Poly1305,
        Cipher::Aes128Gmac,
        Cipher::Aes256Gmac,
    ]
    .into_iter()
    .map(|c| (c, None))
    .collect();
    for c in [Cipher::Aes128Cbc, Cipher::Aes256Cbc, Cipher::Null] {
        for i in Integrity::ALL {
            v.push((c, Some(i)));
        }
    }
    v
}

/// A deterministic key of the cipher's length (salt included).
pub(crate) fn key_for(c: Cipher) -> Vec<u8> {
    (0..c.key_len())
        .map(|i| (i as u8).wrapping_mul(13) ^ 0x5a)
        .collect()
}

/// A deterministic key of the integrity algorithm's length.
pub(crate) fn integ_key_for(i: Integrity) -> Vec<u8> {
    (0..i.key_len())
        .map(|k| (k as u8).wrapping_mul(29) ^ 0xa5)
        .collect()
}

/// A configuration with the suite's deterministic keys.
pub(crate) fn config(
    spi: u32,
    dir: Direction,
    mode: Mode,
    suite: (Cipher, Option<Integrity>),
) -> SaConfig {
    let mut cfg = SaConfig::new(spi, dir, mode, suite.0, &key_for(suite.0));
    if let Some(i) = suite.1 {
        cfg.integrity(i, &integ_key_for(i));
    }
    cfg
}

/// An outbound/inbound pair in `mode` (tunnel: IPv4 endpoints 192.0.2.1 -> 198.51.100.2).
pub(crate) fn pair(
    spi: u32,
    mode: Mode,
    suite: (Cipher, Option<Integrity>),
) -> (SecurityAssociation, SecurityAssociation) {
    let mut out = config(spi, Direction::Outbound, mode, suite);
    if mode == Mode::Tunnel {
        out.tunnel(
            "192.0.2.1".parse::<IpAddr>().expect("addr"),
            "198.51.100.2".parse::<IpAddr>().expect("addr"),
        );
    }
    let inb = config(spi, Direction::Inbound, mode, suite);
    (
        SecurityAssociation::new(out, T0).expect("outbound SA"),
        SecurityAssociation::new(inb, T0).expect("inbound SA"),
    )
}

/// Encrypts `pkt` with `ROOM` bytes of headroom and tailroom; returns the protected packet.
pub(crate) fn encrypt(sa: &mut SecurityAssociation, pkt: &[u8]) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; ROOM + pkt.len() + ROOM];
    buf[ROOM..ROOM + pkt.len()].copy_from_slice(pkt);
    let mut p = PacketBuf::new(&mut buf, ROOM, pkt.len())?;
    sa.encrypt(&mut p, T0)?;
    Ok(p.data().to_vec())
}

/// Decrypts `pkt` (placed at offset 16 of a buffer with no tailroom); returns the result.
pub(crate) fn decrypt(sa: &mut SecurityAssociation, pkt: &[u8]) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; 16 + pkt.len()];
    buf[16..].copy_from_slice(pkt);
    let mut p = PacketBuf::new(&mut buf, 16, pkt.len())?;
    sa.decrypt(&mut p, T0)?;
    Ok(p.data().to_vec())
}

/// The drop counters of `sa`, in `DropReason::ALL` order.
pub(crate) fn drops(sa: &SecurityAssociation) -> Vec<u64> {
    DropReason::ALL
        .iter()
        .map(|r| sa.stats().dropped(*r))
        .collect()
}

/// Checks that exactly `reason` went up by one between `before` and now, and nothing else.
pub(crate) fn assert_one_drop(
    sa: &SecurityAssociation,
    before: &[u64],
    reason: DropReason,
    what: &str,
) {
    let after = drops(sa);
    for (i, r) in DropReason::ALL.iter().enumerate() {
        let want = before[i] + u64::from(*r == reason);
        assert_eq!(
            after[i], want,
            "{what}: counter {r} is {} (was {}), expected only {reason} to grow by one",
            after[i], before[i]
        );
    }
}

/// HMAC of `data` under `key` with the hash of `alg`, truncated to the ICV length.
pub(crate) fn hmac_trunc(alg: Integrity, key: &[u8], data: &[u8]) -> Vec<u8> {
    fn run<M: Mac + KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut m = <M as KeyInit>::new_from_slice(key).expect("any key length");
        m.update(data);
        m.finalize().into_bytes().to_vec()
    }
    let full = match alg {
        Integrity::HmacSha1_96 => run::<hmac::Hmac<sha1::Sha1>>(key, data),
        Integrity::HmacSha256_128 => run::<hmac::Hmac<sha2::Sha256>>(key, data),
        Integrity::HmacSha384_192 => run::<hmac::Hmac<sha2::Sha384>>(key, data),
        Integrity::HmacSha512_256 => run::<hmac::Hmac<sha2::Sha512>>(key, data),
        other => panic!("no reference HMAC for {other:?}"),
    };
    full[..alg.icv_len()].to_vec()
}

/// The full (untruncated) HMAC of `data` under `key`, hash named as in Python `hashlib`.
pub(crate) fn hmac_full(hash: &str, key: &[u8], data: &[u8]) -> Vec<u8> {
    fn run<M: Mac + KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
        let mut m = <M as KeyInit>::new_from_slice(key).expect("any key length");
        m.update(data);
        m.finalize().into_bytes().to_vec()
    }
    match hash {
        "sha1" => run::<hmac::Hmac<sha1::Sha1>>(key, data),
        "sha256" => run::<hmac::Hmac<sha2::Sha256>>(key, data),
        "sha384" => run::<hmac::Hmac<sha2::Sha384>>(key, data),
        "sha512" => run::<hmac::Hmac<sha2::Sha512>>(key, data),
        other => panic!("unknown hash {other}"),
    }
}

/// Headroom and tailroom around every packet of the burst tests (`cbc_burst`,
/// `gcm_burst`).
pub(crate) const BURST_ROOM: usize = 192;

/// `plains[i]` in a buffer with [`BURST_ROOM`] around it.
pub(crate) fn burst_buffers(plains: &[Vec<u8>]) -> Vec<Vec<u8>> {
    plains
        .iter()
        .map(|p| {
            let mut b = vec![0u8; BURST_ROOM + p.len() + BURST_ROOM];
            b[BURST_ROOM..BURST_ROOM + p.len()].copy_from_slice(p);
            b
        })
        .collect()
}

/// `plains` encrypted as one burst by one SA and one packet at a time by its twin.
pub(crate) struct BurstAndSingle {
    /// Each packet's outcome in the burst: its bytes, or the error.
    pub(crate) burst: Vec<Result<Vec<u8>, Error>>,
    /// The same one packet at a time.
    pub(crate) single: Vec<Result<Vec<u8>, Error>>,
    /// The whole buffers of the burst (refused packets' included) and of the singles.
    pub(crate) burst_bufs: Vec<Vec<u8>>,
    pub(crate) single_bufs: Vec<Vec<u8>>,
    /// What `encrypt_burst` returned.
    pub(crate) ok: usize,
}

/// Encrypts `plains` (each in a [`burst_buffers`] buffer) as one burst with `burst_sa`
/// and one at a time with `single_sa`, at [`T0`].
pub(crate) fn encrypt_burst_and_single(
    burst_sa: &mut SecurityAssociation,
    single_sa: &mut SecurityAssociation,
    plains: &[Vec<u8>],
) -> BurstAndSingle {
    let mut burst_bufs = burst_buffers(plains);
    let mut pkts: Vec<PacketBuf<'_>> = burst_bufs
        .iter_mut()
        .zip(plains)
        .map(|(b, p)| PacketBuf::new(b, BURST_ROOM, p.len()).expect("buf"))
        .collect();
    let mut res = vec![Ok(()); plains.len()];
    let ok = burst_sa.encrypt_burst(&mut pkts, &mut res, T0);
    let burst: Vec<Result<Vec<u8>, Error>> = pkts
        .iter()
        .zip(&res)
        .map(|(p, r)| (*r).map(|()| p.data().to_vec()))
        .collect();
    drop(pkts);
    let mut single_bufs = burst_buffers(plains);
    let single = single_bufs
        .iter_mut()
        .zip(plains)
        .map(|(b, p)| {
            let mut pkt = PacketBuf::new(b, BURST_ROOM, p.len()).expect("buf");
            single_sa
                .encrypt(&mut pkt, T0)
                .map(|()| pkt.data().to_vec())
        })
        .collect();
    BurstAndSingle {
        burst,
        single,
        burst_bufs,
        single_bufs,
        ok,
    }
}

/// One packet's decrypt outcome and the window it is left with (offset, length).
pub(crate) type Opened = (Result<(), Error>, (usize, usize));

/// Decrypts each of `bufs` (a whole ESP packet each) one at a time with `sa` at [`T0`].
pub(crate) fn decrypt_one_at_a_time(
    sa: &mut SecurityAssociation,
    bufs: &mut [Vec<u8>],
) -> Vec<Opened> {
    bufs.iter_mut()
        .map(|b| {
            let n = b.len();
            let mut p = PacketBuf::new(b, 0, n).expect("buf");
            let r = sa.decrypt(&mut p, T0);
            (r, (p.offset(), p.len()))
        })
        .collect()
}

/// Asserts that a decrypt burst (`res`, `windows`, `ok`, its buffers `burst_bufs`)
/// gave what one packet at a time gave (`single`, `single_bufs`): every result, window
/// and byte, and the count of successes.
pub(crate) fn assert_same_decrypts(
    what: &str,
    res: &[Result<(), Error>],
    windows: &[(usize, usize)],
    ok: usize,
    burst_bufs: &[Vec<u8>],
    single: &[Opened],
    single_bufs: &[Vec<u8>],
) {
    for (i, r) in single.iter().enumerate() {
        assert_eq!(res[i], r.0, "{what}: packet {i} result");
        assert_eq!(windows[i], r.1, "{what}: packet {i} window");
        assert!(burst_bufs[i] == single_bufs[i], "{what}: packet {i} bytes");
    }
    assert_eq!(ok, single.iter().filter(|r| r.0.is_ok()).count(), "{what}");
}

/// CBC IVs from a counter that changes with every packet, so that two SAs given the
/// same start draw the same IVs, and a burst drawing them in another order than one
/// packet at a time would show.
#[derive(Debug)]
pub(crate) struct CountingIv(pub(crate) u128);

impl IvSource for CountingIv {
    fn fill_iv(&mut self, iv: &mut [u8; 16]) {
        self.0 = self
            .0
            .wrapping_add(0x0101_0101_0101_0101_0101_0101_0101_0103);
        *iv = self.0.to_be_bytes();
    }
}

/// A deterministic generator (xorshift) for the burst tests' packet mixes.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    /// A number below `n`.
    pub(crate) fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// What one packet of a gateway burst test came to: the verdict (or error) and the
/// bytes in its window.
pub(crate) type BurstOutcome = (Result<ipsec_core::gateway::BurstVerdict, Error>, Vec<u8>);

/// Headroom in front of, and the size of, every buffer of the gateway burst tests.
const BURST_HEAD: usize = 128;
const BURST_SLOT: usize = 2048;

/// The gateway's counters, every SA's (by name), and the SPD cache's room and lookups.
/// (Its hits and misses apart depend on which flows share a set, which the cache's
/// random seed decides, so two gateways fed alike differ there; their sum is the number
/// of packets that asked the cache.)
pub(crate) fn gateway_counters(
    gw: &ipsec_core::Gateway,
) -> (
    ipsec_core::SaStats,
    Vec<(String, ipsec_core::SaStats)>,
    (usize, u64),
) {
    let mut sas: Vec<(String, ipsec_core::SaStats)> =
        gw.sas().map(|(n, sa)| (n.to_owned(), sa.stats())).collect();
    sas.sort_by(|a, b| a.0.cmp(&b.0));
    let (room, hits, misses) = gw.spd_cache_stats();
    (*gw.stats(), sas, (room, hits + misses))
}

/// Each packet through `gw` by itself (`one` is `Gateway::outbound` or
/// `Gateway::inbound` with its verdict mapped to a `BurstVerdict`).
pub(crate) fn gateway_one_at_a_time(
    gw: &mut ipsec_core::Gateway,
    packets: &[Vec<u8>],
    mut one: impl FnMut(
        &mut ipsec_core::Gateway,
        &mut PacketBuf<'_>,
    ) -> Result<ipsec_core::gateway::BurstVerdict, Error>,
) -> Vec<BurstOutcome> {
    packets
        .iter()
        .map(|pkt| {
            let mut buf = vec![0u8; BURST_SLOT];
            buf[BURST_HEAD..BURST_HEAD + pkt.len()].copy_from_slice(pkt);
            let mut p = PacketBuf::new(&mut buf, BURST_HEAD, pkt.len()).expect("in bounds");
            let verdict = one(gw, &mut p);
            (verdict, p.data().to_vec())
        })
        .collect()
}

/// The packets through `gw` in bursts of `burst` (`many` is `Gateway::outbound_burst`
/// or `Gateway::inbound_burst`), each burst's count of packets not dropped checked.
pub(crate) fn gateway_in_bursts(
    gw: &mut ipsec_core::Gateway,
    packets: &[Vec<u8>],
    burst: usize,
    mut many: impl FnMut(
        &mut ipsec_core::Gateway,
        &mut [PacketBuf<'_>],
        &mut [Result<ipsec_core::gateway::BurstVerdict, Error>],
    ) -> usize,
) -> Vec<BurstOutcome> {
    let mut out = Vec::new();
    for chunk in packets.chunks(burst) {
        let mut store = vec![0u8; BURST_SLOT * chunk.len()];
        let mut bufs: Vec<PacketBuf<'_>> = store
            .chunks_mut(BURST_SLOT)
            .zip(chunk)
            .map(|(s, pkt)| {
                s[BURST_HEAD..BURST_HEAD + pkt.len()].copy_from_slice(pkt);
                PacketBuf::new(s, BURST_HEAD, pkt.len()).expect("in bounds")
            })
            .collect();
        let mut results = vec![Err(Error::WrongDirection); chunk.len()];
        let ok = many(gw, &mut bufs, &mut results);
        assert_eq!(ok, results.iter().filter(|r| r.is_ok()).count());
        assert!(
            !results.contains(&Err(Error::WrongDirection)),
            "every result written"
        );
        out.extend(
            results
                .into_iter()
                .zip(bufs.iter().map(|b| b.data().to_vec())),
        );
    }
    out
}
