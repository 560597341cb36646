//! `SecurityAssociation`, `Lifetime`, `SaEvent`, and SA loading from `[[sa]]` TOML.
//!
//! # Threads and the GIL
//!
//! The core SA lives behind a [`Mutex`]: calls from several Python threads on one SA
//! take turns. The rule that keeps this free of deadlocks: **no code ever waits for the
//! GIL while holding an SA's mutex** (nothing under the lock creates Python objects
//! other than `bytes`, whose allocation runs no Python code and no garbage collection).
//! A thread that holds the GIL and finds the mutex taken releases the GIL while it
//! waits ([`PySecurityAssociation::lock`]). `encrypt_many` / `decrypt_many` allocate
//! their Python objects with the GIL, then release it ([`Python::detach`]) for the
//! whole batch (lock, copy, transform, unlock), then take it back to build the list.
//!
//! # Buffers
//!
//! `encrypt` writes the protected packet straight into the `bytes` object it returns:
//! the object is allocated with the SA's headroom and tailroom around the packet
//! (`max_headroom` / `tailroom_for`), the packet is copied once into it, and ESP is
//! applied in place. In tunnel mode the result fills the object exactly; in transport
//! mode the tailroom is a worst case over IP header lengths, so the (shorter) result is
//! copied into a second object. `decrypt` works in a scratch buffer owned by the SA and
//! copies the inner packet out once.
//!
//! # One implementation for SAs and lanes
//!
//! These four packet calls are written once ([`encrypt_one`], [`decrypt_one`],
//! [`encrypt_batch`], [`decrypt_batch`]) against a [`State`] whose object implements
//! [`Engine`]: the core SA here, a lane of a shared SA in [`crate::shared`].

use crate::convert::{self, Bad};
use crate::errors::{Failure, IpsecError};
use core::ptr::NonNull;
use core::time::Duration;
use ipsec_core::sa_file::{NamedSa, parse_sa_file};
use ipsec_core::{
    Cipher, DfPolicy, Direction, EspPadding, Integrity, Lifetime, LifetimeLimit, Mode,
    NAT_KEEPALIVE_MAX_LEN, PacketBuf, RestoreOptions, SaConfig, SaEvent, SaLookup, SaStats,
    SecurityAssociation, TfcPadding,
};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList};
use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, TryLockError};
use zeroize::Zeroizing;

/// The default of the `nat_keepalive_interval` keyword, in seconds.
const DEFAULT_KEEPALIVE_SECONDS: f64 = 20.0;
const _: () = assert!(SaConfig::DEFAULT_NAT_KEEPALIVE_INTERVAL.as_secs() == 20);

/// What the mutex protects: the core SA (or, for a lane of a shared SA, the lane:
/// [`Engine`]), the caller's latest time, a decrypt scratch buffer.
pub(crate) struct State<E = SecurityAssociation> {
    pub(crate) sa: E,
    /// The latest `now` the caller gave (creation time at first); used when a call
    /// gives none. The bindings never read a clock.
    pub(crate) now: Duration,
    pub(crate) scratch: Vec<u8>,
}

impl<E> State<E> {
    /// A state created at `now`.
    pub(crate) fn new(sa: E, now: Duration) -> Self {
        State {
            sa,
            now,
            scratch: Vec::new(),
        }
    }

    /// The time to use for a call: the one given (remembered), or the last one.
    pub(crate) fn time(&mut self, now: Option<Duration>) -> Duration {
        if let Some(n) = now {
            self.now = n;
        }
        self.now
    }
}

/// What the packet calls (`encrypt`, `decrypt` and their batches) need of the object
/// behind a [`State`]'s mutex: a whole SA, or one lane of a shared SA
/// ([`crate::shared`]). The functions [`encrypt_one`], [`decrypt_one`],
/// [`encrypt_batch`] and [`decrypt_batch`] are written once against it.
pub(crate) trait Engine: Send {
    /// Encrypts in place ([`SecurityAssociation::encrypt`]).
    fn encrypt(&mut self, pkt: &mut PacketBuf<'_>, now: Duration) -> Result<(), Failure>;
    /// Decrypts in place ([`SecurityAssociation::decrypt`]).
    fn decrypt(&mut self, pkt: &mut PacketBuf<'_>, now: Duration) -> Result<(), Failure>;
    /// The tailroom a packet of `len` bytes needs ([`SecurityAssociation::tailroom_for`]).
    fn tailroom_for(&self, len: usize) -> usize;
    /// Whether [`Engine::encrypt_burst`] and [`Engine::decrypt_burst`] do better than
    /// one packet at a time ([`SecurityAssociation::bursts_interleave`]).
    fn bursts_pay(&self) -> bool {
        false
    }
    /// Encrypts a burst in place; per packet, the outcome.
    fn encrypt_burst(
        &mut self,
        packets: &mut [PacketBuf<'_>],
        now: Duration,
    ) -> Vec<Result<(), Failure>> {
        packets.iter_mut().map(|p| self.encrypt(p, now)).collect()
    }
    /// Decrypts a burst in place; per packet, the outcome.
    fn decrypt_burst(
        &mut self,
        packets: &mut [PacketBuf<'_>],
        now: Duration,
    ) -> Vec<Result<(), Failure>> {
        packets.iter_mut().map(|p| self.decrypt(p, now)).collect()
    }
}

impl Engine for SecurityAssociation {
    fn encrypt(&mut self, pkt: &mut PacketBuf<'_>, now: Duration) -> Result<(), Failure> {
        Ok(SecurityAssociation::encrypt(self, pkt, now)?)
    }

    fn decrypt(&mut self, pkt: &mut PacketBuf<'_>, now: Duration) -> Result<(), Failure> {
        Ok(SecurityAssociation::decrypt(self, pkt, now)?)
    }

    fn tailroom_for(&self, len: usize) -> usize {
        SecurityAssociation::tailroom_for(self, len)
    }

    fn bursts_pay(&self) -> bool {
        self.bursts_interleave()
    }

    /// The SA's burst code (AES-CBC + HMAC chains and hashes side by side; results
    /// and counters those of one packet at a time).
    fn encrypt_burst(
        &mut self,
        packets: &mut [PacketBuf<'_>],
        now: Duration,
    ) -> Vec<Result<(), Failure>> {
        let mut results = vec![Ok(()); packets.len()];
        SecurityAssociation::encrypt_burst(self, packets, &mut results, now);
        results.into_iter().map(|r| Ok(r?)).collect()
    }

    fn decrypt_burst(
        &mut self,
        packets: &mut [PacketBuf<'_>],
        now: Duration,
    ) -> Vec<Result<(), Failure>> {
        let mut results = vec![Ok(()); packets.len()];
        SecurityAssociation::decrypt_burst(self, packets, &mut results, now);
        results.into_iter().map(|r| Ok(r?)).collect()
    }
}

/// Which way [`burst_packets`] transforms.
#[derive(Clone, Copy)]
pub(crate) enum Way {
    Encrypt,
    Decrypt,
}

/// Transforms the packets of `bufs` (each a packet, or the failure that refused it
/// first) with `engine` as one burst (for engines whose bursts pay,
/// [`Engine::bursts_pay`]: one packet at a time is cheaper where they do not). Returns,
/// in order, each packet's outcome: its window (offset and length in its buffer) or
/// its failure.
pub(crate) fn burst_packets<'a, E: Engine>(
    engine: &mut E,
    way: Way,
    now: Duration,
    bufs: impl IntoIterator<Item = Result<PacketBuf<'a>, Failure>>,
) -> Vec<Result<(usize, usize), Failure>> {
    let mut refused = Vec::new();
    let mut packets = Vec::new();
    for b in bufs {
        match b {
            Ok(p) => {
                refused.push(None);
                packets.push(p);
            }
            Err(e) => refused.push(Some(e)),
        }
    }
    let results = match way {
        Way::Encrypt => engine.encrypt_burst(&mut packets, now),
        Way::Decrypt => engine.decrypt_burst(&mut packets, now),
    };
    let mut done = packets
        .iter()
        .zip(results)
        .map(|(p, r)| r.map(|()| (p.offset(), p.len())));
    refused
        .into_iter()
        .map(|r| match r {
            Some(e) => Err(e),
            None => done.next().expect("one result a packet"),
        })
        .collect()
}

/// One direction of an IPsec SA (Python `ipsec.SecurityAssociation`).
#[pyclass(module = "ipsec", name = "SecurityAssociation", frozen)]
pub(crate) struct PySecurityAssociation {
    state: Mutex<State>,
    // Fixed at creation, read without the lock.
    spi: u32,
    direction: Direction,
    mode: Mode,
    cipher: Cipher,
    integrity: Option<Integrity>,
    esn: bool,
    tunnel: Option<(IpAddr, IpAddr)>,
    udp_encap: Option<(u16, u16)>,
    lookup: SaLookup,
    /// `max_headroom()`: constant for the SA's life.
    headroom: usize,
}

/// A `bytes` object's buffer, written by a detached batch. Only created for objects
/// that no other code can reach yet.
struct OutSlot {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: the pointed-to buffer belongs to a fresh `bytes` object referenced only by
// the batch that made it (held in a local Vec while the GIL is released); exactly one
// thread (the detached batch) writes it, and nothing reads it until the batch returns.
#[allow(unsafe_code)]
unsafe impl Send for OutSlot {}

pub(crate) fn poisoned() -> PyErr {
    PyErr::new::<IpsecError, _>(
        "this SA is unusable: an internal error (panic) happened while it was in use",
    )
}

/// A packet argument: `bytes` is borrowed, `bytearray` copied.
pub(crate) fn packet_arg<'a>(obj: &'a Bound<'_, PyAny>, field: &str) -> PyResult<Cow<'a, [u8]>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        Ok(Cow::Borrowed(b.as_bytes()))
    } else if let Ok(b) = obj.cast::<PyByteArray>() {
        Ok(Cow::Owned(b.to_vec()))
    } else {
        Err(PyTypeError::new_err(format!(
            "{field} must be bytes or bytearray, got {}",
            convert::type_name(obj)
        )))
    }
}

/// A key argument: `bytes` is borrowed, `bytearray` copied into memory that is wiped
/// when dropped (the core keeps its own zeroized copy).
fn key_arg<'a>(obj: &'a Bound<'_, PyAny>, field: &str) -> PyResult<KeyBytes<'a>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        Ok(KeyBytes::Borrowed(b.as_bytes()))
    } else if let Ok(b) = obj.cast::<PyByteArray>() {
        Ok(KeyBytes::Owned(Zeroizing::new(b.to_vec())))
    } else {
        Err(PyTypeError::new_err(format!(
            "{field} must be bytes or bytearray, got {}",
            convert::type_name(obj)
        )))
    }
}

/// Key bytes, borrowed from a `bytes` object or a wiped-on-drop copy.
enum KeyBytes<'a> {
    Borrowed(&'a [u8]),
    Owned(Zeroizing<Vec<u8>>),
}

impl core::ops::Deref for KeyBytes<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            KeyBytes::Borrowed(b) => b,
            KeyBytes::Owned(v) => v,
        }
    }
}

