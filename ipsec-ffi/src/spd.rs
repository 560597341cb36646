//! The Security Policy Database: loading, lookups by selectors and by packet, lint
//! findings and firewall openings as iterable results.

use core::ffi::c_char;
use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipsec_core::spd::{Finding, LintBudget, Opening, Severity, lint_toml, lint_toml_with};
use ipsec_core::{Action, Decision, Direction, Flow, Spd};

use crate::boundary::{boundary, call, config_error, fail, invalid, packet_error};
use crate::handle::{
    Handle, borrow, bytes, c_str, c_string, free_handle, into_handle, out_ptr, read_struct, text,
};
use crate::sa::direction_from;
use crate::status::ipsec_status;

/// A policy database: ordered policies, first match wins, no match is DISCARD.
///
/// Thread safety: immutable; any number of threads may look up at once.
pub struct ipsec_spd {
    _private: [u8; 0],
}

/// The SPD and NUL-terminated copies of the names a decision hands out.
pub(crate) struct SpdHandle {
    spd: Spd,
    /// Per policy, in file order: its name, its outbound SA, its inbound SA.
    names: Vec<[Option<CString>; 3]>,
}

impl Handle for ipsec_spd {
    type Inner = SpdHandle;
}

impl SpdHandle {
    pub(crate) fn new(spd: Spd) -> SpdHandle {
        let names = spd
            .policies()
            .iter()
            .map(|p| {
                [
                    Some(c_string(p.name())),
                    p.sa(Direction::Outbound).map(c_string),
                    p.sa(Direction::Inbound).map(c_string),
                ]
            })
            .collect();
        SpdHandle { spd, names }
    }

    fn decision(&self, d: &Decision<'_>, direction: Direction) -> ipsec_decision {
        let ptr = |s: &Option<CString>| s.as_ref().map_or(core::ptr::null(), |c| c.as_ptr());
        let (policy, sa) = match d.policy_index.and_then(|i| self.names.get(i)) {
            Some(n) => (
                ptr(&n[0]),
                if d.sa.is_some() {
                    ptr(&n[if direction == Direction::Outbound {
                        1
                    } else {
                        2
                    }])
                } else {
                    core::ptr::null()
                },
            ),
            None => (core::ptr::null(), core::ptr::null()),
        };
        ipsec_decision {
            action: action_to(d.action),
            policy,
            policy_index: d.policy_index.unwrap_or(usize::MAX),
            sa,
        }
    }
}

/// What the SPD does with a packet.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ipsec_action {
    /// Apply IPsec with the policy's SA.
    IPSEC_ACTION_PROTECT = 1,
    /// Let it through in the clear.
    IPSEC_ACTION_BYPASS = 2,
    /// Drop it.
    IPSEC_ACTION_DISCARD = 3,
}

fn action_to(a: Action) -> u32 {
    match a {
        Action::Protect => ipsec_action::IPSEC_ACTION_PROTECT as u32,
        Action::Bypass => ipsec_action::IPSEC_ACTION_BYPASS as u32,
        _ => ipsec_action::IPSEC_ACTION_DISCARD as u32,
    }
}

/// The address family of `ipsec_flow` addresses.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ipsec_family {
    /// IPv4: the first 4 bytes of `src` / `dst`, network order.
    IPSEC_FAMILY_IPV4 = 4,
    /// IPv6: all 16 bytes, network order.
    IPSEC_FAMILY_IPV6 = 6,
}

/// How serious a lint finding is.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ipsec_severity {
    /// The policy does not do what it says (or does not load).
    IPSEC_SEVERITY_ERROR = 1,
    /// Probably a mistake.
    IPSEC_SEVERITY_WARNING = 2,
    /// For information.
    IPSEC_SEVERITY_INFO = 3,
}

