//! The gateway's inbound bursts against one packet at a time.
//!
//! `Gateway::inbound_burst` hands each run of consecutive plain ESP packets (IPv4
//! without options, IPv6 without extension headers) for one SA to that SA's burst code
//! (with each packet's policy check) and everything else to `Gateway::inbound`. This
//! target builds what a gateway receives from its peers (ESP for four SAs: AES-128-GCM,
//! AES-128-CBC + HMAC-SHA-256-128, a short-lived AES-256-GCM one, and AES-128-CBC +
//! HMAC-SHA-256-128 carrying IPv6 in IPv6; inner packets inside and outside each SA's
//! policy; bits flipped anywhere,
//! replays, ESP in two outer fragments, unknown SPIs, cleartext) and feeds it to two
//! identical gateways, one in bursts of a size the input chooses, the other one packet
//! at a time: every result, every byte of every buffer and every counter (the
//! gateway's, each SA's, the SPD cache's) must agree.
//!
//! Input layout (raw bytes; missing bytes read as zeros):
//!
//! | bytes | meaning |
//! | --- | --- |
//! | 0 | burst size: 1 + (byte % 40) |
//! | 1 | bit 0: SPD cache on (64 flows) |
//! | 2.. | per packet, 3 bytes: kind (% 10: 0-2 ESP of SA kind from its network, 3 ESP of the IPv6 SA from its network or, when `b` is odd, from outside its policy, 4 ESP of the GCM SA from another SA's network, 5 a copy of an earlier packet with a bit flipped at position `a`/`b`, 6 a replay of an earlier packet, 7 ESP in two outer fragments, 8 an unknown SPI, 9 cleartext to port `a`), `a`, `b` (inner length 28 + a + 256 * (b % 4)) |

use core::time::Duration;
use std::net::IpAddr;

use ipsec_core::gateway::{BurstVerdict, Inbound};
use ipsec_core::{
    Cipher, Direction, Error, Gateway, Integrity, Lifetime, Mode, PacketBuf, SaConfig,
    SecurityAssociation, Spd,
};

const HEAD: usize = 128;
const SLOT: usize = 2048;
/// Packets per input at most (3 bytes each after the 2-byte header).
const MAX_PACKETS: usize = 120;

fn addr(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// SA `k`'s configuration for `direction` (the sender's outbound, the gateway's inbound).
fn config(k: usize, direction: Direction) -> SaConfig {
    let (spi, cipher, key): (u32, Cipher, Vec<u8>) = match k {
        0 => (0x2000, Cipher::Aes128Gcm, vec![1; 20]),
        1 => (0x2001, Cipher::Aes128Cbc, vec![3; 16]),
        2 => (0x2002, Cipher::Aes256Gcm, vec![2; 36]),
        _ => (0x2003, Cipher::Aes128Cbc, vec![5; 16]),
    };
    let mut c = SaConfig::new(spi, direction, Mode::Tunnel, cipher, &key);
    let integrity_key = match k {
        1 => Some([4; 32]),
        V6 => Some([6; 32]),
        _ => None,
    };
    if let Some(ikey) = integrity_key {
        c.integrity(Integrity::HmacSha256_128, &ikey);
    }
    if direction == Direction::Outbound && k == V6 {
        c.tunnel(addr("2001:db8:ff::2"), addr("2001:db8:ff::1"));
    } else if direction == Direction::Outbound {
        c.tunnel(addr("198.51.100.2"), addr("192.0.2.1"));
    } else if k == 2 {
        c.hard_lifetime(Lifetime::NONE.with_packets(12));
    }
    c
}

/// The SA (`config`'s `k`) that carries IPv6 in IPv6.
const V6: usize = 3;

/// The receiving gateway: inbound SA `k` serves the policy of network 10.(k+1).0.0/16
/// (the IPv6 SA 2001:db8:4::/48), IKE from port 500 is bypassed, the rest discarded.
fn gateway(cache: bool) -> Gateway {
    let spd = Spd::from_toml("[[policy]]\nname = \"deny\"\naction = \"discard\"\n").expect("spd");
    let mut gw = Gateway::new(spd, Duration::ZERO).expect("gateway");
    for (k, name) in ["gcm", "cbc", "short", "cbc6"].iter().enumerate() {
        gw.add_sa(name, config(k, Direction::Inbound), Duration::ZERO)
            .expect("sa");
        let remote = if k == V6 {
            "2001:db8:4::/48".to_string()
        } else {
            format!("10.{}.0.0/16", k + 1)
        };
        let policy = format!(
            "name = \"from-{name}\"\ndirection = \"inbound\"\nremote = \"{remote}\"\n\
             action = \"protect\"\nsa = \"{name}\"\n"
        );
        gw.install_policy(&policy, Some("deny")).expect("policy");
    }
    gw.install_policy(
        "name = \"ike\"\nprotocol = \"udp\"\nremote_port = 500\naction = \"bypass\"\n",
        Some("deny"),
    )
    .expect("policy");
    gw.set_spd_cache(if cache { 64 } else { 0 });
    gw
}

/// An IPv4/UDP packet of `len` bytes from 10.`net`.0.9:`sport` to 10.0.0.5:5000.
fn ipv4(net: u8, len: usize, sport: u16, tag: u8) -> Vec<u8> {
    let mut p = vec![tag; len];
    p[..20].copy_from_slice(&[
        0x45, 0, 0, 0, 0x12, tag, 0, 0, 64, 17, 0, 0, 10, net, 0, 9, 10, 0, 0, 5,
    ]);
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&5000u16.to_be_bytes());
    p[24..26].copy_from_slice(&((len - 20) as u16).to_be_bytes());
    p[26..28].fill(0);
    ipsec_core::packet::set_ipv4_checksum(&mut p[..20]);
    p
}

