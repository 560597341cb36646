//! A gateway's whole IPsec data path (`ipsec_core::Gateway`): the SPD and the SAs its
//! `[[sa]]` tables describe, outbound classification and encryption, inbound
//! reassembly of outer ESP fragments and decryption by SPI with the RFC 4301 §5.2
//! policy check, and fragments decided with the core's stateful fragment checking
//! (RFC 4301 §7; limits set with `ipsec_gateway_set_fragment_limits`).

use core::ffi::c_char;
use core::time::Duration;
use std::collections::HashMap;
use std::ffi::CString;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ipsec_core::gateway::{BurstVerdict, Inbound, Outbound};
use ipsec_core::{
    ConfigError, Error, FragmentLimits, Gateway, PacketBuf, SecurityAssociation, Spd, SpiError,
};

use crate::boundary::{
    BurstProgress, bad_descriptor, boundary, burst_boundary, call, config_error, fail, invalid,
    packet_error,
};
use crate::handle::{
    Handle, array_mut, borrow, borrow_mut, bytes, bytes_mut, c_str, c_string, free_handle,
    into_handle, out_ptr, text,
};
use crate::path_mtu::with_spares;
use crate::reassembly::{ipsec_reassembly_limits, limits_from};
use crate::sa::{
    BURST_GROUP, buffers_disjoint, burst_group_len, described_packet, event_to, info_of,
    ipsec_packet, ipsec_sa_event, ipsec_sa_info, ipsec_sa_stats, keepalive_buffer, now, time_ns,
};
use crate::status::ipsec_status;

/// A gateway: policies plus the SAs they name, ready to process packets; a key manager
/// adds, rekeys and deletes SAs and installs, replaces and removes policies while it
/// runs (the control calls `ipsec_gateway_add_sa` ... `ipsec_gateway_remove_policy`, and
/// `ipsec_gateway_commit_policies` for a batch compiled away from it).
///
/// Thread safety: one thread at a time, for the packet calls (every packet changes SA
/// state) and the control calls alike: a control call changes the gateway as a packet
/// call does, so the key manager calls it on the thread that processes the gateway's
/// packets, between packets, or under the same lock as the packet calls. The gateway
/// may move between threads. A packet is processed under the state before or after a
/// control call, never half of one.
///
/// Name strings: the SA and policy names the gateway hands out (`sa` and `policy` of an
/// `ipsec_gateway_result`, `name` of an `ipsec_gateway_sa`, `sa` of an
/// `ipsec_gateway_event`, the SA of `ipsec_gateway_poll_keepalive` and
/// `ipsec_gateway_handle_icmp`) stay valid while their SA or policy is installed, and
/// after it is deleted or removed (by a control call, or by the gateway when an SA's
/// `ipsec_gateway_retire_sa` time comes) until the next control call that succeeds, or
/// `ipsec_gateway_free`. Copy a name to keep it longer. A policy replaced by
/// `ipsec_gateway_replace_policy` keeps its string.
pub struct ipsec_gateway {
    _private: [u8; 0],
}

/// The gateway and NUL-terminated copies of its SA names and policy names, kept equal
/// to the gateway's SAs and policies after every call.
pub(crate) struct GatewayHandle {
    pub(crate) gateway: Gateway,
    /// The names of the installed SAs.
    pub(crate) names: CNames,
    /// The names of the installed policies.
    pub(crate) policy_names: CNames,
    /// The SAs given a retirement time by `ipsec_gateway_retire_sa` (the gateway deletes
    /// them by itself, in `inbound` or `poll_event`, once that time has come).
    pub(crate) retiring: HashMap<Box<str>, Duration>,
    /// This gateway's number, unique in the process: a policy edit remembers the
    /// gateway it was taken from, and is committed to that one only.
    pub(crate) id: u64,
    /// The SA names in `Gateway::sas` order as of `Gateway::sa_changes` (the first
    /// field), for `ipsec_gateway_get_sa`: an enumeration by index costs O(1) per call,
    /// not a walk over the SAs before the index.
    pub(crate) sa_order: Mutex<(u64, Vec<Box<str>>)>,
}

/// The next [`GatewayHandle::id`].
static NEXT_GATEWAY_ID: AtomicU64 = AtomicU64::new(1);

impl Handle for ipsec_gateway {
    type Inner = GatewayHandle;
}

impl GatewayHandle {
    /// Drops the names of the SAs the gateway deleted by itself since the last call
    /// (retired SAs whose time `now` reached): O(1) unless some retirement is due.
    pub(crate) fn forget_retired(&mut self, now: Duration) {
        if self.retiring.is_empty() {
            return;
        }
        let (gateway, names) = (&self.gateway, &mut self.names);
        self.retiring.retain(|name, at| {
            let gone = now >= *at && gateway.sa(name).is_none();
            if gone {
                names.remove(name);
            }
            !gone
        });
    }

    /// Frees the strings of SAs and policies deleted before: called when a control
    /// call succeeds, before it makes its own change (see [`ipsec_gateway`]).
    pub(crate) fn free_stale(&mut self) {
        self.names.stale.clear();
        self.policy_names.stale.clear();
    }
}

/// A NUL-terminated copy of a name, owned through a raw pointer: it moves (as the map
/// holding it grows, or when it is put aside by a removal) without disturbing the
/// pointers handed to C. A moved `CString` is a moved `Box`, which Rust's aliasing rules
/// treat as a new unique owner of the bytes: Miri reports a later read through a
/// pointer taken before as undefined behaviour.
struct OwnedName(*mut c_char);

impl OwnedName {
    fn new(name: &str) -> OwnedName {
        OwnedName(c_string(name).into_raw())
    }

    fn as_ptr(&self) -> *const c_char {
        self.0
    }
}

impl Drop for OwnedName {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `CString::into_raw` and is given back once.
        drop(unsafe { CString::from_raw(self.0) });
    }
}

