"""strongSwan drives ipsec-dataplane through the kernel-dataplane charon plugin.

The head office gateway (hq) runs charon with OUR plugin (``kernel-dataplane`` in
``charon.load`` instead of kernel-libipsec, before kernel-netlink); the branch runs charon
with strongSwan's kernel-libipsec, unless a test says otherwise. IKEv2 with PSK, tunnel
10.0.0.0/24 <-> 10.1.0.0/24 (or 2001:db8::/64 <-> 2001:db8:1::/64), ESP in UDP.

* every ESP proposal both implement: ping both ways (64, 1000, 1400 bytes of ICMP
  payload), a TCP transfer each way, UDP echoes; the WAN carries only ESP in UDP;
* IPv6 outside and inside the tunnel;
* a NAT-T port other than 4500 (charon.port_nat_t = 4600 on both gateways);
* CHILD_SA rekeying every few seconds under a paced TCP transfer each way, compared
  with libipsec on both gateways in the same run (retransmissions, duration);
* CHILD_SA deleted and re-created from either side, charon restarted on hq;
* the plugin on both gateways;
* hq's counters (our library's, through query_sa) against the branch's (libipsec's);
* proposals the library cannot do are refused (log line with the reason) and a valid
  CHILD_SA works afterwards; garbage on hq's NAT-T port is dropped and counted.

Needs the plugin installed: ``integrations/strongswan/build.sh`` (scripts/test.sh runs
it before these tests). Run as root:
``/work/main/.venv/bin/python -m pytest integrations/strongswan/tests -v``.
"""

import base64
import filecmp
import os
import random
import re
import subprocess
import sys
import threading
import time

import netns
import pytest

PLUGIN = "kernel-dataplane"
INSTALLED_PLUGIN = os.path.join(netns.PLUGIN_DIR, "libstrongswan-%s.so" % PLUGIN)
BUILT_PLUGIN = os.path.join(netns.REPO_ROOT, "target", "strongswan", "build", "libstrongswan-%s.so" % PLUGIN)
DATAPLANE_LOAD = netns.LIBIPSEC_LOAD.replace("kernel-libipsec!", PLUGIN + "!")
assert DATAPLANE_LOAD != netns.LIBIPSEC_LOAD

# esp_proposals -> (encr-alg, encr-keysize, integ-alg) of the installed CHILD_SA.
EXPECTED_ALGORITHMS = {
    "aes128gcm16": ("AES_GCM_16", 128, ""),
    "aes256gcm16": ("AES_GCM_16", 256, ""),
    "chacha20poly1305": ("CHACHA20_POLY1305", 256, ""),
    "aes128-sha256": ("AES_CBC", 128, "HMAC_SHA2_256_128"),
    "aes256-sha384": ("AES_CBC", 256, "HMAC_SHA2_384_192"),
    "aes256-sha512": ("AES_CBC", 256, "HMAC_SHA2_512_256"),
    "aes128-sha1": ("AES_CBC", 128, "HMAC_SHA1_96"),
}
assert set(EXPECTED_ALGORITHMS) == set(netns.ESP_PROPOSALS)

PING_COUNT = 3
ICMP4_HEADERS, ICMP6_HEADERS, UDP4_HEADERS = 20 + 8, 40 + 8, 20 + 8


def dataplane(settings="", plugins=None):
    """CharonConfig of a gateway running our plugin."""
    return netns.CharonConfig(load=DATAPLANE_LOAD, settings=settings, plugins=plugins or {})


@pytest.fixture(scope="session")
def plugin_installed(strongswan):
    """Fails (never skips) when the plugin is not installed, or is not this tree's build."""
    if not os.path.exists(INSTALLED_PLUGIN):
        pytest.fail("%s is not installed: run integrations/strongswan/build.sh" % INSTALLED_PLUGIN, pytrace=False)
    if not os.path.exists(BUILT_PLUGIN):
        pytest.fail("%s not built: run integrations/strongswan/build.sh" % BUILT_PLUGIN, pytrace=False)
    if not filecmp.cmp(INSTALLED_PLUGIN, BUILT_PLUGIN, shallow=False):
        pytest.fail("%s differs from this tree's build %s (another checkout installed its own?): "
                    "run integrations/strongswan/build.sh" % (INSTALLED_PLUGIN, BUILT_PLUGIN), pytrace=False)


