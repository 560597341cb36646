//! `ipsec demo`: the branch-office scenario end to end, driven by the policy file.
//!
//! The policy is `examples/branch-office.toml`: the `--policy FILE` given, else
//! `./examples/branch-office.toml` when run from the repository root, else the copy built
//! into the binary. It is the **head office** gateway's view (local = head office,
//! remote = a branch), with two tunnels: each distinct pair of SAs named by the PROTECT
//! policies (`sa = [outbound, inbound]`) is one tunnel to one branch, whose gateway is
//! the outbound SA's `tunnel_dst` and whose subnet is the policies' `remote`.
//!
//! # The branch gateways are the mirror image
//!
//! The file only describes the head office. Each branch gateway holds the **mirror**
//! of its tunnel, built here from the head office's `[[sa]]` tables:
//! * the head office's inbound SA (`b1-to-ho`) becomes the branch's **outbound** SA of the
//!   same name, SPI, cipher and key, with `tunnel_src` = the branch gateway and
//!   `tunnel_dst` = the head-office gateway (its replay window dropped, UDP ports swapped);
//! * the head office's outbound SA (`ho-to-b1`) becomes the branch's **inbound** SA
//!   (tunnel endpoints and sequence number dropped; the replay window of the head
//!   office's inbound SA of that tunnel).
//! * The branch's SPD is the head office's with `local` and `remote` swapped, so the
//!   branch's **outbound** decision for a packet is the head office's **inbound**
//!   decision for it: the demo asks the one SPD both questions (`lookup_packet` with
//!   `inbound` for the request at the branch, `outbound` for the reply at the head
//!   office) and uses the SA each answer names.
//!
//! For every administrators' flow the demo builds the real IPv4/TCP (or UDP) packet,
//! looks it up, and either sends it through the tunnel (branch encrypts with the SA the
//! SPD names, the head office decrypts with its peer SA and checks the inner packet
//! against that SA's policy, RFC 4301 §5.2; then the reply the other way) or drops it.
//! Before the flows it prints the lint findings (`Spd::lint`; an error finding fails the
//! demo) and the firewall openings (`Spd::firewall_openings`; UDP 500 and ESP both ways
//! per tunnel are expected). Then an attacker on the line replays and tampers with
//! packets, and the SA monitor shows every SA's counters. Last, the first branch's
//! tunnel is rekeyed under traffic on two live [`ipsec_core::Gateway`]s driven through
//! the control plane as a key manager drives them (make-before-break; see the `rekey`
//! submodule), with a second monitor that accounts for every packet across the old and
//! new SAs. Exit 0 only when every expectation held.

use crate::netpkt::{ipv4_l4, ipv4_l4_checksum_ok};
use crate::policy_cmd::{firewall_human, lint_human, spd_from_text};
use crate::{CliError, Outcome};
use bytes::BytesMut;
use ipsec_core::packet::{IPPROTO_ESP, IPPROTO_TCP, IPPROTO_UDP};
use ipsec_core::sa_file::{NamedSa, parse_sa_tables};
use ipsec_core::secret::{Zeroizing, toml_error, wipe_toml_table};
use ipsec_core::spd::{AddrSet, Severity};
use ipsec_core::{Action, Direction, DropReason, Error, Flow, SecurityAssociation, Spd};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

/// The example policy, built in so that `ipsec demo` works from any directory.
const BUILT_IN: &str = include_str!("../../examples/branch-office.toml");
const DEFAULT_PATH: &str = "examples/branch-office.toml";

mod rekey;

/// One tunnel of the head office: a branch.
#[derive(Clone)]
struct Tunnel {
    label: String,
    /// The head office's outbound SA (to the branch) and inbound SA (from it).
    out_sa: String,
    in_sa: String,
    hq_gw: IpAddr,
    branch_gw: IpAddr,
    /// The branch subnet (the policies' `remote`).
    remote: AddrSet,
}

/// One SA as one gateway holds it.
struct GwSa {
    gateway: String,
    name: String,
    sa: SecurityAssociation,
}

fn find(sas: &[GwSa], gateway: &str, name: &str) -> Option<usize> {
    sas.iter()
        .position(|g| g.gateway == gateway && g.name == name)
}

