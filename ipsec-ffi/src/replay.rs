//! The anti-replay window on its own (RFC 4303 §3.4.3 with ESN inference), for callers
//! that do their own ESP or want to size windows.

use ipsec_core::{Error, ReplayWindow};

use crate::boundary::{boundary, call, config_error, packet_error};
use crate::handle::{Handle, borrow, borrow_mut, free_handle, into_handle, out_ptr};
use crate::status::ipsec_status;

/// An anti-replay window, exactly `size` packets wide.
///
/// Thread safety: one thread at a time (`ipsec_replay_window_accept` changes it); it
/// may move between threads.
pub struct ipsec_replay_window {
    _private: [u8; 0],
}

impl Handle for ipsec_replay_window {
    type Inner = ReplayWindow;
}

/// Creates a window `size` packets wide (0: replay protection off, or 32..=16777216),
/// inferring 64-bit sequence numbers when `esn`, and stores it in `*out`.
/// `IPSEC_ERR_CONFIG` for any other size. Free it with `ipsec_replay_window_free`.
///
/// # Safety
///
/// `out` points to a writable `ipsec_replay_window *`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_replay_window_new(
    size: u32,
    esn: bool,
    out: *mut *mut ipsec_replay_window,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        let w = ReplayWindow::new(size, esn).map_err(|e| config_error(&e))?;
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(into_handle::<ipsec_replay_window>(w)) };
        Ok(())
    })
}

/// Frees a window. NULL is ignored.
///
/// # Safety
///
/// `window` is NULL or from `ipsec_replay_window_new`, not freed before, not used after.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_replay_window_free(window: *mut ipsec_replay_window) {
    // SAFETY: caller's contract.
    boundary(|| unsafe { free_handle(window) })
}

/// Would the packet with wire sequence number `seq` be accepted? `IPSEC_OK` if fresh,
/// `IPSEC_ERR_REPLAY` if already recorded, `IPSEC_ERR_TOO_OLD` if below the window (or
/// 0, which is never valid). Records nothing.
///
/// # Safety
///
/// `window` is a live window.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_replay_window_check(
    window: *const ipsec_replay_window,
    seq: u32,
) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let w = unsafe { borrow(window, "window") }?;
        w.check(seq).map(drop).map_err(packet_error)
    })
}

/// Checks and records the wire sequence number `seq` in one step: `IPSEC_OK` if it was
/// fresh (and is now recorded), else `IPSEC_ERR_REPLAY` or `IPSEC_ERR_TOO_OLD` as
/// `ipsec_replay_window_check`, recording nothing.
///
/// # Safety
///
/// `window` is a live window used by no other thread during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_replay_window_accept(
    window: *mut ipsec_replay_window,
    seq: u32,
) -> ipsec_status {
    call(|| {
        // SAFETY: caller's contract.
        let mut w = unsafe { borrow_mut(window, "window") }?;
        // The verdict `accept` reaches, for the status; then `accept` records it (or,
        // for a too-old packet, its distance in the late-packet histogram).
        let verdict: Result<u64, Error> = w.check(seq);
        let fresh = w.accept(seq);
        match verdict {
            Ok(_) if fresh => Ok(()),
            Ok(s) => Err(packet_error(Error::Replayed { seq: s })),
            Err(e) => Err(packet_error(e)),
        }
    })
}

/// The highest sequence number accepted so far (64-bit with ESN; 0 before the first).
///
/// # Safety
///
/// `window` is a live window; `out` points to a writable `uint64_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_replay_window_highest(
    window: *const ipsec_replay_window,
    out: *mut u64,
) -> ipsec_status {
    call(|| {
        let out = out_ptr(out, "out")?;
        // SAFETY: caller's contract.
        let w = unsafe { borrow(window, "window") }?;
        // SAFETY: checked non-NULL and aligned; writable by contract.
        unsafe { out.write(w.highest()) };
        Ok(())
    })
}
