"""The SPD through Python: lookups on a generated policy compared with a plain-Python
first-match reference, lookup_packet, lint codes on crafted policies, firewall openings,
policy tests (cases files), and bad input."""

from __future__ import annotations

import ipaddress
import os
import random
from dataclasses import dataclass
from typing import Optional, Union

import pytest

import ipsec
from helpers import EXAMPLES, ipv4, ipv6, key_for, tcp, udp

Addr = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
AddrRange = tuple[Addr, Addr]
PROTO = {"tcp": 6, "udp": 17, "icmp": 1, "esp": 50}
SA_TABLES = """
[[sa]]
name = "s-out"
spi = 0x1000
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "%s"
tunnel_src = "192.0.2.1"
tunnel_dst = "198.51.100.2"

[[sa]]
name = "s-in"
spi = 0x1001
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "%s"
""" % (key_for("aes-128-gcm").hex(), key_for("aes-128-gcm", "in").hex())


@dataclass
class Rule:
    """One generated policy, in the reference's terms."""

    name: str
    direction: str  # outbound | inbound | both
    local: Optional[list[AddrRange]]  # None = any
    remote: Optional[list[AddrRange]]
    protocol: Optional[int]
    local_port: Optional[tuple[int, int]]
    remote_port: Optional[tuple[int, int]]
    icmp_type: Optional[int]
    icmp_code: Optional[int]
    action: str
    toml: str


def gen_addr(rng: random.Random, simple: bool = False) -> tuple[str, Optional[list[AddrRange]]]:
    """A selector text and the address ranges it means (None = any)."""
    a, b, c = rng.randrange(4), rng.randrange(4), rng.randrange(40)
    choice = rng.randrange(1, 5) if simple else rng.randrange(6)
    if choice == 0:
        return '"any"', None
    if choice == 1:
        net = ipaddress.ip_network("10.%d.0.0/16" % a)
        return '"%s"' % net, [(net[0], net[-1])]
    if choice == 2:
        net = ipaddress.ip_network("10.%d.%d.0/24" % (a, b))
        return '"%s"' % net, [(net[0], net[-1])]
    if choice == 3:
        ip = ipaddress.ip_address("10.%d.%d.%d" % (a, b, c))
        return '"%s"' % ip, [(ip, ip)]
    if choice == 4:
        lo = ipaddress.ip_address("10.%d.%d.%d" % (a, b, c))
        hi = lo + rng.randrange(1, 30)
        return '"%s-%s"' % (lo, hi), [(lo, hi)]
    t1, r1 = gen_addr(rng, simple=True)
    t2, r2 = gen_addr(rng, simple=True)
    if r1 is None or r2 is None:
        return '"any"', None
    return "[%s, %s]" % (t1, t2), r1 + r2


def gen_ports(rng: random.Random) -> tuple[str, Optional[tuple[int, int]]]:
    choice = rng.randrange(4)
    if choice == 0:
        return '"any"', None
    if choice == 1:
        p = rng.choice([22, 53, 80, 443, 3389])
        return str(p), (p, p)
    lo = rng.choice([0, 20, 50, 400, 1024, 3000])
    hi = lo + rng.choice([0, 5, 100, 1000, 60000])
    hi = min(hi, 65535)
    if (lo, hi) == (0, 65535):
        return '"any"', None
    return '"%d-%d"' % (lo, hi), (lo, hi)


def gen_rule(rng: random.Random, i: int) -> Rule:
    name = "r%d" % i
    direction = rng.choice(["outbound", "inbound", "both"])
    lt, local = gen_addr(rng)
    rt, remote = gen_addr(rng)
    pname = rng.choice(["any", "tcp", "udp", "icmp", "esp"])
    protocol = None if pname == "any" else PROTO[pname]
    lines = ["[[policy]]", 'name = "%s"' % name, 'direction = "%s"' % direction,
             "local = %s" % lt, "remote = %s" % rt, 'protocol = "%s"' % pname]
    lp = rp = None
    it = ic = None
    if pname in ("tcp", "udp"):
        t, lp = gen_ports(rng)
        lines.append("local_port = %s" % t)
        t, rp = gen_ports(rng)
        lines.append("remote_port = %s" % t)
    if pname == "icmp" and rng.random() < 0.6:
        it = rng.choice([0, 8])
        lines.append("icmp_type = %d" % it)
        if rng.random() < 0.5:
            ic = 0
            lines.append("icmp_code = 0")
    action = rng.choice(["protect", "bypass", "discard"])
    lines.append('action = "%s"' % action)
    if action == "protect":
        sa = {"outbound": '"s-out"', "inbound": '"s-in"', "both": '["s-out", "s-in"]'}[direction]
        lines.append("sa = %s" % sa)
    return Rule(name, direction, local, remote, protocol, lp, rp, it, ic, action,
                "\n".join(lines) + "\n")