/// An IPv6/UDP packet of `len` bytes (at least 48) from 2001:db8:`site`::9:`sport` to
/// 2001:db8::5 port 5000.
fn ipv6(site: u16, len: usize, sport: u16, tag: u8) -> Vec<u8> {
    let mut p = vec![tag; len];
    p[..8].copy_from_slice(&[0x60, 0, 0, tag, 0, 0, 17, 64]);
    p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    let src = std::net::Ipv6Addr::new(0x2001, 0xdb8, site, 0, 0, 0, 0, 9);
    let dst = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5);
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p[40..42].copy_from_slice(&sport.to_be_bytes());
    p[42..44].copy_from_slice(&5000u16.to_be_bytes());
    p[44..46].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    p[46..48].fill(0);
    p
}

fn esp(sender: &mut SecurityAssociation, inner: &[u8]) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; SLOT];
    buf[HEAD..HEAD + inner.len()].copy_from_slice(inner);
    let mut p = PacketBuf::new(&mut buf, HEAD, inner.len()).ok()?;
    sender.encrypt(&mut p, Duration::ZERO).ok()?;
    Some(p.data().to_vec())
}

/// The IPv4 packet `whole` as two fragments, the first carrying `first` payload bytes
/// (rounded down to 8, at least 8).
fn fragments(whole: &[u8], first: usize) -> Vec<Vec<u8>> {
    let payload = &whole[20..];
    let first = (first / 8 * 8).clamp(8, (payload.len() - 1) / 8 * 8);
    let part = |body: &[u8], offset: usize, more: bool| {
        let mut f = whole[..20].to_vec();
        f.extend_from_slice(body);
        let len = f.len() as u16;
        f[2..4].copy_from_slice(&len.to_be_bytes());
        let flags = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
        f[6..8].copy_from_slice(&flags.to_be_bytes());
        ipsec_core::packet::set_ipv4_checksum(&mut f[..20]);
        f
    };
    vec![
        part(&payload[..first], 0, true),
        part(&payload[first..], first, false),
    ]
}

