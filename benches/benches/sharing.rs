//! How the packet threads of one data plane should share the SAD (issue 12 §1: "an
//! RCU-style swap, e.g. `arc-swap`, or per-SA state that is only ever touched
//! atomically: choose by measurement"). This measures the sharing itself, without
//! crypto: per packet, find the SA of an SPI among 100,000 (1,024 of them picked at
//! random, as `scale` does) and advance that SA's sequence counter, on one thread and
//! on two at once.
//!
//! Group `sharing_packet` (one iteration is one packet, whichever thread took it;
//! wall-clock time from a barrier to the last thread's end, so `time/iter` is the
//! aggregate cost per packet and the two-thread speed-up is the ratio of two figures):
//!
//! * `worker_maps`: the model the library chose ([`ipsec_core::Gateway::add_sa_lane`]):
//!   each thread its own SA map and its own SA state, nothing shared on the packet
//!   path (a control call is applied to every worker's map in turn).
//! * `arc_swap`: one SAD behind `arc_swap::ArcSwap` (read-copy-update): each packet
//!   loads the current map, finds the SA, and advances its counter atomically (SA
//!   state shared by the threads has to be atomic or locked).
//! * `rwlock`: one SAD behind a `std` `RwLock`, read-locked per packet, atomic counters.
//! * `mutex`: one SAD behind a `Mutex`, locked per packet (one gateway shared by
//!   threads, as `cores`' `1_thread_1_gateway`).
//!
//! Group `sharing_update`, one thread: what adding one SA costs the data plane at
//! 100,000 SAs. `worker_maps/2_workers`: one insert (and removal, to stay at
//! 100,000) into each of two workers' maps. `arc_swap/copy`: the RCU update as
//! `arc-swap` does it on a plain map, copy the map, insert, swap (the old map freed
//! when the last reader lets go): O(SAs) per change, so an RCU SAD at this size needs a
//! persistent map to approach the worker maps.
//!
//! Run: `cargo bench -p ipsec-benches --bench sharing` (about a minute). With fewer
//! than two free cores the two-thread figures measure the scheduler: quote `nproc` and
//! the load with any figure.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// SAs in the SAD.
const SAS: usize = 100_000;
/// SAs the packets go to (drawn at random from all of them).
const PICKED: usize = 1_024;

/// SPI -> index into the SA states.
type SpiMap = HashMap<u32, usize, foldhash::fast::RandomState>;

/// A SAD whose SA state is shared by the threads: atomic counters.
struct SharedSad {
    by_spi: SpiMap,
    seq: Vec<AtomicU64>,
}

/// A SAD owned by one thread (or behind a mutex): plain counters.
#[derive(Clone)]
struct OwnedSad {
    by_spi: SpiMap,
    seq: Vec<u64>,
}

/// xorshift64, for SPIs and picks that do not depend on a crate's generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// 100,000 distinct SPIs (at least 256) and the 1,024 the packets carry.
fn spis() -> (Vec<u32>, Vec<u32>) {
    let mut rng = Rng(0x5eed_0003);
    let mut seen = SpiMap::default();
    let mut all = Vec::with_capacity(SAS);
    while all.len() < SAS {
        let spi = (rng.next() as u32).max(256);
        if seen.insert(spi, all.len()).is_none() {
            all.push(spi);
        }
    }
    let picked = (0..PICKED)
        .map(|_| all[(rng.next() % SAS as u64) as usize])
        .collect();
    (all, picked)
}

fn owned_sad(all: &[u32]) -> OwnedSad {
    OwnedSad {
        by_spi: all.iter().enumerate().map(|(i, &s)| (s, i)).collect(),
        seq: vec![0; all.len()],
    }
}

fn shared_sad(all: &[u32]) -> SharedSad {
    SharedSad {
        by_spi: all.iter().enumerate().map(|(i, &s)| (s, i)).collect(),
        seq: all.iter().map(|_| AtomicU64::new(0)).collect(),
    }
}

