//! An alternative compiled classifier, kept for comparison (`EngineKind::BitVector`; see
//! the `spd` module docs for why it is not the default): per-dimension bit vectors (Lakshman & Stiliadis, "High-speed
//! policy-based packet forwarding using efficient multi-dimensional range matching",
//! SIGCOMM 1998) with an aggregate bitmap (Baboescu & Varghese, ABV, SIGCOMM 2001).
//!
//! Every dimension (source IPv4, source IPv6, destination IPv4, destination IPv6,
//! protocol, "A" = source port or ICMP type, "B" = destination port or ICMP code) is cut
//! into elementary intervals at every rule boundary. Each interval points to the bit
//! vector of the rules (in priority order) whose range covers it. A lookup binary-searches
//! each dimension once, ANDs the five bit vectors and returns the first set bit: the
//! first matching rule. The aggregate bitmap has one bit per 64-bit word (set if that
//! word is non-zero), so the AND skips all-zero stretches and stops at the first hit.
//! Identical bit vectors are stored once.

use crate::spd::selector::{AddrSet, Step};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;

/// The port/ICMP dimensions use this value for "unknown" (OPAQUE) or "absent".
pub(crate) const OPAQUE: u32 = 1 << 16;

/// One rule as the classifier sees it (already oriented for one direction).
pub(crate) struct RuleRef<'a> {
    pub(crate) src: &'a AddrSet,
    pub(crate) dst: &'a AddrSet,
    pub(crate) protocol: Option<u8>,
    /// Source port or ICMP type; `None` = any (including OPAQUE).
    pub(crate) a: Option<(u16, u16)>,
    /// Destination port or ICMP code; `None` = any (including OPAQUE).
    pub(crate) b: Option<(u16, u16)>,
}

/// The lookup key of one packet (see [`crate::spd::Flow`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Key {
    pub(crate) src: IpAddr,
    pub(crate) dst: IpAddr,
    pub(crate) protocol: u8,
    pub(crate) a: u32,
    pub(crate) b: u32,
}

trait Bound: Copy + Ord + Hash + Step {
    const MIN: Self;
}
impl Bound for u32 {
    const MIN: u32 = 0;
}
impl Bound for u128 {
    const MIN: u128 = 0;
}

/// Elementary intervals of one dimension: `starts[i]..starts[i+1]` maps to `sets[i]`.
#[derive(Debug, Default)]
struct Dim<K> {
    starts: Vec<K>,
    sets: Vec<u32>,
}

impl<K: Bound> Dim<K> {
    #[inline]
    fn get(&self, key: K) -> u32 {
        let i = self.starts.partition_point(|&s| s <= key);
        self.sets[i - 1]
    }

    fn bytes(&self) -> usize {
        self.starts.len() * size_of::<K>() + self.sets.len() * 4
    }
}

/// Stores bit vectors, each `stride` words: `agg` words of aggregate, then `words` words.
struct Pool {
    words: usize,
    agg: usize,
    data: Vec<u64>,
    index: HashMap<Vec<u64>, u32>,
}

impl Pool {
    fn intern(&mut self, bits: &[u64]) -> u32 {
        if let Some(&id) = self.index.get(bits) {
            return id;
        }
        let id = u32::try_from(self.index.len()).expect("fewer than 2^32 bit vectors");
        let start = self.data.len();
        self.data.resize(start + self.agg, 0);
        for (w, &word) in bits.iter().enumerate() {
            if word != 0 {
                self.data[start + w / 64] |= 1 << (w % 64);
            }
        }
        self.data.extend_from_slice(bits);
        self.index.insert(bits.to_vec(), id);
        id
    }
}

fn build_dim<K: Bound>(pool: &mut Pool, rules: &[Vec<(K, K)>]) -> Dim<K> {
    // Events: (point, rule, add?) — ranges of one rule are disjoint and non-adjacent.
    let mut events: Vec<(K, u32, bool)> = Vec::new();
    for (r, ranges) in rules.iter().enumerate() {
        let r = r as u32;
        for &(lo, hi) in ranges {
            events.push((lo, r, true));
            if let Some(end) = hi.next() {
                events.push((end, r, false));
            }
        }
    }
    events.sort_unstable_by_key(|e| e.0);
    let mut bits = vec![0u64; pool.words];
    let mut dim = Dim {
        starts: Vec::new(),
        sets: Vec::new(),
    };
    let mut i = 0;
    let mut point = K::MIN;
    loop {
        while i < events.len() && events[i].0 == point {
            let (_, r, add) = events[i];
            let (w, b) = (r as usize / 64, r % 64);
            if add {
                bits[w] |= 1 << b;
            } else {
                bits[w] &= !(1 << b);
            }
            i += 1;
        }
        dim.starts.push(point);
        dim.sets.push(pool.intern(&bits));
        match events.get(i) {
            Some(e) => point = e.0,
            None => break,
        }
    }
    dim
}

