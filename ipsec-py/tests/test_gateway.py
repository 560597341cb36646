"""ipsec.Gateway: the branch-office scenario of `ipsec demo` through Python.

The head office is examples/branch-office.toml as it stands; branch 1 holds the mirror
image of its tunnel (local and remote swapped, the SAs swapped: the head office's
inbound SA is the branch's outbound SA of the same name, SPI and key, and the other way
round), written out below as `ipsec demo` builds it. Every packet crosses from one
gateway to the other; the counters are asserted exactly.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from typing import Union

import pytest

import ipsec
from helpers import EXAMPLES, ipv4, tcp, udp

HQ_POLICY = os.path.join(EXAMPLES, "branch-office.toml")
HQ_GW, B1_GW = "192.0.2.1", "198.51.100.2"
TERMINAL, MAIL, PRINT, PRINTER = "10.0.0.10", "10.0.0.20", "10.0.0.30", "10.0.0.31"
PC1, PC2, PC3 = "10.1.0.15", "10.1.0.16", "10.1.0.17"


def hq_key(sa: str) -> str:
    """The hex key of one [[sa]] table of the head office's file."""
    with open(HQ_POLICY, encoding="utf-8") as f:
        text = f.read()
    m = re.search(r'name = "%s"\n(?:[^\[]*?\n)?key = "([0-9a-f]+)"' % re.escape(sa), text)
    assert m is not None, "no key for SA %s in %s" % (sa, HQ_POLICY)
    return m.group(1)


def branch1_policy() -> str:
    """Branch 1's gateway: the mirror of the head office's branch-1 tunnel."""
    rules = [
        ("b1-rdp", TERMINAL, 3389),
        ("b1-outlook-https", MAIL, 443),
        ("b1-outlook-rpc", MAIL, 135),
        ("b1-print-smb", PRINT, 445),
        ("b1-print-ipp", PRINT, 631),
        ("b1-print-raw", "10.0.0.30-10.0.0.49", 9100),
    ]
    text = """
[[policy]]
name = "ike"
direction = "both"
local = "%s"
remote = "%s"
protocol = "udp"
local_port = 500
remote_port = 500
action = "bypass"
""" % (B1_GW, HQ_GW)
    for name, server, port in rules:
        text += """
[[policy]]
name = "%s"
direction = "both"
local = "10.1.0.0/24"
remote = "%s"
protocol = "tcp"
local_port = "any"
remote_port = %d
action = "protect"
sa = ["b1-to-ho", "ho-to-b1"]
""" % (name, server, port)
    text += """
[[policy]]
name = "deny-everything-else"
direction = "both"
action = "discard"

[[sa]]
name = "b1-to-ho"
spi = 0x2001
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "%s"
tunnel_src = "%s"
tunnel_dst = "%s"

[[sa]]
name = "ho-to-b1"
spi = 0x1001
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "%s"
replay_window = 1024
""" % (hq_key("b1-to-ho"), B1_GW, HQ_GW, hq_key("ho-to-b1"))
    return text


T0 = 1_780_000_000.0

# The administrators' flows of branch 1 (as `ipsec demo`): name, client, server, port,
# the head office's policy.
ALLOWED = [
    ("terminal services (RDP)", PC1, TERMINAL, 3389, "b1-rdp"),
    ("Outlook (HTTPS)", PC1, MAIL, 443, "b1-outlook-https"),
    ("Outlook (RPC endpoint mapper)", PC2, MAIL, 135, "b1-outlook-rpc"),
    ("printing (SMB)", PC3, PRINT, 445, "b1-print-smb"),
    ("printing (IPP)", PC3, PRINT, 631, "b1-print-ipp"),
    ("printing (raw 9100)", PC3, PRINTER, 9100, "b1-print-raw"),
]


def request(src: str, dst: str, dport: int, payload: bytes = b"hello head office") -> bytes:
    return ipv4(src, dst, 6, tcp(49152 + dport % 1000, dport, payload))


def reply(req_src: str, req_dst: str, dport: int, payload: bytes = b"hello branch") -> bytes:
    return ipv4(req_dst, req_src, 6, tcp(dport, 49152 + dport % 1000, payload))


@pytest.fixture
def gateways() -> tuple[ipsec.Gateway, ipsec.Gateway]:
    """(head office, branch 1), created at T0."""
    hq = ipsec.Gateway(ipsec.Spd.load(HQ_POLICY), now=T0)
    branch = ipsec.Gateway.from_toml(branch1_policy(), now=T0)
    return hq, branch


