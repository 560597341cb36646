"""The Python API contract (DESIGN.md "Python API"): SA round trips, properties, stats,
lifetimes and events, SA files, the replay window, and bad input of every kind."""

from __future__ import annotations

import ipaddress
import os
import random
import struct
from pathlib import Path
from typing import Any, Optional, Union

import pytest

import ipsec
from helpers import EXAMPLES, T4_DST, T4_SRC, key_for, sa_pair, udp4

DROP_KEYS = [
    "auth_failed", "replay", "too_old", "malformed", "bad_padding", "bad_next_header",
    "unknown_spi", "policy_mismatch", "lifetime_expired", "sequence_overflow", "dummy",
    "no_buffer_space", "policy_discard", "nat_keepalive", "ecn_ce_not_ect", "wrong_direction",
    "too_big", "fragment_timeout", "fragment_overlap", "fragment_duplicate", "fragment_limit",
    "fragment_invalid", "fragment_too_short", "fragment_unresolved",
]


def test_version_is_cargo_version() -> None:
    cargo = Path(__file__).resolve().parents[2] / "Cargo.toml"
    text = cargo.read_text()
    section = text[text.index("[workspace.package]"):]
    version = section.split('version = "', 1)[1].split('"', 1)[0]
    assert ipsec.__version__ == version


def test_exception_hierarchy() -> None:
    for cls in (ipsec.AuthenticationError, ipsec.ReplayError, ipsec.MalformedPacketError,
                ipsec.UnknownSpiError, ipsec.PolicyMismatchError, ipsec.LifetimeExpiredError,
                ipsec.SequenceOverflowError, ipsec.ConfigError):
        assert issubclass(cls, ipsec.IpsecError)
        assert cls.__module__ == "ipsec"
    assert issubclass(ipsec.IpsecError, Exception)
    assert issubclass(ipsec.ConfigError, ValueError)
    assert not issubclass(ipsec.AuthenticationError, ValueError)


def test_round_trip_tunnel_and_properties() -> None:
    out, inb = sa_pair()
    pkt = udp4(1)
    protected = out.encrypt(pkt)
    assert isinstance(protected, bytes)
    assert protected[9] == 50  # outer IPv4 protocol: ESP
    assert ipaddress.IPv4Address(protected[12:16]) == ipaddress.IPv4Address(T4_SRC)
    assert ipaddress.IPv4Address(protected[16:20]) == ipaddress.IPv4Address(T4_DST)
    assert struct.unpack("!I", protected[20:24])[0] == 0x1000
    assert inb.decrypt(protected) == pkt
    assert out.spi == 0x1000 and out.direction == "outbound" and inb.direction == "inbound"
    assert out.mode == "tunnel" and out.cipher == "aes-128-gcm" and out.integrity is None
    assert out.esn is False and out.seq == 1 and inb.seq == 1
    assert out.tunnel == (T4_SRC, T4_DST) and inb.tunnel is None and out.udp_encap is None
    assert out.expired is False
    assert out.max_overhead >= len(protected) - len(pkt)
    assert repr(out) == ("SecurityAssociation(spi=0x1000, direction='outbound', mode='tunnel', "
                         "cipher='aes-128-gcm', integrity=None, esn=False)")


def test_stats_keys_and_counts() -> None:
    out, inb = sa_pair()
    pkts = [udp4(i, size=60 + i) for i in range(5)]
    protected = out.encrypt_many(pkts)
    got = inb.decrypt_many(protected)
    assert got == pkts
    s_out, s_in = out.stats, inb.stats
    assert set(s_out) == {"packets", "bytes", *DROP_KEYS}
    assert s_out["packets"] == 5 and s_in["packets"] == 5
    assert s_out["bytes"] == sum(map(len, pkts)) == s_in["bytes"]
    assert all(s_in[k] == 0 for k in DROP_KEYS)


def test_bytearray_input_and_iterables() -> None:
    out, inb = sa_pair()
    pkt = udp4(7)
    a = out.encrypt(bytearray(pkt))
    mixed: list[Union[bytes, bytearray]] = [pkt, bytearray(pkt)]
    b_list = out.encrypt_many(p for p in mixed)
    assert [inb.decrypt(a)] + inb.decrypt_many(tuple(b_list)) == [pkt] * 3
    assert out.encrypt_many([]) == [] and inb.decrypt_many([]) == []


