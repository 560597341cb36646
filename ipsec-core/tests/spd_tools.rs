//! Policy tools: lint (every code, exactness of the shadow analysis, a brute-force
//! property check), firewall openings, policy tests (cases) and boundary probes.

use ipsec_core::spd::{Finding, Severity, lint_toml};
use ipsec_core::{Action, Direction, Flow, Spd};
use proptest::prelude::*;
use std::net::IpAddr;

/// The shared SA pair plus a second outbound SA ("o2").
const SAS: &str = concat!(
    include_str!("data/sa-pair.toml"),
    r#"
[[sa]]
name = "o2"
spi = 0x102
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "2233445566778899aabbccddeeff0011d1d2d3d4"
tunnel_src = "192.0.2.1"
tunnel_dst = "192.0.2.2"
"#
);

/// IKE bypass (so that `ike-blocked` stays quiet) + the given rules + a catch-all.
fn spd(rules: &str) -> Spd {
    let text = format!(
        r#"
[[policy]]
name = "ike"
direction = "both"
local = "192.0.2.1"
remote = "192.0.2.2"
protocol = "udp"
local_port = 500
remote_port = 500
action = "bypass"
{rules}
[[policy]]
name = "deny"
direction = "both"
action = "discard"
{SAS}"#
    );
    Spd::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn codes(f: &[Finding], code: &str) -> Vec<String> {
    f.iter()
        .filter(|x| x.code == code)
        .map(|x| x.policy.clone().unwrap_or_default())
        .collect()
}

fn show(f: &[Finding]) -> String {
    f.iter().map(|x| format!("{x}\n")).collect()
}

fn branch_office() -> Spd {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/branch-office.toml"
    );
    Spd::load(path).expect("branch-office.toml loads")
}

