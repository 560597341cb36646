//! One gateway at scale (issue 12, section 5): N = 1,000, 10,000 and 100,000 tunnels,
//! each an inbound and an outbound AES-128-GCM SA (every SA its own random key and SPI)
//! and one PROTECT policy (its own local host to 172.16.0.0/12), plus a catch-all.
//! This measures the gateway as it is built today, from a policy file, before SAs and
//! policies can be added or removed at run time.
//!
//! Timed, per packet, over 1,024 distinct SAs drawn at random from the whole set:
//!
//! * `inbound_spi/unknown`: `Gateway::inbound` on an ESP packet whose SPI is no SA's
//!   (outer header parse, the SPI map's miss, the drop counted);
//! * `inbound_spi/replayed`: `Gateway::inbound` on an ESP packet of a known SPI that the
//!   SA has already accepted (the map's hit, then the SA's header checks and replay
//!   check: it fails before any decryption, buffer untouched). The gateway has no
//!   public lookup by SPI, so these two bracket the lookup;
//! * `inbound_spi/hashmap`: a `std` `HashMap<u32, usize>` of the same SPIs, the
//!   structure alone (the gateway's inbound SAD keeps one like it, whose values also
//!   count the SAs of each SPI found by address, RFC 4301 §4.1);
//! * `inbound_spi/replayed_shared_spi` (run last): `inbound_spi/replayed` once every
//!   picked SPI is shared with an SA found by SPI + destination
//!   ([`ipsec_core::SaLookup::SpiDestination`], a multicast group no packet goes to):
//!   the address path of the lookup (the outer addresses read, one miss in the map by
//!   SPI and address), which falls through to the SPI-alone SA, whose window refuses
//!   the packet (too old by then);
//! * `inbound_sa_lookup/spi`: `Gateway::inbound_sa_for`, the inbound SAD lookup alone
//!   (RFC 4301 §4.1: here every SA is found by its SPI alone), SPI and outer addresses
//!   given; `inbound_sa_lookup/spi_destination` (run last, with
//!   `replayed_shared_spi`): the same once every picked SPI is shared with an SA found
//!   by SPI + destination, so the outer addresses are searched (a miss, then the
//!   SPI-alone SA);
//! * `inbound_packet`: a whole 64-byte inner packet through `Gateway::inbound` (decrypt,
//!   replay window, inner policy check), fresh sequence numbers: the packets of each
//!   chunk of 1,024 are encrypted untimed by twin outbound SAs, then timed;
//! * `outbound_spd`: `Spd::lookup_packet` (outbound) of the 64-byte packets;
//! * `outbound_packet`: `Gateway::outbound` of the 64-byte packets (SPD lookup, the SA
//!   by name, encrypt); the inner packets are copied in untimed.
//!
//! Before timing, it prints memory from a counting global allocator (live heap bytes,
//! so allocator overhead not included): bytes per `SecurityAssociation` (inline + heap)
//! at the default replay window and at 2^24, and per gateway entry (SAs, the gateway's
//! maps and names, policies, the compiled SPD), with the CPU model.
//!
//! Run: `cargo bench -p ipsec-benches --bench scale` (about two minutes; building the
//! 100,000-tunnel gateway from its file takes seconds). Under `cargo test --benches`
//! only N = 1,000 runs.

// The counting global allocator implements `GlobalAlloc` (as `ipsec-core/tests/no_alloc.rs`).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ipsec_core::gateway::{Inbound, Outbound};
use ipsec_core::{
    Cipher, Direction, Error, Gateway, Mode, PacketBuf, ReplayWindow, SaConfig, SaLookup,
    SecurityAssociation, Spd,
};

mod common;

/// Live heap bytes, counted by [`Counting`].
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting live bytes.
struct Counting;

// SAFETY: every call is forwarded to `System` unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
/// SAs (distinct, random over the whole set) per timed chunk.
const PICK: usize = 1024;
/// Buffer per packet; the inner packet starts at [`AT`].
const SLOT: usize = 256;
const AT: usize = 64;
/// Inner packet size.
const INNER: usize = 64;
/// The largest replay window (2^24 packets).
const MAX_WINDOW: u32 = 1 << 24;

