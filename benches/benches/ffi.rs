//! The cost of the C ABI: each C entry point of `ipsec-ffi` against the Rust call it
//! wraps, on the same SA setup (tunnel mode, IPv4/UDP inner packets).
//!
//! Group `ffi-aes-128-gcm`:
//! * `rust_encrypt/N`, `c_encrypt/N` (N = 64, 1420): one packet, `SecurityAssociation::
//!   encrypt` against `ipsec_sa_encrypt`; likewise `rust_decrypt/N`, `c_decrypt/N`
//!   (replay window off so one ciphertext can be decrypted again and again).
//! * `rust_encrypt_burst32/1420`, `c_encrypt_burst32/1420` (and `decrypt`): 32 packets,
//!   `encrypt_burst` against `ipsec_sa_encrypt_burst` over `ipsec_packet` descriptors.
//!
//! Group `ffi-aes-128-cbc-hmac-sha256`: the burst rows at 64 and 1420 bytes, where the
//! core's bursts work across packets (CBC chains and HMAC lanes side by side) and the C
//! bursts hand their descriptors to them in groups of 32.
//!
//! Groups `ffi-gateway-aes-128-gcm` and `ffi-gateway-aes-128-cbc-hmac-sha256`: the whole
//! gateway path (SPD, SA, ESP) for bursts of 32 packets at 64 and 1420 bytes,
//! `Gateway::outbound_burst` / `inbound_burst` against `ipsec_gateway_outbound_burst` /
//! `ipsec_gateway_inbound_burst`, on one tunnel's gateway made from the same policy
//! text through each API.
//!
//! The C entry points are called through a function pointer hidden behind `black_box`,
//! so the optimiser cannot inline them into the benchmark: the call costs what it costs
//! a C program calling into libipsec (argument checks, the panic boundary, the
//! conversions). Both sides restore their input with the same `copy_from_slice` each
//! iteration (the transform works in place); the difference of two medians is the
//! per-packet cost of the C ABI.
//!
//! Run: `cargo bench -p ipsec-benches --bench ffi` (about three minutes); smoke
//! test: `cargo test -p ipsec-benches --bench ffi`.
// The C entry points are `unsafe extern "C"` functions: calling them is the point.
#![allow(unsafe_code)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

mod common;
mod ffi_setup;
use common::{geometry, inner_packet, protect, refilled_burst};
use ffi_setup::{BURST, BurstFn, CGateway, CSa, GatewayBurstFn, OneFn, Suite, rust_suite_sa};
use ipsec::{ipsec_packet, ipsec_status, ipsec_verdict};
use ipsec_core::gateway::BurstVerdict;
use ipsec_core::{Direction, Gateway, PacketBuf, Spd};

fn ffi(c: &mut Criterion) {
    suite_group(c, Suite::Aes128Gcm, &[64, 1420], &[1420]);
    suite_group(c, Suite::CbcHmacSha256, &[], &[64, 1420]);
    for suite in [Suite::Aes128Gcm, Suite::CbcHmacSha256] {
        gateway_group(c, suite);
    }
}

/// Descriptors for [`BURST`] slots of `slot` bytes in `storage`, each holding `len`
/// bytes at `offset`.
fn descriptors(storage: &mut [u8], slot: usize, offset: usize, len: usize) -> Vec<ipsec_packet> {
    assert!(storage.len() >= slot * BURST);
    let base = storage.as_mut_ptr();
    (0..BURST)
        .map(|i| ipsec_packet {
            // SAFETY: slot `i` lies inside `storage` (checked above).
            buf: unsafe { base.add(i * slot) },
            capacity: slot,
            offset,
            length: len,
            status: 0,
            fragments: 0,
        })
        .collect()
}

/// Restores `template` at `offset` in every slot a descriptor names, and the
/// descriptors' offset and length.
fn refill_descriptors(descs: &mut [ipsec_packet], offset: usize, template: &[u8]) {
    for d in descs {
        // SAFETY: each descriptor names a distinct slot of `capacity` bytes of live,
        // otherwise unborrowed storage (see `descriptors`).
        let s = unsafe { std::slice::from_raw_parts_mut(d.buf, d.capacity) };
        s[offset..offset + template.len()].copy_from_slice(template);
        d.offset = offset;
        d.length = template.len();
    }
}

/// One C gateway burst call over `descs` (whose slots `descriptors` made).
fn c_gateway_burst(
    f: GatewayBurstFn,
    gw: &CGateway,
    descs: &mut [ipsec_packet],
    verdicts: &mut [u32; BURST],
) -> usize {
    assert_eq!(descs.len(), BURST);
    // SAFETY: every descriptor names a live slot of its storage (`descriptors`), and
    // `verdicts` has room for every packet.
    unsafe { f(gw.0, descs.as_mut_ptr(), BURST, 0, verdicts.as_mut_ptr()) }
}

