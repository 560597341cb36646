//! AES-CBC + HMAC and AES-GCM bursts against one packet at a time.
//!
//! `encrypt_burst` and `decrypt_burst` run the packets of a burst side by side (in Rust,
//! 8 CBC chains and SHA-256 hashes interleaved; with `--features ipsec-mb`, as
//! intel-ipsec-mb jobs: CBC + HMAC to seal, hash-only to check ICVs, and AES-GCM
//! jobs to seal AES-GCM), while `encrypt` and `decrypt` take one packet at a time
//! (Rust to seal CBC; intel-ipsec-mb's one-call API for AES-GCM with the feature). This target seals the same
//! packets both ways with twin SAs (same deterministic IVs) and requires the same
//! results, bytes and counters; then damages some sealed packets (a flipped bit
//! anywhere, a replay) and requires `decrypt_burst` and `decrypt` to agree on every
//! result, every byte of every buffer (a refused packet is never decrypted) and the
//! counters, and undamaged packets to open to their plaintext.
//!
//! Input layout (raw bytes; missing bytes read as zeros):
//!
//! | bytes | meaning |
//! | --- | --- |
//! | 0 | bit 0 AES-256 (else AES-128); bits 1-2 integrity (SHA-1-96, SHA-256-128, SHA-384-192, SHA-512-256); bit 3 ESN; bit 4 transport mode; bit 5 AES-GCM instead of CBC + HMAC (bits 1-2 unused) |
//! | 1 | packets in the burst: 1 + (byte % 40) |
//! | 2.. | per packet, 4 bytes: inner length (2, little endian, modulo 1473 payload bytes), damage kind (% 8: 0 flip, 1 replay, else none), damage position |

use core::time::Duration;
use ipsec_core::crypto::IvSource;
use ipsec_core::{
    Cipher, Direction, Error, Integrity, Mode, PacketBuf, SaConfig, SecurityAssociation,
};

const ROOM: usize = 128;

/// Deterministic IVs: the twin SAs draw the same ones in the same order.
struct Ivs(u128);

impl IvSource for Ivs {
    fn fill_iv(&mut self, iv: &mut [u8; 16]) {
        self.0 = self
            .0
            .wrapping_mul(0x2545_f491_4f6c_dd1d)
            .wrapping_add(0x9e37_79b9);
        *iv = self.0.to_be_bytes();
    }
}

fn sa(
    cipher: Cipher,
    integrity: Option<Integrity>,
    mode: Mode,
    esn: bool,
    dir: Direction,
) -> SecurityAssociation {
    let key: Vec<u8> = (0..cipher.key_len() as u8).map(|i| i ^ 0xa5).collect();
    let mut c = SaConfig::new(0x4242, dir, mode, cipher, &key);
    if let Some(integrity) = integrity {
        let ikey: Vec<u8> = (0..integrity.key_len() as u8)
            .map(|i| i.wrapping_mul(7))
            .collect();
        c.integrity(integrity, &ikey);
    }
    c.esn(esn).seq(if esn { (1 << 32) - 3 } else { 0 });
    if dir == Direction::Outbound {
        c.iv_source(Box::new(Ivs(7)));
        if mode == Mode::Tunnel {
            c.tunnel([192, 0, 2, 1].into(), [198, 51, 100, 2].into());
        }
    } else {
        c.replay_window(64);
    }
    SecurityAssociation::new(c, Duration::ZERO).expect("valid SA")
}