/// Runs `iters` packets split over `threads` threads, each packet `packet(thread, k)`
/// (`k` counts that thread's packets); the wall-clock time from the barrier that
/// starts them to the last one's end.
fn run_threads<S: Send>(
    iters: u64,
    states: Vec<S>,
    packet: impl Fn(&mut S, usize) + Sync,
) -> Duration {
    let threads = states.len();
    let barrier = Barrier::new(threads + 1);
    let per_thread = (iters as usize).div_ceil(threads);
    std::thread::scope(|s| {
        for mut state in states {
            let (barrier, packet) = (&barrier, &packet);
            s.spawn(move || {
                barrier.wait();
                for k in 0..per_thread {
                    packet(&mut state, k);
                }
            });
        }
        barrier.wait();
        let start = Instant::now();
        // The scope joins every thread before it returns.
        start
    })
    .elapsed()
}

fn bench_packet(c: &mut Criterion) {
    let (all, picked) = spis();
    let picked = &picked;
    let mut g = c.benchmark_group("sharing_packet");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(3));

    for threads in [1usize, 2] {
        let id = |model: &str| BenchmarkId::new(model, format!("{threads}_threads"));

        let mut workers: Vec<OwnedSad> = (0..threads).map(|_| owned_sad(&all)).collect();
        g.bench_function(id("worker_maps"), |b| {
            b.iter_custom(|iters| {
                let states: Vec<&mut OwnedSad> = workers.iter_mut().collect();
                run_threads(iters, states, |sad, k| {
                    let spi = black_box(picked[k % PICKED]);
                    if let Some(&i) = sad.by_spi.get(&spi) {
                        sad.seq[i] += 1;
                    }
                })
            })
        });
        let sent: u64 = workers.iter().flat_map(|w| &w.seq).sum();
        assert!(sent > 0, "packets found their SAs");

        let rcu = ArcSwap::from_pointee(shared_sad(&all));
        g.bench_function(id("arc_swap"), |b| {
            b.iter_custom(|iters| {
                run_threads(iters, vec![(); threads], |(), k| {
                    let spi = black_box(picked[k % PICKED]);
                    let sad = rcu.load();
                    if let Some(&i) = sad.by_spi.get(&spi) {
                        sad.seq[i].fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
        });

        let locked = RwLock::new(shared_sad(&all));
        g.bench_function(id("rwlock"), |b| {
            b.iter_custom(|iters| {
                run_threads(iters, vec![(); threads], |(), k| {
                    let spi = black_box(picked[k % PICKED]);
                    let sad = locked.read().expect("not poisoned");
                    if let Some(&i) = sad.by_spi.get(&spi) {
                        sad.seq[i].fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
        });

        let one = Mutex::new(owned_sad(&all));
        g.bench_function(id("mutex"), |b| {
            b.iter_custom(|iters| {
                run_threads(iters, vec![(); threads], |(), k| {
                    let spi = black_box(picked[k % PICKED]);
                    let mut sad = one.lock().expect("not poisoned");
                    if let Some(&i) = sad.by_spi.get(&spi) {
                        sad.seq[i] += 1;
                    }
                })
            })
        });
    }
    g.finish();
}

fn bench_update(c: &mut Criterion) {
    let (all, _) = spis();
    let mut g = c.benchmark_group("sharing_update");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(3));
    // SPIs no SA has (SPIs are at least 256).
    let fresh = |k: u64| (k % 255) as u32 + 1;

    let mut workers: Vec<OwnedSad> = (0..2).map(|_| owned_sad(&all)).collect();
    g.bench_function("worker_maps/2_workers", |b| {
        let mut k = 0u64;
        b.iter(|| {
            k += 1;
            for w in &mut workers {
                w.by_spi.insert(fresh(k), 0);
                w.by_spi.remove(&fresh(k));
            }
        })
    });

    let rcu = ArcSwap::from_pointee(owned_sad(&all));
    g.bench_function("arc_swap/copy", |b| {
        let mut k = 0u64;
        b.iter(|| {
            k += 1;
            let mut next = OwnedSad::clone(&rcu.load());
            next.by_spi.insert(fresh(k), 0);
            next.by_spi.remove(&fresh(k));
            rcu.store(Arc::new(next));
        })
    });
    g.finish();
    assert_eq!(
        rcu.load().by_spi.len(),
        SAS,
        "every update left 100,000 SAs"
    );
}

criterion_group!(benches, bench_packet, bench_update);
criterion_main!(benches);
