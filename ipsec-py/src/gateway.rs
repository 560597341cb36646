//! `Gateway` (the core's [`ipsec_core::Gateway`]: an SPD and the SAs it names, doing the
//! whole data path), its answer, `GatewayVerdict`, and `GatewaySa`, what `sa_info`
//! tells of one of its SAs.
//!
//! # The control plane
//!
//! `add_sa`, `rekey_sa`, `delete_sa`, `retire_sa`, `install_policy`, `replace_policy`
//! and `remove_policy` are the core's control calls ([`ipsec_core::control`]): the SA
//! keywords are the `SecurityAssociation` constructor's, converted by the same code
//! ([`SaArgs`]); a refused call raises a `ControlError` subclass (or `ConfigError` for
//! an invalid configuration or policy text) and changes nothing, not even the time the
//! gateway remembers. Each runs with the GIL released (a policy change compiles the
//! whole SPD). `sa_names`, `spd` and `repr` show the gateway as it is now.
//!
//! To keep that compile off the gateway's lock, `edit_policies` / `PolicyEdit.compile`
//! / `commit_policies` batch policy changes ([`crate::policy_edit`]): the lock is held
//! to copy the policies and for the O(1) commit, never while compiling.
//!
//! # Threads and the GIL
//!
//! The core gateway lives behind a [`Mutex`], with the discipline of the SA
//! ([`crate::sa`]): a thread holding the GIL that finds the mutex taken waits for it with
//! the GIL released ([`lock_releasing_gil`]), and nothing under the lock creates Python
//! objects other than `bytes`. `outbound_many` / `inbound_many` release the GIL for the
//! whole batch ([`Python::detach`]) and make the verdicts after it.
//!
//! # What is an exception and what is a verdict
//!
//! The policy's answers are verdicts: `"protect"` (encrypted, or decrypted and checked
//! against the SA's policies), `"bypass"` and `"discard"` (a DISCARD policy, or no policy,
//! as the core counts it under `policy_discard`); and `"reassembling"` for an outer
//! fragment of ESP held until its datagram is complete (no packet to pass on). A packet the gateway must refuse for any
//! other reason raises the exception of the core's error: `PolicyMismatchError` for an
//! inner packet outside its SA's selectors (RFC 4301 §5.2, counted on the SA) and for
//! cleartext that a PROTECT policy covers (counted on the gateway), `AuthenticationError`,
//! `ReplayError`, `UnknownSpiError`, `MalformedPacketError`, ..., and `FragmentError`
//! for a fragment the core's stateful fragment checking drops (RFC 4301 §7; `.reason`
//! `fragment_too_short`, `fragment_overlap` or `fragment_unresolved`, counted on the
//! gateway for cleartext and on the SA for an inner packet).

