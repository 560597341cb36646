"""Worker gateways: one ipsec.Gateway per Python thread, each holding its lane of one
ipsec.SharedSa (Gateway.add_sa_lane). The threads' batches run with the GIL released;
the sequence numbers the two gateways send are each used once, an ordinary SA of the
peer decrypts them all, a rekey goes lane by lane, and a refused lane stays usable.
"""

from __future__ import annotations

import struct
import threading
from typing import Any

import pytest

import ipsec
from helpers import T4_DST, T4_SRC, key_for

SPI = 0x5151
N = 400  # packets per worker

DENY = '[[policy]]\nname = "deny"\ndirection = "both"\naction = "discard"\n'


def rdp_policy(direction: str, sa: str) -> str:
    return (f'name = "branch"\ndirection = "{direction}"\nlocal = "10.0.0.0/24"\n'
            f'remote = "10.1.0.0/24"\naction = "protect"\nsa = "{sa}"\n')


def packet(src: str, dst: str, tag: int) -> bytes:
    """A UDP packet ``src`` -> ``dst`` whose payload starts with ``tag``."""
    payload = struct.pack(">I", tag) + bytes(28)
    header = bytearray([0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0])
    header[2:4] = (20 + 8 + len(payload)).to_bytes(2, "big")
    ip = bytes(header) + bytes(map(int, src.split("."))) + bytes(map(int, dst.split(".")))
    udp = struct.pack(">HHHH", 5000, 5001, 8 + len(payload), 0)
    return ip + udp + payload


def tag_of(inner: bytes) -> int:
    return int(struct.unpack(">I", inner[28:32])[0])


def esp_spi_seq(wire: bytes) -> tuple[int, int]:
    spi, seq = struct.unpack(">II", wire[20:28])
    return int(spi), int(seq)


def shared(direction: str, spi: int = SPI, key: bytes = key_for("aes-128-gcm")) -> ipsec.SharedSa:
    kw: dict[str, Any] = dict(spi=spi, direction=direction, mode="tunnel", cipher="aes-128-gcm",
                              key=key)
    if direction == "outbound":
        kw.update(tunnel_src=T4_SRC, tunnel_dst=T4_DST)
    else:
        kw.update(replay_window=4096)
    return ipsec.SharedSa(lanes=2, **kw)


def worker_gateway(lane: ipsec.SaLane, direction: str) -> ipsec.Gateway:
    gw = ipsec.Gateway(ipsec.Spd.from_toml(DENY))
    gw.add_sa_lane("sa", lane)
    gw.install_policy(rdp_policy(direction, "sa"), before="deny")
    return gw


