"""Live ESP interop between our `ipsec` CLI (Rust) and scapy (`scapy.layers.ipsec`).

Direction A ("we encrypt, scapy decrypts"): scapy builds plaintext packets, they go
into a pcap, `ipsec pcap encrypt` protects them, and a scapy SecurityAssociation
must decrypt every output packet back to the plaintext (byte for byte).  The wire
format promised by our contract is checked on the way (SPI, sequence numbers, AEAD
IV = 64-bit sequence number, random CBC IVs, 1,2,3,... padding to 16-byte blocks, outer
header TTL/ID/DF/DSCP/ECN, NAT-T UDP header, IPv6 ESP placement).

Direction B ("scapy encrypts, we decrypt"): scapy protects the same plaintext
packets, `ipsec pcap decrypt --json` must accept every one and write the plaintext.

Negative: tampered / duplicate / unknown-SPI / too-old packets give the documented
JSON error codes.  One pcap (one CLI call) per parameter combination.

The cipher/integrity name mapping and the scapy quirks come from
tests/interop/gen_scapy_vectors.py and tests/interop/README.md (imported below).
"""

import hashlib
import importlib.util
import json
import os
import struct
import subprocess

import pytest
from scapy.compat import raw
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
    RouterAlert,
)
from scapy.layers.ipsec import ESP, IPSecIntegrityError, SecurityAssociation
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import wrpcap

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))

# --------------------------------------------------------------------------
# Name mapping, reused from the vector generator (tests/interop/)
# --------------------------------------------------------------------------

_spec = importlib.util.spec_from_file_location(
    "gen_scapy_vectors", os.path.join(REPO_ROOT, "tests", "interop", "gen_scapy_vectors.py"))
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)

CIPHERS = gen.CIPHERS        # ours -> (scapy name, key len, salt len, kind)
INTEGRITY = gen.INTEGRITY    # ours -> (scapy name, key len, icv len, hashlib name)
PAIRS = gen.PAIRS            # the 17 (cipher, integrity) pairs our library accepts
assert len(PAIRS) == 17

PAIR_IDS = ["%s+%s" % (c, i) if i else c for c, i in PAIRS]

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # DLT_RAW / LINKTYPE_RAW: each record starts with an IPv4 or IPv6 header

T4_SRC, T4_DST = "192.0.2.1", "198.51.100.2"
T6_SRC, T6_DST = "2001:db8:ffff::1", "2001:db8:ffff::2"
I4_SRC, I4_DST = "10.0.0.5", "10.1.2.3"
I6_SRC, I6_DST = "2001:db8:1::5", "2001:db8:2::3"
NAT_T = (4500, 4500)
ESN_START = (1 << 32) - 4   # last used / highest received: first packet is 2^32 - 3

# --------------------------------------------------------------------------
# Plaintext packets (built with scapy, every field explicit)
# --------------------------------------------------------------------------


def _freeze(pkt):
    return pkt.__class__(raw(pkt))


def _pl(n, label):
    return gen._payload(n, label)


def v4(l4, tos=0, ident=0x1c46, src=I4_SRC, dst=I4_DST):
    return IP(version=4, ihl=5, tos=tos, id=ident, flags="DF", frag=0, ttl=64,
              src=src, dst=dst) / l4


def v6(l4, ext=(), tc=0):
    pkt = IPv6(version=6, tc=tc, fl=0x12345, hlim=64, src=I6_SRC, dst=I6_DST)
    for e in ext:
        pkt = pkt / e
    return pkt / l4


def tcp(dport, payload, sport=49732, flags="PA"):
    return TCP(sport=sport, dport=dport, seq=0x1A2B3C4D, ack=0x0BADCAFE, dataofs=5,
               flags=flags, window=64240, urgptr=0) / Raw(payload)


def udp(dport, payload, sport=53001):
    return UDP(sport=sport, dport=dport) / Raw(payload)


def hbh():
    return IPv6ExtHdrHopByHop(options=[RouterAlert(value=0), PadN(optdata=b"")])


def dstopt():
    return IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00\x00\x00\x00")])


def sized(builder, total_len, label):
    """A packet of exactly total_len bytes."""
    n = total_len - len(raw(builder(b"")))
    pkt = _freeze(builder(_pl(n, label)))
    assert len(raw(pkt)) == total_len
    return pkt


def packets_tunnel_outer4():
    # Mixed inner families (4in4 and 6in4) and a spread of DSCP/ECN values:
    # 0x8a = AF41+ECT(0), 0x8b = AF41+CE, 0xb8 = EF not-ECT, 0x01 = ECT(1).
    return [
        _freeze(v4(tcp(3389, _pl(48, "a")), tos=0x8a)),
        _freeze(v4(tcp(443, _pl(1, "b")), tos=0x8b)),
        _freeze(v6(tcp(443, _pl(40, "c")), tc=0xb8)),
        _freeze(v4(udp(53, _pl(29, "d")), tos=0x01, ident=0x2a2a)),
        _freeze(v4(ICMP(type=8, code=0, id=0x4d2, seq=7) / Raw(_pl(56, "e")), ident=0x3b3b)),
        sized(lambda p: v4(tcp(445, p)), 1400, "f"),
        _freeze(v6(ICMPv6EchoRequest(id=0x4d2, seq=9, data=_pl(32, "g")), tc=0x8b)),
        _freeze(v4(tcp(135, _pl(0, "h"), flags="S"))),
    ]


