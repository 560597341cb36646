//! A live gateway driven as a key manager drives it: SAs added, rekeyed make-before-break
//! and deleted, policies installed, replaced and removed while packets flow between a
//! head-office and a branch gateway. Every refused call is checked to change nothing.

use ipsec_core::gateway::{Inbound, Outbound};
use ipsec_core::sa::{Direction, Mode};
use ipsec_core::spd::Spd;
use ipsec_core::{Cipher, ControlError, DropReason, Error, Gateway, PacketBuf, Policy, SaConfig};
use std::time::Duration;

const T0: Duration = Duration::ZERO;
const ROOM: usize = 128;

/// A fresh 20-byte AES-128-GCM key (16 key + 4 salt) derived from `n`.
fn key(n: u32) -> Vec<u8> {
    (0..20u32)
        .map(|i| (n.wrapping_mul(2_654_435_761).rotate_left(i) ^ i) as u8)
        .collect()
}

fn sa(spi: u32, dir: Direction, n: u32) -> SaConfig {
    let mut cfg = SaConfig::new(spi, dir, Mode::Tunnel, Cipher::Aes128Gcm, &key(n));
    if dir == Direction::Outbound {
        cfg.tunnel(
            "192.0.2.1".parse().unwrap(),
            "198.51.100.2".parse().unwrap(),
        );
    }
    cfg
}

/// A gateway with only the final deny-all.
fn empty_gateway() -> Gateway {
    let spd =
        Spd::from_toml("[[policy]]\nname = \"deny\"\ndirection = \"both\"\naction = \"discard\"\n")
            .unwrap();
    Gateway::new(spd, T0).unwrap()
}

fn rdp_policy(name: &str, local: &str, remote: &str, sas: [&str; 2]) -> String {
    format!(
        "name = \"{name}\"\nlocal = \"{local}\"\nremote = \"{remote}\"\nprotocol = \"tcp\"\n\
         action = \"protect\"\nsa = [\"{}\", \"{}\"]\n",
        sas[0], sas[1]
    )
}

/// A TCP packet 10.0.0.5:3389 -> 10.1.0.9:50000 (head office to branch) with `tag`.
fn packet(src: [u8; 4], dst: [u8; 4], tag: u32) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    p[20..22].copy_from_slice(&3389u16.to_be_bytes());
    p[22..24].copy_from_slice(&50000u16.to_be_bytes());
    p[24..28].copy_from_slice(&tag.to_be_bytes());
    p
}

fn hq_packet(tag: u32) -> Vec<u8> {
    packet([10, 0, 0, 5], [10, 1, 0, 9], tag)
}

/// Runs `pkt` outbound through `gw`: the protected packet and the SA's name.
fn send(gw: &mut Gateway, pkt: &[u8]) -> Result<(Vec<u8>, String), Error> {
    let mut buf = vec![0u8; ROOM + pkt.len() + ROOM];
    buf[ROOM..ROOM + pkt.len()].copy_from_slice(pkt);
    let mut p = PacketBuf::new(&mut buf, ROOM, pkt.len())?;
    let sa = match gw.outbound(&mut p, T0)? {
        Outbound::Protected { sa, .. } => sa.to_owned(),
        other => panic!("not protected: {other:?}"),
    };
    Ok((p.data().to_vec(), sa))
}

/// Runs `pkt` inbound through `gw` at `now`: the inner packet and the SA's name.
fn receive(gw: &mut Gateway, pkt: &[u8], now: Duration) -> Result<(Vec<u8>, String), Error> {
    let mut buf = pkt.to_vec();
    let len = buf.len();
    let mut p = PacketBuf::new(&mut buf, 0, len)?;
    let sa = match gw.inbound(&mut p, now)? {
        Inbound::Decrypted { sa, .. } => sa.to_owned(),
        other => panic!("not decrypted: {other:?}"),
    };
    Ok((p.data().to_vec(), sa))
}

/// The head office (sends through `hq-out`) and the branch (receives on `br-in`), built
/// at run time from empty gateways.
fn live_pair() -> (Gateway, Gateway) {
    let mut hq = empty_gateway();
    let mut br = empty_gateway();
    hq.add_sa("hq-out", sa(0x1000, Direction::Outbound, 1), T0)
        .unwrap();
    hq.add_sa("hq-in", sa(0x2000, Direction::Inbound, 2), T0)
        .unwrap();
    br.add_sa("br-out", sa(0x2000, Direction::Outbound, 2), T0)
        .unwrap();
    br.add_sa("br-in", sa(0x1000, Direction::Inbound, 1), T0)
        .unwrap();
    hq.install_policy(
        &rdp_policy("rdp", "10.0.0.0/24", "10.1.0.0/24", ["hq-out", "hq-in"]),
        Some("deny"),
    )
    .unwrap();
    br.install_policy(
        &rdp_policy("rdp", "10.1.0.0/24", "10.0.0.0/24", ["br-out", "br-in"]),
        Some("deny"),
    )
    .unwrap();
    (hq, br)
}

/// What an observer sees of a gateway: its policies in order and its SAs.
fn shape(gw: &Gateway) -> (Vec<String>, Vec<(String, u32)>) {
    (
        gw.spd()
            .policies()
            .iter()
            .map(|p| p.name().to_owned())
            .collect(),
        gw.sas().map(|(n, sa)| (n.to_owned(), sa.spi())).collect(),
    )
}

