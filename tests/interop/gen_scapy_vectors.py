#!/usr/bin/env python3
"""Generate ESP interop vectors with scapy, an ESP implementation we did not write.

What it does
------------
For every (cipher, integrity) pair of ours that ``scapy.layers.ipsec`` supports,
this script builds realistic inner IP packets, protects them with
``scapy.layers.ipsec.SecurityAssociation.encrypt`` and writes the inputs and
scapy's output to ``tests/interop/scapy_vectors.json`` (next to this file):

    {"scapy_version": "...", "cryptography_version": "...", "generator": "...",
     "vectors": [ {record}, ... ]}

Each record has the fields

    name, cipher, key, integrity, integrity_key, mode, esn, spi, seq,
    tunnel_src, tunnel_dst, udp_encap, plaintext, protected, notes

plus the helper fields ``iv``, ``esn_high``, ``inner_family``, ``outer_family``
and ``esp_offset`` (see tests/interop/README.md for the meaning of every field).

Determinism
-----------
Nothing random is used: keys are SHA-256 of fixed labels, every header field
scapy would otherwise default is set explicitly, and the IV is always passed
to ``SecurityAssociation.encrypt(iv=...)`` (scapy would otherwise draw
``os.urandom``).  AEAD IVs (GCM, GMAC, ChaCha20-Poly1305) are the 64-bit
sequence number, big endian, which is what our library sends (counter-based IVs,
RFC 4106 section 3.1 / RFC 7634 section 2).  CBC IVs are fixed per record
(first 16 bytes of SHA-256 of the record name).  Running the script twice gives
byte-identical JSON for the same scapy/cryptography versions.

Usage
-----
    python tests/interop/gen_scapy_vectors.py               # (re)write the JSON
    python tests/interop/gen_scapy_vectors.py --self-check  # verify the JSON
    python tests/interop/gen_scapy_vectors.py --self-check --output other.json

``--self-check`` reads the JSON back and, for every record,
  1. decrypts ``protected`` with a *fresh* scapy SecurityAssociation and checks
     that the result equals ``plaintext`` byte for byte, and
  2. independently re-verifies the ESP packet with the ``cryptography`` package
     and ``hmac`` (ICV/tag over the RFC 4303/4106/4543/7634 inputs, ESN high
     bits, padding 1,2,3,..., next header) without scapy, so the quirks listed
     in the README are checked rather than assumed.
It also regenerates the vectors in memory and checks the file is up to date.
Exit status 0 means every check passed.

Requirements: Python 3.9+, ``pip install scapy cryptography``.
"""

import argparse
import hashlib
import hmac as pyhmac
import json
import os
import struct
import sys

try:
    import scapy
    from scapy.compat import raw
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import (
        ICMPv6EchoRequest,
        IPv6,
        IPv6ExtHdrDestOpt,
        IPv6ExtHdrHopByHop,
        PadN,
        RouterAlert,
    )
    from scapy.layers.ipsec import ESP, SecurityAssociation
    from scapy.packet import Raw
except ImportError as exc:  # pragma: no cover - environment problem
    sys.exit("this script needs scapy and cryptography: pip install scapy cryptography (%s)" % exc)

import cryptography
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUTPUT = os.path.join(HERE, "scapy_vectors.json")

# --------------------------------------------------------------------------
# Our names -> scapy names, key sizes
# --------------------------------------------------------------------------

# cipher: (scapy CRYPT_ALGOS name, key bytes without salt, salt bytes, kind)
CIPHERS = {
    "aes-128-gcm": ("AES-GCM", 16, 4, "aead"),
    "aes-256-gcm": ("AES-GCM", 32, 4, "aead"),
    "chacha20-poly1305": ("CHACHA20-POLY1305", 32, 4, "aead"),
    "aes-128-gmac": ("AES-NULL-GMAC", 16, 4, "gmac"),
    "aes-256-gmac": ("AES-NULL-GMAC", 32, 4, "gmac"),
    "aes-128-cbc": ("AES-CBC", 16, 0, "cbc"),
    "aes-256-cbc": ("AES-CBC", 32, 0, "cbc"),
    "null": ("NULL", 0, 0, "null"),
}

