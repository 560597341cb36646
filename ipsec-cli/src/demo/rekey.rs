//! The demo's last scene: rekeying under traffic, make-before-break, on two live
//! [`Gateway`]s driven through the control plane (`ipsec_core::control`) as a key manager
//! (an IKE daemon) drives them.
//!
//! 1. **Bring-up.** The head-office gateway and the first branch's gateway start with a
//!    deny-all only; the key manager adds the tunnel's SA pair on each (`add_sa`, the
//!    branch holding the mirror image, see the parent module) and installs the tunnel's
//!    PROTECT policies before the deny-all (`install_policy`; the branch gets them with
//!    `local`/`remote` swapped). The head office's outbound SA is given a soft lifetime of
//!    [`SOFT_PACKETS`] packets with jitter 0, so that it fires at the same packet on every
//!    run; the scene sets its SAs' lifetimes itself (those of the file are left out).
//! 2. **Steady traffic** (an RDP session: one packet each way per tick, each delivered at
//!    once) until `Gateway::poll_event` reports `SaEvent::Rekey` for that SA.
//! 3. While the new pair is negotiated, [`LATE`] more ticks go out under the old SAs and
//!    stay on the line.
//! 4. **Make-before-break** for each direction: the receiver installs the new inbound SA
//!    next to the old one (`rekey_sa`), then the sender installs the new outbound SA,
//!    which moves its policies' traffic in the same call. New SPIs and keys: the SPI is
//!    the old one plus 0x100 per rekey, the keys are derived from the old ones with
//!    SHA-256 (a real key manager gets SPIs from `allocate_spi` and keys from IKE's
//!    KEYMAT; the demo derives them so that its output is the same on every run).
//! 5. Traffic under the new SAs; then the late packets arrive and the old inbound SAs
//!    accept them; then the key manager deletes the four old SAs (`delete_sa`, which
//!    returns their final counters) and traffic goes on under the new ones.
//! 6. **Monitor**: every SA of the tunnel, old and new, on both gateways, and per
//!    direction the packets sent and received across old and new SA: the scene fails
//!    unless they are equal to what it sent, with no drop anywhere.

use super::{DemoFlow, Tunnel, WipedTables, mirror_tables, str_field};
use crate::netpkt::ipv4_l4;
use ipsec_core::gateway::{Inbound, Outbound};
use ipsec_core::sa_file::{decode_hex, parse_sa_tables};
use ipsec_core::secret::wipe_toml_value;
use ipsec_core::{Gateway, Lifetime, LifetimeLimit, PacketBuf, SaConfig, SaEvent, SaStats, Spd};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::time::Duration;

/// The soft packet limit of the head office's outbound SA: the rekey event comes with
/// this packet.
pub(super) const SOFT_PACKETS: u64 = 8;
/// Ticks sent under the old SAs while the rekey is negotiated, delivered after it.
const LATE: u32 = 2;
/// Ticks under the new SAs before the late packets arrive, and again after the old SAs
/// are deleted.
const AFTER: u32 = 3;
/// The scene's final policy on both gateways.
const DENY: &str = "deny-all";
/// Time between ticks.
const TICK: Duration = Duration::from_millis(10);

/// `[[sa]]` keys the scene leaves out: it sets the lifetimes, and a new SA starts at
/// sequence number 0.
const NOT_INHERITED: [&str; 4] = [
    "seq",
    "soft_lifetime",
    "hard_lifetime",
    "soft_lifetime_jitter",
];

/// A packet on the leased line.
struct Sent {
    /// 0: branch -> head office, 1: head office -> branch.
    dir: usize,
    inner: Vec<u8>,
    wire: Vec<u8>,
}

/// The two gateways and what the scene sent and saw delivered, per direction.
struct Scene {
    hq: Gateway,
    br: Gateway,
    flow: (std::net::Ipv4Addr, u16, std::net::Ipv4Addr, u16),
    tick: u32,
    sent: [u64; 2],
    received: [u64; 2],
}

