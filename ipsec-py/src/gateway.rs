//! `Gateway` (the core's [`ipsec_core::Gateway`]: an SPD and the SAs it names, doing the
//! whole data path) and its answer, `GatewayVerdict`.
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
use crate::errors::{Failure, IpsecError};
use crate::reassembly::limits_arg;
use crate::sa::{
    PySaEvent, event_of, lock_releasing_gil, now_arg, packet_arg, packets_arg, poisoned, stats_dict,
};
use crate::spd::{PySpd, read_file, str_repr};
use core::ops::Range;
use core::time::Duration;
use ipsec_core::gateway::{Inbound, Outbound};
use ipsec_core::reassembly::MAX_DATAGRAM_LEN;
use ipsec_core::{Direction, Error, FragmentLimits, Gateway, PacketBuf, SpareBuffers, Spd};
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
        let core_spd = spd.get().core().clone();
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
