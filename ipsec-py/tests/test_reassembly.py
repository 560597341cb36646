"""IP fragment reassembly: ``ipsec.Reassembler`` on packets cut by scapy's own
``fragment()`` (IPv4) and ``fragment6()`` (IPv6), and ``Gateway.inbound`` on ESP packets
fragmented on the path (verdict ``"reassembling"`` until the datagram is whole).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.packet import Raw

import ipsec
from helpers import T4_DST, T4_SRC, T6_DST, T6_SRC, sa_pair


def v4_datagram(size: int, ident: int = 0x4242) -> Any:
    return IP(src=T4_SRC, dst=T4_DST, id=ident, flags=0, ttl=61) / UDP(sport=4500, dport=4500) / Raw(
        bytes(i & 0xFF for i in range(size)))


def v6_datagram(size: int) -> Any:
    return IPv6(src=T6_SRC, dst=T6_DST, hlim=61) / UDP(sport=4500, dport=4500) / Raw(
        bytes((i * 3) & 0xFF for i in range(size)))


def v6_fragments(pkt: Any, ident: int, mtu: int) -> list[bytes]:
    """scapy's fragment6() of `pkt` (an IPv6 packet without extension headers), which
    wants the Fragment header (identification `ident`) already in place."""
    with_header = (IPv6(src=pkt.src, dst=pkt.dst, hlim=pkt.hlim, tc=pkt.tc, fl=pkt.fl)
                   / IPv6ExtHdrFragment(id=ident, nh=pkt.nh) / pkt.payload)
    return [raw(f) for f in fragment6(with_header, mtu)]


def test_scapy_fragments_in_any_order_give_back_the_datagram() -> None:
    r = ipsec.Reassembler()
    rng = random.Random(8200)
    cases = [
        ("IPv4", raw(v4_datagram(3000)), [raw(f) for f in fragment(v4_datagram(3000), fragsize=800)]),
        ("IPv6", raw(v6_datagram(3000)), v6_fragments(v6_datagram(3000), 0x1234, 1280)),
    ]
    for family, whole, frags in cases:
        assert len(frags) >= 3, family
        rng.shuffle(frags)
        got = [r.insert(f, now=1.0) for f in frags]
        assert got[:-1] == [None] * (len(frags) - 1), family
        assert got[-1] == whole, "%s: the datagram as it was before scapy cut it" % family
    assert r.stats["packets"] == 2
    assert r.stats["bytes"] == sum(len(c[1]) for c in cases)
    assert (r.datagrams, r.held_fragments, r.held_bytes) == (0, 0, 0)
    # A packet that is not a fragment comes back as it is (the same object for bytes).
    plain: bytes = raw(v4_datagram(100))
    assert r.insert(plain) is plain
    assert r.insert(bytearray(plain)) == plain


def test_fragment_drops_raise_fragment_error_with_their_reason() -> None:
    r = ipsec.Reassembler(lifetime=5.0, now=100.0)
    frags = [raw(f) for f in fragment(v4_datagram(2000, ident=7), fragsize=600)]
    assert r.insert(frags[0]) is None
    with pytest.raises(ipsec.FragmentError) as e:
        r.insert(frags[0])
    assert e.value.reason == "fragment_duplicate"
    # A forged fragment overlapping the first: the whole datagram goes.
    forged = IP(frags[1])
    forged.frag -= 8
    del forged.chksum
    with pytest.raises(ipsec.FragmentError) as e:
        r.insert(raw(forged))
    assert e.value.reason == "fragment_overlap"
    assert isinstance(e.value, ipsec.IpsecError)
    assert r.datagrams == 0
    # Time: the datagram of the next fragment does not complete within 5 s.
    assert r.insert(frags[1], now=101.0) is None
    assert r.held_fragments == 1 and r.held_bytes == len(frags[1]) + 64
    assert r.expire(now=105.9) == 0
    assert r.expire(now=106.0) == 1
    assert r.stats["fragment_duplicate"] == 1
    assert r.stats["fragment_overlap"] == 2
    assert r.stats["fragment_timeout"] == 1
    with pytest.raises(ipsec.MalformedPacketError):
        r.insert(b"\x45\x00")
    assert r.stats["malformed"] == 1


def test_limits_refuse_new_fragments() -> None:
    r = ipsec.Reassembler(max_datagrams=1, max_fragments=2)
    assert r.limits == {"max_bytes": 4 << 20, "max_datagrams": 1, "max_fragments": 2,
                        "lifetime": 30.0}
    a = [raw(f) for f in fragment(v4_datagram(2000, ident=1), fragsize=600)]
    b = [raw(f) for f in fragment(v4_datagram(2000, ident=2), fragsize=600)]
    assert r.insert(a[0]) is None
    with pytest.raises(ipsec.FragmentError) as e:
        r.insert(b[0])
    assert e.value.reason == "fragment_limit"
    assert r.insert(a[1]) is None
    with pytest.raises(ipsec.FragmentError):
        r.insert(a[2])
    assert r.stats["fragment_limit"] == 2
    assert "held_fragments=2" in repr(r)


def test_bad_arguments_are_typed_errors() -> None:
    with pytest.raises(ipsec.ConfigError):
        ipsec.Reassembler(max_bytes=-1)
    with pytest.raises(TypeError):
        ipsec.Reassembler(lifetime="30")  # type: ignore[arg-type]
    with pytest.raises(ipsec.ConfigError):
        ipsec.Reassembler(lifetime=-1.0)
    r = ipsec.Reassembler()
    with pytest.raises(TypeError):
        r.insert("not bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        r.insert(b"", now=-5.0)


# One key per SA: a key that served both would repeat AEAD nonces (a load error).
KEY_1 = "000102030405060708090a0b0c0d0e0f10111213"
KEY_2 = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3"

GATEWAY = """
[[policy]]
name = "site"
direction = "both"
local = "10.0.0.0/24"
remote = "10.1.0.0/24"
action = "protect"
sa = ["out", "in"]

