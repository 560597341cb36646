//! The AES-CBC burst path (`encrypt_burst` runs the CBC chains and HMACs of several
//! packets side by side) gives byte for byte what one packet at a time gives with the
//! same IVs, whatever the mix of lengths, burst sizes, modes and SA options; and the
//! decrypt burst refuses a tampered packet among them while the others open.
//!
//! With the `ipsec-mb` feature the bursts run on intel-ipsec-mb (cipher and hash
//! bursts to seal, hash bursts to check ICVs) and one packet at a time stays on the Rust
//! code, so these tests compare the two: `cargo test -p ipsec-core --features
//! ipsec-mb --test cbc_burst`. [`decrypt_bursts_equal_one_packet_at_a_time`] also
//! checks that tampered, replayed and malformed packets in a burst get the results,
//! counters and buffer bytes that one packet at a time gives them.

mod common;

use std::net::IpAddr;

use common::{T0, config, inner_v4, inner_v6};
use ipsec_core::{
    Cipher, Direction, DropReason, Error, Integrity, Mode, PacketBuf, SaConfig, SecurityAssociation,
};

use common::CountingIv;

/// A small deterministic generator (xorshift) for lengths and mixes.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// One kind of SA the burst path must get right.
#[derive(Clone, Copy, Debug)]
struct Setup {
    suite: (Cipher, Option<Integrity>),
    mode: Mode,
    esn: bool,
    /// ESP in UDP; with an IPv6 outer header its checksum covers the sealed packet.
    natt: bool,
    outer6: bool,
    /// A path MTU some packets exceed (they take the slow path or are refused).
    mtu: Option<u16>,
}

impl Setup {
    /// Tunnel mode over IPv4, no ESN, no NAT-T, no path MTU.
    fn tunnel(suite: (Cipher, Option<Integrity>)) -> Setup {
        Setup {
            suite,
            mode: Mode::Tunnel,
            esn: false,
            natt: false,
            outer6: false,
            mtu: None,
        }
    }
}

