//! Fragments through the gateway (RFC 4301 §7, RFC 1858, RFC 3128, RFC 5722): the
//! policy of issue 10, "PROTECT tcp/3389 (and ICMP echo requests) between two subnets,
//! then BYPASS any", on a head-office and a branch gateway. Tiny and overlapping
//! fragments are dropped; the later fragments of a datagram get its first fragment's
//! decision (PROTECT with the same SA, BYPASS, DISCARD); a later fragment whose first
//! fragment was not seen is let through only when no port-specific policy could cover
//! it.

use ipsec_core::gateway::{Inbound, Outbound};
use ipsec_core::sa_file::parse_sa_file;
use ipsec_core::spd::Spd;
use ipsec_core::{DropReason, Error, FragmentError, Gateway, PacketBuf, SecurityAssociation};
use std::time::Duration;

const T0: Duration = Duration::ZERO;
const K1: &str = "000102030405060708090a0b0c0d0e0f10111213";
const K2: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3";

/// The head office (10.0.0.0/24, 2001:db8::/64) and branch (10.1.0.0/24,
/// 2001:db8:1::/64) policies: one is the other's mirror image.
fn toml(hq: bool) -> String {
    let (local, remote, local6, remote6) = if hq {
        (
            "10.0.0.0/24",
            "10.1.0.0/24",
            "2001:db8::/64",
            "2001:db8:1::/64",
        )
    } else {
        (
            "10.1.0.0/24",
            "10.0.0.0/24",
            "2001:db8:1::/64",
            "2001:db8::/64",
        )
    };
    let (port_key, sas, out_key, in_key, out_spi, in_spi, src, dst) = if hq {
        (
            "local_port",
            "[\"out\", \"in\"]",
            K1,
            K2,
            0x1001,
            0x2001,
            "192.0.2.1",
            "198.51.100.2",
        )
    } else {
        (
            "remote_port",
            "[\"out\", \"in\"]",
            K2,
            K1,
            0x2001,
            0x1001,
            "198.51.100.2",
            "192.0.2.1",
        )
    };
    format!(
        r#"
[[policy]]
name = "rdp"
direction = "both"
local = ["{local}", "{local6}"]
remote = ["{remote}", "{remote6}"]
protocol = "tcp"
{port_key} = 3389
action = "protect"
sa = {sas}

[[policy]]
name = "ping"
direction = "both"
local = "{local}"
remote = "{remote}"
protocol = "icmp"
icmp_type = 8
action = "protect"
sa = {sas}

[[policy]]
name = "rest"
direction = "both"
action = "bypass"

[[sa]]
name = "out"
spi = {out_spi}
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "{out_key}"
tunnel_src = "{src}"
tunnel_dst = "{dst}"

[[sa]]
name = "in"
spi = {in_spi}
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "{in_key}"
"#
    )
}

fn gateway(hq: bool) -> Gateway {
    Gateway::new(Spd::from_toml(&toml(hq)).expect("policy"), T0).expect("SAs")
}

const BRANCH_HOST: [u8; 4] = [10, 1, 0, 5];
const HQ_SERVER: [u8; 4] = [10, 0, 0, 10];

