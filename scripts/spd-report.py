#!/usr/bin/env python3
"""Our SPD against DPDK's rte_acl (the classifier of DPDK's ipsec-secgw) on the same
rule sets and flows, in one invocation: builds `benches/examples/spd_acl.rs` and
`benches/dpdk-acl/acl_spd.c`, exports the rule sets of `benches/benches/spd_gen`
(IPv4 and IPv6, 1k/10k/100k policies, 1,024 flows each, with the policy our SPD matched
per flow), then runs both programs in alternation RUNS times and prints the medians,
and the median of the ratios taken inside each run (steadier on a shared host, where
neighbours move both sides' times within minutes).

acl_spd.c first checks that rte_acl classifies every flow as our SPD did (the run stops
on a mismatch), then times rte_acl_classify in bursts of 32. Our side times
`Spd::lookup_burst` in bursts of 32 (checked against `Spd::lookup` first) on the
compiled classifier, no flow cache.
Both use the thread CPU clock, 7 rounds, median (spd_acl.rs and acl_spd.c say more).
Both run on CPU 0: the C program's EAL pins its one lcore there (`-l 0`), and ours is
pinned to the same CPU here (a thread the scheduler moves between CPUs finds its
caches cold on the other: on a 2-vCPU AMD EPYC guest, unpinned runs of ours on the
1,000-rule IPv4 set took 25 or 36-41 ns a lookup from one process to the next, pinned
ones 25-26 every time).

Columns: ns per lookup (ours, rte_acl, ours / rte_acl: above 1 means we are slower);
build ms (ours: `Spd::recompiled`, both directions; rte_acl: rte_acl_add_rules +
rte_acl_build of its two contexts); bytes per policy (ours: `Spd::compiled_bytes`
without the non-first fragment index, then with it; rte_acl: what rte_acl_build
allocated, then with the contexts and their copy of the rules).

Usage: scripts/spd-report.py [RUNS] [--sizes 1000,10000]   (defaults: 5; 1000,10000,100000)
Without dpdk-dev (pkg-config libdpdk), it says so and reports our side alone.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict

args = sys.argv[1:]
sizes = []
if "--sizes" in args:
    i = args.index("--sizes")
    sizes = ["--sizes", args[i + 1]]
    del args[i:i + 2]
runs = int(args[0]) if args else 5
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
target = os.path.join(root, "target")
export_dir = os.path.join(target, "spd-acl")


def build_acl():
    """Builds acl_spd.c; None (with a note) if DPDK or a compiler is missing."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    pc = subprocess.run(["pkg-config", "--cflags", "--libs", "libdpdk"],
                        capture_output=True, text=True) if shutil.which("pkg-config") else None
    if cc is None or pc is None or pc.returncode != 0:
        print("note: dpdk-dev not installed (no pkg-config libdpdk, or no C compiler): "
              "our side only; `apt-get install dpdk-dev` for the rte_acl columns",
              file=sys.stderr)
        return None
    src = os.path.join(root, "benches", "dpdk-acl", "acl_spd.c")
    out = os.path.join(target, "acl_spd")
    os.makedirs(target, exist_ok=True)
    r = subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-o", out, src] + pc.stdout.split(),
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"note: cannot build {src}, our side only:\n{r.stderr}", file=sys.stderr)
        return None
    return out


subprocess.run(["cargo", "build", "--release", "-q", "-p", "ipsec-benches",
                "--example", "spd_acl"], check=True, cwd=root)
ours = os.path.join(target, "release", "examples", "spd_acl")
acl = build_acl()
subprocess.run([ours, "export", export_dir] + sizes, check=True)
files = sorted(os.path.join(export_dir, f) for f in os.listdir(export_dir)
               if f.startswith("spd-") and f.endswith(".txt"))
if sizes:
    wanted = set(sizes[1].split(","))
    files = [f for f in files if f.rsplit("-", 1)[1][:-4] in wanted]

def pin_to_cpu0():
    """In the child before it runs: CPU 0, where EAL's `-l 0` pins the C program."""
    if 0 in os.sched_getaffinity(0):
        os.sched_setaffinity(0, {0})


samples = defaultdict(lambda: defaultdict(list))
for i in range(runs):
    cmds = [[ours, "bench"] + sizes]
    if acl:
        cmds.append([acl] + files)
    if i % 2:
        cmds.reverse()  # alternate which side runs first
    for cmd in cmds:
        r = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=pin_to_cpu0)
        if r.returncode != 0:
            sys.exit(f"{cmd[0]} failed ({r.returncode}):\n{r.stderr}")
        for line in r.stdout.splitlines():
            rec = json.loads(line)
            key = (rec["family"], rec["rules"], rec["impl"])
            for k, v in rec.items():
                if isinstance(v, (int, float)):
                    samples[key][k].append(v)
    print(f"run {i + 1}/{runs} done", file=sys.stderr)


def med(family, rules, impl, field):
    v = samples.get((family, rules, impl), {}).get(field)
    return statistics.median(v) if v else None


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
            if l.startswith("model name")), "unknown CPU")
print(f"SPD lookup, ipsec-core vs DPDK rte_acl: medians of {runs} runs, {cpu}, "
      f"1,024 flows, bursts of 32")
print("| family | policies | ns/lookup ours | rte_acl | ours/rte_acl | build ms ours | "
      "rte_acl | B/policy ours (+frag index) | rte_acl (+rules) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for family, rules in sorted({(f, n) for f, n, _ in samples}):
    o = lambda k: med(family, rules, "ipsec-core", k)  # noqa: E731
    a = lambda k: med(family, rules, "rte_acl", k)  # noqa: E731
    ratio = (o("ns_per_lookup") / a("ns_per_lookup")
             if o("ns_per_lookup") and a("ns_per_lookup") else None)
    print(f"| {family} | {rules:,} | {fmt(o('ns_per_lookup'), '.1f')} | "
          f"{fmt(a('ns_per_lookup'), '.1f')} | {fmt(ratio, '.2f')} | "
          f"{fmt(o('build_ms'), '.1f')} | {fmt(a('build_ms'), '.1f')} | "
          f"{fmt(o('bytes_per_rule_no_fragment_index'), '.0f')} "
          f"({fmt(o('bytes_per_rule'), '.0f')}) | "
          f"{fmt(a('trie_bytes_per_rule'), '.0f')} ({fmt(a('bytes_per_rule'), '.0f')}) |")
print()
print("spread of ns/lookup over the runs (min-max): " + "; ".join(
    f"{family} {rules:,}: ours {fmt(min(o), '.1f')}-{fmt(max(o), '.1f')}"
    + (f", rte_acl {min(a):.1f}-{max(a):.1f}" if a else "")
    for family, rules in sorted({(f, n) for f, n, _ in samples})
    for o in [samples[(family, rules, "ipsec-core")]["ns_per_lookup"]]
    for a in [samples.get((family, rules, "rte_acl"), {}).get("ns_per_lookup")]))


def per_run_ratios(family, rules):
    """ours/rte_acl of each run (both sides measured minutes apart, not a whole report)."""
    o = samples[(family, rules, "ipsec-core")].get("ns_per_lookup", [])
    a = samples.get((family, rules, "rte_acl"), {}).get("ns_per_lookup", [])
    return [x / y for x, y in zip(o, a) if y] if len(o) == len(a) else []


ratios = {k: per_run_ratios(*k) for k in sorted({(f, n) for f, n, _ in samples})}
if any(ratios.values()):
    print()
    print("ours/rte_acl within each run (median, min-max): " + "; ".join(
        f"{family} {rules:,}: {statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})"
        for (family, rules), r in ratios.items() if r))
