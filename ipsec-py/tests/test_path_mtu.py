"""Path MTU from Python, checked by scapy (an implementation we did not write): packets
that do not fit are pre-fragmented, and scapy's ESP decrypts every fragment and scapy's
defragmenter rebuilds the original; DF packets raise PacketTooBigError and the ICMP error
built for their sender parses in scapy with a correct checksum and the right MTU; an
ICMP message about the SA's own packet lowers its path MTU; a gateway hands out every
fragment; a hard byte lifetime is never overshot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, TCP, UDP, defragment
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
from scapy.layers.ipsec import ESP
from scapy.layers.ipsec import SecurityAssociation as ScapySA
from scapy.packet import Raw

import ipsec
from helpers import EXAMPLES, T4_DST, T4_SRC, key_for

KEY = key_for("aes-128-gcm")


def outbound(path_mtu: int | None, **kw: Any) -> ipsec.SecurityAssociation:
    return ipsec.SecurityAssociation(
        spi=0x7000, direction="outbound", mode="tunnel", cipher="aes-128-gcm", key=KEY,
        tunnel_src=T4_SRC, tunnel_dst=T4_DST, path_mtu=path_mtu, **kw)


def scapy_inbound() -> Any:
    return ScapySA(ESP, spi=0x7000, crypt_algo="AES-GCM", crypt_key=KEY,
                   tunnel_header=IP(src=T4_SRC, dst=T4_DST))


def inner(size: int, df: bool) -> bytes:
    pkt = IP(src="10.0.0.5", dst="10.1.2.3", id=0x4242, flags="DF" if df else 0) / UDP(
        sport=5000, dport=53) / Raw(bytes(i & 0xFF for i in range(size - 28)))
    return bytes(raw(pkt))


def test_pre_fragmented_packets_decrypt_and_reassemble_in_scapy() -> None:
    sa = outbound(1400)
    original = inner(4000, df=False)
    wire = sa.encrypt_fragments(original)
    mtu = sa.inner_mtu
    assert mtu is not None
    per_fragment = (mtu - 20) & ~7
    assert len(wire) == -(-(4000 - 20) // per_fragment) == 4
    assert all(len(w) <= 1400 for w in wire)
    peer = scapy_inbound()
    fragments = [peer.decrypt(IP(w)) for w in wire]
    assert all(f[IP].id == 0x4242 for f in fragments)
    whole = defragment(fragments)
    assert len(whole) == 1
    assert bytes(raw(whole[0]))[20:] == original[20:]
    assert sa.stats["packets"] == 4
    # The plain call refuses, counted, and says what to use.
    with pytest.raises(ipsec.IpsecError, match="spare") as e:
        sa.encrypt(original)
    assert e.value.reason == "no_buffer_space" and sa.stats["no_buffer_space"] == 1
    # A packet that fits is one packet either way.
    small = sa.encrypt_fragments(inner(200, df=False))
    assert len(small) == 1 and len(small[0]) == len(sa.encrypt(inner(200, df=False)))


def test_df_packets_raise_too_big_and_the_icmp_error_parses_in_scapy() -> None:
    sa = outbound(1400)
    assert sa.path_mtu == 1400
    mtu = sa.inner_mtu
    assert mtu is not None and 1300 < mtu < 1400
    sa.encrypt(inner(mtu, df=True))
    refused = inner(mtu + 1, df=True)
    with pytest.raises(ipsec.PacketTooBigError) as e:
        sa.encrypt_fragments(refused)
    assert e.value.mtu == mtu and e.value.reason == "too_big"
    assert sa.stats["too_big"] == 1
    reply = ipsec.too_big_reply(refused, e.value.mtu, "10.0.0.1")
    assert reply is not None
    icmp = IP(reply)
    assert (icmp.src, icmp.dst) == ("10.0.0.1", "10.0.0.5")
    assert (icmp[ICMP].type, icmp[ICMP].code, icmp[ICMP].nexthopmtu) == (3, 4, mtu)
    # scapy recomputes both checksums and gets ours.
    rebuilt = IP(reply)
    del rebuilt.chksum
    del rebuilt[ICMP].chksum
    assert bytes(raw(rebuilt)) == reply
    assert len(reply) == 576
    # Nothing is built about a non-first fragment.
    frag = IP(refused)
    frag.frag = 10
    del frag.chksum
    assert ipsec.too_big_reply(bytes(raw(frag)), mtu, "10.0.0.1") is None


def test_ipv6_packet_too_big_parses_in_scapy() -> None:
    pkt = bytes(raw(IPv6(src="2001:db8:1::5", dst="2001:db8:2::3") / UDP(sport=1, dport=2)
                    / Raw(b"x" * 1500)))
    reply = ipsec.too_big_reply(pkt, 1400, "2001:db8:1::1")
    assert reply is not None and len(reply) == 1280
    p = IPv6(reply)
    assert p.dst == "2001:db8:1::5" and p[ICMPv6PacketTooBig].mtu == 1400
    rebuilt = IPv6(reply)
    del rebuilt[ICMPv6PacketTooBig].cksum
    assert bytes(raw(rebuilt)) == reply
    with pytest.raises(ValueError, match="family"):
        ipsec.too_big_reply(pkt, 1400, "10.0.0.1")


def test_icmp_about_our_own_packet_lowers_the_path_mtu() -> None:
    sa = outbound(None)
    esp = sa.encrypt(inner(1000, df=True), now=5.0)
    router = IP(src="203.0.113.9", dst=T4_SRC) / ICMP(type=3, code=4, nexthopmtu=1280) / Raw(
        esp[:64])
    assert sa.handle_icmp(bytes(raw(router))) == 1280
    assert sa.path_mtu == 1280
    # Ten minutes later it has aged out.
    sa.encrypt(inner(100, df=True), now=5.0 + 600)
    assert sa.path_mtu is None
    forged = IP(src="203.0.113.9", dst=T4_SRC) / ICMP(type=3, code=4, nexthopmtu=600) / Raw(
        b"\x00" * 64)
    with pytest.raises(ipsec.MalformedPacketError):
        sa.handle_icmp(bytes(raw(forged)))
    sa.set_path_mtu(1500)
    assert sa.path_mtu == 1500
    with pytest.raises(ipsec.ConfigError):
        sa.set_path_mtu(10)


def test_the_gateway_returns_every_fragment() -> None:
    # Head office's file with a 600-byte path MTU on the SA to branch 1.
    text = Path(EXAMPLES, "branch-office.toml").read_text()
    text = text.replace('name = "ho-to-b1"\n', 'name = "ho-to-b1"\npath_mtu = 600\n', 1)
    gw = ipsec.Gateway.from_toml(text)
    rdp = IP(src="10.0.0.10", dst="10.1.0.7", id=7, flags=0)
    pkt = bytes(raw(rdp / TCP(sport=3389, dport=50000, flags="PA") / Raw(b"r" * 1400)))
    v = gw.outbound(pkt)
    assert (v.action, v.policy, v.sa) == ("protect", "b1-rdp", "ho-to-b1")
    assert len(v.packets) == 3 and v.packets[0] == v.packet
    assert all(len(p) <= 600 for p in v.packets)
    peer = ScapySA(ESP, spi=0x1001, crypt_algo="AES-GCM",
                   crypt_key=bytes.fromhex("8f1c5e3a9b27d4610c5fa2e87b3d9146a1b2c3d4"),
                   tunnel_header=IP(src="192.0.2.1", dst="198.51.100.2"))
    whole = defragment([peer.decrypt(IP(p)) for p in v.packets])
    assert len(whole) == 1 and bytes(raw(whole[0]))[20:] == pkt[20:]
    # With DF set: too big, with the MTU for the ICMP error.
    df = IP(src="10.0.0.10", dst="10.1.0.7", flags="DF")
    with pytest.raises(ipsec.PacketTooBigError) as e:
        gw.outbound(bytes(raw(df / TCP(sport=3389, dport=50000) / Raw(b"r" * 1400))))
    assert e.value.mtu is not None and e.value.mtu < 600
    # A bypassed or discarded packet has one packet or none.
    assert gw.outbound(bytes(raw(IP(src="10.0.0.10", dst="10.9.9.9") / UDP()))).packets == []


def test_a_hard_byte_lifetime_is_never_overshot() -> None:
    sa = outbound(None, hard_lifetime=ipsec.Lifetime(bytes=1000))
    sa.encrypt(inner(400, df=True))
    sa.encrypt(inner(400, df=True))
    with pytest.raises(ipsec.LifetimeExpiredError) as e:
        sa.encrypt(inner(400, df=True))
    assert e.value.reason == "lifetime_expired"
    assert sa.stats["bytes"] == 800 and sa.expired
    assert [(ev.kind, ev.limit) for ev in sa.poll_events()] == [("expired", "bytes")]
    inb = ipsec.SecurityAssociation(spi=0x7000, direction="inbound", mode="tunnel",
                                    cipher="aes-128-gcm", key=KEY,
                                    hard_lifetime=ipsec.Lifetime(bytes=1000))
    sender = outbound(None)
    got = inb.decrypt_many([sender.encrypt(inner(400, df=True)) for _ in range(3)])
    assert [isinstance(g, bytes) for g in got] == [True, True, False]
    assert isinstance(got[2], ipsec.LifetimeExpiredError)
    assert inb.stats["bytes"] == 800