/// An IPv4 fragment: `data` at byte `offset` of datagram `id`, MF = `more`.
fn frag4(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    id: u16,
    offset: u16,
    more: bool,
    data: &[u8],
) -> Vec<u8> {
    assert_eq!(offset % 8, 0);
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    let flags = (offset / 8) | if more { 0x2000 } else { 0 };
    p[6..8].copy_from_slice(&flags.to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    ipsec_core::packet::set_ipv4_checksum(&mut p[..20]);
    p.extend_from_slice(data);
    p
}

/// A TCP segment's first 24 bytes (header and 4 bytes of payload).
fn tcp(sport: u16, dport: u16) -> Vec<u8> {
    let mut t = vec![0u8; 24];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 0x50;
    t[13] = 0x18;
    t[20..].copy_from_slice(b"RDP!");
    t
}

/// Runs `f` on `pkt` placed with room around it; returns the result and the bytes.
fn with_buf<R>(pkt: &[u8], f: impl FnOnce(&mut PacketBuf<'_>) -> R) -> (R, Vec<u8>) {
    let mut storage = vec![0u8; pkt.len() + 256];
    storage[128..128 + pkt.len()].copy_from_slice(pkt);
    let mut p = PacketBuf::new(&mut storage, 128, pkt.len()).expect("in bounds");
    let r = f(&mut p);
    let out = p.data().to_vec();
    (r, out)
}

fn outbound(gw: &mut Gateway, pkt: &[u8], now: Duration) -> (Result<String, Error>, Vec<u8>) {
    with_buf(pkt, |p| {
        gw.outbound(p, now).map(|o| match o {
            Outbound::Protected { sa, policy } => format!("protect {policy} {sa}"),
            Outbound::Bypassed { policy } => format!("bypass {policy}"),
            other => format!("{other:?}"),
        })
    })
}

fn inbound(gw: &mut Gateway, pkt: &[u8], now: Duration) -> (Result<String, Error>, Vec<u8>) {
    with_buf(pkt, |p| {
        gw.inbound(p, now).map(|i| match i {
            Inbound::Decrypted { sa, policy } => format!("decrypt {policy} {sa}"),
            Inbound::Bypassed { policy } => format!("bypass {policy}"),
            other => format!("{other:?}"),
        })
    })
}

fn dropped(gw: &Gateway, r: DropReason) -> u64 {
    gw.stats().dropped(r)
}

#[test]
fn inbound_tiny_first_fragments_are_dropped_not_bypassed() {
    let mut hq = gateway(true);
    let rdp = tcp(50000, 3389);
    // The same flow unfragmented is refused in the clear (it must come through ESP).
    let whole = frag4(BRANCH_HOST, HQ_SERVER, 6, 1, 0, false, &rdp);
    assert_eq!(
        inbound(&mut hq, &whole, T0).0,
        Err(Error::UnprotectedTraffic)
    );
    // A first fragment with 2 bytes of TCP header: no ports at all (RFC 3128).
    let two = frag4(BRANCH_HOST, HQ_SERVER, 6, 2, 0, true, &rdp[..2]);
    assert_eq!(
        inbound(&mut hq, &two, T0).0,
        Err(Error::Fragment(FragmentError::TooShort))
    );
    // 8 bytes: the ports, but not the flags (RFC 1858 wants 16).
    let eight = frag4(BRANCH_HOST, HQ_SERVER, 6, 3, 0, true, &rdp[..8]);
    assert_eq!(
        inbound(&mut hq, &eight, T0).0,
        Err(Error::Fragment(FragmentError::TooShort))
    );
    // Even for a port the policy lets through: the rule is about the header.
    let web = frag4(BRANCH_HOST, HQ_SERVER, 6, 4, 0, true, &tcp(50000, 80)[..8]);
    assert_eq!(
        inbound(&mut hq, &web, T0).0,
        Err(Error::Fragment(FragmentError::TooShort))
    );
    assert_eq!(dropped(&hq, DropReason::FragmentTooShort), 3);
    assert_eq!(dropped(&hq, DropReason::PolicyMismatch), 1);
}

#[test]
fn inbound_fragments_overlapping_the_first_one_are_dropped() {
    let mut hq = gateway(true);
    // RFC 1858: a TCP fragment at offset 8 (fragment offset 1), whatever came before.
    let at8 = frag4(
        BRANCH_HOST,
        HQ_SERVER,
        6,
        7,
        8,
        false,
        &[0x0d, 0x3d, 0, 0, 0, 0, 0, 0],
    );
    assert_eq!(
        inbound(&mut hq, &at8, T0).0,
        Err(Error::Fragment(FragmentError::Overlap))
    );
    // SCTP ("rest"'s; UDP fragments are reassembled before any decision, since a
    // later one cannot show whether it is ESP in UDP): the first fragment carries 16
    // bytes and is let in; a fragment at offset 8 overlaps it, and the datagram is
    // condemned from then on.
    let mut sctp = vec![0u8; 16];
    sctp[0..2].copy_from_slice(&5353u16.to_be_bytes());
    sctp[2..4].copy_from_slice(&53u16.to_be_bytes());
    let first = frag4(BRANCH_HOST, HQ_SERVER, 132, 9, 0, true, &sctp);
    assert_eq!(inbound(&mut hq, &first, T0).0, Ok("bypass rest".into()));
    let overlap = frag4(BRANCH_HOST, HQ_SERVER, 132, 9, 8, true, &[0xee; 16]);
    assert_eq!(
        inbound(&mut hq, &overlap, T0).0,
        Err(Error::Fragment(FragmentError::Overlap))
    );
    let rest = frag4(BRANCH_HOST, HQ_SERVER, 132, 9, 24, false, &[0; 8]);
    assert_eq!(
        inbound(&mut hq, &rest, T0).0,
        Err(Error::Fragment(FragmentError::Overlap))
    );
    assert_eq!(dropped(&hq, DropReason::FragmentOverlap), 3);
}

#[test]
fn outbound_later_fragments_of_a_protected_datagram_are_encrypted_with_its_sa() {
    let (mut br, mut hq) = (gateway(false), gateway(true));
    let datagram: Vec<u8> = tcp(50000, 3389)
        .into_iter()
        .chain((0u8..40).map(|i| i.wrapping_mul(7)))
        .collect();
    let pieces = [
        (0u16, &datagram[..24]),
        (24, &datagram[24..48]),
        (48, &datagram[48..]),
    ];
    for (offset, data) in pieces {
        let more = offset != 48;
        let f = frag4(BRANCH_HOST, HQ_SERVER, 6, 0x4242, offset, more, data);
        let (r, wire) = outbound(&mut br, &f, T0);
        assert_eq!(r, Ok("protect rdp out".into()), "fragment at {offset}");
        assert_eq!(wire[9], 50, "fragment at {offset} leaves as ESP");
        // Each fragment is its own ESP packet; the head office decrypts it and accepts
        // it under the policy its first fragment was accepted under.
        let (r, inner) = inbound(&mut hq, &wire, T0);
        assert_eq!(r, Ok("decrypt rdp in".into()), "fragment at {offset}");
        assert_eq!(inner, f);
    }
    assert_eq!(br.sa("out").unwrap().stats().packets, 3);
    assert_eq!(hq.sa("in").unwrap().stats().packets, 3);
    assert_eq!(br.stats().dropped_total(), 0);
}

#[test]
fn a_later_fragment_whose_first_was_not_seen_is_decided_only_when_certain() {
    let mut br = gateway(false);
    // TCP between the subnets: "rdp" might cover it; without its first fragment the
    // gateway cannot know, and refuses it rather than bypass it.
    let tcp_later = frag4(BRANCH_HOST, HQ_SERVER, 6, 77, 24, false, &[0x55; 16]);
    assert_eq!(
        outbound(&mut br, &tcp_later, T0).0,
        Err(Error::Fragment(FragmentError::Unresolved))
    );
    // ICMP between the subnets: "ping" might cover it (an echo request).
    let icmp_later = frag4(BRANCH_HOST, HQ_SERVER, 1, 78, 24, false, &[0x55; 16]);
    assert_eq!(
        outbound(&mut br, &icmp_later, T0).0,
        Err(Error::Fragment(FragmentError::Unresolved))
    );
    assert_eq!(br.stats().dropped(DropReason::FragmentUnresolved), 2);
    // UDP between them: only "rest" could take it, whatever its ports.
    let udp_later = frag4(BRANCH_HOST, HQ_SERVER, 17, 79, 24, false, &[0x55; 16]);
    assert_eq!(
        outbound(&mut br, &udp_later, T0).0,
        Ok("bypass rest".into())
    );
    // TCP to a host outside the protected subnet: "rest" too.
    let elsewhere = frag4(BRANCH_HOST, [192, 0, 2, 80], 6, 80, 24, false, &[0x55; 16]);
    assert_eq!(
        outbound(&mut br, &elsewhere, T0).0,
        Ok("bypass rest".into())
    );
}

#[test]
fn later_fragments_of_a_bypassed_datagram_are_bypassed() {
    let mut br = gateway(false);
    let first = frag4(BRANCH_HOST, HQ_SERVER, 6, 90, 0, true, &tcp(50000, 80));
    assert_eq!(outbound(&mut br, &first, T0).0, Ok("bypass rest".into()));
    let later = frag4(BRANCH_HOST, HQ_SERVER, 6, 90, 24, false, &[1; 16]);
    let (r, out) = outbound(&mut br, &later, T0);
    assert_eq!(r, Ok("bypass rest".into()));
    assert_eq!(out, later, "unchanged");
    // The same later fragment of another datagram (another IP ID) is not vouched for.
    let stranger = frag4(BRANCH_HOST, HQ_SERVER, 6, 91, 24, false, &[1; 16]);
    assert_eq!(
        outbound(&mut br, &stranger, T0).0,
        Err(Error::Fragment(FragmentError::Unresolved))
    );
}

#[test]
fn inbound_cleartext_fragments_of_protected_traffic_are_refused_fragment_after_fragment() {
    let mut hq = gateway(true);
    let first = frag4(BRANCH_HOST, HQ_SERVER, 6, 5, 0, true, &tcp(50000, 3389));
    assert_eq!(
        inbound(&mut hq, &first, T0).0,
        Err(Error::UnprotectedTraffic)
    );
    let later = frag4(BRANCH_HOST, HQ_SERVER, 6, 5, 24, false, &[0; 16]);
    assert_eq!(
        inbound(&mut hq, &later, T0).0,
        Err(Error::UnprotectedTraffic)
    );
    assert_eq!(dropped(&hq, DropReason::PolicyMismatch), 2);
}

/// The branch's outbound SA, used directly (a peer that sends what it likes).
fn branch_sa() -> SecurityAssociation {
    let cfg = parse_sa_file(&toml(false))
        .unwrap()
        .into_iter()
        .find(|s| s.name == "out")
        .unwrap()
        .config;
    SecurityAssociation::new(cfg, T0).unwrap()
}

#[test]
fn decrypted_later_fragments_need_their_first_fragment_on_the_same_sa() {
    let mut hq = gateway(true);
    let mut peer = branch_sa();
    // A later fragment whose first fragment never came: "rdp" might cover it.
    let later = frag4(BRANCH_HOST, HQ_SERVER, 6, 300, 24, false, &[9; 16]);
    let (r, wire) = with_buf(&later, |p| peer.encrypt(p, T0));
    r.unwrap();
    assert_eq!(
        inbound(&mut hq, &wire, T0).0,
        Err(Error::Fragment(FragmentError::Unresolved))
    );
    let sa = hq.sa("in").unwrap().stats();
    assert_eq!(sa.dropped(DropReason::FragmentUnresolved), 1);
    assert_eq!(sa.packets, 0);
    // A cleartext first fragment does not vouch for a decrypted later one, nor the
    // other way round.
    let first = frag4(BRANCH_HOST, HQ_SERVER, 6, 301, 0, true, &tcp(50000, 3389));
    assert_eq!(
        inbound(&mut hq, &first, T0).0,
        Err(Error::UnprotectedTraffic)
    );
    let later = frag4(BRANCH_HOST, HQ_SERVER, 6, 301, 24, false, &[9; 16]);
    let (_, wire) = with_buf(&later, |p| peer.encrypt(p, T0));
    assert_eq!(
        inbound(&mut hq, &wire, T0).0,
        Err(Error::Fragment(FragmentError::Unresolved))
    );
    // A decrypted first fragment overlapped by a decrypted later one.
    let first = frag4(BRANCH_HOST, HQ_SERVER, 6, 302, 0, true, &tcp(50000, 3389));
    let (_, wire) = with_buf(&first, |p| peer.encrypt(p, T0));
    assert_eq!(inbound(&mut hq, &wire, T0).0, Ok("decrypt rdp in".into()));
    let overlap = frag4(BRANCH_HOST, HQ_SERVER, 6, 302, 16, false, &[9; 16]);
    let (_, wire) = with_buf(&overlap, |p| peer.encrypt(p, T0));
    assert_eq!(
        inbound(&mut hq, &wire, T0).0,
        Err(Error::Fragment(FragmentError::Overlap))
    );
    assert_eq!(
        hq.sa("in")
            .unwrap()
            .stats()
            .dropped(DropReason::FragmentOverlap),
        1
    );
    // A later fragment outside every policy of the SA is a policy mismatch.
    let stray = frag4([10, 9, 9, 9], HQ_SERVER, 6, 303, 24, false, &[9; 16]);
    let (_, wire) = with_buf(&stray, |p| peer.encrypt(p, T0));
    assert_eq!(inbound(&mut hq, &wire, T0).0, Err(Error::PolicyMismatch));
}

#[test]
fn icmp_fragments() {
    let (mut br, mut hq) = (gateway(false), gateway(true));
    // A first fragment must carry the 8-byte ICMP header.
    let tiny = frag4(BRANCH_HOST, HQ_SERVER, 1, 20, 0, true, &[8, 0, 0, 0]);
    assert_eq!(
        outbound(&mut br, &tiny, T0).0,
        Err(Error::Fragment(FragmentError::TooShort))
    );
    // An echo request in two fragments: both protected, both accepted.
    let echo: Vec<u8> = [8u8, 0, 0, 0, 0, 1, 0, 1]
        .into_iter()
        .chain([0xab; 24])
        .collect();
    for (offset, data, more) in [(0u16, &echo[..16], true), (16, &echo[16..], false)] {
        let f = frag4(BRANCH_HOST, HQ_SERVER, 1, 21, offset, more, data);
        let (r, wire) = outbound(&mut br, &f, T0);
        assert_eq!(r, Ok("protect ping out".into()), "offset {offset}");
        assert_eq!(inbound(&mut hq, &wire, T0).0, Ok("decrypt ping in".into()));
    }
    // An echo reply's fragments are "rest"'s: bypassed.
    let reply = frag4(BRANCH_HOST, HQ_SERVER, 1, 22, 0, true, &[0u8; 16]);
    assert_eq!(outbound(&mut br, &reply, T0).0, Ok("bypass rest".into()));
    let reply_later = frag4(BRANCH_HOST, HQ_SERVER, 1, 22, 16, false, &[0u8; 16]);
    assert_eq!(
        outbound(&mut br, &reply_later, T0).0,
        Ok("bypass rest".into())
    );
}

/// An IPv6 packet 2001:db8:1::5 -> 2001:db8::10 with a Fragment header.
fn frag6(nh: u8, id: u32, offset: u16, more: bool, data: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[6] = 44;
    p[7] = 64;
    let src: std::net::Ipv6Addr = "2001:db8:1::5".parse().unwrap();
    let dst: std::net::Ipv6Addr = "2001:db8::10".parse().unwrap();
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p.extend_from_slice(&[nh, 0]);
    p.extend_from_slice(&(offset | u16::from(more)).to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(data);
    let plen = (p.len() - 40) as u16;
    p[4..6].copy_from_slice(&plen.to_be_bytes());
    p
}

#[test]
fn ipv6_fragment_headers() {
    let (mut br, mut hq) = (gateway(false), gateway(true));
    let rdp = tcp(50000, 3389);
    let first = frag6(6, 0xdead_beef, 0, true, &rdp);
    let (r, wire) = outbound(&mut br, &first, T0);
    assert_eq!(r, Ok("protect rdp out".into()));
    assert_eq!(inbound(&mut hq, &wire, T0).0, Ok("decrypt rdp in".into()));
    let later = frag6(6, 0xdead_beef, 24, false, &[3; 16]);
    let (r, wire) = outbound(&mut br, &later, T0);
    assert_eq!(r, Ok("protect rdp out".into()));
    assert_eq!(inbound(&mut hq, &wire, T0).0, Ok("decrypt rdp in".into()));
    // Without its first fragment: unresolved; with Destination Options first in the
    // fragmentable part it does not even show its protocol.
    for nh in [6, 60] {
        let stray = frag6(nh, 0x0bad_0000 + u32::from(nh), 24, false, &[3; 16]);
        assert_eq!(
            outbound(&mut br, &stray, T0).0,
            Err(Error::Fragment(FragmentError::Unresolved)),
            "next header {nh}"
        );
    }
    // Tiny, and RFC 1858's offset 8.
    let tiny = frag6(6, 5, 0, true, &rdp[..8]);
    assert_eq!(
        inbound(&mut hq, &tiny, T0).0,
        Err(Error::Fragment(FragmentError::TooShort))
    );
    let at8 = frag6(6, 6, 8, true, &[0; 16]);
    assert_eq!(
        inbound(&mut hq, &at8, T0).0,
        Err(Error::Fragment(FragmentError::Overlap))
    );
    // The cleartext first fragment of a protected flow, and a later one: refused.
    assert_eq!(
        inbound(&mut hq, &first, T0).0,
        Err(Error::UnprotectedTraffic)
    );
}

#[test]
fn the_memory_of_first_fragments_is_bounded_in_time_and_size() {
    use ipsec_core::FragmentLimits;
    let mut br = gateway(false);
    assert_eq!(br.fragment_limits(), FragmentLimits::default());
    br.set_fragment_limits(FragmentLimits::new(8, Duration::from_secs(5)).unwrap());
    let first = |id| frag4(BRANCH_HOST, HQ_SERVER, 6, id, 0, true, &tcp(50000, 3389));
    let later = |id| frag4(BRANCH_HOST, HQ_SERVER, 6, id, 24, false, &[0; 16]);
    assert_eq!(
        outbound(&mut br, &first(1), T0).0,
        Ok("protect rdp out".into())
    );
    assert_eq!(br.remembered_datagrams(T0), 1);
    // Within the lifetime the decision holds; after it, the stateless answer.
    let t = Duration::from_secs(4);
    assert_eq!(
        outbound(&mut br, &later(1), t).0,
        Ok("protect rdp out".into())
    );
    let t = Duration::from_secs(5);
    assert_eq!(br.remembered_datagrams(t), 0);
    assert_eq!(
        outbound(&mut br, &later(1), t).0,
        Err(Error::Fragment(FragmentError::Unresolved))
    );
    // Eight datagrams fit; a ninth pushes the oldest out.
    for id in 10..19 {
        let now = t + Duration::from_millis(u64::from(id));
        assert_eq!(
            outbound(&mut br, &first(id), now).0,
            Ok("protect rdp out".into())
        );
    }
    let now = t + Duration::from_millis(100);
    assert_eq!(br.remembered_datagrams(now), 8);
    assert_eq!(
        outbound(&mut br, &later(10), now).0,
        Err(Error::Fragment(FragmentError::Unresolved))
    );
    assert_eq!(
        outbound(&mut br, &later(18), now).0,
        Ok("protect rdp out".into())
    );
    // No memory at all: every later fragment gets the stateless answer.
    br.set_fragment_limits(FragmentLimits::new(0, Duration::from_secs(5)).unwrap());
    assert_eq!(
        outbound(&mut br, &first(30), now).0,
        Ok("protect rdp out".into())
    );
    assert_eq!(
        outbound(&mut br, &later(30), now).0,
        Err(Error::Fragment(FragmentError::Unresolved))
    );
}

#[test]
fn cleartext_udp_fragments_are_reassembled_then_decided_whole() {
    // A later UDP fragment cannot show whether it is ESP in UDP (NAT-T), so the gateway
    // puts UDP fragments back together before it decides: the datagram is then decided
    // (and passed on) whole.
    let mut hq = gateway(true);
    let mut udp = [0u8; 24];
    udp[0..2].copy_from_slice(&5353u16.to_be_bytes());
    udp[2..4].copy_from_slice(&53u16.to_be_bytes());
    udp[4..6].copy_from_slice(&24u16.to_be_bytes());
    let first = frag4(BRANCH_HOST, HQ_SERVER, 17, 21, 0, true, &udp[..16]);
    let last = frag4(BRANCH_HOST, HQ_SERVER, 17, 21, 16, false, &udp[16..]);
    assert_eq!(inbound(&mut hq, &last, T0).0, Ok("Reassembling".into()));
    let (verdict, whole) = inbound(&mut hq, &first, T0);
    assert_eq!(verdict, Ok("bypass rest".into()));
    assert_eq!(whole.len(), 20 + 24);
    assert_eq!(&whole[20..], &udp[..]);
    assert_eq!(
        u16::from_be_bytes([whole[6], whole[7]]) & 0x3fff,
        0,
        "not a fragment"
    );
}
