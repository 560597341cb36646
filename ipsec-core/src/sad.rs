//! The inbound half of a gateway's SAD: which installed SA an ESP packet belongs to,
//! by the "longest match" of RFC 4301 §4.1 (see [`SaLookup`]).
//!
//! Every SA has a key: its SPI alone ([`SaLookup::Spi`], and [`SaLookup::SpiProtocol`],
//! since the only protocol is ESP), its SPI and destination, or its SPI, destination
//! and source (the SA's tunnel endpoints). Keys are unique; SPIs need not be.
//!
//! One hash map by SPI holds, per SPI, the SPI-alone SA (if any) and the SPI's SAs
//! found by address, if any. When there are none (every SA of every gateway that does
//! not use multicast), a packet costs one lookup and one compare, as a map of SPIs to
//! SAs would, and the packet's addresses are not read. Otherwise the packet's outer
//! addresses are binary-searched in that SPI's list, sorted by destination and source:
//! SPI + destination + source, then SPI + destination, then the SPI-alone SA. One hash
//! lookup whatever the key; the list search is O(log k) in the k SAs sharing the SPI
//! (a handful: the groups of one multicast sender). No lookup allocates.
//!
//! The map hashes SPIs with `foldhash` (a fast keyed hash, its seed random per map): a
//! packet's SPI is only looked up, never stored, so it cannot steer where stored SPIs
//! land, and the stored SPIs come from the key manager (or
//! [`crate::Gateway::allocate_spi`]'s random ones). `std`'s SipHash cost 8-10 ns of a
//! 12 ns lookup here.

use crate::sa::SaLookup;
use std::collections::HashMap;
use std::net::IpAddr;

/// No SA (in [`SpiSlot::alone`]).
const NONE: usize = usize::MAX;

/// What one SPI leads to.
#[derive(Clone, Debug)]
pub(crate) struct SpiSlot {
    /// The SA found by the SPI alone, or [`NONE`].
    alone: usize,
    /// The SAs of this SPI found by SPI + destination (+ source), sorted by
    /// `(dst, src)` with a missing source first; `None` when there are none (every
    /// SPI of a gateway that does not use multicast).
    by_address: Option<Box<[AddressedSa]>>,
}

/// An SA of an SPI found by its destination, or its destination and source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AddressedSa {
    dst: IpAddr,
    src: Option<IpAddr>,
    index: usize,
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
    by_spi: HashMap<u32, SpiSlot, foldhash::fast::RandomState>,
}

/// The outcome of [`InboundSad::find`] on the SPI alone.
enum Found<'a> {
    /// The SA.
    Sa(usize),
    /// No SA has the SPI.
    Unknown,
    /// SAs of the SPI are found by address: ask [`InboundSad::find_by_address`] with
    /// this slot.
    ByAddress(&'a SpiSlot),
}

impl InboundSad {
    /// The SA whose key is `key`, if one is installed.
    pub(crate) fn get(&self, key: &SadKey) -> Option<usize> {
        let slot = self.by_spi.get(&key.spi)?;
        match key.dst {
            None => (slot.alone != NONE).then_some(slot.alone),
            Some(dst) => {
                let list = slot.by_address.as_deref()?;
                let k = list
                    .binary_search_by(|e| (e.dst, e.src).cmp(&(dst, key.src)))
                    .ok()?;
                Some(list[k].index)
            }
        }
    }

    /// Installs SA `index` under `key`, which must be free ([`Self::get`]).
    pub(crate) fn insert(&mut self, key: SadKey, index: usize) {
        let slot = self.by_spi.entry(key.spi).or_insert(SpiSlot {
            alone: NONE,
            by_address: None,
        });
        let Some(dst) = key.dst else {
            slot.alone = index;
            return;
        };
        let mut list = slot.by_address.take().map(Vec::from).unwrap_or_default();
        let at = list.partition_point(|e| (e.dst, e.src) < (dst, key.src));
        list.insert(
            at,
            AddressedSa {
                dst,
                src: key.src,
                index,
            },
        );
        slot.by_address = Some(list.into_boxed_slice());
    }

