//! Many cores: one thread on one SA against two threads on two SAs (the per-core SA
//! model of RFC 9611, nothing shared) and two threads on one SA
//! ([`ipsec_core::SharedSa`]: sequence numbers leased from one atomic counter in blocks,
//! one replay window behind a mutex).
//!
//! Groups `cores_encrypt` and `cores_decrypt`, AES-128-GCM tunnel mode, inner packets of
//! 64, 512 and 1420 bytes. One iteration is **one packet**, whichever thread processed
//! it: the threads share the iterations and the time is the wall-clock time from a
//! barrier that starts them together to the last one's end, so `time/iter` is the
//! aggregate cost per packet and the speed-up over one thread is the ratio of two
//! figures of one size (the threads are spawned once per sample, before the barrier).
//!
//! * `1_thread_1_sa`: the baseline, an ordinary `SecurityAssociation`.
//! * `2_threads_2_sas`: each thread its own SA (no shared state at all).
//! * `2_threads_shared_sa`: two lanes of one `SharedSa`, blocks of 8 sequence numbers
//!   (decrypt: both lanes check and record in the one replay window).
//! * `2_threads_shared_sa_block1` (encrypt): one atomic increment per packet.
//! * `1_thread_1_gateway`: the whole gateway path (SPD lookup, the SA, ESP) of one
//!   gateway whose one policy protects everything through one SA, behind a mutex
//!   taken per packet (as a control thread would share it).
//! * `2_threads_2_gateways_shared_sa`: the worker-gateway model
//!   ([`ipsec_core::Gateway::add_sa_lane`]): each thread its own gateway, behind its own
//!   mutex taken per packet, holding its lane of one `SharedSa` (blocks of 8).
//!
//! Decryption has the replay window off (size 0) so that one ciphertext is accepted
//! again and again; the shared lanes still take the window's lock twice per packet.
//! Each packet is first restored from a template (a memcpy, in every figure).
//!
//! Run: `cargo bench -p ipsec-benches --bench cores` (about a minute). On a machine
//! with fewer than two free cores the two-thread figures measure the scheduler, not
//! the library: `nproc`, and what else runs, go with any figure quoted.

use std::hint::black_box;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ipsec_core::{
    Cipher, Direction, Gateway, Mode, PacketBuf, SaConfig, SaLane, SecurityAssociation, SharedSa,
    SharedSaOptions, Spd,
};

mod common;
use common::{SPI, inner_packet};

const SIZES: [usize; 3] = [64, 512, 1420];
const KEY: [u8; 20] = [0x42; 20];
const ROOM: usize = 128;

fn config(direction: Direction) -> SaConfig {
    let mut cfg = SaConfig::new(SPI, direction, Mode::Tunnel, Cipher::Aes128Gcm, &KEY);
    if direction == Direction::Outbound {
        cfg.tunnel(
            "192.0.2.1".parse().expect("address"),
            "192.0.2.2".parse().expect("address"),
        );
    } else {
        cfg.replay_window(0);
    }
    cfg
}

/// What one thread processes packets with.
enum Worker {
    Sa(Box<SecurityAssociation>),
    Lane(Box<SaLane>),
    /// Shared as a control thread would share it (none runs here).
    Gateway(Arc<Mutex<Gateway>>),
}

/// A gateway whose one policy protects every packet of `direction` through the SA
/// `"sa"`, installed by `install`.
fn gateway(direction: Direction, install: impl FnOnce(&mut Gateway)) -> Worker {
    let dir = if direction == Direction::Outbound {
        "outbound"
    } else {
        "inbound"
    };
    let spd =
        Spd::from_toml("[[policy]]\nname = \"deny\"\naction = \"discard\"\n").expect("policy file");
    let mut gw = Gateway::new(spd, Duration::ZERO).expect("gateway");
    install(&mut gw);
    let policy =
        format!("name = \"all\"\ndirection = \"{dir}\"\naction = \"protect\"\nsa = \"sa\"\n");
    gw.install_policy(&policy, Some("deny")).expect("policy");
    Worker::Gateway(Arc::new(Mutex::new(gw)))
}

impl Worker {
    fn encrypt(&mut self, p: &mut PacketBuf<'_>) {
        let r = match self {
            Worker::Sa(sa) => sa.encrypt(p, Duration::ZERO),
            Worker::Lane(lane) => lane.encrypt(p, Duration::ZERO),
            Worker::Gateway(gw) => gw
                .lock()
                .expect("gateway")
                .outbound(p, Duration::ZERO)
                .map(|_| ()),
        };
        r.expect("encrypts");
    }

    fn decrypt(&mut self, p: &mut PacketBuf<'_>) {
        let r = match self {
            Worker::Sa(sa) => sa.decrypt(p, Duration::ZERO),
            Worker::Lane(lane) => lane.decrypt(p, Duration::ZERO),
            Worker::Gateway(gw) => gw
                .lock()
                .expect("gateway")
                .inbound(p, Duration::ZERO)
                .map(|_| ()),
        };
        r.expect("decrypts");
    }
}

