//! What the benches share: the SA they measure, the inner packets and the thread CPU
//! clock.
#![allow(dead_code)] // each bench uses its own subset

use std::time::Duration;

use ipsec_core::{Cipher, Direction, Integrity, Mode, PacketBuf, SaConfig, SecurityAssociation};

/// The CPU time this thread has used (`CLOCK_THREAD_CPUTIME_ID`): time other processes
/// hold the core does not count, on a shared machine.
#[allow(unsafe_code)] // libc::clock_gettime
pub(crate) fn cpu_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux has.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "the thread CPU clock");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Packets per burst in the burst benches.
pub(crate) const BURST: usize = 32;

/// The SPI of every benchmarked SA.
pub(crate) const SPI: u32 = 0x1000;

/// A tunnel-mode SA (outbound 192.0.2.1 -> 192.0.2.2) with the given key and optional
/// integrity algorithm and key. Inbound SAs have replay protection off, so that the
/// same ciphertext is accepted on every iteration.
pub(crate) fn tunnel_sa(
    cipher: Cipher,
    key: &[u8],
    integrity: Option<(Integrity, &[u8])>,
    direction: Direction,
) -> SecurityAssociation {
    tunnel_sa_between(
        cipher,
        key,
        integrity,
        direction,
        ("192.0.2.1", "192.0.2.2"),
    )
}

/// [`tunnel_sa`] between other tunnel endpoints (`(source, destination)` of an
/// outbound SA's outer header: IPv4 or IPv6 addresses).
pub(crate) fn tunnel_sa_between(
    cipher: Cipher,
    key: &[u8],
    integrity: Option<(Integrity, &[u8])>,
    direction: Direction,
    (src, dst): (&str, &str),
) -> SecurityAssociation {
    let mut cfg = SaConfig::new(SPI, direction, Mode::Tunnel, cipher, key);
    if let Some((integrity, integrity_key)) = integrity {
        cfg.integrity(integrity, integrity_key);
    }
    if direction == Direction::Outbound {
        cfg.tunnel(src.parse().expect("address"), dst.parse().expect("address"));
    } else {
        cfg.replay_window(0);
    }
    SecurityAssociation::new(cfg, Duration::ZERO).expect("valid SA")
}

/// The policy file of a gateway with one tunnel between the networks `local` and
/// `remote`: SA `out` (SPI 0x1000, outer header `src` -> `dst`) and SA `in` (SPI 0x1000,
/// no replay window, so that one protected packet decrypts every time), each given its
/// algorithm and key lines (`cipher = ...`, `key = ...`, `integrity...`), and a PROTECT
/// policy for both directions through them.
pub(crate) fn one_tunnel_toml(
    (local, remote): (&str, &str),
    (src, dst): (&str, &str),
    out: &str,
    inbound: &str,
) -> String {
    format!(
        r#"
[[sa]]
name = "out"
spi = 0x1000
direction = "outbound"
mode = "tunnel"
{out}
tunnel_src = "{src}"
tunnel_dst = "{dst}"

[[sa]]
name = "in"
spi = 0x1000
direction = "inbound"
mode = "tunnel"
{inbound}
replay_window = 0

[[policy]]
name = "tunnel"
direction = "both"
local = "{local}"
remote = "{remote}"
action = "protect"
sa = ["out", "in"]
"#
    )
}

/// An IPv4/UDP packet of exactly `size` bytes (header checksum correct).
pub(crate) fn inner_packet(size: usize) -> Vec<u8> {
    assert!(size >= 28);
    let mut p = vec![0u8; size];
    p[..20].copy_from_slice(&[
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 1, 0, 1,
    ]);
    p[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    ipsec_core::packet::set_ipv4_checksum(&mut p[..20]);
    p[20..24].copy_from_slice(&[0x13, 0x88, 0x13, 0x89]);
    p[24..26].copy_from_slice(&((size - 20) as u16).to_be_bytes());
    for (i, b) in p[28..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

/// An IPv6/UDP packet of exactly `size` bytes (2001:db8:1::1 -> 2001:db8:2::1).
pub(crate) fn inner_packet_v6(size: usize) -> Vec<u8> {
    assert!(size >= 48);
    let mut p = vec![0u8; size];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&((size - 40) as u16).to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(
        &"2001:db8:1::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    p[24..40].copy_from_slice(
        &"2001:db8:2::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    p[40..44].copy_from_slice(&[0x13, 0x88, 0x13, 0x89]);
    p[44..46].copy_from_slice(&((size - 40) as u16).to_be_bytes());
    for (i, b) in p[48..].iter_mut().enumerate() {
        *b = i as u8;
    }
    p
}

/// A burst of [`BURST`] packets over `storage` cut into `slot`-byte buffers, each given a
/// fresh copy of `template` at offset `at` (the rest of its buffer is headroom and
/// tailroom), as a gateway refills the buffers it reuses.
pub(crate) fn refilled_burst<'a>(
    storage: &'a mut [u8],
    slot: usize,
    at: usize,
    template: &[u8],
) -> [PacketBuf<'a>; BURST] {
    let mut slots = storage.chunks_exact_mut(slot);
    std::array::from_fn(|_| {
        let s = slots.next().expect("a slot per packet");
        s[at..at + template.len()].copy_from_slice(template);
        PacketBuf::new(s, at, template.len()).expect("in bounds")
    })
}

/// Buffer geometry for one packet: headroom, and the whole slot size.
pub(crate) fn geometry(outbound: &SecurityAssociation, size: usize) -> (usize, usize) {
    let head = outbound.max_headroom();
    (head, head + size + outbound.tailroom_for(size))
}

/// The protected form of `inner` (an outer IPv4 packet).
pub(crate) fn protect(outbound: &mut SecurityAssociation, inner: &[u8]) -> Vec<u8> {
    let (head, slot) = geometry(outbound, inner.len());
    let mut storage = vec![0u8; slot];
    storage[head..head + inner.len()].copy_from_slice(inner);
    let mut pkt = PacketBuf::new(&mut storage, head, inner.len()).expect("in bounds");
    outbound
        .encrypt(&mut pkt, Duration::ZERO)
        .expect("encrypts");
    pkt.data().to_vec()
}