#[test]
fn sas_and_policies_added_at_run_time_carry_traffic() {
    let (mut hq, mut br) = live_pair();
    assert_eq!(shape(&hq).0, ["rdp", "deny"]);
    for tag in 0..5 {
        let (wire, sa) = send(&mut hq, &hq_packet(tag)).unwrap();
        assert_eq!(sa, "hq-out");
        let (inner, sa) = receive(&mut br, &wire, T0).unwrap();
        assert_eq!(sa, "br-in");
        assert_eq!(inner, hq_packet(tag));
    }
    assert_eq!(br.sa("br-in").unwrap().stats().packets, 5);
}

#[test]
fn a_key_used_by_an_installed_sa_is_refused() {
    let mut gw = empty_gateway();
    gw.add_sa("a", sa(0x1000, Direction::Outbound, 7), T0)
        .unwrap();
    let before = shape(&gw);
    let e = gw
        .add_sa("b", sa(0x1001, Direction::Inbound, 7), T0)
        .unwrap_err();
    let ControlError::Config(c) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(c.field(), "sa \"b\": key");
    assert!(c.message().contains("sa \"a\""), "{c}");
    assert_eq!(shape(&gw), before);
    // Once "a" is deleted, its key is free again (a restarted negotiation).
    gw.delete_sa("a").unwrap();
    gw.add_sa("b", sa(0x1001, Direction::Inbound, 7), T0)
        .unwrap();
}

#[test]
fn every_refused_call_names_the_problem_and_changes_nothing() {
    let (mut hq, _) = live_pair();
    let before = shape(&hq);
    let cases: Vec<(Result<(), ControlError>, ControlError)> = vec![
        (
            hq.add_sa("hq-out", sa(0x3000, Direction::Outbound, 30), T0),
            ControlError::DuplicateName {
                name: "hq-out".into(),
            },
        ),
        (
            hq.add_sa("other-in", sa(0x2000, Direction::Inbound, 31), T0),
            ControlError::DuplicateSpi {
                spi: 0x2000,
                sa: "hq-in".into(),
            },
        ),
        (
            hq.delete_sa("nope").map(drop),
            ControlError::UnknownSa {
                name: "nope".into(),
            },
        ),
        (
            hq.delete_sa("hq-out").map(drop),
            ControlError::SaInUse {
                sa: "hq-out".into(),
                policy: "rdp".into(),
            },
        ),
        (
            hq.retire_sa("hq-in", T0).map(drop),
            ControlError::SaInUse {
                sa: "hq-in".into(),
                policy: "rdp".into(),
            },
        ),
        (
            hq.install_policy(
                &rdp_policy("mail", "10.0.0.0/24", "10.1.0.0/24", ["hq-out", "gone"]),
                None,
            ),
            ControlError::MissingSa {
                policy: "mail".into(),
                sa: "gone".into(),
            },
        ),
        (
            hq.install_policy(
                &rdp_policy("rdp", "10.0.0.0/24", "10.1.0.0/24", ["hq-out", "hq-in"]),
                None,
            ),
            ControlError::DuplicatePolicy { name: "rdp".into() },
        ),
        (
            hq.install_policy(
                &rdp_policy("mail", "10.0.0.0/24", "10.1.0.0/24", ["hq-out", "hq-in"]),
                Some("nope"),
            ),
            ControlError::UnknownPolicy {
                name: "nope".into(),
            },
        ),
        (
            hq.remove_policy("nope"),
            ControlError::UnknownPolicy {
                name: "nope".into(),
            },
        ),
        (
            hq.rekey_sa("hq-out", "hq-in-2", sa(0x2001, Direction::Inbound, 32), T0),
            ControlError::DirectionMismatch {
                sa: "hq-in-2".into(),
                replaces: "hq-out".into(),
            },
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got.unwrap_err(), want);
        assert_eq!(shape(&hq), before);
    }
    // An SA named in the wrong direction, and a policy that is not valid.
    let e = hq
        .install_policy(
            &rdp_policy("mail", "10.0.0.0/24", "10.1.0.0/24", ["hq-in", "hq-out"]),
            None,
        )
        .unwrap_err();
    assert!(
        matches!(&e, ControlError::Config(c) if c.field() == "policy \"mail\": sa"),
        "{e}"
    );
    let e = hq
        .install_policy("name = \"x\"\naction = \"encrypt\"\n", None)
        .unwrap_err();
    assert!(
        matches!(&e, ControlError::Config(c) if c.field() == "policy \"x\": action"),
        "{e}"
    );
    let bad_key = SaConfig::new(
        0x4000,
        Direction::Inbound,
        Mode::Tunnel,
        Cipher::Aes128Gcm,
        &[1; 5],
    );
    let e = hq.add_sa("short", bad_key, T0).unwrap_err();
    assert!(
        matches!(&e, ControlError::Config(c) if c.field() == "sa \"short\": key"),
        "{e}"
    );
    assert_eq!(shape(&hq), before);
}

