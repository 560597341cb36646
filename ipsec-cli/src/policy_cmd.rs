//! `ipsec policy ...`: the administrators' questions about a policy file.
//!
//! * `lint FILE [--json] [--budget STEPS]`: every finding of `lint_toml` (load errors included, code
//!   `invalid`); JSON: one `{"code","severity","policy","message"}` object per line.
//!   Exit 1 when a finding is an error.
//! * `firewall FILE [--json]`: the openings a firewall between the gateways needs.
//! * `test FILE CASES [--json]`: runs a cases file; exit 1 when a case fails.
//! * `explain FILE [--json]`: the boundary probes of every policy and what they hit.
//! * `lookup FILE --flows FLOWS.csv [--cache]` answers, for each flow of a CSV file, what
//!   the SPD does with it.
//!
//! # The flows file
//!
//! One flow per line: `direction,src,dst,protocol,src_port,dst_port`.
//! * `direction`: `outbound` / `out` or `inbound` / `in` (any case);
//! * `src`, `dst`: IPv4 or IPv6 addresses of the same family;
//! * `protocol`: a name (`tcp`, `udp`, `icmp`, `icmpv6`, `sctp`, `esp`, `ah`, `gre`) or a
//!   number 0..=255;
//! * `src_port`, `dst_port`: ports for TCP, UDP and SCTP; for ICMP and ICMPv6 the same
//!   two columns are the message type and code. Both empty means a **non-first
//!   fragment** (its ports are unknown, RFC 4301 §7), answered as the gateway answers
//!   one whose first fragment it has not seen (`Spd::lookup_as_packet`); one empty and
//!   the other not is an error, and so is a port given for a protocol without ports.
//!
//! A first line whose first field is `direction` is a header and skipped; blank lines
//! and lines starting with `#` are skipped too (they give no output). `-` reads stdin.
//!
//! # Output
//!
//! One JSON object per flow line, in input order, on stdout:
//! `{"action":"protect","policy":"b1-rdp","sa":"ho-to-b1"}` (`policy` and `sa` are null
//! when absent). A non-first fragment that cannot be decided without its first fragment
//! is dropped: `{"action":"discard","policy":null,"sa":null,"drop":"fragment_unresolved",
//! "could_match":"b1-rdp"}` (`could_match`: the port-specific policy that may cover
//! it, or null). A line that cannot be read gives `{"error":"line N: ..."}` in its place
//! and the command exits 1 at the end. A policy file that does not load exits 2 with
//! every problem on stderr.
//!
//! A line longer than 4096 bytes, a field longer than 64 bytes, or a line that is not
//! UTF-8 is an error for that line alone (`text` module: the limits); errors repeat
//! at most 64 characters of a value.
//!
//! The loop allocates nothing per line beyond the reused line buffer (errors aside):
//! fields are slices of the line, stdout is locked once behind a buffer. Memory stays
//! bounded whatever the input: a line is never stored beyond its first 4096 bytes.

use crate::output::Stdout;
use crate::text::{LineRead, MAX_FIELD, MAX_LINE, clip, clip_message, read_line, read_text_file};
use crate::{CliError, Outcome};
use ipsec_core::secret::Zeroizing;
use ipsec_core::spd::selector::{has_ports, is_icmp, parse_protocol, protocol_name};
use ipsec_core::spd::{Finding, LintBudget, Opening, Severity, lint_toml_with};
use ipsec_core::{Decision, Direction, Flow, FragmentDecision, Spd, SpdCache};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::io::{BufReader, Read, Write};
use std::net::IpAddr;
use std::path::Path;

/// Loads a policy file, reporting every problem (exit 2).
pub(crate) fn load_spd(path: &Path) -> Result<Spd, CliError> {
    let text = read_text(path)?;
    spd_from_text(&clip(&path.display().to_string()), &text)
}

/// Parses policy text, reporting every problem (exit 2).
pub(crate) fn spd_from_text(origin: &str, text: &str) -> Result<Spd, CliError> {
    Spd::from_toml_all_errors(text).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| format!("{origin}: {e}")).collect();
        CliError::usage(lines.join("\n"))
    })
}

fn parse_direction(s: &str) -> Result<Direction, String> {
    if s.eq_ignore_ascii_case("outbound") || s.eq_ignore_ascii_case("out") {
        Ok(Direction::Outbound)
    } else if s.eq_ignore_ascii_case("inbound") || s.eq_ignore_ascii_case("in") {
        Ok(Direction::Inbound)
    } else {
        Err(format!(
            "direction {:?}: expected \"outbound\" or \"inbound\"",
            clip(s)
        ))
    }
}

