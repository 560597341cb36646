//! Encrypt then decrypt across the whole configuration space: every cipher suite x
//! tunnel/transport x IPv4/IPv6 inner x IPv4/IPv6 outer x NAT-T x ESN, with the outer
//! headers checked field by field; IPv6 extension headers, TFC padding, DSCP/ECN
//! (RFC 4301 §5.1.2.1, RFC 6040), the `BytesMut` convenience calls and bursts.

mod common;

use std::net::IpAddr;

use bytes::BytesMut;
use common::{
    T0, checksum, config, inner_v4, inner_v6, ipv4_checksum_ok, ipv6, l4_checksum_ok, pair, udp,
};
use ipsec_core::sa::TfcPadding;
use ipsec_core::{
    Cipher, Direction, DropReason, Error, Integrity, Malformed, Mode, PacketBuf,
    SecurityAssociation,
};

fn suite_name(s: (Cipher, Option<Integrity>)) -> String {
    match s.1 {
        Some(i) => format!("{}+{}", s.0.name(), i.name()),
        None => s.0.name().to_owned(),
    }
}

const V4_SRC: &str = "192.0.2.1";
const V4_DST: &str = "198.51.100.2";
const V6_SRC: &str = "2001:db8:ffff::1";
const V6_DST: &str = "2001:db8:ffff::2";

#[derive(Clone, Copy, Debug)]
struct Case {
    suite: (Cipher, Option<Integrity>),
    mode: Mode,
    inner6: bool,
    outer6: bool,
    natt: bool,
    esn: bool,
}

/// Checks the outer headers of `prot` (sequence number `seq`); returns the ESP offset.
fn check_outer(c: &Case, prot: &[u8], plain: &[u8], seq: u64) -> Result<usize, String> {
    let v6 = prot[0] >> 4 == 6;
    let mut off;
    let proto;
    if !v6 {
        if !ipv4_checksum_ok(prot) {
            return Err("outer IPv4 checksum invalid".into());
        }
        if usize::from(u16::from_be_bytes([prot[2], prot[3]])) != prot.len() {
            return Err("IPv4 total length".into());
        }
        let want_ttl = if c.mode == Mode::Tunnel { 64 } else { plain[8] };
        if prot[8] != want_ttl {
            return Err(format!("TTL {} want {want_ttl}", prot[8]));
        }
        if c.mode == Mode::Transport && prot[12..20] != plain[12..20] {
            return Err("transport addresses changed".into());
        }
        proto = prot[9];
        off = 20;
    } else {
        if usize::from(u16::from_be_bytes([prot[4], prot[5]])) + 40 != prot.len() {
            return Err("IPv6 payload length".into());
        }
        let want_hl = if c.mode == Mode::Tunnel { 64 } else { plain[7] };
        if prot[7] != want_hl {
            return Err(format!("hop limit {} want {want_hl}", prot[7]));
        }
        let mut nh = prot[6];
        off = 40;
        while matches!(nh, 0 | 43 | 60) {
            nh = prot[off];
            off += (usize::from(prot[off + 1]) + 1) * 8;
        }
        proto = nh;
    }
    if v6
        != (if c.mode == Mode::Tunnel {
            c.outer6
        } else {
            c.inner6
        })
    {
        return Err("outer family".into());
    }
    if c.natt {
        if proto != 17 {
            return Err(format!("protocol {proto}, want UDP"));
        }
        let u = &prot[off..off + 8];
        if u[0..4] != [0x11, 0x94, 0x11, 0x94] {
            return Err("UDP ports not 4500".into());
        }
        if usize::from(u16::from_be_bytes([u[4], u[5]])) != prot.len() - off {
            return Err("UDP length".into());
        }
        if !v6 && u[6..8] != [0, 0] {
            return Err("UDP checksum over IPv4 not 0 (RFC 3948 §2.1)".into());
        }
        if v6 && u[6..8] == [0, 0] {
            return Err("UDP checksum 0 over IPv6 (RFC 8200 §8.1 forbids it)".into());
        }
        if v6 && !l4_checksum_ok(&prot[8..24], &prot[24..40], 17, &prot[off..]) {
            return Err("UDP checksum over IPv6 does not verify".into());
        }
        off += 8;
    } else if proto != 50 {
        return Err(format!("protocol {proto}, want ESP"));
    }
    if prot[off..off + 4] != 0x2345u32.to_be_bytes() {
        return Err("SPI".into());
    }
    if prot[off + 4..off + 8] != (seq as u32).to_be_bytes() {
        return Err(format!("wire seq, want {seq:#x}"));
    }
    Ok(off)
}

