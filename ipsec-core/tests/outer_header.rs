//! The headers an SA writes around ESP, checked with this file's own checksum code:
//!
//! * ESP in UDP over IPv6 carries a UDP checksum that verifies (RFC 8200 §8.1 forbids
//!   0), over the final destination when a Routing header has one; over IPv4 it stays 0
//!   (RFC 3948 §2.1).
//! * Outer IPv4 headers carry a per-SA Identification counter from a random start
//!   (RFC 6864) and the DF bit of the SA's policy (RFC 4301 §8.1: copy, set, clear).

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{
    FixedIv, T0, config, encrypt, inner_v4, inner_v6, ipv4_checksum_ok, ipv6, l4_checksum_ok,
    set_l4_checksum, udp,
};
use ipsec_core::sa_file::parse_sa_file;
use ipsec_core::{
    Cipher, DfPolicy, Direction, Error, Integrity, Malformed, Mode, PacketBuf, SaConfig,
    SecurityAssociation,
};

const GCM: (Cipher, Option<Integrity>) = (Cipher::Aes128Gcm, None);
const CBC: (Cipher, Option<Integrity>) = (Cipher::Aes128Cbc, Some(Integrity::HmacSha256_128));

fn addr(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn tunnel_sa(
    outer6: bool,
    udp: bool,
    configure: impl FnOnce(&mut SaConfig),
) -> SecurityAssociation {
    let mut cfg = config(0x5151, Direction::Outbound, Mode::Tunnel, GCM);
    if outer6 {
        cfg.tunnel(addr("2001:db8:ffff::1"), addr("2001:db8:ffff::2"));
    } else {
        cfg.tunnel(addr("192.0.2.1"), addr("198.51.100.2"));
    }
    if udp {
        cfg.udp_encap(4500, 4500);
    }
    configure(&mut cfg);
    SecurityAssociation::new(cfg, T0).expect("outbound SA")
}

fn transport_udp_sa(suite: (Cipher, Option<Integrity>)) -> SecurityAssociation {
    let mut cfg = config(0x5152, Direction::Outbound, Mode::Transport, suite);
    cfg.udp_encap(4500, 4500);
    SecurityAssociation::new(cfg, T0).expect("outbound SA")
}

/// The UDP header of ESP in UDP: where it is in `prot` (an IPv6 packet without
/// extension headers in front of it, or IPv4 without options).
fn udp_at(prot: &[u8]) -> usize {
    if prot[0] >> 4 == 6 { 40 } else { 20 }
}

#[test]
fn esp_in_udp_over_ipv6_has_a_udp_checksum_that_verifies() {
    for size in [0usize, 1, 2, 3, 17, 100, 1001, 1400] {
        for inner in [inner_v4(size, 0), inner_v6(size, 0)] {
            let mut sa = tunnel_sa(true, true, |_| {});
            let prot = encrypt(&mut sa, &inner).expect("encrypts");
            assert_eq!(prot[6], 17, "next header UDP");
            let u = &prot[40..];
            assert_ne!(
                &u[6..8],
                &[0, 0],
                "size {size}: zero UDP checksum over IPv6"
            );
            assert!(
                l4_checksum_ok(&prot[8..24], &prot[24..40], 17, u),
                "size {size}: tunnel-mode UDP checksum does not verify"
            );
        }
        let mut sa = transport_udp_sa(CBC);
        let prot = encrypt(&mut sa, &inner_v6(size, 0)).expect("encrypts");
        assert!(
            l4_checksum_ok(&prot[8..24], &prot[24..40], 17, &prot[40..]),
            "size {size}: transport-mode UDP checksum does not verify"
        );
    }
}

#[test]
fn esp_in_udp_over_ipv4_keeps_checksum_zero() {
    let mut sa = tunnel_sa(false, true, |_| {});
    let prot = encrypt(&mut sa, &inner_v4(100, 0)).expect("encrypts");
    assert_eq!(&prot[udp_at(&prot) + 6..udp_at(&prot) + 8], &[0, 0]);
    let mut sa = transport_udp_sa(GCM);
    let prot = encrypt(&mut sa, &inner_v4(100, 0)).expect("encrypts");
    assert_eq!(&prot[26..28], &[0, 0]);
}

/// An IPv6 packet whose Routing header (type `rtype`, one address, segments left 1)
/// stays in front of ESP, then UDP.
fn with_routing_header(rtype: u8) -> (Vec<u8>, [u8; 16]) {
    let final_dst: std::net::Ipv6Addr = "2001:db8:99::9".parse().expect("addr");
    let mut rh = vec![17u8, 2, rtype, 1, 0, 0, 0, 0];
    rh.extend_from_slice(&final_dst.octets());
    rh.extend_from_slice(&udp(5000, 53, 30));
    (ipv6(43, 0, &rh), final_dst.octets())
}

#[test]
fn transport_udp_checksum_covers_the_final_destination_of_a_routing_header() {
    for rtype in [0u8, 2] {
        let (pkt, final_dst) = with_routing_header(rtype);
        let mut sa = transport_udp_sa(GCM);
        let prot = encrypt(&mut sa, &pkt).expect("encrypts");
        assert_eq!(prot[40], 17, "ESP in UDP after the Routing header");
        let u = &prot[64..];
        assert!(
            l4_checksum_ok(&prot[8..24], &final_dst, 17, u),
            "type {rtype}: checksum not over the final destination"
        );
        assert!(!l4_checksum_ok(&prot[8..24], &prot[24..40], 17, u));
    }
}

#[test]
fn unknown_routing_type_with_segments_left_is_refused_before_anything_changes() {
    let (pkt, _) = with_routing_header(3);
    let mut sa = transport_udp_sa(GCM);
    let mut buf = vec![0u8; 512 + pkt.len() + 512];
    buf[512..512 + pkt.len()].copy_from_slice(&pkt);
    let before = buf.clone();
    let mut p = PacketBuf::new(&mut buf, 512, pkt.len()).expect("in bounds");
    assert_eq!(
        sa.encrypt(&mut p, T0),
        Err(Error::Malformed(Malformed::BadExtensionHeader))
    );
    assert_eq!((p.offset(), p.len()), (512, pkt.len()));
    assert!(buf == before, "the buffer was changed");
    assert_eq!(sa.seq(), 0, "no sequence number used");
}

fn ident(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[4], p[5]])
}

