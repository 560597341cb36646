//! A gateway's whole IPsec data path (`ipsec_core::Gateway`): the SPD and the SAs its
//! `[[sa]]` tables describe, outbound classification and encryption, inbound
//! decryption by SPI with the RFC 4301 §5.2 policy check, and fragments decided with
//! the core's stateful fragment checking (RFC 4301 §7; limits set with
//! `ipsec_gateway_set_fragment_limits`).

use core::ffi::c_char;
use std::collections::HashMap;
use std::ffi::CString;

use ipsec_core::gateway::{Inbound, Outbound};
use ipsec_core::{FragmentLimits, Gateway, PacketBuf, Spd};

use crate::boundary::{bad_descriptor, boundary, call, config_error, fail, invalid, packet_error};
use crate::handle::{
    Handle, borrow, borrow_mut, bytes_mut, c_string, free_handle, into_handle, out_ptr, text,
};
use crate::sa::{event_to, info_of, ipsec_sa_event, ipsec_sa_info, ipsec_sa_stats, now};
use crate::status::ipsec_status;

/// A gateway: policies plus the SAs they name, ready to process packets.
///
/// Thread safety: one thread at a time (every packet changes SA state); it may move
/// between threads.
pub struct ipsec_gateway {
    _private: [u8; 0],
}

/// The gateway and NUL-terminated copies of its SA names and policy names.
pub(crate) struct GatewayHandle {
    gateway: Gateway,
    names: CNames,
    policy_names: CNames,
}

impl Handle for ipsec_gateway {
    type Inner = GatewayHandle;
}

/// NUL-terminated copies of names, in file order, found by name in one hash lookup (a
/// packet's verdict names its SA and policy; a policy file may have thousands).
struct CNames {
    list: Vec<CString>,
    index: HashMap<Box<str>, usize>,
}

impl CNames {
    fn new<'a>(names: impl Iterator<Item = &'a str>) -> CNames {
        let mut list = Vec::new();
        let mut index = HashMap::new();
        for name in names {
            index.insert(Box::from(name), list.len());
            list.push(c_string(name));
        }
        CNames { list, index }
    }

    /// The C string of `name`; NULL if it is not one of these names.
    fn ptr(&self, name: &str) -> *const c_char {
        self.index
            .get(name)
            .map_or(core::ptr::null(), |&i| self.list[i].as_ptr())
    }
}

/// What happened to a packet that was not dropped.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ipsec_verdict {
    /// Outbound: encrypted with `sa`; send it to the SA's peer.
    IPSEC_VERDICT_PROTECTED = 1,
    /// A BYPASS policy lets it through in the clear, unchanged.
    IPSEC_VERDICT_BYPASSED = 2,
    /// Inbound: decrypted by `sa` and checked against its policy; the inner packet is
    /// in the buffer.
    IPSEC_VERDICT_DECRYPTED = 3,
}

/// The answer of `ipsec_gateway_outbound` / `ipsec_gateway_inbound`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ipsec_gateway_result {
    /// An `ipsec_verdict` value.
    pub verdict: u32,
    /// The SA that encrypted or decrypted the packet (NULL for BYPASSED); the string
    /// lives as long as the gateway.
    pub sa: *const c_char,
    /// The policy that decided: the PROTECT or BYPASS policy that matched, or for a
    /// decrypted packet the first of its SA's policies whose selectors the inner packet
    /// matches (RFC 4301 §5.2). Lives as long as the gateway.
    pub policy: *const c_char,
}

/// One SA of a gateway (`ipsec_gateway_get_sa`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ipsec_gateway_sa {
    /// The SA's name; lives as long as the gateway.
    pub name: *const c_char,
    /// What the SA is.
    pub info: ipsec_sa_info,
    /// Its counters.
    pub stats: ipsec_sa_stats,
}

/// One `ipsec_gateway_poll_event` answer: an SA's lifetime event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ipsec_gateway_event {
    /// The SA the event is about (lives as long as the gateway); NULL with
    /// `IPSEC_EVENT_NONE`.
    pub sa: *const c_char,
    /// What happened to it.
    pub event: ipsec_sa_event,
}

