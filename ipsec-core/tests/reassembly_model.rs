//! `Reassembler` against a naive model.
//!
//! Random datagrams (IPv4, IPv6 with and without a Hop-by-Hop header) are cut at random
//! 8-byte boundaries; their fragments are reordered, lost, duplicated, joined by forged
//! fragments that overlap real ones (or copy them with a changed byte), interleaved with
//! the fragments of the other datagrams, with time passing between them, `expire`
//! calls, and some deliveries through `insert_in_place` into buffers that may be too
//! small. The model keeps, per datagram, a plain byte map of the payload received and
//! the list of fragments held, and applies the documented rules by linear scans; it
//! predicts the answer to every call (held, the exact bytes of a completed datagram,
//! or the error) and every counter.
//!
//! Independently of the model, a datagram whose fragments all arrived, unforged, within
//! its lifetime, under the default limits, must come out equal to the original.

use core::time::Duration;
use ipsec_core::packet::set_ipv4_checksum;
use ipsec_core::{
    DropReason, Error, FragmentError, PacketBuf, Reassembler, Reassembly, ReassemblyLimits,
};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// One datagram of a scenario.
#[derive(Clone, Debug)]
struct Spec {
    /// 0: IPv4, 1: IPv6, 2: IPv6 with a Hop-by-Hop header (unfragmentable part).
    kind: u8,
    /// The payload (what is cut into fragments).
    payload: Vec<u8>,
    /// Fragment boundaries: sorted multiples of 8 strictly inside the payload.
    cuts: Vec<usize>,
}

impl Spec {
    fn v6(&self) -> bool {
        self.kind != 0
    }

    /// The header (IPv4) or unfragmentable part (IPv6) of datagram `i`, lengths unset.
    fn head(&self, i: usize) -> Vec<u8> {
        if !self.v6() {
            let mut h = vec![0u8; 20];
            h[0] = 0x45;
            h[4..6].copy_from_slice(&(0x100 + i as u16).to_be_bytes());
            h[8] = 64;
            h[9] = 50;
            h[12..16].copy_from_slice(&[192, 0, 2, 1]);
            h[16..20].copy_from_slice(&[198, 51, 100, 2]);
            return h;
        }
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[7] = 64;
        h[8] = 0x20;
        h[23] = 1;
        h[24] = 0x20;
        h[39] = 2;
        if self.kind == 2 {
            h[6] = 0; // Hop-by-Hop, PadN
            h.extend_from_slice(&[50, 0, 1, 4, 0, 0, 0, 0]);
        } else {
            h[6] = 50;
        }
        h
    }