// SAFETY: an `OwnedName` is the only owner of its bytes and never changes them, as a
// `CString` (which is `Send` and `Sync`).
unsafe impl Send for OwnedName {}
// SAFETY: as above.
unsafe impl Sync for OwnedName {}

/// NUL-terminated copies of names, found by name in one hash lookup (a packet's verdict
/// names its SA and policy; a gateway may have hundreds of thousands).
pub(crate) struct CNames {
    by_name: HashMap<Box<str>, OwnedName>,
    /// The strings of removed names, kept for pointers handed out before (see
    /// [`ipsec_gateway`]) until [`GatewayHandle::free_stale`].
    stale: Vec<OwnedName>,
}

impl CNames {
    fn new<'a>(names: impl Iterator<Item = &'a str>) -> CNames {
        let mut c = CNames {
            by_name: HashMap::new(),
            stale: Vec::new(),
        };
        for name in names {
            c.add(name);
        }
        c
    }

    /// How many names.
    pub(crate) fn len(&self) -> usize {
        self.by_name.len()
    }

    /// The names, in no particular order.
    pub(crate) fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(|k| &**k)
    }

    /// The C string of `name`; NULL if it is not one of these names.
    pub(crate) fn ptr(&self, name: &str) -> *const c_char {
        self.by_name
            .get(name)
            .map_or(core::ptr::null(), |c| c.as_ptr())
    }

    /// Adds `name` (a name already there keeps its string). The string's bytes stay
    /// where they are while the map grows.
    pub(crate) fn add(&mut self, name: &str) {
        if !self.by_name.contains_key(name) {
            self.by_name.insert(Box::from(name), OwnedName::new(name));
        }
    }

    /// Removes `name`; its string is kept until [`GatewayHandle::free_stale`].
    pub(crate) fn remove(&mut self, name: &str) {
        if let Some(c) = self.by_name.remove(name) {
            self.stale.push(c);
        }
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
    /// Inbound: an outer fragment of an ESP packet, copied and held until its datagram
    /// is complete. Nothing to pass on (`sa` and `policy` are NULL, offset and length
    /// unchanged); the buffer is free again.
    IPSEC_VERDICT_REASSEMBLING = 4,
}

/// The answer of `ipsec_gateway_outbound` / `ipsec_gateway_inbound`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ipsec_gateway_result {
    /// An `ipsec_verdict` value.
    pub verdict: u32,
    /// The SA that encrypted or decrypted the packet (NULL for BYPASSED and
    /// REASSEMBLING); how long the string lives: `ipsec_gateway`, "Name strings".
    pub sa: *const c_char,
    /// The policy that decided: the PROTECT or BYPASS policy that matched, or for a
    /// decrypted packet the first of its SA's policies whose selectors the inner packet
    /// matches (RFC 4301 §5.2); NULL for REASSEMBLING. How long the string lives:
    /// `ipsec_gateway`, "Name strings".
    pub policy: *const c_char,
}

/// One SA of a gateway (`ipsec_gateway_get_sa`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ipsec_gateway_sa {
    /// The SA's name (how long the string lives: `ipsec_gateway`, "Name strings").
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
    /// The SA the event is about (how long the string lives: `ipsec_gateway`, "Name
    /// strings"); NULL with `IPSEC_EVENT_NONE`.
    pub sa: *const c_char,
    /// What happened to it.
    pub event: ipsec_sa_event,
}

/// Creates a gateway from a policy file's text (`[[policy]]` and `[[sa]]` tables) at
/// time `now_ns` and stores it in `*out`. `IPSEC_ERR_CONFIG` when a policy or SA is
/// invalid, or two inbound SAs share an SPI. Free it with `ipsec_gateway_free`.
///
/// A key manager may start from a file with no SAs (say, only a final deny-all policy)
/// and add SAs and policies while the gateway runs: `ipsec_gateway_add_sa`,
/// `ipsec_gateway_install_policy` and the other control calls.
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
                retiring: HashMap::new(),
                id: NEXT_GATEWAY_ID.fetch_add(1, Ordering::Relaxed),
                sa_order: Mutex::new((0, Vec::new())),
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

/// Which way a packet goes through the gateway (outbound with the caller's spare
/// descriptors for fragments, if any).
#[derive(Clone, Copy)]
enum Way {
    Out(Spares),
    In,
}

/// The spare descriptors of `ipsec_gateway_outbound_fragmenting`.
#[derive(Clone, Copy)]
struct Spares {
    spares: *mut crate::sa::ipsec_packet,
    count: usize,
    used: *mut usize,
}

