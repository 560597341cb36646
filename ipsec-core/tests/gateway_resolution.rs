//! The gateway's packet path remembers names it resolved (the outbound SA a PROTECT
//! policy sends through, the first policy an inbound SA serves) so that it does not
//! hash them for every packet. These tests change SAs and policies between packets and
//! check that the very next packet follows the change, as if nothing were remembered.

use core::time::Duration;
use std::net::IpAddr;

use ipsec_core::gateway::{Inbound, Outbound};
use ipsec_core::{Cipher, Direction, Error, Gateway, Mode, PacketBuf, SaConfig, Spd};

const ROOM: usize = 128;

fn at(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

fn addr(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// A plain ESP tunnel SA (no NAT-T: the inbound path's common case).
fn config(spi: u32, direction: Direction, key_byte: u8) -> SaConfig {
    let mut c = SaConfig::new(
        spi,
        direction,
        Mode::Tunnel,
        Cipher::Aes128Gcm,
        &[key_byte; 20],
    );
    c.tunnel(addr("192.0.2.1"), addr("198.51.100.2"));
    c
}

/// A gateway with a final deny-all only.
fn empty_gateway() -> Gateway {
    let spd = Spd::from_toml("[[policy]]\nname = \"deny\"\naction = \"discard\"\n").expect("spd");
    Gateway::new(spd, at(0)).expect("gateway")
}

fn policy(name: &str, local: &str, remote: &str, out: &str, inb: &str) -> String {
    format!(
        "name = \"{name}\"\nlocal = \"{local}\"\nremote = \"{remote}\"\n\
         action = \"protect\"\nsa = [\"{out}\", \"{inb}\"]\n"
    )
}

/// A 40-byte TCP packet `src` -> `dst` carrying `tag`.
fn inner(src: [u8; 4], dst: [u8; 4], tag: u32) -> Vec<u8> {
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

/// `pkt` through `gw` outbound: the name of the SA that protected it and the wire
/// packet's SPI, or why it was refused.
fn send(gw: &mut Gateway, pkt: &[u8]) -> Result<(String, u32), Error> {
    let mut buf = vec![0u8; ROOM + pkt.len() + ROOM];
    buf[ROOM..ROOM + pkt.len()].copy_from_slice(pkt);
    let mut p = PacketBuf::new(&mut buf, ROOM, pkt.len()).expect("in bounds");
    let sa = match gw.outbound(&mut p, at(1))? {
        Outbound::Protected { sa, .. } => sa.to_owned(),
        other => panic!("not protected: {other:?}"),
    };
    let wire = p.data();
    assert_eq!(wire[9], 50, "ESP");
    Ok((
        sa,
        u32::from_be_bytes(wire[20..24].try_into().expect("4 bytes")),
    ))
}

/// `pkt` through `gw` outbound: the wire packet.
fn wire(gw: &mut Gateway, pkt: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; ROOM + pkt.len() + ROOM];
    buf[ROOM..ROOM + pkt.len()].copy_from_slice(pkt);
    let mut p = PacketBuf::new(&mut buf, ROOM, pkt.len()).expect("in bounds");
    gw.outbound(&mut p, at(1)).expect("protected");
    p.data().to_vec()
}

/// `wire` through `gw` inbound: the SA and policy it was accepted under.
fn receive(gw: &mut Gateway, wire: &[u8]) -> Result<(String, String), Error> {
    let mut buf = wire.to_vec();
    let len = buf.len();
    let mut p = PacketBuf::new(&mut buf, 0, len).expect("in bounds");
    match gw.inbound(&mut p, at(1))? {
        Inbound::Decrypted { sa, policy } => Ok((sa.to_owned(), policy.to_owned())),
        other => panic!("not decrypted: {other:?}"),
    }
}

const LOCAL: [u8; 4] = [10, 0, 0, 5];
const REMOTE: [u8; 4] = [10, 1, 0, 9];

#[test]
fn outbound_packets_follow_rekeys_and_policy_changes_at_once() {
    let mut gw = empty_gateway();
    gw.add_sa("out", config(0x1000, Direction::Outbound, 1), at(0))
        .expect("out");
    gw.add_sa("in", config(0x2000, Direction::Inbound, 2), at(0))
        .expect("in");
    gw.install_policy(
        &policy("lan", "10.0.0.0/24", "10.1.0.0/24", "out", "in"),
        Some("deny"),
    )
    .expect("policy");
    let pkt = inner(LOCAL, REMOTE, 7);
    for _ in 0..3 {
        assert_eq!(send(&mut gw, &pkt), Ok(("out".to_owned(), 0x1000)));
    }
    // Make-before-break: the policy sends through the successor from the next packet.
    gw.rekey_sa("out", "out2", config(0x1001, Direction::Outbound, 3), at(1))
        .expect("rekeyed");
    for _ in 0..3 {
        assert_eq!(send(&mut gw, &pkt), Ok(("out2".to_owned(), 0x1001)));
    }
    // The policy moved to another SA.
    gw.add_sa("out3", config(0x1002, Direction::Outbound, 4), at(1))
        .expect("out3");
    gw.replace_policy(&policy("lan", "10.0.0.0/24", "10.1.0.0/24", "out3", "in"))
        .expect("replaced");
    for _ in 0..3 {
        assert_eq!(send(&mut gw, &pkt), Ok(("out3".to_owned(), 0x1002)));
    }
    // A policy before it now takes the packet, through yet another SA.
    gw.add_sa("out4", config(0x1003, Direction::Outbound, 5), at(1))
        .expect("out4");
    gw.install_policy(
        &policy("host", "10.0.0.5", "10.1.0.0/16", "out4", "in"),
        Some("lan"),
    )
    .expect("installed");
    assert_eq!(send(&mut gw, &pkt), Ok(("out4".to_owned(), 0x1003)));
    gw.rebuild_policies();
    assert_eq!(send(&mut gw, &pkt), Ok(("out4".to_owned(), 0x1003)));
    // Both gone: the deny-all decides.
    gw.remove_policy("host").expect("removed");
    gw.remove_policy("lan").expect("removed");
    assert_eq!(send(&mut gw, &pkt), Err(Error::PolicyDiscard));
}

#[test]
fn many_policies_each_send_through_their_own_sa() {
    // More PROTECT policies than the gateway remembers routes for, packets of all of
    // them interleaved: each packet leaves through its policy's SA.
    let mut gw = empty_gateway();
    gw.add_sa("in", config(0x2000, Direction::Inbound, 2), at(0))
        .expect("in");
    let n = 21u8;
    for k in 0..n {
        let name = format!("out{k}");
        gw.add_sa(
            &name,
            config(0x3000 + u32::from(k), Direction::Outbound, 0x40 + k),
            at(0),
        )
        .expect("out");
        let remote = format!("10.1.{k}.0/24");
        gw.install_policy(
            &policy(&format!("p{k}"), "10.0.0.0/24", &remote, &name, "in"),
            Some("deny"),
        )
        .expect("policy");
    }
    for round in 0..3u32 {
        for k in (0..n).rev().chain(0..n).step_by(3) {
            let pkt = inner(LOCAL, [10, 1, k, 9], round);
            assert_eq!(
                send(&mut gw, &pkt),
                Ok((format!("out{k}"), 0x3000 + u32::from(k))),
                "round {round}, policy p{k}"
            );
        }
    }
}

/// Head office (receiving) and branch (sending) with one tunnel for 10.1.0.0/24 (the
/// branch) <-> 10.0.0.0/24 (head office).
fn pair() -> (Gateway, Gateway) {
    let mut hq = empty_gateway();
    hq.add_sa("out", config(0x1000, Direction::Outbound, 1), at(0))
        .expect("out");
    hq.add_sa("in", config(0x2000, Direction::Inbound, 2), at(0))
        .expect("in");
    hq.install_policy(
        &policy("lan", "10.0.0.0/24", "10.1.0.0/24", "out", "in"),
        Some("deny"),
    )
    .expect("policy");
    let mut br = empty_gateway();
    br.add_sa("out", config(0x2000, Direction::Outbound, 2), at(0))
        .expect("out");
    br.add_sa("in", config(0x1000, Direction::Inbound, 1), at(0))
        .expect("in");
    br.install_policy(
        &policy("lan", "10.1.0.0/24", "10.0.0.0/24", "out", "in"),
        Some("deny"),
    )
    .expect("policy");
    (hq, br)
}

#[test]
fn inbound_policy_checks_follow_policy_changes_at_once() {
    let (mut hq, mut br) = pair();
    let from_branch = |br: &mut Gateway, tag| wire(br, &inner(REMOTE, LOCAL, tag));
    for tag in 0..3 {
        let w = from_branch(&mut br, tag);
        assert_eq!(
            receive(&mut hq, &w),
            Ok(("in".to_owned(), "lan".to_owned()))
        );
    }
    // A policy with the same selectors and SA before it: the first one in order is
    // the answer.
    hq.install_policy(
        &policy("lan0", "10.0.0.0/24", "10.1.0.0/24", "out", "in"),
        Some("lan"),
    )
    .expect("installed");
    for tag in 3..6 {
        let w = from_branch(&mut br, tag);
        assert_eq!(
            receive(&mut hq, &w),
            Ok(("in".to_owned(), "lan0".to_owned()))
        );
    }
    // Narrowed so that it no longer covers the packet: the next policy the SA serves.
    hq.replace_policy(&policy("lan0", "10.0.0.0/24", "10.1.7.0/24", "out", "in"))
        .expect("replaced");
    for tag in 6..9 {
        let w = from_branch(&mut br, tag);
        assert_eq!(
            receive(&mut hq, &w),
            Ok(("in".to_owned(), "lan".to_owned()))
        );
    }
    hq.rebuild_policies();
    let w = from_branch(&mut br, 9);
    assert_eq!(
        receive(&mut hq, &w),
        Ok(("in".to_owned(), "lan".to_owned()))
    );
    // Narrowed too: no policy of the SA covers the packet any more.
    hq.replace_policy(&policy("lan", "10.0.0.0/24", "10.1.7.0/24", "out", "in"))
        .expect("replaced");
    let w = from_branch(&mut br, 10);
    assert_eq!(receive(&mut hq, &w), Err(Error::PolicyMismatch));
    assert_eq!(
        hq.sa("in")
            .expect("installed")
            .stats()
            .dropped(ipsec_core::DropReason::PolicyMismatch),
        1
    );
    // Widened again, and the SA rekeyed: the successor serves the same policies.
    hq.replace_policy(&policy("lan", "10.0.0.0/24", "10.1.0.0/16", "out", "in"))
        .expect("replaced");
    hq.rekey_sa("in", "in2", config(0x2001, Direction::Inbound, 5), at(1))
        .expect("rekeyed");
    br.rekey_sa("out", "out2", config(0x2001, Direction::Outbound, 5), at(1))
        .expect("rekeyed");
    for tag in 11..14 {
        let w = from_branch(&mut br, tag);
        assert_eq!(
            receive(&mut hq, &w),
            Ok(("in2".to_owned(), "lan".to_owned()))
        );
    }
}

#[test]
fn short_or_fragmented_plain_esp_takes_the_general_path() {
    let (mut hq, mut br) = pair();
    let w = wire(&mut br, &inner(REMOTE, LOCAL, 1));
    // Cut to 22 bytes (an IPv4 header and half an SPI), lengths consistent.
    let mut short = w[..22].to_vec();
    short[2..4].copy_from_slice(&22u16.to_be_bytes());
    short[10..12].fill(0);
    ipsec_core::packet::set_ipv4_checksum(&mut short[..20]);
    assert!(matches!(receive(&mut hq, &short), Err(Error::Malformed(_))));
    // A first fragment of the same ESP packet is held for reassembly.
    let mut frag = w.clone();
    frag[6] |= 0x20;
    frag[10..12].fill(0);
    ipsec_core::packet::set_ipv4_checksum(&mut frag[..20]);
    let len = frag.len();
    let mut p = PacketBuf::new(&mut frag, 0, len).expect("in bounds");
    assert_eq!(hq.inbound(&mut p, at(1)), Ok(Inbound::Reassembling));
    // The packet itself is accepted.
    assert_eq!(
        receive(&mut hq, &w),
        Ok(("in".to_owned(), "lan".to_owned()))
    );
}
