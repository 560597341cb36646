"""Type stubs of the extension module ``ipsec._ipsec`` (re-exported by ``ipsec``)."""

import os
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv6Address
from typing import Literal, Optional, Union, final

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
    "ConfigError",
    "SecurityAssociation",
    "Lifetime",
    "SaEvent",
    "ReplayWindow",
    "Spd",
    "Decision",
    "Finding",
    "FirewallOpening",
    "Flow",
    "CaseOutcome",
    "CaseReport",
    "Gateway",
    "GatewayVerdict",
    "sas_from_toml",
    "load_sas",
    "esp_spi",
    "lint_toml",
]

_Bytes = Union[bytes, bytearray]
_Addr = Union[str, IPv4Address, IPv6Address]
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

class ConfigError(IpsecError, ValueError):
    """A rejected configuration; also a ValueError."""

    field: Optional[str]
    """The keyword argument or TOML key that was wrong."""

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
        padding: str = "blocks",
        tfc_pad_to: Optional[int] = None,
        outer_ttl: int = 64,
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
    @property
    def stats(self) -> dict[str, int]: ...
    def poll_event(self, now: Optional[float] = None) -> Optional[SaEvent]: ...
    def poll_events(self, now: Optional[float] = None) -> list[SaEvent]: ...
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
    def tunnel(self) -> Optional[tuple[str, str]]: ...
    @property
    def udp_encap(self) -> Optional[tuple[int, int]]: ...
    @property
    def expired(self) -> bool: ...
    @property
    def max_overhead(self) -> int: ...

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
    def lint(self) -> list[Finding]: ...
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
    through in the clear, unchanged) or ``"discard"`` (a DISCARD policy, or no policy
    at all; counted in ``Gateway.stats["policy_discard"]``).
    """

    @property
    def action(self) -> _Action: ...
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
        packet unchanged); None for ``"discard"``."""

@final
class Gateway:
    """An IPsec gateway: an SPD and the SAs of its ``[[sa]]`` tables, doing the whole
    data path (RFC 4301 section 5).

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
    @property
    def stats(self) -> dict[str, int]:
        """The gateway's own drops (unknown SPI, policy discard, unprotected cleartext,
        cleartext fragments dropped, malformed packets); the SAs count theirs
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
    @property
    def sa_names(self) -> list[str]: ...
    @property
    def spd(self) -> Spd: ...

def sas_from_toml(text: str, *, now: float = 0.0) -> dict[str, SecurityAssociation]: ...
def load_sas(path: _Path, *, now: float = 0.0) -> dict[str, SecurityAssociation]: ...
def esp_spi(packet: _Bytes, *, udp_ports: Optional[Sequence[int]] = None) -> int: ...
def lint_toml(text: str) -> list[Finding]: ...
