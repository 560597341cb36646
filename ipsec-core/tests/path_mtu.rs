//! Path MTU (RFC 4301 §8.2, RFC 4459): packets that do not fit after ESP are
//! pre-fragmented, post-fragmented or refused with the usable inner MTU, and an ICMP
//! "too big" about the SA's own packets lowers its path MTU until it ages out. Also:
//! a hard byte lifetime is never overshot.

mod common;

use bytes::BytesMut;
use common::{T0, config, inner_v4, inner_v6, ipv4, udp};
use core::time::Duration;
use ipsec_core::icmp::{self, ICMPV4_ERROR_MAX};
use ipsec_core::path_mtu::PMTU_AGING;
use ipsec_core::{
    Cipher, Direction, DropReason, Error, Integrity, Lifetime, LifetimeLimit, Malformed, Mode,
    PacketBuf, SaConfig, SaEvent, SecurityAssociation, SpareBuffers,
};
use std::net::IpAddr;

const GCM: (Cipher, Option<Integrity>) = (Cipher::Aes128Gcm, None);
const CBC: (Cipher, Option<Integrity>) = (Cipher::Aes128Cbc, Some(Integrity::HmacSha256_128));
const HEAD: usize = 128;
const SIZE: usize = 16384;

fn tunnel_pair(
    suite: (Cipher, Option<Integrity>),
    v6_outer: bool,
    mtu: Option<u16>,
) -> (SecurityAssociation, SecurityAssociation) {
    let mut out = config(0x3000, Direction::Outbound, Mode::Tunnel, suite);
    let (src, dst): (IpAddr, IpAddr) = if v6_outer {
        (
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        )
    } else {
        (
            "192.0.2.1".parse().unwrap(),
            "198.51.100.2".parse().unwrap(),
        )
    };
    out.tunnel(src, dst).path_mtu(mtu);
    let inb = config(0x3000, Direction::Inbound, Mode::Tunnel, suite);
    (
        SecurityAssociation::new(out, T0).unwrap(),
        SecurityAssociation::new(inb, T0).unwrap(),
    )
}

/// An IPv4 UDP packet of `total` bytes, DF as given.
fn v4_packet(total: usize, df: bool) -> Vec<u8> {
    let mut p = inner_v4(total - 28, 0);
    if !df {
        p[6] = 0;
        common::fix_ipv4_checksum(&mut p);
    }
    p
}

/// Encrypts `pkt` with `spares` spare buffers; returns the packets on the wire or the
/// error, and checks that a failure leaves the packet unchanged.
fn encrypt_all(
    sa: &mut SecurityAssociation,
    pkt: &[u8],
    spares: usize,
    now: Duration,
) -> Result<Vec<Vec<u8>>, Error> {
    let mut buf = vec![0u8; SIZE];
    buf[HEAD..HEAD + pkt.len()].copy_from_slice(pkt);
    let mut stores = vec![vec![0u8; SIZE]; spares];
    let mut bufs: Vec<PacketBuf<'_>> = stores
        .iter_mut()
        .map(|s| PacketBuf::new(s, HEAD, 0).unwrap())
        .collect();
    let mut pool = SpareBuffers::new(&mut bufs);
    let mut p = PacketBuf::new(&mut buf, HEAD, pkt.len()).unwrap();
    let seq = sa.seq();
    match sa.encrypt_fragmenting(&mut p, &mut pool, now) {
        Ok(n) => {
            assert_eq!(n, pool.used());
            let mut out = vec![p.data().to_vec()];
            out.extend(pool.filled().iter().map(|s| s.data().to_vec()));
            Ok(out)
        }
        Err(e) => {
            assert_eq!((p.offset(), p.data()), (HEAD, pkt), "unchanged after {e}");
            assert_eq!(pool.used(), 0);
            if !matches!(e, Error::SequenceOverflow) {
                assert_eq!(sa.seq(), seq, "no sequence number used by a refused packet");
            }
            Err(e)
        }
    }
}

