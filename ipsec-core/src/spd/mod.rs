//! The Security Policy Database (RFC 4301 §4.4.1): ordered policies with selectors,
//! matched per packet, answering PROTECT (with which SA), BYPASS or DISCARD.
//!
//! # Semantics
//!
//! * Policies are evaluated in file order; the **first match wins**; no match is
//!   DISCARD (a [`Decision`] with no policy).
//! * For an outbound packet `local` is its source and `remote` its destination; for an
//!   inbound packet the reverse. `direction = "both"` is a mirrored pair: the same
//!   `local`/`remote` (and `local_port`/`remote_port`) serve both directions, with the
//!   packet's source and destination swapped for inbound. It is the default: a policy
//!   without `direction` is `"both"` (as Windows IPsec filters are mirrored by
//!   default), so an administrator's final deny-all needs only a `name` and
//!   `action = "discard"`, the rule the `no-catch-all` lint finding suggests.
//! * Omitted selectors mean "any". Ports only exist for TCP, UDP and SCTP, ICMP type and
//!   code only for ICMP and ICMPv6 (they are not swapped for inbound).
//! * A flow whose ports (or ICMP type and code) are unknown — OPAQUE, RFC 4301
//!   §4.4.1.1 — *matches* only policies whose port selectors are "any"
//!   ([`Spd::lookup`]). That is not how a **non-first fragment** is decided: see
//!   below and [`Flow`].
//! * A PROTECT policy names one SA per direction it serves; a lookup answers with the SA
//!   of its own direction.
//!
//! # The classifier, and why
//!
//! [`Spd::lookup`] uses a compiled classifier per direction and address family:
//! **partitioned interval stabbing** (module `pss`). The five dimensions (source,
//! destination, protocol, source port or ICMP type, destination port or ICMP code) are
//! ranked by selectivity in the rule set at hand; each rule joins the group of the
//! best-ranked dimension it does not leave as "any" (tuple-space search's idea, with
//! ranges instead of masks, and typically two or three groups: "remote is specific",
//! "only local is specific", the catch-all). A group's dimension is cut into elementary
//! intervals at the rule boundaries; each interval lists, in priority order, the rules
//! of the group covering it: with their bounding boxes inline in a small classifier, as
//! 16-byte filter boxes (the box mapped to 16 bits a dimension, compared with the key's
//! in one vector instruction) in a large one, where long lists are also split in parts
//! by protocol class (TCP, UDP, ICMP, the rest: the protocols many rules name), so that
//! a key scans only the rules that can match its protocol. A lookup finds its interval
//! in each group through a bucket table and checks a few candidates; the earliest match
//! over the groups wins, and a candidate or group that comes after the best answer so
//! far is not looked at. A classifier of at most 16 rules (a gateway's usual SPD) is one
//! group without an index: its rules' boxes are checked in order, which costs less than
//! finding an interval per group at that size. Each list holds every rule of its group
//! whose range covers the point and the full check decides, so the answer is the naive
//! scan's by construction;
//! [`Spd::lookup_linear`] is that scan, and the property tests and the
//! `spd_differential` fuzz target compare them (and the two alternatives below).
//!
//! Chosen by measurement. Three structures were built and are kept (hidden,
//! `EngineKind`) so the comparison can be rerun: `cargo bench -p ipsec-benches --bench
//! spd`. Realistic rule mix (64 site prefixes as `local`, /24 and /32 remotes out of
//! 4,096 networks, 10% remote "any", TCP/UDP/ICMP/any, single ports and port ranges,
//! protect/bypass/discard, both/outbound/inbound, a final catch-all); 1,024 flows, half
//! built inside a random rule, half random (most reach the catch-all: the naive scan's
//! worst case). Nanoseconds per lookup, 2-vCPU VM, release profile:
//!
//! | rules   | partitioned (default) | cached | bit vector | decision tree | naive scan | speed-up vs naive |
//! |--------:|----------:|------:|--------:|--------:|----------:|------:|
//! | 10      | 19.7      | 12.7  | 26.5    | 48      | 31.3      | 1.6×  |
//! | 100     | 37.2      | 14.2  | 43.6    | 63      | 250       | 6.7×  |
//! | 1,000   | 62.7      | 14.3  | 64.9    | 98      | 2,533     | 40×   |
//! | 10,000  | 85.9      | 20.0  | 153.8   | 203     | 43,681    | 509×  |
//! | 100,000 | 192.5     | 13.8  | 316     | 72,000  | not run (~440,000 by extrapolation) | ~2,300× (extrapolated) |
//!
//! (Since the scan of classifiers of at most 16 rules, on a Xeon guest: 10 rules 14.9
//! -> 14.1 ns in the same bench, `spd_lookup/compiled/10`.)
//!
//! Compile time and memory of the compiled structure (both directions, both families):
//!
//! | rules   | partitioned: compile | bytes/rule | bit vector: compile | bytes/rule |
//! |--------:|------:|------:|------:|-------:|
//! | 1,000   | 1.2 ms | 641  | 1.4 ms | 511   |
//! | 10,000  | 18 ms (62 ms with TOML parsing) | 679 | 44-60 ms | 2,756 |
//! | 100,000 | 300 ms (770 ms with parsing) | 1,131 | 4.8-5.3 s | 12,440 |
//!
//! * The **bit vector** (Lakshman & Stiliadis 1998, with an aggregate bitmap) is exact
//!   for ranges and simple, but a lookup ANDs N/64 words per dimension and its memory is
//!   O(N²): 1.2 GB and 5 s to compile at 100,000 rules.
//! * The **decision tree** (HiCuts with first-match pruning) is fast to walk, but
//!   the wildcard rules real policies are full of get copied into many leaves; with a
//!   memory budget it degrades to long leaves (72 µs at 100,000 rules), without one it
//!   runs out of memory. Its speed depends on tuning heuristics.
//! * **Partitioned stabbing** has memory linear in practice (one list entry per rule
//!   and interval it covers; identical lists shared), compiles in O(N log N) plus the
//!   lists, and its cost is a binary search per group plus the candidates at the point.
//!   What grows with N is the length of the lists: at 100,000 rules over 4,096 remote
//!   networks ~15 rules share each remote /24. Its weak spot is deep nesting in the index
//!   dimension (a /8 covering thousands of /24s is copied into each of their intervals);
//!   a global budget of copies turns a group that would exceed it into a plain ordered
//!   list, so a hostile file costs speed, never unbounded memory.
//!
//! # Bursts
//!
//! [`Spd::lookup_burst`] answers many flows in one call, 32 at a time, as DPDK's
//! `rte_acl_classify` does. A lookup of one flow is a chain of dependent memory reads
//! (the bucket of the index, the starts in it, the interval's list, its candidates), and
//! at 100,000 rules the lists and candidates are mostly cache misses; the burst
//! walks the flows of a burst through each group together, one stage at a time, and
//! loads what the next stage reads for every flow before it is used, so the misses of
//! 32 flows are in flight at once. Each flow still gets exactly its own lookup's
//! answer: the same groups, the same interval, the same candidates, one shared scan.
//! Smaller classifiers (under 16 MiB) answer one flow at a time, which is faster there.
//! What remains at 100,000 rules is the length of the lists: the group of rules whose
//! remote is "any" is indexed by the local address, and each point of a local /24 is
//! covered by its site's /16 rules too (in the benchmark's rule set, 66 candidates per
//! interval on average), which the scan checks one by one.
//!
//! # Fragments (RFC 4301 §7)
//!
//! A non-first fragment carries no transport header, so a port-specific policy may or
//! may not cover it. [`Spd::lookup_non_first_fragment`] gives the stateless
//! conservative answer: take the first policy that *could* match the fragment, with
//! its port and ICMP selectors treated as wildcards; if that policy does not look at
//! ports or ICMP fields it certainly matches, and decides
//! ([`FragmentDecision::Decided`]); otherwise the fragment may or may not be its
//! traffic and the answer is [`FragmentDecision::Unresolved`] (the data path drops it
//! as `fragment_unresolved`). [`Spd::lookup_packet`], the
//! [`Gateway`](crate::Gateway) (for fragments whose first fragment it has not seen),
//! the policy tests ([`Spd::run_cases`]) and the command-line tools all answer
//! fragments this way. First fragments pass [`Fragment::check_transport_header`]
//! (tiny and overlapping fragments, RFC 1858 and RFC 3128) and are then looked up like
//! whole packets.
//!
//! The query is answered from a second partitioned classifier per direction and
//! family, built at load time over the same rules with their port and ICMP selectors
//! widened to "any" (only when some rule has such selectors; otherwise the main
//! classifier answers it as is), and a per-rule flag "looks at ports or ICMP fields".
//! An attacker decides how many non-first fragments arrive, so the query costs what a
//! lookup costs, never a scan of the rules ([`Spd::lookup_non_first_fragment_linear`]
//! is that scan, the reference the property tests and the fuzz target compare with).
//! Measured with `cargo bench -p ipsec-benches --bench spd` (same rule sets and flows as
//! the table above, the flows' ports taken away; ns per query). The machine was a
//! 2-vCPU VM shared with other builds, so the absolute figures run about twice the
//! idle ones above and vary by ±30% between runs: compare within a row.
//!
//! | rules   | lookup | non-first fragment | fragment, naive scan | compiled bytes per rule: without / with the fragment index | compile (thread CPU): without / with |
//! |--------:|-------:|-------------------:|---------------------:|------:|------:|
//! | 10      | 68     | 66                 | 55                   | 778 / 1,473   | |
//! | 100     | 103    | 84                 | 334                  | 646 / 1,216   | |
//! | 1,000   | 88     | 104                | 4,930                | 641 / 1,202   | |
//! | 10,000  | 171    | 185                | 44,900               | 679 / 1,243   | 12-15 ms / 36-40 ms |
//! | 100,000 | 527    | 334                | not run              | 1,131 / 1,904 | 0.30 s / 0.65 s |
//!
//! So a non-first fragment costs about what a lookup costs, whatever the rule count;
//! the price is paid at load time: the index roughly doubles the compiled memory and
//! compile time of policies with port or ICMP selectors. Rules whose widened selectors
//! repeat an earlier rule's (they differ only in ports) are left out of it.
//!
//! An IPv6 non-first fragment whose Fragment header names an extension header
//! (Destination Options, Routing, Hop-by-Hop, Fragment) as its next header does not
//! even show its upper-layer protocol: its answer is unresolved unless the gateway saw
//! its first fragment.
//!
//! # Live changes
//!
//! A live [`Gateway`](crate::Gateway) changes its SPD one policy at a time
//! (`install_policy`, `remove_policy`, `replace_policy`) while packets flow, and each
//! call must be cheap at 100,000 policies (issue 12: under 50 µs), where compiling the
//! classifiers takes a third of a second. So a change compiles nothing: the compiled
//! classifiers stay as they are, beside a small record of the changes since
//! (`Delta`):
//!
//! * a **removed** policy is masked out: a bit per rule of each direction's table,
//!   which the partitioned lookup checks before it accepts a candidate
//!   (`Partitioned::lookup_where`). Every list holds every rule of its group that
//!   covers the point, in order, so skipping a masked rule goes on to the next one
//!   that matches: the first match of the compiled rules *without* the removed ones,
//!   exactly (groups of rules that match everything keep all their rules for this);
//! * an **added** policy joins an ordered list, each with its *anchor*: the compiled
//!   policy it comes before. A lookup takes the compiled answer and then the added
//!   policies anchored at or before it, in order; the first of those that matches
//!   comes before the compiled answer and wins, or the compiled answer stands. A
//!   replaced policy is a removal and an addition in its place.
//!
//! Positions in the policy order (`Decision::policy_index`) are computed from the
//! compiled position, the removed positions before it and the added policies anchored
//! before it (binary searches in the short lists). Policies are found by name through
//! a map; the SA-name lists hold references (a compiled position, or an added policy's
//! id) kept in policy order. [`Spd::policies`] copies the policies into order on its
//! first call after a change.
//!
//! The non-first fragment index leaves out rules whose widened selectors repeat an
//! earlier rule's; it keeps those chains, and when the first rule of one is removed the
//! next one of the chain that is not joins a short list checked after the index
//! answers.
//!
//! **When the classifiers are compiled again.** A change costs a few microseconds and
//! no compile, until 128 changes are pending (`DELTA_MAX`): the change that would make
//! it 129 compiles the whole SPD on the spot (O(n log n), 0.3 s at 100,000 policies:
//! amortised over 128 changes, ~2.5 ms each). A gateway should not get there: from 32
//! changes pending (`REBUILD_DUE`), [`Gateway::policy_rebuild_due`] is true and the
//! caller compiles off the packet thread with the batch path (`edit_policies`,
//! `compile` on another thread, `commit_policies`, an O(1) swap), or on the spot with
//! [`Gateway::rebuild_policies`]. Until then, a lookup whose compiled answer comes
//! after the anchor of added policies checks those policies one by one (the
//! reference [`Policy::matches`]), so a lookup costs up to about 10-20 ns more per
//! pending addition it reaches; removals cost a bit test per candidate.
//!
//! [`Gateway::policy_rebuild_due`]: crate::Gateway::policy_rebuild_due
//! [`Gateway::rebuild_policies`]: crate::Gateway::rebuild_policies
//!
//! # Flow cache
//!
//! [`SpdCache`] is the optional RFC 4301 SPD cache: an exact-match, direct-mapped table
//! of flows to decisions, owned by the caller. It borrows the [`Spd`], and the `Spd` is
//! immutable once built: a cache can never answer from a stale policy (a new policy set
//! is a new `Spd`, and the borrow checker makes the old caches go with the old one).

mod bv;
pub(crate) mod cache;
pub mod cases;
pub mod firewall;
mod flow;
mod huge;
pub mod lint;
mod lint_index;
pub(crate) mod parse;
mod prefetch;
mod pss;
pub mod selector;
mod tree;

pub use cache::SpdCache;
pub use cases::{CaseOutcome, CaseReport, Probe};
pub use firewall::Opening;
pub use flow::{Flow, Fragment};
pub use lint::{Finding, LintBudget, Severity, lint_toml, lint_toml_with};
pub use selector::AddrSet;