/// The selectors of one packet, for `ipsec_spd_lookup`. `src` and `dst` are the
/// packet's own source and destination (for an outbound packet the source is the
/// policy's `local` side; for an inbound one the destination is).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
// C programs (and Rust callers of the C API) build it field by field: its layout is
// the ABI, so it is exhaustive by design.
#[allow(clippy::exhaustive_structs)]
pub struct ipsec_flow {
    /// An `ipsec_direction` value.
    pub direction: u32,
    /// An `ipsec_family` value.
    pub family: u32,
    /// Source address, network byte order (IPv4: first 4 bytes).
    pub src: [u8; 16],
    /// Destination address, network byte order (IPv4: first 4 bytes).
    pub dst: [u8; 16],
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, ...).
    pub protocol: u8,
    /// Whether `src_port` / `dst_port` are known (TCP, UDP, SCTP, not a later fragment).
    pub has_ports: bool,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Whether `icmp_type` / `icmp_code` are known (ICMP, ICMPv6).
    pub has_icmp: bool,
    /// ICMP type.
    pub icmp_type: u8,
    /// ICMP code.
    pub icmp_code: u8,
}

/// The answer of a lookup. The strings belong to the SPD and live as long as it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ipsec_decision {
    /// An `ipsec_action` value.
    pub action: u32,
    /// The matching policy's name; NULL when no policy matched (implicit DISCARD).
    pub policy: *const c_char,
    /// The matching policy's position in the file (0-based); `SIZE_MAX` when none.
    pub policy_index: usize,
    /// For PROTECT: the name of the SA of the lookup's direction; otherwise NULL.
    pub sa: *const c_char,
}

/// Lint findings (`ipsec_spd_lint`, `ipsec_lint_toml`): `ipsec_lint_count` of them,
/// read with `ipsec_lint_get`.
///
/// Thread safety: immutable; any thread.
pub struct ipsec_lint {
    _private: [u8; 0],
}

/// One finding, NUL-terminated copies.
pub(crate) struct LintEntry {
    severity: u32,
    code: CString,
    policy: Option<CString>,
    message: CString,
}

impl Handle for ipsec_lint {
    type Inner = Vec<LintEntry>;
}

fn lint_entries(findings: &[Finding]) -> Vec<LintEntry> {
    findings
        .iter()
        .map(|f| LintEntry {
            severity: match f.severity {
                Severity::Error => ipsec_severity::IPSEC_SEVERITY_ERROR as u32,
                Severity::Warning => ipsec_severity::IPSEC_SEVERITY_WARNING as u32,
                _ => ipsec_severity::IPSEC_SEVERITY_INFO as u32,
            },
            code: c_string(f.code),
            policy: f.policy.as_deref().map(c_string),
            message: c_string(&f.message),
        })
        .collect()
}

/// One lint finding. The strings belong to the `ipsec_lint` result.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ipsec_lint_finding {
    /// An `ipsec_severity` value.
    pub severity: u32,
    /// The stable code (`shadowed`, `redundant`, `conflict`, `no-catch-all`,
    /// `ike-blocked`, `invalid`, ...).
    pub code: *const c_char,
    /// The policy it is about; NULL for the file as a whole.
    pub policy: *const c_char,
    /// One sentence for a person.
    pub message: *const c_char,
}

/// Firewall openings (`ipsec_spd_firewall_openings`): `ipsec_firewall_count` of them,
/// read with `ipsec_firewall_get`.
///
/// Thread safety: immutable; any thread.
pub struct ipsec_firewall {
    _private: [u8; 0],
}

/// One opening, NUL-terminated copies.
pub(crate) struct OpeningEntry {
    from: CString,
    to: CString,
    protocol: u8,
    port: Option<u16>,
    protocol_name: CString,
    label: CString,
    reason: CString,
}

impl Handle for ipsec_firewall {
    type Inner = Vec<OpeningEntry>;
}

fn opening_entries(openings: &[Opening]) -> Vec<OpeningEntry> {
    openings
        .iter()
        .map(|o| OpeningEntry {
            from: c_string(&o.from.to_string()),
            to: c_string(&o.to.to_string()),
            protocol: o.protocol,
            port: o.port,
            protocol_name: c_string(o.protocol_name),
            label: c_string(o.label()),
            reason: c_string(&o.reason),
        })
        .collect()
}

/// One hole a firewall between two gateways must have. The strings belong to the
/// `ipsec_firewall` result.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ipsec_firewall_opening {
    /// The sending gateway's address (text).
    pub from: *const c_char,
    /// The receiving gateway's address (text).
    pub to: *const c_char,
    /// The IP protocol number: 17 UDP, 50 ESP, 51 AH (protocol numbers, not ports).
    pub protocol: u8,
    /// Whether `port` applies (UDP only).
    pub has_port: bool,
    /// The UDP destination port (500 IKE, 4500 NAT-T).
    pub port: u16,
    /// `"UDP"`, `"ESP"` or `"AH"`.
    pub protocol_name: *const c_char,
    /// A short label: `IKE`, `IKE and ESP with NAT-T`, `ESP`, `ESP in UDP`, `AH`.
    pub label: *const c_char,
    /// Why it is needed (which SAs).
    pub reason: *const c_char,
}

