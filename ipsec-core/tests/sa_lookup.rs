//! Inbound SA lookup as RFC 4301 §4.1 says: by SPI, or by SPI and destination, or by
//! SPI, destination and source, the longest match first; SAs may share an SPI when
//! their lookup keys differ; a packet whose SPI is known but whose addresses match no
//! SA's key is an unknown SPI.

use ipsec_core::gateway::Inbound;
use ipsec_core::sa::{Direction, Mode};
use ipsec_core::snapshot::SNAPSHOT_VERSION;
use ipsec_core::spd::Spd;
use ipsec_core::{
    Cipher, ControlError, DropReason, Error, Gateway, PacketBuf, RestoreOptions, SaConfig,
    SaLookup, SecurityAssociation, SnapshotError,
};
use std::net::IpAddr;
use std::time::Duration;

const T0: Duration = Duration::ZERO;
const ROOM: usize = 128;
const SPI: u32 = 0x5000;

/// The unicast peer, two multicast groups and a second group sender.
const PEER: &str = "192.0.2.1";
const US: &str = "198.51.100.2";
const GROUP1: &str = "233.252.0.1";
const GROUP2: &str = "233.252.0.2";
const SOURCE2: &str = "198.51.100.7";
const GROUP6: &str = "ff3e::1234";
const SOURCE6: &str = "2001:db8::1";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A 20-byte AES-128-GCM key (16 key + 4 salt) of its own for each `n`.
fn key(n: u32) -> Vec<u8> {
    (0..20u32)
        .map(|i| (n.wrapping_mul(2_654_435_761).rotate_left(i) ^ i) as u8)
        .collect()
}

/// An SA of `spi` between `src` and `dst` (tunnel mode), keyed by `n`.
fn config(dir: Direction, spi: u32, src: &str, dst: &str, n: u32, lookup: SaLookup) -> SaConfig {
    let mut cfg = SaConfig::new(spi, dir, Mode::Tunnel, Cipher::Aes128Gcm, &key(n));
    cfg.tunnel(ip(src), ip(dst)).lookup(lookup);
    cfg
}

fn inbound(src: &str, dst: &str, n: u32, lookup: SaLookup) -> SaConfig {
    config(Direction::Inbound, SPI, src, dst, n, lookup)
}

/// The sender of the packets an inbound SA `n` takes (same SPI, key and endpoints).
fn sender(src: &str, dst: &str, n: u32) -> SecurityAssociation {
    sender_at(src, dst, n, 0)
}

/// [`sender`] whose last sequence number used is `seq` (to reach a receiving SA's
/// replay window with numbers it has not seen).
fn sender_at(src: &str, dst: &str, n: u32, seq: u64) -> SecurityAssociation {
    let mut cfg = config(Direction::Outbound, SPI, src, dst, n, SaLookup::Spi);
    cfg.seq(seq);
    SecurityAssociation::new(cfg, T0).unwrap()
}

/// A gateway with the inbound SAs `sas` (name, config), each with an inbound policy of
/// its own that takes any inner packet, before the final deny-all.
fn gateway(sas: Vec<(&str, SaConfig)>) -> Gateway {
    let deny = "[[policy]]\nname = \"deny\"\ndirection = \"both\"\naction = \"discard\"\n";
    let mut gw = Gateway::new(Spd::from_toml(deny).unwrap(), T0).unwrap();
    for (name, cfg) in sas {
        gw.add_sa(name, cfg, T0).unwrap();
        let policy = format!(
            "name = \"p-{name}\"\ndirection = \"inbound\"\naction = \"protect\"\nsa = \"{name}\"\n"
        );
        gw.install_policy(&policy, Some("deny")).unwrap();
    }
    gw
}

/// A UDP packet 10.0.0.5 -> 239.1.1.1 carrying `tag`.
fn inner(tag: u32) -> Vec<u8> {
    let mut p = vec![0u8; 32];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&32u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 0, 0, 5]);
    p[16..20].copy_from_slice(&[239, 1, 1, 1]);
    p[20..22].copy_from_slice(&5000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5001u16.to_be_bytes());
    p[24..26].copy_from_slice(&12u16.to_be_bytes());
    p[28..32].copy_from_slice(&tag.to_be_bytes());
    p
}

