//! `ipsec pcap audit POLICY.toml CAPTURE.pcap [--json]`: "is it really encrypted?"
//!
//! Reads a capture taken on the wire between the gateways (classic pcap; Ethernet, with
//! 802.1Q tags skipped, or raw IP), one record at a time, and sorts every packet:
//!
//! * **ESP** (IP protocol 50) and **ESP in UDP** (RFC 3948; see "IKE and NAT-T" below):
//!   counted per SPI, named by the SA of the policy file with that SPI. ESP whose SPI no
//!   `[[sa]]` of the file has is a finding (`"kind": "unknown-spi"`), and so is ESP of
//!   an SA that does not encrypt, NULL or AES-GMAC (`"kind": "unencrypted-esp"`: its
//!   payload travels in the clear); each is reported at the first packet of its SPI and
//!   fails the audit. When SAs share an SPI, those whose tunnel destination is the
//!   packet's destination are taken (else those without tunnel addresses, else all),
//!   and the packet is unencrypted ESP when any of them does not encrypt;
//! * **AH** (IP protocol 51): counted per SPI (authenticated, not encrypted);
//! * **IKE**: UDP 500, and UDP 4500 (or an SA's `udp_encap` port) carrying the non-ESP
//!   marker or a NAT keepalive;
//! * anything else is **cleartext** and is looked up in the SPD in **both** directions:
//!   on the wire between the gateways a packet may have been sent by either side, so it
//!   is a **leak** when either lookup answers PROTECT (it should have been inside ESP),
//!   **not allowed** when both answer DISCARD (no policy lets it through), and allowed
//!   cleartext (BYPASS) otherwise;
//! * frames that are not IP (ARP, ...) are counted.
//!
//! # IKE and NAT-T: only between the endpoints
//!
//! UDP port 500 and the NAT-T ports say nothing by themselves: anybody can send from
//! them. A UDP packet with port 500 or a NAT-T port (4500, and the `udp_encap` ports of
//! the file's SAs) is taken for IKE or ESP in UDP only when
//!
//! * its two addresses are the tunnel endpoints (`tunnel_src`, `tunnel_dst`) of an
//!   `[[sa]]` of the file, either way round; or
//! * the SPD itself lets it through by an **IKE bypass policy** (action `bypass`,
//!   protocol `udp`, `local_port` or `remote_port` exactly 500 or a NAT-T port) and no
//!   PROTECT policy covers it in either direction: how a file describes its IKE peers
//!   when the SAs carry no tunnel addresses (transport mode).
//!
//! Any other such packet is cleartext and judged like the rest (cleartext DNS from port
//! 500 into a protected subnet is a leak).
//!
//! # What the capture shows: headers are enough, less is inconclusive
//!
//! Captures are often taken with a short snapshot length (`tcpdump -s 96`): the record
//! holds the first bytes of each packet only. The audit needs only the headers: the IP
//! header (with IPv4 options or IPv6 extension headers) and the first 4 bytes of TCP,
//! UDP or SCTP (the ports) or ICMP (type and code), the SPI of ESP, the SPI of AH (bytes
//! 4 to 8), and for ESP in UDP the 4 bytes after the UDP header. A packet is judged from
//! those whatever its length on the wire. A packet that cannot be judged (the frame or
//! the IP header cut short or broken, the transport header or SPI not captured, a
//! later fragment of ESP or AH whose first fragment is not in the capture, a capture
//! file that ends inside a record) is a finding of its own (`"kind": "unreadable"`,
//! with a `"reason"`: `frame`, `ip_header`, `transport_header`, `ipsec_fragment`,
//! `capture_file`), and the audit is then **inconclusive**: it never says "no leak" for
//! what it could not read.
//!
//! # Fragments
//!
//! **Fragments** are followed through the capture as the gateway follows them
//! (RFC 4301 §7): a datagram's later fragments are counted as its first fragment was
//! (the same SPI, IKE, or the same cleartext verdict: a leak again when the first one
//! leaked). A tiny first fragment or one overlapping its first fragment is **not
//! allowed** (`"reason": "fragment_too_short"` / `"fragment_overlap"`: the gateway drops
//! it). A cleartext later fragment whose first fragment is not in the capture is
//! answered by `Spd::lookup_non_first_fragment` in both directions: when that cannot
//! decide and the policy that could cover it is a PROTECT, it is a **leak** (`"fragment":
//! "unresolved"`: a later fragment in the clear of what may be protected traffic, e.g.
//! one a gateway without fragment state bypassed); otherwise it is not allowed
//! (`"reason": "fragment_unresolved"`). First fragments are remembered for 60 s of
//! capture time, at most 65,536 datagrams at once (the oldest is forgotten first; a
//! later fragment of a forgotten datagram gets the answer for a missing first fragment).
//!
//! # Output and exit code
//!
//! A human report with one line per finding, or with `--json` one object per finding
//! (`"kind": "leak" | "not-allowed" | "unknown-spi" | "unencrypted-esp" |
//! "unreadable"`), written as the capture is read, then a final `"kind": "summary"`
//! object with a `"verdict"`: `"fail"` (exit 1) when a leak, an unknown SPI or
//! unencrypted ESP was found; otherwise `"inconclusive"` (exit 3) when a packet could
//! not be read; otherwise `"pass"` (exit 0). Exit 2 for usage and configuration errors.
//! Each per-SPI table holds at most 65,536 SPIs; packets of further SPIs are counted in
//! `"other_spi_packets"` (and still checked).