impl Spares {
    const NONE: Spares = Spares {
        spares: core::ptr::null_mut(),
        count: 0,
        used: core::ptr::null_mut(),
    };
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
    let mut guard = unsafe { borrow_mut(gateway, "gateway") }?;
    // Reborrowed, so that fields can be borrowed apart (the guard poisons the
    // handle should a panic unwind through this call).
    let h = &mut *guard;
    // SAFETY: caller's contract.
    let buf = unsafe { bytes_mut(buf, capacity, "buf") }?;
    // SAFETY: checked non-NULL and aligned; readable by contract.
    let (off, len) = unsafe { (offset.read(), length.read()) };
    let mut pkt = PacketBuf::new(buf, off, len).map_err(|_| bad_descriptor(off, len, capacity))?;
    let (names, policies) = (&h.names, &h.policy_names);
    let mut used = 0;
    let result = match way {
        Way::Out(spares) => {
            let used_out = if spares.used.is_null() {
                None
            } else {
                Some(out_ptr(spares.used, "spares_used")?)
            };
            let t = now(now_ns);
            // Without spare descriptors (`ipsec_gateway_outbound`) the pool is empty
            // however many the packet needs; sizing it would classify the packet a
            // second time.
            let needed = if spares.count == 0 {
                0
            } else {
                h.gateway.spares_needed(pkt.data(), t)
            };
            let gateway = &mut h.gateway;
            // SAFETY: the spare descriptors are valid (caller's contract).
            let ((verdict, _), k) = unsafe {
                with_spares(spares.spares, spares.count, needed, |pool| {
                    gateway.outbound_fragmenting(&mut pkt, pool, t)
                })
            }?;
            used = k;
            if let Some(u) = used_out {
                // SAFETY: checked non-NULL and aligned; writable by contract.
                unsafe { u.write(used) };
            }
            match verdict {
                Outbound::Protected { sa, policy } => ipsec_gateway_result {
                    verdict: ipsec_verdict::IPSEC_VERDICT_PROTECTED as u32,
                    sa: names.ptr(sa),
                    policy: policies.ptr(policy),
                },
                Outbound::Bypassed { policy } => bypassed(policies.ptr(policy)),
                _ => return Err(unknown_verdict()),
            }
        }
        Way::In => match h.gateway.inbound(&mut pkt, now(now_ns)) {
            Err(e) => {
                if matches!(e, Error::UnknownSpi { .. }) {
                    // The SA of the SPI may have been a retired one, deleted just now.
                    h.forget_retired(now(now_ns));
                }
                return Err(packet_error(e));
            }
            Ok(Inbound::Decrypted { sa, policy }) => ipsec_gateway_result {
                verdict: ipsec_verdict::IPSEC_VERDICT_DECRYPTED as u32,
                sa: names.ptr(sa),
                policy: policies.ptr(policy),
            },
            Ok(Inbound::Bypassed { policy }) => bypassed(policies.ptr(policy)),
            Ok(Inbound::Reassembling) => ipsec_gateway_result {
                verdict: ipsec_verdict::IPSEC_VERDICT_REASSEMBLING as u32,
                sa: core::ptr::null(),
                policy: core::ptr::null(),
            },
            Ok(_) => return Err(unknown_verdict()),
        },
    };
    debug_assert!(used == 0 || matches!(way, Way::Out(_)));
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
            Way::Out(Spares::NONE),
        )
    })
}

/// The burst form of `ipsec_gateway_outbound`: classifies and processes `count`
/// outbound packets, each as that call would, in order. Each descriptor's `offset` and
/// `length` are updated on success and its `status` set to `IPSEC_OK` or the reason the
/// packet was dropped (`IPSEC_ERR_POLICY_DISCARD`, ... as `ipsec_gateway_outbound`);
/// `verdicts[i]` receives `IPSEC_VERDICT_PROTECTED` or `IPSEC_VERDICT_BYPASSED` for a
/// packet that succeeded and 0 for one that did not. Dropped packets stay where they
/// are, unchanged, never freed. Returns how many succeeded; 0 also when `gateway` is
/// NULL or `verdicts` is NULL with `count > 0` (every status is then
/// `IPSEC_ERR_INVALID_ARGUMENT`; `IPSEC_ERR_POISONED` for a poisoned gateway) or
/// `packets` is NULL with `count > 0` (no status can be written; the last error says
/// so). The last error describes the last failed packet.
///
/// Faster than one call per packet (`Gateway::outbound_burst` in Rust): the packets
/// are classified first, then each run of consecutive packets for one SA is encrypted
/// by that SA's burst code (AES-CBC with HMAC: several packets' CBC chains and HMACs at
/// once; with intel-ipsec-mb, AES-GCM seals back to back), in groups of up to 32; with
/// the SPD cache off, a packet of the same flow as the previous one takes its decision
/// without the classifier. Verdicts, bytes, the gateway's, the SAs' and the SPD cache's
/// counters are those of `ipsec_gateway_outbound` on each packet in turn. Packets that
/// must be fragmented fail as there (`IPSEC_ERR_TOO_BIG`, or `IPSEC_ERR_NO_BUFFER_SPACE`
/// when they may be fragmented): send them with `ipsec_gateway_outbound_fragmenting`.
/// Descriptors should not share a buffer: a group in which two do is processed one
/// packet at a time (correct, slower). Should a panic be caught part-way, the packets
/// of the groups finished before it keep their results (and are counted in the value
/// returned), the first packet of the group being processed gets `IPSEC_ERR_PANIC`, the
/// rest `IPSEC_ERR_POISONED` and verdict 0 (that group's packets may have been partly
/// processed: their bytes are unspecified), and the gateway is poisoned.
///
/// # Safety
///
/// `gateway` as for `ipsec_gateway_outbound`; `packets` points to `count` writable
/// descriptors, each `buf` to `capacity` writable bytes; `verdicts` to `count`
/// writable `uint32_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_outbound_burst(
    gateway: *mut ipsec_gateway,
    packets: *mut ipsec_packet,
    count: usize,
    now_ns: u64,
    verdicts: *mut u32,
) -> usize {
    // SAFETY: caller's contract.
    unsafe { gateway_burst(gateway, packets, count, now_ns, verdicts, BurstWay::Out) }
}

/// The burst form of `ipsec_gateway_inbound`: processes `count` received packets, each
/// as that call would, in order, with the conventions of `ipsec_gateway_outbound_burst`
/// (statuses, `offset` and `length`, the value returned, NULL arguments, the last
/// error, shared buffers, a panic part-way). `verdicts[i]` receives
/// `IPSEC_VERDICT_DECRYPTED`, `IPSEC_VERDICT_BYPASSED` or `IPSEC_VERDICT_REASSEMBLING`
/// (a held outer fragment: nothing to pass on, `offset` and `length` unchanged) for a
/// packet that succeeded and 0 for one that did not.
///
/// Faster than one call per packet where consecutive packets are plain ESP (IPv4
/// without options, IPv6 without extension headers; ESP directly or in UDP on the
/// NAT-T port) for one SA (`Gateway::inbound_burst` in Rust): such a run goes to the
/// SA's burst code (AES-CBC with HMAC: the ICVs of the run computed together), each
/// packet still checked against the SA's policies; the rest (fragments, IPv4 options,
/// IPv6 extension headers, cleartext) is processed one packet at a time. Verdicts, bytes and every counter are those of
/// `ipsec_gateway_inbound` on each packet in turn, reassembly included (give each
/// descriptor room for a whole datagram where fragments may come).
///
/// # Safety
///
/// As `ipsec_gateway_outbound_burst`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_inbound_burst(
    gateway: *mut ipsec_gateway,
    packets: *mut ipsec_packet,
    count: usize,
    now_ns: u64,
    verdicts: *mut u32,
) -> usize {
    // SAFETY: caller's contract.
    unsafe { gateway_burst(gateway, packets, count, now_ns, verdicts, BurstWay::In) }
}