fn v(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn sa_config(s: Setup, dir: Direction) -> SaConfig {
    let mut c = config(0x7777, dir, s.mode, s.suite);
    c.esn(s.esn).seq(if s.esn { (3 << 32) - 20 } else { 0 });
    if s.natt {
        c.udp_encap(4500, 4500);
    }
    if dir == Direction::Outbound {
        c.iv_source(Box::new(CountingIv(0x1234)));
        if s.mode == Mode::Tunnel {
            if s.outer6 {
                c.tunnel(v("2001:db8::1"), v("2001:db8::2"));
            } else {
                c.tunnel(v("192.0.2.1"), v("198.51.100.2"));
            }
        }
        c.path_mtu(s.mtu);
    } else {
        c.replay_window(1024);
    }
    c
}

use common::{BURST_ROOM as ROOM, burst_buffers as buffers};

/// Encrypts `plains` as one burst with one SA and one packet at a time with a twin SA;
/// checks that both give the same results and bytes; returns the burst's packets.
fn burst_equals_single(s: Setup, plains: &[Vec<u8>]) -> (Vec<Result<Vec<u8>, Error>>, usize) {
    let what = format!(
        "{s:?} lengths {:?}",
        plains.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let mut burst_sa = SecurityAssociation::new(sa_config(s, Direction::Outbound), T0).expect("SA");
    let mut single_sa =
        SecurityAssociation::new(sa_config(s, Direction::Outbound), T0).expect("SA");
    let common::BurstAndSingle {
        burst, single, ok, ..
    } = common::encrypt_burst_and_single(&mut burst_sa, &mut single_sa, plains);
    for (i, (b, s1)) in burst.iter().zip(&single).enumerate() {
        assert!(b == s1, "{what}: packet {i} differs");
    }
    assert_eq!(ok, single.iter().filter(|r| r.is_ok()).count(), "{what}");
    assert_eq!(burst_sa.stats(), single_sa.stats(), "{what}");
    (burst, ok)
}

/// Decrypts the sealed packets of a burst as one burst, packet `tamper` (if sealed)
/// with one ciphertext bit flipped: that one fails authentication, the rest open.
fn open_burst(s: Setup, plains: &[Vec<u8>], sealed: &[Result<Vec<u8>, Error>], tamper: usize) {
    let what = format!("{s:?} tamper {tamper}");
    let mut inb = SecurityAssociation::new(sa_config(s, Direction::Inbound), T0).expect("SA");
    let wire: Vec<Vec<u8>> = sealed.iter().filter_map(|r| r.clone().ok()).collect();
    let expect: Vec<&Vec<u8>> = plains
        .iter()
        .zip(sealed)
        .filter(|(_, r)| r.is_ok())
        .map(|(p, _)| p)
        .collect();
    let mut bufs: Vec<Vec<u8>> = wire
        .iter()
        .map(|w| {
            let mut b = vec![0u8; 16 + w.len() + 16];
            b[16..16 + w.len()].copy_from_slice(w);
            b
        })
        .collect();
    let tamper = if wire.is_empty() {
        None
    } else {
        Some(tamper % wire.len())
    };
    if let Some(t) = tamper {
        // A bit in the middle of the ciphertext (always after the IV).
        let n = wire[t].len();
        bufs[t][16 + n - 20] ^= 0x10;
    }
    let mut pkts: Vec<PacketBuf<'_>> = bufs
        .iter_mut()
        .zip(&wire)
        .map(|(b, w)| PacketBuf::new(b, 16, w.len()).expect("buf"))
        .collect();
    let mut res = vec![Ok(()); wire.len()];
    let ok = inb.decrypt_burst(&mut pkts, &mut res, T0);
    assert_eq!(
        ok,
        wire.len() - usize::from(tamper.is_some()),
        "{what}: {res:?}"
    );
    for (i, (p, r)) in pkts.iter().zip(&res).enumerate() {
        if Some(i) == tamper {
            assert_eq!(*r, Err(Error::AuthenticationFailed), "{what}");
        } else {
            assert_eq!(*r, Ok(()), "{what}: packet {i}");
            assert!(
                p.data() == &expect[i][..],
                "{what}: packet {i} opened wrong"
            );
        }
    }
    assert_eq!(
        inb.stats().dropped(DropReason::AuthFailed),
        u64::from(tamper.is_some()),
        "{what}"
    );
}

fn cbc_suites() -> Vec<(Cipher, Option<Integrity>)> {
    let mut v = Vec::new();
    for c in [Cipher::Aes128Cbc, Cipher::Aes256Cbc] {
        for i in Integrity::ALL {
            v.push((c, Some(i)));
        }
    }
    v
}

/// Inner packets of `n` random lengths from 0 to 1500 bytes (an IPv4 or IPv6 header
/// and UDP datagram, down to a bare 20-byte IPv4 header), with, now and then, a packet
/// that is not IP at all (refused, so it draws no IV).
fn mixed(rng: &mut Rng, n: usize, junk: bool) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| match rng.next(12) {
            0 if junk => vec![0u8; 1 + rng.next(60)],
            1 => {
                // A bare IPv4 header: the smallest inner packet.
                let mut p = inner_v4(0, 0);
                p.truncate(20);
                p[2..4].copy_from_slice(&20u16.to_be_bytes());
                p[9] = 59;
                common::fix_ipv4_checksum(&mut p);
                p
            }
            2 | 3 => inner_v6(rng.next(1500 - 48 + 1), 0),
            _ => inner_v4(rng.next(1500 - 28 + 1), 0),
        })
        .collect()
}

/// Every burst size from 1 to 32 with mixed lengths, for every CBC suite, in both
/// modes; ESN, NAT-T and a limiting path MTU on some of them.
#[test]
fn cbc_bursts_equal_one_packet_at_a_time() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for suite in cbc_suites() {
        for mode in [Mode::Tunnel, Mode::Transport] {
            let setups = [
                Setup {
                    suite,
                    mode,
                    esn: false,
                    natt: false,
                    outer6: false,
                    mtu: None,
                },
                Setup {
                    suite,
                    mode,
                    esn: true,
                    natt: false,
                    outer6: false,
                    mtu: None,
                },
                Setup {
                    suite,
                    mode,
                    esn: false,
                    natt: true,
                    outer6: true,
                    mtu: None,
                },
                Setup {
                    suite,
                    mode,
                    esn: false,
                    natt: true,
                    outer6: false,
                    mtu: Some(1280),
                },
            ];
            for s in setups {
                let sizes: Vec<usize> = if s.esn || s.natt {
                    vec![1, 7, 8, 9, 32]
                } else {
                    (1..=32).collect()
                };
                for n in sizes {
                    let plains = mixed(&mut rng, n, true);
                    let (sealed, _) = burst_equals_single(s, &plains);
                    open_burst(s, &plains, &sealed, rng.next(32));
                }
            }
        }
    }
}

