//! The default compiled classifier: rules partitioned by wildcard pattern, each part
//! indexed by interval stabbing on its most selective dimension.
//!
//! The five dimensions (source, destination, protocol, A = source port or ICMP type,
//! B = destination port or ICMP code) are ranked by how selective they are in this rule
//! set (how many rules share their most common range there). Each rule joins the group
//! of the best-ranked dimension it does not leave as "any" — the idea of tuple-space
//! search (Srinivasan, Suri & Varghese, SIGCOMM 1999), with ranges instead of prefix
//! masks and far fewer groups. A group's dimension is its index: it is cut into
//! elementary intervals at the rule boundaries and each interval keeps the list of the
//! group's rules whose range covers it, in priority order (identical lists stored once).
//! A lookup finds its interval in each group's index (a bucket table, [`Starts`]) and
//! checks the listed rules in order against the whole key. In a small classifier a list
//! holds each rule's bounding box inline ([`Entry`]); in a large one
//! ([`FILTER_MIN_BYTES`]) a 16-byte filter box (the rule's box in the four other
//! dimensions, each mapped monotonically to 16 bits: [`QBox`]) and the rule's position,
//! and the lookup compares its own mapped key with every box of the list (one vector
//! compare each), checking only the rules whose box it passes (none at all when the
//! box is exact, [`Index::box_exact`]: the usual case for prefixes and port ranges, so
//! a large classifier's lookup reads no rule). There, long lists are kept in parts by
//! protocol class ([`ProtocolClasses`]), and a key scans the part of its protocol's
//! class (the list's rules that can match that protocol, in order). The first that
//! matches is the group's answer, and the earliest answer over all groups is the first
//! match. A candidate that comes after the best answer so far stops the scan, and whole
//! groups whose first rule comes after it are skipped.
//!
//! The answer depends only on each list (or part) holding every rule of its group whose
//! index range covers the point (and that can match the part's protocols), in order:
//! the filter only skips rules that cannot match (the
//! maps are monotone) and the full check does the rest, so it equals the naive scan by
//! construction. Memory is the rules plus one list entry per (rule, elementary
//! interval it covers); rules nested inside many others (a /8 over a thousand /24s) are
//! copied into many lists, so a global budget turns a group that would exceed it into a
//! plain ordered list (slower, still exact).

use crate::spd::huge::advise_huge_pages;
use crate::spd::prefetch::prefetch;
use crate::spd::tree::{DIMS, TRule};
use std::collections::{BTreeSet, HashMap};

/// Copies of rules into interval lists allowed per rule (plus a fixed allowance).
const BUDGET_PER_RULE: usize = 256;

/// A key type: `u32` for IPv4 (every dimension fits), `u128` for IPv6.
pub(crate) trait KeyInt: Copy + Ord + Default + core::fmt::Debug {
    /// Narrows a value known to fit.
    fn narrow(v: u128) -> Self;
    /// The low 32 bits.
    fn low(self) -> u32;
    /// An address as a candidate's box stores it: all of it for IPv4, the top 64 bits
    /// (the network part of most prefixes) for IPv6.
    type Short: Copy + Ord + Default + core::fmt::Debug;
    /// The stored part of an address.
    fn short(self) -> Self::Short;
    /// Whether the keys `k` with `lo.short() <= k.short() <= hi.short()` are exactly
    /// `lo..=hi` (for IPv6: `lo` ends in 64 zero bits and `hi` in 64 one bits).
    fn short_exact(lo: Self, hi: Self) -> bool;
    /// The top 64 bits of an IPv6 value, all of an IPv4 one: a monotone map to `u64`.
    fn top64(self) -> u64;
    /// The value, widened.
    fn wide(self) -> u128;
    /// Whether an address map may cut at the subnet field ([`Quant`]): IPv6.
    const SUBNETS: bool;
    /// `(self - base) >> shift` (0 below `base`), saturated to `usize`; `shift` is
    /// less than the type's width (as [`Starts`] makes it).
    fn bucket(self, base: Self, shift: u32) -> usize;
}
impl KeyInt for u32 {
    const SUBNETS: bool = false;
    #[inline]
    fn narrow(v: u128) -> u32 {
        v as u32
    }
    #[inline]
    fn low(self) -> u32 {
        self
    }
    type Short = u32;
    #[inline(always)]
    fn short(self) -> u32 {
        self
    }
    fn short_exact(_: u32, _: u32) -> bool {
        true
    }
    #[inline(always)]
    fn top64(self) -> u64 {
        u64::from(self)
    }
    #[inline]
    fn wide(self) -> u128 {
        u128::from(self)
    }
    #[inline(always)]
    fn bucket(self, base: u32, shift: u32) -> usize {
        self.saturating_sub(base).wrapping_shr(shift) as usize
    }
}
impl KeyInt for u128 {
    const SUBNETS: bool = true;
    #[inline]
    fn narrow(v: u128) -> u128 {
        v
    }
    #[inline]
    fn low(self) -> u32 {
        self as u32
    }
    type Short = u64;
    #[inline(always)]
    fn short(self) -> u64 {
        (self >> 64) as u64
    }
    fn short_exact(lo: u128, hi: u128) -> bool {
        lo as u64 == 0 && hi as u64 == u64::MAX
    }
    #[inline(always)]
    fn top64(self) -> u64 {
        (self >> 64) as u64
    }
    #[inline]
    fn wide(self) -> u128 {
        self
    }
    #[inline(always)]
    fn bucket(self, base: u128, shift: u32) -> usize {
        usize::try_from(self.saturating_sub(base).wrapping_shr(shift)).unwrap_or(usize::MAX)
    }
}

/// Interval starts, found through a bucket table (the first level of a radix trie):
/// the key's offset from the first boundary, shifted right, picks a bucket, and the
/// bucket names the interval its lowest value falls in and the one its highest value
/// falls in; the starts between the two (none or a few: there are about as many buckets
/// as intervals, spread over the span the boundaries cover) decide. A binary search over
/// thousands of starts costs a dozen dependent steps per key; this costs two loads and a
/// short walk (up to the first start above the key).
///
/// Each start is stored with its interval's list (`a..b` in the index's candidates), so
/// that the cache line the count reads also holds the list it leads to: one dependent
/// miss fewer per group and key on a large classifier.
///
/// IPv6 boundaries cluster: a site's subnets are /64s numbered from 1 in the 16 bits
/// after its /48, and sites are far apart, so buckets spread evenly over the span give
/// each site one bucket and all its subnets' starts (104 a bucket in the 100,000-policy
/// set's local-address group, searched by bisection). An IPv6 index may take its
/// buckets from a two-field map instead ([`Quant::bucket`]), chosen at build time when it
/// walks fewer starts.
struct Starts<K> {
    all: Vec<Slot<K>>,
    /// The second start (the first boundary): keys below it are in interval 0.
    base: K,
    shift: u32,
    /// IPv6 only: the buckets are [`Quant::bucket`] of the key's top 64 bits, not
    /// `(k - base) >> shift`.
    split: Option<Quant>,
    /// `tab[b]`: the interval holding the lowest key of bucket `b` (0 for bucket 0);
    /// `tab[b + 1]`: the one holding its highest. One entry more than buckets.
    tab: Vec<u32>,
    /// The lists are split by protocol class ([`ProtocolClasses`]), their parts in
    /// the slots ([`Slot`]). A flag, not a second array of parts beside `all`: that
    /// cost one more cache miss a group at 100,000 rules (`spd_acl`, IPv4: 46 -> 51 ns).
    by_class: bool,
}

/// [`Quant`]'s two-field maps as bucket maps ([`Starts`]): the same monotone map of an
/// IPv6 address's top 64 bits (the offset from `base` above bit `shift`, then the bits
/// below the cut saturated to `low` bits: a site, then its first subnets), not
/// saturated to 16 bits. In 64-bit arithmetic: the same map of the whole address cost
/// 60 instructions a lookup in shifts of 128-bit values.
impl Quant {
    /// The bucket of top-64 value `x` (0 below `base`).
    #[inline(always)]
    fn bucket(&self, x: u64) -> usize {
        let d = x.saturating_sub(self.base);
        usize::try_from(two_fields(d, self.shift, self.low)).unwrap_or(usize::MAX)
    }

    /// The lowest key of bucket `b` (`None` past the domain's end): the lowest
    /// address whose top 64 bits are the bucket's lowest.
    fn bucket_start(&self, b: usize) -> Option<u128> {
        let x = u128::from(self.base) + two_fields_first(b as u64, self.shift, self.low);
        u64::try_from(x).ok().map(|x| u128::from(x) << 64)
    }
}

/// The two-field map of offset `d` ([`Quant`]): its bits above `shift`, then
/// those below saturated to `low` bits. `low <= shift`, so no bit of the high part is
/// lost.
#[inline(always)]
fn two_fields(d: u64, shift: u32, low: u32) -> u64 {
    let field = (d & ((1 << shift) - 1)).min((1 << low) - 1);
    ((d >> shift) << low) | field
}

/// The first offset whose [`two_fields`] map is `v`.
fn two_fields_first(v: u64, shift: u32, low: u32) -> u128 {
    let (high, field) = (u128::from(v >> low), u128::from(v & ((1 << low) - 1)));
    (high << shift) + field
}

/// The most buckets a two-field bucket map ([`Quant::bucket`]) may take, as a multiple
/// of the scaled map's (a power of two).
const SPLIT_MORE: usize = 4;

/// Sum over buckets of the square of the starts in each (`indices`: the bucket of each
/// start, a non-decreasing sequence): about the starts a lookup walks, over all
/// intervals.
fn walk_cost(indices: impl Iterator<Item = usize>) -> u64 {
    let mut cost = 0u64;
    let (mut current, mut run) = (usize::MAX, 0u64);
    for i in indices {
        if i == current {
            run += 1;
        } else {
            cost += run * run;
            (current, run) = (i, 1);
        }
    }
    cost + run * run
}

/// An interval: its first value and its list: `a..b` in the index's candidates, or
/// when the index's lists are split by protocol class ([`Starts::by_class`]) `a` and
/// where the part of each class ends, relative to `a`, 8 bits each from bit `8 c`
/// (each part begins where the one before ends, the first at 0): 12 bytes for IPv4
/// either way.
#[derive(Clone, Copy, Debug)]
struct Slot<K> {
    start: K,
    list: (u32, u32),
}

/// Buckets per interval, at most (rounded down to a power of two, at least 2 buckets).
const MAX_BUCKETS: usize = 1 << 20;

/// Above this many starts in one bucket, a binary search instead of a count.
const SHORT: usize = 16;

