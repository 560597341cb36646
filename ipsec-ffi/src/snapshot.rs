//! High availability: an SA's whole state as bytes (`ipsec_sa_snapshot`) and an SA
//! restored from them on a standby (`ipsec_sa_restore`). The format and the guarantees
//! are those of `ipsec_core::snapshot`.
//!
//! A snapshot holds the SA's keys: the library wipes its own copies; the caller must
//! protect (and wipe) the bytes it receives as it protects keys.

use core::time::Duration;

use ipsec_core::{RestoreOptions, SecurityAssociation, SnapshotError};

use crate::boundary::{call, fail, invalid};
use crate::handle::{borrow, bytes, bytes_mut, into_handle, out_ptr, read_struct};
use crate::sa::{ipsec_sa, now};
use crate::status::ipsec_status;

/// The default `seq_margin` of `ipsec_restore_options` (2^20): how far a restored
/// outbound SA's sequence number jumps ahead of its snapshot's.
pub const IPSEC_DEFAULT_SEQ_MARGIN: u64 = 1 << 20;
const _: () = assert!(IPSEC_DEFAULT_SEQ_MARGIN == RestoreOptions::DEFAULT_SEQ_MARGIN);

/// How `ipsec_sa_restore` restores an SA. Fill it with `ipsec_restore_options_init`
/// first (it sets the defaults), then set the fields.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ipsec_restore_options {
    /// Outbound: the restored SA's last-used sequence number is the snapshot's plus
    /// this, so that it never sends a sequence number (an AEAD nonce) the primary may
    /// have sent after the snapshot. Choose more than the packets the primary can send
    /// between two snapshots. Default `IPSEC_DEFAULT_SEQ_MARGIN`. Ignored for inbound
    /// SAs (their replay window is restored exactly).
    pub seq_margin: u64,
    /// Outbound: a sequence number the caller knows the primary used (0: none). A
    /// restore whose last-used sequence number (snapshot + margin) would be below it is
    /// refused with `IPSEC_ERR_SNAPSHOT_REFUSED`.
    pub not_below: u64,
    /// Nanoseconds between taking the snapshot and restoring it, if the caller knows
    /// them: added to the SA's age so its time lifetimes stay on schedule. 0 by default.
    pub elapsed_ns: u64,
    /// Must be zero: room for options added later.
    pub reserved: [u64; 4],
}

/// Sets `*options` to the defaults: margin `IPSEC_DEFAULT_SEQ_MARGIN`, no `not_below`,
/// no elapsed time.
///
/// # Safety
///
/// `options` points to a writable `ipsec_restore_options`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_restore_options_init(
    options: *mut ipsec_restore_options,
) -> ipsec_status {
    call(|| {
        let options = out_ptr(options, "options")?;
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe {
            options.write(ipsec_restore_options {
                seq_margin: IPSEC_DEFAULT_SEQ_MARGIN,
                not_below: 0,
                elapsed_ns: 0,
                reserved: [0; 4],
            })
        };
        Ok(())
    })
}

/// Stores in `*out_len` the length of the snapshot `ipsec_sa_snapshot` writes for this
/// SA at `now_ns` (it depends on the SA's window size and on whether a learned path MTU
/// still holds at `now_ns`).
///
/// # Safety
///
/// `sa` is a live SA; `out_len` points to a writable `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_snapshot_size(
    sa: *const ipsec_sa,
    now_ns: u64,
    out_len: *mut usize,
) -> ipsec_status {
    call(|| {
        let out_len = out_ptr(out_len, "out_len")?;
        // SAFETY: caller's contract.
        let sa = unsafe { borrow(sa, "sa") }?;
        let len = sa.snapshot(now(now_ns)).as_bytes().len();
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out_len.write(len) };
        Ok(())
    })
}

