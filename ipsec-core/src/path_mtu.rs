//! The path MTU of an outbound SA (RFC 4301 §8.2, RFC 1191, RFC 8201).
//!
//! An outbound SA knows the largest outer packet the path to its peer carries from two
//! sources: a value the caller configures ([`crate::SaConfig::path_mtu`],
//! [`crate::SecurityAssociation::set_path_mtu`]) and a value learned from ICMP
//! "fragmentation needed" / ICMPv6 "packet too big" messages about the SA's own packets
//! that the caller hands in ([`crate::SecurityAssociation::handle_icmp`]). The smaller
//! of the two applies. A learned value ages out [`PMTU_AGING`] after it was learned
//! (RFC 1191 §6.3, RFC 8201 §5.3: ten minutes), on the caller's clock, so that a path
//! that grows again is used again.
//!
//! What happens to an inner packet that does not fit (RFC 4301 §8.2, RFC 4459):
//!
//! | packet | what the SA does |
//! | --- | --- |
//! | tunnel mode, IPv4 inner, DF clear | pre-fragments it: each fragment becomes its own ESP packet |
//! | tunnel mode, IPv4 inner, DF set | refuses it: [`crate::Error::TooBig`] with the usable inner MTU |
//! | tunnel mode, IPv6 inner of at most 1,280 bytes | fragments the outer packet (IPv6 must get 1,280 bytes through, RFC 8200 §5) |
//! | tunnel mode, larger IPv6 inner | refuses it: [`crate::Error::TooBig`] (never below 1,280) |
//! | transport mode, IPv4 with DF clear, or IPv6 | fragments the ESP packet (the SA is the source host) |
//! | transport mode, IPv4 with DF set | refuses it: [`crate::Error::TooBig`] |
//!
//! A refused packet's sender should get an ICMP error: [`crate::icmp::too_big_reply`]
//! builds it (the caller sends it, and rate-limits it: RFC 1812 §4.3.2.8, RFC 4443
//! §2.4(f)). Fragmenting needs buffers for the extra packets:
//! [`crate::SecurityAssociation::encrypt_fragmenting`] and the other fragmenting calls
//! take them from [`crate::SpareBuffers`].

use core::time::Duration;

/// How long a path MTU learned from ICMP holds before the configured value applies
/// again (RFC 1191 §6.3 and RFC 8201 §5.3 recommend ten minutes).
pub const PMTU_AGING: Duration = Duration::from_secs(600);

/// The smallest path MTU an ICMP message can make an IPv4 SA use. Linux uses the same
/// floor (`min_pmtu`): an attacker who forges "fragmentation needed" with a tiny MTU
/// could otherwise make every packet leave in a dozen fragments.
pub const MIN_LEARNED_IPV4_MTU: u16 = 552;

/// The IPv6 minimum link MTU (RFC 8200 §5): no IPv6 path is smaller, so no "packet too
/// big" can push an IPv6 SA below it (RFC 8201 §4).
pub const IPV6_MIN_MTU: u16 = 1280;

/// The smallest IPv4 MTU (RFC 791): every IPv4 host must pass 68-byte packets.
pub const IPV4_MIN_MTU: u16 = 68;

/// Configured and learned path MTU of one SA: on the heap, and only once there is one
/// (configured, or learned from ICMP: control calls, never a packet), so that the
/// SAs without a path MTU carry one pointer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PathMtu(Option<Box<Limits>>);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Limits {
    /// The caller's value, if any.
    configured: Option<u16>,
    /// A value learned from ICMP and when it expires.
    learned: Option<(u16, Duration)>,
}

impl PathMtu {
    /// A path MTU configured as `configured`, nothing learned.
    pub(crate) fn new(configured: Option<u16>) -> PathMtu {
        PathMtu(configured.map(|c| {
            Box::new(Limits {
                configured: Some(c),
                learned: None,
            })
        }))
    }

    fn limits(&self) -> Limits {
        self.0.as_deref().copied().unwrap_or_default()
    }

    fn limits_mut(&mut self) -> &mut Limits {
        self.0.get_or_insert_with(Box::default)
    }

    /// The caller's value, if any.
    pub(crate) fn configured(&self) -> Option<u16> {
        self.limits().configured
    }

    /// The value learned from ICMP and when it expires, if any.
    pub(crate) fn learned(&self) -> Option<(u16, Duration)> {
        self.limits().learned
    }

    /// Sets the learned value (a restored snapshot's).
    pub(crate) fn set_learned(&mut self, learned: Option<(u16, Duration)>) {
        if learned.is_some() || self.0.is_some() {
            self.limits_mut().learned = learned;
        }
    }

    /// The path MTU in force at `now`, if any.
    pub(crate) fn current(&self, now: Duration) -> Option<u16> {
        let Limits {
            configured,
            learned,
        } = self.limits();
        let learned = learned.and_then(|(mtu, until)| (now < until).then_some(mtu));
        match (configured, learned) {
            (Some(c), Some(l)) => Some(c.min(l)),
            (c, l) => c.or(l),
        }
    }

    /// The largest outer packet in bytes at `now` (`usize::MAX` without a limit).
    pub(crate) fn cap(&self, now: Duration) -> usize {
        self.current(now).map_or(usize::MAX, usize::from)
    }

    /// Records `mtu` learned at `now` (already clamped by the caller) if it is lower
    /// than the value in force; returns it if so.
    pub(crate) fn learn(&mut self, mtu: u16, now: Duration) -> Option<u16> {
        if self.current(now).is_some_and(|cur| mtu >= cur) {
            return None;
        }
        self.limits_mut().learned = Some((mtu, now.saturating_add(PMTU_AGING)));
        Some(mtu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lower_value_applies_and_a_learned_one_ages_out() {
        let t = Duration::from_secs;
        let mut p = PathMtu::new(Some(1500));
        assert_eq!(p.current(t(0)), Some(1500));
        assert_eq!(p.learn(1600, t(0)), None, "not lower: ignored");
        assert_eq!(p.learn(1400, t(10)), Some(1400));
        assert_eq!(p.current(t(11)), Some(1400));
        assert_eq!(p.cap(t(11)), 1400);
        assert_eq!(p.current(t(10) + PMTU_AGING), Some(1500), "aged out");
        p.limits_mut().configured = None;
        assert_eq!(p.cap(t(10) + PMTU_AGING), usize::MAX);
        assert_eq!(p.learn(1450, t(10) + PMTU_AGING), Some(1450));
    }
}
