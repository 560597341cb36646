//! `Gateway::inbound_burst` gives what `Gateway::inbound` gives one packet at a time:
//! the same verdicts, bytes and counters (the gateway's, every SA's, the SPD cache's)
//! over mixes of runs of ESP for five SAs (AES-128-GCM, AES-128-CBC + HMAC, one that
//! reaches its hard packet lifetime, AES-128-CBC + HMAC carrying IPv6 in IPv6, and
//! AES-128-GCM in UDP on the NAT-T port), replays, tampered and truncated ESP, inner packets
//! outside their SA's policy, unknown SPIs, outer fragments of ESP that are reassembled
//! part-way through a run, and cleartext that is bypassed or discarded; in bursts of
//! several sizes, with the SPD cache on and off.

use core::time::Duration;
use std::net::IpAddr;

mod common;

use common::{BurstOutcome, Rng, gateway_counters, gateway_in_bursts, gateway_one_at_a_time};
use ipsec_core::gateway::{BurstVerdict, Inbound};
use ipsec_core::{
    Cipher, Direction, Error, Gateway, Integrity, Lifetime, Mode, PacketBuf, SaConfig,
    SecurityAssociation, Spd,
};

const HEAD: usize = 128;
const SLOT: usize = 2048;

fn at(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

fn addr(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// One of the receiving gateway's SAs (and its peer's).
struct Suite {
    name: &'static str,
    spi: u32,
    cipher: Cipher,
    key: Vec<u8>,
    integrity: Option<(Integrity, Vec<u8>)>,
}

/// The five SAs: AES-128-GCM, AES-128-CBC + HMAC-SHA-256-128, a short-lived AES-256-GCM
/// one, AES-128-CBC + HMAC-SHA-256-128 between IPv6 endpoints (IPv6 inside), and
/// AES-128-GCM in UDP (NAT-T).
fn suites() -> [Suite; 5] {
    let suite = |name, spi, cipher, key, integrity| Suite {
        name,
        spi,
        cipher,
        key,
        integrity,
    };
    [
        suite("gcm", 0x2000, Cipher::Aes128Gcm, vec![1; 20], None),
        suite(
            "cbc",
            0x2001,
            Cipher::Aes128Cbc,
            vec![3; 16],
            Some((Integrity::HmacSha256_128, vec![4; 32])),
        ),
        suite("short", 0x2002, Cipher::Aes256Gcm, vec![2; 36], None),
        suite(
            "cbc6",
            0x2003,
            Cipher::Aes128Cbc,
            vec![5; 16],
            Some((Integrity::HmacSha256_128, vec![6; 32])),
        ),
        suite("natt", 0x2004, Cipher::Aes128Gcm, vec![7; 20], None),
    ]
}

/// The SA of [`suites`] that carries IPv6.
const V6: usize = 3;

/// The SA of [`suites`] whose ESP comes in UDP (port 4500 both ways).
const NATT: usize = 4;

fn config(k: usize, direction: Direction) -> SaConfig {
    let Suite {
        spi,
        cipher,
        key,
        integrity,
        ..
    } = &suites()[k];
    let mut c = SaConfig::new(*spi, direction, Mode::Tunnel, *cipher, key);
    if let Some((i, ikey)) = integrity {
        c.integrity(*i, ikey);
    }
    if k == NATT {
        c.udp_encap(4500, 4500);
    }
    if direction == Direction::Outbound && k == V6 {
        c.tunnel(addr("2001:db8:ff::2"), addr("2001:db8:ff::1"));
    } else if direction == Direction::Outbound {
        c.tunnel(addr("198.51.100.2"), addr("192.0.2.1"));
    } else {
        c.replay_window(64);
        if k == 2 {
            c.hard_lifetime(Lifetime::NONE.with_packets(10));
        }
    }
    c
}

/// The receiving gateway: one inbound SA per suite, each serving the policy of one
/// remote network (10.1/16, 10.2/16, 10.4/16, 2001:db8:5::/48, 10.6/16), IKE bypassed,
/// 10.3/16 blocked, the rest discarded.
fn gateway(cache: usize) -> Gateway {
    let spd = Spd::from_toml("[[policy]]\nname = \"deny\"\naction = \"discard\"\n").expect("spd");
    let mut gw = Gateway::new(spd, at(0)).expect("gateway");
    for (k, suite) in suites().iter().enumerate() {
        gw.add_sa(suite.name, config(k, Direction::Inbound), at(0))
            .expect("sa");
    }
    for p in [
        "name = \"ike\"\nprotocol = \"udp\"\nremote_port = 500\naction = \"bypass\"\n",
        "name = \"blocked\"\nremote = \"10.3.0.0/16\"\naction = \"discard\"\n",
        "name = \"from-gcm\"\ndirection = \"inbound\"\nremote = \"10.1.0.0/16\"\naction = \"protect\"\nsa = \"gcm\"\n",
        "name = \"from-cbc\"\ndirection = \"inbound\"\nremote = \"10.2.0.0/16\"\naction = \"protect\"\nsa = \"cbc\"\n",
        "name = \"from-short\"\ndirection = \"inbound\"\nremote = \"10.4.0.0/16\"\naction = \"protect\"\nsa = \"short\"\n",
        "name = \"from-cbc6\"\ndirection = \"inbound\"\nremote = \"2001:db8:5::/48\"\naction = \"protect\"\nsa = \"cbc6\"\n",
        "name = \"from-natt\"\ndirection = \"inbound\"\nremote = \"10.6.0.0/16\"\naction = \"protect\"\nsa = \"natt\"\n",
    ] {
        gw.install_policy(p, Some("deny")).expect("policy");
    }
    gw.set_spd_cache(cache);
    gw
}

/// An IPv4/UDP packet of `len` bytes from `src` to 10.0.0.5:`dport`.
fn ipv4(src: [u8; 4], len: usize, dport: u16, tag: u8) -> Vec<u8> {
    let mut p = vec![tag; len];
    p[..20].copy_from_slice(&[
        0x45, 0, 0, 0, 0x12, tag, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 10, 0, 0, 5,
    ]);
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[12..16].copy_from_slice(&src);
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&((len - 20) as u16).to_be_bytes());
    p[26..28].fill(0);
    ipsec_core::packet::set_ipv4_checksum(&mut p[..20]);
    p
}

/// An IPv6/UDP packet of `len` bytes from 2001:db8:`site`::9 to 2001:db8::5, port
/// `dport`.
fn ipv6(site: u16, len: usize, dport: u16, tag: u8) -> Vec<u8> {
    let mut p = vec![tag; len];
    p[..8].copy_from_slice(&[0x60, 0, 0, tag, 0, 0, 17, 64]);
    p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    let src = std::net::Ipv6Addr::new(0x2001, 0xdb8, site, 0, 0, 0, 0, 9);
    let dst = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5);
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p[40..42].copy_from_slice(&40000u16.to_be_bytes());
    p[42..44].copy_from_slice(&dport.to_be_bytes());
    p[44..46].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    p
}