def test_transport_mode_round_trip() -> None:
    out, inb = sa_pair(mode="transport")
    pkt = udp4(3, size=77)
    protected = out.encrypt(pkt)
    assert protected[9] == 50 and protected[12:20] == pkt[12:20]
    assert inb.decrypt(protected) == pkt
    many = out.encrypt_many([udp4(i, size=40 + i) for i in range(20)])
    assert inb.decrypt_many(many) == [udp4(i, size=40 + i) for i in range(20)]


def test_nat_t_round_trip_and_esp_spi() -> None:
    out, inb = sa_pair(udp_encap=(4500, 4500), spi=0x4242)
    protected = out.encrypt(udp4(1))
    assert protected[9] == 17 and struct.unpack("!HH", protected[20:24]) == (4500, 4500)
    assert ipsec.esp_spi(protected) == 0x4242
    assert inb.decrypt(protected) == udp4(1)
    assert out.udp_encap == (4500, 4500)
    with pytest.raises(ipsec.MalformedPacketError):
        ipsec.esp_spi(protected, udp_ports=[4501])
    with pytest.raises(ipsec.MalformedPacketError):
        ipsec.esp_spi(udp4(1))


def test_keepalive_is_counted_under_its_own_reason() -> None:
    _, inb = sa_pair(udp_encap=(4500, 4500))
    from helpers import ipv4, udp
    keepalive = ipv4(T4_DST, T4_SRC, 17, udp(4500, 4500, b"\xff"))
    with pytest.raises(ipsec.MalformedPacketError, match="keepalive") as e:
        inb.decrypt(keepalive)
    assert e.value.reason == "nat_keepalive"
    assert inb.stats["nat_keepalive"] == 1 and inb.stats["malformed"] == 0


def test_wrong_direction_has_its_own_exception_and_counter() -> None:
    out, inb = sa_pair()
    with pytest.raises(ipsec.WrongDirectionError, match="direction") as e:
        inb.encrypt(udp4(1))
    assert e.value.reason == "wrong_direction"
    with pytest.raises(ipsec.WrongDirectionError, match="direction"):
        out.decrypt(udp4(1))
    for sa in (out, inb):
        assert sa.stats["wrong_direction"] == 1 and sa.stats["malformed"] == 0


def test_lifetimes_and_events_with_time_passed_in() -> None:
    sa = ipsec.SecurityAssociation(
        spi=0x2000, direction="outbound", mode="tunnel", cipher="aes-128-gcm",
        key=key_for("aes-128-gcm"), tunnel_src=T4_SRC, tunnel_dst=T4_DST,
        soft_lifetime=ipsec.Lifetime(packets=2, seconds=100.0),
        hard_lifetime=ipsec.Lifetime(packets=4, seconds=200.0), now=1000.0,
        soft_lifetime_jitter=0)  # exact soft limits (the default draws them 10% early)
    assert sa.poll_event() is None
    sa.encrypt(udp4(1))
    assert sa.poll_events() == []
    sa.encrypt(udp4(2))
    events = sa.poll_events()
    assert [(e.kind, e.limit) for e in events] == [("rekey", "packets")]
    assert repr(events[0]) == "SaEvent(kind='rekey', limit='packets')"
    assert sa.poll_events() == []
    # Time is the caller's: 99.9 s after creation nothing, 100 s the time rekey.
    assert sa.poll_event(now=1099.9) is None
    ev = sa.poll_event(now=1100.0)
    assert ev is not None and (ev.kind, ev.limit) == ("rekey", "time")
    assert sa.poll_event() is None
    sa.encrypt(udp4(3))
    sa.encrypt(udp4(4))
    with pytest.raises(ipsec.LifetimeExpiredError, match="packets") as e:
        sa.encrypt(udp4(5))
    assert e.value.reason == "lifetime_expired" and sa.expired
    assert [(e.kind, e.limit) for e in sa.poll_events()] == [("expired", "packets")]


