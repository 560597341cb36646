"""Throughput and latency through the branch-office tunnel: kernel-dataplane vs kernel-libipsec.

Standard library only; run as root.  Uses the test bed of ``netns.py``.

For every ESP proposal, one :class:`netns.BranchOffice` per setup is brought up (all at the
same time: each lives in its own namespaces), then the measurements alternate between the
setups, round after round, so that machine noise hits every setup alike.  A setup is the
kernel-ipsec plugin of each gateway:

  ``dataplane``  hq: kernel-dataplane (``--dataplane-so``, default: the plugin build.sh built
                 in this checkout, else the installed one), branch: kernel-libipsec
  ``libipsec``   hq: kernel-libipsec, branch: kernel-libipsec
  ``dataplane2`` (``--symmetric``) both gateways kernel-dataplane
  ``NAME=PATH``  (``--plugin``) hq: kernel-dataplane from another build of the plugin (the
                 .so at PATH is bind-mounted over the installed one inside that charon's
                 mount namespace only), to compare two builds in one run

Pinning ("per core"): this script pins itself, and so everything it starts (the branch
charon, ping, the TCP endpoints, swanctl), to CPU ``--other-cpu`` (default 1) with
sched_setaffinity; the hq charon, the data plane under test, is started as
``taskset -c --hq-cpu /usr/lib/ipsec/charon`` (default CPU 0; all its threads inherit
it).  Kernel work (veth, TUN, UDP) runs on the CPU of the thread that triggers it.

Measured per setup: TCP throughput hq-LAN -> branch-LAN (hq encrypts) and branch-LAN ->
hq-LAN (hq decrypts), ``--runs`` runs of about ``--seconds`` each; the hq charon's CPU use
during each run (utime + stime of all its threads from /proc, in % of one CPU) and from it
"Mbit/core", throughput divided by that CPU share (what the hq would carry on one saturated
core, an extrapolation that matters when the other side, not the hq, limits); ping RTT hq-LAN -> branch-LAN
(``--pings`` echo requests of 56 bytes, 10 ms apart).  Medians are printed, with the ratio
to the ``libipsec`` setup.  ``--perf DIR`` also records ``perf record -g`` of the hq charon
during one more transfer per setup and direction and prints its profile by category.

    python3 integrations/strongswan/bench.py --runs 5 --seconds 3 --perf /tmp/swan-perf
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import netns  # noqa: E402

PROPOSALS = ("aes128gcm16", "chacha20poly1305")
DATAPLANE_LOAD = netns.LIBIPSEC_LOAD.replace("kernel-libipsec!", "kernel-dataplane!")
PLUGIN_SO = os.path.join(netns.PLUGIN_DIR, "libstrongswan-kernel-dataplane.so")
BUILT_SO = os.path.join(netns.REPO_ROOT, "target", "strongswan", "build", "libstrongswan-kernel-dataplane.so")

# Started instead of charon (netns.CHARON): runs inside the charon's `ip netns exec` mount
# namespace, so a bind mount here is seen by that charon only.
WRAPPER = """#!/bin/sh
set -e
if [ -n "$BENCH_PLUGIN_SO" ]; then
    mount --bind "$BENCH_PLUGIN_SO" %(plugin)s
fi
if [ -n "$BENCH_CPU" ]; then
    exec taskset -c "$BENCH_CPU" %(charon)s
