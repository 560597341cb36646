//! [`ipsec_status`]: the result of every fallible call, its text, and the version.

use core::ffi::c_char;
use ipsec_core::{ControlError, DropReason, Error};

use crate::boundary::boundary;

/// The result of every fallible call.
///
/// The numbers are stable and come in blocks per family: 0 success, 1xx misuse of the
/// API, 2xx configuration (23x: a gateway control call refused, one status per reason;
/// the gateway is unchanged), 3xx packet drops. A retired number is never reused. A packet
/// drop is `300 +` the position of its counter in `ipsec_sa_stats` after `bytes`
/// (`IPSEC_ERR_AUTH_FAILED` is counted in `auth_failed`, and so on).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ipsec_status {
    /// Success.
    IPSEC_OK = 0,
    /// A required pointer was NULL or misaligned, a length or index out of range, a
    /// packet's offset + length beyond its buffer's capacity, an integer that is not a
    /// value of its enum, a string that is not UTF-8, or a reserved field not zero.
    IPSEC_ERR_INVALID_ARGUMENT = 100,
    /// A panic inside the library was caught at the boundary (a bug: please report it
    /// with the last-error message). The handle involved is poisoned: every later call
    /// on it answers `IPSEC_ERR_POISONED`; free it. In a burst, the packet being
    /// processed gets this status.
    IPSEC_ERR_PANIC = 101,
    /// The caller's output buffer is too small; nothing was written.
    IPSEC_ERR_BUFFER_TOO_SMALL = 102,
    /// No SA of that name in the TOML text.
    IPSEC_ERR_NOT_FOUND = 103,
    /// Encrypt on an inbound SA or decrypt on an outbound one. Counted in the SA's
    /// `wrong_direction` counter; the one drop whose status is not `300 +` its counter's
    /// position (315 is never returned).
    IPSEC_ERR_WRONG_DIRECTION = 104,
    /// The handle is unusable: a panic was caught during an earlier call on it
    /// (`IPSEC_ERR_PANIC`), which may have left it half-changed. Only `*_free` still
    /// works on it. In a burst that panicked, the packets after the one that panicked
    /// get this status (they were not processed).
    IPSEC_ERR_POISONED = 105,
    /// A configuration (SA fields, TOML text, policy file) was rejected; the last-error
    /// message names the field (and the SA or policy) and says what was wrong.
    IPSEC_ERR_CONFIG = 200,
    /// A file could not be read.
    IPSEC_ERR_IO = 201,
    /// The bytes given to `ipsec_sa_restore` are not a valid SA snapshot (truncated,
    /// bad magic, unsupported format version, bad length or field, or a configuration
    /// the library refuses); the last-error message says which.
    IPSEC_ERR_BAD_SNAPSHOT = 210,
    /// A valid snapshot whose restore was refused to protect the sequence numbers: the
    /// margin leaves no sequence number to send, or the restored SA would not continue
    /// above `ipsec_restore_options.not_below`.
    IPSEC_ERR_SNAPSHOT_REFUSED = 211,
    /// No SPI is free: every SPI of the allocator's range is in use or reserved
    /// (`ipsec_gateway_allocate_spi`).
    IPSEC_ERR_SPI_EXHAUSTED = 220,
    /// The OS random generator failed, and the call needs randomness (an SPI).
    IPSEC_ERR_RANDOMNESS_UNAVAILABLE = 221,
    /// A control call (`ipsec_gateway_add_sa`, `ipsec_gateway_rekey_sa`) was refused:
    /// the name is taken, by an installed SA or by a name that policies use for an SA
    /// (an SA that was rekeyed lends its name to its successor). Nothing changed.
    IPSEC_ERR_DUPLICATE_NAME = 230,
    /// A control call was refused: an installed inbound SA has this SPI and the same
    /// lookup (inbound SAs are found by SPI, and by destination where their
    /// `ipsec_sa_config.lookup` says so: SAs share an SPI only when their lookups tell
    /// them apart). Nothing changed.
    IPSEC_ERR_DUPLICATE_SPI = 231,
    /// A control call was refused: no SA of this name is installed. Nothing changed.
    IPSEC_ERR_UNKNOWN_SA = 232,
    /// `ipsec_gateway_delete_sa` / `ipsec_gateway_retire_sa` was refused: a policy
    /// still sends or receives through the SA (remove or replace the policy, or rekey
    /// the SA, first). Nothing changed.
    IPSEC_ERR_SA_IN_USE = 233,
    /// A policy was refused: it names an SA that is not installed, or not in the
    /// direction the policy uses it. Nothing changed.
    IPSEC_ERR_MISSING_SA = 234,
    /// `ipsec_gateway_rekey_sa` was refused: the successor's direction is not that of
    /// the SA it replaces. Nothing changed.
    IPSEC_ERR_DIRECTION_MISMATCH = 235,
    /// `ipsec_gateway_install_policy` was refused: a policy of this name is installed
    /// (`ipsec_gateway_replace_policy` changes it). Nothing changed.
    IPSEC_ERR_DUPLICATE_POLICY = 236,
    /// A control call was refused: no policy of this name is installed (the policy to
    /// replace or remove, or the `before` of `ipsec_gateway_install_policy`). Nothing
    /// changed.
    IPSEC_ERR_UNKNOWN_POLICY = 237,
    /// `ipsec_gateway_commit_policies` was refused: the gateway's policies changed after
    /// the edit was taken (`ipsec_gateway_edit_policies`). Take a new edit and make the
    /// changes again. Nothing changed.
    IPSEC_ERR_STALE_POLICIES = 238,
    /// Dropped: the ICV did not verify (tampered packet or wrong key).
    IPSEC_ERR_AUTH_FAILED = 300,
    /// Dropped: the sequence number was already received.
    IPSEC_ERR_REPLAY = 301,
    /// Dropped: the sequence number is below the replay window.
    IPSEC_ERR_TOO_OLD = 302,
    /// Dropped: the packet could not be parsed (truncated, bad lengths, not ESP, an
    /// empty packet, a fragment ...).
    IPSEC_ERR_MALFORMED = 303,
    /// Dropped: the ICV verified but the ESP padding was not 1, 2, 3, ...
    IPSEC_ERR_BAD_PADDING = 304,
    /// Dropped: the ICV verified but the next header is not one the SA may carry.
    IPSEC_ERR_BAD_NEXT_HEADER = 305,
    /// Dropped: the packet's SPI is not the SA's (or, in a gateway, no SA has it).
    IPSEC_ERR_UNKNOWN_SPI = 306,
    /// Dropped: the decrypted packet does not match the SA's policy (RFC 4301 §5.2), or
    /// cleartext arrived for traffic that must be protected.
    IPSEC_ERR_POLICY_MISMATCH = 307,
    /// Dropped: a hard lifetime was reached; the SA refuses packets from now on.
    IPSEC_ERR_LIFETIME_EXPIRED = 308,
    /// Dropped: the outbound sequence numbers are exhausted; replace the SA.
    IPSEC_ERR_SEQUENCE_OVERFLOW = 309,
    /// Dropped on purpose: an RFC 4303 dummy packet (next header 59).
    IPSEC_ERR_DUMMY = 310,
    /// Dropped: too little headroom in front of the packet or tailroom behind it (see
    /// `ipsec_sa_overhead`). The packet is unchanged.
    IPSEC_ERR_NO_BUFFER_SPACE = 311,
    /// Dropped: the SPD said DISCARD (or no policy matched).
    IPSEC_ERR_POLICY_DISCARD = 312,
    /// Consumed: a NAT-T keepalive (one 0xFF byte in UDP, RFC 3948 §2.3) carries no ESP.
    IPSEC_ERR_NAT_KEEPALIVE = 313,
    /// Dropped: outer ECN CE on a Not-ECT inner packet (RFC 6040 §4.2).
    IPSEC_ERR_ECN_CE_NOT_ECT = 314,
    /// Dropped: the packet does not fit the SA's path MTU after ESP and may not be
    /// fragmented (IPv4 DF set, or IPv6). `ipsec_sa_too_big_mtu` / the gateway result
    /// give the usable inner MTU; `ipsec_icmp_too_big` builds the ICMP error for the
    /// sender (RFC 4301 §8.2).
    IPSEC_ERR_TOO_BIG = 316,
    /// Dropped: a fragment's datagram was not complete within the reassembly lifetime.
    IPSEC_ERR_FRAGMENT_TIMEOUT = 317,
    /// Dropped: overlapping fragments (RFC 5722): the whole datagram is dropped.
    IPSEC_ERR_FRAGMENT_OVERLAP = 318,
    /// Dropped: an exact copy of a fragment already held (only the copy).
    IPSEC_ERR_FRAGMENT_DUPLICATE = 319,
    /// Dropped: a reassembly limit (memory, datagrams, fragments per datagram) was reached.
    IPSEC_ERR_FRAGMENT_LIMIT = 320,
    /// Dropped: a fragment that cannot belong to a valid datagram.
    IPSEC_ERR_FRAGMENT_INVALID = 321,
    /// Dropped: a first fragment too short to hold the ports (RFC 3128).
    IPSEC_ERR_FRAGMENT_TOO_SHORT = 322,
    /// Dropped: a non-first fragment whose policy cannot be decided (RFC 4301 §7).
    IPSEC_ERR_FRAGMENT_UNRESOLVED = 323,
}