/// The sizes of this run: all of them under `cargo bench`; under `cargo test --benches`
/// (which runs each case once, unoptimised, as a check) only the smallest.
fn sizes() -> &'static [usize] {
    if std::env::args().any(|a| a == "--bench") {
        &SIZES
    } else {
        &SIZES[..1]
    }
}

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn key(&mut self) -> [u8; 20] {
        let mut k = [0u8; 20];
        for chunk in k.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes()[..chunk.len()]);
        }
        k
    }
}

/// One tunnel: its inbound and outbound SA (AES-128-GCM key and salt, 20 bytes each).
struct Tunnel {
    in_spi: u32,
    in_key: [u8; 20],
    out_spi: u32,
    out_key: [u8; 20],
}

/// `n` tunnels with distinct random inbound SPIs (at least 256) and random keys.
fn tunnels(n: usize, rng: &mut Rng) -> Vec<Tunnel> {
    let mut used = HashSet::with_capacity(n);
    (0..n)
        .map(|_| {
            let in_spi = loop {
                let s = rng.next() as u32;
                if s >= 256 && used.insert(s) {
                    break s;
                }
            };
            Tunnel {
                in_spi,
                in_key: rng.key(),
                out_spi: (rng.next() as u32).max(256),
                out_key: rng.key(),
            }
        })
        .collect()
}

/// The local host of tunnel `i`.
fn local(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 | i as u32)
}

/// The remote host every inner packet comes from or goes to.
const REMOTE: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 1);

fn hex(key: &[u8]) -> String {
    key.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The policy file of `tunnels`: their SAs (the outbound ones only with `outbound`),
/// inbound windows of `window` packets (`None`: the default), one PROTECT policy per
/// tunnel, then a catch-all discard.
fn policy_file(tunnels: &[Tunnel], outbound: bool, window: Option<u32>) -> String {
    let mut t = String::with_capacity(tunnels.len() * 600);
    for (i, tun) in tunnels.iter().enumerate() {
        let _ = write!(
            t,
            "[[sa]]\nname = \"i{i}\"\nspi = 0x{:x}\ndirection = \"inbound\"\nmode = \"tunnel\"\n\
             cipher = \"aes-128-gcm\"\nkey = \"{}\"\n",
            tun.in_spi,
            hex(&tun.in_key)
        );
        if let Some(w) = window {
            let _ = writeln!(t, "replay_window = {w}");
        }
        if outbound {
            let _ = write!(
                t,
                "[[sa]]\nname = \"o{i}\"\nspi = 0x{:x}\ndirection = \"outbound\"\n\
                 mode = \"tunnel\"\ncipher = \"aes-128-gcm\"\nkey = \"{}\"\n\
                 tunnel_src = \"192.0.2.1\"\ntunnel_dst = \"198.18.{}.{}\"\n",
                tun.out_spi,
                hex(&tun.out_key),
                (i >> 8) & 255,
                i & 255
            );
        }
        let (direction, sa) = if outbound {
            ("both", format!("[\"o{i}\", \"i{i}\"]"))
        } else {
            ("inbound", format!("\"i{i}\""))
        };
        let _ = write!(
            t,
            "[[policy]]\nname = \"p{i}\"\ndirection = \"{direction}\"\nlocal = \"{}\"\n\
             remote = \"172.16.0.0/12\"\naction = \"protect\"\nsa = {sa}\n",
            local(i)
        );
    }
    t.push_str("[[policy]]\nname = \"catch-all\"\ndirection = \"both\"\naction = \"discard\"\n");
    t
}

/// `n` BYPASS policies like the tunnels' (no SAs), then a catch-all discard.
fn bypass_file(n: usize) -> String {
    let mut t = String::with_capacity(n * 120);
    for i in 0..n {
        let _ = write!(
            t,
            "[[policy]]\nname = \"p{i}\"\ndirection = \"both\"\nlocal = \"{}\"\n\
             remote = \"172.16.0.0/12\"\naction = \"bypass\"\n",
            local(i)
        );
    }
    t.push_str("[[policy]]\nname = \"catch-all\"\ndirection = \"both\"\naction = \"discard\"\n");
    t
}

fn gateway(text: &str) -> Gateway {
    Gateway::new(
        Spd::from_toml(text).expect("valid policy file"),
        Duration::ZERO,
    )
    .expect("valid gateway")
}

/// `PICK` (or all `n` when fewer) distinct tunnel indices, drawn at random.
fn picks(n: usize, rng: &mut Rng) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    let k = n.min(PICK);
    for j in 0..k {
        let r = j + rng.below(n - j);
        all.swap(j, r);
    }
    all.truncate(k);
    all
}

