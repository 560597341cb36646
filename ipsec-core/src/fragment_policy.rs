//! How the [`Gateway`](crate::Gateway) decides fragments: stateful fragment checking
//! (RFC 4301 §7.3, §7.4) with a stateless fallback.
//!
//! A non-first fragment carries no transport header, so the policy that covers it
//! cannot be read from it. The gateway therefore remembers, for each datagram whose
//! **first fragment** it processed, the decision that fragment got (the policy, hence
//! its action and SA) and the bytes it covered, and gives the datagram's later
//! fragments that same decision:
//!
//! * outbound: PROTECT with the same SA (in tunnel mode each fragment becomes its own
//!   ESP packet), BYPASS, or DISCARD;
//! * inbound cleartext: BYPASS lets it in; a datagram whose first fragment a PROTECT
//!   policy covers is dropped as unprotected traffic (`policy_mismatch`) fragment after
//!   fragment; DISCARD drops it;
//! * inbound ESP (tunnel mode, the inner packet is a fragment): accepted under the SA
//!   policy its first fragment was accepted under, when it came through the **same
//!   SA** (RFC 4301 §5.2 for the datagram as a whole).
//!
//! A later fragment that starts inside the first fragment's bytes would overwrite the
//! header the decision was made on (RFC 1858 §4, RFC 5722): it is dropped as
//! `fragment_overlap`, and so is every further fragment of that datagram (a second,
//! different first fragment counts as an overlap too; an exact duplicate does not).
//!
//! Before any of this every fragment passes
//! [`Fragment::check_transport_header`]: tiny first fragments (RFC 3128) are dropped as
//! `fragment_too_short`, TCP fragments at offset 8 (RFC 1858) as `fragment_overlap`.
//!
//! A later fragment whose first fragment was not seen (it was reordered, lost, or
//! forgotten) gets the stateless answer of
//! [`Spd::lookup_non_first_fragment`]: the first policy that could match it with its
//! ports unknown decides if it does not look at ports or ICMP fields, otherwise the
//! fragment is dropped as `fragment_unresolved`. Inbound ESP: the SA's own policies
//! are asked the same question (one that certainly covers the fragment accepts it; one
//! that only might leaves it unresolved; none is a `policy_mismatch`).
//!
//! # What is remembered, and for how long
//!
//! A datagram is keyed by (direction, how it arrived: in the clear or through which SA,
//! source, destination, protocol, IP identification) for IPv4 and by (direction, how it
//! arrived, source, destination, Fragment header identification) for IPv6 (RFC 791,
//! RFC 8200 §4.5). Keeping the direction and the SA in the key means that cleartext
//! from the network can neither reuse nor disturb what a protected datagram's first
//! fragment established, nor the other way round.
//!
//! The memory is bounded ([`FragmentLimits`]): at most `max_datagrams` datagrams, each
//! for `lifetime` after its first fragment (by the caller's clock: the `now` of the
//! packet calls; nothing here reads a clock). It is allocated once, when the gateway is
//! made or its limits are set, and never grows: a set-associative table of
//! `max_datagrams` entries of 80 bytes in sets of eight, indexed by a keyed hash
//! (SipHash with a random key per table, so that a sender cannot aim its datagrams at
//! one set). A new
//! datagram takes a free or expired entry of its set, or else the set's oldest one: a
//! flood of first fragments can push a datagram out early, and its later fragments
//! then get the stateless answer, which never lets through what a policy might
//! protect. Per fragment the cost is one hash and a scan of eight entries; unfragmented
//! packets never touch the table.

use crate::error::{ConfigError, Error, FragmentError};
use crate::sa::Direction;
use crate::spd::cache::FlowCache;
use crate::spd::{Decision, Flow, Fragment, Spd, packet_key};
use core::time::Duration;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;

/// The limits of a gateway's fragment memory (see the [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragmentLimits {
    max_datagrams: usize,
    lifetime: Duration,
}

