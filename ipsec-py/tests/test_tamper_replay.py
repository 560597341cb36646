"""Tampering, truncation, wrong SPI and replay: each raises its exception class and bumps
exactly its drop counter; the genuine packet is still accepted afterwards."""

from __future__ import annotations

import struct
from typing import Optional

import pytest

import ipsec
from helpers import PAIR_IDS, PAIRS, checksum, sa_pair, udp4

COUNTERS = ["auth_failed", "replay", "too_old", "malformed", "bad_padding", "bad_next_header",
            "unknown_spi", "policy_mismatch", "lifetime_expired", "sequence_overflow", "dummy",
            "no_buffer_space", "policy_discard", "nat_keepalive", "ecn_ce_not_ect",
            "wrong_direction", "too_big", "fragment_timeout", "fragment_overlap",
            "fragment_duplicate", "fragment_limit", "fragment_invalid", "fragment_too_short",
            "fragment_unresolved"]


def drops(sa: ipsec.SecurityAssociation) -> dict[str, int]:
    s = sa.stats
    return {k: s[k] for k in COUNTERS}


def bumped(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in COUNTERS if after[k] != before[k]}


def reframe(pkt: bytes, length: int) -> bytes:
    """The IPv4 packet cut to `length` bytes with its length and checksum fixed."""
    hdr = bytearray(pkt[:20])
    hdr[2:4] = struct.pack("!H", length)
    hdr[10:12] = b"\0\0"
    hdr[10:12] = struct.pack("!H", checksum(bytes(hdr)))
    return bytes(hdr) + pkt[20:length]


@pytest.mark.parametrize("cipher,integ", PAIRS, ids=PAIR_IDS)
def test_every_flipped_esp_byte_fails_authentication(cipher: str, integ: Optional[str]) -> None:
    out, inb = sa_pair(cipher, integ, replay_window=1024)
    for _ in range(4):
        out.encrypt(udp4(0))  # the packet under test has sequence number 5
    pkt = out.encrypt(udp4(5, size=64))
    esp = 20
    for i in range(esp + 4, len(pkt)):  # sequence number, IV, payload, trailer, ICV
        bad = pkt[:i] + bytes([pkt[i] ^ 0xFF]) + pkt[i + 1:]
        before = drops(inb)
        with pytest.raises(ipsec.AuthenticationError) as e:
            inb.decrypt(bad)
        assert e.value.reason == "auth_failed", i
        assert bumped(before, drops(inb)) == {"auth_failed": 1}, i
    assert inb.decrypt(pkt) == udp4(5, size=64)
    assert inb.stats["packets"] == 1


def test_flipped_outer_header_bytes_are_malformed() -> None:
    out, inb = sa_pair()
    pkt = out.encrypt(udp4(1))
    for i in range(20):
        bad = pkt[:i] + bytes([pkt[i] ^ 0xFF]) + pkt[i + 1:]
        before = drops(inb)
        with pytest.raises(ipsec.MalformedPacketError):
            inb.decrypt(bad)
        assert bumped(before, drops(inb)) == {"malformed": 1}, i
    assert inb.decrypt(pkt) == udp4(1)


def test_truncation_is_malformed() -> None:
    out, inb = sa_pair("aes-128-cbc", "hmac-sha256-128")
    pkt = out.encrypt(udp4(1))
    for n in range(len(pkt)):
        # cut as is (lengths disagree) ...
        with pytest.raises(ipsec.MalformedPacketError):
            inb.decrypt(pkt[:n])
    for n in range(20, 20 + 8 + 16 + 16):
        # ... and re-framed with correct IP lengths, too short for ESP + IV + ICV
        with pytest.raises(ipsec.MalformedPacketError, match="truncated|multiple"):
            inb.decrypt(reframe(pkt, n))
    assert inb.stats["malformed"] == len(pkt) + 40 and inb.stats["auth_failed"] == 0
    assert inb.decrypt(pkt) == udp4(1)


def test_wrong_spi_is_unknown_spi() -> None:
    out, inb = sa_pair(spi=0x1000)
    other, _ = sa_pair(spi=0x1001)
    with pytest.raises(ipsec.UnknownSpiError, match="0x00001001") as e:
        inb.decrypt(other.encrypt(udp4(1)))
    assert e.value.reason == "unknown_spi"
    assert drops(inb)["unknown_spi"] == 1
    res = inb.decrypt_many([other.encrypt(udp4(2)), out.encrypt(udp4(3))])
    assert isinstance(res[0], ipsec.UnknownSpiError) and res[1] == udp4(3)
    assert drops(inb)["unknown_spi"] == 2


def test_replay_and_too_old() -> None:
    out, inb = sa_pair(replay_window=32)
    pkts = out.encrypt_many([udp4(i) for i in range(1, 41)])  # seq 1..40
    assert inb.decrypt(pkts[0]) == udp4(1)
    with pytest.raises(ipsec.ReplayError, match="replayed") as e:
        inb.decrypt(pkts[0])
    assert e.value.reason == "replay"
    assert inb.decrypt(pkts[39]) == udp4(40)  # highest is now 40: seq <= 8 is too old
    with pytest.raises(ipsec.ReplayError, match="below the replay window") as e:
        inb.decrypt(pkts[7])
    assert e.value.reason == "too_old"
    assert inb.decrypt(pkts[8]) == udp4(9)  # seq 9 is the window's bottom
    res = inb.decrypt_many([pkts[8], pkts[20], pkts[20], pkts[1]])
    assert isinstance(res[0], ipsec.ReplayError) and res[0].reason == "replay"
    assert res[1] == udp4(21)
    assert isinstance(res[2], ipsec.ReplayError) and res[2].reason == "replay"
    assert isinstance(res[3], ipsec.ReplayError) and res[3].reason == "too_old"
    d = drops(inb)
    assert (d["replay"], d["too_old"]) == (3, 2)
    assert inb.stats["packets"] == 4


def test_replay_is_checked_before_authentication() -> None:
    """A replayed sequence number with a forged ICV is refused as a replay (no crypto)."""
    out, inb = sa_pair()
    pkt = out.encrypt(udp4(1))
    inb.decrypt(pkt)
    forged = pkt[:-1] + bytes([pkt[-1] ^ 1])
    with pytest.raises(ipsec.ReplayError):
        inb.decrypt(forged)
    assert drops(inb)["auth_failed"] == 0


def test_window_only_moves_after_authentication() -> None:
    out, inb = sa_pair(replay_window=32)
    pkts = out.encrypt_many([udp4(i) for i in range(1, 101)])
    forged = pkts[99][:-1] + bytes([pkts[99][-1] ^ 1])  # seq 100, bad ICV
    with pytest.raises(ipsec.AuthenticationError):
        inb.decrypt(forged)
    assert inb.seq == 0
    assert inb.decrypt(pkts[0]) == udp4(1)  # not pushed out of the window by the forgery


def test_replay_window_zero_turns_protection_off() -> None:
    out, inb = sa_pair(replay_window=0)
    pkt = out.encrypt(udp4(1))
    assert [inb.decrypt(pkt) for _ in range(3)] == [udp4(1)] * 3
