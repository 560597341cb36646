//! Policy tests ([`Spd::run_cases`]) and boundary probes ([`Spd::probes`]).
//!
//! A cases file is TOML:
//!
//! ```toml
//! [[case]]
//! name = "branch 1 reaches the terminal server"   # optional
//! direction = "inbound"                           # "outbound" | "inbound"
//! src = "10.1.0.7"
//! dst = "10.0.0.5"
//! protocol = "tcp"                                # name or number
//! src_port = 50000                                # TCP/UDP/SCTP only, optional
//! dst_port = 3389
//! # icmp_type = 8; icmp_code = 0                  # ICMP/ICMPv6 only, optional
//! expect = "protect"                              # "protect" | "bypass" | "discard"
//! policy = "b1-rdp"                               # optional: the policy that must match
//! ```
//!
//! Unknown keys are rejected; every error names the case (`case "NAME"` or `case #N`)
//! and the key.
//!
//! A TCP, UDP or SCTP case without ports (or an ICMP case without type and code) is a
//! **non-first fragment**, and is answered as the gateway answers one whose first
//! fragment it has not seen ([`Spd::lookup_as_packet`]): by the first policy that could
//! match it if that policy does not look at ports, otherwise DISCARD with no policy
//! (dropped as `fragment_unresolved`). The boundary probes are answered the same way.

use crate::error::ConfigError;
use crate::sa::Direction;
use crate::spd::lint::Geometry;
use crate::spd::selector::{has_ports, is_icmp, parse_protocol};
use crate::spd::{Action, AddrSet, Decision, Flow, FragmentDecision, Policy, Spd};
use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use toml::Value;

const KEYS: [&str; 11] = [
    "name",
    "direction",
    "src",
    "dst",
    "protocol",
    "src_port",
    "dst_port",
    "icmp_type",
    "icmp_code",
    "expect",
    "policy",
];

/// The outcome of one case.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CaseOutcome {
    /// The case's `name`, or `case #N` (counting from 1).
    pub name: String,
    /// The flow that was looked up.
    pub flow: Flow,
    /// True if the decision (and the policy, when given) is as expected.
    pub passed: bool,
    /// The expected action.
    pub expected: Action,
    /// The expected policy, when the case names one.
    pub expected_policy: Option<String>,
    /// The action actually reached.
    pub action: Action,
    /// The policy that matched, `None` for the implicit DISCARD.
    pub policy: Option<String>,
    /// The SA of the decision (PROTECT).
    pub sa: Option<String>,
    /// One sentence: what happened (for a failure: what matched instead).
    pub message: String,
}

impl fmt::Display for CaseOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        write!(f, "{verdict} {}: {}", self.name, self.message)
    }
}

/// The result of [`Spd::run_cases`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CaseReport {
    /// One outcome per case, in file order.
    pub outcomes: Vec<CaseOutcome>,
}

impl CaseReport {
    /// The number of cases that passed.
    pub fn passed(&self) -> usize {
        self.outcomes.iter().filter(|o| o.passed).count()
    }

    /// The number of cases that failed.
    pub fn failed(&self) -> usize {
        self.outcomes.len() - self.passed()
    }

    /// True if every case passed.
    pub fn all_passed(&self) -> bool {
        self.outcomes.iter().all(|o| o.passed)
    }
}

impl fmt::Display for CaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for o in &self.outcomes {
            writeln!(f, "{o}")?;
        }
        write!(f, "{} passed, {} failed", self.passed(), self.failed())
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CasesFile {
    #[serde(default)]
    case: Vec<toml::Table>,
}

struct Case {
    name: String,
    flow: Flow,
    expect: Action,
    policy: Option<String>,
}