fn parse_proto(s: &str) -> Result<u8, String> {
    // The common names without the allocation `parse_protocol` makes.
    for (name, n) in [("tcp", 6u8), ("udp", 17), ("icmp", 1), ("icmpv6", 58)] {
        if s.eq_ignore_ascii_case(name) {
            return Ok(n);
        }
    }
    if let Ok(n) = s.parse::<u8>() {
        return Ok(n);
    }
    match parse_protocol(s) {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err("protocol \"any\": a flow has one protocol".into()),
        Err(e) => Err(format!("protocol: {}", clip_message(&e))),
    }
}

/// Reads one flow line (already trimmed, not blank, not a comment). A field longer than
/// [`MAX_FIELD`] bytes is an error; values are repeated in errors [`clip`]ped.
pub(crate) fn parse_flow(line: &str) -> Result<Flow, String> {
    let mut it = line.split(',').map(str::trim);
    let mut field = |what: &str| {
        let f = it.next().ok_or_else(|| {
            format!("missing field {what} (expected direction,src,dst,protocol,src_port,dst_port)")
        })?;
        if f.len() > MAX_FIELD {
            return Err(format!(
                "field {what} ({:?}) is {} bytes long, longer than the {MAX_FIELD}-byte limit",
                clip(f),
                f.len()
            ));
        }
        Ok(f)
    };
    let direction = parse_direction(field("direction")?)?;
    let src_s = field("src")?;
    let src: IpAddr = src_s
        .parse()
        .map_err(|_| format!("src {:?} is not an IP address", clip(src_s)))?;
    let dst_s = field("dst")?;
    let dst: IpAddr = dst_s
        .parse()
        .map_err(|_| format!("dst {:?} is not an IP address", clip(dst_s)))?;
    let protocol = parse_proto(field("protocol")?)?;
    let sport = field("src_port")?;
    let dport = field("dst_port")?;
    if it.next().is_some() {
        return Err(format!(
            "{} fields, expected 6 (direction,src,dst,protocol,src_port,dst_port)",
            line.split(',').count()
        ));
    }
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(format!(
            "src {src} and dst {dst} are of different address families"
        ));
    }
    let mut flow = Flow::new(direction, src, dst, protocol);
    if (has_ports(protocol) || is_icmp(protocol)) && sport.is_empty() != dport.is_empty() {
        return Err(format!(
            "give both {} or neither (neither: a non-first fragment, whose ports are unknown)",
            if has_ports(protocol) {
                "ports"
            } else {
                "ICMP type and code"
            }
        ));
    }
    if has_ports(protocol) {
        let port = |s: &str, what: &str| -> Result<Option<u16>, String> {
            if s.is_empty() {
                Ok(None)
            } else {
                s.parse()
                    .map(Some)
                    .map_err(|_| format!("{what} {:?} is not a port number (0..=65535)", clip(s)))
            }
        };
        flow.src_port = port(sport, "src_port")?;
        flow.dst_port = port(dport, "dst_port")?;
    } else if is_icmp(protocol) {
        let byte = |s: &str, what: &str| -> Result<Option<u8>, String> {
            if s.is_empty() {
                Ok(None)
            } else {
                s.parse().map(Some).map_err(|_| {
                    format!(
                        "{what} {:?}: for ICMP this column is the type/code (0..=255)",
                        clip(s)
                    )
                })
            }
        };
        flow.icmp_type = byte(sport, "src_port")?;
        flow.icmp_code = byte(dport, "dst_port")?;
    } else if !sport.is_empty() || !dport.is_empty() {
        return Err(format!(
            "protocol {protocol} has no ports: leave src_port and dst_port empty"
        ));
    }
    Ok(flow)
}

fn write_opt<W: Write>(out: &mut W, v: Option<&str>) -> std::io::Result<()> {
    match v {
        Some(s) => serde_json::to_writer(&mut *out, s).map_err(std::io::Error::from),
        None => out.write_all(b"null"),
    }
}

fn write_decision<W: Write>(out: &mut W, d: &Decision<'_>) -> std::io::Result<()> {
    out.write_all(b"{\"action\":\"")?;
    out.write_all(d.action.name().as_bytes())?;
    out.write_all(b"\",\"policy\":")?;
    write_opt(out, d.policy)?;
    out.write_all(b",\"sa\":")?;
    write_opt(out, d.sa)?;
    out.write_all(b"}\n")
}

