//! The SPD and the SAD together: a branch gateway and a head-office gateway built from
//! mirrored policy files, exchanging real packets (RFC 4301 §5: outbound policy,
//! inbound SA lookup by SPI, the post-decryption selector check, and cleartext that a
//! PROTECT policy covers), and ESP packets fragmented on the way (outer fragments).

use ipsec_core::gateway::{Inbound, Outbound};
use ipsec_core::sa_file::parse_sa_file;
use ipsec_core::spd::Spd;
use ipsec_core::{
    DropReason, Error, FragmentError, Gateway, LifetimeLimit, PacketBuf, ReassemblyLimits, SaEvent,
    SecurityAssociation, SpiAllocator, SpiError,
};
use std::time::Duration;

const T0: Duration = Duration::ZERO;
const K1: &str = "000102030405060708090a0b0c0d0e0f10111213";
const K2: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3";

fn hq_toml() -> String {
    format!(
        r#"
[[policy]]
name = "ike"
direction = "both"
local = "192.0.2.1"
remote = "198.51.100.2"
protocol = "udp"
local_port = 500
remote_port = 500
action = "bypass"

[[policy]]
name = "rdp"
direction = "both"
local = "10.0.0.0/24"
remote = "10.1.0.0/24"
protocol = "tcp"
local_port = 3389
action = "protect"
sa = ["hq-out", "hq-in"]

[[policy]]
name = "deny"
direction = "both"
action = "discard"

[[sa]]
name = "hq-out"
spi = 0x1001
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "{K1}"
tunnel_src = "192.0.2.1"
tunnel_dst = "198.51.100.2"

[[sa]]
name = "hq-in"
spi = 0x2001
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "{K2}"
"#
    )
}

fn branch_toml() -> String {
    format!(
        r#"
[[policy]]
name = "rdp"
direction = "both"
local = "10.1.0.0/24"
remote = "10.0.0.0/24"
protocol = "tcp"
remote_port = 3389
action = "protect"
sa = ["br-out", "br-in"]

[[policy]]
name = "deny"
direction = "both"
action = "discard"

[[sa]]
name = "br-out"
spi = 0x2001
direction = "outbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "{K2}"
tunnel_src = "198.51.100.2"
tunnel_dst = "192.0.2.1"

[[sa]]
name = "br-in"
spi = 0x1001
direction = "inbound"
mode = "tunnel"
cipher = "aes-128-gcm"
key = "{K1}"
"#
    )
}

fn gateways() -> (Gateway, Gateway) {
    let hq = Gateway::new(Spd::from_toml(&hq_toml()).expect("hq policy"), T0).expect("hq SAs");
    let br = Gateway::new(Spd::from_toml(&branch_toml()).expect("branch policy"), T0)
        .expect("branch SAs");
    (hq, br)
}

/// An IPv4 TCP or UDP packet with a 16-byte payload.
fn packet(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    let mut p = vec![0u8; 20 + 20 + 16];
    let len = p.len() as u16;
    p[0] = 0x45;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    ipsec_core::packet::set_ipv4_checksum(&mut p[..20]);
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[32] = 0x50;
    p[40..].copy_from_slice(b"remote desktop..");
    p
}