impl<K: KeyInt> Starts<K> {
    /// The intervals starting at `starts` (sorted, the first one the domain's minimum)
    /// with their `lists`, split by protocol class if `by_class` (see [`Slot`]).
    fn new(starts: Vec<K>, lists: Vec<(u32, u32)>, by_class: bool) -> Starts<K> {
        debug_assert_eq!(starts.len(), lists.len());
        let all: Vec<Slot<K>> = starts
            .into_iter()
            .zip(lists)
            .map(|(start, list)| Slot { start, list })
            .collect();
        let n = all.len();
        let base = all.get(1).unwrap_or(&all[0]).start;
        let span = all[n - 1].start.wide() - base.wide();
        let buckets = n.next_power_of_two().clamp(2, MAX_BUCKETS);
        let bits = 128 - span.leading_zeros();
        // At least two buckets: the shift is below the span's bit length, so below
        // the key type's width (`KeyInt::bucket` relies on it).
        let shift = bits.saturating_sub(buckets.trailing_zeros());
        debug_assert!(shift < bits.max(1));
        let mut split = None;
        if K::SUBNETS && n > 2 {
            // The two-field map that walks the fewest starts, if at most half as
            // many as the scaled offset's (it costs a few instructions more a
            // lookup), with up to `SPLIT_MORE` times the buckets (a site's subnets
            // may be numbered sparsely).
            let mut best = walk_cost(
                all.iter()
                    .map(|s| s.start.bucket(base, shift).min(buckets - 1)),
            ) / 2;
            let (lo, hi) = (base.top64(), all[n - 1].start.top64());
            let scaled_bits = buckets.trailing_zeros();
            for bits in scaled_bits..=scaled_bits + SPLIT_MORE.trailing_zeros() {
                for sp in Quant::two_field_maps(lo, hi, bits, false) {
                    let top = (1 << bits) - 1;
                    let cost = walk_cost(all.iter().map(|s| sp.bucket(s.start.top64()).min(top)));
                    if cost < best {
                        best = cost;
                        split = Some((sp, 1 << bits));
                    }
                }
            }
        }
        let buckets = split.map_or(buckets, |(_, b)| b);
        let split = split.map(|(sp, _)| sp);
        let mut tab = Vec::with_capacity(buckets + 1);
        let mut i = 0;
        for b in 0..buckets {
            if b == 0 {
                tab.push(0);
                continue;
            }
            // The lowest key of bucket `b` (none past the key type's range: then the
            // bucket holds no key and any interval will do).
            let low = match split {
                Some(sp) => sp.bucket_start(b).unwrap_or(u128::MAX),
                None => (b as u128)
                    .checked_shl(shift)
                    .and_then(|o| base.wide().checked_add(o))
                    .unwrap_or(u128::MAX),
            };
            while i + 1 < n && all[i + 1].start.wide() <= low {
                i += 1;
            }
            tab.push(i as u32);
        }
        tab.push((n - 1) as u32);
        Starts {
            all,
            base,
            shift,
            split,
            tab,
            by_class,
        }
    }

    /// The bucket of `k`.
    #[inline(always)]
    fn bucket(&self, k: K) -> usize {
        let b = match self.split {
            Some(sp) if K::SUBNETS => sp.bucket(k.top64()),
            _ => k.bucket(self.base, self.shift),
        };
        b.min(self.tab.len() - 2)
    }

    /// The interval holding `k`, given the intervals `lo` and `hi` holding the lowest
    /// and highest key of its bucket.
    #[inline(always)]
    fn within(&self, k: K, lo: usize, hi: usize) -> usize {
        let between = &self.all[lo + 1..=hi];
        if between.len() <= SHORT {
            // Sorted: the starts `<= k` come first, and usually there are none or
            // one (about one bucket per interval).
            let mut i = 0;
            while i < between.len() && between[i].start <= k {
                i += 1;
            }
            lo + i
        } else {
            lo + between.partition_point(|s| s.start <= k)
        }
    }

    /// The index of the interval holding `k` (the first start is the domain's minimum).
    #[inline(always)]
    fn find(&self, k: K) -> usize {
        let b = self.bucket(k);
        let [lo, hi] = self.tab[b..b + 2] else {
            unreachable!("two entries")
        };
        self.within(k, lo as usize, hi as usize)
    }

    /// The list of interval `i` for keys of protocol class `c` (see
    /// [`ProtocolClasses`]): `a..b` in the index's candidates; all of it when the lists
    /// are not split, as in every classifier whose lists are not `FILTERED`
    /// ([`Partitioned::build`]).
    #[inline(always)]
    fn list<const FILTERED: bool>(&self, i: usize, c: usize) -> (u32, u32) {
        let (a, ends) = self.all[i].list;
        if !FILTERED || !self.by_class {
            return (a, ends);
        }
        // The part of class `c` begins where the part before ends (0 for the first).
        let begin = (ends << 8 >> (8 * c)) & 0xff;
        let end = (ends >> (8 * c)) & 0xff;
        (a + begin, a + end)
    }

    fn bytes(&self) -> usize {
        self.all.len() * size_of::<Slot<K>>() + self.tab.len() * 4
    }
}

/// A rule as the scan checks it once its filter box passed (each group's `all`, and the
/// unindexed groups' whole list): the rule's bounding box. `exact` is false when some dimension of
/// the rule has several ranges (an address list), or when an IPv6 address range does
/// not end on /64 boundaries (a host, a /96): then the box only filters and the rule's
/// full ranges decide.
///
/// Laid out for the scan: the rule position (the first thing a scan reads) and the
/// narrow dimensions (protocol, A, B: they fit in 32 bits in both families) come first,
/// in the cache line where the addresses start. IPv6 addresses are stored by their top
/// 64 bits ([`KeyInt::short`]): an entry takes 72 bytes instead of 112 with full
/// addresses (176 with a box of five `u128` pairs).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct Entry<K: KeyInt> {
    id: u32,
    local: u32,
    exact: bool,
    /// Protocol, A and B: lowest and highest value of the box.
    nlo: [u32; 3],
    nhi: [u32; 3],
    /// Source and destination: lowest and highest value of the box (their stored part).
    alo: [K::Short; 2],
    ahi: [K::Short; 2],
}

impl<K: KeyInt> Entry<K> {
    /// Whether `key` lies in the box: the addresses first (they are the selective
    /// dimensions, and most candidates fail there), then the narrow dimensions.
    #[inline(always)]
    fn inside(&self, key: &[K; DIMS]) -> bool {
        (0..2).all(|d| self.alo[d] <= key[d].short() && key[d].short() <= self.ahi[d])
            && key[2..]
                .iter()
                .zip(self.nlo.iter().zip(&self.nhi))
                .all(|(k, (&lo, &hi))| lo <= k.low() && k.low() <= hi)
    }
}

/// The flag of a list entry that holds a rule's position, not its place in the group
/// (see [`Index::locals`]).
const BOX_EXACT: u32 = 1 << 31;

/// Lanes of a candidate's filter box ([`QBox`]).
const QLANES: usize = 8;

/// A candidate as the lists of an index hold it: its box in the four dimensions other
/// than the index's, each mapped to 16 bits by a [`Quant`] — the lowest bounds in lanes
/// 0-3, the highest bounds complemented in lanes 4-7, so that a key's box `q` (its
/// mapped values, then the same complemented) passes exactly when every lane of the
/// candidate is at most the key's: one 128-bit unsigned compare, and a quarter of the
/// bytes of the candidate's [`Entry`] (a fifth for IPv6). The maps are monotone, so a
/// key inside the rule's box is inside the mapped box: the filter never drops a
/// candidate that matches, it only lets through a few that do not (those the mapping
/// made indistinguishable), which the full check then rejects.
///
/// Used by classifiers large enough to miss the cache ([`FILTER_MIN_BYTES`]).
type QBox = [u16; QLANES];

/// Whether the key's filter box `q` passes candidate `c` (see [`QBox`]): a saturating
/// subtraction per lane, ORed (compiled to one vector subtract and test).
#[inline(always)]
fn passes(c: &QBox, q: &QBox) -> bool {
    c.iter()
        .zip(q)
        .fold(0u16, |acc, (&c, &q)| acc | c.saturating_sub(q))
        == 0
}

/// A monotone map of an address dimension to 16 bits, of the address's top 64 bits
/// ([`KeyInt::top64`]: all of an IPv4 address): 0 below `base`, 65,535 above the span
/// it covers (the span of the group's bounds, leaving out the extreme 1 % on each side,
/// so that one far-away rule does not coarsen the rest), and in between the offset
/// `d = x - base` either scaled (`d >> shift`, `low` 0) or, for IPv6, cut at bit
/// `shift` into two fields: the high part, then the low part saturated to `low` bits.
///
/// The two-field map is for the hierarchy of IPv6 addressing: sites are /48s and their
/// subnets the /64s numbered by the next 16 bits, of which few are used (1, 2, ...).
/// Scaled, the span of 64 sites is 22 bits and a /64 shares its 16-bit value with 63
/// neighbours, so a rule for one subnet cannot be told apart from its neighbours'
/// (its box is not exact, and the scan reads the rule); cut at the subnet field, a
/// site takes 6 bits and each of its first 1,023 subnets a value of its own.
/// Protocol and the port dimensions (at most 2^16) keep their value ([`narrow16`]).
#[derive(Clone, Copy, Debug, Default)]
struct Quant {
    base: u64,
    shift: u32,
    /// Bits of the low field (0: the map is `d >> shift`); at most `shift`.
    low: u32,
}

impl Quant {
    #[inline(always)]
    fn map(&self, x: u64) -> u16 {
        let d = x.saturating_sub(self.base);
        let v = if self.low == 0 {
            d >> self.shift
        } else {
            two_fields(d, self.shift, self.low)
        };
        v.min(u64::from(u16::MAX)) as u16
    }

    /// [`Quant::map`] for keys of type `K`: IPv4 maps are always scaled, and their
    /// lookups do not test for the other kind.
    #[inline(always)]
    fn map_key<K: KeyInt>(&self, x: u64) -> u16 {
        if K::SUBNETS {
            self.map(x)
        } else {
            (x.saturating_sub(self.base) >> self.shift).min(u64::from(u16::MAX)) as u16
        }
    }

    /// The first and the last offset from `base` whose (unsaturated) map is `v`.
    fn offsets(&self, v: u16) -> (u128, u128) {
        let field_max = (1u32 << self.low) - 1;
        let field = u32::from(v) & field_max;
        let first = two_fields_first(u64::from(v), self.shift, self.low);
        // A saturated field (always, for the scaled map) holds the rest of the cut.
        let last = if field < field_max {
            first
        } else {
            first - u128::from(field) + (1u128 << self.shift) - 1
        };
        (first, last)
    }

    /// Whether the keys `x` (top 64 bits, at most `top`, the domain's highest) with
    /// `map(lo) <= map(x) <= map(hi)` are exactly `lo..=hi`: `lo` is the lowest value
    /// of its map and `hi` the highest of its, so the mapped range loses nothing.
    fn exact(&self, lo: u64, hi: u64, top: u64) -> bool {
        let (a, b) = (self.map(lo), self.map(hi));
        let base = u128::from(self.base);
        // The lowest value mapped to `a`: 0 for 0 (everything below `base` maps there).
        let first = if a == 0 { 0 } else { base + self.offsets(a).0 };
        // The highest mapped to `b`: the domain's highest for 65,535 (saturated).
        let last = if b == u16::MAX {
            u128::from(top)
        } else {
            (base + self.offsets(b).1).min(u128::from(top))
        };
        first == u128::from(lo) && last == u128::from(hi)
    }