/// Which way a gateway burst goes.
#[derive(Clone, Copy)]
enum BurstWay {
    Out,
    In,
}

/// The body of both gateway burst entry points, run inside [`burst_boundary`]:
/// [`BURST_GROUP`] descriptors at a time through the gateway's burst call, one at a
/// time where descriptors share a buffer.
///
/// # Safety
///
/// As the entry points.
unsafe fn gateway_burst(
    gateway: *mut ipsec_gateway,
    packets: *mut ipsec_packet,
    count: usize,
    now_ns: u64,
    verdicts: *mut u32,
    way: BurstWay,
) -> usize {
    let t = now(now_ns);
    let body = |progress: &mut BurstProgress| {
        // SAFETY: caller's contract.
        let Ok(packets) = (unsafe { array_mut(packets, count, "packets") }) else {
            return 0;
        };
        let refuse = |packets: &mut [ipsec_packet], status: ipsec_status| {
            for p in packets.iter_mut() {
                p.status = status as u32;
            }
            0
        };
        // SAFETY: caller's contract.
        let verdicts = match unsafe { array_mut(verdicts, count, "verdicts") } {
            Ok(v) => v,
            Err(status) => return refuse(packets, status),
        };
        // SAFETY: caller's contract.
        let mut guard = match unsafe { borrow_mut(gateway, "gateway") } {
            Ok(g) => g,
            Err(status) => return refuse(packets, status),
        };
        // Reborrowed, so that fields can be borrowed apart (the guard poisons the
        // handle should a panic unwind through this call).
        let h = &mut *guard;
        progress.started = true;
        let (mut rest, mut rest_verdicts) = (packets, verdicts);
        while !rest.is_empty() {
            let take = burst_group_len(rest.len());
            let (group, tail) = core::mem::take(&mut rest).split_at_mut(take.max(1));
            let (group_verdicts, tail_verdicts) =
                core::mem::take(&mut rest_verdicts).split_at_mut(take.max(1));
            (rest, rest_verdicts) = (tail, tail_verdicts);
            if take == 0 || !buffers_disjoint(group) {
                for (p, v) in group.iter_mut().zip(group_verdicts.iter_mut()) {
                    // SAFETY: each descriptor's buffer is valid (caller's contract);
                    // one buffer is borrowed at a time.
                    let r = unsafe { described_packet(p) }.and_then(|mut pkt| {
                        crate::test_hooks::packet_step();
                        let verdict = one_packet(&mut h.gateway, &mut pkt, t, way)?;
                        p.offset = pkt.offset();
                        p.length = pkt.len();
                        Ok(verdict)
                    });
                    progress.ok += usize::from(finish(p, v, r));
                    progress.done += 1;
                }
                continue;
            }
            // SAFETY: the group's buffers are valid (caller's contract) and pairwise
            // disjoint (checked), so they may all be borrowed at once.
            progress.ok += unsafe { gateway_group(&mut h.gateway, group, group_verdicts, t, way) };
            progress.done += group.len();
        }
        if matches!(way, BurstWay::In) {
            // SAs whose retirement came may have been deleted on the way.
            h.forget_retired(t);
        }
        progress.ok
    };
    let after_panic = |progress: &BurstProgress| {
        // SAFETY: `started` was set, so the array was checked (caller's contract).
        if let Ok(v) = unsafe { array_mut(verdicts, count, "verdicts") } {
            v.iter_mut().skip(progress.done).for_each(|v| *v = 0);
        }
    };
    // SAFETY: `started` is set once `packets` was checked (caller's contract).
    unsafe { burst_boundary(packets, count, body, after_panic) }
}

/// One packet of a gateway burst, as `ipsec_gateway_outbound` / `ipsec_gateway_inbound`
/// process it.
fn one_packet(
    gateway: &mut Gateway,
    pkt: &mut PacketBuf<'_>,
    now: Duration,
    way: BurstWay,
) -> Result<BurstVerdict, ipsec_status> {
    match way {
        BurstWay::Out => match gateway.outbound(pkt, now) {
            Ok(Outbound::Protected { .. }) => Ok(BurstVerdict::Protected),
            Ok(Outbound::Bypassed { .. }) => Ok(BurstVerdict::Bypassed),
            Ok(_) => Err(unknown_verdict()),
            Err(e) => Err(packet_error(e)),
        },
        BurstWay::In => match gateway.inbound(pkt, now) {
            Ok(Inbound::Decrypted { .. }) => Ok(BurstVerdict::Decrypted),
            Ok(Inbound::Bypassed { .. }) => Ok(BurstVerdict::Bypassed),
            Ok(Inbound::Reassembling) => Ok(BurstVerdict::Reassembling),
            Ok(_) => Err(unknown_verdict()),
            Err(e) => Err(packet_error(e)),
        },
    }
}

/// Writes a burst packet's status and verdict; true if it succeeded.
fn finish(p: &mut ipsec_packet, verdict: &mut u32, r: Result<BurstVerdict, ipsec_status>) -> bool {
    let code = |v| match v {
        BurstVerdict::Protected => Ok(ipsec_verdict::IPSEC_VERDICT_PROTECTED),
        BurstVerdict::Bypassed => Ok(ipsec_verdict::IPSEC_VERDICT_BYPASSED),
        BurstVerdict::Decrypted => Ok(ipsec_verdict::IPSEC_VERDICT_DECRYPTED),
        BurstVerdict::Reassembling => Ok(ipsec_verdict::IPSEC_VERDICT_REASSEMBLING),
        _ => Err(unknown_verdict()),
    };
    let (status, v) = match r.and_then(code) {
        Ok(v) => (ipsec_status::IPSEC_OK, v as u32),
        Err(status) => (status, 0),
    };
    p.status = status as u32;
    *verdict = v;
    status == ipsec_status::IPSEC_OK
}

