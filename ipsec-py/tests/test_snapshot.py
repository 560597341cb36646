"""High availability: ``sa.snapshot(now)`` and ``SecurityAssociation.restore``.

A standby restored from a stale snapshot never repeats a sequence number (an AEAD
nonce) of the primary, a restore below ``not_below`` or past the sequence space is
refused, the restored inbound window refuses what its snapshot had recorded, and bad
bytes raise ``ConfigError`` naming the ``snapshot`` field.
"""

from __future__ import annotations

import pytest

import ipsec
from helpers import PAIR_IDS, PAIRS, esp_seq, sa_pair, udp4


@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
def test_stale_failover_never_repeats_a_sequence_number(pair: tuple[str, str | None]) -> None:
    out, inb = sa_pair(*pair)
    sent = [out.encrypt(udp4(i), now=1.0) for i in range(5)]
    for p in sent:
        inb.decrypt(p, now=1.0)
    snap_out = out.snapshot(2.0)
    snap_in = inb.snapshot(2.0)
    assert isinstance(snap_out, bytes) and snap_out[:8] == b"IPSEC-SA"
    late = [out.encrypt(udp4(i), now=3.0) for i in range(5, 9)]  # after the snapshot

    standby_out = ipsec.SecurityAssociation.restore(snap_out, 50.0, seq_margin=100)
    standby_in = ipsec.SecurityAssociation.restore(snap_in, 50.0)
    assert standby_out.seq == 105
    assert standby_out.stats["packets"] == 5
    assert (standby_out.cipher, standby_out.integrity) == pair
    new = [standby_out.encrypt(udp4(i), now=51.0) for i in range(9, 12)]
    seqs = [esp_seq(p) for p in sent + late + new]
    assert len(set(seqs)) == len(seqs)
    assert [esp_seq(p) for p in new] == [106, 107, 108]

    for p in sent:
        with pytest.raises(ipsec.ReplayError):
            standby_in.decrypt(p, now=51.0)
    assert standby_in.decrypt(late[0], now=51.0) == udp4(5)  # in flight at failover
    with pytest.raises(ipsec.ReplayError):
        standby_in.decrypt(late[0], now=51.0)
    for i, p in enumerate(new):
        assert standby_in.decrypt(p, now=51.0) == udp4(9 + i)
    assert standby_in.stats["replay"] == 6


def test_default_margin_not_below_and_sequence_space() -> None:
    assert ipsec.SecurityAssociation.DEFAULT_SEQ_MARGIN == 2**20
    out, _ = sa_pair(seq=100)
    snap = out.snapshot()
    assert ipsec.SecurityAssociation.restore(snap).seq == 100 + 2**20
    assert ipsec.SecurityAssociation.restore(snap, seq_margin=50, not_below=150).seq == 150
    with pytest.raises(ipsec.ConfigError) as e:
        ipsec.SecurityAssociation.restore(snap, seq_margin=50, not_below=151)
    assert e.value.field == "not_below"
    assert isinstance(e.value, ValueError)

    near_end, _ = sa_pair(seq=2**32 - 10)
    snap = near_end.snapshot()
    with pytest.raises(ipsec.ConfigError) as e:
        ipsec.SecurityAssociation.restore(snap)
    assert e.value.field == "seq_margin"
    assert ipsec.SecurityAssociation.restore(snap, seq_margin=8).seq == 2**32 - 2
    for bad in ({"seq_margin": -1}, {"seq_margin": 2**64}, {"not_below": -5}):
        with pytest.raises(ipsec.ConfigError) as e:
            ipsec.SecurityAssociation.restore(snap, **bad)
        assert e.value.field == next(iter(bad))
    esn, _ = sa_pair(seq=2**32 - 10, esn=True)
    assert ipsec.SecurityAssociation.restore(esn.snapshot()).seq == 2**32 - 10 + 2**20


def test_lifetime_age_carries_over_to_another_clock() -> None:
    out = ipsec.SecurityAssociation(
        spi=0x2000, direction="outbound", mode="tunnel", cipher="aes-128-gcm",
        key=bytes(20), tunnel_src="192.0.2.1", tunnel_dst="192.0.2.2",
        hard_lifetime=ipsec.Lifetime(seconds=100), now=1000.0,
    )
    snap = out.snapshot(1060.0)  # 60 s used
    standby = ipsec.SecurityAssociation.restore(snap, 5.0, seq_margin=1)
    standby.encrypt(udp4(1), now=44.0)
    with pytest.raises(ipsec.LifetimeExpiredError):
        standby.encrypt(udp4(2), now=45.0)
    late = ipsec.SecurityAssociation.restore(snap, 5.0, elapsed_since_snapshot=30.0)
    with pytest.raises(ipsec.LifetimeExpiredError):
        late.encrypt(udp4(1), now=15.0)


def test_bad_bytes_raise_config_error_naming_the_snapshot() -> None:
    out, _ = sa_pair()
    snap = out.snapshot()
    cases = {
        "truncated": snap[:-1],
        "magic": b"X" + snap[1:],
        "version 7": snap[:8] + b"\x00\x07" + snap[10:],
        "truncated ": b"",
        "length": snap + b"\x00",
    }
    for expected, data in cases.items():
        with pytest.raises(ipsec.ConfigError) as e:
            ipsec.SecurityAssociation.restore(data)
        assert e.value.field == "snapshot"
        assert expected.strip() in str(e.value)
    # A bytearray works too (copied into memory that is wiped).
    assert ipsec.SecurityAssociation.restore(bytearray(snap), seq_margin=1).seq == 1
    with pytest.raises(TypeError):
        ipsec.SecurityAssociation.restore("not bytes")  # type: ignore[arg-type]
