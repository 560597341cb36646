"""`ipsec pcap encrypt` with a path MTU, checked by scapy: a packet larger than the path
MTU allows leaves as several ESP packets (RFC 4459 pre-fragmentation), each no larger
than the path MTU; scapy's ESP decrypts each to an IPv4 fragment and scapy's
defragmenter rebuilds the original packet. A DF packet is refused as `too_big`.
"""

from scapy.compat import raw
from scapy.layers.inet import IP, UDP, defragment
from scapy.packet import Raw

from test_scapy_live import (
    I4_DST,
    I4_SRC,
    LINKTYPE_RAW,
    check_records,
    read_pcap,
    run_cli,
    sa_entry,
    scapy_sa,
    write_pcap,
    write_sa_file,
)


class _Tunnel4:
    mode = "tunnel"
    outer = 4
    esn = False
    nat_t = False


def _packet(size, df, ident):
    return IP(src=I4_SRC, dst=I4_DST, id=ident, flags="DF" if df else 0) / UDP(
        sport=5353, dport=53) / Raw(bytes((i * 3) & 0xFF for i in range(size - 28)))


def test_pcap_encrypt_pre_fragments_to_the_path_mtu(ipsec_bin, tmp_path):
    for cipher, integ in (("aes-128-gcm", None), ("aes-256-cbc", "hmac-sha256-128")):
        sa = sa_entry("out", cipher, integ, 0x6100, "outbound", "tunnel", outer=4)
        sa["path_mtu"] = 1000
        sa_path = str(tmp_path / ("sa-%s.toml" % cipher))
        write_sa_file(sa_path, [sa])
        plain = [_packet(2500, False, 0x1111), _packet(400, False, 0x2222),
                 _packet(1200, True, 0x3333)]
        in_path = str(tmp_path / "plain.pcap")
        out_path = str(tmp_path / ("esp-%s.pcap" % cipher))
        write_pcap(in_path, [raw(p) for p in plain], LINKTYPE_RAW)
        p, records = run_cli(ipsec_bin, "encrypt", sa_path, in_path, out_path)
        assert p.returncode == 0, p.stderr
        check_records(p, records, 3, [None, None, "too_big"])
        _, frames = read_pcap(out_path)
        assert len(frames) == 3 + 1, "three ESP packets for the first, one for the second"
        assert all(len(f) <= 1000 for f in frames)
        assert "packets fragmented to fit the path MTU: 1" in p.stderr
        peer = scapy_sa(cipher, integ, 0x6100, _Tunnel4)
        inner = [peer.decrypt(IP(f)) for f in frames]
        assert [x[IP].id for x in inner] == [0x1111] * 3 + [0x2222]
        assert [bool(x[IP].flags.MF) for x in inner] == [True, True, False, False]
        whole = defragment(inner[:3])
        assert len(whole) == 1 and raw(whole[0])[20:] == raw(plain[0])[20:]
        assert raw(inner[3]) == raw(plain[1])
