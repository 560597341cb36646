//! `ipsec pcap audit POLICY.toml CAPTURE.pcap [--json]`: "is it really encrypted?"
//!
//! Reads a capture taken on the wire between the gateways (classic pcap; Ethernet, with
//! 802.1Q tags skipped, or raw IP) and sorts every packet:
//!
//! * **ESP** (IP protocol 50) and **ESP in UDP** (RFC 3948, UDP 4500): counted per SPI,
//!   named by the SA of the policy file with that SPI when there is one;
//! * **AH** (IP protocol 51): counted per SPI (authenticated, not encrypted);
//! * **IKE**: UDP 500, and UDP 4500 carrying the non-ESP marker or a NAT keepalive;
//! * anything else is **cleartext** and is looked up in the SPD in **both** directions:
//!   on the wire between the gateways a packet may have been sent by either side, so it
//!   is a **leak** when either lookup answers PROTECT (it should have been inside ESP),
//!   **not allowed** when both answer DISCARD (no policy lets it through), and allowed
//!   cleartext (BYPASS) otherwise;
//! * frames that are not IP (ARP, ...) and IP packets too broken to read are counted.
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
//! (`"reason": "fragment_unresolved"`).
//!
//! Output: a human summary with one line per finding, or with `--json` one object per
//! finding (`"kind": "leak" | "not-allowed"`) and a final `"kind": "summary"` object.
//! Exit code 1 when a leak was found, 0 otherwise, 2 for usage and configuration errors.

use crate::netpkt::ip_offset;
use crate::pcap;
use crate::pcap_cmd::find_spi;
use crate::policy_cmd::load_spd;
use crate::{CliError, Outcome};
use ipsec_core::error::{Error, Malformed};
use ipsec_core::packet::NAT_T_PORT;
use ipsec_core::spd::selector::protocol_name;
use ipsec_core::{
    Action, Decision, Direction, Flow, Fragment, FragmentDecision, FragmentError,
    SecurityAssociation, Spd,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

/// What kind of problem a packet shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Leak,
    NotAllowed,
}