def the_child_sas(office):
    """(hq CHILD_SA, branch CHILD_SA): exactly one installed on each gateway."""
    hq, branch = office.child_sas(office.hq), office.child_sas(office.branch)
    assert len(hq) == 1, "hq CHILD_SAs: %r\n%s" % (hq, office.hq.log_tail())
    assert len(branch) == 1, "branch CHILD_SAs: %r\n%s" % (branch, office.branch.log_tail())
    return hq[0], branch[0]


def assert_uses_plugin(gateway, plugin):
    plugins = gateway.loaded_plugins()
    assert plugin in plugins, (gateway.role, plugins, gateway.log_tail())
    other = {"kernel-libipsec", PLUGIN} - {plugin}
    assert not other & set(plugins), (gateway.role, plugins)


def assert_child_sa(office, esp_proposal, v6=False):
    hq, branch = the_child_sas(office)
    encr_alg, keysize, integ_alg = EXPECTED_ALGORITHMS[esp_proposal]
    for child in (hq, branch):
        assert (child.protocol, child.encap) == ("ESP", True), child
        assert (child.encr_alg, child.integ_alg) == (encr_alg, integ_alg), child
        if encr_alg != "CHACHA20_POLY1305":
            assert child.encr_keysize == keysize, child
    assert (hq.spi_in, hq.spi_out) == (branch.spi_out, branch.spi_in)
    local, remote = ((netns.HQ_LAN_NET6, netns.BRANCH_LAN_NET6) if v6 else (netns.HQ_LAN_NET, netns.BRANCH_LAN_NET))
    assert (hq.local_ts, hq.remote_ts) == ([local], [remote])
    assert (branch.local_ts, branch.remote_ts) == ([remote], [local])
    return hq, branch


def pings_both_ways(office, sizes, count=PING_COUNT, v6=False):
    """Ping LAN host to LAN host both ways with each size (-M dont): count replies must come
    before ping's deadline. ping -w sends until it has count replies, so one more request
    than count may have been sent (its reply still in flight when ping stopped); more than
    that means loss."""
    hq_host, branch_host = (netns.HQ_LAN_HOST6, netns.BRANCH_LAN_HOST6) if v6 else (netns.HQ_LAN_HOST,
                                                                                    netns.BRANCH_LAN_HOST)
    for size in sizes:
        for src, dst in ((office.hq_lan, branch_host), (office.branch_lan, hq_host)):
            result = office.ping(src, dst, size=size, count=count, interval=0.1, pmtudisc="dont")
            assert result.received == count and result.sent <= count + 1, result.output


def traffic_both_ways(office, nbytes, v6=False, udp_count=20):
    """A TCP transfer of nbytes each way and udp_count UDP echoes from each side."""
    hq_host, branch_host = (netns.HQ_LAN_HOST6, netns.BRANCH_LAN_HOST6) if v6 else (netns.HQ_LAN_HOST,
                                                                                    netns.BRANCH_LAN_HOST)
    forth = office.tcp_transfer(office.hq_lan, office.branch_lan, branch_host, nbytes)
    back = office.tcp_transfer(office.branch_lan, office.hq_lan, hq_host, nbytes)
    assert (forth.bytes, back.bytes) == (nbytes, nbytes)
    for client, server, addr in ((office.branch_lan, office.hq_lan, hq_host),
                                 (office.hq_lan, office.branch_lan, branch_host)):
        echo = office.udp_echo(client, server, addr, size=1200, count=udp_count)
        assert (echo.sent, echo.echoed) == (udp_count, udp_count)


def assert_wan_only_esp_in_udp(capture, min_packets, min_bytes):
    wan = capture.traffic
    assert wan.cleartext_lan == 0, "LAN packets in the clear on the WAN: %r" % wan
    assert wan.esp == 0, "bare ESP (IP protocol 50) on the WAN: %r" % wan
    assert wan.esp_in_udp >= min_packets, (wan, capture.tcpdump_report)
    assert wan.esp_in_udp_bytes >= min_bytes, (wan, capture.tcpdump_report)


