"""The control plane of a live ipsec.Gateway from Python: SAs added, rekeyed
make-before-break, retired and deleted, policies installed, replaced and removed while
packets flow between a head-office and a branch gateway that both start with nothing
but a deny-all. Every refused call is checked to change nothing.
"""

from __future__ import annotations

import hashlib
import inspect
import struct
import sys
import threading
import time
from typing import Any, Callable

import pytest

import ipsec
from helpers import ipv4, tcp

DENY_ALL = '[[policy]]\nname = "deny"\ndirection = "both"\naction = "discard"\n'
HQ_GW, BR_GW = "192.0.2.1", "198.51.100.2"
HQ_HOST, BR_HOST = "10.0.0.5", "10.1.0.9"
T0 = 1_780_000_000.0


def key(n: int) -> bytes:
    """A distinct 20-byte AES-128-GCM key (16 key + 4 salt) for each `n`."""
    return hashlib.sha256(b"control test key %d" % n).digest()[:20]


def sa_kwargs(spi: int, direction: str, n: int, *, tunnel: tuple[str, str] = (HQ_GW, BR_GW),
              **extra: Any) -> dict[str, Any]:
    """The keywords of an AES-128-GCM tunnel SA (outbound ones with `tunnel`)."""
    kw: dict[str, Any] = dict(spi=spi, direction=direction, mode="tunnel",
                              cipher="aes-128-gcm", key=key(n))
    if direction == "outbound":
        kw.update(tunnel_src=tunnel[0], tunnel_dst=tunnel[1])
    kw.update(extra)
    return kw


def rdp_policy(name: str, local: str, remote: str, out_sa: str, in_sa: str) -> str:
    return (
        '[[policy]]\nname = "%s"\nlocal = "%s"\nremote = "%s"\nprotocol = "tcp"\n'
        'action = "protect"\nsa = ["%s", "%s"]\n' % (name, local, remote, out_sa, in_sa)
    )


def hq_packet(tag: int) -> bytes:
    """Head office to branch: TCP 10.0.0.5:3389 -> 10.1.0.9:50000, `tag` in the payload."""
    return ipv4(HQ_HOST, BR_HOST, 6, tcp(3389, 50000, struct.pack("!I", tag)))


def br_packet(tag: int) -> bytes:
    return ipv4(BR_HOST, HQ_HOST, 6, tcp(50000, 3389, struct.pack("!I", tag)))


def empty_gateway() -> ipsec.Gateway:
    gw = ipsec.Gateway.from_toml(DENY_ALL, now=T0)
    assert gw.sa_names == [] and gw.spd.policy_names == ["deny"]
    return gw


def live_pair() -> tuple[ipsec.Gateway, ipsec.Gateway]:
    """The head office (out 0x1000 key 1, in 0x2000 key 2) and its mirror, the branch,
    built at run time from empty gateways."""
    hq, br = empty_gateway(), empty_gateway()
    hq.add_sa("hq-out", **sa_kwargs(0x1000, "outbound", 1))
    hq.add_sa("hq-in", **sa_kwargs(0x2000, "inbound", 2))
    br.add_sa("br-out", **sa_kwargs(0x2000, "outbound", 2, tunnel=(BR_GW, HQ_GW)))
    br.add_sa("br-in", **sa_kwargs(0x1000, "inbound", 1))
    hq.install_policy(rdp_policy("rdp", "10.0.0.0/24", "10.1.0.0/24", "hq-out", "hq-in"),
                      before="deny")
    br.install_policy(rdp_policy("rdp", "10.1.0.0/24", "10.0.0.0/24", "br-out", "br-in"),
                      before="deny")
    return hq, br


def send(gw: ipsec.Gateway, packet: bytes, sa: str) -> bytes:
    """Runs `packet` outbound through `gw`; asserts that `sa` protected it."""
    v = gw.outbound(packet)
    assert (v.action, v.sa, v.policy) == ("protect", sa, "rdp")
    assert v.packet is not None
    return v.packet