/// A naive IPv4 reassembly of fragments of one datagram (in any order).
fn reassemble_v4(frags: &[Vec<u8>]) -> Vec<u8> {
    let mut data = vec![];
    let mut header = vec![];
    for f in frags {
        assert!(common::ipv4_checksum_ok(f), "fragment header checksum");
        let hl = usize::from(f[0] & 15) * 4;
        let off = usize::from(u16::from_be_bytes([f[6], f[7]]) & 0x1fff) * 8;
        if off == 0 {
            header = f[..hl].to_vec();
        }
        let end = off + f.len() - hl;
        if data.len() < end {
            data.resize(end, 0);
        }
        data[off..end].copy_from_slice(&f[hl..]);
    }
    let total = (header.len() + data.len()) as u16;
    header[2..4].copy_from_slice(&total.to_be_bytes());
    header[6] &= 0x40;
    header[7] = 0;
    common::fix_ipv4_checksum(&mut header);
    header.extend(data);
    header
}

/// A naive IPv6 reassembly of fragments whose unfragmentable part is the fixed header.
fn reassemble_v6(frags: &[Vec<u8>]) -> Vec<u8> {
    let mut data = vec![];
    let mut header = frags[0][..40].to_vec();
    for f in frags {
        assert_eq!(f[6], 44, "a Fragment header follows the IPv6 header");
        header[6] = f[40];
        let off = usize::from(u16::from_be_bytes([f[42], f[43]]) & !7);
        let end = off + f.len() - 48;
        if data.len() < end {
            data.resize(end, 0);
        }
        data[off..end].copy_from_slice(&f[48..]);
    }
    header[4..6].copy_from_slice(&(data.len() as u16).to_be_bytes());
    header.extend(data);
    header
}

#[test]
fn df_clear_ipv4_is_pre_fragmented_and_each_fragment_decrypts() {
    for suite in [GCM, CBC] {
        let (mut out, mut inb) = tunnel_pair(suite, false, Some(1400));
        let inner = v4_packet(3000, false);
        assert_eq!(out.spares_needed(&inner, T0), 2);
        let wire = encrypt_all(&mut out, &inner, 4, T0).expect("fragmented");
        assert_eq!(wire.len(), 3);
        let mut fragments = vec![];
        for (i, esp) in wire.iter().enumerate() {
            assert!(esp.len() <= 1400, "ESP packet {i}: {} bytes", esp.len());
            assert_eq!(esp[9], 50);
            fragments.push(common::decrypt(&mut inb, esp).expect("each decrypts"));
        }
        // Every fragment but the last fills the inner MTU to an 8-byte boundary.
        let inner_mtu = usize::from(out.inner_mtu(T0).unwrap());
        assert!(fragments[0].len() <= inner_mtu && fragments[0].len() + 8 > inner_mtu);
        assert_eq!(reassemble_v4(&fragments), inner);
        assert_eq!(out.stats().packets, 3, "one ESP packet per fragment");
        assert_eq!(out.seq(), 3);
        assert_eq!(out.stats().dropped_total(), 0);
    }
}

#[test]
fn the_inner_mtu_is_exact_and_df_set_packets_beyond_it_are_too_big() {
    for (suite, v6_outer, mtu) in [(GCM, false, 1400u16), (CBC, false, 1000), (GCM, true, 1280)] {
        let (mut out, _) = tunnel_pair(suite, v6_outer, Some(mtu));
        let inner_mtu = usize::from(out.inner_mtu(T0).unwrap());
        let fits = encrypt_all(&mut out, &v4_packet(inner_mtu, true), 0, T0).expect("fits");
        assert!(fits[0].len() <= usize::from(mtu));
        let before = common::drops(&out);
        let err = encrypt_all(&mut out, &v4_packet(inner_mtu + 1, true), 4, T0).unwrap_err();
        assert_eq!(
            err,
            Error::TooBig {
                inner_mtu: inner_mtu as u16
            }
        );
        common::assert_one_drop(&out, &before, DropReason::TooBig, "DF set");
    }
}

