//! One SA on several worker threads, each with its own gateway (`Gateway::add_sa_lane`):
//! the packet path of a worker takes no lock another worker holds, control calls go to
//! each worker's gateway in turn, and the SA's state is shared where it must be (the
//! sequence number counter, the replay window). The receiver of the workers' packets is
//! an ordinary SA.

use ipsec_core::gateway::{BurstVerdict, Inbound, Outbound};
use ipsec_core::sa::{Direction, Mode};
use ipsec_core::spd::Spd;
use ipsec_core::{
    Cipher, ControlError, DropReason, Error, Gateway, Integrity, PacketBuf, SaConfig, SaLane,
    SecurityAssociation, SharedSa, SharedSaOptions,
};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const T0: Duration = Duration::ZERO;
const ROOM: usize = 96;
const SPI: u32 = 0x4242;

fn key(n: u8) -> [u8; 20] {
    core::array::from_fn(|i| n.wrapping_mul(37) ^ (i as u8).wrapping_mul(11))
}

fn config(spi: u32, dir: Direction, key: &[u8]) -> SaConfig {
    let c = SaConfig::new(spi, dir, Mode::Tunnel, Cipher::Aes128Gcm, key);
    tunnel_config(c, dir)
}

/// `c`, an SA of direction `dir`, with this side's tunnel (outbound) or a replay window
/// of 4096 (inbound).
fn tunnel_config(mut c: SaConfig, dir: Direction) -> SaConfig {
    if dir == Direction::Outbound {
        c.tunnel(
            "192.0.2.1".parse().unwrap(),
            "198.51.100.2".parse().unwrap(),
        );
    } else {
        c.replay_window(4096);
    }
    c
}

/// A UDP packet 10.0.0.1 -> 10.1.0.1 carrying `tag`.
fn inner(tag: u32) -> Vec<u8> {
    packet([10, 0, 0, 1], [10, 1, 0, 1], tag)
}

/// A UDP packet `src` -> `dst` carrying `tag`.
fn packet(src: [u8; 4], dst: [u8; 4], tag: u32) -> Vec<u8> {
    let mut p = vec![0u8; 64];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&64u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[28..32].copy_from_slice(&tag.to_be_bytes());
    p
}

fn tag_of(inner: &[u8]) -> u32 {
    u32::from_be_bytes(inner[28..32].try_into().unwrap())
}

fn spi_seq_of(wire: &[u8]) -> (u32, u32) {
    (
        u32::from_be_bytes(wire[20..24].try_into().unwrap()),
        u32::from_be_bytes(wire[24..28].try_into().unwrap()),
    )
}

/// A worker gateway: the policy that protects 10.0.0.0/24 -> 10.1.0.0/24 through `sa`
/// (both directions, installed after the SAs), then a deny-all.
fn worker_gateway() -> Gateway {
    let spd =
        Spd::from_toml("[[policy]]\nname = \"deny\"\ndirection = \"both\"\naction = \"discard\"\n")
            .unwrap();
    Gateway::new(spd, T0).unwrap()
}

fn install_policy(gw: &mut Gateway, direction: &str, sa: &str) {
    let text = format!(
        "name = \"branch\"\ndirection = \"{direction}\"\nlocal = \"10.0.0.0/24\"\n\
         remote = \"10.1.0.0/24\"\naction = \"protect\"\nsa = \"{sa}\"\n"
    );
    gw.install_policy(&text, Some("deny")).unwrap();
}

fn send(gw: &mut Gateway, tag: u32) -> Result<(Vec<u8>, String), Error> {
    let pkt = inner(tag);
    let mut buf = vec![0u8; ROOM + pkt.len() + ROOM];
    buf[ROOM..ROOM + pkt.len()].copy_from_slice(&pkt);
    let mut p = PacketBuf::new(&mut buf, ROOM, pkt.len())?;
    let sa = match gw.outbound(&mut p, T0)? {
        Outbound::Protected { sa, .. } => sa.to_owned(),
        other => panic!("not protected: {other:?}"),
    };
    Ok((p.data().to_vec(), sa))
}