def test_soft_lifetime_jitter_spreads_sas_created_together() -> None:
    def make(i: int, jitter: int = 10) -> ipsec.SecurityAssociation:
        return ipsec.SecurityAssociation(
            spi=0x3000 + i, direction="inbound", mode="tunnel", cipher="aes-128-gcm",
            key=key_for("aes-128-gcm"), soft_lifetime=ipsec.Lifetime(packets=1000, seconds=3600.0),
            hard_lifetime=ipsec.Lifetime(seconds=3601.0), soft_lifetime_jitter=jitter)

    sas = [make(i) for i in range(1000)]
    seconds = [sa.soft_limits.seconds for sa in sas]
    packets = [sa.soft_limits.packets for sa in sas]
    assert all(s is not None and 3240.0 <= s <= 3600.0 for s in seconds)
    assert all(p is not None and 900 <= p <= 1000 for p in packets)
    assert len(set(seconds)) > 990
    assert len(set(packets)) > 90
    exact = make(0, jitter=0).soft_limits
    assert (exact.packets, exact.seconds, exact.bytes) == (1000, 3600.0, None)
    halved = [make(i, jitter=50).soft_limits.seconds for i in range(100)]
    assert all(s is not None and 1800.0 <= s <= 3600.0 for s in halved)
    with pytest.raises(ipsec.ConfigError, match="0..=100") as e:
        make(0, jitter=101)
    assert e.value.field == "soft_lifetime_jitter"
    with pytest.raises(ipsec.ConfigError) as e:
        make(0, jitter=-1)
    assert e.value.field == "soft_lifetime_jitter"
    text = ('[[sa]]\nname = "a"\nspi = 0x1000\ndirection = "inbound"\nmode = "tunnel"\n'
            'cipher = "aes-128-gcm"\nkey = "%s"\nsoft_lifetime = { packets = 1000 }\n'
            % key_for("aes-128-gcm").hex())
    assert ipsec.sas_from_toml(text + "soft_lifetime_jitter = 0\n")["a"].soft_limits.packets == 1000
    with pytest.raises(ipsec.ConfigError) as e:
        ipsec.sas_from_toml(text + "soft_lifetime_jitter = 200\n")
    assert e.value.field == "soft_lifetime_jitter"


def test_time_lifetime_expiry() -> None:
    sa = ipsec.SecurityAssociation(
        spi=0x2001, direction="outbound", mode="tunnel", cipher="aes-128-gcm",
        key=key_for("aes-128-gcm"), tunnel_src=T4_SRC, tunnel_dst=T4_DST,
        soft_lifetime=ipsec.Lifetime(seconds=10.0), hard_lifetime=ipsec.Lifetime(seconds=20.0),
        soft_lifetime_jitter=0, now=50.0)
    assert sa.poll_event(now=59.9) is None
    ev = sa.poll_event(now=60.0)
    assert ev is not None and (ev.kind, ev.limit) == ("rekey", "time")
    assert sa.poll_event(now=61.0) is None
    sa.encrypt(udp4(1), now=65.0)
    sa.encrypt(udp4(2))  # no `now`: the last time given (65 s) is used
    with pytest.raises(ipsec.LifetimeExpiredError, match="time"):
        sa.encrypt(udp4(3), now=70.0)
    assert [(e.kind, e.limit) for e in sa.poll_events()] == [("expired", "time")]
    assert sa.stats["lifetime_expired"] == 1 and sa.stats["packets"] == 2


def test_hard_packet_limit() -> None:
    sa = ipsec.SecurityAssociation(
        spi=0x2002, direction="outbound", mode="tunnel", cipher="aes-128-gcm",
        key=key_for("aes-128-gcm"), tunnel_src=T4_SRC, tunnel_dst=T4_DST,
        hard_lifetime=ipsec.Lifetime(packets=3))
    ok = 0
    with pytest.raises(ipsec.LifetimeExpiredError):
        for i in range(10):
            sa.encrypt(udp4(i))
            ok += 1
    assert ok == 3
    assert [(e.kind, e.limit) for e in sa.poll_events()] == [("expired", "packets")]
    with pytest.raises(ipsec.LifetimeExpiredError) as e:
        sa.encrypt_many([udp4(1), udp4(2)])
    assert e.value.index == 0
    assert sa.stats["lifetime_expired"] == 3


def test_lifetime_object() -> None:
    a = ipsec.Lifetime(bytes=10, packets=None, seconds=1.5)
    assert (a.bytes, a.packets, a.seconds) == (10, None, 1.5)
    assert a == ipsec.Lifetime(bytes=10, seconds=1.5) and a != ipsec.Lifetime(bytes=11)
    assert repr(a) == "Lifetime(bytes=10, packets=None, seconds=1.5)"
    with pytest.raises(ipsec.ConfigError):
        ipsec.Lifetime(seconds=-1.0)
    with pytest.raises(ipsec.ConfigError):
        ipsec.Lifetime(packets=-1)


def test_sequence_overflow() -> None:
    out, _ = sa_pair(seq=(1 << 32) - 2)
    out.encrypt(udp4(1))
    with pytest.raises(ipsec.SequenceOverflowError) as e:
        out.encrypt(udp4(2))
    assert e.value.reason == "sequence_overflow"
    assert out.stats["sequence_overflow"] == 1 and out.seq == (1 << 32) - 1