impl FragmentLimits {
    /// The most datagrams the limits may allow: 2^20 (80 MiB of table).
    pub const MAX_DATAGRAMS: usize = 1 << 20;

    /// The default: 4,096 datagrams (320 KiB), each for 30 seconds after its first
    /// fragment (Linux's reassembly timeout, `ipfrag_time`; a later fragment that
    /// arrives after it would not be reassembled by such a receiver either).
    pub const DEFAULT: FragmentLimits = FragmentLimits {
        max_datagrams: 4096,
        lifetime: Duration::from_secs(30),
    };

    /// Remember at most `max_datagrams` datagrams (0 turns the memory off: every
    /// non-first fragment gets the stateless answer), each for `lifetime` after its
    /// first fragment. Fails when `max_datagrams` exceeds
    /// [`FragmentLimits::MAX_DATAGRAMS`].
    pub fn new(max_datagrams: usize, lifetime: Duration) -> Result<FragmentLimits, ConfigError> {
        if max_datagrams > Self::MAX_DATAGRAMS {
            return Err(ConfigError::new(
                "max_datagrams",
                format!(
                    "{max_datagrams} is more than the {} datagrams a gateway may remember",
                    Self::MAX_DATAGRAMS
                ),
            ));
        }
        Ok(FragmentLimits {
            max_datagrams,
            lifetime,
        })
    }

    /// The most datagrams remembered at once.
    pub const fn max_datagrams(&self) -> usize {
        self.max_datagrams
    }

    /// How long a datagram is remembered after its first fragment.
    pub const fn lifetime(&self) -> Duration {
        self.lifetime
    }
}

impl Default for FragmentLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How a fragment reached the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Arrival {
    /// In the clear (outbound, or inbound without ESP).
    Clear,
    /// Decapsulated by the gateway's SA with this index.
    Sa(u32),
}

/// Which datagram a fragment belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct DatagramKey {
    direction: Direction,
    arrival: Arrival,
    src: IpAddr,
    dst: IpAddr,
    /// IPv4 only: the protocol is part of the datagram's identity (RFC 791). IPv6
    /// keys leave it 0: a later fragment's next header need not be the first one's.
    protocol: u8,
    id: u32,
}

impl DatagramKey {
    fn new(flow: &Flow, fragment: &Fragment, arrival: Arrival) -> DatagramKey {
        DatagramKey {
            direction: flow.direction,
            arrival,
            src: flow.src,
            dst: flow.dst,
            protocol: if flow.dst.is_ipv4() { flow.protocol } else { 0 },
            id: fragment.id,
        }
    }
}

/// What is remembered of one datagram.
#[derive(Clone, Copy, Debug)]
struct Remembered {
    key: DatagramKey,
    expires: Duration,
    /// The policy (file position) that decided the first fragment; `None`: no policy
    /// matched (DISCARD).
    policy: Option<u32>,
    /// The end of the first fragment's data: later fragments must start at or after it.
    first_end: u32,
    /// An overlap was seen: every further fragment of the datagram is dropped.
    overlapped: bool,
    /// The table's epoch when this was remembered: entries of an older epoch are
    /// forgotten ([`FragmentTable::forget_all`]).
    epoch: u16,
}

/// Entries per set.
const WAYS: usize = 8;

/// The gateway's fragment memory (see the [module docs](self)).
pub(crate) struct FragmentTable {
    limits: FragmentLimits,
    slots: Box<[Option<Remembered>]>,
    hasher: RandomState,
    /// Bumped by [`FragmentTable::forget_all`].
    epoch: u16,
}

impl FragmentTable {
    /// An empty table with room for `limits.max_datagrams()` datagrams.
    pub(crate) fn new(limits: FragmentLimits) -> FragmentTable {
        FragmentTable {
            limits,
            slots: vec![None; limits.max_datagrams].into_boxed_slice(),
            hasher: RandomState::new(),
            epoch: 0,
        }
    }

