"""ESP packets fragmented on the path, decrypted by `ipsec pcap decrypt`.

scapy protects plaintext packets (its own ESP implementation, tunnel mode, outer IPv4
and outer IPv6), then cuts the ESP packets into fragments with its own `fragment()`
(IPv4) and `fragment6()` (IPv6), as a router on the path would; the fragments are
reordered, one is duplicated, whole packets are mixed in, and one datagram loses a
fragment. `ipsec pcap decrypt --json` must reassemble and decrypt every complete
datagram to its plaintext, report held fragments, the duplicate and the incomplete
datagram, and count them in its summary.

Helpers (SA files, pcaps, the CLI, scapy SAs) are those of test_scapy_live.py.
"""

import os
import subprocess
import sys

import pytest
from scapy.compat import raw
from scapy.layers.inet import IP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.packet import Raw

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_scapy_live as live  # noqa: E402

PAIRS = [("aes-128-gcm", None), ("aes-256-cbc", "hmac-sha256-128"),
         ("chacha20-poly1305", None)]
PAIR_IDS = ["%s+%s" % (c, i) if i else c for c, i in PAIRS]


def ipv4_fragments(esp, ident, fragsize):
    """scapy's fragment() of an ESP packet, under identification `ident`."""
    pkt = IP(esp)
    pkt.id = ident
    del pkt.chksum
    return [raw(f) for f in fragment(pkt, fragsize=fragsize)]


def ipv6_fragments(esp, ident, mtu):
    """scapy's fragment6() of an outer-IPv6 ESP packet (fragment6 wants the Fragment
    header in place, identification `ident`)."""
    pkt = IPv6(esp)
    with_header = (IPv6(src=pkt.src, dst=pkt.dst, hlim=pkt.hlim, tc=pkt.tc, fl=pkt.fl)
                   / IPv6ExtHdrFragment(id=ident, nh=pkt.nh) / Raw(raw(pkt.payload)))
    return [raw(f) for f in fragment6(with_header, mtu)]


def big_packets(tag):
    """Plaintexts large enough to be fragmented, and a small one."""
    return [
        live.sized(lambda p: live.v4(live.tcp(445, p)), 1400, tag + "a"),
        live.sized(lambda p: live.v6(live.tcp(443, p)), 3000, tag + "b"),
        live._freeze(live.v4(live.udp(53, live._pl(40, tag + "c")))),
        live.sized(lambda p: live.v4(live.udp(4789, p)), 2000, tag + "d"),
    ]


@pytest.mark.parametrize("outer", [4, 6], ids=["outer-ipv4", "outer-ipv6"])
@pytest.mark.parametrize("cipher,integ", PAIRS, ids=PAIR_IDS)
def test_scapy_fragmented_esp_is_reassembled_and_decrypted(ipsec_bin, tmp_path, cipher,
                                                             integ, outer):
    sc = live.Scenario("frag", "tunnel", outer, None)
    spi = 0x70000 + PAIRS.index((cipher, integ)) * 16 + outer
    pkts = big_packets("f%d" % outer)
    plain = [raw(p) for p in pkts]
    protected = live.scapy_protect(cipher, integ, spi, sc, pkts, [1, 2, 3, 4])

    def cut(esp, ident):
        if outer == 4:
            return ipv4_fragments(esp, ident, 600)
        return ipv6_fragments(esp, ident, 1280)

    f0, f1, f3 = cut(protected[0], 0x101), cut(protected[1], 0x102), cut(protected[3], 0x104)
    assert len(f0) >= 2 and len(f1) >= 3 and len(f3) >= 2
    # On the wire: datagram 1 reversed and interleaved with datagram 0, a duplicate of
    # one of its fragments, a whole packet in between, and datagram 3 missing its
    # first fragment (it never completes).
    frames = ([f1[-1], f0[0]] + f1[1:-1][::-1] + [protected[2], f1[1], f0[-1], f1[0]]
              + f3[1:] + f0[1:-1])
    # Datagram 0 completes at f0[-1] when it has two fragments, else at its last middle
    # fragment, after datagram 1.
    order = [2, 0, 1] if len(f0) == 2 else [2, 1, 0]
    sa_path, inp, outp = (str(tmp_path / n) for n in ("sa.toml", "in.pcap", "out.pcap"))
    live.write_sa_file(sa_path, [live.sa_entry("in", cipher, integ, spi, "inbound",
                                               "tunnel", replay_window=64)])
    live.write_pcap(inp, frames, live.LINKTYPE_RAW)
    p, records = live.run_cli(ipsec_bin, "decrypt", sa_path, inp, outp)
    assert len(records) == len(frames), p.stderr
    assert p.returncode == 0, p.stderr
    # The duplicate is the only packet refused: the fragment f1[1] came twice.
    errors = [r["error"] for r in records if not r["ok"]]
    assert errors == ["fragment_duplicate"], records
    done = [r for r in records if r["ok"] and r["reassembly"] != "held"]
    held = [r for r in records if r["reassembly"] == "held"]
    # Every fragment but the duplicate and the two that complete a datagram is held.
    assert len(held) == len(frames) - 4, records
    assert all(r["ok"] and r["sa"] is None for r in held)
    assert [r["reassembly"] for r in done] == [None, "complete", "complete"], records
    assert all(r["sa"] == "in" for r in done)
    _, out = live.read_pcap(outp)
    assert len(out) == 3
    for i, (got, k) in enumerate(zip(out, order)):
        live.assert_same_bytes(got, plain[k], "decrypted packet #%d (plaintext %d)" % (i, k))
    # The summary counts the duplicate and the fragments of the incomplete datagram.
    assert "fragment_duplicate" in p.stderr, p.stderr
    assert "fragment_timeout" in p.stderr, p.stderr
    timeouts = [line for line in p.stderr.splitlines() if "fragment_timeout" in line]
    assert timeouts and timeouts[0].split()[-1] == str(len(f3) - 1), p.stderr
    assert "datagrams reassembled from fragments: 2" in p.stderr, p.stderr


def test_strict_fails_on_an_incomplete_datagram(ipsec_bin, tmp_path):
    cipher, integ = "aes-128-gcm", None
    sc = live.Scenario("frag", "tunnel", 4, None)
    spi = 0x71000
    pkts = big_packets("s")[:1]
    protected = live.scapy_protect(cipher, integ, spi, sc, pkts, [1])
    frags = ipv4_fragments(protected[0], 0x55, 600)
    sa_path, inp, outp = (str(tmp_path / n) for n in ("sa.toml", "in.pcap", "out.pcap"))
    live.write_sa_file(sa_path, [live.sa_entry("in", cipher, integ, spi, "inbound", "tunnel")])
    live.write_pcap(inp, frags, live.LINKTYPE_RAW)
    cmd = [ipsec_bin, "pcap", "decrypt", "--strict", "--sa", sa_path, inp, outp]
    whole = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    assert "datagrams reassembled from fragments: 1" in whole.stdout, whole.stdout
    assert live.read_pcap(outp)[1] == [raw(pkts[0])]
    live.write_pcap(inp, frags[1:], live.LINKTYPE_RAW)
    missing = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1, missing.stdout + missing.stderr
    assert "fragment_timeout" in missing.stdout, missing.stdout
