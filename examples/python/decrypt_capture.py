#!/usr/bin/env python3
"""Decrypt the ESP packets of a pcap capture with the inbound SAs of an SA file.

    python examples/python/decrypt_capture.py --sa examples/sa-pair-hq.toml in.pcap out.pcap

Each ESP (or UDP-encapsulated ESP) packet is matched to an inbound SA by its SPI and
decrypted (in batches, per SA); the inner packets go to the output pcap in capture order.
ESP packets fragmented on the way are reassembled first (``ipsec.Reassembler``); the
decrypted packet takes the place of the fragment that completed it.
Packets that are not ESP, carry an SPI no SA has, or fail to decrypt are left out (with
``--keep-other``, non-ESP packets are copied unchanged). The time given to the SAs is the
capture time since the first packet, so lifetimes work as they would have live.
Counters are printed per SA at the end.

Only the standard library and ``ipsec`` are needed (classic pcap, either byte order,
micro- or nanosecond timestamps; link types raw IP 101/228/229 and Ethernet 1).
"""

from __future__ import annotations

import argparse
import struct
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import BinaryIO, Optional, Sequence

import ipsec

LINKTYPE_ETHERNET = 1
RAW_LINKTYPES = (101, 228, 229)
MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}


@dataclass
class Record:
    """One captured frame."""

    ts_sec: int
    ts_frac: int
    frame: bytes


@dataclass
class Capture:
    endian: str
    tick: float
    magic: bytes
    linktype: int
    snaplen: int
    records: list[Record]


def read_pcap(f: BinaryIO) -> Capture:
    head = f.read(24)
    if len(head) < 24 or head[:4] not in MAGICS:
        raise ValueError("not a classic pcap file")
    endian, tick = MAGICS[head[:4]]
    _, _, _, _, snaplen, linktype = struct.unpack(endian + "HHiIII", head[4:])
    records = []
    while True:
        rh = f.read(16)
        if not rh:
            break
        if len(rh) < 16:
            raise ValueError("truncated record header")
        sec, frac, incl, _orig = struct.unpack(endian + "IIII", rh)
        data = f.read(incl)
        if len(data) < incl:
            raise ValueError("truncated record")
        records.append(Record(sec, frac, data))
    return Capture(endian, tick, head[:4], linktype & 0x0FFFFFFF, snaplen, records)


def write_pcap(f: BinaryIO, cap: Capture, records: Sequence[Record]) -> None:
    e = cap.endian
    f.write(cap.magic + struct.pack(e + "HHiIII", 2, 4, 0, 0, max(cap.snaplen, 65535),
                                    cap.linktype))
    for r in records:
        f.write(struct.pack(e + "IIII", r.ts_sec, r.ts_frac, len(r.frame), len(r.frame)))
        f.write(r.frame)


def split_frame(linktype: int, frame: bytes) -> tuple[bytes, bytes]:
    """(link-layer header, IP packet)."""
    if linktype == LINKTYPE_ETHERNET:
        return frame[:14], frame[14:]
    return b"", frame