    /// The datagram `i` whole, carrying `payload`: the expected output.
    fn datagram(&self, i: usize, payload: &[u8]) -> Vec<u8> {
        let mut d = self.head(i);
        d.extend_from_slice(payload);
        let len = d.len();
        if self.v6() {
            d[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        } else {
            d[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            set_ipv4_checksum(&mut d[..20]);
        }
        d
    }

    /// The fragment of datagram `i` carrying `data` at `start`.
    fn fragment(&self, i: usize, start: usize, data: &[u8], last: bool) -> Vec<u8> {
        let mut p = self.head(i);
        if self.v6() {
            let nh_at = if self.kind == 2 { 40 } else { 6 };
            p[nh_at] = 44;
            let off_m = ((start / 8) as u16) << 3 | u16::from(!last);
            p.extend_from_slice(&[50, 0]);
            p.extend_from_slice(&off_m.to_be_bytes());
            p.extend_from_slice(&(0x1000 + i as u32).to_be_bytes());
            p.extend_from_slice(data);
            let plen = (p.len() - 40) as u16;
            p[4..6].copy_from_slice(&plen.to_be_bytes());
        } else {
            p.extend_from_slice(data);
            let len = p.len() as u16;
            p[2..4].copy_from_slice(&len.to_be_bytes());
            let frag = (start / 8) as u16 | if last { 0 } else { 0x2000 };
            p[6..8].copy_from_slice(&frag.to_be_bytes());
            set_ipv4_checksum(&mut p[..20]);
        }
        p
    }

    /// The real fragments: (start, end, last).
    fn pieces(&self) -> Vec<(usize, usize, bool)> {
        let mut bounds = vec![0];
        bounds.extend(&self.cuts);
        bounds.push(self.payload.len());
        bounds
            .windows(2)
            .map(|w| (w[0], w[1], w[1] == self.payload.len()))
            .collect()
    }
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0u8..3,
        16usize..=1600,
        prop::collection::vec(any::<usize>(), 1..8),
        any::<u8>(),
    )
        .prop_map(|(kind, len, raw_cuts, fill)| {
            let mut cuts: Vec<usize> = raw_cuts
                .iter()
                .map(|c| (c % len) & !7)
                .filter(|&c| c > 0 && c < len)
                .collect();
            cuts.sort_unstable();
            cuts.dedup();
            if cuts.is_empty() {
                cuts.push(8);
            }
            let payload = (0..len).map(|j| (j as u8).wrapping_mul(7) ^ fill).collect();
            Spec {
                kind,
                payload,
                cuts,
            }
        })
}

/// What happens to one real fragment.
#[derive(Clone, Copy, Debug)]
enum Fate {
    Deliver,
    Lose,
    Duplicate,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![8 => Just(Fate::Deliver), 1 => Just(Fate::Lose), 2 => Just(Fate::Duplicate)]
}

/// A forged fragment: 8-byte aligned, `start_sel`/`len_sel` reduced to the datagram;
/// with `flip`, one payload byte changed; with `early_last`, flagged as the last
/// fragment wherever it ends (a datagram end that contradicts the real one).
#[derive(Clone, Copy, Debug)]
struct Forged {
    start_sel: usize,
    len_sel: usize,
    flip: bool,
    early_last: bool,
}

fn forged() -> impl Strategy<Value = Option<Forged>> {
    prop::option::weighted(
        0.3,
        (
            any::<usize>(),
            any::<usize>(),
            any::<bool>(),
            prop::bool::weighted(0.3),
        )
            .prop_map(|(start_sel, len_sel, flip, early_last)| Forged {
                start_sel,
                len_sel,
                flip,
                early_last,
            }),
    )
}

/// How a fragment is handed over.
#[derive(Clone, Copy, Debug)]
enum Via {
    Insert,
    /// `insert_in_place` with this much tailroom behind the fragment.
    InPlace(usize),
}

fn via() -> impl Strategy<Value = Via> {
    prop_oneof![3 => Just(Via::Insert), 1 => (0usize..3000).prop_map(Via::InPlace)]
}

#[derive(Clone, Debug)]
struct Scenario {
    limits: usize,
    specs: Vec<Spec>,
    fates: Vec<Vec<Fate>>,
    forged: Vec<Option<Forged>>,
    /// Sort keys that shuffle the events.
    order: Vec<u32>,
    /// Per event: time to advance before it (ms), an `expire` call before it, the way
    /// it is delivered.
    steps: Vec<(u32, bool, Via)>,
}

const LIMITS: [ReassemblyLimits; 5] = [
    ReassemblyLimits::DEFAULT,
    ReassemblyLimits::DEFAULT.with_max_datagrams(2),
    ReassemblyLimits::DEFAULT.with_max_fragments(3),
    ReassemblyLimits::DEFAULT.with_max_bytes(3000),
    ReassemblyLimits::DEFAULT.with_lifetime(Duration::from_secs(5)),
];

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        0..LIMITS.len(),
        prop::collection::vec(spec(), 1..5),
        prop::collection::vec(prop::collection::vec(fate(), 8), 5),
        prop::collection::vec(forged(), 5),
        prop::collection::vec(any::<u32>(), 60),
        prop::collection::vec(
            (
                prop_oneof![6 => 0u32..500, 3 => 0u32..4000, 1 => 4000u32..40_000],
                prop::bool::weighted(0.1),
                via(),
            ),
            60,
        ),
    )
        .prop_map(|(limits, specs, fates, forged, order, steps)| Scenario {
            limits,
            specs,
            fates,
            forged,
            order,
            steps,
        })
}

