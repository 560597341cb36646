//! Path MTU, fragmenting encryption and ICMP "too big" errors for C.
//!
//! A packet that does not fit its SA's path MTU after ESP is fragmented (when it may be)
//! into **spare descriptors** the caller hands in: an array of `ipsec_packet` whose
//! `buf` / `capacity` / `offset` describe empty buffers (the offset is the headroom to
//! keep, as a fresh mbuf's data offset; `length` is ignored). The call fills the first
//! ones it needs, in order, setting their `offset`, `length` and `status`, and says how
//! many it used. A packet that may not be fragmented fails with `IPSEC_ERR_TOO_BIG`;
//! `ipsec_sa_too_big_reply` / `ipsec_gateway_too_big_reply` then build the ICMP error
//! for its sender (the caller sends it, rate-limited).

use crate::boundary::{
    BurstProgress, bad_descriptor, burst_boundary, call, config_error, invalid, packet_error,
};
use crate::handle::{array_mut, borrow, borrow_mut, bytes, bytes_mut, c_str, out_ptr};
use crate::sa::{ipsec_packet, ipsec_sa, now};
use crate::status::ipsec_status;
use core::ffi::c_char;
use ipsec_core::icmp::{self, IcmpError};
use ipsec_core::{Error, PacketBuf, SpareBuffers};
use std::net::IpAddr;

/// Runs `f` with the C spare descriptors `spares[..count]` as [`SpareBuffers`] (built
/// only when `needed > 0`: the packet must be fragmented) and writes the filled ones
/// back. Returns `f`'s answer and how many spares it filled.
///
/// # Safety
///
/// `spares` points to `count` writable descriptors whose buffers are valid, distinct
/// from each other and from the packet's buffer.
pub(crate) unsafe fn with_spares<R>(
    spares: *mut ipsec_packet,
    count: usize,
    needed: usize,
    f: impl FnOnce(&mut SpareBuffers<'_, '_>) -> Result<R, Error>,
) -> Result<(R, usize), ipsec_status> {
    if needed == 0 {
        return f(&mut SpareBuffers::none())
            .map(|r| (r, 0))
            .map_err(packet_error);
    }
    // SAFETY: caller's contract.
    let descs = unsafe { array_mut(spares, count, "spares") }?;
    let take = needed.min(descs.len());
    let mut bufs = Vec::with_capacity(take);
    for d in descs[..take].iter() {
        // SAFETY: each spare's buffer is valid and not otherwise accessed (caller's
        // contract).
        let buf = unsafe { bytes_mut(d.buf, d.capacity, "spares[i].buf") }?;
        bufs.push(
            PacketBuf::new(buf, d.offset, 0)
                .map_err(|_| bad_descriptor(d.offset, 0, d.capacity))?,
        );
    }
    let mut pool = SpareBuffers::new(&mut bufs);
    let r = f(&mut pool).map_err(packet_error)?;
    let used = pool.used();
    for (d, b) in descs.iter_mut().zip(&bufs).take(used) {
        d.offset = b.offset();
        d.length = b.len();
        d.status = ipsec_status::IPSEC_OK as u32;
        d.fragments = 0;
    }
    Ok((r, used))
}

/// Sets the SA's path MTU (the largest outer packet the path carries; 0 removes it),
/// forgetting any value learned from ICMP. `IPSEC_ERR_CONFIG` below the smallest MTU
/// of the SA's IP family (68, or 1,280 for IPv6 tunnels).
///
/// # Safety
///
/// `sa` is a live SA used by no other thread during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_set_path_mtu(sa: *mut ipsec_sa, path_mtu: u32) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let mut sa = unsafe { borrow_mut(sa, "sa") }?;
        let mtu = match path_mtu {
            0 => None,
            m => Some(u16::try_from(m).map_err(|_| invalid("path_mtu exceeds 65,535"))?),
        };
        sa.set_path_mtu(mtu).map_err(|e| config_error(&e))
    })
}