fn run_case(c: &Case) -> Result<(), String> {
    let mut ocfg = config(0x2345, Direction::Outbound, c.mode, c.suite);
    let mut icfg = config(0x2345, Direction::Inbound, c.mode, c.suite);
    let start: u64 = if c.esn { (1 << 32) - 2 } else { 1000 };
    ocfg.esn(c.esn).seq(start);
    icfg.esn(c.esn).seq(start);
    if c.mode == Mode::Tunnel {
        let (s, d) = if c.outer6 {
            (V6_SRC, V6_DST)
        } else {
            (V4_SRC, V4_DST)
        };
        ocfg.tunnel(
            s.parse::<IpAddr>().expect("addr"),
            d.parse::<IpAddr>().expect("addr"),
        );
    }
    if c.natt {
        ocfg.udp_encap(4500, 4500);
        icfg.udp_encap(4500, 4500);
    }
    let mut out = SecurityAssociation::new(ocfg, T0).map_err(|e| e.to_string())?;
    let mut inb = SecurityAssociation::new(icfg, T0).map_err(|e| e.to_string())?;
    for (i, n) in [0usize, 1, 2, 3, 17, 100, 1300].into_iter().enumerate() {
        let plain = if c.inner6 {
            inner_v6(n, 0x28)
        } else {
            inner_v4(n, 0x28)
        };
        let prot = common::encrypt(&mut out, &plain).map_err(|e| format!("encrypt {n}: {e}"))?;
        let seq = start + 1 + i as u64;
        check_outer(c, &prot, &plain, seq).map_err(|e| format!("{n}-byte payload: {e}"))?;
        if c.mode == Mode::Tunnel && !c.outer6 && prot[1] != 0x28 {
            return Err(format!("outer TOS {:#x}, want DSCP copied 0x28", prot[1]));
        }
        let back = common::decrypt(&mut inb, &prot).map_err(|e| format!("decrypt {n}: {e}"))?;
        if back != plain {
            return Err(format!(
                "{n}-byte payload: decrypt gave {} want {}",
                common::to_hex(&back),
                common::to_hex(&plain)
            ));
        }
        if inb.seq() != seq {
            return Err(format!("inbound highest {:#x} want {seq:#x}", inb.seq()));
        }
    }
    if inb.stats().packets != 7 || inb.stats().dropped_total() != 0 {
        return Err(format!("inbound stats {:?}", inb.stats()));
    }
    Ok(())
}

#[test]
fn every_suite_mode_family_natt_and_esn_round_trips() {
    let mut failures = Vec::new();
    let mut n = 0;
    for suite in common::all_suites() {
        for esn in [false, true] {
            for natt in [false, true] {
                for inner6 in [false, true] {
                    for outer6 in [false, true] {
                        let c = Case {
                            suite,
                            mode: Mode::Tunnel,
                            inner6,
                            outer6,
                            natt,
                            esn,
                        };
                        n += 1;
                        if let Err(e) = run_case(&c) {
                            failures.push(format!("{} {c:?}: {e}", suite_name(suite)));
                        }
                    }
                    let c = Case {
                        suite,
                        mode: Mode::Transport,
                        inner6,
                        outer6: inner6,
                        natt,
                        esn,
                    };
                    n += 1;
                    if let Err(e) = run_case(&c) {
                        failures.push(format!("{} {c:?}: {e}", suite_name(suite)));
                    }
                }
            }
        }
    }
    assert_eq!(n, 17 * 4 * 6);
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// IPv6 | Hop-by-Hop (8) | Destination Options (8) | UDP.
fn v6_hbh_dstopt(n: usize) -> Vec<u8> {
    let mut ext = vec![60, 0, 1, 4, 0, 0, 0, 0]; // HbH: PadN; next = DestOpts
    ext.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]); // DestOpts: PadN; next = UDP
    ext.extend_from_slice(&udp(1000, 2000, n));
    ipv6(0, 0, &ext)
}

