//! The inbound half of a gateway's SAD: which installed SA an ESP packet belongs to,
//! by the "longest match" of RFC 4301 §4.1 (see [`SaLookup`]).
//!
//! Every SA has a key: its SPI alone ([`SaLookup::Spi`], and [`SaLookup::SpiProtocol`],
//! since the only protocol is ESP), its SPI and destination, or its SPI, destination
//! and source (the SA's tunnel endpoints). Keys are unique; SPIs need not be.
//!
//! One hash map by SPI holds, per SPI, the SPI-alone SA (if any) and how many SAs of
//! that SPI are found by address. When none is (every SA of every gateway that does not
//! use multicast), a packet costs one lookup and one compare, as a map of SPIs to SAs
//! would, and the packet's addresses are not read. Otherwise a second map, by SPI and
//! addresses, is asked for SPI + destination + source, then SPI + destination (each
//! only when an SA of that SPI has such a key), then the SPI-alone SA is taken: at most
//! three lookups, whatever the number of SAs. No lookup allocates.

use crate::sa::SaLookup;
use std::collections::HashMap;
use std::net::IpAddr;

/// No SA (in [`SpiSlot::alone`]).
const NONE: usize = usize::MAX;

/// What one SPI leads to.
#[derive(Clone, Copy, Debug)]
struct SpiSlot {
    /// The SA found by the SPI alone, or [`NONE`].
    alone: usize,
    /// How many SAs of this SPI are found by SPI + destination.
    by_dst: u32,
    /// How many by SPI + destination + source.
    by_dst_src: u32,
}

/// An SA's lookup key: its SPI alone, or with its destination, or with both addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SadKey {
    pub(crate) spi: u32,
    pub(crate) dst: Option<IpAddr>,
    pub(crate) src: Option<IpAddr>,
}

impl SadKey {
    /// The key of an inbound SA with `spi`, `lookup` and tunnel endpoints `tunnel`
    /// (source, destination), which [`crate::SaConfig::check`] made sure an address
    /// lookup has.
    pub(crate) fn new(spi: u32, lookup: SaLookup, tunnel: Option<(IpAddr, IpAddr)>) -> SadKey {
        let (dst, src) = match (lookup, tunnel) {
            (SaLookup::SpiDestination, Some((_, dst))) => (Some(dst), None),
            (SaLookup::SpiDestinationSource, Some((src, dst))) => (Some(dst), Some(src)),
            _ => (None, None),
        };
        SadKey { spi, dst, src }
    }
}

/// Inbound SAs by their keys (indices into the gateway's SA table).
#[derive(Debug, Default)]
pub(crate) struct InboundSad {
    by_spi: HashMap<u32, SpiSlot>,
    by_address: HashMap<SadKey, usize>,
}

/// The outcome of [`InboundSad::find`] on the SPI alone.
pub(crate) enum Found {
    /// The SA.
    Sa(usize),
    /// No SA has the SPI.
    Unknown,
    /// SAs of the SPI are found by address: ask [`InboundSad::find_by_address`].
    ByAddress,
}

impl InboundSad {
    /// The SA whose key is `key`, if one is installed.
    pub(crate) fn get(&self, key: &SadKey) -> Option<usize> {
        if key.dst.is_some() {
            return self.by_address.get(key).copied();
        }
        match self.by_spi.get(&key.spi) {
            Some(s) if s.alone != NONE => Some(s.alone),
            _ => None,
        }
    }

    /// Installs SA `index` under `key`, which must be free ([`Self::get`]).
    pub(crate) fn insert(&mut self, key: SadKey, index: usize) {
        let slot = self.by_spi.entry(key.spi).or_insert(SpiSlot {
            alone: NONE,
            by_dst: 0,
            by_dst_src: 0,
        });
        match (key.dst, key.src) {
            (None, _) => slot.alone = index,
            (Some(_), None) => slot.by_dst += 1,
            (Some(_), Some(_)) => slot.by_dst_src += 1,
        }
        if key.dst.is_some() {
            self.by_address.insert(key, index);
        }
    }

    /// Removes the SA of `key`; true when no SA has its SPI any more.
    pub(crate) fn remove(&mut self, key: &SadKey) -> bool {
        let Some(slot) = self.by_spi.get_mut(&key.spi) else {
            return true;
        };
        match (key.dst, key.src) {
            (None, _) => slot.alone = NONE,
            (Some(_), None) => slot.by_dst -= 1,
            (Some(_), Some(_)) => slot.by_dst_src -= 1,
        }
        if key.dst.is_some() {
            self.by_address.remove(key);
        }
        let empty = slot.alone == NONE && slot.by_dst == 0 && slot.by_dst_src == 0;
        if empty {
            self.by_spi.remove(&key.spi);
        }
        empty
    }

    /// The SA of a packet with `spi` when the SPI decides alone (the common case:
    /// no SA of that SPI is found by address).
    #[inline]
    pub(crate) fn find(&self, spi: u32) -> Found {
        match self.by_spi.get(&spi) {
            None => Found::Unknown,
            Some(s) if s.by_dst == 0 && s.by_dst_src == 0 => Found::Sa(s.alone),
            Some(_) => Found::ByAddress,
        }
    }

    /// The SA of a packet with `spi`, outer destination `dst` and source `src`, by the
    /// longest match of RFC 4301 §4.1: SPI + destination + source, then SPI +
    /// destination, then the SPI alone.
    #[cold]
    pub(crate) fn find_by_address(&self, spi: u32, dst: IpAddr, src: IpAddr) -> Option<usize> {
        let slot = self.by_spi.get(&spi)?;
        if slot.by_dst_src > 0
            && let Some(&i) = self.by_address.get(&SadKey {
                spi,
                dst: Some(dst),
                src: Some(src),
            })
        {
            return Some(i);
        }
        if slot.by_dst > 0
            && let Some(&i) = self.by_address.get(&SadKey {
                spi,
                dst: Some(dst),
                src: None,
            })
        {
            return Some(i);
        }
        (slot.alone != NONE).then_some(slot.alone)
    }
}