/// The gateway rows of one suite: bursts of [`BURST`] through the Rust and the C API.
fn gateway_group(c: &mut Criterion, suite: Suite) {
    let now = Duration::ZERO;
    let c_outbound: GatewayBurstFn = black_box(ipsec::ipsec_gateway_outbound_burst);
    let c_inbound: GatewayBurstFn = black_box(ipsec::ipsec_gateway_inbound_burst);
    let toml = suite.gateway_toml();
    let spd = Spd::from_toml(&toml).unwrap_or_else(|e| panic!("{e}"));
    let mut rust_gw = Gateway::new(spd, now).expect("valid gateway");
    let c_gw = CGateway::new(&toml);
    let mut verdicts = [Ok(BurstVerdict::Bypassed); BURST];
    let mut c_verdicts = [0u32; BURST];

    let mut g = c.benchmark_group(format!("ffi-gateway-{}", &suite.group()[4..]));
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    for size in [64, 1420] {
        g.throughput(Throughput::Bytes((size * BURST) as u64));
        let inner = inner_packet(size);
        let mut peer = suite.peer_sa();
        let (head, slot) = geometry(&peer, size);
        let mut storage = vec![0u8; slot * BURST];
        g.bench_function(format!("rust_outbound_burst{BURST}/{size}"), |b| {
            b.iter(|| {
                let mut pkts = refilled_burst(&mut storage, slot, head, &inner);
                assert_eq!(rust_gw.outbound_burst(&mut pkts, &mut verdicts, now), BURST);
                black_box(&pkts);
            })
        });
        let mut descs = descriptors(&mut storage, slot, head, size);
        // Set-up check: every packet protected through the C API too.
        refill_descriptors(&mut descs, head, &inner);
        assert_eq!(
            c_gateway_burst(c_outbound, &c_gw, &mut descs, &mut c_verdicts),
            BURST
        );
        let protected_verdict = ipsec_verdict::IPSEC_VERDICT_PROTECTED as u32;
        assert!(c_verdicts.iter().all(|&v| v == protected_verdict));
        g.bench_function(format!("c_outbound_burst{BURST}/{size}"), |b| {
            b.iter(|| {
                refill_descriptors(&mut descs, head, &inner);
                let ok = c_gateway_burst(c_outbound, &c_gw, &mut descs, &mut c_verdicts);
                assert_eq!(ok, BURST);
                black_box(&descs);
            })
        });

        // What the peer sends: the reply (addresses swapped), sealed with the same keys.
        let mut reply = inner.clone();
        reply[12..20].rotate_left(4);
        let protected = protect(&mut peer, &reply);
        let plen = protected.len();
        let mut storage = vec![0u8; plen * BURST];
        g.bench_function(format!("rust_inbound_burst{BURST}/{size}"), |b| {
            b.iter(|| {
                let mut pkts = refilled_burst(&mut storage, plen, 0, &protected);
                assert_eq!(rust_gw.inbound_burst(&mut pkts, &mut verdicts, now), BURST);
                black_box(&pkts);
            })
        });
        let mut descs = descriptors(&mut storage, plen, 0, plen);
        refill_descriptors(&mut descs, 0, &protected);
        assert_eq!(
            c_gateway_burst(c_inbound, &c_gw, &mut descs, &mut c_verdicts),
            BURST
        );
        let decrypted = ipsec_verdict::IPSEC_VERDICT_DECRYPTED as u32;
        assert!(c_verdicts.iter().all(|&v| v == decrypted));
        g.bench_function(format!("c_inbound_burst{BURST}/{size}"), |b| {
            b.iter(|| {
                refill_descriptors(&mut descs, 0, &protected);
                let ok = c_gateway_burst(c_inbound, &c_gw, &mut descs, &mut c_verdicts);
                assert_eq!(ok, BURST);
                black_box(&descs);
            })
        });
    }
    g.finish();
}