# integrity: (scapy AUTH_ALGOS name, key bytes, ICV bytes, hashlib name)
INTEGRITY = {
    "hmac-sha1-96": ("HMAC-SHA1-96", 20, 12, "sha1"),
    "hmac-sha256-128": ("SHA2-256-128", 32, 16, "sha256"),
    "hmac-sha384-192": ("SHA2-384-192", 48, 24, "sha384"),
    "hmac-sha512-256": ("SHA2-512-256", 64, 32, "sha512"),
}

# The pairs our library accepts (DESIGN.md "Algorithms"): AEAD and GMAC stand
# alone; CBC and NULL need an HMAC (NULL+NULL is forbidden by RFC 4303).
PAIRS = (
    [(c, None) for c in ("aes-128-gcm", "aes-256-gcm", "chacha20-poly1305",
                         "aes-128-gmac", "aes-256-gmac")]
    + [(c, i) for c in ("aes-128-cbc", "aes-256-cbc", "null") for i in INTEGRITY]
)

# Documentation addresses (RFC 5737 / RFC 3849).
T4_SRC, T4_DST = "192.0.2.1", "198.51.100.2"
T6_SRC, T6_DST = "2001:db8:ffff::1", "2001:db8:ffff::2"
I4_SRC, I4_DST = "10.0.0.5", "10.1.2.3"
I6_SRC, I6_DST = "2001:db8:1::5", "2001:db8:2::3"

OUTER_TTL = 64
NAT_T_PORTS = (4500, 4500)


def _h(label, n):
    """n deterministic bytes derived from a text label."""
    out = b""
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(("%s#%d" % (label, counter)).encode()).digest()
        counter += 1
    return out[:n]


def cipher_key(cipher):
    _, klen, slen, _ = CIPHERS[cipher]
    return _h("key:" + cipher, klen + slen)  # key || salt (RFC 4106 section 8.1 style)


def integrity_key(integ):
    if integ is None:
        return b""
    return _h("integrity-key:" + integ, INTEGRITY[integ][1])


def _payload(n, label):
    """n printable, deterministic payload bytes."""
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    seed = _h("payload:" + label, max(n, 1))
    return bytes(alphabet[b % len(alphabet)] for b in seed[:n])


# --------------------------------------------------------------------------
# Inner packets (fully specified so scapy defaults never leak in)
# --------------------------------------------------------------------------

def ip4(proto_layer, tos=0, ident=0x1c46):
    return IP(version=4, ihl=5, tos=tos, id=ident, flags="DF", frag=0, ttl=64,
              src=I4_SRC, dst=I4_DST) / proto_layer


def tcp(sport, dport, payload, seq=0x1A2B3C4D, ack=0x0BADCAFE):
    return TCP(sport=sport, dport=dport, seq=seq, ack=ack, dataofs=5, flags="PA",
               window=64240, urgptr=0) / Raw(payload)


def inner_v4_tcp(dport, payload, tos=0, sport=49732):
    return ip4(tcp(sport, dport, payload), tos=tos)


def inner_v4_udp(payload):
    return ip4(UDP(sport=53001, dport=53) / Raw(payload), ident=0x2a2a)


def inner_v4_icmp(payload):
    return ip4(ICMP(type=8, code=0, id=0x4d2, seq=7) / Raw(payload), ident=0x3b3b)


def inner_v6(upper, ext=(), tc=0):
    pkt = IPv6(version=6, tc=tc, fl=0x12345, hlim=64, src=I6_SRC, dst=I6_DST)
    for e in ext:
        pkt = pkt / e
    return pkt / upper


def hbh():
    return IPv6ExtHdrHopByHop(options=[RouterAlert(value=0), PadN(optdata=b"")])


def dstopt():
    return IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\x00\x00\x00\x00")])


def inner_v6_tcp(dport, payload, ext=()):
    return inner_v6(tcp(49733, dport, payload), ext=ext)


def inner_v6_udp(payload, ext=()):
    return inner_v6(UDP(sport=53002, dport=53) / Raw(payload), ext=ext)