// A new drop reason in ipsec-core needs its status here and its counter in
// `ipsec_sa_stats` (taken from the reserved space): this stops the build until then.
const _: () = assert!(DropReason::ALL.len() == 24);

impl ipsec_status {
    /// The status of a drop counted under `reason`.
    pub(crate) fn of_drop(reason: DropReason) -> ipsec_status {
        use ipsec_status::*;
        match reason {
            DropReason::AuthFailed => IPSEC_ERR_AUTH_FAILED,
            DropReason::Replay => IPSEC_ERR_REPLAY,
            DropReason::TooOld => IPSEC_ERR_TOO_OLD,
            DropReason::Malformed => IPSEC_ERR_MALFORMED,
            DropReason::BadPadding => IPSEC_ERR_BAD_PADDING,
            DropReason::BadNextHeader => IPSEC_ERR_BAD_NEXT_HEADER,
            DropReason::UnknownSpi => IPSEC_ERR_UNKNOWN_SPI,
            DropReason::PolicyMismatch => IPSEC_ERR_POLICY_MISMATCH,
            DropReason::LifetimeExpired => IPSEC_ERR_LIFETIME_EXPIRED,
            DropReason::SequenceOverflow => IPSEC_ERR_SEQUENCE_OVERFLOW,
            DropReason::Dummy => IPSEC_ERR_DUMMY,
            DropReason::NoBufferSpace => IPSEC_ERR_NO_BUFFER_SPACE,
            DropReason::PolicyDiscard => IPSEC_ERR_POLICY_DISCARD,
            DropReason::NatKeepalive => IPSEC_ERR_NAT_KEEPALIVE,
            DropReason::EcnCeOnNotEct => IPSEC_ERR_ECN_CE_NOT_ECT,
            DropReason::WrongDirection => IPSEC_ERR_WRONG_DIRECTION,
            DropReason::TooBig => IPSEC_ERR_TOO_BIG,
            DropReason::FragmentTimeout => IPSEC_ERR_FRAGMENT_TIMEOUT,
            DropReason::FragmentOverlap => IPSEC_ERR_FRAGMENT_OVERLAP,
            DropReason::FragmentDuplicate => IPSEC_ERR_FRAGMENT_DUPLICATE,
            DropReason::FragmentLimit => IPSEC_ERR_FRAGMENT_LIMIT,
            DropReason::FragmentInvalid => IPSEC_ERR_FRAGMENT_INVALID,
            DropReason::FragmentTooShort => IPSEC_ERR_FRAGMENT_TOO_SHORT,
            DropReason::FragmentUnresolved => IPSEC_ERR_FRAGMENT_UNRESOLVED,
            // Unreachable while the assertion above holds.
            _ => IPSEC_ERR_MALFORMED,
        }
    }

