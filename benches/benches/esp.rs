//! ESP throughput per cipher and packet size, next to the raw AEAD (or CBC + HMAC) cost
//! of the crypto crates on the same number of bytes, so that the ESP overhead reads as a
//! ratio.
//!
//! One criterion group per cipher suite (`aes-128-gcm`, `aes-256-gcm`,
//! `chacha20-poly1305`, `aes-128-cbc+hmac-sha256-128`), inner IPv4/UDP packets of 64, 512
//! and 1420 bytes (`Throughput::Bytes` counts inner packet bytes):
//!
//! * `esp_encrypt/N`: one tunnel-mode packet encrypted in place in a reused buffer.
//! * `esp_encrypt_burst32/N`: 32 packets through `encrypt_burst`.
//! * `esp_decrypt/N`, `esp_decrypt_burst32/N`: the same, inbound, with the replay window
//!   off (size 0) so that one ciphertext can be decrypted again and again.
//! * CBC suite only: `lane_encrypt_burst32/N`, `lane_decrypt_burst32/N` and
//!   `lane_encrypt_single32/N`, `lane_decrypt_single32/N`: the same 32 packets through
//!   one lane of a `SharedSa` (blocks of 64), with its burst calls and one packet at a
//!   time.
//! * `rustcrypto_seal/N`, `ring_seal/N`, `aws_lc_seal/N`: the AEAD alone, in place, with
//!   8 bytes of AAD (as ESP's SPI and sequence number) — or, for the CBC suite,
//!   `rustcrypto_cbc_hmac/N`: AES-CBC over N bytes plus HMAC-SHA-256 over them.
//!
//! **Included in every ESP figure**: each iteration first restores its input with
//! `copy_from_slice` from a template (the inner packet for encryption, the protected packet
//! for decryption), because the transform works in place and leaves the buffer changed.
//! That copy (a memcpy of N bytes, a few ns) is part of the measured time; the raw seal
//! figures encrypt the buffer again without restoring it. The buffer window is reset by
//! describing the packet again with `PacketBuf::new` (no allocation).
//!
//! Group `gateway_path` (AES-128-GCM, 64 and 1420 bytes): the same bursts of 32 packets
//! through a [`Gateway`] (`Gateway::outbound` / `Gateway::inbound` per packet: policy
//! lookup by the classifier, the gateway's SPD cache being off by default, SA, ESP,
//! counters) next to the SA alone (`encrypt_burst` / `decrypt_burst`), so the
//! gateway's share reads as a ratio (`gateway_outbound_burst32/N` against
//! `sa_encrypt_burst32/N`, `gateway_inbound_burst32/N` against `sa_decrypt_burst32/N`).
//! Beside them: `gateway_outbound_burst32_spd_cache/N`, the same per-packet calls with
//! the gateway's SPD cache on (`Gateway::set_spd_cache(1024)`), and
//! `gateway_outbound_burst_api32/N`, the whole burst in one `Gateway::outbound_burst`
//! call (SPD cache off; the burst's 32 packets are one flow, so the classifier runs
//! once per burst: see that method's docs), and `gateway_inbound_burst_api32/N`, the
//! received burst in one `Gateway::inbound_burst` call (one run for one SA). The gateway
//! of those rows has one policy; `gateway_outbound_burst32_branch_office/N` and
//! `gateway_inbound_burst32_branch_office/N` send the same bursts through the gateway
//! of `examples/branch-office.toml` (15 policies: IKE bypasses, a PROTECT policy per
//! service and branch, a final DISCARD), a terminal-server packet (policy `b1-rdp`)
//! out and its reply in, to read against `sa_encrypt_burst32/N` and
//! `sa_decrypt_burst32/N` as a gateway's SPD usually is. This group is timed on the thread's CPU
//! clock (`CLOCK_THREAD_CPUTIME_ID`, criterion's `iter_custom`), not wall time: on a
//! shared machine the time other processes hold the core would otherwise swamp the
//! ratios it is read for.
//!
//! Outbound SAs use the library defaults: counter-based AEAD nonces and, for CBC, IVs
//! from the default OS-seeded generator (one AES block per packet, included).
//!
//! Run: `cargo bench -p ipsec-benches --bench esp` (all groups, about 2-3 minutes), or
//! one group: `cargo bench -p ipsec-benches --bench esp -- aes-128-gcm`. Smoke test (each
//! benchmark once): `cargo test -p ipsec-benches --benches`. With `--features ipsec-mb`
//! the AES-GCM rows and the CBC bursts run on intel-ipsec-mb (`cargo bench -p
//! ipsec-benches --features ipsec-mb --bench esp -- 'cbc.*burst'`), to compare with
//! `benches/ipsec-mb/mb_esp.c`'s 32-job bursts.