def drops(stats: dict[str, int]) -> dict[str, int]:
    """The non-zero drop counters of a stats dict."""
    return {k: v for k, v in stats.items() if k not in ("packets", "bytes") and v}


def test_allowed_flows_cross_the_tunnel_both_ways(
    gateways: tuple[ipsec.Gateway, ipsec.Gateway],
) -> None:
    hq, branch = gateways
    sent = received = 0
    for i, (name, client, server, port, policy) in enumerate(ALLOWED):
        now = T0 + i
        secret = b"%s: confidential #%d" % (name.encode(), i)
        req = request(client, server, port, secret)
        out = branch.outbound(req, now=now)
        assert (out.action, out.policy, out.sa) == ("protect", policy, "b1-to-ho"), name
        wire = out.packet
        assert wire is not None
        assert wire[9] == 50, "%s: not ESP on the wire" % name
        assert wire[12:16] == bytes([198, 51, 100, 2]) and wire[16:20] == bytes([192, 0, 2, 1])
        assert secret not in wire, "%s: cleartext on the wire" % name
        assert ipsec.esp_spi(wire) == 0x2001
        got = hq.inbound(wire, now=now)
        assert (got.action, got.policy, got.sa, got.packet) == ("protect", policy, "b1-to-ho", req)
        sent += len(req)

        rep = reply(client, server, port, b"reply to " + secret)
        back = hq.outbound(rep, now=now)
        assert (back.action, back.policy, back.sa) == ("protect", policy, "ho-to-b1"), name
        assert back.packet is not None and b"reply to " not in back.packet
        home = branch.inbound(back.packet, now=now)
        assert (home.action, home.policy, home.sa, home.packet) == (
            "protect", policy, "ho-to-b1", rep)
        received += len(rep)

    n = len(ALLOWED)
    for gw in (hq, branch):
        assert gw.sa_stats("b1-to-ho")["packets"] == n
        assert gw.sa_stats("b1-to-ho")["bytes"] == sent
        assert gw.sa_stats("ho-to-b1")["packets"] == n
        assert gw.sa_stats("ho-to-b1")["bytes"] == received
        assert drops(gw.sa_stats("b1-to-ho")) == {}
        assert drops(gw.stats) == {}
    # Branch 2's SAs at the head office saw nothing.
    assert hq.sa_stats("ho-to-b2")["packets"] == 0
    assert hq.sa_stats("b2-to-ho")["packets"] == 0


def test_refused_traffic_is_discarded_and_counted(
    gateways: tuple[ipsec.Gateway, ipsec.Gateway],
) -> None:
    hq, branch = gateways
    refused = [
        request(PC1, TERMINAL, 23),  # telnet
        request(PC1, TERMINAL, 445),  # SMB to a non-print server
        ipv4(PC1, "10.0.0.53", 17, udp(40000, 53, b"dns")),  # DNS
    ]
    for pkt in refused:
        v = branch.outbound(pkt)
        assert (v.action, v.policy, v.sa, v.packet) == (
            "discard", "deny-everything-else", None, None)
        # The head office drops the same packet when it arrives in the clear.
        v = hq.inbound(pkt)
        assert (v.action, v.policy, v.sa, v.packet) == (
            "discard", "deny-everything-else", None, None)
    # SMB from an unknown subnet, in the clear, at the head office.
    v = hq.inbound(request("172.16.5.5", PRINT, 445))
    assert (v.action, v.policy) == ("discard", "deny-everything-else")
    assert drops(branch.stats) == {"policy_discard": 3}
    assert drops(hq.stats) == {"policy_discard": 4}
    for gw in (hq, branch):
        for name in gw.sa_names:
            s = gw.sa_stats(name)
            assert s["packets"] == 0 and drops(s) == {}, name


def test_ike_is_bypassed_in_the_clear(gateways: tuple[ipsec.Gateway, ipsec.Gateway]) -> None:
    hq, branch = gateways
    ike = ipv4(B1_GW, HQ_GW, 17, udp(500, 500, b"IKE_SA_INIT"))
    out = branch.outbound(ike)
    assert (out.action, out.policy, out.sa, out.packet) == ("bypass", "ike", None, ike)
    got = hq.inbound(ike)
    assert (got.action, got.policy, got.sa, got.packet) == ("bypass", "ike", None, ike)
    assert drops(hq.stats) == {} and drops(branch.stats) == {}


