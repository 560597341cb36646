"""`ipsec pcap audit` on captures built by scapy: header-only snapshot lengths (records
shorter than their packets, as `tcpdump -s 54` / `-s 96` write them), packets that
cannot be judged, IKE and NAT-T only between the IPsec peers, ESP of an unknown SPI and
ESP that does not encrypt (scapy's own NULL-encryption and AES-GMAC ESP).

A last test captures real cleartext RDP with `tcpdump -s 54` and `-s 96` in a private
network namespace; it is skipped where tcpdump, `unshare` or root are missing.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import RawPcapWriter

HO, B1 = "192.0.2.1", "198.51.100.2"
HO6, B16 = "2001:db8:ffff::1", "2001:db8:ffff::2"

POLICY = textwrap.dedent("""
    [[policy]]
    name = "ike"
    direction = "both"
    local = ["192.0.2.1", "2001:db8:ffff::1"]
    remote = ["198.51.100.2", "2001:db8:ffff::2"]
    protocol = "udp"
    local_port = 500
    action = "bypass"

    [[policy]]
    name = "ike-nat-t"
    direction = "both"
    local = ["192.0.2.1", "2001:db8:ffff::1"]
    remote = ["198.51.100.2", "2001:db8:ffff::2"]
    protocol = "udp"
    local_port = 4500
    action = "bypass"

    [[policy]]
    name = "rdp"
    direction = "both"
    local = ["10.0.0.10", "2001:db8:a::10"]
    remote = ["10.1.0.0/24", "2001:db8:b::/64"]
    protocol = "tcp"
    local_port = 3389
    action = "protect"
    sa = ["ho-to-b1", "b1-to-ho"]

    [[policy]]
    name = "lan"
    direction = "both"
    local = "10.0.0.0/24"
    remote = "10.1.0.0/24"
    action = "protect"
    sa = ["ho-to-b1", "b1-to-ho"]

    [[policy]]
    name = "rest"
    direction = "both"
    action = "discard"

    [[sa]]
    name = "ho-to-b1"
    spi = 0x1001
    direction = "outbound"
    mode = "tunnel"
    cipher = "aes-128-gcm"
    key = "000102030405060708090a0b0c0d0e0f10111213"
    tunnel_src = "192.0.2.1"
    tunnel_dst = "198.51.100.2"

    [[sa]]
    name = "b1-to-ho"
    spi = 0x2001
    direction = "inbound"
    mode = "tunnel"
    cipher = "aes-128-gcm"
    key = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3"

    [[sa]]
    name = "null-in"
    spi = 0x3001
    direction = "inbound"
    mode = "tunnel"
    cipher = "null"
    integrity = "hmac-sha256-128"
    integrity_key = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

    [[sa]]
    name = "gmac-in"
    spi = 0x3002
    direction = "inbound"
    mode = "tunnel"
    cipher = "aes-128-gmac"
    key = "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3"