/// One fragment to deliver.
#[derive(Clone, Debug)]
struct Event {
    dg: usize,
    start: usize,
    data: Vec<u8>,
    last: bool,
    forged: bool,
}

fn events(s: &Scenario) -> Vec<Event> {
    let mut ev = Vec::new();
    for (i, spec) in s.specs.iter().enumerate() {
        for (j, (start, end, last)) in spec.pieces().into_iter().enumerate() {
            let e = Event {
                dg: i,
                start,
                data: spec.payload[start..end].to_vec(),
                last,
                forged: false,
            };
            match s.fates[i][j] {
                Fate::Deliver => ev.push(e),
                Fate::Lose => {}
                Fate::Duplicate => {
                    ev.push(e.clone());
                    ev.push(e);
                }
            }
        }
        if let Some(f) = s.forged[i] {
            let len = spec.payload.len();
            let start = (f.start_sel % len) & !7;
            let end = (start + 8 * (1 + f.len_sel % 64)).min(len);
            let mut data = spec.payload[start..end].to_vec();
            if f.flip {
                let k = f.len_sel % data.len();
                data[k] ^= 0x55;
            }
            ev.push(Event {
                dg: i,
                start,
                data,
                last: end == len || f.early_last,
                forged: true,
            });
        }
    }
    let mut keyed: Vec<(u32, usize, Event)> = ev
        .into_iter()
        .enumerate()
        .map(|(n, e)| (s.order[n % s.order.len()], n, e))
        .collect();
    keyed.sort_by_key(|(k, n, _)| (*k, *n));
    keyed.into_iter().map(|(_, _, e)| e).collect()
}

/// The answer to one call, as compared.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    NotFragment,
    Held,
    Complete(Vec<u8>),
    Refused(Error),
}

/// A datagram in the model.
#[derive(Clone, Debug)]
struct ModelDatagram {
    created: Duration,
    /// `Some(byte)` for every payload byte received.
    bytes: Vec<Option<u8>>,
    /// The fragments held: (start, data, last, charge).
    held: Vec<(usize, Vec<u8>, bool, usize)>,
    /// The payload end a last fragment gave.
    end: Option<usize>,
}

impl ModelDatagram {
    fn max_end(&self) -> usize {
        self.held
            .iter()
            .map(|(s, d, _, _)| s + d.len())
            .max()
            .unwrap_or(0)
    }
}

/// The naive model of the reassembler.
struct Model {
    limits: ReassemblyLimits,
    datagrams: BTreeMap<usize, ModelDatagram>,
    drops: BTreeMap<DropReason, u64>,
    packets: u64,
    bytes: u64,
}

impl Model {
    fn held_bytes(&self) -> usize {
        self.datagrams
            .values()
            .flat_map(|d| d.held.iter().map(|h| h.3))
            .sum()
    }

    fn held_fragments(&self) -> usize {
        self.datagrams.values().map(|d| d.held.len()).sum()
    }

    fn count(&mut self, reason: DropReason, n: usize) {
        *self.drops.entry(reason).or_default() += n as u64;
    }

    fn expire(&mut self, now: Duration) -> usize {
        let lifetime = self.limits.lifetime;
        let dead: Vec<usize> = self
            .datagrams
            .iter()
            .filter(|(_, d)| now >= d.created.saturating_add(lifetime))
            .map(|(k, _)| *k)
            .collect();
        let mut n = 0;
        for k in dead {
            n += self.datagrams.remove(&k).expect("present").held.len();
        }
        self.count(DropReason::FragmentTimeout, n);
        n
    }