def receive(gw: ipsec.Gateway, wire: bytes, sa: str, *, now: float = T0) -> bytes:
    """Runs `wire` inbound through `gw`; asserts that `sa` decrypted it."""
    v = gw.inbound(wire, now=now)
    assert (v.action, v.sa, v.policy) == ("protect", sa, "rdp")
    assert v.packet is not None
    return v.packet


def wire_spi(wire: bytes) -> int:
    """The SPI of an ESP packet in IPv4 (no UDP)."""
    ihl = (wire[0] & 0x0F) * 4
    return int(struct.unpack("!I", wire[ihl:ihl + 4])[0])


def shape(gw: ipsec.Gateway) -> tuple[list[str], list[tuple[str, int, int]]]:
    """What an observer sees of a gateway: its policies in order, its SAs (name, SPI,
    sequence number)."""
    return (gw.spd.policy_names,
            [(n, gw.sa_info(n).spi, gw.sa_info(n).seq) for n in gw.sa_names])


def assert_flows(hq: ipsec.Gateway, br: ipsec.Gateway, tag: int) -> None:
    """One packet each way under the live pair's original SAs."""
    assert receive(br, send(hq, hq_packet(tag), "hq-out"), "br-in") == hq_packet(tag)
    assert receive(hq, send(br, br_packet(tag), "br-out"), "hq-in") == br_packet(tag)


def test_sas_and_policies_added_at_run_time_carry_traffic() -> None:
    hq = empty_gateway()
    hq.add_sa("hq-out", **sa_kwargs(0x1000, "outbound", 1))
    # An SA alone sends nothing: the deny-all still decides.
    assert hq.outbound(hq_packet(0)).action == "discard"
    hq.add_sa("hq-in", **sa_kwargs(0x2000, "inbound", 2))
    hq.install_policy(rdp_policy("rdp", "10.0.0.0/24", "10.1.0.0/24", "hq-out", "hq-in"),
                      before="deny")
    assert hq.spd.policy_names == ["rdp", "deny"]
    assert hq.sa_names == ["hq-out", "hq-in"]
    assert repr(hq) == "Gateway(policies=2, sas=['hq-out', 'hq-in'])"
    # The peer's inbound SA, made by the constructor from the same keywords, decrypts
    # what the gateway's SA made from them encrypts (one conversion for both).
    peer = ipsec.SecurityAssociation(**sa_kwargs(0x1000, "inbound", 1))
    for tag in range(3):
        wire = send(hq, hq_packet(tag), "hq-out")
        assert wire_spi(wire) == 0x1000
        assert peer.decrypt(wire) == hq_packet(tag)
    info = hq.sa_info("hq-out")
    assert (info.name, info.spi, info.direction, info.mode, info.cipher) == (
        "hq-out", 0x1000, "outbound", "tunnel", "aes-128-gcm")
    assert (info.integrity, info.esn, info.udp_encap, info.expired) == (None, False, None, False)
    assert info.tunnel == (HQ_GW, BR_GW) and info.seq == 3
    assert info.stats == hq.sa_stats("hq-out") and info.stats["packets"] == 3
    assert hq.sa_info("hq-in").spi == 0x2000 and hq.sa_info("hq-in").tunnel is None

    # A policy installed with no `before` goes last, after the deny-all.
    hq.install_policy('name = "late"\naction = "bypass"\n')
    assert hq.spd.policy_names == ["rdp", "deny", "late"]


