//! # ipsec-ffi: the C ABI of ipsec-core
//!
//! `libipsec.a` / `libipsec.so` and `include/ipsec.h` (generated from this crate by
//! cbindgen). The crate holds no IPsec logic: every entry point checks its arguments,
//! converts them, calls [`ipsec_core`] and converts the answer back.
//!
//! ## Conventions (as rustls-ffi and DPDK)
//!
//! * Opaque handles (`ipsec_sa`, `ipsec_spd`, `ipsec_gateway`, `ipsec_replay_window`,
//!   `ipsec_reassembler`, `ipsec_lint`, `ipsec_firewall`, `ipsec_shared_sa`, `ipsec_sa_lane`,
//!   `ipsec_policy_edit`, `ipsec_compiled_policies`) are created by a `*_new` / `*_from_*` / `*_load`
//!   call (or `ipsec_gateway_edit_policies`, `ipsec_policy_edit_compile`) and released by
//!   the matching `*_free`, which accepts NULL. `ipsec_policy_edit_compile` and
//!   `ipsec_gateway_commit_policies` consume their handle argument, whatever they return.
//! * Every fallible call returns an [`ipsec_status`] and writes its results through
//!   out-pointers, **only on success**. Arguments come in the order: object, inputs,
//!   outputs. A `const` handle pointer means the call does not change the object.
//! * A buffer pointer is followed by its `size_t` length. Strings are either a pointer
//!   and a length (TOML text) or NUL-terminated (names, paths, addresses); either way
//!   they must be UTF-8.
//! * NULL where a pointer is required, a length that cannot be a buffer's, a packet
//!   descriptor outside its buffer, an integer that is not a value of its enum, or
//!   non-zero reserved fields give `IPSEC_ERR_INVALID_ARGUMENT`, never a crash.
//!   Enum-typed inputs are taken as `uint32_t` and checked, never reinterpreted.
//! * No Rust panic crosses the boundary: each entry point runs inside one
//!   `catch_unwind` (`boundary`) and a panic becomes `IPSEC_ERR_PANIC`. The handle the
//!   call was using is then poisoned (it may be half-changed): every later call on it
//!   answers `IPSEC_ERR_POISONED` (calls that return a count answer 0), and only
//!   `*_free` still works. A burst that panics part-way reports the packets it finished.
//! * After a failed call, `ipsec_last_error` (thread-local, like `errno`) explains it.
//!   Successful calls leave it alone.
//! * Packet errors are numbered `300 + ` the `DropReason` index, so a status names the
//!   counter of `ipsec_sa_stats` the drop was counted under.
//! * Time is the caller's: `now_ns`, nanoseconds since any epoch the caller likes (the
//!   same epoch for every call on one object), as a `uint64_t`.
//!
//! ## Thread safety
//!
//! An `ipsec_sa`, `ipsec_gateway`, `ipsec_replay_window` or `ipsec_reassembler` is used
//! by one thread at a time (DPDK: "only one thread processes a given SA"); it may move between threads.
//! For a gateway this holds for its control calls (`ipsec_gateway_add_sa` ...
//! `ipsec_gateway_remove_policy`) as for its packet calls: a key manager on another
//! thread takes the same lock as the packet path, or hands its changes to the thread
//! that owns the gateway, which applies them between packets.
//! `ipsec_spd`, `ipsec_lint` and `ipsec_firewall` are immutable: any number of threads
//! may use one at once. An `ipsec_shared_sa` may be read by any number of threads at
//! once; each of its `ipsec_sa_lane`s is used by one thread at a time (one lane per
//! thread), and the shared handle and the lanes may be freed in any order (they share
//! reference-counted state). An `ipsec_policy_edit` or `ipsec_compiled_policies` is used
//! by one thread at a time, any thread: it needs neither the gateway nor its lock; only
//! taking the edit and committing touch the gateway. The last-error message is per
//! thread.
//!
//! ## Unsafe code
//!
//! This crate is the one place where the workspace allows `unsafe`: turning C pointers
//! into references. Every `unsafe` block states why it is sound; the pointer
//! conversions live in the `handle` module and are checked by the compiler per handle type.
#![allow(unsafe_code)]
// The C names (`ipsec_sa`, `IPSEC_ERR_CONFIG`) are the Rust names: what cbindgen sees
// is what a C programmer reads.
#![allow(non_camel_case_types)]
#![deny(missing_docs)]

mod boundary;
pub mod gateway;
mod handle;
pub mod path_mtu;
pub mod reassembly;
pub mod replay;
pub mod sa;
pub mod shared;
pub mod snapshot;
pub mod spd;
pub mod status;

// Last: cbindgen writes the header in module order, and the control calls use the types
// of the modules above.
pub mod control;
pub mod policy_edit;

pub use boundary::{ipsec_last_error, ipsec_last_error_length};
pub use control::*;
pub use gateway::*;
pub use path_mtu::*;
pub use policy_edit::*;
pub use reassembly::*;
pub use replay::*;
pub use sa::*;
pub use shared::*;
pub use snapshot::*;
pub use spd::*;
pub use status::{ipsec_status, ipsec_status_str, ipsec_version};

#[cfg(any(test, feature = "test-hooks"))]
pub mod test_hooks;
/// Without the `test-hooks` feature the hooks compile to nothing.
#[cfg(not(any(test, feature = "test-hooks")))]
mod test_hooks {
    /// No hook: nothing happens.
    #[inline(always)]
    pub(crate) fn packet_step() {}

    /// No hook: no limit.
    #[inline(always)]
    pub(crate) fn packets_before_panic() -> usize {
        usize::MAX
    }
}

#[cfg(test)]
mod tests;