impl Scene {
    /// One tick: a request from the branch PC and a reply from the server, each encrypted
    /// by its sender's gateway. Returns them with the outbound SAs that encrypted them.
    fn tick(&mut self, now: Duration) -> Result<[(Sent, String); 2], String> {
        self.tick += 1;
        let (pc, sport, server, dport) = self.flow;
        let n = self.tick;
        let req = ipv4_l4(
            ipsec_core::packet::IPPROTO_TCP,
            (pc, sport),
            (server, dport),
            n as u16,
            format!("RDP input #{n} from the branch").as_bytes(),
        );
        let rep = ipv4_l4(
            ipsec_core::packet::IPPROTO_TCP,
            (server, dport),
            (pc, sport),
            n as u16,
            format!("RDP screen update #{n} from the terminal server").as_bytes(),
        );
        let (up, up_sa) =
            send(&mut self.br, &req, now).map_err(|e| format!("tick {n}: branch: {e}"))?;
        let (down, down_sa) =
            send(&mut self.hq, &rep, now).map_err(|e| format!("tick {n}: head office: {e}"))?;
        self.sent[0] += 1;
        self.sent[1] += 1;
        Ok([
            (
                Sent {
                    dir: 0,
                    inner: req,
                    wire: up,
                },
                up_sa,
            ),
            (
                Sent {
                    dir: 1,
                    inner: rep,
                    wire: down,
                },
                down_sa,
            ),
        ])
    }

    /// Delivers `p` to its receiving gateway: the SA that decrypted it.
    fn deliver(&mut self, p: &Sent, now: Duration) -> Result<String, String> {
        let gw = if p.dir == 0 {
            &mut self.hq
        } else {
            &mut self.br
        };
        let mut buf = p.wire.clone();
        let len = buf.len();
        let mut pkt = PacketBuf::new(&mut buf, 0, len).map_err(|e| e.to_string())?;
        let sa = match gw.inbound(&mut pkt, now) {
            Ok(Inbound::Decrypted { sa, .. }) => sa.to_owned(),
            Ok(other) => return Err(format!("not decrypted: {other:?}")),
            Err(e) => return Err(format!("dropped ({}): {e}", e.drop_reason())),
        };
        if pkt.data() != p.inner.as_slice() {
            return Err(format!("SA {sa} decrypted different bytes"));
        }
        self.received[p.dir] += 1;
        Ok(sa)
    }

    /// `ticks` ticks, each packet delivered at once; checks the SAs that carried them.
    fn steady(&mut self, ticks: u32, t: &mut Duration, sas: [&str; 4]) -> Result<(), String> {
        for _ in 0..ticks {
            *t += TICK;
            let [(up, up_sa), (down, down_sa)] = self.tick(*t)?;
            let got = [
                up_sa,
                self.deliver(&up, *t)?,
                down_sa,
                self.deliver(&down, *t)?,
            ];
            if got != sas {
                return Err(format!(
                    "tick {}: carried by {got:?}, expected {sas:?}",
                    self.tick
                ));
            }
        }
        Ok(())
    }
}

/// Encrypts `inner` through `gw`: the wire packet and the SA that encrypted it.
fn send(gw: &mut Gateway, inner: &[u8], now: Duration) -> Result<(Vec<u8>, String), String> {
    let head = gw.max_headroom();
    let mut buf = vec![0u8; head + inner.len() + gw.tailroom_for(inner.len())];
    buf[head..head + inner.len()].copy_from_slice(inner);
    let mut pkt = PacketBuf::new(&mut buf, head, inner.len()).map_err(|e| e.to_string())?;
    let sa = match gw.outbound(&mut pkt, now) {
        Ok(Outbound::Protected { sa, .. }) => sa.to_owned(),
        Ok(other) => return Err(format!("not protected: {other:?}")),
        Err(e) => return Err(format!("dropped ({}): {e}", e.drop_reason())),
    };
    Ok((pkt.data().to_vec(), sa))
}

/// The policy as the branch holds it: local and remote swapped (addresses and ports),
/// a one-way direction turned round, the SA pair `[outbound, inbound]` swapped.
fn mirror_policy(p: &toml::Table) -> toml::Table {
    let mut m = p.clone();
    for (a, b) in [("local", "remote"), ("local_port", "remote_port")] {
        let (va, vb) = (m.remove(a), m.remove(b));
        if let Some(v) = va {
            m.insert(b.into(), v);
        }
        if let Some(v) = vb {
            m.insert(a.into(), v);
        }
    }
    let turned = match str_field(&m, "direction") {
        Some("outbound") => Some("inbound"),
        Some("inbound") => Some("outbound"),
        _ => None,
    };
    if let Some(d) = turned {
        m.insert("direction".into(), d.into());
    }
    if let Some(toml::Value::Array(a)) = m.get_mut("sa")
        && a.len() == 2
    {
        a.swap(0, 1);
    }
    m
}