#[test]
fn policies_are_installed_in_place_replaced_and_removed() {
    let (mut hq, mut br) = live_pair();
    // A second policy before the deny-all: web traffic, bypassed.
    hq.install_policy(
        "name = \"web\"\nremote = \"10.1.0.0/24\"\nprotocol = \"tcp\"\nremote_port = 80\naction = \"bypass\"\n",
        Some("deny"),
    )
    .unwrap();
    assert_eq!(shape(&hq).0, ["rdp", "web", "deny"]);
    // Narrowed: the policy now covers 10.1.0.0/25 only; 10.1.0.200 falls to the deny-all.
    hq.replace_policy(&rdp_policy(
        "rdp",
        "10.0.0.0/24",
        "10.1.0.0/25",
        ["hq-out", "hq-in"],
    ))
    .unwrap();
    assert_eq!(shape(&hq).0, ["rdp", "web", "deny"]);
    let (wire, _) = send(&mut hq, &hq_packet(1)).unwrap();
    receive(&mut br, &wire, T0).unwrap();
    let far = packet([10, 0, 0, 5], [10, 1, 0, 200], 2);
    assert_eq!(send(&mut hq, &far).unwrap_err(), Error::PolicyDiscard);
    // Removed: now the SA may go too.
    hq.remove_policy("rdp").unwrap();
    assert_eq!(
        send(&mut hq, &hq_packet(3)).unwrap_err(),
        Error::PolicyDiscard
    );
    let stats = hq.delete_sa("hq-out").unwrap();
    assert_eq!(stats.packets, 1);
    assert!(hq.sa("hq-out").is_none());
}

/// A policy parsed on another thread (`Policy::from_toml`, no gateway needed) is
/// installed and replaced as its text would be, and refused for the same reasons, with
/// nothing changed: the parse finds what the text alone shows, the gateway what depends
/// on its SAs and policies.
#[test]
fn a_policy_parsed_elsewhere_is_installed_checked_and_refused_as_its_text() {
    let (mut hq, mut br) = live_pair();
    let parse = |text: String| std::thread::spawn(move || Policy::from_toml(&text));
    let narrowed = rdp_policy("rdp", "10.0.0.0/24", "10.1.0.0/25", ["hq-out", "hq-in"]);
    let parsed = parse(narrowed.clone()).join().unwrap().unwrap();
    assert_eq!(parsed.name(), "rdp");
    assert_eq!(parsed.sa(Direction::Outbound), Some("hq-out"));
    assert_eq!(parsed.sa(Direction::Inbound), Some("hq-in"));
    // What the text alone shows is found without a gateway, in the same words.
    let e = Policy::from_toml("name = \"x\"\naction = \"encrypt\"\n").unwrap_err();
    assert_eq!(e.field(), "policy \"x\": action", "{e}");
    let e = Policy::from_toml("name = \"x\"\naction = \"protect\"\n").unwrap_err();
    assert_eq!(e.field(), "policy \"x\": sa", "{e}");
    // One [[policy]] table and nothing else: an SA table beside it is not ignored.
    let one = "[[policy]]\nname = \"web\"\naction = \"bypass\"\n";
    assert_eq!(Policy::from_toml(one).unwrap().name(), "web");
    let e = Policy::from_toml(&format!("{one}[[sa]]\nname = \"s\"\nspi = 300\n")).unwrap_err();
    assert_eq!(e.field(), "policy", "{e}");
    let e = Policy::from_toml(&format!("{one}{one}")).unwrap_err();
    assert_eq!(e.field(), "policy", "{e}");

    let before = shape(&hq);
    let refusals = [
        (
            rdp_policy("mail", "10.0.0.0/24", "10.1.0.0/24", ["hq-out", "gone"]),
            None,
            ControlError::MissingSa {
                policy: "mail".into(),
                sa: "gone".into(),
            },
        ),
        (
            rdp_policy("rdp", "10.0.0.0/24", "10.1.0.0/24", ["hq-out", "hq-in"]),
            None,
            ControlError::DuplicatePolicy { name: "rdp".into() },
        ),
        (
            rdp_policy("mail", "10.0.0.0/24", "10.1.0.0/24", ["hq-out", "hq-in"]),
            Some("nope"),
            ControlError::UnknownPolicy {
                name: "nope".into(),
            },
        ),
    ];
    for (text, at, want) in refusals {
        let from_text = hq.install_policy(&text, at).unwrap_err();
        let p = Policy::from_toml(&text).unwrap();
        assert_eq!(hq.install_parsed_policy(p, at).unwrap_err(), want);
        assert_eq!(from_text, want);
        assert_eq!(shape(&hq), before);
    }
    // Both SAs installed, each in the other direction: a config error on `sa`.
    let swapped = rdp_policy("mail", "10.0.0.0/24", "10.1.0.0/24", ["hq-in", "hq-out"]);
    let e = hq
        .install_parsed_policy(Policy::from_toml(&swapped).unwrap(), None)
        .unwrap_err();
    assert_eq!(e, hq.install_policy(&swapped, None).unwrap_err());
    assert!(
        matches!(&e, ControlError::Config(c) if c.field() == "policy \"mail\": sa"),
        "{e}"
    );
    let e = hq
        .replace_parsed_policy(Policy::from_toml(&swapped.replace("mail", "rdp")).unwrap())
        .unwrap_err();
    assert!(matches!(&e, ControlError::Config(_)), "{e}");
    assert_eq!(shape(&hq), before);

    // Accepted: the narrowed policy carries 10.1.0.0/25 only, as `replace_policy` would.
    hq.replace_parsed_policy(parsed).unwrap();
    let (wire, _) = send(&mut hq, &hq_packet(1)).unwrap();
    receive(&mut br, &wire, T0).unwrap();
    let far = packet([10, 0, 0, 5], [10, 1, 0, 200], 2);
    assert_eq!(send(&mut hq, &far).unwrap_err(), Error::PolicyDiscard);
    let web = parse(
        "name = \"web\"\nremote = \"10.1.0.0/24\"\nprotocol = \"tcp\"\nremote_port = 80\n\
         action = \"bypass\"\n"
            .into(),
    );
    hq.install_parsed_policy(web.join().unwrap().unwrap(), Some("deny"))
        .unwrap();
    assert_eq!(shape(&hq).0, ["rdp", "web", "deny"]);
}