/// One group of a gateway burst (at most [`BURST_GROUP`] descriptors) through
/// `Gateway::outbound_burst` or `Gateway::inbound_burst`; every status and verdict
/// written; returns how many succeeded.
///
/// # Safety
///
/// Each descriptor's `buf` points to `capacity` writable bytes that nothing else
/// accesses during the call, and no two overlap.
unsafe fn gateway_group(
    gateway: &mut Gateway,
    group: &mut [ipsec_packet],
    verdicts: &mut [u32],
    now: Duration,
    way: BurstWay,
) -> usize {
    debug_assert!(group.len() <= BURST_GROUP && verdicts.len() == group.len());
    let mut bufs: [PacketBuf<'_>; BURST_GROUP] =
        core::array::from_fn(|_| PacketBuf::new(&mut [], 0, 0).expect("an empty window"));
    // `slot[i]`: the index in `bufs` of descriptor i, if it describes its buffer.
    let mut slot = [usize::MAX; BURST_GROUP];
    let mut n = 0;
    for (p, slot) in group.iter_mut().zip(slot.iter_mut()) {
        // SAFETY: caller's contract (valid, and disjoint from the other buffers).
        if let Ok(pkt) = unsafe { described_packet(p) } {
            crate::test_hooks::packet_step();
            bufs[n] = pkt;
            *slot = n;
            n += 1;
        }
    }
    let mut results = [Ok(BurstVerdict::Bypassed); BURST_GROUP];
    match way {
        BurstWay::Out => gateway.outbound_burst(&mut bufs[..n], &mut results[..n], now),
        BurstWay::In => gateway.inbound_burst(&mut bufs[..n], &mut results[..n], now),
    };
    let mut ok = 0;
    for ((p, v), &k) in group.iter_mut().zip(verdicts.iter_mut()).zip(slot.iter()) {
        let r = if k == usize::MAX {
            // Refused before the burst: its error again, in order, so that the last
            // error describes the last failed packet.
            // SAFETY: as above; this buffer is not among `bufs` (it was refused).
            let again = unsafe { described_packet(p) };
            Err(again
                .err()
                .unwrap_or(ipsec_status::IPSEC_ERR_INVALID_ARGUMENT))
        } else {
            // By reference: only a failure's error is copied.
            match &results[k] {
                Ok(verdict) => {
                    p.offset = bufs[k].offset();
                    p.length = bufs[k].len();
                    Ok(*verdict)
                }
                Err(e) => Err(packet_error(*e)),
            }
        };
        ok += usize::from(finish(p, v, r));
    }
    ok
}

/// `ipsec_gateway_outbound` for packets that may have to be fragmented to fit their
/// SA's path MTU: the extra packets go into the first `*spares_used` of the
/// `spare_count` spare descriptors (as `ipsec_sa_encrypt_fragmenting`). A packet that
/// may not be fragmented fails with `IPSEC_ERR_TOO_BIG`: `ipsec_gateway_too_big_reply`
/// builds the ICMP error for its sender.
///
/// # Safety
///
/// As `ipsec_gateway_outbound`; `spares` points to `spare_count` writable descriptors
/// whose buffers are valid and distinct from each other and from `buf`; `spares_used`
/// to a writable `size_t`.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn ipsec_gateway_outbound_fragmenting(
    gateway: *mut ipsec_gateway,
    buf: *mut u8,
    capacity: usize,
    offset: *mut usize,
    length: *mut usize,
    now_ns: u64,
    spares: *mut crate::sa::ipsec_packet,
    spare_count: usize,
    spares_used: *mut usize,
    out: *mut ipsec_gateway_result,
) -> ipsec_status {
    call(|| {
        out_ptr(spares_used, "spares_used")?;
        let spares = Spares {
            spares,
            count: spare_count,
            used: spares_used,
        };
        // SAFETY: caller's contract.
        unsafe {
            process(
                gateway,
                buf,
                capacity,
                offset,
                length,
                now_ns,
                out,
                Way::Out(spares),
            )
        }
    })
}

/// How many spare descriptors `ipsec_gateway_outbound_fragmenting` needs for the
/// outbound packet `packet[..len]` at `now_ns` (0 when it fits, is bypassed or refused).
///
/// # Safety
///
/// `gateway` is a live gateway; `packet` points to `len` readable bytes; `out` to a
/// writable `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_spares_needed(
    gateway: *const ipsec_gateway,
    packet: *const u8,
    len: usize,
    now_ns: u64,
    out: *mut usize,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let h = unsafe { borrow(gateway, "gateway") }?;
        // SAFETY: caller's contract.
        let pkt = unsafe { bytes(packet, len, "packet") }?;
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(h.gateway.spares_needed(pkt, now(now_ns))) };
        Ok(())
    })
}

/// Builds the ICMP "too big" error for the sender of the outbound packet `packet`
/// that `ipsec_gateway_outbound` refused with `IPSEC_ERR_TOO_BIG`, carrying the usable
/// inner MTU of the SA its policy names; otherwise as `ipsec_sa_too_big_reply`
/// (`*out_len` 0 when no error is due).
///
/// # Safety
///
/// `gateway` is a live gateway; the other arguments as `ipsec_sa_too_big_reply`.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn ipsec_gateway_too_big_reply(
    gateway: *const ipsec_gateway,
    packet: *const u8,
    len: usize,
    src: *const c_char,
    now_ns: u64,
    out: *mut u8,
    capacity: usize,
    out_len: *mut usize,
) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let h = unsafe { borrow(gateway, "gateway") }?;
        // SAFETY: caller's contract.
        let pkt = unsafe { bytes(packet, len, "packet") }?;
        let mtu = h.gateway.too_big_mtu(pkt, now(now_ns));
        // SAFETY: caller's contract.
        unsafe { crate::path_mtu::write_reply(pkt, mtu, src, out, capacity, out_len) }
    })
}