    /// Removes the SA of `key`; true when no SA has its SPI any more.
    pub(crate) fn remove(&mut self, key: &SadKey) -> bool {
        let Some(slot) = self.by_spi.get_mut(&key.spi) else {
            return true;
        };
        match key.dst {
            None => slot.alone = NONE,
            Some(dst) => {
                if let Some(list) = slot.by_address.take() {
                    let mut list = Vec::from(list);
                    list.retain(|e| (e.dst, e.src) != (dst, key.src));
                    slot.by_address = (!list.is_empty()).then(|| list.into_boxed_slice());
                }
            }
        }
        let empty = slot.alone == NONE && slot.by_address.is_none();
        if empty {
            self.by_spi.remove(&key.spi);
        }
        empty
    }

    /// The SA of a packet with `spi` when the SPI decides alone (the common case:
    /// no SA of that SPI is found by address).
    #[inline]
    fn find(&self, spi: u32) -> Found<'_> {
        match self.by_spi.get(&spi) {
            None => Found::Unknown,
            Some(s) if s.by_address.is_none() => Found::Sa(s.alone),
            Some(s) => Found::ByAddress(s),
        }
    }

    /// The SA of a packet with `spi`, by the longest match ([`Self::find`], then
    /// [`Self::find_by_address`]); `addresses` gives the packet's outer (source,
    /// destination) and is only called when an SA of that SPI is found by address.
    #[inline]
    pub(crate) fn lookup(
        &self,
        spi: u32,
        addresses: impl FnOnce() -> Option<(IpAddr, IpAddr)>,
    ) -> Option<usize> {
        self.lookup_noting_spi_alone(spi, addresses).0
    }

    /// [`Self::lookup`], and whether its answer holds for every packet with `spi`,
    /// whatever its addresses (no SA of that SPI is found by address): a burst may
    /// then reuse it for the next packets with that SPI.
    #[inline]
    pub(crate) fn lookup_noting_spi_alone(
        &self,
        spi: u32,
        addresses: impl FnOnce() -> Option<(IpAddr, IpAddr)>,
    ) -> (Option<usize>, bool) {
        match self.find(spi) {
            Found::Sa(i) => (Some(i), true),
            Found::Unknown => (None, true),
            Found::ByAddress(slot) => {
                let found =
                    addresses().and_then(|(src, dst)| Self::find_by_address(slot, dst, src));
                (found, false)
            }
        }
    }

    /// The SA of a packet whose SPI's slot [`Self::find`] gave, with outer destination
    /// `dst` and source `src`, by the longest match of RFC 4301 §4.1: SPI + destination +
    /// source, then SPI + destination, then the SPI alone. Binary searches over the
    /// SPI's addressed SAs; no hashing, no allocation.
    #[inline]
    fn find_by_address(slot: &SpiSlot, dst: IpAddr, src: IpAddr) -> Option<usize> {
        let alone = (slot.alone != NONE).then_some(slot.alone);
        let Some(list) = slot.by_address.as_deref() else {
            return alone;
        };
        // The SAs of this destination: a run sorted by source, the one without first.
        let from = list.partition_point(|e| e.dst < dst);
        let run = &list[from..];
        match run.first() {
            Some(first) if first.dst == dst => {
                let run = &run[..run.partition_point(|e| e.dst == dst)];
                match run.binary_search_by(|e| e.src.cmp(&Some(src))) {
                    Ok(k) => Some(run[k].index),
                    Err(_) if first.src.is_none() => Some(first.index),
                    Err(_) => alone,
                }
            }
            _ => alone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(spi: u32, dst: Option<[u8; 4]>, src: Option<[u8; 4]>) -> SadKey {
        SadKey {
            spi,
            dst: dst.map(IpAddr::from),
            src: src.map(IpAddr::from),
        }
    }

    fn found(f: Found<'_>) -> Option<usize> {
        match f {
            Found::Sa(i) => Some(i),
            _ => None,
        }
    }

    #[test]
    fn longest_match_and_counts() {
        let (g1, g2, s) = ([233, 252, 0, 1], [233, 252, 0, 2], [192, 0, 2, 1]);
        let mut sad = InboundSad::default();
        sad.insert(key(300, None, None), 0);
        assert_eq!(found(sad.find(300)), Some(0));
        sad.insert(key(300, Some(g1), None), 1);
        sad.insert(key(300, Some(g1), Some(s)), 2);
        sad.insert(key(300, Some(g2), None), 3);
        assert!(matches!(sad.find(300), Found::ByAddress(_)));
        assert!(matches!(sad.find(301), Found::Unknown));
        let at = |sad: &InboundSad, dst: [u8; 4], src: [u8; 4]| match sad.find(300) {
            Found::ByAddress(slot) => {
                InboundSad::find_by_address(slot, IpAddr::from(dst), IpAddr::from(src))
            }
            f => found(f),
        };
        assert_eq!(at(&sad, g1, s), Some(2));
        assert_eq!(at(&sad, g1, [198, 51, 100, 7]), Some(1));
        assert_eq!(at(&sad, g2, s), Some(3));
        assert_eq!(at(&sad, [10, 0, 0, 1], s), Some(0));
        assert_eq!(sad.get(&key(300, Some(g1), Some(s))), Some(2));
        assert_eq!(sad.get(&key(300, None, None)), Some(0));
        assert!(!sad.remove(&key(300, None, None)));
        assert_eq!(at(&sad, [10, 0, 0, 1], s), None);
        assert!(!sad.remove(&key(300, Some(g1), Some(s))));
        assert!(!sad.remove(&key(300, Some(g1), None)));
        assert_eq!(at(&sad, g1, s), None);
        assert!(sad.remove(&key(300, Some(g2), None)), "the SPI's last SA");
        assert!(matches!(sad.find(300), Found::Unknown));
        assert!(sad.by_spi.is_empty());
    }

    /// The model: every installed key, the longest match found by scanning them all.
    fn model_find(keys: &[(SadKey, usize)], spi: u32, dst: IpAddr, src: IpAddr) -> Option<usize> {
        let exact = |d: Option<IpAddr>, s: Option<IpAddr>| {
            keys.iter()
                .find(|(k, _)| k.spi == spi && k.dst == d && k.src == s)
                .map(|&(_, i)| i)
        };
        exact(Some(dst), Some(src))
            .or_else(|| exact(Some(dst), None))
            .or_else(|| exact(None, None))
    }

    fn addr(v6: bool, n: u8) -> IpAddr {
        if v6 {
            IpAddr::from([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, n])
        } else {
            IpAddr::from([233, 252, 0, n])
        }
    }

    proptest::proptest! {
        /// Random installs and removals over few SPIs and addresses (so keys share
        /// SPIs and destinations, IPv4 and IPv6 mixed): every packet finds what a scan
        /// of the installed keys finds, and `get` finds exactly the installed keys.
        #[test]
        fn longest_match_agrees_with_a_scan(
            ops in proptest::collection::vec(
                (proptest::bool::ANY, 0u32..3, 0u8..4, 0u8..4, 0u8..3, proptest::bool::ANY),
                1..80,
            ),
            probes in proptest::collection::vec((0u32..3, 0u8..4, 0u8..4, proptest::bool::ANY), 8),
        ) {
            let mut sad = InboundSad::default();
            let mut keys: Vec<(SadKey, usize)> = Vec::new();
            for (n, &(install, spi, d, s, kind, v6)) in ops.iter().enumerate() {
                let key = SadKey {
                    spi: 300 + spi,
                    dst: (kind > 0).then(|| addr(v6, d)),
                    src: (kind > 1).then(|| addr(v6, s)),
                };
                let present = keys.iter().position(|(k, _)| *k == key);
                proptest::prop_assert_eq!(sad.get(&key), present.map(|p| keys[p].1));
                match (install, present) {
                    (true, None) => {
                        sad.insert(key, n);
                        keys.push((key, n));
                    }
                    (false, Some(p)) => {
                        keys.remove(p);
                        let gone = sad.remove(&key);
                        proptest::prop_assert_eq!(gone, !keys.iter().any(|(k, _)| k.spi == key.spi));
                    }
                    _ => {}
                }
                for &(spi, d, s, v6) in &probes {
                    let (spi, dst, src) = (300 + spi, addr(v6, d), addr(v6, s));
                    let got = match sad.find(spi) {
                        Found::Sa(i) => Some(i),
                        Found::Unknown => None,
                        Found::ByAddress(slot) => InboundSad::find_by_address(slot, dst, src),
                    };
                    proptest::prop_assert_eq!(got, model_find(&keys, spi, dst, src));
                }
            }
        }
    }
}