# --------------------------------------------------------------------------------------
# 1. every ESP proposal both implement
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("esp_proposal", netns.ESP_PROPOSALS)
def test_traffic_both_ways(plugin_installed, esp_proposal):
    """hq = our plugin, branch = libipsec: ping 64/1000/1400 both ways (1400 is fragmented
    by the gateway before the tunnel), 2 MiB TCP each way, UDP echoes each way, and on the
    WAN only ESP in UDP 4500 (no LAN address in the clear, no bare ESP)."""
    assert netns.tcpdump_available(), "tcpdump is needed to check the WAN traffic (apt-get install tcpdump)"
    nbytes = 2 << 20
    with netns.BranchOffice(esp_proposal=esp_proposal, hq=dataplane()) as office:
        assert_uses_plugin(office.hq, PLUGIN)
        assert_uses_plugin(office.branch, "kernel-libipsec")
        before = assert_child_sa(office, esp_proposal)
        with office.capture_wan() as capture:
            pings_both_ways(office, (64, 1000, 1400))
            traffic_both_ways(office, nbytes)
        after = the_child_sas(office)
        assert_wan_only_esp_in_udp(capture, 2 * nbytes // 1500, 2 * nbytes)
        # our library's counters (query_sa) saw the traffic both ways
        assert after[0].bytes_out - before[0].bytes_out >= nbytes
        assert after[0].bytes_in - before[0].bytes_in >= nbytes


@pytest.mark.parametrize("offload", ["yes", "no"])
def test_tun_offloads_on_and_off(plugin_installed, offload):
    """The TUN device with offloads (the default: TCP bursts in one read, UDP GSO sends,
    merged writes) and without (`offload = no`, as on a kernel that refuses them: one
    packet per read, send and write): the same traffic passes intact both ways, and the
    log says which it is (IPv6 with offloads: test_ipv6_inner_and_outer)."""
    config = dataplane(plugins={PLUGIN: "offload = %s" % offload})
    with netns.BranchOffice(hq=config) as office:
        with open(office.hq.log_path) as f:
            log = f.read()
        assert "offloads %s" % ("on" if offload == "yes" else "off") in log, office.hq.log_tail()
        pings_both_ways(office, (64, 1400), count=3)
        traffic_both_ways(office, 1 << 20)


# --------------------------------------------------------------------------------------
# 2. IPv6 outside and inside
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("esp_proposal", ["aes256gcm16", "aes128-sha256"])
def test_ipv6_inner_and_outer(plugin_installed, esp_proposal):
    """IKE and ESP in UDP between 2001:db8:ffff::1 and ::2, tunnel 2001:db8::/64 <->
    2001:db8:1::/64. A 1400-byte ICMPv6 payload (1448-byte packet) does not fit the TUN MTU
    of 1400: IPv6 routers do not fragment, the sender learns the path MTU from the
    gateway's Packet Too Big (one warm-up ping) and fragments itself."""
    nbytes = 2 << 20
    with netns.BranchOffice(esp_proposal=esp_proposal, hq=dataplane(), swanctl=netns.IPV6_SWANCTL) as office:
        assert_child_sa(office, esp_proposal, v6=True)
        ike = office.list_sas(office.hq)[netns.HQ_IKE_NAME]
        assert (ike["local-host"], ike["remote-host"]) == (netns.HQ_WAN6, netns.BRANCH_WAN6), ike
        for src, dst in ((office.hq_lan, netns.BRANCH_LAN_HOST6), (office.branch_lan, netns.HQ_LAN_HOST6)):
            office.ping(src, dst, size=1400, count=1, timeout=3, pmtudisc="dont")  # warm-up: PMTU, neighbours
        with office.capture_wan() as capture:
            pings_both_ways(office, (64, 1000, 1400), v6=True)
            traffic_both_ways(office, nbytes, v6=True)
        assert_wan_only_esp_in_udp(capture, 2 * nbytes // 1500, 2 * nbytes)


# --------------------------------------------------------------------------------------
# 3. NAT-T port other than 4500
# --------------------------------------------------------------------------------------


def test_natt_port_4600(plugin_installed):
    """charon.port_nat_t = 4600 on both gateways (the branch talks to hq's 4600 from the
    start, from its own 4600): IKE and ESP in UDP use 4600, traffic passes both ways."""
    port = 4600
    settings = "port_nat_t = %d" % port
    with netns.BranchOffice(hq=dataplane(settings), branch=netns.CharonConfig(settings=settings),
                            swanctl_add={"branch": {"local_port": port, "remote_port": port}}) as office:
        ike = office.list_sas(office.hq)[netns.HQ_IKE_NAME]
        assert (ike["local-port"], ike["remote-port"]) == (str(port), str(port)), ike
        with office.capture_wan(natt_port=port) as capture:
            pings_both_ways(office, (64, 1000))
            traffic_both_ways(office, 1 << 20)
        assert_wan_only_esp_in_udp(capture, 2 * (1 << 20) // 1500, 2 << 20)
        hq, _ = the_child_sas(office)
        assert hq.packets_in > 0 and hq.packets_out > 0


# --------------------------------------------------------------------------------------
# 4. rekeying under traffic, against libipsec
# --------------------------------------------------------------------------------------

REKEY_SECONDS = 20
REKEY_RATE = 500_000  # bytes per second each way (paced: losses, not congestion, retransmit)


def plugin_summary(office):
    """Stop hq's charon; the plugin's data-path counters it logs on the way out:
    (packets out, in, dropped out, dropped in, malformed from TUN)."""
    assert office.stop_charon(office.hq) == 0
    with open(office.hq.log_path) as f:
        stats = re.findall(r"kernel-dataplane: (\d+) packets out, (\d+) in, dropped (\d+) out, (\d+) in, "
                           r"(\d+) malformed", f.read())
    assert stats, office.hq.log_tail()
    return tuple(int(x) for x in stats[-1])


def rekey_run(hq_config, branch_config):
    """A paced TCP transfer each way for REKEY_SECONDS with CHILD_SA rekey_time 4s; returns
    {"spis": hq inbound SPIs seen, "retransmissions": {...}, "seconds": {...}, "logs"}."""
    nbytes = REKEY_RATE * REKEY_SECONDS
    with netns.BranchOffice(rekey_time="4s", hq=hq_config, branch=branch_config) as office:
        spis, results, errors = set(), {}, []
        retrans_before = {ns: netns.tcp_retransmissions(ns) for ns in (office.hq_lan, office.branch_lan)}
        udp_before = {gw.role: netns.udp_counters(gw.ns)["RcvbufErrors"] for gw in (office.hq, office.branch)}

        def transfer(name, client, server, addr, port):
            try:
                results[name] = office.tcp_transfer(client, server, addr, nbytes, port=port, rate=REKEY_RATE,
                                                    timeout=REKEY_SECONDS * 3)
            except Exception as error:  # reported below with the charon logs
                errors.append("%s: %r" % (name, error))

        threads = [threading.Thread(target=transfer, args=("forth", office.hq_lan, office.branch_lan,
                                                           netns.BRANCH_LAN_HOST, 5201)),
                   threading.Thread(target=transfer, args=("back", office.branch_lan, office.hq_lan,
                                                           netns.HQ_LAN_HOST, 5202))]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            spis.update(child.spi_in for child in office.child_sas(office.hq))
            time.sleep(0.5)
        for thread in threads:
            thread.join()
        assert not errors, "%s\n--- hq ---\n%s\n--- branch ---\n%s" % (
            errors, office.hq.log_tail(), office.branch.log_tail())
        retrans = {name: netns.tcp_retransmissions(ns) - retrans_before[ns]
                   for name, ns in (("forth", office.hq_lan), ("back", office.branch_lan))}
        rcvbuf = {gw.role: netns.udp_counters(gw.ns)["RcvbufErrors"] - udp_before[gw.role]
                  for gw in (office.hq, office.branch)}
        summary = plugin_summary(office) if hq_config.load == DATAPLANE_LOAD else None
        return {"spis": spis, "retransmissions": retrans, "rcvbuf_errors": rcvbuf, "plugin": summary, "bytes": {k: r.bytes for k, r in results.items()},
                "seconds": {k: r.seconds for k, r in results.items()}, "nbytes": nbytes}


def test_rekey_under_traffic(plugin_installed, record_baseline):
    """CHILD_SA rekey_time 4s during 20 s of TCP at 0.5 MB/s each way: both transfers
    complete on time (no stall), the SPIs changed several times, our plugin dropped no
    inbound packet, and TCP retransmitted not much more than with libipsec on both
    gateways in the same run. Retransmissions vary a lot from run to run with libipsec
    alone (51 to 156 per direction seen on this machine), so the bound is 2x libipsec's
    total + 20 over both directions, not equality."""
    ours = rekey_run(dataplane(), netns.CharonConfig())
    reference = rekey_run(netns.CharonConfig(), netns.CharonConfig())
    record_baseline("rekey under traffic (%d s, rekey_time 4s): hq=kernel-dataplane %d SPIs, retransmissions %r, "
                    "seconds %s, UDP rcvbuf drops %r | libipsec both %d SPIs, retransmissions %r, seconds %s, "
                    "UDP rcvbuf drops %r" % (
                        REKEY_SECONDS, len(ours["spis"]), ours["retransmissions"],
                        {k: round(v, 1) for k, v in ours["seconds"].items()}, ours["rcvbuf_errors"],
                        len(reference["spis"]), reference["retransmissions"],
                        {k: round(v, 1) for k, v in reference["seconds"].items()}, reference["rcvbuf_errors"]))
    for run in (ours, reference):
        assert run["bytes"] == {"forth": run["nbytes"], "back": run["nbytes"]}, run
        # paced at REKEY_SECONDS: a stall of more than a few seconds shows here
        assert max(run["seconds"].values()) < REKEY_SECONDS + 4, run
        assert len(run["spis"]) >= 4, run  # the first CHILD_SA and at least 3 rekeyings
    assert ours["plugin"][3] == 0, ("the plugin dropped inbound packets", ours)
    ours_total, reference_total = sum(ours["retransmissions"].values()), sum(reference["retransmissions"].values())
    assert ours_total <= 2 * reference_total + 20, (ours, reference)


def routes(ns):
    """`ip route show table all` of a namespace (IPv4), one route per line."""
    return netns.netns_exec(ns, ["ip", "-4", "route", "show", "table", "all"]).stdout.splitlines()


def test_remote_selector_covering_the_peer_gets_an_exclude_route(plugin_installed):
    """The branch offers its WAN subnet too (192.0.2.0/24, which holds the branch gateway
    itself): hq routes that subnet into the TUN device and keeps a host route to the peer
    through the WAN, so IKE and ESP never enter the tunnel they carry (as kernel-libipsec
    does it: the host route sends everything to the peer's own address past the tunnel).
    A LAN host reaches another address of that subnet on the branch through the tunnel
    (nothing in the clear on the WAN), the CHILD_SA rekeys over the excluded path, and
    terminating it removes both routes."""
    wan_net = "192.0.2.0/24"
    ts = {"hq": {"remote_ts": "%s,%s" % (netns.BRANCH_LAN_NET, wan_net)},
          "branch": {"local_ts": "%s,%s" % (netns.BRANCH_LAN_NET, wan_net)}}
    with netns.BranchOffice(hq=dataplane(), swanctl=ts) as office:
        table = routes(office.hq.ns)
        tunnel = [r for r in table if r.startswith(wan_net + " ") and "dev ipsec-dp0" in r]
        exclude = [r for r in table if r.startswith(netns.BRANCH_WAN + " ") and "dev wan0" in r]
        assert tunnel and exclude, table
        other = "192.0.2.77"
        netns.netns_exec(office.branch.ns, ["ip", "addr", "add", other + "/32", "dev", "lo"])
        before = the_child_sas(office)[0]
        with office.capture_wan() as capture:
            result = office.ping(office.hq_lan, other, size=500, count=5, interval=0.1)
            assert result.received == 5, result.output
        assert capture.traffic.cleartext_lan == 0, capture.traffic
        assert capture.traffic.esp_in_udp >= 10, capture.traffic
        after = the_child_sas(office)[0]
        assert after.packets_out - before.packets_out >= 5 and after.packets_in - before.packets_in >= 5
        # IKE still reaches the peer: a CHILD_SA rekeying goes through
        office.hq.swanctl("--rekey", "--child", netns.CHILD_NAME, timeout=15)
        deadline = time.monotonic() + 10
        while the_child_sas(office)[0].spi_in == after.spi_in:
            assert time.monotonic() < deadline, "no rekeying over the excluded path"
            time.sleep(0.2)
        office.hq.swanctl("--terminate", "--child", netns.CHILD_NAME, "--timeout", "10", timeout=15)
        table = routes(office.hq.ns)
        assert not [r for r in table if "ipsec-dp0" in r], table
        assert not [r for r in table if r.startswith(netns.BRANCH_WAN + " ")], table


# --------------------------------------------------------------------------------------
# 5. CHILD_SA deleted and re-created, charon restarted
# --------------------------------------------------------------------------------------


def assert_tunnel_down(office):
    assert office.child_sas(office.hq) == [] and office.child_sas(office.branch) == []
    result = office.ping(office.hq_lan, netns.BRANCH_LAN_HOST, count=1, timeout=2)
    assert result.received == 0, result.output


def test_child_sa_delete_recreate_and_restart(plugin_installed):
    with netns.BranchOffice(hq=dataplane()) as office:
        first, _ = the_child_sas(office)
        spis = {first.spi_in}
        # deleted by the branch, then by hq; re-created by the branch each time
        for deleter in (office.branch, office.hq):
            deleter.swanctl("--terminate", "--child", netns.CHILD_NAME, "--timeout", "10", timeout=15)
            assert_tunnel_down(office)
            office.initiate()
            hq, _ = the_child_sas(office)
            assert hq.spi_in not in spis
            spis.add(hq.spi_in)
            pings_both_ways(office, (64, 1000))
        # charon on hq restarted (SIGTERM, a new charon with the same config): the branch
        # drops its stale IKE_SA and initiates again
        old_pid = office.hq.process.pid
        office.restart_charon(office.hq)
        assert office.hq.process.pid != old_pid
        with open(office.hq.log_path + ".1") as f:
            old_log = f.read()
        # the old charon unloaded the plugin (its data-path summary is logged on the way out)
        assert re.search(r"kernel-dataplane: \d+ packets out", old_log), old_log[-3000:]
        office.branch.swanctl("--terminate", "--ike", netns.BRANCH_IKE_NAME, "--force", "--timeout", "5",
                              timeout=10, check=False)
        office.initiate()
        assert_uses_plugin(office.hq, PLUGIN)
        the_child_sas(office)
        pings_both_ways(office, (64, 1000, 1400))
        traffic_both_ways(office, 1 << 20)


def test_mobike_moves_the_sas(plugin_installed):
    """The branch loses its WAN address 192.0.2.2: MOBIKE moves the IKE_SA and the CHILD_SA
    to the only path left, IPv6 (2001:db8:ffff::2 <-> ::1); charon calls update_sa on hq for
    both SAs and the plugin moves the library's SAs from IPv4 to IPv6 endpoints
    (ipsec_gateway_update_sa; the "now ... == ..." line is logged only when the library
    accepted). The branch's kernel-libipsec cannot change an SA's address family, so the
    branch then rekeys the CHILD_SA (the SPIs change: not asserted equal); traffic passes
    on the new path, as ESP in UDP over IPv6."""
    with netns.BranchOffice(hq=dataplane()) as office:
        before, _ = the_child_sas(office)
        pings_both_ways(office, (64,))
        netns.netns_exec(office.branch.ns, ["ip", "addr", "del", netns.BRANCH_WAN + "/24", "dev", "wan0"])
        deadline = time.monotonic() + 15
        while office.list_sas(office.hq)[netns.HQ_IKE_NAME]["remote-host"] == netns.BRANCH_WAN:
            assert time.monotonic() < deadline, office.hq.log_tail()
            time.sleep(0.2)
        new_peer = office.list_sas(office.hq)[netns.HQ_IKE_NAME]["remote-host"]
        with open(office.hq.log_path) as f:
            log = f.read()
        moved = re.findall(r"kernel-dataplane: SA ([0-9a-f]{8}) now (\S+) == (\S+)", log)
        # the library accepted the move (a refusal is logged as "updating an SA's endpoints
        # failed: ..."; the plugin before ipsec_gateway_update_sa said "plugin only")
        assert "updating an SA's endpoints" not in log and "plugin only" not in log, log[-3000:]
        assert {spi for spi, _, _ in moved} == {before.spi_in, before.spi_out}, (moved, office.hq.log_tail())
        assert all(new_peer in src + dst for _, src, dst in moved), (new_peer, moved)
        with office.capture_wan() as capture:
            pings_both_ways(office, (64, 1000))
            traffic_both_ways(office, 1 << 20)
        assert_wan_only_esp_in_udp(capture, 2 * (1 << 20) // 1500, 2 << 20)
        ike = office.list_sas(office.hq)[netns.HQ_IKE_NAME]
        assert (ike["local-host"], ike["remote-host"]) == (netns.HQ_WAN6, netns.BRANCH_WAN6), ike
        after, _ = the_child_sas(office)
        assert after.bytes_out >= 1 << 20


# --------------------------------------------------------------------------------------
# 6. our plugin on both gateways
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("esp_proposal", ["aes128gcm16", "chacha20poly1305", "aes256-sha512"])
def test_plugin_on_both_gateways(plugin_installed, esp_proposal):
    nbytes = 2 << 20
    with netns.BranchOffice(esp_proposal=esp_proposal, hq=dataplane(), branch=dataplane()) as office:
        assert_uses_plugin(office.hq, PLUGIN)
        assert_uses_plugin(office.branch, PLUGIN)
        before = assert_child_sa(office, esp_proposal)
        with office.capture_wan() as capture:
            pings_both_ways(office, (64, 1000, 1400))
            traffic_both_ways(office, nbytes)
        assert_wan_only_esp_in_udp(capture, 2 * nbytes // 1500, 2 * nbytes)
        after = the_child_sas(office)
        for name in ("bytes_in", "bytes_out"):
            assert getattr(after[0], name) - getattr(before[0], name) >= nbytes
            assert getattr(after[1], name) - getattr(before[1], name) >= nbytes


# --------------------------------------------------------------------------------------
# 7. counters: our library (hq, query_sa) against libipsec (branch)
# --------------------------------------------------------------------------------------


def test_counters_match_libipsec(plugin_installed):
    """After pings, UDP echoes and a TCP transfer (and a pause: nothing in flight), hq's
    packets/bytes out equal the branch's packets/bytes in, and the other way round (both
    count inner packets), except for ESP packets the receiving gateway's kernel dropped
    for a full UDP receive buffer (RcvbufErrors of its namespace, counted here: libipsec's
    charon on the branch does drop some at full TCP speed). The growth matches what was
    sent."""
    with netns.BranchOffice(hq=dataplane()) as office:
        before = the_child_sas(office)
        udp_before = {gw.role: netns.udp_counters(gw.ns) for gw in (office.hq, office.branch)}
        size, count = 1000, 10
        pings_both_ways(office, (size,), count=count)
        echo = office.udp_echo(office.branch_lan, office.hq_lan, netns.HQ_LAN_HOST, size=1200, count=count)
        assert echo.echoed == count
        transfer = office.tcp_transfer(office.hq_lan, office.branch_lan, netns.BRANCH_LAN_HOST, 1 << 20)
        assert transfer.bytes == 1 << 20
        time.sleep(0.5)
        hq, branch = the_child_sas(office)
        assert hq.spi_in == before[0].spi_in and branch.spi_in == before[1].spi_in
        lost = {gw.role: netns.udp_counters(gw.ns)["RcvbufErrors"] - udp_before[gw.role]["RcvbufErrors"]
                for gw in (office.hq, office.branch)}
        delta = {role: {name: getattr(new, name) - getattr(old, name)
                        for name in ("bytes_in", "packets_in", "bytes_out", "packets_out")}
                 for role, old, new in (("hq", before[0], hq), ("branch", before[1], branch))}
        report = {"delta": delta, "dropped_by_receive_buffer": lost}
        for sender, receiver in (("hq", "branch"), ("branch", "hq")):
            missing = delta[sender]["packets_out"] - delta[receiver]["packets_in"]
            missing_bytes = delta[sender]["bytes_out"] - delta[receiver]["bytes_in"]
            assert missing == lost[receiver], report
            # a lost packet is at most one TUN MTU (1400) of inner bytes
            assert (missing_bytes == 0) if missing == 0 else (0 < missing_bytes <= 1400 * missing), report
        # the branch -> hq direction: ping requests and replies, echo requests and TCP acks
        assert delta["hq"]["packets_in"] >= 2 * count + count, report
        assert delta["hq"]["bytes_in"] >= 2 * count * (size + ICMP4_HEADERS) + count * (1200 + UDP4_HEADERS), report
        assert delta["hq"]["bytes_out"] >= (1 << 20) + 2 * count * (size + ICMP4_HEADERS), report


def test_use_times_follow_the_traffic(plugin_installed):
    """charon's use times of our CHILD_SA (what `swanctl --list-sas` shows as use-in /
    use-out, what `inactivity` closes on) come from the plugin's query_policy: the newest
    use of the policy's SAs. None before any packet, counting up while idle, back near
    zero after new traffic."""
    with netns.BranchOffice(hq=dataplane()) as office:
        hq = the_child_sas(office)[0]
        assert (hq.use_in, hq.use_out) == (None, None), hq
        pings_both_ways(office, (100,), count=2)
        time.sleep(3.2)
        hq = the_child_sas(office)[0]
        assert hq.use_in >= 3 and hq.use_out >= 3, hq
        # the request comes in, the reply goes out
        office.ping(office.branch_lan, netns.HQ_LAN_HOST, count=1)
        hq = the_child_sas(office)[0]
        assert hq.use_in <= 1 and hq.use_out <= 1, hq
        time.sleep(2.2)
        hq = the_child_sas(office)[0]
        assert hq.use_in >= 2 and hq.use_out >= 2, hq


# --------------------------------------------------------------------------------------
# 8. bad input
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_proposal", ["aes192gcm16", "aes128ccm16"])
def test_unsupported_proposal_refused_cleanly(plugin_installed, bad_proposal):
    """Both gateways agree on a proposal libipsec can do and our library cannot: hq's plugin
    refuses the SA with a log line saying why, the CHILD_SA fails, charon stays up, and a
    valid CHILD_SA negotiated next works."""
    office = netns.BranchOffice(esp_proposal=bad_proposal, hq=dataplane())
    try:
        office.start(initiate=False)
        with pytest.raises(netns.NetnsError):
            office.initiate(timeout=10)
        with open(office.hq.log_path) as f:
            refusals = [line for line in f if "kernel-dataplane: refusing SA" in line]
        assert refusals, office.hq.log_tail()
        assert any(re.search(r"(AES_GCM|AES_CCM)", line) and ": " in line.split("refusing SA", 1)[1]
                   for line in refusals), refusals
        assert office.hq.process.poll() is None, "hq charon died:\n%s" % office.hq.log_tail()
        assert office.child_sas(office.hq) == []
        office.hq.swanctl("--stats")
        office.esp_proposal = "aes128gcm16"
        for gateway in (office.hq, office.branch):
            office.load_config(gateway)
        office.initiate()
        assert_child_sa(office, "aes128gcm16")
        pings_both_ways(office, (64, 1000))
    finally:
        office.stop()


def test_garbage_on_natt_port(plugin_installed):
    """Datagrams to hq's UDP 4500 that are not valid ESP (random SPIs, hq's own inbound SPI
    with garbage after it, truncated, non-ESP marker with garbage IKE) are dropped: charon
    stays up, the CHILD_SA's counters do not move, the tunnel still carries traffic, and the
    plugin's drop counter (logged when charon stops) counted the ESP-looking ones."""
    rng = random.Random(4500)
    with netns.BranchOffice(hq=dataplane()) as office:
        hq, _ = the_child_sas(office)
        spi = bytes.fromhex(hq.spi_in)
        garbage = []
        garbage += [rng.randbytes(4 + rng.randrange(0, 1400)) for _ in range(100)]  # random SPI
        garbage += [spi + rng.randbytes(rng.randrange(0, 1400)) for _ in range(100)]  # our SPI, garbage
        garbage = [g if g[:4] != b"\0\0\0\0" else b"\1" + g[1:] for g in garbage]
        esp_like = len(garbage)
        garbage += [rng.randbytes(rng.randrange(1, 4)) for _ in range(20)]  # shorter than an SPI
        garbage += [b"\0\0\0\0" + rng.randbytes(rng.randrange(0, 600)) for _ in range(20)]  # "IKE"
        # paced (1 ms apart) so that hq's UDP receive buffer does not overflow
        script = ("import socket,sys,base64,time\n"
                  "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                  "for line in sys.stdin:\n"
                  "    s.sendto(base64.b64decode(line),(%r,4500))\n"
                  "    time.sleep(0.001)\n" % netns.HQ_WAN)
        rcvbuf_before = netns.udp_counters(office.hq.ns)["RcvbufErrors"]
        sent = subprocess.run(["ip", "netns", "exec", office.branch.ns, sys.executable, "-c", script],
                              input="".join(base64.b64encode(g).decode() + "\n" for g in garbage),
                              capture_output=True, text=True, timeout=30)
        assert sent.returncode == 0, sent.stderr
        time.sleep(0.5)
        rcvbuf_lost = netns.udp_counters(office.hq.ns)["RcvbufErrors"] - rcvbuf_before
        assert office.hq.process.poll() is None, "hq charon died:\n%s" % office.hq.log_tail()
        after, _ = the_child_sas(office)
        assert (after.spi_in, after.packets_in, after.bytes_in) == (hq.spi_in, hq.packets_in, hq.bytes_in)
        pings_both_ways(office, (64, 1000))
        dropped_in = plugin_summary(office)[3]
        assert rcvbuf_lost == 0, "hq's kernel dropped %d datagrams (receive buffer full)" % rcvbuf_lost
        assert dropped_in >= esp_like, (dropped_in, esp_like)
