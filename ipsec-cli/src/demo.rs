//! `ipsec demo`: the branch-office scenario end to end through two gateways' SAs.
//!
//! Head office 10.0.0.0/24 behind gateway 192.0.2.1, the branch 10.1.0.0/24 behind
//! gateway 198.51.100.2, joined by a leased line. One SA per direction (an SA is
//! one-way): `branch-to-hq` is outbound on the branch gateway and inbound on the head
//! office gateway, `hq-to-branch` the reverse, both AES-128-GCM. A fixed allow-list
//! stands in for the SPD (a later change replaces it with the real policy engine).

use crate::netpkt::{ipv4_l4, ipv4_l4_checksum_ok};
use crate::{CliError, Outcome};
use bytes::BytesMut;
use ipsec_core::packet::{IPPROTO_ESP, IPPROTO_TCP, IPPROTO_UDP};
use ipsec_core::{
    Cipher, Direction, DropReason, Error, Integrity, Mode, SaConfig, SecurityAssociation,
};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

const HQ_GW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const BRANCH_GW: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

/// The services the branch may reach at head office: (server, TCP port, what it is).
const ALLOWED: [(Ipv4Addr, u16); 6] = [
    (Ipv4Addr::new(10, 0, 0, 10), 3389),
    (Ipv4Addr::new(10, 0, 0, 20), 443),
    (Ipv4Addr::new(10, 0, 0, 20), 135),
    (Ipv4Addr::new(10, 0, 0, 30), 445),
    (Ipv4Addr::new(10, 0, 0, 30), 631),
    (Ipv4Addr::new(10, 0, 0, 30), 9100),
];

fn in_prefix(a: Ipv4Addr, net: Ipv4Addr, len: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(a) & mask == u32::from(net) & mask
}

/// The stand-in policy for traffic entering the tunnel at the branch gateway.
fn branch_policy(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, dport: u16) -> bool {
    in_prefix(src, Ipv4Addr::new(10, 1, 0, 0), 24)
        && in_prefix(dst, Ipv4Addr::new(10, 0, 0, 0), 24)
        && proto == IPPROTO_TCP
        && ALLOWED.contains(&(dst, dport))
}

struct Flow {
    name: &'static str,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    sport: u16,
    dport: u16,
    expect_protect: bool,
}

const fn flow(
    name: &'static str,
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    dport: u16,
    expect_protect: bool,
) -> Flow {
    Flow {
        name,
        src: Ipv4Addr::new(src[0], src[1], src[2], src[3]),
        dst: Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]),
        proto,
        sport: 49152 + dport % 1000,
        dport,
        expect_protect,
    }
}

const FLOWS: [Flow; 10] = [
    flow(
        "terminal services (RDP)",
        [10, 1, 0, 15],
        [10, 0, 0, 10],
        IPPROTO_TCP,
        3389,
        true,
    ),
    flow(
        "Outlook (HTTPS)",
        [10, 1, 0, 15],
        [10, 0, 0, 20],
        IPPROTO_TCP,
        443,
        true,
    ),
    flow(
        "Outlook (RPC endpoint mapper)",
        [10, 1, 0, 16],
        [10, 0, 0, 20],
        IPPROTO_TCP,
        135,
        true,
    ),
    flow(
        "printing (SMB)",
        [10, 1, 0, 17],
        [10, 0, 0, 30],
        IPPROTO_TCP,
        445,
        true,
    ),
    flow(
        "printing (IPP)",
        [10, 1, 0, 17],
        [10, 0, 0, 30],
        IPPROTO_TCP,
        631,
        true,
    ),
    flow(
        "printing (raw 9100)",
        [10, 1, 0, 17],
        [10, 0, 0, 30],
        IPPROTO_TCP,
        9100,
        true,
    ),
    flow(
        "telnet",
        [10, 1, 0, 15],
        [10, 0, 0, 10],
        IPPROTO_TCP,
        23,
        false,
    ),
    flow(
        "SMB from a non-branch subnet",
        [172, 16, 5, 5],
        [10, 0, 0, 30],
        IPPROTO_TCP,
        445,
        false,
    ),
    flow(
        "SMB to a non-print server",
        [10, 1, 0, 15],
        [10, 0, 0, 10],
        IPPROTO_TCP,
        445,
        false,
    ),
    flow(
        "anything else (DNS over UDP)",
        [10, 1, 0, 15],
        [10, 0, 0, 53],
        IPPROTO_UDP,
        53,
        false,
    ),
];

/// One SA as one gateway holds it.
struct GwSa {
    gateway: &'static str,
    name: &'static str,
    sa: SecurityAssociation,
}

fn key(cipher: Cipher, seed: u8) -> Vec<u8> {
    (0..cipher.key_len())
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8 * 7))
        .collect()
}

