//! Rekeying under traffic (issue 12): one thread streams packets through a gateway pair
//! while another rekeys 1,000 times, make-before-break. Every packet sent under a valid
//! SA arrives, none is accepted after its SA was deleted, and sequence numbers never
//! repeat under one key.
//!
//! # Set-up
//!
//! * The **sender** gateway has one outbound SA at a time (`out-N`) and the policy
//!   `stream` (10.0.0.0/24 -> 10.1.0.0/24, PROTECT through `out-0`); the **receiver**
//!   has the inbound SAs `in-N` and the policy `stream` through `in-0`. SA generation
//!   `N` has its own SPI (from the receiver's `allocate_spi`) and its own key (derived
//!   from `N`; the gateways refuse a key another installed SA uses). Each gateway sits
//!   behind its own `Mutex`, together with the test's model of it (updated under the
//!   same lock as the call it describes), so that the streaming thread can encrypt at
//!   the sender while the control thread changes the receiver, and the other way round.
//! * The **streaming thread** encrypts the numbered inner packet `i` at the sender,
//!   reads the SPI and sequence number from the ESP header, and either delivers the
//!   wire packet to the receiver at once (two in three) or holds it back for 1 to 80 of
//!   its own later sends (one in three; a seeded xorshift decides), so that packets
//!   arrive after the rekey that followed them, at the old inbound SA while it is still
//!   installed, or after it was deleted or retired.
//! * The **control thread** runs 1,000 rounds; round `N` is four steps: (1) at the
//!   receiver `allocate_spi` and `rekey_sa("in-{N-1}", "in-N")`; (2) at the sender
//!   `rekey_sa("out-{N-1}", "out-N")`; (3) `delete_sa("out-{N-1}")` at the sender (its
//!   final packet count must equal the packets the test saw it send); (4) the inbound SA
//!   replaced one round earlier, `in-{N-2}`, is deleted at once (even `N`) or retired
//!   `GRACE` later on the logical clock (odd `N`); every 16 rounds the receiver's
//!   `poll_event` runs too (it reaps retired SAs).
//! * **Clock**: a shared logical clock (`Duration`), advanced 1 ms by each control step
//!   and read by both threads under the lock of the gateway they call; no wall time.
//! * **Interleaving**: the threads run freely within a bounded skew: the controller
//!   takes step `k + 1` only after the streamer sent `2k` packets and at least one
//!   since step `k`, and the streamer sends at most 8 packets beyond `2k`. Which of
//!   them takes a gateway's lock first is up to the scheduler; the bound only
//!   guarantees that every outbound SA carries traffic and that late packets meet every
//!   state (old SA installed, retiring, deleted). Nothing about timing is asserted.
//!
//! # Checks
//!
//! (a) no (SA generation, sequence number) pair, hence no (key, sequence number) pair,
//! repeats, and under each SA the numbers go 1, 2, 3, ... in sending order; the SPI on
//! the wire is the one of the SA the verdict names, and that SA is always the newest
//! outbound one (the sender never refuses a packet during a rekey); (b) every packet
//! delivered while its inbound SA is installed (and, if retired, before its time)
//! decrypts, is reported by that SA, and is exactly the inner packet sent; (c) every
//! packet delivered after its inbound SA was deleted, or at or after its retirement
//! time, is refused as `Error::UnknownSpi` with its SPI, and the receiver's
//! `unknown_spi` counter equals the number of such packets; (d) nothing else is dropped:
//! the sum of all drop counters of the receiver (the gateway's, its installed SAs',
//! and the final ones of the SAs deleted or retired) equals those refusals, and the
//! sender drops nothing. Also: every packet is delivered exactly once, both late
//! acceptance by a replaced SA and late refusal happened, and each deleted SA's final
//! packet count is the number of packets the test saw it send or accept.
//!
//! # Figures
//!
//! 1,000 rekeys: 2,000 SAs installed by `rekey_sa` (1,000 per gateway), 1,000 outbound
//! SAs deleted, 998 inbound ones deleted or retired (half each); 8,006 packets, 2,739
//! of them held back: about 6,000 accepted (about 2,100 of those by an inbound SA that
//! already had a successor, about 220 by one waiting for its retirement time) and about
//! 1,980 refused as unknown SPI (about 900 of them after a retirement time). The debug
//! build of the test runs in 1.7 to 2.5 s on 2 cores (printed with the tallies: run it
//! with `--nocapture`); the exact split varies with the scheduling.