def packets_tunnel_outer6():
    return [
        _freeze(v6(ICMPv6EchoRequest(id=0x4d2, seq=9, data=_pl(32, "i")))),
        _freeze(v6(tcp(3389, _pl(17, "j")), tc=0x8a)),
        _freeze(v4(udp(53, _pl(29, "k")), tos=0x8b)),
        _freeze(v4(tcp(445, _pl(100, "l")))),
        sized(lambda p: v6(tcp(443, p)), 1400, "m"),
    ]


def packets_transport4():
    return [
        _freeze(v4(tcp(445, _pl(37, "n")))),
        _freeze(v4(tcp(135, _pl(5, "o")))),
        _freeze(v4(tcp(3389, _pl(64, "p")))),
        _freeze(v4(udp(53, _pl(19, "q")), ident=0x2a2a)),
        _freeze(v4(ICMP(type=8, code=0, id=0x4d2, seq=7) / Raw(_pl(56, "r")), ident=0x3b3b)),
        sized(lambda p: v4(tcp(443, p)), 1400, "s"),
    ]


def packets_transport6():
    return [
        _freeze(v6(tcp(443, _pl(17, "t")))),
        _freeze(v6(tcp(135, _pl(33, "u")), ext=(hbh(),))),
        _freeze(v6(udp(53, _pl(21, "v"), sport=53002), ext=(hbh(), dstopt()))),
        sized(lambda p: v6(tcp(445, p), ext=(hbh(),)), 1400, "w"),
        _freeze(v6(ICMPv6EchoRequest(id=0x4d2, seq=9, data=_pl(24, "x")))),
        _freeze(v6(tcp(3389, _pl(9, "y")), ext=(dstopt(),))),
        # DestOpt before a Routing header stays in clear, the final DestOpt goes
        # after ESP (RFC 4303 3.1.1; scapy splits the same way, see split_for_transport)
        _freeze(v6(udp(4789, _pl(27, "D"), sport=53003),
                   ext=(hbh(), dstopt(), IPv6ExtHdrRouting(type=0, segleft=0, addresses=[]),
                        dstopt()))),
    ]


def packets_esn():
    return [_freeze(v4(tcp((3389, 443, 135, 445)[i % 4], _pl(20 + i, "esn%d" % i)),
                       ident=0x100 + i)) for i in range(6)]


def packets_esn6():
    return [_freeze(v6(tcp(135, _pl(20 + i, "esn6-%d" % i)), ext=(hbh(),))) for i in range(6)]


def packets_natt4():
    return [
        _freeze(v4(tcp(3389, _pl(30, "z")))),
        _freeze(v4(udp(53, _pl(19, "A")), ident=0x2a2a)),
        _freeze(v4(tcp(443, _pl(200, "B")))),
    ]


def packets_natt_tunnel():
    return packets_natt4() + [_freeze(v6(tcp(445, _pl(30, "C"))))]


def packets_natt6():
    # No extension headers: scapy 2.8.0 mishandles ESP in UDP behind them (it names
    # ESP, not UDP, in the header before, and does not find the UDP when decrypting).
    return [
        _freeze(v6(tcp(3389, _pl(30, "E")))),
        _freeze(v6(udp(53, _pl(19, "F")))),
        sized(lambda p: v6(tcp(443, p)), 1400, "G"),
        _freeze(v6(ICMPv6EchoRequest(id=0x4d2, seq=9, data=_pl(24, "H")))),
    ]


class Scenario(object):
    def __init__(self, tag, mode, outer, packets, start=0, esn=False, nat_t=False):
        self.tag = tag
        self.mode = mode          # "tunnel" | "transport"
        self.outer = outer        # tunnel: outer family; transport: None (packet's own)
        self.packets = packets
        self.start = start        # last sequence number used before the first packet
        self.esn = esn
        self.nat_t = nat_t


SCENARIOS = [
    Scenario("tunnel-outer4", "tunnel", 4, packets_tunnel_outer4),
    Scenario("tunnel-outer6", "tunnel", 6, packets_tunnel_outer6),
    Scenario("transport-v4", "transport", None, packets_transport4),
    Scenario("transport-v6", "transport", None, packets_transport6),
    Scenario("esn-tunnel-4in4", "tunnel", 4, packets_esn, start=ESN_START, esn=True),
    Scenario("esn-transport-v6", "transport", None, packets_esn6, start=ESN_START, esn=True),
    Scenario("natt-tunnel-outer4", "tunnel", 4, packets_natt_tunnel, nat_t=True),
    Scenario("natt-transport-v4", "transport", None, packets_natt4, nat_t=True),
    Scenario("natt-tunnel-outer6", "tunnel", 6, packets_natt_tunnel, nat_t=True),
    Scenario("natt-transport-v6", "transport", None, packets_natt6, nat_t=True),
]
SCENARIO_IDS = [s.tag for s in SCENARIOS]

# --------------------------------------------------------------------------
# Helpers: SA files, pcaps, CLI, scapy SAs
# --------------------------------------------------------------------------


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[%s]" % ", ".join(_toml_value(x) for x in v)
    return json.dumps(v)  # a TOML basic string is JSON-compatible for our values


