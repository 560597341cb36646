//! A bounding-volume hierarchy over the policies' boxes, so that the lint finds the
//! earlier boxes a region overlaps without scanning every earlier policy.
//!
//! Without it, each policy was compared with every earlier one (shadow analysis,
//! conflicts, fragment-bypass): quadratic in the number of policies even when no two
//! overlap (10,000 disjoint rules took 2.3 s, 100,000 about four minutes). The tree is
//! built once per lint run in `O(n log n)`: each node holds the bounding box of its
//! entries and the smallest policy index among them; a query descends only into nodes
//! whose bounding box overlaps the query box and that hold an earlier policy, so for
//! policies that are disjoint in any one dimension (addresses, protocol or ports) a query
//! costs `O(log n)` plus the boxes it returns. Nodes are split at the median of the box
//! centres along the dimension where the centres spread most, which is the dimension
//! that tells the boxes apart, whichever it is.
//!
//! The shadow analysis asks, for each piece of a region, for the first earlier box (from
//! some file position on) that overlaps it, and usually needs only that one (a rule
//! inside an earlier, wider one is covered by it alone). [`OrderedQuery`] hands the boxes
//! out one at a time in file order, best first: nodes wait in a heap keyed by the
//! smallest file position below them, so the caller can stop after the first. A rule
//! that a thousand earlier rules overlap but the first of them covers costs a few node
//! visits, not a thousand.
//!
//! Every node a query visits is counted against the lint's work budget, so that a
//! hostile file (many boxes that overlap in every dimension) cannot make a query
//! expensive without the budget seeing it.

use super::lint::Bx;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Boxes per leaf.
const LEAF: usize = 8;

/// One box of a policy: the policy's index, the box's position in file order (policy,
/// then box), and the box.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub(crate) policy: usize,
    pub(crate) order: u32,
    pub(crate) bx: Bx,
}

#[derive(Clone, Copy, Debug)]
struct Node {
    bbox: Bx,
    /// The smallest policy index of the entries below.
    min_policy: usize,
    /// The smallest file position (`Entry::order`) of the entries below.
    min_order: u32,
    /// The largest file position of the entries below.
    max_order: u32,
    /// `entries[start..end]` for a leaf; for an inner node the children are
    /// `left` and `left + 1`... (stored explicitly below).
    start: u32,
    end: u32,
    /// Children (`u32::MAX` for a leaf).
    left: u32,
    right: u32,
}

/// The index (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct BoxIndex {
    entries: Vec<Entry>,
    nodes: Vec<Node>,
}

fn union(a: &Bx, b: &Bx) -> Bx {
    let mut out = *a;
    for d in 0..5 {
        out[d] = (a[d].0.min(b[d].0), a[d].1.max(b[d].1));
    }
    out
}

fn overlaps(x: &Bx, y: &Bx) -> bool {
    x.iter().zip(y).all(|(a, b)| a.0 <= b.1 && b.0 <= a.1)
}

/// The centre of interval `iv` (without overflow).
fn centre(iv: (u128, u128)) -> u128 {
    iv.0 / 2 + iv.1 / 2 + (iv.0 & iv.1 & 1)
}

impl BoxIndex {
    /// Builds the tree over `entries` (in any order).
    pub(crate) fn new(mut entries: Vec<Entry>) -> BoxIndex {
        let mut nodes = Vec::with_capacity(2 * entries.len() / LEAF + 1);
        if !entries.is_empty() {
            let n = entries.len();
            Self::build(&mut entries, 0, n, &mut nodes);
        }
        BoxIndex { entries, nodes }
    }