/// The SA's path MTU in force at `now_ns` (configured, or lower and learned from ICMP
/// and not aged out) and the largest inner packet that fits it after ESP (for a plain
/// IPv4 header in transport mode); both 0 when no path MTU is set.
///
/// # Safety
///
/// `sa` is a live SA; `path_mtu` and `inner_mtu` point to writable `uint32_t`s.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_get_path_mtu(
    sa: *const ipsec_sa,
    now_ns: u64,
    path_mtu: *mut u32,
    inner_mtu: *mut u32,
) -> ipsec_status {
    call(|| {
        let path_mtu = out_ptr(path_mtu, "path_mtu")?;
        let inner_mtu = out_ptr(inner_mtu, "inner_mtu")?;
        // SAFETY: caller's contract.
        let sa = unsafe { borrow(sa, "sa") }?;
        let t = now(now_ns);
        // SAFETY: both checked non-NULL and aligned; writable by contract.
        unsafe {
            path_mtu.write(sa.path_mtu(t).map_or(0, u32::from));
            inner_mtu.write(sa.inner_mtu(t).map_or(0, u32::from));
        }
        Ok(())
    })
}

/// Hands the SA an ICMP "fragmentation needed" / ICMPv6 "packet too big" message the
/// caller received (the whole IP packet). When it quotes one of this SA's own packets
/// (its SPI, endpoints and a sequence number it sent) and reports a lower MTU, the SA
/// uses that for ten minutes of the caller's clock; `*new_mtu` is the new path MTU, or
/// 0 when nothing changed. `IPSEC_ERR_MALFORMED` for anything else (the last error says
/// why); nothing is counted.
///
/// # Safety
///
/// `sa` is a live SA used by no other thread during the call; `packet` points to `len`
/// readable bytes; `new_mtu` to a writable `uint32_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_handle_icmp(
    sa: *mut ipsec_sa,
    packet: *const u8,
    len: usize,
    now_ns: u64,
    new_mtu: *mut u32,
) -> ipsec_status {
    call(|| {
        let new_mtu = out_ptr(new_mtu, "new_mtu")?;
        // SAFETY: caller's contract.
        let mut sa = unsafe { borrow_mut(sa, "sa") }?;
        // SAFETY: caller's contract.
        let pkt = unsafe { bytes(packet, len, "packet") }?;
        let learned = sa.handle_icmp(pkt, now(now_ns)).map_err(packet_error)?;
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { new_mtu.write(learned.map_or(0, u32::from)) };
        Ok(())
    })
}

/// How many spare descriptors `ipsec_sa_encrypt_fragmenting` needs for the IP packet
/// `packet[..len]` at `now_ns`: 0 when it fits the path MTU (or will be refused).
///
/// # Safety
///
/// `sa` is a live SA; `packet` points to `len` readable bytes; `out` to a writable
/// `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_spares_needed(
    sa: *const ipsec_sa,
    packet: *const u8,
    len: usize,
    now_ns: u64,
    out: *mut usize,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let sa = unsafe { borrow(sa, "sa") }?;
        // SAFETY: caller's contract.
        let pkt = unsafe { bytes(packet, len, "packet") }?;
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(sa.spares_needed(pkt, now(now_ns))) };
        Ok(())
    })
}