def in_ranges(addr: Addr, ranges: Optional[list[AddrRange]]) -> bool:
    if ranges is None:
        return True
    return any(lo.version == addr.version and lo <= addr <= hi  # type: ignore[operator]
               for lo, hi in ranges)


def in_port(port: Optional[int], sel: Optional[tuple[int, int]]) -> bool:
    if sel is None:
        return True
    return port is not None and sel[0] <= port <= sel[1]


@dataclass
class FlowCase:
    direction: str
    src: Addr
    dst: Addr
    protocol: int
    sport: Optional[int] = None
    dport: Optional[int] = None
    itype: Optional[int] = None
    icode: Optional[int] = None


def reference(rules: list[Rule], f: FlowCase) -> tuple[str, Optional[str], Optional[str]]:
    """A plain first-match scan (DESIGN.md): first rule that matches decides; none: DISCARD."""
    for r in rules:
        if r.direction not in (f.direction, "both"):
            continue
        local, remote = (f.src, f.dst) if f.direction == "outbound" else (f.dst, f.src)
        lport, rport = (f.sport, f.dport) if f.direction == "outbound" else (f.dport, f.sport)
        if not (in_ranges(local, r.local) and in_ranges(remote, r.remote)):
            continue
        if r.protocol is not None and r.protocol != f.protocol:
            continue
        if not (in_port(lport, r.local_port) and in_port(rport, r.remote_port)):
            continue
        if r.icmp_type is not None and r.icmp_type != f.itype:
            continue
        if r.icmp_code is not None and r.icmp_code != f.icode:
            continue
        sa = None
        if r.action == "protect":
            sa = "s-out" if f.direction == "outbound" else "s-in"
        return r.action, r.name, sa
    return "discard", None, None


def gen_flow(rng: random.Random) -> FlowCase:
    def addr() -> Addr:
        if rng.random() < 0.05:
            return ipaddress.ip_address("2001:db8::%x" % rng.randrange(1, 50))
        if rng.random() < 0.1:
            return ipaddress.ip_address("172.16.%d.%d" % (rng.randrange(4), rng.randrange(256)))
        return ipaddress.ip_address("10.%d.%d.%d" % (rng.randrange(4), rng.randrange(4),
                                                    rng.randrange(45)))
    src = addr()
    dst = addr()
    if src.version != dst.version:
        dst = src
    pname = rng.choice(["tcp", "udp", "icmp", "esp", "gre"])
    proto = {"gre": 47}.get(pname) or PROTO[pname]
    f = FlowCase(rng.choice(["outbound", "inbound"]), src, dst, proto)
    if pname in ("tcp", "udp") and rng.random() < 0.95:
        ports = [22, 53, 80, 443, 3389, 1024, 1100, 2999, 3000, 3005, 50000, 65535, 0]
        f.sport, f.dport = rng.choice(ports), rng.choice(ports)
    if pname == "icmp" and rng.random() < 0.9:
        f.itype, f.icode = rng.choice([0, 8, 3]), rng.choice([0, 1])
    return f


@pytest.mark.parametrize("seed", range(12))
def test_lookup_matches_first_match_reference(seed: int) -> None:
    rng = random.Random(seed)
    rules = [gen_rule(rng, i) for i in range(rng.randrange(1, 60))]
    spd = ipsec.Spd.from_toml("".join(r.toml for r in rules) + SA_TABLES)
    assert len(spd) == len(rules) and spd.policy_names == [r.name for r in rules]
    for _ in range(800):
        f = gen_flow(rng)
        d = spd.lookup(f.direction, str(f.src), str(f.dst), f.protocol, f.sport, f.dport,
                       icmp_type=f.itype, icmp_code=f.icode)
        assert (d.action, d.policy, d.sa) == reference(rules, f), (f, rules)
        if d.policy is not None:
            assert d.policy_index == spd.policy_names.index(d.policy)


