//! One SA on two threads: outbound sequence numbers leased in blocks (never one used
//! twice, none skipped), one replay window for the inbound lanes (a packet given to both
//! threads is accepted exactly once), counters per lane and summed, the hard packet
//! lifetime exact across lanes. The receiver of the lanes' packets is an ordinary SA.

use ipsec_core::sa::{Direction, Lifetime, Mode};
use ipsec_core::{
    Cipher, DropReason, Error, Integrity, LifetimeLimit, PacketBuf, SaConfig, SaLane,
    SecurityAssociation, SharedSa, SharedSaOptions,
};
use std::collections::HashSet;
use std::time::Duration;

const T0: Duration = Duration::ZERO;
const ROOM: usize = 96;
const KEY: [u8; 20] = [
    0x4c, 0x80, 0xcd, 0xef, 0xbb, 0x5d, 0x10, 0xda, 0x90, 0x6a, 0xc7, 0x3c, 0x36, 0x13, 0xa6, 0x34,
    0x2e, 0x44, 0x3b, 0x68,
];

fn config(dir: Direction) -> SaConfig {
    tunnel_config(
        SaConfig::new(0x4242, dir, Mode::Tunnel, Cipher::Aes128Gcm, &KEY),
        dir,
    )
}

/// `c`, an SA of direction `dir`, with this side's tunnel (outbound) or a replay window
/// of 1024 (inbound).
fn tunnel_config(mut c: SaConfig, dir: Direction) -> SaConfig {
    if dir == Direction::Outbound {
        c.tunnel(
            "192.0.2.1".parse().unwrap(),
            "198.51.100.2".parse().unwrap(),
        );
    } else {
        c.replay_window(1024);
    }
    c
}

fn inner(tag: u32) -> Vec<u8> {
    let mut p = vec![0u8; 64];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&64u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&[10, 1, 0, 1]);
    p[28..32].copy_from_slice(&tag.to_be_bytes());
    p
}

fn encrypt(lane: &mut SaLane, pkt: &[u8]) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; ROOM + pkt.len() + ROOM];
    buf[ROOM..ROOM + pkt.len()].copy_from_slice(pkt);
    let mut p = PacketBuf::new(&mut buf, ROOM, pkt.len())?;
    lane.encrypt(&mut p, T0)?;
    Ok(p.data().to_vec())
}

fn seq_of(wire: &[u8]) -> u32 {
    u32::from_be_bytes(wire[24..28].try_into().unwrap())
}