def test_two_live_gateways_talk_both_ways() -> None:
    hq, br = live_pair()
    for tag in range(5):
        assert_flows(hq, br, tag)
    assert hq.sa_stats("hq-out")["packets"] == 5 and br.sa_stats("br-in")["packets"] == 5
    assert br.sa_stats("br-out")["packets"] == 5 and hq.sa_stats("hq-in")["packets"] == 5
    # Removing the policy leaves the deny-all: the traffic is discarded, the SAs stay.
    hq.remove_policy("rdp")
    assert hq.spd.policy_names == ["deny"]
    assert hq.sa_names == ["hq-out", "hq-in"]
    v = hq.outbound(hq_packet(9))
    assert (v.action, v.policy, v.packet) == ("discard", "deny", None)
    # The SAs no policy needs any more can go; their final counters come back.
    final = hq.delete_sa("hq-out")
    assert final["packets"] == 5 and set(final) == set(hq.sa_stats("hq-in"))
    assert hq.sa_names == ["hq-in"]


def test_replace_policy_narrows_in_place() -> None:
    hq, br = live_pair()
    hq.install_policy('name = "ike"\nprotocol = "udp"\nlocal_port = 500\nremote_port = 500\n'
                      'action = "bypass"\n', before="rdp")
    assert hq.spd.policy_names == ["ike", "rdp", "deny"]
    assert_flows(hq, br, 1)
    # Narrow rdp to another remote network: the branch's packets no longer match it.
    hq.replace_policy(rdp_policy("rdp", "10.0.0.0/24", "10.9.0.0/24", "hq-out", "hq-in"))
    assert hq.spd.policy_names == ["ike", "rdp", "deny"]
    assert hq.outbound(hq_packet(2)).action == "discard"
    hq.replace_policy(rdp_policy("rdp", "10.0.0.0/24", "10.1.0.0/24", "hq-out", "hq-in"))
    assert_flows(hq, br, 3)


def test_spd_shows_the_live_policies() -> None:
    spd = ipsec.Spd.from_toml(DENY_ALL)
    gw = ipsec.Gateway(spd, now=T0)
    assert gw.spd is spd
    gw.add_sa("o", **sa_kwargs(0x1000, "outbound", 1))
    assert gw.spd is spd, "SAs are not policies"
    gw.install_policy('name = "p"\ndirection = "outbound"\naction = "protect"\nsa = "o"\n',
                      before="deny")
    live = gw.spd
    assert live is not spd and live.policy_names == ["p", "deny"]
    assert gw.spd is live, "read again without a change: the same object"
    assert spd.policy_names == ["deny"], "the Spd it was built from is not changed"
    d = live.lookup("outbound", src="10.0.0.1", dst="10.1.0.1", protocol="udp", src_port=1,
                    dst_port=2)
    assert (d.action, d.policy, d.sa) == ("protect", "p", "o")


def rekeyed_pair() -> tuple[ipsec.Gateway, ipsec.Gateway, list[bytes], int]:
    """The live pair with two packets sent under the old SA and not yet delivered, then
    rekeyed make-before-break (the branch's inbound SA first, then the head office's
    outbound SA); returns the packets in flight and the new SPI."""
    hq, br = live_pair()
    assert_flows(hq, br, 0)
    in_flight = [send(hq, hq_packet(100 + i), "hq-out") for i in range(2)]
    new_spi = br.allocate_spi()
    br.rekey_sa("br-in", "br-in-2", **sa_kwargs(new_spi, "inbound", 3))
    hq.rekey_sa("hq-out", "hq-out-2", **sa_kwargs(new_spi, "outbound", 3))
    return hq, br, in_flight, new_spi


