//! `Gateway::outbound_burst` gives every packet what `Gateway::outbound` gives it
//! called one packet at a time: the same verdict, the same bytes, and the same
//! counters (the gateway's drops under their reasons, every SA's, the SPD cache's),
//! whatever the mix of flows, SAs, policies, drops and burst lengths, with the SPD
//! cache off (the default) and on.

mod common;

use core::time::Duration;
use std::net::IpAddr;

use ipsec_core::gateway::{BurstVerdict, Outbound};
use ipsec_core::{
    Cipher, Direction, Error, Gateway, Integrity, Lifetime, Mode, PacketBuf, SaConfig, Spd,
};

const HEAD: usize = 128;
const SLOT: usize = 1700;

fn at(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

fn addr(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

use common::{
    BurstOutcome, CountingIv, Rng, gateway_counters, gateway_in_bursts, gateway_one_at_a_time,
};

/// A gateway with two GCM SAs (one with a hard packet limit that the test reaches), a
/// CBC + HMAC SA with a small path MTU (big packets are refused), and BYPASS,
/// DISCARD and PROTECT policies before a final deny-all.
fn gateway(cache: usize) -> Gateway {
    let spd = Spd::from_toml("[[policy]]\nname = \"deny\"\naction = \"discard\"\n").expect("spd");
    let mut gw = Gateway::new(spd, at(0)).expect("gateway");
    // (The IV source also gives the first outer IPv4 Identification.)
    let tunnel = |c: &mut SaConfig| {
        c.tunnel(addr("192.0.2.1"), addr("198.51.100.2"))
            .iv_source(Box::new(CountingIv(0x55)));
    };
    let mut gcm = SaConfig::new(
        0x1000,
        Direction::Outbound,
        Mode::Tunnel,
        Cipher::Aes128Gcm,
        &[1; 20],
    );
    tunnel(&mut gcm);
    gw.add_sa("gcm", gcm, at(0)).expect("gcm");
    let mut short = SaConfig::new(
        0x1001,
        Direction::Outbound,
        Mode::Tunnel,
        Cipher::Aes256Gcm,
        &[2; 36],
    );
    tunnel(&mut short);
    short.hard_lifetime(Lifetime::NONE.with_packets(10));
    gw.add_sa("short", short, at(0)).expect("short");
    let mut cbc = SaConfig::new(
        0x1002,
        Direction::Outbound,
        Mode::Tunnel,
        Cipher::Aes128Cbc,
        &[3; 16],
    );
    tunnel(&mut cbc);
    cbc.integrity(Integrity::HmacSha256_128, &[4; 32])
        .iv_source(Box::new(CountingIv(0x77)))
        .path_mtu(Some(700));
    gw.add_sa("cbc", cbc, at(0)).expect("cbc");
    for p in [
        "name = \"ike\"\nprotocol = \"udp\"\nremote_port = 500\naction = \"bypass\"\n",
        "name = \"blocked\"\nremote = \"10.3.0.0/16\"\naction = \"discard\"\n",
        "name = \"to-gcm\"\ndirection = \"outbound\"\nremote = \"10.1.0.0/16\"\naction = \"protect\"\nsa = \"gcm\"\n",
        "name = \"to-short\"\ndirection = \"outbound\"\nremote = \"10.4.0.0/16\"\naction = \"protect\"\nsa = \"short\"\n",
        "name = \"to-cbc\"\ndirection = \"outbound\"\nremote = \"10.2.0.0/16\"\naction = \"protect\"\nsa = \"cbc\"\n",
    ] {
        gw.install_policy(p, Some("deny")).expect("policy");
    }
    gw.set_spd_cache(cache);
    gw
}

/// An IPv4 packet of `len` bytes to `dst`: UDP with the given destination port, or
/// with `frag` (more fragments, offset in 8-byte units) a fragment of one.
fn ipv4(
    dst: [u8; 4],
    len: usize,
    dport: u16,
    df: bool,
    frag: Option<(bool, u16)>,
    tag: u8,
) -> Vec<u8> {
    let mut p = vec![tag; len];
    p[0] = 0x45;
    p[1] = 0;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[4..6].copy_from_slice(&[0x12, tag]);
    let mut flags: u16 = if df { 0x4000 } else { 0 };
    if let Some((more, offset)) = frag {
        flags |= offset | if more { 0x2000 } else { 0 };
    }
    p[6..8].copy_from_slice(&flags.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[10..12].fill(0);
    p[12..16].copy_from_slice(&[10, 0, 0, 5]);
    p[16..20].copy_from_slice(&dst);
    if frag.is_none_or(|(_, offset)| offset == 0) {
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p[24..26].copy_from_slice(&((len - 20) as u16).to_be_bytes());
    }
    ipsec_core::packet::set_ipv4_checksum(&mut p[..20]);
    p
}

/// A mix of packets: runs of one flow, flows of every policy, packets too big for
/// the CBC SA's path MTU, cleartext fragments, malformed packets, and enough packets
/// for the "short" SA to reach its hard limit.
fn mix(seed: u64, count: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    while out.len() < count {
        let tag = out.len() as u8;
        let run = 1 + rng.next(4);
        let pkt = match rng.next(11) {
            0 | 1 => ipv4(
                [10, 1, rng.next(3) as u8, 9],
                40 + rng.next(200),
                5000,
                false,
                None,
                tag,
            ),
            2 => ipv4([10, 4, 0, 9], 64, 5000, false, None, tag),
            3 => ipv4(
                [10, 2, 0, 9],
                40 + rng.next(1200),
                5000,
                rng.next(2) == 0,
                None,
                tag,
            ),
            4 => ipv4([10, 9, 9, 9], 64, 500, false, None, tag),
            5 => ipv4([10, 3, 1, 1], 64, 5000, false, None, tag),
            6 => ipv4([10, 8, 0, 1], 64, 5000, false, None, tag),
            7 => {
                // Cut short: the header claims more than there is.
                let mut p = ipv4([10, 1, 0, 9], 64, 5000, false, None, tag);
                p.truncate(50);
                p
            }
            8 => ipv4([10, 1, 0, 9], 64, 5000, false, Some((true, 0)), tag),
            9 => ipv4([10, 1, 0, 9], 64, 5000, false, Some((false, 6)), tag),
            _ => ipv4([10, 2, 0, 1], 120, 5000, false, Some((true, 0)), tag),
        };
        for _ in 0..run {
            out.push(pkt.clone());
        }
    }
    out.truncate(count);
    out
}

fn one_at_a_time(gw: &mut Gateway, packets: &[Vec<u8>]) -> Vec<BurstOutcome> {
    gateway_one_at_a_time(gw, packets, |gw, p| match gw.outbound(p, at(1)) {
        Ok(Outbound::Protected { .. }) => Ok(BurstVerdict::Protected),
        Ok(Outbound::Bypassed { .. }) => Ok(BurstVerdict::Bypassed),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(e) => Err(e),
    })
}

fn in_bursts(gw: &mut Gateway, packets: &[Vec<u8>], burst: usize) -> Vec<BurstOutcome> {
    gateway_in_bursts(gw, packets, burst, |gw, bufs, results| {
        gw.outbound_burst(bufs, results, at(1))
    })
}

#[test]
fn a_burst_gives_what_single_calls_give() {
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
        assert!(kinds(|o| o.0 == Ok(BurstVerdict::Protected)) > 0);
        assert!(kinds(|o| o.0 == Ok(BurstVerdict::Bypassed)) > 0);
        assert!(kinds(|o| o.0 == Err(Error::PolicyDiscard)) > 0);
        assert!(kinds(|o| matches!(o.0, Err(Error::Malformed(_)))) > 0);
        assert!(kinds(|o| matches!(o.0, Err(Error::TooBig { .. }))) > 0);
        assert!(kinds(|o| matches!(o.0, Err(Error::NoSpareBuffers { .. }))) > 0);
        assert!(kinds(|o| matches!(o.0, Err(Error::LifetimeExpired(_)))) > 0);
        assert!(kinds(|o| matches!(o.0, Err(Error::Fragment(_)))) > 0);
    }
}

#[test]
fn results_beyond_the_packets_are_left_alone() {
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
    gw.outbound_burst(&mut bufs, &mut results, at(1));
    assert!(results.iter().all(|r| *r != Err(Error::WrongDirection)));
    for (b, pkt) in bufs.iter().zip(&packets).skip(4) {
        assert_eq!(b.data(), &pkt[..], "untouched");
    }
    let processed: u64 =
        gw.sas().map(|(_, sa)| sa.stats().packets).sum::<u64>() + gw.stats().dropped_total();
    assert!(processed <= 4);
}
