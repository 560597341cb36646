//! `ipsec.PacketBatch`: packets kept in buffers the bindings own, transformed in place
//! by `encrypt_batch` / `decrypt_batch` of an SA or a lane with the GIL released for
//! the whole call and **no Python object made per packet**.
//!
//! `encrypt_many` / `decrypt_many` must make one `bytes` object per packet with the GIL
//! held (40-100 ns each), so two Python threads on two SAs cannot go much faster than
//! that serial part allows. A batch is loaded once (or reloaded into the same buffers),
//! transformed as often as wanted, and read back when the caller needs the packets:
//! between those, a thread holds the GIL only to enter and leave the call.
//!
//! A packet refused by a transform is dropped from the batch's packets, counted by the
//! SA under its reason as always, and keeps its exception ([`PyPacketBatch::results`]);
//! later transforms skip it. Buffers: encryption writes each packet, with the SA's
//! headroom and tailroom, into a second buffer and swaps the two (both keep their
//! capacity, so a batch reused at the same sizes allocates nothing); decryption works
//! in place.
//!
//! Locks: a call takes the SA's (or lane's) mutex, then the batch's, both without the
//! GIL; nothing takes them the other way round, so two threads sharing an SA or a
//! batch take turns and cannot deadlock.

use crate::convert;
use crate::errors::Failure;
use crate::sa::{
    Engine, State, Way, burst_packets, lock_releasing_gil, now_arg, packets_arg, poisoned,
};
use ipsec_core::{Error, PacketBuf};
use pyo3::exceptions::{PyIndexError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use std::sync::Mutex;
use zeroize::Zeroize;

/// One packet of a batch: where it is in the buffer, or why it was dropped.
#[derive(Clone, Copy, Debug)]
struct Slot {
    off: usize,
    len: usize,
    /// The error that dropped the packet (its bytes are gone), or `None`.
    dropped: Option<Error>,
}

/// The packets of a batch (behind the batch's mutex).
#[derive(Default)]
pub(crate) struct BatchData {
    buf: Vec<u8>,
    /// The other buffer encryption writes into; its bytes are stale between calls.
    spare: Vec<u8>,
    slots: Vec<Slot>,
}

impl BatchData {
    /// Replaces the packets with `packets`, reusing the buffers (what they held before
    /// is overwritten, or wiped when the batch goes).
    fn load<P: AsRef<[u8]>>(&mut self, packets: &[P]) {
        self.buf.clear();
        self.slots.clear();
        for p in packets {
            let p = p.as_ref();
            self.slots.push(Slot {
                off: self.buf.len(),
                len: p.len(),
                dropped: None,
            });
            self.buf.extend_from_slice(p);
        }
    }

    /// Encrypts every packet not dropped yet with `sa`, `head` bytes of headroom before
    /// each; returns how many were encrypted. A failure that is not a packet's (an
    /// unusable lane) stops the call, the batch unchanged.
    fn encrypt<E: Engine>(
        &mut self,
        sa: &mut E,
        head: usize,
        now: core::time::Duration,
    ) -> Result<usize, Failure> {
        let room = |len: usize, sa: &E| head + len + sa.tailroom_for(len);
        let total: usize = self
            .slots
            .iter()
            .filter(|s| s.dropped.is_none())
            .map(|s| room(s.len, sa))
            .sum();
        if self.spare.len() < total {
            self.spare.resize(total, 0);
        }
        if !sa.bursts_pay() {
            return self.encrypt_one_by_one(sa, head, now);
        }
        // Each packet not dropped gets its room in `spare`, in slot order.
        let mut starts = Vec::with_capacity(self.slots.len());
        let (mut rest, mut at) = (&mut self.spare[..], 0);
        let buf = &self.buf;
        let bufs = self.slots.iter().filter(|s| s.dropped.is_none()).map(|s| {
            let cap = room(s.len, sa);
            let (out, tail) = core::mem::take(&mut rest).split_at_mut(cap);
            rest = tail;
            starts.push(at);
            at += cap;
            out[head..head + s.len].copy_from_slice(&buf[s.off..s.off + s.len]);
            PacketBuf::new(out, head, s.len).map_err(Failure::from)
        });
        // (Collected: the rooms are sized with `sa`, which the burst then borrows.)
        let bufs: Vec<_> = bufs.collect();
        let outcomes = burst_packets(sa, Way::Encrypt, now, bufs);
        let mut outcomes = outcomes.into_iter().zip(starts);
        let mut placed = Vec::with_capacity(self.slots.len());
        let mut done = 0;
        for s in &self.slots {
            if s.dropped.is_some() {
                placed.push(*s);
                continue;
            }
            let (outcome, at) = outcomes.next().expect("one outcome a packet");
            placed.push(match outcome {
                Ok((off, len)) => {
                    done += 1;
                    Slot {
                        off: at + off,
                        len,
                        dropped: None,
                    }
                }
                Err(Failure::Packet(e)) => dropped(e),
                Err(other) => return Err(other),
            });
        }
        self.slots = placed;
        std::mem::swap(&mut self.buf, &mut self.spare);
        Ok(done)
    }

    /// Decrypts every packet not dropped yet with `sa`, in place; returns how many were
    /// decrypted (as [`BatchData::encrypt`] for failures).
    fn decrypt<E: Engine>(
        &mut self,
        sa: &mut E,
        now: core::time::Duration,
    ) -> Result<usize, Failure> {
        if !sa.bursts_pay() {
            return self.decrypt_one_by_one(sa, now);
        }
        // The slots lie in `buf` in order without overlapping (as `load`, `encrypt`
        // and this place them), so each packet gets its own part of it.
        let (mut rest, mut used) = (&mut self.buf[..], 0);
        let bufs = self.slots.iter().filter(|s| s.dropped.is_none()).map(|s| {
            let skip = s.off.checked_sub(used).expect("slots in buffer order");
            let (_, tail) = core::mem::take(&mut rest).split_at_mut(skip);
            let (buf, tail) = tail.split_at_mut(s.len);
            rest = tail;
            used = s.off + s.len;
            PacketBuf::new(buf, 0, s.len).map_err(Failure::from)
        });
        let mut outcomes = burst_packets(sa, Way::Decrypt, now, bufs).into_iter();
        let mut done = 0;
        for s in self.slots.iter_mut().filter(|s| s.dropped.is_none()) {
            match outcomes.next().expect("one outcome a packet") {
                Ok((off, len)) => {
                    done += 1;
                    s.off += off;
                    s.len = len;
                }
                Err(Failure::Packet(e)) => *s = dropped(e),
                Err(other) => return Err(other),
            }
        }
        Ok(done)
    }

    /// [`BatchData::encrypt`] for engines whose bursts do not pay: each packet
    /// encrypted as it is placed (collecting them for one burst first costs these
    /// about 20 % more). The slot placement is written out here and in the burst
    /// version: one helper returning the slot through a `Result` cost 5 % (AES-GCM,
    /// 64 B, `load` + `encrypt_batch` + `decrypt_batch`).
    fn encrypt_one_by_one<E: Engine>(
        &mut self,
        sa: &mut E,
        head: usize,
        now: core::time::Duration,
    ) -> Result<usize, Failure> {
        let room = |len: usize, sa: &E| head + len + sa.tailroom_for(len);
        let mut placed = Vec::with_capacity(self.slots.len());
        let (mut at, mut done) = (0, 0);
        for s in &self.slots {
            if s.dropped.is_some() {
                placed.push(*s);
                continue;
            }
            let cap = room(s.len, sa);
            let out = &mut self.spare[at..at + cap];
            out[head..head + s.len].copy_from_slice(&self.buf[s.off..s.off + s.len]);
            let mut pkt = PacketBuf::new(out, head, s.len)?;
            placed.push(match sa.encrypt(&mut pkt, now) {
                Ok(()) => {
                    done += 1;
                    Slot {
                        off: at + pkt.offset(),
                        len: pkt.len(),
                        dropped: None,
                    }
                }
                Err(Failure::Packet(e)) => dropped(e),
                Err(other) => return Err(other),
            });
            at += cap;
        }
        self.slots = placed;
        std::mem::swap(&mut self.buf, &mut self.spare);
        Ok(done)
    }

    /// [`BatchData::decrypt`] for engines whose bursts do not pay, one packet at a time.
    fn decrypt_one_by_one<E: Engine>(
        &mut self,
        sa: &mut E,
        now: core::time::Duration,
    ) -> Result<usize, Failure> {
        let mut done = 0;
        for s in self.slots.iter_mut().filter(|s| s.dropped.is_none()) {
            let mut pkt = PacketBuf::new(&mut self.buf[s.off..s.off + s.len], 0, s.len)?;
            match sa.decrypt(&mut pkt, now) {
                Ok(()) => {
                    done += 1;
                    s.off += pkt.offset();
                    s.len = pkt.len();
                }
                Err(Failure::Packet(e)) => *s = dropped(e),
                Err(other) => return Err(other),
            }
        }
        Ok(done)
    }
}

/// A slot whose packet was dropped for `e`.
fn dropped(e: Error) -> Slot {
    Slot {
        off: 0,
        len: 0,
        dropped: Some(e),
    }
}

impl Drop for BatchData {
    /// Inner packets are cleartext: the buffers are wiped.
    fn drop(&mut self) {
        self.buf.zeroize();
        self.spare.zeroize();
    }
}

/// Packets held for batch transforms (Python `ipsec.PacketBatch`).
#[pyclass(module = "ipsec", name = "PacketBatch", frozen)]
pub(crate) struct PyPacketBatch {
    data: Mutex<BatchData>,
}

#[pymethods]
impl PyPacketBatch {
    /// A batch holding a copy of `packets` (bytes or bytearray each).
    #[new]
    #[pyo3(signature = (packets = None, /))]
    fn new(packets: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let mut data = BatchData::default();
        if let Some(p) = packets {
            data.load(&packets_arg(p)?);
        }
        Ok(PyPacketBatch {
            data: Mutex::new(data),
        })
    }

    /// Replaces the batch's packets with a copy of `packets`, reusing its buffers.
    fn load(&self, py: Python<'_>, packets: &Bound<'_, PyAny>) -> PyResult<()> {
        let packets = packets_arg(packets)?;
        lock_releasing_gil(py, &self.data)?.load(&packets);
        Ok(())
    }

    /// The number of packets, dropped ones included.
    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(lock_releasing_gil(py, &self.data)?.slots.len())
    }

    /// How many packets were dropped by the transforms so far.
    #[getter]
    fn dropped(&self, py: Python<'_>) -> PyResult<usize> {
        let data = lock_releasing_gil(py, &self.data)?;
        Ok(data.slots.iter().filter(|s| s.dropped.is_some()).count())
    }

    /// Packet `index` (negative counts from the end) as `bytes`; raises the exception
    /// that dropped it if it was dropped.
    fn __getitem__<'py>(&self, py: Python<'py>, index: isize) -> PyResult<Bound<'py, PyBytes>> {
        let data = lock_releasing_gil(py, &self.data)?;
        let n = data.slots.len();
        let i = if index < 0 {
            index.checked_add_unsigned(n)
        } else {
            Some(index)
        };
        let Some(s) = i
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| data.slots.get(i))
        else {
            return Err(PyIndexError::new_err(format!(
                "PacketBatch index {index} out of range for {n} packets"
            )));
        };
        match s.dropped {
            Some(e) => Err(Failure::Packet(e).into_exception(py)),
            None => Ok(PyBytes::new(py, &data.buf[s.off..s.off + s.len])),
        }
    }

    /// Every packet in order: its `bytes`, or the exception that dropped it (as
    /// `decrypt_many` returns them).
    fn results<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let data = lock_releasing_gil(py, &self.data)?;
        let items: Vec<Bound<'py, PyAny>> = data
            .slots
            .iter()
            .map(|s| match s.dropped {
                Some(e) => Failure::Packet(e)
                    .into_exception(py)
                    .into_value(py)
                    .into_bound(py)
                    .into_any(),
                None => PyBytes::new(py, &data.buf[s.off..s.off + s.len]).into_any(),
            })
            .collect();
        PyList::new(py, items)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let data = lock_releasing_gil(py, &self.data)?;
        let dropped = data.slots.iter().filter(|s| s.dropped.is_some()).count();
        Ok(format!(
            "PacketBatch({} packets, {} dropped)",
            data.slots.len(),
            dropped
        ))
    }
}