def test_rekey_make_before_break_then_delete() -> None:
    hq, br, in_flight, new_spi = rekeyed_pair()
    assert hq.sa_names == ["hq-out", "hq-in", "hq-out-2"]
    assert br.sa_info("br-in-2").spi == new_spi and hq.sa_info("hq-out-2").spi == new_spi
    # The next packet leaves under the new SA, with its SPI, from sequence number 1.
    wire = send(hq, hq_packet(1), "hq-out-2")
    assert wire_spi(wire) == new_spi
    assert receive(br, wire, "br-in-2") == hq_packet(1)
    assert hq.sa_info("hq-out-2").seq == 1
    # What was sent under the old SA still decrypts: the old inbound SA still accepts.
    assert receive(br, in_flight[0], "br-in") == hq_packet(100)
    # The old outbound SA sends no more: deleting it returns its final counters.
    old_out = hq.delete_sa("hq-out")
    assert old_out["packets"] == 3  # assert_flows' packet and the two in flight
    # Deleting the old inbound SA: its packets are now unknown SPIs, counted on the gateway.
    old_in = br.delete_sa("br-in")
    assert old_in["packets"] == 2 and "br-in" not in br.sa_names
    before = br.stats["unknown_spi"]
    with pytest.raises(ipsec.UnknownSpiError):
        br.inbound(in_flight[1])
    assert br.stats["unknown_spi"] == before + 1
    # The policy is served by the successors, both ways.
    for tag in range(2, 5):
        assert receive(br, send(hq, hq_packet(tag), "hq-out-2"), "br-in-2") == hq_packet(tag)
        assert receive(hq, send(br, br_packet(tag), "br-out"), "hq-in") == br_packet(tag)


def test_rekey_then_retire_the_old_inbound_sa() -> None:
    hq, br, in_flight, _ = rekeyed_pair()
    br.retire_sa("br-in", T0 + 30)
    # Before the time: the old SA still accepts what was on its way.
    assert receive(br, in_flight[0], "br-in", now=T0 + 10) == hq_packet(100)
    assert "br-in" in br.sa_names
    # From the time on it is gone: the packet is an unknown SPI, counted.
    before = br.stats["unknown_spi"]
    with pytest.raises(ipsec.UnknownSpiError):
        br.inbound(in_flight[1], now=T0 + 30)
    assert br.stats["unknown_spi"] == before + 1
    assert br.sa_names == ["br-out", "br-in-2"]
    assert receive(br, send(hq, hq_packet(7), "hq-out-2"), "br-in-2", now=T0 + 31) == \
        hq_packet(7)


def test_poll_events_reaps_a_retired_sa() -> None:
    _, br, _, _ = rekeyed_pair()
    br.retire_sa("br-in", T0 + 5)
    br.retire_sa("br-in", T0 + 60)  # calling again moves the time
    assert br.poll_events(now=T0 + 30) == [] and "br-in" in br.sa_names
    br.poll_events(now=T0 + 60)
    assert "br-in" not in br.sa_names
    with pytest.raises(KeyError):
        br.sa_info("br-in")


def refused(gw: ipsec.Gateway, other: ipsec.Gateway, exc: type[BaseException],
            call: Callable[[], object], tag: int) -> BaseException:
    """Runs the control call `call` on `gw` (the pair is `gw`, `other`), which must be
    refused with `exc`, changing nothing: policies and SAs as before, traffic flows."""
    before = (shape(gw), shape(other))
    with pytest.raises(exc) as info:
        call()
    assert (shape(gw), shape(other)) == before
    hq, br = (gw, other) if "hq-out" in gw.sa_names else (other, gw)
    assert_flows(hq, br, tag)
    return info.value