def test_inner_packet_outside_the_sas_policy_raises_policy_mismatch(
    gateways: tuple[ipsec.Gateway, ipsec.Gateway],
) -> None:
    hq, _ = gateways
    # The branch's outbound SA itself, used directly: it encrypts whatever it is given.
    rogue = ipsec.sas_from_toml(branch1_policy(), now=T0)["b1-to-ho"]
    outside = [
        request(PC1, TERMINAL, 23),  # telnet: no policy of b1-to-ho allows it
        request("10.2.0.15", TERMINAL, 3389),  # branch 2's subnet through branch 1's SA
    ]
    for i, inner in enumerate(outside):
        with pytest.raises(ipsec.PolicyMismatchError, match="policy selectors") as exc:
            hq.inbound(rogue.encrypt(inner, now=T0 + i), now=T0 + i)
        assert exc.value.reason == "policy_mismatch"
    s = hq.sa_stats("b1-to-ho")
    assert s["packets"] == 0
    assert drops(s) == {"policy_mismatch": 2}
    assert drops(hq.stats) == {}
    # A packet the SA's policy does allow still goes through after the mismatches.
    ok = request(PC1, TERMINAL, 3389)
    v = hq.inbound(rogue.encrypt(ok, now=T0 + 5), now=T0 + 5)
    assert (v.action, v.policy, v.packet) == ("protect", "b1-rdp", ok)
    assert hq.sa_stats("b1-to-ho")["packets"] == 1


def test_cleartext_that_must_be_protected_is_refused(
    gateways: tuple[ipsec.Gateway, ipsec.Gateway],
) -> None:
    hq, branch = gateways
    rdp = request(PC1, TERMINAL, 3389)
    with pytest.raises(ipsec.PolicyMismatchError, match="must be protected") as exc:
        hq.inbound(rdp)
    assert exc.value.reason == "policy_mismatch"
    reply_in_clear = reply(PC3, PRINT, 445)
    with pytest.raises(ipsec.PolicyMismatchError):
        branch.inbound(reply_in_clear)
    assert drops(hq.stats) == {"policy_mismatch": 1}
    assert drops(branch.stats) == {"policy_mismatch": 1}
    assert hq.sa_stats("b1-to-ho")["policy_mismatch"] == 0


def test_tampered_and_replayed_packets_raise_and_are_counted(
    gateways: tuple[ipsec.Gateway, ipsec.Gateway],
) -> None:
    hq, branch = gateways
    req = request(PC1, MAIL, 443, b"Outlook: quarterly figures attached")
    wire = branch.outbound(req).packet
    assert wire is not None
    forged = bytearray(wire)
    forged[-24] ^= 0x01  # inside the encrypted payload
    with pytest.raises(ipsec.AuthenticationError) as auth:
        hq.inbound(forged)
    assert auth.value.reason == "auth_failed"
    # The forgery did not advance the replay window: the genuine packet is accepted.
    assert hq.inbound(wire).packet == req
    with pytest.raises(ipsec.ReplayError) as replay:
        hq.inbound(wire)
    assert replay.value.reason == "replay"
    s = hq.sa_stats("b1-to-ho")
    assert s["packets"] == 1
    assert drops(s) == {"auth_failed": 1, "replay": 1}
    assert drops(hq.stats) == {}


def test_unknown_spi_and_malformed_packets_count_on_the_gateway(
    gateways: tuple[ipsec.Gateway, ipsec.Gateway],
) -> None:
    hq, _ = gateways
    stranger = ipsec.SecurityAssociation(
        spi=0x9999, direction="outbound", mode="tunnel", cipher="aes-128-gcm",
        key=bytes(20), tunnel_src=B1_GW, tunnel_dst=HQ_GW)
    with pytest.raises(ipsec.UnknownSpiError, match="0x00009999") as exc:
        hq.inbound(stranger.encrypt(request(PC1, TERMINAL, 3389)))
    assert exc.value.reason == "unknown_spi"
    with pytest.raises(ipsec.MalformedPacketError):
        hq.inbound(b"\x45\x00")
    with pytest.raises(ipsec.MalformedPacketError):
        hq.outbound(b"")
    assert drops(hq.stats) == {"unknown_spi": 1, "malformed": 2}


