//! Outer fragments reaching an SA directly: ESP is removed from whole packets only, and
//! transport mode protects whole datagrams only (RFC 4303 §3.3). IPv4 fragments were
//! refused already; these tests hold the IPv6 side to the same rule: a packet with a
//! Fragment header that is not an atomic fragment (RFC 6946) is `Malformed::Fragment`,
//! counted as `malformed`, whatever lies behind the Fragment header.

mod common;

use common::{T0, config, drops, encrypt, inner_v4, ipv6, udp};
use ipsec_core::{
    Cipher, Direction, DropReason, Error, Malformed, Mode, PacketBuf, SecurityAssociation,
};
use std::net::IpAddr;

const SUITE: (Cipher, Option<ipsec_core::Integrity>) = (Cipher::Aes128Gcm, None);

/// An IPv6-outer tunnel pair (2001:db8:ffff::1 -> ::2).
fn v6_tunnel_pair() -> (SecurityAssociation, SecurityAssociation) {
    let mut out = config(0x4242, Direction::Outbound, Mode::Tunnel, SUITE);
    out.tunnel(
        "2001:db8:ffff::1".parse::<IpAddr>().expect("addr"),
        "2001:db8:ffff::2".parse::<IpAddr>().expect("addr"),
    );
    let inb = config(0x4242, Direction::Inbound, Mode::Tunnel, SUITE);
    (
        SecurityAssociation::new(out, T0).expect("outbound SA"),
        SecurityAssociation::new(inb, T0).expect("inbound SA"),
    )
}

/// `pkt` (an IPv6 packet without extension headers) with a Fragment header inserted
/// after its fixed header, carrying `payload_range` of its payload at `offset` with the
/// M flag `more`.
fn with_fragment_header(
    pkt: &[u8],
    payload_range: core::ops::Range<usize>,
    offset: usize,
    more: bool,
) -> Vec<u8> {
    let payload = &pkt[40..];
    let part = &payload[payload_range];
    let mut out = pkt[..40].to_vec();
    out[4..6].copy_from_slice(&((8 + part.len()) as u16).to_be_bytes());
    let nh = out[6];
    out[6] = 44;
    let off_m = ((offset / 8) as u16) << 3 | u16::from(more);
    out.extend_from_slice(&[nh, 0]);
    out.extend_from_slice(&off_m.to_be_bytes());
    out.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    out.extend_from_slice(part);
    out
}

fn decrypt_at(sa: &mut SecurityAssociation, pkt: &[u8]) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; 16 + pkt.len()];
    buf[16..].copy_from_slice(pkt);
    let mut p = PacketBuf::new(&mut buf, 16, pkt.len())?;
    sa.decrypt(&mut p, T0)?;
    Ok(p.data().to_vec())
}

#[test]
fn decrypt_refuses_outer_ipv6_fragments_as_malformed_fragment() {
    let (mut out, mut inb) = v6_tunnel_pair();
    let inner = inner_v4(300, 0);
    let esp = encrypt(&mut out, &inner).expect("encrypt");
    assert_eq!((esp[0] >> 4, esp[6]), (6, 50), "outer IPv6 carrying ESP");
    let n = esp.len() - 40;
    let cut = (n / 2) & !7;

    let cases: [(&str, Vec<u8>); 3] = [
        // The whole ESP packet, but flagged "more fragments follow": before this fix it
        // was decrypted as if whole.
        (
            "whole packet, M=1",
            with_fragment_header(&esp, 0..n, 0, true),
        ),
        // A real first fragment: was tried as ESP and counted auth_failed.
        (
            "first fragment",
            with_fragment_header(&esp, 0..cut, 0, true),
        ),
        // A later fragment: its first bytes were read as an SPI (unknown_spi).
        (
            "last fragment",
            with_fragment_header(&esp, cut..n, cut, false),
        ),
    ];
    for (i, (what, pkt)) in cases.iter().enumerate() {
        let before = drops(&inb);
        let got = decrypt_at(&mut inb, pkt);
        assert_eq!(got, Err(Error::Malformed(Malformed::Fragment)), "{what}");
        common::assert_one_drop(&inb, &before, DropReason::Malformed, what);
        assert_eq!(inb.stats().packets, 0, "{what}: nothing decrypted ({i})");
    }

    // A Hop-by-Hop header in front of the Fragment header changes nothing.
    let first = with_fragment_header(&esp, 0..n, 0, true);
    let mut hbh = first[..40].to_vec();
    hbh[6] = 0; // Hop-by-Hop
    hbh[4..6].copy_from_slice(&((first.len() - 40 + 8) as u16).to_be_bytes());
    hbh.extend_from_slice(&[44, 0, 1, 4, 0, 0, 0, 0]); // next = Fragment, PadN
    hbh.extend_from_slice(&first[40..]);
    assert_eq!(
        decrypt_at(&mut inb, &hbh),
        Err(Error::Malformed(Malformed::Fragment)),
        "Hop-by-Hop, then Fragment"
    );

    // An atomic fragment (offset 0, M clear) is a whole packet (RFC 6946): decrypted.
    let atomic = with_fragment_header(&esp, 0..n, 0, false);
    assert_eq!(decrypt_at(&mut inb, &atomic), Ok(inner));
    assert_eq!(inb.stats().packets, 1);
    assert_eq!(inb.stats().dropped(DropReason::Malformed), 4);
}

#[test]
fn transport_encapsulation_refuses_ipv6_fragments_like_ipv4_ones() {
    let mut cfg = config(0x4243, Direction::Outbound, Mode::Transport, SUITE);
    cfg.padding(ipsec_core::EspPadding::Minimal);
    let mut sa = SecurityAssociation::new(cfg, T0).expect("SA");
    let whole = ipv6(17, 0, &udp(5000, 53, 64));
    let n = whole.len() - 40;

    for (what, pkt) in [
        (
            "IPv6 first fragment",
            with_fragment_header(&whole, 0..32, 0, true),
        ),
        (
            "IPv6 last fragment",
            with_fragment_header(&whole, 32..n, 32, false),
        ),
    ] {
        let before = drops(&sa);
        assert_eq!(
            encrypt(&mut sa, &pkt),
            Err(Error::Malformed(Malformed::Fragment)),
            "{what}"
        );
        common::assert_one_drop(&sa, &before, DropReason::Malformed, what);
    }

    // IPv4: refused as before (MF set).
    let mut v4 = inner_v4(64, 0);
    v4[6] = 0x20;
    common::fix_ipv4_checksum(&mut v4);
    assert_eq!(
        encrypt(&mut sa, &v4),
        Err(Error::Malformed(Malformed::Fragment))
    );

    // An atomic fragment is a whole datagram: protected, Fragment header in front of ESP.
    let atomic = with_fragment_header(&whole, 0..n, 0, false);
    let esp = encrypt(&mut sa, &atomic).expect("atomic fragment is protected");
    assert_eq!((esp[6], esp[40]), (44, 50), "Fragment header, then ESP");
    assert_eq!(sa.stats().packets, 1);
}