fi
exec %(charon)s
"""


def make_wrapper(directory):
    path = os.path.join(directory, "charon-wrapper.sh")
    with open(path, "w") as f:
        f.write(WRAPPER % {"plugin": PLUGIN_SO, "charon": netns.CHARON})
    os.chmod(path, 0o755)
    return path


def setups(args):
    """[(name, hq CharonConfig, branch CharonConfig)] in measuring order."""
    hq_cpu = {"BENCH_CPU": str(args.hq_cpu)}
    plugin = {"BENCH_PLUGIN_SO": os.path.abspath(args.dataplane_so)}
    result = [
        ("dataplane", netns.CharonConfig(load=DATAPLANE_LOAD, env=dict(hq_cpu, **plugin)), netns.CharonConfig()),
        ("libipsec", netns.CharonConfig(env=dict(hq_cpu)), netns.CharonConfig()),
    ]
    if args.symmetric:
        result.append(("dataplane2", netns.CharonConfig(load=DATAPLANE_LOAD, env=dict(hq_cpu, **plugin)),
                       netns.CharonConfig(load=DATAPLANE_LOAD, env=dict(plugin))))
    for spec in args.plugin:
        name, _, path = spec.partition("=")
        if not path or not os.path.isfile(path):
            sys.exit("--plugin %s: expected NAME=PATH of a plugin .so" % spec)
        result.append((name, netns.CharonConfig(load=DATAPLANE_LOAD, env=dict(hq_cpu, BENCH_PLUGIN_SO=os.path.abspath(path))),
                       netns.CharonConfig()))
    if args.only:
        wanted = set(args.only.split(","))
        result = [s for s in result if s[0] in wanted]
    return result


def cpu_seconds(pid):
    """utime + stime of a process (all threads), in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def transfer(office, direction, nbytes, port):
    """One TCP transfer; (Mbit/s, hq charon CPU % of one core)."""
    if direction == "hq>br":
        ends = (office.hq_lan, office.branch_lan, netns.BRANCH_LAN_HOST)
    else:
        ends = (office.branch_lan, office.hq_lan, netns.HQ_LAN_HOST)
    pid = office.hq.process.pid
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    result = office.tcp_transfer(*ends, nbytes, port=port, timeout=120)
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    if result.bytes != nbytes:
        raise netns.NetnsError("transfer %s: %d of %d bytes acknowledged" % (direction, result.bytes, nbytes))
    return result.mbit_per_s, 100 * (cpu1 - cpu0) / (t1 - t0)


def ping_rtts(office, count):
    result = office.ping(office.hq_lan, netns.BRANCH_LAN_HOST, count=count, interval=0.01, timeout=int(count * 0.01) + 20)
    rtts = sorted(float(x) for x in re.findall(r"time=([\d.]+) ms", result.output))
    if len(rtts) < count * 0.9:
        raise netns.NetnsError("ping: %d of %d replies\n%s" % (len(rtts), count, result.output[-500:]))
    return rtts


def per_core_rate(rates, cpu_percents):
    """Median of Mbit/s per 100 % hq charon CPU: what one saturated core would carry."""
    return statistics.median(rate / (load / 100) for rate, load in zip(rates, cpu_percents) if load > 0)


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


CRYPTO = re.compile(r"aes|gcm|ghash|chacha|poly1305|clmul|ring_core|CRYPTO_|EVP_|ossl_|libcrypto", re.I)
# kernel frame (anywhere in the stack) -> category, first match wins
KERNEL_PATHS = [
    (re.compile(r"^(handle_softirqs|net_rx_action|__do_softirq|do_softirq)$"),
     "kernel softirq: routing/forwarding of packets, veth"),
    (re.compile(r"^tun_chr_read_iter$"), "TUN read (syscall)"),
    (re.compile(r"^tun_chr_write_iter$"), "TUN write (syscall)"),
    (re.compile(r"^(udp_sendmsg|udpv6_sendmsg|__sys_sendmsg|__sys_sendto)$"), "UDP send (syscall)"),
    (re.compile(r"^(udp_recvmsg|udpv6_recvmsg|__sys_recvmsg|__sys_recvfrom|___sys_recvmsg)$"), "UDP recv (syscall)"),
    (re.compile(r"^(do_sys_poll|core_sys_select|do_select)$"), "poll/select (waiting for packets)"),
    (re.compile(r"^(do_futex|futex_wake|futex_wait)"), "futex: thread handoffs (wakeups, sleeps), contention"),
    (re.compile(r"^entry_SYSCALL"), "syscall entry/exit, other syscalls"),
]
USER_LEAF = [
    (re.compile(r"memcpy|memmove|memset"), "copies (user memcpy)"),
    (re.compile(r"malloc|free|_int_|tcache|calloc|realloc"), "malloc/free"),
    (re.compile(r"pthread_mutex|lll_lock|lll_unlock|pthread_cond|pthread_rwlock"), "locks (user, uncontended)"),
]
USER_DSO = [
    ("kernel-dataplane", "ipsec-dataplane library + plugin (not crypto)"),
    ("libipsec.so", "strongSwan libipsec (not crypto)"),
    ("libcharon", "charon/libstrongswan (other)"),
    ("libstrongswan", "charon/libstrongswan (other)"),
]