    /// The map of address dimension `dim` for `rules`: scaled, or for IPv6 keys
    /// ([`KeyInt::SUBNETS`]) the two-field map that keeps the most rules' bounds whole
    /// ([`Quant::exact`]), counted on up to [`QUANT_SAMPLE`] rules. Either is
    /// aligned on its scale or cut.
    fn for_addresses<K: KeyInt>(rules: &[TRule], dim: usize) -> Quant {
        let domain_top = K::narrow(u128::MAX).top64();
        let ends = |r: &TRule| {
            let ranges = r.dim(dim);
            [ranges[0].0, ranges[ranges.len() - 1].1].map(|b| K::narrow(b).top64())
        };
        let mut bounds: Vec<u64> = rules
            .iter()
            .flat_map(ends)
            .filter(|&b| b != 0 && b != domain_top)
            .collect();
        if bounds.is_empty() {
            return Quant::default();
        }
        bounds.sort_unstable();
        let cut = bounds.len() / 100;
        let (base, top) = (bounds[cut], bounds[bounds.len() - 1 - cut]);
        let scaled = Quant::scaled(base, top);
        let bits = 64 - (top - base).leading_zeros();
        if !K::SUBNETS || bits <= 16 {
            return scaled;
        }
        let step = rules.len().div_ceil(QUANT_SAMPLE).max(1);
        let sample: Vec<[u64; 2]> = rules.iter().step_by(step).map(ends).collect();
        let whole = |q: &Quant| {
            sample
                .iter()
                .filter(|&&[lo, hi]| q.exact(lo, hi, domain_top))
                .count()
        };
        // Each cut, `base` aligned on it; the scaled map wins ties.
        let mut best = (whole(&scaled), scaled);
        for q in Quant::two_field_maps(base, top, 16, true) {
            let n = whole(&q);
            if n > best.0 {
                best = (n, q);
            }
        }
        best.1
    }

    /// The two-field maps of top-64 values in `lo..=hi` into `bits` bits: for each cut
    /// below the span's top, `base` (`lo`, or `lo` aligned on the cut if `aligned`),
    /// the high field taking what the span needs above the cut and the low field the
    /// rest (at least one bit, at most the cut).
    fn two_field_maps(lo: u64, hi: u64, bits: u32, aligned: bool) -> impl Iterator<Item = Quant> {
        let span = 64 - (hi - lo).leading_zeros();
        (span.saturating_sub(bits).max(1)..span).filter_map(move |shift| {
            let base = if aligned {
                lo & !((1 << shift) - 1)
            } else {
                lo
            };
            let high = (64 - ((hi - base) >> shift).leading_zeros()).max(1);
            let low = bits.checked_sub(high)?;
            (low >= 1 && low <= shift).then_some(Quant { base, shift, low })
        })
    }

    /// The scaled map of `base..=top` into 16 bits, `base` aligned on the scale (so
    /// that bounds aligned on it, prefixes usually, map whole).
    fn scaled(base: u64, top: u64) -> Quant {
        let mut shift = (64 - (top - base).leading_zeros()).saturating_sub(16);
        loop {
            let aligned = base & !((1 << shift) - 1);
            let need = (64 - (top - aligned).leading_zeros()).saturating_sub(16);
            if need == shift {
                return Quant {
                    base: aligned,
                    shift,
                    low: 0,
                };
            }
            shift = need;
        }
    }
}

/// Rules whose bounds [`Quant::for_addresses`] counts to choose an IPv6 map (evenly
/// spread over the group).
const QUANT_SAMPLE: usize = 1024;

/// The 16-bit map of a narrow dimension (protocol, ports, ICMP fields): the value,
/// OPAQUE (2^16) sharing 65,535 with the highest port. Monotone.
#[inline(always)]
fn narrow16(x: u32) -> u16 {
    x.min(u32::from(u16::MAX)) as u16
}

/// The elementary intervals of one group's index dimension.
struct Index<K: KeyInt> {
    dim: usize,
    /// The intervals; `a..b` in `boxes` and `locals` is the list of each.
    starts: Starts<K>,
    /// The maps of the two address dimensions.
    quant: [Quant; 2],
    /// Per list entry, in a classifier of the inline layout
    /// ([`Partitioned::filtered`] false): the candidate's [`Entry`].
    pool: Vec<Entry<K>>,
    /// Per list entry, in the filtered layout: the candidate's filter box ([`QBox`], 16
    /// bytes: a list of 60 candidates is 15 cache lines of boxes, against 50 with
    /// their entries inline).
    boxes: Vec<QBox>,
    /// Per list entry: the candidate's position in its group's `all` (read only when
    /// the box passes), or, with [`BOX_EXACT`] set, the rule's position in the
    /// classifier when its filter box is exact ([`Index::box_exact`]): then passing the
    /// box is matching the rule, and the scan reads nothing else.
    locals: Vec<u32>,
}

impl<K: KeyInt> Index<K> {
    /// The filter box of `key` (see [`QBox`]).
    #[inline(always)]
    fn query(&self, key: &[K; DIMS]) -> QBox {
        if self.dim < 2 {
            // Indexed on an address (the usual case): the other address and the
            // narrow dimensions, in order; only one address to map.
            let other = 1 - self.dim;
            let a = self.quant[other].map_key::<K>(key[other].top64());
            let [p, x, y] = [2, 3, 4].map(|d| narrow16(key[d].low()));
            return [a, p, x, y, !a, !p, !x, !y];
        }
        let m = self.mapped(key.map(|k| (k.top64(), k.low())));
        self.lanes(&m, &m)
    }

    /// A filter box from mapped lowest and highest values: every dimension but the
    /// index's, in order, selected per lane (no table of dimensions to load).
    #[inline(always)]
    fn lanes(&self, lo: &[u16; DIMS], hi: &[u16; DIMS]) -> QBox {
        let mut q = [0; QLANES];
        for i in 0..4 {
            let d = if i < self.dim { i } else { i + 1 };
            q[i] = lo[d];
            q[i + 4] = !hi[d];
        }
        q
    }

    /// The filter box of rule `r` (see [`QBox`]): the map of its bounding box.
    fn filter_box(&self, r: &TRule) -> QBox {
        let [lo, hi] = [0, 1].map(|end| {
            self.mapped(core::array::from_fn(|d| {
                let ranges = r.dim(d);
                let b = [ranges[0].0, ranges[ranges.len() - 1].1][end];
                (K::narrow(b).top64(), u32::try_from(b).unwrap_or(u32::MAX))
            }))
        });
        self.lanes(&lo, &hi)
    }

    /// Whether the filter box of rule `r` is exact: a key in this index's interval
    /// that passes it matches the rule (every dimension other than the index's is one
    /// range that its map keeps whole), so the scan needs not read the rule's
    /// [`Entry`]. `max[d]` is the highest value of dimension `d`.
    fn box_exact(&self, r: &TRule, max: &[u128; DIMS]) -> bool {
        (0..DIMS).filter(|&d| d != self.dim).all(|d| {
            let &[(lo, hi)] = r.dim(d) else {
                return false;
            };
            if d < 2 {
                let (lo, hi) = (K::narrow(lo), K::narrow(hi));
                let top = K::narrow(max[d]).top64();
                K::short_exact(lo, hi) && self.quant[d].exact(lo.top64(), hi.top64(), top)
            } else {
                // `narrow16` keeps every value but OPAQUE, which it puts with 65,535.
                let top = u128::from(u16::MAX);
                lo <= top && (hi < top || hi == max[d])
            }
        })
    }

    /// Every dimension of a point mapped to 16 bits (addresses by their top 64 bits,
    /// the narrow dimensions by their low 32).
    #[inline(always)]
    fn mapped(&self, v: [(u64, u32); DIMS]) -> [u16; DIMS] {
        [
            self.quant[0].map_key::<K>(v[0].0),
            self.quant[1].map_key::<K>(v[1].0),
            narrow16(v[2].1),
            narrow16(v[3].1),
            narrow16(v[4].1),
        ]
    }
}

/// The rules of one wildcard pattern.
struct Group<K: KeyInt> {
    first: u32,
    rules: Vec<TRule>,
    /// `None`: every rule is a candidate, in order (`all`).
    index: Option<Index<K>>,
    all: Vec<Entry<K>>,
    /// Every rule of the group leaves every dimension as "any" (the final catch-all
    /// of most SPDs): its first rule not masked out is the answer, with no box to
    /// compare.
    matches_all: bool,
}

impl<K: KeyInt> Group<K> {
    /// The group of `members` (in order), indexed on dimension `dim` (none: scanned in
    /// order), its lists split by `classes` if given; `max[d]` is the largest value of
    /// dimension `d`.
    fn build(
        dim: Option<usize>,
        members: Members,
        classes: Option<&ProtocolClasses>,
        max: &[u128; DIMS],
        budget: &mut usize,
    ) -> Group<K> {
        // A group of rules that match everything (`dim` is `None`) keeps them all,
        // not only the first (the only one a lookup can reach): when that one is
        // masked out ([`Partitioned::lookup_where`], a policy removed since the
        // compile) the next one answers.
        let (ids, rules): (Vec<u32>, Vec<TRule>) = members.into_iter().unzip();
        let entries: Vec<Entry<K>> = rules
            .iter()
            .zip(&ids)
            .enumerate()
            .map(|(local, (r, &id))| entry(r, id, local as u32))
            .collect();
        // Lists too long to split by class are not split.
        let index = dim.and_then(|d| {
            classes
                .and_then(|c| build_index(&rules, d, Some(c), budget))
                .or_else(|| build_index(&rules, d, None, budget))
        });
        let matches_all = rules
            .iter()
            .all(|r| (0..DIMS).all(|d| r.dim(d) == [(0, max[d])]));
        Group {
            first: ids[0],
            rules,
            index,
            all: entries,
            matches_all,
        }
    }

    /// The group's answer for `key`, of protocol class `class` (see [`scan`]).
    #[inline]
    fn first_match<const FILTERED: bool>(
        &self,
        key: &[K; DIMS],
        class: usize,
        best: u32,
        masked: &impl Fn(u32) -> bool,
    ) -> u32 {
        match &self.index {
            Some(ix) => {
                let i = ix.starts.find(key[ix.dim]);
                let (a, b) = ix.starts.list::<FILTERED>(i, class);
                self.scan_list::<FILTERED>(ix, a as usize..b as usize, key, best, masked)
            }
            None => self.scan_all(best, key, masked),
        }
    }

    /// The answer of a group without an index: [`scan`] over all its rules, or for a
    /// group that matches everything its first rule not masked out.
    #[inline(always)]
    fn scan_all(&self, best: u32, key: &[K; DIMS], masked: &impl Fn(u32) -> bool) -> u32 {
        if self.matches_all {
            for e in &self.all {
                if e.id >= best {
                    break;
                }
                if !masked(e.id) {
                    return e.id;
                }
            }
            return best;
        }
        scan(&self.all, &self.rules, best, key, masked)
    }