use crate::netpkt::{LinkError, ip_offset};
use crate::output::Stdout;
use crate::pcap::{self, Record};
use crate::pcap_cmd::open_capture;
use crate::policy_cmd::load_spd;
use crate::text::clip;
use crate::{CliError, Outcome};
use ipsec_core::error::Malformed;
use ipsec_core::packet::NAT_T_PORT;
use ipsec_core::spd::selector::{has_ports, is_icmp, protocol_name};
use ipsec_core::{
    Action, Cipher, Decision, Direction, Flow, Fragment, FragmentDecision, FragmentError,
    SecurityAssociation, Spd,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

/// How long (capture time) a first fragment is remembered for its later fragments.
const FRAGMENT_MEMORY: Duration = Duration::from_secs(60);
/// How many datagrams' first fragments are remembered at once.
const MAX_DATAGRAMS: usize = 65_536;
/// Rows of each per-SPI table (ESP, ESP in UDP, AH).
const MAX_SPI_ROWS: usize = 65_536;
/// IKE's UDP port.
const IKE_PORT: u16 = 500;

/// What kind of problem a cleartext packet shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Leak,
    NotAllowed,
}

/// One finding, written as soon as it is made.
enum Finding<'a> {
    /// A cleartext packet: a leak, or not allowed.
    Clear {
        kind: Kind,
        flow: Flow,
        /// The lookup that made it a leak (the PROTECT answer), direction first.
        decision: Option<(Direction, String, Option<String>)>,
        /// Why a fragment is not allowed (`fragment_too_short`, ...), or, for a leak,
        /// that it is a later fragment that may be protected traffic (`unresolved`).
        fragment: Option<&'static str>,
    },
    /// ESP whose SPI no SA of the file has.
    UnknownSpi { flow: Flow, spi: u32, udp: bool },
    /// ESP of an SA that does not encrypt.
    Unencrypted {
        flow: Flow,
        spi: u32,
        udp: bool,
        sa: &'a str,
        cipher: Cipher,
    },
    /// A packet the audit could not judge.
    Unreadable {
        reason: &'static str,
        detail: String,
        /// Bytes captured and length on the wire (`None`: the record itself could not
        /// be read).
        sizes: Option<(usize, u32)>,
    },
}

/// Why a packet could not be judged.
struct Unreadable {
    reason: &'static str,
    detail: String,
}

fn unreadable(reason: &'static str, detail: String) -> Unreadable {
    Unreadable { reason, detail }
}

/// A datagram whose first fragment is in the capture: (source, destination, IPv4
/// protocol or 0 for IPv6, identification).
type DatagramKey = (IpAddr, IpAddr, u8, u32);

fn datagram_key(flow: &Flow, f: &Fragment) -> DatagramKey {
    let proto = if flow.src.is_ipv4() { flow.protocol } else { 0 };
    (flow.src, flow.dst, proto, f.id)
}

/// How a datagram's first fragment was counted, for its later fragments.
#[derive(Clone)]
enum FirstFragment {
    Esp(u32),
    EspInUdp(u32),
    Ah(u32),
    Ike,
    /// Cleartext: the verdict, and the end of the first fragment's data.
    Clear(Verdict, u32),
}

/// The first fragments seen, for a bounded time and number (see the module docs).
#[derive(Default)]
struct FirstFragments {
    map: HashMap<DatagramKey, (FirstFragment, Duration)>,
    /// Insertion order, for forgetting the oldest (may hold stale keys).
    order: VecDeque<(DatagramKey, Duration)>,
}

impl FirstFragments {
    fn get(&self, key: &DatagramKey, now: Duration) -> Option<FirstFragment> {
        self.map
            .get(key)
            .filter(|(_, at)| now.saturating_sub(*at) <= FRAGMENT_MEMORY)
            .map(|(what, _)| what.clone())
    }

    fn insert(&mut self, key: DatagramKey, what: FirstFragment, now: Duration) {
        while let Some(&(k, at)) = self.order.front() {
            let expired = now.saturating_sub(at) > FRAGMENT_MEMORY;
            let full = self.map.len() >= MAX_DATAGRAMS || self.order.len() >= 2 * MAX_DATAGRAMS;
            if !(expired || full) {
                break;
            }
            self.order.pop_front();
            if self.map.get(&k).is_some_and(|(_, t)| *t == at) {
                self.map.remove(&k);
            }
        }
        self.map.insert(key, (what, now));
        self.order.push_back((key, now));
    }
}

/// The audit's verdict on a cleartext packet.
#[derive(Clone)]
enum Verdict {
    Allowed,
    Leak((Direction, String, Option<String>)),
    NotAllowed,
}

/// The verdict on a cleartext flow from the answers of both directions (`None`: the
/// fragment could not be decided; `Some(policy)` with it: a PROTECT may cover it).
fn verdict(
    out_d: Result<Decision<'_>, Option<Decision<'_>>>,
    in_d: Result<Decision<'_>, Option<Decision<'_>>>,
) -> (Verdict, Option<&'static str>) {
    let protect = |r: &Result<Decision<'_>, Option<Decision<'_>>>| match r {
        Ok(d) | Err(Some(d)) => d.action == Action::Protect,
        Err(None) => false,
    };
    let unresolved = out_d.is_err() || in_d.is_err();
    for (dir, r) in [(Direction::Outbound, &out_d), (Direction::Inbound, &in_d)] {
        if protect(r) {
            let (Ok(d) | Err(Some(d))) = r else {
                continue;
            };
            let tag = r.is_err().then_some("unresolved");
            return (Verdict::Leak(owned(dir, d)), tag);
        }
    }
    let discard = |r: &Result<Decision<'_>, Option<Decision<'_>>>| {
        r.as_ref().map_or(true, |d| d.action == Action::Discard)
    };
    if discard(&out_d) && discard(&in_d) {
        let why = unresolved.then_some("fragment_unresolved");
        (Verdict::NotAllowed, why)
    } else {
        (Verdict::Allowed, None)
    }
}