def test_lookup_packet_reads_the_selectors() -> None:
    spd = ipsec.Spd.load(os.path.join(EXAMPLES, "branch-office.toml"))
    pkt = ipv4("10.1.0.15", "10.0.0.10", 6, tcp(50000, 3389, b"hello"))
    d = spd.lookup_packet("inbound", pkt)
    assert d == spd.lookup("inbound", "10.1.0.15", "10.0.0.10", "tcp", 50000, 3389)
    assert (d.action, d.policy) == ("protect", "b1-rdp")
    assert d.sa is not None
    ike = ipv4("198.51.100.2", "192.0.2.1", 17, udp(500, 500, b"x" * 20))
    assert spd.lookup_packet("inbound", ike).action == "bypass"
    v6 = ipv6("2001:db8::1", "2001:db8::2", 17, udp(1, 2, b""))
    assert spd.lookup_packet("outbound", v6).action == "discard"
    with pytest.raises(ipsec.MalformedPacketError):
        spd.lookup_packet("inbound", b"\x45\x00")
    with pytest.raises(TypeError, match="packet must be bytes"):
        spd.lookup_packet("inbound", "not bytes")  # type: ignore[arg-type]


def test_decision_objects_are_frozen_and_readable() -> None:
    spd = ipsec.Spd.load(os.path.join(EXAMPLES, "branch-office.toml"))
    d = spd.lookup("outbound", src="10.0.0.10", dst="10.1.0.15", protocol="tcp", src_port=3389,
                   dst_port=50000)
    assert repr(d) == "Decision(action='protect', policy='b1-rdp', sa='ho-to-b1')"
    assert d == spd.lookup("outbound", "10.0.0.10", "10.1.0.15", 6, 3389, 50000)
    assert hash(d) == hash(spd.lookup("outbound", "10.0.0.10", "10.1.0.15", 6, 3389, 50000))
    with pytest.raises(AttributeError):
        d.action = "bypass"  # type: ignore[misc]
    none = spd.lookup("inbound", "172.16.0.1", "10.0.0.10", "udp", 1, 2)
    assert none.policy == "deny-everything-else" and none.sa is None


def lint_codes(text: str) -> set[tuple[str, Optional[str], str]]:
    spd = ipsec.Spd.from_toml(text)
    return {(f.code, f.policy, f.severity) for f in spd.lint()}


CATCH_ALL = '[[policy]]\nname = "end"\ndirection = "both"\naction = "discard"\n'


def test_lint_shadowed_redundant_conflict() -> None:
    text = """
[[policy]]
name = "wide"
direction = "both"
local = "10.0.0.0/8"
action = "bypass"

[[policy]]
name = "narrow-same"
direction = "both"
local = "10.1.0.0/16"
action = "bypass"

[[policy]]
name = "narrow-other"
direction = "both"
local = "10.2.0.0/16"
action = "discard"

[[policy]]
name = "partial"
direction = "both"
local = "9.0.0.0-10.0.0.5"
action = "discard"
""" + CATCH_ALL
    codes = lint_codes(text)
    assert ("redundant", "narrow-same", "warning") in codes
    assert ("shadowed", "narrow-other", "error") in codes
    assert ("conflict", "partial", "warning") in codes
    assert not any(c == "no-catch-all" for c, _, _ in codes)


def test_lint_no_catch_all_any_any_bypass_and_port_50() -> None:
    text = """
[[policy]]
name = "esp-as-port"
direction = "both"
protocol = "udp"
local_port = 50
action = "bypass"

[[policy]]
name = "open"
direction = "outbound"
action = "bypass"
"""
    codes = lint_codes(text)
    assert ("protocol-number-as-port", "esp-as-port", "warning") in codes
    assert ("any-any-bypass", "open", "warning") in codes
    assert any(c == "no-catch-all" for c, _, _ in codes)


