//! SPD lookup cost: the compiled classifier against the naive first-match scan and the
//! flow cache, for 10 to 100,000 rules, plus the compile time at 10,000 rules; and the
//! non-first fragment query (`Spd::lookup_non_first_fragment`, the same flows with
//! their ports taken away) against its plain scan.
//!
//! The rule sets and flows (IPv4 here) come from `spd_gen/mod.rs`, which the DPDK
//! `rte_acl` comparison (`examples/spd_acl.rs`, `dpdk-acl/acl_spd.c`) shares: local
//! networks from 64 site prefixes (/16 and /24), remotes mostly /24s and hosts out of
//! 172.16.0.0/12 (10% any), TCP 60% / UDP 25% / ICMP 10% / any 5%, local ports single
//! well-known ports, ranges or any, actions protect/bypass/discard, directions
//! both/outbound/inbound, and a final catch-all discard. Flows: half are built inside a
//! random rule's selectors (they hit that rule or an earlier one), half are random (most
//! reach the catch-all, the worst case of the naive scan).
//!
//! `packet/N` looks up the same flows as packets (`Spd::lookup_packet`, which reads a
//! whole packet's selectors straight into the classifier's key), `packet_parsed/N` as
//! the gateway did before session 13 (`Flow::from_packet`, then `Spd::lookup`); the
//! `_v6` rows do the same with the IPv6 rule sets of 10 and 1,000 rules.
//!
//! Run: `cargo bench -p ipsec-benches --bench spd` (about two minutes), or a part, e.g.
//! `-- spd_lookup/compiled`. Per-lookup figures: each iteration looks up 1,024 flows and
//! criterion reports elements per second. The bench prints, once per size, the compiled
//! memory (bytes per rule) and the time to compile.

mod spd_gen;

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ipsec_core::spd::EngineKind;
use ipsec_core::{Direction, Flow, Gateway, Spd, SpdCache};
use spd_gen::{FLOWS, Family, Rng, rule_set};

/// `flows` as non-first fragments see them: no ports, no ICMP type or code.
fn without_ports(flows: &[Flow]) -> Vec<Flow> {
    flows
        .iter()
        .map(|f| {
            let mut g = *f;
            (g.src_port, g.dst_port, g.icmp_type, g.icmp_code) = (None, None, None, None);
            g
        })
        .collect()
}

const SIZES: [usize; 5] = [10, 100, 1_000, 10_000, 100_000];
/// The naive scan is measured up to this many rules (at 100k it takes ~ms per lookup).
const NAIVE_MAX: usize = 10_000;

/// The rule set and flows of one size.
fn setup(n: usize) -> (Spd, Vec<Flow>) {
    let (text, flows) = rule_set(n, Family::V4);
    let t = Instant::now();
    let spd = Spd::from_toml(&text).expect("generated policies load");
    let load = t.elapsed();
    let t = Instant::now();
    let again = spd.recompiled(EngineKind::Partitioned);
    let compile = t.elapsed();
    let hits = flows
        .iter()
        .filter(|f| spd.lookup(f).policy != Some("catch-all"))
        .count();
    eprintln!(
        "spd {n:>6} rules: compiled {:>11} bytes ({:>7.0} B/rule), compile {:>9.3} ms, \
         parse+compile {:>9.3} ms, {hits}/{FLOWS} flows hit a rule before the catch-all",
        again.compiled_bytes(),
        again.compiled_bytes() as f64 / n as f64,
        compile.as_secs_f64() * 1e3,
        load.as_secs_f64() * 1e3,
    );
    if std::env::var_os("SPD_STATS").is_some() {
        eprint!("{}", spd.engine_stats());
    }
    // The bench is only meaningful if both agree; check on the flows measured.
    for f in flows.iter().take(if n > NAIVE_MAX { 64 } else { FLOWS }) {
        assert_eq!(spd.lookup(f), spd.lookup_linear(f));
    }
    let fragments = without_ports(&flows);
    let unresolved = fragments
        .iter()
        .filter(|f| spd.lookup_non_first_fragment(f).decided().is_none())
        .count();
    eprintln!(
        "spd {n:>6} rules: non-first fragment index {:>11} bytes ({:>7.0} B/rule) of the \
         compiled bytes; {unresolved}/{FLOWS} of the flows' non-first fragments are unresolved",
        again.fragment_index_bytes(),
        again.fragment_index_bytes() as f64 / n as f64,
    );
    for f in fragments
        .iter()
        .take(if n > NAIVE_MAX { 64 } else { FLOWS })
    {
        assert_eq!(
            spd.lookup_non_first_fragment(f),
            spd.lookup_non_first_fragment_linear(f)
        );
    }
    (spd, flows)
}