    /// Builds the node of `entries[start..end]`; returns its index.
    fn build(entries: &mut [Entry], start: usize, end: usize, nodes: &mut Vec<Node>) -> u32 {
        let slice = &entries[start..end];
        let mut bbox = slice[0].bx;
        let mut min_policy = slice[0].policy;
        let (mut min_order, mut max_order) = (slice[0].order, slice[0].order);
        for e in &slice[1..] {
            bbox = union(&bbox, &e.bx);
            min_policy = min_policy.min(e.policy);
            min_order = min_order.min(e.order);
            max_order = max_order.max(e.order);
        }
        let at = nodes.len();
        nodes.push(Node {
            bbox,
            min_policy,
            min_order,
            max_order,
            start: start as u32,
            end: end as u32,
            left: u32::MAX,
            right: u32::MAX,
        });
        if end - start <= LEAF {
            return at as u32;
        }
        // Split along the dimension whose box centres spread most.
        let mut best = (0usize, 0u128);
        for d in 0..5 {
            let (lo, hi) = slice.iter().fold((u128::MAX, 0u128), |(lo, hi), e| {
                let c = centre(e.bx[d]);
                (lo.min(c), hi.max(c))
            });
            if hi - lo > best.1 {
                best = (d, hi - lo);
            }
        }
        let mid = (end - start) / 2;
        if best.1 == 0 {
            // Every centre is the same point: nothing tells these boxes apart; split
            // them in file order (a query will visit both halves anyway).
            entries[start..end].sort_unstable_by_key(|e| e.order);
        } else {
            let d = best.0;
            entries[start..end].select_nth_unstable_by_key(mid, |e| centre(e.bx[d]));
        }
        let left = Self::build(entries, start, start + mid, nodes);
        let right = Self::build(entries, start + mid, end, nodes);
        nodes[at].left = left;
        nodes[at].right = right;
        at as u32
    }

    /// Appends to `out` every entry of a policy before `before` whose box overlaps `q`.
    /// Counts each node visited in `work`; returns false (having appended a part) when
    /// `work` ran out.
    pub(crate) fn query(
        &self,
        q: &Bx,
        before: usize,
        work: &mut u64,
        out: &mut Vec<Entry>,
    ) -> bool {
        if self.nodes.is_empty() {
            return true;
        }
        let mut stack = vec![0u32];
        while let Some(n) = stack.pop() {
            if *work == 0 {
                return false;
            }
            *work -= 1;
            let node = &self.nodes[n as usize];
            if node.min_policy >= before || !overlaps(&node.bbox, q) {
                continue;
            }
            if node.left == u32::MAX {
                for e in &self.entries[node.start as usize..node.end as usize] {
                    if e.policy < before && overlaps(&e.bx, q) {
                        out.push(*e);
                    }
                }
            } else {
                stack.push(node.left);
                stack.push(node.right);
            }
        }
        true
    }
}

/// What an [`OrderedQuery`] heap holds: a node still to open, or an entry found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Pending {
    /// An entry's position in `BoxIndex::entries`.
    Entry(u32),
    /// A node's index.
    Node(u32),
}

/// The entries from file position `from` on, of policies before a given one, whose boxes
/// overlap any of a set of query boxes, handed out one at a time in file order (see the
/// module docs). Each entry comes once, however many query boxes it overlaps.
pub(crate) struct OrderedQuery<'a> {
    index: &'a BoxIndex,
    query: &'a [Bx],
    before: usize,
    from: u32,
    /// Keyed by the smallest file position the item can yield; entries sort before the
    /// nodes of the same key (a node holding the entry yields it no earlier).
    heap: BinaryHeap<Reverse<(u32, Pending)>>,
}