#[test]
fn fragmenting_without_spares_is_refused_and_counted() {
    let (mut out, _) = tunnel_pair(GCM, false, Some(1400));
    let inner = v4_packet(2000, false);
    let before = common::drops(&out);
    assert_eq!(
        encrypt_all(&mut out, &inner, 0, T0),
        Err(Error::NoSpareBuffers {
            needed: 1,
            available: 0
        })
    );
    common::assert_one_drop(&out, &before, DropReason::NoBufferSpace, "no spares");
    // The plain call says the same; an unconstrained packet is unaffected.
    assert!(matches!(
        common::encrypt(&mut out, &inner),
        Err(Error::NoSpareBuffers { .. })
    ));
    assert_eq!(
        common::encrypt(&mut out, &v4_packet(1000, false)).map(|p| p.len() <= 1400),
        Ok(true)
    );
}

#[test]
fn small_spares_are_refused_before_anything_changes() {
    let (mut out, _) = tunnel_pair(GCM, false, Some(1400));
    let inner = v4_packet(2000, false);
    let mut buf = vec![0u8; SIZE];
    buf[HEAD..HEAD + inner.len()].copy_from_slice(&inner);
    let mut small = vec![0u8; 300];
    let mut bufs = [PacketBuf::new(&mut small, HEAD, 0).unwrap()];
    let mut pool = SpareBuffers::new(&mut bufs);
    let mut p = PacketBuf::new(&mut buf, HEAD, inner.len()).unwrap();
    let err = out.encrypt_fragmenting(&mut p, &mut pool, T0).unwrap_err();
    assert!(matches!(err, Error::NoTailroom { .. }), "{err}");
    assert_eq!(p.data(), &inner[..]);
    assert_eq!((pool.used(), out.seq()), (0, 0));
}

#[test]
fn ipv6_inner_packets_get_too_big_of_at_least_1280_or_outer_fragments() {
    // IPv4 outer path of 1300 bytes: a 1280-byte IPv6 packet must still get through.
    let (mut out, mut inb) = tunnel_pair(GCM, false, Some(1300));
    let inner = inner_v6(1280 - 48, 0);
    assert_eq!(inner.len(), 1280);
    let wire = encrypt_all(&mut out, &inner, 2, T0).expect("outer fragments");
    assert_eq!(wire.len(), 2);
    for w in &wire {
        assert!(w.len() <= 1300);
    }
    let esp = reassemble_v4(&wire);
    assert_eq!(common::decrypt(&mut inb, &esp).unwrap(), inner);
    assert_eq!(
        out.stats().packets,
        1,
        "one ESP packet, in two IP fragments"
    );
    // Larger IPv6 packets: too big, and never below the IPv6 minimum MTU.
    let err = encrypt_all(&mut out, &inner_v6(1400, 0), 4, T0).unwrap_err();
    assert_eq!(err, Error::TooBig { inner_mtu: 1280 });
    // An IPv6 outer path: the usable inner MTU is reported as it is.
    let (mut out6, _) = tunnel_pair(GCM, true, Some(1500));
    let mtu = out6.inner_mtu(T0).unwrap();
    assert_eq!(
        encrypt_all(&mut out6, &inner_v6(1500, 0), 4, T0).unwrap_err(),
        Error::TooBig { inner_mtu: mtu }
    );
    assert!((1280..1500 - 40).contains(&mtu));
}

#[test]
fn ipv6_outer_fragments_have_a_fragment_header() {
    // A 1280-byte IPv6 inner packet over an IPv6 outer path of 1280: the ESP packet is
    // cut into IPv6 fragments.
    let (mut out, mut inb) = tunnel_pair(GCM, true, Some(1280));
    let inner = inner_v6(1280 - 48, 0);
    let wire = encrypt_all(&mut out, &inner, 2, T0).expect("fragments");
    assert_eq!(wire.len(), 2);
    for w in &wire {
        assert!(w.len() <= 1280);
    }
    assert_ne!(&wire[0][44..48], &[0, 0, 0, 0], "an identification is set");
    let esp = reassemble_v6(&wire);
    assert_eq!(esp[6], 50);
    assert_eq!(common::decrypt(&mut inb, &esp).unwrap(), inner);
}