fn seal(sa: &mut SecurityAssociation, tag: u32) -> Vec<u8> {
    let pkt = inner(tag);
    let mut buf = vec![0u8; ROOM + pkt.len() + ROOM];
    buf[ROOM..ROOM + pkt.len()].copy_from_slice(&pkt);
    let mut p = PacketBuf::new(&mut buf, ROOM, pkt.len()).unwrap();
    sa.encrypt(&mut p, T0).unwrap();
    p.data().to_vec()
}

/// `pkt` through `gw`: the SA that decrypted it (and the inner packet is checked).
fn receive(gw: &mut Gateway, pkt: &[u8], tag: u32) -> Result<String, Error> {
    let mut buf = pkt.to_vec();
    let len = buf.len();
    let mut p = PacketBuf::new(&mut buf, 0, len).unwrap();
    let name = match gw.inbound(&mut p, T0)? {
        Inbound::Decrypted { sa, .. } => sa.to_owned(),
        other => panic!("not decrypted: {other:?}"),
    };
    assert_eq!(p.data(), inner(tag));
    Ok(name)
}

#[test]
fn two_groups_with_one_spi_each_get_their_packets() {
    let mut gw = gateway(vec![
        ("g1", inbound(PEER, GROUP1, 1, SaLookup::SpiDestination)),
        ("g2", inbound(PEER, GROUP2, 2, SaLookup::SpiDestination)),
        ("g6", inbound(SOURCE6, GROUP6, 6, SaLookup::SpiDestination)),
    ]);
    let mut to1 = sender(PEER, GROUP1, 1);
    let mut to2 = sender(PEER, GROUP2, 2);
    let mut to6 = sender(SOURCE6, GROUP6, 6);
    for tag in 0..5 {
        assert_eq!(receive(&mut gw, &seal(&mut to1, tag), tag).unwrap(), "g1");
        assert_eq!(receive(&mut gw, &seal(&mut to2, tag), tag).unwrap(), "g2");
        assert_eq!(receive(&mut gw, &seal(&mut to6, tag), tag).unwrap(), "g6");
    }
    for name in ["g1", "g2", "g6"] {
        assert_eq!(gw.sa(name).unwrap().stats().packets, 5, "{name}");
        assert_eq!(gw.sa(name).unwrap().lookup(), SaLookup::SpiDestination);
    }
    assert_eq!(gw.stats().dropped_total(), 0);
}

#[test]
fn the_longest_match_wins() {
    let mut gw = gateway(vec![
        ("unicast", inbound(PEER, US, 1, SaLookup::Spi)),
        ("group", inbound(PEER, GROUP1, 2, SaLookup::SpiDestination)),
        (
            "ssm",
            inbound(SOURCE2, GROUP1, 3, SaLookup::SpiDestinationSource),
        ),
    ]);
    let mut unicast = sender(PEER, US, 1);
    let mut group = sender(PEER, GROUP1, 2);
    let mut ssm = sender(SOURCE2, GROUP1, 3);
    assert_eq!(
        receive(&mut gw, &seal(&mut unicast, 1), 1).unwrap(),
        "unicast"
    );
    assert_eq!(receive(&mut gw, &seal(&mut group, 2), 2).unwrap(), "group");
    assert_eq!(receive(&mut gw, &seal(&mut ssm, 3), 3).unwrap(), "ssm");
    // The SPI-alone SA takes whatever no longer key matches: any destination.
    let mut elsewhere = sender_at(PEER, "203.0.113.9", 1, 100);
    assert_eq!(
        receive(&mut gw, &seal(&mut elsewhere, 4), 4).unwrap(),
        "unicast"
    );
    // The group's packet from another source is the group's (SPI + destination),
    // not the source-specific SA's.
    let mut other_source = sender_at("203.0.113.50", GROUP1, 2, 100);
    assert_eq!(
        receive(&mut gw, &seal(&mut other_source, 5), 5).unwrap(),
        "group"
    );

    // Without the source-specific SA, its packets go to the group SA (whose key does
    // not open them: the ICV fails on the group SA, which proves which SA got them).
    gw.remove_policy("p-ssm").unwrap();
    gw.delete_sa("ssm").unwrap();
    let mut ssm = sender_at(SOURCE2, GROUP1, 3, 200);
    let e = receive(&mut gw, &seal(&mut ssm, 6), 6).unwrap_err();
    assert_eq!(e, Error::AuthenticationFailed);
    assert_eq!(
        gw.sa("group")
            .unwrap()
            .stats()
            .dropped(DropReason::AuthFailed),
        1
    );
    // Without the group SA too, they go to the SPI-alone SA.
    gw.remove_policy("p-group").unwrap();
    gw.delete_sa("group").unwrap();
    let mut group = sender_at(PEER, GROUP1, 2, 300);
    assert_eq!(
        receive(&mut gw, &seal(&mut group, 7), 7).unwrap_err(),
        Error::AuthenticationFailed
    );
    assert_eq!(
        gw.sa("unicast")
            .unwrap()
            .stats()
            .dropped(DropReason::AuthFailed),
        1
    );
}