/// Creates a gateway from a policy file's text (`[[policy]]` and `[[sa]]` tables) at
/// time `now_ns` and stores it in `*out`. `IPSEC_ERR_CONFIG` when a policy or SA is
/// invalid, or two inbound SAs share an SPI. Free it with `ipsec_gateway_free`.
///
/// # Safety
///
/// `toml` points to `toml_len` readable bytes; `out` to a writable `ipsec_gateway *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_new(
    toml: *const c_char,
    toml_len: usize,
    now_ns: u64,
    out: *mut *mut ipsec_gateway,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let toml = unsafe { text(toml, toml_len, "toml") }?;
        let spd = Spd::from_toml(toml).map_err(|e| config_error(&e))?;
        let gateway = Gateway::new(spd, now(now_ns)).map_err(|e| config_error(&e))?;
        let names = CNames::new(gateway.sas().map(|(n, _)| n));
        let policy_names = CNames::new(gateway.spd().policies().iter().map(|p| p.name()));
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe {
            out.write(into_handle::<ipsec_gateway>(GatewayHandle {
                gateway,
                names,
                policy_names,
            }))
        };
        Ok(())
    })
}

/// Frees a gateway and its SAs (keys wiped). NULL is ignored.
///
/// # Safety
///
/// `gateway` is NULL or from `ipsec_gateway_new`, not freed before, not used after.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_free(gateway: *mut ipsec_gateway) {
    // SAFETY: caller's contract.
    boundary(|| unsafe { free_handle(gateway) })
}

/// Which way a packet goes through the gateway.
#[derive(Clone, Copy)]
enum Way {
    Out,
    In,
}

/// The body of both entry points below (their C signature, plus which way).
///
/// # Safety
///
/// As the entry points below.
#[allow(clippy::too_many_arguments)] // the C signature's seven, and the direction
unsafe fn process(
    gateway: *mut ipsec_gateway,
    buf: *mut u8,
    capacity: usize,
    offset: *mut usize,
    length: *mut usize,
    now_ns: u64,
    out: *mut ipsec_gateway_result,
    way: Way,
) -> Result<(), ipsec_status> {
    let out = out_ptr(out, "out")?;
    let offset = out_ptr(offset, "offset")?;
    let length = out_ptr(length, "length")?;
    // SAFETY: caller's contract.
    let h = unsafe { borrow_mut(gateway, "gateway") }?;
    // SAFETY: caller's contract.
    let buf = unsafe { bytes_mut(buf, capacity, "buf") }?;
    // SAFETY: checked non-NULL and aligned; readable by contract.
    let (off, len) = unsafe { (offset.read(), length.read()) };
    let mut pkt = PacketBuf::new(buf, off, len).map_err(|_| bad_descriptor(off, len, capacity))?;
    let (names, policies) = (&h.names, &h.policy_names);
    let result = match way {
        Way::Out => match h
            .gateway
            .outbound(&mut pkt, now(now_ns))
            .map_err(packet_error)?
        {
            Outbound::Protected { sa, policy } => ipsec_gateway_result {
                verdict: ipsec_verdict::IPSEC_VERDICT_PROTECTED as u32,
                sa: names.ptr(sa),
                policy: policies.ptr(policy),
            },
            Outbound::Bypassed { policy } => bypassed(policies.ptr(policy)),
            _ => return Err(unknown_verdict()),
        },
        Way::In => match h
            .gateway
            .inbound(&mut pkt, now(now_ns))
            .map_err(packet_error)?
        {
            Inbound::Decrypted { sa, policy } => ipsec_gateway_result {
                verdict: ipsec_verdict::IPSEC_VERDICT_DECRYPTED as u32,
                sa: names.ptr(sa),
                policy: policies.ptr(policy),
            },
            Inbound::Bypassed { policy } => bypassed(policies.ptr(policy)),
            _ => return Err(unknown_verdict()),
        },
    };
    // SAFETY: all three checked non-NULL and aligned; writable by contract.
    unsafe {
        offset.write(pkt.offset());
        length.write(pkt.len());
        out.write(result);
    }
    Ok(())
}