    /// Forgets every remembered decision at once (O(1)): a live gateway does this when
    /// its SAs or policies change, so that no later fragment is decided by a policy
    /// position or an SA that is gone. Those fragments get the stateless answer.
    pub(crate) fn forget_all(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            // Once in 65,536 changes: entries of the epoch that comes round again must
            // not come back to life.
            self.slots.fill(None);
        }
    }

    /// Whether `r` is remembered and alive at `now`.
    fn live(&self, r: &Remembered, now: Duration) -> bool {
        r.epoch == self.epoch && now < r.expires
    }

    pub(crate) fn limits(&self) -> FragmentLimits {
        self.limits
    }

    /// Datagrams remembered and not expired at `now`.
    pub(crate) fn len(&self, now: Duration) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter(|r| self.live(r, now))
            .count()
    }

    /// The slots of `key`'s set (the last set may be shorter).
    fn set_of(&self, key: &DatagramKey) -> core::ops::Range<usize> {
        let sets = self.slots.len().div_ceil(WAYS);
        let set = (self.hasher.hash_one(key) % sets as u64) as usize;
        set * WAYS..(set * WAYS + WAYS).min(self.slots.len())
    }

    /// The live entry of `key`, if any.
    fn find(&mut self, key: &DatagramKey, now: Duration) -> Option<&mut Remembered> {
        if self.slots.is_empty() {
            return None;
        }
        let set = self.set_of(key);
        let epoch = self.epoch;
        self.slots[set]
            .iter_mut()
            .flatten()
            .find(|r| r.key == *key && r.epoch == epoch && now < r.expires)
    }

    /// Records that the first fragment of `key`'s datagram, covering `0..first_end`,
    /// was decided by `policy`. A live entry for the same datagram means a second
    /// first fragment: an exact duplicate (same decision, same length) is accepted,
    /// anything else is an overlap and condemns the datagram.
    fn remember_first(
        &mut self,
        key: DatagramKey,
        policy: Option<u32>,
        first_end: u32,
        now: Duration,
    ) -> Result<(), FragmentError> {
        if self.slots.is_empty() {
            return Ok(());
        }
        if let Some(r) = self.find(&key, now) {
            if r.overlapped || r.policy != policy || r.first_end != first_end {
                r.overlapped = true;
                return Err(FragmentError::Overlap);
            }
            return Ok(());
        }
        let set = self.set_of(&key);
        let epoch = self.epoch;
        let slots = &mut self.slots[set];
        // A free, forgotten or expired entry, else the one that expires first (the oldest).
        let victim = slots
            .iter()
            .position(|s| s.is_none_or(|r| r.epoch != epoch || now >= r.expires))
            .unwrap_or_else(|| {
                (0..slots.len())
                    .min_by_key(|&i| slots[i].map_or(Duration::ZERO, |r| r.expires))
                    .unwrap_or(0)
            });
        slots[victim] = Some(Remembered {
            key,
            expires: now.saturating_add(self.limits.lifetime),
            policy,
            first_end,
            overlapped: false,
            epoch,
        });
        Ok(())
    }

    /// The decision remembered for a later fragment of `key`'s datagram: `None` when
    /// its first fragment is not remembered; [`FragmentError::Overlap`] when it starts
    /// inside the first fragment's bytes (the datagram is then condemned) or the
    /// datagram already was.
    fn recall(
        &mut self,
        key: &DatagramKey,
        fragment: &Fragment,
        now: Duration,
    ) -> Option<Result<Option<u32>, FragmentError>> {
        let r = self.find(key, now)?;
        if r.overlapped || fragment.offset < r.first_end {
            r.overlapped = true;
            return Some(Err(FragmentError::Overlap));
        }
        Some(Ok(r.policy))
    }
}