/// A non-first fragment dropped as undecidable, and the policy that may cover it.
fn write_unresolved<W: Write>(out: &mut W, could_match: Option<&str>) -> std::io::Result<()> {
    out.write_all(
        b"{\"action\":\"discard\",\"policy\":null,\"sa\":null,\"drop\":\"fragment_unresolved\",\"could_match\":",
    )?;
    write_opt(out, could_match)?;
    out.write_all(b"}\n")
}

/// `ipsec policy lookup FILE --flows FLOWS.csv [--cache]`.
///
/// Lines are read as bytes, at most [`MAX_LINE`] of each kept: a longer line, one that
/// is not UTF-8 or one that does not parse is an error for that line alone. When the
/// reader of the output goes away the command stops reading flows.
pub(crate) fn lookup(policy: &Path, flows: &Path, cache: bool) -> Result<Outcome, CliError> {
    let spd = load_spd(policy)?;
    let shown = flows.display().to_string();
    let shown = clip(&shown);
    let input: Box<dyn Read> = if flows.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(flows)
                .map_err(|e| CliError::usage(format!("{shown}: cannot read: {e}")))?,
        )
    };
    let mut reader = BufReader::with_capacity(1 << 16, input);
    let mut out = Stdout::new();
    let mut cache = cache.then(|| SpdCache::new(&spd, 4096));
    let mut buf = Vec::with_capacity(MAX_LINE);
    let (mut lineno, mut flows_read, mut bad) = (0usize, 0usize, 0usize);
    let io_err = CliError::output;
    while !out.gone() {
        let got = read_line(&mut reader, &mut buf, MAX_LINE)
            .map_err(|e| CliError::usage(format!("{shown}: line {}: {e}", lineno + 1)))?;
        lineno += 1;
        let line = match got {
            LineRead::End => break,
            LineRead::TooLong { len } => {
                // A long comment is still a comment.
                if buf.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'#') {
                    continue;
                }
                Err(format!(
                    "{len} bytes long, longer than the {MAX_LINE}-byte limit of a flow line"
                ))
            }
            LineRead::Full => std::str::from_utf8(&buf).map_err(|e| {
                let at = e.valid_up_to();
                format!(
                    "not UTF-8 text (invalid byte {:#04x} at column {})",
                    buf[at],
                    at + 1
                )
            }),
        };
        let flow = match line {
            Ok(l) => {
                let l = l.trim();
                if l.is_empty() || l.starts_with('#') {
                    continue;
                }
                if flows_read == 0
                    && l.split(',')
                        .next()
                        .is_some_and(|f| f.trim().eq_ignore_ascii_case("direction"))
                {
                    continue;
                }
                parse_flow(l)
            }
            Err(e) => Err(e),
        };
        flows_read += 1;
        match flow {
            Ok(flow) => {
                let answer = match &mut cache {
                    Some(c) if !flow.ports_unknown() => FragmentDecision::Decided(c.lookup(&flow)),
                    _ => spd.lookup_as_packet(&flow),
                };
                match answer {
                    FragmentDecision::Unresolved { could_match } => {
                        write_unresolved(&mut out, could_match.and_then(|d| d.policy))
                    }
                    answer => {
                        write_decision(&mut out, &answer.decided().unwrap_or(Decision::NO_MATCH))
                    }
                }
                .map_err(io_err)?;
            }
            Err(e) => {
                bad += 1;
                out.write_all(b"{\"error\":").map_err(io_err)?;
                serde_json::to_writer(&mut out, &format!("line {lineno}: {e}"))
                    .map_err(|e| io_err(e.into()))?;
                out.write_all(b"}\n").map_err(io_err)?;
            }
        }
    }
    out.flush().map_err(io_err)?;
    if bad > 0 {
        Ok(Outcome::Failed(format!(
            "{bad} of {flows_read} flow line(s) could not be read"
        )))
    } else {
        Ok(Outcome::Ok)
    }
}

/// Reads a policy or cases file (at most 64 MiB) into memory that is wiped when
/// dropped (a policy file holds the SA keys).
fn read_text(path: &Path) -> Result<Zeroizing<String>, CliError> {
    read_text_file(path).map_err(CliError::usage)
}

