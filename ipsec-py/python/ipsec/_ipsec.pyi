"""Type stubs of the extension module ``ipsec._ipsec`` (re-exported by ``ipsec``)."""

import os
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv6Address
from typing import ClassVar, Literal, Optional, Union, final

__version__: str
__all__ = [
    "__version__",
    "IpsecError",
    "AuthenticationError",
    "ReplayError",
    "MalformedPacketError",
    "UnknownSpiError",
    "PolicyMismatchError",
    "LifetimeExpiredError",
    "SequenceOverflowError",
    "WrongDirectionError",
    "PacketTooBigError",
    "FragmentError",
    "SpiExhaustedError",
    "ConfigError",
    "ControlError",
    "DuplicateNameError",
    "DuplicateSpiError",
    "UnknownSaError",
    "SaInUseError",
    "MissingSaError",
    "DirectionMismatchError",
    "DuplicatePolicyError",
    "UnknownPolicyError",
    "StalePoliciesError",
    "SecurityAssociation",
    "PacketBatch",
    "SharedSa",
    "SaLane",
    "Lifetime",
    "SaEvent",
    "ReplayWindow",
    "Reassembler",
    "Spd",
    "Decision",
    "Finding",
    "FirewallOpening",
    "Flow",
    "CaseOutcome",
    "CaseReport",
    "Gateway",
    "GatewayVerdict",
    "GatewaySa",
    "PolicyEdit",
    "CompiledPolicies",
    "sas_from_toml",
    "load_sas",
    "esp_spi",
    "too_big_reply",
    "lint_toml",
]

_Bytes = Union[bytes, bytearray]
_Addr = Union[str, IPv4Address, IPv6Address]
# How a gateway finds an inbound SA for a packet (RFC 4301 §4.1; see the README).
_Lookup = Literal["spi", "spi+protocol", "spi+destination", "spi+destination+source"]
_Path = Union[str, "os.PathLike[str]"]

class IpsecError(Exception):
    """Base class of every error raised by the ipsec package."""

    reason: Optional[str]
    """The drop counter the failure was counted under (``"auth_failed"`` ...), or None."""
    index: Optional[int]
    """In ``encrypt_many``: the position of the first packet that failed, or None."""

class AuthenticationError(IpsecError): ...
class ReplayError(IpsecError): ...
class MalformedPacketError(IpsecError): ...
class UnknownSpiError(IpsecError): ...
class PolicyMismatchError(IpsecError): ...
class LifetimeExpiredError(IpsecError): ...
class SequenceOverflowError(IpsecError): ...
class WrongDirectionError(IpsecError): ...

class PacketTooBigError(IpsecError):
    """Too big for the path MTU after ESP and not fragmentable (DF set, or IPv6)."""

    mtu: Optional[int]
    """The largest inner packet, in bytes, that fits."""

class FragmentError(IpsecError): ...

class SpiExhaustedError(IpsecError):
    """No SPI is free: every SPI of the gateway's SPI range is in use or reserved."""

class ConfigError(IpsecError, ValueError):
    """A rejected configuration; also a ValueError."""

    field: Optional[str]
    """The keyword argument or TOML key that was wrong (a nested key with a dot:
    ``hard_lifetime.bytes``)."""
    context: Optional[str]
    """Where the key is: ``sa "b1-out"``, ``policy "p"``, ``case "c"``; None for a
    keyword argument."""

class ControlError(IpsecError):
    """A control call of a live ``Gateway`` (``add_sa``, ``rekey_sa``, ``delete_sa``,
    ``retire_sa``, ``install_policy``, ``replace_policy``, ``remove_policy``) was
    refused; the gateway is unchanged. An invalid SA configuration or policy text
    raises ``ConfigError`` instead."""

class DuplicateNameError(ControlError):
    """The SA name is taken (by an installed SA, or lent by a rekeyed SA to its
    successor)."""

    name: str

class DuplicateSpiError(ControlError):
    """An inbound SA with this SPI is installed."""

    spi: int
    sa: str
    """The inbound SA that has the SPI."""

class UnknownSaError(ControlError):
    """No SA of this name is installed."""

    name: str

class SaInUseError(ControlError):
    """Deleting (or retiring) the SA would leave a policy without the SA it names."""

    sa: str
    policy: str
    """The first policy that needs the SA."""

class MissingSaError(ControlError):
    """The policy names an SA that is not installed, or one of the other direction."""

    policy: str
    sa: str

class DirectionMismatchError(ControlError):
    """A successor (``rekey_sa``) must have the direction of the SA it replaces."""

    sa: str
    """The new SA."""
    replaces: str
    """The SA it was to replace."""

class DuplicatePolicyError(ControlError):
    """A policy of this name is installed (``replace_policy`` changes it)."""

    name: str

class UnknownPolicyError(ControlError):
    """No policy of this name is installed."""

    name: str

