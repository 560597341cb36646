//! A gateway's IPsec data path: the SPD and the SAD together (RFC 4301 §5).
//!
//! [`Gateway::outbound`] classifies a packet with the SPD and then bypasses it,
//! discards it or encrypts it with the SA the PROTECT policy names.
//! [`Gateway::inbound`] finds the SA of an ESP packet by its SPI (and its outer
//! destination, or destination and source, for SAs whose [`crate::SaLookup`] asks for
//! it: RFC 4301 §4.1's longest match), decrypts it and checks
//! the inner packet against the selectors of the policies that SA serves (RFC 4301 §5.2:
//! `policy_mismatch` otherwise); cleartext is let in only when a BYPASS policy covers
//! it — cleartext that a PROTECT policy covers is dropped, never accepted.
//!
//! ESP packets fragmented on the path (outer fragments: IPv4 fragments of ESP or UDP,
//! IPv6 fragments whose Fragment header names ESP or UDP) are put back together first by
//! the gateway's [`Reassembler`] (see [`crate::reassembly`]): a held fragment is
//! [`Inbound::Reassembling`], and the fragment that completes a datagram brings it,
//! whole, into the caller's buffer, where it is decrypted as any packet. Other
//! fragments are left to the policy path.
//!
//! Cleartext fragments, and inner packets that are fragments, are decided with state
//! (RFC 4301 §7.3, §7.4; [`crate::fragment_policy`]): the gateway remembers the
//! decision of each first fragment for a bounded time and number of datagrams
//! ([`FragmentLimits`], [`Gateway::set_fragment_limits`]) and gives the datagram's later
//! fragments the same one (PROTECT with the same SA, BYPASS, DISCARD); tiny first
//! fragments and overlapping fragments are dropped (`fragment_too_short`,
//! `fragment_overlap`), and a later fragment whose first fragment was not seen gets
//! [`Spd::lookup_non_first_fragment`]'s answer or is dropped as `fragment_unresolved`.
//! Unfragmented packets never touch that state.
//!
//! [`Gateway::outbound_burst`] takes a burst of outbound packets in one call, with the
//! same outcome for each packet as [`Gateway::outbound`] and the SA's burst path
//! ([`SecurityAssociation::encrypt_burst`]) for each run of packets of one SA.
//!
//! Drops that belong to an SA are counted on that SA; the others (unknown SPI, policy
//! discard, unprotected cleartext, fragment drops, unparseable packets) on the
//! gateway's own [`SaStats`]. Like an SA, a gateway is owned by one thread at a time.

use crate::buffer::{PacketBuf, SpareBuffers};
use crate::error::{ConfigError, DropReason, Error, Malformed};
pub use crate::fragment_policy::FragmentLimits;
use crate::fragment_policy::{self, FragmentTable};
use crate::icmp::TooBigMessage;
use crate::nat::NAT_KEEPALIVE_MAX_LEN;
use crate::packet::{self, IPPROTO_ESP, IPPROTO_UDP, IpVersion, NAT_T_PORT};
use crate::reassembly::{Reassembler, Reassembly, ReassemblyLimits};
use crate::sa::{Direction, SaEvent, SaStats, SecurityAssociation, TailroomShape};
use crate::sa_set::KeyRegistry;
use crate::sad::{InboundSad, SadKey};
use crate::shared::LaneLink;
use crate::spd::cache::FlowCache;
use crate::spd::{Action, Spd};
use crate::spi::{SpiAllocator, SpiError};
use core::time::Duration;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

/// What happened to an outbound packet that was not dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outbound<'a> {
    /// Encrypted with the named SA; send it to the SA's peer.
    Protected {
        /// The SA that encrypted it.
        sa: &'a str,
        /// The PROTECT policy that matched.
        policy: &'a str,
    },
    /// A BYPASS policy lets it through in the clear, unchanged.
    Bypassed {
        /// The BYPASS policy that matched.
        policy: &'a str,
    },
}

/// What happened to an inbound packet that was not dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inbound<'a> {
    /// Decrypted by the named SA and checked against its policy; the inner packet is in
    /// the buffer.
    Decrypted {
        /// The SA that decrypted it.
        sa: &'a str,
        /// The first of that SA's policies whose selectors the inner packet matches
        /// (RFC 4301 §5.2).
        policy: &'a str,
    },
    /// Cleartext that a BYPASS policy lets in, unchanged.
    Bypassed {
        /// The BYPASS policy that matched.
        policy: &'a str,
    },
    /// An outer fragment of an ESP packet, copied and held until its datagram is
    /// complete: nothing to pass on yet, and the buffer is free again.
    Reassembling,
}

/// What [`Gateway::outbound_burst`] or [`Gateway::inbound_burst`] did with one packet
/// that was not dropped: the verdict of [`Gateway::outbound`] or [`Gateway::inbound`]
/// without the names (which borrow the gateway; the per-packet calls give them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BurstVerdict {
    /// Encrypted by the SA its PROTECT policy names ([`Outbound::Protected`]).
    Protected,
    /// Let through in the clear, unchanged, by a BYPASS policy ([`Outbound::Bypassed`],
    /// [`Inbound::Bypassed`]).
    Bypassed,
    /// Decrypted by the SA of its SPI and checked against its policies
    /// ([`Inbound::Decrypted`]).
    Decrypted,
    /// An outer fragment held until its datagram is complete
    /// ([`Inbound::Reassembling`]).
    Reassembling,
}

/// Where the first pass of [`Gateway::outbound_burst`] sends a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Refused before a policy decided (malformed, a fragment drop): its result is
    /// written.
    Done,
    /// A BYPASS policy's.
    Bypass,
    /// DISCARD: a DISCARD policy's, no policy's, or a PROTECT policy's whose SA is
    /// not installed.
    Discard,
    /// To be encrypted by the SA of this index.
    Sa(usize),
}

/// What [`Gateway::outbound_route`] remembers of a burst's previous whole packet (with
/// the SPD cache off), to route the next packet of the same flow without a look-up.
#[derive(Clone, Copy, PartialEq)]
enum FlowMemo {
    /// A whole packet's classifier key ([`crate::spd::packet_key`]).
    Key(crate::spd::PacketKey),
    /// Any other packet's flow.
    Flow(crate::spd::Flow),
}

/// One installed SA of a [`Gateway`].
pub(crate) struct SaEntry {
    pub(crate) name: String,
    pub(crate) sa: SecurityAssociation,
    /// Inbound: the SA names whose policies this SA serves, its own first (a successor
    /// installed make-before-break serves its predecessor's policies too, RFC 4301
    /// §4.1's "SAs that share selectors").
    pub(crate) serves: Vec<String>,
    /// Outbound: the SA names, as policies write them, whose traffic this SA carries
    /// (its own, and those of the SAs it succeeded).
    pub(crate) routes: Vec<String>,
    /// When the caller's clock reaches this, the SA is deleted ([`Gateway::retire_sa`]).
    pub(crate) retire_at: Option<Duration>,
    /// A lane of a shared SA ([`Gateway::add_sa_lane`]): its tie to the shared part.
    pub(crate) lane: Option<LaneLink>,
    /// Inbound: the first policy (its reference in the SPD) this SA serves, with the
    /// [`Gateway::epoch`] it was found at, so that the packet path checks that policy's
    /// selectors without looking the served names up again. Stale (recomputed) once
    /// the epoch moves on.
    pub(crate) first_served: Option<(u64, usize)>,
}

