//! A small driver for instruction-count profiling of the ESP hot paths, where wall-clock
//! timing is too noisy (shared machines):
//!
//! ```text
//! cargo build --release -p ipsec-benches --example esp_profile
//! valgrind --tool=callgrind target/release/examples/esp_profile CASE SIZE N
//! ```
//!
//! CASE is `OP-CIPHER` with OP one of `enc`, `dec`, `encb`, `decb` (bursts of 32),
//! `raw-seal`, `raw-open` and CIPHER one
//! of `gcm128`, `gcm256`, `chacha`, `cbc` (AES-128-CBC + HMAC-SHA-256-128). The gateway
//! path (target 4) has its own CASEs: `gw-out4`, `gw-in4`, `gw-out6`, `gw-in6` (one
//! packet at a time through `Gateway::outbound` / `Gateway::inbound` of a one-tunnel
//! gateway, IPv4 or IPv6 inside and outside), `gw-inb4`, `gw-inb6` (bursts of 32
//! through `Gateway::inbound_burst`) and `sa-out4` ... `sa-inb6` (the same packets
//! through the gateway's SA alone): the difference is the gateway's work. AES-128-GCM,
//! or AES-128-CBC + HMAC-SHA-256-128 with the suffix `-cbc` (`gw-inb6-cbc`), or
//! AES-128-GCM in UDP on port 4500 (NAT-T) with `-natt`.
//! Each of the N
//! iterations restores its input from a template (a decrypt: its ciphertext) and runs
//! the operation once on one tunnel-mode IPv4/UDP packet of SIZE bytes (as `ipsec
//! bench` does). Running it with two
//! values of N and dividing the difference of the totals by the difference of N gives the
//! instructions per packet without the set-up.

#[path = "../benches/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::Duration;

use aes::cipher::array::Array;
use aes::cipher::{BlockModeEncrypt, InnerIvInit, KeyInit};
use hmac::{Hmac, Mac};
use ipsec_core::gateway::{BurstVerdict, Inbound, Outbound};
use ipsec_core::{
    Cipher, Direction, Gateway, Integrity, Mode, PacketBuf, SaConfig, SecurityAssociation, Spd,
};

fn udp_packet(size: usize) -> Vec<u8> {
    let mut p = vec![0xabu8; size];
    p[..20].copy_from_slice(&[
        0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 1, 0, 1, 10, 0, 0, 1,
    ]);
    p[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    let c = ipsec_core::packet::internet_checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..28].copy_from_slice(&[0x13, 0x88, 0x13, 0x89, 0, 0, 0, 0]);
    p[24..26].copy_from_slice(&((size - 20) as u16).to_be_bytes());
    p
}

fn suite(name: &str) -> (Cipher, Option<Integrity>) {
    match name {
        "gcm128" => (Cipher::Aes128Gcm, None),
        "gcm256" => (Cipher::Aes256Gcm, None),
        "chacha" => (Cipher::ChaCha20Poly1305, None),
        "cbc" => (Cipher::Aes128Cbc, Some(Integrity::HmacSha256_128)),
        other => panic!("unknown cipher {other}"),
    }
}