class StalePoliciesError(ControlError):
    """``commit_policies``: the gateway's policies changed after the ``PolicyEdit`` was
    taken; nothing changed. Take a new edit and make the changes again."""

@final
class Lifetime:
    """Soft or hard lifetime limits; None means no limit of that kind."""

    def __new__(
        cls,
        *,
        bytes: Optional[int] = None,
        packets: Optional[int] = None,
        seconds: Optional[float] = None,
    ) -> Lifetime: ...
    @property
    def bytes(self) -> Optional[int]: ...
    @property
    def packets(self) -> Optional[int]: ...
    @property
    def seconds(self) -> Optional[float]: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __ne__(self, value: object, /) -> bool: ...

@final
class SaEvent:
    """Something the owner of an SA must act on (from ``poll_event``)."""

    @property
    def kind(self) -> Literal["rekey", "expired"]: ...
    @property
    def limit(self) -> Literal["bytes", "packets", "time"]: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __ne__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class PacketBatch:
    """Packets held by the bindings for ``encrypt_batch`` / ``decrypt_batch`` of an SA
    or a lane: transformed in place with the GIL released and no Python object per
    packet, so Python threads on separate SAs run in parallel. A packet a transform
    refuses is dropped (its exception kept, later transforms skip it)."""

    def __new__(cls, packets: Optional[Iterable[_Bytes]] = None, /) -> PacketBatch: ...
    def load(self, packets: Iterable[_Bytes]) -> None:
        """Replaces the packets with a copy of ``packets``, reusing the buffers."""
    def __len__(self) -> int: ...
    def __getitem__(self, index: int, /) -> bytes:
        """Packet ``index``; raises the exception that dropped it, if it was dropped."""
    @property
    def dropped(self) -> int:
        """How many packets the transforms dropped."""
    def results(self) -> list[Union[bytes, IpsecError]]:
        """Every packet: its bytes, or the exception that dropped it."""

@final
class SecurityAssociation:
    """One direction of an IPsec SA: keys, sequence numbers or replay window, counters."""

    def __new__(
        cls,
        spi: int,
        direction: str,
        mode: str,
        cipher: str,
        key: _Bytes,
        integrity: Optional[str] = None,
        integrity_key: _Bytes = b"",
        esn: bool = False,
        replay_window: int = 64,
        tunnel_src: Optional[_Addr] = None,
        tunnel_dst: Optional[_Addr] = None,
        udp_encap: Optional[tuple[int, int]] = None,
        seq: int = 0,
        *,
        soft_lifetime: Optional[Lifetime] = None,
        hard_lifetime: Optional[Lifetime] = None,
        soft_lifetime_jitter: int = 10,
        padding: str = "blocks",
        tfc_pad_to: Optional[int] = None,
        outer_ttl: int = 64,
        path_mtu: Optional[int] = None,
        df: Literal["copy", "set", "clear"] = "copy",
        nat_keepalive_interval: Optional[float] = 20.0,
        nat_original_addresses: Optional[tuple[_Addr, _Addr]] = None,
        lookup: _Lookup = "spi",
        now: float = 0.0,
    ) -> SecurityAssociation: ...
    def encrypt(self, packet: _Bytes, /, *, now: Optional[float] = None) -> bytes: ...
    def decrypt(self, packet: _Bytes, /, *, now: Optional[float] = None) -> bytes: ...
    def encrypt_many(
        self, packets: Iterable[_Bytes], /, *, now: Optional[float] = None
    ) -> list[bytes]: ...
    def decrypt_many(
        self, packets: Iterable[_Bytes], /, *, now: Optional[float] = None
    ) -> list[Union[bytes, IpsecError]]: ...
    def encrypt_batch(self, batch: PacketBatch, /, *, now: Optional[float] = None) -> int:
        """Encrypts a ``PacketBatch`` in place with the GIL released (no object per
        packet); returns how many packets were encrypted."""
    def decrypt_batch(self, batch: PacketBatch, /, *, now: Optional[float] = None) -> int:
        """Decrypts a ``PacketBatch`` in place with the GIL released; returns how many
        packets were decrypted (refused ones are dropped with their exception)."""
    @property
    def stats(self) -> dict[str, int]: ...
    def poll_event(self, now: Optional[float] = None) -> Optional[SaEvent]: ...
    def poll_events(self, now: Optional[float] = None) -> list[SaEvent]: ...
    def poll_keepalive(self, now: Optional[float] = None) -> Optional[bytes]:
        """The NAT-keepalive (a whole IP packet) the SA owes its peer at ``now``, counted
        as sent; None when none is due."""
    @property
    def next_keepalive(self) -> Optional[float]:
        """When the next NAT-keepalive is due (seconds, the caller's clock); None when
        the SA sends none."""
    @property
    def soft_limits(self) -> Lifetime:
        """The soft limits in force: the soft lifetime with the jitter drawn when the SA
        was created (``soft_lifetime_jitter``, percent, default 10)."""
    @property
    def nat_keepalive_interval(self) -> Optional[float]: ...
    DEFAULT_SEQ_MARGIN: ClassVar[int]
    def snapshot(self, now: Optional[float] = None) -> bytes:
        """The SA's whole state (keys included: protect the bytes like keys) for
        ``restore`` on a standby."""
    @staticmethod
    def restore(
        snapshot: _Bytes,
        /,
        now: Optional[float] = None,
        *,
        seq_margin: Optional[int] = None,
        not_below: Optional[int] = None,
        elapsed_since_snapshot: Optional[float] = None,
    ) -> SecurityAssociation:
        """An SA restored from ``snapshot`` at ``now`` (this machine's clock). Outbound:
        continues after the snapshot's sequence number + ``seq_margin`` (None:
        ``DEFAULT_SEQ_MARGIN``, 2**20); refused
        (ConfigError, field ``not_below``) when that is below ``not_below``. Inbound:
        the replay window exactly as it was."""
    @property
    def spi(self) -> int: ...
    @property
    def direction(self) -> Literal["outbound", "inbound"]: ...
    @property
    def mode(self) -> Literal["tunnel", "transport"]: ...
    @property
    def cipher(self) -> str: ...
    @property
    def integrity(self) -> Optional[str]: ...
    @property
    def esn(self) -> bool: ...
    @property
    def seq(self) -> int: ...
    @property
    def last_used(self) -> Optional[float]:
        """When the SA last carried traffic (seconds, caller's clock), or None."""
    @property
    def tunnel(self) -> Optional[tuple[str, str]]: ...
    @property
    def udp_encap(self) -> Optional[tuple[int, int]]: ...
    @property
    def lookup(self) -> _Lookup:
        """How a gateway finds this inbound SA for a packet (RFC 4301 §4.1)."""
    @property
    def expired(self) -> bool: ...
    @property
    def max_overhead(self) -> int: ...
    def encrypt_fragments(self, packet: _Bytes, /, *, now: Optional[float] = None) -> list[bytes]:
        """Protects a packet that may not fit the path MTU: every packet to send, in order
        (IPv4 with DF clear is pre-fragmented, each fragment its own ESP packet)."""
    @property
    def path_mtu(self) -> Optional[int]:
        """The path MTU in force (configured, or lower and learned from ICMP)."""
    @property
    def inner_mtu(self) -> Optional[int]:
        """The largest inner packet that fits the path MTU after ESP."""
    def set_path_mtu(self, mtu: Optional[int]) -> None: ...
    def handle_icmp(self, packet: _Bytes, /, *, now: Optional[float] = None) -> Optional[int]:
        """Learns a lower path MTU from an ICMP too-big message about this SA's packets;
        the new path MTU, or None when it did not go down."""