def classify_stack(frames):
    """Category of one perf sample; frames: [(symbol, dso)] from the leaf up."""
    if not frames:
        return "unknown"
    leaf_sym, leaf_dso = frames[0]
    if CRYPTO.search(leaf_sym) or CRYPTO.search(os.path.basename(leaf_dso)):
        return "crypto (AES-GCM, ChaCha20-Poly1305)"
    if "kernel.kallsyms" in leaf_dso:
        kernel = [sym for sym, dso in frames if "kernel.kallsyms" in dso]
        for pattern, category in KERNEL_PATHS:
            if any(pattern.search(sym) for sym in kernel):
                return category
        return "kernel other (interrupts, scheduler)"
    for pattern, category in USER_LEAF:
        if pattern.search(leaf_sym):
            return category
    for needle, category in USER_DSO:
        if needle in leaf_dso:
            return category
    return "other user code (libc, ...)"


def perf_categories(data):
    """(category -> % of samples, top leaf symbols [(%, dso, symbol)]) of a perf.data file."""
    script = subprocess.run(["perf", "script", "-i", data, "-F", "tid,ip,sym,dso"], capture_output=True, text=True,
                            timeout=600).stdout
    counts, leaves, total = {}, {}, 0
    for block in script.split("\n\n"):
        frames = []
        for line in block.splitlines()[1:]:
            match = re.match(r"\s*[0-9a-f]+ (.*) \((.*)\)$", line)
            if match:
                frames.append((match.group(1), match.group(2)))
        if not frames:
            continue
        total += 1
        category = classify_stack(frames)
        counts[category] = counts.get(category, 0) + 1
        leaf = (os.path.basename(frames[0][1]), re.sub(r"\+0x[0-9a-f]+$", "", frames[0][0]))
        leaves[leaf] = leaves.get(leaf, 0) + 1
    if not total:
        return {}, []
    totals = {c: 100 * n / total for c, n in counts.items()}
    top = sorted(((100 * n / total, dso, sym) for (dso, sym), n in leaves.items()), reverse=True)
    return totals, top


