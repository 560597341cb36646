//! Anti-replay window cost per packet: `check` (before decryption) plus `update` (after
//! the ICV verified), as an inbound SA calls them, for packets in order and reordered
//! within blocks of 32, for several window sizes, with and without ESN.
//!
//! Run with `cargo bench -p ipsec-benches --bench replay` (add `-- --quick` for a short
//! run). Figures are per packet: criterion reports elements per second.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ipsec_core::ReplayWindow;

/// Packets per measured iteration.
const BATCH: u64 = 4096;
/// Reordering happens within blocks of this many packets.
const BLOCK: usize = 32;

/// A fixed permutation of `0..BLOCK` (xorshift-driven Fisher-Yates, fixed seed), so every
/// packet arrives at most `BLOCK - 1` positions late or early.
fn block_permutation() -> [u64; BLOCK] {
    let mut p: [u64; BLOCK] = core::array::from_fn(|i| i as u64);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..BLOCK).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        p.swap(i, (state % (i as u64 + 1)) as usize);
    }
    p
}

/// The offsets, within a batch, of the packets in arrival order.
fn arrival_order(reordered: bool) -> Vec<u64> {
    let perm = block_permutation();
    (0..BATCH)
        .map(|i| {
            if reordered {
                i - i % BLOCK as u64 + perm[(i % BLOCK as u64) as usize]
            } else {
                i
            }
        })
        .collect()
}

/// The receive path for one batch starting after `base`: returns how many were fresh.
#[inline]
fn receive_batch(w: &mut ReplayWindow, base: u64, order: &[u64]) -> u64 {
    let mut fresh = 0;
    for &off in order {
        let wire = (base + 1 + off) as u32;
        if let Ok(seq) = w.check(black_box(wire)) {
            fresh += u64::from(w.update(seq).is_ok());
        }
    }
    fresh
}

fn replay(c: &mut Criterion) {
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(BATCH));
    for reordered in [false, true] {
        let order = arrival_order(reordered);
        let name = if reordered { "reordered32" } else { "in_order" };
        for size in [64u32, 1024, 1 << 20] {
            for esn in [false, true] {
                // With ESN start just below 2^32, so the run crosses into the high half.
                let start = if esn { (1u64 << 32) - 10 * BATCH } else { 0 };
                let mut w = ReplayWindow::with_highest(size, esn, start).expect("valid size");
                let mut base = start;
                // Sanity: every packet of a batch is fresh.
                assert_eq!(receive_batch(&mut w, base, &order), BATCH);
                base += BATCH;
                let id = BenchmarkId::new(
                    name,
                    format!("{size}/{}", if esn { "esn" } else { "no-esn" }),
                );
                group.bench_function(id, |b| {
                    b.iter(|| {
                        if !esn && base + 2 * BATCH > u64::from(u32::MAX) {
                            // The 32-bit space is used up: start a new window (rare).
                            w = ReplayWindow::new(size, esn).expect("valid size");
                            base = 0;
                        }
                        let fresh = receive_batch(&mut w, base, &order);
                        base += BATCH;
                        black_box(fresh)
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, replay);
criterion_main!(benches);