    /// [`scan`] over the list `list` of index `ix`: in the inline layout its entries;
    /// in the filtered layout (`FILTERED`) the candidates whose filter box the key
    /// passes, checked in order as [`scan`] checks them.
    #[inline(always)]
    fn scan_list<const FILTERED: bool>(
        &self,
        ix: &Index<K>,
        list: core::ops::Range<usize>,
        key: &[K; DIMS],
        best: u32,
        masked: &impl Fn(u32) -> bool,
    ) -> u32 {
        if !FILTERED {
            return scan(&ix.pool[list], &self.rules, best, key, masked);
        }
        if list.is_empty() {
            return best;
        }
        let q = ix.query(key);
        for (c, &local) in ix.boxes[list.clone()].iter().zip(&ix.locals[list]) {
            if !passes(c, &q) {
                continue;
            }
            if local & BOX_EXACT != 0 {
                let id = local & !BOX_EXACT;
                if id >= best {
                    break;
                }
                if !masked(id) {
                    return id;
                }
                continue;
            }
            let e = &self.all[local as usize];
            if e.id >= best {
                break;
            }
            if e.inside(key)
                && (e.exact || self.rules[local as usize].matches(&key.map(K::wide)))
                && !masked(e.id)
            {
                return e.id;
            }
        }
        best
    }
}

/// A classifier of at most this many rules is one group without an index: a lookup
/// scans the rules' entries ([`Entry`], a compact box each) in priority order, which
/// is cheaper than finding an interval in each group's index at that size. Measured
/// with `spd_acl bench --sizes 8,12,16,24,32,48,64` (the bench's rule sets, where half
/// the flows reach the final catch-all, the scan's worst case), medians of 5
/// interleaved runs on a Xeon VM: against the indexed groups, IPv4 8 / 12 / 16 rules
/// 15.7 -> 11.9, 15.6 -> 12.7, 16.0 -> 14.8 ns and IPv6 20.3 -> 13.8, 18.7 -> 14.8,
/// 18.0 -> 16.0 ns; from 24 rules on the scan loses (32: 17.2 -> 26.9, 64: 17.3 ->
/// 59.4 ns). A gateway's policies are often this few (the branch-office example has
/// 15; most of its packets match one of the first few).
pub(crate) const SCAN_MAX: usize = 16;

/// How [`Partitioned::build`] lays a classifier out: the defaults, or what the tests
/// force so that small rule sets reach the index and the filtered lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Lists whose entries inline would take this many bytes or more take the filtered
    /// layout ([`FILTER_MIN_BYTES`]).
    pub(crate) filter_min_bytes: usize,
    /// At most this many rules are scanned in order, without an index ([`SCAN_MAX`]).
    pub(crate) scan_max: usize,
    /// The lists of groups of at least this many rules are split by protocol class
    /// ([`CLASS_MIN_RULES`]; 0: whatever their length, for the tests).
    pub(crate) class_min_rules: usize,
}

impl Layout {
    /// The layout chosen by measurement.
    pub(crate) const MEASURED: Layout = Layout {
        filter_min_bytes: FILTER_MIN_BYTES,
        scan_max: SCAN_MAX,
        class_min_rules: CLASS_MIN_RULES,
    };
    /// An index for any number of rules, its lists filtered, groups split by protocol
    /// class whatever their size (for the tests).
    pub(crate) const INDEXED_FILTERED: Layout = Layout {
        filter_min_bytes: 0,
        scan_max: 0,
        class_min_rules: 0,
    };
}

/// Lookups of at most this many keys advance together in [`Partitioned::lookup_burst`].
pub(crate) const BURST: usize = 32;

/// Below this size (heap bytes) [`Partitioned::lookup_burst`] looks keys up one at a
/// time. Measured with `spd_acl` once the bucket table ([`Starts`]) replaced the binary
/// search (a single lookup is then a short chain of loads): on a Xeon VM (2 MiB L2 per
/// core, a large shared L3), single lookups were 5-30% faster than the stages at 10,000
/// rules (3-5 MB per classifier) and 35-55% slower at 100,000 (55-100 MB). Before, with
/// the binary search, the stages already paid at 10,000 rules on a Zen 4 (1 MiB L2);
/// sizes between 10,000 and 100,000 rules are not measured.
const BURST_MIN_BYTES: usize = 16 << 20;

/// A classifier whose lists would take at least this many bytes with their entries
/// inline takes the filtered layout (filter boxes, [`QBox`]); a smaller one keeps the
/// entries inline. Measured with `spd_acl` on a Xeon VM (2 MiB L2 per core), medians of
/// 5 interleaved runs: at 1,000 rules (about 100 KiB of lists, in the cache) boxes for
/// every size were 10-20 % slower for IPv4 (a candidate that passes costs one more
/// dependent load, and the key must be mapped), level for IPv6; at 10,000 (about
/// 1 MiB) level to 12 % faster, at 100,000 (tens of MiB) 24-48 % faster and a third
/// smaller. The lookup has one loop per layout (`lookup_in`), chosen once per key: a
/// choice per group inside one loop cost 5-25 % at 10,000 rules in several code shapes.
pub(crate) const FILTER_MIN_BYTES: usize = 256 << 10;

/// Cache lines of filter boxes prefetched per key before its list is scanned.
const LINES_AHEAD: usize = 2;

/// Filter boxes per 64-byte cache line.
const BOXES_PER_LINE: usize = 64 / size_of::<QBox>();

/// The first rule of `cands` (a list in priority order) that matches, if it comes before
/// `best` (a rule position; `u32::MAX` for none yet) and `masked` does not take it out;
/// otherwise `best`. `key` is the key narrowed to `K` (widened back for the full
/// check of a rule whose box only filters).
#[inline(always)]
fn scan<K: KeyInt>(
    cands: &[Entry<K>],
    rules: &[TRule],
    best: u32,
    key: &[K; DIMS],
    masked: &impl Fn(u32) -> bool,
) -> u32 {
    for e in cands {
        if e.id >= best {
            break;
        }
        if e.inside(key)
            && (e.exact || rules[e.local as usize].matches(&key.map(K::wide)))
            && !masked(e.id)
        {
            return e.id;
        }
    }
    best
}

/// Rules of one group under construction: (position, rule).
type Members = Vec<(u32, TRule)>;

/// Most protocol classes a classifier tells apart ([`ProtocolClasses`]).
const MAX_CLASSES: usize = 4;

/// A protocol is a class of its own when at least 1 in this many rules names it alone.
const CLASS_MIN_SHARE: usize = 16;

/// The lists of groups of at least this many rules are split by protocol class, when
/// the split copies few rules ([`CLASS_COPIES_MAX`]) and the lists are long
/// ([`CLASS_MIN_COVER`]).
pub(crate) const CLASS_MIN_RULES: usize = 64;

/// A group's lists are split by protocol class only if its index's intervals are
/// covered by at least this many of its rules on average (tenths: the mean list length
/// before the split, [`cover_tenths`]). In the bench's rule sets (`spd_acl`: TCP 60 %,
/// UDP 25 %, ICMP 10 %, any 5 %) the 1,000-rule groups (0.6-1.1) are not split, both
/// indexed groups at 10,000 rules (1.7 and 7.2) and at 100,000 (15 and 66) are. On an
/// AMD EPYC (Zen 4), 10,000 IPv4 rules: 415 instructions a lookup unsplit, 398 with the
/// local-address group's lists split alone (a minimum of 2.0), 389 with both; 6 pinned
/// pairs, medians, 24.65 ns against 24.25.
const CLASS_MIN_COVER: usize = 15;

/// A group's lists are split by protocol class only if the parts hold at most this many
/// times its rules (in percent): rules of any protocol are in every part.
const CLASS_COPIES_MAX: usize = 150;

/// The protocol classes of a classifier: the few protocols that many of its rules name
/// alone (TCP, UDP and ICMP in most SPDs), a class each, and every other protocol in one
/// more. The lists of a large group are split in parts, one per class, each with the
/// list's rules whose protocol selector meets the class (rules of any protocol in
/// all), and a key scans only the part of its protocol's class: a TCP key's part holds
/// no UDP or ICMP rule. In the bench's 100,000-rule IPv4 set, the lists of the group
/// indexed on the local address hold 66.5 rules of every protocol, and about 60 % of
/// the box tests a lookup made were of rules of another protocol than the key's.
///
/// The split is of the lists, not of the groups: splitting each group into one group
/// per class (a key looking in its class's groups) cost as many instructions less,
/// but each lookup then waited on the class before it could find its first group
/// (`spd_acl`, 10,000 IPv4 rules: 25 -> 27 ns, and 30 ns with the class lists alone).
/// A list's parts are found in its [`Slot`], which the lookup reads anyway, and the
/// class is computed meanwhile.
struct ProtocolClasses {
    /// The protocols with a class of their own (class `i` is `top[i]`; the last class,
    /// `top.len()`, is every other protocol).
    top: Vec<u128>,
    /// The class of each protocol number (boxed: the classifier stays small).
    of: Box<[u8; 256]>,
}

impl ProtocolClasses {
    /// The classes of `rules`: the protocols named alone by at least 1 in
    /// [`CLASS_MIN_SHARE`] rules, the most named first, up to [`MAX_CLASSES`] - 1.
    fn choose(rules: &[(u32, TRule)]) -> ProtocolClasses {
        let mut named: HashMap<u128, usize> = HashMap::new();
        for (_, r) in rules {
            if let &[(lo, hi)] = r.dim(2)
                && lo == hi
            {
                *named.entry(lo).or_default() += 1;
            }
        }
        let mut top: Vec<(usize, u128)> = named
            .into_iter()
            .filter(|&(p, n)| p < 256 && n * CLASS_MIN_SHARE >= rules.len())
            .map(|(p, n)| (n, p))
            .collect();
        top.sort_unstable_by(|a, b| b.cmp(a));
        top.truncate(MAX_CLASSES - 1);
        let top: Vec<u128> = top.into_iter().map(|(_, p)| p).collect();
        let other = top.len() as u8;
        let mut of = Box::new([other; 256]);
        for (c, &p) in top.iter().enumerate() {
            of[p as usize] = c as u8;
        }
        ProtocolClasses { top, of }
    }

    /// How many classes there are (1: no protocol is a class of its own).
    fn count(&self) -> usize {
        self.top.len() + 1
    }

    /// Whether splitting the lists of `members` by class shortens some part and copies
    /// at most [`CLASS_COPIES_MAX`] percent of them.
    fn shortens(&self, members: &[(u32, TRule)]) -> bool {
        let masks: Vec<u8> = members.iter().map(|(_, r)| self.of_rule(r)).collect();
        let parts = (0..self.count()).map(|c| masks.iter().filter(|&&m| m >> c & 1 != 0).count());
        let (mut copies, mut shorter) = (0, false);
        for n in parts {
            copies += n;
            shorter |= n < members.len();
        }
        shorter && copies * 100 <= members.len() * CLASS_COPIES_MAX
    }

    /// The classes whose protocols rule `r` matches, a bit each.
    fn of_rule(&self, r: &TRule) -> u8 {
        let mut mask = 0;
        for &(lo, hi) in r.dim(2) {
            let mut inside = 0;
            for (c, &p) in self.top.iter().enumerate() {
                if (lo..=hi).contains(&p) {
                    mask |= 1 << c;
                    inside += 1;
                }
            }
            if hi - lo + 1 > inside {
                mask |= 1 << self.top.len();
            }
        }
        mask
    }

    /// The class of a key's protocol (its `low` value; no protocol is above 255).
    #[inline(always)]
    fn of_key(&self, protocol: u32) -> usize {
        usize::from(self.of[protocol.min(255) as usize])
    }
}

