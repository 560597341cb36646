"""The example scripts in examples/python, run as a user would (a subprocess)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import ipsec
from helpers import EXAMPLES, ipv4, key_for, udp, udp4

SCRIPTS = os.path.join(EXAMPLES, "python")


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, os.path.join(SCRIPTS, script), *args],
                          capture_output=True, text=True, timeout=60)


def test_audit_policy_on_the_branch_office_example() -> None:
    p = run("audit_policy.py", os.path.join(EXAMPLES, "branch-office.toml"),
            os.path.join(EXAMPLES, "branch-office-cases.toml"))
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    for section in ("Lint", "Firewall openings between the gateways", "Policy tests"):
        assert section in out
    assert "no findings" in out
    assert "UDP port 500" in out and "IP protocol 50 (ESP, not a port)" in out
    assert "0 failed" in out and "Verdict: OK" in out


def test_audit_policy_reports_problems(tmp_path: Path) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text('[[policy]]\nname = "all"\ndirection = "both"\naction = "bypass"\n'
                      '[[policy]]\nname = "late"\ndirection = "both"\nlocal = "10.0.0.1"\n'
                      'action = "discard"\n')
    cases = tmp_path / "c.toml"
    cases.write_text('[[case]]\nname = "blocked"\ndirection = "inbound"\nsrc = "1.2.3.4"\n'
                     'dst = "10.0.0.1"\nprotocol = "tcp"\nsrc_port = 1\ndst_port = 22\n'
                     'expect = "discard"\n')
    p = run("audit_policy.py", str(policy), str(cases))
    assert p.returncode == 1, p.stdout + p.stderr
    assert "shadowed" in p.stdout and "any-any-bypass" in p.stdout
    assert 'FAIL  blocked' in p.stdout and "PROBLEMS FOUND" in p.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[[policy]]\nname = "x"\naction = "maybe"\n')
    p = run("audit_policy.py", str(bad))
    assert p.returncode == 2 and "invalid" in p.stdout


def write_pcap(path: Path, frames: list[bytes], linktype: int = 101) -> None:
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype))
        for i, fr in enumerate(frames):
            f.write(struct.pack("<IIII", 1_700_000_000 + i, 500, len(fr), len(fr)) + fr)


def read_pcap(path: Path) -> tuple[int, list[bytes]]:
    data = path.read_bytes()
    linktype = struct.unpack("<I", data[20:24])[0]
    frames, off = [], 24
    while off < len(data):
        incl = struct.unpack("<I", data[off + 8:off + 12])[0]
        frames.append(data[off + 16:off + 16 + incl])
        off += 16 + incl
    return int(linktype), frames


# The sending gateway's SAs (what the test encrypts with) and the receiving gateway's
# file (the same SAs, inbound, which decrypt_capture.py reads): a key serves one SA on
# one gateway, so both ends of an SA never share a file.
SENDER_SAS = """
[[sa]]
name = "gw-out"
spi = 0x3000
direction = "outbound"
mode = "tunnel"
cipher = "chacha20-poly1305"
key = "{key}"
tunnel_src = "192.0.2.1"
tunnel_dst = "192.0.2.2"

[[sa]]
name = "natt-out"
spi = 0x3001
direction = "outbound"
mode = "transport"
cipher = "aes-128-cbc"
key = "{cbc}"
integrity = "hmac-sha256-128"
integrity_key = "{hkey}"
udp_encap = [4500, 4500]
""".format(key=key_for("chacha20-poly1305").hex(), cbc=key_for("aes-128-cbc").hex(),
           hkey=bytes(range(32)).hex())

SA_FILE = """
[[sa]]
name = "gw-in"
spi = 0x3000
direction = "inbound"
mode = "tunnel"
cipher = "chacha20-poly1305"
key = "{key}"