#[test]
fn make_before_break_rekey_loses_nothing_and_the_old_sa_stops_after_delete() {
    let (mut hq, mut br) = live_pair();
    // Sent under the old SA, still on the wire during the rekey.
    let (late, _) = send(&mut hq, &hq_packet(1)).unwrap();
    // 1. The receiver installs the new inbound SA next to the old one.
    let spi = br.allocate_spi(T0).unwrap();
    br.rekey_sa("br-in", "br-in-2", sa(spi, Direction::Inbound, 50), T0)
        .unwrap();
    // 2. The sender switches in one step.
    hq.rekey_sa("hq-out", "hq-out-2", sa(spi, Direction::Outbound, 50), T0)
        .unwrap();
    let (fresh, via) = send(&mut hq, &hq_packet(2)).unwrap();
    assert_eq!(via, "hq-out-2");
    assert_eq!(&fresh[20..24], &spi.to_be_bytes()); // outer IPv4, then the SPI
    // The old outbound SA carries nothing now and can go; the policy keeps its text.
    hq.delete_sa("hq-out").unwrap();
    assert_eq!(send(&mut hq, &hq_packet(3)).unwrap().1, "hq-out-2");
    // 3. Both inbound SAs accept, and the new one serves the old one's policy.
    assert_eq!(receive(&mut br, &fresh, T0).unwrap().1, "br-in-2");
    assert_eq!(
        receive(&mut br, &late, T0).unwrap(),
        (hq_packet(1), "br-in".into())
    );
    // The old inbound SA is no longer the last to serve "rdp": it may be retired.
    let (late2, _) = {
        // (another packet of the old SA, as if still queued at the peer)
        let mut old = sa(0x1000, Direction::Outbound, 1);
        old.seq(10);
        let mut again = empty_gateway();
        again.add_sa("old", old, T0).unwrap();
        again
            .install_policy(
                "name = \"rdp\"\ndirection = \"outbound\"\nlocal = \"10.0.0.0/24\"\n\
                     remote = \"10.1.0.0/24\"\naction = \"protect\"\nsa = \"old\"\n",
                Some("deny"),
            )
            .unwrap();
        send(&mut again, &hq_packet(4)).unwrap()
    };
    let grace = Duration::from_secs(5);
    br.retire_sa("br-in", grace).unwrap();
    assert_eq!(
        receive(&mut br, &late2, grace - Duration::from_millis(1))
            .unwrap()
            .1,
        "br-in"
    );
    // At the end of the grace time it is gone: its packets are unknown SPIs, counted.
    let mut third = late2.clone();
    third[20 + 7] = third[20 + 7].wrapping_add(1); // another sequence number
    let before = br.stats().dropped(DropReason::UnknownSpi);
    assert_eq!(
        receive(&mut br, &third, grace).unwrap_err(),
        Error::UnknownSpi { spi: 0x1000 }
    );
    assert_eq!(br.stats().dropped(DropReason::UnknownSpi), before + 1);
    assert!(br.sa("br-in").is_none());
    // The new SA now serves the policy alone and cannot be deleted under it.
    assert!(matches!(
        br.delete_sa("br-in-2"),
        Err(ControlError::SaInUse { .. })
    ));
    // Its SPI is taken; the old one is free again.
    assert!(matches!(
        br.add_sa("x", sa(spi, Direction::Inbound, 60), T0),
        Err(ControlError::DuplicateSpi { .. })
    ));
    br.add_sa("x", sa(0x1000, Direction::Inbound, 61), T0)
        .unwrap();
}

#[test]
fn a_deleted_inbound_sa_decides_no_packet_and_its_spi_can_be_allocated_again() {
    let (mut hq, mut br) = live_pair();
    let (wire, _) = send(&mut hq, &hq_packet(1)).unwrap();
    br.remove_policy("rdp").unwrap();
    br.delete_sa("br-in").unwrap();
    assert_eq!(
        receive(&mut br, &wire, T0).unwrap_err(),
        Error::UnknownSpi { spi: 0x1000 }
    );
    br.set_spi_range(0x1000, 0x1000).unwrap();
    assert_eq!(br.allocate_spi(T0).unwrap(), 0x1000);
}

/// An SPI allocated for a negotiation that failed is given back at once
/// (`release_spi`), never one an installed SA has.
#[test]
fn an_allocated_spi_is_given_back_and_an_installed_one_is_not() {
    let (_, mut br) = live_pair();
    br.set_spi_range(0x4000, 0x4001).unwrap();
    let a = br.allocate_spi(T0).unwrap();
    let b = br.allocate_spi(T0).unwrap();
    assert!(br.allocate_spi(T0).is_err(), "both reserved");
    assert!(br.release_spi(a));
    assert!(!br.release_spi(a), "given back once");
    assert_eq!(
        br.allocate_spi(T0).unwrap(),
        a,
        "free again before its reservation ran out"
    );
    // Installed with `b`: not given back, and the SA keeps receiving.
    br.add_sa("b", sa(b, Direction::Inbound, 40), T0).unwrap();
    assert!(!br.release_spi(b));
    assert!(br.sa("b").is_some());
    br.set_spi_range(b, b).unwrap();
    assert!(br.allocate_spi(T0).is_err(), "still in use");
    assert!(!br.release_spi(0x1000), "br-in's SPI");
}

