//! Transport mode behind a NAT (RFC 3948 §3.1.2): a NAT rewrites the addresses of a
//! UDP-encapsulated transport-mode packet but cannot fix the TCP/UDP checksum inside the
//! encrypted payload. After decapsulation the SA brings that checksum in line with the
//! received addresses: incrementally from the NAT original addresses when it has them,
//! by a full recomputation otherwise. Checked with this file's own checksum code
//! (tests/python checks the same with scapy).

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{
    T0, config, decrypt, encrypt, fix_ipv4_checksum, ipv4, ipv6, l4_checksum_ok, set_l4_checksum,
    udp,
};
use ipsec_core::sa_file::parse_sa_file;
use ipsec_core::{Cipher, Direction, Integrity, Mode, SaConfig, SecurityAssociation};

const SUITE: (Cipher, Option<Integrity>) = (Cipher::Aes256Gcm, None);
/// The peer's own address (behind its NAT) and ours.
const PEER_PRIVATE: [u8; 4] = [10, 0, 0, 5];
const OURS: [u8; 4] = [198, 51, 100, 2];
/// The peer's NAT's public address, and our private address behind our own NAT.
const PEER_PUBLIC: [u8; 4] = [203, 0, 113, 77];
const OURS_PRIVATE: [u8; 4] = [192, 168, 1, 20];

fn addr(a: [u8; 4]) -> IpAddr {
    IpAddr::from(a)
}

fn outbound() -> SecurityAssociation {
    let mut cfg = config(0x6001, Direction::Outbound, Mode::Transport, SUITE);
    cfg.udp_encap(4500, 4500);
    SecurityAssociation::new(cfg, T0).expect("outbound SA")
}

fn inbound(configure: impl FnOnce(&mut SaConfig)) -> SecurityAssociation {
    let mut cfg = config(0x6001, Direction::Inbound, Mode::Transport, SUITE);
    cfg.udp_encap(4500, 4500);
    configure(&mut cfg);
    SecurityAssociation::new(cfg, T0).expect("inbound SA")
}

/// A TCP segment with `n` bytes of data.
fn tcp(n: usize) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..4].copy_from_slice(&[0xc2, 0x44, 0x0d, 0x3d]); // 49732 -> 3389
    t[4..8].copy_from_slice(&0x1a2b_3c4du32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x18;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t.extend((0..n).map(|i| (i * 31 + 7) as u8));
    t
}

/// `payload` over IPv4 from the peer's own address to ours, checksum correct there.
fn original_v4(proto: u8, payload: &[u8], field: usize) -> Vec<u8> {
    let mut p = ipv4(PEER_PRIVATE, OURS, proto, 0, payload);
    set_l4_checksum(&mut p, 20, field);
    p
}

/// What the NATs do: rewrite the source (and here also the destination) address of
/// the outer = transport header and fix the IPv4 header checksum; the encrypted
/// checksum inside cannot be fixed.
fn nat(prot: &mut [u8], src: [u8; 4], dst: [u8; 4]) {
    prot[12..16].copy_from_slice(&src);
    prot[16..20].copy_from_slice(&dst);
    fix_ipv4_checksum(prot);
}

fn received(inner: &[u8], dst: [u8; 4], sa: &mut SecurityAssociation) -> Vec<u8> {
    let mut prot = encrypt(&mut outbound(), inner).expect("encrypts");
    assert_eq!(prot[9], 17, "ESP in UDP");
    nat(&mut prot, PEER_PUBLIC, dst);
    decrypt(sa, &prot).expect("decrypts")
}

fn verifies(p: &[u8], proto: u8) -> bool {
    l4_checksum_ok(&p[12..16], &p[16..20], proto, &p[20..])
}