/// Changes pending on a live gateway's SPD in `compiled_pending`.
const PENDING: usize = 32;

/// A gateway of `spd`'s policies with [`PENDING`] changes pending: half of them removals
/// of random policies, half installations of new ones before random policies.
fn with_pending_changes(spd: &Spd, n: usize) -> Gateway {
    let mut rng = Rng(0x5eed_9000 + n as u64);
    let mut gw = Gateway::new(spd.clone(), Duration::ZERO).expect("a gateway");
    for k in 0..PENDING / 2 {
        let count = gw.spd().policies().len() - 1;
        // A compiled policy (not one installed here), not the catch-all; at most half
        // of them.
        if k >= n / 2 {
            break;
        }
        let victim = loop {
            let p = &gw.spd().policies()[rng.below(count as u64) as usize];
            if !p.name().starts_with("pending") {
                break p.name().to_owned();
            }
        };
        gw.remove_policy(&victim).expect("removed");
        let before = gw.spd().policies()[rng.below(count as u64 - 1) as usize]
            .name()
            .to_owned();
        let text = format!(
            "name = \"pending{k}\"\nlocal = \"10.{}.0.0/16\"\nremote = \"172.16.{}.0/24\"\n\
             protocol = \"tcp\"\naction = \"bypass\"\n",
            rng.below(64),
            rng.below(256)
        );
        gw.install_policy(&text, Some(&before)).expect("installed");
    }
    assert_eq!(gw.pending_policy_changes(), 2 * (PENDING / 2).min(n / 2));
    gw
}

/// `flow` as a packet: an IPv4 or IPv6 header, then 8 bytes of upper-layer header (its
/// ports, or its ICMP type and code, first).
fn packet_of(flow: &Flow) -> Vec<u8> {
    let mut upper = [0u8; 8];
    if let (Some(s), Some(d)) = (flow.src_port, flow.dst_port) {
        upper[..2].copy_from_slice(&s.to_be_bytes());
        upper[2..4].copy_from_slice(&d.to_be_bytes());
    } else if let Some(t) = flow.icmp_type {
        upper[0] = t;
        upper[1] = flow.icmp_code.unwrap_or(0);
    }
    let mut p = match (flow.src, flow.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, flow.protocol, 0, 0];
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            h
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut h = vec![0x60, 0, 0, 0, 0, 8, flow.protocol, 64];
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            h
        }
        _ => unreachable!("the generated flows are of one family"),
    };
    p.extend_from_slice(&upper);
    p
}

/// The `packet` and `packet_parsed` rows of `spd` and `flows` (`suffix` names the
/// family).
fn bench_packets(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    spd: &Spd,
    flows: &[Flow],
    suffix: &str,
    n: usize,
) {
    let packets: Vec<(Direction, Vec<u8>)> =
        flows.iter().map(|f| (f.direction, packet_of(f))).collect();
    for ((direction, p), f) in packets.iter().zip(flows) {
        assert_eq!(spd.lookup_packet(*direction, p), Ok(spd.lookup(f)));
    }
    g.bench_with_input(
        BenchmarkId::new(format!("packet{suffix}"), n),
        &packets,
        |b, packets| {
            b.iter(|| {
                for (direction, p) in packets {
                    black_box(spd.lookup_packet(*direction, black_box(p)).ok());
                }
            });
        },
    );
    g.bench_with_input(
        BenchmarkId::new(format!("packet_parsed{suffix}"), n),
        &packets,
        |b, packets| {
            b.iter(|| {
                for (direction, p) in packets {
                    if let Ok(f) = Flow::from_packet(*direction, black_box(p)) {
                        black_box(spd.lookup(&f));
                    }
                }
            });
        },
    );
}

