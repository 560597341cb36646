//! The C ABI's cost measured A/B: the Rust call and the C entry point alternate in
//! short batches inside one process, and each batch pair is compared with itself.
//!
//! On a shared machine a criterion run of the Rust call and a later run of the C call
//! can see different interference, which swamps a difference of a few nanoseconds
//! (`benches/ffi.rs` has the criterion figures). Here every round times a batch of Rust
//! calls and then a batch of C calls on the same buffers, microseconds apart; the
//! median over many rounds of (C - Rust) per packet is the cost of the C entry point,
//! and interference that hits one round hits both halves alike or shows as an outlier
//! the median ignores. The order inside a round alternates to cancel warm-up effects.
//!
//! Same setup as `benches/ffi.rs`: AES-128-GCM, tunnel mode, IPv4/UDP inner packets,
//! each call restores its input with `copy_from_slice`, the C entry points called
//! through a function pointer the optimiser cannot see through.
//!
//! Run: `cargo bench -p ipsec-benches --bench ffi_ab` (about 20 s). Without `--bench`
//! (as `cargo test --benches` runs it) it does a few rounds only, as a smoke test.
#![allow(unsafe_code)] // calling the C entry points is the point

use std::hint::black_box;
use std::time::{Duration, Instant};

mod common;
mod ffi_setup;
use common::{inner_packet, refilled_burst};
use ffi_setup::{BURST, BurstFn, CSa, OneFn, rust_sa};

use ipsec::{ipsec_packet, ipsec_status};
use ipsec_core::{Direction, PacketBuf};

const NOW: Duration = Duration::ZERO;