#[test]
fn transport_mode_fragments_the_esp_packet_or_refuses_df() {
    let mut cfg = config(0x3100, Direction::Outbound, Mode::Transport, GCM);
    cfg.path_mtu(Some(600));
    let mut out = SecurityAssociation::new(cfg, T0).unwrap();
    let mut inb =
        SecurityAssociation::new(config(0x3100, Direction::Inbound, Mode::Transport, GCM), T0)
            .unwrap();
    let inner = v4_packet(1500, false);
    let wire = encrypt_all(&mut out, &inner, 4, T0).expect("post-fragmented");
    assert_eq!(wire.len(), 3);
    for w in &wire {
        assert!(w.len() <= 600);
        assert_eq!(&w[4..6], &inner[4..6], "the host's own IP ID is kept");
    }
    let esp = reassemble_v4(&wire);
    assert_eq!(esp[9], 50);
    let back = common::decrypt(&mut inb, &esp).unwrap();
    assert_eq!(back[20..], inner[20..]);
    let mtu = out.inner_mtu(T0).unwrap();
    assert_eq!(
        encrypt_all(&mut out, &v4_packet(1500, true), 4, T0),
        Err(Error::TooBig { inner_mtu: mtu })
    );
}

/// Builds the ICMP "fragmentation needed" a router at 203.0.113.9 would send about the
/// ESP packet `esp`, reporting `mtu`.
fn icmp_about(esp: &[u8], mtu: u16) -> Vec<u8> {
    // too_big_reply answers the packet's source: our tunnel source, as a router does.
    let mut out = [0u8; ICMPV4_ERROR_MAX];
    let n = icmp::too_big_reply(esp, mtu, "203.0.113.9".parse().unwrap(), &mut out)
        .unwrap()
        .unwrap();
    out[..n].to_vec()
}

#[test]
fn icmp_about_our_own_packets_lowers_the_path_mtu_until_it_ages_out() {
    let (mut out, _) = tunnel_pair(GCM, false, Some(1500));
    let esp = common::encrypt(&mut out, &v4_packet(1400, true)).unwrap();
    let t = Duration::from_secs(100);
    assert_eq!(out.handle_icmp(&icmp_about(&esp, 1400), t), Ok(Some(1400)));
    assert_eq!(out.path_mtu(t), Some(1400));
    assert_eq!(
        out.handle_icmp(&icmp_about(&esp, 1450), t),
        Ok(None),
        "not lower"
    );
    // A 1400-byte inner packet with DF no longer fits.
    let err = encrypt_all(&mut out, &v4_packet(1400, true), 0, t).unwrap_err();
    assert!(matches!(err, Error::TooBig { inner_mtu } if inner_mtu < 1400));
    // Tiny reported MTUs are floored.
    assert_eq!(out.handle_icmp(&icmp_about(&esp, 100), t), Ok(Some(552)));
    // Ten minutes later the configured value is back, and the packet fits again.
    let later = t + PMTU_AGING;
    assert_eq!(out.path_mtu(later), Some(1500));
    assert!(encrypt_all(&mut out, &v4_packet(1400, true), 0, later).is_ok());
}

#[test]
fn forged_or_foreign_icmp_is_ignored() {
    let (mut out, _) = tunnel_pair(GCM, false, None);
    let esp = common::encrypt(&mut out, &v4_packet(1000, true)).unwrap();
    let not_ours = Err(Error::Malformed(Malformed::NotPathMtuMessage));
    // Another SPI.
    let mut other = esp.clone();
    other[20..24].copy_from_slice(&0x9999u32.to_be_bytes());
    assert_eq!(out.handle_icmp(&icmp_about(&other, 576), T0), not_ours);
    // A sequence number never sent.
    let mut future = esp.clone();
    future[24..28].copy_from_slice(&77u32.to_be_bytes());
    assert_eq!(out.handle_icmp(&icmp_about(&future, 576), T0), not_ours);
    // Another tunnel.
    let mut elsewhere = esp.clone();
    elsewhere[16..20].copy_from_slice(&[198, 51, 100, 77]);
    common::fix_ipv4_checksum(&mut elsewhere);
    assert_eq!(out.handle_icmp(&icmp_about(&elsewhere, 576), T0), not_ours);
    // A broken checksum, and something that is not a too-big message at all.
    let mut bad = icmp_about(&esp, 576);
    bad[30] ^= 1;
    assert_eq!(
        out.handle_icmp(&bad, T0),
        Err(Error::Malformed(Malformed::BadIpChecksum))
    );
    assert_eq!(out.handle_icmp(&esp, T0), not_ours);
    assert_eq!(out.path_mtu(T0), None);
    assert_eq!(
        out.stats().dropped_total(),
        0,
        "ICMP is not the SA's traffic"
    );
    // The real message is taken.
    assert_eq!(out.handle_icmp(&icmp_about(&esp, 576), T0), Ok(Some(576)));
}