use std::hint::black_box;
use std::time::Duration;

use aes::cipher::array::Array;
use aes::cipher::{BlockModeEncrypt, InnerIvInit, KeyInit};
use aes_gcm::aead::AeadInOut;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use hmac::{Hmac, Mac};
use ipsec_core::gateway::{BurstVerdict, Inbound, Outbound};
use ipsec_core::{
    Cipher, Direction, Gateway, Integrity, Mode, PacketBuf, SaConfig, SecurityAssociation,
    SharedSa, SharedSaOptions, Spd,
};

mod common;
use common::{
    BURST, cpu_now, geometry, inner_packet, inner_packet_v6, one_tunnel_toml, protect,
    refilled_burst, tunnel_sa, tunnel_sa_between,
};

/// Inner packet sizes: a small packet, a medium one, and a full one that still fits a
/// 1500-byte MTU after tunnel-mode ESP overhead.
const SIZES: [usize; 3] = [64, 512, 1420];
/// 8 bytes of AAD for the raw AEADs, as ESP authenticates SPI and sequence number.
const AAD: [u8; 8] = [0, 0, 0x10, 0, 0, 0, 0, 1];
const NONCE: [u8; 12] = [0x11; 12];

/// A cipher suite under test.
#[derive(Clone, Copy)]
struct Suite {
    name: &'static str,
    cipher: Cipher,
    key_len: usize,
    integrity: Option<Integrity>,
}

const SUITES: [Suite; 4] = [
    Suite {
        name: "aes-128-gcm",
        cipher: Cipher::Aes128Gcm,
        key_len: 20,
        integrity: None,
    },
    Suite {
        name: "aes-256-gcm",
        cipher: Cipher::Aes256Gcm,
        key_len: 36,
        integrity: None,
    },
    Suite {
        name: "chacha20-poly1305",
        cipher: Cipher::ChaCha20Poly1305,
        key_len: 36,
        integrity: None,
    },
    Suite {
        name: "aes-128-cbc+hmac-sha256-128",
        cipher: Cipher::Aes128Cbc,
        key_len: 16,
        integrity: Some(Integrity::HmacSha256_128),
    },
];

fn sa(suite: Suite, direction: Direction) -> SecurityAssociation {
    let key = vec![0x42u8; suite.key_len];
    let integrity = suite.integrity.map(|i| (i, &[0x24u8; 32][..]));
    tunnel_sa(suite.cipher, &key, integrity, direction)
}

