//! `Gateway::update_sa` (an IKE daemon's `update_sa`: a new NAT mapping, a MOBIKE
//! address change) and `SecurityAssociation::last_used` (its `query_sa` use time): an
//! SA moved to other endpoints goes on where it was (same keys, the next sequence
//! number, the same replay window and counters), its next packet carries the new outer
//! header, refused moves change nothing, and the use time follows traffic only.

use core::time::Duration;
use std::net::IpAddr;

use ipsec_core::gateway::{Inbound, Outbound};
use ipsec_core::{
    Cipher, ControlError, Direction, Error, Gateway, Mode, PacketBuf, SaConfig, SaLookup, Spd,
};

const ROOM: usize = 128;
const KEY_OUT: [u8; 20] = [0x11; 20];
const KEY_IN: [u8; 20] = [0x22; 20];

fn at(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

fn addr(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// The head office's LAN, then the branch's.
const HQ: (&str, &str) = ("10.0.0.0/24", "10.1.0.0/24");
/// The branch's LAN, then the head office's.
const BRANCH: (&str, &str) = ("10.1.0.0/24", "10.0.0.0/24");

/// A gateway with one PROTECT policy for `lans` (local, remote) through `out` and `in`,
/// and a final deny-all.
fn gateway(lans: (&str, &str), out: SaConfig, inb: SaConfig) -> Gateway {
    let spd = Spd::from_toml("[[policy]]\nname = \"deny\"\naction = \"discard\"\n").expect("spd");
    let mut gw = Gateway::new(spd, at(0)).expect("gateway");
    gw.add_sa("out", out, at(0)).expect("out");
    gw.add_sa("in", inb, at(0)).expect("in");
    let (local, remote) = lans;
    gw.install_policy(
        &format!(
            "name = \"lan\"\nlocal = \"{local}\"\nremote = \"{remote}\"\n\
             action = \"protect\"\nsa = [\"out\", \"in\"]\n"
        ),
        Some("deny"),
    )
    .expect("policy");
    gw
}

fn config(spi: u32, direction: Direction, key: &[u8]) -> SaConfig {
    let mut c = SaConfig::new(spi, direction, Mode::Tunnel, Cipher::Aes128Gcm, key);
    c.tunnel(addr("192.0.2.1"), addr("198.51.100.2"))
        .udp_encap(4500, 4500);
    c
}

/// A 40-byte TCP packet 10.0.0.5 -> 10.1.0.9 (or the other way) carrying `tag`.
fn inner(from_hq: bool, tag: u32) -> Vec<u8> {
    let (src, dst) = if from_hq {
        ([10, 0, 0, 5], [10, 1, 0, 9])
    } else {
        ([10, 1, 0, 9], [10, 0, 0, 5])
    };
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[24..28].copy_from_slice(&tag.to_be_bytes());
    ipsec_core::packet::set_ipv4_checksum(&mut p[..20]);
    p
}

/// `pkt` through `gw` outbound at `now`: the wire packet.
fn send(gw: &mut Gateway, pkt: &[u8], now: Duration) -> Vec<u8> {
    let mut buf = vec![0u8; ROOM + pkt.len() + ROOM];
    buf[ROOM..ROOM + pkt.len()].copy_from_slice(pkt);
    let mut p = PacketBuf::new(&mut buf, ROOM, pkt.len()).expect("in bounds");
    let r = gw.outbound(&mut p, now).expect("protected");
    assert!(matches!(r, Outbound::Protected { .. }), "{r:?}");
    p.data().to_vec()
}

/// `wire` through `gw` inbound at `now`: the inner packet, or why it was refused.
fn receive(gw: &mut Gateway, wire: &[u8], now: Duration) -> Result<Vec<u8>, Error> {
    let mut buf = wire.to_vec();
    let len = buf.len();
    let mut p = PacketBuf::new(&mut buf, 0, len).expect("in bounds");
    match gw.inbound(&mut p, now)? {
        Inbound::Decrypted { .. } => Ok(p.data().to_vec()),
        other => panic!("not decrypted: {other:?}"),
    }
}

/// The outer destination address, UDP destination port and ESP sequence number of an
/// IPv4 ESP-in-UDP packet.
fn outer(wire: &[u8]) -> (IpAddr, u16, u32) {
    assert_eq!(wire[9], 17, "UDP-encapsulated");
    let dst = IpAddr::from(<[u8; 4]>::try_from(&wire[16..20]).expect("4 bytes"));
    let port = u16::from_be_bytes([wire[22], wire[23]]);
    let seq = u32::from_be_bytes(wire[32..36].try_into().expect("4 bytes"));
    (dst, port, seq)
}

/// Head office and branch, each sending through `out` and receiving on `in`.
fn pair() -> (Gateway, Gateway) {
    let hq = gateway(
        HQ,
        config(0x1000, Direction::Outbound, &KEY_OUT),
        config(0x2000, Direction::Inbound, &KEY_IN),
    );
    let mut br_out = config(0x2000, Direction::Outbound, &KEY_IN);
    br_out.tunnel(addr("198.51.100.2"), addr("192.0.2.1"));
    let mut br_in = config(0x1000, Direction::Inbound, &KEY_OUT);
    br_in.tunnel(addr("198.51.100.2"), addr("192.0.2.1"));
    let br = gateway(BRANCH, br_out, br_in);
    (hq, br)
}

#[test]
fn an_outbound_sa_moved_to_a_new_mapping_goes_on_where_it_was() {
    let (mut hq, mut br) = pair();
    let first = send(&mut hq, &inner(true, 1), at(1));
    assert_eq!(outer(&first), (addr("198.51.100.2"), 4500, 1));
    receive(&mut br, &first, at(1)).expect("accepted");
    let before = hq.sa("out").expect("installed").stats();

    // The branch's NAT mapping changed: new address and port, same SA.
    hq.update_sa(
        "out",
        Some((addr("192.0.2.1"), addr("198.51.100.7"))),
        Some((4500, 31_000)),
        at(2),
    )
    .expect("moved");
    let moved = hq.sa("out").expect("still installed");
    assert_eq!(
        moved.tunnel(),
        Some((addr("192.0.2.1"), addr("198.51.100.7")))
    );
    assert_eq!(moved.udp_encap(), Some((4500, 31_000)));
    assert_eq!(moved.stats(), before, "counters carried over");
    assert_eq!(moved.seq(), 1, "the sequence number does not jump");

    let second = send(&mut hq, &inner(true, 2), at(3));
    assert_eq!(outer(&second), (addr("198.51.100.7"), 31_000, 2));
    assert_eq!(
        receive(&mut br, &second, at(3)).expect("same keys"),
        inner(true, 2)
    );
    assert!(
        matches!(receive(&mut br, &first, at(3)), Err(Error::Replayed { .. })),
        "the branch's window is not fooled"
    );
    assert_eq!(hq.sa("out").expect("installed").stats().packets, 2);
}

#[test]
fn an_inbound_sa_found_by_its_destination_is_found_by_the_new_one() {
    let mut inb = config(0x2000, Direction::Inbound, &KEY_IN);
    inb.tunnel(addr("198.51.100.2"), addr("192.0.2.1"))
        .lookup(SaLookup::SpiDestination);
    let mut hq = gateway(HQ, config(0x1000, Direction::Outbound, &KEY_OUT), inb);
    let mut br_out = config(0x2000, Direction::Outbound, &KEY_IN);
    br_out.tunnel(addr("198.51.100.2"), addr("192.0.2.1"));
    let mut br = gateway(
        BRANCH,
        br_out,
        config(0x3000, Direction::Inbound, &[0x33; 20]),
    );
    let to_old = send(&mut br, &inner(false, 1), at(1));
    receive(&mut hq, &to_old, at(1)).expect("found by 192.0.2.1");

    // Head office moved (MOBIKE) to 192.0.2.9: its inbound SA is found there now.
    hq.update_sa(
        "in",
        Some((addr("198.51.100.2"), addr("192.0.2.9"))),
        Some((4500, 4500)),
        at(2),
    )
    .expect("moved");
    br.update_sa(
        "out",
        Some((addr("198.51.100.2"), addr("192.0.2.9"))),
        Some((4500, 4500)),
        at(2),
    )
    .expect("moved");
    let to_new = send(&mut br, &inner(false, 2), at(3));
    assert_eq!(
        receive(&mut hq, &to_new, at(3)).expect("found"),
        inner(false, 2)
    );
    let stale = send(&mut br, &inner(false, 3), at(3));
    let mut stale = stale;
    stale[16..20].copy_from_slice(&[192, 0, 2, 1]);
    stale[10..12].fill(0);
    ipsec_core::packet::set_ipv4_checksum(&mut stale[..20]);
    assert!(matches!(
        receive(&mut hq, &stale, at(3)),
        Err(Error::UnknownSpi { .. })
    ));
    // The replay window moved with the SA: the first packet again is a replay.
    let mut again = to_new.clone();
    again[16..20].copy_from_slice(&[192, 0, 2, 9]);
    assert!(matches!(
        receive(&mut hq, &again, at(4)),
        Err(Error::Replayed { .. })
    ));
}

#[test]
fn a_refused_move_changes_nothing() {
    let (mut hq, _) = pair();
    send(&mut hq, &inner(true, 1), at(1));
    let before = (
        hq.sa("out").expect("out").stats(),
        hq.sa("out").expect("out").seq(),
    );
    assert_eq!(
        hq.update_sa("nope", None, None, at(2)).unwrap_err(),
        ControlError::UnknownSa {
            name: "nope".into()
        }
    );
    // Mixed families, and a tunnel-mode outbound SA without endpoints.
    for tunnel in [Some((addr("192.0.2.1"), addr("2001:db8::1"))), None] {
        let e = hq.update_sa("out", tunnel, None, at(2)).unwrap_err();
        assert!(
            matches!(&e, ControlError::Config(c) if c.field().starts_with("sa \"out\": tunnel")),
            "{e}"
        );
    }
    let e = hq
        .update_sa(
            "out",
            Some((addr("192.0.2.1"), addr("198.51.100.2"))),
            Some((0, 4500)),
            at(2),
        )
        .unwrap_err();
    assert!(
        matches!(&e, ControlError::Config(c) if c.field().contains("udp")),
        "{e}"
    );
    let out = hq.sa("out").expect("still installed");
    assert_eq!((out.stats(), out.seq()), before);
    assert_eq!(out.udp_encap(), Some((4500, 4500)));
    assert_eq!(
        out.tunnel(),
        Some((addr("192.0.2.1"), addr("198.51.100.2")))
    );
}

#[test]
fn the_use_time_follows_traffic_only() {
    let (mut hq, mut br) = pair();
    assert_eq!(hq.sa("out").expect("out").last_used(), None);
    assert_eq!(br.sa("in").expect("in").last_used(), None);
    let wire = send(&mut hq, &inner(true, 1), at(5));
    assert_eq!(hq.sa("out").expect("out").last_used(), Some(at(5)));
    receive(&mut br, &wire, at(7)).expect("accepted");
    assert_eq!(br.sa("in").expect("in").last_used(), Some(at(7)));
    // A replayed packet is refused: no use. A keepalive is not traffic either.
    assert!(matches!(
        receive(&mut br, &wire, at(9)),
        Err(Error::Replayed { .. })
    ));
    assert_eq!(br.sa("in").expect("in").last_used(), Some(at(7)));
    let mut ka = [0u8; ipsec_core::NAT_KEEPALIVE_MAX_LEN];
    while hq.poll_keepalive(at(3600), &mut ka).is_some() {}
    assert_eq!(hq.sa("out").expect("out").last_used(), Some(at(5)));
    // Carried over by a move.
    hq.update_sa(
        "out",
        Some((addr("192.0.2.1"), addr("198.51.100.7"))),
        Some((4500, 4500)),
        at(3700),
    )
    .expect("moved");
    assert_eq!(hq.sa("out").expect("out").last_used(), Some(at(5)));
}