/// `ipsec_sa_encrypt` for packets that may have to be fragmented to fit the path MTU:
/// the first packet stays in `buf` (its `*offset` / `*length` updated), the others go
/// into the first `*spares_used` of the `spare_count` spare descriptors (each needs
/// `ipsec_sa_overhead`'s headroom at its offset and room for a path-MTU sized packet
/// behind it). On failure nothing is written: `IPSEC_ERR_TOO_BIG` (may not be
/// fragmented), `IPSEC_ERR_NO_BUFFER_SPACE` (too few or too small spares, or too little
/// room around the packet), and the statuses of `ipsec_sa_encrypt`. `spares` may be NULL
/// when `spare_count` is 0.
///
/// # Safety
///
/// As `ipsec_sa_encrypt`; `spares` points to `spare_count` writable descriptors whose
/// buffers are valid, distinct from each other and from `buf`; `spares_used` points to
/// a writable `size_t`.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn ipsec_sa_encrypt_fragmenting(
    sa: *mut ipsec_sa,
    buf: *mut u8,
    capacity: usize,
    offset: *mut usize,
    length: *mut usize,
    now_ns: u64,
    spares: *mut ipsec_packet,
    spare_count: usize,
    spares_used: *mut usize,
) -> ipsec_status {
    call(|| {
        let offset = out_ptr(offset, "offset")?;
        let length = out_ptr(length, "length")?;
        let spares_used = out_ptr(spares_used, "spares_used")?;
        // SAFETY: caller's contract.
        let mut sa = unsafe { borrow_mut(sa, "sa") }?;
        // SAFETY: caller's contract.
        let buf = unsafe { bytes_mut(buf, capacity, "buf") }?;
        // SAFETY: checked non-NULL and aligned; readable by contract.
        let (off, len) = unsafe { (offset.read(), length.read()) };
        let mut pkt =
            PacketBuf::new(buf, off, len).map_err(|_| bad_descriptor(off, len, capacity))?;
        let t = now(now_ns);
        let needed = sa.spares_needed(pkt.data(), t);
        // SAFETY: caller's contract.
        let (_, used) = unsafe {
            with_spares(spares, spare_count, needed, |pool| {
                sa.encrypt_fragmenting(&mut pkt, pool, t)
            })
        }?;
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe {
            offset.write(pkt.offset());
            length.write(pkt.len());
            spares_used.write(used);
        }
        Ok(())
    })
}

/// `ipsec_sa_encrypt_burst` with spare descriptors for packets that must be
/// fragmented: each packet's `fragments` is set to how many spares it filled, and a
/// packet's spares follow those of the packets before it, so packet `i`'s extra
/// packets are the next `packets[i].fragments` filled spares. `*spares_used` is the
/// total. Returns how many packets succeeded (0 with every status
/// `IPSEC_ERR_INVALID_ARGUMENT` when `sa` or `spares_used` is NULL). After a panic
/// part-way, as `ipsec_sa_encrypt_burst`; `*spares_used` counts the spares of the
/// packets before it.
///
/// # Safety
///
/// As `ipsec_sa_encrypt_burst` and `ipsec_sa_encrypt_fragmenting`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_encrypt_burst_fragmenting(
    sa: *mut ipsec_sa,
    packets: *mut ipsec_packet,
    count: usize,
    now_ns: u64,
    spares: *mut ipsec_packet,
    spare_count: usize,
    spares_used: *mut usize,
) -> usize {
    let body = |progress: &mut BurstProgress| {
        // SAFETY: caller's contract.
        let Ok(packets) = (unsafe { array_mut(packets, count, "packets") }) else {
            return 0;
        };
        let setup = out_ptr(spares_used, "spares_used").and_then(|used| {
            // SAFETY: caller's contract.
            unsafe { borrow_mut(sa, "sa") }.map(|sa| (used, sa))
        });
        let (spares_used, mut sa) = match setup {
            Ok(v) => v,
            Err(status) => {
                for p in packets.iter_mut() {
                    p.status = status as u32;
                    p.fragments = 0;
                }
                return 0;
            }
        };
        progress.started = true;
        let t = now(now_ns);
        for p in packets.iter_mut() {
            p.fragments = 0;
            let used = progress.spares_used;
            let res = (|| {
                // SAFETY: each descriptor's buffer is valid and not otherwise accessed.
                let buf = unsafe { bytes_mut(p.buf, p.capacity, "packets[i].buf") }?;
                let mut pkt = PacketBuf::new(buf, p.offset, p.length)
                    .map_err(|_| bad_descriptor(p.offset, p.length, p.capacity))?;
                let needed = sa.spares_needed(pkt.data(), t);
                // Spares already filled by earlier packets are skipped.
                let rest = spare_count.saturating_sub(used);
                let base = if rest == 0 {
                    core::ptr::null_mut()
                } else {
                    spares.wrapping_add(used)
                };
                // SAFETY: `base` points into the caller's spare array (or is NULL with 0).
                let (_, k) = unsafe {
                    with_spares(base, rest, needed, |pool| {
                        crate::test_hooks::packet_step();
                        sa.encrypt_fragmenting(&mut pkt, pool, t)
                    })
                }?;
                Ok::<_, ipsec_status>((pkt.offset(), pkt.len(), k))
            })();
            p.status = match res {
                Ok((off, len, k)) => {
                    p.offset = off;
                    p.length = len;
                    p.fragments = k as u32;
                    progress.spares_used += k;
                    progress.ok += 1;
                    ipsec_status::IPSEC_OK as u32
                }
                Err(s) => s as u32,
            };
            progress.done += 1;
        }
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { spares_used.write(progress.spares_used) };
        progress.ok
    };
    // The spares the packets before a panic filled are theirs.
    let after_panic = |progress: &BurstProgress| {
        // SAFETY: checked non-NULL and aligned before `started` was set; writable by
        // contract.
        unsafe { spares_used.write(progress.spares_used) }
    };
    // SAFETY: `started` is set once `packets` was checked (caller's contract).
    unsafe { burst_boundary(packets, count, body, after_panic) }
}