/// The SPD's decision for a packet the gateway got in the clear (outbound, or inbound
/// without ESP): [`Spd::lookup`] for a whole packet; a fragment is decided as the
/// [module docs](self) say. Errors: [`Error::Malformed`] for a packet that cannot be
/// read, [`Error::Fragment`] for a dropped fragment.
#[inline]
pub(crate) fn cleartext_decision<'s>(
    spd: &'s Spd,
    cache: &mut FlowCache,
    table: &mut FragmentTable,
    direction: Direction,
    pkt: &[u8],
    now: Duration,
) -> Result<Decision<'s>, Error> {
    if cache.is_off()
        && let Some(d) = spd.lookup_whole_packet(direction, pkt)
    {
        return Ok(d);
    }
    let (flow, fragment) =
        Flow::from_packet_with_fragment(direction, pkt).map_err(Error::Malformed)?;
    match fragment {
        None => Ok(cache.lookup(spd, &flow)),
        Some(f) => cleartext_fragment_decision(spd, table, &flow, &f, now),
    }
}

#[cold]
pub(crate) fn cleartext_fragment_decision<'s>(
    spd: &'s Spd,
    table: &mut FragmentTable,
    flow: &Flow,
    fragment: &Fragment,
    now: Duration,
) -> Result<Decision<'s>, Error> {
    fragment
        .check_transport_header(flow.protocol)
        .map_err(Error::Fragment)?;
    let key = DatagramKey::new(flow, fragment, Arrival::Clear);
    if fragment.is_first() {
        let d = spd.lookup(flow);
        let policy = d.policy_index.map(|i| i as u32);
        table
            .remember_first(key, policy, fragment.end(), now)
            .map_err(Error::Fragment)?;
        return Ok(d);
    }
    match table.recall(&key, fragment, now) {
        Some(Ok(policy)) => Ok(spd.decision_at(policy.map(|i| i as usize), flow.direction)),
        Some(Err(e)) => Err(Error::Fragment(e)),
        None => spd
            .lookup_non_first_fragment(flow)
            .into_result()
            .map_err(Error::Fragment),
    }
}

/// RFC 4301 §5.2 for the inner packet `inner` that the gateway's SA number `sa_index`,
/// serving the policies that name one of `serves` (its own name, and after a
/// make-before-break rekey its predecessor's), decapsulated: the SA policy it is
/// accepted under. A whole packet must match the selectors of one of the SA's policies
/// ([`Spd::inbound_policy`]); a fragment is decided as the [module docs](self) say.
/// Errors: [`Error::PolicyMismatch`] (also for an inner packet that cannot be read) and
/// [`Error::Fragment`].
///
/// `first` is the reference of the first policy the SA serves, if the caller knows it
/// (`None` otherwise): when a whole packet matches it, it is the answer, with no
/// look-up of the served names.
///
/// The usual answer (a whole packet under the first policy) is a small function of its
/// own; everything else is out of line: as one function, every packet paid for the
/// prologue and stack frame of the flow parse.
#[inline(never)]
pub(crate) fn decrypted_policy<'s>(
    spd: &'s Spd,
    table: &mut FragmentTable,
    sa_index: usize,
    serves: &[String],
    first: Option<usize>,
    inner: &[u8],
    now: Duration,
) -> Result<&'s str, Error> {
    if let Some(r) = first
        && let Some(key) = packet_key(inner)
    {
        // A whole packet: its key, read straight from the bytes, against the SA's
        // first policy (the usual answer); anything else parses a flow.
        let p = spd.policy_ref(r);
        if p.selectors_match_key(Direction::Inbound, &key) {
            return Ok(p.name());
        }
    }
    decrypted_flow_policy(spd, table, sa_index, serves, first, inner, now)
}

