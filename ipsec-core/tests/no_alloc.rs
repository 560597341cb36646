//! Proves that the packet path does not touch the heap: a counting global allocator
//! counts the allocations of the current thread while 1000 packets go through
//! `encrypt`, `decrypt`, `encrypt_burst` and `decrypt_burst` (SAs and buffers are made
//! before counting starts), and while SPD lookups (one flow and bursts) are answered. The
//! count must be 0.
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::{T0, inner_v4, inner_v6, pair};
use ipsec_core::{Cipher, Error, Integrity, Mode, PacketBuf, SecurityAssociation};

/// Wraps the system allocator and counts allocations made by the current thread.
struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counter is a const-initialised thread-local `Cell`
// (no allocation, no reentrancy) updated with `try_with` so that it is never touched
// during thread teardown.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: `ptr` was allocated by `System` with `layout` (all allocations are).
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

const SUITES: [(Cipher, Option<Integrity>); 6] = [
    (Cipher::Aes128Gcm, None),
    (Cipher::Aes256Gcm, None),
    (Cipher::ChaCha20Poly1305, None),
    (Cipher::Aes128Gmac, None),
    (Cipher::Aes128Cbc, Some(Integrity::HmacSha256_128)),
    (Cipher::Null, Some(Integrity::HmacSha1_96)),
];

const PACKETS: usize = 1000;
const HEAD: usize = 128;

/// One packet at a time: encrypt and decrypt 1000 packets per suite, mode and family.
#[test]
fn single_packet_path_does_not_allocate() {
    for suite in SUITES {
        for mode in [Mode::Tunnel, Mode::Transport] {
            for plain in [inner_v4(100, 0), inner_v6(1300, 0)] {
                let (mut out, mut inb) = pair(0x4444, mode, suite);
                let mut buf = vec![0u8; 2048];
                let before = allocs();
                for _ in 0..PACKETS {
                    buf[HEAD..HEAD + plain.len()].copy_from_slice(&plain);
                    let mut p = PacketBuf::new(&mut buf, HEAD, plain.len()).expect("buf");
                    out.encrypt(&mut p, T0).expect("encrypt");
                    inb.decrypt(&mut p, T0).expect("decrypt");
                    assert!(p.data() == &plain[..]);
                }
                let n = allocs() - before;
                assert_eq!(
                    n, 0,
                    "{:?} {mode:?}: {n} allocations in {PACKETS} packets",
                    suite
                );
                assert_eq!(inb.stats().packets, PACKETS as u64);
            }
        }
    }
}

/// Failed packets (tampered) do not allocate either.
#[test]
fn refused_packets_do_not_allocate() {
    for suite in SUITES {
        let (mut out, mut inb) = pair(0x4444, Mode::Tunnel, suite);
        let plain = inner_v4(64, 0);
        let mut buf = vec![0u8; 1024];
        let before = allocs();
        for _ in 0..PACKETS {
            buf[HEAD..HEAD + plain.len()].copy_from_slice(&plain);
            let mut p = PacketBuf::new(&mut buf, HEAD, plain.len()).expect("buf");
            out.encrypt(&mut p, T0).expect("encrypt");
            let last = p.len() - 1;
            p.data_mut()[last] ^= 1;
            assert_eq!(inb.decrypt(&mut p, T0), Err(Error::AuthenticationFailed));
        }
        assert_eq!(allocs() - before, 0, "{suite:?}");
    }
}

const BURST: usize = 8;

fn burst_round(
    out: &mut SecurityAssociation,
    inb: &mut SecurityAssociation,
    bufs: &mut [[u8; 512]; BURST],
    plain: &[u8],
) {
    for b in bufs.iter_mut() {
        b[HEAD..HEAD + plain.len()].copy_from_slice(plain);
    }
    let mut it = bufs.iter_mut();
    let mut pkts: [PacketBuf<'_>; BURST] = core::array::from_fn(|_| {
        PacketBuf::new(it.next().expect("buffer"), HEAD, plain.len()).expect("buf")
    });
    let mut res: [Result<(), Error>; BURST] = [Ok(()); BURST];
    assert_eq!(out.encrypt_burst(&mut pkts, &mut res, T0), BURST);
    assert_eq!(inb.decrypt_burst(&mut pkts, &mut res, T0), BURST);
    assert!(pkts.iter().all(|p| p.data() == plain));
}