def test_lint_ike_blocked() -> None:
    text = """
[[policy]]
name = "all-protected"
direction = "both"
local = "any"
remote = "any"
action = "protect"
sa = ["s-out", "s-in"]
""" + SA_TABLES
    findings = ipsec.Spd.from_toml(text).lint()
    ike = [f for f in findings if f.code == "ike-blocked"]
    assert ike and ike[0].severity == "error" and ike[0].policy == "all-protected"
    assert "ike-blocked" in str(ike[0]) and ike[0].message in str(ike[0])
    assert repr(ike[0]) == ("Finding(severity='error', code='ike-blocked', "
                            "policy='all-protected', message=%r)" % ike[0].message)


def test_lint_clean_example_and_lint_toml() -> None:
    assert ipsec.Spd.load(os.path.join(EXAMPLES, "branch-office.toml")).lint() == []
    bad = '[[policy]]\nname = "x"\naction = "sideways"\n[[policy]]\nname = "x"\n'
    findings = ipsec.lint_toml(bad)
    assert findings and all(f.code == "invalid" and f.severity == "error" for f in findings)
    assert len(findings) >= 2  # every load error, not just the first


def test_firewall_openings() -> None:
    spd = ipsec.Spd.load(os.path.join(EXAMPLES, "branch-office.toml"))
    openings = spd.firewall_openings()
    by = {(o.src, o.dst, o.protocol, o.port) for o in openings}
    assert ("192.0.2.1", "198.51.100.2", 17, 500) in by
    assert ("198.51.100.2", "192.0.2.1", 50, None) in by
    esp = next(o for o in openings if o.protocol == 50)
    assert esp.protocol_name == "ESP" and esp.port is None and esp.label == "ESP"
    assert "not a TCP/UDP port" in str(esp) and esp.reason
    ike = next(o for o in openings if o.port == 500)
    assert ike.label == "IKE" and ike.protocol_name == "UDP"
    assert repr(ike).startswith("FirewallOpening(src='")


def test_policy_cases() -> None:
    spd = ipsec.Spd.load(os.path.join(EXAMPLES, "branch-office.toml"))
    report = spd.run_cases_file(os.path.join(EXAMPLES, "branch-office-cases.toml"))
    assert report.all_passed and report.failed == 0 and report.passed == len(report) > 0
    assert str(report).endswith("%d passed, 0 failed" % report.passed)
    first = report.outcomes[0]
    assert first.passed and first.action == first.expected and str(first).startswith("PASS")
    assert isinstance(first.flow, ipsec.Flow) and first.flow.direction in ("inbound", "outbound")
    failing = spd.run_cases('[[case]]\nname = "telnet"\ndirection = "inbound"\n'
                            'src = "10.1.0.15"\ndst = "10.0.0.10"\nprotocol = "tcp"\n'
                            'src_port = 50000\ndst_port = 3389\nexpect = "discard"\n')
    o = failing.outcomes[0]
    assert not failing.all_passed and failing.failed == 1 and not o.passed
    assert (o.name, o.expected, o.action, o.policy) == (
        "telnet", "discard", "protect", "b1-rdp")
    assert o.flow == ipsec.Spd.from_toml(CATCH_ALL).run_cases(
        '[[case]]\ndirection = "inbound"\nsrc = "10.1.0.15"\ndst = "10.0.0.10"\n'
        'protocol = "tcp"\nsrc_port = 50000\ndst_port = 3389\nexpect = "discard"\n'
    ).outcomes[0].flow
    assert "expected discard" in o.message and str(o).startswith("FAIL")
    with pytest.raises(ipsec.ConfigError, match="colour") as e:
        spd.run_cases('[[case]]\nname = "c"\ncolour = "red"\n')
    assert (e.value.field, e.value.context) == ("colour", 'case "c"')


@pytest.mark.parametrize("text,fragment", [
    ('[[policy]]\nname = "p"\ndirection = "both"\naction = "sideways"\n', 'policy "p"'),
    ('[[policy]]\nname = "p"\ndirection = "both"\nlocal = "10.0.0.300"\naction = "bypass"\n',
     "local"),
    ('[[policy]]\nname = "p"\ndirection = "both"\nprotocol = "icmp"\nlocal_port = 5\n'
     'action = "bypass"\n', "local_port"),
    ('[[policy]]\nname = "p"\ndirection = "outbound"\naction = "protect"\nsa = "nope"\n',
     "nope"),
    ('[[policy]]\nname = "p"\ndirection = "both"\nwhatever = 1\naction = "bypass"\n',
     "whatever"),
    ("not toml [", "toml"),
])
def test_bad_policy_files(text: str, fragment: str) -> None:
    with pytest.raises(ipsec.ConfigError, match=fragment.replace('"', '.')):
        ipsec.Spd.from_toml(text)


