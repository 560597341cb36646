"""NAT traversal through the Python API, checked with scapy (a checker we did not
write): NAT-keepalives (RFC 3948 section 2.3), the outer IPv4 Identification and DF
policy (RFC 6864, RFC 4301 section 8.1), the UDP checksum of ESP in UDP over IPv6
(RFC 8200 section 8.1) and the transport-mode checksum fix-up after a NAT
(RFC 3948 section 3.1.2)."""

from __future__ import annotations

from typing import Any, Optional

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

import ipsec
from helpers import T4_DST, T4_SRC, T6_DST, T6_SRC, key_for

KEY = key_for("aes-128-gcm")


def outbound(outer: int = 4, **kw: Any) -> ipsec.SecurityAssociation:
    src, dst = (T4_SRC, T4_DST) if outer == 4 else (T6_SRC, T6_DST)
    return ipsec.SecurityAssociation(
        spi=0x7100, direction="outbound", mode="tunnel", cipher="aes-128-gcm", key=KEY,
        tunnel_src=src, tunnel_dst=dst, udp_encap=(4500, 4501), **kw)


def checksum_verifies(pkt: Any, layer: Any) -> bool:
    """scapy recomputes the layer's checksum; True when it equals the one sent."""
    sent = pkt[layer].chksum
    fresh = pkt.copy()
    del fresh[layer].chksum
    return bool(sent == fresh.__class__(raw(fresh))[layer].chksum)


def check_keepalive(k: bytes, outer: int) -> Any:
    pkt = IP(k) if outer == 4 else IPv6(k)
    assert pkt.haslayer(UDP)
    udp = pkt[UDP]
    assert (udp.sport, udp.dport, udp.len) == (4500, 4501, 9)
    assert bytes(udp.payload) == b"\xff"
    assert udp.chksum != 0
    assert checksum_verifies(pkt, UDP), "scapy disagrees with the UDP checksum"
    if outer == 4:
        assert (pkt.src, pkt.dst, pkt.ttl, pkt.len) == (T4_SRC, T4_DST, 64, 29)
        fresh = pkt.copy()
        del fresh.chksum
        assert IP(raw(fresh)).chksum == pkt.chksum, "IPv4 header checksum"
    else:
        assert (pkt.src, pkt.dst, pkt.hlim, pkt.plen) == (T6_SRC, T6_DST, 64, 9)
    return pkt


@pytest.mark.parametrize("outer", [4, 6])
def test_keepalive_is_due_after_silence_and_scapy_accepts_it(outer: int) -> None:
    sa = outbound(outer, now=100.0)
    assert sa.nat_keepalive_interval == 20.0
    assert sa.next_keepalive == 120.0
    assert sa.poll_keepalive(now=119.5) is None
    k = sa.poll_keepalive(now=120.0)
    assert k is not None
    pkt = check_keepalive(k, outer)
    if outer == 4:
        assert pkt.flags == "DF", "DF copy: a packet without an inner IPv4 header"
    assert sa.poll_keepalive() is None, "just sent (the last time given is kept)"
    assert sa.next_keepalive == 140.0
    # Traffic postpones it.
    sa.encrypt(raw(IP(src="10.0.0.1", dst="10.1.0.1") / UDP() / Raw(b"x" * 20)), now=130.0)
    assert sa.next_keepalive == 150.0


def test_keepalive_interval_keyword() -> None:
    assert outbound(nat_keepalive_interval=2.5, now=0.0).next_keepalive == 2.5
    for off in (None, 0, 0.0):
        sa = outbound(nat_keepalive_interval=off)
        assert sa.nat_keepalive_interval is None
        assert sa.next_keepalive is None
        assert sa.poll_keepalive(now=1e6) is None
    with pytest.raises(ipsec.ConfigError, match="nat_keepalive_interval"):
        outbound(nat_keepalive_interval=-1.0)
    with pytest.raises(TypeError, match="nat_keepalive_interval"):
        outbound(nat_keepalive_interval="20")
    inbound = ipsec.SecurityAssociation(
        spi=0x7101, direction="inbound", mode="tunnel", cipher="aes-128-gcm", key=KEY,
        udp_encap=(4500, 4500))
    assert inbound.next_keepalive is None


def test_gateway_polls_keepalives() -> None:
    text = """
[[policy]]
name = "p"
direction = "both"
local = "10.0.0.0/24"
remote = "10.1.0.0/24"
action = "protect"
sa = ["out", "in"]

[[sa]]
name = "out"
spi = 0x7200
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "%s"
tunnel_src = "%s"
tunnel_dst = "%s"
udp_encap = [4500, 4501]
nat_keepalive_interval = 25

[[sa]]
name = "in"
spi = 0x7201
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "%s"
""" % (KEY.hex(), T4_SRC, T4_DST, key_for("aes-128-gcm", "in").hex())
    gw = ipsec.Gateway.from_toml(text, now=10.0)
    assert gw.next_keepalive == 35.0
    assert gw.poll_keepalive(now=34.0) is None
    got = gw.poll_keepalive(now=35.0)
    assert got is not None
    name, k = got
    assert name == "out"
    check_keepalive(k, 4)
    assert gw.poll_keepalive(now=35.0) is None


