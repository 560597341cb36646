"""A rekey done through the Python control plane, checked against an independent ESP
implementation (scapy's ``scapy.layers.ipsec``): after ``rekey_sa`` the gateway's packets
carry the new SPI and decrypt in scapy with the new key only, and scapy's packets under
the new inbound SA are accepted; the old inbound SA accepts until it is deleted.

The scapy SAs mirror the gateway's as in test_scapy_interop.py (AES-GCM key with its
4-byte salt as ``crypt_key``, the outer IPv4 header as ``tunnel_header``).
"""

from __future__ import annotations

from typing import Any

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP
from scapy.layers.ipsec import ESP, IPSecIntegrityError
from scapy.layers.ipsec import SecurityAssociation as ScapySA

import ipsec
from test_control import (
    BR_GW,
    DENY_ALL,
    HQ_GW,
    T0,
    br_packet,
    hq_packet,
    key,
    rdp_policy,
    sa_kwargs,
    wire_spi,
)

OLD_OUT, OLD_IN, NEW_OUT = 0x1000, 0x2000, 0x3000


def scapy_sa(spi: int, n: int, tunnel: tuple[str, str]) -> Any:
    """scapy's SA with `key(n)` (AES-128-GCM, key || salt) and the outer header
    `tunnel` (src, dst) for the packets it encrypts."""
    return ScapySA(ESP, spi=spi, seq_num=1, crypt_algo="AES-GCM", crypt_key=key(n),
                   tunnel_header=IP(src=tunnel[0], dst=tunnel[1], ttl=64))


def scapy_encrypt(sa: Any, inner: bytes, seq: int) -> bytes:
    sa.seq_num = seq
    return bytes(raw(sa.encrypt(IP(inner))))


def scapy_decrypt(sa: Any, wire: bytes) -> bytes:
    return bytes(raw(sa.decrypt(IP(wire))))


def test_rekey_through_python_interoperates_with_scapy() -> None:
    # The head office as a key manager builds it: SAs and a policy at run time.
    gw = ipsec.Gateway.from_toml(DENY_ALL, now=T0)
    gw.add_sa("out-1", **sa_kwargs(OLD_OUT, "outbound", 1))
    gw.add_sa("in-1", **sa_kwargs(OLD_IN, "inbound", 2))
    gw.install_policy(rdp_policy("rdp", "10.0.0.0/24", "10.1.0.0/24", "out-1", "in-1"),
                      before="deny")
    # The branch is scapy: its inbound SA is our out-1, its outbound SA our in-1.
    peer_old_in = scapy_sa(OLD_OUT, 1, (HQ_GW, BR_GW))
    peer_old_out = scapy_sa(OLD_IN, 2, (BR_GW, HQ_GW))
    v = gw.outbound(hq_packet(0))
    assert v.sa == "out-1" and v.packet is not None
    assert scapy_decrypt(peer_old_in, v.packet) == hq_packet(0)
    in_flight = scapy_encrypt(peer_old_out, br_packet(0), 1)  # sent before the peer rekeys

    # Rekey both directions, make-before-break: inbound first (an SPI of our choice),
    # then outbound (the SPI the peer chose).
    new_in = gw.allocate_spi()
    gw.rekey_sa("in-1", "in-2", **sa_kwargs(new_in, "inbound", 4))
    gw.rekey_sa("out-1", "out-2", **sa_kwargs(NEW_OUT, "outbound", 3))
    assert gw.sa_info("in-2").spi == new_in and gw.sa_info("out-2").spi == NEW_OUT
    peer_new_in = scapy_sa(NEW_OUT, 3, (HQ_GW, BR_GW))
    peer_new_out = scapy_sa(new_in, 4, (BR_GW, HQ_GW))

    # Our packet under the new SA: new SPI, first sequence number, scapy decrypts it
    # with the new key, and the old key does not.
    for tag in (1, 2):
        v = gw.outbound(hq_packet(tag))
        assert (v.action, v.sa, v.policy) == ("protect", "out-2", "rdp")
        assert v.packet is not None
        assert wire_spi(v.packet) == NEW_OUT
        assert IP(v.packet)[ESP].seq == tag
        assert scapy_decrypt(peer_new_in, v.packet) == hq_packet(tag)
        wrong_key = ScapySA(ESP, spi=NEW_OUT, crypt_algo="AES-GCM", crypt_key=key(1))
        with pytest.raises(IPSecIntegrityError):
            scapy_decrypt(wrong_key, v.packet)

    # scapy's packets under the new inbound SA are accepted by it.
    for tag in (1, 2):
        wire = scapy_encrypt(peer_new_out, br_packet(tag), tag)
        assert wire_spi(wire) == new_in
        v = gw.inbound(wire)
        assert (v.action, v.sa, v.policy, v.packet) == ("protect", "in-2", "rdp", br_packet(tag))

    # The packet scapy sent under the old SA before it switched is still accepted ...
    v = gw.inbound(in_flight)
    assert (v.sa, v.packet) == ("in-1", br_packet(0))
    # ... until the old inbound SA is deleted: then it is an unknown SPI, counted.
    late = scapy_encrypt(peer_old_out, br_packet(9), 2)
    assert gw.delete_sa("out-1")["packets"] == 1
    assert gw.delete_sa("in-1")["packets"] == 1
    unknown = gw.stats["unknown_spi"]
    with pytest.raises(ipsec.UnknownSpiError):
        gw.inbound(late)
    assert gw.stats["unknown_spi"] == unknown + 1
    assert gw.sa_stats("in-2")["packets"] == 2 and gw.sa_stats("out-2")["packets"] == 2