@final
class SharedSa:
    """One SA processed by several threads: the shared part (``spi``, ``seq``, summed
    ``stats``); the packets go through its ``lanes``, one per thread. Outbound sequence
    numbers are leased to the lanes ``block`` at a time (never one used twice, none
    skipped while the lanes run); inbound lanes share one replay window (a packet given
    to two lanes is accepted by one). Keywords: ``SecurityAssociation``'s."""

    def __new__(
        cls,
        *,
        lanes: int,
        block: int = 8,
        now: float = 0.0,
        spi: int,
        direction: str,
        mode: str,
        cipher: str,
        key: _Bytes,
        integrity: Optional[str] = None,
        integrity_key: _Bytes = b"",
        esn: bool = False,
        replay_window: int = 64,
        tunnel_src: Optional[_Addr] = None,
        tunnel_dst: Optional[_Addr] = None,
        udp_encap: Optional[tuple[int, int]] = None,
        seq: int = 0,
        soft_lifetime: Optional[Lifetime] = None,
        hard_lifetime: Optional[Lifetime] = None,
        soft_lifetime_jitter: int = 10,
        padding: str = "blocks",
        tfc_pad_to: Optional[int] = None,
        outer_ttl: int = 64,
        path_mtu: Optional[int] = None,
        df: Literal["copy", "set", "clear"] = "copy",
        nat_keepalive_interval: Optional[float] = 20.0,
        nat_original_addresses: Optional[tuple[_Addr, _Addr]] = None,
        lookup: _Lookup = "spi",
    ) -> SharedSa: ...
    @property
    def lanes(self) -> list[SaLane]:
        """The lanes, in order (``lanes[i].index == i``); the same objects every time."""
    @property
    def spi(self) -> int: ...
    @property
    def direction(self) -> Literal["outbound", "inbound"]: ...
    @property
    def block(self) -> int: ...
    @property
    def seq(self) -> int:
        """Outbound: the highest sequence number leased to a lane. Inbound: the highest
        accepted."""
    @property
    def stats(self) -> dict[str, int]:
        """The sum of what the lanes published (``SecurityAssociation.stats``' shape): a
        lane publishes at each block lease (outbound), every 64 packets (inbound), on
        ``publish()`` and when freed."""