def test_two_worker_gateways_send_one_sa_each_number_once() -> None:
    sa = shared("outbound")
    gws = [worker_gateway(lane, "outbound") for lane in sa.lanes]
    sent: list[list[ipsec.GatewayVerdict | ipsec.IpsecError]] = [[], []]

    def work(w: int) -> None:
        batch = [packet("10.0.0.1", "10.1.0.1", w << 16 | i) for i in range(N)]
        for start in range(0, N, 50):
            sent[w].extend(gws[w].outbound_many(batch[start:start + 50]))

    threads = [threading.Thread(target=work, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive()
    wires = []
    for verdicts in sent:
        for v in verdicts:
            assert isinstance(v, ipsec.GatewayVerdict), v
            assert (v.action, v.sa) == ("protect", "sa")
            assert v.packet is not None
            wires.append(v.packet)
    seqs = sorted(esp_spi_seq(w)[1] for w in wires)
    assert seqs == list(range(1, 2 * N + 1)), "every number once (blocks of 8 divide N)"
    peer = ipsec.SecurityAssociation(spi=SPI, direction="inbound", mode="tunnel",
                                     cipher="aes-128-gcm", key=key_for("aes-128-gcm"),
                                     replay_window=4096)
    tags = sorted(tag_of(peer.decrypt(w)) for w in sorted(wires, key=esp_spi_seq))
    assert tags == sorted(w << 16 | i for w in (0, 1) for i in range(N))
    del gws
    assert sa.stats["packets"] == 2 * N, "published when the gateways went"


def test_two_worker_gateways_accept_each_packet_once() -> None:
    peer = ipsec.SecurityAssociation(spi=SPI, direction="outbound", mode="tunnel",
                                     cipher="aes-128-gcm", key=key_for("aes-128-gcm"),
                                     tunnel_src=T4_DST, tunnel_dst=T4_SRC)
    wires = peer.encrypt_many([packet("10.1.0.1", "10.0.0.1", i) for i in range(N)])
    sa = shared("inbound")
    gws = [worker_gateway(lane, "inbound") for lane in sa.lanes]
    results: list[list[Any]] = [[], []]

    def work(w: int) -> None:
        results[w] = gws[w].inbound_many(wires)

    threads = [threading.Thread(target=work, args=(w,)) for w in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    accepted = [tag_of(v.packet) for r in results for v in r
                if isinstance(v, ipsec.GatewayVerdict) and v.packet is not None
                and v.action == "protect"]
    refused = [e for r in results for e in r if isinstance(e, ipsec.IpsecError)]
    assert sorted(accepted) == list(range(N)), "each packet accepted by one worker"
    assert len(refused) == N and all(e.reason == "replay" for e in refused)


def test_a_refused_lane_stays_the_callers_and_an_installed_one_is_the_gateways() -> None:
    sa = shared("outbound")
    lane0, lane1 = sa.lanes
    gw = worker_gateway(lane0, "outbound")
    with pytest.raises(ipsec.IpsecError, match="installed in a gateway"):
        lane0.encrypt(packet("10.0.0.1", "10.1.0.1", 1))
    with pytest.raises(ipsec.IpsecError, match="installed in a gateway"):
        lane0.stats
    with pytest.raises(ipsec.DuplicateNameError):
        gw.add_sa_lane("sa", lane1)
    # Refused: lane1 is unchanged and still the caller's.
    wire = lane1.encrypt(packet("10.0.0.1", "10.1.0.1", 2))
    assert esp_spi_seq(wire)[0] == SPI
    with pytest.raises(ipsec.IpsecError, match="installed in a gateway"):
        gw.add_sa_lane("again", lane0)  # already installed
    with pytest.raises(TypeError):
        gw.add_sa_lane("x", "not a lane")  # type: ignore[arg-type]
    with pytest.raises(ipsec.UnknownSaError):
        gw.rekey_sa_lane("nope", "sa.2", lane1)
    # A rekey lane by lane: the policy moves to the successor's lane.
    nxt = shared("outbound", spi=SPI + 1, key=key_for("aes-128-gcm", "next"))
    gw.rekey_sa_lane("sa", "sa.2", nxt.lanes[0])
    gw.delete_sa("sa")
    v = gw.outbound(packet("10.0.0.1", "10.1.0.1", 3))
    assert v.sa == "sa.2" and v.packet is not None and esp_spi_seq(v.packet)[0] == SPI + 1
    assert gw.sa_names == ["sa.2"]


def test_policy_changes_pending_beside_the_classifier_and_the_rebuild() -> None:
    gw = ipsec.Gateway(ipsec.Spd.from_toml(DENY))
    assert (gw.pending_policy_changes, gw.policy_rebuild_due) == (0, False)
    for i in range(32):
        gw.install_policy(f'name = "b{i}"\nlocal = "10.9.{i}.0/24"\naction = "bypass"\n',
                          before="deny")
    assert (gw.pending_policy_changes, gw.policy_rebuild_due) == (32, True)
    verdict = gw.outbound(packet("10.9.7.1", "10.1.0.1", 1))
    assert (verdict.action, verdict.policy) == ("bypass", "b7"), "decided beside the classifier"
    gw.rebuild_policies()
    assert (gw.pending_policy_changes, gw.policy_rebuild_due) == (0, False)
    gw.remove_policy("b7")
    assert gw.pending_policy_changes == 1
    verdict = gw.outbound(packet("10.9.7.1", "10.1.0.1", 2))
    assert verdict.action == "discard", "the removed policy masked out of the classifier"
    edit = gw.edit_policies()
    gw.commit_policies(edit.compile())
    assert gw.pending_policy_changes == 0, "an unchanged batch compiles them in"