/// Packets tagged 0 .. `count` from the branch (remote) to the head office (local),
/// sealed by the peer's outbound SA `peer`.
fn from_branch(peer: &mut SecurityAssociation, count: u32) -> Vec<Vec<u8>> {
    (0..count)
        .map(|tag| {
            let pkt = packet([10, 1, 0, 1], [10, 0, 0, 1], tag);
            let mut buf = vec![0u8; ROOM + pkt.len() + ROOM];
            buf[ROOM..ROOM + pkt.len()].copy_from_slice(&pkt);
            let mut p = PacketBuf::new(&mut buf, ROOM, pkt.len()).unwrap();
            peer.encrypt(&mut p, T0).unwrap();
            p.data().to_vec()
        })
        .collect()
}

fn decrypt(sa: &mut SecurityAssociation, wire: &[u8]) -> Result<Vec<u8>, Error> {
    let mut buf = wire.to_vec();
    let mut p = PacketBuf::new(&mut buf, 0, wire.len())?;
    sa.decrypt(&mut p, T0)?;
    Ok(p.data().to_vec())
}

fn lanes(spi: u32, dir: Direction, key: &[u8], n: usize) -> (SharedSa, Vec<SaLane>) {
    SharedSa::new(config(spi, dir, key), SharedSaOptions::lanes(n), T0).unwrap()
}

#[test]
fn two_worker_gateways_send_one_sa_and_rekey_it_under_traffic() {
    const PER_WORKER: u32 = 3000;
    /// Packets each worker still sends once both rekeys are done, so that some go out
    /// under the new SA however the threads are scheduled.
    const AFTER_REKEY: u32 = 20;
    let rekeyed = Arc::new(AtomicBool::new(false));
    let (old_shared, old_lanes) = lanes(SPI, Direction::Outbound, &key(1), 2);
    let workers: Vec<Arc<Mutex<Gateway>>> = old_lanes
        .into_iter()
        .map(|lane| {
            let mut gw = worker_gateway();
            gw.add_sa_lane("out", lane).unwrap();
            install_policy(&mut gw, "outbound", "out");
            Arc::new(Mutex::new(gw))
        })
        .collect();
    // Each worker locks only its own gateway, per packet; the control thread takes each
    // worker's lock for one call at a time.
    let threads: Vec<_> = workers
        .iter()
        .enumerate()
        .map(|(w, gw)| {
            let gw = Arc::clone(gw);
            let rekeyed = Arc::clone(&rekeyed);
            std::thread::spawn(move || {
                // At least PER_WORKER packets, and AFTER_REKEY more after the rekey.
                let mut out = Vec::new();
                let mut after = 0;
                let mut i = 0;
                while i < PER_WORKER || after < AFTER_REKEY {
                    if rekeyed.load(Ordering::Acquire) {
                        after += 1;
                    }
                    let tag = (w as u32) << 24 | i;
                    let (wire, sa) = send(&mut gw.lock().unwrap(), tag).unwrap();
                    out.push((tag, wire, sa));
                    i += 1;
                }
                out
            })
        })
        .collect();
    // Rekey while they send: each worker's outbound policy moves to its lane of the new
    // SA in one call; the old lane is deleted after.
    let (new_shared, new_lanes) = lanes(SPI + 1, Direction::Outbound, &key(2), 2);
    std::thread::sleep(Duration::from_millis(2));
    for (gw, lane) in workers.iter().zip(new_lanes) {
        let mut gw = gw.lock().unwrap();
        gw.rekey_sa_lane("out", "out.2", lane).unwrap();
        gw.delete_sa("out").unwrap();
    }
    rekeyed.store(true, Ordering::Release);
    let mut sent: Vec<_> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    // The receiver sees them in the order of their sequence numbers (the workers'
    // packets interleave on the wire).
    sent.sort_by_key(|(_, wire, _)| spi_seq_of(wire));
    assert!(sent.len() >= 2 * PER_WORKER as usize);

    let mut old_rx =
        SecurityAssociation::new(config(SPI, Direction::Inbound, &key(1)), T0).unwrap();
    let mut new_rx =
        SecurityAssociation::new(config(SPI + 1, Direction::Inbound, &key(2)), T0).unwrap();
    let mut seen_seq = HashSet::new();
    let mut tags = HashSet::new();
    let mut under_new = 0;
    for (tag, wire, sa) in &sent {
        let (spi, seq) = spi_seq_of(wire);
        assert!(
            seen_seq.insert((spi, seq)),
            "sequence number {seq} of SPI {spi:#x} used twice"
        );
        let rx = if spi == SPI { &mut old_rx } else { &mut new_rx };
        let plain = decrypt(rx, wire).unwrap_or_else(|e| panic!("packet {tag:#x}: {e}"));
        assert_eq!(tag_of(&plain), *tag);
        assert!(tags.insert(*tag));
        assert_eq!(sa, if spi == SPI { "out" } else { "out.2" });
        under_new += usize::from(spi == SPI + 1);
    }
    assert!(under_new > 0, "some packets went out after the rekey");
    // Counters: the old lanes published when their gateway entries went; the new ones
    // when the gateways go.
    assert_eq!(old_shared.stats().packets as usize, sent.len() - under_new);
    drop(workers);
    assert_eq!(new_shared.stats().packets as usize, under_new);
    // Every number leased was sent, bar the unused rest of each lane's last block.
    assert!(old_shared.seq() as usize >= sent.len() - under_new);
    assert!(new_shared.seq() as usize - under_new < 2 * 8);
}