fn bench_spd(c: &mut Criterion) {
    let mut g = c.benchmark_group("spd_lookup");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
        .throughput(Throughput::Elements(FLOWS as u64));
    let mut compile_input = None;
    for n in SIZES {
        let (spd, flows) = setup(n);
        g.bench_with_input(BenchmarkId::new("compiled", n), &flows, |b, flows| {
            b.iter(|| {
                for f in flows {
                    black_box(spd.lookup(black_box(f)));
                }
            });
        });
        bench_packets(&mut g, &spd, &flows, "", n);
        if n == 10 || n == 1_000 {
            let (text, flows) = rule_set(n, Family::V6);
            let spd = Spd::from_toml(&text).expect("generated policies load");
            bench_packets(&mut g, &spd, &flows, "_v6", n);
        }
        let fragments = without_ports(&flows);
        g.bench_with_input(
            BenchmarkId::new("non_first_fragment", n),
            &fragments,
            |b, fragments| {
                b.iter(|| {
                    for f in fragments {
                        black_box(spd.lookup_non_first_fragment(black_box(f)));
                    }
                });
            },
        );
        if n <= NAIVE_MAX {
            g.bench_with_input(
                BenchmarkId::new("non_first_fragment_naive", n),
                &fragments,
                |b, fragments| {
                    b.iter(|| {
                        for f in fragments {
                            black_box(spd.lookup_non_first_fragment_linear(black_box(f)));
                        }
                    });
                },
            );
        }
        // The same lookups on a live gateway's SPD with changes pending beside the
        // compiled classifier: PENDING / 2 policies removed and as many installed at
        // random places (the most a gateway that rebuilds when
        // `Gateway::policy_rebuild_due` says so ever has).
        let live = with_pending_changes(&spd, n);
        g.bench_with_input(
            BenchmarkId::new("compiled_pending", n),
            &flows,
            |b, flows| {
                let live = live.spd();
                b.iter(|| {
                    for f in flows {
                        black_box(live.lookup(black_box(f)));
                    }
                });
            },
        );
        g.bench_with_input(
            BenchmarkId::new("non_first_fragment_pending", n),
            &fragments,
            |b, fragments| {
                let live = live.spd();
                b.iter(|| {
                    for f in fragments {
                        black_box(live.lookup_non_first_fragment(black_box(f)));
                    }
                });
            },
        );
        drop(live);
        let mut cache = SpdCache::new(&spd, 16 * FLOWS);
        g.bench_with_input(BenchmarkId::new("cached", n), &flows, |b, flows| {
            b.iter(|| {
                for f in flows {
                    black_box(cache.lookup(black_box(f)));
                }
            });
        });
        if n <= NAIVE_MAX {
            // The alternative structure (see the `spd` module docs), for comparison.
            let bv = spd.recompiled(EngineKind::BitVector);
            eprintln!(
                "spd {n:>6} rules: bit-vector classifier {:>11} bytes ({:>7.0} B/rule)",
                bv.compiled_bytes(),
                bv.compiled_bytes() as f64 / n as f64
            );
            g.bench_with_input(BenchmarkId::new("bitvector", n), &flows, |b, flows| {
                b.iter(|| {
                    for f in flows {
                        black_box(bv.lookup(black_box(f)));
                    }
                });
            });
            g.bench_with_input(BenchmarkId::new("naive", n), &flows, |b, flows| {
                b.iter(|| {
                    for f in flows {
                        black_box(spd.lookup_linear(black_box(f)));
                    }
                });
            });
        }
        if n == 10_000 {
            compile_input = Some(spd);
        }
    }
    g.finish();
    if let Some(spd) = compile_input {
        let mut g = c.benchmark_group("spd_compile");
        g.sample_size(10).measurement_time(Duration::from_secs(5));
        g.bench_function("10000", |b| {
            b.iter(|| black_box(spd.recompiled(EngineKind::Partitioned)))
        });
        g.finish();
    }
}

criterion_group!(benches, bench_spd);
criterion_main!(benches);
