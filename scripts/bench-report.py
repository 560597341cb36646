#!/usr/bin/env python3
"""Runs `ipsec bench --json --openssl` several times and prints the median of each
figure, with ESP encrypt/decrypt as ratios to the best raw per-packet AEAD seal of any
backend at the same size: RustCrypto, ring and aws-lc-rs (from `ipsec bench`),
OpenSSL's EVP interface (from benches/openssl/evp_aead.c, built here with `cc -lcrypto`
and run in every round) and intel-ipsec-mb's single call (below).

`openssl speed -evp` is reported too, in its own column: it times a stream of
EVP_EncryptUpdate calls with no nonce, AAD or tag per buffer, which is the bulk cipher
and MAC alone rather than a packet's seal (evp_aead.c's header says more).

intel-ipsec-mb is the other baseline: benches/ipsec-mb/mb_esp.c (built here with
`cc -lIPSec_MB`, run in every round) seals and opens exactly ESP's body (inner packet,
padding and trailer: 80, 528, 1424 bytes for 64, 512, 1420) and AAD, one packet per
call ("ipsec-mb", also a candidate for the best raw seal) and in bursts of 32 jobs
("ipsec-mb-burst32" under the manager init_mb_mgr_auto picks, "ipsec-mb-sse-burst32"
under the SSE one, which uses SHA-NI). The "ipsec-mb" column compares each ESP row with
the same operation (encrypt: seal, decrypt: open): burst-1 rows with the single call,
burst-32 rows with the faster of the two 32-job bursts. Where the library or its header
is missing, a note says so and the report goes on without those columns' figures.

At the end it checks issue 14's targets 1-3 against the same medians: AES-128-GCM at
64 B against intel-ipsec-mb's single call (1.3x), the AEADs at 1420 B against the best
raw seal or open of any backend (1.05x), CBC + HMAC-SHA-256 bursts of 32 against the
library's faster burst (1.15x). Targets 4 and 5 have their own commands (README).

Both builds side by side: give several binaries, each optionally labelled, e.g.
  cargo build --release -p ipsec-cli && cp target/release/ipsec /tmp/ipsec-default
  cargo build --release -p ipsec-cli --features ipsec-core/ipsec-mb
  scripts/bench-report.py 5 default=/tmp/ipsec-default ipsec-mb=target/release/ipsec
Every round runs each binary in turn (interleaved, so that both see the same machine),
every measured program pinned to the same CPU;
the ESP rows carry the build's label, the raw rows (the same code in every build) are
pooled, and the target check is printed per build.

Usage: scripts/bench-report.py [RUNS] [[LABEL=]path/to/ipsec ...]
       (defaults: 5, target/release/ipsec)
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
builds = []
for arg in sys.argv[2:] or ["target/release/ipsec"]:
    label, _, path = arg.rpartition("=")
    builds.append((label or (os.path.basename(path) if len(sys.argv) > 3 else ""), path))
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_helper(src, out, flags, libs, what):
    """Builds a C baseline with `cc`; None (with a note) if it cannot."""
    src = os.path.join(root, *src)
    out = os.path.join(root, "target", out)
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        print(f"note: no C compiler, so no {what} figures", file=sys.stderr)
        return None
    os.makedirs(os.path.dirname(out), exist_ok=True)
    r = subprocess.run([cc, *flags, "-O2", "-o", out, src, *libs],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"note: cannot build {src} (headers or library missing?), so no {what} "
              f"figures:\n{r.stderr}", file=sys.stderr)
        return None
    return out


def build_evp_helper():
    """Builds the OpenSSL EVP per-packet benchmark; None (with a note) if it cannot."""
    return build_helper(("benches", "openssl", "evp_aead.c"), "evp_aead", ["-std=c99"],
                        ["-lcrypto"], "OpenSSL EVP per-packet")


def build_mb_helper():
    """Builds the intel-ipsec-mb benchmark; None (with a note) if it cannot (Debian:
    apt-get install libipsec-mb-dev)."""
    return build_helper(("benches", "ipsec-mb", "mb_esp.c"), "mb_esp", ["-std=c11"],
                        ["-lIPSec_MB"], "intel-ipsec-mb")


def pin_to_one_cpu():
    """In each measured child: the same single CPU (the last this script may use) for
    every program of every round, so that none is migrated to a core whose caches are
    cold in the middle of its run, and all sides see the same core (scripts/spd-report.py
    pins likewise; unpinned runs of the same code differed by up to 25 %)."""
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})


evp_helper = build_evp_helper()
mb_helper = build_mb_helper()
mb_note = None
samples = defaultdict(list)
for i in range(runs):
    out = ""
    for n, (label, binary) in enumerate(builds):
        # `openssl speed` (identical for every build) with the first build only.
        extra = ["--openssl"] if n == 0 else []
        for line in subprocess.run([binary, "bench", "--json", *extra], check=True,
                                   capture_output=True, text=True,
                                   preexec_fn=pin_to_one_cpu).stdout.splitlines():
            r = json.loads(line)
            if label and r["op"] in ("encrypt", "decrypt"):
                r["backend"] = f"{label}:{r['backend']}"
            out += json.dumps(r) + "\n"
    if evp_helper:
        out += subprocess.run([evp_helper], check=True, capture_output=True,
                              text=True, preexec_fn=pin_to_one_cpu).stdout
    if mb_helper:
        r = subprocess.run([mb_helper], check=True, capture_output=True, text=True,
                           preexec_fn=pin_to_one_cpu)
        out += r.stdout
        mb_note = r.stderr.strip()
    for line in out.splitlines():
        r = json.loads(line)
        key = (r["op"], r["cipher"], r["backend"], r["size"], r["burst"])
        samples[key].append(r["ns_per_packet"])
    print(f"run {i + 1}/{runs} done", file=sys.stderr)

med = {k: statistics.median(v) for k, v in samples.items()}


def best_seal(cipher, size):
    """The fastest per-packet raw seal (one packet per call) at this size: (ns, backend)."""
    cands = [(ns, k[2]) for k, ns in med.items()
             if k[0] == "aead-seal" and k[1] == cipher and k[3] == size and k[4] == 1
             and k[2] != "openssl-speed"]
    return min(cands) if cands else (None, None)


MB_BURSTS = {"ipsec-mb-burst32": "auto b32", "ipsec-mb-sse-burst32": "sse b32"}


def mb(op, cipher, size, burst):
    """intel-ipsec-mb doing what this ESP row does (encrypt: seal, decrypt: open): the
    single call for burst 1, the faster 32-job burst for burst 32: (ns, which)."""
    raw_op = "aead-seal" if op == "encrypt" else "aead-open"
    if burst == 1:
        ns = med.get((raw_op, cipher, "ipsec-mb", size, 1))
        return (ns, "single") if ns else (None, None)
    cands = [(ns, MB_BURSTS[k[2]]) for k, ns in med.items()
             if k[0] == raw_op and k[1] == cipher and k[3] == size and k[4] == burst
             and k[2] in MB_BURSTS]
    return min(cands) if cands else (None, None)


def speed(cipher, size):
    return med.get(("aead-seal", cipher, "openssl-speed", size, 1))


print(f"median of {runs} runs of `ipsec bench --json --openssl`"
      + (" and benches/openssl/evp_aead.c" if evp_helper else "")
      + (" and benches/ipsec-mb/mb_esp.c" if mb_helper else ""))
if mb_note:
    print(mb_note)
multi = any(label for label, _ in builds)
if multi:
    print("builds: " + ", ".join(f"{label} = {path}" for label, path in builds))
print(f"{'op':<8} {'cipher':<30} {'build':<22} {'size':>5} {'burst':>5} {'ns/pkt':>9} {'Gbit/s':>7} "
      f"{'best raw seal':>22} {'ratio':>6} {'openssl speed':>14} {'ratio':>6} "
      f"{'ipsec-mb':>19} {'ratio':>6}")
for (op, cipher, backend, size, burst), ns in sorted(med.items()):
    if op not in ("encrypt", "decrypt"):
        continue
    b, who = best_seal(cipher, size)
    ratio = f"{ns / b:.2f}" if b else "-"
    raw = f"{b:.1f} ({who})" if b else "-"
    s = speed(cipher, size)
    sp, sr = (f"{s:.1f}", f"{ns / s:.2f}") if s else ("-", "-")
    m, how = mb(op, cipher, size, burst)
    mp, mr = (f"{m:.1f} ({how})", f"{ns / m:.2f}") if m else ("-", "-")
    print(f"{op:<8} {cipher:<30} {backend:<22} {size:>5} {burst:>5} {ns:>9.1f} {size * 8 / ns:>7.2f} "
          f"{raw:>22} {ratio:>6} {sp:>14} {sr:>6} {mp:>19} {mr:>6}")
print()
print("raw primitives (median ns per seal/open, per packet; ipsec-mb rows seal ESP's "
      "padded body):")
for (op, cipher, backend, size, burst), ns in sorted(med.items()):
    if op.startswith("aead"):
        print(f"  {op:<9} {cipher:<30} {backend:<20} {size:>5} {burst:>5} {ns:>9.1f}")


def best_raw(op, cipher, size):
    """The fastest per-packet raw seal (encrypt) or open (decrypt) of any backend,
    intel-ipsec-mb's single call included: (ns, backend)."""
    raw_op = "aead-seal" if op == "encrypt" else "aead-open"
    cands = [(ns, k[2]) for k, ns in med.items()
             if k[0] == raw_op and k[1] == cipher and k[3] == size and k[4] == 1
             and k[2] != "openssl-speed"]
    return min(cands) if cands else (None, None)