/// `inner` encrypted by the sender's SA `k`.
fn esp(sender: &mut [SecurityAssociation], k: usize, inner: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; SLOT];
    buf[HEAD..HEAD + inner.len()].copy_from_slice(inner);
    let mut p = PacketBuf::new(&mut buf, HEAD, inner.len()).expect("in bounds");
    sender[k].encrypt(&mut p, at(0)).expect("encrypts");
    p.data().to_vec()
}

/// The IPv4 packet `whole` as two fragments (the first carrying `first` bytes of its
/// payload, a multiple of 8).
fn fragments(whole: &[u8], first: usize) -> [Vec<u8>; 2] {
    let payload = &whole[20..];
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
    [
        part(&payload[..first], 0, true),
        part(&payload[first..], first, false),
    ]
}

/// A mix of `count` packets: mostly runs of ESP for one SA, with the damage and the
/// other kinds of traffic a gateway's inbound side sees between them.
fn mix(seed: u64, count: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed);
    let mut sender: Vec<SecurityAssociation> = (0..suites().len())
        .map(|k| SecurityAssociation::new(config(k, Direction::Outbound), at(0)).expect("sa"))
        .collect();
    let nets = [[10, 1, 0, 9], [10, 2, 0, 9], [10, 4, 0, 9]];
    let mut out: Vec<Vec<u8>> = Vec::new();
    while out.len() < count {
        let tag = out.len() as u8;
        match rng.next(15) {
            14 => {
                // A run in UDP (NAT-T), an IKE packet with the non-ESP marker on the
                // same port in it, a flipped ICV and one from outside the policy.
                let run = 1 + rng.next(10);
                for i in 0..run {
                    let net = if i == run / 2 {
                        [10, 1, 0, 9]
                    } else {
                        [10, 6, 0, 9]
                    };
                    out.push(esp(
                        &mut sender,
                        NATT,
                        &ipv4(net, 40 + rng.next(300), 5000, tag),
                    ));
                    if i == 1 {
                        let mut ike = esp(&mut sender, NATT, &ipv4([10, 6, 0, 9], 64, 5000, tag));
                        ike[28..32].fill(0);
                        out.push(ike);
                    }
                }
                let mut bad = esp(&mut sender, NATT, &ipv4([10, 6, 0, 9], 64, 5000, tag));
                *bad.last_mut().expect("bytes") ^= 1;
                out.push(bad);
            }
            12 => {
                // A run of IPv6 in IPv6, with an inner packet from outside the SA's
                // policy, a replay and a flipped ICV among them.
                let run = 1 + rng.next(12);
                for i in 0..run {
                    let site = if i == run / 2 { 6 } else { 5 };
                    out.push(esp(
                        &mut sender,
                        V6,
                        &ipv6(site, 60 + rng.next(300), 5000, tag),
                    ));
                }
                let p = esp(&mut sender, V6, &ipv6(5, 80, 5000, tag));
                let mut bad = esp(&mut sender, V6, &ipv6(5, 80, 5000, tag));
                *bad.last_mut().expect("bytes") ^= 1;
                out.extend([p.clone(), bad, p]);
            }
            13 => {
                // IPv4 and IPv6 runs back to back (each run is one SA's).
                out.push(esp(&mut sender, 1, &ipv4(nets[1], 64, 5000, tag)));
                out.push(esp(&mut sender, V6, &ipv6(5, 64, 5000, tag)));
                out.push(esp(&mut sender, V6, &ipv6(5, 64, 5000, tag)));
                out.push(esp(&mut sender, 1, &ipv4(nets[1], 64, 5000, tag)));
            }
            0..=5 => {
                // A run for one SA.
                let k = rng.next(3);
                for _ in 0..1 + rng.next(12) {
                    let inner = ipv4(nets[k], 40 + rng.next(300), 5000, tag);
                    out.push(esp(&mut sender, k, &inner));
                }
            }
            6 => {
                // Replayed inside a run, and an ICV flipped.
                let k = rng.next(2);
                let p = esp(&mut sender, k, &ipv4(nets[k], 64, 5000, tag));
                let mut bad = esp(&mut sender, k, &ipv4(nets[k], 64, 5000, tag));
                *bad.last_mut().expect("bytes") ^= 1;
                out.extend([p.clone(), bad, p]);
            }
            7 => {
                // Inner packet outside the SA's policy (from 10.2 through the GCM SA),
                // and an ESP packet cut short.
                let k = rng.next(2);
                out.push(esp(&mut sender, 0, &ipv4(nets[1], 64, 5000, tag)));
                let mut cut = esp(&mut sender, k, &ipv4(nets[k], 64, 5000, tag));
                cut.truncate(40);
                out.push(cut);
            }
            8 => {
                // An unknown SPI.
                let mut p = esp(&mut sender, 0, &ipv4(nets[0], 64, 5000, tag));
                p[20..24].copy_from_slice(&0x9999u32.to_be_bytes());
                out.push(p);
            }
            9 => {
                // An ESP packet in two outer fragments, inside a run of its SA.
                let k = rng.next(2);
                let before = esp(&mut sender, k, &ipv4(nets[k], 64, 5000, tag));
                let whole = esp(&mut sender, k, &ipv4(nets[k], 300, 5000, tag));
                let after = esp(&mut sender, k, &ipv4(nets[k], 64, 5000, tag));
                let [a, b] = fragments(&whole, 128);
                out.extend([before, a, b, after]);
            }
            10 => {
                // IKE from the peer (source port 500): bypassed.
                let mut p = ipv4([10, 9, 9, 9], 64, 500, tag);
                p[20..22].copy_from_slice(&500u16.to_be_bytes());
                out.push(p);
            }
            _ => out.push(ipv4([10, 3, 1, 1], 64, 5000, tag)),
        }
    }
    out.truncate(count);
    out
}

