"""Branch-office IPsec test bed: network namespaces with one strongSwan charon per gateway.

Standard library only; run as root (network namespaces, veth pairs, bind mounts).

Topology (all addresses live only inside the namespaces this module creates)::

    hq-lan               hq (gateway)                 br (gateway)               br-lan
    10.0.0.10 --lan0-- 10.0.0.1 | 192.0.2.1 --wan0-- 192.0.2.2 | 10.1.0.1 --lan0-- 10.1.0.10
    2001:db8::10       2001:db8::1 | 2001:db8:ffff::1   2001:db8:ffff::2 | 2001:db8:1::1  2001:db8:1::10

Each gateway runs its own ``/usr/lib/ipsec/charon`` with a private work directory holding
``strongswan.conf`` (the ``charon.load`` list and plugin sections are parameters, see
:class:`CharonConfig`), ``swanctl.conf`` (rendered from ``examples/strongswan/{hq,branch}``,
the single source of truth for the IPsec configuration), a private ``run/`` bind-mounted
over ``/run`` (charon's pid file path is compiled in), ``charon.vici`` (the vici socket
``swanctl --uri`` talks to) and ``charon.log``.  The system's own strongSwan configuration
(``/etc/strongswan.conf``, ``/etc/swanctl``) is never read and no system service is started.

The kernel of the test machine has no XFRM/ESP crypto, so by default both gateways use
strongSwan's ``kernel-libipsec`` plugin (userspace ESP on a TUN device, ESP always in
UDP 4500).  A gateway can load another kernel-ipsec plugin instead, e.g.::

    hq = CharonConfig(load=LIBIPSEC_LOAD.replace("kernel-libipsec!", "kernel-dataplane!"),
                      plugins={"kernel-dataplane": "some_option = 1"})
    with BranchOffice(esp_proposal="aes128gcm16", hq=hq) as office:
        print(office.ping(office.hq_lan, BRANCH_LAN_HOST, size=1000, count=3))

Run ``python3 netns.py demo`` for a quick interactive check, ``python3 netns.py cleanup``
to remove namespaces and work directories left behind by runs that were killed.  The
``tcp-sink``, ``tcp-send``, ``udp-echo-server`` and ``udp-echo-client`` sub-commands are
the traffic endpoints the helpers start inside the namespaces.
"""

import argparse
import atexit
import hashlib
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
EXAMPLES_DIR = os.path.join(REPO_ROOT, "examples", "strongswan")

CHARON = "/usr/lib/ipsec/charon"
SWANCTL = "swanctl"
PLUGIN_DIR = "/usr/lib/ipsec/plugins"
DEBIAN_PACKAGES = (
    "strongswan-charon",
    "strongswan-swanctl",
    "libcharon-extra-plugins",
    "libstrongswan-standard-plugins",
    "libstrongswan-extra-plugins",
    # the test bed turns UDP segmentation offload off on the WAN veths
    "ethtool",
    # namespaces, veths and routes; the reachability checks (a fresh machine may have
    # neither: CI's had both, a new development machine had no ping)
    "iproute2",
    "iputils-ping",
)

# ESP proposal strings the test bed is exercised with (swanctl `esp_proposals` syntax).
ESP_PROPOSALS = (
    "aes128gcm16",
    "aes256gcm16",
    "chacha20poly1305",
    "aes128-sha256",
    "aes256-sha384",
    "aes256-sha512",
    "aes128-sha1",
)

# charon.load with userspace ESP: kernel-libipsec must come before kernel-netlink (the
# first registered kernel-ipsec interface wins); kernel-netlink still installs the
# addresses and routes.  The `!` marks it critical: if it cannot be loaded charon aborts
# instead of silently falling back to kernel-netlink's XFRM.  openssl comes before aes/gcm
# so that ESP uses OpenSSL's AES-GCM (the gcm plugin's software GCM is ~7x slower).  No
# `updown` (it would call iptables) and no `stroke`.
LIBIPSEC_LOAD = (
    "random nonce drbg openssl aes sha1 sha2 hmac gcm chapoly kdf curve25519 pem pkcs1 "
    "x509 pubkey kernel-libipsec! kernel-netlink socket-default vici"
)

# Addresses of the scenario.
HQ_WAN, BRANCH_WAN = "192.0.2.1", "192.0.2.2"
HQ_WAN6, BRANCH_WAN6 = "2001:db8:ffff::1", "2001:db8:ffff::2"
HQ_LAN_NET, BRANCH_LAN_NET = "10.0.0.0/24", "10.1.0.0/24"
HQ_GW_LAN, HQ_LAN_HOST = "10.0.0.1", "10.0.0.10"
BRANCH_GW_LAN, BRANCH_LAN_HOST = "10.1.0.1", "10.1.0.10"
HQ_GW_LAN6, HQ_LAN_HOST6 = "2001:db8::1", "2001:db8::10"
BRANCH_GW_LAN6, BRANCH_LAN_HOST6 = "2001:db8:1::1", "2001:db8:1::10"

# swanctl values (BranchOffice(swanctl=...)) for IPv6 outside and inside the tunnel.
HQ_LAN_NET6, BRANCH_LAN_NET6 = "2001:db8::/64", "2001:db8:1::/64"
IPV6_SWANCTL = {
    "hq": {"local_addrs": HQ_WAN6, "remote_addrs": BRANCH_WAN6, "local_ts": HQ_LAN_NET6,
           "remote_ts": BRANCH_LAN_NET6},
    "branch": {"local_addrs": BRANCH_WAN6, "remote_addrs": HQ_WAN6, "local_ts": BRANCH_LAN_NET6,
               "remote_ts": HQ_LAN_NET6},
}