/// Two distinct SAs mutably.
fn pair_mut(sas: &mut [GwSa], i: usize, j: usize) -> (&mut GwSa, &mut GwSa) {
    assert_ne!(i, j, "two different SAs");
    if i < j {
        let (a, b) = sas.split_at_mut(j);
        (&mut a[i], &mut b[0])
    } else {
        let (a, b) = sas.split_at_mut(i);
        (&mut b[0], &mut a[j])
    }
}

fn cipher_label(sa: &SecurityAssociation) -> String {
    match sa.integrity() {
        Some(i) => format!("{}+{}", sa.cipher().name(), i.name()),
        None => sa.cipher().name().to_string(),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn v4(a: IpAddr) -> Option<Ipv4Addr> {
    match a {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

/// Encrypts `inner` with `out`, checks the wire form, decrypts with `inb`, checks it
/// came back. Returns the wire bytes.
fn through_tunnel(
    out: &mut SecurityAssociation,
    inb: &mut SecurityAssociation,
    inner: &[u8],
    payload: &[u8],
    gws: (IpAddr, IpAddr),
    now: Duration,
) -> Result<Vec<u8>, String> {
    let mut buf = BytesMut::from(inner);
    out.encrypt_bytes(&mut buf, now)
        .map_err(|e| format!("encrypt failed: {e}"))?;
    let wire = buf.to_vec();
    if wire.len() < 20 || wire[9] != IPPROTO_ESP {
        return Err("wire packet is not ESP".into());
    }
    let (Some(a), Some(b)) = (v4(gws.0), v4(gws.1)) else {
        return Err("the demo's gateways are IPv4".into());
    };
    if wire[12..16] != a.octets() || wire[16..20] != b.octets() {
        return Err("outer header does not carry the gateway addresses".into());
    }
    if contains(&wire, payload) {
        return Err("CLEARTEXT payload found in the wire bytes".into());
    }
    inb.decrypt_bytes(&mut buf, now)
        .map_err(|e| format!("decrypt failed: {e}"))?;
    if &buf[..] != inner {
        return Err("decrypted packet differs from the original".into());
    }
    if !ipv4_l4_checksum_ok(&buf) {
        return Err("decrypted packet has a bad checksum".into());
    }
    Ok(wire)
}

fn str_field<'a>(t: &'a toml::Table, key: &str) -> Option<&'a str> {
    t.get(key).and_then(toml::Value::as_str)
}

/// The tunnels of the head office, from its PROTECT policies and its SA tables.
fn tunnels(spd: &Spd, sa_tables: &[toml::Table]) -> Result<Vec<Tunnel>, String> {
    let mut out: Vec<Tunnel> = Vec::new();
    for p in spd.policies() {
        if p.action() != Action::Protect {
            continue;
        }
        let (Some(o), Some(i)) = (p.sa(Direction::Outbound), p.sa(Direction::Inbound)) else {
            continue;
        };
        if out.iter().any(|t| t.out_sa == o && t.in_sa == i) {
            continue;
        }
        let table = sa_tables
            .iter()
            .find(|t| str_field(t, "name") == Some(o))
            .ok_or_else(|| format!("sa {o:?}: no [[sa]] table"))?;
        let addr = |key: &str| -> Result<IpAddr, String> {
            str_field(table, key)
                .ok_or_else(|| format!("sa {o:?}: the demo needs {key} (a tunnel-mode SA)"))?
                .parse()
                .map_err(|e| format!("sa {o:?}: {key}: {e}"))
        };
        out.push(Tunnel {
            label: format!("branch{}", out.len() + 1),
            out_sa: o.to_string(),
            in_sa: i.to_string(),
            hq_gw: addr("tunnel_src")?,
            branch_gw: addr("tunnel_dst")?,
            remote: p.remote().clone(),
        });
    }
    if out.is_empty() {
        return Err("no PROTECT policy with an SA pair: nothing to demonstrate".into());
    }
    Ok(out)
}

/// The branch's SA tables: the mirror of the head office's (see the module docs).
fn mirror_tables(t: &Tunnel, sa_tables: &[toml::Table]) -> Result<Vec<toml::Table>, String> {
    let get = |name: &str| {
        sa_tables
            .iter()
            .find(|x| str_field(x, "name") == Some(name))
            .cloned()
            .ok_or_else(|| format!("sa {name:?}: no [[sa]] table"))
    };
    let swap_udp = |x: &mut toml::Table| {
        if let Some(toml::Value::Array(a)) = x.get_mut("udp_encap")
            && a.len() == 2
        {
            a.swap(0, 1);
        }
    };
    // Head office inbound -> branch outbound.
    let mut up = get(&t.in_sa)?;
    let window = up.remove("replay_window");
    up.insert("direction".into(), "outbound".into());
    up.insert("tunnel_src".into(), t.branch_gw.to_string().into());
    up.insert("tunnel_dst".into(), t.hq_gw.to_string().into());
    up.remove("seq");
    swap_udp(&mut up);
    // Head office outbound -> branch inbound.
    let mut down = get(&t.out_sa)?;
    down.insert("direction".into(), "inbound".into());
    down.remove("tunnel_src");
    down.remove("tunnel_dst");
    down.remove("seq");
    down.remove("outer_ttl");
    if let Some(w) = window {
        down.insert("replay_window".into(), w);
    }
    swap_udp(&mut down);
    Ok(vec![up, down])
}

fn create(gateway: &str, sas: Vec<NamedSa>, now: Duration) -> Result<Vec<GwSa>, CliError> {
    sas.into_iter()
        .map(|n| {
            let sa = SecurityAssociation::new(n.config, now)
                .map_err(|e| CliError::usage(format!("{gateway}: sa {:?}: {e}", n.name)))?;
            Ok(GwSa {
                gateway: gateway.to_string(),
                name: n.name,
                sa,
            })
        })
        .collect()
}

/// What the administrators expect of a flow.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Allowed: encrypted through the tunnel of the branch it comes from.
    Protect,
    /// Refused.
    Discard,
}

struct DemoFlow {
    name: String,
    branch: usize,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    sport: u16,
    dport: u16,
    expect: Expect,
}

fn host(net: &AddrSet, n: u32) -> Option<Ipv4Addr> {
    net.v4_ranges()
        .first()
        .map(|&(lo, _)| Ipv4Addr::from(lo + n))
}

/// The head office's LAN: the `local` of the first PROTECT policy.
fn hq_lan(spd: &Spd) -> Option<&AddrSet> {
    spd.policies()
        .iter()
        .find(|p| p.action() == Action::Protect)
        .map(|p| p.local())
}

fn demo_flows(tunnels: &[Tunnel]) -> Result<Vec<DemoFlow>, String> {
    // The head office's servers, as examples/branch-office.toml describes them.
    let (terminal, mail, print) = (
        Ipv4Addr::new(10, 0, 0, 10),
        Ipv4Addr::new(10, 0, 0, 20),
        Ipv4Addr::new(10, 0, 0, 30),
    );
    let mut flows = Vec::new();
    let mk = |name: &str, branch, src, dst, proto, dport: u16, expect| DemoFlow {
        name: name.to_string(),
        branch,
        src,
        dst,
        proto,
        sport: 49152 + dport % 1000,
        dport,
        expect,
    };
    for (b, t) in tunnels.iter().enumerate() {
        let h = |n| host(&t.remote, n).ok_or("a branch subnet has no IPv4 prefix");
        let (pc1, pc2, pc3) = (h(15)?, h(16)?, h(17)?);
        for (name, src, dst, port) in [
            ("terminal services (RDP)", pc1, terminal, 3389),
            ("Outlook (HTTPS)", pc1, mail, 443),
            ("Outlook (RPC endpoint mapper)", pc2, mail, 135),
            ("printing (SMB)", pc3, print, 445),
            ("printing (IPP)", pc3, print, 631),
            ("printing (raw 9100)", pc3, print, 9100),
        ] {
            flows.push(mk(name, b, src, dst, IPPROTO_TCP, port, Expect::Protect));
        }
        if b == 0 {
            flows.push(mk(
                "telnet",
                b,
                pc1,
                terminal,
                IPPROTO_TCP,
                23,
                Expect::Discard,
            ));
            flows.push(mk(
                "SMB from an unknown subnet",
                b,
                Ipv4Addr::new(172, 16, 5, 5),
                print,
                IPPROTO_TCP,
                445,
                Expect::Discard,
            ));
            flows.push(mk(
                "SMB to a non-print server",
                b,
                pc1,
                terminal,
                IPPROTO_TCP,
                445,
                Expect::Discard,
            ));
        } else {
            flows.push(mk(
                "DNS (UDP 53)",
                b,
                pc1,
                Ipv4Addr::from(u32::from(terminal) + 43),
                IPPROTO_UDP,
                53,
                Expect::Discard,
            ));
            flows.push(mk(
                "telnet",
                b,
                pc2,
                terminal,
                IPPROTO_TCP,
                23,
                Expect::Discard,
            ));
        }
    }
    Ok(flows)
}

/// `[[sa]]` tables that hold keys: their values are wiped when dropped.
struct WipedTables(Vec<toml::Table>);

impl Drop for WipedTables {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(wipe_toml_table);
    }
}