impl<'a> OrderedQuery<'a> {
    /// Starts a query of `index` for the boxes at file positions `from` and later, of
    /// policies before `before`, that overlap any box of `query`.
    pub(crate) fn new(
        index: &'a BoxIndex,
        query: &'a [Bx],
        before: usize,
        from: u32,
    ) -> OrderedQuery<'a> {
        let mut heap = BinaryHeap::new();
        if let Some(root) = index.nodes.first() {
            heap.push(Reverse((root.min_order, Pending::Node(0))));
        }
        OrderedQuery {
            index,
            query,
            before,
            from,
            heap,
        }
    }

    fn wanted(&self, bx: &Bx) -> bool {
        self.query.iter().any(|q| overlaps(bx, q))
    }

    /// The next entry in file order: `Some(Ok(entry))`, `None` when there are no more,
    /// `Some(Err(()))` when `work` (decremented once per node opened and per entry
    /// tested) ran out first.
    pub(crate) fn next(&mut self, work: &mut u64) -> Option<Result<Entry, ()>> {
        while let Some(Reverse((_, item))) = self.heap.pop() {
            let n = match item {
                Pending::Entry(k) => return Some(Ok(self.index.entries[k as usize])),
                Pending::Node(n) => n,
            };
            if *work == 0 {
                return Some(Err(()));
            }
            *work -= 1;
            let node = &self.index.nodes[n as usize];
            if node.min_policy >= self.before
                || node.max_order < self.from
                || !self.wanted(&node.bbox)
            {
                continue;
            }
            if node.left == u32::MAX {
                for k in node.start..node.end {
                    let e = &self.index.entries[k as usize];
                    if *work == 0 {
                        return Some(Err(()));
                    }
                    *work -= 1;
                    if e.policy < self.before && e.order >= self.from && self.wanted(&e.bx) {
                        self.heap.push(Reverse((e.order, Pending::Entry(k))));
                    }
                }
            } else {
                for c in [node.left, node.right] {
                    let key = self.index.nodes[c as usize].min_order;
                    self.heap.push(Reverse((key, Pending::Node(c))));
                }
            }
        }
        None
    }
}

/// Sorts entries by file order and removes repeats (an entry found by several query
/// boxes).
pub(crate) fn in_file_order(v: &mut Vec<Entry>) {
    v.sort_unstable_by_key(|e| e.order);
    v.dedup_by_key(|e| e.order);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bx(l: (u128, u128), r: (u128, u128)) -> Bx {
        [l, r, (6, 6), (0, 65536), (0, 65536)]
    }

    /// The index answers exactly what a scan of all earlier boxes answers.
    #[test]
    fn queries_equal_a_linear_scan() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            u128::from(state % m)
        };
        let entries: Vec<Entry> = (0..500)
            .map(|i| {
                let (a, b) = (next(1000), next(1000));
                let (c, e) = (next(50), next(50));
                Entry {
                    policy: i / 2,
                    order: i as u32,
                    bx: bx((a.min(b), a.max(b)), (c.min(e), c.max(e))),
                }
            })
            .collect();
        let index = BoxIndex::new(entries.clone());
        for k in 0..200 {
            let (a, b, c, e) = (next(1000), next(1000), next(50), next(50));
            let q = bx((a.min(b), a.max(b)), (c.min(e), c.max(e)));
            let before = (k * 7) % 260;
            let mut got = Vec::new();
            let mut work = u64::MAX;
            assert!(index.query(&q, before, &mut work, &mut got));
            in_file_order(&mut got);
            let want: Vec<u32> = entries
                .iter()
                .filter(|e| e.policy < before && overlaps(&e.bx, &q))
                .map(|e| e.order)
                .collect();
            assert_eq!(got.iter().map(|e| e.order).collect::<Vec<_>>(), want);
            // The ordered query yields the same entries, already in file order, for a
            // set of query boxes (each entry once).
            let (f, g, h, m) = (next(1000), next(1000), next(50), next(50));
            let qs = [q, bx((f.min(g), f.max(g)), (h.min(m), h.max(m)))];
            let from = (k * 13 % 500) as u32;
            let mut ordered = OrderedQuery::new(&index, &qs, before, from);
            let mut work = u64::MAX;
            let mut got = Vec::new();
            while let Some(e) = ordered.next(&mut work) {
                got.push(e.expect("unbounded work").order);
            }
            let want: Vec<u32> = entries
                .iter()
                .filter(|e| e.policy < before && e.order >= from)
                .filter(|e| qs.iter().any(|q| overlaps(&e.bx, q)))
                .map(|e| e.order)
                .collect();
            assert_eq!(got, want);
        }
        let mut work = 3;
        let mut got = Vec::new();
        assert!(!index.query(&bx((0, 999), (0, 49)), 260, &mut work, &mut got));
        assert_eq!(work, 0);
    }
}