[[sa]]
name = "out"
spi = 0x3001
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "000102030405060708090a0b0c0d0e0f10111213"
tunnel_src = "192.0.2.1"
tunnel_dst = "198.51.100.2"

[[sa]]
name = "in"
spi = 0x3002
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3"
"""

# The peer: the policy mirrored, and the SAs' ends swapped (its "out" is our "in": the
# same SPI and key; a key serves one SA on one gateway).
PEER = (GATEWAY.replace('local = "10.0.0.0/24"', 'local = "PEER"')
        .replace('remote = "10.1.0.0/24"', 'remote = "10.0.0.0/24"')
        .replace('local = "PEER"', 'local = "10.1.0.0/24"')
        .replace("spi = 0x3001", "spi = 0xSWAP").replace("spi = 0x3002", "spi = 0x3001")
        .replace("spi = 0xSWAP", "spi = 0x3002")
        .replace(KEY_1, "SWAP").replace(KEY_2, KEY_1).replace("SWAP", KEY_2))


def test_gateway_reassembles_outer_esp_fragments_cut_by_scapy() -> None:
    peer = ipsec.Gateway.from_toml(PEER)
    gw = ipsec.Gateway.from_toml(GATEWAY)
    inner = raw(IP(src="10.1.0.5", dst="10.0.0.9", id=1) / UDP(sport=1000, dport=2000)
                / Raw(b"z" * 2500))
    out = peer.outbound(inner)
    assert out.action == "protect" and out.packet is not None
    frags = [raw(f) for f in fragment(IP(out.packet), fragsize=1000)]
    assert len(frags) == 3
    verdicts = [gw.inbound(f) for f in (frags[2], frags[0])]
    for v in verdicts:
        assert (v.action, v.policy, v.sa, v.packet) == ("reassembling", None, None, None)
    assert "reassembling" in repr(verdicts[0])
    done = gw.inbound(frags[1])
    assert (done.action, done.policy, done.sa, done.packet) == ("protect", "site", "in", inner)
    assert gw.sa_stats("in")["packets"] == 1

    # IPv6 outer fragments of the next ESP packet, through inbound_many.
    out = peer.outbound(inner)
    assert out.packet is not None
    esp6 = IPv6(src=T6_SRC, dst=T6_DST) / Raw(out.packet[20:])
    esp6.nh = 50
    got = gw.inbound_many(v6_fragments(IPv6(raw(esp6)), 0x99, 1280))
    assert [v.action for v in got if isinstance(v, ipsec.GatewayVerdict)] == [
        "reassembling", "reassembling", "protect"]
    last = got[-1]
    assert isinstance(last, ipsec.GatewayVerdict) and last.packet == inner

    # Drops are the gateway's; limits have a setter; time expires held fragments.
    assert gw.inbound(frags[0]).action == "reassembling"
    with pytest.raises(ipsec.FragmentError) as e:
        gw.inbound(frags[0])
    assert e.value.reason == "fragment_duplicate"
    assert gw.stats["fragment_duplicate"] == 1
    assert gw.set_reassembly_limits(max_datagrams=0) == 1
    assert gw.stats["fragment_limit"] == 1
    gw.set_reassembly_limits(lifetime=2.0)
    assert gw.inbound(frags[0], now=10.0).action == "reassembling"
    assert gw.expire_fragments(now=11.0) == 0
    assert gw.expire_fragments(now=12.0) == 1
    assert gw.stats["fragment_timeout"] == 1


def test_an_sa_refuses_the_fragments_it_is_given() -> None:
    """ESP is removed from whole packets only: IPv4 fragments were refused already,
    outer IPv6 fragments are now too (they were tried as ESP: auth_failed)."""
    for outer in (4, 6):
        out, inb = sa_pair(outer=outer)
        esp = out.encrypt(raw(IP(src="10.0.0.1", dst="10.1.0.1") / UDP() / Raw(b"q" * 1500)))
        if outer == 4:
            first = ipv4_first_fragment(esp)
        else:
            first = v6_fragments(IPv6(esp), 0x77, 1280)[0]
        with pytest.raises(ipsec.MalformedPacketError):
            inb.decrypt(first)
        assert inb.stats["malformed"] == 1, outer
        assert inb.stats["auth_failed"] == 0, outer


def ipv4_first_fragment(packet: bytes) -> bytes:
    return bytes(raw(fragment(IP(packet), fragsize=800)[0]))