@final
class SaLane:
    """One thread's lane of a ``SharedSa``: the packet calls of ``SecurityAssociation``
    (the batches release the GIL); each lane has its own lock, so lanes run in
    parallel."""

    @property
    def index(self) -> int: ...
    @property
    def spi(self) -> int: ...
    @property
    def direction(self) -> Literal["outbound", "inbound"]: ...
    def encrypt(self, packet: _Bytes, /, *, now: Optional[float] = None) -> bytes: ...
    def decrypt(self, packet: _Bytes, /, *, now: Optional[float] = None) -> bytes: ...
    def encrypt_many(
        self, packets: Iterable[_Bytes], /, *, now: Optional[float] = None
    ) -> list[bytes]: ...
    def decrypt_many(
        self, packets: Iterable[_Bytes], /, *, now: Optional[float] = None
    ) -> list[Union[bytes, IpsecError]]: ...
    def encrypt_batch(self, batch: PacketBatch, /, *, now: Optional[float] = None) -> int:
        """Encrypts a ``PacketBatch`` in place with the GIL released (no object per
        packet); returns how many packets were encrypted."""
    def decrypt_batch(self, batch: PacketBatch, /, *, now: Optional[float] = None) -> int:
        """Decrypts a ``PacketBatch`` in place with the GIL released; returns how many
        packets were decrypted (refused ones are dropped with their exception)."""
    @property
    def stats(self) -> dict[str, int]:
        """The lane's own counters."""
    def publish(self) -> None:
        """Publishes the lane's counters to ``SharedSa.stats``."""
    def poll_event(self, now: Optional[float] = None) -> Optional[SaEvent]: ...
    def poll_events(self, now: Optional[float] = None) -> list[SaEvent]: ...
    def poll_keepalive(self, now: Optional[float] = None) -> Optional[bytes]:
        """The NAT-keepalive due at ``now`` (lane 0 only sends them), or None."""

