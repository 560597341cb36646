//! `SharedSa` and `SaLane`: one SA processed by several threads (the core's
//! [`ipsec_core::shared`]).
//!
//! `SharedSa(lanes=n, block=8, now=..., **sa_keywords)` creates the SA as `n` lanes; the
//! SA keywords are the `SecurityAssociation` constructor's, converted by the same code
//! ([`SaArgs`]). The `SharedSa` object is the shared part, for monitoring (`spi`, `seq`,
//! the summed `stats`); the packets go through its `SaLane` objects (`lanes`), one per
//! thread.
//!
//! # Threads and the GIL
//!
//! Each `SaLane` holds its core lane behind its own [`Mutex`], with the SA's discipline
//! ([`crate::sa`]): its `encrypt` / `decrypt` / `encrypt_many` / `decrypt_many` are the
//! SA's own code ([`Engine`]; batches of an SA whose bursts interleave go through the
//! lane's burst code, [`SaLane::encrypt_burst`]), so the batches release the GIL for
//! the whole batch. Two
//! Python threads on two lanes therefore run their batches in parallel and share only
//! what the core shares (the sequence number counter, leased in blocks; the inbound
//! replay window). A lane may still be called from several threads: the calls take
//! turns, as on an SA, but that is what the lanes are there to avoid.

use crate::convert::{self, Bad};
use crate::errors::Failure;
use crate::sa::{
    Engine, PySaEvent, SaArgs, State, Way, decrypt_batch, decrypt_one, encrypt_batch, encrypt_one,
    event_of, lock_releasing_gil, now_arg, stats_dict,
};
use core::time::Duration;
use ipsec_core::{
    ConfigError, Direction, LaneRefused, NAT_KEEPALIVE_MAX_LEN, PacketBuf, SaEvent, SaLane,
    SharedSa, SharedSaOptions,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use std::sync::Mutex;

/// A lane, or nothing once a gateway took it (`Gateway.add_sa_lane`).
impl Engine for Option<SaLane> {
    fn encrypt(&mut self, pkt: &mut PacketBuf<'_>, now: Duration) -> Result<(), Failure> {
        Ok(self
            .as_mut()
            .ok_or(Failure::LaneInstalled)?
            .encrypt(pkt, now)?)
    }

    fn decrypt(&mut self, pkt: &mut PacketBuf<'_>, now: Duration) -> Result<(), Failure> {
        Ok(self
            .as_mut()
            .ok_or(Failure::LaneInstalled)?
            .decrypt(pkt, now)?)
    }

    fn tailroom_for(&self, len: usize) -> usize {
        self.as_ref().map_or(0, |l| l.tailroom_for(len))
    }

    fn bursts_pay(&self) -> bool {
        self.as_ref().is_some_and(SaLane::bursts_interleave)
    }

    /// The lane's burst code ([`SaLane::encrypt_burst`]: the SA's, with the numbers
    /// of the lane's block; results and counters those of one packet at a time).
    fn encrypt_burst(
        &mut self,
        packets: &mut [PacketBuf<'_>],
        now: Duration,
    ) -> Vec<Result<(), Failure>> {
        lane_burst(self, Way::Encrypt, packets, now)
    }

    fn decrypt_burst(
        &mut self,
        packets: &mut [PacketBuf<'_>],
        now: Duration,
    ) -> Vec<Result<(), Failure>> {
        lane_burst(self, Way::Decrypt, packets, now)
    }
}

/// The burst call of the lane in `slot` for `way`, per packet its outcome (every
/// packet refused once a gateway took the lane).
fn lane_burst(
    slot: &mut Option<SaLane>,
    way: Way,
    packets: &mut [PacketBuf<'_>],
    now: Duration,
) -> Vec<Result<(), Failure>> {
    let Some(lane) = slot.as_mut() else {
        return packets
            .iter()
            .map(|_| Err(Failure::LaneInstalled))
            .collect();
    };
    let mut results = vec![Ok(()); packets.len()];
    match way {
        Way::Encrypt => lane.encrypt_burst(packets, &mut results, now),
        Way::Decrypt => lane.decrypt_burst(packets, &mut results, now),
    };
    results.into_iter().map(|r| Ok(r?)).collect()
}

/// One SA processed by several threads: the shared part (Python `ipsec.SharedSa`).
#[pyclass(module = "ipsec", name = "SharedSa", frozen)]
pub(crate) struct PySharedSa {
    shared: SharedSa,
    lanes: Vec<Py<PySaLane>>,
    direction: Direction,
    block: u32,
}

/// One thread's lane of a `SharedSa` (Python `ipsec.SaLane`).
#[pyclass(module = "ipsec", name = "SaLane", frozen)]
pub(crate) struct PySaLane {
    state: Mutex<State<Option<SaLane>>>,
    // Fixed at creation, read without the lock.
    index: usize,
    spi: u32,
    direction: Direction,
    /// `max_headroom()` of the lane's SA: constant for its life.
    headroom: usize,
}

#[pymethods]
impl PySharedSa {
    /// Creates the SA of the `SecurityAssociation` keyword arguments `config` at `now`
    /// as `lanes` lanes, leasing outbound sequence numbers `block` at a time.
    #[new]
    #[pyo3(
        signature = (*, lanes, block=None, now=None, **config),
        text_signature = "(*, lanes, block=8, now=0.0, spi, direction, mode, cipher, key, \
            integrity=None, integrity_key=b'', esn=False, replay_window=64, tunnel_src=None, \
            tunnel_dst=None, udp_encap=None, seq=0, soft_lifetime=None, hard_lifetime=None, \
            soft_lifetime_jitter=10, padding='blocks', tfc_pad_to=None, outer_ttl=64, \
            path_mtu=None, df='copy', nat_keepalive_interval=20.0, \
            nat_original_addresses=None, lookup='spi')"
    )]
    fn new(
        py: Python<'_>,
        lanes: &Bound<'_, PyAny>,
        block: Option<&Bound<'_, PyAny>>,
        now: Option<&Bound<'_, PyAny>>,
        config: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let n: u32 = convert::int(lanes, "lanes", Bad::Config)?;
        let mut options = SharedSaOptions::lanes(n as usize);
        if let Some(b) = convert::opt_int::<u32>(block, "block", Bad::Config)? {
            options = options.with_block(b);
        }
        let config = SaArgs::from_kwargs("SharedSa", config)?.config()?;
        let now = convert::opt_seconds(now, "now", Bad::Config)?.unwrap_or(Duration::ZERO);
        let (shared, core_lanes) = SharedSa::new(config, options, now).map_err(Failure::from)?;
        let direction = shared.direction();
        let spi = shared.spi();
        let lanes = core_lanes
            .into_iter()
            .map(|lane| {
                let index = lane.index();
                Py::new(
                    py,
                    PySaLane {
                        headroom: lane.max_headroom(),
                        state: Mutex::new(State::new(Some(lane), now)),
                        index,
                        spi,
                        direction,
                    },
                )
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PySharedSa {
            shared,
            lanes,
            direction,
            block: options.block,
        })
    }

    /// The lanes, in order (`lanes[i].index == i`): hand each to one thread. The same
    /// objects every time.
    #[getter]
    fn lanes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.lanes.iter().map(|l| l.bind(py)))
    }

    /// The SPI.
    #[getter]
    fn spi(&self) -> u32 {
        self.shared.spi()
    }

    /// `"outbound"` or `"inbound"`.
    #[getter]
    fn direction(&self) -> &'static str {
        self.direction.name()
    }

    /// Outbound sequence numbers a lane leases at a time.
    #[getter]
    fn block(&self) -> u32 {
        self.block
    }

    /// Outbound: the highest sequence number leased to a lane (every number up to it
    /// was or will be used by exactly one lane; the unused rest of each lane's block is
    /// never sent). Inbound: the highest sequence number accepted.
    #[getter]
    fn seq(&self) -> u64 {
        self.shared.seq()
    }

    /// The sum of the counters the lanes published (`SecurityAssociation.stats`'
    /// shape). A lane publishes when it leases a block (outbound), every 64 packets
    /// (inbound), on `SaLane.publish()` and when it is freed.
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        stats_dict(py, &self.shared.stats())
    }

    fn __repr__(&self) -> String {
        format!(
            "SharedSa(spi={:#x}, direction='{}', lanes={}, block={})",
            self.shared.spi(),
            self.direction.name(),
            self.lanes.len(),
            self.block
        )
    }
}