/// The answer for a cleartext later fragment whose first fragment is not in the
/// capture: decided, or not (with the policy that might cover it).
fn later_fragment<'s>(spd: &'s Spd, flow: &Flow) -> Result<Decision<'s>, Option<Decision<'s>>> {
    match spd.lookup_non_first_fragment(flow) {
        FragmentDecision::Unresolved { could_match } => Err(could_match),
        other => Ok(other.decided().unwrap_or(Decision::NO_MATCH)),
    }
}

/// One SA of the file, as the ESP checks need it.
struct SaInfo {
    name: String,
    cipher: Cipher,
    tunnel: Option<(IpAddr, IpAddr)>,
}

/// A row of a per-SPI table.
#[derive(Default)]
struct SpiRow {
    packets: usize,
    /// The SA the first packet was taken for (`None`: no SA has the SPI).
    sa: Option<String>,
    /// Whether that SA encrypts.
    encrypted: Option<bool>,
    /// A finding about this SPI was made already.
    reported: bool,
}

#[derive(Default)]
struct Summary {
    packets: usize,
    /// Records shorter than their packet (snapshot length), judged from their headers.
    truncated: usize,
    esp: BTreeMap<u32, SpiRow>,
    esp_udp: BTreeMap<u32, SpiRow>,
    ah: BTreeMap<u32, SpiRow>,
    /// Packets of SPIs beyond the tables' capacity.
    other_spi_packets: usize,
    ike: usize,
    cleartext_allowed: usize,
    leaks: usize,
    not_allowed: usize,
    unknown_spi: usize,
    unencrypted: usize,
    non_ip: usize,
    unreadable: usize,
}

impl Summary {
    /// The verdict: fail, inconclusive or pass.
    fn verdict(&self) -> &'static str {
        if self.leaks + self.unknown_spi + self.unencrypted > 0 {
            "fail"
        } else if self.unreadable > 0 {
            "inconclusive"
        } else {
            "pass"
        }
    }
}

/// What the policy file says about SAs and IKE peers.
struct Context<'s> {
    spd: &'s Spd,
    /// SAs by SPI.
    sas: HashMap<u32, Vec<SaInfo>>,
    /// Tunnel endpoint pairs of the SAs.
    endpoints: Vec<(IpAddr, IpAddr)>,
    /// UDP ports that carry ESP: 4500 and the SAs' `udp_encap` ports.
    nat_ports: Vec<u16>,
    /// Per policy (file order): an IKE bypass policy.
    ike_bypass: Vec<bool>,
}

impl<'s> Context<'s> {
    fn new(spd: &'s Spd, named: Vec<ipsec_core::sa_file::NamedSa>) -> Context<'s> {
        let mut sas: HashMap<u32, Vec<SaInfo>> = HashMap::new();
        let mut endpoints = Vec::new();
        let mut nat_ports = vec![NAT_T_PORT];
        // SAs that do not build are left out (the file loaded, so this is rare): their
        // ESP then shows as an unknown SPI, which fails the audit rather than passing it.
        for n in named {
            let Ok(sa) = SecurityAssociation::new(n.config, Duration::ZERO) else {
                continue;
            };
            if let Some(t) = sa.tunnel() {
                endpoints.push(t);
            }
            if let Some((s, d)) = sa.udp_encap() {
                nat_ports.extend([s, d]);
            }
            sas.entry(sa.spi()).or_default().push(SaInfo {
                name: n.name,
                cipher: sa.cipher(),
                tunnel: sa.tunnel(),
            });
        }
        nat_ports.sort_unstable();
        nat_ports.dedup();
        let single = |r: Option<(u16, u16)>| r.filter(|(a, b)| a == b).map(|(a, _)| a);
        let ike_bypass = spd
            .policies()
            .iter()
            .map(|p| {
                p.action() == Action::Bypass
                    && p.protocol() == Some(17)
                    && [single(p.local_port()), single(p.remote_port())]
                        .into_iter()
                        .flatten()
                        .any(|port| port == IKE_PORT || nat_ports.contains(&port))
            })
            .collect();
        Context {
            spd,
            sas,
            endpoints,
            nat_ports,
            ike_bypass,
        }
    }

    /// True when `flow` (UDP, IKE or NAT-T port) runs between IKE peers: the tunnel
    /// endpoints of an SA, or a pair the SPD lets through by an IKE bypass policy.
    fn between_peers(&self, flow: &Flow) -> bool {
        let (a, b) = (flow.src, flow.dst);
        if self
            .endpoints
            .iter()
            .any(|&(s, d)| (s, d) == (a, b) || (s, d) == (b, a))
        {
            return true;
        }
        let mut inbound = *flow;
        inbound.direction = Direction::Inbound;
        let answers = [self.spd.lookup(flow), self.spd.lookup(&inbound)];
        !answers.iter().any(|d| d.action == Action::Protect)
            && answers.iter().any(|d| {
                d.action == Action::Bypass
                    && d.policy_index
                        .is_some_and(|i| self.ike_bypass.get(i).copied().unwrap_or(false))
            })
    }

    /// The SA an ESP packet of `spi` to `dst` belongs to, and whether every candidate
    /// encrypts (see the module docs); `None` when no SA has the SPI.
    fn esp_sa(&self, spi: u32, dst: IpAddr) -> Option<(&SaInfo, bool)> {
        let all = self.sas.get(&spi)?;
        let to_dst: Vec<&SaInfo> = all
            .iter()
            .filter(|s| s.tunnel.is_some_and(|(_, d)| d == dst))
            .collect();
        let no_tunnel: Vec<&SaInfo> = all.iter().filter(|s| s.tunnel.is_none()).collect();
        let candidates = if !to_dst.is_empty() {
            to_dst
        } else if !no_tunnel.is_empty() {
            no_tunnel
        } else {
            all.iter().collect()
        };
        let weak = candidates.iter().find(|s| !s.cipher.is_confidential());
        Some(match weak {
            Some(s) => (*s, false),
            None => (candidates[0], true),
        })
    }
}

/// What the captured bytes of one IP packet show.
struct Packet<'a> {
    /// Its selectors (direction outbound; ports `None` for a later fragment).
    flow: Flow,
    /// Where it sits in its datagram, with its lengths on the wire.
    fragment: Option<Fragment>,
    /// The captured bytes after the IP header chain (a later fragment: its data).
    l4: &'a [u8],
    /// The length of that part on the wire, by the IP header.
    l4_len: usize,
}