def write_sa_file(path, sas):
    lines = []
    for sa in sas:
        lines.append("[[sa]]")
        for k, v in sa.items():
            if v is not None:
                lines.append("%s = %s" % (k, _toml_value(v)))
        lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def cipher_key(cipher, spi):
    """The key (|| salt) of the SA with this SPI: one per SA, because the CLI refuses an
    SA file in which two SAs share a key (they would repeat AEAD nonces)."""
    n = CIPHERS[cipher][1] + CIPHERS[cipher][2]
    return hashlib.sha512(b"key:%s:%d" % (cipher.encode(), spi)).digest()[:n]


def integrity_key(integ, spi):
    """The integrity key of the SA with this SPI (b"" without integrity)."""
    if integ is None:
        return b""
    n = INTEGRITY[integ][1]
    return hashlib.sha512(b"integrity-key:%s:%d" % (integ.encode(), spi)).digest()[:n]


def sa_entry(name, cipher, integ, spi, direction, mode, esn=False, seq=0, outer=None,
             nat_t=False, replay_window=None):
    e = {
        "name": name,
        "spi": spi,
        "direction": direction,
        "mode": mode,
        "cipher": cipher,
        "key": cipher_key(cipher, spi).hex(),
        "integrity": integ,
        "integrity_key": integrity_key(integ, spi).hex() if integ else None,
        "esn": esn,
        "seq": seq,
    }
    if direction == "inbound":
        e["replay_window"] = 64 if replay_window is None else replay_window
    if direction == "outbound" and mode == "tunnel":
        e["tunnel_src"] = T4_SRC if outer == 4 else T6_SRC
        e["tunnel_dst"] = T4_DST if outer == 4 else T6_DST
    if nat_t:
        e["udp_encap"] = list(NAT_T)
    return e


def write_pcap(path, frames, linktype):
    # scapy's wrpcap with bytes and an explicit linktype writes exactly that
    # linktype in the global header (with Packet objects it logs "Inconsistent
    # linktypes" for IPv6-over-RAW, so we always hand it bytes).
    wrpcap(path, [bytes(f) for f in frames], linktype=linktype)


def read_pcap(path):
    """(linktype, [frame bytes]) of a classic pcap file (any byte order, us or ns)."""
    with open(path, "rb") as f:
        data = f.read()
    assert len(data) >= 24, "%s: truncated pcap (%d bytes)" % (path, len(data))
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        e = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = ">"
    else:
        raise AssertionError("%s: not a pcap file (magic %s)" % (path, magic.hex()))
    linktype = struct.unpack(e + "I", data[20:24])[0] & 0x0FFFFFFF
    frames, off = [], 24
    while off < len(data):
        _, _, incl, orig = struct.unpack(e + "IIII", data[off:off + 16])
        off += 16
        assert incl == orig, "%s: truncated record (caplen %d < len %d)" % (path, incl, orig)
        frames.append(data[off:off + incl])
        off += incl
    assert off == len(data), "%s: trailing bytes" % path
    return linktype, frames


def run_cli(ipsec_bin, action, sa_path, in_path, out_path, json_out=True, name=None):
    cmd = [ipsec_bin, "pcap", action, "--sa", sa_path]
    if name:
        cmd += ["--name", name]
    if json_out:
        cmd.append("--json")
    cmd += [in_path, out_path]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert "panicked" not in p.stderr, "CLI panicked: %s" % p.stderr
    assert p.returncode >= 0, "CLI killed by signal %d" % -p.returncode
    records = []
    for line in p.stdout.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            raise AssertionError("non-JSON line on stdout with --json: %r" % line)
        if isinstance(obj, dict) and "index" in obj:
            records.append(obj)
    return p, records


def check_records(p, records, n, expect=None):
    """One JSON record per input packet, in order; expect = list of error codes / None."""
    ctx = "cmd=%s rc=%d stderr=%s" % (" ".join(p.args), p.returncode, p.stderr.strip()[:2000])
    assert len(records) == n, "expected %d JSON records, got %d: %r (%s)" % (
        n, len(records), records, ctx)
    assert [r["index"] for r in records] == list(range(n)), records
    expect = expect if expect is not None else [None] * n
    got = [None if r["ok"] else r.get("error") for r in records]
    assert got == expect, "per-packet results differ:\n%s\n(%s)" % (
        "\n".join("  #%d want %s got %s detail=%r" % (i, w, g, r.get("detail"))
                  for i, (w, g, r) in enumerate(zip(expect, got, records))), ctx)
    for r in records:
        assert r["ok"] == (r.get("error") is None), r


def assert_same_bytes(got, want, what):
    """Byte equality with a short message (pytest's diff of long hex strings is slow)."""
    if got == want:
        return
    n = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    pytest.fail("%s: %d bytes, want %d; first difference at offset %d\n  got  %s\n  want %s"
                % (what, len(got), len(want), n, got[max(0, n - 8):n + 24].hex(),
                   want[max(0, n - 8):n + 24].hex()), pytrace=False)


def tunnel_template(outer, tos=0):
    if outer == 4:
        return IP(version=4, ihl=5, tos=tos, id=0, flags=0, frag=0, ttl=64,
                  src=T4_SRC, dst=T4_DST)
    return IPv6(version=6, tc=tos, fl=0, hlim=64, src=T6_SRC, dst=T6_DST)