# Names of the IKE connection / CHILD_SA in examples/strongswan/*/swanctl.conf.
HQ_IKE_NAME, BRANCH_IKE_NAME, CHILD_NAME = "branch", "hq", "lan"

NS_PREFIX = "swt"  # namespaces are named swt<pid>x<n>-<role>
_NS_RE = re.compile(r"^%s(\d+)x\d+-" % NS_PREFIX)
_scenario_counter = 0


class NetnsError(RuntimeError):
    """A step of building or driving the test bed failed (message says which and why)."""


# --------------------------------------------------------------------------------------
# Installation
# --------------------------------------------------------------------------------------


def _strongswan_missing():
    """What of strongSwan is missing on this machine, as a list of names (empty: nothing)."""
    missing = []
    if not os.access(CHARON, os.X_OK):
        missing.append(CHARON)
    if shutil.which(SWANCTL) is None:
        missing.append(SWANCTL)
    for tool in ("ethtool", "ip", "ping"):
        if shutil.which(tool) is None:
            missing.append(tool)
    for plugin in ("kernel-libipsec", "kernel-netlink", "vici", "chapoly", "curve25519"):
        if not os.path.exists(os.path.join(PLUGIN_DIR, "libstrongswan-%s.so" % plugin)):
            missing.append("plugin " + plugin)
    return missing