/// The classifier of one address family.
pub(crate) struct Partitioned<K: KeyInt> {
    /// In the order of their first rule.
    groups: Vec<Group<K>>,
    classes: ProtocolClasses,
    /// The layout of every index's lists: filter boxes (true) or entries inline (see
    /// [`FILTER_MIN_BYTES`]).
    filtered: bool,
    /// [`Partitioned::heap_bytes`], computed once.
    bytes: usize,
}

fn entry<K: KeyInt>(r: &TRule, id: u32, local: u32) -> Entry<K> {
    let mut e = Entry {
        id,
        local,
        exact: true,
        nlo: [0; 3],
        nhi: [0; 3],
        alo: [K::Short::default(); 2],
        ahi: [K::Short::default(); 2],
    };
    for d in 0..DIMS {
        let ranges = r.dim(d);
        let (lo, hi) = (ranges[0].0, ranges[ranges.len() - 1].1);
        if d < 2 {
            let (lo, hi) = (K::narrow(lo), K::narrow(hi));
            e.alo[d] = lo.short();
            e.ahi[d] = hi.short();
            e.exact &= K::short_exact(lo, hi);
        } else {
            // Protocol (up to 255), ports and ICMP fields (up to OPAQUE = 2^16).
            e.nlo[d - 2] = u32::try_from(lo).expect("a narrow dimension");
            e.nhi[d - 2] = u32::try_from(hi).expect("a narrow dimension");
        }
        e.exact &= ranges.len() == 1;
    }
    e
}

/// How many of `members` cover an elementary interval of dimension `dim`, on average
/// over the intervals, in tenths: the mean length of the lists an index on `dim` would
/// have (before identical lists are shared), at the cost of a sort.
fn cover_tenths(members: &[(u32, TRule)], dim: usize) -> usize {
    let mut events: Vec<(u128, bool)> = Vec::new();
    for (_, r) in members {
        for &(l, h) in r.dim(dim) {
            events.push((l, true));
            if let Some(e) = h.checked_add(1) {
                events.push((e, false));
            }
        }
    }
    events.sort_unstable();
    let (mut active, mut covered, mut intervals) = (0usize, 0usize, 0usize);
    for (i, &(point, add)) in events.iter().enumerate() {
        if add {
            active += 1;
        } else {
            active -= 1;
        }
        if events.get(i + 1).is_none_or(|e| e.0 != point) {
            covered += active;
            intervals += 1;
        }
    }
    covered * 10 / intervals.max(1)
}

/// The index of `rules` on dimension `dim`, its lists split by `classes` if given; `None`
/// past the `budget` of list entries (left as it was), or if a list split by class
/// would hold more than 255 entries (see [`Slot`]).
fn build_index<K: KeyInt>(
    rules: &[TRule],
    dim: usize,
    classes: Option<&ProtocolClasses>,
    budget: &mut usize,
) -> Option<Index<K>> {
    let quant = [0, 1].map(|d| Quant::for_addresses::<K>(rules, d));
    // Per rule, the protocol classes it is listed under (all, when not split).
    let masks: Vec<u8> = match classes {
        Some(c) => rules.iter().map(|r| c.of_rule(r)).collect(),
        None => vec![1; rules.len()],
    };
    let count = classes.map_or(1, ProtocolClasses::count);
    let mut ix = Index {
        dim,
        starts: Starts::new(vec![K::default()], vec![(0, 0)], false),
        quant,
        pool: Vec::new(),
        boxes: Vec::new(),
        locals: Vec::new(),
    };
    let mut events: Vec<(u128, bool, u32)> = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        for &(l, h) in r.dim(dim) {
            events.push((l, true, i as u32));
            if let Some(e) = h.checked_add(1) {
                events.push((e, false, i as u32));
            }
        }
    }
    // At one point, the ends first: a range that ends where another of the same rule
    // begins (adjacent ranges, which the compiled selectors merge anyway) leaves it
    // covered.
    events.sort_unstable_by_key(|e| (e.0, e.1));
    let mut active: BTreeSet<u32> = BTreeSet::new();
    let mut seen: HashMap<Vec<u32>, (u32, u32)> = HashMap::new();
    let mut starts: Vec<K> = Vec::new();
    let mut lists = Vec::new();
    let mut locals = Vec::new();
    let mut left = *budget;
    let mut i = 0;
    let mut point = 0u128;
    loop {
        while i < events.len() && events[i].0 == point {
            let (_, add, r) = events[i];
            if add {
                active.insert(r);
            } else {
                active.remove(&r);
            }
            i += 1;
        }
        let list: Vec<u32> = active.iter().copied().collect();
        let span = match seen.get(&list) {
            Some(&s) => s,
            None => {
                let a = locals.len();
                let s = if count == 1 {
                    locals.extend_from_slice(&list);
                    (a as u32, locals.len() as u32)
                } else {
                    // The rules of each class in turn, in order, and where each
                    // class's part ends (see `Slot`).
                    let mut ends = 0u32;
                    for c in 0..MAX_CLASSES {
                        if c < count {
                            let part = list.iter().filter(|&&r| masks[r as usize] >> c & 1 != 0);
                            locals.extend(part);
                        }
                        ends |= u32::try_from(locals.len() - a)
                            .ok()
                            .filter(|&n| n <= 0xff)?
                            << (8 * c);
                    }
                    (a as u32, ends)
                };
                left = left.checked_sub(locals.len() - a)?;
                seen.insert(list, s);
                s
            }
        };
        starts.push(K::narrow(point));
        lists.push(span);
        match events.get(i) {
            Some(e) => point = e.0,
            None => break,
        }
    }
    ix.locals = locals;
    ix.starts = Starts::new(starts, lists, count > 1);
    *budget = left;
    Some(ix)
}

impl<K: KeyInt> Partitioned<K> {
    /// Builds the classifier of `rules` (priority order) in `layout`; `max[d]` is the
    /// largest value of dimension `d` (a rule covering `0..=max[d]` leaves it as
    /// "any"), and must fit in `K`.
    pub(crate) fn build(rules: Vec<TRule>, max: [u128; DIMS], layout: Layout) -> Partitioned<K> {
        let rules: Vec<(u32, TRule)> = rules
            .into_iter()
            .enumerate()
            .filter(|(_, r)| !r.is_empty())
            .map(|(i, r)| (i as u32, r))
            .collect();
        let specific = |r: &TRule, d: usize| r.dim(d) != [(0, max[d])];
        // Order the dimensions by how crowded they are: the most rules sharing one range
        // (a lower bound of the longest list an index on it would have); addresses first
        // on ties (they are the most selective in practice).
        let mut order: Vec<(usize, usize)> = [1, 0, 4, 3, 2]
            .into_iter()
            .map(|d| {
                let mut ranges: Vec<&[(u128, u128)]> = rules
                    .iter()
                    .filter(|(_, r)| specific(r, d))
                    .map(|(_, r)| r.dim(d))
                    .collect();
                ranges.sort_unstable();
                let crowd = ranges.chunk_by(|a, b| a == b).map(<[_]>::len).max();
                (d, crowd.unwrap_or(usize::MAX))
            })
            .collect();
        order.sort_by_key(|&(_, crowd)| crowd);
        // Each rule goes to the group of the first dimension (in that order) it does not
        // leave as "any"; rules that leave every dimension as "any" go to the last group.
        // A classifier small enough to scan is one group without a dimension.
        let mut by_dim: Vec<(Option<usize>, Members)> = Vec::new();
        let scan = rules.len() <= layout.scan_max;
        let classes = ProtocolClasses::choose(&rules);
        for (id, r) in rules {
            let dim = if scan {
                None
            } else {
                order.iter().map(|&(d, _)| d).find(|&d| specific(&r, d))
            };
            match by_dim.iter_mut().find(|(d, _)| *d == dim) {
                Some((_, v)) => v.push((id, r)),
                None => by_dim.push((dim, vec![(id, r)])),
            }
        }
        let total: usize = by_dim.iter().map(|(_, v)| v.len()).sum();
        let mut budget = BUDGET_PER_RULE * total + (1 << 20);
        let mut groups = Vec::with_capacity(by_dim.len());
        for (dim, members) in by_dim {
            // Lists split by protocol class where that shortens them and copies few
            // rules.
            let split = dim.is_some_and(|d| {
                d != 2
                    && members.len() >= layout.class_min_rules.max(1)
                    && classes.shortens(&members)
                    && (layout.class_min_rules == 0 || cover_tenths(&members, d) >= CLASS_MIN_COVER)
            });
            let split = split.then_some(&classes);
            groups.push(Group::build(dim, members, split, &max, &mut budget));
        }
        groups.sort_by_key(|g| g.first);
        // The lists' layout, for the whole classifier (one lookup loop each).
        let inline_bytes: usize = groups
            .iter()
            .filter_map(|g| g.index.as_ref())
            .map(|ix| ix.locals.len() * size_of::<Entry<K>>())
            .sum();
        let filtered = inline_bytes >= layout.filter_min_bytes;
        if !filtered {
            // Lists with their entries inline are not split (they are short, and the
            // lookup then needs no protocol class): build those that were again.
            for g in &mut groups {
                let split = g.index.as_ref().filter(|ix| ix.starts.by_class);
                let Some(dim) = split.map(|ix| ix.dim) else {
                    continue;
                };
                let ids = g.all.iter().map(|e| e.id);
                let members: Members = ids.zip(core::mem::take(&mut g.rules)).collect();
                *g = Group::build(Some(dim), members, None, &max, &mut budget);
            }
        }
        for g in &mut groups {
            let Some(ix) = &mut g.index else { continue };
            if filtered {
                let filter: Vec<QBox> = g.rules.iter().map(|r| ix.filter_box(r)).collect();
                ix.boxes = ix.locals.iter().map(|&r| filter[r as usize]).collect();
                let exact: Vec<bool> = g.rules.iter().map(|r| ix.box_exact(r, &max)).collect();
                for local in &mut ix.locals {
                    let r = *local as usize;
                    if exact[r] && g.all[r].id < BOX_EXACT {
                        *local = g.all[r].id | BOX_EXACT;
                    }
                }
            } else {
                ix.pool = ix.locals.iter().map(|&r| g.all[r as usize]).collect();
                ix.locals = Vec::new();
            }
        }
        for g in &groups {
            advise_huge_pages(&g.all);
            if let Some(ix) = &g.index {
                advise_huge_pages(&ix.pool);
                advise_huge_pages(&ix.boxes);
                advise_huge_pages(&ix.locals);
                advise_huge_pages(&ix.starts.all);
                advise_huge_pages(&ix.starts.tab);
            }
        }
        let mut p = Partitioned {
            groups,
            classes,
            filtered,
            bytes: 0,
        };
        p.bytes = p.heap_bytes();
        p
    }

    /// The position of the first rule matching `key`.
    #[inline]
    pub(crate) fn lookup(&self, key: &[K; DIMS]) -> Option<usize> {
        self.lookup_where(key, |_| false)
    }

    /// The position of the first rule matching `key` that `masked` does not take out:
    /// the answer of the same rules without the masked ones. Each list holds every
    /// rule of its group covering the point, so a masked rule only lets the scan go on
    /// to the next candidate; no other rule is reached that the unmasked rules would
    /// not have reached.
    ///
    #[inline]
    pub(crate) fn lookup_where(
        &self,
        key: &[K; DIMS],
        masked: impl Fn(u32) -> bool,
    ) -> Option<usize> {
        if self.filtered {
            self.lookup_in::<true>(key, &masked)
        } else {
            self.lookup_in::<false>(key, &masked)
        }
    }

