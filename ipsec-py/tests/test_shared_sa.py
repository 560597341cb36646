"""ipsec.SharedSa: one SA on several Python threads, each with its own ipsec.SaLane.

Outbound lanes lease sequence numbers in blocks from one counter: two threads sending
N packets each use exactly 1..2N (the block divides N), and an ordinary inbound SA
decrypts them all. Inbound lanes share one replay window: a packet handed to both lanes
is accepted by exactly one. Counters are per lane and summed by the SharedSa. scapy's
ESP decrypts what a lane sends. AES-CBC + HMAC batches of lanes (the SA's burst code)
give what one packet at a time gives. The lanes' batches release the GIL.
"""

from __future__ import annotations

import struct
import sys
import threading
import time
from collections import Counter
from typing import Any, Optional, Union

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, UDP
from scapy.layers.ipsec import ESP
from scapy.layers.ipsec import SecurityAssociation as ScapySA

import ipsec
from helpers import T4_DST, T4_SRC, esp_seq, integrity_key_for, key_for, udp4

SPI = 0x4242
N = 400  # packets per thread; a multiple of every block used below


def shared(direction: str, *, lanes: int = 2, block: int = 8, cipher: str = "aes-128-gcm",
           integrity: Optional[str] = None, **extra: Any) -> ipsec.SharedSa:
    kw: dict[str, Any] = dict(spi=SPI, direction=direction, mode="tunnel", cipher=cipher,
                              key=key_for(cipher), integrity=integrity,
                              integrity_key=integrity_key_for(integrity))
    if direction == "outbound":
        kw.update(tunnel_src=T4_SRC, tunnel_dst=T4_DST)
    kw.update(extra)
    return ipsec.SharedSa(lanes=lanes, block=block, **kw)


def plain_sa(direction: str, *, replay_window: int = 64, **extra: Any) -> ipsec.SecurityAssociation:
    kw: dict[str, Any] = dict(spi=SPI, direction=direction, mode="tunnel",
                              cipher="aes-128-gcm", key=key_for("aes-128-gcm"))
    if direction == "outbound":
        kw.update(tunnel_src=T4_SRC, tunnel_dst=T4_DST)
    else:
        kw.update(replay_window=replay_window)
    kw.update(extra)
    return ipsec.SecurityAssociation(**kw)