#[test]
fn a_burst_fills_spares_in_packet_order() {
    let (mut out, mut inb) = tunnel_pair(GCM, false, Some(1000));
    let inputs = [
        v4_packet(2500, false),
        v4_packet(500, false),
        v4_packet(1500, false),
    ];
    let mut bufs: Vec<Vec<u8>> = inputs
        .iter()
        .map(|p| {
            let mut b = vec![0u8; SIZE];
            b[HEAD..HEAD + p.len()].copy_from_slice(p);
            b
        })
        .collect();
    let mut pkts: Vec<PacketBuf<'_>> = bufs
        .iter_mut()
        .zip(&inputs)
        .map(|(b, p)| PacketBuf::new(b, HEAD, p.len()).unwrap())
        .collect();
    let mut stores = vec![vec![0u8; SIZE]; 5];
    let mut spare_bufs: Vec<PacketBuf<'_>> = stores
        .iter_mut()
        .map(|s| PacketBuf::new(s, HEAD, 0).unwrap())
        .collect();
    let mut pool = SpareBuffers::new(&mut spare_bufs);
    let mut results = [Ok(0), Ok(0), Ok(0)];
    assert_eq!(
        out.encrypt_burst_fragmenting(&mut pkts, &mut results, &mut pool, T0),
        3
    );
    assert_eq!(results, [Ok(2), Ok(0), Ok(1)]);
    let filled = pool.filled();
    let groups = [
        vec![pkts[0].data(), filled[0].data(), filled[1].data()],
        vec![pkts[1].data()],
        vec![pkts[2].data(), filled[2].data()],
    ];
    for (group, input) in groups.iter().zip(&inputs) {
        let frags: Vec<Vec<u8>> = group
            .iter()
            .map(|w| common::decrypt(&mut inb, w).unwrap())
            .collect();
        let whole = if frags.len() == 1 {
            frags[0].clone()
        } else {
            reassemble_v4(&frags)
        };
        assert_eq!(&whole, input);
    }
}