def test_encrypt_many_reports_first_failure_index() -> None:
    out, _ = sa_pair()
    with pytest.raises(ipsec.MalformedPacketError) as e:
        out.encrypt_many([udp4(1), b"\x45\x00", udp4(2), b"junk"])
    assert e.value.index == 1
    assert out.stats["packets"] == 2 and out.stats["malformed"] == 2


SA_TOML = """
[[sa]]
name = "b1-out"
spi = 0x1000
direction = "outbound"
mode = "tunnel"
cipher = "aes-256-gcm"
key = "%s"
tunnel_src = "192.0.2.1"
tunnel_dst = "192.0.2.2"
padding = "minimal"
soft_lifetime = { packets = 1 }

[[sa]]
name = "b1-in"
spi = 0x1001
direction = "inbound"
mode = "tunnel"
cipher = "aes-256-gcm"
key = "%s"
replay_window = 128
""" % (key_for("aes-256-gcm").hex(), key_for("aes-256-gcm", "peer").hex())

# The peer's end of "b1-out": the same SPI and key, inbound. It belongs in the peer's
# file: with "b1-out" in one file, the key would serve two SAs.
PEER_SA_TOML = """
[[sa]]
name = "hq-in"
spi = 0x1000
direction = "inbound"
mode = "tunnel"
cipher = "aes-256-gcm"
key = "%s"
replay_window = 128
""" % key_for("aes-256-gcm").hex()


def test_sas_from_toml_and_load_sas(tmp_path: Path) -> None:
    sas = ipsec.sas_from_toml(SA_TOML, now=5.0)
    assert sorted(sas) == ["b1-in", "b1-out"]
    assert sas["b1-out"].cipher == "aes-256-gcm"
    protected = sas["b1-out"].encrypt(udp4(9))
    peer = ipsec.sas_from_toml(PEER_SA_TOML)
    assert peer["hq-in"].decrypt(protected) == udp4(9)
    sas["b1-out"].encrypt(udp4(10))
    assert [e.kind for e in sas["b1-out"].poll_events()] == ["rekey"]
    path = tmp_path / "sa.toml"
    path.write_text(SA_TOML)
    assert sorted(ipsec.load_sas(path)) == ["b1-in", "b1-out"]
    assert sorted(ipsec.load_sas(str(path))) == ["b1-in", "b1-out"]
    pair = ipsec.load_sas(os.path.join(EXAMPLES, "sa-pair.toml"))
    hq = ipsec.load_sas(os.path.join(EXAMPLES, "sa-pair-hq.toml"))
    assert sorted(pair) == ["branch-to-hq", "hq-to-branch-in"]
    assert hq["branch-to-hq-in"].decrypt(pair["branch-to-hq"].encrypt(udp4(1))) == udp4(1)
    assert pair["hq-to-branch-in"].decrypt(hq["hq-to-branch"].encrypt(udp4(2))) == udp4(2)


def test_a_key_shared_by_two_sas_is_refused_naming_both() -> None:
    """Issue 11, item 2: two SAs with one key repeat AEAD nonces; every loader refuses
    it (sas_from_toml, load_sas, Spd, Gateway) naming both SAs, never the key."""
    both_ends = SA_TOML + PEER_SA_TOML
    key_hex = key_for("aes-256-gcm").hex()
    with pytest.raises(ipsec.ConfigError) as e:
        ipsec.sas_from_toml(both_ends)
    assert (e.value.field, e.value.context) == ("key", 'sa "hq-in"')
    assert 'the same key as the key of sa "b1-out"' in str(e.value)
    assert "nonces repeat" in str(e.value)
    assert key_hex[:8] not in str(e.value) and key_hex[:8] not in repr(e.value)
    policy = """
[[policy]]
name = "lan"
local = "10.0.0.0/24"
remote = "10.1.0.0/24"
action = "protect"
sa = ["b1-out", "b1-in"]
""" + both_ends
    for load in (ipsec.Spd.from_toml, ipsec.Gateway.from_toml):
        with pytest.raises(ipsec.ConfigError) as e:
            load(policy)
        assert (e.value.field, e.value.context) == ("key", 'sa "hq-in"'), load
        assert key_hex[:8] not in str(e.value)
    lint = [f for f in ipsec.lint_toml(policy) if f.code == "invalid"]
    assert len(lint) == 1 and 'sa "b1-out"' in lint[0].message