/// Reads the headers of the IP packet `ip` as far as they were captured. When the
/// record is shorter than the packet's own length (a short snapshot length), the
/// headers are read from a copy whose IP length field says what was captured, and the
/// fragment lengths are put back to those on the wire.
fn read_ip<'a>(ip: &'a [u8], scratch: &mut Vec<u8>) -> Result<Packet<'a>, Unreadable> {
    let first = *ip
        .first()
        .ok_or_else(|| unreadable("ip_header", "no IP header in the frame".into()))?;
    let v4 = match first >> 4 {
        4 => true,
        6 => false,
        v => {
            return Err(unreadable(
                "ip_header",
                format!("not an IP header (version {v})"),
            ));
        }
    };
    let fixed = if v4 { 20 } else { 40 };
    if ip.len() < fixed {
        return Err(unreadable(
            "ip_header",
            format!(
                "the IPv{} header is cut short: {} of its {fixed} bytes captured",
                if v4 { 4 } else { 6 },
                ip.len()
            ),
        ));
    }
    let total = if v4 {
        let ihl = usize::from(first & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if ihl < 20 || total < ihl {
            return Err(unreadable(
                "ip_header",
                format!("broken IPv4 header: header length {ihl}, total length {total}"),
            ));
        }
        if ip.len() < ihl {
            return Err(unreadable(
                "ip_header",
                format!(
                    "the IPv4 header with options is cut short: {} of its {ihl} bytes captured",
                    ip.len()
                ),
            ));
        }
        total
    } else {
        40 + usize::from(u16::from_be_bytes([ip[4], ip[5]]))
    };
    let missing = total.saturating_sub(ip.len());
    let bytes: &[u8] = if missing == 0 {
        &ip[..total]
    } else {
        scratch.clear();
        scratch.extend_from_slice(ip);
        // ip.len() < total <= 65,535 (+ 40 for IPv6): the captured length fits.
        if v4 {
            scratch[2..4].copy_from_slice(&(ip.len() as u16).to_be_bytes());
        } else {
            scratch[4..6].copy_from_slice(&((ip.len() - 40) as u16).to_be_bytes());
        }
        scratch
    };
    let cut = |what: &str| {
        if missing > 0 {
            format!(
                "{what} not captured ({} of the packet's {total} bytes)",
                ip.len()
            )
        } else {
            format!("malformed packet: {what} cut short")
        }
    };
    let (flow, mut fragment) = Flow::from_packet_with_fragment(Direction::Outbound, bytes)
        .map_err(|e| match e {
            Malformed::Truncated => unreadable(
                "transport_header",
                cut("the transport header (ports, or ICMP type and code)"),
            ),
            Malformed::BadExtensionHeader => {
                unreadable("ip_header", cut("the IPv6 extension headers"))
            }
            other => unreadable(
                "ip_header",
                format!("malformed packet: {}", other.describe()),
            ),
        })?;
    let missing32 = u32::try_from(missing).unwrap_or(u32::MAX);
    if let Some(f) = fragment.as_mut() {
        f.len = f.len.saturating_add(missing32);
        if f.is_first() {
            f.upper_layer_len = f.upper_layer_len.saturating_add(missing32);
        }
    }
    let l4_at = if v4 {
        usize::from(first & 0x0f) * 4
    } else {
        ipsec_core::packet::ipv6_upper_layer(bytes, bytes.len())
            .map_err(|_| unreadable("ip_header", cut("the IPv6 extension headers")))?
            .0
    };
    let p = flow.protocol;
    // A first fragment whose ports the capture cut off (a tiny one is judged as such).
    let needs_ports = (has_ports(p) || is_icmp(p)) && fragment.is_none_or(|f| f.is_first());
    if needs_ports
        && flow.src_port.is_none()
        && flow.icmp_type.is_none()
        && fragment.is_none_or(|f| f.check_transport_header(p).is_ok())
    {
        return Err(unreadable(
            "transport_header",
            cut("the transport header (ports, or ICMP type and code)"),
        ));
    }
    let avail = total.min(ip.len());
    Ok(Packet {
        flow,
        fragment,
        l4: &ip[l4_at.min(avail)..avail],
        l4_len: total.saturating_sub(l4_at),
    })
}

