//! Selector values of a policy: address sets, protocol, port (or ICMP) ranges.

use core::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A set of IPv4 and IPv6 addresses: the union of prefixes, ranges and single
/// addresses, kept as sorted, disjoint, non-adjacent inclusive ranges per family.
///
/// Text forms (one element): `"any"`, `"10.0.0.0/24"`, `"10.0.0.1-10.0.0.9"`,
/// `"10.0.0.1"`, and the same for IPv6. A range never mixes families. A list of elements
/// is their union. `"any"` is every IPv4 and every IPv6 address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl AddrSet {
    /// Every IPv4 and IPv6 address.
    pub fn any() -> AddrSet {
        AddrSet {
            v4: vec![(0, u32::MAX)],
            v6: vec![(0, u128::MAX)],
        }
    }

    /// The empty set (a starting point for [`AddrSet::insert_range`]).
    pub fn empty() -> AddrSet {
        AddrSet::default()
    }

    /// Parses one element (`any`, prefix, range or address).
    pub fn parse(text: &str) -> Result<AddrSet, String> {
        let mut s = AddrSet::empty();
        s.insert_text(text)?;
        s.normalize();
        Ok(s)
    }

    /// Parses a list of elements into their union; an empty list is an error.
    pub fn parse_list<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<AddrSet, String> {
        let mut s = AddrSet::empty();
        let mut n = 0;
        for t in items {
            s.insert_text(t)?;
            n += 1;
        }
        if n == 0 {
            return Err("empty address list (write \"any\" for every address)".into());
        }
        s.normalize();
        Ok(s)
    }

    fn insert_text(&mut self, text: &str) -> Result<(), String> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("any") {
            *self = AddrSet::any();
            return Ok(());
        }
        let parse = |a: &str| -> Result<IpAddr, String> {
            a.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("{:?} is not an IPv4 or IPv6 address", a.trim()))
        };
        if let Some((addr, len)) = t.split_once('/') {
            let addr = parse(addr)?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len: u32 = len
                .trim()
                .parse()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{t:?}: prefix length must be 0..={max}"))?;
            match addr {
                IpAddr::V4(a) => {
                    let a = u32::from(a);
                    let host = u32::MAX.checked_shr(len).unwrap_or(0);
                    if a & host != 0 {
                        return Err(format!(
                            "{t:?}: host bits are set (the prefix is {}/{len})",
                            Ipv4Addr::from(a & !host)
                        ));
                    }
                    self.v4.push((a, a | host));
                    Ok(())
                }
                IpAddr::V6(a) => {
                    let a = u128::from(a);
                    let host = u128::MAX.checked_shr(len).unwrap_or(0);
                    if a & host != 0 {
                        return Err(format!(
                            "{t:?}: host bits are set (the prefix is {}/{len})",
                            Ipv6Addr::from(a & !host)
                        ));
                    }
                    self.v6.push((a, a | host));
                    Ok(())
                }
            }
        } else if let Some((lo, hi)) = t.split_once('-') {
            let (lo, hi) = (parse(lo)?, parse(hi)?);
            self.push_range(lo, hi).map_err(|e| format!("{t:?}: {e}"))
        } else {
            let a = parse(t)?;
            self.push_range(a, a)
        }
    }

    /// Appends a range without merging; [`AddrSet::normalize`] restores the invariant.
    fn push_range(&mut self, lo: IpAddr, hi: IpAddr) -> Result<(), String> {
        match (lo, hi) {
            (IpAddr::V4(l), IpAddr::V4(h)) if l <= h => self.v4.push((l.into(), h.into())),
            (IpAddr::V6(l), IpAddr::V6(h)) if l <= h => self.v6.push((l.into(), h.into())),
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                return Err("inverted range (the first address is above the second)".into());
            }
            _ => return Err("a range cannot mix IPv4 and IPv6".into()),
        }
        Ok(())
    }

    /// Sorts and merges overlapping or adjacent ranges (O(n log n)).
    fn normalize(&mut self) {
        merge_all(&mut self.v4);
        merge_all(&mut self.v6);
    }

    /// Adds the inclusive range `lo..=hi` (both of one family, `lo <= hi`).
    pub fn insert_range(&mut self, lo: IpAddr, hi: IpAddr) -> Result<(), String> {
        match (lo, hi) {
            (IpAddr::V4(l), IpAddr::V4(h)) => insert(&mut self.v4, u32::from(l), u32::from(h)),
            (IpAddr::V6(l), IpAddr::V6(h)) => insert(&mut self.v6, u128::from(l), u128::from(h)),
            _ => Err("a range cannot mix IPv4 and IPv6".into()),
        }
    }

    /// True if `addr` is in the set.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.contains_v4(u32::from(a)),
            IpAddr::V6(a) => self.contains_v6(u128::from(a)),
        }
    }

    /// True if the IPv4 address `a` (as a number) is in the set.
    #[inline]
    pub(crate) fn contains_v4(&self, a: u32) -> bool {
        self.v4.iter().any(|&(l, h)| l <= a && a <= h)
    }

    /// True if the IPv6 address `a` (as a number) is in the set.
    #[inline]
    pub(crate) fn contains_v6(&self, a: u128) -> bool {
        self.v6.iter().any(|&(l, h)| l <= a && a <= h)
    }

    /// True if the set holds every IPv4 and every IPv6 address.
    pub fn is_any(&self) -> bool {
        self.v4 == [(0, u32::MAX)] && self.v6 == [(0, u128::MAX)]
    }

    /// True if the set holds no address.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// The IPv4 part: sorted, disjoint, non-adjacent inclusive ranges.
    pub fn v4_ranges(&self) -> &[(u32, u32)] {
        &self.v4
    }

    /// The IPv6 part: sorted, disjoint, non-adjacent inclusive ranges.
    pub fn v6_ranges(&self) -> &[(u128, u128)] {
        &self.v6
    }
}