/// Hands an ICMP "fragmentation needed" / ICMPv6 "packet too big" message to the
/// outbound SA whose packet it quotes (as `ipsec_sa_handle_icmp`). `*sa_name` is that
/// SA's name (see `ipsec_gateway`, "Name strings") and `*new_mtu` its new path MTU, or NULL
/// and 0 when nothing changed. `IPSEC_ERR_MALFORMED` when no SA of the gateway sent the
/// quoted packet.
///
/// # Safety
///
/// `gateway` is a live gateway used by no other thread during the call; `packet`
/// points to `len` readable bytes; `sa_name` and `new_mtu` to writable objects.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_handle_icmp(
    gateway: *mut ipsec_gateway,
    packet: *const u8,
    len: usize,
    now_ns: u64,
    sa_name: *mut *const c_char,
    new_mtu: *mut u32,
) -> ipsec_status {
    call(|| {
        let sa_name = out_ptr(sa_name, "sa_name")?;
        let new_mtu = out_ptr(new_mtu, "new_mtu")?;
        // SAFETY: caller's contract.
        let mut guard = unsafe { borrow_mut(gateway, "gateway") }?;
        // Reborrowed, so that fields can be borrowed apart (the guard poisons the
        // handle should a panic unwind through this call).
        let h = &mut *guard;
        // SAFETY: caller's contract.
        let pkt = unsafe { bytes(packet, len, "packet") }?;
        let learned = h
            .gateway
            .handle_icmp(pkt, now(now_ns))
            .map_err(packet_error)?;
        let (name, mtu) = match learned {
            Some((name, mtu)) => (h.names.ptr(name), u32::from(mtu)),
            None => (core::ptr::null(), 0),
        };
        // SAFETY: both checked non-NULL and aligned; writable by contract.
        unsafe {
            sa_name.write(name);
            new_mtu.write(mtu);
        }
        Ok(())
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
/// Outer fragments of ESP (IPv4 fragments of ESP or UDP, IPv6 fragments whose Fragment
/// header names ESP or UDP) are reassembled first, as `ipsec_reassembler_insert` does:
/// a held fragment is `IPSEC_VERDICT_REASSEMBLING`; the fragment that completes its
/// datagram writes it whole into `buf` from `*offset` and goes on as that packet
/// (`IPSEC_ERR_NO_BUFFER_SPACE`, nothing taken, when it does not fit before
/// `capacity`: give the fragment room for a whole datagram, up to 65,575 bytes). A
/// dropped fragment is `IPSEC_ERR_FRAGMENT_*`, counted in the gateway's stats.
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
        let mut guard = unsafe { borrow_mut(gateway, "gateway") }?;
        // Reborrowed, so that fields can be borrowed apart (the guard poisons the
        // handle should a panic unwind through this call).
        let h = &mut *guard;
        let limits =
            FragmentLimits::new(max_datagrams, now(lifetime_ns)).map_err(|e| config_error(&e))?;
        h.gateway.set_fragment_limits(limits);
        Ok(())
    })
}

/// The largest SPD cache `ipsec_gateway_set_spd_cache` makes: 2^24 flows (about 1 GiB).
pub const IPSEC_SPD_CACHE_MAX_FLOWS: usize = 1 << 24;

/// Turns the gateway's SPD cache (RFC 4301 §4.4.2) on with room for `capacity` flows
/// (rounded up to a power of two), or off with 0 (the default). Whole cleartext packets
/// (outbound, and inbound cleartext) whose exact flow was seen are then decided without
/// the classifier. The cache is emptied whenever the policies change (every policy
/// control call and `ipsec_gateway_commit_policies`), so it never answers from replaced
/// policies. Its memory (about 56 bytes a flow) is allocated here, once; its hit and
/// miss counts start again from 0. Worth it when the flows of the traffic fit and the
/// SPD is large.
///
/// `IPSEC_ERR_CONFIG` (nothing changed) when `capacity` is above
/// `IPSEC_SPD_CACHE_MAX_FLOWS`.
///
/// # Safety
///
/// `gateway` is a live gateway used by no other thread during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_set_spd_cache(
    gateway: *mut ipsec_gateway,
    capacity: usize,
) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let mut h = unsafe { borrow_mut(gateway, "gateway") }?;
        if capacity > IPSEC_SPD_CACHE_MAX_FLOWS {
            return Err(config_error(&ConfigError::new(
                "capacity",
                format!(
                    "{capacity} flows: at most {IPSEC_SPD_CACHE_MAX_FLOWS} (0 turns the SPD cache off)"
                ),
            )));
        }
        h.gateway.set_spd_cache(capacity);
        Ok(())
    })
}

/// Writes the SPD cache's room in flows (0: off) to `*capacity`, and the lookups it
/// answered (`*hits`) and passed to the classifier (`*misses`) since it was set.
///
/// # Safety
///
/// `gateway` is a live gateway not being changed by another thread during the call;
/// `capacity` points to a writable `size_t`, `hits` and `misses` to writable
/// `uint64_t`s.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_get_spd_cache_stats(
    gateway: *const ipsec_gateway,
    capacity: *mut usize,
    hits: *mut u64,
    misses: *mut u64,
) -> ipsec_status {
    call(|| {
        let capacity = out_ptr(capacity, "capacity")?;
        let hits = out_ptr(hits, "hits")?;
        let misses = out_ptr(misses, "misses")?;
        // SAFETY: caller's contract.
        let h = unsafe { borrow(gateway, "gateway") }?;
        let (c, hit, miss) = h.gateway.spd_cache_stats();
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe {
            capacity.write(c);
            hits.write(hit);
            misses.write(miss);
        }
        Ok(())
    })
}