#[test]
fn a_known_spi_to_the_wrong_destination_is_an_unknown_spi() {
    let mut gw = gateway(vec![
        ("g1", inbound(PEER, GROUP1, 1, SaLookup::SpiDestination)),
        (
            "ssm",
            inbound(SOURCE2, GROUP2, 2, SaLookup::SpiDestinationSource),
        ),
    ]);
    // Right key, wrong destination: the packet never reaches the SA.
    let mut astray = sender(PEER, GROUP2, 1);
    assert_eq!(
        receive(&mut gw, &seal(&mut astray, 1), 1).unwrap_err(),
        Error::UnknownSpi { spi: SPI }
    );
    // The right group from the wrong source.
    let mut spoofed = sender(PEER, GROUP2, 2);
    assert_eq!(
        receive(&mut gw, &seal(&mut spoofed, 2), 2).unwrap_err(),
        Error::UnknownSpi { spi: SPI }
    );
    // Another address family.
    let mut v6 = sender(SOURCE6, GROUP6, 1);
    assert_eq!(
        receive(&mut gw, &seal(&mut v6, 3), 3).unwrap_err(),
        Error::UnknownSpi { spi: SPI }
    );
    assert_eq!(gw.stats().dropped(DropReason::UnknownSpi), 3);
    assert_eq!(gw.stats().dropped_total(), 3);
    for name in ["g1", "ssm"] {
        assert_eq!(gw.sa(name).unwrap().stats().dropped_total(), 0);
        assert_eq!(gw.sa(name).unwrap().stats().packets, 0);
    }
}

#[test]
fn only_colliding_keys_are_duplicates() {
    let mut gw = gateway(vec![
        ("unicast", inbound(PEER, US, 1, SaLookup::Spi)),
        ("g1", inbound(PEER, GROUP1, 2, SaLookup::SpiDestination)),
        (
            "ssm",
            inbound(PEER, GROUP1, 3, SaLookup::SpiDestinationSource),
        ),
    ]);
    let dup = |gw: &mut Gateway, cfg: SaConfig, with: &str| {
        let before = gw.sas().count();
        assert_eq!(
            gw.add_sa("new", cfg, T0),
            Err(ControlError::DuplicateSpi {
                spi: SPI,
                sa: with.to_owned()
            })
        );
        assert_eq!(gw.sas().count(), before);
    };
    // SPI alone, and SPI + protocol (always ESP here): one key.
    dup(&mut gw, inbound(PEER, US, 10, SaLookup::Spi), "unicast");
    dup(
        &mut gw,
        inbound(PEER, US, 11, SaLookup::SpiProtocol),
        "unicast",
    );
    // The SPI-alone key ignores the endpoints: another tunnel does not help.
    dup(&mut gw, inbound(US, GROUP2, 12, SaLookup::Spi), "unicast");
    // The same group; the same group and source.
    dup(
        &mut gw,
        inbound(SOURCE2, GROUP1, 13, SaLookup::SpiDestination),
        "g1",
    );
    dup(
        &mut gw,
        inbound(PEER, GROUP1, 14, SaLookup::SpiDestinationSource),
        "ssm",
    );
    // Different keys are welcome.
    gw.add_sa(
        "g2",
        inbound(PEER, GROUP2, 15, SaLookup::SpiDestination),
        T0,
    )
    .unwrap();
    gw.add_sa(
        "ssm2",
        inbound(SOURCE2, GROUP1, 16, SaLookup::SpiDestinationSource),
        T0,
    )
    .unwrap();
    // Another SPI, any key.
    gw.add_sa(
        "other",
        config(Direction::Inbound, SPI + 1, PEER, US, 17, SaLookup::Spi),
        T0,
    )
    .unwrap();
    // Outbound SAs are not looked up: they may share SPIs and endpoints.
    gw.add_sa(
        "out",
        config(Direction::Outbound, SPI, US, PEER, 18, SaLookup::Spi),
        T0,
    )
    .unwrap();
}