    fn refuse(&mut self, e: FragmentError) -> Answer {
        self.count(e.drop_reason(), 1);
        Answer::Refused(Error::Fragment(e))
    }

    fn drop_datagram(&mut self, dg: usize, e: FragmentError) -> Answer {
        let n = self.datagrams.remove(&dg).expect("present").held.len() + 1;
        self.count(e.drop_reason(), n);
        Answer::Refused(Error::Fragment(e))
    }

    /// The answer to fragment `e` (wire length `wire`) at `now`, with `room` bytes for a
    /// completed datagram behind the fragment's start.
    fn insert(
        &mut self,
        spec: &Spec,
        e: &Event,
        wire: usize,
        now: Duration,
        room: usize,
    ) -> Answer {
        self.expire(now);
        let end = e.start + e.data.len();
        if e.start == 0 && e.last {
            // Not a fragment (IPv4) or an atomic fragment (IPv6).
            if !spec.v6() {
                return Answer::NotFragment;
            }
            self.packets += 1;
            let d = spec.datagram(e.dg, &e.data);
            self.bytes += d.len() as u64;
            return Answer::Complete(d);
        }
        let charge = wire + Reassembler::FRAGMENT_OVERHEAD;
        let over_bytes = self.held_bytes() + charge > self.limits.max_bytes;
        match self.datagrams.get(&e.dg) {
            Some(d) => {
                if d.held
                    .iter()
                    .any(|(s, data, last, _)| *s == e.start && *data == e.data && *last == e.last)
                {
                    return self.refuse(FragmentError::Duplicate);
                }
                let contradicts = if e.last {
                    d.end.is_some_and(|x| x != end) || end < d.max_end()
                } else {
                    d.end.is_some_and(|x| end > x)
                };
                if contradicts {
                    return self.drop_datagram(e.dg, FragmentError::Invalid);
                }
                if d.bytes[e.start..end].iter().any(Option::is_some) {
                    return self.drop_datagram(e.dg, FragmentError::Overlap);
                }
                if d.held.len() >= self.limits.max_fragments || over_bytes {
                    return self.refuse(FragmentError::Limit);
                }
            }
            None => {
                if self.datagrams.len() >= self.limits.max_datagrams || over_bytes {
                    return self.refuse(FragmentError::Limit);
                }
            }
        }
        let mut d = self.datagrams.get(&e.dg).cloned().unwrap_or(ModelDatagram {
            created: now,
            bytes: vec![None; 65_536],
            held: Vec::new(),
            end: None,
        });
        for (k, b) in e.data.iter().enumerate() {
            d.bytes[e.start + k] = Some(*b);
        }
        d.held.push((e.start, e.data.clone(), e.last, charge));
        if e.last {
            d.end = Some(end);
        }
        let whole = d.end.filter(|&x| d.bytes[..x].iter().all(Option::is_some));
        if let Some(x) = whole {
            let payload: Vec<u8> = d.bytes[..x].iter().map(|b| b.expect("all set")).collect();
            let out = spec.datagram(e.dg, &payload);
            if out.len() > room {
                self.count(DropReason::NoBufferSpace, 1);
                return Answer::Refused(Error::NoTailroom {
                    needed: out.len() - wire,
                    available: room - wire,
                });
            }
            self.datagrams.remove(&e.dg);
            self.packets += 1;
            self.bytes += out.len() as u64;
            return Answer::Complete(out);
        }
        self.datagrams.insert(e.dg, d);
        Answer::Held
    }
}

fn answer(r: Result<Reassembly<'_>, Error>) -> Answer {
    match r {
        Ok(Reassembly::NotFragment) => Answer::NotFragment,
        Ok(Reassembly::Held) => Answer::Held,
        Ok(Reassembly::Complete(d)) => Answer::Complete(d.to_vec()),
        Ok(other) => panic!("unknown answer {other:?}"),
        Err(e) => Answer::Refused(e),
    }
}