#[test]
fn ipv6_transport_with_hop_by_hop_and_destination_options() {
    for suite in common::all_suites() {
        let name = suite_name(suite);
        let (mut out, mut inb) = pair(0x2345, Mode::Transport, suite);
        for n in [0, 5, 64, 999] {
            let plain = v6_hbh_dstopt(n);
            let prot = common::encrypt(&mut out, &plain).expect(&name);
            // Fixed header and Hop-by-Hop stay in clear, ESP follows Hop-by-Hop.
            assert_eq!(prot[..4], plain[..4], "{name}: version/class/flow");
            assert_eq!(prot[6], 0, "{name}: first header still Hop-by-Hop");
            assert_eq!(prot[7..40], plain[7..40], "{name}: hop limit/addresses");
            assert_eq!(prot[40], 50, "{name}: Hop-by-Hop next header = ESP");
            assert_eq!(prot[41..48], plain[41..48], "{name}: Hop-by-Hop body");
            assert_eq!(
                usize::from(u16::from_be_bytes([prot[4], prot[5]])) + 40,
                prot.len()
            );
            assert_eq!(prot[48..52], 0x2345u32.to_be_bytes(), "{name}: SPI");
            let back = common::decrypt(&mut inb, &prot).expect(&name);
            assert_eq!(back, plain, "{name}: restored exactly");
        }
    }
}

#[test]
fn ipv4_transport_restores_length_and_checksum() {
    for suite in common::all_suites() {
        let name = suite_name(suite);
        let (mut out, mut inb) = pair(0x2345, Mode::Transport, suite);
        for n in [0, 1, 2, 3, 4, 200] {
            let plain = common::ipv4([10, 9, 8, 7], [10, 6, 5, 4], 6, 0xb8, &vec![0x42; n]);
            let prot = common::encrypt(&mut out, &plain).expect(&name);
            assert_eq!(prot[9], 50);
            assert!(ipv4_checksum_ok(&prot), "{name}");
            assert_eq!(prot[..2], plain[..2], "{name}: version/TOS kept");
            assert_eq!(prot[4..9], plain[4..9], "{name}: ID/flags/TTL kept");
            let back = common::decrypt(&mut inb, &prot).expect(&name);
            assert_eq!(back, plain, "{name}");
            assert_eq!(checksum(&back[..20]), 0);
        }
    }
}

#[test]
fn tfc_padding_hides_the_inner_length() {
    for suite in common::all_suites() {
        let name = suite_name(suite);
        let mut ocfg = config(0x2345, Direction::Outbound, Mode::Tunnel, suite);
        ocfg.tunnel(
            V4_SRC.parse::<IpAddr>().expect("a"),
            V4_DST.parse::<IpAddr>().expect("a"),
        )
        .tfc_padding(TfcPadding::PadTo(256));
        let mut out = SecurityAssociation::new(ocfg, T0).expect("out");
        let mut inb =
            SecurityAssociation::new(config(0x2345, Direction::Inbound, Mode::Tunnel, suite), T0)
                .expect("in");
        let mut lens = Vec::new();
        for n in [0, 13, 100, 200] {
            let plain = inner_v4(n, 0);
            let prot = common::encrypt(&mut out, &plain).expect(&name);
            lens.push(prot.len());
            assert_eq!(
                common::decrypt(&mut inb, &prot).expect(&name),
                plain,
                "{name}"
            );
        }
        assert!(
            lens.iter().all(|l| *l == lens[0]),
            "{name}: lengths {lens:?}"
        );
        // Longer than the target: unchanged, still round-trips.
        let big = inner_v4(400, 0);
        let prot = common::encrypt(&mut out, &big).expect(&name);
        assert!(prot.len() > lens[0]);
        assert_eq!(common::decrypt(&mut inb, &prot).expect(&name), big);
    }
}

/// Sets the ECN bits of the outer header (IPv4 with checksum fix, or IPv6).
fn set_outer_ecn(prot: &mut [u8], ecn: u8) {
    if prot[0] >> 4 == 4 {
        prot[1] = (prot[1] & !3) | ecn;
        common::fix_ipv4_checksum(prot);
    } else {
        prot[1] = (prot[1] & !0x30) | (ecn << 4);
    }
}