fn esp_benches(g: &mut BenchmarkGroup<'_, WallTime>, suite: Suite, size: usize) {
    let inner = inner_packet(size);
    let now = Duration::ZERO;

    // Encrypt, one packet.
    g.throughput(Throughput::Bytes(size as u64));
    {
        let mut outbound = sa(suite, Direction::Outbound);
        let (head, slot) = geometry(&outbound, size);
        let mut storage = vec![0u8; slot];
        g.bench_function(format!("esp_encrypt/{size}"), |b| {
            b.iter(|| {
                storage[head..head + size].copy_from_slice(&inner);
                let mut pkt = PacketBuf::new(&mut storage, head, size).expect("in bounds");
                outbound.encrypt(&mut pkt, now).expect("encrypts");
                black_box(pkt.len())
            })
        });
    }

    // Decrypt, one packet.
    let mut outbound = sa(suite, Direction::Outbound);
    let protected = protect(&mut outbound, &inner);
    {
        let mut inbound = sa(suite, Direction::Inbound);
        let plen = protected.len();
        let mut storage = vec![0u8; plen];
        g.bench_function(format!("esp_decrypt/{size}"), |b| {
            b.iter(|| {
                storage.copy_from_slice(&protected);
                let mut pkt = PacketBuf::new(&mut storage, 0, plen).expect("in bounds");
                inbound.decrypt(&mut pkt, now).expect("decrypts");
                black_box(pkt.len())
            })
        });
    }

    // Bursts of 32.
    g.throughput(Throughput::Bytes((size * BURST) as u64));
    {
        let mut outbound = sa(suite, Direction::Outbound);
        let (head, slot) = geometry(&outbound, size);
        let mut storage = vec![0u8; slot * BURST];
        let mut results = [Ok(()); BURST];
        g.bench_function(format!("esp_encrypt_burst{BURST}/{size}"), |b| {
            b.iter(|| {
                let mut pkts = refilled_burst(&mut storage, slot, head, &inner);
                let ok = outbound.encrypt_burst(&mut pkts, &mut results, now);
                assert_eq!(ok, BURST);
                black_box(&pkts);
            })
        });
    }
    {
        let mut inbound = sa(suite, Direction::Inbound);
        let plen = protected.len();
        let mut storage = vec![0u8; plen * BURST];
        let mut results = [Ok(()); BURST];
        g.bench_function(format!("esp_decrypt_burst{BURST}/{size}"), |b| {
            b.iter(|| {
                let mut pkts = refilled_burst(&mut storage, plen, 0, &protected);
                let ok = inbound.decrypt_burst(&mut pkts, &mut results, now);
                assert_eq!(ok, BURST);
                black_box(&pkts);
            })
        });
    }
    if suite.integrity.is_some() {
        lane_burst_benches(g, suite, size, &inner, &protected);
    }
    g.throughput(Throughput::Bytes(size as u64));
}