fn run(s: &Scenario) -> Result<(), TestCaseError> {
    let limits = LIMITS[s.limits];
    let mut r = Reassembler::new(limits);
    let mut m = Model {
        limits,
        datagrams: BTreeMap::new(),
        drops: BTreeMap::new(),
        packets: 0,
        bytes: 0,
    };
    let evs = events(s);
    let mut now = Duration::from_secs(1000);
    // Per datagram: when its first and last fragment were delivered, and its outputs.
    let mut span: Vec<Option<(Duration, Duration)>> = vec![None; s.specs.len()];
    let mut outputs: Vec<Vec<Vec<u8>>> = vec![Vec::new(); s.specs.len()];
    for (n, e) in evs.iter().enumerate() {
        let (advance_ms, expire, via) = s.steps[n % s.steps.len()];
        now += Duration::from_millis(u64::from(advance_ms));
        if expire {
            prop_assert_eq!(r.expire(now), m.expire(now), "expire at event {}", n);
        }
        let spec = &s.specs[e.dg];
        let pkt = spec.fragment(e.dg, e.start, &e.data, e.last);
        let (got, room) = match via {
            Via::Insert => (answer(r.insert(&pkt, now)), usize::MAX),
            Via::InPlace(extra) => {
                let mut buf = vec![0u8; 24 + pkt.len() + extra];
                buf[24..24 + pkt.len()].copy_from_slice(&pkt);
                let mut p = PacketBuf::new(&mut buf, 24, pkt.len()).expect("descriptor");
                let got = answer(r.insert_in_place(&mut p, now));
                if !matches!(got, Answer::Complete(_)) {
                    prop_assert_eq!((p.offset(), p.len()), (24, pkt.len()));
                }
                (got, pkt.len() + extra)
            }
        };
        let want = m.insert(spec, e, pkt.len(), now, room);
        prop_assert_eq!(&got, &want, "event {}: {:?}", n, e);
        if !e.forged {
            let sp = span[e.dg].get_or_insert((now, now));
            sp.1 = now;
        }
        if let Answer::Complete(d) = got {
            outputs[e.dg].push(d);
        }
        prop_assert_eq!(r.held_bytes(), m.held_bytes());
        prop_assert!(r.held_bytes() <= limits.max_bytes);
        prop_assert_eq!(r.held_fragments(), m.held_fragments());
        prop_assert_eq!(r.datagrams(), m.datagrams.len());
    }
    // Counters.
    prop_assert_eq!(r.stats().packets, m.packets);
    prop_assert_eq!(r.stats().bytes, m.bytes);
    for reason in DropReason::ALL {
        prop_assert_eq!(
            r.stats().dropped(reason),
            m.drops.get(&reason).copied().unwrap_or(0),
            "counter {}",
            reason
        );
    }
    // Whatever is left times out, every held fragment counted.
    let left = r.held_fragments();
    prop_assert_eq!(r.expire(Duration::MAX), left);
    prop_assert_eq!(r.held_bytes(), 0);

    // Clean datagrams come out whole and equal to the original.
    for (i, spec) in s.specs.iter().enumerate() {
        let all_delivered = s.fates[i][..spec.pieces().len()]
            .iter()
            .all(|f| !matches!(f, Fate::Lose));
        let in_time = span[i].is_some_and(|(a, b)| b - a < limits.lifetime);
        if s.limits == 0 && all_delivered && s.forged[i].is_none() && in_time {
            let original = spec.datagram(i, &spec.payload);
            // In place with too little room refuses the completing fragment; the
            // model covers that, so only require every output to be the original.
            prop_assert!(
                outputs[i].iter().all(|o| *o == original),
                "datagram {} came out different",
                i
            );
            if outputs[i].is_empty() {
                // Only a refused in-place completion may keep it from coming out.
                prop_assert!(r.stats().dropped(DropReason::NoBufferSpace) > 0);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn reassembler_agrees_with_the_byte_map_model(s in scenario()) {
        run(&s)?;
    }
}