/// Inserts `lo..=hi` into sorted disjoint non-adjacent ranges, merging.
fn insert<T>(ranges: &mut Vec<(T, T)>, lo: T, hi: T) -> Result<(), String>
where
    T: Copy + Ord + fmt::Debug + Step,
{
    if lo > hi {
        return Err("inverted range (the first address is above the second)".into());
    }
    let (mut lo, mut hi) = (lo, hi);
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for &(l, h) in ranges.iter() {
        // Disjoint and not adjacent: keep as is.
        if h.next().is_some_and(|n| n < lo) || hi.next().is_some_and(|n| n < l) {
            out.push((l, h));
        } else {
            lo = lo.min(l);
            hi = hi.max(h);
        }
    }
    out.push((lo, hi));
    out.sort_unstable();
    *ranges = out;
    Ok(())
}

/// Sorts `ranges` and merges overlapping or adjacent ones.
fn merge_all<T: Copy + Ord + Step>(ranges: &mut Vec<(T, T)>) {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for &(l, h) in ranges.iter() {
        match out.last_mut() {
            Some(last) if last.1.next().is_none_or(|n| n >= l) => last.1 = last.1.max(h),
            _ => out.push((l, h)),
        }
    }
    *ranges = out;
}

/// Successor of an integer, `None` at the maximum.
pub(crate) trait Step: Sized {
    fn next(self) -> Option<Self>;
}
impl Step for u32 {
    fn next(self) -> Option<u32> {
        self.checked_add(1)
    }
}
impl Step for u128 {
    fn next(self) -> Option<u128> {
        self.checked_add(1)
    }
}

impl fmt::Display for AddrSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_any() {
            return f.write_str("any");
        }
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            let r = if first { Ok(()) } else { f.write_str(", ") };
            first = false;
            r
        };
        for &(l, h) in &self.v4 {
            sep(f)?;
            if l == h {
                write!(f, "{}", Ipv4Addr::from(l))?;
            } else {
                write!(f, "{}-{}", Ipv4Addr::from(l), Ipv4Addr::from(h))?;
            }
        }
        for &(l, h) in &self.v6 {
            sep(f)?;
            if l == h {
                write!(f, "{}", Ipv6Addr::from(l))?;
            } else {
                write!(f, "{}-{}", Ipv6Addr::from(l), Ipv6Addr::from(h))?;
            }
        }
        Ok(())
    }
}

/// IP protocol number of SCTP.
pub const IPPROTO_SCTP: u8 = 132;

/// True for the protocols whose selectors include ports: TCP, UDP and SCTP.
pub const fn has_ports(protocol: u8) -> bool {
    matches!(protocol, 6 | 17 | IPPROTO_SCTP)
}

/// True for ICMP and ICMPv6, whose selectors are the message type and code.
pub const fn is_icmp(protocol: u8) -> bool {
    matches!(protocol, 1 | 58)
}

/// Parses a protocol name (`tcp`, `udp`, `icmp`, `icmpv6`, `sctp`, `esp`, `ah`, `gre`)
/// or a number `0..=255`. `"any"` gives `None`.
pub fn parse_protocol(text: &str) -> Result<Option<u8>, String> {
    let t = text.trim().to_ascii_lowercase();
    Ok(Some(match t.as_str() {
        "any" => return Ok(None),
        "icmp" => 1,
        "tcp" => 6,
        "udp" => 17,
        "gre" => 47,
        "esp" => 50,
        "ah" => 51,
        "icmpv6" | "ipv6-icmp" => 58,
        "sctp" => IPPROTO_SCTP,
        _ => t.parse::<u8>().map_err(|_| {
            format!("{text:?} is not a protocol (any, tcp, udp, icmp, icmpv6, sctp or 0..=255)")
        })?,
    }))
}

/// The name of a protocol number if it has one in policy files, else the number.
pub fn protocol_name(protocol: Option<u8>) -> String {
    match protocol {
        None => "any".into(),
        Some(1) => "icmp".into(),
        Some(6) => "tcp".into(),
        Some(17) => "udp".into(),
        Some(58) => "icmpv6".into(),
        Some(IPPROTO_SCTP) => "sctp".into(),
        Some(n) => n.to_string(),
    }
}

/// Parses a port selector: a number, `"a-b"` or `"any"` (`None`). A full range
/// `0-65535` is `None` too: it means the same as `any`, including for packets whose
/// ports are unknown (non-first fragments, RFC 4301 §7).
pub fn parse_port_range(text: &str) -> Result<Option<(u16, u16)>, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("any") {
        return Ok(None);
    }
    let num = |s: &str| {
        s.trim()
            .parse::<u16>()
            .map_err(|_| format!("{s:?} is not a port number (0..=65535)"))
    };
    let (lo, hi) = match t.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => {
            let p = num(t)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!("{t:?} is an inverted range"));
    }
    Ok(((lo, hi) != (0, u16::MAX)).then_some((lo, hi)))
}