/// Writes the SA's whole state at `now_ns` (keys, sequence number or replay window,
/// lifetime usage, counters, pending events) into `buf` and its length into
/// `*out_len`, for `ipsec_sa_restore` on a standby. `IPSEC_ERR_BUFFER_TOO_SMALL`
/// (nothing written) when `capacity` is less than `ipsec_sa_snapshot_size` gives.
///
/// **The bytes hold the SA's keys**: send them to the standby over an authenticated,
/// encrypted channel, never log them, and wipe the buffer when done. The SA is not
/// changed.
///
/// # Safety
///
/// `sa` is a live SA; `buf` points to `capacity` writable bytes; `out_len` to a
/// writable `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_snapshot(
    sa: *const ipsec_sa,
    now_ns: u64,
    buf: *mut u8,
    capacity: usize,
    out_len: *mut usize,
) -> ipsec_status {
    call(|| {
        let out_len = out_ptr(out_len, "out_len")?;
        // SAFETY: caller's contract.
        let sa = unsafe { borrow(sa, "sa") }?;
        // SAFETY: caller's contract.
        let buf = unsafe { bytes_mut(buf, capacity, "buf") }?;
        let snap = sa.snapshot(now(now_ns));
        let bytes = snap.as_bytes();
        let Some(dst) = buf.get_mut(..bytes.len()) else {
            return Err(fail(
                ipsec_status::IPSEC_ERR_BUFFER_TOO_SMALL,
                format!(
                    "capacity {capacity} is less than the snapshot's {} bytes \
                     (ipsec_sa_snapshot_size)",
                    bytes.len()
                ),
            ));
        };
        dst.copy_from_slice(bytes);
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out_len.write(bytes.len()) };
        Ok(())
    })
}

/// Restores an SA from `snapshot` (`snapshot_len` bytes written by
/// `ipsec_sa_snapshot`) at `now_ns` on this machine's clock, with `options` (NULL for
/// the defaults), and stores it in `*out`.
///
/// An outbound SA continues after the snapshot's sequence number plus
/// `options->seq_margin`, so that it never reuses a (key, nonce) pair the primary may
/// have used after the snapshot; an inbound SA gets its replay window back bit for bit.
/// The SA's age is carried over as an age, not as the primary's clock.
///
/// `IPSEC_ERR_BAD_SNAPSHOT` when the bytes are not a valid snapshot (truncated, bad
/// magic, unsupported version, bad length or field, a configuration the library
/// refuses: the message says which), `IPSEC_ERR_SNAPSHOT_REFUSED` when the margin leaves
/// no sequence number to send or the restore would not reach `options->not_below`,
/// `IPSEC_ERR_INVALID_ARGUMENT` for non-zero reserved fields.
///
/// # Safety
///
/// `snapshot` points to `snapshot_len` readable bytes; `options` is NULL or points to
/// an initialised `ipsec_restore_options`; `out` points to a writable `ipsec_sa *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_sa_restore(
    snapshot: *const u8,
    snapshot_len: usize,
    options: *const ipsec_restore_options,
    now_ns: u64,
    out: *mut *mut ipsec_sa,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let snapshot = unsafe { bytes(snapshot, snapshot_len, "snapshot") }?;
        let opts = if options.is_null() {
            RestoreOptions::new()
        } else {
            // SAFETY: non-NULL, initialised (caller's contract); read by value.
            let o = unsafe { read_struct(options, "options", &[]) }?;
            if o.reserved != [0; 4] {
                return Err(invalid("options->reserved must be zero"));
            }
            let mut opts = RestoreOptions::new()
                .seq_margin(o.seq_margin)
                .elapsed_since_snapshot(Duration::from_nanos(o.elapsed_ns));
            if o.not_below != 0 {
                opts = opts.not_below(o.not_below);
            }
            opts
        };
        let sa = SecurityAssociation::restore(snapshot, &opts, now(now_ns))
            .map_err(|e| snapshot_error(&e))?;
        // SAFETY: `out` checked non-NULL and aligned; writable by contract.
        unsafe { out.write(into_handle::<ipsec_sa>(sa)) };
        Ok(())
    })
}

/// The status of a snapshot error, with its message recorded.
fn snapshot_error(e: &SnapshotError) -> ipsec_status {
    let status = if e.is_invalid_snapshot() {
        ipsec_status::IPSEC_ERR_BAD_SNAPSHOT
    } else {
        ipsec_status::IPSEC_ERR_SNAPSHOT_REFUSED
    };
    fail(status, e.to_string())
}