fn ip_of(family: u32, bytes: &[u8; 16], field: &str) -> Result<IpAddr, ipsec_status> {
    match family {
        4 => Ok(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        6 => Ok(IpAddr::V6(Ipv6Addr::from(*bytes))),
        _ => Err(invalid(format!(
            "{field}: family {family} is not an ipsec_family (4 IPv4, 6 IPv6)"
        ))),
    }
}

/// Parses a policy file (DESIGN.md "Policy file": `[[policy]]` and `[[sa]]` tables)
/// from `toml_len` bytes of UTF-8 and stores the SPD in `*out`. `IPSEC_ERR_CONFIG` with
/// the first problem (naming the policy and key) otherwise; `ipsec_lint_toml` lists all
/// of them. Free it with `ipsec_spd_free`.
///
/// # Safety
///
/// `toml` points to `toml_len` readable bytes; `out` to a writable `ipsec_spd *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_spd_from_toml(
    toml: *const c_char,
    toml_len: usize,
    out: *mut *mut ipsec_spd,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let toml = unsafe { text(toml, toml_len, "toml") }?;
        let spd = Spd::from_toml(toml).map_err(|e| config_error(&e))?;
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(into_handle::<ipsec_spd>(SpdHandle::new(spd))) };
        Ok(())
    })
}

/// Reads and parses the policy file at `path` (NUL-terminated, UTF-8): as
/// `ipsec_spd_from_toml`, and `IPSEC_ERR_IO` when the file cannot be read.
///
/// # Safety
///
/// `path` is NUL-terminated; `out` points to a writable `ipsec_spd *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_spd_load(
    path: *const c_char,
    out: *mut *mut ipsec_spd,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let path = unsafe { c_str(path, "path") }?;
        // Wiped when dropped: the file holds the SA keys.
        let toml = ipsec_core::secret::read_file(path.as_ref())
            .map_err(|e| fail(ipsec_status::IPSEC_ERR_IO, format!("{path}: {e}")))?;
        let spd = Spd::from_toml(&toml).map_err(|e| config_error(&e.in_context(path)))?;
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(into_handle::<ipsec_spd>(SpdHandle::new(spd))) };
        Ok(())
    })
}

/// Frees an SPD; the strings of its decisions go with it. NULL is ignored.
///
/// # Safety
///
/// `spd` is NULL or from `ipsec_spd_from_toml` / `ipsec_spd_load`, not freed before,
/// not used by any thread afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_spd_free(spd: *mut ipsec_spd) {
    // SAFETY: caller's contract.
    boundary(|| unsafe { free_handle(spd) })
}

/// Looks up the selectors `*flow` (first match wins; no match is DISCARD with a NULL
/// policy) and writes the answer into `*out`.
///
/// # Safety
///
/// `spd` is a live SPD; `flow` points to an initialised `ipsec_flow`; `out` to a
/// writable `ipsec_decision`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_spd_lookup(
    spd: *const ipsec_spd,
    flow: *const ipsec_flow,
    out: *mut ipsec_decision,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let h = unsafe { borrow(spd, "spd") }?;
        // SAFETY: initialised (caller's contract); read by value.
        let f = unsafe {
            read_struct(
                flow,
                "flow",
                &[
                    (core::mem::offset_of!(ipsec_flow, has_ports), "has_ports"),
                    (core::mem::offset_of!(ipsec_flow, has_icmp), "has_icmp"),
                ],
            )
        }?;
        let direction = direction_from(f.direction, "flow->direction")?;
        let mut fl = Flow::new(
            direction,
            ip_of(f.family, &f.src, "flow->src")?,
            ip_of(f.family, &f.dst, "flow->dst")?,
            f.protocol,
        );
        if f.has_ports {
            fl = fl.ports(f.src_port, f.dst_port);
        }
        if f.has_icmp {
            fl = fl.icmp(f.icmp_type, f.icmp_code);
        }
        let d = h.decision(&h.spd.lookup(&fl), direction);
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(d) };
        Ok(())
    })
}