struct Finding {
    index: usize,
    kind: Kind,
    flow: Flow,
    /// The lookup that made it a leak (the PROTECT answer), direction first.
    decision: Option<(Direction, String, Option<String>)>,
    /// Why a fragment is not allowed (`fragment_too_short`, ...), or, for a leak, that
    /// it is a later fragment that may be protected traffic (`unresolved`).
    fragment: Option<&'static str>,
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
    Ike,
    /// Cleartext: the verdict, and the end of the first fragment's data.
    Clear(Verdict, u32),
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

#[derive(Default)]
struct Summary {
    packets: usize,
    esp: BTreeMap<u32, usize>,
    esp_udp: BTreeMap<u32, usize>,
    ah: BTreeMap<u32, usize>,
    ike: usize,
    cleartext_allowed: usize,
    leaks: usize,
    not_allowed: usize,
    non_ip: usize,
    malformed: usize,
}

fn ip_header_len(ip: &[u8]) -> Option<(usize, u8)> {
    let info = ipsec_core::packet::parse_ip(ip).ok()?;
    match info.version {
        ipsec_core::packet::IpVersion::V4 => Some((info.header_len, info.protocol)),
        _ => {
            let (hdr, _, proto) = ipsec_core::packet::ipv6_upper_layer(ip, info.total_len).ok()?;
            Some((hdr, proto))
        }
    }
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

/// Runs the audit.
pub(crate) fn run(policy: &Path, capture: &Path, json: bool) -> Result<Outcome, CliError> {
    let mut spd = load_spd(policy)?;
    // SPI -> SA name, for the ESP table (SAs that do not build are just not named).
    let spi_names: HashMap<u32, String> = spd
        .take_sas()
        .into_iter()
        .filter_map(|n| {
            SecurityAssociation::new(n.config, Duration::ZERO)
                .ok()
                .map(|sa| (sa.spi(), n.name))
        })
        .collect();
    let bytes = std::fs::read(capture)
        .map_err(|e| CliError::usage(format!("{}: cannot read: {e}", capture.display())))?;
    let cap =
        pcap::parse(&bytes).map_err(|e| CliError::usage(format!("{}: {e}", capture.display())))?;
    if let Err(e) = ip_offset(cap.linktype, &[])
        && e.contains("not supported")
    {
        return Err(CliError::usage(format!("{}: {e}", capture.display())));
    }
    let mut s = Summary {
        packets: cap.records.len(),
        ..Summary::default()
    };
    let mut findings = Vec::new();
    let mut firsts: HashMap<DatagramKey, FirstFragment> = HashMap::new();
    for (index, rec) in cap.records.iter().enumerate() {
        let Ok((off, _)) = ip_offset(cap.linktype, &rec.data) else {
            s.non_ip += 1;
            continue;
        };
        let ip = &rec.data[off..];
        let Some((_, proto)) = ip_header_len(ip) else {
            s.malformed += 1;
            continue;
        };
        let parsed = Flow::from_packet_with_fragment(Direction::Outbound, ip).ok();
        let fragment = parsed.and_then(|(flow, f)| Some((flow, f?)));
        // A later fragment of a datagram whose first fragment was counted: as it was.
        if let Some((flow, f)) = fragment
            && !f.is_first()
            && let Some(first) = firsts.get(&datagram_key(&flow, &f)).cloned()
        {
            match first {
                FirstFragment::Esp(spi) => *s.esp.entry(spi).or_default() += 1,
                FirstFragment::EspInUdp(spi) => *s.esp_udp.entry(spi).or_default() += 1,
                FirstFragment::Ike => s.ike += 1,
                FirstFragment::Clear(v, first_end) => {
                    let v = if f.offset < first_end {
                        (Verdict::NotAllowed, Some("fragment_overlap"))
                    } else {
                        (v, None)
                    };
                    s.record(&mut findings, index, flow, v);
                }
            }
            continue;
        }
        let remember = |firsts: &mut HashMap<DatagramKey, FirstFragment>, what| {
            if let Some((flow, f)) = fragment
                && f.is_first()
            {
                firsts.insert(datagram_key(&flow, &f), what);
            }
        };
        match proto {
            50 => {
                match find_spi(ip, &[NAT_T_PORT]) {
                    Ok(spi) => {
                        *s.esp.entry(spi).or_default() += 1;
                        remember(&mut firsts, FirstFragment::Esp(spi));
                    }
                    Err(_) => s.malformed += 1,
                }
                continue;
            }
            51 => {
                let (hdr, _) = ip_header_len(ip).unwrap_or((0, 0));
                match ip.get(hdr + 4..hdr + 8) {
                    Some(b) => {
                        *s.ah
                            .entry(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                            .or_default() += 1;
                    }
                    None => s.malformed += 1,
                }
                continue;
            }
            _ => {}
        }
        let later = fragment.is_some_and(|(_, f)| !f.is_first());
        if proto == 17 && !later {
            match find_spi(ip, &[NAT_T_PORT]) {
                Ok(spi) => {
                    *s.esp_udp.entry(spi).or_default() += 1;
                    remember(&mut firsts, FirstFragment::EspInUdp(spi));
                    continue;
                }
                Err(Error::Malformed(Malformed::NonEspMarker | Malformed::NatKeepalive)) => {
                    s.ike += 1;
                    remember(&mut firsts, FirstFragment::Ike);
                    continue;
                }
                _ => {}
            }
        }
        let Some((flow, _)) = parsed else {
            s.malformed += 1;
            continue;
        };
        if proto == 17 && (flow.src_port == Some(500) || flow.dst_port == Some(500)) {
            s.ike += 1;
            remember(&mut firsts, FirstFragment::Ike);
            continue;
        }
        // The checks the gateway makes on every fragment (RFC 1858, RFC 3128).
        if let Some((_, f)) = fragment
            && let Err(e) = f.check_transport_header(flow.protocol)
        {
            let why = match e {
                FragmentError::TooShort => "fragment_too_short",
                _ => "fragment_overlap",
            };
            s.record(&mut findings, index, flow, (Verdict::NotAllowed, Some(why)));
            continue;
        }
        let mut inbound = flow;
        inbound.direction = Direction::Inbound;
        let v = if later {
            verdict(later_fragment(&spd, &flow), later_fragment(&spd, &inbound))
        } else {
            verdict(Ok(spd.lookup(&flow)), Ok(spd.lookup(&inbound)))
        };
        if let Some((_, f)) = fragment
            && f.is_first()
        {
            firsts.insert(
                datagram_key(&flow, &f),
                FirstFragment::Clear(v.0.clone(), f.end()),
            );
        }
        s.record(&mut findings, index, flow, v);
    }
    let text = if json {
        render_json(&findings, &s, &spi_names)
    } else {
        render_human(capture, &findings, &s, &spi_names)
    };
    print!("{text}");
    if s.leaks > 0 {
        Ok(Outcome::Failed(format!(
            "{} cleartext packet(s) that a PROTECT policy covers (plaintext leak)",
            s.leaks
        )))
    } else {
        Ok(Outcome::Ok)
    }
}

impl Summary {
    /// Counts a cleartext packet's verdict and records the finding it makes, if any.
    fn record(
        &mut self,
        findings: &mut Vec<Finding>,
        index: usize,
        flow: Flow,
        (verdict, fragment): (Verdict, Option<&'static str>),
    ) {
        let (kind, decision) = match verdict {
            Verdict::Allowed => {
                self.cleartext_allowed += 1;
                return;
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
        findings.push(Finding {
            index,
            kind,
            flow,
            decision,
            fragment,
        });
    }
}

fn spi_table(m: &BTreeMap<u32, usize>, names: &HashMap<u32, String>) -> Vec<Value> {
    m.iter()
        .map(|(spi, n)| {
            json!({
                "spi": format!("{spi:#010x}"),
                "sa": names.get(spi),
                "packets": n,
            })
        })
        .collect()
}

fn render_json(findings: &[Finding], s: &Summary, names: &HashMap<u32, String>) -> String {
    let mut out = String::new();
    for f in findings {
        let mut v = json!({
            "kind": match f.kind { Kind::Leak => "leak", Kind::NotAllowed => "not-allowed" },
            "packet": f.index + 1,
            "src": f.flow.src.to_string(),
            "dst": f.flow.dst.to_string(),
            "protocol": protocol_name(Some(f.flow.protocol)),
            "src_port": f.flow.src_port,
            "dst_port": f.flow.dst_port,
        });
        if let Some((dir, policy, sa)) = &f.decision {
            v["direction"] = json!(dir.name());
            v["policy"] = json!(policy);
            v["sa"] = json!(sa);
        }
        match (f.kind, f.fragment) {
            (Kind::Leak, Some(tag)) => v["fragment"] = json!(tag),
            (Kind::NotAllowed, Some(reason)) => v["reason"] = json!(reason),
            _ => {}
        }
        let _ = writeln!(out, "{v}");
    }
    let summary = json!({
        "kind": "summary",
        "packets": s.packets,
        "esp": spi_table(&s.esp, names),
        "esp_in_udp": spi_table(&s.esp_udp, names),
        "ah": spi_table(&s.ah, names),
        "ike": s.ike,
        "cleartext_allowed": s.cleartext_allowed,
        "leaks": s.leaks,
        "not_allowed": s.not_allowed,
        "non_ip": s.non_ip,
        "malformed": s.malformed,
    });
    let _ = writeln!(out, "{summary}");
    out
}

fn render_human(
    capture: &Path,
    findings: &[Finding],
    s: &Summary,
    names: &HashMap<u32, String>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: {} packet(s)", capture.display(), s.packets);
    for f in findings {
        match (&f.kind, &f.decision) {
            (Kind::Leak, Some((dir, policy, sa))) if f.fragment.is_some() => {
                let _ = writeln!(
                    out,
                    "  LEAK         packet {:>6}: {} in the clear: a later fragment (its first fragment is not in the capture) that policy {policy:?} ({}) may protect with SA {}",
                    f.index + 1,
                    flow_text(&f.flow),
                    dir.name(),
                    sa.as_deref().unwrap_or("?"),
                );
            }
            (Kind::NotAllowed, _) if f.fragment.is_some() => {
                let _ = writeln!(
                    out,
                    "  NOT ALLOWED  packet {:>6}: {}: the gateway drops this fragment ({})",
                    f.index + 1,
                    flow_text(&f.flow),
                    f.fragment.unwrap_or_default(),
                );
            }
            (Kind::Leak, Some((dir, policy, sa))) => {
                let _ = writeln!(
                    out,
                    "  LEAK         packet {:>6}: {} in the clear; policy {policy:?} ({}) protects it with SA {}",
                    f.index + 1,
                    flow_text(&f.flow),
                    dir.name(),
                    sa.as_deref().unwrap_or("?"),
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "  NOT ALLOWED  packet {:>6}: {}: no policy lets it through (DISCARD both ways)",
                    f.index + 1,
                    flow_text(&f.flow),
                );
            }
        }
    }
    let mut spis = |label: &str, m: &BTreeMap<u32, usize>| {
        for (spi, n) in m {
            let name = names.get(spi).map_or_else(
                || "(SPI not in the policy file)".to_string(),
                |n| format!("SA {n}"),
            );
            let _ = writeln!(
                out,
                "  {label:<12} SPI {spi:#010x} {name:<32} {n:>8} packet(s)"
            );
        }
    };
    spis("ESP", &s.esp);
    spis("ESP-in-UDP", &s.esp_udp);
    spis("AH", &s.ah);
    let _ = writeln!(
        out,
        "summary: {} ESP, {} ESP-in-UDP, {} AH, {} IKE, {} cleartext allowed (bypass), {} LEAK(S), {} not allowed, {} non-IP, {} malformed",
        s.esp.values().sum::<usize>(),
        s.esp_udp.values().sum::<usize>(),
        s.ah.values().sum::<usize>(),
        s.ike,
        s.cleartext_allowed,
        s.leaks,
        s.not_allowed,
        s.non_ip,
        s.malformed
    );
    if s.leaks == 0 {
        let _ = writeln!(
            out,
            "no plaintext leak: every packet a PROTECT policy covers was encrypted"
        );
    }
    out
}