def scapy_sa(cipher, integ, spi, sc, tos=0):
    kwargs = dict(spi=spi, seq_num=1, crypt_algo=CIPHERS[cipher][0],
                  crypt_key=cipher_key(cipher, spi) or None, esn_en=sc.esn, esn=0)
    if integ:
        kwargs["auth_algo"] = INTEGRITY[integ][0]
        kwargs["auth_key"] = integrity_key(integ, spi)
    if sc.mode == "tunnel":
        kwargs["tunnel_header"] = tunnel_template(sc.outer, tos)
    if sc.nat_t:
        kwargs["nat_t_header"] = UDP(sport=NAT_T[0], dport=NAT_T[1])
    return SecurityAssociation(ESP, **kwargs)


def parse_ip(data):
    return IP(data) if data[0] >> 4 == 4 else IPv6(data)


def tos_of(pkt_bytes):
    if pkt_bytes[0] >> 4 == 4:
        return pkt_bytes[1]
    return ((pkt_bytes[0] & 0x0F) << 4) | (pkt_bytes[1] >> 4)


def rfc6040_outer_tos(inner_tos):
    """RFC 4301 5.1.2.1 DSCP copy + RFC 6040 4.1 normal-mode ECN (CE -> ECT(0))."""
    ecn = inner_tos & 3
    return (inner_tos & 0xFC) | (2 if ecn == 3 else ecn)


def scapy_encrypt(sa, pkt, seq, iv=None):
    """Encrypt with the given 64-bit seq.  Quirks (tests/interop/README.md): scapy
    treats seq_num=0 as "use the SA counter" and `esn=0` as "use sa.esn", so both
    are set on the SA instead of being passed."""
    sa.seq_num = seq & 0xFFFFFFFF
    sa.esn = seq >> 32
    return raw(sa.encrypt(pkt.copy(), iv=iv))


def iv_choice(cipher, seq, i):
    """AEAD/GMAC: alternate the counter IV (what we send) and scapy's random IV
    (both are valid, RFC 4106 3.1); CBC/NULL: scapy's random IV."""
    if CIPHERS[cipher][3] in ("aead", "gmac") and i % 2 == 0:
        return struct.pack("!Q", seq)
    return None