/// A 64-byte IPv4/UDP packet from `src` to `dst`.
fn inner(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut p = common::inner_packet(INNER);
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[10..12].fill(0);
    ipsec_core::packet::set_ipv4_checksum(&mut p[..20]);
    p
}

/// The outbound twin of tunnel `t`'s inbound SA (same SPI and key), to make packets
/// the gateway accepts.
fn twin(t: &Tunnel) -> SecurityAssociation {
    let mut cfg = SaConfig::new(
        t.in_spi,
        Direction::Outbound,
        Mode::Tunnel,
        Cipher::Aes128Gcm,
        &t.in_key,
    );
    cfg.tunnel(
        "198.51.100.1".parse().expect("address"),
        "192.0.2.1".parse().expect("address"),
    );
    SecurityAssociation::new(cfg, Duration::ZERO).expect("valid SA")
}

/// Encrypts a fresh inbound packet of tunnel `i` with its twin into `slot`; returns its
/// length.
fn seal_into(twin: &mut SecurityAssociation, i: usize, slot: &mut [u8]) -> usize {
    let plain = inner(REMOTE, local(i));
    let mut scratch = [0u8; SLOT];
    scratch[AT..AT + plain.len()].copy_from_slice(&plain);
    let mut pkt = PacketBuf::new(&mut scratch, AT, plain.len()).expect("in bounds");
    twin.encrypt(&mut pkt, Duration::ZERO).expect("encrypts");
    let len = pkt.len();
    slot[..len].copy_from_slice(pkt.data());
    len
}

/// An ESP packet (outer IPv4, ESP header, 32 bytes of body) with SPI `spi`.
fn raw_esp(spi: u32) -> Vec<u8> {
    let len = 20 + 8 + 32;
    let mut p = vec![0u8; len];
    p[..20].copy_from_slice(&[
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 50, 0, 0, 198, 51, 100, 1, 192, 0, 2, 1,
    ]);
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    ipsec_core::packet::set_ipv4_checksum(&mut p[..20]);
    p[20..24].copy_from_slice(&spi.to_be_bytes());
    p[24..28].copy_from_slice(&1u32.to_be_bytes());
    p
}