/// Reads the selectors of the IPv4/IPv6 packet `packet[0 .. len]` (`direction`: an
/// `ipsec_direction` value), looks them up and writes the answer into `*out`.
/// `IPSEC_ERR_MALFORMED` when the packet cannot be read. Fragments are answered as the
/// gateway answers them without fragment state: `IPSEC_ERR_FRAGMENT_TOO_SHORT` for a
/// first fragment too short to hold its transport header (RFC 3128),
/// `IPSEC_ERR_FRAGMENT_OVERLAP` for a fragment that would overwrite it (RFC 1858), and
/// `IPSEC_ERR_FRAGMENT_UNRESOLVED` for a non-first fragment that a port-specific policy
/// may cover (RFC 4301 §7); a non-first fragment that the first policy that could match
/// it decides regardless of ports gets that policy's answer.
///
/// # Safety
///
/// `spd` is a live SPD; `packet` points to `len` readable bytes; `out` to a writable
/// `ipsec_decision`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_spd_lookup_packet(
    spd: *const ipsec_spd,
    direction: u32,
    packet: *const u8,
    len: usize,
    out: *mut ipsec_decision,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let h = unsafe { borrow(spd, "spd") }?;
        let direction = direction_from(direction, "direction")?;
        // SAFETY: caller's contract.
        let pkt = unsafe { bytes(packet, len, "packet") }?;
        let d = h.spd.lookup_packet(direction, pkt).map_err(packet_error)?;
        let d = h.decision(&d, direction);
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(d) };
        Ok(())
    })
}

/// Lints the SPD (shadowed, redundant, conflicting rules, no catch-all, IKE blocked,
/// ports 50/51, any-any bypass) and stores the findings in `*out` (free with
/// `ipsec_lint_free`).
///
/// # Safety
///
/// `spd` is a live SPD; `out` points to a writable `ipsec_lint *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_spd_lint(
    spd: *const ipsec_spd,
    out: *mut *mut ipsec_lint,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let h = unsafe { borrow(spd, "spd") }?;
        let entries = lint_entries(&h.spd.lint());
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(into_handle::<ipsec_lint>(entries)) };
        Ok(())
    })
}

/// `ipsec_spd_lint` within a work budget of `budget_steps` steps (a few nanoseconds
/// each; 0 means the default, 400 million): when the analyses that compare policies
/// run out of it they stop, and a `budget` finding names the first policy they did not
/// finish. For policies from untrusted sources.
///
/// # Safety
///
/// As `ipsec_spd_lint`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_spd_lint_budget(
    spd: *const ipsec_spd,
    budget_steps: u64,
    out: *mut *mut ipsec_lint,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let h = unsafe { borrow(spd, "spd") }?;
        let entries = lint_entries(&h.spd.lint_with(budget_of(budget_steps)));
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(into_handle::<ipsec_lint>(entries)) };
        Ok(())
    })
}

/// The budget of a C lint call (0: the default).
fn budget_of(steps: u64) -> LintBudget {
    match steps {
        0 => LintBudget::DEFAULT,
        n => LintBudget::with_total(n),
    }
}

/// Lints policy-file text: every load error as an `invalid` finding (all of them),
/// or, when it loads, the findings of `ipsec_spd_lint`. Succeeds for any UTF-8 text.
///
/// # Safety
///
/// `toml` points to `toml_len` readable bytes; `out` to a writable `ipsec_lint *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_lint_toml(
    toml: *const c_char,
    toml_len: usize,
    out: *mut *mut ipsec_lint,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let toml = unsafe { text(toml, toml_len, "toml") }?;
        let entries = lint_entries(&lint_toml(toml));
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(into_handle::<ipsec_lint>(entries)) };
        Ok(())
    })
}

/// `ipsec_lint_toml` within a work budget of `budget_steps` steps (0: the default), as
/// `ipsec_spd_lint_budget`: for text from untrusted sources.
///
/// # Safety
///
/// As `ipsec_lint_toml`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_lint_toml_budget(
    toml: *const c_char,
    toml_len: usize,
    budget_steps: u64,
    out: *mut *mut ipsec_lint,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let toml = unsafe { text(toml, toml_len, "toml") }?;
        let entries = lint_entries(&lint_toml_with(toml, budget_of(budget_steps)));
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(into_handle::<ipsec_lint>(entries)) };
        Ok(())
    })
}