def inner_v6_icmp(payload, ext=()):
    return inner_v6(ICMPv6EchoRequest(id=0x4d2, seq=9, data=payload), ext=ext)


def freeze(pkt):
    """Build once so lengths/checksums are computed, then reparse."""
    return pkt.__class__(raw(pkt))


def fill_to(builder, total_len, label):
    """Build a packet whose whole IP length is exactly total_len bytes."""
    probe = freeze(builder(b""))
    n = total_len - len(raw(probe))
    if n < 0:
        raise ValueError("cannot make a %d byte packet" % total_len)
    pkt = freeze(builder(_payload(n, label)))
    assert len(raw(pkt)) == total_len
    return pkt


# --------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------

class Scenario(object):
    def __init__(self, tag, mode, outer, inner_fn, seq, esn=False, nat_t=False,
                 note=""):
        self.tag = tag
        self.mode = mode          # "tunnel" | "transport"
        self.outer = outer        # 4 | 6 (tunnel outer family; transport = inner family)
        self.inner_fn = inner_fn  # name -> scapy packet
        self.seq = seq            # 64-bit sequence number used
        self.esn = esn
        self.nat_t = nat_t
        self.note = note


def scenarios_for(cipher, integ):
    """The scenario list for one pair.  Every pair gets the full list."""
    s = [
        Scenario("tunnel-4in4-tcp3389", "tunnel", 4,
                 lambda n: freeze(inner_v4_tcp(3389, _payload(48, n))), seq=1),
        Scenario("tunnel-6in4-tcp443", "tunnel", 4,
                 lambda n: freeze(inner_v6_tcp(443, _payload(40, n))), seq=2),
        Scenario("tunnel-4in6-udp53", "tunnel", 6,
                 lambda n: freeze(inner_v4_udp(_payload(29, n))), seq=3),
        Scenario("tunnel-6in6-icmpv6", "tunnel", 6,
                 lambda n: freeze(inner_v6_icmp(_payload(32, n))), seq=4),
        Scenario("transport-v4-tcp445", "transport", 4,
                 lambda n: freeze(inner_v4_tcp(445, _payload(37, n))), seq=5),
        Scenario("transport-v4-icmp", "transport", 4,
                 lambda n: freeze(inner_v4_icmp(_payload(56, n))), seq=6),
        Scenario("transport-v6-hbh-tcp135", "transport", 6,
                 lambda n: freeze(inner_v6_tcp(135, _payload(33, n), ext=(hbh(),))),
                 seq=7, note="inner IPv6 has a Hop-by-Hop header; ESP goes after it"),
        Scenario("transport-v6-hbh-dstopt-udp", "transport", 6,
                 lambda n: freeze(inner_v6_udp(_payload(21, n), ext=(hbh(), dstopt()))),
                 seq=8, note="Hop-by-Hop then Destination Options (no Routing header): "
                             "scapy inserts ESP AFTER the Destination Options header"),
        Scenario("transport-v6-noext-tcp443", "transport", 6,
                 lambda n: freeze(inner_v6_tcp(443, _payload(17, n))), seq=9),
        Scenario("tunnel-4in4-tcp3389-payload1", "tunnel", 4,
                 lambda n: freeze(inner_v4_tcp(3389, _payload(1, n))), seq=10,
                 note="1-byte TCP payload (41-byte inner packet)"),
        Scenario("tunnel-4in4-tcp443-len64", "tunnel", 4,
                 lambda n: fill_to(lambda p: inner_v4_tcp(443, p), 64, n), seq=11,
                 note="64-byte inner packet"),
        Scenario("tunnel-4in4-tcp445-len1400", "tunnel", 4,
                 lambda n: fill_to(lambda p: inner_v4_tcp(445, p), 1400, n), seq=12,
                 note="1400-byte inner packet"),
        Scenario("transport-v6-hbh-tcp445-len1400", "transport", 6,
                 lambda n: fill_to(lambda p: inner_v6_tcp(445, p, ext=(hbh(),)), 1400, n),
                 seq=13, note="1400-byte inner packet with Hop-by-Hop header"),
        Scenario("tunnel-4in4-dscp-ecn", "tunnel", 4,
                 lambda n: freeze(inner_v4_tcp(3389, _payload(24, n), tos=0x8A)), seq=14,
                 note="inner TOS 0x8a = DSCP AF41 + ECT(0). scapy does NOT copy DSCP/ECN: "
                      "this script passed tos=0x8a in the tunnel header template "
                      "(what RFC 4301 DSCP copy + RFC 6040 normal-mode ECN copy give)"),
        Scenario("tunnel-4in4-natt-tcp3389", "tunnel", 4,
                 lambda n: freeze(inner_v4_tcp(3389, _payload(30, n))), seq=15, nat_t=True),
        Scenario("transport-v4-natt-udp", "transport", 4,
                 lambda n: freeze(inner_v4_udp(_payload(19, n))), seq=16, nat_t=True,
                 note="transport mode NAT-T: scapy does no RFC 3948 section 3.1.2 "
                      "inner checksum fix-up (none needed here: addresses unchanged)"),
        Scenario("tunnel-4in4-esn-2^32-1", "tunnel", 4,
                 lambda n: freeze(inner_v4_tcp(3389, _payload(20, n))),
                 seq=(1 << 32) - 1, esn=True),
        Scenario("tunnel-4in4-esn-2^32", "tunnel", 4,
                 lambda n: freeze(inner_v4_tcp(3389, _payload(20, n))),
                 seq=1 << 32, esn=True,
                 note="low 32 bits on the wire are 0"),
        Scenario("tunnel-4in4-esn-2^32+1", "tunnel", 4,
                 lambda n: freeze(inner_v4_tcp(3389, _payload(20, n))),
                 seq=(1 << 32) + 1, esn=True),
        Scenario("transport-v6-hbh-esn-2^32+1", "transport", 6,
                 lambda n: freeze(inner_v6_tcp(135, _payload(20, n), ext=(hbh(),))),
                 seq=(1 << 32) + 1, esn=True),
    ]
    return s