/// Parses one case; `name` is what the outcome reports, `label` names the case in errors.
fn parse_case(t: &toml::Table, name: String, label: &str) -> Result<Case, ConfigError> {
    let err = |key: &str, msg: String| ConfigError::new(key, msg).in_context(label);
    for k in t.keys() {
        if !KEYS.contains(&k.as_str()) {
            return Err(err(
                k,
                format!("unknown key (expected one of: {})", KEYS.join(", ")),
            ));
        }
    }
    let string = |key: &str| -> Result<Option<&str>, ConfigError> {
        match t.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(err(key, format!("expected a string, got {}", v.type_str()))),
        }
    };
    let required = |key: &str| -> Result<&str, ConfigError> {
        string(key)?.ok_or_else(|| err(key, "missing".into()))
    };
    let direction = Direction::from_name(required("direction")?)
        .map_err(|e| err("direction", e.message().to_owned()))?;
    let addr = |key: &str| -> Result<IpAddr, ConfigError> {
        let s = required(key)?;
        s.trim()
            .parse()
            .map_err(|_| err(key, format!("{s:?} is not an IPv4 or IPv6 address")))
    };
    let (src, dst) = (addr("src")?, addr("dst")?);
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(err(
            "dst",
            "src and dst must be of one address family".into(),
        ));
    }
    let protocol = match t.get("protocol") {
        None => return Err(err("protocol", "missing".into())),
        Some(Value::String(s)) => parse_protocol(s).map_err(|m| err("protocol", m))?,
        Some(Value::Integer(n)) => Some(
            u8::try_from(*n)
                .map_err(|_| err("protocol", format!("{n} is not a protocol number")))?,
        ),
        Some(v) => {
            return Err(err(
                "protocol",
                format!("expected a name or number, got {}", v.type_str()),
            ));
        }
    }
    .ok_or_else(|| err("protocol", "a case needs one protocol, not \"any\"".into()))?;
    let num = |key: &str, max: i64| -> Result<Option<i64>, ConfigError> {
        match t.get(key) {
            None => Ok(None),
            Some(Value::Integer(n)) if (0..=max).contains(n) => Ok(Some(*n)),
            Some(v) => Err(err(key, format!("expected a number 0..={max}, got {v}"))),
        }
    };
    let mut flow = Flow::new(direction, src, dst, protocol);
    for (key, slot) in [("src_port", 0), ("dst_port", 1)] {
        if let Some(n) = num(key, 65535)? {
            if !has_ports(protocol) {
                return Err(err(key, "ports need protocol tcp, udp or sctp".into()));
            }
            let v = Some(n as u16);
            if slot == 0 {
                flow.src_port = v;
            } else {
                flow.dst_port = v;
            }
        }
    }
    for (key, slot) in [("icmp_type", 0), ("icmp_code", 1)] {
        if let Some(n) = num(key, 255)? {
            if !is_icmp(protocol) {
                return Err(err(key, "ICMP fields need protocol icmp or icmpv6".into()));
            }
            let v = Some(n as u8);
            if slot == 0 {
                flow.icmp_type = v;
            } else {
                flow.icmp_code = v;
            }
        }
    }
    let expect = Action::from_name(required("expect")?).map_err(|m| err("expect", m))?;
    Ok(Case {
        name,
        flow,
        expect,
        policy: string("policy")?.map(str::to_owned),
    })
}

fn flow_text(f: &Flow) -> String {
    let proto = crate::spd::selector::protocol_name(Some(f.protocol));
    let port = |p: Option<u16>| p.map_or(String::new(), |p| format!(":{p}"));
    let mut s = format!(
        "{} {}{} -> {}{} {proto}",
        f.direction.name(),
        f.src,
        port(f.src_port),
        f.dst,
        port(f.dst_port)
    );
    if let Some(t) = f.icmp_type {
        s.push_str(&format!(" type {t}"));
    }
    if let Some(c) = f.icmp_code {
        s.push_str(&format!(" code {c}"));
    }
    s
}

/// One boundary probe of [`Spd::probes`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Probe {
    /// The policy whose boundary is probed.
    pub policy: String,
    /// The selector probed: `base`, `local`, `remote`, `protocol`, `local_port`,
    /// `remote_port`, `icmp_type` or `icmp_code`.
    pub selector: &'static str,
    /// True for a flow inside the policy's selectors, false for one just outside.
    pub inside: bool,
    /// What is probed, e.g. `local = 10.0.0.255 (last of 10.0.0.0-10.0.0.255)`.
    pub description: String,
    /// The probe flow.
    pub flow: Flow,
    /// The action the SPD gives it.
    pub action: Action,
    /// The policy that matches it (`None`: implicit DISCARD).
    pub hit: Option<String>,
    /// The SA of the decision.
    pub sa: Option<String>,
}