def run_threads(targets: list[Any]) -> None:
    threads = [threading.Thread(target=t) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a thread is stuck (deadlock?)"


def summed(dicts: list[dict[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for d in dicts:
        total.update(d)
    return dict(total)


def test_construction_and_properties() -> None:
    sa = shared("outbound", lanes=3, block=4, now=5.0)
    lanes = sa.lanes
    assert [lane.index for lane in lanes] == [0, 1, 2]
    assert all(lane.spi == SPI and lane.direction == "outbound" for lane in lanes)
    assert sa.lanes[1] is lanes[1], "the same lane objects every time"
    assert (sa.spi, sa.direction, sa.block, sa.seq) == (SPI, "outbound", 4, 0)
    assert set(sa.stats) == set(plain_sa("outbound").stats), "SecurityAssociation.stats' shape"
    assert sum(sa.stats.values()) == 0
    assert "lanes=3" in repr(sa) and "index=2" in repr(lanes[2])
    assert shared("outbound", lanes=1).block == 8, "default block"


@pytest.mark.parametrize("kwargs,field", [
    (dict(lanes=0), "lanes"),
    (dict(lanes=257), "lanes"),
    (dict(block=0), "block"),
    (dict(block=1025), "block"),
    (dict(spi=7), "spi"),
])
def test_bad_options_raise_config_error(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ipsec.ConfigError) as e:
        shared("outbound", **kwargs)
    assert e.value.field == field


def test_unknown_or_missing_keywords_raise_type_error() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        shared("outbound", colour="blue")
    with pytest.raises(TypeError, match="'key'"):
        ipsec.SharedSa(lanes=2, spi=SPI, direction="outbound", mode="tunnel",  # type: ignore[call-arg]
                       cipher="aes-128-gcm")


def test_two_threads_two_outbound_lanes_use_every_sequence_number_once() -> None:
    sa = shared("outbound", lanes=2, block=8)
    lanes = sa.lanes
    plain = [[udp4(k * N + i, size=60 + (i % 90)) for i in range(N)] for k in range(2)]
    sent: list[list[bytes]] = [[], []]
    start = threading.Barrier(2)

    def worker(k: int) -> None:
        lane = lanes[k]
        start.wait()
        i = 0
        while i < N:
            n = 1 if i % 3 == 0 else 13  # single calls and batches mixed
            chunk = plain[k][i:i + n]
            sent[k].extend([lane.encrypt(chunk[0])] if n == 1 else lane.encrypt_many(chunk))
            i += len(chunk)

    run_threads([lambda k=k: worker(k) for k in range(2)])

    seqs = [esp_seq(c) for k in range(2) for c in sent[k]]
    assert len(set(seqs)) == 2 * N, "a sequence number was used twice"
    assert sorted(seqs) == list(range(1, 2 * N + 1)), "a sequence number was skipped"
    for k in range(2):
        # Within a lane, numbers go up (blocks are used in order).
        assert [esp_seq(c) for c in sent[k]] == sorted(esp_seq(c) for c in sent[k])
    assert sa.seq == 2 * N

    # An ordinary inbound SA with a wide window takes them all, delivered in order.
    inbound = plain_sa("inbound", replay_window=4096)
    wire = sorted((c for k in range(2) for c in sent[k]), key=esp_seq)
    got = inbound.decrypt_many(wire)
    assert all(isinstance(g, bytes) for g in got)
    assert Counter(got) == Counter(plain[0] + plain[1])
    assert inbound.seq == 2 * N

    # Counters: each lane's own, summed by the SharedSa once published.
    for lane in lanes:
        lane.publish()
    lane_stats = [lane.stats for lane in lanes]
    assert [s["packets"] for s in lane_stats] == [N, N]
    assert sa.stats == summed(lane_stats)
    assert sa.stats["bytes"] == sum(map(len, plain[0] + plain[1])) == inbound.stats["bytes"]


def test_two_threads_two_inbound_lanes_accept_each_packet_once() -> None:
    out = plain_sa("outbound")
    plain = [udp4(i, size=64 + (i % 50)) for i in range(2 * N)]
    wire = out.encrypt_many(plain)
    sa = shared("inbound", lanes=2, replay_window=4096)
    lanes = sa.lanes
    results: list[list[Union[bytes, ipsec.IpsecError]]] = [[], []]
    start = threading.Barrier(2)

    def worker(k: int) -> None:
        lane = lanes[k]
        # Lane 0 from the front, lane 1 from the back: they meet in the middle, and
        # both see every packet.
        order = list(range(2 * N)) if k == 0 else list(range(2 * N - 1, -1, -1))
        res: dict[int, Union[bytes, ipsec.IpsecError]] = {}
        start.wait()
        for j in range(0, 2 * N, 16):
            idx = order[j:j + 16]
            if j % 64 == 0:
                for i in idx:
                    try:
                        res[i] = lane.decrypt(wire[i])
                    except ipsec.IpsecError as e:
                        res[i] = e
            else:
                for i, r in zip(idx, lane.decrypt_many([wire[i] for i in idx])):
                    res[i] = r
        results[k] = [res[i] for i in range(2 * N)]

    run_threads([lambda k=k: worker(k) for k in range(2)])

    accepted = 0
    for i in range(2 * N):
        r0, r1 = results[0][i], results[1][i]
        ok = [r for r in (r0, r1) if isinstance(r, bytes)]
        refused = [r for r in (r0, r1) if not isinstance(r, bytes)]
        assert len(ok) == 1, "packet %d accepted %d times" % (i, len(ok))
        assert ok[0] == plain[i]
        assert isinstance(refused[0], ipsec.ReplayError) and refused[0].reason == "replay"
        accepted += 1
    assert accepted == 2 * N
    assert sa.seq == 2 * N

    for lane in lanes:
        lane.publish()
    lane_stats = [lane.stats for lane in lanes]
    total = sa.stats
    assert total == summed(lane_stats)
    assert total["packets"] == 2 * N and total["replay"] == 2 * N
    assert total["bytes"] == sum(map(len, plain))
    assert sum(v for k, v in total.items() if k not in ("packets", "bytes", "replay")) == 0


def test_wrong_direction_on_a_lane() -> None:
    sa = shared("inbound", lanes=1)
    with pytest.raises(ipsec.WrongDirectionError):
        sa.lanes[0].encrypt(udp4(1))
    out = shared("outbound", lanes=1)
    with pytest.raises(ipsec.WrongDirectionError):
        out.lanes[0].decrypt(plain_sa("outbound").encrypt(udp4(1)))


def test_hard_packet_lifetime_is_exact_across_lanes() -> None:
    sa = shared("outbound", lanes=2, block=4, hard_lifetime=ipsec.Lifetime(packets=10))
    a, b = sa.lanes
    sent = a.encrypt_many([udp4(i) for i in range(4)]) + b.encrypt_many([udp4(i) for i in range(4)])
    sent.append(a.encrypt(udp4(8)))
    assert sorted(esp_seq(c) for c in sent) == list(range(1, 10))
    # Lane a's second block is 9..10 (cut at the limit): its next packet gets 10, the
    # one after it is refused (with its position in the batch).
    with pytest.raises(ipsec.LifetimeExpiredError) as e:
        a.encrypt_many([udp4(1), udp4(2), udp4(3)])
    assert e.value.index == 1
    with pytest.raises(ipsec.LifetimeExpiredError):
        b.encrypt(udp4(1))


def test_keepalives_come_from_lane_0_only() -> None:
    sa = shared("outbound", lanes=2, udp_encap=(4500, 4500), nat_keepalive_interval=5.0)
    a, b = sa.lanes
    a.encrypt(udp4(1), now=0.0)
    b.encrypt(udp4(2), now=0.0)
    ka = a.poll_keepalive(now=30.0)
    assert ka is not None and ka[-1] == 0xFF
    assert b.poll_keepalive(now=30.0) is None


def test_each_lane_raises_its_own_events() -> None:
    sa = shared("outbound", lanes=2, soft_lifetime=ipsec.Lifetime(seconds=10.0),
                soft_lifetime_jitter=0)
    a, b = sa.lanes
    assert a.poll_event(now=5.0) is None and b.poll_events(now=5.0) == []
    assert [(e.kind, e.limit) for e in a.poll_events(now=11.0)] == [("rekey", "time")]
    assert a.poll_event(now=12.0) is None, "reported once"
    event = b.poll_event(now=11.0)
    assert event is not None and (event.kind, event.limit) == ("rekey", "time")


# --- scapy interop -------------------------------------------------------------------

SCAPY_CIPHER = {"aes-128-gcm": "AES-GCM", "chacha20-poly1305": "CHACHA20-POLY1305",
                "aes-128-cbc": "AES-CBC"}
SCAPY_INTEGRITY = {"hmac-sha256-128": "SHA2-256-128"}


@pytest.mark.parametrize("cipher,integrity,esn,start", [
    ("aes-128-gcm", None, False, 0),
    ("aes-128-cbc", "hmac-sha256-128", False, 0),
    ("chacha20-poly1305", None, True, (1 << 32) - 5),
], ids=["gcm", "cbc-sha256", "chacha-esn"])
def test_scapy_decrypts_what_lanes_send(cipher: str, integrity: Optional[str], esn: bool,
                                        start: int) -> None:
    sa = shared("outbound", lanes=2, block=2, cipher=cipher, integrity=integrity, esn=esn,
                seq=start)
    a, b = sa.lanes
    plain = [bytes(raw(IP(src="10.0.0.5", dst="10.1.2.3", id=i, flags="DF") /
                       UDP(sport=5000 + i, dport=53) / (b"lane packet %d" % i)))
             for i in range(12)]
    # Interleaved: a, b, a, b, ... one by one and in batches.
    sent = [a.encrypt(plain[0]), b.encrypt(plain[1])]
    sent += a.encrypt_many(plain[2:5]) + b.encrypt_many(plain[5:8])
    sent += [b.encrypt(p) for p in plain[8:10]] + [a.encrypt(p) for p in plain[10:12]]
    kwargs: dict[str, Any] = dict(
        spi=SPI, crypt_algo=SCAPY_CIPHER[cipher], crypt_key=key_for(cipher), esn_en=esn,
        esn=0, tunnel_header=IP(src=T4_SRC, dst=T4_DST))
    if integrity:
        kwargs["auth_algo"] = SCAPY_INTEGRITY[integrity]
        kwargs["auth_key"] = integrity_key_for(integrity)
    theirs = ScapySA(ESP, **kwargs)
    seqs = []
    for pt, ct in zip(plain, sent):
        # The 64-bit number above `start` with these low 32 bits (ESN crosses 2^32 here).
        seq = (start >> 32 << 32) | esp_seq(ct)
        if seq <= start:
            seq += 1 << 32
        seqs.append(seq)
        assert struct.unpack("!I", ct[20:24])[0] == SPI
        if cipher != "aes-128-cbc":
            assert ct[28:36] == struct.pack("!Q", seq), "AEAD IV = 64-bit sequence number"
        theirs.esn = seq >> 32
        assert bytes(raw(theirs.decrypt(IP(ct)))) == pt
    assert sorted(seqs) == list(range(start + 1, start + 1 + len(plain)))


def outcomes(results: list[Any]) -> list[Any]:
    """Per packet: its ESP sequence number and length, or the exception's type."""
    return [(esp_seq(r), len(r)) if isinstance(r, bytes) else type(r) for r in results]


def test_cbc_lane_batches_equal_one_packet_at_a_time() -> None:
    """A lane's AES-CBC + HMAC batches go through the SA's burst code (its chains and
    hashes side by side), with the numbers of the lane's block: two lanes taking turns,
    blocks of 7, up to the hard packet lifetime, give the sequence numbers, refusals and
    counters of one packet at a time, and scapy decrypts what they send. Inbound, the
    lanes' batches answer tampered and replayed packets as single calls do."""
    cbc: dict[str, Any] = dict(cipher="aes-128-cbc", integrity="hmac-sha256-128", block=7)
    sizes = [13, 1, 9, 20, 5, 12, 8]
    plain = [udp4(i, size=40 + (i * 37) % 500) for i in range(sum(sizes))]

    def turns(sa: ipsec.SharedSa, batched: bool, packets: list[bytes], call: str) -> list[Any]:
        out: list[Any] = []
        at = 0
        for k, n in enumerate(sizes * 4):
            if at >= len(packets):
                break
            lane, part = sa.lanes[k % 2], packets[at:at + n]
            at += n
            if batched:
                batch = ipsec.PacketBatch(part)
                getattr(lane, f"{call}_batch")(batch)
                out += batch.results()
            else:
                for p in part:
                    try:
                        out.append(getattr(lane, call)(p))
                    except ipsec.IpsecError as e:
                        out.append(e)
        return out

    single = shared("outbound", hard_lifetime=ipsec.Lifetime(packets=60), **cbc)
    bursty = shared("outbound", hard_lifetime=ipsec.Lifetime(packets=60), **cbc)
    want = turns(single, False, plain, "encrypt")
    got = turns(bursty, True, plain, "encrypt")
    assert outcomes(got) == outcomes(want)
    assert any(isinstance(r, ipsec.LifetimeExpiredError) for r in got)
    assert [lane.stats for lane in bursty.lanes] == [lane.stats for lane in single.lanes]
    theirs = ScapySA(ESP, spi=SPI, crypt_algo="AES-CBC", crypt_key=key_for("aes-128-cbc"),
                     auth_algo="SHA2-256-128",
                     auth_key=integrity_key_for("hmac-sha256-128"),
                     tunnel_header=IP(src=T4_SRC, dst=T4_DST))
    sent = [(p, r) for p, r in zip(plain, got) if isinstance(r, bytes)]
    assert len({esp_seq(r) for _, r in sent}) == len(sent) > 40
    for p, r in sent:
        assert bytes(raw(theirs.decrypt(IP(r)))) == p
    # Inbound: a tampered copy ahead of every 9th packet, an old one replayed after
    # every 10th.
    wires: list[bytes] = []
    for i, (_, r) in enumerate(sent):
        if i % 9 == 0:
            wires.append(r[:-1] + bytes([r[-1] ^ 1]))
        wires.append(r)
        if i % 10 == 0:
            wires.append(sent[i // 2][1])
    single_in = shared("inbound", replay_window=64, **cbc)
    bursty_in = shared("inbound", replay_window=64, **cbc)
    want = turns(single_in, False, wires, "decrypt")
    got = turns(bursty_in, True, wires, "decrypt")
    assert [r if isinstance(r, bytes) else type(r) for r in got] == [
        r if isinstance(r, bytes) else type(r) for r in want]
    assert [r for r in got if isinstance(r, bytes)] == [p for p, _ in sent]
    assert any(isinstance(r, ipsec.AuthenticationError) for r in got)
    assert any(isinstance(r, ipsec.ReplayError) for r in got)
    assert [lane.stats for lane in bursty_in.lanes] == [lane.stats for lane in single_in.lanes]


# --- the GIL ---------------------------------------------------------------------------

def test_lane_batches_release_the_gil() -> None:
    """As test_threads.test_batches_release_the_gil, on lanes: with a 10 s switch
    interval the main thread runs while the worker is inside a lane's batch only if
    the batch released the GIL."""
    out = shared("outbound", lanes=2, block=64)
    inb = shared("inbound", lanes=2, replay_window=0)
    batch = [udp4(i, size=512) for i in range(20000)]
    protected = out.lanes[1].encrypt_many(batch[:100])
    old = sys.getswitchinterval()
    ran_during: list[int] = []
    for call in ("encrypt_many", "decrypt_many"):
        started = threading.Event()
        main_ran = threading.Event()

        def worker(call: str = call) -> None:
            started.set()
            for _ in range(50):
                if call == "encrypt_many":
                    out.lanes[0].encrypt_many(batch)
                else:
                    inb.lanes[0].decrypt_many(protected * 200)
                if main_ran.is_set():
                    break

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
        ran_during.append(count)
    assert all(c > 0 for c in ran_during), ran_during