use crate::convert;
use crate::convert::Bad;
use crate::errors::{Failure, IpsecError};
use crate::policy_edit::{PyCompiledPolicies, PyPolicyEdit};
use crate::reassembly::limits_arg;
use crate::sa::{
    PySaEvent, SaArgs, event_of, lock_releasing_gil, now_arg, packet_arg, packets_arg, poisoned,
    stats_dict,
};
use crate::shared::PySaLane;
use crate::spd::{PySpd, read_file, str_repr};
use core::ops::Range;
use core::time::Duration;
use ipsec_core::gateway::{Inbound, Outbound};
use ipsec_core::reassembly::MAX_DATAGRAM_LEN;
use ipsec_core::{
    ControlError, Direction, Error, FragmentLimits, Gateway, Integrity, LaneRefused, PacketBuf,
    Policy, SaLane, SaStats, SpareBuffers, Spd,
};
use pyo3::exceptions::{PyKeyError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use std::sync::Mutex;

/// What the mutex protects: the core gateway, the caller's latest time, a scratch
/// buffer the packets are processed in.
struct State {
    gateway: Gateway,
    /// The latest `now` the caller gave (creation time at first); used when a call
    /// gives none. The bindings never read a clock.
    now: Duration,
    scratch: Vec<u8>,
    /// How many times the control plane changed the policies (for `spd`).
    policy_changes: u64,
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
    /// `"protect"`, `"bypass"`, `"discard"` or `"reassembling"`.
    #[pyo3(get)]
    action: &'static str,
    /// The policy that decided (see the `.pyi` stub), or `None`.
    #[pyo3(get)]
    policy: Option<String>,
    /// For `"protect"`: the SA that encrypted (outbound) or decrypted (inbound) it.
    #[pyo3(get)]
    sa: Option<String>,
    /// The packet to pass on; `None` for `"discard"` and `"reassembling"`.
    #[pyo3(get)]
    packet: Option<Py<PyBytes>>,
    /// The fragments after `packet` when it had to be fragmented to fit the path MTU.
    extra: Vec<Py<PyBytes>>,
}

#[pymethods]
impl PyGatewayVerdict {
    /// Every packet to pass on, in order: `[packet]`, or more when the packet was
    /// fragmented to fit its SA's path MTU (each fragment its own ESP packet); `[]` for
    /// `"discard"`.
    #[getter]
    fn packets<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        self.packet
            .iter()
            .chain(&self.extra)
            .map(|p| p.bind(py).clone())
            .collect()
    }

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

/// What the gateway did with one packet, before any Python object is made: the output
/// packet is `scratch[range]`.
struct Done {
    action: &'static str,
    policy: Option<String>,
    sa: Option<String>,
    range: Option<Range<usize>>,
    /// More packets (fragments that did not fit the path MTU in one).
    extra: Vec<Vec<u8>>,
}

impl Done {
    fn into_verdict(self, py: Python<'_>, packet: Option<Py<PyBytes>>) -> PyGatewayVerdict {
        PyGatewayVerdict {
            action: self.action,
            policy: self.policy,
            sa: self.sa,
            packet,
            extra: self
                .extra
                .iter()
                .map(|p| PyBytes::new(py, p).unbind())
                .collect(),
        }
    }
}

/// Why a packet got no verdict.
enum Refused {
    /// The core's error (counted by the core).
    Packet(Error),
    /// An outcome added to the core after these bindings were written.
    Unexpected(String),
}

impl Refused {
    fn into_exception(self, py: Python<'_>) -> PyErr {
        match self {
            Refused::Packet(e) => Failure::from(e).into_exception(py),
            Refused::Unexpected(what) => PyErr::new::<IpsecError, _>(format!(
                "the gateway answered {what}, which this version of the bindings does not know"
            )),
        }
    }
}

/// Runs one packet through the core gateway in `scratch` (no Python objects involved,
/// so it runs with the GIL held or released alike).
fn process(
    gateway: &mut Gateway,
    scratch: &mut Vec<u8>,
    direction: Direction,
    data: &[u8],
    now: Duration,
) -> Result<Done, Refused> {
    let len = data.len();
    // Outbound: room for the SA with the largest headers and trailer (the core's
    // lookup picks the SA). Inbound: room for a whole datagram, in case the packet is
    // the fragment that completes one.
    let outbound = direction == Direction::Outbound;
    let (head, tail) = if outbound {
        (gateway.max_headroom(), gateway.tailroom_for(len))
    } else {
        (0, MAX_DATAGRAM_LEN.saturating_sub(len))
    };
    // The scratch buffer only grows: what lies around the packet is headroom and
    // tailroom, which the transform overwrites, so it need not be zeroed per packet.
    let need = head + len + tail;
    if scratch.len() < need {
        scratch.resize(need, 0);
    }
    let scratch = &mut scratch[..need];
    scratch[head..head + len].copy_from_slice(data);
    let mut pkt = PacketBuf::new(scratch, head, len).map_err(Refused::Packet)?;
    // Spare buffers only for a packet that must be fragmented (a rare, slow path).
    let spares_needed = if outbound {
        gateway.spares_needed(data, now)
    } else {
        0
    };
    let mut spare_store = vec![vec![0u8; head + len + tail]; spares_needed];
    let mut spares = spare_store
        .iter_mut()
        .map(|b| PacketBuf::new(b, head, 0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Refused::Packet)?;
    let mut pool = SpareBuffers::new(&mut spares);
    let answer = if outbound {
        match gateway.outbound_fragmenting(&mut pkt, &mut pool, now) {
            Ok((Outbound::Protected { sa, policy }, _)) => Ok(("protect", policy, Some(sa))),
            Ok((Outbound::Bypassed { policy }, _)) => Ok(("bypass", policy, None)),
            Ok((other, _)) => return Err(Refused::Unexpected(format!("{other:?}"))),
            Err(e) => Err(e),
        }
    } else {
        match gateway.inbound(&mut pkt, now) {
            Ok(Inbound::Decrypted { sa, policy }) => Ok(("protect", policy, Some(sa))),
            Ok(Inbound::Bypassed { policy }) => Ok(("bypass", policy, None)),
            Ok(Inbound::Reassembling) => {
                return Ok(Done {
                    action: "reassembling",
                    policy: None,
                    sa: None,
                    range: None,
                    extra: Vec::new(),
                });
            }
            Ok(other) => return Err(Refused::Unexpected(format!("{other:?}"))),
            Err(e) => Err(e),
        }
    };
    let extra: Vec<Vec<u8>> = pool.filled().iter().map(|p| p.data().to_vec()).collect();
    let range = pkt.offset()..pkt.offset() + pkt.len();
    match answer {
        Ok((action, policy, sa)) => Ok(Done {
            action,
            policy: Some(policy.to_owned()),
            sa: sa.map(str::to_owned),
            range: Some(range),
            extra,
        }),
        // The core's error carries no policy name: look up which DISCARD policy (if
        // any) matched, on this rare path only.
        Err(Error::PolicyDiscard) => Ok(Done {
            action: "discard",
            policy: first_match(gateway.spd(), direction, data),
            sa: None,
            range: None,
            extra,
        }),
        Err(e) => Err(Refused::Packet(e)),
    }
}

/// An IPsec gateway: an SPD and the SAs of its `[[sa]]` tables, changed while it runs by
/// the control calls (Python `ipsec.Gateway`).
#[pyclass(module = "ipsec", name = "Gateway", frozen)]
pub(crate) struct PyGateway {
    state: Mutex<State>,
    /// The policies as a Python `Spd`, with the `policy_changes` count it shows: the
    /// `Spd` the gateway was built from until the control plane changes a policy, then
    /// one made from the live policies when `spd` is read. Locked only with the GIL
    /// held, never while Python code runs.
    spd: Mutex<(u64, Py<PySpd>)>,
}

impl PyGateway {
    /// Creates the gateway's SAs at `now` from the policy file text of `spd`.
    fn create(spd: Bound<'_, PySpd>, now: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let now = convert::opt_seconds(now, "now", convert::Bad::Config)?.unwrap_or_default();
        let core_spd = spd.get().core().clone();
        let gateway = Gateway::new(core_spd, now).map_err(Failure::from)?;
        Ok(PyGateway {
            state: Mutex::new(State {
                gateway,
                now,
                scratch: Vec::new(),
                policy_changes: 0,
            }),
            spd: Mutex::new((0, spd.unbind())),
        })
    }

    /// Runs the control call `call` on the core gateway with the GIL released, at the
    /// time `now` (default: the last time given, which `now` replaces only when the
    /// call succeeds: a refused call changes nothing). `changes_policies`: a success
    /// changes the policies (`spd` shows new ones).
    fn control<T: Send>(
        &self,
        py: Python<'_>,
        now: Option<Duration>,
        changes_policies: bool,
        call: impl FnOnce(&mut Gateway, Duration) -> Result<T, ControlError> + Send,
    ) -> PyResult<T> {
        let result = py.detach(|| {
            let mut st = self.state.lock().map_err(|_| ())?;
            let at = now.unwrap_or(st.now);
            let result = call(&mut st.gateway, at);
            if result.is_ok() {
                st.now = at;
                if changes_policies {
                    st.policy_changes += 1;
                }
            }
            Ok(result)
        });
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(refused)) => Err(Failure::from(refused).into_exception(py)),
            Err(()) => Err(poisoned()),
        }
    }

    /// A control call that installs a lane: with the GIL released, under the gateway's
    /// lock, then the lane's (never the other way round).
    fn lane_call(
        &self,
        py: Python<'_>,
        lane: &PySaLane,
        call: impl FnOnce(&mut Gateway, SaLane) -> Result<(), LaneRefused> + Send,
    ) -> PyResult<()> {
        let result = py.detach(|| {
            let mut st = self.state.lock().map_err(|_| ())?;
            Ok(lane.install(|l| call(&mut st.gateway, l)))
        });
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(refused)) => Err(refused.into_exception(py)),
            Err(()) => Err(poisoned()),
        }
    }

    /// The names of the installed SAs: those of the policy file in file order, then
    /// those the control plane added (one may take the place of a deleted one).
    fn live_sa_names(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        Ok(self
            .lock(py)?
            .gateway
            .sas()
            .map(|(name, _)| name.to_owned())
            .collect())
    }

    /// A `KeyError` for the SA name `name` that no SA has.
    fn no_sa(&self, py: Python<'_>, name: &str) -> PyErr {
        let names = self.live_sa_names(py).unwrap_or_default();
        PyKeyError::new_err(format!(
            "name: no SA called {} (the gateway's SAs: {})",
            str_repr(name),
            names.join(", ")
        ))
    }

    fn lock<'a>(&'a self, py: Python<'_>) -> PyResult<std::sync::MutexGuard<'a, State>> {
        lock_releasing_gil(py, &self.state)
    }

    /// `outbound` / `inbound`: the output `bytes` is made under the lock (no other
    /// Python object is).
    fn one(
        &self,
        py: Python<'_>,
        direction: Direction,
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
        match process(gateway, scratch, direction, &data, now) {
            Ok(done) => {
                let packet = done
                    .range
                    .clone()
                    .map(|r| PyBytes::new(py, &scratch[r]).unbind());
                Ok(done.into_verdict(py, packet))
            }
            Err(refused) => {
                drop(st);
                Err(refused.into_exception(py))
            }
        }
    }

    /// `outbound_many` / `inbound_many`: the packets are referenced (or copied) with
    /// the GIL, processed with it released (their outputs appended to one arena), and
    /// the verdicts and exceptions made with it again.
    fn many<'py>(
        &self,
        py: Python<'py>,
        direction: Direction,
        packets: &Bound<'py, PyAny>,
        now: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let inputs = packets_arg(packets)?;
        let now = now_arg(now)?;
        let batch = py.detach(|| {
            let mut st = self.state.lock().map_err(|_| ())?;
            let now = st.time(now);
            let State {
                gateway, scratch, ..
            } = &mut *st;
            let mut arena = Vec::with_capacity(inputs.iter().map(|p| p.len() + 64).sum());
            let results: Vec<Result<Done, Refused>> = inputs
                .iter()
                .map(|input| {
                    process(gateway, scratch, direction, input, now).map(|mut done| {
                        done.range = done.range.take().map(|r| {
                            let start = arena.len();
                            arena.extend_from_slice(&scratch[r]);
                            start..arena.len()
                        });
                        done
                    })
                })
                .collect();
            Ok((arena, results))
        });
        let (arena, results) = batch.map_err(|()| poisoned())?;
        let mut items: Vec<Bound<'py, PyAny>> = Vec::with_capacity(results.len());
        for r in results {
            items.push(match r {
                Ok(done) => {
                    let packet = done
                        .range
                        .clone()
                        .map(|r| PyBytes::new(py, &arena[r]).unbind());
                    Bound::new(py, done.into_verdict(py, packet))?.into_any()
                }
                Err(refused) => refused
                    .into_exception(py)
                    .into_value(py)
                    .into_bound(py)
                    .into_any(),
            });
        }
        PyList::new(py, items)
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
        let spd = Bound::new(py, PySpd::from_text(&convert::secret_text(text, "text")?)?)?;
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
        let spd = Bound::new(py, PySpd::from_text(&text)?)?;
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
        self.one(py, Direction::Outbound, packet, now)
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
        self.one(py, Direction::Inbound, packet, now)
    }

    /// `outbound` for a batch of packets, with the GIL released; returns, per packet,
    /// the verdict or the exception describing why it was dropped.
    #[pyo3(signature = (packets, /, *, now=None))]
    fn outbound_many<'py>(
        &self,
        py: Python<'py>,
        packets: &Bound<'py, PyAny>,
        now: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        self.many(py, Direction::Outbound, packets, now)
    }

    /// Replaces the limits of the reassembler of outer ESP fragments (keywords as
    /// `Reassembler`'s, the defaults for those left out); returns how many held
    /// fragments the new limits dropped (counted as `fragment_limit`).
    #[pyo3(signature = (*, max_bytes=None, max_datagrams=None, max_fragments=None, lifetime=None))]
    fn set_reassembly_limits(
        &self,
        py: Python<'_>,
        max_bytes: Option<&Bound<'_, PyAny>>,
        max_datagrams: Option<&Bound<'_, PyAny>>,
        max_fragments: Option<&Bound<'_, PyAny>>,
        lifetime: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        let limits = limits_arg(max_bytes, max_datagrams, max_fragments, lifetime)?;
        Ok(self.lock(py)?.gateway.set_reassembly_limits(limits))
    }

    /// Drops the outer fragments whose datagram did not complete within its lifetime at
    /// `now` (default: the last time given), counted as `fragment_timeout` in `stats`;
    /// returns how many.
    #[pyo3(signature = (now=None))]
    fn expire_fragments(&self, py: Python<'_>, now: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
        let now = now_arg(now)?;
        let mut st = self.lock(py)?;
        let now = st.time(now);
        Ok(st.gateway.expire_fragments(now))
    }

    /// `inbound` for a batch of packets, with the GIL released; returns, per packet, the
    /// verdict or the exception describing why it was dropped.
    #[pyo3(signature = (packets, /, *, now=None))]
    fn inbound_many<'py>(
        &self,
        py: Python<'py>,
        packets: &Bound<'py, PyAny>,
        now: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        self.many(py, Direction::Inbound, packets, now)
    }

    /// Sets the limits of the gateway's memory of first fragments (stateful fragment
    /// checking, RFC 4301 §7.3/§7.4): at most `max_datagrams` datagrams (0 turns it
    /// off), each remembered for `lifetime` seconds after its first fragment (by the
    /// `now` of the packet calls). What it held is forgotten.
    #[pyo3(signature = (*, max_datagrams, lifetime))]
    fn set_fragment_limits(
        &self,
        py: Python<'_>,
        max_datagrams: &Bound<'_, PyAny>,
        lifetime: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let max = convert::int::<u32>(max_datagrams, "max_datagrams", convert::Bad::Config)?;
        let lifetime = convert::opt_seconds(Some(lifetime), "lifetime", convert::Bad::Config)?
            .unwrap_or_default();
        let limits = FragmentLimits::new(max as usize, lifetime).map_err(Failure::from)?;
        self.lock(py)?.gateway.set_fragment_limits(limits);
        Ok(())
    }

    /// `(max_datagrams, lifetime in seconds)` of the memory of first fragments.
    #[getter]
    fn fragment_limits(&self, py: Python<'_>) -> PyResult<(usize, f64)> {
        let l = self.lock(py)?.gateway.fragment_limits();
        Ok((l.max_datagrams(), l.lifetime().as_secs_f64()))
    }

    /// The gateway's own counters (drops that belong to no SA: unknown SPI, policy
    /// discard, unprotected cleartext, cleartext fragments dropped, unparseable
    /// packets, dropped outer fragments), in the shape of `SecurityAssociation.stats`.
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
        let stats = self.lock(py)?.gateway.sa(&name).map(|sa| sa.stats());
        match stats {
            Some(s) => stats_dict(py, &s),
            None => Err(self.no_sa(py, &name)),
        }
    }

    /// What the gateway holds of the installed SA called `name` (`GatewaySa`: its SPI,
    /// direction, algorithms, sequence number and counters, read at once). Raises
    /// `KeyError` when no SA has the name.
    fn sa_info(&self, py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<PyGatewaySa> {
        let name = convert::text(name, "name")?;
        let info = self.lock(py)?.gateway.sa(&name).map(|sa| PyGatewaySa {
            name: name.clone(),
            spi: sa.spi(),
            direction: sa.direction().name(),
            mode: sa.mode().name(),
            cipher: sa.cipher().name(),
            integrity: sa.integrity().map(Integrity::name),
            esn: sa.esn(),
            tunnel: sa.tunnel().map(|(s, d)| (s.to_string(), d.to_string())),
            udp_encap: sa.udp_encap(),
            lookup: sa.lookup().name(),
            seq: sa.seq(),
            expired: sa.is_expired(),
            last_used: sa.last_used().map(|t| t.as_secs_f64()),
            stats: sa.stats(),
        });
        info.ok_or_else(|| self.no_sa(py, &name))
    }

    /// Installs a new SA called `name` (`add_sa` of IKE daemons), created at `now`
    /// (default: the last time given) from the keyword arguments of
    /// `SecurityAssociation(...)`. Policies may name it from now on (`install_policy`);
    /// an inbound SA accepts its packets at once. Raises `DuplicateNameError`,
    /// `DuplicateSpiError` (an inbound SA has the SPI and the same `lookup`) or `ConfigError` (an invalid
    /// configuration, or a key an installed SA uses); nothing is changed then.
    #[pyo3(
        signature = (name, *, now=None, **config),
        text_signature = "($self, name, *, spi, direction, mode, cipher, key, integrity=None, \
            integrity_key=b'', esn=False, replay_window=64, tunnel_src=None, tunnel_dst=None, \
            udp_encap=None, seq=0, soft_lifetime=None, hard_lifetime=None, \
            soft_lifetime_jitter=10, padding='blocks', tfc_pad_to=None, outer_ttl=64, \
            path_mtu=None, df='copy', nat_keepalive_interval=20.0, \
            nat_original_addresses=None, lookup='spi', now=None)"
    )]
    fn add_sa(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        now: Option<&Bound<'_, PyAny>>,
        config: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let name = convert::text(name, "name")?;
        let config = SaArgs::from_kwargs("add_sa", config)?.config()?;
        let now = now_arg(now)?;
        self.control(py, now, false, move |gw, now| gw.add_sa(&name, config, now))
    }

    /// Installs the SA `name` as the successor of the installed SA `replaces`
    /// (make-before-break rekeying; SA keywords as `add_sa`'s). Inbound: the new SA
    /// accepts next to the old one and serves its policies; the old one accepts until
    /// `delete_sa` or `retire_sa`. Outbound: every policy that sent through `replaces`
    /// sends through `name` from the next packet on (delete `replaces` when
    /// convenient). Raises as `add_sa`, and `UnknownSaError` (no SA `replaces`) or
    /// `DirectionMismatchError`; nothing is changed then.
    #[pyo3(
        signature = (replaces, name, *, now=None, **config),
        text_signature = "($self, replaces, name, *, spi, direction, mode, cipher, key, \
            integrity=None, integrity_key=b'', esn=False, replay_window=64, tunnel_src=None, \
            tunnel_dst=None, udp_encap=None, seq=0, soft_lifetime=None, hard_lifetime=None, \
            soft_lifetime_jitter=10, padding='blocks', tfc_pad_to=None, outer_ttl=64, \
            path_mtu=None, df='copy', nat_keepalive_interval=20.0, \
            nat_original_addresses=None, lookup='spi', now=None)"
    )]
    fn rekey_sa(
        &self,
        py: Python<'_>,
        replaces: &Bound<'_, PyAny>,
        name: &Bound<'_, PyAny>,
        now: Option<&Bound<'_, PyAny>>,
        config: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let replaces = convert::text(replaces, "replaces")?;
        let name = convert::text(name, "name")?;
        let config = SaArgs::from_kwargs("rekey_sa", config)?.config()?;
        let now = now_arg(now)?;
        self.control(py, now, false, move |gw, now| {
            gw.rekey_sa(&replaces, &name, config, now)
        })
    }

    /// Installs `lane` (a lane of an `ipsec.SharedSa`) as the SA `name`, as `add_sa`
    /// installs an SA: one SA on several worker threads, each thread with its own
    /// gateway holding its lane (outbound lanes take sequence numbers in blocks from
    /// the shared counter, inbound lanes share one replay window). From then on the
    /// gateway processes the lane's packets: calls on the `SaLane` object raise
    /// `IpsecError`. Raises as `add_sa` (`DuplicateNameError`, `DuplicateSpiError`,
    /// `ConfigError`: a key this gateway's SAs use) and `IpsecError` for a lane already
    /// installed; the lane stays the caller's then, unchanged.
    fn add_sa_lane(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        lane: &Bound<'_, PySaLane>,
    ) -> PyResult<()> {
        let name = convert::text(name, "name")?;
        self.lane_call(py, lane.get(), move |gw, l| gw.add_sa_lane(&name, l))
    }

    /// Installs `lane` as the successor of the installed SA `replaces`, as `rekey_sa`
    /// installs an SA (make-before-break), with `add_sa_lane`'s rules for the lane.
    fn rekey_sa_lane(
        &self,
        py: Python<'_>,
        replaces: &Bound<'_, PyAny>,
        name: &Bound<'_, PyAny>,
        lane: &Bound<'_, PySaLane>,
    ) -> PyResult<()> {
        let replaces = convert::text(replaces, "replaces")?;
        let name = convert::text(name, "name")?;
        self.lane_call(py, lane.get(), move |gw, l| {
            gw.rekey_sa_lane(&replaces, &name, l)
        })
    }

    /// Deletes the SA `name` at once (`del_sa`) and returns its final counters
    /// (`SecurityAssociation.stats`' shape): its SPI is unknown to the next packet
    /// (counted in `stats["unknown_spi"]`). Raises `UnknownSaError`, or `SaInUseError`
    /// when a policy still needs it; nothing is changed then.
    fn delete_sa<'py>(
        &self,
        py: Python<'py>,
        name: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let name = convert::text(name, "name")?;
        let stats: SaStats = self.control(py, None, false, move |gw, _| gw.delete_sa(&name))?;
        stats_dict(py, &stats)
    }

    /// Deletes the SA `name` when the caller's clock reaches `at` (seconds, as `now`;
    /// checked by the packets for that SA and by `poll_events`): the old inbound SA of
    /// a rekey, kept for packets still on their way. Calling it again moves the time.
    /// Raises as `delete_sa` (on the state of now); nothing is changed then.
    fn retire_sa(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        at: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let name = convert::text(name, "name")?;
        let at = convert::opt_seconds(Some(at), "at", Bad::Value)?.ok_or_else(|| {
            PyTypeError::new_err("at must be a number of seconds (int or float), got None")
        })?;
        self.control(py, None, false, move |gw, _| gw.retire_sa(&name, at))
    }

    /// Moves the SA `name` to other tunnel endpoints and UDP encapsulation
    /// (`update_sa` of IKE daemons: a new NAT mapping, a MOBIKE address change), at
    /// `now` (default: the last time given): `tunnel_src` and `tunnel_dst` (both, or
    /// neither for none), `udp_encap` a `(src_port, dst_port)` tuple or `None` for plain
    /// ESP. Keys, sequence number, replay window, lifetimes, counters, name and
    /// policies stay. Raises `UnknownSaError`, `ConfigError` (endpoints the SA cannot
    /// have) or `DuplicateSpiError` (another inbound SA has the new lookup key);
    /// nothing is changed then.
    #[pyo3(signature = (name, *, tunnel_src=None, tunnel_dst=None, udp_encap=None, now=None))]
    fn update_sa(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        tunnel_src: Option<&Bound<'_, PyAny>>,
        tunnel_dst: Option<&Bound<'_, PyAny>>,
        udp_encap: Option<&Bound<'_, PyAny>>,
        now: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let name = convert::text(name, "name")?;
        let tunnel = convert::endpoints(tunnel_src, tunnel_dst)?;
        let encap = convert::udp_ports(udp_encap)?;
        let now = convert::opt_seconds(now, "now", Bad::Value)?;
        self.control(py, now, false, move |gw, at| {
            gw.update_sa(&name, tunnel, encap, at)
        })
    }

    /// Installs the policy `text` (one `[[policy]]` table of the policy file, or its
    /// `key = value` lines) before the installed policy `before`, or last when
    /// `before` is None (after a final deny-all it would never match: name the
    /// deny-all). Raises `ConfigError` (invalid text), `DuplicatePolicyError`,
    /// `MissingSaError` (it names an SA not installed in that direction) or
    /// `UnknownPolicyError` (no policy `before`); nothing is changed then.
    #[pyo3(signature = (text, *, before=None))]
    fn install_policy(
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
        // Parsed before the gateway's lock is taken: the packet threads never wait
        // for the parse, the most expensive part of the call.
        let policy = parse_policy(py, &text)?;
        self.control(py, None, true, move |gw, _| {
            gw.install_parsed_policy(policy, before.as_deref())
        })
    }

    /// Replaces the installed policy of the same name as `text` with it, in the same
    /// place in the order. Raises `ConfigError`, `UnknownPolicyError` or
    /// `MissingSaError`; nothing is changed then.
    fn replace_policy(&self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<()> {
        let text = convert::secret_text(text, "text")?;
        let policy = parse_policy(py, &text)?;
        self.control(py, None, true, move |gw, _| {
            gw.replace_parsed_policy(policy)
        })
    }

    /// Removes the policy `name` (its traffic is decided by the policies after it); the
    /// SAs it named stay installed. Raises `UnknownPolicyError`; nothing is changed
    /// then.
    fn remove_policy(&self, py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<()> {
        let name = convert::text(name, "name")?;
        self.control(py, None, true, move |gw, _| gw.remove_policy(&name))
    }

    /// Policy changes pending beside the compiled classifier: each policy call is
    /// applied at once and checked at lookup beside it. From `policy_rebuild_due`
    /// on, compile them in: an unchanged batch (`edit_policies()`, `compile()` on any
    /// thread, `commit_policies`) or `rebuild_policies()` here.
    #[getter]
    fn pending_policy_changes(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.lock(py)?.gateway.pending_policy_changes())
    }

    /// Whether enough policy changes are pending (32) that the classifier should be
    /// compiled again, off the packet thread (past 128 the next policy call does it).
    #[getter]
    fn policy_rebuild_due(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.lock(py)?.gateway.policy_rebuild_due())
    }

    /// Compiles the policy classifier again now, with the GIL released (the policies
    /// do not change; an edit taken before stays valid).
    fn rebuild_policies(&self, py: Python<'_>) -> PyResult<()> {
        let done = py.detach(|| {
            let mut st = self.state.lock().map_err(|_| ())?;
            st.gateway.rebuild_policies();
            Ok(())
        });
        done.map_err(|()| poisoned())
    }

    /// Starts a batch of policy changes compiled away from the gateway: a
    /// `PolicyEdit` of the policies as they are (taken under the gateway's lock in
    /// O(changes pending): it shares the policies, and copies them on its own first
    /// change). Change it (`install`, `replace`, `remove`), `compile()` it on any
    /// thread while the gateway goes on processing packets, and `commit_policies` the
    /// result.
    fn edit_policies(slf: &Bound<'_, Self>) -> PyResult<PyPolicyEdit> {
        let py = slf.py();
        let edit = slf.get().lock(py)?.gateway.edit_policies();
        Ok(PyPolicyEdit::new(edit, slf.clone().unbind()))
    }

    /// Swaps in the policies `compiled` (from `PolicyEdit.compile()` of an edit of this
    /// gateway) in one step; the policies replaced are freed after the gateway's lock
    /// is released, with the GIL released. Raises `StalePoliciesError` when the policies changed since
    /// the edit was taken, `MissingSaError` when an SA a policy names was deleted
    /// since (nothing is changed then), and `ValueError` when `compiled` is another
    /// gateway's or was used by `commit_policies` already (committed or refused).
    fn commit_policies(slf: &Bound<'_, Self>, compiled: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let compiled = compiled.cast::<PyCompiledPolicies>().map_err(|_| {
            PyTypeError::new_err(format!(
                "compiled must be an ipsec.CompiledPolicies, got {}",
                convert::type_name(compiled)
            ))
        })?;
        let policies = compiled.get().take_for(py, slf)?;
        let retired = slf
            .get()
            .control(py, None, true, move |gw, _| gw.commit_policies(policies))?;
        // The replaced policies are freed after the gateway's lock is released, with
        // the GIL released: the expensive part of a commit (O(policies)).
        py.detach(move || drop(retired));
        Ok(())
    }

    /// Puts an exact-match flow cache of room for `capacity` flows (rounded up to a
    /// power of two; 0 turns it off, the default) in front of the policy classifier
    /// for whole cleartext packets. Emptied by every policy change, so it never
    /// answers from replaced policies. Raises `ConfigError` (field `capacity`) above
    /// `SPD_CACHE_MAX` (the bindings' limit, against an allocation that would abort).
    fn set_spd_cache(&self, py: Python<'_>, capacity: &Bound<'_, PyAny>) -> PyResult<()> {
        let capacity: u32 = convert::int(capacity, "capacity", Bad::Config)?;
        if capacity > Self::SPD_CACHE_MAX {
            return Err(crate::errors::config(
                "capacity",
                format!(
                    "{capacity} flows: at most {} (SPD_CACHE_MAX)",
                    Self::SPD_CACHE_MAX
                ),
            ));
        }
        self.lock(py)?.gateway.set_spd_cache(capacity as usize);
        Ok(())
    }

    /// The largest `capacity` of `set_spd_cache`: 2^24 flows.
    #[classattr]
    const SPD_CACHE_MAX: u32 = 1 << 24;

    /// `(capacity, hits, misses)` of the SPD cache (capacity 0: off).
    #[getter]
    fn spd_cache_stats(&self, py: Python<'_>) -> PyResult<(usize, u64, u64)> {
        Ok(self.lock(py)?.gateway.spd_cache_stats())
    }

    /// Allocates an SPI for an inbound SA being negotiated (`get_spi`): random, never
    /// below 256, never an inbound SA's nor one allocated before whose reservation (165
    /// seconds of the caller's clock) still runs at `now` (default: the last time
    /// given). Raises `SpiExhaustedError` when no SPI of the range is free.
    #[pyo3(signature = (now=None))]
    fn allocate_spi(&self, py: Python<'_>, now: Option<&Bound<'_, PyAny>>) -> PyResult<u32> {
        let now = now_arg(now)?;
        let mut st = self.lock(py)?;
        let now = st.time(now);
        Ok(st.gateway.allocate_spi(now).map_err(Failure::from)?)
    }

    /// Gives back an SPI from `allocate_spi` that no SA was installed with (the
    /// negotiation failed), so that it may be drawn again at once; returns whether it
    /// was reserved. An installed inbound SA's SPI is never given back (False).
    fn release_spi(&self, py: Python<'_>, spi: &Bound<'_, PyAny>) -> PyResult<bool> {
        let spi: u32 = convert::int(spi, "spi", Bad::Value)?;
        Ok(self.lock(py)?.gateway.release_spi(spi))
    }

    /// Makes `allocate_spi` draw from `min..=max` only; SPIs in use and reserved stay
    /// so. Raises `ConfigError` (field `spi_min` or `spi_max`, nothing changed) when
    /// `min` is below 256 or above `max`.
    #[pyo3(signature = (min, max))]
    fn set_spi_range(
        &self,
        py: Python<'_>,
        min: &Bound<'_, PyAny>,
        max: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let min: u32 = convert::int(min, "spi_min", convert::Bad::Config)?;
        let max: u32 = convert::int(max, "spi_max", convert::Bad::Config)?;
        let mut st = self.lock(py)?;
        Ok(st.gateway.set_spi_range(min, max).map_err(Failure::from)?)
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
            core::iter::from_fn(|| {
                st.gateway
                    .poll_event(now)
                    .map(|(name, e)| (name.to_owned(), e))
            })
            .collect()
        };
        Ok(events
            .into_iter()
            .filter_map(|(name, e)| event_of(e).map(|e| (name, e)))
            .collect())
    }

    /// Hands an ICMP "fragmentation needed" / ICMPv6 "packet too big" message (the whole
    /// IP packet) to the outbound SA whose packet it quotes; returns `(SA name, new path
    /// MTU)`, or `None` when the MTU did not go down. Raises `MalformedPacketError` when
    /// no SA of the gateway sent the quoted packet.
    #[pyo3(signature = (packet, /, *, now=None))]
    fn handle_icmp(
        &self,
        py: Python<'_>,
        packet: &Bound<'_, PyAny>,
        now: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<(String, u16)>> {
        let data = packet_arg(packet, "packet")?;
        let now = now_arg(now)?;
        let res = {
            let mut st = self.lock(py)?;
            let now = st.time(now);
            st.gateway
                .handle_icmp(&data, now)
                .map(|r| r.map(|(name, mtu)| (name.to_owned(), mtu)))
        };
        res.map_err(|e| Failure::from(e).into_exception(py))
    }

    /// Returns the next NAT-keepalive any of the gateway's SAs owes at `now` (default:
    /// the last time given) as `(SA name, packet)`, counting it as sent, or `None`. Call
    /// until `None`, sending each as it comes.
    #[pyo3(signature = (now=None))]
    fn poll_keepalive<'py>(
        &self,
        py: Python<'py>,
        now: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<(String, Bound<'py, PyBytes>)>> {
        let now = now_arg(now)?;
        let mut out = [0u8; ipsec_core::NAT_KEEPALIVE_MAX_LEN];
        let found = {
            let mut st = self.lock(py)?;
            let now = st.time(now);
            st.gateway
                .poll_keepalive(now, &mut out)
                .map(|(name, n)| (name.to_owned(), n))
        };
        Ok(found.map(|(name, n)| (name, PyBytes::new(py, &out[..n]))))
    }

    /// When the next NAT-keepalive of any SA is due, in seconds on the caller's clock,
    /// or `None` when none of them sends keepalives.
    #[getter]
    fn next_keepalive(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        Ok(self
            .lock(py)?
            .gateway
            .next_keepalive()
            .map(|t| t.as_secs_f64()))
    }

    /// The names of the installed SAs: those of the policy file in file order, then
    /// those added by `add_sa` / `rekey_sa` (one may take the place of a deleted one).
    #[getter]
    fn sa_names(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.live_sa_names(py)
    }

    /// The policies: the `Spd` the gateway was built from until `install_policy`,
    /// `replace_policy` or `remove_policy` changes them; then an `Spd` of the live
    /// policies, in their order (it holds no `[[sa]]` tables: the SAs are the
    /// gateway's).
    #[getter]
    fn spd(&self, py: Python<'_>) -> PyResult<Py<PySpd>> {
        let changes = self.lock(py)?.policy_changes;
        {
            let cached = self.spd.lock().map_err(|_| poisoned())?;
            if cached.0 == changes {
                return Ok(cached.1.clone_ref(py));
            }
        }
        // Made with neither lock held (creating a Python object may run Python code).
        let (changes, core) = {
            let st = self.lock(py)?;
            (st.policy_changes, st.gateway.spd().clone())
        };
        let fresh = Py::new(py, PySpd::from_core(core))?;
        let old = {
            let mut cached = self.spd.lock().map_err(|_| poisoned())?;
            core::mem::replace(&mut *cached, (changes, fresh.clone_ref(py)))
        };
        drop(old);
        Ok(fresh)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let (policies, names) = {
            let st = self.lock(py)?;
            let names: Vec<String> = st.gateway.sas().map(|(n, _)| str_repr(n)).collect();
            (st.gateway.spd().policies().len(), names)
        };
        Ok(format!(
            "Gateway(policies={policies}, sas=[{}])",
            names.join(", ")
        ))
    }
}

