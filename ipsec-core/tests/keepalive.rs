//! NAT-keepalives (RFC 3948 §2.3): what an outbound SA with UDP encapsulation owes its
//! peer after a silence, on the caller's clock, and what the keepalive looks like
//! (checked with this file's own checksum code; tests/python checks it with scapy).

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{FixedIv, config, inner_v4, inner_v6, ipv4_checksum_ok, l4_checksum_ok};
use ipsec_core::sa_file::parse_sa_file;
use ipsec_core::spd::Spd;
use ipsec_core::{
    Cipher, DfPolicy, Direction, Gateway, Integrity, Lifetime, Mode, NAT_KEEPALIVE_MAX_LEN,
    PacketBuf, SaConfig, SecurityAssociation,
};

const GCM: (Cipher, Option<Integrity>) = (Cipher::Aes128Gcm, None);
const START: Duration = Duration::from_secs(1000);

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn addr(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn outbound(
    mode: Mode,
    outer6: bool,
    configure: impl FnOnce(&mut SaConfig),
) -> SecurityAssociation {
    let mut cfg = config(0x7001, Direction::Outbound, mode, GCM);
    if mode == Mode::Tunnel {
        if outer6 {
            cfg.tunnel(addr("2001:db8:ffff::1"), addr("2001:db8:ffff::2"));
        } else {
            cfg.tunnel(addr("192.0.2.1"), addr("198.51.100.2"));
        }
    }
    cfg.udp_encap(4500, 4501);
    configure(&mut cfg);
    SecurityAssociation::new(cfg, START).expect("SA")
}

fn poll(sa: &mut SecurityAssociation, now: Duration) -> Option<Vec<u8>> {
    let mut out = [0u8; NAT_KEEPALIVE_MAX_LEN];
    sa.poll_keepalive(now, &mut out).map(|n| out[..n].to_vec())
}

fn send(sa: &mut SecurityAssociation, pkt: &[u8], now: Duration) -> Vec<u8> {
    let mut buf = vec![0u8; 512 + pkt.len() + 512];
    buf[512..512 + pkt.len()].copy_from_slice(pkt);
    let mut p = PacketBuf::new(&mut buf, 512, pkt.len()).expect("in bounds");
    sa.encrypt(&mut p, now).expect("encrypts");
    p.data().to_vec()
}

/// Checks everything about a keepalive `k` from `src` to `dst`; returns its UDP part.
fn check_keepalive<'a>(k: &'a [u8], src: &str, dst: &str) -> &'a [u8] {
    let (ip_len, s, d) = match (addr(src), addr(dst)) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            assert_eq!(k.len(), 29);
            assert_eq!(k[0], 0x45);
            assert_eq!(usize::from(u16::from_be_bytes([k[2], k[3]])), 29);
            assert_eq!(k[8], 64, "TTL");
            assert_eq!(k[9], 17, "protocol UDP");
            assert!(ipv4_checksum_ok(k), "IPv4 header checksum");
            (20, s.octets().to_vec(), d.octets().to_vec())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            assert_eq!(k.len(), 49);
            assert_eq!(k[0] >> 4, 6);
            assert_eq!(usize::from(u16::from_be_bytes([k[4], k[5]])), 9);
            assert_eq!(k[6], 17, "next header UDP");
            assert_eq!(k[7], 64, "hop limit");
            (40, s.octets().to_vec(), d.octets().to_vec())
        }
        _ => panic!("mixed families"),
    };
    let n = s.len();
    assert_eq!(&k[ip_len - 2 * n..ip_len - n], &s[..], "source address");
    assert_eq!(&k[ip_len - n..ip_len], &d[..], "destination address");
    let u = &k[ip_len..];
    assert_eq!(
        &u[..6],
        &[0x11, 0x94, 0x11, 0x95, 0, 9],
        "ports 4500 -> 4501, length 9"
    );
    assert_ne!(&u[6..8], &[0, 0], "a UDP checksum");
    assert!(l4_checksum_ok(&s, &d, 17, u), "UDP checksum verifies");
    assert_eq!(u[8], 0xff, "payload 0xFF");
    u
}