def ensure_strongswan():
    """Make sure charon, swanctl, the plugins and the tools (ip, ping, ethtool) the test
    bed needs are installed.

    Installs the Debian packages in :data:`DEBIAN_PACKAGES` with apt-get when something
    is missing (``--no-install-recommends``: the packages ship no systemd unit and no
    ipsec.conf/starter stack; nothing is started).  Returns ``None`` when everything is
    there, else a sentence saying why it cannot be (not root, no apt-get, install failed
    with apt's last lines), so that a caller can fail loudly.
    """
    if os.geteuid() != 0:
        return "the strongSwan test bed needs root (network namespaces), running as uid %d" % os.geteuid()
    if not _strongswan_missing():
        return None
    if shutil.which("apt-get") is None:
        return "strongSwan missing (%s) and no apt-get to install it" % ", ".join(_strongswan_missing())
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", *DEBIAN_PACKAGES]
    result = subprocess.run(install, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        # A stale package index gives 404s: refresh it once and retry.
        update = subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True)
        if update.returncode != 0:
            return "apt-get update failed (no network?): %s" % _tail(update.stderr or update.stdout)
        result = subprocess.run(install, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            return "apt-get install %s failed: %s" % (" ".join(DEBIAN_PACKAGES), _tail(result.stderr or result.stdout))
    missing = _strongswan_missing()
    if missing:
        return "strongSwan packages installed but still missing: %s" % ", ".join(missing)
    return None


def _tail(text, lines=5):
    return " | ".join(text.strip().splitlines()[-lines:])


# --------------------------------------------------------------------------------------
# Small process helpers
# --------------------------------------------------------------------------------------


def _run(argv, timeout=30, check=True, env=None):
    """Run argv, return CompletedProcess; raise NetnsError with stderr when check fails."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise NetnsError("`%s` exited %d: %s" % (" ".join(argv), result.returncode,
                                                  (result.stderr or result.stdout).strip()))
    return result


def netns_exec(ns, argv, **kwargs):
    """Run argv inside network namespace ns (see :func:`_run` for kwargs)."""
    return _run(["ip", "netns", "exec", ns, *argv], **kwargs)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_process(proc, sig=signal.SIGTERM, timeout=5):
    """Signal a Popen we started, wait for it, SIGKILL it if it does not exit."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def delete_namespace(ns):
    """Kill every process left in namespace ns (all started by this module) and delete it."""
    pids = _run(["ip", "netns", "pids", ns], check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    _run(["ip", "netns", "delete", ns], check=False)


def cleanup_stale_runs():
    """Delete namespaces and work directories of earlier runs whose process is gone.

    Only names matching ``swt<pid>x<n>-`` (namespaces, and directories in the temporary
    directory) with a dead ``<pid>`` are touched.  Returns what was deleted.
    """
    deleted = []
    for line in _run(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = _NS_RE.match(name)
        if match and not _pid_alive(int(match.group(1))):
            delete_namespace(name)
            deleted.append(name)
    tmp = tempfile.gettempdir()
    for name in os.listdir(tmp):
        match = _NS_RE.match(name)
        if match and not _pid_alive(int(match.group(1))) and os.path.isdir(os.path.join(tmp, name)):
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
            deleted.append(os.path.join(tmp, name))
    return deleted


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


@dataclass
class CharonConfig:
    """How one gateway's charon is configured (the parts a test may vary).

    load:      the ``charon.load`` plugin list (default: userspace ESP with kernel-libipsec);
               mark the kernel-ipsec plugin critical (``name!``) so charon aborts if it is
               missing.
    plugins:   extra ``charon.plugins`` sections, plugin name -> body text (``key = value``
               lines), e.g. ``{"kernel-dataplane": "lanes = 2"}``.
    settings:  extra lines placed directly in the ``charon { }`` section.
    env:       extra environment variables for charon (e.g. LD_LIBRARY_PATH of a plugin).
    """

    load: str = LIBIPSEC_LOAD
    plugins: dict = field(default_factory=dict)
    settings: str = ""
    env: dict = field(default_factory=dict)


def strongswan_conf(config, workdir):
    """Text of a private strongswan.conf for a charon whose files live in workdir."""
    plugin_sections = "".join(
        "        %s {\n%s\n        }\n" % (name, _indent(body, 12)) for name, body in config.plugins.items())
    return """\
# Generated by integrations/strongswan/netns.py; private to one test charon.
charon {
    load = %(load)s
    # Retransmit fast and give up soon: peers are on one veth, nothing is lost.
    retransmit_timeout = 1.0
    retransmit_tries = 3
%(settings)s
    filelog {
        charon {
            path = %(workdir)s/charon.log
            time_format = %%T
            append = no
            flush_line = yes
            ike_name = yes
            default = 1
            # chd = 4 would log the CHILD_SA keys; 2 shows the SA lifecycle.
            chd = 2
            knl = 2
        }
    }
    plugins {
        vici {
            socket = unix://%(workdir)s/charon.vici
        }
%(plugin_sections)s    }
}
""" % {"load": config.load, "settings": _indent(config.settings, 4), "workdir": workdir,
       "plugin_sections": plugin_sections}


def _indent(text, width):
    return "\n".join((" " * width + line.strip()) if line.strip() else "" for line in text.strip().splitlines())


def render_swanctl(template_path, values, added=None):
    """Text of template_path with the value of each ``key = value`` line in values replaced.

    Every key must occur exactly once in the template (else NetnsError): the examples in
    examples/strongswan are the one source of truth, this only varies a few settings.
    ``added`` ({key: value}) are connection-level settings the template does not have
    (e.g. ``remote_port``), inserted after its single ``version = ...`` line.
    """
    with open(template_path) as f:
        text = f.read()
    if added:
        text, count = re.subn(r"^([ \t]*)(version[ \t]*=.*\n)", lambda m: m.group(0) + "".join(
            "%s%s = %s\n" % (m.group(1), key, value) for key, value in added.items()), text, flags=re.MULTILINE)
        if count != 1:
            raise NetnsError("%s: expected exactly one `version = ...` line, found %d" % (template_path, count))
    for key, value in values.items():
        pattern = re.compile(r"^(\s*%s\s*=\s*).*$" % re.escape(key), re.MULTILINE)
        text, count = pattern.subn(lambda m, v=str(value): m.group(1) + v, text)
        if count != 1:
            raise NetnsError("%s: expected exactly one `%s = ...` line, found %d" % (template_path, key, count))
    return text


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------


@dataclass
class PingResult:
    """Outcome of :meth:`BranchOffice.ping` (RTTs in milliseconds, None if nothing came back)."""

    sent: int
    received: int
    errors: int = 0    # ICMP errors received instead of replies (e.g. fragmentation needed)
    rtt_min: float = None
    rtt_avg: float = None
    rtt_max: float = None
    output: str = ""


@dataclass
class TransferResult:
    """Outcome of a TCP transfer: bytes the receiver counted and seconds from connect to its ack."""

    bytes: int
    seconds: float

    @property
    def mbit_per_s(self):
        return self.bytes * 8 / self.seconds / 1e6


@dataclass
class UdpEchoResult:
    """Outcome of :meth:`BranchOffice.udp_echo`: datagrams sent and correctly echoed."""

    sent: int
    echoed: int
    size: int


@dataclass
class ChildSaCounters:
    """Traffic counters of one installed CHILD_SA as ``swanctl --list-sas`` reports them."""

    name: str
    state: str
    protocol: str
    encap: bool
    spi_in: str
    spi_out: str
    encr_alg: str
    encr_keysize: int
    integ_alg: str
    bytes_in: int
    packets_in: int
    bytes_out: int
    packets_out: int
    local_ts: list
    remote_ts: list
    # seconds since the last packet in / out (charon asks query_policy, then query_sa);
    # None: no packet yet
    use_in: int = None
    use_out: int = None


@dataclass
class WanTraffic:
    """Packets (IPv4 and IPv6) seen on the hq WAN link during a :class:`WanCapture`, by kind.

    esp_in_udp: UDP 4500 (or the capture's NAT-T port) with a non-zero SPI (RFC 3948);
    ike: UDP 500, or the NAT-T port with the non-ESP marker;  esp: bare IP protocol 50;
    cleartext_lan: IP packets with a LAN (10.0.0.0/8, 2001:db8::/64, 2001:db8:1::/64)
    source or destination, i.e. tunnel traffic that leaked unencrypted;  other: anything
    else (ARP, IPv6 neighbour discovery, ...).
    """

    esp_in_udp: int = 0
    esp_in_udp_bytes: int = 0
    ike: int = 0
    esp: int = 0
    cleartext_lan: int = 0
    other: int = 0


# --------------------------------------------------------------------------------------
# swanctl --list-sas --raw
# --------------------------------------------------------------------------------------


def parse_vici_raw(text):
    """Parse ``swanctl --raw`` output into a list of (event-name, dict) pairs.

    The raw format is ``name {key=value key=[a b] section {...}}``, one message per line.
    """
    messages = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        tokens = re.findall(r"[^\s{}\[\]=]+=|[{}\[\]]|[^\s{}\[\]]+", line)
        name_tokens = []
        while tokens and tokens[0] != "{":
            name_tokens.append(tokens.pop(0))
        if not tokens:
            raise NetnsError("cannot parse vici raw line: %r" % line)
        tokens.pop(0)
        messages.append((" ".join(name_tokens), _parse_vici_section(tokens)))
    return messages


def _parse_vici_section(tokens):
    section = {}
    while tokens:
        token = tokens.pop(0)
        if token == "}":
            return section
        if token.endswith("="):
            key = token[:-1]
            if tokens and tokens[0] == "[":
                tokens.pop(0)
                items = []
                while tokens[0] != "]":
                    items.append(tokens.pop(0))
                tokens.pop(0)
                section[key] = items
            elif tokens and tokens[0] not in ("{", "}", "[", "]") and not tokens[0].endswith("="):
                section[key] = tokens.pop(0)
            else:
                section[key] = ""
        elif tokens and tokens[0] == "{":
            tokens.pop(0)
            section[token] = _parse_vici_section(tokens)
        else:
            raise NetnsError("unexpected token %r in vici raw output" % token)
    return section


# --------------------------------------------------------------------------------------
# WAN capture
# --------------------------------------------------------------------------------------


class WanCapture:
    """tcpdump on the hq gateway's WAN veth while the ``with`` block runs.

    ``traffic`` (a :class:`WanTraffic`) is filled in on exit.  Requires tcpdump;
    :func:`tcpdump_available` says whether it is installed.
    """

    def __init__(self, ns, workdir, interface="wan0", natt_port=4500):
        self.ns = ns
        self.natt_port = natt_port
        self.pcap = os.path.join(workdir, "wan-%d.pcap" % time.monotonic_ns())
        self.interface = interface
        self.traffic = None
        self.tcpdump_report = ""
        self._proc = None

    def __enter__(self):
        self._proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "tcpdump", "-n", "--immediate-mode", "-U", "-s", "128",
             "-i", self.interface, "-w", self.pcap], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        line = self._proc.stderr.readline()  # "listening on wan0, ..." once capturing
        if "listening" not in line:
            _stop_process(self._proc)
            raise NetnsError("tcpdump did not start: %s %s" % (line, self._proc.stderr.read()))
        return self

    def __exit__(self, *exc):
        time.sleep(0.2)  # let the last packets reach the file
        _stop_process(self._proc, signal.SIGINT)
        self.tcpdump_report = self._proc.stderr.read().strip()  # "N packets captured ..."
        self._proc.stderr.close()
        self.traffic = classify_pcap(self.pcap, self.natt_port)
        return False


def tcpdump_available():
    return shutil.which("tcpdump") is not None


LAN_NETWORKS = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network(HQ_GW_LAN6 + "/64", strict=False),
                ipaddress.ip_network(BRANCH_GW_LAN6 + "/64", strict=False))


def classify_pcap(path, natt_port=4500):
    """Count the packets of an Ethernet pcap file by kind (see :class:`WanTraffic`).

    IPv4 and IPv6 (without extension headers before UDP/ESP); natt_port is the UDP port
    of ESP in UDP and IKE after the NAT-T switch (charon.port_nat_t).
    """
    traffic = WanTraffic()
    with open(path, "rb") as f:
        header = f.read(24)
        if len(header) < 24:
            return traffic
        endian = "<" if struct.unpack("<I", header[:4])[0] in (0xA1B2C3D4, 0xA1B23C4D) else ">"
        if struct.unpack(endian + "I", header[20:24])[0] != 1:
            raise NetnsError("%s: not an Ethernet capture" % path)
        while True:
            record = f.read(16)
            if len(record) < 16:
                break
            _, _, caplen, wirelen = struct.unpack(endian + "IIII", record)
            frame = f.read(caplen)
            ethertype = struct.unpack("!H", frame[12:14])[0]
            ip = frame[14:]
            if ethertype == 0x0800:
                ihl = (ip[0] & 0x0F) * 4
                proto = ip[9]
                src, dst = ipaddress.ip_address(ip[12:16]), ipaddress.ip_address(ip[16:20])
            elif ethertype == 0x86DD:
                ihl, proto = 40, ip[6]
                src, dst = ipaddress.ip_address(ip[8:24]), ipaddress.ip_address(ip[24:40])
            else:
                traffic.other += 1
                continue
            if any(address in net for address in (src, dst) for net in LAN_NETWORKS
                   if address.version == net.version):
                traffic.cleartext_lan += 1
            elif proto == 50:
                traffic.esp += 1
            elif proto == 17:
                sport, dport = struct.unpack("!HH", ip[ihl:ihl + 4])
                payload = ip[ihl + 8:ihl + 12]
                if natt_port in (sport, dport) and len(payload) == 4 and payload != b"\0\0\0\0":
                    traffic.esp_in_udp += 1
                    traffic.esp_in_udp_bytes += wirelen
                elif natt_port in (sport, dport) or 500 in (sport, dport):
                    traffic.ike += 1
                else:
                    traffic.other += 1
            else:
                traffic.other += 1
    return traffic


# --------------------------------------------------------------------------------------
# The scenario
# --------------------------------------------------------------------------------------


@dataclass
class Gateway:
    """One gateway: its namespace, work directory, charon config and process."""

    role: str          # "hq" or "branch"
    ns: str
    workdir: str
    config: CharonConfig
    template: str      # examples/strongswan/<role>/swanctl.conf
    process: subprocess.Popen = None

    @property
    def vici_uri(self):
        return "unix://%s/charon.vici" % self.workdir

    @property
    def log_path(self):
        return os.path.join(self.workdir, "charon.log")

    def swanctl(self, *args, timeout=30, check=True):
        """Run ``swanctl ARGS --uri <this charon>`` (swanctl itself needs no namespace)."""
        env = dict(os.environ, STRONGSWAN_CONF=os.path.join(self.workdir, "strongswan.conf"))
        result = _run([SWANCTL, *args, "--uri", self.vici_uri], timeout=timeout, check=False, env=env)
        if check and result.returncode != 0:
            # --load-all complains about every credential directory (x509, rsa, ...) the work
            # directory does not have; keep only the lines that say what failed.
            output = [line for line in (result.stdout + result.stderr).splitlines()
                      if not line.startswith("opening directory")]
            raise NetnsError("swanctl %s on %s exited %d:\n%s" % (
                " ".join(args), self.role, result.returncode, "\n".join(output)))
        return result

    def loaded_plugins(self):
        """Plugin names from charon's "loaded plugins:" log line (empty list before it)."""
        try:
            with open(self.log_path) as f:
                for line in f:
                    if "loaded plugins:" in line:
                        return line.split("loaded plugins:", 1)[1].split()
        except OSError:
            pass
        return []

    def log_tail(self, lines=40):
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-lines:])
        except OSError as error:
            return "(no charon log: %s)" % error