#[test]
fn deleting_one_sa_of_an_spi_keeps_the_others() {
    let mut gw = gateway(vec![
        ("unicast", inbound(PEER, US, 1, SaLookup::Spi)),
        ("g1", inbound(PEER, GROUP1, 2, SaLookup::SpiDestination)),
        ("g2", inbound(PEER, GROUP2, 3, SaLookup::SpiDestination)),
    ]);
    let (mut unicast, mut g2) = (sender(PEER, US, 1), sender(PEER, GROUP2, 3));
    gw.remove_policy("p-g1").unwrap();
    gw.delete_sa("g1").unwrap();
    assert_eq!(receive(&mut gw, &seal(&mut g2, 1), 1).unwrap(), "g2");
    assert_eq!(
        receive(&mut gw, &seal(&mut unicast, 2), 2).unwrap(),
        "unicast"
    );
    // g1's packets now go to the SPI-alone SA, whose key does not open them.
    let mut g1 = sender_at(PEER, GROUP1, 2, 100);
    assert_eq!(
        receive(&mut gw, &seal(&mut g1, 3), 3).unwrap_err(),
        Error::AuthenticationFailed
    );
    gw.remove_policy("p-unicast").unwrap();
    gw.delete_sa("unicast").unwrap();
    assert_eq!(receive(&mut gw, &seal(&mut g2, 4), 4).unwrap(), "g2");
    assert_eq!(
        receive(&mut gw, &seal(&mut unicast, 5), 5).unwrap_err(),
        Error::UnknownSpi { spi: SPI }
    );
    // The deleted keys are free again: g1 comes back, then a new SPI-alone SA.
    gw.add_sa("g1", inbound(PEER, GROUP1, 2, SaLookup::SpiDestination), T0)
        .unwrap();
    gw.add_sa("unicast2", inbound(PEER, US, 4, SaLookup::Spi), T0)
        .unwrap();
    // The SPI stays in use while any SA has it: allocate_spi never returns it.
    gw.set_spi_range(SPI, SPI).unwrap();
    assert!(gw.allocate_spi(T0).is_err());
    for name in ["g1", "unicast2"] {
        gw.delete_sa(name).unwrap();
        assert!(gw.allocate_spi(T0).is_err(), "g2 still has the SPI");
    }
    gw.remove_policy("p-g2").unwrap();
    gw.delete_sa("g2").unwrap();
    assert_eq!(gw.allocate_spi(T0).unwrap(), SPI);
}

