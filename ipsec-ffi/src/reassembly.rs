//! Reassembly of IP fragments (`ipsec_core::Reassembler`) on its own, for a C program
//! that does its own ESP: ESP packets fragmented on the path are put back together
//! before `ipsec_sa_decrypt`. (`ipsec_gateway_inbound` does this by itself.)

use core::time::Duration;

use ipsec_core::{PacketBuf, Reassembler, Reassembly, ReassemblyLimits};

use crate::boundary::{bad_descriptor, boundary, call, invalid, packet_error};
use crate::handle::{Handle, borrow, borrow_mut, bytes_mut, free_handle, into_handle, out_ptr};
use crate::sa::{ipsec_sa_stats, now};
use crate::status::ipsec_status;

/// A fragment reassembler: the datagrams in progress, within its limits.
///
/// Thread safety: one thread at a time (every fragment changes it); it may move between
/// threads.
pub struct ipsec_reassembler {
    _private: [u8; 0],
}

impl Handle for ipsec_reassembler {
    type Inner = Reassembler;
}

/// The limits of a reassembler. Fill it with `ipsec_reassembly_limits_init` (the
/// defaults) and change what you need.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ipsec_reassembly_limits {
    /// Bytes held at most: each held fragment counts its IP length plus 64 bytes of
    /// bookkeeping. Default 4 MiB.
    pub max_bytes: usize,
    /// Datagrams in progress at most. Default 1024.
    pub max_datagrams: usize,
    /// Fragments per datagram at most. Default 64.
    pub max_fragments: usize,
    /// How long a datagram may take to complete from its first fragment, in
    /// nanoseconds of the caller's clock. Default 30 s.
    pub lifetime_ns: u64,
    /// Must be zero: room for limits added later.
    pub reserved: [u64; 4],
}

impl From<ReassemblyLimits> for ipsec_reassembly_limits {
    fn from(l: ReassemblyLimits) -> Self {
        ipsec_reassembly_limits {
            max_bytes: l.max_bytes,
            max_datagrams: l.max_datagrams,
            max_fragments: l.max_fragments,
            lifetime_ns: u64::try_from(l.lifetime.as_nanos()).unwrap_or(u64::MAX),
            reserved: [0; 4],
        }
    }
}

/// The core limits a C struct describes (NULL: the defaults).
///
/// # Safety
///
/// A non-NULL `limits` points to a readable `ipsec_reassembly_limits`.
pub(crate) unsafe fn limits_from(
    limits: *const ipsec_reassembly_limits,
) -> Result<ReassemblyLimits, ipsec_status> {
    if limits.is_null() {
        return Ok(ReassemblyLimits::DEFAULT);
    }
    if !limits.is_aligned() {
        return Err(invalid("`limits` is not aligned for its type"));
    }
    // SAFETY: non-NULL, aligned and readable (caller's contract); every bit pattern is
    // a valid value of its integer fields.
    let l = unsafe { limits.read() };
    if l.reserved.iter().any(|&r| r != 0) {
        return Err(invalid(
            "ipsec_reassembly_limits.reserved must be zero (initialise with \
             ipsec_reassembly_limits_init)",
        ));
    }
    Ok(ReassemblyLimits::DEFAULT
        .with_max_bytes(l.max_bytes)
        .with_max_datagrams(l.max_datagrams)
        .with_max_fragments(l.max_fragments)
        .with_lifetime(Duration::from_nanos(l.lifetime_ns)))
}

/// What `ipsec_reassembler_insert` did with a packet it did not drop.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ipsec_reassembly {
    /// Not a fragment: process the packet as it is (offset and length unchanged).
    IPSEC_REASSEMBLY_NOT_FRAGMENT = 1,
    /// A fragment, copied and held until its datagram completes: nothing to do yet,
    /// and the buffer is free again (offset and length unchanged).
    IPSEC_REASSEMBLY_HELD = 2,
    /// The fragment completed its datagram, which now lies whole in the buffer at the
    /// updated offset and length (IPv4 with MF and offset cleared, length and checksum
    /// fixed; IPv6 without its Fragment header).
    IPSEC_REASSEMBLY_COMPLETE = 3,
}

/// Fills `*limits` with the defaults: 4 MiB, 1024 datagrams, 64 fragments per datagram,
/// 30 seconds, reserved fields zero.
///
/// # Safety
///
/// `limits` points to a writable `ipsec_reassembly_limits`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_reassembly_limits_init(
    limits: *mut ipsec_reassembly_limits,
) -> ipsec_status {
    call(|| {
        let limits = out_ptr(limits, "limits")?;
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { limits.write(ReassemblyLimits::DEFAULT.into()) };
        Ok(())
    })
}

/// Creates a reassembler with `*limits` (NULL: the defaults) and stores it in `*out`.
/// `IPSEC_ERR_INVALID_ARGUMENT` for non-zero reserved fields. Free it with
/// `ipsec_reassembler_free`.
///
/// # Safety
///
/// `limits` is NULL or points to a readable `ipsec_reassembly_limits`; `out` points to
/// a writable `ipsec_reassembler *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_reassembler_new(
    limits: *const ipsec_reassembly_limits,
    out: *mut *mut ipsec_reassembler,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let limits = unsafe { limits_from(limits) }?;
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(into_handle::<ipsec_reassembler>(Reassembler::new(limits))) };
        Ok(())
    })
}