#[test]
fn two_worker_gateways_accept_each_packet_of_one_sa_once() {
    const PACKETS: u32 = 2000;
    let mut peer = SecurityAssociation::new(config(SPI, Direction::Outbound, &key(3)), T0).unwrap();
    let wires: Arc<Vec<Vec<u8>>> = Arc::new(from_branch(&mut peer, PACKETS));
    let (shared, in_lanes) = lanes(SPI, Direction::Inbound, &key(3), 2);
    // Every packet goes to both workers (as when a packet is duplicated on the way):
    // exactly one accepts it.
    let threads: Vec<_> = in_lanes
        .into_iter()
        .map(|lane| {
            let wires = Arc::clone(&wires);
            std::thread::spawn(move || {
                let mut gw = worker_gateway();
                gw.add_sa_lane("in", lane).unwrap();
                install_policy(&mut gw, "inbound", "in");
                let mut accepted = Vec::new();
                for wire in wires.iter() {
                    let mut buf = wire.clone();
                    let mut p = PacketBuf::new(&mut buf, 0, wire.len()).unwrap();
                    match gw.inbound(&mut p, T0) {
                        Ok(Inbound::Decrypted { sa, policy }) => {
                            assert_eq!((sa, policy), ("in", "branch"));
                            accepted.push(tag_of(p.data()));
                        }
                        Err(Error::Replayed { .. }) => {}
                        other => panic!("{other:?}"),
                    }
                }
                let replayed = gw.sa("in").unwrap().stats().dropped(DropReason::Replay);
                (accepted, replayed)
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let mut all: Vec<u32> = results
        .iter()
        .flat_map(|(a, _)| a.iter().copied())
        .collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..PACKETS).collect::<Vec<_>>(),
        "each packet accepted exactly once"
    );
    let replayed: u64 = results.iter().map(|(_, r)| r).sum();
    assert_eq!(
        replayed,
        u64::from(PACKETS),
        "each second copy counted as replayed"
    );
    let stats = shared.stats();
    assert_eq!(stats.packets, u64::from(PACKETS));
    assert_eq!(stats.dropped(DropReason::Replay), u64::from(PACKETS));
}

#[test]
fn a_refused_lane_is_given_back_unchanged() {
    let (_, mut out_lanes) = lanes(SPI, Direction::Outbound, &key(4), 2);
    let (_, mut in_lanes) = lanes(SPI, Direction::Inbound, &key(5), 2);
    let mut gw = worker_gateway();
    gw.add_sa_lane("out", out_lanes.remove(0)).unwrap();
    // The same name again: refused, the lane comes back and still works.
    let refused = gw.add_sa_lane("out", out_lanes.remove(0)).unwrap_err();
    assert!(
        matches!(refused.error, ControlError::DuplicateName { .. }),
        "{refused}"
    );
    let mut lane = *refused.lane;
    let pkt = inner(1);
    let mut buf = vec![0u8; ROOM + pkt.len() + ROOM];
    buf[ROOM..ROOM + pkt.len()].copy_from_slice(&pkt);
    let mut p = PacketBuf::new(&mut buf, ROOM, pkt.len()).unwrap();
    lane.encrypt(&mut p, T0).unwrap();
    // Another lane of the same SA in the same gateway: its key is in use there.
    let refused = gw.add_sa_lane("out2", lane).unwrap_err();
    assert!(
        matches!(refused.error, ControlError::Config(_)),
        "{refused}"
    );
    // Two inbound lanes of one SA in one gateway: the SPI is taken.
    gw.add_sa_lane("in", in_lanes.remove(0)).unwrap();
    let refused = gw.add_sa_lane("in2", in_lanes.remove(0)).unwrap_err();
    assert!(
        matches!(refused.error, ControlError::DuplicateSpi { spi: SPI, .. }),
        "{refused}"
    );
    // A lane's rekey of an SA of the other direction.
    let (_, mut other) = lanes(SPI + 9, Direction::Inbound, &key(6), 1);
    let refused = gw
        .rekey_sa_lane("out", "out.2", other.remove(0))
        .unwrap_err();
    assert!(
        matches!(refused.error, ControlError::DirectionMismatch { .. }),
        "{refused}"
    );
    let names: Vec<_> = gw.sas().map(|(n, _)| n.to_owned()).collect();
    assert_eq!(names, ["out", "in"], "nothing changed by the refused calls");
}

/// The AES-CBC + HMAC-SHA-256-128 SA of the burst test (its bursts interleave).
fn cbc_config(dir: Direction) -> SaConfig {
    let mut c = SaConfig::new(SPI, dir, Mode::Tunnel, Cipher::Aes128Cbc, &key(5)[..16]);
    c.integrity(Integrity::HmacSha256_128, &[0x3c; 32]);
    tunnel_config(c, dir)
}

/// Two worker gateways, each with its lane (blocks of 5) of a shared AES-CBC + HMAC SA
/// serving the branch policy `direction`.
fn cbc_workers(direction: Direction) -> (SharedSa, Vec<Gateway>) {
    let (shared, lanes) = SharedSa::new(
        cbc_config(direction),
        SharedSaOptions::lanes(2).with_block(5),
        T0,
    )
    .unwrap();
    let (name, dir) = match direction {
        Direction::Outbound => ("out", "outbound"),
        _ => ("in", "inbound"),
    };
    let gws = lanes
        .into_iter()
        .map(|lane| {
            let mut gw = worker_gateway();
            gw.add_sa_lane(name, lane).unwrap();
            install_policy(&mut gw, dir, name);
            gw
        })
        .collect();
    (shared, gws)
}

/// `packets` through `gws`, in bursts of `sizes` (cycled) handed to the gateways in
/// turn: with their burst calls when `burst`, else one packet at a time. Per packet,
/// its result and the bytes left in its window.
fn through_workers(
    gws: &mut [Gateway],
    packets: &[Vec<u8>],
    outbound: bool,
    burst: bool,
) -> Vec<(Result<BurstVerdict, Error>, Vec<u8>)> {
    let sizes = [13, 1, 32, 5, 9];
    let mut bufs: Vec<Vec<u8>> = packets
        .iter()
        .map(|p| {
            let mut b = vec![0u8; ROOM + p.len() + ROOM];
            b[ROOM..ROOM + p.len()].copy_from_slice(p);
            b
        })
        .collect();
    let mut pkts: Vec<PacketBuf<'_>> = bufs
        .iter_mut()
        .zip(packets)
        .map(|(b, p)| PacketBuf::new(b, ROOM, p.len()).unwrap())
        .collect();
    let mut results = vec![Ok(BurstVerdict::Bypassed); pkts.len()];
    let (mut at, mut k) = (0, 0);
    while at < pkts.len() {
        let end = (at + sizes[k % sizes.len()]).min(pkts.len());
        let gw = &mut gws[k % gws.len()];
        let (ps, rs) = (&mut pkts[at..end], &mut results[at..end]);
        match (outbound, burst) {
            (true, true) => {
                gw.outbound_burst(ps, rs, T0);
            }
            (false, true) => {
                gw.inbound_burst(ps, rs, T0);
            }
            (true, false) => {
                for (p, r) in ps.iter_mut().zip(rs.iter_mut()) {
                    *r = gw.outbound(p, T0).map(|o| match o {
                        Outbound::Protected { .. } => BurstVerdict::Protected,
                        other => panic!("{other:?}"),
                    });
                }
            }
            (false, false) => {
                for (p, r) in ps.iter_mut().zip(rs.iter_mut()) {
                    *r = gw.inbound(p, T0).map(|i| match i {
                        Inbound::Decrypted { .. } => BurstVerdict::Decrypted,
                        other => panic!("{other:?}"),
                    });
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

/// Worker gateways' burst calls on their lanes give what their single calls give:
/// outbound the same sequence numbers (blocks of 5 leased at the same packets by two
/// gateways taking turns) and refusals, inbound the same verdicts on tampered and
/// replayed packets through the shared replay window, and the same counters; an
/// ordinary SA decrypts every packet the bursts sent.
#[test]
fn worker_gateway_bursts_on_lanes_give_what_single_calls_give() {
    let packets: Vec<Vec<u8>> = (0..150u32)
        .map(|tag| match tag % 31 {
            // No policy protects it: refused by the deny-all.
            30 => packet([10, 0, 0, 1], [10, 9, 0, 1], tag),
            _ => inner(tag),
        })
        .collect();
    let ((_, mut single), (_, mut bursty)) = (
        cbc_workers(Direction::Outbound),
        cbc_workers(Direction::Outbound),
    );
    let want = through_workers(&mut single, &packets, true, false);
    let got = through_workers(&mut bursty, &packets, true, true);
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(w.0, g.0, "packet {i}");
        if w.0.is_ok() {
            assert_eq!(spi_seq_of(&w.1), spi_seq_of(&g.1), "packet {i}");
            assert_eq!(w.1.len(), g.1.len(), "packet {i}");
        }
    }
    assert!(got.iter().any(|o| o.0 == Err(Error::PolicyDiscard)));
    for (s, b) in single.iter().zip(&bursty) {
        assert_eq!(s.sa("out").unwrap().stats(), b.sa("out").unwrap().stats());
    }
    let sent: Vec<&Vec<u8>> = got.iter().filter(|o| o.0.is_ok()).map(|o| &o.1).collect();
    let mut rx = SecurityAssociation::new(cbc_config(Direction::Inbound), T0).unwrap();
    for w in &sent {
        let p = decrypt(&mut rx, w).unwrap();
        assert_eq!(p, inner(tag_of(&p)));
    }
    // Inbound: the branch's packets to the head office, a tampered copy ahead of every
    // 11th, an earlier packet replayed after every 13th.
    let mut peer = SecurityAssociation::new(cbc_config(Direction::Outbound), T0).unwrap();
    let sealed = from_branch(&mut peer, 120);
    let mut wires = Vec::new();
    for (i, w) in sealed.iter().enumerate() {
        if i % 11 == 0 {
            let mut t = w.clone();
            let last = t.len() - 1;
            t[last] ^= 1;
            wires.push(t);
        }
        wires.push(w.clone());
        if i % 13 == 0 {
            wires.push(sealed[i / 2].clone());
        }
    }
    let ((_, mut single), (shared, mut bursty)) = (
        cbc_workers(Direction::Inbound),
        cbc_workers(Direction::Inbound),
    );
    let want = through_workers(&mut single, &wires, false, false);
    let got = through_workers(&mut bursty, &wires, false, true);
    assert_eq!(want, got);
    assert!(got.iter().any(|o| o.0 == Err(Error::AuthenticationFailed)));
    assert!(
        got.iter()
            .any(|o| matches!(o.0, Err(Error::Replayed { .. })))
    );
    let tags: Vec<u32> = got
        .iter()
        .filter(|o| o.0.is_ok())
        .map(|o| tag_of(&o.1))
        .collect();
    assert_eq!(
        tags,
        (0..120).collect::<Vec<_>>(),
        "each packet once, in order"
    );
    for (s, b) in single.iter().zip(&bursty) {
        assert_eq!(s.sa("in").unwrap().stats(), b.sa("in").unwrap().stats());
    }
    // The lanes counted their bursts' packets towards publication (every 64).
    assert!(shared.stats().packets > 0, "{:?}", shared.stats());
}