""")


@pytest.fixture()
def policy(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return str(path)


def pcap_writer(path, snaplen=65535, linktype=1):
    w = RawPcapWriter(str(path), linktype=linktype, snaplen=snaplen, sync=True)
    w.write_header(None)
    return w


def write_capture(path, frames, snaplen=65535, linktype=1):
    """Writes `frames` (scapy packets or bytes) cut to `snaplen` bytes each, with their
    length on the wire kept in the record (caplen < len), as `tcpdump -s` does."""
    w = pcap_writer(path, snaplen, linktype)
    for i, f in enumerate(frames):
        b = raw(f)
        w.write_packet(b[:snaplen], sec=1700000000 + i, usec=0, wirelen=len(b))
    w.close()
    return str(path)


def audit(ipsec_bin, policy, capture):
    p = subprocess.run([ipsec_bin, "pcap", "audit", "--json", policy, capture],
                       capture_output=True, text=True, timeout=60)
    lines = [json.loads(line) for line in p.stdout.splitlines()]
    assert lines and lines[-1]["kind"] == "summary", p.stdout + p.stderr
    return p, lines[:-1], lines[-1]


def rdp4(payload=b"password " * 40):
    return Ether() / IP(src="10.1.0.15", dst="10.0.0.10") / TCP(
        sport=50000, dport=3389, flags="PA") / Raw(payload)


def rdp6(ext=False, payload=b"desktop " * 40):
    ip = IPv6(src="2001:db8:b::15", dst="2001:db8:a::10")
    if ext:
        ip = ip / IPv6ExtHdrHopByHop()
    return Ether() / ip / TCP(sport=50000, dport=3389, flags="PA") / Raw(payload)


def ike_and_esp():
    """What the gateways exchange: IKE, ESP both ways, IKE on 4500, ESP in UDP."""
    return [
        Ether() / IP(src=HO, dst=B1) / UDP(sport=500, dport=500) / Raw(b"\x11" * 40),
        Ether() / IP(src=B1, dst=HO) / ESP(spi=0x2001, seq=1, data=b"\xa5" * 48),
        Ether() / IP(src=HO, dst=B1) / ESP(spi=0x1001, seq=1, data=b"\xa5" * 48),
        Ether() / IP(src=B1, dst=HO) / UDP(sport=4500, dport=4500) / Raw(b"\0\0\0\0" + b"\x22" * 40),
        Ether() / IP(src=B1, dst=HO) / UDP(sport=4500, dport=4500) / ESP(spi=0x2001, seq=2, data=b"\xa5" * 48),
    ]


@pytest.mark.parametrize("snaplen", [54, 96])
def test_header_only_ipv4_capture_still_finds_the_leak(ipsec_bin, policy, tmp_path, snaplen):
    cap = write_capture(tmp_path / "s.pcap", ike_and_esp() + [rdp4()], snaplen)
    p, findings, summary = audit(ipsec_bin, policy, cap)
    assert p.returncode == 1, p.stderr
    assert [f["kind"] for f in findings] == ["leak"], findings
    assert findings[0]["policy"] == "rdp" and findings[0]["packet"] == 6
    assert summary["verdict"] == "fail"
    assert summary["ike"] == 2 and summary["unreadable"] == 0, summary
    assert summary["truncated"] >= 1, summary


def test_header_only_ipv6(ipsec_bin, policy, tmp_path):
    # -s 96 holds IPv6, a Hop-by-Hop header and the ports: judged, a leak.
    cap = write_capture(tmp_path / "v6.pcap", [rdp6(), rdp6(ext=True)], 96)
    p, findings, summary = audit(ipsec_bin, policy, cap)
    assert p.returncode == 1, p.stderr
    assert [f["kind"] for f in findings] == ["leak", "leak"], findings
    # -s 54 ends with the IPv6 header: the ports are not there. Inconclusive, not "fine".
    cap = write_capture(tmp_path / "v6short.pcap", [rdp6()], 54)
    p, findings, summary = audit(ipsec_bin, policy, cap)
    assert p.returncode == 3, p.stderr
    assert "INCONCLUSIVE" in p.stderr
    assert [(f["kind"], f["reason"]) for f in findings] == [("unreadable", "transport_header")]
    assert findings[0]["captured"] == 54 and findings[0]["length"] == len(raw(rdp6()))
    assert summary["verdict"] == "inconclusive"


def test_records_too_short_to_judge_make_the_audit_inconclusive(ipsec_bin, policy, tmp_path):
    frames = ike_and_esp()
    for cut, reason in [(14 + 10, "ip_header"), (14 + 20 + 2, "transport_header"),
                        (8, "frame")]:
        path = tmp_path / ("cut%d.pcap" % cut)
        w = pcap_writer(path)
        for f in frames:
            w.write_packet(raw(f))
        b = raw(rdp4())
        w.write_packet(b[:cut], wirelen=len(b))
        w.close()
        p, findings, summary = audit(ipsec_bin, policy, str(path))
        assert p.returncode == 3, (reason, p.stderr)
        assert [(f["kind"], f["reason"]) for f in findings] == [("unreadable", reason)]
        assert summary["verdict"] == "inconclusive" and summary["leaks"] == 0
    # The same capture whole: the leak.
    cap = write_capture(tmp_path / "whole.pcap", frames + [rdp4()])
    p, findings, _ = audit(ipsec_bin, policy, cap)
    assert p.returncode == 1 and findings[0]["kind"] == "leak"


def test_ike_ports_outside_the_peers_are_cleartext(ipsec_bin, policy, tmp_path):
    frames = ike_and_esp() + [
        # DNS from port 500 into the protected network, and "ESP in UDP" between two
        # inside hosts: cleartext that the "lan" policy protects.
        Ether() / IP(src="10.1.0.5", dst="10.0.0.53") / UDP(sport=500, dport=53) / Raw(b"query"),
        Ether() / IP(src="10.1.0.5", dst="10.0.0.53") / UDP(sport=4500, dport=4500)
        / ESP(spi=0x2001, seq=3, data=b"\xa5" * 48),
    ]
    p, findings, summary = audit(ipsec_bin, policy, write_capture(tmp_path / "c.pcap", frames))
    assert p.returncode == 1, p.stderr
    assert [(f["kind"], f["policy"]) for f in findings] == [("leak", "lan"), ("leak", "lan")]
    assert summary["ike"] == 2
    assert summary["esp_in_udp"] == [{"spi": "0x00002001", "sa": "b1-to-ho",
                                      "encrypted": True, "packets": 1}]


def scapy_esp(crypt, crypt_key, auth, auth_key, spi, inner):
    sa = SecurityAssociation(ESP, spi=spi, crypt_algo=crypt, crypt_key=crypt_key,
                             auth_algo=auth, auth_key=auth_key,
                             tunnel_header=IP(src=B1, dst=HO))
    return Ether() / sa.encrypt(inner)


def test_unknown_spi_and_unencrypted_esp_fail_the_audit(ipsec_bin, policy, tmp_path):
    inner = IP(src="10.1.0.15", dst="10.0.0.10") / TCP(sport=50000, dport=3389) / Raw(b"secret")
    null = scapy_esp("NULL", None, "SHA2-256-128", bytes(range(32)), 0x3001, inner)
    # scapy's AES-GMAC key: key || 4-byte salt, as RFC 4543 and our SA file have it.
    gmac = scapy_esp("AES-NULL-GMAC", bytes.fromhex(
        "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3"), None, None, 0x3002, inner)
    unknown = scapy_esp("AES-GCM", bytes(20), None, None, 0x9999, inner)
    p, findings, summary = audit(ipsec_bin, policy,
                                 write_capture(tmp_path / "e.pcap", [null, gmac, unknown, unknown]))
    assert p.returncode == 1, p.stderr
    assert [(f["kind"], f["spi"]) for f in findings] == [
        ("unencrypted-esp", "0x00003001"), ("unencrypted-esp", "0x00003002"),
        ("unknown-spi", "0x00009999")]
    assert findings[0]["cipher"] == "null" and findings[1]["cipher"] == "aes-128-gmac"
    assert summary["unknown_spi"] == 2 and summary["unencrypted_esp"] == 2
    # The null-encrypted payload is visible in the capture: the reason for the finding.
    assert b"secret" in raw(null)


LIVE = textwrap.dedent("""
    set -e
    ip link set lo up
    ip addr add 10.0.0.10/32 dev lo
    ip addr add 10.1.0.15/32 dev lo
    tcpdump --immediate-mode -Z root -i lo -s "$SNAPLEN" -U -w "$OUT" 'tcp port 3389' 2>"$OUT.err" &
    TD=$!
    for i in $(seq 100); do grep -q listening "$OUT.err" 2>/dev/null && break; sleep 0.05; done
    "$PYTHON" - <<'PY'
    import socket
    s = socket.socket(); s.bind(("10.0.0.10", 3389)); s.listen()
    c = socket.socket(); c.bind(("10.1.0.15", 0)); c.connect(("10.0.0.10", 3389))
    a, _ = s.accept()
    c.sendall(b"password " * 100); a.recv(4096); a.sendall(b"desktop " * 100); c.recv(4096)
    c.close(); a.close(); s.close()
    PY
    sleep 0.3
    kill -INT $TD
    wait $TD || true