/// The workers of a scenario: `(threads, make)`.
#[derive(Clone, Copy)]
enum Scenario {
    OneThreadOneSa,
    TwoThreadsTwoSas,
    TwoThreadsSharedSa { block: u32 },
    OneThreadOneGateway,
    TwoThreadsTwoGatewaysSharedSa,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::OneThreadOneSa => "1_thread_1_sa",
            Scenario::TwoThreadsTwoSas => "2_threads_2_sas",
            Scenario::TwoThreadsSharedSa { block: 1 } => "2_threads_shared_sa_block1",
            Scenario::TwoThreadsSharedSa { .. } => "2_threads_shared_sa",
            Scenario::OneThreadOneGateway => "1_thread_1_gateway",
            Scenario::TwoThreadsTwoGatewaysSharedSa => "2_threads_2_gateways_shared_sa",
        }
    }

    fn workers(self, direction: Direction) -> Vec<Worker> {
        let sa = || {
            Worker::Sa(Box::new(
                SecurityAssociation::new(config(direction), Duration::ZERO).expect("SA"),
            ))
        };
        match self {
            Scenario::OneThreadOneSa => vec![sa()],
            Scenario::TwoThreadsTwoSas => vec![sa(), sa()],
            Scenario::TwoThreadsSharedSa { block } => {
                let (_, lanes) = SharedSa::new(
                    config(direction),
                    SharedSaOptions::lanes(2).with_block(block),
                    Duration::ZERO,
                )
                .expect("shared SA");
                lanes
                    .into_iter()
                    .map(|l| Worker::Lane(Box::new(l)))
                    .collect()
            }
            Scenario::OneThreadOneGateway => vec![gateway(direction, |gw| {
                gw.add_sa("sa", config(direction), Duration::ZERO)
                    .expect("SA");
            })],
            Scenario::TwoThreadsTwoGatewaysSharedSa => {
                let (_, lanes) =
                    SharedSa::new(config(direction), SharedSaOptions::lanes(2), Duration::ZERO)
                        .expect("shared SA");
                lanes
                    .into_iter()
                    .map(|lane| {
                        gateway(direction, |gw| {
                            gw.add_sa_lane("sa", lane).expect("lane");
                        })
                    })
                    .collect()
            }
        }
    }
}

/// Runs `iters` packets split between the workers, one thread each, from a common
/// start; returns the wall-clock time.
fn run(workers: Vec<Worker>, iters: u64, template: &[u8], outbound: bool) -> Duration {
    let n = workers.len() as u64;
    let barrier = Barrier::new(workers.len() + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = workers
            .into_iter()
            .enumerate()
            .map(|(i, mut w)| {
                let barrier = &barrier;
                // The first threads take the remainder.
                let count = iters / n + u64::from((i as u64) < iters % n);
                s.spawn(move || {
                    let mut buf = vec![0u8; ROOM + template.len() + ROOM];
                    let at = if outbound { ROOM } else { 0 };
                    barrier.wait();
                    for _ in 0..count {
                        buf[at..at + template.len()].copy_from_slice(template);
                        let mut p =
                            PacketBuf::new(&mut buf, at, template.len()).expect("in bounds");
                        if outbound {
                            w.encrypt(&mut p);
                        } else {
                            w.decrypt(&mut p);
                        }
                        black_box(p.data());
                    }
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for h in handles {
            h.join().expect("worker");
        }
        start.elapsed()
    })
}

fn cores(c: &mut Criterion) {
    let encrypt_scenarios = [
        Scenario::OneThreadOneSa,
        Scenario::TwoThreadsTwoSas,
        Scenario::TwoThreadsSharedSa { block: 8 },
        Scenario::TwoThreadsSharedSa { block: 1 },
        Scenario::OneThreadOneGateway,
        Scenario::TwoThreadsTwoGatewaysSharedSa,
    ];
    let decrypt_scenarios = [
        Scenario::OneThreadOneSa,
        Scenario::TwoThreadsTwoSas,
        Scenario::TwoThreadsSharedSa { block: 8 },
        Scenario::OneThreadOneGateway,
        Scenario::TwoThreadsTwoGatewaysSharedSa,
    ];
    for (group, outbound, scenarios) in [
        ("cores_encrypt", true, &encrypt_scenarios[..]),
        ("cores_decrypt", false, &decrypt_scenarios[..]),
    ] {
        let mut g = c.benchmark_group(group);
        g.measurement_time(Duration::from_secs(2))
            .warm_up_time(Duration::from_millis(500))
            .sample_size(20);
        for size in SIZES {
            let inner = inner_packet(size);
            let template = if outbound {
                inner
            } else {
                // One protected packet, decrypted again and again.
                let mut sa = SecurityAssociation::new(config(Direction::Outbound), Duration::ZERO)
                    .expect("SA");
                let mut buf = vec![0u8; ROOM + size + ROOM];
                buf[ROOM..ROOM + size].copy_from_slice(&inner);
                let mut p = PacketBuf::new(&mut buf, ROOM, size).expect("in bounds");
                sa.encrypt(&mut p, Duration::ZERO).expect("encrypts");
                p.data().to_vec()
            };
            g.throughput(Throughput::Bytes(size as u64));
            for &scenario in scenarios {
                let direction = if outbound {
                    Direction::Outbound
                } else {
                    Direction::Inbound
                };
                g.bench_function(BenchmarkId::new(scenario.name(), size), |b| {
                    b.iter_custom(|iters| {
                        run(scenario.workers(direction), iters, &template, outbound)
                    });
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, cores);
criterion_main!(benches);