/// The packets of an `*_many` call: any iterable of `bytes`/`bytearray`. `bytes` are
/// referenced (not copied), `bytearray` contents copied, so the batch can run without
/// the GIL even if the caller's list changes meanwhile.
pub(crate) fn packets_arg(obj: &Bound<'_, PyAny>) -> PyResult<Vec<PyBackedBytes>> {
    let mut out = Vec::with_capacity(obj.len().unwrap_or(0));
    let iter = obj.try_iter().map_err(|_| {
        PyTypeError::new_err(format!(
            "packets must be a list (or iterable) of bytes, got {}",
            convert::type_name(obj)
        ))
    })?;
    for (i, item) in iter.enumerate() {
        let item = item?;
        if let Ok(b) = item.cast::<PyBytes>() {
            out.push(PyBackedBytes::from(b.clone()));
        } else if let Ok(b) = item.cast::<PyByteArray>() {
            out.push(PyBackedBytes::from(b.clone()));
        } else {
            return Err(PyTypeError::new_err(format!(
                "packets[{i}] must be bytes or bytearray, got {}",
                convert::type_name(&item)
            )));
        }
    }
    Ok(out)
}

fn lifetime_arg(obj: Option<&Bound<'_, PyAny>>, field: &str) -> PyResult<Option<Lifetime>> {
    match obj {
        Some(o) if !o.is_none() => match o.cast::<PyLifetime>() {
            Ok(l) => l.get().to_core().map(Some),
            Err(_) => Err(PyTypeError::new_err(format!(
                "{field} must be an ipsec.Lifetime or None, got {}",
                convert::type_name(o)
            ))),
        },
        _ => Ok(None),
    }
}

pub(crate) fn now_arg(now: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Duration>> {
    convert::opt_seconds(now, "now", Bad::Value)
}

impl PySecurityAssociation {
    /// Wraps a created core SA.
    fn wrap(sa: SecurityAssociation, now: Duration) -> Self {
        PySecurityAssociation {
            spi: sa.spi(),
            direction: sa.direction(),
            mode: sa.mode(),
            cipher: sa.cipher(),
            integrity: sa.integrity(),
            esn: sa.esn(),
            tunnel: sa.tunnel(),
            udp_encap: sa.udp_encap(),
            lookup: sa.lookup(),
            headroom: sa.max_headroom(),
            state: Mutex::new(State::new(sa, now)),
        }
    }

    /// Creates the SA from a configuration (constructor and file loading).
    fn create(config: SaConfig, now: Duration) -> Result<Self, Failure> {
        Ok(Self::wrap(SecurityAssociation::new(config, now)?, now))
    }

    /// Locks the SA while holding the GIL. When another thread holds the SA (a batch
    /// running detached), waits for it with the GIL released, then retries: the GIL is
    /// never waited for while the mutex is held.
    fn lock(&self, py: Python<'_>) -> PyResult<MutexGuard<'_, State>> {
        lock_releasing_gil(py, &self.state)
    }

    /// The time to use for a call: the one given (remembered), or the last one.
    fn time(state: &mut State, now: Option<Duration>) -> Duration {
        state.time(now)
    }
}

/// Locks `mutex` while holding the GIL. When another thread holds it (a batch running
/// detached), waits for it with the GIL released, then retries: the GIL is never waited
/// for while the mutex is held. Shared by the SA and the gateway.
pub(crate) fn lock_releasing_gil<'a, T: Send>(
    py: Python<'_>,
    mutex: &'a Mutex<T>,
) -> PyResult<MutexGuard<'a, T>> {
    loop {
        match mutex.try_lock() {
            Ok(guard) => return Ok(guard),
            Err(TryLockError::WouldBlock) => py.detach(|| drop(mutex.lock())),
            Err(TryLockError::Poisoned(_)) => return Err(poisoned()),
        }
    }
}