#[test]
fn tunnel_keepalive_is_due_after_20_s_of_silence() {
    let mut sa = outbound(Mode::Tunnel, false, |_| {});
    assert_eq!(sa.nat_keepalive_interval(), Some(Duration::from_secs(20)));
    assert_eq!(sa.next_keepalive(), Some(START + secs(20.0)));
    assert_eq!(poll(&mut sa, START), None);
    assert_eq!(poll(&mut sa, START + secs(19.999)), None);
    let k = poll(&mut sa, START + secs(20.0)).expect("due");
    check_keepalive(&k, "192.0.2.1", "198.51.100.2");
    assert_eq!(
        k[6] & 0x40,
        0x40,
        "DF: a packet without an inner IPv4 header"
    );
    // Sent: the next one is an interval later.
    assert_eq!(poll(&mut sa, START + secs(20.0)), None);
    assert_eq!(sa.next_keepalive(), Some(START + secs(40.0)));
    // A late poll sends one and counts from then.
    assert!(poll(&mut sa, START + secs(55.0)).is_some());
    assert_eq!(sa.next_keepalive(), Some(START + secs(75.0)));
    // No ESP packet was counted.
    assert_eq!(sa.stats().packets, 0);
    assert_eq!(sa.seq(), 0);
}

#[test]
fn every_packet_sent_postpones_the_keepalive() {
    let mut sa = outbound(Mode::Tunnel, false, |_| {});
    send(&mut sa, &inner_v4(30, 0), START + secs(15.0));
    assert_eq!(sa.next_keepalive(), Some(START + secs(35.0)));
    assert_eq!(poll(&mut sa, START + secs(34.0)), None);
    assert!(poll(&mut sa, START + secs(35.0)).is_some());
    let mut buf = vec![0u8; 512];
    let mut p = PacketBuf::new(&mut buf, 200, 20).expect("in bounds");
    sa.encrypt_dummy(&mut p, START + secs(50.0)).expect("dummy");
    assert_eq!(
        sa.next_keepalive(),
        Some(START + secs(70.0)),
        "a dummy packet counts"
    );
}

#[test]
fn keepalive_takes_the_next_ipv4_identification() {
    let mut iv = [0u8; 16];
    iv[..2].copy_from_slice(&[0x12, 0x34]);
    let mut sa = outbound(Mode::Tunnel, false, |c| {
        c.iv_source(Box::new(FixedIv(iv)));
    });
    let id = |p: &[u8]| u16::from_be_bytes([p[4], p[5]]);
    let first = send(&mut sa, &inner_v4(30, 0), START);
    let k = poll(&mut sa, START + secs(20.0)).expect("due");
    let next = send(&mut sa, &inner_v4(30, 0), START + secs(21.0));
    assert_eq!([id(&first), id(&k), id(&next)], [0x1234, 0x1235, 0x1236]);
}

#[test]
fn keepalive_df_follows_the_policy() {
    for (policy, df) in [
        (DfPolicy::Copy, 0x40),
        (DfPolicy::Set, 0x40),
        (DfPolicy::Clear, 0),
    ] {
        let mut sa = outbound(Mode::Tunnel, false, |c| {
            c.df(policy);
        });
        let k = poll(&mut sa, START + secs(20.0)).expect("due");
        assert_eq!(k[6], df, "{policy:?}");
        assert!(ipv4_checksum_ok(&k));
    }
}

#[test]
fn ipv6_tunnel_keepalive() {
    let mut sa = outbound(Mode::Tunnel, true, |c| {
        c.outer_ttl(64);
    });
    let k = poll(&mut sa, START + secs(20.0)).expect("due");
    check_keepalive(&k, "2001:db8:ffff::1", "2001:db8:ffff::2");
}

#[test]
fn interval_is_configurable_and_can_be_turned_off() {
    let mut sa = outbound(Mode::Tunnel, false, |c| {
        c.nat_keepalive_interval(Some(Duration::from_millis(2500)));
    });
    assert_eq!(sa.next_keepalive(), Some(START + secs(2.5)));
    assert!(poll(&mut sa, START + secs(2.5)).is_some());
    for off in [None, Some(Duration::ZERO)] {
        let mut sa = outbound(Mode::Tunnel, false, |c| {
            c.nat_keepalive_interval(off);
        });
        assert_eq!(sa.nat_keepalive_interval(), None);
        assert_eq!(sa.next_keepalive(), None);
        assert_eq!(poll(&mut sa, START + secs(3600.0)), None);
    }
}

#[test]
fn no_keepalives_without_udp_encapsulation_or_inbound() {
    let mut cfg = config(0x7002, Direction::Outbound, Mode::Tunnel, GCM);
    cfg.tunnel(addr("192.0.2.1"), addr("198.51.100.2"));
    let mut plain = SecurityAssociation::new(cfg, START).expect("SA");
    assert_eq!(plain.next_keepalive(), None);
    assert_eq!(poll(&mut plain, START + secs(100.0)), None);
    let mut cfg = config(0x7003, Direction::Inbound, Mode::Tunnel, GCM);
    cfg.udp_encap(4500, 4500);
    let mut inbound = SecurityAssociation::new(cfg, START).expect("SA");
    assert_eq!(inbound.next_keepalive(), None);
    assert_eq!(poll(&mut inbound, START + secs(100.0)), None);
}