/// `len` fresh key bytes for the SA `name`, derived from the key it replaces:
/// SHA-256(label || name || old key || block counter), block after block.
fn derive_key(old: &[u8], name: &str) -> ipsec_core::secret::Zeroizing<Vec<u8>> {
    let mut out = ipsec_core::secret::Zeroizing::new(Vec::with_capacity(old.len()));
    let mut block = 0u8;
    while out.len() < old.len() {
        block = block.wrapping_add(1);
        let d = Sha256::new()
            .chain_update(b"ipsec demo rekey\0")
            .chain_update(name.as_bytes())
            .chain_update(b"\0")
            .chain_update(old)
            .chain_update([block])
            .finalize();
        let take = (old.len() - out.len()).min(d.len());
        out.extend_from_slice(&d[..take]);
    }
    out
}

/// The head office's `[[sa]]` table of the successor of `old`: called `name`, with
/// `spi` and keys derived from the old ones; sequence number and lifetimes not carried.
fn successor_table(old: &toml::Table, name: &str, spi: u32) -> Result<toml::Table, String> {
    let mut t = old.clone();
    for k in NOT_INHERITED {
        t.remove(k);
    }
    t.insert("name".into(), name.into());
    t.insert("spi".into(), i64::from(spi).into());
    for field in ["key", "integrity_key"] {
        let Some(hex) = str_field(old, field) else {
            continue;
        };
        let bytes = decode_hex(field, hex).map_err(|e| format!("sa {name:?}: {e}"))?;
        let fresh = derive_key(&bytes, name);
        // Sized up front: no outgrown copy of the key is left behind.
        let mut s = String::with_capacity(2 * fresh.len());
        for b in fresh.iter() {
            let _ = write!(s, "{b:02x}");
        }
        if let Some(mut was) = t.insert(field.into(), toml::Value::String(s)) {
            wipe_toml_value(&mut was);
        }
    }
    Ok(t)
}

/// Parses `tables` into SA configurations, in order.
fn configs(tables: Vec<toml::Table>) -> Result<Vec<(String, SaConfig)>, String> {
    let (named, errors) = parse_sa_tables(tables);
    if let Some(e) = errors.first() {
        return Err(e.to_string());
    }
    Ok(named.into_iter().map(|n| (n.name, n.config)).collect())
}

/// Turns a refused control call into the scene's error: who, what and why.
fn ctl(who: &str, what: String) -> impl FnOnce(ipsec_core::ControlError) -> String + '_ {
    move |e| format!("{who}: {what}: {e}")
}

/// A line of the SA monitor.
fn monitor_row(
    out: &mut String,
    gateway: &str,
    name: &str,
    spi: u32,
    dir: &str,
    state: &str,
    s: &SaStats,
) {
    let drops: Vec<String> = s
        .drops()
        .filter(|&(_, n)| n > 0)
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    let _ = writeln!(
        out,
        "{gateway:<12} {name:<12} {:<10} {dir:<8} {state:<8} {:>7} {:>7}  {}",
        format!("{spi:#010x}"),
        s.packets,
        s.bytes,
        if drops.is_empty() {
            "none".to_string()
        } else {
            drops.join(" ")
        }
    );
}

/// Runs the scene on the tunnel `tun` (its flow `flow`), appending to `out`. Broken
/// expectations go into `failures`; a step that fails ends the scene.
pub(super) fn run(
    tun: &Tunnel,
    flow: &DemoFlow,
    sa_tables: &[toml::Table],
    policy_tables: &[toml::Table],
    t: &mut Duration,
    out: &mut String,
    failures: &mut Vec<String>,
) {
    let _ = writeln!(
        out,
        "\nRekeying under traffic ({}'s tunnel on two live gateways, driven by a key manager through the control plane):",
        tun.label
    );
    if let Err(e) = scene(tun, flow, sa_tables, policy_tables, t, out, failures) {
        let _ = writeln!(out, "  FAILED: {e}");
        failures.push(format!("rekey scene: {e}"));
    }
}