#[test]
fn a_chain_of_rekeys_keeps_the_policy_served() {
    let (mut hq, mut br) = live_pair();
    let (mut out, mut inb) = ("hq-out".to_owned(), "br-in".to_owned());
    for round in 1..=20u32 {
        let spi = 0x10_000 + round;
        let (new_out, new_in) = (format!("hq-out-{round}"), format!("br-in-{round}"));
        br.rekey_sa(&inb, &new_in, sa(spi, Direction::Inbound, 1000 + round), T0)
            .unwrap();
        hq.rekey_sa(
            &out,
            &new_out,
            sa(spi, Direction::Outbound, 1000 + round),
            T0,
        )
        .unwrap();
        hq.delete_sa(&out).unwrap();
        br.delete_sa(&inb).unwrap();
        let (wire, via) = send(&mut hq, &hq_packet(round)).unwrap();
        assert_eq!(via, new_out);
        assert_eq!(
            receive(&mut br, &wire, T0).unwrap(),
            (hq_packet(round), new_in.clone())
        );
        (out, inb) = (new_out, new_in);
    }
    assert_eq!(hq.sas().count(), 2);
    assert_eq!(br.sas().count(), 2);
    // The chain carries the name the policy uses ("hq-out"), not one per rekey: an
    // intermediate name is free again, the policy's name is not.
    hq.add_sa("hq-out-5", sa(0x9000, Direction::Outbound, 3000), T0)
        .unwrap();
    assert_eq!(
        hq.add_sa("hq-out", sa(0x9001, Direction::Outbound, 3001), T0),
        Err(ControlError::DuplicateName {
            name: "hq-out".into()
        })
    );
}

#[test]
fn an_sa_being_retired_does_not_count_as_serving_a_policy() {
    let (_, mut br) = live_pair();
    br.rekey_sa("br-in", "br-in-2", sa(0x1001, Direction::Inbound, 70), T0)
        .unwrap();
    br.retire_sa("br-in", Duration::from_secs(10)).unwrap();
    // The successor is now the only SA that will still serve "rdp" after the grace time.
    assert_eq!(
        br.delete_sa("br-in-2").unwrap_err(),
        ControlError::SaInUse {
            sa: "br-in-2".into(),
            policy: "rdp".into(),
        }
    );
    assert!(br.retire_sa("br-in-2", T0).is_err());
    // Retiring again just moves the time; deleting at once is allowed.
    br.retire_sa("br-in", Duration::from_secs(20)).unwrap();
    br.delete_sa("br-in").unwrap();
    // After a refused delete and a real one, only the successor is left and it serves.
    assert_eq!(
        br.sas().map(|(n, _)| n.to_owned()).collect::<Vec<_>>(),
        ["br-out", "br-in-2"]
    );
}

#[test]
fn a_policy_batch_compiles_on_another_thread_while_packets_flow() {
    let (mut hq, mut br) = live_pair();
    let mut edit = hq.edit_policies();
    edit.install(
        "name = \"web\"\nremote = \"10.1.0.0/24\"\nprotocol = \"tcp\"\nremote_port = 80\naction = \"bypass\"\n",
        Some("deny"),
    )
    .unwrap();
    edit.replace(&rdp_policy(
        "rdp",
        "10.0.0.0/24",
        "10.1.0.0/25",
        ["hq-out", "hq-in"],
    ))
    .unwrap();
    // A refused change inside the batch changes nothing in it.
    assert!(matches!(
        edit.install(
            &rdp_policy("x", "10.0.0.0/24", "10.1.0.0/24", ["nope", "hq-in"]),
            None
        ),
        Err(ControlError::MissingSa { .. })
    ));
    assert_eq!(
        edit.policies().iter().map(|p| p.name()).collect::<Vec<_>>(),
        ["rdp", "web", "deny"]
    );
    let compiling = std::thread::spawn(move || edit.compile());
    // Meanwhile the gateway goes on under the old policies (10.1.0.200 is protected).
    let far = packet([10, 0, 0, 5], [10, 1, 0, 200], 1);
    let (wire, _) = send(&mut hq, &far).unwrap();
    receive(&mut br, &wire, T0).unwrap();
    let compiled = compiling.join().unwrap();
    drop(hq.commit_policies(compiled).unwrap());
    assert_eq!(shape(&hq).0, ["rdp", "web", "deny"]);
    assert_eq!(send(&mut hq, &far).unwrap_err(), Error::PolicyDiscard);

    // An edit of another gateway is refused, even when the generations agree.
    let (_, mut other) = live_pair();
    assert_eq!(
        other
            .commit_policies(hq.edit_policies().compile())
            .unwrap_err(),
        ControlError::StalePolicies
    );

    // An edit taken before another change is stale.
    let stale = hq.edit_policies();
    hq.remove_policy("web").unwrap();
    assert_eq!(
        hq.commit_policies(stale.compile()).unwrap_err(),
        ControlError::StalePolicies
    );
    assert_eq!(shape(&hq).0, ["rdp", "deny"]);

    // An SA deleted while a batch that names it compiles: the commit is refused.
    hq.add_sa("mail-out", sa(0x5000, Direction::Outbound, 80), T0)
        .unwrap();
    let mut edit = hq.edit_policies();
    edit.install(
        "name = \"mail\"\ndirection = \"outbound\"\nremote = \"10.1.0.0/24\"\nprotocol = \"tcp\"\n\
         remote_port = 25\naction = \"protect\"\nsa = \"mail-out\"\n",
        Some("deny"),
    )
    .unwrap();
    hq.delete_sa("mail-out").unwrap();
    assert_eq!(
        hq.commit_policies(edit.compile()).unwrap_err(),
        ControlError::MissingSa {
            policy: "mail".into(),
            sa: "mail-out".into()
        }
    );
    assert_eq!(shape(&hq).0, ["rdp", "deny"]);
}