def esp_row(op, cipher, size, burst, label):
    cands = [ns for k, ns in med.items()
             if k[0] == op and k[1] == cipher and k[3] == size and k[4] == burst
             and (not label or k[2].startswith(label + ":"))]
    return cands[0] if cands else None


def verdict(label, ns, base, who, goal):
    if ns is None or base is None:
        print(f"  {label:<70} -      (no figure: {who or 'baseline missing'})")
        return
    r = ns / base
    mark = "meets" if r <= goal else "OVER"
    print(f"  {label:<70} {ns:7.1f} / {base:7.1f} {who:<14} = {r:4.2f}x  "
          f"goal <= {goal:.2f}x  {mark}")


print()
for label, _ in builds:
    print()
    print("issue 14 targets 1-3" + (f", build {label}" if label else "")
          + " (ESP row / baseline, medians of this report):")
    for op in ("encrypt", "decrypt"):
        for burst in (1, 32):
            m, _ = mb(op, "aes-128-gcm", 64, 1)
            verdict(f"1. aes-128-gcm 64 B {op} burst {burst} / ipsec-mb single call",
                    esp_row(op, "aes-128-gcm", 64, burst, label), m, "ipsec-mb", 1.30)
    for cipher in ("aes-128-gcm", "aes-256-gcm", "chacha20-poly1305"):
        for op in ("encrypt", "decrypt"):
            b, who = best_raw(op, cipher, 1420)
            verdict(f"2. {cipher} 1420 B {op} burst 1 / best raw {'seal' if op == 'encrypt' else 'open'}",
                    esp_row(op, cipher, 1420, 1, label), b, who, 1.05)
    for size in (64, 512, 1420):
        for op in ("encrypt", "decrypt"):
            m, how = mb(op, "aes-128-cbc+hmac-sha256-128", size, 32)
            verdict(f"3. aes-128-cbc+hmac-sha256-128 {size} B {op} burst 32 / ipsec-mb burst",
                    esp_row(op, "aes-128-cbc+hmac-sha256-128", size, 32, label), m, how, 1.15)
