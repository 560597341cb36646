#!/usr/bin/env python3
"""How much the Python layer costs over Rust (issue 5's speed targets).

1. ``encrypt_many`` on 1,000 x 1420-byte IPv4/UDP packets with AES-128-GCM in tunnel
   mode (outer IPv4), in Gbit/s of inner packets, against the Rust burst throughput of
   the same cipher and size (``ipsec bench --json``: op encrypt, size 1420, burst 32).
   Target: at least 0.7 of Rust.
2. The overhead of one ``encrypt`` call: Python ``encrypt`` of a 64-byte packet, minus
   the Rust single-packet encrypt at 64 bytes (``ipsec bench``: size 64, burst 1).
   Target: under 1 microsecond.
3. ``encrypt_many`` and ``decrypt_many`` of 1,000 packets of 64 and 1420 bytes with
   AES-128-CBC + HMAC-SHA-256-128, whose batches go through the SA's burst code (CBC
   chains and hashes of several packets side by side), in ns per packet (no target;
   for comparing builds).

Both sides include the copy of the packet into the output buffer (the Rust bench copies
its template in every iteration). Each figure is the median of several timed runs; the
machine may be shared, so run it when ``uptime`` shows a low load.

The headline ``encrypt_many`` figure is the steady state of a loop such as
``for batch in batches: out = sa.encrypt_many(batch); send(out)``: the previous batch's
output is freed after the next one is made. A second figure drops each output before the
next call with nothing else on the heap ("cold heap"): glibc then hands the 1.5 MB of
freed ``bytes`` back to the OS (its trim threshold is 128 KiB) and page-faults it back
in on the next call, which costs more than the encryption; that is an allocator effect
(``MALLOC_TRIM_THRESHOLD_`` removes it), reported so that it is not mistaken for the
binding's cost.

    cargo build --release -p ipsec-cli
    .venv/bin/python ipsec-py/bench/bench_python.py [--runs 15] [--rust-json FILE]

Without ``--rust-json`` it runs ``target/release/ipsec bench --json`` itself (~30 s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import time
from typing import Any, Callable, Optional

import ipsec

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY = bytes(i ^ 0x3C for i in range(20))


def checksum(hdr: bytes) -> int:
    s = sum(struct.unpack("!10H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv4_udp(size: int, ident: int = 1) -> bytes:
    payload = b"\xab" * (size - 28)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, size, ident, 0, 64, 17, 0,
                      bytes([10, 1, 0, 1]), bytes([10, 0, 0, 1]))
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return hdr + struct.pack("!HHHH", 5000, 5001, size - 20, 0) + payload


def outbound() -> ipsec.SecurityAssociation:
    return ipsec.SecurityAssociation(0x1001, "outbound", "tunnel", "aes-128-gcm", KEY,
                                     tunnel_src="192.0.2.1", tunnel_dst="192.0.2.2")


def cbc_pair() -> tuple[ipsec.SecurityAssociation, ipsec.SecurityAssociation]:
    """AES-128-CBC + HMAC-SHA-256-128, outbound and inbound; the inbound SA has no
    replay window, so that the same packets can be decrypted again and again."""
    out = ipsec.SecurityAssociation(0x1002, "outbound", "tunnel", "aes-128-cbc", KEY[:16],
                                    integrity="hmac-sha256-128", integrity_key=KEY + KEY[:12],
                                    tunnel_src="192.0.2.1", tunnel_dst="192.0.2.2")
    inb = ipsec.SecurityAssociation(0x1002, "inbound", "tunnel", "aes-128-cbc", KEY[:16],
                                    integrity="hmac-sha256-128", integrity_key=KEY + KEY[:12],
                                    replay_window=0)
    return out, inb


def median_ns(fn: Callable[[], None], per_call_items: int, runs: int) -> float:
    """Median over `runs` of the wall time of fn() divided by `per_call_items`, in ns."""
    fn()  # warm up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - t0) / per_call_items)
    return statistics.median(times)


def rust_figures(path: Optional[str]) -> dict[tuple[int, int], float]:
    """(size, burst) -> ns per packet of Rust `encrypt` with aes-128-gcm."""
    if path:
        with open(path) as f:
            text = f.read()
    else:
        binary = os.path.join(REPO, "target", "release", "ipsec")
        if not os.path.exists(binary):
            sys.exit("%s missing: run `cargo build --release -p ipsec-cli`" % binary)
        text = subprocess.run([binary, "bench", "--json"], check=True, capture_output=True,
                              text=True).stdout
    out: dict[tuple[int, int], float] = {}
    for line in text.splitlines():
        try:
            r: dict[str, Any] = json.loads(line)
        except ValueError:
            continue
        if r.get("op") == "encrypt" and str(r.get("cipher", "")).startswith("aes-128-gcm"):
            out[(int(r["size"]), int(r["burst"]))] = float(r["ns_per_packet"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description="Python layer cost over Rust")
    parser.add_argument("--runs", type=int, default=15, help="timed runs per figure")
    parser.add_argument("--rust-json", help="saved `ipsec bench --json` output")
    parser.add_argument("--json", action="store_true", help="one JSON object as output")
    args = parser.parse_args()

    burst = [ipv4_udp(1420, i) for i in range(1000)]
    sa = outbound()
    ns_cold = median_ns(lambda: None if sa.encrypt_many(burst) else None, 1000, args.runs)
    previous: dict[str, list[bytes]] = {}

    def steady() -> None:
        previous["out"] = sa.encrypt_many(burst)

    ns_many = median_ns(steady, 1000, args.runs)
    py_gbps = 1420 * 8 / ns_many

    small = ipv4_udp(64)
    sa1 = outbound()
    n = 20000

    def singles() -> None:
        enc = sa1.encrypt
        for _ in range(n):
            enc(small)

    ns_single = median_ns(singles, n, args.runs)

    cbc: dict[str, float] = {}
    kept: dict[str, object] = {}  # each call's output lives until the next, as above
    for size in (64, 1420):
        packets = [ipv4_udp(size, i) for i in range(1000)]
        out, inb = cbc_pair()
        wires = out.encrypt_many(packets)
        assert inb.decrypt_many(wires) == packets

        def encrypt_cbc(out: ipsec.SecurityAssociation = out,
                        packets: list[bytes] = packets) -> None:
            kept["out"] = out.encrypt_many(packets)

        def decrypt_cbc(inb: ipsec.SecurityAssociation = inb,
                        wires: list[bytes] = wires) -> None:
            kept["out"] = inb.decrypt_many(wires)

        cbc[f"python_cbc_encrypt_many_{size}_ns_per_packet"] = round(
            median_ns(encrypt_cbc, 1000, args.runs), 1)
        cbc[f"python_cbc_decrypt_many_{size}_ns_per_packet"] = round(
            median_ns(decrypt_cbc, 1000, args.runs), 1)

    rust = rust_figures(args.rust_json)
    rust_burst = rust.get((1420, 32))
    rust_single = rust.get((64, 1))
    result: dict[str, Any] = {
        "python_encrypt_many_ns_per_packet": round(ns_many, 1),
        "python_encrypt_many_gbps": round(py_gbps, 2),
        "python_encrypt_many_cold_heap_ns_per_packet": round(ns_cold, 1),
        "python_encrypt_64_ns": round(ns_single, 1),
        "rust_burst_1420_ns_per_packet": rust_burst,
        "rust_single_64_ns": rust_single,
        **cbc,
        "backend": "AEAD backend of ipsec-core as built (default features)",
        "load_average": os.getloadavg()[0],
    }
    if rust_burst:
        rust_gbps = 1420 * 8 / rust_burst
        result["rust_burst_gbps"] = round(rust_gbps, 2)
        result["ratio_python_over_rust"] = round(py_gbps / rust_gbps, 3)
    if rust_single:
        result["single_call_overhead_ns"] = round(ns_single - rust_single, 1)
    if args.json:
        print(json.dumps(result))
        return 0
    print("encrypt_many 1000 x 1420 B aes-128-gcm: %.1f ns/packet = %.2f Gbit/s"
          % (ns_many, py_gbps))
    print("  (cold heap, see the docstring:         %.1f ns/packet)" % ns_cold)
    if rust_burst:
        print("Rust burst (32) 1420 B:                  %.1f ns/packet = %.2f Gbit/s"
              % (rust_burst, result["rust_burst_gbps"]))
        print("ratio Python / Rust:                     %.3f (target >= 0.7)"
              % result["ratio_python_over_rust"])
    print("encrypt 64 B (one call):                 %.1f ns" % ns_single)
    if rust_single:
        print("Rust single encrypt 64 B:                %.1f ns" % rust_single)
        print("single-call overhead:                    %.1f ns (target < 1000)"
              % result["single_call_overhead_ns"])
    for size in (64, 1420):
        print("aes-128-cbc+hmac-sha256-128 %4d B:    encrypt_many %.1f, decrypt_many %.1f"
              " ns/packet" % (size, cbc[f"python_cbc_encrypt_many_{size}_ns_per_packet"],
                              cbc[f"python_cbc_decrypt_many_{size}_ns_per_packet"]))
    print("load average (1 min): %.2f" % result["load_average"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
