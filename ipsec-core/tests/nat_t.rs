//! RFC 3948 receive side: on the NAT-T port, a one-byte 0xFF payload is a NAT
//! keepalive and a payload starting with four zero bytes (the non-ESP marker) is IKE.
//! Neither is ESP: both are refused with their own reason, counted, and never confused
//! with an authentication failure.

use ipsec_core::{
    Cipher, Direction, DropReason, Error, Malformed, Mode, PacketBuf, SaConfig, SecurityAssociation,
};
use std::time::Duration;

const KEY: [u8; 20] = [0x5a; 20];

fn inbound() -> SecurityAssociation {
    let mut cfg = SaConfig::new(
        0x4242,
        Direction::Inbound,
        Mode::Tunnel,
        Cipher::Aes128Gcm,
        &KEY,
    );
    cfg.udp_encap(4500, 4500);
    SecurityAssociation::new(cfg, Duration::ZERO).expect("valid SA")
}

/// An IPv4/UDP packet to port 4500 carrying `payload`, with a correct header checksum.
fn udp4500(payload: &[u8]) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[198, 51, 100, 2]);
    p[16..20].copy_from_slice(&[192, 0, 2, 1]);
    ipsec_core::packet::set_ipv4_checksum(&mut p[..20]);
    p[20..22].copy_from_slice(&4500u16.to_be_bytes());
    p[22..24].copy_from_slice(&4500u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

fn decrypt(sa: &mut SecurityAssociation, pkt: &[u8]) -> Result<Vec<u8>, Error> {
    let mut buf = pkt.to_vec();
    let mut p = PacketBuf::new(&mut buf, 0, pkt.len()).expect("in bounds");
    sa.decrypt(&mut p, Duration::ZERO)?;
    Ok(p.data().to_vec())
}

#[test]
fn keepalive_is_recognised_and_counted() {
    let mut sa = inbound();
    assert_eq!(
        decrypt(&mut sa, &udp4500(&[0xff])),
        Err(Error::Malformed(Malformed::NatKeepalive))
    );
    assert_eq!(sa.stats().dropped(DropReason::NatKeepalive), 1);
    assert_eq!(sa.stats().dropped(DropReason::Malformed), 0);
    assert_eq!(sa.stats().dropped(DropReason::AuthFailed), 0);
}

#[test]
fn non_esp_marker_is_ike_not_esp() {
    let mut sa = inbound();
    // Non-ESP marker followed by the start of an IKE header.
    let mut ike = vec![0, 0, 0, 0];
    ike.extend_from_slice(&[0x11; 28]);
    assert_eq!(
        decrypt(&mut sa, &udp4500(&ike)),
        Err(Error::Malformed(Malformed::NonEspMarker))
    );
    assert_eq!(sa.stats().dropped(DropReason::Malformed), 1);
    assert_eq!(sa.stats().dropped(DropReason::UnknownSpi), 0);
}

#[test]
fn udp_esp_round_trip_still_works_beside_them() {
    let mut out_cfg = SaConfig::new(
        0x4242,
        Direction::Outbound,
        Mode::Tunnel,
        Cipher::Aes128Gcm,
        &KEY,
    );
    out_cfg
        .tunnel(
            "198.51.100.2".parse().unwrap(),
            "192.0.2.1".parse().unwrap(),
        )
        .udp_encap(4500, 4500);
    let mut out = SecurityAssociation::new(out_cfg, Duration::ZERO).unwrap();
    let mut inb = inbound();
    let inner = udp4500(b"inner payload");
    let mut buf = vec![0u8; 256];
    buf[100..100 + inner.len()].copy_from_slice(&inner);
    let mut p = PacketBuf::new(&mut buf, 100, inner.len()).unwrap();
    out.encrypt(&mut p, Duration::ZERO).unwrap();
    let wire = p.data().to_vec();
    assert_eq!(wire[9], 17, "outer protocol UDP");
    assert_eq!(
        &wire[20..24],
        &[0x11, 0x94, 0x11, 0x94],
        "ports 4500 -> 4500"
    );
    assert!(
        decrypt(&mut inb, &[0xffu8][..]).is_err(),
        "a lone byte is no IP packet"
    );
    assert_eq!(
        decrypt(&mut inb, &udp4500(&[0xff])),
        Err(Error::Malformed(Malformed::NatKeepalive))
    );
    assert_eq!(decrypt(&mut inb, &wire).unwrap(), inner);
    assert_eq!(inb.stats().packets, 1);
    assert_eq!(inb.stats().dropped_total(), 2);
}