def test_every_control_error_carries_its_fields_and_changes_nothing() -> None:
    hq, br = live_pair()
    rdp = rdp_policy("rdp", "10.0.0.0/24", "10.1.0.0/24", "hq-out", "hq-in")

    e: Any = refused(hq, br, ipsec.DuplicateNameError,
                     lambda: hq.add_sa("hq-out", **sa_kwargs(0x1100, "outbound", 10)), 1)
    assert e.name == "hq-out"
    assert str(e) == ('the name "hq-out" is taken by an installed SA, or by policies for the '
                      'SA that succeeded one (SA names are unique)')

    e = refused(hq, br, ipsec.DuplicateSpiError,
                lambda: hq.add_sa("hq-in-2", **sa_kwargs(0x2000, "inbound", 11)), 2)
    assert (e.spi, e.sa) == (0x2000, "hq-in")
    assert str(e) == ('inbound sa "hq-in" already has SPI 0x00002000: inbound SAs are found '
                      'by their SPI, so it must be unique among them (unless their lookups '
                      'tell them apart by destination address, RFC 4301 §4.1)')

    e = refused(hq, br, ipsec.UnknownSaError, lambda: hq.delete_sa("nope"), 3)
    assert e.name == "nope" and str(e) == 'no SA called "nope" is installed'
    e = refused(hq, br, ipsec.UnknownSaError,
                lambda: hq.rekey_sa("nope", "new", **sa_kwargs(0x1200, "outbound", 12)), 4)
    assert e.name == "nope"
    e = refused(hq, br, ipsec.UnknownSaError, lambda: hq.retire_sa("nope", T0 + 1), 5)
    assert e.name == "nope"

    e = refused(hq, br, ipsec.SaInUseError, lambda: hq.delete_sa("hq-out"), 6)
    assert (e.sa, e.policy) == ("hq-out", "rdp")
    assert str(e) == ('sa "hq-out" is in use: policy "rdp" sends or receives through it '
                      '(remove or replace the policy, or rekey the SA, first)')
    e = refused(br, hq, ipsec.SaInUseError, lambda: br.retire_sa("br-in", T0 + 1), 7)
    assert (e.sa, e.policy) == ("br-in", "rdp")

    ghost = rdp_policy("rdp-2", "10.0.0.0/24", "10.2.0.0/24", "ghost-out", "hq-in")
    e = refused(hq, br, ipsec.MissingSaError, lambda: hq.install_policy(ghost, before="deny"), 8)
    assert (e.policy, e.sa) == ("rdp-2", "ghost-out")
    assert str(e) == ('policy "rdp-2" names sa "ghost-out", which is not installed (or only '
                      'SAs being retired serve it)')
    e = refused(hq, br, ipsec.MissingSaError, lambda: hq.replace_policy(
        rdp_policy("rdp", "10.0.0.0/24", "10.1.0.0/24", "hq-out", "ghost-in")), 9)
    assert (e.policy, e.sa) == ("rdp", "ghost-in")

    e = refused(hq, br, ipsec.DirectionMismatchError,
                lambda: hq.rekey_sa("hq-out", "hq-new", **sa_kwargs(0x1300, "inbound", 13)), 10)
    assert (e.sa, e.replaces) == ("hq-new", "hq-out")
    assert str(e) == ('sa "hq-new" cannot replace sa "hq-out": a successor must have the '
                      'direction of the SA it replaces')

    e = refused(hq, br, ipsec.DuplicatePolicyError,
                lambda: hq.install_policy(rdp, before="deny"), 11)
    assert e.name == "rdp"
    assert str(e) == 'a policy called "rdp" is installed (replace_policy changes it)'

    e = refused(hq, br, ipsec.UnknownPolicyError,
                lambda: hq.install_policy(rdp.replace('"rdp"', '"rdp-3"'), before="nope"), 12)
    assert e.name == "nope" and str(e) == 'no policy called "nope" is installed'
    e = refused(hq, br, ipsec.UnknownPolicyError,
                lambda: hq.replace_policy(rdp.replace('"rdp"', '"nope"')), 13)
    assert e.name == "nope"
    e = refused(hq, br, ipsec.UnknownPolicyError, lambda: hq.remove_policy("nope"), 14)
    assert e.name == "nope"

    # An invalid configuration or policy text is the usual ConfigError (not a
    # ControlError), naming the key.
    e = refused(hq, br, ipsec.ConfigError,
                lambda: hq.add_sa("x", **dict(sa_kwargs(0x1400, "outbound", 14),
                                              cipher="rot13")), 15)
    assert e.field == "cipher" and not isinstance(e, ipsec.ControlError)
    e = refused(hq, br, ipsec.ConfigError,
                lambda: hq.install_policy('name = "bad"\naction = "maybe"\n'), 16)
    assert (e.field, e.context) == ("action", 'policy "bad"')
    # A key an installed SA uses is refused too (nonces would repeat under it).
    e = refused(hq, br, ipsec.ConfigError,
                lambda: hq.add_sa("reuse", **sa_kwargs(0x1500, "outbound", 1)), 17)
    assert "key" in str(e) and "hq-out" in str(e)