impl SaEntry {
    /// A new SA `name`, serving and carrying its own name.
    pub(crate) fn new(name: &str, sa: SecurityAssociation, lane: Option<LaneLink>) -> SaEntry {
        SaEntry {
            name: name.to_owned(),
            sa,
            serves: vec![name.to_owned()],
            routes: vec![name.to_owned()],
            retire_at: None,
            lane,
            first_served: None,
        }
    }

    /// The first policy this inbound SA serves (see [`SaEntry::first_served`]) in `spd`
    /// at `epoch`; `None` when it serves none.
    #[inline]
    fn first_served(&mut self, spd: &Spd, epoch: u64) -> Option<usize> {
        match self.first_served {
            Some((e, r)) if e == epoch => Some(r),
            _ => {
                let r = spd.serving(&self.serves).first().copied()?;
                self.first_served = Some((epoch, r));
                Some(r)
            }
        }
    }
}

/// Slots of [`Gateway::route_memo`] (a power of two).
const ROUTE_MEMO: usize = 8;

/// A remembered answer of the outbound route lookup: the PROTECT policy at
/// `position` sends through the SA `sa`, as long as the [`Gateway::epoch`] is `epoch`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RouteMemo {
    epoch: u64,
    position: usize,
    sa: usize,
}

/// The outbound SA that carries the traffic of the PROTECT policy at `position`, which
/// names the SA `name`: from `memo` when it remembers the answer at `epoch`, else from
/// `routes` (and remembered). The same answer as `routes.get(name)`: the memo is
/// stale as soon as the policies or the SAs change ([`Gateway::epoch`]).
#[inline]
fn resolve_route(
    memo: &mut [RouteMemo; ROUTE_MEMO],
    epoch: u64,
    routes: &HashMap<String, usize, foldhash::fast::RandomState>,
    position: Option<usize>,
    name: &str,
) -> Option<usize> {
    let Some(position) = position else {
        return routes.get(name).copied();
    };
    let slot = &mut memo[position & (ROUTE_MEMO - 1)];
    if slot.epoch == epoch && slot.position == position {
        return Some(slot.sa);
    }
    let sa = routes.get(name).copied()?;
    *slot = RouteMemo {
        epoch,
        position,
        sa,
    };
    Some(sa)
}

impl Drop for SaEntry {
    fn drop(&mut self) {
        // A lane's last counters reach the shared SA's sum.
        if let Some(link) = &self.lane {
            link.publish(&self.sa.stats());
        }
    }
}

/// The SPD and the SAs it names, ready to process packets; SAs and policies can be
/// added, replaced and deleted while it runs (the [`crate::control`] methods).
pub struct Gateway {
    pub(crate) spd: Spd,
    /// Installed SAs; `None` is a free slot (indices of live SAs never move).
    pub(crate) entries: Vec<Option<SaEntry>>,
    pub(crate) free: Vec<usize>,
    pub(crate) by_name: HashMap<String, usize>,
    /// Outbound SA names as policies write them → the outbound SA that carries them.
    /// Hashed with `foldhash` (keyed, random seed), as the SAD is: every outbound
    /// packet looks its SA up here by name.
    pub(crate) routes: HashMap<String, usize, foldhash::fast::RandomState>,
    /// Inbound SA names as policies write them → the inbound SAs that serve them.
    pub(crate) served_by: HashMap<String, Vec<usize>>,
    /// The direction of every SA name policies may use now (`Gateway::sa_direction`
    /// of each name of `routes` and `served_by` that has one), kept up to date by every
    /// SA change; persistent, so that a policy edit takes it in O(1)
    /// ([`Gateway::edit_policies`]).
    pub(crate) sa_dirs: imbl::HashMap<Arc<str>, Direction>,
    /// Inbound SAs by SPI, and by SPI and addresses where their lookup asks for it
    /// (RFC 4301 §4.1, [`crate::SaLookup`]).
    pub(crate) inbound: InboundSad,
    /// Outbound SAs by SPI, for ICMP about their packets (SPIs are chosen by the
    /// peers, so two outbound SAs may share one).
    pub(crate) outbound_by_spi: HashMap<u32, Vec<usize>>,
    pub(crate) stats: SaStats,
    /// How many installed SAs need each headroom: the largest is `max_headroom`.
    pub(crate) headrooms: BTreeMap<usize, usize>,
    /// The outbound SAs' tailroom shapes, each with how many SAs have it (so that
    /// [`Gateway::tailroom_for`] looks at a few shapes, not at every SA).
    tailrooms: BTreeMap<TailroomShape, usize>,
    /// SAs with a retirement time set.
    pub(crate) retiring: usize,
    /// Bumped whenever an SA is installed or removed or the policies (or their
    /// references) change: the packet path's memos of names resolved
    /// ([`Gateway::route_memo`], [`SaEntry::first_served`]) hold only for the epoch they
    /// were made in. Starts at 1 (0 marks an empty memo).
    pub(crate) epoch: u64,
    /// Outbound: PROTECT policy positions and the SAs they send through, resolved
    /// before in this [`Gateway::epoch`] (direct-mapped by position), so that a packet
    /// of a recent policy skips the hash of its SA's name.
    route_memo: [RouteMemo; ROUTE_MEMO],
    /// Unique among the gateways of this process: a policy edit is committed only to
    /// the gateway it was taken from.
    pub(crate) id: u64,
    /// Bumped whenever the policies change ([`crate::control::PolicyEdit`]).
    pub(crate) policy_generation: u64,
    /// Bumped whenever an SA is deleted or set to retire.
    pub(crate) sa_removals: u64,
    /// SAs added or removed so far ([`Gateway::sa_changes`]).
    sa_changes: u64,
    /// The keys of the installed SAs (no key may serve two SAs).
    pub(crate) keys: KeyRegistry,
    /// Outer ESP fragments in progress.
    reassembler: Reassembler,
    /// First fragments' decisions, for the datagrams' later fragments.
    pub(crate) fragments: FragmentTable,
    /// The SPD cache of whole cleartext packets (off by default).
    pub(crate) flow_cache: FlowCache,
    /// SPIs handed out for SAs being negotiated; the inbound SAs' SPIs are in use.
    pub(crate) spis: SpiAllocator,
}