/// The lane, or the exception for one a gateway took.
fn lane(slot: &Option<SaLane>) -> PyResult<&SaLane> {
    slot.as_ref()
        .ok_or_else(|| Python::attach(|py| Failure::LaneInstalled.into_exception(py)))
}

/// [`lane`], mutable.
fn lane_mut(slot: &mut Option<SaLane>) -> PyResult<&mut SaLane> {
    slot.as_mut()
        .ok_or_else(|| Python::attach(|py| Failure::LaneInstalled.into_exception(py)))
}

impl PySaLane {
    /// Hands the lane to `install` (a gateway's `add_sa_lane` or `rekey_sa_lane`); a
    /// refused lane is put back, unchanged. Called without the GIL.
    pub(crate) fn install(
        &self,
        install: impl FnOnce(SaLane) -> Result<(), LaneRefused>,
    ) -> Result<(), Failure> {
        let mut st = self.state.lock().map_err(|_| {
            Failure::Config(ConfigError::new(
                "lane",
                "is unusable: an internal error (panic) happened while it was in use",
            ))
        })?;
        let lane = st.sa.take().ok_or(Failure::LaneInstalled)?;
        install(lane).map_err(|refused| {
            let LaneRefused { error, lane, .. } = refused;
            st.sa = Some(*lane);
            Failure::from(error)
        })
    }