/// A lane of a shared SA (one lane, blocks of 64) on the suite's bursts of 32, through
/// its burst calls and one packet at a time (`SaLane::encrypt_burst` against 32
/// `SaLane::encrypt` calls): what a lane's bursts gain where they interleave.
fn lane_burst_benches(
    g: &mut BenchmarkGroup<'_, WallTime>,
    suite: Suite,
    size: usize,
    inner: &[u8],
    protected: &[u8],
) {
    let now = Duration::ZERO;
    let lane = |direction| {
        let key = vec![0x42u8; suite.key_len];
        let mut cfg = SaConfig::new(common::SPI, direction, Mode::Tunnel, suite.cipher, &key);
        if let Some(i) = suite.integrity {
            cfg.integrity(i, &[0x24u8; 32]);
        }
        if direction == Direction::Outbound {
            cfg.tunnel("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        } else {
            cfg.replay_window(0);
        }
        let (_, mut lanes) =
            SharedSa::new(cfg, SharedSaOptions::lanes(1).with_block(64), now).expect("lane");
        lanes.pop().expect("one lane")
    };
    let mut results = [Ok(()); BURST];
    for burst in [false, true] {
        let how = if burst { "burst" } else { "single" };
        let mut outbound = lane(Direction::Outbound);
        let head = outbound.max_headroom();
        let slot = head + size + outbound.tailroom_for(size);
        let mut storage = vec![0u8; slot * BURST];
        g.bench_function(format!("lane_encrypt_{how}{BURST}/{size}"), |b| {
            b.iter(|| {
                let mut pkts = refilled_burst(&mut storage, slot, head, inner);
                if burst {
                    assert_eq!(outbound.encrypt_burst(&mut pkts, &mut results, now), BURST);
                } else {
                    for p in pkts.iter_mut() {
                        outbound.encrypt(p, now).expect("encrypts");
                    }
                }
                black_box(&pkts);
            })
        });
        let mut inbound = lane(Direction::Inbound);
        let plen = protected.len();
        let mut storage = vec![0u8; plen * BURST];
        g.bench_function(format!("lane_decrypt_{how}{BURST}/{size}"), |b| {
            b.iter(|| {
                let mut pkts = refilled_burst(&mut storage, plen, 0, protected);
                if burst {
                    assert_eq!(inbound.decrypt_burst(&mut pkts, &mut results, now), BURST);
                } else {
                    for p in pkts.iter_mut() {
                        inbound.decrypt(p, now).expect("decrypts");
                    }
                }
                black_box(&pkts);
            })
        });
    }
}

fn raw_aead_benches(g: &mut BenchmarkGroup<'_, WallTime>, suite: Suite, size: usize) {
    let mut buf = vec![0x5au8; size];
    let rc_key = vec![0x42u8; suite.key_len - 4];
    macro_rules! rustcrypto {
        ($ty:ty) => {{
            let aead = <$ty>::new_from_slice(&rc_key).expect("key length");
            g.bench_function(format!("rustcrypto_seal/{size}"), |b| {
                b.iter(|| {
                    let tag = aead
                        .encrypt_inout_detached(&NONCE.into(), &AAD, buf.as_mut_slice().into())
                        .expect("seal");
                    black_box(tag)
                })
            });
        }};
    }
    match suite.cipher {
        Cipher::Aes128Gcm => rustcrypto!(aes_gcm::Aes128Gcm),
        Cipher::Aes256Gcm => rustcrypto!(aes_gcm::Aes256Gcm),
        _ => rustcrypto!(chacha20poly1305::ChaCha20Poly1305),
    }

    let ring_alg = match suite.cipher {
        Cipher::Aes128Gcm => &ring::aead::AES_128_GCM,
        Cipher::Aes256Gcm => &ring::aead::AES_256_GCM,
        _ => &ring::aead::CHACHA20_POLY1305,
    };
    let ring_key =
        ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(ring_alg, &rc_key).expect("key"));
    g.bench_function(format!("ring_seal/{size}"), |b| {
        b.iter(|| {
            let tag = ring_key
                .seal_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key(NONCE),
                    ring::aead::Aad::from(AAD),
                    &mut buf,
                )
                .expect("seal");
            black_box(tag)
        })
    });

    let aws_alg = match suite.cipher {
        Cipher::Aes128Gcm => &aws_lc_rs::aead::AES_128_GCM,
        Cipher::Aes256Gcm => &aws_lc_rs::aead::AES_256_GCM,
        _ => &aws_lc_rs::aead::CHACHA20_POLY1305,
    };
    let aws_key = aws_lc_rs::aead::LessSafeKey::new(
        aws_lc_rs::aead::UnboundKey::new(aws_alg, &rc_key).expect("key"),
    );
    g.bench_function(format!("aws_lc_seal/{size}"), |b| {
        b.iter(|| {
            let tag = aws_key
                .seal_in_place_separate_tag(
                    aws_lc_rs::aead::Nonce::assume_unique_for_key(NONCE),
                    aws_lc_rs::aead::Aad::from(AAD),
                    &mut buf,
                )
                .expect("seal");
            black_box(tag)
        })
    });
}