#[test]
fn transport_mode_keepalives_start_with_the_first_packet() {
    for (inner, src, dst) in [
        (inner_v4(30, 0), "10.0.0.5", "10.1.2.3"),
        (inner_v6(30, 0), "2001:db8:1::5", "2001:db8:2::3"),
    ] {
        let mut sa = outbound(Mode::Transport, false, |_| {});
        assert_eq!(
            sa.next_keepalive(),
            None,
            "no addresses before the first packet"
        );
        assert_eq!(poll(&mut sa, START + secs(100.0)), None);
        send(&mut sa, &inner, START + secs(100.0));
        assert_eq!(sa.next_keepalive(), Some(START + secs(120.0)));
        let k = poll(&mut sa, START + secs(120.0)).expect("due");
        check_keepalive(&k, src, dst);
    }
}

#[test]
fn an_expired_sa_sends_no_keepalives() {
    let mut sa = outbound(Mode::Tunnel, false, |c| {
        c.hard_lifetime(Lifetime::NONE.with_time(Duration::from_secs(30)));
    });
    assert!(poll(&mut sa, START + secs(20.0)).is_some());
    assert_eq!(poll(&mut sa, START + secs(40.0)), None, "expired at 30 s");
    assert!(sa.is_expired());
    assert_eq!(sa.next_keepalive(), None);
}

#[test]
fn keepalive_interval_from_toml() {
    let file = |line: &str| {
        format!(
            "[[sa]]\nname = \"o\"\nspi = 4096\ndirection = \"outbound\"\nmode = \"tunnel\"\n\
             cipher = \"aes-128-gcm\"\nkey = \"{}\"\ntunnel_src = \"192.0.2.1\"\n\
             tunnel_dst = \"192.0.2.2\"\nudp_encap = [4500, 4500]\n{line}",
            "11".repeat(20)
        )
    };
    for (line, want) in [
        ("", Some(Duration::from_secs(20))),
        ("nat_keepalive_interval = 9", Some(Duration::from_secs(9))),
        ("nat_keepalive_interval = 0", None),
    ] {
        let cfg = parse_sa_file(&file(line))
            .expect("parses")
            .pop()
            .expect("one SA")
            .config;
        let sa = SecurityAssociation::new(cfg, START).expect("SA");
        assert_eq!(sa.nat_keepalive_interval(), want, "{line}");
    }
    let err = parse_sa_file(&file("nat_keepalive_interval = -1")).expect_err("negative");
    assert!(
        err.to_string().contains("sa \"o\"") && err.to_string().contains("-1"),
        "{err}"
    );
}

const GATEWAY: &str = r#"
[[policy]]
name = "branch"
direction = "both"
local = "10.0.0.0/24"
remote = "10.1.0.0/16"
action = "protect"
sa = ["natted-out", "natted-in"]

[[policy]]
name = "hq"
direction = "both"
local = "10.0.0.0/24"
remote = "10.2.0.0/16"
action = "protect"
sa = ["plain-out", "plain-in"]

[[sa]]
name = "plain-out"
spi = 0x2001
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "0100000000000000000000000000000000000000"
tunnel_src = "192.0.2.1"
tunnel_dst = "192.0.2.3"

[[sa]]
name = "plain-in"
spi = 0x2002
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "0200000000000000000000000000000000000000"

[[sa]]
name = "natted-out"
spi = 0x2003
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "0300000000000000000000000000000000000000"
tunnel_src = "192.0.2.1"
tunnel_dst = "198.51.100.2"
udp_encap = [4500, 4501]
nat_keepalive_interval = 15

[[sa]]
name = "natted-in"
spi = 0x2004
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "0400000000000000000000000000000000000000"
udp_encap = [4501, 4500]
"#;

#[test]
fn gateway_polls_the_keepalives_of_all_its_sas() {
    let spd = Spd::from_toml(GATEWAY).expect("policy file");
    let mut gw = Gateway::new(spd, START).expect("gateway");
    assert_eq!(gw.next_keepalive(), Some(START + secs(15.0)));
    let mut out = [0u8; NAT_KEEPALIVE_MAX_LEN];
    assert_eq!(gw.poll_keepalive(START + secs(14.0), &mut out), None);
    let (name, n) = gw
        .poll_keepalive(START + secs(15.0), &mut out)
        .expect("due");
    assert_eq!(name, "natted-out");
    check_keepalive(&out[..n], "192.0.2.1", "198.51.100.2");
    assert_eq!(
        gw.poll_keepalive(START + secs(15.0), &mut out),
        None,
        "drained"
    );
    assert_eq!(gw.next_keepalive(), Some(START + secs(30.0)));
}
