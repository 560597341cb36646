//! High availability: SA snapshots restored on a standby (`ipsec_core::snapshot`).
//!
//! The property test runs random traffic through an outbound SA and the peer's inbound
//! SA, takes snapshots of both at random moments and fails over at random later moments
//! to SAs restored from one of the snapshots taken so far (usually a stale one). Across
//! the primary and every standby: no sequence number, and so no AEAD nonce, is ever
//! sent twice under the key; no packet the restored inbound SA knows of (recorded before
//! its snapshot, or accepted since) is accepted again; and a packet nobody accepted
//! that lies inside the restored window is accepted (the window is restored exactly,
//! not conservatively).

mod common;

use common::{all_suites, config, inner_v4};
use core::time::Duration;
use ipsec_core::{
    Cipher, Direction, Error, Integrity, Lifetime, LifetimeLimit, Mode, PacketBuf, RestoreOptions,
    SaEvent, SaSnapshot, SecurityAssociation, SnapshotError,
};
use proptest::prelude::*;
use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

const ROOM: usize = 256;
const WINDOW: u32 = 64;

fn encrypt_at(sa: &mut SecurityAssociation, pkt: &[u8], now: Duration) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; ROOM + pkt.len() + ROOM];
    buf[ROOM..ROOM + pkt.len()].copy_from_slice(pkt);
    let mut p = PacketBuf::new(&mut buf, ROOM, pkt.len())?;
    sa.encrypt(&mut p, now)?;
    Ok(p.data().to_vec())
}

fn decrypt_at(sa: &mut SecurityAssociation, pkt: &[u8], now: Duration) -> Result<Vec<u8>, Error> {
    let mut buf = pkt.to_vec();
    let len = buf.len();
    let mut p = PacketBuf::new(&mut buf, 0, len)?;
    sa.decrypt(&mut p, now)?;
    Ok(p.data().to_vec())
}

/// The 32-bit wire sequence number and the 8 bytes after it (the explicit IV: for the
/// AEADs and GMAC the nonce's counter part) of a tunnel-mode IPv4 ESP packet.
fn wire_seq_and_iv(pkt: &[u8]) -> (u32, [u8; 8]) {
    let esp = &pkt[20..];
    let seq = u32::from_be_bytes([esp[4], esp[5], esp[6], esp[7]]);
    let mut iv = [0u8; 8];
    iv.copy_from_slice(&esp[8..16]);
    (seq, iv)
}

fn sa_pair(
    suite: (Cipher, Option<Integrity>),
    esn: bool,
    start: u64,
) -> (SecurityAssociation, SecurityAssociation) {
    let mut out = config(0x4242, Direction::Outbound, Mode::Tunnel, suite);
    out.tunnel(
        "192.0.2.1".parse::<IpAddr>().unwrap(),
        "198.51.100.2".parse::<IpAddr>().unwrap(),
    )
    .esn(esn)
    .seq(start);
    let mut inb = config(0x4242, Direction::Inbound, Mode::Tunnel, suite);
    inb.esn(esn)
        .replay_window(WINDOW)
        .seq(start)
        .late_histogram(true);
    (
        SecurityAssociation::new(out, Duration::ZERO).unwrap(),
        SecurityAssociation::new(inb, Duration::ZERO).unwrap(),
    )
}

#[derive(Clone, Debug)]
enum Op {
    /// The active outbound SA sends a packet; it goes in flight.
    Send,
    /// In-flight packet `i` (mod their number) reaches the active inbound SA.
    Deliver(usize),
    /// An attacker replays packet `i` (mod all sent so far) to the active inbound SA.
    Replay(usize),
    /// Both SAs are snapshotted.
    Snapshot,
    /// Failover to SAs restored from snapshot `i` (mod those taken); the margin, and
    /// whether the caller passes `not_below` (the last sequence number it knows used).
    Failover {
        snapshot: usize,
        margin: u64,
        tell_not_below: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => Just(Op::Send),
        5 => any::<usize>().prop_map(Op::Deliver),
        2 => any::<usize>().prop_map(Op::Replay),
        2 => Just(Op::Snapshot),
        1 => (any::<usize>(), 0u64..200, any::<bool>()).prop_map(|(snapshot, margin, tell)| {
            Op::Failover {
                snapshot,
                margin,
                tell_not_below: tell,
            }
        }),
    ]
}