#[test]
fn tcp_checksum_is_updated_from_the_nat_original_addresses() {
    for n in [0usize, 1, 33, 1000] {
        for our_side in [OURS, OURS_PRIVATE] {
            let inner = original_v4(6, &tcp(n), 16);
            let mut sa = inbound(|c| {
                c.nat_original_addresses(addr(PEER_PRIVATE), addr(OURS));
            });
            let got = received(&inner, our_side, &mut sa);
            assert_eq!(&got[12..16], &PEER_PUBLIC, "the received addresses stay");
            assert!(verifies(&got, 6), "n {n}: TCP checksum does not verify");
            // Only the checksum changed.
            assert_eq!(got[20..36], inner[20..36]);
            assert_eq!(got[38..], inner[38..]);
        }
    }
}

#[test]
fn wrong_nat_original_addresses_give_a_wrong_checksum() {
    // Proves the incremental update is what ran (a recomputation would verify).
    let inner = original_v4(6, &tcp(40), 16);
    let mut sa = inbound(|c| {
        c.nat_original_addresses(addr([10, 0, 0, 99]), addr(OURS));
    });
    let got = received(&inner, OURS, &mut sa);
    assert!(!verifies(&got, 6));
}

#[test]
fn without_nat_original_addresses_the_checksum_is_recomputed() {
    for (proto, payload, field) in [(6u8, tcp(77), 16usize), (17, udp(5000, 53, 77), 6)] {
        let inner = original_v4(proto, &payload, field);
        let mut sa = inbound(|_| {});
        let got = received(&inner, OURS_PRIVATE, &mut sa);
        assert!(verifies(&got, proto), "protocol {proto}");
    }
}

#[test]
fn udp_over_ipv4_without_checksum_stays_without() {
    for with_oa in [false, true] {
        let inner = ipv4(PEER_PRIVATE, OURS, 17, 0, &udp(5000, 53, 20));
        let mut sa = inbound(|c| {
            if with_oa {
                c.nat_original_addresses(addr(PEER_PRIVATE), addr(OURS));
            }
        });
        let got = received(&inner, OURS, &mut sa);
        assert_eq!(&got[26..28], &[0, 0]);
    }
}

#[test]
fn udp_checksum_that_comes_out_zero_is_sent_as_ffff() {
    // The payload whose checksum over the received addresses is 0 (0xffff on the wire).
    let mut hits = 0;
    for k in 0..=0xffffu32 {
        let mut payload = udp(5000, 53, 2);
        payload[8..10].copy_from_slice(&(k as u16).to_be_bytes());
        let mut inner = ipv4(PEER_PRIVATE, OURS, 17, 0, &payload);
        set_l4_checksum(&mut inner, 20, 6);
        // Only those whose checksum over the received addresses would be 0.
        let mut moved = inner.clone();
        moved[12..16].copy_from_slice(&PEER_PUBLIC);
        set_l4_checksum(&mut moved, 20, 6);
        if moved[26..28] != [0xff, 0xff] {
            continue;
        }
        for with_oa in [false, true] {
            let mut sa = inbound(|c| {
                if with_oa {
                    c.nat_original_addresses(addr(PEER_PRIVATE), addr(OURS));
                }
            });
            let got = received(&inner, OURS, &mut sa);
            assert_eq!(&got[26..28], &[0xff, 0xff], "k {k:#x}, NAT-OA {with_oa}");
        }
        hits += 1;
    }
    // Exactly one value of the varied word makes the sum come out 0.
    assert_eq!(hits, 1);
}