def test_sa_lifetime_follows_the_time_passed_in() -> None:
    text = branch1_policy().replace(
        'tunnel_dst = "%s"\n' % HQ_GW,
        'tunnel_dst = "%s"\nsoft_lifetime = { seconds = 30 }\nsoft_lifetime_jitter = 0\n'
        'hard_lifetime = { seconds = 60 }\n' % HQ_GW)
    branch = ipsec.Gateway.from_toml(text, now=T0)
    req = request(PC1, TERMINAL, 3389)
    assert branch.poll_events(now=T0 + 29) == []
    assert [(n, e.kind, e.limit) for n, e in branch.poll_events(now=T0 + 30)] == [
        ("b1-to-ho", "rekey", "time")]
    assert branch.poll_events() == [], "each event is reported once"
    assert branch.outbound(req, now=T0 + 59).action == "protect"
    with pytest.raises(ipsec.LifetimeExpiredError):
        branch.outbound(req, now=T0 + 61)
    # Without now=, the last time given is used: still expired.
    with pytest.raises(ipsec.LifetimeExpiredError):
        branch.outbound(req)
    assert drops(branch.sa_stats("b1-to-ho")) == {"lifetime_expired": 2}
    assert [(n, e.kind, e.limit) for n, e in branch.poll_events()] == [
        ("b1-to-ho", "expired", "time")]


def test_allocated_spis_are_random_free_and_never_an_inbound_sas(
    gateways: tuple[ipsec.Gateway, ipsec.Gateway],
) -> None:
    hq, _ = gateways
    inbound = {0x2001, 0x2002}  # b1-to-ho, b2-to-ho
    spis = [hq.allocate_spi(now=T0) for _ in range(200)]
    assert all(s >= 256 and s not in inbound for s in spis)
    assert len(set(spis)) == len(spis)
    # Four SPIs around the inbound SAs': the two free ones come out, then none.
    hq.set_spi_range(0x2000, 0x2003)
    assert {hq.allocate_spi(), hq.allocate_spi()} == {0x2000, 0x2003}
    with pytest.raises(ipsec.SpiExhaustedError, match="no free SPI"):
        hq.allocate_spi()
    # A failed negotiation gives its SPI back at once; an inbound SA's is never given.
    assert hq.release_spi(0x2000) and not hq.release_spi(0x2000)
    assert not hq.release_spi(0x2001)
    assert hq.allocate_spi() == 0x2000
    # Reservations run out after 165 s of the caller's clock.
    assert hq.allocate_spi(now=T0 + 165) in (0x2000, 0x2003)
    for lo, hi, field in [(100, 0x3000, "spi_min"), (0x3000, 0x2000, "spi_max")]:
        with pytest.raises(ipsec.ConfigError) as e:
            hq.set_spi_range(lo, hi)
        assert e.value.field == field
    with pytest.raises(TypeError):
        hq.set_spi_range("256", 300)  # type: ignore[arg-type]


def test_threads_share_the_gateways(gateways: tuple[ipsec.Gateway, ipsec.Gateway]) -> None:
    hq, branch = gateways
    threads, per_thread = 4, 50
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(per_thread):
                req = request(PC1, TERMINAL, 3389, b"thread %d packet %d" % (k, i))
                wire = branch.outbound(req).packet
                assert wire is not None
                assert hq.inbound(wire).packet == req
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert errors == []
    assert branch.sa_stats("b1-to-ho")["packets"] == threads * per_thread
    assert hq.sa_stats("b1-to-ho")["packets"] == threads * per_thread
    assert drops(hq.sa_stats("b1-to-ho")) == {}


def test_construction_and_introspection() -> None:
    spd = ipsec.Spd.load(HQ_POLICY)
    hq = ipsec.Gateway(spd)
    assert hq.spd is spd
    assert hq.sa_names == ["ho-to-b1", "b1-to-ho", "ho-to-b2", "b2-to-ho"]
    assert repr(hq) == (
        "Gateway(policies=%d, sas=['ho-to-b1', 'b1-to-ho', 'ho-to-b2', 'b2-to-ho'])" % len(spd))
    loaded = ipsec.Gateway.load(HQ_POLICY, now=5)
    assert loaded.sa_names == hq.sa_names
    assert loaded.spd.policy_names == spd.policy_names
    stats = hq.stats
    assert stats["packets"] == 0 and set(stats) == set(hq.sa_stats("ho-to-b1"))

    v = hq.outbound(reply(PC1, TERMINAL, 3389))
    assert repr(v).startswith("GatewayVerdict(action='protect', policy='b1-rdp', sa='ho-to-b1', packet=<")
    assert repr(v).endswith(" bytes>)")
    with pytest.raises(AttributeError):
        v.action = "bypass"  # type: ignore[misc]
    d = hq.outbound(request(PC1, TERMINAL, 23))
    assert repr(d) == "GatewayVerdict(action='discard', policy='deny-everything-else', sa=None, packet=None)"