def profile(office, setup, direction, nbytes, port, outdir):
    """perf record -g the hq charon during one transfer; returns (categories, top symbols)."""
    data = os.path.join(outdir, "%s-%s-%s.data" % (office.esp_proposal, setup, direction.replace(">", "-")))
    perf = subprocess.Popen(["perf", "record", "-g", "-F", "2000", "-o", data, "-p", str(office.hq.process.pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    try:
        transfer(office, direction, nbytes, port)
    finally:
        perf.send_signal(2)
        perf.wait(30)
    return perf_categories(data)


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proposals", default=",".join(PROPOSALS))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="target length of one transfer")
    parser.add_argument("--pings", type=int, default=200)
    parser.add_argument("--hq-cpu", type=int, default=0)
    parser.add_argument("--other-cpu", type=int, default=1)
    parser.add_argument("--dataplane-so", default=BUILT_SO if os.path.isfile(BUILT_SO) else PLUGIN_SO,
                        help="the plugin of the `dataplane` setups (default: %(default)s)")
    parser.add_argument("--symmetric", action="store_true", help="also both gateways on kernel-dataplane")
    parser.add_argument("--plugin", action="append", default=[], metavar="NAME=PATH",
                        help="another build of the plugin as an extra hq setup")
    parser.add_argument("--only", help="comma-separated setup names to run")
    parser.add_argument("--perf", metavar="DIR", help="perf record the hq charon, data and reports in DIR")
    parser.add_argument("--perf-setups", help="comma-separated setup names to profile (default: all)")
    args = parser.parse_args()

    reason = netns.ensure_strongswan()
    if reason:
        sys.exit(reason)
    os.sched_setaffinity(0, {args.other_cpu})
    tmp = tempfile.mkdtemp(prefix="swan-bench-")
    netns.CHARON = make_wrapper(tmp)
    if args.perf:
        os.makedirs(args.perf, exist_ok=True)
    try:
        with open("/proc/loadavg") as f:
            load = f.read().split()[:3]
        print("CPU: %s, %d CPUs, load average before: %s" % (cpu_model(), os.cpu_count(), " ".join(load)))
        print("pinning: hq charon taskset -c %d; everything else (branch charon, endpoints) CPU %d"
              % (args.hq_cpu, args.other_cpu))
        for proposal in args.proposals.split(","):
            run_proposal(proposal, setups(args), args)
    finally:
        os.unlink(netns.CHARON)
        os.rmdir(tmp)


def run_proposal(proposal, configs, args):
    offices = {}
    try:
        for name, hq, branch in configs:
            office = netns.BranchOffice(esp_proposal=proposal, hq=hq, branch=branch)
            office.start()
            offices[name] = office
            plugins = office.hq.loaded_plugins()
            assert ("kernel-dataplane" in plugins) == (name != "libipsec"), plugins
        # size each transfer from a warm-up transfer (which also fills TCP windows, caches)
        nbytes = {}
        for name, office in offices.items():
            rates = [transfer(office, d, 16 << 20, 5201)[0] for d in ("hq>br", "br>hq")]
            nbytes[name] = int(min(rates) * 1e6 / 8 * args.seconds) // 65536 * 65536 or 65536
        tput = {(n, d): [] for n in offices for d in ("hq>br", "br>hq")}
        cpu = {(n, d): [] for n in offices for d in ("hq>br", "br>hq")}
        rtts = {n: [] for n in offices}
        for run in range(args.runs):
            for name, office in offices.items():
                for direction in ("hq>br", "br>hq"):
                    mbit, load = transfer(office, direction, nbytes[name], 5201 + run % 2)
                    tput[name, direction].append(mbit)
                    cpu[name, direction].append(load)
                rtts[name] += ping_rtts(office, max(1, args.pings // args.runs))
        print()
        print("%s, %d runs per setup and direction, transfers of ~%.0f s (TCP, 1 stream); ping %d x 56 B"
              % (proposal, args.runs, args.seconds, args.pings))
        print("%-12s %-7s %8s %6s %11s %7s %9s %6s | %8s %8s %6s" % (
            "setup", "dir", "Mbit/s", "ratio", "min-max", "hq CPU", "Mbit/core", "ratio", "RTT med", "RTT p99", "ratio"))
        for name in offices:
            rtt_med = statistics.median(rtts[name])
            base_rtt = statistics.median(rtts["libipsec"]) if "libipsec" in rtts else None
            for i, direction in enumerate(("hq>br", "br>hq")):
                values = tput[name, direction]
                med = statistics.median(values)
                per_core = per_core_rate(tput[name, direction], cpu[name, direction])
                base = base_core = None
                if "libipsec" in offices:
                    base = statistics.median(tput["libipsec", direction])
                    base_core = per_core_rate(tput["libipsec", direction], cpu["libipsec", direction])
                ping_cols = ("%6.3fms %6.3fms %6s" % (rtt_med, percentile(rtts[name], 99),
                                                      "%.2f" % (rtt_med / base_rtt) if base_rtt else "-")) if i == 0 else ""
                print("%-12s %-7s %8.0f %6s %5.0f-%-5.0f %6.0f%% %9.0f %6s | %s" % (
                    name, direction, med, "%.2fx" % (med / base) if base else "-", min(values), max(values),
                    statistics.median(cpu[name, direction]), per_core,
                    "%.2fx" % (per_core / base_core) if base_core else "-", ping_cols))
        sys.stdout.flush()
        if args.perf:
            for name, office in offices.items():
                if args.perf_setups and name not in args.perf_setups.split(","):
                    continue
                for direction in ("hq>br", "br>hq"):
                    totals, top = profile(office, name, direction, nbytes[name], 5203, args.perf)
                    print("\nperf, %s %s %s (%% of the hq charon's samples, by stack):" % (proposal, name, direction))
                    for category, pct in sorted(totals.items(), key=lambda kv: -kv[1]):
                        if pct >= 0.5:
                            print("  %5.1f%%  %s" % (pct, category))
                    print("  top symbols:")
                    for pct, dso, sym in top[:12]:
                        print("  %5.1f%%  %-28s %s" % (pct, dso[:28], sym[:70]))
                    sys.stdout.flush()
    finally:
        for office in offices.values():
            office.stop()


if __name__ == "__main__":
    main()
