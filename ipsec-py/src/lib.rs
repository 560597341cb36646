//! # ipsec-py: the `ipsec` Python package
//!
//! PyO3 bindings of [`ipsec_core`], built with maturin as the extension module
//! `ipsec._ipsec` of the mixed Python/Rust package `ipsec` (see `python/ipsec/` for the
//! Python side, the `.pyi` stubs and `README.md` for the API tour).
//!
//! The layer holds no packet or policy logic: every call converts its arguments,
//! delegates to `ipsec-core`, and converts the answer. Errors become Python exceptions
//! in one place (`errors`); the GIL and threading rules are in the `sa` module (the
//! `gateway` module, the SPD and its SAs together, and the `shared` module, one SA on
//! several threads, follow them).
//!
//! Unsafe code: one audited block in `sa` (a detached batch writes into the buffers of
//! `bytes` objects it created and has not published yet), allowed item by item; and,
//! in the unit tests only, the checking allocator of `freed_memory_tests`.

use pyo3::prelude::*;

mod batch;
mod convert;
mod errors;
mod gateway;
mod policy_edit;
mod reassembly;
mod replay;
mod sa;
mod shared;
mod spd;

#[cfg(test)]
mod freed_memory_tests;

/// The extension module `ipsec._ipsec`; the package `ipsec` re-exports it.
#[pymodule]
fn _ipsec(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    m.add_class::<sa::PySecurityAssociation>()?;
    m.add_class::<batch::PyPacketBatch>()?;
    m.add_class::<sa::PyLifetime>()?;
    m.add_class::<sa::PySaEvent>()?;
    m.add_class::<replay::PyReplayWindow>()?;
    m.add_class::<reassembly::PyReassembler>()?;
    m.add_class::<gateway::PyGateway>()?;
    m.add_class::<gateway::PyGatewayVerdict>()?;
    m.add_class::<gateway::PyGatewaySa>()?;
    m.add_class::<policy_edit::PyPolicyEdit>()?;
    m.add_class::<policy_edit::PyCompiledPolicies>()?;
    m.add_class::<shared::PySharedSa>()?;
    m.add_class::<shared::PySaLane>()?;
    m.add_class::<spd::PySpd>()?;
    m.add_class::<spd::PyDecision>()?;
    m.add_class::<spd::PyFinding>()?;
    m.add_class::<spd::PyOpening>()?;
    m.add_class::<spd::PyFlow>()?;
    m.add_class::<spd::PyCaseOutcome>()?;
    m.add_class::<spd::PyCaseReport>()?;
    m.add_function(wrap_pyfunction!(sa::sas_from_toml, m)?)?;
    m.add_function(wrap_pyfunction!(sa::load_sas, m)?)?;
    m.add_function(wrap_pyfunction!(sa::esp_spi, m)?)?;
    m.add_function(wrap_pyfunction!(sa::too_big_reply, m)?)?;
    m.add_function(wrap_pyfunction!(spd::py_lint_toml, m)?)?;
    Ok(())
}
