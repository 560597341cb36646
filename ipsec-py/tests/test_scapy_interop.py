"""Live two-way ESP interop between the ipsec package and scapy's ESP
(``scapy.layers.ipsec.SecurityAssociation``), for every cipher/integrity pair scapy
supports (all 17 of ours), in tunnel mode (outer IPv4 and IPv6, inner IPv4 and IPv6)
and transport mode (IPv4, IPv6 with extension headers), with ESN across 2^32 and with
NAT-T (UDP 4500).

Name mapping and scapy quirks as in tests/python/test_scapy_live.py (which drives the
CLI): scapy's ``seq_num=0`` / ``esn=0`` mean "use the SA's value", so the SA fields are
set before each call; scapy copies its tunnel header template verbatim, so the RFC 6040
outer TOS is put into the template; scapy pads minimally (4-byte alignment), so our
output equals scapy's byte for byte only with ``padding="minimal"`` and the counter IV.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Callable, Optional

import pytest
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop
from scapy.layers.ipsec import ESP
from scapy.layers.ipsec import SecurityAssociation as ScapySA
from scapy.packet import Raw

import ipsec
from helpers import PAIR_IDS, PAIRS, T4_DST, T4_SRC, T6_DST, T6_SRC, integrity_key_for, key_for

SCAPY_CIPHER = {
    "aes-128-gcm": "AES-GCM", "aes-256-gcm": "AES-GCM",
    "chacha20-poly1305": "CHACHA20-POLY1305",
    "aes-128-gmac": "AES-NULL-GMAC", "aes-256-gmac": "AES-NULL-GMAC",
    "aes-128-cbc": "AES-CBC", "aes-256-cbc": "AES-CBC", "null": "NULL",
}
SCAPY_INTEGRITY = {
    "hmac-sha1-96": "HMAC-SHA1-96", "hmac-sha256-128": "SHA2-256-128",
    "hmac-sha384-192": "SHA2-384-192", "hmac-sha512-256": "SHA2-512-256",
}
COUNTER_IV = {"aes-128-gcm", "aes-256-gcm", "chacha20-poly1305", "aes-128-gmac", "aes-256-gmac"}
I4_SRC, I4_DST = "10.0.0.5", "10.1.2.3"
I6_SRC, I6_DST = "2001:db8:1::5", "2001:db8:2::3"
ESN_START = (1 << 32) - 3


def _frozen(pkt: Any) -> bytes:
    return bytes(raw(pkt))


def _pl(n: int, tag: str) -> bytes:
    return (tag.encode() * (n // max(len(tag), 1) + 1))[:n]


def v4(l4: Any, tos: int = 0, ident: int = 0x1C46) -> Any:
    return IP(version=4, ihl=5, tos=tos, id=ident, flags="DF", frag=0, ttl=64, src=I4_SRC,
              dst=I4_DST) / l4


def v6(l4: Any, ext: tuple[Any, ...] = (), tc: int = 0) -> Any:
    pkt = IPv6(version=6, tc=tc, fl=0x12345, hlim=64, src=I6_SRC, dst=I6_DST)
    for e in ext:
        pkt = pkt / e
    return pkt / l4


def tcp(dport: int, payload: bytes) -> Any:
    return TCP(sport=49732, dport=dport, seq=1, ack=2, dataofs=5, flags="PA", window=64240,
               urgptr=0) / Raw(payload)


def udp(dport: int, payload: bytes) -> Any:
    return UDP(sport=53001, dport=dport) / Raw(payload)


def tunnel_packets() -> list[bytes]:
    return [
        _frozen(v4(tcp(3389, _pl(48, "a")), tos=0x8A)),
        _frozen(v4(udp(53, _pl(29, "d")), tos=0x01, ident=0x2A2A)),
        _frozen(v6(tcp(443, _pl(40, "c")), tc=0xB8)),
        _frozen(v4(ICMP(type=8, code=0, id=0x4D2, seq=7) / Raw(_pl(56, "e")))),
        _frozen(v4(tcp(445, _pl(1360, "f")))),
        _frozen(v6(ICMPv6EchoRequest(id=0x4D2, seq=9, data=_pl(32, "g")))),
    ]


def transport4_packets() -> list[bytes]:
    return [
        _frozen(v4(tcp(445, _pl(37, "n")))),
        _frozen(v4(udp(53, _pl(19, "q")), ident=0x2A2A)),
        _frozen(v4(ICMP(type=8, code=0, id=0x4D2, seq=7) / Raw(_pl(56, "r")))),
        _frozen(v4(tcp(443, _pl(1360, "s")))),
    ]


def transport6_packets() -> list[bytes]:
    hbh = IPv6ExtHdrHopByHop()
    return [
        _frozen(v6(tcp(443, _pl(17, "t")))),
        _frozen(v6(tcp(135, _pl(33, "u")), ext=(hbh,))),
        _frozen(v6(udp(53, _pl(21, "v")), ext=(hbh, IPv6ExtHdrDestOpt()))),
        _frozen(v6(ICMPv6EchoRequest(id=0x4D2, seq=9, data=_pl(24, "x")))),
    ]


@dataclass(frozen=True)
class Scenario:
    tag: str
    mode: str  # "tunnel" | "transport"
    outer: Optional[int]  # tunnel: outer family
    packets: Callable[[], list[bytes]]
    start: int = 0  # last sequence number used before the first packet
    esn: bool = False
    nat_t: bool = False


SCENARIOS = [
    Scenario("tunnel-outer4", "tunnel", 4, tunnel_packets),
    Scenario("tunnel-outer6", "tunnel", 6, tunnel_packets),
    Scenario("transport-v4", "transport", None, transport4_packets),
    Scenario("transport-v6", "transport", None, transport6_packets),
    Scenario("esn-tunnel", "tunnel", 4, tunnel_packets, start=ESN_START, esn=True),
    Scenario("esn-transport-v6", "transport", None, transport6_packets, start=ESN_START,
             esn=True),
    Scenario("natt-tunnel", "tunnel", 4, tunnel_packets, nat_t=True),
    Scenario("natt-transport-v4", "transport", None, transport4_packets, nat_t=True),
]
SCENARIO_IDS = [s.tag for s in SCENARIOS]


def tos_of(pkt: bytes) -> int:
    if pkt[0] >> 4 == 4:
        return pkt[1]
    return ((pkt[0] & 0x0F) << 4) | (pkt[1] >> 4)


def rfc6040_outer_tos(inner: int) -> int:
    ecn = inner & 3
    return (inner & 0xFC) | (2 if ecn == 3 else ecn)


def scapy_sa(cipher: str, integ: Optional[str], spi: int, sc: Scenario, tos: int = 0,
             ident: int = 0, df: bool = False) -> Any:
    kwargs: dict[str, Any] = dict(spi=spi, seq_num=1, crypt_algo=SCAPY_CIPHER[cipher],
                                  crypt_key=key_for(cipher) or None, esn_en=sc.esn, esn=0)
    if integ:
        kwargs["auth_algo"] = SCAPY_INTEGRITY[integ]
        kwargs["auth_key"] = integrity_key_for(integ)
    if sc.mode == "tunnel":
        if sc.outer == 4:
            kwargs["tunnel_header"] = IP(version=4, ihl=5, tos=tos, id=ident,
                                         flags="DF" if df else 0, frag=0, ttl=64,
                                         src=T4_SRC, dst=T4_DST)
        else:
            kwargs["tunnel_header"] = IPv6(version=6, tc=tos, fl=0, hlim=64, src=T6_SRC,
                                           dst=T6_DST)
    if sc.nat_t:
        kwargs["nat_t_header"] = UDP(sport=4500, dport=4500)
    return ScapySA(ESP, **kwargs)


def parse_ip(data: bytes) -> Any:
    return IP(data) if data[0] >> 4 == 4 else IPv6(data)


def our_sa(cipher: str, integ: Optional[str], spi: int, sc: Scenario, direction: str,
           padding: str = "blocks") -> ipsec.SecurityAssociation:
    tunnel: tuple[Optional[str], Optional[str]] = (None, None)
    if sc.mode == "tunnel" and direction == "outbound":
        tunnel = (T4_SRC, T4_DST) if sc.outer == 4 else (T6_SRC, T6_DST)
    return ipsec.SecurityAssociation(
        spi=spi, direction=direction, mode=sc.mode, cipher=cipher, key=key_for(cipher),
        integrity=integ, integrity_key=integrity_key_for(integ), esn=sc.esn, seq=sc.start,
        tunnel_src=tunnel[0], tunnel_dst=tunnel[1],
        udp_encap=(4500, 4500) if sc.nat_t else None, padding=padding)


def esp_offset(protected: bytes) -> int:
    pkt = parse_ip(protected)
    assert pkt.haslayer(ESP), "no ESP layer"
    return len(protected) - len(raw(pkt[ESP]))


@pytest.mark.parametrize("sc", SCENARIOS, ids=SCENARIO_IDS)
@pytest.mark.parametrize("cipher,integ", PAIRS, ids=PAIR_IDS)
def test_we_encrypt_scapy_decrypts(cipher: str, integ: Optional[str], sc: Scenario) -> None:
    spi = 0x20000 + PAIRS.index((cipher, integ)) * 16 + SCENARIOS.index(sc)
    plain = sc.packets()
    ours = our_sa(cipher, integ, spi, sc, "outbound")
    # Half one by one, half as a batch (the GIL-free path).
    half = len(plain) // 2
    protected = [ours.encrypt(p) for p in plain[:half]] + ours.encrypt_many(plain[half:])
    assert ours.stats["packets"] == len(plain) and ours.seq == sc.start + len(plain)
    theirs = scapy_sa(cipher, integ, spi, sc)
    for i, (pt, ct) in enumerate(zip(plain, protected)):
        seq = sc.start + 1 + i
        off = esp_offset(ct)
        assert struct.unpack("!II", ct[off:off + 8]) == (spi, seq & 0xFFFFFFFF)
        if sc.nat_t:
            assert ct[off - 8:off - 4] == struct.pack("!HH", 4500, 4500)
        if cipher in COUNTER_IV:
            assert ct[off + 8:off + 16] == struct.pack("!Q", seq), "AEAD IV = 64-bit seq"
        theirs.esn = seq >> 32
        got = bytes(raw(theirs.decrypt(parse_ip(ct))))
        assert got == pt, "packet #%d (seq %d): scapy's decryption differs" % (i, seq)


@pytest.mark.parametrize("sc", SCENARIOS, ids=SCENARIO_IDS)
@pytest.mark.parametrize("cipher,integ", PAIRS, ids=PAIR_IDS)
def test_scapy_encrypts_we_decrypt(cipher: str, integ: Optional[str], sc: Scenario) -> None:
    spi = 0x30000 + PAIRS.index((cipher, integ)) * 16 + SCENARIOS.index(sc)
    plain = sc.packets()
    protected = []
    for i, pkt in enumerate(plain):
        seq = sc.start + 1 + i
        tos = rfc6040_outer_tos(tos_of(pkt)) if sc.mode == "tunnel" else 0
        theirs = scapy_sa(cipher, integ, spi, sc, tos=tos)
        theirs.seq_num = seq & 0xFFFFFFFF
        theirs.esn = seq >> 32
        # AEAD: alternately the counter IV and scapy's random IV (both valid).
        iv = struct.pack("!Q", seq) if cipher in COUNTER_IV and i % 2 == 0 else None
        protected.append(bytes(raw(theirs.encrypt(parse_ip(pkt), iv=iv))))
    ours = our_sa(cipher, integ, spi, sc, "inbound")
    half = len(plain) // 2
    got = [ours.decrypt(p) for p in protected[:half]] + ours.decrypt_many(protected[half:])
    assert got == plain
    assert ours.stats["packets"] == len(plain) and ours.seq == sc.start + len(plain)


# Not transport-v6: with a Destination Options header our contract puts ESP before it
# (RFC 4303 3.1.1: it may be meant for the final destination), scapy after it.
@pytest.mark.parametrize("sc", [s for s in SCENARIOS if not s.esn and s.tag != "transport-v6"],
                         ids=lambda s: s.tag)
@pytest.mark.parametrize("cipher,integ", [p for p in PAIRS if p[0] in COUNTER_IV or p[0] == "null"],
                         ids=lambda p: str(p))
def test_byte_exact_with_minimal_padding(cipher: str, integ: Optional[str], sc: Scenario) -> None:
    """With `padding="minimal"` (scapy's) and deterministic IVs (AEAD counter IV, NULL has
    none), our packets equal scapy's byte for byte."""
    spi = 0x50000 + PAIRS.index((cipher, integ)) * 16 + SCENARIOS.index(sc)
    plain = [p for p in sc.packets() if tos_of(p) == 0]  # scapy copies no DSCP/ECN
    ours = our_sa(cipher, integ, spi, sc, "outbound", padding="minimal")
    mine = ours.encrypt_many(plain)
    first_id = IP(mine[0]).id if sc.mode == "tunnel" and sc.outer == 4 else 0
    for i, (pt, ct) in enumerate(zip(plain, mine)):
        seq = i + 1
        # Outer IPv4: our Identification counts up from a random start (RFC 6864), and
        # DF is copied from the inner header, set for an inner IPv6 packet (RFC 4301
        # 8.1, the default policy); scapy's template is given the same.
        inner_df = pt[0] >> 4 == 6 or bool(pt[6] & 0x40)
        theirs = scapy_sa(cipher, integ, spi, sc, ident=(first_id + i) & 0xFFFF, df=inner_df)
        theirs.seq_num = seq
        iv = struct.pack("!Q", seq) if cipher in COUNTER_IV else None
        want = bytes(raw(theirs.encrypt(parse_ip(pt), iv=iv)))
        assert ct == want, "packet #%d differs from scapy's:\n ours   %s\n scapy  %s" % (
            i, ct.hex(), want.hex())