/// The rows of one suite: single packets at the sizes in `single`, bursts of
/// [`BURST`] at the sizes in `bursts`.
fn suite_group(c: &mut Criterion, suite: Suite, single: &[usize], bursts: &[usize]) {
    let now = Duration::ZERO;
    let c_encrypt: OneFn = black_box(ipsec::ipsec_sa_encrypt);
    let c_decrypt: OneFn = black_box(ipsec::ipsec_sa_decrypt);
    let c_encrypt_burst: BurstFn = black_box(ipsec::ipsec_sa_encrypt_burst);
    let c_decrypt_burst: BurstFn = black_box(ipsec::ipsec_sa_decrypt_burst);

    let mut g = c.benchmark_group(suite.group());
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    let mut sizes: Vec<usize> = single.iter().chain(bursts).copied().collect();
    sizes.sort_unstable();
    sizes.dedup();
    for size in sizes {
        let inner = inner_packet(size);
        let mut rust_out = rust_suite_sa(suite, Direction::Outbound);
        let (head, slot) = geometry(&rust_out, size);
        g.throughput(Throughput::Bytes(size as u64));

        let c_out = CSa::with_suite(suite, Direction::Outbound);
        let mut storage = vec![0u8; slot];
        if single.contains(&size) {
            g.bench_function(format!("rust_encrypt/{size}"), |b| {
                b.iter(|| {
                    storage[head..head + size].copy_from_slice(&inner);
                    let mut pkt = PacketBuf::new(&mut storage, head, size).expect("in bounds");
                    rust_out.encrypt(&mut pkt, now).expect("encrypts");
                    black_box(pkt.len())
                })
            });
            g.bench_function(format!("c_encrypt/{size}"), |b| {
                b.iter(|| {
                    storage[head..head + size].copy_from_slice(&inner);
                    let (mut off, mut len) = (head, size);
                    // SAFETY: `storage` has `slot` bytes; off/len are valid.
                    let st = unsafe {
                        c_encrypt(c_out.0, storage.as_mut_ptr(), slot, &mut off, &mut len, 0)
                    };
                    assert_eq!(st, ipsec_status::IPSEC_OK);
                    black_box(len)
                })
            });
        }

        // One ciphertext, decrypted again and again (replay window off on both).
        let protected = protect(&mut rust_out, &inner);
        let plen = protected.len();
        let mut rust_in = rust_suite_sa(suite, Direction::Inbound);
        let c_in = CSa::with_suite(suite, Direction::Inbound);
        if single.contains(&size) {
            let mut storage = vec![0u8; plen];
            g.bench_function(format!("rust_decrypt/{size}"), |b| {
                b.iter(|| {
                    storage.copy_from_slice(&protected);
                    let mut pkt = PacketBuf::new(&mut storage, 0, plen).expect("in bounds");
                    rust_in.decrypt(&mut pkt, now).expect("decrypts");
                    black_box(pkt.len())
                })
            });
            g.bench_function(format!("c_decrypt/{size}"), |b| {
                b.iter(|| {
                    storage.copy_from_slice(&protected);
                    let (mut off, mut len) = (0, plen);
                    // SAFETY: `storage` has `plen` bytes; off/len are valid.
                    let st = unsafe {
                        c_decrypt(c_in.0, storage.as_mut_ptr(), plen, &mut off, &mut len, 0)
                    };
                    assert_eq!(st, ipsec_status::IPSEC_OK);
                    black_box(len)
                })
            });
        }

        if !bursts.contains(&size) {
            continue;
        }
        // Bursts of 32 packets.
        g.throughput(Throughput::Bytes((size * BURST) as u64));
        let mut storage = vec![0u8; slot * BURST];
        let mut results = [Ok(()); BURST];
        g.bench_function(format!("rust_encrypt_burst{BURST}/{size}"), |b| {
            b.iter(|| {
                let mut pkts = refilled_burst(&mut storage, slot, head, &inner);
                assert_eq!(rust_out.encrypt_burst(&mut pkts, &mut results, now), BURST);
                black_box(&pkts);
            })
        });
        let mut descs = descriptors(&mut storage, slot, head, size);
        g.bench_function(format!("c_encrypt_burst{BURST}/{size}"), |b| {
            b.iter(|| {
                refill_descriptors(&mut descs, head, &inner);
                // SAFETY: every descriptor points into `storage`.
                let ok = unsafe { c_encrypt_burst(c_out.0, descs.as_mut_ptr(), BURST, 0) };
                assert_eq!(ok, BURST);
                black_box(&descs);
            })
        });

        let mut storage = vec![0u8; plen * BURST];
        g.bench_function(format!("rust_decrypt_burst{BURST}/{size}"), |b| {
            b.iter(|| {
                let mut pkts = refilled_burst(&mut storage, plen, 0, &protected);
                assert_eq!(rust_in.decrypt_burst(&mut pkts, &mut results, now), BURST);
                black_box(&pkts);
            })
        });
        let mut descs = descriptors(&mut storage, plen, 0, plen);
        g.bench_function(format!("c_decrypt_burst{BURST}/{size}"), |b| {
            b.iter(|| {
                refill_descriptors(&mut descs, 0, &protected);
                // SAFETY: every descriptor points into `storage`.
                let ok = unsafe { c_decrypt_burst(c_in.0, descs.as_mut_ptr(), BURST, 0) };
                assert_eq!(ok, BURST);
                black_box(&descs);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, ffi);
criterion_main!(benches);
