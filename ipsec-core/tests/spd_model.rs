//! The compiled SPD classifier against the naive first-match scan, on random policies
//! over a small address space (so that overlaps are frequent) and random flows; plus the
//! policy file's error messages and the DESIGN.md example.

use ipsec_core::spd::{EngineKind, Policy};
use ipsec_core::{
    Action, Decision, Direction, Error, Flow, FragmentDecision, FragmentError, Spd, SpdCache,
};
use proptest::prelude::*;
use std::net::IpAddr;

const SAS: &str = include_str!("data/sa-pair.toml");

fn v4(i: u8) -> String {
    format!("10.0.0.{i}")
}
fn v6(i: u8) -> String {
    format!("2001:db8::{i:x}")
}

/// One address element over 10.0.0.0-15 and 2001:db8::0-f.
fn addr_elem() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just("any".to_string()),
        3 => (0u8..16, any::<bool>()).prop_map(|(i, six)| if six { v6(i) } else { v4(i) }),
        3 => (0u8..16, 28u8..=32, any::<bool>()).prop_map(|(i, len, six)| {
            let block = 1u8 << (32 - len);
            let base = i - i % block;
            if six { format!("{}/{}", v6(base), 96 + len) } else { format!("{}/{len}", v4(base)) }
        }),
        3 => (0u8..16, 0u8..16, any::<bool>()).prop_map(|(a, b, six)| {
            let (a, b) = (a.min(b), a.max(b));
            if six { format!("{}-{}", v6(a), v6(b)) } else { format!("{}-{}", v4(a), v4(b)) }
        }),
    ]
}

fn addr_value() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        1 => Just(None),
        3 => addr_elem().prop_map(|e| Some(format!("{e:?}"))),
        1 => prop::collection::vec(addr_elem(), 1..4).prop_map(|v| Some(format!("{v:?}"))),
    ]
}

fn port_value() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        2 => Just(None),
        1 => Just(Some("\"any\"".to_string())),
        2 => (0u16..10).prop_map(|p| Some(p.to_string())),
        2 => (0u16..10, 0u16..10).prop_map(|(a, b)| Some(format!("\"{}-{}\"", a.min(b), a.max(b)))),
    ]
}

#[derive(Debug, Clone)]
struct GenPolicy {
    direction: u8,
    local: Option<String>,
    remote: Option<String>,
    protocol: u8,
    local_port: Option<String>,
    remote_port: Option<String>,
    icmp: Option<(u8, Option<u8>)>,
    action: u8,
}

const PROTOS: [&str; 7] = ["any", "tcp", "udp", "icmp", "icmpv6", "50", "sctp"];

fn gen_policy() -> impl Strategy<Value = GenPolicy> {
    (
        0u8..3,
        addr_value(),
        addr_value(),
        0u8..7,
        port_value(),
        port_value(),
        prop::option::of((0u8..4, prop::option::of(0u8..3))),
        0u8..3,
    )
        .prop_map(
            |(direction, local, remote, protocol, lp, rp, icmp, action)| GenPolicy {
                direction,
                local,
                remote,
                protocol,
                local_port: lp,
                remote_port: rp,
                icmp,
                action,
            },
        )
}

fn to_toml(policies: &[GenPolicy]) -> String {
    let mut s = String::from(SAS);
    for (i, p) in policies.iter().enumerate() {
        let dir = ["outbound", "inbound", "both"][p.direction as usize];
        s += &format!("\n[[policy]]\nname = \"p{i}\"\ndirection = \"{dir}\"\n");
        if let Some(l) = &p.local {
            s += &format!("local = {l}\n");
        }
        if let Some(r) = &p.remote {
            s += &format!("remote = {r}\n");
        }
        let proto = PROTOS[p.protocol as usize];
        s += &format!("protocol = \"{proto}\"\n");
        if matches!(proto, "tcp" | "udp" | "sctp") {
            if let Some(v) = &p.local_port {
                s += &format!("local_port = {v}\n");
            }
            if let Some(v) = &p.remote_port {
                s += &format!("remote_port = {v}\n");
            }
        }
        if matches!(proto, "icmp" | "icmpv6")
            && let Some((t, c)) = p.icmp
        {
            s += &format!("icmp_type = {t}\n");
            if let Some(c) = c {
                s += &format!("icmp_code = {c}\n");
            }
        }
        let action = ["protect", "bypass", "discard"][p.action as usize];
        s += &format!("action = \"{action}\"\n");
        if action == "protect" {
            s += match dir {
                "outbound" => "sa = \"o\"\n",
                "inbound" => "sa = \"i\"\n",
                _ => "sa = [\"o\", \"i\"]\n",
            };
        }
    }
    s
}