fn outer_tos(prot: &[u8]) -> u8 {
    if prot[0] >> 4 == 4 {
        prot[1]
    } else {
        ((prot[0] & 0x0f) << 4) | (prot[1] >> 4)
    }
}

#[test]
fn dscp_copied_and_ecn_per_rfc6040() {
    for outer6 in [false, true] {
        for inner6 in [false, true] {
            let suite = (Cipher::Aes128Gcm, None);
            let mut ocfg = config(0x2345, Direction::Outbound, Mode::Tunnel, suite);
            let (s, d) = if outer6 {
                (V6_SRC, V6_DST)
            } else {
                (V4_SRC, V4_DST)
            };
            ocfg.tunnel(
                s.parse::<IpAddr>().expect("a"),
                d.parse::<IpAddr>().expect("a"),
            );
            let mut out = SecurityAssociation::new(ocfg, T0).expect("out");
            let mut inb = SecurityAssociation::new(
                config(0x2345, Direction::Inbound, Mode::Tunnel, suite),
                T0,
            )
            .expect("in");
            let tag = format!("outer6={outer6} inner6={inner6}");
            let mk = |tos: u8| {
                if inner6 {
                    inner_v6(20, tos)
                } else {
                    inner_v4(20, tos)
                }
            };
            let inner_tos = |p: &[u8]| {
                if inner6 {
                    ((p[0] & 0x0f) << 4) | (p[1] >> 4)
                } else {
                    p[1]
                }
            };
            // Encap: DSCP copied, ECN copied except CE -> ECT(0).
            for (tos, want) in [(0xb8, 0xb8), (0xb9, 0xb9), (0xba, 0xba), (0xbb, 0xba)] {
                let plain = mk(tos);
                let prot = common::encrypt(&mut out, &plain).expect("enc");
                assert_eq!(outer_tos(&prot), want, "{tag}: inner tos {tos:#x}");
                if !outer6 {
                    assert!(ipv4_checksum_ok(&prot));
                }
                assert_eq!(
                    common::decrypt(&mut inb, &prot).expect("dec"),
                    plain,
                    "{tag}"
                );
            }
            // Decap: outer CE on ECT(0) inner marks the inner CE (checksum still valid).
            let plain = mk(0x2a); // DSCP 10, ECT(0)
            let mut prot = common::encrypt(&mut out, &plain).expect("enc");
            set_outer_ecn(&mut prot, 3);
            let back = common::decrypt(&mut inb, &prot).expect("CE on ECT(0)");
            assert_eq!(inner_tos(&back), 0x2b, "{tag}: inner becomes CE");
            assert_eq!(back.len(), plain.len());
            if !inner6 {
                assert!(ipv4_checksum_ok(&back), "{tag}: inner checksum after CE");
                assert_eq!(
                    back[2..],
                    {
                        let mut p = plain.clone();
                        p[1] = 0x2b;
                        common::fix_ipv4_checksum(&mut p);
                        p
                    }[2..]
                );
            }
            // Outer ECT(1) on ECT(0) inner: inner becomes ECT(1) (RFC 6040 Figure 4).
            let mut prot = common::encrypt(&mut out, &plain).expect("enc");
            set_outer_ecn(&mut prot, 1);
            let back = common::decrypt(&mut inb, &prot).expect("ECT(1) on ECT(0)");
            assert_eq!(inner_tos(&back), 0x29, "{tag}");
            // Outer CE on a Not-ECT inner: dropped (RFC 6040 §4.2), under its own reason.
            let plain = mk(0x28);
            let mut prot = common::encrypt(&mut out, &plain).expect("enc");
            set_outer_ecn(&mut prot, 3);
            let before = inb.stats().dropped(DropReason::EcnCeOnNotEct);
            assert_eq!(
                common::decrypt(&mut inb, &prot),
                Err(Error::Malformed(Malformed::EcnCeOnNotEct)),
                "{tag}"
            );
            assert_eq!(inb.stats().dropped(DropReason::EcnCeOnNotEct), before + 1);
            assert_eq!(inb.stats().dropped(DropReason::Malformed), 0, "{tag}");
            assert_eq!(inb.stats().dropped_total(), 1, "{tag}");
        }
    }
}