fn esp(op: &str, cipher: Cipher, integrity: Option<Integrity>, size: usize, n: u64) {
    let key: Vec<u8> = (0..cipher.key_len()).map(|i| i as u8 ^ 0x3c).collect();
    let ikey = integrity.map_or(Vec::new(), |i| vec![0x77; i.key_len()]);
    let make = |dir| {
        let mut c = SaConfig::new(0x1001, dir, Mode::Tunnel, cipher, &key);
        if let Some(i) = integrity {
            c.integrity(i, &ikey);
        }
        if dir == Direction::Outbound {
            c.tunnel("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        } else {
            c.replay_window(0);
        }
        SecurityAssociation::new(c, Duration::ZERO).unwrap()
    };
    let mut out = make(Direction::Outbound);
    let mut inb = make(Direction::Inbound);
    let tpl = udp_packet(size);
    let head = out.max_headroom() + 64;
    let mut storage = vec![0u8; head + size + out.tailroom_for(size) + 64];
    storage[head..head + size].copy_from_slice(&tpl);
    let mut p = PacketBuf::new(&mut storage, head, size).unwrap();
    out.encrypt(&mut p, Duration::ZERO).unwrap();
    let (enc_off, enc_len) = (p.offset(), p.len());
    let enc_tpl = p.data().to_vec();
    // Decryption restores only the ciphertext (payload and trailer), as `ipsec bench`
    // does: a tunnel-mode decrypt leaves the outer header, ESP header, IV and ICV as
    // they came.
    let icv_len = integrity.map_or(16, Integrity::icv_len);
    let ct = enc_off + 20 + 8 + cipher.iv_len()..enc_off + enc_len - icv_len;
    let ct_tpl = &enc_tpl[ct.start - enc_off..ct.end - enc_off];
    let mut failed = false;
    if op == "encb" || op == "decb" {
        let mut results: Vec<Result<(), ipsec_core::Error>> = vec![Ok(()); 32];
        let refill = |p: &mut PacketBuf<'_>, first: bool| {
            if op == "encb" {
                p.buffer_mut()[head..head + size].copy_from_slice(&tpl);
                p.reset(head, size).is_ok()
            } else {
                // The whole packet once, then only its ciphertext (see above).
                if first {
                    p.buffer_mut()[enc_off..enc_off + enc_len].copy_from_slice(&enc_tpl);
                }
                p.buffer_mut()[ct.clone()].copy_from_slice(ct_tpl);
                p.reset(enc_off, enc_len).is_ok()
            }
        };
        in_bursts(storage.len(), n, refill, |pkts| {
            if op == "encb" {
                out.encrypt_burst(pkts, &mut results, Duration::ZERO)
            } else {
                inb.decrypt_burst(pkts, &mut results, Duration::ZERO)
            }
        });
        return;
    }
    for _ in 0..n {
        if op == "enc" {
            p.buffer_mut()[head..head + size].copy_from_slice(&tpl);
            failed |= p.reset(head, size).is_err();
            failed |= out.encrypt(black_box(&mut p), Duration::ZERO).is_err();
        } else {
            p.buffer_mut()[ct.clone()].copy_from_slice(ct_tpl);
            failed |= p.reset(enc_off, enc_len).is_err();
            failed |= inb.decrypt(black_box(&mut p), Duration::ZERO).is_err();
        }
    }
    assert!(!failed, "a packet failed");
}