impl core::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Gateway")
            .field(
                "sas",
                &self
                    .entries
                    .iter()
                    .flatten()
                    .map(|e| &e.name)
                    .collect::<Vec<_>>(),
            )
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Creates the SAs of the SPD's `[[sa]]` tables at time `now`. Fails when an SA's
    /// configuration is invalid, two inbound SAs share an SPI and a lookup key
    /// ([`crate::SaLookup`]), or a key serves two SAs
    /// (or one SA twice): the checks of [`crate::sa_set`], which loading the [`Spd`]
    /// already ran, are run again here so that a gateway never depends on how its SPD
    /// was made.
    pub fn new(mut spd: Spd, now: Duration) -> Result<Gateway, ConfigError> {
        let configs = spd.take_sas();
        if let Some(e) = crate::sa_set::check_key_reuse(&configs)
            .into_iter()
            .chain(crate::sa_set::check_sas(&configs))
            .next()
        {
            return Err(e);
        }
        let mut gateway = Gateway {
            spd,
            entries: Vec::with_capacity(configs.len()),
            free: Vec::new(),
            by_name: HashMap::with_capacity(configs.len()),
            routes: HashMap::default(),
            served_by: HashMap::new(),
            sa_dirs: imbl::HashMap::new(),
            inbound: InboundSad::default(),
            outbound_by_spi: HashMap::new(),
            stats: SaStats::default(),
            headrooms: BTreeMap::new(),
            tailrooms: BTreeMap::new(),
            retiring: 0,
            epoch: 1,
            route_memo: [RouteMemo::default(); ROUTE_MEMO],
            id: {
                static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
            policy_generation: 0,
            sa_removals: 0,
            sa_changes: 0,
            keys: KeyRegistry::new(),
            reassembler: Reassembler::new(ReassemblyLimits::DEFAULT),
            fragments: FragmentTable::new(FragmentLimits::DEFAULT),
            flow_cache: FlowCache::new(0),
            spis: SpiAllocator::new(),
        };
        for named in configs {
            let label = format!("sa {:?}", named.name);
            let sa =
                SecurityAssociation::new(named.config, now).map_err(|e| e.in_context(&label))?;
            // Unique names, lookup keys and keys: the checks above.
            gateway.insert_entry(SaEntry::new(&named.name, sa, None));
        }
        Ok(gateway)
    }

    /// Puts a checked SA into the tables (its name, lookup key and keys are free) and returns
    /// its index.
    pub(crate) fn insert_entry(&mut self, entry: SaEntry) -> usize {
        self.sa_changes += 1;
        self.epoch += 1;
        let index = self.free.pop().unwrap_or(self.entries.len());
        let names: Vec<String> = entry.serves.iter().chain(&entry.routes).cloned().collect();
        let sa = &entry.sa;
        match sa.direction() {
            Direction::Inbound => {
                self.inbound.insert(sa_key(sa), index);
                // Cannot fail: the SA's SPI is 256 or more (`SaConfig::check`).
                let _ = self.spis.mark_in_use(sa.spi());
                for name in &entry.serves {
                    self.served_by.entry(name.clone()).or_default().push(index);
                }
            }
            Direction::Outbound => {
                self.outbound_by_spi
                    .entry(sa.spi())
                    .or_default()
                    .push(index);
                for name in &entry.routes {
                    self.routes.insert(name.clone(), index);
                }
                *self.tailrooms.entry(sa.tailroom_shape()).or_default() += 1;
            }
        }
        *self.headrooms.entry(sa.max_headroom()).or_default() += 1;
        self.keys.insert(index, sa.keys());
        self.by_name.insert(entry.name.clone(), index);
        self.retiring += usize::from(entry.retire_at.is_some());
        if index == self.entries.len() {
            self.entries.push(Some(entry));
        } else {
            self.entries[index] = Some(entry);
        }
        for n in &names {
            self.sync_sa_dir(n);
        }
        index
    }

    /// Takes the SA `index` out of every table; the remembered fragment decisions are
    /// forgotten (none may name it any more).
    pub(crate) fn remove_entry(&mut self, index: usize) -> SaEntry {
        self.sa_changes += 1;
        self.epoch += 1;
        let entry = self.entries[index].take().expect("a live SA index");
        let sa = &entry.sa;
        match sa.direction() {
            Direction::Inbound => {
                // The SPI is free once no SA of any lookup key has it.
                if self.inbound.remove(&sa_key(sa)) {
                    self.spis.release(sa.spi());
                }
                for name in &entry.serves {
                    if let Some(v) = self.served_by.get_mut(name) {
                        v.retain(|&i| i != index);
                        if v.is_empty() {
                            self.served_by.remove(name);
                        }
                    }
                }
            }
            Direction::Outbound => {
                if let Some(v) = self.outbound_by_spi.get_mut(&sa.spi()) {
                    v.retain(|&i| i != index);
                    if v.is_empty() {
                        self.outbound_by_spi.remove(&sa.spi());
                    }
                }
                for name in &entry.routes {
                    self.routes.remove(name);
                }
                let shape = sa.tailroom_shape();
                if let Some(n) = self.tailrooms.get_mut(&shape) {
                    *n -= 1;
                    if *n == 0 {
                        self.tailrooms.remove(&shape);
                    }
                }
            }
        }
        if let Some(n) = self.headrooms.get_mut(&sa.max_headroom()) {
            *n -= 1;
            if *n == 0 {
                self.headrooms.remove(&sa.max_headroom());
            }
        }
        self.keys.remove(index, sa.keys());
        self.by_name.remove(&entry.name);
        self.retiring -= usize::from(entry.retire_at.is_some());
        self.fragments.forget_all();
        self.sa_removals += 1;
        self.free.push(index);
        for n in entry.serves.iter().chain(&entry.routes) {
            self.sync_sa_dir(n);
        }
        entry
    }

    /// The live SA `index`.
    #[inline]
    pub(crate) fn entry(&self, index: usize) -> &SaEntry {
        self.entries[index].as_ref().expect("a live SA index")
    }

    /// Allocates an SPI for an inbound SA being negotiated (`get_spi`, as IKE daemons
    /// call it): random, never below 256, never the SPI of one of the gateway's inbound
    /// SAs nor one handed out before whose reservation still runs at `now` (see
    /// [`crate::spi`]; reservations last [`SpiAllocator::DEFAULT_RESERVATION`] on the
    /// caller's clock). Fails with [`SpiError::Exhausted`] when no SPI is free, or
    /// [`SpiError::RandomnessUnavailable`].
    pub fn allocate_spi(&mut self, now: Duration) -> Result<u32, SpiError> {
        self.spis.allocate(now)
    }

    /// Gives back an SPI from [`Self::allocate_spi`] that no SA was installed with (the
    /// negotiation failed, or the daemon deletes an SA it never added: strongSwan's
    /// `del_sa` after a failed CHILD_SA), so that it may be drawn again at once
    /// instead of when its reservation runs out. Returns whether it was reserved. The
    /// SPI of an installed inbound SA is never given back here (false): delete the SA.
    ///
    /// ```
    /// use std::time::Duration;
    /// use ipsec_core::{Gateway, Spd};
    ///
    /// let mut gw = Gateway::new(Spd::from_toml("")?, Duration::ZERO)?;
    /// let spi = gw.allocate_spi(Duration::ZERO)?;
    /// assert!(gw.release_spi(spi));
    /// assert!(!gw.release_spi(spi), "given back once");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn release_spi(&mut self, spi: u32) -> bool {
        !self.spis.is_in_use(spi) && self.spis.release(spi)
    }

    /// Makes [`Self::allocate_spi`] draw from `min..=max` only (as strongSwan's
    /// `spi_min` / `spi_max`, e.g. to leave a range to another key manager); SPIs in use
    /// and reserved stay so. Refused (nothing changed) when `min` is below 256 or above
    /// `max`. The default range is 256..=2^32-1.
    pub fn set_spi_range(&mut self, min: u32, max: u32) -> Result<(), ConfigError> {
        self.spis.set_range(min, max)
    }

    /// Turns the SPD cache (RFC 4301 §4.4.2) of the gateway's own path on with room for
    /// `capacity` flows (rounded up to a power of two), or off with 0 (the default).
    /// Whole cleartext packets (outbound, and inbound cleartext) whose exact flow was
    /// seen are then decided without the classifier. It is emptied whenever the
    /// policies change, so it never answers from a replaced SPD. Its memory (about 56
    /// bytes a flow) is allocated here, once. Worth it when the flows of the traffic fit
    /// and the SPD is large (`benches/benches/scale.rs` measures both paths); with the
    /// cache on, every packet's flow is parsed and hashed, which costs more than the
    /// classifier of a gateway's usual few dozen policies (it reads a whole
    /// packet's key straight from its bytes).
    pub fn set_spd_cache(&mut self, capacity: usize) {
        self.flow_cache = FlowCache::new(capacity);
    }

    /// The SPD cache's room (0: off), and its hits and misses so far.
    pub fn spd_cache_stats(&self) -> (usize, u64, u64) {
        (
            self.flow_cache.capacity(),
            self.flow_cache.hits,
            self.flow_cache.misses,
        )
    }

    /// The limits of the memory of first fragments (see [`crate::fragment_policy`]).
    pub fn fragment_limits(&self) -> FragmentLimits {
        self.fragments.limits()
    }

    /// Sets the limits of the memory of first fragments; what it held is forgotten
    /// (later fragments of those datagrams get the stateless answer). Its memory is
    /// allocated here, once.
    pub fn set_fragment_limits(&mut self, limits: FragmentLimits) {
        self.fragments = FragmentTable::new(limits);
    }

    /// How many datagrams' first fragments are remembered at `now` (for monitoring).
    pub fn remembered_datagrams(&self, now: Duration) -> usize {
        self.fragments.len(now)
    }

    /// The policies.
    pub fn spd(&self) -> &Spd {
        &self.spd
    }

    /// The SA called `name`.
    pub fn sa(&self, name: &str) -> Option<&SecurityAssociation> {
        self.by_name.get(name).map(|&i| &self.entry(i).sa)
    }

    /// The name of the inbound SA an ESP packet with `spi` from outer source `src` to
    /// outer destination `dst` is checked against: RFC 4301 §4.1's longest match, as
    /// [`Gateway::inbound`] finds it (see [`SaLookup`](crate::SaLookup)), without
    /// touching the SA. `None` when no SA matches (the packet would be dropped as
    /// `unknown_spi`). An SA being retired whose grace time has run out is still found
    /// here until a packet or an expiry check removes it.
    ///
    /// ```
    /// # use ipsec_core::sa::{Direction, Mode};
    /// # use ipsec_core::{Cipher, Gateway, SaConfig, Spd};
    /// # use std::time::Duration;
    /// let deny = "[[policy]]\nname = \"deny-all\"\naction = \"discard\"\n";
    /// let mut gw = Gateway::new(Spd::from_toml(deny).unwrap(), Duration::ZERO).unwrap();
    /// let cfg = SaConfig::new(0x4242, Direction::Inbound, Mode::Tunnel,
    ///                         Cipher::Aes128Gcm, &[7; 20]);
    /// gw.add_sa("from-branch", cfg, Duration::ZERO).unwrap();
    /// let (src, dst) = ("192.0.2.1".parse().unwrap(), "198.51.100.1".parse().unwrap());
    /// assert_eq!(gw.inbound_sa_for(0x4242, src, dst), Some("from-branch"));
    /// assert_eq!(gw.inbound_sa_for(0x4343, src, dst), None);
    /// ```
    #[inline]
    pub fn inbound_sa_for(&self, spi: u32, src: IpAddr, dst: IpAddr) -> Option<&str> {
        let i = self.inbound.lookup(spi, || Some((src, dst)))?;
        Some(self.entry(i).name.as_str())
    }

    /// Every SA with its name (for monitoring): those of the policy file in file order,
    /// then those added later (an added SA may take the place of a deleted one).
    pub fn sas(&self) -> impl Iterator<Item = (&str, &SecurityAssociation)> {
        self.entries
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), &e.sa))
    }

    /// A counter that moves whenever an SA is added or removed (by a control call, or
    /// by the gateway when a retired SA's time comes): a list of [`Gateway::sas`] taken
    /// at one reading is still the list, in the same order, while the counter reads the
    /// same.
    pub fn sa_changes(&self) -> u64 {
        self.sa_changes
    }

    /// The headroom to leave in front of an outbound packet so that any of the
    /// gateway's SAs can encrypt it ([`SecurityAssociation::max_headroom`]).
    pub fn max_headroom(&self) -> usize {
        self.headrooms.keys().next_back().copied().unwrap_or(0)
    }

    /// The tailroom to leave behind an outbound packet of `len` bytes so that any of
    /// the gateway's outbound SAs can encrypt it ([`SecurityAssociation::tailroom_for`]).
    /// Cost: one step per distinct SA shape (mode, TFC padding, cipher alignment and
    /// ICV length), however many SAs there are.
    pub fn tailroom_for(&self, len: usize) -> usize {
        self.tailrooms
            .keys()
            .map(|shape| shape.tailroom_for(len))
            .max()
            .unwrap_or(0)
    }

    /// Drops that belong to no SA: unknown SPI, policy discard, unprotected cleartext,
    /// packets too malformed to classify, outer fragments dropped (timed out,
    /// overlapping, duplicate, over a limit, invalid) and reassembled datagrams that did
    /// not fit the caller's buffer (`no_buffer_space`).
    pub fn stats(&self) -> &SaStats {
        &self.stats
    }

    /// The reassembler of outer ESP fragments: the datagrams it completed (`packets`,
    /// `bytes` of its stats) and what it holds. Its drops are also counted in
    /// [`Self::stats`].
    pub fn reassembler(&self) -> &Reassembler {
        &self.reassembler
    }

    /// Replaces the reassembler's limits (default [`ReassemblyLimits::DEFAULT`]);
    /// fragments held beyond the new ones are dropped as `fragment_limit`. Returns how
    /// many.
    pub fn set_reassembly_limits(&mut self, limits: ReassemblyLimits) -> usize {
        let n = self.reassembler.set_limits(limits);
        self.stats.count_drops(DropReason::FragmentLimit, n as u64);
        n
    }

    /// Drops the outer fragments whose datagram did not complete within its lifetime at
    /// `now` (counted as `fragment_timeout`) and returns how many. `inbound` does this on
    /// every fragment; call it when none come, to free what is held.
    pub fn expire_fragments(&mut self, now: Duration) -> usize {
        let n = self.reassembler.expire(now);
        self.stats
            .count_drops(DropReason::FragmentTimeout, n as u64);
        n
    }

    /// Checks every SA's lifetimes against `now` and returns the next event the caller
    /// must act on (a rekey or an expiry, as [`SecurityAssociation::poll_event`]) with
    /// the name of its SA, or `None` when nothing is due. Call it until it returns `None`.
    #[must_use]
    pub fn poll_event(&mut self, now: Duration) -> Option<(&str, SaEvent)> {
        self.reap_retired(now);
        self.entries
            .iter_mut()
            .flatten()
            .find_map(|e| e.sa.poll_event(now).map(|ev| (e.name.as_str(), ev)))
    }

    /// When the next NAT-keepalive of any of the gateway's SAs is due, on the caller's
    /// clock ([`SecurityAssociation::next_keepalive`]), or `None` when none of them sends
    /// keepalives. Arm a timer for it and call [`Gateway::poll_keepalive`] then.
    pub fn next_keepalive(&self) -> Option<Duration> {
        self.sas().filter_map(|(_, sa)| sa.next_keepalive()).min()
    }

    /// Writes the next NAT-keepalive due at `now` into `out` and returns the name of the
    /// SA it belongs to and its length, as [`SecurityAssociation::poll_keepalive`] does
    /// for one SA; `None` when no SA owes one. Call it until it returns `None`, sending
    /// each keepalive as it comes. SAs that share a NAT mapping (the same addresses and
    /// ports) each keep their own schedule.
    #[must_use]
    pub fn poll_keepalive(
        &mut self,
        now: Duration,
        out: &mut [u8; NAT_KEEPALIVE_MAX_LEN],
    ) -> Option<(&str, usize)> {
        self.entries
            .iter_mut()
            .flatten()
            .find_map(|e| e.sa.poll_keepalive(now, out).map(|n| (e.name.as_str(), n)))
    }

    fn drop(&mut self, err: Error) -> Error {
        self.stats.count_drop(err.drop_reason());
        err
    }

    /// Classifies the packet in `pkt` (direction outbound) and bypasses, discards or
    /// encrypts it in place with the SA the PROTECT policy names.
    ///
    /// A packet that does not fit its SA's path MTU is refused with
    /// [`Error::TooBig`] or, when it may be fragmented, [`Error::NoSpareBuffers`]:
    /// [`Self::outbound_fragmenting`] takes spare buffers for the fragments.
    pub fn outbound(
        &mut self,
        pkt: &mut PacketBuf<'_>,
        now: Duration,
    ) -> Result<Outbound<'_>, Error> {
        self.outbound_fragmenting(pkt, &mut SpareBuffers::none(), now)
            .map(|(verdict, _)| verdict)
    }

    /// [`Self::outbound`] for packets that may have to be fragmented to fit the path
    /// MTU ([`SecurityAssociation::encrypt_fragmenting`]): the extra packets go into the
    /// next spares of `spares`; returns the verdict and how many spares were filled.
    pub fn outbound_fragmenting(
        &mut self,
        pkt: &mut PacketBuf<'_>,
        spares: &mut SpareBuffers<'_, '_>,
        now: Duration,
    ) -> Result<(Outbound<'_>, usize), Error> {
        let decision = match fragment_policy::cleartext_decision(
            &self.spd,
            &mut self.flow_cache,
            &mut self.fragments,
            Direction::Outbound,
            pkt.data(),
            now,
        ) {
            Ok(d) => d,
            Err(e) => {
                // (`self.drop` would borrow all of `self`, and the decision borrows
                // the SPD until the verdict is returned.)
                self.stats.count_drop(e.drop_reason());
                return Err(e);
            }
        };
        let found = match (decision.action, decision.policy, decision.sa) {
            (Action::Bypass, Some(policy), _) => return Ok((Outbound::Bypassed { policy }, 0)),
            (Action::Protect, Some(policy), Some(name)) => resolve_route(
                &mut self.route_memo,
                self.epoch,
                &self.routes,
                decision.policy_index,
                name,
            )
            .map(|i| (i, policy)),
            _ => None,
        };
        let Some((i, policy)) = found else {
            self.stats.count_drop(DropReason::PolicyDiscard);
            return Err(Error::PolicyDiscard);
        };
        let entry = self.entries[i].as_mut().expect("routes name live SAs");
        if let Some(link) = &mut entry.lane {
            // A lane's SA sends only numbers of its block: enough for the packet and,
            // when spares are offered, for the fragments it may become.
            let need = if spares.remaining() == 0 {
                1
            } else {
                1 + entry.sa.spares_needed(pkt.data(), now) as u64
            };
            link.ensure_seq(&mut entry.sa, need)?;
        }
        let extra = entry.sa.encrypt_fragmenting(pkt, spares, now)?;
        Ok((
            Outbound::Protected {
                sa: &entry.name,
                policy,
            },
            extra,
        ))
    }

    /// [`Self::outbound`] for a burst of packets: `results[i]` receives the outcome of
    /// `packets[i]`. Only the first `min(packets.len(), results.len())` packets are
    /// processed; returns how many were not dropped.
    ///
    /// Every packet gets the verdict, the bytes and the counters (the gateway's, the
    /// SAs', the SPD cache's) that [`Self::outbound`] would give it, called on each
    /// packet in turn: a dropped packet is counted under its reason and left in its
    /// buffer. The burst is faster in two ways. The packets are classified first, and
    /// each run of consecutive packets for one SA is then encrypted with
    /// [`SecurityAssociation::encrypt_burst`] (the SAs are independent of each other
    /// and of the classification, and each SA sees its packets in their order, so
    /// nothing observable changes). And when the gateway's SPD cache is off
    /// ([`Self::set_spd_cache`]), a whole packet of the same flow (the same
    /// [`crate::Flow`]) as the burst's previous whole packet takes that packet's
    /// decision without the classifier: the policies cannot change within the call,
    /// so the classifier would answer the same. (With the cache on, every packet asks
    /// the cache, so that its hit and miss counts are those of single calls.)
    ///
    /// Packets that must be fragmented to fit their SA's path MTU are refused as by
    /// [`Self::outbound`] ([`Error::TooBig`] or [`Error::NoSpareBuffers`]): send them
    /// with [`Self::outbound_fragmenting`]. A lane of a shared SA
    /// ([`Gateway::add_sa_lane`]) encrypts its runs with the same burst code and the
    /// numbers of its block ([`crate::SaLane::encrypt_burst`]): the sequence numbers,
    /// block leases and counters of [`Self::outbound`] on each packet in turn.
    pub fn outbound_burst(
        &mut self,
        packets: &mut [PacketBuf<'_>],
        results: &mut [Result<BurstVerdict, Error>],
        now: Duration,
    ) -> usize {
        const CHUNK: usize = 32;
        let n = packets.len().min(results.len());
        let (packets, results) = (&mut packets[..n], &mut results[..n]);
        let mut ok = 0;
        // The burst's previous whole packet's flow and its route (cache off only).
        let mut last: Option<(FlowMemo, Route)> = None;
        for (pkts, ress) in packets.chunks_mut(CHUNK).zip(results.chunks_mut(CHUNK)) {
            let mut routes = [Route::Done; CHUNK];
            for ((pkt, res), route) in pkts.iter().zip(ress.iter_mut()).zip(&mut routes) {
                *route = self.outbound_route(pkt.data(), res, &mut last, now);
            }
            let mut done = [Ok(()); CHUNK];
            let mut at = 0;
            while at < pkts.len() {
                let Route::Sa(i) = routes[at] else {
                    ok += usize::from(ress[at].is_ok());
                    at += 1;
                    continue;
                };
                let end = at
                    + routes[at..pkts.len()]
                        .iter()
                        .take_while(|&&r| r == Route::Sa(i))
                        .count();
                let entry = self.entries[i].as_mut().expect("routes name live SAs");
                let (run, run_done) = (&mut pkts[at..end], &mut done[at..end]);
                match &mut entry.lane {
                    None => {
                        entry.sa.encrypt_burst(run, run_done, now);
                    }
                    // A lane: the same burst code, with the numbers of its block.
                    Some(link) => {
                        link.encrypt_burst(&mut entry.sa, run, run_done, now);
                    }
                }
                for (res, d) in ress[at..end].iter_mut().zip(&done[at..end]) {
                    *res = d.map(|()| BurstVerdict::Protected);
                    ok += usize::from(d.is_ok());
                }
                at = end;
            }
        }
        ok
    }

    /// The first pass of [`Self::outbound_burst`] for the packet `data`: the SA that
    /// will encrypt it, or [`Route::Done`] with its result written in `res` (bypassed,
    /// or dropped and counted), as [`Self::outbound_fragmenting`] decides it. `last`
    /// is the burst's previous whole packet's flow and route (kept with the cache off).
    #[inline]
    fn outbound_route(
        &mut self,
        data: &[u8],
        res: &mut Result<BurstVerdict, Error>,
        last: &mut Option<(FlowMemo, Route)>,
        now: Duration,
    ) -> Route {
        let cache_off = self.flow_cache.is_off();
        // A whole packet (IPv4, or IPv6 without extension headers) is looked up by its
        // key, read from the bytes; the rest (and every packet of a changed SPD) by its
        // parsed flow.
        let quick = match cache_off.then(|| crate::spd::packet_key(data)).flatten() {
            Some(key) => match last {
                Some((FlowMemo::Key(k), route)) if *k == key => {
                    return self.route_verdict(*route, res);
                }
                _ => self
                    .spd
                    .lookup_packet_key(Direction::Outbound, &key)
                    .map(|d| (Some(FlowMemo::Key(key)), d)),
            },
            None => None,
        };
        let (memo, decision) = match quick {
            Some(q) => q,
            None => {
                let (flow, fragment) =
                    match crate::spd::Flow::from_packet_with_fragment(Direction::Outbound, data) {
                        Ok(f) => f,
                        Err(m) => {
                            let e = Error::Malformed(m);
                            self.stats.count_drop(e.drop_reason());
                            *res = Err(e);
                            return Route::Done;
                        }
                    };
                let decision = match fragment {
                    None => match last {
                        Some((FlowMemo::Flow(f), route)) if cache_off && *f == flow => {
                            return self.route_verdict(*route, res);
                        }
                        _ => self.flow_cache.lookup(&self.spd, &flow),
                    },
                    Some(f) => match fragment_policy::cleartext_fragment_decision(
                        &self.spd,
                        &mut self.fragments,
                        &flow,
                        &f,
                        now,
                    ) {
                        Ok(d) => d,
                        Err(e) => {
                            self.stats.count_drop(e.drop_reason());
                            *res = Err(e);
                            return Route::Done;
                        }
                    },
                };
                let memo = (fragment.is_none() && cache_off).then_some(FlowMemo::Flow(flow));
                (memo, decision)
            }
        };
        let route = match (decision.action, decision.policy, decision.sa) {
            (Action::Bypass, Some(_), _) => Route::Bypass,
            (Action::Protect, Some(_), Some(name)) => resolve_route(
                &mut self.route_memo,
                self.epoch,
                &self.routes,
                decision.policy_index,
                name,
            )
            .map_or(Route::Discard, Route::Sa),
            _ => Route::Discard,
        };
        if let Some(memo) = memo {
            *last = Some((memo, route));
        }
        self.route_verdict(route, res)
    }

    /// Writes in `res` the result of a packet routed to `route` that is not encrypted
    /// (bypassed, or discarded and counted); returns `route`.
    #[inline]
    fn route_verdict(&mut self, route: Route, res: &mut Result<BurstVerdict, Error>) -> Route {
        match route {
            Route::Bypass => *res = Ok(BurstVerdict::Bypassed),
            Route::Discard => {
                self.stats.count_drop(DropReason::PolicyDiscard);
                *res = Err(Error::PolicyDiscard);
            }
            Route::Sa(_) | Route::Done => {}
        }
        route
    }

    /// How many spare buffers [`Self::outbound_fragmenting`] needs for the outbound
    /// packet `packet` at `now` (0 when it fits, is bypassed or is refused).
    pub fn spares_needed(&self, packet: &[u8], now: Duration) -> usize {
        self.protecting_sa(packet)
            .map_or(0, |i| self.entry(i).sa.spares_needed(packet, now))
    }

    /// The usable inner MTU when [`Self::outbound`] would refuse the outbound packet
    /// `packet` at `now` as [`Error::TooBig`] (for [`crate::icmp::too_big_reply`]).
    pub fn too_big_mtu(&self, packet: &[u8], now: Duration) -> Option<u16> {
        self.protecting_sa(packet)
            .and_then(|i| self.entry(i).sa.too_big_mtu(packet, now))
    }

    /// The SA a PROTECT policy sends the outbound packet `packet` through.
    fn protecting_sa(&self, packet: &[u8]) -> Option<usize> {
        // The stateless answer (a later fragment's remembered decision is not looked
        // up: this only sizes spares and ICMP errors).
        let d = self.spd.lookup_packet(Direction::Outbound, packet).ok()?;
        match (d.action, d.sa) {
            (Action::Protect, Some(name)) => self.routes.get(name).copied(),
            _ => None,
        }
    }

    /// Hands an ICMP "fragmentation needed" / ICMPv6 "packet too big" message to the
    /// outbound SA whose packet it quotes ([`SecurityAssociation::handle_icmp`]): returns
    /// that SA's name and its new path MTU, `None` when the MTU did not go down, or
    /// [`Malformed::NotPathMtuMessage`] when no SA sent the quoted packet.
    pub fn handle_icmp(
        &mut self,
        icmp: &[u8],
        now: Duration,
    ) -> Result<Option<(&str, u16)>, Error> {
        let not_ours = Error::Malformed(Malformed::NotPathMtuMessage);
        let msg = TooBigMessage::parse(icmp).map_err(Error::Malformed)?;
        let spi = msg.quoted_spi().ok_or(not_ours)?;
        let Gateway {
            outbound_by_spi,
            entries,
            ..
        } = self;
        let candidates = outbound_by_spi.get(&spi).ok_or(not_ours)?;
        let mut answer = None;
        for &i in candidates {
            let entry = entries[i].as_mut().expect("outbound_by_spi names live SAs");
            match entry.sa.handle_icmp(icmp, now) {
                Ok(learned) => {
                    answer = Some((i, learned));
                    break;
                }
                Err(e) if e == not_ours => continue,
                Err(e) => return Err(e),
            }
        }
        let (i, learned) = answer.ok_or(not_ours)?;
        let name = entries[i].as_ref().map_or("", |e| e.name.as_str());
        Ok(learned.map(|m| (name, m)))
    }

    /// [`Self::inbound`] for a burst of packets: `results[i]` receives the outcome of
    /// `packets[i]`. Only the first `min(packets.len(), results.len())` packets are
    /// processed; returns how many were not dropped.
    ///
    /// Every packet gets the verdict, the bytes and the counters (the gateway's, the
    /// SAs', the SPD cache's) that [`Self::inbound`] would give it, called on each
    /// packet in turn: a dropped packet is counted under its reason. The burst is faster
    /// where consecutive packets are plain ESP for one SA (an outer IPv4 header without
    /// options, or IPv6 without extension headers, ESP directly or in UDP on the NAT-T
    /// port: what a tunnel between two sites mostly carries): such a run goes to the
    /// SA's burst code
    /// ([`SecurityAssociation::decrypt_burst`]: for AES-CBC with HMAC the ICVs of the
    /// run are computed together), each packet still checked against the SA's
    /// policies in turn. The packets are processed in their order, so the state
    /// packets share (replay windows, lifetimes, remembered fragment decisions, the
    /// reassembler) sees what single calls show it; a lane of a shared SA checks and
    /// records each packet in the shared replay window. Everything else (fragments,
    /// IPv4 options, IPv6 extension headers, cleartext, and every packet while an SA is
    /// retiring) goes through [`Self::inbound`] one packet at a time.
    pub fn inbound_burst(
        &mut self,
        packets: &mut [PacketBuf<'_>],
        results: &mut [Result<BurstVerdict, Error>],
        now: Duration,
    ) -> usize {
        const CHUNK: usize = 32;
        let n = packets.len().min(results.len());
        let (packets, results) = (&mut packets[..n], &mut results[..n]);
        let mut ok = 0;
        for (pkts, ress) in packets.chunks_mut(CHUNK).zip(results.chunks_mut(CHUNK)) {
            // Each packet's SA where it can join a run. Looking an SA up changes nothing
            // while no SA is retiring (then a lookup may delete one), and decrypting a
            // packet does not change which SA an SPI names, so the routes found first
            // are the routes each packet would find in turn.
            let mut routes = [None; CHUNK];
            if self.retiring == 0 {
                // The last SPI whose route holds for all its packets, and that route:
                // a burst is mostly one SA's, and this spares the hash look-up.
                let mut known: Option<(u32, Option<usize>)> = None;
                for (pkt, route) in pkts.iter().zip(&mut routes) {
                    let data = pkt.data();
                    let Some(spi) = plain_esp_spi(data) else {
                        continue;
                    };
                    *route = match known {
                        Some((s, r)) if s == spi => r,
                        _ => {
                            let (r, spi_alone) = self.inbound_run_sa(spi, data);
                            if spi_alone {
                                known = Some((spi, r));
                            }
                            r
                        }
                    };
                }
            }
            let mut at = 0;
            while at < pkts.len() {
                let run = routes[at].map_or(1, |i| {
                    routes[at..pkts.len()]
                        .iter()
                        .take_while(|&&r| r == Some(i))
                        .count()
                });
                match routes[at] {
                    Some(i) if run > 1 => {
                        let end = at + run;
                        ok += self.decrypt_run(i, &mut pkts[at..end], &mut ress[at..end], now);
                    }
                    _ => {
                        let r = self.inbound(&mut pkts[at], now).map(|v| match v {
                            Inbound::Decrypted { .. } => BurstVerdict::Decrypted,
                            Inbound::Bypassed { .. } => BurstVerdict::Bypassed,
                            Inbound::Reassembling => BurstVerdict::Reassembling,
                        });
                        ok += usize::from(r.is_ok());
                        ress[at] = r;
                    }
                }
                at += run;
            }
        }
        ok
    }

    /// The SA of a plain ESP packet ([`plain_esp_spi`] gave its `spi`), which a run of
    /// [`Self::inbound_burst`] may take, and whether that answer holds for every packet
    /// with this SPI ([`InboundSad::lookup_noting_spi_alone`]).
    #[inline]
    fn inbound_run_sa(&self, spi: u32, data: &[u8]) -> (Option<usize>, bool) {
        self.inbound
            .lookup_noting_spi_alone(spi, || outer_addresses(data))
    }

    /// A run of [`Self::inbound_burst`]: consecutive plain ESP packets for the SA
    /// of index `i`, decrypted by its burst code and each checked against its policies
    /// as [`Self::inbound`] checks one. Returns how many were not dropped.
    fn decrypt_run(
        &mut self,
        i: usize,
        pkts: &mut [PacketBuf<'_>],
        ress: &mut [Result<BurstVerdict, Error>],
        now: Duration,
    ) -> usize {
        const RUN: usize = 32;
        debug_assert!(pkts.len() <= RUN && pkts.len() == ress.len());
        let (spd, fragments) = (&self.spd, &mut self.fragments);
        let entry = self.entries[i]
            .as_mut()
            .expect("the inbound SAD names live SAs");
        let first = entry.first_served(spd, self.epoch);
        let mut done = [Ok(()); RUN];
        let serves = &entry.serves;
        let ok = entry
            .sa
            .decrypt_burst_verified(pkts, &mut done, now, |inner| {
                fragment_policy::decrypted_policy(spd, fragments, i, serves, first, inner, now)
                    .map(|_| ())
            });
        if let Some(link) = &mut entry.lane {
            // As `inbound` counts each packet on a lane.
            link.count_inbound_packets(&entry.sa, pkts.len());
        }
        for (res, d) in ress.iter_mut().zip(&done) {
            *res = match d {
                Ok(()) => Ok(BurstVerdict::Decrypted),
                Err(e) => Err(*e),
            };
        }
        ok
    }

    /// Processes an inbound packet: ESP (or ESP in UDP on the NAT-T port) is decrypted
    /// by the SA of its SPI and checked against that SA's policies; cleartext passes
    /// only under a BYPASS policy.
    ///
    /// An outer fragment of ESP is reassembled first: [`Inbound::Reassembling`] while
    /// its datagram is incomplete; the fragment that completes it leaves the whole
    /// datagram in `pkt` (written at its offset) and goes on as that packet. When the
    /// datagram does not fit the buffer the fragment is refused with
    /// [`Error::NoTailroom`] (`pkt` unchanged, the other fragments still held).
    pub fn inbound(
        &mut self,
        pkt: &mut PacketBuf<'_>,
        now: Duration,
    ) -> Result<Inbound<'_>, Error> {
        let spi = match plain_esp_spi(pkt.data()) {
            Some(spi) => Some(spi),
            None => {
                if is_outer_esp_fragment(pkt.data()) && !self.reassemble(pkt, now)? {
                    return Ok(Inbound::Reassembling);
                }
                match esp_spi(pkt.data()) {
                    Ok(spi) => spi,
                    Err(m) => return Err(self.drop(Error::Malformed(m))),
                }
            }
        };
        let Some(spi) = spi else {
            let decision = match fragment_policy::cleartext_decision(
                &self.spd,
                &mut self.flow_cache,
                &mut self.fragments,
                Direction::Inbound,
                pkt.data(),
                now,
            ) {
                Ok(d) => d,
                Err(e) => {
                    self.stats.count_drop(e.drop_reason());
                    return Err(e);
                }
            };
            let err = match (decision.action, decision.policy) {
                (Action::Bypass, Some(policy)) => return Ok(Inbound::Bypassed { policy }),
                (Action::Protect, _) => Error::UnprotectedTraffic,
                _ => Error::PolicyDiscard,
            };
            self.stats.count_drop(err.drop_reason());
            return Err(err);
        };
        let i = loop {
            let found = self.inbound.lookup(spi, || outer_addresses(pkt.data()));
            let Some(i) = found else {
                // A known SPI whose SAs all want another destination (or source) is
                // unknown to this packet (RFC 4301 §4.1).
                return Err(self.drop(Error::UnknownSpi { spi }));
            };
            if self.retiring > 0 && self.entry(i).retire_at.is_some_and(|t| now >= t) {
                // Its grace time ran out: gone, as if deleted before this packet came
                // (which then goes to the next longest match, if any).
                self.remove_entry(i);
                continue;
            }
            break i;
        };
        let (spd, fragments) = (&self.spd, &mut self.fragments);
        let entry = self.entries[i]
            .as_mut()
            .expect("the inbound SAD names live SAs");
        let first = entry.first_served(spd, self.epoch);
        let mut serving = "";
        let r = entry.sa.decrypt_verified(pkt, now, |inner| {
            serving = fragment_policy::decrypted_policy(
                spd,
                fragments,
                i,
                &entry.serves,
                first,
                inner,
                now,
            )?;
            Ok(())
        });
        if let Some(link) = &mut entry.lane {
            link.count_inbound(&entry.sa);
        }
        r?;
        Ok(Inbound::Decrypted {
            sa: &entry.name,
            policy: serving,
        })
    }
}

impl Gateway {
    /// Deletes the SAs whose retirement time ([`Gateway::retire_sa`]) `now` reached;
    /// returns how many.
    pub(crate) fn reap_retired(&mut self, now: Duration) -> usize {
        if self.retiring == 0 {
            return 0;
        }
        let due: Vec<usize> = (0..self.entries.len())
            .filter(|&i| {
                self.entries[i]
                    .as_ref()
                    .and_then(|e| e.retire_at)
                    .is_some_and(|t| now >= t)
            })
            .collect();
        for &i in &due {
            self.remove_entry(i);
        }
        due.len()
    }

    /// Hands an outer fragment to the reassembler: `true` when `pkt` now holds a whole
    /// datagram, `false` when the fragment is held. Its drops (and any datagrams that
    /// timed out meanwhile) are counted on the gateway.
    fn reassemble(&mut self, pkt: &mut PacketBuf<'_>, now: Duration) -> Result<bool, Error> {
        let before = *self.reassembler.stats();
        let whole = self
            .reassembler
            .insert_in_place(pkt, now)
            .map(|r| !matches!(r, Reassembly::Held));
        let after = self.reassembler.stats();
        for (reason, n) in after.drops() {
            self.stats.count_drops(reason, n - before.dropped(reason));
        }
        whole
    }
}

/// An outer fragment the gateway reassembles: an IPv4 fragment of ESP or UDP (NAT-T),
/// or an IPv6 packet whose Fragment header (not an atomic fragment) names ESP or UDP.
/// Any other fragment is cleartext, for the policy path.
fn is_outer_esp_fragment(pkt: &[u8]) -> bool {
    match packet::parse_ip(pkt) {
        Ok(ip) if ip.version == IpVersion::V4 => {
            ip.is_fragment && matches!(ip.protocol, IPPROTO_ESP | IPPROTO_UDP)
        }
        Ok(ip) => matches!(
            packet::ipv6_fragment(pkt, ip.total_len),
            Ok(Some(f)) if !f.is_atomic() && matches!(f.next_header, IPPROTO_ESP | IPPROTO_UDP)
        ),
        Err(_) => false,
    }
}

/// The SAD key of the inbound SA `sa`.
pub(crate) fn sa_key(sa: &SecurityAssociation) -> SadKey {
    SadKey::new(sa.spi(), sa.lookup(), sa.tunnel())
}

/// The outer source and destination addresses of a packet whose IP header
/// [`esp_spi`] has read.
fn outer_addresses(pkt: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match pkt.first()? >> 4 {
        4 => {
            let a: [u8; 8] = pkt.get(12..20)?.try_into().ok()?;
            Some((
                IpAddr::from([a[0], a[1], a[2], a[3]]),
                IpAddr::from([a[4], a[5], a[6], a[7]]),
            ))
        }
        6 => {
            let src: [u8; 16] = pkt.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = pkt.get(24..40)?.try_into().ok()?;
            Some((IpAddr::from(src), IpAddr::from(dst)))
        }
        _ => None,
    }
}

/// The SPI of the common inbound packet, read with a few fixed-offset tests: an IPv4
/// header without options and not a fragment, or an IPv6 header without extension
/// headers, carrying ESP directly or in UDP to or from the NAT-T port (a UDP payload
/// that is not the non-ESP marker of IKE), with its lengths in order and room for the
/// SPI. `None` for every other packet, which takes the general path
/// ([`is_outer_esp_fragment`], [`esp_spi`]); for these packets that path gives the same
/// SPI (it reads the same header the same way), so this only skips its parsing.
#[inline]
fn plain_esp_spi(pkt: &[u8]) -> Option<u32> {
    // The commonest shape first, in the fewest tests: IPv4 carrying ESP.
    let h: &[u8; 24] = pkt.first_chunk()?;
    let total_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let plain = h[0] == 0x45
        && h[9] == IPPROTO_ESP
        && h[6] & 0x3f == 0
        && h[7] == 0
        && (24..=pkt.len()).contains(&total_len);
    if plain {
        return Some(u32::from_be_bytes([h[20], h[21], h[22], h[23]]));
    }
    // Then IPv6 carrying ESP, as few tests.
    if let Some(h) = pkt.first_chunk::<44>() {
        let total_len = 40 + usize::from(u16::from_be_bytes([h[4], h[5]]));
        if h[0] >> 4 == 6 && h[6] == IPPROTO_ESP && (44..=pkt.len()).contains(&total_len) {
            return Some(u32::from_be_bytes([h[40], h[41], h[42], h[43]]));
        }
    }
    plain_udp_esp_spi(pkt)
}

/// [`plain_esp_spi`] for ESP in UDP to or from the NAT-T port, under IPv4 or IPv6. Not
/// inlined: it would cost the other shapes registers.
#[inline(never)]
fn plain_udp_esp_spi(pkt: &[u8]) -> Option<u32> {
    let (protocol, header_end, total_len) = match *pkt.first()? {
        0x45 => {
            let h: &[u8; 20] = pkt.first_chunk()?;
            if h[6] & 0x3f != 0 || h[7] != 0 {
                return None;
            }
            (h[9], 20, usize::from(u16::from_be_bytes([h[2], h[3]])))
        }
        first if first >> 4 == 6 => {
            let h: &[u8; 40] = pkt.first_chunk()?;
            (h[6], 40, 40 + usize::from(u16::from_be_bytes([h[4], h[5]])))
        }
        _ => return None,
    };
    if protocol != IPPROTO_UDP {
        return None;
    }
    let ports: &[u8; 4] = pkt.get(header_end..)?.first_chunk()?;
    let nat_t = NAT_T_PORT.to_be_bytes();
    if ports[..2] != nat_t && ports[2..] != nat_t {
        return None;
    }
    let esp = header_end + packet::UDP_HEADER_LEN;
    let spi: &[u8; 4] = pkt.get(esp..total_len)?.first_chunk()?;
    (*spi != [0; 4]).then(|| u32::from_be_bytes(*spi))
}

/// The SPI of an ESP packet (IP protocol 50, or UDP to or from the NAT-T port that is
/// neither a keepalive nor IKE), or `None` for any other packet.
fn esp_spi(pkt: &[u8]) -> Result<Option<u32>, Malformed> {
    match packet::locate_esp(pkt, Some(&[NAT_T_PORT])) {
        Ok(pos) => match pkt[pos.esp..pos.ip.total_len].get(..4) {
            Some(b) => Ok(Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
            None => Err(Malformed::Truncated),
        },
        // A keepalive or IKE on the NAT-T port, or no ESP at all: policy decides.
        Err(Malformed::NotEsp | Malformed::NatKeepalive | Malformed::NonEspMarker) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SPI read by the fast path ([`plain_esp_spi`]) is, for every packet it
    /// answers, the SPI of the general path of [`Gateway::inbound`] (not an outer
    /// fragment, then [`esp_spi`]); it answers for plain packets of both families.
    #[test]
    fn plain_esp_spis_are_the_general_paths() {
        let (mut v4, mut v6, mut udp) = (0, 0, 0);
        for p in crate::esp::tests::outer_header_shapes() {
            let Some(spi) = plain_esp_spi(&p) else {
                continue;
            };
            assert!(!is_outer_esp_fragment(&p), "{p:02x?}");
            assert_eq!(esp_spi(&p), Ok(Some(spi)), "{p:02x?}");
            let (v6_header, protocol) = match p[0] >> 4 {
                4 => (false, p[9]),
                _ => (true, p[6]),
            };
            v4 += usize::from(!v6_header);
            v6 += usize::from(v6_header);
            udp += usize::from(protocol == IPPROTO_UDP);
        }
        assert!(
            v4 > 0 && v6 > 0 && udp > 0,
            "fast paths taken: IPv4 {v4}, IPv6 {v6}, of which in UDP {udp}"
        );
    }
}