/// The verdict of `pkt` outbound: the SA or the error.
fn verdict(gw: &mut Gateway, pkt: &[u8]) -> Result<String, Error> {
    let mut buf = vec![0u8; ROOM + pkt.len() + ROOM];
    buf[ROOM..ROOM + pkt.len()].copy_from_slice(pkt);
    let mut p = PacketBuf::new(&mut buf, ROOM, pkt.len())?;
    Ok(match gw.outbound(&mut p, T0)? {
        Outbound::Protected { sa, policy } => format!("protect {sa} {policy}"),
        Outbound::Bypassed { policy } => format!("bypass {policy}"),
        other => format!("{other:?}"),
    })
}

#[test]
fn the_spd_cache_never_answers_from_a_replaced_spd() {
    let (mut cached, _) = live_pair();
    let (mut plain, _) = live_pair();
    // A tiny cache: flows evict each other too.
    cached.set_spd_cache(4);
    assert_eq!(cached.spd_cache_stats().0, 4);
    // Flow 0 and 1 go to 10.1.0.250 and .249: outside the narrowed policies.
    let flows: Vec<Vec<u8>> = (0..40u8)
        .map(|i| packet([10, 0, 0, 5], [10, 1, 0, 250 - i * 6], u32::from(i)))
        .collect();
    let changes = [
        rdp_policy("rdp", "10.0.0.0/24", "10.1.0.0/25", ["hq-out", "hq-in"]),
        rdp_policy("rdp", "10.0.0.0/24", "10.1.0.0/26", ["hq-out", "hq-in"]),
        rdp_policy("rdp", "10.0.0.0/24", "10.1.0.0/24", ["hq-out", "hq-in"]),
    ];
    for round in 0..4 {
        // Each flow twice in a row (a hit), forward then backward: the flows cached
        // last before a change (0 and 1) are the first asked after it.
        for pass in 0..2 {
            let order: Vec<&Vec<u8>> = if pass == 0 {
                flows.iter().collect()
            } else {
                flows.iter().rev().collect()
            };
            for f in order.into_iter().flat_map(|f| [f, f]) {
                assert_eq!(
                    verdict(&mut cached, f),
                    verdict(&mut plain, f),
                    "round {round}"
                );
            }
        }
        if let Some(text) = changes.get(round) {
            cached.replace_policy(text).unwrap();
            plain.replace_policy(text).unwrap();
        }
    }
    // A batch commit empties it too.
    let mut edit = cached.edit_policies();
    edit.remove("rdp").unwrap();
    drop(cached.commit_policies(edit.compile()).unwrap());
    plain.remove_policy("rdp").unwrap();
    for f in &flows {
        assert_eq!(verdict(&mut cached, f), Err(Error::PolicyDiscard));
        assert_eq!(verdict(&mut plain, f), Err(Error::PolicyDiscard));
    }
    let (_, hits, misses) = cached.spd_cache_stats();
    assert!(hits > 0 && misses > 0, "{hits} hits, {misses} misses");
    assert_eq!(plain.spd_cache_stats(), (0, 0, 0));
}

