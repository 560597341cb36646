"""Writes the seed corpus of the `reassembly` fuzz target (deterministic; rerun freely).

    .venv/bin/python fuzz/gen_reassembly_seeds.py     # needs scapy (tests/python/requirements.txt)

The input layout is documented in fuzz/src/reassembly.rs. Two kinds of seeds:

* `scapy-*`: ESP packets (made by scapy's own ESP implementation) and plain IP packets
  cut into fragments by scapy's `fragment()` (IPv4), `fragment6()` (IPv6) and
  `overlap_frag()` (IPv4 with an overlapping fragment), each fragment an `insert` of
  raw bytes: fragments made by a tool we did not write.
* `coded-*`: synthetic fragments of the target's own datagrams: in order, reversed,
  interleaved, duplicated, overlapping, contradicting, over each limit, timing out,
  and handed over in place with too little room.
"""
import os
import struct

from scapy.compat import raw
from scapy.layers.inet import IP, UDP, fragment, overlap_frag
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, fragment6
from scapy.layers.ipsec import ESP, SecurityAssociation
from scapy.packet import Raw

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus", "reassembly")

# Limits byte (fuzz/src/reassembly.rs): 0 = defaults.
DEFAULTS = 0x00
FEW_DATAGRAMS = 0x01        # max_datagrams 3
FEW_FRAGMENTS = 0x04        # max_fragments 4
FEW_BYTES = 0x20            # max_bytes 1,000
SHORT_LIFE = 0x40           # lifetime 1 s


def raw_op(pkt, fix_checksum=False):
    b = raw(pkt) if not isinstance(pkt, (bytes, bytearray)) else bytes(pkt)
    return bytes([1 if fix_checksum else 0]) + struct.pack(">H", len(b)) + b