use crate::error::{ConfigError, Error, FragmentError};
use crate::sa::Direction;
use crate::sa_file::NamedSa;
use bv::{Classifier, Key, OPAQUE, RuleRef};
use core::fmt;
use pss::{Layout, Partitioned};
use selector::{has_ports, is_icmp};
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use tree::{TRule, Tree};

/// What the SPD does with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// Apply IPsec with the policy's SA.
    Protect,
    /// Let the packet through in the clear.
    Bypass,
    /// Drop the packet.
    Discard,
}

impl Action {
    /// `"protect"`, `"bypass"` or `"discard"`.
    pub const fn name(self) -> &'static str {
        match self {
            Action::Protect => "protect",
            Action::Bypass => "bypass",
            Action::Discard => "discard",
        }
    }

    /// Parses `"protect"`, `"bypass"` or `"discard"` (case-insensitive).
    pub fn from_name(name: &str) -> Result<Action, String> {
        match name.to_ascii_lowercase().as_str() {
            "protect" => Ok(Action::Protect),
            "bypass" => Ok(Action::Bypass),
            "discard" => Ok(Action::Discard),
            _ => Err(format!(
                "expected \"protect\", \"bypass\" or \"discard\", got {name:?}"
            )),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The directions a policy applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PolicyDirection {
    /// Outbound packets only.
    Outbound,
    /// Inbound packets only.
    Inbound,
    /// Both: a mirrored pair of policies.
    Both,
}

impl PolicyDirection {
    /// `"outbound"`, `"inbound"` or `"both"`.
    pub const fn name(self) -> &'static str {
        match self {
            PolicyDirection::Outbound => "outbound",
            PolicyDirection::Inbound => "inbound",
            PolicyDirection::Both => "both",
        }
    }

    /// Parses `"outbound"`, `"inbound"` or `"both"` (case-insensitive).
    pub fn from_name(name: &str) -> Result<PolicyDirection, String> {
        match name.to_ascii_lowercase().as_str() {
            "outbound" => Ok(PolicyDirection::Outbound),
            "inbound" => Ok(PolicyDirection::Inbound),
            "both" => Ok(PolicyDirection::Both),
            _ => Err(format!(
                "expected \"outbound\", \"inbound\" or \"both\", got {name:?}"
            )),
        }
    }

    /// True if packets of `direction` are subject to this policy.
    pub const fn covers(self, direction: Direction) -> bool {
        matches!(
            (self, direction),
            (PolicyDirection::Both, _)
                | (PolicyDirection::Outbound, Direction::Outbound)
                | (PolicyDirection::Inbound, Direction::Inbound)
        )
    }
}

/// One `[[policy]]` entry, parsed and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub(crate) name: String,
    pub(crate) direction: PolicyDirection,
    pub(crate) local: AddrSet,
    pub(crate) remote: AddrSet,
    pub(crate) protocol: Option<u8>,
    pub(crate) local_port: Option<(u16, u16)>,
    pub(crate) remote_port: Option<(u16, u16)>,
    pub(crate) icmp_type: Option<u8>,
    pub(crate) icmp_code: Option<u8>,
    pub(crate) action: Action,
    pub(crate) sa_out: Option<String>,
    pub(crate) sa_in: Option<String>,
}

/// A port selector: an inclusive range, or `None` for any port.
type PortSel = Option<(u16, u16)>;

impl Policy {
    /// Parses one policy on its own: `text` is the body of one `[[policy]]` table of a
    /// policy file (its `key = value` lines), or a document holding exactly one
    /// `[[policy]]` table. The SAs it names are taken by their place (`sa = "out"`,
    /// `sa = "in"`, or `sa = ["out", "in"]` for `direction = "both"`) and checked
    /// where it is installed ([`Gateway::install_parsed_policy`]): parse on any
    /// thread, install on the gateway's without paying for the parse there.
    ///
    /// Errors name the policy and the key (`policy "web": remote_port: ...`); no piece
    /// of a secret written into the text is echoed.
    ///
    /// [`Gateway::install_parsed_policy`]: crate::Gateway::install_parsed_policy
    pub fn from_toml(text: &str) -> Result<Policy, ConfigError> {
        parse::parse_one_policy(text)
    }

    /// The policy's unique name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The directions it applies to.
    pub fn direction(&self) -> PolicyDirection {
        self.direction
    }
    /// This side's addresses (source of outbound packets, destination of inbound ones).
    pub fn local(&self) -> &AddrSet {
        &self.local
    }
    /// The peer side's addresses.
    pub fn remote(&self) -> &AddrSet {
        &self.remote
    }
    /// The IP protocol, `None` for any.
    pub fn protocol(&self) -> Option<u8> {
        self.protocol
    }
    /// The local port range (inclusive), `None` for any.
    pub fn local_port(&self) -> Option<(u16, u16)> {
        self.local_port
    }
    /// The remote port range (inclusive), `None` for any.
    pub fn remote_port(&self) -> Option<(u16, u16)> {
        self.remote_port
    }
    /// The ICMP type, `None` for any.
    pub fn icmp_type(&self) -> Option<u8> {
        self.icmp_type
    }
    /// The ICMP code, `None` for any.
    pub fn icmp_code(&self) -> Option<u8> {
        self.icmp_code
    }
    /// What the policy does.
    pub fn action(&self) -> Action {
        self.action
    }
    /// The SA that carries this policy's packets in `direction` (PROTECT only).
    pub fn sa(&self, direction: Direction) -> Option<&str> {
        match direction {
            Direction::Outbound => self.sa_out.as_deref(),
            Direction::Inbound => self.sa_in.as_deref(),
        }
    }

    /// True if the policy applies to `flow` (its direction included): the reference
    /// semantics, written plainly.
    pub fn matches(&self, flow: &Flow) -> bool {
        if !self.direction.covers(flow.direction) {
            return false;
        }
        self.selectors_match(flow)
    }

    /// True if the policy looks at ports (TCP, UDP, SCTP) or ICMP type or code: one of
    /// `local_port`, `remote_port`, `icmp_type`, `icmp_code` is not "any". Only such a
    /// policy can be unsure about a non-first fragment, which carries none of them.
    pub fn has_port_or_icmp_selector(&self) -> bool {
        self.local_port.is_some()
            || self.remote_port.is_some()
            || self.icmp_type.is_some()
            || self.icmp_code.is_some()
    }

    /// True if the policy could apply to a packet of `flow` whose ports and ICMP fields
    /// are unknown (a non-first fragment): [`Policy::matches`] with the port and ICMP
    /// selectors treated as wildcards. The reference semantics of
    /// [`Spd::lookup_non_first_fragment`], written plainly.
    pub fn matches_with_ports_unknown(&self, flow: &Flow) -> bool {
        if !self.direction.covers(flow.direction) {
            return false;
        }
        let (src, dst) = match flow.direction {
            Direction::Outbound => (&self.local, &self.remote),
            Direction::Inbound => (&self.remote, &self.local),
        };
        src.contains(flow.src)
            && dst.contains(flow.dst)
            && self.protocol.is_none_or(|p| p == flow.protocol)
    }

    /// The selectors alone (the direction only decides which side is which).
    pub(crate) fn selectors_match(&self, flow: &Flow) -> bool {
        self.selectors_admit(
            flow.direction,
            |src| src.contains(flow.src),
            |dst| dst.contains(flow.dst),
            flow.protocol,
            [flow.src_port, flow.dst_port],
            [flow.icmp_type, flow.icmp_code],
        )
    }

    /// [`Policy::selectors_match`] for the flow of a whole packet in `direction`, given
    /// as its classifier key ([`packet_key`]) rather than a [`Flow`].
    #[inline]
    pub(crate) fn selectors_match_key(&self, direction: Direction, key: &PacketKey) -> bool {
        match key {
            PacketKey::V4(k) => self.selectors_match_dims(
                direction,
                |src| src.contains_v4(k[0]),
                |dst| dst.contains_v4(k[1]),
                [k[2], k[3], k[4]],
            ),
            PacketKey::V6(k) => self.selectors_match_dims(
                direction,
                |src| src.contains_v6(k[0]),
                |dst| dst.contains_v6(k[1]),
                [k[2] as u32, k[3] as u32, k[4] as u32],
            ),
        }
    }

    /// [`Policy::selectors_admit`] for a key's protocol and A and B dimensions
    /// (`[protocol, a, b]`): A and B are what the flow's ports or ICMP fields would be.
    #[inline(always)]
    fn selectors_match_dims(
        &self,
        direction: Direction,
        src_in: impl Fn(&AddrSet) -> bool,
        dst_in: impl Fn(&AddrSet) -> bool,
        [protocol, a, b]: [u32; 3],
    ) -> bool {
        // `selectors_admit` with the ports or ICMP fields A and B stand for, tested
        // directly: building its `Option` arguments cost a packet's check a dozen
        // instructions and spills.
        let protocol = protocol as u8;
        let (src, dst, src_port, dst_port) = self.oriented_parts(direction);
        let in_range = |sel: Option<(u16, u16)>, p: u32| {
            sel.is_none_or(|(lo, hi)| u32::from(lo) <= p && p <= u32::from(hi))
        };
        let fields_ok = if has_ports(protocol) {
            in_range(src_port, a)
                && in_range(dst_port, b)
                && self.icmp_type.is_none()
                && self.icmp_code.is_none()
        } else if is_icmp(protocol) {
            src_port.is_none()
                && dst_port.is_none()
                && self.icmp_type.is_none_or(|t| u32::from(t) == a)
                && self.icmp_code.is_none_or(|c| u32::from(c) == b)
        } else {
            src_port.is_none()
                && dst_port.is_none()
                && self.icmp_type.is_none()
                && self.icmp_code.is_none()
        };
        src_in(src) && dst_in(dst) && self.protocol.is_none_or(|p| p == protocol) && fields_ok
    }

    /// The selectors seen from a packet in `direction`: (source set, destination set,
    /// source ports, destination ports).
    #[inline(always)]
    fn oriented_parts(&self, direction: Direction) -> (&AddrSet, &AddrSet, PortSel, PortSel) {
        match direction {
            Direction::Outbound => (&self.local, &self.remote, self.local_port, self.remote_port),
            Direction::Inbound => (&self.remote, &self.local, self.remote_port, self.local_port),
        }
    }

    /// Whether the selectors admit a packet in `direction` whose source and
    /// destination the sets `src_in` and `dst_in` accept, of `protocol`, with those
    /// `ports` (source, destination) and `icmp` fields (type, code).
    #[inline(always)]
    fn selectors_admit(
        &self,
        direction: Direction,
        src_in: impl Fn(&AddrSet) -> bool,
        dst_in: impl Fn(&AddrSet) -> bool,
        protocol: u8,
        ports: [Option<u16>; 2],
        icmp: [Option<u8>; 2],
    ) -> bool {
        let (src, dst, src_port, dst_port) = self.oriented_parts(direction);
        let port_ok = |sel: Option<(u16, u16)>, p: Option<u16>| match (sel, p) {
            (None, _) => true,
            (Some((lo, hi)), Some(p)) => lo <= p && p <= hi,
            (Some(_), None) => false,
        };
        let icmp_ok = |sel: Option<u8>, v: Option<u8>| sel.is_none() || sel == v;
        src_in(src)
            && dst_in(dst)
            && self.protocol.is_none_or(|p| p == protocol)
            && port_ok(src_port, ports[0])
            && port_ok(dst_port, ports[1])
            && icmp_ok(self.icmp_type, icmp[0])
            && icmp_ok(self.icmp_code, icmp[1])
    }

    fn oriented(&self, direction: Direction) -> RuleRef<'_> {
        let icmp = self.protocol.is_some_and(is_icmp);
        let (src, dst, a, b) = match direction {
            Direction::Outbound => (&self.local, &self.remote, self.local_port, self.remote_port),
            Direction::Inbound => (&self.remote, &self.local, self.remote_port, self.local_port),
        };
        let (a, b) = if icmp {
            (
                self.icmp_type.map(|t| (u16::from(t), u16::from(t))),
                self.icmp_code.map(|c| (u16::from(c), u16::from(c))),
            )
        } else {
            (a, b)
        };
        RuleRef {
            src,
            dst,
            protocol: self.protocol,
            a,
            b,
        }
    }
}

/// The answer of a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decision<'a> {
    /// What to do with the packet.
    pub action: Action,
    /// The name of the matching policy; `None` when nothing matched (implicit DISCARD).
    pub policy: Option<&'a str>,
    /// The position of the matching policy in the file (0-based).
    pub policy_index: Option<usize>,
    /// For PROTECT: the SA of the lookup's direction.
    pub sa: Option<&'a str>,
}

impl Decision<'_> {
    /// The decision when no policy matches: DISCARD.
    pub const NO_MATCH: Decision<'static> = Decision {
        action: Action::Discard,
        policy: None,
        policy_index: None,
        sa: None,
    };
}

/// The stateless answer for a non-first fragment ([`Spd::lookup_non_first_fragment`],
/// RFC 4301 §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FragmentDecision<'a> {
    /// The first policy that could match the fragment does not look at ports or ICMP
    /// fields, so it certainly matches and this is its decision
    /// ([`Decision::NO_MATCH`], DISCARD, when no policy could match at all).
    Decided(Decision<'a>),
    /// The fragment cannot be decided without its first fragment: drop it
    /// (`fragment_unresolved`).
    Unresolved {
        /// The first policy that could match (with its decision, had the fragment's
        /// ports matched it): it looks at ports or ICMP fields. `None` when the
        /// fragment does not even show its upper-layer protocol (an IPv6 extension
        /// header begins its fragmentable part).
        could_match: Option<Decision<'a>>,
    },
}

impl<'a> FragmentDecision<'a> {
    /// The decision, `None` when unresolved.
    pub const fn decided(self) -> Option<Decision<'a>> {
        match self {
            FragmentDecision::Decided(d) => Some(d),
            FragmentDecision::Unresolved { .. } => None,
        }
    }

    /// What the data path does with such a fragment: the decision, or
    /// [`FragmentError::Unresolved`].
    pub const fn into_result(self) -> Result<Decision<'a>, FragmentError> {
        match self {
            FragmentDecision::Decided(d) => Ok(d),
            FragmentDecision::Unresolved { .. } => Err(FragmentError::Unresolved),
        }
    }
}