    /// The status of a refused control call (one per `ControlError` variant).
    pub(crate) fn of_control(e: &ControlError) -> ipsec_status {
        use ipsec_status::*;
        match e {
            ControlError::DuplicateName { .. } => IPSEC_ERR_DUPLICATE_NAME,
            ControlError::DuplicateSpi { .. } => IPSEC_ERR_DUPLICATE_SPI,
            ControlError::UnknownSa { .. } => IPSEC_ERR_UNKNOWN_SA,
            ControlError::SaInUse { .. } => IPSEC_ERR_SA_IN_USE,
            ControlError::MissingSa { .. } => IPSEC_ERR_MISSING_SA,
            ControlError::DirectionMismatch { .. } => IPSEC_ERR_DIRECTION_MISMATCH,
            ControlError::DuplicatePolicy { .. } => IPSEC_ERR_DUPLICATE_POLICY,
            ControlError::UnknownPolicy { .. } => IPSEC_ERR_UNKNOWN_POLICY,
            ControlError::Config(_) => IPSEC_ERR_CONFIG,
            ControlError::StalePolicies => IPSEC_ERR_STALE_POLICIES,
            // A reason added to the core (`non_exhaustive`) that has no status of its
            // own yet: still a refused call that changed nothing, and the message says
            // why. Give it a status here when the core gains one.
            _ => IPSEC_ERR_CONFIG,
        }
    }