#[test]
fn a_retired_group_sa_leaves_its_packets_to_the_next_match() {
    let mut gw = gateway(vec![
        ("unicast", inbound(PEER, US, 1, SaLookup::Spi)),
        ("g1", inbound(PEER, GROUP1, 2, SaLookup::SpiDestination)),
    ]);
    gw.remove_policy("p-g1").unwrap();
    gw.retire_sa("g1", Duration::from_secs(5)).unwrap();
    let mut g1 = sender(PEER, GROUP1, 2);
    assert_eq!(
        receive(&mut gw, &seal(&mut g1, 1), 1).unwrap_err(),
        Error::PolicyMismatch
    );
    // At the retirement time the packet goes to the SPI-alone SA (wrong key).
    let pkt = seal(&mut sender_at(PEER, GROUP1, 2, 100), 2);
    let mut buf = pkt.clone();
    let len = buf.len();
    let mut p = PacketBuf::new(&mut buf, 0, len).unwrap();
    assert_eq!(
        gw.inbound(&mut p, Duration::from_secs(5)).unwrap_err(),
        Error::AuthenticationFailed
    );
    assert!(gw.sa("g1").is_none());
    assert_eq!(
        gw.sa("unicast")
            .unwrap()
            .stats()
            .dropped(DropReason::AuthFailed),
        1
    );
}

#[test]
fn lookups_that_cannot_work_are_refused() {
    let field = |cfg: SaConfig| SecurityAssociation::new(cfg, T0).unwrap_err().to_string();
    // Outbound SAs are not looked up.
    let e = field(config(
        Direction::Outbound,
        SPI,
        PEER,
        GROUP1,
        1,
        SaLookup::SpiDestination,
    ));
    assert!(
        e.starts_with("lookup: \"spi+destination\" given for an outbound SA"),
        "{e}"
    );
    // An address lookup needs the tunnel endpoints: transport mode has none.
    let mut transport = SaConfig::new(
        SPI,
        Direction::Inbound,
        Mode::Transport,
        Cipher::Aes128Gcm,
        &key(1),
    );
    transport.lookup(SaLookup::SpiDestination);
    let e = field(transport);
    assert!(e.starts_with("lookup: \"spi+destination\" compares"), "{e}");
    let mut no_endpoints = SaConfig::new(
        SPI,
        Direction::Inbound,
        Mode::Tunnel,
        Cipher::Aes128Gcm,
        &key(1),
    );
    no_endpoints.lookup(SaLookup::SpiDestinationSource);
    assert!(field(no_endpoints).starts_with("lookup: "));
    // SPI + protocol needs nothing more.
    let mut transport = SaConfig::new(
        SPI,
        Direction::Inbound,
        Mode::Transport,
        Cipher::Aes128Gcm,
        &key(1),
    );
    transport.lookup(SaLookup::SpiProtocol);
    SecurityAssociation::new(transport, T0).unwrap();
    // Names.
    for l in [
        SaLookup::Spi,
        SaLookup::SpiProtocol,
        SaLookup::SpiDestination,
        SaLookup::SpiDestinationSource,
    ] {
        assert_eq!(SaLookup::from_name(l.name()).unwrap(), l);
    }
    assert_eq!(SaLookup::default(), SaLookup::Spi);
    assert!(SaLookup::from_name("destination").is_err());
}

const KEY1: &str = "00112233445566778899aabbccddeeff01020304";
const KEY2: &str = "ffeeddccbbaa99887766554433221100a1a2a3a4";

fn file_sa(name: &str, key: &str, dst: &str, lookup: &str) -> String {
    format!(
        "[[sa]]\nname = \"{name}\"\nspi = {SPI}\ndirection = \"inbound\"\nmode = \"tunnel\"\n\
         cipher = \"aes-128-gcm\"\nkey = \"{key}\"\ntunnel_src = \"{PEER}\"\n\
         tunnel_dst = \"{dst}\"\n{lookup}"
    )
}

const FILE_POLICIES: &str = "[[policy]]\nname = \"g1\"\ndirection = \"inbound\"\naction = \"protect\"\n\
     sa = \"g1\"\n[[policy]]\nname = \"g2\"\ndirection = \"inbound\"\naction = \"protect\"\n\
     sa = \"g2\"\n[[policy]]\nname = \"deny\"\naction = \"discard\"\n";

