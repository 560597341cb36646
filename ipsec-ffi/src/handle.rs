//! Pointer conversions: opaque handles to their Rust objects, C buffers and strings to
//! slices. Every conversion checks what can be checked (NULL, alignment, a length that
//! can be an object's) and reports `IPSEC_ERR_INVALID_ARGUMENT` otherwise.
//!
//! Each opaque C type names its Rust object through [`Handle`], so a cast from an
//! `ipsec_sa *` can only ever produce a `SecurityAssociation` (rustls-ffi's pattern).

use core::ffi::{CStr, c_char};
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

use crate::boundary::{invalid, null_argument, poisoned};
use crate::status::ipsec_status;

/// An opaque C type and the Rust object behind it (owned through a `Box`).
pub(crate) trait Handle {
    /// The Rust object a pointer to this type points to.
    type Inner;
}

/// What a handle points to: its object, and whether a panic was caught while a call
/// was using it (then the object may be half-changed, and every later call on the
/// handle answers `IPSEC_ERR_POISONED`, as a poisoned `std::sync::Mutex` does).
pub(crate) struct Slot<T> {
    /// Atomic: the immutable handles (`ipsec_spd` ...) are shared between threads.
    poisoned: AtomicBool,
    value: T,
}

impl<T> Slot<T> {
    fn check(&self) -> Result<(), ipsec_status> {
        if self.poisoned.load(Ordering::Acquire) {
            Err(poisoned())
        } else {
            Ok(())
        }
    }

    /// Marks the slot poisoned when called while a panic unwinds.
    fn poison_if_panicking(&self) {
        if std::thread::panicking() {
            self.poisoned.store(true, Ordering::Release);
        }
    }
}

/// The object behind a `const` handle, for the length of one call. A panic while it is
/// held poisons the handle.
pub(crate) struct Borrowed<'a, T> {
    slot: &'a Slot<T>,
}

impl<T> Deref for Borrowed<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.slot.value
    }
}

impl<T> Drop for Borrowed<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.slot.poison_if_panicking();
    }
}

/// The object behind a mutable handle, for the length of one call. A panic while it is
/// held poisons the handle.
pub(crate) struct BorrowedMut<'a, T> {
    slot: &'a mut Slot<T>,
}

impl<T> Deref for BorrowedMut<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.slot.value
    }
}

impl<T> DerefMut for BorrowedMut<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        &mut self.slot.value
    }
}

impl<T> Drop for BorrowedMut<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.slot.poison_if_panicking();
    }
}

/// Moves `value` to the heap and returns it as an opaque handle.
pub(crate) fn into_handle<H: Handle>(value: H::Inner) -> *mut H {
    Box::into_raw(Box::new(Slot {
        poisoned: AtomicBool::new(false),
        value,
    }))
    .cast()
}

/// The object behind a `const` handle: `IPSEC_ERR_INVALID_ARGUMENT` for NULL,
/// `IPSEC_ERR_POISONED` after a panic in an earlier call on it.
///
/// # Safety
///
/// `ptr` is NULL or was returned by [`into_handle`] for `H`, has not been freed, and is
/// not being changed by another thread for `'a`.
#[inline]
pub(crate) unsafe fn borrow<'a, H: Handle>(
    ptr: *const H,
    name: &'static str,
) -> Result<Borrowed<'a, H::Inner>, ipsec_status> {
    // SAFETY: by the caller's contract a non-NULL `ptr` points to a live
    // `Slot<H::Inner>` (made by `into_handle`).
    let slot =
        unsafe { ptr.cast::<Slot<H::Inner>>().as_ref() }.ok_or_else(|| null_argument(name))?;
    slot.check()?;
    Ok(Borrowed { slot })
}

/// The object behind a mutable handle: as [`borrow`].
///
/// # Safety
///
/// As [`borrow`], and no other reference to the object exists for `'a` (the handle is
/// used by one thread at a time).
#[inline]
pub(crate) unsafe fn borrow_mut<'a, H: Handle>(
    ptr: *mut H,
    name: &'static str,
) -> Result<BorrowedMut<'a, H::Inner>, ipsec_status> {
    // SAFETY: by the caller's contract a non-NULL `ptr` points to a live
    // `Slot<H::Inner>` that nothing else references.
    let slot =
        unsafe { ptr.cast::<Slot<H::Inner>>().as_mut() }.ok_or_else(|| null_argument(name))?;
    slot.check()?;
    Ok(BorrowedMut { slot })
}

/// Drops the object behind a handle (poisoned or not); NULL is ignored.
///
/// # Safety
///
/// `ptr` is NULL or was returned by [`into_handle`] for `H` and not freed before; it is
/// not used afterwards.
pub(crate) unsafe fn free_handle<H: Handle>(ptr: *mut H) {
    if !ptr.is_null() {
        // SAFETY: `ptr` came from `Box::into_raw` of a `Slot<H::Inner>` (caller's
        // contract) and is given back exactly once.
        drop(unsafe { Box::from_raw(ptr.cast::<Slot<H::Inner>>()) });
    }
}

/// Takes the object behind a handle back from C (a call that consumes its argument):
/// the handle is freed whatever happens next. `IPSEC_ERR_INVALID_ARGUMENT` for NULL,
/// `IPSEC_ERR_POISONED` (the object dropped) after a panic in an earlier call on it.
///
/// # Safety
///
/// As [`free_handle`].
pub(crate) unsafe fn take_handle<H: Handle>(
    ptr: *mut H,
    name: &'static str,
) -> Result<H::Inner, ipsec_status> {
    if ptr.is_null() {
        return Err(null_argument(name));
    }
    // SAFETY: `ptr` came from `Box::into_raw` of a `Slot<H::Inner>` (caller's contract)
    // and is given back exactly once.
    let slot = unsafe { Box::from_raw(ptr.cast::<Slot<H::Inner>>()) };
    slot.check()?;
    Ok(slot.value)
}