    /// The status of a packet error.
    pub(crate) fn of_error(e: &Error) -> ipsec_status {
        ipsec_status::of_drop(e.drop_reason())
    }

    /// The status's NUL-terminated name and meaning.
    pub(crate) fn describe(status: u32) -> &'static core::ffi::CStr {
        use ipsec_status::*;
        let known = [
            (IPSEC_OK, c"IPSEC_OK: success"),
            (
                IPSEC_ERR_INVALID_ARGUMENT,
                c"IPSEC_ERR_INVALID_ARGUMENT: invalid argument",
            ),
            (
                IPSEC_ERR_PANIC,
                c"IPSEC_ERR_PANIC: internal error (panic caught)",
            ),
            (
                IPSEC_ERR_BUFFER_TOO_SMALL,
                c"IPSEC_ERR_BUFFER_TOO_SMALL: output buffer too small",
            ),
            (IPSEC_ERR_NOT_FOUND, c"IPSEC_ERR_NOT_FOUND: no such name"),
            (
                IPSEC_ERR_WRONG_DIRECTION,
                c"IPSEC_ERR_WRONG_DIRECTION: operation does not match the SA's direction",
            ),
            (
                IPSEC_ERR_POISONED,
                c"IPSEC_ERR_POISONED: handle unusable after a panic in an earlier call",
            ),
            (IPSEC_ERR_CONFIG, c"IPSEC_ERR_CONFIG: invalid configuration"),
            (IPSEC_ERR_IO, c"IPSEC_ERR_IO: file could not be read"),
            (
                IPSEC_ERR_BAD_SNAPSHOT,
                c"IPSEC_ERR_BAD_SNAPSHOT: not a valid SA snapshot",
            ),
            (
                IPSEC_ERR_SNAPSHOT_REFUSED,
                c"IPSEC_ERR_SNAPSHOT_REFUSED: restore would reuse or exhaust sequence numbers",
            ),
            (
                IPSEC_ERR_SPI_EXHAUSTED,
                c"IPSEC_ERR_SPI_EXHAUSTED: no free SPI in the range",
            ),
            (
                IPSEC_ERR_RANDOMNESS_UNAVAILABLE,
                c"IPSEC_ERR_RANDOMNESS_UNAVAILABLE: the OS random generator failed",
            ),
            (
                IPSEC_ERR_DUPLICATE_NAME,
                c"IPSEC_ERR_DUPLICATE_NAME: an SA of that name is installed",
            ),
            (
                IPSEC_ERR_DUPLICATE_SPI,
                c"IPSEC_ERR_DUPLICATE_SPI: an inbound SA with that SPI is installed",
            ),
            (
                IPSEC_ERR_UNKNOWN_SA,
                c"IPSEC_ERR_UNKNOWN_SA: no SA of that name is installed",
            ),
            (
                IPSEC_ERR_SA_IN_USE,
                c"IPSEC_ERR_SA_IN_USE: a policy still uses the SA",
            ),
            (
                IPSEC_ERR_MISSING_SA,
                c"IPSEC_ERR_MISSING_SA: the policy names an SA that is not installed",
            ),
            (
                IPSEC_ERR_DIRECTION_MISMATCH,
                c"IPSEC_ERR_DIRECTION_MISMATCH: a successor SA must have the direction of the SA it replaces",
            ),
            (
                IPSEC_ERR_DUPLICATE_POLICY,
                c"IPSEC_ERR_DUPLICATE_POLICY: a policy of that name is installed",
            ),
            (
                IPSEC_ERR_UNKNOWN_POLICY,
                c"IPSEC_ERR_UNKNOWN_POLICY: no policy of that name is installed",
            ),
            (
                IPSEC_ERR_STALE_POLICIES,
                c"IPSEC_ERR_STALE_POLICIES: the policies changed after the edit was taken",
            ),
            (
                IPSEC_ERR_AUTH_FAILED,
                c"IPSEC_ERR_AUTH_FAILED: authentication failed (ICV mismatch)",
            ),
            (IPSEC_ERR_REPLAY, c"IPSEC_ERR_REPLAY: replayed packet"),
            (
                IPSEC_ERR_TOO_OLD,
                c"IPSEC_ERR_TOO_OLD: sequence number below the replay window",
            ),
            (
                IPSEC_ERR_MALFORMED,
                c"IPSEC_ERR_MALFORMED: malformed packet",
            ),
            (
                IPSEC_ERR_BAD_PADDING,
                c"IPSEC_ERR_BAD_PADDING: bad ESP padding",
            ),
            (
                IPSEC_ERR_BAD_NEXT_HEADER,
                c"IPSEC_ERR_BAD_NEXT_HEADER: bad ESP next header",
            ),
            (IPSEC_ERR_UNKNOWN_SPI, c"IPSEC_ERR_UNKNOWN_SPI: unknown SPI"),
            (
                IPSEC_ERR_POLICY_MISMATCH,
                c"IPSEC_ERR_POLICY_MISMATCH: packet does not match the SA's policy",
            ),
            (
                IPSEC_ERR_LIFETIME_EXPIRED,
                c"IPSEC_ERR_LIFETIME_EXPIRED: SA hard lifetime expired",
            ),
            (
                IPSEC_ERR_SEQUENCE_OVERFLOW,
                c"IPSEC_ERR_SEQUENCE_OVERFLOW: sequence numbers exhausted",
            ),
            (IPSEC_ERR_DUMMY, c"IPSEC_ERR_DUMMY: dummy packet dropped"),
            (
                IPSEC_ERR_NO_BUFFER_SPACE,
                c"IPSEC_ERR_NO_BUFFER_SPACE: not enough headroom or tailroom",
            ),
            (
                IPSEC_ERR_POLICY_DISCARD,
                c"IPSEC_ERR_POLICY_DISCARD: discarded by policy",
            ),
            (
                IPSEC_ERR_NAT_KEEPALIVE,
                c"IPSEC_ERR_NAT_KEEPALIVE: NAT-T keepalive consumed",
            ),
            (
                IPSEC_ERR_ECN_CE_NOT_ECT,
                c"IPSEC_ERR_ECN_CE_NOT_ECT: outer CE on a Not-ECT inner packet",
            ),
            (
                IPSEC_ERR_TOO_BIG,
                c"IPSEC_ERR_TOO_BIG: packet too big for the path MTU and not fragmentable",
            ),
            (
                IPSEC_ERR_FRAGMENT_TIMEOUT,
                c"IPSEC_ERR_FRAGMENT_TIMEOUT: datagram not reassembled in time",
            ),
            (
                IPSEC_ERR_FRAGMENT_OVERLAP,
                c"IPSEC_ERR_FRAGMENT_OVERLAP: overlapping fragments",
            ),
            (
                IPSEC_ERR_FRAGMENT_DUPLICATE,
                c"IPSEC_ERR_FRAGMENT_DUPLICATE: duplicate fragment",
            ),
            (
                IPSEC_ERR_FRAGMENT_LIMIT,
                c"IPSEC_ERR_FRAGMENT_LIMIT: reassembly limit reached",
            ),
            (
                IPSEC_ERR_FRAGMENT_INVALID,
                c"IPSEC_ERR_FRAGMENT_INVALID: invalid fragment",
            ),
            (
                IPSEC_ERR_FRAGMENT_TOO_SHORT,
                c"IPSEC_ERR_FRAGMENT_TOO_SHORT: first fragment too short for the ports",
            ),
            (
                IPSEC_ERR_FRAGMENT_UNRESOLVED,
                c"IPSEC_ERR_FRAGMENT_UNRESOLVED: non-first fragment with no policy decision",
            ),
        ];
        known
            .iter()
            .find(|(s, _)| *s as u32 == status)
            .map_or(c"unknown ipsec_status value", |(_, text)| text)
    }
}

/// The name and meaning of a status value, as a static NUL-terminated string (never
/// NULL; "unknown ipsec_status value" for a number that is not one). Any thread.
#[unsafe(no_mangle)]
pub extern "C" fn ipsec_status_str(status: u32) -> *const c_char {
    boundary(|| ipsec_status::describe(status).as_ptr())
}

/// The library version, `"MAJOR.MINOR.PATCH"`, a static NUL-terminated string equal
/// to `IPSEC_VERSION_STRING` of the header the library was built with. Any thread.
#[unsafe(no_mangle)]
pub extern "C" fn ipsec_version() -> *const c_char {
    const VERSION: &core::ffi::CStr = match core::ffi::CStr::from_bytes_with_nul(
        concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
    ) {
        Ok(v) => v,
        Err(_) => panic!("the version has no NUL byte"),
    };
    VERSION.as_ptr()
}