impl Probe {
    /// True if the probe is decided by the probed policy itself.
    pub fn hits_self(&self) -> bool {
        self.hit.as_deref() == Some(self.policy.as_str())
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = if self.inside { "inside " } else { "outside" };
        let hit = match &self.hit {
            Some(p) => format!("policy {p:?}"),
            None => "no policy (implicit discard)".into(),
        };
        write!(
            f,
            "{:?} {side} {}: {} => {} by {hit}",
            self.policy,
            self.description,
            flow_text(&self.flow),
            self.action
        )
    }
}

/// The selectors of a flow in the policy's coordinates.
#[derive(Clone, Copy)]
struct Point {
    local: IpAddr,
    remote: IpAddr,
    protocol: u8,
    a: Option<u16>,
    b: Option<u16>,
}

impl Point {
    fn flow(&self, d: Direction) -> Flow {
        let (src, dst) = match d {
            Direction::Outbound => (self.local, self.remote),
            Direction::Inbound => (self.remote, self.local),
        };
        let mut f = Flow::new(d, src, dst, self.protocol);
        if is_icmp(self.protocol) {
            f.icmp_type = self.a.map(|v| v as u8);
            f.icmp_code = self.b.map(|v| v as u8);
        } else if has_ports(self.protocol) {
            (f.src_port, f.dst_port) = match d {
                Direction::Outbound => (self.a, self.b),
                Direction::Inbound => (self.b, self.a),
            };
        }
        f
    }

    fn from_flow(f: &Flow) -> Point {
        let (local, remote) = match f.direction {
            Direction::Outbound => (f.src, f.dst),
            Direction::Inbound => (f.dst, f.src),
        };
        let (a, b) = if is_icmp(f.protocol) {
            (f.icmp_type.map(u16::from), f.icmp_code.map(u16::from))
        } else {
            match f.direction {
                Direction::Outbound => (f.src_port, f.dst_port),
                Direction::Inbound => (f.dst_port, f.src_port),
            }
        };
        Point {
            local,
            remote,
            protocol: f.protocol,
            a,
            b,
        }
    }
}

/// Address ranges of a set as `IpAddr` pairs, in the given family.
fn addr_ranges(s: &AddrSet, v6: bool) -> Vec<(IpAddr, IpAddr)> {
    if v6 {
        s.v6_ranges()
            .iter()
            .map(|&(l, h)| (Ipv6Addr::from(l).into(), Ipv6Addr::from(h).into()))
            .collect()
    } else {
        s.v4_ranges()
            .iter()
            .map(|&(l, h)| (Ipv4Addr::from(l).into(), Ipv4Addr::from(h).into()))
            .collect()
    }
}

fn step(a: IpAddr, up: bool) -> Option<IpAddr> {
    match a {
        IpAddr::V4(x) => {
            let v = u32::from(x);
            let n = if up {
                v.checked_add(1)
            } else {
                v.checked_sub(1)
            };
            n.map(|n| Ipv4Addr::from(n).into())
        }
        IpAddr::V6(x) => {
            let v = u128::from(x);
            let n = if up {
                v.checked_add(1)
            } else {
                v.checked_sub(1)
            };
            n.map(|n| Ipv6Addr::from(n).into())
        }
    }
}