def ipv4_checksum_ok(hdr):
    s = sum(struct.unpack("!%dH" % (len(hdr) // 2), hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s == 0xFFFF


def scapy_udp_checksum(pkt_bytes):
    """The UDP checksum scapy computes for the UDP datagram in `pkt_bytes` (its own
    pseudo-header code, RFC 768 / RFC 8200 8.1)."""
    pkt = parse_ip(pkt_bytes)
    fresh = pkt.copy()
    del fresh[UDP].chksum
    return parse_ip(raw(fresh))[UDP].chksum


def split_esp(protected):
    """Offset of the ESP header in an outer packet; checks outer framing basics."""
    pkt = parse_ip(protected)
    assert pkt.haslayer(ESP), "no ESP layer in %r" % pkt
    return len(protected) - len(raw(pkt[ESP]))


# --------------------------------------------------------------------------
# Direction A: we encrypt, scapy decrypts
# --------------------------------------------------------------------------


@pytest.mark.parametrize("sc", SCENARIOS, ids=SCENARIO_IDS)
@pytest.mark.parametrize("cipher,integ", PAIRS, ids=PAIR_IDS)
def test_we_encrypt_scapy_decrypts(ipsec_bin, tmp_path, cipher, integ, sc):
    spi = 0x20000 + PAIRS.index((cipher, integ)) * 16 + SCENARIOS.index(sc)
    plain = [raw(p) for p in sc.packets()]
    sa_path, inp, outp = (str(tmp_path / n) for n in ("sa.toml", "in.pcap", "out.pcap"))
    write_sa_file(sa_path, [sa_entry("out", cipher, integ, spi, "outbound", sc.mode,
                                     esn=sc.esn, seq=sc.start, outer=sc.outer, nat_t=sc.nat_t)])
    write_pcap(inp, plain, LINKTYPE_RAW)
    p, records = run_cli(ipsec_bin, "encrypt", sa_path, inp, outp)
    check_records(p, records, len(plain))
    assert p.returncode == 0, p.stderr
    linktype, out = read_pcap(outp)
    assert linktype == LINKTYPE_RAW
    assert len(out) == len(plain)

    kind = CIPHERS[cipher][3]
    icv_len = 16 if kind in ("aead", "gmac") else INTEGRITY[integ][2]
    iv_len = {"aead": 8, "gmac": 8, "cbc": 16, "null": 0}[kind]
    sa = scapy_sa(cipher, integ, spi, sc)
    seen_ivs = set()
    outer_ids = []
    for i, (pt, ct) in enumerate(zip(plain, out)):
        seq = sc.start + 1 + i
        what = "packet #%d (seq %d)" % (i, seq)
        off = split_esp(ct)
        esp = ct[off:]
        wire_spi, wire_seq = struct.unpack("!II", esp[:8])
        assert wire_spi == spi, what
        assert wire_seq == seq & 0xFFFFFFFF, what
        iv = esp[8:8 + iv_len]
        if kind in ("aead", "gmac"):
            assert iv == struct.pack("!Q", seq), "%s: AEAD IV is not the 64-bit seq" % what
        elif kind == "cbc":
            assert iv not in seen_ivs, "%s: CBC IV repeated" % what
            seen_ivs.add(iv)

        # outer framing
        if ct[0] >> 4 == 4:
            ihl = (ct[0] & 0x0F) * 4
            assert struct.unpack("!H", ct[2:4])[0] == len(ct), what
            assert ipv4_checksum_ok(ct[:ihl]), "%s: outer IPv4 checksum" % what
            assert ct[9] == (17 if sc.nat_t else 50), "%s: outer protocol" % what
        else:
            assert struct.unpack("!H", ct[4:6])[0] == len(ct) - 40, what
        if sc.nat_t:
            sport, dport, ulen, csum = struct.unpack("!HHHH", ct[off - 8:off])
            assert (sport, dport) == NAT_T, what
            assert ulen == len(esp) + 8, what
            if ct[0] >> 4 == 4:
                assert csum == 0, "%s: NAT-T UDP checksum over IPv4 must be 0 (RFC 3948 2.1)" % what
            else:
                # RFC 8200 8.1: never 0 over IPv6; scapy recomputes it.
                assert csum != 0, "%s: NAT-T UDP checksum 0 over IPv6" % what
                assert csum == scapy_udp_checksum(ct), \
                    "%s: UDP checksum 0x%04x, scapy computes 0x%04x" % (
                        what, csum, scapy_udp_checksum(ct))

        if sc.mode == "tunnel":
            o = parse_ip(ct)
            inner_tos = tos_of(pt)
            if sc.outer == 4:
                assert isinstance(o, IP), what
                assert (o.src, o.dst) == (T4_SRC, T4_DST), what
                # RFC 6864: one Identification per packet (a per-SA counter from a
                # random start); RFC 4301 8.1 "copy" (the default): DF from the inner
                # IPv4 header, set for an inner IPv6 packet.
                want_df = pt[0] >> 4 == 6 or bool(pt[6] & 0x40)
                assert o.ttl == 64 and o.frag == 0 and (o.flags == "DF") == want_df, \
                    "%s: outer IPv4 ttl=%d flags=%s (want 64, DF %s)" % (
                        what, o.ttl, o.flags, want_df)
                assert o.id == (outer_ids[0] + i) & 0xFFFF if outer_ids else True, \
                    "%s: outer IPv4 id %d, want %d" % (what, o.id, outer_ids[0] + i)
                outer_ids.append(o.id)
                assert o.tos == rfc6040_outer_tos(inner_tos), \
                    "%s: inner tos 0x%02x -> outer 0x%02x, want 0x%02x" % (
                        what, inner_tos, o.tos, rfc6040_outer_tos(inner_tos))
            else:
                assert isinstance(o, IPv6), what
                assert (o.src, o.dst) == (T6_SRC, T6_DST), what
                assert o.tc == rfc6040_outer_tos(inner_tos), \
                    "%s: inner tos 0x%02x -> outer tc 0x%02x, want 0x%02x" % (
                        what, inner_tos, o.tc, rfc6040_outer_tos(inner_tos))
        else:
            # Transport: what precedes ESP is the original header chain, with only
            # lengths/checksum/next header changed (RFC 4303 3.1.1).  Our contract puts
            # ESP after Hop-by-Hop/Routing/Fragment and *before* a final Destination
            # Options header, so the split point is computed that way here.
            split = transport_split(pt)
            hdr_len = off - (8 if sc.nat_t else 0)
            assert hdr_len == split, "%s: ESP at offset %d, want %d" % (what, hdr_len, split)

        # padding: 1,2,3,... up to whole 16-byte cipher blocks, our default
        # (EspPadding::CipherBlocks; NULL keeps 4-byte alignment) -- inspect the
        # decrypted ESP trailer
        sa.esn = seq >> 32
        esp_pkt = parse_ip(ct)[ESP]
        clear = sa.crypt_algo.decrypt(sa, esp_pkt, sa.crypt_key,
                                      sa.crypt_icv_size or sa.crypt_algo.icv_size
                                      or sa.auth_algo.icv_size,
                                      esn_en=sc.esn, esn=seq >> 32)
        align = 4 if cipher == "null" else 16
        assert clear.padding == bytes(range(1, clear.padlen + 1)), "%s: padding %r" % (
            what, clear.padding)
        assert clear.padlen == -(len(clear.data) + 2) % align, "%s: padding is not the fewest bytes to %d-byte blocks" % (what, align)
        assert len(esp) == 8 + iv_len + len(clear.data) + clear.padlen + 2 + icv_len, what

        # scapy decrypts (integrity checked) to the plaintext
        try:
            got = raw(sa.decrypt(parse_ip(ct)))
        except IPSecIntegrityError as exc:
            pytest.fail("%s: scapy integrity check failed: %s" % (what, exc))
        assert_same_bytes(got, pt, "%s: scapy decrypt vs plaintext" % what)


def transport_split(pt):
    """Where our contract inserts ESP in a transport-mode packet."""
    if pt[0] >> 4 == 4:
        return (pt[0] & 0x0F) * 4
    nh, pos = pt[6], 40
    while nh in (0, 43, 44, 60):
        if nh == 60:
            # a Destination Options header is "final" (goes after ESP) unless a
            # Routing header follows it
            if pt[pos] != 43:
                break
        nxt = pt[pos]
        pos += 8 if nh == 44 else (pt[pos + 1] + 1) * 8
        nh = nxt
    return pos


# --------------------------------------------------------------------------
# Direction B: scapy encrypts, we decrypt
# --------------------------------------------------------------------------


def scapy_protect(cipher, integ, spi, sc, plain_pkts, seqs):
    out = []
    for i, (pkt, seq) in enumerate(zip(plain_pkts, seqs)):
        tos = rfc6040_outer_tos(tos_of(raw(pkt))) if sc.mode == "tunnel" else 0
        # scapy copies its tunnel_header template verbatim (no DSCP/ECN copy; README
        # "Tunnel outer header"), so the RFC 6040 outer value is put in the template.
        sa = scapy_sa(cipher, integ, spi, sc, tos=tos)
        out.append(scapy_encrypt(sa, pkt, seq, iv=iv_choice(cipher, seq, i)))
    return out


@pytest.mark.parametrize("sc", SCENARIOS, ids=SCENARIO_IDS)
@pytest.mark.parametrize("cipher,integ", PAIRS, ids=PAIR_IDS)
def test_scapy_encrypts_we_decrypt(ipsec_bin, tmp_path, cipher, integ, sc):
    spi = 0x30000 + PAIRS.index((cipher, integ)) * 16 + SCENARIOS.index(sc)
    pkts = sc.packets()
    plain = [raw(p) for p in pkts]
    seqs = [sc.start + 1 + i for i in range(len(pkts))]
    protected = scapy_protect(cipher, integ, spi, sc, pkts, seqs)
    sa_path, inp, outp = (str(tmp_path / n) for n in ("sa.toml", "in.pcap", "out.pcap"))
    write_sa_file(sa_path, [sa_entry("in", cipher, integ, spi, "inbound", sc.mode,
                                     esn=sc.esn, seq=sc.start, nat_t=sc.nat_t)])
    write_pcap(inp, protected, LINKTYPE_RAW)
    p, records = run_cli(ipsec_bin, "decrypt", sa_path, inp, outp)
    check_records(p, records, len(plain))
    assert p.returncode == 0, p.stderr
    linktype, out = read_pcap(outp)
    assert linktype == LINKTYPE_RAW
    assert len(out) == len(plain)
    for i, (pt, got) in enumerate(zip(plain, out)):
        assert_same_bytes(got, pt, "packet #%d (seq %d) after our decrypt" % (i, seqs[i]))


# --------------------------------------------------------------------------
# Negative: tampered, duplicate, unknown SPI, too old
# --------------------------------------------------------------------------


@pytest.mark.parametrize("cipher,integ", PAIRS, ids=PAIR_IDS)
def test_we_reject_bad_packets(ipsec_bin, tmp_path, cipher, integ):
    sc = SCENARIOS[0]  # tunnel, outer IPv4
    spi = 0x40000 + PAIRS.index((cipher, integ))
    base = packets_tunnel_outer4()
    kind = CIPHERS[cipher][3]
    iv_len = {"aead": 8, "gmac": 8, "cbc": 16, "null": 0}[kind]

    def enc(i, seq, spi_=spi):
        sa = scapy_sa(cipher, integ, spi_, sc, tos=rfc6040_outer_tos(tos_of(raw(base[i]))))
        return scapy_encrypt(sa, base[i], seq, iv=iv_choice(cipher, seq, i))

    p1, p2, p3 = enc(0, 1), enc(1, 2), enc(2, 100)
    tampered = bytearray(p2)
    flip_at = split_esp(p2) + 8 + iv_len + 3   # inside the encrypted (or, GMAC/NULL, authenticated) payload
    tampered[flip_at] ^= 0x01
    wrong_spi = enc(3, 3, spi_=spi + 0x1000)
    old = enc(4, 5)
    frames = [p1, bytes(tampered), p1, wrong_spi, p2, p3, old]
    expect = [None, "auth_failed", "replay", "unknown_spi", None, None, "too_old"]
    sa_path, inp, outp = (str(tmp_path / n) for n in ("sa.toml", "in.pcap", "out.pcap"))
    write_sa_file(sa_path, [sa_entry("in", cipher, integ, spi, "inbound", "tunnel",
                                     replay_window=32)])
    write_pcap(inp, frames, LINKTYPE_RAW)
    p, records = run_cli(ipsec_bin, "decrypt", sa_path, inp, outp)
    check_records(p, records, len(frames), expect)
    _, out = read_pcap(outp)
    assert len(out) == 3, "only the 3 good packets may be written, got %d" % len(out)
    for j, (o, i) in enumerate(zip(out, (0, 1, 2))):
        assert_same_bytes(o, raw(base[i]), "written packet #%d" % j)


# --------------------------------------------------------------------------
# Ethernet link type, both directions
# --------------------------------------------------------------------------

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


@pytest.mark.parametrize("cipher,integ", [("aes-128-gcm", None), ("aes-256-cbc", "hmac-sha256-128")],
                         ids=["aes-128-gcm", "aes-256-cbc+hmac-sha256-128"])
def test_ethernet_linktype(ipsec_bin, tmp_path, cipher, integ):
    sc = SCENARIOS[0]  # tunnel, outer IPv4, inner IPv4 and IPv6
    spi = 0x50000 + PAIRS.index((cipher, integ))
    pkts = [_freeze(v4(tcp(3389, _pl(40, "e1")))), _freeze(v6(tcp(443, _pl(40, "e2")))),
            _freeze(v4(udp(53, _pl(20, "e3"))))]
    plain = [raw(p) for p in pkts]
    eth = [raw(Ether(dst=MAC_B, src=MAC_A, type=0x0800 if p[0] >> 4 == 4 else 0x86DD)) + p
           for p in plain]
    sa_path = str(tmp_path / "sa.toml")
    write_sa_file(sa_path, [
        sa_entry("out", cipher, integ, spi, "outbound", "tunnel", outer=4),
        sa_entry("in", cipher, integ, spi + 0x100, "inbound", "tunnel"),
    ])

    # A: we encrypt Ethernet frames, scapy decrypts the IP payload
    write_pcap(str(tmp_path / "a_in.pcap"), eth, LINKTYPE_ETHERNET)
    p, records = run_cli(ipsec_bin, "encrypt", sa_path, str(tmp_path / "a_in.pcap"),
                         str(tmp_path / "a_out.pcap"), name="out")
    check_records(p, records, len(eth))
    linktype, out = read_pcap(str(tmp_path / "a_out.pcap"))
    assert linktype == LINKTYPE_ETHERNET
    assert len(out) == len(eth)
    sa = scapy_sa(cipher, integ, spi, sc)
    for i, (pt, frame) in enumerate(zip(plain, out)):
        e = Ether(frame)
        assert (e.dst, e.src) == (MAC_B, MAC_A), "packet #%d: MAC addresses not kept" % i
        assert e.type == 0x0800, "packet #%d: ethertype 0x%04x for an IPv4 outer packet" % (i, e.type)
        assert_same_bytes(raw(sa.decrypt(IP(frame[14:]))), pt, "packet #%d" % i)

    # B: scapy encrypts, we decrypt Ethernet frames
    sc_in = Scenario("eth", "tunnel", 4, None)
    protected = scapy_protect(cipher, integ, spi + 0x100, sc_in, pkts, [1, 2, 3])
    frames = [raw(Ether(dst=MAC_B, src=MAC_A, type=0x0800)) + c for c in protected]
    write_pcap(str(tmp_path / "b_in.pcap"), frames, LINKTYPE_ETHERNET)
    p, records = run_cli(ipsec_bin, "decrypt", sa_path, str(tmp_path / "b_in.pcap"),
                         str(tmp_path / "b_out.pcap"))
    check_records(p, records, len(frames))
    linktype, out = read_pcap(str(tmp_path / "b_out.pcap"))
    assert linktype == LINKTYPE_ETHERNET
    assert len(out) == len(plain)
    for i, (pt, frame) in enumerate(zip(plain, out)):
        e = Ether(frame[:14])
        assert (e.dst, e.src) == (MAC_B, MAC_A), "packet #%d: MAC addresses not kept" % i
        want_type = 0x0800 if pt[0] >> 4 == 4 else 0x86DD
        assert e.type == want_type, "packet #%d: ethertype 0x%04x, inner is IPv%d" % (
            i, e.type, pt[0] >> 4)
        assert_same_bytes(frame[14:], pt, "packet #%d" % i)


# --------------------------------------------------------------------------
# RFC 6040 decapsulation: outer CE on an ECN-capable inner packet becomes inner CE
# --------------------------------------------------------------------------


def test_decap_propagates_ce(ipsec_bin, tmp_path):
    cipher, integ = "aes-128-gcm", None
    sc = SCENARIOS[0]
    spi = 0x60000
    inner = [_freeze(v4(tcp(443, _pl(30, "ce1")), tos=0x8a)),     # AF41 + ECT(0)
             _freeze(v6(tcp(443, _pl(30, "ce2")), tc=0x8a)),
             _freeze(v4(tcp(443, _pl(30, "ce3")), tos=0x88))]     # AF41 not-ECT
    protected = []
    for i, pkt in enumerate(inner):
        outer_tos = 0x8b if i < 2 else 0x88   # outer CE (not-ECT inner: outer left not-ECT)
        sa = scapy_sa(cipher, integ, spi, sc, tos=outer_tos)
        protected.append(scapy_encrypt(sa, pkt, i + 1))
    sa_path, inp, outp = (str(tmp_path / n) for n in ("sa.toml", "in.pcap", "out.pcap"))
    write_sa_file(sa_path, [sa_entry("in", cipher, integ, spi, "inbound", "tunnel")])
    write_pcap(inp, protected, LINKTYPE_RAW)
    p, records = run_cli(ipsec_bin, "decrypt", sa_path, inp, outp)
    check_records(p, records, len(inner))
    _, out = read_pcap(outp)
    want0 = inner[0].copy()
    want0.tos = 0x8b
    del want0.chksum
    want1 = inner[1].copy()
    want1.tc = 0x8b
    want = [raw(want0.__class__(raw(want0))), raw(want1), raw(inner[2])]
    for i, (w, g) in enumerate(zip(want, out)):
        assert_same_bytes(g, w, "packet #%d: RFC 6040 4.2 (outer CE, inner ECT -> inner CE)" % i)


# --------------------------------------------------------------------------
# Outer IPv4 DF policy (RFC 4301 8.1) and Identification (RFC 6864)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("df", [None, "copy", "set", "clear"])
def test_outer_ipv4_df_policy_and_identification(ipsec_bin, tmp_path, df):
    """`df = "copy" | "set" | "clear"` in the [[sa]] table; scapy reads the flags and
    recomputes the header checksum; every packet has its own Identification."""
    cipher, integ = "aes-128-gcm", None
    spi = 0x70000 + [None, "copy", "set", "clear"].index(df)
    pkts = [_freeze(v4(tcp(3389, _pl(30, "df1")))),                  # DF set
            _freeze(IP(src=I4_SRC, dst=I4_DST, flags=0, id=7) / udp(53, _pl(20, "df2"))),
            _freeze(v6(tcp(443, _pl(30, "df3")))),                      # no DF field
            _freeze(v4(tcp(445, _pl(1200, "df4"))))]
    plain = [raw(p) for p in pkts]
    want = {None: [1, 0, 1, 1], "copy": [1, 0, 1, 1], "set": [1, 1, 1, 1],
            "clear": [0, 0, 0, 0]}[df]
    entry = sa_entry("out", cipher, integ, spi, "outbound", "tunnel", outer=4, nat_t=True)
    if df is not None:
        entry["df"] = df
    sa_path, inp, outp = (str(tmp_path / n) for n in ("sa.toml", "in.pcap", "out.pcap"))
    write_sa_file(sa_path, [entry])
    write_pcap(inp, plain, LINKTYPE_RAW)
    p, records = run_cli(ipsec_bin, "encrypt", sa_path, inp, outp)
    check_records(p, records, len(plain))
    _, out = read_pcap(outp)
    outer = [IP(o) for o in out]
    assert [int(o.flags == "DF") for o in outer] == want, [str(o.flags) for o in outer]
    ids = [o.id for o in outer]
    assert ids == [(ids[0] + i) & 0xFFFF for i in range(len(ids))], ids
    for o in outer:
        fresh = o.copy()
        del fresh.chksum
        assert IP(raw(fresh)).chksum == o.chksum, "outer IPv4 header checksum"
        assert o.frag == 0
    sa = scapy_sa(cipher, integ, spi, Scenario("df", "tunnel", 4, None, nat_t=True))
    for pt, o in zip(plain, out):
        assert_same_bytes(raw(sa.decrypt(IP(o))), pt, "scapy decrypt")


# --------------------------------------------------------------------------
# Transport mode behind a NAT: the inner checksum after decryption (RFC 3948 3.1.2)
# --------------------------------------------------------------------------

PEER_PRIVATE4, PEER_PUBLIC4 = "10.0.0.5", "203.0.113.77"
PEER_PRIVATE6, PEER_PUBLIC6 = "2001:db8:1::5", "2001:db8:77::5"


def nat_packets():
    ip4 = lambda l4: IP(src=PEER_PRIVATE4, dst=I4_DST, flags="DF", id=0x1234) / l4
    ip6 = lambda l4: IPv6(src=PEER_PRIVATE6, dst=I6_DST, hlim=64) / l4
    return [
        _freeze(ip4(tcp(3389, _pl(40, "n1")))),
        _freeze(ip4(udp(53, _pl(33, "n2")))),
        _freeze(ip6(tcp(443, _pl(40, "n3")))),
        _freeze(ip6(udp(53, _pl(33, "n4")))),
        _freeze(ip6(ICMPv6EchoRequest(id=0x4d2, seq=3, data=_pl(16, "n5")))),
    ]


@pytest.mark.parametrize("with_nat_oa", [True, False], ids=["nat-oa", "recompute"])
def test_transport_checksum_fixed_after_nat(ipsec_bin, tmp_path, with_nat_oa):
    """scapy protects transport-mode packets in UDP; a NAT rewrites their source address
    (it cannot fix the TCP/UDP checksum inside ESP); `ipsec pcap decrypt` must hand out
    packets whose inner checksum scapy recomputes to the same value over the addresses
    they arrived with: incrementally from `nat_original_addresses`, or recomputed."""
    cipher, integ = "aes-256-gcm", None
    sc = Scenario("nat", "transport", None, None, nat_t=True)
    pkts = nat_packets()
    protected = []
    for i, pkt in enumerate(pkts):
        sa = scapy_sa(cipher, integ, 0x71000 + int(pkt.version == 6), sc)
        wire = parse_ip(scapy_encrypt(sa, pkt, i + 1))
        if wire.version == 4:
            wire.src = PEER_PUBLIC4
            del wire.chksum
        else:
            wire.src = PEER_PUBLIC6
        protected.append(raw(wire))
    entries = []
    for fam, private, spi in ((4, PEER_PRIVATE4, 0x71000), (6, PEER_PRIVATE6, 0x71001)):
        e = sa_entry("in%d" % fam, cipher, integ, spi, "inbound", "transport", nat_t=True)
        if with_nat_oa:
            e["nat_original_addresses"] = [private, I4_DST if fam == 4 else I6_DST]
        entries.append(e)
    sa_path, inp, outp = (str(tmp_path / n) for n in ("sa.toml", "in.pcap", "out.pcap"))
    write_sa_file(sa_path, entries)
    write_pcap(inp, protected, LINKTYPE_RAW)
    p, records = run_cli(ipsec_bin, "decrypt", sa_path, inp, outp)
    check_records(p, records, len(pkts))
    _, out = read_pcap(outp)
    assert len(out) == len(pkts)
    for i, (pkt, got) in enumerate(zip(pkts, out)):
        g = parse_ip(got)
        assert g.src in (PEER_PUBLIC4, PEER_PUBLIC6), "packet #%d keeps the received address" % i
        layer = TCP if g.haslayer(TCP) else UDP if g.haslayer(UDP) else ICMPv6EchoRequest
        field = "cksum" if layer is ICMPv6EchoRequest else "chksum"
        fresh = g.copy()
        delattr(fresh[layer], field)
        want = parse_ip(raw(fresh))[layer]
        have = g[layer]
        assert getattr(have, field) == getattr(want, field), \
            "packet #%d: inner %s checksum 0x%04x, scapy computes 0x%04x" % (
                i, layer.__name__, getattr(have, field), getattr(want, field))
        assert raw(have.payload) == raw(pkt[layer].payload), "packet #%d payload" % i