def test_bad_arguments_name_the_argument() -> None:
    hq = ipsec.Gateway.load(HQ_POLICY)
    with pytest.raises(TypeError, match="spd must be an ipsec.Spd, got str"):
        ipsec.Gateway("policy text")  # type: ignore[arg-type]
    with pytest.raises(ipsec.ConfigError) as cfg:
        ipsec.Gateway(ipsec.Spd.load(HQ_POLICY), now=-1.0)
    assert cfg.value.field == "now"
    with pytest.raises(TypeError, match="packet must be bytes or bytearray, got str"):
        hq.outbound("packet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="now"):
        hq.inbound(b"", now=float("nan"))
    with pytest.raises(KeyError, match="no SA called 'nope'"):
        hq.sa_stats("nope")
    with pytest.raises(TypeError, match="name must be a str"):
        hq.sa_stats(1)  # type: ignore[arg-type]
    with pytest.raises(ipsec.ConfigError) as missing:
        ipsec.Gateway.load(os.path.join(EXAMPLES, "no-such-file.toml"))
    assert missing.value.field == "path" and "no-such-file" in str(missing.value)
    # Two inbound SAs with one SPI: the core refuses to build the gateway.
    text = branch1_policy() + """
[[sa]]
name = "twin"
spi = 0x1001
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "%s"
""" % ("5c" * 20)
    with pytest.raises(ipsec.ConfigError, match="SPI 0x00001001"):
        ipsec.Gateway.from_toml(text)


def test_batches_give_one_verdict_or_exception_per_packet(
    gateways: tuple[ipsec.Gateway, ipsec.Gateway],
) -> None:
    hq, branch = gateways
    reqs = [request(client, server, port, b"batch %d" % i)
            for i, (_, client, server, port, _) in enumerate(ALLOWED)]
    telnet = request(PC1, TERMINAL, 23)
    ike = ipv4(B1_GW, HQ_GW, 17, udp(500, 500, b"IKE"))
    out = branch.outbound_many([*reqs, telnet, bytearray(ike)], now=T0)
    assert all(isinstance(v, ipsec.GatewayVerdict) for v in out)
    verdicts = [v for v in out if isinstance(v, ipsec.GatewayVerdict)]
    assert [(v.action, v.policy, v.sa) for v in verdicts] == [
        ("protect", policy, "b1-to-ho") for *_, policy in ALLOWED
    ] + [("discard", "deny-everything-else", None), ("bypass", "ike", None)]
    assert verdicts[-1].packet == ike and verdicts[-2].packet is None
    wires = [v.packet for v in verdicts[:len(reqs)]]
    assert all(w is not None for w in wires)
    protected = [w for w in wires if w is not None]
    forged = bytearray(protected[1])
    forged[-24] ^= 0x01
    got = hq.inbound_many([protected[0], bytes(forged), *protected[1:], protected[0],
                           request(PC1, TERMINAL, 3389), b"\x45"], now=T0)
    assert len(got) == len(reqs) + 4
    first = got[0]
    assert isinstance(first, ipsec.GatewayVerdict)
    assert (first.action, first.policy, first.packet) == ("protect", "b1-rdp", reqs[0])
    assert isinstance(got[1], ipsec.AuthenticationError) and got[1].reason == "auth_failed"
    for v, req in zip(got[2:2 + len(reqs) - 1], reqs[1:]):
        assert isinstance(v, ipsec.GatewayVerdict) and v.packet == req
    tail = got[len(reqs) + 1:]
    assert isinstance(tail[0], ipsec.ReplayError)
    assert isinstance(tail[1], ipsec.PolicyMismatchError)  # RDP in the clear
    assert isinstance(tail[2], ipsec.MalformedPacketError)
    assert hq.sa_stats("b1-to-ho")["packets"] == len(reqs)
    assert drops(hq.sa_stats("b1-to-ho")) == {"auth_failed": 1, "replay": 1}
    assert drops(hq.stats) == {"policy_mismatch": 1, "malformed": 1}
    assert drops(branch.stats) == {"policy_discard": 1}
    with pytest.raises(TypeError, match=r"packets\[1\] must be bytes or bytearray, got int"):
        hq.inbound_many([b"", 5])  # type: ignore[list-item]
    assert hq.inbound_many([]) == []


def test_gateway_batches_release_the_gil(
    gateways: tuple[ipsec.Gateway, ipsec.Gateway],
) -> None:
    """As test_threads.test_batches_release_the_gil: with a 10 s switch interval the main
    thread only runs while the worker is inside a batch if the batch released the GIL."""
    hq, branch = gateways
    batch = [request(PC1, TERMINAL, 3389, b"%05d" % i + bytes(400)) for i in range(20000)]
    old = sys.getswitchinterval()
    started = threading.Event()
    results: list[list[Union[ipsec.GatewayVerdict, ipsec.IpsecError]]] = []

    def worker() -> None:
        started.set()
        results.append(branch.outbound_many(batch))

    sys.setswitchinterval(10.0)
    try:
        t = threading.Thread(target=worker)
        t.start()
        started.wait()
        count = 0
        while t.is_alive():
            count += 1
            time.sleep(0)
        t.join()
    finally:
        sys.setswitchinterval(old)
    assert count > 0
    assert len(results) == 1 and len(results[0]) == len(batch)
    assert branch.sa_stats("b1-to-ho")["packets"] == len(batch)


# --- fragments (RFC 4301 section 7, RFC 1858, RFC 3128) -------------------------------
# The policy of issue 10: PROTECT tcp/3389 (and ICMP echo requests) between two subnets,
# then BYPASS everything. Packets and fragments are made with scapy.

from scapy.layers.inet import ICMP, IP, TCP, UDP, defragment, fragment  # noqa: E402
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6  # noqa: E402
from scapy.packet import Raw  # noqa: E402

FRAG_KEYS = ("00" * 16 + "01020304", "11" * 16 + "05060708")
SERVER, CLIENT = "10.0.0.10", "10.1.0.5"
SERVER6, CLIENT6 = "2001:db8::10", "2001:db8:1::5"


def fragment_policy(hq: bool) -> str:
    """The head office's policy, or the branch's mirror image of it."""
    local, remote = ("10.0.0.0/24", "10.1.0.0/24") if hq else ("10.1.0.0/24", "10.0.0.0/24")
    local6, remote6 = (
        ("2001:db8::/64", "2001:db8:1::/64") if hq else ("2001:db8:1::/64", "2001:db8::/64")
    )
    port_key = "local_port" if hq else "remote_port"
    out_key, in_key = FRAG_KEYS if hq else FRAG_KEYS[::-1]
    out_spi, in_spi = (0x1001, 0x2001) if hq else (0x2001, 0x1001)
    src, dst = (HQ_GW, B1_GW) if hq else (B1_GW, HQ_GW)
    return f"""
[[policy]]
name = "rdp"
direction = "both"
local = ["{local}", "{local6}"]
remote = ["{remote}", "{remote6}"]
protocol = "tcp"
{port_key} = 3389
action = "protect"
sa = ["out", "in"]

[[policy]]
name = "ping"
direction = "both"
local = "{local}"
remote = "{remote}"
protocol = "icmp"
icmp_type = 8
action = "protect"
sa = ["out", "in"]

[[policy]]
name = "rest"
direction = "both"
action = "bypass"

[[sa]]
name = "out"
spi = {out_spi}
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "{out_key}"
tunnel_src = "{src}"
tunnel_dst = "{dst}"

[[sa]]
name = "in"
spi = {in_spi}
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "{in_key}"
"""


def fragment_gateways() -> tuple[ipsec.Gateway, ipsec.Gateway]:
    """(head office, branch) with the issue's policy."""
    return (
        ipsec.Gateway.from_toml(fragment_policy(True), now=T0),
        ipsec.Gateway.from_toml(fragment_policy(False), now=T0),
    )


def fragment_drop(gw: ipsec.Gateway, way: str, packet: bytes) -> str:
    """The reason a fragment is refused (it must be refused)."""
    call = gw.inbound if way == "inbound" else gw.outbound
    with pytest.raises(ipsec.FragmentError) as e:
        call(packet, now=T0)
    reason = getattr(e.value, "reason")
    assert isinstance(reason, str)
    return reason


def test_tiny_and_overlapping_cleartext_fragments_are_dropped_not_bypassed() -> None:
    hq, _ = fragment_gateways()
    rdp = bytes(TCP(sport=50000, dport=3389, flags="S"))
    # The same flow unfragmented is refused in the clear: it must come through ESP.
    whole = bytes(IP(src=CLIENT, dst=SERVER, id=1) / TCP(sport=50000, dport=3389))
    with pytest.raises(ipsec.PolicyMismatchError):
        hq.inbound(whole, now=T0)
    # A cleartext first fragment carrying 2 bytes of TCP header (RFC 3128)...
    tiny = bytes(IP(src=CLIENT, dst=SERVER, id=2, proto=6, flags="MF", frag=0) / Raw(rdp[:2]))
    assert fragment_drop(hq, "inbound", tiny) == "fragment_too_short"
    # ... or 8 (ports, no flags: RFC 1858 wants 16).
    eight = bytes(IP(src=CLIENT, dst=SERVER, id=3, proto=6, flags="MF", frag=0) / Raw(rdp[:8]))
    assert fragment_drop(hq, "inbound", eight) == "fragment_too_short"
    # A fragment at offset 8 (fragment offset 1) overlapping the first one's TCP header.
    at8 = bytes(IP(src=CLIENT, dst=SERVER, id=4, proto=6, frag=1) / Raw(b"\x0d\x3d" + b"\0" * 14))
    assert fragment_drop(hq, "inbound", at8) == "fragment_overlap"
    # A UDP datagram: UDP fragments are put back together before any decision (a later
    # one cannot show whether it is ESP in UDP), and one that overlaps another drops the
    # whole datagram (RFC 5722): the held first fragment and the overlapping one.
    udp_frags = fragment(
        IP(src=CLIENT, dst=SERVER, id=5) / UDP(sport=5353, dport=53) / Raw(b"q" * 40), fragsize=16
    )
    assert hq.inbound(bytes(udp_frags[0]), now=T0).action == "reassembling"
    overlap = bytes(IP(src=CLIENT, dst=SERVER, id=5, proto=17, flags="MF", frag=1) / Raw(b"x" * 16))
    assert fragment_drop(hq, "inbound", overlap) == "fragment_overlap"
    stats = hq.stats
    assert (stats["fragment_too_short"], stats["fragment_overlap"]) == (2, 1 + 2)
    assert stats["policy_mismatch"] == 1


def test_later_fragments_of_a_protected_flow_leave_encrypted_with_its_sa() -> None:
    hq, branch = fragment_gateways()
    datagram = IP(src=SERVER, dst=CLIENT, id=0x4242) / TCP(sport=3389, dport=50000) / Raw(
        bytes(range(200))
    )
    frags = fragment(datagram, fragsize=64)
    assert len(frags) == 4
    received = []
    for f in frags:
        v = hq.outbound(bytes(f), now=T0)
        assert (v.action, v.policy, v.sa) == ("protect", "rdp", "out"), f.summary()
        assert v.packet is not None and IP(v.packet).proto == 50
        # The branch decrypts each fragment and accepts it under the datagram's policy.
        back = branch.inbound(v.packet, now=T0)
        assert (back.action, back.policy, back.sa) == ("protect", "rdp", "in")
        assert back.packet == bytes(f)
        received.append(IP(back.packet))
    assert bytes(defragment(received)[0]) == bytes(datagram)
    assert hq.sa_stats("out")["packets"] == 4 and branch.sa_stats("in")["packets"] == 4
    # A later fragment whose first fragment the gateway never saw: "rdp" may cover it,
    # so it is dropped rather than bypassed in the clear.
    stray = fragment(IP(src=SERVER, dst=CLIENT, id=0x4343) / TCP(sport=3389) / Raw(bytes(200)), 64)
    assert fragment_drop(hq, "outbound", bytes(stray[2])) == "fragment_unresolved"
    assert hq.stats["fragment_unresolved"] == 1
    # A later UDP fragment between the subnets: certainly "rest"'s.
    udp = fragment(IP(src=SERVER, dst=CLIENT, id=0x4444) / UDP() / Raw(bytes(200)), 64)
    assert hq.outbound(bytes(udp[2]), now=T0).action == "bypass"
    # The batch call answers the same way.
    results = hq.outbound_many([bytes(stray[1]), bytes(udp[1])], now=T0)
    assert isinstance(results[0], ipsec.FragmentError)
    assert getattr(results[0], "reason") == "fragment_unresolved"
    assert isinstance(results[1], ipsec.GatewayVerdict) and results[1].action == "bypass"


def test_icmp_and_ipv6_fragments() -> None:
    hq, branch = fragment_gateways()
    echo = fragment(IP(src=SERVER, dst=CLIENT, id=7) / ICMP(type=8) / Raw(bytes(100)), 48)
    for f in echo:
        v = hq.outbound(bytes(f), now=T0)
        assert (v.action, v.policy) == ("protect", "ping")
        assert v.packet is not None
        assert branch.inbound(v.packet, now=T0).policy == "ping"
    tiny = bytes(IP(src=SERVER, dst=CLIENT, id=8, proto=1, flags="MF") / Raw(b"\x08\x00\x00\x00"))
    assert fragment_drop(hq, "outbound", tiny) == "fragment_too_short"
    lone = fragment(IP(src=SERVER, dst=CLIENT, id=9) / ICMP(type=8) / Raw(bytes(100)), 48)[1]
    assert fragment_drop(hq, "outbound", bytes(lone)) == "fragment_unresolved"

    # IPv6: a Fragment header, made by scapy's fragment6.
    datagram6 = (
        IPv6(src=SERVER6, dst=CLIENT6)
        / IPv6ExtHdrFragment(id=0xBEEF)
        / TCP(sport=3389, dport=50000)
        / Raw(bytes(300))
    )
    frags6 = fragment6(datagram6, 160)
    assert len(frags6) > 1
    for f in frags6:
        v = hq.outbound(bytes(f), now=T0)
        assert (v.action, v.policy, v.sa) == ("protect", "rdp", "out")
        assert v.packet is not None
        assert branch.inbound(v.packet, now=T0).packet == bytes(f)
    lone6 = fragment6(
        IPv6(src=SERVER6, dst=CLIENT6) / IPv6ExtHdrFragment(id=0xF00D) / TCP() / Raw(bytes(300)),
        160,
    )[1]
    assert fragment_drop(hq, "outbound", bytes(lone6)) == "fragment_unresolved"


def test_fragment_limits_are_settable() -> None:
    hq, _ = fragment_gateways()
    assert hq.fragment_limits == (4096, 30.0)
    frags = fragment(IP(src=SERVER, dst=CLIENT, id=11) / TCP(sport=3389) / Raw(bytes(200)), 64)
    assert hq.outbound(bytes(frags[0]), now=T0).action == "protect"
    # After the lifetime the first fragment is forgotten: the stateless answer.
    assert hq.outbound(bytes(frags[1]), now=T0 + 29.0).action == "protect"
    later = hq.outbound_many([bytes(frags[2])], now=T0 + 30.0)
    assert isinstance(later[0], ipsec.FragmentError)
    assert getattr(later[0], "reason") == "fragment_unresolved"
    # No memory at all.
    hq.set_fragment_limits(max_datagrams=0, lifetime=30.0)
    assert hq.fragment_limits == (0, 30.0)
    again = fragment(IP(src=SERVER, dst=CLIENT, id=12) / TCP(sport=3389) / Raw(bytes(200)), 64)
    assert hq.outbound(bytes(again[0]), now=T0).action == "protect"
    assert fragment_drop(hq, "outbound", bytes(again[1])) == "fragment_unresolved"
    with pytest.raises(ipsec.ConfigError, match="max_datagrams"):
        hq.set_fragment_limits(max_datagrams=(1 << 20) + 1, lifetime=1.0)
    with pytest.raises(ipsec.ConfigError, match="lifetime"):
        hq.set_fragment_limits(max_datagrams=16, lifetime=-1.0)
    with pytest.raises(TypeError):
        hq.set_fragment_limits(max_datagrams="16", lifetime=1.0)  # type: ignore[arg-type]


def test_spd_lookup_packet_answers_fragments_as_the_gateway_does() -> None:
    spd = ipsec.Spd.from_toml(fragment_policy(True))
    first, later = fragment(IP(src=CLIENT, dst=SERVER, id=13) / TCP(dport=3389) / Raw(bytes(99)), 64)[:2]
    assert spd.lookup_packet("inbound", bytes(first)).policy == "rdp"
    with pytest.raises(ipsec.FragmentError) as e:
        spd.lookup_packet("inbound", bytes(later))
    assert getattr(e.value, "reason") == "fragment_unresolved"
    tiny = bytes(IP(src=CLIENT, dst=SERVER, proto=6, flags="MF") / Raw(b"\x01\x02"))
    with pytest.raises(ipsec.FragmentError, match="too short"):
        spd.lookup_packet("inbound", tiny)