class BranchOffice:
    """The branch-office scenario, built on ``start()`` / ``with``, torn down on ``stop()``.

    esp_proposal:  swanctl ``esp_proposals`` of the CHILD_SA on both gateways.
    rekey_time:    swanctl ``rekey_time`` of the CHILD_SA on both gateways (e.g. "30s").
    hq, branch:    :class:`CharonConfig` of each gateway (default: kernel-libipsec).
    swanctl:       {"hq"|"branch": {key: value}}: further swanctl.conf values replaced in
                   one gateway's template (see :func:`render_swanctl`), e.g. wider
                   traffic selectors on the branch, or :data:`IPV6_SWANCTL`.
    swanctl_add:   {"hq"|"branch": {key: value}}: connection settings the template does
                   not have, added (e.g. ``remote_port``).
    keep_workdir:  keep the work directory (configs, logs, pcaps) after stop().

    Teardown kills the charons and every process in the namespaces, deletes the
    namespaces (and so the veths) and, unless kept, the work directory.  It runs on
    stop(), at the end of a ``with`` block, on a failed start() and at interpreter exit.
    """

    def __init__(self, esp_proposal="aes128gcm16", rekey_time="1h", hq=None, branch=None, swanctl=None,
                 keep_workdir=False, swanctl_add=None):
        global _scenario_counter
        _scenario_counter += 1
        self.esp_proposal = esp_proposal
        self.rekey_time = rekey_time
        self.swanctl_values = swanctl or {}
        self.swanctl_added = swanctl_add or {}
        self.keep_workdir = keep_workdir
        self.prefix = "%s%dx%d" % (NS_PREFIX, os.getpid(), _scenario_counter)
        self.workdir = tempfile.mkdtemp(prefix=self.prefix + "-")
        self.hq_lan = self.prefix + "-hqlan"
        self.branch_lan = self.prefix + "-brlan"
        self.hq = Gateway("hq", self.prefix + "-hq", os.path.join(self.workdir, "hq"), hq or CharonConfig(),
                          os.path.join(EXAMPLES_DIR, "hq", "swanctl.conf"))
        self.branch = Gateway("branch", self.prefix + "-br", os.path.join(self.workdir, "branch"),
                              branch or CharonConfig(), os.path.join(EXAMPLES_DIR, "branch", "swanctl.conf"))
        self.namespaces = [self.hq.ns, self.branch.ns, self.hq_lan, self.branch_lan]
        self._created = []
        self._stopped = False

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self, timeout=30, initiate=True):
        """Build the namespaces, start both charons, load the configs, bring up the CHILD_SA
        (unless initiate is false)."""
        atexit.register(self.stop)
        try:
            self._build_topology()
            for gateway in (self.hq, self.branch):
                self._start_charon(gateway)
            for gateway in (self.hq, self.branch):
                self.load_config(gateway)
            if initiate:
                self.initiate(timeout)
        except BaseException:
            self.stop()
            raise

    def load_config(self, gateway):
        """(Re)write the gateway's swanctl.conf from the current settings (esp_proposal,
        rekey_time, swanctl values) and load it into its charon."""
        with open(os.path.join(gateway.workdir, "swanctl.conf"), "w") as f:
            f.write(render_swanctl(gateway.template, {
                "esp_proposals": self.esp_proposal,
                "rekey_time": self.rekey_time,
                # Both sides passive: start() initiates from the branch with swanctl, which
                # waits for the result and reports a failure.
                "start_action": "none",
                **self.swanctl_values.get(gateway.role, {}),
            }, self.swanctl_added.get(gateway.role)))
        gateway.swanctl("--load-all", "--file", os.path.join(gateway.workdir, "swanctl.conf"))

    def stop_charon(self, gateway, timeout=10):
        """Stop one gateway's charon (SIGTERM, as a service stop does); returns its exit code.

        Its log stays in the work directory until stop().
        """
        _stop_process(gateway.process, timeout=timeout)
        code = gateway.process.returncode
        gateway.process = None
        return code

    def restart_charon(self, gateway):
        """Stop one gateway's charon and start a fresh one with the same configuration
        (loaded, nothing initiated); the old log is kept as charon.log.<n>."""
        self.stop_charon(gateway)
        number = 1
        while os.path.exists("%s.%d" % (gateway.log_path, number)):
            number += 1
        os.rename(gateway.log_path, "%s.%d" % (gateway.log_path, number))
        shutil.rmtree(os.path.join(gateway.workdir, "run"))
        self._start_charon(gateway)
        self.load_config(gateway)

    def stop(self):
        """Tear everything down (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self.stop)
        for gateway in (self.hq, self.branch):
            if gateway.process is not None:
                _stop_process(gateway.process)
        for ns in reversed(self._created):
            delete_namespace(ns)
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _build_topology(self):
        for ns in self.namespaces:
            _run(["ip", "netns", "add", ns])
            self._created.append(ns)
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # The veths are created inside the namespaces, so their names never collide.
        _run(["ip", "-n", self.hq.ns, "link", "add", "wan0", "type", "veth", "peer", "name", "wan0",
              "netns", self.branch.ns])
        _run(["ip", "-n", self.hq.ns, "link", "add", "lan0", "type", "veth", "peer", "name", "lan0",
              "netns", self.hq_lan])
        _run(["ip", "-n", self.branch.ns, "link", "add", "lan0", "type", "veth", "peer", "name", "lan0",
              "netns", self.branch_lan])
        plan = [
            (self.hq.ns, "wan0", [HQ_WAN + "/24", HQ_WAN6 + "/64"]),
            (self.hq.ns, "lan0", [HQ_GW_LAN + "/24", HQ_GW_LAN6 + "/64"]),
            (self.branch.ns, "wan0", [BRANCH_WAN + "/24", BRANCH_WAN6 + "/64"]),
            (self.branch.ns, "lan0", [BRANCH_GW_LAN + "/24", BRANCH_GW_LAN6 + "/64"]),
            (self.hq_lan, "lan0", [HQ_LAN_HOST + "/24", HQ_LAN_HOST6 + "/64"]),
            (self.branch_lan, "lan0", [BRANCH_LAN_HOST + "/24", BRANCH_LAN_HOST6 + "/64"]),
        ]
        for ns, ifname, addresses in plan:
            for address in addresses:
                extra = ["nodad"] if ":" in address else []
                _run(["ip", "-n", ns, "addr", "add", address, "dev", ifname, *extra])
            _run(["ip", "-n", ns, "link", "set", ifname, "up"])
        for lan_ns, gw4, gw6 in ((self.hq_lan, HQ_GW_LAN, HQ_GW_LAN6),
                                 (self.branch_lan, BRANCH_GW_LAN, BRANCH_GW_LAN6)):
            _run(["ip", "-n", lan_ns, "route", "add", "default", "via", gw4])
            _run(["ip", "-n", lan_ns, "-6", "route", "add", "default", "via", gw6])
        for gateway in (self.hq, self.branch):
            netns_exec(gateway.ns, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
                                    "net.ipv6.conf.all.forwarding=1"])
            # The WAN stands for a wire: it carries single packets. A veth would pass a
            # UDP GSO send (the plugin sends a TCP burst's ESP packets as one) to the
            # peer whole; without UDP segmentation offload the sender's kernel cuts it
            # into packets before the device, as for a NIC without USO, so captures and
            # the peer see the packets a wire would carry.
            _run(["ip", "netns", "exec", gateway.ns, "ethtool", "-K", "wan0", "tx-udp-segmentation", "off"])

    def _start_charon(self, gateway, timeout=10):
        os.makedirs(os.path.join(gateway.workdir, "run"))
        with open(os.path.join(gateway.workdir, "strongswan.conf"), "w") as f:
            f.write(strongswan_conf(gateway.config, gateway.workdir))
        env = dict(os.environ, STRONGSWAN_CONF=os.path.join(gateway.workdir, "strongswan.conf"), **gateway.config.env)
        with open(os.path.join(gateway.workdir, "charon.out"), "w") as out:
            gateway.process = subprocess.Popen(
                ["ip", "netns", "exec", gateway.ns, "sh", "-c",
                 'mount --bind "$1/run" /run && exec "$2"', "sh", gateway.workdir, CHARON],
                stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if gateway.process.poll() is not None:
                raise NetnsError("charon of %s exited with %d: %s\n%s" % (
                    gateway.role, gateway.process.returncode, self._read(gateway, "charon.out"), gateway.log_tail()))
            if gateway.swanctl("--stats", check=False, timeout=5).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise NetnsError("vici socket of %s did not answer within %ds\n%s" % (
                    gateway.role, timeout, gateway.log_tail()))
            time.sleep(0.1)

    @staticmethod
    def _read(gateway, name):
        try:
            with open(os.path.join(gateway.workdir, name)) as f:
                return f.read().strip()
        except OSError:
            return ""

    def initiate(self, timeout=30):
        """Initiate the CHILD_SA from the branch and wait until both gateways installed it."""
        result = self.branch.swanctl("--initiate", "--ike", BRANCH_IKE_NAME, "--child", CHILD_NAME,
                                     "--timeout", str(timeout), timeout=timeout + 5, check=False)
        if result.returncode != 0:
            raise NetnsError("swanctl --initiate failed (%d): %s\n--- branch log ---\n%s\n--- hq log ---\n%s" % (
                result.returncode, (result.stdout + result.stderr).strip()[-2000:],
                self.branch.log_tail(), self.hq.log_tail()))
        deadline = time.monotonic() + timeout
        while not (self.child_sas(self.hq) and self.child_sas(self.branch)):
            if time.monotonic() > deadline:
                raise NetnsError("CHILD_SA not installed on both gateways\n%s" % self.hq.log_tail())
            time.sleep(0.1)

    # -- observation ---------------------------------------------------------------------

    def list_sas(self, gateway):
        """Parsed ``swanctl --list-sas --raw`` of a gateway: {IKE_SA name: section dict}."""
        output = gateway.swanctl("--list-sas", "--raw").stdout
        sas = {}
        for _, message in parse_vici_raw(output):
            sas.update(message)
        return sas

    def child_sas(self, gateway):
        """The INSTALLED CHILD_SAs of a gateway with their counters (list of ChildSaCounters)."""
        children = []
        for ike in self.list_sas(gateway).values():
            for child_id, child in ike.get("child-sas", {}).items():
                if child.get("state") != "INSTALLED":
                    continue
                children.append(ChildSaCounters(
                    name=child.get("name", child_id), state=child["state"], protocol=child.get("protocol", ""),
                    encap=child.get("encap") == "yes", spi_in=child.get("spi-in", ""),
                    spi_out=child.get("spi-out", ""), encr_alg=child.get("encr-alg", ""),
                    encr_keysize=int(child.get("encr-keysize", 0)),
                    integ_alg=child.get("integ-alg", ""),
                    bytes_in=int(child.get("bytes-in", 0)), packets_in=int(child.get("packets-in", 0)),
                    bytes_out=int(child.get("bytes-out", 0)), packets_out=int(child.get("packets-out", 0)),
                    local_ts=child.get("local-ts", []), remote_ts=child.get("remote-ts", []),
                    use_in=int(child["use-in"]) if "use-in" in child else None,
                    use_out=int(child["use-out"]) if "use-out" in child else None))
        return children

    def capture_wan(self, natt_port=4500):
        """A :class:`WanCapture` of the hq WAN veth (use as ``with office.capture_wan() as cap``)."""
        return WanCapture(self.hq.ns, self.workdir, natt_port=natt_port)

    # -- traffic -------------------------------------------------------------------------

    def ping(self, from_ns, to_addr, size=56, count=3, interval=0.2, pmtudisc=None, timeout=10):
        """ping -s size -c count from namespace from_ns; a PingResult (never raises on loss).

        size is the ICMP payload (the IPv4 packet is 28 bytes longer); pmtudisc is ping's
        ``-M`` ("do": DF set, never fragment; "dont": the gateway may fragment; None: default).
        """
        argv = ["ping", "-n", "-c", str(count), "-s", str(size), "-i", str(interval), "-W", "2",
                "-w", str(timeout)]
        if pmtudisc:
            argv += ["-M", pmtudisc]
        result = netns_exec(from_ns, argv + [to_addr], check=False, timeout=timeout + 5)
        return parse_ping(result.stdout + result.stderr)

    def tcp_transfer(self, client_ns, server_ns, server_addr, nbytes, port=5201, timeout=60, rate=None):
        """Send nbytes over TCP from client_ns to a sink in server_ns; a TransferResult.

        rate: paced at about this many bytes per second (None: as fast as TCP goes).
        """
        server = _start_endpoint(server_ns, ["tcp-sink", "--port", str(port)])
        try:
            client = netns_exec(client_ns, [sys.executable, os.path.abspath(__file__), "tcp-send", "--addr", server_addr,
                                            "--port", str(port), "--bytes", str(nbytes),
                                            *(["--rate", str(rate)] if rate else [])], timeout=timeout)
            report = json.loads(client.stdout)
        finally:
            _finish_endpoint(server)
        if not report["intact"]:
            raise NetnsError(f"TCP transfer {client_ns} -> {server_addr}: the {report['bytes']} bytes "
                             "that arrived are not the bytes sent (SHA-256 differs)")
        return TransferResult(report["bytes"], report["seconds"])

    def udp_echo(self, client_ns, server_ns, server_addr, size=1000, count=20, port=5300, timeout=30):
        """Send count datagrams of size bytes, count the ones echoed back intact; an UdpEchoResult."""
        server = _start_endpoint(server_ns, ["udp-echo-server", "--port", str(port)])
        try:
            client = netns_exec(client_ns, [sys.executable, os.path.abspath(__file__), "udp-echo-client", "--addr",
                                            server_addr, "--port", str(port), "--size", str(size), "--count",
                                            str(count)], timeout=timeout)
            report = json.loads(client.stdout)
        finally:
            _finish_endpoint(server)
        return UdpEchoResult(report["sent"], report["echoed"], size)


def tcp_retransmissions(ns):
    """RetransSegs of namespace ns's TCP stack (/proc/net/snmp is per network namespace)."""
    lines = [line.split() for line in netns_exec(ns, ["cat", "/proc/net/snmp"]).stdout.splitlines()
             if line.startswith("Tcp:")]
    return int(lines[1][lines[0].index("RetransSegs")])


