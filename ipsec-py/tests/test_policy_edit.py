"""Policy batches compiled away from the gateway (Gateway.edit_policies, PolicyEdit,
CompiledPolicies, Gateway.commit_policies) and the gateway's SPD cache.

The edit changes nothing until it is committed; it is compiled on another Python
thread while the gateway keeps processing packets; the commit swaps the policies in
one step; a commit over policies that changed meanwhile raises StalePoliciesError and
changes nothing; a CompiledPolicies is used once. The SPD cache gives the verdicts the
classifier gives, before and after the policies change.
"""

from __future__ import annotations

import hashlib
import struct
import threading
from typing import Any, Union

import pytest

import ipsec
from helpers import ipv4, tcp, udp

HQ_GW, BR_GW = "192.0.2.1", "198.51.100.2"
T0 = 1_000.0

POLICIES = """
[[policy]]
name = "rdp"
local = "10.0.0.0/24"
remote = "10.1.0.0/24"
protocol = "tcp"
local_port = 3389
action = "protect"
sa = ["hq-out", "hq-in"]

[[policy]]
name = "dns"
local = "10.0.0.0/24"
protocol = "udp"
remote_port = 53
action = "bypass"

[[policy]]
name = "web"
local = "10.0.0.0/24"
protocol = "tcp"
remote_port = 80
action = "discard"

[[policy]]
name = "deny"
action = "discard"
"""


def key(n: int) -> bytes:
    return hashlib.sha256(b"policy edit test key %d" % n).digest()[:20]


SAS = """
[[sa]]
name = "hq-out"
spi = 0x1000
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "%s"
tunnel_src = "%s"
tunnel_dst = "%s"

[[sa]]
name = "hq-in"
spi = 0x2000
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "%s"
""" % (key(1).hex(), HQ_GW, BR_GW, key(2).hex())


def gateway() -> ipsec.Gateway:
    return ipsec.Gateway.from_toml(POLICIES + SAS, now=T0)


def out_tcp(dport: int, sport: int = 50000, dst: str = "10.1.0.9") -> bytes:
    return ipv4("10.0.0.5", dst, 6, tcp(sport, dport, struct.pack("!I", dport)))


def out_udp(dport: int, dst: str = "10.1.0.9") -> bytes:
    return ipv4("10.0.0.5", dst, 17, udp(40000, dport, b"q"))


RDP = ipv4("10.0.0.5", "10.1.0.9", 6, tcp(3389, 50000, b"rdp"))
DNS = out_udp(53, dst="10.9.9.9")
WEB = out_tcp(80)
SSH = out_tcp(22)


def verdict(gw: ipsec.Gateway, packet: bytes, direction: str = "outbound") -> tuple[Any, ...]:
    """(action, policy, sa) of a packet, or the exception class when it raised."""
    try:
        v = gw.outbound(packet) if direction == "outbound" else gw.inbound(packet)
    except ipsec.IpsecError as e:
        return (type(e).__name__,)
    return (v.action, v.policy, v.sa)


def verdicts(gw: ipsec.Gateway) -> list[tuple[Any, ...]]:
    return [verdict(gw, p) for p in (RDP, DNS, WEB, SSH)]


BEFORE = [("protect", "rdp", "hq-out"), ("bypass", "dns", None), ("discard", "web", None),
          ("discard", "deny", None)]

SSH_BYPASS = ('[[policy]]\nname = "ssh"\nlocal = "10.0.0.0/24"\nprotocol = "tcp"\n'
              'remote_port = 22\naction = "bypass"\n')
WEB_ALLOWED = ('[[policy]]\nname = "web"\nlocal = "10.0.0.0/24"\nprotocol = "tcp"\n'
               'remote_port = 80\naction = "bypass"\n')