/// The SA pair of one direction: (sender's outbound, receiver's inbound).
fn sa_pair(
    spi: u32,
    cipher: Cipher,
    integrity: Option<Integrity>,
    from: Ipv4Addr,
    to: Ipv4Addr,
    now: Duration,
) -> Result<(SecurityAssociation, SecurityAssociation), CliError> {
    let k = key(cipher, spi as u8);
    let ik: Vec<u8> = integrity.map_or(Vec::new(), |i| vec![0x5a; i.key_len()]);
    let make = |dir| {
        let mut c = SaConfig::new(spi, dir, Mode::Tunnel, cipher, &k);
        if let Some(i) = integrity {
            c.integrity(i, &ik);
        }
        if dir == Direction::Outbound {
            c.tunnel(IpAddr::V4(from), IpAddr::V4(to));
        }
        SecurityAssociation::new(c, now)
            .map_err(|e| CliError::failure(format!("demo SA {spi:#x}: {e}")))
    };
    Ok((make(Direction::Outbound)?, make(Direction::Inbound)?))
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

/// Encrypts `inner` with `out`, checks the wire form, decrypts with `inb`, checks it
/// came back. Returns the wire bytes.
fn through_tunnel(
    out: &mut SecurityAssociation,
    inb: &mut SecurityAssociation,
    inner: &[u8],
    payload: &[u8],
    gws: (Ipv4Addr, Ipv4Addr),
    now: Duration,
) -> Result<Vec<u8>, String> {
    let mut buf = BytesMut::from(inner);
    out.encrypt_bytes(&mut buf, now)
        .map_err(|e| format!("encrypt failed: {e}"))?;
    let wire = buf.to_vec();
    if wire.len() < 20 || wire[9] != IPPROTO_ESP {
        return Err("wire packet is not ESP".into());
    }
    if wire[12..16] != gws.0.octets() || wire[16..20] != gws.1.octets() {
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

/// Runs the demonstration.
pub(crate) fn run() -> Result<Outcome, CliError> {
    let mut t = Duration::from_secs(1_780_000_000);
    let gcm = Cipher::Aes128Gcm;
    let (b2h_out, b2h_in) = sa_pair(0x0000_1001, gcm, None, BRANCH_GW, HQ_GW, t)?;
    let (h2b_out, h2b_in) = sa_pair(0x0000_2001, gcm, None, HQ_GW, BRANCH_GW, t)?;
    let (cbc_out, cbc_in) = sa_pair(
        0x0000_1002,
        Cipher::Aes256Cbc,
        Some(Integrity::HmacSha256_128),
        BRANCH_GW,
        HQ_GW,
        t,
    )?;
    let (cc_out, cc_in) = sa_pair(
        0x0000_1003,
        Cipher::ChaCha20Poly1305,
        None,
        BRANCH_GW,
        HQ_GW,
        t,
    )?;
    let mut sas = vec![
        GwSa {
            gateway: "branch-gw",
            name: "branch-to-hq",
            sa: b2h_out,
        },
        GwSa {
            gateway: "hq-gw",
            name: "branch-to-hq",
            sa: b2h_in,
        },
        GwSa {
            gateway: "hq-gw",
            name: "hq-to-branch",
            sa: h2b_out,
        },
        GwSa {
            gateway: "branch-gw",
            name: "hq-to-branch",
            sa: h2b_in,
        },
        GwSa {
            gateway: "branch-gw",
            name: "branch-to-hq-cbc",
            sa: cbc_out,
        },
        GwSa {
            gateway: "hq-gw",
            name: "branch-to-hq-cbc",
            sa: cbc_in,
        },
        GwSa {
            gateway: "branch-gw",
            name: "branch-to-hq-chacha",
            sa: cc_out,
        },
        GwSa {
            gateway: "hq-gw",
            name: "branch-to-hq-chacha",
            sa: cc_in,
        },
    ];
    let mut failures: Vec<String> = Vec::new();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Branch office 10.1.0.0/24 (gateway {BRANCH_GW}) <== leased line ==> head office 10.0.0.0/24 (gateway {HQ_GW})"
    );
    let _ = writeln!(
        out,
        "SAs: branch-to-hq SPI 0x00001001 and hq-to-branch SPI 0x00002001, ESP tunnel mode, {}\n",
        gcm.name()
    );
    let _ = writeln!(
        out,
        "{:<31} {:<40} {:<8} RESULT",
        "FLOW", "PACKET", "ACTION"
    );
    let mut captured: Option<Vec<u8>> = None;
    for (n, f) in FLOWS.iter().enumerate() {
        let proto = if f.proto == IPPROTO_TCP { "tcp" } else { "udp" };
        let desc = format!("{}:{} -> {}:{}/{proto}", f.src, f.sport, f.dst, f.dport);
        let protect = branch_policy(f.src, f.dst, f.proto, f.dport);
        let action = if protect { "PROTECT" } else { "DISCARD" };
        let result = if protect != f.expect_protect {
            Err(format!(
                "policy said {action}, expected {}",
                if f.expect_protect {
                    "PROTECT"
                } else {
                    "DISCARD"
                }
            ))
        } else if !protect {
            Ok("refused at the branch gateway, nothing sent".to_string())
        } else {
            t += Duration::from_millis(10);
            let payload = format!("{} request #{n}: confidential branch data", f.name);
            let req = ipv4_l4(
                f.proto,
                (f.src, f.sport),
                (f.dst, f.dport),
                100 + n as u16,
                payload.as_bytes(),
            );
            let reply_payload = format!("{} reply #{n}: confidential head-office data", f.name);
            let rep = ipv4_l4(
                f.proto,
                (f.dst, f.dport),
                (f.src, f.sport),
                200 + n as u16,
                reply_payload.as_bytes(),
            );
            let (a, b) = sas.split_at_mut(1);
            let there = through_tunnel(
                &mut a[0].sa,
                &mut b[0].sa,
                &req,
                payload.as_bytes(),
                (BRANCH_GW, HQ_GW),
                t,
            );
            let (c, d) = b.split_at_mut(2);
            let back = through_tunnel(
                &mut c[1].sa,
                &mut d[0].sa,
                &rep,
                reply_payload.as_bytes(),
                (HQ_GW, BRANCH_GW),
                t,
            );
            match (there, back) {
                (Ok(wire), Ok(_)) => {
                    let msg = format!(
                        "ok: {} B -> {} B ESP, payload not in wire bytes, decrypted equal; reply ok",
                        req.len(),
                        wire.len()
                    );
                    captured.get_or_insert(wire);
                    Ok(msg)
                }
                (Err(e), _) => Err(format!("request: {e}")),
                (_, Err(e)) => Err(format!("reply: {e}")),
            }
        };
        match result {
            Ok(m) => {
                let _ = writeln!(out, "{:<31} {desc:<40} {action:<8} {m}", f.name);
            }
            Err(m) => {
                let _ = writeln!(out, "{:<31} {desc:<40} {action:<8} FAILED: {m}", f.name);
                failures.push(format!("flow {:?}: {m}", f.name));
            }
        }
    }

    // The same service over the other ciphers.
    let _ = writeln!(out, "\nThe terminal-services flow over other ciphers:");
    for i in [4usize, 6] {
        t += Duration::from_millis(10);
        let payload = b"RDP keystrokes: the password is hunter2";
        let f = &FLOWS[0];
        let req = ipv4_l4(
            IPPROTO_TCP,
            (f.src, f.sport),
            (f.dst, f.dport),
            300 + i as u16,
            payload,
        );
        let (a, b) = sas.split_at_mut(i + 1);
        let label = cipher_label(&a[i].sa);
        match through_tunnel(
            &mut a[i].sa,
            &mut b[0].sa,
            &req,
            payload,
            (BRANCH_GW, HQ_GW),
            t,
        ) {
            Ok(wire) => {
                let _ = writeln!(
                    out,
                    "  {label:<34} ok: {} B -> {} B ESP, payload not in wire bytes, decrypted equal",
                    req.len(),
                    wire.len()
                );
            }
            Err(e) => {
                let _ = writeln!(out, "  {label:<34} FAILED: {e}");
                failures.push(format!("{label}: {e}"));
            }
        }
    }

    // Attacks on the branch-to-hq SA.
    let _ = writeln!(out, "\nAttacker on the leased line:");
    let mut expect = |ok: bool, what: &str, msg: String, out: &mut String| {
        let _ = writeln!(out, "  {what:<52} {msg}");
        if !ok {
            failures.push(format!("{what}: {msg}"));
        }
    };
    match captured {
        Some(wire) => {
            t += Duration::from_millis(10);
            let mut buf = BytesMut::from(&wire[..]);
            let r = sas[1].sa.decrypt_bytes(&mut buf, t);
            let ok = matches!(r, Err(Error::Replayed { .. }));
            let msg = match r {
                Err(e) => format!("dropped ({}): {e}", e.drop_reason()),
                Ok(()) => "ACCEPTED (replay protection failed)".into(),
            };
            expect(ok, "replays a captured RDP packet", msg, &mut out);
        }
        None => expect(false, "replay", "no packet was captured".into(), &mut out),
    }
    {
        t += Duration::from_millis(10);
        let f = &FLOWS[1];
        let payload = b"Outlook: quarterly figures attached";
        let req = ipv4_l4(
            IPPROTO_TCP,
            (f.src, f.sport),
            (f.dst, f.dport),
            400,
            payload,
        );
        let mut genuine = BytesMut::from(&req[..]);
        let enc = sas[0].sa.encrypt_bytes(&mut genuine, t);
        if let Err(e) = enc {
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
            let r = sas[1].sa.decrypt_bytes(&mut forged, t);
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
            let r = sas[1].sa.decrypt_bytes(&mut genuine, t);
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
    let hq_in = sas[1].sa.stats();
    let counted =
        hq_in.dropped(DropReason::Replay) == 1 && hq_in.dropped(DropReason::AuthFailed) == 1;
    expect(
        counted,
        "hq-gw counters for branch-to-hq",
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
        "{:<10} {:<20} {:<10} {:<8} {:<31} {:>7} {:>7}  DROPS",
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
            "{:<10} {:<20} {:<10} {:<8} {:<31} {:>7} {:>7}  {}",
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
    print!("{out}");
    if failures.is_empty() {
        println!("\nAll expectations held.");
        Ok(Outcome::Ok)
    } else {
        Ok(Outcome::Failed(format!(
            "{} expectation(s) did not hold: {}",
            failures.len(),
            failures.join("; ")
        )))
    }
}