def test_control_error_hierarchy() -> None:
    subclasses = [
        ipsec.DuplicateNameError, ipsec.DuplicateSpiError, ipsec.UnknownSaError,
        ipsec.SaInUseError, ipsec.MissingSaError, ipsec.DirectionMismatchError,
        ipsec.DuplicatePolicyError, ipsec.UnknownPolicyError,
    ]
    assert issubclass(ipsec.ControlError, ipsec.IpsecError)
    assert not issubclass(ipsec.ControlError, ipsec.ConfigError)
    for cls in subclasses:
        assert cls.__bases__ == (ipsec.ControlError,) and cls.__module__ == "ipsec"
        assert cls.__name__ in ipsec.__all__ and getattr(ipsec, cls.__name__) is cls
    assert "ControlError" in ipsec.__all__ and "GatewaySa" in ipsec.__all__


def test_a_refused_call_remembers_no_time() -> None:
    """A refused add_sa with `now` leaves the gateway's clock as it was: an SA added
    afterwards with no `now` is created at the old time (its soft lifetime counts from
    there)."""
    gw = empty_gateway()
    gw.add_sa("first", **sa_kwargs(0x1000, "outbound", 1), now=T0 + 10)
    with pytest.raises(ipsec.DuplicateNameError):
        gw.add_sa("first", **sa_kwargs(0x1100, "outbound", 2), now=T0 + 1000)
    gw.add_sa("second", **sa_kwargs(0x1200, "outbound", 3, soft_lifetime=ipsec.Lifetime(
        seconds=100), soft_lifetime_jitter=0))
    # Created at T0 + 10 (not T0 + 1000): the rekey event is due at T0 + 110.
    assert gw.poll_events(now=T0 + 109) == []
    events = gw.poll_events(now=T0 + 110)
    assert [(n, e.kind, e.limit) for n, e in events] == [("second", "rekey", "time")]


def test_keywords_are_the_constructors() -> None:
    ctor = [p for p in inspect.signature(ipsec.SecurityAssociation).parameters.values()
            if p.name != "now"]
    for method, lead in ((ipsec.Gateway.add_sa, ["name"]),
                         (ipsec.Gateway.rekey_sa, ["replaces", "name"])):
        params = [p for p in inspect.signature(method).parameters.values() if p.name != "self"]
        assert [p.name for p in params] == lead + [p.name for p in ctor] + ["now"]
        kw = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
        assert kw == {**{p.name: p.default for p in ctor}, "now": None}
    # nat_keepalive_interval: left out, the constructor's 20 s; None, no keepalives.
    gw = empty_gateway()
    gw.add_sa("a", **sa_kwargs(0x1000, "outbound", 1, udp_encap=(4500, 4500)))
    assert gw.next_keepalive == pytest.approx(T0 + 20.0)
    gw.delete_sa("a")
    gw.add_sa("b", **sa_kwargs(0x1100, "outbound", 2, udp_encap=(4500, 4500)),
              nat_keepalive_interval=None)
    assert gw.next_keepalive is None
    assert gw.sa_info("b").udp_encap == (4500, 4500)