/// Gives back an SPI from `ipsec_gateway_allocate_spi` that no SA was installed with
/// (the negotiation failed, or the daemon deletes an SA it never added), so that it may
/// be drawn again at once instead of when its reservation runs out. `*released`
/// (when not NULL) says whether it was reserved. The SPI of an installed inbound SA is
/// never given back here (`*released` false): delete the SA.
///
/// # Safety
///
/// `gateway` is a live gateway used by no other thread during the call; `released` is
/// NULL or points to a writable `bool`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_release_spi(
    gateway: *mut ipsec_gateway,
    spi: u32,
    released: *mut bool,
) -> ipsec_status {
    call(|| {
        let released = if released.is_null() {
            None
        } else {
            Some(out_ptr(released, "released")?)
        };
        // SAFETY: caller's contract.
        let mut h = unsafe { borrow_mut(gateway, "gateway") }?;
        let was = h.gateway.release_spi(spi);
        if let Some(out) = released {
            // SAFETY: checked non-NULL and aligned; writable by contract.
            unsafe { out.write(was) };
        }
        Ok(())
    })
}

/// Allocates an SPI for an inbound SA being negotiated (`get_spi`, as IKE daemons call
/// it) and writes it to `*out_spi`: random, never below 256, never the SPI of one of the
/// gateway's inbound SAs nor one allocated before whose reservation still runs at
/// `now_ns` (reservations last 165 seconds of the caller's clock, as a kernel's larval
/// SA). `IPSEC_ERR_SPI_EXHAUSTED` when no SPI of the range (see
/// `ipsec_gateway_set_spi_range`) is free, `IPSEC_ERR_RANDOMNESS_UNAVAILABLE` when the
/// OS random generator fails; nothing is written then.
///
/// # Safety
///
/// `gateway` is a live gateway used by no other thread during the call; `out_spi`
/// points to a writable `uint32_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_allocate_spi(
    gateway: *mut ipsec_gateway,
    now_ns: u64,
    out_spi: *mut u32,
) -> ipsec_status {
    call(|| {
        let out_spi = out_ptr(out_spi, "out_spi")?;
        // SAFETY: caller's contract.
        let mut h = unsafe { borrow_mut(gateway, "gateway") }?;
        let spi = h.gateway.allocate_spi(now(now_ns)).map_err(|e| {
            let status = match e {
                SpiError::RandomnessUnavailable => ipsec_status::IPSEC_ERR_RANDOMNESS_UNAVAILABLE,
                _ => ipsec_status::IPSEC_ERR_SPI_EXHAUSTED,
            };
            fail(status, e.to_string())
        })?;
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out_spi.write(spi) };
        Ok(())
    })
}

/// Makes `ipsec_gateway_allocate_spi` draw from `min..=max` only (as strongSwan's
/// `spi_min` / `spi_max`, e.g. to leave a range to another key manager); SPIs in use and
/// reserved stay so. The default range is 256..=0xffffffff. `IPSEC_ERR_CONFIG` (naming
/// `spi_min` or `spi_max`, nothing changed) when `min` is below 256 or above `max`.
///
/// # Safety
///
/// `gateway` is a live gateway used by no other thread during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_set_spi_range(
    gateway: *mut ipsec_gateway,
    min: u32,
    max: u32,
) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let mut h = unsafe { borrow_mut(gateway, "gateway") }?;
        h.gateway
            .set_spi_range(min, max)
            .map_err(|e| config_error(&e))
    })
}

/// The gateway's own counters: drops that belong to no SA (unknown SPI, policy
/// discard, unprotected cleartext, cleartext fragments dropped, packets too malformed
/// to classify, outer fragments dropped, reassembled datagrams that did not fit the
/// buffer).
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

/// The number of SAs installed in the gateway (0 for NULL): those of the policy file,
/// plus those added, less those deleted or retired.
///
/// # Safety
///
/// `gateway` is NULL or a live gateway.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_sa_count(gateway: *const ipsec_gateway) -> usize {
    // SAFETY: caller's contract.
    boundary(|| unsafe { borrow(gateway, "gateway") }.map_or(0, |h| h.names.len()))
}

/// SA number `index` of the gateway: name, description and counters. The order is
/// that of the policy file, then the SAs added later (an added SA may take the place
/// of a deleted one): indices change when SAs are added or deleted, so enumerate
/// `0 .. ipsec_gateway_sa_count(gateway)` with no control call in between.
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
        let mut order = h.sa_order.lock().unwrap_or_else(|p| p.into_inner());
        if order.0 != h.gateway.sa_changes() {
            *order = (
                h.gateway.sa_changes(),
                h.gateway.sas().map(|(n, _)| Box::from(n)).collect(),
            );
        }
        let found = order.1.get(index).and_then(|n| {
            let name = &**n;
            h.gateway.sa(name).map(|sa| (name, sa))
        });
        let (name, sa) = found.ok_or_else(|| {
            invalid(format!(
                "index {index} is out of range ({} SAs)",
                h.names.len()
            ))
        })?;
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(gateway_sa_entry(&h, name, sa)) };
        Ok(())
    })
}

/// The C entry of the installed SA `sa` called `name` (its name string kept by `h`).
fn gateway_sa_entry(h: &GatewayHandle, name: &str, sa: &SecurityAssociation) -> ipsec_gateway_sa {
    ipsec_gateway_sa {
        name: h.names.ptr(name),
        info: info_of(sa),
        stats: crate::sa::stats_of(sa),
    }
}