def test_update_sa_moves_the_outer_header_and_scapy_decrypts_under_the_same_key() -> None:
    """``update_sa`` (a MOBIKE move): the next packet goes to the new peer address with
    the next sequence number under the same key, which scapy (decrypting with a copy
    of the SA that knows nothing of the move) accepts; counters and use time carry
    over, and a refused move changes nothing."""
    gw = ipsec.Gateway.from_toml(DENY_ALL, now=T0)
    gw.add_sa("out", **sa_kwargs(OLD_OUT, "outbound", 1))
    gw.add_sa("in", **sa_kwargs(OLD_IN, "inbound", 2))
    gw.install_policy(rdp_policy("rdp", "10.0.0.0/24", "10.1.0.0/24", "out", "in"),
                      before="deny")
    peer_in = scapy_sa(OLD_OUT, 1, (HQ_GW, BR_GW))
    assert gw.sa_info("out").last_used is None
    first = gw.outbound(hq_packet(0), now=T0 + 1)
    assert first.packet is not None and IP(first.packet).dst == BR_GW
    assert gw.sa_info("out").last_used == T0 + 1

    gw.update_sa("out", tunnel_src=HQ_GW, tunnel_dst="198.51.100.77", now=T0 + 2)
    info = gw.sa_info("out")
    assert info.tunnel == (HQ_GW, "198.51.100.77")
    assert info.seq == 1 and info.stats["packets"] == 1 and info.last_used == T0 + 1
    second = gw.outbound(hq_packet(1), now=T0 + 3)
    assert second.packet is not None
    outer = IP(second.packet)
    assert outer.dst == "198.51.100.77" and outer[ESP].seq == 2
    assert scapy_decrypt(peer_in, second.packet) == hq_packet(1)

    with pytest.raises(ipsec.UnknownSaError):
        gw.update_sa("nope", tunnel_src=HQ_GW, tunnel_dst=BR_GW)
    with pytest.raises(ipsec.ConfigError, match="tunnel"):
        gw.update_sa("out", tunnel_src=HQ_GW, tunnel_dst="2001:db8::1")
    with pytest.raises(ipsec.ConfigError, match="tunnel_dst"):
        gw.update_sa("out", tunnel_src=HQ_GW)
    assert gw.sa_info("out").tunnel == (HQ_GW, "198.51.100.77")
    assert gw.sa_info("out").seq == 2
