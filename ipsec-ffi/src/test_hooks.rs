//! Hooks for tests only: compiled with `cfg(test)` or the `test-hooks` feature, which
//! only the tests enable (`scripts/test-ffi.sh` builds a separate library with it for
//! the C tests); never part of a release library, and not in `include/ipsec.h`.
//!
//! The library has no known way to panic; these hooks make one, so that the panic
//! boundary, handle poisoning and the report of a burst that panics part-way can be
//! tested from Rust and from C.

use core::cell::Cell;

thread_local! {
    /// Packet operations left before the deliberate panic; 0: none planned.
    static PANIC_COUNTDOWN: Cell<u64> = const { Cell::new(0) };
}

/// Makes the `n`th SA packet operation on this thread from now on (1: the next one)
/// panic inside the library, after its descriptor was checked; 0 cancels. Packet
/// operations: each packet of `ipsec_sa_encrypt` / `_decrypt`, of their bursts and of
/// `ipsec_sa_encrypt_burst_fragmenting`.
#[unsafe(no_mangle)]
pub extern "C" fn ipsec_test_panic_after(n: u64) {
    PANIC_COUNTDOWN.with(|c| c.set(n));
}

/// Called before each SA packet operation: panics when the countdown ends here.
pub(crate) fn packet_step() {
    let hit = PANIC_COUNTDOWN.with(|c| match c.get() {
        0 => false,
        1 => {
            c.set(0);
            true
        }
        n => {
            c.set(n - 1);
            false
        }
    });
    if hit {
        panic!("deliberate panic (test hook ipsec_test_panic_after)");
    }
}

/// How many packet operations on this thread will run before the deliberate panic
/// (`usize::MAX` when none is planned): a burst ends a group of packets there, so that
/// the packets before the panicking one report their results as one at a time would.
pub(crate) fn packets_before_panic() -> usize {
    PANIC_COUNTDOWN.with(|c| match c.get() {
        0 => usize::MAX,
        n => usize::try_from(n - 1).unwrap_or(usize::MAX),
    })
}