fn one_at_a_time(gw: &mut Gateway, packets: &[Vec<u8>]) -> Vec<BurstOutcome> {
    gateway_one_at_a_time(gw, packets, |gw, p| match gw.inbound(p, at(1)) {
        Ok(Inbound::Decrypted { .. }) => Ok(BurstVerdict::Decrypted),
        Ok(Inbound::Bypassed { .. }) => Ok(BurstVerdict::Bypassed),
        Ok(Inbound::Reassembling) => Ok(BurstVerdict::Reassembling),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(e) => Err(e),
    })
}

fn in_bursts(gw: &mut Gateway, packets: &[Vec<u8>], burst: usize) -> Vec<BurstOutcome> {
    gateway_in_bursts(gw, packets, burst, |gw, bufs, results| {
        gw.inbound_burst(bufs, results, at(1))
    })
}

#[test]
fn an_inbound_burst_gives_what_single_calls_give() {
    for cache in [0, 64] {
        let mut seen: Vec<BurstOutcome> = Vec::new();
        for (seed, burst) in [(1, 32), (2, 1), (3, 7), (4, 45), (5, 100), (6, 33)] {
            let packets = mix(seed, 300);
            let mut single = gateway(cache);
            let mut bursty = gateway(cache);
            let want = one_at_a_time(&mut single, &packets);
            let got = in_bursts(&mut bursty, &packets, burst);
            for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                assert_eq!(
                    w, g,
                    "cache {cache}, seed {seed}, burst {burst}: packet {i}"
                );
            }
            assert_eq!(
                gateway_counters(&single),
                gateway_counters(&bursty),
                "cache {cache}, seed {seed}"
            );
            seen.extend(want);
        }
        // The mixes reach every kind of outcome.
        let kinds = |r: fn(&BurstOutcome) -> bool| seen.iter().filter(|o| r(o)).count();
        assert!(kinds(|o| o.0 == Ok(BurstVerdict::Decrypted)) > 100);
        // IPv6 inner packets decrypted (they ran through the burst code as IPv4 ones
        // do), and one refused by its SA's policy.
        assert!(kinds(|o| o.0 == Ok(BurstVerdict::Decrypted) && o.1.first() == Some(&0x60)) > 20);
        assert!(
            kinds(|o| o.0 == Err(Error::PolicyMismatch) && o.1.first().map(|b| b >> 4) == Some(6))
                > 0
        );
        // ESP in UDP decrypted (its runs too go through the burst code).
        assert!(
            kinds(|o| o.0 == Ok(BurstVerdict::Decrypted) && o.1.get(12..14) == Some(&[10, 6])) > 10
        );
        assert!(kinds(|o| o.0 == Ok(BurstVerdict::Bypassed)) > 0);
        assert!(kinds(|o| o.0 == Ok(BurstVerdict::Reassembling)) > 0);
        assert!(kinds(|o| o.0 == Err(Error::PolicyDiscard)) > 0);
        assert!(kinds(|o| o.0 == Err(Error::PolicyMismatch)) > 0);
        assert!(kinds(|o| o.0 == Err(Error::AuthenticationFailed)) > 0);
        assert!(kinds(|o| matches!(o.0, Err(Error::Replayed { .. }))) > 0);
        assert!(kinds(|o| matches!(o.0, Err(Error::UnknownSpi { .. }))) > 0);
        assert!(kinds(|o| matches!(o.0, Err(Error::Malformed(_)))) > 0);
        assert!(kinds(|o| matches!(o.0, Err(Error::LifetimeExpired(_)))) > 0);
    }
}