/// Runs the demonstration.
pub(crate) fn run(policy: Option<&Path>) -> Result<Outcome, CliError> {
    let (origin, text) = match policy {
        Some(p) => (
            crate::text::clip(&p.display().to_string()).into_owned(),
            // Wiped when dropped, as the tables parsed from it below: it holds the keys.
            crate::text::read_text_file(p).map_err(CliError::usage)?,
        ),
        None => match crate::text::read_text_file(Path::new(DEFAULT_PATH)) {
            Ok(t) => (DEFAULT_PATH.to_string(), t),
            Err(_) => (
                "built-in examples/branch-office.toml".to_string(),
                Zeroizing::new(BUILT_IN.to_string()),
            ),
        },
    };
    let usage = |e: String| CliError::usage(format!("{origin}: {e}"));
    let mut spd = spd_from_text(&origin, &text)?;
    let mut doc: toml::Table = toml::from_str(&text)
        .map_err(|e| toml_error(e, &text).to_string())
        .map_err(usage)?;
    let sa_tables = WipedTables(
        doc.get("sa")
            .and_then(toml::Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_table().cloned()).collect())
            .unwrap_or_default(),
    );
    // The policies (no secrets): the rekey scene installs them through the control plane.
    let policy_tables: Vec<toml::Table> = doc
        .get("policy")
        .and_then(toml::Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_table().cloned()).collect())
        .unwrap_or_default();
    wipe_toml_table(&mut doc);
    drop(doc);
    let tunnels = tunnels(&spd, &sa_tables.0).map_err(usage)?;
    let flows = demo_flows(&tunnels).map_err(usage)?;

    // Lint and firewall openings need the SAs: before they are taken out.
    let findings = spd.lint();
    let openings = spd.firewall_openings();
    let mut t = Duration::from_secs(1_780_000_000);
    let mut sas = create("head-office", spd.take_sas(), t)?;
    for tun in &tunnels {
        let (named, errors) = parse_sa_tables(mirror_tables(tun, &sa_tables.0).map_err(usage)?);
        if let Some(e) = errors.first() {
            return Err(usage(format!("mirrored SA for {}: {e}", tun.label)));
        }
        sas.extend(create(&tun.label, named, t)?);
    }

    let mut failures: Vec<String> = Vec::new();
    let mut out = String::new();
    let _ = writeln!(out, "Policy: {origin} (the head office gateway's view)");
    let _ = writeln!(
        out,
        "Head office {} behind gateway {}",
        hq_lan(&spd).map_or_else(String::new, ToString::to_string),
        tunnels[0].hq_gw
    );
    for tun in &tunnels {
        let _ = writeln!(
            out,
            "  <== leased line ==> {} {} behind gateway {}: SA {:?} out, {:?} in (the branch holds the mirror image)",
            tun.label, tun.remote, tun.branch_gw, tun.out_sa, tun.in_sa
        );
    }

    // (a) Lint, (b) firewall openings.
    let _ = writeln!(out, "\nLint (ipsec policy lint):");
    for l in lint_human(&findings).lines() {
        let _ = writeln!(out, "  {l}");
    }
    let lint_errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    if lint_errors > 0 {
        failures.push(format!("lint: {lint_errors} error finding(s)"));
    }
    let _ = writeln!(
        out,
        "\nFirewall openings between the gateways (ipsec policy firewall):"
    );
    for l in firewall_human(&openings).lines() {
        let _ = writeln!(out, "  {l}");
    }
    for tun in &tunnels {
        let has = |from, to, proto, port| {
            openings
                .iter()
                .any(|o| (o.from, o.to, o.protocol, o.port) == (from, to, proto, port))
        };
        if !(has(tun.hq_gw, tun.branch_gw, 17, Some(500))
            && has(tun.branch_gw, tun.hq_gw, 17, Some(500))
            && has(tun.hq_gw, tun.branch_gw, IPPROTO_ESP, None)
            && has(tun.branch_gw, tun.hq_gw, IPPROTO_ESP, None))
        {
            failures.push(format!(
                "firewall: UDP 500 and ESP both ways missing for {}",
                tun.label
            ));
        }
    }

    // (c) Per-flow decisions.
    let _ = writeln!(
        out,
        "\nPer-flow decisions (looked up in the SPD; allowed flows encrypted at the branch, decrypted at the head office, reply the other way):"
    );
    let _ = writeln!(
        out,
        "{:<8} {:<30} {:<40} {:<8} {:<21} {:<9} RESULT",
        "FROM", "FLOW", "PACKET", "ACTION", "POLICY", "SA"
    );
    let mut captured: Option<Vec<u8>> = None;
    for (n, f) in flows.iter().enumerate() {
        let tun = &tunnels[f.branch];
        let proto = if f.proto == IPPROTO_TCP { "tcp" } else { "udp" };
        let desc = format!("{}:{} -> {}:{}/{proto}", f.src, f.sport, f.dst, f.dport);
        t += Duration::from_millis(10);
        let payload = format!("{} request #{n}: confidential branch data", f.name);
        let req = ipv4_l4(
            f.proto,
            (f.src, f.sport),
            (f.dst, f.dport),
            100 + n as u16,
            payload.as_bytes(),
        );
        // The branch's outbound decision = the head office's inbound one (mirror SPD).
        let d = match spd.lookup_packet(Direction::Inbound, &req) {
            Ok(d) => d,
            Err(e) => {
                failures.push(format!("flow {:?}: lookup: {e:?}", f.name));
                continue;
            }
        };
        let action = d.action.name().to_ascii_uppercase();
        let policy = d.policy.unwrap_or("(none)");
        let sa_name = d.sa.unwrap_or("-");
        let result: Result<String, String> = match (f.expect, d.action) {
            (Expect::Protect, Action::Protect) if d.sa != Some(tun.in_sa.as_str()) => Err(format!(
                "SPD names SA {sa_name}, expected {} for {}",
                tun.in_sa, tun.label
            )),
            (Expect::Protect, Action::Protect) => {
                let reply_payload = format!("{} reply #{n}: confidential head-office data", f.name);
                let rep = ipv4_l4(
                    f.proto,
                    (f.dst, f.dport),
                    (f.src, f.sport),
                    200 + n as u16,
                    reply_payload.as_bytes(),
                );
                let back_d = spd.lookup_packet(Direction::Outbound, &rep);
                let sa_in = d.sa.unwrap_or_default();
                let there = match (
                    find(&sas, &tun.label, sa_in),
                    find(&sas, "head-office", sa_in),
                ) {
                    (Some(i), Some(j)) => {
                        let (a, b) = pair_mut(&mut sas, i, j);
                        through_tunnel(
                            &mut a.sa,
                            &mut b.sa,
                            &req,
                            payload.as_bytes(),
                            (tun.branch_gw, tun.hq_gw),
                            t,
                        )
                    }
                    _ => Err(format!("SA {sa_in} missing on a gateway")),
                };
                let selectors_ok = Flow::from_packet(Direction::Inbound, &req)
                    .is_ok_and(|fl| spd.check_inbound(sa_in, &fl));
                let back = match back_d {
                    Ok(bd)
                        if bd.action == Action::Protect && bd.sa == Some(tun.out_sa.as_str()) =>
                    {
                        match (
                            find(&sas, "head-office", &tun.out_sa),
                            find(&sas, &tun.label, &tun.out_sa),
                        ) {
                            (Some(i), Some(j)) => {
                                let (a, b) = pair_mut(&mut sas, i, j);
                                through_tunnel(
                                    &mut a.sa,
                                    &mut b.sa,
                                    &rep,
                                    reply_payload.as_bytes(),
                                    (tun.hq_gw, tun.branch_gw),
                                    t,
                                )
                                .map(|_| ())
                            }
                            _ => Err(format!("SA {} missing on a gateway", tun.out_sa)),
                        }
                    }
                    Ok(bd) => Err(format!(
                        "the reply got {} (SA {}), expected protect with {}",
                        bd.action,
                        bd.sa.unwrap_or("none"),
                        tun.out_sa
                    )),
                    Err(e) => Err(format!("reply lookup: {e:?}")),
                };
                match (there, back, selectors_ok) {
                    (Ok(wire), Ok(()), true) => {
                        if f.name.starts_with("terminal") && f.branch == 0 {
                            captured.get_or_insert(wire.clone());
                        }
                        Ok(format!(
                            "ok: {} B -> {} B ESP, no cleartext on the wire, decrypted equal, inner packet matches the SA's policy; reply via {}",
                            req.len(),
                            wire.len(),
                            tun.out_sa
                        ))
                    }
                    (Err(e), _, _) => Err(format!("request: {e}")),
                    (_, Err(e), _) => Err(format!("reply: {e}")),
                    (_, _, false) => Err(format!(
                        "inner packet does not match the policies of SA {sa_in}"
                    )),
                }
            }
            (Expect::Discard, Action::Discard) => {
                let flow = Flow::from_packet(Direction::Inbound, &req).ok();
                if flow.is_some_and(|fl| spd.inbound_cleartext_allowed(&fl)) {
                    Err("the head office would accept it in the clear".into())
                } else {
                    Ok("refused: dropped at the branch gateway, nothing sent (and the head office drops it in the clear)".into())
                }
            }
            (want, got) => Err(format!(
                "SPD said {got}, expected {}",
                if want == Expect::Protect {
                    "protect"
                } else {
                    "discard"
                }
            )),
        };
        let line = match &result {
            Ok(m) => m.clone(),
            Err(m) => {
                failures.push(format!("flow {:?} from {}: {m}", f.name, tun.label));
                format!("FAILED: {m}")
            }
        };
        let _ = writeln!(
            out,
            "{:<8} {:<30} {desc:<40} {action:<8} {policy:<21} {sa_name:<9} {line}",
            tun.label, f.name
        );
    }

    // Attacks on the first branch's tunnel towards the head office (the SA monitor, (d), follows).
    let tun = &tunnels[0];
    let _ = writeln!(
        out,
        "\nAttacker on {}'s leased line (SA {}):",
        tun.label, tun.in_sa
    );
    let mut expect = |ok: bool, what: &str, msg: String, out: &mut String| {
        let _ = writeln!(out, "  {what:<52} {msg}");
        if !ok {
            failures.push(format!("{what}: {msg}"));
        }
    };
    let (Some(bo), Some(hi)) = (
        find(&sas, &tun.label, &tun.in_sa),
        find(&sas, "head-office", &tun.in_sa),
    ) else {
        return Err(CliError::failure(format!("SA {} missing", tun.in_sa)));
    };
    match captured {
        Some(wire) => {
            t += Duration::from_millis(10);
            let mut buf = BytesMut::from(&wire[..]);
            let r = sas[hi].sa.decrypt_bytes(&mut buf, t);
            let ok = matches!(r, Err(Error::Replayed { .. }));
            let msg = match r {
                Err(e) => format!("dropped ({}): {e}", e.drop_reason()),
                Ok(()) => "ACCEPTED (replay protection failed)".into(),
            };
            expect(ok, "replays a captured RDP packet", msg, &mut out);
        }
        None => expect(false, "replay", "no packet was captured".into(), &mut out),
    }
    if let Some(f) = flows
        .iter()
        .find(|f| f.branch == 0 && f.name.starts_with("Outlook"))
    {
        t += Duration::from_millis(10);
        let payload = b"Outlook: quarterly figures attached";
        let req = ipv4_l4(
            IPPROTO_TCP,
            (f.src, f.sport),
            (f.dst, f.dport),
            400,
            payload,
        );
        let mut genuine = BytesMut::from(&req[..]);
        if let Err(e) = sas[bo].sa.encrypt_bytes(&mut genuine, t) {
            expect(
                false,
                "encrypt for the tamper test",
                e.to_string(),
                &mut out,
            );
        } else {
            let mut forged = genuine.clone();
            let at = forged.len() - 24; // inside the encrypted payload
            forged[at] ^= 0x01;
            let r = sas[hi].sa.decrypt_bytes(&mut forged, t);
            let ok = matches!(r, Err(Error::AuthenticationFailed));
            let msg = match r {
                Err(e) => format!("dropped ({}): {e}", e.drop_reason()),
                Ok(()) => "ACCEPTED (integrity protection failed)".into(),
            };
            expect(
                ok,
                "flips one bit of an Outlook packet in flight",
                msg,
                &mut out,
            );
            let r = sas[hi].sa.decrypt_bytes(&mut genuine, t);
            let ok = r.is_ok() && genuine[..] == req[..];
            let msg = match r {
                Ok(()) if ok => "accepted: the forgery did not advance the replay window".into(),
                Ok(()) => "decrypted to different bytes".into(),
                Err(e) => format!("dropped ({}): {e}", e.drop_reason()),
            };
            expect(
                ok,
                "the genuine packet arrives after the forgery",
                msg,
                &mut out,
            );
        }
    }
    let hq_in = sas[hi].sa.stats();
    let counted =
        hq_in.dropped(DropReason::Replay) == 1 && hq_in.dropped(DropReason::AuthFailed) == 1;
    expect(
        counted,
        &format!("head-office counters for {}", tun.in_sa),
        format!(
            "replay={} auth_failed={} (expected 1 and 1)",
            hq_in.dropped(DropReason::Replay),
            hq_in.dropped(DropReason::AuthFailed)
        ),
        &mut out,
    );

    // The SA monitor.
    let _ = writeln!(out, "\nSA monitor:");
    let _ = writeln!(
        out,
        "{:<12} {:<10} {:<10} {:<8} {:<20} {:>7} {:>7}  DROPS",
        "GATEWAY", "SA", "SPI", "DIR", "CIPHER", "PACKETS", "BYTES"
    );
    for g in &sas {
        let s = g.sa.stats();
        let drops: Vec<String> = s
            .drops()
            .filter(|&(_, n)| n > 0)
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        let _ = writeln!(
            out,
            "{:<12} {:<10} {:<10} {:<8} {:<20} {:>7} {:>7}  {}",
            g.gateway,
            g.name,
            format!("{:#010x}", g.sa.spi()),
            g.sa.direction().name(),
            cipher_label(&g.sa),
            s.packets,
            s.bytes,
            if drops.is_empty() {
                "none".to_string()
            } else {
                drops.join(" ")
            }
        );
    }

    // (e) Rekeying under traffic, on live gateways (the first branch's tunnel).
    match flows
        .iter()
        .find(|f| f.branch == 0 && f.expect == Expect::Protect)
    {
        Some(f) => rekey::run(
            &tunnels[0],
            f,
            &sa_tables.0,
            &policy_tables,
            &mut t,
            &mut out,
            &mut failures,
        ),
        None => failures.push("rekey scene: no allowed flow from the first branch".into()),
    }

    if failures.is_empty() {
        let _ = writeln!(out, "\nAll expectations held.");
    }
    crate::policy_cmd::print_all(&out)?;
    if failures.is_empty() {
        Ok(Outcome::Ok)
    } else {
        Ok(Outcome::Failed(format!(
            "{} expectation(s) did not hold: {}",
            failures.len(),
            failures.join("; ")
        )))
    }
}