/// Builds into `out` the ICMP error for the sender of `packet` (an IPv4 or IPv6 packet
/// the caller was refused with `IPSEC_ERR_TOO_BIG`): "fragmentation needed" (type 3
/// code 4) or ICMPv6 "packet too big", carrying the usable inner MTU, from the address
/// `src` (NUL-terminated text, the gateway's own address of the packet's family), to
/// the packet's source. `*out_len` is its length, or 0 when no ICMP error may be sent
/// about this packet (it is not too big for the SA, is itself an ICMP error or a
/// non-first fragment, or comes from an address that cannot be answered). `out` needs
/// up to 576 bytes (IPv4) or 1,280 (IPv6): `IPSEC_ERR_BUFFER_TOO_SMALL` otherwise.
/// Sending it, and rate-limiting what is sent (RFC 4443 §2.4(f)), is the caller's part.
///
/// # Safety
///
/// `sa` is a live SA; `packet` points to `len` readable bytes; `src` is NUL-terminated;
/// `out` points to `capacity` writable bytes; `out_len` to a writable `size_t`.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn ipsec_sa_too_big_reply(
    sa: *const ipsec_sa,
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
        let sa = unsafe { borrow(sa, "sa") }?;
        // SAFETY: caller's contract.
        let pkt = unsafe { bytes(packet, len, "packet") }?;
        let mtu = sa.too_big_mtu(pkt, now(now_ns));
        // SAFETY: caller's contract.
        unsafe { write_reply(pkt, mtu, src, out, capacity, out_len) }
    })
}

/// Builds the ICMP error about `pkt` when `mtu` is `Some`, into the caller's buffer.
///
/// # Safety
///
/// `src` is NUL-terminated; `out` points to `capacity` writable bytes; `out_len` to a
/// writable `size_t`.
pub(crate) unsafe fn write_reply(
    pkt: &[u8],
    mtu: Option<u16>,
    src: *const c_char,
    out: *mut u8,
    capacity: usize,
    out_len: *mut usize,
) -> Result<(), ipsec_status> {
    let out_len = out_ptr(out_len, "out_len")?;
    // SAFETY: caller's contract.
    let src = unsafe { c_str(src, "src") }?;
    let src: IpAddr = src
        .parse()
        .map_err(|_| invalid(format!("src {src:?} is not an IPv4 or IPv6 address")))?;
    // SAFETY: caller's contract.
    let out = unsafe { bytes_mut(out, capacity, "out") }?;
    let n = match mtu {
        None => 0,
        Some(mtu) => match icmp::too_big_reply(pkt, mtu, src, out) {
            Ok(n) => n.unwrap_or(0),
            Err(IcmpError::BufferTooSmall { needed }) => {
                return Err(crate::boundary::fail(
                    ipsec_status::IPSEC_ERR_BUFFER_TOO_SMALL,
                    format!("out: the ICMP error needs {needed} bytes, {capacity} given"),
                ));
            }
            Err(e) => return Err(invalid(e.to_string())),
        },
    };
    // SAFETY: checked non-NULL and aligned; writable by contract.
    unsafe { out_len.write(n) };
    Ok(())
}