/// The compiled form of an ordered rule list for one direction.
pub(crate) struct Classifier {
    len: usize,
    agg: usize,
    stride: usize,
    pool: Vec<u64>,
    src4: Dim<u32>,
    src6: Dim<u128>,
    dst4: Dim<u32>,
    dst6: Dim<u128>,
    proto: Box<[u32; 256]>,
    a: Dim<u32>,
    b: Dim<u32>,
}

impl Classifier {
    pub(crate) fn build(rules: &[RuleRef<'_>]) -> Classifier {
        let len = rules.len();
        let words = len.div_ceil(64).max(1);
        let agg = words.div_ceil(64);
        let mut pool = Pool {
            words,
            agg,
            data: Vec::new(),
            index: HashMap::new(),
        };
        let v4 = |s: &AddrSet| s.v4_ranges().to_vec();
        let v6 = |s: &AddrSet| s.v6_ranges().to_vec();
        let port = |p: Option<(u16, u16)>| match p {
            None => vec![(0u32, OPAQUE)],
            Some((l, h)) => vec![(u32::from(l), u32::from(h))],
        };
        let src4 = build_dim(
            &mut pool,
            &rules.iter().map(|r| v4(r.src)).collect::<Vec<_>>(),
        );
        let src6 = build_dim(
            &mut pool,
            &rules.iter().map(|r| v6(r.src)).collect::<Vec<_>>(),
        );
        let dst4 = build_dim(
            &mut pool,
            &rules.iter().map(|r| v4(r.dst)).collect::<Vec<_>>(),
        );
        let dst6 = build_dim(
            &mut pool,
            &rules.iter().map(|r| v6(r.dst)).collect::<Vec<_>>(),
        );
        let a = build_dim(
            &mut pool,
            &rules.iter().map(|r| port(r.a)).collect::<Vec<_>>(),
        );
        let b = build_dim(
            &mut pool,
            &rules.iter().map(|r| port(r.b)).collect::<Vec<_>>(),
        );
        let protos: Vec<Vec<(u32, u32)>> = rules
            .iter()
            .map(|r| match r.protocol {
                None => vec![(0, 255)],
                Some(p) => vec![(u32::from(p), u32::from(p))],
            })
            .collect();
        let pdim = build_dim(&mut pool, &protos);
        let proto = Box::new(core::array::from_fn(|p| pdim.get(p as u32)));
        Classifier {
            len,
            agg,
            stride: agg + words,
            pool: pool.data,
            src4,
            src6,
            dst4,
            dst6,
            proto,
            a,
            b,
        }
    }

    /// The index of the first rule matching `key`.
    #[inline]
    pub(crate) fn lookup(&self, key: &Key) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let s = match key.src {
            IpAddr::V4(x) => self.src4.get(u32::from(x)),
            IpAddr::V6(x) => self.src6.get(u128::from(x)),
        };
        let d = match key.dst {
            IpAddr::V4(x) => self.dst4.get(u32::from(x)),
            IpAddr::V6(x) => self.dst6.get(u128::from(x)),
        };
        let p = self.proto[usize::from(key.protocol)];
        let a = self.a.get(key.a);
        let b = self.b.get(key.b);
        let set = |id: u32| {
            let start = id as usize * self.stride;
            &self.pool[start..start + self.stride]
        };
        let (s, d, p, a, b) = (set(s), set(d), set(p), set(a), set(b));
        for g in 0..self.agg {
            let mut m = s[g] & d[g] & p[g] & a[g] & b[g];
            while m != 0 {
                let w = g * 64 + m.trailing_zeros() as usize;
                let i = self.agg + w;
                // The address dimensions are the selective ones: test them first, and
                // touch the protocol and port vectors only when they leave a candidate.
                let sd = s[i] & d[i];
                if sd != 0 {
                    let x = sd & p[i] & a[i] & b[i];
                    if x != 0 {
                        return Some(w * 64 + x.trailing_zeros() as usize);
                    }
                }
                m &= m - 1;
            }
        }
        None
    }

    /// Heap bytes used by the compiled structure.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.pool.len() * 8
            + self.src4.bytes()
            + self.src6.bytes()
            + self.dst4.bytes()
            + self.dst6.bytes()
            + self.a.bytes()
            + self.b.bytes()
            + 256 * 4
    }
}