/// Next headers that begin the fragmentable part of an IPv6 packet without naming its
/// upper-layer protocol (Hop-by-Hop, Routing, Fragment, Destination Options).
const fn is_ipv6_extension(nh: u8) -> bool {
    matches!(nh, 0 | 43 | 44 | 60)
}

/// What a rule answers, kept densely next to the classifier so that a lookup does not
/// touch the (large) [`Policy`] structs.
struct RuleOut {
    action: Action,
    policy: u32,
    name: Box<str>,
    sa: Option<Box<str>>,
    /// The rule looks at ports or ICMP fields ([`Policy::has_port_or_icmp_selector`]).
    ports_or_icmp: bool,
}

impl RuleOut {
    /// The rule of `policy` (at position `index`) in the table of `direction`.
    fn of(policy: &Policy, index: u32, direction: Direction) -> RuleOut {
        RuleOut {
            action: policy.action,
            policy: index,
            name: policy.name.as_str().into(),
            sa: policy.sa(direction).map(Into::into),
            ports_or_icmp: policy.has_port_or_icmp_selector(),
        }
    }
}

/// The policies of one direction and their compiled classifier.
struct Table {
    /// Policy index of each rule, in priority order.
    rules: Vec<u32>,
    out: Vec<RuleOut>,
    engine: Engine,
    /// The same rules with their port and ICMP selectors widened to "any", for
    /// non-first fragments; `None` when no rule has such selectors (then the main
    /// classifier, queried with OPAQUE ports, gives the same answer).
    fragments: Option<FragmentIndex>,
    /// The rules (positions in this table) of policies removed since the compile, one
    /// bit each (allocated with the classifier, so that the first removal allocates
    /// nothing). Lookups mask them out while `removed_count` is not 0.
    removed: Vec<u64>,
    removed_count: usize,
    /// For the non-first fragment index: each chain of rules with the same widened
    /// selectors whose first rule (the only one in the index) was removed brings its
    /// first rule that was not (positions in this table, in order).
    fragment_extra: Vec<u32>,
}

/// The classifier of the widened rules (always partitioned stabbing).
struct FragmentIndex {
    v4: Partitioned<u32>,
    v6: Partitioned<u128>,
    /// The table position of each widened rule: a rule whose widened selectors
    /// (addresses, protocol) equal an earlier rule's can never be the first that could
    /// match, and is left out (rules that differ only in their ports are common).
    rules: Vec<u32>,
    /// The rules left out, as chains: for each rule of a chain of rules with the same
    /// widened selectors (table positions), the first of the chain (the one in the
    /// index), and for that one, the whole chain in order. Only chains of two or more.
    /// Needed when the first is removed since the compile: then the next one of its
    /// chain that is not becomes the first that could match.
    chain_of: HashMap<u32, u32>,
    chains: HashMap<u32, Vec<u32>>,
}

impl FragmentIndex {
    fn build(refs: &[RuleRef<'_>], layout: Layout) -> FragmentIndex {
        let mut seen: HashMap<_, u32> = HashMap::new();
        let mut chain_of: HashMap<u32, u32> = HashMap::new();
        let mut chains: HashMap<u32, Vec<u32>> = HashMap::new();
        let (rules, widened): (Vec<u32>, Vec<RuleRef<'_>>) = refs
            .iter()
            .enumerate()
            .filter(|&(i, r)| {
                let i = i as u32;
                match seen.entry((r.src, r.dst, r.protocol)) {
                    std::collections::hash_map::Entry::Occupied(first) => {
                        let first = *first.get();
                        chain_of.insert(first, first);
                        chain_of.insert(i, first);
                        chains.entry(first).or_insert_with(|| vec![first]).push(i);
                        false
                    }
                    std::collections::hash_map::Entry::Vacant(v) => {
                        v.insert(i);
                        true
                    }
                }
            })
            .map(|(i, r)| {
                let wide = RuleRef {
                    a: None,
                    b: None,
                    ..*r
                };
                (i as u32, wide)
            })
            .unzip();
        let (v4, v6) = classifiers(&widened, layout);
        FragmentIndex {
            v4,
            v6,
            rules,
            chain_of,
            chains,
        }
    }

    /// The table position of the first rule of `table` (whose index this is) that
    /// could match a non-first fragment of `flow`, rules removed since the compile
    /// left out (`base`: the policies the table was compiled from); `None` for a flow
    /// of mixed address families.
    #[inline]
    fn lookup(&self, flow: &Flow, table: &Table, base: &[Policy]) -> Option<Option<usize>> {
        let masked = |w: u32| table.is_removed(self.rules[w as usize]);
        let hit = match family_key(flow, OPAQUE, OPAQUE) {
            Family::V4(k) if table.removed_count == 0 => self.v4.lookup(&k.map(|x| x as u32)),
            Family::V4(k) => self.v4.lookup_where(&k.map(|x| x as u32), masked),
            Family::V6(k) if table.removed_count == 0 => self.v6.lookup(&k),
            Family::V6(k) => self.v6.lookup_where(&k, masked),
            Family::Mixed => return None,
        };
        let mut best = hit.map(|i| self.rules[i]);
        for &t in &table.fragment_extra {
            if best.is_some_and(|b| t >= b) {
                break;
            }
            if base[table.rules[t as usize] as usize].matches_with_ports_unknown(flow) {
                best = Some(t);
                break;
            }
        }
        Some(best.map(|t| t as usize))
    }

    fn heap_bytes(&self) -> usize {
        self.v4.heap_bytes()
            + self.v6.heap_bytes()
            + self.rules.len() * 4
            + self.chain_of.len() * 8
            + self
                .chains
                .values()
                .map(|c| c.len() * 4 + 24)
                .sum::<usize>()
    }
}

/// One change to an SPD's policy list ([`Spd::changed`]).
#[cfg(test)]
pub(crate) enum PolicyChange {
    /// Insert the policy at the position (at most the number of policies).
    Insert(usize, Policy),
    /// Replace the policy at the position.
    Replace(usize, Policy),
    /// Remove the policy at the position.
    Remove(usize),
}

/// Which compiled structure answers lookups.
enum Engine {
    /// Partitioned interval stabbing, one per address family (the default).
    Partitioned {
        v4: Partitioned<u32>,
        v6: Partitioned<u128>,
    },
    /// Decision trees, one per address family (kept for the measurements).
    Tree { v4: Tree, v6: Tree },
    /// The bit-vector classifier (kept for the measurements in the module docs).
    BitVector(Classifier),
}

/// Which compiled structure to build (benchmarks compare them).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EngineKind {
    /// Rules partitioned by wildcard pattern, interval stabbing per part (the default).
    Partitioned,
    /// [`EngineKind::Partitioned`] with an index and its lists in the filtered layout
    /// whatever its size (the default scans classifiers of at most 16 rules and keeps
    /// entries inline in small ones): for the tests, whose rule sets are small.
    PartitionedFiltered,
    /// HiCuts-style decision trees.
    Tree,
    /// Lucent bit vectors with an aggregate bitmap.
    BitVector,
}

enum Family {
    V4([u128; 5]),
    V6([u128; 5]),
    Mixed,
}

#[inline]
fn family_key(flow: &Flow, a: u32, b: u32) -> Family {
    let rest = |s: u128, d: u128| {
        [
            s,
            d,
            u128::from(flow.protocol),
            u128::from(a),
            u128::from(b),
        ]
    };
    match (flow.src, flow.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            Family::V4(rest(u32::from(s).into(), u32::from(d).into()))
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => Family::V6(rest(s.into(), d.into())),
        _ => Family::Mixed,
    }
}

/// The classifier key of a whole packet, read straight from its bytes ([`packet_key`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum PacketKey {
    /// An IPv4 packet's: source, destination, protocol, A, B (as [`family_key`]).
    V4([u32; 5]),
    /// An IPv6 packet's: the same five.
    V6([u128; 5]),
}

/// The classifier key of `pkt` when it is a whole packet that
/// [`Flow::from_packet_with_fragment`] reads without error and without walking
/// extension headers: the key [`family_key`] gives for that flow, read straight from
/// the bytes. `None` for anything else (a fragment, an IPv6 packet with extension
/// headers, a packet the parse refuses): those take the flow's way, which also says
/// what is wrong with them.
#[inline(always)]
pub(crate) fn packet_key(pkt: &[u8]) -> Option<PacketKey> {
    match *pkt.first()? >> 4 {
        4 => ipv4_packet_key(pkt).map(PacketKey::V4),
        6 => ipv6_packet_key(pkt).map(PacketKey::V6),
        _ => None,
    }
}

/// [`packet_key`] of an IPv4 packet.
#[inline(always)]
fn ipv4_packet_key(pkt: &[u8]) -> Option<[u32; 5]> {
    let h: &[u8; 20] = pkt.first_chunk()?;
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let whole = u16::from_be_bytes([h[6], h[7]]) & 0x3fff == 0;
    if h[0] >> 4 != 4 || ihl < 20 || total < ihl || total > pkt.len() || !whole {
        return None;
    }
    let protocol = h[9];
    let (a, b) = upper_dims(protocol, &pkt[ihl..total])?;
    Some([
        u32::from_be_bytes([h[12], h[13], h[14], h[15]]),
        u32::from_be_bytes([h[16], h[17], h[18], h[19]]),
        u32::from(protocol),
        a,
        b,
    ])
}

/// [`packet_key`] of an IPv6 packet.
#[inline(always)]
fn ipv6_packet_key(pkt: &[u8]) -> Option<[u128; 5]> {
    let h: &[u8; 40] = pkt.first_chunk()?;
    let total = 40 + usize::from(u16::from_be_bytes([h[4], h[5]]));
    let next = h[6];
    // Hop-by-hop, routing, fragment and destination options headers: the parse walks
    // them (and finds fragments there), so such packets take the flow's way.
    if h[0] >> 4 != 6 || total > pkt.len() || matches!(next, 0 | 43 | 44 | 60) {
        return None;
    }
    let (a, b) = upper_dims(next, &pkt[40..total])?;
    let addr = |at: usize| u128::from_be_bytes(h[at..at + 16].try_into().expect("16 bytes"));
    Some([
        addr(8),
        addr(24),
        u128::from(next),
        u128::from(a),
        u128::from(b),
    ])
}

/// The A and B dimensions of a whole packet of `protocol` whose upper-layer header
/// starts `l4`: its ports, its ICMP type and code, or [`OPAQUE`] for a protocol with
/// neither. `None` when the header is too short for them (the parse refuses that).
#[inline(always)]
fn upper_dims(protocol: u8, l4: &[u8]) -> Option<(u32, u32)> {
    if has_ports(protocol) {
        let l4: &[u8; 4] = l4.first_chunk()?;
        Some((
            u32::from(u16::from_be_bytes([l4[0], l4[1]])),
            u32::from(u16::from_be_bytes([l4[2], l4[3]])),
        ))
    } else if is_icmp(protocol) {
        let l4: &[u8; 4] = l4.first_chunk()?;
        Some((u32::from(l4[0]), u32::from(l4[1])))
    } else {
        Some((OPAQUE, OPAQUE))
    }
}

/// The values of `flow` in the classifiers' A and B dimensions: its ports, or its ICMP
/// type and code, or [`OPAQUE`] when absent or unknown.
#[inline]
fn port_dims(flow: &Flow) -> (u32, u32) {
    let (a, b) = if is_icmp(flow.protocol) {
        (flow.icmp_type.map(u16::from), flow.icmp_code.map(u16::from))
    } else if has_ports(flow.protocol) {
        (flow.src_port, flow.dst_port)
    } else {
        (None, None)
    };
    (a.map_or(OPAQUE, u32::from), b.map_or(OPAQUE, u32::from))
}