/// The result of a packet a BYPASS policy let through.
fn bypassed(policy: *const c_char) -> ipsec_gateway_result {
    ipsec_gateway_result {
        verdict: ipsec_verdict::IPSEC_VERDICT_BYPASSED as u32,
        sa: core::ptr::null(),
        policy,
    }
}

/// A verdict added to the core that this layer does not translate yet (the core's
/// verdict enums are `non_exhaustive`); a bug of this crate, reported as one.
fn unknown_verdict() -> ipsec_status {
    fail(
        ipsec_status::IPSEC_ERR_PANIC,
        "internal error: the gateway gave a verdict this C ABI does not translate",
    )
}

/// Classifies the outbound IP packet at `buf[*offset .. *offset + *length]` with the
/// SPD and bypasses it (unchanged), or encrypts it in place with the SA the PROTECT
/// policy names (updating `*offset` and `*length`), writing what happened to `*out`.
/// `IPSEC_ERR_POLICY_DISCARD` when a DISCARD policy (or none) covers it; the other
/// statuses as `ipsec_sa_encrypt`. Every drop is counted (on the SA, or on the
/// gateway's own `ipsec_gateway_get_stats`).
///
/// Fragments (RFC 4301 §7): a first fragment is classified like a whole packet and its
/// decision remembered; the datagram's later fragments get the same one (encrypted
/// with the same SA, each as its own ESP packet). `IPSEC_ERR_FRAGMENT_TOO_SHORT` for a
/// first fragment too short to hold its transport header (RFC 3128),
/// `IPSEC_ERR_FRAGMENT_OVERLAP` for a fragment overlapping it (RFC 1858, RFC 5722), and
/// `IPSEC_ERR_FRAGMENT_UNRESOLVED` for a later fragment whose first fragment was not seen
/// and that a port-specific policy may cover.
///
/// # Safety
///
/// `gateway` is a live gateway used by no other thread during the call; `buf` points to
/// `capacity` writable bytes; `offset`, `length` and `out` to writable objects.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_outbound(
    gateway: *mut ipsec_gateway,
    buf: *mut u8,
    capacity: usize,
    offset: *mut usize,
    length: *mut usize,
    now_ns: u64,
    out: *mut ipsec_gateway_result,
) -> ipsec_status {
    // SAFETY: caller's contract.
    call(|| unsafe {
        process(
            gateway,
            buf,
            capacity,
            offset,
            length,
            now_ns,
            out,
            Way::Out,
        )
    })
}

/// Processes an inbound packet: ESP (or ESP in UDP on port 4500) is decrypted in place
/// by the SA of its SPI and the inner packet checked against that SA's policies
/// (RFC 4301 §5.2); cleartext passes unchanged only under a BYPASS policy. Statuses as
/// `ipsec_sa_decrypt`, plus `IPSEC_ERR_UNKNOWN_SPI` (no SA has the SPI),
/// `IPSEC_ERR_POLICY_MISMATCH` (inner packet outside the SA's policy, or cleartext that
/// must be protected) and `IPSEC_ERR_POLICY_DISCARD`. Cleartext fragments, and inner
/// packets that are fragments, as `ipsec_gateway_outbound` says (an inner later
/// fragment is accepted under the policy its first fragment was accepted under on the
/// same SA): `IPSEC_ERR_FRAGMENT_TOO_SHORT`, `IPSEC_ERR_FRAGMENT_OVERLAP`,
/// `IPSEC_ERR_FRAGMENT_UNRESOLVED`.
///
/// # Safety
///
/// As `ipsec_gateway_outbound`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_inbound(
    gateway: *mut ipsec_gateway,
    buf: *mut u8,
    capacity: usize,
    offset: *mut usize,
    length: *mut usize,
    now_ns: u64,
    out: *mut ipsec_gateway_result,
) -> ipsec_status {
    // SAFETY: caller's contract.
    call(|| unsafe { process(gateway, buf, capacity, offset, length, now_ns, out, Way::In) })
}