    /// [`Partitioned::lookup_where`], not inlined: for callers whose rules are rarely
    /// masked (policies removed since the compile), so that the lookup of the usual
    /// case is not compiled into them twice (that cost the 1,000-rule IPv4 lookup 16
    /// instructions of register spills, about 0.5 ns).
    #[inline(never)]
    pub(crate) fn lookup_masked(
        &self,
        key: &[K; DIMS],
        masked: impl Fn(u32) -> bool,
    ) -> Option<usize> {
        self.lookup_where(key, masked)
    }

    /// [`Partitioned::lookup_where`] in the lists' layout (`FILTERED`).
    #[inline(always)]
    fn lookup_in<const FILTERED: bool>(
        &self,
        key: &[K; DIMS],
        masked: &impl Fn(u32) -> bool,
    ) -> Option<usize> {
        let mut best = u32::MAX;
        // Only filtered lists are split by class ([`Partitioned::build`]).
        let class = if FILTERED {
            self.classes.of_key(key[2].low())
        } else {
            0
        };
        for g in &self.groups {
            if g.first >= best {
                // Groups are sorted by their first rule: none after this one can win.
                break;
            }
            best = g.first_match::<FILTERED>(key, class, best, masked);
        }
        (best != u32::MAX).then_some(best as usize)
    }

    /// The answers of [`Partitioned::lookup_where`] for up to [`BURST`] keys at once:
    /// `out[j]` for `keys[j]`. The lookups advance together, stage by
    /// stage (a group's bucket, the starts of the bucket, its interval's list, the
    /// candidates), and each stage first prefetches what the next one reads for every
    /// key of the burst, so the memory latency of the keys overlaps instead of adding up
    /// (what `rte_acl_classify` does with its flows). Each key's answer is computed by
    /// the same steps as [`Partitioned::lookup_where`]: the same groups in the same
    /// order, the same interval, the same candidates with the same checks. A classifier
    /// smaller than [`BURST_MIN_BYTES`] answers one key at a time, unless
    /// `always_staged` (for the tests).
    pub(crate) fn lookup_burst(
        &self,
        keys: &[[K; DIMS]],
        masked: impl Fn(u32) -> bool,
        out: &mut [Option<usize>],
        always_staged: bool,
    ) {
        let n = keys.len();
        assert!(n <= BURST && out.len() == n);
        if self.bytes < BURST_MIN_BYTES && !always_staged {
            // Small enough to stay in the cache: there are no misses to overlap, and
            // the stages only add work. One key at a time.
            for (o, k) in out.iter_mut().zip(keys) {
                *o = self.lookup_where(k, &masked);
            }
            return;
        }
        let mut best = [u32::MAX; BURST];
        // The keys (indices) still looking in the current group.
        let mut live = [0u8; BURST];
        // Per live key: its bucket.
        let mut at = [0usize; BURST];
        // Per live key: the intervals of its bucket's ends, then its interval's list
        // (`a..b` in the index's boxes and locals).
        let mut span = [(0u32, 0u32); BURST];
        // Per key: its protocol class.
        let mut class = [0usize; BURST];
        if self.filtered {
            for (c, k) in class.iter_mut().zip(keys) {
                *c = self.classes.of_key(k[2].low());
            }
        }
        for g in &self.groups {
            let mut m = 0;
            for (j, &b) in best[..n].iter().enumerate() {
                if g.first < b {
                    live[m] = j as u8;
                    m += 1;
                }
            }
            if m == 0 {
                // Groups are sorted by their first rule: none after this one can win.
                break;
            }
            let live = &live[..m];
            let Some(ix) = &g.index else {
                for &j in live {
                    let j = usize::from(j);
                    best[j] = g.scan_all(best[j], &keys[j], &masked);
                }
                continue;
            };
            let st = &ix.starts;
            // The bucket of each key, then the intervals of its lowest and highest key
            // (adjacent entries), then the walk over the starts between them.
            for &j in live {
                let j = usize::from(j);
                at[j] = st.bucket(keys[j][ix.dim]);
                prefetch(&st.tab, at[j]);
            }
            for &j in live {
                let j = usize::from(j);
                let b = at[j];
                let (lo, hi) = (st.tab[b], st.tab[b + 1]);
                span[j] = (lo, hi);
                prefetch(&st.all, lo as usize + 1);
            }
            // The interval (its list is in the slot the count just read), then its
            // first candidates' boxes, prefetched.
            for &j in live {
                let j = usize::from(j);
                let (lo, hi) = span[j];
                let i = st.within(keys[j][ix.dim], lo as usize, hi as usize);
                let (a, b) = st.list::<true>(i, class[j]);
                span[j] = (a, b);
                if self.filtered {
                    for c in (a..b).step_by(BOXES_PER_LINE).take(LINES_AHEAD) {
                        prefetch(&ix.boxes, c as usize);
                    }
                    if a < b {
                        prefetch(&ix.locals, a as usize);
                    }
                } else {
                    prefetch(&ix.pool, a as usize);
                }
            }
            for &j in live {
                let j = usize::from(j);
                let (a, b) = span[j];
                let list = a as usize..b as usize;
                let key = &keys[j];
                best[j] = if self.filtered {
                    g.scan_list::<true>(ix, list, key, best[j], &masked)
                } else {
                    g.scan_list::<false>(ix, list, key, best[j], &masked)
                };
            }
        }
        for (o, &b) in out.iter_mut().zip(&best[..n]) {
            *o = (b != u32::MAX).then_some(b as usize);
        }
    }

    /// Whether [`Partitioned::lookup_burst`] uses its stages for this classifier (it is
    /// at least [`BURST_MIN_BYTES`]); otherwise one key at a time is faster.
    pub(crate) fn burst_pays(&self) -> bool {
        self.bytes >= BURST_MIN_BYTES
    }

    /// One line per group: size, index dimension, intervals, mean and max list length,
    /// and in the filtered layout the share of list entries with an exact box.
    pub(crate) fn stats(&self) -> String {
        let mut out = String::new();
        for g in &self.groups {
            let (dim, n, mean, max) = match &g.index {
                Some(ix) => {
                    // All parts: from the first's start to the last's end.
                    let st = &ix.starts;
                    let lens: Vec<usize> = (0..st.all.len())
                        .map(|i| {
                            let (a, _) = st.list::<true>(i, 0);
                            (st.list::<true>(i, MAX_CLASSES - 1).1 - a) as usize
                        })
                        .collect();
                    (
                        ix.dim as i64,
                        lens.len(),
                        lens.iter().sum::<usize>() as f64 / lens.len() as f64,
                        lens.iter().copied().max().unwrap_or(0),
                    )
                }
                None => (-1, 1, g.all.len() as f64, g.all.len()),
            };
            out += &format!(
                "group first={} rules={} dim={dim} intervals={n} mean={mean:.1} max={max}",
                g.first,
                g.all.len()
            );
            // The starts a lookup walks in its bucket (between the intervals of the
            // bucket's lowest and highest key): the mean over the intervals (a key
            // in each), the most, and the share of intervals in buckets with more
            // than `SHORT` (searched by bisection).
            if let Some(ix) = &g.index {
                let st = &ix.starts;
                let mut walk = vec![0usize; st.all.len()];
                for b in st.tab.windows(2) {
                    for w in &mut walk[b[0] as usize..=b[1] as usize] {
                        *w = (*w).max((b[1] - b[0]) as usize);
                    }
                }
                let mean = walk.iter().sum::<usize>() as f64 / walk.len() as f64;
                let long = walk.iter().filter(|&&w| w > SHORT).count();
                out += &format!(
                    " walk={mean:.1} walk_max={} bisected={:.1}%",
                    walk.iter().max().unwrap_or(&0),
                    100.0 * long as f64 / walk.len() as f64
                );
            }
            // In the filtered layout: the share of list entries whose box is exact.
            if let Some(ix) = g.index.as_ref().filter(|ix| !ix.locals.is_empty()) {
                let exact = ix.locals.iter().filter(|&&l| l & BOX_EXACT != 0).count();
                let pct = 100.0 * exact as f64 / ix.locals.len() as f64;
                out += &format!(" exact={pct:.1}%");
            }
            out += "\n";
        }
        out
    }