/// The IPv4 and IPv6 classifiers of `rules` (in priority order), laid out in `layout`.
fn classifiers(rules: &[RuleRef<'_>], layout: Layout) -> (Partitioned<u32>, Partitioned<u128>) {
    // The largest value of each dimension (addresses, protocol, selectors A and B).
    const V4_MAX: [u128; 5] = [
        u32::MAX as u128,
        u32::MAX as u128,
        255,
        OPAQUE as u128,
        OPAQUE as u128,
    ];
    const V6_MAX: [u128; 5] = [u128::MAX, u128::MAX, 255, OPAQUE as u128, OPAQUE as u128];
    let family = |v6| -> Vec<TRule> { rules.iter().map(|r| tree_rule(r, v6)).collect() };
    (
        Partitioned::build(family(false), V4_MAX, layout),
        Partitioned::build(family(true), V6_MAX, layout),
    )
}

fn tree_rule(r: &RuleRef<'_>, v6: bool) -> TRule {
    let addrs = |s: &AddrSet| {
        if v6 {
            s.v6_ranges().len()
        } else {
            s.v4_ranges().len()
        }
    };
    let mut ranges = Vec::with_capacity(addrs(r.src) + addrs(r.dst) + 3);
    let mut ends = [0u32; 5];
    for (d, s) in [r.src, r.dst].into_iter().enumerate() {
        if v6 {
            ranges.extend_from_slice(s.v6_ranges());
        } else {
            ranges.extend(
                s.v4_ranges()
                    .iter()
                    .map(|&(l, h)| (u128::from(l), u128::from(h))),
            );
        }
        ends[d] = ranges.len() as u32;
    }
    ranges.push(match r.protocol {
        None => (0, 255),
        Some(p) => (u128::from(p), u128::from(p)),
    });
    ends[2] = ranges.len() as u32;
    for (d, p) in [(3, r.a), (4, r.b)] {
        ranges.push(match p {
            None => (0, u128::from(OPAQUE)),
            Some((l, h)) => (u128::from(l), u128::from(h)),
        });
        ends[d] = ranges.len() as u32;
    }
    TRule::from_flat(ranges, ends)
}

impl Table {
    /// Whether this table's burst lookups take the stages of
    /// [`Partitioned::lookup_burst`] (a partitioned classifier large enough for them);
    /// otherwise each flow is looked up alone.
    fn burst_pays(&self) -> bool {
        matches!(&self.engine, Engine::Partitioned { v4, v6 } if v4.burst_pays() || v6.burst_pays())
    }

    fn build(policies: &[Policy], direction: Direction, kind: EngineKind) -> Table {
        let rules: Vec<u32> = policies
            .iter()
            .enumerate()
            .filter(|(_, p)| p.direction.covers(direction))
            .map(|(i, _)| u32::try_from(i).expect("fewer than 2^32 policies"))
            .collect();
        let out: Vec<RuleOut> = rules
            .iter()
            .map(|&i| RuleOut::of(&policies[i as usize], i, direction))
            .collect();
        // Read once per lookup, at the answer's position: a large SPD's (40 bytes a
        // rule) is worth a huge page as much as the classifier's arrays.
        huge::advise_huge_pages(&out);
        Table::compile(policies, direction, kind, rules, out)
    }

    /// The table of `rules` (positions in `policies` of the policies of `direction`, in
    /// order) and their `out`, with its classifier compiled.
    fn compile(
        policies: &[Policy],
        direction: Direction,
        kind: EngineKind,
        rules: Vec<u32>,
        out: Vec<RuleOut>,
    ) -> Table {
        let refs: Vec<RuleRef<'_>> = rules
            .iter()
            .map(|&i| policies[i as usize].oriented(direction))
            .collect();
        let layout = match kind {
            EngineKind::PartitionedFiltered => Layout::INDEXED_FILTERED,
            _ => Layout::MEASURED,
        };
        let engine = match kind {
            EngineKind::Partitioned | EngineKind::PartitionedFiltered => {
                let (v4, v6) = classifiers(&refs, layout);
                Engine::Partitioned { v4, v6 }
            }
            EngineKind::BitVector => Engine::BitVector(Classifier::build(&refs)),
            EngineKind::Tree => Engine::Tree {
                v4: Tree::build(
                    refs.iter().map(|r| tree_rule(r, false)).collect(),
                    [32, 32, 8, 17, 17],
                ),
                v6: Tree::build(
                    refs.iter().map(|r| tree_rule(r, true)).collect(),
                    [128, 128, 8, 17, 17],
                ),
            },
        };
        let fragments = refs
            .iter()
            .any(|r| r.a.is_some() || r.b.is_some())
            .then(|| FragmentIndex::build(&refs, layout));
        Table {
            removed: vec![0; rules.len().div_ceil(64)],
            removed_count: 0,
            rules,
            out,
            engine,
            fragments,
            fragment_extra: Vec::new(),
        }
    }

    /// True if rule `rule` (a position in this table) was removed since the compile.
    #[inline]
    fn is_removed(&self, rule: u32) -> bool {
        self.removed
            .get(rule as usize / 64)
            .is_some_and(|w| w >> (rule % 64) & 1 != 0)
    }

    /// Masks out the rule of the policy at position `policy` of the list the table was
    /// compiled from (that policy was removed); nothing if the table has none.
    fn remove_policy(&mut self, policy: u32) {
        let Ok(t) = self.rules.binary_search(&policy) else {
            return;
        };
        self.removed[t / 64] |= 1 << (t % 64);
        self.removed_count += 1;
        let t = t as u32;
        let Some(ix) = &self.fragments else { return };
        let Some(first) = ix.chain_of.get(&t) else {
            return;
        };
        let chain = &ix.chains[first];
        let removed = &self.removed;
        let gone = |r: u32| removed[r as usize / 64] >> (r % 64) & 1 != 0;
        self.fragment_extra
            .retain(|x| chain.binary_search(x).is_err());
        if gone(*first)
            && let Some(&next) = chain.iter().find(|&&r| !gone(r))
        {
            let at = self.fragment_extra.partition_point(|&x| x < next);
            self.fragment_extra.insert(at, next);
        }
    }

    /// Loads the records of `rules` (a burst's answers) before their decisions are
    /// built, so that their cache misses overlap: plain loads, one per answer, whose
    /// values nothing waits for. (Prefetches, which the burst lookup uses, measured
    /// level here, at 100,000 rules.)
    #[inline]
    fn load_ahead(&self, rules: &[Option<usize>]) {
        let mut acc = 0u32;
        for &r in rules.iter().flatten() {
            acc ^= self.out.get(r).map_or(0, |o| o.policy);
        }
        core::hint::black_box(acc);
    }

    /// The decision of rule `rule` (a position in this table).
    #[inline(always)]
    fn rule_decision(&self, rule: usize) -> Decision<'_> {
        let o = &self.out[rule];
        Decision {
            action: o.action,
            policy: Some(&o.name),
            policy_index: Some(o.policy as usize),
            sa: o.sa.as_deref(),
        }
    }
}

/// The policies in order: those of `base` (the compiled list) less the positions
/// `removed`, with the policies `added` at their anchors.
fn ordered_iter<'a>(
    base: &'a [Policy],
    removed: &'a [u32],
    added: &'a [Added],
) -> impl Iterator<Item = &'a Policy> {
    let mut added = added.iter().peekable();
    let mut removed = removed.iter().copied().peekable();
    let mut base = base.iter().enumerate();
    core::iter::from_fn(move || {
        loop {
            let Some(&(b, p)) = base.clone().next().as_ref() else {
                return added.next().map(|a| &*a.policy);
            };
            if let Some(a) = added.next_if(|a| a.anchor as usize <= b) {
                return Some(&*a.policy);
            }
            base.next();
            if removed.next_if_eq(&(b as u32)).is_none() {
                return Some(p);
            }
        }
    })
}

/// A live SPD's policies as they were at one moment ([`Spd::snapshot`]), for an edit
/// made away from the gateway: the compiled list shared (an `Arc`, no copy) and the
/// few changes pending beside it copied, so that taking one costs O(changes pending)
/// whatever the number of policies. [`PolicySnapshot::to_vec`] makes the ordered copy
/// on the thread that needs it.
#[derive(Clone)]
pub(crate) struct PolicySnapshot {
    base: Arc<Vec<Policy>>,
    removed: Vec<u32>,
    added: Vec<Added>,
}

impl PolicySnapshot {
    /// The policies in order, borrowed.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Policy> {
        ordered_iter(&self.base, &self.removed, &self.added)
    }

    /// A copy of the policies, in order (O(n): off the gateway's thread).
    pub(crate) fn to_vec(&self) -> Vec<Policy> {
        self.iter().cloned().collect()
    }

    /// An SPD of these policies with no SAs, compiled; shares the policy list when
    /// no change was pending.
    pub(crate) fn into_spd(self) -> Spd {
        if self.removed.is_empty() && self.added.is_empty() {
            Spd::build(self.base, Vec::new(), EngineKind::Partitioned)
        } else {
            Spd::with_policies(self.to_vec())
        }
    }
}

// The thread-safety promises of the docs below, checked by the compiler.
const _: () = {
    const fn shared_between_threads<T: Send + Sync>() {}
    shared_between_threads::<Spd>();
    shared_between_threads::<crate::SaConfig>();
};

/// Changes made to a live gateway's SPD since its classifiers were compiled (see
/// "Live changes" in the [module docs](self)).
#[derive(Default)]
struct Delta {
    /// Positions in the compiled list of the policies removed since, in order.
    removed: Vec<u32>,
    /// The policies added since, in policy order.
    added: Vec<Added>,
    /// The reference the next added policy gets.
    next_id: u32,
}

/// A policy added since the compile.
#[derive(Clone)]
struct Added {
    /// The position in the compiled list of the policy it comes before (removed or
    /// not; the list's length: after all of them). Policies added before the same one
    /// are in the order of [`Delta::added`].
    anchor: u32,
    /// Its reference: at least the length of the compiled list.
    id: u32,
    /// Shared, so that a [`PolicySnapshot`] takes it without a copy.
    policy: Arc<Policy>,
}

impl Delta {
    fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.added.is_empty()
    }

    fn len(&self) -> usize {
        self.removed.len() + self.added.len()
    }
}

/// Which policy answers a lookup when changes are pending.
#[derive(Clone, Copy)]
enum Winner {
    /// The rule at this position of the direction's table (a compiled policy).
    Compiled(usize),
    /// The policy at this index of [`Delta::added`].
    Added(usize),
}

/// Changes pending (policies added or removed since the compile) from which
/// Pending policy changes from which [`crate::Gateway::policy_rebuild_due`] says the
/// classifier should be compiled again, off the packet thread.
pub const REBUILD_DUE: usize = 32;
/// Changes pending beyond which a change rebuilds the classifiers at once, on the
/// caller's thread (the bound on what a lookup may have to check beside the compiled
/// classifier).
pub(crate) const DELTA_MAX: usize = 128;

/// A Security Policy Database: ordered policies, their SAs, and the compiled lookup.
///
/// Immutable once built. `Send + Sync`: share it between threads by reference or `Arc`.
/// Lookup cost and memory by rule count are in the [module docs](self).
pub struct Spd {
    /// The policies the classifiers were compiled from, in order; those removed since
    /// stay until the next rebuild ([`Delta::removed`]). Shared with the
    /// [`PolicySnapshot`]s taken of it (an edit of a live gateway's policies), so that
    /// taking one copies no policy.
    base: Arc<Vec<Policy>>,
    /// Changes since the compile (only a live [`Gateway`](crate::Gateway) makes them).
    delta: Delta,
    /// The policies in order, made on demand when changes are pending.
    ordered: std::sync::OnceLock<Vec<Policy>>,
    /// The reference of each policy by name: its position in `base`, or the `id` of an
    /// added one. A reference stays valid until the policy goes or the SPD is rebuilt;
    /// while no change is pending it is the policy's position.
    names: HashMap<Box<str>, u32>,
    sas: Vec<NamedSa>,
    /// References of the policies naming each SA, in policy order.
    by_inbound_sa: HashMap<String, Vec<usize>>,
    by_outbound_sa: HashMap<String, Vec<usize>>,
    outbound: Table,
    inbound: Table,
}