/// What a gateway holds of one of its SAs, read at once (Python `ipsec.GatewaySa`, from
/// `Gateway.sa_info`): a snapshot, not a live view.
#[pyclass(module = "ipsec", name = "GatewaySa", frozen)]
pub(crate) struct PyGatewaySa {
    /// The SA's name.
    #[pyo3(get)]
    name: String,
    /// The SPI.
    #[pyo3(get)]
    spi: u32,
    /// `"outbound"` or `"inbound"`.
    #[pyo3(get)]
    direction: &'static str,
    /// `"tunnel"` or `"transport"`.
    #[pyo3(get)]
    mode: &'static str,
    /// The cipher name.
    #[pyo3(get)]
    cipher: &'static str,
    /// The integrity algorithm name, or `None`.
    #[pyo3(get)]
    integrity: Option<&'static str>,
    /// True with extended sequence numbers.
    #[pyo3(get)]
    esn: bool,
    /// The tunnel endpoints `(src, dst)` as text (outbound tunnel SAs), or `None`.
    #[pyo3(get)]
    tunnel: Option<(String, String)>,
    /// The UDP encapsulation ports `(src, dst)`, or `None`.
    #[pyo3(get)]
    udp_encap: Option<(u16, u16)>,
    /// How the gateway finds the SA for an inbound packet (RFC 4301 §4.1): `"spi"`,
    /// `"spi+protocol"`, `"spi+destination"` or `"spi+destination+source"`.
    #[pyo3(get)]
    lookup: &'static str,
    /// Outbound: the last sequence number used. Inbound: the highest received.
    #[pyo3(get)]
    seq: u64,
    /// True once a hard lifetime was reached (the SA refuses packets).
    #[pyo3(get)]
    expired: bool,
    /// When the SA last carried traffic, in seconds on the caller's clock (the last
    /// packet it encrypted or accepted; keepalives, dummies and refused packets do not
    /// count), or `None` before its first: `query_sa`'s use time.
    #[pyo3(get)]
    last_used: Option<f64>,
    stats: SaStats,
}

#[pymethods]
impl PyGatewaySa {
    /// The SA's counters (`SecurityAssociation.stats`' shape).
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, &self.stats)
    }

    fn __repr__(&self) -> String {
        format!(
            "GatewaySa(name={}, spi={:#x}, direction='{}', mode='{}', cipher='{}', seq={})",
            str_repr(&self.name),
            self.spi,
            self.direction,
            self.mode,
            self.cipher,
            self.seq
        )
    }
}

/// Parses one policy's text (`Policy::from_toml`) with the GIL released and before any
/// gateway lock is taken; a text that is not a valid policy raises `ConfigError`, as
/// the gateway's call would.
fn parse_policy(py: Python<'_>, text: &str) -> PyResult<Policy> {
    py.detach(|| Policy::from_toml(text))
        .map_err(|e| Failure::from(e).into_exception(py))
}