/// Bursts: 1000 packets in bursts of 8 through `encrypt_burst` and `decrypt_burst`.
#[test]
fn burst_path_does_not_allocate() {
    for suite in SUITES {
        for mode in [Mode::Tunnel, Mode::Transport] {
            let (mut out, mut inb) = pair(0x4444, mode, suite);
            let mut bufs = Box::new([[0u8; 512]; BURST]);
            let plain = inner_v4(200, 0);
            let before = allocs();
            for _ in 0..PACKETS / BURST {
                burst_round(&mut out, &mut inb, &mut bufs, &plain);
            }
            let n = allocs() - before;
            assert_eq!(n, 0, "{suite:?} {mode:?}: {n} allocations in bursts");
            assert_eq!(inb.stats().packets, (PACKETS / BURST * BURST) as u64);
        }
    }
}

/// NAT traversal: ESP in UDP over IPv4 and IPv6 (the IPv6 UDP checksum), the
/// transport-mode checksum fix-up on the way in (with and without NAT original
/// addresses), and keepalive polling.
#[test]
fn nat_traversal_paths_do_not_allocate() {
    let suite = (Cipher::Aes128Gcm, None);
    let v6 = |s: &str| s.parse::<std::net::IpAddr>().expect("address");
    for (mode, outer6, nat_oa) in [
        (Mode::Tunnel, false, false),
        (Mode::Tunnel, true, false),
        (Mode::Transport, false, false),
        (Mode::Transport, false, true),
        (Mode::Transport, true, true),
    ] {
        let mut out_cfg = common::config(0x4545, ipsec_core::Direction::Outbound, mode, suite);
        let mut in_cfg = common::config(0x4545, ipsec_core::Direction::Inbound, mode, suite);
        out_cfg.udp_encap(4500, 4500);
        in_cfg.udp_encap(4500, 4500);
        if mode == Mode::Tunnel {
            if outer6 {
                out_cfg.tunnel(v6("2001:db8::1"), v6("2001:db8::2"));
            } else {
                out_cfg.tunnel(v6("192.0.2.1"), v6("192.0.2.2"));
            }
        }
        let plain = if outer6 {
            inner_v6(300, 0)
        } else {
            inner_v4(300, 0)
        };
        if nat_oa {
            let (s, d) = if outer6 {
                ("2001:db8:1::5", "2001:db8:2::3")
            } else {
                ("10.0.0.5", "10.1.2.3")
            };
            in_cfg.nat_original_addresses(v6(s), v6(d));
        }
        let mut out = SecurityAssociation::new(out_cfg, T0).expect("outbound SA");
        let mut inb = SecurityAssociation::new(in_cfg, T0).expect("inbound SA");
        let mut buf = vec![0u8; 2048];
        let mut keepalive = [0u8; ipsec_core::NAT_KEEPALIVE_MAX_LEN];
        let before = allocs();
        for i in 0..PACKETS {
            buf[HEAD..HEAD + plain.len()].copy_from_slice(&plain);
            let mut p = PacketBuf::new(&mut buf, HEAD, plain.len()).expect("buf");
            let now = std::time::Duration::from_secs(30 * i as u64);
            out.encrypt(&mut p, now).expect("encrypt");
            inb.decrypt(&mut p, T0).expect("decrypt");
            assert!(p.data() == &plain[..]);
            let later = now + std::time::Duration::from_secs(25);
            assert!(out.poll_keepalive(later, &mut keepalive).is_some());
        }
        let n = allocs() - before;
        assert_eq!(n, 0, "{mode:?} outer6 {outer6}: {n} allocations");
    }
}

/// The counter works (so a 0 above means something).
#[test]
fn the_counter_sees_allocations() {
    let before = allocs();
    let v = std::hint::black_box(vec![1u8; 100]);
    assert!(allocs() > before);
    drop(v);
}