/// [`decrypted_policy`] past its first test: the inner packet parsed as a flow.
#[inline(never)]
fn decrypted_flow_policy<'s>(
    spd: &'s Spd,
    table: &mut FragmentTable,
    sa_index: usize,
    serves: &[String],
    first: Option<usize>,
    inner: &[u8],
    now: Duration,
) -> Result<&'s str, Error> {
    let Ok((flow, fragment)) = Flow::from_packet_with_fragment(Direction::Inbound, inner) else {
        return Err(Error::PolicyMismatch);
    };
    match fragment {
        None => {
            if let Some(r) = first {
                let p = spd.policy_ref(r);
                if p.selectors_match(&flow) {
                    return Ok(p.name());
                }
            }
            spd.inbound_policy_index_serving(serves, &flow)
                .map(|r| spd.policy_ref(r).name())
                .ok_or(Error::PolicyMismatch)
        }
        Some(f) => decrypted_fragment_policy(spd, table, sa_index, serves, &flow, &f, now),
    }
}

#[cold]
fn decrypted_fragment_policy<'s>(
    spd: &'s Spd,
    table: &mut FragmentTable,
    sa_index: usize,
    serves: &[String],
    flow: &Flow,
    fragment: &Fragment,
    now: Duration,
) -> Result<&'s str, Error> {
    fragment
        .check_transport_header(flow.protocol)
        .map_err(Error::Fragment)?;
    let key = DatagramKey::new(
        flow,
        fragment,
        Arrival::Sa(u32::try_from(sa_index).unwrap_or(u32::MAX)),
    );
    let index = if fragment.is_first() {
        let index = spd
            .inbound_policy_index_serving(serves, flow)
            .ok_or(Error::PolicyMismatch)?;
        table
            .remember_first(key, Some(index as u32), fragment.end(), now)
            .map_err(Error::Fragment)?;
        index
    } else {
        match table.recall(&key, fragment, now) {
            Some(Ok(Some(index))) => index as usize,
            // Only accepted first fragments are remembered on an SA's path.
            Some(Ok(None)) => return Err(Error::PolicyMismatch),
            Some(Err(e)) => return Err(Error::Fragment(e)),
            None => spd.inbound_policy_index_non_first_fragment(serves, flow)?,
        }
    };
    Ok(spd.policy_ref(index).name())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(100);

    fn key(id: u32) -> DatagramKey {
        DatagramKey {
            direction: Direction::Outbound,
            arrival: Arrival::Clear,
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.1.0.1".parse().unwrap(),
            protocol: 17,
            id,
        }
    }

    fn later(offset: u32) -> Fragment {
        let pkt = {
            let mut p = vec![
                0x45, 0, 0, 36, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 1, 0, 1,
            ];
            p[6..8].copy_from_slice(&((offset / 8) as u16).to_be_bytes());
            p.extend_from_slice(&[0; 16]);
            p
        };
        Flow::from_packet_with_fragment(Direction::Outbound, &pkt)
            .unwrap()
            .1
            .unwrap()
    }

    fn table(max: usize, secs: u64) -> FragmentTable {
        FragmentTable::new(FragmentLimits::new(max, Duration::from_secs(secs)).unwrap())
    }

    #[test]
    fn a_remembered_first_fragment_decides_later_ones_until_it_expires() {
        let mut t = table(64, 30);
        assert!(t.recall(&key(1), &later(24), T).is_none());
        t.remember_first(key(1), Some(3), 24, T).unwrap();
        assert_eq!(t.recall(&key(1), &later(24), T), Some(Ok(Some(3))));
        assert!(
            t.recall(&key(2), &later(24), T).is_none(),
            "another datagram"
        );
        let just_before = T + Duration::from_secs(30) - Duration::from_nanos(1);
        assert_eq!(
            t.recall(&key(1), &later(48), just_before),
            Some(Ok(Some(3)))
        );
        assert!(
            t.recall(&key(1), &later(48), T + Duration::from_secs(30))
                .is_none()
        );
        assert_eq!(t.len(T), 1);
        assert_eq!(t.len(T + Duration::from_secs(30)), 0);
    }

    #[test]
    fn overlaps_condemn_the_datagram_and_exact_duplicates_do_not() {
        let mut t = table(64, 30);
        t.remember_first(key(1), Some(0), 24, T).unwrap();
        // An exact copy of the first fragment (the network duplicated it): fine.
        t.remember_first(key(1), Some(0), 24, T).unwrap();
        assert_eq!(
            t.recall(&key(1), &later(16), T),
            Some(Err(FragmentError::Overlap))
        );
        // Every further fragment of that datagram, even one that would fit.
        assert_eq!(
            t.recall(&key(1), &later(24), T),
            Some(Err(FragmentError::Overlap))
        );
        // A second, different first fragment is an overlap too.
        t.remember_first(key(2), Some(0), 24, T).unwrap();
        assert_eq!(
            t.remember_first(key(2), Some(1), 24, T),
            Err(FragmentError::Overlap)
        );
        assert_eq!(
            t.recall(&key(2), &later(24), T),
            Some(Err(FragmentError::Overlap))
        );
        t.remember_first(key(3), None, 24, T).unwrap();
        assert_eq!(
            t.remember_first(key(3), None, 32, T),
            Err(FragmentError::Overlap)
        );
    }

    #[test]
    fn a_full_table_forgets_its_oldest_datagram_and_never_grows() {
        // Eight datagrams: one set, so the eviction order is exact.
        let mut t = table(8, 30);
        for id in 0..8 {
            let now = T + Duration::from_secs(u64::from(id));
            t.remember_first(key(id), Some(id), 8, now).unwrap();
        }
        let now = T + Duration::from_secs(10);
        assert_eq!(t.len(now), 8);
        t.remember_first(key(100), Some(100), 8, now).unwrap();
        assert_eq!(t.len(now), 8);
        assert!(
            t.recall(&key(0), &later(8), now).is_none(),
            "the oldest went"
        );
        for id in 1..8 {
            assert_eq!(t.recall(&key(id), &later(8), now), Some(Ok(Some(id))));
        }
        assert_eq!(t.recall(&key(100), &later(8), now), Some(Ok(Some(100))));
        // Many more datagrams over many sets: never more than the limit.
        let mut t = table(100, 30);
        for id in 0..10_000 {
            t.remember_first(key(id), None, 8, T).unwrap();
        }
        assert_eq!(t.slots.len(), 100);
        assert_eq!(t.len(T), 100);
    }

    #[test]
    fn an_expired_entry_is_reused_before_a_live_one() {
        let mut t = table(8, 30);
        for id in 0..4 {
            t.remember_first(key(id), Some(id), 8, T).unwrap();
        }
        let t2 = T + Duration::from_secs(20);
        for id in 4..8 {
            t.remember_first(key(id), Some(id), 8, t2).unwrap();
        }
        // At T + 35 s datagrams 0-3 have expired; 4-7 are live.
        let now = T + Duration::from_secs(35);
        for id in 50..54 {
            t.remember_first(key(id), Some(id), 8, now).unwrap();
        }
        for id in (4..8).chain(50..54) {
            assert_eq!(
                t.recall(&key(id), &later(8), now),
                Some(Ok(Some(id))),
                "{id}"
            );
        }
        assert_eq!(t.len(now), 8);
    }

    #[test]
    fn zero_datagrams_turns_the_memory_off() {
        let mut t = table(0, 30);
        t.remember_first(key(1), Some(0), 8, T).unwrap();
        assert!(t.recall(&key(1), &later(8), T).is_none());
        assert_eq!(t.len(T), 0);
    }

    #[test]
    fn an_entry_takes_the_80_bytes_the_docs_say() {
        assert!(size_of::<Option<Remembered>>() <= 80);
    }

    #[test]
    fn limits_are_checked() {
        let e = FragmentLimits::new(FragmentLimits::MAX_DATAGRAMS + 1, Duration::ZERO).unwrap_err();
        assert_eq!(e.field(), "max_datagrams");
        let l = FragmentLimits::new(10, Duration::from_secs(5)).unwrap();
        assert_eq!(
            (l.max_datagrams(), l.lifetime()),
            (10, Duration::from_secs(5))
        );
        assert_eq!(FragmentLimits::default(), FragmentLimits::DEFAULT);
    }
}