/// `encrypt` of an SA or a lane: the protected packet is written straight into the
/// `bytes` object returned (made under the lock, where no other Python object is).
pub(crate) fn encrypt_one<'py, E: Engine>(
    py: Python<'py>,
    state: &Mutex<State<E>>,
    head: usize,
    packet: &Bound<'py, PyAny>,
    now: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let data = packet_arg(packet, "packet")?;
    let now = now_arg(now)?;
    let len = data.len();
    let mut outcome = Ok((0, 0));
    let total;
    let out = {
        let mut st = lock_releasing_gil(py, state)?;
        let now = st.time(now);
        total = head + len + st.sa.tailroom_for(len);
        // Only a `bytes` object is created under the lock (no Python code runs).
        PyBytes::new_with(py, total, |buf| {
            buf[head..head + len].copy_from_slice(&data);
            outcome = PacketBuf::new(buf, head, len)
                .map_err(Failure::from)
                .and_then(|mut pkt| {
                    st.sa
                        .encrypt(&mut pkt, now)
                        .map(|()| (pkt.offset(), pkt.len()))
                });
            Ok(())
        })
    }?;
    match outcome {
        Ok((0, n)) if n == total => Ok(out),
        Ok((off, n)) => Ok(PyBytes::new(py, &out.as_bytes()[off..off + n])),
        Err(e) => Err(e.into_exception(py)),
    }
}

/// `decrypt` of an SA or a lane, in the state's scratch buffer.
pub(crate) fn decrypt_one<'py, E: Engine>(
    py: Python<'py>,
    state: &Mutex<State<E>>,
    packet: &Bound<'py, PyAny>,
    now: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let data = packet_arg(packet, "packet")?;
    let now = now_arg(now)?;
    let outcome = {
        let mut st = lock_releasing_gil(py, state)?;
        let now = st.time(now);
        let State { sa, scratch, .. } = &mut *st;
        scratch.clear();
        scratch.extend_from_slice(&data);
        PacketBuf::new(scratch, 0, data.len())
            .map_err(Failure::from)
            .and_then(|mut pkt| {
                sa.decrypt(&mut pkt, now)
                    .map(|()| pkt.data().len())
                    .map(|n| (pkt.offset(), n))
            })
            .map(|(off, n)| PyBytes::new(py, &scratch[off..off + n]))
    };
    outcome.map_err(|e| e.into_exception(py))
}

/// `encrypt_many` of an SA or a lane: the output `bytes` objects are made with the
/// GIL, then written by the batch with the GIL released (lock, copy, transform,
/// unlock); the first refused packet raises, with its position in `.index`.
pub(crate) fn encrypt_batch<'py, E: Engine>(
    py: Python<'py>,
    state: &Mutex<State<E>>,
    head: usize,
    packets: &Bound<'py, PyAny>,
    now: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyList>> {
    let inputs = packets_arg(packets)?;
    let now = now_arg(now)?;
    // The sizes depend only on the SA's configuration; the lock is held briefly.
    let sizes: Vec<usize> = {
        let st = lock_releasing_gil(py, state)?;
        inputs
            .iter()
            .map(|p| head + p.len() + st.sa.tailroom_for(p.len()))
            .collect()
    };
    let mut outs = Vec::with_capacity(inputs.len());
    let mut slots = Vec::with_capacity(inputs.len());
    for &size in &sizes {
        let mut ptr = NonNull::dangling();
        let b = PyBytes::new_with(py, size, |buf| {
            ptr = NonNull::from(buf).cast::<u8>();
            Ok(())
        })?;
        slots.push(OutSlot { ptr, cap: size });
        outs.push(b);
    }
    let results = py.detach(|| {
        let mut st = state.lock().map_err(|_| ())?;
        let now = st.time(now);
        let bufs = slots.into_iter().zip(&inputs).map(|(slot, input)| {
            // SAFETY: `slot` describes the `cap` bytes of a bytes object made above
            // for this batch alone (see `OutSlot`); it stays alive in `outs` until
            // after this closure returns, and this is the only reference to its
            // buffer.
            #[allow(unsafe_code)]
            let buf = unsafe { core::slice::from_raw_parts_mut(slot.ptr.as_ptr(), slot.cap) };
            let len = input.len();
            buf[head..head + len].copy_from_slice(input);
            PacketBuf::new(buf, head, len).map_err(Failure::from)
        });
        if st.sa.bursts_pay() {
            return Ok(burst_packets(&mut st.sa, Way::Encrypt, now, bufs));
        }
        Ok(bufs
            .map(|b| {
                b.and_then(|mut pkt| {
                    st.sa.encrypt(&mut pkt, now)?;
                    Ok((pkt.offset(), pkt.len()))
                })
            })
            .collect())
    });
    let results = results.map_err(|()| poisoned())?;
    let mut items = Vec::with_capacity(outs.len());
    let mut first_error = None;
    for (i, (out, result)) in outs.into_iter().zip(results).enumerate() {
        match result {
            Ok((0, n)) if n == sizes[i] => items.push(out),
            Ok((off, n)) => items.push(PyBytes::new(py, &out.as_bytes()[off..off + n])),
            Err(e) => {
                first_error.get_or_insert((i, e));
            }
        }
    }
    if let Some((i, e)) = first_error {
        let err = e.into_exception(py);
        err.value(py).setattr("index", i)?;
        return Err(err);
    }
    PyList::new(py, items)
}

/// `decrypt_many` of an SA or a lane: copied into one arena and decrypted with the
/// GIL released; per packet, the inner packet or the exception that dropped it.
pub(crate) fn decrypt_batch<'py, E: Engine>(
    py: Python<'py>,
    state: &Mutex<State<E>>,
    packets: &Bound<'py, PyAny>,
    now: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyList>> {
    let inputs = packets_arg(packets)?;
    let now = now_arg(now)?;
    let total: usize = inputs.iter().map(|p| p.len()).sum();
    let batch =
        py.detach(|| {
            // One arena for the batch: each packet is copied in and decrypted in place.
            let mut arena = vec![0u8; total];
            let mut st = state.lock().map_err(|_| ())?;
            let now = st.time(now);
            if st.sa.bursts_pay() {
                // One burst over the arena's parts; each window made arena-relative.
                let mut rest = &mut arena[..];
                let bufs = inputs.iter().map(|input| {
                    let (buf, tail) = core::mem::take(&mut rest).split_at_mut(input.len());
                    rest = tail;
                    buf.copy_from_slice(input);
                    PacketBuf::new(buf, 0, input.len()).map_err(Failure::from)
                });
                let mut start = 0;
                let results = burst_packets(&mut st.sa, Way::Decrypt, now, bufs)
                    .into_iter()
                    .zip(&inputs)
                    .map(|(r, input)| {
                        let at = start;
                        start += input.len();
                        r.map(|(off, n)| (at + off, n))
                    })
                    .collect();
                drop(st);
                return Ok((arena, results));
            }
            let mut start = 0;
            let mut results = Vec::with_capacity(inputs.len());
            for input in &inputs {
                let len = input.len();
                let buf = &mut arena[start..start + len];
                buf.copy_from_slice(input);
                results.push(PacketBuf::new(buf, 0, len).map_err(Failure::from).and_then(
                    |mut pkt| {
                        st.sa
                            .decrypt(&mut pkt, now)
                            .map(|()| (start + pkt.offset(), pkt.len()))
                    },
                ));
                start += len;
            }
            drop(st);
            Ok((arena, results))
        });
    let (arena, results) = batch.map_err(|()| poisoned())?;
    let mut items: Vec<Bound<'py, PyAny>> = Vec::with_capacity(results.len());
    for r in results {
        items.push(match r {
            Ok((off, n)) => PyBytes::new(py, &arena[off..off + n]).into_any(),
            Err(e) => e
                .into_exception(py)
                .into_value(py)
                .into_bound(py)
                .into_any(),
        });
    }
    PyList::new(py, items)
}

