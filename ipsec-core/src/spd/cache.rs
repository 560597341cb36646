//! The optional SPD cache (RFC 4301 §4.4.2): exact-match flow -> decision.

use crate::spd::{Decision, Flow, Spd};
use std::net::IpAddr;

/// A two-way set-associative exact-match cache of lookups, owned by the caller (one per
/// thread).
///
/// It borrows its [`Spd`], which cannot change, so a cached answer is always the answer
/// [`Spd::lookup`] would give: the cache is "invalidated on any change" because a change
/// means a new `Spd` and a new cache. A slot holds the whole flow and its decision; a
/// set holds the two most recently inserted flows of its hash. No allocation happens
/// after [`SpdCache::new`]. `lookup` takes `&mut self` (it fills slots); the `Spd` itself
/// stays shared and `&self`, so many threads can each own a cache over one `Spd`.
pub struct SpdCache<'a> {
    spd: &'a Spd,
    slots: Vec<[Option<(Flow, Decision<'a>)>; 2]>,
    mask: usize,
    hits: u64,
    misses: u64,
}

impl<'a> SpdCache<'a> {
    /// A cache for `spd` with room for `capacity` flows (rounded up to a power of two,
    /// at least 2).
    pub fn new(spd: &'a Spd, capacity: usize) -> SpdCache<'a> {
        let sets = (capacity / 2).max(1).next_power_of_two();
        SpdCache {
            spd,
            slots: vec![[None, None]; sets],
            mask: sets - 1,
            hits: 0,
            misses: 0,
        }
    }

    /// The same answer as [`Spd::lookup`], from the cache when the flow was seen.
    #[inline]
    pub fn lookup(&mut self, flow: &Flow) -> Decision<'a> {
        let set = &mut self.slots[(hash(flow) as usize) & self.mask];
        for (f, d) in set.iter().flatten() {
            if f == flow {
                self.hits += 1;
                return *d;
            }
        }
        self.misses += 1;
        let d = self.spd.lookup(flow);
        set[1] = set[0].take();
        set[0] = Some((*flow, d));
        d
    }

    /// Lookups answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Lookups that went to the classifier.
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// Empties the cache (the statistics stay).
    pub fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = [None, None]);
    }
}

/// A flow and the position of the policy that decides it (`None`: no policy, DISCARD).
type CachedFlow = (Flow, Option<u32>);

/// The SPD cache of a [`Gateway`](crate::Gateway) (off unless
/// [`Gateway::set_spd_cache`](crate::Gateway::set_spd_cache) gives it room): like
/// [`SpdCache`] but holding policy positions rather than borrowed decisions, so that it
/// can live in the gateway beside the SPD it caches. The gateway empties it whenever it
/// swaps its policies, so it never answers from a replaced SPD. Its hash is keyed with a
/// random seed, so that flows cannot be chosen to collide in one set.
pub(crate) struct FlowCache {
    slots: Vec<[Option<CachedFlow>; 2]>,
    mask: usize,
    seed: u64,
    pub(crate) hits: u64,
    pub(crate) misses: u64,
}

impl FlowCache {
    /// Room for `capacity` flows (rounded up to a power of two); 0 turns it off.
    pub(crate) fn new(capacity: usize) -> FlowCache {
        let sets = if capacity == 0 {
            0
        } else {
            (capacity / 2).max(1).next_power_of_two()
        };
        FlowCache {
            slots: vec![[None, None]; sets],
            mask: sets.saturating_sub(1),
            seed: getrandom::u64().unwrap_or(0x2545_f491_4f6c_dd1d),
            hits: 0,
            misses: 0,
        }
    }

    /// Whether it is off (no room: every lookup goes to the SPD).
    #[inline]
    pub(crate) fn is_off(&self) -> bool {
        self.slots.is_empty()
    }

    /// Flows it has room for (0: off).
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len() * 2
    }

    /// The same answer as [`Spd::lookup`] on `spd` (the SPD the cache was last
    /// [`FlowCache::clear`]ed for).
    #[inline]
    pub(crate) fn lookup<'s>(&mut self, spd: &'s Spd, flow: &Flow) -> Decision<'s> {
        if self.slots.is_empty() {
            return spd.lookup(flow);
        }
        let set = &mut self.slots[(hash(flow) ^ self.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            as usize
            >> 7
            & self.mask];
        for (f, index) in set.iter().flatten() {
            if f == flow {
                self.hits += 1;
                return spd.decision_at(index.map(|i| i as usize), flow.direction);
            }
        }
        self.misses += 1;
        let d = spd.lookup(flow);
        set[1] = set[0].take();
        set[0] = Some((*flow, d.policy_index.map(|i| i as u32)));
        d
    }

    /// Forgets every flow (the SPD changed).
    pub(crate) fn clear(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = [None, None]);
    }
}

#[inline]
fn addr_bits(a: IpAddr) -> u64 {
    match a {
        IpAddr::V4(x) => u64::from(u32::from(x)),
        IpAddr::V6(x) => {
            let v = u128::from(x);
            (v as u64) ^ ((v >> 64) as u64).rotate_left(17)
        }
    }
}

#[inline]
fn hash(f: &Flow) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let ports = u64::from(f.src_port.unwrap_or(0)) << 16 | u64::from(f.dst_port.unwrap_or(0));
    let icmp = u64::from(f.icmp_type.unwrap_or(0)) << 8 | u64::from(f.icmp_code.unwrap_or(0));
    let misc = u64::from(f.protocol) << 40 | (f.direction as u64) << 48 | icmp << 24 | ports;
    let mut h = addr_bits(f.src).wrapping_mul(K);
    h = (h.rotate_left(23) ^ addr_bits(f.dst)).wrapping_mul(K);
    h = (h.rotate_left(23) ^ misc).wrapping_mul(K);
    h ^ (h >> 29)
}
