"""The plugin's TCP segmentation (TUN read side) and coalescing (TUN write side), checked
with scapy: the packets go in as scapy builds them, and what comes out must have the
checksums, lengths, sequence numbers and flags scapy computes for it.

The functions (kernel_dataplane/kernel_dataplane_offload.c) are compiled with a small
driver (offload_harness.c); no namespace, no charon, no root needed. The namespace tests
prove the same code against the kernel's own TSO and GRO with a checked TCP transfer.
"""

import os
import random
import shutil
import struct
import subprocess

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.utils import checksum

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = [os.path.join(HERE, "offload_harness.c"),
           os.path.join(HERE, "..", "kernel_dataplane", "kernel_dataplane_offload.c")]

# include/uapi/linux/virtio_net.h
VNET_HDR = struct.Struct("<BBHHHH")
F_NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_TCPV6 = 0, 1, 4


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler is needed to build offload_harness.c"
    out = str(tmp_path_factory.mktemp("offload") / "offload_harness")
    subprocess.run([cc, "-std=gnu11", "-O2", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=all", "-o", out, *SOURCES], check=True)
    return out


def run(harness, mode, data):
    result = subprocess.run([harness, mode], input=data, capture_output=True, check=False)
    assert result.returncode in (0, 2), result.stderr.decode()
    records, out = [], result.stdout
    while out:
        kind, length = out[0:1].decode(), struct.unpack("!I", out[1:5])[0]
        records.append((kind, out[5:5 + length]))
        out = out[5 + length:]
    return result.returncode, records


def payload(n, seed=1):
    return random.Random(seed).randbytes(n)


def ip_layer(v6):
    if v6:
        return IPv6(src="fd00:1::10", dst="fd00:2::10", tc=0, hlim=63)
    return IP(src="10.1.0.10", dst="10.2.0.10", id=1000, flags="DF", ttl=63)


def tcp_checksum_ok(raw, v6):
    """scapy's own verdict: rebuilt with the checksum left to scapy, the same bytes."""
    pkt = (IPv6 if v6 else IP)(raw)
    again = pkt.copy()
    del again[TCP].chksum
    if not v6:
        del again[IP].chksum
    return bytes(again.__class__(bytes(again))) == raw


# --------------------------------------------------------------------------------------
# segmentation (a GSO frame from the TUN device -> segments to encrypt)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("mss,total", [(1348, 1348 * 40 + 17), (1000, 3000), (536, 60000)])
def test_segments_match_what_scapy_computes(harness, v6, mss, total):
    data = payload(total)
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (123456, 654321))]
    big = ip_layer(v6) / TCP(sport=40000, dport=5201, seq=0xFFFFF000, ack=77, flags="PA", window=502,
                             options=opts) / data
    raw = bytes(big)
    if not v6:
        # the kernel hands a GSO frame over with its IPv4 total length and header sum set
        assert IP(raw).len == len(raw)
    header_len = (40 if v6 else 20) + len(bytes(big[TCP])) - total
    vnet = VNET_HDR.pack(F_NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4, header_len, mss, 40 if v6 else 20, 16)
    code, records = run(harness, "tso", vnet + raw)
    assert code == 0
    segments = [r for kind, r in records if kind == "S"]
    assert len(segments) == -(-total // mss)
    joined = b""
    for i, seg in enumerate(segments):
        assert tcp_checksum_ok(seg, v6), f"segment {i}: checksum differs from scapy's"
        pkt = (IPv6 if v6 else IP)(seg)
        last = i == len(segments) - 1
        assert pkt[TCP].seq == (0xFFFFF000 + i * mss) & 0xFFFFFFFF
        assert pkt[TCP].ack == 77 and pkt[TCP].window == 502
        assert pkt[TCP].options == big[TCP].options
        assert str(pkt[TCP].flags) == ("PA" if last else "A")
        assert len(pkt[TCP].payload) == (total - i * mss if last else mss)
        if v6:
            assert pkt[IPv6].plen == len(seg) - 40
        else:
            assert pkt[IP].len == len(seg) and pkt[IP].id == 1000 + i and pkt[IP].flags == "DF"
        joined += bytes(pkt[TCP].payload)
    assert joined == data


@pytest.mark.parametrize("frame", [
    b"",
    b"\x00" * 10,
    VNET_HDR.pack(0, GSO_TCPV4, 40, 1000, 20, 16) + bytes(IP() / UDP() / (b"x" * 3000)),
    VNET_HDR.pack(0, GSO_TCPV4, 40, 0, 20, 16) + bytes(IP() / TCP() / (b"x" * 3000)),
    VNET_HDR.pack(0, GSO_TCPV6, 60, 1000, 40, 16) + bytes(IP() / TCP() / (b"x" * 3000)),
    VNET_HDR.pack(0, GSO_TCPV4, 40, 1000, 20, 16) + bytes(IP() / TCP())[:30],
    VNET_HDR.pack(0, GSO_TCPV4, 40, 1000, 20, 16) + bytes(IP() / TCP()),
    VNET_HDR.pack(0, GSO_TCPV4, 40, 1000, 20, 16) + bytes(IP(flags="MF") / TCP() / (b"x" * 3000)),
])
def test_malformed_gso_frames_are_refused(harness, frame):
    code, records = run(harness, "tso", frame)
    assert (code, records) == (2, [])


# --------------------------------------------------------------------------------------
# coalescing (decrypted segments -> one TUN write)
# --------------------------------------------------------------------------------------


def stream(v6, sizes, seq=1000, flags=None, opts=(), bad=()):
    """Consecutive segments of one TCP stream, with scapy's checksums (`bad`: indexes given
    a wrong one)."""
    packets, data = [], b""
    for i, size in enumerate(sizes):
        chunk = payload(size, seed=i + 7)
        pkt = ip_layer(v6) / TCP(sport=5201, dport=40000, seq=seq, ack=5, flags=(flags or {}).get(i, "A"),
                                 window=100, options=list(opts)) / chunk
        raw = bytes(pkt)
        if i in bad:
            tcp_at = 40 if v6 else 20
            raw = raw[:tcp_at + 16] + bytes([raw[tcp_at + 16] ^ 0x55]) + raw[tcp_at + 17:]
        packets.append(raw)
        data += chunk
        seq += size
    return packets, data


def frames_in(packets):
    return b"".join(struct.pack("!I", len(p)) + p for p in packets)


def check_merged(frame, v6, expect_payload, expect_segments, mss):
    """A merged frame: its virtio_net_hdr asks for TCP segmentation at mss with a partial
    checksum; completing that checksum as the kernel will must give what scapy computes."""
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET_HDR.unpack(frame[:10])
    raw = frame[10:]
    ip_len = 40 if v6 else 20
    assert (flags, gso_type, gso_size, csum_start, csum_offset) == (
        F_NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4, mss, ip_len, 16)
    pkt = (IPv6 if v6 else IP)(raw)
    assert hdr_len == ip_len + len(bytes(pkt[TCP])) - len(pkt[TCP].payload)
    assert bytes(pkt[TCP].payload) == expect_payload
    assert -(-len(expect_payload) // mss) == expect_segments
    if v6:
        assert pkt[IPv6].plen == len(raw) - 40
    else:
        assert pkt[IP].len == len(raw)
        again = IP(raw)
        del again.chksum
        assert IP(bytes(again)).chksum == pkt[IP].chksum, "IPv4 header checksum"
    # the kernel's completion: sum from csum_start to the end, the field holding the
    # partial sum; store the complement
    completed = (~checksum(raw[csum_start:])) & 0xFFFF
    completed = 0xFFFF if completed == 0 else completed
    full = raw[:csum_start + 16] + struct.pack("!H", (~completed) & 0xFFFF) + raw[csum_start + 18:]
    assert tcp_checksum_ok(full, v6), "the completed checksum is not the one scapy computes"


@pytest.mark.parametrize("v6", [False, True])
def test_one_stream_merges_into_one_frame(harness, v6):
    packets, data = stream(v6, [1380] * 20 + [700], opts=[("NOP", None), ("NOP", None),
                                                          ("Timestamp", (1, 2))])
    code, records = run(harness, "gro", frames_in(packets))
    assert code == 0 and [kind for kind, _ in records] == ["F"]
    check_merged(records[0][1], v6, data, 21, 1380)


@pytest.mark.parametrize("v6", [False, True])
def test_merge_stops_where_the_kernel_gro_would(harness, v6):
    # 45 full segments then a gap in the sequence; a PSH ends a frame; a short one too
    first, data1 = stream(v6, [1000] * 45)
    gap, data2 = stream(v6, [1000] * 3, seq=1000 + 45 * 1000 + 1)
    pushed, data3 = stream(v6, [1000] * 3, seq=1000 + 48 * 1000 + 2, flags={1: "PA"})
    code, records = run(harness, "gro", frames_in(first + gap + pushed))
    assert code == 0 and [kind for kind, _ in records] == ["F", "F", "F", "F"]
    check_merged(records[0][1], v6, data1, 45, 1000)
    check_merged(records[1][1], v6, data2, 3, 1000)
    check_merged(records[2][1], v6, data3[:2000], 2, 1000)
    # the segment after a PSH starts anew: alone, so it goes out unchanged
    assert records[3][1][:10] == bytes(10) and records[3][1][10:] == pushed[2]


def test_at_most_64_segments_and_64_kib_per_frame(harness):
    packets, data = stream(False, [1000] * 70)
    code, records = run(harness, "gro", frames_in(packets))
    assert [kind for kind, _ in records] == ["F", "F"]
    check_merged(records[0][1], False, data[:64000], 64, 1000)
    check_merged(records[1][1], False, data[64000:], 6, 1000)


def test_bad_checksum_is_never_merged_nor_fixed(harness):
    packets, data = stream(False, [1200] * 6, bad={3})
    code, records = run(harness, "gro", frames_in(packets))
    assert [kind for kind, _ in records] == ["F", "P", "F"]
    check_merged(records[0][1], False, data[:3600], 3, 1200)
    # written as it came: the receiver's TCP drops it
    assert records[1][1] == packets[3] and not tcp_checksum_ok(packets[3], False)
    check_merged(records[2][1], False, data[4800:], 2, 1200)


def test_other_packets_pass_unchanged_in_order(harness):
    tcp, _ = stream(False, [1200] * 2)
    others = [bytes(IP(src="10.1.0.10", dst="10.2.0.10") / UDP(sport=1, dport=2) / (b"u" * 100)),
              bytes(IP(src="10.1.0.10", dst="10.2.0.10") / TCP(flags="S")),
              bytes(IP(src="10.1.0.10", dst="10.2.0.10", options=b"\x01\x01\x01\x00") / TCP(flags="A") / (b"o" * 10)),
              bytes(IP(src="10.1.0.10", dst="10.2.0.10", flags="MF") / TCP(flags="A") / (b"f" * 64)),
              b"\x45\x00",
              b""]
    code, records = run(harness, "gro", frames_in(tcp + others + tcp[:1]))
    kinds = [kind for kind, _ in records]
    assert kinds == ["F"] + ["P"] * len(others) + ["F"]
    assert [r for _, r in records[1:-1]] == others
    # a held single segment goes out as it came, behind an empty virtio_net_hdr
    assert records[-1][1] == bytes(10) + tcp[0]


def test_another_stream_or_ack_flushes_first(harness):
    a, data_a = stream(False, [1000] * 3)
    b, data_b = stream(False, [1000] * 3, seq=99)
    b = [bytes(IP(p)) for p in b]
    other_port = []
    for p in b:
        pkt = IP(p)
        pkt[TCP].dport = 40001
        del pkt[TCP].chksum
        other_port.append(bytes(pkt))
    code, records = run(harness, "gro", frames_in(a + other_port))
    assert [kind for kind, _ in records] == ["F", "F"]
    check_merged(records[0][1], False, data_a, 3, 1000)
    check_merged(records[1][1], False, data_b, 3, 1000)