def frag_op(dg, start, length, last=False, alter=False, in_place=None):
    flags = (1 if last else 0) | (2 if alter else 0)
    if in_place is not None:
        flags |= 4 | ((in_place // 64) << 3)
    return bytes([2, dg]) + struct.pack(">HHB", start // 8, length, flags)


def tick(ms):
    return bytes([3]) + struct.pack(">H", ms)


EXPIRE = bytes([4])


def set_limits(sel):
    return bytes([5, sel])


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def esp_packet(v6, size):
    sa = SecurityAssociation(ESP, spi=0x1000, crypt_algo="AES-GCM",
                             crypt_key=bytes(range(16)) + b"salt",
                             tunnel_header=IPv6(src="2001:db8:ffff::1", dst="2001:db8:ffff::2")
                             if v6 else IP(src="192.0.2.1", dst="198.51.100.2", id=0x4242))
    inner = IP(src="10.0.0.5", dst="10.1.2.3") / UDP(sport=5000, dport=53) / Raw(b"x" * size)
    return sa.encrypt(inner)


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        os.remove(os.path.join(OUT, f))

    # scapy: IPv4 ESP cut at 8-byte boundaries, in order and reversed.
    esp4 = esp_packet(False, 1400)
    frags = fragment(esp4, fragsize=600)
    write("scapy-esp4-in-order", bytes([DEFAULTS]) + b"".join(raw_op(f) for f in frags))
    write("scapy-esp4-reversed", bytes([DEFAULTS]) + b"".join(raw_op(f) for f in reversed(frags)))
    write("scapy-esp4-duplicate", bytes([DEFAULTS]) + raw_op(frags[0]) + raw_op(frags[0])
          + b"".join(raw_op(f) for f in frags[1:]))
    write("scapy-esp4-timeout", bytes([SHORT_LIFE]) + raw_op(frags[0]) + tick(1500)
          + b"".join(raw_op(f) for f in frags[1:]))
    # scapy's overlap_frag: an IPv4 datagram behind a forged fragment that overlaps its
    # first one (a UDP header, so that the protocol, part of the key, is the same).
    plain = IP(src="192.0.2.1", dst="198.51.100.2", id=7) / UDP(sport=4500, dport=4500) / Raw(b"y" * 120)
    forged = UDP(sport=4500, dport=4500) / Raw(b"Z" * 8)
    write("scapy-overlap4", bytes([DEFAULTS]) + b"".join(
        raw_op(f) for f in overlap_frag(plain, forged, fragsize=32)))
    # scapy: IPv6 ESP cut by fragment6(), with and without a Hop-by-Hop header.
    esp6 = esp_packet(True, 2000)
    v6 = IPv6(raw(esp6))
    with_frag = IPv6(src=v6.src, dst=v6.dst) / IPv6ExtHdrFragment(id=0x1234) / v6.payload
    frags6 = fragment6(with_frag, 1280)
    write("scapy-esp6-in-order", bytes([DEFAULTS]) + b"".join(raw_op(f) for f in frags6))
    write("scapy-esp6-reversed", bytes([DEFAULTS]) + b"".join(raw_op(f) for f in reversed(frags6)))
    hbh = (IPv6(src=v6.src, dst=v6.dst) / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(id=0x55)
           / v6.payload)
    write("scapy-esp6-hop-by-hop", bytes([FEW_FRAGMENTS]) + b"".join(
        raw_op(f) for f in fragment6(hbh, 700)))
    atomic = IPv6(src=v6.src, dst=v6.dst) / IPv6ExtHdrFragment(id=9, m=0, offset=0) / Raw(b"\x00" * 16)
    write("scapy-atomic6", bytes([DEFAULTS]) + raw_op(atomic) + raw_op(esp4))
    # Mutation-friendly: the IPv4 fragments with their checksum fixed after mutation.
    write("scapy-esp4-fixed-checksums", bytes([FEW_BYTES]) + b"".join(
        raw_op(f, fix_checksum=True) for f in frags))

    # Coded: synthetic datagrams 0..3 (IPv4), 4..7 (IPv6), 12 (IPv6 + Hop-by-Hop).
    write("coded-in-order", bytes([DEFAULTS]) + frag_op(0, 0, 64) + frag_op(0, 64, 64)
          + frag_op(0, 128, 30, last=True))
    write("coded-reversed-v6", bytes([DEFAULTS]) + frag_op(12, 128, 30, last=True)
          + frag_op(12, 64, 64) + frag_op(12, 0, 64))
    write("coded-interleaved", bytes([DEFAULTS]) + frag_op(1, 0, 16) + frag_op(5, 0, 16)
          + frag_op(2, 16, 9, last=True) + frag_op(1, 16, 9, last=True) + frag_op(5, 16, 40, last=True)
          + frag_op(2, 0, 16))
    write("coded-duplicate", bytes([DEFAULTS]) + frag_op(3, 0, 32) + frag_op(3, 0, 32)
          + frag_op(3, 32, 8, last=True))
    write("coded-overlap", bytes([DEFAULTS]) + frag_op(0, 0, 32) + frag_op(0, 24, 16)
          + frag_op(0, 40, 8, last=True))
    write("coded-same-range-altered", bytes([DEFAULTS]) + frag_op(6, 0, 32)
          + frag_op(6, 0, 32, alter=True) + frag_op(6, 32, 1, last=True))
    write("coded-two-ends", bytes([DEFAULTS]) + frag_op(1, 32, 8, last=True)
          + frag_op(1, 48, 8, last=True) + frag_op(1, 0, 32))
    write("coded-limits", bytes([FEW_DATAGRAMS | FEW_FRAGMENTS]) + b"".join(
        frag_op(dg, 8 * k, 8) for dg in (0, 1, 2, 3, 4) for k in range(6)))
    write("coded-bytes", bytes([FEW_BYTES]) + b"".join(frag_op(4, 200 * k, 200) for k in range(6)))
    write("coded-timeout", bytes([SHORT_LIFE]) + frag_op(2, 0, 8) + frag_op(2, 8, 8)
          + tick(999) + EXPIRE + tick(1) + EXPIRE + frag_op(2, 16, 8, last=True))
    write("coded-set-limits", bytes([DEFAULTS]) + frag_op(0, 0, 8) + frag_op(1, 0, 8)
          + frag_op(2, 0, 8) + set_limits(0x02) + frag_op(0, 8, 8, last=True))
    write("coded-in-place", bytes([DEFAULTS]) + frag_op(7, 0, 1000)
          + frag_op(7, 1000, 500, last=True, in_place=64)
          + frag_op(7, 1000, 500, last=True, in_place=1984))
    write("coded-beyond-65535", bytes([DEFAULTS]) + frag_op(0, 65528, 100, last=True)
          + frag_op(4, 0, 8, last=True) + frag_op(5, 0, 7))
    print("reassembly seeds", len(os.listdir(OUT)))


if __name__ == "__main__":
    main()
