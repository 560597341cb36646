//! `Gateway` (the core's [`ipsec_core::Gateway`]: an SPD and the SAs it names, doing the
//! whole data path) and its answer, `GatewayVerdict`.
//!
//! # Threads and the GIL
//!
//! The core gateway lives behind a [`Mutex`], with the discipline of the SA
//! ([`crate::sa`]): a thread holding the GIL that finds the mutex taken waits for it with
//! the GIL released ([`lock_releasing_gil`]), and nothing under the lock creates Python
//! objects other than `bytes`.
//!
//! # What is an exception and what is a verdict
//!
//! The policy's answers are verdicts: `"protect"` (encrypted, or decrypted and checked
//! against the SA's policies), `"bypass"` and `"discard"` (a DISCARD policy, or no policy,
//! as the core counts it under `policy_discard`). A packet the gateway must refuse for any
//! other reason raises the exception of the core's error: `PolicyMismatchError` for an
//! inner packet outside its SA's selectors (RFC 4301 §5.2, counted on the SA) and for
//! cleartext that a PROTECT policy covers (counted on the gateway), `AuthenticationError`,
//! `ReplayError`, `UnknownSpiError`, `MalformedPacketError`, ...

use crate::convert;
use crate::errors::{Failure, IpsecError};
use crate::sa::{PySaEvent, event_of, lock_releasing_gil, now_arg, packet_arg, stats_dict};
use crate::spd::{PySpd, read_file, str_repr};
use core::time::Duration;
use ipsec_core::gateway::{Inbound, Outbound};
use ipsec_core::{Direction, Error, Flow, Gateway, PacketBuf, Spd};
use pyo3::exceptions::{PyKeyError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use std::sync::Mutex;

/// What the mutex protects: the core gateway, the caller's latest time, a scratch
/// buffer the packets are processed in.
struct State {
    gateway: Gateway,
    /// The latest `now` the caller gave (creation time at first); used when a call
    /// gives none. The bindings never read a clock.
    now: Duration,
    scratch: Vec<u8>,
}

impl State {
    /// The time to use for a call: the one given (remembered), or the last one.
    fn time(&mut self, now: Option<Duration>) -> Duration {
        if let Some(n) = now {
            self.now = n;
        }
        self.now
    }
}

/// What a gateway did with a packet (Python `ipsec.GatewayVerdict`).
#[pyclass(module = "ipsec", name = "GatewayVerdict", frozen)]
pub(crate) struct PyGatewayVerdict {
    /// `"protect"`, `"bypass"` or `"discard"`.
    #[pyo3(get)]
    action: &'static str,
    /// The policy that decided (see the `.pyi` stub), or `None`.
    #[pyo3(get)]
    policy: Option<String>,
    /// For `"protect"`: the SA that encrypted (outbound) or decrypted (inbound) it.
    #[pyo3(get)]
    sa: Option<String>,
    /// The packet to pass on; `None` for `"discard"`.
    #[pyo3(get)]
    packet: Option<Py<PyBytes>>,
}

impl PyGatewayVerdict {
    fn discard(policy: Option<String>) -> Self {
        PyGatewayVerdict {
            action: "discard",
            policy,
            sa: None,
            packet: None,
        }
    }
}

#[pymethods]
impl PyGatewayVerdict {
    fn __repr__(&self, py: Python<'_>) -> String {
        let opt = |v: &Option<String>| v.as_deref().map_or_else(|| "None".into(), str_repr);
        let packet = self.packet.as_ref().map_or_else(
            || "None".to_owned(),
            |p| format!("<{} bytes>", p.bind(py).as_bytes().len()),
        );
        format!(
            "GatewayVerdict(action='{}', policy={}, sa={}, packet={packet})",
            self.action,
            opt(&self.policy),
            opt(&self.sa),
        )
    }
}

/// The name of the policy the SPD's lookup of `pkt` matches, if any.
fn first_match(spd: &Spd, direction: Direction, pkt: &[u8]) -> Option<String> {
    spd.lookup_packet(direction, pkt)
        .ok()
        .and_then(|d| d.policy.map(str::to_owned))
}

/// The first of the policies inbound SA `sa` serves that the decapsulated packet `inner`
/// matches: the policy the core's RFC 4301 §5.2 check accepted it under.
fn serving_policy(spd: &Spd, sa: &str, inner: &[u8]) -> Option<String> {
    let flow = Flow::from_packet(Direction::Inbound, inner).ok()?;
    spd.policy_selectors_for_sa(sa)
        .into_iter()
        .find(|p| p.matches(&flow))
        .map(|p| p.name().to_owned())
}

fn unexpected(what: impl core::fmt::Debug) -> PyErr {
    PyErr::new::<IpsecError, _>(format!(
        "the gateway answered {what:?}, which this version of the bindings does not know"
    ))
}

/// An IPsec gateway: an SPD and the SAs of its `[[sa]]` tables (Python `ipsec.Gateway`).
#[pyclass(module = "ipsec", name = "Gateway", frozen)]
pub(crate) struct PyGateway {
    state: Mutex<State>,
    /// The policies, as the Python `Spd` it was built from (immutable).
    spd: Py<PySpd>,
    /// The SA names in file order (fixed at creation, read without the lock).
    sa_names: Vec<String>,
}

impl PyGateway {
    /// Creates the gateway's SAs at `now` from the policy file text of `spd`.
    fn create(spd: Bound<'_, PySpd>, now: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let now = convert::opt_seconds(now, "now", convert::Bad::Config)?.unwrap_or_default();
        let core_spd = Spd::from_toml(spd.get().text()).map_err(Failure::from)?;
        let gateway = Gateway::new(core_spd, now).map_err(Failure::from)?;
        let sa_names = gateway.sas().map(|(name, _)| name.to_owned()).collect();
        Ok(PyGateway {
            state: Mutex::new(State {
                gateway,
                now,
                scratch: Vec::new(),
            }),
            spd: spd.unbind(),
            sa_names,
        })
    }

    fn lock<'a>(&'a self, py: Python<'_>) -> PyResult<std::sync::MutexGuard<'a, State>> {
        lock_releasing_gil(py, &self.state)
    }
}

#[pymethods]
impl PyGateway {
    /// Creates the SAs of the SPD's `[[sa]]` tables at time `now`.
    #[new]
    #[pyo3(signature = (spd, *, now=None), text_signature = "(spd, *, now=0.0)")]
    fn new(spd: &Bound<'_, PyAny>, now: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let spd = spd.cast::<PySpd>().map_err(|_| {
            PyTypeError::new_err(format!(
                "spd must be an ipsec.Spd, got {}",
                convert::type_name(spd)
            ))
        })?;
        PyGateway::create(spd.clone(), now)
    }

    /// A gateway from a policy file's text (`[[policy]]` and `[[sa]]` tables).
    #[staticmethod]
    #[pyo3(signature = (text, *, now=None), text_signature = "(text, *, now=0.0)")]
    fn from_toml(
        py: Python<'_>,
        text: &Bound<'_, PyAny>,
        now: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let spd = Bound::new(py, PySpd::from_text(convert::text(text, "text")?)?)?;
        PyGateway::create(spd, now)
    }

    /// A gateway from a policy file.
    #[staticmethod]
    #[pyo3(signature = (path, *, now=None), text_signature = "(path, *, now=0.0)")]
    fn load(
        py: Python<'_>,
        path: &Bound<'_, PyAny>,
        now: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let text = read_file(&convert::path(path, "path")?)?;
        let spd = Bound::new(py, PySpd::from_text(text)?)?;
        PyGateway::create(spd, now)
    }

    /// Classifies an outbound packet and encrypts it with the SA its PROTECT policy
    /// names, lets it through (BYPASS) or drops it (DISCARD).
    #[pyo3(signature = (packet, /, *, now=None))]
    fn outbound(
        &self,
        py: Python<'_>,
        packet: &Bound<'_, PyAny>,
        now: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyGatewayVerdict> {
        let data = packet_arg(packet, "packet")?;
        let now = now_arg(now)?;
        let len = data.len();
        let mut st = self.lock(py)?;
        let now = st.time(now);
        let State {
            gateway, scratch, ..
        } = &mut *st;
        // Room for the SA with the largest headers and trailer (the SA is chosen by
        // the lookup inside the core's `outbound`).
        let head = gateway
            .sas()
            .map(|(_, sa)| sa.max_headroom())
            .max()
            .unwrap_or(0);
        let tail = gateway
            .sas()
            .map(|(_, sa)| sa.tailroom_for(len))
            .max()
            .unwrap_or(0);
        scratch.clear();
        scratch.resize(head + len + tail, 0);
        scratch[head..head + len].copy_from_slice(&data);
        let policy = first_match(gateway.spd(), Direction::Outbound, &data);
        let mut pkt =
            PacketBuf::new(scratch, head, len).map_err(|e| Failure::from(e).into_exception(py))?;
        // Only `bytes` objects are created under the lock.
        match gateway.outbound(&mut pkt, now) {
            Ok(Outbound::Protected { sa }) => Ok(PyGatewayVerdict {
                action: "protect",
                policy,
                sa: Some(sa.to_owned()),
                packet: Some(PyBytes::new(py, pkt.data()).unbind()),
            }),
            Ok(Outbound::Bypassed) => Ok(PyGatewayVerdict {
                action: "bypass",
                policy,
                sa: None,
                packet: Some(PyBytes::new(py, pkt.data()).unbind()),
            }),
            Ok(other) => Err(unexpected(other)),
            Err(Error::PolicyDiscard) => Ok(PyGatewayVerdict::discard(policy)),
            Err(e) => Err(Failure::from(e).into_exception(py)),
        }
    }

    /// Processes an inbound packet: ESP (or ESP in UDP on port 4500) is decrypted by the
    /// SA of its SPI and checked against that SA's policies; cleartext passes only under
    /// a BYPASS policy.
    #[pyo3(signature = (packet, /, *, now=None))]
    fn inbound(
        &self,
        py: Python<'_>,
        packet: &Bound<'_, PyAny>,
        now: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyGatewayVerdict> {
        let data = packet_arg(packet, "packet")?;
        let now = now_arg(now)?;
        let mut st = self.lock(py)?;
        let now = st.time(now);
        let State {
            gateway, scratch, ..
        } = &mut *st;
        scratch.clear();
        scratch.extend_from_slice(&data);
        let mut pkt = PacketBuf::new(scratch, 0, data.len())
            .map_err(|e| Failure::from(e).into_exception(py))?;
        let verdict = match gateway.inbound(&mut pkt, now) {
            Ok(Inbound::Decrypted { sa }) => Ok(Some(sa.to_owned())),
            Ok(Inbound::Bypassed) => Ok(None),
            Ok(other) => return Err(unexpected(other)),
            Err(e) => Err(e),
        };
        let spd = gateway.spd();
        // Only `bytes` objects are created under the lock.
        match verdict {
            Ok(Some(sa)) => Ok(PyGatewayVerdict {
                action: "protect",
                policy: serving_policy(spd, &sa, pkt.data()),
                sa: Some(sa),
                packet: Some(PyBytes::new(py, pkt.data()).unbind()),
            }),
            Ok(None) => Ok(PyGatewayVerdict {
                action: "bypass",
                policy: first_match(spd, Direction::Inbound, &data),
                sa: None,
                packet: Some(PyBytes::new(py, pkt.data()).unbind()),
            }),
            Err(Error::PolicyDiscard) => Ok(PyGatewayVerdict::discard(first_match(
                spd,
                Direction::Inbound,
                &data,
            ))),
            Err(e) => Err(Failure::from(e).into_exception(py)),
        }
    }

    /// The gateway's own counters (drops that belong to no SA: unknown SPI, policy
    /// discard, unprotected cleartext, unparseable packets), in the shape of
    /// `SecurityAssociation.stats`.
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = *self.lock(py)?.gateway.stats();
        stats_dict(py, &stats)
    }

    /// The counters of the SA called `name` (`SecurityAssociation.stats`' shape).
    fn sa_stats<'py>(
        &self,
        py: Python<'py>,
        name: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let name = convert::text(name, "name")?;
        let stats = self.lock(py)?.gateway.sa(&name).map(|sa| *sa.stats());
        match stats {
            Some(s) => stats_dict(py, &s),
            None => Err(PyKeyError::new_err(format!(
                "name: no SA called {} (the gateway's SAs: {})",
                str_repr(&name),
                self.sa_names.join(", ")
            ))),
        }
    }

    /// Checks every SA's lifetimes at `now` (default: the last time given) and returns
    /// every pending event as `(SA name, SaEvent)`, SAs in file order.
    #[pyo3(signature = (now=None))]
    fn poll_events(
        &self,
        py: Python<'_>,
        now: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<(String, PySaEvent)>> {
        let now = now_arg(now)?;
        let events: Vec<(String, ipsec_core::SaEvent)> = {
            let mut st = self.lock(py)?;
            let now = st.time(now);
            st.gateway
                .poll_events(now)
                .into_iter()
                .map(|(name, e)| (name.to_owned(), e))
                .collect()
        };
        Ok(events
            .into_iter()
            .filter_map(|(name, e)| event_of(e).map(|e| (name, e)))
            .collect())
    }

    /// The SA names, in file order.
    #[getter]
    fn sa_names(&self) -> Vec<String> {
        self.sa_names.clone()
    }

    /// The policies (the `Spd` the gateway was built from).
    #[getter]
    fn spd(&self, py: Python<'_>) -> Py<PySpd> {
        self.spd.clone_ref(py)
    }

    fn __repr__(&self) -> String {
        let names: Vec<String> = self.sa_names.iter().map(|n| str_repr(n)).collect();
        format!(
            "Gateway(policies={}, sas=[{}])",
            self.spd.get().core().policies().len(),
            names.join(", ")
        )
    }
}