impl fmt::Debug for Spd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spd")
            .field("policies", &self.policies())
            .field("sas", &self.sas.iter().map(|s| &s.name).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A second SPD with the same policies and copies of the SA configurations (keys in
/// memory that is wiped when dropped), for a second owner such as a
/// [`Gateway`](crate::Gateway), which takes its SPD's SAs: no need to keep the policy
/// file's text, keys and all, to parse it again. The classifiers are compiled again.
/// (SAs come only from policy files, which configure no IV source, so every SA is
/// copied.)
impl Clone for Spd {
    fn clone(&self) -> Spd {
        let sas = self
            .sas
            .iter()
            .filter_map(|s| {
                Some(NamedSa {
                    name: s.name.clone(),
                    config: s.config.try_clone()?,
                })
            })
            .collect();
        Spd::build(self.policies().to_vec(), sas, EngineKind::Partitioned)
    }
}

impl Spd {
    /// Parses a policy file (DESIGN.md "Policy file (TOML)"); fails with the first
    /// problem found. See [`Spd::from_toml_all_errors`] to get all of them.
    pub fn from_toml(text: &str) -> Result<Spd, ConfigError> {
        Spd::from_toml_all_errors(text).map_err(|mut e| e.swap_remove(0))
    }

    /// Parses a policy file and reports **every** problem: each bad policy or SA is
    /// reported (naming the policy or SA and the key) and parsing goes on with the next.
    /// The error list is never empty.
    pub fn from_toml_all_errors(text: &str) -> Result<Spd, Vec<ConfigError>> {
        let (policies, sas, errors) = parse::parse(text);
        if errors.is_empty() {
            Ok(Spd::build(policies, sas, EngineKind::Partitioned))
        } else {
            Err(errors)
        }
    }

    /// Reads and parses the policy file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Spd, ConfigError> {
        let path = path.as_ref();
        let text = crate::secret::read_file(path)
            .map_err(|e| ConfigError::new(path.display().to_string(), e.to_string()))?;
        Spd::from_toml(&text)
    }

    /// Builds an SPD from checked policies and SAs.
    fn build(policies: impl Into<Arc<Vec<Policy>>>, sas: Vec<NamedSa>, kind: EngineKind) -> Spd {
        let policies: Arc<Vec<Policy>> = policies.into();
        let mut by_inbound_sa: HashMap<String, Vec<usize>> = HashMap::new();
        let mut by_outbound_sa: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, p) in policies.iter().enumerate() {
            if let Some(sa) = &p.sa_in {
                by_inbound_sa.entry(sa.clone()).or_default().push(i);
            }
            if let Some(sa) = &p.sa_out {
                by_outbound_sa.entry(sa.clone()).or_default().push(i);
            }
        }
        let names = policies
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let i = u32::try_from(i).expect("fewer than 2^32 policies");
                (p.name.as_str().into(), i)
            })
            .collect();
        Spd {
            outbound: Table::build(&policies, Direction::Outbound, kind),
            inbound: Table::build(&policies, Direction::Inbound, kind),
            delta: Delta {
                next_id: u32::try_from(policies.len()).expect("fewer than 2^32 policies"),
                ..Delta::default()
            },
            base: policies,
            ordered: std::sync::OnceLock::new(),
            names,
            sas,
            by_inbound_sa,
            by_outbound_sa,
        }
    }

    /// An SPD of `policies` (checked, their SA names resolved by the caller) with no
    /// SAs: what a live [`Gateway`](crate::Gateway) swaps in when its policies change.
    pub(crate) fn with_policies(policies: Vec<Policy>) -> Spd {
        Spd::build(policies, Vec::new(), EngineKind::Partitioned)
    }

    /// This SPD with one policy inserted, replaced or removed at a position (for the
    /// tests: the gateway names policies, see [`Spd::insert_policy`]).
    #[cfg(test)]
    pub(crate) fn changed(mut self, change: PolicyChange) -> Spd {
        match change {
            PolicyChange::Insert(at, policy) => {
                let before = self.ref_at(at);
                self.insert_policy(before, policy);
            }
            PolicyChange::Replace(at, policy) => {
                let r = self.ref_at(at).expect("a policy at the position");
                self.replace_policy(r, policy);
            }
            PolicyChange::Remove(at) => {
                let r = self.ref_at(at).expect("a policy at the position");
                self.remove_policy(r);
            }
        }
        self
    }

    /// The reference of the policy called `name` (see [`Spd::policy_ref`]).
    pub(crate) fn ref_of_name(&self, name: &str) -> Option<usize> {
        self.names.get(name).map(|&r| r as usize)
    }

    /// The policy of reference `r`: a reference from this SPD (a name's, a lookup's),
    /// valid until the policy goes or the SPD is rebuilt. While no change is pending it
    /// is the policy's position.
    #[inline]
    pub(crate) fn policy_ref(&self, r: usize) -> &Policy {
        match self.base.get(r) {
            Some(p) => p,
            None => &self.delta.added[self.added_index(r)].policy,
        }
    }

    /// The index in [`Delta::added`] of the added policy of reference `r`.
    fn added_index(&self, r: usize) -> usize {
        self.delta
            .added
            .iter()
            .position(|a| a.id as usize == r)
            .expect("a reference to a policy of this SPD")
    }

    /// How many compiled policies before position `b` of the compiled list are removed.
    #[inline]
    fn removed_before(&self, b: u32) -> usize {
        self.delta.removed.partition_point(|&x| x < b)
    }

    /// The position of the added policy at index `k` of [`Delta::added`].
    #[inline]
    fn added_position(&self, k: usize) -> usize {
        let anchor = self.delta.added[k].anchor;
        anchor as usize - self.removed_before(anchor) + k
    }

    /// The position in the policy order of the policy of reference `r`.
    #[inline]
    fn position_of_ref(&self, r: usize) -> usize {
        if self.delta.is_empty() {
            r
        } else if r < self.base.len() {
            let b = r as u32;
            r - self.removed_before(b) + self.delta.added.partition_point(|a| a.anchor <= b)
        } else {
            self.added_position(self.added_index(r))
        }
    }

    /// The reference of the policy at position `pos` (`None`: past the last).
    fn ref_at(&self, pos: usize) -> Option<usize> {
        if self.delta.is_empty() {
            return (pos < self.base.len()).then_some(pos);
        }
        // The added policies before `pos`, and whether one is at `pos`: their
        // positions grow with their index.
        let (mut lo, mut hi) = (0, self.delta.added.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.added_position(mid) < pos {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo < self.delta.added.len() && self.added_position(lo) == pos {
            return Some(self.delta.added[lo].id as usize);
        }
        // The (pos - lo)-th compiled policy that is not removed.
        let mut b = pos - lo;
        for &r in &self.delta.removed {
            if r as usize <= b {
                b += 1;
            } else {
                break;
            }
        }
        (b < self.base.len()).then_some(b)
    }

    /// Where a policy inserted before the policy of reference `before` (last: `None`)
    /// goes: its anchor and its index in [`Delta::added`].
    fn spot(&self, before: Option<usize>) -> (u32, usize) {
        match before {
            None => (self.base.len() as u32, self.delta.added.len()),
            Some(r) if r < self.base.len() => {
                let b = r as u32;
                (b, self.delta.added.partition_point(|a| a.anchor <= b))
            }
            Some(r) => {
                let k = self.added_index(r);
                (self.delta.added[k].anchor, k)
            }
        }
    }

    /// The SA-name map of `inbound` or outbound SAs.
    fn by_sa(&mut self, inbound: bool) -> &mut HashMap<String, Vec<usize>> {
        if inbound {
            &mut self.by_inbound_sa
        } else {
            &mut self.by_outbound_sa
        }
    }

    /// Adds reference `r` to `sa`'s list, in policy order (`r`'s policy is in place).
    fn remember_ref(&mut self, inbound: bool, sa: &str, r: usize) {
        let pos = self.position_of_ref(r);
        let map = if inbound {
            &self.by_inbound_sa
        } else {
            &self.by_outbound_sa
        };
        let at = map
            .get(sa)
            .map(|v| v.partition_point(|&x| self.position_of_ref(x) < pos));
        match at {
            Some(at) => self
                .by_sa(inbound)
                .get_mut(sa)
                .expect("found")
                .insert(at, r),
            None => {
                self.by_sa(inbound).insert(sa.to_owned(), vec![r]);
            }
        }
    }

    /// Takes reference `r` out of `sa`'s list (`r`'s policy still in place).
    fn forget_ref(&mut self, inbound: bool, sa: &str, r: usize) {
        let pos = self.position_of_ref(r);
        let map = if inbound {
            &self.by_inbound_sa
        } else {
            &self.by_outbound_sa
        };
        let Some(at) = map
            .get(sa)
            .map(|v| v.partition_point(|&x| self.position_of_ref(x) < pos))
        else {
            return;
        };
        let map = self.by_sa(inbound);
        let v = map.get_mut(sa).expect("found");
        debug_assert_eq!(v.get(at), Some(&r));
        v.remove(at);
        if v.is_empty() {
            map.remove(sa);
        }
    }

    /// Inserts `policy` (checked, its SA names resolved by the caller; its name not
    /// taken) before the policy of reference `before`, or last. Compiles nothing: the
    /// policy joins the changes pending (see "Live changes" in the [module docs](self)),
    /// unless that makes more than [`DELTA_MAX`] of them, when the SPD is rebuilt.
    pub(crate) fn insert_policy(&mut self, before: Option<usize>, policy: Policy) {
        let (anchor, k) = self.spot(before);
        self.insert_at(anchor, k, policy);
        self.after_change();
    }

    fn insert_at(&mut self, anchor: u32, k: usize, policy: Policy) {
        let id = self.delta.next_id;
        self.delta.next_id = id.checked_add(1).expect("fewer than 2^32 policies");
        self.names.insert(policy.name.as_str().into(), id);
        let sas = [(policy.sa_in.clone(), true), (policy.sa_out.clone(), false)];
        let policy = Arc::new(policy);
        self.delta.added.insert(k, Added { anchor, id, policy });
        for (sa, inbound) in sas {
            if let Some(sa) = sa {
                self.remember_ref(inbound, &sa, id as usize);
            }
        }
    }

    /// Removes the policy of reference `r`: masked out of the compiled classifiers if
    /// it is one of theirs, dropped from the pending changes if it was added since.
    pub(crate) fn remove_policy(&mut self, r: usize) {
        self.remove_ref(r);
        self.after_change();
    }

    fn remove_ref(&mut self, r: usize) {
        let p = self.policy_ref(r);
        let (name, direction) = (p.name.clone(), p.direction);
        let sas = [(p.sa_in.clone(), true), (p.sa_out.clone(), false)];
        for (sa, inbound) in sas {
            if let Some(sa) = sa {
                self.forget_ref(inbound, &sa, r);
            }
        }
        self.names.remove(name.as_str());
        if r < self.base.len() {
            let b = r as u32;
            let at = self.delta.removed.partition_point(|&x| x < b);
            self.delta.removed.insert(at, b);
            if direction.covers(Direction::Outbound) {
                self.outbound.remove_policy(b);
            }
            if direction.covers(Direction::Inbound) {
                self.inbound.remove_policy(b);
            }
        } else {
            let k = self.added_index(r);
            self.delta.added.remove(k);
        }
    }

    /// Replaces the policy of reference `r` with `policy` (of the same name), in its
    /// place: a removal and an insertion there.
    pub(crate) fn replace_policy(&mut self, r: usize, policy: Policy) {
        let (anchor, k) = self.spot(Some(r));
        self.remove_ref(r);
        self.insert_at(anchor, k, policy);
        self.after_change();
    }

    fn after_change(&mut self) {
        self.ordered = std::sync::OnceLock::new();
        self.sas.clear();
        let partitioned = matches!(self.outbound.engine, Engine::Partitioned { .. });
        if self.delta.len() > DELTA_MAX || !partitioned {
            self.rebuild();
        }
    }

    /// True when changes are pending ([`REBUILD_DUE`] or more) and the classifiers
    /// should be compiled again from the policies in order (off the packet thread: a
    /// [`Gateway`](crate::Gateway)'s `edit_policies`, `compile`, `commit_policies`).
    pub(crate) fn rebuild_due(&self) -> bool {
        self.delta.len() >= REBUILD_DUE
    }

    /// Changes pending since the compile.
    pub(crate) fn pending_changes(&self) -> usize {
        self.delta.len()
    }

    /// Compiles the classifiers again from the policies in order (no change pending
    /// afterwards). References change.
    pub(crate) fn rebuild(&mut self) {
        let policies = self.take_ordered();
        *self = Spd::with_policies(policies);
    }

    /// The policies in order, moved out (the SPD is left empty of them); copied when
    /// a [`PolicySnapshot`] still shares them.
    fn take_ordered(&mut self) -> Vec<Policy> {
        let base = core::mem::take(&mut self.base);
        let removed = core::mem::take(&mut self.delta.removed);
        let added = core::mem::take(&mut self.delta.added);
        let base = match Arc::try_unwrap(base) {
            Ok(base) => base,
            Err(shared) => return ordered_iter(&shared, &removed, &added).cloned().collect(),
        };
        let mut out = Vec::with_capacity(base.len() + added.len() - removed.len());
        let mut added = added.into_iter().peekable();
        let mut removed = removed.into_iter().peekable();
        for (b, p) in base.into_iter().enumerate() {
            while let Some(a) = added.next_if(|a| a.anchor as usize <= b) {
                out.push(Arc::unwrap_or_clone(a.policy));
            }
            if removed.next_if_eq(&(b as u32)).is_none() {
                out.push(p);
            }
        }
        out.extend(added.map(|a| Arc::unwrap_or_clone(a.policy)));
        out
    }

    /// The policies in order, borrowed.
    fn iter_ordered(&self) -> impl Iterator<Item = &Policy> {
        ordered_iter(&self.base, &self.delta.removed, &self.delta.added)
    }

    /// The policies as they are now, shared with this SPD: O(changes pending), no
    /// policy copied (see [`PolicySnapshot`]).
    pub(crate) fn snapshot(&self) -> PolicySnapshot {
        PolicySnapshot {
            base: Arc::clone(&self.base),
            removed: self.delta.removed.clone(),
            added: self.delta.added.clone(),
        }
    }

    /// A copy of the policies, in order.
    pub(crate) fn policies_to_vec(&self) -> Vec<Policy> {
        self.iter_ordered().cloned().collect()
    }

    /// The first policy, in order, that names `sa_name` as its SA of `direction`.
    pub fn first_policy_naming(&self, sa_name: &str, direction: Direction) -> Option<&Policy> {
        let map = match direction {
            Direction::Outbound => &self.by_outbound_sa,
            Direction::Inbound => &self.by_inbound_sa,
        };
        map.get(sa_name)
            .and_then(|v| v.first())
            .map(|&r| self.policy_ref(r))
    }

    /// The same policies with freshly compiled classifiers and no SAs: for benchmarks
    /// of the compile step alone (parsing excluded).
    #[doc(hidden)]
    pub fn recompiled(&self, kind: EngineKind) -> Spd {
        Spd::build(self.policies_to_vec(), Vec::new(), kind)
    }

    /// Heap bytes of the non-first fragment index alone (part of
    /// [`Spd::compiled_bytes`]), for the measurements in the module docs.
    #[doc(hidden)]
    pub fn fragment_index_bytes(&self) -> usize {
        [&self.outbound, &self.inbound]
            .iter()
            .filter_map(|t| t.fragments.as_ref())
            .map(FragmentIndex::heap_bytes)
            .sum()
    }

    /// Shape of the compiled classifier (outbound IPv4), for tuning.
    #[doc(hidden)]
    pub fn engine_stats(&self) -> String {
        match &self.outbound.engine {
            Engine::Partitioned { v4, v6 } => v4.stats() + "IPv6:\n" + &v6.stats(),
            _ => String::new(),
        }
    }

    /// The policies, in file order.
    ///
    /// After changes to a live gateway's policies (see "Live changes" in the [module
    /// docs](self)), the first call copies them into order, O(n).
    pub fn policies(&self) -> &[Policy] {
        if self.delta.is_empty() {
            &self.base
        } else {
            self.ordered.get_or_init(|| self.policies_to_vec())
        }
    }

    /// The SAs of the file's `[[sa]]` tables, in file order.
    pub fn sas(&self) -> &[NamedSa] {
        &self.sas
    }

    /// Takes the SA configurations out (to create the
    /// [`SecurityAssociation`](crate::SecurityAssociation)s); the policies keep naming
    /// them, and [`Spd::sas`] is empty afterwards.
    pub fn take_sas(&mut self) -> Vec<NamedSa> {
        core::mem::take(&mut self.sas)
    }

    /// The decision of the policy at position `index` of [`Spd::policies`].
    fn decision(&self, index: usize, direction: Direction) -> Decision<'_> {
        let p = &self.policies()[index];
        Decision {
            action: p.action,
            policy: Some(&p.name),
            policy_index: Some(index),
            sa: p.sa(direction),
        }
    }

    /// The table of `direction`.
    #[inline]
    fn table(&self, direction: Direction) -> &Table {
        match direction {
            Direction::Outbound => &self.outbound,
            Direction::Inbound => &self.inbound,
        }
    }

    /// The decision of the policy of reference `r` for `direction`.
    fn decision_of_ref(&self, r: usize, direction: Direction) -> Decision<'_> {
        let p = self.policy_ref(r);
        Decision {
            action: p.action,
            policy: Some(&p.name),
            policy_index: Some(self.position_of_ref(r)),
            sa: p.sa(direction),
        }
    }

    /// The first, in policy order, of the compiled rule `rule` (a position in `table`,
    /// the compiled classifier's answer, which leaves the removed policies out) and the
    /// policies added since the compile that `hit` accepts (their direction included):
    /// the answer a classifier compiled from the policies as they are now would give.
    #[inline(never)]
    fn first_with_added(
        &self,
        table: &Table,
        rule: Option<usize>,
        hit: impl Fn(&Policy) -> bool,
    ) -> Option<Winner> {
        // Added policies before the compiled answer's are those anchored at or before it.
        let limit = rule.map_or(u32::MAX, |t| table.rules[t]);
        self.delta
            .added
            .iter()
            .take_while(|a| a.anchor <= limit)
            .position(|a| hit(&a.policy))
            .map(Winner::Added)
            .or(rule.map(Winner::Compiled))
    }

    /// The decision of `winner` for `table`'s direction, and whether its policy looks
    /// at ports or ICMP fields.
    fn winner_decision<'s>(
        &'s self,
        table: &'s Table,
        winner: Winner,
        direction: Direction,
    ) -> (Decision<'s>, bool) {
        match winner {
            Winner::Compiled(t) => {
                let mut d = table.rule_decision(t);
                d.policy_index = Some(self.position_of_ref(table.rules[t] as usize));
                (d, table.out[t].ports_or_icmp)
            }
            Winner::Added(k) => {
                let a = &self.delta.added[k];
                let d = Decision {
                    action: a.policy.action,
                    policy: Some(&a.policy.name),
                    policy_index: Some(self.added_position(k)),
                    sa: a.policy.sa(direction),
                };
                (d, a.policy.has_port_or_icmp_selector())
            }
        }
    }

    /// The decision the compiled classifier gives for `flow`, with the changes since
    /// the compile (if any) taken into account.
    #[inline]
    fn classify(&self, flow: &Flow) -> Decision<'_> {
        let mut decision = Decision::NO_MATCH;
        self.classify_into(flow, &mut decision);
        decision
    }

    /// [`Spd::classify`] into `out`.
    #[inline(never)]
    fn classify_into<'s>(&'s self, flow: &Flow, out: &mut Decision<'s>) {
        let table = self.table(flow.direction);
        let Some(rule) = Self::compiled_rule(table, flow) else {
            // Mixed families come from no real packet: the plain scan answers.
            *out = self.lookup_linear(flow);
            return;
        };
        self.decide_into(table, flow, rule, out);
    }

    /// The decision for `flow` given `rule`, the answer of `table`'s compiled
    /// classifier (its direction's), with the changes since the compile (if any) taken
    /// into account, written into `out`.
    ///
    /// Each way writes its decision straight into `out`: a decision built aside and
    /// copied there took 14 more instructions a lookup (323 instead of 309, among 1,000
    /// IPv4 policies).
    #[inline(always)]
    fn decide_into<'s>(
        &'s self,
        table: &'s Table,
        flow: &Flow,
        rule: Option<usize>,
        out: &mut Decision<'s>,
    ) {
        match rule {
            Some(rule) if self.delta.is_empty() => *out = table.rule_decision(rule),
            None if self.delta.is_empty() => *out = Decision::NO_MATCH,
            _ => {
                *out = match self.first_with_added(table, rule, |p| p.matches(flow)) {
                    Some(w) => self.winner_decision(table, w, flow.direction).0,
                    None => Decision::NO_MATCH,
                }
            }
        }
    }

    /// The first rule of `table`'s compiled classifier (a position in it) that matches
    /// `flow`, rules removed since the compile left out; `None` for a flow of mixed
    /// address families.
    #[inline(always)]
    fn compiled_rule(table: &Table, flow: &Flow) -> Option<Option<usize>> {
        let (a, b) = port_dims(flow);
        let masked = |r: u32| table.is_removed(r);
        // (Only a partitioned classifier has rules removed: changes to the others
        // rebuild them at once.)
        Some(match &table.engine {
            Engine::Partitioned { v4, v6 } => match family_key(flow, a, b) {
                Family::V4(k) if table.removed_count == 0 => v4.lookup(&k.map(|x| x as u32)),
                Family::V4(k) => v4.lookup_masked(&k.map(|x| x as u32), masked),
                Family::V6(k) if table.removed_count == 0 => v6.lookup(&k),
                Family::V6(k) => v6.lookup_masked(&k, masked),
                Family::Mixed => return None,
            },
            Engine::Tree { v4, v6 } => match family_key(flow, a, b) {
                Family::V4(k) => v4.lookup(&k),
                Family::V6(k) => v6.lookup(&k),
                Family::Mixed => return None,
            },
            Engine::BitVector(c) => c.lookup(&Key {
                src: flow.src,
                dst: flow.dst,
                protocol: flow.protocol,
                a,
                b,
            }),
        })
    }

    /// The first policy matching `flow` (compiled classifier: a direction with at most
    /// 16 policies of the flow's address family is a scan of their compact boxes, in
    /// order); DISCARD with no policy if none does. The SA is the one of the flow's
    /// direction.
    #[inline]
    pub fn lookup(&self, flow: &Flow) -> Decision<'_> {
        self.classify(flow)
    }

    /// [`Spd::lookup`] of the flow of `pkt` in `direction`, read straight from its
    /// bytes, when `pkt` is a whole packet without IPv6 extension headers and the
    /// compiled classifier answers alone; `None` otherwise, and the caller parses the
    /// packet's [`Flow`] and looks that up. The gateway's way for the packets it gets
    /// in the clear: the same answer without building a flow.
    #[inline]
    pub(crate) fn lookup_whole_packet(
        &self,
        direction: Direction,
        pkt: &[u8],
    ) -> Option<Decision<'_>> {
        // Each family's key is built where the look-up reads it: moved as a
        // `PacketKey`, it would be copied with wide loads just after its narrow stores,
        // which wait (store forwarding fails).
        self.lookup_compiled_alone(direction, |v4, v6| match *pkt.first()? >> 4 {
            4 => {
                let k = ipv4_packet_key(pkt)?;
                Some(v4.lookup(&k))
            }
            6 => {
                let k = ipv6_packet_key(pkt)?;
                Some(v6.lookup(&k))
            }
            _ => None,
        })
    }

    /// [`Spd::lookup`] of the flow of a whole packet in `direction`, given as its
    /// classifier key ([`packet_key`]), when the compiled classifier answers alone;
    /// `None` otherwise.
    #[inline]
    pub(crate) fn lookup_packet_key(
        &self,
        direction: Direction,
        key: &PacketKey,
    ) -> Option<Decision<'_>> {
        self.lookup_compiled_alone(direction, |v4, v6| {
            Some(match key {
                PacketKey::V4(k) => v4.lookup(k),
                PacketKey::V6(k) => v6.lookup(k),
            })
        })
    }

    /// The decision for the rule that `classify` finds with `direction`'s IPv4 and
    /// IPv6 classifiers, when they answer alone (partitioned ones, no change since the
    /// compile); `None` otherwise or when `classify` declines (`None`).
    #[inline(always)]
    fn lookup_compiled_alone(
        &self,
        direction: Direction,
        classify: impl FnOnce(&Partitioned<u32>, &Partitioned<u128>) -> Option<Option<usize>>,
    ) -> Option<Decision<'_>> {
        let table = self.table(direction);
        let Engine::Partitioned { v4, v6 } = &table.engine else {
            return None;
        };
        if !self.delta.is_empty() || table.removed_count != 0 {
            return None;
        }
        Some(match classify(v4, v6)? {
            Some(rule) => table.rule_decision(rule),
            None => Decision::NO_MATCH,
        })
    }

    /// [`Spd::lookup`] of every flow of `flows`, answered in `out` (`out[i]` for
    /// `flows[i]`): exactly what `lookup` answers for each, faster when there are
    /// several. Allocates nothing.
    ///
    /// The flows are looked up in bursts of 32 (`rte_acl_classify`'s way): the lookups
    /// of a burst that use the same classifier (direction and address family) advance
    /// together, stage by stage, and each stage first loads what the next one
    /// reads for every flow, so the cache misses of the flows overlap instead of
    /// following one another. A classifier small enough to stay mostly in the caches
    /// (under 16 MiB: some 20,000-40,000 policies) has few misses to overlap, and its
    /// flows are looked up one at a time. Each flow's answer is reached by the same steps as a
    /// lookup of it alone (the property tests and the `spd_differential` fuzz target
    /// compare them, and both with [`Spd::lookup_linear`]).
    ///
    /// # Panics
    ///
    /// If `out` and `flows` differ in length.
    pub fn lookup_burst<'s>(&'s self, flows: &[Flow], out: &mut [Decision<'s>]) {
        assert_eq!(
            flows.len(),
            out.len(),
            "lookup_burst: one decision per flow"
        );
        self.lookup_burst_with(flows, out, false);
    }

    /// [`Spd::lookup_burst`] with the stages of the burst lookup whatever the size of
    /// the classifier (a small one otherwise answers one flow at a time): for the tests,
    /// whose rule sets are small.
    #[doc(hidden)]
    pub fn lookup_burst_staged<'s>(&'s self, flows: &[Flow], out: &mut [Decision<'s>]) {
        assert_eq!(
            flows.len(),
            out.len(),
            "lookup_burst: one decision per flow"
        );
        self.lookup_burst_with(flows, out, true);
    }

    fn lookup_burst_with<'s>(&'s self, flows: &[Flow], out: &mut [Decision<'s>], staged: bool) {
        if !staged && !self.outbound.burst_pays() && !self.inbound.burst_pays() {
            // Classifiers that stay in the cache (or other engines): one flow at a
            // time, in one pass whatever their directions.
            for (f, o) in flows.iter().zip(out.iter_mut()) {
                self.classify_into(f, o);
            }
            return;
        }
        for (flows, out) in flows.chunks(pss::BURST).zip(out.chunks_mut(pss::BURST)) {
            for table in [&self.outbound, &self.inbound] {
                self.classify_burst(table, flows, out, staged);
            }
        }
    }

    /// The part of [`Spd::lookup_burst`] that `table` answers: the flows (at most
    /// [`pss::BURST`]) whose direction's table it is.
    fn classify_burst<'s>(
        &'s self,
        table: &'s Table,
        flows: &[Flow],
        out: &mut [Decision<'s>],
        staged: bool,
    ) {
        const N: usize = pss::BURST;
        let (v4, v6) = match &table.engine {
            Engine::Partitioned { v4, v6 } if staged || table.burst_pays() => (v4, v6),
            // The other engines, and partitioned classifiers small enough to stay in the
            // cache (no misses to overlap): one flow at a time, exactly `lookup`.
            _ => {
                for (f, o) in flows.iter().zip(out.iter_mut()) {
                    if core::ptr::eq(self.table(f.direction), table) {
                        self.classify_into(f, o);
                    }
                }
                return;
            }
        };
        // The flows of each family (their positions in `flows`). Each family's keys
        // are gathered by its own call, so that a burst of one family does not pay for
        // clearing the other's arrays (2.5 KiB for IPv6 keys).
        let (mut at4, mut at6) = ([0u8; N], [0u8; N]);
        let (mut n4, mut n6) = (0, 0);
        for (j, f) in flows.iter().enumerate() {
            if !core::ptr::eq(self.table(f.direction), table) {
                continue;
            }
            match (f.src, f.dst) {
                (IpAddr::V4(_), IpAddr::V4(_)) => {
                    at4[n4] = j as u8;
                    n4 += 1;
                }
                (IpAddr::V6(_), IpAddr::V6(_)) => {
                    at6[n6] = j as u8;
                    n6 += 1;
                }
                // Mixed families come from no real packet: the plain scan answers.
                _ => out[j] = self.lookup_linear(f),
            }
        }
        if n4 > 0 {
            let key = |f: &Flow| {
                let (a, b) = port_dims(f);
                match family_key(f, a, b) {
                    Family::V4(k) => k.map(|x| x as u32),
                    _ => unreachable!("an IPv4 flow"),
                }
            };
            self.classify_family(table, v4, flows, &at4[..n4], key, out, staged);
        }
        if n6 > 0 {
            let key = |f: &Flow| {
                let (a, b) = port_dims(f);
                match family_key(f, a, b) {
                    Family::V6(k) => k,
                    _ => unreachable!("an IPv6 flow"),
                }
            };
            self.classify_family(table, v6, flows, &at6[..n6], key, out, staged);
        }
    }

    /// The decisions of `table` for the flows at positions `at` of `flows` (all of
    /// `part`'s family, whose key `key` gives), written at the same positions of `out`.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn classify_family<'s, K: pss::KeyInt>(
        &'s self,
        table: &'s Table,
        part: &Partitioned<K>,
        flows: &[Flow],
        at: &[u8],
        key: impl Fn(&Flow) -> [K; 5],
        out: &mut [Decision<'s>],
        staged: bool,
    ) {
        const N: usize = pss::BURST;
        let n = at.len();
        let mut keys = [[K::default(); 5]; N];
        for (k, &j) in keys.iter_mut().zip(at) {
            *k = key(&flows[usize::from(j)]);
        }
        let mut rules = [None; N];
        let (k, r) = (&keys[..n], &mut rules[..n]);
        if table.removed_count == 0 {
            part.lookup_burst(k, |_| false, r, staged);
        } else {
            part.lookup_burst(k, |r: u32| table.is_removed(r), r, staged);
        }
        table.load_ahead(&rules[..n]);
        for (&j, &rule) in at.iter().zip(&rules[..n]) {
            let j = usize::from(j);
            self.decide_into(table, &flows[j], rule, &mut out[j]);
        }
    }

    /// The reference: a naive first-match scan over the policies in file order.
    /// Always answers exactly as [`Spd::lookup`].
    pub fn lookup_linear(&self, flow: &Flow) -> Decision<'_> {
        match self.policies().iter().position(|p| p.matches(flow)) {
            Some(i) => self.decision(i, flow.direction),
            None => Decision::NO_MATCH,
        }
    }

    /// The stateless answer for a non-first fragment of `flow` (RFC 4301 §7; its ports
    /// and ICMP fields, if any, are ignored): the first policy, in file order, that
    /// could match it with its port and ICMP selectors treated as wildcards decides if
    /// it does not look at ports or ICMP fields, since then it certainly matches; if it
    /// does, the fragment may or may not be its traffic and the answer is
    /// [`FragmentDecision::Unresolved`]. No policy that could match: DISCARD
    /// ([`Decision::NO_MATCH`]). An IPv6 flow whose protocol is an extension header
    /// (Hop-by-Hop, Routing, Fragment, Destination Options: its upper-layer protocol is
    /// not visible) is unresolved with no candidate policy.
    ///
    /// Answered by a classifier built at load time (see the [module docs](self)), at
    /// the cost of a lookup. [`Spd::lookup_non_first_fragment_linear`] is the plain
    /// reference.
    #[inline]
    pub fn lookup_non_first_fragment(&self, flow: &Flow) -> FragmentDecision<'_> {
        if flow.dst.is_ipv6() && is_ipv6_extension(flow.protocol) {
            return FragmentDecision::Unresolved { could_match: None };
        }
        let table = self.table(flow.direction);
        let rule = match &table.fragments {
            Some(ix) => ix.lookup(flow, table, &self.base),
            None => {
                // No compiled rule looks at ports: the compiled lookup with OPAQUE
                // ports is the first of them that could match, and it decides.
                let mut f = *flow;
                (f.src_port, f.dst_port, f.icmp_type, f.icmp_code) = (None, None, None, None);
                if self.delta.is_empty() {
                    return FragmentDecision::Decided(self.lookup(&f));
                }
                Self::compiled_rule(table, &f)
            }
        };
        let Some(rule) = rule else {
            // Mixed families come from no real packet: the plain scan answers.
            return self.lookup_non_first_fragment_linear(flow);
        };
        if !self.delta.is_empty() {
            return match self.first_with_added(table, rule, |p| p.matches_with_ports_unknown(flow))
            {
                None => FragmentDecision::Decided(Decision::NO_MATCH),
                Some(w) => match self.winner_decision(table, w, flow.direction) {
                    (d, true) => FragmentDecision::Unresolved {
                        could_match: Some(d),
                    },
                    (d, false) => FragmentDecision::Decided(d),
                },
            };
        }
        match rule {
            None => FragmentDecision::Decided(Decision::NO_MATCH),
            Some(rule) if table.out[rule].ports_or_icmp => FragmentDecision::Unresolved {
                could_match: Some(table.rule_decision(rule)),
            },
            Some(rule) => FragmentDecision::Decided(table.rule_decision(rule)),
        }
    }

    /// The reference for [`Spd::lookup_non_first_fragment`]: a scan over the policies
    /// in file order with [`Policy::matches_with_ports_unknown`] and
    /// [`Policy::has_port_or_icmp_selector`]. Always answers exactly as it.
    pub fn lookup_non_first_fragment_linear(&self, flow: &Flow) -> FragmentDecision<'_> {
        if flow.dst.is_ipv6() && is_ipv6_extension(flow.protocol) {
            return FragmentDecision::Unresolved { could_match: None };
        }
        match self
            .policies()
            .iter()
            .position(|p| p.matches_with_ports_unknown(flow))
        {
            None => FragmentDecision::Decided(Decision::NO_MATCH),
            Some(i) if self.policies()[i].has_port_or_icmp_selector() => {
                FragmentDecision::Unresolved {
                    could_match: Some(self.decision(i, flow.direction)),
                }
            }
            Some(i) => FragmentDecision::Decided(self.decision(i, flow.direction)),
        }
    }

    /// What the data path answers for a packet with the selectors `flow` when it holds
    /// no fragment state: [`Spd::lookup`], or, for a flow whose ports (or ICMP type and
    /// code) are unknown ([`Flow::ports_unknown`]: a non-first fragment),
    /// [`Spd::lookup_non_first_fragment`]. The policy tools answer flows this way.
    #[inline]
    pub fn lookup_as_packet(&self, flow: &Flow) -> FragmentDecision<'_> {
        if flow.ports_unknown() {
            self.lookup_non_first_fragment(flow)
        } else {
            FragmentDecision::Decided(self.lookup(flow))
        }
    }

    /// What the data path does with an IP packet when it holds no fragment state: reads
    /// its selectors ([`Flow::from_packet_with_fragment`]) and looks them up, with the
    /// fragment rules of the [module docs](self):
    ///
    /// * a whole packet: [`Spd::lookup`];
    /// * a fragment must first pass [`Fragment::check_transport_header`]
    ///   ([`FragmentError::TooShort`], [`FragmentError::Overlap`]);
    /// * a first fragment: [`Spd::lookup`];
    /// * a non-first fragment: [`Spd::lookup_non_first_fragment`], and
    ///   [`FragmentError::Unresolved`] when that cannot decide.
    ///
    /// Errors are [`Error::Malformed`] for a packet that cannot be read and
    /// [`Error::Fragment`] for a fragment the data path drops.
    ///
    /// A whole packet's selectors (IPv4, or IPv6 without extension headers) are read
    /// straight into the classifier's key (no [`Flow`] is built), as the gateway reads
    /// them: the same answer, sooner.
    pub fn lookup_packet(&self, direction: Direction, pkt: &[u8]) -> Result<Decision<'_>, Error> {
        if let Some(d) = self.lookup_whole_packet(direction, pkt) {
            return Ok(d);
        }
        let (flow, fragment) =
            Flow::from_packet_with_fragment(direction, pkt).map_err(Error::Malformed)?;
        match fragment {
            None => Ok(self.lookup(&flow)),
            Some(f) => {
                f.check_transport_header(flow.protocol)
                    .map_err(Error::Fragment)?;
                if f.is_first() {
                    Ok(self.lookup(&flow))
                } else {
                    self.lookup_non_first_fragment(&flow)
                        .into_result()
                        .map_err(Error::Fragment)
                }
            }
        }
    }

    /// The decision of the policy at `index` (file order) for `direction`;
    /// [`Decision::NO_MATCH`] for `None`. Out-of-range indices are treated as `None`.
    pub(crate) fn decision_at(&self, index: Option<usize>, direction: Direction) -> Decision<'_> {
        match index {
            Some(i) => match self.ref_at(i) {
                Some(r) => self.decision_of_ref(r, direction),
                None => Decision::NO_MATCH,
            },
            None => Decision::NO_MATCH,
        }
    }

    /// The SA that carries `flow` (the outbound SA to encrypt with, or the inbound SA
    /// the packet must have arrived on), `None` unless the decision is PROTECT.
    pub fn sa_for(&self, flow: &Flow) -> Option<&str> {
        self.lookup(flow).sa
    }

    /// The policies an inbound SA serves (those naming it as their inbound SA), in file
    /// order: their selectors are what packets decapsulated by that SA must match.
    pub fn policy_selectors_for_sa(&self, sa_name: &str) -> Vec<&Policy> {
        self.by_inbound_sa
            .get(sa_name)
            .map(|v| v.iter().map(|&r| self.policy_ref(r)).collect())
            .unwrap_or_default()
    }

    /// RFC 4301 §5.2 step 4: after the inbound SA `sa_name` decapsulated a packet, its
    /// inner packet (`flow`, direction inbound) must match the selectors of a policy that
    /// SA serves. `false` means: drop it and count `policy_mismatch`.
    ///
    /// The check is against the SA's own policies' selectors, as RFC 4301 says, not a
    /// fresh first-match lookup: an earlier, broader rule does not change which traffic
    /// the SA was negotiated for.
    pub fn check_inbound(&self, sa_name: &str, flow: &Flow) -> bool {
        self.inbound_policy(sa_name, flow).is_some()
    }

    /// The policy under which [`Spd::check_inbound`] accepts `flow` after the inbound SA
    /// `sa_name` decapsulated it: the first, in file order, of the policies that SA
    /// serves whose selectors `flow` matches; `None` when the check fails.
    pub fn inbound_policy(&self, sa_name: &str, flow: &Flow) -> Option<&str> {
        self.inbound_policy_index(sa_name, flow)
            .map(|r| self.policy_ref(r).name())
    }

    /// The reference ([`Spd::policy_ref`]) of [`Spd::inbound_policy`]'s answer.
    pub(crate) fn inbound_policy_index(&self, sa_name: &str, flow: &Flow) -> Option<usize> {
        let mut f = *flow;
        f.direction = Direction::Inbound;
        let serving = self.by_inbound_sa.get(sa_name)?;
        serving
            .iter()
            .copied()
            .find(|&r| self.policy_ref(r).selectors_match(&f))
    }

    /// The policies (references, in order) that name any of `names` as their inbound
    /// SA: those an inbound SA serving these names serves. Borrowed for one name (the
    /// packet path's common case), merged for several (an SA rekeyed make-before-break
    /// serves its predecessor's policies too).
    pub(crate) fn serving<'s>(&'s self, names: &[String]) -> Cow<'s, [usize]> {
        match names {
            [one] => Cow::Borrowed(self.by_inbound_sa.get(one).map_or(&[][..], Vec::as_slice)),
            _ => {
                let mut all: Vec<usize> = names
                    .iter()
                    .filter_map(|n| self.by_inbound_sa.get(n))
                    .flatten()
                    .copied()
                    .collect();
                all.sort_unstable();
                all.dedup();
                if !self.delta.is_empty() {
                    all.sort_by_cached_key(|&r| self.position_of_ref(r));
                }
                Cow::Owned(all)
            }
        }
    }

    /// [`Spd::inbound_policy_index`] for an SA that serves the policies of `names`.
    pub(crate) fn inbound_policy_index_serving(
        &self,
        names: &[String],
        flow: &Flow,
    ) -> Option<usize> {
        let mut f = *flow;
        f.direction = Direction::Inbound;
        self.serving(names)
            .iter()
            .copied()
            .find(|&r| self.policy_ref(r).selectors_match(&f))
    }

    /// [`Spd::inbound_policy_index`] for a non-first fragment decapsulated by the SA
    /// `sa_name` whose first fragment the gateway does not remember: the first of the
    /// SA's policies that certainly covers it (it could match with the ports unknown
    /// and does not look at ports or ICMP fields). [`FragmentError::Unresolved`] when
    /// only policies that look at ports could cover it (or an IPv6 fragment hides its
    /// protocol), [`Error::PolicyMismatch`] when none could.
    pub(crate) fn inbound_policy_index_non_first_fragment(
        &self,
        names: &[String],
        flow: &Flow,
    ) -> Result<usize, Error> {
        if flow.dst.is_ipv6() && is_ipv6_extension(flow.protocol) {
            return Err(Error::Fragment(FragmentError::Unresolved));
        }
        let mut f = *flow;
        f.direction = Direction::Inbound;
        let serving = self.serving(names);
        let mut could = serving
            .iter()
            .copied()
            .filter(|&r| self.policy_ref(r).matches_with_ports_unknown(&f))
            .peekable();
        if could.peek().is_none() {
            return Err(Error::PolicyMismatch);
        }
        could
            .find(|&r| !self.policy_ref(r).has_port_or_icmp_selector())
            .ok_or(Error::Fragment(FragmentError::Unresolved))
    }

    /// RFC 4301 §5.2 for packets that arrived **without** IPsec: only a BYPASS decision
    /// lets them in. Cleartext that a PROTECT policy covers is dropped (it should have
    /// been encrypted), as is anything DISCARD or no policy covers.
    pub fn inbound_cleartext_allowed(&self, flow: &Flow) -> bool {
        let mut f = *flow;
        f.direction = Direction::Inbound;
        self.lookup(&f).action == Action::Bypass
    }

    /// Heap bytes used by the compiled classifiers of both directions, the non-first
    /// fragment index included (policies and SAs not included).
    pub fn compiled_bytes(&self) -> usize {
        [&self.outbound, &self.inbound]
            .iter()
            .map(|t| {
                let engine = match &t.engine {
                    Engine::Partitioned { v4, v6 } => v4.heap_bytes() + v6.heap_bytes(),
                    Engine::Tree { v4, v6 } => v4.heap_bytes() + v6.heap_bytes(),
                    Engine::BitVector(c) => c.heap_bytes(),
                };
                let fragments = t.fragments.as_ref().map_or(0, FragmentIndex::heap_bytes);
                engine
                    + fragments
                    + t.rules.len() * 4
                    + t.out
                        .iter()
                        .map(|o| {
                            size_of::<RuleOut>()
                                + o.name.len()
                                + o.sa.as_ref().map_or(0, |s| s.len())
                        })
                        .sum::<usize>()
            })
            .sum()
    }
}