def udp_counters(ns):
    """The Udp: line of namespace ns's /proc/net/snmp as a dict (InDatagrams, RcvbufErrors, ...)."""
    lines = [line.split() for line in netns_exec(ns, ["cat", "/proc/net/snmp"]).stdout.splitlines()
             if line.startswith("Udp:")]
    return dict(zip(lines[0][1:], (int(value) for value in lines[1][1:])))


def parse_ping(output):
    """PingResult from iputils ping -q output."""
    counts = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", output)
    if not counts:
        raise NetnsError("cannot parse ping output: %s" % output.strip())
    errors = re.search(r"\+(\d+) errors", output)
    result = PingResult(int(counts.group(1)), int(counts.group(2)), int(errors.group(1)) if errors else 0,
                        output=output)
    rtt = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/", output)
    if rtt:
        result.rtt_min, result.rtt_avg, result.rtt_max = (float(x) for x in rtt.groups())
    return result


def _start_endpoint(ns, args):
    """Start a server sub-command of this file in ns; returns once it printed "ready"."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        _stop_process(proc)
        raise NetnsError("%s in %s did not start: %s %s" % (args[0], ns, line, proc.stderr.read()))
    return proc


def _finish_endpoint(proc):
    _stop_process(proc)
    proc.stdout.close()
    proc.stderr.close()


# --------------------------------------------------------------------------------------
# Traffic endpoints (run inside a namespace as sub-commands of this file)
# --------------------------------------------------------------------------------------


def _tcp_sink(port):
    """Accept one connection (IPv4 or IPv6), read to EOF, answer the byte count (8 bytes,
    network order) and the SHA-256 of what arrived (32 bytes)."""
    with socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True) as listener:
        print("ready", flush=True)
        conn, _ = listener.accept()
        with conn:
            total = 0
            digest = hashlib.sha256()
            while True:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                total += len(chunk)
                digest.update(chunk)
            conn.sendall(struct.pack("!Q", total) + digest.digest())


def _tcp_send(addr, port, nbytes, rate=None):
    """Send nbytes to a tcp-sink (paced at rate bytes/s if given); print {"bytes":
    acknowledged count, "seconds": duration, "intact": the sink's SHA-256 of what it
    received equals the sender's}.

    The bytes are pseudo-random in a block of a prime length, so a segment cut, merged or
    reordered wrongly on the way changes the digest (a checksum recomputed over wrong data
    would not show it)."""
    block = random.Random(nbytes).randbytes(65521)
    sent_digest = hashlib.sha256()
    offset = 0
    start = time.monotonic()
    with socket.create_connection((addr, port), timeout=30) as conn:
        remaining = nbytes
        while remaining:
            chunk = min(remaining, len(block) - offset if not rate else min(16384, len(block) - offset))
            sent = conn.send(block[offset:offset + chunk])
            sent_digest.update(block[offset:offset + sent])
            offset = (offset + sent) % len(block)
            remaining -= sent
            if rate:
                ahead = (nbytes - remaining) / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
        conn.shutdown(socket.SHUT_WR)
        ack = b""
        while len(ack) < 40:
            chunk = conn.recv(40 - len(ack))
            if not chunk:
                raise NetnsError("tcp-sink closed before acknowledging")
            ack += chunk
    seconds = time.monotonic() - start
    print(json.dumps({"bytes": struct.unpack("!Q", ack[:8])[0], "seconds": seconds,
                      "intact": ack[8:] == sent_digest.digest()}))


def _udp_echo_server(port):
    """Echo every datagram back to its sender until terminated."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", port))
        print("ready", flush=True)
        while True:
            data, peer = sock.recvfrom(65535)
            sock.sendto(data, peer)