use ipsec_core::gateway::{Inbound, Outbound};
use ipsec_core::sa::{Direction, Mode};
use ipsec_core::spd::Spd;
use ipsec_core::{Cipher, DropReason, Error, Gateway, PacketBuf, SaConfig};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Make-before-break rekeys the control thread performs.
const ROUNDS: u32 = 1_000;
/// Control steps per round.
const STEPS_PER_ROUND: u64 = 4;
/// The controller takes step `k + 1` only after `SENDS_PER_STEP * k` sends...
const SENDS_PER_STEP: u64 = 2;
/// ... and the streamer is at most this many sends ahead of that.
const SLACK: u64 = 8;
/// How far each control step moves the logical clock.
const STEP: Duration = Duration::from_millis(1);
/// How long a retired inbound SA keeps accepting (six control steps).
const GRACE: Duration = Duration::from_millis(6);
/// The SPI of generation 0 (later ones come from `allocate_spi`).
const FIRST_SPI: u32 = 0x1000;
/// Room in front of and behind an outbound packet.
const ROOM: usize = 128;

/// A fresh AES-128-GCM key (16 key bytes + 4 salt) for SA generation `n`: its first
/// four bytes are `n`, so no two generations share a key.
fn key(n: u32) -> Vec<u8> {
    let mut k = n.to_be_bytes().to_vec();
    let mut x = u64::from(n) ^ 0x9e37_79b9_7f4a_7c15;
    while k.len() < 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        k.push(x as u8);
    }
    k
}

fn sa(spi: u32, dir: Direction, n: u32) -> SaConfig {
    let mut cfg = SaConfig::new(spi, dir, Mode::Tunnel, Cipher::Aes128Gcm, &key(n));
    if dir == Direction::Outbound {
        cfg.tunnel(
            "192.0.2.1".parse().unwrap(),
            "198.51.100.2".parse().unwrap(),
        );
    }
    cfg
}

fn gateway(policy: &str) -> Gateway {
    let deny = "[[policy]]\nname = \"deny\"\ndirection = \"both\"\naction = \"discard\"\n";
    let mut gw = Gateway::new(Spd::from_toml(deny).unwrap(), Duration::ZERO).unwrap();
    let (dir, name, local, remote) = match policy {
        "out-0" => (
            Direction::Outbound,
            "outbound",
            "10.0.0.0/24",
            "10.1.0.0/24",
        ),
        _ => (Direction::Inbound, "inbound", "10.1.0.0/24", "10.0.0.0/24"),
    };
    gw.add_sa(policy, sa(FIRST_SPI, dir, 0), Duration::ZERO)
        .unwrap();
    gw.install_policy(
        &format!(
            "name = \"stream\"\ndirection = \"{name}\"\nlocal = \"{local}\"\n\
             remote = \"{remote}\"\nprotocol = \"udp\"\naction = \"protect\"\nsa = \"{policy}\"\n"
        ),
        Some("deny"),
    )
    .unwrap();
    gw
}

/// Inner packet `id`: UDP 10.0.0.5:4000 -> 10.1.0.9:5000 carrying `id`.
fn inner(id: u64) -> Vec<u8> {
    let mut p = vec![0u8; 44];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&44u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 0, 0, 5]);
    p[16..20].copy_from_slice(&[10, 1, 0, 9]);
    p[20..22].copy_from_slice(&4000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5000u16.to_be_bytes());
    p[24..26].copy_from_slice(&24u16.to_be_bytes());
    p[28..36].copy_from_slice(&id.to_be_bytes());
    p
}

/// The logical clock both threads read.
struct Clock(AtomicU64);