/// The installed SA called `name`: its entry as `ipsec_gateway_get_sa` gives it (name
/// string, description, counters with the use time), found by name in O(1), for a
/// daemon's `query_sa`. `IPSEC_ERR_UNKNOWN_SA` when no SA has the name (nothing
/// written), `IPSEC_ERR_INVALID_ARGUMENT` for NULL arguments or a name that is not
/// UTF-8.
///
/// # Safety
///
/// `gateway` is a live gateway; `name` is a NUL-terminated string; `out` points to a
/// writable `ipsec_gateway_sa`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_find_sa(
    gateway: *const ipsec_gateway,
    name: *const c_char,
    out: *mut ipsec_gateway_sa,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let name = unsafe { c_str(name, "name") }?;
        // SAFETY: caller's contract.
        let h = unsafe { borrow(gateway, "gateway") }?;
        let sa = h.gateway.sa(name).ok_or_else(|| {
            crate::control::refused(ipsec_core::ControlError::UnknownSa {
                name: name.to_owned(),
            })
        })?;
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(gateway_sa_entry(&h, name, sa)) };
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
        let mut guard = unsafe { borrow_mut(gateway, "gateway") }?;
        // Reborrowed, so that fields can be borrowed apart (the guard poisons the
        // handle should a panic unwind through this call).
        let h = &mut *guard;
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
        // `poll_event` deletes the retired SAs whose time has come.
        h.forget_retired(now(now_ns));
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(value) };
        Ok(())
    })
}

/// Replaces the limits of the gateway's reassembler of outer ESP fragments with
/// `*limits` (NULL: the defaults, see `ipsec_reassembly_limits_init`); fragments held
/// beyond the new limits are dropped (`fragment_limit`) and their number written to
/// `*out_dropped`. `IPSEC_ERR_INVALID_ARGUMENT` for non-zero reserved fields.
///
/// # Safety
///
/// `gateway` is a live gateway used by no other thread during the call; `limits` is
/// NULL or points to a readable `ipsec_reassembly_limits`; `out_dropped` points to a
/// writable `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_set_reassembly_limits(
    gateway: *mut ipsec_gateway,
    limits: *const ipsec_reassembly_limits,
    out_dropped: *mut usize,
) -> ipsec_status {
    call(|| {
        let out_dropped = out_ptr(out_dropped, "out_dropped")?;
        // SAFETY: caller's contract.
        let mut guard = unsafe { borrow_mut(gateway, "gateway") }?;
        // Reborrowed, so that fields can be borrowed apart (the guard poisons the
        // handle should a panic unwind through this call).
        let h = &mut *guard;
        // SAFETY: caller's contract.
        let limits = unsafe { limits_from(limits) }?;
        let n = h.gateway.set_reassembly_limits(limits);
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out_dropped.write(n) };
        Ok(())
    })
}

/// Drops the outer fragments whose datagram did not complete within its lifetime at
/// `now_ns` (counted as `fragment_timeout` in the gateway's stats) and writes how many
/// to `*out_dropped`. `ipsec_gateway_inbound` does this on every fragment; call this
/// when none come, to free what is held.
///
/// # Safety
///
/// `gateway` is a live gateway used by no other thread during the call; `out_dropped`
/// points to a writable `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_expire_fragments(
    gateway: *mut ipsec_gateway,
    now_ns: u64,
    out_dropped: *mut usize,
) -> ipsec_status {
    call(|| {
        let out_dropped = out_ptr(out_dropped, "out_dropped")?;
        // SAFETY: caller's contract.
        let mut guard = unsafe { borrow_mut(gateway, "gateway") }?;
        // Reborrowed, so that fields can be borrowed apart (the guard poisons the
        // handle should a panic unwind through this call).
        let h = &mut *guard;
        let n = h.gateway.expire_fragments(now(now_ns));
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out_dropped.write(n) };
        Ok(())
    })
}

/// Writes the next NAT-keepalive any SA of the gateway owes at `now_ns` into `buf`, as
/// `ipsec_sa_poll_keepalive` does for one SA: stores its length in `*out_len` and the
/// name of its SA in `*out_sa` (see `ipsec_gateway`, "Name strings"), or 0 and NULL
/// when none is due. Call until `*out_len` is 0, sending each keepalive as it comes.
/// `capacity` must be at least `IPSEC_NAT_KEEPALIVE_MAX_LEN`
/// (`IPSEC_ERR_BUFFER_TOO_SMALL` otherwise, nothing written).
///
/// # Safety
///
/// `gateway` is a live gateway used by no other thread during the call; `buf` points to
/// `capacity` writable bytes; `out_len` and `out_sa` to writable objects.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_poll_keepalive(
    gateway: *mut ipsec_gateway,
    now_ns: u64,
    buf: *mut u8,
    capacity: usize,
    out_len: *mut usize,
    out_sa: *mut *const c_char,
) -> ipsec_status {
    call(|| {
        let out_len = out_ptr(out_len, "out_len")?;
        let out_sa = out_ptr(out_sa, "out_sa")?;
        // SAFETY: caller's contract.
        let mut guard = unsafe { borrow_mut(gateway, "gateway") }?;
        // Reborrowed, so that fields can be borrowed apart (the guard poisons the
        // handle should a panic unwind through this call).
        let h = &mut *guard;
        // SAFETY: caller's contract.
        let buf = unsafe { bytes_mut(buf, capacity, "buf") }?;
        let out = keepalive_buffer(buf)?;
        let names = &h.names;
        let (len, sa) = match h.gateway.poll_keepalive(now(now_ns), out) {
            Some((name, len)) => (len, names.ptr(name)),
            None => (0, core::ptr::null()),
        };
        // SAFETY: both checked non-NULL and aligned; writable by contract.
        unsafe {
            out_len.write(len);
            out_sa.write(sa);
        }
        Ok(())
    })
}

/// Stores in `*out_ns` when the next NAT-keepalive of any SA of the gateway is due, on
/// the caller's clock, for a timer (then call `ipsec_gateway_poll_keepalive`);
/// `UINT64_MAX` when none of its SAs sends keepalives.
///
/// # Safety
///
/// `gateway` is a live gateway; `out_ns` points to a writable `uint64_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_gateway_next_keepalive(
    gateway: *const ipsec_gateway,
    out_ns: *mut u64,
) -> ipsec_status {
    call(|| {
        let out_ns = out_ptr(out_ns, "out_ns")?;
        // SAFETY: caller's contract.
        let h = unsafe { borrow(gateway, "gateway") }?;
        let due = time_ns(h.gateway.next_keepalive());
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out_ns.write(due) };
        Ok(())
    })
}
