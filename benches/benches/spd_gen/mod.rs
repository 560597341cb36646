//! The SPD rule sets and flows of `benches/spd.rs`, shared with the DPDK `rte_acl`
//! comparison (`examples/spd_acl.rs`, which includes this file by path), so that both
//! measure exactly the same policies and packets.
//!
//! The rule sets are "realistic" (ClassBench-like, deterministic): local networks from 64
//! site prefixes, remotes mostly subnets and hosts (10% any), TCP 60% / UDP 25% / ICMP
//! 10% / any 5%, local ports single well-known ports, ranges or any, actions
//! protect/bypass/discard, directions both/outbound/inbound, and a final catch-all
//! discard. Flows: half are built inside a random rule's selectors (they hit that rule or
//! an earlier one), half are random (most reach the catch-all, the worst case of the
//! naive scan).
//!
//! IPv4 ([`Family::V4`]): locals 10.S.0.0/16 and 10.S.X.0/24, remotes /24s and hosts in
//! 172.16.0.0/12. IPv6 ([`Family::V6`]) has the same shape, drawn the same way: locals
//! fd00:0:S::/48 and fd00:0:S:X::/64, remotes /64s and hosts in 2001:db8::/32, ICMPv6 in
//! place of ICMP.
#![allow(dead_code)] // each user takes its own subset

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipsec_core::{Direction, Flow};

/// Flows per rule set.
pub(crate) const FLOWS: usize = 1024;
const WELL_KNOWN: [u16; 16] = [
    22, 25, 53, 80, 110, 123, 135, 143, 389, 443, 445, 631, 993, 3389, 5060, 9100,
];

/// xorshift64*: deterministic and dependency-free.
pub(crate) struct Rng(pub(crate) u64);
impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub(crate) fn pct(&mut self) -> u64 {
        self.below(100)
    }
}

/// The address family of a rule set and its flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    /// Address width in bits.
    pub(crate) fn width(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// The address of value `a` (IPv4 in the low 32 bits).
    pub(crate) fn addr(self, a: u128) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(Ipv4Addr::from(a as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(a)),
        }
    }

    /// ICMP's protocol number in this family.
    fn icmp(self) -> u8 {
        match self {
            Family::V4 => 1,
            Family::V6 => 58,
        }
    }

    /// The local network of site `site`: its /16 (/48), or subnet `sub` of it, a /24 (/64).
    fn local(self, site: u64, sub: Option<u64>) -> (u128, u8) {
        let (site, sub_v) = (u128::from(site), u128::from(sub.unwrap_or(0)));
        match (self, sub) {
            (Family::V4, None) => ((10 << 24) | (site << 16), 16),
            (Family::V4, Some(_)) => ((10 << 24) | (site << 16) | (sub_v << 8), 24),
            (Family::V6, None) => ((0xfd00 << 112) | (site << 80), 48),
            (Family::V6, Some(_)) => ((0xfd00 << 112) | (site << 80) | (sub_v << 64), 64),
        }
    }

    /// Remote subnet `n` (< 4096): a /24 (/64) of 172.16.0.0/12 (2001:db8::/32).
    fn remote_subnet(self, n: u64) -> u128 {
        let n = u128::from(n);
        match self {
            Family::V4 => (172 << 24) | (16 << 16) | (n << 8),
            Family::V6 => (0x2001_0db8 << 96) | (n << 64),
        }
    }

    /// Host `h` (< 256) of a remote subnet.
    fn host(self, subnet: u128, h: u64) -> u128 {
        subnet | u128::from(h)
    }

    /// The remote network assumed for a flow inside a rule with no remote selector.
    fn remote_any(self) -> (u128, u8) {
        match self {
            Family::V4 => (172 << 24, 8),
            Family::V6 => (0x2001_0db8 << 96, 32),
        }
    }

    /// A random address inside `(base, len)`.
    fn inside(self, rng: &mut Rng, (base, len): (u128, u8)) -> u128 {
        match self {
            Family::V4 => {
                let host = if len == 32 { 0 } else { u32::MAX >> len };
                base | u128::from(rng.next() as u32 & host)
            }
            Family::V6 => {
                let r = (u128::from(rng.next()) << 64) | u128::from(rng.next());
                let host = if len == 128 { 0 } else { u128::MAX >> len };
                base | (r & host)
            }
        }
    }
}

/// One generated rule, kept to build flows inside it.
pub(crate) struct Rule {
    outbound: bool,
    inbound: bool,
    local: (u128, u8),
    remote: Option<(u128, u8)>,
    protocol: Option<u8>,
    local_port: Option<(u16, u16)>,
}