/// The counters as a dict: `packets`, `bytes` and one key per drop reason (the shape of
/// `SecurityAssociation.stats`, also used for the gateway's own counters).
pub(crate) fn stats_dict<'py>(py: Python<'py>, stats: &SaStats) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("packets", stats.packets)?;
    d.set_item("bytes", stats.bytes)?;
    for (reason, count) in stats.drops() {
        d.set_item(reason.as_str(), count)?;
    }
    Ok(d)
}

pub(crate) fn event_of(e: SaEvent) -> Option<PySaEvent> {
    let (kind, limit) = match e {
        SaEvent::Rekey(l) => ("rekey", l),
        SaEvent::Expired(l) => ("expired", l),
        _ => return None,
    };
    Some(PySaEvent {
        kind,
        limit: limit_name(limit),
    })
}

fn limit_name(l: LifetimeLimit) -> &'static str {
    l.as_str()
}

/// The SA configuration arguments of `SecurityAssociation(...)`, shared by the
/// constructor and the gateway's `add_sa` / `rekey_sa` (which take them as keyword
/// arguments, [`SaArgs::from_kwargs`]): one conversion to an [`SaConfig`] for all.
pub(crate) struct SaArgs<'py> {
    spi: Bound<'py, PyAny>,
    direction: Bound<'py, PyAny>,
    mode: Bound<'py, PyAny>,
    cipher: Bound<'py, PyAny>,
    key: Bound<'py, PyAny>,
    integrity: Option<Bound<'py, PyAny>>,
    integrity_key: Option<Bound<'py, PyAny>>,
    esn: Option<Bound<'py, PyAny>>,
    replay_window: Option<Bound<'py, PyAny>>,
    tunnel_src: Option<Bound<'py, PyAny>>,
    tunnel_dst: Option<Bound<'py, PyAny>>,
    udp_encap: Option<Bound<'py, PyAny>>,
    seq: Option<Bound<'py, PyAny>>,
    soft_lifetime: Option<Bound<'py, PyAny>>,
    hard_lifetime: Option<Bound<'py, PyAny>>,
    soft_lifetime_jitter: Option<Bound<'py, PyAny>>,
    padding: Option<Bound<'py, PyAny>>,
    tfc_pad_to: Option<Bound<'py, PyAny>>,
    outer_ttl: Option<Bound<'py, PyAny>>,
    path_mtu: Option<Bound<'py, PyAny>>,
    df: Option<Bound<'py, PyAny>>,
    /// Seconds; `None`: no keepalives (the keyword's default is 20 seconds).
    nat_keepalive_interval: Option<f64>,
    nat_original_addresses: Option<Bound<'py, PyAny>>,
    lookup: Option<Bound<'py, PyAny>>,
}

/// The keywords of [`SaArgs`], in the constructor's order; the first five are required.
pub(crate) const SA_KEYWORDS: [&str; 24] = [
    "spi",
    "direction",
    "mode",
    "cipher",
    "key",
    "integrity",
    "integrity_key",
    "esn",
    "replay_window",
    "tunnel_src",
    "tunnel_dst",
    "udp_encap",
    "seq",
    "soft_lifetime",
    "hard_lifetime",
    "soft_lifetime_jitter",
    "padding",
    "tfc_pad_to",
    "outer_ttl",
    "path_mtu",
    "df",
    "nat_keepalive_interval",
    "nat_original_addresses",
    "lookup",
];

