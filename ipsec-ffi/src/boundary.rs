//! The panic boundary every entry point runs in, and the thread-local last error.
//!
//! The last error is kept as cheaply as it can be: a packet error is stored as the
//! `Copy` value ipsec-core returned and only formatted when the caller asks for the
//! message, so a flood of bad packets costs no allocation.

use core::cell::RefCell;
use core::ffi::c_char;
use std::panic::{AssertUnwindSafe, catch_unwind};

use ipsec_core::{ConfigError, Error};

use crate::handle::array_mut;
use crate::sa::ipsec_packet;
use crate::status::ipsec_status;

/// The cause of the last failure on this thread.
enum LastError {
    None,
    /// A required pointer argument (named) was NULL or misaligned.
    NullOrMisaligned(&'static str),
    /// A packet descriptor outside its buffer.
    Descriptor {
        offset: usize,
        length: usize,
        capacity: usize,
    },
    /// A packet was dropped by ipsec-core.
    Packet(Error),
    /// Anything else, already formatted.
    Text(String),
}

thread_local! {
    static LAST_ERROR: RefCell<LastError> = const { RefCell::new(LastError::None) };
}

fn set(e: LastError) {
    // `try_with`: during thread teardown the slot may be gone; the status still says it.
    let _ = LAST_ERROR.try_with(|slot| {
        if let Ok(mut slot) = slot.try_borrow_mut() {
            *slot = e;
        }
    });
}

fn message() -> String {
    LAST_ERROR
        .try_with(|slot| match &*slot.borrow() {
            LastError::None => String::new(),
            LastError::NullOrMisaligned(name) => {
                format!("argument `{name}` is NULL or not aligned for its type")
            }
            LastError::Descriptor {
                offset,
                length,
                capacity,
            } => format!(
                "packet descriptor out of bounds: offset {offset} + length {length} exceeds capacity {capacity}"
            ),
            LastError::Packet(e) => format!("{}: {e}", e.drop_reason()),
            LastError::Text(t) => t.clone(),
        })
        .unwrap_or_default()
}

/// Records a NULL (or misaligned) pointer argument: `IPSEC_ERR_INVALID_ARGUMENT`.
pub(crate) fn null_argument(name: &'static str) -> ipsec_status {
    set(LastError::NullOrMisaligned(name));
    ipsec_status::IPSEC_ERR_INVALID_ARGUMENT
}

/// Records an invalid argument with its explanation: `IPSEC_ERR_INVALID_ARGUMENT`.
pub(crate) fn invalid(message: impl Into<String>) -> ipsec_status {
    fail(ipsec_status::IPSEC_ERR_INVALID_ARGUMENT, message)
}

/// Records `message` as the explanation of `status` and returns `status`.
pub(crate) fn fail(status: ipsec_status, message: impl Into<String>) -> ipsec_status {
    set(LastError::Text(message.into()));
    status
}

/// Records a packet descriptor outside its buffer: `IPSEC_ERR_INVALID_ARGUMENT`.
pub(crate) fn bad_descriptor(offset: usize, length: usize, capacity: usize) -> ipsec_status {
    set(LastError::Descriptor {
        offset,
        length,
        capacity,
    });
    ipsec_status::IPSEC_ERR_INVALID_ARGUMENT
}

/// Records a dropped packet and returns its status (no allocation).
#[inline]
pub(crate) fn packet_error(e: Error) -> ipsec_status {
    set(LastError::Packet(e));
    ipsec_status::of_error(&e)
}

/// Puts `label: ` in front of the last error's explanation when it is text (not a NULL
/// argument's), and returns `status`: for errors found before ipsec-core was called,
/// so that they name their object as the core's own messages do (`sa "x": tunnel_src:
/// ...`).
pub(crate) fn in_context(status: ipsec_status, label: &str) -> ipsec_status {
    let _ = LAST_ERROR.try_with(|slot| {
        if let Ok(mut slot) = slot.try_borrow_mut()
            && let LastError::Text(t) = &mut *slot
        {
            *t = format!("{label}: {t}");
        }
    });
    status
}

/// Records a call on a poisoned handle: `IPSEC_ERR_POISONED`.
pub(crate) fn poisoned() -> ipsec_status {
    fail(
        ipsec_status::IPSEC_ERR_POISONED,
        "this handle is unusable: a panic was caught during an earlier call on it \
         (IPSEC_ERR_PANIC); free it and make a new one",
    )
}

/// Records a rejected configuration: `IPSEC_ERR_CONFIG`.
pub(crate) fn config_error(e: &ConfigError) -> ipsec_status {
    fail(ipsec_status::IPSEC_ERR_CONFIG, e.to_string())
}

/// What an entry point returns when a panic was caught.
pub(crate) trait PanicValue {
    /// The value returned after a panic.
    const ON_PANIC: Self;
}

impl PanicValue for ipsec_status {
    const ON_PANIC: Self = ipsec_status::IPSEC_ERR_PANIC;
}

impl PanicValue for usize {
    const ON_PANIC: Self = 0;
}

impl PanicValue for u32 {
    const ON_PANIC: Self = 0;
}

impl PanicValue for u64 {
    const ON_PANIC: Self = 0;
}

impl PanicValue for *const c_char {
    const ON_PANIC: Self = core::ptr::null();
}

impl PanicValue for () {
    const ON_PANIC: Self = ();
}

/// Runs `body`; a panic becomes `Err(())` and the last error says what panicked. A
/// handle borrowed when the panic happened is poisoned (see `handle::Slot`).
#[inline(always)]
fn catch<T>(body: impl FnOnce() -> T) -> Result<T, ()> {
    catch_unwind(AssertUnwindSafe(body)).map_err(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic payload".to_string());
        // Formatting the message could panic again (out of memory): keep it outside
        // the caught region's guarantees by catching once more.
        let _ = catch_unwind(AssertUnwindSafe(|| {
            set(LastError::Text(format!(
                "internal error, panic caught at the C boundary: {what}; the handle \
                 involved is poisoned (IPSEC_ERR_POISONED from now on): free it"
            )));
        }));
    })
}