def test_edit_compile_on_another_thread_commit() -> None:
    gw = gateway()
    assert verdicts(gw) == BEFORE
    edit = gw.edit_policies()
    assert edit.policies == ["rdp", "dns", "web", "deny"]
    edit.install(SSH_BYPASS, before="deny")
    edit.replace(WEB_ALLOWED)
    edit.remove("dns")
    # Many more policies, so that the compile is real work.
    for i in range(300):
        edit.install('[[policy]]\nname = "h%d"\nlocal = "10.0.0.5"\nremote = "172.16.%d.%d"\n'
                     'action = "bypass"\n' % (i, i // 250, i % 250), before="deny")
    assert edit.policies[:3] == ["rdp", "web", "ssh"] and edit.policies[-1] == "deny"
    assert len(edit.policies) == 304
    # The edit is a copy: the gateway is unchanged.
    assert verdicts(gw) == BEFORE and gw.spd.policy_names == ["rdp", "dns", "web", "deny"]

    compiled: list[ipsec.CompiledPolicies] = []
    errors: list[BaseException] = []

    def compile_it() -> None:
        try:
            compiled.append(edit.compile())
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=compile_it)
    during: list[list[tuple[Any, ...]]] = []
    t.start()
    # The gateway keeps processing packets while the other thread compiles: every
    # verdict is still the old policies' one.
    while t.is_alive() or not during:
        during.append(verdicts(gw))
    t.join(timeout=60)
    assert not t.is_alive() and errors == []
    assert all(v == BEFORE for v in during)
    assert len(compiled) == 1
    c = compiled[0]
    assert c.policies == edit.policies and not c.used

    gw.commit_policies(c)
    assert c.used
    assert gw.spd.policy_names == edit.policies
    assert verdicts(gw) == [("protect", "rdp", "hq-out"), ("discard", "deny", None),
                            ("bypass", "web", None), ("bypass", "ssh", None)]
    assert verdict(gw, out_tcp(443, dst="172.16.1.7")) == ("bypass", "h257", None)
    # A CompiledPolicies is committed once.
    with pytest.raises(ValueError, match="already used"):
        gw.commit_policies(c)
    assert gw.spd.policy_names == edit.policies
    # The edit was taken before its own commit changed the policies: it is stale now.
    edit.remove("ssh")
    with pytest.raises(ipsec.StalePoliciesError):
        gw.commit_policies(edit.compile())
    assert verdict(gw, SSH) == ("bypass", "ssh", None)


def test_an_edit_compiles_more_than_once() -> None:
    gw = gateway()
    edit = gw.edit_policies()
    edit.install(SSH_BYPASS, before="deny")
    first = edit.compile()
    edit.replace(WEB_ALLOWED)
    second = edit.compile()
    assert first.policies == second.policies == ["rdp", "dns", "web", "ssh", "deny"]
    gw.commit_policies(second)
    assert verdict(gw, WEB) == ("bypass", "web", None)
    assert verdict(gw, SSH) == ("bypass", "ssh", None)
    with pytest.raises(ipsec.StalePoliciesError):
        gw.commit_policies(first)
    assert verdict(gw, WEB) == ("bypass", "web", None)


def test_stale_commit_raises_and_changes_nothing() -> None:
    gw = gateway()
    edit = gw.edit_policies()
    edit.install(SSH_BYPASS, before="deny")
    compiled = edit.compile()
    # The policies change after the edit was taken.
    gw.replace_policy(WEB_ALLOWED)
    names, seen = gw.spd.policy_names, verdicts(gw)
    assert seen[2] == ("bypass", "web", None)
    with pytest.raises(ipsec.StalePoliciesError) as e:
        gw.commit_policies(compiled)
    assert isinstance(e.value, ipsec.ControlError) and isinstance(e.value, ipsec.IpsecError)
    assert "edit" in str(e.value)
    assert gw.spd.policy_names == names == ["rdp", "dns", "web", "deny"]
    assert verdicts(gw) == seen and verdict(gw, SSH) == ("discard", "deny", None)
    # Refused or not, it was used.
    assert compiled.used
    with pytest.raises(ValueError):
        gw.commit_policies(compiled)
    # A fresh edit commits.
    edit = gw.edit_policies()
    edit.install(SSH_BYPASS, before="deny")
    gw.commit_policies(edit.compile())
    assert verdict(gw, SSH) == ("bypass", "ssh", None)


def test_commit_to_another_gateway_is_refused() -> None:
    a, b = gateway(), gateway()
    edit = a.edit_policies()
    edit.remove("dns")
    compiled = edit.compile()
    with pytest.raises(ValueError, match="another gateway"):
        b.commit_policies(compiled)
    assert b.spd.policy_names == ["rdp", "dns", "web", "deny"] and not compiled.used
    a.commit_policies(compiled)
    assert a.spd.policy_names == ["rdp", "web", "deny"]
    with pytest.raises(TypeError, match="CompiledPolicies"):
        a.commit_policies("rdp")  # type: ignore[arg-type]


def test_refused_edits_change_nothing() -> None:
    gw = gateway()
    edit = gw.edit_policies()
    before = edit.policies
    with pytest.raises(ipsec.DuplicatePolicyError) as dup:
        edit.install(WEB_ALLOWED)
    assert dup.value.name == "web"
    with pytest.raises(ipsec.UnknownPolicyError):
        edit.install(SSH_BYPASS, before="nope")
    with pytest.raises(ipsec.UnknownPolicyError):
        edit.remove("nope")
    with pytest.raises(ipsec.UnknownPolicyError):
        edit.replace(SSH_BYPASS)
    with pytest.raises(ipsec.MissingSaError) as missing:
        edit.install('[[policy]]\nname = "x"\naction = "protect"\nsa = ["nope-out", "nope-in"]\n')
    assert missing.value.policy == "x"
    with pytest.raises(ipsec.ConfigError):
        edit.install('[[policy]]\nname = "x"\naction = "maybe"\n')
    assert edit.policies == before
    gw.commit_policies(edit.compile())
    assert verdicts(gw) == BEFORE


def test_commit_after_the_sa_was_deleted_raises_missing_sa() -> None:
    gw = gateway()
    gw.add_sa("spare-out", spi=0x3000, direction="outbound", mode="tunnel",
              cipher="aes-128-gcm", key=key(3), tunnel_src=HQ_GW, tunnel_dst=BR_GW)
    gw.add_sa("spare-in", spi=0x4000, direction="inbound", mode="tunnel",
              cipher="aes-128-gcm", key=key(4))
    edit = gw.edit_policies()
    edit.install('[[policy]]\nname = "ssh"\nlocal = "10.0.0.0/24"\nprotocol = "tcp"\n'
                 'remote_port = 22\naction = "protect"\nsa = ["spare-out", "spare-in"]\n',
                 before="deny")
    compiled = edit.compile()
    gw.delete_sa("spare-out")
    with pytest.raises(ipsec.MissingSaError):
        gw.commit_policies(compiled)
    assert gw.spd.policy_names == ["rdp", "dns", "web", "deny"]


# --- SPD cache -------------------------------------------------------------------------

def traffic() -> list[tuple[str, bytes]]:
    """Outbound packets of many flows (each several times) and inbound cleartext."""
    pkts: list[tuple[str, bytes]] = []
    for round_ in range(3):
        for host in range(1, 9):
            dst = "10.1.0.%d" % host
            pkts += [("outbound", out_tcp(3389 if host % 2 else 22, sport=3389, dst=dst)),
                     ("outbound", ipv4("10.0.0.5", dst, 6, tcp(3389, 50000 + host, b"r"))),
                     ("outbound", out_udp(53, dst=dst)),
                     ("outbound", out_tcp(80, dst=dst)),
                     ("outbound", out_tcp(443, dst=dst)),
                     ("inbound", ipv4(dst, "10.0.0.5", 17, udp(53, 40000, b"a"))),
                     ("inbound", ipv4(dst, "10.0.0.5", 6, tcp(50000, 3389, b"r")))]
    return pkts


def all_verdicts(gw: ipsec.Gateway) -> list[tuple[Any, ...]]:
    return [verdict(gw, p, d) for d, p in traffic()]


@pytest.mark.parametrize("change", ["replace_policy", "commit_policies"])
def test_spd_cache_gives_the_same_verdicts(change: str) -> None:
    on, off = gateway(), gateway()
    assert on.spd_cache_stats == (0, 0, 0)
    on.set_spd_cache(64)
    capacity, hits, misses = on.spd_cache_stats
    assert capacity >= 64 and (hits, misses) == (0, 0)
    first: Union[list[tuple[Any, ...]], None] = None
    for policy in (None, WEB_ALLOWED):
        if policy is not None:
            for gw in (on, off):
                if change == "replace_policy":
                    gw.replace_policy(policy)
                else:
                    edit = gw.edit_policies()
                    edit.replace(policy)
                    gw.commit_policies(edit.compile())
        got_on, got_off = all_verdicts(on), all_verdicts(off)
        assert got_on == got_off
        if first is None:
            first = got_on
        else:
            assert got_on != first, "the change must matter for the comparison to mean something"
            assert ("bypass", "web", None) in got_on and ("discard", "web", None) not in got_on
    capacity, hits, misses = on.spd_cache_stats
    assert hits > 0 and misses > 0, "the cache was used"
    assert off.spd_cache_stats == (0, 0, 0)
    assert sorted(set(x[0] for x in first or [])) == [
        "PolicyMismatchError", "bypass", "discard", "protect"]
    on.set_spd_cache(0)
    assert on.spd_cache_stats[0] == 0
    assert all_verdicts(on) == all_verdicts(off)


def test_spd_cache_capacity_is_checked() -> None:
    gw = gateway()
    with pytest.raises(ipsec.ConfigError) as e:
        gw.set_spd_cache(ipsec.Gateway.SPD_CACHE_MAX + 1)
    assert e.value.field == "capacity"
    with pytest.raises(ipsec.ConfigError):
        gw.set_spd_cache(-1)
    with pytest.raises(TypeError):
        gw.set_spd_cache(1.5)  # type: ignore[arg-type]
    assert gw.spd_cache_stats == (0, 0, 0)