#[test]
fn bytes_mut_fragmenting_returns_the_extra_packets() {
    let (mut out, mut inb) = tunnel_pair(CBC, false, Some(1200));
    let inner = v4_packet(3000, false);
    let mut packet = BytesMut::from(&inner[..]);
    let extra = out.encrypt_bytes_fragmenting(&mut packet, T0).unwrap();
    assert_eq!(extra.len(), 2);
    let frags: Vec<Vec<u8>> = std::iter::once(&packet)
        .chain(&extra)
        .map(|p| {
            assert!(p.len() <= 1200);
            common::decrypt(&mut inb, p).unwrap()
        })
        .collect();
    assert_eq!(reassemble_v4(&frags), inner);
    // A packet that fits comes back alone.
    let mut small = BytesMut::from(&v4_packet(100, false)[..]);
    assert!(
        out.encrypt_bytes_fragmenting(&mut small, T0)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn path_mtu_below_the_family_minimum_is_a_config_error() {
    let mut cfg = config(0x3000, Direction::Outbound, Mode::Tunnel, GCM);
    cfg.tunnel(
        "2001:db8::1".parse().unwrap(),
        "2001:db8::2".parse().unwrap(),
    )
    .path_mtu(Some(1000));
    assert_eq!(
        SecurityAssociation::new(cfg, T0).unwrap_err().field(),
        "path_mtu"
    );
    let (mut out, _) = tunnel_pair(GCM, false, None);
    assert!(out.set_path_mtu(Some(60)).is_err());
    assert!(out.set_path_mtu(Some(576)).is_ok());
    assert_eq!(out.path_mtu(T0), Some(576));
}

fn byte_limited(dir: Direction, hard: u64, soft: u64) -> SecurityAssociation {
    let mut cfg: SaConfig = config(0x3200, dir, Mode::Tunnel, GCM);
    if dir == Direction::Outbound {
        cfg.tunnel(
            "192.0.2.1".parse().unwrap(),
            "198.51.100.2".parse().unwrap(),
        );
    }
    cfg.hard_lifetime(Lifetime::NONE.with_bytes(hard))
        .soft_lifetime(Lifetime::NONE.with_bytes(soft));
    SecurityAssociation::new(cfg, T0).unwrap()
}

#[test]
fn a_hard_byte_lifetime_is_never_overshot() {
    let mut out = byte_limited(Direction::Outbound, 1000, 500);
    let mut inb = byte_limited(Direction::Inbound, 1000, 500);
    let pkt = v4_packet(400, true);
    for _ in 0..2 {
        common::encrypt(&mut out, &pkt).expect("within the lifetime");
    }
    assert_eq!(
        out.poll_event(T0),
        Some(SaEvent::Rekey(LifetimeLimit::Bytes))
    );
    // 800 + 400 would cross 1000: refused, and the SA expires.
    assert_eq!(
        common::encrypt(&mut out, &pkt),
        Err(Error::LifetimeExpired(LifetimeLimit::Bytes))
    );
    assert_eq!(out.stats().bytes, 800);
    assert_eq!(
        out.poll_event(T0),
        Some(SaEvent::Expired(LifetimeLimit::Bytes))
    );
    assert!(out.is_expired());
    assert_eq!(
        common::encrypt(&mut out, &v4_packet(40, true)),
        Err(Error::LifetimeExpired(LifetimeLimit::Bytes))
    );
    assert_eq!(out.stats().dropped(DropReason::LifetimeExpired), 2);

    // Inbound: the same limit on decrypted bytes. A sender without the limit sends
    // three; the third is refused after its ICV verified.
    let mut sender = byte_limited(Direction::Outbound, u64::MAX, u64::MAX - 1);
    for i in 0..3 {
        let esp = common::encrypt(&mut sender, &pkt).unwrap();
        let r = common::decrypt(&mut inb, &esp);
        if i < 2 {
            assert_eq!(r.unwrap(), pkt);
        } else {
            assert_eq!(r, Err(Error::LifetimeExpired(LifetimeLimit::Bytes)));
        }
    }
    assert_eq!(inb.stats().bytes, 800);
    assert!(inb.is_expired());
    assert_eq!(inb.stats().dropped(DropReason::LifetimeExpired), 1);
}

#[test]
fn fragments_count_against_the_lifetimes_as_a_whole() {
    let mut cfg = config(0x3300, Direction::Outbound, Mode::Tunnel, GCM);
    cfg.tunnel(
        "192.0.2.1".parse().unwrap(),
        "198.51.100.2".parse().unwrap(),
    )
    .path_mtu(Some(1000))
    .hard_lifetime(Lifetime::NONE.with_packets(4));
    let mut out = SecurityAssociation::new(cfg, T0).unwrap();
    assert_eq!(
        encrypt_all(&mut out, &v4_packet(2500, false), 4, T0)
            .unwrap()
            .len(),
        3
    );
    // Three more fragments would make six packets: refused as a whole.
    assert_eq!(
        encrypt_all(&mut out, &v4_packet(2500, false), 4, T0),
        Err(Error::LifetimeExpired(LifetimeLimit::Packets))
    );
    assert_eq!(out.stats().packets, 3);
}

#[test]
fn an_unlimited_sa_is_not_affected() {
    let (mut out, mut inb) = tunnel_pair(GCM, false, None);
    let big = ipv4([10, 0, 0, 5], [10, 1, 2, 3], 17, 0, &udp(1, 2, 9000));
    let esp = encrypt_all(&mut out, &big, 0, T0).unwrap();
    assert_eq!(esp.len(), 1);
    assert_eq!(common::decrypt(&mut inb, &esp[0]).unwrap(), big);
    assert_eq!(out.spares_needed(&big, T0), 0);
}