/// `batch` as a `PacketBatch`, or a `TypeError` naming what it was.
fn batch_arg<'a, 'py>(batch: &'a Bound<'py, PyAny>) -> PyResult<&'a Bound<'py, PyPacketBatch>> {
    batch.cast::<PyPacketBatch>().map_err(|_| {
        PyTypeError::new_err(format!(
            "batch must be an ipsec.PacketBatch, got {}",
            convert::type_name(batch)
        ))
    })
}

/// `encrypt_batch` (`head` is the SA's headroom) or `decrypt_batch` (`head` is `None`)
/// of an SA or a lane on `batch`, with the GIL released for the whole call; returns
/// how many packets were transformed.
pub(crate) fn transform_batch<E: Engine>(
    py: Python<'_>,
    state: &Mutex<State<E>>,
    head: Option<usize>,
    batch: &Bound<'_, PyAny>,
    now: Option<&Bound<'_, PyAny>>,
) -> PyResult<usize> {
    let batch = batch_arg(batch)?.get();
    let now = now_arg(now)?;
    let outcome = py.detach(|| {
        let mut st = state.lock().map_err(|_| None)?;
        let mut data = batch.data.lock().map_err(|_| None)?;
        let now = st.time(now);
        match head {
            Some(head) => data.encrypt(&mut st.sa, head, now),
            None => data.decrypt(&mut st.sa, now),
        }
        .map_err(Some)
    });
    match outcome {
        Ok(done) => Ok(done),
        Err(Some(failure)) => Err(failure.into_exception(py)),
        Err(None) => Err(poisoned()),
    }
}
