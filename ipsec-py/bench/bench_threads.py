#!/usr/bin/env python3
"""Python batch calls on two threads (issue 12, many cores): do they run in parallel?

``encrypt_many`` and ``decrypt_many`` release the GIL while the Rust code runs, so two
Python threads, each with its own SA (the one-SA-per-core model), should process about
twice the packets per second of one thread on a machine with two free cores. For each
inner packet size (64, 512, 1420 bytes; AES-128-GCM, tunnel mode) it times batches of
1,000 packets: one thread doing ``2 x rounds`` batches, then two threads doing ``rounds``
batches each at once, and prints ns per packet and the speed-up (one-thread time over
two-thread time for the same number of packets). A third column runs the two threads
on two lanes of one ``ipsec.SharedSa`` (one SA on several threads: sequence numbers
leased in blocks of 8 from one counter, one replay window behind a mutex) instead of
two SAs, and a fourth runs two worker gateways (``ipsec.Gateway`` each, holding its
lane of one SharedSa: ``Gateway.add_sa_lane``) with ``outbound_many`` /
``inbound_many``, against one thread on one such gateway. A fifth runs the two SAs
with ``ipsec.PacketBatch`` (``batch.load(packets)`` then ``encrypt_batch`` /
``decrypt_batch``: no Python object per packet; the results are not read back),
against one thread doing the same on one SA, and a sixth the two lanes of one
``SharedSa`` with batches, against the same one-thread figure. Each figure is the median of ``--runs`` runs; the machine may be shared, so
quote ``nproc``, ``uptime`` and the CPU model with it.

    .venv/bin/python ipsec-py/bench/bench_threads.py [--runs 7] [--rounds 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import ipsec

KEYS = [bytes([0x10 + i] * 20) for i in range(4)]


def udp4(size: int) -> bytes:
    """An IPv4/UDP packet of ``size`` bytes (the checksums do not matter here)."""
    header = bytearray(
        [0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 1, 0, 1]
    )
    header[2:4] = size.to_bytes(2, "big")
    udp = bytearray([0x13, 0x88, 0x13, 0x89, 0, 0, 0, 0])
    udp[4:6] = (size - 20).to_bytes(2, "big")
    return bytes(header + udp + bytes(i & 0xFF for i in range(size - 28)))


def pair(index: int) -> tuple[ipsec.SecurityAssociation, ipsec.SecurityAssociation]:
    """An outbound SA and its inbound mirror (replay window off, so that one batch of
    ciphertexts can be decrypted again and again)."""
    spi, key = 0x1000 + index, KEYS[index]
    out = ipsec.SecurityAssociation(
        spi=spi,
        direction="outbound",
        mode="tunnel",
        cipher="aes-128-gcm",
        key=key,
        tunnel_src="192.0.2.1",
        tunnel_dst="192.0.2.2",
    )
    inb = ipsec.SecurityAssociation(
        spi=spi, direction="inbound", mode="tunnel", cipher="aes-128-gcm", key=key, replay_window=0
    )
    return out, inb


def shared_lanes(index: int, lanes: int = 2) -> tuple[list[ipsec.SaLane], list[ipsec.SaLane]]:
    """Outbound and inbound lanes of one SA (as ``pair``, replay window off)."""
    spi, key = 0x1000 + index, KEYS[index]
    out = ipsec.SharedSa(
        lanes=lanes,
        spi=spi,
        direction="outbound",
        mode="tunnel",
        cipher="aes-128-gcm",
        key=key,
        tunnel_src="192.0.2.1",
        tunnel_dst="192.0.2.2",
    )
    inb = ipsec.SharedSa(
        lanes=lanes,
        spi=spi,
        direction="inbound",
        mode="tunnel",
        cipher="aes-128-gcm",
        key=key,
        replay_window=0,
    )
    return out.lanes, inb.lanes


DENY = '[[policy]]\nname = "deny"\ndirection = "both"\naction = "discard"\n'


def worker_gateways(index: int, lanes: int) -> tuple[list[ipsec.Gateway], list[ipsec.Gateway]]:
    """Outbound and inbound gateways, one per lane of one SA, whose one policy protects
    every packet of its direction (replay window off, as ``pair``)."""
    out_lanes, in_lanes = shared_lanes(index, lanes)

    def gateway(lane: ipsec.SaLane, direction: str) -> ipsec.Gateway:
        gw = ipsec.Gateway(ipsec.Spd.from_toml(DENY))
        gw.add_sa_lane("sa", lane)
        gw.install_policy(
            f'name = "all"\ndirection = "{direction}"\naction = "protect"\nsa = "sa"\n',
            before="deny",
        )
        return gw

    return ([gateway(lane, "outbound") for lane in out_lanes],
            [gateway(lane, "inbound") for lane in in_lanes])


def timed(workers: list[threading.Thread]) -> float:
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--batch", type=int, default=1000, help="packets per batch call")
    args = parser.parse_args()
    print(f"nproc {os.cpu_count()}, load {os.getloadavg()[0]:.2f}")
    print(
        f"{'op':8} {'size':>5} {'1 thread ns/pkt':>16} {'2 threads ns/pkt':>17} {'speed-up':>9}"
        f" {'2 lanes ns/pkt':>15} {'speed-up':>9} {'1 gw ns/pkt':>12} {'2 gws ns/pkt':>13}"
        f" {'speed-up':>9} {'1 batch ns/pkt':>15} {'2 batches':>10} {'speed-up':>9}"
        f" {'2 lanes':>8} {'speed-up':>9}"
    )
    print(f"{'':8} {'':5} {'(1 SA)':>16} {'(2 SAs)':>17} {'':>9} {'(1 SharedSa)':>15}"
          f" {'':>9} {'(1 lane)':>12} {'(2 lanes)':>13} {'':>9} {'(1 SA)':>15}"
          f" {'(2 SAs)':>10} {'':>9} {'(batches)':>8}")
    batch_len = args.batch
    for size in (64, 512, 1420):
        batch = [udp4(size)] * batch_len
        sas = [pair(0), pair(1)]
        protected = [out.encrypt_many(batch) for out, _ in sas]
        out_lanes, in_lanes = shared_lanes(2)
        lane_protected = pair(2)[0].encrypt_many(batch)
        gws_out, gws_in = worker_gateways(2, 2)
        gw1_out, gw1_in = worker_gateways(2, 1)
        for op in ("encrypt", "decrypt"):

            def work(i: int, rounds: int, op: str = op) -> None:
                out, inb = sas[i]
                for _ in range(rounds):
                    if op == "encrypt":
                        out.encrypt_many(batch)
                    else:
                        inb.decrypt_many(protected[i])

            def batch_work(i: int, rounds: int, op: str = op) -> None:
                out, inb = sas[i]
                held = ipsec.PacketBatch()
                for _ in range(rounds):
                    if op == "encrypt":
                        held.load(batch)
                        out.encrypt_batch(held)
                    else:
                        held.load(protected[i])
                        inb.decrypt_batch(held)

            def lane_batch_work(i: int, rounds: int, op: str = op) -> None:
                out, inb = out_lanes[i], in_lanes[i]
                held = ipsec.PacketBatch()
                for _ in range(rounds):
                    if op == "encrypt":
                        held.load(batch)
                        out.encrypt_batch(held)
                    else:
                        held.load(lane_protected)
                        inb.decrypt_batch(held)

            def lane_work(i: int, rounds: int, op: str = op) -> None:
                out, inb = out_lanes[i], in_lanes[i]
                for _ in range(rounds):
                    if op == "encrypt":
                        out.encrypt_many(batch)
                    else:
                        inb.decrypt_many(lane_protected)

            def gateway_work(gws: tuple[list[ipsec.Gateway], list[ipsec.Gateway]], i: int,
                             rounds: int, op: str = op) -> None:
                out, inb = gws[0][i], gws[1][i]
                for _ in range(rounds):
                    if op == "encrypt":
                        out.outbound_many(batch)
                    else:
                        inb.inbound_many(lane_protected)

            one, two, lanes, gw_one, gw_two, b_one, b_two = [], [], [], [], [], [], []
            b_lanes: list[float] = []
            for _ in range(args.runs):
                b_lanes.append(timed([threading.Thread(target=lane_batch_work,
                                                       args=(i, args.rounds)) for i in (0, 1)]))
                b_one.append(timed([threading.Thread(target=batch_work,
                                                     args=(0, 2 * args.rounds))]))
                b_two.append(timed([threading.Thread(target=batch_work, args=(i, args.rounds))
                                    for i in (0, 1)]))
                gw_one.append(timed([threading.Thread(
                    target=gateway_work, args=((gw1_out, gw1_in), 0, 2 * args.rounds))]))
                gw_two.append(timed([
                    threading.Thread(target=gateway_work, args=((gws_out, gws_in), i, args.rounds))
                    for i in (0, 1)
                ]))
                one.append(timed([threading.Thread(target=work, args=(0, 2 * args.rounds))]))
                two.append(
                    timed([threading.Thread(target=work, args=(i, args.rounds)) for i in (0, 1)])
                )
                lanes.append(
                    timed(
                        [
                            threading.Thread(target=lane_work, args=(i, args.rounds))
                            for i in (0, 1)
                        ]
                    )
                )
            packets = 2 * args.rounds * batch_len
            t1, t2, tl = statistics.median(one), statistics.median(two), statistics.median(lanes)
            g1, g2 = statistics.median(gw_one), statistics.median(gw_two)
            b1, b2 = statistics.median(b_one), statistics.median(b_two)
            bl = statistics.median(b_lanes)
            print(
                f"{op:8} {size:5} {t1 / packets * 1e9:16.0f} {t2 / packets * 1e9:17.0f} "
                f"{t1 / t2:8.2f}x {tl / packets * 1e9:15.0f} {t1 / tl:8.2f}x"
                f" {g1 / packets * 1e9:12.0f} {g2 / packets * 1e9:13.0f} {g1 / g2:8.2f}x"
                f" {b1 / packets * 1e9:15.0f} {b2 / packets * 1e9:10.0f} {b1 / b2:8.2f}x"
                f" {bl / packets * 1e9:8.0f} {b1 / bl:8.2f}x"
            )


if __name__ == "__main__":
    main()