/// The one-tunnel gateway of `family` (4 or 6) and an SA configured as its (`sa-`
/// cases: the SA alone) or the gateway itself (`gw-` cases), N packets one at a time,
/// or in bursts of 32 (`inb`: `decrypt_burst` / `Gateway::inbound_burst`); AES-128-GCM,
/// or AES-128-CBC + HMAC-SHA-256-128 when `cbc`, in UDP (port 4500) when `natt` (see
/// the module docs).
fn gateway(op: &str, family: u8, (cbc, natt): (bool, bool), size: usize, n: u64) {
    let (local, remote, here, there) = match family {
        4 => ("10.0.0.0/24", "10.1.0.0/24", "192.0.2.1", "192.0.2.2"),
        _ => (
            "2001:db8:1::/48",
            "2001:db8:2::/48",
            "2001:db8:ff::1",
            "2001:db8:ff::2",
        ),
    };
    let (cipher, key_len) = if cbc {
        (Cipher::Aes128Cbc, 16)
    } else {
        (Cipher::Aes128Gcm, 20)
    };
    let (key, peer_key) = (vec![0x42u8; key_len], vec![0x43u8; key_len]);
    // Integrity keys of their own (the library refuses a key shared between SAs).
    let (ikey, peer_ikey) = ([0x24u8; 32], [0x25u8; 32]);
    let suite = |key: &[u8], ikey: &[u8]| {
        let integrity = format!(
            "\nintegrity = \"hmac-sha256-128\"\nintegrity_key = \"{}\"",
            hex(ikey)
        );
        format!(
            "cipher = \"{}\"\nkey = \"{}\"{}{}",
            if cbc { "aes-128-cbc" } else { "aes-128-gcm" },
            hex(key),
            if cbc { integrity.as_str() } else { "" },
            if natt {
                "\nudp_encap = [4500, 4500]"
            } else {
                ""
            },
        )
    };
    let text = common::one_tunnel_toml(
        (local, remote),
        (here, there),
        &suite(&key, &ikey),
        &suite(&peer_key, &peer_ikey),
    );
    let mut gw = Gateway::new(Spd::from_toml(&text).unwrap(), Duration::ZERO).unwrap();
    let sa = |dir, (key, ikey): (&[u8], &[u8]), spi, (src, dst): (&str, &str)| {
        let mut c = SaConfig::new(spi, dir, Mode::Tunnel, cipher, key);
        if cbc {
            c.integrity(Integrity::HmacSha256_128, ikey);
        }
        if natt {
            c.udp_encap(4500, 4500);
        }
        if dir == Direction::Outbound {
            c.tunnel(src.parse().unwrap(), dst.parse().unwrap());
        } else {
            c.replay_window(0);
        }
        SecurityAssociation::new(c, Duration::ZERO).unwrap()
    };
    let mut out = sa(Direction::Outbound, (&key, &ikey), 0x1000, (here, there));
    let mut inb = sa(
        Direction::Inbound,
        (&peer_key, &peer_ikey),
        0x1000,
        (there, here),
    );
    // The packet out (local -> remote) and the peer's reply in, sealed at its end.
    let inner = if family == 4 {
        common::inner_packet(size)
    } else {
        common::inner_packet_v6(size)
    };
    let mut reply = inner.clone();
    if family == 4 {
        reply[12..20].rotate_left(4);
    } else {
        reply[8..40].rotate_left(16);
    }
    let mut peer = sa(
        Direction::Outbound,
        (&peer_key, &peer_ikey),
        0x1000,
        (there, here),
    );
    let head = out.max_headroom() + 64;
    let mut storage = vec![0u8; head + size + out.tailroom_for(size) + 64];
    storage[head..head + size].copy_from_slice(&reply);
    let mut p = PacketBuf::new(&mut storage, head, size).unwrap();
    peer.encrypt(&mut p, Duration::ZERO).unwrap();
    let (enc_off, enc_len) = (p.offset(), p.len());
    let enc_tpl = p.data().to_vec();
    let mut failed = false;
    if op.ends_with("inb") {
        let mut verdicts = vec![Ok(BurstVerdict::Bypassed); 32];
        let mut results: Vec<Result<(), ipsec_core::Error>> = vec![Ok(()); 32];
        let refill = |p: &mut PacketBuf<'_>, _first: bool| {
            p.buffer_mut()[enc_off..enc_off + enc_len].copy_from_slice(&enc_tpl);
            p.reset(enc_off, enc_len).is_ok()
        };
        in_bursts(storage.len(), n, refill, |pkts| {
            if op == "gw-inb" {
                gw.inbound_burst(pkts, &mut verdicts, Duration::ZERO)
            } else {
                inb.decrypt_burst(pkts, &mut results, Duration::ZERO)
            }
        });
        return;
    }
    for _ in 0..n {
        if op.ends_with("out") {
            p.buffer_mut()[head..head + size].copy_from_slice(&inner);
            failed |= p.reset(head, size).is_err();
            failed |= if op == "gw-out" {
                !matches!(
                    gw.outbound(black_box(&mut p), Duration::ZERO),
                    Ok(Outbound::Protected { .. })
                )
            } else {
                out.encrypt(black_box(&mut p), Duration::ZERO).is_err()
            };
        } else {
            p.buffer_mut()[enc_off..enc_off + enc_len].copy_from_slice(&enc_tpl);
            failed |= p.reset(enc_off, enc_len).is_err();
            failed |= if op == "gw-in" {
                !matches!(
                    gw.inbound(black_box(&mut p), Duration::ZERO),
                    Ok(Inbound::Decrypted { .. })
                )
            } else {
                inb.decrypt(black_box(&mut p), Duration::ZERO).is_err()
            };
        }
    }
    assert!(!failed, "a packet failed");
}