/// `n` policies (the last one the catch-all) as policy-file text, and the rules kept to
/// draw flows from.
pub(crate) fn gen_rules(n: usize, rng: &mut Rng, family: Family) -> (String, Vec<Rule>) {
    let mut text = String::from(
        r#"[[sa]]
name = "out"
spi = 0x100
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "00112233445566778899aabbccddeeff01020304"
tunnel_src = "192.0.2.1"
tunnel_dst = "192.0.2.2"
[[sa]]
name = "in"
spi = 0x101
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "8899aabbccddeeff0011223344556677c1c2c3c4"
"#,
    );
    let mut rules = Vec::with_capacity(n);
    let icmp = family.icmp();
    for i in 0..n.saturating_sub(1) {
        let site = rng.below(64);
        let local = if rng.pct() < 50 {
            family.local(site, None)
        } else {
            family.local(site, Some(rng.below(256)))
        };
        let remote_base = family.remote_subnet(rng.below(1 << 12));
        let (subnet, host) = match family {
            Family::V4 => (24, 32),
            Family::V6 => (64, 128),
        };
        let remote = match rng.pct() {
            0..70 => Some((remote_base, subnet)),
            70..90 => Some((family.host(remote_base, rng.below(256)), host)),
            _ => None,
        };
        let protocol = match rng.pct() {
            0..60 => Some(6),
            60..85 => Some(17),
            85..95 => Some(icmp),
            _ => None,
        };
        let local_port = match (protocol, rng.pct()) {
            (Some(6 | 17), 0..60) => {
                let p = WELL_KNOWN[rng.below(16) as usize];
                Some((p, p))
            }
            (Some(6 | 17), 60..85) => {
                let lo = 1024 + rng.below(30_000) as u16;
                Some((lo, lo + rng.below(2000) as u16))
            }
            _ => None,
        };
        let (outbound, inbound, dir) = match rng.pct() {
            0..70 => (true, true, "both"),
            70..85 => (true, false, "outbound"),
            _ => (false, true, "inbound"),
        };
        let action = match rng.pct() {
            0..60 => "protect",
            60..80 => "bypass",
            _ => "discard",
        };
        let _ = writeln!(
            text,
            "[[policy]]\nname = \"r{i}\"\ndirection = \"{dir}\"\nlocal = \"{}/{}\"",
            family.addr(local.0),
            local.1
        );
        if let Some((a, l)) = remote {
            let _ = writeln!(text, "remote = \"{}/{l}\"", family.addr(a));
        }
        let proto = match protocol {
            Some(6) => "tcp",
            Some(17) => "udp",
            Some(1) => "icmp",
            Some(58) => "icmpv6",
            _ => "any",
        };
        let _ = writeln!(text, "protocol = \"{proto}\"");
        if let Some((lo, hi)) = local_port {
            let _ = writeln!(text, "local_port = \"{lo}-{hi}\"");
        }
        let _ = writeln!(text, "action = \"{action}\"");
        if action == "protect" {
            let sa = match dir {
                "both" => "[\"out\", \"in\"]",
                "outbound" => "\"out\"",
                _ => "\"in\"",
            };
            let _ = writeln!(text, "sa = {sa}");
        }
        rules.push(Rule {
            outbound,
            inbound,
            local,
            remote,
            protocol,
            local_port,
        });
    }
    text += "[[policy]]\nname = \"catch-all\"\ndirection = \"both\"\naction = \"discard\"\n";
    (text, rules)
}

/// [`FLOWS`] flows: half inside a random rule of `rules`, half random.
pub(crate) fn gen_flows(rules: &[Rule], rng: &mut Rng, family: Family) -> Vec<Flow> {
    (0..FLOWS)
        .map(|_| {
            if !rules.is_empty() && rng.pct() < 50 {
                let r = &rules[rng.below(rules.len() as u64) as usize];
                let outbound = if r.outbound && r.inbound {
                    rng.pct() < 50
                } else {
                    r.outbound
                };
                let local = family.inside(rng, r.local);
                let remote = family.inside(rng, r.remote.unwrap_or(family.remote_any()));
                let proto = r.protocol.unwrap_or(6);
                let lport = r.local_port.map_or(443, |(lo, hi)| {
                    lo + rng.below(u64::from(hi - lo) + 1) as u16
                });
                let rport = 1024 + rng.below(60_000) as u16;
                flow(family, outbound, local, remote, proto, lport, rport)
            } else {
                let (local, remote) = match family {
                    Family::V4 => (
                        (10 << 24) | (rng.below(64) as u128) << 16 | rng.below(1 << 16) as u128,
                        (172 << 24) | (16 << 16) | rng.below(1 << 20) as u128,
                    ),
                    Family::V6 => {
                        let site = rng.below(64);
                        let l = rng.below(1 << 16);
                        let r = rng.below(1 << 20);
                        (
                            family.host(family.local(site, Some(l >> 8)).0, l & 0xff),
                            family.host(family.remote_subnet(r >> 8), r & 0xff),
                        )
                    }
                };
                let proto = [6, 17, family.icmp(), 50][rng.below(4) as usize];
                let lport = WELL_KNOWN[rng.below(16) as usize];
                let rport = rng.below(65536) as u16;
                flow(family, rng.pct() < 50, local, remote, proto, lport, rport)
            }
        })
        .collect()
}

fn flow(
    family: Family,
    outbound: bool,
    local: u128,
    remote: u128,
    proto: u8,
    lport: u16,
    rport: u16,
) -> Flow {
    let (l, r) = (family.addr(local), family.addr(remote));
    let f = if outbound {
        Flow::new(Direction::Outbound, l, r, proto)
    } else {
        Flow::new(Direction::Inbound, r, l, proto)
    };
    match proto {
        6 | 17 if outbound => f.ports(lport, rport),
        6 | 17 => f.ports(rport, lport),
        1 => f.icmp(8, 0),
        58 => f.icmp(128, 0),
        _ => f,
    }
}

/// The policy-file text and flows of one rule set of `n` rules: the same for every
/// user (the seed depends on the size and family only).
pub(crate) fn rule_set(n: usize, family: Family) -> (String, Vec<Flow>) {
    let seed = match family {
        Family::V4 => 0x5eed_0000,
        Family::V6 => 0x5eed_6000_0000,
    };
    let mut rng = Rng(seed + n as u64);
    let (text, rules) = gen_rules(n, &mut rng, family);
    let flows = gen_flows(&rules, &mut rng, family);
    (text, flows)
}
