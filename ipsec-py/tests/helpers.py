"""Shared helpers of the ipsec package tests: keys, SA factories, packet builders.

Plain Python (no scapy) so that every test file can use them; scapy appears only in
the interop tests.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from typing import Optional

import ipsec

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
EXAMPLES = os.path.join(REPO_ROOT, "examples")

# Our cipher names -> (key bytes including the 4-byte salt of GCM/GMAC/ChaCha, kind).
CIPHER_KEY_LEN = {
    "aes-128-gcm": 20,
    "aes-256-gcm": 36,
    "chacha20-poly1305": 36,
    "aes-128-gmac": 20,
    "aes-256-gmac": 36,
    "aes-128-cbc": 16,
    "aes-256-cbc": 32,
    "null": 0,
}
INTEGRITY_KEY_LEN = {
    "hmac-sha1-96": 20,
    "hmac-sha256-128": 32,
    "hmac-sha384-192": 48,
    "hmac-sha512-256": 64,
}
INTEGRITY_ICV_LEN = {
    "hmac-sha1-96": 12,
    "hmac-sha256-128": 16,
    "hmac-sha384-192": 24,
    "hmac-sha512-256": 32,
}
# The (cipher, integrity) pairs the library accepts: AEAD/GMAC alone, CBC and NULL with
# an HMAC (RFC 4303 forbids NULL with no integrity).
PAIRS: list[tuple[str, Optional[str]]] = [
    (c, None)
    for c in ("aes-128-gcm", "aes-256-gcm", "chacha20-poly1305", "aes-128-gmac", "aes-256-gmac")
] + [(c, i) for c in ("aes-128-cbc", "aes-256-cbc", "null") for i in INTEGRITY_KEY_LEN]
PAIR_IDS = [c if i is None else "%s+%s" % (c, i) for c, i in PAIRS]

T4_SRC, T4_DST = "192.0.2.1", "198.51.100.2"
T6_SRC, T6_DST = "2001:db8:ffff::1", "2001:db8:ffff::2"


def key_for(cipher: str, label: str = "k") -> bytes:
    """A deterministic key of the right length for `cipher`."""
    n = CIPHER_KEY_LEN[cipher]
    return bytes((i * 7 + len(label) * 13 + 1) & 0xFF for i in range(n))


def integrity_key_for(integrity: Optional[str]) -> bytes:
    if integrity is None:
        return b""
    return bytes((i * 11 + 5) & 0xFF for i in range(INTEGRITY_KEY_LEN[integrity]))


def sa_pair(
    cipher: str = "aes-128-gcm",
    integrity: Optional[str] = None,
    *,
    spi: int = 0x1000,
    mode: str = "tunnel",
    outer: int = 4,
    esn: bool = False,
    seq: int = 0,
    replay_window: int = 64,
    udp_encap: Optional[tuple[int, int]] = None,
    padding: str = "blocks",
) -> tuple[ipsec.SecurityAssociation, ipsec.SecurityAssociation]:
    """An outbound SA and its inbound peer."""
    key = key_for(cipher)
    ikey = integrity_key_for(integrity)
    tunnel: tuple[Optional[str], Optional[str]] = (None, None)
    if mode == "tunnel":
        tunnel = (T4_SRC, T4_DST) if outer == 4 else (T6_SRC, T6_DST)
    out = ipsec.SecurityAssociation(
        spi=spi, direction="outbound", mode=mode, cipher=cipher, key=key,
        integrity=integrity, integrity_key=ikey, esn=esn, seq=seq,
        tunnel_src=tunnel[0], tunnel_dst=tunnel[1], udp_encap=udp_encap,
        padding=padding,
    )
    inb = ipsec.SecurityAssociation(
        spi=spi, direction="inbound", mode=mode, cipher=cipher, key=key,
        integrity=integrity, integrity_key=ikey, esn=esn, seq=seq,
        replay_window=replay_window, udp_encap=udp_encap,
    )
    return out, inb


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = int(sum(struct.unpack("!%dH" % (len(data) // 2), data)))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, ident: int = 0, tos: int = 0,
         ttl: int = 64) -> bytes:
    """An IPv4 packet with a correct header checksum."""
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(payload), ident, 0, ttl, proto, 0,
                      ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return hdr + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes, *, hlim: int = 64) -> bytes:
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, hlim,
                      ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)
    return hdr + payload


def udp(sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP header with checksum 0 (allowed over IPv4) and the payload."""
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def tcp(sport: int, dport: int, payload: bytes) -> bytes:
    """A TCP header (no options, checksum left 0: the data plane does not check it)."""
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x18, 64240, 0, 0) + payload


def udp4(n: int, *, size: int = 100, src: str = "10.0.0.5", dst: str = "10.1.2.3") -> bytes:
    """IPv4/UDP packet number `n`, `size` bytes, its number in the payload."""
    body = struct.pack("!Q", n) + bytes((n + i) & 0xFF for i in range(size - 36))
    return ipv4(src, dst, 17, udp(40000 + (n % 1000), 53, body), ident=n & 0xFFFF)


def esp_seq(protected: bytes) -> int:
    """The 32-bit wire sequence number of an ESP packet in IPv4 (no UDP)."""
    ihl = (protected[0] & 0x0F) * 4
    return int(struct.unpack("!I", protected[ihl + 4:ihl + 8])[0])