/// A range selector: its key, its range (`None`: any), and whether it is the `a`
/// dimension (local port, ICMP type) rather than `b`.
type RangeSel = (&'static str, Option<(u16, u16)>, bool);

/// At most this many ranges of an address set are probed.
const MAX_RANGES: usize = 4;

/// Builds a representative point inside `p` (for family `v6`), `None` if `p` has no
/// addresses of that family on both sides.
fn base_point(p: &Policy, v6: bool) -> Option<Point> {
    let l = addr_ranges(&p.local, v6).first()?.0;
    let r = addr_ranges(&p.remote, v6).first()?.0;
    let protocol = p.protocol.unwrap_or(6);
    let (a, b) = if is_icmp(protocol) {
        (
            Some(u16::from(p.icmp_type.unwrap_or(8))),
            Some(u16::from(p.icmp_code.unwrap_or(0))),
        )
    } else if has_ports(protocol) {
        (
            Some(p.local_port.map_or(40000, |r| r.0)),
            Some(p.remote_port.map_or(40000, |r| r.0)),
        )
    } else {
        (None, None)
    };
    Some(Point {
        local: l,
        remote: r,
        protocol,
        a,
        b,
    })
}

impl Spd {
    /// Runs a cases file (see the [module docs](self)) against this policy: each case
    /// is looked up and compared with its `expect` (and `policy`, when given). Fails
    /// only when the cases file itself is bad (naming the case and the key): with the
    /// first problem; [`Spd::run_cases_all_errors`] reports every bad case.
    pub fn run_cases(&self, cases_text: &str) -> Result<CaseReport, ConfigError> {
        self.run_cases_all_errors(cases_text)
            .map_err(|mut errors| errors.swap_remove(0))
    }

    /// [`Spd::run_cases`], reporting every bad case of the file (one error each, in
    /// file order; never an empty list) instead of the first one.
    pub fn run_cases_all_errors(&self, cases_text: &str) -> Result<CaseReport, Vec<ConfigError>> {
        let file: CasesFile = toml::from_str(cases_text)
            .map_err(|e| vec![crate::secret::toml_error(e, cases_text)])?;
        let mut outcomes = Vec::with_capacity(file.case.len());
        let mut errors = Vec::new();
        for (i, t) in file.case.iter().enumerate() {
            let (name, label) = match t.get("name").and_then(Value::as_str) {
                Some(n) => (n.to_owned(), format!("case {n:?}")),
                None => (format!("case #{}", i + 1), format!("case #{}", i + 1)),
            };
            let case = match parse_case(t, name, &label) {
                Ok(case) => case,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let (d, matched) = self.answer(&case.flow);
            let policy_ok = case.policy.as_deref().is_none_or(|p| d.policy == Some(p));
            let passed = d.action == case.expect && policy_ok;
            let flow = flow_text(&case.flow);
            let message = if passed {
                format!("{flow}: {matched}")
            } else {
                let wanted = match &case.policy {
                    Some(p) => format!("expected {} by policy {p:?}", case.expect),
                    None => format!("expected {}", case.expect),
                };
                format!("{flow}: {wanted}, but it {matched} instead")
            };
            outcomes.push(CaseOutcome {
                name: case.name,
                flow: case.flow,
                passed,
                expected: case.expect,
                expected_policy: case.policy,
                action: d.action,
                policy: d.policy.map(str::to_owned),
                sa: d.sa.map(str::to_owned),
                message,
            });
        }
        if errors.is_empty() {
            Ok(CaseReport { outcomes })
        } else {
            Err(errors)
        }
    }

    /// The decision for a case's flow ([`Spd::lookup_as_packet`]) and what happened,
    /// in words: `matched policy "x" (action bypass)`, ...
    fn answer(&self, flow: &Flow) -> (Decision<'_>, String) {
        let fragment = if flow.ports_unknown() {
            " as a non-first fragment (no ports)"
        } else {
            ""
        };
        match self.lookup_as_packet(flow) {
            FragmentDecision::Decided(d) => {
                let m = match d.policy {
                    Some(p) => format!("matched policy {p:?}{fragment} (action {})", d.action),
                    None => format!("matched no policy{fragment} (implicit discard)"),
                };
                (d, m)
            }
            FragmentDecision::Unresolved { could_match } => {
                let by = match could_match.and_then(|d| d.policy) {
                    Some(p) => format!("policy {p:?}, which looks at ports,"),
                    None => "a policy (its upper-layer protocol is hidden)".into(),
                };
                let m = format!(
                    "was dropped as a non-first fragment (no ports) that {by} may cover and \
                     that cannot be decided without its first fragment \
                     (fragment_unresolved, action discard)"
                );
                (Decision::NO_MATCH, m)
            }
        }
    }

    /// Boundary probes: for each policy and each direction it serves, a flow inside it
    /// (where possible one the policy itself decides, found by the lint's exact
    /// analysis) and, from there, flows just inside and just outside each of its ranges
    /// (first and last address of each address range and the addresses next to them,
    /// at most four ranges per set and family; first and last port and the ports next
    /// to them; the protocol and another one; the ICMP type and code and their
    /// neighbours), each with what it hits. For `ipsec policy explain`.
    pub fn probes(&self) -> Vec<Probe> {
        let ps = self.policies();
        let geo = Geometry::new(ps);
        let mut out = Vec::new();
        for (i, p) in ps.iter().enumerate() {
            let witness = geo.analyse(ps, i).witness;
            for d in [Direction::Outbound, Direction::Inbound] {
                if !p.direction.covers(d) {
                    continue;
                }
                for v6 in [false, true] {
                    let w = witness
                        .iter()
                        .find(|f| f.direction == d && f.src.is_ipv6() == v6)
                        .map(Point::from_flow);
                    let Some(base) = w.or_else(|| base_point(p, v6)) else {
                        continue;
                    };
                    self.probe_policy(p, d, v6, base, &mut out);
                }
            }
        }
        out
    }

    fn probe_policy(&self, p: &Policy, d: Direction, v6: bool, base: Point, out: &mut Vec<Probe>) {
        let mut add = |sel: &'static str, inside: bool, description: String, pt: Point| {
            let flow = pt.flow(d);
            let dec = self
                .lookup_as_packet(&flow)
                .decided()
                .unwrap_or(Decision::NO_MATCH);
            out.push(Probe {
                policy: p.name.clone(),
                selector: sel,
                inside,
                description,
                flow,
                action: dec.action,
                hit: dec.policy.map(str::to_owned),
                sa: dec.sa.map(str::to_owned),
            });
        };
        add("base", true, "a flow inside every selector".into(), base);
        for (sel, set) in [("local", &p.local), ("remote", &p.remote)] {
            if set.is_any() {
                continue;
            }
            for (lo, hi) in addr_ranges(set, v6).into_iter().take(MAX_RANGES) {
                let range = if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                };
                let with = |a: IpAddr| {
                    let mut pt = base;
                    if sel == "local" {
                        pt.local = a;
                    } else {
                        pt.remote = a;
                    }
                    pt
                };
                add(
                    sel,
                    true,
                    format!("{sel} = {lo} (first of {range})"),
                    with(lo),
                );
                if hi != lo {
                    add(
                        sel,
                        true,
                        format!("{sel} = {hi} (last of {range})"),
                        with(hi),
                    );
                }
                if let Some(x) = step(lo, false).filter(|x| !set.contains(*x)) {
                    add(
                        sel,
                        false,
                        format!("{sel} = {x} (just below {range})"),
                        with(x),
                    );
                }
                if let Some(x) = step(hi, true).filter(|x| !set.contains(*x)) {
                    add(
                        sel,
                        false,
                        format!("{sel} = {x} (just above {range})"),
                        with(x),
                    );
                }
            }
        }
        if let Some(proto) = p.protocol {
            let other = match proto {
                6 => 17,
                17 => 6,
                255 => 254,
                x => x + 1,
            };
            let mut pt = base;
            pt.protocol = other;
            (pt.a, pt.b) = if is_icmp(other) {
                (Some(8), Some(0))
            } else if has_ports(other) {
                (base.a.or(Some(40000)), base.b.or(Some(40000)))
            } else {
                (None, None)
            };
            let name = |x| crate::spd::selector::protocol_name(Some(x));
            add(
                "protocol",
                false,
                format!("protocol {} instead of {}", name(other), name(proto)),
                pt,
            );
        }
        let icmp = p.protocol.is_some_and(is_icmp);
        let one = |v: Option<u8>| v.map(|x| (u16::from(x), u16::from(x)));
        let ranges: [RangeSel; 2] = if icmp {
            [
                ("icmp_type", one(p.icmp_type), true),
                ("icmp_code", one(p.icmp_code), false),
            ]
        } else {
            [
                ("local_port", p.local_port, true),
                ("remote_port", p.remote_port, false),
            ]
        };
        let max = if p.protocol.is_some_and(is_icmp) {
            255
        } else {
            u16::MAX
        };
        for (sel, range, is_a) in ranges {
            let Some((lo, hi)) = range else { continue };
            let with = |v: u16| {
                let mut pt = base;
                if is_a {
                    pt.a = Some(v);
                } else {
                    pt.b = Some(v);
                }
                pt
            };
            let r = if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            };
            add(sel, true, format!("{sel} = {lo} (first of {r})"), with(lo));
            if hi != lo {
                add(sel, true, format!("{sel} = {hi} (last of {r})"), with(hi));
            }
            if let Some(x) = lo.checked_sub(1) {
                add(sel, false, format!("{sel} = {x} (just below {r})"), with(x));
            }
            if hi < max {
                let x = hi + 1;
                add(sel, false, format!("{sel} = {x} (just above {r})"), with(x));
            }
        }
    }
}