#[test]
fn inbound_results_beyond_the_packets_are_left_alone() {
    let packets = mix(9, 10);
    let mut gw = gateway(0);
    let mut store = vec![0u8; SLOT * packets.len()];
    let mut bufs: Vec<PacketBuf<'_>> = store
        .chunks_mut(SLOT)
        .zip(&packets)
        .map(|(s, pkt)| {
            s[HEAD..HEAD + pkt.len()].copy_from_slice(pkt);
            PacketBuf::new(s, HEAD, pkt.len()).expect("in bounds")
        })
        .collect();
    // Fewer results than packets: only as many packets are processed.
    let mut results = vec![Err(Error::WrongDirection); 4];
    gw.inbound_burst(&mut bufs, &mut results, at(1));
    assert!(results.iter().all(|r| *r != Err(Error::WrongDirection)));
    for (b, pkt) in bufs.iter().zip(&packets).skip(4) {
        assert_eq!(b.data(), &pkt[..], "untouched");
    }
}

/// Packets whose SPI is shared by SAs found by destination (RFC 4301 §4.1) each reach
/// their own SA in a burst, whatever the order: the burst remembers an SPI's SA only
/// when the SPI alone decides it. Two groups share SPI 0x5000 (each its own key and
/// policy), beside the SPI-alone AES-128-GCM SA of the other tests.
#[test]
fn a_burst_sends_packets_of_a_shared_spi_to_the_sa_of_their_destination() {
    use ipsec_core::SaLookup;
    let group = |direction, dst: &str, n: u8| {
        let mut c = SaConfig::new(0x5000, direction, Mode::Tunnel, Cipher::Aes128Gcm, &[n; 20]);
        c.tunnel(addr("198.51.100.2"), addr(dst));
        if direction == Direction::Inbound {
            c.lookup(SaLookup::SpiDestination);
        }
        c
    };
    let mut gw = gateway(0);
    for (name, dst, n, remote) in [
        ("g1", "233.252.0.1", 11, "10.1.0.0/16"),
        ("g2", "233.252.0.2", 12, "10.2.0.0/16"),
    ] {
        gw.add_sa(name, group(Direction::Inbound, dst, n), at(0))
            .expect("sa");
        let p = format!(
            "name = \"p-{name}\"\ndirection = \"inbound\"\nremote = \"{remote}\"\naction = \"protect\"\nsa = \"{name}\"\n"
        );
        gw.install_policy(&p, Some("deny")).expect("policy");
    }
    let mut to_g1 =
        SecurityAssociation::new(group(Direction::Outbound, "233.252.0.1", 11), at(0)).expect("sa");
    let mut to_g2 =
        SecurityAssociation::new(group(Direction::Outbound, "233.252.0.2", 12), at(0)).expect("sa");
    let mut alone = SecurityAssociation::new(config(0, Direction::Outbound), at(0)).expect("sa");
    let seal = |sa: &mut SecurityAssociation, inner: &[u8]| {
        let mut buf = vec![0u8; SLOT];
        buf[HEAD..HEAD + inner.len()].copy_from_slice(inner);
        let mut p = PacketBuf::new(&mut buf, HEAD, inner.len()).expect("in bounds");
        sa.encrypt(&mut p, at(0)).expect("encrypts");
        p.data().to_vec()
    };
    // Runs of each group's packets and single ones between them, ending with the
    // SPI-alone SA's, so that a remembered SA would be wrong for the next packet.
    let order = [1, 1, 1, 2, 2, 1, 2, 2, 2, 0, 0, 1, 2, 1, 0, 2];
    let packets: Vec<Vec<u8>> = order
        .iter()
        .enumerate()
        .map(|(i, &g)| match g {
            1 => seal(&mut to_g1, &ipv4([10, 1, 0, 9], 100, 80, i as u8)),
            2 => seal(&mut to_g2, &ipv4([10, 2, 0, 9], 100, 80, i as u8)),
            _ => seal(&mut alone, &ipv4([10, 1, 0, 9], 100, 80, i as u8)),
        })
        .collect();
    let got = in_bursts(&mut gw, &packets, 32);
    for (i, (o, &g)) in got.iter().zip(&order).enumerate() {
        assert_eq!(o.0, Ok(BurstVerdict::Decrypted), "packet {i} (group {g})");
        assert_eq!(o.1.get(12..14), Some(&[10, g.max(1)][..]), "packet {i}");
    }
    let count = |g: u8| order.iter().filter(|&&x| x == g).count() as u64;
    for (name, g) in [("g1", 1), ("g2", 2), ("gcm", 0)] {
        let stats = gw.sa(name).expect("sa").stats();
        assert_eq!(
            (stats.packets, stats.dropped_total()),
            (count(g), 0),
            "{name}"
        );
    }
}