    /// Heap bytes used.
    pub(crate) fn heap_bytes(&self) -> usize {
        if self.bytes != 0 {
            return self.bytes;
        }
        self.groups
            .iter()
            .map(|g| {
                g.all.len() * size_of::<Entry<K>>()
                    + g.rules.iter().map(TRule::heap_bytes).sum::<usize>()
                    + g.index.as_ref().map_or(0, |ix| {
                        ix.starts.bytes() + ix.boxes.len() * size_of::<QBox>() + ix.locals.len() * 4
                    })
            })
            .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The interval of `k` by the definition: the last start `<= k`.
    fn reference<K: KeyInt>(all: &[K], k: K) -> usize {
        all.partition_point(|&s| s <= k) - 1
    }

    /// `find`, and the steps the burst lookup takes (bucket, its ends, `within`), both
    /// against the reference, for the starts themselves, their neighbours and `probes`.
    fn check<K: KeyInt>(all: Vec<K>, probes: &[K], around: impl Fn(K) -> [K; 3]) {
        let st = Starts::new(all.clone(), vec![(0, 0); all.len()], false);
        let keys = all
            .iter()
            .flat_map(|&s| around(s))
            .chain(probes.iter().copied());
        for k in keys {
            let want = reference(&all, k);
            assert_eq!(st.find(k), want, "find {k:?} in {all:?}");
            let b = st.bucket(k);
            let (lo, hi) = (st.tab[b] as usize, st.tab[b + 1] as usize);
            assert_eq!(st.within(k, lo, hi), want, "within {k:?} in {all:?}");
        }
    }

    fn v4(mut rest: Vec<u32>) {
        rest.push(0);
        rest.sort_unstable();
        rest.dedup();
        let around = |s: u32| [s.saturating_sub(1), s, s.saturating_add(1)];
        check(rest, &[0, 1, u32::MAX, u32::MAX - 1, 1 << 31], around);
    }

    fn v6(mut rest: Vec<u128>) {
        rest.push(0);
        rest.sort_unstable();
        rest.dedup();
        let around = |s: u128| [s.saturating_sub(1), s, s.saturating_add(1)];
        check(rest, &[0, 1, u128::MAX, u128::MAX - 1, 1 << 127], around);
    }

    #[test]
    fn starts_edges() {
        v4(vec![]);
        v4(vec![u32::MAX]);
        v4(vec![1]);
        v4(vec![1, u32::MAX]);
        // Clustered boundaries with one far away: most buckets empty, one crowded.
        v4((0..200)
            .map(|i| 0xac10_0000 + i)
            .chain([u32::MAX])
            .collect());
        v4((0..5000).map(|i| 0x0a00_0000 + i * 256).collect());
        v6(vec![]);
        v6(vec![u128::MAX]);
        v6(vec![1, u128::MAX]);
        v6((0..300)
            .map(|i| (0x2001_0db8u128 << 96) | (i << 64))
            .collect());
        v6((0..300).map(|i| i * 3).chain([u128::MAX]).collect());
    }

    /// The starts of IPv6 subnet rules as the benchmark's large sets have them: 64
    /// sites (/48s, numbered from 1), each with /64s numbered sparsely up to 255.
    fn site_subnets() -> Vec<u128> {
        let mut all: Vec<u128> = (1..=64u128)
            .flat_map(|site| {
                (0..100u128).flat_map(move |i| {
                    let subnet = (i * 37 + site) % 256;
                    let net = (0xfd00u128 << 112) | (site << 80) | (subnet << 64);
                    [net, net + (1 << 64)]
                })
            })
            .collect();
        all.push(0);
        all.sort_unstable();
        all.dedup();
        all
    }

    #[test]
    fn split_buckets_spread_a_sites_subnets() {
        let all = site_subnets();
        let st = Starts::new(all.clone(), vec![(0, 0); all.len()], false);
        let sp = st.split.expect("a two-field map");
        // Scaled, every site is one bucket and a lookup walks its 100-odd starts;
        // split at the site field, a subnet has a bucket of its own.
        let walk = st.tab.windows(2).map(|b| b[1] - b[0]).max().unwrap();
        assert!(walk <= 2, "walk {walk} with {sp:?}");
        let scaled = all[1..]
            .chunk_by(|a, b| a >> 80 == b >> 80)
            .map(<[_]>::len)
            .max()
            .unwrap();
        assert!(scaled > 100, "{scaled}");
        let around = |s: u128| [s.saturating_sub(1), s, s.saturating_add(1)];
        check(
            all,
            &[0, 1, u128::MAX, 0xfd00u128 << 112, (0xfd01u128 << 112) - 1],
            around,
        );
    }

    #[test]
    fn split_buckets_are_monotone_and_start_where_they_say() {
        let sp = Quant {
            base: 0xfd00_0000_0001_0000,
            shift: 16,
            low: 8,
        };
        let mut last = 0;
        for x in (sp.base - 3..sp.base + (70 << 16)).step_by(97) {
            let b = sp.bucket(x);
            assert!(b >= last, "{x:x}");
            last = b;
        }
        for b in 1..(40 << 8) {
            let lowest = (sp.bucket_start(b).expect("in the domain") >> 64) as u64;
            assert_eq!(sp.bucket(lowest), b, "{b}");
            assert!(sp.bucket(lowest - 1) < b, "{b}");
        }
        assert_eq!(sp.bucket_start(usize::MAX), None);
    }

    proptest! {
        #[test]
        fn starts_find_is_the_last_start_below(
            rest in prop::collection::vec(any::<u32>(), 0..300),
            narrow in prop::collection::vec(0u32..4096, 0..300),
            wide in prop::collection::vec(any::<u128>(), 0..300),
            clustered in prop::collection::vec(0u128..(1 << 20), 0..300),
            subnets in prop::collection::vec((0u128..64, 0u128..256, 0u128..4), 0..600),
        ) {
            v4(rest);
            v4(narrow.into_iter().map(|x| 0xac10_0000 | x).collect());
            v6(wide);
            v6(clustered.into_iter().map(|x| (0x2001_0db8u128 << 96) | (x << 52)).collect());
            // Sites, their /64s and a few hosts: the two-field buckets' case.
            v6(subnets
                .into_iter()
                .map(|(site, subnet, host)| (0xfd00u128 << 112) | (site << 80) | (subnet << 64) | host)
                .collect());
        }
    }

    /// An IPv6 address value around the /64 boundaries: network `i / 4`, host 0, 1,
    /// all ones but the last bit, or all ones. Networks 0-2 are neighbours; 3-5 are
    /// subnets 1, 0 and 1 of sites 2^24 apart (a span of more than 16 bits, where the
    /// filter's address maps may cut at the subnet field: [`Quant`]).
    fn grid(i: u8) -> u128 {
        let low = [0, 1, u64::MAX - 1, u64::MAX][usize::from(i % 4)];
        let n = u128::from(i / 4);
        let network = if n < 3 { n } else { ((n - 2) << 24) | (n % 2) };
        (network << 64) | u128::from(low)
    }

    /// Address ranges on the grid: "any", one range, or two apart.
    fn addr_ranges() -> impl Strategy<Value = Vec<(u128, u128)>> {
        prop_oneof![
            1 => Just(vec![(0, u128::MAX)]),
            3 => (0u8..24, 0u8..24).prop_map(|(a, b)| vec![(grid(a.min(b)), grid(a.max(b)))]),
            2 => (0u8..24, 0u8..24, 0u8..24, 0u8..24).prop_map(|(a, b, c, d)| {
                let mut v = [a, b, c, d];
                v.sort_unstable();
                if v[1] == v[2] {
                    vec![(grid(v[0]), grid(v[3]))]
                } else {
                    vec![(grid(v[0]), grid(v[1])), (grid(v[2]), grid(v[3]))]
                }
            }),
        ]
    }

    /// A narrow range: "any" (`0..=max`) or a range inside a small window.
    fn narrow(max: u128) -> impl Strategy<Value = Vec<(u128, u128)>> {
        prop_oneof![
            1 => Just(vec![(0, max)]),
            2 => (0u128..8, 0u128..8).prop_map(|(a, b)| vec![(a.min(b), a.max(b))]),
        ]
    }

    fn rule() -> impl Strategy<Value = TRule> {
        (
            addr_ranges(),
            addr_ranges(),
            narrow(255),
            narrow(65536),
            narrow(65536),
        )
            .prop_map(|(s, d, p, a, b)| trule([s, d, p, a, b]))
    }

    /// The rule of these ranges per dimension.
    fn trule(dims: [Vec<(u128, u128)>; DIMS]) -> TRule {
        let mut ranges = Vec::new();
        let mut ends = [0; DIMS];
        for (i, r) in dims.into_iter().enumerate() {
            ranges.extend(r);
            ends[i] = ranges.len() as u32;
        }
        TRule::from_flat(ranges, ends)
    }

    fn key() -> impl Strategy<Value = [u128; DIMS]> {
        let addr = prop_oneof![
            3 => (0u8..24).prop_map(grid),
            1 => (0u8..24).prop_map(|i| grid(i).wrapping_add(1)),
            1 => any::<u128>(),
        ];
        (addr.clone(), addr, 0u128..9, 0u128..9, 0u128..9)
            .prop_map(|(s, d, p, a, b)| [s, d, p, a, b])
    }

    /// Lookups of `rules` compiled for `K` (single, with rules masked out by `mask`,
    /// staged bursts), in both list layouts, against the naive first-match scan, for
    /// `keys` (full width).
    fn check_first_match<K: KeyInt>(
        rules: &[TRule],
        keys: &[[u128; DIMS]],
        mask: u64,
        max: [u128; DIMS],
    ) -> Result<(), TestCaseError> {
        let masked = |r: u32| mask >> (r % 64) & 1 == 1;
        let naive = |k: &[u128; DIMS], skip: &dyn Fn(u32) -> bool| {
            rules
                .iter()
                .enumerate()
                .position(|(i, r)| r.matches(k) && !skip(i as u32))
        };
        let narrowed: Vec<[K; DIMS]> = keys.iter().map(|k| k.map(K::narrow)).collect();
        // Both list layouts, each indexed whatever the number of rules (its lists split
        // by protocol class where that shortens them, or never split), and scanned
        // whatever the number.
        for filter_min_bytes in [FILTER_MIN_BYTES, 0] {
            for (scan_max, class_min_rules) in [(0, 0), (0, usize::MAX), (usize::MAX, 0)] {
                let layout = Layout {
                    filter_min_bytes,
                    scan_max,
                    class_min_rules,
                };
                let p = Partitioned::<K>::build(rules.to_vec(), max, layout);
                prop_assert_eq!(p.filtered, filter_min_bytes == 0);
                for (k, w) in narrowed.iter().zip(keys) {
                    prop_assert_eq!(p.lookup(k), naive(w, &|_| false), "{:?}", w);
                    prop_assert_eq!(p.lookup_where(k, masked), naive(w, &masked), "{:?}", w);
                }
                for (chunk, wide) in narrowed.chunks(BURST).zip(keys.chunks(BURST)) {
                    let mut out = [None; BURST];
                    let out = &mut out[..chunk.len()];
                    p.lookup_burst(chunk, masked, out, true);
                    for (w, o) in wide.iter().zip(out.iter()) {
                        prop_assert_eq!(*o, naive(w, &masked), "burst {:?}", w);
                    }
                }
            }
        }
        Ok(())
    }

    /// An IPv4 address value: in a cluster of /24s (and their edges), or far from it
    /// (so that the filter's address map leaves outliers out of its span).
    fn v4_addr(i: u8) -> u128 {
        match i % 8 {
            0 => 0x0102_0304 + u128::from(i),
            1 => 0xffff_fff0 + u128::from(i % 16),
            2 | 3 => 0x0a00_0000 + u128::from(i) * 256 + 255,
            _ => 0x0a00_0000 + u128::from(i) * 256,
        }
    }

    /// IPv4 rules: address ranges on [`v4_addr`] values, narrow ranges near both ends
    /// of their dimension (ports 65,535 and OPAQUE share a filter value).
    fn v4_rule() -> impl Strategy<Value = TRule> {
        let addr = prop_oneof![
            1 => Just(vec![(0, u128::from(u32::MAX))]),
            4 => (any::<u8>(), any::<u8>()).prop_map(|(a, b)| {
                let (a, b) = (v4_addr(a), v4_addr(b));
                vec![(a.min(b), a.max(b))]
            }),
        ];
        let high = |max: u128| {
            prop_oneof![
                1 => Just(vec![(0, max)]),
                2 => (0u128..8, 0u128..8).prop_map(|(a, b)| vec![(a.min(b), a.max(b))]),
                2 => (0u128..8, 0u128..8).prop_map(move |(a, b)| vec![(max - a.max(b), max - a.min(b))]),
            ]
        };
        (addr.clone(), addr, high(255), high(65536), high(65536))
            .prop_map(|(s, d, p, a, b)| trule([s, d, p, a, b]))
    }

    fn v4_key() -> impl Strategy<Value = [u128; DIMS]> {
        let addr = prop_oneof![
            3 => any::<u8>().prop_map(v4_addr),
            1 => any::<u8>().prop_map(|i| v4_addr(i) + 1),
            1 => any::<u32>().prop_map(u128::from),
        ];
        let narrow = |max: u128| prop_oneof![0u128..9, (max - 8)..=max];
        (
            addr.clone(),
            addr,
            narrow(255),
            narrow(65536),
            narrow(65536),
        )
            .prop_map(|(s, d, p, a, b)| [s, d, p, a, b])
    }

    proptest! {
        /// `Quant::exact` says a range is kept whole exactly when it is: the map is
        /// monotone, so the range loses nothing unless the value just below it or the
        /// one just above it maps inside its mapped range. Scaled maps and two-field
        /// maps (`low` > 0), whose monotony the same test checks on the neighbours.
        #[test]
        fn quant_exact_is_whole(
            wide in any::<bool>(),
            base in any::<u64>(),
            shift in 0u32..49,
            low in prop_oneof![Just(0u32), 1u32..17],
            lo in (0u8..4, any::<u64>(), 0u64..70_000, 0u64..70_000),
            hi in (0u8..4, any::<u64>(), 0u64..70_000, 0u64..70_000),
        ) {
            let top = if wide { u64::MAX } else { u64::from(u32::MAX) };
            let (base, shift) = (base % (top / 2), shift.min(if wide { 48 } else { 16 }));
            let q = Quant { base, shift, low: low.min(shift) };
            // Any value, one on the map's grid (the lowest of its mapped value, or for
            // the upper bound the highest), one in a cut's low field, or the domain's
            // end.
            let grid = |i: u64, minus: u64| base.saturating_add(i << shift).saturating_sub(minus);
            let pick = |(kind, any, i, j): (u8, u64, u64, u64), minus: u64, end: u64| {
                match kind {
                    0 => any,
                    1 => grid(i, minus),
                    2 => grid(i, 0).saturating_add(j % (1 << shift.min(20))),
                    _ => end,
                }
                .min(top)
            };
            let (a, b) = (pick(lo, 0, 0), pick(hi, 1, top));
            let (lo, hi) = (a.min(b), a.max(b));
            let (ma, mb) = (q.map(lo), q.map(hi));
            prop_assert!(ma <= mb, "not monotone: {:?} {} -> {}, {} -> {}", q, lo, ma, hi, mb);
            let spills = [lo.checked_sub(1), hi.checked_add(1).filter(|&x| x <= top)]
                .into_iter()
                .flatten()
                .any(|x| (ma..=mb).contains(&q.map(x)));
            prop_assert_eq!(q.exact(lo, hi, top), !spills, "{:?} {}..={}", q, lo, hi);
        }
    }

    /// IPv6 rules for /64 subnets of many /48 sites (the usual plan: the subnet field
    /// numbered from 0), each to a remote /64 of its own: the map of the local address
    /// cuts at the subnet field, every subnet inside the map's span has an exact box,
    /// and lookups answer as the naive scan.
    #[test]
    fn subnet_maps_keep_ipv6_subnets_whole() {
        let site = |s: u128, x: u128| (0xfd00u128 << 112) | (s << 80) | (x << 64);
        let remote = |i: u128| (0x2001_0db8u128 << 96) | (i << 64);
        let mut rules = Vec::new();
        // Each subnet with two remotes of its own: the remote address is the more
        // selective, so the index.
        for i in 0..64 * 6 * 2 {
            let (s, x) = (i / 12, i / 2 % 6);
            let local = vec![(site(s, x), site(s, x) | u128::from(u64::MAX))];
            let remote = vec![(remote(i), remote(i) | u128::from(u64::MAX))];
            let port = 1000 + i % 7;
            rules.push(trule([
                local,
                remote,
                vec![(6, 6)],
                vec![(0, 65536)],
                vec![(port, port)],
            ]));
        }
        let max = [u128::MAX, u128::MAX, 255, 65536, 65536];
        let p = Partitioned::<u128>::build(rules.clone(), max, Layout::INDEXED_FILTERED);
        let ix = p.groups[0].index.as_ref().expect("indexed");
        // Indexed on the remote address: the local one is mapped, cut at the subnet.
        assert_eq!(ix.dim, 1);
        assert!(ix.quant[0].low > 0, "{:?}", ix.quant[0]);
        // Every subnet inside the map's span is whole; the first maps to 0 with
        // everything below it, and the span leaves out the top 1 % of the bounds
        // (mapped to 65,535 with everything above).
        let q = ix.quant[0];
        let mut saturated = 0;
        for r in &rules {
            let (lo, hi) = (r.dim(0)[0].0.top64(), r.dim(0)[0].1.top64());
            if q.map(lo) == 0 || q.map(hi) == u16::MAX {
                saturated += 1;
            } else {
                assert!(q.exact(lo, hi, u64::MAX), "{lo:x}..={hi:x} {q:?}");
            }
        }
        assert!(
            saturated <= 2 + rules.len() / 100,
            "{saturated} at the ends"
        );
        let exact = ix.locals.iter().filter(|&&l| l & BOX_EXACT != 0).count();
        assert!(exact + saturated >= ix.locals.len(), "{exact} exact boxes");
        for (i, r) in rules.iter().enumerate() {
            let (lo, port) = (r.dim(0)[0].0, r.dim(4)[0].0);
            let key = [lo + 7, r.dim(1)[0].0 + 1, 6, 5, port];
            let naive = rules.iter().position(|r| r.matches(&key));
            assert_eq!(p.lookup(&key), naive, "rule {i}");
            assert!(naive.is_some_and(|n| n <= i));
            // The next subnet's key (or the next site's): not this rule.
            let other = [lo + (1 << 64), key[1], 6, 5, port];
            assert_eq!(
                p.lookup(&other),
                rules.iter().position(|r| r.matches(&other))
            );
        }
    }

    /// Lists split by protocol class: IPv4 rules of TCP, UDP, ICMP, any protocol, a
    /// protocol range over TCP, UDP and others, and ESP, nested local networks (so the
    /// lists are long), some remote hosts. The lists are split (TCP, UDP and ICMP have
    /// classes, the others share one), every part holds exactly the list's rules that
    /// meet its class, in order, and lookups of every protocol (single, masked, bursts)
    /// answer as the naive scan.
    #[test]
    fn class_split_lists_hold_their_class_rules_in_order() {
        let net = |site: u128, sub: Option<u128>| match sub {
            Some(x) => {
                let lo = 0x0a00_0000 | site << 16 | x << 8;
                vec![(lo, lo + 255)]
            }
            None => vec![(0x0a00_0000 | site << 16, 0x0a00_ffff | site << 16)],
        };
        let any_addr = vec![(0, u128::from(u32::MAX))];
        let protocols: [&[(u128, u128)]; 10] = [
            &[(6, 6)],
            &[(17, 17)],
            &[(6, 6)],
            &[(1, 1)],
            &[(0, 255)],
            &[(5, 17)],
            &[(6, 6)],
            &[(50, 50)],
            &[(17, 17)],
            &[(1, 1)],
        ];
        let mut rules = Vec::new();
        for i in 0..300u128 {
            let site = i % 4;
            let local = if i % 3 == 0 {
                net(site, None)
            } else {
                net(site, Some(i % 7))
            };
            let remote = if i % 5 == 0 {
                vec![(0xac10_0000 + i, 0xac10_0000 + i)]
            } else {
                any_addr.clone()
            };
            let port = 20 + i % 11;
            rules.push(trule([
                local,
                remote,
                protocols[(i % 10) as usize].to_vec(),
                vec![(0, 65536)],
                vec![(port, port + (i % 3) * 100)],
            ]));
        }
        let max = [
            u128::from(u32::MAX),
            u128::from(u32::MAX),
            255,
            65536,
            65536,
        ];
        let p = Partitioned::<u32>::build(rules.clone(), max, Layout::INDEXED_FILTERED);
        assert_eq!(p.classes.top, [6, 17, 1]);
        let mut split = 0;
        for g in &p.groups {
            let Some(ix) = g.index.as_ref().filter(|ix| ix.starts.by_class) else {
                continue;
            };
            split += 1;
            // The rule positions of the candidates `a..b`.
            let ids = |a: u32, b: u32| -> Vec<u32> {
                let id = |l: u32| match l & BOX_EXACT {
                    0 => g.all[l as usize].id,
                    _ => l & !BOX_EXACT,
                };
                ix.locals[a as usize..b as usize]
                    .iter()
                    .map(|&l| id(l))
                    .collect()
            };
            for i in 0..ix.starts.all.len() {
                let (a, _) = ix.starts.list::<true>(i, 0);
                let (_, b) = ix.starts.list::<true>(i, MAX_CLASSES - 1);
                // The rules of the list (some in several parts).
                let mut whole = ids(a, b);
                whole.sort_unstable();
                whole.dedup();
                for c in 0..p.classes.count() {
                    let (pa, pb) = ix.starts.list::<true>(i, c);
                    let part = ids(pa, pb);
                    let want: Vec<u32> = whole
                        .iter()
                        .copied()
                        .filter(|&id| {
                            let r = &rules[id as usize];
                            p.classes.of_rule(r) >> c & 1 != 0
                        })
                        .collect();
                    assert_eq!(part, want, "interval {i} class {c}");
                }
            }
        }
        assert!(split > 0, "no list split");
        let mut keys = Vec::new();
        for (i, protocol) in [0u128, 1, 5, 6, 7, 17, 18, 50, 255].into_iter().enumerate() {
            for j in 0..40u128 {
                let local = 0x0a00_0000 | (j % 5) << 16 | (j % 9) << 8 | j;
                let remote = 0xac10_0000 + j * 5 + i as u128 % 2;
                keys.push([local, remote, protocol, 7, 20 + j % 13]);
            }
        }
        for mask in [0, 0x0123_4567_89ab_cdef] {
            check_first_match::<u32>(&rules, &keys, mask, max).unwrap();
        }
    }

    /// A rule that leaves every dimension as "any" (IPv4 bounds).
    fn v4_match_all() -> TRule {
        let addr = vec![(0, u128::from(u32::MAX))];
        trule([
            addr.clone(),
            addr,
            vec![(0, 255)],
            vec![(0, 65536)],
            vec![(0, 65536)],
        ])
    }

    proptest! {
        /// Rules that match everything (the group answered without comparing boxes),
        /// among and after the others, some masked out: lookups still answer as the
        /// naive first-match scan (the next match-all rule when one is masked).
        #[test]
        fn match_all_rules_answer_in_order(
            mut rules in prop::collection::vec(v4_rule(), 0..30),
            at in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
            keys in prop::collection::vec(v4_key(), 1..40),
            mask in any::<u64>(),
        ) {
            for i in at {
                rules.insert(i.index(rules.len() + 1), v4_match_all());
            }
            rules.push(v4_match_all());
            let max = [u128::from(u32::MAX), u128::from(u32::MAX), 255, 65536, 65536];
            let p = Partitioned::<u32>::build(rules.clone(), max, Layout::MEASURED);
            prop_assert!(rules.len() <= SCAN_MAX || p.groups.iter().any(|g| g.matches_all));
            check_first_match::<u32>(&rules, &keys, mask, max)?;
        }

        /// IPv4 lookups (the filter maps addresses, some rules far outside the span of
        /// the rest) answer as the naive first-match scan.
        #[test]
        fn v4_lookup_is_the_first_match(
            rules in prop::collection::vec(v4_rule(), 1..40),
            keys in prop::collection::vec(v4_key(), 1..70),
            mask in any::<u64>(),
        ) {
            let max = [u128::from(u32::MAX), u128::from(u32::MAX), 255, 65536, 65536];
            check_first_match::<u32>(&rules, &keys, mask, max)?;
        }

        /// IPv6 boxes keep the top 64 bits of the addresses: lookups (single, staged
        /// bursts, with rules masked out) still answer as the naive first-match scan, for ranges that do and do not end on /64 boundaries,
        /// address lists, and wildcard narrow dimensions.
        #[test]
        fn v6_lookup_is_the_first_match(
            rules in prop::collection::vec(rule(), 1..40),
            keys in prop::collection::vec(key(), 1..70),
            mask in any::<u64>(),
        ) {
            let max = [u128::MAX, u128::MAX, 255, 65536, 65536];
            check_first_match::<u128>(&rules, &keys, mask, max)?;
        }
    }
}