/// Bursts of one length (the benchmark's shape) at the sizes that matter, and a burst
/// longer than the lanes several times over.
#[test]
fn cbc_bursts_of_equal_lengths() {
    let suite = (Cipher::Aes128Cbc, Some(Integrity::HmacSha256_128));
    for mode in [Mode::Tunnel, Mode::Transport] {
        let s = Setup {
            suite,
            mode,
            esn: false,
            natt: false,
            outer6: false,
            mtu: None,
        };
        for len in [0, 1, 15, 16, 36, 100, 484, 1392, 1472] {
            for n in [8, 32, 77] {
                let plains: Vec<Vec<u8>> = (0..n).map(|_| inner_v4(len, 0)).collect();
                let (sealed, ok) = burst_equals_single(s, &plains);
                assert_eq!(ok, n);
                open_burst(s, &plains, &sealed, n / 2);
            }
        }
    }
}

/// How a packet of a decrypt burst is damaged before it is opened.
#[derive(Clone, Copy, Debug)]
enum Damage {
    None,
    /// One bit of the ICV.
    Icv,
    /// One bit of the ciphertext's last block (the trailer).
    Trailer,
    /// One bit of the IV.
    Iv,
    /// One bit of the sequence number (the ICV covers it).
    Seq,
    /// The packet sent twice (here and again later in the burst).
    Replay,
    /// The last byte cut off (ciphertext no longer whole blocks).
    Truncate,
}

/// Decrypts `wire` (damaged as `damage` says) as one burst with one SA and one packet
/// at a time with a twin SA: the same results, the same bytes in every buffer (a
/// refused packet's included: nothing is decrypted before its ICV verified) and the
/// same counters.
fn decrypt_burst_equals_single(s: Setup, wire: &[Vec<u8>], damage: &[Damage]) {
    let what = format!("{s:?} {damage:?}");
    let mut packets: Vec<Vec<u8>> = Vec::new();
    let mut replays = Vec::new();
    for (w, d) in wire.iter().zip(damage) {
        let mut w = w.clone();
        let n = w.len();
        // Behind the (outer, or in transport mode the packet's own) IPv4 header.
        let esp = 20;
        match d {
            Damage::None => {}
            Damage::Icv => w[n - 1] ^= 0x04,
            Damage::Trailer => {
                let icv = s.suite.1.expect("CBC has an integrity algorithm").icv_len();
                w[n - icv - 1] ^= 0x20;
            }
            Damage::Iv => w[esp + 8] ^= 0x01,
            Damage::Seq => w[esp + 7] ^= 0x40,
            Damage::Replay => replays.push(w.clone()),
            Damage::Truncate => {
                w.pop();
                // Keep the outer length consistent so that the ESP parse gets as far
                // as the block check.
                let len = (w.len() as u16).to_be_bytes();
                w[2..4].copy_from_slice(&len);
                common::fix_ipv4_checksum(&mut w);
            }
        }
        packets.push(w);
    }
    packets.extend(replays);
    let (res, burst_sa) = burst_matches_single(&what, s, &packets, |_| {});
    // Every packet whose ICV, trailer or IV was damaged is refused for its ICV (a
    // damaged sequence number may instead fall on one already received: a replay).
    let damaged = damage
        .iter()
        .filter(|d| matches!(d, Damage::Icv | Damage::Trailer | Damage::Iv))
        .count();
    let auth_failed = res
        .iter()
        .filter(|r| **r == Err(Error::AuthenticationFailed))
        .count();
    assert!(auth_failed >= damaged, "{what}");
    assert_eq!(
        burst_sa.stats().dropped(DropReason::AuthFailed),
        auth_failed as u64,
        "{what}"
    );
}