fn flags(p: &[u8]) -> u16 {
    u16::from_be_bytes([p[6], p[7]])
}

#[test]
fn outer_ipv4_identification_counts_up_from_the_sa_randomness() {
    let mut iv = [0u8; 16];
    iv[..2].copy_from_slice(&[0xff, 0xfe]);
    let mut sa = tunnel_sa(false, false, |c| {
        c.iv_source(Box::new(FixedIv(iv)));
    });
    let ids: Vec<u16> = (0..4)
        .map(|_| ident(&encrypt(&mut sa, &inner_v4(40, 0)).expect("encrypts")))
        .collect();
    assert_eq!(ids, [0xfffe, 0xffff, 0x0000, 0x0001]);

    // Without an injected source: still consecutive, one per packet.
    let mut sa = tunnel_sa(false, true, |_| {});
    let first = ident(&encrypt(&mut sa, &inner_v4(40, 0)).expect("encrypts"));
    for n in 1..300u16 {
        let p = encrypt(&mut sa, &inner_v6(40, 0)).expect("encrypts");
        assert_eq!(ident(&p), first.wrapping_add(n));
        assert!(ipv4_checksum_ok(&p), "header checksum");
    }
}

/// An IPv4 packet like `inner_v4`, with DF set or clear.
fn inner_v4_df(df: bool) -> Vec<u8> {
    let mut p = inner_v4(60, 0);
    p[6] = if df { 0x40 } else { 0 };
    common::fix_ipv4_checksum(&mut p);
    p
}

#[test]
fn df_policy_copy_set_clear() {
    let cases: [(DfPolicy, [u16; 4]); 3] = [
        // inner IPv4 DF, inner IPv4 no DF, inner IPv6, dummy packet
        (DfPolicy::Copy, [0x4000, 0, 0x4000, 0x4000]),
        (DfPolicy::Set, [0x4000; 4]),
        (DfPolicy::Clear, [0; 4]),
    ];
    for (policy, want) in cases {
        for udp_encap in [false, true] {
            let mut sa = tunnel_sa(false, udp_encap, |c| {
                c.df(policy);
            });
            let mut got = [
                flags(&encrypt(&mut sa, &inner_v4_df(true)).expect("encrypts")),
                flags(&encrypt(&mut sa, &inner_v4_df(false)).expect("encrypts")),
                flags(&encrypt(&mut sa, &inner_v6(60, 0)).expect("encrypts")),
                0,
            ];
            let mut buf = vec![0u8; 512];
            let mut p = PacketBuf::new(&mut buf, 200, 40).expect("in bounds");
            sa.encrypt_dummy(&mut p, T0).expect("dummy");
            assert!(ipv4_checksum_ok(p.data()));
            got[3] = flags(p.data());
            assert_eq!(got, want, "{policy:?}, udp {udp_encap}");
        }
    }
}