def test_bad_arguments_raise_type_or_value_errors() -> None:
    hq, br = live_pair()
    before = shape(hq)
    ok = sa_kwargs(0x1600, "outbound", 20)
    bad_calls: list[tuple[type[BaseException], Callable[[], object]]] = [
        (TypeError, lambda: hq.add_sa(None, **ok)),  # type: ignore[arg-type]
        (TypeError, lambda: hq.add_sa("x", **dict(ok, key=None))),
        (TypeError, lambda: hq.add_sa("x", **dict(ok, spi="0x1600"))),
        (TypeError, lambda: hq.add_sa("x", **dict(ok, nat_keepalive_interval="soon"))),
        (TypeError, lambda: hq.add_sa("x", **dict(ok, colour="blue"))),
        (TypeError, lambda: hq.add_sa("x", spi=1)),  # type: ignore[call-arg]
        (TypeError, lambda: hq.add_sa("x", **ok, now="later")),  # type: ignore[arg-type]
        (ValueError, lambda: hq.add_sa("x", **dict(ok, spi=-1))),
        (ValueError, lambda: hq.add_sa("", **ok)),
        (TypeError, lambda: hq.rekey_sa(None, "x", **ok)),  # type: ignore[arg-type]
        (TypeError, lambda: hq.delete_sa(5)),  # type: ignore[arg-type]
        (TypeError, lambda: hq.retire_sa("hq-out", None)),  # type: ignore[arg-type]
        (TypeError, lambda: hq.retire_sa("hq-out", "soon")),  # type: ignore[arg-type]
        (ValueError, lambda: hq.retire_sa("hq-out", -1.0)),
        (TypeError, lambda: hq.install_policy(None)),  # type: ignore[arg-type]
        (TypeError, lambda: hq.install_policy(b'name = "x"')),  # type: ignore[arg-type]
        (TypeError, lambda: hq.install_policy('name = "x"', before=3)),  # type: ignore[arg-type]
        (ValueError, lambda: hq.install_policy("this is not toml")),
        (TypeError, lambda: hq.replace_policy(None)),  # type: ignore[arg-type]
        (TypeError, lambda: hq.remove_policy(None)),  # type: ignore[arg-type]
        (TypeError, lambda: hq.sa_info(None)),  # type: ignore[arg-type]
        (KeyError, lambda: hq.sa_info("nope")),
    ]
    for exc, call in bad_calls:
        with pytest.raises(exc):
            call()
    assert shape(hq) == before
    assert_flows(hq, br, 1)


def test_control_calls_release_the_gil() -> None:
    """As test_threads.test_batches_release_the_gil: with a 10 s switch interval the main
    thread only runs while the worker is inside a control call if the call released the
    GIL. The worker replaces a policy of a gateway of 2,000 policies until the main
    thread has run, at most 5,000 times (a replacement takes microseconds, so the main
    thread, woken when the GIL is released, may need many of them to get in first)."""
    text = "".join('[[policy]]\nname = "p%d"\nremote = "10.%d.%d.0/24"\naction = "bypass"\n'
                   % (i, 100 + i // 256, i % 256) for i in range(2000)) + DENY_ALL
    gw = ipsec.Gateway.from_toml(text, now=T0)
    started = threading.Event()
    main_ran = threading.Event()
    done: list[int] = []

    def worker() -> None:
        started.set()
        for i in range(5000):
            gw.replace_policy('name = "p7"\nremote = "10.200.%d.%d/32"\naction = "bypass"\n'
                              % (i // 256, i % 256))
            done.append(i)
            if main_ran.is_set():
                break

    old = sys.getswitchinterval()
    sys.setswitchinterval(10.0)
    try:
        t = threading.Thread(target=worker)
        t.start()
        started.wait()
        count = 0
        while t.is_alive():
            count += 1
            main_ran.set()
            time.sleep(0)
        t.join()
    finally:
        sys.setswitchinterval(old)
    assert count > 0
    assert done and len(gw.spd) == 2001
    last = done[-1]
    d = gw.spd.lookup("outbound", src="10.0.0.1", dst="10.200.%d.%d" % (last // 256, last % 256),
                      protocol="udp",
                      src_port=1, dst_port=2)
    assert (d.action, d.policy) == ("bypass", "p7")
