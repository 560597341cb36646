"""``ipsec.PacketBatch`` with ``encrypt_batch`` / ``decrypt_batch`` of SAs and lanes:
the packets a batch encryption writes are ESP that scapy (an implementation we did not
write) decrypts to the inputs, scapy's ESP decrypts back through a batch, refused
packets are dropped with their exception and counted by the SA, and two threads on two
SAs with a batch each get every packet right.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, UDP
from scapy.layers.ipsec import ESP
from scapy.layers.ipsec import SecurityAssociation as ScapySA

import ipsec

KEY = bytes(range(1, 21))  # AES-128 key || 4-byte salt
SRC, DST = "192.0.2.1", "192.0.2.2"


def inner(n: int, size: int = 64) -> bytes:
    """Inner IPv4/UDP packet `n`, `size` bytes, checksums filled in by scapy."""
    pad = bytes((n + i) & 0xFF for i in range(size - 28))
    return bytes(raw(IP(src="10.0.0.1", dst="10.1.0.1", id=n) / UDP(sport=4000, dport=5000) / pad))


def outbound(spi: int = 0x5000, key: bytes = KEY) -> ipsec.SecurityAssociation:
    return ipsec.SecurityAssociation(spi=spi, direction="outbound", mode="tunnel",
                                     cipher="aes-128-gcm", key=key, tunnel_src=SRC,
                                     tunnel_dst=DST)


def inbound(spi: int = 0x5000, key: bytes = KEY) -> ipsec.SecurityAssociation:
    return ipsec.SecurityAssociation(spi=spi, direction="inbound", mode="tunnel",
                                     cipher="aes-128-gcm", key=key)


def scapy_sa(spi: int = 0x5000) -> Any:
    return ScapySA(ESP, spi=spi, crypt_algo="AES-GCM", crypt_key=KEY,
                   tunnel_header=IP(src=SRC, dst=DST, ttl=64))


def test_a_batch_encryption_is_esp_scapy_decrypts() -> None:
    packets = [inner(n, size) for n, size in enumerate([40, 64, 300, 1420] * 5)]
    batch = ipsec.PacketBatch(packets)
    assert len(batch) == 20 and batch.dropped == 0
    out = outbound()
    assert out.encrypt_batch(batch, now=1.0) == 20
    theirs = scapy_sa()
    for n, wire in enumerate(batch.results()):
        assert isinstance(wire, bytes)
        esp = IP(wire)
        assert esp[ESP].spi == 0x5000 and esp[ESP].seq == n + 1
        assert bytes(raw(theirs.decrypt(esp))) == packets[n]
    assert out.stats["packets"] == 20
    # The same batch, decrypted in place by the inbound SA: the inputs again.
    assert inbound().decrypt_batch(batch) == 20
    assert batch.results() == packets
    assert batch[0] == packets[0] and batch[-1] == packets[-1]


def test_scapy_esp_decrypts_through_a_batch_and_refused_packets_are_dropped() -> None:
    theirs = scapy_sa()
    packets = [inner(n) for n in range(8)]
    wires = []
    for n, p in enumerate(packets):
        theirs.seq_num = n + 1
        wires.append(bytes(raw(theirs.encrypt(IP(p)))))
    tampered = bytearray(wires[3])
    tampered[-1] ^= 0x01  # the ICV
    wires[3] = bytes(tampered)
    wires.append(wires[5])  # a replay
    ours = inbound()
    batch = ipsec.PacketBatch()
    batch.load(wires)
    assert ours.decrypt_batch(batch) == 7
    results = batch.results()
    assert isinstance(results[3], ipsec.AuthenticationError)
    assert isinstance(results[8], ipsec.ReplayError)
    assert [r for i, r in enumerate(results) if i not in (3, 8)] == packets[:3] + packets[4:]
    assert batch.dropped == 2
    with pytest.raises(ipsec.AuthenticationError):
        batch[3]
    stats = ours.stats
    assert stats["packets"] == 7 and stats["auth_failed"] == 1 and stats["replay"] == 1
    # Dropped packets stay dropped: a second pass finds only already-seen packets.
    assert ours.decrypt_batch(batch) == 0
    assert batch.dropped == 9


CBC_KEY, HMAC_KEY = bytes(range(16)), bytes(range(100, 132))


def cbc_sa(direction: str, replay_window: int = 64) -> ipsec.SecurityAssociation:
    """AES-128-CBC + HMAC-SHA-256-128 (the suite whose SA bursts interleave packets)."""
    out = direction == "outbound"
    return ipsec.SecurityAssociation(spi=0x5300, direction=direction, mode="tunnel",
                                     cipher="aes-128-cbc", key=CBC_KEY,
                                     integrity="hmac-sha256-128", integrity_key=HMAC_KEY,
                                     replay_window=replay_window,
                                     tunnel_src=SRC if out else None,
                                     tunnel_dst=DST if out else None)


def scapy_cbc_sa() -> Any:
    return ScapySA(ESP, spi=0x5300, crypt_algo="AES-CBC", crypt_key=CBC_KEY,
                   auth_algo="SHA2-256-128", auth_key=HMAC_KEY,
                   tunnel_header=IP(src=SRC, dst=DST, ttl=64))


def test_cbc_batches_are_esp_scapy_decrypts_and_equal_one_packet_at_a_time() -> None:
    # 40 packets (more than one burst chunk), sizes around the block boundaries.
    packets = [inner(n, 40 + (n * 37) % 600) for n in range(40)]
    theirs = scapy_cbc_sa()
    # encrypt_many and encrypt_batch: ESP that scapy decrypts to the inputs.
    many = cbc_sa("outbound").encrypt_many(packets)
    batch = ipsec.PacketBatch(packets)
    assert cbc_sa("outbound").encrypt_batch(batch) == 40
    for wires in (many, batch.results()):
        for n, wire in enumerate(wires):
            assert isinstance(wire, bytes)
            esp = IP(wire)
            assert esp[ESP].seq == n + 1
            assert bytes(raw(theirs.decrypt(esp))) == packets[n]
    # Tampered, replayed, reordered and truncated packets among good ones: a
    # batch answers as one packet at a time does, packet by packet and in the counters.
    wires = list(many)
    wires[3] = wires[3][:-1] + bytes([wires[3][-1] ^ 1])  # the ICV
    wires[9] = wires[9][:40] + bytes([wires[9][40] ^ 1]) + wires[9][41:]  # ciphertext
    wires[20] = wires[20][:-1]  # not whole blocks
    wires += [wires[5], wires[30], wires[2]]  # replays: 6 and 3 below the window by then
    wires[10], wires[35] = wires[35], wires[10]  # 35 arrives early: 10 stays in window
    one_sa, burst_sa = cbc_sa("inbound", 32), cbc_sa("inbound", 32)
    one_by_one: list[Any] = []
    for w in wires:
        try:
            one_by_one.append(one_sa.decrypt(w))
        except ipsec.IpsecError as e:
            one_by_one.append(e)
    burst = burst_sa.decrypt_many(wires)
    assert [r if isinstance(r, bytes) else type(r) for r in burst] == [
        r if isinstance(r, bytes) else type(r) for r in one_by_one]
    assert burst_sa.stats == one_sa.stats
    stats = burst_sa.stats
    assert (stats["auth_failed"], stats["malformed"], stats["replay"], stats["too_old"],
            stats["packets"]) == (2, 1, 1, 2, 37)
    # The same packets through a batch of a third SA: the same answers.
    batch_sa = cbc_sa("inbound", 32)
    batch = ipsec.PacketBatch(wires)
    assert batch_sa.decrypt_batch(batch) == 37
    assert [r if isinstance(r, bytes) else type(r) for r in batch.results()] == [
        r if isinstance(r, bytes) else type(r) for r in one_by_one]
    assert batch_sa.stats == one_sa.stats


def test_lanes_of_a_shared_sa_take_batches() -> None:
    shared = ipsec.SharedSa(spi=0x5100, direction="outbound", mode="tunnel",
                            cipher="aes-128-gcm", key=KEY, tunnel_src=SRC, tunnel_dst=DST,
                            lanes=2)
    lanes = shared.lanes
    packets = [inner(n) for n in range(10)]
    batches = [ipsec.PacketBatch(packets), ipsec.PacketBatch(packets)]
    assert lanes[0].encrypt_batch(batches[0]) == 10
    assert lanes[1].encrypt_batch(batches[1]) == 10
    theirs = scapy_sa(0x5100)
    seqs = set()
    for batch in batches:
        for n, wire in enumerate(batch.results()):
            esp = IP(wire)
            seqs.add(esp[ESP].seq)
            assert bytes(raw(theirs.decrypt(esp))) == packets[n]
    assert len(seqs) == 20, "no sequence number used twice"


def test_two_threads_two_sas_two_batches() -> None:
    pairs = [(outbound(0x5200 + i, bytes([i + 1]) * 20), inbound(0x5200 + i, bytes([i + 1]) * 20))
             for i in range(2)]
    packets = [[inner(100 * i + n, 200) for n in range(200)] for i in range(2)]
    failures: list[str] = []

    def work(i: int) -> None:
        out, inb = pairs[i]
        batch = ipsec.PacketBatch()
        for _ in range(20):
            batch.load(packets[i])
            if out.encrypt_batch(batch) != 200 or inb.decrypt_batch(batch) != 200:
                failures.append(f"thread {i}: dropped {batch.dropped}")
            elif batch.results() != packets[i]:
                failures.append(f"thread {i}: wrong packets")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert [inb.stats["packets"] for _, inb in pairs] == [4000, 4000]


def test_bad_arguments_are_typed_errors() -> None:
    with pytest.raises(TypeError, match="packets"):
        ipsec.PacketBatch([b"ok", 3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="PacketBatch"):
        outbound().encrypt_batch([b"not a batch"])  # type: ignore[arg-type]
    batch = ipsec.PacketBatch([inner(0)])
    with pytest.raises(IndexError, match="out of range"):
        batch[1]
    with pytest.raises(IndexError):
        batch[-2]
    with pytest.raises(ValueError):
        outbound().encrypt_batch(batch, now=-1.0)
    assert batch.results() == [inner(0)], "a refused call leaves the batch as it was"
    # An inbound SA refuses to encrypt: every packet dropped with that error.
    assert inbound().encrypt_batch(batch) == 0
    assert isinstance(batch.results()[0], ipsec.IpsecError)
    assert "1 packets, 1 dropped" in repr(batch)