impl<'py> SaArgs<'py> {
    /// The arguments from the keyword arguments `kwargs` of the method `method` (for
    /// messages): the constructor's keywords (except `now`), the first five required.
    /// An unknown or missing keyword raises `TypeError`, as Python's own call checks do.
    pub(crate) fn from_kwargs(method: &str, kwargs: Option<&Bound<'py, PyDict>>) -> PyResult<Self> {
        let mut found: [Option<Bound<'py, PyAny>>; 24] = Default::default();
        if let Some(kwargs) = kwargs {
            for (k, v) in kwargs.iter() {
                let key = k.extract::<PyBackedStr>()?;
                let Some(i) = SA_KEYWORDS.iter().position(|n| **n == *key) else {
                    return Err(PyTypeError::new_err(format!(
                        "{method}() got an unexpected keyword argument '{}'",
                        &*key
                    )));
                };
                found[i] = Some(v);
            }
        }
        let missing: Vec<String> = SA_KEYWORDS[..5]
            .iter()
            .zip(&found)
            .filter(|(_, v)| v.is_none())
            .map(|(n, _)| format!("'{n}'"))
            .collect();
        if !missing.is_empty() {
            return Err(PyTypeError::new_err(format!(
                "{method}() missing required keyword argument{}: {}",
                if missing.len() == 1 { "" } else { "s" },
                missing.join(", ")
            )));
        }
        let [
            spi,
            direction,
            mode,
            cipher,
            key,
            integrity,
            integrity_key,
            esn,
            replay_window,
            tunnel_src,
            tunnel_dst,
            udp_encap,
            seq,
            soft_lifetime,
            hard_lifetime,
            soft_lifetime_jitter,
            padding,
            tfc_pad_to,
            outer_ttl,
            path_mtu,
            df,
            nat_keepalive_interval,
            nat_original_addresses,
            lookup,
        ] = found;
        // As the constructor's signature: left out, 20 seconds; None, no keepalives.
        let nat_keepalive_interval = match nat_keepalive_interval {
            None => Some(DEFAULT_KEEPALIVE_SECONDS),
            Some(v) if v.is_none() => None,
            Some(v) => Some(v.extract::<f64>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "nat_keepalive_interval must be a number of seconds or None, got {}",
                    convert::type_name(&v)
                ))
            })?),
        };
        let required = |v: Option<Bound<'py, PyAny>>| v.expect("checked above");
        Ok(SaArgs {
            spi: required(spi),
            direction: required(direction),
            mode: required(mode),
            cipher: required(cipher),
            key: required(key),
            integrity,
            integrity_key,
            esn,
            replay_window,
            tunnel_src,
            tunnel_dst,
            udp_encap,
            seq,
            soft_lifetime,
            hard_lifetime,
            soft_lifetime_jitter,
            padding,
            tfc_pad_to,
            outer_ttl,
            path_mtu,
            df,
            nat_keepalive_interval,
            nat_original_addresses,
            lookup,
        })
    }

    /// Converts the arguments to an SA configuration (checked by the core when the SA
    /// is created). Wrong types raise `TypeError`, bad values `ConfigError`.
    pub(crate) fn config(&self) -> PyResult<SaConfig> {
        let name = |o: &Bound<'_, PyAny>, f: &str| -> PyResult<String> {
            Ok(convert::string(o, f)?.to_cow()?.into_owned())
        };
        let spi: u32 = convert::int(&self.spi, "spi", Bad::Config)?;
        let direction =
            Direction::from_name(&name(&self.direction, "direction")?).map_err(Failure::from)?;
        let mode = Mode::from_name(&name(&self.mode, "mode")?).map_err(Failure::from)?;
        let cipher = Cipher::from_name(&name(&self.cipher, "cipher")?).map_err(Failure::from)?;
        let key = key_arg(&self.key, "key")?;
        let mut cfg = SaConfig::new(spi, direction, mode, cipher, &key);
        let integrity_key = match self.integrity_key.as_ref() {
            Some(k) if !k.is_none() => Some(key_arg(k, "integrity_key")?),
            _ => None,
        };
        match self.integrity.as_ref() {
            Some(i) if !i.is_none() => {
                let alg = Integrity::from_name(&name(i, "integrity")?).map_err(Failure::from)?;
                cfg.integrity(alg, integrity_key.as_deref().unwrap_or(&[]));
            }
            _ => {
                if integrity_key.as_ref().is_some_and(|k| !k.is_empty()) {
                    return Err(crate::errors::config(
                        "integrity_key",
                        "given without an integrity algorithm",
                    ));
                }
            }
        }
        cfg.esn(convert::boolean(self.esn.as_ref(), "esn", false)?);
        if let Some(w) =
            convert::opt_int::<u32>(self.replay_window.as_ref(), "replay_window", Bad::Config)?
        {
            // An outbound SA has no window. As in the C struct, the signature's default
            // (64, which a caller passing arguments by position must give) and 0 ("no
            // window") mean "none" there; another value is refused by the core.
            let unset = [0, SaConfig::DEFAULT_REPLAY_WINDOW];
            if direction != Direction::Outbound || !unset.contains(&w) {
                cfg.replay_window(w);
            }
        }
        if let Some((src, dst)) =
            convert::endpoints(self.tunnel_src.as_ref(), self.tunnel_dst.as_ref())?
        {
            cfg.tunnel(src, dst);
        }
        if let Some((src, dst)) = convert::udp_ports(self.udp_encap.as_ref())? {
            cfg.udp_encap(src, dst);
        }
        if let Some(s) = convert::opt_int::<u64>(self.seq.as_ref(), "seq", Bad::Config)? {
            cfg.seq(s);
        }
        if let Some(l) = lifetime_arg(self.soft_lifetime.as_ref(), "soft_lifetime")? {
            cfg.soft_lifetime(l);
        }
        if let Some(l) = lifetime_arg(self.hard_lifetime.as_ref(), "hard_lifetime")? {
            cfg.hard_lifetime(l);
        }
        if let Some(j) = convert::opt_int::<u32>(
            self.soft_lifetime_jitter.as_ref(),
            "soft_lifetime_jitter",
            Bad::Config,
        )? {
            cfg.soft_lifetime_jitter(j);
        }
        if let Some(p) = self.padding.as_ref().filter(|p| !p.is_none()) {
            cfg.padding(EspPadding::from_name(&name(p, "padding")?).map_err(Failure::from)?);
        }
        if let Some(n) =
            convert::opt_int::<u16>(self.tfc_pad_to.as_ref(), "tfc_pad_to", Bad::Config)?
        {
            cfg.tfc_padding(TfcPadding::PadTo(n));
        }
        if let Some(t) = convert::opt_int::<u8>(self.outer_ttl.as_ref(), "outer_ttl", Bad::Config)?
        {
            cfg.outer_ttl(t);
        }
        cfg.path_mtu(convert::opt_int::<u16>(
            self.path_mtu.as_ref(),
            "path_mtu",
            Bad::Config,
        )?);
        if let Some(d) = self.df.as_ref().filter(|d| !d.is_none()) {
            cfg.df(DfPolicy::from_name(&name(d, "df")?).map_err(Failure::from)?);
        }
        cfg.nat_keepalive_interval(match self.nat_keepalive_interval {
            Some(s) => Some(convert::seconds(s, "nat_keepalive_interval", Bad::Config)?),
            None => None,
        });
        if let Some(pair) = self
            .nat_original_addresses
            .as_ref()
            .filter(|o| !o.is_none())
        {
            let (src, dst): (Bound<'_, PyAny>, Bound<'_, PyAny>) =
                pair.extract().map_err(|_| {
                    PyTypeError::new_err(format!(
                        "nat_original_addresses must be a (src, dst) tuple of addresses, got {}",
                        convert::type_name(pair)
                    ))
                })?;
            cfg.nat_original_addresses(
                convert::addr(&src, "nat_original_addresses", Bad::Config)?,
                convert::addr(&dst, "nat_original_addresses", Bad::Config)?,
            );
        }
        if let Some(l) = self.lookup.as_ref().filter(|l| !l.is_none()) {
            cfg.lookup(SaLookup::from_name(&name(l, "lookup")?).map_err(Failure::from)?);
        }
        Ok(cfg)
    }
}