/// What follows the UDP header of a packet on a NAT-T port (RFC 3948).
enum NatT {
    /// The non-ESP marker (IKE) or a NAT keepalive.
    Ike,
    /// ESP, with its SPI.
    Esp(u32),
    /// Neither (fewer than 4 bytes that are not a keepalive).
    Other,
    /// Not captured.
    Unreadable,
}

fn nat_t(udp: &[u8], udp_len_on_wire: usize) -> NatT {
    let Some(len) = udp.get(4..6) else {
        return NatT::Unreadable;
    };
    let payload = usize::from(u16::from_be_bytes([len[0], len[1]]))
        .min(udp_len_on_wire)
        .saturating_sub(8);
    let body = udp.get(8..).unwrap_or(&[]);
    if payload == 1 {
        return match body.first() {
            Some(0xff) => NatT::Ike,
            Some(_) => NatT::Other,
            None => NatT::Unreadable,
        };
    }
    if payload < 4 {
        return NatT::Other;
    }
    match body.get(..4) {
        None => NatT::Unreadable,
        Some([0, 0, 0, 0]) => NatT::Ike,
        Some(b) => NatT::Esp(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
    }
}

fn spi_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn flow_text(f: &Flow) -> String {
    let p = protocol_name(Some(f.protocol));
    match (f.src_port, f.dst_port, f.icmp_type) {
        (Some(s), Some(d), _) => format!("{}:{s} -> {}:{d} {p}", f.src, f.dst),
        (_, _, Some(t)) => format!(
            "{} -> {} {p} type {t} code {}",
            f.src,
            f.dst,
            f.icmp_code.unwrap_or(0)
        ),
        _ => format!("{} -> {} {p}", f.src, f.dst),
    }
}

fn owned(dir: Direction, d: &Decision<'_>) -> (Direction, String, Option<String>) {
    (
        dir,
        d.policy.unwrap_or("").to_string(),
        d.sa.map(str::to_string),
    )
}

/// Where the findings go, as they are made.
struct Report {
    out: Stdout,
    json: bool,
}

impl Report {
    fn write(&mut self, index: usize, f: &Finding<'_>) -> Result<(), CliError> {
        let line = if self.json {
            finding_json(index, f).to_string()
        } else {
            finding_human(index, f)
        };
        writeln!(self.out, "{line}").map_err(CliError::output)
    }
}

fn finding_json(index: usize, f: &Finding<'_>) -> Value {
    let endpoints = |v: &mut Value, flow: &Flow| {
        v["src"] = json!(flow.src.to_string());
        v["dst"] = json!(flow.dst.to_string());
    };
    match f {
        Finding::Clear {
            kind,
            flow,
            decision,
            fragment,
        } => {
            let mut v = json!({
                "kind": match kind { Kind::Leak => "leak", Kind::NotAllowed => "not-allowed" },
                "packet": index + 1,
                "src": flow.src.to_string(),
                "dst": flow.dst.to_string(),
                "protocol": protocol_name(Some(flow.protocol)),
                "src_port": flow.src_port,
                "dst_port": flow.dst_port,
            });
            if let Some((dir, policy, sa)) = decision {
                v["direction"] = json!(dir.name());
                v["policy"] = json!(policy);
                v["sa"] = json!(sa);
            }
            match (kind, fragment) {
                (Kind::Leak, Some(tag)) => v["fragment"] = json!(tag),
                (Kind::NotAllowed, Some(reason)) => v["reason"] = json!(reason),
                _ => {}
            }
            v
        }
        Finding::UnknownSpi { flow, spi, udp } => {
            let mut v = json!({
                "kind": "unknown-spi",
                "packet": index + 1,
                "spi": format!("{spi:#010x}"),
                "transport": if *udp { "esp-in-udp" } else { "esp" },
            });
            endpoints(&mut v, flow);
            v
        }
        Finding::Unencrypted {
            flow,
            spi,
            udp,
            sa,
            cipher,
        } => {
            let mut v = json!({
                "kind": "unencrypted-esp",
                "packet": index + 1,
                "spi": format!("{spi:#010x}"),
                "transport": if *udp { "esp-in-udp" } else { "esp" },
                "sa": sa,
                "cipher": cipher.name(),
            });
            endpoints(&mut v, flow);
            v
        }
        Finding::Unreadable {
            reason,
            detail,
            sizes,
        } => json!({
            "kind": "unreadable",
            "packet": index + 1,
            "reason": reason,
            "detail": detail,
            "captured": sizes.map(|s| s.0),
            "length": sizes.map(|s| s.1),
        }),
    }
}

fn finding_human(index: usize, f: &Finding<'_>) -> String {
    let n = index + 1;
    match f {
        Finding::Clear {
            kind: Kind::Leak,
            flow,
            decision: Some((dir, policy, sa)),
            fragment,
        } => {
            let sa = sa.as_deref().unwrap_or("?");
            if fragment.is_some() {
                format!(
                    "  LEAK         packet {n:>6}: {} in the clear: a later fragment (its first fragment is not in the capture) that policy {policy:?} ({}) may protect with SA {sa}",
                    flow_text(flow),
                    dir.name(),
                )
            } else {
                format!(
                    "  LEAK         packet {n:>6}: {} in the clear; policy {policy:?} ({}) protects it with SA {sa}",
                    flow_text(flow),
                    dir.name(),
                )
            }
        }
        Finding::Clear {
            flow,
            fragment: Some(why),
            ..
        } => format!(
            "  NOT ALLOWED  packet {n:>6}: {}: the gateway drops this fragment ({why})",
            flow_text(flow),
        ),
        Finding::Clear { flow, .. } => format!(
            "  NOT ALLOWED  packet {n:>6}: {}: no policy lets it through (DISCARD both ways)",
            flow_text(flow),
        ),
        Finding::UnknownSpi { flow, spi, udp } => format!(
            "  UNKNOWN SPI  packet {n:>6}: {} SPI {spi:#010x} {} -> {}: no SA in the policy file has this SPI",
            if *udp { "ESP-in-UDP" } else { "ESP" },
            flow.src,
            flow.dst,
        ),
        Finding::Unencrypted {
            flow,
            spi,
            udp,
            sa,
            cipher,
        } => format!(
            "  UNENCRYPTED  packet {n:>6}: {} SPI {spi:#010x} {} -> {} is SA {:?} ({}): integrity only, the payload travels in the clear",
            if *udp { "ESP-in-UDP" } else { "ESP" },
            flow.src,
            flow.dst,
            clip(sa),
            cipher.name(),
        ),
        Finding::Unreadable {
            reason,
            detail,
            sizes,
        } => {
            let sizes = sizes.map_or(String::new(), |(c, l)| {
                format!(" [{c} of {l} bytes captured]")
            });
            format!("  UNREADABLE   packet {n:>6}: {detail} ({reason}){sizes}")
        }
    }
}

/// Runs the audit.
pub(crate) fn run(policy: &Path, capture: &Path, json: bool) -> Result<Outcome, CliError> {
    let mut spd = load_spd(policy)?;
    let named = spd.take_sas();
    let ctx = Context::new(&spd, named);
    let shown = capture.display().to_string();
    let shown = clip(&shown);
    let mut reader = open_capture(capture)?;
    let linktype = reader.linktype;
    let mut report = Report {
        out: Stdout::new(),
        json,
    };
    if !json {
        writeln!(report.out, "{shown}:").map_err(CliError::output)?;
    }
    let mut s = Summary::default();
    let mut firsts = FirstFragments::default();
    let mut rec = Record::default();
    let mut scratch = Vec::new();
    loop {
        let index = s.packets;
        match reader.next_into(&mut rec) {
            Ok(true) => {}
            Ok(false) => break,
            Err(pcap::ReadError::Format(m)) => {
                // The rest of the file cannot be read: that is a finding, not a pass.
                s.unreadable += 1;
                let f = Finding::Unreadable {
                    reason: "capture_file",
                    detail: format!("the capture cannot be read beyond this point: {m}"),
                    sizes: None,
                };
                report.write(index, &f)?;
                break;
            }
            Err(e @ pcap::ReadError::Io(_)) => {
                return Err(CliError::usage(format!("{shown}: {e}")));
            }
        }
        s.packets += 1;
        if rec.data.len() < rec.orig_len as usize {
            s.truncated += 1;
        }
        if let Some(f) = audit_packet(&ctx, &mut s, &mut firsts, linktype, &rec, &mut scratch) {
            let f = match f {
                Ok(f) => f,
                Err(u) => {
                    s.unreadable += 1;
                    Finding::Unreadable {
                        reason: u.reason,
                        detail: u.detail,
                        sizes: Some((rec.data.len(), rec.orig_len)),
                    }
                }
            };
            report.write(index, &f)?;
        }
    }
    let tail = if json {
        summary_json(&s).to_string()
    } else {
        summary_human(&s)
    };
    writeln!(report.out, "{tail}").map_err(CliError::output)?;
    report.out.flush().map_err(CliError::output)?;
    match s.verdict() {
        "fail" => {
            let mut what = Vec::new();
            if s.leaks > 0 {
                what.push(format!(
                    "{} cleartext packet(s) that a PROTECT policy covers (plaintext leak)",
                    s.leaks
                ));
            }
            if s.unknown_spi > 0 {
                what.push(format!(
                    "{} ESP packet(s) of an SPI no SA in the policy file has",
                    s.unknown_spi
                ));
            }
            if s.unencrypted > 0 {
                what.push(format!(
                    "{} ESP packet(s) of an SA that does not encrypt (NULL or AES-GMAC)",
                    s.unencrypted
                ));
            }
            Ok(Outcome::Failed(what.join("; ")))
        }
        "inconclusive" => Ok(Outcome::Inconclusive(format!(
            "{} packet(s) could not be read (see the \"unreadable\" findings): the audit \
             cannot say that nothing leaked",
            s.unreadable
        ))),
        _ => Ok(Outcome::Ok),
    }
}

/// Audits one record; the finding it makes, if any (`Err`: the packet could not be
/// judged).
fn audit_packet<'c>(
    ctx: &'c Context<'_>,
    s: &mut Summary,
    firsts: &mut FirstFragments,
    linktype: u32,
    rec: &Record,
    scratch: &mut Vec<u8>,
) -> Option<Result<Finding<'c>, Unreadable>> {
    let off = match ip_offset(linktype, &rec.data) {
        Ok((off, _)) => off,
        Err(LinkError::NotIp(_)) => {
            s.non_ip += 1;
            return None;
        }
        Err(e) => {
            return Some(Err(unreadable(
                "frame",
                format!("the link-layer header cannot be read: {e}"),
            )));
        }
    };
    let pkt = match read_ip(&rec.data[off..], scratch) {
        Ok(p) => p,
        Err(u) => return Some(Err(u)),
    };
    let Packet {
        flow,
        fragment,
        l4,
        l4_len,
    } = pkt;
    let later = fragment.is_some_and(|f| !f.is_first());
    // A later fragment of a datagram whose first fragment was counted: as it was.
    if let Some(f) = fragment
        && later
        && let Some(first) = firsts.get(&datagram_key(&flow, &f), rec.ts)
    {
        return match first {
            FirstFragment::Esp(spi) => esp(ctx, s, spi, false, flow),
            FirstFragment::EspInUdp(spi) => esp(ctx, s, spi, true, flow),
            FirstFragment::Ah(spi) => {
                count_spi(&mut s.ah, &mut s.other_spi_packets, spi, None);
                None
            }
            FirstFragment::Ike => {
                s.ike += 1;
                None
            }
            FirstFragment::Clear(v, first_end) => {
                let v = if f.offset < first_end {
                    (Verdict::NotAllowed, Some("fragment_overlap"))
                } else {
                    (v, None)
                };
                s.record(flow, v).map(Ok)
            }
        };
    }
    let mut remember = |what: FirstFragment| {
        if let Some(f) = fragment
            && f.is_first()
        {
            firsts.insert(datagram_key(&flow, &f), what, rec.ts);
        }
    };
    let ipsec_fragment = |name: &str| {
        Some(Err(unreadable(
            "ipsec_fragment",
            format!(
                "a later fragment of an {name} packet whose first fragment is not in the \
                 capture: its SPI cannot be read"
            ),
        )))
    };
    match flow.protocol {
        50 => {
            if later {
                return ipsec_fragment("ESP");
            }
            let Some(spi) = spi_at(l4, 0) else {
                return Some(Err(unreadable(
                    "transport_header",
                    "the ESP header (SPI) is not captured".into(),
                )));
            };
            remember(FirstFragment::Esp(spi));
            return esp(ctx, s, spi, false, flow);
        }
        51 => {
            if later {
                return ipsec_fragment("AH");
            }
            let Some(spi) = spi_at(l4, 4) else {
                return Some(Err(unreadable(
                    "transport_header",
                    "the AH header (SPI) is not captured".into(),
                )));
            };
            remember(FirstFragment::Ah(spi));
            let names = ctx.sas.get(&spi).map(|v| v[0].name.clone());
            count_spi(&mut s.ah, &mut s.other_spi_packets, spi, names);
            return None;
        }
        _ => {}
    }
    if flow.protocol == 17 && !later {
        let (sport, dport) = (flow.src_port.unwrap_or(0), flow.dst_port.unwrap_or(0));
        let nat = ctx.nat_ports.contains(&sport) || ctx.nat_ports.contains(&dport);
        let ike = sport == IKE_PORT || dport == IKE_PORT;
        if (nat || ike) && ctx.between_peers(&flow) {
            let class = if nat { nat_t(l4, l4_len) } else { NatT::Ike };
            match class {
                NatT::Ike => {
                    s.ike += 1;
                    remember(FirstFragment::Ike);
                    return None;
                }
                NatT::Esp(spi) => {
                    remember(FirstFragment::EspInUdp(spi));
                    return esp(ctx, s, spi, true, flow);
                }
                NatT::Unreadable => {
                    return Some(Err(unreadable(
                        "transport_header",
                        "UDP between IKE peers on a NAT-T port: the 4 bytes after the UDP \
                         header (SPI or non-ESP marker) are not captured"
                            .into(),
                    )));
                }
                // Neither IKE nor ESP: judged as cleartext below.
                NatT::Other if ike => {
                    s.ike += 1;
                    remember(FirstFragment::Ike);
                    return None;
                }
                NatT::Other => {}
            }
        }
    }
    // The checks the gateway makes on every fragment (RFC 1858, RFC 3128).
    if let Some(f) = fragment
        && let Err(e) = f.check_transport_header(flow.protocol)
    {
        let why = match e {
            FragmentError::TooShort => "fragment_too_short",
            _ => "fragment_overlap",
        };
        return s.record(flow, (Verdict::NotAllowed, Some(why))).map(Ok);
    }
    let spd = ctx.spd;
    let mut inbound = flow;
    inbound.direction = Direction::Inbound;
    let v = if later {
        verdict(later_fragment(spd, &flow), later_fragment(spd, &inbound))
    } else {
        verdict(Ok(spd.lookup(&flow)), Ok(spd.lookup(&inbound)))
    };
    if let Some(f) = fragment
        && f.is_first()
    {
        firsts.insert(
            datagram_key(&flow, &f),
            FirstFragment::Clear(v.0.clone(), f.end()),
            rec.ts,
        );
    }
    s.record(flow, v).map(Ok)
}

