#!/usr/bin/env python3
"""Runs `ipsec bench --json --openssl` several times and prints the median of each
figure, with ESP encrypt/decrypt as ratios to the best raw per-packet AEAD seal of any
backend at the same size: RustCrypto, ring and aws-lc-rs (from `ipsec bench`) and
OpenSSL's EVP interface (from benches/openssl/evp_aead.c, built here with `cc -lcrypto`
and run in every round).

`openssl speed -evp` is reported too, in its own column: it times a stream of
EVP_EncryptUpdate calls with no nonce, AAD or tag per buffer, which is the bulk cipher
and MAC alone rather than a packet's seal (evp_aead.c's header says more).

Usage: scripts/bench-report.py [RUNS] [path/to/ipsec]   (defaults: 5, target/release/ipsec)
The machines are shared and noisy: one run proves little, the median of several does.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict

runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
binary = sys.argv[2] if len(sys.argv) > 2 else "target/release/ipsec"
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_evp_helper():
    """Builds the OpenSSL EVP per-packet benchmark; None (with a note) if it cannot."""
    src = os.path.join(root, "benches", "openssl", "evp_aead.c")
    out = os.path.join(root, "target", "evp_aead")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        print("note: no C compiler, so no OpenSSL EVP per-packet figures", file=sys.stderr)
        return None
    os.makedirs(os.path.dirname(out), exist_ok=True)
    r = subprocess.run([cc, "-std=c99", "-O2", "-o", out, src, "-lcrypto"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"note: cannot build {src} (OpenSSL headers missing?), so no OpenSSL EVP "
              f"per-packet figures:\n{r.stderr}", file=sys.stderr)
        return None
    return out


evp_helper = build_evp_helper()
samples = defaultdict(list)
for i in range(runs):
    out = subprocess.run([binary, "bench", "--json", "--openssl"], check=True,
                         capture_output=True, text=True).stdout
    if evp_helper:
        out += subprocess.run([evp_helper], check=True, capture_output=True,
                              text=True).stdout
    for line in out.splitlines():
        r = json.loads(line)
        key = (r["op"], r["cipher"], r["backend"], r["size"], r["burst"])
        samples[key].append(r["ns_per_packet"])
    print(f"run {i + 1}/{runs} done", file=sys.stderr)

med = {k: statistics.median(v) for k, v in samples.items()}


def best_seal(cipher, size):
    """The fastest per-packet raw seal at this size: (ns, backend)."""
    cands = [(ns, k[2]) for k, ns in med.items()
             if k[0] == "aead-seal" and k[1] == cipher and k[3] == size
             and k[2] != "openssl-speed"]
    return min(cands) if cands else (None, None)


def speed(cipher, size):
    return med.get(("aead-seal", cipher, "openssl-speed", size, 1))


print(f"median of {runs} runs of `ipsec bench --json --openssl`"
      + (" and benches/openssl/evp_aead.c" if evp_helper else ""))
print(f"{'op':<8} {'cipher':<30} {'size':>5} {'burst':>5} {'ns/pkt':>9} {'Gbit/s':>7} "
      f"{'best raw seal':>22} {'ratio':>6} {'openssl speed':>14} {'ratio':>6}")
for (op, cipher, backend, size, burst), ns in sorted(med.items()):
    if op not in ("encrypt", "decrypt"):
        continue
    b, who = best_seal(cipher, size)
    ratio = f"{ns / b:.2f}" if b else "-"
    raw = f"{b:.1f} ({who})" if b else "-"
    s = speed(cipher, size)
    sp, sr = (f"{s:.1f}", f"{ns / s:.2f}") if s else ("-", "-")
    print(f"{op:<8} {cipher:<30} {size:>5} {burst:>5} {ns:>9.1f} {size * 8 / ns:>7.2f} "
          f"{raw:>22} {ratio:>6} {sp:>14} {sr:>6}")
print()
print("raw primitives (median ns per seal/open):")
for (op, cipher, backend, size, burst), ns in sorted(med.items()):
    if op.startswith("aead"):
        print(f"  {op:<9} {cipher:<30} {backend:<14} {size:>5} {ns:>9.1f}")