#[pymethods]
impl PySecurityAssociation {
    /// Creates an SA. See the package documentation for every argument.
    #[new]
    #[pyo3(signature = (
        spi, direction, mode, cipher, key, integrity=None, integrity_key=None, esn=None,
        replay_window=None, tunnel_src=None, tunnel_dst=None, udp_encap=None, seq=None, *,
        soft_lifetime=None, hard_lifetime=None, soft_lifetime_jitter=None, padding=None,
        tfc_pad_to=None, outer_ttl=None, path_mtu=None, df=None,
        nat_keepalive_interval=Some(DEFAULT_KEEPALIVE_SECONDS), nat_original_addresses=None,
        lookup=None, now=None
    ), text_signature = "(spi, direction, mode, cipher, key, integrity=None, integrity_key=b'', \
        esn=False, replay_window=64, tunnel_src=None, tunnel_dst=None, udp_encap=None, seq=0, *, \
        soft_lifetime=None, hard_lifetime=None, soft_lifetime_jitter=10, padding='blocks', \
        tfc_pad_to=None, outer_ttl=64, \
        path_mtu=None, df='copy', nat_keepalive_interval=20.0, nat_original_addresses=None, \
        lookup='spi', now=0.0)")]
    #[allow(clippy::too_many_arguments)]
    fn new(
        spi: &Bound<'_, PyAny>,
        direction: &Bound<'_, PyAny>,
        mode: &Bound<'_, PyAny>,
        cipher: &Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
        integrity: Option<&Bound<'_, PyAny>>,
        integrity_key: Option<&Bound<'_, PyAny>>,
        esn: Option<&Bound<'_, PyAny>>,
        replay_window: Option<&Bound<'_, PyAny>>,
        tunnel_src: Option<&Bound<'_, PyAny>>,
        tunnel_dst: Option<&Bound<'_, PyAny>>,
        udp_encap: Option<&Bound<'_, PyAny>>,
        seq: Option<&Bound<'_, PyAny>>,
        soft_lifetime: Option<&Bound<'_, PyAny>>,
        hard_lifetime: Option<&Bound<'_, PyAny>>,
        soft_lifetime_jitter: Option<&Bound<'_, PyAny>>,
        padding: Option<&Bound<'_, PyAny>>,
        tfc_pad_to: Option<&Bound<'_, PyAny>>,
        outer_ttl: Option<&Bound<'_, PyAny>>,
        path_mtu: Option<&Bound<'_, PyAny>>,
        df: Option<&Bound<'_, PyAny>>,
        nat_keepalive_interval: Option<f64>,
        nat_original_addresses: Option<&Bound<'_, PyAny>>,
        lookup: Option<&Bound<'_, PyAny>>,
        now: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let config = SaArgs {
            spi: spi.clone(),
            direction: direction.clone(),
            mode: mode.clone(),
            cipher: cipher.clone(),
            key: key.clone(),
            integrity: integrity.cloned(),
            integrity_key: integrity_key.cloned(),
            esn: esn.cloned(),
            replay_window: replay_window.cloned(),
            tunnel_src: tunnel_src.cloned(),
            tunnel_dst: tunnel_dst.cloned(),
            udp_encap: udp_encap.cloned(),
            seq: seq.cloned(),
            soft_lifetime: soft_lifetime.cloned(),
            hard_lifetime: hard_lifetime.cloned(),
            soft_lifetime_jitter: soft_lifetime_jitter.cloned(),
            padding: padding.cloned(),
            tfc_pad_to: tfc_pad_to.cloned(),
            outer_ttl: outer_ttl.cloned(),
            path_mtu: path_mtu.cloned(),
            df: df.cloned(),
            nat_keepalive_interval,
            nat_original_addresses: nat_original_addresses.cloned(),
            lookup: lookup.cloned(),
        }
        .config()?;
        let now = convert::opt_seconds(now, "now", Bad::Config)?.unwrap_or(Duration::ZERO);
        Ok(Self::create(config, now)?)
    }

    /// Protects one IP packet: the whole IP packet in, the whole protected packet out.
    #[pyo3(signature = (packet, /, *, now=None))]
    fn encrypt<'py>(
        &self,
        py: Python<'py>,
        packet: &Bound<'py, PyAny>,
        now: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        encrypt_one(py, &self.state, self.headroom, packet, now)
    }

    /// Removes ESP from one packet: the outer packet in, the inner (tunnel) or restored
    /// (transport) packet out.
    #[pyo3(signature = (packet, /, *, now=None))]
    fn decrypt<'py>(
        &self,
        py: Python<'py>,
        packet: &Bound<'py, PyAny>,
        now: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        decrypt_one(py, &self.state, packet, now)
    }

    /// Protects a batch of packets with the GIL released; returns one `bytes` per packet.
    /// AES-CBC + HMAC batches go through the SA's burst code (CBC chains and hashes of
    /// several packets side by side); every packet comes out as `encrypt` makes it.
    #[pyo3(signature = (packets, /, *, now=None))]
    fn encrypt_many<'py>(
        &self,
        py: Python<'py>,
        packets: &Bound<'py, PyAny>,
        now: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        encrypt_batch(py, &self.state, self.headroom, packets, now)
    }

    /// Removes ESP from a batch of packets with the GIL released; returns, per packet,
    /// the inner packet or the exception describing why it was dropped. AES-CBC + HMAC
    /// batches go through the SA's burst code (ICVs computed side by side, each checked
    /// before its packet is decrypted); the answers and counters are those of `decrypt`
    /// one packet at a time.
    #[pyo3(signature = (packets, /, *, now=None))]
    fn decrypt_many<'py>(
        &self,
        py: Python<'py>,
        packets: &Bound<'py, PyAny>,
        now: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        decrypt_batch(py, &self.state, packets, now)
    }

    /// Protects the packets of an `ipsec.PacketBatch` in place, the GIL released for
    /// the whole call and no Python object made per packet; returns how many were
    /// encrypted (a refused packet is dropped from the batch with its exception).
    #[pyo3(signature = (batch, /, *, now=None))]
    fn encrypt_batch(
        &self,
        py: Python<'_>,
        batch: &Bound<'_, PyAny>,
        now: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        crate::batch::transform_batch(py, &self.state, Some(self.headroom), batch, now)
    }

    /// Removes ESP from the packets of an `ipsec.PacketBatch` in place, as
    /// `encrypt_batch`; returns how many were decrypted.
    #[pyo3(signature = (batch, /, *, now=None))]
    fn decrypt_batch(
        &self,
        py: Python<'_>,
        batch: &Bound<'_, PyAny>,
        now: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<usize> {
        crate::batch::transform_batch(py, &self.state, None, batch, now)
    }

    /// The counters: `packets`, `bytes` and one key per drop reason.
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.lock(py)?.sa.stats();
        stats_dict(py, &stats)
    }

    /// Checks the lifetimes at `now` (default: the last time given) and returns the
    /// next event to act on, or `None`.
    #[pyo3(signature = (now=None))]
    fn poll_event(
        &self,
        py: Python<'_>,
        now: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<PySaEvent>> {
        let now = now_arg(now)?;
        let event = {
            let mut st = self.lock(py)?;
            let now = Self::time(&mut st, now);
            st.sa.poll_event(now)
        };
        Ok(event.and_then(event_of))
    }

    /// Returns the NAT-keepalive (a whole IP packet: IP, UDP, one 0xFF byte) this SA
    /// owes its peer at `now` (default: the last time given), counting it as sent, or
    /// `None` when none is due (see `next_keepalive`).
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
            let now = Self::time(&mut st, now);
            st.sa.poll_keepalive(now, &mut out)
        };
        Ok(len.map(|n| PyBytes::new(py, &out[..n])))
    }

    /// When the next NAT-keepalive is due, in seconds on the caller's clock (the `now`
    /// of the other calls), or `None` when the SA sends none (keepalives off, inbound,
    /// no UDP encapsulation, expired, or transport mode before its first packet).
    #[getter]
    fn next_keepalive(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        Ok(self.lock(py)?.sa.next_keepalive().map(|t| t.as_secs_f64()))
    }

    /// The NAT-keepalive interval in seconds, or `None` when the SA sends none.
    /// The soft limits in force (`Lifetime`): the configured soft lifetime with the
    /// jitter drawn when the SA was created (`soft_lifetime_jitter`).
    #[getter]
    fn soft_limits(&self, py: Python<'_>) -> PyResult<PyLifetime> {
        let l = self.lock(py)?.sa.soft_limits();
        Ok(PyLifetime {
            bytes: l.bytes,
            packets: l.packets,
            seconds: l.time.map(|t| t.as_secs_f64()),
        })
    }

    #[getter]
    fn nat_keepalive_interval(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        Ok(self
            .lock(py)?
            .sa
            .nat_keepalive_interval()
            .map(|t| t.as_secs_f64()))
    }

    /// Every pending event (rekey and expiry), in order, until none is left.
    #[pyo3(signature = (now=None))]
    fn poll_events(
        &self,
        py: Python<'_>,
        now: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<PySaEvent>> {
        let now = now_arg(now)?;
        let events: Vec<SaEvent> = {
            let mut st = self.lock(py)?;
            let now = Self::time(&mut st, now);
            core::iter::from_fn(|| st.sa.poll_event(now)).collect()
        };
        Ok(events.into_iter().filter_map(event_of).collect())
    }

    /// The `seq_margin` of [`Self::restore`] when none is given: 2^20.
    #[classattr]
    const DEFAULT_SEQ_MARGIN: u64 = RestoreOptions::DEFAULT_SEQ_MARGIN;

    /// The SA's whole state at `now` (default: the last time given) as bytes: keys,
    /// sequence number or replay window, lifetime usage, counters, pending events (the
    /// versioned format of `ipsec_core::snapshot`), for `restore` on a standby.
    ///
    /// The bytes hold the SA's keys. The library wipes its own copy; a Python `bytes`
    /// object cannot be wiped, so keep it short-lived and send it only over an
    /// authenticated, encrypted channel.
    #[pyo3(signature = (now=None))]
    fn snapshot<'py>(
        &self,
        py: Python<'py>,
        now: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let now = now_arg(now)?;
        let snap = {
            let mut st = self.lock(py)?;
            let now = Self::time(&mut st, now);
            st.sa.snapshot(now)
        };
        Ok(PyBytes::new(py, snap.as_bytes()))
    }

    /// An SA restored from `snapshot` bytes at `now` on this machine's clock (default
    /// 0). An outbound SA continues after the snapshot's sequence number plus
    /// `seq_margin` (default `DEFAULT_SEQ_MARGIN`), so that it never reuses a sequence number (an AEAD nonce) the
    /// primary may have sent after the snapshot; `not_below` (a sequence number known to
    /// be used) refuses a restore that would not continue above it. An inbound SA gets
    /// its replay window back exactly. `elapsed_since_snapshot` (seconds) is added to
    /// the SA's age. Raises `ConfigError`: field `snapshot` for bytes that are not a
    /// valid snapshot, `seq_margin` or `not_below` for a refused restore.
    #[staticmethod]
    #[pyo3(signature = (
        snapshot, /, now=None, *, seq_margin=None,
        not_below=None, elapsed_since_snapshot=None
    ))]
    fn restore(
        py: Python<'_>,
        snapshot: &Bound<'_, PyAny>,
        now: Option<&Bound<'_, PyAny>>,
        seq_margin: Option<&Bound<'_, PyAny>>,
        not_below: Option<&Bound<'_, PyAny>>,
        elapsed_since_snapshot: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let bytes = key_arg(snapshot, "snapshot")?;
        let seq_margin: u64 = convert::opt_int(seq_margin, "seq_margin", Bad::Config)?
            .unwrap_or(RestoreOptions::DEFAULT_SEQ_MARGIN);
        let not_below: Option<u64> = convert::opt_int(not_below, "not_below", Bad::Config)?;
        let now = now_arg(now)?.unwrap_or(Duration::ZERO);
        let elapsed = convert::opt_seconds(
            elapsed_since_snapshot,
            "elapsed_since_snapshot",
            Bad::Config,
        )?
        .unwrap_or(Duration::ZERO);
        let mut opts = RestoreOptions::new()
            .seq_margin(seq_margin)
            .elapsed_since_snapshot(elapsed);
        if let Some(n) = not_below {
            opts = opts.not_below(n);
        }
        let sa = py
            .detach(|| SecurityAssociation::restore(&bytes, &opts, now))
            .map_err(|e| Failure::Config(e.to_config_error()))?;
        Ok(Self::wrap(sa, now))
    }

    /// The SPI.
    #[getter]
    fn spi(&self) -> u32 {
        self.spi
    }

    /// `"outbound"` or `"inbound"`.
    #[getter]
    fn direction(&self) -> &'static str {
        self.direction.name()
    }

    /// `"tunnel"` or `"transport"`.
    #[getter]
    fn mode(&self) -> &'static str {
        self.mode.name()
    }

    /// The cipher name.
    #[getter]
    fn cipher(&self) -> &'static str {
        self.cipher.name()
    }

    /// The integrity algorithm name, or `None`.
    #[getter]
    fn integrity(&self) -> Option<&'static str> {
        self.integrity.map(Integrity::name)
    }

    /// True with extended sequence numbers.
    #[getter]
    fn esn(&self) -> bool {
        self.esn
    }

    /// Outbound: the last sequence number used. Inbound: the highest received.
    #[getter]
    fn seq(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.lock(py)?.sa.seq())
    }

    /// When the SA last carried traffic, in seconds on the caller's clock (the last
    /// packet it encrypted or accepted; NAT-keepalives, dummy packets and refused
    /// packets do not count), or `None` before its first: what an IKE daemon's
    /// `query_sa` reports as the use time.
    #[getter]
    fn last_used(&self, py: Python<'_>) -> PyResult<Option<f64>> {
        Ok(self.lock(py)?.sa.last_used().map(|t| t.as_secs_f64()))
    }

    /// The tunnel endpoints `(src, dst)` as text, or `None`.
    #[getter]
    fn tunnel(&self) -> Option<(String, String)> {
        self.tunnel.map(|(s, d)| (s.to_string(), d.to_string()))
    }

    /// The UDP encapsulation ports `(src, dst)`, or `None`.
    #[getter]
    fn udp_encap(&self) -> Option<(u16, u16)> {
        self.udp_encap
    }

    /// How a gateway finds this inbound SA for a packet (RFC 4301 §4.1): `"spi"`,
    /// `"spi+protocol"`, `"spi+destination"` or `"spi+destination+source"`.
    #[getter]
    fn lookup(&self) -> &'static str {
        self.lookup.name()
    }

    /// True once a hard lifetime was reached (the SA refuses packets).
    #[getter]
    fn expired(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(self.lock(py)?.sa.is_expired())
    }

    /// The most bytes encryption adds to a packet (for buffer and MTU sizing).
    #[getter]
    fn max_overhead(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.lock(py)?.sa.max_overhead())
    }

    /// Protects one IP packet that may not fit the path MTU: returns the packets to
    /// send, in order (one when it fits; IPv4 with DF clear is pre-fragmented, each
    /// fragment its own ESP packet). A packet that may not be fragmented raises
    /// `PacketTooBigError` (`.mtu`: the largest inner packet that fits).
    #[pyo3(signature = (packet, /, *, now=None))]
    fn encrypt_fragments<'py>(
        &self,
        py: Python<'py>,
        packet: &Bound<'py, PyAny>,
        now: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let data = packet_arg(packet, "packet")?;
        let now = now_arg(now)?;
        let mut first = bytes::BytesMut::from(&data[..]);
        let outcome = {
            let mut st = self.lock(py)?;
            let now = Self::time(&mut st, now);
            st.sa.encrypt_bytes_fragmenting(&mut first, now)
        };
        let extra = outcome.map_err(|e| Failure::from(e).into_exception(py))?;
        let items = core::iter::once(&first)
            .chain(&extra)
            .map(|p| PyBytes::new(py, p));
        PyList::new(py, items)
    }

    /// The path MTU in force (configured, or lower and learned from ICMP and not aged
    /// out) at the last time given, or `None` without a limit.
    #[getter]
    fn path_mtu(&self, py: Python<'_>) -> PyResult<Option<u16>> {
        let st = self.lock(py)?;
        Ok(st.sa.path_mtu(st.now))
    }

    /// The largest inner packet that fits the path MTU after ESP (for a plain IPv4
    /// header in transport mode), or `None` without a path MTU.
    #[getter]
    fn inner_mtu(&self, py: Python<'_>) -> PyResult<Option<u16>> {
        let st = self.lock(py)?;
        Ok(st.sa.inner_mtu(st.now))
    }

    /// Sets the configured path MTU (`None` removes it), forgetting a learned one.
    fn set_path_mtu(&self, py: Python<'_>, mtu: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let mtu = convert::opt_int::<u16>(mtu, "path_mtu", Bad::Config)?;
        let res = self.lock(py)?.sa.set_path_mtu(mtu);
        res.map_err(|e| Failure::from(e).into())
    }

    /// Takes an ICMP "fragmentation needed" / ICMPv6 "packet too big" message (the whole
    /// IP packet) about this SA's own packets and lowers the path MTU for ten minutes;
    /// returns the new path MTU, or `None` when it did not go down. Raises
    /// `MalformedPacketError` for a message about anything else.
    #[pyo3(signature = (packet, /, *, now=None))]
    fn handle_icmp(
        &self,
        py: Python<'_>,
        packet: &Bound<'_, PyAny>,
        now: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<u16>> {
        let data = packet_arg(packet, "packet")?;
        let now = now_arg(now)?;
        let res = {
            let mut st = self.lock(py)?;
            let now = Self::time(&mut st, now);
            st.sa.handle_icmp(&data, now)
        };
        res.map_err(|e| Failure::from(e).into_exception(py))
    }

    fn __repr__(&self) -> String {
        let integrity = self
            .integrity
            .map_or_else(|| "None".to_owned(), |i| format!("'{}'", i.name()));
        format!(
            "SecurityAssociation(spi={:#x}, direction='{}', mode='{}', cipher='{}', integrity={integrity}, esn={})",
            self.spi,
            self.direction.name(),
            self.mode.name(),
            self.cipher.name(),
            if self.esn { "True" } else { "False" },
        )
    }
}

