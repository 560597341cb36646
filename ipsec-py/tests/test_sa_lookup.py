"""Inbound SA lookup as RFC 4301 §4.1 says (the ``lookup`` keyword): multicast SAs that
share an SPI are told apart by their group (``tunnel_dst``), the longest match wins, a
packet whose SPI is known but whose destination no SA has is an unknown SPI; the SA file
key, snapshots, and scapy's ESP as the independent peer of a group SA.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP
from scapy.layers.ipsec import ESP
from scapy.layers.ipsec import SecurityAssociation as ScapySA

import ipsec
from helpers import ipv4
from test_control import DENY_ALL, T0, key

SPI = 0x5000
SENDER, US = "192.0.2.1", "198.51.100.2"
GROUP1, GROUP2 = "233.252.0.1", "233.252.0.2"


def inner(tag: int) -> bytes:
    """UDP 10.0.0.5 -> 239.1.1.1 carrying `tag`, as an IPv4 packet."""
    udp = struct.pack("!HHHH", 5000, 5001, 12, 0) + struct.pack("!I", tag)
    return ipv4("10.0.0.5", "239.1.1.1", 17, udp)


def group_sa(n: int, group: str, lookup: str = "spi+destination", *,
             source: str = SENDER) -> dict[str, Any]:
    """The keywords of the inbound SA for `group` keyed by `n`."""
    return dict(spi=SPI, direction="inbound", mode="tunnel", cipher="aes-128-gcm", key=key(n),
                tunnel_src=source, tunnel_dst=group, lookup=lookup)


def sender(n: int, group: str, *, source: str = SENDER, seq: int = 0) -> ipsec.SecurityAssociation:
    return ipsec.SecurityAssociation(spi=SPI, direction="outbound", mode="tunnel",
                                     cipher="aes-128-gcm", key=key(n), tunnel_src=source,
                                     tunnel_dst=group, seq=seq)


def gateway(**sas: dict[str, Any]) -> ipsec.Gateway:
    """A gateway with the inbound SAs `sas`, each with an inbound policy of its own."""
    gw = ipsec.Gateway.from_toml(DENY_ALL, now=T0)
    for name, kw in sas.items():
        gw.add_sa(name, **kw)
        gw.install_policy('name = "p-%s"\ndirection = "inbound"\naction = "protect"\n'
                          'sa = "%s"\n' % (name, name), before="deny")
    return gw


def receive(gw: ipsec.Gateway, wire: bytes, tag: int) -> str:
    v = gw.inbound(wire)
    assert v.action == "protect" and v.packet == inner(tag) and v.sa is not None
    return v.sa


def test_two_groups_share_an_spi_and_each_gets_its_packets() -> None:
    gw = gateway(g1=group_sa(1, GROUP1), g2=group_sa(2, GROUP2))
    to1, to2 = sender(1, GROUP1), sender(2, GROUP2)
    for tag in range(3):
        assert receive(gw, to1.encrypt(inner(tag)), tag) == "g1"
        assert receive(gw, to2.encrypt(inner(tag)), tag) == "g2"
    assert gw.sa_info("g1").lookup == "spi+destination"
    assert gw.sa_stats("g1")["packets"] == 3 and gw.sa_stats("g2")["packets"] == 3


def test_a_known_spi_to_another_destination_is_an_unknown_spi() -> None:
    gw = gateway(g1=group_sa(1, GROUP1))
    astray = sender(1, GROUP2)
    with pytest.raises(ipsec.UnknownSpiError):
        gw.inbound(astray.encrypt(inner(1)))
    assert gw.stats["unknown_spi"] == 1
    assert gw.sa_stats("g1")["packets"] == 0


def test_the_longest_match_wins() -> None:
    gw = gateway(unicast=group_sa(1, US, "spi"), group=group_sa(2, GROUP1),
                 ssm=group_sa(3, GROUP1, "spi+destination+source", source="198.51.100.7"))
    assert receive(gw, sender(1, US).encrypt(inner(1)), 1) == "unicast"
    assert receive(gw, sender(2, GROUP1).encrypt(inner(2)), 2) == "group"
    assert receive(gw, sender(3, GROUP1, source="198.51.100.7").encrypt(inner(3)), 3) == "ssm"
    # What no longer key takes goes to the SPI-alone SA.
    assert receive(gw, sender(1, "203.0.113.9", seq=10).encrypt(inner(4)), 4) == "unicast"
    assert gw.sa_info("unicast").lookup == "spi"


def test_only_colliding_keys_are_duplicates() -> None:
    gw = gateway(g1=group_sa(1, GROUP1), u=group_sa(2, US, "spi"))
    with pytest.raises(ipsec.DuplicateSpiError) as e:
        gw.add_sa("again", **group_sa(3, GROUP1))
    assert (e.value.spi, e.value.sa) == (SPI, "g1")
    # SPI + protocol is the SPI alone here (ESP is the only protocol).
    with pytest.raises(ipsec.DuplicateSpiError) as e:
        gw.add_sa("again", **group_sa(4, GROUP2, "spi+protocol"))
    assert e.value.sa == "u"
    gw.add_sa("g2", **group_sa(5, GROUP2))
    gw.remove_policy("p-g1")
    gw.delete_sa("g1")
    assert sorted(gw.sa_names) == ["g2", "u"]
    gw.add_sa("g1", **group_sa(1, GROUP1))  # its key is free again


def test_lookups_that_cannot_work_are_config_errors() -> None:
    with pytest.raises(ipsec.ConfigError, match="lookup: expected"):
        ipsec.SecurityAssociation(**{**group_sa(1, GROUP1), "lookup": "destination"})
    with pytest.raises(ipsec.ConfigError, match="given for an outbound SA"):
        ipsec.SecurityAssociation(**{**group_sa(1, GROUP1), "direction": "outbound"})
    with pytest.raises(ipsec.ConfigError, match="needs tunnel mode"):
        ipsec.SecurityAssociation(spi=SPI, direction="inbound", mode="transport",
                                  cipher="aes-128-gcm", key=key(1), lookup="spi+destination")
    with pytest.raises(TypeError):
        ipsec.SecurityAssociation(**{**group_sa(1, GROUP1), "lookup": 2})
    # The default is the SPI alone.
    sa = ipsec.SecurityAssociation(spi=SPI, direction="inbound", mode="tunnel",
                                   cipher="aes-128-gcm", key=key(1))
    assert sa.lookup == "spi"


def test_the_sa_file_key() -> None:
    sas = "".join(
        '[[sa]]\nname = "%s"\nspi = %d\ndirection = "inbound"\nmode = "tunnel"\n'
        'cipher = "aes-128-gcm"\nkey = "%s"\ntunnel_src = "%s"\ntunnel_dst = "%s"\n'
        'lookup = "spi+destination"\n' % (name, SPI, key(n).hex(), SENDER, group)
        for name, n, group in (("g1", 1, GROUP1), ("g2", 2, GROUP2)))
    policies = "".join(
        '[[policy]]\nname = "p-%s"\ndirection = "inbound"\naction = "protect"\nsa = "%s"\n'
        % (n, n) for n in ("g1", "g2"))
    gw = ipsec.Gateway.from_toml(policies + DENY_ALL + sas, now=T0)
    assert receive(gw, sender(2, GROUP2).encrypt(inner(7)), 7) == "g2"
    assert ipsec.sas_from_toml(sas)["g1"].lookup == "spi+destination"
    with pytest.raises(ipsec.ConfigError, match='already has SPI 0x00005000'):
        ipsec.Gateway.from_toml(policies + DENY_ALL + sas.replace("spi+destination", "spi"))


def test_snapshots_keep_the_lookup() -> None:
    for lookup in ("spi", "spi+protocol", "spi+destination", "spi+destination+source"):
        sa = ipsec.SecurityAssociation(**group_sa(1, GROUP1, lookup))
        snap = sa.snapshot(T0)
        # Version 1 for the SPI alone (as older libraries write), 2 otherwise.
        assert snap[8:10] == (b"\x00\x01" if lookup == "spi" else b"\x00\x02")
        restored = ipsec.SecurityAssociation.restore(snap, T0 + 1)
        assert restored.lookup == lookup
        assert restored.tunnel == (SENDER, GROUP1)


def scapy_group_sa(n: int, group: str) -> Any:
    """scapy's SA for `group` with `key(n)` (AES-128-GCM, key || salt)."""
    return ScapySA(ESP, spi=SPI, seq_num=1, crypt_algo="AES-GCM", crypt_key=key(n),
                   tunnel_header=IP(src=SENDER, dst=group, ttl=64))


def test_group_sas_interoperate_with_scapy() -> None:
    # scapy sends to two groups under one SPI; each group SA takes its own.
    gw = gateway(g1=group_sa(1, GROUP1), g2=group_sa(2, GROUP2))
    for tag, (n, group, name) in enumerate(((1, GROUP1, "g1"), (2, GROUP2, "g2")), start=1):
        peer = scapy_group_sa(n, group)
        peer.seq_num = tag
        wire = bytes(raw(peer.encrypt(IP(inner(tag)))))
        assert IP(wire).dst == group
        assert receive(gw, wire, tag) == name
    # Our sender to group 2; scapy decrypts it with group 2's key.
    wire = sender(2, GROUP2).encrypt(inner(9))
    assert IP(wire).dst == GROUP2 and IP(wire)[ESP].spi == SPI
    assert bytes(raw(scapy_group_sa(2, GROUP2).decrypt(IP(wire)))) == inner(9)