/// Counts a packet of `spi` in `table`; the row, `None` when the table is full.
fn count_spi<'t>(
    table: &'t mut BTreeMap<u32, SpiRow>,
    other: &mut usize,
    spi: u32,
    sa: Option<String>,
) -> Option<&'t mut SpiRow> {
    if !table.contains_key(&spi) && table.len() >= MAX_SPI_ROWS {
        *other += 1;
        return None;
    }
    let row = table.entry(spi).or_insert_with(|| SpiRow {
        sa,
        ..SpiRow::default()
    });
    row.packets += 1;
    Some(row)
}

/// Counts an ESP packet and checks its SPI; a finding at the first packet of an SPI
/// that no SA has or whose SA does not encrypt.
fn esp<'c>(
    ctx: &'c Context<'_>,
    s: &mut Summary,
    spi: u32,
    udp: bool,
    flow: Flow,
) -> Option<Result<Finding<'c>, Unreadable>> {
    let sa = ctx.esp_sa(spi, flow.dst);
    match sa {
        None => s.unknown_spi += 1,
        Some((_, false)) => s.unencrypted += 1,
        Some(_) => {}
    }
    let table = if udp { &mut s.esp_udp } else { &mut s.esp };
    let full = table.len() >= MAX_SPI_ROWS;
    let row = if full && !table.contains_key(&spi) {
        s.other_spi_packets += 1;
        None
    } else {
        let row = table.entry(spi).or_default();
        row.packets += 1;
        if row.packets == 1 {
            row.sa = sa.map(|(info, _)| info.name.clone());
            row.encrypted = sa.map(|(_, enc)| enc);
        }
        Some(row)
    };
    // One finding per SPI (per packet for SPIs beyond the table).
    if let Some(row) = row {
        if row.reported {
            return None;
        }
        row.reported = true;
    }
    match sa {
        None => Some(Ok(Finding::UnknownSpi { flow, spi, udp })),
        Some((info, false)) => Some(Ok(Finding::Unencrypted {
            flow,
            spi,
            udp,
            sa: &info.name,
            cipher: info.cipher,
        })),
        Some(_) => None,
    }
}

