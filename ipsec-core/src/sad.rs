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
//! two more lookups, whatever the number of SAs. No lookup allocates.
//!
//! The map by SPI keeps `std`'s keyed hash (SipHash). The map by SPI and addresses
//! hashes its fixed-size keys with a multiply-rotate hash ([`AddrHasher`], FxHash's):
//! a keyed hash of two 128-bit addresses costs tens of nanoseconds, and flooding a hash
//! table needs control of the keys stored, which come from the key manager, not from
//! packets (a packet's addresses are only looked up).

use crate::sa::SaLookup;
use core::hash::{BuildHasherDefault, Hash, Hasher};
use std::collections::HashMap;
use std::net::IpAddr;

/// No SA (in [`SpiSlot::alone`]).
const NONE: usize = usize::MAX;

/// What one SPI leads to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpiSlot {
    /// The SA found by the SPI alone, or [`NONE`].
    alone: usize,
    /// How many SAs of this SPI are found by SPI + destination.
    by_dst: u32,
    /// How many by SPI + destination + source.
    by_dst_src: u32,
}

/// An SA's lookup key: its SPI alone, or with its destination, or with both addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SadKey {
    pub(crate) spi: u32,
    pub(crate) dst: Option<IpAddr>,
    pub(crate) src: Option<IpAddr>,
}

/// Three words for the hasher: equal keys give equal words (an IPv4 address and the
/// IPv6 address of the same bits differ in bit 96; absent is 0).
impl Hash for SadKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        fn bits(a: Option<IpAddr>) -> u128 {
            match a {
                None => 0,
                Some(IpAddr::V4(v)) => 1 << 96 | u128::from(u32::from(v)),
                Some(IpAddr::V6(v)) => u128::from(v),
            }
        }
        h.write_u32(self.spi);
        h.write_u128(bits(self.dst));
        h.write_u128(bits(self.src));
    }
}

/// FxHash's multiply-rotate hash, for the map by SPI and addresses (see the module
/// docs for why it need not be keyed).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct AddrHasher(u64);

impl AddrHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.add(u64::from(v));
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.add(v);
    }

    #[inline]
    fn write_u128(&mut self, v: u128) {
        self.add(v as u64);
        self.add((v >> 64) as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
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
    by_address: HashMap<SadKey, usize, BuildHasherDefault<AddrHasher>>,
}

/// The outcome of [`InboundSad::find`] on the SPI alone.
pub(crate) enum Found {
    /// The SA.
    Sa(usize),
    /// No SA has the SPI.
    Unknown,
    /// SAs of the SPI are found by address: ask [`InboundSad::find_by_address`] with
    /// this slot.
    ByAddress(SpiSlot),
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
            Some(&s) => Found::ByAddress(s),
        }
    }

    /// The SA of a packet with `spi` (whose slot [`Self::find`] gave), outer
    /// destination `dst` and source `src`, by the longest match of RFC 4301 §4.1: SPI +
    /// destination + source, then SPI + destination, then the SPI alone.
    #[cold]
    pub(crate) fn find_by_address(
        &self,
        spi: u32,
        slot: SpiSlot,
        dst: IpAddr,
        src: IpAddr,
    ) -> Option<usize> {
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

    fn found(f: Found) -> Option<usize> {
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
                sad.find_by_address(300, slot, IpAddr::from(dst), IpAddr::from(src))
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
        assert!(sad.by_address.is_empty() && sad.by_spi.is_empty());
    }
}