#[test]
fn the_sa_file_key() {
    let text = format!(
        "{FILE_POLICIES}{}{}",
        file_sa("g1", KEY1, GROUP1, "lookup = \"spi+destination\"\n"),
        file_sa("g2", KEY2, GROUP2, "lookup = \"SPI+Destination\"\n"),
    );
    let mut gw = Gateway::new(Spd::from_toml(&text).unwrap(), T0).unwrap();
    assert_eq!(gw.sa("g2").unwrap().lookup(), SaLookup::SpiDestination);
    let mut cfg = SaConfig::new(
        SPI,
        Direction::Outbound,
        Mode::Tunnel,
        Cipher::Aes128Gcm,
        &hex(KEY2),
    );
    cfg.tunnel(ip(PEER), ip(GROUP2));
    let mut to2 = SecurityAssociation::new(cfg, T0).unwrap();
    assert_eq!(receive(&mut gw, &seal(&mut to2, 9), 9).unwrap(), "g2");

    // Without the key: the SPI alone, and then the two SAs collide.
    let text = format!(
        "{FILE_POLICIES}{}{}",
        file_sa("g1", KEY1, GROUP1, ""),
        file_sa("g2", KEY2, GROUP2, "lookup = \"spi\"\n"),
    );
    let e = Spd::from_toml(&text).unwrap_err().to_string();
    assert!(
        e.contains("sa \"g2\": spi: inbound sa \"g1\" already has SPI 0x00005000"),
        "{e}"
    );
    // A bad value names the SA and the key.
    let text = format!(
        "{FILE_POLICIES}{}{}",
        file_sa("g1", KEY1, GROUP1, "lookup = \"destination\"\n"),
        file_sa("g2", KEY2, GROUP2, ""),
    );
    let e = Spd::from_toml(&text).unwrap_err().to_string();
    assert!(e.contains("sa \"g1\": lookup: expected \"spi\""), "{e}");
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn snapshots_keep_the_lookup_and_old_ones_still_restore() {
    let options = RestoreOptions::default();
    // SPI alone: version 1, byte for byte the format older libraries write and read.
    let plain = SecurityAssociation::new(inbound(PEER, US, 1, SaLookup::Spi), T0).unwrap();
    let snap = plain.snapshot(T0);
    assert_eq!(&snap.as_bytes()[8..10], &1u16.to_be_bytes());
    let restored = SecurityAssociation::restore(snap.as_bytes(), &options, T0).unwrap();
    assert_eq!(restored.lookup(), SaLookup::Spi);

    // Any other lookup: version 2, one byte more at the end.
    for (n, lookup) in [
        (2, SaLookup::SpiProtocol),
        (3, SaLookup::SpiDestination),
        (4, SaLookup::SpiDestinationSource),
    ] {
        let sa = SecurityAssociation::new(inbound(PEER, GROUP1, n, lookup), T0).unwrap();
        let snap = sa.snapshot(T0);
        let bytes = snap.as_bytes();
        assert_eq!(&bytes[8..10], &SNAPSHOT_VERSION.to_be_bytes());
        assert_eq!(SNAPSHOT_VERSION, 2);
        assert_eq!(bytes.len(), plain.snapshot(T0).as_bytes().len() + 1);
        let restored = SecurityAssociation::restore(bytes, &options, T0).unwrap();
        assert_eq!(restored.lookup(), lookup);
        assert_eq!(restored.tunnel(), Some((ip(PEER), ip(GROUP1))));
        // A restored group SA installs with its key, and collides with its original.
        let mut gw = gateway(vec![("orig", inbound(PEER, GROUP1, n + 10, lookup))]);
        let cfg = inbound(PEER, GROUP1, n + 20, lookup);
        assert!(matches!(
            gw.add_sa("again", cfg, T0),
            Err(ControlError::DuplicateSpi { .. })
        ));
        // An unknown lookup value is refused.
        let mut bad = bytes.to_vec();
        *bad.last_mut().unwrap() = 4;
        assert!(matches!(
            SecurityAssociation::restore(&bad, &options, T0),
            Err(SnapshotError::BadField {
                field: "lookup",
                ..
            })
        ));
        // A version 2 snapshot relabelled version 1 has a byte too many.
        let mut relabelled = bytes.to_vec();
        relabelled[9] = 1;
        assert!(matches!(
            SecurityAssociation::restore(&relabelled, &options, T0),
            Err(SnapshotError::BadLength { .. })
        ));
    }
}