/// AES-128-CBC over `size` bytes (rounded up to whole blocks, as ESP padding does) and
/// HMAC-SHA-256 over them, the work of one CBC packet without the ESP framing.
fn raw_cbc_hmac_benches(g: &mut BenchmarkGroup<'_, WallTime>, size: usize) {
    let mut buf = vec![0x5au8; size.div_ceil(16) * 16];
    let key = [0x42u8; 16];
    let iv = [0x33u8; 16];
    let cipher = aes::Aes128::new(&key.into());
    let mac = Hmac::<sha2::Sha256>::new_from_slice(&[0x24; 32]).expect("any key length");
    g.bench_function(format!("rustcrypto_cbc_hmac/{size}"), |b| {
        b.iter(|| {
            let (blocks, _) = Array::slice_as_chunks_mut(&mut buf);
            cbc::Encryptor::<&aes::Aes128>::inner_iv_init(&cipher, &iv.into())
                .encrypt_blocks(blocks);
            let mut m = mac.clone();
            m.update(&AAD);
            m.update(&buf);
            black_box(m.finalize().into_bytes())
        })
    });
}

/// The inbound key of the gateway path (the peer's outbound key: not the gateway's own
/// outbound key, which the library refuses to reuse).
const PEER_KEY: [u8; 20] = [0x43; 20];

/// The addresses of a gateway-path tunnel: the protected subnets on each side and the
/// outer endpoints (the gateway's, then its peer's).
struct TunnelAddrs {
    local: &'static str,
    remote: &'static str,
    outer: (&'static str, &'static str),
    /// The bench's inner packet of a size (local -> remote).
    packet: fn(usize) -> Vec<u8>,
    /// Where its source and destination addresses lie (swapped for the reply).
    addresses: core::ops::Range<usize>,
}

/// The IPv4 tunnel of the gateway path (the packets of [`inner_packet`]).
const TUNNEL_V4: TunnelAddrs = TunnelAddrs {
    local: "10.0.0.0/24",
    remote: "10.1.0.0/24",
    outer: ("192.0.2.1", "192.0.2.2"),
    packet: inner_packet,
    addresses: 12..20,
};

/// The IPv6 tunnel of the gateway path (the packets of [`inner_packet_v6`]), IPv6 outside
/// too.
const TUNNEL_V6: TunnelAddrs = TunnelAddrs {
    local: "2001:db8:1::/48",
    remote: "2001:db8:2::/48",
    outer: ("2001:db8:ff::1", "2001:db8:ff::2"),
    packet: inner_packet_v6,
    addresses: 8..40,
};

/// A gateway with one tunnel `t` for the bench's packets: the outbound SA of
/// [`tunnel_sa`] (SPI 0x1000, key 0x42...) and an inbound SA (SPI 0x1000,
/// [`PEER_KEY`]) without a replay window, so that one protected packet decrypts every
/// time.
fn one_tunnel_gateway(t: &TunnelAddrs) -> Gateway {
    let suite = |key: &str| format!("cipher = \"aes-128-gcm\"\nkey = \"{key}\"");
    let text = one_tunnel_toml(
        (t.local, t.remote),
        t.outer,
        &suite(&"42".repeat(20)),
        &suite(&"43".repeat(20)),
    );
    let spd = Spd::from_toml(&text).unwrap_or_else(|e| panic!("{e}"));
    Gateway::new(spd, Duration::ZERO).expect("valid gateway")
}

/// The gateway of the branch-office scenario (`examples/branch-office.toml`: 15
/// policies, IKE bypasses, per-service PROTECT policies for two branches, a final
/// DISCARD), with the inbound SAs' replay windows off so that one protected packet
/// decrypts every time.
fn branch_office_gateway() -> Gateway {
    let text = include_str!("../../examples/branch-office.toml")
        .replace("replay_window = 1024", "replay_window = 0");
    let spd = Spd::from_toml(&text).unwrap_or_else(|e| panic!("{e}"));
    Gateway::new(spd, Duration::ZERO).expect("valid gateway")
}