/// Live heap bytes that `make` leaves behind, per item of `n` (what it returns is kept
/// until the count is taken).
fn bytes_per<T>(n: usize, make: impl FnOnce() -> T) -> (f64, T) {
    let before = live();
    let made = make();
    let after = live();
    ((after as f64 - before as f64) / n as f64, made)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// Prints the memory table: bytes per SA, per gateway entry and per policy.
fn memory_report() {
    println!("scale memory, CPU {} ({} logical CPUs)", cpu_model(), {
        std::thread::available_parallelism().map_or(0, |n| n.get())
    });
    println!(
        "  size_of: SecurityAssociation {} B, SaConfig {} B (not kept: the SA keeps its keys), \
         ReplayWindow {} B",
        size_of::<SecurityAssociation>(),
        size_of::<SaConfig>(),
        size_of::<ReplayWindow>(),
    );
    let mut rng = Rng(0x5eed_0001);
    for (window, count) in [(SaConfig::DEFAULT_REPLAY_WINDOW, 1000), (MAX_WINDOW, 4)] {
        let keys: Vec<[u8; 20]> = (0..count).map(|_| rng.key()).collect();
        let config = |i: usize| {
            let mut c = SaConfig::new(
                0x1000 + i as u32,
                Direction::Inbound,
                Mode::Tunnel,
                Cipher::Aes128Gcm,
                &keys[i],
            );
            c.replay_window(window);
            c
        };
        let (config_bytes, configs) =
            bytes_per(count, || (0..count).map(config).collect::<Vec<_>>());
        drop(configs);
        let (sa_bytes, sas) = bytes_per(count, || {
            (0..count)
                .map(|i| SecurityAssociation::new(config(i), Duration::ZERO).expect("valid SA"))
                .collect::<Vec<_>>()
        });
        let ring = sas[0].replay_window().size();
        drop(sas);
        println!(
            "  inbound SA alone, window {window:>8}: {sa_bytes:>9.0} B per SA (inline + heap; \
             an SaConfig with its key: {config_bytes:.0} B; window {ring} packets)"
        );
    }
    // The fixed part of a gateway (reassembler, fragment table), subtracted below.
    let (base, empty) = bytes_per(1, || gateway(&policy_file(&[], true, None)));
    drop(empty);
    for &n in sizes() {
        let tuns = tunnels(n, &mut rng);
        let text = policy_file(&tuns, false, None);
        let (inbound_only, gw) = bytes_per(n, || gateway(&text));
        let compiled_in = gw.spd().compiled_bytes() as f64 / n as f64;
        drop((gw, text));
        let text = policy_file(&tuns, true, None);
        let (full, gw) = bytes_per(n, || gateway(&text));
        let compiled_full = gw.spd().compiled_bytes() as f64 / n as f64;
        drop((gw, text));
        let text = bypass_file(n);
        let (policy, spd) = bytes_per(n, || Spd::from_toml(&text).expect("valid policy file"));
        let compiled_policy = spd.compiled_bytes() as f64 / n as f64;
        drop((spd, text));
        let base = base / n as f64;
        println!(
            "  N = {n:>6}: inbound SA + its inbound policy {:>6.0} B per entry (compiled SPD \
             {compiled_in:.0} B of it); tunnel (inbound + outbound SA, one policy) {:>6.0} B \
             (compiled SPD {compiled_full:.0} B); bypass policy alone {policy:>4.0} B \
             (compiled {compiled_policy:.0} B)",
            inbound_only - base,
            full - base,
        );
    }
    let n = 8;
    let tuns = tunnels(n, &mut rng);
    let text = policy_file(&tuns, false, Some(MAX_WINDOW));
    let (big, gw) = bytes_per(n, || gateway(&text));
    drop((gw, text));
    println!(
        "  N = {n:>6}, window 2^24: inbound SA + its inbound policy {:>9.0} B per entry",
        big - base / n as f64
    );
}

/// Runs `iters` packets, in chunks of the picks: `prepare` fills the chunk's buffers
/// (untimed), `each` handles one (timed); returns the time and how many `each` calls
/// returned `true`.
fn chunked(
    iters: u64,
    slots: &mut [[u8; SLOT]],
    mut prepare: impl FnMut(usize, &mut [u8; SLOT]) -> usize,
    mut each: impl FnMut(usize, &mut [u8; SLOT], usize) -> bool,
) -> (Duration, u64) {
    let (mut total, mut ok, mut left) = (Duration::ZERO, 0, iters);
    let mut lens = vec![0usize; slots.len()];
    while left > 0 {
        let k = (slots.len() as u64).min(left) as usize;
        for (j, slot) in slots[..k].iter_mut().enumerate() {
            lens[j] = prepare(j, slot);
        }
        let start = Instant::now();
        for (j, slot) in slots[..k].iter_mut().enumerate() {
            ok += u64::from(each(j, slot, lens[j]));
        }
        total += start.elapsed();
        left -= k as u64;
    }
    (total, ok)
}

/// Times `Gateway::inbound_sa_for` (the SAD lookup alone) on `spis` with the outer
/// addresses of the twins' packets, as benchmark `case`; every SPI must find an SA.
fn bench_sad_lookup(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    case: &str,
    n: usize,
    gw: &Gateway,
    spis: &[u32],
) {
    let src: IpAddr = "198.51.100.1".parse().expect("address");
    let dst: IpAddr = "192.0.2.1".parse().expect("address");
    g.bench_function(BenchmarkId::new(case, n), |b| {
        b.iter_custom(|iters| {
            let mut found = 0u64;
            let start = Instant::now();
            for k in 0..iters as usize {
                let spi = black_box(spis[k % spis.len()]);
                found += u64::from(gw.inbound_sa_for(spi, src, dst).is_some());
            }
            let t = start.elapsed();
            assert_eq!(found, iters, "every SPI finds its SA");
            t
        })
    });
}

fn bench_scale(c: &mut Criterion) {
    memory_report();
    let mut rng = Rng(0x5eed_0002);
    for &n in sizes() {
        let tuns = tunnels(n, &mut rng);
        let started = Instant::now();
        let mut gw = gateway(&policy_file(&tuns, true, None));
        println!(
            "scale N = {n}: gateway of {} SAs and {} policies built from its file in {:.2} s",
            2 * n,
            n + 1,
            started.elapsed().as_secs_f64()
        );
        let picked = picks(n, &mut rng);
        let mut twins: Vec<SecurityAssociation> = picked.iter().map(|&i| twin(&tuns[i])).collect();
        let mut slots = vec![[0u8; SLOT]; picked.len()];

        // Each picked SA accepts one packet; the same packets then come back as replays.
        let mut replayed: Vec<Vec<u8>> = Vec::with_capacity(picked.len());
        for (j, &i) in picked.iter().enumerate() {
            let len = seal_into(&mut twins[j], i, &mut slots[j]);
            let copy = slots[j][..len].to_vec();
            let mut pkt = PacketBuf::new(&mut slots[j], 0, len).expect("in bounds");
            let verdict = gw.inbound(&mut pkt, Duration::ZERO);
            assert!(
                matches!(verdict, Ok(Inbound::Decrypted { .. })),
                "{verdict:?}"
            );
            replayed.push(copy);
        }
        let spis: HashSet<u32> = tuns.iter().map(|t| t.in_spi).collect();
        let unknown: Vec<Vec<u8>> = (0..picked.len())
            .map(|_| {
                loop {
                    let s = (rng.next() as u32).max(256);
                    if !spis.contains(&s) {
                        break raw_esp(s);
                    }
                }
            })
            .collect();
        let map: HashMap<u32, usize> = tuns
            .iter()
            .enumerate()
            .map(|(i, t)| (t.in_spi, i))
            .collect();
        let picked_spis: Vec<u32> = picked.iter().map(|&i| tuns[i].in_spi).collect();

        let mut g = c.benchmark_group("scale");
        g.throughput(Throughput::Elements(1));
        g.sample_size(20);
        g.measurement_time(Duration::from_secs(3));
        g.warm_up_time(Duration::from_secs(1));

        for (case, packets, expect) in [
            ("inbound_spi/unknown", &unknown, "unknown SPI"),
            ("inbound_spi/replayed", &replayed, "replayed"),
        ] {
            let mut bufs: Vec<Vec<u8>> = packets.clone();
            g.bench_function(BenchmarkId::new(case, n), |b| {
                b.iter_custom(|iters| {
                    let mut failed_as_expected = 0u64;
                    let start = Instant::now();
                    for k in 0..iters as usize {
                        let buf = &mut bufs[k % packets.len()];
                        let len = buf.len();
                        let mut pkt = PacketBuf::new(buf, 0, len).expect("in bounds");
                        let r = gw.inbound(&mut pkt, Duration::ZERO);
                        failed_as_expected += u64::from(matches!(
                            r,
                            Err(Error::UnknownSpi { .. } | Error::Replayed { .. })
                        ));
                    }
                    let t = start.elapsed();
                    assert_eq!(failed_as_expected, iters, "every packet is {expect}");
                    t
                })
            });
            // Refused before any decryption: the buffers are as they were.
            assert_eq!(&bufs, packets);
        }
        g.bench_function(BenchmarkId::new("inbound_spi/hashmap", n), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for k in 0..iters as usize {
                    black_box(map.get(black_box(&picked_spis[k % picked_spis.len()])));
                }
                start.elapsed()
            })
        });
        bench_sad_lookup(&mut g, "inbound_sa_lookup/spi", n, &gw, &picked_spis);
        g.bench_function(BenchmarkId::new("inbound_packet", n), |b| {
            b.iter_custom(|iters| {
                let (t, ok) = chunked(
                    iters,
                    &mut slots,
                    |j, slot| seal_into(&mut twins[j], picked[j], slot),
                    |_, slot, len| {
                        let mut pkt = PacketBuf::new(slot, 0, len).expect("in bounds");
                        matches!(
                            gw.inbound(&mut pkt, Duration::ZERO),
                            Ok(Inbound::Decrypted { .. })
                        )
                    },
                );
                assert_eq!(ok, iters, "every packet decrypts");
                t
            })
        });
        let outgoing: Vec<Vec<u8>> = picked.iter().map(|&i| inner(local(i), REMOTE)).collect();
        g.bench_function(BenchmarkId::new("outbound_spd", n), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for k in 0..iters as usize {
                    let d = gw
                        .spd()
                        .lookup_packet(Direction::Outbound, &outgoing[k % outgoing.len()]);
                    black_box(d.ok().map(|d| d.sa));
                }
                start.elapsed()
            })
        });
        g.bench_function(BenchmarkId::new("outbound_packet", n), |b| {
            b.iter_custom(|iters| {
                let (t, ok) = chunked(
                    iters,
                    &mut slots,
                    |j, slot| {
                        slot[AT..AT + INNER].copy_from_slice(&outgoing[j]);
                        INNER
                    },
                    |_, slot, len| {
                        let mut pkt = PacketBuf::new(slot, AT, len).expect("in bounds");
                        matches!(
                            gw.outbound(&mut pkt, Duration::ZERO),
                            Ok(Outbound::Protected { .. })
                        )
                    },
                );
                assert_eq!(ok, iters, "every packet is encrypted");
                t
            })
        });
        // Last, as it adds SAs: every picked SPI shared with a group SA.
        for (j, &i) in picked.iter().enumerate() {
            let mut cfg = SaConfig::new(
                tuns[i].in_spi,
                Direction::Inbound,
                Mode::Tunnel,
                Cipher::Aes128Gcm,
                &rng.key(),
            );
            cfg.tunnel(
                "198.51.100.1".parse().expect("address"),
                "233.252.0.1".parse().expect("address"),
            )
            .lookup(SaLookup::SpiDestination);
            gw.add_sa(&format!("group{j}"), cfg, Duration::ZERO)
                .expect("a key of its own");
        }
        bench_sad_lookup(
            &mut g,
            "inbound_sa_lookup/spi_destination",
            n,
            &gw,
            &picked_spis,
        );
        let mut bufs: Vec<Vec<u8>> = replayed.clone();
        g.bench_function(
            BenchmarkId::new("inbound_spi/replayed_shared_spi", n),
            |b| {
                b.iter_custom(|iters| {
                    let mut failed_as_expected = 0u64;
                    let start = Instant::now();
                    for k in 0..iters as usize {
                        let buf = &mut bufs[k % replayed.len()];
                        let len = buf.len();
                        let mut pkt = PacketBuf::new(buf, 0, len).expect("in bounds");
                        let r = gw.inbound(&mut pkt, Duration::ZERO);
                        // (Too old by now: `inbound_packet` moved the windows on. Either is
                        // refused by the window check, before any decryption.)
                        failed_as_expected += u64::from(matches!(
                            r,
                            Err(Error::Replayed { .. } | Error::TooOld { .. })
                        ));
                    }
                    let t = start.elapsed();
                    assert_eq!(failed_as_expected, iters, "every packet is refused as old");
                    t
                })
            },
        );
        g.finish();
    }
}

criterion_group!(benches, bench_scale);
criterion_main!(benches);