def _udp_echo_client(addr, port, size, count):
    """Send count numbered datagrams one at a time, count exact echoes; print JSON."""
    echoed = 0
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        for seq in range(count):
            payload = struct.pack("!I", seq) + bytes((seq + i) & 0xFF for i in range(size - 4))
            sock.sendto(payload, (addr, port))
            try:
                while True:
                    data, _ = sock.recvfrom(65535)
                    if data[:4] == payload[:4]:
                        break
            except socket.timeout:
                continue
            echoed += data == payload
    print(json.dumps({"sent": count, "echoed": echoed}))


def _demo(esp_proposal):
    reason = ensure_strongswan()
    if reason:
        sys.exit("strongSwan not available: " + reason)
    with BranchOffice(esp_proposal=esp_proposal) as office:
        for gateway in (office.hq, office.branch):
            for child in office.child_sas(gateway):
                print(gateway.role, child)
        print(office.ping(office.hq_lan, BRANCH_LAN_HOST, size=1000, count=3))
        print(office.tcp_transfer(office.hq_lan, office.branch_lan, BRANCH_LAN_HOST, 4 << 20))
        print(office.udp_echo(office.branch_lan, office.hq_lan, HQ_LAN_HOST, size=1200, count=10))
        for gateway in (office.hq, office.branch):
            for child in office.child_sas(gateway):
                print(gateway.role, child)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="bring the scenario up, send some traffic, tear it down")
    demo.add_argument("--esp", default="aes128gcm16", choices=ESP_PROPOSALS)
    sub.add_parser("cleanup", help="delete namespaces and work directories left by dead runs")
    sink = sub.add_parser("tcp-sink")
    sink.add_argument("--port", type=int, required=True)
    send = sub.add_parser("tcp-send")
    send.add_argument("--addr", required=True)
    send.add_argument("--port", type=int, required=True)
    send.add_argument("--bytes", type=int, required=True)
    send.add_argument("--rate", type=int, default=None, help="bytes per second (default: unpaced)")
    echo_server = sub.add_parser("udp-echo-server")
    echo_server.add_argument("--port", type=int, required=True)
    echo_client = sub.add_parser("udp-echo-client")
    echo_client.add_argument("--addr", required=True)
    echo_client.add_argument("--port", type=int, required=True)
    echo_client.add_argument("--size", type=int, required=True)
    echo_client.add_argument("--count", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "demo":
        _demo(args.esp)
    elif args.command == "cleanup":
        print("\n".join(cleanup_stale_runs()))
    elif args.command == "tcp-sink":
        _tcp_sink(args.port)
    elif args.command == "tcp-send":
        _tcp_send(args.addr, args.port, args.bytes, args.rate)
    elif args.command == "udp-echo-server":
        _udp_echo_server(args.port)
    elif args.command == "udp-echo-client":
        _udp_echo_client(args.addr, args.port, args.size, args.count)


if __name__ == "__main__":
    main()