/// The number of findings (0 for NULL).
///
/// # Safety
///
/// `lint` is NULL or a live result.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_lint_count(lint: *const ipsec_lint) -> usize {
    // SAFETY: caller's contract.
    boundary(|| unsafe { borrow(lint, "lint") }.map_or(0, |v| v.len()))
}

/// Finding number `index` (0-based, in file order of their policy, file-wide ones
/// last). The strings live as long as `lint`. `IPSEC_ERR_INVALID_ARGUMENT` when
/// `index >= ipsec_lint_count(lint)`.
///
/// # Safety
///
/// `lint` is a live result; `out` points to a writable `ipsec_lint_finding`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_lint_get(
    lint: *const ipsec_lint,
    index: usize,
    out: *mut ipsec_lint_finding,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let entries = unsafe { borrow(lint, "lint") }?;
        let e = entries.get(index).ok_or_else(|| {
            invalid(format!(
                "index {index} is out of range ({} findings)",
                entries.len()
            ))
        })?;
        let value = ipsec_lint_finding {
            severity: e.severity,
            code: e.code.as_ptr(),
            policy: e.policy.as_ref().map_or(core::ptr::null(), |p| p.as_ptr()),
            message: e.message.as_ptr(),
        };
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(value) };
        Ok(())
    })
}

/// Frees lint findings (and their strings). NULL is ignored.
///
/// # Safety
///
/// `lint` is NULL or a result not freed before and not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_lint_free(lint: *mut ipsec_lint) {
    // SAFETY: caller's contract.
    boundary(|| unsafe { free_handle(lint) })
}

/// What a firewall between each pair of gateways must let through for IPsec to work
/// (UDP 500 both ways, UDP 4500 with NAT-T, IP protocol 50 per direction with an SA),
/// stored in `*out` (free with `ipsec_firewall_free`).
///
/// # Safety
///
/// `spd` is a live SPD; `out` points to a writable `ipsec_firewall *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_spd_firewall_openings(
    spd: *const ipsec_spd,
    out: *mut *mut ipsec_firewall,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let h = unsafe { borrow(spd, "spd") }?;
        let entries = opening_entries(&h.spd.firewall_openings());
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(into_handle::<ipsec_firewall>(entries)) };
        Ok(())
    })
}

/// The number of openings (0 for NULL).
///
/// # Safety
///
/// `firewall` is NULL or a live result.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_firewall_count(firewall: *const ipsec_firewall) -> usize {
    // SAFETY: caller's contract.
    boundary(|| unsafe { borrow(firewall, "firewall") }.map_or(0, |v| v.len()))
}

/// Opening number `index` (0-based; by gateway pair, then IKE, NAT-T, ESP). The strings
/// live as long as `firewall`. `IPSEC_ERR_INVALID_ARGUMENT` when `index` is out of range.
///
/// # Safety
///
/// `firewall` is a live result; `out` points to a writable `ipsec_firewall_opening`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_firewall_get(
    firewall: *const ipsec_firewall,
    index: usize,
    out: *mut ipsec_firewall_opening,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let entries = unsafe { borrow(firewall, "firewall") }?;
        let e = entries.get(index).ok_or_else(|| {
            invalid(format!(
                "index {index} is out of range ({} openings)",
                entries.len()
            ))
        })?;
        let value = ipsec_firewall_opening {
            from: e.from.as_ptr(),
            to: e.to.as_ptr(),
            protocol: e.protocol,
            has_port: e.port.is_some(),
            port: e.port.unwrap_or(0),
            protocol_name: e.protocol_name.as_ptr(),
            label: e.label.as_ptr(),
            reason: e.reason.as_ptr(),
        };
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(value) };
        Ok(())
    })
}

/// Frees firewall openings (and their strings). NULL is ignored.
///
/// # Safety
///
/// `firewall` is NULL or a result not freed before and not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_firewall_free(firewall: *mut ipsec_firewall) {
    // SAFETY: caller's contract.
    boundary(|| unsafe { free_handle(firewall) })
}