fn gen_flow() -> impl Strategy<Value = Flow> {
    (
        any::<bool>(),
        any::<bool>(),
        0u8..17,
        0u8..17,
        prop::sample::select(vec![6u8, 17, 1, 58, 50, 132, 0]),
        prop::option::of((0u16..11, 0u16..11)),
        prop::option::of((0u8..5, 0u8..4)),
    )
        .prop_map(|(outbound, six, s, d, proto, ports, icmp)| {
            let addr = |i: u8| -> IpAddr {
                if six {
                    v6(i).parse().unwrap()
                } else {
                    v4(i).parse().unwrap()
                }
            };
            let dir = if outbound {
                Direction::Outbound
            } else {
                Direction::Inbound
            };
            let mut f = Flow::new(dir, addr(s), addr(d), proto);
            if let Some((a, b)) = ports {
                f = f.ports(a, b);
            }
            if let Some((t, c)) = icmp {
                f = f.icmp(t, c);
            }
            f
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn compiled_equals_naive(
        policies in prop::collection::vec(gen_policy(), 0..80),
        flows in prop::collection::vec(gen_flow(), 1..64),
    ) {
        let text = to_toml(&policies);
        let spd = Spd::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let mut cache = SpdCache::new(&spd, 16);
        let bv = spd.recompiled(EngineKind::BitVector);
        let tree = spd.recompiled(EngineKind::Tree);
        let filtered = spd.recompiled(EngineKind::PartitionedFiltered);
        for f in &flows {
            let naive = spd.lookup_linear(f);
            prop_assert_eq!(spd.lookup(f), naive, "flow {:?}\n{}", f, text);
            prop_assert_eq!(filtered.lookup(f), naive, "filtered: flow {:?}\n{}", f, text);
            prop_assert_eq!(bv.lookup(f), naive, "bit vector: flow {:?}\n{}", f, text);
            prop_assert_eq!(tree.lookup(f), naive, "tree: flow {:?}\n{}", f, text);
            prop_assert_eq!(cache.lookup(f), naive);
            // Decisions are consistent with the policy they name.
            match naive.policy_index {
                Some(i) => {
                    let p: &Policy = &spd.policies()[i];
                    prop_assert!(p.matches(f));
                    prop_assert_eq!(naive.action, p.action());
                    prop_assert_eq!(naive.sa, p.sa(f.direction));
                }
                None => prop_assert_eq!(naive.action, Action::Discard),
            }
        }
        // Twice, so the cache answers from its slots too.
        for f in &flows {
            prop_assert_eq!(cache.lookup(f), spd.lookup_linear(f));
        }
    }

    /// The burst lookup answers, for every flow, what a lookup of the flow alone and the
    /// naive scan answer: bursts of every length (more than one chunk of 32 too), flows
    /// of both directions and families mixed, on the default classifier with its lists
    /// in the filtered layout, and on the alternative classifiers (which it answers one
    /// flow at a time).
    #[test]
    fn burst_equals_lookup_and_naive(
        policies in prop::collection::vec(gen_policy(), 0..80),
        flows in prop::collection::vec(gen_flow(), 0..100),
        split in 0usize..100,
    ) {
        // A flow of mixed families too (no real packet has one; the scan answers it).
        let mut flows = flows;
        let mixed = Flow::new(Direction::Inbound, v4(1).parse().unwrap(), v6(2).parse().unwrap(), 6);
        flows.insert(split.min(flows.len()), mixed);
        let text = to_toml(&policies);
        let spd = Spd::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let bv = spd.recompiled(EngineKind::BitVector);
        let tree = spd.recompiled(EngineKind::Tree);
        let filtered = spd.recompiled(EngineKind::PartitionedFiltered);
        for s in [&spd, &filtered, &bv, &tree] {
            let mut out = vec![Decision::NO_MATCH; flows.len()];
            // The stages of the burst lookup (a classifier this small otherwise answers
            // one flow at a time), then `lookup_burst` as it is.
            s.lookup_burst_staged(&flows, &mut out);
            for (f, d) in flows.iter().zip(&out) {
                prop_assert_eq!(*d, s.lookup(f), "staged: flow {:?}\n{}", f, text);
                prop_assert_eq!(*d, spd.lookup_linear(f), "staged: flow {:?}\n{}", f, text);
            }
            out.fill(Decision::NO_MATCH);
            s.lookup_burst(&flows, &mut out);
            for (f, d) in flows.iter().zip(&out) {
                prop_assert_eq!(*d, s.lookup(f), "flow {:?}\n{}", f, text);
                prop_assert_eq!(*d, spd.lookup_linear(f), "flow {:?}\n{}", f, text);
            }
            // Two calls over a split of the flows answer the same.
            let (a, b) = flows.split_at(split.min(flows.len()));
            let (oa, ob) = out.split_at_mut(a.len());
            oa.fill(Decision::NO_MATCH);
            ob.fill(Decision::NO_MATCH);
            s.lookup_burst_staged(a, oa);
            s.lookup_burst_staged(b, ob);
            for (f, d) in flows.iter().zip(&out) {
                prop_assert_eq!(*d, spd.lookup_linear(f), "split flow {:?}\n{}", f, text);
            }
        }
    }

    /// The non-first fragment query (compiled, built at load time) against its plain
    /// reference, and what its answers mean: a decided fragment gets the decision the
    /// whole packet would get whatever its ports; an unresolved one could be the
    /// traffic of a port-specific policy that no earlier policy can take.
    #[test]
    fn non_first_fragment_compiled_equals_naive(
        policies in prop::collection::vec(gen_policy(), 0..80),
        flows in prop::collection::vec(gen_flow(), 1..64),
        ports in prop::collection::vec((0u16..12, 0u16..12, 0u8..5, 0u8..4), 1..8),
    ) {
        let text = to_toml(&policies);
        let spd = Spd::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        // (The fragment index is the partitioned classifier whatever the engine, so
        // the other engines add nothing here; its filtered layout does.)
        let filtered = spd.recompiled(EngineKind::PartitionedFiltered);
        for f in &flows {
            let naive = spd.lookup_non_first_fragment_linear(f);
            prop_assert_eq!(spd.lookup_non_first_fragment(f), naive, "flow {:?}\n{}", f, text);
            prop_assert_eq!(filtered.lookup_non_first_fragment(f), naive, "filtered {:?}", f);
            // The query ignores whatever ports and ICMP fields the flow carries.
            let mut bare = *f;
            (bare.src_port, bare.dst_port, bare.icmp_type, bare.icmp_code) = (None, None, None, None);
            prop_assert_eq!(spd.lookup_non_first_fragment(&bare), naive);
            // Every concrete packet of the flow.
            let concrete: Vec<Flow> = ports
                .iter()
                .map(|&(a, b, t, c)| {
                    let mut g = bare;
                    if matches!(g.protocol, 6 | 17 | 132) {
                        g = g.ports(a, b);
                    } else if matches!(g.protocol, 1 | 58) {
                        g = g.icmp(t, c);
                    }
                    g
                })
                .collect();
            match naive {
                FragmentDecision::Decided(d) => {
                    for g in &concrete {
                        prop_assert_eq!(spd.lookup(g), d, "decided {:?} but {:?}\n{}", f, g, text);
                    }
                    if let Some(i) = d.policy_index {
                        prop_assert!(!spd.policies()[i].has_port_or_icmp_selector());
                    }
                }
                FragmentDecision::Unresolved { could_match: None } => {
                    // Only an IPv6 fragment that hides its upper-layer protocol.
                    prop_assert!(f.dst.is_ipv6() && matches!(f.protocol, 0 | 43 | 44 | 60));
                }
                FragmentDecision::Unresolved { could_match: Some(d) } => {
                    let p = &spd.policies()[d.policy_index.unwrap()];
                    prop_assert!(p.has_port_or_icmp_selector() && p.matches_with_ports_unknown(f));
                    // No earlier policy could take any packet of the flow.
                    for g in &concrete {
                        let hit = spd.lookup(g).policy_index;
                        prop_assert!(hit.is_none_or(|h| h >= d.policy_index.unwrap()));
                    }
                }
                _ => prop_assert!(false, "unknown variant"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Parse errors: each names the policy and the key.

fn policy(body: &str) -> String {
    format!("{SAS}\n[[policy]]\n{body}\n")
}

#[track_caller]
fn err(body: &str) -> String {
    let text = policy(body);
    let e = Spd::from_toml(&text).expect_err("must be rejected");
    // The all-errors variant reports it too.
    let all = Spd::from_toml_all_errors(&text).expect_err("must be rejected");
    assert!(all.contains(&e), "{all:?} lacks {e}");
    e.to_string()
}

#[test]
fn error_ports_on_portless_protocol() {
    let e = err(r#"name = "terminal-services"
direction = "both"
protocol = "icmp"
local_port = 3389
action = "discard""#);
    assert_eq!(
        e,
        "policy \"terminal-services\": local_port: ports need protocol tcp, udp or sctp (protocol is icmp)"
    );
    let e = err(r#"name = "x"
direction = "both"
remote_port = 80
action = "discard""#);
    assert!(
        e.starts_with("policy \"x\": remote_port: ports need"),
        "{e}"
    );
}

#[test]
fn error_icmp_fields_on_tcp() {
    let e = err(
        "name = \"x\"\ndirection = \"both\"\nprotocol = \"tcp\"\nicmp_type = 8\naction = \"bypass\"",
    );
    assert!(
        e.starts_with("policy \"x\": icmp_type: ICMP fields need"),
        "{e}"
    );
}

#[test]
fn error_bad_addresses() {
    for (value, needle) in [
        ("\"10.0.0.300\"", "not an IPv4 or IPv6 address"),
        ("\"10.0.0.9-10.0.0.1\"", "inverted"),
        ("\"10.0.0.0/33\"", "prefix length"),
        ("\"10.0.0.1/24\"", "host bits"),
        ("\"10.0.0.1-2001:db8::1\"", "mix"),
        ("[]", "empty address list"),
        ("[\"10.0.0.0/8\", 5]", "list of address strings"),
        ("42", "expected an address"),
        ("\"2001:db8::/129\"", "prefix length"),
    ] {
        let e = err(&format!(
            "name = \"a\"\ndirection = \"both\"\nremote = {value}\naction = \"bypass\""
        ));
        assert!(e.starts_with("policy \"a\": remote: "), "{e}");
        assert!(e.contains(needle), "{value}: {e}");
    }
}

#[test]
fn error_bad_ports_and_protocols() {
    for (body, key, needle) in [
        (
            "protocol = \"tcp\"\nlocal_port = \"100-50\"",
            "local_port",
            "inverted",
        ),
        (
            "protocol = \"tcp\"\nlocal_port = 70000",
            "local_port",
            "not a port number",
        ),
        (
            "protocol = \"tcp\"\nlocal_port = \"http\"",
            "local_port",
            "not a port number",
        ),
        ("protocol = \"tcpp\"", "protocol", "not a protocol"),
        ("protocol = 256", "protocol", "not a protocol number"),
        (
            "protocol = \"icmp\"\nicmp_type = 300",
            "icmp_type",
            "0..=255",
        ),
        (
            "protocol = \"icmp\"\nicmp_code = 1",
            "icmp_code",
            "needs an icmp_type",
        ),
    ] {
        let e = err(&format!(
            "name = \"p\"\ndirection = \"outbound\"\n{body}\naction = \"bypass\""
        ));
        assert!(e.starts_with(&format!("policy \"p\": {key}: ")), "{e}");
        assert!(e.contains(needle), "{e}");
    }
}

#[test]
fn error_unknown_key_missing_name_and_duplicates() {
    let e = err("name = \"k\"\ndirection = \"both\"\naction = \"bypass\"\nlocal_prot = 5");
    assert!(
        e.starts_with("policy \"k\": local_prot: unknown key"),
        "{e}"
    );
    // Without a name, the policy is named by its position.
    let e = err("direction = \"both\"\naction = \"bypass\"");
    assert!(e.starts_with("policy #1: name: missing"), "{e}");
    // A missing direction is no error: it defaults to "both" (spd_tools.rs,
    // `direction_defaults_to_both_as_the_catch_all_hint_says`).
    let e = err("name = \"k\"\ndirection = \"sideways\"\naction = \"bypass\"");
    assert!(e.starts_with("policy \"k\": direction: expected"), "{e}");
    let e = err("name = \"k\"\ndirection = \"both\"\naction = \"allow\"");
    assert!(e.starts_with("policy \"k\": action: expected"), "{e}");
    let dup = format!(
        "{}\n[[policy]]\nname = \"k\"\ndirection = \"both\"\naction = \"discard\"\n",
        policy("name = \"k\"\ndirection = \"both\"\naction = \"bypass\"")
    );
    let e = Spd::from_toml(&dup).unwrap_err().to_string();
    assert_eq!(
        e,
        "policy \"k\": name: duplicate policy name (names must be unique)"
    );
    // Unknown top-level tables are refused too.
    let e = Spd::from_toml("[[polcy]]\nname = \"x\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("polcy"), "{e}");
}

#[test]
fn error_sa_references() {
    for (body, needle) in [
        (
            "direction = \"both\"\naction = \"protect\"\nsa = [\"o\", \"nope\"]",
            "unknown SA \"nope\"",
        ),
        (
            "direction = \"outbound\"\naction = \"protect\"\nsa = \"i\"",
            "SA \"i\" is inbound",
        ),
        (
            "direction = \"both\"\naction = \"protect\"\nsa = [\"i\", \"o\"]",
            "SA \"i\" is inbound",
        ),
        (
            "direction = \"both\"\naction = \"protect\"\nsa = \"o\"",
            "needs two SAs",
        ),
        (
            "direction = \"inbound\"\naction = \"protect\"\nsa = [\"i\", \"i\"]",
            "exactly one SA",
        ),
        ("direction = \"inbound\"\naction = \"protect\"", "missing"),
        (
            "direction = \"inbound\"\naction = \"bypass\"\nsa = \"i\"",
            "only protect policies",
        ),
    ] {
        let e = err(&format!("name = \"s\"\n{body}"));
        assert!(e.starts_with("policy \"s\": sa: "), "{e}");
        assert!(e.contains(needle), "{needle}: {e}");
    }
}

#[test]
fn all_errors_reports_every_problem() {
    let text = format!(
        "{SAS}
[[policy]]
name = \"one\"
direction = \"both\"
remote = \"10.0.0.300\"
protocol = \"icmp\"
local_port = 5
action = \"bypass\"

[[policy]]
name = \"fine\"
direction = \"both\"
action = \"bypass\"

[[policy]]
direction = \"both\"
action = \"protect\"
sa = [\"o\", \"missing\"]

[[sa]]
name = \"broken\"
spi = 1
direction = \"inbound\"
mode = \"tunnel\"
cipher = \"rot13\"
"
    );
    let errs = Spd::from_toml_all_errors(&text).unwrap_err();
    let msgs: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(errs.len(), 5, "{msgs:#?}");
    assert!(
        msgs.iter().any(|m| m.starts_with("sa \"broken\": cipher")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("policy \"one\": remote:"))
    );
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("policy \"one\": local_port:"))
    );
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("policy #3: name: missing"))
    );
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("policy #3: sa: unknown SA \"missing\""))
    );
    // Broken TOML is one error, not a panic.
    let errs = Spd::from_toml_all_errors("[[policy]\nname=").unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].field(), "toml");
}

// ---------------------------------------------------------------------------------------
// The DESIGN.md example.

const DESIGN_EXAMPLE: &str = r#"
[[policy]]
name = "terminal-services"   # unique, required
direction = "both"           # "outbound" | "inbound" | "both" (both = mirrored pair)
local = "10.0.0.0/24"        # prefix, "a-b" range, single address, "any", or a list of these
remote = ["10.1.0.0/16", "10.2.0.0/16"]
protocol = "tcp"             # "any" | "tcp" | "udp" | "icmp" | "icmpv6" | "sctp" | 0..=255
local_port = 3389            # number, "a-b", or "any" (TCP/UDP/SCTP only)
remote_port = "any"
# icmp_type = 8; icmp_code = 0  (ICMP/ICMPv6 only)
action = "protect"           # "protect" | "bypass" | "discard"
sa = ["branch1-out", "branch1-in"]  # protect only: the SAs that carry it

[[sa]]
name = "branch1-out"
spi = 0x1000
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "00112233445566778899aabbccddeeff01020304"
tunnel_src = "192.0.2.1"
tunnel_dst = "198.51.100.2"

[[sa]]
name = "branch1-in"
spi = 0x2000
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "ffeeddccbbaa99887766554433221100a0b0c0d0"
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn design_example() {
    let spd = Spd::from_toml(DESIGN_EXAMPLE).unwrap();
    assert_eq!(spd.policies().len(), 1);
    assert_eq!(spd.sas().len(), 2);
    // The DESIGN.md lookup: outbound from the terminal server's port to a branch.
    let f = Flow::new(Direction::Outbound, ip("10.0.0.5"), ip("10.1.2.3"), 6).ports(3389, 50000);
    let d = spd.lookup(&f);
    assert_eq!(d.action, Action::Protect);
    assert_eq!(d.policy, Some("terminal-services"));
    assert_eq!(d.sa, Some("branch1-out"));
    // The mirrored inbound packet: src/dst and ports swapped; the inbound SA answers.
    let back = Flow::new(Direction::Inbound, ip("10.1.2.3"), ip("10.0.0.5"), 6).ports(50000, 3389);
    let d = spd.lookup(&back);
    assert_eq!((d.action, d.sa), (Action::Protect, Some("branch1-in")));
    // Inbound without the swap is not the same flow: nothing matches, DISCARD.
    let wrong = Flow::new(Direction::Inbound, ip("10.0.0.5"), ip("10.1.2.3"), 6).ports(3389, 50000);
    assert_eq!(spd.lookup(&wrong), ipsec_core::Decision::NO_MATCH);
    // Another port, another protocol, another network: DISCARD, no policy.
    for f in [
        Flow::new(Direction::Outbound, ip("10.0.0.5"), ip("10.1.2.3"), 6).ports(3390, 50000),
        Flow::new(Direction::Outbound, ip("10.0.0.5"), ip("10.1.2.3"), 17).ports(3389, 50000),
        Flow::new(Direction::Outbound, ip("10.0.0.5"), ip("10.3.2.3"), 6).ports(3389, 50000),
    ] {
        let d = spd.lookup(&f);
        assert_eq!((d.action, d.policy, d.sa), (Action::Discard, None, None));
    }
    // SAD binding helpers.
    assert_eq!(spd.policy_selectors_for_sa("branch1-in").len(), 1);
    assert!(spd.policy_selectors_for_sa("branch1-out").is_empty());
    assert!(spd.check_inbound("branch1-in", &back));
    let stray = Flow::new(Direction::Inbound, ip("10.1.2.3"), ip("10.0.0.5"), 6).ports(50000, 22);
    assert!(!spd.check_inbound("branch1-in", &stray));
    assert!(!spd.check_inbound("branch1-out", &back));
    // Cleartext that the protect policy covers must not be let in; nor anything else.
    assert!(!spd.inbound_cleartext_allowed(&back));
    assert!(!spd.inbound_cleartext_allowed(&stray));
    assert_eq!(spd.sa_for(&f), Some("branch1-out"));
    assert_eq!(spd.sa_for(&stray), None);
    assert_eq!(
        spd.sa_for(
            &Flow::new(Direction::Outbound, ip("10.0.0.5"), ip("10.2.0.1"), 6).ports(3389, 1)
        ),
        Some("branch1-out")
    );
}

#[test]
fn branch_office_example_loads() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/branch-office.toml"
    );
    let spd = Spd::load(path).unwrap_or_else(|e| panic!("{e}"));
    let last = spd.policies().last().unwrap();
    assert_eq!(last.action(), Action::Discard);
    assert!(last.local().is_any() && last.remote().is_any());
    let out = |s: &str, d: &str, proto: u8, sp: u16, dp: u16| {
        Flow::new(Direction::Outbound, ip(s), ip(d), proto).ports(sp, dp)
    };
    // From the head office: a branch's RDP client reply goes back protected.
    for (dst, sa) in [("10.1.0.20", "ho-to-b1"), ("10.2.0.20", "ho-to-b2")] {
        let d = spd.lookup(&out("10.0.0.10", dst, 6, 3389, 50123));
        assert_eq!((d.action, d.sa), (Action::Protect, Some(sa)), "{dst}");
        // Each service only from its own server.
        for (server, port) in [
            ("10.0.0.20", 443),
            ("10.0.0.20", 135),
            ("10.0.0.30", 445),
            ("10.0.0.30", 631),
            ("10.0.0.41", 9100),
        ] {
            let d = spd.lookup(&out(server, dst, 6, port, 50123));
            assert_eq!(d.action, Action::Protect, "{server} {dst} {port}");
            let d = spd.lookup(&out("10.0.0.10", dst, 6, port, 50123));
            assert_eq!(d.action, Action::Discard, "{port} from the terminal server");
        }
        let d = spd.lookup(&out("10.0.0.10", dst, 6, 22, 50123));
        assert_eq!(d.action, Action::Discard);
    }
    // IKE between the gateways is let through in the clear.
    let ike = out("192.0.2.1", "198.51.100.2", 17, 500, 500);
    assert_eq!(spd.lookup(&ike).action, Action::Bypass);
    let natt =
        Flow::new(Direction::Inbound, ip("203.0.113.2"), ip("192.0.2.1"), 17).ports(4500, 4500);
    assert!(spd.inbound_cleartext_allowed(&natt));
}

// ---------------------------------------------------------------------------------------
// Selectors from packets.

fn ipv4(proto: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![
        0x45, 0, 0, 0, 0, 1, 0, 0, 64, proto, 0, 0, 10, 0, 0, 5, 10, 1, 2, 3,
    ];
    p[6..8].copy_from_slice(&frag.to_be_bytes());
    p.extend_from_slice(l4);
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p
}

#[test]
fn flow_from_ipv4_packets() {
    let tcp = ipv4(6, 0, &[0x0d, 0x3d, 0xc3, 0x50, 0, 0, 0, 0]);
    let f = Flow::from_packet(Direction::Outbound, &tcp).unwrap();
    assert_eq!(
        f,
        Flow::new(Direction::Outbound, ip("10.0.0.5"), ip("10.1.2.3"), 6).ports(3389, 50000)
    );
    // First fragment (MF set, offset 0): ports read normally.
    let first = ipv4(6, 0x2000, &[0x0d, 0x3d, 0xc3, 0x50]);
    assert_eq!(
        Flow::from_packet(Direction::Outbound, &first)
            .unwrap()
            .src_port,
        Some(3389)
    );
    // Non-first fragment: the bytes there are not a transport header; ports OPAQUE.
    let later = ipv4(6, 0x0010, &[0x0d, 0x3d, 0xc3, 0x50]);
    let f = Flow::from_packet(Direction::Outbound, &later).unwrap();
    assert_eq!((f.src_port, f.dst_port, f.protocol), (None, None, 6));
    // A first fragment too short for the ports: OPAQUE; a whole packet: malformed.
    assert_eq!(
        Flow::from_packet(Direction::Outbound, &ipv4(6, 0x2000, &[1, 2]))
            .unwrap()
            .src_port,
        None
    );
    assert!(Flow::from_packet(Direction::Outbound, &ipv4(6, 0, &[1, 2])).is_err());
    let icmp = ipv4(1, 0, &[8, 0, 0, 0]);
    let f = Flow::from_packet(Direction::Inbound, &icmp).unwrap();
    assert_eq!(
        (f.icmp_type, f.icmp_code, f.src_port),
        (Some(8), Some(0), None)
    );
    assert!(Flow::from_packet(Direction::Inbound, &[0x45; 10]).is_err());
    assert!(Flow::from_packet(Direction::Inbound, &[]).is_err());
}

#[test]
fn flow_from_ipv6_packets_walks_extension_headers() {
    // IPv6 | Hop-by-Hop (8) | Fragment (8, first) | UDP
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[6] = 0; // Hop-by-Hop
    p[8..24].copy_from_slice(&ip6("2001:db8::1"));
    p[24..40].copy_from_slice(&ip6("2001:db8::2"));
    p.extend_from_slice(&[44, 0, 0, 0, 0, 0, 0, 0]); // HbH, next = Fragment
    p.extend_from_slice(&[17, 0, 0, 1, 0, 0, 0, 7]); // Fragment: offset 0, M=1
    p.extend_from_slice(&[0x01, 0xf4, 0x11, 0x94, 0, 8, 0, 0]); // UDP 500 -> 4500
    let plen = (p.len() - 40) as u16;
    p[4..6].copy_from_slice(&plen.to_be_bytes());
    let f = Flow::from_packet(Direction::Inbound, &p).unwrap();
    assert_eq!(
        (f.protocol, f.src_port, f.dst_port),
        (17, Some(500), Some(4500))
    );
    // The same with a non-zero fragment offset: ports OPAQUE.
    p[50] = 0x01;
    let f = Flow::from_packet(Direction::Inbound, &p).unwrap();
    assert_eq!((f.protocol, f.src_port), (17, None));
    // A chain running past the end is malformed, not a panic.
    let mut short = p[..48].to_vec();
    short[4..6].copy_from_slice(&8u16.to_be_bytes());
    assert!(Flow::from_packet(Direction::Inbound, &short).is_err());
}

/// The issue's policy: PROTECT tcp/3389 between two subnets (and ICMP echo requests
/// between them), then BYPASS everything.
fn protect_then_bypass() -> Spd {
    let text = format!(
        "{SAS}
[[policy]]
name = \"rdp\"
direction = \"both\"
local = \"10.0.0.0/24\"
remote = \"10.1.0.0/16\"
protocol = \"tcp\"
local_port = 3389
action = \"protect\"
sa = [\"o\", \"i\"]

[[policy]]
name = \"ping\"
direction = \"both\"
local = \"10.0.0.0/24\"
remote = \"10.1.0.0/16\"
protocol = \"icmp\"
icmp_type = 8
action = \"protect\"
sa = [\"o\", \"i\"]

[[policy]]
name = \"rdp6\"
direction = \"both\"
local = \"2001:db8::/64\"
remote = \"2001:db8:1::/64\"
protocol = \"tcp\"
local_port = 3389
action = \"protect\"
sa = [\"o\", \"i\"]

[[policy]]
name = \"anything\"
direction = \"both\"
action = \"bypass\"
"
    );
    Spd::from_toml(&text).unwrap()
}

/// An IPv4 packet 10.1.2.3 -> 10.0.0.5 (inbound to the head office side).
fn ipv4_in(proto: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
    let mut p = ipv4(proto, frag, l4);
    p[12..16].copy_from_slice(&[10, 1, 2, 3]);
    p[16..20].copy_from_slice(&[10, 0, 0, 5]);
    p
}

fn tcp_header(sport: u16, dport: u16) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 0x50;
    t[13] = 0x02;
    t
}

#[track_caller]
fn fragment_error(r: Result<ipsec_core::Decision<'_>, Error>) -> FragmentError {
    match r {
        Err(Error::Fragment(e)) => e,
        other => panic!("expected a fragment drop, got {other:?}"),
    }
}

#[test]
fn lookup_packet_answers_fragments_as_the_gateway_does_without_state() {
    let spd = protect_then_bypass();
    let dir = Direction::Inbound;
    let rdp = tcp_header(50000, 3389);
    // The whole packet and a proper first fragment (the whole TCP header): PROTECT.
    for pkt in [ipv4_in(6, 0, &rdp), ipv4_in(6, 0x2000, &rdp)] {
        let d = spd.lookup_packet(dir, &pkt).unwrap();
        assert_eq!((d.action, d.policy), (Action::Protect, Some("rdp")));
    }
    // RFC 3128 tiny first fragments: 2 bytes (no ports), 8 bytes (ports, no flags:
    // under RFC 1858's 16).
    assert_eq!(
        fragment_error(spd.lookup_packet(dir, &ipv4_in(6, 0x2000, &rdp[..2]))),
        FragmentError::TooShort
    );
    assert_eq!(
        fragment_error(spd.lookup_packet(dir, &ipv4_in(6, 0x2000, &rdp[..8]))),
        FragmentError::TooShort
    );
    assert!(
        spd.lookup_packet(dir, &ipv4_in(6, 0x2000, &rdp[..16]))
            .is_ok()
    );
    // RFC 1858: a TCP fragment at offset 8 (fragment offset 1) rewrites the header.
    assert_eq!(
        fragment_error(spd.lookup_packet(dir, &ipv4_in(6, 0x2001, &[0u8; 16]))),
        FragmentError::Overlap
    );
    // A later TCP fragment: "rdp" could cover it, so it is not BYPASSed.
    assert_eq!(
        fragment_error(spd.lookup_packet(dir, &ipv4_in(6, 0x0003, &[0u8; 16]))),
        FragmentError::Unresolved
    );
    // A later UDP fragment between the same subnets: only "anything" could take it.
    let d = spd
        .lookup_packet(dir, &ipv4_in(17, 0x0003, &[0u8; 16]))
        .unwrap();
    assert_eq!((d.action, d.policy), (Action::Bypass, Some("anything")));
    // ICMP: a first fragment needs the 8-byte header; a later one may be an echo
    // request, which "ping" protects.
    assert_eq!(
        fragment_error(spd.lookup_packet(dir, &ipv4_in(1, 0x2000, &[8, 0, 0, 0]))),
        FragmentError::TooShort
    );
    let d = spd
        .lookup_packet(dir, &ipv4_in(1, 0x2000, &[8, 0, 0, 0, 0, 1, 0, 1]))
        .unwrap();
    assert_eq!(d.policy, Some("ping"));
    assert_eq!(
        fragment_error(spd.lookup_packet(dir, &ipv4_in(1, 0x0003, &[0u8; 8]))),
        FragmentError::Unresolved
    );
    // Outside the protected subnets a later fragment is certainly "anything"'s.
    let mut far = ipv4_in(6, 0x0003, &[0u8; 16]);
    far[12..16].copy_from_slice(&[192, 0, 2, 9]);
    assert_eq!(spd.lookup_packet(dir, &far).unwrap().action, Action::Bypass);
    // The flow API keeps matching semantics: with OPAQUE ports "rdp" cannot match.
    let f = Flow::from_packet(dir, &ipv4_in(6, 0x0003, &[0u8; 16])).unwrap();
    assert_eq!(spd.lookup(&f).policy, Some("anything"));
    match spd.lookup_non_first_fragment(&f) {
        FragmentDecision::Unresolved { could_match } => {
            assert_eq!(could_match.and_then(|d| d.policy), Some("rdp"));
        }
        other => panic!("{other:?}"),
    }
}

/// An IPv6 packet 2001:db8:1::7 -> 2001:db8::5 with a Fragment header (next header
/// `nh`, offset in 8-byte units, M flag) and `data` after it.
fn ipv6_fragment(nh: u8, offset: u16, more: bool, data: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[6] = 44;
    p[7] = 64;
    p[8..24].copy_from_slice(&ip6("2001:db8:1::7"));
    p[24..40].copy_from_slice(&ip6("2001:db8::5"));
    let fo = (offset << 3) | u16::from(more);
    p.extend_from_slice(&[nh, 0]);
    p.extend_from_slice(&fo.to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend_from_slice(data);
    let plen = (p.len() - 40) as u16;
    p[4..6].copy_from_slice(&plen.to_be_bytes());
    p
}

#[test]
fn ipv6_fragments_follow_the_same_rules() {
    let spd = protect_then_bypass();
    let dir = Direction::Inbound;
    let rdp = tcp_header(50000, 3389);
    let (flow, frag) =
        Flow::from_packet_with_fragment(dir, &ipv6_fragment(6, 0, true, &rdp)).unwrap();
    let frag = frag.expect("a fragment");
    assert_eq!(
        (frag.id, frag.offset, frag.len, frag.more),
        (0x1234_5678, 0, 20, true)
    );
    assert_eq!((flow.protocol, flow.dst_port), (6, Some(3389)));
    assert_eq!(
        spd.lookup_packet(dir, &ipv6_fragment(6, 0, true, &rdp))
            .unwrap()
            .policy,
        Some("rdp6")
    );
    assert_eq!(
        fragment_error(spd.lookup_packet(dir, &ipv6_fragment(6, 0, true, &rdp[..8]))),
        FragmentError::TooShort
    );
    assert_eq!(
        fragment_error(spd.lookup_packet(dir, &ipv6_fragment(6, 1, true, &[0; 16]))),
        FragmentError::Overlap
    );
    assert_eq!(
        fragment_error(spd.lookup_packet(dir, &ipv6_fragment(6, 5, false, &[0; 16]))),
        FragmentError::Unresolved
    );
    // Destination Options first in the fragmentable part: a later fragment does not
    // show its upper-layer protocol at all.
    assert_eq!(
        fragment_error(spd.lookup_packet(dir, &ipv6_fragment(60, 5, false, &[0; 16]))),
        FragmentError::Unresolved
    );
    // A later UDP fragment: certainly "anything".
    assert_eq!(
        spd.lookup_packet(dir, &ipv6_fragment(17, 5, false, &[0; 16]))
            .unwrap()
            .action,
        Action::Bypass
    );
    // An atomic fragment (offset 0, M clear, RFC 6946) is a whole packet.
    let (_, frag) =
        Flow::from_packet_with_fragment(dir, &ipv6_fragment(6, 0, false, &rdp)).unwrap();
    assert_eq!(frag, None);
    // Two Fragment headers: malformed, not a panic.
    let mut two = ipv6_fragment(44, 0, true, &[6, 0, 0, 1, 0, 0, 0, 1]);
    two.extend_from_slice(&rdp);
    let plen = (two.len() - 40) as u16;
    two[4..6].copy_from_slice(&plen.to_be_bytes());
    assert!(matches!(
        spd.lookup_packet(dir, &two),
        Err(Error::Malformed(_))
    ));
}

fn ip6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

#[test]
fn opaque_ports_match_only_any() {
    let text = format!(
        "{SAS}
[[policy]]
name = \"rdp\"
direction = \"outbound\"
protocol = \"tcp\"
remote_port = 3389
action = \"bypass\"

[[policy]]
name = \"tcp-any\"
direction = \"outbound\"
protocol = \"tcp\"
action = \"protect\"
sa = \"o\"
"
    );
    let spd = Spd::from_toml(&text).unwrap();
    let frag = Flow::new(Direction::Outbound, ip("10.0.0.1"), ip("10.0.0.2"), 6);
    assert_eq!(spd.lookup(&frag).policy, Some("tcp-any"));
    assert_eq!(spd.lookup(&frag.ports(1, 3389)).policy, Some("rdp"));
}

proptest! {
    /// An address list is exactly the union of its elements (the merge of overlapping and
    /// adjacent ranges loses and adds nothing). Both lookups share `AddrSet`, so this is
    /// checked on its own.
    #[test]
    fn address_list_is_the_union_of_its_elements(
        elems in prop::collection::vec(addr_elem(), 1..8),
        probes in prop::collection::vec((0u8..20, any::<bool>()), 1..40),
    ) {
        let set = ipsec_core::spd::AddrSet::parse_list(elems.iter().map(String::as_str)).unwrap();
        let singles: Vec<_> = elems
            .iter()
            .map(|e| ipsec_core::spd::AddrSet::parse(e).unwrap())
            .collect();
        for (i, six) in probes {
            let a: IpAddr = if six { v6(i).parse().unwrap() } else { v4(i).parse().unwrap() };
            prop_assert_eq!(set.contains(a), singles.iter().any(|s| s.contains(a)), "{} in {:?}", a, elems);
        }
        // Normalized: sorted, disjoint, not adjacent.
        for w in set.v4_ranges().windows(2) {
            prop_assert!(w[0].1.checked_add(1).is_some_and(|n| n < w[1].0));
        }
    }
}

/// The burst lookup on rule sets large enough for every stage of the compiled
/// classifier (thousands of intervals, so the top-level search takes many steps, long
/// lists, several groups), both families, against one lookup at a time and the naive
/// scan. The small address space of the property tests above gives few intervals.
#[test]
fn burst_equals_naive_on_large_rule_sets() {
    // xorshift64*: deterministic.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    };
    for six in [false, true] {
        let addr = |a: u64, b: u64, c: u64| -> String {
            if six {
                format!("2001:db8:{a:x}:{b:x}::{c:x}")
            } else {
                format!("10.{a}.{b}.{c}")
            }
        };
        let (net, host) = if six { (64, 128) } else { (24, 32) };
        let mut text = String::new();
        for i in 0..3000 {
            let remote = match next(10) {
                0 => String::new(),
                1..=6 => format!("remote = \"{}/{net}\"\n", addr(next(4), next(200), 0)),
                _ => format!(
                    "remote = \"{}/{host}\"\n",
                    addr(next(4), next(200), next(250))
                ),
            };
            // No rule leaves both addresses as "any" (a catch-all would end most scans).
            let local = if remote.is_empty() || next(3) != 0 {
                format!("local = \"{}/{net}\"\n", addr(100 + next(8), next(4), 0))
            } else {
                String::new()
            };
            let (proto, port) = match next(4) {
                0 => ("tcp", format!("remote_port = {}\n", 1 + next(30))),
                1 => (
                    "udp",
                    format!("local_port = \"{}-{}\"\n", 10, 10 + next(50)),
                ),
                2 => ("tcp", String::new()),
                _ => ("any", String::new()),
            };
            let action = ["bypass", "discard"][next(2) as usize];
            let dir = ["both", "outbound", "inbound"][next(3) as usize];
            text += &format!(
                "[[policy]]\nname = \"p{i}\"\ndirection = \"{dir}\"\n{local}{remote}\
                 protocol = \"{proto}\"\n{port}action = \"{action}\"\n"
            );
        }
        let spd = Spd::from_toml(&text).unwrap();
        let flows: Vec<Flow> = (0..2000)
            .map(|_| {
                let dir = [Direction::Outbound, Direction::Inbound][next(2) as usize];
                let local = addr(100 + next(9), next(4), next(250)).parse().unwrap();
                let remote = addr(next(5), next(200), next(250)).parse().unwrap();
                let (s, d) = match dir {
                    Direction::Outbound => (local, remote),
                    _ => (remote, local),
                };
                let proto = [6u8, 17, 1, 50][next(4) as usize];
                let f = Flow::new(dir, s, d, proto);
                if proto == 6 || proto == 17 {
                    f.ports(next(70) as u16, next(40) as u16)
                } else {
                    f
                }
            })
            .collect();
        let mut out = vec![Decision::NO_MATCH; flows.len()];
        // The default classifier (its lists' layout chosen by size), then the same
        // with its lists filtered whatever the size.
        let filtered = spd.recompiled(EngineKind::PartitionedFiltered);
        filtered.lookup_burst_staged(&flows, &mut out);
        for (f, d) in flows.iter().zip(&out) {
            assert_eq!(*d, filtered.lookup(f), "six={six} filtered {f:?}");
            assert_eq!(*d, spd.lookup_linear(f), "six={six} filtered {f:?}");
        }
        spd.lookup_burst_staged(&flows, &mut out);
        for (f, d) in flows.iter().zip(&out) {
            assert_eq!(*d, spd.lookup(f), "six={six} {f:?}");
            assert_eq!(*d, spd.lookup_linear(f), "six={six} {f:?}");
        }
        // Not a trivial answer: many flows match, some don't.
        let matched = out.iter().filter(|d| d.policy.is_some()).count();
        assert!(
            (500..1900).contains(&matched),
            "six={six}: {matched} matched"
        );
        let mut distinct: Vec<_> = out.iter().filter_map(|d| d.policy_index).collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(
            distinct.len() > 100,
            "six={six}: {} policies",
            distinct.len()
        );
    }
}