impl Summary {
    /// Counts a cleartext packet's verdict; the finding it makes, if any.
    fn record(
        &mut self,
        flow: Flow,
        (verdict, fragment): (Verdict, Option<&'static str>),
    ) -> Option<Finding<'static>> {
        let (kind, decision) = match verdict {
            Verdict::Allowed => {
                self.cleartext_allowed += 1;
                return None;
            }
            Verdict::Leak(d) => {
                self.leaks += 1;
                (Kind::Leak, Some(d))
            }
            Verdict::NotAllowed => {
                self.not_allowed += 1;
                (Kind::NotAllowed, None)
            }
        };
        Some(Finding::Clear {
            kind,
            flow,
            decision,
            fragment,
        })
    }
}

fn spi_table(m: &BTreeMap<u32, SpiRow>) -> Vec<Value> {
    m.iter()
        .map(|(spi, r)| {
            json!({
                "spi": format!("{spi:#010x}"),
                "sa": r.sa,
                "encrypted": r.encrypted,
                "packets": r.packets,
            })
        })
        .collect()
}

fn summary_json(s: &Summary) -> Value {
    json!({
        "kind": "summary",
        "verdict": s.verdict(),
        "packets": s.packets,
        "esp": spi_table(&s.esp),
        "esp_in_udp": spi_table(&s.esp_udp),
        "ah": spi_table(&s.ah),
        "other_spi_packets": s.other_spi_packets,
        "ike": s.ike,
        "cleartext_allowed": s.cleartext_allowed,
        "leaks": s.leaks,
        "not_allowed": s.not_allowed,
        "unknown_spi": s.unknown_spi,
        "unencrypted_esp": s.unencrypted,
        "non_ip": s.non_ip,
        "unreadable": s.unreadable,
        "truncated": s.truncated,
    })
}