/// A `size`-byte IPv4/TCP packet from 10.0.0.10:3389 (the head office's terminal
/// server) to 10.1.0.7:50123 (a branch 1 client): policy `b1-rdp`, SA `ho-to-b1`.
fn rdp_packet(size: usize) -> Vec<u8> {
    let mut p = inner_packet(size);
    p[9] = 6;
    p[12..20].copy_from_slice(&[10, 0, 0, 10, 10, 1, 0, 7]);
    p[10..12].fill(0);
    ipsec_core::packet::set_ipv4_checksum(&mut p[..20]);
    p[20..24].copy_from_slice(&[0x0d, 0x3d, 0xc3, 0xcb]);
    p[32] = 0x50;
    p
}

/// The branch 1 client's reply to [`rdp_packet`] as branch 1's gateway sends it: ESP
/// under SA `b1-to-ho` (SPI 0x2001, its key from the example file), 198.51.100.2 ->
/// 192.0.2.1.
fn rdp_reply_protected(size: usize) -> Vec<u8> {
    let mut reply = rdp_packet(size);
    reply[12..20].rotate_left(4);
    reply[20..24].rotate_left(2);
    let key = ipsec_core::sa_file::decode_hex("key", "2b7e151628aed2a6abf7158809cf4f3cb1c2d3e4")
        .expect("the example's key");
    let mut cfg = SaConfig::new(
        0x2001,
        Direction::Outbound,
        Mode::Tunnel,
        Cipher::Aes128Gcm,
        &key,
    );
    cfg.tunnel(
        "198.51.100.2".parse().expect("address"),
        "192.0.2.1".parse().expect("address"),
    );
    let mut branch = SecurityAssociation::new(cfg, Duration::ZERO).expect("valid SA");
    protect(&mut branch, &reply)
}