def test_a_policy_without_direction_is_both() -> None:
    """Issue 11, item 9: `direction` defaults to "both", so the final deny-all that the
    no-catch-all finding suggests (a name and action = "discard") loads and counts."""
    spd = ipsec.Spd.from_toml('[[policy]]\nname = "deny-all"\naction = "discard"\n')
    for direction in ("outbound", "inbound"):
        d = spd.lookup(direction, src="10.0.0.1", dst="10.1.0.1", protocol="udp",
                       src_port=1, dst_port=2)
        assert (d.action, d.policy) == ("discard", "deny-all"), direction
    assert [f.code for f in spd.lint()] == []


def test_load_missing_policy_file_and_bad_types() -> None:
    with pytest.raises(ipsec.ConfigError, match="No such file"):
        ipsec.Spd.load("/nonexistent/policy.toml")
    with pytest.raises(TypeError, match="path must be a str or an os.PathLike, got int"):
        ipsec.Spd.load(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        ipsec.Spd.from_toml(CATCH_ALL.encode())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="text must be a str"):
        ipsec.lint_toml(None)  # type: ignore[arg-type]
    spd = ipsec.Spd.from_toml(CATCH_ALL)
    with pytest.raises(TypeError, match="text must be a str"):
        spd.run_cases(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="path must be a str or an os.PathLike"):
        spd.run_cases_file(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="packet must be bytes, got str"):
        spd.lookup_packet("inbound", "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="direction must be a str"):
        spd.lookup_packet(0, b"")  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs,exc,fragment", [
    (dict(direction="sideways"), ipsec.ConfigError, "direction"),
    (dict(direction=None), TypeError, "direction must be a str"),
    (dict(src="10.0.0.999"), ValueError, "src"),
    (dict(dst=5), TypeError, "dst must be a str"),
    (dict(dst="2001:db8::1"), ValueError, "address families"),
    (dict(protocol="any"), ValueError, "protocol"),
    (dict(protocol="smtp"), ValueError, "protocol"),
    (dict(protocol=256), ValueError, "protocol"),
    (dict(protocol=6.0), TypeError, "protocol"),
    (dict(src_port=70000), ValueError, "src_port"),
    (dict(dst_port=-1), ValueError, "dst_port"),
    (dict(protocol="icmp"), ValueError, "no ports"),
    (dict(icmp_type=8), ValueError, "icmp_type"),
])
def test_bad_lookup_arguments(kwargs: dict[str, object], exc: type[Exception],
                              fragment: str) -> None:
    spd = ipsec.Spd.from_toml(CATCH_ALL)
    args: dict[str, object] = dict(direction="inbound", src="10.0.0.1", dst="10.0.0.2",
                                   protocol="tcp", src_port=1, dst_port=2)
    args.update(kwargs)
    with pytest.raises(exc, match=fragment):
        spd.lookup(**args)  # type: ignore[arg-type]


def disjoint_rules(n: int) -> str:
    """`n` policies no two of which overlap, and a final DISCARD."""
    parts = []
    for i in range(n):
        parts.append(
            '[[policy]]\nname = "p%d"\ndirection = "outbound"\nlocal = "10.%d.%d.%d"\n'
            'protocol = "tcp"\nlocal_port = %d\naction = "bypass"\n'
            % (i, (i >> 16) & 255, (i >> 8) & 255, i & 255, 1000 + i % 1000)
        )
    parts.append('[[policy]]\nname = "deny"\ndirection = "both"\naction = "discard"\n')
    return "\n".join(parts)


def test_lint_budget_ends_a_long_lint_with_a_finding() -> None:
    text = disjoint_rules(400)
    assert not [f for f in ipsec.lint_toml(text) if f.code == "budget"]
    cut = [f for f in ipsec.lint_toml(text, budget=1000) if f.code == "budget"]
    assert len(cut) == 1 and cut[0].severity == "info" and "1000 steps" in cut[0].message
    spd = ipsec.Spd.from_toml(text)
    assert [f.code for f in spd.lint(budget=1000) if f.code == "budget"] == ["budget"]
    with pytest.raises(ValueError):
        spd.lint(budget=-1)
