//! Policy lint ([`Spd::lint`], [`lint_toml`]): findings with stable codes.
//!
//! # Codes
//!
//! | code | severity | meaning |
//! |------|----------|---------|
//! | `invalid` | error | a load error ([`lint_toml`] only) |
//! | `shadowed` | error | the policy never matches: earlier policies cover all of its traffic and at least one of them decides otherwise (or it matches no packet at all) |
//! | `redundant` | warning | the policy never matches: earlier policies cover all of its traffic and all of them decide the same (action and SA) |
//! | `conflict` | warning | a partial overlap with an earlier policy that decides otherwise: the order decides |
//! | `no-catch-all` | warning | no explicit rule matching everything in a direction: the implicit DISCARD is silent |
//! | `ike-blocked` | error | IKE (UDP 500, and UDP 4500 with NAT-T) between the tunnel endpoints is discarded or would be encrypted by the policy itself |
//! | `protocol-number-as-port` | warning | a TCP/UDP port, or a range of at most [`MAX_FLAGGED_RANGE`] ports (such as `"50-51"`), holding 50 or 51, on either port key: ESP and AH are IP protocols 50 and 51, not ports |
//! | `any-any-bypass` | warning | a BYPASS rule with any addresses, protocol and ports |
//! | `fragment-bypass` | warning | a BYPASS with ports "any" after a port-specific (or ICMP type-specific) PROTECT of overlapping addresses and protocol: non-first fragments of the protected traffic carry no ports and would reach the BYPASS (see below) |
//! | `incomplete` | info | the exact shadow analysis of a policy hit its work bound and was not finished |
//! | `sa-zero-key` | error | an SA's cipher key (salt left out) or integrity key is all zeros |
//! | `sa-not-encrypted` | warning | a PROTECT policy uses an SA with NULL encryption or AES-GMAC: authenticated, not encrypted (RFC 8221) |
//! | `sa-cbc` | info | an SA uses AES-CBC with HMAC: RFC 8221 prefers AEAD ciphers |
//! | `sa-hmac-sha1` | info | an SA uses HMAC-SHA1-96 (MUST- in RFC 8221 §6) |
//!
//! [`lint_toml`] also reports, as `invalid`, every check a loader makes: the policy
//! tables, and the SAs as [`Spd::from_toml`] and [`Gateway::new`](crate::Gateway::new)
//! check them ([`crate::sa_set`]: key lengths, algorithm combinations, every other
//! field, inbound SPIs unique, no key used by two SAs). It calls the loaders' own
//! functions, so a file `lint_toml` passes without an `invalid` finding loads.
//!
//! # The exact shadow check
//!
//! The flow space of one direction and address family has five dimensions, written in
//! the policy's own coordinates (which are the same for outbound and inbound packets):
//! local address, remote address, protocol, `a` (local port, or ICMP type) and `b`
//! (remote port, or ICMP code), where `a`/`b` take the extra value 65536 for OPAQUE
//! (no ports: other protocols, non-first fragments). Only flows a packet can produce
//! are counted: for TCP/UDP/SCTP both ports are known (0..=65535) or both OPAQUE, for
//! ICMP/ICMPv6 type and code are 0..=255 or both OPAQUE, for every other protocol both
//! are OPAQUE. This "valid space" is a union of disjoint boxes.
//!
//! A policy is a union of boxes (its address sets are unions of ranges). For rule `i`,
//! each box of `i ∩ valid` is partitioned by **first match**: take the earliest box of
//! an earlier rule `j` (in file order) that overlaps the region; every point of
//! `region ∩ box_j` is won by `j` (no earlier box touches the region), and
//! `region \ box_j` is split into at most ten disjoint boxes (two per dimension) that
//! are processed the same way with the boxes after `box_j`. A region that no later
//! box overlaps is a point set where rule `i` wins: rule `i` is reachable, and the
//! region's lowest corner is a witness flow. If no such region remains, rule `i` never
//! matches; the set of winners tells `shadowed` (some winner decides otherwise) from
//! `redundant` (all decide as `i`). Only earlier rules of the same direction whose boxes
//! overlap rule `i` take part (pruning).
//!
//! Exactness and cost: every region produced is a union of cells of the grid that the
//! endpoints of the involved boxes induce in each dimension, and the leaves are
//! disjoint, so there are at most `∏_d (2·k_d + 1)` leaves (`k_d` boxes with distinct
//! endpoints in dimension `d`), at most as many inner nodes (each inner node produces a
//! won leaf), and each node scans at most `k` boxes: `O(k · ∏_d (2·k_d + 1))`, never
//! worse than enumerating the grid and usually far better. The scan steps are counted;
//! past [`WORK_BOUND`] per policy the analysis stops and an `incomplete` Info finding
//! says so instead of guessing.
//!
//! # `fragment-bypass`
//!
//! A non-first fragment carries no ports (RFC 4301 §7): it is the flow with `a` and `b`
//! OPAQUE. For a PROTECT policy `p` that selects on ports or ICMP fields and a later
//! BYPASS `q` that does not, the finding is raised when some non-first fragment that
//! `p` could cover (its addresses and protocol, OPAQUE ports) is matched first by `q`
//! among the rules that match OPAQUE ports: exactly the fragments an implementation
//! without fragment state would bypass in the clear, though they may belong to `p`'s
//! protected traffic. The same first-match partition as above decides it (earlier
//! port-"any" rules covering those fragments, such as a DISCARD of the protocol
//! between the same networks, silence it), and the finding names a witness.

mod ports;
mod sa;

pub use ports::MAX_FLAGGED_RANGE;

use crate::error::ConfigError;
use crate::sa::Direction;
use crate::spd::lint_index::{BoxIndex, Entry, OrderedQuery, in_file_order};
use crate::spd::selector::{has_ports, is_icmp};
use crate::spd::{Action, EngineKind, Flow, Policy, Spd};
use core::cell::Cell;
use core::fmt;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Scan steps allowed for the shadow analysis of one policy (all directions and
/// families together) before it reports `incomplete`.
pub const WORK_BOUND: u64 = 4_000_000;

/// How much work one lint run may do ([`Spd::lint_with`], [`lint_toml_with`]).
///
/// The work is counted in steps (a box compared, an index node visited; a few
/// nanoseconds each), never in time: the library reads no clock. A policy whose
/// analysis needs more than `per_policy` steps gets an `incomplete` finding; when the
/// whole run has used `total` steps, the analyses that compare policies (shadowed,
/// redundant, conflict, fragment-bypass) stop and a `budget` finding says from which
/// policy on they were not done. The other checks always run (they cost one pass).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LintBudget {
    /// Steps for the analysis of one policy.
    pub per_policy: u64,
    /// Steps for the whole run.
    pub total: u64,
}