/// Runs `f` on `pkt` placed with room around it; returns the result and the bytes.
fn with_buf<R>(pkt: &[u8], f: impl FnOnce(&mut PacketBuf<'_>) -> R) -> (R, Vec<u8>) {
    let mut storage = vec![0u8; pkt.len() + 256];
    storage[128..128 + pkt.len()].copy_from_slice(pkt);
    let mut p = PacketBuf::new(&mut storage, 128, pkt.len()).expect("in bounds");
    let r = f(&mut p);
    let out = p.data().to_vec();
    (r, out)
}

#[test]
fn protected_flow_is_encrypted_at_the_branch_and_decrypted_at_head_office() {
    let (mut hq, mut br) = gateways();
    let rdp = packet([10, 1, 0, 5], [10, 0, 0, 10], 6, 50000, 3389);
    let (r, wire) = with_buf(&rdp, |p| {
        br.outbound(p, T0).map(|o| {
            o == Outbound::Protected {
                sa: "br-out",
                policy: "rdp",
            }
        })
    });
    assert_eq!(r, Ok(true));
    assert_eq!(wire[9], 50, "ESP on the wire");
    assert!(
        !wire.windows(16).any(|w| w == b"remote desktop.."),
        "payload hidden"
    );
    let (r, inner) = with_buf(&wire, |p| {
        hq.inbound(p, T0).map(|i| {
            i == Inbound::Decrypted {
                sa: "hq-in",
                policy: "rdp",
            }
        })
    });
    assert_eq!(r, Ok(true));
    assert_eq!(inner, rdp);
    assert_eq!(hq.sa("hq-in").unwrap().stats().packets, 1);

    // And the reply goes back the other way.
    let reply = packet([10, 0, 0, 10], [10, 1, 0, 5], 6, 3389, 50000);
    let (r, wire) = with_buf(&reply, |p| {
        hq.outbound(p, T0).map(|o| {
            o == Outbound::Protected {
                sa: "hq-out",
                policy: "rdp",
            }
        })
    });
    assert_eq!(r, Ok(true));
    let (r, inner) = with_buf(&wire, |p| br.inbound(p, T0).is_ok());
    assert!(r);
    assert_eq!(inner, reply);
}

#[test]
fn discarded_flow_never_leaves_and_is_counted() {
    let (_, mut br) = gateways();
    let telnet = packet([10, 1, 0, 5], [10, 0, 0, 10], 6, 50000, 23);
    let (r, out) = with_buf(&telnet, |p| br.outbound(p, T0).map(|_| ()));
    assert_eq!(r, Err(Error::PolicyDiscard));
    assert_eq!(out, telnet, "a refused packet is left as it was");
    assert_eq!(br.stats().dropped(DropReason::PolicyDiscard), 1);
}

#[test]
fn inner_packet_outside_the_sa_policy_is_a_policy_mismatch() {
    let (mut hq, _) = gateways();
    // An attacker who holds the branch SA's key (or a misconfigured peer) sends traffic
    // the SA was not negotiated for: source 10.9.9.9 is not the branch subnet.
    let cfg = parse_sa_file(&branch_toml())
        .unwrap()
        .into_iter()
        .find(|s| s.name == "br-out")
        .unwrap()
        .config;
    let mut rogue = SecurityAssociation::new(cfg, T0).unwrap();
    let off_policy = packet([10, 9, 9, 9], [10, 0, 0, 10], 6, 50000, 3389);
    let (r, wire) = with_buf(&off_policy, |p| rogue.encrypt(p, T0));
    assert_eq!(r, Ok(()));
    let (r, _) = with_buf(&wire, |p| hq.inbound(p, T0).map(|_| ()));
    assert_eq!(r, Err(Error::PolicyMismatch));
    let sa = hq.sa("hq-in").unwrap();
    assert_eq!(sa.stats().dropped(DropReason::PolicyMismatch), 1);
    assert_eq!(sa.stats().packets, 0, "not counted as delivered");
}

#[test]
fn cleartext_that_should_have_been_protected_is_dropped() {
    let (mut hq, _) = gateways();
    let rdp = packet([10, 1, 0, 5], [10, 0, 0, 10], 6, 50000, 3389);
    let (r, _) = with_buf(&rdp, |p| hq.inbound(p, T0).map(|_| ()));
    assert_eq!(r, Err(Error::UnprotectedTraffic));
    assert_eq!(hq.stats().dropped(DropReason::PolicyMismatch), 1);
}

#[test]
fn ike_is_bypassed_and_unknown_spis_are_counted() {
    let (mut hq, _) = gateways();
    let ike = packet([198, 51, 100, 2], [192, 0, 2, 1], 17, 500, 500);
    let (r, out) = with_buf(&ike, |p| {
        hq.inbound(p, T0)
            .map(|i| i == Inbound::Bypassed { policy: "ike" })
    });
    assert_eq!(r, Ok(true));
    assert_eq!(out, ike);

    let mut esp = packet([198, 51, 100, 2], [192, 0, 2, 1], 50, 0, 0);
    esp[20..24].copy_from_slice(&0x0bad_0001u32.to_be_bytes());
    let (r, _) = with_buf(&esp, |p| hq.inbound(p, T0).map(|_| ()));
    assert_eq!(r, Err(Error::UnknownSpi { spi: 0x0bad_0001 }));
    assert_eq!(hq.stats().dropped(DropReason::UnknownSpi), 1);
}

#[test]
fn duplicate_inbound_spis_are_refused() {
    let doubled = format!(
        "{}\n[[sa]]\nname = \"hq-in-again\"\nspi = 0x2001\ndirection = \"inbound\"\n\
         mode = \"tunnel\"\ncipher = \"aes-128-gcm\"\nkey = \"{}\"\n",
        hq_toml(),
        "c0".repeat(20)
    );
    // Loading the SPD runs every check creating the gateway's SAs would run
    // (`ipsec_core::sa_set`), so an SPD whose SAs cannot all exist does not load.
    let err = Spd::from_toml(&doubled).unwrap_err();
    assert!(err.field().contains("hq-in-again"), "{err}");
    assert!(err.message().contains("0x00002001"), "{err}");
    assert!(
        err.message().contains("\"hq-in\""),
        "names the first SA: {err}"
    );
}

#[test]
fn lifetime_events_of_every_sa_are_polled_with_their_names() {
    let text = hq_toml().replace(
        "tunnel_dst = \"198.51.100.2\"",
        "tunnel_dst = \"198.51.100.2\"\nsoft_lifetime = { seconds = 10 }\nhard_lifetime = { seconds = 20 }",
    );
    let mut hq = Gateway::new(Spd::from_toml(&text).expect("valid policy"), T0).expect("SAs");
    assert_eq!(hq.poll_event(Duration::from_secs(9)), None);
    assert_eq!(
        hq.poll_event(Duration::from_secs(10)),
        Some(("hq-out", SaEvent::Rekey(LifetimeLimit::Time)))
    );
    assert_eq!(
        hq.poll_event(Duration::from_secs(11)),
        None,
        "each event once"
    );
    assert_eq!(
        hq.poll_event(Duration::from_secs(20)),
        Some(("hq-out", SaEvent::Expired(LifetimeLimit::Time)))
    );
    assert_eq!(hq.poll_event(Duration::from_secs(21)), None);
    assert!(hq.sa("hq-out").is_some_and(SecurityAssociation::is_expired));
    assert!(hq.sa("hq-in").is_some_and(|sa| !sa.is_expired()));
}

#[test]
fn allocated_spis_never_collide_with_inbound_sas_or_each_other() {
    let (mut hq, _) = gateways();
    // Full range: random, valid and distinct.
    let spis: Vec<u32> = (0..200)
        .map(|_| hq.allocate_spi(T0).expect("free SPIs"))
        .collect();
    assert!(spis.iter().all(|&s| s >= 256 && s != 0x2001));
    let distinct: std::collections::HashSet<u32> = spis.iter().copied().collect();
    assert_eq!(distinct.len(), spis.len());
    // A range of four around hq-in's SPI (0x2001): the other three come out, then none.
    hq.set_spi_range(0x2000, 0x2003).expect("valid range");
    let mut got: Vec<u32> = (0..3).map(|_| hq.allocate_spi(T0).expect("free")).collect();
    got.sort_unstable();
    assert_eq!(got, [0x2000, 0x2002, 0x2003]);
    assert_eq!(
        hq.allocate_spi(T0),
        Err(SpiError::Exhausted {
            min: 0x2000,
            max: 0x2003
        })
    );
    // Reservations run out on the caller's clock; hq-in's SPI stays taken.
    let later = T0 + SpiAllocator::DEFAULT_RESERVATION;
    let mut again: Vec<u32> = (0..3)
        .map(|_| hq.allocate_spi(later).expect("free"))
        .collect();
    again.sort_unstable();
    assert_eq!(again, [0x2000, 0x2002, 0x2003]);
    // Bad ranges are refused and change nothing.
    let e = hq.set_spi_range(100, 0x3000).unwrap_err();
    assert_eq!(e.field(), "spi_min", "{e}");
    let e = hq.set_spi_range(0x3000, 0x2000).unwrap_err();
    assert_eq!(e.field(), "spi_max", "{e}");
    assert!(
        hq.allocate_spi(later).is_err(),
        "still the full four-SPI range"
    );
}

/// The IPv4 packet `pkt` (20-byte header) cut into fragments of `size` payload bytes
/// (a multiple of 8), identification `id`.
fn fragment_v4(pkt: &[u8], size: usize, id: u16) -> Vec<Vec<u8>> {
    let payload = &pkt[20..];
    payload
        .chunks(size)
        .enumerate()
        .map(|(i, chunk)| {
            let mut f = pkt[..20].to_vec();
            f[2..4].copy_from_slice(&((20 + chunk.len()) as u16).to_be_bytes());
            f[4..6].copy_from_slice(&id.to_be_bytes());
            let last = (i + 1) * size >= payload.len();
            let field = ((i * size / 8) as u16) | if last { 0 } else { 0x2000 };
            f[6..8].copy_from_slice(&field.to_be_bytes());
            ipsec_core::packet::set_ipv4_checksum(&mut f[..20]);
            f.extend_from_slice(chunk);
            f
        })
        .collect()
}

/// The ESP of the IPv4 packet `esp` in an IPv6 outer header, cut into fragments of
/// `size` payload bytes behind a Fragment header.
fn fragment_v6(esp: &[u8], size: usize, id: u32) -> Vec<Vec<u8>> {
    let payload = &esp[20..];
    let mut head = vec![0u8; 40];
    head[0] = 0x60;
    head[6] = 44;
    head[7] = 64;
    head[8..10].copy_from_slice(&[0x20, 0x01]);
    head[24..26].copy_from_slice(&[0x20, 0x01]);
    head[39] = 1;
    payload
        .chunks(size)
        .enumerate()
        .map(|(i, chunk)| {
            let mut f = head.clone();
            f[4..6].copy_from_slice(&((8 + chunk.len()) as u16).to_be_bytes());
            let more = (i + 1) * size < payload.len();
            let off_m = (((i * size / 8) as u16) << 3) | u16::from(more);
            f.extend_from_slice(&[50, 0]);
            f.extend_from_slice(&off_m.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
            f.extend_from_slice(chunk);
            f
        })
        .collect()
}

/// A 1,400-byte RDP packet from the branch, encrypted by the branch gateway.
fn big_rdp_esp(br: &mut Gateway) -> (Vec<u8>, Vec<u8>) {
    let mut rdp = packet([10, 1, 0, 5], [10, 0, 0, 10], 6, 50000, 3389);
    rdp.resize(1400, 0x5a);
    rdp[2..4].copy_from_slice(&1400u16.to_be_bytes());
    ipsec_core::packet::set_ipv4_checksum(&mut rdp[..20]);
    let (r, esp) = with_buf(&rdp, |p| br.outbound(p, T0).map(|_| ()));
    assert_eq!(r, Ok(()));
    (rdp, esp)
}

/// `hq.inbound` of one fragment in a buffer with room for a whole datagram.
fn inbound_fragment(hq: &mut Gateway, f: &[u8], now: Duration) -> (Result<String, Error>, Vec<u8>) {
    let mut storage = vec![0u8; 64 + 2048];
    storage[64..64 + f.len()].copy_from_slice(f);
    let mut p = PacketBuf::new(&mut storage, 64, f.len()).expect("in bounds");
    let r = hq.inbound(&mut p, now).map(|i| format!("{i:?}"));
    let out = p.data().to_vec();
    (r, out)
}

#[test]
fn outer_esp_fragments_are_reassembled_then_decrypted() {
    let (mut hq, mut br) = gateways();
    let (rdp, esp) = big_rdp_esp(&mut br);
    let (_, esp2) = big_rdp_esp(&mut br); // the next sequence number
    let decrypted = format!(
        "{:?}",
        Inbound::Decrypted {
            sa: "hq-in",
            policy: "rdp"
        }
    );
    let reassembling = format!("{:?}", Inbound::Reassembling);
    for (family, frags) in [
        ("IPv4", fragment_v4(&esp, 576, 0x77)),
        ("IPv6", fragment_v6(&esp2, 512, 0x77)),
    ] {
        assert_eq!(frags.len(), 3, "{family}");
        // Out of order: the last fragment first.
        for f in [&frags[2], &frags[0]] {
            let (r, out) = inbound_fragment(&mut hq, f, T0);
            assert_eq!(r.as_deref(), Ok(reassembling.as_str()), "{family}");
            assert_eq!(
                &out, f,
                "{family}: a held fragment's buffer is left as it was"
            );
        }
        let (r, inner) = inbound_fragment(&mut hq, &frags[1], T0);
        assert_eq!(r.as_deref(), Ok(decrypted.as_str()), "{family}");
        assert_eq!(inner, rdp, "{family}: the inner packet comes back");
    }
    assert_eq!(hq.reassembler().stats().packets, 2);
    assert_eq!(hq.sa("hq-in").unwrap().stats().packets, 2);
    assert_eq!(hq.stats().dropped_total(), 0);
    assert_eq!(hq.sa("hq-in").unwrap().stats().dropped_total(), 0);
    assert_eq!(hq.reassembler().held_bytes(), 0);
}

#[test]
fn outer_fragment_drops_are_counted_on_the_gateway() {
    let (mut hq, mut br) = gateways();
    let (_, esp) = big_rdp_esp(&mut br);
    let frags = fragment_v4(&esp, 576, 0x99);

    // A duplicate drops only itself; an overlap drops the datagram.
    assert!(inbound_fragment(&mut hq, &frags[0], T0).0.is_ok());
    let (r, _) = inbound_fragment(&mut hq, &frags[0], T0);
    assert_eq!(r, Err(Error::Fragment(FragmentError::Duplicate)));
    let mut forged = frags[1].clone();
    forged[6..8].copy_from_slice(&(0x2000u16 | 8).to_be_bytes()); // offset 64: overlaps
    ipsec_core::packet::set_ipv4_checksum(&mut forged[..20]);
    let (r, _) = inbound_fragment(&mut hq, &forged, T0);
    assert_eq!(r, Err(Error::Fragment(FragmentError::Overlap)));
    assert_eq!(hq.stats().dropped(DropReason::FragmentDuplicate), 1);
    assert_eq!(hq.stats().dropped(DropReason::FragmentOverlap), 2);

    // A datagram that does not complete in time.
    assert!(inbound_fragment(&mut hq, &frags[0], T0).0.is_ok());
    assert!(inbound_fragment(&mut hq, &frags[1], T0).0.is_ok());
    assert_eq!(hq.expire_fragments(Duration::from_secs(29)), 0);
    assert_eq!(hq.expire_fragments(Duration::from_secs(30)), 2);
    assert_eq!(hq.stats().dropped(DropReason::FragmentTimeout), 2);

    // Limits have a setter; a fragment over one is refused and counted.
    hq.set_reassembly_limits(ReassemblyLimits::DEFAULT.with_max_fragments(1));
    assert!(inbound_fragment(&mut hq, &frags[0], T0).0.is_ok());
    let (r, _) = inbound_fragment(&mut hq, &frags[1], T0);
    assert_eq!(r, Err(Error::Fragment(FragmentError::Limit)));
    assert_eq!(hq.stats().dropped(DropReason::FragmentLimit), 1);
    assert_eq!(
        hq.set_reassembly_limits(ReassemblyLimits::DEFAULT.with_max_datagrams(0)),
        1
    );
    assert_eq!(hq.stats().dropped(DropReason::FragmentLimit), 2);
    // The SA saw none of it.
    assert_eq!(hq.sa("hq-in").unwrap().stats().dropped_total(), 0);
}

#[test]
fn a_reassembled_datagram_that_does_not_fit_is_refused_and_can_be_offered_again() {
    let (mut hq, mut br) = gateways();
    let (rdp, esp) = big_rdp_esp(&mut br);
    let frags = fragment_v4(&esp, 576, 0x55);
    assert!(inbound_fragment(&mut hq, &frags[0], T0).0.is_ok());
    assert!(inbound_fragment(&mut hq, &frags[1], T0).0.is_ok());
    let last = &frags[2];
    let mut small = vec![0u8; 64 + last.len() + 100];
    small[64..64 + last.len()].copy_from_slice(last);
    let mut p = PacketBuf::new(&mut small, 64, last.len()).expect("in bounds");
    let r = hq.inbound(&mut p, T0).map(|_| ());
    assert_eq!(
        r,
        Err(Error::NoTailroom {
            needed: esp.len() - last.len(),
            available: 100
        })
    );
    assert_eq!((p.offset(), p.len()), (64, last.len()), "unchanged");
    assert_eq!(hq.stats().dropped(DropReason::NoBufferSpace), 1);
    let (r, inner) = inbound_fragment(&mut hq, last, T0);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(inner, rdp);
}

#[test]
fn cleartext_fragments_are_left_to_the_policy_path() {
    let (mut hq, _) = gateways();
    // A first fragment of cleartext RDP (TCP): not reassembled, refused by policy as
    // before (it should have come protected).
    let mut rdp = packet([10, 1, 0, 5], [10, 0, 0, 10], 6, 50000, 3389);
    rdp[6] = 0x20; // MF
    ipsec_core::packet::set_ipv4_checksum(&mut rdp[..20]);
    let (r, _) = inbound_fragment(&mut hq, &rdp, T0);
    assert_eq!(r, Err(Error::UnprotectedTraffic));
    assert_eq!(hq.reassembler().held_fragments(), 0);
    assert_eq!(hq.reassembler().stats().dropped_total(), 0);
}

/// A TCP packet of `total` bytes on the RDP flow, DF as given.
fn rdp_packet(total: usize, df: bool) -> Vec<u8> {
    let mut p = packet([10, 1, 0, 5], [10, 0, 0, 10], 6, 50000, 3389);
    p.resize(total, 0x42);
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = if df { 0x40 } else { 0 };
    ipsec_core::packet::set_ipv4_checksum(&mut p[..20]);
    p
}

#[test]
fn the_gateway_fragments_to_the_path_mtu_and_learns_it_from_icmp() {
    use ipsec_core::SpareBuffers;
    use ipsec_core::icmp::{ICMPV4_ERROR_MAX, too_big_reply};
    let toml = branch_toml().replace(
        "tunnel_src = \"198.51.100.2\"",
        "tunnel_src = \"198.51.100.2\"\npath_mtu = 1200",
    );
    assert!(toml.contains("path_mtu"));
    let mut br = Gateway::new(Spd::from_toml(&toml).unwrap(), T0).unwrap();
    let (mut hq, _) = gateways();
    let big = rdp_packet(3000, false);
    assert_eq!(br.spares_needed(&big, T0), 2);
    // Without spares: refused, counted on the SA.
    let (r, _) = with_buf(&big, |p| br.outbound(p, T0).map(|_| ()));
    assert!(matches!(r, Err(Error::NoSpareBuffers { needed: 2, .. })));
    // With spares: three ESP packets; head office's gateway decrypts each to a fragment
    // of the RDP packet and accepts the later ones under the policy its first fragment
    // was accepted under (RFC 4301 §7, stateful fragment checking).
    let mut storage = vec![0u8; 4096];
    storage[128..128 + big.len()].copy_from_slice(&big);
    let mut stores = vec![vec![0u8; 2048]; 2];
    let mut bufs: Vec<PacketBuf<'_>> = stores
        .iter_mut()
        .map(|s| PacketBuf::new(s, 128, 0).unwrap())
        .collect();
    let mut pool = SpareBuffers::new(&mut bufs);
    let mut p = PacketBuf::new(&mut storage, 128, big.len()).unwrap();
    let (verdict, extra) = br.outbound_fragmenting(&mut p, &mut pool, T0).unwrap();
    assert_eq!(
        (verdict, extra),
        (
            Outbound::Protected {
                sa: "br-out",
                policy: "rdp"
            },
            2
        )
    );
    let wire: Vec<Vec<u8>> = std::iter::once(p.data().to_vec())
        .chain(pool.filled().iter().map(|s| s.data().to_vec()))
        .collect();
    let mut data = 0;
    for (i, w) in wire.iter().enumerate() {
        assert!(w.len() <= 1200);
        let (r, frag) = with_buf(w, |p| {
            hq.inbound(p, T0).map(|v| {
                v == Inbound::Decrypted {
                    sa: "hq-in",
                    policy: "rdp",
                }
            })
        });
        assert_eq!(r, Ok(true), "fragment {i}");
        assert_eq!(frag[6] & 0x20 != 0, i < 2, "MF on all but the last");
        data += frag.len() - 20;
    }
    assert_eq!(data, big.len() - 20);
    // DF set: too big, with the MTU the sender must use, and the ICMP error for it.
    let df = rdp_packet(1400, true);
    let mtu = br.too_big_mtu(&df, T0).expect("refused as too big");
    let (r, _) = with_buf(&df, |p| br.outbound(p, T0).map(|_| ()));
    assert_eq!(r, Err(Error::TooBig { inner_mtu: mtu }));
    let mut icmp = [0u8; ICMPV4_ERROR_MAX];
    let n = too_big_reply(&df, mtu, "10.1.0.1".parse().unwrap(), &mut icmp)
        .unwrap()
        .unwrap();
    assert_eq!(&icmp[16..20], &[10, 1, 0, 5], "back to the sender");
    assert_eq!(u16::from_be_bytes([icmp[26], icmp[27]]), mtu);
    assert!(n > 28 + 20);
    // A router on the path says 1100: the gateway's SA learns it.
    let (_, esp) = with_buf(&rdp_packet(1000, true), |p| br.outbound(p, T0).map(|_| ()));
    let n = too_big_reply(&esp, 1100, "203.0.113.1".parse().unwrap(), &mut icmp)
        .unwrap()
        .unwrap();
    assert_eq!(br.handle_icmp(&icmp[..n], T0), Ok(Some(("br-out", 1100))));
    assert_eq!(br.sa("br-out").unwrap().path_mtu(T0), Some(1100));
    assert!(br.too_big_mtu(&df, T0).unwrap() < mtu);
}
