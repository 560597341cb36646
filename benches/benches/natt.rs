//! The cost of the outer header per encapsulation path: tunnel mode with an outer IPv4
//! or IPv6 header, with and without UDP encapsulation (NAT traversal, RFC 3948), and
//! transport mode with UDP encapsulation, for AES-128-GCM at 64, 512 and 1420 bytes.
//!
//! Benchmark names are `encrypt/<path>/<size>`, paths `tunnel4-esp`, `tunnel4-udp`,
//! `tunnel6-esp`, `tunnel6-udp`, `transport4-udp`, `transport6-udp`. The IPv6 NAT-T
//! paths carry a UDP checksum over the whole ESP packet (RFC 8200 §8.1 forbids a zero
//! one over IPv6); the IPv4 paths write an Identification and a DF bit per packet.
//! Comparing the paths of one run (or one run against a saved baseline:
//! `--save-baseline NAME`, then `--baseline NAME`) shows what each costs.
//!
//! As in `esp.rs`, every iteration first restores the inner packet with
//! `copy_from_slice` (included in the figures).
//!
//! Run: `cargo bench -p ipsec-benches --bench natt` (about a minute); smoke test:
//! `cargo test -p ipsec-benches --benches`.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipsec_core::{Cipher, Direction, Mode, PacketBuf, SaConfig, SecurityAssociation};

mod common;
use common::{SPI, inner_packet, inner_packet_v6};

const SIZES: [usize; 3] = [64, 512, 1420];
const KEY: [u8; 20] = [0x42; 20];

/// One encapsulation path.
struct Path {
    name: &'static str,
    mode: Mode,
    /// Tunnel endpoints (tunnel mode only).
    tunnel: Option<(&'static str, &'static str)>,
    udp: bool,
    /// Transport mode: the inner packet is IPv6.
    inner_v6: bool,
}

const PATHS: [Path; 6] = [
    Path {
        name: "tunnel4-esp",
        mode: Mode::Tunnel,
        tunnel: Some(("192.0.2.1", "192.0.2.2")),
        udp: false,
        inner_v6: false,
    },
    Path {
        name: "tunnel4-udp",
        mode: Mode::Tunnel,
        tunnel: Some(("192.0.2.1", "192.0.2.2")),
        udp: true,
        inner_v6: false,
    },
    Path {
        name: "tunnel6-esp",
        mode: Mode::Tunnel,
        tunnel: Some(("2001:db8::1", "2001:db8::2")),
        udp: false,
        inner_v6: false,
    },
    Path {
        name: "tunnel6-udp",
        mode: Mode::Tunnel,
        tunnel: Some(("2001:db8::1", "2001:db8::2")),
        udp: true,
        inner_v6: false,
    },
    Path {
        name: "transport4-udp",
        mode: Mode::Transport,
        tunnel: None,
        udp: true,
        inner_v6: false,
    },
    Path {
        name: "transport6-udp",
        mode: Mode::Transport,
        tunnel: None,
        udp: true,
        inner_v6: true,
    },
];

fn outbound(path: &Path) -> SecurityAssociation {
    let mut cfg = SaConfig::new(SPI, Direction::Outbound, path.mode, Cipher::Aes128Gcm, &KEY);
    if let Some((src, dst)) = path.tunnel {
        cfg.tunnel(
            src.parse::<IpAddr>().expect("address"),
            dst.parse::<IpAddr>().expect("address"),
        );
    }
    if path.udp {
        cfg.udp_encap(4500, 4500);
    }
    SecurityAssociation::new(cfg, Duration::ZERO).expect("valid SA")
}

fn natt(c: &mut Criterion) {
    let mut g = c.benchmark_group("natt");
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));
    for path in &PATHS {
        for size in SIZES {
            let inner = if path.inner_v6 {
                inner_packet_v6(size)
            } else {
                inner_packet(size)
            };
            let mut sa = outbound(path);
            let head = sa.max_headroom();
            let mut storage = vec![0u8; head + size + sa.tailroom_for(size)];
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_function(format!("encrypt/{}/{size}", path.name), |b| {
                b.iter(|| {
                    storage[head..head + size].copy_from_slice(&inner);
                    let mut pkt = PacketBuf::new(&mut storage, head, size).expect("in bounds");
                    sa.encrypt(&mut pkt, Duration::ZERO).expect("encrypts");
                    black_box(pkt.len())
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, natt);
criterion_main!(benches);