/// The gateway's inbound SA lookup (RFC 4301 §4.1) allocates nothing either: packets
/// found by SPI + destination among SAs sharing the SPI (an SPI-alone SA, two groups,
/// a source-specific one), and packets to a destination no SA has (unknown SPI).
#[test]
fn gateway_lookup_by_address_does_not_allocate() {
    use ipsec_core::gateway::Inbound;
    use ipsec_core::{Direction, Gateway, SaConfig, SaLookup, Spd};
    let spi = 0x5000;
    let cfg = |dir: Direction, dst: &str, n: u8, lookup: SaLookup| {
        let mut c = SaConfig::new(spi, dir, Mode::Tunnel, Cipher::Aes128Gcm, &[n; 20]);
        c.tunnel("192.0.2.1".parse().unwrap(), dst.parse().unwrap())
            .lookup(lookup);
        c
    };
    let deny = "[[policy]]\nname = \"deny\"\naction = \"discard\"\n";
    let mut gw = Gateway::new(Spd::from_toml(deny).unwrap(), T0).unwrap();
    let sas = [
        ("u", "198.51.100.2", 1, SaLookup::Spi),
        ("g1", "233.252.0.1", 2, SaLookup::SpiDestination),
        ("g2", "233.252.0.2", 3, SaLookup::SpiDestination),
        ("s1", "233.252.0.3", 4, SaLookup::SpiDestinationSource),
    ];
    for (name, dst, n, lookup) in sas {
        gw.add_sa(name, cfg(Direction::Inbound, dst, n, lookup), T0)
            .unwrap();
        let p = format!(
            "name = \"p-{name}\"\ndirection = \"inbound\"\naction = \"protect\"\nsa = \"{name}\"\n"
        );
        gw.install_policy(&p, Some("deny")).unwrap();
    }
    let mut to_g2 = SecurityAssociation::new(
        cfg(Direction::Outbound, "233.252.0.2", 3, SaLookup::Spi),
        T0,
    )
    .unwrap();
    let plain = inner_v4(100, 0);
    let mut buf = vec![0u8; 1024];
    let before = allocs();
    for _ in 0..PACKETS {
        buf[HEAD..HEAD + plain.len()].copy_from_slice(&plain);
        let mut p = PacketBuf::new(&mut buf, HEAD, plain.len()).expect("buf");
        to_g2.encrypt(&mut p, T0).expect("encrypt");
        let got = gw.inbound(&mut p, T0);
        assert!(
            matches!(got, Ok(Inbound::Decrypted { sa: "g2", .. })),
            "{got:?}"
        );
    }
    assert_eq!(allocs() - before, 0, "found by SPI + destination");
    // Group 2's packet rewritten to another group: the SPI is known, the key is not.
    let before = allocs();
    for _ in 0..PACKETS {
        buf[HEAD..HEAD + plain.len()].copy_from_slice(&plain);
        let mut p = PacketBuf::new(&mut buf, HEAD, plain.len()).expect("buf");
        to_g2.encrypt(&mut p, T0).expect("encrypt");
        let h = &mut p.data_mut()[..20];
        h[19] = 99; // the outer destination, and the header checksum to match
        h[10..12].fill(0);
        let sum = h
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum::<u32>();
        let sum = (sum & 0xffff) + (sum >> 16);
        let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        let got = gw.inbound(&mut p, T0);
        assert!(matches!(got, Err(Error::AuthenticationFailed)), "{got:?}");
    }
    assert_eq!(allocs() - before, 0, "taken by the SPI-alone SA");
    assert_eq!(gw.sa("u").unwrap().stats().dropped_total(), PACKETS as u64);
}