#[cfg(test)]
mod change_tests {
    //! [`Spd::changed`] (what a live gateway does to its SPD) gives the SPD that
    //! [`Spd::with_policies`] builds from the changed list (what it did before).

    use super::*;
    use crate::spd::parse::parse_one_policy;

    /// xorshift64*: deterministic.
    pub(super) struct Rng(pub(super) u64);
    impl Rng {
        pub(super) fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 16) as usize % n
        }
        fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
            v[self.below(v.len())]
        }
    }

    const LOCAL: [&str; 5] = [
        "10.0.0.0/24",
        "10.0.0.5",
        "10.0.1.0/24",
        "2001:db8::/32",
        "",
    ];
    const REMOTE: [&str; 4] = ["172.16.0.0/12", "172.16.3.4", "2001:db8:1::/48", ""];
    const HOSTS: [&str; 7] = [
        "10.0.0.5",
        "10.0.0.9",
        "10.0.1.1",
        "172.16.3.4",
        "172.17.0.1",
        "2001:db8::1",
        "2001:db8:1::2",
    ];

    /// A random policy called `name`, its SAs among `o0..o2` / `i0..i2`.
    pub(super) fn policy(rng: &mut Rng, name: &str) -> Policy {
        let direction = rng.pick(&["both", "outbound", "inbound"]);
        let action = rng.pick(&["protect", "bypass", "discard"]);
        let mut t = format!("name = \"{name}\"\ndirection = \"{direction}\"\n");
        for (key, set) in [("local", &LOCAL[..]), ("remote", &REMOTE[..])] {
            let a = rng.pick(set);
            if !a.is_empty() {
                t += &format!("{key} = \"{a}\"\n");
            }
        }
        match rng.below(5) {
            0 => t += "protocol = \"tcp\"\nremote_port = \"443\"\n",
            1 => t += "protocol = \"udp\"\nlocal_port = \"1000-2000\"\n",
            2 => t += "protocol = \"icmp\"\nicmp_type = 8\n",
            3 => t += "protocol = \"icmp\"\nicmp_type = 3\nicmp_code = 1\n",
            _ => {}
        }
        t += &format!("action = \"{action}\"\n");
        if action == "protect" {
            let (o, i) = (rng.below(3), rng.below(3));
            t += &match direction {
                "both" => format!("sa = [\"o{o}\", \"i{i}\"]\n"),
                "outbound" => format!("sa = \"o{o}\"\n"),
                _ => format!("sa = \"i{i}\"\n"),
            };
        }
        parse_one_policy(&t).expect("a valid policy")
    }

    fn flows() -> Vec<Flow> {
        let mut v = Vec::new();
        for d in [Direction::Outbound, Direction::Inbound] {
            for s in HOSTS {
                for t in HOSTS {
                    let (s, t): (IpAddr, IpAddr) = (s.parse().unwrap(), t.parse().unwrap());
                    if s.is_ipv4() != t.is_ipv4() {
                        continue;
                    }
                    v.push(Flow::new(d, s, t, 6).ports(1500, 443));
                    v.push(Flow::new(d, s, t, 17).ports(443, 1500));
                    v.push(Flow::new(d, s, t, 1).icmp(8, 0));
                    v.push(Flow::new(d, s, t, 50));
                }
            }
        }
        v
    }

    fn assert_same(changed: &Spd, fresh: &Spd, flows: &[Flow]) {
        assert_eq!(changed.policies(), fresh.policies());
        assert_eq!(changed.policies_to_vec(), fresh.policies());
        for (i, p) in fresh.policies().iter().enumerate() {
            let r = changed
                .ref_of_name(&p.name)
                .expect("every policy has a reference");
            assert_eq!(changed.policy_ref(r), p);
            assert_eq!(changed.position_of_ref(r), i);
            assert_eq!(changed.ref_at(i), Some(r));
        }
        assert_eq!(changed.ref_at(fresh.policies().len()), None);
        assert_eq!(changed.names.len(), fresh.policies().len());
        for (a, b) in [
            (&changed.by_inbound_sa, &fresh.by_inbound_sa),
            (&changed.by_outbound_sa, &fresh.by_outbound_sa),
        ] {
            let positions = |m: &HashMap<String, Vec<usize>>, spd: &Spd| {
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.iter().map(|&r| spd.position_of_ref(r)).collect(),
                        )
                    })
                    .collect::<HashMap<String, Vec<usize>>>()
            };
            assert_eq!(positions(a, changed), positions(b, fresh));
        }
        for d in [Direction::Outbound, Direction::Inbound] {
            for i in 0..=fresh.policies().len() {
                assert_eq!(
                    changed.decision_at(Some(i), d),
                    fresh.decision_at(Some(i), d)
                );
            }
        }
        for f in flows {
            assert_eq!(changed.lookup(f), fresh.lookup(f), "{f:?}");
            assert_eq!(changed.lookup(f), changed.lookup_linear(f), "{f:?}");
            assert_eq!(
                changed.lookup_non_first_fragment(f),
                fresh.lookup_non_first_fragment(f),
                "{f:?}"
            );
            assert_eq!(
                changed.lookup_non_first_fragment(f),
                changed.lookup_non_first_fragment_linear(f),
                "{f:?}"
            );
            for sa in ["i0", "i1", "i2"] {
                assert_eq!(
                    changed.inbound_policy(sa, f),
                    fresh.inbound_policy(sa, f),
                    "{f:?}"
                );
            }
            let names = ["i0".to_owned(), "i2".to_owned()];
            let name_of = |spd: &Spd, r: Option<usize>| r.map(|r| spd.policy_ref(r).name.clone());
            assert_eq!(
                name_of(changed, changed.inbound_policy_index_serving(&names, f)),
                name_of(fresh, fresh.inbound_policy_index_serving(&names, f)),
            );
            let mut g = *f;
            (g.src_port, g.dst_port, g.icmp_type, g.icmp_code) = (None, None, None, None);
            assert_eq!(
                changed.lookup_non_first_fragment(&g),
                fresh.lookup_non_first_fragment(&g),
                "{g:?}"
            );
            assert_eq!(
                changed
                    .inbound_policy_index_non_first_fragment(&names, &g)
                    .map(|r| changed.policy_ref(r).name.clone()),
                fresh
                    .inbound_policy_index_non_first_fragment(&names, &g)
                    .map(|r| fresh.policy_ref(r).name.clone()),
            );
        }
        for d in [Direction::Outbound, Direction::Inbound] {
            for sa in ["o0", "o1", "o2", "i0", "i1", "i2"] {
                assert_eq!(
                    changed.first_policy_naming(sa, d),
                    fresh.first_policy_naming(sa, d)
                );
            }
        }
    }

    #[test]
    fn a_changed_spd_is_the_spd_of_the_changed_policies() {
        let flows = flows();
        let mut rng = Rng(0x5eed_c4a6);
        let mut kept = 0;
        for _ in 0..60 {
            let mut next = 0;
            let mut list: Vec<Policy> = (0..rng.below(6))
                .map(|_| {
                    next += 1;
                    policy(&mut rng, &format!("p{next}"))
                })
                .collect();
            let mut spd = Spd::with_policies(list.clone());
            for _ in 0..12 {
                next += 1;
                let kind = if list.is_empty() { 0 } else { rng.below(3) };
                let change = match kind {
                    0 => {
                        let at = rng.below(list.len() + 1);
                        PolicyChange::Insert(at, policy(&mut rng, &format!("p{next}")))
                    }
                    1 => {
                        let at = rng.below(list.len());
                        let name = list[at].name.clone();
                        PolicyChange::Replace(at, policy(&mut rng, &name))
                    }
                    _ => PolicyChange::Remove(rng.below(list.len())),
                };
                let one_direction = match &change {
                    PolicyChange::Insert(_, p) => p.direction != PolicyDirection::Both,
                    PolicyChange::Remove(at) => list[*at].direction != PolicyDirection::Both,
                    PolicyChange::Replace(at, p) => {
                        p.direction == list[*at].direction && p.direction != PolicyDirection::Both
                    }
                };
                kept += usize::from(one_direction);
                match &change {
                    PolicyChange::Insert(at, p) => list.insert(*at, p.clone()),
                    PolicyChange::Replace(at, p) => list[*at] = p.clone(),
                    PolicyChange::Remove(at) => {
                        list.remove(*at);
                    }
                }
                spd = spd.changed(change);
                assert_same(&spd, &Spd::with_policies(list.clone()), &flows);
                if rng.below(8) == 0 {
                    spd.rebuild();
                    assert_eq!(spd.pending_changes(), 0);
                    assert_same(&spd, &Spd::with_policies(list.clone()), &flows);
                }
            }
        }
        // Many changes kept a direction's classifier (the path this checks).
        assert!(kept > 100, "{kept}");
    }
}