#[test]
fn ipv6_udp_and_icmpv6_checksums_follow_the_received_addresses() {
    let original_src: std::net::Ipv6Addr = "2001:db8:1::5".parse().expect("addr");
    let original_dst: std::net::Ipv6Addr = "2001:db8:2::3".parse().expect("addr");
    let translated: std::net::Ipv6Addr = "2001:db8:77::5".parse().expect("addr");
    let mut icmp = vec![128u8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(b"ping through NAT66");
    for (proto, payload, field) in [(17u8, udp(5000, 53, 40), 6usize), (58, icmp, 2)] {
        for with_oa in [false, true] {
            let mut inner = ipv6(proto, 0, &payload);
            set_l4_checksum(&mut inner, 40, field);
            let mut prot = encrypt(&mut outbound(), &inner).expect("encrypts");
            prot[8..24].copy_from_slice(&translated.octets());
            let mut sa = inbound(|c| {
                if with_oa {
                    c.nat_original_addresses(original_src.into(), original_dst.into());
                }
            });
            let got = decrypt(&mut sa, &prot).expect("decrypts");
            assert_eq!(&got[8..24], &translated.octets());
            assert!(
                l4_checksum_ok(&got[8..24], &got[24..40], proto, &got[40..]),
                "protocol {proto}, NAT-OA {with_oa}"
            );
        }
    }
}

#[test]
fn plain_esp_is_left_alone() {
    // No UDP: no NAT on the way, nothing to fix (even a wrong checksum stays).
    let mut cfg = config(0x6002, Direction::Outbound, Mode::Transport, SUITE);
    let mut out = SecurityAssociation::new(cfg, T0).expect("SA");
    cfg = config(0x6002, Direction::Inbound, Mode::Transport, SUITE);
    cfg.nat_original_addresses(addr(PEER_PRIVATE), addr(OURS));
    let mut inb = SecurityAssociation::new(cfg, T0).expect("SA");
    let mut inner = original_v4(6, &tcp(10), 16);
    inner[36] ^= 0x55;
    let prot = encrypt(&mut out, &inner).expect("encrypts");
    assert_eq!(decrypt(&mut inb, &prot).expect("decrypts"), inner);
}

#[test]
fn nat_original_addresses_only_on_inbound_transport_sas() {
    let oa = |c: &mut SaConfig| {
        c.nat_original_addresses(addr(PEER_PRIVATE), addr(OURS));
    };
    let mut out = config(0x6003, Direction::Outbound, Mode::Transport, SUITE);
    oa(&mut out);
    let mut tunnel = config(0x6003, Direction::Inbound, Mode::Tunnel, SUITE);
    oa(&mut tunnel);
    let mut mixed = config(0x6003, Direction::Inbound, Mode::Transport, SUITE);
    mixed.nat_original_addresses(addr(PEER_PRIVATE), "2001:db8::1".parse().expect("addr"));
    for cfg in [out, tunnel, mixed] {
        let err = SecurityAssociation::new(cfg, T0).expect_err("refused");
        assert_eq!(err.field(), "nat_original_addresses");
    }
    let mut ok = config(0x6003, Direction::Inbound, Mode::Transport, SUITE);
    oa(&mut ok);
    let sa = SecurityAssociation::new(ok, T0).expect("SA");
    assert_eq!(
        sa.nat_original_addresses(),
        Some((addr(PEER_PRIVATE), addr(OURS)))
    );
}

#[test]
fn nat_original_addresses_from_toml() {
    let file = |line: &str| {
        format!(
            "[[sa]]\nname = \"i\"\nspi = 4096\ndirection = \"inbound\"\nmode = \"transport\"\n\
             cipher = \"aes-128-gcm\"\nkey = \"{}\"\nudp_encap = [4500, 4500]\n{line}",
            "11".repeat(20)
        )
    };
    let cfg = parse_sa_file(&file(
        "nat_original_addresses = [\"10.0.0.5\", \"198.51.100.2\"]",
    ))
    .expect("parses")
    .pop()
    .expect("one SA")
    .config;
    let sa = SecurityAssociation::new(cfg, Duration::ZERO).expect("SA");
    assert_eq!(
        sa.nat_original_addresses(),
        Some((addr(PEER_PRIVATE), addr(OURS)))
    );
    let err = parse_sa_file(&file(
        "nat_original_addresses = [\"10.0.0.500\", \"198.51.100.2\"]",
    ))
    .expect_err("bad address");
    assert!(err.field().contains("nat_original_addresses"), "{err}");
}