/// Each of two lanes, on its own thread, encrypts `per_lane` packets.
fn two_threads_send(options: SharedSaOptions, per_lane: u32) -> (SharedSa, Vec<Vec<Vec<u8>>>) {
    let (shared, lanes) = SharedSa::new(config(Direction::Outbound), options, T0).unwrap();
    let sent = std::thread::scope(|s| {
        let handles: Vec<_> = lanes
            .into_iter()
            .map(|mut lane| {
                s.spawn(move || {
                    (0..per_lane)
                        .map(|i| encrypt(&mut lane, &inner(i)).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    (shared, sent)
}

#[test]
fn two_lanes_never_use_a_sequence_number_twice_and_skip_none() {
    for block in [1, 8, 64] {
        // A whole number of blocks per lane, so that no lane leaves numbers unused.
        let per_lane = 64 * 312;
        let (shared, sent) =
            two_threads_send(SharedSaOptions::lanes(2).with_block(block), per_lane);
        let seqs: Vec<u32> = sent.iter().flatten().map(|w| seq_of(w)).collect();
        let distinct: HashSet<u32> = seqs.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            seqs.len(),
            "block {block}: a number used twice"
        );
        // Both lanes sent a whole number of blocks: no gap at all.
        let total = 2 * per_lane;
        assert_eq!(*distinct.iter().max().unwrap(), total, "block {block}");
        assert!(
            (1..=total).all(|s| distinct.contains(&s)),
            "block {block}: a gap"
        );
        // Each lane's numbers go up.
        for lane in &sent {
            assert!(lane.windows(2).all(|w| seq_of(&w[0]) < seq_of(&w[1])));
        }
        assert_eq!(shared.seq(), u64::from(total));
        assert_eq!(shared.stats().packets, u64::from(total));
    }
}

#[test]
fn an_ordinary_sa_decrypts_what_the_lanes_sent_interleaved() {
    let (_, sent) = two_threads_send(SharedSaOptions::lanes(2), 3_000);
    let mut rx = SecurityAssociation::new(config(Direction::Inbound), T0).unwrap();
    // On a link the lanes' packets arrive in about the order they were sent: by
    // sequence number, reordered within lanes x block. Deliver them so: sorted, each
    // run of 16 reversed.
    let mut all: Vec<&Vec<u8>> = sent.iter().flatten().collect();
    all.sort_by_key(|w| seq_of(w));
    all.chunks_mut(16).for_each(<[_]>::reverse);
    let mut tags = std::collections::HashMap::<u32, u32>::new();
    for wire in all {
        let mut buf = wire.clone();
        let len = buf.len();
        let mut p = PacketBuf::new(&mut buf, 0, len).unwrap();
        rx.decrypt(&mut p, T0)
            .unwrap_or_else(|e| panic!("seq {}: {e}", seq_of(wire)));
        let tag = u32::from_be_bytes(p.data()[28..32].try_into().unwrap());
        assert!(p.data() == &inner(tag)[..]);
        *tags.entry(tag).or_default() += 1;
    }
    // Every packet of both lanes, once.
    assert_eq!(tags.len(), 3_000);
    assert!(tags.values().all(|&n| n == 2));
    assert_eq!(rx.stats().packets, 6_000);
}

#[test]
fn a_packet_given_to_both_inbound_lanes_is_accepted_once() {
    // The wire packets of an ordinary outbound SA.
    let mut tx = SecurityAssociation::new(config(Direction::Outbound), T0).unwrap();
    let n = 20_000u32;
    let wires: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let pkt = inner(i);
            let mut buf = vec![0u8; ROOM + pkt.len() + ROOM];
            buf[ROOM..ROOM + pkt.len()].copy_from_slice(&pkt);
            let mut p = PacketBuf::new(&mut buf, ROOM, pkt.len()).unwrap();
            tx.encrypt(&mut p, T0).unwrap();
            p.data().to_vec()
        })
        .collect();
    let (shared, lanes) =
        SharedSa::new(config(Direction::Inbound), SharedSaOptions::lanes(2), T0).unwrap();
    // Both threads get every packet, in the same order: each must be accepted by
    // exactly one of them; the other sees a replay.
    let accepted: Vec<HashSet<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = lanes
            .into_iter()
            .map(|mut lane| {
                let wires = &wires;
                s.spawn(move || {
                    let mut mine = HashSet::new();
                    for w in wires {
                        let mut buf = w.clone();
                        let len = buf.len();
                        let mut p = PacketBuf::new(&mut buf, 0, len).unwrap();
                        match lane.decrypt(&mut p, T0) {
                            Ok(()) => {
                                mine.insert(u32::from_be_bytes(
                                    p.data()[28..32].try_into().unwrap(),
                                ));
                            }
                            // The other lane had it (or, far behind, finds it too old).
                            Err(Error::Replayed { .. } | Error::TooOld { .. }) => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(accepted[0].is_disjoint(&accepted[1]));
    assert_eq!(accepted[0].len() + accepted[1].len(), n as usize);
    let stats = shared.stats();
    assert_eq!(stats.packets, u64::from(n));
    assert_eq!(
        stats.dropped(DropReason::Replay) + stats.dropped(DropReason::TooOld),
        u64::from(n)
    );
    assert_eq!(shared.seq(), u64::from(n));
}

#[test]
fn the_hard_packet_lifetime_holds_across_lanes() {
    let mut cfg = config(Direction::Outbound);
    cfg.hard_lifetime(Lifetime::NONE.with_packets(100));
    let (shared, lanes) = SharedSa::new(cfg, SharedSaOptions::lanes(2).with_block(7), T0).unwrap();
    let sent: usize = std::thread::scope(|s| {
        let handles: Vec<_> = lanes
            .into_iter()
            .map(|mut lane| {
                s.spawn(move || {
                    (0..100)
                        .filter(|&i| match encrypt(&mut lane, &inner(i)) {
                            Ok(_) => true,
                            Err(Error::LifetimeExpired(LifetimeLimit::Packets)) => false,
                            Err(e) => panic!("{e}"),
                        })
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(sent, 100);
    assert_eq!(shared.stats().packets, 100);
    assert_eq!(
        shared.stats().dropped(DropReason::LifetimeExpired),
        100,
        "the other 100 attempts are counted"
    );
}

#[test]
fn bad_options_are_refused() {
    for (options, field) in [
        (SharedSaOptions::lanes(0).with_block(8), "lanes"),
        (SharedSaOptions::lanes(2).with_block(0), "block"),
        (SharedSaOptions::lanes(2).with_block(4096), "block"),
    ] {
        let e = SharedSa::new(config(Direction::Outbound), options, T0).unwrap_err();
        assert_eq!(e.field(), field);
    }
    // A bad configuration is refused as an SA's is.
    let mut cfg = config(Direction::Outbound);
    cfg.outer_ttl(0);
    let e = SharedSa::new(cfg, SharedSaOptions::lanes(2), T0).unwrap_err();
    assert_eq!(e.field(), "outer_ttl");
}

/// The AES-CBC + HMAC-SHA-256-128 SA of the burst tests (its bursts interleave).
fn cbc_config(dir: Direction) -> SaConfig {
    let mut c = SaConfig::new(0x4343, dir, Mode::Tunnel, Cipher::Aes128Cbc, &KEY[..16]);
    c.integrity(Integrity::HmacSha256_128, &[0x5a; 32]);
    tunnel_config(c, dir)
}

/// One packet's outcome: the result, and the bytes left in its buffer's window.
type Outcome = (Result<(), Error>, Vec<u8>);

/// Buffers for `packets`: each in the middle of room enough for ESP, except every
/// `tight`-th, which has no headroom (refused before it takes a sequence number).
fn buffers(packets: &[Vec<u8>], tight: usize) -> Vec<(Vec<u8>, usize)> {
    packets
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let head = if tight > 0 && i % tight == tight - 1 {
                0
            } else {
                ROOM
            };
            let mut b = vec![0u8; head + p.len() + ROOM];
            b[head..head + p.len()].copy_from_slice(p);
            (b, head)
        })
        .collect()
}

/// `packets` through the lanes, `bursts[k]` packets to lane `k % lanes.len()` in turn:
/// with the lanes' burst calls when `burst`, else one packet at a time.
fn through_lanes(
    lanes: &mut [SaLane],
    packets: &[Vec<u8>],
    tight: usize,
    bursts: &[usize],
    encrypt: bool,
    burst: bool,
) -> Vec<Outcome> {
    let mut bufs = buffers(packets, tight);
    let mut pkts: Vec<PacketBuf<'_>> = bufs
        .iter_mut()
        .zip(packets)
        .map(|((b, head), p)| PacketBuf::new(b, *head, p.len()).unwrap())
        .collect();
    let mut results: Vec<Result<(), Error>> = vec![Ok(()); pkts.len()];
    let (mut at, mut k) = (0, 0);
    while at < pkts.len() {
        let end = (at + bursts[k % bursts.len()]).min(pkts.len());
        let lane = &mut lanes[k % lanes.len()];
        let (ps, rs) = (&mut pkts[at..end], &mut results[at..end]);
        match (encrypt, burst) {
            (true, true) => {
                lane.encrypt_burst(ps, rs, T0);
            }
            (false, true) => {
                lane.decrypt_burst(ps, rs, T0);
            }
            (true, false) => {
                for (p, r) in ps.iter_mut().zip(rs.iter_mut()) {
                    *r = lane.encrypt(p, T0);
                }
            }
            (false, false) => {
                for (p, r) in ps.iter_mut().zip(rs.iter_mut()) {
                    *r = lane.decrypt(p, T0);
                }
            }
        }
        at = end;
        k += 1;
    }
    results
        .into_iter()
        .zip(&pkts)
        .map(|(r, p)| (r, p.data().to_vec()))
        .collect()
}

/// A lane's burst calls give what its calls one packet at a time give: the same
/// results, sequence numbers (blocks leased at the same packets, across two lanes
/// taking turns), refusals at the hard packet lifetime, and counters; and inbound the
/// same verdicts on replayed and tampered packets through the shared replay window.
/// AES-CBC + HMAC, whose bursts interleave the packets, and AES-GCM; blocks of 1, 7 and
/// 64 numbers; packets of mixed lengths, some refused before they take a number.
#[test]
fn lane_bursts_give_what_single_packets_give() {
    type MakeConfig = fn(Direction) -> SaConfig;
    let suites: [(&str, MakeConfig); 2] = [("cbc", cbc_config), ("gcm", config)];
    let bursts = [13, 1, 32, 5, 40, 2];
    let packets: Vec<Vec<u8>> = (0..240u32)
        .map(|i| {
            let len = 64 + (i as usize * 37) % 400;
            let mut p = inner(i);
            p.resize(len, i as u8);
            p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            p
        })
        .collect();
    for (name, cfg) in suites {
        for block in [1, 7, 64] {
            let options = SharedSaOptions::lanes(2).with_block(block);
            let outbound = || {
                let mut c = cfg(Direction::Outbound);
                c.hard_lifetime(Lifetime::NONE.with_packets(200));
                SharedSa::new(c, options, T0).unwrap()
            };
            let ((single, mut single_lanes), (bursty, mut bursty_lanes)) = (outbound(), outbound());
            let want = through_lanes(&mut single_lanes, &packets, 11, &bursts, true, false);
            let got = through_lanes(&mut bursty_lanes, &packets, 11, &bursts, true, true);
            let what = format!("{name}, block {block}");
            for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                assert_eq!(w.0, g.0, "{what}: packet {i}");
                if w.0.is_ok() {
                    assert_eq!(seq_of(&w.1), seq_of(&g.1), "{what}: packet {i}");
                    assert_eq!(w.1.len(), g.1.len(), "{what}: packet {i}");
                }
            }
            let sent: Vec<Vec<u8>> = got
                .iter()
                .filter(|o| o.0.is_ok())
                .map(|o| o.1.clone())
                .collect();
            // Distinct numbers within the hard lifetime (200); it refused the rest (a
            // lane's leased numbers unused at the end are never sent), and the tight
            // buffers were refused.
            let seqs: HashSet<u32> = sent.iter().map(|w| seq_of(w)).collect();
            assert_eq!(seqs.len(), sent.len(), "{what}");
            assert!(seqs.iter().all(|&s| (1..=200).contains(&s)), "{what}");
            assert!(sent.len() > 100, "{what}: {} sent", sent.len());
            assert!(
                got.iter()
                    .any(|o| o.0 == Err(Error::LifetimeExpired(LifetimeLimit::Packets))),
                "{what}"
            );
            assert!(
                got.iter()
                    .any(|o| matches!(o.0, Err(Error::NoHeadroom { .. })))
            );
            drop((single_lanes, bursty_lanes));
            assert_eq!(single.stats(), bursty.stats(), "{what}");
            assert_eq!(single.seq(), bursty.seq(), "{what}");

            // Inbound: what was sent, a tampered copy of every 17th, and a replay of
            // an earlier packet after every 23rd, in bursts taking turns on two lanes.
            let mut wires = Vec::new();
            for (i, w) in sent.iter().enumerate() {
                if i % 17 == 0 {
                    // Ahead of the packet itself: after it, the window would refuse it.
                    let mut t = w.clone();
                    let at = t.len() - 1;
                    t[at] ^= 1;
                    wires.push(t);
                }
                wires.push(w.clone());
                if i % 23 == 0 {
                    wires.push(sent[i / 2].clone());
                }
            }
            let inbound = || SharedSa::new(cfg(Direction::Inbound), options, T0).unwrap();
            let ((single, mut single_lanes), (bursty, mut bursty_lanes)) = (inbound(), inbound());
            let want = through_lanes(&mut single_lanes, &wires, 0, &bursts, false, false);
            let got = through_lanes(&mut bursty_lanes, &wires, 0, &bursts, false, true);
            assert_eq!(want, got, "{what}: inbound");
            assert!(got.iter().any(|o| o.0 == Err(Error::AuthenticationFailed)));
            assert!(
                got.iter()
                    .any(|o| matches!(o.0, Err(Error::Replayed { .. })))
            );
            let opened: Vec<&Vec<u8>> = got.iter().filter(|o| o.0.is_ok()).map(|o| &o.1).collect();
            assert_eq!(opened.len(), sent.len(), "{what}: every packet sent, once");
            for p in opened {
                let tag = u32::from_be_bytes(p[28..32].try_into().unwrap());
                assert_eq!(p, &packets[tag as usize], "{what}: packet {tag}");
            }
            // Lanes publish as they go (at least every 64 packets and a burst), and
            // the rest when dropped.
            let published = bursty.stats().packets;
            assert!(published > 0 && published <= sent.len() as u64, "{what}");
            drop((single_lanes, bursty_lanes));
            assert_eq!(single.stats(), bursty.stats(), "{what}: inbound");
        }
    }
}