/// Runs an entry point's body; a panic becomes `T::ON_PANIC` and the last error says
/// what panicked. No panic unwinds into C.
#[inline(always)]
pub(crate) fn boundary<T: PanicValue>(body: impl FnOnce() -> T) -> T {
    catch(body).unwrap_or(T::ON_PANIC)
}

/// How far a burst got: kept outside its panic boundary, so that a burst that panics
/// part-way still reports what it did.
#[derive(Debug, Default)]
pub(crate) struct BurstProgress {
    /// The descriptors were checked and statuses may be written.
    pub(crate) started: bool,
    /// Packets finished (their status written).
    pub(crate) done: usize,
    /// Packets that succeeded.
    pub(crate) ok: usize,
    /// Spare descriptors filled by the finished packets (fragmenting bursts).
    pub(crate) spares_used: usize,
}

/// [`boundary`] for a burst over `count` descriptors at `packets`, whose body keeps
/// `progress` up to date and returns how many packets succeeded. After a panic, the
/// packet being processed gets `IPSEC_ERR_PANIC` and the ones after it (never started:
/// the handle is poisoned) `IPSEC_ERR_POISONED`, with no fragments; `after_panic` may
/// write the call's other results; the packets that succeeded before are counted in
/// the value returned.
///
/// # Safety
///
/// `packets` points to `count` writable descriptors whenever `progress.started` is set.
#[inline(always)]
pub(crate) unsafe fn burst_boundary(
    packets: *mut ipsec_packet,
    count: usize,
    body: impl FnOnce(&mut BurstProgress) -> usize,
    after_panic: impl FnOnce(&BurstProgress),
) -> usize {
    let mut progress = BurstProgress::default();
    match catch(|| body(&mut progress)) {
        Ok(ok) => ok,
        Err(()) => {
            let _ = catch(|| {
                if !progress.started {
                    return;
                }
                // SAFETY: `started` says the body checked the array (caller's
                // contract); the body's borrow of it ended with the unwind.
                if let Ok(packets) = unsafe { array_mut(packets, count, "packets") } {
                    for (i, p) in packets.iter_mut().enumerate().skip(progress.done) {
                        p.status = if i == progress.done {
                            ipsec_status::IPSEC_ERR_PANIC
                        } else {
                            ipsec_status::IPSEC_ERR_POISONED
                        } as u32;
                        p.fragments = 0;
                    }
                }
                after_panic(&progress);
            });
            progress.ok
        }
    }
}

/// [`boundary`] for bodies that return `Result<(), ipsec_status>`.
#[inline(always)]
pub(crate) fn call(body: impl FnOnce() -> Result<(), ipsec_status>) -> ipsec_status {
    boundary(|| match body() {
        Ok(()) => ipsec_status::IPSEC_OK,
        Err(status) => status,
    })
}

/// Bytes needed to copy this thread's last-error message with `ipsec_last_error`,
/// including the terminating NUL (1 when there is no message).
#[unsafe(no_mangle)]
pub extern "C" fn ipsec_last_error_length() -> usize {
    boundary(|| message().len() + 1)
}

/// Copies this thread's last-error message, NUL-terminated, into `buf` (`len` bytes)
/// and stores its length without the NUL in `*out_n`.
///
/// The message explains the last call on this thread that failed (successful calls
/// do not change it); it is empty when no call has failed yet. Returns
/// `IPSEC_ERR_BUFFER_TOO_SMALL` (writing nothing) when `len` is less than
/// `ipsec_last_error_length()`. Neither that nor `IPSEC_ERR_INVALID_ARGUMENT` (NULL
/// `buf` or `out_n`) replaces the message.
///
/// # Safety
///
/// `buf` must point to `len` writable bytes and `out_n` to a writable `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ipsec_last_error(
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> ipsec_status {
    boundary(|| {
        if buf.is_null() || out_n.is_null() || !out_n.is_aligned() {
            return ipsec_status::IPSEC_ERR_INVALID_ARGUMENT;
        }
        let text = message();
        let bytes = text.as_bytes();
        if len <= bytes.len() {
            return ipsec_status::IPSEC_ERR_BUFFER_TOO_SMALL;
        }
        // SAFETY: the caller guarantees `buf` points to `len` writable bytes, and
        // `bytes.len() + 1 <= len`; `out_n` is non-NULL, aligned and writable.
        unsafe {
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), bytes.len());
            buf.add(bytes.len()).write(0);
            out_n.write(bytes.len());
        }
        ipsec_status::IPSEC_OK
    })
}