@pytest.mark.parametrize("text,context,field", [
    ("[[sa]]\nname='x'\nspi=300\ndirection='outbound'\nmode='tunnel'\ncipher='aes-128-gcm'\n"
     "key='00'\ntunnel_src='192.0.2.1'\ntunnel_dst='192.0.2.2'\n", 'sa "x"', "key"),
    ("[[sa]]\nname='x'\nspi=300\ndirection='sideways'\nmode='tunnel'\ncipher='aes-128-gcm'\n",
     'sa "x"', "direction"),
    ("[[sa]]\nname='x'\nspi=300\nbogus=1\n", 'sa "x"', "bogus"),
    ("[[sa]\n", None, "toml"),
])
def test_sa_file_errors_name_the_sa_and_key(text: str, context: Optional[str],
                                            field: str) -> None:
    with pytest.raises(ipsec.ConfigError) as e:
        ipsec.sas_from_toml(text)
    assert isinstance(e.value, ValueError)
    # `.field` is the key alone, `.context` the SA; the message names both.
    assert (e.value.field, e.value.context) == (field, context)
    assert str(e.value).startswith(f"{context}: {field}: " if context else f"{field}: ")


# A valid outbound SA called "x"; the tests below add one key to it.
SA_X = """[[sa]]
name = "x"
spi = 0x1000
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "%s"
tunnel_src = "192.0.2.1"
tunnel_dst = "192.0.2.2"
""" % bytes(20).hex()


@pytest.mark.parametrize("override,field,fragment", [
    ({"outer_ttl": 0}, "outer_ttl", "1..=255"),
    ({"udp_encap": (0, 0)}, "udp_encap", "source port is 0"),
    ({"udp_encap": (4500, 0)}, "udp_encap", "destination port is 0"),
    ({"soft_lifetime": ipsec.Lifetime(bytes=2000), "hard_lifetime": ipsec.Lifetime(bytes=1000)},
     "soft_lifetime.bytes", "not below"),
    ({"soft_lifetime": ipsec.Lifetime(seconds=60.0),
      "hard_lifetime": ipsec.Lifetime(seconds=60.0)}, "soft_lifetime.seconds", "not below"),
    ({"hard_lifetime": ipsec.Lifetime(packets=0)}, "hard_lifetime.packets", "no limit"),
    # (64, the signature's default, and 0 mean "no window" on an outbound SA, as in C.)
    ({"replay_window": 1024}, "replay_window", "inbound"),
    ({"replay_window": 32}, "replay_window", "inbound"),
    ({"tfc_pad_to": 65535}, "tfc_pad_to", "at most 65470"),
    ({"key": b""}, "key", "key: missing"),
    ({"cipher": "aes-128-cbc", "key": bytes(16), "integrity": "hmac-sha256-128"},
     "integrity_key", "integrity_key: missing"),
])
def test_configurations_that_cannot_work_are_refused(override: dict[str, Any], field: str,
                                                     fragment: str) -> None:
    kwargs = dict(BASE)
    kwargs.update(override)
    with pytest.raises(ipsec.ConfigError) as e:
        ipsec.SecurityAssociation(**kwargs)
    assert (e.value.field, e.value.context) == (field, None)
    assert fragment in str(e.value) and "got 0" not in str(e.value), str(e.value)


def test_values_next_to_the_refusals_are_accepted() -> None:
    # The edges of the refusals above: each works.
    sa = ipsec.SecurityAssociation(
        **BASE, outer_ttl=1, udp_encap=(4500, 4500), tfc_pad_to=65000,
        soft_lifetime=ipsec.Lifetime(bytes=999, seconds=59.0),
        hard_lifetime=ipsec.Lifetime(bytes=1000, seconds=60.0))
    assert sa.udp_encap == (4500, 4500)
    for window in (0, 64):
        ipsec.SecurityAssociation(**BASE, replay_window=window)
    inb = ipsec.SecurityAssociation(**{**BASE, "direction": "inbound"}, replay_window=1024,
                                    esn=True, seq=(1 << 64) - 2)
    assert inb.seq == (1 << 64) - 2


@pytest.mark.parametrize("extra,field", [
    ("outer_ttl = 0", "outer_ttl"),
    ("udp_encap = [0, 0]", "udp_encap"),
    ("soft_lifetime = { packets = 20 }\nhard_lifetime = { packets = 10 }",
     "soft_lifetime.packets"),
    ("replay_window = 1024", "replay_window"),
    ("tfc_pad_to = 65535", "tfc_pad_to"),
    ("hard_lifetime = { bytes = -1 }", "hard_lifetime.bytes"),
    ('seq = "0x1_0000_0000_0000_0000"', "seq"),
    ('esn = true\nseq = "twelve"', "seq"),
])
def test_sa_files_refuse_them_too(tmp_path: Path, extra: str, field: str) -> None:
    path = tmp_path / "sa.toml"
    path.write_text(SA_X + extra + "\n")
    with pytest.raises(ipsec.ConfigError) as e:
        ipsec.sas_from_toml(SA_X + extra + "\n")
    assert (e.value.field, e.value.context) == (field, 'sa "x"'), str(e.value)
    with pytest.raises(ipsec.ConfigError) as e:
        ipsec.load_sas(path)
    assert (e.value.field, e.value.context) == (field, 'sa "x"'), str(e.value)
    # A policy file's [[sa]] tables are the same tables.
    policy = ('[[policy]]\nname = "p"\ndirection = "outbound"\naction = "protect"\n'
              'sa = ["x"]\n' + SA_X + extra + "\n")
    with pytest.raises(ipsec.ConfigError) as e:
        ipsec.Spd.from_toml(policy)
    assert (e.value.field, e.value.context) == (field, 'sa "x"'), str(e.value)