#[test]
fn shadowed_by_single_rule_with_other_action() {
    let f = spd(r#"
[[policy]]
name = "wide"
direction = "outbound"
local = "10.0.0.0/8"
action = "discard"
[[policy]]
name = "narrow"
direction = "outbound"
local = "10.1.0.0/16"
protocol = "tcp"
local_port = "1000-2000"
action = "bypass"
"#)
    .lint();
    assert_eq!(codes(&f, "shadowed"), ["narrow"], "{}", show(&f));
    let m = &f.iter().find(|x| x.code == "shadowed").unwrap().message;
    assert!(m.contains("\"wide\""), "{m}");
    assert_eq!(
        f.iter().find(|x| x.code == "shadowed").unwrap().severity,
        Severity::Error
    );
}

#[test]
fn shadowed_by_union_of_rules_none_covers_alone() {
    // Two halves of the address range, and two halves of the port range: no earlier
    // rule covers "all" alone, but together they do.
    let f = spd(r#"
[[policy]]
name = "low-half"
direction = "outbound"
local = "10.0.0.0/25"
protocol = "tcp"
action = "discard"
[[policy]]
name = "high-half-low-ports"
direction = "outbound"
local = "10.0.0.128/25"
protocol = "tcp"
local_port = "0-1023"
action = "discard"
[[policy]]
name = "high-half-high-ports"
direction = "outbound"
local = "10.0.0.128-10.0.0.255"
protocol = "tcp"
local_port = "1024-65535"
action = "bypass"
[[policy]]
name = "high-half-opaque"
direction = "outbound"
local = "10.0.0.128/25"
protocol = "tcp"
remote_port = "any"
local_port = "any"
action = "discard"
[[policy]]
name = "all"
direction = "outbound"
local = "10.0.0.0/24"
protocol = "tcp"
action = "discard"
"#)
    .lint();
    // "high-half-opaque" still matches (fragments with OPAQUE ports), so it is not
    // flagged; "all" is covered by the union and the bypass in it makes it shadowed.
    assert_eq!(codes(&f, "shadowed"), ["all"], "{}", show(&f));
    assert!(codes(&f, "redundant").is_empty(), "{}", show(&f));
    let m = &f.iter().find(|x| x.code == "shadowed").unwrap().message;
    assert!(m.contains("high-half-high-ports"), "{m}");
}

#[test]
fn union_with_one_uncovered_cell_is_not_shadowed() {
    // Ports 0-1023 and 1025-65535 (and OPAQUE via "any"? no): port 1024 is uncovered.
    let f = spd(r#"
[[policy]]
name = "a"
direction = "outbound"
local = "10.0.0.0/24"
protocol = "udp"
local_port = "0-1023"
action = "discard"
[[policy]]
name = "b"
direction = "outbound"
local = "10.0.0.0/24"
protocol = "udp"
local_port = "1025-65535"
action = "discard"
[[policy]]
name = "c"
direction = "outbound"
local = "10.0.0.0/24"
protocol = "udp"
local_port = "1000-2000"
action = "bypass"
"#);
    let l = f.lint();
    assert!(codes(&l, "shadowed").is_empty(), "{}", show(&l));
    assert!(codes(&l, "redundant").is_empty(), "{}", show(&l));
    // And the one cell really reaches "c".
    let flow = Flow::new(
        Direction::Outbound,
        "10.0.0.9".parse().unwrap(),
        "1.2.3.4".parse().unwrap(),
        17,
    )
    .ports(1024, 9);
    assert_eq!(f.lookup(&flow).policy, Some("c"));
    // "c" partly overlaps "a" and "b" with another action: conflicts, once per pair.
    let c = codes(&l, "conflict");
    assert_eq!(c, ["c", "c"], "{}", show(&l));
}

#[test]
fn redundant_vs_shadowed() {
    let f = spd(r#"
[[policy]]
name = "p1"
direction = "both"
local = "10.0.0.0/24"
remote = "10.1.0.0/24"
protocol = "tcp"
local_port = 443
action = "protect"
sa = ["o", "i"]
[[policy]]
name = "p2-same"
direction = "outbound"
local = "10.0.0.0/25"
remote = "10.1.0.0/24"
protocol = "tcp"
local_port = 443
action = "protect"
sa = "o"
[[policy]]
name = "p3-other-sa"
direction = "outbound"
local = "10.0.0.0/25"
remote = "10.1.0.0/24"
protocol = "tcp"
local_port = 443
action = "protect"
sa = "o2"
"#)
    .lint();
    assert_eq!(codes(&f, "redundant"), ["p2-same"], "{}", show(&f));
    assert_eq!(codes(&f, "shadowed"), ["p3-other-sa"], "{}", show(&f));
    let r = f.iter().find(|x| x.code == "redundant").unwrap();
    assert_eq!(r.severity, Severity::Warning);
}

#[test]
fn both_direction_rule_needs_both_directions_covered() {
    let f = spd(r#"
[[policy]]
name = "out-only"
direction = "outbound"
local = "10.0.0.0/24"
action = "discard"
[[policy]]
name = "both"
direction = "both"
local = "10.0.0.0/24"
action = "bypass"
[[policy]]
name = "wider-out"
direction = "outbound"
local = "10.0.0.0/23"
action = "discard"
[[policy]]
name = "both-2"
direction = "both"
local = "10.0.0.0/24"
protocol = "tcp"
action = "protect"
sa = ["o", "i"]
"#)
    .lint();
    // "both" is covered outbound only ("out-only"): it still decides inbound traffic,
    // and "out-only" is an exception inside it (contained): no conflict.
    // "both-2" is covered outbound by "out-only" and inbound by "both": shadowed.
    assert_eq!(codes(&f, "shadowed"), ["both-2"], "{}", show(&f));
    let m = &f.iter().find(|x| x.code == "shadowed").unwrap().message;
    assert!(m.contains("\"out-only\"") && m.contains("\"both\""), "{m}");
    // "wider-out" partly overlaps "both" (a /23 against a /24) with another action.
    assert_eq!(codes(&f, "conflict"), ["wider-out"], "{}", show(&f));
    let m = &f.iter().find(|x| x.code == "conflict").unwrap().message;
    assert!(m.contains("\"both\""), "{m}");
}

#[test]
fn exactness_ipv6() {
    // ::/1 and 8000::/1 cover all IPv6; the later rule is IPv6-only: shadowed.
    let f = spd(r#"
[[policy]]
name = "v6-low"
direction = "inbound"
local = "::/1"
action = "discard"
[[policy]]
name = "v6-high"
direction = "inbound"
local = "8000::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
action = "discard"
[[policy]]
name = "v6-all"
direction = "inbound"
local = "::/0"
remote = "2001:db8::/32"
action = "bypass"
[[policy]]
name = "v6-one-gap"
direction = "inbound"
local = ["::1", "::3"]
action = "discard"
[[policy]]
name = "v6-gap-filled-but-v4-open"
direction = "inbound"
local = ["::/0", "10.0.0.1"]
action = "bypass"
"#)
    .lint();
    assert_eq!(codes(&f, "shadowed"), ["v6-all"], "{}", show(&f));
    assert_eq!(codes(&f, "redundant"), ["v6-one-gap"], "{}", show(&f));
    // ::2 gap version: split IPv6 around one address.
    let g = spd(r#"
[[policy]]
name = "below"
direction = "outbound"
remote = "::-2001:db8::ffff"
action = "discard"
[[policy]]
name = "above"
direction = "outbound"
remote = "2001:db8::1:1-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
action = "discard"
[[policy]]
name = "v6-any"
direction = "outbound"
remote = "::/0"
action = "bypass"
"#);
    let l = g.lint();
    assert!(codes(&l, "shadowed").is_empty(), "{}", show(&l));
    let flow = Flow::new(
        Direction::Outbound,
        "::1".parse().unwrap(),
        "2001:db8::1:0".parse().unwrap(),
        6,
    )
    .ports(1, 2);
    assert_eq!(g.lookup(&flow).policy, Some("v6-any"));
}

#[test]
fn family_mismatch_matches_nothing() {
    let f = spd(r#"
[[policy]]
name = "mixed"
direction = "outbound"
local = "10.0.0.0/8"
remote = "2001:db8::/32"
action = "bypass"
"#)
    .lint();
    assert_eq!(codes(&f, "shadowed"), ["mixed"], "{}", show(&f));
}

#[test]
fn icmp_selectors_are_exact() {
    // Type 8 with any code, then type 8 code 0: redundant. Type any after all 256 types
    // individually would still match OPAQUE (fragments): not flagged.
    let f = spd(r#"
[[policy]]
name = "echo"
direction = "outbound"
protocol = "icmp"
icmp_type = 8
action = "bypass"
[[policy]]
name = "echo-0"
direction = "outbound"
protocol = "icmp"
icmp_type = 8
icmp_code = 0
action = "bypass"
[[policy]]
name = "icmp-any"
direction = "outbound"
protocol = "icmp"
action = "discard"
"#)
    .lint();
    assert_eq!(codes(&f, "redundant"), ["echo-0"], "{}", show(&f));
    assert!(codes(&f, "shadowed").is_empty(), "{}", show(&f));
}

#[test]
fn after_catch_all_everything_is_shadowed_or_redundant() {
    let f = Spd::from_toml(&format!(
        r#"
[[policy]]
name = "ike"
direction = "both"
local = "192.0.2.1"
remote = "192.0.2.2"
protocol = "udp"
local_port = 500
remote_port = 500
action = "bypass"
[[policy]]
name = "deny"
direction = "both"
action = "discard"
[[policy]]
name = "late-bypass"
direction = "both"
protocol = "tcp"
action = "bypass"
[[policy]]
name = "late-discard"
direction = "inbound"
protocol = "icmp"
action = "discard"
{SAS}"#
    ))
    .unwrap()
    .lint();
    assert_eq!(codes(&f, "shadowed"), ["late-bypass"], "{}", show(&f));
    assert_eq!(codes(&f, "redundant"), ["late-discard"], "{}", show(&f));
    assert!(codes(&f, "no-catch-all").is_empty());
}

#[test]
fn no_catch_all_and_ike_blocked() {
    let text = format!(
        r#"
[[policy]]
name = "web"
direction = "both"
local = "10.0.0.0/24"
protocol = "tcp"
local_port = 443
action = "protect"
sa = ["o", "i"]
[[policy]]
name = "deny-out"
direction = "outbound"
action = "discard"
{SAS}"#
    );
    let f = Spd::from_toml(&text).unwrap().lint();
    let nc: Vec<&Finding> = f.iter().filter(|x| x.code == "no-catch-all").collect();
    assert_eq!(nc.len(), 1, "{}", show(&f));
    assert!(nc[0].message.contains("inbound"), "{}", nc[0]);
    assert!(!nc[0].message.contains("outbound"), "{}", nc[0]);
    assert_eq!(nc[0].policy, None);
    // IKE: outbound discarded by "deny-out"; inbound matched by no policy.
    let ike: Vec<&Finding> = f.iter().filter(|x| x.code == "ike-blocked").collect();
    assert_eq!(ike.len(), 2, "{}", show(&f));
    assert_eq!(ike[0].policy.as_deref(), Some("deny-out"));
    assert_eq!(ike[1].policy, None);
    assert!(ike.iter().all(|x| x.severity == Severity::Error));
}

#[test]
fn ike_blocked_by_protect_and_nat_t() {
    let text = r#"
[[policy]]
name = "ike"
direction = "both"
local = "192.0.2.1"
remote = "192.0.2.2"
protocol = "udp"
local_port = 500
remote_port = 500
action = "bypass"
[[policy]]
name = "everything-encrypted"
direction = "both"
action = "protect"
sa = ["o", "i"]

[[sa]]
name = "o"
spi = 0x100
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "00112233445566778899aabbccddeeff01020304"
tunnel_src = "192.0.2.1"
tunnel_dst = "192.0.2.2"
udp_encap = [4500, 4500]

[[sa]]
name = "i"
spi = 0x101
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "8899aabbccddeeff0011223344556677c1c2c3c4"
"#;
    let f = Spd::from_toml(text).unwrap().lint();
    let ike: Vec<&Finding> = f.iter().filter(|x| x.code == "ike-blocked").collect();
    // UDP 500 is let through; UDP 4500 (NAT-T) both ways would be encrypted.
    assert_eq!(ike.len(), 2, "{}", show(&f));
    assert!(
        ike.iter().all(|x| x.message.contains("4500")
            && x.message.contains("encrypted")
            && x.policy.as_deref() == Some("everything-encrypted")),
        "{}",
        show(&f)
    );
    // The SPD also warns that the catch-all protects, not discards? No: a protect
    // catch-all is a catch-all.
    assert!(codes(&f, "no-catch-all").is_empty(), "{}", show(&f));
}

#[test]
fn protocol_number_as_port_and_any_any_bypass() {
    let f = spd(r#"
[[policy]]
name = "esp-as-port"
direction = "outbound"
protocol = "udp"
remote_port = 50
action = "bypass"
[[policy]]
name = "ah-as-port"
direction = "outbound"
protocol = "tcp"
local_port = "51"
action = "bypass"
[[policy]]
name = "range-ok"
direction = "outbound"
protocol = "tcp"
local_port = "40-60"
action = "bypass"
[[policy]]
name = "real-esp"
direction = "outbound"
protocol = "esp"
action = "bypass"
[[policy]]
name = "open-door"
direction = "both"
action = "bypass"
"#)
    .lint();
    assert_eq!(
        codes(&f, "protocol-number-as-port"),
        ["esp-as-port", "ah-as-port"],
        "{}",
        show(&f)
    );
    let m = &f
        .iter()
        .find(|x| x.code == "protocol-number-as-port")
        .unwrap()
        .message;
    assert!(
        m.contains("ESP and AH are IP protocols 50 and 51, not ports"),
        "{m}"
    );
    assert_eq!(codes(&f, "any-any-bypass"), ["open-door"], "{}", show(&f));
    // The final "deny" comes after the any-any bypass: redundant? No: shadowed
    // (bypass decides otherwise).
    assert_eq!(codes(&f, "shadowed"), ["deny"], "{}", show(&f));
}

const RDP_PROTECT: &str = r#"
[[policy]]
name = "rdp"
direction = "both"
local = "10.0.0.0/24"
remote = "10.1.0.0/16"
protocol = "tcp"
local_port = 3389
action = "protect"
sa = ["o", "i"]
"#;

#[test]
fn fragment_bypass_after_a_port_specific_protect() {
    // The issue's policy: PROTECT tcp/3389 between two subnets, then BYPASS any.
    let f = spd(&format!(
        "{RDP_PROTECT}
[[policy]]
name = \"rest\"
direction = \"both\"
action = \"bypass\"
"
    ))
    .lint();
    assert_eq!(codes(&f, "fragment-bypass"), ["rest"], "{}", show(&f));
    let x = f.iter().find(|x| x.code == "fragment-bypass").unwrap();
    assert_eq!(x.severity, Severity::Warning);
    for needle in [
        "follows the PROTECT \"rdp\" (tcp local_port = 3389)",
        "non-first fragments carry no ports",
        "10.0.0.0 -> 10.1.0.0 tcp fragments",
        "fragment_unresolved",
        "with ports \"any\"",
        "RFC 4301 §7",
    ] {
        assert!(
            x.message.contains(needle),
            "{needle:?} not in {}",
            x.message
        );
    }
    // ICMP type selectors are the same story.
    let f = spd(r#"
[[policy]]
name = "ping"
direction = "outbound"
local = "10.0.0.0/24"
protocol = "icmp"
icmp_type = 8
action = "protect"
sa = "o"
[[policy]]
name = "rest"
direction = "outbound"
action = "bypass"
"#)
    .lint();
    assert_eq!(codes(&f, "fragment-bypass"), ["rest"], "{}", show(&f));
    assert!(
        f.iter()
            .any(|x| x.code == "fragment-bypass" && x.message.contains("icmp_type = 8")),
        "{}",
        show(&f)
    );
}

#[test]
fn fragment_bypass_is_quiet_when_fragments_cannot_reach_the_bypass() {
    for (what, rules) in [
        (
            "another protocol",
            "[[policy]]\nname = \"b\"\ndirection = \"both\"\nprotocol = \"udp\"\naction = \"bypass\"\n",
        ),
        (
            "other addresses",
            "[[policy]]\nname = \"b\"\ndirection = \"both\"\nremote = \"10.2.0.0/16\"\naction = \"bypass\"\n",
        ),
        (
            "a port-any DISCARD of the protocol in between",
            "[[policy]]\nname = \"no-tcp\"\ndirection = \"both\"\nlocal = \"10.0.0.0/24\"\n\
             remote = \"10.1.0.0/16\"\nprotocol = \"tcp\"\naction = \"discard\"\n\
             [[policy]]\nname = \"b\"\ndirection = \"both\"\naction = \"bypass\"\n",
        ),
        (
            "a port-specific BYPASS",
            "[[policy]]\nname = \"b\"\ndirection = \"both\"\nprotocol = \"tcp\"\n\
             remote_port = 80\naction = \"bypass\"\n",
        ),
        (
            "a DISCARD rather than a BYPASS",
            "[[policy]]\nname = \"b\"\ndirection = \"both\"\nprotocol = \"tcp\"\naction = \"discard\"\n",
        ),
        (
            "a BYPASS of the other direction only",
            "[[policy]]\nname = \"b\"\ndirection = \"inbound\"\naction = \"bypass\"\n",
        ),
    ] {
        let protect = if what.contains("other direction") {
            RDP_PROTECT
                .replace("\"both\"", "\"outbound\"")
                .replace("[\"o\", \"i\"]", "\"o\"")
        } else {
            RDP_PROTECT.to_string()
        };
        let f = spd(&format!("{protect}{rules}")).lint();
        assert!(
            codes(&f, "fragment-bypass").is_empty(),
            "{what}:\n{}",
            show(&f)
        );
    }
    // A PROTECT with ports "any" covers the fragments itself.
    let f = spd(&format!(
        "{}[[policy]]\nname = \"b\"\ndirection = \"both\"\naction = \"bypass\"\n",
        RDP_PROTECT.replace("local_port = 3389\n", "")
    ))
    .lint();
    assert!(codes(&f, "fragment-bypass").is_empty(), "{}", show(&f));
}

#[test]
fn cases_without_ports_are_non_first_fragments() {
    let spd = spd(&format!(
        "{RDP_PROTECT}
[[policy]]
name = \"rest\"
direction = \"both\"
action = \"bypass\"
"
    ));
    let report = spd
        .run_cases(
            r#"
[[case]]
name = "a later RDP fragment is not bypassed"
direction = "inbound"
src = "10.1.0.7"
dst = "10.0.0.10"
protocol = "tcp"
expect = "bypass"

[[case]]
name = "it is dropped"
direction = "inbound"
src = "10.1.0.7"
dst = "10.0.0.10"
protocol = "tcp"
expect = "discard"

[[case]]
name = "a later UDP fragment is rest's"
direction = "inbound"
src = "10.1.0.7"
dst = "10.0.0.10"
protocol = "udp"
expect = "bypass"
policy = "rest"

[[case]]
name = "a whole RDP packet"
direction = "inbound"
src = "10.1.0.7"
dst = "10.0.0.10"
protocol = "tcp"
src_port = 50000
dst_port = 3389
expect = "protect"
"#,
        )
        .unwrap();
    let o = &report.outcomes;
    assert_eq!(
        o.iter().map(|c| c.passed).collect::<Vec<_>>(),
        [false, true, true, true],
        "{report}"
    );
    assert_eq!(
        (o[0].action, o[0].policy.as_deref()),
        (Action::Discard, None)
    );
    assert!(
        o[0].message.contains("non-first fragment")
            && o[0].message.contains("\"rdp\"")
            && o[0].message.contains("fragment_unresolved"),
        "{}",
        o[0].message
    );
    assert!(
        o[2].message.contains("as a non-first fragment"),
        "{}",
        o[2].message
    );
}

#[test]
fn branch_office_lint() {
    let f = branch_office().lint();
    println!("branch-office.toml lint:\n{}", show(&f));
    assert!(
        f.iter().all(|x| x.severity != Severity::Error),
        "{}",
        show(&f)
    );
    // The file is clean: no warnings either.
    assert!(f.is_empty(), "{}", show(&f));
}

#[test]
fn lint_toml_reports_every_load_error() {
    let text = r#"
[[policy]]
name = "bad-addr"
direction = "outbound"
local = "10.0.0.300"
action = "discard"
[[policy]]
name = "bad-ports"
direction = "outbound"
protocol = "icmp"
local_port = 80
action = "discard"
[[policy]]
name = "unknown-sa"
direction = "outbound"
action = "protect"
sa = "nope"
"#;
    let f = lint_toml(text);
    println!("{}", show(&f));
    assert_eq!(f.len(), 3, "{}", show(&f));
    assert!(
        f.iter()
            .all(|x| x.code == "invalid" && x.severity == Severity::Error)
    );
    let pols: Vec<_> = f.iter().map(|x| x.policy.as_deref().unwrap()).collect();
    assert_eq!(pols, ["bad-addr", "bad-ports", "unknown-sa"]);
    assert!(f[0].message.contains("local"), "{}", f[0]);
    assert!(f[1].message.contains("local_port"), "{}", f[1]);
    // A file that loads: the lint findings.
    let ok = lint_toml("[[policy]]\nname = \"x\"\ndirection = \"both\"\naction = \"bypass\"\n");
    assert_eq!(codes(&ok, "any-any-bypass"), ["x"]);
    // Broken TOML: one invalid finding with no policy.
    let broken = lint_toml("[[policy]\n");
    assert_eq!(broken.len(), 1);
    assert_eq!(broken[0].code, "invalid");
    assert_eq!(broken[0].policy, None);
}

#[test]
fn finding_display() {
    let f = lint_toml("[[policy]]\nname = \"x\"\ndirection = \"both\"\naction = \"bypass\"\n");
    let s = f
        .iter()
        .find(|x| x.code == "any-any-bypass")
        .unwrap()
        .to_string();
    assert!(
        s.starts_with("warning[any-any-bypass] policy \"x\": "),
        "{s}"
    );
}

#[test]
fn firewall_openings_branch_office() {
    let o = branch_office().firewall_openings();
    let lines: Vec<String> = o.iter().map(ToString::to_string).collect();
    println!("{}", lines.join("\n"));
    let ho = "192.0.2.1";
    let mut expect = Vec::new();
    for br in ["198.51.100.2", "203.0.113.2"] {
        expect.push(format!("{ho} -> {br}  udp/500 (IKE)"));
        expect.push(format!("{br} -> {ho}  udp/500 (IKE)"));
        expect.push(format!(
            "{ho} -> {br}  IP protocol 50 (ESP)  (not a TCP/UDP port)"
        ));
        expect.push(format!(
            "{br} -> {ho}  IP protocol 50 (ESP)  (not a TCP/UDP port)"
        ));
    }
    assert_eq!(lines, expect);
    assert!(o.iter().all(|x| x.protocol != 51), "no AH");
    assert!(o.iter().all(|x| x.port != Some(4500)), "no NAT-T");
    assert!(o[2].reason.contains("ho-to-b1"), "{}", o[2].reason);
    assert_eq!(o[2].protocol_name, "ESP");
    assert_eq!(o[2].port, None);
}

#[test]
fn firewall_openings_nat_t() {
    let text = r#"
[[sa]]
name = "o"
spi = 0x100
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "00112233445566778899aabbccddeeff01020304"
tunnel_src = "192.0.2.1"
tunnel_dst = "192.0.2.2"
udp_encap = [4500, 4500]

[[sa]]
name = "i"
spi = 0x101
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "8899aabbccddeeff0011223344556677c1c2c3c4"

[[policy]]
name = "p"
direction = "both"
action = "protect"
sa = ["o", "i"]
"#;
    let o = Spd::from_toml(text).unwrap().firewall_openings();
    let lines: Vec<String> = o.iter().map(ToString::to_string).collect();
    println!("{}", lines.join("\n"));
    // The inbound SA has no tunnel endpoints: it takes the outbound SA's, swapped.
    assert_eq!(
        lines,
        [
            "192.0.2.1 -> 192.0.2.2  udp/500 (IKE)",
            "192.0.2.2 -> 192.0.2.1  udp/500 (IKE)",
            "192.0.2.1 -> 192.0.2.2  udp/4500 (IKE and ESP with NAT-T)",
            "192.0.2.2 -> 192.0.2.1  udp/4500 (IKE and ESP with NAT-T)",
            "192.0.2.2 -> 192.0.2.1  IP protocol 50 (ESP)  (not a TCP/UDP port)",
        ]
    );
    // ESP of the outbound SA travels inside UDP 4500: merged into that opening.
    assert!(o[2].reason.contains("inside UDP"), "{}", o[2].reason);
}

const BRANCH_CASES: &str = r#"
[[case]]
name = "branch 1 reaches the terminal server"
direction = "inbound"
src = "10.1.0.7"
dst = "10.0.0.10"
protocol = "tcp"
src_port = 50000
dst_port = 3389
expect = "protect"
policy = "b1-rdp"

[[case]]
direction = "outbound"
src = "10.0.0.20"
dst = "10.2.0.9"
protocol = "tcp"
src_port = 443
dst_port = 50000
expect = "protect"

[[case]]
name = "ssh is refused"
direction = "inbound"
src = "10.1.0.7"
dst = "10.0.0.5"
protocol = "tcp"
src_port = 50000
dst_port = 22
expect = "discard"

[[case]]
name = "wrong expectation"
direction = "inbound"
src = "10.1.0.7"
dst = "10.0.0.10"
protocol = "tcp"
src_port = 50000
dst_port = 3389
expect = "bypass"

[[case]]
name = "wrong policy"
direction = "inbound"
src = "10.1.0.7"
dst = "10.0.0.30"
protocol = "tcp"
src_port = 50000
dst_port = 445
expect = "protect"
policy = "b1-rdp"

[[case]]
name = "ping"
direction = "outbound"
src = "10.0.0.5"
dst = "10.1.0.1"
protocol = "icmp"
icmp_type = 8
icmp_code = 0
expect = "discard"
policy = "deny-everything-else"
"#;

#[test]
fn cases_pass_and_fail_messages() {
    let r = branch_office().run_cases(BRANCH_CASES).unwrap();
    println!("{r}");
    assert_eq!(r.outcomes.len(), 6);
    assert_eq!((r.passed(), r.failed()), (4, 2));
    assert!(!r.all_passed());
    let by = |n: &str| r.outcomes.iter().find(|o| o.name.contains(n)).unwrap();
    assert!(by("terminal").passed);
    assert_eq!(by("terminal").sa.as_deref(), Some("b1-to-ho"));
    assert_eq!(r.outcomes[1].name, "case #2");
    assert!(r.outcomes[1].passed);
    let w = by("wrong expectation");
    assert!(!w.passed);
    assert_eq!(w.action, Action::Protect);
    assert!(
        w.message
            .contains("expected bypass, but it matched policy \"b1-rdp\" (action protect) instead"),
        "{}",
        w.message
    );
    let p = by("wrong policy");
    assert!(!p.passed);
    assert!(
        p.message
            .contains("matched policy \"b1-print-smb\" (action protect) instead"),
        "{}",
        p.message
    );
    assert!(by("ping").passed);
    assert!(r.to_string().ends_with("4 passed, 2 failed"));
}

#[test]
fn cases_file_errors_name_case_and_key() {
    let spd = branch_office();
    let bad = |t: &str| spd.run_cases(t).unwrap_err().to_string();
    let e = bad(
        "[[case]]\nname = \"x\"\ndirection = \"inbound\"\nsrc = \"10.0.0.1\"\ndst = \"10.0.0.2\"\nprotocol = \"tcp\"\nexpect = \"discard\"\ncolour = 1\n",
    );
    assert!(
        e.contains("case \"x\": colour") && e.contains("unknown key"),
        "{e}"
    );
    let e = bad(
        "[[case]]\ndirection = \"inbound\"\nsrc = \"10.0.0.1\"\ndst = \"10.0.0.2\"\nprotocol = \"icmp\"\ndst_port = 5\nexpect = \"discard\"\n",
    );
    assert!(e.contains("case #1: dst_port"), "{e}");
    let e = bad(
        "[[case]]\ndirection = \"inbound\"\nsrc = \"10.0.0.1\"\ndst = \"10.0.0.2\"\nprotocol = \"tcp\"\nexpect = \"maybe\"\n",
    );
    assert!(e.contains("case #1: expect"), "{e}");
    let e = bad(
        "[[case]]\ndirection = \"inbound\"\nsrc = \"10.0.0.999\"\ndst = \"10.0.0.2\"\nprotocol = \"tcp\"\nexpect = \"discard\"\n",
    );
    assert!(e.contains("case #1: src"), "{e}");
    let e = bad(
        "[[case]]\ndirection = \"inbound\"\nsrc = \"10.0.0.1\"\nprotocol = \"tcp\"\nexpect = \"discard\"\n",
    );
    assert!(e.contains("case #1: dst") && e.contains("missing"), "{e}");
    let e = bad("[[cases]]\n");
    assert!(e.contains("toml"), "{e}");
}

#[test]
fn run_cases_all_errors_reports_every_bad_case() {
    let spd = branch_office();
    let case = |name: &str, extra: &str| {
        format!(
            "[[case]]\nname = \"{name}\"\ndirection = \"inbound\"\nsrc = \"10.1.0.1\"\ndst = \"10.0.0.10\"\nprotocol = \"tcp\"\n{extra}\n"
        )
    };
    let text = [
        case("a", "expect = \"maybe\""),
        case("ok", "dst_port = 3389\nexpect = \"protect\""),
        case("b", "expect = \"discard\"\ncolour = 1"),
        case("c", "dst_port = 70000\nexpect = \"discard\""),
    ]
    .concat();
    let errors = spd.run_cases_all_errors(&text).unwrap_err();
    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(texts.len(), 3, "{texts:?}");
    assert!(texts[0].contains("case \"a\": expect"), "{texts:?}");
    assert!(texts[1].contains("case \"b\": colour"), "{texts:?}");
    assert!(texts[2].contains("case \"c\": dst_port"), "{texts:?}");
    // run_cases keeps answering with the first one.
    assert_eq!(spd.run_cases(&text).unwrap_err().to_string(), texts[0]);
    let good = case("ok", "dst_port = 3389\nexpect = \"protect\"");
    assert!(spd.run_cases_all_errors(&good).unwrap().all_passed());
}

#[test]
fn probes_branch_office() {
    let spd = branch_office();
    let probes = spd.probes();
    for p in &probes {
        println!("{p}");
    }
    assert!(!probes.is_empty());
    // Inside probes of every rule hit the rule itself (nothing is shadowed here).
    for p in probes.iter().filter(|p| p.inside) {
        assert!(p.hits_self(), "{p}");
    }
    // RDP: port 3388 and 3390 fall through to the catch-all.
    let rdp: Vec<_> = probes
        .iter()
        .filter(|p| p.policy == "b1-rdp" && p.selector == "local_port" && !p.inside)
        .collect();
    assert_eq!(rdp.len(), 4, "two directions, below and above");
    assert!(
        rdp.iter().all(
            |p| p.hit.as_deref() == Some("deny-everything-else") && p.action == Action::Discard
        )
    );
    // Address edges: the local range's ends are inside (and hit the rule), the
    // addresses next to them are not; remote 10.1.0.0 - 1 is outside.
    assert!(
        probes
            .iter()
            .any(|p| p.policy == "b1-rdp" && p.selector == "local" && p.inside && p.hits_self())
    );
    assert!(
        probes
            .iter()
            .filter(|p| p.policy == "b1-rdp" && p.selector == "local" && !p.inside)
            .all(|p| !p.hits_self())
    );
    assert!(probes.iter().any(|p| p.policy == "b1-rdp"
        && p.selector == "remote"
        && !p.inside
        && p.description.contains("10.0.255.255")));
    // Protocol: udp instead of tcp is refused.
    assert!(
        probes.iter().any(|p| p.policy == "b2-rdp"
            && p.selector == "protocol"
            && p.action == Action::Discard)
    );
    // Every probe's decision is the lookup's.
    for p in &probes {
        assert_eq!(spd.lookup(&p.flow).policy, p.hit.as_deref());
    }
}

#[test]
fn probes_of_shadowed_rule_do_not_hit_it() {
    let s = spd(r#"
[[policy]]
name = "wide"
direction = "outbound"
local = "10.0.0.0/8"
action = "discard"
[[policy]]
name = "narrow"
direction = "outbound"
local = "10.1.0.0/16"
action = "bypass"
"#);
    let probes = s.probes();
    let narrow: Vec<_> = probes.iter().filter(|p| p.policy == "narrow").collect();
    assert!(!narrow.is_empty());
    assert!(narrow.iter().all(|p| !p.hits_self()));
    // "wide": the base probe is a witness the rule itself decides.
    assert!(
        probes
            .iter()
            .any(|p| p.policy == "wide" && p.selector == "base" && p.hits_self())
    );
}

// ---------------------------------------------------------------------------------
// Brute force cross-check of shadowed/redundant on a tiny space
// ---------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct R {
    dir: u8,
    local: (u8, u8),
    remote: Option<(u8, u8)>,
    proto: u8,
    lport: Option<(u16, u16)>,
    rport: Option<(u16, u16)>,
    icmp: Option<(u8, Option<u8>)>,
    action: u8,
}

fn range8() -> impl Strategy<Value = (u8, u8)> {
    (0u8..8, 0u8..8).prop_map(|(a, b)| (a.min(b), a.max(b)))
}

fn range16() -> impl Strategy<Value = Option<(u16, u16)>> {
    prop_oneof![
        2 => Just(None),
        3 => (0u16..6, 0u16..6).prop_map(|(a, b)| Some((a.min(b), a.max(b)))),
    ]
}

fn rule() -> impl Strategy<Value = R> {
    (
        0u8..3,
        prop_oneof![1 => Just((0u8, 255u8)), 3 => range8()],
        prop_oneof![1 => Just(None), 3 => range8().prop_map(Some)],
        0u8..4,
        range16(),
        range16(),
        prop_oneof![2 => Just(None), 2 => (0u8..3, prop_oneof![Just(None), (0u8..2).prop_map(Some)]).prop_map(Some)],
        0u8..4,
    )
        .prop_map(|(dir, local, remote, proto, lport, rport, icmp, action)| R {
            dir,
            local,
            remote,
            proto,
            lport,
            rport,
            icmp,
            action,
        })
}

fn to_toml(rules: &[R]) -> String {
    let mut s = String::new();
    for (i, r) in rules.iter().enumerate() {
        s.push_str(&format!("[[policy]]\nname = \"r{i}\"\n"));
        s.push_str(&format!(
            "direction = \"{}\"\n",
            ["outbound", "inbound", "both"][r.dir as usize]
        ));
        if r.local != (0, 255) {
            s.push_str(&format!(
                "local = \"10.0.0.{}-10.0.0.{}\"\n",
                r.local.0, r.local.1
            ));
        }
        if let Some((a, b)) = r.remote {
            s.push_str(&format!(
                "remote = [\"10.0.0.{a}-10.0.0.{b}\", \"::{a}\"]\n"
            ));
        }
        // 0: any, 1: tcp, 2: udp, 3: icmp
        match r.proto {
            1 | 2 => {
                s.push_str(&format!(
                    "protocol = \"{}\"\n",
                    ["", "tcp", "udp"][r.proto as usize]
                ));
                for (k, v) in [("local_port", r.lport), ("remote_port", r.rport)] {
                    if let Some((a, b)) = v {
                        s.push_str(&format!("{k} = \"{a}-{b}\"\n"));
                    }
                }
            }
            3 => {
                s.push_str("protocol = \"icmp\"\n");
                if let Some((t, c)) = r.icmp {
                    s.push_str(&format!("icmp_type = {t}\n"));
                    if let Some(c) = c {
                        s.push_str(&format!("icmp_code = {c}\n"));
                    }
                }
            }
            _ => {}
        }
        match r.action {
            0 => s.push_str("action = \"discard\"\n"),
            1 => s.push_str("action = \"bypass\"\n"),
            2 | 3 => {
                let sa = match (r.dir, r.action) {
                    (0, 2) => "\"o\"",
                    (0, _) => "\"o2\"",
                    (1, _) => "\"i\"",
                    (_, 2) => "[\"o\", \"i\"]",
                    _ => "[\"o2\", \"i\"]",
                };
                s.push_str(&format!("action = \"protect\"\nsa = {sa}\n"));
            }
            _ => unreachable!(),
        }
    }
    s.push_str(SAS);
    s
}

/// Every packet-derivable flow of the tiny space: addresses 10.0.0.0-8 and
/// 9.255.255.255 (plus ::0-::8), protocols tcp/udp/icmp/gre, ports 0-6 or none,
/// ICMP type 0-3 x code 0-2 or none.
fn all_flows() -> Vec<Flow> {
    let mut addrs: Vec<(IpAddr, IpAddr)> = Vec::new();
    let v4: Vec<IpAddr> = std::iter::once("9.255.255.255".parse().unwrap())
        .chain((0..=8).map(|i| format!("10.0.0.{i}").parse().unwrap()))
        .collect();
    for &a in &v4 {
        for &b in &v4 {
            addrs.push((a, b));
        }
    }
    let v6: Vec<IpAddr> = (0..=8).map(|i| format!("::{i}").parse().unwrap()).collect();
    for &a in &v6 {
        for &b in &v6 {
            addrs.push((a, b));
        }
    }
    let mut out = Vec::new();
    for d in [Direction::Outbound, Direction::Inbound] {
        for &(s, t) in &addrs {
            for proto in [6u8, 17] {
                out.push(Flow::new(d, s, t, proto));
                for sp in 0..=6 {
                    for dp in 0..=6 {
                        out.push(Flow::new(d, s, t, proto).ports(sp, dp));
                    }
                }
            }
            out.push(Flow::new(d, s, t, 1));
            for ty in 0..=3 {
                for c in 0..=2 {
                    out.push(Flow::new(d, s, t, 1).icmp(ty, c));
                }
            }
            out.push(Flow::new(d, s, t, 47));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn shadow_analysis_matches_brute_force(rules in prop::collection::vec(rule(), 1..6)) {
        let text = to_toml(&rules);
        let spd = Spd::from_toml(&text).unwrap();
        let findings = spd.lint();
        let mut wins = vec![false; rules.len()];
        for f in all_flows() {
            if let Some(i) = spd.lookup_linear(&f).policy_index {
                wins[i] = true;
            }
        }
        for (i, won) in wins.iter().enumerate() {
            let name = format!("r{i}");
            let flagged = findings.iter().any(|f| {
                (f.code == "shadowed" || f.code == "redundant")
                    && f.policy.as_deref() == Some(name.as_str())
            });
            prop_assert!(
                flagged != *won,
                "rule {} flagged={} wins={}\n{}\n{}",
                name, flagged, won, text, show(&findings)
            );
            let incomplete = findings.iter().any(|f| f.code == "incomplete");
            prop_assert!(!incomplete);
        }
    }
}

/// `ipsec policy lint` must report every problem of a file in one run: load errors of
/// the broken policies and the analysis of the policies that did load, each finding
/// naming its policy once.
#[test]
fn lint_toml_reports_load_errors_and_lints_the_rest() {
    let text = r#"
[[policy]]
name = "web"
direction = "outbound"
local = "10.0.0.0/24"
protocol = "tcp"
remote_port = 50
action = "bypass"

[[policy]]
name = "web-narrow"
direction = "outbound"
local = "10.0.0.5"
protocol = "tcp"
remote_port = 50
action = "discard"

[[policy]]
name = "broken"
direction = "outbound"
local = "10.0.0.300/24"
action = "bypass"
"#;
    let findings = lint_toml(text);
    let has = |code: &str, policy: &str| {
        findings
            .iter()
            .any(|f| f.code == code && f.policy.as_deref() == Some(policy))
    };
    assert!(has("invalid", "broken"), "{findings:#?}");
    assert!(has("shadowed", "web-narrow"), "{findings:#?}");
    assert!(has("protocol-number-as-port", "web"), "{findings:#?}");
    let invalid = findings.iter().find(|f| f.code == "invalid").unwrap();
    assert!(
        invalid.message.starts_with("local: "),
        "the policy is named once, by the finding: {}",
        invalid.message
    );
}

// ---------------------------------------------------------------------------------
// Issue 11 ("Hardening"), items 2, 4, 7, 8, 9: the SAs a file defines, and the
// consistency of lint, loaders and hints.
// ---------------------------------------------------------------------------------

/// One `[[sa]]` table; `extra` adds lines (integrity, tunnel endpoints, ...).
fn sa_table(name: &str, spi: u32, direction: &str, cipher: &str, key: &str, extra: &str) -> String {
    format!(
        "\n[[sa]]\nname = \"{name}\"\nspi = {spi:#x}\ndirection = \"{direction}\"\nmode = \
         \"tunnel\"\ncipher = \"{cipher}\"\nkey = \"{key}\"\n{extra}\n"
    )
}

const TUNNEL: &str = "tunnel_src = \"192.0.2.1\"\ntunnel_dst = \"192.0.2.2\"";
const GCM_A: &str = "3f7c9a1e5b2d8046c1e9a7b3d5f20864a1b2c3d4";
const GCM_B: &str = "9e4b7d2c1a6f3058e2d4c6a8b0f1e3d5b1b2c3d4";
const HMAC_A: &str = "5a4b3c2d1e0f5a4b3c2d1e0f5a4b3c2d1e0f5a4b3c2d1e0f5a4b3c2d1e0f5a4b";

/// A policy file with a PROTECT policy over the SAs "out" and "in" and the given SA
/// tables, IKE let through and a catch-all.
fn file_with_sas(sas: &str) -> String {
    format!(
        r#"
[[policy]]
name = "ike"
local = "192.0.2.1"
remote = "192.0.2.2"
protocol = "udp"
local_port = 500
remote_port = 500
action = "bypass"
[[policy]]
name = "lan"
local = "10.0.0.0/24"
remote = "10.1.0.0/24"
action = "protect"
sa = ["out", "in"]
[[policy]]
name = "deny"
action = "discard"
{sas}"#
    )
}

/// Item 2: a key used by two SAs (two outbound SAs, an outbound and an inbound one,
/// keys that differ only in the salt, an integrity key, one SA's key as its own
/// integrity key) is refused by every loader with an error that names both SAs and
/// the field, never the key; `lint_toml` reports it as `invalid`.
#[test]
fn a_key_shared_by_two_sas_is_refused_by_every_loader() {
    let salt_only = format!("{}ffffffff", &GCM_A[..32]);
    let cases: Vec<(String, &str, &str)> = vec![
        (
            sa_table("out", 0x1000, "outbound", "aes-128-gcm", GCM_A, TUNNEL)
                + &sa_table("in", 0x2000, "inbound", "aes-128-gcm", GCM_B, "")
                + &sa_table("out-copy", 0x1001, "outbound", "aes-128-gcm", GCM_A, TUNNEL),
            "sa \"out-copy\": key",
            "the key of sa \"out\"",
        ),
        (
            sa_table("out", 0x1000, "outbound", "aes-128-gcm", GCM_A, TUNNEL)
                + &sa_table("in", 0x2000, "inbound", "aes-128-gcm", GCM_A, ""),
            "sa \"in\": key",
            "peer's outbound key",
        ),
        (
            sa_table("out", 0x1000, "outbound", "aes-128-gcm", GCM_A, TUNNEL)
                + &sa_table("in", 0x2000, "inbound", "aes-128-gcm", &salt_only, ""),
            "sa \"in\": key",
            "the key of sa \"out\"",
        ),
        (
            sa_table("out", 0x1000, "outbound", "aes-128-gcm", GCM_A, TUNNEL)
                + &sa_table(
                    "in",
                    0x2000,
                    "inbound",
                    "aes-256-cbc",
                    &HMAC_A[..64],
                    &format!("integrity = \"hmac-sha256-128\"\nintegrity_key = \"{HMAC_A}\""),
                ),
            "sa \"in\": integrity_key",
            "this SA's own key",
        ),
        (
            sa_table(
                "out",
                0x1000,
                "outbound",
                "null",
                "",
                &format!("integrity = \"hmac-sha256-128\"\nintegrity_key = \"{HMAC_A}\"\n{TUNNEL}"),
            ) + &sa_table(
                "in",
                0x2000,
                "inbound",
                "null",
                "",
                &format!("integrity = \"hmac-sha256-128\"\nintegrity_key = \"{HMAC_A}\""),
            ),
            "sa \"in\": integrity_key",
            "key separation",
        ),
    ];
    for (sas, field, says) in cases {
        let text = file_with_sas(&sas);
        let secrets = [&GCM_A[..8], &GCM_A[8..16], &HMAC_A[..8], &HMAC_A[8..16]];
        let clean = |what: &str, s: &str| {
            for secret in secrets {
                assert!(!s.contains(secret), "{what} shows key bytes: {s}");
            }
        };
        let e = Spd::from_toml(&text).expect_err("Spd::from_toml refuses a shared key");
        assert_eq!(e.field(), field, "{e}");
        assert!(e.message().contains(says), "{e}");
        clean("Display", &e.to_string());
        clean("Debug", &format!("{e:?}"));
        let e = ipsec_core::sa_file::parse_sa_file(&sas).expect_err("parse_sa_file refuses");
        assert_eq!(e.field(), field, "{e}");
        let f = lint_toml(&text);
        let invalid: Vec<&Finding> = f.iter().filter(|x| x.code == "invalid").collect();
        assert_eq!(invalid.len(), 1, "{}", show(&f));
        assert!(invalid[0].message.contains(field), "{}", invalid[0]);
        clean("lint", &show(&f));
    }
    // Distinct keys load, and the gateway is built.
    let ok = file_with_sas(
        &(sa_table("out", 0x1000, "outbound", "aes-128-gcm", GCM_A, TUNNEL)
            + &sa_table("in", 0x2000, "inbound", "aes-128-gcm", GCM_B, "")),
    );
    let spd = Spd::from_toml(&ok).expect("distinct keys load");
    ipsec_core::Gateway::new(spd, std::time::Duration::ZERO).expect("gateway");
}

/// Item 4: lint judges the SAs' algorithms and keys by RFC 8221.
#[test]
fn lint_judges_the_sas_by_rfc_8221() {
    let zero = "00".repeat(16) + "c0ffee00";
    let sas = sa_table(
        "out",
        0x1000,
        "outbound",
        "null",
        "",
        &format!("integrity = \"hmac-sha256-128\"\nintegrity_key = \"{HMAC_A}\"\n{TUNNEL}"),
    ) + &sa_table("in", 0x2000, "inbound", "aes-128-gmac", GCM_B, "")
        + &sa_table(
            "legacy",
            0x2001,
            "inbound",
            "aes-128-cbc",
            &GCM_A[..32],
            &format!(
                "integrity = \"hmac-sha1-96\"\nintegrity_key = \"{}\"",
                &HMAC_A[..40]
            ),
        )
        + &sa_table("zero", 0x2002, "inbound", "aes-128-gcm", &zero, "");
    let f = Spd::from_toml(&file_with_sas(&sas))
        .expect("algorithm choices and zero keys are lint findings, not load errors")
        .lint();
    let of = |code: &str| -> Vec<&Finding> { f.iter().filter(|x| x.code == code).collect() };
    let not_encrypted = of("sa-not-encrypted");
    assert_eq!(not_encrypted.len(), 1, "{}", show(&f));
    assert_eq!(not_encrypted[0].severity, Severity::Warning);
    assert_eq!(not_encrypted[0].policy.as_deref(), Some("lan"));
    let m = &not_encrypted[0].message;
    assert!(m.contains("authenticated but NOT encrypted"), "{m}");
    assert!(m.contains("sa \"out\" (null encryption"), "{m}");
    assert!(
        m.contains("sa \"in\" (aes-128-gmac, integrity only)"),
        "{m}"
    );
    let cbc = of("sa-cbc");
    assert_eq!(cbc.len(), 1, "{}", show(&f));
    assert_eq!(cbc[0].severity, Severity::Info);
    assert!(
        cbc[0].message.contains("sa \"legacy\" uses aes-128-cbc"),
        "{}",
        cbc[0]
    );
    let sha1 = of("sa-hmac-sha1");
    assert_eq!(sha1.len(), 1, "{}", show(&f));
    assert_eq!(sha1[0].severity, Severity::Info);
    assert!(sha1[0].message.contains("MUST-"), "{}", sha1[0]);
    let zero_key = of("sa-zero-key");
    assert_eq!(zero_key.len(), 1, "{}", show(&f));
    assert_eq!(zero_key[0].severity, Severity::Error);
    assert!(
        zero_key[0]
            .message
            .contains("sa \"zero\": its key is all zeros")
    );
    let all = show(&f);
    for secret in [&GCM_A[..8], &GCM_B[..8], &HMAC_A[..8], "c0ffee"] {
        assert!(!all.contains(secret), "key bytes in the findings: {all}");
    }
    // A clean pair of AEAD SAs gives no SA finding (the branch office example neither).
    let clean = Spd::from_toml(&file_with_sas(
        &(sa_table(
            "out",
            0x1000,
            "outbound",
            "aes-256-gcm",
            &("7a".repeat(32) + "01020304"),
            TUNNEL,
        ) + &sa_table(
            "in",
            0x2000,
            "inbound",
            "chacha20-poly1305",
            &("5b".repeat(32) + "01020304"),
            "",
        )),
    ))
    .unwrap()
    .lint();
    assert!(
        clean.iter().all(|x| !x.code.starts_with("sa-")),
        "{}",
        show(&clean)
    );
}

/// Item 7: `lint_toml` reports every SA problem a loader refuses (a 19-byte AES-128-GCM
/// key, AES-CBC without integrity, three inbound SAs sharing one SPI), as `invalid`
/// findings naming the SA and the key; and for every one-field change of a good file,
/// lint has an `invalid` finding exactly when `Spd` + `Gateway` loading fails.
#[test]
fn lint_runs_every_check_the_loaders_run() {
    let sas = sa_table(
        "out",
        0x1000,
        "outbound",
        "aes-128-gcm",
        &GCM_A[..38],
        TUNNEL,
    ) + &sa_table("in", 0x2000, "inbound", "aes-128-cbc", &GCM_B[..32], "")
        + &sa_table(
            "in-2",
            0x2000,
            "inbound",
            "aes-128-gcm",
            &("6c".repeat(16) + "01020304"),
            "",
        )
        + &sa_table(
            "in-3",
            0x2000,
            "inbound",
            "aes-128-gcm",
            &("4d".repeat(16) + "01020304"),
            "",
        );
    let text = file_with_sas(&sas);
    let f = lint_toml(&text);
    let invalid: Vec<String> = f
        .iter()
        .filter(|x| x.code == "invalid")
        .map(|x| x.message.clone())
        .collect();
    assert_eq!(invalid.len(), 4, "{}", show(&f));
    assert!(
        invalid[0].starts_with("sa \"out\": key: aes-128-gcm needs a 20-byte key"),
        "{}",
        invalid[0]
    );
    assert!(
        invalid[1].starts_with("sa \"in\": integrity: aes-128-cbc needs an integrity"),
        "{}",
        invalid[1]
    );
    assert!(
        invalid[2].starts_with("sa \"in-2\": spi: inbound sa \"in\" already has SPI 0x00002000"),
        "{}",
        invalid[2]
    );
    assert!(
        invalid[3].starts_with("sa \"in-3\": spi: inbound sa \"in\" already has SPI"),
        "{}",
        invalid[3]
    );
    let errors = Spd::from_toml_all_errors(&text).expect_err("the loader refuses it");
    assert_eq!(errors.len(), 4, "{errors:?}");

    // The one-field changes: lint and the loaders agree on every one.
    let base = sa_table("out", 0x1000, "outbound", "aes-128-gcm", GCM_A, TUNNEL)
        + &sa_table("in", 0x2000, "inbound", "aes-128-gcm", GCM_B, "");
    let changes: [(&str, &str); 14] = [
        ("spi = 0x1000", "spi = 0x10"),
        (GCM_B, &GCM_B[..38]),
        (
            "cipher = \"aes-128-gcm\"\nkey = \"3f",
            "cipher = \"aes-256-gcm\"\nkey = \"3f",
        ),
        (
            "direction = \"inbound\"\n",
            "direction = \"inbound\"\nreplay_window = 5\n",
        ),
        (
            "direction = \"inbound\"\n",
            "direction = \"inbound\"\nseq = 5000000000\n",
        ),
        (
            "direction = \"inbound\"\n",
            "direction = \"inbound\"\nesn = true\nseq = 5000000000\n",
        ),
        ("tunnel_dst = \"192.0.2.2\"", "tunnel_dst = \"2001:db8::2\""),
        (
            "tunnel_dst = \"192.0.2.2\"",
            "tunnel_dst = \"192.0.2.2\"\npath_mtu = 60",
        ),
        (
            "tunnel_dst = \"192.0.2.2\"",
            "tunnel_dst = \"192.0.2.2\"\npath_mtu = 1400",
        ),
        (
            "direction = \"inbound\"\n",
            "direction = \"inbound\"\nintegrity = \"hmac-sha256-128\"\n",
        ),
        (
            "mode = \"tunnel\"\ncipher = \"aes-128-gcm\"\nkey = \"9e",
            "mode = \"transport\"\ncipher = \"aes-128-gcm\"\nkey = \"9e",
        ),
        (
            "direction = \"inbound\"\n",
            "direction = \"inbound\"\nmode_x = 1\n",
        ),
        ("spi = 0x2000", "spi = 0x1000"),
        (GCM_B, GCM_A),
    ];
    for (from, to) in changes {
        assert!(base.contains(from), "{from}");
        let text = file_with_sas(&base.replacen(from, to, 1));
        let lint_invalid = lint_toml(&text).iter().any(|x| x.code == "invalid");
        let loads = Spd::from_toml(&text)
            .and_then(|spd| ipsec_core::Gateway::new(spd, std::time::Duration::ZERO))
            .map(|_| ());
        assert_eq!(lint_invalid, loads.is_err(), "{from} -> {to}: {loads:?}");
    }
}

/// Item 8: a TCP/UDP port range of at most 16 ports holding 50 or 51, on either port
/// key, is the "open ports 50 and 51 for IPsec" mistake.
#[test]
fn protocol_number_as_port_catches_small_ranges() {
    let f = spd(r#"
[[policy]]
name = "esp-ah-range"
direction = "outbound"
protocol = "tcp"
remote_port = "50-51"
action = "bypass"
[[policy]]
name = "around"
direction = "outbound"
protocol = "udp"
local_port = "49-52"
action = "bypass"
[[policy]]
name = "sixteen"
direction = "outbound"
protocol = "udp"
remote_port = "51-66"
action = "bypass"
[[policy]]
name = "seventeen"
direction = "outbound"
protocol = "udp"
remote_port = "51-67"
action = "bypass"
[[policy]]
name = "below"
direction = "outbound"
protocol = "tcp"
remote_port = "34-49"
action = "bypass"
[[policy]]
name = "sctp"
direction = "outbound"
protocol = "sctp"
remote_port = "50-51"
action = "bypass"
"#)
    .lint();
    assert_eq!(
        codes(&f, "protocol-number-as-port"),
        ["esp-ah-range", "around", "sixteen"],
        "{}",
        show(&f)
    );
    let m = &f
        .iter()
        .find(|x| x.code == "protocol-number-as-port")
        .unwrap()
        .message;
    assert!(
        m.starts_with("remote_port = \"50-51\" (port 50 and 51) with protocol tcp"),
        "{m}"
    );
    assert_eq!(ipsec_core::spd::lint::MAX_FLAGGED_RANGE, 16);
}

/// Item 9: `direction` defaults to "both", so the rule the `no-catch-all` hint
/// describes (a name and `action = "discard"`, nothing else) loads and silences it.
#[test]
fn direction_defaults_to_both_as_the_catch_all_hint_says() {
    let without = r#"
[[policy]]
name = "rdp"
local = "10.0.0.0/24"
protocol = "tcp"
local_port = 3389
action = "bypass"
"#;
    let spd = Spd::from_toml(without).expect("direction may be left out");
    assert_eq!(
        spd.policies()[0].direction(),
        ipsec_core::PolicyDirection::Both
    );
    let f = spd.lint();
    let hint = f
        .iter()
        .find(|x| x.code == "no-catch-all")
        .expect("no catch-all yet");
    assert!(
        hint.message
            .contains("a [[policy]] with a name and action = \"discard\" only"),
        "{hint}"
    );
    assert!(
        hint.message.contains("direction defaults to \"both\""),
        "{hint}"
    );
    let with = format!("{without}\n[[policy]]\nname = \"deny-all\"\naction = \"discard\"\n");
    let f = lint_toml(&with);
    assert!(f.is_empty(), "{}", show(&f));
}