# --------------------------------------------------------------------------
# Encryption with scapy
# --------------------------------------------------------------------------

def tunnel_template(outer, inner_pkt):
    """The outer header template handed to scapy (copied verbatim by scapy
    except proto/nh, len/plen and checksum)."""
    if isinstance(inner_pkt, IP):
        tos = inner_pkt.tos
    else:
        tos = inner_pkt.tc
    if outer == 4:
        return IP(version=4, ihl=5, tos=tos, id=0, flags=0, frag=0, ttl=OUTER_TTL,
                  src=T4_SRC, dst=T4_DST)
    return IPv6(version=6, tc=tos, fl=0, hlim=OUTER_TTL, src=T6_SRC, dst=T6_DST)


def make_sa(cipher, integ, spi, tunnel_hdr, nat_t, esn, esn_high, seq_low):
    scapy_cipher = CIPHERS[cipher][0]
    key = cipher_key(cipher)
    kwargs = dict(spi=spi, seq_num=seq_low, crypt_algo=scapy_cipher,
                  crypt_key=key if key else None,
                  esn_en=esn, esn=esn_high)
    if integ is not None:
        kwargs["auth_algo"] = INTEGRITY[integ][0]
        kwargs["auth_key"] = integrity_key(integ)
    if tunnel_hdr is not None:
        kwargs["tunnel_header"] = tunnel_hdr
    if nat_t:
        kwargs["nat_t_header"] = UDP(sport=NAT_T_PORTS[0], dport=NAT_T_PORTS[1])
    return SecurityAssociation(ESP, **kwargs)


def iv_for(cipher, name, seq):
    kind = CIPHERS[cipher][3]
    if kind in ("aead", "gmac"):
        return struct.pack("!Q", seq)
    if kind == "cbc":
        return hashlib.sha256(("cbc-iv:" + name).encode()).digest()[:16]
    return b""


def parse_ip(data):
    return IP(data) if (data[0] >> 4) == 4 else IPv6(data)


def minimal_padlen(payload_len, align):
    """RFC 4303 minimal padding: payload || padding || pad length || next header
    is a multiple of align."""
    return -(payload_len + 2) % align


def esp_offset(protected):
    """Offset of the ESP header (SPI) inside the protected packet."""
    pkt = parse_ip(protected)
    esp = pkt[ESP]
    return len(protected) - len(raw(esp))