def test_a_missing_key_in_an_sa_file_is_missing() -> None:
    text = SA_X.replace('key = "%s"\n' % bytes(20).hex(), "")
    with pytest.raises(ipsec.ConfigError, match="missing") as e:
        ipsec.sas_from_toml(text)
    assert (e.value.field, e.value.context) == ("key", 'sa "x"')


def test_sa_files_take_64_bit_numbers_as_strings() -> None:
    # TOML integers stop at 2^63-1; an ESN sequence number may use all 64 bits.
    text = SA_X.replace('"outbound"', '"inbound"') + 'esn = true\nseq = "0xffff_ffff_ffff_ff00"\n'
    sas = ipsec.sas_from_toml(text)
    assert sas["x"].seq == 0xFFFF_FFFF_FFFF_FF00
    text = SA_X + 'hard_lifetime = { bytes = "18446744073709551615" }\n'
    assert ipsec.sas_from_toml(text)["x"].cipher == "aes-128-gcm"


def test_load_sas_missing_file_and_bad_types(tmp_path: Path) -> None:
    with pytest.raises(ipsec.ConfigError, match="No such file"):
        ipsec.load_sas(tmp_path / "nope.toml")
    with pytest.raises(TypeError, match="path must be a str or an os.PathLike"):
        ipsec.load_sas(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="text must be a str"):
        ipsec.sas_from_toml(SA_TOML.encode())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="now must be a number"):
        ipsec.sas_from_toml(SA_TOML, now="0")  # type: ignore[arg-type]


# ---------------------------------------------------------------- replay window

def naive_accept(state: dict[str, Any], seq: int, size: int, record: bool) -> bool:
    """Set-based reference window (no ESN): fresh if nonzero, not seen, not too old."""
    seen: set[int] = state["seen"]
    highest: int = state["highest"]
    if seq == 0 or seq in seen or (size and seq + size <= highest):
        return False
    if record:
        seen.add(seq)
        state["highest"] = max(highest, seq)
    return True