""")


def _live_capture_possible():
    if not shutil.which("tcpdump") or not shutil.which("unshare") or not shutil.which("ip"):
        return "tcpdump, unshare or ip not installed"
    if os.geteuid() != 0:
        return "needs root for a private network namespace"
    return None


@pytest.mark.parametrize("snaplen", [54, 96])
def test_tcpdump_header_only_capture_of_cleartext_rdp(ipsec_bin, tmp_path, repo_root, snaplen):
    why = _live_capture_possible()
    if why:
        pytest.skip(why)
    out = str(tmp_path / ("live-%d.pcap" % snaplen))
    env = dict(os.environ, SNAPLEN=str(snaplen), OUT=out, PYTHON=sys.executable)
    p = subprocess.run(["unshare", "-n", "sh", "-c", LIVE], env=env, capture_output=True,
                       text=True, timeout=60)
    if p.returncode != 0 or not os.path.exists(out) or os.path.getsize(out) <= 24:
        pytest.skip("no live capture here: %s %s" % (p.stderr.strip()[-300:],
                                                        open(out + ".err").read()[-300:]
                                                        if os.path.exists(out + ".err") else ""))
    example = os.path.join(repo_root, "examples", "branch-office.toml")
    r, findings, summary = audit(ipsec_bin, example, out)
    assert r.returncode == 1, r.stderr
    # Every packet of the connection, however short its record, is a leak.
    assert summary["packets"] >= 5, summary
    assert len(findings) == summary["packets"], (findings, summary)
    assert all(f["kind"] == "leak" and f["policy"] == "b1-rdp" for f in findings), findings
    assert summary["verdict"] == "fail" and summary["unreadable"] == 0, summary
    assert summary["truncated"] >= 1, summary