#[test]
fn every_outer_ipv4_header_verifies_with_ident_and_flags() {
    for policy in [DfPolicy::Copy, DfPolicy::Set, DfPolicy::Clear] {
        let mut sa = tunnel_sa(false, true, |c| {
            c.df(policy);
        });
        for i in 0..200usize {
            let mut inner = inner_v4(i * 7, (i as u8).wrapping_mul(37));
            inner[6] = if i % 3 == 0 { 0x40 } else { 0 };
            common::fix_ipv4_checksum(&mut inner);
            let p = encrypt(&mut sa, &inner).expect("encrypts");
            assert!(ipv4_checksum_ok(&p), "{policy:?} packet {i}");
            assert_eq!(flags(&p) & 0xbfff, 0, "MF and fragment offset stay 0");
        }
    }
}

#[test]
fn transport_mode_keeps_the_packet_ident_and_flags() {
    let mut sa = transport_udp_sa(GCM);
    let inner = inner_v4_df(true);
    let p = encrypt(&mut sa, &inner).expect("encrypts");
    assert_eq!(&p[4..8], &inner[4..8]);
}

#[test]
fn df_is_configured_from_toml() {
    let file = |df: &str| {
        format!(
            "[[sa]]\nname = \"o\"\nspi = 4096\ndirection = \"outbound\"\nmode = \"tunnel\"\n\
             cipher = \"aes-128-gcm\"\nkey = \"{}\"\ntunnel_src = \"192.0.2.1\"\n\
             tunnel_dst = \"192.0.2.2\"\n{df}",
            "11".repeat(20)
        )
    };
    for (line, want) in [
        ("", 0x4000),
        ("df = \"copy\"", 0x4000),
        ("df = \"set\"", 0x4000),
        ("df = \"clear\"", 0),
    ] {
        let cfg = parse_sa_file(&file(line))
            .expect("parses")
            .pop()
            .expect("one SA")
            .config;
        let mut sa = SecurityAssociation::new(cfg, Duration::ZERO).expect("SA");
        // An IPv6 inner packet: DF under "copy" and "set", not under "clear".
        let p = encrypt(&mut sa, &inner_v6(10, 0)).expect("encrypts");
        assert_eq!(flags(&p), want, "{line}");
    }
    let err = parse_sa_file(&file("df = \"sometimes\"")).expect_err("bad value");
    assert!(err.field().contains("df"), "{err}");
    assert!(err.message().contains("sometimes"), "{err}");
}

#[test]
fn df_policy_names_round_trip() {
    for p in [DfPolicy::Copy, DfPolicy::Set, DfPolicy::Clear] {
        assert_eq!(DfPolicy::from_name(p.name()), Ok(p));
    }
    assert_eq!(DfPolicy::default(), DfPolicy::Copy);
    assert!(DfPolicy::from_name("on").is_err());
}

/// A TCP segment with a correct checksum still verifies after transport-mode ESP in
/// UDP over IPv6 and back (the library's UDP checksum is computed over the sealed
/// bytes, so it does not disturb the inner one).
#[test]
fn transport_ipv6_round_trip_with_tcp() {
    let mut tcp = vec![0u8; 20];
    tcp[0..4].copy_from_slice(&[0xc3, 0x50, 0x01, 0xbb]);
    tcp[12] = 5 << 4;
    tcp.extend_from_slice(b"hello through a NAT");
    let mut pkt = ipv6(6, 0, &tcp);
    set_l4_checksum(&mut pkt, 40, 16);
    let mut out = transport_udp_sa(GCM);
    let mut inb_cfg = config(0x5152, Direction::Inbound, Mode::Transport, GCM);
    inb_cfg.udp_encap(4500, 4500);
    let mut inb = SecurityAssociation::new(inb_cfg, T0).expect("inbound SA");
    let prot = encrypt(&mut out, &pkt).expect("encrypts");
    assert_eq!(common::decrypt(&mut inb, &prot).expect("decrypts"), pkt);
}