fn scene(
    tun: &Tunnel,
    flow: &DemoFlow,
    sa_tables: &[toml::Table],
    policy_tables: &[toml::Table],
    t: &mut Duration,
    out: &mut String,
    failures: &mut Vec<String>,
) -> Result<(), String> {
    let (o, i) = (tun.out_sa.as_str(), tun.in_sa.as_str());
    let br_name = tun.label.as_str();

    // 1. Bring-up.
    let deny = format!("[[policy]]\nname = \"{DENY}\"\naction = \"discard\"\n");
    let empty = || {
        Spd::from_toml(&deny)
            .and_then(|spd| Gateway::new(spd, *t))
            .map_err(|e| e.to_string())
    };
    let (mut hq, mut br) = (empty()?, empty()?);
    let table = |name: &str| {
        sa_tables
            .iter()
            .find(|x| str_field(x, "name") == Some(name))
            .map(|x| {
                let mut x = x.clone();
                for k in NOT_INHERITED {
                    x.remove(k);
                }
                x
            })
            .ok_or_else(|| format!("sa {name:?}: no [[sa]] table"))
    };
    let hq_tables = WipedTables(vec![table(o)?, table(i)?]);
    let br_tables = WipedTables(mirror_tables(tun, &hq_tables.0)?);
    for (name, mut cfg) in configs(hq_tables.0.clone())? {
        if name == o {
            cfg.soft_lifetime(Lifetime::NONE.with_packets(SOFT_PACKETS))
                .soft_lifetime_jitter(0);
        }
        hq.add_sa(&name, cfg, *t)
            .map_err(ctl("head office", format!("add_sa {name}")))?;
    }
    for (name, cfg) in configs(br_tables.0.clone())? {
        br.add_sa(&name, cfg, *t)
            .map_err(ctl(br_name, format!("add_sa {name}")))?;
    }
    let pair = toml::Value::Array(vec![o.into(), i.into()]);
    let mut installed = 0;
    for p in policy_tables
        .iter()
        .filter(|p| str_field(p, "action") == Some("protect") && p.get("sa") == Some(&pair))
    {
        let name = str_field(p, "name").unwrap_or("?");
        let text =
            |p: &toml::Table| toml::to_string(p).map_err(|e| format!("policy {name:?}: {e}"));
        hq.install_policy(&text(p)?, Some(DENY))
            .map_err(ctl("head office", format!("install_policy {name}")))?;
        br.install_policy(&text(&mirror_policy(p))?, Some(DENY))
            .map_err(ctl(br_name, format!("install_policy {name}")))?;
        installed += 1;
    }
    let _ = writeln!(
        out,
        "  bring-up    on each gateway: add_sa {o:?} and {i:?} (the head office's {o:?} with a soft lifetime of {SOFT_PACKETS} packets, jitter 0), install_policy x{installed} before {DENY:?}"
    );

    // 2. Steady traffic until the soft lifetime fires.
    let mut scene = Scene {
        hq,
        br,
        flow: (flow.src, flow.sport, flow.dst, flow.dport),
        tick: 0,
        sent: [0; 2],
        received: [0; 2],
    };
    let mut event = None;
    while event.is_none() && u64::from(scene.tick) < 3 * SOFT_PACKETS {
        scene.steady(1, t, [i, i, o, o])?;
        if let Some((name, ev)) = scene.br.poll_event(*t) {
            return Err(format!("{br_name}: unexpected event {ev:?} for SA {name}"));
        }
        if let Some((name, ev)) = scene.hq.poll_event(*t) {
            event = Some((name.to_owned(), ev));
        }
    }
    let rekey_tick = scene.tick;
    match event {
        Some((name, SaEvent::Rekey(LifetimeLimit::Packets))) if name == o => {}
        Some((name, ev)) => {
            return Err(format!(
                "head office: event {ev:?} for SA {name}, expected a rekey of {o}"
            ));
        }
        None => return Err(format!("no rekey event for {o} after {rekey_tick} ticks")),
    }
    let _ = writeln!(
        out,
        "  {:<12}RDP both ways ({i:?} up, {o:?} down), every packet delivered at once",
        format!("ticks 1-{rekey_tick}")
    );
    let _ = writeln!(
        out,
        "  event       head office: poll_event -> Rekey (soft packet limit) for SA {o:?} after {} packets sent",
        scene.hq.sa(o).map_or(0, |s| s.stats().packets)
    );

    // 3. Packets sent under the old SAs while the new pair is negotiated.
    let mut late = Vec::new();
    for _ in 0..LATE {
        *t += TICK;
        for (p, via) in scene.tick(*t)? {
            let want = if p.dir == 0 { i } else { o };
            if via != want {
                return Err(format!(
                    "tick {}: sent by {via}, expected {want}",
                    scene.tick
                ));
            }
            late.push(p);
        }
    }
    let _ = writeln!(
        out,
        "  {:<12}sent under the old SAs while the key manager negotiates: {} packets still on the line",
        format!("ticks {}-{}", rekey_tick + 1, scene.tick),
        late.len()
    );

    // 4. Make-before-break, each direction: the receiver's inbound SA first.
    let (no, ni) = (format!("{o}-2"), format!("{i}-2"));
    let spi_of = |gw: &Gateway, name: &str| {
        gw.sa(name)
            .map(|s| s.spi().wrapping_add(0x100))
            .ok_or_else(|| format!("SA {name} missing"))
    };
    let (so, si) = (spi_of(&scene.hq, o)?, spi_of(&scene.hq, i)?);
    let new_hq = WipedTables(vec![
        successor_table(&hq_tables.0[0], &no, so)?,
        successor_table(&hq_tables.0[1], &ni, si)?,
    ]);
    let renamed = Tunnel {
        out_sa: no.clone(),
        in_sa: ni.clone(),
        ..tun.clone()
    };
    let new_br = WipedTables(mirror_tables(&renamed, &new_hq.0)?);
    let mut hq_cfg = configs(new_hq.0.clone())?.into_iter().map(|(_, c)| c);
    let mut br_cfg = configs(new_br.0.clone())?.into_iter().map(|(_, c)| c);
    let (hq_out, hq_in) = (hq_cfg.next(), hq_cfg.next());
    let (br_out, br_in) = (br_cfg.next(), br_cfg.next());
    let (Some(hq_out), Some(hq_in), Some(br_out), Some(br_in)) = (hq_out, hq_in, br_out, br_in)
    else {
        return Err("the new SA pair did not parse".into());
    };
    scene
        .br
        .rekey_sa(o, &no, br_in, *t)
        .map_err(ctl(br_name, format!("rekey_sa {o} -> {no}")))?;
    let _ = writeln!(
        out,
        "  rekey 1/4   {br_name}: rekey_sa({o:?} -> {no:?}, inbound, SPI {so:#010x}): both accept"
    );
    scene
        .hq
        .rekey_sa(i, &ni, hq_in, *t)
        .map_err(ctl("head office", format!("rekey_sa {i} -> {ni}")))?;
    let _ = writeln!(
        out,
        "  rekey 2/4   head office: rekey_sa({i:?} -> {ni:?}, inbound, SPI {si:#010x}): both accept"
    );
    scene
        .hq
        .rekey_sa(o, &no, hq_out, *t)
        .map_err(ctl("head office", format!("rekey_sa {o} -> {no}")))?;
    let _ = writeln!(
        out,
        "  rekey 3/4   head office: rekey_sa({o:?} -> {no:?}, outbound): its policies send through {no:?} from the next packet"
    );
    scene
        .br
        .rekey_sa(i, &ni, br_out, *t)
        .map_err(ctl(br_name, format!("rekey_sa {i} -> {ni}")))?;
    let _ = writeln!(
        out,
        "  rekey 4/4   {br_name}: rekey_sa({i:?} -> {ni:?}, outbound): its policies send through {ni:?} from the next packet"
    );

    // 5. New SAs carry the traffic; the late packets arrive; the old SAs go.
    let first_new = scene.tick + 1;
    scene.steady(AFTER, t, [&ni, &ni, &no, &no])?;
    let _ = writeln!(
        out,
        "  {:<12}RDP both ways under the new SAs ({ni:?} up, {no:?} down)",
        format!("ticks {first_new}-{}", scene.tick)
    );
    for p in &late {
        let via = scene.deliver(p, *t)?;
        let want = if p.dir == 0 { i } else { o };
        if via != want {
            return Err(format!(
                "a late packet was decrypted by {via}, expected {want}"
            ));
        }
    }
    let _ = writeln!(
        out,
        "  late        the {} packets of ticks {}-{} arrive: accepted by the old inbound SAs ({i:?} at the head office, {o:?} at {br_name})",
        late.len(),
        rekey_tick + 1,
        rekey_tick + LATE
    );
    let mut finals = Vec::new();
    for (gw_name, name, dir) in [
        ("head-office", o, "outbound"),
        ("head-office", i, "inbound"),
        (br_name, i, "outbound"),
        (br_name, o, "inbound"),
    ] {
        let gw = if gw_name == "head-office" {
            &mut scene.hq
        } else {
            &mut scene.br
        };
        let spi = gw.sa(name).map_or(0, |s| s.spi());
        let stats = gw
            .delete_sa(name)
            .map_err(ctl(gw_name, format!("delete_sa {name}")))?;
        if gw.sa(name).is_some() {
            return Err(format!(
                "{gw_name}: SA {name} still installed after delete_sa"
            ));
        }
        finals.push((gw_name, name, spi, dir, stats));
    }
    let _ = writeln!(
        out,
        "  delete      delete_sa {o:?} and {i:?} on both gateways (final counters below); neither gateway has them any more"
    );
    let first_after = scene.tick + 1;
    scene.steady(AFTER, t, [&ni, &ni, &no, &no])?;
    let _ = writeln!(
        out,
        "  {:<12}RDP both ways under the new SAs alone",
        format!("ticks {first_after}-{}", scene.tick)
    );

    // 6. The monitor: every packet accounted for.
    let _ = writeln!(
        out,
        "\nSA monitor after the rekey ({br_name}'s tunnel, old and new SAs):"
    );
    let _ = writeln!(
        out,
        "{:<12} {:<12} {:<10} {:<8} {:<8} {:>7} {:>7}  DROPS",
        "GATEWAY", "SA", "SPI", "DIR", "STATE", "PACKETS", "BYTES"
    );
    // (gateway, old SA, new SA) per direction: 0 up, 1 down; sender first.
    let by_name = |gw: &str, name: &str| -> Option<SaStats> {
        finals
            .iter()
            .find(|f| f.0 == gw && f.1 == name)
            .map(|f| f.4)
    };
    let mut rows = Vec::new();
    for (gw_name, gw) in [("head-office", &scene.hq), (br_name, &scene.br)] {
        for name in [o, i] {
            if let Some(f) = finals.iter().find(|f| f.0 == gw_name && f.1 == name) {
                rows.push((gw_name, name.to_owned(), f.2, f.3, "deleted", f.4));
            }
        }
        for name in [&no, &ni] {
            if let Some(sa) = gw.sa(name) {
                rows.push((
                    gw_name,
                    name.clone(),
                    sa.spi(),
                    sa.direction().name(),
                    "active",
                    sa.stats(),
                ));
            }
        }
    }
    for (gw_name, name, spi, dir, state, s) in &rows {
        monitor_row(out, gw_name, name, *spi, dir, state, s);
    }
    let live = |gw: &Gateway, name: &str| gw.sa(name).map(|s| s.stats());
    let mut check = |ok: bool, msg: String, out: &mut String| {
        let _ = writeln!(out, "  {msg}");
        if !ok {
            failures.push(format!("rekey scene: {msg}"));
        }
    };
    for (dir, label, old, new, sender, receiver) in [
        (
            0,
            format!("{br_name} -> head office"),
            i,
            &ni,
            br_name,
            "head-office",
        ),
        (
            1,
            format!("head office -> {br_name}"),
            o,
            &no,
            "head-office",
            br_name,
        ),
    ] {
        let (sender_gw, receiver_gw) = if sender == "head-office" {
            (&scene.hq, &scene.br)
        } else {
            (&scene.br, &scene.hq)
        };
        let so = by_name(sender, old).map_or(0, |s| s.packets);
        let ro = by_name(receiver, old).map_or(0, |s| s.packets);
        let sn = live(sender_gw, new).map_or(0, |s| s.packets);
        let rn = live(receiver_gw, new).map_or(0, |s| s.packets);
        let ok = so + sn == scene.sent[dir]
            && ro + rn == scene.received[dir]
            && so + sn == ro + rn
            && so == ro
            && sn > 0;
        check(
            ok,
            format!(
                "{label}: sent {so} ({old}) + {sn} ({new}) = {}, received {ro} + {rn} = {}: {}",
                so + sn,
                ro + rn,
                if ok {
                    format!("every packet accounted for, {} lost", (so + sn) - (ro + rn))
                } else {
                    format!(
                        "MISMATCH (the scene sent {} and saw {} delivered)",
                        scene.sent[dir], scene.received[dir]
                    )
                }
            ),
            out,
        );
    }
    let sa_drops: u64 = rows.iter().map(|r| r.5.dropped_total()).sum();
    let gw_drops = scene.hq.stats().dropped_total() + scene.br.stats().dropped_total();
    check(
        sa_drops == 0 && gw_drops == 0,
        format!("drops: {sa_drops} on the SAs, {gw_drops} on the gateways"),
        out,
    );
    Ok(())
}