[[sa]]
name = "natt-in"
spi = 0x3001
direction = "inbound"
mode = "transport"
cipher = "aes-128-cbc"
key = "{cbc}"
integrity = "hmac-sha256-128"
integrity_key = "{hkey}"
udp_encap = [4500, 4500]
""".format(key=key_for("chacha20-poly1305").hex(), cbc=key_for("aes-128-cbc").hex(),
           hkey=bytes(range(32)).hex())


def test_decrypt_capture(tmp_path: Path) -> None:
    sa_path = tmp_path / "sa.toml"
    sa_path.write_text(SA_FILE)
    sas = ipsec.sas_from_toml(SENDER_SAS)
    plain_a = [udp4(i, size=50 + 10 * i) for i in range(6)]
    plain_b = [udp4(100 + i, size=80) for i in range(3)]
    prot_a = sas["gw-out"].encrypt_many(plain_a)
    prot_b = [sas["natt-out"].encrypt(p) for p in plain_b]
    tampered = prot_a[2][:-1] + bytes([prot_a[2][-1] ^ 1])
    clear = ipv4("10.9.9.9", "10.8.8.8", 17, udp(1, 2, b"clear"))
    stranger, _ = (ipsec.SecurityAssociation(0x9999, "outbound", "transport", "aes-128-gcm",
                                             bytes(20)), None)
    frames = [prot_a[0], prot_b[0], clear, prot_a[1], tampered, prot_a[2], prot_b[1],
              stranger.encrypt(udp4(7)), prot_a[3], prot_a[3], prot_b[2], prot_a[4], prot_a[5]]
    inp, outp = tmp_path / "in.pcap", tmp_path / "out.pcap"
    write_pcap(inp, frames)
    p = run("decrypt_capture.py", "--sa", str(sa_path), str(inp), str(outp))
    assert p.returncode == 0, p.stdout + p.stderr
    linktype, got = read_pcap(outp)
    assert linktype == 101
    want = [plain_a[0], plain_b[0], plain_a[1], plain_a[2], plain_b[1], plain_a[3], plain_b[2],
            plain_a[4], plain_a[5]]
    assert got == want
    out = p.stdout
    assert "13 packets read, 9 written" in out
    assert "sa gw-in            spi 0x00003000: 6 decrypted" in out
    assert "dropped: auth_failed 1, replay 1" in out
    assert "sa natt-in          spi 0x00003001: 3 decrypted" in out
    assert "no SA for SPI 0x00009999: 1" in out and "not ESP: 1" in out

    # --keep-other copies the clear packet; Ethernet framing is kept.
    eth = [b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + f for f in frames]
    write_pcap(inp, eth, linktype=1)
    p = run("decrypt_capture.py", "--keep-other", "--sa", str(sa_path), str(inp), str(outp))
    assert p.returncode == 0, p.stdout + p.stderr
    linktype, got = read_pcap(outp)
    assert linktype == 1 and len(got) == 10
    assert got[2] == eth[2] and got[0] == eth[0][:14] + plain_a[0]


def test_decrypt_capture_bad_input(tmp_path: Path) -> None:
    sa_path = tmp_path / "sa.toml"
    sa_path.write_text(SA_FILE)
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"not a pcap at all, really")
    p = run("decrypt_capture.py", "--sa", str(sa_path), str(junk), str(tmp_path / "o.pcap"))
    assert p.returncode == 2 and "not a classic pcap" in p.stderr
    bad_sa = tmp_path / "bad.toml"
    bad_sa.write_text("[[sa]]\nname = 'x'\n")
    p = run("decrypt_capture.py", "--sa", str(bad_sa), str(junk), str(tmp_path / "o.pcap"))
    assert p.returncode == 2 and "bad SA file" in p.stderr


def test_decrypt_capture_reassembles_fragmented_esp(tmp_path: Path) -> None:
    from scapy.compat import raw
    from scapy.layers.inet import IP, fragment

    sa_path = tmp_path / "sa.toml"
    sa_path.write_text(SA_FILE)
    sas = ipsec.sas_from_toml(SENDER_SAS)
    plain = [udp4(i, size=1400) for i in range(2)]
    esp = [sas["gw-out"].encrypt(p) for p in plain]
    # The first ESP packet is cut on the way by a router (scapy), out of order.
    pieces = [bytes(raw(f)) for f in fragment(IP(esp[0]), fragsize=512)]
    assert len(pieces) == 3
    frames = [pieces[2], pieces[0], esp[1], pieces[1]]
    inp, outp = tmp_path / "in.pcap", tmp_path / "out.pcap"
    write_pcap(inp, frames)
    p = run("decrypt_capture.py", "--sa", str(sa_path), str(inp), str(outp))
    assert p.returncode == 0, p.stdout + p.stderr
    _, got = read_pcap(outp)
    assert got == [plain[1], plain[0]], "the datagram is decrypted where it completed"
    assert "datagrams reassembled from fragments: 1" in p.stdout