impl Clock {
    fn now(&self) -> Duration {
        Duration::from_micros(self.0.load(Ordering::SeqCst))
    }

    fn advance(&self, by: Duration) -> Duration {
        let by = by.as_micros() as u64;
        Duration::from_micros(self.0.fetch_add(by, Ordering::SeqCst) + by)
    }
}

#[derive(Debug, Default)]
struct Counts {
    /// Packets the streamer sent.
    sends: u64,
    /// Steps the controller took.
    steps: u64,
    /// `sends` when the last step was taken.
    sends_at_step: u64,
    /// The controller is done (or a thread panicked).
    done: bool,
}

/// The bounded skew between the threads (see the module docs).
struct Progress {
    state: Mutex<Counts>,
    cv: Condvar,
}

impl Progress {
    /// Waits until the streamer may send; `false` when the run is over.
    fn before_send(&self) -> bool {
        let mut g = self.state.lock().unwrap();
        while !g.done && g.sends >= g.steps * SENDS_PER_STEP + SLACK {
            g = self.cv.wait(g).unwrap();
        }
        !g.done
    }

    /// Counts a send; called under the sender's lock, so that a send counted after a
    /// step was made after it.
    fn sent(&self) {
        self.state.lock().unwrap().sends += 1;
        self.cv.notify_all();
    }

    /// Waits until the controller may take its next step; `false` when the other
    /// thread has given up (it panicked).
    fn before_step(&self) -> bool {
        let mut g = self.state.lock().unwrap();
        while !g.done && (g.sends < g.steps * SENDS_PER_STEP || g.sends == g.sends_at_step) {
            g = self.cv.wait(g).unwrap();
        }
        !g.done
    }

    fn stepped(&self) {
        let mut g = self.state.lock().unwrap();
        g.steps += 1;
        g.sends_at_step = g.sends;
        drop(g);
        self.cv.notify_all();
    }

    fn finish(&self) {
        if let Ok(mut g) = self.state.lock() {
            g.done = true;
        }
        self.cv.notify_all();
    }
}