/// Decrypts `packets` as one burst with an inbound SA of `s` (its configuration
/// changed by `tweak`) and one packet at a time with a twin SA; asserts the same
/// results, windows, bytes in every buffer (a refused packet's included: nothing is
/// decrypted before its ICV verified) and counters. The burst's results and SA.
fn burst_matches_single(
    what: &str,
    s: Setup,
    packets: &[Vec<u8>],
    tweak: impl Fn(&mut SaConfig),
) -> (Vec<Result<(), Error>>, SecurityAssociation) {
    let make = || {
        let mut c = sa_config(s, Direction::Inbound);
        tweak(&mut c);
        SecurityAssociation::new(c, T0).expect("SA")
    };
    let (mut burst_sa, mut single_sa) = (make(), make());
    let mut burst_bufs: Vec<Vec<u8>> = packets.to_vec();
    let mut single_bufs: Vec<Vec<u8>> = packets.to_vec();
    let mut pkts: Vec<PacketBuf<'_>> = burst_bufs
        .iter_mut()
        .map(|b| {
            let n = b.len();
            PacketBuf::new(b, 0, n).expect("buf")
        })
        .collect();
    let mut res = vec![Ok(()); pkts.len()];
    let ok = burst_sa.decrypt_burst(&mut pkts, &mut res, T0);
    let windows: Vec<(usize, usize)> = pkts.iter().map(|p| (p.offset(), p.len())).collect();
    drop(pkts);
    let single = common::decrypt_one_at_a_time(&mut single_sa, &mut single_bufs);
    common::assert_same_decrypts(what, &res, &windows, ok, &burst_bufs, &single, &single_bufs);
    assert_eq!(burst_sa.stats(), single_sa.stats(), "{what}");
    assert_eq!(
        burst_sa.replay_window().highest(),
        single_sa.replay_window().highest(),
        "{what}"
    );
    assert_eq!(burst_sa.is_expired(), single_sa.is_expired(), "{what}");
    (res, burst_sa)
}

/// Decrypt bursts whose packets arrive out of order, with duplicates, across a
/// small replay window, and bursts that reach a soft or hard lifetime (packets or
/// bytes) part-way: results, buffers, counters and window equal one packet at a time
/// (the burst decrypts ahead only what one packet at a time would decrypt).
#[test]
fn decrypt_bursts_out_of_order_and_at_lifetime_limits() {
    use ipsec_core::Lifetime;
    let mut rng = Rng(0x6a09_e667_f3bc_c909);
    let (mut expired_inside, mut reordered_refused) = (0, 0);
    for suite in cbc_suites() {
        let s = Setup::tunnel(suite);
        for round in 0..12 {
            let n = 20 + rng.next(60);
            let plains: Vec<Vec<u8>> = (0..n).map(|_| inner_v4(rng.next(600), 0)).collect();
            let (sealed, _) = burst_equals_single(s, &plains);
            let mut wire: Vec<Vec<u8>> = sealed.into_iter().map(|r| r.expect("sealed")).collect();
            // Reorder: swap pairs, move some far back, repeat some.
            for _ in 0..n / 3 {
                let (a, b) = (rng.next(wire.len()), rng.next(wire.len()));
                wire.swap(a, b);
            }
            for _ in 0..n / 8 {
                let k = rng.next(wire.len());
                wire.push(wire[k].clone());
            }
            let window = [0, 32, 64, 1024][round % 4];
            let total: u64 = wire.iter().map(|w| w.len() as u64).sum();
            let longest = wire.iter().map(|w| w.len() as u64).max().unwrap_or(0);
            let what = format!("{s:?} round {round} window {window}");
            let limit = match round % 3 {
                0 => Lifetime::NONE,
                1 => Lifetime::NONE.with_packets(1 + rng.next(n) as u64),
                // At least the longest packet, so that the first one passes.
                _ => Lifetime::NONE.with_bytes(longest + rng.next(total as usize) as u64),
            };
            let soft = Lifetime::NONE.with_packets(1 + rng.next(n) as u64 / 2);
            let (res, sa) = burst_matches_single(&what, s, &wire, |c| {
                c.replay_window(window).hard_lifetime(limit);
                if limit.packets.is_none_or(|p| p > soft.packets.unwrap_or(0)) {
                    c.soft_lifetime(soft);
                }
            });
            assert!(res.iter().any(|r| r.is_ok()), "{what}");
            expired_inside += usize::from(sa.is_expired() && res[0].is_ok());
            reordered_refused += res
                .iter()
                .filter(|r| matches!(r, Err(Error::Replayed { .. } | Error::TooOld { .. })))
                .count();
        }
    }
    // The cases this test is for did come up.
    assert!(expired_inside > 0 && reordered_refused > 0);
}