def build_record(cipher, integ, sc, index):
    name = "%s/%s/%s" % (cipher, integ or "none", sc.tag)
    inner = sc.inner_fn(name)
    plaintext = raw(inner)
    spi = 0x10000 + index
    seq_low = sc.seq & 0xFFFFFFFF
    seq_high = sc.seq >> 32
    if not sc.esn and sc.seq >= (1 << 32):
        raise ValueError("non-ESN record with a 64-bit sequence number")
    tunnel_hdr = tunnel_template(sc.outer, inner) if sc.mode == "tunnel" else None
    # scapy treats seq_num=0 as "use the SA counter", so the counter carries
    # the low 32 bits and encrypt() is called without seq_num.
    sa = make_sa(cipher, integ, spi, tunnel_hdr, sc.nat_t, sc.esn, seq_high, seq_low)
    iv = iv_for(cipher, name, sc.seq)
    out = sa.encrypt(inner.copy(), iv=iv)
    protected = raw(out)

    notes = []
    if sc.note:
        notes.append(sc.note)
    kind = CIPHERS[cipher][3]
    off = esp_offset(protected)
    inner_len = len(plaintext) if sc.mode == "tunnel" else len(plaintext) - (off - (8 if sc.nat_t else 0))
    align = 16 if kind == "cbc" else 4
    padlen = minimal_padlen(inner_len, align)
    notes.append("padding: %s (scapy pads minimally: payload+2 to a multiple of %d)"
                 % ("%d bytes 01..%02x" % (padlen, padlen) if padlen else "none", align))
    if kind in ("aead", "gmac"):
        notes.append("IV = 64-bit sequence number (passed to scapy; scapy would use os.urandom)")
    elif kind == "cbc":
        notes.append("CBC IV fixed by this script = SHA-256('cbc-iv:'+name)[:16]")
    if sc.esn:
        if kind == "aead":
            notes.append("ESN: AAD = SPI || seq_hi || seq_lo (12 bytes, RFC 4106 section 5)")
        elif kind == "gmac":
            notes.append("ESN: AAD = SPI || seq_hi || seq_lo || IV || payload (RFC 4543)")
        else:
            notes.append("ESN: HMAC input = ESP header..trailer || seq_hi (RFC 4303 section 2.2.1); "
                         "seq_hi is not sent")
    if sc.mode == "tunnel":
        notes.append("outer header is the script's template: %s" % (
            "IPv4 ttl=64 id=0 flags=0 tos=inner DSCP/ECN" if sc.outer == 4 else
            "IPv6 hlim=64 flow label=0 tc=inner DSCP/ECN"))
    if sc.nat_t:
        notes.append("NAT-T: UDP 4500->4500, UDP checksum 0 (RFC 3948 section 2.1)")
    rec = {
        "name": name,
        "cipher": cipher,
        "key": cipher_key(cipher).hex(),
        "integrity": integ,
        "integrity_key": integrity_key(integ).hex(),
        "mode": sc.mode,
        "esn": sc.esn,
        "spi": spi,
        "seq": sc.seq,
        "tunnel_src": (T4_SRC if sc.outer == 4 else T6_SRC) if sc.mode == "tunnel" else None,
        "tunnel_dst": (T4_DST if sc.outer == 4 else T6_DST) if sc.mode == "tunnel" else None,
        "udp_encap": list(NAT_T_PORTS) if sc.nat_t else None,
        "plaintext": plaintext.hex(),
        "protected": protected.hex(),
        "iv": iv.hex(),
        "esn_high": seq_high,
        "inner_family": 4 if isinstance(inner, IP) else 6,
        "outer_family": sc.outer if sc.mode == "tunnel" else (4 if isinstance(inner, IP) else 6),
        "esp_offset": off,
        "notes": "; ".join(notes),
    }
    return rec


def generate():
    vectors = []
    index = 0
    for cipher, integ in PAIRS:
        for sc in scenarios_for(cipher, integ):
            vectors.append(build_record(cipher, integ, sc, index))
            index += 1
    return {
        "scapy_version": scapy.__version__,
        "cryptography_version": cryptography.__version__,
        "generator": "tests/interop/gen_scapy_vectors.py",
        "pairs": [[c, i] for c, i in PAIRS],
        "vectors": vectors,
    }