/// A flow as JSON (ports or ICMP fields only when present).
pub(crate) fn flow_json(f: &Flow) -> Value {
    let mut v = json!({
        "direction": f.direction.name(),
        "src": f.src.to_string(),
        "dst": f.dst.to_string(),
        "protocol": protocol_name(Some(f.protocol)),
    });
    for (k, x) in [
        ("src_port", f.src_port),
        ("dst_port", f.dst_port),
        ("icmp_type", f.icmp_type.map(u16::from)),
        ("icmp_code", f.icmp_code.map(u16::from)),
    ] {
        if let Some(x) = x {
            v[k] = json!(x);
        }
    }
    v
}

/// `ipsec policy lint FILE [--json]`: every finding, load errors included (`invalid`).
/// Exit 1 when a finding has severity `error`, else 0.
pub(crate) fn lint(
    policy: &Path,
    json_out: bool,
    budget: Option<u64>,
) -> Result<Outcome, CliError> {
    let text = read_text(policy)?;
    let budget = budget.map_or(LintBudget::DEFAULT, LintBudget::with_total);
    let findings = lint_toml_with(&text, budget);
    let mut out = String::new();
    if json_out {
        for f in &findings {
            let v = json!({
                "code": f.code,
                "severity": f.severity.name(),
                "policy": f.policy,
                "message": clip_message(&f.message),
            });
            let _ = writeln!(out, "{v}");
        }
    } else {
        out = lint_human(&findings);
    }
    print_all(&out)?;
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    if errors > 0 {
        Ok(Outcome::Failed(format!(
            "{}: {errors} error finding(s)",
            clip(&policy.display().to_string())
        )))
    } else {
        Ok(Outcome::Ok)
    }
}

/// Writes `text` to standard output (a reader that went away is not an error: the
/// command carries on, see [`crate::output`]).
pub(crate) fn print_all(text: &str) -> Result<(), CliError> {
    let mut out = Stdout::new();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(CliError::output)
}

/// The human form of lint findings (also used by the demo); user text the messages
/// quote is [`clip_message`]d.
pub(crate) fn lint_human(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        let _ = writeln!(out, "{}", clip_message(&f.to_string()));
    }
    let count = |s| findings.iter().filter(|f| f.severity == s).count();
    let _ = writeln!(
        out,
        "{} error(s), {} warning(s), {} info",
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Info)
    );
    out
}

/// `ipsec policy firewall FILE [--json]`: the openings a firewall between the gateways
/// must have.
pub(crate) fn firewall(policy: &Path, json_out: bool) -> Result<Outcome, CliError> {
    let spd = load_spd(policy)?;
    let openings = spd.firewall_openings();
    let mut out = String::new();
    if json_out {
        for o in &openings {
            let v = json!({
                "from": o.from.to_string(),
                "to": o.to.to_string(),
                "protocol": o.protocol,
                "protocol_name": o.protocol_name,
                "port": o.port,
                "label": o.label(),
                "reason": o.reason,
            });
            let _ = writeln!(out, "{v}");
        }
    } else {
        out = firewall_human(&openings);
    }
    print_all(&out)?;
    Ok(Outcome::Ok)
}

/// The human form of firewall openings (also used by the demo).
pub(crate) fn firewall_human(openings: &[Opening]) -> String {
    let mut out = String::new();
    if openings.is_empty() {
        let _ = writeln!(
            out,
            "no tunnel-mode SAs: no gateway pair to open anything for"
        );
    }
    for o in openings {
        let _ = writeln!(out, "{o}  -- {}", o.reason);
    }
    out
}

/// `ipsec policy test FILE CASES [--json]`: exit 1 when a case fails, 2 when the cases
/// file is bad (every bad case is reported, one per line).
pub(crate) fn test(policy: &Path, cases: &Path, json_out: bool) -> Result<Outcome, CliError> {
    let spd = load_spd(policy)?;
    let text = read_text(cases)?;
    let shown = cases.display().to_string();
    let shown = clip(&shown);
    let report = spd.run_cases_all_errors(&text).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(|e| format!("{shown}: {e}")).collect();
        CliError::usage(lines.join("\n"))
    })?;
    let mut out = String::new();
    if json_out {
        for o in &report.outcomes {
            let v = json!({
                "name": o.name,
                "passed": o.passed,
                "flow": flow_json(&o.flow),
                "expected": o.expected.name(),
                "expected_policy": o.expected_policy,
                "action": o.action.name(),
                "policy": o.policy,
                "sa": o.sa,
                "message": o.message,
            });
            let _ = writeln!(out, "{v}");
        }
        let v = json!({
            "summary": true,
            "passed": report.passed(),
            "failed": report.failed(),
        });
        let _ = writeln!(out, "{v}");
    } else {
        for line in report.to_string().lines() {
            let _ = writeln!(out, "{}", clip_message(line));
        }
    }
    print_all(&out)?;
    if report.all_passed() {
        Ok(Outcome::Ok)
    } else {
        Ok(Outcome::Failed(format!(
            "{} of {} case(s) failed",
            report.failed(),
            report.outcomes.len()
        )))
    }
}