/// The thread CPU time of `iters` bursts of [`BURST`] copies of `template` (at `at` in
/// `slot`-byte buffers over `storage`), each burst handed to `run`.
fn timed_bursts(
    storage: &mut [u8],
    (slot, at): (usize, usize),
    template: &[u8],
    iters: u64,
    mut run: impl FnMut(&mut [PacketBuf<'_>; BURST]),
) -> Duration {
    let t0 = cpu_now();
    for _ in 0..iters {
        let mut pkts = refilled_burst(storage, slot, at, template);
        run(&mut pkts);
        black_box(&pkts);
    }
    cpu_now() - t0
}

/// [`timed_bursts`] with `send` called on each packet in turn.
fn per_packet(
    storage: &mut [u8],
    geometry: (usize, usize),
    template: &[u8],
    iters: u64,
    mut send: impl FnMut(&mut PacketBuf<'_>),
) -> Duration {
    timed_bursts(storage, geometry, template, iters, |pkts| {
        pkts.iter_mut().for_each(&mut send)
    })
}

/// [`per_packet`] through `gw.outbound`, every packet protected.
fn outbound_each(
    gw: &mut Gateway,
    storage: &mut [u8],
    (slot, at): (usize, usize),
    template: &[u8],
    iters: u64,
) -> Duration {
    per_packet(storage, (slot, at), template, iters, |pkt| {
        let verdict = gw.outbound(pkt, Duration::ZERO);
        assert!(matches!(verdict, Ok(Outbound::Protected { .. })));
    })
}

/// [`per_packet`] through `gw.inbound`, every packet decrypted.
fn inbound_each(
    gw: &mut Gateway,
    storage: &mut [u8],
    (slot, at): (usize, usize),
    template: &[u8],
    iters: u64,
) -> Duration {
    per_packet(storage, (slot, at), template, iters, |pkt| {
        let verdict = gw.inbound(pkt, Duration::ZERO);
        assert!(matches!(verdict, Ok(Inbound::Decrypted { .. })));
    })
}

/// [`timed_bursts`] encrypted by the SA alone (`encrypt_burst`).
fn encrypt_bursts(
    sa: &mut SecurityAssociation,
    storage: &mut [u8],
    geometry: (usize, usize),
    template: &[u8],
    iters: u64,
) -> Duration {
    let mut results = [Ok(()); BURST];
    timed_bursts(storage, geometry, template, iters, |pkts| {
        assert_eq!(sa.encrypt_burst(pkts, &mut results, Duration::ZERO), BURST);
    })
}

/// [`timed_bursts`] of the protected packet `template` (filling `slot`-byte buffers)
/// decrypted by the SA alone (`decrypt_burst`).
fn decrypt_bursts(
    sa: &mut SecurityAssociation,
    storage: &mut [u8],
    slot: usize,
    template: &[u8],
    iters: u64,
) -> Duration {
    let mut results = [Ok(()); BURST];
    timed_bursts(storage, (slot, 0), template, iters, |pkts| {
        assert_eq!(sa.decrypt_burst(pkts, &mut results, Duration::ZERO), BURST);
    })
}

/// The gateway path against the SA alone, bursts of 32 AES-128-GCM packets.
fn gateway_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("gateway_path");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20);
    let now = Duration::ZERO;
    for size in [64, 1420] {
        g.throughput(Throughput::Bytes((size * BURST) as u64));
        one_tunnel_rows(&mut g, &TUNNEL_V4, "", size);
        // The IPv4 tunnel's other rows: other gateways, and the burst calls.
        let OneTunnel {
            inner,
            protected,
            mut gw,
            head,
            slot,
            ..
        } = one_tunnel(&TUNNEL_V4, size);
        let mut storage = vec![0u8; slot * BURST];
        let mut office = branch_office_gateway();
        let rdp = rdp_packet(size);
        g.bench_function(
            format!("gateway_outbound_burst{BURST}_branch_office/{size}"),
            |b| {
                b.iter_custom(|iters| {
                    outbound_each(&mut office, &mut storage, (slot, head), &rdp, iters)
                })
            },
        );
        let mut cached = one_tunnel_gateway(&TUNNEL_V4);
        cached.set_spd_cache(1024);
        g.bench_function(
            format!("gateway_outbound_burst{BURST}_spd_cache/{size}"),
            |b| {
                b.iter_custom(|iters| {
                    outbound_each(&mut cached, &mut storage, (slot, head), &inner, iters)
                })
            },
        );
        let mut verdicts = [Ok(BurstVerdict::Bypassed); BURST];
        g.bench_function(format!("gateway_outbound_burst_api{BURST}/{size}"), |b| {
            b.iter_custom(|iters| {
                timed_bursts(&mut storage, (slot, head), &inner, iters, |pkts| {
                    assert_eq!(gw.outbound_burst(pkts, &mut verdicts, now), BURST);
                })
            })
        });
        let plen = protected.len();
        let mut storage = vec![0u8; plen * BURST];
        let reply = rdp_reply_protected(size);
        let rlen = reply.len();
        let mut reply_storage = vec![0u8; rlen * BURST];
        g.bench_function(
            format!("gateway_inbound_burst{BURST}_branch_office/{size}"),
            |b| {
                b.iter_custom(|iters| {
                    inbound_each(&mut office, &mut reply_storage, (rlen, 0), &reply, iters)
                })
            },
        );
        g.bench_function(format!("gateway_inbound_burst_api{BURST}/{size}"), |b| {
            b.iter_custom(|iters| {
                timed_bursts(&mut storage, (plen, 0), &protected, iters, |pkts| {
                    assert_eq!(gw.inbound_burst(pkts, &mut verdicts, now), BURST);
                })
            })
        });
        // IPv6 packets in an IPv6 tunnel: the gateway's IPv6 classifier, packet key
        // and outer header.
        one_tunnel_rows(&mut g, &TUNNEL_V6, "_ipv6", size);
    }
    g.finish();
}

/// What the one-tunnel rows of [`gateway_path`] work on: the inner packet, the peer's
/// protected reply, the gateway's outbound SA and its inbound SA alone (as the gateway
/// holds them: same keys and SPI), the gateway, and the buffer geometry of the
/// outbound packets (headroom, slot).
struct OneTunnel {
    inner: Vec<u8>,
    protected: Vec<u8>,
    outbound: SecurityAssociation,
    inbound: SecurityAssociation,
    gw: Gateway,
    head: usize,
    slot: usize,
}

/// The [`OneTunnel`] of tunnel `t` for `size`-byte packets.
fn one_tunnel(t: &TunnelAddrs, size: usize) -> OneTunnel {
    let cipher = SUITES[0].cipher;
    let (src, dst) = t.outer;
    let inner = (t.packet)(size);
    let outbound = tunnel_sa_between(cipher, &[0x42; 20], None, Direction::Outbound, (src, dst));
    // what the peer sends: the addresses swapped (an IPv4 header's checksum is the
    // same), sealed with its key from its end
    let mut reply = inner.clone();
    reply[t.addresses.clone()].rotate_left(t.addresses.len() / 2);
    let mut peer = tunnel_sa_between(cipher, &PEER_KEY, None, Direction::Outbound, (dst, src));
    let protected = protect(&mut peer, &reply);
    let (head, slot) = geometry(&outbound, size);
    OneTunnel {
        inner,
        protected,
        outbound,
        inbound: tunnel_sa_between(cipher, &PEER_KEY, None, Direction::Inbound, (src, dst)),
        gw: one_tunnel_gateway(t),
        head,
        slot,
    }
}

/// The rows of one tunnel `t` (row names end in `suffix`): `sa_encrypt_burst32/N`
/// against `gateway_outbound_burst32/N`, `sa_decrypt_burst32/N` against
/// `gateway_inbound_burst32/N`.
fn one_tunnel_rows(
    g: &mut BenchmarkGroup<'_, WallTime>,
    t: &TunnelAddrs,
    suffix: &str,
    size: usize,
) {
    let OneTunnel {
        inner,
        protected,
        mut outbound,
        mut inbound,
        mut gw,
        head,
        slot,
    } = one_tunnel(t, size);
    let mut storage = vec![0u8; slot * BURST];
    g.bench_function(format!("sa_encrypt_burst{BURST}{suffix}/{size}"), |b| {
        b.iter_custom(|iters| {
            encrypt_bursts(&mut outbound, &mut storage, (slot, head), &inner, iters)
        })
    });
    g.bench_function(
        format!("gateway_outbound_burst{BURST}{suffix}/{size}"),
        |b| {
            b.iter_custom(|iters| outbound_each(&mut gw, &mut storage, (slot, head), &inner, iters))
        },
    );
    let plen = protected.len();
    let mut storage = vec![0u8; plen * BURST];
    g.bench_function(format!("sa_decrypt_burst{BURST}{suffix}/{size}"), |b| {
        b.iter_custom(|iters| decrypt_bursts(&mut inbound, &mut storage, plen, &protected, iters))
    });
    g.bench_function(
        format!("gateway_inbound_burst{BURST}{suffix}/{size}"),
        |b| {
            b.iter_custom(|iters| inbound_each(&mut gw, &mut storage, (plen, 0), &protected, iters))
        },
    );
}

fn esp(c: &mut Criterion) {
    for suite in SUITES {
        let mut g = c.benchmark_group(suite.name);
        g.measurement_time(Duration::from_secs(2))
            .warm_up_time(Duration::from_millis(500))
            .sample_size(20);
        for size in SIZES {
            esp_benches(&mut g, suite, size);
            if suite.integrity.is_some() {
                raw_cbc_hmac_benches(&mut g, size);
            } else {
                raw_aead_benches(&mut g, suite, size);
            }
        }
        g.finish();
    }
}

criterion_group!(benches, esp, gateway_path);
criterion_main!(benches);
