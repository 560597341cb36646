//! `ReplayWindow`: the RFC 4303 anti-replay window on its own.

use crate::convert::{self, Bad};
use crate::errors::Failure;
use ipsec_core::ReplayWindow;
use pyo3::prelude::*;

/// An anti-replay window (Python `ipsec.ReplayWindow`). Not frozen: `accept` mutates
/// it, and PyO3's borrow flag refuses overlapping use (the GIL is never released
/// inside a call).
#[pyclass(module = "ipsec", name = "ReplayWindow")]
pub(crate) struct PyReplayWindow {
    window: ReplayWindow,
}

#[pymethods]
impl PyReplayWindow {
    #[new]
    #[pyo3(signature = (size=None, esn=None, *, highest=None),
           text_signature = "(size=64, esn=False, *, highest=0)")]
    fn new(
        size: Option<&Bound<'_, PyAny>>,
        esn: Option<&Bound<'_, PyAny>>,
        highest: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let esn = convert::boolean(esn, "esn", false)?;
        let size: u32 = convert::opt_int(size, "size", Bad::Config)?.unwrap_or(64);
        let highest: u64 = convert::opt_int(highest, "highest", Bad::Config)?.unwrap_or(0);
        let window = ReplayWindow::with_highest(size, esn, highest).map_err(Failure::from)?;
        Ok(PyReplayWindow { window })
    }

    /// Records `seq` (32 bits, as on the wire) if it is fresh: True; False if it was
    /// replayed or is too old (the window is unchanged).
    fn accept(&mut self, seq: &Bound<'_, PyAny>) -> PyResult<bool> {
        let seq: u32 = convert::int(seq, "seq", Bad::Value)?;
        Ok(self.window.accept(seq))
    }

    /// The answer `accept` would give, without recording anything.
    fn check(&self, seq: &Bound<'_, PyAny>) -> PyResult<bool> {
        let seq: u32 = convert::int(seq, "seq", Bad::Value)?;
        Ok(self.window.check(seq).is_ok())
    }

    /// The highest sequence number accepted so far (64-bit with ESN).
    #[getter]
    fn highest(&self) -> u64 {
        self.window.highest()
    }

    /// The window size in packets (0: replay protection off).
    #[getter]
    fn size(&self) -> u32 {
        self.window.size()
    }

    /// True with extended sequence numbers.
    #[getter]
    fn esn(&self) -> bool {
        self.window.esn()
    }

    fn __repr__(&self) -> String {
        format!(
            "ReplayWindow(size={}, esn={}, highest={})",
            self.window.size(),
            if self.window.esn() { "True" } else { "False" },
            self.window.highest()
        )
    }
}
