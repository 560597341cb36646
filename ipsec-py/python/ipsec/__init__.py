"""ipsec: an embeddable IPsec data plane (ESP, anti-replay, SPD, policy tools).

The work is done by the Rust library ``ipsec-core`` through the extension module
``ipsec._ipsec``; this package re-exports it. See ``README.md`` of ``ipsec-py`` for a
tour and ``_ipsec.pyi`` for every signature.
"""

from ipsec._ipsec import (
    AuthenticationError,
    CaseOutcome,
    CaseReport,
    ConfigError,
    Decision,
    Finding,
    FirewallOpening,
    Flow,
    IpsecError,
    Lifetime,
    LifetimeExpiredError,
    MalformedPacketError,
    PolicyMismatchError,
    ReplayError,
    ReplayWindow,
    SaEvent,
    SecurityAssociation,
    SequenceOverflowError,
    Spd,
    UnknownSpiError,
    __version__,
    esp_spi,
    lint_toml,
    load_sas,
    sas_from_toml,
)

__all__ = [
    "AuthenticationError",
    "CaseOutcome",
    "CaseReport",
    "ConfigError",
    "Decision",
    "Finding",
    "FirewallOpening",
    "Flow",
    "IpsecError",
    "Lifetime",
    "LifetimeExpiredError",
    "MalformedPacketError",
    "PolicyMismatchError",
    "ReplayError",
    "ReplayWindow",
    "SaEvent",
    "SecurityAssociation",
    "SequenceOverflowError",
    "Spd",
    "UnknownSpiError",
    "__version__",
    "esp_spi",
    "lint_toml",
    "load_sas",
    "sas_from_toml",
]