/// Checks an out-pointer (non-NULL and aligned) before any work is done, so that the
/// result is written only on success.
#[inline]
pub(crate) fn out_ptr<T>(ptr: *mut T, name: &'static str) -> Result<*mut T, ipsec_status> {
    if ptr.is_null() || !ptr.is_aligned() {
        Err(null_argument(name))
    } else {
        Ok(ptr)
    }
}

/// A read-only C buffer; NULL is allowed when `len` is 0.
///
/// # Safety
///
/// A non-NULL `ptr` points to `len` readable bytes that stay unchanged for `'a`.
pub(crate) unsafe fn bytes<'a>(
    ptr: *const u8,
    len: usize,
    name: &'static str,
) -> Result<&'a [u8], ipsec_status> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(null_argument(name));
    }
    if len > isize::MAX as usize {
        return Err(invalid(format!(
            "`{name}` length {len} exceeds the largest object size"
        )));
    }
    // SAFETY: non-NULL, `len` readable bytes (caller's contract), `len <= isize::MAX`.
    Ok(unsafe { core::slice::from_raw_parts(ptr, len) })
}

/// A writable C buffer (the packet buffer); never NULL, even when `len` is 0.
///
/// # Safety
///
/// `ptr` points to `len` writable bytes that nothing else accesses for `'a`.
#[inline]
pub(crate) unsafe fn bytes_mut<'a>(
    ptr: *mut u8,
    len: usize,
    name: &'static str,
) -> Result<&'a mut [u8], ipsec_status> {
    if ptr.is_null() {
        return Err(null_argument(name));
    }
    if len > isize::MAX as usize {
        return Err(invalid(format!(
            "`{name}` capacity {len} exceeds the largest object size"
        )));
    }
    // SAFETY: non-NULL, `len` writable bytes not otherwise accessed (caller's
    // contract), `len <= isize::MAX`.
    Ok(unsafe { core::slice::from_raw_parts_mut(ptr, len) })
}

/// An array of C structs; NULL is allowed when `len` is 0.
///
/// # Safety
///
/// A non-NULL `ptr` points to `len` initialised, writable `T` that nothing else
/// accesses for `'a`.
#[inline]
pub(crate) unsafe fn array_mut<'a, T>(
    ptr: *mut T,
    len: usize,
    name: &'static str,
) -> Result<&'a mut [T], ipsec_status> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() || !ptr.is_aligned() {
        return Err(null_argument(name));
    }
    if len > isize::MAX as usize / size_of::<T>().max(1) {
        return Err(invalid(format!("`{name}` count {len} is too large")));
    }
    // SAFETY: non-NULL, aligned, `len` valid `T` not otherwise accessed (caller's
    // contract), total size within `isize::MAX`.
    Ok(unsafe { core::slice::from_raw_parts_mut(ptr, len) })
}

/// UTF-8 text given as pointer and length.
///
/// # Safety
///
/// As [`bytes`].
pub(crate) unsafe fn text<'a>(
    ptr: *const c_char,
    len: usize,
    name: &'static str,
) -> Result<&'a str, ipsec_status> {
    // SAFETY: forwarded caller's contract.
    let b = unsafe { bytes(ptr.cast::<u8>(), len, name) }?;
    core::str::from_utf8(b).map_err(|e| invalid(format!("`{name}` is not UTF-8: {e}")))
}

/// A NUL-terminated UTF-8 string.
///
/// # Safety
///
/// A non-NULL `ptr` points to a NUL-terminated string that stays unchanged for `'a`.
pub(crate) unsafe fn c_str<'a>(
    ptr: *const c_char,
    name: &'static str,
) -> Result<&'a str, ipsec_status> {
    if ptr.is_null() {
        return Err(null_argument(name));
    }
    // SAFETY: non-NULL and NUL-terminated (caller's contract).
    let s = unsafe { CStr::from_ptr(ptr) };
    s.to_str()
        .map_err(|e| invalid(format!("`{name}` is not UTF-8: {e}")))
}

/// An owned C string of `s` for results handed to C: an interior NUL (possible in TOML
/// strings) is written as `\0` so the string is never cut short.
pub(crate) fn c_string(s: &str) -> std::ffi::CString {
    std::ffi::CString::new(s.replace('\0', "\\0")).unwrap_or_default()
}

/// Reads a C struct by value after checking that its `bool` fields (at the given
/// offsets) hold 0 or 1: a C caller may have left another byte there (a `memset`, a
/// struct filled from the wire), which is refused rather than read as a Rust `bool`.
///
/// # Safety
///
/// A non-NULL `ptr` points to a readable, initialised `T`.
pub(crate) unsafe fn read_struct<T>(
    ptr: *const T,
    name: &'static str,
    bools: &[(usize, &'static str)],
) -> Result<T, ipsec_status> {
    if ptr.is_null() || !ptr.is_aligned() {
        return Err(null_argument(name));
    }
    for &(offset, field) in bools {
        debug_assert!(offset < size_of::<T>());
        // SAFETY: `offset` is a field offset inside the readable `T` at `ptr`.
        let byte = unsafe { ptr.cast::<u8>().add(offset).read() };
        if byte > 1 {
            return Err(invalid(format!(
                "{name}->{field} is {byte}: a bool must be 0 (false) or 1 (true)"
            )));
        }
    }
    // SAFETY: non-NULL, aligned, initialised (caller's contract), and every `bool`
    // field was just checked to hold a valid value.
    Ok(unsafe { ptr.read() })
}
