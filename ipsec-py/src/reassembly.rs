//! `Reassembler`: IP fragment reassembly (the core's [`ipsec_core::Reassembler`]) for
//! Python code that handles packets itself, and the limits keywords it shares with
//! `Gateway.set_reassembly_limits`.

use crate::convert::{self, Bad};
use crate::errors::Failure;
use crate::sa::{now_arg, packet_arg, stats_dict};
use core::time::Duration;
use ipsec_core::{Reassembler, Reassembly, ReassemblyLimits};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

/// The limits the keywords give, the defaults for those left out (`None`).
pub(crate) fn limits_arg(
    max_bytes: Option<&Bound<'_, PyAny>>,
    max_datagrams: Option<&Bound<'_, PyAny>>,
    max_fragments: Option<&Bound<'_, PyAny>>,
    lifetime: Option<&Bound<'_, PyAny>>,
) -> PyResult<ReassemblyLimits> {
    let count = |obj, field| -> PyResult<Option<usize>> {
        Ok(convert::opt_int::<u64>(obj, field, Bad::Config)?
            .map(|v| usize::try_from(v).unwrap_or(usize::MAX)))
    };
    let d = ReassemblyLimits::DEFAULT;
    Ok(
        d.with_max_bytes(count(max_bytes, "max_bytes")?.unwrap_or(d.max_bytes))
            .with_max_datagrams(count(max_datagrams, "max_datagrams")?.unwrap_or(d.max_datagrams))
            .with_max_fragments(count(max_fragments, "max_fragments")?.unwrap_or(d.max_fragments))
            .with_lifetime(
                convert::opt_seconds(lifetime, "lifetime", Bad::Config)?.unwrap_or(d.lifetime),
            ),
    )
}

/// IP fragment reassembly within hard limits (Python `ipsec.Reassembler`). Not frozen:
/// every call changes it, and PyO3's borrow flag refuses overlapping use (the GIL is
/// never released inside a call).
#[pyclass(module = "ipsec", name = "Reassembler")]
pub(crate) struct PyReassembler {
    inner: Reassembler,
    /// The latest `now` the caller gave; used when a call gives none.
    now: Duration,
}

impl PyReassembler {
    fn time(&mut self, now: Option<Duration>) -> Duration {
        if let Some(n) = now {
            self.now = n;
        }
        self.now
    }
}

#[pymethods]
impl PyReassembler {
    #[new]
    #[pyo3(signature = (*, max_bytes=None, max_datagrams=None, max_fragments=None, lifetime=None, now=None),
           text_signature = "(*, max_bytes=4194304, max_datagrams=1024, max_fragments=64, lifetime=30.0, now=0.0)")]
    fn new(
        max_bytes: Option<&Bound<'_, PyAny>>,
        max_datagrams: Option<&Bound<'_, PyAny>>,
        max_fragments: Option<&Bound<'_, PyAny>>,
        lifetime: Option<&Bound<'_, PyAny>>,
        now: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let limits = limits_arg(max_bytes, max_datagrams, max_fragments, lifetime)?;
        let now = convert::opt_seconds(now, "now", Bad::Config)?.unwrap_or_default();
        Ok(PyReassembler {
            inner: Reassembler::new(limits),
            now,
        })
    }

    /// Takes one IP packet: returns the packet to process (the packet itself when it is
    /// not a fragment, or the whole datagram its fragment completed) or `None` while
    /// the fragment is held. A dropped fragment raises `FragmentError` (`.reason`:
    /// `fragment_overlap`, ...), a packet that is not IP `MalformedPacketError`.
    #[pyo3(signature = (packet, /, *, now=None))]
    fn insert<'py>(
        &mut self,
        py: Python<'py>,
        packet: &Bound<'py, PyAny>,
        now: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let data = packet_arg(packet, "packet")?;
        let now = self.time(now_arg(now)?);
        match self.inner.insert(&data, now).map_err(Failure::from)? {
            Reassembly::Held => Ok(None),
            Reassembly::Complete(d) => Ok(Some(PyBytes::new(py, d))),
            // Not a fragment (or a kind of answer added later): the packet as it is.
            _ => match packet.cast::<PyBytes>() {
                Ok(b) => Ok(Some(b.clone())),
                Err(_) => Ok(Some(PyBytes::new(py, &data))),
            },
        }
    }

    /// Drops the datagrams whose lifetime ended at `now` (default: the last time given),
    /// counted as `fragment_timeout`; returns how many fragments were dropped.
    #[pyo3(signature = (now=None))]
    fn expire(&mut self, now: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
        let now = self.time(now_arg(now)?);
        Ok(self.inner.expire(now))
    }

    /// `packets` and `bytes`: the datagrams completed; one key per drop reason.
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, self.inner.stats())
    }

    /// Bytes charged for the fragments held (each: its length plus 64).
    #[getter]
    fn held_bytes(&self) -> usize {
        self.inner.held_bytes()
    }

    /// Fragments held.
    #[getter]
    fn held_fragments(&self) -> usize {
        self.inner.held_fragments()
    }

    /// Datagrams in progress.
    #[getter]
    fn datagrams(&self) -> usize {
        self.inner.datagrams()
    }

    /// The limits, as keywords of the constructor.
    #[getter]
    fn limits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let l = self.inner.limits();
        let d = PyDict::new(py);
        d.set_item("max_bytes", l.max_bytes)?;
        d.set_item("max_datagrams", l.max_datagrams)?;
        d.set_item("max_fragments", l.max_fragments)?;
        d.set_item("lifetime", l.lifetime.as_secs_f64())?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Reassembler(datagrams={}, held_fragments={}, held_bytes={})",
            self.inner.datagrams(),
            self.inner.held_fragments(),
            self.inner.held_bytes()
        )
    }
}