/// `ipsec policy explain FILE [--json]`: the boundary probes of every policy.
pub(crate) fn explain(policy: &Path, json_out: bool) -> Result<Outcome, CliError> {
    let spd = load_spd(policy)?;
    let probes = spd.probes();
    let mut out = Stdout::new();
    let io_err = CliError::output;
    let mut current: Option<&str> = None;
    for p in &probes {
        if json_out {
            let v = json!({
                "policy": p.policy,
                "selector": p.selector,
                "inside": p.inside,
                "description": p.description,
                "flow": flow_json(&p.flow),
                "action": p.action.name(),
                "hit": p.hit,
                "sa": p.sa,
            });
            writeln!(out, "{v}").map_err(io_err)?;
        } else {
            if current != Some(p.policy.as_str()) {
                writeln!(out, "policy {:?}:", p.policy).map_err(io_err)?;
                current = Some(&p.policy);
            }
            let side = if p.inside { "inside " } else { "outside" };
            let hit = match &p.hit {
                Some(h) if p.hits_self() => format!("itself ({h})"),
                Some(h) => format!("policy {h:?}"),
                None => "no policy (implicit discard)".into(),
            };
            writeln!(
                out,
                "  {side} {}: {} => {} by {hit}",
                p.description,
                flow_oneline(&p.flow),
                p.action
            )
            .map_err(io_err)?;
        }
    }
    out.flush().map_err(io_err)?;
    Ok(Outcome::Ok)
}

fn flow_oneline(f: &Flow) -> String {
    let p = protocol_name(Some(f.protocol));
    let dir = f.direction.name();
    match (f.src_port, f.dst_port, f.icmp_type, f.icmp_code) {
        (Some(s), Some(d), _, _) => format!("{dir} {}:{s} -> {}:{d} {p}", f.src, f.dst),
        (_, _, Some(t), Some(c)) => format!("{dir} {} -> {} {p} {t}/{c}", f.src, f.dst),
        _ => format!("{dir} {} -> {} {p}", f.src, f.dst),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_lines() {
        let f = parse_flow("inbound,10.1.0.5,10.0.0.10,tcp,50000,3389").unwrap();
        assert_eq!(f.direction, Direction::Inbound);
        assert_eq!((f.src_port, f.dst_port), (Some(50000), Some(3389)));
        let f = parse_flow("out, 10.0.0.1 , 10.1.0.1 , 6 ,, ").unwrap();
        assert_eq!((f.protocol, f.src_port, f.dst_port), (6, None, None));
        let f = parse_flow("out,10.0.0.1,10.1.0.1,icmp,8,0").unwrap();
        assert_eq!((f.icmp_type, f.icmp_code), (Some(8), Some(0)));
        let f = parse_flow("out,::1,::2,ESP,,").unwrap();
        assert_eq!(f.protocol, 50);
        for bad in [
            "sideways,10.0.0.1,10.0.0.2,tcp,1,2",
            "out,10.0.0.300,10.0.0.2,tcp,1,2",
            "out,10.0.0.1,::2,tcp,1,2",
            "out,10.0.0.1,10.0.0.2,tcpx,1,2",
            "out,10.0.0.1,10.0.0.2,any,1,2",
            "out,10.0.0.1,10.0.0.2,tcp,70000,2",
            "out,10.0.0.1,10.0.0.2,esp,1,2",
            "out,10.0.0.1,10.0.0.2,tcp,1",
            "out,10.0.0.1,10.0.0.2,tcp,1,2,3",
            "out,10.0.0.1,10.0.0.2,tcp,,2",
            "out,10.0.0.1,10.0.0.2,icmp,8,",
        ] {
            assert!(parse_flow(bad).is_err(), "{bad}");
        }
    }
}
