"""One outbound and one inbound SA hammered from 8 threads at once (encrypt,
encrypt_many, decrypt, decrypt_many and stats mixed): the SA serializes the calls, the
GIL is released by the batch calls, and nothing is lost, duplicated or miscounted.

The expectation is exact: the inbound window (8192) is wider than the number of packets
(4000), so however the threads reorder them no genuine packet can be too old; each one
must decrypt exactly once, and each deliberately re-sent copy must be refused as a replay.
"""

from __future__ import annotations

import queue
import sys
import time
import random
import threading
from collections import Counter
from typing import Optional, Union

import ipsec
from helpers import esp_seq, sa_pair, udp4

PRODUCERS = 4
CONSUMERS = 4
PER_PRODUCER = 1000
TOTAL = PRODUCERS * PER_PRODUCER


def test_eight_threads_share_two_sas() -> None:
    out, inb = sa_pair(replay_window=8192)
    wire: queue.Queue[Optional[bytes]] = queue.Queue()
    sent: list[bytes] = []
    protected_all: list[bytes] = []
    decrypted: list[bytes] = []
    replays_sent = [0] * CONSUMERS
    replays_seen = [0] * CONSUMERS
    unexpected: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(PRODUCERS + CONSUMERS)

    def producer(k: int) -> None:
        rng = random.Random(k)
        plain = [udp4(k * PER_PRODUCER + i, size=64 + (i % 200)) for i in range(PER_PRODUCER)]
        with lock:
            sent.extend(plain)
        start.wait()
        i = 0
        while i < len(plain):
            n = rng.choice([1, 1, 2, 7, 16, 32])
            chunk = plain[i:i + n]
            if len(chunk) == 1 and rng.random() < 0.8:
                res = [out.encrypt(chunk[0])]
            else:
                res = out.encrypt_many(chunk)
            with lock:
                protected_all.extend(res)
            for c in res:
                wire.put(c)
            if rng.random() < 0.1:
                assert out.stats["packets"] <= TOTAL
            i += len(chunk)

    def consumer(k: int) -> None:
        rng = random.Random(100 + k)
        mine: list[bytes] = []
        done: list[bytes] = []
        start.wait()
        finished = False
        while not finished:
            batch: list[bytes] = []
            want = rng.choice([1, 1, 4, 16, 32])
            while len(batch) < want:
                item = wire.get()
                if item is None:
                    finished = True
                    break
                batch.append(item)
            dup = None
            if done and rng.random() < 0.2:
                dup = rng.choice(done)
                batch.insert(rng.randrange(len(batch) + 1), dup)
                replays_sent[k] += 1
            results: list[Union[bytes, ipsec.IpsecError]]
            if len(batch) == 1 and rng.random() < 0.7:
                try:
                    results = [inb.decrypt(batch[0])]
                except ipsec.IpsecError as e:
                    results = [e]
            else:
                results = inb.decrypt_many(batch)
            for ct, r in zip(batch, results):
                if isinstance(r, ipsec.ReplayError) and ct is dup and r.reason == "replay":
                    replays_seen[k] += 1
                elif isinstance(r, bytes) and ct is not dup:
                    mine.append(r)
                    done.append(ct)
                else:
                    with lock:
                        unexpected.append("seq %d: %r" % (esp_seq(ct), r))
            if rng.random() < 0.1:
                s = inb.stats
                assert s["packets"] <= TOTAL and s["auth_failed"] == 0
        with lock:
            decrypted.extend(mine)

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(PRODUCERS)]
    threads += [threading.Thread(target=consumer, args=(k,)) for k in range(CONSUMERS)]
    for t in threads:
        t.start()
    for t in threads[:PRODUCERS]:
        t.join(timeout=120)
    for _ in range(CONSUMERS):
        wire.put(None)
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a thread is stuck (deadlock?)"

    assert unexpected == []
    # Outbound: every packet got its own sequence number, 1..TOTAL, none skipped.
    assert sorted(esp_seq(c) for c in protected_all) == list(range(1, TOTAL + 1))
    s_out = out.stats
    assert s_out["packets"] == TOTAL and s_out["bytes"] == sum(map(len, sent))
    assert out.seq == TOTAL
    # Inbound: every packet decrypted exactly once; every re-sent copy was a replay.
    assert Counter(decrypted) == Counter(sent)
    assert replays_seen == replays_sent and sum(replays_sent) > 0
    s_in = inb.stats
    assert s_in["packets"] == TOTAL and s_in["bytes"] == s_out["bytes"]
    assert s_in["replay"] == sum(replays_sent)
    assert sum(v for k, v in s_in.items() if k not in ("packets", "bytes", "replay")) == 0
    assert inb.seq == TOTAL


def test_batches_release_the_gil() -> None:
    """With a 10 s switch interval the interpreter never takes the GIL away from a thread
    by itself: the main thread can only run while the worker is inside a batch if the
    batch released the GIL. The worker repeats its batch (up to 50 times) until the main
    thread has run, so that a loaded machine that schedules the main thread late cannot
    make the test fail; without the release the main thread never runs in time."""
    out, inb = sa_pair(replay_window=0)
    batch = [udp4(i, size=512) for i in range(20000)]
    protected = out.encrypt_many(batch[:100])
    old = sys.getswitchinterval()
    ran_during: list[int] = []
    for call in ("encrypt_many", "decrypt_many"):
        started = threading.Event()
        main_ran = threading.Event()

        def worker(call: str = call) -> None:
            started.set()
            for _ in range(50):
                if call == "encrypt_many":
                    out.encrypt_many(batch)
                else:
                    inb.decrypt_many(protected * 200)
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