/// Lower-case hex of `bytes` (a policy file's keys).
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// N / 32 bursts (N counts packets) over 32 buffers of at least `len` bytes: `refill`
/// restores each packet's bytes and window before each burst (told whether it is the
/// first; false: it could not), `burst` processes the 32 and says how many it did not
/// drop. Panics if any packet failed.
fn in_bursts(
    len: usize,
    n: u64,
    mut refill: impl FnMut(&mut PacketBuf<'_>, bool) -> bool,
    mut burst: impl FnMut(&mut [PacketBuf<'_>]) -> usize,
) {
    let stride = len.div_ceil(64) * 64;
    let mut bufs = vec![0u8; stride * 32];
    let mut pkts: Vec<PacketBuf<'_>> = bufs
        .chunks_exact_mut(stride)
        .map(|c| PacketBuf::new(c, 0, 0).unwrap())
        .collect();
    let mut failed = false;
    for round in 0..n / 32 {
        for p in pkts.iter_mut() {
            failed |= !refill(p, round == 0);
        }
        failed |= burst(black_box(&mut pkts)) != 32;
    }
    assert!(!failed, "a packet failed");
}

fn raw(op: &str, cipher: Cipher, size: usize, n: u64) {
    let aad = [0x00, 0x00, 0x10, 0x01, 0, 0, 0, 1];
    let plain: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut buf = plain.clone();
    if cipher == Cipher::Aes128Cbc {
        let len = size.div_ceil(16) * 16;
        let aes = aes::Aes128::new_from_slice(&[0x42; 16]).unwrap();
        let mac = Hmac::<sha2::Sha256>::new_from_slice(&[0x5a; 32]).unwrap();
        let plain: Vec<u8> = (0..8 + 16 + len).map(|i| i as u8).collect();
        let mut buf = plain.clone();
        for _ in 0..n {
            buf.copy_from_slice(&plain);
            let iv: [u8; 16] = buf[8..24].try_into().unwrap();
            let (blocks, _) = Array::slice_as_chunks_mut(&mut buf[24..]);
            cbc::Encryptor::inner_iv_init(&aes, &iv.into()).encrypt_blocks(blocks);
            let mut m = mac.clone();
            m.update(black_box(&buf));
            black_box(m.finalize().into_bytes());
        }
        return;
    }
    let alg = match cipher {
        Cipher::Aes128Gcm => &ring::aead::AES_128_GCM,
        Cipher::Aes256Gcm => &ring::aead::AES_256_GCM,
        _ => &ring::aead::CHACHA20_POLY1305,
    };
    let key = vec![0x42u8; alg.key_len()];
    let k = ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(alg, &key).unwrap());
    let nonce = || ring::aead::Nonce::assume_unique_for_key([7; 12]);
    let tag = k
        .seal_in_place_separate_tag(nonce(), ring::aead::Aad::from(aad), &mut buf)
        .unwrap();
    let sealed = buf.clone();
    for _ in 0..n {
        if op == "raw-seal" {
            buf.copy_from_slice(&plain);
            let t = k.seal_in_place_separate_tag(nonce(), ring::aead::Aad::from(aad), &mut buf);
            black_box(t.is_ok());
        } else {
            buf.copy_from_slice(&sealed);
            black_box(
                k.open_in_place_separate_tag(
                    nonce(),
                    ring::aead::Aad::from(aad),
                    tag,
                    &mut buf,
                    0..,
                )
                .is_ok(),
            );
        }
    }
}

/// AES-128-CBC encryption of 8 packets of SIZE bytes (rounded up to blocks), N/8
/// times: `mb-serial` runs the 8 chains one after the other, `mb-interleaved` advances
/// all 8 chains one block at a time with one 8-block AES call (the multi-buffer
/// technique: the chains are independent, so their AES rounds pipeline).
fn multi_buffer(op: &str, size: usize, n: u64) {
    use aes::cipher::{BlockCipherEncrypt, BlockModeEncrypt, InnerIvInit, KeyInit};
    const LANES: usize = 8;
    let aes = aes::Aes128::new(&[0x42; 16].into());
    let blocks = size.div_ceil(16);
    let mut data = vec![[0u8; 16]; LANES * blocks];
    let ivs = [[0x33u8; 16]; LANES];
    for _ in 0..n / LANES as u64 {
        if op == "mb-serial" {
            for lane in data.chunks_exact_mut(blocks) {
                let lane: &mut [Array<u8, _>] = Array::cast_slice_from_core_mut(lane);
                cbc::Encryptor::inner_iv_init(&aes, &ivs[0].into()).encrypt_blocks(lane);
            }
        } else {
            let mut chain: [Array<u8, aes::cipher::consts::U16>; LANES] =
                core::array::from_fn(|l| ivs[l].into());
            for b in 0..blocks {
                for (l, c) in chain.iter_mut().enumerate() {
                    let p = &data[l * blocks + b];
                    for (x, y) in c.iter_mut().zip(p) {
                        *x ^= y;
                    }
                }
                aes.encrypt_blocks(&mut chain);
                for (l, c) in chain.iter().enumerate() {
                    data[l * blocks + b] = (*c).into();
                }
            }
        }
        black_box(&mut data);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: esp_profile OP-CIPHER SIZE N";
    let (op, name) = args
        .get(1)
        .and_then(|c| {
            c.split_once('-').map(|(a, b)| {
                // `raw-seal-gcm128`: the op has a dash of its own.
                if a == "gw" || a == "sa" {
                    // `gw-in4`, `gw-inb6-cbc`: the op is `gw-in`, `gw-inb`, the
                    // "cipher" the family and the suite.
                    let (o, suite) = b.split_once('-').unwrap_or((b, "gcm128"));
                    let (o, family) = o.split_at(o.len().saturating_sub(1));
                    (format!("{a}-{o}"), format!("{family}-{suite}"))
                } else if a == "raw" || a == "mb" {
                    let (o, c) = b.split_once('-').expect(usage);
                    (format!("{a}-{o}"), c.to_string())
                } else {
                    (a.to_string(), b.to_string())
                }
            })
        })
        .expect(usage);
    let size: usize = args.get(2).and_then(|s| s.parse().ok()).expect(usage);
    let n: u64 = args.get(3).and_then(|s| s.parse().ok()).expect(usage);
    let gateway_case =
        (op.starts_with("gw-") || op.starts_with("sa-")).then(|| match name.as_str() {
            "4-gcm128" => (4, (false, false)),
            "6-gcm128" => (6, (false, false)),
            "4-cbc" => (4, (true, false)),
            "6-cbc" => (6, (true, false)),
            "4-natt" => (4, (false, true)),
            "6-natt" => (6, (false, true)),
            _ => panic!("{usage}"),
        });
    let (cipher, integrity) = gateway_case.map_or_else(|| suite(&name), |_| suite("gcm128"));
    let run = |n| match op.as_str() {
        _ if let Some((family, suite)) = gateway_case => gateway(&op, family, suite, size, n),
        "enc" | "dec" | "encb" | "decb" => esp(&op, cipher, integrity, size, n),
        "raw-seal" | "raw-open" => raw(&op, cipher, size, n),
        "mb-serial" | "mb-interleaved" => multi_buffer(&op, size, n),
        _ => panic!("{usage}"),
    };
    if args.get(4).map(String::as_str) == Some("time") {
        // Median of 15 rounds of N iterations (set-up included, so use a large N), for
        // a quick look; `ipsec bench` is the real measurement.
        // The thread's CPU clock: on a shared machine it leaves out the time other
        // processes had the core. (Linux's schedstat, read before, moves in scheduler
        // ticks on some guests: every figure a multiple of 20 ns at N = 200,000.)
        let mut v: Vec<f64> = (0..15)
            .map(|_| {
                let t0 = common::cpu_now();
                run(n);
                (common::cpu_now() - t0).as_nanos() as f64 / n as f64
            })
            .collect();
        v.sort_by(f64::total_cmp);
        println!("{} {size}: {:.1} ns/iter (median of 15)", args[1], v[7]);
    } else {
        run(n);
    }
    if op == "encb"
        && cipher == Cipher::Aes128Cbc
        && let Some(how) = ipsec_core::crypto::ipsec_mb_cbc_seal_cipher(size + 16)
    {
        eprintln!("CBC seal bursts encrypted by: {how}");
    }
}