def inner_v4(df: bool) -> bytes:
    return bytes(raw(IP(src="10.0.0.5", dst="10.1.0.5", flags="DF" if df else 0)
                     / UDP(sport=1, dport=2) / Raw(b"p" * 30)))


def inner_v6() -> bytes:
    return bytes(raw(IPv6(src="2001:db8:1::5", dst="2001:db8:2::5") / UDP(sport=1, dport=2)
                     / Raw(b"q" * 30)))


@pytest.mark.parametrize("df,want", [
    (None, ["DF", "", "DF"]),
    ("copy", ["DF", "", "DF"]),
    ("set", ["DF", "DF", "DF"]),
    ("clear", ["", "", ""]),
])
def test_outer_ipv4_df_policy_and_identification(df: Optional[str], want: list[str]) -> None:
    kw: dict[str, Any] = {} if df is None else {"df": df}
    sa = outbound(4, **kw)
    outs = [IP(sa.encrypt(p)) for p in (inner_v4(True), inner_v4(False), inner_v6())]
    assert [str(o.flags) for o in outs] == want
    ids = [o.id for o in outs]
    assert ids == [(ids[0] + i) & 0xFFFF for i in range(3)], "one Identification per packet"
    for o in outs:
        assert o.frag == 0
        fresh = o.copy()
        del fresh.chksum
        assert IP(raw(fresh)).chksum == o.chksum


def test_bad_df_value() -> None:
    with pytest.raises(ipsec.ConfigError, match="df"):
        outbound(4, df="sometimes")


def test_esp_in_udp_over_ipv6_has_a_checksum_scapy_accepts() -> None:
    sa = outbound(6)
    for inner in (inner_v4(True), inner_v6()):
        pkt = IPv6(sa.encrypt(inner))
        assert pkt[UDP].chksum != 0
        assert checksum_verifies(pkt, UDP)


PEER_PRIVATE, PEER_PUBLIC, OURS = "10.0.0.5", "203.0.113.77", "198.51.100.2"


def transport_pair(nat_oa: Optional[tuple[str, str]]) -> tuple[ipsec.SecurityAssociation,
                                                                ipsec.SecurityAssociation]:
    common: dict[str, Any] = dict(spi=0x7300, mode="transport", cipher="aes-256-gcm",
                                  key=key_for("aes-256-gcm"), udp_encap=(4500, 4500))
    out = ipsec.SecurityAssociation(direction="outbound", **common)
    inb = ipsec.SecurityAssociation(direction="inbound", nat_original_addresses=nat_oa,
                                    **common)
    return out, inb


@pytest.mark.parametrize("l4", ["tcp", "udp"])
@pytest.mark.parametrize("nat_oa", [(PEER_PRIVATE, OURS), None], ids=["nat-oa", "recompute"])
def test_transport_checksum_after_nat(l4: str, nat_oa: Optional[tuple[str, str]]) -> None:
    seg = TCP(sport=49732, dport=3389, flags="PA") if l4 == "tcp" else UDP(sport=5000, dport=53)
    original = raw(IP(src=PEER_PRIVATE, dst=OURS) / seg / Raw(b"through a NAT" * 3))
    out, inb = transport_pair(nat_oa)
    wire = IP(out.encrypt(original))
    # The NAT rewrites the source address and fixes the IPv4 header checksum, but not
    # the TCP/UDP checksum, which ESP encrypts.
    wire.src = PEER_PUBLIC
    del wire.chksum
    got = IP(inb.decrypt(raw(wire)))
    layer = TCP if l4 == "tcp" else UDP
    assert got.src == PEER_PUBLIC
    assert checksum_verifies(got, layer), "scapy disagrees with the fixed checksum"
    assert bytes(got[layer].payload) == b"through a NAT" * 3


def test_nat_original_addresses_keyword_is_checked() -> None:
    with pytest.raises(ipsec.ConfigError, match="nat_original_addresses"):
        ipsec.SecurityAssociation(spi=0x7301, direction="outbound", mode="transport",
                                  cipher="aes-128-gcm", key=KEY,
                                  nat_original_addresses=(PEER_PRIVATE, OURS))
    with pytest.raises(ipsec.ConfigError, match="nat_original_addresses"):
        transport_pair((PEER_PRIVATE, "not an address"))
    with pytest.raises(TypeError, match="nat_original_addresses"):
        transport_pair(PEER_PRIVATE)  # type: ignore[arg-type]