/// Decrypt bursts with tampered ICVs, ciphertext, IVs and sequence numbers, replays
/// and truncated packets among good ones, for every CBC suite, in both modes, with
/// and without ESN: results, buffers and counters equal one packet at a time.
#[test]
fn decrypt_bursts_equal_one_packet_at_a_time() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let kinds = [
        Damage::None,
        Damage::Icv,
        Damage::Trailer,
        Damage::Iv,
        Damage::Seq,
        Damage::Replay,
        Damage::Truncate,
    ];
    for suite in cbc_suites() {
        for mode in [Mode::Tunnel, Mode::Transport] {
            for esn in [false, true] {
                let s = Setup {
                    suite,
                    mode,
                    esn,
                    natt: false,
                    outer6: false,
                    mtu: None,
                };
                for n in [1, 5, 8, 31, 32, 33, 70] {
                    // IPv4 only: the damage offsets assume a 20-byte IPv4 header.
                    let plains: Vec<Vec<u8>> =
                        (0..n).map(|_| inner_v4(rng.next(1473), 0)).collect();
                    let (sealed, _) = burst_equals_single(s, &plains);
                    let wire: Vec<Vec<u8>> =
                        sealed.into_iter().map(|r| r.expect("sealed")).collect();
                    let damage: Vec<Damage> = (0..wire.len())
                        .map(|_| {
                            if rng.next(3) == 0 {
                                kinds[rng.next(kinds.len())]
                            } else {
                                Damage::None
                            }
                        })
                        .collect();
                    decrypt_burst_equals_single(s, &wire, &damage);
                }
            }
        }
    }
}

/// Single packets and bursts in turn on the same thread, so that with `ipsec-mb` the
/// thread's manager sees single CBC decryptions (of 256 bytes or more, which it does)
/// between bursts, 0 to 199 of them, about 20,000 in all. (The single decryptions once
/// used the library's single-job calls, which left intel-ipsec-mb 1.3's queue in a
/// state where a later burst flushed more jobs than it submitted.)
#[test]
fn single_packets_between_bursts() {
    let suite = (Cipher::Aes256Cbc, Some(Integrity::HmacSha512_256));
    let s = Setup::tunnel(suite);
    let mut out = SecurityAssociation::new(sa_config(s, Direction::Outbound), T0).expect("SA");
    let mut inb = SecurityAssociation::new(sa_config(s, Direction::Inbound), T0).expect("SA");
    let plain = inner_v4(1392, 0);
    let mut single = buffers(std::slice::from_ref(&plain));
    let plains = vec![plain.clone(); 32];
    for round in 0..200 {
        for _ in 0..round {
            let mut p = PacketBuf::new(&mut single[0], ROOM, plain.len()).expect("buf");
            out.encrypt(&mut p, T0).expect("encrypt");
            inb.decrypt(&mut p, T0).expect("decrypt");
            assert!(p.data() == &plain[..]);
        }
        let mut bufs = buffers(&plains);
        let mut pkts: Vec<PacketBuf<'_>> = bufs
            .iter_mut()
            .map(|b| PacketBuf::new(b, ROOM, plain.len()).expect("buf"))
            .collect();
        let mut res = vec![Ok(()); 32];
        assert_eq!(
            out.encrypt_burst(&mut pkts, &mut res, T0),
            32,
            "round {round}"
        );
        assert_eq!(
            inb.decrypt_burst(&mut pkts, &mut res, T0),
            32,
            "round {round}"
        );
        assert!(pkts.iter().all(|p| p.data() == &plain[..]), "round {round}");
    }
}