# --------------------------------------------------------------------------
# Self-check
# --------------------------------------------------------------------------

def scapy_roundtrip(rec):
    """Decrypt with a fresh scapy SA; return the inner/restored packet bytes."""
    protected = bytes.fromhex(rec["protected"])
    plaintext = bytes.fromhex(rec["plaintext"])
    tunnel_hdr = None
    if rec["mode"] == "tunnel":
        # Any header of the right family works for decryption (scapy only
        # checks that one is configured).
        tunnel_hdr = IP() if rec["outer_family"] == 4 else IPv6()
    sa = make_sa(rec["cipher"], rec["integrity"], rec["spi"], tunnel_hdr,
                 rec["udp_encap"] is not None, rec["esn"], rec["esn_high"], 1)
    try:
        got = raw(sa.decrypt(parse_ip(protected)))
    except Exception as exc:  # IPSecIntegrityError and parse errors
        return False, repr(exc)
    return got == plaintext, got


def independent_check(rec):
    """Re-verify the ESP packet without scapy.  Returns a list of problems."""
    problems = []
    protected = bytes.fromhex(rec["protected"])
    plaintext = bytes.fromhex(rec["plaintext"])
    cipher = rec["cipher"]
    kind = CIPHERS[cipher][3]
    key_salt = bytes.fromhex(rec["key"])
    off = rec["esp_offset"]
    esp = protected[off:]

    # outer framing
    if rec["udp_encap"] is not None:
        udp = protected[off - 8:off]
        sport, dport, ulen, csum = struct.unpack("!HHHH", udp)
        if (sport, dport) != tuple(rec["udp_encap"]):
            problems.append("NAT-T ports")
        if ulen != len(esp) + 8:
            problems.append("NAT-T UDP length")
        if csum != 0:
            problems.append("NAT-T UDP checksum not zero")
    if protected[0] >> 4 == 4:
        ihl = (protected[0] & 0x0F) * 4
        hdr = bytearray(protected[:ihl])
        if struct.unpack("!H", hdr[2:4])[0] != len(protected):
            problems.append("outer IPv4 total length")
        want = struct.unpack("!H", hdr[10:12])[0]
        hdr[10:12] = b"\x00\x00"
        s = sum(struct.unpack("!%dH" % (ihl // 2), bytes(hdr)))
        while s >> 16:
            s = (s & 0xFFFF) + (s >> 16)
        if (~s & 0xFFFF) != want:
            problems.append("outer IPv4 header checksum")
        expect_proto = 17 if rec["udp_encap"] else 50
        if protected[9] != expect_proto:
            problems.append("outer IPv4 protocol")
    else:
        if struct.unpack("!H", protected[4:6])[0] != len(protected) - 40:
            problems.append("outer IPv6 payload length")

    spi, seq_lo = struct.unpack("!II", esp[:8])
    if spi != rec["spi"]:
        problems.append("SPI")
    if seq_lo != rec["seq"] & 0xFFFFFFFF:
        problems.append("sequence number low bits")
    seq_hi = rec["seq"] >> 32
    seq_aad = struct.pack("!III", spi, seq_hi, seq_lo) if rec["esn"] else esp[:8]

    if kind in ("aead", "gmac"):
        key, salt = key_salt[:-4], key_salt[-4:]
        iv = esp[8:16]
        if iv.hex() != rec["iv"]:
            problems.append("IV")
        body, tag = esp[16:-16], esp[-16:]
        nonce = salt + iv
        aead = ChaCha20Poly1305(key) if cipher == "chacha20-poly1305" else AESGCM(key)
        try:
            if kind == "gmac":
                aead.decrypt(nonce, tag, seq_aad + iv + body)
                clear = body
            else:
                clear = aead.decrypt(nonce, body + tag, seq_aad)
        except Exception:  # InvalidTag
            problems.append("AEAD tag")
            return problems
    else:
        integ = rec["integrity"]
        _, _, icv_len, hname = INTEGRITY[integ]
        ikey = bytes.fromhex(rec["integrity_key"])
        covered, icv = esp[:-icv_len], esp[-icv_len:]
        mac_input = covered + (struct.pack("!I", seq_hi) if rec["esn"] else b"")
        if pyhmac.new(ikey, mac_input, hname).digest()[:icv_len] != icv:
            problems.append("HMAC ICV")
        if kind == "cbc":
            iv = esp[8:24]
            if iv.hex() != rec["iv"]:
                problems.append("IV")
            ct = covered[24:]
            dec = Cipher(algorithms.AES(key_salt), modes.CBC(iv)).decryptor()
            clear = dec.update(ct) + dec.finalize()
        else:
            clear = covered[8:]

    padlen, nh = clear[-2], clear[-1]
    padding = clear[-2 - padlen:-2]
    if padding != bytes(range(1, padlen + 1)):
        problems.append("padding is not 1,2,3,...")
    payload = clear[:-2 - padlen]
    if padlen != minimal_padlen(len(payload), 16 if kind == "cbc" else 4):
        problems.append("padding is not minimal")
    if rec["mode"] == "tunnel":
        expect_nh = 4 if rec["inner_family"] == 4 else 41
        if payload != plaintext:
            problems.append("tunnel payload differs from plaintext")
    else:
        if not plaintext.endswith(payload):
            problems.append("transport payload is not the tail of plaintext")
        split = len(plaintext) - len(payload)
        # next header = the protocol of the first header after the split point
        if plaintext[0] >> 4 == 4:
            expect_nh = plaintext[9]
            same = protected[:split]
            if (same[:2] + same[4:9] + same[12:]) != (plaintext[:2] + plaintext[4:9] + plaintext[12:split]):
                problems.append("transport IPv4 header not preserved")
        else:
            expect_nh, pos, last_nh_pos = plaintext[6], 40, 6
            while pos < split:
                expect_nh, last_nh_pos = plaintext[pos], pos
                pos += (plaintext[pos + 1] + 1) * 8
            if pos != split:
                problems.append("transport IPv6 split point not on a header boundary")
            hdr_p, hdr_c = bytearray(plaintext[:split]), bytearray(protected[:split])
            for b in (hdr_p, hdr_c):
                b[4:6] = b"\x00\x00"      # payload length changes
                b[last_nh_pos] = 0        # next header becomes 50
            if hdr_p != hdr_c:
                problems.append("transport IPv6 header chain not preserved")
            if protected[last_nh_pos] != (17 if rec["udp_encap"] else 50):
                problems.append("transport IPv6 next header is not ESP")
    if nh != expect_nh:
        problems.append("next header %d, expected %d" % (nh, expect_nh))
    return problems


def self_check(path):
    with open(path) as f:
        doc = json.load(f)
    bad = 0
    for rec in doc["vectors"]:
        ok, got = scapy_roundtrip(rec)
        problems = [] if ok else ["scapy decrypt != plaintext"]
        problems += independent_check(rec)
        if problems:
            bad += 1
            print("FAIL %s: %s" % (rec["name"], ", ".join(problems)))
    fresh = generate()
    if fresh["scapy_version"] != doc["scapy_version"]:
        print("note: file made by scapy %s, running %s" % (doc["scapy_version"], fresh["scapy_version"]))
    if json.dumps(fresh["vectors"], sort_keys=True) != json.dumps(doc["vectors"], sort_keys=True):
        print("FAIL: regenerating gives different vectors (file stale or generator not deterministic)")
        bad += 1
    print("%d records checked, %d failures" % (len(doc["vectors"]), bad))
    return bad == 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", default=DEFAULT_OUTPUT, help="JSON file (default: %(default)s)")
    ap.add_argument("--self-check", action="store_true",
                    help="verify the JSON file instead of writing it")
    args = ap.parse_args(argv)
    if args.self_check:
        return 0 if self_check(args.output) else 1
    doc = generate()
    with open(args.output, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=False)
        f.write("\n")
    print("wrote %d vectors to %s (scapy %s)" % (len(doc["vectors"]), args.output, doc["scapy_version"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