/// Ends the run when dropped, also by a panic, so that the other thread never waits
/// for ever.
struct FinishOnDrop<'a>(&'a Progress);

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// The sender and what the test knows of it.
struct Sender {
    gw: Gateway,
    /// The generation of the installed outbound SA.
    current: u32,
    /// SPI of each generation.
    spis: Vec<u32>,
    /// Packets sent under each generation, as the streamer saw them.
    sent: Vec<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum InState {
    Installed,
    Retiring(Duration),
    Deleted,
}

/// The receiver and what the test knows of it, by generation.
struct Receiver {
    gw: Gateway,
    names: Vec<String>,
    spis: Vec<u32>,
    states: Vec<InState>,
    /// Packets each inbound SA accepted.
    accepted: Vec<u64>,
    /// The drop counters of each SA, last seen (final for deleted and reaped SAs).
    drops: Vec<u64>,
}

impl Receiver {
    fn live(&self, sa_gen: usize, now: Duration) -> bool {
        match self.states[sa_gen] {
            InState::Installed => true,
            InState::Retiring(at) => now < at,
            InState::Deleted => false,
        }
    }
}

/// A protected packet on the wire.
struct Wire {
    id: u64,
    sa_gen: usize,
    spi: u32,
    bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct Tallies {
    sent: u64,
    held: u64,
    accepted: u64,
    /// Accepted by an inbound SA that already had a successor.
    accepted_by_replaced: u64,
    /// Accepted by an inbound SA waiting for its retirement time.
    accepted_while_retiring: u64,
    /// Refused as unknown SPI (the SA deleted, or its retirement time reached).
    refused: u64,
    refused_after_retirement: u64,
}

/// Delivers `w` to the receiver at the logical time and checks the verdict against the
/// model: (b) and (c) of the module docs.
fn deliver(rx: &Mutex<Receiver>, clock: &Clock, w: &Wire, t: &mut Tallies) {
    let mut r = rx.lock().unwrap();
    let r = &mut *r;
    let now = clock.now();
    let live = r.live(w.sa_gen, now);
    let unknown_before = r.gw.stats().dropped(DropReason::UnknownSpi);
    let drops_before = r.gw.stats().dropped_total();
    let mut buf = w.bytes.clone();
    let len = buf.len();
    let mut p = PacketBuf::new(&mut buf, 0, len).unwrap();
    let verdict = r.gw.inbound(&mut p, now).map(|v| match v {
        Inbound::Decrypted { sa, .. } => sa.to_owned(),
        other => panic!("packet {} not decrypted: {other:?}", w.id),
    });
    if live {
        let sa = verdict.unwrap_or_else(|e| {
            panic!(
                "packet {} of live SA {} ({:?}) refused: {e:?}",
                w.id, r.names[w.sa_gen], r.states[w.sa_gen]
            )
        });
        assert_eq!(sa, r.names[w.sa_gen], "packet {}", w.id);
        assert_eq!(p.data(), &inner(w.id)[..], "packet {}", w.id);
        let stats = r.gw.sa(&sa).unwrap().stats();
        r.accepted[w.sa_gen] += 1;
        assert_eq!(stats.packets, r.accepted[w.sa_gen], "{sa}");
        r.drops[w.sa_gen] = stats.dropped_total();
        assert_eq!(r.drops[w.sa_gen], 0, "{sa} dropped something");
        assert_eq!(r.gw.stats().dropped_total(), drops_before);
        t.accepted += 1;
        if r.states.get(w.sa_gen + 1).is_some() {
            t.accepted_by_replaced += 1;
        }
        if matches!(r.states[w.sa_gen], InState::Retiring(_)) {
            t.accepted_while_retiring += 1;
        }
    } else {
        assert_eq!(
            verdict.unwrap_err(),
            Error::UnknownSpi { spi: w.spi },
            "packet {} of {} ({:?}) at {now:?}",
            w.id,
            r.names[w.sa_gen],
            r.states[w.sa_gen]
        );
        assert!(r.gw.sa(&r.names[w.sa_gen]).is_none());
        assert_eq!(
            r.gw.stats().dropped(DropReason::UnknownSpi),
            unknown_before + 1
        );
        assert_eq!(r.gw.stats().dropped_total(), drops_before + 1);
        t.refused += 1;
        if matches!(r.states[w.sa_gen], InState::Retiring(_)) {
            t.refused_after_retirement += 1;
        }
    }
}

/// The streaming thread: sends until the controller is done, then delivers what it
/// still holds.
fn stream(tx: &Mutex<Sender>, rx: &Mutex<Receiver>, clock: &Clock, progress: &Progress) -> Tallies {
    let _finish = FinishOnDrop(progress);
    let mut t = Tallies::default();
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut held: Vec<(u64, Wire)> = Vec::new();
    let mut seen: HashSet<(usize, u32)> = HashSet::new();
    let mut last_seq: HashMap<usize, u32> = HashMap::new();
    let mut id = 0u64;
    while progress.before_send() {
        let packet = inner(id);
        let wire = {
            let mut s = tx.lock().unwrap();
            let s = &mut *s;
            let now = clock.now();
            let mut buf = vec![0u8; ROOM + packet.len() + ROOM];
            buf[ROOM..ROOM + packet.len()].copy_from_slice(&packet);
            let mut p = PacketBuf::new(&mut buf, ROOM, packet.len()).unwrap();
            let name = match s.gw.outbound(&mut p, now) {
                Ok(Outbound::Protected { sa, .. }) => sa.to_owned(),
                other => panic!("packet {id} not protected: {other:?}"),
            };
            let sa_gen: usize = name.strip_prefix("out-").unwrap().parse().unwrap();
            assert_eq!(sa_gen, s.current as usize, "sent under an old SA");
            s.sent[sa_gen] += 1;
            let bytes = p.data().to_vec();
            // Outer IPv4 header (20 bytes), then SPI and sequence number.
            let spi = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
            let seq = u32::from_be_bytes(bytes[24..28].try_into().unwrap());
            assert_eq!(spi, s.spis[sa_gen], "{name}");
            assert!(
                seen.insert((sa_gen, seq)),
                "{name}: sequence number {seq} again"
            );
            let prev = last_seq.insert(sa_gen, seq).unwrap_or(0);
            assert_eq!(seq, prev + 1, "{name}: sequence numbers in order");
            progress.sent();
            Wire {
                id,
                sa_gen,
                spi,
                bytes,
            }
        };
        t.sent += 1;
        if next() % 3 == 0 {
            let delay = 1 + next() % 80;
            held.push((id + delay, wire));
            t.held += 1;
        } else {
            deliver(rx, clock, &wire, &mut t);
        }
        // Held packets whose time came, oldest first.
        held.sort_by_key(|(due, w)| (*due, w.id));
        let due = held.iter().take_while(|(due, _)| *due <= id).count();
        for (_, w) in held.drain(..due) {
            deliver(rx, clock, &w, &mut t);
        }
        id += 1;
    }
    for (_, w) in held.drain(..) {
        deliver(rx, clock, &w, &mut t);
    }
    t
}

/// The control thread: `ROUNDS` make-before-break rekeys (see the module docs).
fn control(tx: &Mutex<Sender>, rx: &Mutex<Receiver>, clock: &Clock, progress: &Progress) {
    let _finish = FinishOnDrop(progress);
    let step = |f: &mut dyn FnMut(Duration)| {
        if !progress.before_step() {
            panic!("the streaming thread stopped");
        }
        let now = clock.advance(STEP);
        f(now);
        progress.stepped();
    };
    let mut used_spis: HashSet<u32> = HashSet::from([FIRST_SPI]);
    let mut rerolls = 0;
    for n in 1..=ROUNDS {
        let g = n as usize;
        let mut spi = 0;
        // 1. The receiver installs the new inbound SA next to the old one.
        step(&mut |now| {
            let mut r = rx.lock().unwrap();
            spi = loop {
                let s = r.gw.allocate_spi(now).unwrap();
                let installed = r
                    .spis
                    .iter()
                    .zip(&r.states)
                    .any(|(&x, st)| x == s && *st != InState::Deleted);
                assert!(
                    !installed,
                    "allocate_spi gave {s:#x}, the SPI of an installed SA"
                );
                // The test never reuses an SPI, so that a late packet of a deleted SA
                // is always an unknown SPI (never another SA's integrity failure).
                if used_spis.insert(s) {
                    break s;
                }
                rerolls += 1;
            };
            let (old, new) = (r.names[g - 1].clone(), format!("in-{n}"));
            r.gw.rekey_sa(&old, &new, sa(spi, Direction::Inbound, n), now)
                .unwrap();
            r.names.push(new);
            r.spis.push(spi);
            r.states.push(InState::Installed);
            r.accepted.push(0);
            r.drops.push(0);
        });
        // 2. The sender switches to the new SA in one call.
        step(&mut |now| {
            let mut s = tx.lock().unwrap();
            s.gw.rekey_sa(
                &format!("out-{}", n - 1),
                &format!("out-{n}"),
                sa(spi, Direction::Outbound, n),
                now,
            )
            .unwrap();
            s.current = n;
            s.spis.push(spi);
            s.sent.push(0);
        });
        // 3. The old outbound SA sends no more: deleted.
        step(&mut |_| {
            let mut s = tx.lock().unwrap();
            let stats = s.gw.delete_sa(&format!("out-{}", n - 1)).unwrap();
            assert_eq!(stats.packets, s.sent[g - 1], "out-{}", n - 1);
            assert_eq!(stats.dropped_total(), 0);
        });
        // 4. The inbound SA replaced a round ago: deleted, or retired after GRACE.
        step(&mut |now| {
            let mut r = rx.lock().unwrap();
            let r = &mut *r;
            if g >= 2 {
                let old = g - 2;
                if n % 2 == 0 {
                    let stats = r.gw.delete_sa(&r.names[old]).unwrap();
                    assert_eq!(stats.packets, r.accepted[old], "{}", r.names[old]);
                    r.drops[old] = stats.dropped_total();
                    r.states[old] = InState::Deleted;
                } else {
                    r.gw.retire_sa(&r.names[old], now + GRACE).unwrap();
                    r.states[old] = InState::Retiring(now + GRACE);
                }
            }
            if n % 16 == 0 {
                assert!(r.gw.poll_event(now).is_none());
            }
        });
    }
    assert!(rerolls < 10, "allocate_spi repeated {rerolls} old SPIs");
}

#[test]
fn a_thousand_make_before_break_rekeys_under_traffic() {
    let started = std::time::Instant::now();
    let clock = Clock(AtomicU64::new(0));
    let progress = Progress {
        state: Mutex::new(Counts::default()),
        cv: Condvar::new(),
    };
    let tx = Mutex::new(Sender {
        gw: gateway("out-0"),
        current: 0,
        spis: vec![FIRST_SPI],
        sent: vec![0],
    });
    let rx = Mutex::new(Receiver {
        gw: gateway("in-0"),
        names: vec!["in-0".into()],
        spis: vec![FIRST_SPI],
        states: vec![InState::Installed],
        accepted: vec![0],
        drops: vec![0],
    });
    let t = std::thread::scope(|scope| {
        let streamer = scope.spawn(|| stream(&tx, &rx, &clock, &progress));
        let controller = scope.spawn(|| control(&tx, &rx, &clock, &progress));
        controller.join().expect("control thread");
        streamer.join().expect("streaming thread")
    });
    let (s, mut r) = (tx.into_inner().unwrap(), rx.into_inner().unwrap());
    let steps = progress.state.into_inner().unwrap().steps;
    println!(
        "{t:?}; {steps} control steps, {ROUNDS} rekeys in {:?}",
        started.elapsed()
    );

    assert_eq!(steps, u64::from(ROUNDS) * STEPS_PER_ROUND);
    assert_eq!(s.current, ROUNDS);
    assert_eq!(s.sent.iter().sum::<u64>(), t.sent);
    assert!(
        s.sent.iter().all(|&n| n > 0),
        "every SA carried traffic (the skew bound)"
    );
    // Every packet was delivered once: accepted or refused as unknown SPI.
    assert_eq!(t.accepted + t.refused, t.sent);
    // (c) and (d) at the receiver.
    assert_eq!(r.gw.stats().dropped(DropReason::UnknownSpi), t.refused);
    let sa_drops: u64 = (0..r.names.len())
        .map(|g| match r.gw.sa(&r.names[g]) {
            Some(sa) => sa.stats().dropped_total(),
            None => r.drops[g],
        })
        .sum();
    assert_eq!(r.gw.stats().dropped_total() + sa_drops, t.refused);
    // (d) at the sender.
    let sender_drops: u64 =
        s.gw.sas()
            .map(|(_, sa)| sa.stats().dropped_total())
            .sum::<u64>()
            + s.gw.stats().dropped_total();
    assert_eq!(sender_drops, 0);
    // Nothing left behind: one outbound SA; once `poll_event` has deleted the retired
    // SAs whose time came, the inbound SAs the model has as installed or retiring.
    assert_eq!(
        s.gw.sas().map(|(n, _)| n.to_owned()).collect::<Vec<_>>(),
        [format!("out-{ROUNDS}")]
    );
    let now = clock.now();
    assert!(r.gw.poll_event(now).is_none());
    let mut left: Vec<String> = r.gw.sas().map(|(n, _)| n.to_owned()).collect();
    left.sort();
    let mut want: Vec<String> = (0..r.names.len())
        .filter(|&g| r.live(g, now))
        .map(|g| r.names[g].clone())
        .collect();
    want.sort();
    assert_eq!(left, want);
    assert!((2..=3).contains(&left.len()), "{left:?}");
    // The run met the states it is about.
    assert!(t.accepted_by_replaced > 0, "{t:?}");
    assert!(t.refused > 0, "{t:?}");
}