impl LintBudget {
    /// The default: [`WORK_BOUND`] steps per policy and 400 million in all (about a
    /// few seconds of work; a file of 100,000 disjoint rules needs a small part of it).
    pub const DEFAULT: LintBudget = LintBudget {
        per_policy: WORK_BOUND,
        total: 400_000_000,
    };

    /// The default with a total of `steps` for the whole run.
    pub const fn with_total(steps: u64) -> LintBudget {
        LintBudget {
            per_policy: WORK_BOUND,
            total: steps,
        }
    }
}

impl Default for LintBudget {
    fn default() -> Self {
        LintBudget::DEFAULT
    }
}

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Severity {
    /// The policy file does not do what it says (or does not load).
    Error,
    /// Probably a mistake, or something to look at.
    Warning,
    /// For information (e.g. an analysis that could not be finished).
    Info,
}

impl Severity {
    /// `"error"`, `"warning"` or `"info"`.
    pub const fn name(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One lint finding.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Finding {
    /// How serious it is.
    pub severity: Severity,
    /// The stable code (see the [module docs](self)).
    pub code: &'static str,
    /// The policy it is about, `None` for the file as a whole.
    pub policy: Option<String>,
    /// One sentence for a person.
    pub message: String,
}

impl Finding {
    fn new(
        severity: Severity,
        code: &'static str,
        policy: Option<&str>,
        message: impl Into<String>,
    ) -> Finding {
        Finding {
            severity,
            code,
            policy: policy.map(str::to_owned),
            message: message.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.severity, self.code)?;
        if let Some(p) = &self.policy {
            write!(f, " policy {p:?}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Lints a policy file's text: every load error as an `invalid` finding (all of them,
/// not just the first), or, when the file loads, the findings of [`Spd::lint`].
pub fn lint_toml(text: &str) -> Vec<Finding> {
    lint_toml_with(text, LintBudget::DEFAULT)
}

/// [`lint_toml`] within `budget` (for text from untrusted sources: see [`LintBudget`]).
pub fn lint_toml_with(text: &str, budget: LintBudget) -> Vec<Finding> {
    let (policies, sas, errors) = super::parse::parse(text);
    let mut findings: Vec<Finding> = errors.iter().map(invalid).collect();
    // Lint the policies that did load, so that one run reports every problem in the
    // file (unless nothing loaded at all, e.g. broken TOML: then there is nothing to
    // analyse and a "no catch-all" finding would only be noise).
    if errors.is_empty() || !policies.is_empty() {
        findings.extend(Spd::build(policies, sas, EngineKind::Partitioned).lint_with(budget));
    }
    findings
}

fn invalid(e: &ConfigError) -> Finding {
    // Policy errors are reported as `policy "NAME": key: message`: the finding names the
    // policy once, and its message starts at the key.
    let named = e
        .field()
        .strip_prefix("policy \"")
        .and_then(|rest| rest.split_once('"'));
    match named {
        Some((name, rest)) => {
            let key = rest.trim_start_matches(':').trim();
            let message = if key.is_empty() {
                e.message().to_string()
            } else {
                format!("{key}: {}", e.message())
            };
            Finding::new(Severity::Error, "invalid", Some(name), message)
        }
        None => Finding::new(Severity::Error, "invalid", None, e.to_string()),
    }
}

// ---------------------------------------------------------------------------------
// Geometry
// ---------------------------------------------------------------------------------

/// The OPAQUE value of the `a`/`b` dimensions.
const OP: u128 = 1 << 16;

/// An inclusive interval.
type Iv = (u128, u128);

/// A box: local, remote, protocol, a, b.
pub(crate) type Bx = [Iv; 5];

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Fam {
    V4,
    V6,
}

const FAMS: [Fam; 2] = [Fam::V4, Fam::V6];
const DIRS: [Direction; 2] = [Direction::Outbound, Direction::Inbound];

fn ranges(set: &crate::spd::AddrSet, fam: Fam) -> Vec<Iv> {
    match fam {
        Fam::V4 => set
            .v4_ranges()
            .iter()
            .map(|&(l, h)| (u128::from(l), u128::from(h)))
            .collect(),
        Fam::V6 => set.v6_ranges().to_vec(),
    }
}

/// The boxes of a policy in one family (before intersecting with the valid space).
pub(crate) fn rule_boxes(p: &Policy, fam: Fam) -> Vec<Bx> {
    let proto = p
        .protocol
        .map_or((0, 255), |x| (u128::from(x), u128::from(x)));
    let (a, b) = if p.protocol.is_some_and(is_icmp) {
        let one = |v: Option<u8>| v.map_or((0, OP), |x| (u128::from(x), u128::from(x)));
        (one(p.icmp_type), one(p.icmp_code))
    } else {
        let r = |v: Option<(u16, u16)>| v.map_or((0, OP), |(l, h)| (u128::from(l), u128::from(h)));
        (r(p.local_port), r(p.remote_port))
    };
    let remote = ranges(&p.remote, fam);
    let mut out = Vec::new();
    for &l in &ranges(&p.local, fam) {
        for &r in &remote {
            out.push([l, r, proto, a, b]);
        }
    }
    out
}

/// The flows a packet can produce, as disjoint boxes over (protocol, a, b).
fn valid_space() -> Vec<[Iv; 3]> {
    const SPECIAL: [u8; 5] = [1, 6, 17, 58, 132];
    let opaque = [(OP, OP), (OP, OP)];
    let mut out = Vec::new();
    let mut start: u128 = 0;
    for s in SPECIAL {
        let s = u128::from(s);
        if start < s {
            out.push([(start, s - 1), opaque[0], opaque[1]]);
        }
        let (a, b) = if is_icmp(s as u8) {
            ((0, 255), (0, 255))
        } else {
            ((0, 65535), (0, 65535))
        };
        out.push([(s, s), a, b]);
        out.push([(s, s), opaque[0], opaque[1]]);
        start = s + 1;
    }
    out.push([(start, 255), opaque[0], opaque[1]]);
    out
}

fn meet(x: Iv, y: Iv) -> Option<Iv> {
    let lo = x.0.max(y.0);
    let hi = x.1.min(y.1);
    (lo <= hi).then_some((lo, hi))
}

fn overlaps(x: &Bx, y: &Bx) -> bool {
    x.iter().zip(y).all(|(a, b)| a.0 <= b.1 && b.0 <= a.1)
}

fn inter(x: &Bx, y: &Bx) -> Option<Bx> {
    let mut out = *x;
    for d in 0..5 {
        out[d] = meet(x[d], y[d])?;
    }
    Some(out)
}

/// The part of a policy's boxes that packets can reach.
pub(crate) fn region(p: &Policy, fam: Fam) -> Vec<Bx> {
    let valid = valid_space();
    let mut out = Vec::new();
    for b in rule_boxes(p, fam) {
        for v in &valid {
            let vb = [b[0], b[1], v[0], v[1], v[2]];
            if let Some(x) = inter(&b, &vb) {
                out.push(x);
            }
        }
    }
    out
}

/// `r \ b` as disjoint boxes (`r` and `b` overlap).
fn subtract(r: &Bx, b: &Bx, out: &mut Vec<Bx>) {
    let mut cur = *r;
    for d in 0..5 {
        if cur[d].0 < b[d].0 {
            let mut piece = cur;
            piece[d] = (cur[d].0, b[d].0 - 1);
            out.push(piece);
            cur[d].0 = b[d].0;
        }
        if cur[d].1 > b[d].1 {
            let mut piece = cur;
            piece[d] = (b[d].1 + 1, cur[d].1);
            out.push(piece);
            cur[d].1 = b[d].1;
        }
    }
}

/// Outcome of the first-match partition of a region.
pub(crate) enum Cover {
    /// Every point is won by an earlier rule; the winners' rule indices.
    Covered(BTreeSet<usize>),
    /// Some point is won by the rule itself: a box of such points.
    Reachable(Bx),
    /// The work bound was hit.
    Incomplete,
}

/// Partitions `start` by first match among `rules` (rule index, box; in priority
/// order). `budget` counts scan steps.
pub(crate) fn partition(start: &[Bx], rules: &[(usize, Bx)], budget: &mut u64) -> Cover {
    let mut winners = BTreeSet::new();
    let mut stack: Vec<(Bx, usize)> = start.iter().map(|&b| (b, 0)).collect();
    let mut pieces = Vec::new();
    while let Some((reg, from)) = stack.pop() {
        let mut hit = None;
        for (k, (_, b)) in rules.iter().enumerate().skip(from) {
            if *budget == 0 {
                return Cover::Incomplete;
            }
            *budget -= 1;
            if overlaps(&reg, b) {
                hit = Some(k);
                break;
            }
        }
        let Some(k) = hit else {
            return Cover::Reachable(reg);
        };
        winners.insert(rules[k].0);
        pieces.clear();
        subtract(&reg, &rules[k].1, &mut pieces);
        stack.extend(pieces.iter().map(|&p| (p, k + 1)));
    }
    Cover::Covered(winners)
}

/// The lowest corner of a reachable box as a flow of `direction`.
pub(crate) fn corner_flow(b: &Bx, fam: Fam, direction: Direction, protocol: u8) -> Flow {
    let addr = |v: u128| match fam {
        Fam::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Fam::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    };
    let (local, remote) = (addr(b[0].0), addr(b[1].0));
    let (a, b2) = (b[3].0, b[4].0);
    let val = |v: u128| (v != OP).then_some(v as u16);
    let (src, dst) = match direction {
        Direction::Outbound => (local, remote),
        Direction::Inbound => (remote, local),
    };
    let mut f = Flow::new(direction, src, dst, protocol);
    if is_icmp(protocol) {
        f.icmp_type = val(a).map(|v| v as u8);
        f.icmp_code = val(b2).map(|v| v as u8);
    } else if has_ports(protocol) {
        let (lp, rp) = (val(a), val(b2));
        (f.src_port, f.dst_port) = match direction {
            Direction::Outbound => (lp, rp),
            Direction::Inbound => (rp, lp),
        };
    }
    f
}

/// Per-policy analysis result.
pub(crate) struct Analysis {
    /// A flow (per direction the policy serves) that the policy itself decides, if any.
    pub(crate) witness: Vec<Flow>,
    /// Winners (rule index, direction) when the policy is fully covered.
    pub(crate) winners: BTreeSet<(usize, u8)>,
    /// True when the policy covers no packet at all.
    pub(crate) empty: bool,
    /// True if the work bound was hit.
    pub(crate) incomplete: bool,
}

impl Analysis {
    fn covered(&self) -> bool {
        !self.incomplete && self.witness.is_empty()
    }
}

fn dir_code(d: Direction) -> u8 {
    match d {
        Direction::Outbound => 0,
        Direction::Inbound => 1,
    }
}

fn dir_of(code: u8) -> Direction {
    if code == 0 {
        Direction::Outbound
    } else {
        Direction::Inbound
    }
}

/// Boxes of every policy, per family (computed once per lint run).
pub(crate) struct Geometry {
    /// `boxes[fam][i]`: the plain boxes of policy `i`.
    boxes: [Vec<Vec<Bx>>; 2],
    /// `regions[fam][i]`: the valid part of them.
    regions: [Vec<Vec<Bx>>; 2],
    /// Every policy's boxes, per family, for finding the earlier boxes a region
    /// overlaps.
    index: [BoxIndex; 2],
    /// Scan steps allowed per policy.
    bound: u64,
    /// Scan steps left for the whole run.
    total: Cell<u64>,
    /// Find earlier boxes by scanning every earlier policy instead of the index (the
    /// reference the tests compare the index with).
    scan: bool,
}

impl Geometry {
    pub(crate) fn new(policies: &[Policy]) -> Geometry {
        let per = |fam| -> Vec<Vec<Bx>> { policies.iter().map(|p| rule_boxes(p, fam)).collect() };
        let reg = |fam| policies.iter().map(|p| region(p, fam)).collect();
        let boxes = [per(Fam::V4), per(Fam::V6)];
        let index = |f: usize| {
            let mut order = 0u32;
            let mut entries = Vec::new();
            for (policy, bxs) in boxes[f].iter().enumerate() {
                for bx in bxs {
                    entries.push(Entry {
                        policy,
                        order,
                        bx: *bx,
                    });
                    order += 1;
                }
            }
            BoxIndex::new(entries)
        };
        let index = [index(0), index(1)];
        Geometry {
            boxes,
            regions: [reg(Fam::V4), reg(Fam::V6)],
            index,
            bound: WORK_BOUND,
            total: Cell::new(u64::MAX),
            scan: false,
        }
    }

    /// A policy's budget: the per-policy bound, or what is left of the total.
    fn budget(&self) -> u64 {
        self.bound.min(self.total.get())
    }

    /// Charges the steps a policy's analysis used (`start - left`) to the total.
    fn charge(&self, start: u64, left: u64) {
        self.total.set(self.total.get() - (start - left));
    }

    /// True once the whole run's budget is spent.
    fn exhausted(&self) -> bool {
        self.total.get() == 0
    }

    /// The boxes of policies before `before` that overlap any of `query` (in family
    /// `f`), in file order; `None` when `budget` ran out.
    fn earlier(
        &self,
        f: usize,
        query: &[Bx],
        before: usize,
        budget: &mut u64,
    ) -> Option<Vec<Entry>> {
        let mut found = Vec::new();
        if self.scan {
            let mut order = 0;
            for (j, bxs) in self.boxes[f].iter().enumerate().take(before) {
                for b in bxs {
                    *budget = budget.saturating_sub(1);
                    if query.iter().any(|q| overlaps(q, b)) {
                        found.push(Entry {
                            policy: j,
                            order,
                            bx: *b,
                        });
                    }
                    order += 1;
                }
            }
            return Some(found);
        }
        for q in query {
            if !self.index[f].query(q, before, budget, &mut found) {
                return None;
            }
        }
        in_file_order(&mut found);
        Some(found)
    }

    /// The policies before `i` whose boxes meet `i`'s valid regions (with `any_ports`,
    /// `i`'s boxes with their ports and ICMP fields made "any": what the fragment
    /// analysis compares), in file order, each once. When the budget runs out, the ones
    /// found so far.
    fn earlier_meeting(&self, i: usize, any_ports: bool, budget: &mut u64) -> Vec<usize> {
        if self.scan {
            *budget = budget.saturating_sub(i as u64);
            return (0..i).collect();
        }
        let mut found = Vec::new();
        'fams: for f in 0..2 {
            let query: Vec<Bx> = if any_ports {
                self.boxes[f][i]
                    .iter()
                    .map(|b| {
                        let mut q = *b;
                        q[3] = (0, OP);
                        q[4] = (0, OP);
                        q
                    })
                    .collect()
            } else {
                self.regions[f][i].clone()
            };
            for q in &query {
                if !self.index[f].query(q, i, budget, &mut found) {
                    break 'fams;
                }
            }
        }
        let mut policies: Vec<usize> = found.into_iter().map(|e| e.policy).collect();
        policies.sort_unstable();
        policies.dedup();
        policies
    }

    /// The first-match partition of policy `i`'s region `reg` (family `f`) among the
    /// earlier policies serving direction `d`: [`partition`], with the first earlier box
    /// that overlaps each piece (from a file position on) asked of the index instead of
    /// found by a scan. Same pieces in the same order, so the same answer and witness as
    /// the scan; but a policy inside an earlier, wider one costs a few index nodes,
    /// however many other earlier policies overlap it.
    fn first_match(
        &self,
        policies: &[Policy],
        f: usize,
        reg: &[Bx],
        i: usize,
        d: Direction,
        budget: &mut u64,
    ) -> Cover {
        let serves = |e: &Entry| policies[e.policy].direction.covers(d);
        if self.scan {
            let Some(found) = self.earlier(f, reg, i, budget) else {
                return Cover::Incomplete;
            };
            let rules: Vec<(usize, Bx)> = found
                .into_iter()
                .filter(serves)
                .map(|e| (e.policy, e.bx))
                .collect();
            return partition(reg, &rules, budget);
        }
        let mut winners = BTreeSet::new();
        let mut stack: Vec<(Bx, u32)> = reg.iter().map(|&b| (b, 0)).collect();
        let mut pieces = Vec::new();
        while let Some((piece, from)) = stack.pop() {
            let one = [piece];
            let mut query = OrderedQuery::new(&self.index[f], &one, i, from);
            let hit = loop {
                match query.next(budget) {
                    None => break None,
                    Some(Err(())) => return Cover::Incomplete,
                    Some(Ok(e)) if serves(&e) => break Some(e),
                    Some(Ok(_)) => {}
                }
            };
            let Some(e) = hit else {
                return Cover::Reachable(piece);
            };
            winners.insert(e.policy);
            pieces.clear();
            subtract(&piece, &e.bx, &mut pieces);
            stack.extend(pieces.iter().map(|&p| (p, e.order + 1)));
        }
        Cover::Covered(winners)
    }

    fn fi(fam: Fam) -> usize {
        match fam {
            Fam::V4 => 0,
            Fam::V6 => 1,
        }
    }

    /// First-match analysis of policy `i`.
    pub(crate) fn analyse(&self, policies: &[Policy], i: usize) -> Analysis {
        let p = &policies[i];
        let mut out = Analysis {
            witness: Vec::new(),
            winners: BTreeSet::new(),
            empty: true,
            incomplete: false,
        };
        let start = self.budget();
        let mut budget = start;
        for d in DIRS {
            if !p.direction.covers(d) {
                continue;
            }
            for fam in FAMS {
                let f = Self::fi(fam);
                let reg = &self.regions[f][i];
                if reg.is_empty() {
                    continue;
                }
                out.empty = false;
                match self.first_match(policies, f, reg, i, d, &mut budget) {
                    Cover::Covered(w) => {
                        out.winners.extend(w.into_iter().map(|j| (j, dir_code(d))));
                    }
                    Cover::Reachable(b) => {
                        let proto = b[2].0 as u8;
                        out.witness.push(corner_flow(&b, fam, d, proto));
                        break;
                    }
                    Cover::Incomplete => out.incomplete = true,
                }
            }
        }
        self.charge(start, budget);
        out
    }

    /// True if the region of `i` (valid part) is inside the boxes of `j`, ignoring
    /// directions. `None` when the work bound was hit.
    fn contained(&self, i: usize, j: usize, budget: &mut u64) -> Option<bool> {
        for fam in FAMS {
            let f = Self::fi(fam);
            let rules: Vec<(usize, Bx)> = self.boxes[f][j].iter().map(|b| (j, *b)).collect();
            match partition(&self.regions[f][i], &rules, budget) {
                Cover::Covered(_) => {}
                Cover::Reachable(_) => return Some(false),
                Cover::Incomplete => return None,
            }
        }
        Some(true)
    }

    /// A non-first fragment (OPAQUE ports) that the PROTECT policy `protect` could
    /// cover and that, among the rules matching OPAQUE ports, the later BYPASS policy
    /// `bypass` matches first: (direction, family, a box of such fragments). `None`
    /// when there is none or the work bound was hit.
    fn fragment_reaching_bypass(
        &self,
        policies: &[Policy],
        protect: usize,
        bypass: usize,
        budget: &mut u64,
    ) -> Option<(Direction, Fam, Bx)> {
        let (p, q) = (&policies[protect], &policies[bypass]);
        for d in DIRS {
            if !(p.direction.covers(d) && q.direction.covers(d)) {
                continue;
            }
            for fam in FAMS {
                let f = Self::fi(fam);
                let mut start = Vec::new();
                for bp in &self.boxes[f][protect] {
                    for bq in &self.boxes[f][bypass] {
                        let mut r = *bp;
                        r[3] = (OP, OP);
                        r[4] = (OP, OP);
                        let mut other = *bq;
                        other[3] = (OP, OP);
                        other[4] = (OP, OP);
                        if let Some(x) = inter(&r, &other) {
                            start.push(x);
                        }
                    }
                }
                if start.is_empty() {
                    continue;
                }
                let found = self.earlier(f, &start, bypass, budget)?;
                let rules: Vec<(usize, Bx)> = found
                    .into_iter()
                    .filter(|e| policies[e.policy].direction.covers(d))
                    .map(|e| (e.policy, e.bx))
                    .collect();
                match partition(&start, &rules, budget) {
                    Cover::Reachable(b) => return Some((d, fam, b)),
                    Cover::Covered(_) => {}
                    Cover::Incomplete => return None,
                }
            }
        }
        None
    }

    /// True if the valid regions of `i` and `j` share a point (ignoring directions).
    fn overlap(&self, i: usize, j: usize) -> bool {
        FAMS.iter().any(|&fam| {
            let f = Self::fi(fam);
            self.regions[f][i]
                .iter()
                .any(|r| self.regions[f][j].iter().any(|b| overlaps(r, b)))
        })
    }
}

fn dirs_of(p: &Policy) -> Vec<Direction> {
    DIRS.into_iter()
        .filter(|&d| p.direction.covers(d))
        .collect()
}

/// What a policy answers in direction `d`: action and SA.
fn answer(p: &Policy, d: Direction) -> (Action, Option<&str>) {
    (p.action, p.sa(d))
}

fn describe(p: &Policy, d: Direction) -> String {
    match p.sa(d) {
        Some(sa) => format!("{} via SA {sa:?}", p.action),
        None => p.action.to_string(),
    }
}

/// The port or ICMP selectors of a policy, as `local_port = 3389, icmp_type = 8`.
fn port_selectors(p: &Policy) -> String {
    let range = |(lo, hi): (u16, u16)| {
        if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        }
    };
    let mut parts = Vec::new();
    if let Some(r) = p.local_port {
        parts.push(format!("local_port = {}", range(r)));
    }
    if let Some(r) = p.remote_port {
        parts.push(format!("remote_port = {}", range(r)));
    }
    if let Some(t) = p.icmp_type {
        parts.push(format!("icmp_type = {t}"));
    }
    if let Some(c) = p.icmp_code {
        parts.push(format!("icmp_code = {c}"));
    }
    parts.join(", ")
}

fn is_catch_all(p: &Policy) -> bool {
    p.local.is_any()
        && p.remote.is_any()
        && p.protocol.is_none()
        && p.local_port.is_none()
        && p.remote_port.is_none()
        && p.icmp_type.is_none()
        && p.icmp_code.is_none()
}

/// At most this many policy names are listed in one message.
const MAX_NAMES: usize = 8;

fn join_capped(items: Vec<String>) -> String {
    let n = items.len();
    let mut s = items
        .into_iter()
        .take(MAX_NAMES)
        .collect::<Vec<_>>()
        .join(", ");
    if n > MAX_NAMES {
        s.push_str(&format!(" and {} more", n - MAX_NAMES));
    }
    s
}

fn names(policies: &[Policy], idx: impl IntoIterator<Item = usize>) -> String {
    let v: BTreeSet<usize> = idx.into_iter().collect();
    join_capped(
        v.iter()
            .map(|&j| format!("{:?}", policies[j].name))
            .collect(),
    )
}

impl Spd {
    /// Checks the policy for mistakes: shadowed, redundant and conflicting rules, a
    /// missing catch-all, IKE blocked by the policy itself, TCP/UDP ports 50/51,
    /// any-any BYPASS rules, BYPASS rules that non-first fragments of port-specific
    /// PROTECT traffic reach, and the SAs' algorithms and keys by RFC 8221 (all-zero
    /// keys, PROTECT policies without encryption, AES-CBC, HMAC-SHA1-96). Each
    /// [`Finding`] has a stable code (see the [`lint`](crate::spd::lint) module docs,
    /// which also describe the exact shadow analysis and its work bound). Findings come
    /// in file order of their policy, then the file-wide ones, then the SA findings.
    ///
    /// The analyses that compare policies run within [`LintBudget::DEFAULT`]: its cost
    /// grows as `n log n` on disjoint rules (an index of the policies' boxes finds the
    /// earlier rules a policy overlaps), and a hostile file ends with a `budget`
    /// finding instead of running long. [`Self::lint_with`] sets the budget.
    pub fn lint(&self) -> Vec<Finding> {
        self.lint_with(LintBudget::DEFAULT)
    }

    /// [`Self::lint`] within `budget`.
    pub fn lint_with(&self, budget: LintBudget) -> Vec<Finding> {
        self.lint_counting(budget, false).0
    }

    /// The lint and the steps it used; with `scan`, earlier boxes are found by scanning
    /// every earlier policy instead of the index (the tests' reference).
    pub(crate) fn lint_counting(&self, budget: LintBudget, scan: bool) -> (Vec<Finding>, u64) {
        let ps = self.policies();
        let mut geo = Geometry::new(ps);
        geo.bound = budget.per_policy;
        geo.total.set(budget.total);
        geo.scan = scan;
        // Policies from `cut` on are not compared with others: the budget ran out.
        let mut cut = ps.len();
        let mut flagged: Vec<bool> = Vec::with_capacity(ps.len());
        let mut out = Vec::new();
        for (i, p) in ps.iter().enumerate() {
            if cut == ps.len() && geo.exhausted() {
                cut = i;
            }
            if i < cut {
                let a = geo.analyse(ps, i);
                flagged.push(a.covered());
                self.shadow_findings(p, &a, geo.bound, &mut out);
                if !a.covered() && !a.empty && !geo.exhausted() {
                    self.conflicts(&geo, &flagged, i, &mut out);
                    if p.action == Action::Bypass && !p.has_port_or_icmp_selector() {
                        self.fragment_bypass(&geo, &flagged, i, &mut out);
                    }
                }
                if geo.exhausted() && cut == ps.len() {
                    // This policy's comparisons may have been cut short.
                    cut = i;
                }
            }
            self.cheap_findings(p, &mut out);
        }
        if cut < ps.len() {
            out.push(Finding::new(
                Severity::Info,
                "budget",
                Some(&ps[cut].name),
                format!(
                    "the lint's work budget ({} steps) ran out here: this policy and the \
                     {} after it were not fully compared with the others (shadowed, \
                     redundant, conflicting and fragment-bypass rules; the other checks \
                     ran); lint with a larger budget to finish",
                    budget.total,
                    ps.len() - cut - 1
                ),
            ));
        }
        self.ike_findings(&mut out);
        let missing: Vec<&str> = DIRS
            .into_iter()
            .filter(|&d| !ps.iter().any(|p| p.direction.covers(d) && is_catch_all(p)))
            .map(Direction::name)
            .collect();
        if !missing.is_empty() {
            out.push(Finding::new(
                Severity::Warning,
                "no-catch-all",
                None,
                format!(
                    "no final explicit rule matches everything ({}): packets no policy matches \
                     are dropped silently by the implicit DISCARD; end the file with a \
                     catch-all that says so: a [[policy]] with a name and action = \"discard\" \
                     only (omitted selectors mean \"any\", direction defaults to \"both\")",
                    missing.join(" and ")
                ),
            ));
        }
        out.extend(sa::findings(self));
        (out, budget.total - geo.total.get())
    }

    /// The findings of the first-match analysis `a` of policy `p`: `incomplete`,
    /// `shadowed` or `redundant`.
    fn shadow_findings(&self, p: &Policy, a: &Analysis, bound: u64, out: &mut Vec<Finding>) {
        let ps = self.policies();
        let name = Some(p.name.as_str());
        if a.incomplete {
            out.push(Finding::new(
                Severity::Info,
                "incomplete",
                name,
                format!(
                    "the exact shadow analysis stopped after {bound} steps; whether this \
                     policy can ever match was not decided"
                ),
            ));
        } else if a.empty {
            out.push(Finding::new(
                Severity::Error,
                "shadowed",
                name,
                "never matches any packet: its local and remote addresses share no address \
                 family (IPv4 with IPv6)",
            ));
        } else if a.covered() {
            let differ: BTreeSet<usize> = a
                .winners
                .iter()
                .filter(|&&(j, d)| answer(&ps[j], dir_of(d)) != answer(p, dir_of(d)))
                .map(|&(j, _)| j)
                .collect();
            let all = names(ps, a.winners.iter().map(|&(j, _)| j));
            if differ.is_empty() {
                out.push(Finding::new(
                    Severity::Warning,
                    "redundant",
                    name,
                    format!(
                        "never matches: earlier policies {all} cover all of its traffic and \
                         decide the same ({}); it can be removed",
                        describe(p, dirs_of(p)[0])
                    ),
                ));
            } else {
                let detail = join_capped(
                    differ
                        .iter()
                        .map(|&j| {
                            let d = a
                                .winners
                                .iter()
                                .find(|w| w.0 == j)
                                .map_or(Direction::Outbound, |w| dir_of(w.1));
                            format!("{:?} ({})", ps[j].name, describe(&ps[j], d))
                        })
                        .collect(),
                );
                out.push(Finding::new(
                    Severity::Error,
                    "shadowed",
                    name,
                    format!(
                        "never matches: earlier policies {all} cover all of its traffic, and \
                         {detail} decide otherwise than its {}",
                        describe(p, dirs_of(p)[0])
                    ),
                ));
            }
        }
    }

    /// The checks of one policy that look at it alone (one pass over the file).
    fn cheap_findings(&self, p: &Policy, out: &mut Vec<Finding>) {
        let name = Some(p.name.as_str());
        out.extend(ports::protocol_number_as_port(p));
        if p.action == Action::Bypass && is_catch_all(p) {
            out.push(Finding::new(
                Severity::Warning,
                "any-any-bypass",
                name,
                "this BYPASS matches any address, protocol and port: everything it \
                 reaches goes through in the clear",
            ));
        }
    }

    /// The `fragment-bypass` finding of the BYPASS policy `i` (ports "any").
    fn fragment_bypass(&self, geo: &Geometry, flagged: &[bool], i: usize, out: &mut Vec<Finding>) {
        let ps = self.policies();
        let start = geo.budget();
        let mut budget = start;
        let mut protects = Vec::new();
        let mut witness = None;
        // Earlier policies whose addresses and protocol meet this BYPASS's (any ports).
        let candidates = geo.earlier_meeting(i, true, &mut budget);
        for j in candidates {
            let p = &ps[j];
            if flagged[j] || p.action != Action::Protect || !p.has_port_or_icmp_selector() {
                continue;
            }
            if let Some(w) = geo.fragment_reaching_bypass(ps, j, i, &mut budget) {
                protects.push(j);
                witness.get_or_insert(w);
            }
        }
        geo.charge(start, budget);
        let Some((d, fam, b)) = witness else {
            return;
        };
        let first = &ps[protects[0]];
        let example = corner_flow(&b, fam, d, b[2].0 as u8);
        let selectors = port_selectors(first);
        out.push(Finding::new(
            Severity::Warning,
            "fragment-bypass",
            Some(&ps[i].name),
            format!(
                "this BYPASS (ports \"any\") follows the PROTECT {} ({} {selectors}) for \
                 overlapping addresses and protocol; non-first fragments carry no ports, so \
                 a later fragment of that protected traffic cannot be told from this \
                 BYPASS's (e.g. {} {} -> {} {} fragments). A gateway without fragment state \
                 bypasses such fragments in the clear (RFC 4301 §7.4); this one remembers \
                 first fragments and drops the later fragments it cannot place \
                 (fragment_unresolved), so out-of-order fragments of this BYPASS's traffic \
                 there are lost. To fix it, protect that protocol between those addresses \
                 with ports \"any\" (RFC 4301 §7.1), or keep this BYPASS off those \
                 addresses and protocol (narrow it, or put a port-\"any\" rule for them \
                 before it), or reassemble fragments before they reach the gateway",
                names(ps, protects.iter().copied()),
                crate::spd::selector::protocol_name(first.protocol),
                example.direction.name(),
                example.src,
                example.dst,
                crate::spd::selector::protocol_name(Some(example.protocol)),
            ),
        ));
    }

    fn conflicts(&self, geo: &Geometry, flagged: &[bool], i: usize, out: &mut Vec<Finding>) {
        let ps = self.policies();
        let p = &ps[i];
        let start = geo.budget();
        let mut budget = start;
        for j in geo.earlier_meeting(i, false, &mut budget) {
            let q = &ps[j];
            if flagged[j] {
                continue;
            }
            let shared: Vec<Direction> = dirs_of(p)
                .into_iter()
                .filter(|&d| q.direction.covers(d))
                .collect();
            if shared.is_empty()
                || shared.iter().all(|&d| answer(p, d) == answer(q, d))
                || !geo.overlap(i, j)
            {
                continue;
            }
            let dirs_in =
                |a: &Policy, b: &Policy| dirs_of(a).iter().all(|&d| b.direction.covers(d));
            let i_in_j = dirs_in(p, q) && geo.contained(i, j, &mut budget) != Some(false);
            let j_in_i = dirs_in(q, p) && geo.contained(j, i, &mut budget) != Some(false);
            if i_in_j || j_in_i {
                continue;
            }
            let d = shared[0];
            out.push(Finding::new(
                Severity::Warning,
                "conflict",
                Some(&p.name),
                format!(
                    "partly overlaps the earlier policy {:?} ({}) but decides otherwise ({}); \
                     for the traffic both match, the order decides ({:?} wins)",
                    q.name,
                    describe(q, d),
                    describe(p, d),
                    q.name
                ),
            ));
        }
        geo.charge(start, budget);
    }

    /// Gateway pairs (local, remote) from the SAs' tunnel endpoints, with "some SA of
    /// the pair uses UDP encapsulation". Inbound SAs without tunnel endpoints take the
    /// swapped endpoints of the outbound SA they are paired with in a policy.
    pub(crate) fn gateway_pairs(&self) -> BTreeMap<(IpAddr, IpAddr), GatewayPair> {
        let mut pairs: BTreeMap<(IpAddr, IpAddr), GatewayPair> = BTreeMap::new();
        let by_name: BTreeMap<&str, &crate::sa_file::NamedSa> =
            self.sas.iter().map(|s| (s.name.as_str(), s)).collect();
        let endpoints = |name: &str| -> Option<(IpAddr, IpAddr)> {
            let sa = by_name.get(name)?;
            let (s, d) = sa.config.tunnel?;
            Some(match sa.config.direction {
                Direction::Outbound => (s, d),
                Direction::Inbound => (d, s),
            })
        };
        for sa in &self.sas {
            let pair = endpoints(&sa.name).or_else(|| {
                // An inbound SA without tunnel endpoints: its outbound partner's.
                self.policies()
                    .iter()
                    .filter(|p| p.sa_in.as_deref() == Some(sa.name.as_str()))
                    .find_map(|p| endpoints(p.sa_out.as_deref()?))
            });
            let Some(pair) = pair else { continue };
            let e = pairs.entry(pair).or_default();
            e.sas.push(sa.name.clone());
            let esp = match sa.config.udp_encap {
                Some((_, dport)) => EspCarrier::Udp(dport),
                None => EspCarrier::Esp,
            };
            if sa.config.udp_encap.is_some() {
                e.nat_t = true;
            }
            match sa.config.direction {
                Direction::Outbound => e.outbound.push((sa.name.clone(), esp)),
                Direction::Inbound => e.inbound.push((sa.name.clone(), esp)),
            }
        }
        pairs
    }

    fn ike_findings(&self, out: &mut Vec<Finding>) {
        let mut seen = BTreeSet::new();
        for ((local, remote), pair) in self.gateway_pairs() {
            let mut ports = vec![500u16];
            if pair.nat_t {
                ports.push(4500);
            }
            for port in ports {
                for d in DIRS {
                    let (src, dst) = match d {
                        Direction::Outbound => (local, remote),
                        Direction::Inbound => (remote, local),
                    };
                    let flow = Flow::new(d, src, dst, 17).ports(port, port);
                    let dec = self.lookup(&flow);
                    if dec.action == Action::Bypass {
                        continue;
                    }
                    let what = match (dec.action, dec.policy) {
                        (Action::Protect, _) => "would be encrypted (PROTECT), but IKE must run \
                                                 in the clear to set up the SAs"
                            .to_string(),
                        (_, Some(_)) => "is discarded".to_string(),
                        (_, None) => "matches no policy and is dropped by the implicit \
                                      DISCARD"
                            .to_string(),
                    };
                    if !seen.insert((
                        dec.policy.map(str::to_owned),
                        port,
                        dir_code(d),
                        local,
                        remote,
                    )) {
                        continue;
                    }
                    out.push(Finding::new(
                        Severity::Error,
                        "ike-blocked",
                        dec.policy,
                        format!(
                            "{} IKE {src} -> {dst} udp/{port}{} {what}; add a BYPASS for UDP \
                             {port} between the gateways before it",
                            d.name(),
                            if port == 4500 { " (NAT-T)" } else { "" },
                        ),
                    ));
                }
            }
        }
    }
}

/// How ESP travels for one SA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EspCarrier {
    /// As IP protocol 50.
    Esp,
    /// Inside UDP to this destination port (NAT-T, RFC 3948).
    Udp(u16),
}

/// The SAs between one pair of gateways.
#[derive(Clone, Debug, Default)]
pub(crate) struct GatewayPair {
    pub(crate) sas: Vec<String>,
    pub(crate) nat_t: bool,
    pub(crate) outbound: Vec<(String, EspCarrier)>,
    pub(crate) inbound: Vec<(String, EspCarrier)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
[[policy]]
name = "a"
direction = "outbound"
local = "10.0.0.0/25"
action = "discard"
[[policy]]
name = "b"
direction = "outbound"
local = "10.0.0.128/25"
protocol = "tcp"
action = "discard"
[[policy]]
name = "c"
direction = "outbound"
local = "10.0.0.128/25"
action = "bypass"
[[policy]]
name = "d"
direction = "outbound"
local = "10.0.0.0/24"
action = "discard"
"#;

    #[test]
    fn work_bound_reports_incomplete_instead_of_guessing() {
        let spd = Spd::from_toml(TEXT).unwrap();
        let full = spd.lint();
        assert!(
            full.iter()
                .any(|f| f.code == "shadowed" && f.policy.as_deref() == Some("d"))
        );
        let cut = spd.lint_with(LintBudget {
            per_policy: 3,
            total: u64::MAX,
        });
        let d: Vec<&Finding> = cut
            .iter()
            .filter(|f| f.policy.as_deref() == Some("d"))
            .collect();
        assert_eq!(d.len(), 1, "{cut:?}");
        assert_eq!((d[0].code, d[0].severity), ("incomplete", Severity::Info));
    }

    /// `n` policies that no two overlap (distinct local addresses), PROTECT and BYPASS
    /// alternating, and a final DISCARD.
    fn disjoint(n: usize) -> Spd {
        let mut text = String::from(
            "[[sa]]\nname = \"out\"\nspi = 0x100\ndirection = \"outbound\"\nmode = \"tunnel\"\n\
             cipher = \"aes-128-gcm\"\nkey = \"00112233445566778899aabbccddeeff01020304\"\n\
             tunnel_src = \"192.0.2.1\"\ntunnel_dst = \"192.0.2.2\"\n",
        );
        for i in 0..n {
            let action = if i % 2 == 0 {
                "action = \"protect\"\nsa = \"out\""
            } else {
                "action = \"bypass\""
            };
            text.push_str(&format!(
                "[[policy]]\nname = \"p{i}\"\ndirection = \"outbound\"\nlocal = \"10.{}.{}.{}\"\n\
                 remote = \"172.16.0.0/12\"\nprotocol = \"tcp\"\nlocal_port = {}\n{action}\n",
                (i >> 16) & 255,
                (i >> 8) & 255,
                i & 255,
                1000 + i % 1000
            ));
        }
        text.push_str(
            "[[policy]]\nname = \"deny\"\ndirection = \"outbound\"\naction = \"discard\"\n",
        );
        Spd::from_toml(&text).unwrap()
    }

    /// The work of the comparing analyses grows as n log n on disjoint rules, where
    /// comparing every pair of policies grows as n²: counted in steps, not timed.
    #[test]
    fn work_on_disjoint_rules_grows_as_n_log_n() {
        let unlimited = LintBudget {
            per_policy: u64::MAX,
            total: u64::MAX,
        };
        let (small, large) = (disjoint(500), disjoint(4000));
        let (f_small, w_small) = small.lint_counting(unlimited, false);
        let (f_large, w_large) = large.lint_counting(unlimited, false);
        assert!(f_small.iter().chain(&f_large).all(|f| f.code != "budget"));
        // 8 times the rules: n log n gives about 8 * log(4000) / log(500) = 10.7 times
        // the work, n² 64 times.
        assert!(
            w_large < 14 * w_small,
            "work {w_small} for 500 rules, {w_large} for 4000"
        );
        // The pairwise scan the index replaced: quadratic.
        let (_, s_small) = small.lint_counting(unlimited, true);
        let (_, s_large) = large.lint_counting(unlimited, true);
        assert!(s_large > 40 * s_small.max(1) || s_small == 0);
    }

    /// A wide rule first, then `n` rules inside it, each overlapping up to 2,000 earlier
    /// ones (port ranges sliding by one): the first earlier box each meets (the wide
    /// rule) covers it, so the work grows as n log n, where collecting every overlapping
    /// earlier box grew as n * min(n, 2000).
    #[test]
    fn rules_inside_an_earlier_wide_one_cost_n_log_n() {
        let unlimited = LintBudget {
            per_policy: u64::MAX,
            total: u64::MAX,
        };
        let under_wide = |n: usize| {
            let mut text = String::from(
                "[[policy]]\nname = \"wide\"\ndirection = \"both\"\nlocal = \"10.0.0.0/8\"\n\
                 action = \"discard\"\n",
            );
            for i in 0..n {
                text.push_str(&format!(
                    "[[policy]]\nname = \"h{i}\"\ndirection = \"both\"\nlocal = \"10.0.0.0/16\"\n\
                     protocol = \"tcp\"\nlocal_port = \"{}-{}\"\naction = \"bypass\"\n",
                    i + 1,
                    i + 2000
                ));
            }
            Spd::from_toml(&text).unwrap()
        };
        let (small, large) = (under_wide(500), under_wide(4000));
        let (f_small, w_small) = small.lint_counting(unlimited, false);
        let (f_large, w_large) = large.lint_counting(unlimited, false);
        let shadowed = |f: &[Finding]| f.iter().filter(|f| f.code == "shadowed").count();
        assert_eq!((shadowed(&f_small), shadowed(&f_large)), (500, 4000));
        assert!(
            w_large < 14 * w_small,
            "work {w_small} for 500 rules, {w_large} for 4000"
        );
    }

    /// A budget too small for a file ends the comparing analyses with a `budget`
    /// finding that names where they stopped; the other checks still run.
    #[test]
    fn a_spent_budget_says_where_the_lint_stopped() {
        let spd = disjoint(300);
        let full = spd.lint();
        assert!(full.iter().all(|f| f.code != "budget"));
        let cut = spd.lint_with(LintBudget::with_total(2_000));
        let b: Vec<&Finding> = cut.iter().filter(|f| f.code == "budget").collect();
        assert_eq!(b.len(), 1, "{cut:?}");
        assert_eq!(b[0].severity, Severity::Info);
        assert!(b[0].message.contains("2000 steps"), "{}", b[0].message);
        let stopped = b[0].policy.as_deref().unwrap();
        assert!(stopped.starts_with('p') && stopped != "p0", "{stopped}");
        // The file-wide checks ran all the same.
        assert!(cut.iter().any(|f| f.code == "ike-blocked"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// The index finds exactly the earlier boxes the pairwise scan finds: both
        /// lints give the same findings, on files whose rules overlap in every way.
        #[test]
        fn the_index_changes_no_finding(
            rules in proptest::collection::vec(
                (0usize..7, 0usize..5, 0usize..4, 0usize..4, 0usize..3, 0usize..3),
                1..14,
            )
        ) {
            const LOCAL: [&str; 7] = [
                "any", "10.0.0.0/24", "10.0.0.0/25", "10.0.0.128/25", "10.0.1.0/24",
                "10.0.0.5", "2001:db8::/64",
            ];
            const REMOTE: [&str; 5] =
                ["any", "10.1.0.0/16", "10.1.2.0/24", "192.0.2.2", "2001:db8:1::/64"];
            const PROTO: [&str; 4] = ["any", "tcp", "udp", "icmp"];
            const DIR: [&str; 3] = ["both", "outbound", "inbound"];
            let mut text = String::from(
                "[[sa]]\nname = \"o\"\nspi = 0x100\ndirection = \"outbound\"\nmode = \"tunnel\"\n\
                 cipher = \"aes-128-gcm\"\nkey = \"00112233445566778899aabbccddeeff01020304\"\n\
                 tunnel_src = \"192.0.2.1\"\ntunnel_dst = \"192.0.2.2\"\n\
                 [[sa]]\nname = \"i\"\nspi = 0x101\ndirection = \"inbound\"\nmode = \"tunnel\"\n\
                 cipher = \"aes-128-gcm\"\nkey = \"a0112233445566778899aabbccddeeff01020304\"\n",
            );
            for (n, &(l, r, pr, port, act, dir)) in rules.iter().enumerate() {
                text.push_str(&format!(
                    "[[policy]]\nname = \"r{n}\"\ndirection = \"{}\"\nlocal = \"{}\"\n\
                     remote = \"{}\"\nprotocol = \"{}\"\n",
                    DIR[dir], LOCAL[l], REMOTE[r], PROTO[pr]
                ));
                match (PROTO[pr], port) {
                    ("tcp" | "udp", 1) => text.push_str("local_port = 80\n"),
                    ("tcp" | "udp", 2) => text.push_str("remote_port = \"1000-2000\"\n"),
                    ("tcp" | "udp", 3) => text.push_str("local_port = \"1-1024\"\n"),
                    ("icmp", 1 | 2) => text.push_str("icmp_type = 8\n"),
                    _ => {}
                }
                let sa = match DIR[dir] {
                    "both" => "[\"o\", \"i\"]",
                    "outbound" => "\"o\"",
                    _ => "\"i\"",
                };
                text.push_str(match act {
                    0 => "action = \"bypass\"\n",
                    1 => "action = \"discard\"\n",
                    _ => "",
                });
                if act == 2 {
                    text.push_str(&format!("action = \"protect\"\nsa = {sa}\n"));
                }
            }
            let spd = Spd::from_toml(&text).unwrap();
            let unlimited = LintBudget { per_policy: u64::MAX, total: u64::MAX };
            let with_index = spd.lint_counting(unlimited, false).0;
            let with_scan = spd.lint_counting(unlimited, true).0;
            proptest::prop_assert_eq!(with_index, with_scan, "{}", text);
        }
    }

    #[test]
    fn subtract_gives_disjoint_cover() {
        let r: Bx = [(0, 9), (0, 9), (6, 6), (0, 9), (0, 9)];
        let b: Bx = [(3, 5), (0, 20), (6, 6), (2, 2), (4, 30)];
        let mut pieces = Vec::new();
        subtract(&r, &b, &mut pieces);
        let inside = |x: &Bx, p: [u128; 5]| x.iter().zip(p).all(|(iv, v)| iv.0 <= v && v <= iv.1);
        for l in 0..10 {
            for a in 0..10 {
                for c in 0..10 {
                    let p = [l, 0, 6, a, c];
                    let n = pieces.iter().filter(|x| inside(x, p)).count();
                    assert_eq!(n, usize::from(!inside(&b, p)), "{p:?}");
                }
            }
        }
    }
}
