#!/usr/bin/env python3
"""Runs `ipsec bench --json --openssl` several times and prints the median of each
figure, with ESP encrypt/decrypt as ratios to the best raw AEAD seal of any backend
(RustCrypto, ring, aws-lc-rs, OpenSSL EVP via `openssl speed`) at the same size.

Usage: scripts/bench-report.py [RUNS] [path/to/ipsec]   (defaults: 5, target/release/ipsec)
The machines are shared and noisy: one run proves little, the median of several does.
"""
import json
import statistics
import subprocess
import sys
from collections import defaultdict

runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
binary = sys.argv[2] if len(sys.argv) > 2 else "target/release/ipsec"

samples = defaultdict(list)
for i in range(runs):
    out = subprocess.run([binary, "bench", "--json", "--openssl"], check=True,
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        r = json.loads(line)
        key = (r["op"], r["cipher"], r["backend"], r["size"], r["burst"])
        samples[key].append(r["ns_per_packet"])
    print(f"run {i + 1}/{runs} done", file=sys.stderr)

med = {k: statistics.median(v) for k, v in samples.items()}


def best_seal(cipher, size):
    cands = [(ns, k[2]) for k, ns in med.items()
             if k[0] == "aead-seal" and k[1] == cipher and k[3] == size]
    return min(cands) if cands else (None, None)


print(f"median of {runs} runs of `ipsec bench --json --openssl`")
print(f"{'op':<8} {'cipher':<30} {'size':>5} {'burst':>5} {'ns/pkt':>9} {'Gbit/s':>7} "
      f"{'best raw seal':>22} {'ratio':>6}")
for (op, cipher, backend, size, burst), ns in sorted(med.items()):
    if op not in ("encrypt", "decrypt"):
        continue
    b, who = best_seal(cipher, size)
    ratio = f"{ns / b:.2f}" if b else "-"
    raw = f"{b:.1f} ({who})" if b else "-"
    print(f"{op:<8} {cipher:<30} {size:>5} {burst:>5} {ns:>9.1f} {size * 8 / ns:>7.2f} "
          f"{raw:>22} {ratio:>6}")
print()
print("raw primitives (median ns per seal/open):")
for (op, cipher, backend, size, burst), ns in sorted(med.items()):
    if op.startswith("aead"):
        print(f"  {op:<9} {cipher:<30} {backend:<14} {size:>5} {ns:>9.1f}")