/// Bursts of 32 packets of mixed lengths, `PACKETS` in all: each burst refilled,
/// `encrypt`ed, `decrypt`ed (both must take all 32) and checked. Returns the allocations
/// the rounds made.
fn cbc_burst_allocations(
    mut encrypt: impl FnMut(&mut [PacketBuf<'_>], &mut [Result<(), Error>]) -> usize,
    mut decrypt: impl FnMut(&mut [PacketBuf<'_>], &mut [Result<(), Error>]) -> usize,
) -> u64 {
    const N: usize = 32;
    let plains: Vec<Vec<u8>> = (0..N).map(|i| inner_v4(i * 45, 0)).collect();
    let mut bufs = vec![[0u8; 1792]; N];
    let mut res: [Result<(), Error>; N] = [Ok(()); N];
    let before = allocs();
    for _ in 0..PACKETS / N {
        for (b, p) in bufs.iter_mut().zip(&plains) {
            b[HEAD..HEAD + p.len()].copy_from_slice(p);
        }
        let mut it = bufs.iter_mut().zip(&plains);
        let mut pkts: [PacketBuf<'_>; N] = core::array::from_fn(|_| {
            let (b, p) = it.next().expect("buffer");
            PacketBuf::new(b, HEAD, p.len()).expect("buf")
        });
        assert_eq!(encrypt(&mut pkts, &mut res), N);
        assert_eq!(decrypt(&mut pkts, &mut res), N);
        assert!(pkts.iter().zip(&plains).all(|(p, q)| p.data() == &q[..]));
    }
    allocs() - before
}

/// The CBC burst path (CBC chains and HMACs of up to 8 packets side by side): bursts of
/// 32 packets of mixed lengths, so that lanes drop out at different blocks, with
/// HMAC-SHA-256 (hashed side by side too) and HMAC-SHA-1 (one packet at a time).
#[test]
fn cbc_burst_lanes_do_not_allocate() {
    for suite in [
        (Cipher::Aes128Cbc, Some(Integrity::HmacSha256_128)),
        (Cipher::Aes256Cbc, Some(Integrity::HmacSha1_96)),
    ] {
        for mode in [Mode::Tunnel, Mode::Transport] {
            let (mut out, mut inb) = pair(0x4444, mode, suite);
            let n = cbc_burst_allocations(
                |p, r| out.encrypt_burst(p, r, T0),
                |p, r| inb.decrypt_burst(p, r, T0),
            );
            assert_eq!(n, 0, "{suite:?} {mode:?}: {n} allocations in CBC bursts");
        }
    }
}

/// A lane's bursts (`SaLane::encrypt_burst` / `decrypt_burst`: the SA's CBC burst code
/// with the numbers of the lane's block, block leases and counter publication included)
/// allocate nothing.
#[test]
fn shared_sa_lane_bursts_do_not_allocate() {
    use ipsec_core::{Direction, SharedSa, SharedSaOptions};
    let suite = (Cipher::Aes128Cbc, Some(Integrity::HmacSha256_128));
    let mut out_cfg = common::config(0x4545, Direction::Outbound, Mode::Tunnel, suite);
    out_cfg.tunnel(
        "192.0.2.1".parse().unwrap(),
        "198.51.100.2".parse().unwrap(),
    );
    let in_cfg = common::config(0x4545, Direction::Inbound, Mode::Tunnel, suite);
    // Blocks of 8: a burst of 32 leases four times.
    let options = SharedSaOptions::lanes(2).with_block(8);
    let (_out, mut out_lanes) = SharedSa::new(out_cfg, options, T0).expect("shared");
    let (_in, mut in_lanes) = SharedSa::new(in_cfg, options, T0).expect("shared");
    let n = cbc_burst_allocations(
        |p, r| out_lanes[0].encrypt_burst(p, r, T0),
        |p, r| in_lanes[1].decrypt_burst(p, r, T0),
    );
    assert_eq!(n, 0, "{n} allocations in lane bursts");
}

/// SPD lookups allocate nothing, one flow or a burst at a time: bursts longer than the
/// classifier's 32 and shorter, both directions and families mixed, a flow of mixed
/// families (the scan answers it), and an SPD with live changes pending (a removed and
/// an added policy).
#[test]
fn spd_lookup_burst_does_not_allocate() {
    use ipsec_core::{Decision, Direction, Flow, Gateway, Spd};
    use std::net::IpAddr;
    let mut text = String::new();
    for i in 0..200u32 {
        text += &format!(
            "[[policy]]\nname = \"p{i}\"\nremote = \"172.16.{}.0/24\"\nprotocol = \"tcp\"\n\
             remote_port = {}\naction = \"{}\"\n\
             [[policy]]\nname = \"q{i}\"\nremote = \"2001:db8:{i:x}::/64\"\naction = \"bypass\"\n",
            i % 256,
            1 + i % 50,
            if i % 2 == 0 { "bypass" } else { "discard" }
        );
    }
    text += "[[policy]]\nname = \"deny\"\naction = \"discard\"\n";
    let spd = Spd::from_toml(&text).unwrap();
    let ip = |s: String| -> IpAddr { s.parse().unwrap() };
    let flows: Vec<Flow> = (0..100u32)
        .map(|i| {
            let dir = if i % 3 == 0 {
                Direction::Inbound
            } else {
                Direction::Outbound
            };
            match i % 5 {
                0 => Flow::new(
                    dir,
                    ip(format!("2001:db8:{i:x}::1")),
                    ip("fd00::1".into()),
                    17,
                ),
                1 => Flow::new(dir, ip("10.0.0.1".into()), ip("2001:db8::1".into()), 6),
                _ => Flow::new(dir, ip("10.0.0.1".into()), ip(format!("172.16.{i}.9")), 6)
                    .ports(40000, (1 + i % 50) as u16),
            }
        })
        .collect();
    let mut want = vec![Decision::NO_MATCH; flows.len()];
    for (f, w) in flows.iter().zip(want.iter_mut()) {
        *w = spd.lookup(f);
    }
    let mut out = vec![Decision::NO_MATCH; flows.len()];
    let before = allocs();
    for _ in 0..PACKETS / 10 {
        spd.lookup_burst(&flows, &mut out);
        spd.lookup_burst(&flows[..7], &mut out[..7]);
        spd.lookup_burst_staged(&flows, &mut out);
        for f in &flows[..10] {
            std::hint::black_box(spd.lookup(f));
        }
    }
    assert_eq!(allocs() - before, 0, "SPD lookups");
    assert_eq!(out, want);
    // With changes pending: the removal masks and the added policies.
    let mut gw = Gateway::new(Spd::from_toml(&text).unwrap(), T0).unwrap();
    gw.remove_policy("p3").unwrap();
    gw.install_policy(
        "name = \"new\"\nprotocol = \"udp\"\naction = \"bypass\"\n",
        Some("q0"),
    )
    .unwrap();
    let live = gw.spd();
    // The first call after a change copies the policies into order for the scan that
    // answers mixed-family flows (`Spd::policies`, once per change): not counted.
    live.lookup_burst(&flows, &mut out);
    let before = allocs();
    for _ in 0..PACKETS / 10 {
        live.lookup_burst(&flows, &mut out);
        live.lookup_burst_staged(&flows, &mut out);
    }
    assert_eq!(allocs() - before, 0, "SPD lookups with changes pending");
    for (f, d) in flows.iter().zip(&out) {
        assert_eq!(*d, live.lookup_linear(f), "{f:?}");
    }
}

/// The gateway's own path allocates nothing: outbound one packet at a time and in
/// bursts (`Gateway::outbound_burst`: PROTECT through two SAs, a BYPASS, a DISCARD and
/// a malformed packet in every burst), with the SPD cache off and on, and inbound one
/// packet at a time and in bursts (`Gateway::inbound_burst`: the protected packets
/// decrypted, in runs for one SA, and checked against their SA's policy, and cleartext
/// bypassed or dropped).
#[test]
fn gateway_paths_do_not_allocate() {
    use ipsec_core::gateway::{BurstVerdict, Inbound, Outbound};
    use ipsec_core::{Direction, Gateway, SaConfig, Spd};
    let key = |n: u8| [n; 20];
    let cfg = |spi: u32, dir: Direction, n: u8| {
        let mut c = SaConfig::new(spi, dir, Mode::Tunnel, Cipher::Aes128Gcm, &key(n));
        c.tunnel("192.0.2.1".parse().unwrap(), "192.0.2.1".parse().unwrap());
        c
    };
    let deny = "[[policy]]\nname = \"deny\"\naction = \"discard\"\n";
    let mut gw = Gateway::new(Spd::from_toml(deny).unwrap(), T0).unwrap();
    // Outbound through "a" (to 10.1/16) and "b" (to 10.2/16); packets sent to the
    // gateway itself come back in on "a-in" and "b-in" (each the peer of its SA).
    gw.add_sa("a", cfg(0x1000, Direction::Outbound, 1), T0)
        .unwrap();
    gw.add_sa("b", cfg(0x1001, Direction::Outbound, 2), T0)
        .unwrap();
    let mut a_in = cfg(0x1000, Direction::Inbound, 1);
    a_in.replay_window(0);
    let mut b_in = cfg(0x1001, Direction::Inbound, 2);
    b_in.replay_window(0);
    for p in [
        "name = \"ike\"\nprotocol = \"udp\"\nremote_port = 500\naction = \"bypass\"\n",
        "name = \"to-a\"\ndirection = \"outbound\"\nremote = \"10.1.0.0/16\"\naction = \"protect\"\nsa = \"a\"\n",
        "name = \"to-b\"\ndirection = \"outbound\"\nremote = \"10.2.0.0/16\"\naction = \"protect\"\nsa = \"b\"\n",
    ] {
        gw.install_policy(p, Some("deny")).unwrap();
    }
    // A second gateway receives: its inbound SAs serve policies for what "a" and
    // "b" carry (the inner packets' sources are 10.0.0.0/24, see `inner_v4`).
    let mut rx = Gateway::new(Spd::from_toml(deny).unwrap(), T0).unwrap();
    rx.add_sa("a-in", a_in, T0).unwrap();
    rx.add_sa("b-in", b_in, T0).unwrap();
    for p in [
        "name = \"ike\"\nprotocol = \"udp\"\nlocal_port = 500\naction = \"bypass\"\n",
        "name = \"from-a\"\ndirection = \"inbound\"\nlocal = \"10.1.0.0/16\"\naction = \"protect\"\nsa = \"a-in\"\n",
        "name = \"from-b\"\ndirection = \"inbound\"\nlocal = \"10.2.0.0/16\"\naction = \"protect\"\nsa = \"b-in\"\n",
    ] {
        rx.install_policy(p, Some("deny")).unwrap();
    }
    let to = |net: u8, dport: u16| {
        let mut p = inner_v4(100, 0);
        p[16..20].copy_from_slice(&[10, net, 0, 9]);
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p[10..12].fill(0);
        let sum = ipsec_core::packet::internet_checksum(&p[..20]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p
    };
    let mut malformed = to(1, 9);
    malformed.truncate(30);
    let burst: Vec<Vec<u8>> = (0..32)
        .map(|i| match i % 8 {
            0..=2 => to(1, 9),
            3 | 4 => to(2, 9),
            5 => to(9, 500),
            6 => to(3, 9),
            _ => malformed.clone(),
        })
        .collect();
    let slot = 512;
    let mut store = vec![0u8; slot * burst.len()];
    let mut results = [Ok(BurstVerdict::Bypassed); 32];
    let mut received = [Ok(BurstVerdict::Bypassed); 32];
    for cache in [0, 64] {
        gw.set_spd_cache(cache);
        let before = allocs();
        for round in 0..PACKETS / 32 {
            let mut bufs: [PacketBuf<'_>; 32] = {
                let mut chunks = store.chunks_mut(slot).zip(&burst);
                core::array::from_fn(|_| {
                    let (s, pkt) = chunks.next().unwrap();
                    s[HEAD..HEAD + pkt.len()].copy_from_slice(pkt);
                    PacketBuf::new(s, HEAD, pkt.len()).unwrap()
                })
            };
            assert_eq!(gw.outbound_burst(&mut bufs, &mut results, T0), 24);
            // What the burst protected comes in at the receiving gateway, every other
            // round as a burst.
            if round % 2 == 1 {
                rx.inbound_burst(&mut bufs, &mut received, T0);
            }
            for (k, (b, r)) in bufs.iter_mut().zip(&results).enumerate() {
                let got = if round % 2 == 1 {
                    received[k]
                } else {
                    rx.inbound(b, T0).map(|v| match v {
                        Inbound::Decrypted { .. } => BurstVerdict::Decrypted,
                        _ => BurstVerdict::Bypassed,
                    })
                };
                match r {
                    Ok(BurstVerdict::Protected) => {
                        assert_eq!(got, Ok(BurstVerdict::Decrypted))
                    }
                    Ok(_) => assert_eq!(got, Ok(BurstVerdict::Bypassed)),
                    Err(_) => assert!(got.is_err()),
                }
            }
        }
        for pkt in &burst {
            for _ in 0..PACKETS / 32 {
                let s = &mut store[..slot];
                s[HEAD..HEAD + pkt.len()].copy_from_slice(pkt);
                let mut p = PacketBuf::new(s, HEAD, pkt.len()).unwrap();
                if let Ok(Outbound::Protected { .. }) = gw.outbound(&mut p, T0) {
                    assert!(matches!(
                        rx.inbound(&mut p, T0),
                        Ok(Inbound::Decrypted { .. })
                    ));
                }
            }
        }
        let n = allocs() - before;
        assert_eq!(n, 0, "cache {cache}: {n} allocations on the gateway paths");
    }
    assert!(rx.sa("a-in").unwrap().stats().packets > 0);
    assert!(rx.sa("b-in").unwrap().stats().packets > 0);
}