fn summary_human(s: &Summary) -> String {
    let mut out = String::new();
    let mut spis = |label: &str, m: &BTreeMap<u32, SpiRow>| {
        for (spi, r) in m {
            let name = match (&r.sa, r.encrypted) {
                (None, _) => "(SPI not in the policy file)".to_string(),
                (Some(n), Some(false)) => format!("SA {} (NOT ENCRYPTED)", clip(n)),
                (Some(n), _) => format!("SA {}", clip(n)),
            };
            out.push_str(&format!(
                "  {label:<12} SPI {spi:#010x} {name:<32} {:>8} packet(s)\n",
                r.packets
            ));
        }
    };
    spis("ESP", &s.esp);
    spis("ESP-in-UDP", &s.esp_udp);
    spis("AH", &s.ah);
    let sum = |m: &BTreeMap<u32, SpiRow>| m.values().map(|r| r.packets).sum::<usize>();
    out.push_str(&format!(
        "summary: {} packet(s): {} ESP, {} ESP-in-UDP, {} AH, {} IKE, {} cleartext allowed (bypass), {} LEAK(S), {} not allowed, {} unknown SPI, {} unencrypted ESP, {} non-IP, {} unreadable",
        s.packets,
        sum(&s.esp),
        sum(&s.esp_udp),
        sum(&s.ah),
        s.ike,
        s.cleartext_allowed,
        s.leaks,
        s.not_allowed,
        s.unknown_spi,
        s.unencrypted,
        s.non_ip,
        s.unreadable,
    ));
    if s.other_spi_packets > 0 {
        out.push_str(&format!(
            "\n  {} packet(s) of further SPIs (the tables hold {MAX_SPI_ROWS} SPIs)",
            s.other_spi_packets
        ));
    }
    if s.truncated > 0 {
        out.push_str(&format!(
            "\n  {} record(s) shorter than their packet (snapshot length): judged from their headers",
            s.truncated
        ));
    }
    match s.verdict() {
        "pass" => {
            out.push_str("\nno plaintext leak: every packet a PROTECT policy covers was encrypted")
        }
        "inconclusive" => out.push_str(&format!(
            "\nINCONCLUSIVE: {} packet(s) could not be read; no leak was found in the rest, \
             but the audit cannot say that nothing leaked",
            s.unreadable
        )),
        _ => {}
    }
    out
}