/// Frees a reassembler and every fragment it holds. NULL is ignored.
///
/// # Safety
///
/// `reassembler` is NULL or from `ipsec_reassembler_new`, not freed before, not used
/// after.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_reassembler_free(reassembler: *mut ipsec_reassembler) {
    // SAFETY: caller's contract.
    boundary(|| unsafe { free_handle(reassembler) })
}

/// Takes the IP packet at `buf[*offset .. *offset + *length]` at time `now_ns` and
/// writes what happened to `*out` (an `ipsec_reassembly` value):
/// `IPSEC_REASSEMBLY_NOT_FRAGMENT` (process the packet as it is),
/// `IPSEC_REASSEMBLY_HELD` (the fragment was copied; the buffer is free again) or
/// `IPSEC_REASSEMBLY_COMPLETE` (the whole datagram was written into `buf` from
/// `*offset`, and `*length` updated; an IPv6 atomic fragment loses its Fragment header
/// in place, `*offset` moving 8 bytes on).
///
/// Drops, each counted in the reassembler's stats: `IPSEC_ERR_FRAGMENT_OVERLAP` (the
/// whole datagram), `IPSEC_ERR_FRAGMENT_DUPLICATE` (only this copy),
/// `IPSEC_ERR_FRAGMENT_INVALID`, `IPSEC_ERR_FRAGMENT_LIMIT` (the fragment is refused,
/// nothing held is evicted), `IPSEC_ERR_MALFORMED` (not an IP packet, or a bad IPv4
/// header checksum) and `IPSEC_ERR_NO_BUFFER_SPACE` when the completed datagram does not
/// fit between `*offset` and `capacity`: the fragment is then not taken, the others stay
/// held, and the call may be repeated with a larger buffer. Datagrams whose lifetime
/// ended at `now_ns` are dropped first (`fragment_timeout`). On any failure `*offset`,
/// `*length` and `*out` are unchanged.
///
/// # Safety
///
/// `reassembler` is a live reassembler used by no other thread during the call; `buf`
/// points to `capacity` writable bytes; `offset`, `length` and `out` to writable
/// objects.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_reassembler_insert(
    reassembler: *mut ipsec_reassembler,
    buf: *mut u8,
    capacity: usize,
    offset: *mut usize,
    length: *mut usize,
    now_ns: u64,
    out: *mut u32,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        let offset = out_ptr(offset, "offset")?;
        let length = out_ptr(length, "length")?;
        // SAFETY: caller's contract.
        let mut r = unsafe { borrow_mut(reassembler, "reassembler") }?;
        // SAFETY: caller's contract.
        let buf = unsafe { bytes_mut(buf, capacity, "buf") }?;
        // SAFETY: checked non-NULL and aligned; readable by contract.
        let (off, len) = unsafe { (offset.read(), length.read()) };
        let mut pkt =
            PacketBuf::new(buf, off, len).map_err(|_| bad_descriptor(off, len, capacity))?;
        let what = match r
            .insert_in_place(&mut pkt, now(now_ns))
            .map_err(packet_error)?
        {
            Reassembly::NotFragment => ipsec_reassembly::IPSEC_REASSEMBLY_NOT_FRAGMENT,
            Reassembly::Held => ipsec_reassembly::IPSEC_REASSEMBLY_HELD,
            _ => ipsec_reassembly::IPSEC_REASSEMBLY_COMPLETE,
        };
        // SAFETY: all three checked non-NULL and aligned; writable by contract.
        unsafe {
            offset.write(pkt.offset());
            length.write(pkt.len());
            out.write(what as u32);
        }
        Ok(())
    })
}

/// Drops every datagram whose lifetime ended at `now_ns` (each held fragment counted as
/// `fragment_timeout`) and writes how many fragments were dropped to `*out_dropped`.
/// `ipsec_reassembler_insert` does this on every call; call this when no fragments
/// come, to free what is held.
///
/// # Safety
///
/// `reassembler` is a live reassembler used by no other thread during the call;
/// `out_dropped` points to a writable `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_reassembler_expire(
    reassembler: *mut ipsec_reassembler,
    now_ns: u64,
    out_dropped: *mut usize,
) -> ipsec_status {
    call(|| {
        let out_dropped = out_ptr(out_dropped, "out_dropped")?;
        // SAFETY: caller's contract.
        let mut r = unsafe { borrow_mut(reassembler, "reassembler") }?;
        let n = r.expire(now(now_ns));
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out_dropped.write(n) };
        Ok(())
    })
}

/// The reassembler's counters: `packets` and `bytes` are the datagrams it completed,
/// and every dropped fragment is counted under its reason (`fragment_timeout`,
/// `fragment_overlap`, `fragment_duplicate`, `fragment_limit`, `fragment_invalid`,
/// `malformed`, `no_buffer_space`).
///
/// # Safety
///
/// `reassembler` is a live reassembler; `out` points to a writable `ipsec_sa_stats`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_reassembler_get_stats(
    reassembler: *const ipsec_reassembler,
    out: *mut ipsec_sa_stats,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let r = unsafe { borrow(reassembler, "reassembler") }?;
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(r.stats().into()) };
        Ok(())
    })
}