#[test]
fn bytes_mut_round_trip() {
    let mut failures = Vec::new();
    for suite in common::all_suites() {
        for mode in [Mode::Tunnel, Mode::Transport] {
            let (mut out, mut inb) = pair(0x2345, mode, suite);
            for n in [0usize, 7, 33, 500] {
                for plain in [inner_v4(n, 0), inner_v6(n, 0)] {
                    let mut b = BytesMut::from(&plain[..]);
                    let what = format!(
                        "{} {mode:?} IPv{} {}-byte packet",
                        suite_name(suite),
                        plain[0] >> 4,
                        plain.len()
                    );
                    if let Err(e) = out.encrypt_bytes(&mut b, T0) {
                        failures.push(format!("{what}: encrypt_bytes: {e}"));
                        assert_eq!(&b[..], &plain[..], "{what}: left intact on error");
                        continue;
                    }
                    if mode == Mode::Transport {
                        assert_eq!(b[0] >> 4, plain[0] >> 4);
                    }
                    match inb.decrypt_bytes(&mut b, T0) {
                        Ok(()) if b[..] == plain[..] => {}
                        Ok(()) => failures.push(format!("{what}: wrong output")),
                        Err(e) => failures.push(format!("{what}: decrypt_bytes: {e}")),
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn bursts_report_per_packet_results() {
    for suite in common::all_suites() {
        for mode in [Mode::Tunnel, Mode::Transport] {
            let name = format!("{} {mode:?}", suite_name(suite));
            let (mut out, mut inb) = pair(0x2345, mode, suite);
            let plains: Vec<Vec<u8>> = (0..7).map(|i| inner_v4(10 + 9 * i, 0)).collect();
            let mut bufs: Vec<Vec<u8>> = plains
                .iter()
                .map(|p| {
                    let mut b = vec![0u8; 128 + p.len() + 128];
                    b[128..128 + p.len()].copy_from_slice(p);
                    b
                })
                .collect();
            // Packet 3 is not an IP packet: encrypt_burst must fail only that one.
            bufs[3][128] = 0x00;
            let mut pkts: Vec<PacketBuf<'_>> = bufs
                .iter_mut()
                .zip(&plains)
                .map(|(b, p)| PacketBuf::new(b, 128, p.len()).expect("buf"))
                .collect();
            let mut res = [Ok(()); 7];
            let ok = out.encrypt_burst(&mut pkts, &mut res, T0);
            assert_eq!(ok, 6, "{name}: {res:?}");
            assert_eq!(
                res[3],
                Err(Error::Malformed(Malformed::BadInnerPacket)),
                "{name}"
            );
            assert_eq!((pkts[3].offset(), pkts[3].len()), (128, plains[3].len()));
            assert_eq!(out.stats().packets, 6);
            assert_eq!(out.stats().dropped_total(), 1);
            // Decrypt burst: packet 3 is still the broken plaintext (not ESP) and
            // packet 5's ICV is flipped; the rest come back.
            let last = pkts[5].len() - 1;
            pkts[5].data_mut()[last] ^= 0x80;
            let mut res = [Ok(()); 7];
            let ok = inb.decrypt_burst(&mut pkts, &mut res, T0);
            assert_eq!(ok, 5, "{name}: {res:?}");
            assert!(matches!(res[3], Err(Error::Malformed(_))), "{name}");
            assert_eq!(res[5], Err(Error::AuthenticationFailed), "{name}");
            for i in [0, 1, 2, 4, 6] {
                assert_eq!(res[i], Ok(()), "{name}: packet {i}");
                assert_eq!(pkts[i].data(), &plains[i][..], "{name}: packet {i}");
            }
            assert_eq!(inb.stats().packets, 5);
            assert_eq!(inb.stats().dropped(DropReason::AuthFailed), 1);
            assert_eq!(inb.stats().dropped_total(), 2);
            // Only min(packets, results) are processed.
            let mut res = [Ok(()); 2];
            assert_eq!(inb.decrypt_burst(&mut pkts, &mut res, T0), 0, "{name}");
            // Packet 0 now holds its decrypted inner packet: not ESP for this SA.
            assert!(res[0].is_err(), "{name}");
        }
    }
}