/// Soft or hard lifetime limits (Python `ipsec.Lifetime`); `None` means no limit.
#[pyclass(module = "ipsec", name = "Lifetime", frozen, eq)]
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PyLifetime {
    bytes: Option<u64>,
    packets: Option<u64>,
    seconds: Option<f64>,
}

impl PyLifetime {
    fn to_core(&self) -> PyResult<Lifetime> {
        let mut l = Lifetime::NONE;
        if let Some(b) = self.bytes {
            l = l.with_bytes(b);
        }
        if let Some(p) = self.packets {
            l = l.with_packets(p);
        }
        if let Some(s) = self.seconds {
            l = l.with_time(convert::seconds(s, "seconds", Bad::Config)?);
        }
        Ok(l)
    }
}

#[pymethods]
impl PyLifetime {
    #[new]
    #[pyo3(signature = (*, bytes=None, packets=None, seconds=None))]
    fn new(
        bytes: Option<&Bound<'_, PyAny>>,
        packets: Option<&Bound<'_, PyAny>>,
        seconds: Option<f64>,
    ) -> PyResult<Self> {
        if let Some(s) = seconds {
            convert::seconds(s, "seconds", Bad::Config)?;
        }
        Ok(PyLifetime {
            bytes: convert::opt_int(bytes, "bytes", Bad::Config)?,
            packets: convert::opt_int(packets, "packets", Bad::Config)?,
            seconds,
        })
    }