#[cfg(test)]
mod packet_key_tests {
    //! The gateway's ways for whole packets ([`packet_key`], [`Spd::lookup_whole_packet`],
    //! [`Policy::selectors_match_key`]) answer what the [`Flow`] parsed from the packet
    //! does, for any bytes: IPv4 or IPv6, well-formed or not, fragment or not,
    //! whatever the classifier's engine.

    use super::change_tests::{Rng, policy};
    use super::*;
    use proptest::prelude::*;

    /// An IPv4-ish or IPv6-ish packet.
    fn packet() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![ipv4_packet(), ipv6_packet()]
    }

    /// Ports (or ICMP type and code) that the random policies name, and others.
    fn port() -> impl Strategy<Value = u16> {
        prop_oneof![
            Just(443u16),
            Just(1500),
            Just(1000),
            Just(2000),
            Just(8),
            Just(0x0800),
            Just(0x0301),
            any::<u16>(),
        ]
    }

    /// Protocols with ports, with ICMP fields, and with neither.
    fn protocol() -> impl Strategy<Value = u8> {
        prop_oneof![
            Just(6u8),
            Just(17),
            Just(132),
            Just(1),
            Just(58),
            Just(50),
            any::<u8>()
        ]
    }

    /// Appends the upper-layer header (`sport`, `dport`) and `payload` bytes to `p`,
    /// writes the length field at `len_at` (`p.len()` less `len_less`, or `forged`),
    /// then keeps `keep` bytes if `cut`.
    fn finish(
        mut p: Vec<u8>,
        (sport, dport, payload): (u16, u16, usize),
        (len_at, len_less): (usize, usize),
        (honest, forged, cut, keep): (bool, u16, bool, usize),
    ) -> Vec<u8> {
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend(std::iter::repeat_n(0x5a, payload));
        let len = if honest {
            (p.len() - len_less) as u16
        } else {
            forged
        };
        p[len_at..len_at + 2].copy_from_slice(&len.to_be_bytes());
        if cut {
            p.truncate(keep);
        }
        p
    }

    /// An IPv6-ish packet: version, payload length, next header (extension headers
    /// included, which the quick way leaves to the parse), a transport header cut
    /// short, addresses the random policies name.
    fn ipv6_packet() -> impl Strategy<Value = Vec<u8>> {
        let version = prop_oneof![4 => Just(0x60u8), 1 => any::<u8>()];
        let next = prop_oneof![
            4 => protocol(),
            1 => Just(0u8),
            1 => Just(43),
            1 => Just(44),
            1 => Just(60),
        ];
        let host = prop_oneof![
            Just(0x2001_0db8_0000_0000_0000_0000_0000_0001u128),
            Just(0x2001_0db8_0000_0000_0000_0000_0000_0005),
            Just(0x2001_0db8_0001_0000_0000_0000_0000_0002),
            Just(0x2001_0db9_0000_0000_0000_0000_0000_0001),
            any::<u128>(),
        ];
        (
            (version, next, host.clone(), host),
            (port(), port(), 0usize..12),
            (any::<bool>(), any::<u16>(), any::<bool>(), 0usize..100),
        )
            .prop_map(|((v, next, src, dst), upper, length)| {
                let mut p = vec![0u8; 40];
                p[0] = v;
                p[6] = next;
                p[7] = 64;
                p[8..24].copy_from_slice(&src.to_be_bytes());
                p[24..40].copy_from_slice(&dst.to_be_bytes());
                if matches!(next, 0 | 43 | 44 | 60) {
                    // One extension header (a fragment header of a whole packet for
                    // 44), then TCP.
                    p.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 0]);
                }
                finish(p, upper, (4, 40), length)
            })
    }

    /// An IPv4-ish packet: header fields drawn to reach every check of the parse
    /// (version, header length, total length, fragment fields, protocol, a transport
    /// header cut short), addresses and ports that the random policies name.
    fn ipv4_packet() -> impl Strategy<Value = Vec<u8>> {
        let version_ihl = prop_oneof![
            4 => Just(0x45u8),
            1 => Just(0x46),
            1 => Just(0x4f),
            1 => Just(0x44),
            1 => Just(0x65),
            1 => any::<u8>(),
        ];
        let fragment = prop_oneof![
            4 => Just(0u16),
            2 => Just(0x4000),
            1 => Just(0x2000),
            1 => Just(0x0001),
            1 => Just(0x8000),
            1 => any::<u16>(),
        ];
        let host = prop_oneof![
            Just(0x0a00_0005u32),
            Just(0x0a00_0009),
            Just(0x0a00_0101),
            Just(0xac10_0304),
            Just(0xac11_0001),
            any::<u32>(),
        ];
        (
            (version_ihl, fragment, protocol(), host.clone(), host),
            (port(), port(), 0usize..12),
            (any::<bool>(), any::<u16>(), any::<bool>(), 0usize..80),
        )
            .prop_map(|((vi, frag, protocol, src, dst), upper, length)| {
                let options = usize::from(vi & 0x0f).saturating_sub(5) * 4;
                let mut p = vec![0u8; 20 + options];
                p[0] = vi;
                p[6..8].copy_from_slice(&frag.to_be_bytes());
                p[8] = 64;
                p[9] = protocol;
                p[12..16].copy_from_slice(&src.to_be_bytes());
                p[16..20].copy_from_slice(&dst.to_be_bytes());
                finish(p, upper, (2, 0), length)
            })
    }

    /// The key [`Spd::lookup`] builds for `flow`.
    fn flow_key(flow: &Flow) -> Option<PacketKey> {
        let (a, b) = port_dims(flow);
        match family_key(flow, a, b) {
            Family::V4(k) => Some(PacketKey::V4(k.map(|x| x as u32))),
            Family::V6(k) => Some(PacketKey::V6(k)),
            Family::Mixed => None,
        }
    }

    /// Checks `pkt` against `spd`; `partitioned`: its engine is one the quick look-up
    /// serves (it declines for the others).
    fn check(spd: &Spd, partitioned: bool, pkt: &[u8]) {
        let parsed = Flow::from_packet_with_fragment(Direction::Outbound, pkt);
        // An IPv6 packet whose extension headers the parse walks is left to it.
        let walked = pkt.len() > 6 && pkt[0] >> 4 == 6 && matches!(pkt[6], 0 | 43 | 44 | 60);
        let want = match &parsed {
            Ok((flow, None)) if !walked => flow_key(flow),
            _ => None,
        };
        let key = packet_key(pkt);
        assert_eq!(key, want, "{pkt:02x?} parsed as {parsed:?}");
        for direction in [Direction::Outbound, Direction::Inbound] {
            let quick = spd.lookup_whole_packet(direction, pkt);
            let (Some(key), Ok((flow, None))) = (key, &parsed) else {
                assert_eq!(quick, None, "{pkt:02x?}");
                continue;
            };
            let flow = Flow { direction, ..*flow };
            let want = partitioned.then(|| spd.lookup(&flow));
            assert_eq!(quick, want, "{flow:?}");
            for p in spd.policies().iter() {
                assert_eq!(
                    p.selectors_match_key(direction, &key),
                    p.selectors_match(&flow),
                    "{} on {flow:?}",
                    p.name
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn whole_ipv4_packets_are_answered_as_their_flows(
            seed in any::<u64>(),
            count in 0usize..24,
            pkts in prop::collection::vec(packet(), 1..24),
        ) {
            let mut rng = Rng(seed | 1);
            let list: Vec<Policy> =
                (0..count).map(|i| policy(&mut rng, &format!("p{i}"))).collect();
            let spd = Spd::with_policies(list.clone());
            for (kind, partitioned) in [
                (EngineKind::Partitioned, true),
                (EngineKind::PartitionedFiltered, true),
                (EngineKind::Tree, false),
            ] {
                let spd = spd.recompiled(kind);
                for pkt in &pkts {
                    check(&spd, partitioned, pkt);
                }
            }
            // A changed SPD answers through the flow (its added policies are not in the
            // classifier): the quick way declines.
            let changed = spd.changed(PolicyChange::Insert(0, policy(&mut rng, "added")));
            for pkt in &pkts {
                for direction in [Direction::Outbound, Direction::Inbound] {
                    prop_assert_eq!(changed.lookup_whole_packet(direction, pkt), None);
                }
            }
        }
    }
}