/// An IPv4/UDP packet with `payload` bytes of payload.
fn inner(payload: usize, fill: u8) -> Vec<u8> {
    let total = 28 + payload;
    let mut p = vec![fill; total];
    p[..20].copy_from_slice(&[
        0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 1, 0, 2,
    ]);
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    let mut sum: u32 = (0..10)
        .map(|i| u32::from(u16::from_be_bytes([p[2 * i], p[2 * i + 1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p[20..28].copy_from_slice(&[0x13, 0x88, 0x13, 0x89, 0, 0, 0, 0]);
    p[24..26].copy_from_slice(&((payload + 8) as u16).to_be_bytes());
    p
}

/// Runs `f` over `bufs` as packet buffers whose windows are `windows`; returns the new
/// windows.
fn with_packets<R>(
    bufs: &mut [Vec<u8>],
    windows: &[(usize, usize)],
    f: impl FnOnce(&mut [PacketBuf<'_>]) -> R,
) -> (R, Vec<(usize, usize)>) {
    let mut pkts: Vec<PacketBuf<'_>> = bufs
        .iter_mut()
        .zip(windows)
        .map(|(b, &(o, l))| PacketBuf::new(b, o, l).expect("buffer"))
        .collect();
    let r = f(&mut pkts);
    let w = pkts.iter().map(|p| (p.offset(), p.len())).collect();
    (r, w)
}

/// The fuzz target body (see the module docs for the input layout).
pub fn cbc_burst(input: &[u8]) {
    let byte = |i: usize| input.get(i).copied().unwrap_or(0);
    let flags = byte(0);
    let (cipher, integrity) = match (flags & 32 != 0, flags & 1 != 0) {
        (true, true) => (Cipher::Aes256Gcm, None),
        (true, false) => (Cipher::Aes128Gcm, None),
        (false, aes256) => (
            if aes256 {
                Cipher::Aes256Cbc
            } else {
                Cipher::Aes128Cbc
            },
            Some(Integrity::ALL[usize::from((flags >> 1) & 3)]),
        ),
    };
    let esn = flags & 8 != 0;
    let mode = if flags & 16 != 0 {
        Mode::Transport
    } else {
        Mode::Tunnel
    };
    let n = 1 + usize::from(byte(1)) % 40;
    let field = |k: usize, j: usize| byte(2 + 4 * k + j);
    let plains: Vec<Vec<u8>> = (0..n)
        .map(|k| {
            let len = usize::from(u16::from_le_bytes([field(k, 0), field(k, 1)])) % 1473;
            inner(len, k as u8)
        })
        .collect();

    // Seal: one burst against one packet at a time.
    let mut out_b = sa(cipher, integrity, mode, esn, Direction::Outbound);
    let mut out_s = sa(cipher, integrity, mode, esn, Direction::Outbound);
    let mut burst_bufs: Vec<Vec<u8>> = plains
        .iter()
        .map(|p| {
            let mut b = vec![0u8; ROOM + p.len() + ROOM];
            b[ROOM..ROOM + p.len()].copy_from_slice(p);
            b
        })
        .collect();
    let mut single_bufs = burst_bufs.clone();
    let windows: Vec<(usize, usize)> = plains.iter().map(|p| (ROOM, p.len())).collect();
    let mut res = vec![Ok(()); n];
    let (ok, burst_w) = with_packets(&mut burst_bufs, &windows, |pkts| {
        out_b.encrypt_burst(pkts, &mut res, Duration::ZERO)
    });
    let (single_res, single_w) = with_packets(&mut single_bufs, &windows, |pkts| {
        pkts.iter_mut()
            .map(|p| out_s.encrypt(p, Duration::ZERO))
            .collect::<Vec<_>>()
    });
    assert_eq!(res, single_res, "seal results differ");
    assert_eq!(ok, single_res.iter().filter(|r| r.is_ok()).count());
    assert_eq!(burst_w, single_w, "sealed windows differ");
    assert!(burst_bufs == single_bufs, "sealed bytes differ");
    assert_eq!(out_b.stats(), out_s.stats(), "seal counters differ");

    // Open: damage some, replay some, then one burst against one at a time.
    let mut wire: Vec<Vec<u8>> = Vec::new();
    let mut expect: Vec<Option<&Vec<u8>>> = Vec::new();
    let mut replays: Vec<Vec<u8>> = Vec::new();
    for (k, ((b, &(o, l)), r)) in burst_bufs.iter().zip(&burst_w).zip(&res).enumerate() {
        if r.is_err() {
            continue;
        }
        let mut w = b[o..o + l].to_vec();
        match field(k, 2) % 8 {
            0 => {
                let at = usize::from(field(k, 3)) * 7 % w.len();
                w[at] ^= 1 << (field(k, 3) % 8);
                expect.push(None);
            }
            1 => {
                replays.push(w.clone());
                expect.push(Some(&plains[k]));
            }
            _ => expect.push(Some(&plains[k])),
        }
        wire.push(w);
    }
    for w in replays {
        wire.push(w);
        expect.push(None);
    }
    let mut in_b = sa(cipher, integrity, mode, esn, Direction::Inbound);
    let mut in_s = sa(cipher, integrity, mode, esn, Direction::Inbound);
    let mut burst_bufs = wire.clone();
    let mut single_bufs = wire.clone();
    let windows: Vec<(usize, usize)> = wire.iter().map(|w| (0, w.len())).collect();
    let mut res = vec![Ok(()); wire.len()];
    let (ok, burst_w) = with_packets(&mut burst_bufs, &windows, |pkts| {
        in_b.decrypt_burst(pkts, &mut res, Duration::ZERO)
    });
    let (single_res, single_w) = with_packets(&mut single_bufs, &windows, |pkts| {
        pkts.iter_mut()
            .map(|p| in_s.decrypt(p, Duration::ZERO))
            .collect::<Vec<_>>()
    });
    assert_eq!(res, single_res, "open results differ");
    assert_eq!(ok, single_res.iter().filter(|r| r.is_ok()).count());
    assert_eq!(burst_w, single_w, "opened windows differ");
    assert!(burst_bufs == single_bufs, "opened bytes differ");
    assert_eq!(in_b.stats(), in_s.stats(), "open counters differ");
    for (k, (e, r)) in expect.iter().zip(&res).enumerate() {
        if let Some(plain) = e {
            // Undamaged: opens to its plaintext (a damaged one may still open if the
            // flipped bit was one ESP does not cover, such as the outer TTL).
            assert_eq!(*r, Ok::<(), Error>(()), "packet {k} refused");
            let (o, l) = burst_w[k];
            assert!(
                burst_bufs[k][o..o + l] == plain[..],
                "packet {k} opened wrong"
            );
        }
    }
}