    /// Bytes of inner packets, or `None`.
    #[getter]
    fn bytes(&self) -> Option<u64> {
        self.bytes
    }

    /// Packets, or `None`.
    #[getter]
    fn packets(&self) -> Option<u64> {
        self.packets
    }

    /// Seconds since the SA was created, or `None`.
    #[getter]
    fn seconds(&self) -> Option<f64> {
        self.seconds
    }

    fn __repr__(&self) -> String {
        let o = |v: Option<String>| v.unwrap_or_else(|| "None".into());
        format!(
            "Lifetime(bytes={}, packets={}, seconds={})",
            o(self.bytes.map(|v| v.to_string())),
            o(self.packets.map(|v| v.to_string())),
            o(self.seconds.map(|v| format!("{v:?}"))),
        )
    }
}

/// Something the owner of an SA must act on (Python `ipsec.SaEvent`).
#[pyclass(module = "ipsec", name = "SaEvent", frozen, eq, hash)]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PySaEvent {
    kind: &'static str,
    limit: &'static str,
}

#[pymethods]
impl PySaEvent {
    /// `"rekey"` (a soft lifetime was reached) or `"expired"` (a hard one).
    #[getter]
    fn kind(&self) -> &'static str {
        self.kind
    }

    /// `"bytes"`, `"packets"` or `"time"`.
    #[getter]
    fn limit(&self) -> &'static str {
        self.limit
    }

    fn __repr__(&self) -> String {
        format!("SaEvent(kind='{}', limit='{}')", self.kind, self.limit)
    }
}

/// Creates the SAs of parsed `[[sa]]` tables.
fn create_all(
    named: Vec<NamedSa>,
    now: Duration,
) -> Result<Vec<(String, PySecurityAssociation)>, Failure> {
    named
        .into_iter()
        .map(|n| {
            let label = format!("sa {:?}", n.name);
            let sa = SecurityAssociation::new(n.config, now).map_err(|e| e.in_context(&label))?;
            Ok((n.name, PySecurityAssociation::wrap(sa, now)))
        })
        .collect()
}

fn sas_dict<'py>(
    py: Python<'py>,
    text: &str,
    now: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let now = convert::opt_seconds(now, "now", Bad::Config)?.unwrap_or(Duration::ZERO);
    let named = parse_sa_file(text).map_err(Failure::from)?;
    let d = PyDict::new(py);
    for (name, sa) in create_all(named, now)? {
        d.set_item(name, Bound::new(py, sa)?)?;
    }
    Ok(d)
}

/// The SAs of the `[[sa]]` tables of a TOML text, by name (a policy file's
/// `[[policy]]` tables are allowed and ignored).
#[pyfunction]
#[pyo3(signature = (text, *, now=None), text_signature = "(text, *, now=0.0)")]
pub(crate) fn sas_from_toml<'py>(
    py: Python<'py>,
    text: &Bound<'py, PyAny>,
    now: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    sas_dict(py, &convert::secret_text(text, "text")?, now)
}

/// The SAs of the `[[sa]]` tables of a TOML file, by name.
#[pyfunction]
#[pyo3(signature = (path, *, now=None), text_signature = "(path, *, now=0.0)")]
pub(crate) fn load_sas<'py>(
    py: Python<'py>,
    path: &Bound<'py, PyAny>,
    now: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let path = convert::path(path, "path")?;
    let text = crate::spd::read_file(&path)?;
    sas_dict(py, &text, now)
}

/// The ICMP error ("fragmentation needed", or ICMPv6 "packet too big") telling the
/// sender of `packet` that packets of at most `mtu` bytes pass, from the address `src`;
/// `None` when no ICMP error may be sent about this packet.
#[pyfunction]
pub(crate) fn too_big_reply<'py>(
    py: Python<'py>,
    packet: &Bound<'py, PyAny>,
    mtu: &Bound<'py, PyAny>,
    src: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    use ipsec_core::icmp::{self, IcmpError};
    let data = packet_arg(packet, "packet")?;
    let mtu: u16 = convert::int(mtu, "mtu", Bad::Value)?;
    let src = convert::addr(src, "src", Bad::Value)?;
    let mut out = [0u8; icmp::ICMPV6_ERROR_MAX];
    match icmp::too_big_reply(&data, mtu, src, &mut out) {
        Ok(Some(n)) => Ok(Some(PyBytes::new(py, &out[..n]))),
        Ok(None) => Ok(None),
        Err(IcmpError::BadPacket(m)) => Err(Failure::from(m).into()),
        Err(e) => Err(pyo3::exceptions::PyValueError::new_err(e.to_string())),
    }
}

/// The SPI of an ESP packet, or of ESP in UDP on one of `udp_ports` (default: 4500).
#[pyfunction]
#[pyo3(signature = (packet, *, udp_ports=None))]
pub(crate) fn esp_spi(packet: &Bound<'_, PyAny>, udp_ports: Option<Vec<u16>>) -> PyResult<u32> {
    let data = packet_arg(packet, "packet")?;
    let ports = udp_ports.unwrap_or_else(|| vec![ipsec_core::packet::NAT_T_PORT]);
    let pos = ipsec_core::packet::locate_esp(&data, Some(&ports)).map_err(Failure::from)?;
    match data[pos.esp..pos.ip.total_len].get(..4) {
        Some(h) => Ok(u32::from_be_bytes([h[0], h[1], h[2], h[3]])),
        None => Err(Failure::from(ipsec_core::Malformed::Truncated).into()),
    }
}