    fn lock(&self, py: Python<'_>) -> PyResult<std::sync::MutexGuard<'_, State<Option<SaLane>>>> {
        lock_releasing_gil(py, &self.state)
    }
}

#[pymethods]
impl PySaLane {
    /// The lane's number (0-based).
    #[getter]
    fn index(&self) -> usize {
        self.index
    }

    /// The SPI (the shared SA's).
    #[getter]
    fn spi(&self) -> u32 {
        self.spi
    }

    /// `"outbound"` or `"inbound"`.
    #[getter]
    fn direction(&self) -> &'static str {
        self.direction.name()
    }

    /// `SecurityAssociation.encrypt` with the next sequence number of the lane's block.
    #[pyo3(signature = (packet, /, *, now=None))]
    fn encrypt<'py>(
        &self,
        py: Python<'py>,
        packet: &Bound<'py, PyAny>,
        now: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        encrypt_one(py, &self.state, self.headroom, packet, now)
    }

    /// `SecurityAssociation.decrypt`, checking and recording the sequence number in the
    /// shared replay window.
    #[pyo3(signature = (packet, /, *, now=None))]
    fn decrypt<'py>(
        &self,
        py: Python<'py>,
        packet: &Bound<'py, PyAny>,
        now: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        decrypt_one(py, &self.state, packet, now)
    }

    /// `SecurityAssociation.encrypt_many` on this lane, with the GIL released.
    #[pyo3(signature = (packets, /, *, now=None))]
    fn encrypt_many<'py>(
        &self,
        py: Python<'py>,
        packets: &Bound<'py, PyAny>,
        now: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        encrypt_batch(py, &self.state, self.headroom, packets, now)
    }

    /// `SecurityAssociation.decrypt_many` on this lane, with the GIL released.
    #[pyo3(signature = (packets, /, *, now=None))]
    fn decrypt_many<'py>(
        &self,
        py: Python<'py>,
        packets: &Bound<'py, PyAny>,
        now: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        decrypt_batch(py, &self.state, packets, now)
    }

    /// `SecurityAssociation.encrypt_batch` on this lane, with the GIL released.
    #[pyo3(signature = (batch, /, *, now=None))]
    fn encrypt_batch(
        &self,
        py: Python<'_>,
        batch: &Bound<'_, PyAny>,
        now: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        crate::batch::transform_batch(py, &self.state, Some(self.headroom), batch, now)
    }

    /// `SecurityAssociation.decrypt_batch` on this lane, with the GIL released.
    #[pyo3(signature = (batch, /, *, now=None))]
    fn decrypt_batch(
        &self,
        py: Python<'_>,
        batch: &Bound<'_, PyAny>,
        now: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        crate::batch::transform_batch(py, &self.state, None, batch, now)
    }

    /// The lane's own counters (`SecurityAssociation.stats`' shape).
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = lane(&self.lock(py)?.sa)?.stats();
        stats_dict(py, &stats)
    }

    /// Publishes the lane's counters to `SharedSa.stats`.
    fn publish(&self, py: Python<'_>) -> PyResult<()> {
        lane(&self.lock(py)?.sa)?.publish();
        Ok(())
    }

    /// The lane's next lifetime event at `now` (default: the last time given), or
    /// `None` (`SecurityAssociation.poll_event`; byte limits and the soft packet limit
    /// are split between the lanes, so each lane raises its own events).
    #[pyo3(signature = (now=None))]
    fn poll_event(
        &self,
        py: Python<'_>,
        now: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<PySaEvent>> {
        let now = now_arg(now)?;
        let event = {
            let mut st = self.lock(py)?;
            let now = st.time(now);
            lane_mut(&mut st.sa)?.poll_event(now)
        };
        Ok(event.and_then(event_of))
    }

    /// Every pending event of the lane, in order, until none is left.
    #[pyo3(signature = (now=None))]
    fn poll_events(
        &self,
        py: Python<'_>,
        now: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<PySaEvent>> {
        let now = now_arg(now)?;
        let events: Vec<SaEvent> = {
            let mut st = self.lock(py)?;
            let now = st.time(now);
            let lane = lane_mut(&mut st.sa)?;
            core::iter::from_fn(|| lane.poll_event(now)).collect()
        };
        Ok(events.into_iter().filter_map(event_of).collect())
    }

    /// The NAT-keepalive due at `now` (default: the last time given), counting it as
    /// sent, or `None` (`SecurityAssociation.poll_keepalive`; lane 0 only sends them).
    #[pyo3(signature = (now=None))]
    fn poll_keepalive<'py>(
        &self,
        py: Python<'py>,
        now: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let now = now_arg(now)?;
        let mut out = [0u8; NAT_KEEPALIVE_MAX_LEN];
        let len = {
            let mut st = self.lock(py)?;
            let now = st.time(now);
            lane_mut(&mut st.sa)?.poll_keepalive(now, &mut out)
        };
        Ok(len.map(|n| PyBytes::new(py, &out[..n])))
    }

    fn __repr__(&self) -> String {
        format!(
            "SaLane(index={}, spi={:#x}, direction='{}')",
            self.index,
            self.spi,
            self.direction.name()
        )
    }
}
