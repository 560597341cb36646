//! An alternative compiled classifier, kept for comparison (`EngineKind::Tree`; see the
//! `spd` module docs for why it is not the default): a HiCuts-style decision tree (Gupta & McKeown, "Packet
//! classification using hierarchical intelligent cuttings", Hot Interconnects 1999) with
//! first-match pruning, one tree per address family.
//!
//! A node covers a box of the five-dimensional key space (source, destination,
//! protocol, A = source port or ICMP type, B = destination port or ICMP code). An inner
//! node cuts one dimension of its box into 2^k equal parts; a lookup computes the part
//! with one subtraction and one shift per level. A leaf holds at most [`BINTH`] rules (in
//! priority order) that are checked one by one against the whole key, so the answer
//! never depends on the cuts, only on each leaf holding, in order, every rule that
//! intersects its box. The list of a box is cut short after the first rule that covers
//! the whole box: nothing after it can ever match there (this is what keeps catch-alls
//! and broad rules from being copied into every leaf behind specific ones).
//!
//! Heuristics (HiCuts): cut the dimension with the most distinct rule ranges inside the
//! box; double the number of cuts while the rules copied into the parts stay under
//! [`SPFAC`] times the rules of the node. Leaves with the same rule list are shared. A
//! global budget on copied entries turns further nodes into (longer, still correct)
//! leaves, so an adversarial policy cannot exhaust memory at compile time.

use std::collections::{HashMap, HashSet};

/// A leaf holds at most this many rules (unless it cannot be cut further).
const BINTH: usize = 8;
/// Space factor: the parts of a node may hold at most this many times its rules.
const SPFAC: usize = 4;
/// At most 2^MAX_CUT_BITS parts per node.
const MAX_CUT_BITS: u32 = 8;
/// Depth limit.
const MAX_DEPTH: usize = 48;

/// Number of dimensions.
pub(crate) const DIMS: usize = 5;

/// One rule: per dimension, a sorted list of inclusive ranges.
#[derive(Debug, Clone)]
pub(crate) struct TRule {
    ranges: Box<[(u128, u128)]>,
    ends: [u32; DIMS],
}

impl TRule {
    /// A rule of the ranges of each dimension, given one dimension after the other:
    /// `ranges` holds them all, `ends[d]` is where dimension `d`'s ranges end (one
    /// allocation per rule, which matters when a live gateway recompiles 100,000).
    pub(crate) fn from_flat(ranges: Vec<(u128, u128)>, ends: [u32; DIMS]) -> TRule {
        debug_assert!(ends.is_sorted() && ends[DIMS - 1] as usize == ranges.len());
        TRule {
            ranges: ranges.into_boxed_slice(),
            ends,
        }
    }

    #[inline]
    pub(crate) fn dim(&self, d: usize) -> &[(u128, u128)] {
        let start = if d == 0 { 0 } else { self.ends[d - 1] as usize };
        &self.ranges[start..self.ends[d] as usize]
    }

    #[inline]
    pub(crate) fn matches(&self, key: &[u128; DIMS]) -> bool {
        (0..DIMS).all(|d| self.dim(d).iter().any(|&(l, h)| l <= key[d] && key[d] <= h))
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        size_of::<TRule>() + self.ranges.len() * 32
    }

    pub(crate) fn is_empty(&self) -> bool {
        (0..DIMS).any(|d| self.dim(d).is_empty())
    }
}

#[derive(Debug, Clone, Copy)]
enum Node {
    Leaf {
        start: u32,
        len: u32,
    },
    Cut {
        dim: u8,
        shift: u8,
        lo: u128,
        kids: u32,
    },
}

/// A box: per dimension, `lo` and the number of bits it spans (`lo` aligned to it).
type Region = [(u128, u32); DIMS];

const fn span(bits: u32) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

/// The decision tree of one address family.
pub(crate) struct Tree {
    rules: Vec<TRule>,
    /// Rule index of each tree rule (its position in the direction's rule list).
    ids: Vec<u32>,
    nodes: Vec<Node>,
    kids: Vec<u32>,
    leaf_rules: Vec<u32>,
}

struct Builder<'a> {
    rules: &'a [TRule],
    nodes: Vec<Node>,
    kids: Vec<u32>,
    leaf_rules: Vec<u32>,
    leaves: HashMap<Vec<u32>, u32>,
    budget: usize,
}