/// After each change the compiled classifier of both directions answers as the plain
/// scan of the policy list does (a change of one direction keeps the other direction's
/// classifier, with the positions after the change moved).
fn assert_classifier_exact(gw: &Gateway) {
    use ipsec_core::Flow;
    let hosts: [[u8; 4]; 4] = [[10, 0, 0, 5], [10, 1, 0, 9], [10, 1, 0, 200], [10, 9, 0, 1]];
    for direction in [Direction::Outbound, Direction::Inbound] {
        for s in hosts {
            for d in hosts {
                for port in [80, 3389, 50000] {
                    let f = Flow::new(direction, s.into(), d.into(), 6).ports(port, port);
                    assert_eq!(gw.spd().lookup(&f), gw.spd().lookup_linear(&f), "{f:?}");
                    assert_eq!(
                        gw.spd().lookup_non_first_fragment(&f),
                        gw.spd().lookup_non_first_fragment_linear(&f),
                        "{f:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn policies_of_one_direction_change_that_direction_only() {
    let (mut hq, mut br) = live_pair();
    assert_classifier_exact(&hq);
    // Outbound only, first in the order: the head office's RDP packets now leave in
    // the clear; what the branch sends still comes in under `rdp`.
    hq.install_policy(
        "name = \"out-clear\"\ndirection = \"outbound\"\nlocal = \"10.0.0.0/24\"\n\
         protocol = \"tcp\"\nlocal_port = 3389\naction = \"bypass\"\n",
        Some("rdp"),
    )
    .unwrap();
    assert_eq!(shape(&hq).0, ["out-clear", "rdp", "deny"]);
    assert_classifier_exact(&hq);
    let mut buf = vec![0u8; ROOM + 40 + ROOM];
    buf[ROOM..ROOM + 40].copy_from_slice(&hq_packet(1));
    let mut p = PacketBuf::new(&mut buf, ROOM, 40).unwrap();
    assert_eq!(
        hq.outbound(&mut p, T0).unwrap(),
        Outbound::Bypassed {
            policy: "out-clear"
        }
    );
    let (wire, _) = send(&mut br, &packet([10, 1, 0, 9], [10, 0, 0, 5], 2)).unwrap();
    let mut inbound = wire.clone();
    let len = inbound.len();
    let mut p = PacketBuf::new(&mut inbound, 0, len).unwrap();
    assert_eq!(
        hq.inbound(&mut p, T0).unwrap(),
        Inbound::Decrypted {
            sa: "hq-in",
            policy: "rdp"
        }
    );
    assert_eq!(
        hq.spd()
            .first_policy_naming("hq-in", Direction::Inbound)
            .map(|p| p.name()),
        Some("rdp")
    );
    // Inbound only, replaced by an outbound one, then removed: each step exact.
    hq.install_policy(
        "name = \"in-web\"\ndirection = \"inbound\"\nremote = \"10.9.0.0/16\"\n\
         protocol = \"tcp\"\naction = \"bypass\"\n",
        Some("deny"),
    )
    .unwrap();
    assert_classifier_exact(&hq);
    hq.replace_policy(
        "name = \"in-web\"\ndirection = \"outbound\"\nremote = \"10.9.0.0/16\"\n\
         protocol = \"tcp\"\naction = \"bypass\"\n",
    )
    .unwrap();
    assert_classifier_exact(&hq);
    hq.remove_policy("out-clear").unwrap();
    assert_classifier_exact(&hq);
    assert_eq!(shape(&hq).0, ["rdp", "in-web", "deny"]);
    let (_, sa) = send(&mut hq, &hq_packet(3)).unwrap();
    assert_eq!(sa, "hq-out");
    hq.remove_policy("in-web").unwrap();
    assert_classifier_exact(&hq);
    assert_eq!(shape(&hq).0, ["rdp", "deny"]);
}

#[test]
fn a_policy_is_checked_against_the_installed_sas_of_each_direction() {
    let (mut hq, _) = live_pair();
    let before = shape(&hq);
    // The SAs swapped: each is installed, in the other direction.
    let err = hq
        .install_policy(
            &rdp_policy("mail", "10.0.0.0/24", "10.1.0.0/24", ["hq-in", "hq-out"]),
            Some("deny"),
        )
        .unwrap_err();
    assert!(
        matches!(&err, ControlError::Config(_))
            && err
                .to_string()
                .contains("SA \"hq-in\" is inbound but this policy needs an outbound SA"),
        "{err}"
    );
    assert_eq!(shape(&hq), before);
    // A successor's inherited name counts for its direction (`hq-in` is served by
    // `hq-in2` too); the names of both directions resolve.
    hq.rekey_sa("hq-in", "hq-in2", sa(0x2001, Direction::Inbound, 7), T0)
        .unwrap();
    hq.delete_sa("hq-in").unwrap();
    hq.install_policy(
        &rdp_policy("mail", "10.0.0.0/24", "10.1.0.0/24", ["hq-out", "hq-in"]),
        Some("deny"),
    )
    .unwrap();
    assert_eq!(shape(&hq).0, ["rdp", "mail", "deny"]);
}

/// A retiring SA counts as gone for the checks of later calls (regression): before,
/// a policy could be installed naming an SA that was already retiring, or the last
/// SA besides a retiring one that served a policy could be deleted; when the
/// retirement time came, the SA was deleted under the policy, which then named an SA
/// that was not installed (its traffic dropped as `policy_discard`, or no SA left to
/// accept it), though no call had been refused.
#[test]
fn a_retiring_sa_takes_no_new_policy_and_is_not_the_last_to_serve_one() {
    let (mut hq, mut br) = live_pair();
    let grace = Duration::from_secs(5);
    // Outbound: "spare" carries no policy, so it may retire; then no policy may name it.
    hq.add_sa("spare", sa(0x3000, Direction::Outbound, 70), T0)
        .unwrap();
    hq.retire_sa("spare", grace).unwrap();
    let before = shape(&hq);
    let mail = "name = \"mail\"\ndirection = \"outbound\"\nremote = \"10.1.0.0/24\"\n\
                protocol = \"tcp\"\nremote_port = 25\naction = \"protect\"\nsa = \"spare\"\n";
    assert_eq!(
        hq.install_policy(mail, Some("rdp")).unwrap_err(),
        ControlError::MissingSa {
            policy: "mail".into(),
            sa: "spare".into(),
        }
    );
    assert_eq!(
        hq.replace_policy(&rdp_policy(
            "rdp",
            "10.0.0.0/24",
            "10.1.0.0/24",
            ["spare", "hq-in"]
        ))
        .unwrap_err(),
        ControlError::MissingSa {
            policy: "rdp".into(),
            sa: "spare".into(),
        }
    );
    assert_eq!(shape(&hq), before);
    assert!(hq.poll_event(grace).is_none());
    assert!(hq.sa("spare").is_none());
    // Inbound: "br-in" retires once "br-in-2" serves "rdp" too; then "br-in-2" is the
    // last SA to serve it and cannot go.
    br.rekey_sa("br-in", "br-in-2", sa(0x1001, Direction::Inbound, 71), T0)
        .unwrap();
    br.retire_sa("br-in", grace).unwrap();
    let before = shape(&br);
    for refused in [
        br.delete_sa("br-in-2").map(drop),
        br.retire_sa("br-in-2", grace),
    ] {
        assert_eq!(
            refused.unwrap_err(),
            ControlError::SaInUse {
                sa: "br-in-2".into(),
                policy: "rdp".into(),
            }
        );
    }
    assert_eq!(shape(&br), before);
    // At the retirement time "br-in" goes; "rdp" is still served.
    assert!(br.poll_event(grace).is_none());
    assert!(br.sa("br-in").is_none());
    hq.rekey_sa(
        "hq-out",
        "hq-out-2",
        sa(0x1001, Direction::Outbound, 71),
        T0,
    )
    .unwrap();
    let (wire, _) = send(&mut hq, &hq_packet(1)).unwrap();
    assert_eq!(
        receive(&mut br, &wire, grace).unwrap(),
        (hq_packet(1), "br-in-2".into())
    );
}

#[test]
fn the_gateway_tailroom_follows_the_outbound_sas_as_they_come_and_go() {
    let mut gw = empty_gateway();
    assert_eq!(
        gw.tailroom_for(40),
        0,
        "no outbound SA, nothing to leave room for"
    );
    // An inbound SA encrypts nothing: it needs no tailroom.
    gw.add_sa("in", sa(0x100, Direction::Inbound, 1), T0)
        .unwrap();
    assert_eq!(gw.tailroom_for(40), 0);
    gw.add_sa("gcm", sa(0x101, Direction::Outbound, 2), T0)
        .unwrap();
    let gcm = (0..1500)
        .map(|len| gw.tailroom_for(len))
        .collect::<Vec<_>>();
    // Of a lone SA: the SA's own figure.
    let lone = ipsec_core::SecurityAssociation::new(sa(0x101, Direction::Outbound, 2), T0).unwrap();
    for (len, &room) in gcm.iter().enumerate() {
        assert_eq!(room, lone.tailroom_for(len), "len {len}");
    }
    // TFC padding to 300 bytes: short packets need far more room, long ones do not.
    let mut padded = sa(0x102, Direction::Outbound, 3);
    padded.tfc_padding(ipsec_core::sa::TfcPadding::PadTo(300));
    let padded_sa = ipsec_core::SecurityAssociation::new(padded.try_clone().unwrap(), T0).unwrap();
    gw.add_sa("tfc", padded, T0).unwrap();
    for len in [0, 40, 299, 300, 301, 1400] {
        assert_eq!(
            gw.tailroom_for(len),
            gcm[len].max(padded_sa.tailroom_for(len)),
            "len {len}"
        );
    }
    assert!(gw.tailroom_for(40) >= 260);
    // Many SAs of one shape leave it as it is; deleting the TFC SA takes its shape away.
    for i in 0..100 {
        gw.add_sa(
            &format!("more{i}"),
            sa(0x200 + i, Direction::Outbound, 10 + i),
            T0,
        )
        .unwrap();
    }
    gw.delete_sa("tfc").unwrap();
    for (len, &room) in gcm.iter().enumerate() {
        assert_eq!(gw.tailroom_for(len), room, "len {len}");
    }
}

#[test]
fn sa_changes_moves_whenever_the_list_of_sas_does() {
    let mut gw = empty_gateway();
    let list = |gw: &Gateway| gw.sas().map(|(n, _)| n.to_owned()).collect::<Vec<_>>();
    let mut seen = vec![(gw.sa_changes(), list(&gw))];
    let mut step = |gw: &Gateway| {
        let now = (gw.sa_changes(), list(gw));
        assert!(
            seen.iter().all(|(c, _)| *c != now.0),
            "the counter moved: {now:?} after {seen:?}"
        );
        seen.push(now);
    };
    gw.add_sa("a", sa(0x100, Direction::Inbound, 1), T0)
        .unwrap();
    step(&gw);
    gw.add_sa("b", sa(0x101, Direction::Outbound, 2), T0)
        .unwrap();
    step(&gw);
    gw.rekey_sa("a", "a2", sa(0x102, Direction::Inbound, 3), T0)
        .unwrap();
    step(&gw);
    gw.delete_sa("b").unwrap();
    step(&gw);
    gw.retire_sa("a", Duration::from_secs(5)).unwrap();
    let before = gw.sa_changes();
    assert!(gw.poll_event(Duration::from_secs(5)).is_none());
    assert!(gw.sa("a").is_none(), "reaped at its time");
    assert_ne!(
        gw.sa_changes(),
        before,
        "a retired SA reaped by the gateway counts"
    );
    // Refused calls and packets change nothing.
    let c = gw.sa_changes();
    assert!(
        gw.add_sa("a2", sa(0x103, Direction::Inbound, 4), T0)
            .is_err()
    );
    assert!(gw.delete_sa("nope").is_err());
    assert_eq!(gw.sa_changes(), c);
}