@pytest.mark.parametrize("size", [32, 64, 100, 1024])
def test_replay_window_matches_naive_reference(size: int) -> None:
    rng = random.Random(size)
    w = ipsec.ReplayWindow(size=size)
    state: dict[str, Any] = {"seen": set(), "highest": 0}
    top = 1
    for _ in range(5000):
        top += rng.choice([0, 0, 1, 1, 2, 5, size // 2, size])
        seq = max(0, top - rng.randrange(0, 2 * size + 3))
        assert w.check(seq) == naive_accept(state, seq, size, record=False), seq
        assert w.accept(seq) == naive_accept(state, seq, size, record=True), seq
        assert w.highest == state["highest"]


def test_replay_window_esn_crosses_2_32() -> None:
    w = ipsec.ReplayWindow(size=64, esn=True)
    assert w.accept(0xFFFFFFF0) and w.highest == (1 << 32) - 16
    assert w.accept(0xFFFFFFFE)
    assert w.accept(2) and w.highest == (1 << 32) + 2  # high half inferred as 1
    assert w.check(0xFFFFFFF8) and w.accept(0xFFFFFFF8)  # late, below 2^32, in the window
    assert not w.accept(0xFFFFFFF0) and not w.accept(2)  # replays
    assert w.highest == (1 << 32) + 2
    assert repr(w) == "ReplayWindow(size=64, esn=True, highest=%d)" % ((1 << 32) + 2)
    # Below the window's bottom in the lower subspace: RFC 4303 Appendix A takes it as
    # ahead, in the upper subspace.
    assert w.accept(0xFFFFFF00) and w.highest == (1 << 32) + 0xFFFFFF00
    assert w.size == 64 and w.esn


def test_restored_window_refuses_everything_at_or_below_its_top() -> None:
    w = ipsec.ReplayWindow(size=32, esn=False, highest=1000)
    assert not any(w.check(s) for s in range(969, 1001))
    assert w.accept(1001) and not w.accept(1001)


def test_replay_window_defaults_and_errors() -> None:
    w = ipsec.ReplayWindow()
    assert (w.size, w.esn, w.highest) == (64, False, 0)
    assert not w.accept(0)
    with pytest.raises(ipsec.ConfigError, match="size"):
        ipsec.ReplayWindow(size=5)
    with pytest.raises(ValueError, match="seq"):
        w.accept(1 << 32)
    with pytest.raises(ValueError, match="seq"):
        w.check(-1)
    with pytest.raises(TypeError, match="seq must be an int"):
        w.accept("1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="esn must be a bool"):
        ipsec.ReplayWindow(esn="yes")  # type: ignore[arg-type]


# ---------------------------------------------------------------- bad input

BASE: dict[str, Any] = dict(spi=0x1000, direction="outbound", mode="tunnel", cipher="aes-128-gcm",
                            key=bytes(20), tunnel_src=T4_SRC, tunnel_dst=T4_DST)


@pytest.mark.parametrize("override,exc,fragment", [
    ({"spi": 5}, ipsec.ConfigError, "reserved"),
    ({"spi": -1}, ipsec.ConfigError, "out of range"),
    ({"spi": 1 << 32}, ipsec.ConfigError, "out of range"),
    ({"spi": "4096"}, TypeError, "spi must be an int"),
    ({"spi": 4096.0}, TypeError, "spi must be an int"),
    ({"spi": True}, TypeError, "spi must be an int"),
    ({"direction": "sideways"}, ipsec.ConfigError, "direction"),
    ({"direction": 1}, TypeError, "direction must be a str"),
    ({"mode": "tunel"}, ipsec.ConfigError, "mode"),
    ({"cipher": "aes-192-gcm"}, ipsec.ConfigError, "cipher"),
    ({"key": bytes(19)}, ipsec.ConfigError, "key"),
    ({"key": "00" * 20}, TypeError, "key must be bytes"),
    ({"key": None}, TypeError, "key must be bytes"),
    ({"integrity": "hmac-md5"}, ipsec.ConfigError, "integrity"),
    ({"integrity_key": b"xx"}, ipsec.ConfigError, "integrity_key"),
    ({"cipher": "aes-128-cbc", "key": bytes(16)}, ipsec.ConfigError, "integrity"),
    ({"cipher": "aes-128-cbc", "key": bytes(16), "integrity": "hmac-sha256-128",
      "integrity_key": bytes(3)}, ipsec.ConfigError, "integrity_key"),
    ({"tunnel_src": "300.1.1.1"}, ipsec.ConfigError, "not an IPv4 or IPv6 address"),
    ({"tunnel_dst": "2001:db8::1"}, ipsec.ConfigError, "same IP family"),
    ({"tunnel_dst": None}, ipsec.ConfigError, "tunnel_dst"),
    ({"tunnel_src": None, "tunnel_dst": None}, ipsec.ConfigError, "tunnel_src"),
    ({"tunnel_src": 12}, TypeError, "tunnel_src must be a str"),
    ({"mode": "transport"}, ipsec.ConfigError, "transport mode has no tunnel"),
    ({"udp_encap": (4500,)}, TypeError, "udp_encap"),
    ({"udp_encap": (4500, 70000)}, ipsec.ConfigError, "udp_encap"),
    ({"udp_encap": "4500"}, TypeError, "udp_encap"),
    ({"replay_window": 10, "direction": "inbound"}, ipsec.ConfigError, "replay"),
    ({"replay_window": -64}, ipsec.ConfigError, "out of range"),
    ({"seq": 1 << 32}, ipsec.ConfigError, "seq"),
    ({"seq": 1 << 64}, ipsec.ConfigError, "out of range"),
    ({"outer_ttl": 256}, ipsec.ConfigError, "outer_ttl"),
    ({"tfc_pad_to": 1 << 16}, ipsec.ConfigError, "tfc_pad_to"),
    ({"padding": "lots"}, ipsec.ConfigError, "padding"),
    ({"padding": 4}, TypeError, "padding"),
    ({"esn": "yes"}, TypeError, "esn"),
    ({"now": -1.0}, ipsec.ConfigError, "now"),
    ({"now": float("nan")}, ipsec.ConfigError, "now"),
    ({"now": "soon"}, TypeError, "now must be a number"),
    ({"esn": 1}, TypeError, "esn must be a bool"),
    ({"soft_lifetime": {"packets": 1}}, TypeError, "soft_lifetime"),
    ({"bogus": 1}, TypeError, "bogus"),
])
def test_bad_constructor_arguments(override: dict[str, Any], exc: type[Exception],
                                   fragment: str) -> None:
    kwargs = dict(BASE)
    kwargs.update(override)
    with pytest.raises(exc) as e:
        ipsec.SecurityAssociation(**kwargs)
    # PyO3 names the argument of a failed conversion in a PEP 678 note (3.11+).
    message = " ".join([str(e.value), *getattr(e.value, "__notes__", [])])
    assert fragment in message, message
    if exc is ipsec.ConfigError:
        assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("packet,exc", [
    ("not bytes", TypeError),
    (None, TypeError),
    (memoryview(b"\x45"), TypeError),
    ([1, 2, 3], TypeError),
    (b"", ipsec.MalformedPacketError),
    (b"\x45", ipsec.MalformedPacketError),
    (b"\x00" * 40, ipsec.MalformedPacketError),
    (b"\x60" + b"\x00" * 10, ipsec.MalformedPacketError),
    (bytes(range(256)) * 300, ipsec.MalformedPacketError),
])
def test_bad_packets_never_crash(packet: Any, exc: type[Exception]) -> None:
    out, inb = sa_pair()
    with pytest.raises(exc):
        out.encrypt(packet)
    with pytest.raises(exc):
        inb.decrypt(packet)
    if exc is TypeError:
        with pytest.raises(TypeError, match=r"packets\[1\]"):
            out.encrypt_many([udp4(1), packet])
        with pytest.raises(TypeError, match=r"packets\[1\]"):
            inb.decrypt_many([udp4(1), packet])
    else:
        res = inb.decrypt_many([packet])
        assert len(res) == 1 and isinstance(res[0], exc)


def test_random_garbage_is_always_a_typed_error() -> None:
    rng = random.Random(5)
    out, inb = sa_pair(udp_encap=(4500, 4500))
    n = 0
    for _ in range(2000):
        size = rng.randrange(0, 120)
        data = bytes(rng.randrange(256) for _ in range(size))
        if size and rng.random() < 0.5:
            data = bytes([0x45 if rng.random() < 0.5 else 0x60]) + data[1:]
        for r in inb.decrypt_many([data]):
            assert isinstance(r, ipsec.IpsecError)
            assert r.reason in DROP_KEYS
            n += 1
    assert sum(inb.stats[k] for k in DROP_KEYS) == n == 2000


def test_now_arguments_are_checked() -> None:
    out, _ = sa_pair()
    with pytest.raises(ValueError, match="now"):
        out.encrypt(udp4(1), now=-5.0)
    with pytest.raises(TypeError, match="now must be a number"):
        out.encrypt(udp4(1), now="later")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="now must be a number"):
        out.poll_events(now=[1])  # type: ignore[arg-type]
    assert out.poll_event(now=5) is None  # an int is a time too
    with pytest.raises(ValueError, match="now"):
        out.poll_event(float("inf"))


def test_addresses_as_ipaddress_objects() -> None:
    sa = ipsec.SecurityAssociation(
        0x1000, "outbound", "tunnel", "aes-128-gcm", bytes(20), None, b"", False, 64,
        ipaddress.IPv6Address("2001:db8::1"), ipaddress.IPv6Address("2001:db8::2"))
    assert sa.tunnel == ("2001:db8::1", "2001:db8::2")
    protected = sa.encrypt(udp4(1))
    assert protected[0] >> 4 == 6


def test_policy_free_optional_kwargs() -> None:
    out = ipsec.SecurityAssociation(**BASE, tfc_pad_to=200, outer_ttl=9, padding="minimal")
    inb = ipsec.SecurityAssociation(0x1000, "inbound", "tunnel", "aes-128-gcm", bytes(20))
    protected = out.encrypt(udp4(1, size=50))
    assert protected[8] == 9  # outer TTL
    assert len(protected) >= 20 + 8 + 8 + 200 + 2 + 16
    assert inb.decrypt(protected) == udp4(1, size=50)


def test_unknown_keyword_message() -> None:
    with pytest.raises(TypeError, match="unexpected keyword"):
        ipsec.SecurityAssociation(**BASE, window=3)  # type: ignore[call-arg]


def test_none_means_default_for_optional_ints() -> None:
    sa: Optional[ipsec.SecurityAssociation] = ipsec.SecurityAssociation(
        **BASE, replay_window=None, seq=None)  # type: ignore[arg-type]
    assert sa is not None and sa.seq == 0