impl Builder<'_> {
    fn clip(
        &self,
        r: u32,
        d: usize,
        (lo, bits): (u128, u32),
    ) -> impl Iterator<Item = (u128, u128)> + '_ {
        let hi = lo + span(bits);
        self.rules[r as usize]
            .dim(d)
            .iter()
            .filter(move |&&(l, h)| l <= hi && h >= lo)
            .map(move |&(l, h)| (l.max(lo), h.min(hi)))
    }

    fn covers(&self, r: u32, region: &Region) -> bool {
        (0..DIMS).all(|d| {
            let (lo, bits) = region[d];
            let hi = lo + span(bits);
            self.rules[r as usize]
                .dim(d)
                .iter()
                .any(|&(l, h)| l <= lo && h >= hi)
        })
    }

    fn leaf(&mut self, rules: Vec<u32>) -> u32 {
        if let Some(&n) = self.leaves.get(&rules) {
            return n;
        }
        let start = self.leaf_rules.len() as u32;
        self.leaf_rules.extend_from_slice(&rules);
        let n = self.nodes.len() as u32;
        self.nodes.push(Node::Leaf {
            start,
            len: rules.len() as u32,
        });
        self.leaves.insert(rules, n);
        n
    }

    /// `rules`: every rule intersecting `region`, in priority order.
    fn build(&mut self, mut rules: Vec<u32>, region: Region, depth: usize) -> u32 {
        if let Some(pos) = rules.iter().position(|&r| self.covers(r, &region)) {
            rules.truncate(pos + 1);
        }
        if rules.len() <= BINTH || depth >= MAX_DEPTH || self.budget == 0 {
            return self.leaf(rules);
        }
        // The dimension with the most distinct ranges inside the box.
        let mut best: Option<(usize, usize)> = None;
        for (d, &(lo, bits)) in region.iter().enumerate() {
            if bits == 0 {
                continue;
            }
            let full = (lo, lo + span(bits));
            let mut distinct = HashSet::new();
            for &r in &rules {
                for c in self.clip(r, d, region[d]) {
                    if c != full {
                        distinct.insert(c);
                    }
                }
            }
            if !distinct.is_empty() && best.is_none_or(|(_, n)| distinct.len() > n) {
                best = Some((d, distinct.len()));
            }
        }
        let Some((dim, _)) = best else {
            return self.leaf(rules);
        };
        let (lo, bits) = region[dim];
        // How many parts: double while the copies stay within SPFAC × rules.
        let copies = |cut_bits: u32| -> usize {
            let shift = bits - cut_bits;
            let mut total = 1usize << cut_bits;
            for &r in &rules {
                for (l, h) in self.clip(r, dim, region[dim]) {
                    total += ((h - lo) >> shift) as usize - ((l - lo) >> shift) as usize + 1;
                }
            }
            total
        };
        let mut cut_bits = 1;
        while cut_bits < MAX_CUT_BITS.min(bits) && copies(cut_bits + 1) <= SPFAC * rules.len() {
            cut_bits += 1;
        }
        let shift = bits - cut_bits;
        let parts = 1usize << cut_bits;
        let mut lists: Vec<Vec<u32>> = vec![Vec::new(); parts];
        for &r in &rules {
            for (l, h) in self.clip(r, dim, region[dim]) {
                let (a, b) = (((l - lo) >> shift) as usize, ((h - lo) >> shift) as usize);
                for list in &mut lists[a..=b] {
                    if list.last() != Some(&r) {
                        list.push(r);
                    }
                }
            }
        }
        let copied: usize = lists.iter().map(Vec::len).sum();
        self.budget = self.budget.saturating_sub(copied);
        let me = self.nodes.len() as u32;
        self.nodes.push(Node::Leaf { start: 0, len: 0 });
        let kids_at = self.kids.len();
        self.kids.resize(kids_at + parts, 0);
        for (i, list) in lists.into_iter().enumerate() {
            let mut sub = region;
            sub[dim] = (lo + ((i as u128) << shift), shift);
            let child = self.build(list, sub, depth + 1);
            self.kids[kids_at + i] = child;
        }
        self.nodes[me as usize] = Node::Cut {
            dim: dim as u8,
            shift: shift as u8,
            lo,
            kids: kids_at as u32,
        };
        me
    }
}

impl Tree {
    /// Builds the tree of `rules` (priority order) over a key space whose dimensions
    /// span `bits` bits each. Rules with an empty dimension are left out.
    pub(crate) fn build(rules: Vec<TRule>, bits: [u32; DIMS]) -> Tree {
        let ids: Vec<u32> = (0..rules.len() as u32)
            .filter(|&i| !rules[i as usize].is_empty())
            .collect();
        let rules: Vec<TRule> = ids.iter().map(|&i| rules[i as usize].clone()).collect();
        let mut b = Builder {
            rules: &rules,
            nodes: Vec::new(),
            kids: Vec::new(),
            leaf_rules: Vec::new(),
            leaves: HashMap::new(),
            budget: 64 * rules.len() + (1 << 20),
        };
        let region: Region = core::array::from_fn(|d| (0, bits[d]));
        let root = b.build((0..rules.len() as u32).collect(), region, 0);
        debug_assert_eq!(root, 0);
        let (nodes, kids, leaf_rules) = (b.nodes, b.kids, b.leaf_rules);
        Tree {
            rules,
            ids,
            nodes,
            kids,
            leaf_rules,
        }
    }

    /// The rule index (as given to [`Tree::build`]) of the first rule matching `key`.
    #[inline]
    pub(crate) fn lookup(&self, key: &[u128; DIMS]) -> Option<usize> {
        let mut n = 0usize;
        loop {
            match self.nodes[n] {
                Node::Cut {
                    dim,
                    shift,
                    lo,
                    kids,
                } => {
                    let part = ((key[usize::from(dim)] - lo) >> shift) as usize;
                    n = self.kids[kids as usize + part] as usize;
                }
                Node::Leaf { start, len } => {
                    let list = &self.leaf_rules[start as usize..(start + len) as usize];
                    return list
                        .iter()
                        .find(|&&r| self.rules[r as usize].matches(key))
                        .map(|&r| self.ids[r as usize] as usize);
                }
            }
        }
    }

    /// Heap bytes used.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.rules
            .iter()
            .map(|r| size_of::<TRule>() + r.ranges.len() * 32)
            .sum::<usize>()
            + self.ids.len() * 4
            + self.nodes.len() * size_of::<Node>()
            + self.kids.len() * 4
            + self.leaf_rules.len() * 4
    }
}