/// The packets the input describes.
fn packets(data: &[u8]) -> Vec<Vec<u8>> {
    let mut sender: Vec<SecurityAssociation> = (0..4)
        .map(|k| SecurityAssociation::new(config(k, Direction::Outbound), Duration::ZERO))
        .collect::<Result<_, _>>()
        .expect("sender SAs");
    let mut out: Vec<Vec<u8>> = Vec::new();
    for (i, op) in data.get(2..).unwrap_or(&[]).chunks(3).enumerate() {
        if out.len() >= MAX_PACKETS {
            break;
        }
        let byte = |j: usize| op.get(j).copied().unwrap_or(0);
        let (kind, a, b) = (byte(0) % 10, byte(1), byte(2));
        let tag = i as u8;
        let len = 28 + usize::from(a) + 256 * usize::from(b % 4);
        match kind {
            0..=2 => {
                let k = usize::from(kind);
                out.extend(esp(&mut sender[k], &ipv4(k as u8 + 1, len, 40000, tag)));
            }
            3 => {
                let inner = ipv6(4 + u16::from(b % 2), len + 20, 40000, tag);
                out.extend(esp(&mut sender[V6], &inner));
            }
            4 => out.extend(esp(&mut sender[0], &ipv4(2 + b % 2, len, 40000, tag))),
            5 if !out.is_empty() => {
                let mut p = out[usize::from(b) % out.len()].clone();
                let bit = usize::from(a) * 8 + usize::from(b) % 8;
                let at = bit / 8 % p.len();
                p[at] ^= 1 << (bit % 8);
                out.push(p);
            }
            6 if !out.is_empty() => out.push(out[usize::from(a) % out.len()].clone()),
            7 => {
                let k = usize::from(b % 2);
                if let Some(whole) = esp(&mut sender[k], &ipv4(k as u8 + 1, len, 40000, tag)) {
                    out.extend(fragments(&whole, usize::from(a) * 2));
                }
            }
            8 => {
                if let Some(mut p) = esp(&mut sender[0], &ipv4(1, len, 40000, tag)) {
                    p[20..24].copy_from_slice(&(0x3000 + u32::from(a)).to_be_bytes());
                    out.push(p);
                }
            }
            _ => out.push(ipv4(
                1 + b % 4,
                len,
                if a % 2 == 0 { 500 } else { 40000 },
                tag,
            )),
        }
    }
    out.truncate(MAX_PACKETS);
    out
}

/// One packet's result and the bytes of its window.
type Outcome = (Result<BurstVerdict, Error>, Vec<u8>);

fn one_at_a_time(gw: &mut Gateway, packets: &[Vec<u8>]) -> Vec<Outcome> {
    packets
        .iter()
        .map(|pkt| {
            let mut buf = vec![0u8; SLOT];
            buf[HEAD..HEAD + pkt.len()].copy_from_slice(pkt);
            let mut p = PacketBuf::new(&mut buf, HEAD, pkt.len()).expect("in bounds");
            let verdict = gw.inbound(&mut p, Duration::from_secs(1)).map(|v| match v {
                Inbound::Decrypted { .. } => BurstVerdict::Decrypted,
                Inbound::Bypassed { .. } => BurstVerdict::Bypassed,
                Inbound::Reassembling => BurstVerdict::Reassembling,
                other => panic!("a verdict this target does not know: {other:?}"),
            });
            (verdict, p.data().to_vec())
        })
        .collect()
}

fn in_bursts(gw: &mut Gateway, packets: &[Vec<u8>], burst: usize) -> Vec<Outcome> {
    let mut out = Vec::new();
    for chunk in packets.chunks(burst) {
        let mut store = vec![0u8; SLOT * chunk.len()];
        let mut bufs: Vec<PacketBuf<'_>> = store
            .chunks_mut(SLOT)
            .zip(chunk)
            .map(|(s, pkt)| {
                s[HEAD..HEAD + pkt.len()].copy_from_slice(pkt);
                PacketBuf::new(s, HEAD, pkt.len()).expect("in bounds")
            })
            .collect();
        let mut results = vec![Err(Error::WrongDirection); chunk.len()];
        let ok = gw.inbound_burst(&mut bufs, &mut results, Duration::from_secs(1));
        assert_eq!(ok, results.iter().filter(|r| r.is_ok()).count());
        assert!(
            !results.contains(&Err(Error::WrongDirection)),
            "a result not written"
        );
        out.extend(
            results
                .into_iter()
                .zip(bufs.iter().map(|b| b.data().to_vec())),
        );
    }
    out
}

/// Fuzz target `gateway_burst` (see the [module docs](self)).
pub fn gateway_burst(data: &[u8]) {
    let burst = 1 + usize::from(data.first().copied().unwrap_or(0) % 40);
    let cache = data.get(1).is_some_and(|b| b & 1 == 1);
    let packets = packets(data);
    let (mut single, mut bursty) = (gateway(cache), gateway(cache));
    let want = one_at_a_time(&mut single, &packets);
    let got = in_bursts(&mut bursty, &packets, burst);
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(w, g, "packet {i} (burst {burst}, cache {cache})");
    }
    assert_eq!(single.stats(), bursty.stats(), "gateway counters");
    for ((n, a), (m, b)) in single.sas().zip(bursty.sas()) {
        assert_eq!((n, a.stats()), (m, b.stats()), "SA counters");
    }
    let (room, hits, misses) = single.spd_cache_stats();
    let (room2, hits2, misses2) = bursty.spd_cache_stats();
    assert_eq!(
        (room, hits + misses),
        (room2, hits2 + misses2),
        "SPD cache lookups"
    );
}
