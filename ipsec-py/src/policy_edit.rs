//! `PolicyEdit` and `CompiledPolicies`: a batch of policy changes compiled away from the
//! gateway (the core's [`ipsec_core::control::PolicyEdit`]).
//!
//! `gw.edit_policies()` takes the gateway's policies (under the gateway's lock, in
//! O(changes pending): they are shared, and copied on the edit's first change);
//! `install` / `replace` / `remove` change the edit's copy, checked as the gateway's own calls
//! are (refused changes raise and change nothing); `compile()` builds the classifier with
//! the GIL released and without the gateway (no gateway lock is taken: packets keep
//! flowing through the gateway on other threads); `gw.commit_policies(compiled)` swaps it
//! in (O(1), under the gateway's lock; the policies it replaces are freed after the
//! lock is released, with the GIL released).
//!
//! `compile()` compiles a copy of the edit: the edit stays usable (change it more and
//! compile again) until one of its compiles is committed, or the gateway's policies
//! change otherwise: from then on its compiles are stale (the core's generation check;
//! take a new edit). A `CompiledPolicies` is used up by `commit_policies`, whether the
//! commit succeeds or is refused (the core takes it by value; a refused one is stale for
//! good); another commit of it raises `ValueError`. Both objects remember their gateway,
//! and committing to another gateway raises `ValueError` (the core only compares
//! generation counters, which two gateways can share).

use crate::convert;
use crate::errors::Failure;
use crate::gateway::PyGateway;
use crate::sa::{lock_releasing_gil, poisoned};
use crate::spd::str_repr;
use ipsec_core::control::{CompiledPolicies, PolicyEdit};
use pyo3::prelude::*;
use std::sync::Mutex;

/// A batch of policy changes (Python `ipsec.PolicyEdit`, from `Gateway.edit_policies`).
#[pyclass(module = "ipsec", name = "PolicyEdit", frozen)]
pub(crate) struct PyPolicyEdit {
    edit: Mutex<PolicyEdit>,
    gateway: Py<PyGateway>,
}

/// Policies compiled from a `PolicyEdit` for `Gateway.commit_policies` (Python
/// `ipsec.CompiledPolicies`).
#[pyclass(module = "ipsec", name = "CompiledPolicies", frozen)]
pub(crate) struct PyCompiledPolicies {
    /// `None` once used by `commit_policies`.
    compiled: Mutex<Option<CompiledPolicies>>,
    gateway: Py<PyGateway>,
    names: Vec<String>,
}

impl PyPolicyEdit {
    pub(crate) fn new(edit: PolicyEdit, gateway: Py<PyGateway>) -> Self {
        PyPolicyEdit {
            edit: Mutex::new(edit),
            gateway,
        }
    }

    fn change(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut PolicyEdit) -> Result<(), ipsec_core::ControlError>,
    ) -> PyResult<()> {
        let result = f(&mut *lock_releasing_gil(py, &self.edit)?);
        result.map_err(|e| Failure::from(e).into_exception(py))
    }
}

impl PyCompiledPolicies {
    /// Takes the compiled policies out for a commit to `gateway`: `ValueError` when they
    /// belong to another gateway or were used already.
    pub(crate) fn take_for(
        &self,
        py: Python<'_>,
        gateway: &Bound<'_, PyGateway>,
    ) -> PyResult<CompiledPolicies> {
        if !self.gateway.bind(py).is(gateway) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "compiled: these policies were edited from another gateway's \
                 (take the edit from this gateway: edit_policies)",
            ));
        }
        let taken = lock_releasing_gil(py, &self.compiled)?.take();
        taken.ok_or_else(|| {
            pyo3::exceptions::PyValueError::new_err(
                "compiled: already used by commit_policies (a CompiledPolicies is \
                 committed at most once; edit and compile again)",
            )
        })
    }
}

#[pymethods]
impl PyPolicyEdit {
    /// `Gateway.install_policy` on the edit: the policy `text` before the policy
    /// `before`, or last. Raises as `install_policy`; the edit is unchanged then.
    #[pyo3(signature = (text, *, before=None))]
    fn install(
        &self,
        py: Python<'_>,
        text: &Bound<'_, PyAny>,
        before: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let text = convert::secret_text(text, "text")?;
        let before = match before.filter(|b| !b.is_none()) {
            Some(b) => Some(convert::text(b, "before")?),
            None => None,
        };
        self.change(py, |e| e.install(&text, before.as_deref()))
    }

    /// `Gateway.replace_policy` on the edit.
    fn replace(&self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<()> {
        let text = convert::secret_text(text, "text")?;
        self.change(py, |e| e.replace(&text))
    }

    /// `Gateway.remove_policy` on the edit.
    fn remove(&self, py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<()> {
        let name = convert::text(name, "name")?;
        self.change(py, |e| e.remove(&name))
    }

    /// The names of the policies as edited so far, in order.
    #[getter]
    fn policies(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let edit = lock_releasing_gil(py, &self.edit)?;
        Ok(edit
            .policies()
            .iter()
            .map(|p| p.name().to_owned())
            .collect())
    }

    /// Compiles the policies as edited so far (the expensive step) with the GIL
    /// released and no gateway lock taken; the edit stays usable (until the gateway's
    /// policies change: then its compiles are stale).
    fn compile(&self, py: Python<'_>) -> PyResult<PyCompiledPolicies> {
        let compiled = py.detach(|| {
            let edit = self.edit.lock().map_err(|_| ())?.clone();
            let names: Vec<String> = edit
                .policies()
                .iter()
                .map(|p| p.name().to_owned())
                .collect();
            Ok((edit.compile(), names))
        });
        let (compiled, names) = compiled.map_err(|()| poisoned())?;
        Ok(PyCompiledPolicies {
            compiled: Mutex::new(Some(compiled)),
            gateway: self.gateway.clone_ref(py),
            names,
        })
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let names = self.policies(py)?;
        Ok(format!(
            "PolicyEdit(policies=[{}])",
            names
                .iter()
                .map(|n| str_repr(n))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

#[pymethods]
impl PyCompiledPolicies {
    /// The names of the compiled policies, in order.
    #[getter]
    fn policies(&self) -> Vec<String> {
        self.names.clone()
    }

    /// True once `commit_policies` used them (committed, or refused).
    #[getter]
    fn used(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(lock_releasing_gil(py, &self.compiled)?.is_none())
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "CompiledPolicies(policies={}, used={})",
            self.names.len(),
            if self.used(py)? { "True" } else { "False" }
        ))
    }
}