/// Sets the limits of the gateway's memory of first fragments (stateful fragment
/// checking, RFC 4301 §7.3, §7.4): at most `max_datagrams` datagrams (0 turns it off:
/// every later fragment gets the stateless answer), each remembered for `lifetime_ns`
/// nanoseconds after its first fragment, by the `now_ns` of the packet calls. What it
/// held is forgotten. The defaults are 4096 datagrams and 30 seconds; the memory
/// (80 bytes a datagram) is allocated here, once. `IPSEC_ERR_CONFIG` when
/// `max_datagrams` is above 1048576 (2^20).
///
/// # Safety
///
/// `gateway` is a live gateway used by no other thread during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_set_fragment_limits(
    gateway: *mut ipsec_gateway,
    max_datagrams: usize,
    lifetime_ns: u64,
) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let h = unsafe { borrow_mut(gateway, "gateway") }?;
        let limits =
            FragmentLimits::new(max_datagrams, now(lifetime_ns)).map_err(|e| config_error(&e))?;
        h.gateway.set_fragment_limits(limits);
        Ok(())
    })
}

/// The gateway's own counters: drops that belong to no SA (unknown SPI, policy
/// discard, unprotected cleartext, cleartext fragments dropped, packets too malformed
/// to classify).
///
/// # Safety
///
/// `gateway` is a live gateway; `out` points to a writable `ipsec_sa_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_get_stats(
    gateway: *const ipsec_gateway,
    out: *mut ipsec_sa_stats,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let h = unsafe { borrow(gateway, "gateway") }?;
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(h.gateway.stats().into()) };
        Ok(())
    })
}

/// The number of SAs in the gateway (0 for NULL).
///
/// # Safety
///
/// `gateway` is NULL or a live gateway.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_sa_count(gateway: *const ipsec_gateway) -> usize {
    // SAFETY: caller's contract.
    boundary(|| unsafe { borrow(gateway, "gateway") }.map_or(0, |h| h.names.list.len()))
}

/// SA number `index` of the gateway (file order): name, description and counters.
/// `IPSEC_ERR_INVALID_ARGUMENT` when `index >= ipsec_gateway_sa_count(gateway)`.
///
/// # Safety
///
/// `gateway` is a live gateway; `out` points to a writable `ipsec_gateway_sa`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_get_sa(
    gateway: *const ipsec_gateway,
    index: usize,
    out: *mut ipsec_gateway_sa,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let h = unsafe { borrow(gateway, "gateway") }?;
        let (_, sa) = h.gateway.sas().nth(index).ok_or_else(|| {
            invalid(format!(
                "index {index} is out of range ({} SAs)",
                h.names.list.len()
            ))
        })?;
        let value = ipsec_gateway_sa {
            name: h.names.list[index].as_ptr(),
            info: info_of(sa),
            stats: sa.stats().into(),
        };
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(value) };
        Ok(())
    })
}

/// Checks the lifetimes of every SA of the gateway against `now_ns` and writes the next
/// event to act on into `*out` (the SA's name and an `IPSEC_EVENT_REKEY` or
/// `IPSEC_EVENT_EXPIRED` event), or `IPSEC_EVENT_NONE` with a NULL name. Each event is
/// reported once; call until `IPSEC_EVENT_NONE`.
///
/// # Safety
///
/// `gateway` is a live gateway used by no other thread during the call; `out` points to
/// a writable `ipsec_gateway_event`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_poll_event(
    gateway: *mut ipsec_gateway,
    now_ns: u64,
    out: *mut ipsec_gateway_event,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let h = unsafe { borrow_mut(gateway, "gateway") }?;
        let names = &h.names;
        let value = match h.gateway.poll_event(now(now_ns)) {
            Some((name, event)) => ipsec_gateway_event {
                sa: names.ptr(name),
                event: event_to(Some(event)),
            },
            None => ipsec_gateway_event {
                sa: core::ptr::null(),
                event: event_to(None),
            },
        };
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(value) };
        Ok(())
    })
}