/// What the test knows about one snapshot.
struct Taken {
    outbound: SaSnapshot,
    inbound: SaSnapshot,
    /// The outbound SA's last-used sequence number when it was taken.
    out_seq: u64,
    /// The outbound SA's packet counter when it was taken.
    out_packets: u64,
    /// Sequence numbers the inbound SA had accepted when it was taken.
    accepted: BTreeSet<u64>,
}

fn run(suite_index: usize, esn: bool, start: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let suites = all_suites();
    let suite = suites[suite_index % suites.len()];
    let (mut out, mut inb) = sa_pair(suite, esn, start);
    // The two machines' clocks: the standby's runs 1,000 s behind.
    let mut now = Duration::from_secs(10);
    let standby_offset = Duration::from_secs(1000);
    let mut on_standby = false;

    let mut sent_seqs: HashSet<u64> = HashSet::new();
    let mut sent_ivs: HashSet<[u8; 8]> = HashSet::new();
    let mut history: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut in_flight: Vec<usize> = Vec::new();
    // Accepted by the active inbound SA's lineage as the active SA knows it.
    let mut known: BTreeSet<u64> = BTreeSet::new();
    // Accepted by any inbound SA, ever.
    let mut ever: BTreeSet<u64> = BTreeSet::new();
    let mut snapshots: Vec<Taken> = Vec::new();
    let aead = suite.0.is_combined();

    for op in ops {
        now += Duration::from_millis(10);
        let clock = |on_standby: bool| {
            if on_standby {
                now + standby_offset
            } else {
                now
            }
        };
        match op {
            Op::Send => {
                let pkt = encrypt_at(&mut out, &inner_v4(40, 0), clock(on_standby)).unwrap();
                let seq = out.seq();
                let (wire, iv) = wire_seq_and_iv(&pkt);
                prop_assert_eq!(wire, seq as u32);
                prop_assert!(sent_seqs.insert(seq), "sequence number {} sent twice", seq);
                if aead {
                    prop_assert!(sent_ivs.insert(iv), "nonce (IV {:02x?}) sent twice", iv);
                    prop_assert_eq!(u64::from_be_bytes(iv), seq);
                }
                history.push((seq, pkt));
                in_flight.push(history.len() - 1);
            }
            Op::Deliver(i) | Op::Replay(i) => {
                let idx = match op {
                    Op::Deliver(_) if !in_flight.is_empty() => {
                        in_flight.remove(i % in_flight.len())
                    }
                    Op::Replay(_) if !history.is_empty() => i % history.len(),
                    _ => continue,
                };
                let (seq, pkt) = &history[idx];
                let top = inb.seq();
                let res = decrypt_at(&mut inb, pkt, clock(on_standby));
                if known.contains(seq) {
                    prop_assert!(
                        // With ESN a packet below the window is taken for one of the
                        // next 2^32 subspace (RFC 4303 Appendix A): its ICV fails.
                        matches!(
                            res,
                            Err(Error::Replayed { .. }
                                | Error::TooOld { .. }
                                | Error::AuthenticationFailed)
                        ),
                        "seq {} accepted twice by the restored lineage: {:?}",
                        seq,
                        res.map(|_| ())
                    );
                } else if !ever.contains(seq) && *seq + u64::from(WINDOW) > top {
                    prop_assert!(res.is_ok(), "fresh seq {} refused: {:?}", seq, res);
                }
                if res.is_ok() {
                    known.insert(*seq);
                    ever.insert(*seq);
                }
            }
            Op::Snapshot => {
                let at = clock(on_standby);
                snapshots.push(Taken {
                    outbound: out.snapshot(at),
                    inbound: inb.snapshot(at),
                    out_seq: out.seq(),
                    out_packets: out.stats().packets,
                    accepted: known.clone(),
                });
            }
            Op::Failover {
                snapshot,
                margin,
                tell_not_below,
            } => {
                if snapshots.is_empty() {
                    continue;
                }
                let taken = &snapshots[snapshot % snapshots.len()];
                let last_used = out.seq();
                let staleness = last_used - taken.out_seq;
                on_standby = !on_standby;
                let at = clock(on_standby);
                let restored = if *tell_not_below {
                    let opts = RestoreOptions::new()
                        .seq_margin(*margin)
                        .not_below(last_used);
                    match SecurityAssociation::restore(taken.outbound.as_bytes(), &opts, at) {
                        Ok(sa) => {
                            prop_assert!(taken.out_seq + margin >= last_used);
                            sa
                        }
                        Err(SnapshotError::Backwards {
                            restored,
                            not_below,
                        }) => {
                            prop_assert!(restored < not_below);
                            prop_assert_eq!(restored, taken.out_seq + margin);
                            // The caller retries with a margin that covers the gap.
                            let opts = opts.seq_margin(staleness + margin);
                            SecurityAssociation::restore(taken.outbound.as_bytes(), &opts, at)
                                .unwrap()
                        }
                        Err(e) => return Err(TestCaseError::fail(format!("restore: {e}"))),
                    }
                } else {
                    // A caller without `not_below` sizes its margin for the packets the
                    // primary can send between snapshots.
                    let opts = RestoreOptions::new().seq_margin(staleness + margin);
                    SecurityAssociation::restore(taken.outbound.as_bytes(), &opts, at).unwrap()
                };
                prop_assert!(restored.seq() >= last_used);
                prop_assert_eq!(restored.stats().packets, taken.out_packets);
                out = restored;
                inb = SecurityAssociation::restore(
                    taken.inbound.as_bytes(),
                    &RestoreOptions::new(),
                    at,
                )
                .unwrap();
                known = taken.accepted.clone();
                prop_assert_eq!(inb.seq(), known.last().copied().unwrap_or(start).max(start));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn no_nonce_twice_and_no_replay_after_failover(
        suite_index in 0usize..32,
        esn in any::<bool>(),
        start_sel in 0u8..3,
        ops in proptest::collection::vec(op(), 1..160),
    ) {
        // A fresh SA, one near the 2^32 boundary (ESN inference across it), one restored.
        let start = match (start_sel, esn) {
            (0, _) => 0,
            (1, true) => (1u64 << 32) - 40,
            _ => 1_000,
        };
        run(suite_index, esn, start, &ops)?;
    }
}

/// A restored outbound SA continues after the margin; its packets decrypt on the peer.
#[test]
fn restored_outbound_continues_after_the_margin_and_interoperates() {
    let (mut out, mut inb) = sa_pair((Cipher::Aes256Gcm, None), false, 0);
    let t = Duration::from_secs(1);
    for _ in 0..5 {
        let p = encrypt_at(&mut out, &inner_v4(60, 0), t).unwrap();
        decrypt_at(&mut inb, &p, t).unwrap();
    }
    let snap = out.snapshot(t);
    let opts = RestoreOptions::new();
    assert_eq!(opts.seq_margin, 1 << 20);
    let mut standby = SecurityAssociation::restore(snap.as_bytes(), &opts, t).unwrap();
    assert_eq!(standby.seq(), 5 + (1 << 20));
    assert_eq!(standby.stats().packets, 5);
    let p = encrypt_at(&mut standby, &inner_v4(60, 0), t).unwrap();
    assert_eq!(wire_seq_and_iv(&p).0, 6 + (1 << 20));
    decrypt_at(&mut inb, &p, t).unwrap();
    assert_eq!(standby.stats().packets, 6);
    assert_eq!(standby.spi(), 0x4242);
    assert_eq!(snap.spi(), 0x4242);
}

/// A margin that leaves no sequence number is refused, for 32-bit and ESN SAs alike.
#[test]
fn a_margin_past_the_sequence_space_is_refused() {
    let (out, _) = sa_pair((Cipher::Aes128Gcm, None), false, u64::from(u32::MAX) - 10);
    let snap = out.snapshot(Duration::ZERO);
    let ok = RestoreOptions::new().seq_margin(9);
    assert_eq!(
        SecurityAssociation::restore(snap.as_bytes(), &ok, Duration::ZERO)
            .unwrap()
            .seq(),
        u64::from(u32::MAX) - 1
    );
    for margin in [10, 11, 1 << 20, u64::MAX] {
        let opts = RestoreOptions::new().seq_margin(margin);
        let e = SecurityAssociation::restore(snap.as_bytes(), &opts, Duration::ZERO).unwrap_err();
        assert_eq!(
            e,
            SnapshotError::SeqSpaceExhausted {
                seq: u64::from(u32::MAX) - 10,
                margin,
                limit: u64::from(u32::MAX)
            }
        );
        assert!(!e.is_invalid_snapshot());
        assert_eq!(e.to_config_error().key(), "seq_margin");
    }
    // With ESN the same SA has room.
    let (out, _) = sa_pair((Cipher::Aes128Gcm, None), true, u64::from(u32::MAX) - 10);
    let snap = out.snapshot(Duration::ZERO);
    let sa = SecurityAssociation::restore(snap.as_bytes(), &RestoreOptions::new(), Duration::ZERO)
        .unwrap();
    assert_eq!(sa.seq(), u64::from(u32::MAX) - 10 + (1 << 20));
    let (out, _) = sa_pair((Cipher::Aes128Gcm, None), true, u64::MAX - 5);
    let snap = out.snapshot(Duration::ZERO);
    assert!(matches!(
        SecurityAssociation::restore(snap.as_bytes(), &RestoreOptions::new(), Duration::ZERO),
        Err(SnapshotError::SeqSpaceExhausted { .. })
    ));
}

/// `not_below`: equal is fine (the next packet is above it), below is refused.
#[test]
fn restoring_backwards_is_refused() {
    let (out, _) = sa_pair((Cipher::ChaCha20Poly1305, None), false, 100);
    let snap = out.snapshot(Duration::ZERO);
    let at = |n| RestoreOptions::new().seq_margin(50).not_below(n);
    assert_eq!(
        SecurityAssociation::restore(snap.as_bytes(), &at(150), Duration::ZERO)
            .unwrap()
            .seq(),
        150
    );
    let e = SecurityAssociation::restore(snap.as_bytes(), &at(151), Duration::ZERO).unwrap_err();
    assert_eq!(
        e,
        SnapshotError::Backwards {
            restored: 150,
            not_below: 151
        }
    );
    assert_eq!(e.to_config_error().key(), "not_below");
}

/// The inbound window comes back bit for bit: received packets stay refused, and a gap
/// inside the window (a packet still in flight) is accepted, not refused as
/// `ReplayWindow::with_highest` would.
#[test]
fn the_inbound_window_is_restored_exactly() {
    let (mut out, mut inb) = sa_pair((Cipher::Aes128Gcm, None), false, 0);
    let t = Duration::ZERO;
    let pkts: Vec<Vec<u8>> = (0..100)
        .map(|_| encrypt_at(&mut out, &inner_v4(30, 0), t).unwrap())
        .collect();
    for (i, p) in pkts.iter().enumerate() {
        if i % 3 != 1 {
            decrypt_at(&mut inb, p, t).unwrap();
        }
    }
    let _ = decrypt_at(&mut inb, &pkts[0], t); // a replay, counted
    let snap = inb.snapshot(t);
    let mut standby =
        SecurityAssociation::restore(snap.as_bytes(), &RestoreOptions::new(), t).unwrap();
    assert_eq!(standby.seq(), 100);
    assert_eq!(standby.stats(), inb.stats());
    assert_eq!(standby.replay_window().size(), WINDOW);
    assert_eq!(
        standby.replay_window().late_histogram(),
        inb.replay_window().late_histogram()
    );
    for (i, p) in pkts.iter().enumerate() {
        let seq = i as u64 + 1;
        let res = decrypt_at(&mut standby, p, t);
        if seq + u64::from(WINDOW) <= 100 {
            assert!(matches!(res, Err(Error::TooOld { .. })), "{seq}: {res:?}");
        } else if i % 3 == 1 {
            assert!(res.is_ok(), "{seq} was never received: {res:?}");
        } else {
            assert!(matches!(res, Err(Error::Replayed { .. })), "{seq}: {res:?}");
        }
    }
}

/// Lifetime usage and time: the age carries over to a clock that reads less than it,
/// and to one that reads more; events raised and not polled are still pending.
#[test]
fn lifetimes_carry_over_across_clocks() {
    let mut cfg = config(
        0x777,
        Direction::Outbound,
        Mode::Tunnel,
        (Cipher::Aes128Gcm, None),
    );
    cfg.tunnel("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap())
        .soft_lifetime(Lifetime::NONE.with_packets(3))
        .hard_lifetime(
            Lifetime::NONE
                .with_time(Duration::from_secs(100))
                .with_packets(1000),
        );
    let created = Duration::from_secs(500);
    let mut sa = SecurityAssociation::new(cfg, created).unwrap();
    let t = created + Duration::from_secs(60);
    for _ in 0..3 {
        encrypt_at(&mut sa, &inner_v4(30, 0), t).unwrap();
    }
    let snap = sa.snapshot(t);
    for standby_now in [Duration::from_secs(5), Duration::from_secs(10_000)] {
        let mut r = SecurityAssociation::restore(
            snap.as_bytes(),
            &RestoreOptions::new().seq_margin(10),
            standby_now,
        )
        .unwrap();
        assert_eq!(r.stats().packets, 3);
        assert_eq!(
            r.poll_event(standby_now),
            Some(SaEvent::Rekey(LifetimeLimit::Packets))
        );
        assert_eq!(r.poll_event(standby_now), None);
        // 60 s of the 100 s were used: 39 s more is fine, 40 s is the end.
        let almost = standby_now + Duration::from_secs(39);
        encrypt_at(&mut r, &inner_v4(30, 0), almost).unwrap();
        let end = standby_now + Duration::from_secs(40);
        assert_eq!(
            encrypt_at(&mut r, &inner_v4(30, 0), end),
            Err(Error::LifetimeExpired(LifetimeLimit::Time))
        );
        assert_eq!(
            r.poll_event(end),
            Some(SaEvent::Expired(LifetimeLimit::Time))
        );
        // The caller who knows the snapshot is 30 s old says so: 9 s are left.
        let r = SecurityAssociation::restore(
            snap.as_bytes(),
            &RestoreOptions::new().elapsed_since_snapshot(Duration::from_secs(31)),
            standby_now,
        )
        .unwrap();
        let mut r = r;
        assert_eq!(
            encrypt_at(
                &mut r,
                &inner_v4(30, 0),
                standby_now + Duration::from_secs(9)
            ),
            Err(Error::LifetimeExpired(LifetimeLimit::Time))
        );
    }
}

/// An expired SA stays expired; every suite round-trips its keys.
#[test]
fn expired_state_and_every_suite_round_trip() {
    for suite in all_suites() {
        let (mut out, mut inb) = sa_pair(suite, false, 0);
        let t = Duration::ZERO;
        let p = encrypt_at(&mut out, &inner_v4(50, 0), t).unwrap();
        let snap_out = out.snapshot(t);
        let snap_in = inb.snapshot(t);
        let mut out2 = SecurityAssociation::restore(
            snap_out.as_bytes(),
            &RestoreOptions::new().seq_margin(1),
            t,
        )
        .unwrap();
        let mut inb2 =
            SecurityAssociation::restore(snap_in.as_bytes(), &RestoreOptions::new(), t).unwrap();
        decrypt_at(&mut inb2, &p, t).unwrap();
        let q = encrypt_at(&mut out2, &inner_v4(50, 0), t).unwrap();
        assert_eq!(wire_seq_and_iv(&q).0, 3, "{suite:?}");
        decrypt_at(&mut inb, &q, t).unwrap();
        assert_eq!((out2.cipher(), out2.integrity()), suite);
    }
    let mut cfg = config(
        0x778,
        Direction::Outbound,
        Mode::Transport,
        (Cipher::Aes128Gcm, None),
    );
    cfg.hard_lifetime(Lifetime::NONE.with_packets(1));
    let mut sa = SecurityAssociation::new(cfg, Duration::ZERO).unwrap();
    let mut pkt = inner_v4(30, 0);
    pkt[9] = 17;
    encrypt_at(&mut sa, &pkt, Duration::ZERO).unwrap();
    assert!(encrypt_at(&mut sa, &pkt, Duration::ZERO).is_err());
    assert!(sa.is_expired());
    let r = SecurityAssociation::restore(
        sa.snapshot(Duration::ZERO).as_bytes(),
        &RestoreOptions::new(),
        Duration::ZERO,
    )
    .unwrap();
    assert!(r.is_expired());
}

/// The late-packet histogram is opt-in (`SaConfig::late_histogram`): an inbound SA
/// without one reads as empty; a restored SA keeps one when the snapshot's counted a
/// packet, or when the restore asks for one.
#[test]
fn the_late_histogram_is_opt_in_and_kept_through_snapshots() {
    let t = Duration::ZERO;
    for opted_in in [false, true] {
        let (mut out, _) = sa_pair((Cipher::Aes128Gcm, None), false, 0);
        let mut c = config(
            0x4242,
            Direction::Inbound,
            Mode::Tunnel,
            (Cipher::Aes128Gcm, None),
        );
        c.late_histogram(opted_in);
        let mut inb = SecurityAssociation::new(c, t).unwrap();
        let pkts: Vec<Vec<u8>> = (0..3)
            .map(|_| encrypt_at(&mut out, &inner_v4(30, 0), t).unwrap())
            .collect();
        decrypt_at(&mut inb, &pkts[2], t).unwrap();
        let empty =
            SecurityAssociation::restore(inb.snapshot(t).as_bytes(), &RestoreOptions::new(), t)
                .unwrap();
        decrypt_at(&mut inb, &pkts[0], t).unwrap(); // 2 behind the top: late
        let late = inb.replay_window().late_histogram();
        assert_eq!(late.total(), u64::from(opted_in), "opted in: {opted_in}");
        let restored =
            SecurityAssociation::restore(inb.snapshot(t).as_bytes(), &RestoreOptions::new(), t)
                .unwrap();
        assert_eq!(restored.replay_window().late_histogram(), late);
        // An empty histogram restores as none unless the restore asks for one.
        let mut asked = SecurityAssociation::restore(
            inb.snapshot(t).as_bytes(),
            &RestoreOptions::new().late_histogram(true),
            t,
        )
        .unwrap();
        for (mut sa, counts) in [(empty, false), (restored, opted_in)] {
            decrypt_at(&mut sa, &pkts[1], t).unwrap();
            let n = sa.replay_window().late_histogram().total();
            assert_eq!(n, 2 * u64::from(counts), "opted in: {opted_in}");
        }
        decrypt_at(&mut asked, &pkts[1], t).unwrap();
        let n = asked.replay_window().late_histogram().total();
        assert_eq!(n, 1 + u64::from(opted_in));
    }
}