@final
class ReplayWindow:
    """The RFC 4303 anti-replay window (RFC 6479 bitmap, ESN inference)."""

    def __new__(cls, size: int = 64, esn: bool = False, *, highest: int = 0) -> ReplayWindow: ...
    def accept(self, seq: int) -> bool: ...
    def check(self, seq: int) -> bool: ...
    @property
    def highest(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def esn(self) -> bool: ...

_Action = Literal["protect", "bypass", "discard"]
_GatewayAction = Literal["protect", "bypass", "discard", "reassembling"]

@final
class Reassembler:
    """IP fragment reassembly (IPv4 and IPv6) within hard limits, on the caller's clock.

    ``insert`` returns the packet to process (the packet itself when it is not a
    fragment, or the whole datagram a fragment completed) or None while the fragment
    is held. A dropped fragment raises ``FragmentError`` (``.reason``:
    ``fragment_overlap``, ``fragment_duplicate``, ``fragment_limit``,
    ``fragment_invalid``); a packet that is not IP, ``MalformedPacketError``.
    """

    def __new__(
        cls,
        *,
        max_bytes: int = 4194304,
        max_datagrams: int = 1024,
        max_fragments: int = 64,
        lifetime: float = 30.0,
        now: float = 0.0,
    ) -> Reassembler: ...
    def insert(self, packet: _Bytes, /, *, now: Optional[float] = None) -> Optional[bytes]: ...
    def expire(self, now: Optional[float] = None) -> int:
        """Drops the datagrams whose lifetime ended at ``now``; returns how many
        fragments were dropped (counted as ``fragment_timeout``)."""
    @property
    def stats(self) -> dict[str, int]:
        """``packets``/``bytes``: datagrams completed; one key per drop reason."""
    @property
    def held_bytes(self) -> int: ...
    @property
    def held_fragments(self) -> int: ...
    @property
    def datagrams(self) -> int: ...
    @property
    def limits(self) -> dict[str, Union[int, float]]: ...

@final
class Decision:
    """The answer of an SPD lookup."""

    @property
    def action(self) -> _Action: ...
    @property
    def policy(self) -> Optional[str]: ...
    @property
    def sa(self) -> Optional[str]: ...
    @property
    def policy_index(self) -> Optional[int]: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __ne__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class Finding:
    """One lint finding."""

    @property
    def severity(self) -> Literal["error", "warning", "info"]: ...
    @property
    def code(self) -> str: ...
    @property
    def policy(self) -> Optional[str]: ...
    @property
    def message(self) -> str: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __ne__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class FirewallOpening:
    """A hole a firewall between two gateways must have for IPsec to work."""

    @property
    def src(self) -> str: ...
    @property
    def dst(self) -> str: ...
    @property
    def protocol(self) -> int: ...
    @property
    def protocol_name(self) -> Literal["UDP", "ESP", "AH"]: ...
    @property
    def port(self) -> Optional[int]: ...
    @property
    def label(self) -> str: ...
    @property
    def reason(self) -> str: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __ne__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class Flow:
    """The selectors of one packet."""

    @property
    def direction(self) -> Literal["outbound", "inbound"]: ...
    @property
    def src(self) -> str: ...
    @property
    def dst(self) -> str: ...
    @property
    def protocol(self) -> int: ...
    @property
    def src_port(self) -> Optional[int]: ...
    @property
    def dst_port(self) -> Optional[int]: ...
    @property
    def icmp_type(self) -> Optional[int]: ...
    @property
    def icmp_code(self) -> Optional[int]: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __ne__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class CaseOutcome:
    """The outcome of one policy test case."""

    @property
    def name(self) -> str: ...
    @property
    def passed(self) -> bool: ...
    @property
    def flow(self) -> Flow: ...
    @property
    def expected(self) -> _Action: ...
    @property
    def expected_policy(self) -> Optional[str]: ...
    @property
    def action(self) -> _Action: ...
    @property
    def policy(self) -> Optional[str]: ...
    @property
    def sa(self) -> Optional[str]: ...
    @property
    def message(self) -> str: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __ne__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class CaseReport:
    """The result of running a cases file against a policy."""

    @property
    def outcomes(self) -> list[CaseOutcome]: ...
    @property
    def passed(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def all_passed(self) -> bool: ...
    def __len__(self) -> int: ...

@final
class Spd:
    """A security policy database, immutable once loaded."""

    @staticmethod
    def from_toml(text: str) -> Spd: ...
    @staticmethod
    def load(path: _Path) -> Spd: ...
    def lookup(
        self,
        direction: str,
        src: _Addr,
        dst: _Addr,
        protocol: Union[str, int],
        src_port: Optional[int] = None,
        dst_port: Optional[int] = None,
        *,
        icmp_type: Optional[int] = None,
        icmp_code: Optional[int] = None,
    ) -> Decision: ...
    def lookup_packet(self, direction: str, packet: bytes) -> Decision:
        """The SPD's answer for an IP packet. Fragments are answered as the gateway
        answers them without fragment state: ``FragmentError`` (``.reason``
        ``"fragment_too_short"``, ``"fragment_overlap"`` or ``"fragment_unresolved"``)
        for a tiny first fragment, an overlapping fragment, or a non-first fragment a
        port-specific policy may cover (RFC 4301 section 7)."""
    def lint(self, *, budget: Optional[int] = None) -> list[Finding]:
        """The findings; ``budget`` (steps, default 400 million) bounds the analyses that
        compare policies: past it they stop with a ``budget`` finding."""
    def firewall_openings(self) -> list[FirewallOpening]: ...
    def run_cases(self, text: str) -> CaseReport: ...
    def run_cases_file(self, path: _Path) -> CaseReport: ...
    @property
    def policy_names(self) -> list[str]: ...
    def __len__(self) -> int: ...

@final
class GatewayVerdict:
    """What a gateway did with a packet.

    ``action`` is ``"protect"`` (outbound: encrypted by ``sa``; inbound: decrypted by
    ``sa`` and its inner packet checked against that SA's policies), ``"bypass"`` (let
    through in the clear, unchanged), ``"discard"`` (a DISCARD policy, or no policy
    at all; counted in ``Gateway.stats["policy_discard"]``) or, inbound,
    ``"reassembling"`` (an outer fragment of an ESP packet, held until its datagram is
    complete; ``packet``, ``sa`` and ``policy`` are None).
    """

    @property
    def action(self) -> _GatewayAction: ...
    @property
    def policy(self) -> Optional[str]:
        """The policy that decided: outbound and inbound cleartext, the SPD's first
        match (None: no policy matched); inbound ESP, the first policy of the SA whose
        selectors the inner packet matches."""
    @property
    def sa(self) -> Optional[str]:
        """For ``"protect"``: the SA that encrypted or decrypted the packet."""
    @property
    def packet(self) -> Optional[bytes]:
        """The packet to pass on (the ESP packet, the inner packet, or the bypassed
        packet unchanged); None for ``"discard"`` and ``"reassembling"``."""
    @property
    def packets(self) -> list[bytes]:
        """Every packet to pass on: ``[packet]``, or more when the packet was fragmented
        to fit its SA's path MTU; ``[]`` for ``"discard"`` and ``"reassembling"``."""

@final
class Gateway:
    """An IPsec gateway: an SPD and the SAs of its ``[[sa]]`` tables, doing the whole
    data path (RFC 4301 section 5).

    Control plane (what a key manager calls while packets flow): ``add_sa``,
    ``rekey_sa`` (make-before-break), ``retire_sa``, ``delete_sa``, ``install_policy``,
    ``replace_policy``, ``remove_policy``. Each runs with the GIL released; a refused
    call raises ``ControlError`` (or ``ConfigError`` for an invalid configuration or
    policy text) and changes nothing.

    Fragments (RFC 4301 section 7): a first fragment is classified like a whole packet
    and its decision remembered (``set_fragment_limits``); the datagram's later
    fragments get the same one (protected by the same SA, bypassed or discarded).
    ``FragmentError`` is raised for a first fragment too short to hold its transport
    header (``.reason == "fragment_too_short"``), a fragment overlapping it
    (``"fragment_overlap"``) and a later fragment whose first fragment was not seen and
    that a port-specific policy may cover (``"fragment_unresolved"``)."""

    def __new__(cls, spd: Spd, *, now: float = 0.0) -> Gateway: ...
    @staticmethod
    def from_toml(text: str, *, now: float = 0.0) -> Gateway: ...
    @staticmethod
    def load(path: _Path, *, now: float = 0.0) -> Gateway: ...
    def outbound(self, packet: _Bytes, /, *, now: Optional[float] = None) -> GatewayVerdict: ...
    def inbound(self, packet: _Bytes, /, *, now: Optional[float] = None) -> GatewayVerdict: ...
    def outbound_many(
        self, packets: Iterable[_Bytes], /, *, now: Optional[float] = None
    ) -> list[Union[GatewayVerdict, IpsecError]]: ...
    def inbound_many(
        self, packets: Iterable[_Bytes], /, *, now: Optional[float] = None
    ) -> list[Union[GatewayVerdict, IpsecError]]: ...
    def handle_icmp(
        self, packet: _Bytes, /, *, now: Optional[float] = None
    ) -> Optional[tuple[str, int]]: ...
    def set_reassembly_limits(
        self,
        *,
        max_bytes: Optional[int] = None,
        max_datagrams: Optional[int] = None,
        max_fragments: Optional[int] = None,
        lifetime: Optional[float] = None,
    ) -> int:
        """Replaces the limits of the reassembler of outer ESP fragments (None: the
        default); returns how many held fragments the new limits dropped."""
    def expire_fragments(self, now: Optional[float] = None) -> int:
        """Drops outer fragments whose datagram did not complete in time; returns how
        many (counted in ``stats["fragment_timeout"]``)."""
    @property
    def stats(self) -> dict[str, int]:
        """The gateway's own drops (unknown SPI, policy discard, unprotected cleartext,
        cleartext fragments dropped, malformed packets, outer fragments); the SAs count theirs
        (``sa_stats``)."""
    def set_fragment_limits(self, *, max_datagrams: int, lifetime: float) -> None:
        """Limits of the memory of first fragments (RFC 4301 section 7): at most
        ``max_datagrams`` datagrams (0: off; at most 2**20), each for ``lifetime``
        seconds after its first fragment. Defaults: 4096 and 30.0."""
    @property
    def fragment_limits(self) -> tuple[int, float]:
        """``(max_datagrams, lifetime)`` of the memory of first fragments."""
    def sa_stats(self, name: str) -> dict[str, int]: ...
    def poll_events(self, now: Optional[float] = None) -> list[tuple[str, SaEvent]]:
        """Every SA's pending lifetime events as (SA name, event), SAs in file order."""
    def allocate_spi(self, now: Optional[float] = None) -> int:
        """A random SPI for an inbound SA being negotiated (``get_spi``): never below
        256, never an inbound SA's nor one allocated before whose reservation (165 s)
        still runs at ``now``. Raises ``SpiExhaustedError`` when none is free."""
    def release_spi(self, spi: int) -> bool:
        """Gives back an SPI from ``allocate_spi`` no SA was installed with; True when
        it was reserved (never an installed inbound SA's)."""
    def set_spi_range(self, min: int, max: int) -> None:
        """Makes ``allocate_spi`` draw from ``min..=max`` only (``ConfigError`` naming
        ``spi_min`` / ``spi_max`` when ``min < 256`` or ``min > max``)."""
    def poll_keepalive(self, now: Optional[float] = None) -> Optional[tuple[str, bytes]]:
        """The next NAT-keepalive any SA owes at ``now`` as (SA name, packet), counted as
        sent; None when none is due. Call until None."""
    @property
    def next_keepalive(self) -> Optional[float]:
        """When the next NAT-keepalive of any SA is due (seconds); None when none sends
        keepalives."""
    def sa_info(self, name: str) -> GatewaySa:
        """What the gateway holds of the installed SA ``name`` (SPI, direction,
        algorithms, sequence number, counters), read at once; ``KeyError`` when no SA
        has the name."""
    def add_sa(
        self,
        name: str,
        *,
        spi: int,
        direction: str,
        mode: str,
        cipher: str,
        key: _Bytes,
        integrity: Optional[str] = None,
        integrity_key: _Bytes = b"",
        esn: bool = False,
        replay_window: int = 64,
        tunnel_src: Optional[_Addr] = None,
        tunnel_dst: Optional[_Addr] = None,
        udp_encap: Optional[tuple[int, int]] = None,
        seq: int = 0,
        soft_lifetime: Optional[Lifetime] = None,
        hard_lifetime: Optional[Lifetime] = None,
        soft_lifetime_jitter: int = 10,
        padding: str = "blocks",
        tfc_pad_to: Optional[int] = None,
        outer_ttl: int = 64,
        path_mtu: Optional[int] = None,
        df: Literal["copy", "set", "clear"] = "copy",
        nat_keepalive_interval: Optional[float] = 20.0,
        nat_original_addresses: Optional[tuple[_Addr, _Addr]] = None,
        lookup: _Lookup = "spi",
        now: Optional[float] = None,
    ) -> None:
        """Installs a new SA ``name`` (keywords: ``SecurityAssociation``'s), created at
        ``now`` (default: the last time given). Policies may name it from now on; an
        inbound SA accepts at once. ``DuplicateNameError``, ``DuplicateSpiError`` or
        ``ConfigError`` (also for a key an installed SA uses): nothing changed."""
    def rekey_sa(
        self,
        replaces: str,
        name: str,
        *,
        spi: int,
        direction: str,
        mode: str,
        cipher: str,
        key: _Bytes,
        integrity: Optional[str] = None,
        integrity_key: _Bytes = b"",
        esn: bool = False,
        replay_window: int = 64,
        tunnel_src: Optional[_Addr] = None,
        tunnel_dst: Optional[_Addr] = None,
        udp_encap: Optional[tuple[int, int]] = None,
        seq: int = 0,
        soft_lifetime: Optional[Lifetime] = None,
        hard_lifetime: Optional[Lifetime] = None,
        soft_lifetime_jitter: int = 10,
        padding: str = "blocks",
        tfc_pad_to: Optional[int] = None,
        outer_ttl: int = 64,
        path_mtu: Optional[int] = None,
        df: Literal["copy", "set", "clear"] = "copy",
        nat_keepalive_interval: Optional[float] = 20.0,
        nat_original_addresses: Optional[tuple[_Addr, _Addr]] = None,
        lookup: _Lookup = "spi",
        now: Optional[float] = None,
    ) -> None:
        """Installs ``name`` as the successor of ``replaces`` (make-before-break).
        Inbound: both accept until the old one is deleted or retired. Outbound: every
        policy that sent through ``replaces`` sends through ``name`` from the next
        packet on. Raises as ``add_sa``, and ``UnknownSaError`` /
        ``DirectionMismatchError``: nothing changed."""
    def add_sa_lane(self, name: str, lane: SaLane) -> None:
        """Installs ``lane`` (of an ``ipsec.SharedSa``) as the SA ``name``: one SA on
        several worker threads, each with its own gateway holding its lane. The gateway
        processes the lane's packets from then on (calls on the ``SaLane`` raise
        ``IpsecError``). Raises as ``add_sa`` (and ``IpsecError`` for a lane already
        installed); the lane stays the caller's then, unchanged."""
    def rekey_sa_lane(self, replaces: str, name: str, lane: SaLane) -> None:
        """``rekey_sa`` with a lane as the successor (``add_sa_lane``'s rules)."""
    def delete_sa(self, name: str) -> dict[str, int]:
        """Deletes the SA at once; returns its final counters (``stats``' shape). Its
        SPI is unknown to the next packet. ``UnknownSaError`` or ``SaInUseError``
        (a policy still needs it): nothing changed."""
    def retire_sa(self, name: str, at: float) -> None:
        """Deletes the SA when the caller's clock reaches ``at`` (checked by its packets
        and by ``poll_events``); calling again moves the time. Raises as
        ``delete_sa``."""
    def update_sa(
        self,
        name: str,
        *,
        tunnel_src: Optional[_Addr] = None,
        tunnel_dst: Optional[_Addr] = None,
        udp_encap: Optional[tuple[int, int]] = None,
        now: Optional[float] = None,
    ) -> None:
        """Moves the SA to other endpoints and UDP encapsulation (NAT-T, MOBIKE),
        keeping keys, sequence number, replay window and counters. ``UnknownSaError``,
        ``ConfigError`` or ``DuplicateSpiError``: nothing changed."""
    def install_policy(self, text: str, *, before: Optional[str] = None) -> None:
        """Installs one policy (a ``[[policy]]`` table or its ``key = value`` lines)
        before the policy ``before``, or last. ``ConfigError``,
        ``DuplicatePolicyError``, ``MissingSaError`` or ``UnknownPolicyError``:
        nothing changed."""
    def replace_policy(self, text: str) -> None:
        """Replaces the installed policy of the same name, in place. ``ConfigError``,
        ``UnknownPolicyError`` or ``MissingSaError``: nothing changed."""
    def remove_policy(self, name: str) -> None:
        """Removes the policy (the SAs it named stay). ``UnknownPolicyError``: nothing
        changed."""
    @property
    def pending_policy_changes(self) -> int:
        """Policy changes applied beside the compiled classifier, not yet compiled in."""
    @property
    def policy_rebuild_due(self) -> bool:
        """True from 32 pending changes: compile them in (an unchanged batch, or
        ``rebuild_policies()``); past 128 the next policy call does it."""
    def rebuild_policies(self) -> None:
        """Compiles the policy classifier again now (the GIL released)."""
    @property
    def sa_names(self) -> list[str]:
        """The installed SAs: the policy file's in file order, then those added later
        (one may take the place of a deleted one)."""
    @property
    def spd(self) -> Spd:
        """The ``Spd`` the gateway was built from until a policy is installed, replaced
        or removed (or a ``PolicyEdit`` committed); then an ``Spd`` of the live policies
        (without ``[[sa]]`` tables)."""
    def edit_policies(self) -> PolicyEdit:
        """A batch of policy changes on the policies as they are (taken in O(changes
        pending): shared, copied on the edit's first change): change it, ``compile()``
        it on any thread (no gateway lock is held), then ``commit_policies``."""
    def commit_policies(self, compiled: CompiledPolicies) -> None:
        """Swaps in ``compiled`` in one step (the replaced policies are freed after the
        gateway's lock is released, with the GIL released). ``StalePoliciesError`` (the policies
        changed since the edit was taken) or ``MissingSaError`` (an SA it names was
        deleted since): nothing changed. ``ValueError`` for another gateway's policies
        or policies already used by a commit (committed or refused)."""
    SPD_CACHE_MAX: ClassVar[int]
    def set_spd_cache(self, capacity: int) -> None:
        """An exact-match flow cache for ``capacity`` flows (rounded up to a power of
        two; 0: off, the default; at most ``SPD_CACHE_MAX``) in front of the policy
        classifier; emptied by every policy change."""
    @property
    def spd_cache_stats(self) -> tuple[int, int, int]:
        """``(capacity, hits, misses)`` of the SPD cache."""

@final
class PolicyEdit:
    """A batch of policy changes (``Gateway.edit_policies``), each checked as the
    gateway's own call and refused (raising, changing nothing) as it would be."""

    def install(self, text: str, *, before: Optional[str] = None) -> None: ...
    def replace(self, text: str) -> None: ...
    def remove(self, name: str) -> None: ...
    @property
    def policies(self) -> list[str]:
        """The policy names as edited so far, in order."""
    def compile(self) -> CompiledPolicies:
        """Compiles the policies as edited so far, with the GIL released and no gateway
        lock held. The edit stays usable until the gateway's policies change (a commit
        included): its compiles are stale from then on."""

@final
class CompiledPolicies:
    """Policies compiled from a ``PolicyEdit``, for one ``Gateway.commit_policies``."""

    @property
    def policies(self) -> list[str]: ...
    @property
    def used(self) -> bool:
        """True once ``commit_policies`` took them (committed or refused)."""

@final
class GatewaySa:
    """What a gateway holds of one of its SAs (``Gateway.sa_info``), read at once."""

    @property
    def name(self) -> str: ...
    @property
    def spi(self) -> int: ...
    @property
    def direction(self) -> Literal["outbound", "inbound"]: ...
    @property
    def mode(self) -> Literal["tunnel", "transport"]: ...
    @property
    def cipher(self) -> str: ...
    @property
    def integrity(self) -> Optional[str]: ...
    @property
    def esn(self) -> bool: ...
    @property
    def tunnel(self) -> Optional[tuple[str, str]]: ...
    @property
    def udp_encap(self) -> Optional[tuple[int, int]]: ...
    @property
    def lookup(self) -> _Lookup:
        """How the gateway finds the SA for an inbound packet (RFC 4301 §4.1)."""
    @property
    def seq(self) -> int:
        """Outbound: the last sequence number used. Inbound: the highest received."""
    @property
    def expired(self) -> bool: ...
    @property
    def last_used(self) -> Optional[float]:
        """When the SA last carried traffic (seconds, caller's clock), or None."""
    @property
    def stats(self) -> dict[str, int]: ...

def sas_from_toml(text: str, *, now: float = 0.0) -> dict[str, SecurityAssociation]: ...
def load_sas(path: _Path, *, now: float = 0.0) -> dict[str, SecurityAssociation]: ...
def esp_spi(packet: _Bytes, *, udp_ports: Optional[Sequence[int]] = None) -> int: ...
def too_big_reply(packet: _Bytes, mtu: int, src: _Addr) -> Optional[bytes]:
    """The ICMP "fragmentation needed" / ICMPv6 "packet too big" error for the sender of
    ``packet`` (rate-limit what you send); None when no error may be sent about it."""
def lint_toml(text: str, *, budget: Optional[int] = None) -> list[Finding]: ...