/// Rounds of (Rust batch, C batch); returns per-operation medians of Rust, C and of the
/// per-round difference, in ns per call of `rust`/`c`.
fn ab(rounds: usize, batch: usize, mut rust: impl FnMut(), mut c: impl FnMut()) -> (f64, f64, f64) {
    let mut r = Vec::with_capacity(rounds);
    let mut k = Vec::with_capacity(rounds);
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        for _ in 0..batch {
            f();
        }
        t.elapsed().as_nanos() as f64 / batch as f64
    };
    for i in 0..rounds {
        let (tr, tc) = if i % 2 == 0 {
            let tr = time(&mut rust);
            (tr, time(&mut c))
        } else {
            let tc = time(&mut c);
            (time(&mut rust), tc)
        };
        r.push(tr);
        k.push(tc);
    }
    let mut d: Vec<f64> = r.iter().zip(&k).map(|(a, b)| b - a).collect();
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (med(&mut r), med(&mut k), med(&mut d))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (rounds, batch) = if full { (4000, 32) } else { (4, 2) };
    let c_encrypt: OneFn = black_box(ipsec::ipsec_sa_encrypt);
    let c_decrypt: OneFn = black_box(ipsec::ipsec_sa_decrypt);
    let c_encrypt_burst: BurstFn = black_box(ipsec::ipsec_sa_encrypt_burst);
    let c_decrypt_burst: BurstFn = black_box(ipsec::ipsec_sa_decrypt_burst);
    let (c_out_sa, c_in_sa) = (CSa::new(Direction::Outbound), CSa::new(Direction::Inbound));
    let (c_out, c_in) = (c_out_sa.0, c_in_sa.0);
    let (mut r_out, mut r_in) = (rust_sa(Direction::Outbound), rust_sa(Direction::Inbound));

    println!("ns per call, medians over {rounds} rounds of {batch} calls each way");
    println!(
        "{:<22} {:>9} {:>9} {:>11} {:>7}",
        "", "rust", "c", "c - rust", "c/rust"
    );
    let report = |name: &str, (r, c, d): (f64, f64, f64)| {
        println!("{name:<22} {r:>9.1} {c:>9.1} {d:>11.1} {:>7.3}", c / r);
    };

    for size in [64usize, 1420] {
        let inner = inner_packet(size);
        let head = r_out.max_headroom();
        let slot = head + size + r_out.tailroom_for(size);
        let mut buf = vec![0u8; slot];
        // Both closures reach `buf` through this pointer: they never run at once.
        let bp = buf.as_mut_ptr();
        let enc = ab(
            rounds,
            batch,
            || {
                // SAFETY: `bp` points to `slot` bytes; no other borrow is live.
                let b = unsafe { std::slice::from_raw_parts_mut(bp, slot) };
                b[head..head + size].copy_from_slice(&inner);
                let mut p = PacketBuf::new(b, head, size).expect("in bounds");
                r_out.encrypt(&mut p, NOW).expect("encrypts");
                black_box(p.len());
            },
            || {
                // SAFETY: as above.
                let b = unsafe { std::slice::from_raw_parts_mut(bp, slot) };
                b[head..head + size].copy_from_slice(&inner);
                let (mut off, mut len) = (head, size);
                // SAFETY: `b` has `slot` bytes; off/len valid.
                let st = unsafe { c_encrypt(c_out, b.as_mut_ptr(), slot, &mut off, &mut len, 0) };
                assert_eq!(st, ipsec_status::IPSEC_OK);
                black_box(len);
            },
        );
        report(&format!("encrypt/{size}"), enc);

        let mut p = PacketBuf::new(&mut buf, head, size).expect("in bounds");
        p.buffer_mut()[head..head + size].copy_from_slice(&inner);
        r_out.encrypt(&mut p, NOW).expect("encrypts");
        let protected = p.data().to_vec();
        let plen = protected.len();
        let mut pbuf = vec![0u8; plen];
        let pp = pbuf.as_mut_ptr();
        let dec = ab(
            rounds,
            batch,
            || {
                // SAFETY: `pp` points to `plen` bytes; no other borrow is live.
                let b = unsafe { std::slice::from_raw_parts_mut(pp, plen) };
                b.copy_from_slice(&protected);
                let mut p = PacketBuf::new(b, 0, plen).expect("in bounds");
                r_in.decrypt(&mut p, NOW).expect("decrypts");
                black_box(p.len());
            },
            || {
                // SAFETY: as above.
                let b = unsafe { std::slice::from_raw_parts_mut(pp, plen) };
                b.copy_from_slice(&protected);
                let (mut off, mut len) = (0, plen);
                // SAFETY: `b` has `plen` bytes; off/len valid.
                let st = unsafe { c_decrypt(c_in, b.as_mut_ptr(), plen, &mut off, &mut len, 0) };
                assert_eq!(st, ipsec_status::IPSEC_OK);
                black_box(len);
            },
        );
        report(&format!("decrypt/{size}"), dec);

        if size != 1420 {
            continue;
        }
        // Bursts: per burst of 32 (the ratio is the throughput ratio).
        let mut storage = vec![0u8; slot * BURST];
        let sp = storage.as_mut_ptr();
        let mut results = [Ok(()); BURST];
        let mut descs: Vec<ipsec_packet> = (0..BURST)
            .map(|i| ipsec_packet {
                // SAFETY: slot `i` lies inside `storage`.
                buf: unsafe { sp.add(i * slot) },
                capacity: slot,
                offset: head,
                length: size,
                status: 0,
                fragments: 0,
            })
            .collect();
        let eb = ab(
            (rounds / 8).max(2),
            4,
            || {
                // SAFETY: `sp` points to `slot * BURST` bytes; no other borrow is live.
                let all = unsafe { std::slice::from_raw_parts_mut(sp, slot * BURST) };
                let mut pkts = refilled_burst(all, slot, head, &inner);
                assert_eq!(r_out.encrypt_burst(&mut pkts, &mut results, NOW), BURST);
                black_box(&pkts);
            },
            || {
                for (i, d) in descs.iter_mut().enumerate() {
                    // SAFETY: slot `i` of `storage`; no other borrow is live.
                    let s = unsafe { std::slice::from_raw_parts_mut(sp.add(i * slot), slot) };
                    s[head..head + size].copy_from_slice(&inner);
                    d.offset = head;
                    d.length = size;
                }
                // SAFETY: every descriptor points into `storage`.
                let ok = unsafe { c_encrypt_burst(c_out, descs.as_mut_ptr(), BURST, 0) };
                assert_eq!(ok, BURST);
                black_box(&descs);
            },
        );
        report(&format!("encrypt_burst{BURST}/{size}"), eb);

        let mut pstore = vec![0u8; plen * BURST];
        let qp = pstore.as_mut_ptr();
        let mut pdescs: Vec<ipsec_packet> = (0..BURST)
            .map(|i| ipsec_packet {
                // SAFETY: slot `i` lies inside `pstore`.
                buf: unsafe { qp.add(i * plen) },
                capacity: plen,
                offset: 0,
                length: plen,
                status: 0,
                fragments: 0,
            })
            .collect();
        let db = ab(
            (rounds / 8).max(2),
            4,
            || {
                // SAFETY: `qp` points to `plen * BURST` bytes; no other borrow is live.
                let all = unsafe { std::slice::from_raw_parts_mut(qp, plen * BURST) };
                let mut pkts = refilled_burst(all, plen, 0, &protected);
                assert_eq!(r_in.decrypt_burst(&mut pkts, &mut results, NOW), BURST);
                black_box(&pkts);
            },
            || {
                for (i, d) in pdescs.iter_mut().enumerate() {
                    // SAFETY: slot `i` of `pstore`; no other borrow is live.
                    let s = unsafe { std::slice::from_raw_parts_mut(qp.add(i * plen), plen) };
                    s.copy_from_slice(&protected);
                    d.offset = 0;
                    d.length = plen;
                }
                // SAFETY: every descriptor points into `pstore`.
                let ok = unsafe { c_decrypt_burst(c_in, pdescs.as_mut_ptr(), BURST, 0) };
                assert_eq!(ok, BURST);
                black_box(&pdescs);
            },
        );
        report(&format!("decrypt_burst{BURST}/{size}"), db);
    }
}