def join_frame(linktype: int, link: bytes, ip: bytes) -> bytes:
    if linktype == LINKTYPE_ETHERNET and ip:
        ethertype = b"\x08\x00" if ip[0] >> 4 == 4 else b"\x86\xdd"
        return link[:12] + ethertype + ip
    return link + ip


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sa", required=True, help="SA file ([[sa]] tables)")
    parser.add_argument("--keep-other", action="store_true",
                        help="copy packets that are not ESP to the output unchanged")
    parser.add_argument("input")
    parser.add_argument("output")
    args = parser.parse_args(argv)

    try:
        sas = ipsec.load_sas(args.sa)
    except ipsec.ConfigError as e:
        print("bad SA file: %s" % e, file=sys.stderr)
        return 2
    by_spi = {sa.spi: (name, sa) for name, sa in sas.items() if sa.direction == "inbound"}
    if not by_spi:
        print("%s has no inbound SA" % args.sa, file=sys.stderr)
        return 2
    udp_ports = sorted({4500} | {p for _, sa in by_spi.values() if sa.udp_encap
                                 for p in sa.udp_encap})
    try:
        with open(args.input, "rb") as f:
            cap = read_pcap(f)
    except (OSError, ValueError) as e:
        print("cannot read %s: %s" % (args.input, e), file=sys.stderr)
        return 2
    if cap.linktype not in RAW_LINKTYPES + (LINKTYPE_ETHERNET,):
        print("unsupported link type %d" % cap.linktype, file=sys.stderr)
        return 2

    counts: Counter[str] = Counter()
    out: list[Optional[Record]] = [None] * len(cap.records)
    batches: dict[int, list[int]] = defaultdict(list)  # SPI -> record indexes
    packets: dict[int, bytes] = {}  # record index -> the ESP packet (reassembled if need be)
    t0 = cap.records[0].ts_sec if cap.records else 0
    # ESP fragmented on the way is put back together first (ESP covers whole packets).
    reassembler = ipsec.Reassembler()
    for i, rec in enumerate(cap.records):
        _, frame_ip = split_frame(cap.linktype, rec.frame)
        t = max((rec.ts_sec - t0) + rec.ts_frac * cap.tick, 0.0)
        try:
            whole = reassembler.insert(frame_ip, now=t)
        except ipsec.FragmentError as e:
            counts["fragment dropped (%s)" % e.reason] += 1
            continue
        except ipsec.MalformedPacketError:
            whole = frame_ip
        if whole is None:
            continue  # a fragment, held until its datagram is complete
        ip = whole
        packets[i] = ip
        try:
            spi = ipsec.esp_spi(ip, udp_ports=udp_ports)
        except ipsec.MalformedPacketError:
            counts["not ESP"] += 1
            if args.keep_other:
                out[i] = rec
            continue
        if spi not in by_spi:
            counts["no SA for SPI 0x%08x" % spi] += 1
            continue
        batches[spi].append(i)

    for spi, indexes in batches.items():
        _, sa = by_spi[spi]
        # One batch per SA (the GIL is released while it runs); the time is the capture
        # time of the batch's last packet since the first packet of the capture.
        last = cap.records[indexes[-1]]
        now = (last.ts_sec - t0) + last.ts_frac * cap.tick
        results = sa.decrypt_many([packets[i] for i in indexes], now=max(now, 0.0))
        for i, res in zip(indexes, results):
            if isinstance(res, bytes):
                rec = cap.records[i]
                link, _ = split_frame(cap.linktype, rec.frame)
                out[i] = Record(rec.ts_sec, rec.ts_frac, join_frame(cap.linktype, link, res))

    written = [r for r in out if r is not None]
    with open(args.output, "wb") as f:
        write_pcap(f, cap, written)

    print("%d packets read, %d written to %s" % (len(cap.records), len(written), args.output))
    for name, sa in sorted(by_spi.values(), key=lambda t: t[0]):
        stats = sa.stats
        drops = ", ".join("%s %d" % (k, v) for k, v in stats.items()
                          if k not in ("packets", "bytes") and v)
        print("sa %-16s spi 0x%08x: %d decrypted (%d bytes)%s" % (
            name, sa.spi, stats["packets"], stats["bytes"],
            "; dropped: " + drops if drops else ""))
    # What is still held after the capture's end (plus the longest lifetime) never completed.
    last_t = (cap.records[-1].ts_sec - t0) if cap.records else 0
    reassembler.expire(now=max(last_t, 0) + 3600.0)
    fragments = reassembler.stats
    if fragments["packets"]:
        print("datagrams reassembled from fragments: %d" % fragments["packets"])
    if fragments["fragment_timeout"]:
        counts["fragment of an incomplete datagram"] += fragments["fragment_timeout"]
    for what, n in sorted(counts.items()):
        print("%s: %d" % (what, n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
